"""Forward (conditional) selection on stored statistics: the note's feature selection.

Step 0 is the scan of the store. Each later step adds the most significant variant that passes
``--p-threshold`` as a covariate and re-tests every other variant conditionally, until nothing
passes or ``--max-steps`` variants are selected.

What a step costs. With the selected variants' dosages ``Z`` (n x q) as extra covariates, the
model's covariates become ``C+ = [C | Z]``, and every additive statistic the stored ones lack is a
product with ``Z``: per variant ``x'Z`` over its calls and ``1_M'Z`` over its missing calls (plus,
for exact complete cases, ``Z_M'[Z_M | C_M | y_M]`` over its missing calls), and globally ``C'Z,
Z'Z, 1'Z, Z'y``. So a step is one pass of the packed-byte kernel over the genotypes with a ``q``-column
weight matrix (instead of the scan's k + p + 2 columns per pattern), added to the stored sums, and
finalized by the scan's own code. The stored statistics are read, never recomputed.

Semantics (stated once): a selected variant enters as a covariate column of ALT dosages with its
missing calls replaced by its mean over the phenotype's samples with a call (pooled over the store's
batches); the tested variant's own missing calls follow the store's ``missing_genotypes`` mode. With
``--window-kb W`` a variant is conditioned only on the selected variants of its chromosome within
``W`` kb (variants farther away keep their unconditional statistics and need no genotype pass).
The joint statistics of a step are those of every variant selected so far in one model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError, OutputError
from .spark.fs import local_stage
from .store import (VARIANTS_FILE, Store, _id_file, batch_config, open_store, pooled_block, pooled_globals,
                    raise_task_error, read_block)

log = logging.getLogger("dash_spark")


# ----------------------------------------------------------------------------------------------
# the algebra: stored statistics + products with Z -> statistics of the model with C+ = [C | Z]


def augment_globals(G: dict, t: int, dense: dict) -> dict:
    """Pooled moments of phenotype ``t`` with ``Z`` appended to the covariates (as phenotype 0).

    ``dense``: ``CZ`` (k x q), ``ZZ`` (q x q), ``Z1`` (q), ``Zy`` (q), summed over the batches.
    """
    CtC = G[f"t{t}.CtC"]
    CZ, ZZ = dense["CZ"], dense["ZZ"]
    return {"n_freq": G["n_freq"], "t0.n": G[f"t{t}.n"], "t0.yty": G[f"t{t}.yty"],
            "t0.CtC": np.block([[CtC, CZ], [CZ.T, ZZ]]),
            "t0.Ct1": np.concatenate([G[f"t{t}.Ct1"], dense["Z1"]]),
            "t0.Cty": np.concatenate([G[f"t{t}.Cty"], dense["Zy"]])}


def restrict_globals(Gq: dict, k: int, cols: list[int]) -> dict:
    """Moments of the model with only the selected columns ``cols`` (indices into Z) kept."""
    idx = list(range(k)) + [k + c for c in cols]
    out = dict(Gq)
    out["t0.CtC"] = Gq["t0.CtC"][np.ix_(idx, idx)]
    out["t0.Ct1"] = Gq["t0.Ct1"][idx]
    out["t0.Cty"] = Gq["t0.Cty"][idx]
    return out


def augment_variants(V: np.ndarray, t: int, k: int, n_pheno: int, mode: str, zx: np.ndarray, zm: np.ndarray,
                     zmm: np.ndarray | None = None, zmc: np.ndarray | None = None) -> np.ndarray:
    """Per-variant statistics (layout of phenotype 0, ``k + q`` covariates) from the stored ``V``.

    ``zx`` (m x q): ``sum x_j z`` over the calls of variant j; ``zm`` (m x q): ``sum z`` over its
    missing calls; drop mode also ``zmm`` (m x q x q): ``sum z z'`` and ``zmc`` (m x q x (k+1)):
    ``sum z [c, y]'`` over its missing calls.
    """
    from .multiparty.study import per_variant_layout

    m, q = zx.shape
    k2 = k + q
    lay = per_variant_layout(k, n_pheno, mode)
    lay2 = per_variant_layout(k2, 1, mode)
    out = np.zeros((m, lay2["_width"].start))
    col = lambda s: V[:, lay[f"t{t}.{s}"]]  # noqa: E731
    out[:, lay2["t0.Ctx"]] = np.hstack([col("Ctx"), zx])
    out[:, lay2["t0.Ctm"]] = np.hstack([col("Ctm"), zm])
    for s in ("yx", "sx", "sxx", "ym", "miss"):
        out[:, lay2[f"t0.{s}"]] = col(s)
    if mode == "drop":  # the missing calls' blocks are zero for variants without any: fill the others
        r = np.flatnonzero(col("miss")[:, 0] > 0)
        iu = np.triu_indices(k)
        full = np.zeros((len(r), k2, k2))
        full[:, iu[0], iu[1]] = V[r][:, lay[f"t{t}.CmCm"]]
        full[:, iu[1], iu[0]] = V[r][:, lay[f"t{t}.CmCm"]]
        full[:, k:, :k] = zmc[r, :, :k]
        full[:, :k, k:] = np.transpose(zmc[r, :, :k], (0, 2, 1))
        full[:, k:, k:] = zmm[r]
        iu2 = np.triu_indices(k2)
        out[np.ix_(r, np.arange(lay2["t0.CmCm"].start, lay2["t0.CmCm"].stop))] = full[:, iu2[0], iu2[1]]
        out[:, lay2["t0.Cmy"]] = np.hstack([col("Cmy"), zmc[:, :, k]])
        out[:, lay2["t0.ymy"]] = col("ymy")
    out[:, lay2["freq_alt"]] = V[:, lay["freq_alt"]]
    out[:, lay2["freq_miss"]] = V[:, lay["freq_miss"]]
    return out


# ----------------------------------------------------------------------------------------------
# a batch's side of a step


@dataclass(frozen=True)
class BatchStep:
    """What a task needs to add one batch's products with ``Z`` (broadcast once per step)."""

    plan: object          # the batch's ScanPlan (its .bed path and sample count)
    W: np.ndarray         # padded [Z | mask] (Z masked to the phenotype's samples; mask = those samples)
    Wg: np.ndarray | None  # padded [Z | C | y] for the missing calls' products (drop mode)


