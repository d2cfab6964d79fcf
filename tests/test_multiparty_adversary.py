"""The multi-party layer against a coordinator, an exchange writer and colluding parties who do not
follow the protocol (issue 21): each attack is run against the code and then tries to recover the
data numerically from everything the exchange holds (plus what the colluders know), and must fail.

The attacker's tool is :func:`recover`: a party's share with every mask removed whose seed or key is
on the exchange (or known to a colluder). A control shows that it does recover a share once the
seeds are known, so a failed recovery means the seeds were not revealed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import numpy as np
import pytest

from dash_spark.multiparty import ProtocolError
from dash_spark.multiparty.encoding import add_into, decode
from dash_spark.multiparty.exchange import Location, Manifest, canonical_json, read_shares, write_manifest
from dash_spark.multiparty.guard import ReleaseRefused
from dash_spark.multiparty.masking import mask_stream, pair_sign, self_mask_stream
from dash_spark.multiparty.rounds import (CloseRecord, GuardSettings, RevealsMissing, TrustFile, check_step_release,
                                          close_if_complete, close_round, combine, join_round, read_round_keys,
                                          round_pair_seeds, sign_manifest, signed_record, unmask_round)

from .helpers import snapshot
from .party_flow import Study
from .test_multiparty_attacks import Lab

NAMES = ("t0.CtC", "variants")


def recover(uri, manifest, party, *, names=NAMES, extra_pair=None, self_seed=None) -> dict[str, np.ndarray]:
    """An attacker's best view of ``party``'s statistics: its share, less every self-mask and pair
    mask whose seed a reveal on the exchange holds, or a colluder knows (``extra_pair``: ``{partner:
    pair seed}``, ``self_seed``)."""
    loc = Location(uri)
    revealed = []
    for p in manifest.party_names:
        path = loc.join(manifest.study, manifest.round_id, "unmask", f"{p}.json")
        if loc.exists(path):
            revealed.append(json.loads(loc.read(path, what="reveal"))["body"])
    seeds = {} if self_seed is None else {"self": self_seed}
    for rec in revealed:
        if rec["party"] == party:
            seeds["self"] = bytes.fromhex(rec["self_seed"])
        elif party in rec.get("pair_seeds", {}):
            seeds[rec["party"]] = bytes.fromhex(rec["pair_seeds"][party])
    seeds.update(extra_pair or {})
    share = read_shares(uri, manifest, parties=[party])[party][1]
    out = {}
    for name in names:
        value = share[name]
        if hasattr(value, "parts"):  # a parted statistic: its rows, in order
            value = np.concatenate([arr for _, _, arr in sorted(value.parts, key=lambda t: t[0])])
        arr = np.array(value, dtype=np.uint64, order="C")
        flat = arr.reshape(-1, 2)
        for who, seed in seeds.items():
            if who == "self":
                add_into(flat, self_mask_stream(seed, name, flat.shape[0]), subtract=True)
            else:  # undo what the party did with the stream it shares with ``who``
                add_into(flat, mask_stream(seed, name, flat.shape[0]), subtract=not pair_sign(party, who,
                                                                                          manifest.party_names))
        out[name] = decode(arr, manifest.frac_bits)
    return out


def hidden(got: dict, truth: dict) -> bool:
    """Whether the recovered values are unrelated to the truth (fewer than 1% within 1e-3)."""
    return all(np.isclose(got[n], truth[n], rtol=1e-3, atol=1e-3).mean() < 0.01 for n in truth)


def truth_of(lab, p):
    return {n: lab.stats(p)[n] for n in NAMES}


def pooled_of(lab, parties):
    return {n: sum(lab.stats(p)[n] for p in parties) for n in NAMES}


def sum_hidden(lab, manifest, survivors, uri=None):
    """Nothing on the exchange sums to the survivors' statistics: combine cannot, and neither can the
    attacker's own sum of the shares less every revealed mask."""
    uri = uri or lab.uri
    with pytest.raises(ProtocolError):
        combine(uri, manifest)
    got = {n: sum(recover(uri, manifest, p)[n] for p in survivors) for n in NAMES}
    return hidden(got, pooled_of(lab, survivors))


