"""The summaries read each phenotype's rows in groups of phenotypes (one pass over the results per
group): the rows, and their order, are those of a per-phenotype read."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dash_spark.outputs.writers import PhenotypeGroups


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

    from dash_spark.scanner.pipeline import ScanConfig, run_scan

    from .oracle_data import make_files

    files = make_files(tmp_path, np.random.default_rng(9), n=300, m=240, name="p")
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                              plots_top=1), spark=spark)
    best = max(res.summaries, key=lambda n: res.summaries[n].min_p_neg_log10)
    pngs = sorted(f for f in os.listdir(res.out) if f.endswith(".png"))
    assert pngs == sorted([f"{best}.manhattan.png", f"{best}.qq.png", "phewas.png"])  # and the overview of all
    summary = json.loads(open(os.path.join(res.out, "summary.json")).read())
    assert len(summary["phenotypes"]) == 3  # the summaries cover every phenotype


@pytest.mark.parametrize("seed", [1, 2])
def test_summaries_from_task_candidates_equal_full_reads(seed):
    """Summaries from the light columns and the top-hit candidates kept per chunk of rows (as tasks
    keep them, reduced again) equal those of the whole table: ties at the cut, invalid rows, errors."""
    import pyarrow.compute as pc

    from dash_spark.outputs import report
    from dash_spark.outputs.writers import top_candidates

    rng = np.random.default_rng(seed)
    names = ["a", "b", "c"]
    m = 300
    n = m * len(names)
    nlp = np.round(rng.exponential(1.0, n), 1)  # many ties
    p = 10.0 ** -nlp
    err = np.where(rng.random(n) < 0.05, "CONST_OMITTED_ALLELE", ".").astype(object)
    p[rng.random(n) < 0.02] = np.nan
    table = pa.table({
        "phenotype": np.repeat(names, m), "chrom": np.tile(rng.choice(["1", "2", "X"], m), len(names)),
        "pos": np.tile(rng.integers(1, 100, m), len(names)), "id": [f"v{i}" for i in range(n)],
        "a1": ["A"] * n, "beta": rng.normal(size=n), "se": rng.random(n), "p": p, "neg_log10_p": nlp,
        "obs_ct": np.full(n, 50), "errcode": err})
    table = table.take(pa.array(rng.permutation(n)))  # phenotypes interleaved, as across sub-blocks
    cuts = np.sort(rng.choice(np.arange(1, n), 6, replace=False))
    parts = [top_candidates(table.slice(a, b - a)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, n])]
    cand = top_candidates(pa.concat_tables(parts[:3])).to_pylist() + pa.concat_tables(parts[3:]).to_pylist()
    cand = pa.Table.from_pylist(cand)
    for name in names:
        want = report.summarize_table(table, name)
        rows = table.filter(pc.equal(table["phenotype"], name))
        pv = rows["p"].to_numpy(zero_copy_only=False).astype(float)
        nv = rows["neg_log10_p"].to_numpy(zero_copy_only=False).astype(float)
        valid = (rows["errcode"].to_numpy(zero_copy_only=False) == ".") & ~np.isnan(pv) & ~np.isnan(nv)
        got = report.summarize_parts(name, pv, nv, rows["errcode"].value_counts(), valid,
                                     cand.filter(pc.equal(cand["phenotype"], name)))
        assert got == want
        assert len(want.top_hits) == 10
        # one part's candidates: exactly its valid rows at or above its 10th strongest, ties kept
        whole = top_candidates(table)
        ids = set(whole.filter(pc.equal(whole["phenotype"], name))["id"].to_pylist())
        cut = np.sort(nv[valid])[::-1][9]
        assert ids == set(np.asarray(rows["id"].to_pylist(), dtype=object)[valid & (nv >= cut)].tolist())


def test_logs_stay_readable_with_many_phenotypes(tmp_path, spark, caplog, capsys):
    """12 phenotypes: five lines each for the model and the tests, then one line for the rest; the
    figures of all of them are in summary.json (sample counts included); the command prints five
    phenotypes' top hits and one line for the rest."""
    import json
    import logging

    from dash_spark.scanner.pipeline import ScanConfig, run_scan

    from .oracle_data import make_files

    files = make_files(tmp_path, np.random.default_rng(10), n=240, m=220, name="q")
    rng = np.random.default_rng(11)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    pheno = tmp_path / "many.pheno"
    with open(pheno, "w") as fh:
        fh.write("#IID\t" + "\t".join(f"t{i}" for i in range(12)) + "\n")
        for iid in iids:
            fh.write(iid + "\t" + "\t".join("NA" if rng.random() < 0.05 else repr(rng.normal()) for _ in range(12))
                     + "\n")
    with caplog.at_level(logging.INFO, logger="dash_spark"):
        res = run_scan(ScanConfig(bfile=files.bfile, pheno=str(pheno), covar=files.covar, out=str(tmp_path / "o"),
                                  plots=False), spark=spark)
    text = [r.getMessage() for r in caplog.records]
    assert sum(" degrees of freedom" in t for t in text) == 5
    assert sum(" with an error code, lambda_GC" in t for t in text) == 5
    assert any(t.startswith("... and 7 more phenotype(s) modelled") for t in text)
    assert any(t.startswith("... and 7 more phenotype(s) tested") for t in text)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert len(summary["phenotypes"]) == 12
    samples = summary["extra"]["counts"]["phenotype_samples"]
    assert len(samples) == 12 and all(200 < v < 240 for v in samples.values())
    assert len(res.summaries) == 12
    # the command's stdout: top hits of five phenotypes, then one line for the other seven
    from dash_spark.cli import print_summaries

    print_summaries(res.summaries, res.out)
    out = capsys.readouterr().out.splitlines()
    blocks = [line for line in out if line.startswith("== ")]
    assert [b.split(":")[0] for b in blocks[:5]] == [f"== t{i}" for i in range(5)]
    lams = [res.summaries[f"t{i}"].lambda_gc for i in range(5, 12)]
    assert blocks[5] == (f"== 7 more phenotypes (lambda_GC {min(lams):.4f} to {max(lams):.4f}): every phenotype's "
                         f"counts, lambda_GC and top hits are in {res.out}/summary.tsv and {res.out}/summary.json")
    assert len(blocks) == 6 and len(out) < 5 * 15
