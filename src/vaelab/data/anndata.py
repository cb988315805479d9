"""AnnData ``.h5ad`` files (single-cell data) read into memory, and the pieces of that reader.

An ``.h5ad`` file (Virshup et al. 2024, the format of scanpy and scvi-tools) holds a cells x
genes matrix ``X`` (dense, or sparse CSR/CSC), optional ``layers`` of the same shape (often
``counts`` beside a normalised ``X``), and a table ``obs`` with one row per cell (batch, cell
type, library size, ...). vaelab reads:

* the matrix: ``X``, or the layer named by ``layer`` (``--layer counts``), as dense float32
  ``[N, G]`` (every value kept as stored, so counts stay counts);
* covariates: ``obs`` columns named in ``covariates`` (``--condition-on batch``). A categorical,
  string or boolean column becomes a *categorical* covariate: its column holds the level ids
  ``0..K-1`` (levels in the column's category order, or sorted for strings; levels no cell has
  are dropped) and ``covariate_classes`` their names. A numeric column is a continuous one;
* strata: the ``obs`` column ``stratify_by`` (``--stratify-by cell_type``), whose values the
  seeded test and validation draws are stratified by (each level gives its share).

The package ``anndata`` is an optional extra (``pip install 'vaelab[anndata]'``), imported only
when an ``.h5ad`` file is read. The pieces are public, small functions, so a backed reader that
streams rows from disk (:mod:`vaelab.data.streaming`) opens, checks and labels a file exactly
as this one does: :func:`require_anndata`, :func:`open_h5ad`, :func:`select_matrix`,
:func:`check_finite`, :func:`to_dense`, :func:`obs_column`, :func:`obs_covariates`,
:func:`obs_strata`; :func:`read_h5ad` puts them together.

Bad input is a one-line :class:`~vaelab.errors.VaelabError`: a file that is not an ``.h5ad``,
a layer or ``obs`` column that does not exist (the ones that do are listed), NaN or infinite
values in the matrix (how many, and the first one's cell and gene), a missing value in an
``obs`` column used as a covariate or stratum, a gene name that ``var`` holds twice.

>>> import anndata, numpy as np, pandas as pd, tempfile, pathlib  # doctest: +SKIP
>>> path = pathlib.Path(tempfile.mkdtemp()) / "cells.h5ad"  # doctest: +SKIP
>>> obs = pd.DataFrame({"batch": pd.Categorical(["a", "b", "a"])}, index=["c0", "c1", "c2"])  # doctest: +SKIP
>>> anndata.AnnData(np.eye(3, dtype=np.float32), obs=obs).write_h5ad(path)  # doctest: +SKIP
>>> d = read_h5ad(path, covariates=["batch"])  # doctest: +SKIP
>>> d.x.shape, d.covariates[:, 0].tolist(), d.covariate_classes  # doctest: +SKIP
((3, 3), [0.0, 1.0, 0.0], (('a', 'b'),))
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vaelab.errors import VaelabError

__all__ = [
    "EXTRA_HINT",
    "H5adData",
    "require_anndata",
    "open_h5ad",
    "select_matrix",
    "check_finite",
    "to_dense",
    "sparse_problem",
    "check_sparse",
    "check_unique_genes",
    "obs_column",
    "categorical_codes",
    "obs_covariates",
    "obs_strata",
    "read_h5ad",
]

EXTRA_HINT = "pip install 'vaelab[anndata]'"
_SHOWN = 8  # names listed in an error message before "..."


@dataclass(frozen=True)
class H5adData:
    """What :func:`read_h5ad` read: the matrix, the cells' and genes' names, covariates, strata."""

    x: np.ndarray  # [N, G] float32
    cells: np.ndarray  # [N] str, obs_names
    genes: np.ndarray  # [G] str, var_names
    covariates: np.ndarray | None  # [N, P] float64: level ids of categorical columns, values of numeric ones
    covariate_classes: tuple[tuple[str, ...], ...]  # per covariate: () continuous, else its level names
    strata: np.ndarray | None  # [N] int64 level ids of the stratify_by column
    labels: np.ndarray | None = None  # [N] int64 ids of the label column (built-in sets)
    class_names: tuple[str, ...] | None = None  # the label column's level names


def require_anndata(what: str = "reading an .h5ad file") -> ModuleType:
    """The ``anndata`` module, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module("anndata")
    except ImportError:
        raise VaelabError(f"{what} needs the package anndata, an optional extra: {EXTRA_HINT}") from None


