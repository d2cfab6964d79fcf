"""Stored additive statistics: batches of samples, refresh, batch removal and sample withdrawal.

A store keeps, for every batch of samples, the same additive statistics a DASH party computes
(:mod:`dash_spark.stats.sufficient`: raw covariates, uncentred phenotypes), so that results for any
set of batches are a sum and a finalize away (DESIGN.md section 2). Layout::

    DIR/store.json                         settings, variant blocks, batches; sha256 of everything
    DIR/variants.parquet                   the variant list, one row group per block
    DIR/batches/<id>/batch.json            a batch: source files, sample IIDs, withdrawn IIDs,
                                           global moments, sha256 of every block file
    DIR/batches/<id>/blocks/block-NNNNN.parquet   per-variant statistics of one variant block:
                                           variant_index, then one float64 column per statistic
                                           (:meth:`StoreSettings.columns`), readable by Spark or pandas

``store.json`` is the only thing that says which batches the store holds, and it is replaced
atomically (write, then rename) as the last step of a change: a failed or interrupted refresh
leaves the store as it was (a new batch directory it did not get to register is removed, or is
ignored if the process died). Every read checks the checksums: ``store.json``'s own, each
``batch.json``'s, and each block's (in the Spark task that reads it).

The store directory must be readable and writable by the driver and the executors (like the
.bed paths of a scan); on one machine any local directory is.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ModelSettings
from ..errors import ConfigError, DashError, InputError, OutputError, StoreError
from ..outputs.sums import first_bins
from ..outputs.writers import OutputModel
from .release import DEFAULT_MIN_DELTA, check_sample_release, record_sample_release
from ..scanner.sources import source_from_options
from ..outputs.staging import staged_output
from ..stats.sufficient import StatLayout, SufficientStats

log = logging.getLogger("dash_spark")

FORMAT_VERSION = 2  # 2: one column per statistic in block files
RELEASES_FILE = "releases.json"
STORE_FILE = "store.json"
VARIANTS_FILE = "variants.parquet"
MAX_BLOCK_VARIANTS = 20_000  # a task holds (batches + 1) blocks of statistics in memory
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


# ----------------------------------------------------------------------------------------------
# small helpers


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _encode_array(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "values": [float(x) for x in a.ravel()]}


def _decode_array(d: dict) -> np.ndarray:
    return np.asarray(d["values"], dtype=np.float64).reshape(d["shape"])


def check_batch_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"batch name {name!r}: use letters, digits, '.', '_' and '-' (at most 100 characters), "
                          "starting with a letter or digit")
    return name


def block_path(batch_dir: str, part: int) -> str:
    return os.path.join(batch_dir, "blocks", f"block-{part:05d}.parquet")


@dataclass(frozen=True)
class StoreSettings:
    """A store's settings (``store.json``): the model options fixed when it was created, what its
    batches hold (phenotypes, covariates, the variant list's hash and length), whether they carry
    LOCO offsets (``--pred``) and plink2's sex-chromosome sums, and the genotype source's kind.
    Read back checked (:meth:`from_json`); ``width``, the statistics per variant, follows from them."""

    model: ModelSettings
    phenotypes: tuple[str, ...]
    covariates: tuple[str, ...]
    variant_hash: str
    n_variants: int
    pred: bool = False
    #: stores made before plink2's sex-chromosome models lack the key: their batches treat chrX/Y/MT as autosomes
    sexchr: bool = False
    #: ``features`` (a features table: the first allele is counted) or ``bfile`` (any genotype file)
    source_kind: str = "bfile"

    @classmethod
    def from_json(cls, doc, *, where: str) -> StoreSettings:
        """The settings of ``store.json`` (``where``), checked; refused with one line when a
        field is missing or of the wrong kind (the checksum passed: the store was written so)."""
        model = ModelSettings.from_json(doc, where=where)
        try:
            out = cls(model=model, phenotypes=tuple(doc["phenotypes"]), covariates=tuple(doc["covariates"]),
                      variant_hash=str(doc["variant_hash"]), n_variants=int(doc["n_variants"]),
                      pred=bool(doc.get("pred", False)), sexchr=bool(doc.get("sexchr", False)),
                      source_kind=str(doc.get("source_kind", "bfile")))
            ok = all(isinstance(n, str) for n in out.phenotypes + out.covariates) and doc.get("width") == out.width
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise StoreError(f"{where}: the store's settings are incomplete or inconsistent (phenotypes, covariates, "
                             "variants, width); the store is damaged. Restore it from a backup")
        return out

    def to_json(self) -> dict:
        return {**self.model.to_json(), "phenotypes": list(self.phenotypes), "covariates": list(self.covariates),
                "variant_hash": self.variant_hash, "n_variants": self.n_variants, "width": self.width,
                "pred": self.pred, "sexchr": self.sexchr, "source_kind": self.source_kind}

    def layout(self) -> StatLayout:
        """The statistics layout of the store's block files."""
        if self.model.pred_test == "regenie":  # with y, with the LOCO predictions, the analysed samples
            return StatLayout(len(self.covariates), 2 * len(self.phenotypes) + 1, "mean")
        k = len(self.covariates) + (1 if self.sexchr else 0)  # SEX: chrX's column
        return StatLayout(k, len(self.phenotypes), self.model.missing_genotypes)

    @property
    def width(self) -> int:
        return self.layout().width

    def columns(self) -> tuple[str, ...]:
        """Column names of a block file, one per column of the store's :class:`StatLayout`
        (``t0.Ctx.3``: the 4th entry of phenotype 0's ``C'x``; a one-wide statistic has no suffix)."""
        return self.layout().column_names()

    def stats(self, arrays: dict) -> SufficientStats:
        """A batch's global moments (``batch.json``'s ``globals``) as statistics without variants."""
        return SufficientStats.from_arrays(arrays, self.phenotypes, self.covariates, self.model.missing_genotypes)

    def scan_config(self, source: dict, **options):
        """The statistics-model config of a batch's files (``options``: ``keep=`` ...)."""
        return self.model.scan_config(source, sex_chromosomes=self.sexchr, **options)


def read_block(batch_dir: str, part: int, sha256: str, columns: tuple[str, ...]) -> np.ndarray:
    """One stored block's statistics [shape: (variants, len(columns))], after checking its sha256."""
    path = block_path(batch_dir, part)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read a stored block ({exc.strerror}); the store is damaged. "
                         "Restore it from a backup or recompress the batch") from None
    if _sha256(data) != sha256:
        raise StoreError(f"{path}: checksum mismatch (the block was changed after it was written); the store is "
                         "damaged. Restore it from a backup or recompress the batch")
    table = pq.read_table(pa.BufferReader(data))
    if tuple(table.column_names[1:]) != tuple(columns):  # pragma: no cover - the sha256 covers the bytes
        raise StoreError(f"{path}: unexpected columns; the store is damaged")
    out = np.empty((table.num_rows, len(columns)))
    for j, name in enumerate(columns):
        out[:, j] = table.column(name).to_numpy()
    return out


