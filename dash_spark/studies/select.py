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

from ..errors import ConfigError, ModelError
from ..io import files
from ..outputs.staging import staged_output
from ..stats.blocks import block_grams, block_sums
from ..stats.results import results_batch
from ..stats.sufficient import SufficientStats, moments_regression
from ..config import ModelSettings
from .store import Store, id_file, open_store, pooled_block, read_block

log = logging.getLogger("dash_spark")


def choose_phenotype(phenotypes: list[str], name: str | None, *, where: str, what: str, why: str = "") -> int:
    """The index of ``--pheno-name`` among a store's or study's phenotypes (the only one when it is
    not given); a missing or unknown choice is a :class:`ConfigError` naming them."""
    if name is None:
        if len(phenotypes) > 1:
            raise ConfigError(f"{where}: the {what} has {len(phenotypes)} phenotypes ({', '.join(phenotypes)}); "
                              f"choose one with --pheno-name{why}")
        return 0
    if name not in phenotypes:
        raise ConfigError(f"--pheno-name {name}: not a phenotype of the {what} ({', '.join(phenotypes)})")
    return phenotypes.index(name)


# ----------------------------------------------------------------------------------------------
# the algebra: stored statistics + products with Z -> statistics of the model with C+ = [C | Z]


def no_products(m: int, k: int) -> tuple:
    """``(zx, zm, zmm, zmc)`` with no selected variant (q = 0) for ``m`` variants."""
    return np.zeros((m, 0)), np.zeros((m, 0)), np.zeros((m, 0, 0)), np.zeros((m, 0, k + 1))


def empty_dense(k: int, chroms=None) -> dict:
    """The dense products ``CZ, ZZ, Z1, Zy`` of an empty ``Z`` (q = 0); with LOCO offsets, ``Zy``
    per chromosome (``chroms``)."""
    zy = np.zeros(0) if chroms is None else {c: np.zeros(0) for c in chroms}
    return {"CZ": np.zeros((k, 0)), "ZZ": np.zeros((0, 0)), "Z1": np.zeros(0), "Zy": zy}


def add_dense(a: dict | None, b: dict) -> dict:
    """The sum of two batches' dense products (``Zy`` may be per chromosome)."""
    if a is None:
        return b
    out = {}
    for key in b:
        if isinstance(b[key], dict):
            out[key] = {c: a[key][c] + b[key][c] for c in b[key]}
        else:
            out[key] = a[key] + b[key]
    return out


def augmented_moments(G: SufficientStats, t: int, dense: dict):
    """Phenotype ``t``'s pooled moments with ``Z`` appended to the covariates (``dense``: ``CZ``
    (k x q), ``ZZ`` (q x q), ``Z1`` (q), ``Zy`` (q), summed over the batches). With LOCO offsets
    (``--pred``): per chromosome, the moments of ``y - o`` of that chromosome (a dict)."""
    from dataclasses import replace

    if not G.offsets:
        return G.moments[t].augment(dense["CZ"], dense["ZZ"], dense["Z1"], dense["Zy"])
    out = {}
    for c, (Cty, yty) in G.offsets.items():
        base = replace(G.moments[t], Cty=np.asarray(Cty)[t], yty=float(np.asarray(yty)[t]))
        out[c] = base.augment(dense["CZ"], dense["ZZ"], dense["Z1"], dense["Zy"][c])
    return out


# ----------------------------------------------------------------------------------------------
# a batch's side of a step


@dataclass(frozen=True)
class BatchStep:
    """What a task needs to add one batch's products with ``Z`` (broadcast once per step)."""

    plan: object          # the batch's ScanPlan (its .bed path and sample count), or GroupedPlan (--pred)
    W: np.ndarray         # padded [Z | mask] (Z masked to the phenotype's samples; mask = those samples)
    Wg: object            # padded [Z | C | y] for the missing calls' products (drop mode); with LOCO
                          # offsets a tuple, one per chromosome group, with y - o of that chromosome


