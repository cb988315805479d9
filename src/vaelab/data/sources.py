"""Where data comes from: :func:`load_data` and the readers behind it.

``load_data(source)`` accepts

* a built-in name (:data:`~vaelab.data.builtin.BUILTIN_DATASETS`; these win over a file of
  the same name);
* a ``.npy`` file or an array / tensor in memory: one array ``[N, ...]``;
* a ``.npz`` file or a mapping: keys ``train`` and optionally ``test``, ``train_labels``,
  ``test_labels``; or a single array under any key. Covariates asked for by name come from
  ``train_NAME`` (and ``test_NAME`` when there is a test part), one value per example;
* a ``.csv`` (or ``.csv.gz``) file of UTF-8 text: comma-separated numbers in ASCII digits (quoted
  or not; a file separated by semicolons or tabs is refused, naming its separator, as is a cell
  that Python's ``float()`` reads and numpy does not, ``1_000`` or ``٣``, and a byte that is not
  UTF-8, with its line), one example per row. A first row
  with any non-number is a header and is skipped; a header column named ``label`` holds
  class labels (whole numbers, or names such as ``cat``: ids in sorted name order);
  covariates asked for by name are header columns, taken out of the features;
* an ``.h5ad`` (AnnData) file, with the optional extra anndata: ``X`` or a ``layer``, its
  values kept as stored; covariates are ``obs`` columns (categorical ones become categorical
  covariates), ``stratify_by`` an ``obs`` column (:mod:`~vaelab.data.anndata`);
* a folder of PNG/JPEG images, with their channels (grey: 1, colour: 3) and all of one size,
  or resized with ``resize`` (:mod:`~vaelab.data.images`). When the folder has subfolders,
  each subfolder is a class: its name is the label if every name is a whole number, else
  labels are 0, 1, ... in sorted name order.

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

import contextlib
import csv
import warnings
import gzip
import math
import io
import itertools
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.data.builtin import BUILTIN_DATASETS, load_builtin
from vaelab.data.images import IMAGE_SUFFIXES, parse_resize, read_image_folder
from vaelab.data.paths import check_data_path
from vaelab.data.singlecell import SINGLECELL_DATASETS, load_singlecell
from vaelab.data.splits import DataSplits, make_splits, prepare_arrays
from vaelab.data.tabular import _number, first_foreign, foreign_number, not_utf8, separator_problem
from vaelab.errors import VaelabError

__all__ = ["load_data", "DataSource", "NPZ_KEYS", "IMAGE_SUFFIXES"]

DataSource = str | os.PathLike[str] | np.ndarray | torch.Tensor | Mapping[str, Any]
NPZ_KEYS = ("train", "test", "train_labels", "test_labels")
_FILE_KINDS = ".npy, .npz, .csv, .csv.gz or .h5ad file, an image folder"


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
    features: tuple[str, ...] = ()  # the feature columns' names (a CSV header, an .h5ad's genes), if the source has them


def load_data(
    source: DataSource = "mnist5k",
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    covariates: tuple[str, ...] | list[str] = (),
    counts: bool = False,
    backed: bool = False,
    tabular: bool = False,
    column_types: str = "",
    resize: str | tuple[int, int] | None = None,
    layer: str | None = None,
    stratify_by: str | None = None,
) -> DataSplits:
    """Load, check and split a data set (see the module docstring for the accepted sources).

    ``val_fraction`` of the training part is held out for validation and, for sources without
    a test part, ``test_fraction`` of all examples for testing; both draws are seeded and
    stratified by label when there are labels. ``cache`` is the download folder for
    ``mnist`` and ``fashion-mnist`` (default: :func:`~vaelab.data.idx.cache_dir`).
    ``covariates`` names continuous covariates to read beside x (CSV columns, npz arrays
    ``train_NAME``/``test_NAME``); they are split with the examples. ``counts=True`` keeps
    integer data as counts (no 8-bit scaling; negative or fractional values are errors; kind
    ``"counts"``), for the count likelihoods. ``backed=True`` leaves the examples of a ``.npy``
    or ``.h5ad`` file on disk (the parts are :class:`~vaelab.data.streaming.RowStore` objects,
    read on demand); without it such a file too large for memory is refused before loading.
    ``tabular=True`` reads a CSV as a mixed-type table for the mixed likelihood (kind
    ``"mixed"``, missing cells kept as NaN; ``column_types`` overrides its automatic column
    types, see :mod:`vaelab.data.tabular`). ``resize`` (``"HxW"`` or ``(H, W)``) resizes the
    images of an image folder to one size (for any other source it is an error).
    ``layer`` reads that layer of an ``.h5ad`` file instead of ``X``; ``stratify_by`` names an
    ``obs`` column of an ``.h5ad`` file (or of ``pbmc68k``) to stratify the test and validation
    draws by (see :mod:`vaelab.data.anndata`).
    Any problem with the data raises a one-line :class:`~vaelab.errors.VaelabError`.

    >>> s = load_data("mnist5k")  # doctest: +SKIP
    >>> s.train.shape, s.val.shape, s.test.shape  # doctest: +SKIP
    (torch.Size([3600, 1, 28, 28]), torch.Size([400, 1, 28, 28]), torch.Size([1000, 1, 28, 28]))
    """
    covariates = tuple(covariates)
    if isinstance(source, (str, os.PathLike)) and not (
            isinstance(source, str) and source.lower() in BUILTIN_DATASETS):
        check_data_path(source)  # empty, a link loop, a FIFO or a device: refused before any reader opens it
    size = _resize_for(source, resize)
    _h5ad_only(source, layer, stratify_by)
    if tabular:  # a mixed-type table: a type per column, missing cells kept
        from vaelab.data.tabular import load_table

        if backed:
            raise VaelabError("a mixed-type table (--likelihood mixed) is read into memory; leave out --backed")
        return load_table(source, column_types=column_types, val_fraction=val_fraction, test_fraction=test_fraction,
                          seed=seed, covariates=covariates)
    if backed:  # the examples stay on disk
        from vaelab.data.streaming import load_backed

        return load_backed(source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                           covariates=covariates, counts=counts, layer=layer, stratify_by=stratify_by)
    if isinstance(source, str) and source.lower() in SINGLECELL_DATASETS:  # counts with obs columns
        return load_singlecell(source.lower(), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                               cache=cache, covariates=covariates, stratify_by=stratify_by, layer=layer)
    if isinstance(source, str) and source.lower() in BUILTIN_DATASETS:
        return load_builtin(source.lower(), val_fraction=val_fraction, test_fraction=test_fraction,
                            seed=seed, cache=cache, covariates=covariates, counts=counts)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if covariates:
            raise VaelabError(f"a bare array has no covariates ({', '.join(covariates)}); pass a mapping "
                              "with 'train' and 'train_NAME' arrays")
        name, raw = "array", _Raw(source)
    elif isinstance(source, Mapping):
        name, raw = "array", _from_mapping(source, "data mapping", covariates)
    elif isinstance(source, (str, os.PathLike)):
        from vaelab.data.disk import check_in_memory

        check_in_memory(source, layer or None)  # a file too large for memory: refused before loading (add --backed)
        name, raw = os.fspath(source), _read_path(Path(source), covariates, size, layer=layer, stratify_by=stratify_by)
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
    splits = make_splits(
        name, arrays[0], labels, x_test=arrays[1] if len(arrays) > 1 else None,
        test_labels=test_labels, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, discrete_levels=levels, covariates=raw.covariates, test_covariates=raw.test_covariates,
        covariate_names=covariates, class_names=class_names, covariate_classes=raw.covariate_classes,
        strata=raw.strata, counts=counts,
    )
    return dataclasses.replace(splits, feature_names=raw.features) if raw.features else splits


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


def _resize_for(source: Any, resize: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``resize`` parsed, or a one-line error when it is malformed or the source is no image folder."""
    size = parse_resize(resize)
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    builtin = isinstance(source, str) and source.lower() in BUILTIN_DATASETS
    if size is not None and (path is None or builtin or (path.exists() and not path.is_dir())):  # missing: said later
        shown = f"'{os.fspath(source)}'" if isinstance(source, (str, os.PathLike)) else f"a {type(source).__name__}"
        raise VaelabError(f"--resize {size[0]}x{size[1]} resizes the images of an image folder, and the data {shown} "
                          "are not one; leave out --resize")
    return size


