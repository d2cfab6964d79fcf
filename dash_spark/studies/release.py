"""A store's release guard: results that differ from an earlier release by a few samples reveal them.

Two releases whose sample sets differ by one sample differ by exactly that sample's statistics
(for a withdrawn sample: its genotype times its phenotype at every variant). So a store remembers
what it released (the IIDs it held), and a new release is refused when

- its sample set differs from an earlier one by fewer than ``min_delta`` samples (but by at least
  one), unless the very same set was released before (the symmetric difference of the IIDs);
- a phenotype has fewer than ``min_n`` samples.

A multi-party study's guard runs in each party instead, before it reveals anything
(:mod:`dash_spark.multiparty.guard`).

Default ``min_delta`` = 20, All of Us' small-cell rule. ``override=True`` releases anyway, with a
warning in the log; the override is recorded with the release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone

from ..errors import ReleaseError

log = logging.getLogger("dash_spark")

DEFAULT_MIN_DELTA = 20
DEFAULT_MIN_N = 20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load(path: str) -> list[dict]:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except FileNotFoundError:
        return []
    except ValueError:
        raise ReleaseError(f"{path}: the release log is damaged; it protects the samples of earlier releases. "
                           "Restore it from a backup") from None
    if not isinstance(data, list):
        raise ReleaseError(f"{path}: the release log is damaged; expected a list of releases")
    return data


def _save(path: str, entries: list[dict]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(entries, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def check_min_n(counts: dict[str, int], *, min_n: int, override: bool, where: str) -> None:
    small = {p: n for p, n in counts.items() if n < min_n}
    if small and not override:
        shown = ", ".join(f"{p} ({n})" for p, n in sorted(small.items()))
        raise ReleaseError(f"{where}: phenotype(s) {shown} have fewer than {min_n} samples; results of so few "
                           "samples are not released. Add samples, lower --min-n deliberately, or pass "
                           "--allow-small-release (logged)")
    if small:
        log.warning("release guard overridden: %d phenotype(s) with fewer than %d samples released", len(small), min_n)


def check_sample_release(path: str, ids, *, min_delta: int, override: bool, where: str) -> list[dict]:
    """Refuse a release of sample set ``ids`` (IIDs) that differs from an earlier release in the log
    ``path`` by fewer than ``min_delta`` samples (and at least one). Returns the log."""
    entries = _load(path)
    now = set(ids)
    if any(set(e.get("samples", [])) == now for e in entries):
        return entries  # these very samples were released before: nothing new can be differenced
    for e in entries:
        then = set(e.get("samples", []))
        diff = len(now ^ then)
        if 0 < diff < min_delta:
            if override:
                log.warning("release guard overridden: this release differs from the one of %s by %d sample(s)",
                            e.get("time"), diff)
                continue
            raise ReleaseError(f"{where}: these results would differ from the release of {e.get('time')} "
                               f"({e.get('out')}) by {diff} sample(s), fewer than {min_delta}: the difference of "
                               "the two would reveal those samples' data. Wait until more samples changed, or pass "
                               "--allow-small-release (logged). Nothing was written")
    return entries


def record_sample_release(path: str, entries: list[dict], ids, *, out: str, command: str, overridden: bool) -> None:
    ids = sorted(set(ids))
    entries = entries + [{"time": _now(), "out": out, "command": command, "n_samples": len(ids),
                          "samples_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
                          "samples": ids, "overridden": bool(overridden)}]
    _save(path, entries)