def _listed(names: Sequence[str]) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return (shown + f", ... ({len(names)} in all)") if len(names) > _SHOWN else (shown or "none")


def open_h5ad(path: str | os.PathLike[str], *, backed: bool = False) -> Any:
    """Open an ``.h5ad`` file as an ``anndata.AnnData`` (in memory, or ``backed=True``: read-only,
    the matrix left on disk; the caller closes ``adata.file``).

    Warnings about an old file layout (anndata's ``OldFormatWarning``, ``FutureWarning`` s about
    elements it moves on reading) are silenced: they concern the writer, not the data.
    A file that is missing, not HDF5, truncated or not an AnnData is a one-line error.
    """
    anndata = require_anndata()
    path = Path(path)
    from vaelab.data.paths import check_data_path

    check_data_path(path)  # a FIFO, a device, a link loop: not "not found"
    if not path.is_file():
        raise VaelabError(f"data file '{path}' not found; pass an existing .h5ad file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)  # anndata's OldFormatWarning
            # repeated gene names are refused in one line (check_unique_genes), not warned about first
            warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
            return anndata.read_h5ad(path, backed="r" if backed else None)
    except MemoryError:
        raise
    except Exception as err:  # h5py and anndata raise many types for a damaged or foreign file
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise VaelabError(f"data file '{path}' is not a readable .h5ad file ({reason}); write it again with "
                          "adata.write_h5ad(...)") from None


def select_matrix(adata: Any, layer: str | None, what: str) -> Any:
    """``adata.X`` (``layer`` None or ``"X"``) or ``adata.layers[layer]``, as stored (dense,
    sparse, or on disk when backed); a layer that does not exist is an error listing those that do."""
    layers = list(adata.layers.keys())
    if layer in (None, "", "X"):
        if adata.X is None:
            raise VaelabError(f"{what} has no X matrix (layers: {_listed(layers)}); pick one with --layer NAME")
        return adata.X
    if layer not in layers:
        raise VaelabError(f"--layer {layer}: {what} has no layer {layer!r} (layers: {_listed(layers)}); "
                          "leave --layer out to read X")
    return adata.layers[layer]


def check_unique_genes(genes: Sequence[str], what: str) -> None:
    """Refuse gene (``var``) names that are not unique, naming the first repeated one: a run
    records its genes and later files (``encode``, ``eval --data``) are matched to them by
    name, where two columns of one name cannot be told apart (a CSV header naming a column
    twice is refused the same way)."""
    names = np.asarray(genes).astype(str)
    unique, first, counts = np.unique(names, return_index=True, return_counts=True)
    if len(unique) == len(names):
        return
    repeated = counts > 1
    culprit = int(np.argmin(np.where(repeated, first, len(names))))  # the repeated name that comes first
    name = str(unique[culprit])
    where = np.flatnonzero(names == name)[:3].tolist()
    times = "twice" if counts[culprit] == 2 else f"{int(counts[culprit])} times"
    raise VaelabError(f"{what} names gene {name!r} {times} (var_names, columns "
                      f"{', '.join(map(str, where))}{', ...' if counts[culprit] > 3 else ''} from 0; "
                      f"{int(repeated.sum())} name(s) repeated in all), and genes are matched by name; make them "
                      "unique with adata.var_names_make_unique() and save it with adata.write_h5ad(...)")


def _is_sparse(m: Any) -> bool:
    import scipy.sparse

    return bool(scipy.sparse.issparse(m))


def check_finite(m: Any, what: str, cells: Sequence[str] | None = None, genes: Sequence[str] | None = None,
                 row_offset: int = 0) -> None:
    """Refuse NaN or infinite values in an in-memory matrix ``m`` ``[N, G]`` (dense or scipy
    sparse), saying how many and where the first is (row and column from 0, with the cell's and
    gene's names when given; ``row_offset`` is added to rows, for a chunk of a larger matrix).

    Only the stored values of a sparse matrix are read (its implicit zeros are finite).
    """
    if _is_sparse(m):
        fmt = m.format
        if fmt not in ("csr", "csc"):
            m = m.tocsr()
            fmt = "csr"
        data = np.asarray(m.data)
        if data.dtype.kind not in "fc":
            return
        bad = ~np.isfinite(data)
        if not bad.any():
            return
        count, pos = int(bad.sum()), int(np.argmax(bad))
        outer = int(np.searchsorted(m.indptr, pos, side="right")) - 1
        inner = int(m.indices[pos])
        row, col = (outer, inner) if fmt == "csr" else (inner, outer)
        value, kind = data[pos], f"its sparse ({fmt.upper()}) matrix"
    else:
        a = np.asarray(m)
        if a.dtype.kind not in "fc":
            return
        bad = ~np.isfinite(a)
        if not bad.any():
            return
        count = int(bad.sum())
        row, col = (int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))
        value, kind = a[row, col], "its matrix"
    cell = f" '{cells[row]}'" if cells is not None else ""
    gene = f" '{genes[col]}'" if genes is not None else ""
    raise VaelabError(f"{what}: {count} NaN/inf value(s) in {kind}, the first ({value}) at row {row + row_offset}"
                      f"{cell}, column {col}{gene} (from 0); remove or impute them")


