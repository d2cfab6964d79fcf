"""Result DataFrames whose Spark actions raise our own errors.

A scan's result DataFrame is lazy: an error inside a Spark task (a genotype block that does not
decode, a file truncated after the driver checked it) surfaces when the user runs an action
(``collect``, ``toPandas``, ``write.parquet`` ...), as PySpark's ``PythonException`` around the
worker's traceback. :func:`adopt` gives such a DataFrame the actions of :class:`ResultFrame`: the
same error reaches the user as the :class:`~dash_spark.errors.DashError` subclass the command line
prints (one line: which file, what to do), and DataFrames derived from it (``filter``, ``select``,
``groupBy(...).agg``, ``write``) keep that behaviour. Frames built outside it (``spark.sql`` over
a temporary view, a join taken from another frame) can run their actions inside
:func:`task_errors`.
"""

from __future__ import annotations

import contextlib
import functools

from ..errors import translate_task_error


@functools.cache
def _frame_class():
    from pyspark.sql.classic.dataframe import DataFrame

    return DataFrame


@functools.cache
def _helper_classes() -> tuple[type, ...]:
    """What a DataFrame hands out whose methods run Spark jobs or return DataFrames (not its RDD:
    PySpark's own methods pass that on as it is)."""
    from pyspark.sql.classic.dataframe import DataFrameNaFunctions, DataFrameStatFunctions
    from pyspark.sql.group import GroupedData
    from pyspark.sql.readwriter import DataFrameWriter, DataFrameWriterV2

    return DataFrameWriter, DataFrameWriterV2, GroupedData, DataFrameNaFunctions, DataFrameStatFunctions


@contextlib.contextmanager
def task_errors():
    """Run Spark actions so that one of our errors raised in a task comes out as itself.

    Returns
    -------
    contextlib.AbstractContextManager
        Inside it, an error a Spark task raised as a :class:`~dash_spark.errors.DashError` is
        raised as that error (one line); any other error passes as it is.

    Examples
    --------
    >>> with task_errors():
    ...     n = spark.range(3).count()
    >>> n
    3
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - ours become DashError; any other is re-raised as it is
        translate_task_error(exc)
        raise


def _adopt_value(value):
    """``value`` with our error translation: a DataFrame becomes a :class:`ResultFrame`, a writer
    or grouping a proxy, an iterator one that translates while it is read."""
    if type(value) is _frame_class():
        return adopt(value)
    if isinstance(value, _helper_classes()):
        return _Translating(value)
    if type(value).__name__ == "generator":
        return _translating_iter(value)
    return value


def _translating(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with task_errors():
            out = method(*args, **kwargs)
        return _adopt_value(out)

    return call


def _translating_iter(it):
    with task_errors():
        yield from it


class _Translating:
    """A writer, grouping or na/stat helper of a :class:`ResultFrame`: its methods translate task errors, and
    what they return is adopted in turn."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if callable(value) and not name.startswith("_"):
            return _translating(value)
        return _adopt_value(value)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def __iter__(self):
        return _translating_iter(iter(self._inner))

    def __repr__(self) -> str:
        return repr(self._inner)


def adopt(df):
    """``df`` (a classic PySpark DataFrame) as a :class:`ResultFrame`, in place; returns it."""
    if not isinstance(df, ResultFrame):
        df.__class__ = _result_frame_class()
    return df


@functools.cache
def _result_frame_class() -> type:
    """:class:`ResultFrame`'s Spark-side class, made on first use (pyspark loads only then)."""
    base = _frame_class()

    class _ResultFrame(base, ResultFrame):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name):
            value = base.__getattribute__(self, name)
            if name.startswith("_"):
                return value
            if callable(value):
                return _translating(value)
            return _adopt_value(value)  # (write, na, stat: properties)

    _ResultFrame.__name__ = _ResultFrame.__qualname__ = "DataFrame"
    _ResultFrame.__module__ = base.__module__
    return _ResultFrame


class ResultFrame:
    """The marker of a DataFrame whose actions raise our errors (see :func:`adopt`)."""

    __slots__ = ()


__all__ = ["ResultFrame", "adopt", "task_errors"]
