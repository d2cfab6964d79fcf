"""Output-location helpers through Hadoop's FileSystem API (local paths, file://, hdfs://, s3a://).

The driver uses these to stage a run's outputs in a temporary sibling directory and rename it into
place at the end, so a failed run leaves no half-written output directory.
"""

from __future__ import annotations

import os
import uuid

from .sources import qualify


def delete_local_crc_files(folder: str) -> None:
    """Remove the ``.name.crc`` side files Hadoop's local filesystem leaves beside renamed files."""
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".crc"):
            os.remove(os.path.join(folder, name))



class HadoopFS:
    def __init__(self, spark, path: str):
        jvm = spark._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self._conf = spark._jsc.hadoopConfiguration()
        self.fs = self._Path(qualify(path)).getFileSystem(self._conf)

    def path(self, p: str):
        return self._Path(qualify(p))

    def exists(self, p: str) -> bool:
        return bool(self.fs.exists(self.path(p)))

    def delete(self, p: str) -> None:
        if self.exists(p):
            self.fs.delete(self.path(p), True)

    def mkdirs(self, p: str) -> None:
        self.fs.mkdirs(self.path(p))

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self.path(src), self.path(dst)):
            raise OSError(f"cannot rename {src} to {dst}")

    def list(self, p: str) -> list[str]:
        return [str(s.getPath().getName()) for s in self.fs.listStatus(self.path(p))]

    def delete_crc_files(self, p: str) -> None:
        """Remove the ``.name.crc`` side files Hadoop's local filesystem leaves beside renamed files.

        (Only local paths have them, and Hadoop's own listing hides them, so this uses ``os``.)
        """
        if "://" in p and not p.startswith("file://"):
            return
        delete_local_crc_files(p.removeprefix("file://"))

    def put(self, local: str, dst: str) -> None:
        """Copy a driver-local file to ``dst`` (moves it when both are local)."""
        if "://" not in dst or dst.startswith("file://"):
            os.replace(local, dst.removeprefix("file://"))
        else:
            self.fs.copyFromLocalFile(True, True, self._Path(local), self.path(dst))

    def staging_dir(self, out: str) -> str:
        """A fresh sibling of ``out`` to write into before the final rename."""
        out = qualify(out).rstrip("/")
        return f"{out}.tmp-{uuid.uuid4().hex[:8]}"
