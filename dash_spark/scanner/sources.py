"""Genotype sources: where the variants of a scan come from, behind one interface.

A source is opened on the driver (:func:`open_bfile`, :func:`open_features`): it checks its files
and reads the small metadata (samples, variant list). Its :meth:`reader` is a small picklable
object that travels with each Spark task and reads that task's variants itself, returning a block
(:class:`~dash_spark.stats.blocks.PackedBlock` for PLINK 1 bytes, :class:`DenseBlock` for real
values); the kernel is chosen by the block's type. The driver never touches genotype bytes.

Every source has:

- ``fam``: the samples in genotype order (:class:`~dash_spark.io.plink.Fam`: IIDs, founders);
- ``variants``: the variant list (:class:`~dash_spark.io.plink.Bim`: chrom, id, pos, alt, ref);
- ``count_alt``: whether A1 is always the counted allele (features have no alleles);
- ``options()``: the command-line options that name it (what a store records);
- ``reader()``: the task-side reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import ConfigError, InputError
from ..io import files
from ..io.bgen import REF_MODES, check_bgen, read_bgen_rows, read_bgen_samples, read_bgi
from ..io.features import read_feature_meta, read_feature_rows
from ..io.pgen import (PvarLayout, check_pgen, pfile_paths, pvar_path, read_pgen_alleles, read_pgen_dosages, read_psam,
                      read_pvar, read_pvar_range)
from ..io.plink import Bim, Fam, check_bed, read_bed_rows, read_bim, read_bim_range, read_fam
from ..io.tables import read_sample_ids
from ..stats.blocks import DenseBlock, PackedBlock


def qualify(path: str) -> str:
    """Absolute local paths for plain paths; URIs pass through."""
    return path if "://" in path else os.path.abspath(path)


def bfile_paths(prefix: str) -> tuple[str, str, str]:
    """``(PREFIX.bed, PREFIX.bim, PREFIX.fam)``; a prefix given with one of the endings is accepted."""
    for ext in (".bed", ".bim", ".fam"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix + ".bed", prefix + ".bim", prefix + ".fam"


# ------------------------------------------------------------------------------------------------
# task side


@dataclass(frozen=True)
class BedReader:
    """Reads packed .bed bytes (and, per range, the .bim lines) of given variants (executor side)."""

    bed_path: str
    bim_path: str
    n_samples: int

    def range_meta(self, start: int, stop: int, bim_start: int, bim_stop: int):
        """The .bim fields ``(chrom, id, pos, alt, ref)`` of variants ``[start, stop)``."""
        return read_bim_range(self.bim_path, bim_start, bim_stop, start + 1)

    def read(self, variants: np.ndarray, range_meta=None, offsets=None, *, reuse: bool = False) -> PackedBlock:
        """Sorted ``variants``; with ``range_meta`` from :meth:`range_meta` and the variants'
        ``offsets`` in that range, the block carries their metadata. With ``reuse`` the bytes land
        in this thread's read buffer, valid until its next ``reuse`` read (a task's sub-blocks,
        one after another: no fresh pages per block)."""
        meta = None if range_meta is None else tuple(x[offsets] for x in range_meta)
        return PackedBlock(read_bed_rows(self.bed_path, self.n_samples, variants, reuse=reuse), self.n_samples, meta)


@dataclass(frozen=True)
class FeatureReader:
    """Reads rows of a features Parquet table as dense values (executor side)."""

    path: str
    n_samples: int

    def range_meta(self, start: int, stop: int, bim_start: int, bim_stop: int):
        return None  # the rows carry their own metadata

    def read(self, variants: np.ndarray, range_meta=None, offsets=None, *, reuse: bool = False) -> DenseBlock:
        values, meta = read_feature_rows(self.path, self.n_samples, variants)
        return DenseBlock(values, meta)


@dataclass(frozen=True)
class PgenReader:
    """Reads ALT dosages of given variants from a plink2 .pgen with pgenlib, and per range the
    .pvar lines (executor side)."""

    pgen_path: str
    pvar_path: str
    n_samples: int
    n_variants: int
    layout: PvarLayout
    first_line: int

    def range_meta(self, start: int, stop: int, bim_start: int, bim_stop: int):
        """The .pvar fields ``(chrom, id, pos, alt, ref)`` of variants ``[start, stop)``."""
        return read_pvar_range(self.pvar_path, bim_start, bim_stop, self.first_line + start, self.layout)

    def read(self, variants: np.ndarray, range_meta=None, offsets=None, *, reuse: bool = False) -> DenseBlock:
        meta = None if range_meta is None else tuple(x[offsets] for x in range_meta)
        return DenseBlock(read_pgen_dosages(self.pgen_path, self.n_samples, self.n_variants, variants), meta)

    def allele_dosages(self, variants: np.ndarray, n_alleles) -> list[np.ndarray]:
        """Each allele's dosages [shape: (K, n)] (REF first) of multiallelic variants."""
        return read_pgen_alleles(self.pgen_path, self.n_samples, self.n_variants, variants, n_alleles)