def batch_products(step: BatchStep, q: int, k: int, vidx: np.ndarray, mode: str):
    """``(zx, zm, zmm, zmc)`` of one batch for the variants ``vidx`` (one kernel pass)."""
    block = step.plan.reader.read(vidx)  # packed .bed bytes, or dense feature values
    zx, _, zm = block_sums(block, step.W, q + 1)
    if mode != "drop":
        return zx[:, :q], zm[:, :q], None, None
    todo = zm[:, q] > 0  # variants with a missing call among the phenotype's samples
    if not isinstance(step.Wg, tuple):
        zmm, zmc, _ = block_grams(block, step.Wg, 0, q, k + 1, todo)
        return zx[:, :q], zm[:, :q], zmm, zmc
    zmm, zmc = np.zeros((len(vidx), q, q)), np.zeros((len(vidx), q, k + 1))
    groups = step.plan.groups_of(np.asarray(vidx))
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        a, b, _ = block_grams(block.take(rows), step.Wg[g], 0, q, k + 1, todo[rows])
        zmm[rows], zmc[rows] = a, b
    return zx[:, :q], zm[:, :q], zmm, zmc


def step_inputs(model, plan, t: int, sel: np.ndarray, mu: np.ndarray, mode: str):
    """A party model's ``Z`` for phenotype ``t`` (selected variants ``sel``, missing calls set to
    ``mu``): the broadcast of a step and the dense products ``CZ, ZZ, Z1, Zy``."""
    from ..stats.kernel import pad_weights

    pat = model.patterns[t]
    a, k = pat.a_offset, pat.k
    n = model.n_samples
    Ws = model.W if model.groups else (model.W,)  # --pred: one per chromosome, with y - o of it
    Wfull = Ws[0][:n]
    C, mask = Wfull[:, a : a + k], Wfull[:, a + k + 1] > 0
    ys = [w[:n, a + k] for w in Ws]
    order = np.argsort(sel)  # the readers take sorted indices; Z keeps the selection order
    X = plan.reader.read(sel[order]).dense().T[:, np.argsort(order)]
    Z = np.where(np.isnan(X), mu[None, :], X) * mask[:, None]
    empty = np.zeros((n, 0))
    W = pad_weights(np.hstack([Z, mask[:, None].astype(np.float64)]), empty)
    Wg = [pad_weights(np.hstack([Z, C, y[:, None]]), empty) for y in ys] if mode == "drop" else None
    dense = {"CZ": C.T @ Z, "ZZ": Z.T @ Z, "Z1": Z.sum(axis=0)}
    if model.groups:
        dense["Zy"] = {grp.chrom: Z.T @ y for grp, y in zip(model.groups, ys)}
        return BatchStep(plan=plan, W=W, Wg=None if Wg is None else tuple(Wg)), dense
    dense["Zy"] = Z.T @ ys[0]
    return BatchStep(plan=plan, W=W, Wg=None if Wg is None else Wg[0]), dense


def batch_model(store: Store, batch, t: int, spark_parallelism: int):
    """A stored batch's model and scan plan (withdrawn samples left out), checked against the
    moments stored for it; built once per selection and used by every step's :func:`step_inputs`."""
    from dataclasses import replace

    from ..scanner.pipeline import plan_scan
    from ..scanner.model import statistics_model

    remove = None
    if batch.withdrawn:
        remove = id_file(batch.withdrawn)
    try:
        cfg = store.settings.scan_config(batch.record["source"])
        if remove:
            cfg = replace(cfg, remove=remove)
        model = statistics_model(cfg)
    finally:
        if remove:
            os.remove(remove)
    stored = batch.moments(store.settings).moments[t]
    mine = model.moments[t]
    for key in ("n", "CtC", "Cty", "yty"):
        a, b = np.asarray(getattr(mine, key), dtype=float), np.asarray(getattr(stored, key), dtype=float)
        if not np.allclose(a, b, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(b).max()))):
            raise ConfigError(f"batch {batch.name!r}: its files ({', '.join(batch.record['source'].values())}) no "
                              "longer give the statistics stored for it; they changed after the batch was compressed. "
                              "Restore them, or remove the batch and add it again")
    plan, _, _ = plan_scan(cfg, model, spark_parallelism)
    return model, plan


