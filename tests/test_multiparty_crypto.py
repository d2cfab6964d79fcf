"""Keys, fixed-point ring encoding, pairwise masking and the signed share exchange (no Spark)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat

import numpy as np
import pytest
from scipy.stats import chi2

from dash_spark.errors import ConfigError, DashError, InputError, OutputError
from dash_spark.multiparty import ProtocolError
from dash_spark.multiparty import masking
from dash_spark.multiparty.encoding import (
    FRAC_BITS,
    EncodingOverflow,
    add,
    add_into,
    decode,
    encode,
    neg,
    ring_sum,
    sub,
)
from dash_spark.multiparty.exchange import (
    DuplicateShareError,
    Manifest,
    mask_stats,
    new_round_id,
    publish_share,
    read_manifest,
    read_shares,
    sum_shares,
    write_manifest,
)
from dash_spark.multiparty.rounds import Ledger, combine, join_round
from dash_spark.multiparty.rounds import publish_stats as _publish_stats
from dash_spark.multiparty.keys import (
    PrivateKeys,
    fingerprint,
    generate_keypair,
    load_private,
    load_public,
    write_keypair,
)
from dash_spark.multiparty.masking import mask_share, mask_stream, pairwise_seed, pairwise_seeds


def det_keys(name: str) -> PrivateKeys:
    """Deterministic keys, so that the statistical tests below are stable."""
    return PrivateKeys.from_raw(name, hashlib.sha256(b"x25519|" + name.encode()).digest(),
                                hashlib.sha256(b"ed25519|" + name.encode()).digest())


def to_ring(values: list[int]) -> np.ndarray:
    m = [(v % (1 << 128)) for v in values]
    return np.array([[v & ((1 << 64) - 1), v >> 64] for v in m], dtype=np.uint64)


def from_ring(a: np.ndarray) -> list[int]:
    out = []
    for lo, hi in a.reshape(-1, 2).tolist():
        v = (int(hi) << 64) | int(lo)
        out.append(v - (1 << 128) if v >> 127 else v)
    return out


# ------------------------------------------------------------------------------------------ keys


def test_write_keypair_modes_and_roundtrip(tmp_path):
    key_path, pub_path = write_keypair(tmp_path / "site-a")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub_path).st_mode) == 0o644
    priv = load_private(key_path)
    pub = load_public(pub_path)
    assert priv.party == pub.party == "site-a"
    assert priv.public() == pub
    assert len(pub.x25519_pub) == len(pub.ed25519_pub) == 32
    fp = fingerprint(pub)
    assert len(fp) == 16 and fp == hashlib.sha256(pub.x25519_pub + pub.ed25519_pub).hexdigest()[:16]
    assert fingerprint(priv) == fp
    on_disk = json.loads(open(key_path).read())
    assert set(on_disk) >= {"party", "x25519", "ed25519"}
    assert on_disk["x25519"] not in repr(priv)  # no key material in reprs
    assert pub.verify(priv.sign(b"msg"), b"msg") and not pub.verify(priv.sign(b"msg"), b"msh")


def test_generate_keypair_json():
    priv_json, pub_json = generate_keypair("p1")
    priv, pub = json.loads(priv_json), json.loads(pub_json)
    assert priv["party"] == pub["party"] == "p1"
    assert len(priv["x25519"]) == len(pub["ed25519"]) == 64
    assert priv["x25519"] != pub["x25519"]
    with pytest.raises(InputError, match="invalid party name"):
        generate_keypair("Bad Name")


def test_write_keypair_refuses_overwrite(tmp_path):
    write_keypair(tmp_path / "a")
    before = open(tmp_path / "a.key", "rb").read()
    with pytest.raises(OutputError, match="already exists"):
        write_keypair(tmp_path / "a")
    assert open(tmp_path / "a.key", "rb").read() == before
    (tmp_path / "b.pub").write_text("{}")
    with pytest.raises(OutputError, match=r"b\.pub"):
        write_keypair(tmp_path / "b")
    assert not (tmp_path / "b.key").exists()


def test_load_private_refuses_open_mode(tmp_path):
    key_path, pub_path = write_keypair(tmp_path / "c")
    os.chmod(key_path, 0o644)
    with pytest.raises(InputError, match="chmod 600") as err:
        load_private(key_path)
    assert key_path in str(err.value) and "0644" in str(err.value)
    os.chmod(pub_path, 0o600)
    with pytest.raises(InputError, match="expected a private key file, found a public"):
        load_private(pub_path)


def test_bad_key_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text('{"party": "x", "x25519": "zz", "ed25519": "00"}')
    with pytest.raises(InputError, match="bad.pub"):
        load_public(bad)
    bad.write_text("not json")
    with pytest.raises(InputError, match="bad.pub.*not JSON"):
        load_public(bad)
    with pytest.raises(InputError, match="not found"):
        load_public(tmp_path / "nope.pub")


# -------------------------------------------------------------------------------------- encoding


def test_roundtrip_across_magnitudes(rng):
    x = np.exp(rng.uniform(math.log(1e-12), math.log(1e15), 3000)) * rng.choice([-1.0, 1.0], 3000)
    x = np.concatenate([x, [0.0, -0.0, 1.0, -1.0, 0.5, -2.0**-64, 2.0**-65, 3.0 * 2.0**-66]])
    e = encode(x, name="x")
    assert e.shape == x.shape + (2,) and e.dtype == np.uint64
    d = decode(e)
    np.testing.assert_allclose(d, x, rtol=1e-15, atol=2.0**-FRAC_BITS)
    exact = np.abs(x) >= 2.0**-11  # then x * 2^64 is an integer: the roundtrip is exact
    assert np.array_equal(d[exact], x[exact])
    for fb in (0, 20, 100):
        y = np.round(x[:50] * 2.0**min(fb, 20)) / 2.0**min(fb, 20)
        y = y[np.abs(y) < 2.0 ** (127 - fb - 8)]
        np.testing.assert_allclose(decode(encode(y, fb), fb), y, rtol=1e-15, atol=2.0**-fb)


def test_sums_match_fsum(rng):
    arrays = [np.exp(rng.uniform(math.log(1e-12), math.log(1e15), 400)) * rng.choice([-1.0, 1.0], 400)
              for _ in range(6)]
    total = decode(ring_sum([encode(a, name=f"a{i}") for i, a in enumerate(arrays)]))
    expected = np.array([math.fsum(col) for col in zip(*arrays)])
    np.testing.assert_allclose(total, expected, rtol=1e-15, atol=6 * 2.0**-FRAC_BITS)
    # cancellation to exactly representable values
    a = np.array([1e15, -3.25, 7.0])
    assert np.array_equal(decode(add(encode(a), encode(-a))), np.zeros(3))
    assert np.array_equal(decode(sub(encode(a), encode(a / 2))), a / 2)
    assert np.array_equal(decode(neg(encode(a))), -a)


def test_negative_numbers_are_twos_complement():
    assert encode(-1.0).tolist() == [0, 2**64 - 1]  # -2^64 mod 2^128
    assert encode(-(2.0**-64)).tolist() == [2**64 - 1, 2**64 - 1]  # -1
    assert encode(1.0).tolist() == [0, 1]
    assert from_ring(encode(np.array([-1.5, 2.25]), 4)) == [-24, 36]
    assert np.array_equal(decode(encode(np.array([[-1.5], [-1e15]]))), [[-1.5], [-1e15]])


def test_add_carries_and_wraps():
    a = to_ring([2**64 - 1, -1, (1 << 127) - 1, 5])
    b = to_ring([1, 1, 1, -7])
    assert from_ring(add(a, b)) == [2**64, 0, -(1 << 127), -2]
    assert from_ring(sub(add(a, b), b)) == from_ring(a)
    assert from_ring(sub(to_ring([0, 2**64]), to_ring([1, 1]))) == [-1, 2**64 - 1]
    with pytest.raises(InputError, match="shapes differ"):
        add(a, b[:2])
    with pytest.raises(InputError, match="expected uint64"):
        add(a, a.astype(np.int64))


def test_decode_rounds_correctly(rng):
    ints = [int(v) * int(s) for v, s in zip(rng.integers(0, 2**63, 300, dtype=np.uint64), rng.choice([-1, 1], 300))]
    ints = [v << int(k) for v, k in zip(ints, rng.integers(0, 64, 300))]
    ints += [(1 << 53) + 1, ((1 << 53) + 1) << 60, -(((1 << 53) + 3) << 70), ((1 << 54) + 3) << 10,
             -(1 << 127), (1 << 127) - 1, 0, -1, 1, (1 << 64) - 1, -(1 << 64) - 1]
    a = to_ring(ints)
    assert decode(a, 0).tolist() == [float(v) for v in ints]
    assert decode(a, 64).tolist() == [v / 2**64 for v in ints]


def test_overflow_and_nan_name_the_statistic():
    with pytest.raises(EncodingOverflow, match=r"'t0\.yty'.*1 of 2 values are too large.*2\^55") as err:
        encode(np.array([1.0, 2.0**55]), name="t0.yty")
    assert isinstance(err.value, DashError)
    encode(np.array([2.0**55 - 8]), name="ok")  # just below the limit
    with pytest.raises(EncodingOverflow, match=r"'t1\.Cty'.*2 of 3 values are not finite"):
        encode(np.array([np.nan, 1.0, -np.inf]), name="t1.Cty")
    with pytest.raises(EncodingOverflow, match="'z'"):
        encode(np.array([1e6]), 32, max_abs_bits=10, name="z")
    with pytest.raises(ConfigError, match="frac_bits"):
        encode(np.array([1.0]), 200)


def _exact_encoding(x: float, frac_bits: int) -> int:
    """Reference: round(x * 2^frac_bits) to the nearest integer, ties to even, reduced mod 2^128."""
    from fractions import Fraction

    return round(Fraction(x) * 2**frac_bits) % (1 << 128)


def test_encode_matches_integer_reference(rng):
    # magnitudes where the low limb has its top bit set, ties at every frac_bits, tiny values
    # that round to 0 or +-1, and values near the limit: every ring element equals the exact integer
    x = np.concatenate([
        np.exp(rng.uniform(math.log(1e-25), math.log(2.0**54), 4000)) * rng.choice([-1.0, 1.0], 4000),
        [2.0**-64 * 0.5, 2.0**-64 * 1.5, -(2.0**-64) * 2.5, 2.0**-66, -(2.0**-65), 0.0, -0.0],
        [1.0 - 2.0**-53, 2.0**63 / 2**64, 0.75, -0.75, 2.0**55 - 8, -(2.0**55 - 8), 5e-324, -5e-324],
    ])
    for fb in (0, 1, 30, 64, 100):
        y = x[np.abs(x) < 2.0 ** (127 - fb - 8)]
        got = encode(y, fb, name="x")
        want = to_ring([_exact_encoding(float(v), fb) for v in y])
        assert np.array_equal(got, want), fb
        # correctly rounded decode of the exact integers: the roundtrip of representable values is exact
        assert decode(got, fb).tolist() == [float(v) / 2**fb for v in from_ring(got)]
    e = encode(x[:100].reshape(10, 5, 2))  # any value shape; non-contiguous input too
    assert e.shape == (10, 5, 2, 2)
    assert np.array_equal(encode(x[:200:2]), encode(x[:200].copy()[::2]))


def test_encode_overflow_counts_every_bad_value():
    with pytest.raises(EncodingOverflow, match=r"'big'.*3 of 5 values are too large.*max \|x\| = 1e\+20"):
        encode(np.array([2.0**55, -(2.0**55), 1.0, 1e20, 0.0]), name="big")
    with pytest.raises(EncodingOverflow, match=r"1 of 3 values are not finite"):
        encode(np.array([1e20, np.nan, 1.0]), name="nan_first")  # non-finite values are named first
    with pytest.raises(EncodingOverflow, match=r"too large"):
        encode(np.array([1.0]), 0, max_abs_bits=0, name="edge")  # |x| < 2^0 excludes 1
    assert from_ring(encode(np.array([-0.5, 0.5]), 0, max_abs_bits=0, name="edge")) == [0, 0]  # ties to even


def test_ring_arithmetic_matches_python_integers(rng):
    vals = [int(v) for v in rng.integers(0, 2**63, 400, dtype=np.uint64)]
    vals = [((v << 65) ^ (w << 1) ^ int(k)) % (1 << 128) for v, w, k in zip(vals, vals[::-1], rng.integers(0, 2, 400))]
    vals += [0, 1, 2**64 - 1, 2**64, 2**127 - 1, 2**127, 2**128 - 1, 2**128 - 2**64]
    other = vals[::-1]
    a, b = to_ring(vals), to_ring(other)
    mod = 1 << 128

    def signed(v):
        v %= mod
        return v - mod if v >> 127 else v

    assert from_ring(add(a, b)) == [signed(x + y) for x, y in zip(vals, other)]
    assert from_ring(sub(a, b)) == [signed(x - y) for x, y in zip(vals, other)]
    assert from_ring(neg(a)) == [signed(-x) for x in vals]
    assert from_ring(ring_sum([a, b, a])) == [signed(2 * x + y) for x, y in zip(vals, other)]
    assert from_ring(ring_sum([a])) == [signed(x) for x in vals] and ring_sum([a]) is not a
    acc = a.copy()
    assert add_into(acc, b) is acc and from_ring(acc) == [signed(x + y) for x, y in zip(vals, other)]
    add_into(acc, b, subtract=True)
    assert np.array_equal(acc, a)
    with pytest.raises(InputError, match="writable C-contiguous"):
        add_into(a[::2], b[::2])
    with pytest.raises(InputError, match="shapes differ"):
        add_into(acc, b[:3])


def test_npy_files_are_numpy_format(tmp_path):
    import io

    from dash_spark.multiparty.exchange import _load_npy, _npy_parts

    a = np.arange(24, dtype=np.uint64).reshape(3, 4, 2) * np.uint64(2**61)
    head, data = _npy_parts(a)
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    assert buf.getvalue() == head + bytes(data)
    assert np.array_equal(_load_npy(buf.getvalue()), a)
    assert np.array_equal(_load_npy(head + bytes(data)), a)
    with pytest.raises(ValueError, match="declares"):
        _load_npy(buf.getvalue()[:-1])
    with pytest.raises(ValueError, match="declares"):
        _load_npy(buf.getvalue() + b"\0")
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(a), allow_pickle=False)  # other layouts are read as numpy reads them
    assert np.array_equal(_load_npy(buf.getvalue()), a)


# --------------------------------------------------------------------------------------- masking


def _seeds(names, study="s1", round_id="r1"):
    keys = {n: det_keys(n) for n in names}
    pubs = {n: k.public().x25519_pub for n, k in keys.items()}
    return {n: pairwise_seeds(keys[n], pubs, study=study, round_id=round_id, me=n) for n in names}


def test_pairwise_seed_symmetric_and_unique():
    a, b, c = det_keys("a"), det_keys("b"), det_keys("c")
    kw = dict(study="s", round_id="r")
    sab = pairwise_seed(a, b.public().x25519_pub, me="a", them="b", **kw)
    assert len(sab) == 32
    assert sab == pairwise_seed(b, a.public().x25519_pub, me="b", them="a", **kw)
    sac = pairwise_seed(a, c.public().x25519_pub, me="a", them="c", **kw)
    sbc = pairwise_seed(b, c.public().x25519_pub, me="b", them="c", **kw)
    assert len({sab, sac, sbc}) == 3
    assert sab != pairwise_seed(a, b.public().x25519_pub, me="a", them="b", study="s", round_id="r2")
    assert sab != pairwise_seed(a, b.public().x25519_pub, me="a", them="b", study="s2", round_id="r")
    with pytest.raises(ProtocolError, match="paired with itself"):
        pairwise_seed(a, a.public().x25519_pub, me="a", them="a", **kw)
    with pytest.raises(ProtocolError, match="expected 'b', found 'a'"):
        pairwise_seed(a, c.public().x25519_pub, me="b", them="c", **kw)


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_masked_shares_sum_to_plain_sum(rng, n_parties):
    names = [f"p{i}" for i in range(n_parties)]
    seeds = _seeds(names)
    values = {n: encode(rng.normal(0, 1e3, (7, 3)), name="v") for n in names}
    shares = [mask_share(values[n], "t0.CtC", me=n, parties=names, seeds=seeds[n]) for n in names]
    assert all(s.shape == (7, 3, 2) for s in shares)
    assert np.array_equal(ring_sum(shares), ring_sum(values.values()))
    for n, s in zip(names, shares):
        assert np.mean(s == values[n]) < 0.01  # masked
    # any proper subset of shares does not sum to the plain partial sum
    assert not np.array_equal(ring_sum(shares[:-1]), ring_sum([values[n] for n in names[:-1]]))


def test_share_alone_looks_uniform():
    names = ["a", "b", "c"]
    seeds = _seeds(names)
    zero = np.zeros((100_000, 2), dtype=np.uint64)
    share = mask_share(zero, "t0.yx", me="b", parties=names, seeds=seeds["b"])
    counts = np.bincount(share.astype("<u8").view(np.uint8).ravel(), minlength=256)
    expected = counts.sum() / 256
    p = chi2.sf(((counts - expected) ** 2 / expected).sum(), 255)
    assert p > 1e-4, p
    ones = np.unpackbits(share.view(np.uint8)).mean()
    assert abs(ones - 0.5) < 1e-3, ones
    # a new round gives an unrelated share
    seeds2 = _seeds(names, round_id="r2")
    share2 = mask_share(zero, "t0.yx", me="b", parties=names, seeds=seeds2["b"])
    assert np.mean(share2 == share) < 1e-3
    # and so does another statistic in the same round
    share3 = mask_share(zero, "t0.ym", me="b", parties=names, seeds=seeds["b"])
    assert np.mean(share3 == share) < 1e-3


def test_mask_stream_per_statistic():
    seed = _seeds(["a", "b"])["a"]["b"]
    m1, m2 = mask_stream(seed, "s1", 2000), mask_stream(seed, "s2", 2000)
    assert m1.shape == (2000, 2) and m1.dtype == np.uint64
    assert np.mean(m1 == m2) < 1e-3
    assert np.array_equal(mask_stream(seed, "s1", 10), m1[:10])  # deterministic prefix
    other = _seeds(["a", "c"])["a"]["c"]
    assert np.mean(mask_stream(other, "s1", 2000) == m1) < 1e-3


def test_mask_share_chunking_is_invisible(monkeypatch, rng):
    names = ["a", "b", "c"]
    seeds = _seeds(names)
    v = encode(rng.normal(size=(11,)))
    full = mask_share(v, "x", me="b", parties=names, seeds=seeds["b"])
    monkeypatch.setattr(masking, "_CHUNK_WORDS", 3)
    assert np.array_equal(mask_share(v, "x", me="b", parties=names, seeds=seeds["b"]), full)
    expected = add(sub(v, mask_stream(seeds["b"]["a"], "x", 11)), mask_stream(seeds["b"]["c"], "x", 11))
    assert np.array_equal(full, expected)


def test_mask_share_inplace_equals_copy(rng):
    seeds = _seeds(["a", "b", "c"])["b"]
    enc = encode(rng.standard_normal((50, 3)))
    masked = mask_share(enc, "v", me="b", parties=["a", "b", "c"], seeds=seeds)
    assert not np.array_equal(masked, enc)
    same = enc.copy()
    assert mask_share(same, "v", me="b", parties=["a", "b", "c"], seeds=seeds, inplace=True) is same
    assert np.array_equal(same, masked)
    with pytest.raises(InputError, match="cannot mask in place"):
        mask_share(enc[::2], "v", me="b", parties=["a", "b", "c"], seeds=seeds, inplace=True)


def test_mask_share_checks_parties():
    names = ["a", "b", "c"]
    seeds = _seeds(names)
    v = encode(np.zeros(3))
    with pytest.raises(ProtocolError, match="not in the party list"):
        mask_share(v, "x", me="d", parties=names, seeds=seeds["a"])
    with pytest.raises(ProtocolError, match="lacks seeds with c"):
        mask_share(v, "x", me="a", parties=names, seeds={"b": seeds["a"]["b"]})
    with pytest.raises(ProtocolError, match="not sorted"):
        mask_share(v, "x", me="a", parties=["b", "a"], seeds=seeds["a"])
    with pytest.raises(InputError, match="statistic name"):
        mask_share(v, "../x", me="a", parties=names, seeds=seeds["a"])


# -------------------------------------------------------------------------------------- exchange

PARTIES = ["a", "b", "c"]
SETTINGS = {"kind": "scan", "intercept": True, "missing_genotypes": "drop", "pheno_names": ["y"],
            "covar_names": ["age"], "variant_hash": None, "self_masks": False}
LEDGERS = {}  # the parties' ledgers of the current test (keyed by tmp_path and party)


def _ledger(uri, party):
    return LEDGERS.setdefault((uri.removeprefix("file://"), party),
                              Ledger(os.path.join(os.path.dirname(uri.removeprefix("file://")), "keys", party)))


def _join_all(uri, manifest, keys):
    os.makedirs(os.path.join(os.path.dirname(uri), "keys"), exist_ok=True)
    for p in manifest.party_names:
        join_round(uri, manifest, p, keys[p], _ledger(uri, p))


def publish_stats(uri, manifest, party, keys, stats, extra=None):
    """Publish through the round protocol with the party's ledger (joined by the fixture)."""
    return _publish_stats(uri, manifest, party, keys, stats, extra, ledger=_ledger(uri, party))


