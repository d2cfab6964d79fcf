"""Extra per-phenotype outputs of a scan, written on the driver from the finished results Parquet.

- ``--gwas-ssf``: ``<phenotype>.ssf.tsv.gz`` and ``<phenotype>.ssf.tsv.gz-meta.yaml`` in the GWAS
  Catalog's summary-statistics format (GWAS-SSF v1.0, https://github.com/EBISPOT/gwas-summary-statistics-standard).
  The data file has the 8 mandatory columns in the standard's order, then ``variant_id rsid n``::

      chromosome base_pair_location effect_allele other_allele beta standard_error
      effect_allele_frequency p_value variant_id rsid n

  ``effect_allele`` is A1 (BETA's allele, as in ``.glm.linear``), ``other_allele`` the other .bim
  allele; ``chromosome`` is 1-22, X=23, Y=24, MT=25 (PLINK's codes 23-26 read as X, Y, XY -> X, MT);
  ``variant_id`` is ``<chromosome>_<position>_<REF>_<ALT>`` (.bim columns 6 and 5); ``rsid`` is the
  variant ID when it has the form ``rs<digits>``, else ``#NA``; ``n`` is OBS_CT. Rows are sorted by
  chromosome and position (ties in .bim order). The standard's mandatory fields must hold a
  value in every row, so variants that were not tested (an ERRCODE other than ``.``) are left
  out, and so are variants the standard cannot represent (another contig, alleles other than
  ``[ACGT]+``); each kind left out is counted in a warning. When some p-value is below float64's
  range, column 8 is ``neg_log_10_p_value`` (exact) instead of ``p_value``, for the whole file.
  The metadata file gives the genome assembly (``--genome-assembly``, required: a wrong one
  would silently misplace every variant), the 1-based coordinates, the sample size, ``is_sorted``,
  the analysis software and version, and the adjusted covariates.
- ``--report-covariates`` (plink2's covariate rows, without ``hide-covar``): each phenotype's null
  model ``y ~ C`` (intercept and covariates, no variant) as ``<phenotype>.covariates.tsv``, columns
  ``covariate beta se t_stat p obs_ct``, from the same moments ``n, C'C, C'1, C'y, y'y`` the scan
  uses (:func:`dash_spark.stats.sufficient.moments_regression`).

The writers stream one phenotype at a time (memory: that phenotype's rows).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

log = logging.getLogger("dash_spark")

NA = "#NA"
MANDATORY = ("chromosome", "base_pair_location", "effect_allele", "other_allele", "beta", "standard_error",
             "effect_allele_frequency", "p_value")
ENCOURAGED = ("variant_id", "rsid", "n")
#: genome assembly names (GRCh/NCBI/UCSC) as the GWAS-SSF standard asks for
ASSEMBLIES = ("GRCh38", "GRCh37", "NCBI36", "NCBI35", "NCBI34", "hg38", "hg19", "hg18", "hg17", "hg16")
COVARIATE_HEADER = "covariate\tbeta\tse\tt_stat\tp\tobs_ct"
_ROWS_PER_WRITE = 500_000
_CHROM_CODES = {**{str(i): i for i in range(1, 23)}, "X": 23, "23": 23, "XY": 23, "25": 23, "PAR1": 23,
                "PAR2": 23, "Y": 24, "24": 24, "MT": 25, "M": 25, "26": 25}
_ALLELE = re.compile(r"[ACGT]+")
_RSID = re.compile(r"rs[0-9]+")


def check_ssf_options(gwas_ssf: bool, genome_assembly: str | None, out: str, *, features: bool = False,
                      report_covariates: bool = False) -> None:
    """Raise :class:`ConfigError` for unusable ``--gwas-ssf`` / ``--genome-assembly`` /
    ``--report-covariates`` options (both outputs are written on the driver into a local --out)."""
    remote = "://" in out and not out.startswith("file://")
    if report_covariates and remote:
        raise ConfigError(f"--report-covariates: written on the driver into a local or shared directory; "
                          f"expected a local --out, found {out}. Write to a shared path and copy the files")
    if not (gwas_ssf or genome_assembly):
        return
    if gwas_ssf and features:
        raise ConfigError("--gwas-ssf: GWAS-SSF rows need a chromosome, a position and two alleles; expected "
                          "genotypes (--bfile), found --features, which have no alleles. Drop --gwas-ssf")
    if genome_assembly and not gwas_ssf:
        raise ConfigError(f"--genome-assembly {genome_assembly}: only used by --gwas-ssf; expected --gwas-ssf "
                          "with it, found none. Add --gwas-ssf or drop --genome-assembly")
    if not genome_assembly:
        raise ConfigError("--gwas-ssf: the GWAS-SSF metadata must name the genome assembly of the .bim "
                          "positions; expected --genome-assembly NAME (e.g. GRCh38, GRCh37), found none. Add it")
    if genome_assembly not in ASSEMBLIES:
        raise ConfigError(f"--genome-assembly: expected one of {', '.join(ASSEMBLIES)} (GWAS-SSF's GRCh/NCBI/UCSC "
                          f"names), found {genome_assembly!r}. Name the assembly of the .bim positions")
    if remote:
        raise ConfigError(f"--gwas-ssf: written on the driver into a local or shared directory; expected a "
                          f"local --out, found {out}. Write to a shared path and copy the files")


def ssf_chromosomes(chrom: np.ndarray) -> np.ndarray:
    """GWAS-SSF chromosome numbers (1-25) of .bim chromosome names; 0 where the standard has none."""
    names, inverse = np.unique(np.asarray(chrom, dtype=object).astype(str), return_inverse=True)
    codes = np.array([_CHROM_CODES.get(re.sub(r"^chr", "", n, flags=re.IGNORECASE).upper(), 0) for n in names],
                     dtype=np.int64)
    return codes[inverse.reshape(-1)] if len(names) else np.zeros(0, dtype=np.int64)


def _software() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dash-spark {version('dash-spark')}"
    except PackageNotFoundError:  # pragma: no cover - a source checkout that was not installed
        return "dash-spark"


@dataclass(frozen=True)
class ExtraOutputs:
    """What the extra writers need of a scan's model: the options, each phenotype's sample size,
    the covariates (``(intercept)`` included when present) and the null models when asked for."""

    gwas_ssf: bool
    genome_assembly: str | None
    covariates: tuple[str, ...]
    sample_sizes: dict
    null_models: dict | None = field(default=None)
    #: ``--a1freq-lower-limit`` when set: the results' A1 frequencies are already floored at it
    a1freq_floor: float | None = None

    @classmethod
    def build(cls, cfg, C: np.ndarray, Y: np.ndarray, masks, phenotypes, covariates) -> "ExtraOutputs":
        """From the driver's covariates ``C`` [shape: (n, k)], raw phenotypes ``Y`` [shape: (n, p)]
        and each phenotype's sample mask."""
        null = None
        if cfg.report_covariates:
            from ..stats.sufficient import Moments, moments_regression

            null = {}
            for t, name in enumerate(phenotypes):
                mo = Moments.of(C[masks[t]], Y[masks[t], t])
                null[name] = moments_regression(mo, list(covariates), where=f"phenotype {name} ({cfg.pheno})") \
                    if C.shape[1] else None
        return cls(gwas_ssf=cfg.gwas_ssf, genome_assembly=cfg.genome_assembly, covariates=tuple(covariates),
                   sample_sizes={name: int(masks[t].sum()) for t, name in enumerate(phenotypes)}, null_models=null,
                   a1freq_floor=getattr(cfg, "a1freq_lower_limit", None) or None)