# ----------------------------------------------------------------------------------------------
# the step job


def _step_task(spec: dict, B: dict, ranges):
    """Executor side: stored sums + products with Z over every batch, finalized conditionally."""
    k, mode, t = spec["k"], spec["mode"], spec["t"]
    G: SufficientStats = B["G"]
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
        by_chrom = isinstance(B["Gq"], dict)  # --pred: each chromosome's moments of y - o
        for i, kk in enumerate(keys):
            groups.setdefault((kk, meta[0][i] if by_chrom else None), []).append(i)
        pos_in_need = np.cumsum(need) - 1
        for (kk, chrom), members in groups.items():
            rows_i = np.asarray(members)
            cols = list(kk)
            if cols:
                r = pos_in_need[rows_i]
                zx, zm = prods[0][r][:, cols], prods[1][r][:, cols]
                zmm = prods[2][r][:, cols][:, :, cols] if mode == "drop" else None
                zmc = prods[3][r][:, cols] if mode == "drop" else None
            else:
                zx, zm, zmm, zmc = no_products(len(rows_i), k)
            names = spec["covariates"] + [spec["selected_ids"][c] for c in cols]
            Gq = B["Gq"][chrom] if by_chrom else B["Gq"]
            mo = Gq.restrict(list(range(k)) + [k + c for c in cols])
            S2 = G.block(start, V[rows_i]).condition(t, mo, names, zx, zm, zmm, zmc)
            lay2 = S2.layout
            V2 = S2.per_variant
            yield results_batch(vidx[rows_i], tuple(x[rows_i] for x in meta), V2[:, lay2.freq_alt],
                                S2.n_freq - V2[:, lay2.freq_miss], S2.finalize_stats(),
                                count_alt=spec["count_alt"], a1freq_floor=spec.get("a1freq_floor", 0.0))


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


def _no_sex_chromosomes(S: SufficientStats, where: str) -> None:
    """Forward selection does not condition chrX/Y/MT with plink2's sex-chromosome models yet."""
    if S.sexchr is not None:
        raise ModelError(f"{where}: the statistics hold chrX/Y/MT variants, which forward selection does not "
                         "model as plink2 does yet; select on statistics of the autosomes (compress the batches "
                         "or parties from filesets without them, e.g. plink2 --bfile IN --chr 1-22,XY --make-bed "
                         "--out AUTOSOMES)")


def run_select(store_root: str, out: str, **kwargs) -> SelectResult:
    """:func:`_select` while holding the store's lock (a refresh may not change the store meanwhile)."""
    from .store import store_lock

    with store_lock(store_root):
        return _select(store_root, out, **kwargs)


