"""A round's protocol around the shares: pinned keys, a signed manifest, per-round ephemeral keys,
a party's ledger, the survivor set, the survivors' confirmations, the release guard and the
survivors' reveals (double masking).

A round, as the parties run it::

    coordinator  party manifest --sign-key coord.key   manifest.json + manifest.sig (Ed25519); the
                                                       threshold t: the least number of survivors
    each party   party join                            keys/<party>.json: a fresh X25519 key, signed
    each party   party compress                        shares/<party>/: statistics + pair masks + a
                                                       self-mask from a seed drawn for this share
    coordinator  combine (first call)                  survivors.json: who published (>= t), signed;
                                                       recorded beside its key, never signed twice
    survivors    party unmask                          confirm/<party>.json: the survivor set it saw,
                                                       signed (the consistency round); then, once all
                                                       survivors confirmed the same set,
                                                       counts/<party>.json: the keys of the guard
                                                       counts only; then, once the pooled counts pass
                                                       the party's own release guard,
                                                       unmask/<party>.json: its self-mask seed and the
                                                       pair seeds shared with each dropped party
    anyone       combine                               sums the survivors' shares, removes the masks

What each step checks, and why:

- **Pinned keys.** A party acts on a manifest only if the coordinator's signature verifies with a
  key pinned in its trust file and every party's keys equal the pinned ones (like SSH's
  known_hosts): whoever can write the exchange cannot swap a party's keys for their own. A trust
  file that others may write is refused (SSH's StrictModes).
- **Fresh keys, never reused masks.** Pair seeds come from per-round ephemeral X25519 keys (signed
  with the party's long-term Ed25519 key and bound to the manifest digest), through HKDF whose salt
  binds the manifest's whole content; the self-mask seed is drawn when the share is published. A
  party's ledger (next to its key file, mode 0600) records every round it joined, published,
  confirmed and unmasked in; it refuses a second publication in a round and a round id seen before
  with another manifest, whatever the exchange holds. Its round secrets are deleted once it has
  revealed what the round needs.
- **Dropouts (Bonawitz et al. 2017).** Once the coordinator has fixed at least t survivors, each
  survivor signs the set it was shown; a survivor reveals only once every survivor signed the same
  set, and a party never reveals its self-mask seed for a round in which it saw itself left out of
  a signed set, confirmed another set, or whose exchange shows a pair seed shared with it. Two
  survivor sets of t > n/2 parties share a party, which confirms only one of them: no re-signed or
  second set gets a dropped party's self-mask seed while its pair seeds are out. The coordinator
  records each set it signed and signs a round once, whatever the exchange shows.
- **The release guard before any reveal** (:mod:`.guard`). A survivor first reveals the keys of the
  guard statistic only (its own counts, masked like the rest); from their pooled sum it checks the
  release against the memory of its own earlier releases, and reveals its seeds only when no rule
  refuses it.

Residual trust: a coordinator that colludes with parties in the intersection of two survivor sets
can have both confirmed; what the two rounds then reveal is the sum of the parties on which the two
sets differ (never one honest party alone while t > n/2 and one honest party is in both). Parties
that lie about their own data, and all parties but one colluding, are out of scope.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets as _secrets
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import ConfigError, InputError, ProtocolError, RevealsMissing
from .encoding import decode, encode
from .exchange import (DuplicateShareError, Location, Manifest, ShareSum, add_shares, canonical_json,
                       check_staged, complete_shares, mask_stats, parse_json, publish_share, read_shares,
                       read_statistic, write_part)
from .guard import (DEFAULT_MIN_DELTA, DEFAULT_MIN_N, OwnSamples, Release, ReleaseMemory, ReleaseRefused,
                    check_private_file, file_lock, release_problems, sample_hashes, write_private)
from .keys import PrivateKeys, PublicKeys, check_party_name, fingerprint
from .masking import StatMasker, key_stream, pair_sign, pairwise_seeds, stat_key, stat_masker, unmask_sum

#: the statistic every share of a round with self-masks carries: the party's own counts (all its
#: samples, then each phenotype's), revealed pooled before anything else (the release guard)
GUARD_STAT = "guard.counts"

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()

log = logging.getLogger("dash_spark")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def key_fingerprint(pub: PublicKeys | PrivateKeys) -> str:
    """The full fingerprint a trust file pins: sha256 (64 hex) of the X25519 and Ed25519 public keys
    (its first 16 digits are :func:`~dash_spark.multiparty.keys.fingerprint`)."""
    if isinstance(pub, PrivateKeys):
        pub = pub.public()
    return hashlib.sha256(pub.x25519_pub + pub.ed25519_pub).hexdigest()



def check_not_writable_by_others(path: str, what: str) -> None:
    """Refuse a file whose content decides who is trusted when someone else may change it (SSH's
    StrictModes): the file, or the folder it sits in, writable by group or others, or the file owned
    by another user."""
    if os.name != "posix":
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    folder = os.path.dirname(os.path.abspath(path))
    dst = os.stat(folder)
    if st.st_mode & 0o022:
        raise ConfigError(f"{path}: the {what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"anyone who can change it decides whose keys are trusted. Run chmod go-w {path}")
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{path}: the {what} belongs to another user (uid {st.st_uid}); expected one owned by "
                          f"you or root. Copy it to a file of your own (checking its fingerprints)")
    if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{folder}: the folder of the {what} {path} is writable by group or others (mode "
                          f"{stat.S_IMODE(dst.st_mode):04o}), so the file can be replaced. Run chmod go-w {folder}")


# ------------------------------------------------------------------------------------------------
# trust: pinned keys


class TrustFile:
    """Pinned keys: one ``<name> <fingerprint>`` line per party or coordinator (``#`` comments)."""

    def __init__(self, path: str, entries: dict[str, str]):
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: str, *, missing_ok: bool = False) -> "TrustFile":
        path = os.fspath(path)
        entries: dict[str, str] = {}
        check_not_writable_by_others(path, "trust file")
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            if missing_ok:
                return cls(path, {})
            raise ConfigError(f"{path}: trust file not found; record the parties' and the coordinator's keys "
                              "first with `dash-spark party trust --trust FILE --add NAME=PATH.pub`") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the trust file ({exc}); expected '<name> <fingerprint>' "
                              "lines") from None
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2 or len(fields[1]) != 64 or any(c not in "0123456789abcdef" for c in fields[1]):
                raise ConfigError(f"{path}:{lineno}: expected '<name> <64 hex digit fingerprint>', found "
                                  f"{line.strip()[:80]!r}. Record keys with `dash-spark party trust`")
            check_party_name(fields[0], where=f"{path}:{lineno}")
            if fields[0] in entries and entries[fields[0]] != fields[1]:
                raise ConfigError(f"{path}:{lineno}: {fields[0]!r} is pinned twice with different keys; keep one")
            entries[fields[0]] = fields[1]
        return cls(path, entries)

    def add(self, name: str, fp: str, *, replace: bool = False) -> None:
        """Pin ``name`` to ``fp``; a different key for an already pinned name needs ``replace``."""
        check_party_name(name, where="party trust")
        fp = fp.lower()
        if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
            raise ConfigError(f"party trust: {name}: expected a 64 hex digit fingerprint (party keygen prints it), "
                              f"found {fp!r}")
        old = self.entries.get(name)
        if old is not None and old != fp and not replace:
            raise ProtocolError(f"{self.path}: {name!r} is already pinned to another key ({old[:16]}, new "
                                f"{fp[:16]}); a changed key may be an attack. Confirm it out of band, then pass "
                                "--replace")
        self.entries[name] = fp
        text = "# dash-spark trust file: <name> <sha256 of the X25519 and Ed25519 public keys>\n" + "".join(
            f"{n} {f}\n" for n, f in sorted(self.entries.items()))
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        write_private(self.path, text.encode())

    def check(self, name: str, pub: PublicKeys, *, role: str, where: str) -> None:
        pinned = self.entries.get(name)
        got = key_fingerprint(pub)
        if pinned is None:
            raise ProtocolError(f"{where}: {role} {name!r} is not in the trust file {self.path}; compare its "
                                f"fingerprint {got} out of band, then `dash-spark party trust --add {name}=...`. "
                                "Nothing was done")
        if pinned != got:
            raise ProtocolError(f"{where}: the key of {role} {name!r} differs from the one pinned in {self.path} "
                                f"(pinned {pinned[:16]}, found {got[:16]}); someone may have swapped it. Nothing "
                                "was done; confirm the key out of band")