def batch_products(step: BatchStep, q: int, k: int, vidx: np.ndarray, mode: str):
    """``(zx, zm, zmm, zmc)`` of one batch for the variants ``vidx`` (one kernel pass)."""
    from .io.features import compress_dense
    from .spark.scan import block_missing_grams
    from .spark.scan import read_block as read_variants
    from .stats.kernel import compress_block

    block, _ = read_variants(step.plan, vidx)  # packed .bed bytes, or dense feature values
    dense = bool(step.plan.features_path)
    zx, _, zm = (compress_dense if dense else compress_block)(block, step.W, q + 1)
    if mode != "drop":
        return zx[:, :q], zm[:, :q], None, None
    todo = zm[:, q] > 0  # variants with a missing call among the phenotype's samples
    zmm, zmc, _ = block_missing_grams(step.plan, step.Wg, block, 0, q, k + 1, todo)
    return zx[:, :q], zm[:, :q], zmm, zmc


def step_inputs(model, plan, t: int, sel: np.ndarray, mu: np.ndarray, mode: str):
    """A party model's ``Z`` for phenotype ``t`` (selected variants ``sel``, missing calls set to
    ``mu``): the broadcast of a step and the dense products ``CZ, ZZ, Z1, Zy``."""
    from .io.plink import read_bed_rows
    from .stats.kernel import decode, pad_weights

    pat = model.patterns[t]
    a, k = pat.a_offset, pat.k
    n = model.n_samples
    Wfull = model.W[:n]
    C, y, mask = Wfull[:, a : a + k], Wfull[:, a + k], Wfull[:, a + k + 1] > 0
    order = np.argsort(sel)  # the readers take sorted indices; Z keeps the selection order
    if plan.features_path:
        from .io.features import read_feature_rows

        X = read_feature_rows(plan.features_path, n, sel[order])[0].T
    else:
        X = decode(read_bed_rows(plan.bed_path, n, sel[order]), n)
    X = X[:, np.argsort(order)]
    Z = np.where(np.isnan(X), mu[None, :], X) * mask[:, None]
    empty = np.zeros((n, 0))
    W = pad_weights(np.hstack([Z, mask[:, None].astype(np.float64)]), empty)
    Wg = pad_weights(np.hstack([Z, C, y[:, None]]), empty) if mode == "drop" else None
    dense = {"CZ": C.T @ Z, "ZZ": Z.T @ Z, "Z1": Z.sum(axis=0), "Zy": Z.T @ y}
    return BatchStep(plan=plan, W=W, Wg=Wg), dense


