"""plink2 filesets (.pgen/.pvar/.psam): sample and variant metadata, dosage reads by variant.

The .psam and .pvar are parsed here (line-numbered errors); genotypes are read by executors with
plink2's own reader library ``pgenlib``, which returns dosages of ALT (``allele_idx=1``) in units
of 1/16384 as floats and -9 for a missing call (turned into NaN here).

- ``.psam``: a header ``#FID IID ...`` or ``#IID ...`` (``PAT``/``MAT`` columns decide the
  founders, as in a .fam; absent parents mean founders), or no header (.fam columns);
- ``.pvar``: ``##`` lines, then a header ``#CHROM POS ID REF ALT ...`` (columns found by name),
  or no header (.bim columns ``CHROM ID CM POS ALT REF``). A multiallelic variant lists its ALT
  alleles comma-separated; :func:`read_pgen_alleles` reads each allele's dosages.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, not_utf8_error, utf8_lines
from . import files
from .plink import Bim, Fam, sex_code

log = logging.getLogger(__name__)

PGEN_MISSING = -9.0


def pfile_paths(prefix: str) -> tuple[str, str, str]:
    """``(PREFIX.pgen, PREFIX.pvar, PREFIX.psam)``; a prefix given with one of the endings is accepted."""
    for ext in (".pgen", ".pvar", ".psam"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix + ".pgen", prefix + ".pvar", prefix + ".psam"


# ------------------------------------------------------------------------------------------------
# .psam


def read_psam(path: str) -> Fam:
    """Samples of a .psam (or a headerless .fam-style file) in genotype order; IIDs unique."""
    fids: list[str] = []
    iids: list[str] = []
    founder: list[bool] = []
    sex: list[int] = []
    seen: dict[str, int] = {}
    try:
        import io

        fh: io.TextIOBase
        if files.is_uri(path):
            fh = io.TextIOWrapper(io.BytesIO(files.read_bytes(path)), encoding="utf-8")
        else:
            fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot open .psam ({exc.strerror or exc}); check the --pfile prefix") from None
    cols = None
    with fh:
        for lineno, line in enumerate(utf8_lines(fh, path, ".psam"), 1):
            fields = line.split()
            if not fields or line.startswith("##"):
                continue
            if cols is None and fields[0].startswith("#"):
                head = [fields[0][1:]] + fields[1:]
                if head[0] not in ("FID", "IID"):
                    raise InputError(f"{path}:{lineno}: .psam header; expected '#FID IID ...' or '#IID ...', "
                                     f"found {' '.join(fields[:3])!r}")
                if "IID" not in head:
                    raise InputError(f"{path}:{lineno}: .psam header has no IID column; expected '#FID IID ...' "
                                     f"or '#IID ...', found {' '.join(fields[:4])!r}")
                cols = {name: i for i, name in enumerate(head)}
                continue
            if cols is None:  # no header: .fam columns FID IID PAT MAT SEX PHENO
                if len(fields) != 6:
                    raise InputError(f"{path}:{lineno}: a .psam without a header needs the 6 .fam columns "
                                     f"(FID IID PAT MAT SEX PHENO); found {len(fields)} fields. Add a "
                                     "'#FID IID ...' header line")
                cols = {"FID": 0, "IID": 1, "PAT": 2, "MAT": 3, "SEX": 4}
            if len(fields) < len(cols):
                raise InputError(f"{path}:{lineno}: expected {len(cols)} fields as in the header, found {len(fields)}")
            iid = fields[cols["IID"]]
            if iid in seen:
                raise InputError(f"{path}:{lineno}: duplicate sample ID {iid!r} (first on line {seen[iid]}); "
                                 "IIDs must be unique")
            seen[iid] = lineno
            fids.append(fields[cols["FID"]] if "FID" in cols else iid)
            iids.append(iid)
            pat = fields[cols["PAT"]] if "PAT" in cols else "0"
            mat = fields[cols["MAT"]] if "MAT" in cols else "0"
            founder.append(pat == "0" and mat == "0")
            sex.append(sex_code(fields[cols["SEX"]]) if "SEX" in cols else 0)
    if not iids:
        raise InputError(f"{path}: no samples; expected one line per sample after the '#IID' header")
    return Fam(path=path, fids=tuple(fids), iids=tuple(iids), founder=np.array(founder, dtype=bool),
               sex=np.array(sex, dtype=np.int8))


# ------------------------------------------------------------------------------------------------
# .pvar


@dataclass(frozen=True)
class PvarLayout:
    """Columns (0-based) of CHROM, POS, ID, REF, ALT in the .pvar's variant lines."""

    chrom: int
    pos: int
    id: int
    ref: int
    alt: int
    n_cols: int


