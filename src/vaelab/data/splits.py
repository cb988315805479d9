"""Data as the rest of vaelab sees it: checked float32 tensors split into train, val and test.

Every source (a built-in set, a file, an array) ends in :func:`make_splits`, which checks the
arrays, holds out a test part (when the source has none) and a validation part with seeded,
label-stratified permutations, and infers what kind of values the data has:

* ``"binary"``: every value is 0 or 1 (``discrete_levels`` 2);
* ``"unit"``: every value is in [0, 1], e.g. 8-bit pixels divided by 255;
* ``"real"``: anything finite;
* ``"counts"``: non-negative whole numbers kept as they are, for count likelihoods
  (``load_data(..., counts=True)``);
* ``"mixed"``: a table with a type per column (``DataSplits.columns``; NaN marks a missing
  cell), for the mixed likelihood (:mod:`vaelab.data.tabular`).

>>> import numpy as np
>>> x = np.random.default_rng(0).random((100, 5)).astype(np.float32)
>>> s = make_splits("array", x, val_fraction=0.1, test_fraction=0.2, seed=0)
>>> (len(s.train), len(s.val), len(s.test), s.shape, s.kind)
(72, 8, 20, (5,), 'unit')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaelab.errors import VaelabError

__all__ = [
    "DataSplits",
    "KINDS",
    "binarize",
    "Binarizer",
    "validate_data",
    "validate_labels",
    "prepare_arrays",
    "holdout",
    "make_splits",
    "check_counts",
]

KINDS = ("binary", "unit", "real", "counts", "mixed")


@dataclass(frozen=True, eq=False, repr=False)
class DataSplits:
    """A data set split three ways, as float32 tensors on the CPU.

    ``train`` is what the model is fitted to; ``val`` was held out of it (early stopping,
    model choice); ``test`` is only for the final numbers. Tensors are ``[N, *shape]``; labels,
    when the source has them, are int64 ``[N]``. Loaded with ``backed=True``, the three parts
    are :class:`~vaelab.data.streaming.RowStore` objects instead: rows left on disk, read as
    float32 tensors when sliced or indexed (labels and covariates stay tensors).
    """

    name: str
    train: torch.Tensor  # [N, *shape]
    val: torch.Tensor  # [Nv, *shape]
    test: torch.Tensor  # [Nt, *shape]
    train_labels: torch.Tensor | None  # [N] int64
    val_labels: torch.Tensor | None  # [Nv] int64
    test_labels: torch.Tensor | None  # [Nt] int64
    shape: tuple[int, ...]  # per example: (C, H, W) for images, (D,) for vectors
    kind: str  # "binary", "unit", "real" or "counts"
    discrete_levels: int | None  # 256 for 8-bit pixels, 2 for binary, 17 for digits, else None
    class_names: tuple[str, ...] | None = None  # the name of each label id, when the source named them
    covariate_names: tuple[str, ...] = ()  # continuous covariates asked for at load time
    train_covariates: torch.Tensor | None = None  # [N, P] float32, one column per name
    val_covariates: torch.Tensor | None = None  # [Nv, P]
    test_covariates: torch.Tensor | None = None  # [Nt, P]
    # per covariate: () for a continuous one; the level names of a categorical one, whose column
    # holds the level ids 0..K-1 (as floats)
    covariate_classes: tuple[tuple[str, ...], ...] = ()
    columns: tuple[Any, ...] = ()  # kind "mixed": the table's columns (vaelab.distributions.mixed.Column)
    feature_names: tuple[str, ...] = ()  # each feature's name when the source named them (CSV header, .h5ad genes)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VaelabError(f"DataSplits '{self.name}': kind={self.kind!r} must be one of {KINDS}")
        classes = tuple(tuple(str(n) for n in c) for c in self.covariate_classes) or ((),) * len(self.covariate_names)
        if len(classes) != len(self.covariate_names):
            raise VaelabError(f"DataSplits '{self.name}': covariate_classes has {len(classes)} entries for "
                              f"{len(self.covariate_names)} covariates {list(self.covariate_names)}")
        object.__setattr__(self, "covariate_classes", classes)
        parts = (("train", self.train, self.train_labels), ("val", self.val, self.val_labels),
                 ("test", self.test, self.test_labels))
        for part, x, y in parts:
            if x.dtype != torch.float32 or tuple(x.shape[1:]) != tuple(self.shape):
                raise VaelabError(
                    f"DataSplits '{self.name}': {part} is {x.dtype} of shape {tuple(x.shape)}; "
                    f"expected float32 [N, {', '.join(map(str, self.shape))}]"
                )
            if y is not None and (y.dtype != torch.int64 or tuple(y.shape) != (len(x),)):
                raise VaelabError(
                    f"DataSplits '{self.name}': {part}_labels is {y.dtype} of shape "
                    f"{tuple(y.shape)}; expected int64 [{len(x)}]"
                )
            cov = getattr(self, f"{part}_covariates")
            p = len(self.covariate_names)
            if (cov is None) != (p == 0) or (cov is not None and (cov.dtype != torch.float32 or tuple(cov.shape) != (len(x), p))):
                raise VaelabError(
                    f"DataSplits '{self.name}': {part}_covariates must be float32 [{len(x)}, {p}] "
                    f"for covariates {list(self.covariate_names)}"
                )

    @property
    def is_image(self) -> bool:
        """Whether examples are images ``(C, H, W)`` rather than vectors ``(D,)``."""
        return len(self.shape) == 3

    @property
    def has_labels(self) -> bool:
        """Whether class labels came with the data."""
        return self.train_labels is not None

    def split(self, part: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x, labels and covariates of ``part`` ("train", "val" or "test")."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be train, val or test, got {part!r}")
        return getattr(self, part), getattr(self, f"{part}_labels"), getattr(self, f"{part}_covariates")

    def __repr__(self) -> str:
        return (
            f"DataSplits(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, shape={self.shape}, kind={self.kind!r}, "
            f"discrete_levels={self.discrete_levels}, labels={self.has_labels})"
        )


def binarize(x: torch.Tensor, generator: torch.Generator | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Draw ``Bernoulli(x)`` element-wise: the usual dynamic binarization of [0, 1] data.

    Returns 0/1 values of ``x``'s floating dtype (float32 for float32 data, the usual case; float32
    for non-float input) on ``x``'s device. ``x`` is taken to lie in [0, 1]; values outside act as
    clamped. The draw is one ``torch.rand`` call, so a seeded ``generator`` (on ``x``'s device)
    makes it reproducible. ``out`` (a tensor of x's shape and that dtype) receives the result
    (the same numbers, no new memory).

    >>> g = torch.Generator().manual_seed(0)
    >>> binarize(torch.tensor([0.0, 1.0, 1.0]), g)
    tensor([0., 1., 1.])
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    if out is None:
        out = torch.empty(x.shape, device=x.device, dtype=dtype)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=dtype, out=out)
    return u.lt_(x)  # 1.0 where u < x, else 0.0, in place


class Binarizer:
    """Bernoulli(x) of one fixed tensor ``x``, drawn afresh on each call: dynamic binarization,
    epoch after epoch, with a uniform number drawn only where ``0 < x < 1``.

    Where a pixel is exactly 0 or 1, Bernoulli(x) is certain; in MNIST that is 81 % of the
    pixels, and the uniform draw of every pixel was the largest cost of a training epoch after
    the matrix products (the generator makes about 200 million floats a second on one core).
    A call writes the certain values (``floor(x)`` clamped to [0, 1]), draws one uniform u per
    uncertain pixel, in the order of their flat positions, and sets those pixels to ``u < x``:
    the same distribution as :func:`binarize` (values outside [0, 1] act as clamped), not the
    same numbers. It keeps 12 bytes per uncertain value (position and probability): for MNIST
    2.3 bytes per pixel beside x's 4. Where more than a quarter of the values are uncertain
    (Fashion-MNIST: half), a call is :func:`binarize` itself and keeps nothing: the list would
    cost more memory than the skipped draws save time.

    >>> x = torch.tensor([[0.0, 0.5], [1.0, 0.0]])
    >>> b = Binarizer(x)(torch.Generator().manual_seed(0))
    >>> b[0, 0].item(), b[1, 0].item(), b[0, 1].item() in (0.0, 1.0)
    (0.0, 1.0, True)
    """

    #: the largest fraction of uncertain values for which only those are drawn
    SPARSE_FRACTION = 0.25

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.dtype = x.dtype if x.is_floating_point() else torch.float32
        flat = x.reshape(-1)
        uncertain = (flat > 0) & (flat < 1)
        count = int(uncertain.sum())
        self.sparse = x.is_floating_point() and count <= self.SPARSE_FRACTION * flat.numel()
        if self.sparse:
            self.inside = bool(flat.min() >= 0) and bool(flat.max() <= 1)  # floor(x) is then 0 or 1 already
            self.index = uncertain.nonzero().squeeze(1)  # [n] flat positions, ascending
            self.p = flat[self.index].to(self.dtype)  # [n] their probabilities

    def __call__(self, generator: torch.Generator | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """One draw of 0/1 values of ``x``'s shape (into ``out`` when given, a contiguous tensor
        of x's shape and float dtype); a seeded ``generator`` on x's device makes it reproducible."""
        if not self.sparse:
            return binarize(self.x, generator, out)
        if out is None:
            out = torch.empty(self.x.shape, device=self.x.device, dtype=self.dtype)
        torch.floor(self.x, out=out)  # the certain values; 0 at the uncertain ones (0 < x < 1)
        if not self.inside:
            out.clamp_(0, 1)
        u = torch.rand(self.p.shape, generator=generator, device=self.x.device, dtype=self.dtype)
        out.view(-1).scatter_(0, self.index, u.lt_(self.p))
        return out


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def validate_data(x: np.ndarray | torch.Tensor, what: str, *, min_examples: int = 2, missing: bool = False) -> None:
    """Check that ``x`` can be a data array, raising a one-line :class:`VaelabError` if not.

    ``what`` names the array in messages, e.g. ``"data file 'x.npy'"``. Checks: a numeric
    dtype, shape ``[N, D]``, ``[N, H, W]`` or ``[N, C, H, W]`` with no empty dimension, at least
    ``min_examples`` examples, and no NaN or infinite values (``missing=True``: NaN marks a
    missing value and is allowed).
    """
    x = _to_numpy(x)
    if x.dtype.kind not in "biuf":
        raise VaelabError(
            f"{what} has dtype {x.dtype}; data must be numbers (bool, integer or float)"
        )
    if not 2 <= x.ndim <= 4:
        hint = "; add a feature axis, e.g. x[:, None]" if x.ndim == 1 else ""
        raise VaelabError(
            f"{what} has shape {x.shape}; expected [N, D] vectors, [N, H, W] grayscale images or "
            f"[N, C, H, W] images{hint}"
        )
    if 0 in x.shape[1:]:
        raise VaelabError(f"{what} has shape {x.shape} with an empty dimension; each example needs values")
    if len(x) < min_examples:
        raise VaelabError(
            f"{what} has {len(x)} example(s) (shape {x.shape}); need at least {min_examples}"
        )
    if x.dtype.kind == "f":
        nonfinite = np.isinf(x) if missing else ~np.isfinite(x)
        bad = nonfinite.reshape(len(x), -1).any(axis=1)
        if bad.any():
            count = int(nonfinite.sum())
            first = int(np.argmax(bad))
            raise VaelabError(
                f"{what}: {count} NaN/inf values (first at row {first}, counting from 0); "
                f"remove or impute them"
            )


def validate_labels(y: np.ndarray | torch.Tensor, n: int, what: str) -> np.ndarray:
    """Check class labels for ``n`` examples and return them as int64 ``[n]``."""
    y = _to_numpy(y)
    if y.ndim != 1 or len(y) != n:
        raise VaelabError(f"{what} has shape {y.shape}; expected one label per example: ({n},)")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise VaelabError(f"{what} has dtype {y.dtype}; labels must be integers")
    bad = ~np.isfinite(y) | (y != np.round(y))
    if bad.any():
        first = int(np.argmax(bad))
        raise VaelabError(
            f"{what}: label {y[first].item()!r} at row {first} is not a whole number; labels must be "
            f"integer class ids"
        )
    return y.astype(np.int64)


def _example_shape(x: np.ndarray) -> np.ndarray:
    """[N, D] stays; [N, H, W] -> [N, 1, H, W]; [N, C, H, W] stays."""
    return x[:, None] if x.ndim == 3 else x


def prepare_arrays(
    arrays: list[np.ndarray | torch.Tensor], what: list[str], *, counts: bool = False
) -> tuple[list[np.ndarray], int | None]:
    """Validate raw arrays of one data set and turn them into float32 with per-example shape.

    The arrays (e.g. a file's train and test parts) must agree on per-example shape. Integer
    data with values in 0..255 and a maximum above 1 is read as 8-bit and divided by 255
    (``discrete_levels`` 256); the decision is taken for all arrays together. Other integers
    and floats keep their values. Returns the arrays and ``discrete_levels`` (or None).

    ``counts=True`` (data for a count likelihood): values are kept as they are and must be
    non-negative whole numbers; the first one that is not is named by row, column and value.
    """
    checked = []
    for x, name in zip(arrays, what, strict=True):
        x = _to_numpy(x)
        validate_data(x, name, min_examples=1)
        if x.dtype.kind == "f" and x.dtype.itemsize > 4 and np.abs(x).max() > np.finfo(np.float32).max:
            raise VaelabError(
                f"{name} has values up to {np.abs(x).max():.3g}, too large for float32; rescale it"
            )
        checked.append(_example_shape(x.astype(np.uint8) if x.dtype.kind == "b" else x))
    shapes = {x.shape[1:] for x in checked}
    if len(shapes) > 1:
        listed = ", ".join(f"{name} {x.shape}" for x, name in zip(checked, what, strict=True))
        raise VaelabError(f"parts of one data set disagree on the example shape: {listed}; make them match")
    if counts:
        for x, name in zip(checked, what, strict=True):
            check_counts(x, name)
        return [x.astype(np.float32) for x in checked], None
    if all(x.dtype.kind in "iu" for x in checked):
        lo = min(int(x.min()) for x in checked)
        hi = max(int(x.max()) for x in checked)
        if lo >= 0 and 1 < hi <= 255:
            return [np.divide(x, np.float32(255), dtype=np.float32) for x in checked], 256
    return [x.astype(np.float32) for x in checked], None


def check_counts(x: np.ndarray, what: str) -> None:
    """Raise a one-line VaelabError unless every value of ``x`` ``[N, ...]`` is a non-negative
    whole number (counts), naming the first bad value's row and column (0-based, flattened)."""
    if x.dtype.kind in "biu" and (x.size == 0 or x.min() >= 0):
        return
    flat = x.reshape(len(x), -1)
    negative = flat < 0
    fractional = flat != np.round(flat) if flat.dtype.kind == "f" else np.zeros_like(negative)
    bad = negative | fractional
    if bad.any():
        row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
        value = flat[row, col].item()
        problem = "negative" if negative[row, col] else "not a whole number"
        raise VaelabError(
            f"{what}: value {value:g} at row {row}, column {col} is {problem} ({int(negative.sum())} negative and "
            f"{int(fractional.sum())} non-integer values in all); a count likelihood needs raw counts 0, 1, 2, ... "
            "(not normalised or log-transformed data), or choose --likelihood gaussian"
        )


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise VaelabError(f"{name}={value} must be in [0, 1); e.g. 0.1 holds out 10% of the examples")
    return value


def holdout(
    n: int, fraction: float, rng: np.random.Generator, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, held) index arrays, each in increasing order.

    ``round(fraction * n)`` examples are held (at least one when ``fraction > 0``), drawn by a
    permutation from ``rng``. With labels the draw is stratified: each class gives its share
    ``fraction * n_class``, rounded so the total is exact (largest remainders first).
    """
    target = round(fraction * n)
    if fraction > 0 and target == 0:
        target = 1
    if labels is None:
        held = rng.permutation(n)[:target]
    else:
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        quota = fraction * counts
        take = np.floor(quota).astype(np.int64)
        extra = target - int(take.sum())
        if extra > 0:  # largest remainders first; stable sort keeps class order on ties
            order = np.argsort(-(quota - take), kind="stable")
            take[order[:extra]] += 1
        held_parts = []
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            held_parts.append(members[rng.permutation(len(members))[: take[c]]])
        held = np.concatenate(held_parts) if held_parts else np.empty(0, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _is_binary(x: np.ndarray) -> bool:
    head = x.reshape(-1)[:4096]  # most non-binary data shows it at once: skip the full pass
    return bool(np.all((head == 0) | (head == 1)) and np.all((x == 0) | (x == 1)))


def _infer_kind(arrays: list[np.ndarray]) -> str:
    nonempty = [x for x in arrays if x.size]
    if all(_is_binary(x) for x in nonempty):
        return "binary"
    if all(x.min() >= 0 and x.max() <= 1 for x in nonempty):
        return "unit"
    return "real"


def make_splits(
    name: str,
    x: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    x_test: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    discrete_levels: int | None = None,
    covariates: np.ndarray | None = None,
    test_covariates: np.ndarray | None = None,
    covariate_names: tuple[str, ...] = (),
    class_names: tuple[str, ...] | None = None,
    covariate_classes: tuple[tuple[str, ...], ...] = (),
    strata: np.ndarray | None = None,
    counts: bool = False,
    columns: tuple[Any, ...] = (),
) -> DataSplits:
    """Assemble :class:`DataSplits` from prepared float arrays (see :func:`prepare_arrays`).

    ``x`` is ``[N, *shape]``. Without ``x_test``, a seeded ``test_fraction`` of ``x`` becomes
    the test part; then ``val_fraction`` of what is left becomes the validation part. Both
    draws are stratified by label when labels exist, and independent streams of ``seed`` so
    the same seed always gives the same split. ``discrete_levels`` is replaced by 2 when the
    data turns out to be binary. ``covariates`` ``[N, P]`` (and ``test_covariates``) follow
    the examples into their parts, one column per name in ``covariate_names``
    (``covariate_classes``: see :class:`DataSplits`). ``strata`` (N values of any kind, e.g. cell
    types) stratifies both draws instead of the labels. ``counts``: the data are counts (kind
    ``"counts"``, see :func:`prepare_arrays`). ``columns``: x is a mixed table with these
    columns (kind ``"mixed"``), whose NaN cells are missing values, kept.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VaelabError(f"seed={seed!r} must be a non-negative integer")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    least = 1 if x_test is None and val_fraction == test_fraction == 0 else 2  # one example to score; two to split
    validate_data(x, f"data '{name}'", min_examples=least, missing=bool(columns))
    if labels is not None:
        labels = validate_labels(labels, len(x), f"labels of '{name}'")
    if (covariates is None) != (not covariate_names) or (x_test is not None and (test_covariates is None) != (covariates is None)):
        raise VaelabError(f"data '{name}': covariates {list(covariate_names)} must come for every part of the data")
    if strata is not None:
        strata = np.asarray(strata)
        if strata.ndim != 1 or len(strata) != len(x):
            raise VaelabError(f"data '{name}': the column to stratify by has shape {strata.shape}; expected one value "
                              f"per training example ({len(x)},)")
    by = labels if strata is None else strata
    if x_test is None:
        keep, held = holdout(len(x), test_fraction, np.random.default_rng([seed, 1]), by)
        x, x_test = x[keep], x[held]
        if by is not None:
            by = by[keep]
        if labels is not None:
            labels, test_labels = labels[keep], labels[held]
        if covariates is not None:
            covariates, test_covariates = covariates[keep], covariates[held]
    else:
        validate_data(x_test, f"test data of '{name}'", min_examples=1, missing=bool(columns))
        if x_test.shape[1:] != x.shape[1:]:
            raise VaelabError(
                f"data '{name}': test examples have shape {x_test.shape[1:]} but training "
                f"examples {x.shape[1:]}; make them match"
            )
        if test_labels is not None:
            test_labels = validate_labels(test_labels, len(x_test), f"test labels of '{name}'")
        if (labels is None) != (test_labels is None):
            raise VaelabError(
                f"data '{name}' has labels for only one of train and test; give both or neither"
            )
    keep, held = holdout(len(x), val_fraction, np.random.default_rng([seed, 2]), by)
    if len(keep) < least:
        raise VaelabError(
            f"data '{name}' leaves {len(keep)} training example(s) after holding out "
            f"val_fraction={val_fraction} and test_fraction={test_fraction}; use more data or "
            f"smaller fractions"
        )
    x_train, x_val = x[keep], x[held]
    y_train = y_val = None
    if labels is not None:
        y_train, y_val = labels[keep], labels[held]
    c_train = c_val = None
    if covariates is not None:
        c_train, c_val = covariates[keep], covariates[held]

    kind = "mixed" if columns else "counts" if counts else _infer_kind([x_train, x_val, x_test])
    if kind == "binary":
        discrete_levels = 2

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def label_tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return DataSplits(
        name=name,
        train=tensor(x_train),
        val=tensor(x_val),
        test=tensor(x_test),
        train_labels=label_tensor(y_train),
        val_labels=label_tensor(y_val),
        test_labels=label_tensor(test_labels),
        shape=tuple(int(d) for d in x.shape[1:]),
        kind=kind,
        discrete_levels=discrete_levels,
        class_names=None if class_names is None else tuple(str(n) for n in class_names),
        covariate_names=tuple(covariate_names),
        train_covariates=None if c_train is None else tensor(c_train),
        val_covariates=None if c_val is None else tensor(c_val),
        test_covariates=None if test_covariates is None else tensor(test_covariates),
        covariate_classes=tuple(covariate_classes),
        columns=tuple(columns),
    )