def block_bytes(start: int, sums: np.ndarray, columns: tuple[str, ...]) -> bytes:
    """A block file: ``variant_index`` and one float64 column per statistic (zstd, no dictionary:
    an order of magnitude faster to write and read than one list column)."""
    data = {"variant_index": pa.array(np.arange(start, start + sums.shape[0]), type=pa.int64())}
    for j, name in enumerate(columns):
        data[name] = pa.array(np.ascontiguousarray(sums[:, j]), type=pa.float64())
    buf = io.BytesIO()
    pq.write_table(pa.table(data), buf, compression="zstd", use_dictionary=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class Batch:
    name: str
    dir: str        # absolute path of batches/<id>
    sha256: str     # of batch.json
    record: dict    # batch.json

    def globals(self) -> dict[str, np.ndarray]:
        return {k: _decode_array(v) for k, v in self.record["globals"].items()}

    def moments(self, settings: StoreSettings) -> SufficientStats:
        """The batch's global moments (no per-variant rows: those are in its block files)."""
        return settings.stats(self.globals())

    @property
    def samples(self) -> list[str]:
        return list(self.record["samples"])

    @property
    def withdrawn(self) -> list[str]:
        return list(self.record.get("withdrawn", []))


@dataclass(frozen=True)
class Store:
    """An opened store (:func:`open_store`, every checksum checked): its settings, variant blocks and
    batches, and what the commands on it ask of it (its files, its pooled moments, its inputs)."""

    root: str
    settings: StoreSettings
    blocks: list[tuple[int, int]]
    variants_sha256: str
    batches: tuple[Batch, ...]

    @property
    def width(self) -> int:
        return self.settings.width

    @property
    def columns(self) -> tuple[str, ...]:
        return self.settings.columns()

    def batch(self, name: str) -> Batch | None:
        return next((b for b in self.batches if b.name == name), None)

    @property
    def variants_path(self) -> str:
        """The variant list (``variants.parquet``: one row group per block)."""
        return os.path.join(self.root, VARIANTS_FILE)

    @property
    def releases_path(self) -> str:
        """The store's release log (what each refresh or selection released: the samples it held)."""
        return os.path.join(self.root, RELEASES_FILE)

    def inputs(self, new_source: dict | None = None, *files: str | None) -> tuple[str, ...]:
        """What a command on the store reads or keeps: the store itself, every batch's source files,
        a new batch's and the given files (an output directory may be none of these, nor hold one)."""
        paths = [self.root]
        for source in [b.record["source"] for b in self.batches] + ([new_source] if new_source else []):
            try:
                paths += list(source_from_options(**source).input_paths())
            except TypeError:  # pragma: no cover - a record without source options
                continue
            paths += [source.get("pheno"), source.get("covar")]
        paths += list(files)
        return tuple(p for p in paths if p)

    @staticmethod
    def active_ids(batches) -> list[str]:
        """The IIDs whose data ``batches`` hold (withdrawn samples left out)."""
        out = []
        for b in batches:
            gone = set(b.withdrawn)
            out += [iid for iid in b.samples if iid not in gone]
        return out

    def pooled_globals(self, batches) -> SufficientStats:
        """The global moments summed over ``batches`` (refused when there is none)."""
        if not batches:
            raise ConfigError(f"{self.root}: no batch left in the store; nothing to finalize")
        return sum(b.moments(self.settings) for b in batches)

    def check_pooled(self, G: SufficientStats) -> None:
        """Driver-side checks before a finalize job: enough samples, full-rank covariates."""
        G.check(where=self.root)

    def active_samples(self) -> dict[str, str]:
        """IID -> batch name, for the samples whose data the store holds (not withdrawn)."""
        out: dict[str, str] = {}
        for b in self.batches:
            gone = set(b.withdrawn)
            for iid in b.samples:
                if iid not in gone:
                    out[iid] = b.name
        return out


def _store_doc(settings, blocks, variants_sha, batches) -> dict:
    doc = {"format": FORMAT_VERSION, "settings": settings.to_json(), "blocks": [list(b) for b in blocks],
           "variants_sha256": variants_sha,
           "batches": [{"name": b.name, "dir": os.path.basename(b.dir), "sha256": b.sha256} for b in batches]}
    doc["checksum"] = _sha256(_canonical(doc))
    return doc


def open_store(root: str) -> Store:
    """Read and check a store (``store.json``'s checksum, every ``batch.json``'s sha256)."""
    root = os.path.abspath(root)
    path = os.path.join(root, STORE_FILE)
    if not os.path.exists(path):
        raise StoreError(f"{root}: not a dash-spark store (no {STORE_FILE}); create one with "
                         "`dash-spark compress --store DIR --batch NAME ...`")
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
        body = {k: v for k, v in doc.items() if k != "checksum"}
        ok = doc.get("checksum") == _sha256(_canonical(body))
    except (ValueError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{path}: checksum mismatch or unreadable JSON; the store's index was changed or damaged. "
                         "Restore it from a backup")
    if doc.get("format") != FORMAT_VERSION:
        raise StoreError(f"{path}: store format {doc.get('format')!r}; this dash-spark reads format {FORMAT_VERSION}. "
                         "Recompress the batches into a new store with `dash-spark compress --store`")
    batches = []
    for entry in doc["batches"]:
        bdir = os.path.join(root, "batches", entry["dir"])
        bpath = os.path.join(bdir, "batch.json")
        try:
            with open(bpath, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise StoreError(f"{bpath}: cannot read batch {entry['name']!r} ({exc.strerror}); the store is damaged") from None
        if _sha256(data) != entry["sha256"]:
            raise StoreError(f"{bpath}: checksum mismatch for batch {entry['name']!r}; the store is damaged. "
                             "Restore it from a backup or remove the batch with --remove-batch")
        batches.append(Batch(entry["name"], bdir, entry["sha256"], json.loads(data)))
    return Store(root=root, settings=StoreSettings.from_json(doc["settings"], where=path), blocks=[tuple(b) for b in doc["blocks"]],
                 variants_sha256=doc["variants_sha256"], batches=tuple(batches))


LOCK_FILE = ".lock"


class store_lock:
    """Hold ``DIR/.lock`` while a store is read for a change or changed (refresh, compress, select),
    so that two scheduled runs cannot both commit (the second would drop the first's batch)."""

    def __init__(self, root: str):
        self.path = os.path.join(os.path.abspath(root), LOCK_FILE)

    def __enter__(self):
        import socket

        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            try:
                holder = open(self.path).read().strip() or "unknown"
            except OSError:
                holder = "unknown"
            if not self._stale(holder):
                raise ConfigError(f"{os.path.dirname(self.path)}: the store is in use ({holder}); wait for that run "
                                  f"to finish, or remove {self.path} if no dash-spark run is using the store") from None
            # the process that held it died on this host: take the lock over (one taker wins the rename)
            aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path, aside)
                os.remove(aside)
            except OSError:
                pass
            log.warning("%s: the lock of a run that died (%s) was taken over", os.path.dirname(self.path), holder)
            return self.__enter__()
        except FileNotFoundError:
            return self  # no store directory: open_store will say so
        with os.fdopen(fd, "w") as fh:
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        self.held = True
        return self

    @staticmethod
    def _stale(holder: str) -> bool:
        """Whether a lock's holder line names a process of this host that no longer runs."""
        import socket

        m = re.match(r"pid (\d+) on (\S+) since", holder)
        if not m or m.group(2) != socket.gethostname():
            return False
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc):
        if getattr(self, "held", False):
            try:
                os.remove(self.path)
            except OSError:  # pragma: no cover - best effort
                pass
        return False