def fives(tmp_path, **kw):
    lab = Lab(tmp_path, **kw)  # parties a..e, threshold 3
    lab.join()
    return lab


def closed_without_de(lab):
    """a, b, c publish; the round closes with them (d and e dropped); they unmask."""
    for p in "abc":
        lab.publish(p)
    record = CloseRecord(str(lab.tmp / "keys" / "coord.key"))
    body = close_if_complete(lab.uri, lab.manifest, lab.coord, allow_dropouts=True, record=record)
    assert body["survivors"] == ["a", "b", "c"]
    lab.unmask("abc")
    return record


def released(tmp_path, parties):
    """A round of ``parties`` (each with its 40 samples) published, closed, unmasked: released."""
    lab = Lab(tmp_path, parties=list(parties))
    lab.join()
    for p in parties:
        lab.publish(p)
    close_if_complete(lab.uri, lab.manifest, lab.coord)
    lab.unmask(parties)
    return lab


def survivors_file(lab, manifest=None):
    m = manifest or lab.manifest
    return os.path.join(lab.uri, m.study, m.round_id, "survivors.json")


# ---------------------------------------------------------------------------------- the recovery works


def test_recover_finds_a_share_once_its_seeds_are_known(tmp_path):
    """The control: with the party's own self seed and pair seeds, the share is its statistics."""
    lab = fives(tmp_path)
    for p in "abcde":
        lab.publish(p)
    d = lab.ledger("d").secrets(lab.manifest)
    pubs, _ = read_round_keys(lab.uri, lab.manifest)
    pair = round_pair_seeds(lab.manifest, "d", d, pubs)
    got = recover(lab.uri, lab.manifest, "d", extra_pair=pair, self_seed=d.self_seed)
    for n in NAMES:
        np.testing.assert_allclose(got[n], lab.stats("d")[n], rtol=1e-12, atol=1e-9)
    assert hidden(recover(lab.uri, lab.manifest, "d", extra_pair={k: v for k, v in pair.items() if k != "e"},
                          self_seed=d.self_seed), truth_of(lab, "d"))  # one pair mask left: noise


# ---------------------------------------------------------------------------------- 1. re-signed survivor sets


def test_a_deleted_survivor_set_is_written_back_not_resigned(tmp_path):
    """The exchange writer deletes survivors.json after the survivors revealed (their pair seeds with
    d are out); d's late share lands; the honest coordinator's next close gives the very same signed
    set back (its record), so d stays dropped and its share hidden."""
    lab = fives(tmp_path)
    record = closed_without_de(lab)
    signed = open(survivors_file(lab), "rb").read()
    os.remove(survivors_file(lab))
    lab.publish("d")  # the round looks open: d's late share lands
    body = close_if_complete(lab.uri, lab.manifest, lab.coord, allow_dropouts=True, record=record)
    assert body["survivors"] == ["a", "b", "c"] and open(survivors_file(lab), "rb").read() == signed
    with pytest.raises(ProtocolError, match="declared party 'd' dropped"):
        unmask_round(lab.uri, lab.manifest, "d", lab.keys["d"], lab.ledger("d"))
    assert hidden(recover(lab.uri, lab.manifest, "d"), truth_of(lab, "d"))
    # and the coordinator refuses a set on the exchange other than the one it signed
    os.remove(survivors_file(lab))
    close_round(lab.uri, lab.manifest, lab.coord, ["a", "b", "c", "d"])  # a second set, by the key, elsewhere
    before = snapshot(lab.uri)
    with pytest.raises(ProtocolError, match="another survivor set than the one this coordinator signed"):
        close_if_complete(lab.uri, lab.manifest, lab.coord, record=record)
    assert snapshot(lab.uri) == before


