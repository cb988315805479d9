"""Matrices on disk, read a few rows at a time: the readers behind ``--backed``.

:func:`open_matrix` opens the example matrix of a ``.npy`` file or of an ``.h5ad`` file (``X``
or a layer) without reading its values, as a :class:`DiskMatrix`: ``shape``, ``dtype`` and
``read(lo, hi)`` / ``read_rows(rows)`` returning numpy arrays of the stored values.

* ``.npy``: memory-mapped read-only (as ``numpy.load(mmap_mode="r")`` does); after each read
  the mapped pages are handed back to the kernel (``madvise(MADV_DONTNEED)``), so the
  process's resident memory does not grow with the file while the page cache keeps what it
  likes. Rows at a set of row numbers are one gather from the map.
* ``.h5ad`` (h5py, an optional extra with anndata): a dense ``X`` is read by row slices, a CSR
  one by row ranges: rows lo..hi are ``data[indptr[lo]:indptr[hi]]`` at ``indices[...]``, one
  contiguous read each, scattered into a dense block. Rows at a set of row numbers are read
  as contiguous spans where the gaps between them hold at most :data:`GAP` bytes. A CSC
  matrix (by columns) cannot be read by rows and is refused with how to rewrite it.

:func:`scan` passes over every row once (checks and the range of the values), and
:func:`check_in_memory` refuses, before the in-memory reader loads it, a file that would not
fit: its size, the memory available or the ``VAELAB_MEMORY_LIMIT`` cap, and "add --backed true".

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> np.save(path, np.arange(12, dtype=np.int32).reshape(6, 2))
>>> m = open_matrix(path)
>>> m.shape, m.read(1, 3).tolist(), m.read_rows(np.array([0, 5])).tolist()
((6, 2), [[2, 3], [4, 5]], [[0, 1], [10, 11]])
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.errors import VaelabError

__all__ = ["DiskMatrix", "open_matrix", "Scan", "scan", "in_memory_bytes", "check_in_memory", "check_fits", "data_memory", "npy_header",
           "BACKED_SUFFIXES",
           "GAP", "SCAN_BYTES"]

BACKED_SUFFIXES = (".npy", ".h5ad")  # the files --backed reads from disk
GAP = 2**16  # bytes: rows with gaps up to this many bytes between them are read as one contiguous span
SCAN_BYTES = 2**22  # bytes of float32 rows per read in whole-file passes (checks, totals, hashes): 4 MiB
_EXTRA = "pip install 'vaelab[anndata]'"


# --- matrices on disk -------------------------------------------------------------------------

class DiskMatrix:
    """A matrix ``[N, ...]`` on disk, read by row ranges.

    Subclasses set ``shape`` (the file's), ``dtype`` (numpy, of the stored values), ``what``
    (for messages) and implement :meth:`read`.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    what: str
    sparse: bool = False

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo <= i < hi`` as a numpy array ``[hi - lo, ...]`` of the stored dtype."""
        raise NotImplementedError

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows at increasing row numbers ``rows`` ``[R, ...]``: runs whose gaps hold at most
        :data:`GAP` bytes are read as one contiguous span (the rows between are dropped)."""
        gap = max(1, int(GAP // max(self.row_bytes, 1.0)))  # rows
        cuts = np.flatnonzero(np.diff(rows) > gap) + 1
        parts = []
        for run in np.split(rows, cuts):
            r0, r1 = int(run[0]), int(run[-1]) + 1
            span = self.read(r0, r1)
            parts.append(span if len(run) == r1 - r0 else span[run - r0])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __len__(self) -> int:
        return int(self.shape[0])

    def close(self) -> None:
        """Let go of the file (reads fail afterwards)."""

    @property
    def row_bytes(self) -> float:
        """Bytes one row takes on disk (on average, for a sparse matrix)."""
        return float(math.prod(self.shape[1:]) * self.dtype.itemsize)


def npy_header(f: Any, what: str, size: int) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The shape, Fortran order, dtype and header length of the ``.npy`` data at the start of
    the binary file object ``f`` (``size`` bytes long), read without its values; a shape with a
    negative dimension, or one whose values need more bytes than the file holds after the
    header, is a one-line error (numpy would allocate the whole array first, or fail inside)."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    shape, fortran, dtype = fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
    offset = f.tell()
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise VaelabError(f"{what} declares the shape {shape}, with a negative dimension: the file is damaged; "
                          "save it again with numpy.save")
    need = offset + math.prod(shape) * dtype.itemsize
    if size < need:
        raise VaelabError(f"{what} is cut short ({size:,} of {need:,} bytes its header declares for shape {shape}); "
                          "save it again with numpy.save")
    return shape, bool(fortran), dtype, offset


class _NpyMatrix(DiskMatrix):
    """A ``.npy`` file memory-mapped read-only: rows are copied out on demand, and the pages
    read are handed back at once (``madvise(MADV_DONTNEED)``), so the process's resident
    memory does not grow with the file (the kernel's page cache keeps what it likes)."""

    def __init__(self, path: Path) -> None:
        self.what = f"data file '{path}'"
        try:
            with open(path, "rb") as f:
                shape, fortran, dtype, self.offset = npy_header(f, self.what, os.fstat(f.fileno()).st_size)
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except VaelabError:
            raise
        except (ValueError, OSError, EOFError) as err:
            raise VaelabError(f"{self.what} is not a readable .npy file ({' '.join(str(err).split())[:200]}); "
                              "save it again with numpy.save") from None
        if dtype.hasobject:
            raise VaelabError(f"{self.what} holds Python objects ({dtype}); data must be numbers")
        if fortran and len(shape) > 1:
            raise VaelabError(f"{self.what} is stored column by column (Fortran order), which cannot be read a few "
                              "rows at a time; save numpy.ascontiguousarray(x) instead")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        need = self.offset + math.prod(self.shape) * dtype.itemsize
        if len(self.map) < need:
            raise VaelabError(f"{self.what} is cut short ({len(self.map):,} of {need:,} bytes); save it again with "
                              "numpy.save")
        self.array = np.ndarray(self.shape, dtype, buffer=self.map, offset=self.offset)

    def read(self, lo: int, hi: int) -> np.ndarray:
        out = np.array(self.array[lo:hi])  # a copy: the mapped pages can go
        self._release(lo, hi)
        return out

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        out = self.array[rows]  # one gather from the mapped file (the kernel reads the pages)
        self._release(int(rows[0]), int(rows[-1]) + 1)
        return out

    def _release(self, lo: int, hi: int) -> None:
        """Hand back the mapped pages of rows lo..hi-1 (they stay in the page cache)."""
        size = int(self.row_bytes)
        start = (self.offset + lo * size) // mmap.PAGESIZE * mmap.PAGESIZE
        end = self.offset + hi * size
        if end > start and hasattr(self.map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        del self.array
        try:
            self.map.close()
        except BufferError:  # rows still viewed somewhere: the map goes with them
            pass


def _sparse_problem(*args: Any, **kwargs: Any) -> str | None:
    from vaelab.data.anndata import sparse_problem  # numpy only: anndata itself is not imported

    return sparse_problem(*args, **kwargs)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise VaelabError(f"reading .h5ad files needs the optional package h5py (with anndata): {_EXTRA}") from None
    return h5py


class _H5DenseMatrix(DiskMatrix):
    """A dense HDF5 dataset (an ``.h5ad`` file's X or layer), read by row slices."""

    def __init__(self, dataset: Any, what: str) -> None:
        self.dataset, self.what = dataset, what
        self.shape = tuple(int(s) for s in dataset.shape)
        self.dtype = np.dtype(dataset.dtype)

    def read(self, lo: int, hi: int) -> np.ndarray:
        return self.dataset[lo:hi]

    def close(self) -> None:
        self.dataset.file.close()


class _H5CsrMatrix(DiskMatrix):
    """A CSR matrix in an HDF5 group (``data``, ``indices``, ``indptr``): rows lo..hi are the
    values ``data[indptr[lo]:indptr[hi]]`` at columns ``indices[...]``, one contiguous read each."""

    sparse = True

    def __init__(self, group: Any, what: str) -> None:
        self.group, self.what = group, what
        self.data, self.indices, self.indptr = group["data"], group["indices"], group["indptr"]
        self.shape = tuple(int(s) for s in group.attrs["shape"])
        self.dtype = np.dtype(self.data.dtype)
        self.field = str(group.name).lstrip("/")  # X, layers/NAME
        self.file = str(group.file.filename)
        nnz, n = int(self.data.size), len(self.indptr)
        # the whole structure is checked a block at a time as rows are read (read); here its ends
        field, problem = self.field, None
        if self.indices.size != nnz:
            problem = f"{field}/indices has {self.indices.size:,} entries and {field}/data {nnz:,}; they must match"
        elif n != self.shape[0] + 1:
            problem = f"{field}/indptr has {n:,} entries, not {self.shape[0] + 1:,} (one more than the {self.shape[0]:,} rows)"
        elif int(self.indptr[0]) != 0:
            problem = f"{field}/indptr starts at {int(self.indptr[0]):,}, not 0"
        elif int(self.indptr[n - 1]) != nnz:
            problem = f"{field}/indptr ends at {int(self.indptr[n - 1]):,}, not at the {nnz:,} stored values"
        if problem:
            self._damaged(problem)

    def _damaged(self, problem: str) -> None:
        raise VaelabError(f"data file '{self.file}' is a damaged .h5ad file: {problem}; write it again with "
                          "adata.write_h5ad(...)")

    def read(self, lo: int, hi: int) -> np.ndarray:
        ptr = self.indptr[lo : hi + 1].astype(np.int64)  # [R + 1]
        nnz = int(self.data.size)
        problem = _sparse_problem(self.field, ptr, (), nnz, hi - lo, self.shape[1], first=lo, whole=False)
        if problem:  # before a pointer is used: a huge one would read (and allocate) past the values
            self._damaged(problem)
        out = np.zeros((hi - lo, self.shape[1]), dtype=self.dtype)
        if len(ptr) and ptr[-1] > ptr[0]:
            values = self.data[ptr[0] : ptr[-1]]
            cols = self.indices[ptr[0] : ptr[-1]]
            bad = np.flatnonzero((cols < 0) | (cols >= self.shape[1]))
            if len(bad):  # a column past the last gene: another row's cell, or past the block
                i = int(bad[0])
                row = lo + int(np.searchsorted(ptr, ptr[0] + i, side="right")) - 1
                self._damaged(f"{self.field}/indices holds {int(cols[i]):,} (stored value {int(ptr[0]) + i:,}, row {row:,}), "
                              f"outside 0..{self.shape[1] - 1:,} (the {self.shape[1]:,} columns)")
            rows = np.repeat(np.arange(hi - lo), np.diff(ptr))
            out[rows, cols] = values
        return out

    def close(self) -> None:
        self.group.file.close()

    @property
    def row_bytes(self) -> float:
        return self.data.size * (self.dtype.itemsize + self.indices.dtype.itemsize) / max(1, self.shape[0])


def _h5ad_matrix(path: Path, layer: str | None) -> DiskMatrix:
    """X (``layer`` None) or ``layers/<layer>`` of an ``.h5ad`` file, opened read-only."""
    h5py = _h5py()
    what = f"data file '{path}'"
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise VaelabError(f"{what} is not a readable .h5ad (HDF5) file ({' '.join(str(err).split())[:200]})") from None
    try:
        return _h5_node(h5py, f, what, layer)
    except BaseException:
        f.close()
        raise


def _h5_node(h5py: Any, f: Any, what: str, layer: str | None) -> DiskMatrix:
    if layer is None:
        if "X" not in f:
            raise VaelabError(f"{what} has no X matrix; give a layer (keys: {', '.join(f.keys())})")
        node, name = f["X"], "X"
    else:
        layers = list(f["layers"].keys()) if "layers" in f else []
        if layer not in layers:
            raise VaelabError(f"{what} has no layer '{layer}' (layers: {', '.join(layers) or 'none'}); "
                              "choose one of those, or none for X")
        node, name = f["layers"][layer], f"layer '{layer}'"
    what = f"{name} of {what}"
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise VaelabError(f"{what} has shape {node.shape}; expected a matrix [cells, features]")
        return _H5DenseMatrix(node, what)
    encoding = node.attrs.get("encoding-type", "")
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    if encoding == "csc_matrix":
        raise VaelabError(f"{what} is stored by columns (CSC), which cannot be read a few rows at a time; "
                          "write it as CSR (adata.X = adata.X.tocsr(); adata.write_h5ad(...)) or drop --backed")
    if encoding != "csr_matrix" or not {"data", "indices", "indptr"} <= set(node.keys()):
        raise VaelabError(f"{what} is neither a dense array nor a CSR matrix (encoding {encoding or 'unknown'!r})")
    return _H5CsrMatrix(node, what)


def open_matrix(path: str | os.PathLike[str], layer: str | None = None) -> DiskMatrix:
    """Open the example matrix of a ``.npy`` or ``.h5ad`` file without reading its values.

    ``layer`` picks ``layers/<layer>`` of an ``.h5ad`` file instead of ``X``.
    """
    path = Path(path)
    name = path.name.lower()
    from vaelab.data.paths import check_data_path

    check_data_path(path)  # a FIFO, a device, a link loop: not "not found"
    if not path.is_file():
        raise VaelabError(f"data file '{path}' not found")
    if name.endswith(".npy"):
        if layer is not None:
            raise VaelabError(f"data file '{path}' is a .npy array: it has no layers; drop the layer")
        return _NpyMatrix(path)
    if name.endswith(".h5ad"):
        return _h5ad_matrix(path, layer)
    raise VaelabError(f"--backed reads {' and '.join(BACKED_SUFFIXES)} files from disk; data '{path}' is neither: "
                      "save the array with numpy.save, or drop --backed")


# --- one pass over the file ---------------------------------------------------------------------

@dataclass(frozen=True)
class Scan:
    """What one pass over a matrix found: the range of its values and whether they are all
    whole numbers, all 0/1."""

    lo: float
    hi: float
    integer: bool
    binary: bool


def scan(matrix: DiskMatrix, *, counts: bool = False, rows: int | None = None) -> Scan:
    """Read every row once (``rows`` at a time; default: :data:`SCAN_BYTES` worth) and check it:
    finite values everywhere (a NaN/inf names its row and column), and with ``counts``
    non-negative whole numbers (the first that is not is named)."""
    if matrix.dtype.kind not in "biuf":
        raise VaelabError(f"{matrix.what} has dtype {matrix.dtype}; data must be numbers (bool, integer or float)")
    lo, hi, integer, binary = math.inf, -math.inf, True, True
    n = len(matrix)
    rows = rows or max(1, SCAN_BYTES // (4 * math.prod(matrix.shape[1:])))
    for a in range(0, n, rows):
        block = matrix.read(a, min(a + rows, n))
        if block.dtype.kind == "b":
            block = block.astype(np.uint8)
        flat = block.reshape(len(block), -1)
        if block.dtype.kind == "f":
            bad = ~np.isfinite(flat)
            if bad.any():
                r, col = np.argwhere(bad)[0]
                kind = " (a sparse matrix)" if matrix.sparse else ""
                raise VaelabError(f"{matrix.what}{kind}: value {flat[r, col]} at row {a + r}, column {col} (counting "
                                  "from 0) is NaN/inf; remove or impute it")
        if flat.size == 0:
            continue
        whole = flat == np.round(flat) if block.dtype.kind == "f" else np.ones(flat.shape, dtype=bool)
        if counts and not (whole.all() and flat.min() >= 0):
            r, col = np.argwhere(~whole | (flat < 0))[0]
            value = flat[r, col].item()
            problem = "negative" if value < 0 else "not a whole number"
            raise VaelabError(f"{matrix.what}: value {value:g} at row {a + r}, column {col} is {problem}; a count "
                              "likelihood needs raw counts 0, 1, 2, ... (not normalised or log-transformed data), or "
                              "choose --likelihood gaussian")
        lo, hi = min(lo, float(flat.min())), max(hi, float(flat.max()))
        integer = integer and bool(whole.all())
        binary = binary and bool(((flat == 0) | (flat == 1)).all())
    return Scan(lo, hi, integer, binary)


# --- the in-memory path's guard ---------------------------------------------------------------------

def in_memory_bytes(path: str | os.PathLike[str], layer: str | None = None) -> tuple[float, str] | None:
    """The bytes loading a ``.npy`` or ``.h5ad`` file into memory would hold, and its size in
    words ("N x D values"); None for other sources. Counted from the header: the stored array,
    its float32 copy and the copy the split makes."""
    name = Path(path).name.lower()
    if not Path(path).is_file() or not name.endswith(BACKED_SUFFIXES):
        return None
    try:
        matrix = open_matrix(path, layer)
    except VaelabError:
        return None  # the reader says what is wrong with it
    values = math.prod(matrix.shape)
    stored = float(values * matrix.dtype.itemsize)
    if isinstance(matrix, _H5CsrMatrix):
        stored = float(matrix.data.size * (matrix.dtype.itemsize + matrix.indices.dtype.itemsize))
    matrix.close()
    shape = " x ".join(f"{s:,}" for s in matrix.shape)
    return stored + 2 * 4.0 * values, f"{shape} values"


def check_in_memory(path: str | os.PathLike[str], layer: str | None = None) -> None:
    """Refuse, in one line, a ``.npy`` / ``.h5ad`` file that would not fit in memory: more than
    the ``VAELAB_MEMORY_LIMIT`` cap when it is set, else more than the memory available
    (``MemAvailable``)."""
    sized = in_memory_bytes(path, layer)
    if sized is not None:
        check_fits(path, *sized)


def data_memory() -> tuple[float, str] | None:
    """The bytes a data file may take when loaded, and the words for them: the
    ``VAELAB_MEMORY_LIMIT`` cap when it is set, else the memory available; None when unknown."""
    from vaelab.evaluation.memory import MEMORY_LIMIT_ENV, format_bytes, free_bytes, memory_limit

    if os.environ.get(MEMORY_LIMIT_ENV, "").strip():
        limit, source = memory_limit()
        return limit, f"the {format_bytes(limit)} cap ({source})"
    free = free_bytes(torch.device("cpu"))
    return None if free is None else (free, f"the {format_bytes(free)} of memory available")


def check_fits(path: str | os.PathLike[str], need: float, words: str, fix: str | None = None) -> None:
    """Refuse, in one line, a data file whose loading needs ``need`` bytes (it holds ``words``)
    when that is more than the ``VAELAB_MEMORY_LIMIT`` cap when it is set, else more than the
    memory available (``MemAvailable``)."""
    from vaelab.evaluation.memory import format_bytes

    room = data_memory()
    if room is None:
        return
    limit, where = room
    if need > limit:
        fix = fix or "add --backed true to read it from disk in batches"
        raise VaelabError(f"data file '{path}' holds {words}: loading it needs about {format_bytes(need)}, more than "
                          f"{where}; {fix}")
