"""Where data comes from: :func:`load_data` and the readers behind it.

``load_data(source)`` accepts

* a built-in name (:data:`~vaelab.data.builtin.BUILTIN_DATASETS`; these win over a file of
  the same name);
* a ``.npy`` file or an array / tensor in memory: one array ``[N, ...]``;
* a ``.npz`` file or a mapping: keys ``train`` and optionally ``test``, ``train_labels``,
  ``test_labels``; or a single array under any key;
* a ``.csv`` (or ``.csv.gz``) file: comma-separated numbers, one example per row. A first row
  with any non-number is a header and is skipped; a header column named ``label`` holds
  class labels;
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


def load_data(
    source: DataSource = "mnist5k",
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
) -> DataSplits:
    """Load, check and split a data set (see the module docstring for the accepted sources).

    ``val_fraction`` of the training part is held out for validation and, for sources without
    a test part, ``test_fraction`` of all examples for testing; both draws are seeded and
    stratified by label when there are labels. ``cache`` is the download folder for
    ``mnist`` and ``fashion-mnist`` (default: :func:`~vaelab.data.idx.cache_dir`). Any
    problem with the data raises a one-line :class:`~vaelab.errors.VaelabError`.

    >>> s = load_data("mnist5k")  # doctest: +SKIP
    >>> s.train.shape, s.val.shape, s.test.shape  # doctest: +SKIP
    (torch.Size([3600, 1, 28, 28]), torch.Size([400, 1, 28, 28]), torch.Size([1000, 1, 28, 28]))
    """
    if isinstance(source, str) and source.lower() in BUILTIN_DATASETS:
        return load_builtin(source.lower(), val_fraction=val_fraction, test_fraction=test_fraction,
                            seed=seed, cache=cache)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        name, raw = "array", _Raw(source)
    elif isinstance(source, Mapping):
        name, raw = "array", _from_mapping(source, "data mapping")
    elif isinstance(source, (str, os.PathLike)):
        name, raw = os.fspath(source), _read_path(Path(source))
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
    arrays, levels = prepare_arrays(arrays, what)
    return make_splits(
        name, arrays[0], raw.labels, x_test=arrays[1] if len(arrays) > 1 else None,
        test_labels=raw.test_labels, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, discrete_levels=levels,
    )


def _read_path(path: Path) -> _Raw:
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
    if path.is_dir():
        return _read_image_folder(path)
    name = path.name.lower()
    if name.endswith(".npy"):
        return _read_npy(path)
    if name.endswith(".npz"):
        return _read_npz(path)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return _read_csv(path)
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


def _read_npz(path: Path) -> _Raw:
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
    return _from_mapping(arrays, what)


def _from_mapping(arrays: Mapping[str, Any], what: str) -> _Raw:
    keys = list(arrays)
    if not keys:
        raise VaelabError(f"{what} holds no arrays; give at least the key 'train'")
    if len(keys) == 1:
        return _Raw(arrays[keys[0]])
    unknown = [k for k in keys if k not in NPZ_KEYS]
    if unknown or "train" not in keys:
        problem = (f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown
                   else "no key 'train'")
        raise VaelabError(
            f"{what} has {problem} (keys: {', '.join(map(repr, keys))}); use 'train' and "
            f"optionally 'test', 'train_labels', 'test_labels', or a single array"
        )
    if "test_labels" in keys and "test" not in keys:
        raise VaelabError(f"{what} has 'test_labels' but no 'test'; add the test array or drop the labels")
    return _Raw(arrays["train"], arrays.get("train_labels"), arrays.get("test"), arrays.get("test_labels"))


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


# --- CSV ---------------------------------------------------------------------------------

def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


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


def _explain_csv(path: Path, header: bool, *, nonfinite: bool = False) -> str:
    """Find the first bad row of a CSV file that numpy refused, and say what is wrong."""
    width = None
    for i, (line_no, cells) in enumerate(_csv_rows(path)):
        if header and i == 0:
            continue
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            return (f"line {line_no} has {len(cells)} columns, earlier lines {width}; give "
                    f"every row the same columns")
        for col, cell in enumerate(cells, start=1):
            if not _is_number(cell):
                shown = repr(cell) if cell else "an empty cell"
                return f"line {line_no}, column {col} is {shown}, not a number; fix or remove that row"
            if nonfinite and not np.isfinite(float(cell)):
                return f"line {line_no}, column {col} is {cell!r}; remove or impute NaN/inf values"
    return "it could not be parsed as numbers"


def _read_csv(path: Path) -> _Raw:
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
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, skiprows=int(header),
                           comments=None, encoding="utf-8")
    except (ValueError, OSError, EOFError, UnicodeDecodeError, zlib.error):
        raise VaelabError(f"{what}: {_explain_csv(path, header)}") from None
    if table.size == 0:
        raise VaelabError(f"{what} has a header but no data rows")
    if header and len(first) != table.shape[1]:
        raise VaelabError(
            f"{what} has {len(first)} header names but {table.shape[1]} columns of data; make them match"
        )
    if not np.isfinite(table).all():
        raise VaelabError(f"{what}: {_explain_csv(path, header, nonfinite=True)}")

    labels = None
    names = [n.lower() for n in first] if header else []
    if "label" in names:
        col = names.index("label")
        labels = table[:, col]
        table = np.delete(table, col, axis=1)
        if table.shape[1] == 0:
            raise VaelabError(f"{what} has only a 'label' column; add feature columns")
    if np.all(table == np.round(table)) and np.abs(table).max() < 2**53:
        table = table.astype(np.int64)  # whole numbers: integer data (8-bit pixels get scaled)
    return _Raw(table, labels)


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
        ids = [int(n) for n in names] if all(n.isdigit() for n in names) else list(range(len(names)))
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
    return _Raw(np.stack(pixels), None if labels is None else np.asarray(labels, dtype=np.int64))