def test_a_coordinator_signing_a_second_set_learns_nothing(tmp_path):
    """A malicious coordinator closes without d, collects the survivors' pair seeds with d, then
    signs a second set that includes d. No survivor confirms it, so d never reveals its self seed;
    nor does d when a colluder confirms it, since d sees its pair seeds revealed."""
    lab = fives(tmp_path)
    closed_without_de(lab)
    os.remove(survivors_file(lab))
    lab.publish("d")
    close_round(lab.uri, lab.manifest, lab.coord, ["a", "b", "c", "d"])  # no record: the key alone
    # d sees that the others confirmed the first set: two sets were signed
    with pytest.raises(ProtocolError, match="party 'a' confirmed another survivor set"):
        unmask_round(lab.uri, lab.manifest, "d", lab.keys["d"], lab.ledger("d"))
    for p in "abc":  # each survivor of the first set refuses the second
        with pytest.raises(ProtocolError, match="confirmed another survivor set"):
            unmask_round(lab.uri, lab.manifest, p, lab.keys[p], lab.ledger(p))
    # the attacker holds a's, b's and c's keys and confirms the second set in their names
    digest = hashlib.sha256(canonical_json(json.loads(open(survivors_file(lab)).read())["body"])).hexdigest()
    for p in "abc":
        rec = {"party": p, "study": "s", "round_id": "r1", "manifest_digest": lab.manifest.digest(),
               "survivors_digest": digest}
        path = os.path.join(lab.uri, "s", "r1", "confirm", f"{p}.json")
        open(path, "wb").write(signed_record(rec, lab.keys[p]))  # as if b and c were compromised too
    with pytest.raises(ProtocolError, match="revealed the pair seed shared with party 'd'"):
        unmask_round(lab.uri, lab.manifest, "d", lab.keys["d"], lab.ledger("d"))
    assert not os.path.exists(os.path.join(lab.uri, "s", "r1", "unmask", "d.json"))
    # everything revealed: d's statistics stay hidden behind its self-mask
    assert hidden(recover(lab.uri, lab.manifest, "d"), truth_of(lab, "d"))


def test_a_party_left_out_never_reveals_its_self_seed_later(tmp_path):
    """d is shown a set that leaves it out (recorded in its ledger); a later set that includes it,
    confirmed by everyone in it, is refused all the same."""
    lab = fives(tmp_path)
    for p in "abcd":
        lab.publish(p)
    close_round(lab.uri, lab.manifest, lab.coord, ["a", "b", "c"])
    with pytest.raises(ProtocolError, match="dropped"):
        unmask_round(lab.uri, lab.manifest, "d", lab.keys["d"], lab.ledger("d"))
    os.remove(survivors_file(lab))
    close_round(lab.uri, lab.manifest, lab.coord, ["a", "b", "c", "d"])
    for p in "abc":  # they never confirmed the first set: they confirm this one, and wait for d
        ok, what = unmask_round(lab.uri, lab.manifest, p, lab.keys[p], lab.ledger(p))
        assert not ok and what.endswith("d to confirm the survivor set")
    with pytest.raises(ProtocolError, match="left out of a signed survivor set"):
        unmask_round(lab.uri, lab.manifest, "d", lab.keys["d"], lab.ledger("d"))
    assert not os.path.exists(os.path.join(lab.uri, "s", "r1", "unmask"))
    assert sum_hidden(lab, lab.manifest, "abcd") and hidden(recover(lab.uri, lab.manifest, "d"), truth_of(lab, "d"))


# ---------------------------------------------------------------------------------- 5. threshold


def test_a_round_never_closes_with_fewer_than_the_threshold(tmp_path):
    lab = Lab(tmp_path, parties=["a", "b", "c"])  # default threshold: all 3
    lab.join()
    lab.publish("a")
    lab.publish("b")
    before = snapshot(lab.uri)
    with pytest.raises(ProtocolError, match="at least 3 of its 3 parties"):
        close_if_complete(lab.uri, lab.manifest, lab.coord, allow_dropouts=True)
    assert snapshot(lab.uri) == before
    # a coordinator that signs a 2-party set anyway: the parties refuse to take part
    body = {"study": "s", "round_id": "r1", "manifest_digest": lab.manifest.digest(), "survivors": ["a", "b"],
            "dropped": ["c"], "closed": "now"}
    open(survivors_file(lab), "wb").write(signed_record(body, lab.coord))
    before = snapshot(lab.uri)
    for p in "ab":
        with pytest.raises(ProtocolError, match="fewer than the manifest's threshold of 3"):
            unmask_round(lab.uri, lab.manifest, p, lab.keys[p], lab.ledger(p))
    assert snapshot(lab.uri) == before
    # b's statistics, as a colluding a and the coordinator would try: the sum minus a's own
    assert sum_hidden(lab, lab.manifest, ["a", "b"])