def write_extra_outputs(stage: str, results_path: str, extra: ExtraOutputs, phenotypes, file_name) -> dict:
    """Write the requested extra files of every phenotype under ``stage`` from the results Parquet
    ``results_path``; ``file_name(phenotype)`` gives the file-name stem. Returns ``{path: phenotype}``."""
    written = {}
    for name in phenotypes:
        stem = os.path.join(stage, file_name(name))
        if extra.null_models is not None:
            path = f"{stem}.covariates.tsv"
            write_covariates(path, extra.null_models.get(name))
            written[path] = name
        if extra.gwas_ssf:
            path = f"{stem}.ssf.tsv.gz"
            write_ssf(path, results_path, name, extra)
            written[path] = name
            written[f"{path}-meta.yaml"] = name
    return written


def write_covariates(path: str, table) -> None:
    """``covariate beta se t_stat p obs_ct`` rows of a null model (header only without covariates)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(COVARIATE_HEADER + "\n")
        for row in ([] if table is None else table.to_pylist()):
            vals = [_num(row[c]) for c in ("beta", "se", "t_stat", "p")]
            fh.write("\t".join([row["covariate"], *vals, str(row["obs_ct"])]) + "\n")


def _num(x) -> str:
    return "NA" if x is None or (isinstance(x, float) and np.isnan(x)) else repr(float(x))


def _ssf_rows(results_path: str, phenotype: str):
    """The phenotype's tested, representable rows sorted by chromosome and position, as arrays."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cols = ["variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "a1_freq", "obs_ct", "beta", "se",
            "p", "neg_log10_p", "errcode"]
    tbl = pq.read_table(results_path, columns=cols, filters=[("phenotype", "=", phenotype)])
    n_all = tbl.num_rows
    tested = pc.fill_null(pc.equal(tbl["errcode"], "."), False)
    tbl = tbl.filter(tested)
    n_untested = n_all - tbl.num_rows
    code = ssf_chromosomes(tbl["chrom"].to_numpy(zero_copy_only=False))
    alt_raw = tbl["alt"].to_numpy(zero_copy_only=False).astype(str)
    a1_is_alt = tbl["a1"].to_numpy(zero_copy_only=False).astype(str) == alt_raw
    ref = np.char.upper(tbl["ref"].to_numpy(zero_copy_only=False).astype(str))
    alt = np.char.upper(alt_raw)
    ok_allele = np.array([bool(_ALLELE.fullmatch(r)) and bool(_ALLELE.fullmatch(a)) for r, a in zip(ref, alt)],
                         dtype=bool)
    keep = (code > 0) & ok_allele
    skipped = {"not tested (ERRCODE other than '.')": n_untested,
               "on a contig GWAS-SSF has no number for (1-22, X, Y, MT)": int((code == 0).sum()),
               "with an allele other than [ACGT]+": int(((code > 0) & ~ok_allele).sum())}
    rows = {c: tbl[c].to_numpy(zero_copy_only=False) for c in cols
            if c not in ("ref", "alt", "a1", "errcode", "chrom")}
    rows.update(ref=ref, alt=alt, code=code, a1_is_alt=a1_is_alt)
    rows = {c: v[keep] for c, v in rows.items()}
    order = np.lexsort((rows["variant_index"], rows["pos"], rows["code"]))
    return {c: v[order] for c, v in rows.items()}, skipped


