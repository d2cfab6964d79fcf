"""The multi-party layer against a party, an exchange writer or an operator who does not follow the
protocol: each attack of the security review is run and must fail, naming the party or file and
changing nothing on the exchange."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np
import pytest

from dash_spark.cli import main
from dash_spark.multiparty import ProtocolError
from dash_spark.multiparty.encoding import decode, encode
from dash_spark.multiparty.exchange import (DuplicateShareError, Location, Manifest, locate_manifest, mask_stats,
                                            publish_share, read_shares, write_manifest)
from dash_spark.multiparty.guard import OwnSamples
from dash_spark.multiparty.keys import PrivateKeys
from dash_spark.multiparty.masking import mask_stream, pair_sign
from dash_spark.multiparty.rounds import (GuardSettings, Ledger, TrustFile, close_if_complete, combine, join_round,
                                          unmask_round,
                                          key_fingerprint, publish_stats, read_signed, round_pair_seeds,
                                          sign_manifest, signed_record)

from .helpers import snapshot
from .party_flow import Study

PARTIES = ["a", "b", "c", "d", "e"]
TEST_GUARD = GuardSettings(min_n=0)  # the tests' parties have 40 samples each


def det_keys(name: str) -> PrivateKeys:
    return PrivateKeys.from_raw(name, hashlib.sha256(b"x|" + name.encode()).digest(),
                                hashlib.sha256(b"e|" + name.encode()).digest())




class Lab:
    """Five parties and a coordinator with pinned keys, ledgers under ``tmp/keys``, one exchange."""

    def __init__(self, tmp, parties=PARTIES, round_id="r1", settings=None, exchange="exchange"):
        self.tmp = tmp
        self.keys = {p: det_keys(p) for p in parties}
        self.coord = det_keys("coord")
        (tmp / "keys").mkdir(exist_ok=True)
        self.trust = TrustFile.load(str(tmp / "trust.txt"), missing_ok=True)
        for name, k in list(self.keys.items()) + [("coord", self.coord)]:
            self.trust.add(name, key_fingerprint(k))
        self.uri = str(tmp / exchange)
        self.manifest = self.new_manifest(round_id, settings)

    def new_manifest(self, round_id, settings=None, keys=None):
        m = Manifest.new("s", [k.public() for k in (keys or self.keys).values()], settings or {"kind": "regression"},
                         round_id=round_id, coordinator=self.coord.public())
        write_manifest(self.uri, m)
        sign_manifest(self.uri, m, self.coord)
        return m

    def ledger(self, p):
        return Ledger(str(self.tmp / "keys" / p))

    def join(self, parties=None, manifest=None, uri=None):
        for p in parties or self.keys:
            join_round(uri or self.uri, manifest or self.manifest, p, self.keys[p], self.ledger(p), trust=self.trust)

    def stats(self, p):
        r = np.random.default_rng(ord(p))
        return {"t0.CtC": r.normal(0, 50, (3, 3)), "variants": r.normal(0, 1e3, (40, 7))}

    def own(self, p, n=40, drop=()):
        """Party p's own samples: n of them (less those in ``drop``), one phenotype."""
        iids = [f"{p}{i}" for i in range(n) if f"{p}{i}" not in drop]
        return OwnSamples(("t0",), (len(iids),), tuple(iids))

    def publish(self, p, manifest=None, uri=None, own=None):
        return publish_stats(uri or self.uri, manifest or self.manifest, p, self.keys[p], self.stats(p),
                             {"kind": "regression"}, ledger=self.ledger(p), own=own or self.own(p))

    def unmask(self, parties, manifest=None, uri=None, guard=TEST_GUARD):
        """Every party in ``parties`` runs its side of the closed round until done (a pass per step);
        returns their reveals' paths."""
        return unmask_all(uri or self.uri, manifest or self.manifest, {p: self.keys[p] for p in parties},
                          self.ledger, guard=guard)


def unmask_all(uri, manifest, keys, ledger_of, guard=TEST_GUARD):
    done = {}
    for _ in range(4):
        for p, k in keys.items():
            if p not in done:
                ok, what = unmask_round(uri, manifest, p, k, ledger_of(p), guard=guard)
                if ok:
                    done[p] = what
    assert sorted(done) == sorted(keys), done
    return done