def commit(store: Store, batches: list[Batch]) -> Store:
    """Replace ``store.json`` atomically: the store now holds exactly ``batches``."""
    doc = _store_doc(store.settings, store.blocks, store.variants_sha256, batches)
    _write_atomic(os.path.join(store.root, STORE_FILE), json.dumps(doc, indent=1, sort_keys=True).encode())
    return replace(store, batches=tuple(batches))


# ----------------------------------------------------------------------------------------------
# computing a batch's statistics with Spark


def _source_samples(source: dict) -> list[str]:
    return list(source_from_options(**source).fam.iids)


def _write_blocks(plan, dest: str, minus: tuple[str, tuple[str, ...]] | None, columns: tuple[str, ...], W: np.ndarray,
                  ranges):
    """Executor side: statistics of each range, written as one block file; yields (part, sha256).

    With ``minus = (batch_dir, block_sha256s)`` the block written is that batch's stored block minus
    the statistics computed here (a withdrawal).
    """
    from ..scanner.tasks import block_stats

    for part, start, stop, _bs, _be, _rows in ranges:
        pieces = []
        for a in range(start, stop, plan.sub_block):
            vidx = np.arange(a, min(a + plan.sub_block, stop))
            pieces.append(block_stats(plan, W, plan.reader.read(vidx), vidx))
        sums = np.vstack(pieces)
        if minus is not None:
            sums = read_block(minus[0], part, minus[1][part], columns) - sums
        data = block_bytes(start, sums, columns)
        _write_atomic(block_path(dest, part), data)
        yield part, _sha256(data)


