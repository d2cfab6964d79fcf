"""The exchange: a directory or object-store URI where parties publish signed, masked shares.

Layout (every path through ``pyarrow.fs``; plain paths and ``file://`` are local, and whatever
``pyarrow.fs.FileSystem.from_uri`` supports, such as ``s3://``, ``gs://``, ``hdfs://``, works too)::

    <uri>/<study>/<round>/manifest.json
    <uri>/<study>/<round>/shares/<party>/header.json      canonical JSON, signed
    <uri>/<study>/<round>/shares/<party>/<stat>.npy       one masked ring array per statistic, or
    <uri>/<study>/<round>/shares/<party>/<stat>@<row>.npy  its row parts, as the party's Spark tasks
                                                          wrote them (each part's sha256 in the header)
    <uri>/<study>/<round>/shares/<party>/signature.json   Ed25519 signature of the header; written last

The :class:`Manifest` fixes the study, the round id, the parties (with their public keys), the
model settings and the fixed-point encoding; its :meth:`Manifest.digest` is bound into every
signed share header, together with the sha256 of every statistic file. Every file is written
to ``*.tmp`` and then moved into place; ``signature.json`` is written last and marks a share as
complete, and a complete share is never overwritten.

Threat model: parties and combiner are honest-but-curious; whoever reads the exchange learns the
manifest, the share headers (statistic names and shapes, declared variant-list hash and
phenotype/covariate names) and, by adding all shares, the pooled sums of the statistics: nothing
else, since each share is masked (:mod:`.masking`). Signatures with the manifest's Ed25519 keys
reject forged, tampered, replayed (other round) and misplaced shares; which shares count (all
parties, or a round's signed survivors) is decided by :mod:`.rounds`. Out of scope: parties lying
about their own data, collusion of all but one party (it reveals the remaining party's
statistics). The exchange is not trusted for integrity (signatures and hashes are checked) but
is for availability.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ConfigError, DuplicateShareError, InputError, OutputError, ProtocolError
from .encoding import (FRAC_BITS, HEADROOM_BITS, RING_BITS, add_into, check_encoded, check_frac_bits)
from .keys import PrivateKeys, PublicKeys, check_party_name, fingerprint
from .masking import STAT_NAME_RE, check_stat_name, mask_share

FORMAT_VERSION = 1  # share headers
MANIFEST_VERSION = 2  # 2: a coordinator entry (the key that signs the manifest and the survivor set)
MAX_PARTIES = 1 << HEADROOM_BITS  # the encoding's headroom covers sums over this many parties
_STUDY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ROUND_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
#: what a round id is (it names a folder of the exchange: no separator, no dot)
ROUND_ID_RE = _ROUND_RE
_SIG_RE = re.compile(r"[0-9a-f]{128}")


# ----------------------------------------------------------------------------------------------
# canonical JSON


def canonical_json(obj: object, *, where: str = "JSON") -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace, ASCII, no NaN): what is hashed and signed."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: not serialisable as canonical JSON; expected str/int/float/bool/None, "
                         f"lists and string-keyed objects, found an error ({exc}). Convert numpy values "
                         "with .tolist() or float()") from None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_json(data: bytes, *, where: str, exc_type: type[Exception] = InputError) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise exc_type(f"{where}: not valid JSON; expected a JSON object, found a parse error ({exc}). "
                       "The file is damaged; publish or write it again") from None
    if not isinstance(obj, dict):
        raise exc_type(f"{where}: not a JSON object; expected an object, found {type(obj).__name__}. "
                       "The file is damaged; publish or write it again")
    return obj


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# manifest


def new_round_id() -> str:
    """A fresh random round id (32 hex digits): a new round means fresh masks."""
    return secrets.token_hex(16)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_threshold(n_parties: int) -> int:
    """The default least number of survivors of a round of ``n_parties``: at least 3 and more than
    half the roster (every party of a study of 2 or 3). Two survivor sets of a round then share a
    party, which confirms only one of them (the consistency round of :mod:`.rounds`), and a close
    never leaves the coordinator and one colluding party with the statistics of a single third."""
    return n_parties if n_parties <= 3 else max(3, n_parties // 2 + 1)


@dataclass(frozen=True)
class Manifest:
    """What a study round is: parties and keys, model settings, encoding. Bound into every share.

    ``parties``: ``{name: {"x25519": hex, "ed25519": hex}}``; ``settings``: free-form model
    settings (intercept, missing_genotypes, pheno_names, covar_names, variant_hash, kind
    ``"regression"``/``"scan"``); ``encoding``: ``{"ring_bits": 128, "frac_bits": 64}``;
    ``created``: ISO time. Party positions are indices in :attr:`party_names` (sorted).
    ``coordinator``: ``{"name", "x25519", "ed25519"}`` of the key that signs the manifest and the
    round's survivor set (``None`` in library use without a coordinator). ``settings["self_masks"]``
    (default true): shares carry self-masks, revealed by the survivors once the round is closed.
    ``settings["threshold"]`` (default :func:`default_threshold`): the least number of survivors a
    round closes with (more than half the roster, so that two survivor sets always share a party).
    """

    study: str
    round_id: str
    parties: dict
    settings: dict
    encoding: dict = field(default_factory=lambda: {"ring_bits": RING_BITS, "frac_bits": FRAC_BITS})
    created: str = field(default_factory=_now)
    coordinator: dict | None = None

    def __post_init__(self) -> None:
        where = f"manifest of study {self.study!r}"
        if not isinstance(self.study, str) or not _STUDY_RE.fullmatch(self.study):
            raise InputError(f"manifest: invalid study name; expected letters, digits, '_', '.' or '-' "
                             f"starting with a letter or digit, found {self.study!r}. Rename the study")
        if not isinstance(self.round_id, str) or not _ROUND_RE.fullmatch(self.round_id):
            raise InputError(f"{where}: invalid round id; expected letters, digits, '_' or '-', found "
                             f"{self.round_id!r}. Use new_round_id()")
        if not isinstance(self.parties, dict):
            raise InputError(f"{where}: parties is not an object; expected {{name: {{x25519, ed25519}}}}, "
                             f"found {type(self.parties).__name__}. Build it from the parties' .pub files")
        if not 2 <= len(self.parties) <= MAX_PARTIES:
            raise InputError(f"{where}: wrong number of parties; expected 2 to {MAX_PARTIES}, found "
                             f"{len(self.parties)}. A study pools at least two parties")
        parsed = {}
        for name in sorted(self.parties):
            parsed[name] = PublicKeys.from_manifest_entry(name, self.parties[name], where=where)
        for kind in ("x25519_pub", "ed25519_pub"):
            seen: dict[bytes, str] = {}
            for name, pk in parsed.items():
                other = seen.setdefault(getattr(pk, kind), name)
                if other != name:
                    raise InputError(f"{where}: parties {other!r} and {name!r} have the same "
                                     f"{kind[:-4]} key; expected one key pair per party, found a duplicate. "
                                     f"Each party runs its own keygen")
        object.__setattr__(self, "parties", {n: pk.manifest_entry() for n, pk in parsed.items()})
        if not isinstance(self.settings, dict):
            raise InputError(f"{where}: settings is not an object; expected a dict, found "
                             f"{type(self.settings).__name__}. Pass the model settings as a dict")
        enc = self.encoding
        if not isinstance(enc, dict) or enc.get("ring_bits") != RING_BITS or set(enc) != {"ring_bits", "frac_bits"}:
            raise InputError(f"{where}: unsupported encoding; expected {{'ring_bits': {RING_BITS}, "
                             f"'frac_bits': n}}, found {_short(enc)}. Rebuild the manifest with this dash-spark")
        check_frac_bits(enc["frac_bits"], where=where)
        t = self.settings.get("threshold")
        if t is not None:
            n = len(self.parties)
            if isinstance(t, bool) or not isinstance(t, int) or not (n // 2 < t <= n and t >= 2):
                raise InputError(f"{where}: invalid threshold; expected the least number of survivors, more than "
                                 f"half of the {n} parties and at most {n}, found {_short(t)}. Rebuild the manifest "
                                 "with party manifest --threshold T")
        if not isinstance(self.created, str):
            raise InputError(f"{where}: created is not a string; expected an ISO time, found "
                             f"{type(self.created).__name__}. Leave it at the default")
        if self.coordinator is not None:
            if not isinstance(self.coordinator, dict) or set(self.coordinator) != {"name", "x25519", "ed25519"}:
                raise InputError(f"{where}: malformed coordinator entry; expected {{name, x25519, ed25519}}, found "
                                 f"{_short(self.coordinator)}. Rebuild the manifest with party manifest --sign-key")
            PublicKeys.from_manifest_entry(self.coordinator["name"], {k: self.coordinator[k]
                                                                     for k in ("x25519", "ed25519")}, where=where)
        canonical_json(self.to_dict(), where=where)

    @classmethod
    def new(cls, study: str, parties: Iterable[PublicKeys] | Mapping[str, dict], settings: Mapping,
            *, frac_bits: int = FRAC_BITS, round_id: str | None = None,
            coordinator: PublicKeys | None = None) -> "Manifest":
        """A manifest for a fresh round (``round_id`` defaults to :func:`new_round_id`)."""
        if isinstance(parties, Mapping):
            entries = dict(parties)
        else:
            entries = {}
            for pk in parties:
                if pk.party in entries:
                    raise InputError(f"manifest of study {study!r}: party {pk.party!r} listed twice; expected "
                                     "each party once, found a duplicate. Pass each .pub file once")
                entries[pk.party] = pk.manifest_entry()
        coord = None if coordinator is None else {"name": coordinator.party, **coordinator.manifest_entry()}
        return cls(study=study, round_id=new_round_id() if round_id is None else round_id,
                   parties=entries, settings=dict(settings),
                   encoding={"ring_bits": RING_BITS, "frac_bits": check_frac_bits(frac_bits)}, coordinator=coord)

    @property
    def self_masks(self) -> bool:
        """Whether shares carry self-masks (double masking: a round survives dropouts)."""
        return bool(self.settings.get("self_masks", True))

    @property
    def threshold(self) -> int:
        """The least number of survivors this round closes with (all parties without self-masks)."""
        if not self.self_masks:
            return len(self.parties)
        t = self.settings.get("threshold")
        return default_threshold(len(self.parties)) if t is None else int(t)

    def coordinator_keys(self) -> PublicKeys | None:
        """The coordinator's public keys (``None`` when the manifest names no coordinator)."""
        if self.coordinator is None:
            return None
        c = self.coordinator
        return PublicKeys.from_manifest_entry(c["name"], {"x25519": c["x25519"], "ed25519": c["ed25519"]})

    @property
    def party_names(self) -> list[str]:
        """Sorted party names: a party's position is its index here."""
        return sorted(self.parties)

    @property
    def frac_bits(self) -> int:
        return int(self.encoding["frac_bits"])

    def public_keys(self, party: str) -> PublicKeys:
        """The public keys of ``party`` (:class:`ProtocolError` when it is not in the manifest)."""
        if party not in self.parties:
            raise ProtocolError(f"manifest of study {self.study!r} round {self.round_id!r}: party {party!r} is "
                                f"not listed; expected one of {', '.join(self.party_names)}, found {party!r}. "
                                "Use the manifest of the party's study and round")
        return PublicKeys.from_manifest_entry(party, self.parties[party])

    def to_dict(self) -> dict:
        return {"version": MANIFEST_VERSION, "study": self.study, "round_id": self.round_id,
                "parties": self.parties, "settings": self.settings, "encoding": self.encoding,
                "created": self.created, "coordinator": self.coordinator}

    def to_json(self) -> str:
        """Human-readable JSON (the digest uses the canonical form)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> "Manifest":
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        obj = parse_json(data, where=where)
        version = obj.pop("version", None)
        if version != MANIFEST_VERSION:
            raise InputError(f"{where}: unsupported manifest version; expected {MANIFEST_VERSION}, found "
                             f"{_short(version)}. Start a new round with this dash-spark (party manifest)")
        need = ("study", "round_id", "parties", "settings", "encoding", "created", "coordinator")
        missing = [k for k in need if k not in obj]
        extra = sorted(set(obj) - set(need))
        if missing or extra:
            raise InputError(f"{where}: wrong manifest fields; expected {', '.join(need)}, found "
                             f"{', '.join(sorted(obj)) or 'none'}. Use a manifest written by write_manifest")
        return cls(**obj)

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON: what every share header binds to."""
        return hashlib.sha256(canonical_json(self.to_dict(), where="manifest")).hexdigest()


