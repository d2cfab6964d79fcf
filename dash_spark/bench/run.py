"""``dash-spark bench``: our scan against plink2 --glm on the same simulated files, in the same run.

Both tools are started as fresh processes (our time includes starting Spark), their numbers are
compared variant by variant, and the wall times and the ratio ours/plink2 are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from ..errors import ConfigError


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--variants", type=int, default=100_000)
    p.add_argument("--covariates", type=int, default=10, help="covariates besides the intercept")
    p.add_argument("--phenotypes", type=int, default=1)
    p.add_argument("--missing-rate", type=float, default=0.0, help="missing genotype call rate")
    p.add_argument("--pheno-missing-rate", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="plink2 --threads")
    p.add_argument("--workdir", default="bench_out", help="where cohorts and outputs go (cohorts are reused)")
    p.add_argument("--plink2", default=shutil.which("plink2") or "plink2")
    p.add_argument("--plink2-also", metavar="PATH",
                   help="a second plink2 build timed in the same run (e.g. ../shared/tools/plink2-a7.4/plink2); the "
                        "ratio is against the faster")
    p.add_argument("--repeat", type=int, default=1,
                   help="alternating runs of each plink2 build and ours; medians are reported")
    p.add_argument("--case-control", type=float, metavar="FRACTION",
                   help="make each phenotype case/control (its top FRACTION cases, coded 1/2): plink2's and our "
                        "logistic --glm (Firth fallback)")
    p.add_argument("--no-text", action="store_true",
                   help="our scan without its per-phenotype text files (plink2 still writes its own)")
    p.add_argument("--binary-test", choices=["hybrid", "score"], default="hybrid",
                   help="with --case-control: our scan's test (score: the score test with SPA; plink2 has none, so "
                        "it runs its logistic hybrid and the numbers are not compared)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--parties", action="store_true",
                   help="DASH: 3 parties (split by samples) vs one pooled scan, instead of plink2")
    p.add_argument("--dropout", action="store_true",
                   help="with --parties: a fourth party joins but drops before publishing (4 parties close with 3)")
    p.add_argument("--dosage", action="store_true",
                   help="imputed dosages: a PGEN with --dosage-fraction fractional dosages (plink2 --dummy) and the "
                        "same data as BGEN 1.2 8-bit; --pfile and --bgen scans against plink2's")
    p.add_argument("--dosage-fraction", type=float, default=0.3, help="with --dosage: share of fractional dosages")
    p.add_argument("--scaling", action="store_true",
                   help="also run our scan on local[1] and local[2]: report the driver's serial seconds, the "
                        "stage's strong-scaling efficiency and the projected wall time on 64 cores (Amdahl)")


def timed(cmd: list[str], log_path: str) -> float:
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        with open(log_path) as fh:
            tail = fh.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return dt


def read_phases(log_path: str) -> dict | None:
    """The phase split a scan logs (``phases: {...}``: model, session ready, scan stage, the tasks'
    kernel seconds summed, outputs, total), or None."""
    try:
        with open(log_path, errors="replace") as fh:
            lines = [ln for ln in fh if "phases: {" in ln]
    except OSError:
        return None
    if not lines:
        return None
    try:
        return json.loads(lines[-1].split("phases: ", 1)[1])
    except ValueError:
        return None


def emit_figures(figures: dict, summary: str, json_path: str | None) -> None:
    """Print a benchmark's figures (JSON, then a one-line summary); also write them to ``json_path``."""
    print(json.dumps(figures, indent=2))
    print("\n" + summary)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(figures, fh, indent=2)


def read_plink2_glm(path: str) -> dict[str, np.ndarray]:
    """Columns of a plink2 .glm.linear or .glm.logistic.hybrid (ADD rows only) as arrays; NA -> NaN.
    A logistic file's LOG(OR)_SE and Z_STAT come back as SE and T_STAT, and BETA = log OR beside OR."""
    import pyarrow.csv as pcsv

    tbl = pcsv.read_csv(
        path,
        parse_options=pcsv.ParseOptions(delimiter="\t"),
        convert_options=pcsv.ConvertOptions(null_values=["NA"], strings_can_be_null=False,
                                            column_types={"#CHROM": "string", "ID": "string"}),
    )
    out = {name.lstrip("#"): tbl.column(name).to_numpy(zero_copy_only=False) for name in tbl.column_names}
    if "OR" in out:
        with np.errstate(divide="ignore"):
            out["BETA"] = np.log(out["OR"].astype(float))
        out["SE"], out["T_STAT"] = out.pop("LOG(OR)_SE"), out.pop("Z_STAT")
    keep = out["TEST"] == "ADD"
    return {k: v[keep] for k, v in out.items()}


