"""Where data comes from: :func:`load_data` and the readers behind it.

``load_data(source)`` accepts

* a built-in name (:data:`~vaelab.data.builtin.BUILTIN_DATASETS`; these win over a file of
  the same name);
* a ``.npy`` file or an array / tensor in memory: one array ``[N, ...]``;
* a ``.npz`` file or a mapping: keys ``train`` and optionally ``test``, ``train_labels``,
  ``test_labels``; or a single array under any key. Covariates asked for by name come from
  ``train_NAME`` (and ``test_NAME`` when there is a test part), one value per example;
* a ``.csv`` (or ``.csv.gz``) file: comma-separated numbers, one example per row. A first row
  with any non-number is a header and is skipped; a header column named ``label`` holds
  class labels (whole numbers, or names such as ``cat``: ids in sorted name order);
  covariates asked for by name are header columns, taken out of the features;
* a folder of PNG/JPEG images, converted to grayscale and all of one size. When the folder
  has subfolders, each subfolder is a class: its name is the label if every name is a whole
  number, else labels are 0, 1, ... in sorted name order.

Array shapes: ``[N, D]`` gives vectors ``(D,)``, ``[N, H, W]`` grayscale images ``(1, H, W)``,
``[N, C, H, W]`` stays. Integer data in 0..255 with a maximum above 1 is 8-bit and is divided
by 255 (CSV numbers that are all whole count as integers); other values are kept. Without a
test part, a seeded ``test_fraction`` is held out; ``val_fraction`` of the rest becomes the
validation part.

>>> import numpy as np
>>> s = load_data(np.zeros((50, 3), dtype=np.uint8) + 7, seed=1)
>>> (s.shape, s.kind, s.discrete_levels, len(s.train) + len(s.val) + len(s.test))
((3,), 'unit', 256, 50)
"""

from __future__ import annotations

import csv
import warnings
import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.data.builtin import BUILTIN_DATASETS, load_builtin
from vaelab.data.splits import DataSplits, make_splits, prepare_arrays
from vaelab.errors import VaelabError

__all__ = ["load_data", "DataSource", "NPZ_KEYS", "IMAGE_SUFFIXES"]

DataSource = str | os.PathLike[str] | np.ndarray | torch.Tensor | Mapping[str, Any]
NPZ_KEYS = ("train", "test", "train_labels", "test_labels")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FILE_KINDS = ".npy, .npz, .csv or .csv.gz file, an image folder"


@dataclass
class _Raw:
    """Arrays as a source gave them, before scaling and splitting."""

    x: Any
    labels: Any = None
    x_test: Any = None
    test_labels: Any = None
    covariates: Any = None  # [N, P] float64
    test_covariates: Any = None
    class_names: tuple[str, ...] | None = None
    covariate_classes: tuple[tuple[str, ...], ...] = ()  # per covariate: () continuous, else level names
    strata: Any = None  # [N] values to stratify the test/val draws by (instead of the labels)


def load_data(
    source: DataSource = "mnist5k",
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    covariates: tuple[str, ...] | list[str] = (),
    counts: bool = False,
) -> DataSplits:
    """Load, check and split a data set (see the module docstring for the accepted sources).

    ``val_fraction`` of the training part is held out for validation and, for sources without
    a test part, ``test_fraction`` of all examples for testing; both draws are seeded and
    stratified by label when there are labels. ``cache`` is the download folder for
    ``mnist`` and ``fashion-mnist`` (default: :func:`~vaelab.data.idx.cache_dir`).
    ``covariates`` names continuous covariates to read beside x (CSV columns, npz arrays
    ``train_NAME``/``test_NAME``); they are split with the examples. ``counts=True`` keeps
    integer data as counts (no 8-bit scaling; negative or fractional values are errors; kind
    ``"counts"``), for the count likelihoods. Any problem with the data raises a one-line
    :class:`~vaelab.errors.VaelabError`.

    >>> s = load_data("mnist5k")  # doctest: +SKIP
    >>> s.train.shape, s.val.shape, s.test.shape  # doctest: +SKIP
    (torch.Size([3600, 1, 28, 28]), torch.Size([400, 1, 28, 28]), torch.Size([1000, 1, 28, 28]))
    """
    covariates = tuple(covariates)
    if isinstance(source, str) and source.lower() in BUILTIN_DATASETS:
        if covariates:
            raise VaelabError(f"built-in data set '{source}' has no covariates ({', '.join(covariates)}); "
                              "it can condition on its labels only (--condition-on label)")
        return load_builtin(source.lower(), val_fraction=val_fraction, test_fraction=test_fraction,
                            seed=seed, cache=cache)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if covariates:
            raise VaelabError(f"a bare array has no covariates ({', '.join(covariates)}); pass a mapping "
                              "with 'train' and 'train_NAME' arrays")
        name, raw = "array", _Raw(source)
    elif isinstance(source, Mapping):
        name, raw = "array", _from_mapping(source, "data mapping", covariates)
    elif isinstance(source, (str, os.PathLike)):
        name, raw = os.fspath(source), _read_path(Path(source), covariates)
    else:
        raise VaelabError(
            f"cannot load data from a {type(source).__name__}; pass a file path, a folder, a "
            f"numpy array, a tensor, a dict of arrays, or one of: {', '.join(BUILTIN_DATASETS)}"
        )
    label = "data array" if name == "array" else f"data file '{name}'"
    arrays, what = [raw.x], [label]
    if raw.x_test is not None:
        arrays.append(raw.x_test)
        what.append(f"test part of {label}")
    arrays, levels = prepare_arrays(arrays, what, counts=counts)
    labels, test_labels, class_names = _label_ids(raw, label)
    return make_splits(
        name, arrays[0], labels, x_test=arrays[1] if len(arrays) > 1 else None,
        test_labels=test_labels, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, discrete_levels=levels, covariates=raw.covariates, test_covariates=raw.test_covariates,
        covariate_names=covariates, class_names=class_names, covariate_classes=raw.covariate_classes,
        strata=raw.strata, counts=counts,
    )


