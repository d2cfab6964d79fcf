"""A round's protocol around the shares: pinned keys, a signed manifest, per-round ephemeral keys,
a party's ledger, the survivor set, and the survivors' reveals (double masking).

A round, as the parties run it::

    coordinator  party manifest --sign-key coord.key   manifest.json + manifest.sig (Ed25519)
    each party   party join                            keys/<party>.json: a fresh X25519 key, signed
    each party   party compress                        shares/<party>/: statistics + pair masks + self-mask
    coordinator  combine (first call)                  survivors.json: who published, signed
    survivors    party unmask                          unmask/<party>.json: own self-mask seed, and the
                                                       pair seeds shared with each dropped party
    anyone       combine                               sums the survivors' shares, removes the masks

What each step checks, and why:

- **Pinned keys.** A party acts on a manifest only if the coordinator's signature verifies with a
  key pinned in its trust file and every party's keys equal the pinned ones (like SSH's
  known_hosts): whoever can write the exchange cannot swap a party's keys for their own.
- **Fresh keys, never reused masks.** Pair seeds come from per-round ephemeral X25519 keys (signed
  with the party's long-term Ed25519 key and bound to the manifest digest), through HKDF whose salt
  binds the manifest's whole content. A party's ledger (next to its key file, mode 0600) records
  every round it joined, published in and unmasked for; it refuses a second publication in a round
  and a round id seen before with another manifest, whatever the exchange holds. Its round secrets
  are deleted once it has revealed what the round needs.
- **Dropouts (Bonawitz et al. 2017).** Each share also carries a self-mask from a private seed.
  Once the coordinator has fixed the survivors, each survivor reveals its self-mask seed and the pair
  seeds it shares with the dropped parties, and nothing else: a party never reveals its self seed
  for a round whose survivor set leaves it out, nor a pair seed shared with a survivor. A dropped
  party's late share thus stays hidden behind its self-mask.

Residual trust: the coordinator signs the survivor set; one that signs two different sets for one
round is caught by the ledger of any party that saw both (it refuses the second) but is not
prevented from showing different sets to different parties. Signatures make such equivocation
provable.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import ConfigError, InputError
from . import ProtocolError
from .encoding import decode, encode
from .exchange import (DuplicateShareError, Location, Manifest, ShareSum, add_shares, canonical_json,
                       check_staged, complete_shares, mask_stats, parse_json, publish_share, read_shares,
                       write_part)
from .keys import PrivateKeys, PublicKeys, check_party_name, fingerprint
from .masking import StatMasker, pairwise_seeds, stat_masker, unmask_sum

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def key_fingerprint(pub: PublicKeys | PrivateKeys) -> str:
    """The full fingerprint a trust file pins: sha256 (64 hex) of the X25519 and Ed25519 public keys
    (its first 16 digits are :func:`~dash_spark.multiparty.keys.fingerprint`)."""
    if isinstance(pub, PrivateKeys):
        pub = pub.public()
    return hashlib.sha256(pub.x25519_pub + pub.ed25519_pub).hexdigest()


def _write_private(path: str, data: bytes) -> None:
    """Write ``path`` atomically with mode 0600 from the start."""
    tmp = f"{path}.{_secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


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
        _write_private(self.path, text.encode())

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
    for name in manifest.party_names:
        trust.check(name, manifest.public_keys(name), role="party", where=who)


# ------------------------------------------------------------------------------------------------
# the party's ledger and round secrets


@dataclass(frozen=True)
class RoundSecrets:
    """A party's secrets of one round: its ephemeral X25519 key and its self-mask seed."""

    ephemeral: X25519PrivateKey
    self_seed: bytes

    def public(self) -> bytes:
        return self.ephemeral.public_key().public_bytes(_RAW, _RAW_PUB)


