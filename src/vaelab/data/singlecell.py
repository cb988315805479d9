"""Single-cell count data by name: ``pbmc68k``, ``celltypist-demo`` (offline) and ``pbmc3k``.

=====================  ============  =======  =============================================
name                   cells x genes  labels  where the counts come from
=====================  ============  =======  =============================================
``pbmc68k``            700 x 765      10      scanpy's ``datasets/10x_pbmc68k_reduced.h5ad``
                                              (``pip install scanpy``); counts recovered
                                              from ``raw.X``, see below
``celltypist-demo``    559 x 32,786   none    celltypist's ``data/samples/
                                              sample_cell_by_gene.csv`` (``pip install
                                              celltypist``): raw UMI counts
``pbmc3k``             2,700 x 32,738 none    downloaded once: 10x Genomics' PBMC 3k
                                              filtered matrices (md5-checked tar.gz of
                                              Matrix Market files)
=====================  ============  =======  =============================================

All three are count data (:func:`~vaelab.data.splits.prepare_arrays` with ``counts=True``:
kind ``"counts"``, values kept as they are), dense float32 in memory, split like any data set
without a test part: a seeded ``test_fraction``, then ``val_fraction`` of the rest, stratified
by the label (``pbmc68k``), or by an ``obs`` column (``stratify_by``, ``pbmc68k`` only).

The offline sets are files that other packages ship in their wheels; they are found with
:func:`importlib.util.find_spec` and the package's folder, without importing the package
(scanpy takes seconds to import). A package that is not installed is a one-line error naming
``pip install scanpy`` / ``pip install celltypist``.

**pbmc68k: how the counts come back.** The file's ``X`` is scaled (z-scores of a subset of
genes) and of no use to a count model, but ``raw.X`` (same 765 genes, sparse) holds
``log1p(k * 1e4 / n)`` for the integer UMI count ``k`` of each gene and the cell's total
``n = obs.n_counts`` (scanpy's ``normalize_total(target_sum=1e4)`` then ``log1p``), stored
*rounded to three decimals* (``|1000 raw.X - round(1000 raw.X)| <= 2.4e-4``, float32 noise).
So ``k = round(expm1(raw.X) * n / 1e4)``. Because of the rounding, ``expm1(raw.X) * n / 1e4``
itself lies up to 0.08 from an integer (relative error up to 7.6e-4, larger counts further
off), so "within 1e-3 of an integer" does not hold; what does hold, and what
:func:`recover_counts` checks for every stored value, is exactness in the stored precision:
``log1p(k * 1e4 / n)`` lies within half a step (5e-4, plus 1e-6 for float32) of the stored
value, and the counts that any value in that window allows span less than one (at most 0.26
here), so ``k`` is the only integer that the file is consistent with. The 700 cells hold
486,651 counts (up to 259 per gene and cell); ``obs.bulk_labels`` (10 cell types) is the
label, and every ``obs`` column (``phase``, ``louvain``, ``n_counts``, ``percent_mito``, ...)
can be a covariate.

**celltypist-demo.** 559 rows ``Cell_1, ...`` of 32,786 genes; the CSV's values are whole
numbers up to the writer's float noise (e.g. ``0.999999999999999``, at most 1e-11 off), which
vanishes when they are parsed as float32 (numpy's C reader, about 1 s of CPU); every value is
then checked to be a non-negative whole number.

**pbmc3k** (:data:`PBMC3K_URLS`, :data:`PBMC3K_MD5`) is downloaded through
:func:`~vaelab.data.idx.download` into the cache folder (``VAELAB_CACHE``, ``--cache``) and
kept there; once its md5 matches, it is never fetched again. Offline, the download is a
one-line error saying where to put the file by hand. The archive is read in memory (nothing
is extracted): every member name is checked first (no absolute paths, no ``..``, no links or
devices), then ``matrix.mtx`` (genes x cells, Matrix Market) with :func:`scipy.io.mmread`,
``genes.tsv`` and ``barcodes.tsv``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vaelab.data.idx import cache_dir, download
from vaelab.data.splits import DataSplits, make_splits, prepare_arrays
from vaelab.errors import VaelabError

__all__ = [
    "SINGLECELL_DATASETS",
    "PBMC3K_URLS",
    "PBMC3K_MD5",
    "CountTable",
    "package_file",
    "recover_counts",
    "pbmc68k",
    "celltypist_demo",
    "read_10x_tar",
    "pbmc3k",
    "load_singlecell",
]

SINGLECELL_DATASETS: tuple[str, ...] = ("pbmc68k", "celltypist-demo", "pbmc3k")

PBMC3K_URLS: tuple[str, ...] = (
    "https://cf.10xgenomics.com/samples/cell-exp/1.1.0/pbmc3k/pbmc3k_filtered_gene_bc_matrices.tar.gz",
)
PBMC3K_MD5 = "f76d73bf7a582aaf32b798bcae9574d3"  # as published in public Makefiles that fetch it
PBMC3K_FILE = "pbmc3k_filtered_gene_bc_matrices.tar.gz"

_PBMC68K = ("scanpy", ("datasets", "10x_pbmc68k_reduced.h5ad"))
_CELLTYPIST = ("celltypist", ("data", "samples", "sample_cell_by_gene.csv"))
_PBMC68K_SCALE = 1e4  # normalize_total's target sum
_PBMC68K_HALF_STEP = 5e-4  # raw.X is rounded to 3 decimals
_FLOAT32_SLACK = 1e-6  # float32 storage of values up to ~8 (spacing 4.8e-7) and the writer's arithmetic


@dataclass(frozen=True)
class CountTable:
    """A cells x genes count matrix with names, before splitting."""

    x: np.ndarray  # [N, G] float32 whole numbers
    cells: np.ndarray  # [N] str
    genes: np.ndarray  # [G] str
    obs: Any = None  # a pandas DataFrame of per-cell columns (pbmc68k), else None
    label: str | None = None  # the obs column holding the cell type


def package_file(package: str, parts: Sequence[str], dataset: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise VaelabError(f"built-in data '{dataset}' is a file that the package {package} ships; "
                          f"pip install {package}")
    path = Path(folders[0], *parts)
    if not path.is_file():
        raise VaelabError(f"built-in data '{dataset}': '{path}' is missing from the installed {package}; "
                          f"reinstall it (pip install --force-reinstall {package})")
    return path


def recover_counts(values: np.ndarray, rows: np.ndarray, totals: np.ndarray, *, scale: float = _PBMC68K_SCALE,
                   half_step: float = _PBMC68K_HALF_STEP, what: str = "log-normalised data") -> np.ndarray:
    """Integer counts ``k`` from stored values ``v = log1p(k * scale / n)`` rounded to a step of
    ``2 * half_step`` (``half_step=0``: not rounded), where ``n = totals[rows]`` is each value's
    cell total: ``k = round(expm1(v) * n / scale)``, int64, one per value.

    The recovery is checked exact in the stored precision, for every value: ``k >= 1`` (only
    non-zero entries are stored), ``|log1p(k * scale / n) - v| <= half_step + 1e-6``, and the
    window of counts that this allows, ``n / scale * (expm1(v + h) - expm1(v - h))``, is narrower
    than one count, so that ``k`` is the only integer the stored value is consistent with.
    Any failure is a one-line error naming the entry.
    """
    v = np.asarray(values, dtype=np.float64)  # [nnz]
    n = np.asarray(totals, dtype=np.float64)  # [cells]
    bad_total = ~(n > 0) | ~np.isfinite(n)
    if bad_total.any():
        i = int(np.argmax(bad_total))
        raise VaelabError(f"{what}: the total of row {i} is {n[i]:g}; the counts cannot be recovered without a positive total")
    s = n[rows] / scale  # [nnz] counts per unit of normalised value
    k = np.round(np.expm1(v) * s)
    h = half_step + _FLOAT32_SLACK
    off = np.abs(np.log1p(k / s) - v)
    width = s * (np.expm1(v + h) - np.expm1(v - h))
    checks = (("a count below 1", k < 1), (f"not log1p(k * {scale:g} / n) within {h:g} for any whole k", off > h),
              ("consistent with more than one whole count", width >= 1))
    for problem, bad in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise VaelabError(f"{what}: the stored value {v[i]:.6g} of row {int(rows[i])} gives {problem} "
                              f"({int(bad.sum())} such values); the counts cannot be recovered exactly")
    return k.astype(np.int64)


def pbmc68k() -> CountTable:
    """scanpy's 700 PBMCs x 765 genes, counts recovered from ``raw.X`` (see the module docstring)."""
    from vaelab.data.anndata import open_h5ad, require_anndata

    path = package_file(_PBMC68K[0], _PBMC68K[1], "pbmc68k")
    require_anndata("built-in data 'pbmc68k' (an .h5ad file)")
    adata = open_h5ad(path)
    what = f"built-in data 'pbmc68k' ({path})"
    raw = adata.raw
    if raw is None or "n_counts" not in adata.obs.columns or raw.shape[0] != adata.n_obs:
        raise VaelabError(f"{what} has no raw.X or obs 'n_counts' to recover the counts from; reinstall scanpy")
    import scipy.sparse

    log_norm = scipy.sparse.csr_matrix(raw.X)  # [700, 765]
    rows = np.repeat(np.arange(log_norm.shape[0]), np.diff(log_norm.indptr))  # [nnz] the row of each stored value
    counts = recover_counts(log_norm.data, rows, adata.obs["n_counts"].to_numpy(), what=what)
    x = scipy.sparse.csr_matrix((counts.astype(np.float32), log_norm.indices, log_norm.indptr), shape=log_norm.shape)
    return CountTable(x.toarray(), adata.obs_names.to_numpy().astype(str), raw.var_names.to_numpy().astype(str),
                      adata.obs, "bulk_labels")