def _select(store_root: str, out: str, *, pheno_name: str | None = None, p_threshold: float = 5e-8,
            max_steps: int = 10, window_kb: float | None = None, overwrite: bool = False, spark=None,
            master: str | None = None, spark_conf: dict | None = None, min_release_delta: int = 20,
            allow_small_release: bool = False, a1freq_lower_limit: float = 0.0) -> SelectResult:
    """Forward selection on a store; outputs ``selected.tsv``, ``joint.tsv`` and ``results.parquet``
    (the scan conditional on every selected variant) under ``out``."""
    import pyarrow.compute as pc

    from ..scanner.jobs import write_ranges
    from ..spark.session import get_session
    from ..outputs.staging import check_out_dir
    t0 = time.time()
    if not 0 < p_threshold <= 1:
        raise ConfigError(f"--p-threshold: expected a p-value in (0, 1], found {p_threshold}")
    if max_steps < 1:
        raise ConfigError(f"--max-steps: expected a positive integer, found {max_steps}")
    if window_kb is not None and window_kb <= 0:
        raise ConfigError(f"--window-kb: expected a positive distance in kb, found {window_kb}")
    store = open_store(store_root)
    s = store.settings
    if s.pred and s.model.pred_test == "regenie":
        raise ConfigError(f"select --store {store_root}: the store's statistics are for REGENIE's test (--pred-test "
                          "regenie), which forward selection does not condition yet; select on a store made with the "
                          "Wald test (the default)")
    phenos = list(s.phenotypes)
    t = choose_phenotype(phenos, pheno_name, where=store.root, what="store")
    pheno_name = phenos[t]
    inputs = store.inputs()
    out = check_out_dir(out, overwrite=overwrite, inputs=inputs)
    batches = list(store.batches)
    G = store.pooled_globals(batches)
    _no_sex_chromosomes(G, store.root)
    from .release import check_sample_release, record_sample_release
    released = Store.active_ids(batches)
    log_entries = check_sample_release(store.releases_path, released, min_delta=min_release_delta,
                                       override=allow_small_release, where=f"select {store.root}")
    store.check_pooled(G)
    k, mode = len(s.covariates), s.model.missing_genotypes
    lay = G.layout
    n_t = float(G.n_samples(t))
    threshold = -math.log10(p_threshold)
    vt_all = pq.read_table(store.variants_path)
    if spark is None:
        spark = get_session(master=master, conf=spark_conf)
    par = spark.sparkContext.defaultParallelism
    from ..scanner.tasks import RangeRow

    ranges = [RangeRow(p, a, e) for p, (a, e) in enumerate(store.blocks)]  # the stored blocks: no file lines
    base_spec = {"k": k, "mode": mode, "t": t, "phenotypes": phenos, "covariates": list(s.covariates),
                 "columns": store.columns, "variants": store.variants_path,
                 "count_alt": s.source_kind == "features",
                 "batches": [(b.dir, tuple(b.record["blocks"])) for b in batches],
                 "window_bp": None if window_kb is None else window_kb * 1000.0,
                 "a1freq_floor": a1freq_lower_limit}
    selected: list[int] = []
    sel_rows: list[dict] = []
    joint_rows: list[dict] = []
    models = None  # each batch's (model, plan), built at the first step that needs the genotypes
    with staged_output(out, overwrite=overwrite, inputs=inputs, command="select") as staged:
        stage = staged.path
        objects = getattr(staged, "objects", None)  # an object-storage --out: the tasks write there
        task_stage = objects.path if objects is not None else stage
        step = 0
        while True:
            q = len(selected)
            if q:
                Vs = _pooled_rows(store, batches, selected)
                sx, miss = Vs[:, lay.of(t, "sx")][:, 0], Vs[:, lay.of(t, "miss")][:, 0]
                mu = sx / (n_t - miss)
                steps, dense = [], None
                if models is None:
                    models = [batch_model(store, b, t, par) for b in batches]
                for model, plan in models:
                    bs, d = step_inputs(model, plan, t, np.asarray(selected), mu, mode)
                    steps.append(bs)
                    dense = add_dense(dense, d)
                Gq = augmented_moments(G, t, dense)
            else:
                steps = []
                Gq = augmented_moments(G, t, empty_dense(k, G.offsets))
            ids = [vt_all.column("id")[v].as_py() for v in selected]
            spec = dict(base_spec, selected=[(vt_all.column("chrom")[v].as_py(), int(vt_all.column("pos")[v].as_py()))
                                             for v in selected],
                        selected_ids=ids, sub_block=min((st.plan.sub_block for st in steps), default=256))
            path = f"{task_stage}/results.parquet"
            # each step's parts replace the last step's (same ranges, same part names)
            write_ranges(spark, {"batches": steps, "Gq": Gq, "G": G}, ranges, partial(_step_task, spec), task_stage,
                         ())
            if q:  # the joint model of everything selected so far
                joint_rows += joint_statistics(Gq, list(s.covariates), sel_rows, pheno_name)
            if q >= max_steps:
                break
            cand = _read_results(path, filters=[("errcode", "=", "."), ("neg_log10_p", ">=", threshold)])
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
        if objects is not None:
            objects.download(stage)
        open(os.path.join(stage, "results.parquet", "_SUCCESS"), "wb").close()
        write_selection(stage, sel_rows, joint_rows)
        record_sample_release(store.releases_path, log_entries, released, out=out, command="select",
                              overridden=allow_small_release)
    log.info("select: %d variant(s) selected in %.1f s; outputs in %s", len(selected), time.time() - t0, out)
    return SelectResult(out=out, selected=sel_rows, joint=joint_rows, steps=len(selected), seconds=time.time() - t0)


