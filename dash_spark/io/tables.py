"""Read plink2-style phenotype, covariate and sample-ID files, and line them up with a .fam.

File layout (``--pheno`` / ``--covar``)
---------------------------------------
* The first non-blank line is the header. It must start with ``FID IID`` or ``IID``; the
  names are case-insensitive and a single leading ``#`` is optional, so ``#FID IID``,
  ``FID IID``, ``#IID`` and ``IID`` are all accepted. Headerless files are rejected (no
  guessing). plink2's optional ``SID`` column right after ``IID`` is rejected: samples are
  keyed on IID alone.
* Fields are separated by tabs and/or runs of spaces (``str.split()``). Blank lines are
  skipped everywhere. Every non-blank line after the header is a data row, including lines
  that start with ``#``; each row must have exactly as many fields as the header.
* Missing values: ``NA`` and ``NaN`` in any letter case (``na``, ``nan``, ``NAN`` ...), and
  any token that parses to a float NaN (``-nan``). In phenotype files (``kind="pheno"``) any
  value numerically equal to -9 (``-9``, ``-9.0``, ``-9.00``) is missing too; in covariate
  files -9 is an ordinary number. Missing cells become NaN.
* Numbers are parsed like Python's ``float()``; ``inf``/``-inf`` (or overflow such as
  ``1e999``) is an error.
* Covariate columns (``kind="covar"``) whose non-missing cells are all non-numeric are
  categorical and dummy-coded: levels are sorted lexicographically (Python string order),
  the first is the reference and gets no column, every other level ``L`` of column ``c``
  gets a 0/1 column named ``c=L`` placed where ``c`` was. Rows missing ``c`` are NaN in all
  of its dummy columns. A column mixing numeric and non-numeric cells is an error, as is
  any non-numeric cell in a phenotype file.
* IIDs must be unique within a file; column names must be unique within the header.

Every error names the file and the 1-based line number as in the file, and follows the
project message shape ``<file>:<line>: <what>; expected <x>, found <y>. <fix>``.
Nothing here logs cell values; log lines carry counts only.
"""

from __future__ import annotations

import gzip
import io
import itertools
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from dash_spark.errors import ConfigError, InputError, ModelError, did_you_mean, not_utf8_error

from . import files

__all__ = [
    "MAX_CATEGORY_LEVELS",
    "SampleTable",
    "match_samples",
    "read_sample_ids",
    "read_sample_table",
]

log = logging.getLogger(__name__)

#: A categorical covariate with more levels than this is rejected (it is most likely an ID
#: column, and its dummy matrix would be n_samples x n_levels floats).
MAX_CATEGORY_LEVELS = 256

_KINDS = {"pheno": ("phenotype", "--pheno"), "covar": ("covariate", "--covar")}


def _case_variants(word: str) -> frozenset[str]:
    return frozenset(
        "".join(chars) for chars in itertools.product(*((c.lower(), c.upper()) for c in word))
    )


#: Tokens read as missing in both phenotype and covariate files (case-insensitive NA / NaN).
_MISSING_TOKENS = _case_variants("na") | _case_variants("nan")


@dataclass(frozen=True, eq=False)
class SampleTable:
    """One phenotype or covariate file after column selection and dummy coding.

    Attributes:
        path: the file as given to the reader (used in messages and as a key by
            :func:`match_samples`).
        iids: sample IDs, one per data row, in file order; length ``n_rows``; unique.
        fids: family IDs parallel to ``iids`` (length ``n_rows``), or ``None`` when the
            header has no FID column.
        names: output column names, length ``n_cols``: the selected columns in selection
            order, with each categorical column replaced in place by its dummy columns
            ``<col>=<level>``.
        values: float64 array of shape ``(n_rows, n_cols)``; row ``i`` belongs to
            ``iids[i]``, column ``j`` to ``names[j]``; NaN marks a missing value. The reader
            returns it read-only.
        categorical: names of the original columns that were dummy-coded (empty if none).

    Equality is identity (``eq=False``): the array makes value equality ill-defined.
    """

    path: str
    iids: tuple[str, ...]
    fids: tuple[str, ...] | None
    names: tuple[str, ...]
    values: np.ndarray
    categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n_rows, n_cols = len(self.iids), len(self.names)
        if self.values.shape != (n_rows, n_cols):
            raise ValueError(
                f"SampleTable({self.path!r}): values has shape {self.values.shape}; "
                f"expected ({n_rows}, {n_cols}) from iids and names"
            )
        if self.fids is not None and len(self.fids) != n_rows:
            raise ValueError(
                f"SampleTable({self.path!r}): {len(self.fids)} fids for {n_rows} iids"
            )


