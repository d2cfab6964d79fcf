"""Tests of dash_spark.bench.simulate: the PLINK 1 writer and the simulated cohort."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed

from dash_spark.bench import simulate
from dash_spark.bench.simulate import BED_MAGIC, Cohort, simulate_cohort, write_bed


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _meta(m: int, n: int, rng: np.random.Generator) -> dict:
    bases = np.array(list("ACGT"))
    ref = rng.integers(0, 4, m)
    alt = (ref + rng.integers(1, 4, m)) % 4
    return dict(
        iids=[f"id{i}" for i in range(n)],
        chrom=[str(1 + j * 3 // m) for j in range(m)],
        pos=np.arange(m, dtype=np.int64) * 10 + 5,
        ids=[f"v{j}" for j in range(m)],
        alt=bases[alt].tolist(),
        ref=bases[ref].tolist(),
    )


def _random_dosages(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """int8 (n, m) in {-1, 0, 1, 2}; column j % 4 == 0 holds every value at least once when n >= 4."""
    g = rng.integers(-1, 3, size=(n, m)).astype(np.int8)
    for j in range(0, m, 4):
        g[:, j] = np.resize(np.array([2, -1, 1, 0], dtype=np.int8), n)
    return g


def _read_bed(prefix: str | Path) -> np.ndarray:
    with open_bed(f"{prefix}.bed", count_A1=True) as bed:
        return bed.read(dtype="float64")


def _expected(g: np.ndarray) -> np.ndarray:
    return np.where(g < 0, np.nan, g.astype(np.float64))


def _read_table(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _file_bytes(prefix: str | Path, exts=("bed", "bim", "fam", "pheno", "covar")) -> dict[str, bytes]:
    return {ext: Path(f"{prefix}.{ext}").read_bytes() for ext in exts}


# ---------------------------------------------------------------------------------------------
# (a) write_bed round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 7, 8])
def test_write_bed_round_trip(tmp_path, rng, n):
    m = 13
    g = _random_dosages(n, m, rng)
    meta = _meta(m, n, rng)
    prefix = tmp_path / "rt"
    # uneven chunks, one of them Fortran-ordered and one of another integer dtype
    chunks = [g[:, :5], np.asfortranarray(g[:, 5:6]), g[:, 6:6], g[:, 6:].astype(np.int64)]
    write_bed(prefix, n, chunks, **meta)

    np.testing.assert_array_equal(_read_bed(prefix), _expected(g))  # NaN == NaN here
    data = Path(f"{prefix}.bed").read_bytes()
    assert data[:3] == b"\x6c\x1b\x01"
    assert len(data) == 3 + m * math.ceil(n / 4)

    bim = Path(f"{prefix}.bim").read_text().splitlines()
    assert bim == [
        f"{c}\t{v}\t0\t{p}\t{a}\t{r}"
        for c, v, p, a, r in zip(meta["chrom"], meta["ids"], meta["pos"].tolist(), meta["alt"], meta["ref"])
    ]
    fam = Path(f"{prefix}.fam").read_text().splitlines()
    assert fam == [f"id{i} id{i} 0 0 0 -9" for i in range(n)]
    with open_bed(f"{prefix}.bed", count_A1=True) as bed:
        assert list(bed.allele_1) == meta["alt"]  # column 5 = ALT = the counted allele
        assert list(bed.iid) == meta["iids"]
    assert sorted(os.listdir(tmp_path)) == ["rt.bed", "rt.bim", "rt.fam"]  # no temporaries left


def test_write_bed_exact_bytes(tmp_path):
    # samples: 2 ALT -> 00, missing -> 01, 1 ALT -> 10, 0 ALT -> 11; first sample in the low bits
    g = np.array([[2], [-1], [1], [0], [0]], dtype=np.int8)
    write_bed(tmp_path / "x", 5, g, iids=list("abcde"), chrom="7", pos=[100], ids=["rs1"], alt=["G"], ref=["T"])
    assert (tmp_path / "x.bed").read_bytes() == BED_MAGIC + bytes([0b11100100, 0b00000011])
    assert (tmp_path / "x.bim").read_text() == "7\trs1\t0\t100\tG\tT\n"


@pytest.mark.parametrize(
    "chunks, match",
    [
        ([np.full((3, 2), 3, dtype=np.int8)], "value 3"),
        ([np.full((3, 2), -2, dtype=np.int8)], "value -2"),
        ([np.zeros((3, 1), dtype=np.int8)], "hold 1 variants; expected 2"),
        ([np.zeros((3, 3), dtype=np.int8)], "more than the 2 variants"),
        ([np.zeros((2, 2), dtype=np.int8)], "shape"),
    ],
)
def test_write_bed_rejects_bad_input_and_leaves_nothing(tmp_path, chunks, match):
    meta = dict(iids=["a", "b", "c"], chrom="1", pos=[1, 2], ids=["x", "y"], alt=["A", "A"], ref=["C", "C"])
    with pytest.raises(ValueError, match=match):
        write_bed(tmp_path / "bad", 3, chunks, **meta)
    assert os.listdir(tmp_path) == []


def test_write_bed_failure_keeps_previous_fileset(tmp_path, rng):
    meta = _meta(4, 6, rng)
    g = _random_dosages(6, 4, rng)
    write_bed(tmp_path / "keep", 6, g, **meta)
    before = _file_bytes(tmp_path / "keep", ("bed", "bim", "fam"))

    def chunks():
        yield np.zeros((6, 2), dtype=np.int8)
        raise RuntimeError("generator failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        write_bed(tmp_path / "keep", 6, chunks(), **meta)
    assert _file_bytes(tmp_path / "keep", ("bed", "bim", "fam")) == before
    assert sorted(os.listdir(tmp_path)) == ["keep.bed", "keep.bim", "keep.fam"]


def test_write_bed_rejects_float_and_whitespace(tmp_path):
    meta = dict(iids=["a"], chrom="1", pos=[1], ids=["x"], alt=["A"], ref=["C"])
    with pytest.raises(TypeError, match="dtype"):
        write_bed(tmp_path / "f", 1, np.zeros((1, 1)), **meta)
    with pytest.raises(ValueError, match="whitespace"):
        write_bed(tmp_path / "w", 1, np.zeros((1, 1), np.int8), **{**meta, "ids": ["x y"]})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# (c) chunking never changes the bytes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [37, 40])
def test_chunked_write_equals_single_chunk(tmp_path, rng, n):
    m = 1000
    g = _random_dosages(n, m, rng)
    meta = _meta(m, n, rng)
    write_bed(tmp_path / "one", n, [g], **meta)
    edges = [0, 1, 1, 250, 251, 640, 999, 1000]
    chunks = [g[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
    chunks[3] = np.asfortranarray(chunks[3])
    write_bed(tmp_path / "many", n, iter(chunks), **meta)
    assert _file_bytes(tmp_path / "one", ("bed", "bim", "fam")) == _file_bytes(tmp_path / "many", ("bed", "bim", "fam"))
    np.testing.assert_array_equal(_read_bed(tmp_path / "many"), _expected(g))


def test_simulation_bytes_do_not_depend_on_chunks_or_threads(tmp_path, monkeypatch):
    kw = dict(n_samples=203, n_variants=450, missing_rate=0.05, n_monomorphic=2, seed=11)
    ref = simulate_cohort(tmp_path / "a", chunk_variants=450, **kw)
    small = simulate_cohort(tmp_path / "b", chunk_variants=7, **kw)
    monkeypatch.setattr(simulate, "_THREAD_MIN_ELEMENTS", 0)
    monkeypatch.setattr(simulate, "_BLOCK_ELEMENTS", 1000)
    monkeypatch.setattr(simulate, "_available_cpus", lambda: 3)
    threaded = simulate_cohort(tmp_path / "c", chunk_variants=100, **kw)
    assert _file_bytes(ref.bfile) == _file_bytes(small.bfile) == _file_bytes(threaded.bfile)
    assert ref.causal == small.causal == threaded.causal


# ---------------------------------------------------------------------------------------------
# (b) simulate_cohort
# ---------------------------------------------------------------------------------------------

SMALL = dict(n_samples=300, n_variants=400, missing_rate=0.02, pheno_missing_rate=0.05,
             n_monomorphic=3, n_phenotypes=2, seed=5)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Cohort:
    return simulate_cohort(tmp_path_factory.mktemp("small"), **SMALL)


def test_cohort_files_and_layout(small_cohort):
    c = small_cohort
    for ext in ("bed", "bim", "fam"):
        assert os.path.isfile(f"{c.bfile}.{ext}")
    assert os.path.isfile(c.pheno) and os.path.isfile(c.covar)
    assert (c.n_samples, c.n_variants) == (300, 400)
    assert os.path.getsize(f"{c.bfile}.bed") == 3 + 400 * 75
    assert not [f for f in os.listdir(os.path.dirname(c.bfile)) if ".tmp" in f]

    fam = Path(f"{c.bfile}.fam").read_text().splitlines()
    assert fam[0] == "S000001 S000001 0 0 0 -9" and fam[-1] == "S000300 S000300 0 0 0 -9"
    assert len(fam) == 300

    bim = [line.split("\t") for line in Path(f"{c.bfile}.bim").read_text().splitlines()]
    assert len(bim) == 400 and all(len(r) == 6 for r in bim)
    chrom = [r[0] for r in bim]
    assert chrom == sorted(chrom) and set(chrom) == {"1", "2", "3"}
    assert sorted(chrom.count(k) for k in "123") == [133, 133, 134]
    for k in "123":
        pos = [int(r[3]) for r in bim if r[0] == k]
        assert all(b > a for a, b in zip(pos, pos[1:]))
    assert len({r[1] for r in bim}) == 400
    assert all(r[2] == "0" and r[4] in "ACGT" and r[5] in "ACGT" and r[4] != r[5] for r in bim)
    assert [bim[j][1] for j in range(3)] == [f"rs{bim[j][0]}_{bim[j][3]}" for j in range(3)]

    assert len(c.causal) == 5 and list(c.causal) == sorted(set(c.causal))
    assert {bim[j][0] for j in c.causal} == {"1", "2", "3"}  # spread over chromosomes
    assert c.pheno_names == ("pheno1", "pheno2") and c.covar_names == ("age", "sex", "PC1")
    assert len(c.causal_effects) == 2 and all(len(e) == 5 for e in c.causal_effects)
    assert c.causal_effects[0] != c.causal_effects[1]
    assert all(all(v != 0 for v in e) for e in c.covar_effects)


def test_cohort_genotypes(small_cohort):
    c = small_cohort
    x = _read_bed(c.bfile)
    assert x.shape == (300, 400)
    assert set(np.unique(x[~np.isnan(x)])) <= {0.0, 1.0, 2.0}

    mono = [int((i + 0.5) * 400 / 3) for i in range(3)]  # 66, 200, 333: constant 0, 2, 0
    for j, value in zip(mono, [0.0, 2.0, 0.0]):
        col = x[:, j]
        assert np.all(col[~np.isnan(col)] == value), j
    assert not set(mono) & set(c.causal)

    # 1% of variants (4) are missing at 10x the rate; expected overall rate 0.99*0.02 + 0.01*0.2
    miss = np.isnan(x)
    assert abs(miss.mean() - (0.99 * 0.02 + 0.01 * 0.2)) < 0.004
    per_variant = miss.mean(axis=0)
    assert np.sum(per_variant > 0.1) >= 2
    assert np.median(per_variant) == pytest.approx(0.02, abs=0.01)

    # not all variants are the same: the frequency spread includes rare and common ALT alleles
    freq = np.nanmean(x, axis=0) / 2
    assert freq.min() < 0.05 and freq.max() > 0.9 and 0.3 < np.median(freq) < 0.7


def test_cohort_pheno_and_covar_files(small_cohort):
    c = small_cohort
    fam_ids = [line.split()[1] for line in Path(f"{c.bfile}.fam").read_text().splitlines()]

    header, rows = _read_table(c.pheno)
    assert header == ["#FID", "IID", "pheno1", "pheno2"]
    assert all(len(r) == 4 and r[0] == r[1] for r in rows)
    pheno_ids = [r[1] for r in rows]
    extras = [i for i in pheno_ids if i not in set(fam_ids)]
    assert 1 <= len(extras) <= 2 and tuple(extras) == c.extra_pheno_iids
    in_fam = [i for i in pheno_ids if i in set(fam_ids)]
    assert sorted(in_fam) == fam_ids and in_fam != fam_ids  # every sample, shuffled

    missing = {k: {r[1] for r in rows if r[2 + k] in ("NA", "-9")} for k in range(2)}
    spellings = {r[2] for r in rows if r[1] in missing[0]}
    assert spellings == {"NA", "-9"}
    assert all(r[3] != "-9" for r in rows)
    assert missing[0] != missing[1]
    for k in range(2):
        assert 0.01 < len(missing[k]) / 300 < 0.12
        values = [float(r[2 + k]) for r in rows if r[2 + k] not in ("NA", "-9")]
        assert not set(values) <= {0.0, 1.0, 2.0, -9.0}
        assert len(set(values)) == len(values)  # continuous

    header, rows = _read_table(c.covar)
    assert header == ["#FID", "IID", "age", "sex", "PC1"]
    covar_ids = [r[1] for r in rows]
    assert len(covar_ids) == len(set(covar_ids)) == 297
    assert set(fam_ids) - set(covar_ids) == set(c.no_covar_iids) and len(c.no_covar_iids) == 3
    assert set(covar_ids) <= set(fam_ids)
    assert covar_ids != [i for i in fam_ids if i in set(covar_ids)]  # shuffled
    assert covar_ids != [i for i in in_fam if i in set(covar_ids)]  # not the pheno order either
    age = np.array([float(r[2]) for r in rows])
    sex = {r[3] for r in rows}
    assert 40 <= age.min() and age.max() <= 70 and age.std() > 5
    assert sex == {"0", "1"}
    assert all(float(r[4]) == float(format(float(r[4]), ".17g")) for r in rows)


def test_cohort_same_seed_same_bytes_other_seed_differs(small_cohort, tmp_path):
    again = simulate_cohort(tmp_path / "again", **SMALL)
    assert _file_bytes(again.bfile) == _file_bytes(small_cohort.bfile)
    assert again.causal == small_cohort.causal
    other = simulate_cohort(tmp_path / "other", **{**SMALL, "seed": 6})
    a, b = _file_bytes(small_cohort.bfile), _file_bytes(other.bfile)
    for ext in ("bed", "bim", "pheno", "covar"):
        assert a[ext] != b[ext], ext
    assert a["fam"] == b["fam"]
    # the genotype draws themselves depend on the seed (not only the allele frequencies)
    x, y = _read_bed(small_cohort.bfile), _read_bed(other.bfile)
    ok = ~np.isnan(x) & ~np.isnan(y)
    r = [np.corrcoef(x[ok[:, j], j], y[ok[:, j], j])[0, 1] for j in range(400)
         if x[ok[:, j], j].std() > 0 and y[ok[:, j], j].std() > 0]
    assert abs(np.mean(r)) < 0.02


def test_demo_cohort_has_genome_wide_hits(tmp_path):
    """Default demo size: a covariate-adjusted test finds causal variants at p < 5e-8, not noise."""
    from scipy import stats

    c = simulate_cohort(tmp_path, seed=3)
    x = _read_bed(c.bfile)
    fam_ids = [line.split()[1] for line in Path(f"{c.bfile}.fam").read_text().splitlines()]
    _, prow = _read_table(c.pheno)
    _, crow = _read_table(c.covar)
    y = {r[1]: float(r[2]) for r in prow}
    cov = {r[1]: [float(v) for v in r[2:]] for r in crow}
    keep = [i for i, s in enumerate(fam_ids) if s in cov]
    yv = np.array([y[fam_ids[i]] for i in keep])
    q = np.column_stack([np.ones(len(keep)), np.array([cov[fam_ids[i]] for i in keep])])

    def pvalue(j: int) -> float:
        g = x[keep, j]
        d = np.column_stack([q, g])
        beta, res, *_ = np.linalg.lstsq(d, yv, rcond=None)
        dof = len(yv) - d.shape[1]
        se = np.sqrt(res[0] / dof * np.linalg.inv(d.T @ d)[-1, -1])
        return float(2 * stats.t.sf(abs(beta[-1] / se), dof))

    p_causal = [pvalue(j) for j in c.causal]
    assert min(p_causal) < 5e-8
    null = [j for j in range(0, c.n_variants, 97) if j not in c.causal and np.nanstd(x[:, j]) > 0]
    assert min(pvalue(j) for j in null) > 1e-5

    # the file's age effect is the one used to build the phenotype (big-mean column matters)
    beta_age = np.linalg.lstsq(np.column_stack([q, x[keep][:, list(c.causal)]]), yv, rcond=None)[0][1]
    assert beta_age == pytest.approx(c.covar_effects[0][0], abs=0.02)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_samples=0), dict(n_chrom=0), dict(missing_rate=1.0), dict(heritability=1.0),
     dict(n_variants=10, n_causal=50), dict(name="a b")],
)
def test_simulate_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        simulate_cohort(tmp_path, **kwargs)


def test_tiny_cohort_without_covariates(tmp_path):
    c = simulate_cohort(tmp_path, n_samples=3, n_variants=4, n_covariates=0, n_causal=1, n_chrom=2)
    assert c.covar is None and c.covar_names == ()
    x = _read_bed(c.bfile)
    assert x.shape == (3, 4) and not np.isnan(x).any()
    header, rows = _read_table(c.pheno)
    assert header == ["#FID", "IID", "pheno1"] and len(rows) == 3 + len(c.extra_pheno_iids)