def celltypist_demo() -> CountTable:
    """celltypist's 559 cells x 32,786 genes of raw UMI counts (see the module docstring)."""
    path = package_file(_CELLTYPIST[0], _CELLTYPIST[1], "celltypist-demo")
    what = f"built-in data 'celltypist-demo' ({path})"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader([f.readline()]))
            lines = f.read().splitlines()
        cells = np.asarray([line.split(",", 1)[0] for line in lines])
        genes = np.asarray(header[1:])
        # numpy's C parser, straight to float32: the writer's noise (1e-11) is below float32's resolution
        table = np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=2, usecols=range(1, len(header)))  # [559, 32786]
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as err:
        raise VaelabError(f"{what} cannot be read ({' '.join(str(err).split())[:160]}); reinstall celltypist") from None
    if table.shape != (len(cells), len(genes)):
        raise VaelabError(f"{what} has {table.shape} values for {len(cells)} cells and {len(genes)} genes; reinstall celltypist")
    bad = (table != np.rint(table)) | (table < 0)
    if bad.any():
        row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise VaelabError(f"{what}: value {table[row, col]!r} at cell '{cells[row]}', gene '{genes[col]}' is not a count")
    return CountTable(table, cells, genes)


def _checked_members(tar: tarfile.TarFile, what: str) -> dict[str, tarfile.TarInfo]:
    """The archive's regular files by name, after refusing any unsafe member name or type."""
    files = {}
    for member in tar.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or "\\" in member.name or ":" in member.name:
            raise VaelabError(f"{what} has an unsafe member name {member.name!r} (absolute or with '..'); "
                              "it was not read: delete it and download it again")
        if member.isfile():
            files[member.name] = member
        elif not member.isdir():
            raise VaelabError(f"{what} has a member {member.name!r} that is a link or device, not a file; "
                              "it was not read: delete it and download it again")
    return files