def compress_batch(spark, store_root: str, settings: StoreSettings, blocks, source: dict, name: str, *,
                   keep: str | None = None, minus: Batch | None = None, samples: list[str] | None = None,
                   withdrawn: list[str] | None = None):
    """Compute a batch's statistics into a new ``batches/<id>`` directory; return ``(Batch, model)``.

    ``settings`` must already hold the store's phenotypes, covariates and variant hash (checked
    against the batch before anything is computed). The directory is not registered in the store:
    the caller commits it, or removes it on failure.
    """
    from ..scanner.pipeline import model_statistics, plan_scan
    from ..scanner.model import statistics_model
    from ..scanner.jobs import run_ranges
    from ..spark.session import resolve_session
    from .study import variant_hash, variant_table

    cfg = settings.scan_config(source, keep=keep)
    model = statistics_model(cfg, subset_of_fam=keep is not None)
    what = f"batch {name!r}"
    _agree(what, "phenotypes", list(model.phenotypes), list(settings.phenotypes))
    _agree(what, "covariates", list(model.covariates), list(settings.covariates))
    if (model.sexchr_stats is not None) != settings.sexchr:  # pragma: no cover - set by scan_config
        raise ConfigError(f"{what}: its chrX/Y/MT statistics differ from the store's")
    src = source.get("bfile") or source.get("features") or source.get("pfile") or source.get("bgen")
    if model.bim.n_variants != settings.n_variants or variant_hash(variant_table(model.bim)) != settings.variant_hash:
        raise ConfigError(f"{what}: the variants of {src} differ from the store's ({model.bim.n_variants} vs "
                          f"{settings.n_variants} variants, or different IDs/positions/alleles/order); every batch "
                          "must have the store's variants in the same order")
    spark = resolve_session(spark)
    bdir = os.path.join(store_root, "batches", f"{name}-{uuid.uuid4().hex[:12]}")
    os.makedirs(os.path.join(bdir, "blocks"))
    try:
        plan, _, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
        offs = model.bim.line_offsets
        from ..scanner.tasks import RangeRow

        ranges = [RangeRow(p, s, e, int(offs[s]), int(offs[e])) for p, (s, e) in enumerate(blocks)]
        minus_arg = (minus.dir, tuple(minus.record["blocks"])) if minus is not None else None
        write = partial(_write_blocks, plan, bdir, minus_arg, settings.columns())
        rows = sorted(run_ranges(spark, model.W, ranges, write))  # only (part, sha256) pairs come back
        shas = [sha for _, sha in rows]
        if len(shas) != len(blocks):  # pragma: no cover - one row per range
            raise DashError(f"{what}: {len(shas)} blocks written, expected {len(blocks)}")
        stats = model_statistics(model, None)
        if minus is not None:
            stats = minus.moments(settings) - stats
        glob = stats.moment_arrays()
        record = {
            "format": FORMAT_VERSION, "name": name, "source": source,
            "samples": samples if samples is not None else _source_samples(source),
            "withdrawn": withdrawn or [],
            "globals": {k: _encode_array(v) for k, v in sorted(glob.items())},
            "blocks": shas,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(record, sort_keys=True).encode()
        _write_atomic(os.path.join(bdir, "batch.json"), data)
        return Batch(name, bdir, _sha256(data), record), model
    except BaseException:
        shutil.rmtree(bdir, ignore_errors=True)
        raise


def _agree(what: str, field: str, found: list, expected: list) -> None:
    if list(found) != list(expected):
        raise ConfigError(f"{what}: {field} differ from the store's; expected {list(expected)}, found {list(found)}. "
                          "Every batch must have the store's phenotypes and covariates (use --pheno-name/"
                          "--covar-name when creating the store to fix them)")


def _source(args_source: dict) -> dict:
    """Absolute paths of a batch's source files (recorded in the store)."""
    out = {}
    for k, v in args_source.items():
        if v:
            out[k] = v if k == "bgen_ref" else os.path.abspath(v)
    if not out.get("pheno"):
        raise ConfigError("a batch needs --pheno")
    if sum(bool(out.get(k)) for k in ("bfile", "features", "pfile", "bgen")) != 1:
        raise ConfigError("a batch needs one of --bfile PREFIX, --pfile PREFIX, --bgen FILE ref-first|ref-last or "
                          "--features FILE.parquet (with --feature-samples)")
    return out


# ----------------------------------------------------------------------------------------------
# creating a store and adding a batch


def create_store(spark, root: str, name: str, source: dict, *, intercept: bool = True,
                 missing_genotypes: str = "drop", pheno_names=None, covar_names=None,
                 block_variants: int | None = None, pheno_01: bool = False, linear_for_binary: bool = False,
                 pred_test: str | None = None) -> Store:
    """Create ``root`` holding one batch (refuses an existing store)."""
    from ..scanner.model import statistics_model
    from ..spark.session import resolve_session
    from .study import variant_hash, variant_table
    from ..scanner.tasks import default_block_variants

    root = os.path.abspath(root)
    check_batch_name(name)
    if os.path.exists(os.path.join(root, STORE_FILE)):
        raise OutputError(f"{root}: a store already exists here; add batches with `dash-spark refresh --store "
                          f"{root} --add-batch NAME ...`")
    if os.path.exists(root) and [f for f in os.listdir(root) if f != LOCK_FILE]:
        raise OutputError(f"{root}: directory exists and is not empty; choose a new --store directory")
    source = _source(source)
    if pred_test == "regenie" and not source.get("pred"):
        raise ConfigError("--pred-test regenie needs the batch's REGENIE step-1 predictions (--pred FILE_pred.list)")
    options = ModelSettings(intercept=intercept,
                            # REGENIE imputes missing calls with the mean
                            missing_genotypes="mean" if pred_test == "regenie" else missing_genotypes,
                            pheno_names=tuple(pheno_names) if pheno_names else None,
                            covar_names=tuple(covar_names) if covar_names else None, pheno_01=bool(pheno_01),
                            linear_for_binary=bool(linear_for_binary), pred_test=pred_test or "wald")
    # plink2's sex-chromosome models where the variants have chrX/Y/MT
    model = statistics_model(options.scan_config(source, sex_chromosomes=True))
    m = model.bim.n_variants
    vt = variant_table(model.bim)
    settings = StoreSettings(model=options, phenotypes=tuple(model.phenotypes), covariates=tuple(model.covariates),
                             variant_hash=variant_hash(vt), n_variants=int(m), pred=bool(source.get("pred")),
                             sexchr=model.sexchr_stats is not None,
                             source_kind="features" if source.get("features") else "bfile")
    spark = resolve_session(spark)
    bv = min(block_variants or default_block_variants(m, spark.sparkContext.defaultParallelism), MAX_BLOCK_VARIANTS)
    blocks = [(a, min(a + bv, m)) for a in range(0, m, bv)]
    os.makedirs(os.path.join(root, "batches"), exist_ok=True)
    try:
        buf = io.BytesIO()
        with pq.ParquetWriter(buf, vt.schema) as writer:
            for s, e in blocks:
                writer.write_table(vt.slice(s, e - s), row_group_size=e - s)
        data = buf.getvalue()
        _write_atomic(os.path.join(root, VARIANTS_FILE), data)
        empty = Store(root=root, settings=settings, blocks=blocks, variants_sha256=_sha256(data), batches=())
        batch, _ = compress_batch(spark, root, settings, blocks, source, name)
        store = commit(empty, [batch])
    except BaseException:
        # remove only what this call created (the directory was empty but for our lock)
        for entry in ("batches", VARIANTS_FILE, STORE_FILE):
            p = os.path.join(root, entry)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)
        raise
    log.info("store %s: created with batch %s (%d samples), %d variants in %d blocks", root, name,
             len(batch.samples), m, len(blocks))
    return store


