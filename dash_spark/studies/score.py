"""A case/control study by the score test: the null model, the scan and the saddlepoint correction by secure rounds.

The score test of a case/control phenotype (:mod:`dash_spark.stats.score`) needs the null model
``logit(mu) = C gamma`` of the pooled samples, and then, per variant, sums over samples with
weights from that model. Both are additive, so a study runs them as rounds of the same protocol:

1. **The base round** (``party manifest --kind score``): each party publishes, per phenotype,
   ``n, C'C, C'1, C'y, y'y`` with y coded 0/1 as plink2 reads case/control columns (and its
   variant list's hash), self-masked, closed by the coordinator and unmasked by every survivor
   after its release guard (as any study round).
2. **The null model's Newton steps**: ``dash-spark combine --manifest BASE --pheno-name P`` fits
   glm.fit's least-squares start from the base's sums and writes the round of step 1; each party
   publishes ``C'WC, C'(y - mu), loglik`` at that step's coefficients; the next combine takes the
   Newton step and writes step 2, and so on until :func:`~dash_spark.stats.score.fit_null`'s rule
   holds (one call of combine and one ``party compress`` per party each step).
3. **The scan round**: every party publishes, per variant, ``x'(y - mu)``, ``x'WC``, ``x'W``,
   ``sum x``, the founders' ``sum x``, ``x'Wx`` and the same sums over its missing calls (staged
   by its Spark tasks, as a scan study's shares are), with ``C'WC`` and ``1'W1``.
4. **The saddlepoint rounds**: for the variants whose score-test p is below 0.05, the two tails'
   saddlepoint equations ``K'(t) = +-|U|`` are solved by the same Newton-with-bracket solver as a
   single party's (:func:`~dash_spark.stats.score.tail_steps`), every variant in lockstep: each
   round, every party publishes ``K, K', K''`` of its own samples at the requested ``t`` values
   (the CGF is a sum over samples; ``g = x - C b`` with the pooled ``b``); the bracket's ends and
   ``t = 0`` are asked at once, then one Newton point per round (typically 5 to 8 rounds). The last
   combine writes ``<phenotype>.regenie`` and ``results.parquet`` of the pooled score test.

The steps, the scan and the saddlepoint rounds extend the base round's release (the same parties,
the same samples: :func:`~dash_spark.multiparty.rounds.check_step_release`) and carry no
self-masks: each sum is revealed as soon as every party published. **No party takes the
coordinator's word for a round**: before it publishes, it verifies every earlier round of the chain
(signed manifests of the same base, phenotype, coordinator and roster, in order), adds their
shares itself and replays the Newton steps and the saddlepoint solver; a step's coefficients must
be the ones it computed (it then uses its own), the ``t`` values it evaluates are its own replay's,
and a step after the fit converged, a scan before it, a saddlepoint round after the equations were
solved or beyond :data:`MAX_SPA_ROUNDS` are refused, as is a chain of more than
:data:`MAX_NULL_STEPS`. A coordinator therefore cannot make parties reveal sums at coefficients or
``t`` values of its choosing, which would reveal far more of their samples than the fit.

What the study does not do yet: LOCO offsets (``--pred``) and sex chromosomes (the variant list
must be autosomal).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from ..config import ModelSettings
from ..errors import ConfigError, ModelError
from ..multiparty import ProtocolError

log = logging.getLogger("dash_spark")

#: the study kinds of a score study's rounds
KIND_BASE, KIND_NULL, KIND_SCAN, KIND_SPA = "score", "null-step", "score-scan", "spa-step"
KINDS = (KIND_BASE, KIND_NULL, KIND_SCAN, KIND_SPA)
#: the most Newton steps a party takes part in (fit_null's own limit)
MAX_NULL_STEPS = 50
#: the most saddlepoint rounds (a tail still unsolved after them keeps the score test's p)
MAX_SPA_ROUNDS = 40
#: header values every party's share of a round must agree on
BASE_AGREE = ["phenotypes", "covariates", "kind", "variant_hash", "n_variants"]
STEP_AGREE = ["kind", "phenotype", "step", "variant_hash"]
#: a step's coefficients must equal the party's own to this relative tolerance (the same pooled
#: sums; only the order of floating-point operations may differ between machines)
GAMMA_RTOL = 1e-8


class _NeedStep(Exception):
    def __init__(self, gamma: np.ndarray):
        super().__init__("another Newton step")
        self.gamma = gamma


def replay_null(start: tuple, steps: list[tuple], k: int):
    """The null model's Newton iteration (:func:`~dash_spark.stats.score.fit_null`) on recorded
    pooled sums: ``start`` = ``(C'C, C'z, 0)`` and each step's ``(C'WC, C'(y - mu), loglik)``.
    Returns ``(fit, None)`` when the fit ended on exactly these steps (converged or not), or
    ``(None, gamma)`` when it needs another step at ``gamma``; a step recorded after the fit ended
    is a :class:`ProtocolError` (nobody needed its sums)."""
    from ..stats.score import fit_null

    used = [0]

    def sums(gamma):
        if gamma is None:
            return start
        if used[0] == len(steps):
            raise _NeedStep(gamma)
        used[0] += 1
        return steps[used[0] - 1]

    try:
        fit = fit_null(sums, k, max_iter=MAX_NULL_STEPS)
    except _NeedStep as need:
        return None, need.gamma
    if used[0] != len(steps):
        raise ProtocolError(f"the null model's fit ended after {used[0]} Newton step(s), but the chain has "
                            f"{len(steps)}; a step after the fit ended reveals sums no fit needs")
    return fit, None


def start_sums(moments) -> tuple:
    """glm.fit's start from a phenotype's pooled :class:`~dash_spark.stats.sufficient.Moments` (y 0/1):
    ``(C'C, C'z, 0)`` with ``z = 4.8639 (y - 1/2)`` (:func:`~dash_spark.stats.score.null_sums`)."""
    return moments.CtC, 4.863891244002886 * (moments.Cty - 0.5 * moments.Ct1), 0.0


def _step_sums(pooled: dict) -> tuple:
    return pooled["H"], pooled["grad"], float(pooled["loglik"][0])


@dataclasses.dataclass(frozen=True)
class PooledScan:
    """The scan round's pooled sums, finalized: the score test (:class:`~dash_spark.stats.score.ScoreStats`),
    the variants the saddlepoint corrects (``rows``) and, for each, ``b = (C'WC)^-1 C'Wx``
    [shape: (len(rows), k)], so that ``g = x - C b`` (missing calls at the pooled mean)."""

    sums: dict
    st: object
    few: bool
    rows: np.ndarray
    coef: np.ndarray

    @classmethod
    def of(cls, pooled: dict, k: int, n: int) -> PooledScan:
        from ..stats.score import score_stats, spa_rows

        V = pooled["variants"]
        a = k + 4
        SX, SXX, SM = V[:, :a], V[:, a], V[:, a + 1 :]
        st = score_stats(SX, SXX, SM, pooled["CtWC"], n, float(pooled["wsum"][0]))
        few = n <= k + 1
        rows = spa_rows(st, few=few)
        CWx = SX[rows, 1 : k + 1] + st.mean[rows][:, None] * SM[rows, 1 : k + 1]
        coef = np.linalg.solve(pooled["CtWC"], CWx.T).T if len(rows) else np.zeros((0, k))
        return cls({"SX": SX, "SM": SM, "n_freq": float(pooled["n_freq"][0])}, st, few, rows, coef)

    def tails(self):
        """The saddlepoint tails of the corrected variants' scores, not yet fed (:class:`LockstepTails`)."""
        from ..stats.score import LockstepTails

        return LockstepTails(self.st.U[self.rows])


# ------------------------------------------------------------------------------------------------
# the party's side


def party_config(settings: ModelSettings, source: dict):
    """The party's statistics-model config of a score study (the base round's model options): its
    case/control phenotypes coded 0/1, sex chromosomes not modelled (they are refused)."""
    return settings.scan_config(source, sex_chromosomes=False, binary_test="score")


@dataclasses.dataclass(frozen=True)
class PartyData:
    """A party's statistics model and, per phenotype, its covariates C (with the intercept), y
    (0/1) and sample mask, in .fam order (zero outside the mask)."""

    cfg: object
    model: object
    C: tuple
    y: tuple
    mask: tuple

    @classmethod
    def build(cls, settings: ModelSettings, source: dict, *, where: str) -> PartyData:
        from ..scanner.model import statistics_model
        from ..stats.sexchrom import sex_chrom_class

        cfg = party_config(settings, source)
        model = statistics_model(cfg)
        quantitative = [p for p in model.phenotypes if p not in model.logistic_phenotypes]
        if quantitative:
            raise ConfigError(f"{where}: phenotype(s) {', '.join(quantitative)} are not case/control as plink2 reads "
                              "them (1 control, 2 case, 0/-9/NA missing; --1: 0/1); a score study takes case/control "
                              "phenotypes only. Leave them out with --pheno-name")
        chroms = sorted({str(c) for c in np.asarray(model.bim.chrom)[model.variants] if sex_chrom_class(c)})
        if chroms:
            raise ConfigError(f"{where}: variants on {', '.join(chroms)}; a score study tests autosomes only (the "
                              "sex chromosomes' models are not built for it yet). Give every party the autosomes "
                              "alone (plink2 --chr 1-22 --make-bed)")
        n = model.n_samples
        Cs, ys, masks = [], [], []
        for pat in model.patterns:  # one pattern per phenotype: [C (masked) | y | mask] (statistics model)
            a, k = pat.a_offset, pat.k
            Cs.append(model.W[:n, a : a + k])
            ys.append(model.W[:n, a + k])
            masks.append(model.W[:n, a + k + 1] > 0)
        return cls(cfg, model, tuple(Cs), tuple(ys), tuple(masks))


def _load_round(uri: str, study: str, round_id, verify: Callable, *, who: str):
    """A round of the chain: a valid round id, its manifest at its place in this exchange, accepted
    by ``verify(manifest)`` (a party: signed by the pinned coordinator, every key pinned; the
    coordinator: signed by its own key)."""
    from ..multiparty.exchange import ROUND_ID_RE, Location, locate_manifest

    if not isinstance(round_id, str) or not ROUND_ID_RE.fullmatch(round_id):  # it becomes a path of the exchange
        raise ProtocolError(f"{who}: the chain names round {round_id!r}, which is not a round id; nothing was "
                            "published")
    loc = Location(uri)
    root, manifest = locate_manifest(loc.show(loc.join(study, round_id, "manifest.json")))
    if root.rstrip("/") != uri.rstrip("/") or (manifest.study, manifest.round_id) != (study, round_id):
        raise ProtocolError(f"{who}: round {round_id!r} of the chain is not in this exchange's study {study!r}")
    verify(manifest)
    return manifest


def _chain_round(uri: str, study: str, round_id, *, verify: Callable, who: str, kind: str, what: str, parties: dict,
                 coordinator, **expect):
    """A round the chain names: verified (:func:`_load_round`), of ``kind``, with the settings
    ``expect``, the roster ``parties`` and the ``coordinator``."""
    m = _load_round(uri, study, round_id, verify, who=who)
    ms = m.settings
    if (ms.get("kind") != kind or any(ms.get(key) != value for key, value in expect.items())
            or m.coordinator != coordinator or m.parties != parties):
        raise ProtocolError(f"{who}: round {round_id!r} is not {what} of this chain (another kind, base, phenotype, "
                            "step, coordinator or roster); nothing was published")
    return m


def _round_list(value, limit: int, what: str, who: str) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"{who}: the round names no valid chain of {what} (at most {limit}); nothing was "
                            "published")
    return value