# ----------------------------------------------------------------------------------------------
# file system access


class _Location:
    """A base URI resolved to a pyarrow file system and a path in it."""

    def __init__(self, uri: str | os.PathLike):
        uri = os.fspath(uri)
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"exchange: empty location; expected a directory or URI, found {uri!r}. "
                              "Pass --exchange")
        self.uri = uri
        self.query = ""
        if "://" not in uri:
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.path = os.path.abspath(uri)
            self.prefix = ""
            return
        try:
            self.fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"exchange {uri}: cannot open the location; expected a local path or a URI "
                              f"pyarrow supports (file://, s3://, gs://, hdfs://), found an error "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
                              "Check the URI and credentials") from None
        self.path = path.rstrip("/") or "/"
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.prefix = ""
        else:
            self.prefix = uri.split("://", 1)[0] + "://"
            if "?" in uri:
                self.query = "?" + uri.split("?", 1)[1]

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/")] + list(parts)) if self.path != "/" else "/" + "/".join(parts)

    def show(self, path: str) -> str:
        """The user-facing location of ``path`` (re-openable with the same scheme and options)."""
        return f"{self.prefix}{path}{self.query}"

    def info(self, path: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.show(path)}: cannot inspect the exchange; expected an accessible "
                             f"location, found an error ({exc}). Check the exchange URI and access") from None

    def exists(self, path: str) -> bool:
        return self.info(path).type != pafs.FileType.NotFound

    def read(self, path: str, *, what: str, exc_type: type[Exception] = InputError) -> bytes:
        return self.read_buffer(path, what=what, exc_type=exc_type).to_pybytes()

    def read_buffer(self, path: str, *, what: str, exc_type: type[Exception] = InputError) -> pa.Buffer:
        """The file's bytes as an Arrow buffer (no copy into a Python ``bytes``)."""
        try:
            with self.fs.open_input_file(path) as f:  # random access: its size is known, one allocation
                return f.read_buffer()
        except (pa.ArrowException, OSError) as exc:
            raise self._read_error(path, what, exc_type, exc) from None

    def _read_error(self, path: str, what: str, exc_type: type[Exception], exc: Exception) -> Exception:
        if isinstance(exc, FileNotFoundError):
            return exc_type(f"{self.show(path)}: {what} not found; expected the file, found nothing. "
                            "Check the exchange location and that the file was published")
        return exc_type(f"{self.show(path)}: cannot read {what}; expected a readable file, found an error "
                        f"({exc}). Check the exchange location and access")

    def read_into(self, path: str, buf: list, *, what: str, exc_type: type[Exception] = InputError) -> memoryview:
        """The file's bytes read into the reusable buffer ``buf[0]`` (a ``bytearray``, replaced by a
        larger one when too small): a view of its first bytes. For local files this touches no
        fresh memory once the buffer is large enough."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return memoryview(self.read_buffer(path, what=what, exc_type=exc_type))
        try:
            with open(path, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if len(buf[0]) < size:
                    buf[0] = bytearray(size)  # views of the old buffer stay valid
                view = memoryview(buf[0])[:size]
                got = 0
                while got < size:
                    n = fh.readinto(view[got:])
                    if not n:
                        break
                    got += n
                return view[:got]
        except OSError as exc:
            raise self._read_error(path, what, exc_type, exc) from None

    def write_atomic(self, path: str, data: bytes | Sequence, *, what: str) -> None:
        """Write ``data`` (bytes, or a sequence of bytes-like parts written one after another) to
        ``path`` through a temporary file that is then moved into place."""
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        try:
            with self.fs.open_output_stream(tmp) as f:
                for part in parts:
                    f.write(part)
            self.fs.move(tmp, path)
        except (pa.ArrowException, OSError) as exc:
            try:
                self.fs.delete_file(tmp)
            except (pa.ArrowException, OSError):
                pass
            raise OutputError(f"{self.show(path)}: cannot write {what}; expected a writable exchange, found "
                              f"an error ({exc}). Check the exchange location and access") from None

    def list_final(self, path: str) -> list[str]:
        """Base names of the files under ``path`` other than ``*.tmp`` leftovers ([] when absent)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.show(path)}: cannot list the exchange; expected an accessible "
                             f"location, found an error ({exc}). Check the exchange URI and access") from None
        return [i.base_name for i in infos if not i.base_name.endswith(".tmp")]

    def mkdir(self, path: str) -> None:
        try:
            self.fs.create_dir(path, recursive=True)
        except (pa.ArrowException, OSError) as exc:
            raise OutputError(f"{self.show(path)}: cannot create directory; expected a writable exchange, "
                              f"found an error ({exc}). Check the exchange location and access") from None