def check_settings(store: Store, **given) -> None:
    """Model options given on the command line must match the store's (they are fixed at creation)."""
    for key, value in given.items():
        if value is None:
            continue
        have = getattr(store.settings.model, key)
        if isinstance(value, (tuple, list)):
            value, have = list(value), list(have or ())
        if have != value:
            raise ConfigError(f"{store.root}: the store was created with {key} = {have!r}, not {value!r}; "
                              "a store's model settings are fixed when it is created")


def _check_pred(what: str, settings: StoreSettings, source: dict) -> None:
    """A store's batches all have LOCO offsets (``--pred``) or none do."""
    if bool(source.get("pred")) != settings.pred:
        raise ConfigError(f"{what}: the store's batches {'have' if settings.pred else 'have no'} LOCO offsets "
                          f"(--pred); {'give' if settings.pred else 'leave out'} --pred for this batch too")


def check_new_batch(store: Store, name: str, source: dict) -> dict:
    """Refuse a batch name already used or samples already in the store; return absolute sources."""
    check_batch_name(name)
    if store.batch(name) is not None:
        raise ConfigError(f"{store.root}: batch {name!r} is already in the store (added "
                          f"{store.batch(name).record['created']}); a batch is added once. Remove it first with "
                          "--remove-batch to replace it")
    source = _source(source)
    _check_pred(f"batch {name!r}", store.settings, source)
    every = {iid: b.name for b in store.batches for iid in b.samples}
    dup = [iid for iid in _source_samples(source) if iid in every]
    if dup:
        raise ConfigError(f"batch {name!r}: {len(dup)} sample(s) are already in the store ({_describe(dup)}; "
                          f"{dup[0]} is in batch {every[dup[0]]!r}); a sample may be added only once, and a "
                          "withdrawn sample may not come back")
    return source


