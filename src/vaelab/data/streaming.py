"""Data larger than memory: rows read from disk on demand, and training batches streamed.

``load_data(path, backed=True)`` leaves the examples on disk. A ``.npy`` file is memory-mapped
read-only (as ``numpy.load(mmap_mode="r")`` does; the pages read are handed back to the kernel
at once, so the resident memory does not grow with the file); an ``.h5ad`` file's ``X`` (or a
layer) is read with h5py, by row slices when it is dense and by row ranges through ``indptr``
when it is CSR-sparse. The three parts of :class:`~vaelab.data.DataSplits` are then
:class:`RowStore` objects instead of tensors: ``len``, ``shape``, ``dtype`` (float32) and
``store[i]``, ``store[a:b]``, ``store[index_array]`` returning float32 tensors, and
:meth:`RowStore.blocks` to pass over every row in order. Labels and covariates are small and
stay in memory. Everything that reads data by slices (validation,
:func:`~vaelab.evaluation.evaluate`, figures of a few examples) reads only those rows.

Training order (:func:`epoch_order`): the training rows are cut into blocks of consecutive
rows (:func:`block_rows`: 256 rows, or fewer to keep a block within 256 KiB as float32); a
seeded permutation orders the blocks; consecutive groups of ``buffer`` (16) blocks are read
together and shuffled among themselves: a shuffle buffer of 16 blocks from 16 random places
of the file (4,096 rows of up to 256 numbers, 1,024 rows of 1,000 genes). For epoch e the permutations come from one
generator seeded by :func:`~vaelab.training.loop.epoch_seed` ``(seed, e)``, so the same seed
gives the same batches, and a resumed run the same ones as an uninterrupted run.
:class:`EpochStream` serves the batches of an epoch in that order, read ahead by a background
thread (reading overlaps the steps before). The order differs from the in-memory one (a
permutation of all rows), so a backed run and an in-memory run of the same seed differ in
their numbers, not in what they fit. A file whose rows are sorted (by cell type, by batch) is
mixed less than in memory; shuffle such a file once on disk for a fully random order.

The files are read by :mod:`vaelab.data.disk`, which also refuses, before the in-memory path
loads it, a ``.npy`` or ``.h5ad`` file too large for memory (add ``--backed``).

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> np.save(path, np.arange(12, dtype=np.float32).reshape(6, 2))
>>> store = RowStore(open_matrix(path), (2,))
>>> store[1:3]
tensor([[2., 3.],
        [4., 5.]])
>>> store[np.array([5, 0])].shape
torch.Size([2, 2])
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaelab.data.disk import BACKED_SUFFIXES, SCAN_BYTES, DiskMatrix, open_matrix, scan
from vaelab.errors import VaelabError

__all__ = [
    "RowStore",
    "backed_splits",
    "load_backed",
    "epoch_order",
    "block_rows",
    "EpochStream",
    "update_sha256",
    "row_totals",
    "BLOCK",
    "BLOCK_BYTES",
    "BUFFER",
    "PREFETCH",
]

BLOCK = 256  # rows per contiguous block of the training order, at most
BLOCK_BYTES = 2**18  # and at most this many bytes of float32 rows (256 KiB: 64 rows of 1,000 genes)
BUFFER = 16  # blocks read together and shuffled among themselves (the shuffle buffer)
PREFETCH = 2  # groups the background reader of a streamed epoch reads ahead (0: no thread, read when asked)


# --- rows as tensors ------------------------------------------------------------------------------

class RowStore:
    """Rows of a :class:`DiskMatrix` as float32 tensors ``[*, *shape]``, read on demand.

    ``rows`` (sorted file row numbers; None: every row) is the subset this store shows, in
    order, e.g. the training part of a split. ``divisor`` divides the values read (255 for
    8-bit data, in float32 as in memory). Indexing with an int, a slice, an index array (any
    order, repeats allowed) or a boolean mask reads only those rows; ``device`` is where the
    tensors are put (:meth:`to`). ``numpy.asarray(store)`` reads every row, refused in one
    line when they would not fit in :func:`~vaelab.evaluation.memory.memory_limit`.
    """

    def __init__(self, matrix: DiskMatrix, shape: Sequence[int], rows: np.ndarray | None = None,
                 divisor: float | None = None, device: torch.device | str = "cpu") -> None:
        self.matrix = matrix
        self.example_shape = tuple(int(s) for s in shape)
        if math.prod(self.example_shape) != math.prod(matrix.shape[1:]):
            raise VaelabError(f"{matrix.what}: examples of shape {matrix.shape[1:]} cannot be shown as "
                              f"{self.example_shape}")
        self.rows = np.arange(len(matrix), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) > 1 and not bool((np.diff(self.rows) > 0).all()):
            raise ValueError("RowStore rows must be increasing")
        self.divisor = divisor
        self.device = torch.device(device)
        self.dtype = torch.float32

    # --- tensor-like ----------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.example_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.example_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        """Bytes the rows would take in memory as float32."""
        return len(self.rows) * math.prod(self.example_shape) * 4

    def __repr__(self) -> str:
        return f"RowStore({self.matrix.what}, shape={tuple(self.shape)}, device={self.device})"

    def to(self, device: torch.device | str) -> "RowStore":
        """The same rows, read onto ``device``."""
        return RowStore(self.matrix, self.example_shape, self.rows, self.divisor, device)

    def subset(self, positions: np.ndarray) -> "RowStore":
        """The rows at sorted ``positions`` of this store, as a store."""
        return RowStore(self.matrix, self.example_shape, self.rows[np.asarray(positions, dtype=np.int64)],
                        self.divisor, self.device)

    def __getitem__(self, key: Any) -> Tensor:
        n = len(self.rows)
        if isinstance(key, (int, np.integer)) or (isinstance(key, Tensor) and key.ndim == 0):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"row {i} out of range for a store of {n} rows")
            return self.take(np.array([i % n]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(n)[key])
        if isinstance(key, tuple):
            raise TypeError("a RowStore is indexed by rows only; index the tensor it returns for columns")
        index = key.cpu().numpy() if isinstance(key, Tensor) else np.asarray(key)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"a boolean mask of shape {index.shape} for a store of {n} rows")
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise IndexError(f"index rows with an int, a slice or a 1-d integer array, got {index.dtype} {index.shape}")
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"row index out of range for a store of {n} rows")
        return self.take(index % n if index.size else index.astype(np.int64))

    def take(self, positions: np.ndarray) -> Tensor:
        """Rows at ``positions`` (any order, repeats allowed) ``[len(positions), *shape]``."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) > 1 and bool((np.diff(positions) > 0).all()):
            return self._read(positions)
        unique, inverse = np.unique(positions, return_inverse=True)
        return self._read(unique)[torch.from_numpy(inverse.reshape(-1)).to(self.device)]

    def _read(self, positions: np.ndarray) -> Tensor:
        """Rows at increasing ``positions`` (:meth:`DiskMatrix.read_rows`), as float32."""
        d = math.prod(self.example_shape)
        out = np.empty((len(positions), d), dtype=np.float32)  # [R, D]
        if len(positions):
            out[...] = self.matrix.read_rows(self.rows[positions]).reshape(len(positions), d)
            if self.divisor is not None:
                np.divide(out, np.float32(self.divisor), out=out)
        t = torch.from_numpy(out).reshape(len(positions), *self.example_shape)
        return t if self.device.type == "cpu" else t.to(self.device)

    def __iter__(self) -> Iterator[Tensor]:
        for block in self.blocks():
            yield from block

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row in memory, for code that needs them all at once: refused in one line when
        they would not fit in what vaelab may use (:func:`~vaelab.evaluation.memory.memory_limit`)."""
        from vaelab.evaluation.memory import check_bytes

        check_bytes(float(self.nbytes), f"all {len(self):,} rows of {self.matrix.what} (left on disk by --backed)",
                    "read them in batches (store[a:b]) instead")
        out = self._read(np.arange(len(self.rows))).cpu().numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def blocks(self, rows: int | None = None) -> Iterator[Tensor]:
        """Every row in order, ``rows`` at a time (default: :data:`SCAN_BYTES` worth; the last
        block may be shorter)."""
        rows = rows or max(1, SCAN_BYTES // (4 * math.prod(self.example_shape)))
        for a in range(0, len(self.rows), rows):
            yield self._read(np.arange(a, min(a + rows, len(self.rows))))


def row_totals(store: RowStore) -> Tensor:
    """The sum of each row's values ``[N]`` float64 (library sizes of counts), block by block."""
    out = torch.zeros(len(store), dtype=torch.float64)  # [N], allocated once: no small tensors between the blocks
    a = 0
    for block in store.blocks():
        out[a : a + len(block)] = block.reshape(len(block), -1).double().sum(-1).cpu()
        a += len(block)
    return out


