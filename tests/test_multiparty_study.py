"""Parties' additive statistics, summed, give the scan of the pooled samples (no masking here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dash_spark.io.plink import read_bed_range
from dash_spark.scanner.pipeline import ScanConfig, model_statistics
from dash_spark.scanner.model import scan_model, statistics_model
from dash_spark.scanner.sources import BedReader
from dash_spark.stats.blocks import PackedBlock
from dash_spark.stats.regression import ERRCODES
from dash_spark.scanner.tasks import ScanPlan, block_stats, plan_ranges, scan_ranges

from .oracle_data import make_files


def _plan(model, files, mode):
    return ScanPlan(BedReader(files.bfile + ".bed", files.bfile + ".bim", model.n_samples), model.n_samples,
                    model.n_a, model.n_freq, model.n_kept, model.patterns, 64, missing_genotypes=mode)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    files = make_files(tmp, np.random.default_rng(5), n=450, m=300, missing=0.03, name="mp")
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    part = np.random.default_rng(6).choice(3, len(iids), p=[0.5, 0.3, 0.2])  # unequal party sizes
    keeps = []
    for s in range(3):
        path = tmp / f"party{s}.txt"
        path.write_text("".join(f"{i}\n" for i, p in zip(iids, part) if p == s))
        keeps.append(str(path))
    return files, keeps


@pytest.mark.parametrize("mode", ["mean", "drop"])
def test_pooled_party_sums_equal_the_pooled_scan(split, tmp_path, mode):
    files, keeps = split
    cfg = ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                     missing_genotypes=mode)
    model = scan_model(cfg)
    batches = list(scan_ranges(_plan(model, files, mode), model.W, plan_ranges(model.variants, 1000,
                                                                                 model.bim.line_offsets)))
    ref = {k: np.concatenate([np.asarray(b.column(k).to_numpy(zero_copy_only=False)) for b in batches])
           for k in batches[0].schema.names}
    S = None
    for keep in keeps:
        pm = statistics_model(dataclasses.replace(cfg, keep=keep))
        block = PackedBlock(read_bed_range(files.bfile + ".bed", pm.n_samples, 0, files.m), pm.n_samples)
        s = model_statistics(pm, block_stats(_plan(pm, files, mode), pm.W, block))
        S = s if S is None else S + s
    named = S.finalize_stats()
    for name, st in named:
        sel = np.flatnonzero(ref["phenotype"] == name)
        sel = sel[np.argsort(ref["variant_index"][sel])]
        assert np.array_equal(np.array(ERRCODES, dtype=object)[st.errcode], ref["errcode"][sel])
        assert np.array_equal(st.obs_ct, ref["obs_ct"][sel])
        ok = ref["errcode"][sel] == "."
        sign = np.where(ref["a1"][sel] != ref["alt"][sel], -1.0, 1.0)
        se = ref["se"][sel][ok]
        assert np.all(np.abs(sign[ok] * st.beta[ok] - ref["beta"][sel][ok]) <= 1e-9 * np.maximum(se, np.abs(ref["beta"][sel][ok])))
        np.testing.assert_allclose(st.se[ok], se, rtol=1e-9)
        np.testing.assert_allclose(st.neg_log10_p[ok], ref["neg_log10_p"][sel][ok], rtol=1e-9, atol=1e-11)


def test_section2_regression_equals_statsmodels_on_pooled_data(split):
    import pandas as pd
    import statsmodels.api as sm

    from dash_spark.config import ModelSettings
    from dash_spark.studies.study import regression_party_stats

    files, _ = split
    # split the phenotype file's rows into two "parties" with their own files
    lines = open(files.pheno).read().splitlines()
    G = None
    for s, rows in enumerate((lines[1::2], lines[2::2])):
        path = files.pheno + f".part{s}"
        open(path, "w").write("\n".join([lines[0]] + rows) + "\n")
        g = regression_party_stats(path, files.covar, ModelSettings())
        G = g if G is None else G + g
    phenos = G.phenotypes
    ph = pd.read_csv(files.pheno, sep="\t", na_values=["NA", "nan", "-9"], keep_default_na=False).set_index("IID")
    cv = pd.read_csv(files.covar, sep=" ", na_values=["NA"], keep_default_na=False).set_index("IID")
    df = ph.join(cv[["age", "sex", "PC1"]], how="inner")
    for t, name in enumerate(phenos):
        d = df[[name, "age", "sex", "PC1"]].dropna()
        fit = sm.OLS(d[name].to_numpy(), sm.add_constant(d[["age", "sex", "PC1"]].to_numpy())).fit()
        tbl = G.regression_table(t)
        np.testing.assert_allclose(tbl.column("beta").to_numpy(), fit.params, rtol=1e-9)
        np.testing.assert_allclose(tbl.column("se").to_numpy(), fit.bse, rtol=1e-9)
        np.testing.assert_allclose(tbl.column("p").to_numpy(), fit.pvalues, rtol=1e-8)
        assert tbl.column("obs_ct").to_numpy()[0] == len(d)
