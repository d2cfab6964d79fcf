"""Inputs in object storage: a real S3-compatible server (moto's stand-alone server) on 127.0.0.1.

The same scan with ``--bfile``, ``--pheno`` and ``--covar`` as ``s3://`` URIs (read by the driver
and by every task through pyarrow's S3 filesystem, credentials and endpoint from the environment)
writes the same files as the scan of the local copies, byte for byte; the tasks read their .bed
ranges in several requests each (seen in the server's request log).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import make_files

BUCKET = "cohort"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto", reason="moto[server] is a test dependency (pip install -e '.[test]')")
    tmp = tmp_path_factory.mktemp("s3")
    port = _free_port()
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    from pyarrow import fs as pafs

    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                           endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield fs, env, tmp / "server.log"
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _upload(fs, local: str, key: str) -> str:
    with open(local, "rb") as src, fs.open_output_stream(f"{BUCKET}/{key}") as dst:
        dst.write(src.read())
    return f"s3://{BUCKET}/{key}"


def _download(fs, key: str, dest: Path, prefix_only: bool = False):
    """Every object under ``BUCKET/key/`` into ``dest`` (``prefix_only``: under keys starting with
    ``key``, listed only); returns ``dest`` (or the list of keys)."""
    from pyarrow import fs as pafs

    infos = [i for i in fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True)) if i.type == pafs.FileType.File]
    if prefix_only:
        return [i.path for i in infos if i.path.startswith(f"{BUCKET}/{key}")]
    for i in infos:
        if i.path.startswith(f"{BUCKET}/{key}/"):
            target = dest / i.path[len(f"{BUCKET}/{key}/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(i.path) as src:
                target.write_bytes(src.read())
    return dest


@pytest.fixture(scope="module")
def uploaded(s3, tmp_path_factory):
    """A cohort's files, locally and uploaded: ``(files, pheno URI, covar URI)``."""
    fs = s3[0]
    files = make_files(tmp_path_factory.mktemp("cohort"), np.random.default_rng(41), n=300, m=220, missing=0.03)
    for ext in (".bed", ".bim", ".fam"):
        _upload(fs, files.bfile + ext, f"data/c{ext}")
    return files, _upload(fs, files.pheno, "tables/pheno.tsv"), _upload(fs, files.covar, "tables/covar.tsv")


