"""Simulated cohorts split by samples at biobank scale, for ``dash-spark bench --refresh`` (recruitment
waves) and ``--parties`` (the biobanks of a study).

:func:`dash_spark.bench.simulate.simulate_cohort` draws every genotype from seeded PCG64 streams and
writes through dosage matrices: right for tests, slow for 10^11 genotypes. This generator writes
the packed .bed bytes directly, with a splitmix64 stream per variant in a parallel numba kernel:

- ALT frequency Uniform(0.05, 0.95) per variant, genotypes in Hardy-Weinberg proportions, each
  call missing with ``missing_rate``; probabilities resolved to 2^-16;
- ``cohort.*``: the union; one fileset per part, each a consecutive run of the union's samples of
  about its share (boundaries are multiples of 4 samples, so a part's rows are byte slices of the
  union's);
- ``<fileset>.pheno`` / ``.covar`` per fileset (a wave, or a party, comes with its own tables);
  ``k`` covariates (standard normal), one phenotype ``pheno1`` with five causal variants
  explaining 30% of its variance and the covariates 10%.

The output is a pure function of ``(n, m, k, parts, missing_rate, seed)``.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

from ..errors import ConfigError

CHUNK_VARIANTS = 2000


@njit(parallel=True, cache=True)
def _draw_rows(out, cuts, seeds):  # pragma: no cover - jitted
    """Row r of ``out`` (packed bytes) from splitmix64 stream ``seeds[r]``; a call's 16-bit uniform
    u gives code 01 (missing) below cuts[r, 0], 00 (two ALT) below cuts[r, 1], 10 (het) below
    cuts[r, 2], else 11."""
    for r in prange(out.shape[0]):
        x = seeds[r]
        c0, c1, c2 = cuts[r, 0], cuts[r, 1], cuts[r, 2]
        for b in range(out.shape[1]):
            x += np.uint64(0x9E3779B97F4A7C15)
            z = x
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            byte = 0
            for s in range(4):
                u = (z >> np.uint64(16 * s)) & np.uint64(0xFFFF)
                if u < c0:
                    code = 1
                elif u < c1:
                    code = 0
                elif u < c2:
                    code = 2
                else:
                    code = 3
                byte |= code << (2 * s)
            out[r, b] = byte


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_table(path: str, header: str, iids: np.ndarray, columns: list[np.ndarray]) -> None:
    rows = ["\t".join([iid, iid, *(repr(float(c[i])) for c in columns)]) for i, iid in enumerate(iids)]
    _write_text(path, header + "\n" + "\n".join(rows) + "\n")


WAVES = (("wave1", 0.9), ("wave2", 0.1))


def simulate_waves(data: str, n: int, m: int, k: int, *, parts=WAVES, missing_rate: float = 0.0,
                   seed: int = 11) -> dict[str, str]:
    """Write the union and its ``parts`` (``(name, share)`` pairs, in sample order) under ``data``
    (see the module doc); returns every fileset's prefix."""
    from ..stats.kernel import decode

    shares = np.array([share for _, share in parts], dtype=float)
    bounds = 4 * np.round(np.concatenate([[0.0], np.cumsum(shares)]) / shares.sum() * (n // 4)).astype(int)
    if n % 4 or (np.diff(bounds) <= 0).any():
        raise ConfigError(f"simulate_waves: n must be a multiple of 4 with every part non-empty; found {n}")
    if k < 1:
        raise ConfigError(f"simulate_waves: need at least one covariate; found k={k}")
    spans = {name: (int(a), int(b)) for (name, _), a, b in zip(parts, bounds[:-1], bounds[1:])}
    os.makedirs(data, exist_ok=True)
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.05, 0.95, m)
    p2, p1 = freq**2, 2 * freq * (1 - freq)
    scale = 65536.0 * (1 - missing_rate)
    c0 = 65536.0 * missing_rate
    cuts = np.column_stack([c0 + 0 * freq, c0 + scale * p2, c0 + scale * (p2 + p1)]).round().astype(np.uint64)
    seeds = rng.integers(0, 2**63, m, dtype=np.uint64)
    iids = np.array([f"S{i:07d}" for i in range(1, n + 1)])
    chrom = np.repeat(np.arange(1, 4), -(-m // 3))[:m]
    pos = 1000 + 1000 * np.concatenate([np.arange((chrom == c).sum()) for c in (1, 2, 3)])
    bases = np.array(list("ACGT"))
    allele = rng.integers(0, 4, m)
    alt, ref = bases[allele], bases[(allele + rng.integers(1, 4, m)) % 4]
    bim = "".join(f"{c}\trs{c}_{p}\t0\t{p}\t{x}\t{y}\n" for c, p, x, y in zip(chrom, pos, alt, ref))
    nb = n // 4
    files = {name: open(os.path.join(data, f"{name}.bed.tmp"), "wb") for name in ("cohort", *spans)}
    try:
        for fh in files.values():
            fh.write(bytes([0x6C, 0x1B, 0x01]))
        buf = np.empty((CHUNK_VARIANTS, nb), dtype=np.uint8)
        for s in range(0, m, CHUNK_VARIANTS):
            e = min(s + CHUNK_VARIANTS, m)
            rows = buf[: e - s]
            _draw_rows(rows, cuts[s:e], seeds[s:e])
            files["cohort"].write(rows.tobytes())
            for name, (a, b) in spans.items():
                files[name].write(np.ascontiguousarray(rows[:, a // 4 : b // 4]).tobytes())
    finally:
        for fh in files.values():
            fh.close()
    causal = np.sort(rng.choice(m, 5, replace=False))
    dosages = []
    with open(os.path.join(data, "cohort.bed.tmp"), "rb") as fh:
        for v in causal:
            fh.seek(3 + int(v) * nb)
            dosages.append(decode(np.frombuffer(fh.read(nb), np.uint8).reshape(1, nb), n)[:, 0])
    X = np.column_stack(dosages)
    X = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    g = (X - X.mean(axis=0)) @ rng.normal(size=5)
    C = rng.normal(size=(n, k))
    h = C @ rng.normal(size=k)
    y = np.sqrt(0.3) * g / g.std() + np.sqrt(0.1) * h / h.std() + np.sqrt(0.6) * rng.normal(size=n)
    out = {}
    for name, rows in [("cohort", slice(0, n))] + [(name, slice(a, b)) for name, (a, b) in spans.items()]:
        prefix = os.path.join(data, name)
        ids = iids[rows]
        _write_text(prefix + ".bim", bim)
        _write_text(prefix + ".fam", "".join(f"{i} {i} 0 0 0 -9\n" for i in ids))
        _write_table(prefix + ".pheno", "#FID\tIID\tpheno1", ids, [y[rows]])
        _write_table(prefix + ".covar", "#FID\tIID\t" + "\t".join(f"PC{j + 1}" for j in range(k)), ids,
                     [C[rows, j] for j in range(k)])
        os.replace(prefix + ".bed.tmp", prefix + ".bed")  # last: a complete .bed marks a complete fileset
        out[name] = prefix
    return out


def cached_split(args, kind: str, parts) -> str:
    """The folder ``<workdir>/<kind>_n.._s<seed>`` with the cohort of the bench ``args`` split into
    ``parts`` (:func:`simulate_waves`); simulated once, reused while complete."""
    import shutil

    tag = f"{kind}_n{args.samples}_m{args.variants}_k{args.covariates}_miss{args.missing_rate}_s{args.seed}"
    data = os.path.join(os.path.abspath(args.workdir), tag)
    if not all(os.path.exists(os.path.join(data, f"{x}.bed")) for x in ("cohort", *(name for name, _ in parts))):
        shutil.rmtree(data, ignore_errors=True)
        print(f"simulating {args.samples:,} samples x {args.variants:,} variants in {data} ...", flush=True)
        simulate_waves(data, args.samples, args.variants, args.covariates, parts=parts,
                       missing_rate=args.missing_rate, seed=args.seed)
    return data
