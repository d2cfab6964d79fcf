"""A multi-party study's two commands, composed from the layers below them.

- :func:`run_party_compress`: a party computes its additive statistics ``S``
  (:class:`~dash_spark.stats.sufficient.SufficientStats`; Spark, the same kernel as the scan),
  encodes, masks, signs and publishes them (:mod:`dash_spark.multiparty`, which knows nothing but
  arrays, manifests, keys and the exchange);
- :func:`run_combine`: anyone verifies every share, adds them in the ring, decodes the pooled
  ``S`` and finalizes it, writing the outputs of ``dash-spark scan`` for the pooled samples.

A party never publishes anything but its masked, signed share (and the public variant list that
every party must share anyway).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from ..config import ModelSettings
from ..errors import ConfigError
from ..multiparty import ProtocolError
from ..multiparty.exchange import Manifest, locate_manifest, read_share_file
from ..multiparty.guard import OwnSamples
from ..multiparty.keys import fingerprint, load_private
from ..multiparty.rounds import (CloseRecord, GuardSettings, Ledger, TrustFile, close_if_complete, combine,
                                join_round, publish_stats, read_round_keys, read_survivors, unmask_round,
                                verify_manifest, wait_for_shares)

if TYPE_CHECKING:  # imported where used: a round's close loads neither Arrow's Parquet nor the statistics
    import pyarrow as pa

    from ..multiparty.exchange import ShareSum
    from ..stats.sufficient import SufficientStats

#: how often a waiting step looks at the exchange again (each look is a few small reads)
POLL_SECONDS = 0.2
#: how often a coordinator waiting for the shares, or a survivor waiting for the close and the
#: others' steps (confirmations, counts) on a file-system exchange, looks again (a few stat calls):
#: each step follows this soon
SHARE_POLL_SECONDS = 0.05

log = logging.getLogger("dash_spark")

VARIANT_COLUMNS = ("chrom", "pos", "id", "ref", "alt")
#: header values every party's share must agree on
AGREE = ["phenotypes", "covariates", "kind", "variant_hash", "n_variants", "missing_genotypes", "loco_offsets"]


def variant_table(bim) -> pa.Table:
    """The variant list ``chrom, pos, id, ref, alt`` of a source's variants, as Arrow."""
    import pyarrow as pa

    def text(values):
        return pa.array(values, type=pa.string())

    return pa.table({"chrom": text(bim.chrom), "pos": pa.array(bim.pos, type=pa.int64()), "id": text(bim.id),
                     "ref": text(bim.ref), "alt": text(bim.alt)})


def variant_hash(table: pa.Table) -> str:
    """sha256 over the variant list (chrom, pos, id, ref, alt in order): what parties must share."""
    import pyarrow as pa
    import pyarrow.compute as pc

    h = hashlib.sha256()
    for name in VARIANT_COLUMNS:  # the bytes of "<value>\t" per value, then "\n", column by column
        col = table.column(name).cast(pa.string())
        for chunk in col.chunks:  # "<value>\t" per value, hashed from Arrow's data buffer (no Python strings)
            if len(chunk):
                joined = pc.binary_join_element_wise(chunk, pa.scalar(""), "\t").cast(pa.large_string())
                offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset:joined.offset + len(joined) + 1]
                h.update(memoryview(joined.buffers()[2])[int(offsets[0]):int(offsets[-1])])
        h.update(b"\n")
    return h.hexdigest()


def check_party(manifest: Manifest, party: str, keys) -> None:
    """The party is in the manifest and ``keys`` are the ones registered for it."""
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


def regression_party_stats(pheno: str, covar: str | None, settings: ModelSettings) -> SufficientStats:
    """Note section 2: per-phenotype ``n, C'C, C'1, C'y, y'y`` over the party's samples with the
    phenotype and every covariate (samples matched by IID between the two tables)."""
    return _regression_party(pheno, covar, settings)[0]