BIM_LAYOUT = PvarLayout(chrom=0, pos=3, id=1, ref=5, alt=4, n_cols=6)


def _parse_pvar_text(text: bytes, path: str, first_line: int, lay: PvarLayout) -> tuple[np.ndarray, ...]:
    """Parse .pvar variant lines (bytes) into chrom, id, pos, alt, ref arrays, naming a bad line."""
    chrom, ids, pos, alt, ref = [], [], [], [], []
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, ".pvar", data=text, exc=exc, first_line=first_line) from None
    need = max(lay.chrom, lay.pos, lay.id, lay.ref, lay.alt) + 1
    for lineno, raw in enumerate(decoded.splitlines(), first_line):
        fields = raw.split()
        if len(fields) < need:
            raise InputError(f"{path}:{lineno}: expected {lay.n_cols} fields as in the header, found {len(fields)}")
        a = fields[lay.alt]  # a multiallelic variant lists its ALT alleles comma-separated
        try:
            p = int(fields[lay.pos])
        except ValueError:
            raise InputError(f"{path}:{lineno}: POS must be an integer; found {fields[lay.pos]!r}") from None
        chrom.append(fields[lay.chrom])
        ids.append(fields[lay.id])
        pos.append(p)
        alt.append(a)
        ref.append(fields[lay.ref])
    return (np.array(chrom, dtype=object), np.array(ids, dtype=object), np.array(pos, dtype=np.int64),
            np.array(alt, dtype=object), np.array(ref, dtype=object))


def pvar_path(prefix_pvar: str) -> str:
    """``PREFIX.pvar``, or ``PREFIX.pvar.zst`` where only that exists (plink2 writes it with
    ``--make-pgen pvar-zs``)."""
    if not files.exists(prefix_pvar) and files.exists(prefix_pvar + ".zst"):
        return prefix_pvar + ".zst"
    return prefix_pvar


def plain_pvar(path: str) -> str:
    """A local, uncompressed .pvar whose lines a task can read by byte range: ``path`` itself, or for
    a ``.pvar.zst`` its text decompressed once into the private cache (one copy per file version;
    each node of a cluster that does not share the cache makes its own)."""
    if not path.endswith(".zst"):
        return path
    out = files.cached_path(path, "pvar", ".pvar")
    if os.path.exists(out):
        return out
    import pyarrow as pa

    files.make_cache_dir("pvar")
    tmp = f"{out}.tmp-{os.getpid()}-{threading.get_ident()}"
    log.info("pgen: decompressing %s into %s (once; reused while the file is unchanged)", path,
             os.path.dirname(out))
    try:
        with files.open_input_stream(path) as raw, pa.CompressedInputStream(raw, "zstd") as src, \
                open(tmp, "wb") as dst:
            while True:
                chunk = src.read(8 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        os.replace(tmp, out)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot decompress the .pvar.zst ({exc}); expected a zstd-compressed .pvar "
                         "(plink2 --make-pgen pvar-zs). Check that the copy is complete") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def read_pvar(path: str) -> tuple[Bim, PvarLayout, int]:
    """Read a .pvar (or a .pvar.zst, through :func:`plain_pvar`): its variants (``line_offsets`` =
    byte offsets of the variant lines, so a task can read its own range), the column layout and the
    file line number of the first variant."""
    try:
        data = files.read_bytes(plain_pvar(path))
    except OSError as exc:
        raise InputError(f"{path}: cannot open .pvar ({exc.strerror or exc}); check the --pfile prefix") from None
    buf = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(buf == 10) + 1]).astype(np.int64)
    if len(buf) and buf[-1] == 10:
        starts = starts[:-1]
    lay = None
    first = 0  # index (0-based line) of the first variant line
    for i, s in enumerate(starts):
        line = data[s : s + 2]
        if line == b"##":
            continue
        if line[:1] == b"#":
            end = data.find(b"\n", s)
            head = data[s + 1 : end if end >= 0 else len(data)].decode("utf-8", "replace").split()
            where = {name: j for j, name in enumerate(head)}
            missing = [c for c in ("CHROM", "POS", "ID", "REF", "ALT") if c not in where]
            if missing:
                raise InputError(f"{path}:{i + 1}: .pvar header lacks {', '.join(missing)}; expected "
                                 f"'#CHROM POS ID REF ALT ...', found {' '.join(['#' + head[0]] + head[1:6])!r}")
            lay = PvarLayout(where["CHROM"], where["POS"], where["ID"], where["REF"], where["ALT"], len(head))
            first = i + 1
        else:
            lay = BIM_LAYOUT
            first = i
        break
    if lay is None or first >= len(starts):
        raise InputError(f"{path}: no variants; expected one line per variant after the '#CHROM' header")
    offsets = np.append(starts[first:], len(data)).astype(np.int64)
    body = data[offsets[0]:]
    if b"\n\n" in body or body.startswith(b"\n") or b"\r\n\r\n" in body:
        raise InputError(f"{path}: blank lines are not allowed among the variant lines of a .pvar")
    chrom, ids, pos, alt, ref = _parse_pvar_text(body, path, first + 1, lay)
    if len(ids) != len(offsets) - 1:  # pragma: no cover - one line per variant
        raise InputError(f"{path}: expected one variant per line, found {len(ids)} in {len(offsets) - 1} lines")
    bim = Bim(path=path, chrom=chrom, id=ids, pos=pos, alt=alt, ref=ref, line_offsets=offsets)
    return bim, lay, first + 1