Location = _Location  # the public name (other layers open exchange paths through it)


def _round_dir(loc: _Location, study: str, round_id: str) -> str:
    return loc.join(study, round_id)


def _share_dir(loc: _Location, manifest: Manifest, party: str) -> str:
    return loc.join(manifest.study, manifest.round_id, "shares", party)


def manifest_location(uri: str | os.PathLike, study: str, round_id: str) -> str:
    """Where :func:`write_manifest` puts the manifest of ``study``/``round_id`` under ``uri``."""
    loc = _Location(uri)
    return loc.show(loc.join(study, round_id, "manifest.json"))


def write_manifest(uri: str | os.PathLike, manifest: Manifest) -> str:
    """Write ``<uri>/<study>/<round>/manifest.json``; refuse when that study round already exists."""
    loc = _Location(uri)
    rdir = _round_dir(loc, manifest.study, manifest.round_id)
    if loc.exists(rdir):
        raise OutputError(f"{loc.show(rdir)}: study {manifest.study!r} round {manifest.round_id!r} already exists "
                          "in the exchange; expected a new round, found an existing directory. Start a new "
                          "round with new_round_id()")
    loc.mkdir(rdir)
    path = loc.join(manifest.study, manifest.round_id, "manifest.json")
    loc.write_atomic(path, manifest.to_json().encode("utf-8"), what="manifest")
    return loc.show(path)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest from its file (local path or URI) or from its round directory."""
    loc = _Location(path)
    target = loc.path
    if loc.info(target).type == pafs.FileType.Directory:
        target = loc.join("manifest.json")
    data = loc.read(target, what="manifest")
    return Manifest.from_json(data, where=loc.show(target))


def locate_manifest(path: str | os.PathLike) -> tuple[str, Manifest]:
    """``(exchange root, manifest)`` of a manifest given as its file or its round directory, local
    (relative or absolute) or a URI; refuses a manifest that does not sit at
    ``<root>/<study>/<round>/manifest.json`` (a copy elsewhere would publish in the wrong place)."""
    import posixpath

    loc = _Location(path)
    target = loc.path
    if loc.info(target).type == pafs.FileType.Directory:
        target = loc.join("manifest.json")
    manifest = Manifest.from_json(loc.read(target, what="manifest"), where=loc.show(target))
    round_dir = posixpath.dirname(target)
    study_dir = posixpath.dirname(round_dir)
    if (posixpath.basename(target), posixpath.basename(round_dir), posixpath.basename(study_dir)) != (
            "manifest.json", manifest.round_id, manifest.study):
        raise ProtocolError(f"{loc.show(target)}: this manifest (study {manifest.study!r}, round "
                            f"{manifest.round_id!r}) is not at <exchange>/{manifest.study}/{manifest.round_id}/"
                            "manifest.json; use the manifest in the exchange, not a copy. Nothing was done")
    root = posixpath.dirname(study_dir) or "/"
    return f"{loc.prefix}{root}{loc.query}", manifest


def _check_exchange_manifest(loc: _Location, manifest: Manifest, *, who: str) -> None:
    path = loc.join(manifest.study, manifest.round_id, "manifest.json")
    if not loc.exists(path):
        return
    stored = Manifest.from_json(loc.read(path, what="manifest"), where=loc.show(path))
    if stored.digest() != manifest.digest():
        raise ProtocolError(f"{who}: the manifest differs from the exchange's {loc.show(path)}; expected "
                            f"digest {stored.digest()[:16]}, found {manifest.digest()[:16]}. Use the manifest "
                            "the coordinator wrote to the exchange")


# ----------------------------------------------------------------------------------------------
# shares


def _npy_parts(arr: np.ndarray) -> tuple[bytes, memoryview]:
    """A uint64 array as the two parts of its ``.npy`` file (header, data), without copying the data.

    The bytes are those ``np.save`` writes (format 1.0, little-endian, C order).
    """
    arr = np.ascontiguousarray(arr, dtype="<u8")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u8", "fortran_order": False, "shape": arr.shape})
    return buf.getvalue(), memoryview(arr).cast("B")  # type: ignore[arg-type] # numpy arrays are buffers


def _load_npy(data) -> np.ndarray:
    """A ``.npy`` file's array from its bytes (``bytes`` or an Arrow buffer); a read-only view of
    ``data`` when the file is a plain C-order array, else a copy. Raises ``ValueError`` when the
    file is not a well-formed ``.npy`` array."""
    f = io.BytesIO(memoryview(data)[:65536])  # headers are short: np.lib.format caps them far below this
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return np.load(io.BytesIO(memoryview(data)), allow_pickle=False)
    if fortran_order or dtype.hasobject:
        return np.load(io.BytesIO(memoryview(data)), allow_pickle=False)
    count = int(np.prod(shape, dtype=np.int64))
    offset = f.tell()
    if len(memoryview(data)) - offset != count * dtype.itemsize:
        raise ValueError(f"the data holds {len(memoryview(data)) - offset} bytes, its header declares "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


def part_file(name: str, start: int) -> str:
    """The file of statistic ``name``'s part from row ``start``: ``<name>@<start, 12 digits>.npy``
    (``@`` never occurs in a statistic name, so part files and statistic files cannot collide)."""
    return f"{name}@{int(start):012d}.npy"


def write_part(stage: str, name: str, start: int, arr: np.ndarray) -> dict:
    """Write rows ``start..`` of a masked statistic (``arr``: ring rows) to the private ``stage``
    location as :func:`part_file`; returns its header entry ``{start, stop, sha256}``. Run by a
    party's Spark tasks; the same rows give the same bytes, so a retried task rewrites the same file."""
    check_stat_name(name, where="share part")
    check_encoded(arr, where=f"share part of statistic {name!r}")
    head, data = _npy_parts(arr)
    digest = hashlib.sha256(head)
    digest.update(data)
    loc = _Location(stage)
    loc.write_atomic(loc.join(part_file(name, start)), [head, data], what=f"part of statistic {name!r}")
    return {"start": int(start), "stop": int(start) + int(arr.shape[0]), "sha256": digest.hexdigest(),
            "bytes": len(head) + data.nbytes}


