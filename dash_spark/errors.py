"""One exception hierarchy for everything dash-spark reports to a user.

Messages follow one shape: ``<where>: <what is wrong>; expected <x>, found <y>. <how to fix>``.
The CLI prints the message on one line and exits with status 2.
"""

from __future__ import annotations


class DashError(Exception):
    """Base class of every error dash-spark raises on purpose."""


class InputError(DashError, ValueError):
    """An input file or table is malformed or inconsistent with the others."""


class ConfigError(DashError, ValueError):
    """A command-line option or job-config key is missing, unknown or out of range."""


class ModelError(DashError, ValueError):
    """The regression model cannot be fitted as specified (collinear covariates, too few samples)."""


class OutputError(DashError):
    """The output location cannot be written (exists without --overwrite, not writable)."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a ' Did you mean X?' hint for ``name`` among ``choices`` ('' when nothing is close)."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