def _h5ad_only(source: Any, layer: str | None, stratify_by: str | None) -> None:
    """``layer`` and ``stratify_by`` read an ``.h5ad`` file (``stratify_by`` also the obs of a
    single-cell built-in set); for any other source they are an error."""
    text = source.lower() if isinstance(source, str) else os.fspath(source).lower() if isinstance(source, os.PathLike) else ""
    if text.endswith(".h5ad") or text in SINGLECELL_DATASETS:
        return
    for flag, value in (("--layer", layer), ("--stratify-by", stratify_by)):
        if value:
            raise VaelabError(f"{flag} {value}: it names {'a layer' if flag == '--layer' else 'an obs column'} of an "
                              ".h5ad file, and this data is not one; leave it out (labelled data are stratified by label)")


def _read_h5ad(path: Path, covariates: tuple[str, ...], layer: str | None, stratify_by: str | None) -> _Raw:
    from vaelab.data.anndata import read_h5ad  # anndata (an extra) only when an .h5ad is read

    d = read_h5ad(path, layer=layer, covariates=covariates, stratify_by=stratify_by)
    return _Raw(d.x, covariates=d.covariates, covariate_classes=d.covariate_classes, strata=d.strata,
                features=tuple(str(g) for g in d.genes))


def _read_path(path: Path, covariates: tuple[str, ...] = (), resize: tuple[int, int] | None = None, *,
               layer: str | None = None, stratify_by: str | None = None) -> _Raw:
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
    if covariates and not (name.endswith(".npz") or name.endswith(".csv") or name.endswith(".csv.gz")
                           or name.endswith(".h5ad")):
        raise VaelabError(f"data '{path}' cannot hold covariates ({', '.join(covariates)}); put them in CSV "
                          "columns or npz arrays train_NAME/test_NAME, or condition on the label only")
    if path.is_dir():  # an image folder: vaelab.data.images
        folder = read_image_folder(path, resize)
        return _Raw(folder.x, folder.labels, class_names=folder.class_names)
    if name.endswith(".h5ad"):
        return _read_h5ad(path, covariates, layer, stratify_by)
    if name.endswith(".npy"):
        return _read_npy(path)
    if name.endswith(".npz"):
        return _read_npz(path, covariates)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return _read_csv(path, covariates)
    raise VaelabError(f"data file '{path}' has an unsupported type; pass a {_FILE_KINDS}")