def read_pvar_range(path: str, byte_start: int, byte_stop: int, first_line: int,
                    lay: PvarLayout) -> tuple[np.ndarray, ...]:
    """The .pvar variant lines in ``[byte_start, byte_stop)`` (executor side; of the decompressed
    text for a .pvar.zst)."""
    data = files.read_range(plain_pvar(path), byte_start, byte_stop - byte_start)
    return _parse_pvar_text(data, path, first_line, lay)


# ------------------------------------------------------------------------------------------------
# .pgen (pgenlib)

_READERS: dict = {}
_LOCK = threading.Lock()


def _pgenlib():
    try:
        import pgenlib
    except ImportError:  # pragma: no cover - a dependency of the package
        raise InputError("--pfile needs the pgenlib package (plink2's reader); pip install pgenlib") from None
    return pgenlib


def _pgenlib_text(exc: Exception) -> str:
    """pgenlib's error text as text: it raises with bytes, whose ``str`` is a Python literal."""
    msg = exc.args[0] if len(exc.args) == 1 else str(exc)
    if isinstance(msg, (bytes, bytearray)):
        msg = bytes(msg).decode("utf-8", "replace")
    return " ".join(str(msg).split()).rstrip(".") or type(exc).__name__


#: variants per block of a .pgen (plink2's vblock): a mode-0x10 header lists each block's file offset
PGEN_BLOCK = 1 << 16


