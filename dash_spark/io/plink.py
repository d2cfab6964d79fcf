"""PLINK 1 binary filesets (.bed/.bim/.fam): metadata, validation and raw variant-range reads.

Genotypes are never decoded here: a task reads the packed bytes of its variant range
(``3 + j * ceil(n/4)`` is where variant ``j`` starts) and the kernel in
:mod:`dash_spark.stats.kernel` works on the packed bytes directly.

Encoding (SNP-major, two bits per sample, first sample in the lowest bits), counting the allele
in column 5 of the .bim (plink2's ALT when reading ``--bfile``):

    00 -> 2 copies, 01 -> missing, 10 -> 1 copy, 11 -> 0 copies
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, not_utf8_error
from . import files

BED_MAGIC = bytes([0x6C, 0x1B, 0x01])


@dataclass(frozen=True)
class Fam:
    """Samples of a .fam, in genotype order. ``iids``/``fids``: tuples of n strings;
    ``founder`` [shape: (n,), bool]: both parents unknown (``0``), as plink2 counts founders;
    ``sex`` [shape: (n,), int8]: 1 male, 2 female, 0 unknown (``None``: the source has no sex)."""

    path: str
    fids: tuple[str, ...]
    iids: tuple[str, ...]
    founder: np.ndarray
    sex: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return len(self.iids)


@dataclass(frozen=True)
class Bim:
    """Variants of a .bim, in genotype order; arrays of length m.

    ``alt`` is column 5 (the counted allele), ``ref`` column 6, as plink2 reads ``--bfile``.
    ``line_offsets`` (m + 1 int64) are byte offsets of each line start, so a task can read
    the lines of its own variant range.
    """

    path: str
    chrom: np.ndarray
    id: np.ndarray
    pos: np.ndarray
    alt: np.ndarray
    ref: np.ndarray
    line_offsets: np.ndarray

    @property
    def n_variants(self) -> int:
        return len(self.id)


def _plain_csv(data: bytes, names: list[str], sep: str, types: dict):
    """Arrow's CSV reader over lines of ``len(names)`` fields separated by ``sep``, read as they are
    (no quoting, no escapes, no empty line, no null); None where Arrow refuses a line (the callers'
    line-by-line readers then read it, or name what is wrong)."""
    import pyarrow as pa
    from pyarrow import csv

    try:
        return csv.read_csv(
            pa.py_buffer(data),
            read_options=csv.ReadOptions(column_names=names, use_threads=False),
            parse_options=csv.ParseOptions(delimiter=sep, quote_char=False, escape_char=False,
                                           ignore_empty_lines=False),
            convert_options=csv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                               quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


#: the bytes of a plain .fam: printable ASCII, spaces or tabs, line ends
_FAM_PLAIN = bytes(range(0x21, 0x7F)) + b" \t\n"


def _parse_fam_arrow(text: str) -> tuple | None:
    """The common case of :func:`read_fam` by Arrow's CSV reader (200,000 samples: ~0.05 s instead
    of ~0.35 s): ASCII lines of 6 fields separated by single spaces or by single tabs, no empty
    line, unique IIDs. ``None`` for anything else: the line-by-line reader then reads it, or names
    the line that is wrong."""
    if not text or not text.isascii() or "\n\n" in text or text.startswith("\n"):
        return None
    data = text.encode("ascii")
    if data.translate(None, _FAM_PLAIN):  # other whitespace or control characters: Python's split decides
        return None
    sep = "\t" if "\t" in text else " "
    other = " " if sep == "\t" else "\t"
    if (other in text or sep + sep in text or text.startswith(sep) or sep + "\n" in text or "\n" + sep in text
            or text.endswith(sep)):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    names = ["fid", "iid", "pat", "mat", "sex", "pheno"]
    table = _plain_csv(data, names, sep, {n: pa.string() for n in names})
    if table is None:
        return None
    iids = table.column("iid").to_pylist()
    if not iids or len(set(iids)) != len(iids):
        return None
    founder = pc.and_(pc.equal(table.column("pat"), "0"), pc.equal(table.column("mat"), "0"))
    codes = pc.index_in(table.column("sex"), value_set=pa.array(["1", "M", "m", "2", "F", "f"]))
    sex = np.array([0, 1, 1, 1, 2, 2, 2], dtype=np.int8)[codes.fill_null(-1).to_numpy(zero_copy_only=False) + 1]
    return (tuple(table.column("fid").to_pylist()), tuple(iids),
            founder.to_numpy(zero_copy_only=False).astype(bool), sex)


def read_fam(path: str) -> Fam:
    """Read a .fam (FID IID PAT MAT SEX PHENO, whitespace separated); IIDs must be unique."""
    text = files.read_text(path, ".fam", advice="check the --bfile prefix")
    fast = _parse_fam_arrow(text)
    if fast is not None:
        fids_t, iids_t, founder_a, sex_a = fast
        return Fam(path=path, fids=fids_t, iids=iids_t, founder=founder_a, sex=sex_a)
    fids: list[str] = []
    iids: list[str] = []
    founder: list[bool] = []
    sex: list[int] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise InputError(
                f"{path}:{lineno}: expected 6 fields (FID IID PAT MAT SEX PHENO), found "
                f"{len(fields)}. Is this a plink2 .psam? Convert with plink2 --make-bed"
            )
        iid = fields[1]
        if iid in seen:
            raise InputError(
                f"{path}:{lineno}: duplicate sample ID {iid!r} (first on line {seen[iid]}); "
                "sample IDs (column 2) must be unique"
            )
        seen[iid] = lineno
        fids.append(fields[0])
        iids.append(iid)
        founder.append(fields[2] == "0" and fields[3] == "0")
        sex.append(sex_code(fields[4]))
    if not iids:
        raise InputError(f"{path}: no samples; expected one line per sample")
    return Fam(path=path, fids=tuple(fids), iids=tuple(iids), founder=np.array(founder, dtype=bool),
               sex=np.array(sex, dtype=np.int8))


def sex_code(token: str) -> int:
    """plink2's sex codes: 1/M/m male, 2/F/f female, anything else (0, NA, -9) unknown -> 1, 2, 0."""
    return {"1": 1, "M": 1, "m": 1, "2": 2, "F": 2, "f": 2}.get(token, 0)