def test_threshold_is_more_than_half_the_roster():
    from dash_spark.multiparty.exchange import default_threshold
    from dash_spark.multiparty.keys import PrivateKeys

    assert [default_threshold(n) for n in (2, 3, 4, 5, 6, 7, 9)] == [2, 3, 3, 3, 4, 4, 5]
    keys = [PrivateKeys.generate(p).public() for p in "abcde"]
    for bad in (2, 6, 1, True, "3"):
        with pytest.raises(Exception, match="invalid threshold"):
            Manifest.new("s", keys, {"threshold": bad})
    assert Manifest.new("s", keys, {"threshold": 4}).threshold == 4


# ---------------------------------------------------------------------------------- 2-4. the release guard


def second_round(lab, round_id, parties, *, study="s", uri=None, drop=(), threshold=None):
    """A new round of ``parties`` (each publishing its stats; a drops the samples in ``drop``)."""
    uri = uri or lab.uri
    settings = {"kind": "regression"} if threshold is None else {"kind": "regression", "threshold": threshold}
    m = Manifest.new(study, [lab.keys[p].public() for p in parties], settings, round_id=round_id,
                     coordinator=lab.coord.public())
    write_manifest(uri, m)
    sign_manifest(uri, m, lab.coord)
    for p in parties:
        join_round(uri, m, p, lab.keys[p], lab.ledger(p), trust=lab.trust)
    for p in parties:
        lab.publish(p, manifest=m, uri=uri, own=lab.own(p, drop=drop if p == "a" else ()))
    close_if_complete(uri, m, lab.coord)
    return m


def run_until_refused(lab, m, parties, uri=None, *, refusing):
    """The parties' unmask passes until none goes further: those in ``refusing`` are refused (each
    refusal leaves the exchange as it was), the others wait for one that was refused, and nobody
    revealed. Returns each refusal."""
    uri = uri or lab.uri
    refused, waiting = {}, {}
    for _ in range(4):
        for p in parties:
            if p in refused:
                continue
            before = snapshot(uri) if "://" not in uri else None
            try:
                ok, what = unmask_round(uri, m, p, lab.keys[p], lab.ledger(p), guard=GuardSettings(min_n=0))
            except ReleaseRefused as exc:
                refused[p] = str(exc)
                if before is not None:
                    assert snapshot(uri) == before, p
                continue
            assert not ok, f"{p} revealed"
            waiting[p] = what
    assert sorted(refused) == sorted(refusing), (refused, waiting)
    assert all(w.endswith(("to confirm the survivor set", "to reveal their counts"))
               for p, w in waiting.items() if p not in refused), waiting
    return refused


def three(tmp_path):
    lab = Lab(tmp_path, parties=["a", "b", "c", "d"])  # threshold 3
    lab.join(["a", "b", "c"])
    return lab


def test_a_withdrawal_is_refused_before_anything_unmasks_the_statistics(tmp_path):
    """Round 1 released by a, b, c; round 2 of the same parties after a withdrew one sample: every
    party refuses before revealing its seeds, so nothing on the exchange sums to round 2."""
    lab = released(tmp_path, "abc")
    m2 = second_round(lab, "r2", "abc", drop=("a7",))
    # a refuses on its own samples before it writes anything; b and c wait for a, so not even the
    # pooled counts come out
    refused = run_until_refused(lab, m2, "abc", refusing="a")
    assert "own samples differ by 1 from those of the release of study 's' round 'r1'" in refused["a"]
    assert "--allow-small-release" in refused["a"] and len(refused["a"].splitlines()) == 1
    assert not os.path.exists(os.path.join(lab.uri, "s", "r2", "unmask"))
    with pytest.raises(RevealsMissing):
        combine(lab.uri, m2)
    assert sum_hidden(lab, m2, "abc")
    # what was revealed: the guard counts' keys, which unmask the pooled counts and nothing else
    assert not os.path.exists(os.path.join(lab.uri, "s", "r2", "counts"))
    # a party that withdrew samples and overrides its own guard: the last of the others to see the
    # pooled counts refuses (before its counts keys go out, so the others never see them)
    unmask_round(lab.uri, m2, "a", lab.keys["a"], lab.ledger("a"), guard=GuardSettings(min_n=0, override=True))
    refused = run_until_refused(lab, m2, "bc", refusing="c")
    assert "all samples: 119 pooled samples against 120" in refused["c"]
    assert sorted(os.listdir(os.path.join(lab.uri, "s", "r2", "counts"))) == ["a.json", "b.json"]
    assert sum_hidden(lab, m2, "abc")