def manifest_signature_path(loc: Location, manifest: Manifest) -> str:
    return loc.join(manifest.study, manifest.round_id, "manifest.sig")


def sign_manifest(uri: str, manifest: Manifest, coordinator: PrivateKeys) -> str:
    """Write ``manifest.sig``: the coordinator's Ed25519 signature of the canonical manifest."""
    ck = manifest.coordinator_keys()
    if ck is None or key_fingerprint(ck) != key_fingerprint(coordinator):
        raise ProtocolError(f"sign manifest of study {manifest.study!r}: the signing key is not the manifest's "
                            "coordinator key; build the manifest with the coordinator's public key")
    loc = Location(uri)
    path = manifest_signature_path(loc, manifest)
    if loc.exists(path):
        raise DuplicateShareError(f"{loc.show(path)}: the manifest is already signed; a round is signed once")
    body = canonical_json(manifest.to_dict(), where="manifest")
    sig = {"coordinator": coordinator.party, "manifest_sha256": hashlib.sha256(body).hexdigest(),
           "signature": coordinator.sign(body).hex()}
    loc.write_atomic(path, canonical_json(sig) + b"\n", what="manifest signature")
    return loc.show(path)


def verify_manifest(uri: str, manifest: Manifest, trust: TrustFile, *, who: str) -> None:
    """The manifest is signed by its coordinator, whose key and every party's keys are pinned in
    ``trust``; raises :class:`ProtocolError` naming the first key that is not."""
    ck = manifest.coordinator_keys()
    if ck is None:
        raise ProtocolError(f"{who}: the manifest names no coordinator, so it cannot be authenticated; ask the "
                            "coordinator for a manifest made with `party manifest --sign-key`")
    trust.check(ck.party, ck, role="coordinator", where=who)
    check_manifest_signature(uri, manifest, ck, who=who)
    for name in manifest.party_names:
        trust.check(name, manifest.public_keys(name), role="party", where=who)


def check_manifest_signature(uri: str, manifest: Manifest, ck: PublicKeys, *, who: str) -> None:
    """``manifest.sig`` verifies with the coordinator key ``ck``; else :class:`ProtocolError`."""
    loc = Location(uri)
    path = manifest_signature_path(loc, manifest)
    sig = parse_json(loc.read(path, what="manifest signature", exc_type=ProtocolError), where=loc.show(path),
                      exc_type=ProtocolError)
    body = canonical_json(manifest.to_dict(), where="manifest")
    try:
        ok = ck.verify(bytes.fromhex(str(sig.get("signature", ""))), body)
    except ValueError:
        ok = False
    if not ok:
        raise ProtocolError(f"{who}: the manifest's signature ({loc.show(path)}) does not verify with coordinator "
                            f"{ck.party!r}'s key; the manifest was changed after it was signed. Nothing was done")


# ------------------------------------------------------------------------------------------------
# the party's ledger and round secrets


@dataclass(frozen=True)
class RoundSecrets:
    """A party's secrets of one round: its ephemeral X25519 key (drawn at join) and its self-mask
    seed (drawn afresh for each publication: ``None`` until the round's share is claimed)."""

    ephemeral: X25519PrivateKey
    self_seed: bytes | None = None

    def public(self) -> bytes:
        return self.ephemeral.public_key().public_bytes(_RAW, _RAW_PUB)


class Ledger:
    """What a party did in which round, kept next to its key file (``<key>.ledger``, 0600), with
    the secrets of rounds not finished yet under ``<key>.rounds/`` (0700 directory, 0600 files).

    A round's entry records when the party joined and published, the survivor set it confirmed
    (``confirmed``), one that left it out (``left_out``), its own counts (``own``), the release it
    recorded in its :class:`~dash_spark.multiparty.guard.ReleaseMemory` (``released``) and the
    survivor set it revealed for (``unmasked``)."""

    def __init__(self, key_path: str):
        key_path = os.fspath(key_path)
        self.key_path = key_path
        self.path = key_path + ".ledger"
        self.dir = key_path + ".rounds"

    def _load(self) -> dict:
        check_private_file(self.path, "ledger")
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            if (os.path.isdir(self.dir) and os.listdir(self.dir)) or os.path.exists(self.key_path + ".releases.json"):
                raise InputError(f"{self.path}: the ledger is missing, but this key's round files or release memory "
                                 "are there; it was deleted or the key folder was restored in part. Restore the "
                                 "ledger; without it no round can be trusted to be new") from None
            return {"rounds": {}}
        try:
            obj = json.loads(data)
            assert isinstance(obj, dict) and isinstance(obj.get("rounds"), dict)
        except (ValueError, AssertionError):
            raise InputError(f"{self.path}: the ledger is damaged; it records the rounds this key took part in. "
                             "Restore it from a backup; without it no round can be trusted to be new") from None
        return obj

    def _save(self, obj: dict) -> None:
        write_private(self.path, json.dumps(obj, indent=1, sort_keys=True).encode())

    @staticmethod
    def _key(manifest: Manifest) -> str:
        return f"{manifest.study}/{manifest.round_id}"

    def _file(self, manifest: Manifest, suffix: str) -> str:
        return os.path.join(self.dir, f"{manifest.study}__{manifest.round_id}{suffix}")

    def entry(self, manifest: Manifest) -> dict | None:
        return self._load()["rounds"].get(self._key(manifest))

    def released_ids(self) -> list[str]:
        """The ids of every release this key recorded (its release memory must hold them all)."""
        return [e["released"] for e in self._load()["rounds"].values() if e.get("released")]

    def check_new(self, manifest: Manifest, *, who: str) -> None:
        """Refuse a round id this key saw before under another manifest (a reused round id)."""
        digest = manifest.digest()
        for key, e in self._load()["rounds"].items():
            if key.rsplit("/", 1)[1] == manifest.round_id and e["digest"] != digest:
                raise ProtocolError(f"{who}: round id {manifest.round_id!r} was used before ({key}, another "
                                    "manifest); a round id is never reused, since masks derive from it. Ask the "
                                    f"coordinator for a new round. Nothing was published (ledger {self.path})")

    def secrets(self, manifest: Manifest) -> RoundSecrets | None:
        """The round's secrets: its ephemeral key and, once the share is claimed, its self seed."""
        try:
            with open(self._file(manifest, ".json"), "rb") as fh:
                obj = json.loads(fh.read())
        except FileNotFoundError:
            return None
        seed = obj.get("self_seed")  # an older version drew it at join
        try:
            with open(self._claim_path(manifest), "rb") as fh:
                claim = json.loads(fh.read())
            seed = claim.get("self_seed") or seed
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError):  # an older version's claim: a time stamp only
            pass
        return RoundSecrets(X25519PrivateKey.from_private_bytes(bytes.fromhex(obj["ephemeral"])),
                            bytes.fromhex(seed) if seed else None)

    def join(self, manifest: Manifest, *, who: str) -> tuple[RoundSecrets, bool]:
        """This round's secrets: fresh ones (recorded) the first time, the stored ones after.
        Returns ``(secrets, new)``."""
        self.check_new(manifest, who=who)
        with self._locked():
            obj = self._load()
            e = obj["rounds"].get(self._key(manifest))
            if e is not None:
                sec = self.secrets(manifest)
                if sec is None:
                    raise ProtocolError(f"{who}: this key already took part in round {manifest.round_id!r} and its "
                                        "round secrets are gone (the round was finished); a round is joined once. "
                                        f"Nothing was done (ledger {self.path})")
                return sec, False
            sec = RoundSecrets(X25519PrivateKey.generate())
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.chmod(self.dir, 0o700)
            write_private(self._file(manifest, ".json"), json.dumps({
                "ephemeral": sec.ephemeral.private_bytes(_RAW, _RAW_PRIV, _NOENC).hex()}).encode())
            obj["rounds"][self._key(manifest)] = {"digest": manifest.digest(), "joined": _now(), "published": None,
                                                  "unmasked": None}
            self._save(obj)
        return sec, True

    def _locked(self):
        """The ledger's lock (``<key>.ledger.lock``): each read-change-write of the ledger holds it, so
        two processes of the party (two rounds at once) never lose each other's marks."""
        return file_lock(self.path + ".lock")

    def _claim_path(self, manifest: Manifest) -> str:
        return self._file(manifest, ".published")

    def samples_path(self, manifest: Manifest) -> str:
        """This round's own sample hashes (written when the share is claimed)."""
        return self._file(manifest, ".samples.npy")

    def claim_publication(self, manifest: Manifest, party: str, *, who: str, self_seed: bytes | None = None,
                          own: OwnSamples | None = None) -> None:
        """Record, atomically, that this key publishes in the round: one process wins (an exclusive
        create beside the round's secrets, holding the publication's fresh self-mask seed), any
        other, concurrent or later, is refused. Then the ledger marks the round published, with the
        party's own counts (``own``; their sample hashes beside the secrets)."""
        self.check_unpublished(manifest, party, who=who)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        try:
            fd = os.open(self._claim_path(manifest), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise self._claimed(manifest, party, who) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"time": _now(), "self_seed": self_seed.hex() if self_seed else None}))
            fh.flush()
            os.fsync(fh.fileno())
        if own is not None:
            hashes = sample_hashes(ReleaseMemory(self.key_path).salt(), own.iids)
            write_private(self.samples_path(manifest), np.ascontiguousarray(hashes, dtype="<u8").tobytes())
        with self._locked():
            obj = self._load()
            e = obj["rounds"][self._key(manifest)]
            e["published"] = _now()
            if own is not None:
                e["own"] = {"phenotypes": list(own.phenotypes), "counts": [int(c) for c in own.counts],
                            "n_all": len(own.iids)}
            self._save(obj)

    def own_samples(self, manifest: Manifest) -> np.ndarray | None:
        try:
            with open(self.samples_path(manifest), "rb") as fh:
                return np.frombuffer(fh.read(), dtype="<u8").astype(np.uint64)
        except FileNotFoundError:
            return None

    def check_unpublished(self, manifest: Manifest, party: str, *, who: str) -> None:
        e = self.entry(manifest)
        if e is not None and e.get("published"):
            raise _already_published(manifest, party, who, f"{e['published']}, ledger {self.path}")
        if os.path.exists(self._claim_path(manifest)):
            raise self._claimed(manifest, party, who)

    def _claimed(self, manifest: Manifest, party: str, who: str) -> DuplicateShareError:
        return _already_published(manifest, party, who, f"ledger {self.path}", concurrent=True)

    def mark(self, manifest: Manifest, field: str, value) -> None:
        with self._locked():
            obj = self._load()
            obj["rounds"][self._key(manifest)][field] = value
            self._save(obj)

    def forget_secrets(self, manifest: Manifest) -> None:
        """Remove the round's secrets once nothing more is revealed; the publication record stays
        (a second publication is refused), without its seed."""
        for suffix in (".json", ".samples.npy"):
            if os.path.exists(self._file(manifest, suffix)):
                os.remove(self._file(manifest, suffix))
        if os.path.exists(self._claim_path(manifest)):
            write_private(self._claim_path(manifest), json.dumps({"time": _now(), "self_seed": None}).encode())