# --- numpy files -------------------------------------------------------------------------

_NUMPY_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error)


def _no_memory(what: str, fix: str) -> VaelabError:
    return VaelabError(f"{what} does not fit in memory (its arrays could not be allocated); {fix}")


def _read_npy(path: Path) -> _Raw:
    from vaelab.data.disk import npy_header

    what = f"data file '{path}'"
    try:
        with open(path, "rb") as f:  # our own handle: numpy leaks its own on some errors
            if f.read(6) == b"\x93NUMPY":  # the header first: numpy allocates what it declares before reading
                f.seek(0)
                npy_header(f, what, os.fstat(f.fileno()).st_size)  # negative dimensions, cut short
            f.seek(0)
            x = np.load(f, allow_pickle=False)
            if not isinstance(x, np.ndarray):  # an .npz under a .npy name
                x.close()
                x = None
    except VaelabError:
        raise
    except MemoryError:
        raise _no_memory(what, "add --backed true to read it from disk in batches") from None
    except _NUMPY_ERRORS as err:
        raise VaelabError(
            f"data file '{path}' is not a readable .npy file ({_short(err)}); save it again "
            f"with numpy.save"
        ) from None
    if x is None:
        raise VaelabError(f"data file '{path}' is an .npz archive; rename it to .npz")
    return _Raw(x)


