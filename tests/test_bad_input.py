"""Bad inputs through the ``dash-spark scan`` command line.

Every case must end with exit status 2 and one line ``dash-spark: error: <message>`` on stderr
that names the file and the specific problem, and must leave neither OUTDIR nor a staging
directory ``OUTDIR.tmp-*`` behind. Almost all of these are caught by the driver before Spark
starts; the two ``slow`` tests run a real (tiny) scan on the shared session.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import dash_spark.scanner.pipeline as pipeline
from dash_spark.cli import main
from dash_spark.bench.simulate import simulate_cohort, write_bed

N_SAMPLES = 61  # 61 = 4 * 15 + 1: one sample fewer changes the .bed's bytes per variant
N_VARIANTS = 40


# ---------------------------------------------------------------------------------- helpers


def iid(i: int) -> str:
    return f"S{i + 1:03d}"


def write_genotypes(tmp_path, n=N_SAMPLES, m=N_VARIANTS, seed=1, name="geno") -> str:
    """A PLINK 1 fileset with ``n`` samples (S001...) and ``m`` variants; returns the prefix."""
    rng = np.random.default_rng(seed)
    dosages = rng.integers(0, 3, size=(n, m), dtype=np.int8)
    dosages[rng.random((n, m)) < 0.02] = -1
    prefix = str(tmp_path / name)
    write_bed(
        prefix, n, [dosages],
        iids=[iid(i) for i in range(n)],
        chrom="1",
        pos=np.arange(1, m + 1) * 1000,
        ids=[f"rs{j + 1}" for j in range(m)],
        alt=["A"] * m,
        ref=["G"] * m,
    )
    return prefix


def write_table(path, columns, rows) -> str:
    """A plink2-style table: header ``#FID IID <columns>``, one row per (iid, values...)."""
    lines = ["#FID\tIID\t" + "\t".join(columns)]
    for row in rows:
        lines.append("\t".join([row[0], row[0]] + [str(v) for v in row[1:]]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_pheno(tmp_path, iids, seed=2, columns=("height",), name="trait.pheno") -> str:
    rng = np.random.default_rng(seed)
    rows = [(s, *np.round(rng.normal(170, 10, len(columns)), 3)) for s in iids]
    return write_table(tmp_path / name, columns, rows)


def write_covar(tmp_path, iids, seed=3, name="cov.covar") -> str:
    """Covariates age, sex, PC1 (independent random columns)."""
    rng = np.random.default_rng(seed)
    rows = [(s, round(rng.uniform(40, 70), 2), int(rng.integers(0, 2)), round(rng.normal(), 4))
            for s in iids]
    return write_table(tmp_path / name, ("age", "sex", "PC1"), rows)


class Inputs:
    """A valid small input set under ``tmp_path``; tests corrupt one piece of it."""

    def __init__(self, tmp_path, n=N_SAMPLES, m=N_VARIANTS):
        self.tmp_path = tmp_path
        self.iids = [iid(i) for i in range(n)]
        self.bfile = write_genotypes(tmp_path, n=n, m=m)
        self.bed, self.bim, self.fam = (self.bfile + ext for ext in (".bed", ".bim", ".fam"))
        self.pheno = write_pheno(tmp_path, self.iids)
        self.covar = write_covar(tmp_path, self.iids)
        self.out = str(tmp_path / "results")

    def argv(self, *extra, covar=True):
        args = ["-q", "scan", "--bfile", self.bfile, "--pheno", self.pheno, "--out", self.out]
        if covar:
            args += ["--covar", self.covar]
        return args + list(extra)


def run_cli(capsys, argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def staging_dirs(out: str) -> list[str]:
    parent, base = os.path.split(os.path.abspath(out))
    return sorted(f for f in os.listdir(parent) if f.startswith(base + ".tmp-"))


def assert_input_error(rc, err, out, *needles, out_should_exist=False) -> str:
    """Exit 2, one non-empty stderr line ``dash-spark: error: ...`` containing every needle."""
    assert rc == 2, f"expected exit status 2, got {rc}; stderr:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("dash-spark: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in the message: {line}"
    if not out_should_exist:
        assert not os.path.exists(out), f"{out} was created"
    assert staging_dirs(out) == [], f"staging directories left: {staging_dirs(out)}"
    return line


# ---------------------------------------------------------------------------------- .bed


def test_truncated_bed(tmp_path, capsys):
    inp = Inputs(tmp_path)
    full = os.path.getsize(inp.bed)
    assert full == 3 + N_VARIANTS * 16
    with open(inp.bed, "r+b") as fh:
        fh.truncate(full - 5)
    rc, _, err = run_cli(capsys, inp.argv())
    line = assert_input_error(rc, err, inp.out, "geno.bed", "truncated", f"{full - 5} bytes", f"need {full}",
                              f"{N_SAMPLES} samples", f"{N_VARIANTS} variants")
    assert "geno.fam" in line and "geno.bim" in line


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"PK\x03\x04", id="zip"),
        pytest.param(b"\x1f\x8b\x08\x00", id="gzip"),
        pytest.param(b"\x6c\x1b\x10", id="pgen"),
        pytest.param(b"\x6c\x1b\x00", id="sample-major"),
        pytest.param(b"\x6c", id="too-short"),
    ],
)
def test_wrong_magic_bytes(tmp_path, capsys, head):
    inp = Inputs(tmp_path)
    data = open(inp.bed, "rb").read()
    with open(inp.bed, "wb") as fh:
        fh.write(head + data[len(head):] if len(head) > 1 else head)
    rc, _, err = run_cli(capsys, inp.argv())
    shown = head[:3].hex(" ")
    line = assert_input_error(rc, err, inp.out, "geno.bed", "6c 1b 01", f"found {shown}")
    if head[2:3] == b"\x00":
        assert "sample-major" in line
    else:
        assert "not a PLINK 1 .bed" in line
    if head[2:3] == b"\x10":
        assert ".pgen" in line and "--make-bed" in line