@dataclass(frozen=True)
class StagedStat:
    """A masked statistic of ``shape`` (ring array shape, rows first) whose row ``parts``
    (:func:`write_part` entries) wait in the party's private ``stage`` location."""

    shape: tuple
    parts: tuple
    stage: str


def check_parts(name: str, shape, parts, *, who: str) -> list[tuple[int, int, str]]:
    """``[(start, stop, sha256)]`` of a parted statistic's header entry, or :class:`ProtocolError`
    unless the parts tile rows ``0..shape[0]`` in order, each non-empty, without gap or overlap."""
    if not (isinstance(shape, (list, tuple)) and len(shape) >= 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) and shape[-1] == 2):
        raise ProtocolError(f"{who}: statistic {name!r} has a malformed shape; expected rows x ... x 2, found "
                            f"{_short(shape)}")
    out, at = [], 0
    for part in parts if isinstance(parts, (list, tuple)) else [None]:
        ok = isinstance(part, dict) and all(isinstance(part.get(k), int) and not isinstance(part.get(k), bool)
                                            for k in ("start", "stop")) and isinstance(part.get("sha256"), str)
        if not ok or not isinstance(part, dict) or part["start"] != at or part["stop"] <= part["start"] or part["stop"] > shape[0]:
            raise ProtocolError(f"{who}: the parts of statistic {name!r} do not tile its {shape[0]} rows; expected "
                                f"a part from row {at}, found {_short(part)}. Ask the party to publish again in a "
                                "new round")
        out.append((part["start"], part["stop"], part["sha256"]))
        at = part["stop"]
    if at != shape[0]:
        raise ProtocolError(f"{who}: the parts of statistic {name!r} stop at row {at}; expected {shape[0]} rows. "
                            "Ask the party to publish again in a new round")
    return out


@dataclass
class RingParts:
    """A verified parted statistic: ``[(start, stop, ring rows)]`` tiling an array of ``shape``."""

    shape: tuple
    parts: list


def _add_rows(total: np.ndarray, start: int | None, stop: int | None, arr: np.ndarray, *, first: bool) -> None:
    """Add ring rows ``arr`` into ``total`` (rows ``start..stop``, or all of it when ``start`` is None);
    the first party's rows are copied in. Rows of a C-order array are contiguous, as add_into needs."""
    target = total if start is None else total[start:stop]
    if first:
        np.copyto(target, arr)
    else:
        add_into(target, arr)


def check_staged(staged: Mapping[str, StagedStat], *, who: str) -> tuple[list[tuple], dict[str, list]]:
    """Check staged statistics before anything is published: their parts tile their rows and every
    part file is on the stage with its size (a task that wrote where the driver cannot see fails
    here). Returns the moves ``(stage location, path, part file name)`` and each statistic's
    :func:`check_parts` tiles ``[(start, stop, sha256)]``."""
    moves, tiles = [], {}
    for name, st in staged.items():
        check_stat_name(name, where=who)
        parts = sorted(st.parts, key=lambda p: p["start"])
        tiles[name] = check_parts(name, list(st.shape), [dict(p) for p in parts], who=who)
        src = _Location(st.stage)
        for p in parts:
            path = src.join(part_file(name, p["start"]))
            size = src.info(path).size
            if size is None or size != p.get("bytes", size):  # executors on other hosts wrote elsewhere
                raise OutputError(f"{src.show(path)}: a part of statistic {name!r} is missing or short on the "
                                  f"driver (expected {p.get('bytes')} bytes, found {size}); the share stage must "
                                  "be a location the executors and the driver both reach (--share-stage). "
                                  "Nothing was published")
            moves.append((src, path, part_file(name, p["start"])))
    return moves, tiles


