"""The one way every command writes an output directory: staged, marked, and never over an input.

- The outputs are written into a fresh sibling ``OUT.tmp-<id>`` and renamed to ``OUT`` only when
  everything succeeded, so a failed run leaves no half-written output.
- Every output directory gets a marker file (:data:`MARKER`). ``--overwrite`` replaces only a
  directory that holds it, i.e. one this tool wrote; anything else is refused, whatever it holds.
- ``OUT`` may not be, contain, or lie inside an input file or directory (the genotypes, the
  tables, a store, an exchange): ``--out <the folder with the inputs> --overwrite`` would
  otherwise delete them.
- A staging directory left by a killed run (its marker names a process of this host that no longer
  runs) is removed by the next run that writes the same ``OUT``; nothing else is ever removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import OutputError

log = logging.getLogger("dash_spark")

MARKER = ".dash-spark-output"
STAGE_MARKER = ".dash-spark-stage"


def _is_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (both absolute, symlinks resolved)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def is_marked(out: str) -> bool:
    """Whether ``out`` is a directory this tool wrote (it holds :data:`MARKER`)."""
    return os.path.isdir(out) and os.path.isfile(os.path.join(out, MARKER))


def check_out_dir(out: str, *, overwrite: bool, inputs=(), what: str = "--out") -> str:
    """Refuse an output location that would overwrite or delete something this run did not write.

    ``inputs``: paths (files or directories) the run reads or keeps (``None`` entries and URIs
    are skipped). Returns the absolute output path.
    """
    if "://" in out and not out.startswith("file://"):
        raise OutputError(f"{what} {out}: this command writes to a local or shared directory; "
                          "give a path (or file://)")
    out = _real(out.removeprefix("file://"))
    for p in inputs:
        if not p or ("://" in str(p) and not str(p).startswith("file://")):
            continue
        inp = _real(str(p).removeprefix("file://"))
        if _is_within(inp, out):
            raise OutputError(f"{what} {out}: holds an input of this run ({inp}); an output directory may not "
                              "be or contain an input, since --overwrite replaces it whole. Choose another --out")
        if _is_within(out, inp) and os.path.isdir(inp):
            raise OutputError(f"{what} {out}: lies inside an input directory of this run ({inp}); choose an "
                              "--out outside it")
    parent = os.path.dirname(out)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        raise OutputError(f"{what} {out}: {probe} is a file, not a directory; choose an --out whose parent "
                          "is a directory")
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise OutputError(f"{what} {out}: exists and is not a directory; choose another --out")
        if not overwrite:
            raise OutputError(f"{out}: output directory exists; pass --overwrite to replace it or choose another --out")
        if not is_marked(out):
            raise OutputError(f"{what} {out}: exists and was not written by dash-spark (no {MARKER} in it); "
                              "--overwrite replaces only dash-spark output directories. Remove it yourself or "
                              "choose another --out")
    if probe and not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {out}: cannot create it; {probe} is not writable. Choose another --out")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def clean_stale_stages(out: str) -> int:
    """Remove staging directories of ``out`` whose run died on this host; returns how many."""
    parent, base = os.path.split(out)
    removed = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    host = socket.gethostname()
    for name in names:
        if not name.startswith(base + ".tmp-"):
            continue
        stage = os.path.join(parent, name)
        try:
            with open(os.path.join(stage, STAGE_MARKER)) as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            continue  # not ours (or not readable): never touched
        if info.get("host") == host and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
            shutil.rmtree(stage, ignore_errors=True)
            removed += 1
            log.warning("removed %s, the staging directory of a run that died (pid %d)", stage, info["pid"])
    return removed


def write_marker(folder: str, command: str = "") -> None:
    """The marker that says dash-spark wrote ``folder`` (and may replace it with --overwrite)."""
    with open(os.path.join(folder, MARKER), "w") as fh:
        json.dump({"tool": "dash-spark", "command": command,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}, fh)
        fh.write("\n")


@dataclass(frozen=True)
class Stage:
    """A staging directory (``path``) that becomes ``out``."""

    path: str
    out: str

    def final(self, p: str) -> str:
        """Where a file written under the stage will be once the stage is in place."""
        return self.out + p[len(self.path):] if p.startswith(self.path) else p


@contextmanager
def staged_output(out: str, *, overwrite: bool = False, inputs=(), command: str = ""):
    """Stage a run's output directory (see the module docstring); yields a :class:`Stage`.

    On success the stage (with the marker) replaces ``out``: a previous dash-spark output there is
    moved aside first and removed only after the new one is in place. On failure the stage is
    removed and ``out`` is untouched.
    """
    out = check_out_dir(out, overwrite=overwrite, inputs=inputs)
    clean_stale_stages(out)
    stage = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(stage)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create the staging directory {stage} ({exc.strerror}); "
                          "choose another --out") from None
    try:
        with open(os.path.join(stage, STAGE_MARKER), "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, fh)
        yield Stage(stage, out)
        os.remove(os.path.join(stage, STAGE_MARKER))
        write_marker(stage, command)
        old = None
        if os.path.lexists(out):
            if not is_marked(out):  # it appeared while we ran: never replace what we did not write
                raise OutputError(f"--out {out}: a directory not written by dash-spark appeared there during the "
                                  "run; nothing was replaced. Choose another --out")
            old = f"{out}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(stage, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