#: the bytes of a plain .bim: printable ASCII but the space, tabs and line ends
_BIM_PLAIN = bytes(range(0x21, 0x7F)) + b"\t\n\r"


def _parse_bim_arrow(text: bytes) -> tuple[np.ndarray, ...] | None:
    """The common case of :func:`_parse_bim_text` by Arrow's CSV reader (~3x faster): lines of 6
    tab-separated fields of printable ASCII, no empty line. ``None`` for anything else (spaces or
    other whitespace, which Python's ``split`` and ``splitlines`` read their own way; non-ASCII
    text) and wherever Arrow refuses a line: the line-by-line parser then reads it or names what is
    wrong with it."""
    if not text or text.translate(None, _BIM_PLAIN) or b"\n\n" in text or text.startswith(b"\n"):
        return None
    import pyarrow as pa

    names = ["chrom", "id", "cm", "pos", "alt", "ref"]
    table = _plain_csv(text, names, "\t", {n: (pa.int64() if n == "pos" else pa.string()) for n in names})
    if table is None:
        return None
    import pyarrow.compute as pc

    if any(table.column(n).null_count for n in names):
        return None
    for n in names[:3] + names[4:]:  # an empty field (two tabs in a row) is no field to the line parser
        if pc.min(pc.binary_length(table.column(n))).as_py() == 0:
            return None
    text_cols = []
    for n in ("chrom", "id", "alt", "ref"):  # to_pylist: to_numpy would import pandas (~0.5 s) for this
        col = np.empty(table.num_rows, dtype=object)
        col[:] = table.column(n).to_pylist()
        text_cols.append(col)
    chrom, ids, alt, ref = text_cols
    return chrom, ids, table.column("pos").to_numpy().astype(np.int64, copy=False), alt, ref


def _parse_bim_text(text: bytes, path: str, first_line: int) -> tuple[np.ndarray, ...]:
    """Parse .bim lines (bytes) into chrom, id, pos, alt, ref arrays, naming the bad line."""
    fast = _parse_bim_arrow(text)
    if fast is not None:
        return fast
    chrom, ids, pos, alt, ref = [], [], [], [], []
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, ".bim", data=text, exc=exc, first_line=first_line) from None
    for lineno, raw in enumerate(decoded.splitlines(), first_line):
        fields = raw.split()
        if len(fields) != 6:
            raise InputError(
                f"{path}:{lineno}: expected 6 fields (CHROM ID CM POS ALT REF), found {len(fields)}"
            )
        try:
            p = int(fields[3])
            if not -(2**63) <= p < 2**63:
                raise ValueError
        except ValueError:
            raise InputError(
                f"{path}:{lineno}: position (column 4) must be an integer; found {fields[3]!r}"
            ) from None
        chrom.append(fields[0])
        ids.append(fields[1])
        pos.append(p)
        alt.append(fields[4])
        ref.append(fields[5])
    return (
        np.array(chrom, dtype=object),
        np.array(ids, dtype=object),
        np.array(pos, dtype=np.int64),
        np.array(alt, dtype=object),
        np.array(ref, dtype=object),
    )


def _line_offsets(data: bytes) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    if len(buf) and buf[-1] != 10:
        ends = np.append(ends, len(buf))
    return np.concatenate([[0], ends]).astype(np.int64)


