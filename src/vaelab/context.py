"""The conditioning context c: what a conditional model knows besides x.

A model may condition on class labels and continuous covariates (digit class, batch,
donor, dose). They travel through vaelab as one float tensor ``c`` of shape ``[B, P]``, one
column per :class:`Variable` in the order declared: a categorical column holds class ids
0..classes-1 (as floats), a continuous column the raw value. The model's
:class:`ContextEncoder` turns it into the feature vector ``h(c)`` ``[B, context_dim]`` that
encoder, decoder and prior read:

* categorical: one-hot (``embedding=0``) or a learned embedding of ``embedding`` numbers;
* continuous: standardised with the training set's mean and standard deviation (kept in the
  model spec, so a loaded model standardises new values the same way).

The unconditional model is the case ``c = None``: no variables, ``context_dim = 0``.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import VaelabError

__all__ = ["Variable", "ContextEncoder", "Batch", "as_batch", "LABEL"]

LABEL = "label"  # the name of the class label among the variables


def _whole(text: str) -> bool:
    """Whether a class name reads as a whole number ("7", "-1")."""
    return re.fullmatch(r"-?[0-9]+", text.strip()) is not None


@dataclass(frozen=True)
class Variable:
    """One conditioning variable.

    Args:
        name: ``"label"`` for the class label, else a covariate's column or array name.
        kind: ``"categorical"`` or ``"continuous"``.
        classes: number of classes (categorical).
        class_names: the name of each class id, when the data named them (e.g. CSV strings
            or image subfolders); else the ids themselves.
        embedding: 0 for one-hot, else the size of a learned embedding (categorical).
        mean, std: the training set's mean and standard deviation (continuous).
    """

    name: str
    kind: str
    classes: int = 0
    class_names: tuple[str, ...] = ()
    embedding: int = 0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "continuous"):
            raise VaelabError(f"conditioning variable {self.name!r}: kind must be categorical or continuous, got {self.kind!r}")
        if self.kind == "categorical" and self.classes < 1:
            raise VaelabError(f"conditioning variable {self.name!r}: needs at least one class, got {self.classes}")
        if self.kind == "continuous" and not (math.isfinite(self.std) and self.std > 0 and math.isfinite(self.mean)):
            raise VaelabError(f"conditioning variable {self.name!r}: needs a finite mean and a std > 0, got {self.mean}, {self.std}")
        if self.embedding < 0:
            raise VaelabError(f"conditioning variable {self.name!r}: embedding must be >= 0, got {self.embedding}")

    @property
    def width(self) -> int:
        """Numbers this variable contributes to h(c)."""
        if self.kind == "continuous":
            return 1
        return self.embedding or self.classes

    def names(self) -> tuple[str, ...]:
        return self.class_names or tuple(str(i) for i in range(self.classes))

    def class_id(self, value: Any) -> int:
        """The id of a class given by name or by id (an integer, or its digits as text, as
        ``--label 1`` gives it), or a VaelabError listing the classes. A name wins over an
        id that reads the same."""
        names = self.names()
        text = str(value).strip()
        if isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool):
            if text in names:
                return names.index(text)
            if isinstance(value, numbers.Integral) or text.isdigit():
                i = int(text)
                if 0 <= i < self.classes:
                    return i
        ids = f" (or their ids 0..{self.classes - 1})" if self.class_names else ""
        raise VaelabError(
            f"class {text!r} is not one this model was trained on; choose one of: {', '.join(names)}{ids}"
        )

    def ids_from(self, ids: Any, names: Sequence[str] | None, source: str) -> np.ndarray:
        """This variable's class ids for values ``ids`` ``[N]`` that another data source numbered
        by its own ``names`` (a file's label strings or class subfolders, sorted within that
        file alone), matched by name; a name this model never saw is a one-line VaelabError
        listing its classes.

        Without ``names`` (numeric labels) the values are this model's ids 0..classes-1, as
        ``--label 1`` reads them, unless the model's class names are themselves whole numbers
        (subfolders ``1/ 2/ 3/``, string labels ``"7"``): then a value is matched as that name.
        """
        values = np.asarray(ids).reshape(-1)
        mine = self.names()
        kind = "classes" if self.name == LABEL else "levels"

        def said(value: Any) -> str:
            return f"label {value}" if self.name == LABEL else f"level {value} of '{self.name}'"

        if not self.class_names:
            listed = f"the ids 0..{self.classes - 1}"
        elif names:
            listed = ", ".join(mine)
        else:
            listed = f"ids 0..{self.classes - 1}: {', '.join(mine)}"
        if not names:
            off = ~np.isfinite(values) | (values != np.round(values))
            if off.any():
                raise VaelabError(f"'{source}': {said(format(values[int(off.argmax())], 'g'))} is not a whole id (this "
                                  f"model's {kind}: {listed}); give ids or names")
            if any(_whole(n) for n in self.class_names):  # numbers read as the model's numeric class names
                found = np.unique(values)
                names = [str(int(v)) for v in found]
                values = np.searchsorted(found, values)
        if names:
            at = {n: i for i, n in enumerate(mine)}
            used = np.unique(values).astype(np.int64)
            unknown = [str(names[i]) for i in used if str(names[i]) not in at]
            if unknown and not self.class_names:
                raise VaelabError(f"'{source}': {said(repr(unknown[0]))} is a name, but this model was trained on "
                                  f"numbered {kind} (ids 0..{self.classes - 1}), not names; give them as those ids")
            if unknown:
                raise VaelabError(f"'{source}': {said(repr(unknown[0]))} is not one this model was trained on (its "
                                  f"{kind}: {listed}); give only rows of those {kind}, named as in training")
            table = np.asarray([at.get(str(n), -1) for n in names], dtype=np.int64)
            return table[values.astype(np.int64)]
        off = (values < 0) | (values >= self.classes)
        if off.any():
            raise VaelabError(f"'{source}': {said(format(values[int(off.argmax())], 'g'))} is not one this model was "
                              f"trained on (its {kind}: {listed}); give only rows of those {kind}")
        return values.astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out.update(classes=self.classes, class_names=list(self.class_names), embedding=self.embedding)
        else:
            out.update(mean=self.mean, std=self.std)
        return out

    @classmethod
    def from_dict(cls, d: Any, source: str = "model spec") -> "Variable":
        if not isinstance(d, dict):
            raise VaelabError(f"{source}: a conditioning variable must be an object, got {d!r}")
        allowed = {"name", "kind", "classes", "class_names", "embedding", "mean", "std"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise VaelabError(f"{source}: unknown key(s) {', '.join(unknown)} in a conditioning variable")
        try:
            return cls(name=str(d["name"]), kind=str(d["kind"]), classes=int(d.get("classes", 0)),
                       class_names=tuple(str(n) for n in d.get("class_names", ())),
                       embedding=int(d.get("embedding", 0)), mean=float(d.get("mean", 0.0)),
                       std=float(d.get("std", 1.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise VaelabError(f"{source}: bad conditioning variable {d!r} ({err})") from None


class ContextEncoder(nn.Module):
    """c ``[B, P]`` (one column per variable) -> h(c) ``[B, context_dim]``.

    Example:
        >>> ctx = ContextEncoder([Variable("label", "categorical", classes=10)])
        >>> ctx(torch.tensor([[3.0], [7.0]])).shape        # one-hot: [2, 10]
    """

    def __init__(self, variables: Sequence[Variable]) -> None:
        super().__init__()
        self.variables = tuple(variables)
        if not self.variables:
            raise VaelabError("a context needs at least one variable; use c = None for an unconditional model")
        seen = [v.name for v in self.variables]
        if len(set(seen)) != len(seen):
            raise VaelabError(f"conditioning variables must have distinct names, got {seen}")
        self.embeddings = nn.ModuleDict({
            v.name: nn.Embedding(v.classes, v.embedding) for v in self.variables
            if v.kind == "categorical" and v.embedding > 0
        })
        cont = [(v.mean, v.std) for v in self.variables if v.kind == "continuous"]
        self.register_buffer("mean", torch.tensor([m for m, _ in cont], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor([s for _, s in cont], dtype=torch.float32), persistent=False)

    @property
    def width(self) -> int:
        """P, the columns of c."""
        return len(self.variables)

    @property
    def context_dim(self) -> int:
        """The size of h(c)."""
        return sum(v.width for v in self.variables)

    def variable(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise VaelabError(f"this model has no conditioning variable {name!r} (it has: {', '.join(v.name for v in self.variables)})")

    def check(self, c: Tensor, n: int | None = None, what: str = "c") -> None:
        """Raise a one-line VaelabError unless c is ``[n, P]`` with valid values in every column."""
        names = ", ".join(v.name for v in self.variables)
        if c.ndim != 2 or c.shape[1] != self.width or (n is not None and c.shape[0] != n):
            rows = "N" if n is None else str(n)
            raise VaelabError(f"{what} has shape {tuple(c.shape)}; this model needs [{rows}, {self.width}] "
                              f"(one column per conditioning variable: {names})")
        for j, v in enumerate(self.variables):
            col = c[:, j]
            bad = ~torch.isfinite(col)
            if bad.any():
                raise VaelabError(f"{what}: {v.name} is NaN/inf at row {int(bad.int().argmax())}; every example needs a value")
            if v.kind == "categorical":
                off = (col != torch.round(col)) | (col < 0) | (col >= v.classes)
                if off.any():
                    i = int(off.int().argmax())
                    raise VaelabError(f"{what}: {v.name} {float(col[i]):g} at row {i} is not a class of this model "
                                      f"(ids 0..{v.classes - 1}: {', '.join(v.names())})")

    def forward(self, c: Tensor) -> Tensor:
        if c.ndim != 2 or c.shape[-1] != self.width:
            raise VaelabError(f"c has shape {tuple(c.shape)}; this model needs [B, {self.width}] "
                              f"(columns: {', '.join(v.name for v in self.variables)})")
        parts: list[Tensor] = []
        k = 0
        for j, v in enumerate(self.variables):
            col = c[:, j]
            if v.kind == "continuous":
                parts.append(((col - self.mean[k]) / self.std[k]).unsqueeze(-1).to(c.dtype))
                k += 1
            elif v.embedding > 0:
                parts.append(self.embeddings[v.name](col.long()).to(c.dtype))
            else:
                parts.append(nn.functional.one_hot(col.long(), v.classes).to(c.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # [B, context_dim]

    def extra_repr(self) -> str:
        return ", ".join(f"{v.name}: {v.kind}" + (f"({v.classes})" if v.classes else "") for v in self.variables)


@dataclass
class Batch:
    """What every step of training and evaluation reads: x, its context c, and which labels are known.

    ``x`` ``[B, *x_shape]``; ``c`` ``[B, P]`` (one column per conditioning variable, see
    :class:`ContextEncoder`) or ``None`` for an unconditional model; ``known`` ``[B]`` bool
    marks the examples whose label is observed (semi-supervised training), ``None`` when all
    are (or none is needed). Slicing and indexing keep the three aligned.
    """

    x: Tensor
    c: Tensor | None = None
    known: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for name, t in (("c", self.c), ("known", self.known)):
            if t is not None and t.shape[0] != n:
                raise VaelabError(f"batch: {name} has {t.shape[0]} rows but x has {n}; give one row per example")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: Any) -> "Batch":
        return Batch(self.x[index], None if self.c is None else self.c[index],
                     None if self.known is None else self.known[index])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.x.to(device), None if self.c is None else self.c.to(device),
                     None if self.known is None else self.known.to(device))


def as_batch(x: "Tensor | Batch", c: Tensor | None = None) -> Batch:
    """A :class:`Batch` from a batch or from x and c."""
    if isinstance(x, Batch):
        if c is not None:
            raise ValueError("give c inside the Batch or beside a tensor x, not both")
        return x
    return Batch(x, c)
