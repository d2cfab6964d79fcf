"""Small helpers shared by tests (no fixtures, no test functions)."""

from __future__ import annotations

import hashlib
import os


def snapshot(folder) -> dict[str, str]:
    """sha256 of every file below ``folder`` (relative path -> digest): what "changed nothing" means."""
    out = {}
    for dp, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dp, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out