def test_releases_with_and_without_one_party_are_refused(tmp_path):
    """Released by a, b, c, d; then a round closed without d: a, b and c refuse (the difference of
    the two would be d's statistics), whatever the round or study is called."""
    lab = released(tmp_path, "abcd")
    m2 = second_round(lab, "r2", "abc", study="renamed")
    refused = run_until_refused(lab, m2, "abc", refusing="abc")
    assert all("differ by exactly one party (d)" in r for r in refused.values())
    assert sum_hidden(lab, m2, "abc")


def test_the_same_withdrawal_under_another_study_and_exchange_is_refused(tmp_path):
    lab = released(tmp_path, "abc")
    other = str(tmp_path / "another-exchange")
    m2 = second_round(lab, "q1", "abc", study="another-name", uri=other, drop=("a3",))
    refused = run_until_refused(lab, m2, "abc", uri=other, refusing="a")
    assert "own samples differ by 1" in refused["a"] and "study 's' round 'r1'" in refused["a"]
    assert sum_hidden(lab, m2, "abc", uri=other)


def test_a_deleted_or_damaged_release_memory_is_refused(tmp_path):
    lab = released(tmp_path, "abc")
    key = str(tmp_path / "keys" / "a")
    m2 = second_round(lab, "r2", "abc", drop=("a7",))
    # a's memory deleted: a refuses (the ledger records a release the memory lacks)
    shutil.move(key + ".releases.json", key + ".releases.json.bak")
    refused = run_until_refused(lab, m2, "abc", refusing="a")
    assert "the release memory lacks 1 release(s) that the ledger records" in refused["a"]
    # restored, but one release's samples lost: refused too
    shutil.move(key + ".releases.json.bak", key + ".releases.json")
    for f in os.listdir(key + ".releases"):
        os.remove(os.path.join(key + ".releases", f))
    with pytest.raises(ReleaseRefused, match="missing from the release memory"):
        unmask_round(lab.uri, m2, "a", lab.keys["a"], lab.ledger("a"), guard=GuardSettings(min_n=0))
    assert not os.path.exists(os.path.join(lab.uri, "s", "r2", "unmask", "a.json"))


def test_the_release_memory_and_ledger_are_private(tmp_path):
    released(tmp_path, "abc")
    key = str(tmp_path / "keys" / "a")
    for path in (key + ".releases.json", key + ".ledger"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key + ".releases").st_mode) == 0o700
    # sample IDs only as keyed hashes: no string of the record is a sample ID, and the kept sample
    # sets are arrays of numbers (a search for an ID's bytes in random hashes would match by chance)
    def strings(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield k
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)
        elif isinstance(obj, str):
            yield obj

    import json

    record = json.loads(open(key + ".releases.json").read())
    ids = {f"{p}{i}" for p in "abc" for i in range(200)}
    assert not ids & set(strings(record))
    for f in os.listdir(key + ".releases"):  # 64-bit keyed hashes, one per own sample
        data = open(os.path.join(key + ".releases", f), "rb").read()
        assert len(data) % 8 == 0
        hashes = np.frombuffer(data, dtype="<u8")
        assert len(hashes) == len(set(hashes.tolist())) == 40


def test_the_override_releases_and_is_recorded(tmp_path):
    lab = released(tmp_path, "abc")
    m2 = second_round(lab, "r2", "abc", drop=("a7",))
    lab.unmask("abc", manifest=m2, guard=GuardSettings(min_n=0, override=True))
    _, pooled = combine(lab.uri, m2)
    np.testing.assert_allclose(pooled["variants"], pooled_of(lab, "abc")["variants"], rtol=1e-12, atol=1e-9)
    mem = json.loads(open(str(tmp_path / "keys" / "a") + ".releases.json").read())
    assert [e["overridden"] for e in mem["releases"]] == [False, True]


