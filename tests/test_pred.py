"""``--pred``: REGENIE step-1 LOCO offsets.

- REGENIE's own step-2 outputs (v1.0.6.7, ``../shared/peer-data/regenie``) to its printed digits;
- the REGENIE test on harder data (distinct phenotype missingness, samples missing from a .loco
  file, missing calls) against a literal dense transcription of REGENIE's C++ steps (numpy,
  bed-reader and pandas; no dash_spark code);
- the Wald mode against statsmodels OLS of ``y - o_chr`` per variant (1e-9);
- bad .loco input: one message naming the file and the sample or line, exit 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dash_spark.cli import main
from dash_spark.errors import InputError
from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import COVARS, PHENOS, make_files, statsmodels_oracle

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peer-data" / "regenie"
needs_peer = pytest.mark.skipif(not PEER.is_dir(), reason="../shared/peer-data/regenie is not here")


def _read_regenie(path) -> dict[str, dict]:
    lines = Path(path).read_text().splitlines()
    head = lines[0].split()
    return {row[head.index("ID")]: dict(zip(head, row)) for row in (ln.split() for ln in lines[1:])}


def _same_printed(ours: float, theirs: str) -> bool:
    """``ours`` printed with REGENIE's 6 significant digits equals ``theirs`` (one unit in the last
    digit allowed for a value on a rounding boundary)."""
    t = float(theirs)
    if f"{ours:.6g}" == f"{t:.6g}":
        return True
    unit = 10.0 ** (np.floor(np.log10(abs(t))) - 5) if t else 1e-300
    return abs(ours - t) <= 1.01 * unit


def _gzip_loco(src: Path, dest: Path, na: set[str]) -> None:
    """A step-1 .loco file as REGENIE writes it with --gz and a trait's masked samples: gzip, and NA
    in the columns of the samples (``FID_IID`` keys) in ``na``."""
    import gzip

    lines = [ln.split() for ln in src.read_text().splitlines() if ln.strip()]
    cols = [j for j, k in enumerate(lines[0]) if k in na]
    assert len(cols) == len(na)
    for row in lines[1:]:
        for j in cols:
            row[j] = "NA"
    dest.write_bytes(gzip.compress(("\n".join(" ".join(r) for r in lines) + "\n").encode()))


@needs_peer
@pytest.mark.parametrize("case", ["plain", "missing", "missing-gz", "3chr", "bgen-fid-iid"])
def test_regenie_mode_matches_regenie_outputs(case, spark, tmp_path):
    """REGENIE's step-2 results; ``missing-gz``: the step-1 files as pipelines have them (``--gz``:
    ``*.loco.gz`` named by the list, and ``NA`` predictions for the samples a trait masks);
    ``bgen-fid-iid``: the genotypes as the BGEN REGENIE read (plink2's export, which stores each
    sample as ``FID_IID``, and no .bgi), read with ``--id-delim _``."""
    bfile, loco, ref = {"plain": ("example", "fit_lin_out", "test_lin_out"),
                        "bgen-fid-iid": ("example", "fit_lin_out", "test_lin_out"),
                        "missing": ("example", "fit_lin_out", "test_lin_out_missing"),
                        "missing-gz": ("example", "fit_lin_out", "test_lin_out_missing"),
                        "3chr": ("example_3chr", "fit_lin_out_3chr", "test_lin_out_3chr")}[case]
    pred = tmp_path / "fit_pred.list"
    pred.write_text(f"Y1 {PEER}/{loco}_1.loco\nY2 {PEER}/{loco}_2.loco\n")
    pheno = PEER / "phenotype.txt"
    gone = {tuple(ln.split()) for ln in (PEER / "fid_iid_to_remove.txt").read_text().splitlines() if ln.strip()}
    if case == "missing-gz":
        for t in (1, 2):
            _gzip_loco(PEER / f"{loco}_{t}.loco", tmp_path / f"{loco}_{t}.loco.gz", {f"{f}_{i}" for f, i in gone})
        pred.write_text(f"Y1 {loco}_1.loco.gz\nY2 {loco}_2.loco.gz\n")  # beside the list, as step 1 writes it
    if case.startswith("missing"):  # REGENIE's run: these samples' phenotypes set missing
        lines = pheno.read_text().splitlines()
        out = [lines[0]] + [" ".join(f[:2] + ["NA", "NA"]) if tuple(f[:2]) in gone else " ".join(f)
                            for f in (ln.split() for ln in lines[1:])]
        pheno = tmp_path / "pheno_missing.txt"
        pheno.write_text("\n".join(out) + "\n")
        assert len(gone) == 6
    source = {"bfile": str(PEER / bfile)}
    if case == "bgen-fid-iid":
        import shutil
        import subprocess

        exe = shutil.which("plink2")
        assert exe, "plink2 is not installed; `make test` installs Debian's plink2 package"
        proc = subprocess.run([exe, "--bfile", PEER / bfile, "--export", "bgen-1.2", "ref-first", "id-paste=fid,iid",
                               "id-delim=_", "--out", tmp_path / "geno", "--threads", "1"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
        from dash_spark.io.bgen import BgenHeader

        assert BgenHeader(str(tmp_path / "geno.bgen")).embedded_ids()[:2] == ["1_1", "2_2"]
        source = {"bgen": str(tmp_path / "geno.bgen"), "bgen_ref": "ref-first", "id_delim": "_"}
    res = run_scan(ScanConfig(**source, pheno=str(pheno), covar=str(PEER / "covariates.txt"),
                              pred=str(pred), pred_test="regenie", out=str(tmp_path / "out"), plots=False),
                   spark=spark)
    import pyarrow.parquet as pq

    tbl = pq.read_table(res.results_path).to_pydict()
    for phen in ("Y1", "Y2"):
        theirs = _read_regenie(PEER / f"{ref}_{phen}.regenie")
        ours_file = _read_regenie(Path(res.out) / f"{phen}.regenie")
        assert set(ours_file) == set(theirs) and len(theirs) >= 500
        rows = {vid: i for i, (vid, p) in enumerate(zip(tbl["id"], tbl["phenotype"])) if p == phen}
        assert set(rows) == set(theirs)
        flipped = 0
        for vid, t in theirs.items():
            i = rows[vid]
            o = ours_file[vid]
            assert {o["ALLELE0"], o["ALLELE1"]} == {t["ALLELE0"], t["ALLELE1"]}
            flip = o["ALLELE1"] != t["ALLELE1"]  # REGENIE read a BGEN copy whose allele order may differ
            flipped += flip
            freq, beta = tbl["a1_freq"][i], tbl["beta"][i]
            if flip:
                freq, beta = 1.0 - freq, -beta
            chisq = tbl["t_stat"][i] ** 2
            assert _same_printed(freq, t["A1FREQ"]), (vid, freq, t["A1FREQ"])
            assert _same_printed(beta, t["BETA"]), (vid, beta, t["BETA"])
            assert _same_printed(tbl["se"][i], t["SE"]), (vid, tbl["se"][i], t["SE"])
            assert _same_printed(chisq, t["CHISQ"]), (vid, chisq, t["CHISQ"])
            assert _same_printed(tbl["neg_log10_p"][i], t["LOG10P"]), (vid, tbl["neg_log10_p"][i], t["LOG10P"])
            # our own .regenie file prints the same digits
            assert o["BETA"] == f"{tbl['beta'][i]:.6g}" and o["CHISQ"] == f"{chisq:.6g}"
        assert flipped in (0, len(theirs))  # one consistent orientation


@needs_peer
def test_na_predictions_of_samples_a_trait_does_not_analyse(spark, tmp_path):
    """REGENIE's step 1 writes NA for the samples a trait masks; a sample missing only Y1 has NA in
    Y1's .loco but a prediction in Y2's. The scan takes it and equals the scan with the original
    predictions; an NA for a sample the trait analyses is still refused, naming it."""
    pheno_lines = (PEER / "phenotype.txt").read_text().splitlines()
    rows = [ln.split() for ln in pheno_lines[1:]]
    masked = {f"{r[0]}_{r[1]}" for r in rows[:5]}
    for r in rows[:5]:
        r[2] = "NA"  # Y1 only
    pheno = tmp_path / "pheno.txt"
    pheno.write_text(pheno_lines[0] + "\n" + "\n".join(" ".join(r) for r in rows) + "\n")
    _gzip_loco(PEER / "fit_lin_out_1.loco", tmp_path / "y1.loco.gz", masked)
    na_list = tmp_path / "na_pred.list"
    na_list.write_text(f"Y1 {tmp_path}/y1.loco.gz\nY2 {PEER}/fit_lin_out_2.loco\n")
    plain_list = tmp_path / "plain_pred.list"
    plain_list.write_text(f"Y1 {PEER}/fit_lin_out_1.loco\nY2 {PEER}/fit_lin_out_2.loco\n")
    outs = {}
    for name, lst in (("na", na_list), ("plain", plain_list)):
        for test in ("regenie", "wald"):
            res = run_scan(ScanConfig(bfile=str(PEER / "example"), pheno=str(pheno), covar=str(PEER / "covariates.txt"),
                                      pred=str(lst), pred_test=test, out=str(tmp_path / f"{name}_{test}"), plots=False),
                           spark=spark)
            outs[(name, test)] = res.out
    for test, files in (("regenie", ("Y1.regenie", "Y2.regenie")), ("wald", ("Y1.glm.linear", "Y2.glm.linear"))):
        for f in files:
            assert (Path(outs[("na", test)]) / f).read_bytes() == (Path(outs[("plain", test)]) / f).read_bytes(), f
    _gzip_loco(PEER / "fit_lin_out_2.loco", tmp_path / "y2.loco.gz", masked)  # Y2 analyses these samples
    na_list.write_text(f"Y1 {tmp_path}/y1.loco.gz\nY2 {tmp_path}/y2.loco.gz\n")
    with pytest.raises(InputError, match=r"y2\.loco\.gz: line 2 .*sample 1_1 has prediction 'NA'"):
        run_scan(ScanConfig(bfile=str(PEER / "example"), pheno=str(pheno), covar=str(PEER / "covariates.txt"),
                            pred=str(na_list), out=str(tmp_path / "bad"), plots=False), spark=spark)


# ------------------------------------------------------------------------------------------------
# harder data: the test's own files


def _fam_keys(bfile: str) -> list[str]:
    return [f"{ln.split()[0]}_{ln.split()[1]}" for ln in Path(bfile + ".fam").read_text().splitlines()]


def _write_locos(tmp, files, rng, *, absent: dict[str, list[int]]):
    """Random LOCO predictions for chromosomes 1-23 per phenotype (some samples absent from a file,
    one unknown sample, the header shuffled); returns (pred list path, {phenotype: {chrom: {key: o}}})."""
    keys = _fam_keys(files.bfile)
    preds, lines = {}, []
    for t, name in enumerate(PHENOS):
        cols = [k for i, k in enumerate(keys) if i not in set(absent.get(name, []))] + ["ghost_ghost"]
        cols = [cols[i] for i in rng.permutation(len(cols))]
        table = {c: dict(zip(cols, rng.normal(0, 0.3 + 0.1 * t, len(cols)))) for c in range(1, 24)}
        preds[name] = table
        path = tmp / f"p_{name}.loco"
        with open(path, "w") as fh:
            fh.write("FID_IID " + " ".join(cols) + "\n")
            for c in range(1, 24):
                fh.write(f"{c} " + " ".join(repr(float(table[c][k])) for k in cols) + "\n")
        lines.append(f"{name} {path.name}")  # relative to the list's folder
    pred = tmp / "fit_pred.list"
    pred.write_text("\n".join(lines) + "\n")
    return pred, preds


@pytest.fixture(scope="module")
def pred_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    rng = np.random.default_rng(20261202)
    files = make_files(tmp, rng, n=300, m=220, missing=0.03)
    absent = {"pheno1": [3, 50, 77], "pheno3": [9]}
    pred, preds = _write_locos(tmp, files, rng, absent=absent)
    return tmp, files, pred, preds, absent


def _adjusted_pheno(files, preds, absent, chrom: int, path: Path) -> None:
    """The phenotype file with ``y - o_chrom`` (NA where a sample has no prediction)."""
    keys = _fam_keys(files.bfile)
    gone = {name: {keys[i].split("_", 1)[1] for i in idx} for name, idx in absent.items()}
    lines = Path(files.pheno).read_text().splitlines()
    out = [lines[0]]
    for ln in lines[1:]:
        f = ln.split("\t")
        vals = []
        for name, v in zip(PHENOS, f[2:]):
            key = f"{f[0]}_{f[1]}"
            if v in ("NA", "nan", "-9") or key not in preds[name][chrom] or f[1] in gone.get(name, ()):
                vals.append("NA")
            else:
                vals.append(repr(float(v) - float(preds[name][chrom][key])))
        out.append("\t".join(f[:2] + vals))
    path.write_text("\n".join(out) + "\n")


@pytest.mark.parametrize("phenotype", PHENOS)
def test_wald_mode_matches_statsmodels_on_adjusted_phenotype(pred_data, phenotype, spark, tmp_path):
    tmp, files, pred, preds, absent = pred_data
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, pred=str(pred),
                              out=str(tmp_path / "out"), plots=False), spark=spark)
    import pyarrow.parquet as pq

    df = pq.read_table(res.results_path).to_pandas()
    df = df[df["phenotype"] == phenotype].sort_values("variant_index")
    ours = {k: df[k].to_numpy() for k in df.columns}
    assert np.array_equal(ours["variant_index"], np.arange(files.m))
    chroms = np.array([ln.split()[0] for ln in Path(files.bfile + ".bim").read_text().splitlines()])
    checked = 0
    for c in ("1", "2"):
        path = tmp_path / f"adj{c}.tsv"
        _adjusted_pheno(files, preds, absent, int(c), path)
        idx = np.flatnonzero(chroms == c)
        ref = statsmodels_oracle(dataclasses.replace(files, pheno=str(path)), phenotype, "drop", variants=idx)
        sign = np.where(ours["a1"][idx] == ours["alt"][idx], 1.0, -1.0)
        ok = ~ref["const"][idx] & ~np.isnan(ref["beta"][idx])
        rb, rs = ref["beta"][idx][ok], ref["se"][idx][ok]
        assert np.all(np.abs(sign[ok] * ours["beta"][idx][ok] - rb) <= 1e-9 * np.maximum(np.abs(rb), rs))
        np.testing.assert_allclose(ours["se"][idx][ok], rs, rtol=1e-9)
        np.testing.assert_allclose(ours["p"][idx][ok], ref["p"][idx][ok], rtol=1e-8, atol=1e-300)
        assert np.all(ours["obs_ct"][idx] == ref["n"][idx])
        checked += ok.sum()
    assert checked > 100


def _regenie_transcription(files, pred_path: Path, phenotype: str) -> dict[str, dict]:
    """REGENIE v1.0.6.7's step 2 for a QT, default mode, written out literally from its C++
    (Pheno.cpp pheno_read/prep_run/residualize_phenotypes, Data.cpp compute_res/residualize_geno/
    the QT branch of the test loop, Geno.cpp parseSnpfromBed/mean_impute_g) on dense matrices."""
    import pandas as pd
    from bed_reader import open_bed

    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")  # ALT (.bim column 5) counts, NaN missing
        fam = list(zip(bed.fid, bed.iid))
        ids = list(bed.sid)
        chrom = list(bed.chromosome)
    n = len(fam)
    ph = pd.read_csv(files.pheno, sep="\t", na_values=["NA", "nan", "-9"], keep_default_na=False)
    ph = ph.rename(columns={"#FID": "FID"}).set_index("IID")
    cv = pd.read_csv(files.covar, sep=" ", na_values=["NA"], keep_default_na=False).set_index("IID")
    iids = [i for _, i in fam]
    Yall = pd.DataFrame(index=iids).join(ph[list(PHENOS)]).to_numpy()
    Cv = pd.DataFrame(index=iids).join(cv[list(COVARS)]).to_numpy()
    t = PHENOS.index(phenotype)
    y = Yall[:, t]
    in_pheno = ~np.isnan(Yall).all(axis=1)
    in_cov = ~np.isnan(Cv).any(axis=1)
    ind_in_analysis = in_pheno & in_cov
    masked = ~np.isnan(y) & in_pheno
    mean = np.nanmean(y)  # pheno_read: total/ns over every sample with a value
    Y = np.where(~np.isnan(y), y - mean, 0.0) * masked
    masked = masked & ind_in_analysis
    Y = Y * ind_in_analysis
    new_cov = np.column_stack([np.ones(n), np.nan_to_num(Cv)]) * ind_in_analysis[:, None]
    # blup_read: samples not in the .loco file are masked
    lines = dict(ln.split(maxsplit=1) for ln in pred_path.read_text().splitlines())
    loco_path = pred_path.parent / lines[phenotype].strip()
    loco_lines = loco_path.read_text().splitlines()
    header = loco_lines[0].split()[1:]
    keys = [f"{f}_{i}" for f, i in fam]
    in_file = np.isin(keys, header)
    masked = masked & in_file
    Neff = masked.sum()
    # getCovBasis
    xtx = new_cov.T @ new_cov
    D, V = np.linalg.eigh(xtx)
    keep = D > D[-1] * 1e-16
    Q = new_cov @ V[:, keep] / np.sqrt(D[keep])
    # residualize_phenotypes
    beta = Y @ Q
    Y = Y - (Q @ beta) * masked
    scale_Y = np.linalg.norm(Y) / np.sqrt(Neff - 1)
    Y = Y / scale_Y
    out = {}
    blups = {}
    for row in loco_lines[1:]:
        f = row.split()
        vals = dict(zip(header, map(float, f[1:])))
        blups[f[0]] = np.array([vals.get(k, 0.0) if ind_in_analysis[i] else 0.0 for i, k in enumerate(keys)])
    N_A = ind_in_analysis.sum()
    for j in range(G.shape[1]):
        o = blups[chrom[j]]
        res = (Y - o) * masked  # compute_res
        p_sd = np.linalg.norm(res) / np.sqrt(Neff - 1)
        res = res / p_sd
        g = G[:, j]
        called = ~np.isnan(g) & ind_in_analysis
        total, ns = g[called].sum(), called.sum()
        mac = min(total, 2 * ns - total)
        if mac < 5:
            continue
        mu = total / ns
        geno = np.where(called, g - mu, 0.0)
        geno = geno - Q @ (Q.T @ geno)  # residualize_geno
        scale_fac = np.linalg.norm(geno) / np.sqrt(N_A - 1)
        if scale_fac < 1e-6:
            continue
        geno = geno / scale_fac
        sfp = (geno * masked) @ (geno * masked)
        stat = geno @ res / np.sqrt(sfp)
        bhat = stat * scale_Y * p_sd / (np.sqrt(sfp) * scale_fac)
        from scipy.stats import chi2

        out[ids[j]] = dict(beta=bhat, se=bhat / stat, chisq=stat * stat, log10p=-np.log10(chi2.sf(stat * stat, 1)),
                           af=mu / 2, n=Neff)
    return out


def test_regenie_mode_matches_transcription_with_distinct_missingness(pred_data, spark, tmp_path):
    _, files, pred, _, _ = pred_data
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, pred=str(pred),
                              pred_test="regenie", out=str(tmp_path / "out"), plots=False), spark=spark)
    import pyarrow.parquet as pq

    tbl = pq.read_table(res.results_path).to_pydict()
    for phenotype in PHENOS:
        ref = _regenie_transcription(files, pred, phenotype)
        rows = {vid: i for i, (vid, p) in enumerate(zip(tbl["id"], tbl["phenotype"])) if p == phenotype}
        assert set(rows) == set(ref) and len(ref) > 100  # the same variants tested (MAC and variance filters)
        for vid, r in ref.items():
            i = rows[vid]
            assert tbl["a1"][i] == tbl["alt"][i]  # ALLELE1 = ALT, as REGENIE counts it
            np.testing.assert_allclose([tbl["beta"][i], tbl["se"][i], tbl["t_stat"][i] ** 2, tbl["a1_freq"][i]],
                                       [r["beta"], r["se"], r["chisq"], r["af"]], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(tbl["neg_log10_p"][i], r["log10p"], rtol=1e-8, atol=1e-12)
            assert tbl["obs_ct"][i] == r["n"]
    regenie_text = (Path(res.out) / "pheno1.regenie").read_text().splitlines()
    assert regenie_text[0] == "CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ TEST BETA SE CHISQ LOG10P"


# ------------------------------------------------------------------------------------------------
# bad input


def _cli(capsys, *args):
    rc = main(["-q", *args])
    return rc, capsys.readouterr().err


def test_bad_loco_files_one_line_exit_2(pred_data, tmp_path, capsys, spark):
    tmp, files, pred, _, _ = pred_data
    keys = _fam_keys(files.bfile)
    base = ["scan", "--bfile", files.bfile, "--pheno", files.pheno, "--covar", files.covar, "--no-plots",
            "--pheno-name", "pheno2"]

    def run_with(loco_text: str, name: str):
        loco = tmp_path / f"{name}.loco"
        loco.write_text(loco_text)
        lst = tmp_path / f"{name}.list"
        lst.write_text(f"pheno2 {loco}\n")
        out = tmp_path / f"out_{name}"
        rc, err = _cli(capsys, *base, "--pred", str(lst), "--out", str(out))
        assert rc == 2, err[-2000:]
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
        return err

    rows = "".join(f"{c} " + " ".join("0.1" for _ in keys) + "\n" for c in range(1, 24))
    dup = "FID_IID " + " ".join(keys[:-1] + [keys[0]]) + "\n" + rows
    err = run_with(dup, "dup")
    assert "dup.loco" in err and keys[0] in err and "twice" in err
    na_rows = rows.replace("2 0.1 0.1", "2 0.1 NA", 1)
    err = run_with("FID_IID " + " ".join(keys) + "\n" + na_rows, "na")
    assert "na.loco" in err and keys[1] in err and "'NA'" in err
    err = run_with("IID " + " ".join(keys) + "\n" + rows, "header")
    assert "header.loco" in err and "FID_IID" in err
    short = "FID_IID " + " ".join(keys) + "\n" + "1 0.1\n"
    err = run_with(short, "short")
    assert "short.loco: line 2" in err
    lst = tmp_path / "nolist.list"
    lst.write_text("pheno1 x.loco\n")
    rc, err = _cli(capsys, *base, "--pred", str(lst), "--out", str(tmp_path / "o"))
    assert rc == 2 and "pheno2" in err and "nolist.list" in err


# ------------------------------------------------------------------------------------------------
# the additive statistics take the offsets: a store (refresh, withdrawal) and a 3-party study


def _subset_pred(tmp, pred: Path, keys: set[str], name: str) -> Path:
    """A party's own prediction list: each .loco file cut down to the party's samples."""
    lines = []
    for ln in pred.read_text().splitlines():
        phen, loco = ln.split()
        rows = [r.split() for r in (pred.parent / loco).read_text().splitlines()]
        cols = [j for j, k in enumerate(rows[0]) if j == 0 or k in keys]
        out = tmp / f"{name}_{phen}.loco"
        out.write_text("".join(" ".join(r[j] for j in cols) + "\n" for r in rows))
        lines.append(f"{phen} {out}")
    path = tmp / f"{name}_pred.list"
    path.write_text("\n".join(lines) + "\n")
    return path


def _regenie_lines(path: Path) -> dict[str, list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ TEST BETA SE CHISQ LOG10P"
    return {ln.split()[2]: ln.split() for ln in lines[1:]}


def _same_regenie_files(expected: Path, got: Path) -> None:
    """The same variants and alleles in each .regenie file, the numbers to REGENIE's printed digits."""
    for name in ("pheno1.regenie", "pheno2.regenie", "pheno3.regenie"):
        a, b = _regenie_lines(expected / name), _regenie_lines(got / name)
        assert a.keys() == b.keys() and len(a) > 150, name
        for vid, row in a.items():
            assert row[:5] == b[vid][:5], vid
            for x, y in zip(row[5:], b[vid][5:]):
                assert x == y or _same_printed(float(y), x), (vid, row, b[vid])


