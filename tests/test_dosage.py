"""Imputed dosages: --pfile (PGEN) and --bgen (BGEN) against plink2 2.00a3.5 run here on the same files.

plink2 makes every input: ``--dummy`` writes a PGEN with 30% fractional dosages and missing calls,
``--export bgen-1.x`` writes the same data as BGEN (8-bit zlib, 16-bit zstd, layout 1); our
``.bgi`` writer indexes them. The parity tests compare with plink2 ``--glm hide-covar`` on the same
files; an independent oracle (pgenlib per variant + statsmodels) checks the numbers at 1e-9; the
BGEN decoder is checked dosage for dosage against plink2's own import of the same file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import dash_spark as ds
from dash_spark.bench.run import read_plink2_glm
from dash_spark.cli import main
from dash_spark.io.bgen import BgenHeader, read_bgen_rows, write_bgi
from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.studies.store import run_compress, run_refresh

from .test_plink2 import _plink2, _read_ours
from .test_store import assert_same_results

pgenlib = pytest.importorskip("pgenlib")

N, M = 300, 240
PHENOS = ("y1", "y2")
CAUSAL = 17


def plink2(*args):
    proc = subprocess.run([_plink2(), *map(str, args), "--threads", "1"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


def pgen_dosages(prefix: str) -> np.ndarray:
    """ALT dosages [shape: (m, n)] read one variant at a time with pgenlib (NaN missing): the oracle's
    own reader, not dash_spark's."""
    r = pgenlib.PgenReader(f"{prefix}.pgen".encode())
    n, m = r.get_raw_sample_ct(), r.get_variant_ct()
    out = np.empty((m, n), dtype=np.float64)
    buf = np.empty(n, dtype=np.float64)
    for j in range(m):
        r.read_dosages(j, buf)
        out[j] = buf
    r.close()
    out[out == -9] = np.nan
    return out