def batch_model(store: Store, batch, t: int, spark_parallelism: int):
    """A stored batch's model and scan plan (withdrawn samples left out), checked against the
    moments stored for it; built once per selection and used by every step's :func:`step_inputs`."""
    from dataclasses import replace

    from .multiparty.study import global_stats
    from .pipeline import build_model, plan_scan

    remove = None
    if batch.withdrawn:
        remove = _id_file(batch.withdrawn)
    try:
        cfg = batch_config(store.settings, batch.record["source"])
        if remove:
            cfg = replace(cfg, remove=remove)
        model = build_model(cfg, party=True)
    finally:
        if remove:
            os.remove(remove)
    stored = batch.globals()
    mine = global_stats(model)
    for key in (f"t{t}.n", f"t{t}.CtC", f"t{t}.Cty", f"t{t}.yty"):
        if not np.allclose(mine[key], stored[key], rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(stored[key]).max()))):
            raise ConfigError(f"batch {batch.name!r}: its files ({', '.join(batch.record['source'].values())}) no "
                              "longer give the statistics stored for it; they changed after the batch was compressed. "
                              "Restore them, or remove the batch and add it again")
    plan, _, _ = plan_scan(cfg, model, spark_parallelism)
    return model, plan


# ----------------------------------------------------------------------------------------------
# the step job


def _step_task(spec: dict, B: dict, ranges):
    """Executor side: stored sums + products with Z over every batch, finalized conditionally."""
    from .multiparty.study import finalize_pooled_scan, per_variant_layout
    from .spark.scan import results_batch

    k, mode, t = spec["k"], spec["mode"], spec["t"]
    P = len(spec["phenotypes"])
    vfile = pq.ParquetFile(spec["variants"])
    q = len(spec["selected"])
    window = spec["window_bp"]
    for part, start, stop, _bs, _be, _rows in ranges:
        V, meta = pooled_block(spec, vfile, part)
        vidx = np.arange(start, stop, dtype=np.int64)
        # which selected variants condition each variant (all of them without a window)
        if window is None:
            keys = [tuple(range(q))] * len(vidx)
        else:
            chrom, pos = meta[0], meta[2]
            act = np.zeros((len(vidx), q), dtype=bool)
            for i, (c, p) in enumerate(spec["selected"]):
                act[:, i] = (chrom == c) & (np.abs(pos - p) <= window)
            keys = [tuple(int(x) for x in np.flatnonzero(r)) for r in act]
        need = np.array([len(kk) > 0 for kk in keys], dtype=bool)
        prods = None
        if need.any():
            rows = vidx[need]
            acc = None
            for step in B["batches"]:
                pieces = []
                for a in range(0, len(rows), spec["sub_block"]):
                    pieces.append(batch_products(step, q, k, rows[a : a + spec["sub_block"]], mode))
                cur = [None if pieces[0][i] is None else np.concatenate([p[i] for p in pieces]) for i in range(4)]
                acc = cur if acc is None else [None if x is None else x + y for x, y in zip(acc, cur)]
            prods = acc
        groups: dict[tuple, list[int]] = {}
        for i, kk in enumerate(keys):
            groups.setdefault(kk, []).append(i)
        pos_in_need = np.cumsum(need) - 1
        for kk, members in groups.items():
            rows_i = np.asarray(members)
            cols = list(kk)
            if cols:
                r = pos_in_need[rows_i]
                zx, zm = prods[0][r][:, cols], prods[1][r][:, cols]
                zmm = prods[2][r][:, cols][:, :, cols] if mode == "drop" else None
                zmc = prods[3][r][:, cols] if mode == "drop" else None
                V2 = augment_variants(V[rows_i], t, k, P, mode, zx, zm, zmm, zmc)
                G2 = restrict_globals(B["Gq"], k, cols)
                names = spec["covariates"] + [spec["selected_ids"][c] for c in cols]
            else:
                V2 = augment_variants(V[rows_i], t, k, P, mode, np.zeros((len(rows_i), 0)),
                                      np.zeros((len(rows_i), 0)), np.zeros((len(rows_i), 0, 0)),
                                      np.zeros((len(rows_i), 0, k + 1)))
                G2 = restrict_globals(B["Gq"], k, [])
                names = spec["covariates"]
            lay2 = per_variant_layout(len(names), 1, mode)
            named = finalize_pooled_scan(G2, V2, [spec["phenotypes"][t]], names, mode)
            yield results_batch(vidx[rows_i], tuple(x[rows_i] for x in meta), V2[:, lay2["freq_alt"]][:, 0],
                                G2["n_freq"][0] - V2[:, lay2["freq_miss"]][:, 0], named,
                                count_alt=spec["count_alt"])


