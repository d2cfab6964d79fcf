"""The parties' and the combiner's steps: compress + encode + mask + publish, and combine.

A party never publishes anything but its masked, signed share (and the public variant list that
every party must share anyway); the combiner checks all shares, sums them in the ring (the masks
cancel only in the full sum), decodes, and finalizes with the scan's own code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..spark.fs import local_stage
from . import ProtocolError
from .exchange import Manifest, read_manifest
from .keys import fingerprint, load_private

log = logging.getLogger("dash_spark")

VARIANT_COLUMNS = ("chrom", "pos", "id", "ref", "alt")


def variant_table(bim) -> pa.Table:
    def text(values):
        return pa.array(values, type=pa.string())

    return pa.table({"chrom": text(bim.chrom), "pos": pa.array(bim.pos, type=pa.int64()), "id": text(bim.id),
                     "ref": text(bim.ref), "alt": text(bim.alt)})


def variant_hash(table: pa.Table) -> str:
    """sha256 over the variant list (chrom, pos, id, ref, alt in order): what parties must share."""
    h = hashlib.sha256()
    for name in VARIANT_COLUMNS:  # the bytes of "<value>\t" per value, then "\n", column by column
        values = table.column(name).cast(pa.string()).to_numpy(zero_copy_only=False)
        if len(values):
            h.update(("\t".join(values) + "\t").encode())
        h.update(b"\n")
    return h.hexdigest()


def _check_party(manifest: Manifest, party: str, keys) -> None:
    if party not in manifest.parties:
        raise ProtocolError(f"manifest: party {party!r} is not in the study; expected one of "
                            f"{', '.join(sorted(manifest.parties))}")
    if keys.public().manifest_entry() != dict(manifest.parties[party]):
        raise ProtocolError(f"{party}: this key file's public keys do not match the manifest's for {party!r}; "
                            "use the key pair whose .pub the coordinator registered")


def _agree(what: str, ours: list[str], declared, party: str) -> None:
    if declared is not None and list(declared) != list(ours):
        raise ProtocolError(f"{party}: {what} differ from the manifest; expected {list(declared)}, found {ours}. "
                            "Nothing was published")


def exchange_uri(manifest_path: str) -> str:
    """The exchange root of ``<uri>/<study>/<round>/manifest.json``."""
    import posixpath

    return posixpath.dirname(posixpath.dirname(posixpath.dirname(str(manifest_path).rstrip("/")))) or "."


def _variants(uri: str, manifest: Manifest, party: str):
    """The exchange location and path of a party's public variant list."""
    from .exchange import _Location

    loc = _Location(uri)
    return loc, loc.join(manifest.study, manifest.round_id, "variants", f"{party}.parquet")


def run_party_compress(manifest_path: str, party: str, key_path: str, *, pheno: str, covar: str | None,
                       bfile: str | None, features: str | None = None, feature_samples: str | None = None,
                       spark=None, master: str | None = None,
                       spark_conf: dict | None = None, task_memory_mb: int = 256) -> str:
    """Compute this party's statistics, encode, mask, sign and publish them; return the share path.

    Every check (the key matches the manifest, phenotypes/covariates/variants agree with what the
    manifest declares) runs before anything is published.
    """
    from .exchange import publish_stats
    from .study import global_stats, regression_party_stats

    t0 = time.time()
    manifest = read_manifest(manifest_path)
    uri = exchange_uri(manifest_path)
    keys = load_private(key_path)
    _check_party(manifest, party, keys)
    settings = manifest.settings
    kind = "scan" if (bfile or features) else "regression"
    if settings.get("kind") and settings["kind"] != kind:
        raise ConfigError(f"{manifest_path}: study {manifest.study!r} is a {settings['kind']} study; "
                          + ("pass --bfile PREFIX or --features" if settings["kind"] == "scan" else "drop --bfile/--features"))
    log.info("study %s, round %s: party %s (key %s), %s study", manifest.study, manifest.round_id, party,
             fingerprint(keys), kind)
    starter = None
    if kind == "scan" and spark is None:
        # the JVM starts (and warms its Python workers) while the driver reads the tables and builds the model
        from ..spark.session import SessionStarter

        starter = SessionStarter(master, spark_conf)
    if kind == "regression":
        stats, covs, phenos = regression_party_stats(pheno, covar, settings)
        extra = {"phenotypes": phenos, "covariates": covs, "kind": kind}
    else:
        from ..pipeline import ScanConfig, build_model, plan_scan
        from ..spark.compress import run_compress_job

        cfg = ScanConfig(bfile=bfile, features=features, feature_samples=feature_samples,
                         pheno=pheno, covar=covar, out=os.devnull,
                         pheno_name=tuple(settings["pheno_names"]) if settings.get("pheno_names") else None,
                         covar_name=tuple(settings["covar_names"]) if settings.get("covar_names") else None,
                         no_intercept=not settings.get("intercept", True),
                         missing_genotypes=settings.get("missing_genotypes", "drop"), plots=False,
                         task_memory_mb=task_memory_mb)
        model = build_model(cfg, party=True)
        phenos, covs = list(model.phenotypes), list(model.covariates)
        vt = variant_table(model.bim)
        vh = variant_hash(vt)
        if settings.get("variant_hash") and settings["variant_hash"] != vh:
            raise ProtocolError(f"{party}: the variant list of {bfile or features} differs from the manifest's "
                                f"(hash {vh[:12]} vs {settings['variant_hash'][:12]}); all parties must use the "
                                "same variants in the same order. Nothing was published")
        _agree("phenotypes", phenos, settings.get("pheno_names"), party)
        if starter is not None:
            spark = starter.get()
        m = model.bim.n_variants
        plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
        V = run_compress_job(spark, plan, model.W, ranges)
        stats = dict(global_stats(model))
        stats["variants"] = V
        extra = {"phenotypes": phenos, "covariates": covs, "kind": kind, "variant_hash": vh,
                 "n_variants": int(m), "missing_genotypes": cfg.missing_genotypes}
        loc, path = _variants(uri, manifest, party)
        loc.mkdir(path.rsplit("/", 1)[0])
        buf = io.BytesIO()
        pq.write_table(vt, buf)
        loc.write_atomic(path, buf.getvalue(), what=f"variant list of party {party!r}")
        log.info("party %s: %d variants x %d statistics compressed", party, V.shape[0], V.shape[1])
    share = publish_stats(uri, manifest, party, keys, stats, extra)
    log.info("party %s: share published in %.1f s: %s", party, time.time() - t0, share)
    return share