@pytest.mark.slow
@pytest.mark.parametrize("test", ["wald", "regenie"])
def test_store_refresh_withdraw_and_study_with_pred_equal_pooled_scan(spark, tmp_path, test):
    """--pred in a store (added, refreshed, withdrawn) and a 3-party study, each party with its own
    samples' predictions, equal to the pooled --pred scan at 1e-9 (distinct phenotype missingness,
    samples absent from the .loco files, missing calls). ``regenie``: REGENIE's test from pooled
    sums in one round, ``.regenie`` files included."""
    from dash_spark.studies.store import run_compress, run_refresh

    from .oracle_data import make_split_files
    from .party_flow import Study
    from .test_store import assert_same_results

    parties = ("alice", "bob", "carol")
    seed = {"wald": 77, "regenie": 78}[test]
    files, parts, prefixes = make_split_files(tmp_path, seed, parties, [0.4, 0.3, 0.3], n=360, m=210)
    pred, _ = _write_locos(tmp_path, files, np.random.default_rng(seed - 72), absent={"pheno2": [4, 40, 200]})
    keys = _fam_keys(files.bfile)
    preds = {p: _subset_pred(tmp_path, pred, {keys[i] for i in parts[p]}, p) for p in parties}

    def pooled(out, remove=None):
        return run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, pred=str(pred),
                                   pred_test=test, out=str(tmp_path / out), plots=False, remove=remove), spark=spark)

    def same(full, out: Path):
        assert_same_results(full.results_path, str(out / "results.parquet"))
        if test == "regenie":
            _same_regenie_files(Path(full.out), out)

    full = pooled("pooled")

    def src(p):
        return {"bfile": prefixes[p], "pheno": files.pheno, "covar": files.covar, "pred": str(preds[p])}

    store = str(tmp_path / "store")
    run_compress(store, "alice", src("alice"), spark=spark, pred_test=test)
    run_compress(store, "bob", src("bob"), spark=spark)
    res = run_refresh(store, str(tmp_path / "all"), add=("carol", src("carol")), plots=False, spark=spark)
    same(full, Path(res.out))
    # a batch without --pred does not mix with them, nor another test
    with pytest.raises(Exception, match="--pred"):
        run_refresh(store, str(tmp_path / "mixed"), add=("dave", {**src("carol"), "pred": None}), plots=False,
                    spark=spark)
    other = "wald" if test == "regenie" else "regenie"
    with pytest.raises(Exception, match=f"pred_test = '{test}', not '{other}'"):
        run_compress(store, "dave", src("carol"), spark=spark, pred_test=other)
    # withdrawal: 25 of alice's samples
    iids = [k.split("_", 1)[1] for k in keys]
    gone = tmp_path / "gone.txt"
    gone.write_text("".join(f"{iids[i]}\n" for i in parts["alice"][:25]))
    res = run_refresh(store, str(tmp_path / "withdrawn"), withdraw=str(gone), plots=False, spark=spark)
    same(pooled("pooled_removed", remove=str(gone)), Path(res.out))

    # three parties, each with its own samples' predictions
    (tmp_path / "study").mkdir()
    st = Study(tmp_path / "study", parties)
    manifest = st.manifest(*(["--pred-test", "regenie"] if test == "regenie" else []))
    st.join(manifest)
    for p in parties:
        code, _, err = st.compress(manifest, p, "--pheno", files.pheno, "--covar", files.covar, "--bfile",
                                   prefixes[p], "--pred", preds[p])
        assert code == 0, err[-3000:]
    st.finish(manifest, tmp_path / "combined", "--no-plots")
    same(full, tmp_path / "combined")


