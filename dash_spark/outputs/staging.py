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

from ..errors import OutputError

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


def object_store_uri(out: str) -> bool:
    """Whether an output location is object storage written through pyarrow (s3://, gs://)."""
    return "://" in str(out) and str(out).split("://", 1)[0] in ("s3", "gs", "gcs")


def is_marked(out: str) -> bool:
    """Whether ``out`` is a directory this tool wrote (it holds :data:`MARKER`)."""
    return os.path.isdir(out) and os.path.isfile(os.path.join(out, MARKER))


def check_out_dir(out: str, *, overwrite: bool, inputs=(), what: str = "--out") -> str:
    """Refuse an output location that would overwrite or delete something this run did not write.

    ``inputs``: paths (files or directories) the run reads or keeps (``None`` entries and URIs
    are skipped). Returns the absolute output path.
    """
    if object_store_uri(out):
        ObjectStage(out, overwrite=overwrite, inputs=inputs, what=what)  # its refusals, before any work
        return out.rstrip("/")
    if "://" in out and not out.startswith("file://"):
        raise OutputError(f"{what} {out}: this command writes to a local or shared directory, or to object "
                          "storage (s3://, gs://); give one of those (or file://)")
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
    if object_store_uri(out):
        with _staged_object_output(out, overwrite=overwrite, inputs=inputs, command=command) as st:
            yield st
        return
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


# ----------------------------------------------------------------------------------------------
# outputs in object storage (s3://, gs://): the same rules without folders or renames


@dataclass(frozen=True)
class ObjectOutput(Stage):
    """A command's output in object storage: ``path`` is a private local folder where the driver
    finishes the files, ``out`` the URI; ``objects`` (:class:`ObjectStage`) the stage prefix,
    where Spark tasks write their result parts themselves (``objects.path``)."""

    objects: "ObjectStage | None" = None


@contextmanager
def _staged_object_output(out: str, *, overwrite: bool, inputs, command: str):
    """:func:`staged_output` for an object-storage ``out``: the files are finished in a local
    temporary folder, put under the stage prefix (result parts the tasks wrote there stay), and the
    stage is committed (marker last); on failure the stage is deleted and ``out`` is untouched."""
    import tempfile

    objects = ObjectStage(out, overwrite=overwrite, inputs=inputs)
    local = tempfile.mkdtemp(prefix="dash-spark-out-")
    try:
        yield ObjectOutput(path=local, out=objects.out, objects=objects)
        objects.upload(local, command)
        objects.commit()
    except BaseException:
        objects.abort()
        raise
    finally:
        shutil.rmtree(local, ignore_errors=True)


class ObjectStage:
    """An output prefix in object storage written the way :func:`staged_output` writes a directory:
    everything goes under a sibling ``OUT.tmp-<id>/`` prefix; on success a previous dash-spark
    output at ``OUT`` (one holding :data:`MARKER`) is deleted, the stage's objects are copied to
    ``OUT`` with the marker copied last (an output without the marker is incomplete), and the stage
    is deleted. A prefix that holds objects but no marker is never replaced."""

    def __init__(self, out: str, *, overwrite: bool, inputs=(), what: str = "--out"):
        from ..io.files import filesystem

        self.out = out.rstrip("/")
        for p in inputs:
            p = str(p or "").rstrip("/")
            if p and (p == self.out or p.startswith(self.out + "/") or self.out.startswith(p + "/")):
                raise OutputError(f"{what} {self.out}: overlaps an input of this run ({p}); an output may not be, "
                                  "contain or lie inside an input, since --overwrite replaces it whole. Choose "
                                  "another --out")
        self.fs, self.out_path = filesystem(self.out)
        self.path = f"{self.out}.tmp-{uuid.uuid4().hex[:8]}"
        self.stage_path = filesystem(self.path)[1]
        if self._objects(self.out_path):
            if not overwrite:
                raise OutputError(f"{what} {self.out}: output exists; pass --overwrite to replace it or choose "
                                  "another --out")
            if not self._is_marked():
                raise OutputError(f"{what} {self.out}: exists and was not written by dash-spark (no {MARKER} in "
                                  "it); --overwrite replaces only dash-spark outputs")

    def _objects(self, prefix: str) -> list:
        from pyarrow import fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise OutputError(f"--out {self.out}: cannot list the output location ({exc}); check the URI and the "
                              "storage credentials in the environment") from None
        return [i for i in infos if i.type == pafs.FileType.File]

    def _is_marked(self) -> bool:
        from pyarrow import fs as pafs

        return self.fs.get_file_info(f"{self.out_path}/{MARKER}").type == pafs.FileType.File

    def download(self, local: str) -> None:
        """Copy the stage's objects (what the tasks wrote) into the local directory ``local``."""
        for info in self._objects(self.stage_path):
            rel = info.path[len(self.stage_path) + 1:]
            dest = os.path.join(local, *rel.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with self.fs.open_input_stream(info.path) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)

    def upload(self, local: str, command: str) -> None:
        """Put every file of ``local`` (the finished outputs) under the stage, replacing what the
        tasks wrote there, drop what ``local`` no longer has (their text chunks), then the marker."""
        kept = set()
        present = {i.path[len(self.stage_path) + 1:] for i in self._objects(self.stage_path)}
        for root, _dirs, names in os.walk(local):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), local).replace(os.sep, "/")
                kept.add(rel)
                if rel.startswith("results.parquet/part-") and rel in present:  # the tasks' own parts
                    continue
                with open(os.path.join(root, name), "rb") as src, \
                        self.fs.open_output_stream(f"{self.stage_path}/{rel}") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        for info in self._objects(self.stage_path):
            if info.path[len(self.stage_path) + 1:] not in kept:
                self.fs.delete_file(info.path)
        write_marker(local, command)
        with open(os.path.join(local, MARKER), "rb") as src, \
                self.fs.open_output_stream(f"{self.stage_path}/{MARKER}") as dst:
            dst.write(src.read())

    def commit(self) -> None:
        """Replace ``OUT`` by the stage (see the class docstring)."""
        if self._objects(self.out_path):
            if not self._is_marked():  # it appeared while we ran: never replace what we did not write
                raise OutputError(f"--out {self.out}: objects not written by dash-spark appeared there during the "
                                  "run; nothing was replaced. Choose another --out")
            self.fs.delete_dir_contents(self.out_path, missing_dir_ok=True)
        objects = self._objects(self.stage_path)
        for info in sorted(objects, key=lambda i: i.path.endswith("/" + MARKER)):  # the marker last
            self.fs.copy_file(info.path, f"{self.out_path}/{info.path[len(self.stage_path) + 1:]}")
        self.abort()

    def abort(self) -> None:
        """Delete the stage (and nothing else)."""
        try:
            self.fs.delete_dir(self.stage_path)
        except OSError:  # pragma: no cover - nothing was written, or the store is unreachable
            pass
