"""A party's per-variant statistic published in row parts: Spark tasks encode, mask (from the row's
word offset in the mask streams) and stage rows in a private directory; the driver moves the parts
into the share and signs each part's sha256. Masking parts equals masking the whole statistic; the
combined parted shares equal the plain sum; an altered, missing, overlapping or gapped part is
refused naming the party; nothing reaches the exchange before the driver publishes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import time

import numpy as np
import pytest

from dash_spark.errors import OutputError
from dash_spark.multiparty import ProtocolError
from dash_spark.multiparty import masking
from dash_spark.multiparty.encoding import decode, encode, ring_sum
from dash_spark.multiparty.exchange import (DuplicateShareError, RingParts, StagedStat, add_shares, canonical_json, locate_manifest,
                                            part_file, publish_share, read_shares, sum_shares, write_part)
from dash_spark.multiparty.keys import fingerprint
from dash_spark.multiparty.masking import StatMasker, mask_share, mask_stream, stat_masker, unmask_sum
from dash_spark.multiparty.rounds import close_if_complete, combine, open_publication, wait_for_shares

from .test_multiparty_attacks import Lab

PARTIES3 = ["a", "b", "c"]
M, W = 37, 5  # rows (variants) x row width (statistics per variant)
CUTS = {"a": [0, 37], "b": [0, 10, 20, 37], "c": [0, 3, 4, 11, 30, 37]}  # each party its own part boundaries


def values(p: str) -> dict[str, np.ndarray]:
    r = np.random.default_rng(1000 + ord(p))
    return {"t0.CtC": r.normal(0, 50, (3, 3)), "variants": r.normal(0, 1e3, (M, W))}


def pooled_truth(parties=PARTIES3) -> dict[str, np.ndarray]:
    return {n: sum(values(p)[n] for p in parties) for n in ("t0.CtC", "variants")}


def share_dir(lab: Lab, p: str) -> str:
    return os.path.join(lab.uri, lab.manifest.study, lab.manifest.round_id, "shares", p)


def stage_parts(pub, stage: str, p: str, cuts) -> list[dict]:
    """What a party's tasks do: encode, mask and stage rows of 'variants' (here last part first)."""
    writer = pub.part_writer("variants", stage)
    rows = values(p)["variants"]
    return [writer.write(a, rows[a:b]) for a, b in reversed(list(zip(cuts[:-1], cuts[1:])))]


def publish_parted(lab: Lab, p: str, cuts=None):
    pub = open_publication(lab.uri, lab.manifest, p, lab.keys[p], ledger=lab.ledger(p))
    stage = pub.new_stage()
    parts = stage_parts(pub, stage, p, CUTS[p] if cuts is None else cuts)
    share = pub.publish({"t0.CtC": values(p)["t0.CtC"]}, {"kind": "regression"},
                        staged={"variants": StagedStat((M, W, 2), tuple(parts), stage)}, own=lab.own(p))
    return pub, stage, parts, share


def close_and_reveal(lab: Lab, parties=PARTIES3) -> None:
    body = close_if_complete(lab.uri, lab.manifest, lab.coord)
    assert body["survivors"] == list(parties)
    lab.unmask(parties)


def assert_pooled(pooled: dict) -> None:
    truth = pooled_truth()
    assert sorted(pooled) == ["t0.CtC", "variants"]
    for n in truth:
        np.testing.assert_allclose(pooled[n], truth[n], rtol=1e-12, atol=1e-12)


@pytest.fixture
def lab3(tmp_path):
    lab = Lab(tmp_path, parties=PARTIES3)
    lab.join()
    return lab


@pytest.fixture
def parted(lab3):
    """Three parties published parted shares (each with its own boundaries); round closed, revealed."""
    for p in PARTIES3:
        publish_parted(lab3, p)
    close_and_reveal(lab3)
    return lab3


# ---------------------------------------------------------------------------------- masking from an offset