class Chain:
    """A step, scan or saddlepoint round's verified chain: the base round, its pooled sums and the
    null model's replay over the Newton steps; for a saddlepoint round, the scan round's pooled sums
    and the saddlepoint's replay over the earlier saddlepoint rounds."""

    def __init__(self, uri: str, manifest, trust, *, who: str):
        from ..multiparty.rounds import combine, verify_manifest
        from ..stats.sufficient import SufficientStats

        s = manifest.settings
        kind = s.get("kind")

        def verify(m) -> None:
            verify_manifest(uri, m, trust, who=who)

        link = partial(_chain_round, uri, manifest.study, verify=verify, who=who, parties=manifest.parties,
                       coordinator=manifest.coordinator)
        self.base = _load_round(uri, manifest.study, s.get("base_round"), verify, who=who)
        if self.base.settings.get("kind") != KIND_BASE or self.base.coordinator != manifest.coordinator:
            raise ProtocolError(f"{who}: the base round {self.base.round_id!r} is not a score study's base round of "
                                "this coordinator; nothing was published")
        rounds = _round_list(s.get("null_rounds"), MAX_NULL_STEPS, "Newton steps", who)
        headers, pooled = combine(uri, self.base, must_agree=BASE_AGREE)
        first = headers[sorted(headers)[0]]["extra"]
        self.phenotypes, self.covariates = list(first["phenotypes"]), list(first["covariates"])
        self.variant_hash = first["variant_hash"]
        t, name = s.get("phenotype_index"), s.get("phenotype")
        if not isinstance(t, int) or not 0 <= t < len(self.phenotypes) or self.phenotypes[t] != name:
            raise ProtocolError(f"{who}: phenotype {name!r} (index {t!r}) is not one of the base round's "
                                f"({', '.join(self.phenotypes)}); nothing was published")
        self.t, self.phenotype = t, name
        S = SufficientStats.from_arrays(pooled, self.phenotypes, self.covariates, "mean")
        self.moments = S.moments[t]
        self.k = len(self.covariates)
        mine = {"base_round": self.base.round_id, "phenotype": name, "phenotype_index": t}
        steps = []
        for i, rid in enumerate(rounds):
            m = link(rid, kind=KIND_NULL, what=f"step {i + 1}", step=i + 1, null_rounds=rounds[:i], **mine)
            steps.append(_step_sums(combine(uri, m, must_agree=STEP_AGREE)[1]))
        self.fit, self.need = replay_null(start_sums(self.moments), steps, self.k)
        if kind == KIND_NULL:
            if s.get("step") != len(steps) + 1:
                raise ProtocolError(f"{who}: the round is step {s.get('step')!r} but its chain holds {len(steps)} "
                                    "step(s); a step follows the one before it. Nothing was published")
            if self.need is None:
                raise ProtocolError(f"{who}: the null model's fit ended after {len(steps)} step(s); a further step "
                                    "would reveal sums no fit needs. Nothing was published")
            self.gamma = self.need
        else:
            if self.fit is None or not self.fit.converged:
                raise ProtocolError(f"{who}: the null model has not converged after the chain's {len(steps)} "
                                    "step(s); the scan round comes after its last step. Nothing was published")
            self.gamma = self.fit.gamma
        declared = np.asarray(s.get("gamma"), dtype=np.float64)
        if declared.shape != self.gamma.shape or not (
                np.max(np.abs(declared - self.gamma), initial=0.0)
                <= GAMMA_RTOL * (1.0 + np.max(np.abs(self.gamma), initial=0.0))):
            raise ProtocolError(f"{who}: the round's coefficients are not those of the pooled Newton steps this party "
                                "replayed from the chain's shares; nothing was published")
        self.scan = self.tails = None
        if kind == KIND_SPA:
            scan = link(s.get("scan_round"), kind=KIND_SCAN, what="the scan round", null_rounds=rounds, **mine)
            self.scan = PooledScan.of(combine(uri, scan, must_agree=STEP_AGREE)[1], self.k, self.moments.n)
            spa = _round_list(s.get("spa_rounds"), MAX_SPA_ROUNDS - 1, "saddlepoint rounds", who)
            self.tails = self.scan.tails()
            for i, rid in enumerate(spa):
                m = link(rid, kind=KIND_SPA, what=f"saddlepoint round {i + 1}", step=i + 1, scan_round=scan.round_id,
                         spa_rounds=spa[:i], null_rounds=rounds, **mine)
                self.tails.feed(combine(uri, m, must_agree=STEP_AGREE + ["requests"])[1]["K"])
            if s.get("step") != len(spa) + 1:
                raise ProtocolError(f"{who}: the round is saddlepoint round {s.get('step')!r} but its chain holds "
                                    f"{len(spa)}; a round follows the one before it. Nothing was published")
            if not self.tails.requests:
                raise ProtocolError(f"{who}: the saddlepoint equations were solved after {len(spa)} round(s); a "
                                    "further round would reveal sums no p-value needs. Nothing was published")