# ----------------------------------------------------------------------------------------------
# the driver loop


@dataclass(frozen=True)
class SelectResult:
    out: str
    selected: list[dict]
    joint: list[dict]
    steps: int
    seconds: float


def _pooled_rows(store: Store, batches, rows: list[int]) -> np.ndarray:
    """The pooled stored statistics of a few variants (driver side; reads their blocks)."""
    out = np.zeros((len(rows), store.width))
    columns = store.columns
    for i, v in enumerate(rows):
        part = next(p for p, (a, e) in enumerate(store.blocks) if a <= v < e)
        for b in batches:
            out[i] += read_block(b.dir, part, b.record["blocks"][part], columns)[v - store.blocks[part][0]]
    return out


def run_select(store_root: str, out: str, **kwargs) -> SelectResult:
    """:func:`_select` while holding the store's lock (a refresh may not change the store meanwhile)."""
    from .store import store_lock

    with store_lock(store_root):
        return _select(store_root, out, **kwargs)


def _select(store_root: str, out: str, *, pheno_name: str | None = None, p_threshold: float = 5e-8,
            max_steps: int = 10, window_kb: float | None = None, overwrite: bool = False, spark=None,
            master: str | None = None, spark_conf: dict | None = None) -> SelectResult:
    """Forward selection on a store; outputs ``selected.tsv``, ``joint.tsv`` and ``results.parquet``
    (the scan conditional on every selected variant) under ``out``."""
    import pyarrow.compute as pc

    from .multiparty.study import per_variant_layout
    from .spark.scan import write_ranges
    from .spark.session import get_session
    from .store import check_pooled

    t0 = time.time()
    if not 0 < p_threshold <= 1:
        raise ConfigError(f"--p-threshold: expected a p-value in (0, 1], found {p_threshold}")
    if max_steps < 1:
        raise ConfigError(f"--max-steps: expected a positive integer, found {max_steps}")
    if window_kb is not None and window_kb <= 0:
        raise ConfigError(f"--window-kb: expected a positive distance in kb, found {window_kb}")
    store = open_store(store_root)
    s = store.settings
    phenos = list(s["phenotypes"])
    if pheno_name is None:
        if len(phenos) > 1:
            raise ConfigError(f"{store.root}: the store has {len(phenos)} phenotypes ({', '.join(phenos)}); "
                              "choose one with --pheno-name")
        pheno_name = phenos[0]
    if pheno_name not in phenos:
        raise ConfigError(f"--pheno-name {pheno_name}: not a phenotype of the store ({', '.join(phenos)})")
    t = phenos.index(pheno_name)
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise OutputError(f"{out}: output directory exists; pass --overwrite or choose another --out")
    batches = list(store.batches)
    G = pooled_globals(batches)
    check_pooled(store, batches, G)
    k, mode = len(s["covariates"]), s["missing_genotypes"]
    lay = per_variant_layout(k, len(phenos), mode)
    n_t = float(G[f"t{t}.n"][0])
    threshold = -math.log10(p_threshold)
    vt_all = pq.read_table(os.path.join(store.root, VARIANTS_FILE))
    if spark is None:
        spark = get_session(master=master, conf=spark_conf)
    par = spark.sparkContext.defaultParallelism
    ranges = [(p, a, e, 0, 0, []) for p, (a, e) in enumerate(store.blocks)]
    base_spec = {"k": k, "mode": mode, "t": t, "phenotypes": phenos, "covariates": list(s["covariates"]),
                 "columns": store.columns, "variants": os.path.join(store.root, VARIANTS_FILE),
                 "count_alt": s.get("source_kind") == "features",
                 "batches": [(b.dir, tuple(b.record["blocks"])) for b in batches],
                 "window_bp": None if window_kb is None else window_kb * 1000.0}
    selected: list[int] = []
    sel_rows: list[dict] = []
    joint_rows: list[dict] = []
    models = None  # each batch's (model, plan), built at the first step that needs the genotypes
    with local_stage(out) as stage:
        step = 0
        while True:
            q = len(selected)
            if q:
                Vs = _pooled_rows(store, batches, selected)
                sx, miss = Vs[:, lay[f"t{t}.sx"]][:, 0], Vs[:, lay[f"t{t}.miss"]][:, 0]
                mu = sx / (n_t - miss)
                steps, dense = [], None
                if models is None:
                    models = [batch_model(store, b, t, par) for b in batches]
                for model, plan in models:
                    bs, d = step_inputs(model, plan, t, np.asarray(selected), mu, mode)
                    steps.append(bs)
                    dense = d if dense is None else {key: dense[key] + d[key] for key in d}
                Gq = augment_globals(G, t, dense)
            else:
                steps = []
                Gq = augment_globals(G, t, {"CZ": np.zeros((k, 0)), "ZZ": np.zeros((0, 0)), "Z1": np.zeros(0),
                                            "Zy": np.zeros(0)})
            ids = [vt_all.column("id")[v].as_py() for v in selected]
            spec = dict(base_spec, selected=[(vt_all.column("chrom")[v].as_py(), int(vt_all.column("pos")[v].as_py()))
                                             for v in selected],
                        selected_ids=ids, sub_block=min((st.plan.sub_block for st in steps), default=256))
            path = f"{stage}/results.parquet"
            try:  # each step's parts replace the last step's (same ranges, same part names)
                write_ranges(spark, {"batches": steps, "Gq": Gq}, ranges, partial(_step_task, spec), stage, ())
            except Exception as exc:  # noqa: BLE001
                raise_task_error(exc)
            if q:  # the joint model of everything selected so far
                joint_rows += joint_statistics(Gq, list(s["covariates"]), sel_rows, pheno_name)
            if q >= max_steps:
                break
            cand = pq.read_table(path, filters=[("errcode", "=", "."), ("neg_log10_p", ">=", threshold)])
            cand = cand.filter(pc.invert(pc.is_in(cand["variant_index"], pa.array(selected, type=pa.int64()))))
            if cand.num_rows == 0:
                break
            order = [("neg_log10_p", "descending"), ("variant_index", "ascending")]
            best = cand.sort_by(order).slice(0, 1).to_pylist()[0]
            step += 1
            selected.append(int(best["variant_index"]))
            sel_rows.append(dict(best, step=step))
            log.info("select: step %d: %s (-log10 p %.2f given %d selected)", step, best["id"], best["neg_log10_p"],
                     q)
        open(os.path.join(stage, "results.parquet", "_SUCCESS"), "wb").close()
        write_selection(stage, sel_rows, joint_rows)
    log.info("select: %d variant(s) selected in %.1f s; outputs in %s", len(selected), time.time() - t0, out)
    return SelectResult(out=out, selected=sel_rows, joint=joint_rows, steps=len(selected), seconds=time.time() - t0)