def _already_published(manifest: Manifest, party: str, who: str, where: str, *,
                       concurrent: bool = False) -> DuplicateShareError:
    return DuplicateShareError(f"{who}: party {party!r} already published a share for round {manifest.round_id!r}"
                               + (", or another run of it is publishing one" if concurrent else "")
                               + f" ({where}); a party publishes once per round, whatever the exchange shows. "
                               "Nothing was done")


class CloseRecord:
    """The rounds a coordinator closed, beside its key (``<key>.closed``, 0600): the signed survivor
    set of each. The coordinator closes a round once, whatever the exchange shows: closing again
    writes back the very same signed set (one deleted from the exchange) or is refused."""

    def __init__(self, key_path: str):
        self.path = os.fspath(key_path) + ".closed"

    def _load(self) -> dict:
        check_private_file(self.path, "record of closed rounds")
        try:
            with open(self.path, "rb") as fh:
                obj = json.loads(fh.read())
            assert isinstance(obj, dict)
            return obj
        except FileNotFoundError:
            return {}
        except (ValueError, AssertionError):
            raise InputError(f"{self.path}: the coordinator's record of closed rounds is damaged; restore it from "
                             "a backup. No round was closed") from None

    @staticmethod
    def _key(manifest: Manifest) -> str:
        return f"{manifest.study}/{manifest.round_id}/{manifest.digest()}"

    def get(self, manifest: Manifest) -> bytes | None:
        data = self._load().get(self._key(manifest))
        return None if data is None else data.encode()

    def put(self, manifest: Manifest, record: bytes) -> None:
        with file_lock(self.path + ".lock"):  # two rounds closed at once both stay recorded
            obj = self._load()
            obj[self._key(manifest)] = record.decode()
            write_private(self.path, json.dumps(obj, indent=1, sort_keys=True).encode())

# ------------------------------------------------------------------------------------------------
# signed records on the exchange


def signed_record(body: dict, keys: PrivateKeys) -> bytes:
    data = canonical_json(body, where="signed record")
    return canonical_json({"body": body, "signature": keys.sign(data).hex()}) + b"\n"


def read_signed(loc: Location, path: str, pub: PublicKeys, *, what: str, who: str) -> dict:
    obj = parse_json(loc.read(path, what=what, exc_type=ProtocolError), where=loc.show(path), exc_type=ProtocolError)
    body = obj.get("body")
    try:
        ok = isinstance(body, dict) and pub.verify(bytes.fromhex(str(obj.get("signature", ""))),
                                                   canonical_json(body, where=loc.show(path)))
    except (ValueError, InputError):
        ok = False
    if not ok or not isinstance(body, dict):
        raise ProtocolError(f"{loc.show(path)}: the {what} of {who} does not verify with its key "
                            f"(fingerprint {fingerprint(pub)}); it was forged or altered. Nothing was used")
    return body


def _round_path(loc: Location, manifest: Manifest, *parts: str) -> str:
    return loc.join(manifest.study, manifest.round_id, *parts)


def publish_round_key(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, sec: RoundSecrets) -> str:
    """Publish ``keys/<party>.json``: the party's ephemeral X25519 key for this round, signed and
    bound to the manifest digest (idempotent for the same key; another key is refused)."""
    loc = Location(uri)
    path = _round_path(loc, manifest, "keys", f"{party}.json")
    body = {"party": party, "study": manifest.study, "round_id": manifest.round_id,
            "manifest_digest": manifest.digest(), "x25519": sec.public().hex()}
    if loc.exists(path):
        old = read_signed(loc, path, manifest.public_keys(party), what="round key", who=f"party {party!r}")
        if old != body:
            raise ProtocolError(f"{loc.show(path)}: party {party!r} has another round key on the exchange; a "
                                "party joins a round once. Ask the coordinator for a new round")
        return loc.show(path)
    loc.mkdir(path.rsplit("/", 1)[0])
    loc.write_atomic(path, signed_record(body, keys), what=f"round key of party {party!r}")
    return loc.show(path)


def _party_record(loc: Location, manifest: Manifest, folder: str, party: str, what: str) -> tuple[str, dict | None]:
    """``(path, body)`` of a party's signed record of the round (``<folder>/<party>.json``), its
    signature checked with the party's key; ``body`` is ``None`` while the file is not there."""
    path = _round_path(loc, manifest, folder, f"{party}.json")
    if not loc.exists(path):
        return path, None
    return path, read_signed(loc, path, manifest.public_keys(party), what=what, who=f"party {party!r}")