_NPZ_FIX = "save the training array with numpy.save and add --backed true to read it from disk in batches"


def _check_npz_members(path: Path, what: str) -> None:
    """Each member's declared size (``ZipInfo.file_size``) and each ``.npy`` member's header,
    read before numpy loads (and allocates) anything: a header with a negative dimension or
    declaring more values than its member holds is a damaged file, and the declared sizes
    together must fit in memory (a small archive can inflate to gigabytes)."""
    from vaelab.data.disk import check_fits, npy_header

    stored, values = 0.0, 0
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
        for info in members:
            stored += info.file_size
            with z.open(info) as m:
                if m.read(6) != b"\x93NUMPY":
                    continue
                m.seek(0)
                shape = npy_header(m, f"{what} (array '{info.filename.removesuffix('.npy')}')", info.file_size)[0]
                values += int(np.prod(shape, dtype=object))
    check_fits(path, stored + 2 * 4.0 * values, f"{len(members)} array(s) of {values:,} values in all", _NPZ_FIX)


def _read_npz(path: Path, covariates: tuple[str, ...] = ()) -> _Raw:
    what = f"data file '{path}'"
    try:
        with open(path, "rb") as f:  # our own handle: numpy leaks its own on some errors
            if f.read(4) == b"PK\x03\x04":  # a zip archive (as numpy tells): its members' sizes first
                _check_npz_members(path, what)
            f.seek(0)
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                arrays = None
            else:
                with loaded:
                    arrays = {key: loaded[key] for key in loaded.files}
    except VaelabError:
        raise
    except MemoryError:
        raise _no_memory(what, _NPZ_FIX) from None
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
        if keys[0] in NPZ_KEYS and keys[0] != "train":  # only 'test': not silently the training set
            raise VaelabError(f"{what} holds only '{keys[0]}' and no 'train'; add the training array 'train' (a file of "
                              "one array under another name is read as the training data)")
        return _Raw(arrays[keys[0]])
    extra = {f"{p}_{n}" for n in covariates for p in ("train", "test")}
    unknown = [k for k in keys if k not in NPZ_KEYS and k not in extra]
    if unknown or "train" not in keys:
        problem = (f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown
                   else "no key 'train'")
        named = sorted({k.split("_", 1)[1] for k in unknown if k.startswith(("train_", "test_"))})
        hint = (f"; covariate arrays are read with --condition-on {','.join(named)}"
                if named and len(named) == len({k.split('_', 1)[1] for k in unknown}) else "")
        raise VaelabError(
            f"{what} has {problem} (keys: {', '.join(map(repr, keys))}); use 'train' and "
            f"optionally 'test', 'train_labels', 'test_labels', or a single array{hint}"
        )
    if "test_labels" in keys and "test" not in keys:
        raise VaelabError(f"{what} has 'test_labels' but no 'test'; add the test array or drop the labels")
    for key in keys:  # a single number where examples belong: len() of it is a TypeError
        if np.ndim(arrays[key]) == 0:
            raise VaelabError(f"{what}: its array '{key}' is a single number (shape ()), not one entry per example; "
                              f"save '{key}' as an array [N, ...] (or leave it out)")
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


CSV_BYTES_PER_NUMBER = 16  # bytes loading a CSV takes per number, at least (measured: 20 on 20,000 x 200 numbers)
# A .csv.gz whose text is more than GZ_MAX_RATIO times the compressed bytes read, once past GZ_RATIO_FROM bytes of
# text, is refused. Measured with gzip -9: tables of whole numbers 4 to 1 dense, 12 at 90 % zeros, 70 at 99 %, 320 at
# 99.9 %; "0,0,...": 480 to 1 in lines of 512 numbers, 1,030 (deflate's limit) in one line.
GZ_MAX_RATIO = 400
GZ_RATIO_FROM = 2**28