def _read_results(path: str, filters):
    """A step's results (a local folder, or a prefix in object storage)."""
    if files.is_uri(path):
        fs, inner = files.filesystem(path)
        return pq.read_table(inner, filesystem=fs, filters=filters)
    return pq.read_table(path, filters=filters)


def joint_statistics(Gq, covariates: list[str], selected: list[dict], pheno_name: str) -> list[dict]:
    """Rows of ``joint.tsv`` for the model with every ``selected`` variant (the rows of the step
    that selected each one, which give its ID and A1): beta and t in A1's orientation. With LOCO
    offsets (``Gq`` per chromosome) each variant's row is from the model of ``y - o`` of its own
    chromosome, as its conditional test."""
    q, k = len(selected), len(covariates)
    names = covariates + [r["id"] for r in selected]
    where = f"phenotype {pheno_name}"
    if isinstance(Gq, dict):
        fits = {c: moments_regression(Gq[c], names, where=where).to_pylist()[k:] for c in
                dict.fromkeys(r["chrom"] for r in selected)}
        per = [fits[r["chrom"]][j] for j, r in enumerate(selected)]
    else:
        per = moments_regression(Gq, names, where=where).to_pylist()[k:]
    rows = []
    for sr, row in zip(selected, per):
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


def safe_state_name(phenotype: str) -> str:
    """A phenotype name as a file name of the exchange (no path separators, no dot-only names)."""
    from ..outputs.writers import safe_name

    name = safe_name(phenotype)
    return name if name.strip(".") else "_" + name


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
                          pfile: str | None = None, bgen: str | None = None, bgen_ref: str | None = None,
                          sample: str | None = None, id_delim: str | None = None, spark=None,
                          master: str | None = None, spark_conf: dict | None = None, trust: str | None = None,
                          wait: float = 0.0) -> str:
    """A party's share of one selection step: its products with the selected variants, masked with
    the step round's own keys (joined here if need be), once per round (the party's ledger)."""
    from ..multiparty import ProtocolError
    from ..multiparty.rounds import publish_stats
    from ..scanner.pipeline import plan_scan
    from ..scanner.model import statistics_model
    from ..scanner.compress import collect_ranges
    from ..spark.session import get_session, resolve_session
    from .study import open_round_to_publish, variant_hash, variant_table, wait_for_keys

    uri, manifest, keys, ledger, who = open_round_to_publish(manifest_path, party, key_path, trust, wait)
    s = manifest.settings
    if not (bfile or features or pfile or bgen):
        raise ConfigError(f"{manifest_path}: a selection step needs this party's genotypes; pass --bfile PREFIX "
                          "(or --pfile, --bgen, --features)")
    options = ModelSettings.from_json(s, where=manifest_path)
    cfg = options.scan_config({"bfile": bfile, "features": features, "feature_samples": feature_samples,
                               "pfile": pfile, "bgen": bgen, "bgen_ref": bgen_ref, "sample": sample,
                               "id_delim": id_delim, "pheno": pheno, "covar": covar}, sex_chromosomes=False)
    model = statistics_model(cfg)
    vh = variant_hash(variant_table(model.bim))
    if vh != s["variant_hash"]:
        raise ProtocolError(f"{party}: the variant list of {bfile or features or pfile or bgen} differs from the study's; "
                            "all parties must use the same variants in the same order. Nothing was published")
    if list(model.covariates) != s["covariates"] or list(model.phenotypes) != s["phenotypes"]:
        raise ProtocolError(f"{party}: phenotypes/covariates {list(model.phenotypes)}/{list(model.covariates)} "
                            f"differ from the study's {s['phenotypes']}/{s['covariates']}. Nothing was published")
    from ..multiparty.rounds import check_step_release
    from .study import model_own_samples

    # the step's sum is revealed once every party published: before that, it must extend this party's
    # release of the base round (the same parties, the same own samples)
    own = model_own_samples(model)
    check_step_release(manifest, ledger, own, who=who)
    t, mode, k = int(s["phenotype_index"]), options.missing_genotypes, len(s["covariates"])
    sel = np.asarray(s["selected"], dtype=np.int64)
    spark = get_session(master=master, conf=spark_conf) if spark is None else resolve_session(spark)
    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    step, dense = step_inputs(model, plan, t, sel, np.asarray(s["mu"], dtype=float), mode)
    P = collect_ranges(spark, step, ranges, partial(_products_task, len(sel), k, mode, plan.sub_block))
    stats = dict(dense, products=P)
    wait_for_keys(uri, manifest, wait, who=who)
    share = publish_stats(uri, manifest, party, keys, stats,
                          {"kind": "select-step", "variant_hash": vh, "selected": [int(v) for v in sel]},
                          ledger=ledger, own=own)
    log.info("party %s: selection step with %d selected variant(s) published: %s", party, len(sel), share)
    return share