@pytest.fixture
def study(tmp_path):
    keys = {n: det_keys(n) for n in PARTIES}
    manifest = Manifest.new("study1", [k.public() for k in keys.values()], SETTINGS, round_id="round1")
    uri = str(tmp_path / "exchange")
    write_manifest(uri, manifest)
    _join_all(uri, manifest, keys)
    return uri, manifest, keys


def _party_stats(i: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(100 + i)
    return {"t0.CtC": r.normal(0, 50, (2, 2)), "t0.yty": np.array([r.uniform(0, 1e6)]),
            "per_variant": r.normal(0, 1e3, (9, 4))}


def _publish(uri, manifest, keys, party, extra=None, stats=None):
    i = PARTIES.index(party)
    return publish_stats(uri, manifest, party, keys[party], _party_stats(i) if stats is None else stats,
                         {"variant_hash": "abc", "pheno_names": ["y"]} if extra is None else extra)


def _share_dir(uri, manifest, party):
    return os.path.join(uri, manifest.study, manifest.round_id, "shares", party)


def test_manifest_roundtrip(study, tmp_path):
    uri, manifest, keys = study
    path = os.path.join(uri, "study1", "round1", "manifest.json")
    assert os.path.exists(path)
    again = read_manifest(path)
    assert again == manifest and again.digest() == manifest.digest()
    assert read_manifest(os.path.dirname(path)) == manifest
    assert read_manifest("file://" + path) == manifest
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.party_names == PARTIES and manifest.frac_bits == 64
    assert manifest.encoding == {"ring_bits": 128, "frac_bits": 64}
    assert len(new_round_id()) == 32 and new_round_id() != new_round_id()
    changed = Manifest.from_json(manifest.to_json().replace('"drop"', '"mean"'))
    assert changed.digest() != manifest.digest()
    with pytest.raises(OutputError, match="already exists"):
        write_manifest(uri, manifest)
    with pytest.raises(InputError, match="at least two"):
        Manifest.new("s", [keys["a"].public()], SETTINGS)
    dup = {"a": keys["a"].public().manifest_entry(), "b": keys["a"].public().manifest_entry()}
    with pytest.raises(InputError, match="same x25519 key"):
        Manifest.new("s", dup, SETTINGS)


def test_publish_and_combine(study):
    uri, manifest, keys = study
    for p in PARTIES:
        _publish(uri, manifest, keys, p)
    headers, pooled = combine(uri, manifest, must_agree=["variant_hash", "pheno_names"])
    assert sorted(headers) == PARTIES and headers["b"]["extra"]["variant_hash"] == "abc"
    stats = [_party_stats(i) for i in range(3)]
    for name in stats[0]:
        np.testing.assert_allclose(pooled[name], sum(s[name] for s in stats), rtol=1e-15, atol=1e-12)
    shares = read_shares(uri, manifest)
    assert sorted(shares["a"][1]) == sorted(stats[0])
    plain = encode(stats[0]["per_variant"])
    assert np.mean(shares["a"][1]["per_variant"] == plain) < 0.01  # what is stored is masked
    assert np.array_equal(decode(sum_shares(shares)["t0.yty"]), pooled["t0.yty"])
    files = sorted(os.listdir(_share_dir(uri, manifest, "a")))
    assert files == ["header.json", "per_variant.npy", "signature.json", "t0.CtC.npy", "t0.yty.npy"]


def test_file_uri_exchange(study):
    uri, manifest, keys = study
    for p in PARTIES:
        _publish("file://" + uri, manifest, keys, p)
    assert sorted(read_shares(uri, manifest)) == PARTIES


def test_missing_party(study):
    uri, manifest, keys = study
    _publish(uri, manifest, keys, "a")
    _publish(uri, manifest, keys, "c")
    with pytest.raises(ProtocolError, match=r"missing from 'b'.*all 3 parties.*Combine needs every party"):
        read_shares(uri, manifest)


def test_tampered_statistic(study):
    uri, manifest, keys = study
    for p in PARTIES:
        _publish(uri, manifest, keys, p)
    path = os.path.join(_share_dir(uri, manifest, "b"), "per_variant.npy")
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ProtocolError, match=r"party 'b'.*statistic 'per_variant' does not match"):
        read_shares(uri, manifest)