def joint_statistics(Gq: dict, covariates: list[str], selected: list[dict], pheno_name: str) -> list[dict]:
    """Rows of ``joint.tsv`` for the model with every ``selected`` variant (the rows of the step
    that selected each one, which give its ID and A1): beta and t in A1's orientation."""
    from .multiparty.study import regression_table

    q, k = len(selected), len(covariates)
    joint = regression_table(Gq, 0, covariates + [r["id"] for r in selected], where=f"phenotype {pheno_name}")
    rows = []
    for sr, row in zip(selected, joint.to_pylist()[k:]):
        sign = -1.0 if sr["a1"] != sr["alt"] else 1.0
        rows.append({"step": q, "id": sr["id"], "a1": sr["a1"], "beta": sign * row["beta"], "se": row["se"],
                     "t_stat": sign * row["t_stat"], "p": row["p"], "neg_log10_p": row["neg_log10_p"]})
    return rows


def write_selection(stage: str, selected: list[dict], joint: list[dict]) -> None:
    """``selected.tsv`` and ``joint.tsv`` under ``stage``."""
    _write_tsv(os.path.join(stage, "selected.tsv"), selected, SELECTED_COLUMNS)
    _write_tsv(os.path.join(stage, "joint.tsv"), joint, JOINT_COLUMNS)


