"""Tests of dash_spark.io.tables: plink2-style phenotype/covariate/sample-ID files."""

from __future__ import annotations

import gzip
import logging
import time

import numpy as np
import pytest

from dash_spark.errors import ConfigError, InputError, ModelError
from dash_spark.io.tables import (
    MAX_CATEGORY_LEVELS,
    SampleTable,
    match_samples,
    read_sample_ids,
    read_sample_table,
)

NAN = np.nan


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def assert_values(table, expected):
    np.testing.assert_array_equal(table.values, np.array(expected, dtype=np.float64))


# ---------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "header, fids",
    [
        ("#FID IID", ("f1", "f2")),
        ("FID IID", ("f1", "f2")),
        ("#fid iid", ("f1", "f2")),
        ("Fid\tIid", ("f1", "f2")),
    ],
)
def test_header_with_fid(tmp_path, header, fids):
    path = write(tmp_path, "p.txt", f"{header} y\nf1 s1 1.5\nf2 s2 2.5\n")
    table = read_sample_table(path, kind="pheno")
    assert table.path == path
    assert table.iids == ("s1", "s2")
    assert table.fids == fids
    assert table.names == ("y",)
    assert table.categorical == ()
    assert table.values.dtype == np.float64
    assert_values(table, [[1.5], [2.5]])