# ---------------------------------------------------------------------------------------
# file access


def _open_text(path: str, what: str):
    """Open ``path`` for text reading (gzip when it ends in .gz); InputError when it cannot."""
    try:
        if files.is_uri(path):  # object storage: a table is small, read it whole
            data = files.read_bytes(path)
            if str(path).endswith(".gz"):
                data = gzip.decompress(data)
            try:
                return io.StringIO(data.decode("utf-8-sig"))
            except UnicodeDecodeError as exc:
                raise not_utf8_error(path, what, data=data, exc=exc) from None
        if str(path).endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8-sig")
        return open(path, encoding="utf-8-sig")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(
            f"{path}: cannot open the {what} ({reason}); expected a readable text file, "
            f"found none at this path. Check the path and its permissions."
        ) from None


def _numbered_lines(path: str, what: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, tokens)`` for every non-blank line (1-based line numbers)."""
    handle = _open_text(path, what)
    try:
        with handle:
            for lineno, line in enumerate(handle, start=1):
                tokens = line.split()
                if tokens:
                    yield lineno, tokens
    except UnicodeDecodeError:
        raise not_utf8_error(path, what) from None
    except (OSError, EOFError) as exc:
        raise InputError(
            f"{path}: cannot read the {what} ({type(exc).__name__}: {exc}); expected a "
            f"UTF-8 text file (optionally gzip-compressed), found unreadable content. "
            f"Check that the file is plain text."
        ) from None


# ---------------------------------------------------------------------------------------
# header


def _parse_header(path: str, lineno: int, tokens: list[str], what: str) -> tuple[bool, int]:
    """Return ``(has_fid, n_id_columns)`` for a pheno/covar header line."""
    first = tokens[0][1:] if tokens[0].startswith("#") else tokens[0]
    first = first.upper()
    second = tokens[1].upper() if len(tokens) > 1 else None
    if first == "FID" and second == "IID":
        has_fid, n_id = True, 2
    elif first == "IID":
        has_fid, n_id = False, 1
    else:
        found = " ".join(tokens[:2])
        raise InputError(
            f"{path}:{lineno}: the header must start with '#FID IID' or 'IID' (the '#' is "
            f"optional, case does not matter); expected a header line, found {found!r}. "
            f"Add a header such as '#FID IID <column names>'; files without a header "
            f"are not accepted."
        )
    if len(tokens) > n_id and tokens[n_id].upper() == "SID":
        raise InputError(
            f"{path}:{lineno}: column {tokens[n_id]!r} after IID is not supported; expected "
            f"{what} columns after IID, found a SID column. Remove the SID column: "
            f"samples are matched on IID alone."
        )
    if len(tokens) == n_id:
        raise InputError(
            f"{path}:{lineno}: the header has no {what} columns after the ID columns; "
            f"expected at least 1, found 0. Add the {what} columns to the file."
        )
    # ID column names compare case-insensitively (and without the '#'), data columns exactly.
    id_names = ["FID", "IID"][2 - n_id :]
    seen: dict[str, int] = {name: col for col, name in enumerate(id_names, start=1)}
    for col, name in enumerate(tokens[n_id:], start=n_id + 1):
        key = name.upper() if name.upper() in id_names else name
        if key in seen:
            raise InputError(
                f"{path}:{lineno}: column name {name!r} appears twice in the header "
                f"(columns {seen[key]} and {col}); expected unique column names, found a "
                f"duplicate. Rename or remove one of the two columns."
            )
        seen[key] = col
    return has_fid, n_id


def _select(
    path: str, lineno: int, columns: list[str], names: Sequence[str] | None, kind: str
) -> list[int]:
    """Indices into ``columns`` of the requested ``names`` (all columns when None)."""
    if names is None:
        return list(range(len(columns)))
    if isinstance(names, str):
        raise ConfigError(
            f"--{kind}-name: names must be a list of column names; expected a list, found "
            f"the string {names!r}. Split comma-separated names before calling."
        )
    if len(names) == 0:
        raise ConfigError(
            f"{path}:{lineno}: --{kind}-name selects no columns; expected at least 1 "
            f"column name, found none. Give one or more of the header's column names."
        )
    index = {name: i for i, name in enumerate(columns)}
    picked: list[int] = []
    for name in names:
        if name not in index:
            shown = ", ".join(repr(c) for c in columns[:20])
            if len(columns) > 20:
                shown += f", ... ({len(columns)} columns in all)"
            raise ConfigError(
                f"{path}:{lineno}: --{kind}-name column {name!r} is not in the header; "
                f"expected one of the file's columns, found {name!r}."
                f"{did_you_mean(name, columns)} Available columns: {shown}."
            )
        if index[name] in picked:
            raise ConfigError(
                f"{path}:{lineno}: --{kind}-name lists column {name!r} twice; expected each "
                f"name once, found a repeat. Remove the repeated name."
            )
        picked.append(index[name])
    return picked


# ---------------------------------------------------------------------------------------
# column conversion


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _numeric_column_arrow(tokens: list[str]) -> np.ndarray | None:
    """:func:`_numeric_column` by Arrow's string-to-float cast (~10x faster; 1,000 phenotype
    columns of 10,000 samples took 13 s in Python). Arrow refuses some tokens Python's float()
    reads (``1_0``, non-ASCII digits) and reads none that float() refuses, to the same value:
    ``None`` when it refuses any, and the caller reads the column as before."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        cells = pa.array(tokens, type=pa.string())
        missing = pc.is_in(cells, value_set=pa.array(sorted(_MISSING_TOKENS), type=pa.string()))
        values = pc.cast(pc.if_else(missing, pa.scalar("nan"), cells), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return np.array(values.to_numpy(zero_copy_only=False), dtype=np.float64)  # a writable copy


def _numeric_column(tokens: list[str]) -> np.ndarray | None:
    """Float64 values with NaN for missing tokens, or None if any cell is not a number."""
    fast = _numeric_column_arrow(tokens)
    if fast is not None:
        return fast
    cleaned = ["nan" if t in _MISSING_TOKENS else t for t in tokens]
    try:
        return np.array(cleaned, dtype=np.float64)
    except ValueError:
        pass
    try:  # Python's float() decides what a number is; numpy agrees today, this keeps it so.
        return np.array([float(t) for t in cleaned], dtype=np.float64)
    except ValueError:
        return None


def _tab_table(path: str, header: list[str], n_id: int, picked: list[int], kind: str):
    """The fast path of :func:`read_sample_table` for a tab-separated file whose every selected
    cell is a number or a missing token and whose IIDs are unique: Arrow's C++ reader parses it
    (1,000 phenotype columns of 10,000 samples: about 0.3 s instead of 2 s). Returns the
    table's parts, or None for anything else (spaces, ragged rows, categorical or bad cells,
    duplicate IDs, a non-finite value): the line-by-line reader then reads it and names the
    line of any error."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        with _open_text(path, "table") as fh:
            first = fh.readline().rstrip("\r\n")
    except (InputError, OSError, UnicodeDecodeError, EOFError):
        return None
    if first.split("\t") != header:
        return None
    names = [f"c{i}" for i in range(len(header))]
    ids = [names[i] for i in range(n_id)]
    data = [names[n_id + j] for j in picked]
    types = {n: pa.string() for n in ids}
    types.update({n: pa.float64() for n in data})  # Arrow's C++ string-to-float, as _numeric_column_arrow
    try:
        stream = pa.input_stream(path, compression="gzip" if path.endswith(".gz") else None)
        tbl = pcsv.read_csv(
            stream,
            read_options=pcsv.ReadOptions(skip_rows=1, column_names=names),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                            escape_char=False, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(column_types=types, include_columns=ids + data,
                                                null_values=sorted(_MISSING_TOKENS), strings_can_be_null=False,
                                                quoted_strings_can_be_null=False))
    except (pa.ArrowException, OSError, ValueError):
        return None
    n_rows = tbl.num_rows
    iids = tbl.column(names[n_id - 1]).to_pylist()
    if n_rows == 0 or len(set(iids)) != n_rows or "" in iids:
        return None
    fids = tbl.column(names[0]).to_pylist() if n_id == 2 else None
    values = np.empty((n_rows, len(data)))
    for c, name in enumerate(data):
        values[:, c] = tbl.column(name).to_numpy(zero_copy_only=False)  # nulls (missing tokens) -> NaN
    if np.isinf(values).any():
        return None
    if kind == "pheno":
        values[values == -9.0] = np.nan
    n_missing = int(np.isnan(values).sum())
    out_names = [header[n_id + j] for j in picked]
    return iids, fids, out_names, [np.ascontiguousarray(values)], [], 0, n_missing, 1, n_rows


def _categorical_column(
    path: str, header_line: int, name: str, tokens: list[str]
) -> tuple[list[str], np.ndarray]:
    """Dummy-code a column of category labels: (dummy names, float64 (n_rows, n_levels-1))."""
    levels = sorted({t for t in tokens if t not in _MISSING_TOKENS})
    if len(levels) == 1:
        raise ModelError(
            f"{path}:{header_line}: column {name!r} has a single level {levels[0]!r}; "
            f"expected at least 2 levels in a categorical covariate, found 1. A constant "
            f"covariate is collinear with the intercept; remove it with --covar-name."
        )
    if len(levels) > MAX_CATEGORY_LEVELS:
        raise InputError(
            f"{path}:{header_line}: categorical column {name!r} has {len(levels)} levels; "
            f"expected at most {MAX_CATEGORY_LEVELS}, found {len(levels)}. If it is an ID "
            f"or free-text column, leave it out with --covar-name."
        )
    code_of = {level: i for i, level in enumerate(levels)}
    codes = np.fromiter((code_of.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
    missing = codes < 0
    dummies = (codes[:, None] == np.arange(1, len(levels))[None, :]).astype(np.float64)
    dummies[missing, :] = np.nan
    return [f"{name}={level}" for level in levels[1:]], dummies


def _mixed_column_error(
    path: str, linenos: list[int], name: str, tokens: list[str], kind: str
) -> InputError:
    """Build the error for a column that holds non-numeric cells where numbers are needed."""
    present = [(i, t) for i, t in enumerate(tokens) if t not in _MISSING_TOKENS]
    numeric = [(i, t) for i, t in present if _is_number(t)]
    text = [(i, t) for i, t in present if not _is_number(t)]
    if kind == "pheno":
        i, t = text[0]
        return InputError(
            f"{path}:{linenos[i]}: non-numeric value {t!r} in phenotype column {name!r}; "
            f"expected a number, NA or -9, found {t!r}. Phenotypes must be numeric; write "
            f"missing values as NA or -9."
        )
    if len(numeric) >= len(text):
        i, t = text[0]
        return InputError(
            f"{path}:{linenos[i]}: non-numeric value {t!r} in numeric column {name!r} "
            f"({len(numeric)} of {len(present)} non-missing values are numbers); expected a "
            f"number or NA, found {t!r}. Fix the value, or write NA if it is missing."
        )
    i, t = numeric[0]
    hint = (
        " In covariate files -9 is a number; write missing values as NA."
        if float(t) == -9.0
        else ""
    )
    return InputError(
        f"{path}:{linenos[i]}: numeric value {t!r} in column {name!r}, which looks "
        f"categorical ({len(text)} of {len(present)} non-missing values are not numbers); "
        f"expected a category label or NA, found {t!r}. Give every row of a categorical "
        f"column a label that is not a number (e.g. '{name}_{t}').{hint}"
    )


# ---------------------------------------------------------------------------------------
# public readers


def read_sample_table(
    path: str, *, kind: str, names: Sequence[str] | None = None
) -> SampleTable:
    """Read a plink2-style phenotype (``kind="pheno"``) or covariate (``kind="covar"``) file.

    Args:
        path: the file; a name ending in ``.gz`` is read as gzip-compressed text.
        kind: ``"pheno"`` (missing = NA/NaN any case, or any value equal to -9; every cell
            must be numeric) or ``"covar"`` (missing = NA/NaN any case; -9 is a number;
            all-non-numeric columns are dummy-coded, see the module docstring).
        names: columns to keep, in the order wanted (plink2's ``--pheno-name`` /
            ``--covar-name`` after splitting on commas); ``None`` keeps all data columns
            in file order. Names are case-sensitive. Unselected columns are not parsed.

    Returns:
        A :class:`SampleTable` with ``values`` of shape ``(n_rows, n_cols)`` (float64, NaN
        for missing), rows in file order.

    Raises:
        InputError: unreadable file, bad header, SID column, duplicate column name, wrong
            field count, duplicate IID, no data rows, non-finite value, non-numeric value
            in a phenotype or numeric covariate column, numeric value in a categorical
            column, more than ``MAX_CATEGORY_LEVELS`` levels.
        ConfigError: ``kind`` not pheno/covar; a name in ``names`` not in the header
            (with a did-you-mean hint and the available columns), repeated or empty names.
        ModelError: a categorical covariate with a single level.
    """
    if kind not in _KINDS:
        raise ConfigError(
            f"read_sample_table: kind {kind!r} is not supported; expected 'pheno' or "
            f"'covar', found {kind!r}.{did_you_mean(kind, list(_KINDS))}"
        )
    what, option = _KINDS[kind]
    path = str(path)
    lines = _numbered_lines(path, f"{what} file ({option})")

    first = next(lines, None)
    if first is None:
        raise InputError(
            f"{path}:1: the {what} file is empty; expected a header line starting with "
            f"'#FID IID' or 'IID', found no non-blank lines. Check that {option} points "
            f"at the right file."
        )
    header_line, header = first
    has_fid, n_id = _parse_header(path, header_line, header, what)
    n_fields = len(header)
    columns = header[n_id:]
    picked = _select(path, header_line, columns, names, kind)
    fast = _tab_table(path, header, n_id, picked, kind) if header_line == 1 else None
    if fast is not None:
        return _table(path, what, columns, picked, *fast)

    flat: list[str] = []
    linenos: list[int] = []
    for lineno, tokens in lines:
        if len(tokens) != n_fields:
            raise InputError(
                f"{path}:{lineno}: wrong number of fields; expected {n_fields} (as in the "
                f"header on line {header_line}), found {len(tokens)}. Give every row one "
                f"value per header column, with NA for missing values."
            )
        flat.extend(tokens)
        linenos.append(lineno)
    n_rows = len(linenos)
    if n_rows == 0:
        raise InputError(
            f"{path}:{header_line}: no data rows after the header; expected at least 1 "
            f"sample row, found 0. Check that {option} points at the right file."
        )

    iids = flat[n_id - 1 :: n_fields]
    fids = flat[0::n_fields] if has_fid else None
    row_of: dict[str, int] = {}
    for row, iid in enumerate(iids):
        earlier = row_of.setdefault(iid, row)
        if earlier != row:
            raise InputError(
                f"{path}:{linenos[row]}: duplicate IID {iid!r} (first on line "
                f"{linenos[earlier]}); expected each IID once, found it on lines "
                f"{linenos[earlier]} and {linenos[row]}. Remove or rename one of the rows."
            )

    out_names: list[str] = []
    blocks: list[np.ndarray] = []
    categorical: list[str] = []
    n_dummy = 0
    n_missing = 0
    for j in picked:
        name = columns[j]
        tokens = flat[n_id + j :: n_fields]
        col = _numeric_column(tokens)
        if col is None:
            if kind == "covar" and not any(
                _is_number(t) for t in tokens if t not in _MISSING_TOKENS
            ):
                dummy_names, dummies = _categorical_column(path, header_line, name, tokens)
                out_names.extend(dummy_names)
                blocks.append(dummies)
                categorical.append(name)
                n_dummy += len(dummy_names)
                n_missing += int(np.isnan(dummies[:, 0]).sum())
                continue
            raise _mixed_column_error(path, linenos, name, tokens, kind)
        bad = np.flatnonzero(np.isinf(col))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{path}:{linenos[i]}: non-finite value {tokens[i]!r} in column {name!r}; "
                f"expected a finite number or NA, found {tokens[i]!r}. Replace it with a "
                f"finite value, or NA if it is missing."
            )
        if kind == "pheno":
            col[col == -9.0] = np.nan
        n_missing += int(np.isnan(col).sum())
        out_names.append(name)
        blocks.append(col[:, None])

    return _table(path, what, columns, picked, iids, fids, out_names, blocks, categorical, n_dummy, n_missing,
                  header_line, n_rows)


def _table(path: str, what: str, columns: list[str], picked: list[int], iids, fids, out_names, blocks,
           categorical, n_dummy: int, n_missing: int, header_line: int, n_rows: int) -> SampleTable:
    """The :class:`SampleTable` of a read file's selected columns (names checked, the log line)."""
    seen: set[str] = set()
    for name in out_names:
        if name in seen:
            raise InputError(
                f"{path}:{header_line}: dummy column {name!r} clashes with another column "
                f"of the same name; expected unique column names after dummy coding, found "
                f"{name!r} twice. Rename the column or the category level."
            )
        seen.add(name)

    values = np.hstack(blocks) if blocks else np.empty((n_rows, 0))
    values.flags.writeable = False
    log.info(
        "%s: read %d samples x %d %s columns (%d selected of %d; %d categorical -> %d "
        "dummy columns); %d missing cells",
        path,
        n_rows,
        len(out_names),
        what,
        len(picked),
        len(columns),
        len(categorical),
        n_dummy,
        n_missing,
    )
    return SampleTable(
        path=path,
        iids=tuple(iids),
        fids=tuple(fids) if fids is not None else None,
        names=tuple(out_names),
        values=values,
        categorical=tuple(categorical),
    )


def read_sample_ids(path: str) -> tuple[str, ...]:
    """Read a plink2 ``--keep`` / ``--remove`` style sample list and return its IIDs.

    Layout: one sample per line, either ``IID`` alone or ``FID IID ...`` (then the second
    field is the IID and any further fields are ignored, so a .fam or .psam-like file
    works). An optional header is the first non-blank line when it starts with ``#``, or
    when its first field is ``FID`` or ``IID`` (any case); a header starting with ``IID``
    / ``#IID`` means one ID column (IID first, further fields ignored), any other header
    means FID then IID. Without a header the first data line decides: 1 field means IID
    alone, 2 or more means FID IID; every later line must follow the same layout. Blank
    lines are skipped.

    Returns:
        The IIDs in file order with duplicates removed (the first occurrence is kept).

    Raises:
        InputError: unreadable file, a line that does not fit the layout, no sample IDs.
    """
    path = str(path)
    lines = _numbered_lines(path, "sample ID file (--keep/--remove)")
    iid_col: int | None = None
    layout_line = 0
    from_header = False
    out: dict[str, None] = {}
    for lineno, tokens in lines:
        if iid_col is None:
            head = tokens[0][1:] if tokens[0].startswith("#") else tokens[0]
            if tokens[0].startswith("#") or head.upper() in ("FID", "IID"):
                iid_col = 0 if head.upper() == "IID" else 1
                if iid_col == 1 and len(tokens) < 2:
                    raise InputError(
                        f"{path}:{lineno}: header {tokens[0]!r} names one column; expected "
                        f"'#FID IID' or '#IID', found {' '.join(tokens)!r}. Use '#IID' for "
                        f"a one-column file."
                    )
                layout_line = lineno
                from_header = True
                continue
            iid_col = 0 if len(tokens) == 1 else 1
            layout_line = lineno
        if iid_col == 1 and len(tokens) < 2:
            raise InputError(
                f"{path}:{lineno}: one field in a FID IID sample list (layout set on line "
                f"{layout_line}); expected at least 2 fields, found 1. Give every line "
                f"both FID and IID, or every line the IID alone."
            )
        if iid_col == 0 and len(tokens) > 1 and not from_header:
            raise InputError(
                f"{path}:{lineno}: {len(tokens)} fields in a one-column sample list (layout "
                f"set on line {layout_line}); expected 1 field, found {len(tokens)}. Give "
                f"every line the IID alone, or every line FID and IID."
            )
        out.setdefault(tokens[iid_col], None)
    if not out:
        raise InputError(
            f"{path}: no sample IDs; expected at least 1 sample line, found 0. An empty "
            f"--keep list would drop every sample; check the file."
        )
    log.info("%s: read %d sample IDs", path, len(out))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# matching


def match_samples(
    fam_iids: Sequence[str], tables: Sequence[SampleTable]
) -> tuple[np.ndarray, dict]:
    """Find each .fam sample's row in every table, matching on IID.

    Args:
        fam_iids: the genotype samples' IIDs (column 2 of the .fam), in genotype order.
        tables: the tables to line up (phenotypes, covariates ...).

    Returns:
        ``(rows, counts)``. ``rows`` is an int64 array of shape ``(len(tables), n_fam)``:
        ``rows[t, i]`` is the row of ``fam_iids[i]`` in ``tables[t]`` (an index into its
        ``iids`` / ``values``), or -1 when that table lacks the sample. ``counts`` is
        ``{"fam": n_fam, <table.path>: n_rows of that table (one key per table),
        "matched": number of .fam samples present in every table, "only_in_tables":
        number of distinct table IIDs absent from the .fam}``. With no tables every .fam
        sample counts as matched.

    Raises:
        InputError: when there are tables and no .fam sample is in all of them; the
            message names the tables, the per-table overlap and up to 3 example IIDs
            from the .fam and from the first table.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    fam = list(fam_iids)
    n_fam = len(fam)
    rows = np.full((len(tables), n_fam), -1, dtype=np.int64)
    counts: dict = {"fam": n_fam}
    # (Arrow's hash lookups: IIDs are unique in the .fam and in each table, as their readers check)
    fam_arr = pa.array(fam, type=pa.string())
    only_in_tables: set[str] = set()
    for t, table in enumerate(tables):
        iids = pa.array(list(table.iids), type=pa.string())
        found = pc.index_in(fam_arr, value_set=iids)
        rows[t] = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        counts[table.path] = len(table.iids)
        absent = pc.invert(pc.is_in(iids, value_set=fam_arr))
        if pc.any(absent).as_py():
            only_in_tables.update(iids.filter(absent).to_pylist())
    present = (rows >= 0).all(axis=0)
    counts["matched"] = int(present.sum())
    counts["only_in_tables"] = len(only_in_tables)
    if tables and counts["matched"] == 0:
        paths = ", ".join(table.path for table in tables)
        overlap = ", ".join(
            f"{table.path}: {int((rows[t] >= 0).sum())}" for t, table in enumerate(tables)
        )
        fam_ex = ", ".join(repr(i) for i in fam[:3]) or "none"
        tab_ex = ", ".join(repr(i) for i in tables[0].iids[:3]) or "none"
        raise InputError(
            f"{paths}: no .fam sample is present in every table; expected at least 1 "
            f"shared IID, found 0 (of {n_fam} .fam samples; overlap per table: {overlap}). "
            f"Examples from the .fam: {fam_ex}; from {tables[0].path}: {tab_ex}. Check that "
            f"the IIDs (column 2 of the .fam) match the IID column of each table."
        )
    log.info(
        "matched %d of %d .fam samples across %d tables; %d table samples not in the .fam",
        counts["matched"],
        n_fam,
        len(tables),
        counts["only_in_tables"],
    )
    return rows, counts