def compare_to_plink2(ours_parquet: str, plink_glm: str, phenotype: str) -> dict:
    """Largest relative differences between our results and plink2's printed digits."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tbl = pq.read_table(ours_parquet, columns=["variant_index", "id", "a1", "obs_ct", "beta", "se",
                                               "t_stat", "p", "phenotype", "errcode"])
    tbl = tbl.filter(pc.equal(tbl["phenotype"], phenotype)).sort_by("variant_index")
    ours = {c: tbl.column(c).to_numpy(zero_copy_only=False) for c in tbl.column_names}
    theirs = read_plink2_glm(plink_glm)
    if len(theirs["ID"]) != len(ours["id"]) or not np.array_equal(theirs["ID"].astype(str), ours["id"].astype(str)):
        raise RuntimeError(f"{plink_glm}: variant lists differ from ours ({len(theirs['ID'])} vs {len(ours['id'])})")
    res = {"variants": int(len(ours["id"])),
           "a1_mismatch": int((theirs["A1"].astype(str) != ours["a1"].astype(str)).sum()),
           "obs_ct_mismatch": int((theirs["OBS_CT"] != ours["obs_ct"]).sum()),
           "na_mismatch": int((np.isnan(theirs["BETA"].astype(float)) != np.isnan(ours["beta"].astype(float))).sum())}
    both = ~np.isnan(theirs["BETA"].astype(float)) & ~np.isnan(ours["beta"].astype(float))
    beyond = np.zeros(int(both.sum()), dtype=bool)
    for ours_c, their_c in (("beta", "BETA"), ("se", "SE"), ("t_stat", "T_STAT"), ("p", "P")):
        a = ours[ours_c].astype(float)[both]
        b = theirs[their_c].astype(float)[both]
        if ours_c == "beta" and "OR" in theirs:  # the printed digits are the odds ratio's
            a, b = np.exp(a), theirs["OR"].astype(float)[both]
        # plink2 prints 6 significant digits: compare relative to the printed magnitude
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
        res[f"{ours_c}_max_rel"] = float(rel.max()) if rel.size else 0.0
        beyond |= rel > 1e-5
    # rows off plink2's printed digits (plink2 a7.4's logistic fit carries some state from one
    # variant into the next: such a row, run alone with --extract, prints our digits)
    res["rows_beyond_printed_digits"] = int(beyond.sum())
    return res


def run_bench(args) -> int:
    from .simulate import simulate_cohort

    if args.parties:
        return run_dash_bench(args)
    if getattr(args, "dosage", False):
        return run_dosage_bench(args)
    if shutil.which(args.plink2) is None:
        raise ConfigError(f"plink2 not found ({args.plink2!r}); install Debian's plink2 package or pass --plink2")
    work = os.path.abspath(args.workdir)
    tag = (f"n{args.samples}_m{args.variants}_k{args.covariates}_p{args.phenotypes}"
           f"_miss{args.missing_rate}_pm{args.pheno_missing_rate}_s{args.seed}")
    data = os.path.join(work, "cohort_" + tag)
    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(data, "cohort.bed")):
        shutil.rmtree(data, ignore_errors=True)
        cohort = simulate_cohort(data, n_samples=args.samples, n_variants=args.variants,
                                 n_covariates=args.covariates, n_phenotypes=args.phenotypes,
                                 missing_rate=args.missing_rate, pheno_missing_rate=args.pheno_missing_rate,
                                 n_monomorphic=max(1, args.variants // 10_000), seed=args.seed)
        bfile, pheno, covar = cohort.bfile, cohort.pheno, cohort.covar
        print(f"simulated {tag} in {time.perf_counter() - t0:.1f} s")
    else:
        bfile, pheno, covar = (os.path.join(data, "cohort"), os.path.join(data, "cohort.pheno"),
                               os.path.join(data, "cohort.covar"))
        print(f"reusing cohort {data}")
    for path in (bfile + ".bed", pheno, covar):
        if not os.path.exists(path):
            raise ConfigError(f"{path}: expected a simulated cohort file; delete {data} and rerun")

    if getattr(args, "case_control", None) is not None:
        pheno = write_case_control(pheno, args.case_control)
        tag += f"_cc{args.case_control}"
    builds = [args.plink2] + ([args.plink2_also] if getattr(args, "plink2_also", None) else [])
    for b in builds[1:]:
        if shutil.which(b) is None:
            raise ConfigError(f"--plink2-also {b}: not found or not executable")
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    ours_out = os.path.join(work, "ours_" + tag)
    score = getattr(args, "case_control", None) is not None and getattr(args, "binary_test", "hybrid") == "score"
    if score:
        ours_out += "_score"
    cmd = [sys.executable, "-m", "dash_spark.cli", "scan", "--bfile", bfile, "--pheno", pheno,
           "--covar", covar, "--out", ours_out, "--overwrite", "--no-plots", *_spark_flags(args),
           *(["--binary-test", "score"] if score else []), *(["--no-text"] if getattr(args, "no_text", False) else [])]
    plink_outs = [os.path.join(work, f"plink2_{i}_" + tag, "out") for i in range(len(builds))]
    runs: dict[str, list[float]] = {b: [] for b in builds}
    ours_runs: list[float] = []
    for _ in range(repeat):  # alternating: each build, then ours, so drifts in the host hit all alike
        for b, out in zip(builds, plink_outs):
            os.makedirs(os.path.dirname(out), exist_ok=True)
            runs[b].append(timed([b, "--bfile", bfile, "--pheno", pheno, "--covar", covar, "--glm", "hide-covar",
                                  "--threads", str(args.threads), "--memory", "8000", "--out", out],
                                 out + ".stdout"))
        shutil.rmtree(ours_out, ignore_errors=True)  # the bench's own output (untimed; also one of an older version)
        ours_runs.append(timed(cmd, ours_out + ".log"))
    medians = {b: float(np.median(t)) for b, t in runs.items()}
    fastest = min(builds, key=lambda b: medians[b])
    t_plink, t_ours = medians[fastest], float(np.median(ours_runs))

    import glob

    figures = {"samples": args.samples, "variants": args.variants, "covariates": args.covariates,
               "phenotypes": args.phenotypes, "missing_rate": args.missing_rate,
               "case_control": getattr(args, "case_control", None), "host_cpu": host_cpu(),
               "binary_test": "score" if score else ("hybrid" if getattr(args, "case_control", None) else None),
               "repeats": repeat, "plink2_seconds": round(t_plink, 2), "ours_seconds": round(t_ours, 2),
               "ratio": round(t_ours / t_plink, 3), "ours_runs": [round(t, 2) for t in ours_runs],
               "plink2_builds": {b: {"version": plink2_version(b), "median_seconds": round(medians[b], 2),
                                     "runs": [round(t, 2) for t in runs[b]],
                                     "ratio_ours": round(t_ours / medians[b], 3)} for b in builds},
               "plink2_fastest": fastest, "ours_phases": read_phases(ours_out + ".log"), "checks": {}}
    for i, out in enumerate([] if score else plink_outs):  # the score test has no plink2 counterpart
        for glm in sorted(glob.glob(out + ".*.glm.linear") + glob.glob(out + ".*.glm.logistic.hybrid")):
            base = os.path.basename(glm)[len(os.path.basename(out)) + 1 :]
            name = base.rsplit(".glm.", 1)[0]
            key = name if i == 0 else f"{name} ({os.path.basename(builds[i])} #{i + 1})"
            figures["checks"][key] = compare_to_plink2(os.path.join(ours_out, "results.parquet"), glm, name)
    if getattr(args, "scaling", False):
        runs = {}
        for cores in (1, 2):
            out = f"{ours_out}_local{cores}"
            shutil.rmtree(out, ignore_errors=True)
            base = [c for c in cmd if c not in ("--out", ours_out)]
            timed([*base, "--out", out, "--master", f"local[{cores}]"], out + ".log")
            runs[cores] = read_phases(out + ".log")
        figures["scaling"] = scale_model(runs[1], runs[2])
    emit_figures(figures, f"host: {figures['host_cpu']}   plink2 --glm ({plink2_version(fastest)}, the faster"
                          f"{' median' if repeat > 1 else ''}): {t_plink:.2f} s   dash-spark scan (Spark start "
                          f"included): {t_ours:.2f} s   ratio ours/plink2 = {t_ours / t_plink:.2f}", args.json)
    return 0


def write_case_control(pheno: str, fraction: float) -> str:
    """A case/control copy of the simulated phenotype file (``<pheno>.cc<fraction>``): per column,
    the samples above its ``1 - fraction`` quantile are cases (2), the others controls (1); missing
    stays missing."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--case-control: expected a fraction of cases between 0 and 1, found {fraction}")
    out = f"{pheno}.cc{fraction}"
    if os.path.exists(out):
        return out
    with open(pheno) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in fh]
    cols = []
    for j in range(2, len(header)):
        v = np.array([np.nan if r[j] in ("NA", "-9") else float(r[j]) for r in rows])
        cut = np.nanquantile(v, 1.0 - fraction)
        cols.append(np.where(np.isnan(v), "NA", np.where(v > cut, "2", "1")))
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\t".join(header) + "\n")
        for i, r in enumerate(rows):
            fh.write("\t".join([r[0], r[1], *(c[i] for c in cols)]) + "\n")
    os.replace(tmp, out)
    return out