def read_round_keys(uri: str, manifest: Manifest) -> tuple[dict[str, bytes], list[str]]:
    """The parties' verified ephemeral keys of this round, and the parties that have not joined."""
    loc = Location(uri)
    found, missing = {}, []
    for party in manifest.party_names:
        path, body = _party_record(loc, manifest, "keys", party, "round key")
        if body is None:
            missing.append(party)
            continue
        if (body.get("party"), body.get("study"), body.get("round_id"), body.get("manifest_digest")) != (
                party, manifest.study, manifest.round_id, manifest.digest()):
            raise ProtocolError(f"{loc.show(path)}: the round key of party {party!r} belongs to another round or "
                                "manifest (replayed); nothing was used")
        try:
            found[party] = bytes.fromhex(body["x25519"])
        except (KeyError, ValueError, TypeError):
            raise ProtocolError(f"{loc.show(path)}: malformed round key of party {party!r}") from None
    return found, missing


def round_pair_seeds(manifest: Manifest, party: str, sec: RoundSecrets, pubs: dict[str, bytes]) -> dict[str, bytes]:
    """``party``'s pair seeds with every other party for this round (ephemeral keys, manifest-bound)."""
    return pairwise_seeds(sec.ephemeral, pubs, study=manifest.study, round_id=manifest.round_id, me=party,
                          manifest_digest=manifest.digest())


# ------------------------------------------------------------------------------------------------
# closing a round: the survivors, their confirmations, the guard and what they reveal


def survivors_path(loc: Location, manifest: Manifest) -> str:
    return _round_path(loc, manifest, "survivors.json")


def close_round(uri: str, manifest: Manifest, coordinator: PrivateKeys, survivors: list[str], *,
                record: CloseRecord | None = None) -> dict:
    """Fix the round's survivors (the parties whose shares count, at least the manifest's
    threshold), signed by the coordinator; written once. With ``record`` (the coordinator's
    :class:`CloseRecord`) a round it closed before gets the very same signed set back, whatever
    ``survivors`` says, and a new one is recorded before it reaches the exchange. Returns the
    signed body."""
    ck = manifest.coordinator_keys()
    if ck is None or key_fingerprint(ck) != key_fingerprint(coordinator):
        raise ProtocolError(f"close round {manifest.round_id!r}: the key given is not the manifest's coordinator "
                            "key; pass the coordinator's key with --sign-key")
    loc = Location(uri)
    path = survivors_path(loc, manifest)
    old = record.get(manifest) if record is not None else None
    if old is not None and record is not None:
        if loc.exists(path):
            if loc.read(path, what="survivor set", exc_type=ProtocolError) != old:
                raise ProtocolError(f"{loc.show(path)}: the exchange holds another survivor set than the one this "
                                    f"coordinator signed for round {manifest.round_id!r} ({record.path}); the "
                                    "coordinator's key was used elsewhere. Nothing was closed")
        else:
            loc.write_atomic(path, old, what="survivor set")  # the same signed bytes: nothing new to sign
        again = read_survivors(uri, manifest)
        if again is None:  # pragma: no cover - written just above
            raise ProtocolError(f"{loc.show(path)}: the survivor set could not be read back")
        return again
    survivors = sorted(survivors)
    if len(survivors) < max(2, manifest.threshold):
        raise ProtocolError(f"close round {manifest.round_id!r}: {len(survivors)} share(s) published "
                            f"({', '.join(survivors) or 'none'}); the round closes with at least "
                            f"{manifest.threshold} of its {len(manifest.parties)} parties (the manifest's threshold), "
                            "so that no party's statistics come out of a sum over too few. Wait for more shares, or "
                            "start a new round")
    body = {"study": manifest.study, "round_id": manifest.round_id, "manifest_digest": manifest.digest(),
            "survivors": survivors, "dropped": [p for p in manifest.party_names if p not in survivors],
            "closed": _now()}
    if loc.exists(path):
        raise DuplicateShareError(f"{loc.show(path)}: round {manifest.round_id!r} is already closed; its survivor "
                                  "set is fixed once")
    data = signed_record(body, coordinator)
    if record is not None:
        record.put(manifest, data)  # first: whatever happens next, this round has this one set
    loc.write_atomic(path, data, what="survivor set")
    return body


def read_survivors(uri: str, manifest: Manifest) -> dict | None:
    """The coordinator-signed survivor set of a round (``None`` while the round is open)."""
    loc = Location(uri)
    path = survivors_path(loc, manifest)
    if not loc.exists(path):
        return None
    ck = manifest.coordinator_keys()
    if ck is None:
        raise ProtocolError(f"{loc.show(path)}: a survivor set in a round without a coordinator; ignored")
    body = read_signed(loc, path, ck, what="survivor set", who=f"coordinator {ck.party!r}")
    if (body.get("study"), body.get("round_id"), body.get("manifest_digest")) != (
            manifest.study, manifest.round_id, manifest.digest()):
        raise ProtocolError(f"{loc.show(path)}: the survivor set belongs to another round or manifest (replayed)")
    surv, dropped = body.get("survivors"), body.get("dropped")
    if not (isinstance(surv, list) and isinstance(dropped, list)
            and sorted(surv + dropped) == manifest.party_names and len(surv) >= 2):
        raise ProtocolError(f"{loc.show(path)}: malformed survivor set; expected the manifest's parties split "
                            "into survivors (at least 2) and dropped")
    if len(surv) < manifest.threshold:
        raise ProtocolError(f"{loc.show(path)}: the survivor set names {len(surv)} parties, fewer than the "
                            f"manifest's threshold of {manifest.threshold}; a round never closes with so few. "
                            "Nothing was revealed")
    return body


def _set_digest(body: dict) -> str:
    return hashlib.sha256(canonical_json(body, where="survivor set")).hexdigest()


def _fresh_or_same(loc: Location, path: str, record: bytes, pub: PublicKeys, body: dict, *, what: str,
                   who: str) -> None:
    """Write a signed record once; an existing one must hold the same body (a rerun)."""
    if loc.exists(path):
        if read_signed(loc, path, pub, what=what, who=who) != body:
            raise ProtocolError(f"{loc.show(path)}: another {what} of {who} is on the exchange; it was replaced or "
                                "this key's round files were restored. Nothing was revealed")
        return
    loc.mkdir(path.rsplit("/", 1)[0])
    loc.write_atomic(path, record, what=what)


def _closed(uri: str, manifest: Manifest, who: str) -> dict:
    """The round's survivor set; :class:`ProtocolError` while the round is open."""
    body = read_survivors(uri, manifest)
    if body is None:
        raise ProtocolError(f"{who}: round {manifest.round_id!r} is not closed yet (no survivor set from the "
                            "coordinator); run party unmask after the coordinator's combine closed it")
    return body


def confirm_survivors(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, ledger: Ledger, *,
                      who: str) -> dict:
    """The consistency round: sign the survivor set this party is shown (``confirm/<party>.json``),
    once per round. Refused, and recorded in the ledger, when the set leaves the party out; refused
    when the party saw itself left out of a set of this round before, or confirmed another one."""
    body = _closed(uri, manifest, who)
    digest = _set_digest(body)
    e = ledger.entry(manifest)
    if e is None:
        raise ProtocolError(f"{who}: this key did not join round {manifest.round_id!r} (ledger {ledger.path}); "
                            "nothing to reveal")
    if party not in body["survivors"]:
        if not e.get("left_out"):
            ledger.mark(manifest, "left_out", digest)
        raise ProtocolError(f"{who}: the coordinator declared party {party!r} dropped from round "
                            f"{manifest.round_id!r}; its share stays masked, nothing is revealed, and this key never "
                            "reveals its self-mask seed for this round (ledger)")
    if e.get("left_out"):
        raise ProtocolError(f"{who}: party {party!r} was left out of a signed survivor set of round "
                            f"{manifest.round_id!r} before (ledger {ledger.path}); it never reveals its self-mask "
                            "seed for this round, whatever set follows. Nothing was revealed")
    if e.get("confirmed") and e["confirmed"] != digest:
        raise ProtocolError(f"{who}: this key confirmed another survivor set of round {manifest.round_id!r} (ledger "
                            f"{ledger.path}); the coordinator signed two different sets, or the exchange's was "
                            "replaced. Nothing was revealed")
    if not e.get("published"):
        raise ProtocolError(f"{who}: party {party!r} did not publish a share in round {manifest.round_id!r} "
                            "(ledger); nothing to reveal")
    if not e.get("confirmed"):
        ledger.mark(manifest, "confirmed", digest)
    loc = Location(uri)
    record = {"party": party, "study": manifest.study, "round_id": manifest.round_id,
              "manifest_digest": manifest.digest(), "survivors_digest": digest}
    _fresh_or_same(loc, _round_path(loc, manifest, "confirm", f"{party}.json"), signed_record(record, keys),
                   keys.public(), record, what="confirmation", who=f"party {party!r}")
    return body