def _label_ids(raw: _Raw, what: str) -> tuple[Any, Any, tuple[str, ...] | None]:
    """Labels given as names (strings) become ids in sorted name order, over train and test
    together; numeric labels pass through (checked later)."""
    parts = [p for p in (raw.labels, raw.test_labels) if p is not None]
    if not parts or not any(np.asarray(p).dtype.kind in "US" for p in parts):
        return raw.labels, raw.test_labels, raw.class_names
    if not all(np.asarray(p).dtype.kind in "US" for p in parts):
        raise VaelabError(f"labels of {what}: the train labels and the test labels must both be names or both be numbers")
    texts = [np.char.strip(np.asarray(p).astype(str)) for p in parts]
    for t, part in zip(texts, ("train", "test")):
        if (t == "").any():
            raise VaelabError(f"labels of {what}: the {part} label at row {int(np.argmax(t == ''))} is empty; "
                              "give every example a label")
    names = sorted(set(np.concatenate(texts).tolist()))
    ids = [np.searchsorted(np.asarray(names), t).astype(np.int64) for t in texts]
    return ids[0], ids[1] if len(ids) > 1 else None, tuple(names)


def _covariate_columns(arrays: Mapping[str, Any], names: tuple[str, ...], prefix: str, n: int, what: str) -> np.ndarray | None:
    """The arrays ``prefix + name`` as columns ``[n, P]`` of finite numbers, or a one-line error."""
    if not names:
        return None
    cols = []
    for name in names:
        key = f"{prefix}{name}"
        if key not in arrays:
            raise VaelabError(f"--condition-on {name}: {what} has no array '{key}' (keys: {', '.join(map(repr, arrays))}); "
                              f"add it, one value per example")
        col = np.asarray(arrays[key])
        if col.dtype.kind not in "biuf" or col.ndim != 1 or len(col) != n:
            raise VaelabError(f"covariate '{key}' of {what} has shape {col.shape} and dtype {col.dtype}; "
                              f"expected {n} numbers, one per example")
        bad = ~np.isfinite(col.astype(np.float64))
        if bad.any():
            raise VaelabError(f"covariate '{name}' of {what} has a missing (NaN/inf) value at row {int(np.argmax(bad))}; "
                              "fill it in or drop that example")
        cols.append(col.astype(np.float64))
    return np.stack(cols, 1)


def _read_path(path: Path, covariates: tuple[str, ...] = ()) -> _Raw:
    if not path.exists():
        if path.suffix or len(path.parts) > 1:
            raise VaelabError(
                f"data file '{path}' not found; pass --data with an existing {_FILE_KINDS}, or "
                f"one of: {', '.join(BUILTIN_DATASETS)}"
            )
        raise VaelabError(
            f"unknown data set '{path}': not a built-in name ({', '.join(BUILTIN_DATASETS)}) "
            f"nor an existing file or folder; pass one of those names or a {_FILE_KINDS}"
        )
    name = path.name.lower()
    if covariates and not (name.endswith(".npz") or name.endswith(".csv") or name.endswith(".csv.gz")):
        raise VaelabError(f"data '{path}' cannot hold covariates ({', '.join(covariates)}); put them in CSV "
                          "columns or npz arrays train_NAME/test_NAME, or condition on the label only")
    if path.is_dir():
        return _read_image_folder(path)
    if name.endswith(".npy"):
        return _read_npy(path)
    if name.endswith(".npz"):
        return _read_npz(path, covariates)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return _read_csv(path, covariates)
    raise VaelabError(f"data file '{path}' has an unsupported type; pass a {_FILE_KINDS}")