# ---------------------------------------------------------------------------------- mask reuse


def test_a_party_never_publishes_twice_in_a_round(tmp_path):
    lab = Lab(tmp_path)
    lab.join()
    lab.publish("a")
    # 1. the share is deleted from the exchange and the party runs again: the ledger refuses
    shutil.rmtree(os.path.join(lab.uri, "s", "r1", "shares", "a"))
    before = snapshot(lab.uri)
    with pytest.raises(DuplicateShareError, match="party 'a' already published.*whatever the exchange shows"):
        lab.publish("a")
    assert snapshot(lab.uri) == before
    # 2. the round's manifest copied to another exchange: joining there is fine, publishing is not
    other = str(tmp_path / "elsewhere")
    os.makedirs(os.path.join(other, "s", "r1"))
    for f in ("manifest.json", "manifest.sig"):
        shutil.copy(os.path.join(lab.uri, "s", "r1", f), os.path.join(other, "s", "r1", f))
    lab.join(["b", "c", "d", "e"], uri=other)
    join_round(other, lab.manifest, "a", lab.keys["a"], lab.ledger("a"), trust=lab.trust)
    before = snapshot(other)
    with pytest.raises(DuplicateShareError, match="party 'a' already published"):
        lab.publish("a", uri=other)
    assert snapshot(other) == before
    # 3. a new manifest that reuses the round id: refused at joining, before anything is published
    reused = Manifest.new("s", [k.public() for k in lab.keys.values()], {"kind": "regression", "x": 1},
                          round_id="r1", coordinator=lab.coord.public())
    third = str(tmp_path / "third")
    write_manifest(third, reused)
    sign_manifest(third, reused, lab.coord)
    with pytest.raises(ProtocolError, match="round id 'r1' was used before"):
        join_round(third, reused, "a", lab.keys["a"], lab.ledger("a"), trust=lab.trust)
    assert not os.path.exists(os.path.join(third, "s", "r1", "keys"))


def test_masks_come_from_fresh_round_keys(tmp_path):
    """Two rounds of the same parties share no mask: the pair seeds come from per-round keys."""
    lab = Lab(tmp_path)
    lab.join(["a", "b"])
    m2 = lab.new_manifest("r2")
    lab.join(["a", "b"], manifest=m2)
    s1 = lab.ledger("a").secrets(lab.manifest)
    s2 = lab.ledger("a").secrets(m2)
    assert s1.public() != s2.public()
    assert s1.self_seed is None and s2.self_seed is None  # drawn at publication, not at join
    pubs1 = {p: s.public() for p, s in (("b", lab.ledger("b").secrets(lab.manifest)),)}
    pubs2 = {p: s.public() for p, s in (("b", lab.ledger("b").secrets(m2)),)}
    assert round_pair_seeds(lab.manifest, "a", s1, pubs1) != round_pair_seeds(m2, "a", s2, pubs2)
    assert oct(os.stat(lab.ledger("a").path).st_mode)[-3:] == "600"


# ---------------------------------------------------------------------------------- roster