def missing_confirmations(uri: str, manifest: Manifest, body: dict) -> list[str]:
    """The survivors that have not confirmed ``body`` yet; :class:`ProtocolError` when one confirmed
    another set (the coordinator signed two)."""
    loc = Location(uri)
    digest = _set_digest(body)
    missing = []
    for p in body["survivors"]:
        path, rec = _party_record(loc, manifest, "confirm", p, "confirmation")
        if rec is None:
            missing.append(p)
            continue
        if (rec.get("party"), rec.get("round_id"), rec.get("manifest_digest"), rec.get("survivors_digest")) != (
                p, manifest.round_id, manifest.digest(), digest):
            raise ProtocolError(f"{loc.show(path)}: party {p!r} confirmed another survivor set of round "
                                f"{manifest.round_id!r}; the coordinator signed two different sets. Nothing was "
                                "revealed")
    return missing


def _revealed_with(uri: str, manifest: Manifest, party: str) -> list[str]:
    """The parties whose signed reveal on the exchange holds a pair seed shared with ``party`` (a
    round in which ``party`` was dropped)."""
    loc = Location(uri)
    out = []
    for p in manifest.party_names:
        if p == party:
            continue
        try:
            _, rec = _party_record(loc, manifest, "unmask", p, "reveal")
        except ProtocolError:
            continue  # not signed by p: reveals nothing of p's seeds
        if rec is not None and rec.get("round_id") == manifest.round_id and party in (rec.get("pair_seeds") or {}):
            out.append(p)
    return out


def _refuse_if_exposed(uri: str, manifest: Manifest, party: str, who: str) -> None:
    """Refuse to go on when a signed reveal on the exchange holds a pair seed shared with ``party``
    (from a survivor set that dropped it): its self-mask seed is then never revealed for the round."""
    exposed = _revealed_with(uri, manifest, party)
    if exposed:
        raise ProtocolError(f"{who}: {', '.join(exposed)} revealed the pair seed shared with party {party!r} in this "
                            "round (a survivor set that dropped it); its self-mask seed is never revealed for this "
                            "round. Nothing was revealed")


def counts_reveal(manifest: Manifest, party: str, ledger: Ledger, body: dict, pubs: dict[str, bytes], *,
                  who: str) -> dict:
    """The first reveal's body (``counts/<party>.json``): the keystream keys of the guard statistic
    only (its self-mask's, and those shared with each dropped party), derived one-way from the
    seeds, so that the pooled counts, and nothing else, can be unmasked."""
    sec = ledger.secrets(manifest)
    if sec is None or sec.self_seed is None:
        raise ProtocolError(f"{who}: the round secrets of party {party!r} are gone (ledger {ledger.path}); the "
                            "round cannot be unmasked: start a new round")
    seeds = round_pair_seeds(manifest, party, sec, pubs)
    return {"party": party, "study": manifest.study, "round_id": manifest.round_id,
            "survivors_digest": _set_digest(body), "self_key": stat_key(sec.self_seed, GUARD_STAT, "self").hex(),
            "pair_keys": {d: stat_key(seeds[d], GUARD_STAT).hex() for d in body["dropped"] if d in seeds}}


def reveal_counts(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, record: dict) -> str:
    """Publish a :func:`counts_reveal` (once; a rerun finds the same)."""
    loc = Location(uri)
    path = _round_path(loc, manifest, "counts", f"{party}.json")
    _fresh_or_same(loc, path, signed_record(record, keys), keys.public(), record, what="counts reveal",
                   who=f"party {party!r}")
    return loc.show(path)


def pooled_counts(uri: str, manifest: Manifest, body: dict, *,
                  own: dict | None = None) -> tuple[np.ndarray | None, list[str]]:
    """The survivors' pooled guard counts (all samples, then each phenotype) once every survivor
    revealed its counts keys: ``(counts, [])``, else ``(None, survivors still to reveal)``. ``own``:
    one survivor's counts reveal not (yet) on the exchange, used in place of its file."""
    loc = Location(uri)
    digest = _set_digest(body)
    own = own or {}
    missing = [p for p in body["survivors"]
               if p != own.get("party") and not loc.exists(_round_path(loc, manifest, "counts", f"{p}.json"))]
    if missing:
        return None, missing
    pubs, _ = read_round_keys(uri, manifest)
    # a few numbers: summed and unmasked as Python integers mod 2^128 (no ring kernels to load)
    ring = 1 << 128
    keys, total = [], None
    for p in body["survivors"]:
        path = _round_path(loc, manifest, "counts", f"{p}.json")
        if p == own.get("party"):
            rec = own
        else:
            rec = read_signed(loc, path, manifest.public_keys(p), what="counts reveal", who=f"party {p!r}")
        if (rec.get("party"), rec.get("round_id"), rec.get("survivors_digest")) != (p, manifest.round_id, digest):
            raise ProtocolError(f"{loc.show(path)}: the counts reveal of party {p!r} is for another survivor set")
        try:
            keys.append((bytes.fromhex(rec["self_key"]), True))
            for d in body["dropped"]:
                if d in pubs:
                    keys.append((bytes.fromhex(rec["pair_keys"][d]), not pair_sign(p, d, manifest.party_names)))
        except (KeyError, ValueError, TypeError):
            raise ProtocolError(f"{loc.show(path)}: malformed counts reveal of party {p!r}") from None
        words = _ring_ints(read_statistic(uri, manifest, p, GUARD_STAT))
        if total is not None and len(words) != len(total):
            raise ProtocolError(f"share of party {p!r}: its guard counts have {len(words)} values, another "
                                f"survivor's {len(total)}; the parties disagree on the phenotypes")
        total = words if total is None else [(a + b) % ring for a, b in zip(total, words)]
    if total is None:  # pragma: no cover - a closed round has survivors
        raise ProtocolError(f"{loc.show(_round_path(loc, manifest, 'counts'))}: no survivor's counts")
    if any(len(k) != 32 for k, _ in keys):
        raise ProtocolError(f"{loc.show(_round_path(loc, manifest, 'counts'))}: malformed counts reveal (key length)")
    for key, subtract in keys:
        stream = _ring_ints(key_stream(key, len(total)))
        total = [(a - b if subtract else a + b) % ring for a, b in zip(total, stream)]
    signed = [v - ring if v >= 1 << 127 else v for v in total]
    return np.array([round(v / (1 << manifest.frac_bits)) for v in signed], dtype=np.int64), []


def _ring_ints(arr: np.ndarray) -> list[int]:
    return [int(lo) | (int(hi) << 64) for lo, hi in np.asarray(arr, dtype=np.uint64).reshape(-1, 2)]


@dataclass(frozen=True)
class GuardSettings:
    """A party's release guard (:mod:`.guard`): ``min_delta`` samples between releases, ``min_n``
    pooled samples per phenotype; ``override`` releases anyway (logged, recorded)."""

    min_delta: int = DEFAULT_MIN_DELTA
    min_n: int = DEFAULT_MIN_N
    override: bool = False