def _regression_party(pheno: str, covar: str | None, settings: ModelSettings) -> tuple[SufficientStats, OwnSamples]:
    """:func:`regression_party_stats` and the party's own samples (the release guard's)."""
    from ..io.tables import match_samples, read_sample_table
    from ..stats.sufficient import Moments, SufficientStats

    ph = read_sample_table(pheno, kind="pheno", names=list(settings.pheno_names) if settings.pheno_names else None)
    tables = [ph]
    if covar:
        tables.append(read_sample_table(covar, kind="covar",
                                        names=list(settings.covar_names) if settings.covar_names else None))
    rows, _ = match_samples(ph.iids, tables)
    ok = (rows >= 0).all(axis=0)
    Y = ph.values[rows[0, ok]]
    parts, names = [], []
    if settings.intercept:
        parts.append(np.ones((int(ok.sum()), 1)))
        names.append("(intercept)")
    if covar:
        parts.append(tables[1].values[rows[1, ok]])
        names += list(tables[1].names)
    C = np.hstack(parts)
    complete = ~np.isnan(C).any(axis=1)
    moments = []
    used = np.zeros(len(complete), dtype=bool)
    for t in range(Y.shape[1]):
        mask = complete & ~np.isnan(Y[:, t])
        used |= mask
        moments.append(Moments.of(C[mask], Y[mask, t]))
    log.info("party statistics: %d phenotype(s), %d covariate column(s), %d samples with complete data",
             Y.shape[1], C.shape[1], int(complete.sum()))
    own = OwnSamples(tuple(ph.names), tuple(m.n for m in moments),
                     tuple(map(str, np.asarray(ph.iids)[rows[0, ok]][used])))
    return SufficientStats(phenotypes=tuple(ph.names), covariates=tuple(names), mode="mean",
                           moments=tuple(moments), n_freq=0), own


def party_context(manifest_path: str, party: str, key_path: str, trust_path: str | None):
    """``(exchange root, manifest, keys, ledger, trust)`` after every check that needs no data: the
    manifest is the exchange's own, signed by a pinned coordinator, its roster pinned."""
    uri, manifest = locate_manifest(manifest_path)
    keys = load_private(key_path)
    check_party(manifest, party, keys)
    trust = TrustFile.load(trust_path) if trust_path else None
    if trust is None:
        raise ConfigError(f"party {party}: --trust FILE is required (the pinned keys of the coordinator and the "
                          "parties); record them with `dash-spark party trust`")
    return uri, manifest, keys, Ledger(key_path), trust


def run_join(manifest_path: str, party: str, key_path: str, *, trust: str | None) -> str:
    """``party join``: check the round and publish this party's round key (before any data is read)."""
    uri, manifest, keys, ledger, trust_file = party_context(manifest_path, party, key_path, trust)
    join_round(uri, manifest, party, keys, ledger, trust=trust_file)
    log.info("party %s joined study %s round %s", party, manifest.study, manifest.round_id)
    return f"{manifest.study}/{manifest.round_id}"


def wait_for_keys(uri: str, manifest: Manifest, wait: float, *, who: str) -> None:
    deadline = time.time() + max(0.0, wait)
    while True:
        _, missing = read_round_keys(uri, manifest)
        if not missing:
            return
        if time.time() >= deadline:
            raise ProtocolError(f"{who}: waiting for the round keys of {', '.join(missing)}; every party runs "
                                "`dash-spark party join` first (or pass --wait SECONDS). Nothing was published")
        time.sleep(POLL_SECONDS)


def open_round_to_publish(manifest_path: str, party: str, key_path: str, trust: str | None, wait: float):
    """Everything a party checks before computing a share (its join included): the round is
    authentic and this party's to join, it has not published in it, the round is not closed, and
    (without ``wait``) every other party's round key is already there. Returns ``(exchange root,
    manifest, keys, ledger, who)``."""
    uri, manifest, keys, ledger, trust_file = party_context(manifest_path, party, key_path, trust)
    who = f"party {party!r}, round {manifest.round_id!r}"
    join_round(uri, manifest, party, keys, ledger, trust=trust_file)
    ledger.check_unpublished(manifest, party, who=who)
    if read_survivors(uri, manifest) is not None:
        raise ProtocolError(f"{who}: the round is closed (its survivors are fixed); a late share would not count. "
                            "Nothing was computed or published")
    if wait <= 0:
        wait_for_keys(uri, manifest, 0, who=who)
    return uri, manifest, keys, ledger, who


