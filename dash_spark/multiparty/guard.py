"""The party's release guard: what it released before, and the rules that keep two releases from
being differenced into its samples' (or one party's) statistics.

Two releases whose sample sets differ by a few samples differ by exactly those samples'
statistics (one withdrawn sample: its genotype times its phenotype at every variant), and two
releases whose survivors differ by one party differ by that party's statistics. The coordinator,
a combiner and whoever writes the exchange all gain from such pairs, so the guard runs in each
party, on a memory only the party keeps (:class:`ReleaseMemory`: ``<key>.releases.json`` and
``<key>.releases/``, 0600 files in a 0700 folder beside its key and ledger), and before the
party reveals anything that unmasks the statistics: only the pooled counts are revealed before
(:mod:`.rounds`). The memory is the party's, whatever the study name or exchange: a release is
compared with every earlier one of the same key.

A party refuses to reveal (:func:`release_problems`) when

- a phenotype has fewer than ``min_n`` pooled samples;
- its own samples differ from those of a release it took part in by 1 to ``min_delta - 1``
  (the symmetric difference of the sample IDs, kept as keyed hashes), or one phenotype's own
  count does where both releases hold some of its samples: the other parties know their own
  changes, so they could subtract them;
- the pooled count of all samples, or of a phenotype of the same name, differs from that of a
  release it took part in by 1 to ``min_delta - 1``, where both releases hold some of its samples
  (another party's small change, should that party not guard itself);
- the survivors differ from those of a release it took part in by exactly one party (by key
  fingerprint, whatever the parties are called): the difference of the two releases is that
  party's statistics, blurred only by the others' own changes, which they know.

The same release again (the same study and round) is not compared with itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from ..errors import InputError, ReleaseRefused

DEFAULT_MIN_DELTA = 20
DEFAULT_MIN_N = 20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_private_file(path: str, what: str) -> None:
    """Refuse a file that group or others may read or write (a key, ledger or memory of a party)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if os.name == "posix" and st.st_mode & 0o077:
        raise InputError(f"{path}: the {what} is accessible to group or others; expected mode 0600, found "
                         f"{stat.S_IMODE(st.st_mode):04o}. Run chmod 600 {path}")


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive ``flock`` on ``path`` (created 0600) for the ``with`` block: a party's processes
    that read, change and write its ledger or memory take turns."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_private(path: str, data: bytes) -> None:
    """Write ``path`` atomically with mode 0600 from the start."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
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


@dataclass(frozen=True)
class OwnSamples:
    """A party's own samples in a share: the IIDs analysed for at least one phenotype, and each
    phenotype's own count. Its counts travel in the share as the guard statistic
    (:attr:`vector`: all samples first, then each phenotype), masked like the rest but revealed
    first, pooled."""

    phenotypes: tuple[str, ...]
    counts: tuple[int, ...]
    iids: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.phenotypes) != len(self.counts):
            raise InputError(f"own samples: {len(self.phenotypes)} phenotypes but {len(self.counts)} counts")
        object.__setattr__(self, "iids", tuple(sorted(set(map(str, self.iids)))))

    def vector(self) -> np.ndarray:
        return np.array([len(self.iids)] + [int(c) for c in self.counts], dtype=np.float64)


def sample_hashes(salt: bytes, iids) -> np.ndarray:
    """Sorted unique 64-bit keyed hashes (HMAC-SHA256 with the memory's secret salt) of IIDs: the
    memory can compare sample sets without keeping the IDs in the clear."""
    out = np.fromiter((int.from_bytes(hmac.new(salt, str(i).encode("utf-8"), hashlib.sha256).digest()[:8], "little")
                       for i in iids), dtype=np.uint64)
    return np.unique(out)


@dataclass(frozen=True)
class Release:
    """What one release is, as the party sees it before revealing: the round, the survivors (name:
    key fingerprint), the pooled counts (all samples and per phenotype; ``None`` before they are
    known: only the rules on the party's own data apply) and its own."""

    study: str
    round_id: str
    exchange: str
    survivors: dict
    pooled_all: int | None
    pooled: dict | None
    own_all: int
    own: dict
    samples: np.ndarray

    def entry(self, release_id: str, samples_sha256: str, overridden: bool) -> dict:
        return {"id": release_id, "time": _now(), "study": self.study, "round_id": self.round_id,
                "exchange": self.exchange, "survivors": dict(self.survivors),
                "pooled_all": None if self.pooled_all is None else int(self.pooled_all),
                "pooled": None if self.pooled is None else {p: int(n) for p, n in self.pooled.items()},
                "own_all": int(self.own_all),
                "own": {p: int(n) for p, n in self.own.items()}, "samples_sha256": samples_sha256,
                "overridden": bool(overridden)}


def _label(e: dict) -> str:
    return f"study {e.get('study')!r} round {e.get('round_id')!r} ({e.get('time')}, {e.get('exchange')})"


def release_problems(earlier: list[tuple[dict, np.ndarray]], new: Release, *, min_delta: int,
                     min_n: int) -> list[str]:
    """Why ``new`` must not be released, given the ``earlier`` releases ``[(entry, sample hashes)]``
    of the same party (empty: it may be). See the module's rules."""
    out = []
    small = {p: n for p, n in (new.pooled or {}).items() if n < min_n}
    if small:
        out.append("phenotype(s) " + ", ".join(f"{p} ({n})" for p, n in sorted(small.items()))
                   + f" have fewer than {min_n} pooled samples (--min-n)")
    now_fps = set(new.survivors.values())
    for e, samples in earlier:
        if (e.get("study"), e.get("round_id")) == (new.study, new.round_id):
            continue  # this very release, revealed before
        label = _label(e)
        then_fps = set(e.get("survivors", {}).values())
        diff = now_fps ^ then_fps
        if len(diff) == 1:
            fp = next(iter(diff))
            names = {v: k for k, v in list(e.get("survivors", {}).items()) + list(new.survivors.items())}
            out.append(f"its survivors differ by exactly one party ({names.get(fp, fp[:16])}) from the release of "
                       f"{label}: the difference of the two would be that party's statistics")
        d_own = int(np.setxor1d(new.samples, samples, assume_unique=True).size)
        if 0 < d_own < min_delta:
            out.append(f"this party's own samples differ by {d_own} from those of the release of {label} "
                       f"(fewer than {min_delta}, --min-release-delta)")
        if np.intersect1d(new.samples, samples, assume_unique=True).size == 0:
            continue  # disjoint own samples: other cohorts, as far as this party is concerned
        for p, n in new.own.items():
            then = e.get("own", {}).get(p)
            if then is not None and 0 < abs(n - then) < min_delta:
                out.append(f"phenotype {p}: this party's own count {n} differs from {then} in the release of {label} "
                           f"by fewer than {min_delta}")
        if new.pooled is None:
            continue  # the pooled counts are not known yet
        pooled: list = [("all samples", new.pooled_all, e.get("pooled_all"))]
        pooled += [(f"phenotype {p}", n, e.get("pooled", {}).get(p)) for p, n in new.pooled.items()]
        for what, n, then in pooled:
            if then is not None and 0 < abs(int(n) - int(then)) < min_delta:
                out.append(f"{what}: {n} pooled samples against {then} in the release of {label}, {abs(n - then)} "
                           f"apart (fewer than {min_delta}, --min-release-delta)")
    return out


class ReleaseMemory:
    """What a party released: ``<key>.releases.json`` (a secret salt and one entry per release) and
    each release's sample hashes in ``<key>.releases/<id>.npy`` (0600 files, 0700 folder). Kept
    by the party only; the ledger records each release's id, so a memory that lost one (deleted,
    or restored from an old backup) is refused, not trusted to be complete."""

    def __init__(self, key_path: str):
        key_path = os.fspath(key_path)
        self.path = key_path + ".releases.json"
        self.dir = key_path + ".releases"

    def locked(self):
        """Hold the memory's lock (``<key>.releases.lock``) while a release is checked and recorded:
        of two rounds unmasked at once, the second is compared with the first."""
        return file_lock(self.path[: -len(".json")] + ".lock")

    def _load(self) -> dict | None:
        check_private_file(self.path, "release memory")
        try:
            with open(self.path, "rb") as fh:
                obj = json.loads(fh.read())
            assert isinstance(obj, dict) and isinstance(obj.get("releases"), list)
            bytes.fromhex(obj["salt"])
        except FileNotFoundError:
            return None
        except (ValueError, AssertionError, KeyError, TypeError):
            raise InputError(f"{self.path}: the release memory is damaged; it protects this party's samples "
                             "from differencing. Restore it from a backup") from None
        return obj

    def salt(self) -> bytes:
        """The memory's secret salt (the memory is created on first use)."""
        with self.locked():
            obj = self._load()
            if obj is None:
                obj = {"salt": secrets.token_hex(32), "releases": []}
                write_private(self.path, json.dumps(obj, indent=1).encode())
        return bytes.fromhex(obj["salt"])

    def check_complete(self, released_ids: list[str]) -> None:
        """Refuse a memory that lacks a release the ledger records (``released_ids``)."""
        obj = self._load()
        have = {e.get("id") for e in (obj or {"releases": []})["releases"]}
        lost = [r for r in released_ids if r not in have]
        if lost:
            raise ReleaseRefused(f"{self.path}: the release memory lacks {len(lost)} release(s) that the ledger "
                                 f"records (e.g. {lost[0]}); it was deleted or restored from an older backup, so "
                                 "earlier releases cannot be compared. Restore it; nothing was revealed")

    def earlier(self) -> list[tuple[dict, np.ndarray]]:
        obj = self._load() or {"releases": []}
        out = []
        for e in obj["releases"]:
            path = os.path.join(self.dir, f"{e.get('id')}.npy")
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                raise ReleaseRefused(f"{path}: the samples of release {_label(e)} are missing from the release "
                                     "memory; restore them. Nothing was revealed") from None
            if hashlib.sha256(data).hexdigest() != e.get("samples_sha256"):
                raise ReleaseRefused(f"{path}: the samples of release {_label(e)} do not match the memory's record; "
                                     "restore the release memory from a backup. Nothing was revealed")
            out.append((e, np.frombuffer(data, dtype="<u8").astype(np.uint64)))
        return out

    def record(self, new: Release, *, overridden: bool) -> str:
        """Add ``new`` (its samples first, then the entry); returns the release's id."""
        obj = self._load()
        if obj is None:
            raise ReleaseRefused(f"{self.path}: the release memory is missing (its salt keyed this round's samples); "
                                 "restore it. Nothing was revealed")
        for e in obj["releases"]:
            if (e.get("study"), e.get("round_id")) == (new.study, new.round_id):
                return e["id"]
        rid = secrets.token_hex(8)
        data = np.ascontiguousarray(new.samples, dtype="<u8").tobytes()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        write_private(os.path.join(self.dir, f"{rid}.npy"), data)
        obj["releases"].append(new.entry(rid, hashlib.sha256(data).hexdigest(), overridden))
        write_private(self.path, json.dumps(obj, indent=1, sort_keys=True).encode())
        return rid


__all__ = ["DEFAULT_MIN_DELTA", "DEFAULT_MIN_N", "OwnSamples", "Release", "ReleaseMemory", "ReleaseRefused",
           "check_private_file", "file_lock", "release_problems", "sample_hashes", "write_private"]