# ---------------------------------------------------------------------------------- .bim/.fam


def test_bim_with_extra_line(tmp_path, capsys):
    inp = Inputs(tmp_path)
    with open(inp.bim, "a") as fh:
        fh.write("1\trs_extra\t0\t999999\tA\tG\n")
    rc, _, err = run_cli(capsys, inp.argv())
    size = 3 + N_VARIANTS * 16
    assert_input_error(rc, err, inp.out, "geno.bed", "geno.bim", f"{size} bytes", "truncated",
                       f"{N_VARIANTS + 1} variants", f"need {3 + (N_VARIANTS + 1) * 16}")


def test_fam_with_one_sample_fewer(tmp_path, capsys):
    # 61 -> 60 samples changes ceil(n/4) from 16 to 15 bytes per variant. (Like plink, the size
    # check cannot see a missing sample when n % 4 != 1: the bytes per variant stay the same.)
    inp = Inputs(tmp_path)
    lines = open(inp.fam).read().splitlines(keepends=True)
    with open(inp.fam, "w") as fh:
        fh.writelines(lines[:-1])
    rc, _, err = run_cli(capsys, inp.argv())
    size = 3 + N_VARIANTS * 16
    assert_input_error(rc, err, inp.out, "geno.bed", "geno.fam", f"{size} bytes", "too large",
                       f"{N_SAMPLES - 1} samples", f"need {3 + N_VARIANTS * 15}")


def test_duplicate_sample_in_fam(tmp_path, capsys):
    inp = Inputs(tmp_path)
    lines = open(inp.fam).read().splitlines(keepends=True)
    lines[4] = lines[1]  # line 5 repeats line 2 (S002)
    with open(inp.fam, "w") as fh:
        fh.writelines(lines)
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "geno.fam:5:", "duplicate", "'S002'", "line 2")


# ---------------------------------------------------------------------------------- pheno/covar


def test_duplicate_sample_in_pheno(tmp_path, capsys):
    inp = Inputs(tmp_path)
    lines = open(inp.pheno).read().splitlines(keepends=True)
    lines.insert(7, lines[3])  # S003 (line 4) again on line 8
    with open(inp.pheno, "w") as fh:
        fh.writelines(lines)
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "trait.pheno:8:", "duplicate IID 'S003'", "lines 4 and 8")


def test_no_shared_samples(tmp_path, capsys):
    inp = Inputs(tmp_path)
    inp.pheno = write_pheno(tmp_path, [f"P{i:03d}" for i in range(N_SAMPLES)], name="other.pheno")
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "other.pheno", "found 0", f"of {N_SAMPLES} .fam samples",
                       "'S001'", "'P000'")


def test_non_numeric_covariate(tmp_path, capsys):
    inp = Inputs(tmp_path)
    lines = open(inp.covar).read().splitlines(keepends=True)
    fields = lines[6].split("\t")  # data row on line 7
    fields[2] = "abc"  # the age column
    lines[6] = "\t".join(fields)
    with open(inp.covar, "w") as fh:
        fh.writelines(lines)
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "cov.covar:7:", "'abc'", "column 'age'")


def test_collinear_covariate(tmp_path, capsys):
    inp = Inputs(tmp_path)
    rng = np.random.default_rng(5)
    rows = []
    for s in inp.iids:
        age = round(float(rng.uniform(40, 70)), 2)
        rows.append((s, age, int(rng.integers(0, 2)), 2 * age + 1))
    inp.covar = write_table(tmp_path / "lin.covar", ("age", "sex", "age2"), rows)
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "trait.pheno", "lin.covar", "covariate 'age2' is collinear",
                       "'age'", f"{N_SAMPLES} analysed samples", "--covar-name")


