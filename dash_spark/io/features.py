"""Real-valued features from Parquet (instead of a .bed): one row per feature.

Table: ``id`` (string), ``values`` (list<double>, one entry per sample in the order of the
sample-ID file, null or NaN for missing), optional ``chrom`` (string) and ``pos`` (integer).
The sample-ID file lists one IID per line (``FID IID`` lines and a ``#`` header are accepted,
as for ``--keep``). Executors read their own row ranges; the driver reads only the footer and the
small ``id``/``chrom``/``pos`` columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import os

from ..errors import InputError
from .plink import Bim


def _parquet_files(path: str) -> list[str]:
    """The Parquet file, or a directory's part files (as Spark writes them) in name order."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.endswith(".parquet") and not f.startswith((".", "_")))
    if not files:
        raise InputError(f"{path}: a directory without Parquet part files; expected the features as Parquet")
    return files


def _row_groups(path: str) -> list[tuple[pq.ParquetFile, int, int]]:
    """``(open file, row group, rows)`` of every row group of the table, in row order (each file
    opened once)."""
    out = []
    for f in _parquet_files(path):
        pf = pq.ParquetFile(f)
        md = pf.metadata
        out += [(pf, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
    return out


def read_feature_meta(path: str, n_samples: int) -> Bim:
    """Check the table's columns and the first row's length; read id/chrom/pos on the driver.

    Returns the features' metadata as a :class:`~dash_spark.io.plink.Bim` (REF/ALT are ``.``;
    there are no .bim lines, so the line offsets are zeros), which the scan plans like variants.
    """
    try:
        files = _parquet_files(path)
        pfs = [pq.ParquetFile(f) for f in files]
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: cannot read the features as Parquet ({exc})") from None
    pfs = [f for f in pfs if f.metadata.num_rows > 0] or pfs[:1]
    pf = pfs[0]
    names = pf.schema_arrow.names
    for col in ("id", "values"):
        if col not in names:
            raise InputError(f"{path}: features need columns 'id' and 'values'; found {', '.join(names)}")
    vtype = pf.schema_arrow.field("values").type
    if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype)) or not pa.types.is_floating(vtype.value_type):
        raise InputError(f"{path}: column 'values' must be list<double>; found {vtype}")
    m = sum(f.metadata.num_rows for f in pfs)
    if m == 0:
        raise InputError(f"{path}: no features (0 rows)")
    first = next(pf.iter_batches(batch_size=1, columns=["values"])).column(0)[0].values
    if len(first) != n_samples:
        raise InputError(f"{path}: row 1 has {len(first)} values, but the sample-ID file lists {n_samples} "
                         "samples; each row needs one value per listed sample, in that order")
    cols = [c for c in ("id", "chrom", "pos") if c in names]
    meta = pa.concat_tables([f.read(columns=cols) for f in pfs])
    ids = np.array(meta.column("id").to_pylist(), dtype=object)
    chrom = np.array(meta.column("chrom").to_pylist(), dtype=object) if "chrom" in cols else np.full(m, "NA", dtype=object)
    pos = np.asarray(meta.column("pos").to_numpy(zero_copy_only=False), dtype=np.int64) if "pos" in cols else np.arange(1, m + 1, dtype=np.int64)
    dot = np.full(m, ".", dtype=object)
    return Bim(path=path, chrom=chrom, id=ids, pos=pos, alt=dot, ref=dot.copy(),
               line_offsets=np.zeros(m + 1, dtype=np.int64))


def read_feature_rows(path: str, n_samples: int, rows: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Values of the given sorted row indices as float64 [shape: (len(rows), n)], NaN for missing,
    and their metadata ``(chrom, id, pos, alt, ref)`` as the .bim reader gives it."""
    rows = np.asarray(rows, dtype=np.int64)
    rgs = _row_groups(path)
    starts = np.cumsum([0] + [n for _, _, n in rgs])
    gidx = np.searchsorted(starts, rows, side="right") - 1
    groups = sorted(set(gidx.tolist()))
    names = rgs[groups[0]][0].schema_arrow.names
    cols = [c for c in ("values", "id", "chrom", "pos") if c in names]
    table = pa.concat_tables([rgs[g][0].read_row_group(rgs[g][1], columns=cols) for g in groups])
    # the groups read are concatenated in order: where each one starts in ``table``
    first_row = dict(zip(groups, np.cumsum([0] + [rgs[g][2] for g in groups[:-1]])))
    local = np.array([first_row[g] for g in gidx], dtype=np.int64) + (rows - starts[gidx])
    table = table.take(pa.array(local))
    values = table.column("values").combine_chunks()
    lengths = values.value_lengths().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != n_samples)
    if len(bad):
        raise InputError(f"{path}: row {int(rows[bad[0]]) + 1} has {int(lengths[bad[0]])} values; expected {n_samples}")
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    m = len(rows)
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    chrom = np.array(table.column("chrom").to_pylist(), dtype=object) if "chrom" in cols else np.full(m, "NA", dtype=object)
    pos = (np.asarray(table.column("pos").to_numpy(zero_copy_only=False), dtype=np.int64) if "pos" in cols
           else rows + 1)
    dot = np.full(m, ".", dtype=object)
    return flat.reshape(m, n_samples), (chrom, ids, pos, dot, dot.copy())