def test_min_n_is_checked_before_the_seeds(tmp_path):
    lab = Lab(tmp_path, parties=["a", "b", "c"])
    lab.join()
    for p in "abc":
        lab.publish(p)
    close_if_complete(lab.uri, lab.manifest, lab.coord)
    with pytest.raises(ReleaseRefused, match=r"t0 \(120\) have fewer than 500 pooled samples"):
        for _ in range(3):
            for p in "abc":
                unmask_round(lab.uri, lab.manifest, p, lab.keys[p], lab.ledger(p), guard=GuardSettings(min_n=500))
    assert sum_hidden(lab, lab.manifest, "abc")


# ---------------------------------------------------------------------------------- 6. restored key folders


def test_a_restored_key_folder_publishes_under_a_fresh_self_mask(tmp_path):
    """a's key folder is backed up after join; a publishes; its share disappears from the exchange;
    the folder is restored and a publishes the same data again. Before, the two shares differed by
    nothing (the same masks); now by a fresh self-mask, so their difference reveals nothing."""
    lab = Lab(tmp_path, parties=["a", "b", "c"])
    lab.join()
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "keys", backup)
    lab.publish("a")
    first = read_shares(lab.uri, lab.manifest, parties=["a"])["a"][1]
    first = {n: np.array(first[n]) for n in NAMES}
    shutil.rmtree(os.path.join(lab.uri, "s", "r1", "shares", "a"))
    shutil.rmtree(tmp_path / "keys")
    shutil.copytree(backup, tmp_path / "keys")
    lab.publish("a")  # the restored ledger does not know the first publication
    second = read_shares(lab.uri, lab.manifest, parties=["a"])["a"][1]
    for n in NAMES:
        diff = np.array(second[n], dtype=np.uint64, order="C")
        add_into(diff.reshape(-1, 2), first[n].reshape(-1, 2), subtract=True)
        assert np.abs(decode(diff, lab.manifest.frac_bits)).min() > 1e3  # not 0: a fresh mask