def check_text_fits(path: Path, what: str, *, per_number: int = CSV_BYTES_PER_NUMBER, fix: str | None = None) -> None:
    """Refuse a CSV file whose loading cannot fit in the memory a data file may take
    (:func:`~vaelab.data.disk.data_memory`: the ``VAELAB_MEMORY_LIMIT`` cap, else the memory
    available), before any of it is parsed: its text alone, or its numbers (commas and line
    ends counted, a block at a time) at ``per_number`` bytes each once read. A ``.gz`` one is
    decompressed a block at a time, counting, and refused as soon as it passes either (a small
    archive can inflate to gigabytes); one whose text passes :data:`GZ_RATIO_FROM` bytes at more
    than :data:`GZ_MAX_RATIO` times the compressed bytes read is refused there too, whatever
    the memory (a decompression bomb: deflate's limit is about 1,030 to 1; on a machine of
    a terabyte the memory rule alone would inflate hundreds of gigabytes first)."""
    from vaelab.data.disk import data_memory
    from vaelab.evaluation.memory import format_bytes

    room = data_memory()
    limit, where = room if room is not None else (math.inf, "")
    fix = fix or "use a smaller file, or save the numbers with numpy.save and add --backed true to read them from disk"
    gz = path.name.lower().endswith(".gz")
    if not gz:
        size = path.stat().st_size
        if size > limit:
            raise VaelabError(f"{what} holds {format_bytes(size)} of text: loading it needs more than {where}; {fix}")
        if per_number * (size + 1) <= limit:  # even a number per byte would fit: no pass over the file
            return
    text = numbers = 0
    try:
        with open(path, "rb") as raw, (gzip.GzipFile(fileobj=raw, mode="rb") if gz
                                       else contextlib.nullcontext(raw)) as f:
            while block := f.read(2**20):
                text += len(block)
                numbers += block.count(b",") + block.count(b"\n")
                if gz and text > limit:
                    raise VaelabError(f"{what} decompresses to more than {format_bytes(limit)} of text (stopped "
                                      f"there): loading it needs more than {where}; {fix}")
                if per_number * numbers > limit:
                    stopped = (f"decompresses to {format_bytes(text)} of text holding {numbers:,} numbers or more "
                               "(stopped there)" if gz else f"holds {numbers:,} numbers or more")
                    raise VaelabError(f"{what} {stopped}: loading them needs at least "
                                      f"{format_bytes(per_number * numbers)} ({per_number} bytes a number), more than "
                                      f"{where}; {fix}")
                if gz and text > GZ_RATIO_FROM and text > GZ_MAX_RATIO * raw.tell():
                    raise VaelabError(f"{what} decompresses to more than {GZ_MAX_RATIO} times its compressed size "
                                      f"({format_bytes(text)} of text from {format_bytes(raw.tell())}, stopped there): "
                                      "a decompression bomb, or a table of almost nothing but one repeated value; "
                                      f"if it is data, decompress it (gunzip -k '{path}') and pass the .csv file")
    except (OSError, EOFError, zlib.error):
        return  # a damaged archive: the reader names it


def _is_number(cell: str) -> bool:
    """Whether numpy's CSV reader reads the cell as a number (not '1_000' nor '٣', which
    Python's float() reads: :func:`~vaelab.data.tabular.foreign_number`)."""
    return _number(cell) is not None


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
            foreign = foreign_number(cell)
            if foreign:
                return f"line {line_no}, column {col} is {cell!r}, {foreign}"
            if col - 1 in names and (not cell or (nonfinite and not finite)):
                return (f"covariate column '{names[col - 1]}' has a missing value ({cell or 'an empty cell'}) at line "
                        f"{line_no}; fill it in or drop that row")
            if not _is_number(cell):
                shown = repr(cell) if cell else "an empty cell"
                return f"line {line_no}, column {col} is {shown}, not a number; fix or remove that row"
            if nonfinite and not finite:
                return f"line {line_no}, column {col} is {cell!r}; remove or impute NaN/inf values"
    return "it could not be parsed as numbers"