def run_combine(manifest_path: str, out: str, *, overwrite: bool = False, plots: bool = True, spark=None,
                master: str | None = None, spark_conf: dict | None = None) -> dict:
    """Verify every share, add them, decode and finalize; write the study's outputs under ``out``.

    No Spark: the pooled statistics, hence the results, are on the driver already (variants x
    statistics, whatever the number of samples), and the outputs go to the local directory ``out``
    in the same files and format as ``dash-spark scan`` writes. ``spark``, ``master`` and
    ``spark_conf`` are accepted for callers that pass session settings, and not used.
    """
    import types

    from ..errors import OutputError
    from .exchange import combine
    from .study import finalize_pooled_scan, regression_table

    del spark, master, spark_conf
    t0 = time.time()
    manifest = read_manifest(manifest_path)
    uri = exchange_uri(manifest_path)
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise OutputError(f"{out}: output directory exists; pass --overwrite or choose another --out")
    agree = ["phenotypes", "covariates", "kind", "variant_hash", "n_variants", "missing_genotypes"]
    headers, pooled = combine(uri, manifest, must_agree=agree)
    first = headers[manifest.party_names[0]]["extra"]
    kind = first["kind"]
    phenos, covs = list(first["phenotypes"]), list(first["covariates"])
    log.info("combine: %d parties verified, shares added and decoded in %.1f s; %d phenotype(s), "
             "%d covariate column(s)", len(headers), time.time() - t0, len(phenos), len(covs))
    with local_stage(out) as stage:
        written: dict = {}
        if kind == "regression":
            for t, name in enumerate(phenos):
                tbl = regression_table(pooled, t, covs, where=f"phenotype {name}")
                path = os.path.join(stage, f"{name}.coefficients.tsv")
                with open(path, "w") as fh:
                    fh.write("covariate\tbeta\tse\tt_stat\tp\tobs_ct\n")
                    for row in tbl.to_pylist():
                        fh.write(f"{row['covariate']}\t{row['beta']!r}\t{row['se']!r}\t{row['t_stat']!r}\t"
                                 f"{row['p']!r}\t{row['obs_ct']}\n")
                written[name] = path.replace(stage, out)
        else:
            from ..output import write_outputs_local
            from ..spark.scan import results_batch

            mode = first["missing_genotypes"]
            V = pooled["variants"]
            loc, path = _variants(uri, manifest, manifest.party_names[0])
            vt = pq.read_table(io.BytesIO(loc.read(path, what="variant list")))
            if variant_hash(vt) != first["variant_hash"]:
                raise ProtocolError(f"{uri}: the published variant list does not match the parties' declared "
                                    "hash; the exchange was altered")
            from .study import per_variant_layout

            lay = per_variant_layout(len(covs), len(phenos), mode)
            named = finalize_pooled_scan(pooled, V, phenos, covs, mode)
            meta = tuple(vt.column(c).to_numpy(zero_copy_only=False) for c in ("chrom", "id", "pos", "alt", "ref"))
            batch = results_batch(np.arange(V.shape[0], dtype=np.int64), meta, V[:, lay["freq_alt"]][:, 0],
                                  pooled["n_freq"][0] - V[:, lay["freq_miss"]][:, 0], named,
                                  count_alt=bool(np.all(meta[3] == ".")))  # features have no alleles
            log.info("combine: %d variants finalized in %.1f s", V.shape[0], time.time() - t0)
            model = types.SimpleNamespace(
                phenotypes=tuple(phenos), covariates=tuple(covs), variants=np.arange(V.shape[0]),
                counts={"pooled_samples": {p: int(round(pooled[f"t{t}.n"][0])) for t, p in enumerate(phenos)},
                        "parties": len(headers)})
            glm, summaries = write_outputs_local(stage, pa.Table.from_batches([batch]), model, plots=plots)
            written = {k: v.replace(stage, out) for k, v in glm.items()}
    log.info("combine: outputs in %s (%.1f s)", out, time.time() - t0)
    return written
