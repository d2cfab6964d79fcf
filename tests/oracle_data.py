"""Test cohorts with awkward cases, and an independent per-variant statsmodels oracle.

The oracle shares no code with dash_spark: pandas reads the text files, bed-reader decodes the
genotypes, statsmodels fits every variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dash_spark.bench.simulate import write_bed

COVARS = ("age", "sex", "PC1")
PHENOS = ("pheno1", "pheno2", "pheno3")


@dataclass
class Files:
    bfile: str
    pheno: str
    covar: str
    n: int
    m: int
    special: dict


def make_files(tmp, rng, *, n=400, m=300, missing=0.02, name="c") -> Files:
    """Write .bed/.bim/.fam, a phenotype and a covariate file with the cases the scan must handle.

    - genotype calls missing at rate ``missing``; a monomorphic variant (all 0) and an all-ALT one;
      a variant with a single non-zero call; a variant equal to 2*sex (collinear with a covariate);
    - covariates: age in years (large mean), sex, PC1; 5 samples absent from the covariate file,
      3 with PC1 = NA;
    - pheno1 with NA for ~5% of samples, pheno2 with -9 for another ~5%, pheno3 missing exactly where
      pheno1 is (they share a pattern); the phenotype file is shuffled and has 2 unknown IDs.
    """
    iids = [f"id{i:04d}" for i in range(n)]
    freqs = rng.uniform(0.03, 0.97, m)
    G = rng.binomial(2, freqs, size=(n, m)).astype(np.int8)
    age = rng.uniform(40, 70, n)
    sex = rng.integers(0, 2, n).astype(float)
    pc1 = rng.normal(size=n)
    special = {"mono0": 10, "mono2": 20, "single": 30, "sexlinked": 40}
    G[:, 10] = 0
    G[:, 20] = 2
    G[:, 30] = 0
    G[7, 30] = 1
    G[:, 40] = (2 * sex).astype(np.int8)
    if missing:
        G[rng.random((n, m)) < missing] = -1
        G[rng.random(n) < 0.3, 60] = -1  # one variant with many missing calls
    G[7, 30] = 1
    G[:, 40] = (2 * sex).astype(np.int8)  # no missing calls: stays exactly collinear
    chrom = ["1"] * (m // 2) + ["2"] * (m - m // 2)
    pos = list(range(1000, 1000 + 100 * m, 100))
    prefix = str(tmp / name)
    alleles = rng.choice(list("ACGT"), size=(m, 2))
    alt = [a for a, b in alleles]
    ref = [{"A": "C", "C": "G", "G": "T", "T": "A"}[a] for a in alt]
    write_bed(prefix, n, [G], iids=iids, chrom=chrom, pos=pos, ids=[f"rs{j}" for j in range(m)],
              alt=alt, ref=ref)
    causal = [3, 100, 200]
    Gf = np.where(G < 0, 0, G).astype(float)
    base = 0.03 * age + 0.5 * sex + 0.3 * pc1
    ys = []
    for t in range(3):
        y = base + Gf[:, causal] @ rng.normal(0.4, 0.1, 3) + rng.normal(size=n) + 10 * t
        ys.append(y)
    miss1 = rng.random(n) < 0.05
    miss2 = rng.random(n) < 0.05
    order = rng.permutation(n)
    with open(tmp / f"{name}.pheno.tsv", "w") as fh:
        fh.write("#FID\tIID\t" + "\t".join(PHENOS) + "\n")
        for i in order:
            vals = [
                "NA" if miss1[i] else repr(float(ys[0][i])),
                "-9" if miss2[i] else repr(float(ys[1][i])),
                "nan" if miss1[i] else repr(float(ys[2][i])),
            ]
            fh.write(f"{iids[i]}\t{iids[i]}\t" + "\t".join(vals) + "\n")
        fh.write("ghost1\tghost1\t1.5\t2.5\t3.5\nghost2\tghost2\t1.5\t2.5\t3.5\n")
    no_cov = set(rng.choice(n, 5, replace=False).tolist())
    pc_na = set(rng.choice(sorted(set(range(n)) - no_cov), 3, replace=False).tolist())
    with open(tmp / f"{name}.covar.tsv", "w") as fh:
        fh.write("FID IID age sex PC1\n")  # space separated, no '#'
        for i in rng.permutation(n):
            if i in no_cov:
                continue
            fh.write(f"{iids[i]} {iids[i]} {float(age[i])!r} {int(sex[i])} {'NA' if i in pc_na else repr(float(pc1[i]))}\n")
    return Files(prefix, str(tmp / f"{name}.pheno.tsv"), str(tmp / f"{name}.covar.tsv"), n, m, special)


def statsmodels_oracle(files: Files, phenotype: str, mode: str = "mean", condition=(), variants=None,
                       remove=()) -> dict[str, np.ndarray]:
    """Per-variant OLS of ``phenotype ~ x + 1 + age + sex + PC1``; ``mode="mean"`` mean-imputes
    missing calls, ``mode="drop"`` fits each variant on the samples with a call (complete cases).

    ``condition``: variant indices added as covariates, their missing calls replaced by their mean
    over the analysed samples (forward selection's conditioning); ``variants``: only fit these;
    ``remove``: IIDs left out. Also returns ``joint``: the fit of ``phenotype ~ 1 + covariates +
    condition`` (None without ``condition``).

    Returns arrays over variants (ALT orientation): beta, se, t, p, n, const (bool: x constant on
    the analysed samples). Variants that are constant get NaN.
    """
    import pandas as pd
    import statsmodels.api as sm
    from bed_reader import open_bed

    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        X = bed.read(dtype="float64")
        fam_iids = list(bed.iid)
    ph = pd.read_csv(files.pheno, sep="\t", na_values=["NA", "nan", "-9"], keep_default_na=False)
    ph = ph.rename(columns={"#FID": "FID"}).set_index("IID")
    cv = pd.read_csv(files.covar, sep=" ", na_values=["NA"], keep_default_na=False).set_index("IID")
    df = pd.DataFrame(index=fam_iids).join(ph[[phenotype]]).join(cv[list(COVARS)])
    keep = df.notna().all(axis=1).to_numpy() & ~np.isin(np.array(fam_iids), list(remove))
    y = df[phenotype].to_numpy()[keep]
    C = sm.add_constant(df[list(COVARS)].to_numpy()[keep], prepend=True)
    out = {k: np.full(files.m, np.nan) for k in ("beta", "se", "t", "p")}
    out["n"] = np.full(files.m, keep.sum())
    out["const"] = np.zeros(files.m, bool)
    out["joint"] = None
    if len(condition):
        Z = X[keep][:, list(condition)]
        Z = np.where(np.isnan(Z), np.nanmean(Z, axis=0), Z)
        C = np.column_stack([C, Z])
        out["joint"] = sm.OLS(y, C).fit()
    for j in range(files.m) if variants is None else variants:
        x = X[keep, j]
        rows = np.ones(len(x), bool)
        if mode == "mean":
            x = np.where(np.isnan(x), np.nanmean(x) if np.isfinite(x).any() else 0.0, x)
        else:
            rows = ~np.isnan(x)
            x = x[rows]
            out["n"][j] = rows.sum()
        if len(x) == 0 or np.ptp(x) == 0:
            out["const"][j] = True
            continue
        if j == files.special.get("sexlinked") or j in condition:
            continue  # exactly collinear with sex: no OLS solution to compare with
        fit = sm.OLS(y[rows], np.column_stack([x, C[rows]])).fit()
        out["beta"][j], out["se"][j] = fit.params[0], fit.bse[0]
        out["t"][j], out["p"][j] = fit.tvalues[0], fit.pvalues[0]
    return out


def split_bed(files, tmp, parts):
    """Write each part's own .bed/.bim/.fam (its samples only, their .fam sex kept) with bed-reader's
    reader and our writer; ``files``: a :class:`Files` or a PLINK prefix."""
    from bed_reader import open_bed

    from dash_spark.bench.simulate import write_bed

    bfile = files if isinstance(files, str) else files.bfile
    with open_bed(bfile + ".bed", count_A1=True) as bed:
        X = bed.read(dtype="float32")
    fam = [line.split() for line in open(bfile + ".fam") if line.strip()]
    bim = [line.split() for line in open(bfile + ".bim") if line.strip()]
    prefixes = {}
    for name, idx in parts.items():
        G = np.where(np.isnan(X[idx]), -1, X[idx]).astype(np.int8)
        prefix = str(tmp / name)
        write_bed(prefix, len(idx), [G], iids=[fam[i][1] for i in idx], chrom=[b[0] for b in bim],
                  pos=[int(b[3]) for b in bim], ids=[b[1] for b in bim], alt=[b[4] for b in bim],
                  ref=[b[5] for b in bim])
        rows = [line.split() for line in open(prefix + ".fam") if line.strip()]
        with open(prefix + ".fam", "w") as fh:
            for r, i in zip(rows, idx):
                r[4] = fam[i][4]
                fh.write(" ".join(r) + "\n")
        prefixes[name] = prefix
    return prefixes


def make_split_files(tmp, seed: int, names, probs, *, n: int, m: int, missing: float = 0.03):
    """:func:`make_files` (``rng(seed)``) split at random (``rng(seed + 1)``) into one fileset per name.

    Returns ``(files, {name: sample rows}, {name: prefix})``; the phenotype and covariate files are shared.
    """
    files = make_files(tmp, np.random.default_rng(seed), n=n, m=m, missing=missing, name="pooled")
    assign = np.random.default_rng(seed + 1).choice(len(names), files.n, p=probs)
    parts = {name: np.flatnonzero(assign == i) for i, name in enumerate(names)}
    return files, parts, split_bed(files, tmp, parts)
