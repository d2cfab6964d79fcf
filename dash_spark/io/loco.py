"""REGENIE step-1 output: the ``--pred`` list and its leave-one-chromosome-out (``.loco``) files.

``FILE_pred.list`` has one line per phenotype: ``<phenotype> <path of its .loco file>`` (``.loco.gz``
as REGENIE's ``--gz`` writes it is read as well; a relative
path is taken relative to the list's folder when it does not exist relative to the working
directory, so a moved step-1 folder still works). A ``.loco`` file has a header ``FID_IID
<FID>_<IID> ...`` and one row per chromosome, ``<chromosome> <prediction> ...`` (chromosomes 1 to
23 in REGENIE's numbering: 23 is X). The prediction of chromosome ``c`` is what the other
chromosomes predict of the phenotype (on the scale of the phenotype as REGENIE's step 1 used it:
residualized on the covariates and standardized).

Numpy only (runs on the driver).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, not_utf8_error
from . import files

#: plink2/REGENIE chromosome names -> REGENIE's number (its .loco rows)
_CHROM_NUMBERS = {**{str(c): c for c in range(1, 24)}, "X": 23, "XY": 23, "PAR1": 23, "PAR2": 23}


def loco_chromosome(name: str) -> int | None:
    """REGENIE's chromosome number (1-23; X, XY and the PARs are 23) of a .bim/.pvar chromosome name,
    ``None`` for one REGENIE has no prediction row for (Y, MT, contigs)."""
    key = name.strip()
    if key[:3].lower() == "chr":
        key = key[3:]
    return _CHROM_NUMBERS.get(key.upper())


@dataclass(frozen=True)
class Loco:
    """One phenotype's predictions for the .fam's samples: ``values[c]`` [shape: (n,)] for each
    chromosome number ``c`` in the file, NaN for samples not in the file (``present`` False)."""

    path: str
    present: np.ndarray
    values: dict[int, np.ndarray]

    def offset(self, chrom: int, chrom_name: str) -> np.ndarray:
        if chrom not in self.values:
            raise InputError(f"{self.path}: no prediction row for chromosome {chrom_name} (REGENIE number {chrom}); "
                             "run REGENIE's step 1 on the chromosomes you test, or choose the chromosomes with --chr")
        return self.values[chrom]


def read_pred_list(path: str, phenotypes) -> dict[str, str]:
    """``{phenotype: .loco path}`` for every phenotype in ``phenotypes`` (each must be listed)."""
    try:
        data = files.read_bytes(path)
    except OSError as exc:
        raise InputError(f"--pred {path}: cannot read the prediction list ({exc.strerror or exc}); "
                         "give the _pred.list file REGENIE's step 1 wrote") from None
    out: dict[str, str] = {}
    base = path.rsplit("/", 1)[0] if files.is_uri(path) else os.path.dirname(os.path.abspath(path))
    for lineno, line in enumerate(_text(_gunzip(data, path), path, "prediction list").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise InputError(f"{path}: line {lineno}: expected '<phenotype> <.loco file>' (2 fields), "
                             f"found {len(fields)}")
        name, loco = fields
        if name in out:
            raise InputError(f"{path}: line {lineno}: phenotype {name!r} is listed twice")
        if not files.is_uri(loco) and not os.path.isabs(loco) and not files.exists(loco):
            loco = f"{base}/{loco}" if files.is_uri(base) else os.path.join(base, loco)
        out[name] = loco
    missing = [p for p in phenotypes if p not in out]
    if missing:
        raise InputError(f"{path}: no .loco file for phenotype(s) {', '.join(map(repr, missing))}; list each "
                         "analysed phenotype (or choose them with --pheno-name)")
    return out


def read_loco(path: str, sample_keys, analysed: np.ndarray, phenotype: str) -> Loco:
    """One ``.loco`` file matched to the samples whose ``FID_IID`` keys are ``sample_keys`` (.fam
    order). Samples of the file that are not in the .fam are ignored; a sample this phenotype
    analyses (``analysed``) listed twice, or with a prediction that is not a number, is an error
    naming the file and the sample (REGENIE writes ``NA`` for the samples it masked for the trait)."""
    try:
        data = files.read_bytes(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the .loco file of phenotype {phenotype!r} "
                         f"({exc.strerror or exc}); check the --pred list") from None
    split = [ln.split() for ln in _text(_gunzip(data, path), path, ".loco file").splitlines()]
    lines = [(i, f) for i, f in enumerate(split, 1) if f]
    if not lines or lines[0][1][0] != "FID_IID":
        raise InputError(f"{path}: line 1: expected a header starting with FID_IID (REGENIE's .loco format)")
    header = lines[0][1][1:]
    index = {k: i for i, k in enumerate(sample_keys)}
    n = len(sample_keys)
    cols = np.full(len(header), -1, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    for j, key in enumerate(header):
        i = index.get(key, -1)
        if i < 0:
            continue
        if seen[i]:
            if analysed[i]:
                raise InputError(f"{path}: sample {key} appears twice in the header; each sample must have "
                                 "one column of predictions")
            continue
        seen[i] = True
        cols[j] = i
    use = cols >= 0
    values: dict[int, np.ndarray] = {}
    for lineno, fields in lines[1:]:
        if len(fields) != len(header) + 1:
            raise InputError(f"{path}: line {lineno}: expected {len(header) + 1} fields (a chromosome and one "
                             f"prediction per header sample), found {len(fields)}")
        chrom = loco_chromosome(fields[0])
        if chrom is None or chrom in values:
            what = "is listed twice" if chrom is not None else "is not a chromosome number 1-23"
            raise InputError(f"{path}: line {lineno}: chromosome {fields[0]!r} {what}")
        row = np.full(n, np.nan)
        try:
            vals = np.array([float(v) for v in np.asarray(fields[1:], dtype=object)[use]])
        except ValueError:
            vals = None
        if vals is None or not np.isfinite(vals).all():
            bad = [header[j] for j in np.flatnonzero(use)
                   if not _finite(fields[1 + j]) and analysed[cols[j]]]
            if bad:
                raise InputError(f"{path}: line {lineno} (chromosome {fields[0]}): sample {bad[0]} has prediction "
                                 f"{fields[1 + header.index(bad[0])]!r}; expected a number for every analysed "
                                 "sample (rerun REGENIE's step 1, or remove the sample)")
            vals = np.array([float(fields[1 + j]) if _finite(fields[1 + j]) else np.nan for j in np.flatnonzero(use)])
        row[cols[use]] = vals
        values[chrom] = row
    if not values:
        raise InputError(f"{path}: no prediction rows after the header")
    return Loco(path=path, present=seen, values=values)


def _finite(token: str) -> bool:
    try:
        return bool(np.isfinite(float(token)))
    except ValueError:
        return False


def _gunzip(data: bytes, path: str) -> bytes:
    """The file's bytes, decompressed when it is gzip (REGENIE's step 1 with ``--gz`` writes
    ``*.loco.gz``, and its ``_pred.list`` names them)."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: a damaged gzip file ({exc}); copy it again from REGENIE's step-1 output") from None


def _text(data: bytes, path: str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, what, data=data, exc=exc) from None