def psam_iids(prefix: str) -> list[str]:
    with open(f"{prefix}.psam") as fh:
        head = fh.readline().lstrip("#").split()
        return [line.split()[head.index("IID")] for line in fh if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A PGEN with fractional dosages and missing calls, the same data as BGEN, our tables."""
    tmp = tmp_path_factory.mktemp("dosage")
    d = str(tmp / "d")
    plink2("--dummy", N, M, "0.03", "dosage-freq=0.3", "acgt", "--seed", 5, "--make-pgen", "--out", d)
    iids = psam_iids(d)
    X = pgen_dosages(d)
    rng = np.random.default_rng(11)
    age = rng.uniform(40, 70, N)
    pc1 = rng.normal(size=N)
    y1 = 0.6 * np.nan_to_num(X[CAUSAL], nan=1.0) + 0.01 * age + rng.normal(size=N)
    y2 = rng.normal(size=N) + 0.3 * pc1
    y2[rng.random(N) < 0.06] = np.nan
    pheno, covar = str(tmp / "pheno.tsv"), str(tmp / "covar.tsv")
    with open(pheno, "w") as fh:
        fh.write("#IID\ty1\ty2\n")
        for i in rng.permutation(N):
            fh.write(f"{iids[i]}\t{float(y1[i])!r}\t{'NA' if np.isnan(y2[i]) else repr(float(y2[i]))}\n")
    with open(covar, "w") as fh:
        fh.write("#IID\tage\tPC1\n")
        for i in range(N):
            fh.write(f"{iids[i]}\t{float(age[i])!r}\t{'NA' if i % 97 == 3 else repr(float(pc1[i]))}\n")
    files = {"tmp": tmp, "pfile": d, "pheno": pheno, "covar": covar, "iids": iids, "X": X}
    # the same data as BGEN: 8-bit zlib with REF first, 1.3 (zstd) 16-bit with REF last (plink2's default)
    plink2("--pfile", d, "--export", "bgen-1.2", "bits=8", "ref-first", "--out", tmp / "b8")
    plink2("--pfile", d, "--export", "bgen-1.3", "--out", tmp / "b13")
    for name in ("b8", "b13"):
        write_bgi(str(tmp / f"{name}.bgen"))
        files[name] = str(tmp / f"{name}.bgen")
    return files


def _same_as_plink2(ours_glm: str, theirs_glm: str, min_tested: int):
    theirs = read_plink2_glm(theirs_glm)
    ours = _read_ours(ours_glm)
    assert list(ours["ID"]) == [str(v) for v in theirs["ID"]]
    for col in ("CHROM", "REF", "ALT", "A1", "ERRCODE"):
        assert list(ours[col]) == [str(v) for v in theirs[col]], col
    assert np.array_equal(ours["POS"].astype(np.int64), theirs["POS"])
    assert np.array_equal(ours["OBS_CT"].astype(np.int64), theirs["OBS_CT"])
    ok = theirs["ERRCODE"] == "."
    assert ok.sum() >= min_tested
    for col in ("BETA", "SE", "T_STAT", "P"):
        # plink2 prints 6 significant digits: agreement to half a unit in the 6th digit
        np.testing.assert_allclose(ours[col][ok].astype(float), theirs[col][ok].astype(float), rtol=6e-6,
                                   atol=1e-300, err_msg=col)
    return theirs


def _plink2_glm(data, name, *source):
    out = data["tmp"] / f"plink-{name}"
    plink2(*source, "--pheno", data["pheno"], "--covar", data["covar"], "--glm", "hide-covar", "--out", out)
    return {p: f"{out}.{p}.glm.linear" for p in PHENOS}


@pytest.fixture(scope="module")
def pgen_scan(data, spark):
    out = str(data["tmp"] / "ours-pgen")
    assert main(["-q", "scan", "--pfile", data["pfile"], "--pheno", data["pheno"], "--covar", data["covar"],
                 "--out", out, "--no-plots"]) == 0
    return out


# ---------------------------------------------------------------------------------- plink2 parity


def test_pgen_scan_matches_plink2(data, pgen_scan):
    theirs = _plink2_glm(data, "pgen", "--pfile", data["pfile"])
    for p in PHENOS:
        glm = _same_as_plink2(f"{pgen_scan}/{p}.glm.linear", theirs[p], M - 3)
        assert len(set(glm["OBS_CT"].tolist())) > 5  # missing calls: each variant has its own OBS_CT
    X = data["X"]
    frac = ~np.isnan(X) & (X != np.round(X))
    assert frac.mean() > 0.1 and np.isnan(X).mean() > 0.005  # the files really have dosages and missing calls


def test_mach_r2_and_filter_match_plink2(data, pgen_scan, spark):
    """results.parquet's mach_r2 = plink2's MACH_R2 column (per phenotype, over its samples with a
    dosage); --mach-r2-filter MIN MAX keeps the variants plink2 keeps (r-squared over all samples)."""
    out = data["tmp"] / "plink-machr2"
    plink2("--pfile", data["pfile"], "--pheno", data["pheno"], "--covar", data["covar"], "--glm", "hide-covar",
           "cols=+machr2", "--out", out)
    tbl = pq.read_table(f"{pgen_scan}/results.parquet").to_pandas()
    for p in PHENOS:
        theirs = read_plink2_glm(f"{out}.{p}.glm.linear")
        ours = tbl[tbl.phenotype == p].sort_values("variant_index")
        assert list(ours.id) == [str(v) for v in theirs["ID"]]
        r2 = theirs["MACH_R2"].astype(float)
        ok = ~np.isnan(r2)
        assert ok.sum() > M - 5 and np.ptp(r2[ok]) > 0.2
        np.testing.assert_allclose(ours.mach_r2.to_numpy()[ok], r2[ok], rtol=6e-6)
    plink2("--pfile", data["pfile"], "--pheno", data["pheno"], "--covar", data["covar"], "--glm", "hide-covar",
           "--mach-r2-filter", "0.95", "1.1", "--out", data["tmp"] / "plink-machr2-filter")
    theirs = read_plink2_glm(f"{data['tmp']}/plink-machr2-filter.y1.glm.linear")
    assert 20 < len(theirs["ID"]) < M - 20  # the filter really removes some and keeps some
    res = run_scan(ScanConfig(pfile=data["pfile"], pheno=data["pheno"], covar=data["covar"], plots=False,
                              out=str(data["tmp"] / "ours-machr2-filter"), mach_r2_filter=(0.95, 1.1)), spark=spark)
    _same_as_plink2(res.glm_paths["y1"], f"{data['tmp']}/plink-machr2-filter.y1.glm.linear", len(theirs["ID"]) - 3)


@pytest.mark.parametrize("name,ref", [("b8", "ref-first"), ("b13", "ref-last")])
def test_bgen_scan_matches_plink2(data, spark, name, ref):
    bgen, sample = data[name], data[name][:-5] + ".sample"
    theirs = _plink2_glm(data, name, "--bgen", bgen, ref, "--sample", sample)
    out = str(data["tmp"] / f"ours-{name}")
    if name == "b8":  # the command line
        assert main(["-q", "scan", "--bgen", bgen, ref, "--sample", sample, "--pheno", data["pheno"], "--covar",
                     data["covar"], "--out", out, "--no-plots"]) == 0
        glm = {p: f"{out}/{p}.glm.linear" for p in PHENOS}
    else:
        res = run_scan(ScanConfig(bgen=bgen, bgen_ref=ref, sample=sample, pheno=data["pheno"], covar=data["covar"],
                                  out=out, plots=False), spark=spark)
        glm = res.glm_paths
    for p in PHENOS:
        _same_as_plink2(glm[p], theirs[p], M - 3)
    assert BgenHeader(bgen).compression == (1 if name == "b8" else 2)  # zlib and zstd both covered


# ---------------------------------------------------------------------------------- exact decoding


@pytest.mark.parametrize("export,ref", [
    (("bgen-1.2", "bits=8", "ref-first"), "ref-first"),
    (("bgen-1.2", "bits=8"), "ref-last"),
    (("bgen-1.3", "bits=16"), "ref-last"),
    (("bgen-1.3", "bits=3", "ref-first"), "ref-first"),
    (("bgen-1.3", "bits=12"), "ref-last"),
    (("bgen-1.1",), "ref-last"),
], ids=["1.2-8bit", "1.2-8bit-ref-last", "1.3-16bit", "1.3-3bit", "1.3-12bit-ref-last", "1.1-layout1"])
def test_bgen_dosages_equal_plink2_import(data, export, ref):
    """Our decoder gives exactly the dosages plink2 stores when it reads the same BGEN (1/16384 units)."""
    tmp = data["tmp"]
    name = "dec-" + "-".join(export).replace("=", "")
    plink2("--pfile", data["pfile"], "--export", *export, "--out", tmp / name)
    bgen = str(tmp / f"{name}.bgen")
    write_bgi(bgen)
    plink2("--bgen", bgen, ref, "--sample", tmp / f"{name}.sample", "--make-pgen", "--out", tmp / f"{name}-p")
    theirs = pgen_dosages(str(tmp / f"{name}-p"))
    ours, meta = read_bgen_rows(bgen, N, np.arange(M), ref)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.array_equal(np.nan_to_num(ours, nan=-1), np.nan_to_num(theirs, nan=-1))
    with open(tmp / f"{name}-p.pvar") as fh:
        rows = [line.split() for line in fh if not line.startswith("#")]
    assert list(meta[3]) == [r[4] for r in rows] and list(meta[4]) == [r[3] for r in rows]  # ALT, REF
    assert list(meta[1]) == [r[2] for r in rows]


def test_pgen_scan_matches_statsmodels(data, pgen_scan):
    """An oracle that shares no code with dash_spark: pgenlib dosages, pandas tables, statsmodels OLS."""
    pd = pytest.importorskip("pandas")
    sm = pytest.importorskip("statsmodels.api")
    pheno = pd.read_csv(data["pheno"], sep="\t").rename(columns={"#IID": "IID"}).set_index("IID")
    covar = pd.read_csv(data["covar"], sep="\t").rename(columns={"#IID": "IID"}).set_index("IID")
    iids = data["iids"]
    tbl = pq.read_table(f"{pgen_scan}/results.parquet").to_pandas()
    X = data["X"]
    for j in list(range(0, M, 12)) + [CAUSAL]:
        for p in PHENOS:
            frame = pd.DataFrame({"x": X[j]}, index=iids).join(pheno[[p]]).join(covar).dropna()
            fit = sm.OLS(frame[p], sm.add_constant(frame[["x", "age", "PC1"]])).fit()
            row = tbl[(tbl.variant_index == j) & (tbl.phenotype == p)].iloc[0]
            sign = 1.0 if row.a1 == row.alt else -1.0
            assert row.obs_ct == len(frame)
            np.testing.assert_allclose(sign * row.beta, fit.params["x"], rtol=1e-9)
            np.testing.assert_allclose(row.se, fit.bse["x"], rtol=1e-9)
            np.testing.assert_allclose(row.p, fit.pvalues["x"], rtol=1e-9)
    assert tbl[(tbl.variant_index == CAUSAL) & (tbl.phenotype == "y1")].p.iloc[0] < 1e-8


# ---------------------------------------------------------------------------------- stores, select, API


def test_store_of_two_pgen_batches_equals_pooled_scan(data, pgen_scan, spark, tmp_path):
    """compress --store + refresh --add-batch on two PGEN batches equal the pooled scan; select reads them."""
    iids = data["iids"]
    halves = {}
    for k, part in enumerate((iids[: N // 2 + 7], iids[N // 2 + 7 :])):
        keep = tmp_path / f"keep{k}.txt"
        keep.write_text("".join(f"{i}\n" for i in part))
        halves[k] = str(tmp_path / f"half{k}")
        plink2("--pfile", data["pfile"], "--keep", keep, "--make-pgen", "--out", halves[k])
    store = str(tmp_path / "store")
    run_compress(store, "w1", {"pfile": halves[0], "pheno": data["pheno"], "covar": data["covar"]}, spark=spark)
    out = str(tmp_path / "pooled")
    assert main(["-q", "refresh", "--store", store, "--out", out, "--add-batch", "w2", "--pfile", halves[1],
                 "--pheno", data["pheno"], "--covar", data["covar"], "--no-plots"]) == 0
    assert_same_results(f"{pgen_scan}/results.parquet", f"{out}/results.parquet")
    sel = str(tmp_path / "select")
    assert main(["-q", "select", "--store", store, "--out", sel, "--pheno-name", "y1", "--p-threshold", "1e-6",
                 "--max-steps", "1"]) == 0
    with open(f"{sel}/selected.tsv") as fh:
        head = fh.readline().lstrip("#").rstrip("\n").split("\t")
        rows = [dict(zip(head, line.rstrip("\n").split("\t"))) for line in fh]
    assert [r["id"] for r in rows] == [causal_id(data)], rows
    # a withdrawal equals the scan without those samples
    gone = tmp_path / "withdraw.txt"
    gone.write_text("".join(f"{i}\n" for i in iids[0:150:5]))  # 30 samples of w1 (releases differ by >= 20)
    out_w = str(tmp_path / "withdrawn")
    run_refresh(store, out_w, withdraw=str(gone), spark=spark, plots=False)
    expect = run_scan(ScanConfig(pfile=data["pfile"], pheno=data["pheno"], covar=data["covar"], remove=str(gone),
                                 out=str(tmp_path / "scan-removed"), plots=False), spark=spark)
    assert_same_results(expect.results_path, f"{out_w}/results.parquet")
    # a removed batch leaves the other one
    out1 = str(tmp_path / "w1only")
    run_refresh(store, out1, remove="w2", spark=spark, plots=False)
    assert pq.read_table(f"{out1}/results.parquet").num_rows == M * len(PHENOS)


def test_three_party_study_on_pgen_equals_pooled_scan(data, pgen_scan, tmp_path):
    """party compress --pfile: three parties' PGEN thirds, combined, equal the pooled PGEN scan."""
    from .party_flow import Study

    parties = ("alice", "bob", "carol")
    iids = data["iids"]
    st = Study(tmp_path, parties)
    manifest = st.manifest(parties=parties)
    st.join(manifest, parties)
    for k, p in enumerate(parties):
        keep = tmp_path / f"{p}.keep"
        keep.write_text("".join(f"{i}\n" for i in iids[k::3]))
        prefix = tmp_path / p
        plink2("--pfile", data["pfile"], "--keep", keep, "--make-pgen", "--out", prefix)
        code, _, err = st.compress(manifest, p, "--pheno", data["pheno"], "--covar", data["covar"], "--pfile", prefix)
        assert code == 0, err[-3000:]
    st.finish(manifest, tmp_path / "combined", "--no-plots")
    assert_same_results(f"{pgen_scan}/results.parquet", str(tmp_path / "combined" / "results.parquet"))


def causal_id(data) -> str:
    with open(data["pfile"] + ".pvar") as fh:
        rows = [line.split() for line in fh if not line.startswith("#")]
    return rows[CAUSAL][2]


def test_api_open_bgen_and_open_pfile(data, pgen_scan, spark):
    """ds.open_bgen / ds.open_pfile in linear_regression and compress give the scan's numbers."""
    key = ["phenotype", "variant_index"]
    geno = ds.open_bgen(data["b8"], "ref-first", sample=data["b8"][:-5] + ".sample")
    got = ds.linear_regression(spark, geno, data["pheno"], data["covar"]).toPandas().sort_values(key)
    assert len(got) == M * len(PHENOS) and set(got.alt) <= set("ACGT")
    theirs = read_plink2_glm(_plink2_glm(data, "api-b8", "--bgen", data["b8"], "ref-first", "--sample",
                                         data["b8"][:-5] + ".sample")["y1"])
    mine = got[got.phenotype == "y1"]
    assert list(mine.a1) == [str(a) for a in theirs["A1"]] and list(mine.obs_ct) == list(theirs["OBS_CT"])
    S = ds.compress(spark, ds.open_pfile(data["pfile"]), data["pheno"], data["covar"])
    table = S.finalize().to_pandas().sort_values(key).reset_index(drop=True)
    scan = pq.read_table(f"{pgen_scan}/results.parquet").to_pandas().sort_values(key).reset_index(drop=True)
    assert list(scan.a1) == list(table.a1) and list(scan.obs_ct) == list(table.obs_ct)
    ok = scan.se.notna()
    np.testing.assert_allclose(table.beta[ok], scan.beta[ok], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table.se[ok], scan.se[ok], rtol=1e-9)


# ---------------------------------------------------------------------------------- bad input


def _fails(capsys, tmp_path, *args) -> str:
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["-q", "scan", *map(str, args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith("out.tmp")]
    return err[0]


def _copy_pfile(data, tmp_path, name="p") -> str:
    dst = str(tmp_path / name)
    for ext in (".pgen", ".pvar", ".psam"):
        shutil.copy(data["pfile"] + ext, dst + ext)
    return dst


def _copy_bgen(data, tmp_path, name="b8") -> tuple[str, str]:
    dst = str(tmp_path / f"{name}.bgen")
    shutil.copy(data[name], dst)
    shutil.copy(data[name] + ".bgi", dst + ".bgi")
    shutil.copy(data[name][:-5] + ".sample", dst[:-5] + ".sample")
    return dst, dst[:-5] + ".sample"


def test_truncated_pgen(data, tmp_path, capsys):
    p = _copy_pfile(data, tmp_path)
    size = os.path.getsize(p + ".pgen")
    with open(p + ".pgen", "r+b") as fh:
        fh.truncate(size - 40)
    err = _fails(capsys, tmp_path, "--pfile", p, "--pheno", data["pheno"])
    assert f"{p}.pgen" in err and ("truncated" in err or "damaged" in err), err


def test_pvar_zst_matches_plink2(data, spark, tmp_path):
    """A fileset written with plink2's ``--make-pgen vzs`` (a zstd-compressed .pvar): scanned to
    plink2's numbers on the same files; the .pvar text is decompressed once into the private cache,
    nothing is written beside the inputs, and bad lines are named in the .pvar.zst."""
    from dash_spark.io import files

    z = str(tmp_path / "z")
    plink2("--pfile", data["pfile"], "--make-pgen", "vzs", "--out", z)
    assert os.path.exists(z + ".pvar.zst") and not os.path.exists(z + ".pvar")
    listing = sorted(os.listdir(tmp_path))
    theirs = _plink2_glm(data, "zst", "--pfile", z, "vzs")
    res = run_scan(ScanConfig(pfile=z, pheno=data["pheno"], covar=data["covar"], out=str(tmp_path / "o"),
                              plots=False, block_variants=50), spark=spark)
    for p in PHENOS:
        _same_as_plink2(res.glm_paths[p], theirs[p], M - 3)
    assert sorted(os.listdir(tmp_path)) == sorted(listing + ["o"])
    assert os.path.exists(files.cached_path(z + ".pvar.zst", "pvar", ".pvar"))



def test_pvar_zst_bad_line_is_named(data, tmp_path, capsys):
    """A bad line of a .pvar.zst is named in that file, by the line number of its text."""
    import pyarrow as pa

    z = str(tmp_path / "z")
    plink2("--pfile", data["pfile"], "--make-pgen", "vzs", "--out", z)
    with pa.CompressedInputStream(pa.OSFile(z + ".pvar.zst"), "zstd") as src:
        lines = src.read().decode().splitlines(keepends=True)
    head = sum(line.startswith("#") for line in lines)
    f = lines[head + 2].rstrip("\n").split("\t")
    f[1] = "12x"
    lines[head + 2] = "\t".join(f) + "\n"
    with pa.CompressedOutputStream(z + ".pvar.zst", "zstd") as out:
        out.write("".join(lines).encode())
    err = _fails(capsys, tmp_path, "--pfile", z, "--pheno", data["pheno"])
    assert f"{z}.pvar.zst:{head + 3}: POS must be an integer; found '12x'" in err, err
    Path(z + ".pvar.zst").write_bytes(b"not zstd at all")
    err = _fails(capsys, tmp_path, "--pfile", z, "--pheno", data["pheno"])
    assert f"{z}.pvar.zst: cannot decompress the .pvar.zst" in err, err


@pytest.fixture(scope="module")
def multi_data(tmp_path_factory):
    """A VCF with biallelic, triallelic (an ALT the major allele) and quadriallelic variants and
    missing calls, as plink2 imports it; two phenotypes (one missing for some samples), a covariate."""
    tmp = tmp_path_factory.mktemp("multi")
    rng = np.random.default_rng(12)
    n = 150
    ids = [f"m{i}" for i in range(n)]
    specs = [("A", ["G"], [5, 3]), ("A", ["C", "T"], [2, 5, 3]), ("A", ["C", "G", "T"], [4, 3, 2, 1]),
             ("G", ["A", "C"], [6, 3, 1]), ("T", ["C"], [1, 1]), ("C", ["A", "G", "T"], [1, 1, 5, 2])]
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=1>",
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(ids)]
    for j, (ref, alts, w) in enumerate(specs):
        p = np.asarray(w, float) / sum(w)
        calls = []
        for _ in ids:
            if rng.random() < 0.05:
                calls.append("./.")
            else:
                calls.append("/".join(str(a) for a in rng.choice(len(p), 2, p=p)))
        lines.append(f"1\t{100 * (j + 1)}\tv{j}\t{ref}\t{','.join(alts)}\t.\t.\t.\tGT\t" + "\t".join(calls))
    (tmp / "m.vcf").write_text("\n".join(lines) + "\n")
    plink2("--vcf", tmp / "m.vcf", "--make-pgen", "--out", tmp / "m")
    with open(tmp / "m.pheno", "w") as fh:  # three missingness patterns: the shared-basis path
        fh.write("#IID\ty1\ty2\ty3\n")
        for i in ids:
            y2 = "NA" if rng.random() < 0.1 else repr(rng.normal())
            y3 = "NA" if rng.random() < 0.15 else repr(rng.normal())
            fh.write(f"{i}\t{rng.normal()!r}\t{y2}\t{y3}\n")
    with open(tmp / "m.covar", "w") as fh:
        fh.write("#IID\tc1\n" + "".join(f"{i}\t{rng.normal()!r}\n" for i in ids))
    return tmp


@pytest.mark.parametrize("omit_ref", [False, True], ids=["major-omitted", "omit-ref"])
def test_multiallelic_variants_match_plink2(multi_data, spark, omit_ref):
    """plink2's --glm on multiallelic variants: the alleles but the omitted one (the major allele, or
    REF with omit-ref) jointly in one model; a row per tested allele with the whole ALT list."""
    tmp = multi_data
    name = "omit" if omit_ref else "major"
    plink2("--pfile", tmp / "m", "--pheno", tmp / "m.pheno", "--covar", tmp / "m.covar", "--glm", "hide-covar",
           *(["omit-ref"] if omit_ref else []), "--out", tmp / f"plink-{name}")
    res = run_scan(ScanConfig(pfile=str(tmp / "m"), pheno=str(tmp / "m.pheno"), covar=str(tmp / "m.covar"),
                              out=str(tmp / f"ours-{name}"), plots=False, count_alt=omit_ref), spark=spark)
    for p in ("y1", "y2", "y3"):
        theirs = read_plink2_glm(f"{tmp}/plink-{name}.{p}.glm.linear")
        ours = _read_ours(res.glm_paths[p])
        assert len(theirs["ID"]) == 1 + 2 + 3 + 2 + 1 + 3  # a row per tested allele
        for col in ("ID", "REF", "ALT", "A1", "ERRCODE"):
            assert list(ours[col]) == [str(v) for v in theirs[col]], col
        assert np.array_equal(ours["OBS_CT"].astype(np.int64), theirs["OBS_CT"])
        for col in ("BETA", "SE", "T_STAT", "P"):
            np.testing.assert_allclose(ours[col].astype(float), theirs[col].astype(float), rtol=6e-6, atol=1e-300,
                                       err_msg=col)
    if not omit_ref:  # the triallelic variant whose ALT C is the major allele: REF is tested
        assert "A" in list(ours["A1"][list(ours["ID"]).index("v1"):][:2])


def test_multiallelic_variants_refused_where_not_modelled(multi_data, tmp_path, capsys):
    tmp = multi_data
    from dash_spark.studies.store import run_compress

    with pytest.raises(ds.DashError, match=r"multiallelic variant\(s\), e\.g\. v1 .*multiallelics=-"):
        run_compress(str(tmp_path / "store"), "a", {"pfile": str(tmp / "m"), "pheno": str(tmp / "m.pheno")})
    assert not (tmp_path / "store").exists() or not os.listdir(tmp_path / "store")
    err = _fails(capsys, tmp_path, "--pfile", tmp / "m", "--pheno", tmp / "m.pheno", "--gwas-ssf",
                 "--genome-assembly", "GRCh38")
    assert "--gwas-ssf tests biallelic variants only" in err, err


def test_bgen_without_bgi_matches_plink2_and_is_indexed_once(data, spark, tmp_path, caplog):
    """plink2 reads a BGEN without an index; so do we: the index is built once into the private cache
    (never beside the input), reused while the file is unchanged, and built again when it changes."""
    import logging

    from dash_spark.io.bgen import cached_bgi_path
    from dash_spark.io.files import cache_dir

    bgen, sample = _copy_bgen(data, tmp_path)
    os.remove(bgen + ".bgi")
    theirs = _plink2_glm(data, "b8-nobgi", "--bgen", bgen, "ref-first", "--sample", sample)
    before = sorted(p for p in os.listdir(tmp_path))
    cached = cached_bgi_path(bgen)
    assert os.path.dirname(cached) == cache_dir("bgi") and not os.path.exists(cached)
    cfg = ScanConfig(bgen=bgen, bgen_ref="ref-first", sample=sample, pheno=data["pheno"], covar=data["covar"],
                     out=str(tmp_path / "o1"), plots=False)
    with caplog.at_level(logging.INFO, logger="dash_spark"):
        res = run_scan(cfg, spark=spark)
    assert sum("has no .bgi; indexing" in r.getMessage() for r in caplog.records) == 1
    for p in PHENOS:
        _same_as_plink2(res.glm_paths[p], theirs[p], M - 3)
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["o1"])  # nothing beside the input
    assert os.stat(os.path.dirname(cached)).st_mode & 0o077 == 0
    built = os.stat(cached).st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dash_spark"):
        again = run_scan(dataclasses.replace(cfg, out=str(tmp_path / "o2")), spark=spark)
    assert not any("indexing" in r.getMessage() for r in caplog.records)
    assert os.stat(cached).st_mtime_ns == built
    for p in PHENOS:
        assert Path(again.glm_paths[p]).read_bytes() == Path(res.glm_paths[p]).read_bytes()
    # a new version of the file (another modification time) gets its own index
    st = os.stat(bgen)
    os.utime(bgen, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cached_bgi_path(bgen) != cached
    ds.open_bgen(bgen, "ref-first", sample)
    assert os.path.exists(cached_bgi_path(bgen))
    # a damaged private index is built again, not trusted and not reported as the user's problem
    with open(cached_bgi_path(bgen), "r+b") as fh:
        fh.truncate(100)
    assert ds.open_bgen(bgen, "ref-first", sample).variants.n_variants == M


def test_bgen_index_cache_that_cannot_be_written(data, tmp_path, capsys, monkeypatch):
    bgen, sample = _copy_bgen(data, tmp_path)
    os.remove(bgen + ".bgi")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DASH_SPARK_CACHE", str(blocker))  # a file: the cache folder cannot be made
    err = _fails(capsys, tmp_path, "--bgen", bgen, "ref-first", "--sample", sample, "--pheno", data["pheno"])
    assert f"{bgen}: no index beside it" in err and "DASH_SPARK_CACHE" in err, err


def test_truncated_bgen(data, tmp_path, capsys):
    bgen, sample = _copy_bgen(data, tmp_path)
    with open(bgen, "r+b") as fh:
        fh.truncate(os.path.getsize(bgen) - 100)
    err = _fails(capsys, tmp_path, "--bgen", bgen, "ref-first", "--sample", sample, "--pheno", data["pheno"])
    assert err.startswith(f"dash-spark: error: {bgen}: ") and "the .bgen is truncated" in err, err


def test_sample_count_differs(data, tmp_path, capsys):
    bgen, sample = _copy_bgen(data, tmp_path)
    lines = Path(sample).read_text().splitlines(keepends=True)
    Path(sample).write_text("".join(lines[:-1]))
    err = _fails(capsys, tmp_path, "--bgen", bgen, "ref-first", "--sample", sample, "--pheno", data["pheno"])
    assert err.startswith(f"dash-spark: error: {sample}: {N - 1} samples, but b8.bgen has {N}"), err


def test_bad_ref_mode(data, tmp_path, capsys):
    bgen, sample = _copy_bgen(data, tmp_path)
    err = _fails(capsys, tmp_path, "--bgen", bgen, "ref-unknown", "--sample", sample, "--pheno", data["pheno"])
    assert "expected 'ref-first' or 'ref-last'" in err, err


def _write_bgen(path, n, records, *, layout=2, phased=False, bits=8, ids=None, missing=None, index=True):
    """A tiny uncompressed BGEN (the test's own writer, after the BGEN specification): ``records`` =
    [(rsid, pos, probs (n, 2) ints)]: unphased, P(11) and P(12) per sample; phased, P(allele 1) on
    each haplotype. ``missing``: (n,) bools, the ploidy byte's missing flag."""
    ids = ids or [f"s{i}" for i in range(n)]
    flags = (layout << 2) | (1 << 31)
    blob = b"".join(struct.pack("<H", len(i.encode())) + i.encode() for i in ids)
    sblock = struct.pack("<II", 8 + len(blob), n) + blob
    ploidy = bytes([0x82 if m else 2 for m in (missing if missing is not None else [False] * n)])
    body = b""
    for rsid, pos, probs in records:
        rec = struct.pack("<H", len(rsid)) + rsid.encode() + struct.pack("<H", len(rsid)) + rsid.encode()
        rec += struct.pack("<H", 1) + b"1" + struct.pack("<IH", pos, 2)
        rec += struct.pack("<I", 1) + b"A" + struct.pack("<I", 1) + b"G"
        g = struct.pack("<IHBB", n, 2, 2, 2) + ploidy + bytes([1 if phased else 0, bits])
        g += np.asarray(probs, dtype=np.uint8).tobytes()
        rec += struct.pack("<I", len(g)) + g
        body += rec
    data = struct.pack("<IIII4sI", 20 + len(sblock), 20, len(records), n, b"bgen", flags) + sblock + body
    with open(path, "wb") as fh:
        fh.write(data)
    if index:
        write_bgi(path)


def test_phased_bgen_matches_plink2(data, spark, tmp_path):
    """Phased records (each haplotype's probability of allele 1, as phasing tools write them, with
    missing samples): dosages equal to plink2's own import of the same file, 1/16384 for 1/16384,
    and the scan equal to plink2 --glm on it."""
    rng = np.random.default_rng(8)
    n, m = N, 60
    haps = rng.integers(0, 256, (m, n, 2))
    haps[: m // 2] = np.where(rng.random((m // 2, n, 2)) < 0.8, 255, 0)  # hard-called haplotypes too
    missing = rng.random(n) < 0.03
    bgen = str(tmp_path / "phased.bgen")
    _write_bgen(bgen, n, [(f"ph{j}", 1000 + j, haps[j]) for j in range(m)], phased=True, ids=data["iids"],
                missing=missing, index=False)
    plink2("--bgen", bgen, "ref-first", "--make-pgen", "--out", tmp_path / "phased-p")
    theirs = pgen_dosages(str(tmp_path / "phased-p"))
    ours, meta = read_bgen_rows(bgen, n, np.arange(m), "ref-first")
    assert np.isnan(ours).sum(axis=1).tolist() == [int(missing.sum())] * m
    np.testing.assert_array_equal(np.nan_to_num(ours, nan=-1), np.nan_to_num(theirs, nan=-1))
    glm = _plink2_glm(data, "phased", "--bgen", bgen, "ref-first")
    res = run_scan(ScanConfig(bgen=bgen, bgen_ref="ref-first", pheno=data["pheno"], covar=data["covar"],
                              out=str(tmp_path / "ours"), plots=False), spark=spark)
    for p in PHENOS:
        _same_as_plink2(res.glm_paths[p], glm[p], m - 3)


def test_unphased_tiny_bgen_decodes_by_hand(tmp_path):
    ok = str(tmp_path / "unphased.bgen")
    probs = np.array([[255, 0], [0, 255], [0, 0], [100, 55], [10, 20], [0, 0], [255, 0], [3, 250]])
    _write_bgen(ok, 8, [("rsA", 5, probs)])
    src = ds.open_bgen(ok, "ref-first")
    assert src.fam.iids == tuple(f"s{i}" for i in range(8))
    dos, meta = read_bgen_rows(ok, 8, np.array([0]), "ref-first")
    expect = np.round((2 * (255 - probs.sum(axis=1)) + probs[:, 1]) * 16384 / 255) / 16384
    np.testing.assert_array_equal(dos[0], expect)
    assert meta[3][0] == "G" and meta[4][0] == "A"


def test_bgen_ids_split_by_id_delim(tmp_path, capsys):
    """--id-delim (plink2's flag): the stored IDs are FID_IID; IDs that do not split in two, or two
    samples with one IID, are refused with the samples named."""
    rng = np.random.default_rng(4)
    probs = rng.integers(0, 128, (6, 2))
    ids = ["F1_A", "F1_B", "F2_C", "F3_D", "F3_E", "F4_F"]
    good = str(tmp_path / "ids.bgen")
    _write_bgen(good, 6, [("rsA", 5, probs)], ids=ids)
    src = ds.open_bgen(good, "ref-first", id_delim="_")
    assert src.fam.fids == ("F1", "F1", "F2", "F3", "F3", "F4") and src.fam.iids == tuple("ABCDEF")
    assert ds.open_bgen(good, "ref-first").fam.iids == tuple(ids)
    pheno = tmp_path / "ph.tsv"
    pheno.write_text("#FID\tIID\ty\n" + "".join(f"{i.split('_')[0]}\t{i.split('_')[1]}\t{rng.normal()!r}\n"
                                                  for i in ids))
    err = _fails(capsys, tmp_path, "--bgen", good, "ref-first", "--pheno", pheno)
    assert "'F1_A'" in err and "add --id-delim _" in err, err
    for bad_ids, needle in ((["F1_A", "F1B", *ids[2:]], "sample 2 has the ID 'F1B'"),
                            (["F1_A", "F1_B_x", *ids[2:]], "sample 2 has the ID 'F1_B_x'"),
                            (["F1_A", "F2_A", *ids[2:]], "samples 1 and 2 ('F1_A', 'F2_A') share the IID 'A'")):
        bad = str(tmp_path / "bad.bgen")
        _write_bgen(bad, 6, [("rsA", 5, probs)], ids=bad_ids)
        err = _fails(capsys, tmp_path, "--bgen", bad, "ref-first", "--id-delim", "--pheno", pheno)
        assert err.startswith(f"dash-spark: error: {bad}: {needle}"), err
    err = _fails(capsys, tmp_path, "--bgen", good, "ref-first", "--id-delim", "--sample", pheno, "--pheno", pheno)
    assert "--id-delim splits the sample IDs stored in the .bgen, but --sample" in err, err


def test_psam_or_pvar_that_does_not_fit_the_pgen_is_named_in_plain_text(data, tmp_path, capsys):
    """A .psam one sample short (or a .pvar one variant short) of the .pgen: one line naming the
    files and counts, pgenlib's text decoded (never a Python bytes literal)."""
    p = _copy_pfile(data, tmp_path)
    psam = Path(p + ".psam")
    lines = psam.read_text().splitlines(keepends=True)
    psam.write_text("".join(lines[:-1]))
    err = _fails(capsys, tmp_path, "--pfile", p, "--pheno", data["pheno"])
    assert f"{p}.pgen" in err and "b'" not in err and 'b"' not in err, err
    q = _copy_pfile(data, tmp_path, name="q")
    pvar = Path(q + ".pvar")
    lines = pvar.read_text().splitlines(keepends=True)
    pvar.write_text("".join(lines[:-1]))
    err = _fails(capsys, tmp_path, "--pfile", q, "--pheno", data["pheno"])
    assert f"{q}.pgen" in err and "b'" not in err and 'b"' not in err, err