def sparse_problem(field: str, indptr: np.ndarray, indices: np.ndarray, nnz: int, outer: int, inner: int, *,
                   first: int = 0, whole: bool = True, inner_name: str = "columns") -> str | None:
    """What is wrong with the structure of a compressed sparse matrix (CSR: ``outer`` rows,
    ``inner`` columns; CSC the other way round), or None: ``indptr`` must start at 0, never
    decrease and end at ``nnz`` (the stored values), each index must lie in ``[0, inner)``.
    ``field`` names the matrix in the file (``X``, ``layers/counts``). With ``whole=False``,
    ``indptr`` and ``indices`` are a block of the matrix starting at outer index ``first``
    (its pointers then only need to lie in ``[0, nnz]``). Vectorised: one pass over each array."""
    ptr = np.asarray(indptr)
    if whole and len(ptr) != outer + 1:
        return f"{field}/indptr has {len(ptr):,} entries, not {outer + 1:,} (one more than the {outer:,} rows)"
    if len(ptr):
        if whole and int(ptr[0]) != 0:
            return f"{field}/indptr starts at {int(ptr[0]):,}, not 0"
        if whole and int(ptr[-1]) != nnz:
            return f"{field}/indptr ends at {int(ptr[-1]):,}, not at the {nnz:,} stored values"
        out = np.flatnonzero((ptr < 0) | (ptr > nnz))
        if len(out):
            i = int(out[0])
            return f"{field}/indptr holds {int(ptr[i]):,} at entry {first + i:,}, outside 0..{nnz:,} (the stored values)"
        down = np.flatnonzero(np.diff(ptr.astype(np.int64)) < 0)
        if len(down):
            i = int(down[0]) + 1
            return f"{field}/indptr decreases at entry {first + i:,} ({int(ptr[i - 1]):,} then {int(ptr[i]):,})"
    idx = np.asarray(indices)
    if idx.size:
        bad = np.flatnonzero((idx < 0) | (idx >= inner))
        if len(bad):
            i = int(bad[0])
            return f"{field}/indices holds {int(idx[i]):,} (stored value {i:,}), outside 0..{inner - 1:,} (the {inner:,} {inner_name})"
    return None


