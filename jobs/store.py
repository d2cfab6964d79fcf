"""spark-submit entry point for stored statistics: ``spark-submit jobs/store.py compress|refresh|select ARGS``.

For scheduled cohort refreshes on a cluster, e.g.
``spark-submit jobs/store.py refresh --store /shared/store --add-batch wave7 --bfile ... --out ...``.
The same code path as ``dash-spark compress|refresh|select``; the session is the one spark-submit
prepared.
"""

import sys

from dash_spark.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("compress", "refresh", "select"):
        print("usage: spark-submit jobs/store.py compress|refresh|select ARGS (see dash-spark <command> --help)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args))