def _refuse_foreign_label(path: Path, what: str, labels: np.ndarray, header: bool, column: int) -> None:
    """Refuse a label such as '1_000' or '٣' (a number to Python's float(), not to numpy),
    naming its line: read as a number or as a class name, it would be wrong either way."""
    found = first_foreign(labels.tolist())
    if found is None:
        return
    row, how = found
    lines = (n for n, _ in itertools.islice(_csv_rows(path), int(header), None))
    line = next(itertools.islice(lines, row, None), None)
    at = f"line {line}" if line is not None else f"data row {row + 1}"
    raise VaelabError(f"{what}: {at}, column {column + 1} ('label') is {str(labels[row])!r}, {how}")


def _read_csv(path: Path, covariates: tuple[str, ...] = ()) -> _Raw:
    what = f"data file '{path}'"
    check_text_fits(path, what)  # before a line is parsed
    try:
        with _open_text(path) as f:
            top = [[cell.strip() for cell in row] for row in itertools.islice(
                (row for row in csv.reader(f) if any(c.strip() for c in row)), 2)]
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as err:
        raise not_utf8(path, what, err) from None
    if not top:
        raise VaelabError(f"{what} is empty; put one example per row, numbers separated by commas")
    problem = separator_problem(what, path, top)
    if problem:
        raise VaelabError(problem)
    first = top[0]
    foreign = first_foreign(first)
    if foreign is not None and all(_is_number(c) or foreign_number(c) for c in first):  # data, not a header
        raise VaelabError(f"{what}: line 1, column {foreign[0] + 1} is {first[foreign[0]]!r}, {foreign[1]}")
    header = not all(_is_number(cell) for cell in first)
    lowered = [n.lower() for n in first] if header else []
    twice = sorted({n for n in first if first.count(n) > 1}) if header else []
    if twice:  # features are matched to a run's by name later: two columns of one name cannot be
        raise VaelabError(f"{what}: column name(s) {', '.join(map(repr, twice))} appear more than once in the header; "
                          "give every column its own name")
    label_col = lowered.index("label") if "label" in lowered else None
    cov_cols: dict[int, str] = {}
    for name in covariates:
        if not header or name not in first:
            columns = f"columns: {', '.join(first)}" if header else "it has no header row naming its columns"
            raise VaelabError(f"--condition-on {name}: {what} has no column '{name}' ({columns})")
        cov_cols[first.index(name)] = name
    text_columns = () if label_col is None else (label_col,)
    numeric = [j for j in range(len(first)) if j not in text_columns]
    if not [j for j in numeric if j not in cov_cols]:
        raise VaelabError(f"{what} has no feature columns besides the label and covariates ({', '.join(first)}); "
                          "add the columns to model")
    try:
        with warnings.catch_warnings():  # a header without rows: said below, not as numpy's warning
            warnings.filterwarnings("ignore", message=".*input contained no data", category=UserWarning)
            # quotechar: a quoted cell ("1.0") is its text, as csv.reader reads it above and the mixed table does
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, skiprows=int(header),
                               comments=None, encoding="utf-8-sig", usecols=numeric if text_columns else None,
                               quotechar='"')
            labels = None if label_col is None else np.loadtxt(
                path, delimiter=",", dtype=str, ndmin=1, skiprows=1, comments=None, encoding="utf-8-sig",
                usecols=[label_col], quotechar='"')
    except MemoryError:
        raise _no_memory(what, "use a smaller file, or save the numbers with numpy.save and add --backed true") from None
    except UnicodeDecodeError as err:  # a ValueError: before the explanation, which would read the text again
        raise not_utf8(path, what, err) from None
    except (ValueError, OSError, EOFError, zlib.error):
        try:
            explained = _explain_csv(path, header, text_columns=text_columns, names=cov_cols)
        except (UnicodeDecodeError, csv.Error) as err:
            raise not_utf8(path, what, err) from None
        raise VaelabError(f"{what}: {explained}") from None
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
        _refuse_foreign_label(path, what, labels, header, label_col)
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
    features = tuple(first[j] for j in numeric if j not in cov_cols) if header else ()
    return _Raw(table, labels, covariates=cov, features=features)