def _move_part(src: _Location, src_path: str, dst: _Location, dst_path: str, *, what: str) -> None:
    """Move a staged part into the share (a rename when both are local, else a copy)."""
    if isinstance(src.fs, pafs.LocalFileSystem) and isinstance(dst.fs, pafs.LocalFileSystem):
        try:
            os.replace(src_path, dst_path)
            return
        except OSError:  # another device: copy below
            pass
    dst.write_atomic(dst_path, [src.read_buffer(src_path, what=what, exc_type=OutputError)], what=what)
    try:
        src.fs.delete_file(src_path)
    except (pa.ArrowException, OSError):  # the stage is removed as a whole afterwards
        pass


def _check_own_keys(manifest: Manifest, party: str, private_keys: PrivateKeys, *, who: str) -> None:
    check_party_name(party, where=who)
    expected = manifest.public_keys(party)
    if not isinstance(private_keys, PrivateKeys):
        raise InputError(f"{who}: private keys are not PrivateKeys; expected load_private(...), found "
                         f"{type(private_keys).__name__}. Load the party's .key file")
    mine = private_keys.public()
    if private_keys.party != party or mine != expected:
        raise ProtocolError(f"{who}: the private key does not match party {party!r} in the manifest; expected "
                            f"party {party!r} fingerprint {fingerprint(expected)}, found party "
                            f"{private_keys.party!r} fingerprint {fingerprint(mine)}. Load party {party!r}'s "
                            "own .key file, or fix its keys in the manifest")


def mask_stats(manifest: Manifest, party: str, private_keys: PrivateKeys,
               encoded: Mapping[str, np.ndarray], *, seeds: Mapping[str, bytes], self_seed: bytes | None = None,
               inplace: bool = False) -> dict[str, np.ndarray]:
    """Mask a party's encoded statistics with its round's pair ``seeds`` (one per other manifest
    party: :func:`dash_spark.multiparty.rounds.round_pair_seeds`) and, when given, its self-mask
    (``inplace``: mask the given arrays themselves)."""
    who = f"mask statistics of party {party!r}"
    _check_own_keys(manifest, party, private_keys, who=who)
    return {name: mask_share(check_encoded(v, where=f"{who}, statistic {name!r}"), name, me=party,
                             parties=manifest.party_names, seeds=seeds, inplace=inplace, self_seed=self_seed)
            for name, v in encoded.items()}


FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.[a-z]+")


def publish_share(uri: str | os.PathLike, manifest: Manifest, party: str, private_keys: PrivateKeys,
                  stats: Mapping[str, np.ndarray], header_extra: Mapping | None = None,
                  files: Mapping[str, bytes] | None = None, staged: Mapping[str, StagedStat] | None = None) -> str:
    """Publish a party's masked statistics (ring arrays ``(..., 2)`` uint64) with a signed header.

    The header holds party, study, round, manifest digest, every statistic's array shape and
    the sha256 of its ``.npy`` file, ``header_extra`` (under ``"extra"``) and the sha256 of every
    public file in ``files`` (``{name: bytes}``, e.g. the variant list), which are written into the
    share too. ``staged``: masked statistics already written in row parts to a private stage
    (:func:`write_part`), moved into the share with each part's sha256 in the header. Refuses a
    second share of the same party and round (:class:`DuplicateShareError`). Returns the share's
    location.
    """
    who = f"publish share of party {party!r}"
    _check_own_keys(manifest, party, private_keys, who=who)
    staged = dict(staged or {})
    if not stats and not staged:
        raise InputError(f"{who}: no statistics; expected at least one, found none. Pass the masked statistics")
    extra = {} if header_extra is None else dict(header_extra)
    loc = _Location(uri)
    _check_exchange_manifest(loc, manifest, who=who)
    sdir = _share_dir(loc, manifest, party)
    sig_path = sdir + "/signature.json"
    if loc.exists(sig_path):
        raise DuplicateShareError(f"{loc.show(sdir)}: party {party!r} already published a share for round "
                                  f"{manifest.round_id!r}; expected one share per party and round, found an "
                                  "existing signed share. Shares are never replaced: start a new round to "
                                  "publish different values")
    if loc.list_final(sdir):
        # masked files of an interrupted publish may have been seen: re-masking other values with the
        # same streams would reveal their difference, so a round's share is written at most once
        raise DuplicateShareError(f"{loc.show(sdir)}: party {party!r} has an incomplete share for round "
                                  f"{manifest.round_id!r}; expected an empty share directory, found files of an "
                                  "interrupted publish. Start a new round (new_round_id) and publish there")
    public = dict(files or {})
    for fname in public:
        if not FILE_NAME_RE.fullmatch(fname) or fname.endswith(".npy") or fname.endswith(".json"):
            raise InputError(f"{who}: invalid file name {fname!r}; expected a plain name like variants.parquet")
    npy: dict[str, tuple[bytes, memoryview]] = {}
    spec: dict[str, dict] = {}
    for name, arr in stats.items():
        check_stat_name(name, where=who)
        check_encoded(arr, where=f"{who}, statistic {name!r}")
        parts = _npy_parts(arr)
        digest = hashlib.sha256(parts[0])
        digest.update(parts[1])
        npy[name] = parts
        spec[name] = {"shape": list(arr.shape), "dtype": "uint64", "sha256": digest.hexdigest()}
    for name in staged:
        if name in spec:
            raise InputError(f"{who}: statistic {name!r} given both whole and in parts")
    moves, tiles = check_staged(staged, who=who)
    for name, st in staged.items():
        spec[name] = {"shape": list(st.shape), "dtype": "uint64",
                      "parts": [{"start": a, "stop": b, "sha256": sha} for a, b, sha in tiles[name]]}
    header = {"version": FORMAT_VERSION, "party": party, "study": manifest.study, "round_id": manifest.round_id,
              "manifest_digest": manifest.digest(), "stats": spec, "extra": extra, "created": _now(),
              "files": {f: hashlib.sha256(d).hexdigest() for f, d in public.items()}}
    header_bytes = canonical_json(header, where=f"{who}, header")
    signature = {"party": party, "algorithm": "ed25519", "fingerprint": fingerprint(private_keys),
                 "header_sha256": hashlib.sha256(header_bytes).hexdigest(),
                 "signature": private_keys.sign(header_bytes).hex()}
    loc.mkdir(sdir)
    for name, data in npy.items():
        loc.write_atomic(f"{sdir}/{name}.npy", data, what=f"statistic {name!r}")
    for src, path, fname in moves:
        _move_part(src, path, loc, f"{sdir}/{fname}", what=f"share part {fname}")
    for fname, blob in public.items():
        loc.write_atomic(f"{sdir}/{fname}", blob, what=f"file {fname!r}")
    loc.write_atomic(f"{sdir}/header.json", header_bytes, what="share header")
    loc.write_atomic(sig_path, canonical_json(signature) + b"\n", what="share signature")
    return loc.show(sdir)


