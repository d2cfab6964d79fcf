"""Phenotype missingness by downdates of one shared basis (many phenotypes, each with its own
missing samples): the same results as one basis per pattern, as plink2 (run here) and as the
kernel's dense arithmetic."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from dash_spark.bench.run import read_plink2_glm
from dash_spark.errors import ModelError
from dash_spark.bench.simulate import write_bed
from dash_spark.scanner.pipeline import ScanConfig, plan_scan, run_scan
from dash_spark.scanner.model import scan_model
from dash_spark.stats import kernel
from dash_spark.stats.blocks import downdate_dense
from dash_spark.scanner.tasks import scan_ranges

from .test_plink2 import _plink2, _read_ours

N, M = 600, 160
NAMES = ("full", "few", "half", "other", "same1", "same2", "fifth")


def _write_cohort(tmp, rng, *, missing=0.02):
    """A .bed with missing calls and awkward variants (monomorphic, a single non-zero call, many
    missing calls, collinear with sex); covariates age, sex, PC1 (2 samples without PC1 leave every
    phenotype); 7 phenotypes in 6 patterns of missingness: none missing, 3%, 50%, 10%, 20%, and two
    phenotypes sharing 7%."""
    iids = [f"s{i}" for i in range(N)]
    G = rng.binomial(2, rng.uniform(0.02, 0.98, M), size=(N, M)).astype(np.int8)
    G[:, 5] = 0                                  # monomorphic
    G[:, 6] = 0
    G[11, 6] = 1                                 # a single non-zero call
    sex = rng.integers(0, 2, N)
    G[rng.random((N, M)) < missing] = -1
    G[rng.random(N) < 0.4, 9] = -1               # a variant with many missing calls
    G[:, 7] = 2 * sex                            # collinear with a covariate
    prefix = str(tmp / "d")
    write_bed(prefix, N, [G], iids=iids, chrom=["1"] * (M // 2) + ["2"] * (M - M // 2),
              pos=list(range(100, 100 + 10 * M, 10)), ids=[f"v{j}" for j in range(M)],
              alt=["A"] * M, ref=["G"] * M)
    age, pc1 = rng.uniform(40, 70, N), rng.normal(size=N)
    with open(tmp / "covar.tsv", "w") as fh:
        fh.write("#FID\tIID\tage\tsex\tPC1\n")
        for i in range(N):
            pc = "NA" if i in (3, 4) else repr(float(pc1[i]))  # two samples leave every phenotype
            fh.write(f"{iids[i]}\t{iids[i]}\t{float(age[i])!r}\t{int(sex[i]) + 1}\t{pc}\n")
    Gf = np.where(G < 0, 0, G).astype(float)
    miss = {
        "full": np.zeros(N, bool),
        "few": rng.random(N) < 0.03,
        "half": rng.random(N) < 0.5,
        "other": rng.random(N) < 0.1,
        "fifth": rng.random(N) < 0.2,
    }
    miss["same1"] = miss["same2"] = rng.random(N) < 0.07  # two phenotypes share a pattern
    with open(tmp / "pheno.tsv", "w") as fh:
        fh.write("#FID\tIID\t" + "\t".join(NAMES) + "\n")
        for i in range(N):
            vals = []
            for t, name in enumerate(NAMES):
                y = 0.02 * age[i] + 0.3 * sex[i] + Gf[i, 20 + t] * 0.3 + rng.normal() + 100.0 * t
                vals.append("NA" if miss[name][i] else repr(float(y)))
            fh.write(f"{iids[i]}\t{iids[i]}\t" + "\t".join(vals) + "\n")
    return prefix, str(tmp / "pheno.tsv"), str(tmp / "covar.tsv")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("downdate")
    return tmp, _write_cohort(tmp, np.random.default_rng(41))


def _scan_in_process(cfg: ScanConfig, mode: str, monkeypatch):
    monkeypatch.setenv("DASH_SPARK_PHENO_DOWNDATE", mode)
    model = scan_model(cfg)
    plan, ranges, _ = plan_scan(cfg, model, 2)
    table = pa.Table.from_batches(list(scan_ranges(plan, model.W, ranges)))
    table = table.sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    return model, {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _assert_equivalent(a, b):
    """Per-pattern and downdated results: identical counts, codes and alleles; numbers to 1e-9
    (beta near zero to 1e-9 of its standard error)."""
    for col in a:
        x, y = a[col], b[col]
        if x.dtype.kind != "f":
            assert np.array_equal(x, y), col
            continue
        assert np.array_equal(np.isnan(x), np.isnan(y)), col
        ok = ~np.isnan(x)
        scale = np.abs(x[ok])
        if col in ("beta", "t_stat"):
            scale = np.maximum(scale, a["se"][ok] if col == "beta" else 1.0)
        assert np.all(np.abs(x[ok] - y[ok]) <= 1e-9 * np.maximum(scale, 1e-300)), col


@pytest.mark.parametrize("missing_genotypes", ["drop", "mean"])
@pytest.mark.parametrize("no_intercept", [False, True])
def test_downdates_equal_one_basis_per_pattern(cohort, monkeypatch, missing_genotypes, no_intercept):
    tmp, (bfile, pheno, covar) = cohort
    cfg = ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp / "unused"),
                     missing_genotypes=missing_genotypes, no_intercept=no_intercept)
    m_off, per_pattern = _scan_in_process(cfg, "off", monkeypatch)
    m_on, downdated = _scan_in_process(cfg, "on", monkeypatch)
    assert m_off.shared is None and m_on.shared is not None
    assert len(m_on.patterns) == 6 and m_on.W.shape[1] < m_off.W.shape[1]
    # the awkward cases are really there: error codes, per-variant OBS_CT, a pattern with no missing sample
    assert set(per_pattern["errcode"]) >= {".", "CONST_OMITTED_ALLELE"}
    assert any(len(p.missing) == 0 for p in m_on.patterns) and any(len(p.missing) > N // 3 for p in m_on.patterns)
    if missing_genotypes == "drop":
        assert len(set(per_pattern["obs_ct"].tolist())) > 20
    _assert_equivalent(per_pattern, downdated)


def test_downdates_after_call_filters(cohort, monkeypatch):
    """--maf/--geno run in the task before the statistics: the downdates see only the kept variants."""
    tmp, (bfile, pheno, covar) = cohort
    cfg = ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp / "unused"), maf=0.1, geno=0.05)
    _, per_pattern = _scan_in_process(cfg, "off", monkeypatch)
    _, downdated = _scan_in_process(cfg, "on", monkeypatch)
    kept = len(set(per_pattern["variant_index"].tolist()))
    assert 20 < kept < M - 20  # the filters really remove some variants and keep others
    _assert_equivalent(per_pattern, downdated)


def test_downdates_without_any_covariate(cohort, monkeypatch):
    """y ~ 0 + x (no intercept, no covariate: k = 0) by downdates = one basis per pattern."""
    tmp, (bfile, pheno, _) = cohort
    cfg = ScanConfig(bfile=bfile, pheno=pheno, out=str(tmp / "unused"), no_intercept=True)
    m_off, per_pattern = _scan_in_process(cfg, "off", monkeypatch)
    m_on, downdated = _scan_in_process(cfg, "on", monkeypatch)
    assert m_on.shared is not None and m_on.shared.k == 0
    _assert_equivalent(per_pattern, downdated)


def test_auto_rule_and_forcing(cohort, monkeypatch):
    tmp, (bfile, pheno, covar) = cohort
    monkeypatch.delenv("DASH_SPARK_PHENO_DOWNDATE", raising=False)
    cfg = ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp / "unused"))
    assert scan_model(cfg).shared is not None  # 6 patterns
    two = ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp / "unused"), pheno_name=("full", "few"))
    assert scan_model(two).shared is None  # 2 patterns: one basis each
    monkeypatch.setenv("DASH_SPARK_PHENO_DOWNDATE", "on")
    assert scan_model(two).shared is not None


def test_downdated_scan_matches_plink2(cohort, spark):
    """The Spark scan (auto: downdates) against plink2 --glm on the same files, every phenotype."""
    tmp, (bfile, pheno, covar) = cohort
    out = tmp / "plink"
    proc = subprocess.run([_plink2(), "--bfile", bfile, "--pheno", pheno, "--covar", covar, "--glm", "hide-covar",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    os.environ.pop("DASH_SPARK_PHENO_DOWNDATE", None)
    res = run_scan(ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp / "ours"), plots=False), spark=spark)
    for name in NAMES:
        theirs = read_plink2_glm(f"{out}.{name}.glm.linear")
        ours = _read_ours(res.glm_paths[name])
        assert list(ours["ID"]) == list(theirs["ID"])
        for col in ("A1", "ERRCODE"):
            assert list(ours[col]) == [str(v) for v in theirs[col]], (name, col)
        assert np.array_equal(ours["OBS_CT"].astype(np.int64), theirs["OBS_CT"]), name
        ok = theirs["ERRCODE"] == "."
        assert ok.sum() >= M - 6
        for col in ("BETA", "SE", "T_STAT", "P"):
            np.testing.assert_allclose(ours[col][ok].astype(float), theirs[col][ok].astype(float), rtol=6e-6,
                                       atol=1e-300, err_msg=f"{name} {col}")


@pytest.mark.parametrize("chunk_bytes", [32 << 20, 8 * 16 * 64])  # one chunk, or 64 samples at a time
def test_packed_downdate_equals_dense_sums(monkeypatch, chunk_bytes):
    """The packed-byte downdate against the dense computation on decoded dosages, missing calls included."""
    monkeypatch.setattr(kernel, "DOWNDATE_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(5)
    n, m, k = 403, 16, 5
    packed = rng.integers(0, 256, (m, (n + 3) // 4)).astype(np.uint8)
    W = rng.normal(size=((n + 3) // 4 * 4, k + 7))
    idx = np.sort(rng.choice(n, 190, replace=False))
    X = kernel.decode(packed, n).T
    assert np.isnan(X[:, idx]).any()
    got = kernel.downdate_packed(packed, W, idx, k, True)
    want = downdate_dense(X, W, idx, k, True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(kernel.downdate_packed(packed, W, idx[:0], k, False)[0], np.zeros((m, k)))
    # sums of x, x^2 and missing calls are integers: exact, whatever the count of samples (the
    # decode takes four at a time, then the rest one by one)
    for r in (1, 3, 4, 5, 9, 190):
        sel = idx[:r]
        got_s = kernel.downdate_packed(packed, W, sel, k, False)[1]
        np.testing.assert_array_equal(got_s, downdate_dense(X, W, sel, k, False)[1])


def test_pattern_collinear_on_its_own_samples_is_named(tmp_path, monkeypatch):
    """A covariate constant on one phenotype's samples (though not on the union): the same message
    as with one basis per pattern, naming the phenotype and the covariate."""
    rng = np.random.default_rng(2)
    n, m = 200, 20
    iids = [f"s{i}" for i in range(n)]
    write_bed(str(tmp_path / "d"), n, [rng.integers(0, 3, (n, m)).astype(np.int8)], iids=iids, chrom="1",
              pos=list(range(1, m + 1)), ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    batch = rng.integers(0, 2, n)
    with open(tmp_path / "c.tsv", "w") as fh:
        fh.write("#IID\tbatch\tage\n")
        fh.writelines(f"{iids[i]}\t{batch[i]}\t{rng.uniform(20, 80)!r}\n" for i in range(n))
    with open(tmp_path / "p.tsv", "w") as fh:
        fh.write("#IID\ta\tb\tonly_batch0\n")
        for i in range(n):
            a = "NA" if i % 7 == 0 else repr(rng.normal())
            b = "NA" if i % 5 == 0 else repr(rng.normal())
            c = repr(rng.normal()) if batch[i] == 0 else "NA"
            fh.write(f"{iids[i]}\t{a}\t{b}\t{c}\n")
    cfg = ScanConfig(bfile=str(tmp_path / "d"), pheno=str(tmp_path / "p.tsv"), covar=str(tmp_path / "c.tsv"),
                     out=str(tmp_path / "o"))
    messages = []
    for mode in ("off", "on"):
        monkeypatch.setenv("DASH_SPARK_PHENO_DOWNDATE", mode)
        with pytest.raises(ModelError) as err:
            scan_model(cfg)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "only_batch0" in messages[1] and "'batch'" in messages[1]


def test_downdates_on_dosages_equal_one_basis_per_pattern(cohort, monkeypatch):
    """The dense path (PGEN dosages, read through pgenlib): plink2 --dummy's fractional dosages with
    missing calls, the cohort's phenotypes; downdates = one basis per pattern."""
    pytest.importorskip("pgenlib")
    tmp, (bfile, pheno, covar) = cohort
    d = tmp / "dummy"
    proc = subprocess.run([_plink2(), "--dummy", str(N), str(M), "0.02", "dosage-freq=0.4", "acgt", "--seed", "3",
                           "--make-pgen", "--out", str(d), "--threads", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    # the dummy's samples are per0..: give the cohort's tables those IDs
    ids = [line.split()[0] for line in open(f"{d}.psam").read().splitlines()[1:]]
    for src, name in ((pheno, "pheno-d.tsv"), (covar, "covar-d.tsv")):
        lines = open(src).read().splitlines()
        with open(tmp / name, "w") as fh:
            fh.write("#IID\t" + "\t".join(lines[0].split("\t")[2:]) + "\n")
            fh.writelines(f"{ids[i]}\t" + "\t".join(row.split("\t")[2:]) + "\n" for i, row in enumerate(lines[1:]))
    cfg = ScanConfig(pfile=str(d), pheno=str(tmp / "pheno-d.tsv"), covar=str(tmp / "covar-d.tsv"),
                     out=str(tmp / "unused"))
    _, per_pattern = _scan_in_process(cfg, "off", monkeypatch)
    _, downdated = _scan_in_process(cfg, "on", monkeypatch)
    assert len(set(per_pattern["obs_ct"].tolist())) > 20
    _assert_equivalent(per_pattern, downdated)


@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_patterns_finalized_side_by_side_equal_one_at_a_time(mode):
    """The batched finalize of one-phenotype patterns (a sub-block without missing calls) gives each
    pattern's rows bit for bit as the per-pattern finalize of the same mode does (every number,
    every error code: a constant variant, one collinear with a covariate and a too-correlated one),
    so the text files print the same digits."""
    from dash_spark.stats.regression import (CovariateCorrelation, finalize_complete_case, finalize_mean_imputed,
                                             finalize_no_missing)

    rng = np.random.default_rng(11)
    n, m, B = 300, 40, 7
    C = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n).astype(float)])
    X = rng.binomial(2, 0.3, size=(m, n)).astype(float)
    X[3] = 1.0  # constant
    X[5] = 2 * C[:, 2]  # collinear with a covariate
    X[7] = C[:, 1] * 0.999 + 0.001 * rng.normal(size=n)  # too correlated
    args, ref = [], []
    for b in range(B):
        mask = rng.random(n) > 0.1
        Q, R = np.linalg.qr(C[mask])
        y = rng.normal(size=mask.sum())
        Xs = X[:, mask]
        cc = CovariateCorrelation.build(C[mask], R)
        Qx, yx, sx, sxx = Xs @ Q, Xs @ y, Xs.sum(axis=1), (Xs * Xs).sum(axis=1)
        Qy, yy = Q.T @ y, float(y @ y)
        k, nb = Q.shape[1], int(mask.sum())
        common = dict(Qx=Qx, yx=yx[:, None], sx=sx, sxx=sxx, Qm=np.zeros((m, k)), miss=np.zeros(m),
                      Qy=Qy[:, None], yy=np.array([yy]), n=nb, cc=cc)
        if mode == "drop":
            ref.append(finalize_complete_case(QmQm=np.zeros((m, k, k)), Qmy=np.zeros((m, k, 1)),
                                              ymy=np.zeros((m, 1)), **common)[0])
        else:
            ref.append(finalize_mean_imputed(ym=np.zeros((m, 1)), **common)[0])
        args.append((Qx, yx, sx, sxx, Qy, yy, nb, cc))
    got = finalize_no_missing(*(np.stack([a[j] for a in args]) for j in range(4)), np.stack([a[4] for a in args]),
                              np.array([a[5] for a in args]), np.array([a[6] for a in args]), [a[7] for a in args],
                              mode=mode)
    codes = set()
    for r, g in zip(ref, got):
        codes |= set(r.errcode.tolist())
        for f in ("errcode", "beta", "se", "t_stat", "neg_log10_p", "p", "alt_freq", "mach_r2", "obs_ct"):
            np.testing.assert_array_equal(getattr(g, f), getattr(r, f), err_msg=f)
    assert len(codes) >= 3, codes  # OK, CONST_OMITTED_ALLELE and a collinearity code