# ----------------------------------------------------------------------------------------------
# finalizing: pooled statistics -> the scan's outputs


def pooled_block(spec: dict, vfile, part: int):
    """Executor side: block ``part``'s statistics added over ``spec["batches"]`` (each checked against
    its sha256) and its variants' ``(chrom, id, pos, alt, ref)`` from the store's variant list."""
    V = None
    for bdir, shas in spec["batches"]:
        block = read_block(bdir, part, shas[part], spec["columns"])
        V = block if V is None else V + block
    vt = vfile.read_row_group(part)
    return V, tuple(vt.column(c).to_numpy(zero_copy_only=False) for c in ("chrom", "id", "pos", "alt", "ref"))


def _finalize_task(spec: dict, G: SufficientStats, ranges):
    """Executor side: add a range's stored blocks over the batches and finalize them."""

    vfile = pq.ParquetFile(spec["variants"])
    for part, start, stop, _bs, _be, _rows in ranges:
        V, meta = pooled_block(spec, vfile, part)
        yield G.block(start, V).results_batch(np.arange(start, stop, dtype=np.int64), meta,
                                              count_alt=spec["count_alt"], a1freq_floor=spec.get("a1freq_floor", 0.0))


def finalize_store(spark, store: Store, batches, stage, *, plots: bool = True, a1freq_floor: float = 0.0) -> dict:
    """Write the scan outputs of the pooled ``batches`` under ``stage`` (a local directory, or a
    :class:`~dash_spark.outputs.staging.ObjectOutput`: the tasks then write their parts under its object
    stage, which the driver fetches to finish the files); return the glm paths. One Spark job: each
    task sums its block over the batches, finalizes it and writes its results part and text lines
    itself."""
    objects = getattr(stage, "objects", None)
    stage = getattr(stage, "path", stage)
    from ..outputs.writers import finish_local_outputs
    from ..scanner.jobs import write_ranges

    G = store.pooled_globals(batches)
    store.check_pooled(G)
    s = store.settings
    spec = {"columns": store.columns, "variants": store.variants_path,
            "count_alt": s.source_kind == "features", "a1freq_floor": a1freq_floor,
            "batches": [(b.dir, tuple(b.record["blocks"])) for b in batches]}
    from ..scanner.tasks import RangeRow

    ranges = [RangeRow(p, a, e) for p, (a, e) in enumerate(store.blocks)]  # the stored blocks: no file lines
    written = write_ranges(spark, G, ranges, partial(_finalize_task, spec), objects.path if objects else stage,
                           s.phenotypes, bins=first_bins(len(s.phenotypes)))
    if objects is not None:
        objects.download(stage)
    counts = {"batches": [b.name for b in batches],
              "pooled_samples": {p: G.n_samples(t) for t, p in enumerate(s.phenotypes)}}
    model = OutputModel(phenotypes=s.phenotypes, covariates=s.covariates, regenie_outputs=s.model.pred_test == "regenie",
                        n_variants=s.n_variants, counts=counts)
    if objects is None:  # the executors see the stage: they join the texts and find the medians
        from ..scanner.pipeline import texts_and_medians

        joined, medians = texts_and_medians(spark, stage, model, written.sums)
        glm, summaries = finish_local_outputs(stage, model, plots=plots, texts_joined=joined, sums=written.sums,
                                              medians=medians)
    else:
        glm, summaries = finish_local_outputs(stage, model, plots=plots)
    return {"glm": glm, "summaries": summaries, "counts": counts}