class RemotePgen:
    """A .pgen in object storage, read by plink2's library through a local sparse copy in the
    private cache (:func:`files.cached_path`): the file's size with holes, its header, and the
    65,536-variant blocks that this node's tasks have read, fetched by byte range when a task first
    needs one (a marker file per block tells the node's other processes it is there). The blocks'
    offsets come from the header (mode 0x10: one offset per block; mode 0x01: fixed-width records);
    a .pgen of another storage mode is fetched whole, once."""

    def __init__(self, uri: str, n_samples: int, n_variants: int):
        self.uri = uri
        size, _ = files.version(uri)
        head = files.read_range(uri, 0, 12)
        if len(head) < 3 or head[:2] != b"\x6c\x1b":
            raise InputError(f"{uri}: not a plink2 .pgen; expected magic bytes 6c 1b, found "
                             f"{head[:3].hex(' ') or 'an empty file'}. Check that --pfile names a plink2 fileset")
        n_blocks = max(1, (n_variants + PGEN_BLOCK - 1) // PGEN_BLOCK)
        self.blocked = True
        if head[2] == 0x01:
            rec = (n_samples + 3) // 4
            starts = 3 + np.arange(n_blocks, dtype=np.int64) * PGEN_BLOCK * rec
        elif head[2] == 0x10 and len(head) == 12:
            starts = np.frombuffer(files.read_range(uri, 12, 8 * n_blocks), "<u8").astype(np.int64)
            if len(starts) != n_blocks or starts[0] < 12 + 8 * n_blocks or np.any(np.diff(starts) < 0) \
                    or starts[-1] > size:
                raise InputError(f"{uri}: the .pgen header's block offsets do not fit a file of {size:,} bytes with "
                                 f"{n_variants:,} variants; check that the .pvar belongs to it and that the copy is "
                                 "complete")
        else:
            self.blocked = False
            starts = np.zeros(1, dtype=np.int64)
        self.bounds = np.append(starts, size)
        self.local = files.cached_path(uri, "pgen", ".pgen")
        self._present: set = set()
        self._lock = threading.Lock()
        if not os.path.exists(self.local):
            files.make_cache_dir("pgen")
            tmp = f"{self.local}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                with open(tmp, "wb") as fh:
                    fh.truncate(size)
                    fh.write(files.read_range(uri, 0, int(starts[0])))
                try:
                    os.link(tmp, self.local)  # never replaces a copy another process already fills
                except FileExistsError:
                    pass
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

    def ensure(self, variants: np.ndarray) -> None:
        """Fetch the blocks that hold ``variants`` unless this node has them already."""
        blocks = np.unique(np.asarray(variants, dtype=np.int64) // PGEN_BLOCK) if self.blocked else [0]
        with self._lock:
            for b in (int(x) for x in blocks):
                if b in self._present:
                    continue
                marker = f"{self.local}.b{b}"
                if not os.path.exists(marker):
                    lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
                    step = files.read_chunk_bytes()
                    fd = os.open(self.local, os.O_WRONLY)
                    try:
                        for at in range(lo, hi, step):
                            data = files.read_range(self.uri, at, min(step, hi - at))
                            if len(data) != min(step, hi - at):
                                raise InputError(f"{self.uri}: file ended at byte {at + len(data):,} inside "
                                                 f"variant block {b + 1}; the .pgen is truncated")
                            os.pwrite(fd, data, at)
                    finally:
                        os.close(fd)
                    with open(marker, "w"):
                        pass
                self._present.add(b)


_REMOTE: dict = {}


def _remote_pgen(path: str, n_samples: int, n_variants: int) -> RemotePgen:
    key = (path, n_samples, n_variants, *files.version(path))
    with _LOCK:
        got = _REMOTE.get(key)
        if got is None:
            try:
                got = _REMOTE[key] = RemotePgen(path, n_samples, n_variants)
            except OSError as exc:
                raise InputError(f"{path}: cannot make the local copy of the .pgen's blocks in "
                                 f"{files.cache_dir('pgen')} ({exc.strerror or exc}); set DASH_SPARK_CACHE to a "
                                 "writable folder with room for the blocks this node reads") from None
        return got


def open_pgen(path: str, n_samples: int, n_variants: int):
    """A pgenlib reader of ``path`` (one per process and file version, reused by later tasks); a
    .pgen in object storage is read through its :class:`RemotePgen` copy."""
    local = _remote_pgen(path, n_samples, n_variants).local if files.is_uri(path) else path
    key = (path, n_samples, n_variants, *files.version(path))
    with _LOCK:
        reader = _READERS.get(key)
        if reader is None:
            pgenlib = _pgenlib()
            try:
                reader = pgenlib.PgenReader(local.encode(), raw_sample_ct=n_samples, variant_ct=n_variants)
            except Exception as exc:  # noqa: BLE001 - pgenlib raises RuntimeError with its own text
                raise InputError(f"{path}: cannot read the .pgen ({_pgenlib_text(exc)}); "
                                 f"expected a plink2 .pgen of {n_samples:,} samples x {n_variants:,} variants. "
                                 "Check that the .psam and .pvar belong to it and that the copy is complete") from None
            if len(_READERS) >= 4:
                _READERS.pop(next(iter(_READERS))).close()
            _READERS[key] = reader
        return reader


def check_pgen(path: str, n_samples: int, n_variants: int, psam: str, pvar: str) -> None:
    """Open the .pgen with the .psam/.pvar counts and read its last variant (a truncated file fails)."""
    try:
        size = files.size(path)
        magic = files.read_range(path, 0, 3)
    except OSError as exc:
        raise InputError(f"{path}: cannot open .pgen ({exc.strerror or exc}); check the --pfile prefix") from None
    if magic[:2] != b"\x6c\x1b" or len(magic) < 3:
        raise InputError(f"{path}: not a plink2 .pgen; expected magic bytes 6c 1b, found "
                         f"{magic.hex(' ') or 'an empty file'}. Check that --pfile names a plink2 fileset")
    if magic[2] == 0x01:
        expected = 3 + n_variants * ((n_samples + 3) // 4)
        if size != expected:
            raise InputError(f"{path}: {size:,} bytes ({'truncated' if size < expected else 'too large'}), but "
                             f"{n_samples:,} samples x {n_variants:,} variants need {expected:,}; check that "
                             f"{os.path.basename(psam)} and {os.path.basename(pvar)} belong to it and that the copy "
                             "is complete")
    read_pgen_dosages(path, n_samples, n_variants, np.array([n_variants - 1]))


def read_pgen_dosages(path: str, n_samples: int, n_variants: int, variants: np.ndarray) -> np.ndarray:
    """ALT dosages [shape: (len(variants), n_samples)] float64, NaN for a missing call."""
    reader = open_pgen(path, n_samples, n_variants)
    if files.is_uri(path):
        _remote_pgen(path, n_samples, n_variants).ensure(variants)
    idx = np.ascontiguousarray(variants, dtype=np.uint32)
    out = np.empty((len(idx), n_samples), dtype=np.float64)
    if len(idx) == 0:
        return out
    try:
        with _LOCK:
            reader.read_dosages_list(idx, out)
    except Exception as exc:  # noqa: BLE001 - pgenlib's RuntimeError: a truncated or damaged file
        which = f"variant {int(idx[0]) + 1}" if len(idx) == 1 else f"variants {int(idx[0]) + 1}-{int(idx[-1]) + 1}"
        raise InputError(f"{path}: cannot read {which} of the .pgen "
                         f"({_pgenlib_text(exc)}); the file is truncated or damaged. "
                         "Check that the copy is complete") from None
    out[out == PGEN_MISSING] = np.nan
    return out


def read_pgen_alleles(path: str, n_samples: int, n_variants: int, variants, n_alleles) -> list[np.ndarray]:
    """Each allele's dosage [shape: (K, n_samples)], REF first, NaN missing, of multiallelic
    ``variants`` (``n_alleles``: K of each). pgenlib reads a variant's alleles given the file's
    allele counts; it uses only the count of the variant it reads, so the others are set to 2."""
    pgenlib = _pgenlib()
    local = path
    if files.is_uri(path):
        remote = _remote_pgen(path, n_samples, n_variants)
        remote.ensure(np.asarray(variants))
        local = remote.local
    offs = 2 * np.arange(n_variants + 1, dtype=np.uint64)
    for v, k in sorted(zip((int(x) for x in variants), n_alleles)):
        offs[v + 1:] += np.uint64(k - 2)
    out = []
    try:
        reader = pgenlib.PgenReader(local.encode(), raw_sample_ct=n_samples, variant_ct=n_variants,
                                    allele_idx_offsets=offs.astype(np.uintp))
        try:
            buf = np.empty(n_samples, dtype=np.float64)
            for v, k in zip(variants, n_alleles):
                X = np.empty((k, n_samples))
                for a in range(k):
                    reader.read_dosages(int(v), buf, allele_idx=a)
                    X[a] = buf
                X[X == PGEN_MISSING] = np.nan
                out.append(X)
        finally:
            reader.close()
    except Exception as exc:  # noqa: BLE001 - pgenlib's RuntimeError
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: cannot read the alleles of multiallelic variant {int(variants[0]) + 1} of the .pgen "
                         f"({_pgenlib_text(exc)}); the file is truncated or damaged, or its .pvar does not "
                         "belong to it") from None
    return out


__all__ = ["PvarLayout", "check_pgen", "read_pgen_alleles", "pfile_paths", "read_pgen_dosages", "read_psam", "read_pvar",
           "read_pvar_range"]