def read_10x_tar(path: str | os.PathLike[str]) -> CountTable:
    """Counts ``[cells, genes]`` from a 10x Genomics ``*_gene_bc_matrices.tar.gz`` (Cell Ranger 1-2
    layout: one folder with ``matrix.mtx`` genes x cells, ``genes.tsv`` and ``barcodes.tsv``),
    read in memory after checking every member name; nothing is extracted."""
    import scipy.io

    path = Path(path)
    what = f"archive '{path}'"
    try:
        with tarfile.open(path, "r:gz") as tar:
            files = _checked_members(tar, what)
            by_base: dict[str, list[str]] = {}
            for name in files:
                by_base.setdefault(PurePosixPath(name).name, []).append(name)
            picked = {}
            for base in ("matrix.mtx", "genes.tsv", "barcodes.tsv"):
                names = by_base.get(base, [])
                if len(names) != 1:
                    raise VaelabError(f"{what} holds {len(names)} files named {base} (expected one); "
                                      "is it a 10x filtered_gene_bc_matrices archive?")
                picked[base] = names[0]
            if len({str(PurePosixPath(n).parent) for n in picked.values()}) != 1:
                raise VaelabError(f"{what}: matrix.mtx, genes.tsv and barcodes.tsv are in different folders")
            raw = {base: tar.extractfile(files[name]).read() for base, name in picked.items()}  # type: ignore[union-attr]
        matrix = scipy.io.mmread(io.BytesIO(raw["matrix.mtx"]))  # [genes, cells]
    except VaelabError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise VaelabError(f"{what} cannot be read ({' '.join(str(err).split())[:160]}); delete it and "
                          "download it again") from None
    genes = [line.split("\t") for line in raw["genes.tsv"].decode("utf-8").splitlines() if line]
    barcodes = [line.strip() for line in raw["barcodes.tsv"].decode("utf-8").splitlines() if line.strip()]
    if matrix.ndim != 2 or matrix.shape != (len(genes), len(barcodes)):
        raise VaelabError(f"{what}: matrix.mtx is {matrix.shape} (genes x cells) but there are {len(genes)} genes "
                          f"and {len(barcodes)} barcodes; delete it and download it again")
    import scipy.sparse

    counts = scipy.sparse.csr_matrix(matrix.T)  # [cells, genes], only the stored values checked and converted
    v = counts.data
    if v.size and (not np.isfinite(v).all() or (v < 0).any() or (v != np.round(v)).any() or v.max() >= 2**24):
        raise VaelabError(f"{what}: matrix.mtx holds values that are not counts; delete it and download it again")
    symbols = np.asarray([g[1] if len(g) > 1 else g[0] for g in genes])  # gene symbols (ids in column 0)
    return CountTable(counts.astype(np.float32).toarray(), np.asarray(barcodes), symbols)