def test_tampered_header(study):
    uri, manifest, keys = study
    for p in PARTIES:
        _publish(uri, manifest, keys, p)
    path = os.path.join(_share_dir(uri, manifest, "c"), "header.json")
    text = open(path).read()
    assert '"abc"' in text
    open(path, "w").write(text.replace('"abc"', '"abd"'))
    with pytest.raises(ProtocolError, match=r"party 'c'.*signature does not verify"):
        read_shares(uri, manifest)


def test_deleted_signature(study):
    uri, manifest, keys = study
    for p in PARTIES:
        _publish(uri, manifest, keys, p)
    os.remove(os.path.join(_share_dir(uri, manifest, "a"), "signature.json"))
    with pytest.raises(ProtocolError, match=r"party 'a'.*unsigned"):
        read_shares(uri, manifest)


def test_forged_signature(study):
    uri, manifest, keys = study
    for p in PARTIES:
        _publish(uri, manifest, keys, p)
    sig_path = os.path.join(_share_dir(uri, manifest, "a"), "signature.json")
    sig = json.loads(open(sig_path).read())
    header = open(os.path.join(_share_dir(uri, manifest, "a"), "header.json"), "rb").read()
    sig["signature"] = keys["b"].sign(header).hex()  # signed by the wrong party
    open(sig_path, "w").write(json.dumps(sig))
    with pytest.raises(ProtocolError, match=r"party 'a'.*signature does not verify"):
        read_shares(uri, manifest)