def run_party_compress(manifest_path: str, party: str, key_path: str, *, pheno: str, covar: str | None,
                       bfile: str | None, features: str | None = None, feature_samples: str | None = None,
                       pfile: str | None = None, bgen: str | None = None, bgen_ref: str | None = None,
                       sample: str | None = None, id_delim: str | None = None, spark=None,
                       master: str | None = None, spark_conf: dict | None = None, task_memory_mb: int = 256,
                       trust: str | None = None,
                       wait: float = 0.0, pred: str | None = None, share_stage: str | None = None) -> str:
    """Compute this party's statistics, encode, mask, sign and publish them; return the share path.

    Every check that needs no data runs first: the manifest (the exchange's own, signed by the pinned
    coordinator, every party's key pinned), the ledger (a new round, no earlier publication), the
    round keys (this party joins if it has not; the others' keys must be there, or arrive within
    ``wait`` seconds). Then the phenotypes/covariates/variants are checked against the manifest,
    and only then does Spark run. A scan study's tasks stage their masked rows in ``share_stage``
    (default: a fresh private directory beside the key's round secrets; on a cluster, a location
    that the executors and the driver both reach and nobody else reads), removed afterwards.
    """
    t0 = time.time()
    uri, manifest, keys, ledger, who = open_round_to_publish(manifest_path, party, key_path, trust, wait)
    settings = manifest.settings
    options = ModelSettings.from_json(settings, where=manifest_path)
    kind = "scan" if (bfile or features or pfile or bgen) else "regression"
    if settings.get("kind") and settings["kind"] not in (kind, "select-step"):
        raise ConfigError(f"{manifest_path}: study {manifest.study!r} is a {settings['kind']} study; "
                          + ("pass --bfile PREFIX or --features" if settings["kind"] == "scan" else "drop --bfile/--features"))
    log.info("study %s, round %s: party %s (key %s), %s study", manifest.study, manifest.round_id, party,
             fingerprint(keys), kind)
    files = None
    if kind == "regression":
        from ..outputs.writers import check_output_names

        S, own = _regression_party(pheno, covar, options)
        check_output_names(S.phenotypes, where=pheno)
        extra = {"phenotypes": list(S.phenotypes), "covariates": list(S.covariates), "kind": kind}
    else:
        from ..multiparty.exchange import StagedStat
        from ..multiparty.rounds import open_publication
        from ..scanner.pipeline import model_statistics, stage_model_share
        from ..scanner.model import statistics_model

        from ..spark.session import SessionStarter

        starter = spark if isinstance(spark, SessionStarter) else None  # started by the command
        if spark is None:
            # the JVM starts (and warms its Python workers) while the driver reads the tables and builds the model
            starter = SessionStarter(master, spark_conf, share=True)
        cfg = options.scan_config({"bfile": bfile, "features": features, "feature_samples": feature_samples,
                                   "pfile": pfile, "bgen": bgen, "bgen_ref": bgen_ref, "sample": sample,
                                   "id_delim": id_delim, "pheno": pheno, "covar": covar, "pred": pred},
                                  sex_chromosomes=True, task_memory_mb=task_memory_mb)
        model = statistics_model(cfg)
        vt = variant_table(model.bim)
        vh = variant_hash(vt)
        if settings.get("variant_hash") and settings["variant_hash"] != vh:
            raise ProtocolError(f"{party}: the variant list of {bfile or features or pfile or bgen} differs from the "
                                f"manifest's (hash {vh[:12]} vs {settings['variant_hash'][:12]}); all parties must "
                                "use the same variants in the same order. Nothing was published")
        _agree("phenotypes", list(model.phenotypes), options.pheno_names, party)
        # the encoding kernels load their compiled code while Spark starts; the tasks mask with every
        # party's round key, so all must be in before the job
        threading.Thread(target=_load_encoding, daemon=True).start()
        wait_for_keys(uri, manifest, wait, who=who)
        pub = open_publication(uri, manifest, party, keys, ledger=ledger)
        if starter is not None:
            spark = starter.get()
        S = model_statistics(model, None)
        extra = {"phenotypes": list(S.phenotypes), "covariates": list(S.covariates), "kind": kind,
                 "variant_hash": vh, "n_variants": int(model.bim.n_variants), "missing_genotypes": S.mode,
                 "loco_offsets": bool(S.offsets)}
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(vt, buf)
        files = {"variants.parquet": buf.getvalue()}
        stage = pub.new_stage(share_stage)
        try:
            # each task encodes, masks (the per-variant statistic's keys only) and stages its rows in
            # this private location; they reach the exchange only when the driver publishes
            t1 = time.time()
            parts = stage_model_share(spark, cfg, model, pub.part_writer("variants", stage))
            log.info("party %s: %d variants x %d statistics compressed, masked and staged in %d parts (%.1f s)",
                     party, len(model.variants), S.layout.width, len(parts), time.time() - t1)
            staged = {"variants": StagedStat((len(model.variants), S.layout.width, 2), tuple(parts), stage)}
            share = pub.publish(S.to_arrays(), extra, files=files, staged=staged, own=model_own_samples(model))
        finally:
            remove_stage(stage)
        log.info("party %s: share published in %.1f s: %s", party, time.time() - t0, share)
        return share
    wait_for_keys(uri, manifest, wait, who=who)
    share = publish_stats(uri, manifest, party, keys, S.to_arrays(), extra, ledger=ledger, files=files, own=own)
    log.info("party %s: share published in %.1f s: %s", party, time.time() - t0, share)
    return share


