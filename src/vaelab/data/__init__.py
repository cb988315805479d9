"""Data for vaelab: built-in sets, files and arrays, turned into checked, split tensors.

>>> from vaelab.data import load_data
>>> splits = load_data("mnist5k")  # doctest: +SKIP
>>> splits.train.shape, splits.kind, splits.discrete_levels  # doctest: +SKIP
(torch.Size([3600, 1, 28, 28]), 'unit', 256)

Modules: :mod:`~vaelab.data.splits` (the :class:`DataSplits` container, checks, splitting,
:func:`binarize`, :class:`Binarizer`), :mod:`~vaelab.data.sources` (:func:`load_data`: arrays, files, image
folders), :mod:`~vaelab.data.builtin` (data sets by name), :mod:`~vaelab.data.idx` (IDX files,
checked downloads, the cache folder), :mod:`~vaelab.data.conditioning` (the conditioning
context c of each split, hidden labels for semi-supervised training).
"""

from vaelab.data.builtin import BUILTIN_DATASETS
from vaelab.data.conditioning import context_columns, context_variables, known_labels, split_batch
from vaelab.data.idx import cache_dir, download, read_idx, write_idx
from vaelab.data.sources import load_data
from vaelab.data.splits import Binarizer, DataSplits, binarize, validate_data

__all__ = [
    "DataSplits",
    "load_data",
    "binarize",
    "Binarizer",
    "BUILTIN_DATASETS",
    "read_idx",
    "write_idx",
    "download",
    "cache_dir",
    "validate_data",
    "context_variables",
    "context_columns",
    "split_batch",
    "known_labels",
]