SELECTED_COLUMNS = ["step", "id", "chrom", "pos", "ref", "alt", "a1", "obs_ct", "beta", "se", "t_stat", "p",
                    "neg_log10_p"]
JOINT_COLUMNS = ["step", "id", "a1", "beta", "se", "t_stat", "p", "neg_log10_p"]


def _write_tsv(path: str, rows: list[dict], cols: list[str]) -> None:
    with open(path, "w") as fh:
        fh.write("\t".join(cols) + "\n")
        for r in rows:
            fh.write("\t".join("NA" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else str(r[c])
                               for c in cols) + "\n")


# ----------------------------------------------------------------------------------------------
# a multi-party study: each step is a new round whose shares carry the parties' products with Z


def _products_task(q: int, k: int, mode: str, sub_block: int, step: BatchStep, ranges):
    """Executor side: a party's per-variant products with Z, flattened (see :func:`split_products`)."""
    for _part, start, stop, _bs, _be, _rows in ranges:
        for a in range(start, stop, sub_block):
            vidx = np.arange(a, min(a + sub_block, stop), dtype=np.int64)
            zx, zm, zmm, zmc = batch_products(step, q, k, vidx, mode)
            parts = [zx, zm] + ([zmm.reshape(len(vidx), -1), zmc.reshape(len(vidx), -1)] if mode == "drop" else [])
            yield a, np.hstack(parts)


def split_products(P: np.ndarray, q: int, k: int, mode: str):
    """``(zx, zm, zmm, zmc)`` from the flattened products of :func:`_products_task`."""
    m = P.shape[0]
    zx, zm = P[:, :q], P[:, q : 2 * q]
    if mode != "drop":
        return zx, zm, None, None
    zmm = P[:, 2 * q : 2 * q + q * q].reshape(m, q, q)
    zmc = P[:, 2 * q + q * q :].reshape(m, q, k + 1)
    return zx, zm, zmm, zmc