def run_select_study(manifest_path: str, out: str, *, pheno_name: str | None = None, p_threshold: float = 5e-8,
                     max_steps: int = 10, overwrite: bool = False, sign_key: str | None = None,
                     trust: str | None = None, a1freq_lower_limit: float = 0.0) -> dict:
    """The coordinator's side of forward selection in a multi-party study, one step per call.

    Each call verifies and adds the base round's shares (``manifest_path``: a scan study) and
    those of the latest step round, finalizes the conditional scan, and either writes the next
    step's manifest (a fresh round: the parties then run ``party compress`` on it) or, when nothing
    passes or ``max_steps`` are selected, writes the outputs under ``out``. The state (selected
    variants and their statistics: results, so revealed anyway) lives beside the base round, signed
    by the coordinator (``sign_key``), as is every step's manifest; a step round must have the base
    round's parties and coordinator. The base round must be closed and unmasked first: the first
    call closes it (returns ``{"closed": ...}``) and the survivors run ``party unmask``.
    """
    from ..multiparty import ProtocolError
    from ..multiparty.exchange import Location, Manifest, locate_manifest, read_share_file, write_manifest
    from ..multiparty.keys import load_private
    from ..multiparty.rounds import (TrustFile, close_if_complete, combine, key_fingerprint, read_signed,
                                    read_survivors, sign_manifest, signed_record, verify_manifest)
    from .study import close_base_round
    from ..outputs.staging import check_out_dir

    uri, base = locate_manifest(manifest_path)
    if trust:
        verify_manifest(uri, base, TrustFile.load(trust), who=f"select, round {base.round_id!r}")
    inputs = (uri,) if "://" not in uri else ()
    out = check_out_dir(out, overwrite=overwrite, inputs=inputs)
    coordinator = load_private(sign_key) if sign_key else None
    if sign_key:
        body = close_base_round(uri, base, sign_key)
        if body is not None:
            return {"closed": body, "next_manifest": None, "selected": []}
    elif base.self_masks and read_survivors(uri, base) is None:
        close_if_complete(uri, base, None)  # (no key: refused, naming --sign-key)
    headers, pooled = combine(uri, base, must_agree=["phenotypes", "covariates", "kind", "variant_hash",
                                                     "missing_genotypes"])
    counted = sorted(headers)
    roster = {p: base.parties[p] for p in counted}  # every step's parties: the base round's survivors
    first = headers[counted[0]]["extra"]
    if first.get("kind") != "scan":
        raise ConfigError(f"{manifest_path}: forward selection needs a scan study (parties compressed genotypes)")
    phenos, covs, mode = list(first["phenotypes"]), list(first["covariates"]), first["missing_genotypes"]
    if first.get("loco_offsets"):
        raise ConfigError(f"select --manifest {manifest_path}: the study's statistics carry LOCO offsets (--pred); "
                          "forward selection does not take them yet")
    t, k = choose_phenotype(phenos, pheno_name, where=manifest_path, what="study"), len(covs)
    pheno_name = phenos[t]
    loc = Location(uri)
    state_path = loc.join(base.study, base.round_id, "select", f"{safe_state_name(pheno_name)}.json")
    ck = base.coordinator_keys()
    if ck is None or coordinator is None or key_fingerprint(ck) != key_fingerprint(coordinator):
        raise ProtocolError(f"select {manifest_path}: pass the study coordinator's key with --sign-key; it signs "
                            "the selection state and every step's manifest")
    if loc.exists(state_path):
        state = read_signed(loc, state_path, ck, what="selection state", who=f"coordinator {ck.party!r}")
        if (state["p_threshold"], state["max_steps"]) != (p_threshold, max_steps):
            raise ConfigError(f"{loc.show(state_path)}: this selection runs with --p-threshold {state['p_threshold']} "
                              f"--max-steps {state['max_steps']}; keep them for every step")
    else:
        state = {"phenotype": pheno_name, "p_threshold": p_threshold, "max_steps": max_steps, "steps": [],
                 "selected": [], "joint": []}
    vt = pq.read_table(pa.BufferReader(read_share_file(uri, base, counted[0], headers[counted[0]],
                                                       "variants.parquet")))
    S = SufficientStats.from_arrays(pooled, phenos, covs, mode, variants=vt)
    _no_sex_chromosomes(S, manifest_path)
    V = S.per_variant
    lay = S.layout
    m = V.shape[0]
    selected = [int(r["variant_index"]) for r in state["selected"]]
    q = len(selected)
    if q:
        _, step_manifest = locate_manifest(state["steps"][-1]["manifest"])
        if (step_manifest.parties != roster
                or step_manifest.coordinator != base.coordinator
                or step_manifest.study != base.study
                or step_manifest.settings.get("base_round") != base.round_id
                or step_manifest.round_id != state["steps"][-1]["round"]):
            raise ProtocolError(f"{state['steps'][-1]['manifest']}: the step manifest does not belong to this "
                                "selection (other parties, coordinator or base round); nothing was used")
        _, prods = combine(uri, step_manifest, must_agree=["kind", "variant_hash", "selected"])
        dense = {key: prods[key] for key in ("CZ", "ZZ", "Z1", "Zy")}
        zx, zm, zmm, zmc = split_products(prods["products"], q, k, mode)
    else:
        dense = empty_dense(k)
        zx, zm, zmm, zmc = no_products(m, k)
    Gq = augmented_moments(S, t, dense)
    ids = [str(vt.column("id")[v].as_py()) for v in selected]
    table = S.condition(t, Gq, covs + ids, zx, zm, zmm, zmc).finalize(a1freq_floor=a1freq_lower_limit)
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
        mu = Vs[:, lay.of(t, "sx")][:, 0] / (S.n_samples(t) - Vs[:, lay.of(t, "miss")][:, 0])
        # the base round's model options, whole (the parties' step statistics must mean what theirs did)
        options = ModelSettings.from_json(base.settings, where=manifest_path).to_json()
        settings = {**options, "kind": "select-step", "base_round": base.round_id, "phenotype": pheno_name,
                    "phenotype_index": t, "selected": sel, "mu": [float(x) for x in mu],
                    "phenotypes": phenos, "covariates": covs, "variant_hash": first["variant_hash"],
                    "missing_genotypes": mode}
        # a step needs every survivor of the base round, and no one else (a missing one: restart the selection)
        settings["self_masks"] = False
        nxt = Manifest.new(base.study, roster, settings, coordinator=ck)
        path = write_manifest(uri, nxt)
        sign_manifest(uri, nxt, coordinator)
        state["steps"].append({"round": nxt.round_id, "manifest": path})
        loc.mkdir(state_path.rsplit("/", 1)[0])
        loc.write_atomic(state_path, signed_record(state, coordinator), what="selection state")
        log.info("select: step %d: %s (-log10 p %.2f); parties: party compress --manifest %s", q + 1, row["id"],
                 row["neg_log10_p"], path)
        return {"next_manifest": path, "selected": state["selected"]}
    with staged_output(out, overwrite=overwrite, inputs=inputs, command="select") as staged:
        pq.write_table(table, os.path.join(staged.path, "results.parquet"))
        write_selection(staged.path, state["selected"], state["joint"])
    log.info("select: done, %d variant(s) selected; outputs in %s", q, out)
    return {"next_manifest": None, "selected": state["selected"], "out": out}