@dataclass(frozen=True)
class BgenReader:
    """Reads ALT dosages (and the variants' fields) of given variants from a BGEN through its .bgi
    (executor side)."""

    path: str
    n_samples: int
    ref: str

    def range_meta(self, start: int, stop: int, bim_start: int, bim_stop: int):
        return None  # the records carry their own metadata

    def read(self, variants: np.ndarray, range_meta=None, offsets=None, *, reuse: bool = False) -> DenseBlock:
        values, meta = read_bgen_rows(self.path, self.n_samples, variants, self.ref)
        return DenseBlock(values, meta)


# ------------------------------------------------------------------------------------------------
# driver side


@dataclass(frozen=True)
class BedSource:
    """A PLINK 1 fileset ``PREFIX.bed/.bim/.fam`` (SNP-major); the dosage counts .bim column 5."""

    prefix: str
    count_alt = False
    kind = "bed"

    @property
    def paths(self) -> tuple[str, str, str]:
        return bfile_paths(self.prefix)

    @property
    def label(self) -> str:
        return self.prefix

    @cached_property
    def fam(self) -> Fam:
        return read_fam(self.paths[2])

    @cached_property
    def variants(self) -> Bim:
        bed, bim_path, fam_path = self.paths
        bim = read_bim(bim_path)
        check_bed(bed, self.fam.n_samples, bim.n_variants, fam_path, bim_path)
        return bim

    @property
    def samples_path(self) -> str:
        return self.paths[2]

    def check(self) -> "BedSource":
        for p in self.paths:
            try:
                found = files.exists(p)
            except OSError as exc:  # object storage unreachable, no credentials, unknown scheme
                raise InputError(f"{p}: cannot reach the file ({exc}); check the URI and the storage "
                                 "credentials in the environment") from None
            if not found:
                raise InputError(f"{p}: file not found; --bfile expects PREFIX with PREFIX.bed/.bim/.fam")
        self.variants  # noqa: B018 - reads the .fam and .bim and checks the .bed's size
        return self

    def input_paths(self) -> tuple[str, ...]:
        return self.paths

    def options(self) -> dict:
        return {"bfile": self.prefix}

    def reader(self) -> BedReader:
        bed, bim_path, _ = self.paths
        return BedReader(qualify(bed), qualify(bim_path), self.fam.n_samples)


@dataclass(frozen=True)
class FeatureSource:
    """Real-valued features: a Parquet table (or a directory of Parquet parts, as Spark writes
    one) with ``id``, ``values`` (list<double>, one per sample in the order of ``samples``,
    null/NaN missing), optional ``chrom``/``pos``; ``samples`` lists the sample IDs."""

    path: str
    samples: str
    count_alt = True
    kind = "features"

    @property
    def label(self) -> str:
        return self.path

    @cached_property
    def fam(self) -> Fam:
        ids = read_sample_ids(self.samples)
        return Fam(path=self.samples, fids=ids, iids=ids, founder=np.ones(len(ids), dtype=bool))

    @cached_property
    def variants(self) -> Bim:
        return read_feature_meta(self.path, self.fam.n_samples)

    @property
    def samples_path(self) -> str:
        return self.samples

    def check(self) -> "FeatureSource":
        for p in (self.path, self.samples):
            if not os.path.exists(p):
                raise InputError(f"{p}: file not found")
        self.variants  # noqa: B018 - checks the table against the sample list
        return self

    def input_paths(self) -> tuple[str, ...]:
        return (self.path, self.samples)

    def options(self) -> dict:
        return {"features": self.path, "feature_samples": self.samples}

    def reader(self) -> FeatureReader:
        return FeatureReader(qualify(self.path), self.fam.n_samples)