def run_party_select_step(manifest_path: str, party: str, key_path: str, *, pheno: str, covar: str | None,
                          bfile: str | None, features: str | None = None, feature_samples: str | None = None,
                          spark=None, master: str | None = None, spark_conf: dict | None = None) -> str:
    """A party's share of one selection step: its products with the selected variants, masked."""
    from .multiparty import ProtocolError
    from .multiparty.exchange import publish_stats, read_manifest
    from .multiparty.keys import load_private
    from .multiparty.party import _check_party, exchange_uri, variant_hash, variant_table
    from .pipeline import build_model, plan_scan
    from .spark.compress import collect_ranges
    from .spark.session import get_session

    manifest = read_manifest(manifest_path)
    keys = load_private(key_path)
    _check_party(manifest, party, keys)
    s = manifest.settings
    if not (bfile or features):
        raise ConfigError(f"{manifest_path}: a selection step needs this party's genotypes; pass --bfile PREFIX "
                          "(or --features)")
    cfg = batch_config(s, {"bfile": bfile, "features": features, "feature_samples": feature_samples,
                           "pheno": pheno, "covar": covar})
    model = build_model(cfg, party=True)
    vh = variant_hash(variant_table(model.bim))
    if vh != s["variant_hash"]:
        raise ProtocolError(f"{party}: the variant list of {bfile or features} differs from the study's; "
                            "all parties must use the same variants in the same order. Nothing was published")
    if list(model.covariates) != s["covariates"] or list(model.phenotypes) != s["phenotypes"]:
        raise ProtocolError(f"{party}: phenotypes/covariates {list(model.phenotypes)}/{list(model.covariates)} "
                            f"differ from the study's {s['phenotypes']}/{s['covariates']}. Nothing was published")
    t, mode, k = int(s["phenotype_index"]), s["missing_genotypes"], len(s["covariates"])
    sel = np.asarray(s["selected"], dtype=np.int64)
    if spark is None:
        spark = get_session(master=master, conf=spark_conf)
    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    step, dense = step_inputs(model, plan, t, sel, np.asarray(s["mu"], dtype=float), mode)
    P = collect_ranges(spark, step, ranges, partial(_products_task, len(sel), k, mode, plan.sub_block))
    stats = dict(dense, products=P)
    share = publish_stats(exchange_uri(manifest_path), manifest, party, keys, stats,
                          {"kind": "select-step", "variant_hash": vh, "selected": [int(v) for v in sel]})
    log.info("party %s: selection step with %d selected variant(s) published: %s", party, len(sel), share)
    return share