def run_party_score(manifest_path: str, party: str, key_path: str, *, source: dict, spark=None,
                    master: str | None = None, spark_conf: dict | None = None, trust: str | None = None,
                    wait: float = 0.0, share_stage: str | None = None) -> str:
    """``party compress`` on a score study's round (base, Newton step or scan): verify, compute,
    publish; returns the share's path."""
    from ..multiparty.rounds import TrustFile, publish_stats
    from .study import model_own_samples, open_round_to_publish, variant_hash, variant_table, wait_for_keys

    t0 = time.time()
    uri, manifest, keys, ledger, who = open_round_to_publish(manifest_path, party, key_path, trust, wait)
    kind = manifest.settings.get("kind")
    if source.get("pred"):
        raise ConfigError(f"{manifest_path}: a score study fits its null model without LOCO offsets; --pred is not "
                          "taken here yet (run REGENIE's binary-trait test per party, or the study without --pred)")
    if not any(source.get(k) for k in ("bfile", "pfile", "bgen")):
        raise ConfigError(f"{manifest_path}: a score study's rounds need this party's genotypes (their samples and "
                          "variants); pass --bfile PREFIX (or --pfile, --bgen)")
    chain = None
    if kind != KIND_BASE:
        chain = Chain(uri, manifest, TrustFile.load(trust), who=who)  # (trust: checked by the round's opening)
    settings = manifest.settings if chain is None else chain.base.settings
    options = ModelSettings.from_json(settings, where=manifest_path)
    data = PartyData.build(options, source, where=source.get("pheno") or manifest_path)
    model = data.model
    vt = variant_table(model.bim)
    vh = variant_hash(vt)
    declared = settings.get("variant_hash") if chain is None else chain.variant_hash
    if declared and declared != vh:
        raise ProtocolError(f"{who}: this party's variant list differs from the study's (hash {vh[:12]} vs "
                            f"{declared[:12]}); all parties use the same variants in the same order. Nothing was "
                            "published")
    own = model_own_samples(model)
    if chain is None:
        from ..scanner.pipeline import model_statistics
        import pyarrow.parquet as pq

        if options.pheno_names and list(model.phenotypes) != list(options.pheno_names):
            raise ProtocolError(f"{who}: phenotypes {list(model.phenotypes)} differ from the manifest's "
                                f"{list(options.pheno_names)}. Nothing was published")
        S = model_statistics(model, None)
        buf = io.BytesIO()
        pq.write_table(vt, buf)
        extra = {"phenotypes": list(S.phenotypes), "covariates": list(S.covariates), "kind": KIND_BASE,
                 "variant_hash": vh, "n_variants": int(model.bim.n_variants)}
        wait_for_keys(uri, manifest, wait, who=who)
        share = publish_stats(uri, manifest, party, keys, S.to_arrays(), extra, ledger=ledger,
                              files={"variants.parquet": buf.getvalue()}, own=own)
        log.info("party %s: score study base round: %d case/control phenotype(s) published in %.1f s", party,
                 len(S.phenotypes), time.time() - t0)
        return share
    if list(model.phenotypes) != chain.phenotypes or list(model.covariates) != chain.covariates:
        raise ProtocolError(f"{who}: phenotypes/covariates {list(model.phenotypes)}/{list(model.covariates)} differ "
                            f"from the base round's {chain.phenotypes}/{chain.covariates}. Nothing was published")
    t = chain.t
    C, y, mask = data.C[t], data.y[t], data.mask[t]
    extra = {"kind": kind, "phenotype": chain.phenotype, "step": manifest.settings.get("step"), "variant_hash": vh}
    if kind == KIND_NULL:
        from ..stats.score import null_sums

        H, grad, loglik = null_sums(C[mask], y[mask])(chain.gamma)
        share = publish_stats(uri, manifest, party, keys, {"H": H, "grad": grad, "loglik": np.array([loglik])},
                              extra, ledger=ledger, own=own)
        log.info("party %s: null model of %s, Newton step %d published", party, chain.phenotype,
                 manifest.settings["step"])
        return share
    if kind == KIND_SPA:
        return _publish_spa(uri, manifest, party, keys, ledger, chain, data, extra, own, spark=spark, master=master,
                            spark_conf=spark_conf, wait=wait, who=who)
    return _publish_scan(uri, manifest, party, keys, ledger, chain, data, extra, own, spark=spark, master=master,
                         spark_conf=spark_conf, share_stage=share_stage, t0=t0, wait=wait, who=who)