def pbmc3k(cache: str | os.PathLike[str] | None = None) -> CountTable:
    """10x Genomics' 2,700 PBMCs x 32,738 genes, downloaded once into the cache folder (md5-checked)."""
    path = download(PBMC3K_URLS, cache_dir(cache) / "pbmc3k" / PBMC3K_FILE, PBMC3K_MD5)
    return read_10x_tar(path)


def load_singlecell(
    name: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    covariates: Sequence[str] = (),
    stratify_by: str | None = None,
    layer: str | None = None,
) -> DataSplits:
    """A single-cell set of :data:`SINGLECELL_DATASETS` as count :class:`DataSplits`.

    ``covariates`` and ``stratify_by`` name ``obs`` columns (``pbmc68k`` only; see
    :mod:`vaelab.data.anndata` for how columns become covariates). ``layer`` does not apply:
    each set has one count matrix.
    """
    if name not in SINGLECELL_DATASETS:
        raise VaelabError(f"unknown single-cell data set '{name}'; choose one of: {', '.join(SINGLECELL_DATASETS)}")
    if layer:
        raise VaelabError(f"--layer {layer}: built-in data '{name}' has one count matrix and no layers; leave --layer out")
    covariates = tuple(covariates)
    if name != "pbmc68k" and (covariates or stratify_by):
        asked = ", ".join([*covariates, *([stratify_by] if stratify_by else [])])
        raise VaelabError(f"built-in data '{name}' has no per-cell columns ({asked}); only pbmc68k has "
                          "(its obs: cell type, phase, louvain, n_counts, ...)")
    table = {"pbmc68k": pbmc68k, "celltypist-demo": celltypist_demo, "pbmc3k": lambda: pbmc3k(cache)}[name]()
    labels = class_names = strata = cov = None
    classes: tuple[tuple[str, ...], ...] = ()
    if table.obs is not None:
        from vaelab.data.anndata import categorical_codes, obs_covariates, obs_strata

        what = f"built-in data '{name}'"
        labels, class_names = categorical_codes(table.obs[table.label], table.label, what)
        cov, classes = obs_covariates(table.obs, covariates, what)
        strata = None if not stratify_by else obs_strata(table.obs, stratify_by, what)
    (x,), _ = prepare_arrays([table.x], [f"built-in data '{name}'"], counts=True)
    return make_splits(
        name, x, labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        covariates=cov, covariate_names=covariates, class_names=class_names, covariate_classes=classes,
        strata=strata, counts=True,
    )