@pytest.mark.parametrize("chunk", [None, 3], ids=["default-chunks", "3-word-chunks"])
def test_masking_rows_from_their_offset_equals_masking_the_whole(monkeypatch, chunk):
    if chunk is not None:  # keystream chunks that straddle rows and 64-byte ChaCha blocks
        monkeypatch.setattr(masking, "_CHUNK_WORDS", chunk)
    rng = np.random.default_rng(11)
    whole = rng.integers(0, np.iinfo(np.uint64).max, size=(M, W, 2), dtype=np.uint64, endpoint=True)
    parties = ["a", "b", "c", "d"]
    seeds = {q: rng.bytes(32) for q in ("a", "c", "d")}
    self_seed = rng.bytes(32)
    want = mask_share(whole, "variants", me="b", parties=parties, seeds=seeds, self_seed=self_seed)
    assert (want != whole).mean() > 0.99
    assert not np.array_equal(want, mask_share(whole, "variants", me="b", parties=parties, seeds=seeds))
    masker = stat_masker("variants", me="b", parties=parties, seeds=seeds, self_seed=self_seed)
    # row offsets x 5 words: 15, 20, 55, 60, 150, 180 words; most not on a 4-word (64-byte) block boundary
    for cuts in ([0, M], [0, 1, M], [0, 3, 4, 11, 12, 30, 36, M], list(range(M + 1))):
        pieces = {a: masker.apply(whole[a:b].copy(), a * W) for a, b in reversed(list(zip(cuts[:-1], cuts[1:])))}
        got = np.concatenate([pieces[a] for a in sorted(pieces)])
        np.testing.assert_array_equal(got, want, err_msg=f"cuts {cuts}")
    # the offset matters: rows 3.. masked as if they were rows 0..
    assert not np.array_equal(masker.apply(whole[3:4].copy(), 0), want[3:4])


def test_mask_stream_from_an_offset_is_the_tail_of_the_stream():
    seed = hashlib.sha256(b"pair-seed").digest()
    for k, n in itertools.product((0, 1, 3, 4, 5, 15, 17, 64, 65537), (0, 1, 7, 20)):
        np.testing.assert_array_equal(mask_stream(seed, "variants", n, offset_words=k),
                                      mask_stream(seed, "variants", n + k)[k:], err_msg=f"offset {k} n {n}")
    # the first party of a pair adds exactly that stream, from the rows' offset
    masker = stat_masker("variants", me="a", parties=["a", "b"], seeds={"b": seed})
    for a, b in ((0, 37), (3, 11), (11, 12)):
        got = masker.apply(np.zeros((b - a, W, 2), dtype=np.uint64), a * W)
        np.testing.assert_array_equal(got.reshape(-1, 2), mask_stream(seed, "variants", (b - a) * W, a * W))


# ---------------------------------------------------------------------------------- threaded unmask / decode


def test_unmask_sum_in_threads_equals_one_thread_and_removes_the_masks(monkeypatch):
    rng = np.random.default_rng(5)
    shape = (40000, W)  # 200000 ring words: >= 3 x 65536, so 3 threads get a slice each
    parties, survivors = ["a", "b", "c", "d"], ["a", "b", "c"]  # d dropped
    pair = {frozenset(pq): rng.bytes(32) for pq in itertools.combinations(parties, 2)}
    self_seeds = {p: rng.bytes(32) for p in survivors}
    vals = {p: rng.normal(0, 100, shape) for p in survivors}
    total = ring_sum([mask_share(encode(vals[p]), "variants", me=p, parties=parties, self_seed=self_seeds[p],
                                 seeds={q: pair[frozenset((p, q))] for q in parties if q != p}) for p in survivors])
    dropped = {(p, "d"): pair[frozenset((p, "d"))] for p in survivors}
    calls = []
    apply = StatMasker.apply

    def spy(self, arr, offset_words=0):
        calls.append((int(offset_words), arr.reshape(-1, 2).shape[0]))
        return apply(self, arr, offset_words)

    monkeypatch.setattr(StatMasker, "apply", spy)
    one = unmask_sum(total.copy(), "variants", parties=parties, self_seeds=self_seeds, dropped_pair_seeds=dropped,
                     threads=1)
    assert calls == [(0, 200000)]
    calls.clear()
    three = unmask_sum(total.copy(), "variants", parties=parties, self_seeds=self_seeds,
                       dropped_pair_seeds=dropped, threads=3)
    assert sorted(calls) == [(0, 66666), (66666, 66667), (133333, 66667)]  # 66666 words: not block-aligned
    np.testing.assert_array_equal(three, one)
    np.testing.assert_allclose(decode(one), sum(vals.values()), rtol=1e-12, atol=1e-12)