# --- numpy files -------------------------------------------------------------------------

_NUMPY_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error)


def _read_npy(path: Path) -> _Raw:
    try:
        with open(path, "rb") as f:  # our own handle: numpy leaks its own on some errors
            x = np.load(f, allow_pickle=False)
            if not isinstance(x, np.ndarray):  # an .npz under a .npy name
                x.close()
                x = None
    except _NUMPY_ERRORS as err:
        raise VaelabError(
            f"data file '{path}' is not a readable .npy file ({_short(err)}); save it again "
            f"with numpy.save"
        ) from None
    if x is None:
        raise VaelabError(f"data file '{path}' is an .npz archive; rename it to .npz")
    return _Raw(x)


def _read_npz(path: Path, covariates: tuple[str, ...] = ()) -> _Raw:
    what = f"data file '{path}'"
    try:
        with open(path, "rb") as f:  # our own handle: numpy leaks its own on some errors
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                arrays = None
            else:
                with loaded:
                    arrays = {key: loaded[key] for key in loaded.files}
    except _NUMPY_ERRORS as err:
        raise VaelabError(
            f"{what} is not a readable .npz file ({_short(err)}); save it again with numpy.savez"
        ) from None
    if arrays is None:
        raise VaelabError(f"{what} holds a single array, not an .npz archive; rename it to .npy")
    return _from_mapping(arrays, what, covariates)


def _from_mapping(arrays: Mapping[str, Any], what: str, covariates: tuple[str, ...] = ()) -> _Raw:
    keys = list(arrays)
    if not keys:
        raise VaelabError(f"{what} holds no arrays; give at least the key 'train'")
    if len(keys) == 1 and not covariates:
        return _Raw(arrays[keys[0]])
    extra = {f"{p}_{n}" for n in covariates for p in ("train", "test")}
    unknown = [k for k in keys if k not in NPZ_KEYS and k not in extra]
    if unknown or "train" not in keys:
        problem = (f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown
                   else "no key 'train'")
        raise VaelabError(
            f"{what} has {problem} (keys: {', '.join(map(repr, keys))}); use 'train' and "
            f"optionally 'test', 'train_labels', 'test_labels', or a single array"
        )
    if "test_labels" in keys and "test" not in keys:
        raise VaelabError(f"{what} has 'test_labels' but no 'test'; add the test array or drop the labels")
    x, x_test = arrays["train"], arrays.get("test")
    cov = _covariate_columns(arrays, covariates, "train_", len(x), what)
    cov_test = None if x_test is None else _covariate_columns(arrays, covariates, "test_", len(x_test), what)
    return _Raw(x, arrays.get("train_labels"), x_test, arrays.get("test_labels"), cov, cov_test)


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


# --- CSV ---------------------------------------------------------------------------------

