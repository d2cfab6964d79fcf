"""The multi-party protocol's command-line steps, for tests: keys, pinned trust, a signed manifest,
join, compress, close, unmask, combine (see README: Multi-party studies)."""

from __future__ import annotations

import os
import subprocess
import sys

from dash_spark.cli import main


def run_subprocess(*args) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def run_inprocess(*args) -> tuple[int, str, str]:
    """The CLI in this process (the tests' Spark session is reused), its output captured."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-q", *map(str, args)])
    return code, out.getvalue().strip(), err.getvalue().strip()


class Study:
    """Keys for ``parties`` and a coordinator under ``tmp/keys``, all pinned in ``tmp/trust.txt``."""

    def __init__(self, tmp, parties, run=run_inprocess, name="t"):
        self.tmp, self.parties, self.run, self.name = tmp, list(parties), run, name
        self.keys = tmp / "keys"
        self.trust = str(tmp / "trust.txt")
        self.coord = str(self.keys / "coord.key")
        for p in self.parties + ["coord"]:
            self.add_party(p)

    def add_party(self, p: str) -> None:
        if not (self.keys / f"{p}.key").exists():
            self.ok("party", "keygen", "--out", self.keys / p)
        self.ok("party", "trust", "--trust", self.trust, "--add", f"{p}={self.keys / p}.pub")

    def ok(self, *args) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"{args[:2]}: {err[-3000:]}"
        return out

    def manifest(self, *extra, parties=None, exchange=None) -> str:
        parties = self.parties if parties is None else parties
        if len(parties) == 2 and "--threshold" not in extra:
            extra = (*extra, "--threshold", "2")
        return self.ok("party", "manifest", "--study", self.name, "--exchange", exchange or self.tmp / "exchange",
                       "--sign-key", self.coord, *extra,
                       *[x for p in parties for x in ("--party", f"{p}={self.keys / p}.pub")])

    def party(self, p: str, manifest: str) -> list:
        return ["--manifest", str(manifest), "--party", p, "--key", str(self.keys / f"{p}.key"), "--trust", self.trust]

    def join(self, manifest: str, parties=None) -> None:
        for p in self.parties if parties is None else parties:
            self.ok("party", "join", *self.party(p, manifest))

    def compress(self, manifest: str, p: str, *data) -> tuple[int, str, str]:
        return self.run("party", "compress", *self.party(p, manifest), *data)

    def finish(self, manifest: str, out, *combine_args, allow_dropouts=False) -> str:
        """Close the round (the coordinator), unmask (every survivor), combine; returns combine's output."""
        drop = ["--allow-dropouts"] if allow_dropouts else []
        guard, rest, args = [], [], list(map(str, combine_args))  # the release guard's options go to unmask
        while args:
            a = args.pop(0)
            if a == "--allow-small-release":
                guard.append(a)
            elif a in ("--min-n", "--min-release-delta"):
                guard += [a, args.pop(0)]
            else:
                rest.append(a)
        combine_args = rest
        closed = self.ok("combine", "--manifest", manifest, "--out", out, "--sign-key", self.coord, *drop,
                         *combine_args)
        assert "round closed" in closed, closed
        survivors = closed.split("survivors ", 1)[1].split(";", 1)[0].split(", ")
        self.unmask(manifest, survivors, *guard)
        return self.ok("combine", "--manifest", manifest, "--out", out, *combine_args)

    def unmask(self, manifest: str, survivors, *guard) -> dict:
        """Every survivor runs party unmask until done (confirm, counts, guard, seeds: one step a pass,
        as each waits for the others); returns each survivor's last output."""
        last: dict = {}
        for _ in range(4):
            todo = [p for p in survivors if last.get(p, "waiting").startswith("waiting")]
            if not todo:
                break
            for p in todo:
                last[p] = self.ok("party", "unmask", *self.party(p, manifest), *guard)
        assert not any(v.startswith("waiting") for v in last.values()), last
        return last