@dataclass(frozen=True)
class PgenSource:
    """A plink2 fileset ``PREFIX.pgen/.pvar/.psam`` (hard calls and dosages); the dosage counts ALT."""

    prefix: str
    count_alt = False
    kind = "pgen"

    @property
    def paths(self) -> tuple[str, str, str]:
        return pfile_paths(self.prefix)

    @property
    def label(self) -> str:
        return self.prefix

    @cached_property
    def fam(self) -> Fam:
        return read_psam(self.paths[2])

    @cached_property
    def _pvar(self):
        return read_pvar(pvar_path(self.paths[1]))

    @cached_property
    def variants(self) -> Bim:
        pgen, pvar, psam = self.paths
        bim = self._pvar[0]
        check_pgen(pgen, self.fam.n_samples, bim.n_variants, psam, pvar)
        return bim

    @property
    def samples_path(self) -> str:
        return self.paths[2]

    def check(self) -> "PgenSource":
        for p in self.paths:
            if not files.exists(p) and not (p.endswith(".pvar") and files.exists(p + ".zst")):
                raise InputError(f"{p}: file not found; --pfile expects PREFIX with PREFIX.pgen, PREFIX.pvar (or "
                                 ".pvar.zst) and PREFIX.psam")
        self.variants  # noqa: B018 - reads the .psam and .pvar and checks the .pgen against them
        return self

    def input_paths(self) -> tuple[str, ...]:
        pgen, pvar, psam = self.paths
        return pgen, pvar_path(pvar), psam

    def options(self) -> dict:
        return {"pfile": self.prefix}

    def reader(self) -> PgenReader:
        pgen, pvar, _ = self.paths
        bim, layout, first_line = self._pvar
        return PgenReader(qualify(pgen), qualify(pvar_path(pvar)), self.fam.n_samples, bim.n_variants, layout, first_line)


@dataclass(frozen=True)
class BgenSource:
    """A BGEN file (v1.1-v1.3) with its bgenix index ``FILE.bgi``; ``ref`` says which allele is REF
    (``ref-first``: the first, ALT = the second; ``ref-last``: the reverse), as plink2's --bgen
    modifier; samples from ``sample`` (an Oxford .sample) or the file's own IDs."""

    path: str
    ref: str = "ref-first"
    sample: str | None = None
    #: plink2's --id-delim: the file's own sample IDs are FID<delim>IID
    id_delim: str | None = None
    count_alt = False
    kind = "bgen"

    @property
    def label(self) -> str:
        return self.path

    @cached_property
    def fam(self) -> Fam:
        return read_bgen_samples(self.path, self.sample, self.id_delim)

    @cached_property
    def _index(self):
        return read_bgi(self.path)

    @cached_property
    def variants(self) -> Bim:
        bim, _ = self._index
        if self.ref == "ref-last":  # the first allele is ALT
            bim = Bim(path=bim.path, chrom=bim.chrom, id=bim.id, pos=bim.pos, alt=bim.ref, ref=bim.alt,
                      line_offsets=bim.line_offsets)
        return bim

    @property
    def samples_path(self) -> str:
        return self.sample or self.path

    def check(self) -> "BgenSource":
        if self.ref not in REF_MODES:
            raise ConfigError(f"--bgen {self.path}: expected 'ref-first' or 'ref-last' after the file name (which "
                              f"allele is REF, as plink2's --bgen), found {self.ref!r}")
        for p in (self.path, self.sample):
            if p and not files.exists(p):
                raise InputError(f"{p}: file not found" + ("; --bgen expects a .bgen file" if p == self.path
                                                          else "; --sample expects an Oxford .sample file"))
        self.fam  # noqa: B018 - the samples, counted against the header
        self.variants  # noqa: B018 - the .bgi, checked against the file
        check_bgen(self.path, self.fam.n_samples, self.ref)
        return self

    def input_paths(self) -> tuple[str, ...]:
        return (self.path, self.path + ".bgi") + ((self.sample,) if self.sample else ())

    def options(self) -> dict:
        out = {"bgen": self.path, "bgen_ref": self.ref}
        if self.sample:
            out["sample"] = self.sample
        if self.id_delim is not None:
            out["id_delim"] = self.id_delim
        return out

    def reader(self) -> BgenReader:
        return BgenReader(qualify(self.path), self.fam.n_samples, self.ref)


GenotypeSource = BedSource | FeatureSource | PgenSource | BgenSource
GENOTYPE_SOURCES = (BedSource, FeatureSource, PgenSource, BgenSource)