def guard_release(uri: str, manifest: Manifest, ledger: Ledger, body: dict, counts: np.ndarray | None,
                  guard: GuardSettings, *, who: str) -> str | None:
    """Check the release against this party's memory (:mod:`.guard`) and, with the pooled
    ``counts``, record it there: before anything that unmasks the statistics is revealed.
    ``counts=None``: the rules on the party's own data only, nothing recorded (before its counts
    keys go out). :class:`~.guard.ReleaseRefused` names the rule; returns the release's id."""
    e = ledger.entry(manifest) or {}
    if e.get("released"):
        return e["released"]
    own, samples = e.get("own"), ledger.own_samples(manifest)
    if own is None or samples is None:
        raise ReleaseRefused(f"{who}: the ledger holds no record of this party's own samples in round "
                             f"{manifest.round_id!r} (ledger {ledger.path}); the release cannot be guarded. Nothing "
                             "was revealed")
    memory = ReleaseMemory(ledger.key_path)
    memory.check_complete(ledger.released_ids())
    phenos = list(own["phenotypes"])
    pooled_all = pooled = None
    if counts is not None:
        counts = counts.reshape(-1)
        if counts.size != 1 + len(phenos):
            raise ProtocolError(f"{who}: the pooled guard counts have {counts.size} values; expected "
                                f"{1 + len(phenos)}")
        mine = [own["n_all"]] + list(own["counts"])
        if any(int(c) < int(m) for c, m in zip(counts, mine)):
            raise ProtocolError(f"{who}: the pooled counts are smaller than this party's own; another party "
                                "published counts that are not counts. Nothing was revealed")
        pooled_all, pooled = int(counts[0]), dict(zip(phenos, map(int, counts[1:])))
    release = Release(study=manifest.study, round_id=manifest.round_id, exchange=str(uri),
                      survivors={p: key_fingerprint(manifest.public_keys(p)) for p in body["survivors"]},
                      pooled_all=pooled_all, pooled=pooled, own_all=int(own["n_all"]),
                      own=dict(zip(phenos, map(int, own["counts"]))), samples=samples)
    with memory.locked():  # checked and recorded at once: a round unmasked meanwhile is compared too
        problems = release_problems(memory.earlier(), release, min_delta=guard.min_delta, min_n=guard.min_n)
        if problems and not guard.override:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ReleaseRefused(f"{who}: release refused by this party's guard: {problems[0]}{more}. Nothing that "
                                 f"unmasks the statistics was revealed (memory {memory.path}); pass "
                                 "--allow-small-release to release anyway (logged)")
        if counts is None:
            return None
        for p in problems:
            log.warning("release guard overridden: %s", p)
        rid = memory.record(release, overridden=bool(problems))
        ledger.mark(manifest, "released", rid)
    return rid


def check_step_release(manifest: Manifest, ledger: Ledger, own: OwnSamples, *, who: str) -> None:
    """Before a party publishes in a round without self-masks that extends a release (a selection
    step: ``settings["base_round"]``; its sum is revealed as soon as every party published): this
    party took part in that release, the round's parties are exactly its survivors (by key) and
    the party's own samples are those it released then. Else the step, differenced against the
    base release, would reveal a party or a few samples: :class:`~.guard.ReleaseRefused`."""
    base = manifest.settings.get("base_round")
    if not base:
        raise ReleaseRefused(f"{who}: round {manifest.round_id!r} has no self-masks, so its sum is revealed as soon as "
                             "every party published, with no release guard; a party publishes in such a round only "
                             "as a selection step that extends a release it took part in, and this manifest is not "
                             "one. Nothing was published")
    memory = ReleaseMemory(ledger.key_path)
    memory.check_complete(ledger.released_ids())
    found = [(e, s) for e, s in memory.earlier() if (e.get("study"), e.get("round_id")) == (manifest.study, base)]
    if not found:
        raise ReleaseRefused(f"{who}: this party took part in no release of round {base!r} of study "
                             f"{manifest.study!r} (memory {memory.path}); a step extends a release it took part in. "
                             "Nothing was published")
    e, samples = found[0]
    now = {key_fingerprint(manifest.public_keys(p)) for p in manifest.party_names}
    if now != set(e.get("survivors", {}).values()):
        raise ReleaseRefused(f"{who}: the step's parties ({', '.join(manifest.party_names)}) are not the survivors of "
                             f"the release of round {base!r} ({', '.join(sorted(e.get('survivors', {})))}); the two "
                             "would be differenced into a party's statistics. Nothing was published")
    mine = sample_hashes(memory.salt(), own.iids)
    if not np.array_equal(mine, samples) or dict(zip(own.phenotypes, map(int, own.counts))) != e.get("own"):
        raise ReleaseRefused(f"{who}: this party's samples differ from those it released in round {base!r}; a step "
                             "on other samples would be differenced against that release. Nothing was published")


def reveal(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, ledger: Ledger, *, who: str) -> str:
    """Publish what a survivor reveals last (``unmask/<party>.json``): its own self-mask seed and
    the pair seeds it shares with the dropped parties; nothing else. Only once the party confirmed
    the survivor set, every survivor confirmed the same one, no pair seed shared with this party
    was revealed, and the party's guard recorded the release (:func:`unmask_round`)."""
    body = _closed(uri, manifest, who)
    digest = _set_digest(body)
    e = ledger.entry(manifest)
    if e is None or e.get("confirmed") != digest or party not in body["survivors"]:
        raise ProtocolError(f"{who}: this key has not confirmed the round's survivor set (ledger {ledger.path}); "
                            "nothing is revealed before it has")
    loc = Location(uri)
    path = _round_path(loc, manifest, "unmask", f"{party}.json")
    if e.get("unmasked") == digest and loc.exists(path):
        return loc.show(path)
    if e.get("unmasked") and e["unmasked"] != digest:
        raise ProtocolError(f"{who}: this key already revealed for another survivor set of round "
                            f"{manifest.round_id!r}; the coordinator signed two different sets. Nothing was revealed")
    missing = missing_confirmations(uri, manifest, body)
    if missing:
        raise ProtocolError(f"{who}: {', '.join(missing)} have not confirmed the survivor set; nothing is revealed "
                            "before every survivor has")
    _refuse_if_exposed(uri, manifest, party, who)
    if not e.get("released"):
        raise ProtocolError(f"{who}: the release guard has not passed this round (ledger {ledger.path}); nothing "
                            "is revealed before it has")
    sec = ledger.secrets(manifest)
    if sec is None or sec.self_seed is None:
        raise ProtocolError(f"{who}: the round secrets of party {party!r} are gone (ledger {ledger.path}); the "
                            "round cannot be unmasked: start a new round")
    pubs, _ = read_round_keys(uri, manifest)
    seeds = round_pair_seeds(manifest, party, sec, pubs)
    record = {"party": party, "study": manifest.study, "round_id": manifest.round_id,
              "survivors_digest": digest, "self_seed": sec.self_seed.hex(),
              "pair_seeds": {d: seeds[d].hex() for d in body["dropped"] if d in seeds}}
    if [d for d in body["dropped"] if d not in seeds]:  # a dropped party that never joined shares no mask
        record["never_joined"] = sorted(d for d in body["dropped"] if d not in seeds)
    ledger.mark(manifest, "unmasked", digest)
    loc.mkdir(path.rsplit("/", 1)[0])
    loc.write_atomic(path, signed_record(record, keys), what=f"reveal of party {party!r}")
    ledger.forget_secrets(manifest)
    return loc.show(path)


