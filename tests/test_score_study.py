"""A case/control study by the score test: the null model by secure rounds, then one scan round.

The pooled result must equal the score test of the pooled samples (the single-party scan on the
pooled files, and statsmodels' GLM score test); and the null model's rounds must hold against a
coordinator who writes steps of its own choosing (coefficients, extra steps, an early scan, a
forged chain), replays, re-publication and a party whose samples changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import special

from dash_spark.config import ScanConfig
from dash_spark.scanner.pipeline import run_scan

from .oracle_data import make_files, split_bed
from .test_score import _spa_oracle
from .party_flow import Study

PARTIES = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """600 samples x 300 variants (missing calls, a monomorphic variant, one collinear with sex),
    split among three parties; a case/control phenotype file for all of them (1/2, 0/-9/NA missing)."""
    from bed_reader import open_bed

    tmp = tmp_path_factory.mktemp("scorestudy")
    files = make_files(tmp, np.random.default_rng(31), n=600, m=300, missing=0.02, name="pooled")
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
    rng = np.random.default_rng(32)
    n = len(iids)
    cov = {ln.split()[1]: ln.split()[2:] for ln in list(open(files.covar))[1:]}
    age = np.array([float(cov[i][0]) if i in cov else 50.0 for i in iids])
    risk = special.expit(-2.0 + 0.03 * (age - 55) + 0.6 * np.nan_to_num(G[:, 5]))
    cc = np.where(rng.random(n) < risk, "2", "1").astype(object)
    cc[rng.random(n) < 0.04] = "NA"
    cc[rng.random(n) < 0.03] = "0"
    cc[rng.random(n) < 0.03] = "-9"
    pheno = tmp / "cc.pheno"
    with open(pheno, "w") as fh:
        fh.write("#FID\tIID\tcc\n")
        for i, iid in enumerate(iids):
            fh.write(f"{iid}\t{iid}\t{cc[i]}\n")
    assign = np.random.default_rng(33).choice(3, n, p=[0.4, 0.35, 0.25])
    prefixes = split_bed(files, tmp, {p: np.flatnonzero(assign == i) for i, p in enumerate(PARTIES)})
    return tmp, files, str(pheno), prefixes, G


def _data(cohort, p):
    _, files, pheno, prefixes, _ = cohort
    return ["--pheno", pheno, "--covar", files.covar, "--bfile", prefixes[p]]


def _base(cohort, tmp, name="sc"):
    """A score study's base round, published by every party, closed and unmasked."""
    _, files, _, _, _ = cohort
    st = Study(tmp, PARTIES, name=name)
    base = st.manifest("--kind", "score", "--bim", files.bfile + ".bim")
    st.join(base)
    for p in PARTIES:
        code, _, err = st.compress(base, p, *_data(cohort, p))
        assert code == 0, err[-3000:]
    out = tmp / "out"
    closed = st.ok("combine", "--manifest", base, "--out", out, "--sign-key", st.coord)
    assert "base round closed" in closed
    st.unmask(base, list(PARTIES))
    return st, base, out


def _advance(st, base, out):
    """One combine: the next round's manifest, or None when the outputs are written."""
    text = st.ok("combine", "--manifest", base, "--out", out, "--sign-key", st.coord, "--trust", st.trust)
    return None if out.exists() else text.splitlines()[-1]


def _run_study(cohort, tmp):
    st, base, out = _base(cohort, tmp)
    rounds = []
    for _ in range(60):
        nxt = _advance(st, base, out)
        if nxt is None:
            break
        rounds.append(nxt)
        st.join(nxt)
        for p in PARTIES:
            code, _, err = st.compress(nxt, p, *_data(cohort, p))
            assert code == 0, err[-3000:]
    return st, base, out, rounds


@pytest.fixture(scope="module")
def study(cohort, tmp_path_factory, spark):
    tmp = tmp_path_factory.mktemp("run")
    return _run_study(cohort, tmp)


@pytest.fixture(scope="module")
def pooled(cohort, tmp_path_factory, spark):
    _, files, pheno, _, _ = cohort
    out = tmp_path_factory.mktemp("pooled") / "o"
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=pheno, covar=files.covar, binary_test="score", out=str(out),
                              plots=False), spark=spark)
    return pq.read_table(res.results_path).to_pandas().sort_values("variant_index").reset_index(drop=True)