@pytest.mark.parametrize("header", ["#IID", "IID", "#iid", "iid"])
def test_header_iid_only(tmp_path, header):
    path = write(tmp_path, "p.txt", f"{header} y z\ns1 1 2\ns2 3 4\n")
    table = read_sample_table(path, kind="covar")
    assert table.iids == ("s1", "s2")
    assert table.fids is None
    assert table.names == ("y", "z")
    assert_values(table, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "first_line",
    ["s1 1.5 2.0", "ID y", "#ID y", "FID y", "# FID IID y", "IID_x y"],
)
def test_header_required(tmp_path, first_line):
    path = write(tmp_path, "p.txt", f"{first_line}\ns2 1.0 2.0\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="pheno")
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: ")
    assert "'#FID IID' or 'IID'" in msg


def test_leading_blank_lines_before_header(tmp_path):
    path = write(tmp_path, "p.txt", "\n\n#IID y\n\ns1 1\n\ns2 2\n")
    table = read_sample_table(path, kind="pheno")
    assert table.iids == ("s1", "s2")
    assert_values(table, [[1], [2]])


@pytest.mark.parametrize("header", ["#FID IID SID y", "IID sid y"])
def test_sid_column_rejected(tmp_path, header):
    path = write(tmp_path, "p.txt", f"{header}\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="pheno")
    assert str(err.value).startswith(f"{path}:1: ")
    assert "SID" in str(err.value)
    assert "not supported" in str(err.value)


def test_header_without_data_columns(tmp_path):
    path = write(tmp_path, "p.txt", "#FID IID\nf s\n")
    with pytest.raises(InputError, match=r"p\.txt:1: the header has no phenotype columns"):
        read_sample_table(path, kind="pheno")


def test_duplicate_column_name(tmp_path):
    path = write(tmp_path, "c.txt", "#IID age sex age\ns1 1 2 3\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="covar")
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: ")
    assert "'age' appears twice" in msg
    assert "columns 2 and 4" in msg


def test_data_column_named_like_id_column(tmp_path):
    path = write(tmp_path, "c.txt", "#FID IID fid\nf s 1\n")
    with pytest.raises(InputError, match="'fid' appears twice"):
        read_sample_table(path, kind="covar")


# --------------------------------------------------------------------------- separators


def test_tabs_and_runs_of_spaces(tmp_path):
    text = "#FID\tIID\ty\tz\n" "f1\t\ts1  \t 1.0     2\n" "f2   s2\t3e0\t-4.5   \r\n"
    path = write(tmp_path, "p.txt", text)
    table = read_sample_table(path, kind="covar")
    assert table.fids == ("f1", "f2")
    assert table.iids == ("s1", "s2")
    assert_values(table, [[1.0, 2.0], [3.0, -4.5]])


def test_hash_lines_after_header_are_data(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\n#s1 1\ns2 2\n")
    table = read_sample_table(path, kind="pheno")
    assert table.iids == ("#s1", "s2")


def test_wrong_field_count_names_line(tmp_path):
    path = write(tmp_path, "p.txt", "#FID IID y z\nf1 s1 1 2\n\nf3 s3 1\nf4 s4 1 2\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="pheno")
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: wrong number of fields")
    assert "expected 4" in msg
    assert "found 3" in msg


def test_header_only_is_error(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\n\n")
    with pytest.raises(InputError, match=r"p\.txt:1: no data rows"):
        read_sample_table(path, kind="pheno")


def test_empty_file_is_error(tmp_path):
    path = write(tmp_path, "p.txt", "\n   \n")
    with pytest.raises(InputError, match=r"p\.txt:1: the phenotype file is empty"):
        read_sample_table(path, kind="pheno")


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="covar")
    assert path in str(err.value)
    assert "cannot open" in str(err.value)


def test_gzip_input(tmp_path):
    path = tmp_path / "p.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("#IID y\ns1 1\ns2 NA\n")
    table = read_sample_table(str(path), kind="pheno")
    assert table.iids == ("s1", "s2")
    assert_values(table, [[1], [NAN]])


def test_unknown_kind(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\ns1 1\n")
    with pytest.raises(ConfigError, match="Did you mean 'pheno'"):
        read_sample_table(path, kind="phen")


# ------------------------------------------------------------------------------ missing

MISSING_TEXT = "#IID a b\ns1 NA -9\ns2 nan -9.0\ns3 NaN 1\ns4 na -9.00\ns5 NAN 0\ns6 5 2\n"


def test_missing_values_pheno(tmp_path):
    path = write(tmp_path, "p.txt", MISSING_TEXT)
    table = read_sample_table(path, kind="pheno")
    assert_values(
        table, [[NAN, NAN], [NAN, NAN], [NAN, 1], [NAN, NAN], [NAN, 0], [5, 2]]
    )


def test_missing_values_covar_keeps_minus_nine(tmp_path):
    path = write(tmp_path, "c.txt", MISSING_TEXT)
    table = read_sample_table(path, kind="covar")
    assert_values(
        table, [[NAN, -9], [NAN, -9], [NAN, 1], [NAN, -9], [NAN, 0], [5, 2]]
    )


def test_minus_nine_lookalikes_are_numbers_in_pheno(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\ns1 -99\ns2 9\ns3 -9.5\n")
    table = read_sample_table(path, kind="pheno")
    assert_values(table, [[-99], [9], [-9.5]])


@pytest.mark.parametrize("token", ["inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("kind", ["pheno", "covar"])
def test_non_finite_value(tmp_path, token, kind):
    path = write(tmp_path, "p.txt", f"#IID y z\ns1 1 2\ns2 3 {token}\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind=kind)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: non-finite value {token!r} in column 'z'")


# ---------------------------------------------------------------------------- selection


def test_name_selection_order_and_subset(tmp_path):
    path = write(tmp_path, "c.txt", "#IID a b c\ns1 1 2 3\ns2 4 5 6\n")
    table = read_sample_table(path, kind="covar", names=["c", "a"])
    assert table.names == ("c", "a")
    assert_values(table, [[3, 1], [6, 4]])


def test_unselected_columns_are_not_parsed(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y junk\ns1 1 abc\ns2 2 def\n")
    table = read_sample_table(path, kind="pheno", names=["y"])
    assert table.names == ("y",)
    assert_values(table, [[1], [2]])


def test_unknown_name_with_hint(tmp_path):
    path = write(tmp_path, "c.txt", "#IID age sex PC1\ns1 1 2 3\n")
    with pytest.raises(ConfigError) as err:
        read_sample_table(path, kind="covar", names=["age", "sexx"])
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: --covar-name column 'sexx' is not in the header")
    assert "Did you mean 'sex'?" in msg
    assert "Available columns: 'age', 'sex', 'PC1'." in msg


def test_unknown_name_without_close_match(tmp_path):
    path = write(tmp_path, "p.txt", "#IID height\ns1 1\n")
    with pytest.raises(ConfigError) as err:
        read_sample_table(path, kind="pheno", names=["zzz"])
    assert "--pheno-name column 'zzz'" in str(err.value)
    assert "Did you mean" not in str(err.value)


def test_id_column_is_not_selectable(tmp_path):
    path = write(tmp_path, "p.txt", "#FID IID y\nf s 1\n")
    with pytest.raises(ConfigError, match="column 'IID' is not in the header"):
        read_sample_table(path, kind="pheno", names=["IID"])


def test_repeated_or_empty_names(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\ns1 1\n")
    with pytest.raises(ConfigError, match="lists column 'y' twice"):
        read_sample_table(path, kind="pheno", names=["y", "y"])
    with pytest.raises(ConfigError, match="selects no columns"):
        read_sample_table(path, kind="pheno", names=[])
    with pytest.raises(ConfigError, match="must be a list"):
        read_sample_table(path, kind="pheno", names="y")


# ------------------------------------------------------------------------- duplicate IDs


def test_duplicate_iid_names_both_lines(tmp_path):
    path = write(tmp_path, "p.txt", "#FID IID y\nf1 s1 1\nf2 s2 2\n\nf3 s1 3\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="pheno")
    msg = str(err.value)
    assert msg.startswith(f"{path}:5: duplicate IID 's1'")
    assert "lines 2 and 5" in msg


# ------------------------------------------------------------------ non-numeric values


def test_non_numeric_in_numeric_covariate(tmp_path):
    path = write(tmp_path, "covars.txt", "#IID age sex\ns1 30 1\ns2 41 2\ns3 abc 1\ns4 50 2\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="covar")
    msg = str(err.value)
    assert "covars.txt" in msg
    assert msg.startswith(f"{path}:4: non-numeric value 'abc' in numeric column 'age'")
    assert "3 of 4 non-missing values are numbers" in msg


def test_numeric_in_categorical_looking_covariate(tmp_path):
    text = "#IID site\ns1 A\ns2 B\ns3 7\ns4 A\ns5 NA\n"
    path = write(tmp_path, "c.txt", text)
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="covar")
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: numeric value '7' in column 'site', which looks categorical")
    assert "3 of 4 non-missing values are not numbers" in msg


def test_minus_nine_in_categorical_covariate_hint(tmp_path):
    path = write(tmp_path, "c.txt", "#IID site\ns1 A\ns2 -9\ns3 B\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="covar")
    assert str(err.value).startswith(f"{path}:3: numeric value '-9' in column 'site'")
    assert "-9 is a number; write missing values as NA" in str(err.value)


def test_pheno_non_numeric(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\ns1 1\ns2 case\ns3 control\n")
    with pytest.raises(InputError) as err:
        read_sample_table(path, kind="pheno")
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: non-numeric value 'case' in phenotype column 'y'")
    assert "NA or -9" in msg


def test_pheno_all_text_is_not_categorical(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\ns1 a\ns2 b\n")
    with pytest.raises(InputError, match=r"p\.txt:2: non-numeric value 'a' in phenotype"):
        read_sample_table(path, kind="pheno")


# ------------------------------------------------------------------------- categorical


def test_categorical_dummy_coding(tmp_path):
    text = (
        "#FID IID age site sex\n"
        "f1 s1 30 siteB 1\n"
        "f2 s2 41 siteA 2\n"
        "f3 s3 NA siteC 1\n"
        "f4 s4 50 NA 2\n"
        "f5 s5 -9 siteB 1\n"
    )
    path = write(tmp_path, "c.txt", text)
    table = read_sample_table(path, kind="covar")
    assert table.names == ("age", "site=siteB", "site=siteC", "sex")
    assert table.categorical == ("site",)
    assert_values(
        table,
        [
            [30, 1, 0, 1],
            [41, 0, 0, 2],
            [NAN, 0, 1, 1],
            [50, NAN, NAN, 2],
            [-9, 1, 0, 1],
        ],
    )


def test_categorical_levels_sorted_lexicographically(tmp_path):
    path = write(tmp_path, "c.txt", "#IID b\ns1 z\ns2 a_2\ns3 a_10\ns4 M\n")
    table = read_sample_table(path, kind="covar")
    # Python string order: 'M' < 'a_10' < 'a_2' < 'z'; 'M' is the reference level.
    assert table.names == ("b=a_10", "b=a_2", "b=z")
    assert_values(table, [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_categorical_respects_selection_order(tmp_path):
    path = write(tmp_path, "c.txt", "#IID site age\ns1 x 1\ns2 y 2\n")
    table = read_sample_table(path, kind="covar", names=["age", "site"])
    assert table.names == ("age", "site=y")
    assert_values(table, [[1, 0], [2, 1]])


def test_single_level_categorical(tmp_path):
    path = write(tmp_path, "c.txt", "#IID age site\ns1 1 A\ns2 2 NA\ns3 3 A\n")
    with pytest.raises(ModelError) as err:
        read_sample_table(path, kind="covar")
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: column 'site' has a single level 'A'")
    assert "collinear with the intercept" in msg
    assert "--covar-name" in msg


def test_too_many_levels(tmp_path):
    rows = "".join(f"s{i} id{i}\n" for i in range(MAX_CATEGORY_LEVELS + 1))
    path = write(tmp_path, "c.txt", "#IID tag\n" + rows)
    with pytest.raises(InputError, match=f"has {MAX_CATEGORY_LEVELS + 1} levels"):
        read_sample_table(path, kind="covar")


def test_all_missing_column_is_numeric_nan(tmp_path):
    path = write(tmp_path, "c.txt", "#IID x\ns1 NA\ns2 nan\n")
    table = read_sample_table(path, kind="covar")
    assert table.names == ("x",)
    assert table.categorical == ()
    assert np.isnan(table.values).all() and table.values.shape == (2, 1)


def test_values_read_only(tmp_path):
    path = write(tmp_path, "p.txt", "#IID y\ns1 1\n")
    table = read_sample_table(path, kind="pheno")
    with pytest.raises(ValueError):
        table.values[0, 0] = 2.0


def test_sample_table_shape_check():
    with pytest.raises(ValueError, match="expected \\(2, 1\\)"):
        SampleTable(path="x", iids=("a", "b"), fids=None, names=("y",), values=np.zeros((3, 1)))


def test_logs_counts_not_values(tmp_path, caplog):
    path = write(tmp_path, "p.txt", "#IID y\ns1 123.456\ns2 NA\n")
    with caplog.at_level(logging.INFO, logger="dash_spark.io.tables"):
        read_sample_table(path, kind="pheno")
    text = caplog.text
    assert "read 2 samples x 1 phenotype columns" in text
    assert "1 missing cells" in text
    assert "123.456" not in text


# -------------------------------------------------------------------------- sample IDs


def test_read_sample_ids_iid_only(tmp_path):
    path = write(tmp_path, "keep.txt", "s3\n\ns1\ns2\ns1\n")
    assert read_sample_ids(path) == ("s3", "s1", "s2")


def test_read_sample_ids_fid_iid(tmp_path):
    path = write(tmp_path, "keep.txt", "f1 s1\nf2\ts2\n\nf9 s1\n")
    assert read_sample_ids(path) == ("s1", "s2")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#FID IID\nf1 s1\nf2 s2\n", ("s1", "s2")),
        ("#IID\ns1\ns2\n", ("s1", "s2")),
        ("#IID extra\ns1 x\ns2 y\n", ("s1", "s2")),
        ("FID IID\nf1 s1\n", ("s1",)),
        ("iid\ns5\n", ("s5",)),
    ],
)
def test_read_sample_ids_header(tmp_path, text, expected):
    path = write(tmp_path, "keep.txt", text)
    assert read_sample_ids(path) == expected


def test_read_sample_ids_fam_file(tmp_path):
    path = write(tmp_path, "x.fam", "f1 s1 0 0 1 -9\nf2 s2 0 0 2 -9\n")
    assert read_sample_ids(path) == ("s1", "s2")


def test_read_sample_ids_inconsistent_layout(tmp_path):
    path = write(tmp_path, "keep.txt", "f1 s1\ns2\n")
    with pytest.raises(InputError, match=r"keep\.txt:2: one field in a FID IID sample list"):
        read_sample_ids(path)
    path = write(tmp_path, "keep2.txt", "s1\nf2 s2\n")
    with pytest.raises(InputError, match=r"keep2\.txt:2: 2 fields in a one-column sample list"):
        read_sample_ids(path)


def test_read_sample_ids_errors(tmp_path):
    missing = str(tmp_path / "none.txt")
    with pytest.raises(InputError, match="cannot open"):
        read_sample_ids(missing)
    empty = write(tmp_path, "empty.txt", "#IID\n\n")
    with pytest.raises(InputError, match="no sample IDs"):
        read_sample_ids(empty)


# ---------------------------------------------------------------------------- matching


def make_table(path, iids, values=None):
    values = np.arange(len(iids), dtype=np.float64)[:, None] if values is None else values
    return SampleTable(path=path, iids=tuple(iids), fids=None, names=("y",), values=values)


def test_match_samples_order_independent(tmp_path):
    fam = ["a", "b", "c", "d", "e"]
    pheno_path = write(tmp_path, "p.txt", "#IID y\nd 4\nb 2\na 1\nz 26\ne 5\n")
    covar_path = write(tmp_path, "c.txt", "#IID x\ne 50\nc 30\nb 20\nd 40\ny 25\nq 17\n")
    pheno = read_sample_table(pheno_path, kind="pheno")
    covar = read_sample_table(covar_path, kind="covar")
    rows, counts = match_samples(fam, [pheno, covar])
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(rows, [[2, 1, -1, 0, 4], [-1, 2, 1, 3, 0]])
    assert counts == {
        "fam": 5,
        pheno_path: 5,
        covar_path: 6,
        "matched": 3,
        "only_in_tables": 3,
    }
    # the rows pick each fam sample's own values
    both = (rows >= 0).all(axis=0)
    y = pheno.values[rows[0, both], 0]
    x = covar.values[rows[1, both], 0]
    np.testing.assert_array_equal(y, [2, 4, 5])
    np.testing.assert_array_equal(x, [20, 40, 50])

    # shuffling the table rows changes the indices but not the values they select
    shuffled = make_table(pheno_path, ["e", "a", "z", "b", "d"], np.array([[5], [1], [26], [2], [4.0]]))
    rows2, counts2 = match_samples(fam, [shuffled])
    np.testing.assert_array_equal(rows2, [[1, 3, -1, 4, 0]])
    present = rows2[0] >= 0
    np.testing.assert_array_equal(shuffled.values[rows2[0, present], 0], [1, 2, 4, 5])
    assert counts2["matched"] == 4 and counts2["only_in_tables"] == 1


def test_match_samples_no_tables():
    rows, counts = match_samples(["a", "b"], [])
    assert rows.shape == (0, 2)
    assert counts == {"fam": 2, "matched": 2, "only_in_tables": 0}


def test_match_samples_no_overlap():
    fam = ["f1", "f2", "f3", "f4"]
    pheno = make_table("pheno.txt", ["FAM1_f1", "FAM1_f2", "FAM1_f3", "FAM1_f4"])
    covar = make_table("covar.txt", ["f1", "f2"])
    with pytest.raises(InputError) as err:
        match_samples(fam, [pheno, covar])
    msg = str(err.value)
    assert msg.startswith("pheno.txt, covar.txt: no .fam sample is present in every table")
    assert "overlap per table: pheno.txt: 0, covar.txt: 2" in msg
    assert "Examples from the .fam: 'f1', 'f2', 'f3';" in msg
    assert "from pheno.txt: 'FAM1_f1', 'FAM1_f2', 'FAM1_f3'." in msg
    assert "column 2 of the .fam" in msg


def test_match_samples_disjoint_tables_each_overlapping_fam():
    pheno = make_table("p", ["a", "b"])
    covar = make_table("c", ["c", "d"])
    with pytest.raises(InputError, match="overlap per table: p: 2, c: 2"):
        match_samples(["a", "b", "c", "d"], [pheno, covar])


# ------------------------------------------------------------------------- performance


def test_large_file_reads_quickly(tmp_path):
    n, k = 500_000, 10
    rng = np.random.default_rng(7)
    data = rng.normal(size=(n, k)).round(5)
    lines = ["#FID IID " + " ".join(f"c{j}" for j in range(k))]
    for i in range(n):
        lines.append(f"F{i} S{i} " + " ".join(map(repr, data[i].tolist())))
    lines[10] = lines[10].rsplit(" ", 1)[0] + " NA"
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    table = read_sample_table(str(path), kind="covar")
    elapsed = time.perf_counter() - start
    assert table.values.shape == (n, k)
    expected = data.copy()
    expected[9, k - 1] = np.nan
    np.testing.assert_array_equal(table.values, expected)
    start = time.perf_counter()
    rows, counts = match_samples([f"S{i}" for i in reversed(range(n))], [table])
    elapsed_match = time.perf_counter() - start
    np.testing.assert_array_equal(rows[0], np.arange(n)[::-1])
    assert counts["matched"] == n
    assert elapsed < 10, f"reading took {elapsed:.1f}s"
    assert elapsed_match < 5, f"matching took {elapsed_match:.1f}s"


@pytest.mark.parametrize("kind", ["pheno", "covar"])
def test_arrow_number_reader_equals_python_float(tmp_path, monkeypatch, kind):
    """Columns are read by Arrow's cast where it reads every cell; a column holding a token only
    Python's float() reads (``1_0``, non-ASCII digits, ``-nan``) is read as before; both give the
    same values and the same errors."""
    from dash_spark.io import tables

    rows = [
        ["#FID", "IID", "a", "b", "c", "d", "e"],
        ["f1", "s1", "1.5", "1_0", "-9", "nan", "0.1"],
        ["f2", "s2", "NA", "2", "-9.0", "NaN", "1e-300"],
        ["f3", "s3", "+3", "\u0663", "1E5", "-nan", "5."],
        ["f4", "s4", "nA", "4", ".5", "na", "-0"],
    ]
    path = write(tmp_path, "t.txt", "\n".join("\t".join(r) for r in rows) + "\n")
    fast = read_sample_table(path, kind=kind)
    monkeypatch.setattr(tables, "_numeric_column_arrow", lambda tokens: None)
    slow = read_sample_table(path, kind=kind)
    assert fast.names == slow.names
    np.testing.assert_array_equal(fast.values, slow.values)
    assert np.signbit(fast.values[3, 4]) == np.signbit(slow.values[3, 4])


@pytest.mark.parametrize("cell,needle", [("inf", "non-finite value 'inf'"), ("1e999", "non-finite value '1e999'"),
                                         ("x1", "non-numeric value 'x1'")])
def test_arrow_number_reader_keeps_the_errors(tmp_path, cell, needle):
    path = write(tmp_path, "p.txt", f"IID\ty\ns1\t1\ns2\t{cell}\n")
    with pytest.raises(InputError, match=needle.replace("(", r"\(")) as err:
        read_sample_table(path, kind="pheno")
    assert "p.txt:3:" in str(err.value)


def test_arrow_number_reader_is_used(monkeypatch):
    from dash_spark.io import tables

    out = tables._numeric_column_arrow(["1", "NA", "-9", "2.5e1"])
    assert out is not None and out.flags.writeable
    np.testing.assert_array_equal(out, [1.0, np.nan, -9.0, 25.0])
    assert tables._numeric_column_arrow(["1", "1_0"]) is None


def test_tab_fast_path_equals_the_line_reader(tmp_path, monkeypatch, caplog):
    """Tab-separated files take Arrow's C++ reader; every table reads the same as by the
    line-by-line reader (values, NaN, IDs, names), and files it does not take (spaces, a ragged
    row, a categorical or bad cell, a duplicate IID) still get the line reader's results and errors."""
    import gzip

    from dash_spark.io import tables

    rng = np.random.default_rng(4)
    rows = []
    for i in range(300):
        vals = [f"{v:.6g}" for v in rng.normal(size=4)]
        vals[i % 4] = ["NA", "nan", "-9", "NaN"][i % 4] if i % 7 == 0 else vals[i % 4]
        rows.append([f"f{i}", f"s{i}"] + vals)
    head = ["#FID", "IID", "a", "b", "c", "d"]
    text = "\n".join("\t".join(r) for r in [head] + rows) + "\n"
    cases = {"tab.txt": text, "tab_crlf.txt": text.replace("\n", "\r\n"),
             "spaces.txt": text.replace("\t", " "), "ragged.txt": text + "x\ty\t1\n",
             "cat.txt": text.replace("\tNA\t", "\tlow\t", 1)}
    for name, body in cases.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "tab.txt.gz").write_bytes(gzip.compress(text.encode()))
    taken = []
    real = tables._tab_table

    def spy(*a, **kw):
        out = real(*a, **kw)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(tables, "_tab_table", spy)
    for name in ["tab.txt", "tab_crlf.txt", "tab.txt.gz", "spaces.txt", "ragged.txt", "cat.txt"]:
        for kind, names in (("pheno", None), ("covar", ["d", "b"])):
            path = str(tmp_path / name)
            taken.clear()
            try:
                fast = read_sample_table(path, kind=kind, names=names)
            except InputError as exc:
                fast = exc
            with monkeypatch.context() as m:
                m.setattr(tables, "_tab_table", lambda *a, **kw: None)
                try:
                    slow = read_sample_table(path, kind=kind, names=names)
                except InputError as exc:
                    slow = exc
            if isinstance(slow, Exception):
                assert str(fast) == str(slow)
                continue
            if name != "cat.txt":  # (its text cell may sit in a column not selected)
                assert taken == [name.startswith("tab")], (name, taken)
            assert fast.iids == slow.iids and fast.fids == slow.fids and fast.names == slow.names
            np.testing.assert_array_equal(fast.values, slow.values)