@pytest.mark.slow
def test_select_on_a_store_with_pred_equals_statsmodels(pred_data, spark, tmp_path):
    """Forward selection takes the LOCO offsets (Wald test): each step's selected variant, and the
    final conditional scan, equal statsmodels OLS of ``y - o`` of the variant's chromosome on the
    variant, the covariates and the variants selected before (mean-imputed), at 1e-9."""
    import dataclasses

    import pyarrow.parquet as pq

    from dash_spark.studies.select import run_select
    from dash_spark.studies.store import run_compress

    from .oracle_data import statsmodels_oracle

    tmp, files, pred, preds, absent = pred_data
    store = str(tmp_path / "store")
    run_compress(store, "all", {"bfile": files.bfile, "pheno": files.pheno, "covar": files.covar, "pred": str(pred)},
                 spark=spark)
    res = run_select(store, str(tmp_path / "sel"), pheno_name="pheno1", p_threshold=1.0, max_steps=2, spark=spark)
    assert res.steps == 2
    sel = [r["variant_index"] for r in res.selected]
    chroms = [ln.split()[0] for ln in Path(files.bfile + ".bim").read_text().splitlines()]
    adjusted = {}
    for c in ("1", "2"):
        path = tmp_path / f"adj{c}.tsv"
        _adjusted_pheno(files, preds, absent, int(c), path)
        adjusted[c] = dataclasses.replace(files, pheno=str(path))

    def check(row, want):
        j = row["variant_index"]
        sign = -1.0 if row["a1"] != row["alt"] else 1.0
        assert abs(sign * row["beta"] - want["beta"][j]) <= 1e-9 * max(abs(want["beta"][j]), want["se"][j])
        assert row["se"] == pytest.approx(want["se"][j], rel=1e-9)
        assert row["obs_ct"] == want["n"][j]

    for i, row in enumerate(res.selected):
        check(row, statsmodels_oracle(adjusted[chroms[sel[i]]], "pheno1", "drop", condition=sel[:i], variants=[sel[i]]))
    final = {c: statsmodels_oracle(adjusted[c], "pheno1", "drop", condition=sel) for c in ("1", "2")}
    rows = [r for r in pq.read_table(f"{res.out}/results.parquet").to_pylist() if r["errcode"] == "."]
    checked = 0
    for row in rows:
        want = final[row["chrom"]]
        if row["variant_index"] in sel or not np.isfinite(want["beta"][row["variant_index"]]):
            continue
        check(row, want)
        checked += 1
    assert checked > 150
    joint = {r["id"]: r for r in res.joint if r["step"] == 2}
    for j in sel:  # each selected variant's joint row: the model of y - o of its own chromosome
        fit = final[chroms[j]]["joint"]
        vid = f"rs{j}"
        sign = -1.0 if joint[vid]["a1"] != [r for r in res.selected if r["variant_index"] == j][0]["alt"] else 1.0
        col = 1 + 3 + sel.index(j)  # intercept, age, sex, PC1, then Z in selection order
        assert sign * joint[vid]["beta"] == pytest.approx(fit.params[col], rel=1e-9, abs=1e-12)
