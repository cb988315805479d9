"""From data to the conditioning context c: variables, per-split columns, and hidden labels.

``--condition-on label,dose`` asks for two variables: the class label (categorical) and the
covariate ``dose`` (continuous, loaded beside x, see :func:`~vaelab.data.load_data`).
:func:`context_variables` checks that the data have them and describes them as
:class:`~vaelab.context.Variable` objects (classes and their names; the training set's mean
and standard deviation); :func:`context_columns` gives c ``[N, P]`` for one split, and
:func:`split_batch` the :class:`~vaelab.context.Batch` of x and c.

Semi-supervised training keeps only some labels: :func:`known_labels` draws which, seeded and
stratified by class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from vaelab.context import LABEL, Batch, Variable
from vaelab.data.splits import DataSplits
from vaelab.errors import VaelabError

__all__ = ["context_variables", "context_columns", "split_batch", "known_labels"]


def context_variables(data: DataSplits, names: Sequence[str], embedding: int = 0) -> tuple[Variable, ...]:
    """The conditioning variables ``names`` of ``data``, checked; ``()`` for none."""
    out = []
    for name in names:
        if name == LABEL:
            out.append(_label_variable(data, embedding))
            continue
        if name not in data.covariate_names:
            raise VaelabError(f"--condition-on {name}: data '{data.name}' has no covariate '{name}' "
                              f"(covariates: {', '.join(data.covariate_names) or 'none'}; labels: use 'label')")
        assert data.train_covariates is not None
        j = data.covariate_names.index(name)
        if data.covariate_classes[j]:
            out.append(_categorical_covariate(data, name, j, embedding))
            continue
        col = data.train_covariates[:, j].double()
        std = float(col.std()) if col.numel() > 1 else 0.0
        out.append(Variable(name, "continuous", mean=float(col.mean()), std=std if std > 0 else 1.0))
    return tuple(out)


def _categorical_covariate(data: DataSplits, name: str, j: int, embedding: int) -> Variable:
    """A categorical covariate (e.g. an AnnData obs column of batches) as a categorical variable;
    a level that the validation or test split has but training never saw is refused."""
    levels = data.covariate_classes[j]
    assert data.train_covariates is not None
    seen = set(torch.unique(data.train_covariates[:, j]).long().tolist())
    for part in ("val", "test"):
        cov = getattr(data, f"{part}_covariates")
        if cov is None or not len(cov):
            continue
        unseen = sorted(set(torch.unique(cov[:, j]).long().tolist()) - seen)
        if unseen:
            level = levels[unseen[0]] if unseen[0] < len(levels) else unseen[0]
            raise VaelabError(f"--condition-on {name}: level {level!r} of '{name}' appears in the {part} split of "
                              f"'{data.name}' but never in training, so the model cannot learn it; add training "
                              "examples of it or drop those rows")
    return Variable(name, "categorical", classes=len(levels), class_names=tuple(levels), embedding=int(embedding))


def _label_variable(data: DataSplits, embedding: int) -> Variable:
    if data.train_labels is None:
        raise VaelabError(
            f"--condition-on label: data '{data.name}' has no labels; give an npz 'train_labels' array, a CSV "
            "'label' column or class subfolders of images"
        )
    for part in ("train", "val", "test"):
        y = getattr(data, f"{part}_labels")
        if y is not None and y.numel() and int(y.min()) < 0:
            i = int((y < 0).int().argmax())
            raise VaelabError(f"--condition-on label: data '{data.name}' has the negative label {int(y[i])} "
                              f"({part} split, row {i}); labels must be class ids 0, 1, 2, ...")
    train = data.train_labels
    classes = int(train.max()) + 1
    seen = set(torch.unique(train).tolist())
    names = data.class_names
    for part in ("val", "test"):
        y = getattr(data, f"{part}_labels")
        if y is None:
            continue
        unseen = sorted(set(torch.unique(y).tolist()) - seen)
        if unseen:
            shown = names[unseen[0]] if names and unseen[0] < len(names) else unseen[0]
            raise VaelabError(f"--condition-on label: class {shown!r} appears in the {part} split of '{data.name}' "
                              "but never in training, so the model cannot learn it; add training examples of it")
    if len(seen) < classes:  # a class id below the largest that training never has: labels 1..K, or sparse ids
        ordered = sorted(seen)
        gap = next((i for i, c in enumerate(ordered) if c != i), len(ordered))
        raise VaelabError(f"--condition-on label: the training labels of '{data.name}' are {len(seen)} class ids up to "
                          f"{classes - 1}, but {classes - len(seen):,} id(s) below it have no example (the first: {gap}); "
                          "the model would keep a class per id, one it cannot learn (M2 would give it a share of "
                          "p(y)): number the classes 0, 1, ..., K-1 (labels 1..K: subtract 1) or give them as names")
    class_names = tuple(names[:classes]) if names else ()
    return Variable(LABEL, "categorical", classes=classes, class_names=class_names, embedding=int(embedding))


def context_columns(data: DataSplits, variables: Sequence[Variable], part: str) -> torch.Tensor | None:
    """c ``[N, P]`` float32 of split ``part`` for ``variables`` (None when there are none)."""
    if not variables:
        return None
    x, labels, cov = data.split(part)
    cols = []
    for v in variables:
        if v.name == LABEL:
            if labels is None:
                raise VaelabError(f"data '{data.name}' has no labels for the {part} split")
            cols.append(labels.float())
        else:
            if cov is None or v.name not in data.covariate_names:
                raise VaelabError(f"data '{data.name}' has no covariate '{v.name}'")
            cols.append(cov[:, data.covariate_names.index(v.name)])
    return torch.stack(cols, 1) if cols else torch.zeros(len(x), 0)


def split_batch(data: DataSplits, part: str, variables: Sequence[Variable] = (),
                known: torch.Tensor | None = None) -> Batch:
    """The :class:`Batch` of split ``part``: x, its context and which labels are known."""
    return Batch(getattr(data, part), context_columns(data, variables, part), known)


def known_labels(labels: torch.Tensor, *, per_class: int = 0, fraction: float = 0.0, seed: int = 0,
                 class_names: Sequence[str] = ()) -> torch.Tensor:
    """Which training labels semi-supervised training may see: a bool mask ``[N]``.

    ``per_class`` labels of every class (the usual "100 labels" setting: 10 per class), or a
    ``fraction`` of every class (rounded, at least one); drawn by a seeded permutation per
    class, so the same seed keeps the same labels. Asking for more labels than a class has is
    an error naming the class.
    """
    y = labels.numpy()
    rng = np.random.default_rng([seed, 3])
    known = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = per_class if per_class > 0 else max(1, int(round(fraction * len(members))))
        if take > len(members):
            name = class_names[c] if c < len(class_names) else str(c)
            raise VaelabError(f"--labels-per-class {per_class}: class {name!r} has only {len(members)} training "
                              f"examples; ask for at most {len(members)}")
        known[members[rng.permutation(len(members))[:take]]] = True
    return torch.from_numpy(known)
