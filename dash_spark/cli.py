"""The ``dash-spark`` command: ``scan``, ``demo``, ``party``/``combine``, ``compress``/``refresh``/``select`` and ``bench``.

Every input error is printed on one line as ``dash-spark: error: <message>`` and exits with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ConfigError, DashError

log = logging.getLogger("dash_spark")


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("dash-spark %(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("dash_spark")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _csv(value: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in value.split(",") if x.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _kv(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, found {value!r}")
    return key.strip(), val.strip()


def _positive(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value!r}")
    return v


class _BgenAction(argparse.Action):
    """``--bgen FILE ref-first|ref-last`` (plink2's syntax) into ``bgen`` and ``bgen_ref``."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.bgen, namespace.bgen_ref = values


def add_dosage_args(p, *, what: str = "genotypes") -> None:
    """``--pfile``, ``--bgen FILE ref-first|ref-last`` and ``--sample`` (plink2's flags)."""
    p.add_argument("--pfile", metavar="PREFIX", help=f"instead of --bfile: {what} as a plink2 PREFIX.pgen/.pvar/.psam "
                                                     "(hard calls and dosages)")
    p.add_argument("--bgen", nargs=2, action=_BgenAction, metavar=("FILE", "ref-first|ref-last"),
                   help=f"instead of --bfile: {what} as a BGEN file (indexed once into the private cache when it "
                        "has no FILE.bgi); ref-first: the first allele is REF, ref-last: the second")
    p.add_argument("--sample", metavar="FILE", help="the Oxford .sample of --bgen (default: the IDs in the file)")
    p.add_argument("--id-delim", nargs="?", const="_", metavar="D",
                   help="the IDs stored in --bgen are FID<D>IID (default D: _, as REGENIE writes them); "
                        "plink2's --id-delim. Without it each stored ID is an IID")
    p.set_defaults(bgen_ref=None)


class _MachR2Action(argparse.Action):
    """plink2's ``--mach-r2-filter [MIN [MAX]]`` (defaults 0.1 and 2.0)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            parser.error(f"{option_string}: expected at most MIN and MAX, found {len(values)} values")
        lo = values[0] if values else 0.1
        hi = values[1] if len(values) > 1 else 2.0
        setattr(namespace, self.dest, (lo, hi))


def add_spark_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Spark")
    g.add_argument("--master", help="Spark master URL (default: spark-submit's, else local[*])")
    g.add_argument("--conf", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark property; repeatable")
    g.add_argument("--properties-file", help="spark-defaults style file, e.g. conf/spark/local.properties")


def add_binary_args(p) -> None:
    """plink2's case/control coding flags (``--1``) and ``--linear-for-binary``."""
    p.add_argument("--1", dest="pheno_01", action="store_true", default=None,
                   help="case/control phenotypes are coded 0 control, 1 case (plink2's --1; default 1/2, 0 missing)")
    p.add_argument("--linear-for-binary", action="store_true", default=None,
                   help="analyse case/control phenotypes by linear regression (a linear probability model; "
                        "by default they get plink2's logistic regression)")


def add_binary_test_arg(p) -> None:
    """A scan's test of case/control phenotypes (``--binary-test``)."""
    p.add_argument("--binary-test", choices=["hybrid", "score"],
                   help="case/control phenotypes: hybrid (default; plink2's logistic Wald test, Firth fallback: "
                        ".glm.logistic.hybrid) or score (the score test from the null model, saddlepoint-corrected "
                        "below p 0.05, as REGENIE and SAIGE: <phenotype>.regenie)")
    p.add_argument("--score-correction", choices=["spa", "firth", "none"],
                   help="with --binary-test score: the correction of p-values below --score-p-thresh: spa (default; "
                        "the saddlepoint approximation, REGENIE's --spa), firth (REGENIE's --firth --approx) or none "
                        "(the score test alone, REGENIE's default)")
    p.add_argument("--score-p-thresh", type=float, metavar="P",
                   help="with --binary-test score: correct p-values below P (REGENIE's --pThresh; default 0.05)")


def add_scan_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--bfile", metavar="PREFIX", help="PLINK 1 fileset PREFIX.bed/.bim/.fam")
    p.add_argument("--features", metavar="FILE.parquet",
                   help="instead of --bfile: real-valued features, one row per feature (id, values list<double>)")
    p.add_argument("--feature-samples", metavar="FILE", help="sample IDs in the order of the features' values")
    add_dosage_args(p)
    p.add_argument("--pheno", required=required, help="phenotype file (#FID IID ... or IID ...)")
    p.add_argument("--covar", help="covariate file (same layout)")
    p.add_argument("--out", required=required, metavar="OUTDIR", help="output directory (created)")
    p.add_argument("--pheno-name", type=_csv, help="phenotype columns to test (default: all)")
    p.add_argument("--covar-name", type=_csv, help="covariate columns to use (default: all)")
    add_binary_args(p)
    p.add_argument("--no-intercept", action="store_true", default=None, help="do not add an intercept")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing OUTDIR")
    p.add_argument("--block-variants", type=_positive, metavar="N", help="variants per Spark partition")
    p.add_argument("--task-memory-mb", type=_positive, metavar="MB",
                   help="working-set budget of one task (default 256)")
    p.add_argument("--missing-genotypes", choices=["drop", "mean"],
                   help="drop (default, plink2): test each variant on the samples with a call; "
                        "mean (Hail/REGENIE): impute a missing call with the variant's mean dosage")
    p.add_argument("--omit-ref", dest="count_alt", action="store_true", default=None,
                   help="A1 is always ALT (plink2's omit-ref); default: the non-major allele")
    p.add_argument("--no-plots", dest="plots", action="store_false", default=None,
                   help="skip the Manhattan and QQ plots")
    p.add_argument("--no-text", dest="text", action="store_false", default=None,
                   help="skip the per-phenotype text files (.glm.linear, .glm.logistic.hybrid, .regenie): "
                        "results.parquet, the summaries and plots only (large runs)")
    p.add_argument("--plots-top", type=_positive, metavar="N",
                   help="plot only the N phenotypes with the smallest p-values (PheWAS runs); summaries cover all")
    p.add_argument("--a1freq-lower-limit", type=float, metavar="F",
                   help="report A1 frequencies below F as F (and above 1-F as 1-F), as plink2's GWAS-SSF writer")
    p.add_argument("--covar-variance-standardize", action="store_true", default=None,
                   help="rescale covariates to mean 0, variance 1 (plink2's flag; ADD results are unchanged)")
    p.add_argument("--gwas-ssf", action="store_true", default=None,
                   help="also write <phenotype>.ssf.tsv.gz (+ -meta.yaml) in the GWAS Catalog's GWAS-SSF v1.0")
    p.add_argument("--genome-assembly", metavar="NAME",
                   help="with --gwas-ssf (required there): the .bim positions' assembly, e.g. GRCh38 or GRCh37")
    p.add_argument("--report-covariates", action="store_true", default=None,
                   help="also write <phenotype>.covariates.tsv: the covariates' effects in the null model y ~ C")
    p.add_argument("--xchr-model", type=int, choices=[0, 1, 2],
                   help="chrX as plink2: 2 (default) males coded 0..2, 1 males 0..1 (both with a SEX covariate), "
                        "0 skip chrX")
    p.add_argument("--pred", metavar="FILE_pred.list",
                   help="REGENIE step-1 LOCO predictions: each phenotype is adjusted by its prediction for the "
                        "tested variant's chromosome")
    p.add_argument("--pred-test", choices=["wald", "regenie"],
                   help="with --pred: wald (default; the Wald t-test of y - offset, as Glow's offset_df) or "
                        "regenie (REGENIE's step-2 score test; also writes <phenotype>.regenie)")
    f = p.add_argument_group("filters (plink2's names and meanings)")
    f.add_argument("--keep", metavar="FILE", help="analyse only the samples listed (IID or FID IID per line)")
    f.add_argument("--remove", metavar="FILE", help="leave out the samples listed")
    f.add_argument("--extract", metavar="FILE", help="test only the variant IDs listed (one per line)")
    f.add_argument("--exclude", metavar="FILE", help="skip the variant IDs listed")
    f.add_argument("--chr", metavar="LIST", help="chromosomes, e.g. 1-4,22,X")
    f.add_argument("--from-bp", type=int, metavar="POS", help="first position (inclusive)")
    f.add_argument("--to-bp", type=int, metavar="POS", help="last position (inclusive)")
    f.add_argument("--maf", type=float, metavar="F", help="skip variants with minor allele frequency below F")
    f.add_argument("--mac", type=float, metavar="N", help="skip variants with minor allele count below N")
    f.add_argument("--geno", type=float, metavar="F", help="skip variants with a missing-call rate above F")
    f.add_argument("--mach-r2-filter", nargs="*", type=float, action=_MachR2Action, metavar="R2",
                   help="MIN [MAX]: keep variants whose MaCH r-squared over the kept samples is within "
                        "[MIN, MAX] (plink2's flag; defaults 0.1 and 2)")
    add_spark_args(p)


def _spark_conf(args) -> dict[str, str]:
    from .spark.session import read_properties

    conf: dict[str, str] = {}
    if args.properties_file:
        conf.update(read_properties(args.properties_file))
    conf.update(dict(args.conf))
    return conf


#: the options that name a genotype source (one of them is required by scan and party compress)
GENOTYPE_OPTIONS = ("bfile", "features", "pfile", "bgen")

SCAN_FIELDS = ("bfile", "features", "feature_samples", "pfile", "bgen", "bgen_ref", "sample", "id_delim", "pheno", "covar", "out", "pheno_name", "covar_name", "pheno_01", "linear_for_binary", "no_intercept", "overwrite",
               "block_variants", "task_memory_mb", "missing_genotypes", "count_alt", "plots", "master",
               "keep", "remove", "extract", "exclude", "chr", "from_bp", "to_bp", "maf", "mac", "geno",
               "covar_variance_standardize", "gwas_ssf", "genome_assembly", "report_covariates",
               "a1freq_lower_limit", "plots_top", "pred", "pred_test", "xchr_model", "mach_r2_filter", "binary_test", "score_correction", "score_p_thresh", "text")


def scan_config_from_args(args):
    from .config import load_scan_config
    from .config import ScanConfig

    values = {k: getattr(args, k, None) for k in SCAN_FIELDS}
    conf = _spark_conf(args)
    if getattr(args, "config", None):
        cfg = load_scan_config(args.config, **values)
        if conf:
            import dataclasses

            cfg = dataclasses.replace(cfg, spark_conf={**cfg.spark_conf, **conf})
        return cfg
    missing = [f"--{k}" for k in ("pheno", "out") if values[k] is None]
    if all(values[k] is None for k in GENOTYPE_OPTIONS):
        missing.insert(0, "--bfile (or --pfile, --bgen, --features)")
    if missing:
        raise ConfigError(f"scan: missing {', '.join(missing)} (or give --config FILE.toml)")
    return ScanConfig(**{k: v for k, v in values.items() if v is not None}, spark_conf=conf)


def print_summaries(summaries: dict, out: str) -> None:
    """Each phenotype's counts, lambda_GC and top hits on stdout, for the first
    :data:`~dash_spark.outputs.logs.PER_PHENOTYPE_LINES` phenotypes; one line for the rest (their
    range of lambda_GC, and where every phenotype's summary is)."""
    import math

    from .outputs.logs import PER_PHENOTYPE_LINES
    from .outputs.report import format_top_hits

    items = list(summaries.items())
    for name, summ in items[:PER_PHENOTYPE_LINES]:
        print(f"== {name}: {summ.n_tests:,} tests, lambda_GC {summ.lambda_gc:.4f}")
        print(format_top_hits(summ))
    rest = items[PER_PHENOTYPE_LINES:]
    if rest:
        lams = [s.lambda_gc for _, s in rest if s.lambda_gc is not None and math.isfinite(s.lambda_gc)]
        span = f" (lambda_GC {min(lams):.4f} to {max(lams):.4f})" if lams else ""
        print(f"== {len(rest):,} more phenotypes{span}: every phenotype's counts, lambda_GC and top hits are in "
              f"{out}/summary.tsv and {out}/summary.json")


def cmd_scan(args) -> int:
    starter = None
    named = args.pheno and args.out and any(getattr(args, k) for k in GENOTYPE_OPTIONS)
    if _EARLY_JVM and named and not getattr(args, "config", None):
        # the JVM starts before the heavy imports (numpy, pyarrow, numba: ~0.7 s) and the model
        from .spark.session import SessionStarter

        starter = SessionStarter(args.master, _spark_conf(args))
    from .scanner.pipeline import run_scan

    res = run_scan(scan_config_from_args(args), spark=starter)
    print_summaries(res.summaries, res.out)
    print(f"results: {res.results_path}")
    for path in res.glm_paths.values():
        print(f"{'REGENIE-style' if path.endswith('.regenie') else 'plink2-style'}: {path}")
    return 0


def cmd_demo(args) -> int:
    import os

    from .bench.simulate import simulate_cohort
    from .config import ScanConfig
    from .scanner.pipeline import run_scan
    from .outputs.report import format_top_hits

    from .outputs.staging import check_out_dir

    out = check_out_dir(args.out, overwrite=bool(args.overwrite))  # before minutes of simulation
    data = os.path.join(out + "-data")
    log.info("demo: simulating %d samples x %d variants under %s", args.samples, args.variants, data)
    cohort = simulate_cohort(data, n_samples=args.samples, n_variants=args.variants, n_covariates=4,
                             n_phenotypes=2, n_causal=6, missing_rate=0.01, pheno_missing_rate=0.03,
                             n_monomorphic=5, seed=args.seed)
    cfg = ScanConfig(bfile=cohort.bfile, pheno=cohort.pheno, covar=cohort.covar, out=out,
                     overwrite=bool(args.overwrite), master=args.master,
                     spark_conf=_spark_conf(args))
    res = run_scan(cfg)
    print(f"\ndemo cohort: {cohort.n_samples:,} samples x {cohort.n_variants:,} variants, "
          f"planted causal variants at indices {list(cohort.causal)}")
    for name, summ in res.summaries.items():
        print(f"\n== {name}: {summ.n_tests:,} tests, lambda_GC {summ.lambda_gc:.4f}; top hits:")
        print(format_top_hits(summ))
    print(f"\noutputs in {res.out}:")
    for fname in sorted(os.listdir(res.out)):
        print(f"  {fname}")
    print(f"finished in {res.seconds:.1f} s")
    return 0


def cmd_keygen(args) -> int:
    import os

    from .multiparty.keys import load_public, write_keypair
    from .multiparty.rounds import key_fingerprint

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    key, pub = write_keypair(args.out, args.name)
    print(f"private key: {key} (mode 0600; keep it secret)\npublic key:  {pub} (send to the coordinator)\n"
          f"fingerprint: {key_fingerprint(load_public(pub))} (read it to the other parties over a trusted "
          "channel; they pin it with party trust)")
    return 0


def cmd_trust(args) -> int:
    import os

    from .multiparty.keys import load_public
    from .multiparty.rounds import TrustFile, key_fingerprint

    trust = TrustFile.load(args.trust, missing_ok=True)
    for spec in args.add:
        name, sep, value = spec.partition("=")
        if not sep:
            raise ConfigError(f"--add: expected NAME=PATH.pub or NAME=FINGERPRINT, found {spec!r}")
        if os.path.exists(value):
            pub = load_public(value)
            if pub.party != name:
                raise ConfigError(f"--add {spec}: the key file belongs to {pub.party!r}, not {name!r}")
            fp = key_fingerprint(pub)
        else:
            fp = value.strip()
        trust.add(name, fp, replace=args.replace)
        print(f"{name} {fp}")
    if not args.add:
        for name, fp in sorted(trust.entries.items()):
            print(f"{name} {fp}")
    return 0


def cmd_manifest(args) -> int:
    from .multiparty.exchange import Manifest, write_manifest
    from .multiparty.keys import load_public

    parties = []
    for spec in args.party:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--party: expected NAME=PATH.pub, found {spec!r}")
        pub = load_public(path)
        if pub.party != name:
            raise ConfigError(f"--party {spec}: the key file belongs to party {pub.party!r}, not {name!r}")
        parties.append(pub)
    if len(parties) < 2:
        raise ConfigError(f"--party: a study needs at least 2 parties, found {len(parties)}")
    if len(parties) == 2 and args.threshold != 2:
        raise ConfigError("--party: a study of 2 parties reveals to each party the other's statistics (the pooled "
                          "result minus its own); pass --threshold 2 to start one deliberately")
    if args.kind == "score" and (args.linear_for_binary or args.pred_test):
        raise ConfigError("party manifest --kind score: a score study fits the logistic null model of case/control "
                          "phenotypes; --linear-for-binary and --pred-test do not apply to it")
    from .config import ModelSettings

    options = ModelSettings(intercept=not args.no_intercept, missing_genotypes=args.missing_genotypes,
                            pheno_names=tuple(args.pheno_name) if args.pheno_name else None,
                            covar_names=tuple(args.covar_name) if args.covar_name else None,
                            pheno_01=bool(args.pheno_01), linear_for_binary=bool(args.linear_for_binary),
                            pred_test=args.pred_test or "wald")
    settings = {**options.to_json(), "kind": args.kind, "variant_hash": None}
    if args.threshold is not None:
        settings["threshold"] = args.threshold
    if args.bim:
        from .io.plink import read_bim
        from .studies.study import variant_hash, variant_table

        settings["variant_hash"] = variant_hash(variant_table(read_bim(args.bim)))
        if settings["kind"] != "score":
            settings["kind"] = "scan"
    from .multiparty.keys import load_private
    from .multiparty.rounds import sign_manifest

    coordinator = load_private(args.sign_key)
    manifest = Manifest.new(args.study, parties, settings, coordinator=coordinator.public())
    path = write_manifest(args.exchange, manifest)
    sign_manifest(args.exchange, manifest, coordinator)
    print(path)
    return 0


def cmd_join(args) -> int:
    from .studies.study import run_join

    print(run_join(args.manifest, args.party, args.key, trust=args.trust))
    return 0


def cmd_unmask(args) -> int:
    from .studies.study import run_unmask

    print(run_unmask(args.manifest, args.party, args.key, trust=args.trust, wait=args.wait,
                     min_release_delta=args.min_release_delta, min_n=args.min_n,
                     allow_small_release=args.allow_small_release))
    return 0


def cmd_party_compress(args) -> int:
    starter = None
    if _EARLY_JVM and any(getattr(args, k) for k in GENOTYPE_OPTIONS):
        from .spark.session import SessionStarter  # the JVM starts before the imports and the round's checks

        starter = SessionStarter(args.master, _spark_conf(args), share=True)
    from .multiparty.exchange import locate_manifest
    from .studies.study import run_party_compress

    kind = locate_manifest(args.manifest)[1].settings.get("kind")
    from .studies.score import KINDS as SCORE_KINDS

    if kind in SCORE_KINDS:
        from .studies.score import run_party_score

        print(run_party_score(args.manifest, args.party, args.key, source=_batch_source(args), spark=starter,
                              master=args.master, spark_conf=_spark_conf(args), trust=args.trust, wait=args.wait,
                              share_stage=args.share_stage))
        return 0
    if kind == "select-step":
        from .studies.select import run_party_select_step

        print(run_party_select_step(args.manifest, args.party, args.key, pheno=args.pheno, covar=args.covar,
                                    bfile=args.bfile, features=args.features, feature_samples=args.feature_samples,
                                    pfile=args.pfile, bgen=args.bgen, bgen_ref=args.bgen_ref, sample=args.sample,
                                    id_delim=args.id_delim,
                                    spark=starter, master=args.master, spark_conf=_spark_conf(args),
                                    trust=args.trust, wait=args.wait))
        return 0
    path = run_party_compress(args.manifest, args.party, args.key, pheno=args.pheno, covar=args.covar,
                              bfile=args.bfile, features=args.features, feature_samples=args.feature_samples,
                              pfile=args.pfile, bgen=args.bgen, bgen_ref=args.bgen_ref, sample=args.sample,
                              id_delim=args.id_delim, spark=starter, master=args.master, spark_conf=_spark_conf(args), trust=args.trust,
                              wait=args.wait, pred=args.pred, share_stage=args.share_stage)
    print(path)
    return 0


def cmd_combine(args) -> int:
    from .multiparty.exchange import locate_manifest
    from .studies.study import run_combine

    if locate_manifest(args.manifest)[1].settings.get("kind") == "score":
        from .studies.score import run_score_combine

        if args.allow_dropouts or args.wait:
            raise ConfigError("combine: a score study advances one round per call, and every round after the base "
                              "needs every survivor; --allow-dropouts and --wait are for single-round studies")
        res = run_score_combine(args.manifest, args.out, pheno_name=args.pheno_name, sign_key=args.sign_key,
                                trust=args.trust, overwrite=args.overwrite, plots=args.plots,
                                a1freq_lower_limit=args.a1freq_lower_limit)
        if res.get("closed"):
            print(f"base round closed: survivors {', '.join(res['closed']['survivors'])}; each survivor now runs "
                  "`dash-spark party unmask --manifest ...`, then run this combine again")
        elif res["next_manifest"]:
            print(f"{res['round']}: every party now runs `dash-spark party compress --manifest "
                  f"{res['next_manifest']} ...`, then run this combine again")
            print(res["next_manifest"])
        else:
            for name, path in res["glm_paths"].items():
                print(f"{name}: {path}")
        return 0
    if args.pheno_name:
        raise ConfigError("combine: --pheno-name chooses the phenotype of a score study (party manifest --kind "
                          "score); other studies combine every phenotype")
    written = run_combine(args.manifest, args.out, overwrite=args.overwrite, plots=args.plots,
                          sign_key=args.sign_key, allow_dropouts=args.allow_dropouts, trust=args.trust,
                          wait=args.wait, a1freq_lower_limit=args.a1freq_lower_limit)
    if "closed" in written:
        body = written["closed"]
        print(f"round closed: survivors {', '.join(body['survivors'])}"
              + (f"; dropped {', '.join(body['dropped'])} (their shares stay masked)" if body["dropped"] else "")
              + "; each survivor now runs `dash-spark party unmask --manifest ...`, then run combine again")
        return 0
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _batch_source(args) -> dict:
    return {"bfile": args.bfile, "features": args.features, "feature_samples": args.feature_samples,
            "pfile": args.pfile, "bgen": args.bgen, "bgen_ref": args.bgen_ref, "sample": args.sample,
            "id_delim": args.id_delim, "pheno": args.pheno, "covar": args.covar, "pred": getattr(args, "pred", None)}


def cmd_compress(args) -> int:
    from .studies.store import run_compress

    store = run_compress(args.store, args.batch, _batch_source(args),
                         intercept=None if args.no_intercept is None else not args.no_intercept,
                         missing_genotypes=args.missing_genotypes, pheno_names=args.pheno_name,
                         covar_names=args.covar_name, block_variants=args.block_variants,
                         pheno_01=args.pheno_01, linear_for_binary=args.linear_for_binary, pred_test=args.pred_test,
                         master=args.master, spark_conf=_spark_conf(args))
    print(f"store {store.root}: {len(store.batches)} batch(es): {', '.join(b.name for b in store.batches)}")
    return 0


def cmd_refresh(args) -> int:
    from .studies.store import run_refresh

    add = None
    if args.add_batch:
        add = (args.add_batch, _batch_source(args))
    elif any(getattr(args, k, None) for k in ("bfile", "features", "feature_samples", "pfile", "bgen", "sample",
                                              "pheno", "covar", "pred")):
        raise ConfigError("refresh: --bfile/--features/--pheno/--covar describe a new batch; give --add-batch NAME too")
    res = run_refresh(args.store, args.out, add=add, remove=args.remove_batch, withdraw=args.withdraw,
                      overwrite=bool(args.overwrite), plots=args.plots, master=args.master,
                      spark_conf=_spark_conf(args), min_release_delta=args.min_release_delta,
                      allow_small_release=args.allow_small_release, a1freq_lower_limit=args.a1freq_lower_limit)
    print_summaries(res.summaries, res.out)
    print(f"store batches: {', '.join(res.batches)}")
    print(f"results: {res.out}/results.parquet")
    for path in res.glm_paths.values():
        print(f"plink2-style: {path}")
    return 0


def cmd_select(args) -> int:
    from .studies.select import run_select, run_select_study

    if bool(args.store) == bool(args.manifest):
        raise ConfigError("select: give --store DIR (stored statistics) or --manifest PATH (a multi-party scan study)")
    if args.manifest:
        if args.window_kb is not None:
            raise ConfigError("select: --window-kb is available for stores only; a multi-party selection is genome-wide")
        res = run_select_study(args.manifest, args.out, pheno_name=args.pheno_name, p_threshold=args.p_threshold,
                               max_steps=args.max_steps, overwrite=bool(args.overwrite), sign_key=args.sign_key,
                               trust=args.trust, a1freq_lower_limit=args.a1freq_lower_limit)
        if res.get("closed"):
            print(f"base round closed: survivors {', '.join(res['closed']['survivors'])}; each survivor now runs "
                  "`dash-spark party unmask --manifest ...`, then run this select again")
            return 0
        if res["next_manifest"]:
            row = res["selected"][-1]
            print(f"step {row['step']}: {row['id']} selected (p {row['p']:.3g}); every party now runs "
                  f"`dash-spark party compress --manifest {res['next_manifest']} ...`, then run this select again")
            print(res["next_manifest"])
            return 0
        selected = res["selected"]
        out = res["out"]
    else:
        r = run_select(args.store, args.out, pheno_name=args.pheno_name, p_threshold=args.p_threshold,
                       max_steps=args.max_steps, window_kb=args.window_kb, overwrite=bool(args.overwrite),
                       master=args.master, spark_conf=_spark_conf(args), min_release_delta=args.min_release_delta,
                       allow_small_release=args.allow_small_release, a1freq_lower_limit=args.a1freq_lower_limit)
        selected, out = r.selected, r.out
    if not selected:
        print(f"no variant passes p < {args.p_threshold:g}")
    for row in selected:
        print(f"step {row['step']}: {row['id']} ({row['chrom']}:{row['pos']}) A1 {row['a1']}, conditional "
              f"beta {row['beta']:.4g}, p {row['p']:.3g}")
    print(f"outputs: {out}/selected.tsv, {out}/joint.tsv, {out}/results.parquet")
    return 0


def add_a1freq_arg(g) -> None:
    g.add_argument("--a1freq-lower-limit", type=float, default=0.0, metavar="F",
                   help="report published A1 frequencies below F as F (and above 1-F as 1-F), as plink2's GWAS-SSF")


def add_release_args(p: argparse.ArgumentParser, *, min_n: bool = False, a1freq: bool = True) -> None:
    g = p.add_argument_group("release guard")
    g.add_argument("--min-release-delta", type=int, default=20, metavar="N",
                   help="refuse results whose samples differ from an earlier release's by 1 to N-1 (default 20)")
    if a1freq:
        add_a1freq_arg(g)
    if min_n:
        g.add_argument("--min-n", type=int, default=20, metavar="N",
                       help="refuse a phenotype with fewer than N pooled samples (default 20)")
    g.add_argument("--allow-small-release", action="store_true",
                   help="release anyway (logged as a warning and recorded with the release)")


def _add_batch_inputs(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--bfile", metavar="PREFIX", help="the batch's PLINK 1 fileset")
    p.add_argument("--features", metavar="FILE.parquet", help="instead of --bfile: real-valued features")
    p.add_argument("--feature-samples", metavar="FILE", help="sample IDs in the order of the features' values")
    add_dosage_args(p, what="the batch's genotypes")
    p.add_argument("--pheno", required=required, help="the batch's phenotype file")
    p.add_argument("--covar", help="the batch's covariate file")
    p.add_argument("--pred", metavar="FILE_pred.list",
                   help="the batch's REGENIE step-1 LOCO predictions (the test: the store's --pred-test); a store "
                        "uses them for every batch or none")


def cmd_bench(args) -> int:
    if args.refresh:
        from .bench.store import run_refresh_bench

        return run_refresh_bench(args)
    from .bench.run import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dash-spark", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="association scan of every variant (plink2 --glm on Spark: linear, or logistic "
                                    "for case/control phenotypes)")
    p.add_argument("--config", help="TOML job config ([scan] keys = these options)")
    add_scan_args(p, required=False)
    add_binary_test_arg(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("demo", help="simulate a small cohort and scan it on local Spark")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--samples", type=_positive, default=2000)
    p.add_argument("--variants", type=_positive, default=20000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--overwrite", action="store_true")
    add_spark_args(p)
    p.set_defaults(func=cmd_demo)

    party = sub.add_parser("party", help="multi-party studies (DASH): keys, manifest, compress")
    psub = party.add_subparsers(dest="party_command", required=True)
    p = psub.add_parser("keygen", help="write NAME.key (0600) and NAME.pub")
    p.add_argument("--out", required=True, metavar="keys/NAME", help="path prefix of the key files")
    p.add_argument("--name", help="party name (default: the file name of --out)")
    p.set_defaults(func=cmd_keygen)
    p = psub.add_parser("trust", help="pin the keys of the coordinator and the parties (like known_hosts)")
    p.add_argument("--trust", required=True, metavar="FILE", help="the trust file (created 0600)")
    p.add_argument("--add", action="append", default=[], metavar="NAME=PATH.pub|NAME=FINGERPRINT",
                   help="pin a key (compare its fingerprint out of band); repeatable. Without --add: list the file")
    p.add_argument("--replace", action="store_true", help="replace a pinned key (after confirming it out of band)")
    p.set_defaults(func=cmd_trust)
    p = psub.add_parser("manifest", help="start a study round: parties, keys and model settings")
    p.add_argument("--study", required=True)
    p.add_argument("--exchange", required=True, metavar="URI", help="directory or object-store URI shared by all")
    p.add_argument("--party", action="append", required=True, metavar="NAME=PATH.pub")
    p.add_argument("--no-intercept", action="store_true")
    p.add_argument("--missing-genotypes", choices=["drop", "mean"], default="drop")
    p.add_argument("--pheno-name", type=_csv)
    p.add_argument("--covar-name", type=_csv)
    add_binary_args(p)
    p.add_argument("--pred-test", choices=["wald", "regenie"],
                   help="for parties giving --pred: wald (default) or regenie (REGENIE's step-2 score test of the "
                        "pooled samples; combine also writes <phenotype>.regenie)")
    p.add_argument("--kind", choices=["scan", "regression", "score"],
                   help="fix the study kind (default: from compress); score: a case/control study by the score "
                        "test, its null model fitted by rounds (combine --pheno-name, one round per call)")
    p.add_argument("--bim", help="bind the variant list of this .bim (every party must have the same)")
    p.add_argument("--threshold", type=int, metavar="T",
                   help="the least number of survivors a round closes with (default: at least 3 and more than "
                        "half the parties; a study of 2 parties needs --threshold 2)")
    p.add_argument("--sign-key", required=True, metavar="COORD.key",
                   help="the coordinator's key: signs the manifest and, later, the round's survivor set")
    p.set_defaults(func=cmd_manifest)

    def party_args(p, what):
        p.add_argument("--manifest", required=True)
        p.add_argument("--party", required=True)
        p.add_argument("--key", required=True, help="this party's .key file (its ledger lives beside it)")
        p.add_argument("--trust", required=True, metavar="FILE",
                       help="pinned keys of the coordinator and every party (party trust)")
        if what:
            p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help=what)

    p = psub.add_parser("join", help="check a round and publish this party's round key (before any data is read)")
    party_args(p, None)
    p.set_defaults(func=cmd_join)
    p = psub.add_parser("unmask", help="after the round is closed: confirm the survivors, check the release against "
                                      "this party's memory, reveal what removes its masks")
    party_args(p, "wait this long for the coordinator to close the round and the other survivors' steps")
    add_release_args(p, min_n=True, a1freq=False)
    p.set_defaults(func=cmd_unmask)
    p = psub.add_parser("compress", help="compute, encode, mask, sign and publish this party's statistics")
    party_args(p, "before computing, wait this long for the other parties' round keys")
    p.add_argument("--pheno", required=True)
    p.add_argument("--covar")
    p.add_argument("--bfile", metavar="PREFIX", help="genotypes (a scan study); without it: regression on covariates")
    p.add_argument("--features", metavar="FILE.parquet", help="real-valued features instead of --bfile")
    p.add_argument("--feature-samples", metavar="FILE", help="sample IDs in the order of the features' values")
    p.add_argument("--pred", metavar="FILE_pred.list",
                   help="this party's REGENIE step-1 LOCO predictions for its own samples (the manifest's "
                        "--pred-test); every party of the study gives them, or none")
    p.add_argument("--share-stage", metavar="DIR|URI",
                   help="where the Spark tasks stage their masked rows until the share is published: a "
                        "location that the executors and the driver both reach and nobody else reads (default: "
                        "a private directory beside --key, right for local[*] and shared file systems)")
    add_dosage_args(p)
    add_spark_args(p)
    p.set_defaults(func=cmd_party_compress)

    p = sub.add_parser("combine", help="verify, add and finalize every party's share of a study round")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, metavar="OUTDIR")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--sign-key", metavar="COORD.key", help="the coordinator's key: closes the round (survivor set)")
    p.add_argument("--allow-dropouts", action="store_true",
                   help="close the round with the parties that published (the others' shares never count)")
    p.add_argument("--trust", metavar="FILE", help="also check the manifest's signature and roster against it")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for every party's share (the coordinator, without --allow-dropouts), "
                        "close the round, then for the survivors' reveals, and finish")
    p.add_argument("--pheno-name", help="a score study (--kind score): the phenotype whose null model and scan "
                                        "this combine advances (required when there are several)")
    add_a1freq_arg(p)
    p.set_defaults(func=cmd_combine)  # no Spark: the pooled statistics are variants x statistics

    p = sub.add_parser("compress", help="persist a batch's additive statistics in a store (creates the store)")
    p.add_argument("--store", required=True, metavar="DIR", help="the store directory")
    p.add_argument("--batch", required=True, metavar="NAME", help="a name for this batch of samples")
    _add_batch_inputs(p, required=True)
    p.add_argument("--pheno-name", type=_csv, help="phenotype columns (fixed for the store)")
    p.add_argument("--covar-name", type=_csv, help="covariate columns (fixed for the store)")
    add_binary_args(p)
    p.add_argument("--pred-test", choices=["wald", "regenie"],
                   help="with --pred, fixed for the store: wald (default) or regenie (REGENIE's step-2 score test "
                        "of the pooled samples; refresh also writes <phenotype>.regenie)")
    p.add_argument("--no-intercept", action="store_true", default=None)
    p.add_argument("--missing-genotypes", choices=["drop", "mean"], help="fixed for the store (default drop)")
    p.add_argument("--block-variants", type=_positive, metavar="N", help="variants per stored block")
    add_spark_args(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("refresh", help="add or remove a batch, or withdraw samples, and re-finalize a store")
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="the scan outputs of the resulting samples")
    p.add_argument("--add-batch", metavar="NAME", help="compress this new batch (with --bfile/--pheno/--covar)")
    p.add_argument("--remove-batch", metavar="NAME", help="subtract a stored batch")
    p.add_argument("--withdraw", metavar="SAMPLES.txt", help="subtract these samples (IID or FID IID per line)")
    _add_batch_inputs(p, required=False)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    add_release_args(p)
    add_spark_args(p)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("select", help="forward (conditional) selection of variants on a store")
    p.add_argument("--store", metavar="DIR", help="a store of batches (see compress/refresh)")
    p.add_argument("--manifest", metavar="PATH", help="or: a multi-party scan study's manifest (one step per run)")
    p.add_argument("--out", required=True, metavar="OUTDIR")
    p.add_argument("--pheno-name", help="the phenotype (required when there are several)")
    p.add_argument("--p-threshold", type=float, default=5e-8, help="select while the best p is below this")
    p.add_argument("--max-steps", type=_positive, default=10, help="select at most this many variants")
    p.add_argument("--window-kb", type=float, help="condition a variant only on selected variants within W kb")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--sign-key", metavar="COORD.key",
                   help="with --manifest: the coordinator's key (signs the state and each step's manifest)")
    p.add_argument("--trust", metavar="FILE", help="with --manifest: check the base manifest against pinned keys")
    add_release_args(p)
    add_spark_args(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("bench", help="time our scan against plink2 --glm on the same simulated files")
    from .bench.run import add_bench_args

    add_bench_args(p)
    p.add_argument("--refresh", action="store_true",
                   help="stored statistics: refresh --add-batch of 10%% new samples vs recomputing the union")
    add_spark_args(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except DashError as exc:
        _quiet_jvm()
        print(f"dash-spark: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _quiet_jvm()
        print("dash-spark: interrupted", file=sys.stderr)
        return 130


def _quiet_jvm() -> None:
    """In ``dash-spark`` itself (one command per process), stop the JVM the failed command started
    before its message is printed, so that Spark's start-up lines cannot follow the message."""
    if _EARLY_JVM and "pyspark" in sys.modules:
        from .spark.session import stop_own_jvm

        stop_own_jvm()


#: set by :func:`run` (the command itself, one command per process): ``scan`` starts the JVM before
#: its heavy imports. Not in :func:`main` as tests call it: a session started in the background of a
#: refused command would outlive it there.
_EARLY_JVM = False


def run() -> None:  # pragma: no cover - the console entry point; tests call main()
    """``dash-spark`` itself: :func:`main`, then exit without waiting for Spark's own shutdown
    (about a second, after every output is in place). The JVM started for this process watches its
    standard input and exits when this process does; its shutdown hooks stop the SparkContext."""
    global _EARLY_JVM
    _EARLY_JVM = True
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    import os

    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