def test_constant_phenotype(tmp_path, capsys):
    """plink2 stops on a constant phenotype; so do we, naming it. (A constant covariate is left out
    with a warning, as plink2 does: tests/test_plink2_models.py.)"""
    inp = Inputs(tmp_path)
    inp.pheno = write_table(tmp_path / "flat.pheno", ("height",), [(s, 1.5) for s in inp.iids])
    rc, _, err = run_cli(capsys, inp.argv(covar=False))
    assert_input_error(rc, err, inp.out, "flat.pheno", "phenotype 'height'", "same value", "--pheno-name")
    assert "1.5" not in err  # no phenotype values in messages


def test_fewer_samples_than_covariates(tmp_path, capsys):
    inp = Inputs(tmp_path, n=6, m=8)
    rng = np.random.default_rng(7)
    rows = [(s, *np.round(rng.normal(size=5), 4)) for s in inp.iids]
    inp.covar = write_table(tmp_path / "wide.covar", ("c1", "c2", "c3", "c4", "c5"), rows)
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "trait.pheno", "wide.covar", "6 samples", "6 covariates",
                       "at least 8")


# ---------------------------------------------------------------------------------- output


def test_existing_outdir_without_overwrite(tmp_path, capsys):
    inp = Inputs(tmp_path)
    os.mkdir(inp.out)
    keep = os.path.join(inp.out, "keep.txt")
    with open(keep, "w") as fh:
        fh.write("earlier results\n")
    before = sorted(os.listdir(inp.out))
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "results", "exists", "--overwrite", out_should_exist=True)
    assert sorted(os.listdir(inp.out)) == before
    assert open(keep).read() == "earlier results\n"


@pytest.mark.slow
def test_existing_outdir_with_overwrite(tmp_path, capsys, spark):
    cohort = simulate_cohort(tmp_path / "data", n_samples=60, n_variants=40, n_covariates=2, seed=11)
    out = str(tmp_path / "results")
    os.mkdir(out)
    with open(os.path.join(out, "keep.txt"), "w") as fh:
        fh.write("earlier results\n")
    from dash_spark.outputs.staging import write_marker

    write_marker(out, "scan")  # an earlier dash-spark output (--overwrite replaces only those)
    argv = ["-q", "scan", "--bfile", cohort.bfile, "--pheno", cohort.pheno, "--covar", cohort.covar,
            "--out", out, "--overwrite", "--no-plots", "--master", "local[1]"]
    rc, stdout, err = run_cli(capsys, argv)
    assert rc == 0, err
    names = os.listdir(out)
    assert "keep.txt" not in names
    assert "results.parquet" in names and "pheno1.glm.linear" in names
    assert staging_dirs(out) == []
    assert "results:" in stdout


# ---------------------------------------------------------------------------------- options


def test_missing_bfile(tmp_path, capsys):
    inp = Inputs(tmp_path)
    inp.bfile = str(tmp_path / "nosuch")
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "nosuch.bed", "file not found", "--bfile")


def test_unknown_pheno_name(tmp_path, capsys):
    inp = Inputs(tmp_path)
    inp.pheno = write_pheno(tmp_path, inp.iids, columns=("height", "bmi"), name="two.pheno")
    rc, _, err = run_cli(capsys, inp.argv("--pheno-name", "heigth"))
    assert_input_error(rc, err, inp.out, "two.pheno", "--pheno-name", "'heigth'", "Did you mean 'height'?")


def test_unknown_config_key(tmp_path, capsys):
    inp = Inputs(tmp_path)
    toml = tmp_path / "job.toml"
    toml.write_text(
        "[scan]\n"
        f'bfile = "{inp.bfile}"\n'
        f'pheno = "{inp.pheno}"\n'
        f'out = "{inp.out}"\n'
        'phenoname = ["height"]\n'
    )
    rc, _, err = run_cli(capsys, ["-q", "scan", "--config", str(toml)])
    assert_input_error(rc, err, inp.out, "job.toml", "[scan]", "unknown key 'phenoname'",
                       "Did you mean 'pheno_name'?")


# ---------------------------------------------------------------------------------- task side


@pytest.mark.slow
def test_task_failure_leaves_no_output(tmp_path, monkeypatch, spark):
    """A .bed truncated after the driver checked it fails in a task; nothing appears at OUTDIR."""
    inp = Inputs(tmp_path, n=60, m=40)
    real_scan_model = pipeline.scan_model

    def build_then_truncate(cfg):
        model = real_scan_model(cfg)  # the .bed is still complete here and passes check_bed
        with open(inp.bed, "r+b") as fh:
            fh.truncate(os.path.getsize(inp.bed) - 7)
        return model

    monkeypatch.setattr(pipeline, "scan_model", build_then_truncate)
    cfg = pipeline.ScanConfig(bfile=inp.bfile, pheno=inp.pheno, covar=inp.covar, out=inp.out,
                              block_variants=10, plots=False, master="local[1]")
    with pytest.raises(Exception) as excinfo:
        pipeline.run_scan(cfg, spark=spark)
    assert "truncated" in str(excinfo.value)
    assert not os.path.exists(inp.out)
    assert staging_dirs(inp.out) == []