def unmask_round(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, ledger: Ledger, *,
                 guard: GuardSettings = GuardSettings(), who: str | None = None) -> tuple[bool, str]:
    """A survivor's side of a closed round, as far as the others let it go now: confirm the
    survivor set; once every survivor confirmed it, reveal the guard counts' keys; once every
    survivor did, check the pooled counts against this party's release memory; then reveal the
    seeds. Returns ``(True, reveal path)`` when done, else ``(False, what it waits for)``;
    refusals raise (:class:`ProtocolError`, :class:`~.guard.ReleaseRefused`)."""
    who = who or f"party {party!r}, round {manifest.round_id!r}"
    body = read_survivors(uri, manifest)
    if body is None:
        return False, "the coordinator to close the round"
    e = ledger.entry(manifest) or {}
    loc = Location(uri)
    path = _round_path(loc, manifest, "unmask", f"{party}.json")
    if e.get("unmasked") == _set_digest(body) and loc.exists(path):
        return True, loc.show(path)
    if (party in body["survivors"] and e.get("published") and not e.get("confirmed") and not e.get("released")
            and not e.get("left_out")):
        # the rules on this party's own data (its samples, the survivors), before it writes anything;
        # they cannot change while it waits (and all rules run again with the pooled counts)
        guard_release(uri, manifest, ledger, body, None, guard, who=who)
    body = confirm_survivors(uri, manifest, party, keys, ledger, who=who)
    missing = missing_confirmations(uri, manifest, body)
    if missing:
        return False, f"{', '.join(missing)} to confirm the survivor set"
    if not (ledger.entry(manifest) or {}).get("released"):
        _refuse_if_exposed(uri, manifest, party, who)
        # this party's counts keys go out right away while the others' are not all in, else only once
        # the pooled counts pass (a refusal by the guard never follows a write of the same call)
        pubs, _ = read_round_keys(uri, manifest)
        mine = counts_reveal(manifest, party, ledger, body, pubs, who=who)
        counts, missing = pooled_counts(uri, manifest, body, own=mine)
        if counts is None:
            reveal_counts(uri, manifest, party, keys, mine)
            return False, f"{', '.join(missing)} to reveal their counts"
        guard_release(uri, manifest, ledger, body, counts, guard, who=who)
        reveal_counts(uri, manifest, party, keys, mine)
    return True, reveal(uri, manifest, party, keys, ledger, who=who)


def read_reveals(uri: str, manifest: Manifest, body: dict) -> tuple[dict[str, bytes], dict[tuple[str, str], bytes]]:
    """The survivors' verified reveals: ``({survivor: self seed}, {(survivor, dropped): pair seed})``;
    raises :class:`ProtocolError` naming the survivors whose reveal is missing."""
    loc = Location(uri)
    digest = _set_digest(body)
    pubs, _ = read_round_keys(uri, manifest)
    missing = [p for p in body["survivors"] if not loc.exists(_round_path(loc, manifest, "unmask", f"{p}.json"))]
    if missing:
        raise RevealsMissing(f"{loc.show(_round_path(loc, manifest))}: waiting for {', '.join(missing)} to unmask; "
                            f"each survivor runs `dash-spark party unmask --manifest ...`, then combine again")
    self_seeds, pair = {}, {}
    for p in body["survivors"]:
        path = _round_path(loc, manifest, "unmask", f"{p}.json")
        rec = read_signed(loc, path, manifest.public_keys(p), what="reveal", who=f"party {p!r}")
        if (rec.get("party"), rec.get("round_id"), rec.get("survivors_digest")) != (p, manifest.round_id, digest):
            raise ProtocolError(f"{loc.show(path)}: the reveal of party {p!r} is for another survivor set or round")
        try:
            self_seeds[p] = bytes.fromhex(rec["self_seed"])
            for d in body["dropped"]:
                if d in pubs:
                    pair[(p, d)] = bytes.fromhex(rec["pair_seeds"][d])
        except (KeyError, ValueError, TypeError):
            raise ProtocolError(f"{loc.show(path)}: malformed reveal of party {p!r}") from None
        if any(len(v) != 32 for v in [self_seeds[p]] + [pair[(p, d)] for d in body["dropped"] if d in pubs]):
            raise ProtocolError(f"{loc.show(path)}: malformed reveal of party {p!r} (seed length)")
    return self_seeds, pair


# ------------------------------------------------------------------------------------------------
# the three things a party does, and the combiner's sum


def join_round(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, ledger: Ledger, *,
               trust: TrustFile | None = None) -> RoundSecrets:
    """Check the round (signed manifest, pinned roster when ``trust`` is given; a new round id) and
    publish this party's round key; idempotent while the round is unfinished."""
    who = f"party {party!r}, round {manifest.round_id!r}"
    if trust is not None:
        verify_manifest(uri, manifest, trust, who=who)
    if party not in manifest.parties:
        raise ProtocolError(f"{who}: party {party!r} is not in the study; expected one of "
                            f"{', '.join(manifest.party_names)}")
    if key_fingerprint(manifest.public_keys(party)) != key_fingerprint(keys):
        raise ProtocolError(f"{who}: this key file's public keys are not the manifest's for {party!r}; use the "
                            "key pair whose .pub the coordinator registered")
    sec, _ = ledger.join(manifest, who=who)
    publish_round_key(uri, manifest, party, keys, sec)
    return sec


@dataclass(frozen=True)
class PartWriter:
    """What a party's Spark task needs to publish rows of one statistic: the encoding, the
    statistic's mask keys (:class:`~dash_spark.multiparty.masking.StatMasker`: not the round's
    seeds) and the party's private stage, where the masked rows wait until the driver publishes."""

    stage: str
    name: str
    masker: StatMasker
    frac_bits: int

    def write(self, start: int, values) -> dict:
        """Encode, mask and stage rows ``start..`` of the statistic (float rows); its header entry."""
        enc = encode(np.asarray(values, dtype=np.float64), self.frac_bits, name=self.name)
        row_words = int(np.prod(enc.shape[1:-1], dtype=np.int64))
        self.masker.apply(enc, int(start) * row_words)
        return write_part(self.stage, self.name, int(start), enc)