class Ledger:
    """What a party did in which round, kept next to its key file (``<key>.ledger``, 0600), with
    the secrets of rounds not finished yet under ``<key>.rounds/`` (0700 directory, 0600 files)."""

    def __init__(self, key_path: str):
        key_path = os.fspath(key_path)
        self.path = key_path + ".ledger"
        self.dir = key_path + ".rounds"

    def _load(self) -> dict:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {"rounds": {}}
        if os.name == "posix" and st.st_mode & 0o077:
            raise InputError(f"{self.path}: the ledger is accessible to group or others; expected mode 0600, "
                             f"found {stat.S_IMODE(st.st_mode):04o}. Run chmod 600 {self.path}")
        with open(self.path, "rb") as fh:
            data = fh.read()
        try:
            obj = json.loads(data)
            assert isinstance(obj, dict) and isinstance(obj.get("rounds"), dict)
        except (ValueError, AssertionError):
            raise InputError(f"{self.path}: the ledger is damaged; it records the rounds this key took part in. "
                             "Restore it from a backup; without it no round can be trusted to be new") from None
        return obj

    def _save(self, obj: dict) -> None:
        _write_private(self.path, json.dumps(obj, indent=1, sort_keys=True).encode())

    @staticmethod
    def _key(manifest: Manifest) -> str:
        return f"{manifest.study}/{manifest.round_id}"

    def entry(self, manifest: Manifest) -> dict | None:
        return self._load()["rounds"].get(self._key(manifest))

    def check_new(self, manifest: Manifest, *, who: str) -> None:
        """Refuse a round id this key saw before under another manifest (a reused round id)."""
        digest = manifest.digest()
        for key, e in self._load()["rounds"].items():
            if key.rsplit("/", 1)[1] == manifest.round_id and e["digest"] != digest:
                raise ProtocolError(f"{who}: round id {manifest.round_id!r} was used before ({key}, another "
                                    "manifest); a round id is never reused, since masks derive from it. Ask the "
                                    f"coordinator for a new round. Nothing was published (ledger {self.path})")

    def secrets(self, manifest: Manifest) -> RoundSecrets | None:
        path = os.path.join(self.dir, f"{manifest.study}__{manifest.round_id}.json")
        try:
            with open(path, "rb") as fh:
                obj = json.loads(fh.read())
        except FileNotFoundError:
            return None
        return RoundSecrets(X25519PrivateKey.from_private_bytes(bytes.fromhex(obj["ephemeral"])),
                            bytes.fromhex(obj["self_seed"]))

    def join(self, manifest: Manifest, *, who: str) -> tuple[RoundSecrets, bool]:
        """This round's secrets: fresh ones (recorded) the first time, the stored ones after.
        Returns ``(secrets, new)``."""
        self.check_new(manifest, who=who)
        obj = self._load()
        e = obj["rounds"].get(self._key(manifest))
        if e is not None:
            sec = self.secrets(manifest)
            if sec is None:
                raise ProtocolError(f"{who}: this key already took part in round {manifest.round_id!r} and its "
                                    "round secrets are gone (the round was finished); a round is joined once. "
                                    f"Nothing was done (ledger {self.path})")
            return sec, False
        sec = RoundSecrets(X25519PrivateKey.generate(), _secrets.token_bytes(32))
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        _write_private(os.path.join(self.dir, f"{manifest.study}__{manifest.round_id}.json"), json.dumps({
            "ephemeral": sec.ephemeral.private_bytes(_RAW, _RAW_PRIV, _NOENC).hex(),
            "self_seed": sec.self_seed.hex()}).encode())
        obj["rounds"][self._key(manifest)] = {"digest": manifest.digest(), "joined": _now(), "published": None,
                                              "unmasked": None}
        self._save(obj)
        return sec, True

    def _claim_path(self, manifest: Manifest) -> str:
        return os.path.join(self.dir, f"{manifest.study}__{manifest.round_id}.published")

    def claim_publication(self, manifest: Manifest, party: str, *, who: str) -> None:
        """Record, atomically, that this key publishes in the round: one process wins (an exclusive
        create beside the round's secrets), any other, concurrent or later, is refused. Then the
        ledger marks the round published."""
        self.check_unpublished(manifest, party, who=who)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        try:
            fd = os.open(self._claim_path(manifest), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise self._claimed(manifest, party, who) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(_now() + "\n")
        self.mark(manifest, "published", _now())

    def check_unpublished(self, manifest: Manifest, party: str, *, who: str) -> None:
        e = self.entry(manifest)
        if e is not None and e.get("published"):
            raise DuplicateShareError(f"{who}: party {party!r} already published a share for round "
                                      f"{manifest.round_id!r} ({e['published']}, ledger {self.path}); a party "
                                      "publishes once per round, whatever the exchange shows. Nothing was done")
        if os.path.exists(self._claim_path(manifest)):
            raise self._claimed(manifest, party, who)

    def _claimed(self, manifest: Manifest, party: str, who: str) -> DuplicateShareError:
        return DuplicateShareError(f"{who}: party {party!r} already published a share for round "
                                   f"{manifest.round_id!r}, or another run of it is publishing one (ledger "
                                   f"{self.path}); a party publishes once per round, whatever the exchange "
                                   "shows. Nothing was done")

    def mark(self, manifest: Manifest, field: str, value) -> None:
        obj = self._load()
        obj["rounds"][self._key(manifest)][field] = value
        self._save(obj)

    def forget_secrets(self, manifest: Manifest) -> None:
        path = os.path.join(self.dir, f"{manifest.study}__{manifest.round_id}.json")
        if os.path.exists(path):
            os.remove(path)


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
    if not ok:
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


def read_round_keys(uri: str, manifest: Manifest) -> tuple[dict[str, bytes], list[str]]:
    """The parties' verified ephemeral keys of this round, and the parties that have not joined."""
    loc = Location(uri)
    found, missing = {}, []
    for party in manifest.party_names:
        path = _round_path(loc, manifest, "keys", f"{party}.json")
        if not loc.exists(path):
            missing.append(party)
            continue
        body = read_signed(loc, path, manifest.public_keys(party), what="round key", who=f"party {party!r}")
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
# closing a round: the survivors, and what they reveal


class RevealsMissing(ProtocolError):
    """A closed round whose survivors have not all revealed yet (combine can wait for them)."""


def survivors_path(loc: Location, manifest: Manifest) -> str:
    return _round_path(loc, manifest, "survivors.json")


def close_round(uri: str, manifest: Manifest, coordinator: PrivateKeys, survivors: list[str]) -> dict:
    """Fix the round's survivors (the parties whose shares count), signed by the coordinator; written
    once. Returns the signed body."""
    ck = manifest.coordinator_keys()
    if ck is None or key_fingerprint(ck) != key_fingerprint(coordinator):
        raise ProtocolError(f"close round {manifest.round_id!r}: the key given is not the manifest's coordinator "
                            "key; pass the coordinator's key with --sign-key")
    survivors = sorted(survivors)
    if len(survivors) < 2:
        raise ProtocolError(f"close round {manifest.round_id!r}: {len(survivors)} share(s) published; a round needs "
                            "at least 2 surviving parties (one alone would reveal its own statistics)")
    loc = Location(uri)
    path = survivors_path(loc, manifest)
    body = {"study": manifest.study, "round_id": manifest.round_id, "manifest_digest": manifest.digest(),
            "survivors": survivors, "dropped": [p for p in manifest.party_names if p not in survivors],
            "closed": _now()}
    if loc.exists(path):
        raise DuplicateShareError(f"{loc.show(path)}: round {manifest.round_id!r} is already closed; its survivor "
                                  "set is fixed once")
    loc.write_atomic(path, signed_record(body, coordinator), what="survivor set")
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
    return body


def _set_digest(body: dict) -> str:
    return hashlib.sha256(canonical_json(body, where="survivor set")).hexdigest()


def reveal(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, ledger: Ledger, *, who: str) -> str:
    """Publish what a survivor reveals once the round is closed: its own self-mask seed and the
    pair seeds it shares with the dropped parties; nothing else. Refused when the survivor set
    leaves ``party`` out, or when this key revealed for another survivor set of the round."""
    body = read_survivors(uri, manifest)
    if body is None:
        raise ProtocolError(f"{who}: round {manifest.round_id!r} is not closed yet (no survivor set from the "
                            "coordinator); run party unmask after the coordinator's combine closed it")
    if party not in body["survivors"]:
        raise ProtocolError(f"{who}: the coordinator declared party {party!r} dropped from round "
                            f"{manifest.round_id!r}; its share stays masked and nothing is revealed")
    digest = _set_digest(body)
    e = ledger.entry(manifest)
    if e is None:
        raise ProtocolError(f"{who}: this key did not join round {manifest.round_id!r} (ledger {ledger.path}); "
                            "nothing to reveal")
    if e.get("unmasked") and e["unmasked"] != digest:
        raise ProtocolError(f"{who}: this key already revealed for another survivor set of round "
                            f"{manifest.round_id!r}; the coordinator signed two different sets. Nothing was revealed")
    if not e.get("published"):
        raise ProtocolError(f"{who}: party {party!r} did not publish a share in round {manifest.round_id!r} "
                            "(ledger); nothing to reveal")
    loc = Location(uri)
    path = _round_path(loc, manifest, "unmask", f"{party}.json")
    if e.get("unmasked") == digest and loc.exists(path):
        return loc.show(path)
    sec = ledger.secrets(manifest)
    if sec is None:
        raise ProtocolError(f"{who}: the round secrets of party {party!r} are gone (ledger {ledger.path}); the "
                            "round cannot be unmasked: start a new round")
    pubs, missing = read_round_keys(uri, manifest)
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

    def publish(self, stats, header_extra=None, *, files=None, staged=None, max_abs_bits: int | None = None) -> str:
        """Encode and mask ``stats`` (float arrays), then publish them with the ``staged`` parts."""
        manifest = self.manifest
        if read_survivors(self.uri, manifest) is not None:
            raise ProtocolError(f"{self.who}: the round was closed while this share was computed (its survivors "
                                "are fixed); a late share would not count. Nothing was published")
        check_staged(staged or {}, who=f"publish share of party {self.party!r}")  # before the ledger's mark
        encoded = {name: encode(v, manifest.frac_bits, max_abs_bits, name=name) for name, v in stats.items()}
        masked = mask_stats(manifest, self.party, self.keys, encoded, seeds=self.seeds, self_seed=self.self_seed,
                            inplace=True)
        # before writing: a crash mid-way never allows a second try (the staged parts were private so far),
        # and of two runs of this party that computed at once, only one publishes
        self.ledger.claim_publication(manifest, self.party, who=self.who)
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
    return Publication(uri, manifest, party, keys, ledger, round_pair_seeds(manifest, party, sec, pubs),
                       sec.self_seed if manifest.self_masks else None)


def publish_stats(uri: str, manifest: Manifest, party: str, keys: PrivateKeys, stats, header_extra=None, *,
                  ledger: Ledger, files=None, max_abs_bits: int | None = None) -> str:
    """Encode (the manifest's ``frac_bits``), mask (this round's pair seeds and, when the manifest
    asks for them, the self-mask) and publish a party's float statistics, once per round.

    Every other party must have joined (their round keys are on the exchange); the ledger is
    checked before anything is written and records the publication."""
    return open_publication(uri, manifest, party, keys, ledger=ledger).publish(
        stats, header_extra, files=files, max_abs_bits=max_abs_bits)


def wait_for_shares(uri: str, manifest: Manifest, wait: float, *, poll: float = 0.2,
                    into: ShareSum | None = None) -> bool:
    """Wait up to ``wait`` seconds until every party's share is complete (signed); whether they are.
    With ``into``, each share is verified and added to that sum as it lands (what a coordinator
    does while the others compute); without, only the signatures' presence is looked at
    (:func:`close_if_complete` verifies them)."""
    loc = Location(uri)
    paths = {p: _round_path(loc, manifest, "shares", p, "signature.json") for p in manifest.party_names}
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        present = [p for p, path in paths.items() if loc.exists(path)]
        if into is not None:
            for p in present:
                if p not in into.headers:
                    into.add(p)
        if len(present) == len(paths):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def close_if_complete(uri: str, manifest: Manifest, coordinator: PrivateKeys | None, *,
                      allow_dropouts: bool = False) -> dict | None:
    """The round's survivor set: the existing one, or (with the coordinator's key) a new one of the
    parties whose shares are complete, refusing a missing party unless ``allow_dropouts``."""
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
    return close_round(uri, manifest, coordinator, present)


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
        taken = partial.take(body["survivors"]) if partial is not None else None
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
    return headers, {n: decode(v, manifest.frac_bits) for n, v in sums.items()}


__all__ = ["Ledger", "PartWriter", "Publication", "RevealsMissing", "RoundSecrets", "TrustFile", "close_if_complete", "close_round", "combine", "join_round",
           "key_fingerprint", "open_publication", "publish_round_key", "publish_stats", "read_signed", "signed_record",
           "read_reveals", "read_round_keys", "read_survivors", "reveal", "round_pair_seeds", "sign_manifest",
           "verify_manifest", "wait_for_shares"]