def _describe_diff(ref: dict[str, list], got: dict[str, list]) -> tuple[str, str]:
    exp, fnd = [], []
    for name in sorted(set(ref) | set(got)):
        if name not in got:
            exp.append(f"statistic {name!r}")
            fnd.append(f"no {name!r}")
        elif name not in ref:
            exp.append(f"no {name!r}")
            fnd.append(f"statistic {name!r}")
        elif ref[name] != got[name]:
            exp.append(f"{name!r} of shape {tuple(ref[name])}")
            fnd.append(f"shape {tuple(got[name])}")
    return ", ".join(exp[:4]) + (" ..." if len(exp) > 4 else ""), ", ".join(fnd[:4]) + (" ..." if len(fnd) > 4 else "")


def _verify_share(loc: _Location, manifest: Manifest, party: str, pub: PublicKeys, *,
                  data: bool = True) -> tuple[dict, dict]:
    """A party's share: its signed header checked against the manifest and, with ``data``, every
    statistic file against the header's sha256 (``({header}, {statistic: ring array})``)."""
    sdir = _share_dir(loc, manifest, party)
    who = f"share of party {party!r} ({loc.show(sdir)})"
    sig_obj = parse_json(loc.read(sdir + "/signature.json", what="share signature", exc_type=ProtocolError),
                          where=f"{who} signature.json", exc_type=ProtocolError)
    sig_hex = sig_obj.get("signature")
    if sig_obj.get("algorithm") != "ed25519" or not isinstance(sig_hex, str) or not _SIG_RE.fullmatch(sig_hex):
        raise ProtocolError(f"{who}: malformed signature.json; expected an ed25519 signature of 128 hex digits, "
                            f"found algorithm {_short(sig_obj.get('algorithm'))}. Ask {party!r} to publish "
                            "again in a new round")
    header_raw = loc.read(sdir + "/header.json", what="share header", exc_type=ProtocolError)
    header = parse_json(header_raw, where=f"{who} header.json", exc_type=ProtocolError)
    try:
        signed = canonical_json(header, where=f"{who} header.json")
    except InputError as exc:
        raise ProtocolError(str(exc)) from None
    if not pub.verify(bytes.fromhex(sig_hex), signed):
        raise ProtocolError(f"{who}: signature does not verify with {party!r}'s Ed25519 key from the manifest; "
                            f"expected a header signed by {party!r} (fingerprint {fingerprint(pub)}), found a "
                            f"tampered, unsigned or foreign header. Ask {party!r} to publish again in a new round")
    if header.get("party") != party:
        raise ProtocolError(f"{who}: share is in the wrong party's directory; expected party {party!r}, found "
                            f"{_short(header.get('party'))}. Ask {party!r} to publish its own share")
    digest = manifest.digest()
    found = (header.get("study"), header.get("round_id"), header.get("manifest_digest"))
    if found != (manifest.study, manifest.round_id, digest):
        raise ProtocolError(f"{who}: replayed or misplaced share from another round; expected study "
                            f"{manifest.study!r} round {manifest.round_id!r} manifest {digest[:16]}, found study "
                            f"{_short(found[0])} round {_short(found[1])} manifest {str(found[2])[:16]}. "
                            f"Ask {party!r} to publish its share for round {manifest.round_id!r}")
    spec = header.get("stats")
    if not isinstance(spec, dict) or not spec or not isinstance(header.get("extra"), dict):
        raise ProtocolError(f"{who}: malformed header; expected 'stats' and 'extra' objects, found "
                            f"{_short(sorted(header))}. Ask {party!r} to publish again in a new round")
    stats: dict[str, np.ndarray | RingParts] = {}
    for name, meta in spec.items() if data else ():
        pieces = _stat_pieces(sdir, name, meta, who=who, party=party)
        arrays = [(a, b, _read_ring(loc, path, sha, shape, who=who, what=what, party=party))
                  for a, b, path, sha, shape, what in pieces]
        stats[name] = arrays[0][2] if arrays[0][0] is None else RingParts(tuple(meta["shape"]), arrays)
    return header, stats


def _stat_pieces(sdir: str, name, meta, *, who: str, party: str) -> list[tuple]:
    """The files of one statistic of a signed header: ``[(start, stop, path, sha256, shape, what)]``,
    ``start``/``stop`` ``None`` for a whole statistic; :class:`ProtocolError` on a malformed entry."""
    parted = isinstance(meta, dict) and "parts" in meta
    if not isinstance(name, str) or not STAT_NAME_RE.fullmatch(name) or not (
            isinstance(meta, dict) and isinstance(meta.get("shape"), list)
            and (parted or isinstance(meta.get("sha256"), str))):
        raise ProtocolError(f"{who}: malformed header entry for statistic {_short(name)}; expected "
                            f"{{shape, dtype, sha256}}, found {_short(meta)}. Ask {party!r} to publish again")
    if not parted:
        return [(None, None, f"{sdir}/{name}.npy", meta["sha256"], meta["shape"], f"statistic {name!r}")]
    return [(a, b, f"{sdir}/{part_file(name, a)}", sha, [b - a] + meta["shape"][1:], f"statistic {name!r} rows {a}..{b}")
            for a, b, sha in check_parts(name, meta["shape"], meta["parts"], who=who)]


