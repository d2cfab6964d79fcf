"""Forward selection in a multi-party study: each step's products go through masked shares."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.config import ModelSettings
from dash_spark.multiparty.exchange import locate_manifest

from .oracle_data import make_split_files, statsmodels_oracle
from .party_flow import Study, run_subprocess
from .test_select import _check

PARTIES = ("alice", "bob", "carol")


def _run(capsys, *args):
    capsys.readouterr()
    code = main(["-q", *args])
    cap = capsys.readouterr()
    assert code == 0, cap.err[-3000:]
    return cap.out.strip()


@pytest.mark.slow
def test_three_party_selection_equals_statsmodels(tmp_path, spark, capsys):
    files, _, prefixes = make_split_files(tmp_path, 51, PARTIES, [0.4, 0.35, 0.25], n=450, m=240)
    st = Study(tmp_path, PARTIES, name="sel")
    manifest = st.manifest("--bim", files.bfile + ".bim")

    real_cli = []

    def parties(m):
        st.join(m)
        for p in PARTIES:
            args = ["--pheno", files.pheno, "--covar", files.covar, "--bfile", prefixes[p]]
            if m != manifest and not real_cli:  # one step through the command as users run it (its early JVM)
                real_cli.append(p)
                code, _, err = run_subprocess("party", "compress", *st.party(p, m), *args)
            else:
                code, _, err = st.compress(m, p, *args)
            assert code == 0, err[-3000:]

    parties(manifest)
    out = tmp_path / "selected"
    select = ["select", "--manifest", manifest, "--out", str(out), "--pheno-name", "pheno1", "--p-threshold", "1",
              "--max-steps", "2", "--sign-key", st.coord, "--trust", st.trust]
    assert "base round closed" in _run(capsys, *select)  # the base round is closed, then unmasked
    st.unmask(manifest, PARTIES)  # confirm, counts, guard, seeds: a pass per step
    rounds = set()
    for _ in range(5):
        text = _run(capsys, *select)
        if out.exists():
            break
        step_manifest = text.splitlines()[-1]
        rounds.add(os.path.basename(os.path.dirname(step_manifest)))
        # a step carries the base round's model options whole (the parties' step statistics mean what theirs did)
        base_settings, step_settings = (locate_manifest(m)[1].settings for m in (manifest, step_manifest))
        options = ModelSettings.from_json(base_settings, where=manifest).to_json()
        assert {k: step_settings[k] for k in options} == options
        parties(step_manifest)
    assert out.exists() and len(rounds) == 2 and real_cli  # a fresh round (fresh masks) per step
    sel = pd.read_csv(out / "selected.tsv", sep="\t")
    assert list(sel["step"]) == [1, 2]
    idx = [int(v[2:]) for v in sel["id"]]  # make_files names variants rs<j>
    rows = sel.assign(variant_index=idx).to_dict("records")
    for i, row in enumerate(rows):
        _check({}, statsmodels_oracle(files, "pheno1", "drop", condition=idx[:i], variants=[idx[i]]), [row])
    final = statsmodels_oracle(files, "pheno1", "drop", condition=idx)
    tab = pq.read_table(out / "results.parquet").to_pylist()
    _check({}, final, [r for r in tab if r["errcode"] == "." and r["variant_index"] not in idx])
    joint = pd.read_csv(out / "joint.tsv", sep="\t")
    fit = final["joint"]
    got = joint[joint["step"] == 2]
    signs = np.array([-1.0 if r["a1"] != r["alt"] else 1.0 for r in rows])
    np.testing.assert_allclose(signs * got["beta"].to_numpy(), fit.params[4:], rtol=1e-9)
    np.testing.assert_allclose(got["se"].to_numpy(), fit.bse[4:], rtol=1e-9)