def _strings(values: np.ndarray):
    """Arrow strings of numbers as Arrow prints them (shortest round-trip), ``#NA`` for missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(values, from_pandas=True)
    return pc.fill_null(pc.cast(arr, pa.string()), NA)


def write_ssf(path: str, results_path: str, phenotype: str, extra: ExtraOutputs) -> None:
    """``<phenotype>.ssf.tsv.gz`` and its ``-meta.yaml`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows, skipped = _ssf_rows(results_path, phenotype)
    for why, count in skipped.items():
        if count:
            log.warning("phenotype %s: %d variant(s) %s left out of %s (GWAS-SSF needs a value in every "
                        "mandatory column); the .glm.linear file has them", phenotype, count, why,
                        os.path.basename(path))
    p = rows["p"]
    nlp = rows["neg_log10_p"]
    use_log = bool(np.any((p == 0) & np.isfinite(nlp)))  # some p below float64's range: -log10 p, exact
    a1 = np.where(rows["a1_is_alt"], rows["alt"], rows["ref"])  # upper-case, as GWAS-SSF writes bases
    other = np.where(rows["a1_is_alt"], rows["ref"], rows["alt"])
    m = len(a1)
    header = list(MANDATORY[:-1]) + ["neg_log_10_p_value" if use_log else "p_value"] + list(ENCOURAGED)
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(("\t".join(header) + "\n").encode())
        for a in range(0, m, _ROWS_PER_WRITE):
            s = slice(a, min(m, a + _ROWS_PER_WRITE))
            code = pa.array(rows["code"][s]).cast(pa.string())
            pos = pa.array(rows["pos"][s]).cast(pa.string())
            ids = rows["id"][s].astype(str)
            rsid = pa.array(np.where([bool(_RSID.fullmatch(i)) for i in ids], ids, NA).astype(object),
                            type=pa.string())
            ref, alt = pa.array(rows["ref"][s].astype(object)), pa.array(rows["alt"][s].astype(object))
            sep = pa.scalar("_")
            vid = pc.binary_join_element_wise(code, pos, ref, alt, sep)
            cols = [code, pos, pa.array(a1[s].astype(object)), pa.array(other[s].astype(object)),
                    _strings(rows["beta"][s]), _strings(rows["se"][s]), _strings(rows["a1_freq"][s]),
                    _strings((nlp if use_log else p)[s]), vid, rsid, pa.array(rows["obs_ct"][s]).cast(pa.string())]
            lines = pc.binary_join_element_wise(*cols, "\t")
            if len(lines):
                fh.write(("\n".join(lines.to_pylist()) + "\n").encode())
    write_ssf_meta(path, phenotype, extra)
    log.info("phenotype %s: %d variants in %s (GWAS-SSF, %s)", phenotype, m, os.path.basename(path),
             extra.genome_assembly)


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_ssf_meta(path: str, phenotype: str, extra: ExtraOutputs) -> None:
    """The GWAS-SSF metadata YAML of the data file ``path``, in the field names and order of the
    GWAS Catalog's metadata model (gwas-sumstats-tools' ``SumStatsMetadata``); strings are written
    as JSON strings (valid YAML). Ancestry and genotyping technology are not known here: left out."""
    covariates = [c for c in extra.covariates if c != "(intercept)"]
    fields = [
        ("date_metadata_last_modified", datetime.date.today()),
        ("trait_description", [phenotype]),
        ("genome_assembly", extra.genome_assembly),
        ("coordinate_system", "1-based"),
        ("samples", [{"sample_size": extra.sample_sizes[phenotype], "case_control_study": False}]),
        ("data_file_name", os.path.basename(path)),
        ("file_type", "GWAS-SSF v1.0"),
        ("data_file_md5sum", _md5(path)),
        ("analysis_software", f"{_software()} (linear regression, plink2 --glm semantics)"),
        ("adjusted_covariates", covariates),
        *([("minor_allele_freq_lower_limit", extra.a1freq_floor)] if extra.a1freq_floor else []),
        ("is_harmonised", False),
        ("is_sorted", True),
    ]
    lines = []
    for key, value in fields:
        if isinstance(value, list):
            lines.append(f"{key}:" + ("" if value else " []"))
            for v in value:
                if isinstance(v, dict):
                    items = [f"{k}: {_yaml_scalar(x)}" for k, x in v.items()]
                    lines += [f"- {items[0]}"] + [f"  {it}" for it in items[1:]]
                else:
                    lines.append(f"- {_yaml_scalar(v)}")
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    with open(f"{path}-meta.yaml", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, datetime.date)):
        return str(value)  # a date as YYYY-MM-DD: a YAML date
    return json.dumps(str(value))