def _read_ring(loc: _Location, path: str, sha: str, shape: list, *, who: str, what: str, party: str,
               buf: list | None = None) -> np.ndarray:
    """A ring array file of a share, checked against its signed sha256 and shape. With ``buf``, the
    file is read into that reusable buffer (:meth:`_Location.read_into`) and the array is a view of it (valid until its next use):
    the bytes checked are the bytes used, whatever happens to the file afterwards."""
    try:
        data = loc.read_buffer(path, what=what, exc_type=ProtocolError) if buf is None else \
            loc.read_into(path, buf, what=what, exc_type=ProtocolError)
    except ProtocolError as exc:
        raise ProtocolError(f"{who}: {str(exc).rstrip('.')}. Ask {party!r} to publish again in a new round") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise ProtocolError(f"{who}: {what} does not match the signed header; expected sha256 "
                            f"{sha[:16]}, found {got[:16]}. The file was altered after "
                            f"publishing; ask {party!r} to publish again in a new round")
    try:
        arr = _load_npy(data)
    except (ValueError, OSError, EOFError) as exc:
        raise ProtocolError(f"{who}: {what} is not a .npy array; expected uint64 (..., 2), "
                            f"found an error ({exc}). Ask {party!r} to publish again in a new round") from None
    if arr.dtype.kind != "u" or arr.dtype.itemsize != 8 or list(arr.shape) != list(shape) or (
            arr.ndim < 1 or arr.shape[-1] != 2):
        raise ProtocolError(f"{who}: {what} has the wrong type; expected uint64 of shape "
                            f"{tuple(shape)}, found {arr.dtype} of shape {arr.shape}. "
                            f"Ask {party!r} to publish again in a new round")
    return arr.astype(np.uint64, copy=False)


def _counted(uri: str | os.PathLike, manifest: Manifest, parties: Iterable[str] | None) -> tuple[_Location, list[str]]:
    """The exchange and the sorted parties whose shares count, each with a complete (signed) share."""
    loc = _Location(uri)
    rdir = _round_dir(loc, manifest.study, manifest.round_id)
    _check_exchange_manifest(loc, manifest, who=f"combine study {manifest.study!r} round {manifest.round_id!r}")
    names = manifest.party_names if parties is None else sorted(parties)
    missing: list[str] = []
    unsigned: list[str] = []
    for p in names:
        sdir = _share_dir(loc, manifest, p)
        if not loc.exists(sdir + "/signature.json"):
            (unsigned if loc.exists(sdir + "/header.json") else missing).append(p)
    if missing:
        raise ProtocolError(f"{loc.show(rdir)}: shares missing from {', '.join(map(repr, missing))}; expected "
                            f"a share from all {len(names)} parties ({', '.join(names)}), found "
                            f"{len(names) - len(missing)}. Combine needs every party: wait for the missing "
                            "ones, or close the round without them (combine --allow-dropouts --sign-key ...)")
    if unsigned:
        p = unsigned[0]
        raise ProtocolError(f"share of party {p!r} ({loc.show(_share_dir(loc, manifest, p))}): signature.json is "
                            "missing; expected a signed share, found an unsigned or incomplete one. Start a new round "
                            f"and ask {p!r} to publish there (parties without a signature: {', '.join(unsigned)})")
    return loc, names


def _check_agreement(headers: Mapping[str, dict], names: list[str], must_agree: Iterable[str]) -> None:
    """Every party declares the statistics (names, shapes) of the first and the same values of the
    header keys in ``must_agree``."""
    ref = names[0]
    ref_spec = {n: m["shape"] for n, m in headers[ref]["stats"].items()}
    keys = list(must_agree)
    for p in names[1:]:
        spec = {n: m["shape"] for n, m in headers[p]["stats"].items()}
        if spec != ref_spec:
            exp, fnd = _describe_diff(ref_spec, spec)
            raise ProtocolError(f"share of party {p!r}: statistics differ from those of party {ref!r}; expected {exp}, "
                                f"found {fnd}. All parties must run the same model settings on the same "
                                "variant list")
        for key in keys:
            a = headers[ref]["extra"].get(key, "<missing>")
            b = headers[p]["extra"].get(key, "<missing>")
            if a != b:
                raise ProtocolError(f"share of party {p!r}: header value {key!r} differs from that of party {ref!r}; "
                                    f"expected {_short(a)}, found {_short(b)}. All parties must use the same "
                                    f"{key} (check the party's inputs and settings)")


def read_shares(uri: str | os.PathLike, manifest: Manifest, *, must_agree: Iterable[str] = (),
                parties: Iterable[str] | None = None) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    """Verify and read every manifest party's share: ``{party: (header, {stat: ring array or
    RingParts})}``.

    Raises :class:`ProtocolError` when a party's share is missing, unsigned, badly signed,
    from another round, altered, or when parties declare different statistics (names, shapes)
    or different ``header_extra`` values for the keys in ``must_agree``.
    """
    loc, names = _counted(uri, manifest, parties)
    out = {p: _verify_share(loc, manifest, p, manifest.public_keys(p)) for p in names}
    _check_agreement({p: h for p, (h, _) in out.items()}, names, must_agree)
    return out


