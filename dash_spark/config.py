"""Job configs in TOML: one ``[scan]`` table whose keys are :class:`ScanConfig` fields.

Relative paths are resolved against the config file's directory; unknown keys are rejected with a
did-you-mean hint. A ``[spark]`` table (string values) is passed to the session builder, and an
optional top-level ``spark_properties = "file"`` names a spark-defaults style file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

from .errors import ConfigError, did_you_mean
from .pipeline import ScanConfig
from .spark.session import read_properties

PATH_KEYS = ("pred", "bfile", "features", "feature_samples", "pfile", "bgen", "sample", "pheno", "covar", "out", "keep",
             "remove", "extract", "exclude")


def _resolve(base: str, value: str) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def load_scan_config(path: str, **overrides) -> ScanConfig:
    """Read a TOML job config into a :class:`ScanConfig`; ``overrides`` win over file values."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base = os.path.dirname(os.path.abspath(path))
    known_top = {"scan", "spark", "spark_properties"}
    for key in doc:
        if key not in known_top:
            raise ConfigError(f"{path}: unknown table or key {key!r}; expected one of {sorted(known_top)}."
                              + did_you_mean(key, sorted(known_top)))
    scan = dict(doc.get("scan", {}))
    fields = {f.name for f in dataclasses.fields(ScanConfig)} - {"spark_conf"}
    for key in scan:
        if key not in fields:
            raise ConfigError(f"{path}: [scan] has unknown key {key!r}." + did_you_mean(key, sorted(fields)))
    for key in PATH_KEYS:
        if key in scan and isinstance(scan[key], str):
            scan[key] = _resolve(base, scan[key])
    if isinstance(scan.get("mach_r2_filter"), list):
        scan["mach_r2_filter"] = tuple(float(v) for v in scan["mach_r2_filter"])
    for key in ("pheno_name", "covar_name"):
        if isinstance(scan.get(key), str):
            scan[key] = tuple(x for x in scan[key].split(",") if x)
        elif key in scan:
            scan[key] = tuple(scan[key])
    conf: dict[str, str] = {}
    if "spark_properties" in doc:
        conf.update(read_properties(_resolve(base, doc["spark_properties"])))
    conf.update({k: str(v) for k, v in doc.get("spark", {}).items()})
    scan["spark_conf"] = conf
    scan.update({k: v for k, v in overrides.items() if v is not None})
    scan.setdefault("bfile", None)
    for key in ("pheno", "out"):
        if key not in scan:
            raise ConfigError(f"{path}: [scan] needs {key!r}")
    try:
        return ScanConfig(**scan)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