@dataclass(frozen=True)
class Publication:
    """A party's publication after every check that needs no data (:func:`open_publication`):
    its round's pair seeds are derived; nothing is masked or written yet."""

    uri: str
    manifest: Manifest
    party: str
    keys: PrivateKeys
    ledger: Ledger
    seeds: dict
    self_seed: bytes | None

    @property
    def who(self) -> str:
        return f"party {self.party!r}, round {self.manifest.round_id!r}"

    def part_writer(self, name: str, stage: str) -> PartWriter:
        return PartWriter(stage, name, stat_masker(name, me=self.party, parties=self.manifest.party_names,
                                                   seeds=self.seeds, self_seed=self.self_seed),
                          self.manifest.frac_bits)

    def new_stage(self, base: str | None = None) -> str:
        """A fresh directory for staged parts: under ``base`` (a location the executors and the
        driver reach) or, by default, beside the round's secrets (0700)."""
        name = f"{self.manifest.study}__{self.manifest.round_id}.stage-{_secrets.token_hex(4)}"
        if base is not None:
            loc = Location(base)
            path = loc.join(name)
            if "://" not in base or base.startswith("file://"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.mkdir(path, 0o700)  # private (an object store's prefix has its bucket's access rules)
            else:
                loc.mkdir(path)
            return loc.show(path)
        os.makedirs(self.ledger.dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.ledger.dir, name)
        os.mkdir(path, 0o700)
        return path

    def publish(self, stats, header_extra=None, *, files=None, staged=None, max_abs_bits: int | None = None,
                own: OwnSamples | None = None) -> str:
        """Encode and mask ``stats`` (float arrays), then publish them with the ``staged`` parts.
        A round with self-masks needs ``own`` (the party's own samples): their counts travel as
        the guard statistic, and the ledger keeps their sample hashes for the release guard."""
        manifest = self.manifest
        if read_survivors(self.uri, manifest) is not None:
            raise ProtocolError(f"{self.who}: the round was closed while this share was computed (its survivors "
                                "are fixed); a late share would not count. Nothing was published")
        stats = dict(stats)
        if manifest.self_masks or manifest.coordinator is not None:
            if own is None:
                raise InputError(f"{self.who}: a study round needs the party's own samples (OwnSamples) for the "
                                 "release guard")
        if manifest.self_masks:
            assert own is not None  # noqa: S101 - checked above
            stats[GUARD_STAT] = own.vector()
        elif manifest.coordinator is not None:
            # revealed once every party published: only a step that extends this party's release
            assert own is not None  # noqa: S101 - checked above
            check_step_release(manifest, self.ledger, own, who=self.who)
        check_staged(staged or {}, who=f"publish share of party {self.party!r}")  # before the ledger's mark
        encoded = {name: encode(v, manifest.frac_bits, max_abs_bits, name=name) for name, v in stats.items()}
        masked = mask_stats(manifest, self.party, self.keys, encoded, seeds=self.seeds, self_seed=self.self_seed,
                            inplace=True)
        # before writing: a crash mid-way never allows a second try (the staged parts were private so far),
        # of two runs of this party that computed at once only one publishes, and the fresh self-mask
        # seed is kept before anything masked with it reaches the exchange
        self.ledger.claim_publication(manifest, self.party, who=self.who, self_seed=self.self_seed,
                                      own=own if manifest.self_masks else None)
        share = publish_share(self.uri, manifest, self.party, self.keys, masked, header_extra, files=files,
                              staged=staged)
        if not manifest.self_masks:
            self.ledger.forget_secrets(manifest)  # nothing will be revealed for this round
        return share


def open_publication(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, *, ledger: Ledger) -> Publication:
    """Every check of a publication that needs no data: the key is the party's, the ledger shows no
    earlier publication in the round, every other party joined (their round keys are on the
    exchange) and the round is not closed. Derives the round's pair seeds."""
    who = f"party {party!r}, round {manifest.round_id!r}"
    if party not in manifest.parties or key_fingerprint(manifest.public_keys(party)) != key_fingerprint(keys):
        raise ProtocolError(f"{who}: the private key does not match party {party!r} in the manifest; load the "
                            "party's own .key file. Nothing was published")
    ledger.check_unpublished(manifest, party, who=who)
    sec = ledger.secrets(manifest)
    if sec is None:
        raise ProtocolError(f"{who}: this key has not joined the round (ledger {ledger.path}); run party join first")
    pubs, missing = read_round_keys(uri, manifest)
    if missing:
        raise ProtocolError(f"{who}: waiting for the round keys of {', '.join(missing)}; every party runs "
                            "`dash-spark party join` before any publishes. Nothing was published")
    if read_survivors(uri, manifest) is not None:
        raise ProtocolError(f"{who}: the round is closed (its survivors are fixed); a late share would not count. "
                            "Nothing was published")
    # a fresh self-mask seed for each publication: a share published again after the key folder was
    # restored from a backup differs by a fresh mask, never by the data alone
    return Publication(uri, manifest, party, keys, ledger, round_pair_seeds(manifest, party, sec, pubs),
                       _secrets.token_bytes(32) if manifest.self_masks else None)


def publish_stats(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, stats, header_extra=None, *,
                  ledger: Ledger, files=None, max_abs_bits: int | None = None, own: OwnSamples | None = None) -> str:
    """Encode (the manifest's ``frac_bits``), mask (this round's pair seeds and, when the manifest
    asks for them, the self-mask) and publish a party's float statistics, once per round.

    Every other party must have joined (their round keys are on the exchange); the ledger is
    checked before anything is written and records the publication."""
    return open_publication(uri, manifest, party, keys, ledger=ledger).publish(
        stats, header_extra, files=files, max_abs_bits=max_abs_bits, own=own)


def wait_for_shares(uri: str, manifest: Manifest, wait: float, *, poll: float = 0.2,
                    into: ShareSum | None = None) -> bool:
    """Wait up to ``wait`` seconds until every party's share is complete (signed); whether they are.
    With ``into``, each share is verified and added to that sum as it lands (what a coordinator
    does while the others compute), but for the last ones: once all are there the round can close,
    and :func:`combine` adds those while the survivors unmask. Without ``into``, only the
    signatures' presence is looked at (:func:`close_if_complete` verifies them)."""
    loc = Location(uri)
    paths = {p: _round_path(loc, manifest, "shares", p, "signature.json") for p in manifest.party_names}
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        present = [p for p, path in paths.items() if loc.exists(path)]
        if len(present) == len(paths):
            return True
        if into is not None:
            for p in present:
                if p not in into.headers:
                    into.add(p)
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def close_if_complete(uri: str, manifest: Manifest, coordinator: PrivateKeys | None, *,
                      allow_dropouts: bool = False, record: CloseRecord | None = None) -> dict:
    """The round's survivor set: the one the coordinator's ``record`` holds (written back when the
    exchange lost it), the exchange's, or (with the coordinator's key) a new one of the parties
    whose shares are complete, refusing a missing party unless ``allow_dropouts``."""
    if coordinator is not None and record is not None and record.get(manifest) is not None:
        return close_round(uri, manifest, coordinator, [], record=record)
    body = read_survivors(uri, manifest)
    if body is not None:
        return body
    present = complete_shares(uri, manifest)
    missing = [p for p in manifest.party_names if p not in present]
    if missing and not allow_dropouts:
        read_shares(uri, manifest)  # raises: names the missing parties
    if coordinator is None:
        raise ProtocolError(f"round {manifest.round_id!r}: every share is in, but the round is not closed; the "
                            "coordinator closes it with `dash-spark combine --manifest ... --sign-key COORD.key`")
    return close_round(uri, manifest, coordinator, present, record=record)


def combine(uri: str, manifest: Manifest, *, must_agree=(), wait: float = 0.0, poll: float = 0.2,
            partial: ShareSum | None = None) -> tuple[dict[str, dict], dict]:
    """Verify and add the counted shares, remove the masks, decode:
    ``({party: header}, {statistic: pooled float64})``.

    With self-masks the counted shares are the survivors' of the closed round, and every
    survivor's reveal must be in; without, every party's share is needed. With ``wait``, the
    shares are added first and the reveals awaited that long (checked every ``poll`` seconds);
    without, missing reveals raise :class:`RevealsMissing` before any share is read. ``partial``:
    shares already added (:func:`wait_for_shares`), used when they are exactly the counted ones
    under the same signed headers (else every share is read again)."""
    if manifest.self_masks:
        body = read_survivors(uri, manifest)
        if body is None:
            raise ProtocolError(f"round {manifest.round_id!r}: not closed; the coordinator closes it with "
                                "`dash-spark combine --manifest ... --sign-key COORD.key`")
        if wait <= 0:
            read_reveals(uri, manifest, body)  # raises before any share is read
        taken = partial.take(body["survivors"], add_missing=True) if partial is not None else None
        headers, sums = taken or add_shares(uri, manifest, must_agree=must_agree, parties=body["survivors"])
        deadline = time.time() + max(0.0, wait)
        while True:
            try:
                self_seeds, pair = read_reveals(uri, manifest, body)
                break
            except RevealsMissing:
                if time.time() >= deadline:
                    raise
                time.sleep(poll)
        for name, total in sums.items():
            unmask_sum(total, name, parties=manifest.party_names, self_seeds=self_seeds, dropped_pair_seeds=pair)
    else:
        taken = partial.take(manifest.party_names) if partial is not None else None
        headers, sums = taken or add_shares(uri, manifest, must_agree=must_agree)
    # the guard counts were revealed first, to the survivors' guards; the statistics are the rest
    return headers, {n: decode(v, manifest.frac_bits) for n, v in sums.items() if n != GUARD_STAT}


__all__ = ["CloseRecord", "GUARD_STAT", "GuardSettings", "Ledger", "PartWriter", "Publication", "RevealsMissing",
           "RoundSecrets", "TrustFile", "check_not_writable_by_others", "check_step_release", "close_if_complete", "close_round",
           "combine", "confirm_survivors", "counts_reveal", "guard_release", "join_round", "key_fingerprint",
           "missing_confirmations", "open_publication", "pooled_counts", "publish_round_key", "publish_stats",
           "read_reveals", "read_round_keys", "read_signed", "read_survivors", "reveal", "reveal_counts",
           "round_pair_seeds", "sign_manifest", "signed_record", "unmask_round", "verify_manifest",
           "wait_for_shares"]