def model_own_samples(model) -> OwnSamples:
    """A statistics model's own samples: its IIDs analysed for some phenotype, each phenotype's count."""
    return OwnSamples(tuple(model.phenotypes), tuple(m.n for m in model.moments), model.sample_ids or ())


def remove_stage(stage: str) -> None:
    """Remove the stage directory this run created (after publishing it holds nothing)."""
    from ..multiparty.exchange import Location

    import pyarrow as pa

    loc = Location(stage)
    try:
        loc.fs.delete_dir(loc.path)
    except (OSError, pa.ArrowException):
        log.warning("could not remove the share stage %s; remove it by hand (it holds masked rows only)", stage)


def _load_encoding() -> None:
    from ..multiparty.encoding import encode

    encode(np.zeros(1))


def run_unmask(manifest_path: str, party: str, key_path: str, *, trust: str | None, wait: float = 0.0,
               min_release_delta: int = 20, min_n: int = 20, allow_small_release: bool = False) -> str:
    """``party unmask``: this survivor's side of a closed round (:func:`~dash_spark.multiparty.rounds.unmask_round`):
    confirm the survivor set, reveal the guard counts' keys, check the pooled counts against this
    party's release memory, reveal its seeds; each step once the other survivors have done the one
    before, waiting up to ``wait`` seconds for them. Returns the reveal's path, or what it waits for
    (run it again)."""
    uri, manifest, keys, ledger, trust_file = party_context(manifest_path, party, key_path, trust)
    who = f"party {party!r}, round {manifest.round_id!r}"
    verify_manifest(uri, manifest, trust_file, who=who)
    guard = GuardSettings(min_delta=min_release_delta, min_n=min_n, override=allow_small_release)
    deadline = time.time() + max(0.0, wait)
    while True:
        done, what = unmask_round(uri, manifest, party, keys, ledger, guard=guard, who=who)
        if done:
            log.info("party %s: round %s unmasked (%s)", party, manifest.round_id, what)
            return what
        if time.time() >= deadline:
            log.info("party %s: round %s: waiting for %s; run party unmask again (or pass --wait SECONDS)",
                     party, manifest.round_id, what)
            return f"waiting for {what}"
        # each step waits for a few small signed files (the close, the others' steps): often on a local
        # or shared file system (a stat call), less often on an object store (a request each)
        time.sleep(SHARE_POLL_SECONDS if "://" not in uri or uri.startswith("file://") else POLL_SECONDS)


