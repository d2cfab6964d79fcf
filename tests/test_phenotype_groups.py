"""The summaries read each phenotype's rows in groups of phenotypes (one pass over the results per
group): the rows, and their order, are those of a per-phenotype read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dash_spark.output import PhenotypeGroups


@pytest.mark.parametrize("budget", [1, 250, 10**9])
def test_groups_equal_per_phenotype_reads(tmp_path, budget):
    rng = np.random.default_rng(3)
    names = ["b", "a", "t/1", "z z", "é"]  # not in sorted order, odd characters
    (tmp_path / "results.parquet").mkdir()
    for part in range(3):
        m = 40
        rows = {"variant_index": np.tile(np.arange(part * m, (part + 1) * m), len(names)),
                "phenotype": np.repeat(names, m),
                "neg_log10_p": np.round(rng.exponential(1.0, m * len(names)), 1)}  # many ties
        pq.write_table(pa.table(rows), tmp_path / "results.parquet" / f"part-{part:05d}.snappy.parquet")
    path = str(tmp_path / "results.parquet")
    groups = PhenotypeGroups(path, names, 120, ["phenotype", "variant_index", "neg_log10_p"], budget_rows=budget)
    for name in names:
        want = pq.read_table(path, columns=["phenotype", "variant_index", "neg_log10_p"],
                             filters=[("phenotype", "=", name)])
        got = groups(name)
        assert got.num_rows == 120 and got.equals(want), name
    assert groups.group == max(1, budget // 120)


def test_plots_top_draws_only_the_strongest_phenotypes(tmp_path, spark):
    import json
    import os

    from dash_spark.pipeline import ScanConfig, run_scan

    from .oracle_data import make_files

    files = make_files(tmp_path, np.random.default_rng(9), n=300, m=240, name="p")
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                              plots_top=1), spark=spark)
    best = max(res.summaries, key=lambda n: res.summaries[n].min_p_neg_log10)
    pngs = sorted(f for f in os.listdir(res.out) if f.endswith(".png"))
    assert pngs == sorted([f"{best}.manhattan.png", f"{best}.qq.png", "phewas.png"])  # and the overview of all
    summary = json.loads(open(os.path.join(res.out, "summary.json")).read())
    assert len(summary["phenotypes"]) == 3  # the summaries cover every phenotype
