"""The executors' Python daemon with the kernels already loaded (``spark.python.daemon.module``).

Spark starts one daemon per executor and forks every Python worker from it. Stock pyspark's daemon
imports almost nothing, so each worker imports numpy, numba and scipy and loads the kernels'
compiled code itself (~1.3 s of CPU each). This daemon loads them once, before it forks: the
workers start with them in place and share those pages (a worker's peak resident memory in a
20,000 x 500,000 scan went from 414 to 265 MB). Start-up time is about the same on a machine with
a core per worker: the daemon's loading is serial, the workers' ran in parallel.

What is loaded is chosen to be safe to fork: modules whose only threads are BLAS pools, which
register their own fork handlers. pyarrow (it starts a thread when imported) is left to the
workers, as pyspark's own daemon leaves everything. A failure here only loses the head start: the
workers import what they need themselves.

It also imports pyspark from the installed package rather than from the ``pyspark.zip`` that
Spark puts first on the workers' path when that zip is the one shipped inside the same installed
package (pip's pyspark): modules in a zip have no compiled ``.pyc``, so importing pyspark from it
compiles its source, ~1 s in the daemon and ~0.3 s more in every worker. A zip of another Spark
install (a cluster's ``SPARK_HOME``) is left in place.
"""

from __future__ import annotations

import contextlib
import sys


def preload() -> None:
    """Import the scan's numeric modules and load the kernels' compiled code (from numba's cache)."""
    import numpy as np
    import scipy.linalg  # noqa: F401 - the workers' finalize and downdates
    import scipy.special  # noqa: F401

    from dash_spark.stats.kernel import compress_block, downdate_packed, missing_grams

    packed, W = np.zeros((1, 1), dtype=np.uint8), np.zeros((4, 3))
    compress_block(packed, W, 2)
    missing_grams(packed, W, 0, 1, 1, todo=np.ones(1, dtype=bool))
    downdate_packed(packed, W, np.zeros(1, dtype=np.int64), 1, True)


def prefer_installed_pyspark(path: list[str]) -> list[str]:
    """``path`` without the ``pyspark.zip`` entries that lie inside an installed pyspark package
    which ``path`` itself also reaches (``<dir>/pyspark/python/lib/pyspark.zip`` with ``<dir>`` on
    ``path``): the same files, but importable with their compiled ``.pyc``."""
    import os

    def norm(p: str) -> str:
        return os.path.normcase(os.path.realpath(p or "."))

    on_path = {norm(p) for p in path}
    keep = []
    for entry in path:
        if os.path.basename(entry) == "pyspark.zip":
            package = os.path.dirname(os.path.dirname(os.path.dirname(entry)))
            if (os.path.basename(package) == "pyspark" and os.path.isfile(os.path.join(package, "__init__.py"))
                    and norm(os.path.dirname(package)) in on_path):
                continue
        keep.append(entry)
    return keep


def main() -> None:
    sys.path[:] = prefer_installed_pyspark(sys.path)
    from pyspark import daemon

    try:
        # the daemon tells the executor its port on stdout: nothing else may be written there
        with contextlib.redirect_stdout(sys.stderr):
            preload()
    except Exception as exc:  # noqa: BLE001 - only a head start
        print(f"dash-spark daemon: preloading the kernels failed ({exc}); workers load them", file=sys.stderr)
    daemon.manager()


if __name__ == "__main__":
    main()