def run_select_study(manifest_path: str, out: str, *, pheno_name: str | None = None, p_threshold: float = 5e-8,
                     max_steps: int = 10, overwrite: bool = False) -> dict:
    """The coordinator's side of forward selection in a multi-party study, one step per call.

    Each call verifies and adds the base round's shares (``manifest_path``: a scan study) and
    those of the latest step round, finalizes the conditional scan, and either writes the next
    step's manifest (a fresh round: the parties then run ``party compress`` on it) or, when nothing
    passes or ``max_steps`` are selected, writes the outputs under ``out``. The state (selected
    variants and their statistics: results, so revealed anyway) lives beside the base round.
    """
    import json

    from .multiparty.exchange import Manifest, _Location, combine, read_manifest, write_manifest
    from .multiparty.party import exchange_uri
    from .multiparty.study import finalize_pooled_scan
    from .spark.scan import results_batch

    base = read_manifest(manifest_path)
    uri = exchange_uri(manifest_path)
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise OutputError(f"{out}: output directory exists; pass --overwrite or choose another --out")
    headers, pooled = combine(uri, base, must_agree=["phenotypes", "covariates", "kind", "variant_hash",
                                                     "missing_genotypes"])
    first = headers[base.party_names[0]]["extra"]
    if first.get("kind") != "scan":
        raise ConfigError(f"{manifest_path}: forward selection needs a scan study (parties compressed genotypes)")
    phenos, covs, mode = list(first["phenotypes"]), list(first["covariates"]), first["missing_genotypes"]
    if pheno_name is None:
        if len(phenos) > 1:
            raise ConfigError(f"{manifest_path}: the study has phenotypes {', '.join(phenos)}; choose one with --pheno-name")
        pheno_name = phenos[0]
    if pheno_name not in phenos:
        raise ConfigError(f"--pheno-name {pheno_name}: not a phenotype of the study ({', '.join(phenos)})")
    t, k = phenos.index(pheno_name), len(covs)
    loc = _Location(uri)
    state_path = loc.join(base.study, base.round_id, "select", f"{pheno_name}.json")
    if loc.exists(state_path):
        state = json.loads(loc.read(state_path, what="selection state"))
        if (state["p_threshold"], state["max_steps"]) != (p_threshold, max_steps):
            raise ConfigError(f"{loc.show(state_path)}: this selection runs with --p-threshold {state['p_threshold']} "
                              f"--max-steps {state['max_steps']}; keep them for every step")
    else:
        state = {"phenotype": pheno_name, "p_threshold": p_threshold, "max_steps": max_steps, "steps": [],
                 "selected": [], "joint": []}
    V = pooled["variants"]
    from .multiparty.study import per_variant_layout

    lay = per_variant_layout(k, len(phenos), mode)
    m = V.shape[0]
    selected = [int(r["variant_index"]) for r in state["selected"]]
    q = len(selected)
    if q:
        step_manifest = read_manifest(state["steps"][-1]["manifest"])
        _, prods = combine(uri, step_manifest, must_agree=["kind", "variant_hash", "selected"])
        dense = {key: prods[key] for key in ("CZ", "ZZ", "Z1", "Zy")}
        zx, zm, zmm, zmc = split_products(prods["products"], q, k, mode)
    else:
        dense = {"CZ": np.zeros((k, 0)), "ZZ": np.zeros((0, 0)), "Z1": np.zeros(0), "Zy": np.zeros(0)}
        zx, zm, zmm, zmc = np.zeros((m, 0)), np.zeros((m, 0)), np.zeros((m, 0, 0)), np.zeros((m, 0, k + 1))
    Gq = augment_globals(pooled, t, dense)
    V2 = augment_variants(V, t, k, len(phenos), mode, zx, zm, zmm, zmc)
    vt = pq.read_table(pa.BufferReader(loc.read(loc.join(base.study, base.round_id, "variants",
                                                         f"{base.party_names[0]}.parquet"), what="variant list")))
    meta = tuple(vt.column(c).to_numpy(zero_copy_only=False) for c in ("chrom", "id", "pos", "alt", "ref"))
    ids = [str(meta[1][v]) for v in selected]
    named = finalize_pooled_scan(Gq, V2, [pheno_name], covs + ids, mode)
    lay2 = per_variant_layout(k + q, 1, mode)
    table = pa.Table.from_batches([results_batch(np.arange(m, dtype=np.int64), meta, V2[:, lay2["freq_alt"]][:, 0],
                                                 Gq["n_freq"][0] - V2[:, lay2["freq_miss"]][:, 0], named,
                                                 count_alt=bool(np.all(meta[3] == ".")))])
    if q and not any(r["step"] == q for r in state["joint"]):
        state["joint"] += joint_statistics(Gq, covs, state["selected"], pheno_name)
    nlp = table.column("neg_log10_p").to_numpy(zero_copy_only=False)
    ok = (table.column("errcode").to_numpy(zero_copy_only=False) == ".") & ~np.isin(np.arange(m), selected)
    ok &= np.nan_to_num(nlp, nan=-1.0) >= -math.log10(p_threshold)
    if q < max_steps and ok.any():
        best = int(np.flatnonzero(ok)[np.argmax(nlp[ok])])  # the first of equal maxima: the lowest index
        row = {c: table.column(c)[best].as_py() for c in table.column_names}
        state["selected"].append(dict(row, step=q + 1))
        sel = selected + [best]
        Vs = V[sel]
        mu = Vs[:, lay[f"t{t}.sx"]][:, 0] / (pooled[f"t{t}.n"][0] - Vs[:, lay[f"t{t}.miss"]][:, 0])
        bs = base.settings
        settings = {"kind": "select-step", "base_round": base.round_id, "phenotype": pheno_name,
                    "phenotype_index": t, "selected": sel, "mu": [float(x) for x in mu],
                    "phenotypes": phenos, "covariates": covs, "variant_hash": first["variant_hash"],
                    "missing_genotypes": mode, "intercept": bs.get("intercept", True),
                    "pheno_names": bs.get("pheno_names"), "covar_names": bs.get("covar_names")}
        nxt = Manifest.new(base.study, base.parties, settings)
        path = write_manifest(uri, nxt)
        state["steps"].append({"round": nxt.round_id, "manifest": path})
        loc.mkdir(state_path.rsplit("/", 1)[0])
        loc.write_atomic(state_path, json.dumps(state, indent=1).encode(), what="selection state")
        log.info("select: step %d: %s (-log10 p %.2f); parties: party compress --manifest %s", q + 1, row["id"],
                 row["neg_log10_p"], path)
        return {"next_manifest": path, "selected": state["selected"]}
    with local_stage(out) as stage:
        pq.write_table(table, os.path.join(stage, "results.parquet"))
        write_selection(stage, state["selected"], state["joint"])
    log.info("select: done, %d variant(s) selected; outputs in %s", q, out)
    return {"next_manifest": None, "selected": state["selected"], "out": out}