def close_base_round(uri: str, base: Manifest, sign_key: str) -> dict | None:
    """A multi-round protocol's base round (selection, a score study): the coordinator's first call
    closes it and returns the signed survivor set (the survivors then run ``party unmask``); later
    calls write back the set this coordinator signed should the exchange have lost it, and return
    None."""
    coordinator = load_private(sign_key)
    record = CloseRecord(sign_key)
    if base.self_masks and record.get(base) is not None:
        close_if_complete(uri, base, coordinator, record=record)  # the set it signed (written back if lost)
    elif base.self_masks and read_survivors(uri, base) is None:
        return close_if_complete(uri, base, coordinator, record=record)
    return None


def combine_study(manifest_path: str, *, sign_key: str | None = None, allow_dropouts: bool = False,
                  trust: str | None = None, wait: float = 0.0,
                  partial: ShareSum | None = None) -> tuple[Manifest, dict, SufficientStats | None]:
    """Close the round if needed (``sign_key``: the coordinator's key), then verify the counted
    shares, add and unmask them: ``(manifest, first party's header extra, pooled S)``; S is ``None``
    when this call closed the round (the survivors must unmask before the sum can be taken). A scan
    study's pooled ``S`` carries the variant list published inside the first survivor's share.
    ``wait``: the coordinator (without ``allow_dropouts``) waits that long for every party's share
    before closing, adding each to ``partial`` (a :class:`~dash_spark.multiparty.exchange.ShareSum`)
    as it lands; on a closed round, the shares are added (or ``partial`` used), then the survivors'
    reveals awaited."""
    uri, manifest = locate_manifest(manifest_path)
    if trust:
        verify_manifest(uri, manifest, TrustFile.load(trust), who=f"combine round {manifest.round_id!r}")
    record = CloseRecord(sign_key) if sign_key else None
    coordinator = load_private(sign_key) if sign_key else None
    if manifest.self_masks and record is not None and record.get(manifest) is not None:
        # this coordinator closed the round before: the same signed set (written back if the exchange
        # lost it); another set on the exchange is refused
        close_if_complete(uri, manifest, coordinator, record=record)
    elif manifest.self_masks and read_survivors(uri, manifest) is None:
        if coordinator is not None and not allow_dropouts and wait > 0:
            # each share is verified and added as it lands; then the round closes (or names who is missing)
            wait_for_shares(uri, manifest, wait, poll=SHARE_POLL_SECONDS, into=partial)
        body = close_if_complete(uri, manifest, coordinator, allow_dropouts=allow_dropouts, record=record)
        log.info("combine: round %s closed with survivors %s (dropped: %s); each survivor now runs party unmask",
                 manifest.round_id, ", ".join(body["survivors"]), ", ".join(body["dropped"]) or "none")
        return manifest, {"closed": body}, None
    import pyarrow.parquet as pq

    from ..outputs.writers import check_output_names
    from ..stats.sufficient import SufficientStats

    headers, pooled = combine(uri, manifest, must_agree=AGREE, wait=wait, poll=SHARE_POLL_SECONDS, partial=partial)
    if partial is not None and partial.used:
        log.info("combine: the %d shares were verified and added as they landed", len(partial.headers))
    counted = sorted(headers)
    first = headers[counted[0]]["extra"]
    variants = None
    mode = first.get("missing_genotypes", "mean")
    if first["kind"] == "scan":
        variants = pq.ParquetFile(io.BytesIO(read_share_file(uri, manifest, counted[0], headers[counted[0]],
                                                            "variants.parquet"))).read()
        if variant_hash(variants) != first["variant_hash"]:
            raise ProtocolError(f"{uri}: the published variant list does not match the parties' declared "
                                "hash; the exchange was altered")
    S = SufficientStats.from_arrays(pooled, first["phenotypes"], first["covariates"], mode, variants=variants)
    check_output_names(S.phenotypes, where=f"study {manifest.study!r}")
    log.info("combine: %d parties verified, shares added and decoded; %d phenotype(s), %d covariate column(s)",
             len(headers), len(S.phenotypes), len(S.covariates))
    return manifest, dict(first, parties=len(headers), survivors=counted), S