def test_threaded_decode_equals_decoding_small_slices(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 3 x 2^20 + 7 elements: 3 threads on any machine
    rng = np.random.default_rng(3)
    n = 3 * (1 << 20) + 7
    ring = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)
    ring[:1000] = encode(rng.normal(0, 1e6, 1000))  # ordinary values too, not only huge ones
    got = decode(ring)
    step = (1 << 20) - 3
    want = np.concatenate([decode(ring[i:i + step]) for i in range(0, n, step)])
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all() and (got < 0).any() and (got > 0).any()


# ---------------------------------------------------------------------------------- parted shares, end to end


def test_parted_shares_combine_to_the_plain_sum(parted):
    lab = parted
    for p in PARTIES3:  # the parts as the party cut them; no whole variants.npy
        files = sorted(os.listdir(share_dir(lab, p)))
        cuts = CUTS[p]
        assert [f for f in files if f.startswith("variants")] == [part_file("variants", a) for a in cuts[:-1]]
        header = json.loads(open(os.path.join(share_dir(lab, p), "header.json")).read())
        assert [(q["start"], q["stop"]) for q in header["stats"]["variants"]["parts"]] == list(zip(cuts[:-1], cuts[1:]))
        assert header["stats"]["variants"]["shape"] == [M, W, 2] and "sha256" in header["stats"]["t0.CtC"]
    shares = read_shares(lab.uri, lab.manifest)
    for p in PARTIES3:
        v = shares[p][1]["variants"]
        assert isinstance(v, RingParts) and [(a, b) for a, b, _ in v.parts] == list(zip(CUTS[p][:-1], CUTS[p][1:]))
        assert isinstance(shares[p][1]["t0.CtC"], np.ndarray)
    summed = sum_shares(shares)
    headers, added = add_shares(lab.uri, lab.manifest)
    assert sorted(headers) == PARTIES3 and sorted(added) == sorted(summed)
    for n in summed:
        np.testing.assert_array_equal(added[n], summed[n])
    _, pooled = combine(lab.uri, lab.manifest)
    assert_pooled(pooled)


def test_parts_are_the_whole_statistic_masked(lab3):
    pub = open_publication(lab3.uri, lab3.manifest, "c", lab3.keys["c"], ledger=lab3.ledger("c"))
    stage = pub.new_stage()
    parts = sorted(stage_parts(pub, stage, "c", CUTS["c"]), key=lambda q: q["start"])
    staged = np.concatenate([np.load(os.path.join(stage, part_file("variants", q["start"]))) for q in parts])
    want = mask_share(encode(values("c")["variants"]), "variants", me="c", parties=PARTIES3, seeds=pub.seeds,
                      self_seed=pub.self_seed)
    np.testing.assert_array_equal(staged, want)
    for q in parts:  # each header entry: the file's sha256, size and rows
        data = open(os.path.join(stage, part_file("variants", q["start"])), "rb").read()
        assert q["sha256"] == hashlib.sha256(data).hexdigest() and q["bytes"] == len(data)


# ---------------------------------------------------------------------------------- attacks on parted shares


def _resign(lab: Lab, p: str, edit, *, sign: bool = True) -> None:
    """A malicious party ``p`` rewrites its own header and signs it with its own key."""
    sdir = share_dir(lab, p)
    header = json.loads(open(os.path.join(sdir, "header.json"), "rb").read())
    edit(header["stats"]["variants"]["parts"])
    body = canonical_json(header)
    open(os.path.join(sdir, "header.json"), "wb").write(body)
    if sign:
        sig = {"party": p, "algorithm": "ed25519", "fingerprint": fingerprint(lab.keys[p]),
               "header_sha256": hashlib.sha256(body).hexdigest(), "signature": lab.keys[p].sign(body).hex()}
        open(os.path.join(sdir, "signature.json"), "wb").write(canonical_json(sig) + b"\n")