def _analysed(cohort):
    _, files, pheno, _, G = cohort
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    vals = {ln.split()[1]: ln.split()[2] for ln in list(open(pheno))[1:]}
    y = np.array([{"1": 0.0, "2": 1.0}.get(vals.get(i, "NA"), np.nan) for i in iids])
    cov = {ln.split()[1]: ln.split()[2:] for ln in list(open(files.covar))[1:]}
    C = np.array([[np.nan if v == "NA" else float(v) for v in cov.get(i, ["NA"] * 3)] for i in iids])
    C = np.column_stack([np.ones(len(iids)), C])
    return y, C, ~np.isnan(y) & ~np.isnan(C).any(axis=1), G


def test_the_pooled_score_test_equals_the_pooled_scan_and_statsmodels(cohort, study, pooled):
    import statsmodels.api as sm

    _, _, out, rounds = study
    assert len(rounds) >= 4 and all("manifest.json" in r for r in rounds)  # steps, then the scan round
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".regenie") == ["cc.regenie"]
    got = pq.read_table(out / "results.parquet").to_pandas().sort_values("variant_index").reset_index(drop=True)
    assert len(got) == len(pooled) == 300
    assert (got["errcode"] == pooled["errcode"]).all() and (got["a1"] == pooled["a1"]).all()
    assert (got["obs_ct"] == pooled["obs_ct"]).all()
    ok = (got["errcode"] == ".").to_numpy()
    assert ok.sum() > 290
    for col in ("beta", "a1_freq"):
        np.testing.assert_allclose(got[col], pooled[col], rtol=1e-9, atol=1e-14)
    spa = ok & (pooled["p"].to_numpy() < 0.05)  # saddlepoint-corrected (by rounds in the study)
    assert (ok & ~spa).sum() > 250 and spa.sum() >= 5
    for col in ("se", "t_stat", "p", "neg_log10_p"):
        np.testing.assert_allclose(got[col][ok & ~spa], pooled[col][ok & ~spa], rtol=1e-9)
        np.testing.assert_allclose(got[col][spa], pooled[col][spa], rtol=1e-8)
    y, C, base, G = _analysed(cohort)
    null = sm.GLM(y[base], C[base], family=sm.families.Binomial()).fit(tol=1e-13)
    mu = special.expit(C[base] @ null.params)
    w = mu * (1 - mu)
    for row in got[ok].itertuples():
        x = G[base, row.variant_index].copy()
        x[np.isnan(x)] = np.nanmean(x)
        chisq, p = null.score_test(exog_extra=x[:, None])[:2]
        if row.p >= 0.05:
            np.testing.assert_allclose(row.t_stat ** 2, float(np.squeeze(chisq)), rtol=1e-8)
            np.testing.assert_allclose(row.p, float(np.squeeze(p)), rtol=1e-8)
        else:  # the saddlepoint p of an independent solver (brentq on the pooled samples' CGF)
            g = x - C[base] @ np.linalg.solve(C[base].T @ (C[base] * w[:, None]), C[base].T @ (w * x))
            np.testing.assert_allclose(row.p, _spa_oracle(g, mu, float(g @ (y[base] - mu))), rtol=1e-6)
    regenie = open(out / "cc.regenie").read().splitlines()
    assert regenie[0].split() == "CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ TEST BETA SE CHISQ LOG10P".split()
    assert len(regenie) == 301


