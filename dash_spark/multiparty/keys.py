"""Party key pairs: X25519 for pairwise mask seeds, Ed25519 for signing published shares.

Files (small JSON, raw keys in lowercase hex)::

    <prefix>.key  (mode 0600)  {"kind": "private", "party": name, "x25519": hex, "ed25519": hex}
    <prefix>.pub  (mode 0644)  {"kind": "public",  "party": name, "x25519": hex, "ed25519": hex}

The private file holds the raw 32-byte private keys, the public file the raw 32-byte public keys.
A private key file is created with mode 0600 from the start (no window in which it is readable by
others) and is refused on loading when its mode allows group or other access.

Threat model: a party's private keys never leave it. The Ed25519 key signs everything the party
publishes (its round keys, shares and reveals), so that nobody can publish in its name; mask seeds
come from fresh per-round X25519 keys (:mod:`.rounds`), so a leaked long-term key reveals no past
round. Public keys reach the study manifest out of band; parties pin each other's full
fingerprints (:func:`dash_spark.multiparty.rounds.key_fingerprint`, ``party trust``) and act only
on manifests whose keys match.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import InputError, OutputError

_PARTY_RE = re.compile(r"[a-z0-9_-]+")
_HEX32_RE = re.compile(r"[0-9a-fA-F]{64}")

_RAW = serialization.Encoding.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_NOENC = serialization.NoEncryption()


def check_party_name(name: object, *, where: str = "party name") -> str:
    """Return ``name`` when it is a valid party name (``[a-z0-9_-]+``), else raise :class:`InputError`."""
    if not isinstance(name, str) or not _PARTY_RE.fullmatch(name):
        raise InputError(f"{where}: invalid party name; expected letters a-z, digits, '_' or '-' "
                         f"(lowercase, non-empty), found {name!r}. Rename the party")
    return name


def hex32(value: object, *, where: str, what: str) -> bytes:
    """Decode a 32-byte lowercase/uppercase hex string (64 digits) or raise :class:`InputError`."""
    if not isinstance(value, str) or not _HEX32_RE.fullmatch(value):
        shown = value if not isinstance(value, str) else f"{len(value)} characters"
        raise InputError(f"{where}: {what} is not a 32-byte hex string; expected 64 hex digits, "
                         f"found {shown}. Regenerate the key files with dash-spark")
    return bytes.fromhex(value)


@dataclass(frozen=True)
class PublicKeys:
    """A party's public keys: raw 32-byte X25519 and Ed25519 public keys."""

    party: str
    x25519_pub: bytes
    ed25519_pub: bytes

    def __post_init__(self) -> None:
        check_party_name(self.party, where="public keys")
        for what, raw in (("x25519", self.x25519_pub), ("ed25519", self.ed25519_pub)):
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise InputError(f"public keys of party {self.party!r}: {what} key is not 32 raw bytes; "
                                 f"expected 32 bytes, found {type(raw).__name__} of length "
                                 f"{len(raw) if isinstance(raw, bytes) else '?'}. Load keys with load_public")

    def manifest_entry(self) -> dict[str, str]:
        """``{"x25519": hex, "ed25519": hex}``: the party's entry in a study manifest."""
        return {"x25519": self.x25519_pub.hex(), "ed25519": self.ed25519_pub.hex()}

    @classmethod
    def from_manifest_entry(cls, party: str, entry: object, *, where: str = "manifest") -> "PublicKeys":
        """Parse a manifest entry ``{"x25519": hex, "ed25519": hex}`` of ``party``."""
        check_party_name(party, where=where)
        if not isinstance(entry, dict):
            raise InputError(f"{where}: entry of party {party!r} is not an object; expected "
                             f'{{"x25519": hex, "ed25519": hex}}, found {type(entry).__name__}. '
                             "Rebuild the manifest from the parties' .pub files")
        keys = cls(party=party,
                   x25519_pub=hex32(entry.get("x25519"), where=where, what=f"x25519 key of party {party!r}"),
                   ed25519_pub=hex32(entry.get("ed25519"), where=where, what=f"ed25519 key of party {party!r}"))
        keys._check_ed25519(where)
        return keys

    def _check_ed25519(self, where: str) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519_pub)
        except ValueError as exc:
            raise InputError(f"{where}: ed25519 key of party {self.party!r} is not a valid public key; "
                             f"expected a curve point, found {self.ed25519_pub.hex()[:16]}... ({exc}). "
                             "Regenerate the party's keys") from None

    def to_json(self) -> bytes:
        """The ``.pub`` file content."""
        return _dump({"kind": "public", "party": self.party, **self.manifest_entry()})

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this party's Ed25519 signature of ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519_pub).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class PrivateKeys:
    """A party's private keys (X25519 and Ed25519 objects from ``cryptography``)."""

    party: str
    x25519: X25519PrivateKey = field(repr=False)
    ed25519: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_raw(cls, party: str, x25519_private: bytes, ed25519_private: bytes) -> "PrivateKeys":
        """Keys from raw 32-byte private keys (deterministic keys for tests, or loading)."""
        check_party_name(party, where="private keys")
        try:
            return cls(party=party, x25519=X25519PrivateKey.from_private_bytes(x25519_private),
                       ed25519=Ed25519PrivateKey.from_private_bytes(ed25519_private))
        except (ValueError, TypeError) as exc:
            raise InputError(f"private keys of party {party!r}: raw private keys are invalid; expected two "
                             f"32-byte keys, found an error ({exc}). Regenerate the keys") from None

    @classmethod
    def generate(cls, party: str) -> "PrivateKeys":
        """Fresh random keys for ``party``."""
        check_party_name(party, where="generate keys")
        return cls(party=party, x25519=X25519PrivateKey.generate(), ed25519=Ed25519PrivateKey.generate())

    def public(self) -> PublicKeys:
        """The matching :class:`PublicKeys`."""
        return PublicKeys(party=self.party,
                          x25519_pub=self.x25519.public_key().public_bytes(_RAW, _RAW_PUB),
                          ed25519_pub=self.ed25519.public_key().public_bytes(_RAW, _RAW_PUB))

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``data``."""
        return self.ed25519.sign(data)

    def to_json(self) -> bytes:
        """The ``.key`` file content (raw private keys in hex: keep it secret)."""
        return _dump({"kind": "private", "party": self.party,
                      "x25519": self.x25519.private_bytes(_RAW, _RAW_PRIV, _NOENC).hex(),
                      "ed25519": self.ed25519.private_bytes(_RAW, _RAW_PRIV, _NOENC).hex()})

    def __repr__(self) -> str:
        return f"PrivateKeys(party={self.party!r}, fingerprint={fingerprint(self.public())!r})"


def _dump(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def fingerprint(pub: PublicKeys | PrivateKeys) -> str:
    """First 16 hex digits of sha256(x25519 public key || ed25519 public key): compare out of band."""
    if isinstance(pub, PrivateKeys):
        pub = pub.public()
    return hashlib.sha256(pub.x25519_pub + pub.ed25519_pub).hexdigest()[:16]


def generate_keypair(name: str) -> tuple[bytes, bytes]:
    """Fresh keys of party ``name``: ``(private .key JSON, public .pub JSON)`` as bytes."""
    keys = PrivateKeys.generate(name)
    return keys.to_json(), keys.public().to_json()


def _key_file_exists(path: str) -> OutputError:
    return OutputError(f"{path}: key file already exists; expected a new file, found an existing one. "
                       "Choose another output prefix or remove the old keys deliberately")


def _create_exclusive(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start; refuse an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    except FileExistsError:
        raise _key_file_exists(path) from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot create key file; expected a writable directory, found "
                          f"{exc.strerror}. Check the output prefix") from None
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits of a .pub file's 0644
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_keypair(out_prefix: str | os.PathLike, party: str | None = None) -> tuple[str, str]:
    """Write fresh keys to ``<out_prefix>.key`` (mode 0600) and ``<out_prefix>.pub`` (mode 0644).

    ``party`` defaults to the prefix's base name. Refuses (:class:`OutputError`) to overwrite either
    file. Returns ``(key_path, pub_path)``.
    """
    prefix = os.fspath(out_prefix)
    name = os.path.basename(prefix) if party is None else party
    check_party_name(name, where=f"write_keypair {prefix}")
    key_path, pub_path = prefix + ".key", prefix + ".pub"
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            raise _key_file_exists(p)
    private_json, public_json = generate_keypair(name)
    _create_exclusive(key_path, private_json, 0o600)
    try:
        _create_exclusive(pub_path, public_json, 0o644)
    except BaseException:
        os.unlink(key_path)
        raise
    return key_path, pub_path


def _read_key_json(path: str, kind: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
    except FileNotFoundError:
        raise InputError(f"{path}: {kind} key file not found; expected a file written by write_keypair, "
                         "found nothing. Check the path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {kind} key file; expected a readable file, found "
                         f"{exc.strerror}. Check the path and permissions") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: {kind} key file is not JSON; expected "
                         f'{{"party", "x25519", "ed25519"}}, found a parse error ({exc}). '
                         "Use the file written by write_keypair") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: {kind} key file is not a JSON object; expected "
                         f'{{"party", "x25519", "ed25519"}}, found {type(obj).__name__}. '
                         "Use the file written by write_keypair")
    found = obj.get("kind", kind)
    if found != kind:
        raise InputError(f"{path}: wrong key file kind; expected a {kind} key file, found a {found} one. "
                         f"Pass the party's .{'key' if kind == 'private' else 'pub'} file")
    missing = [k for k in ("party", "x25519", "ed25519") if k not in obj]
    if missing:
        raise InputError(f"{path}: {kind} key file lacks {', '.join(missing)}; expected keys party, "
                         f"x25519, ed25519, found {', '.join(sorted(obj))}. Use the file written by write_keypair")
    check_party_name(obj["party"], where=str(path))
    return obj


def load_private(path: str | os.PathLike) -> PrivateKeys:
    """Load a ``.key`` file; refuse one whose mode allows group or other access."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: private key file not found; expected a file written by write_keypair, "
                         "found nothing. Check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: private key path is not a regular file; expected a .key file, "
                         "found something else. Check the path")
    if os.name == "posix" and st.st_mode & 0o077:
        raise InputError(f"{path}: private key file is accessible to group or others; expected mode 0600, "
                         f"found {stat.S_IMODE(st.st_mode):04o}. Run chmod 600 {path}")
    obj = _read_key_json(path, "private")
    x = hex32(obj["x25519"], where=path, what="x25519 private key")
    e = hex32(obj["ed25519"], where=path, what="ed25519 private key")
    try:
        return PrivateKeys(party=obj["party"], x25519=X25519PrivateKey.from_private_bytes(x),
                           ed25519=Ed25519PrivateKey.from_private_bytes(e))
    except ValueError as exc:
        raise InputError(f"{path}: private keys are invalid; expected raw 32-byte keys, found an error "
                         f"({exc}). Regenerate the key files") from None


def load_public(path: str | os.PathLike) -> PublicKeys:
    """Load a ``.pub`` file."""
    path = os.fspath(path)
    obj = _read_key_json(path, "public")
    keys = PublicKeys(party=obj["party"], x25519_pub=hex32(obj["x25519"], where=path, what="x25519 public key"),
                      ed25519_pub=hex32(obj["ed25519"], where=path, what="ed25519 public key"))
    keys._check_ed25519(path)
    return keys


__all__ = ["PrivateKeys", "PublicKeys", "check_party_name", "fingerprint", "generate_keypair",
           "load_private", "load_public", "write_keypair"]
