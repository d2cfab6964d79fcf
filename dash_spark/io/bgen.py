"""BGEN v1.1-v1.3 files (layouts 1 and 2; uncompressed, zlib or zstd; any bit depth) with a ``.bgi``.

The driver reads the header, the sample IDs (embedded, or an Oxford ``.sample``) and the variant
list from the bgenix index ``FILE.bgen.bgi`` (SQLite), checking that the index describes this
file. Executors read their own variants: the index gives each record's byte offset, a task reads
its records and decodes them with numpy (zlib from the standard library, zstd through pyarrow).

Dosage = the expected count of the ALT allele, from the integer probabilities exactly and rounded
to 1/16384 as plink2 does when it reads a BGEN (:func:`_round_dosage`) (``ref-first``: the first allele is REF and the
second is ALT; ``ref-last``: the reverse). A sample whose ploidy byte carries the missing flag
(layout 2), or whose three probabilities are all zero (layout 1), is missing (NaN).

Phased records (layout 2) give the sum of the two haplotypes' ALT probabilities. Not supported
(refused with the variant named): ploidy other than 2, more than two alleles. A BGEN without
``FILE.bgi`` is indexed once into a private cache (:func:`index_path`); ``python -m
dash_spark.io.bgen FILE.bgen`` writes ``FILE.bgen.bgi`` beside it instead (as ``bgenix -g FILE.bgen
-index`` does).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import sys
import threading
import time
import zlib

import numpy as np

from ..errors import InputError
from . import files
from .plink import Bim, Fam, sex_code

log = logging.getLogger(__name__)

REF_MODES = ("ref-first", "ref-last")
DOSAGE_UNIT = 16384  # plink2 stores dosages in units of 1/16384
_CHUNK = 64  # records read from disk at a time


# ------------------------------------------------------------------------------------------------
# header and samples


class BgenHeader:
    """The fixed header of a BGEN file."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.size = files.size(path)
            head = files.read_range(path, 0, 24)
            if len(head) < 24:
                raise InputError(f"{path}: not a BGEN file; expected a header of at least 24 bytes, found "
                                 f"{len(head)}. Check that --bgen names a .bgen file")
            offset, lh, m, n, magic = struct.unpack("<IIII4s", head[:20])
            if lh < 20 or lh > offset:
                raise InputError(f"{path}: not a BGEN file; expected a header length between 20 and the "
                                 f"first variant's offset {offset}, found {lh}")
            flags_raw = files.read_range(path, lh, 4)
            if len(flags_raw) < 4:
                raise InputError(f"{path}: file ends inside the BGEN header; the file is truncated")
            flags = struct.unpack("<I", flags_raw)[0]
            self.sample_block = None
            if flags >> 31:
                self.sample_block = files.read_range(path, 4 + lh, offset - lh)
        except OSError as exc:
            raise InputError(f"{path}: cannot open .bgen ({exc.strerror or exc}); check the --bgen path") from None
        if magic not in (b"bgen", b"\0\0\0\0"):
            raise InputError(f"{path}: not a BGEN file; expected magic bytes 'bgen', found {magic!r}")
        self.first_variant = offset + 4
        self.n_variants = m
        self.n_samples = n
        self.compression = flags & 3
        self.layout = (flags >> 2) & 0xF
        if self.compression == 3:
            raise InputError(f"{path}: unknown BGEN compression code 3; expected 0 (none), 1 (zlib) or 2 (zstd)")
        if self.layout not in (1, 2):
            raise InputError(f"{path}: unsupported BGEN layout {self.layout}; expected layout 1 (v1.1) or 2 "
                             "(v1.2/v1.3). Rewrite it, e.g. plink2 --bgen FILE ref-first --export bgen-1.2")
        if self.layout == 1 and self.compression == 2:
            raise InputError(f"{path}: BGEN layout 1 with zstd compression; expected zlib or none for layout 1")

    def embedded_ids(self) -> list[str] | None:
        if self.sample_block is None:
            return None
        data = self.sample_block
        try:
            _lsi, n = struct.unpack_from("<II", data, 0)
            pos, ids = 8, []
            for _ in range(n):
                (ln,) = struct.unpack_from("<H", data, pos)
                ids.append(data[pos + 2 : pos + 2 + ln].decode("utf-8"))
                pos += 2 + ln
        except (struct.error, UnicodeDecodeError):
            raise InputError(f"{self.path}: the BGEN's sample identifier block is damaged; expected "
                             f"{self.n_samples} sample IDs. Give the samples with --sample FILE") from None
        if n != self.n_samples:
            raise InputError(f"{self.path}: the sample identifier block lists {n} samples; expected "
                             f"{self.n_samples} (the header's count). Give the samples with --sample FILE")
        return ids


