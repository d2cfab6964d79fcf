"""Input files on a local or shared path, or in object storage (``s3://``, ``gs://``, ``hdfs://``).

Object storage goes through pyarrow's filesystems: credentials, region and endpoint come from the
environment as pyarrow reads them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible server; Google's and Hadoop's
own variables), so a URI works the same on the driver and on every executor. Nothing is copied
to local disk: a task reads its own byte ranges (in requests of at most :func:`read_chunk_bytes`).

pyarrow only (runs on the driver and on executors).
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

from ..errors import InputError, not_utf8_error

SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_FS: dict[str, object] = {}
_FS_LOCK = threading.Lock()


def is_uri(path) -> bool:
    """Whether ``path`` names object storage (``file://`` and plain paths are local)."""
    p = str(path)
    return "://" in p and not p.startswith("file://")


def local_path(path) -> str:
    """A ``file://`` URI as a plain path; anything else unchanged."""
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


def read_chunk_bytes() -> int:
    """Largest single read request against object storage (``DASH_SPARK_READ_CHUNK_BYTES``,
    default 16 MiB): a task's range is read in requests of at most this size."""
    try:
        return max(1, int(os.environ.get("DASH_SPARK_READ_CHUNK_BYTES", 16 << 20)))
    except ValueError:
        return 16 << 20


def filesystem(uri: str):
    """``(pyarrow FileSystem, path inside it)`` of an object-storage URI (one filesystem per
    scheme and bucket/host per process)."""
    from pyarrow import fs as pafs

    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES:
        raise OSError(f"unsupported URI scheme {parsed.scheme!r} (expected one of {', '.join(SCHEMES)})")
    key = f"{parsed.scheme}://{parsed.netloc}"
    with _FS_LOCK:
        if key not in _FS:
            _FS[key] = pafs.FileSystem.from_uri(uri)[0]
        fs = _FS[key]
    path = f"{parsed.netloc}{parsed.path}" if parsed.scheme in ("s3", "gs", "gcs") else parsed.path
    return fs, path


def exists(path) -> bool:
    if not is_uri(path):
        return os.path.exists(local_path(path))
    from pyarrow import fs as pafs

    fs, p = filesystem(str(path))
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def size(path) -> int:
    """Size in bytes (OSError when missing)."""
    return version(path)[0]


def version(path) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)`` of a file (the time is 0 where the storage
    reports none); OSError when missing."""
    if not is_uri(path):
        st = os.stat(local_path(path))
        return int(st.st_size), int(st.st_mtime_ns)
    from pyarrow import fs as pafs

    fs, p = filesystem(str(path))
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return int(info.size), int(info.mtime_ns or 0)


def cache_dir(kind: str) -> str:
    """The private folder of what we derive from inputs (``kind``: ``bgi``, ``pvar``, ``pgen``):
    ``DASH_SPARK_CACHE``, else ``$XDG_CACHE_HOME/dash-spark``, else ``~/.cache/dash-spark``. Never
    beside an input: no command writes into its inputs' folders."""
    root = os.environ.get("DASH_SPARK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dash-spark")
    return os.path.join(root, kind)


def cached_path(path, kind: str, suffix: str) -> str:
    """Where the cache keeps what is derived from this version of ``path`` (its location, size and
    modification time): a new version of the file gets a new entry."""
    import hashlib

    where = str(path) if is_uri(path) else os.path.abspath(local_path(path))
    size, mtime = version(path)
    key = hashlib.sha256(f"{where}\0{size}\0{mtime}".encode()).hexdigest()[:32]
    return os.path.join(cache_dir(kind), key + suffix)


def make_cache_dir(kind: str) -> str:
    """:func:`cache_dir`, created private (0700) if absent."""
    d = cache_dir(kind)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def open_input_stream(path):
    """A sequential reader (a pyarrow NativeFile) of a local file or an object."""
    import pyarrow as pa

    if not is_uri(path):
        return pa.OSFile(local_path(path), "rb")
    fs, p = filesystem(str(path))
    return fs.open_input_stream(p)


def read_bytes(path) -> bytes:
    """The whole file."""
    if not is_uri(path):
        with open(local_path(path), "rb") as fh:
            return fh.read()
    return read_range(path, 0, size(path))


def read_text(path, what: str, *, verb: str = "open", advice: str = "") -> str:
    """The whole file as UTF-8 text. An :class:`~dash_spark.errors.InputError` when it cannot be
    read (``{path}: cannot {verb} {what} ({reason}); {advice}``) or is not UTF-8 (naming the line)."""
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot {verb} {what} ({exc.strerror or exc})"
                         + (f"; {advice}" if advice else "")) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, what, data=data, exc=exc) from None


def read_range(path, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` (fewer at the end of the file); object storage is read in
    requests of at most :func:`read_chunk_bytes`."""
    if length <= 0:
        return b""
    if not is_uri(path):
        with open(local_path(path), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    fs, p = filesystem(str(path))
    chunk = read_chunk_bytes()
    parts = []
    try:
        with fs.open_input_file(p) as fh:
            end = min(offset + length, fh.size())
            pos = offset
            while pos < end:
                n = min(chunk, end - pos)
                data = fh.read_at(n, pos)
                if not data:
                    break
                parts.append(data)
                pos += len(data)
    except FileNotFoundError:
        raise
    except OSError as exc:  # also in a Spark task: one line, naming the object
        from ..errors import InputError

        raise InputError(f"{path}: cannot read bytes {offset:,}-{offset + length:,} ({exc}); check the URI and "
                         "that the storage settings (credentials, endpoint) reach the driver and every "
                         "executor") from None
    return b"".join(parts)


__all__ = ["SCHEMES", "cache_dir", "cached_path", "exists", "make_cache_dir", "open_input_stream", "filesystem", "is_uri", "local_path", "read_bytes", "read_chunk_bytes",
           "read_range", "size", "version"]