def read_bim(path: str) -> Bim:
    """Read a .bim into arrays (driver side: validation, counts, filters)."""
    try:
        data = files.read_bytes(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot open .bim ({exc.strerror or exc}); check the --bfile prefix") from None
    offsets = _line_offsets(data)
    if len(offsets) < 2:
        raise InputError(f"{path}: no variants; expected one line per variant")
    chrom, ids, pos, alt, ref = _parse_bim_text(data, path, 1)
    if len(ids) != len(offsets) - 1:
        raise InputError(f"{path}: blank lines are not allowed in a .bim")
    return Bim(path=path, chrom=chrom, id=ids, pos=pos, alt=alt, ref=ref, line_offsets=offsets)


def read_bim_range(path: str, byte_start: int, byte_stop: int, first_line: int) -> tuple[np.ndarray, ...]:
    """Read the .bim lines in ``[byte_start, byte_stop)`` (executor side)."""
    data = files.read_range(path, byte_start, byte_stop - byte_start)
    return _parse_bim_text(data, path, first_line)


def bytes_per_variant(n_samples: int) -> int:
    return (n_samples + 3) // 4


def check_bed(path: str, n_samples: int, n_variants: int, fam_path: str, bim_path: str) -> None:
    """Check magic bytes and size of a .bed against the .fam and .bim counts."""
    try:
        size = files.size(path)
        magic = files.read_range(path, 0, 3)
    except OSError as exc:
        raise InputError(f"{path}: cannot open .bed ({exc.strerror or exc}); check the --bfile prefix") from None
    found = magic.hex(" ") or "an empty file"
    if magic[:2] != BED_MAGIC[:2] or len(magic) < 3:
        raise InputError(
            f"{path}: not a PLINK 1 .bed; expected magic bytes 6c 1b 01, found {found}. "
            "Check that --bfile names a PLINK 1 fileset (a compressed .bed must be decompressed first)"
        )
    if magic[2] == 0x00:
        raise InputError(
            f"{path}: sample-major PLINK 1 .bed (mode byte 00); expected SNP-major 6c 1b 01, found {found}. "
            "Sample-major .bed files are not supported; rewrite with PLINK 1.9: plink --bfile PREFIX --make-bed"
        )
    if magic[2] != 0x01:
        raise InputError(
            f"{path}: not a PLINK 1 .bed; expected magic bytes 6c 1b 01, found {found} "
            "(6c 1b 10 and up start a PLINK 2 .pgen). Convert with plink2 --pfile PREFIX --make-bed"
        )
    expected = 3 + n_variants * bytes_per_variant(n_samples)
    if size != expected:
        what = "truncated" if size < expected else "too large"
        raise InputError(
            f"{path}: {size:,} bytes ({what}), but {n_samples:,} samples x {n_variants:,} variants need "
            f"{expected:,}; check that {os.path.basename(fam_path)} and {os.path.basename(bim_path)} "
            "belong to this .bed and that the copy is complete"
        )


_READ_BUFFERS = threading.local()


def read_bed_range(path: str, n_samples: int, start: int, stop: int, *, reuse: bool = False) -> np.ndarray:
    """Packed bytes of variants ``[start, stop)``: uint8 array shape (stop - start, ceil(n/4)).
    With ``reuse`` (a local file) they are read into this thread's buffer, which the next ``reuse``
    read overwrites."""
    nb = bytes_per_variant(n_samples)
    count = (stop - start) * nb
    if reuse and count and not files.is_uri(path):
        buf = getattr(_READ_BUFFERS, "buf", None)
        if buf is None or buf.size < count:
            buf = _READ_BUFFERS.buf = np.empty(count, dtype=np.uint8)
        with open(files.local_path(path), "rb") as fh:
            fh.seek(3 + start * nb)
            got = fh.readinto(memoryview(buf)[:count])  # type: ignore[arg-type] # numpy arrays are buffers
        data = buf[:got]
    else:
        data = np.frombuffer(files.read_range(path, 3 + start * nb, count), dtype=np.uint8)
    if len(data) != count:
        raise InputError(
            f"{path}: file ended while reading variants {start}-{stop - 1}; the .bed is truncated"
        )
    return data.reshape(stop - start, nb)


def read_bed_rows(path: str, n_samples: int, variants: np.ndarray, *, reuse: bool = False) -> np.ndarray:
    """Packed bytes of the given sorted variant indices (contiguous runs are read in one go; with
    ``reuse``, a single run lands in the thread's read buffer: see :func:`read_bed_range`)."""
    variants = np.asarray(variants, dtype=np.int64)
    if len(variants) == 0:
        return np.zeros((0, bytes_per_variant(n_samples)), dtype=np.uint8)
    first, last = int(variants[0]), int(variants[-1]) + 1
    if last - first <= 2 * len(variants) + 64:  # dense: read the span and pick rows
        block = read_bed_range(path, n_samples, first, last, reuse=reuse)
        return block if last - first == len(variants) else block[variants - first]
    breaks = np.flatnonzero(np.diff(variants) > 1) + 1
    runs = np.split(variants, breaks)
    return np.vstack([read_bed_range(path, n_samples, int(r[0]), int(r[-1]) + 1) for r in runs])


def bim_range_bytes(bim: Bim, start: int, stop: int) -> tuple[int, int]:
    return int(bim.line_offsets[start]), int(bim.line_offsets[stop])


__all__ = [
    "Bim",
    "Fam",
    "BED_MAGIC",
    "bim_range_bytes",
    "bytes_per_variant",
    "check_bed",
    "read_bed_range",
    "read_bim",
    "read_bim_range",
    "read_fam",
]