def host_cpu() -> str:
    """The host's CPU model (plink2's speed differs by vendor) and its core count."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def plink2_version(path: str) -> str:
    """The first line of ``plink2 --version`` (e.g. ``PLINK v2.00a3.5 AVX2 (9 Aug 2022)``)."""
    try:
        run = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        return run.stdout.strip().splitlines()[0] if run.stdout.strip() else os.path.basename(path)
    except (OSError, subprocess.SubprocessError):
        return os.path.basename(path)


def scale_model(one: dict, two: dict, cores: int = 64) -> dict:
    """A scale model from a scan's phases at 1 and 2 cores: the driver's serial seconds (all but the
    scan stage, at 2 cores), the stage's strong-scaling efficiency ``stage(1) / (2 stage(2))``, and
    the projected wall time on ``cores`` cores by Amdahl's law, the stage scaling with that
    efficiency: ``serial + stage(1) / (cores * efficiency)``."""
    stage1, stage2 = float(one["scan_stage_seconds"]), float(two["scan_stage_seconds"])
    serial = float(two["total_seconds"]) - stage2
    eff = stage1 / (2.0 * stage2) if stage2 > 0 else float("nan")
    projected = serial + stage1 / (cores * eff) if eff > 0 else float("nan")
    return {"driver_serial_seconds": round(serial, 2), "stage_seconds_local1": round(stage1, 2),
            "stage_seconds_local2": round(stage2, 2), "stage_efficiency_1_to_2": round(eff, 3),
            f"projected_seconds_{cores}_cores": round(projected, 2), "phases_local1": one, "phases_local2": two}


def _spark_flags(args) -> list[str]:
    cmd = []
    if args.master:
        cmd += ["--master", args.master]
    for k, v in args.conf:
        cmd += ["--conf", f"{k}={v}"]
    if args.properties_file:
        cmd += ["--properties-file", args.properties_file]
    return cmd


def dosage_cohort(args, data: str) -> tuple[str, str, str, str]:
    """``(pfile prefix, bgen path, pheno, covar)`` of a dosage cohort under ``data`` (made once):
    plink2 --dummy writes the PGEN (fractional dosages at ``--dosage-fraction``, missing calls at
    ``--missing-rate``), plink2 --export the BGEN 1.2 (8 bits, REF first) and its .sample, our
    writer the .bgi; the phenotypes and covariates are simulated here."""
    from ..io.bgen import write_bgi

    pfile, bgen = os.path.join(data, "cohort"), os.path.join(data, "cohort.bgen")
    pheno, covar = os.path.join(data, "cohort.pheno"), os.path.join(data, "cohort.covar")
    if all(os.path.exists(p) for p in (pfile + ".pgen", bgen + ".bgi", pheno, covar)):
        print(f"reusing cohort {data}")
        return pfile, bgen, pheno, covar
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    t0 = time.perf_counter()
    timed([args.plink2, "--dummy", str(args.samples), str(args.variants), str(args.missing_rate),
           f"dosage-freq={args.dosage_fraction}", "acgt", "--seed", str(args.seed), "--threads", str(args.threads),
           "--make-pgen", "--out", pfile], pfile + ".dummy.log")
    timed([args.plink2, "--pfile", pfile, "--export", "bgen-1.2", "bits=8", "ref-first", "--threads",
           str(args.threads), "--out", bgen[: -len(".bgen")]], pfile + ".export.log")
    write_bgi(bgen)
    with open(pfile + ".psam") as fh:
        head = fh.readline().lstrip("#").split()
        iids = [line.split()[head.index("IID")] for line in fh if line.strip()]
    rng = np.random.default_rng(args.seed)
    n = len(iids)
    C = rng.normal(size=(n, args.covariates))
    with open(covar, "w") as fh:
        fh.write("#IID\t" + "\t".join(f"c{j + 1}" for j in range(args.covariates)) + "\n")
        for i in range(n):
            fh.write(iids[i] + "\t" + "\t".join(repr(float(v)) for v in C[i]) + "\n")
    with open(pheno, "w") as fh:
        fh.write("#IID\t" + "\t".join(f"pheno{t + 1}" for t in range(args.phenotypes)) + "\n")
        Y = C[:, :1].sum(axis=1, keepdims=True) * 0.2 + rng.normal(size=(n, args.phenotypes))
        Y[rng.random(Y.shape) < args.pheno_missing_rate] = np.nan
        for i in range(n):
            fh.write(iids[i] + "\t" + "\t".join("NA" if np.isnan(v) else repr(float(v)) for v in Y[i]) + "\n")
    print(f"made the dosage cohort (PGEN, BGEN, tables) in {time.perf_counter() - t0:.1f} s")
    return pfile, bgen, pheno, covar


def run_dosage_bench(args) -> int:
    """PGEN and BGEN scans against plink2 on the same files, each pair in the same run."""
    if shutil.which(args.plink2) is None:
        raise ConfigError(f"plink2 not found ({args.plink2!r}); install Debian's plink2 package or pass --plink2")
    work = os.path.abspath(args.workdir)
    tag = (f"dosage_n{args.samples}_m{args.variants}_k{args.covariates}_p{args.phenotypes}_f{args.dosage_fraction}"
           f"_miss{args.missing_rate}_s{args.seed}")
    pfile, bgen, pheno, covar = dosage_cohort(args, os.path.join(work, "cohort_" + tag))
    figures = {"samples": args.samples, "variants": args.variants, "covariates": args.covariates,
               "phenotypes": args.phenotypes, "dosage_fraction": args.dosage_fraction, "checks": {}}
    sources = {"pgen": (["--pfile", pfile], ["--pfile", pfile]),
               "bgen": (["--bgen", bgen, "ref-first", "--sample", bgen[:-5] + ".sample"],
                        ["--bgen", bgen, "ref-first", "--sample", bgen[:-5] + ".sample"])}
    lines = []
    for kind, (theirs_src, ours_src) in sources.items():
        plink_out = os.path.join(work, f"plink2_{kind}_" + tag, "out")
        os.makedirs(os.path.dirname(plink_out), exist_ok=True)
        t_plink = timed([args.plink2, *theirs_src, "--pheno", pheno, "--covar", covar, "--glm", "hide-covar",
                         "--threads", str(args.threads), "--memory", "8000", "--out", plink_out],
                        plink_out + ".stdout")
        ours_out = os.path.join(work, f"ours_{kind}_" + tag)
        shutil.rmtree(ours_out, ignore_errors=True)  # the bench's own output (untimed)
        t_ours = timed([sys.executable, "-m", "dash_spark.cli", "scan", *ours_src, "--pheno", pheno, "--covar", covar,
                        "--out", ours_out, "--overwrite", "--no-plots", *_spark_flags(args)], ours_out + ".log")
        figures[f"{kind}_plink2_seconds"] = round(t_plink, 2)
        figures[f"{kind}_ours_seconds"] = round(t_ours, 2)
        figures[f"{kind}_ratio"] = round(t_ours / t_plink, 3)
        figures[f"{kind}_ours_phases"] = read_phases(ours_out + ".log")
        import glob

        for glm in sorted(glob.glob(plink_out + ".*.glm.linear")):
            name = os.path.basename(glm)[len(os.path.basename(plink_out)) + 1 : -len(".glm.linear")]
            figures["checks"][f"{kind}:{name}"] = compare_to_plink2(os.path.join(ours_out, "results.parquet"), glm,
                                                                     name)
        lines.append(f"{kind.upper()}: plink2 {t_plink:.2f} s, ours {t_ours:.2f} s, ratio {t_ours / t_plink:.2f}")
    emit_figures(figures, "   ".join(lines) + "   (ours: Spark start included)", args.json)
    return 0


def run_dash_bench(args) -> int:
    """3 parties vs one pooled scan on the same samples, each step a fresh process, one at a time.

    The round runs as parties run it (README: Multi-party studies): when the round is announced
    every party joins, the coordinator starts ``combine --wait`` and each party ``party unmask
    --wait``; then the parties compress. When the last share is in, combine closes the round, the
    survivors reveal, and combine finishes. Critical path: the slowest compress + that finish
    (from the end of the last compress; parties work in parallel in a real study);
    ``critical_path_with_join`` adds the slowest join. With ``--dropout`` a fourth party (dave, no
    data of its own here) joins but never publishes: a study of 4 closes with 3 (the default
    threshold), so the coordinator closes the round without it after the others published
    (combine and unmask start then, their start-up on the critical path)."""
    from .waves import cached_split

    publishing = ("alice", "bob", "carol")
    parties = publishing + (("dave",) if args.dropout else ())
    data = cached_split(args, "dash", (("alice", 0.45), ("bob", 0.35), ("carol", 0.20)))
    bfile, pheno, covar = (os.path.join(data, x) for x in ("cohort", "cohort.pheno", "cohort.covar"))
    cli = [sys.executable, "-m", "dash_spark.cli"]
    times: dict[str, float] = {}
    shutil.rmtree(os.path.join(data, "pooled_out"), ignore_errors=True)  # the bench's own output
    times["pooled_scan"] = timed(cli + ["scan", "--bfile", bfile, "--pheno", pheno, "--covar", covar, "--out",
                                         os.path.join(data, "pooled_out"), "--overwrite", "--no-plots"],
                                  os.path.join(data, "pooled.log"))
    run = os.path.join(data, f"run-{int(time.time())}")  # fresh keys, ledgers and exchange per run
    keys = os.path.join(run, "keys")
    trust = os.path.join(run, "trust.txt")
    for p in parties + ("coord",):
        subprocess.run(cli + ["-q", "party", "keygen", "--out", os.path.join(keys, p)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(cli + ["-q", "party", "trust", "--trust", trust, "--add", f"{p}={keys}/{p}.pub"], check=True,
                       stdout=subprocess.DEVNULL)
    manifest = subprocess.run(cli + ["-q", "party", "manifest", "--study", "bench", "--exchange",
                                     os.path.join(run, "exchange"), "--bim", bfile + ".bim", "--sign-key",
                                     f"{keys}/coord.key"]
                              + [x for p in parties for x in ("--party", f"{p}={keys}/{p}.pub")],
                              check=True, capture_output=True, text=True).stdout.strip()

    def party(p):
        return ["--manifest", manifest, "--party", p, "--key", f"{keys}/{p}.key", "--trust", trust]

    for p in parties:
        times[f"join_{p}"] = timed(cli + ["party", "join", *party(p)], os.path.join(run, f"join_{p}.log"))
    out = os.path.join(run, "combined")
    close = ["--allow-dropouts"] if args.dropout else []

    def finishers():  # the coordinator's combine and the survivors' unmask, each waiting for its turn
        procs = [subprocess.Popen(cli + ["combine", "--manifest", manifest, "--out", out, "--no-plots", "--sign-key",
                                         f"{keys}/coord.key", "--wait", "600", *close],
                                  stdout=open(os.path.join(run, "combine.log"), "w"), stderr=subprocess.STDOUT)]
        return procs + [subprocess.Popen(cli + ["party", "unmask", *party(p), "--wait", "600"],
                                         stdout=open(os.path.join(run, f"unmask_{p}.log"), "w"),
                                         stderr=subprocess.STDOUT) for p in publishing]

    # without a dropout they are started when the round is announced, as in a real study (combine
    # closes the round once every share is in); with one, the coordinator closes after the others
    # published, so they start then
    procs = [] if args.dropout else finishers()
    if procs:
        time.sleep(3)  # their start-up is not on the critical path; keep it out of the compress timings
    try:
        for j, p in enumerate(publishing):
            if procs and j:  # the coordinator adds each share as it lands (on its own machine in a real
                time.sleep(2)  # study): let it finish before the next party's timed compress
            times[f"compress_{p}"] = timed(cli + ["party", "compress", *party(p), "--bfile", os.path.join(data, p),
                                                  "--pheno", os.path.join(data, f"{p}.pheno"), "--covar",
                                                  os.path.join(data, f"{p}.covar")], os.path.join(run, f"{p}.log"))
    except BaseException:
        for pr in procs:
            pr.kill()
        raise
    t0 = time.perf_counter()  # the finish: close, the reveals, the sum and the outputs
    procs = procs or finishers()
    if procs[0].wait() != 0 or any(pr.wait() != 0 for pr in procs[1:]):
        raise RuntimeError(f"finishing the round failed; logs in {run}")
    times["finish"] = time.perf_counter() - t0
    slowest = max(times[f"compress_{p}"] for p in publishing)
    critical = slowest + times["finish"]
    figures = {k: round(v, 2) for k, v in times.items()}
    figures["dropout"] = bool(args.dropout)
    figures["critical_path"] = round(critical, 2)
    figures["critical_path_over_pooled"] = round(critical / times["pooled_scan"], 3)
    with_join = critical + max(times[f"join_{p}"] for p in parties)
    figures["critical_path_with_join_over_pooled"] = round(with_join / times["pooled_scan"], 3)
    total = sum(v for k, v in times.items() if k != "pooled_scan")
    figures["total_over_pooled"] = round(total / times["pooled_scan"], 3)
    reference = os.path.join(data, "pooled_out", "results.parquet")  # the survivors hold every sample
    figures["max_rel_diff_vs_pooled"] = compare_results(reference, os.path.join(out, "results.parquet"))
    emit_figures(figures, f"{args.samples:,} samples x {args.variants:,} variants in 3 parties"
                          f"{' (and dave, who joins and drops)' if args.dropout else ''}: pooled scan {times['pooled_scan']:.1f} s; "
                          f"critical path {critical:.1f} s (slowest compress {slowest:.1f} s; close, unmask and "
                          f"combine {times['finish']:.1f} s): ratio {figures['critical_path_over_pooled']:.2f} "
                          f"({figures['critical_path_with_join_over_pooled']:.2f} with the slowest join); "
                          f"all steps: {total:.1f} s; results agree to {figures['max_rel_diff_vs_pooled']:.1e}",
                 args.json)
    return 0


def compare_results(a_path: str, b_path: str) -> float:
    """The largest difference in beta and se between two results Parquets of the same variants,
    relative to max(|value|, se) (raises if they cover other variants or sample counts)."""
    import pyarrow.parquet as pq

    key = [("phenotype", "ascending"), ("variant_index", "ascending")]
    a = pq.read_table(a_path, columns=["phenotype", "variant_index", "beta", "se", "obs_ct"]).sort_by(key)
    b = pq.read_table(b_path, columns=["phenotype", "variant_index", "beta", "se", "obs_ct"]).sort_by(key)
    if a.column("variant_index") != b.column("variant_index") or a.column("obs_ct") != b.column("obs_ct"):
        raise RuntimeError(f"{b_path}: the results cover other variants or sample counts than {a_path}")
    se = a.column("se").to_numpy(zero_copy_only=False)
    ok = ~np.isnan(se)
    worst = 0.0
    for col in ("beta", "se"):
        x = a.column(col).to_numpy(zero_copy_only=False)[ok]
        y = b.column(col).to_numpy(zero_copy_only=False)[ok]
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), se[ok]))))
    return worst