def test_replayed_share_from_another_round(study):
    uri, manifest, keys = study
    other = Manifest.new("study1", [k.public() for k in keys.values()], SETTINGS, round_id="round2")
    write_manifest(uri, other)
    _join_all(uri, other, keys)
    _publish(uri, manifest, keys, "b")
    for p in ("a", "c"):
        _publish(uri, other, keys, p)
    shutil.copytree(_share_dir(uri, manifest, "b"), _share_dir(uri, other, "b"))
    with pytest.raises(ProtocolError, match=r"party 'b'.*replayed.*round 'round2'.*found.*round 'round1'"):
        read_shares(uri, other)


def test_publish_twice(study):
    uri, manifest, keys = study
    _publish(uri, manifest, keys, "a")
    with pytest.raises(DuplicateShareError, match="party 'a' already published") as err:
        _publish(uri, manifest, keys, "a")
    assert isinstance(err.value, ProtocolError) and isinstance(err.value, OutputError)
    assert not [f for f in os.listdir(_share_dir(uri, manifest, "a")) if f.endswith(".tmp")]
    os.remove(os.path.join(_share_dir(uri, manifest, "a"), "signature.json"))  # an interrupted publish
    with pytest.raises(DuplicateShareError, match="party 'a' already published"):  # the ledger remembers
        _publish(uri, manifest, keys, "a")
    with pytest.raises(DuplicateShareError, match="party 'a' has an incomplete share"):  # and so does the exchange
        publish_share(uri, manifest, "a", keys["a"], {"x": encode(np.zeros(2))})