def check_sparse(m: Any, what: str, field: str = "X") -> None:
    """Refuse a damaged sparse matrix (see :func:`sparse_problem`) before it is read: scipy
    trusts the structure, and a huge ``indptr`` entry crashes it, an index past the last column
    writes another row's values (or past the array)."""
    if not _is_sparse(m) or m.format not in ("csr", "csc"):
        return
    outer, inner = m.shape if m.format == "csr" else m.shape[::-1]
    nnz = len(m.data)
    problem = (f"{field}/indices has {len(m.indices):,} entries and {field}/data {nnz:,}; they must match"
               if len(m.indices) != nnz else sparse_problem(field, m.indptr, m.indices, nnz, outer, inner,
                                                            inner_name="columns" if m.format == "csr" else "rows"))
    if problem:
        raise VaelabError(f"{what} is a damaged .h5ad file: {problem}; write it again with adata.write_h5ad(...)")


def to_dense(m: Any, what: str = "the matrix") -> np.ndarray:
    """An in-memory matrix (dense or scipy sparse) as a C-ordered float32 array ``[N, G]``
    (a sparse one's structure checked first, :func:`check_sparse`)."""
    check_sparse(m, what)
    a = m.toarray() if _is_sparse(m) else np.asarray(m)
    return np.ascontiguousarray(a, dtype=np.float32)


def obs_column(obs: Any, name: str, what: str) -> Any:
    """The ``obs`` column ``name`` (a pandas Series); one that does not exist is an error
    listing the columns there are."""
    if name not in obs.columns:
        raise VaelabError(f"{what} has no obs column {name!r} (obs columns: {_listed(list(obs.columns))}); "
                          "name one of those")
    return obs[name]


def _is_categorical(series: Any) -> bool:
    import pandas as pd

    dtype = series.dtype
    return bool(isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype)
                or pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype))


def _first_missing(series: Any, name: str, what: str, missing: np.ndarray) -> None:
    if missing.any():
        i = int(np.argmax(missing))
        raise VaelabError(f"{what}: obs column {name!r} has {int(missing.sum())} missing value(s), the first at row {i} "
                          f"(cell '{series.index[i]}'); fill them in or drop those cells")