def test_a_swapped_key_in_the_manifest_is_refused(tmp_path):
    lab = Lab(tmp_path, parties=["a", "b", "c"])
    mallory = det_keys("b")  # same name, the attacker's own keys
    mallory = PrivateKeys.from_raw("b", hashlib.sha256(b"mallory-x").digest(), hashlib.sha256(b"mallory-e").digest())
    path = os.path.join(lab.uri, "s", "r1", "manifest.json")
    doc = json.loads(open(path).read())
    doc["parties"]["b"] = mallory.public().manifest_entry()
    # 1. the exchange's manifest rewritten: its signature no longer verifies
    open(path, "w").write(json.dumps(doc))
    _, forged = locate_manifest(path)
    with pytest.raises(ProtocolError, match="signature .* does not verify with coordinator 'coord'"):
        join_round(lab.uri, forged, "a", lab.keys["a"], lab.ledger("a"), trust=lab.trust)
    # 2. re-signed by a coordinator key the party did not pin
    fake_coord = PrivateKeys.from_raw("coord", hashlib.sha256(b"fc-x").digest(), hashlib.sha256(b"fc-e").digest())
    m = Manifest.new("s", [lab.keys["a"].public(), mallory.public(), lab.keys["c"].public()], {"kind": "regression"},
                     round_id="r9", coordinator=fake_coord.public())
    write_manifest(lab.uri, m)
    sign_manifest(lab.uri, m, fake_coord)
    with pytest.raises(ProtocolError, match="coordinator 'coord' differs from the one pinned"):
        join_round(lab.uri, m, "a", lab.keys["a"], lab.ledger("a"), trust=lab.trust)
    # 3. signed by the real coordinator, but with a key for b that a did not pin: b is named
    m = Manifest.new("s", [lab.keys["a"].public(), mallory.public(), lab.keys["c"].public()], {"kind": "regression"},
                     round_id="r10", coordinator=lab.coord.public())
    write_manifest(lab.uri, m)
    sign_manifest(lab.uri, m, lab.coord)
    with pytest.raises(ProtocolError, match="key of party 'b' differs from the one pinned"):
        join_round(lab.uri, m, "a", lab.keys["a"], lab.ledger("a"), trust=lab.trust)
    for r in ("r1", "r9", "r10"):  # nothing was published by a
        assert not os.path.exists(os.path.join(lab.uri, "s", r, "keys", "a.json"))


# ---------------------------------------------------------------------------------- dropouts


def test_a_dropped_partys_late_share_stays_hidden(tmp_path):
    lab = Lab(tmp_path)
    lab.join()  # everyone joined; e then drops before publishing
    for p in "abcd":
        lab.publish(p)
    body = close_if_complete(lab.uri, lab.manifest, lab.coord, allow_dropouts=True)
    assert body["survivors"] == ["a", "b", "c", "d"] and body["dropped"] == ["e"]
    lab.unmask("abcd")
    for p in "abcd":
        rec = json.loads(open(os.path.join(lab.uri, "s", "r1", "unmask", f"{p}.json")).read())["body"]
        assert set(rec["pair_seeds"]) == {"e"}  # only the pair seeds with the dropped party, and its own seed
        assert lab.ledger(p).secrets(lab.manifest) is None  # the round secrets are gone
    headers, pooled = combine(lab.uri, lab.manifest)
    assert sorted(headers) == ["a", "b", "c", "d"]
    for name in ("t0.CtC", "variants"):
        want = sum(lab.stats(p)[name] for p in "abcd")
        np.testing.assert_allclose(pooled[name], want, rtol=1e-12, atol=1e-9)
    # e comes back: it may not publish in the closed round, nor reveal its seed for it
    with pytest.raises(ProtocolError, match="round is closed"):
        lab.publish("e")
    with pytest.raises(ProtocolError, match="declared party 'e' dropped"):
        unmask_round(lab.uri, lab.manifest, "e", lab.keys["e"], lab.ledger("e"))
    # a late share lands anyway (written past the checks, with a self seed of its own); everything on
    # the exchange cannot unmask it
    sec = lab.ledger("e").secrets(lab.manifest)
    sec = type(sec)(sec.ephemeral, os.urandom(32))
    pubs = {p: bytes.fromhex(json.loads(open(os.path.join(lab.uri, "s", "r1", "keys", f"{p}.json")).read())
                             ["body"]["x25519"]) for p in PARTIES}
    seeds = round_pair_seeds(lab.manifest, "e", sec, pubs)
    encoded = {n: encode(v, lab.manifest.frac_bits, name=n) for n, v in lab.stats("e").items()}
    publish_share(lab.uri, lab.manifest, "e", lab.keys["e"],
                  mask_stats(lab.manifest, "e", lab.keys["e"], encoded, seeds=seeds, self_seed=sec.self_seed))
    share = read_shares(lab.uri, lab.manifest, parties=["e"])["e"][1]["variants"].copy()
    from dash_spark.multiparty.encoding import add_into

    for p in "abcd":  # the attacker removes every pair mask of e, from the survivors' reveals
        rec = json.loads(open(os.path.join(lab.uri, "s", "r1", "unmask", f"{p}.json")).read())["body"]
        stream = mask_stream(bytes.fromhex(rec["pair_seeds"]["e"]), "variants", share.reshape(-1, 2).shape[0])
        add_into(share.reshape(-1, 2), stream, subtract=not pair_sign("e", p, PARTIES))
    attempt = decode(share, lab.manifest.frac_bits)
    truth = lab.stats("e")["variants"]
    close = np.isclose(attempt, truth, rtol=1e-3, atol=1e-3)
    assert close.mean() < 0.01  # still behind e's self-mask: unrelated to e's statistics
    # and the released sum is unchanged by the late share
    _, again = combine(lab.uri, lab.manifest)
    np.testing.assert_array_equal(again["variants"], pooled["variants"])