def update_sha256(h: Any, store: RowStore) -> None:
    """Feed ``h`` (a hashlib object) what hashing the store's rows as one float32 tensor would:
    ``"{dtype}|{shape}\\n"`` and then the bytes of every row, block by block."""
    h.update(f"{store.dtype}|{tuple(store.shape)}\n".encode())
    for block in store.blocks():
        h.update(block.reshape(-1).cpu().numpy().tobytes())


def _sha256(store: RowStore) -> str:  # the hex digest (tests)
    h = hashlib.sha256()
    update_sha256(h, store)
    return h.hexdigest()


# --- the training order, streamed -----------------------------------------------------------------

def block_rows(store: RowStore) -> int:
    """Rows per block of the training order: :data:`BLOCK` rows, fewer when they would take more
    than :data:`BLOCK_BYTES` as float32, so that a group (``BUFFER`` blocks) is a few MiB whatever
    the number of features (at least one row)."""
    return int(min(BLOCK, max(1, BLOCK_BYTES // (4 * math.prod(store.example_shape)))))


def epoch_order(n: int, generator: torch.Generator, block: int = BLOCK, buffer: int = BUFFER) -> Tensor:
    """The visiting order of ``n`` rows in one epoch, ``[n]`` int64: blocks of ``block``
    consecutive rows in a random order, shuffled within consecutive groups of ``buffer`` blocks.

    Draws from ``generator`` only: one permutation of the blocks, then one of each group.
    """
    if block < 1 or buffer < 1:
        raise VaelabError(f"block ({block}) and buffer ({buffer}) must be positive numbers of rows and blocks")
    n_blocks = -(-n // block)
    starts = torch.randperm(n_blocks, generator=generator) * block  # [n_blocks]
    parts = []
    for g in range(0, n_blocks, buffer):
        rows = torch.cat([torch.arange(s, min(s + block, n)) for s in starts[g : g + buffer].tolist()])  # [G]
        parts.append(rows[torch.randperm(len(rows), generator=generator)])
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


class EpochStream:
    """The training rows of one epoch in visiting order, read from disk ahead of use.

    ``order`` ``[N]`` (:func:`epoch_order`) is cut into the groups of ``block x buffer`` rows
    it was made of; each group is read at once (its rows sorted: contiguous reads) and put in
    visiting order, by a background thread ``prefetch`` groups ahead (0: in the caller's
    thread; default :data:`PREFETCH`). ``stream[a:b]`` gives the :class:`~vaelab.context.Batch` of visiting positions
    ``a..b-1`` (x read, c and known from memory); requests must not go back before an earlier
    request's start. Equal to ``Batch(store[order], c[order], known[order])[a:b]``.
    Call :meth:`close` (or use ``with``) to stop the reader.
    """

    def __init__(self, store: RowStore, order: Tensor, c: Tensor | None = None, known: Tensor | None = None,
                 group: int = BLOCK * BUFFER, prefetch: int | None = None) -> None:
        self.store, self.order = store, order
        self.c = None if c is None else c[order.to(c.device)]
        self.known = None if known is None else known[order.to(known.device)]
        self.group = group
        self._chunks: deque[tuple[int, Tensor]] = deque()  # (first position, x rows) read, not yet passed
        self._next = 0  # the first position not yet read
        self._stop = threading.Event()
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        prefetch = PREFETCH if prefetch is None else prefetch
        if prefetch > 0 and len(order) > group:
            self._queue = queue.Queue(maxsize=prefetch)
            self._thread = threading.Thread(target=self._produce, name="vaelab-stream", daemon=True)
            self._thread.start()

    def __len__(self) -> int:
        return len(self.order)

    def _read_group(self, a: int) -> Tensor:
        idx = self.order[a : a + self.group].numpy()
        return self.store.take(idx)  # sorted inside take, returned in visiting order

    def _produce(self) -> None:
        assert self._queue is not None
        try:
            for a in range(0, len(self.order), self.group):
                item: Any = self._read_group(a)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._queue.put(error)

    def _fetch(self) -> None:
        """Read the next group (from the reader thread's queue when there is one)."""
        if self._queue is None:
            x = self._read_group(self._next)
        else:
            x = self._queue.get()
            if isinstance(x, BaseException):
                raise x
        self._chunks.append((self._next, x))
        self._next += len(x)

    def __getitem__(self, key: slice) -> Any:
        from vaelab.context import Batch

        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a streamed epoch is read by contiguous slices in visiting order (e.g. for batches)")
        a, b, _ = key.indices(len(self.order))
        b = max(a, b)
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= a:
            self._chunks.popleft()  # passed: let it go
        if self._chunks and self._chunks[0][0] > a:
            raise VaelabError(f"a streamed epoch went back to row {a} after passing it; read batches in order")
        while self._next < b:
            self._fetch()
        parts = [x[max(a - s, 0) : min(b - s, len(x))] for s, x in self._chunks if s < b and s + len(x) > a]
        x = parts[0] if len(parts) == 1 else torch.cat(parts) if parts else self.store.take(np.zeros(0, dtype=np.int64))
        return Batch(x, None if self.c is None else self.c[a:b], None if self.known is None else self.known[a:b])

    def close(self) -> None:
        """Stop the reader thread (if any) and let go of what it read."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:  # unblock a reader waiting to put
                    assert self._queue is not None
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()
            self._thread = None
        self._chunks.clear()

    def __enter__(self) -> "EpochStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- splits whose parts stay on disk ------------------------------------------------------------------

def _split_rows(n: int, by: np.ndarray | None, val_fraction: float, test_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, val and test row numbers (each increasing) of ``n`` rows: the same draws as
    :func:`~vaelab.data.splits.make_splits` makes for a source without a test part."""
    from vaelab.data.splits import holdout

    keep, test = holdout(n, test_fraction, np.random.default_rng([seed, 1]), by)
    train, val = holdout(len(keep), val_fraction, np.random.default_rng([seed, 2]), None if by is None else by[keep])
    return keep[train], keep[val], test


def backed_splits(
    name: str,
    matrix: DiskMatrix,
    labels: np.ndarray | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    covariates: np.ndarray | None = None,
    covariate_names: tuple[str, ...] = (),
    class_names: tuple[str, ...] | None = None,
    covariate_classes: tuple[tuple[str, ...], ...] = (),
    strata: np.ndarray | None = None,
    counts: bool = False,
) -> Any:
    """:class:`~vaelab.data.DataSplits` whose three parts are :class:`RowStore` objects over
    ``matrix``: the same checks, 8-bit scaling, kinds and seeded (stratified) draws as
    :func:`~vaelab.data.splits.make_splits` on the same values in memory, from one pass over
    the file (:func:`scan`). ``labels``, ``covariates`` ``[N, P]`` and ``strata`` are in memory."""
    from vaelab.data.splits import DataSplits, _check_fraction, validate_labels

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VaelabError(f"seed={seed!r} must be a non-negative integer")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    shape = matrix.shape
    if not 2 <= len(shape) <= 4:
        raise VaelabError(f"{matrix.what} has shape {shape}; expected [N, D] vectors, [N, H, W] grayscale images or "
                          "[N, C, H, W] images")
    if 0 in shape[1:]:
        raise VaelabError(f"{matrix.what} has shape {shape} with an empty dimension; each example needs values")
    n = shape[0]
    least = 1 if val_fraction == test_fraction == 0 else 2  # one example to score; two to split
    if n < least:
        raise VaelabError(f"{matrix.what} has {n} example(s) (shape {shape}); need at least {least}")
    if labels is not None:
        labels = validate_labels(labels, n, f"labels of '{name}'")
    if (covariates is None) != (not covariate_names):
        raise VaelabError(f"data '{name}': covariates {list(covariate_names)} must come for every part of the data")
    if strata is not None:
        strata = np.asarray(strata)
        if strata.ndim != 1 or len(strata) != n:
            raise VaelabError(f"data '{name}': the column to stratify by has shape {strata.shape}; expected one value "
                              f"per example ({n},)")
    found = scan(matrix, counts=counts)
    divisor, levels = None, None
    if not counts and matrix.dtype.kind in "biu" and found.lo >= 0 and 1 < found.hi <= 255:
        divisor, levels = 255.0, 256
    if counts:
        kind = "counts"
    elif found.binary:
        kind, levels = "binary", 2
    elif found.lo >= 0 and found.hi / (divisor or 1) <= 1:
        kind = "unit"
    else:
        kind = "real"
    train, val, test = _split_rows(n, labels if strata is None else strata, val_fraction, test_fraction, seed)
    if len(train) < 2:
        raise VaelabError(f"data '{name}' leaves {len(train)} training example(s) after holding out "
                          f"val_fraction={val_fraction} and test_fraction={test_fraction}; use more data or smaller "
                          "fractions")
    example = (1, *shape[1:]) if len(shape) == 3 else tuple(shape[1:])
    store = RowStore(matrix, example, divisor=divisor)

    def part(values: np.ndarray | None, rows: np.ndarray, dtype: Any) -> Tensor | None:
        return None if values is None else torch.from_numpy(np.ascontiguousarray(values[rows], dtype=dtype))

    cov = None if covariates is None else np.asarray(covariates, dtype=np.float64)
    return DataSplits(
        name=name, train=store.subset(train), val=store.subset(val), test=store.subset(test),  # type: ignore[arg-type]
        train_labels=part(labels, train, np.int64), val_labels=part(labels, val, np.int64),
        test_labels=part(labels, test, np.int64), shape=example, kind=kind, discrete_levels=levels,
        class_names=None if class_names is None else tuple(str(c) for c in class_names),
        covariate_names=tuple(covariate_names), train_covariates=part(cov, train, np.float32),
        val_covariates=part(cov, val, np.float32), test_covariates=part(cov, test, np.float32),
        covariate_classes=tuple(covariate_classes),
    )


def load_backed(source: Any, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                covariates: tuple[str, ...] = (), counts: bool = False, layer: str | None = None,
                stratify_by: str | None = None) -> Any:
    """``load_data(source, backed=True)``: a ``.npy`` or ``.h5ad`` file split into
    :class:`RowStore` parts (see :func:`backed_splits`). An ``.h5ad`` file's ``obs`` is read
    as :mod:`vaelab.data.anndata` reads it in memory (covariates, ``stratify_by``); its
    matrix (X or ``layer``) stays on disk."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).lower().endswith(BACKED_SUFFIXES):
        shown = f"'{source}'" if isinstance(source, (str, os.PathLike)) else f"a {type(source).__name__}"
        raise VaelabError(f"--backed reads {' and '.join(BACKED_SUFFIXES)} files from disk; data {shown} is neither: "
                          "drop --backed (it fits in memory), or save the array with numpy.save and pass the .npy file")
    path = Path(source)
    if not path.is_file():
        raise VaelabError(f"data file '{path}' not found; pass --data with an existing .npy or .h5ad file")
    options = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, counts=counts)
    if path.name.lower().endswith(".npy"):
        if covariates:
            raise VaelabError(f"data '{path}' cannot hold covariates ({', '.join(covariates)}); a .npy file holds x "
                              "only: condition on nothing, or use an .h5ad file with obs columns")
        return backed_splits(os.fspath(source), open_matrix(path), **options)
    from vaelab.data.anndata import check_unique_genes, obs_covariates, obs_strata, open_h5ad, select_matrix

    what = f"data file '{path}'"
    adata = open_h5ad(path, backed=True)  # obs in memory, the matrix left on disk
    try:
        select_matrix(adata, layer, what)  # a layer that does not exist: the in-memory reader's message
        cov, classes = obs_covariates(adata.obs, tuple(covariates), what)
        strata = obs_strata(adata.obs, stratify_by, what) if stratify_by else None
        genes = tuple(str(g) for g in adata.var_names)  # recorded by a run: later files are matched by name
        check_unique_genes(genes, what)
    finally:
        adata.file.close()
    matrix = open_matrix(path, None if layer in (None, "", "X") else layer)
    splits = backed_splits(os.fspath(source), matrix, covariates=cov, covariate_names=tuple(covariates),
                           covariate_classes=classes, strata=strata, **options)
    return dataclasses.replace(splits, feature_names=genes)