# ----------------------------------------------------------------------------------------------
# refresh: add / remove / withdraw, then finalize; the store changes only if everything worked


@dataclass(frozen=True)
class RefreshResult:
    out: str
    glm_paths: dict
    summaries: dict
    batches: list[str]
    seconds: float


def read_withdrawals(path: str) -> list[str]:
    """IIDs to withdraw: one per line (``IID``, or ``FID IID``); ``#`` lines are comments."""
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    out, seen = [], set()
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise InputError(f"{path}, line {lineno}: expected IID or FID IID, found {len(fields)} fields")
            iid = fields[-1]
            if iid in seen:
                raise InputError(f"{path}, line {lineno}: sample {iid} listed twice")
            seen.add(iid)
            out.append(iid)
    if not out:
        raise InputError(f"{path}: no sample listed")
    return out


def id_file(ids: list[str]) -> str:
    """A private temporary file listing IIDs (one per line), for ``--keep``/``--remove``; the caller removes it."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="dash-spark-ids-", suffix=".txt")  # mode 0600
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{iid}\n" for iid in ids))
    return path


def _describe(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


_BATCH_DIR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}-[0-9a-f]{12}")


def clean_orphans(store: Store) -> int:
    """Remove batch directories that ``store.json`` does not reference: those a killed refresh or
    compress left (call it holding the store's lock). Returns how many were removed."""
    known = {os.path.basename(b.dir) for b in store.batches}
    folder = os.path.join(store.root, "batches")
    removed = 0
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name not in known and _BATCH_DIR_RE.fullmatch(name) and os.path.isdir(os.path.join(folder, name)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed += 1
            log.warning("%s: removed %s, a batch directory of a run that did not finish", store.root, name)
    return removed


def run_refresh(store_root: str, out: str, **kwargs) -> RefreshResult:
    """:func:`_refresh` while holding the store's lock."""
    with store_lock(store_root):
        return _refresh(store_root, out, **kwargs)


def _refresh(store_root: str, out: str, *, add: tuple[str, dict] | None = None, remove: str | None = None,
             withdraw: str | None = None, overwrite: bool = False, plots: bool = True, spark=None,
             master: str | None = None, spark_conf: dict | None = None, min_release_delta: int = DEFAULT_MIN_DELTA,
             allow_small_release: bool = False, a1freq_lower_limit: float = 0.0) -> RefreshResult:
    """Change the store (at most one of ``add``, ``remove``, ``withdraw``) and finalize it to ``out``.

    Order: check everything that can be checked up front; compute the new batch statistics into new
    directories; finalize into a staged output; then commit ``store.json`` and move the output into
    place. Any failure before the commit leaves the store exactly as it was.
    """
    from ..spark.session import SessionStarter, resolve_session

    t0 = time.time()
    if sum(x is not None for x in (add, remove, withdraw)) > 1:
        raise ConfigError("refresh: give at most one of --add-batch, --remove-batch and --withdraw per run")
    from ..outputs.staging import check_out_dir

    store = open_store(store_root)
    clean_orphans(store)
    inputs = store.inputs(add[1] if add is not None else None, withdraw)
    out = check_out_dir(out, overwrite=overwrite, inputs=inputs)
    if spark is None:  # the JVM starts while the driver checks the inputs and builds the batch's model
        spark = SessionStarter(master, spark_conf)
    batches = list(store.batches)
    new_dirs: list[str] = []
    old_dirs: list[str] = []
    withdrawals: dict[str, list[str]] = {}
    if add is not None:
        name, source = add
        source = check_new_batch(store, name, source)
    if remove is not None:
        if store.batch(remove) is None:
            raise ConfigError(f"{store.root}: no batch named {remove!r}; the store holds "
                              f"{', '.join(b.name for b in store.batches) or 'no batch'}")
        old_dirs.append(store.batch(remove).dir)
        batches = [b for b in batches if b.name != remove]
    if withdraw is not None:
        ids = read_withdrawals(withdraw)
        active = store.active_samples()
        gone = {iid for b in store.batches for iid in b.withdrawn}
        unknown = [iid for iid in ids if iid not in active]
        if unknown:
            already = [iid for iid in unknown if iid in gone]
            detail = f"; {len(already)} of them were withdrawn before" if already else ""
            raise InputError(f"{withdraw}: {len(unknown)} listed sample(s) are not in the store ({_describe(unknown)}"
                             f"{detail}); list only samples of the store's batches. Nothing was changed")
        for iid in ids:
            withdrawals.setdefault(active[iid], []).append(iid)
    # the release guard, before any work: the samples these results will hold
    released = set(Store.active_ids(batches)) - {iid for v in withdrawals.values() for iid in v}
    if add is not None:
        released |= set(_source_samples(source))
    log_entries = check_sample_release(store.releases_path, released, min_delta=min_release_delta,
                                       override=allow_small_release, where=f"refresh {store.root}")

    committed = False
    try:
        if add is not None:
            batch, _ = compress_batch(spark, store.root, store.settings, store.blocks, source, name)
            new_dirs.append(batch.dir)
            batches.append(batch)
            log.info("refresh: batch %s compressed (%d samples)", name, len(batch.samples))
        for bname, ids in withdrawals.items():
            old = store.batch(bname)
            keep = id_file(ids)
            try:
                # the batch's own model restricted to the withdrawn samples; subtracted block by block
                batch, _ = compress_batch(spark, store.root, store.settings, store.blocks, old.record["source"],
                                          bname, keep=keep, minus=old, samples=old.samples,
                                          withdrawn=old.withdrawn + ids)
            finally:
                os.remove(keep)
            new_dirs.append(batch.dir)
            old_dirs.append(old.dir)
            batches = [batch if b.name == bname else b for b in batches]
            log.info("refresh: %d sample(s) withdrawn from batch %s", len(ids), bname)
        with staged_output(out, overwrite=overwrite, inputs=inputs, command="refresh") as stage:
            result = finalize_store(resolve_session(spark), store, batches, stage, plots=plots,
                                    a1freq_floor=a1freq_lower_limit)
            commit(store, batches)
            committed = True
            record_sample_release(store.releases_path, log_entries, released, out=out, command="refresh",
                                  overridden=allow_small_release)
            glm = {k: stage.final(v) for k, v in result["glm"].items()}
    except BaseException:
        if not committed:  # the store does not reference them
            for d in new_dirs:
                shutil.rmtree(d, ignore_errors=True)
        raise
    # committed: the old directories are no longer referenced
    for d in old_dirs:
        shutil.rmtree(d, ignore_errors=True)
    log.info("refresh: store %s holds %d batch(es); outputs in %s (%.1f s)", store.root, len(batches), out,
             time.time() - t0)
    return RefreshResult(out=out, glm_paths=glm, summaries=result["summaries"], batches=[b.name for b in batches],
                         seconds=time.time() - t0)


def run_compress(store_root: str, name: str, source: dict, *, intercept: bool | None = None,
                 missing_genotypes: str | None = None, pheno_names=None, covar_names=None,
                 block_variants: int | None = None, spark=None, master: str | None = None,
                 spark_conf: dict | None = None, pheno_01: bool | None = None,
                 linear_for_binary: bool | None = None, pred_test: str | None = None) -> Store:
    """``dash-spark compress --store``: persist a batch's statistics (creating the store with its
    first batch). Nothing is finalized; ``refresh`` does that."""
    from ..spark.session import SessionStarter

    root = os.path.abspath(store_root)
    if not os.path.exists(os.path.join(root, STORE_FILE)):
        made = not os.path.exists(root)
        os.makedirs(root, exist_ok=True)
        try:
            with store_lock(root):  # two first compresses: one creates, the other waits its turn and adds
                if not os.path.exists(os.path.join(root, STORE_FILE)):
                    if spark is None:  # the JVM starts while the driver builds the batch's model
                        spark = SessionStarter(master, spark_conf)
                    return create_store(spark, root, name, source, intercept=True if intercept is None else intercept,
                                        missing_genotypes=missing_genotypes or "drop", pheno_names=pheno_names,
                                        covar_names=covar_names, block_variants=block_variants,
                                        pheno_01=bool(pheno_01), linear_for_binary=bool(linear_for_binary),
                                        pred_test=pred_test)
        except BaseException:
            if made and not os.listdir(root):
                os.rmdir(root)
            raise
    with store_lock(root):
        store = open_store(root)
        clean_orphans(store)
        check_settings(store, intercept=intercept, missing_genotypes=missing_genotypes, pheno_names=pheno_names,
                       covar_names=covar_names, pheno_01=pheno_01 or None, linear_for_binary=linear_for_binary or None,
                       pred_test=pred_test)
        if spark is None:
            spark = SessionStarter(master, spark_conf)
        source = check_new_batch(store, name, source)
        batch, _ = compress_batch(spark, root, store.settings, store.blocks, source, name)
        try:
            store = commit(store, list(store.batches) + [batch])
        except BaseException:
            shutil.rmtree(batch.dir, ignore_errors=True)
            raise
    log.info("store %s: batch %s added (%d samples); %d batch(es)", root, name, len(batch.samples), len(store.batches))
    return store