def test_scan_from_s3_equals_local_scan_byte_for_byte(s3, uploaded, spark, tmp_path):
    fs, env, server_log = s3
    files, pheno, covar = uploaded
    local = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, block_variants=50,
                                out=str(tmp_path / "local"), plots=False), spark=spark)
    out_uri = f"s3://{BUCKET}/results/scan1"
    # its own Spark application, so that the executors get the storage settings from the environment;
    # 1,000-byte requests: each task's .bed range (50 variants x 75 bytes) takes several
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", "scan", "--bfile", f"s3://{BUCKET}/data/c",
                           "--pheno", pheno, "--covar", covar, "--block-variants", "50", "--no-plots",
                           "--out", out_uri],
                          env={**os.environ, **env, "PYSPARK_PYTHON": sys.executable,
                               "DASH_SPARK_READ_CHUNK_BYTES": "1000"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _download(fs, "results/scan1", tmp_path / "from_s3")
    assert not _download(fs, "results/scan1.tmp", tmp_path / "stage-left", prefix_only=True)  # no stage left
    names = sorted(p.name for p in Path(local.out).iterdir() if p.is_file())
    assert names == sorted(p.name for p in out.iterdir() if p.is_file())
    assert any(n.endswith(".glm.linear") for n in names)
    for name in names:
        if name == ".dash-spark-output":  # the marker names its own run
            continue
        mine, theirs = (Path(local.out) / name).read_bytes(), (out / name).read_bytes()
        if name == "summary.json":  # it names the tables it read
            mine = mine.replace(files.pheno.encode(), pheno.encode()).replace(files.covar.encode(), covar.encode())
        assert mine == theirs, name
    a = pq.read_table(local.results_path).sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    assert (out / ".dash-spark-output").exists() and (out / "results.parquet" / "_SUCCESS").exists()
    assert sorted(p.name for p in (out / "results.parquet").iterdir()) == \
        sorted(p.name for p in (Path(local.out) / "results.parquet").iterdir())
    b = pq.read_table(out / "results.parquet").sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    assert a.equals(b)
    # the tasks read the .bed by range, in several requests each, and never the whole file
    gets = [ln for ln in server_log.read_text().splitlines() if "GET /cohort/data/c.bed" in ln]
    assert len(gets) >= 15, len(gets)  # 4 ranges of 50 variants (4 requests each) and one of 20 (2)


def test_missing_object_is_one_line_exit_2(s3, uploaded, tmp_path):
    _, env, _ = s3
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", "scan", "--bfile", f"s3://{BUCKET}/nope/c",
                           "--pheno", f"s3://{BUCKET}/tables/pheno.tsv", "--out", str(tmp_path / "o")],
                          env={**os.environ, **env, "PYSPARK_PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"s3://{BUCKET}/nope/c.bed: file not found" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_s3_output_is_never_over_what_dash_spark_did_not_write(s3, uploaded, tmp_path):
    fs, env, _ = s3
    with fs.open_output_stream(f"{BUCKET}/theirs/notes.txt") as fh:
        fh.write(b"not ours")
    base = [sys.executable, "-m", "dash_spark.cli", "-q", "scan", "--bfile", f"s3://{BUCKET}/data/c",
            "--pheno", f"s3://{BUCKET}/tables/pheno.tsv", "--no-plots"]
    run_env = {**os.environ, **env, "PYSPARK_PYTHON": sys.executable}
    for out, expect in ((f"s3://{BUCKET}/theirs", "was not written by dash-spark"),
                        (f"s3://{BUCKET}/data", "overlaps an input")):
        proc = subprocess.run([*base, "--out", out, "--overwrite"], env=run_env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    with fs.open_input_stream(f"{BUCKET}/theirs/notes.txt") as fh:
        assert fh.read() == b"not ours"
    assert not _download(fs, "theirs.tmp", tmp_path, prefix_only=True)


def test_bgen_from_s3_equals_local_bgen_scan(s3, uploaded, spark, tmp_path):
    """--bgen and --sample as URIs: the header, the .sample and the records by range from the server
    (the small .bgi index is read into memory, no temporary file). The same file without a .bgi is
    indexed once, from windows of the file, into the private cache."""
    import shutil

    from dash_spark.io.bgen import write_bgi

    fs, env, server_log = s3
    files, pheno, covar = uploaded
    plink2 = shutil.which("plink2")
    if plink2 is None:
        pytest.fail("plink2 is not installed; `make test` installs Debian's plink2 package")
    prefix = tmp_path / "b"
    proc = subprocess.run([plink2, "--bfile", files.bfile, "--export", "bgen-1.2", "bits=8", "ref-first",
                           "--out", str(prefix)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    write_bgi(f"{prefix}.bgen")
    for name in ("b.bgen", "b.bgen.bgi", "b.sample"):
        _upload(fs, str(tmp_path / name), f"bgen/{name}")
    _upload(fs, str(tmp_path / "b.bgen"), "bgen/nobgi.bgen")
    local = run_scan(ScanConfig(bgen=f"{prefix}.bgen", bgen_ref="ref-first", sample=f"{prefix}.sample",
                                pheno=files.pheno, covar=files.covar, block_variants=50, out=str(tmp_path / "local"),
                                plots=False), spark=spark)
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", "scan", "--bgen", f"s3://{BUCKET}/bgen/b.bgen",
                           "ref-first", "--sample", f"s3://{BUCKET}/bgen/b.sample", "--pheno", pheno, "--covar", covar,
                           "--block-variants", "50", "--no-plots", "--out", str(tmp_path / "remote")],
                          env={**os.environ, **env, "PYSPARK_PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", "scan", "--bgen",
                           f"s3://{BUCKET}/bgen/nobgi.bgen", "ref-first", "--sample", f"s3://{BUCKET}/bgen/b.sample",
                           "--pheno", pheno, "--covar", covar, "--block-variants", "50", "--no-plots",
                           "--out", str(tmp_path / "remote-nobgi")],
                          env={**os.environ, **env, "PYSPARK_PYTHON": sys.executable, "DASH_SPARK_CACHE": str(cache)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(os.listdir(cache / "bgi")) == 1
    glms = sorted(p.name for p in Path(local.out).glob("*.glm.linear"))
    assert glms
    for name in glms:
        assert (Path(local.out) / name).read_bytes() == (tmp_path / "remote" / name).read_bytes(), name
        assert (Path(local.out) / name).read_bytes() == (tmp_path / "remote-nobgi" / name).read_bytes(), name
    assert any("GET /cohort/bgen/b.bgen " in ln or "GET /cohort/bgen/b.bgen HTTP" in ln
               for ln in server_log.read_text().splitlines())


def test_parted_shares_on_an_s3_exchange(s3, tmp_path, monkeypatch):
    """A study whose exchange is in object storage: staged parts are copied from the private stage
    into the share (no rename across file systems), read back into buffers, checked and added."""
    from dash_spark.multiparty.rounds import combine

    from .test_multiparty_attacks import Lab
    from .test_share_parts import PARTIES3, assert_pooled, close_and_reveal, publish_parted

    fs, env, _ = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lab = Lab(tmp_path, parties=PARTIES3)
    lab.uri = f"s3://{BUCKET}/exchange"
    lab.manifest = lab.new_manifest("r-s3")
    lab.join()
    for p in PARTIES3:
        _, stage, _, _ = publish_parted(lab, p)
        assert os.listdir(stage) == []  # every part left the stage for the exchange
    keys = _download(fs, "exchange", tmp_path, prefix_only=True)
    assert sum("/shares/b/variants@" in k for k in keys) == 3 and not any(k.endswith(".tmp") for k in keys)
    close_and_reveal(lab)
    _, pooled = combine(lab.uri, lab.manifest)
    assert_pooled(pooled)


def _plink2_exe() -> str:
    import shutil

    exe = shutil.which("plink2")
    if exe is None:
        pytest.fail("plink2 is not installed; `make test` installs Debian's plink2 package")
    return exe


def test_pfile_from_s3_equals_local_pfile_scan(s3, uploaded, spark, tmp_path):
    """--pfile as a URI (with a plain .pvar, and with a .pvar.zst): the .psam and .pvar are read from
    the server, and plink2's reader reads the .pgen through a sparse local copy of the blocks the
    tasks need; the outputs equal those of the local fileset byte for byte."""
    fs, env, server_log = s3
    files, pheno, covar = uploaded
    exe = _plink2_exe()
    for name, extra in (("p", ()), ("pz", ("vzs",))):
        proc = subprocess.run([exe, "--bfile", files.bfile, "--make-pgen", *extra, "--out", str(tmp_path / name),
                               "--threads", "1"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
        for ext in (".pgen", ".psam", ".pvar.zst" if extra else ".pvar"):
            _upload(fs, str(tmp_path / f"{name}{ext}"), f"pfile/{name}{ext}")
    local = run_scan(ScanConfig(pfile=str(tmp_path / "p"), pheno=files.pheno, covar=files.covar, block_variants=50,
                                out=str(tmp_path / "local"), plots=False), spark=spark)
    glms = sorted(p.name for p in Path(local.out).glob("*.glm.linear"))
    assert glms
    cache = tmp_path / "cache"
    for name in ("p", "pz"):
        proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", "scan", "--pfile",
                               f"s3://{BUCKET}/pfile/{name}", "--pheno", pheno, "--covar", covar, "--block-variants",
                               "50", "--no-plots", "--out", str(tmp_path / f"remote-{name}")],
                              env={**os.environ, **env, "PYSPARK_PYTHON": sys.executable,
                                   "DASH_SPARK_CACHE": str(cache)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for g in glms:
            assert (Path(local.out) / g).read_bytes() == (tmp_path / f"remote-{name}" / g).read_bytes(), (name, g)
    assert len(list((cache / "pgen").glob("*.pgen"))) == 2 and len(list((cache / "pvar").glob("*.pvar"))) == 1
    import stat

    for kind in ("pgen", "pvar"):  # genotype blocks and variant lists stay private to this user
        assert stat.S_IMODE(os.stat(cache / kind).st_mode) == 0o700
    assert any("GET /cohort/pfile/p.pgen" in ln for ln in server_log.read_text().splitlines())


def test_remote_pgen_fetches_only_the_blocks_it_reads(s3, tmp_path, monkeypatch):
    """A .pgen of two 65,536-variant blocks: reading variants of the second block fetches that block
    (and the header) only, and every dosage equals pgenlib's read of the local file."""
    pgenlib = pytest.importorskip("pgenlib")
    from dash_spark.io import pgen as pgen_mod

    fs, env, _ = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DASH_SPARK_CACHE", str(tmp_path / "cache"))
    n, m = 12, 70_000
    proc = subprocess.run([_plink2_exe(), "--dummy", str(n), str(m), "0.05", "dosage-freq=0.2", "--seed", "3", "--make-pgen",
                           "--out", str(tmp_path / "big"), "--threads", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    uri = _upload(fs, str(tmp_path / "big.pgen"), "pfile/big.pgen")
    assert open(tmp_path / "big.pgen", "rb").read(3)[2] == 0x10
    reader = pgenlib.PgenReader(str(tmp_path / "big.pgen").encode())
    want = np.empty((m, n), dtype=np.float64)
    reader.read_dosages_list(np.arange(m, dtype=np.uint32), want)
    want[want == -9] = np.nan
    later = np.array([66_000, 66_001, 69_999])
    got = pgen_mod.read_pgen_dosages(uri, n, m, later)
    np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(want[later], nan=-1))
    remote = pgen_mod._remote_pgen(uri, n, m)
    assert os.path.exists(remote.local + ".b1") and not os.path.exists(remote.local + ".b0")
    assert os.stat(remote.local).st_blocks * 512 < os.path.getsize(tmp_path / "big.pgen") / 2  # holes
    got = pgen_mod.read_pgen_dosages(uri, n, m, np.arange(m))
    np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1))
    assert open(remote.local, "rb").read() == (tmp_path / "big.pgen").read_bytes()


def _same_output_files(local: Path, remote: Path) -> None:
    """The same files with the same bytes (the marker names its own run; results.parquet compared
    as tables, its parts named per run)."""
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()
                   and "results.parquet" not in p.parts and p.name != ".dash-spark-output")
    assert names == sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()
                           and "results.parquet" not in p.parts and p.name != ".dash-spark-output")
    for name in names:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    assert (remote / ".dash-spark-output").exists()
    key = [("phenotype", "ascending"), ("variant_index", "ascending")]
    a = pq.read_table(local / "results.parquet").sort_by(key)
    b = pq.read_table(remote / "results.parquet").sort_by(key)
    assert a.num_rows > 0 and a.equals(b)


@pytest.mark.slow
def test_refresh_select_and_combine_write_to_s3_as_locally(s3, uploaded, spark, tmp_path):
    """refresh, select and combine with an s3:// --out: the same files as their local outputs (the
    tasks of refresh and select write their parts under the stage prefix themselves); nothing is
    left under a stage prefix."""
    from dash_spark.studies.select import run_select
    from dash_spark.studies.store import run_compress, run_refresh

    from .oracle_data import split_bed
    from .party_flow import Study

    fs, env, _ = s3
    files, _, _ = uploaded
    run_env = {**os.environ, **env, "PYSPARK_PYTHON": sys.executable}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", *map(str, args)], env=run_env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    store = str(tmp_path / "store")
    run_compress(store, "all", {"bfile": files.bfile, "pheno": files.pheno, "covar": files.covar}, spark=spark)
    run_refresh(store, str(tmp_path / "refreshed"), spark=spark)
    cli("refresh", "--store", store, "--out", f"s3://{BUCKET}/out/refreshed", "--no-plots")
    run_select(store, str(tmp_path / "selected"), pheno_name="pheno1", p_threshold=1e-3, max_steps=2, spark=spark)
    cli("select", "--store", store, "--out", f"s3://{BUCKET}/out/selected", "--pheno-name", "pheno1",
        "--p-threshold", "1e-3", "--max-steps", "2")
    # a 3-party study of the same samples, combined locally and to the server
    parties = ("alice", "bob", "carol")
    n = files.n
    prefixes = split_bed(files, tmp_path, {p: np.arange(n)[k::3] for k, p in enumerate(parties)})
    st = Study(tmp_path, parties)
    manifest = st.manifest(parties=parties)
    st.join(manifest, parties)
    for p in parties:
        code, _, err = st.compress(manifest, p, "--pheno", files.pheno, "--covar", files.covar, "--bfile", prefixes[p])
        assert code == 0, err[-3000:]
    st.finish(manifest, tmp_path / "combined", "--no-plots")
    cli("combine", "--manifest", manifest, "--out", f"s3://{BUCKET}/out/combined", "--no-plots")
    for name, plots in (("refreshed", False), ("selected", True), ("combined", False)):
        local = tmp_path / name
        if not plots:  # the local refresh above drew plots; compare the files both have
            for png in local.glob("*.png"):
                png.unlink()
        remote = _download(fs, f"out/{name}", tmp_path / f"s3-{name}")
        _same_output_files(local, remote)
    assert not _download(fs, "out/refreshed.tmp", tmp_path, prefix_only=True)
    assert not _download(fs, "out/selected.tmp", tmp_path, prefix_only=True)
    assert not _download(fs, "out/combined.tmp", tmp_path, prefix_only=True)