def test_every_party_needed_without_dropouts_and_survivor_set_is_signed(tmp_path):
    lab = Lab(tmp_path, parties=["a", "b", "c"], settings={"kind": "regression", "threshold": 2})
    lab.join()
    lab.publish("a")
    lab.publish("b")
    with pytest.raises(ProtocolError, match="missing from 'c'"):
        close_if_complete(lab.uri, lab.manifest, lab.coord)
    body = close_if_complete(lab.uri, lab.manifest, lab.coord, allow_dropouts=True)
    path = os.path.join(lab.uri, "s", "r1", "survivors.json")
    doc = json.loads(open(path).read())
    doc["body"]["survivors"] = ["a"]  # an exchange writer shrinks the set: a would reveal too much
    doc["body"]["dropped"] = ["b", "c"]
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(ProtocolError, match="survivor set of coordinator 'coord' does not verify"):
        unmask_round(lab.uri, lab.manifest, "a", lab.keys["a"], lab.ledger("a"))
    assert body["survivors"] == ["a", "b"]


# ---------------------------------------------------------------------------------- command line


@pytest.fixture
def cli_study(tmp_path):
    from .oracle_data import make_files

    files = make_files(tmp_path, np.random.default_rng(7), n=240, m=220, name="g")
    lines = open(files.pheno).read().splitlines()
    phenos = {}
    for i, p in enumerate(("alice", "bob", "carol")):
        path = tmp_path / f"{p}.pheno"
        rows = lines[1 + i :: 3] if p != "carol" else lines[3::3][:15]  # carol: a small party
        path.write_text("\n".join([lines[0]] + rows) + "\n")
        phenos[p] = str(path)
    return Study(tmp_path, ["alice", "bob", "carol"]), files, phenos


def test_rerun_in_a_finished_round_changes_nothing(cli_study):
    st, files, phenos = cli_study
    manifest = st.manifest()
    st.join(manifest)
    for p in ("alice", "bob", "carol"):
        code, _, err = st.compress(manifest, p, "--pheno", phenos[p], "--covar", files.covar)
        assert code == 0, err
    before = snapshot(st.tmp / "exchange")
    code, _, err = st.compress(manifest, "bob", "--pheno", phenos["bob"], "--covar", files.covar,
                               "--bfile", files.bfile)
    assert code == 2 and "already published" in err and "bob" in err
    assert snapshot(st.tmp / "exchange") == before


def test_path_like_phenotype_names_stay_inside_out(cli_study, tmp_path):
    st, files, phenos = cli_study
    for p in ("alice", "bob", "carol"):
        text = open(phenos[p]).read().splitlines()
        text[0] = text[0].replace("pheno1", "../escape").replace("pheno2", "a/b")
        (tmp_path / f"{p}.odd").write_text("\n".join(text) + "\n")
    manifest = st.manifest()
    st.join(manifest)
    for p in ("alice", "bob", "carol"):
        code, _, err = st.compress(manifest, p, "--pheno", tmp_path / f"{p}.odd", "--covar", files.covar)
        assert code == 0, err
    st.finish(manifest, tmp_path / "out" / "res", "--allow-small-release")
    assert sorted(os.listdir(tmp_path / "out")) == ["res"]
    names = os.listdir(tmp_path / "out" / "res")
    assert ".._escape.coefficients.tsv" in names and "a_b.coefficients.tsv" in names


