"""Kernel and finalisation against independent oracles (bed-reader decoding, mpmath, numpy lstsq)."""

from __future__ import annotations

import numpy as np
import pytest
from bed_reader import open_bed

from dash_spark.errors import ModelError
from dash_spark.io.plink import read_bed_range
from dash_spark.bench.simulate import write_bed
from dash_spark.stats.kernel import compress_block, decode, pad_weights
from dash_spark.stats.regression import ERRCODES, covariate_basis, finalize_mean_imputed, t_pvalues


def _write_random_bed(tmp_path, rng, n, m, missing=0.05):
    G = rng.binomial(2, rng.uniform(0.05, 0.95, m), size=(n, m)).astype(np.int8)
    G[rng.random((n, m)) < missing] = -1
    prefix = str(tmp_path / f"r{n}")
    write_bed(prefix, n, [G], iids=[f"s{i}" for i in range(n)], chrom=["1"] * m,
              pos=list(range(1, m + 1)), ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    return prefix, G


@pytest.mark.parametrize("n", [1, 5, 7, 8, 301])
def test_kernel_sums_equal_bed_reader_products(tmp_path, rng, n):
    prefix, _ = _write_random_bed(tmp_path, rng, n, 37)
    X = open_bed(prefix + ".bed", count_A1=True).read(dtype="float64")  # (n, m), NaN missing
    packed = read_bed_range(prefix + ".bed", n, 0, 37)
    assert np.array_equal(decode(packed, n), X, equal_nan=True)
    A = rng.normal(size=(n, 5))
    B = rng.normal(size=(n, 2))
    SX, SXX, SM = compress_block(packed, pad_weights(A, B), 5)
    miss = np.isnan(X)
    X0 = np.where(miss, 0.0, X)
    np.testing.assert_allclose(SX, X0.T @ A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SXX, (X0**2).T @ B, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SM, miss.T.astype(float) @ A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,width", [(58, 9), (61, 140), (4 * 16, 130), (5, 300)])
def test_kernel_adds_byte_positions_in_order(rng, n, width):
    """The kernel adds four byte positions' tables per pass over the variants and builds wide
    tables only for the byte values that occur: each sum must still be the one-position-at-a-time
    sum, bit for bit (a plain numpy loop over byte positions, each table row = low half + high
    half), for narrow and wide weights and byte counts that leave a remainder."""
    from dash_spark.stats import kernel

    m, nb = 23, (n + 3) // 4
    packed = rng.integers(0, 256, size=(m, nb), dtype=np.uint8)
    packed[0] = 0xFF  # one variant with a single byte value everywhere
    W = pad_weights(rng.normal(size=(n, width - 2)), rng.normal(size=(n, 2)))
    n_a = width - 2
    SX, SXX, _ = compress_block(packed, W, n_a)
    dose = kernel._DOSAGE
    expect = np.zeros((m, width))
    for b in range(nb):
        i0 = 4 * b
        halves = []
        for r in (i0, i0 + 2):
            h = np.arange(16)
            d0, d1 = dose[h & 3][:, None], dose[h >> 2][:, None]
            t = np.empty((16, width))
            t[:, :n_a] = d0 * W[r, :n_a] + d1 * W[r + 1, :n_a]
            t[:, n_a:] = (d0 * d0) * W[r, n_a:] + (d1 * d1) * W[r + 1, n_a:]
            halves.append(t)
        v = np.arange(256)
        table = halves[0][v & 15] + halves[1][v >> 4]
        expect += table[packed[:, b]]
    assert np.array_equal(SX, expect[:, :n_a]) and np.array_equal(SXX, expect[:, n_a:])
    # each column's sums do not depend on the other columns (nor on which table path they took)
    narrow = compress_block(packed, np.ascontiguousarray(W[:, [0, n_a]]), 1)
    assert np.array_equal(narrow[0][:, 0], SX[:, 0]) and np.array_equal(narrow[1][:, 0], SXX[:, 0])
    assert 9 < kernel.SPARSE_TABLE_COLUMNS <= 130  # the widths above take both table paths


@pytest.mark.parametrize("m,nbytes", [(1, 1), (7, 9), (8, 8), (9, 17), (16, 3), (37, 64)])
def test_kernel_transpose_equals_numpy(rng, m, nbytes):
    from dash_spark.stats.kernel import transpose_block

    packed = rng.integers(0, 256, size=(m, nbytes), dtype=np.uint8)
    out = transpose_block(packed)
    assert out.shape == (nbytes, (m + 7) // 8 * 8)
    assert np.array_equal(out[:, :m], packed.T)


def test_kernel_transpose_on_a_big_endian_machine(rng, monkeypatch):
    from dash_spark.stats import kernel

    packed = rng.integers(0, 256, size=(13, 11), dtype=np.uint8)
    monkeypatch.setattr(kernel.np, "little_endian", False)
    assert np.array_equal(kernel.transpose_block(packed)[:, :13], packed.T)


@pytest.mark.parametrize("little", [True, False])
def test_kernel_missing_calls_in_every_word_position(tmp_path, rng, monkeypatch, little):
    """Missing calls at every sample position of the 32-call words and of the tail bytes, in blocks
    whose variant count is not a multiple of 8; also through the transpose a big-endian machine
    takes (a plain copy)."""
    from dash_spark.stats import kernel

    monkeypatch.setattr(kernel.np, "little_endian", little)
    n, m = 4 * 8 * 3 + 4 * 5 + 3, 19  # 3 full words, 5 tail bytes, 3 samples in the last byte
    G = rng.binomial(2, 0.4, size=(n, m)).astype(np.int8)
    G[np.arange(n), np.arange(n) % m] = -1  # each sample missing once
    G[rng.random((n, m)) < 0.1] = -1
    G[:, 3] = -1  # a variant with no call
    prefix = str(tmp_path / "w")
    write_bed(prefix, n, [G], iids=[f"s{i}" for i in range(n)], chrom=["1"] * m,
              pos=list(range(1, m + 1)), ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    X = open_bed(prefix + ".bed", count_A1=True).read(dtype="float64")
    A, B = rng.normal(size=(n, 4)), rng.normal(size=(n, 2))
    SX, SXX, SM = compress_block(read_bed_range(prefix + ".bed", n, 0, m), pad_weights(A, B), 4)
    miss = np.isnan(X)
    X0 = np.where(miss, 0.0, X)
    np.testing.assert_allclose(SX, X0.T @ A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SXX, (X0**2).T @ B, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SM, miss.T.astype(float) @ A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("little", [True, False])
def test_kernel_missing_grams_in_every_word_position(tmp_path, rng, monkeypatch, little):
    """The missing calls' Grams (q q', q y', y^2 over each variant's missing calls), found 8
    variants at a time in the transposed block: missing calls at every sample and word position,
    a variant count not a multiple of 8, samples outside the pattern (zero weights) and variants
    left out (``todo``) add nothing; also through the transpose a big-endian machine takes."""
    from dash_spark.stats import kernel

    monkeypatch.setattr(kernel.np, "little_endian", little)
    n, m, k, p = 4 * 8 * 3 + 4 * 5 + 3, 19, 3, 2
    G = rng.binomial(2, 0.4, size=(n, m)).astype(np.int8)
    G[np.arange(n), np.arange(n) % m] = -1
    G[rng.random((n, m)) < 0.1] = -1
    G[:, 3] = -1
    prefix = str(tmp_path / "g")
    write_bed(prefix, n, [G], iids=[f"s{i}" for i in range(n)], chrom=["1"] * m,
              pos=list(range(1, m + 1)), ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    miss = np.isnan(open_bed(prefix + ".bed", count_A1=True).read(dtype="float64"))
    QY = rng.normal(size=(n, 1 + k + p))  # a column before the pattern's: a0 = 1
    QY[rng.random(n) < 0.2] = 0.0  # samples outside the pattern
    todo = rng.random(m) < 0.7
    qq, qy, yy = kernel.missing_grams(read_bed_range(prefix + ".bed", n, 0, m), pad_weights(QY, np.zeros((n, 0))),
                                      1, k, p, todo)
    Q, Y = QY[:, 1 : 1 + k], QY[:, 1 + k :]
    for j in range(m):
        rows = miss[:, j] if todo[j] else np.zeros(n, dtype=bool)
        np.testing.assert_allclose(qq[j], Q[rows].T @ Q[rows], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(qy[j], Q[rows].T @ Y[rows], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(yy[j], (Y[rows] ** 2).sum(axis=0), rtol=1e-12, atol=1e-12)
    assert (qq[~todo] == 0).all() and np.array_equal(qq, qq.transpose(0, 2, 1))


def test_kernel_sums_add_over_variant_subblocks(tmp_path, rng):
    prefix, _ = _write_random_bed(tmp_path, rng, 50, 20)
    W = pad_weights(rng.normal(size=(50, 3)), rng.normal(size=(50, 1)))
    whole = compress_block(read_bed_range(prefix + ".bed", 50, 0, 20), W, 3)
    parts = [compress_block(read_bed_range(prefix + ".bed", 50, a, b), W, 3) for a, b in ((0, 7), (7, 20))]
    for i in range(3):
        np.testing.assert_allclose(np.vstack([parts[0][i], parts[1][i]]), whole[i], rtol=1e-14)


def test_pvalues_match_mpmath_far_beyond_float64():
    import mpmath
    mpmath.mp.dps = 60
    cases = [(0.5, 10), (2.0, 100), (8.0, 1914), (40.0, 50), (60.0, 20000), (300.0, 1000), (1e4, 30), (45.0, 3)]
    t = np.array([c[0] for c in cases])
    d = np.array([c[1] for c in cases], dtype=float)
    p, nl = t_pvalues(t, d)
    for (tt, dd), pi, nli in zip(cases, p, nl):
        x = mpmath.mpf(dd) / (dd + mpmath.mpf(tt) ** 2)
        exact = mpmath.betainc(dd / 2, 0.5, 0, x, regularized=True)
        want = -mpmath.log10(exact)
        assert abs(nli - float(want)) <= 1e-10 * max(1.0, float(want)), (tt, dd, nli, want)
        if exact > mpmath.mpf("1e-300"):
            assert abs(pi - float(exact)) <= 1e-10 * float(exact)
    assert nl[-3] > 308  # beyond float64's range, yet finite and exact


def test_covariate_basis_names_the_collinear_column(rng):
    n = 40
    age = rng.uniform(40, 70, n)
    C = np.column_stack([np.ones(n), age, rng.normal(size=n), 2 * age + 1])
    with pytest.raises(ModelError, match="'age2'.*collinear with '\\(intercept\\)', 'age', 'PC1'"):
        covariate_basis(C, np.ones(n, bool), ["(intercept)", "age", "PC1", "age2"], where="t")


def test_covariate_basis_too_few_samples(rng):
    C = np.column_stack([np.ones(5), rng.normal(size=(5, 4))])
    with pytest.raises(ModelError, match="5 samples.*5 covariates need at least 7"):
        covariate_basis(C, np.ones(5, bool), [f"c{i}" for i in range(5)], where="t")


def test_finalize_equals_lstsq_with_mean_imputation_and_age_scale(rng):
    """Each variant's fit against numpy's lstsq on the explicitly imputed design."""
    n, m = 200, 12
    C = np.column_stack([np.ones(n), rng.uniform(40, 70, n) * 1e3, rng.normal(size=n)])
    mask = rng.random(n) > 0.1
    X = rng.binomial(2, 0.3, size=(n, m)).astype(float)
    X[rng.random((n, m)) < 0.05] = np.nan
    X[:, 3] = 1.0  # constant
    y = C @ [1.0, 2e-3, 0.5] + rng.normal(size=n)
    basis = covariate_basis(C, mask, ["i", "age", "pc"], where="t")
    Q = basis.Q
    w = mask.astype(float)
    Yg = np.where(mask, y, 0.0)[:, None]
    miss = np.isnan(X) & mask[:, None]
    X0 = np.where(np.isnan(X), 0.0, X) * w[:, None]
    stats = finalize_mean_imputed(
        Qx=X0.T @ Q, yx=X0.T @ Yg, sx=X0.T @ w, sxx=(X0**2).T @ w, Qm=miss.T @ Q, ym=miss.T @ Yg,
        miss=miss.sum(0).astype(float), Qy=Q.T @ Yg, yy=(Yg**2).sum(0), n=int(mask.sum()))[0]
    for j in range(m):
        x = X[mask, j]
        if j == 3:
            assert ERRCODES[stats.errcode[j]] == "CONST_OMITTED_ALLELE" and np.isnan(stats.beta[j])
            continue
        x = np.where(np.isnan(x), np.nanmean(x), x)
        D = np.column_stack([x, C[mask]])
        coef, rss, *_ = np.linalg.lstsq(D, y[mask], rcond=None)
        dof = mask.sum() - D.shape[1]
        se = np.sqrt(rss[0] / dof * np.linalg.inv(D.T @ D)[0, 0])
        # a near-zero beta can only be known to float64's precision relative to its standard error
        assert abs(stats.beta[j] - coef[0]) <= 1e-9 * max(abs(coef[0]), se)
        assert stats.se[j] == pytest.approx(se, rel=1e-9)


@pytest.mark.parametrize("case", ["plain", "correlated_covariates", "constant_instead_of_intercept", "no_mean"])
def test_collinearity_screen_skips_only_variants_that_pass(rng, case):
    """plink2's CORR_TOO_HIGH / VIF_TOO_HIGH checks skip the variants whose R^2 on the covariates
    (from sums at hand) is below the bound of _r2_screen: on dosages from unrelated to collinear
    with the covariates (and the VIF of the covariates themselves near the cut-off), every code
    equals the full computation's, variant by variant, and the screen did skip most variants."""
    from dash_spark.stats.regression import (CovariateCorrelation, _collinearity_codes, _maybe_collinear,
                                             collinearity_errors, collinearity_errors_batched)

    n = 500
    Z = rng.normal(size=(n, 4))
    if case == "correlated_covariates":  # covariates' own VIF ~ 40: little room before the cut-off of 50
        Z[:, 1] = Z[:, 0] + rng.normal(size=n) * 0.16
    first = {"plain": np.ones(n), "correlated_covariates": np.ones(n), "constant_instead_of_intercept": np.full(n, 3.0),
             "no_mean": rng.normal(size=n)}[case]
    C = np.column_stack([first, Z])
    Q, R = np.linalg.qr(C)
    cc = CovariateCorrelation.build(C, R)
    assert (cc.r2_screen > 0) == (case != "no_mean")
    m = 4000
    t = np.linspace(0.0, 1.0, m) ** 4  # from unrelated (0) to collinear (1) with the covariates, dense near 1
    X = (1 - t)[:, None] * rng.binomial(2, 0.3, size=(m, n)) + t[:, None] * (Z @ rng.normal(size=4) + 5.0)
    X[::7] = X[::7] * (1 - 1e-4) + 1e-4 * Z[:, 0]  # and some just inside the cut-offs
    Qx, sx = X @ Q, X.sum(axis=1)
    xx_centred = np.einsum("mn,mn->m", X, X) - sx * sx / n
    full = _collinearity_codes(cc, Qx, sx, xx_centred, 0.999, 50.0)
    assert (full != 0).sum() > 100 and (full == 0).sum() > 100
    np.testing.assert_array_equal(collinearity_errors(cc, Qx, sx, xx_centred), full)
    batched = collinearity_errors_batched([cc, cc], np.stack([Qx, Qx]), np.stack([sx, sx]),
                                          np.stack([xx_centred, xx_centred]))
    np.testing.assert_array_equal(batched, np.stack([full, full]))
    skipped = ~_maybe_collinear(cc, Qx, sx, xx_centred)
    assert not full[skipped].any()
    if case != "no_mean":
        assert skipped.mean() > 0.5


def test_results_batch_picks_each_phenotypes_a1(rng):
    """Three phenotypes' rows at once: A1 is the minor allele over the frequency samples; where a
    variant has no call among them, each phenotype's own frequency decides (one A1 per phenotype),
    and BETA, T_STAT, A1_FREQ follow A1; rows as a1_flip gives them one phenotype at a time."""
    from dash_spark.stats.regression import VariantStats
    from dash_spark.stats.results import a1_flip, results_batch

    m, P = 6, 3
    freq_called = np.array([10.0, 10.0, 0.0, 10.0, 0.0, 10.0])
    freq_alt_sum = np.array([4.0, 16.0, 0.0, 10.0, 0.0, 19.0])  # ALT freq 0.2, 0.8, -, 0.5 (tie), -, 0.95
    stats = []
    for t in range(P):
        af = rng.uniform(0.05, 0.95, m)
        af[2], af[4] = (0.3, 0.7) if t == 0 else (0.7, 0.3)
        b = rng.normal(size=m)
        stats.append((f"y{t}", VariantStats(beta=b, se=np.abs(b) + 1, t_stat=b / (np.abs(b) + 1), neg_log10_p=np.ones(m),
                                            p=np.full(m, 0.1), obs_ct=np.full(m, 50), alt_freq=af,
                                            errcode=np.zeros(m, dtype=np.uint8))))
    meta = (np.array(["1"] * m, dtype=object), np.array([f"v{j}" for j in range(m)], dtype=object), np.arange(1, m + 1),
            np.array(["A"] * m, dtype=object), np.array(["C"] * m, dtype=object))
    batch = results_batch(np.arange(m), meta, freq_alt_sum, freq_called, stats, count_alt=False).to_pydict()
    for t, (_, st) in enumerate(stats):
        flip = a1_flip(freq_alt_sum, freq_called, st.alt_freq, count_alt=False)
        rows = slice(t * m, (t + 1) * m)
        assert batch["a1"][rows] == ["C" if f else "A" for f in flip]
        assert np.array_equal(batch["beta"][rows], np.where(flip, -st.beta, st.beta))
        assert np.array_equal(batch["t_stat"][rows], np.where(flip, -st.t_stat, st.t_stat))
        assert np.array_equal(batch["a1_freq"][rows], np.where(flip, 1 - st.alt_freq, st.alt_freq))
    assert batch["a1"][2] != batch["a1"][m + 2]  # no frequency call: the phenotypes' A1 differ
    assert batch["a1"][:2] == ["A", "C"] and batch["a1"][m:m + 2] == ["A", "C"]