def _flip(lab, p):
    path = os.path.join(share_dir(lab, p), part_file("variants", 10))
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0x10
    open(path, "wb").write(bytes(data))


def _overlap(parts):
    parts[1]["start"] = 5  # rows 5..10 twice


def _gap(parts):
    del parts[1]  # rows 10..20 never added


def _short(parts):
    del parts[2]  # rows 20..37 never added


def _merge(parts):  # rows 10..37 claimed by the 10-row file of rows 10..20
    parts[1]["stop"] = parts[2]["stop"]
    del parts[2]


ATTACKS = {
    "flipped-byte": (_flip, r"share of party 'b' \(.*\): statistic 'variants' rows 10\.\.20 does not match the "
                            r"signed header; expected sha256"),
    "deleted-part": (lambda lab, p: os.remove(os.path.join(share_dir(lab, p), part_file("variants", 20))),
                     r"shares/b/variants@000000000020\.npy: statistic 'variants' rows 20\.\.37 not found"),
    "overlap": (lambda lab, p: _resign(lab, p, _overlap),
                r"share of party 'b' \(.*\): the parts of statistic 'variants' do not tile its 37 rows; expected a "
                r"part from row 10, found .*'start': 5"),
    "gap": (lambda lab, p: _resign(lab, p, _gap),
            r"share of party 'b' \(.*\): the parts of statistic 'variants' do not tile its 37 rows; expected a part "
            r"from row 10, found .*'start': 20"),
    "short": (lambda lab, p: _resign(lab, p, _short),
              r"share of party 'b' \(.*\): the parts of statistic 'variants' stop at row 20; expected 37 rows"),
    "wrong-rows": (lambda lab, p: _resign(lab, p, _merge),
                   r"share of party 'b' \(.*\): statistic 'variants' rows 10\.\.37 has the wrong type; expected "
                   r"uint64 of shape \(27, 5, 2\)"),
    "unsigned-edit": (lambda lab, p: _resign(lab, p, _overlap, sign=False),
                      r"share of party 'b' \(.*\): signature does not verify with 'b'"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_tampered_parted_share_is_refused_naming_the_party(parted, attack):
    lab = parted
    tamper, pattern = ATTACKS[attack]
    tamper(lab, "b")
    with pytest.raises(ProtocolError, match=pattern):
        read_shares(lab.uri, lab.manifest)
    with pytest.raises(ProtocolError, match=pattern):
        add_shares(lab.uri, lab.manifest)
    with pytest.raises(ProtocolError, match=pattern):
        combine(lab.uri, lab.manifest)


def test_publish_share_refuses_staged_parts_that_do_not_tile(lab3):
    lab = lab3
    pub = open_publication(lab.uri, lab.manifest, "c", lab.keys["c"], ledger=lab.ledger("c"))
    stage = pub.new_stage()
    writer = pub.part_writer("variants", stage)
    rows = values("c")["variants"]
    p0 = writer.write(0, rows[0:20])
    p10 = writer.write(10, rows[10:37])
    p12 = writer.write(12, rows[12:37])
    p15 = writer.write(15, rows[15:37])
    p20 = writer.write(20, np.zeros((20, W)))  # rows 20..40 of a 37-row statistic
    p0_30 = write_part(stage, "variants", 0, encode(np.zeros((30, W))))  # overwrites part 0 as rows 0..30
    cases = [((p0_30, p12), "do not tile its 37 rows; expected a part from row 30, found .*'start': 12"),  # overlap
             ((p0_30,), "stop at row 30; expected 37 rows"),
             ((p15, p0), "do not tile its 37 rows; expected a part from row 20, found .*'start': 15"),  # overlap
             ((p0, p20), "do not tile its 37 rows; expected a part from row 20, found .*'stop': 40"),  # too long
             ((p10,), "do not tile its 37 rows; expected a part from row 0, found .*'start': 10"),  # gap at 0
             ((), "stop at row 0; expected 37 rows")]
    staged_files = sorted(os.listdir(stage))
    for parts, pattern in cases:
        with pytest.raises(ProtocolError, match="publish share of party 'c': the parts of statistic 'variants' "
                                                + pattern):
            publish_share(lab.uri, lab.manifest, "c", lab.keys["c"], {},
                          staged={"variants": StagedStat((M, W, 2), parts, stage)})
        assert not os.path.exists(share_dir(lab, "c"))  # nothing published, nothing moved
        assert sorted(os.listdir(stage)) == staged_files


def test_an_unlisted_part_file_in_a_share_is_ignored(parted):
    lab = parted
    _, before = combine(lab.uri, lab.manifest)
    assert_pooled(before)
    _, ring_before = add_shares(lab.uri, lab.manifest)
    junk = np.random.default_rng(9).integers(0, 1 << 63, size=(27, W, 2), dtype=np.uint64)
    for name in (part_file("variants", 10), part_file("variants", 5)):  # b's own parts start at 0, 10 and 20
        np.save(os.path.join(share_dir(lab, "a"), name), junk)  # a's share has a single part from row 0
    np.save(os.path.join(share_dir(lab, "b"), "variants.npy"), junk)
    _, after = combine(lab.uri, lab.manifest)
    _, ring_after = add_shares(lab.uri, lab.manifest)
    for n in before:
        np.testing.assert_array_equal(after[n], before[n])
        np.testing.assert_array_equal(ring_after[n], ring_before[n])


# ---------------------------------------------------------------------------------- private staging


def test_stage_is_private_beside_the_ledger_and_emptied_by_publish(lab3, tmp_path):
    lab = lab3
    pub = open_publication(lab.uri, lab.manifest, "a", lab.keys["a"], ledger=lab.ledger("a"))
    stage = pub.new_stage()
    assert os.path.dirname(stage) == lab.ledger("a").dir
    assert stat.S_IMODE(os.stat(stage).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(lab.ledger("a").dir).st_mode) == 0o700
    assert stage != pub.new_stage()  # a fresh one per call
    shared = pub.new_stage(str(tmp_path / "shared"))  # --share-stage: under the given location
    assert os.path.isdir(shared) and os.path.dirname(shared) == str(tmp_path / "shared")
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o700  # private there too
    parts = stage_parts(pub, stage, "a", [0, 7, M])
    assert sorted(os.listdir(stage)) == [part_file("variants", 0), part_file("variants", 7)]
    assert not os.path.exists(share_dir(lab, "a"))  # staged rows are not on the exchange
    pub.publish({"t0.CtC": values("a")["t0.CtC"]}, {"kind": "regression"}, own=lab.own("a"),
                staged={"variants": StagedStat((M, W, 2), tuple(parts), stage)})
    assert os.listdir(stage) == []  # moved, not copied
    assert sorted(f for f in os.listdir(share_dir(lab, "a")) if f.startswith("variants")) == [
        part_file("variants", 0), part_file("variants", 7)]


def test_a_failure_before_publishing_leaves_nothing_and_the_party_can_retry(lab3):
    from dash_spark.studies.study import remove_stage

    lab = lab3
    first = open_publication(lab.uri, lab.manifest, "a", lab.keys["a"], ledger=lab.ledger("a"))
    stage = first.new_stage()
    parts = stage_parts(first, stage, "a", [0, 10, 20])  # rows 20..37: the task that failed
    assert len(os.listdir(stage)) == 2
    remove_stage(stage)  # what run_party_compress does when the Spark job fails
    assert not os.path.exists(stage)
    assert not os.path.exists(share_dir(lab, "a"))
    assert not lab.ledger("a").entry(lab.manifest)["published"]
    # the retry: the same round's pair seeds, a fresh self-mask seed (each publication draws its own),
    # so the same rows give other (still private) bytes
    pub, stage2, parts2, _ = publish_parted(lab, "a", [0, 10, 20, M])
    assert pub.seeds == first.seeds and pub.self_seed != first.self_seed
    assert not {q["sha256"] for q in parts} & {q["sha256"] for q in parts2}
    assert lab.ledger("a").entry(lab.manifest)["published"]
    with pytest.raises(ProtocolError, match="party 'a' already published"):
        open_publication(lab.uri, lab.manifest, "a", lab.keys["a"], ledger=lab.ledger("a"))
    for p in ("b", "c"):
        publish_parted(lab, p)
    close_and_reveal(lab)
    _, pooled = combine(lab.uri, lab.manifest)
    assert_pooled(pooled)


def _drop(path):
    os.remove(path)


def _grow(path):
    open(path, "ab").write(b"\0" * 16)


def _cut(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-16])


@pytest.mark.parametrize("damage,found", [(_drop, "found None"), (_grow, "found {n}"), (_cut, "found {n}")],
                         ids=["missing", "longer", "shorter"])
def test_publish_refuses_a_staged_part_the_driver_cannot_see(lab3, damage, found):
    lab = lab3
    pub = open_publication(lab.uri, lab.manifest, "b", lab.keys["b"], ledger=lab.ledger("b"))
    stage = pub.new_stage()
    parts = stage_parts(pub, stage, "b", CUTS["b"])
    bad = next(q for q in parts if q["start"] == 10)
    path = os.path.join(stage, part_file("variants", 10))
    damage(path)
    size = os.path.getsize(path) if os.path.exists(path) else None
    left = sorted(os.listdir(stage))
    pattern = (rf"variants@000000000010\.npy: a part of statistic 'variants' is missing or short on the driver "
               rf"\(expected {bad['bytes']} bytes, {found.format(n=size)}\).*\(--share-stage\)\. Nothing was published")
    with pytest.raises(OutputError, match=pattern):
        pub.publish({"t0.CtC": values("b")["t0.CtC"]}, {"kind": "regression"}, own=lab.own("b"),
                    staged={"variants": StagedStat((M, W, 2), tuple(parts), stage)})
    assert not os.path.exists(os.path.join(share_dir(lab, "b"), "signature.json"))
    assert not os.path.exists(share_dir(lab, "b"))  # no file of b on the exchange
    assert sorted(os.listdir(stage)) == left  # nothing was moved
    # nothing left the private stage, so the ledger is not marked and the party can try again
    assert not (lab.ledger("b").entry(lab.manifest) or {}).get("published")
    again = open_publication(lab.uri, lab.manifest, "b", lab.keys["b"], ledger=lab.ledger("b"))
    stage2 = again.new_stage()
    again.publish({"t0.CtC": values("b")["t0.CtC"]}, {"kind": "regression"}, own=lab.own("b"),
                  staged={"variants": StagedStat((M, W, 2), tuple(stage_parts(again, stage2, "b", CUTS["b"])), stage2)})
    assert os.path.exists(os.path.join(share_dir(lab, "b"), "signature.json"))


# ---------------------------------------------------------------------------------- waiting for the shares


def test_wait_for_shares(lab3):
    lab = lab3
    for p in ("a", "b"):
        publish_parted(lab, p)
    t0 = time.monotonic()
    assert wait_for_shares(lab.uri, lab.manifest, 0.3, poll=0.05) is False  # c is missing
    assert 0.29 <= time.monotonic() - t0 < 5
    publish_parted(lab, "c")
    t0 = time.monotonic()
    assert wait_for_shares(lab.uri, lab.manifest, 30, poll=0.05) is True
    assert time.monotonic() - t0 < 10  # at once (generous: a loaded CI machine)


def test_a_sum_gathered_while_waiting_equals_the_sum_at_the_close(lab3):
    """The coordinator adds each share as it lands (wait_for_shares(into=...)); combine uses that sum
    only when it holds exactly the survivors under the signed headers still on the exchange."""
    from dash_spark.multiparty.exchange import ShareSum

    lab = lab3
    for p in PARTIES3[:2]:
        publish_parted(lab, p)
    acc = ShareSum(lab.uri, lab.manifest)
    assert wait_for_shares(lab.uri, lab.manifest, 0.2, poll=0.05, into=acc) is False
    assert sorted(acc.headers) == ["a", "b"]
    headers, totals = add_shares(lab.uri, lab.manifest, parties=["a", "b"])
    assert all(np.array_equal(acc.totals[n], totals[n]) for n in totals)
    publish_parted(lab, "c")
    assert wait_for_shares(lab.uri, lab.manifest, 5, poll=0.05, into=acc) is True
    # the last share is left to combine, which adds it while the survivors unmask
    assert sorted(acc.headers) == ["a", "b"] and acc.matches(["a", "b"]) and not acc.matches(PARTIES3)
    close_and_reveal(lab)
    used = []
    orig = ShareSum.matches

    def spy(self, parties):
        used.append(orig(self, parties))
        return used[-1]

    ShareSum.matches = spy
    try:
        _, pooled = combine(lab.uri, lab.manifest, partial=acc)
    finally:
        ShareSum.matches = orig
    assert used == [True] and acc.broken and sorted(acc.headers) == PARTIES3  # c added, used once: unmasked in place
    assert_pooled(pooled)
    with pytest.raises(ProtocolError, match="cannot be added"):
        acc.add("a")


def test_a_gathered_sum_is_not_used_when_a_header_changed(lab3):
    """A share re-signed by its party after the coordinator added it (an exchange holding another
    signed header): the gathered sum is dropped and every share is read again."""
    from dash_spark.multiparty.exchange import ShareSum

    lab = lab3
    for p in PARTIES3[:2]:
        publish_parted(lab, p)
    acc = ShareSum(lab.uri, lab.manifest)
    wait_for_shares(lab.uri, lab.manifest, 0.2, poll=0.05, into=acc)
    assert sorted(acc.headers) == ["a", "b"]
    publish_parted(lab, "c")
    sdir = share_dir(lab, "b")
    header = json.load(open(os.path.join(sdir, "header.json")))
    header["created"] = "2000-01-01T00:00:00+00:00"
    body = canonical_json(header)
    with open(os.path.join(sdir, "header.json"), "wb") as fh:
        fh.write(body)
    sig = json.load(open(os.path.join(sdir, "signature.json")))
    sig.update(header_sha256=hashlib.sha256(body).hexdigest(), signature=lab.keys["b"].sign(body).hex())
    with open(os.path.join(sdir, "signature.json"), "wb") as fh:
        fh.write(canonical_json(sig) + b"\n")
    assert not acc.matches(PARTIES3)
    close_and_reveal(lab)
    _, pooled = combine(lab.uri, lab.manifest, partial=acc)
    assert not acc.broken  # not used: the shares were read again
    assert_pooled(pooled)


# ---------------------------------------------------------------------------------- through the command line


def test_cli_compress_stages_privately_and_a_failed_job_leaves_nothing(tmp_path, spark, monkeypatch):
    from dash_spark.scanner import pipeline
    from dash_spark.multiparty.rounds import Ledger

    from .oracle_data import make_files
    from .party_flow import Study

    files = make_files(tmp_path, np.random.default_rng(17), n=120, m=220, name="g")
    st = Study(tmp_path, ["ann", "ben"], name="sp")
    manifest = st.manifest("--bim", files.bfile + ".bim")
    st.join(manifest)
    ledger = Ledger(str(tmp_path / "keys" / "ann.key"))
    shares = os.path.join(os.path.dirname(manifest), "shares")
    data = ["--pheno", files.pheno, "--covar", files.covar, "--bfile", files.bfile]
    real, seen = pipeline.stage_model_share, []

    def failing(spark, cfg, model, writer):  # the job staged its rows, then the driver lost it
        real(spark, cfg, model, writer)
        seen.append((writer.stage, sorted(os.listdir(writer.stage))))
        raise RuntimeError("job aborted: executor lost")

    monkeypatch.setattr(pipeline, "stage_model_share", failing)
    with pytest.raises(RuntimeError, match="executor lost"):
        st.compress(manifest, "ann", *data)
    stage, staged = seen[0]
    assert os.path.dirname(stage) == ledger.dir and staged and all(f.startswith("variants@") for f in staged)
    assert not os.path.exists(stage)  # removed with its masked rows
    assert [f for f in os.listdir(ledger.dir) if ".stage-" in f] == []
    assert not os.path.exists(os.path.join(shares, "ann"))  # nothing of ann on the exchange
    assert not ledger.entry(locate_manifest(manifest)[1])["published"]
    # the retry publishes, staging in the given --share-stage location, which is left empty
    def recording(spark, cfg, model, writer):
        parts = real(spark, cfg, model, writer)
        seen.append((writer.stage, sorted(os.listdir(writer.stage))))
        return parts

    monkeypatch.setattr(pipeline, "stage_model_share", recording)
    base = tmp_path / "stagebase"
    base.mkdir()
    code, _, err = st.compress(manifest, "ann", *data, "--share-stage", base)
    assert code == 0, err[-3000:]
    assert os.path.dirname(seen[1][0]) == str(base) and seen[1][1]
    assert os.listdir(base) == []  # the stage was emptied by publishing, then removed
    sdir = os.path.join(shares, "ann")
    header = json.loads(open(os.path.join(sdir, "header.json")).read())
    parts = header["stats"]["variants"]["parts"]
    assert header["stats"]["variants"]["shape"][0] == 220 and parts[0]["start"] == 0 and parts[-1]["stop"] == 220
    assert sorted(f for f in os.listdir(sdir) if f.startswith("variants")) == sorted(
        ["variants.parquet"] + [part_file("variants", q["start"]) for q in parts])
    for q in parts:
        with open(os.path.join(sdir, part_file("variants", q["start"])), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == q["sha256"]
    assert ledger.entry(locate_manifest(manifest)[1])["published"]


def test_two_runs_of_a_party_computing_at_once_publish_once(lab3):
    """Two compress runs of one party in one round both pass the checks and stage their rows (a
    scheduler that started the job twice): the first to publish claims the round; the other is
    refused before anything of it reaches the exchange, whatever it computed."""
    lab = lab3
    one = open_publication(lab.uri, lab.manifest, "a", lab.keys["a"], ledger=lab.ledger("a"))
    two = open_publication(lab.uri, lab.manifest, "a", lab.keys["a"], ledger=lab.ledger("a"))
    stage1, stage2 = one.new_stage(), two.new_stage()
    parts1 = stage_parts(one, stage1, "a", CUTS["a"])
    other = values("a")["variants"] + 1.0  # the second run saw other data
    parts2 = [two.part_writer("variants", stage2).write(0, other)]
    one.publish({"t0.CtC": values("a")["t0.CtC"]}, {"kind": "regression"}, own=lab.own("a"),
                staged={"variants": StagedStat((M, W, 2), tuple(parts1), stage1)})
    before = sorted(os.listdir(share_dir(lab, "a")))
    with pytest.raises(DuplicateShareError, match="party 'a' already published"):
        two.publish({"t0.CtC": values("a")["t0.CtC"]}, {"kind": "regression"}, own=lab.own("a"),
                    staged={"variants": StagedStat((M, W, 2), tuple(parts2), stage2)})
    assert sorted(os.listdir(share_dir(lab, "a"))) == before and os.listdir(stage2)  # nothing moved
    # the claim holds even before the first run writes anything: a run that claimed first wins
    lab2 = lab.ledger("b")
    b1 = open_publication(lab.uri, lab.manifest, "b", lab.keys["b"], ledger=lab2)
    lab2.claim_publication(lab.manifest, "b", who="b")
    with pytest.raises(DuplicateShareError):
        b1.publish({"t0.CtC": values("b")["t0.CtC"]}, {"kind": "regression"}, own=lab.own("b"))
    assert not os.path.exists(share_dir(lab, "b"))