def open_bfile(prefix: str) -> BedSource:
    """A PLINK 1 fileset ``PREFIX.bed/.bim/.fam``, checked (the .bed's size against the .fam and .bim).

    Parameters
    ----------
    prefix : str
        The fileset's path without extension (local, or s3:// gs:// ...).

    Returns
    -------
    BedSource
        Its samples (``.fam``: ``n_samples`` rows) and variants (``.variants``: ``n_variants``).

    Examples
    --------
    >>> from dash_spark.api import example_data
    >>> geno = open_bfile(example_data().bfile)
    >>> geno.fam.n_samples, geno.variants.n_variants
    (300, 120)
    >>> open_bfile("no/such/cohort")
    Traceback (most recent call last):
    ...
    dash_spark.errors.InputError: no/such/cohort.bed: ...
    """
    return BedSource(str(prefix)).check()


def open_features(path: str, samples: str) -> FeatureSource:
    """Real-valued features from Parquet (see :class:`FeatureSource`), checked against ``samples``.

    Parameters
    ----------
    path : str
        A Parquet file (or a directory of parts): one row per feature, ``id`` (string) and
        ``values`` (list<double>, one per sample, null/NaN missing), optional ``chrom``, ``pos``.
    samples : str
        A file of the sample IDs, in the order of the values.

    Returns
    -------
    FeatureSource
        Its samples and features (``.variants``: one per row).

    Examples
    --------
    >>> import os, tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> folder = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"id": ["f1", "f2"], "values": [[0.5, 1.0, 2.0], [1.5, None, 0.0]]}),
    ...                os.path.join(folder, "f.parquet"))
    >>> _ = open(os.path.join(folder, "ids.txt"), "w").write("s1\\ns2\\ns3\\n")
    >>> feats = open_features(os.path.join(folder, "f.parquet"), os.path.join(folder, "ids.txt"))
    >>> feats.fam.n_samples, feats.variants.n_variants
    (3, 2)
    """
    return FeatureSource(str(path), str(samples)).check()


def open_pfile(prefix: str) -> PgenSource:
    """A plink2 fileset ``PREFIX.pgen/.pvar/.psam``, checked (the .pgen against the .psam and .pvar).

    Parameters
    ----------
    prefix : str
        The fileset's path without extension (``.pvar`` or ``.pvar.zst``; local or object storage).

    Returns
    -------
    PgenSource
        Its samples (``.fam``) and variants (``.variants``); dosages are read by the tasks.

    Examples
    --------
    >>> open_pfile("no/such/cohort")
    Traceback (most recent call last):
    ...
    dash_spark.errors.InputError: no/such/cohort...
    """
    return PgenSource(str(prefix)).check()


def open_bgen(path: str, ref: str = "ref-first", sample: str | None = None,
              id_delim: str | None = None) -> BgenSource:
    """A BGEN file, checked (indexed once when it has no ``.bgi``).

    Parameters
    ----------
    path : str
        The ``.bgen`` (v1.2, layout 2; local or object storage).
    ref : {"ref-first", "ref-last"}
        Which allele is REF, as plink2's ``--bgen`` modifier.
    sample : str, optional
        A ``.sample`` file naming the samples (else the IDs stored in the file).
    id_delim : str, optional
        plink2's ``--id-delim``: the stored IDs are ``FID<delim>IID`` (REGENIE writes ``FID_IID``).

    Returns
    -------
    BgenSource
        Its samples and variants.

    Examples
    --------
    >>> open_bgen("cohort.bgen", "ref-middle")
    Traceback (most recent call last):
    ...
    dash_spark.errors.ConfigError: ...expected 'ref-first' or 'ref-last'...
    """
    return BgenSource(str(path), ref, None if sample is None else str(sample), id_delim).check()


def source_from_options(bfile: str | None = None, features: str | None = None,
                        feature_samples: str | None = None, pfile: str | None = None, bgen: str | None = None,
                        bgen_ref: str | None = None, sample: str | None = None, id_delim: str | None = None,
                        **_ignored) -> GenotypeSource:
    """The source that command-line options (or a store's record of them) name."""
    if features:
        return FeatureSource(features, feature_samples)
    if pfile:
        return PgenSource(pfile)
    if bgen:
        return BgenSource(bgen, bgen_ref or "ref-first", sample, id_delim)
    return BedSource(bfile)