def score_share_weights(C: np.ndarray, y: np.ndarray, mask: np.ndarray, gamma: np.ndarray,
                        freq: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The scan round's kernel weights of one party (.fam order): A = ``[y - mu | W C | W | 1 | f]``
    (``f``: the allele-frequency samples) and B = ``[W]``, zero outside ``mask``; with ``C'WC`` and
    ``1'W1``."""
    from scipy import special

    from ..stats.score import score_weights

    mu = np.where(mask, special.expit(C @ gamma), 0.0)
    A, w = score_weights(C, y, mu, mask)
    A = np.column_stack([A[:, :-1], freq])  # (mu is not summed: the saddlepoint rounds use it at the party)
    return A, w, C[mask].T @ (C[mask] * w[mask])


def _publish_scan(uri, manifest, party, keys, ledger, chain, data, extra, own, *, spark, master, spark_conf,
                  share_stage, t0, wait, who) -> str:
    from ..multiparty.exchange import StagedStat
    from ..multiparty.rounds import open_publication
    from ..scanner.pipeline import plan_scan
    from ..scanner.jobs import run_ranges
    from ..spark.session import get_session, resolve_session
    from ..stats.kernel import pad_weights
    from .study import remove_stage, wait_for_keys
    from ..scanner.tasks import score_share_ranges

    model, t = data.model, chain.t
    n = model.n_samples
    freq = model.W[:n, model.n_a - 1]  # the statistics model's last A column: the frequency samples
    A, w, CtWC = score_share_weights(data.C[t], data.y[t], data.mask[t], chain.gamma, freq)
    W = pad_weights(A, w)
    wait_for_keys(uri, manifest, wait, who=who)
    pub = open_publication(uri, manifest, party, keys, ledger=ledger)
    spark = get_session(master=master, conf=spark_conf) if spark is None else resolve_session(spark)
    plan, ranges, _ = plan_scan(data.cfg, model, spark.sparkContext.defaultParallelism)
    plan = dataclasses.replace(plan, n_a=A.shape[1], patterns=())
    stage = pub.new_stage(share_stage)
    try:
        t1 = time.time()
        parts = sorted(run_ranges(spark, W, ranges, partial(score_share_ranges, plan, pub.part_writer("variants", stage))),
                       key=lambda p: p["start"])
        width = 2 * A.shape[1] + 1
        log.info("party %s: score test of %s: %d variants x %d sums masked and staged in %d parts (%.1f s)", party,
                 chain.phenotype, len(model.variants), width, len(parts), time.time() - t1)
        staged = {"variants": StagedStat((len(model.variants), width, 2), tuple(parts), stage)}
        dense = {"CtWC": CtWC, "wsum": np.array([float(w[data.mask[t]].sum())]),
                 "n": np.array([float(data.mask[t].sum())]), "n_freq": np.array([float(model.n_freq)])}
        share = pub.publish(dense, extra, staged=staged, own=own)
    finally:
        remove_stage(stage)
    log.info("party %s: score test share published in %.1f s: %s", party, time.time() - t0, share)
    return share


def _publish_spa(uri, manifest, party, keys, ledger, chain, data, extra, own, *, spark, master, spark_conf, wait,
                 who) -> str:
    """A saddlepoint round: ``(K, K', K'')`` over this party's samples at each requested ``t`` of the
    replayed tails (:class:`~dash_spark.stats.score.LockstepTails`), from its Spark tasks (the
    corrected variants' genotypes: ``g = x - C b``); a few numbers per corrected variant, published
    as one masked statistic."""
    from scipy import special

    from ..multiparty.rounds import publish_stats
    from ..scanner.pipeline import plan_scan
    from ..scanner.jobs import run_ranges
    from ..spark.session import get_session, resolve_session
    from .study import wait_for_keys
    from ..scanner.tasks import RangeRow, spa_cgf_ranges

    model, t = data.model, chain.t
    scan = chain.scan
    requests = chain.tails.requests
    spec: dict[int, tuple] = {}
    for j, tt in requests:  # per variant: its mean, b, and the t values asked of it (in request order)
        v = int(model.variants[scan.rows[j]])
        mean, coef, ts = spec.setdefault(v, (float(scan.st.mean[scan.rows[j]]), scan.coef[j], []))
        ts.append(float(tt))
    mask = data.mask[t]
    C = data.C[t][mask]
    mu = special.expit(C @ chain.gamma)
    spark = get_session(master=master, conf=spark_conf) if spark is None else resolve_session(spark)
    plan, _, _ = plan_scan(data.cfg, model, spark.sparkContext.defaultParallelism)
    variants = np.array(sorted(spec), dtype=np.int64)
    chunks = np.array_split(variants, max(1, min(len(variants), spark.sparkContext.defaultParallelism)))
    ranges = [RangeRow(i, int(c[0]), int(c[-1]) + 1, 0, 0, (c - c[0]).astype(int).tolist())
              for i, c in enumerate(chunks) if len(c)]
    got = dict(run_ranges(spark, (C, mu, mask), ranges, partial(spa_cgf_ranges, spec, plan)))
    at = {v: 0 for v in spec}
    values = np.empty((len(requests), 3))
    for r, (j, _) in enumerate(requests):
        v = int(model.variants[scan.rows[j]])
        values[r] = got[v][at[v]]
        at[v] += 1
    wait_for_keys(uri, manifest, wait, who=who)
    share = publish_stats(uri, manifest, party, keys, {"K": values}, dict(extra, requests=len(requests)),
                          ledger=ledger, own=own)
    log.info("party %s: saddlepoint round %d of %s: %d values of %d variant(s) published", party,
             manifest.settings["step"], chain.phenotype, len(requests), len(spec))
    return share


# ------------------------------------------------------------------------------------------------
# the coordinator's side


def _state_path(loc, base, phenotype: str) -> str:
    from .select import safe_state_name

    return loc.join(base.study, base.round_id, "score", f"{safe_state_name(phenotype)}.json")


def run_score_combine(manifest_path: str, out: str, *, pheno_name: str | None = None, sign_key: str | None = None,
                      trust: str | None = None, overwrite: bool = False, plots: bool = True,
                      a1freq_lower_limit: float = 0.0) -> dict:
    """The coordinator's side of a score study, one round per call (``combine --manifest BASE``).

    The first call closes the base round (``{"closed": survivor set}``; the survivors then run
    ``party unmask``). Each later call verifies and adds the base round's shares and those of
    every Newton step so far, replays the fit, and writes the next round's manifest (a step, or
    the scan round once the fit converged): ``{"next_manifest": path, "round": "step N"|"scan"}``,
    after which every party runs ``party compress`` on it. The call after the scan round writes
    ``<phenotype>.regenie``, ``results.parquet``, the summary and plots under ``out``:
    ``{"next_manifest": None, "out": out, "glm_paths": ...}``. The chain (the step and scan rounds)
    lives beside the base round, signed by the coordinator (``sign_key``), as is every manifest.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..multiparty.exchange import Location, Manifest, locate_manifest, read_share_file, write_manifest
    from ..multiparty.keys import load_private
    from ..multiparty.rounds import (TrustFile, check_manifest_signature, combine, key_fingerprint, read_signed,
                                    sign_manifest, signed_record, verify_manifest)
    from ..stats.sufficient import SufficientStats
    from ..outputs.staging import check_out_dir
    from .select import choose_phenotype
    from .study import close_base_round, variant_hash

    uri, base = locate_manifest(manifest_path)
    if base.settings.get("kind") != KIND_BASE:
        raise ConfigError(f"{manifest_path}: not a score study's base round (kind {base.settings.get('kind')!r}); "
                          "combine writes a step's results from the base round's manifest")
    if trust:
        verify_manifest(uri, base, TrustFile.load(trust), who=f"combine, round {base.round_id!r}")
    inputs = (uri,) if "://" not in uri else ()
    out = check_out_dir(out, overwrite=overwrite, inputs=inputs)
    ck = base.coordinator_keys()
    if not sign_key:
        raise ConfigError(f"combine --manifest {manifest_path}: a score study's rounds are written and signed by its "
                          "coordinator; pass --sign-key COORD.key")
    coordinator = load_private(sign_key)
    if ck is None or key_fingerprint(ck) != key_fingerprint(coordinator):
        raise ProtocolError(f"combine {manifest_path}: --sign-key is not the study coordinator's key; it signs the "
                            "null model's chain and every round's manifest")
    body = close_base_round(uri, base, sign_key)
    if body is not None:
        return {"closed": body, "next_manifest": None}
    headers, pooled = combine(uri, base, must_agree=BASE_AGREE)
    counted = sorted(headers)
    roster = {p: base.parties[p] for p in counted}  # every later round's parties: the base round's survivors
    first = headers[counted[0]]["extra"]
    phenos, covs = list(first["phenotypes"]), list(first["covariates"])
    t, k = choose_phenotype(phenos, pheno_name, where=manifest_path, what="study",
                            why=" (each has its own null model)"), len(covs)
    pheno_name = phenos[t]
    S = SufficientStats.from_arrays(pooled, phenos, covs, "mean")
    mom = S.moments[t]
    cases = int(round(float(mom.yty)))  # y is 0/1: y'y counts the cases
    if k == 0 or not 0 < cases < mom.n:
        raise ModelError(f"study {base.study!r}, phenotype {pheno_name}: {cases} cases among {mom.n} pooled samples "
                         f"and {k} covariate columns; the null model needs both cases and controls and at least an "
                         "intercept")
    loc = Location(uri)
    state_path = _state_path(loc, base, pheno_name)
    if loc.exists(state_path):
        state = read_signed(loc, state_path, ck, what="score study state", who=f"coordinator {ck.party!r}")
    else:
        state = {"phenotype": pheno_name, "null_rounds": [], "scan": None, "spa_rounds": []}

    def verify(m) -> None:  # a round of this chain as this coordinator signed it (an exchange writer's copy is refused)
        check_manifest_signature(uri, m, ck, who=f"combine, round {m.round_id!r}")

    chained = partial(_chain_round, uri, base.study, verify=verify, who=f"combine {manifest_path}", parties=roster,
                      coordinator=base.coordinator, base_round=base.round_id, phenotype=pheno_name)

    def own_round(rid: str, kind: str):
        return chained(rid, kind=kind, what=f"a {kind} round of this study's {pheno_name} chain")

    steps = []
    for rid in state["null_rounds"]:
        steps.append(_step_sums(combine(uri, own_round(rid, KIND_NULL), must_agree=STEP_AGREE)[1]))
    fit, need = replay_null(start_sums(mom), steps, k)
    common = {"base_round": base.round_id, "phenotype": pheno_name, "phenotype_index": t,
              "null_rounds": list(state["null_rounds"]), "variant_hash": first["variant_hash"], "self_masks": False}

    def next_round(settings: dict, what: str) -> dict:
        nxt = Manifest.new(base.study, roster, dict(common, **settings), coordinator=ck)
        path = write_manifest(uri, nxt)
        sign_manifest(uri, nxt, coordinator)
        if settings["kind"] == KIND_NULL:
            state["null_rounds"].append(nxt.round_id)
        elif settings["kind"] == KIND_SCAN:
            state["scan"] = nxt.round_id
        else:
            state["spa_rounds"].append(nxt.round_id)
        loc.mkdir(state_path.rsplit("/", 1)[0])
        loc.write_atomic(state_path, signed_record(state, coordinator), what="score study state")
        log.info("combine: score study %s, %s: %s; parties: party compress --manifest %s", base.study, pheno_name,
                 what, path)
        return {"next_manifest": path, "round": what}

    if need is not None:
        j = len(steps) + 1
        return next_round({"kind": KIND_NULL, "step": j, "gamma": [float(g) for g in need]}, f"step {j}")
    if not fit.converged:
        raise ModelError(f"study {base.study!r}, phenotype {pheno_name}: the null model (the phenotype on the "
                         f"covariates alone) did not converge in {fit.iterations} Newton steps; a covariate may "
                         "separate cases from controls")
    if state["scan"] is None:
        return next_round({"kind": KIND_SCAN, "step": None, "gamma": [float(g) for g in fit.gamma]}, "scan")
    scan = own_round(state["scan"], KIND_SCAN)
    _, sp = combine(uri, scan, must_agree=STEP_AGREE)
    if int(round(float(sp["n"][0]))) != mom.n:
        raise ProtocolError(f"round {scan.round_id!r}: its pooled sample count differs from the base round's")
    pscan = PooledScan.of(sp, k, mom.n)
    tails = pscan.tails()
    spa = state.setdefault("spa_rounds", [])
    for rid in spa:
        tails.feed(combine(uri, own_round(rid, KIND_SPA), must_agree=STEP_AGREE + ["requests"])[1]["K"])
    if tails.requests and len(spa) < MAX_SPA_ROUNDS:
        j = len(spa) + 1
        return next_round({"kind": KIND_SPA, "step": j, "scan_round": scan.round_id, "spa_rounds": list(spa),
                           "gamma": [float(g) for g in fit.gamma]}, f"saddlepoint round {j}")
    vt = pq.read_table(pa.BufferReader(read_share_file(uri, base, counted[0], headers[counted[0]],
                                                       "variants.parquet")))
    if variant_hash(vt) != first["variant_hash"]:
        raise ProtocolError(f"{uri}: the published variant list does not match the parties' declared hash; the "
                            "exchange was altered")
    ln_p = tails.log_pvalues()
    if len(ln_p) and not np.isfinite(ln_p).all():
        log.warning("combine: %d of %d saddlepoint p-values unsolved after %d rounds; those variants keep the "
                    "score test's p", int((~np.isfinite(ln_p)).sum()), len(ln_p), len(spa))
    table = score_results(pscan, vt, pheno_name, ln_p, a1freq_lower_limit=a1freq_lower_limit)
    from ..outputs.writers import OutputModel, write_outputs_local
    from ..outputs.staging import staged_output

    model = OutputModel(phenotypes=(pheno_name,), covariates=tuple(covs), n_variants=vt.num_rows,
                        logistic_phenotypes=(pheno_name,), score_phenotypes=(pheno_name,),
                        counts={"pooled_samples": {pheno_name: mom.n}, "cases": {pheno_name: cases},
                                "parties": len(counted), "survivors": counted,
                                "null_model_steps": len(steps), "saddlepoint_rounds": len(spa),
                                "saddlepoint_variants": int(len(pscan.rows))})
    with staged_output(out, overwrite=overwrite, inputs=inputs, command="combine") as stage:
        glm, _ = write_outputs_local(stage.path, table, model, plots=plots)
        written = {name: stage.final(path) for name, path in glm.items()}
    log.info("combine: score study %s, %s: %d variants, %d pooled samples (%d cases), null model in %d steps, "
             "%d variant(s) saddlepoint-corrected in %d rounds; outputs in %s", base.study, pheno_name, vt.num_rows,
             mom.n, cases, len(steps), len(pscan.rows), len(spa), out)
    return {"next_manifest": None, "out": out, "glm_paths": written}


def score_results(pscan: PooledScan, variants, phenotype: str, spa_log_p: np.ndarray, *,
                  a1freq_lower_limit: float = 0.0):
    """The results table of the pooled score test: the scan round's :class:`PooledScan`, the variant
    list, and the saddlepoint log p of its corrected variants (``pscan.rows``; NaN: the score test's
    p stays)."""
    import pyarrow as pa

    from ..stats.results import results_batch
    from ..stats.score import score_variant_stats

    ln_p = np.asarray(spa_log_p, dtype=np.float64)

    def spa(rows: np.ndarray) -> np.ndarray:
        assert np.array_equal(rows, pscan.rows)  # noqa: S101 - the same rule chose them
        return ln_p

    vs = score_variant_stats(pscan.st, few=pscan.few, spa=spa)
    SX, SM = pscan.sums["SX"], pscan.sums["SM"]
    k = SX.shape[1] - 4
    m = SX.shape[0]
    meta = tuple(np.asarray(variants.column(c).to_numpy(zero_copy_only=False)) for c in ("chrom", "id", "pos", "alt",
                                                                                       "ref"))
    batch = results_batch(np.arange(m, dtype=np.int64), meta, SX[:, k + 3], pscan.sums["n_freq"] - SM[:, k + 3],
                          [(phenotype, vs)], count_alt=False, a1freq_floor=a1freq_lower_limit)
    return pa.Table.from_batches([batch])