def test_parties_disagree(study):
    uri, manifest, keys = study
    _publish(uri, manifest, keys, "a")
    _publish(uri, manifest, keys, "b", extra={"variant_hash": "xyz", "pheno_names": ["y"]})
    bad = _party_stats(2)
    bad["t0.CtC"] = np.zeros((3, 3))
    _publish(uri, manifest, keys, "c", stats=bad)
    with pytest.raises(ProtocolError, match=r"party 'b'.*'variant_hash' differs.*expected 'abc', found 'xyz'"):
        read_shares(uri, manifest, must_agree=["variant_hash"])
    with pytest.raises(ProtocolError,
                       match=r"party 'c'.*statistics differ.*shape \(2, 2, 2\), found shape \(3, 3, 2\)"):
        read_shares(uri, manifest)


def test_wrong_keys_and_manifest(study):
    uri, manifest, keys = study
    with pytest.raises(ProtocolError, match="does not match party 'a'"):
        _publish(uri, manifest, {"a": keys["b"]}, "a")
    with pytest.raises(ProtocolError, match="party 'd' is not listed"):
        publish_share(uri, manifest, "d", det_keys("d"), {"x": encode(np.zeros(2))})
    other = Manifest.new("study1", [k.public() for k in keys.values()], {"kind": "regression"}, round_id="round1")
    with pytest.raises(ProtocolError, match="manifest differs"):
        publish_share(uri, other, "a", keys["a"], mask_stats(other, "a", keys["a"], {"x": encode(np.zeros(2))},
                                                             seeds={"b": bytes(32), "c": bytes(32)}))