def test_manifest_by_directory_relative_path_or_copy(cli_study, tmp_path, monkeypatch):
    st, files, phenos = cli_study
    manifest = st.manifest()
    round_dir = os.path.dirname(manifest)
    st.ok("party", "join", *st.party("alice", round_dir))  # the round directory
    monkeypatch.chdir(tmp_path)
    st.ok("party", "join", *st.party("bob", os.path.relpath(manifest)))  # a relative path
    copy = tmp_path / "mine" / "manifest.json"
    copy.parent.mkdir()
    shutil.copy(manifest, copy)
    code, _, err = st.run("party", "join", *st.party("carol", copy))
    assert code == 2 and "not at <exchange>" in err
    assert sorted(os.listdir(os.path.join(round_dir, "keys"))) == ["alice.json", "bob.json"]


def test_unpinned_party_or_missing_trust_stops_before_anything(tmp_path, capsys):
    st = Study(tmp_path, ["alice", "bob"])
    manifest = st.manifest()
    other = TrustFile(str(tmp_path / "partial.txt"), {})
    other.add("coord", TrustFile.load(st.trust).entries["coord"])
    other.add("alice", TrustFile.load(st.trust).entries["alice"])
    code = main(["-q", "party", "join", "--manifest", manifest, "--party", "alice", "--key",
                 str(tmp_path / "keys" / "alice.key"), "--trust", other.path])
    err = capsys.readouterr().err
    assert code == 2 and "party 'bob' is not in the trust file" in err
    assert not os.path.exists(os.path.join(os.path.dirname(manifest), "keys"))


def test_signed_selection_state_detects_tampering(tmp_path):
    coord = det_keys("coord")
    loc = Location(str(tmp_path))
    path = loc.join("state.json")
    loc.write_atomic(path, signed_record({"selected": [1, 2]}, coord), what="state")
    assert read_signed(loc, path, coord.public(), what="selection state", who="c") == {"selected": [1, 2]}
    doc = json.loads(open(path).read())
    doc["body"]["selected"] = [1, 3]
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(ProtocolError, match="selection state .* does not verify"):
        read_signed(loc, path, coord.public(), what="selection state", who="c")


def test_combine_waits_for_the_shares_and_adds_each_as_it_lands(cli_study, tmp_path):
    """The coordinator's combine --wait and the parties' unmask --wait start before the last share
    exists: combine adds the shares as they land, closes the round once all are in, waits for the
    reveals and writes what a combine after the fact writes."""
    import subprocess
    import sys

    st, files, phenos = cli_study
    manifest = st.manifest()
    st.join(manifest)
    for p in ("alice", "bob"):
        assert st.compress(manifest, p, "--pheno", phenos[p], "--covar", files.covar)[0] == 0
    cli = [sys.executable, "-m", "dash_spark.cli"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    procs = [subprocess.Popen(cli + ["combine", "--manifest", manifest, "--out", str(tmp_path / "waited"),
                                     "--sign-key", st.coord, "--wait", "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
    procs += [subprocess.Popen(cli + ["-q", "party", "unmask", *map(str, st.party(p, manifest)), "--wait", "120",
                                      "--allow-small-release"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for p in ("alice", "bob", "carol")]
    survivors = os.path.join(os.path.dirname(manifest), "survivors.json")
    time.sleep(1.5)
    assert not os.path.exists(survivors)  # combine waits for carol's share before closing
    assert st.compress(manifest, "carol", "--pheno", phenos["carol"], "--covar", files.covar)[0] == 0
    outs = [pr.communicate(timeout=120) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), [o[1][-2000:] for o in outs]
    assert "closed with survivors alice, bob, carol" in outs[0][1]
    assert "the 3 shares were verified and added as they landed" in outs[0][1]
    st.ok("combine", "--manifest", manifest, "--out", tmp_path / "after")
    for name in ("pheno1.coefficients.tsv", "pheno2.coefficients.tsv"):
        assert (tmp_path / "waited" / name).read_text() == (tmp_path / "after" / name).read_text()
