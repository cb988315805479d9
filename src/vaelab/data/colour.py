"""Colour images by name: ``patches`` (offline, from scikit-learn's photographs) and ``cifar10``.

``patches``: 32x32 RGB patches cut from the two photographs scikit-learn ships
(:func:`sklearn.datasets.load_sample_images`: ``china.jpg``, a temple, and ``flower.jpg``,
both 427x640), so a colour data set is at hand with no download. Train and test come from
different regions of each photo: training patches lie wholly in its left three quarters
(columns 0-479), test patches wholly in its right quarter (columns 480-639), so no test pixel
was ever seen in training. Positions are drawn uniformly with a fixed seed
(:data:`PATCH_SEED`, independent of the run's seed, like the fixed split of ``mnist5k``):
2,000 training and 500 test patches per photo, 4,000/1,000 in all; patches of one region
overlap each other. The label is the photo (0 china, 1 flower); both parts alternate between
the two photos. Pixels are 8-bit, divided by
255 like every 8-bit source.

``cifar10``: the 60,000 32x32 colour images of CIFAR-10 (Krizhevsky 2009; 50,000 training,
10,000 test, ten classes), downloaded once into the cache folder
(:func:`~vaelab.data.idx.cache_dir`) and md5-checked like ``mnist``. The *binary* version of
the archive (``cifar-10-binary.tar.gz``) is read: fixed-size records of one label byte and
3,072 pixel bytes (the red, green and blue 32x32 planes, rows in order), taken from the
archive's members in memory. The Python version of the archive is a set of pickles and is
never used: unpickling a downloaded file can run arbitrary code.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from vaelab.data.idx import cache_dir, download
from vaelab.data.splits import DataSplits, make_splits, prepare_arrays
from vaelab.errors import VaelabError

__all__ = [
    "load_patches",
    "load_cifar10",
    "read_cifar10_binary",
    "cut_patches",
    "PATCH",
    "PATCH_SEED",
    "TRAIN_COLUMNS",
    "CIFAR10_MIRRORS",
    "CIFAR10_FILE",
]

PATCH = 32  # pixels a side
PATCH_SEED = 12  # the positions of the patches: fixed, so every run sees the same set
TRAIN_COLUMNS = 480  # training patches left of this column of each photo, test patches right of it
PATCHES_PER_PHOTO = (2000, 500)  # train, test

CIFAR10_MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_FILE: tuple[str, str] = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")  # name, md5
_CIFAR_FOLDER = "cifar-10-batches-bin"
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes
_CIFAR_PER_FILE = 10_000


def cut_patches(photo: np.ndarray, n: int, columns: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``n`` patches ``[n, 3, PATCH, PATCH]`` at uniform positions lying wholly within
    ``columns`` (start, stop) of ``photo`` ``[H, W, 3]``."""
    height = photo.shape[0]
    top = rng.integers(0, height - PATCH + 1, n)
    left = rng.integers(columns[0], columns[1] - PATCH + 1, n)
    rows = top[:, None] + np.arange(PATCH)  # [n, P]
    cols = left[:, None] + np.arange(PATCH)
    patches = photo[rows[:, :, None], cols[:, None, :]]  # [n, P, P, 3]
    return patches.transpose(0, 3, 1, 2)


def load_patches(val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """The ``patches`` data set (module docstring); ``seed`` draws the validation part only."""
    try:
        from sklearn.datasets import load_sample_images  # slow import; only when asked for
    except ModuleNotFoundError:
        raise VaelabError("built-in data 'patches' needs scikit-learn (pip install scikit-learn)") from None
    sample = load_sample_images()
    photos = dict(zip((Path(f).name for f in sample.filenames), sample.images))
    rng = np.random.default_rng(PATCH_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": [], "train_labels": [], "test_labels": []}
    for label, name in enumerate(("china.jpg", "flower.jpg")):
        photo = photos[name]  # [427, 640, 3] uint8
        for part, columns, n in (("train", (0, TRAIN_COLUMNS), PATCHES_PER_PHOTO[0]),
                                 ("test", (TRAIN_COLUMNS, photo.shape[1]), PATCHES_PER_PHOTO[1])):
            parts[part].append(cut_patches(photo, n, columns, rng))
            parts[f"{part}_labels"].append(np.full(n, label, dtype=np.int64))
    def alternate(arrays: list[np.ndarray]) -> np.ndarray:  # china, flower, china, ...: pictures show both
        return np.stack(arrays, 1).reshape(-1, *arrays[0].shape[1:])

    (x, x_test), levels = prepare_arrays([alternate(parts["train"]), alternate(parts["test"])],
                                         ["patches train", "patches test"])
    return make_splits("patches", x, alternate(parts["train_labels"]), x_test=x_test,
                       test_labels=alternate(parts["test_labels"]), val_fraction=val_fraction, seed=seed,
                       discrete_levels=levels, class_names=("china", "flower"))


def read_cifar10_binary(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Train images ``[50000, 3, 32, 32]`` uint8, labels ``[50000]``, test images and labels, and
    the class names, from the binary CIFAR-10 archive (read in memory; nothing unpickled)."""
    path = Path(path)
    damaged = f"CIFAR-10 archive '{path}' is damaged"
    try:
        with tarfile.open(path, "r:gz") as archive:
            def member(name: str) -> bytes:
                try:
                    handle = archive.extractfile(f"{_CIFAR_FOLDER}/{name}")
                except KeyError:
                    handle = None
                if handle is None:
                    raise VaelabError(f"{damaged}: it has no file {_CIFAR_FOLDER}/{name}; delete it and download it again")
                with handle:
                    return handle.read()

            def records(name: str) -> tuple[np.ndarray, np.ndarray]:
                raw = member(name)
                if len(raw) != _CIFAR_PER_FILE * _RECORD:
                    raise VaelabError(f"{damaged}: {name} has {len(raw)} bytes, expected {_CIFAR_PER_FILE} records of "
                                      f"{_RECORD}; delete it and download it again")
                table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
                return table[:, 1:].reshape(-1, 3, 32, 32), table[:, 0].astype(np.int64)

            train = [records(name) for name in _CIFAR_TRAIN]
            x_test, y_test = records(_CIFAR_TEST)
            names = tuple(n.strip() for n in member("batches.meta.txt").decode("ascii", "replace").splitlines() if n.strip())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise VaelabError(f"{damaged} ({err}); delete it and download it again") from None
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train])
    if len(names) != 10 or max(int(y.max()), int(y_test.max())) > 9:
        raise VaelabError(f"{damaged}: expected ten classes; delete it and download it again")
    return x, y, x_test, y_test, names


def load_cifar10(val_fraction: float = 0.1, seed: int = 0,
                 cache: str | os.PathLike[str] | None = None) -> DataSplits:
    """CIFAR-10 (module docstring): downloaded once, md5-checked; a clear error offline."""
    file_name, md5 = CIFAR10_FILE
    path = download([m.rstrip("/") + "/" + file_name for m in CIFAR10_MIRRORS],
                    cache_dir(cache) / "cifar10" / file_name, md5)
    x, y, x_test, y_test, names = read_cifar10_binary(path)
    (x, x_test), levels = prepare_arrays([x, x_test], ["cifar10 train", "cifar10 test"])
    return make_splits("cifar10", x, y, x_test=x_test, test_labels=y_test, val_fraction=val_fraction, seed=seed,
                       discrete_levels=levels, class_names=names)
