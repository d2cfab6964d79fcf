"""One exception hierarchy for everything dash-spark reports to a user.

Messages follow one shape: ``<where>: <what is wrong>; expected <x>, found <y>. <how to fix>``.
The CLI prints the message on one line and exits with status 2.
"""

from __future__ import annotations

import re


class DashError(Exception):
    """Base class of every error dash-spark raises on purpose: its message is one line naming the
    file, line, sample or option at fault and what to do (the command line prints it and exits 2).

    Examples
    --------
    >>> import dash_spark as ds
    >>> try:
    ...     ds.open_bfile("no/such/cohort")
    ... except ds.DashError as exc:
    ...     print(type(exc).__name__, str(exc).split(":")[0])
    InputError no/such/cohort.bed
    """


class InputError(DashError, ValueError):
    """An input file or table is malformed or inconsistent with the others."""


class ConfigError(DashError, ValueError):
    """A command-line option or job-config key is missing, unknown or out of range."""


class ModelError(DashError, ValueError):
    """The regression model cannot be fitted as specified (collinear covariates, too few samples)."""


class OutputError(DashError):
    """The output location cannot be written (exists without --overwrite, not writable)."""


class StoreError(InputError):
    """A store that cannot be read as written: missing files, bad checksums, bad format."""


class ReleaseError(ConfigError):
    """A release that would reveal a few samples by differencing (refused by the release guard)."""


class ProtocolError(DashError):
    """A multi-party protocol violation: bad or missing signature, missing party, replayed share,
    or parties that disagree on what they computed."""


class RevealsMissing(ProtocolError):
    """A closed round whose survivors have not all revealed yet (combine can wait for them)."""


class ReleaseRefused(ProtocolError):
    """A release the party's guard refuses (nothing that unmasks the statistics was revealed)."""


class DuplicateShareError(ProtocolError, OutputError):
    """A party published a second share for the same round (a complete share is never overwritten)."""


class EncodingOverflow(DashError):
    """A statistic cannot be encoded: not finite, or too large for the ring with its headroom."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a ' Did you mean X?' hint for ``name`` among ``choices`` ('' when nothing is close)."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def not_utf8_error(path: str, what: str, *, data: bytes | None = None, exc: UnicodeDecodeError | None = None,
                   first_line: int = 1) -> InputError:
    """The error for a text file that is not UTF-8, naming its line and first bad byte.

    With ``data`` and ``exc`` (a failed ``data.decode("utf-8")``, ``data`` starting at line
    ``first_line`` of the file) the position comes from them; otherwise the file is read again
    (gzip-aware), line by line, up to its first line that is not UTF-8.
    """
    lineno, byte = first_line, None
    if data is not None and exc is not None:
        lineno = first_line + data.count(b"\n", 0, exc.start)
        byte = data[exc.start]
    else:
        try:
            import gzip

            with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as fh:
                for lineno, raw in enumerate(fh, 1):
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError as bad:
                        byte = raw[bad.start]
                        break
        except (OSError, EOFError):
            pass
    at = f"line {lineno}" + (f" (byte 0x{byte:02x})" if byte is not None else "")
    return InputError(
        f"{path}: not UTF-8 text at {at}; expected a UTF-8 {what}, found another encoding "
        "(e.g. Latin-1). Convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8, and pass the converted file"
    )


def utf8_lines(lines, path: str, what: str):
    """The lines of a text file opened as UTF-8; its first line that is not UTF-8 raises
    :func:`not_utf8_error` instead of a UnicodeDecodeError."""
    try:
        yield from lines
    except UnicodeDecodeError:
        raise not_utf8_error(path, what) from None


#: The tag a Spark task puts in front of one of our errors (``[dash-spark InputError] <message>``),
#: then, for tasks that raised one untagged, the class name as a Python traceback ends with it.
_TASK_ERROR_RES = (
    re.compile(r"\[dash-spark (\w+)\] (.+)"),
    re.compile(r"(?:dash_spark\.[\w.]+\.)?(InputError|ConfigError|ModelError|OutputError|StoreError): (.+)"),
)
_BASE_ERRORS = {"DashError": DashError, "InputError": InputError, "ConfigError": ConfigError,
                "ModelError": ModelError, "OutputError": OutputError}
#: every class of this module by name: what a task's tagged error becomes on the driver
_ALL_ERRORS = {c.__name__: c for c in (DashError, InputError, ConfigError, ModelError, OutputError, StoreError,
                                       ReleaseError, ProtocolError, RevealsMissing, ReleaseRefused,
                                       DuplicateShareError, EncodingOverflow)}


def tag_task_error(exc: DashError) -> RuntimeError:
    """Executor side: a plain error whose message carries ``exc``'s class name and message, so the
    driver can raise the same kind of error (:func:`translate_task_error`) from Spark's report."""
    return RuntimeError(f"[dash-spark {type(exc).__name__}] {exc}")


def _error_class(name: str) -> type[DashError]:
    """The class called ``name``: one of this module's, or a subclass of DashError defined elsewhere
    (e.g. ``StoreError``); InputError when the name is unknown on the driver."""
    if name in _ALL_ERRORS:
        return _ALL_ERRORS[name]
    todo = list(DashError.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo += cls.__subclasses__()
    return InputError


def translate_task_error(exc: BaseException):
    """Raise the error a Spark task reported in ``exc`` as our own one-line error, else ``exc`` itself.

    Looks for the tag of :func:`tag_task_error` in the text of ``exc`` (a Py4J or Python-worker
    error carries the worker's traceback); tasks that raised one of our errors untagged are found
    by the class name (``InputError: <message>``, ``dash_spark.errors.ModelError: ...``). A
    :class:`DashError` is re-raised as it is.
    """
    if isinstance(exc, DashError):
        raise exc
    lines = [line.strip() for line in str(exc).splitlines()]
    for pattern in _TASK_ERROR_RES:
        for line in reversed(lines):  # the last one: where a traceback ends
            m = pattern.search(line)
            if m:
                cls, message = _error_class(m.group(1)), m.group(2).strip()
                try:
                    err = cls(message)
                except TypeError:  # a subclass with its own constructor
                    err = next(base for base in cls.__mro__ if base in _BASE_ERRORS.values())(message)
                raise err from None
    raise exc