class ShareSum:
    """The ring sum of verified shares, added one party at a time: a party's signed header is
    verified and checked against the first party's (statistics and the ``must_agree`` header
    values), then each of its files is read into a few reusable buffers, checked against the
    signed sha256 and added into the totals (no copy of a party's share is kept).

    A coordinator waiting for a round's shares adds each as it arrives; :meth:`matches` then tells
    whether the sum is that of a survivor set, from the same signed headers still on the exchange."""

    def __init__(self, uri: str | os.PathLike, manifest: Manifest, *, must_agree: Iterable[str] = ()):
        self.loc = _Location(uri)
        self.manifest = manifest
        self.must_agree = list(must_agree)
        self.headers: dict[str, dict] = {}
        self.totals: dict[str, np.ndarray] = {}
        self.broken = False  # this sum takes no more shares: an add failed midway, or it was taken
        self.used = False  # combine took these totals (:meth:`take`) and unmasks them in place

    def add(self, party: str, header: dict | None = None) -> None:
        """Verify ``party``'s share (its signed ``header`` when already verified) and add it."""
        loc, manifest = self.loc, self.manifest
        if party in self.headers or self.broken:
            raise ProtocolError(f"share of party {party!r}: cannot be added to this sum (added before, or an "
                                "earlier add failed)")
        if header is None:
            header = _verify_share(loc, manifest, party, manifest.public_keys(party), data=False)[0]
        if self.headers:
            ref = next(iter(self.headers))
            _check_agreement({ref: self.headers[ref], party: header}, [ref, party], self.must_agree)
        first = not self.headers
        sdir = _share_dir(loc, manifest, party)
        who = f"share of party {party!r} ({loc.show(sdir)})"
        jobs = []
        for name, meta in header["stats"].items():
            jobs += [(name, a, b, (path, sha, shape), dict(who=who, what=what, party=party))
                     for a, b, path, sha, shape, what in _stat_pieces(sdir, name, meta, who=who, party=party)]
        if first:
            totals = {name: np.empty(tuple(meta["shape"]), dtype=np.uint64) for name, meta in header["stats"].items()}
        else:
            totals = self.totals
        # reader threads read and check the files (the sha256 and the reads release the GIL) into a
        # few reusable buffers while this thread adds the checked rows into the totals, in order; a
        # file gets its buffer when it is submitted, so a window of (readers + 1) files is in flight
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, min(2, (os.cpu_count() or 1), len(jobs)))
        buffers = [[bytearray()] for _ in range(workers + 1)]
        todo = iter(jobs)
        pending: deque = deque()
        with ThreadPoolExecutor(workers) as pool:
            def submit():
                job = next(todo, None)
                if job is not None:
                    buf = buffers.pop()
                    pending.append((job, buf, pool.submit(_read_ring, loc, *job[3], buf=buf, **job[4])))

            for _ in range(workers + 1):
                submit()
            try:
                while pending:
                    (name, a, b, _, _), buf, fut = pending.popleft()
                    arr = fut.result()
                    _add_rows(totals[name], a, b, arr, first=first)
                    del arr
                    buffers.append(buf)
                    submit()
            except BaseException:
                self.broken = not first  # the totals hold part of this party's share
                raise
            finally:
                for _, _, fut in pending:
                    fut.cancel()
        self.totals = totals
        self.headers[party] = header

    def take(self, parties: Iterable[str], *, add_missing: bool = False) -> tuple[dict[str, dict],
                                                                                  dict[str, np.ndarray]] | None:
        """``(headers, totals)`` when this is the sum of exactly ``parties`` (:meth:`matches`), for
        use once (the caller unmasks the totals in place); else None. ``add_missing``: a sum of
        some of ``parties`` (and no other) first adds the shares it lacks."""
        parties = sorted(parties)
        if add_missing and not self.broken and set(self.headers) <= set(parties):
            for p in parties:
                if p not in self.headers:
                    self.add(p)
        if not self.matches(parties):
            return None
        self.broken = self.used = True
        return self.headers, self.totals

    def matches(self, parties: Iterable[str]) -> bool:
        """Whether this is the sum of exactly ``parties``' shares, each under the signed header
        that the exchange holds now."""
        if self.broken or sorted(self.headers) != sorted(parties):
            return False
        for p, header in self.headers.items():
            try:
                now = _verify_share(self.loc, self.manifest, p, self.manifest.public_keys(p), data=False)[0]
            except ProtocolError:
                return False
            if canonical_json(now) != canonical_json(header):
                return False
        return True


def add_shares(uri: str | os.PathLike, manifest: Manifest, *, must_agree: Iterable[str] = (),
               parties: Iterable[str] | None = None) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """:func:`read_shares` and :func:`sum_shares` in one pass (:class:`ShareSum`): every counted
    share's header is verified first. Returns ``({party: header}, {statistic: ring sum})``."""
    loc, names = _counted(uri, manifest, parties)
    headers = {p: _verify_share(loc, manifest, p, manifest.public_keys(p), data=False)[0] for p in names}
    _check_agreement(headers, names, must_agree)
    acc = ShareSum(uri, manifest, must_agree=must_agree)
    for p in names:
        acc.add(p, headers[p])
    return acc.headers, acc.totals


def sum_shares(shares: Mapping[str, tuple[dict, Mapping[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Ring sum of every statistic over the parties of :func:`read_shares` (the masks cancel)."""
    parties = sorted(shares)
    if not parties:
        raise InputError("sum_shares: no shares; expected the output of read_shares, found none. "
                         "Read the shares first")
    names = list(shares[parties[0]][1])
    out = {}
    for n in names:
        total = np.empty(shares[parties[0]][1][n].shape, dtype=np.uint64)
        for i, p in enumerate(parties):
            value = shares[p][1][n]
            pieces = value.parts if isinstance(value, RingParts) else [(None, None, value)]
            for a, b, arr in pieces:
                _add_rows(total, a, b, arr, first=i == 0)
        out[n] = total
    return out


def read_share_file(uri: str | os.PathLike, manifest: Manifest, party: str, header: dict, name: str) -> bytes:
    """A public file of a verified share (``header`` from :func:`read_shares`), checked against the
    sha256 its signed header records."""
    loc = _Location(uri)
    path = f"{_share_dir(loc, manifest, party)}/{name}"
    want = (header.get("files") or {}).get(name)
    if not isinstance(want, str):
        raise ProtocolError(f"share of party {party!r}: no file {name!r} in its signed header; expected the file "
                            "to be part of the share. Ask the party to publish in a new round")
    data = loc.read(path, what=f"file {name!r}", exc_type=ProtocolError)
    if hashlib.sha256(data).hexdigest() != want:
        raise ProtocolError(f"{loc.show(path)}: does not match the signed header of party {party!r}; the exchange "
                            "was altered. Nothing was used")
    return data


def read_statistic(uri: str | os.PathLike, manifest: Manifest, party: str, name: str) -> np.ndarray:
    """One whole statistic of ``party``'s share, its signed header verified and the file checked
    against the sha256 the header records (the round's guard counts are read so, without the rest)."""
    loc = _Location(uri)
    header = _verify_share(loc, manifest, party, manifest.public_keys(party), data=False)[0]
    sdir = _share_dir(loc, manifest, party)
    who = f"share of party {party!r} ({loc.show(sdir)})"
    meta = header["stats"].get(name)
    if meta is None:
        raise ProtocolError(f"{who}: no statistic {name!r} in its signed header; expected every survivor's share "
                            "to carry it. The party ran an older dash-spark: start a new round")
    pieces = _stat_pieces(sdir, name, meta, who=who, party=party)
    if len(pieces) != 1 or pieces[0][0] is not None:
        raise ProtocolError(f"{who}: statistic {name!r} is in parts; expected one file")
    _, _, path, sha, shape, what = pieces[0]
    return _read_ring(loc, path, sha, shape, who=who, what=what, party=party)


def complete_shares(uri: str | os.PathLike, manifest: Manifest) -> list[str]:
    """The parties whose share is complete (signed) and verifies."""
    loc = _Location(uri)
    out = []
    for p in manifest.party_names:
        if loc.exists(_share_dir(loc, manifest, p) + "/signature.json"):
            _verify_share(loc, manifest, p, manifest.public_keys(p), data=False)  # the data: at combine
            out.append(p)
    return out


__all__ = ["DuplicateShareError", "Location", "Manifest", "RingParts", "ShareSum", "StagedStat", "add_shares",
           "check_staged", "canonical_json",
           "check_parts", "part_file", "write_part", "complete_shares", "default_threshold", "locate_manifest",
           "manifest_location",
           "mask_stats", "new_round_id", "parse_json", "publish_share", "read_manifest", "read_share_file",
           "read_statistic",
           "read_shares", "sum_shares", "write_manifest"]