def _load_combine() -> None:
    import pyarrow as pa

    from ..outputs import writers  # noqa: F401 - scipy, the writers
    from ..stats import sufficient  # noqa: F401 - finalize

    _load_encoding()  # the ring kernels' compiled code
    pa.array([""])  # pyarrow imports pandas the first time it converts Python objects


def run_combine(manifest_path: str, out: str, *, overwrite: bool = False, plots: bool = True,
                sign_key: str | None = None, allow_dropouts: bool = False, trust: str | None = None,
                wait: float = 0.0, a1freq_lower_limit: float = 0.0) -> dict:
    """Verify every counted share, add them, unmask, decode and finalize; write the study's outputs
    under ``out``. The first call on a round with self-masks closes it (the coordinator's
    ``sign_key``) and returns ``{"closed": survivor set}`` without writing; with ``wait`` it then
    waits that long for the survivors' reveals and finishes.

    No Spark: the pooled statistics, hence the results, are on the driver already (variants x
    statistics, whatever the number of samples), and the outputs go to the local directory ``out``
    in the same files and format as ``dash-spark scan`` writes. Returns ``{phenotype: path}``.
    """
    from ..multiparty.exchange import ShareSum
    from ..outputs.staging import check_out_dir, staged_output

    t0 = time.time()
    # what the sum and the outputs need loads while the round is checked, closed and awaited
    threading.Thread(target=_load_combine, daemon=True).start()
    uri, manifest = locate_manifest(manifest_path)
    inputs = (uri,) if "://" not in uri else ()
    check_out_dir(out, overwrite=overwrite, inputs=inputs)
    partial = ShareSum(uri, manifest, must_agree=AGREE) if wait > 0 else None
    _, first, S = combine_study(manifest_path, sign_key=sign_key, allow_dropouts=allow_dropouts, trust=trust,
                                wait=wait, partial=partial)
    t_closed = time.time()  # what follows is the finish: the reveals, the sum and the outputs
    if S is None:  # this call closed the round: the survivors' reveals are needed
        if wait <= 0:
            return {"closed": first["closed"]}
        # the shares not added yet are verified and added while the survivors reveal
        _, first, S = combine_study(manifest_path, trust=trust, wait=max(0.0, t0 + wait - time.time()),
                                    partial=partial)
    from ..outputs.writers import OutputModel, safe_name, write_outputs_local

    # no release check here: what combine can sum was released already, by each survivor's own
    # guard before it revealed anything (party unmask)
    with staged_output(out, overwrite=overwrite, inputs=inputs, command="combine") as stage:
        written: dict = {}
        if first["kind"] == "regression":
            for t, name in enumerate(S.phenotypes):
                tbl = S.regression_table(t)
                path = os.path.join(stage.path, f"{safe_name(name)}.coefficients.tsv")
                with open(path, "w") as fh:
                    fh.write("covariate\tbeta\tse\tt_stat\tp\tobs_ct\n")
                    for row in tbl.to_pylist():
                        fh.write(f"{row['covariate']}\t{row['beta']!r}\t{row['se']!r}\t{row['t_stat']!r}\t"
                                 f"{row['p']!r}\t{row['obs_ct']}\n")
                written[name] = stage.final(path)
        else:
            table = S.finalize(a1freq_floor=a1freq_lower_limit)
            log.info("combine: %d variants finalized %.1f s after the close", S.n_variants, time.time() - t_closed)
            model = OutputModel(phenotypes=S.phenotypes, covariates=S.covariates, n_variants=S.n_variants,
                                regenie_outputs=S.regenie is not None,
                                counts={"pooled_samples": {p: S.n_samples(t) for t, p in enumerate(S.phenotypes)},
                                        "parties": first["parties"], "survivors": first["survivors"]})
            glm, _ = write_outputs_local(stage.path, table, model, plots=plots)
            written = {k: stage.final(v) for k, v in glm.items()}
    log.info("combine: outputs in %s (%.1f s after the close, %.1f s in all)", out, time.time() - t_closed,
             time.time() - t0)
    return written
