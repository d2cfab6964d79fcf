"""spark-submit entry point for a scan: ``spark-submit jobs/scan.py --config conf/jobs/scan.example.toml``.

Parses the job config, builds the session spark-submit prepared, runs the one pipeline function and
stops. The same code path as ``dash-spark scan --config FILE``.
"""

import sys

from dash_spark.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["scan", *args]))