def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # -sig: a byte-order mark is not part of the first cell


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for each non-blank row; slow, only used to explain errors."""
    with _open_text(path) as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if any(cell.strip() for cell in row):
                yield line_no, [cell.strip() for cell in row]


def _explain_csv(path: Path, header: bool, *, nonfinite: bool = False, text_columns: tuple[int, ...] = (),
                 names: dict[int, str] | None = None) -> str:
    """Find the first bad row of a CSV file that numpy refused, and say what is wrong.

    ``text_columns`` (0-based) may hold anything (a label column of names); ``names`` maps
    covariate columns to their names, for a message about a missing covariate value."""
    width = None
    names = names or {}
    for i, (line_no, cells) in enumerate(_csv_rows(path)):
        if header and i == 0:
            continue
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            return (f"line {line_no} has {len(cells)} columns, earlier lines {width}; give "
                    f"every row the same columns")
        for col, cell in enumerate(cells, start=1):
            if col - 1 in text_columns:
                continue
            finite = _is_number(cell) and np.isfinite(float(cell))
            if col - 1 in names and (not cell or (nonfinite and not finite)):
                return (f"covariate column '{names[col - 1]}' has a missing value ({cell or 'an empty cell'}) at line "
                        f"{line_no}; fill it in or drop that row")
            if not _is_number(cell):
                shown = repr(cell) if cell else "an empty cell"
                return f"line {line_no}, column {col} is {shown}, not a number; fix or remove that row"
            if nonfinite and not finite:
                return f"line {line_no}, column {col} is {cell!r}; remove or impute NaN/inf values"
    return "it could not be parsed as numbers"


def _read_csv(path: Path, covariates: tuple[str, ...] = ()) -> _Raw:
    what = f"data file '{path}'"
    try:
        with _open_text(path) as f:
            first = next((row for row in csv.reader(f) if any(c.strip() for c in row)), None)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as err:
        raise VaelabError(f"{what} is not a readable UTF-8 CSV file ({_short(err)})") from None
    if first is None:
        raise VaelabError(f"{what} is empty; put one example per row, numbers separated by commas")
    first = [cell.strip() for cell in first]
    header = not all(_is_number(cell) for cell in first)
    lowered = [n.lower() for n in first] if header else []
    label_col = lowered.index("label") if "label" in lowered else None
    cov_cols: dict[int, str] = {}
    for name in covariates:
        if not header or name not in first:
            columns = f"columns: {', '.join(first)}" if header else "it has no header row naming its columns"
            raise VaelabError(f"--condition-on {name}: {what} has no column '{name}' ({columns})")
        cov_cols[first.index(name)] = name
    text_columns = () if label_col is None else (label_col,)
    numeric = [j for j in range(len(first)) if j not in text_columns]
    try:
        with warnings.catch_warnings():  # a header without rows: said below, not as numpy's warning
            warnings.filterwarnings("ignore", message=".*input contained no data", category=UserWarning)
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, skiprows=int(header),
                               comments=None, encoding="utf-8-sig", usecols=numeric if text_columns else None)
            labels = None if label_col is None else np.loadtxt(
                path, delimiter=",", dtype=str, ndmin=1, skiprows=1, comments=None, encoding="utf-8-sig",
                usecols=[label_col])
    except (ValueError, OSError, EOFError, UnicodeDecodeError, zlib.error):
        raise VaelabError(f"{what}: {_explain_csv(path, header, text_columns=text_columns, names=cov_cols)}") from None
    if table.size == 0:
        raise VaelabError(f"{what} has a header but no data rows")
    if header and len(numeric) != table.shape[1]:
        raise VaelabError(
            f"{what} has {len(first)} header names but {table.shape[1] + len(text_columns)} columns of data; make them match"
        )
    if not np.isfinite(table).all():
        raise VaelabError(f"{what}: {_explain_csv(path, header, nonfinite=True, text_columns=text_columns, names=cov_cols)}")

    if labels is not None:
        labels = np.char.strip(labels)
        if all(_is_number(v) for v in labels):
            labels = labels.astype(np.float64)
    cov = None
    if cov_cols:
        positions = [numeric.index(j) for j in cov_cols]
        cov = table[:, positions]
        table = np.delete(table, positions, axis=1)
    if table.shape[1] == 0:
        raise VaelabError(f"{what} has no feature columns besides the label and covariates; add some")
    if np.all(table == np.round(table)) and np.abs(table).max() < 2**53:
        table = table.astype(np.int64)  # whole numbers: integer data (8-bit pixels get scaled)
    return _Raw(table, labels, covariates=cov)


# --- image folders -----------------------------------------------------------------------

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image_folder(folder: Path) -> _Raw:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = _image_files(folder)
    labels: list[int] | None = None
    if subfolders:
        if files:
            raise VaelabError(
                f"image folder '{folder}' has images ('{files[0].name}', ...) beside class "
                f"subfolders; move every image into its class subfolder"
            )
        names = [p.name for p in subfolders]
        numbered = all(n.isdigit() for n in names)
        ids = [int(n) for n in names] if numbered else list(range(len(names)))
        labels = []
        for sub, label in zip(subfolders, ids, strict=True):
            members = _image_files(sub)
            if not members:
                raise VaelabError(f"class folder '{sub}' has no PNG/JPEG images; add some or remove it")
            files += members
            labels += [label] * len(members)
    if not files:
        raise VaelabError(f"image folder '{folder}' has no PNG/JPEG images")

    pixels = []
    size = None
    for path in files:
        try:
            with Image.open(path) as image:
                if size is None:
                    size = image.size
                elif image.size != size:
                    raise VaelabError(
                        f"image '{path}' is {image.size[0]}x{image.size[1]} but '{files[0]}' is "
                        f"{size[0]}x{size[1]} (width x height); resize all images to one size"
                    )
                pixels.append(np.asarray(image.convert("L"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise VaelabError(
                f"image '{path}' cannot be read ({_short(err)}); remove or re-save it"
            ) from None
    class_names = tuple(names) if labels is not None and not numbered else None
    return _Raw(np.stack(pixels), None if labels is None else np.asarray(labels, dtype=np.int64), class_names=class_names)