# ---------------------------------------------------------------------------------- permissions


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_trust_file_others_can_write_is_refused(tmp_path, capsys):
    from dash_spark.cli import main

    st = Study(tmp_path, ["alice", "bob", "carol"])
    manifest = st.manifest()
    os.chmod(st.trust, 0o664)
    before = snapshot(tmp_path / "exchange")
    code = main(["-q", "party", "join", *st.party("alice", manifest)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "trust.txt: the trust file is writable by group or others" in err
    assert "chmod go-w" in err and len(err.splitlines()) == 1
    assert snapshot(tmp_path / "exchange") == before
    os.chmod(st.trust, 0o600)
    os.chmod(tmp_path, 0o777)
    try:
        with pytest.raises(Exception, match="folder of the trust file"):
            TrustFile.load(st.trust)
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_two_party_study_is_explicit(tmp_path, capsys):
    from dash_spark.cli import main

    st = Study(tmp_path, ["alice", "bob"])
    args = ["-q", "party", "manifest", "--study", "t", "--exchange", str(tmp_path / "x"), "--sign-key", st.coord,
            "--party", f"alice={st.keys / 'alice'}.pub", "--party", f"bob={st.keys / 'bob'}.pub"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --threshold 2" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
    assert main(args + ["--threshold", "2"]) == 0


# ---------------------------------------------------------------------------------- selection steps


def test_a_selection_step_must_extend_the_partys_release(tmp_path):
    """A step's sum is revealed once every party published: a party publishes only when the step's
    parties are exactly the survivors of the base release it took part in, on the same samples."""
    lab = Lab(tmp_path, parties=["a", "b", "c", "d"])
    lab.join()
    for p in "abc":
        lab.publish(p)
    close_if_complete(lab.uri, lab.manifest, lab.coord, allow_dropouts=True)
    lab.unmask("abc")

    def step(parties, base="r1"):
        return Manifest.new("s", [lab.keys[p].public() for p in parties],
                            {"kind": "select-step", "base_round": base, "self_masks": False},
                            coordinator=lab.coord.public())

    check_step_release(step("abc"), lab.ledger("a"), lab.own("a"), who="a")  # the honest step
    for parties, own, match in [("ab", lab.own("a"), "are not the survivors"),
                                ("abcd", lab.own("a"), "are not the survivors"),
                                ("abc", lab.own("a", drop=("a1",)), "samples differ")]:
        with pytest.raises(ReleaseRefused, match=match):
            check_step_release(step(parties), lab.ledger("a"), own, who="a")
    with pytest.raises(ReleaseRefused, match="took part in no release of round 'r9'"):
        check_step_release(step("abc", base="r9"), lab.ledger("a"), lab.own("a"), who="a")
    # a coordinator's round without self-masks that is no step: its sum would come out unguarded as
    # soon as all published (a's withdrawal here), so nobody publishes in it
    bare = Manifest.new("s", [lab.keys[p].public() for p in "abc"], {"kind": "regression", "self_masks": False},
                        round_id="bare", coordinator=lab.coord.public())
    write_manifest(lab.uri, bare)
    sign_manifest(lab.uri, bare, lab.coord)
    lab.join("abc", manifest=bare)
    for p in "abc":
        with pytest.raises(ReleaseRefused, match="no self-masks.*this manifest is not one"):
            lab.publish(p, manifest=bare, own=lab.own(p, drop=("a7",)))
    assert not os.path.exists(os.path.join(lab.uri, "s", "bare", "shares"))


# ---------------------------------------------------------------------------------- object storage


def test_attacks_on_an_exchange_in_object_storage(s3, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    """The re-signed set and the guard on a moto S3 exchange: the same refusals, nothing unmasked."""
    fs, env, _ = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from .test_objectstore import BUCKET

    lab = Lab(tmp_path)
    lab.uri = f"s3://{BUCKET}/adversary"
    lab.manifest = lab.new_manifest("r-s3")
    lab.join()
    record = closed_without_de(lab)
    loc = Location(lab.uri)
    path = loc.join("s", "r-s3", "survivors.json")
    signed = loc.read(path, what="x")
    loc.fs.delete_file(loc.path + "/s/r-s3/survivors.json")
    lab.publish("d")
    assert close_if_complete(lab.uri, lab.manifest, lab.coord, record=record)["survivors"] == ["a", "b", "c"]
    assert loc.read(path, what="x") == signed
    loc.fs.delete_file(loc.path + "/s/r-s3/survivors.json")
    close_round(lab.uri, lab.manifest, lab.coord, ["a", "b", "c", "d"])  # the key alone, a second set
    for p in "abc":
        with pytest.raises(ProtocolError, match="confirmed another survivor set"):
            unmask_round(lab.uri, lab.manifest, p, lab.keys[p], lab.ledger(p))
    assert hidden(recover(lab.uri, lab.manifest, "d"), truth_of(lab, "d"))
    m2 = second_round(lab, "r-s3b", "abc", drop=("a7",))
    run_until_refused(lab, m2, "abc", refusing="a")
    assert sum_hidden(lab, m2, "abc")


from .test_objectstore import s3  # noqa: E402,F401 - the moto server fixture


def test_a_withdrawal_through_the_command_line(cli_study, tmp_path):  # noqa: F811 - the fixture
    """The documented flow: a released study, then a round after alice withdrew one sample. alice's
    `party unmask` exits 2 with one line naming her and the rule, and changes nothing on the
    exchange; bob and carol wait for her, so combine has nothing to sum."""
    st, files, phenos = cli_study
    first = st.manifest()
    st.join(first)
    for p in ("alice", "bob", "carol"):
        assert st.compress(first, p, "--pheno", phenos[p], "--covar", files.covar)[0] == 0
    st.finish(first, tmp_path / "r1")
    lines = open(phenos["alice"]).read().splitlines()
    (tmp_path / "alice2.pheno").write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # one sample withdrawn
    second = st.manifest()
    st.join(second)
    for p in ("alice", "bob", "carol"):
        pheno = tmp_path / "alice2.pheno" if p == "alice" else phenos[p]
        assert st.compress(second, p, "--pheno", pheno, "--covar", files.covar)[0] == 0
    assert "round closed" in st.ok("combine", "--manifest", second, "--out", tmp_path / "r2", "--sign-key", st.coord)
    before = snapshot(tmp_path / "exchange")
    code, _, err = st.run("party", "unmask", *st.party("alice", second))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "party 'alice'" in err and "own samples differ by 1" in err and "--min-release-delta" in err
    assert snapshot(tmp_path / "exchange") == before
    for p in ("bob", "carol"):
        assert st.ok("party", "unmask", *st.party(p, second)).startswith("waiting for alice")
    code, _, err = st.run("combine", "--manifest", second, "--out", tmp_path / "r2")
    assert code == 2 and "waiting for alice, bob, carol to unmask" in err and not (tmp_path / "r2").exists()


from .test_multiparty_attacks import cli_study  # noqa: E402,F401 - the three-party command-line study


def test_two_rounds_unmasked_at_once_are_compared_with_each_other(tmp_path):
    """A coordinator runs two rounds of the same parties at once, the second after a's withdrawal:
    a's guard checks and records each release under the memory's lock, so a never releases both,
    whichever order the two unmask runs take."""
    import threading

    from dash_spark.multiparty.guard import ReleaseMemory

    lab = Lab(tmp_path, parties=["a", "b", "c"])
    lab.join()
    m1 = second_round(lab, "one", "abc")
    m2 = second_round(lab, "two", "abc", drop=("a7",))
    outcome = {}

    def run(m):  # every party's unmask of round m, a pass at a time, as the round's unmask runs would
        for _ in range(4):
            for p in "abc":
                try:
                    ok, _ = unmask_round(lab.uri, m, p, lab.keys[p], lab.ledger(p), guard=GuardSettings(min_n=0))
                    outcome[(m.round_id, p)] = ok
                except ReleaseRefused as exc:
                    outcome[(m.round_id, p)] = str(exc)

    with ReleaseMemory(str(tmp_path / "keys" / "a")).locked():  # a check of a's in progress elsewhere
        threads = [threading.Thread(target=run, args=(m,)) for m in (m1, m2)]
        for t in threads:
            t.start()
        threads[0].join(0.5)
        assert all(t.is_alive() for t in threads)  # both wait for a's memory
    for t in threads:
        t.join(60)
    released = [r for r in ("one", "two") if outcome.get((r, "a")) is True]
    assert len(released) <= 1, outcome  # never both: the two would be differenced into a's sample
    memory = json.loads(open(str(tmp_path / "keys" / "a") + ".releases.json").read())["releases"]
    assert [e["round_id"] for e in memory] == released
    assert released or any("differ" in str(v) for v in outcome.values())


def test_the_guard_compares_counts_only_where_the_partys_samples_overlap():
    """Two releases of disjoint own samples (another cohort) are not compared by counts, however
    close; the same counts over overlapping samples are; a withdrawal is caught by the samples."""
    from dash_spark.multiparty.guard import Release, release_problems, sample_hashes

    salt = b"s" * 32

    def release(round_id, iids, pooled, survivors=("a", "b", "c")):
        return Release("s", round_id, "x", {p: p * 64 for p in survivors}, pooled, {"t0": pooled}, len(iids),
                       {"t0": len(iids)}, sample_hashes(salt, iids))

    first = release("r1", [f"a{i}" for i in range(40)], 120)
    earlier = [(first.entry("id1", "", False), first.samples)]
    other_cohort = release("r2", [f"x{i}" for i in range(45)], 125)
    assert release_problems(earlier, other_cohort, min_delta=20, min_n=20) == []
    overlapping = release("r3", [f"a{i}" for i in range(40)] + [f"z{i}" for i in range(25)], 125)
    problems = release_problems(earlier, overlapping, min_delta=20, min_n=20)
    assert problems and all("pooled samples against 120" in p for p in problems)
    withdrawn = release("r4", [f"a{i}" for i in range(1, 40)], 150)
    assert any("own samples differ by 1" in p for p in release_problems(earlier, withdrawn, min_delta=20, min_n=20))
    one_less = release("r5", [f"a{i}" for i in range(40)], 150, survivors=("a", "b"))
    assert any("differ by exactly one party (c)" in p
               for p in release_problems(earlier, one_less, min_delta=20, min_n=20))