def test_the_null_model_equals_statsmodels(cohort, study):
    import statsmodels.api as sm

    from dash_spark.multiparty.exchange import locate_manifest

    _, _, _, rounds = study
    kinds = [locate_manifest(r)[1].settings["kind"] for r in rounds]
    n_steps, n_spa = kinds.count("null-step"), kinds.count("spa-step")
    # the Newton steps, the scan round, then the saddlepoint rounds (bracket and 0 at once, then Newton)
    assert kinds == ["null-step"] * n_steps + ["score-scan"] + ["spa-step"] * n_spa and 3 <= n_spa <= 12, kinds
    _, scan = locate_manifest(rounds[n_steps])
    assert len(scan.settings["null_rounds"]) == n_steps
    y, C, base, _ = _analysed(cohort)
    ref = sm.GLM(y[base], C[base], family=sm.families.Binomial()).fit(tol=1e-13)
    np.testing.assert_allclose(scan.settings["gamma"], ref.params, rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# attacks on the null model's rounds


def _forge(st, base_path, settings_change, *, round_id=None, signer=None, named=None):
    """The coordinator writes and signs a round of its own making (a copy of the base round's
    first step with ``settings_change``)."""
    from dash_spark.multiparty.exchange import Manifest, locate_manifest, write_manifest
    from dash_spark.multiparty.keys import load_private
    from dash_spark.multiparty.rounds import sign_manifest

    uri, base = locate_manifest(base_path)
    coord = load_private(st.coord)
    named_path, named = named, coord if named is None else load_private(named)
    settings = {"kind": "null-step", "base_round": base.round_id, "phenotype": "cc", "phenotype_index": 0,
                "step": 1, "null_rounds": [], "gamma": [0.0] * 4, "variant_hash": base.settings["variant_hash"],
                "self_masks": False}
    settings.update(settings_change)
    m = Manifest.new(base.study, base.parties, settings, coordinator=named.public(), round_id=round_id)
    path = write_manifest(uri, m)
    if signer is None or signer == named_path:
        sign_manifest(uri, m, named)
    else:  # a signature by another key than the one the manifest names
        from dash_spark.multiparty.exchange import canonical_json

        key = load_private(signer)
        with open(os.path.join(os.path.dirname(path), "manifest.sig"), "wb") as fh:
            fh.write(canonical_json({"coordinator": named.party, "signature": key.sign(
                canonical_json(m.to_dict(), where="manifest")).hex()}))
    return path


def _refused(st, cohort, manifest, p="alice", *, join=True):
    if join:
        st.join(manifest)  # (joining publishes a round key only)
    code, _, err = st.compress(manifest, p, *_data(cohort, p))
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    return err


def test_a_coordinator_cannot_choose_the_steps(cohort, tmp_path, spark):
    st, base, out = _base(cohort, tmp_path)
    step1 = _advance(st, base, out)
    from dash_spark.multiparty.exchange import locate_manifest

    gamma = locate_manifest(step1)[1].settings["gamma"]
    # coefficients of its own choosing for step 1
    bad = _forge(st, base, {"gamma": [g + 0.5 for g in gamma]})
    assert "not those of the pooled Newton steps" in _refused(st, cohort, bad)
    # the scan round before the fit converged (at the start's coefficients)
    early = _forge(st, base, {"kind": "score-scan", "step": None, "gamma": gamma})
    assert "has not converged" in _refused(st, cohort, early)
    # a second step before the first was published: its chain lacks step 1's sums
    skip = _forge(st, base, {"step": 2, "null_rounds": []})
    assert "its chain holds 0 step(s)" in _refused(st, cohort, skip)
    # a chain naming a path, not a round id
    path_like = _forge(st, base, {"step": 2, "null_rounds": ["../sc"]})
    assert "not a round id" in _refused(st, cohort, path_like)
    # a chain through a round of another phenotype or base
    other = _forge(st, base, {"phenotype": "cc", "phenotype_index": 1})
    assert "not one of the base round's" in _refused(st, cohort, other)
    # a step signed by another key than the coordinator's, or naming another party as coordinator
    bob = str(st.keys / "bob.key")
    forged = _forge(st, base, {"gamma": gamma}, signer=bob)
    assert "does not verify" in _refused(st, cohort, forged, join=False)
    swapped = _forge(st, base, {"gamma": gamma}, signer=bob, named=bob)
    assert "base round of this coordinator" in _refused(st, cohort, swapped)
    # nobody published anything in these rounds
    for m in (bad, early, skip, path_like, other, forged, swapped):
        assert not os.path.exists(os.path.join(os.path.dirname(m), "shares"))
    # the honest step goes through, once per party
    st.join(step1)
    for p in PARTIES:
        code, _, err = st.compress(step1, p, *_data(cohort, p))
        assert code == 0, err[-3000:]
    err = _refused(st, cohort, step1, join=False)  # a second share of the same step
    assert "already" in err, err
    # a step after the chain: step 2 is due; a forged step 2 at other coefficients is refused, the
    # coordinator's honest one is accepted
    step1_round = os.path.basename(os.path.dirname(step1))
    bad2 = _forge(st, base, {"step": 2, "null_rounds": [step1_round], "gamma": gamma})
    assert "not those of the pooled Newton steps" in _refused(st, cohort, bad2)


def test_a_step_after_convergence_and_replays_are_refused(cohort, study, tmp_path):
    st, base, out, rounds = study
    from dash_spark.multiparty.exchange import locate_manifest

    scan = next(m for m in (locate_manifest(r)[1] for r in rounds) if m.settings["kind"] == "score-scan")
    chain = scan.settings["null_rounds"]
    # one more Newton step after the fit converged (at the final coefficients)
    extra = _forge(st, base, {"step": len(chain) + 1, "null_rounds": chain, "gamma": scan.settings["gamma"]})
    err = _refused(st, cohort, extra)
    assert "fit ended" in err
    # a step's share copied into the next step's round (a replay) does not verify there
    uri, m1 = locate_manifest(rounds[0])
    _, m2 = locate_manifest(rounds[1])
    src = os.path.join(os.path.dirname(rounds[0]), "shares")
    dst = os.path.join(os.path.dirname(rounds[1]), "shares")
    aside = dst + ".saved"
    os.rename(os.path.join(dst, "alice"), aside)
    try:
        shutil.copytree(os.path.join(src, "alice"), os.path.join(dst, "alice"))
        code, _, err2 = st.run("combine", "--manifest", base, "--out", tmp_path / "o2", "--sign-key", st.coord)
        assert code == 2 and "Traceback" not in err2 and "alice" in err2, err2
        assert not (tmp_path / "o2").exists()
    finally:
        shutil.rmtree(os.path.join(dst, "alice"), ignore_errors=True)
        os.rename(aside, os.path.join(dst, "alice"))


def test_a_party_whose_samples_changed_is_refused_at_a_step(cohort, tmp_path, spark):
    st, base, out = _base(cohort, tmp_path)
    step1 = _advance(st, base, out)
    _, files, pheno, prefixes, _ = cohort
    fewer = tmp_path / "fewer.pheno"
    lines = open(pheno).read().splitlines()
    alice = {ln.split()[1] for ln in open(prefixes["alice"] + ".fam")}
    dropped = 0
    with open(fewer, "w") as fh:
        for ln in lines:
            if dropped < 3 and ln.split()[1] in alice and ln.split()[2] in ("1", "2"):
                dropped += 1
                continue
            fh.write(ln + "\n")
    st.join(step1)
    code, _, err = st.compress(step1, "alice", "--pheno", fewer, "--covar", files.covar, "--bfile", prefixes["alice"])
    assert code == 2 and "samples differ" in err, err[-2000:]


def test_an_altered_chain_state_is_refused(cohort, study, tmp_path):
    """The coordinator's chain (the step rounds) is signed: one altered on the exchange is not used."""
    st, base, _, _ = study
    path = os.path.join(os.path.dirname(base), "score", "cc.json")
    with _edited(path, lambda obj: obj["body"].update(null_rounds=obj["body"]["null_rounds"][:-1])):
        code, _, err = st.run("combine", "--manifest", base, "--out", tmp_path / "o3", "--sign-key", st.coord)
        assert code == 2 and "forged or altered" in err, err
        assert not (tmp_path / "o3").exists()


@contextlib.contextmanager
def _edited(path, change):
    """The JSON file ``path`` edited by ``change`` (as an exchange writer would) for the block."""
    saved = open(path, "rb").read()
    obj = json.loads(saved)
    change(obj)
    try:
        with open(path, "w") as fh:
            json.dump(obj, fh)
        yield
    finally:
        with open(path, "wb") as fh:
            fh.write(saved)


def test_saddlepoint_rounds_follow_the_replayed_solver_only(cohort, study):
    """A saddlepoint round after the equations were solved, out of order, or on another round than
    the scan round, is refused: the t values a party evaluates its samples' CGF at are its own
    replay's, never the coordinator's."""
    from dash_spark.multiparty.exchange import locate_manifest

    st, base, _, rounds = study
    ms = [locate_manifest(r)[1] for r in rounds]
    scan = next(m for m in ms if m.settings["kind"] == "score-scan")
    spa = [m.round_id for m in ms if m.settings["kind"] == "spa-step"]
    common = {"kind": "spa-step", "scan_round": scan.round_id, "null_rounds": scan.settings["null_rounds"],
              "gamma": scan.settings["gamma"]}
    done = _forge(st, base, dict(common, step=len(spa) + 1, spa_rounds=spa))
    assert "were solved" in _refused(st, cohort, done)
    skipped = _forge(st, base, dict(common, step=len(spa), spa_rounds=spa[:-2]))
    assert "its chain holds" in _refused(st, cohort, skipped)
    on_a_step = _forge(st, base, dict(common, step=1, spa_rounds=[], scan_round=scan.settings["null_rounds"][-1]))
    assert "is not the scan round of this chain" in _refused(st, cohort, on_a_step)
    for m in (done, skipped, on_a_step):
        assert not os.path.exists(os.path.join(os.path.dirname(m), "shares"))


def test_an_altered_step_manifest_is_refused_by_the_coordinator(cohort, study, tmp_path):
    """An exchange writer's edit of a step's manifest (its signature no longer verifies): the
    coordinator's combine refuses it before adding any share."""
    st, base, _, rounds = study
    with _edited(rounds[0], lambda obj: obj["settings"].update(gamma=[g + 1.0 for g in obj["settings"]["gamma"]])):
        code, _, err = st.run("combine", "--manifest", base, "--out", tmp_path / "o4", "--sign-key", st.coord)
        assert code == 2 and "does not verify" in err, err
        assert not (tmp_path / "o4").exists()


def test_bad_inputs_of_a_score_study(cohort, tmp_path, spark):
    """A quantitative phenotype, sex-chromosome variants and --pheno-name outside a score study are
    one-line errors (exit 2) naming the fix; nothing is published."""
    _, files, pheno, prefixes, _ = cohort
    st = Study(tmp_path, PARTIES, name="bad")
    base = st.manifest("--kind", "score", "--bim", files.bfile + ".bim")
    st.join(base)
    code, _, err = st.compress(base, "alice", "--pheno", files.pheno, "--covar", files.covar, "--bfile",
                               prefixes["alice"])
    assert code == 2 and "not case/control" in err and "Traceback" not in err, err
    x = tmp_path / "alice_x"
    for ext in ("bed", "fam"):
        shutil.copyfile(f"{prefixes['alice']}.{ext}", f"{x}.{ext}")
    lines = open(prefixes["alice"] + ".bim").read().splitlines()
    with open(f"{x}.bim", "w") as fh:
        fh.write("\n".join(["X" + ln[ln.index("\t"):] if i < 3 else ln for i, ln in enumerate(lines)]) + "\n")
    code, _, err = st.compress(base, "alice", "--pheno", pheno, "--covar", files.covar, "--bfile", str(x))
    assert code == 2 and "autosomes only" in err, err
    code, _, err = st.compress(base, "alice", "--pheno", pheno, "--covar", files.covar, "--bfile", prefixes["alice"],
                               "--pred", str(tmp_path / "any_pred.list"))
    assert code == 2 and "--pred" in err and "Traceback" not in err, err
    assert not os.path.exists(os.path.join(os.path.dirname(base), "shares"))
    code, _, err = st.run("party", "manifest", "--study", "bad", "--exchange", tmp_path / "exchange", "--kind", "score",
                          "--linear-for-binary", "--sign-key", st.coord,
                          *[x for p in PARTIES for x in ("--party", f"{p}={st.keys / p}.pub")])
    assert code == 2 and "--linear-for-binary" in err, err
    lin = st.manifest("--bim", files.bfile + ".bim")
    code, _, err = st.run("combine", "--manifest", lin, "--out", tmp_path / "o", "--pheno-name", "cc")
    assert code == 2 and "score study" in err, err