def categorical_codes(series: Any, name: str, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """A categorical, string or boolean column as level ids ``[N]`` int64 and the level names.

    Levels follow the column's category order (a pandas Categorical) or sorted order (strings,
    booleans: False, True); levels that no cell has are dropped, so the ids are ``0..K-1`` with
    every id used. A missing value is an error naming the cell.
    """
    import pandas as pd

    _first_missing(series, name, what, series.isna().to_numpy())
    if isinstance(series.dtype, pd.CategoricalDtype):
        cat = series.cat.remove_unused_categories()
        levels = tuple(str(c) for c in cat.cat.categories)
        codes = cat.cat.codes.to_numpy().astype(np.int64)
    else:
        values = series.to_numpy()
        levels_raw, codes = np.unique(values.astype(str) if values.dtype.kind in "OUS" else values, return_inverse=True)
        levels = tuple(str(v) for v in levels_raw)
        codes = codes.astype(np.int64).reshape(-1)
    if len(set(levels)) != len(levels):
        raise VaelabError(f"{what}: obs column {name!r} has levels that read alike as text ({_listed(levels)}); "
                          "make its values distinct strings")
    return codes, levels


def obs_covariates(obs: Any, names: Sequence[str], what: str) -> tuple[np.ndarray | None, tuple[tuple[str, ...], ...]]:
    """Covariates ``[N, P]`` float64 from ``obs`` columns, and per column its level names
    (``()`` for a numeric, continuous one). Categorical columns give level ids (see
    :func:`categorical_codes`); numeric ones their values, which must all be finite."""
    if not names:
        return None, ()
    cols, classes = [], []
    for name in names:
        if name not in obs.columns:
            raise VaelabError(f"--condition-on {name}: {what} has no obs column {name!r} "
                              f"(obs columns: {_listed(list(obs.columns))}); name one of those, or 'label'")
        series = obs[name]
        if _is_categorical(series):
            codes, levels = categorical_codes(series, name, what)
            cols.append(codes.astype(np.float64))
            classes.append(levels)
            continue
        _first_missing(series, name, what, series.isna().to_numpy())
        values = series.to_numpy(dtype=np.float64)
        _first_missing(series, name, what, ~np.isfinite(values))
        cols.append(values)
        classes.append(())
    return np.stack(cols, 1), tuple(classes)


MAX_STRATA = 100  # a numeric obs column to stratify by: whole numbers with at most this many distinct values


def obs_strata(obs: Any, name: str, what: str) -> np.ndarray:
    """The ``obs`` column ``name`` as stratum ids ``[N]`` int64 for the seeded test and
    validation draws (categorical columns by level; numeric ones by distinct value, which must
    be whole numbers with at most :data:`MAX_STRATA` distinct values: a continuous column,
    ``n_counts`` say, would make every cell its own stratum)."""
    if name not in obs.columns:
        raise VaelabError(f"--stratify-by {name}: {what} has no obs column {name!r} "
                          f"(obs columns: {_listed(list(obs.columns))}); name one of those")
    series = obs[name]
    if _is_categorical(series):
        return categorical_codes(series, name, what)[0]
    _first_missing(series, name, what, series.isna().to_numpy())
    values = series.to_numpy()
    levels, ids = np.unique(values, return_inverse=True)
    whole = values.dtype.kind in "iub" or bool(np.all(np.mod(values.astype(np.float64), 1) == 0))
    if not whole or len(levels) > MAX_STRATA:  # a continuous column: every cell its own "level"
        shown = next((v for v in values if not float(v).is_integer()), None) if not whole else None
        why = (f"holds non-integer values (e.g. {shown:g})" if shown is not None
               else f"has {len(levels):,} distinct values")
        raise VaelabError(f"--stratify-by {name}: obs column {name!r} of {what} {why}, so it is not categorical; "
                          f"stratify by a categorical column (text, category, or whole numbers with at most "
                          f"{MAX_STRATA} distinct values) such as a cell type or a batch, or leave --stratify-by out")
    return ids.astype(np.int64).reshape(-1)


def read_h5ad(
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    covariates: Sequence[str] = (),
    stratify_by: str | None = None,
    label: str | None = None,
) -> H5adData:
    """Read an ``.h5ad`` file into memory: the matrix ``X`` (or ``layer``) as dense float32
    ``[N, G]``, checked finite; ``covariates`` and ``stratify_by`` from ``obs`` (see the module
    docstring); ``label`` names an ``obs`` column read as class labels (ids and names)."""
    path = Path(path)
    what = f"data file '{path}'"
    adata = open_h5ad(path)
    matrix = select_matrix(adata, layer, what)
    part = what if layer in (None, "", "X") else f"{what}, layer {layer!r}"
    cells, genes = adata.obs_names.to_numpy().astype(str), adata.var_names.to_numpy().astype(str)
    check_unique_genes(genes, what)  # a run records its genes; later files are matched to them by name
    if matrix.dtype.kind not in "biuf":
        raise VaelabError(f"{part} holds {matrix.dtype} values; the matrix must hold numbers")
    check_sparse(matrix, what, "X" if layer in (None, "", "X") else f"layers/{layer}")  # before scipy reads it
    check_finite(matrix, part, cells, genes)
    cov, classes = obs_covariates(adata.obs, tuple(covariates), what)
    strata = None if not stratify_by else obs_strata(adata.obs, stratify_by, what)
    labels = class_names = None
    if label:
        labels, class_names = categorical_codes(obs_column(adata.obs, label, what), label, what)
    return H5adData(to_dense(matrix, what), cells, genes, cov, classes, strata, labels, class_names)