def read_oxford_sample(path: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``(fids, iids, founder)`` of an Oxford ``.sample`` (``ID_1 ID_2 ...`` header, a types line)."""
    text = files.read_text(path, ".sample", advice="check --sample")
    fids, iids, founder = [], [], []
    seen: dict[str, int] = {}
    lines = [(i, ln.split()) for i, ln in enumerate(text.splitlines(), 1)]
    lines = [(i, f) for i, f in lines if f]
    if len(lines) < 2:
        raise InputError(f"{path}: not an Oxford .sample; expected a header line (ID_1 ID_2 ...) and a types "
                         f"line (0 0 ...), found {len(lines)} line(s)")
    head = [h.lower() for h in lines[0][1]]
    if head[0] not in ("id_1", "id"):
        raise InputError(f"{path}:{lines[0][0]}: not an Oxford .sample header; expected 'ID_1 ID_2 ...', found "
                         f"{' '.join(lines[0][1][:3])!r}")
    two = len(head) > 1 and head[1] == "id_2"
    icol = 1 if two else 0
    pcols = [head.index(c) if c in head else None for c in ("father", "mother")]
    scol = head.index("sex") if "sex" in head else None
    sex: list[int] = []
    for lineno, fields in lines[2:]:
        if len(fields) < len(head):
            raise InputError(f"{path}:{lineno}: expected {len(head)} fields as in the header, found {len(fields)}")
        iid = fields[icol]
        if iid in seen:
            raise InputError(f"{path}:{lineno}: duplicate sample ID {iid!r} (first on line {seen[iid]}); "
                             "sample IDs (ID_2) must be unique")
        seen[iid] = lineno
        fids.append(fields[0])
        iids.append(iid)
        founder.append(all(c is None or fields[c] in ("0", "NA") for c in pcols))
        sex.append(0 if scol is None else sex_code(fields[scol]))
    if not iids:
        raise InputError(f"{path}: no samples; expected one line per sample after the two header lines")
    return fids, iids, np.array(founder, dtype=bool), np.array(sex, dtype=np.int8)


def read_bgen_samples(path: str, sample: str | None, id_delim: str | None = None) -> Fam:
    """The samples of a BGEN: from ``sample`` (an Oxford .sample) if given, else embedded in the file
    (each ID the IID; with ``id_delim``, FID and IID joined by it, as plink2's --id-delim)."""
    hdr = BgenHeader(path)
    if sample:
        fids, iids, founder, sex = read_oxford_sample(sample)
        if len(iids) != hdr.n_samples:
            raise InputError(f"{sample}: {len(iids):,} samples, but {os.path.basename(path)} has "
                             f"{hdr.n_samples:,}; expected the .sample of this .bgen (one line per sample, in its "
                             "order, after the two header lines)")
        return Fam(path=sample, fids=tuple(fids), iids=tuple(iids), founder=founder, sex=sex)
    ids = hdr.embedded_ids()
    if ids is None:
        raise InputError(f"{path}: the BGEN has no sample identifiers; expected them in the file or a --sample "
                         "FILE (Oxford .sample)")
    dup = len(ids) - len(set(ids))
    if dup:
        raise InputError(f"{path}: {dup} duplicate sample ID(s) among the BGEN's sample identifiers; expected "
                         "unique IDs. Give unique IDs with --sample FILE")
    if id_delim is None:
        return Fam(path=path, fids=tuple(ids), iids=tuple(ids), founder=np.ones(len(ids), dtype=bool))
    parts = [i.split(id_delim) for i in ids]
    bad = next((k for k, f in enumerate(parts) if len(f) != 2 or not f[0] or not f[1]), None)
    if bad is not None:
        raise InputError(f"{path}: sample {bad + 1} has the ID {ids[bad]!r}; with --id-delim {id_delim} expected "
                         f"FID{id_delim}IID (one {id_delim!r} between two non-empty parts). Drop --id-delim if the "
                         "stored IDs are IIDs, or give the samples with --sample FILE")
    fid_t, iid_t = tuple(f[0] for f in parts), tuple(f[1] for f in parts)
    if len(set(iid_t)) != len(iid_t):
        seen: dict = {}
        first, again = next((seen[i], k) for k, i in enumerate(iid_t) if seen.setdefault(i, k) != k)
        raise InputError(f"{path}: samples {first + 1} and {again + 1} ({ids[first]!r}, {ids[again]!r}) share the IID "
                         f"{iid_t[again]!r} after --id-delim {id_delim}; expected unique IIDs (samples are matched to "
                         "the tables by IID)")
    return Fam(path=path, fids=fid_t, iids=iid_t, founder=np.ones(len(ids), dtype=bool))


# ------------------------------------------------------------------------------------------------
# the .bgi index


def bgi_path(path: str) -> str:
    return path + ".bgi"


def cached_bgi_path(path: str) -> str:
    """The private index of this version of ``path`` (its location, size and modification time),
    in :func:`files.cache_dir` ``("bgi")``."""
    return files.cached_path(path, "bgi", ".bgi")


def index_path(path: str, *, build: bool = True) -> str:
    """The bgenix index of ``path``: ``FILE.bgi`` beside it, else our private index of this version
    of the file (:func:`cached_bgi_path`), built here once when ``build`` (plink2 reads a BGEN
    without an index too). Executors call it as well: on a cluster whose nodes do not share the
    cache folder, each node builds its own copy once (point ``DASH_SPARK_CACHE`` at a shared folder,
    or create ``FILE.bgi`` with bgenix, to avoid that)."""
    beside = bgi_path(path)
    if files.exists(beside):
        return beside
    cached = cached_bgi_path(path)
    if os.path.exists(cached) or not build:
        return cached
    hdr = BgenHeader(path)
    log.info("bgen: %s has no .bgi; indexing its %s variants into %s (once; reused while the file is "
             "unchanged)", path, f"{hdr.n_variants:,}", os.path.dirname(cached))
    try:
        files.make_cache_dir("bgi")
        write_bgi(path, cached)
    except OSError as exc:
        raise InputError(f"{path}: no index beside it, and the private index cannot be written to "
                         f"{os.path.dirname(cached)} ({exc.strerror or exc}); set DASH_SPARK_CACHE to a writable "
                         f"folder, or create the index: bgenix -g {path} -index") from None
    return cached


_BGI_BYTES: dict = {}
_BGI_LOCK = threading.Lock()


def _connect(bgi: str) -> sqlite3.Connection:
    """A read-only SQLite connection to an index: the file itself, or for object storage its bytes
    in memory (fetched once per process and index version; no temporary file)."""
    if not files.is_uri(bgi):
        return sqlite3.connect(f"file:{files.local_path(bgi)}?mode=ro", uri=True)
    key = (bgi, *files.version(bgi))
    with _BGI_LOCK:
        if key not in _BGI_BYTES:
            if len(_BGI_BYTES) >= 2:
                _BGI_BYTES.pop(next(iter(_BGI_BYTES)))
            _BGI_BYTES[key] = files.read_bytes(bgi)
        data = _BGI_BYTES[key]
    con = sqlite3.connect(":memory:")
    con.deserialize(data)
    return con


def _bgi_rows(bgi: str, columns: str):
    if not files.exists(bgi):
        raise InputError(f"{bgi}: index not found; expected the bgenix index of the .bgen. Create it with bgenix "
                         f"-g {bgi[:-4]} -index (or python -m dash_spark.io.bgen {bgi[:-4]})")
    try:
        con = _connect(bgi)
        try:
            return con.execute(f"SELECT {columns} FROM Variant ORDER BY file_start_position").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise InputError(f"{bgi}: not a bgenix index ({exc}); expected an SQLite file with a Variant table. "
                         f"Re-create it with bgenix -g {bgi[:-4]} -index -clobber") from None


def _bgi_metadata(bgi: str):
    """``(file_size, first_1000_bytes)`` that bgenix recorded, or None (an index without Metadata)."""
    try:
        con = _connect(bgi)
        try:
            row = con.execute("SELECT file_size, first_1000_bytes FROM Metadata").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row


def read_bgi(path: str) -> tuple[Bim, np.ndarray]:
    """The variants of ``path`` from its index (:func:`index_path`) in file order, checked against
    the .bgen, and the records' byte offsets (m + 1: each start, then the end of the last)."""
    hdr = BgenHeader(path)
    bgi = index_path(path)
    if bgi == bgi_path(path):
        return _read_index(path, bgi, hdr)
    try:
        return _read_index(path, bgi, hdr)
    except InputError:  # our own index, damaged or of an earlier file: built again, once
        os.remove(bgi)
        return _read_index(path, index_path(path), hdr)


def _read_index(path: str, bgi: str, hdr: BgenHeader) -> tuple[Bim, np.ndarray]:
    rows = _bgi_rows(bgi, "chromosome, position, rsid, number_of_alleles, allele1, allele2, "
                          "file_start_position, size_in_bytes")
    fix = f"Re-create the index: bgenix -g {path} -index -clobber"
    recorded = _bgi_metadata(bgi)
    if recorded is not None:
        first = files.read_range(path, 0, 1000)
        if bytes(recorded[1]) != first:
            raise InputError(f"{bgi}: does not match {os.path.basename(path)}; expected the index of this file, found "
                             "one whose recorded first 1000 bytes differ from the file's (an index of another "
                             f"file). {fix}")
    if len(rows) != hdr.n_variants:
        raise InputError(f"{bgi}: does not match {os.path.basename(path)}; expected {hdr.n_variants:,} variants "
                         f"(the .bgen header's count), found {len(rows):,}. {fix}")
    if not rows:
        raise InputError(f"{path}: no variants; expected at least one")
    starts = np.array([r[6] for r in rows], dtype=np.int64)
    sizes = np.array([r[7] for r in rows], dtype=np.int64)
    ends = starts + sizes
    if starts[0] != hdr.first_variant or not np.array_equal(starts[1:], ends[:-1]):
        bad = 0 if starts[0] != hdr.first_variant else int(np.flatnonzero(starts[1:] != ends[:-1])[0]) + 1
        raise InputError(f"{bgi}: does not match {os.path.basename(path)}; expected variant records back to back "
                         f"from byte {hdr.first_variant:,}, found variant {bad + 1} at byte {int(starts[bad]):,}. {fix}")
    if ends[-1] > hdr.size:
        raise InputError(f"{path}: {hdr.size:,} bytes, but its index {os.path.basename(bgi)} lists records up to byte "
                         f"{int(ends[-1]):,}; the .bgen is truncated. Check that the copy is complete")
    if ends[-1] != hdr.size:
        raise InputError(f"{bgi}: does not match {os.path.basename(path)}; expected the records to end at the "
                         f"file's end ({hdr.size:,} bytes), found {int(ends[-1]):,}. {fix}")
    for i, r in enumerate(rows):
        if r[3] != 2:
            raise InputError(f"{path}: multiallelic variant {r[2]} ({r[0]}:{r[1]}, {r[3]} alleles; variant "
                             f"{i + 1}); expected 2 alleles. Split it into biallelic records or remove it "
                             "(e.g. plink2 --bgen FILE ref-first --max-alleles 2 --export bgen-1.2)")
    a1 = np.array([r[4] for r in rows], dtype=object)
    a2 = np.array([r[5] for r in rows], dtype=object)
    bim = Bim(path=bgi, chrom=np.array([str(r[0]) for r in rows], dtype=object),
              id=np.array([str(r[2]) for r in rows], dtype=object), pos=np.array([r[1] for r in rows], dtype=np.int64),
              alt=a2, ref=a1, line_offsets=np.zeros(len(rows) + 1, dtype=np.int64))
    return bim, np.append(starts, ends[-1])


def _walk_records(path: str, hdr: BgenHeader, every: float = 10.0):
    """``(start, record fields)`` of every record of ``path`` from front to back, read in windows of
    a few MiB (also from object storage: one request per window); a progress line every ``every``
    seconds."""
    window = max(1 << 20, min(8 << 20, files.read_chunk_bytes()))
    buf, at = b"", 0
    pos, last = hdr.first_variant, time.monotonic()
    for i in range(hdr.n_variants):
        need = 1 << 16  # the record's identifying fields, unless its IDs or alleles are longer
        while True:
            if pos + need > at + len(buf) and at + len(buf) < hdr.size:
                buf, at = files.read_range(path, pos, max(window, need)), pos
            try:
                rec = _record_meta(buf, hdr, path, pos, at=pos - at)
                break
            except _ShortRecord:
                if at + len(buf) >= hdr.size:
                    raise InputError(f"{path}: variant record at byte {pos:,}: the file ends inside it; the .bgen "
                                     "is truncated. Check that the copy is complete") from None
                need *= 16
        yield pos, rec
        pos += rec["size"]
        if time.monotonic() - last > every:
            last = time.monotonic()
            log.info("bgen: indexed %s of %s variants of %s", f"{i + 1:,}", f"{hdr.n_variants:,}", path)
    if pos > hdr.size:
        raise InputError(f"{path}: the last record ends at byte {pos:,}, after the file's end ({hdr.size:,} bytes); "
                         "the .bgen is truncated. Check that the copy is complete")


def write_bgi(path: str, out: str | None = None) -> str:
    """Write a bgenix index (its SQLite layout) of ``path`` to ``out`` (default ``path.bgi``) by
    walking the records; written to a temporary name, then renamed. Returns ``out``."""
    hdr = BgenHeader(path)
    out = out or bgi_path(files.local_path(path))
    tmp = f"{out}.tmp-{os.getpid()}-{threading.get_ident()}"
    rows = [(rec["chrom"], rec["pos"], rec["rsid"], len(rec["alleles"]), rec["alleles"][0],
             rec["alleles"][1] if len(rec["alleles"]) > 1 else None, start, rec["size"])
            for start, rec in _walk_records(path, hdr)]
    first = files.read_range(path, 0, 1000)
    mtime = files.version(path)[1] // 1_000_000_000
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("CREATE TABLE Metadata (filename TEXT NOT NULL, file_size INT NOT NULL, last_write_time INT "
                        "NOT NULL, first_1000_bytes BLOB NOT NULL, index_creation_time INT NOT NULL)")
            con.execute("CREATE TABLE Variant (chromosome TEXT NOT NULL, position INT NOT NULL, rsid TEXT NOT NULL, "
                        "number_of_alleles INT NOT NULL, allele1 TEXT NOT NULL, allele2 TEXT NULL, "
                        "file_start_position INT NOT NULL, size_in_bytes INT NOT NULL, PRIMARY KEY (chromosome, "
                        "position, rsid, allele1, allele2, file_start_position)) WITHOUT ROWID")
            con.execute("INSERT INTO Metadata VALUES (?, ?, ?, ?, ?)",
                        (os.path.basename(path), hdr.size, int(mtime), first, int(time.time())))
            con.executemany("INSERT INTO Variant VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.commit()
        finally:
            con.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


# ------------------------------------------------------------------------------------------------
# records


class _ShortRecord(InputError):
    """The buffer ends inside a record's identifying fields (read more, or the file is truncated)."""


def _record_meta(buf: bytes, hdr: BgenHeader, path: str, start: int, at: int = 0) -> dict:
    """Parse the identifying fields of the record that starts at ``buf[at]`` (file byte ``start``);
    ``data`` (where its genotype block starts) is relative to ``at``, ``size`` is the whole record's
    length. Raises :class:`_ShortRecord` when ``buf`` ends inside those fields."""
    where = f"{path}: variant record at byte {start:,}"
    try:
        p = at
        if hdr.layout == 1:
            p += 4  # the number of samples, repeated
        (ln,) = struct.unpack_from("<H", buf, p)
        varid = buf[p + 2 : p + 2 + ln]
        p += 2 + ln
        (ln,) = struct.unpack_from("<H", buf, p)
        rsid = buf[p + 2 : p + 2 + ln]
        p += 2 + ln
        (ln,) = struct.unpack_from("<H", buf, p)
        chrom = buf[p + 2 : p + 2 + ln]
        p += 2 + ln
        (vpos,) = struct.unpack_from("<I", buf, p)
        p += 4
        if hdr.layout == 1:
            k = 2
        else:
            (k,) = struct.unpack_from("<H", buf, p)
            p += 2
        alleles = []
        for _ in range(k):
            (la,) = struct.unpack_from("<I", buf, p)
            if p + 4 + la > len(buf):
                raise _ShortRecord(f"{where}: damaged or truncated; an allele runs past the end of the data")
            alleles.append(buf[p + 4 : p + 4 + la].decode("utf-8"))
            p += 4 + la
        if hdr.layout == 1 and hdr.compression == 0:
            c = 6 * hdr.n_samples
            p_data = p
        else:
            (c,) = struct.unpack_from("<I", buf, p)
            p += 4
            p_data = p
        return {"varid": varid.decode("utf-8"), "rsid": rsid.decode("utf-8"), "chrom": chrom.decode("utf-8"),
                "pos": int(vpos), "alleles": alleles, "data": p_data - at, "clen": int(c),
                "size": p_data - at + int(c)}
    except struct.error:
        raise _ShortRecord(f"{where}: damaged or truncated; expected a BGEN layout {hdr.layout} variant record. "
                           "Check that the copy is complete") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: damaged or truncated; expected a BGEN layout {hdr.layout} variant record. "
                         "Check that the copy is complete") from None


def _unpack_bits(data: bytes, offset: int, count: int, bits: int) -> np.ndarray:
    """``count`` little-endian ``bits``-bit unsigned integers from ``data[offset:]`` (as exact float64)."""
    if bits == 8:
        return np.frombuffer(data, np.uint8, count, offset).astype(np.float64)
    if bits == 16:
        return np.frombuffer(data, "<u2", count, offset).astype(np.float64)
    if bits == 32:
        return np.frombuffer(data, "<u4", count, offset).astype(np.float64)
    nbytes = (count * bits + 7) // 8
    raw = np.zeros(nbytes + 8, dtype=np.uint64)
    raw[:nbytes] = np.frombuffer(data, np.uint8, nbytes, offset)
    at = np.arange(count, dtype=np.int64) * bits
    byte, shift = at >> 3, (at & 7).astype(np.uint64)
    word = np.zeros(count, dtype=np.uint64)
    for k in range(5):
        word |= raw[byte + k] << np.uint64(8 * k)
    return ((word >> shift) & np.uint64((1 << bits) - 1)).astype(np.float64)


def _round_dosage(numer: np.ndarray, denom: int) -> np.ndarray:
    """``numer / denom`` ALT copies in units of 1/16384, rounded as plink2 2.00a3.5 rounds a BGEN's
    probabilities (exact integer arithmetic): up from a remainder of ``denom // 2 + 1`` (of
    ``denom``), one more than the nearest rounding needs. Checked against plink2's own import at 1,
    3, 5, 8, 12 and 16 bits (tests/test_dosage.py)."""
    # float64 is exact here: numer * 16384 < 2**48, and a quotient's distance to the next integer
    # (at least 1 / denom) is far above float64's rounding error
    q = np.floor((numer * DOSAGE_UNIT + max(denom // 2 - 1, 0)) / denom)
    return q / DOSAGE_UNIT


def decode_record(rec_bytes: bytes, hdr: BgenHeader, n: int, alt_first: bool, path: str, start: int):
    """``(meta, dosages)`` of one record: meta = (chrom, id, pos, a1, a2), dosages (n,) float64."""
    rec = _record_meta(rec_bytes, hdr, path, start)
    name = f"{path}: variant {rec['rsid']} ({rec['chrom']}:{rec['pos']}, record at byte {start:,})"
    if len(rec["alleles"]) != 2:
        raise InputError(f"{name}: {len(rec['alleles'])} alleles; expected 2. Split multiallelic variants or "
                         "remove them")
    body = rec_bytes[rec["data"] : rec["data"] + rec["clen"]]
    if len(body) != rec["clen"]:
        raise InputError(f"{name}: the record is cut short; expected {rec['clen']:,} bytes of genotype data, "
                         f"found {len(body):,}. The .bgen is truncated or damaged")
    try:
        if hdr.layout == 1:
            data = zlib.decompress(body) if hdr.compression else body
        elif hdr.compression == 0:
            data = body
        else:
            (d,) = struct.unpack_from("<I", body, 0)
            if hdr.compression == 1:
                data = zlib.decompress(body[4:])
            else:
                import pyarrow as pa

                data = pa.decompress(body[4:], decompressed_size=d, codec="zstd", asbytes=True)
            if len(data) != d:
                raise ValueError(f"{len(data)} bytes after decompression, expected {d}")
    except (zlib.error, ValueError, OSError, struct.error) as exc:
        raise InputError(f"{name}: cannot decompress the genotype data ({exc}); the .bgen is damaged") from None
    if hdr.layout == 1:
        if len(data) != 6 * n:
            raise InputError(f"{name}: {len(data):,} bytes of probabilities; expected {6 * n:,} (6 per sample)")
        p = np.frombuffer(data, "<u2").reshape(n, 3).astype(np.int64)
        total = p.sum(axis=1)
        numer = p[:, 1] + 2 * (p[:, 0] if alt_first else p[:, 2])
        # probabilities that do not sum to one are rescaled to sum to one
        safe = np.where(total > 0, total, 1)
        dos = ((numer * (2 * DOSAGE_UNIT) + safe) // (2 * safe)).astype(np.float64) / DOSAGE_UNIT
        dos[total == 0] = np.nan
    else:
        if len(data) < 10:
            raise InputError(f"{name}: genotype data too short; expected a layout 2 probability block")
        n_rec, _k, pmin, pmax = struct.unpack_from("<IHBB", data, 0)
        if n_rec != n:
            raise InputError(f"{name}: the record has {n_rec:,} samples; expected {n:,} (the header's count)")
        ploidy = np.frombuffer(data, np.uint8, n, 8)
        phased, bits = data[8 + n], data[9 + n]
        if phased not in (0, 1):
            raise InputError(f"{name}: phased flag {phased}; expected 0 or 1. The .bgen is damaged")
        missing = (ploidy & 0x80) != 0
        if pmin != 2 or pmax != 2:  # the smallest and largest ploidy of the record's samples
            raise InputError(f"{name}: ploidy {pmin}-{pmax}; expected 2 for every sample (haploid and "
                             "polyploid BGEN records, e.g. chrX in males, are not supported yet)")
        if not 1 <= bits <= 32:
            raise InputError(f"{name}: {bits} bits per probability; expected 1 to 32")
        need = 10 + n + (2 * n * bits + 7) // 8
        if len(data) < need:
            raise InputError(f"{name}: {len(data):,} bytes of genotype data; expected {need:,} for {n:,} samples "
                             f"at {bits} bits")
        v = _unpack_bits(data, 10 + n, 2 * n, bits).reshape(n, 2)
        denom = (1 << bits) - 1
        # plink2 rounds the second allele's dosage; with ref-last, ALT's is 2 minus it. Unphased: the
        # probabilities of genotypes 11 and 12; phased: of allele 1 on each of the two haplotypes
        dos = _round_dosage(2 * denom - (v[:, 0] + v[:, 1] if phased else 2 * v[:, 0] + v[:, 1]), denom)
        if alt_first:
            dos = 2.0 - dos
        dos[missing] = np.nan
    a = rec["alleles"]
    meta = (rec["chrom"], rec["rsid"], rec["pos"], a[0] if alt_first else a[1], a[1] if alt_first else a[0])
    return meta, dos


# ------------------------------------------------------------------------------------------------
# executor side: records of given variants

_CACHE: dict = {}
_LOCK = threading.Lock()


def _offsets(path: str) -> tuple[BgenHeader, np.ndarray]:
    """The header and record offsets of ``path`` (one copy per process and file version)."""
    key = (path, *files.version(path))
    with _LOCK:
        got = _CACHE.get(key)
        if got is None:
            rows = _bgi_rows(index_path(path), "file_start_position, size_in_bytes")
            starts = np.array([r[0] for r in rows], dtype=np.int64)
            end = int(rows[-1][0] + rows[-1][1]) if rows else 0
            got = (BgenHeader(path), np.append(starts, end))
            if len(_CACHE) >= 4:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = got
        return got


def read_bgen_rows(path: str, n_samples: int, variants: np.ndarray, ref: str):
    """Dosages [shape: (len(variants), n)] (NaN missing) and meta ``(chrom, id, pos, alt, ref)``."""
    hdr, offs = _offsets(path)
    alt_first = ref == "ref-last"
    variants = np.asarray(variants, dtype=np.int64)
    out = np.empty((len(variants), n_samples), dtype=np.float64)
    metas = []
    if len(variants) and (variants[0] < 0 or variants[-1] >= len(offs) - 1):
        raise InputError(f"{path}: variant {int(variants[-1]) + 1} requested, the index lists {len(offs) - 1}")
    for a in range(0, len(variants), _CHUNK):
        chunk = variants[a : a + _CHUNK]
        lo, hi = int(offs[chunk[0]]), int(offs[chunk[-1] + 1])
        buf = files.read_range(path, lo, hi - lo)
        if len(buf) != hi - lo:
            raise InputError(f"{path}: file ended at byte {lo + len(buf):,} while reading variants "
                             f"{int(chunk[0]) + 1}-{int(chunk[-1]) + 1}; the .bgen is truncated")
        for i, v in enumerate(chunk):
            s, e = int(offs[v]) - lo, int(offs[v + 1]) - lo
            meta, out[a + i] = decode_record(buf[s:e], hdr, n_samples, alt_first, path, int(offs[v]))
            metas.append(meta)
    cols = list(zip(*metas)) if metas else [(), (), (), (), ()]
    meta = (np.array(cols[0], dtype=object), np.array(cols[1], dtype=object), np.array(cols[2], dtype=np.int64),
            np.array(cols[3], dtype=object), np.array(cols[4], dtype=object))
    return out, meta


def check_bgen(path: str, n_samples: int, ref: str) -> None:
    """Decode the first and the last record (a layout this reader refuses fails before any task runs)."""
    hdr, offs = _offsets(path)
    m = len(offs) - 1
    read_bgen_rows(path, n_samples, np.unique([0, m - 1]), ref)
    del hdr


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a small command-line helper
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dash_spark.io.bgen FILE.bgen   (writes FILE.bgen.bgi)", file=sys.stderr)
        return 2
    try:
        print(write_bgi(args[0]))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["REF_MODES", "BgenHeader", "check_bgen", "decode_record", "read_bgen_rows", "read_bgen_samples",
           "read_bgi", "read_oxford_sample", "write_bgi"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
