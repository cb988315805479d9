"""Checks of what a caller hands the library's estimators and training loop, each failing in
one line that names the argument and the fix (a :class:`~vaelab.errors.VaelabError`).

:class:`~vaelab.runs.TrainedModel` converts and checks everything it is given (any array, flat
rows or images, a label for the context). The lower-level functions take tensors as they are,
and check them here before computing: a wrong shape would otherwise broadcast silently (data
``[N, 8, 8]`` against a model of ``[1, 8, 8]`` scores every example against the whole batch),
and values outside the likelihood's support give finite but meaningless numbers (a Bernoulli
log-likelihood of 7 * x is larger than that of x). The checks read the data once, batch by
batch, so that rows left on disk (:class:`~vaelab.data.streaming.RowStore`) are read in blocks.

    >>> check_data(vae, x, c)            # x [N, *x_shape], values in the support, c [N, P]
    >>> k = check_whole(k, "k")          # a whole number >= 1
    >>> device = resolve_device("cuda")  # or a one-line error when there is no GPU
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import VaelabError

if TYPE_CHECKING:
    from .model import VAE

__all__ = ["check_data", "check_whole", "check_shape", "resolve_device", "model_device", "MAX_SEED"]

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit number

_BLOCK = 10_000  # rows per value check of data in memory (a bounded temporary for the checks)
_STORE_BLOCK = 100  # rows per value check of rows on disk (RowStore), as an evaluation batch reads them


def check_whole(value: Any, name: str, low: int = 1) -> int:
    """``value`` as an int when it is a whole number >= ``low``, else a one-line VaelabError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise VaelabError(f"{name} must be a whole number >= {low}, got {value!r}")
    if value < low:
        raise VaelabError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_shape(model: VAE, x: Any, what: str = "x", *, empty: bool = False) -> None:
    """``x`` is ``[N, *x_shape]`` for ``model`` with N >= 1 (``empty``: N >= 0; no data read):
    the shape a tensor must have before it is broadcast against the model's outputs."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise VaelabError(f"{what} must be a tensor [N, ...] of examples, got {type(x).__name__}")
    want = getattr(model.decoder, "x_shape", None)  # (a decoder outside the Likelihood contract: N only)
    if want is not None and (tuple(shape[1:]) != tuple(want) or len(shape) != len(want) + 1):
        want = tuple(want)
        size = math.prod(want)
        flat = f" or x.reshape(len(x), {', '.join(map(str, want))}) from rows of {size}" if len(want) > 1 else ""
        raise VaelabError(f"{what} has shape {tuple(shape)} but this model takes examples of shape {want}: "
                          f"give [N, {', '.join(map(str, want))}]{flat}")
    if shape[0] < 1 and not empty:
        raise VaelabError(f"{what} has no examples (shape {tuple(shape)}); give at least one row")


def check_data(model: VAE, x: Any, c: Tensor | None = None, *, what: str = "x",
               store_rows: int | None = _STORE_BLOCK, bound_only: bool = False) -> None:
    """Refuse, in one line, data that ``model`` cannot score: ``x`` not ``[N, *x_shape]``,
    NaN/inf or values outside the likelihood's support (``decoder.check``), and a context
    ``c`` that is missing, not ``[N, P]`` or holds an invalid value (a class id that is not a
    whole number of the model's classes). A missing context is the model's to refuse (the
    semi-supervised M2 sums over its label instead, and a label given to it is refused unless
    ``bound_only``: its estimates of log p(x) would become log p(x, y), where its ELBO, U(x), takes
    no label). Reads ``x`` in blocks of rows; rows on disk ``store_rows`` at a time (None: the
    store's own scan size, for a pass over a training set)."""
    check_shape(model, x, what)
    n = int(x.shape[0])
    check = getattr(model.decoder, "check", None)
    if check is not None:
        if hasattr(x, "blocks"):  # rows left on disk (a RowStore): a batch's worth at a time, as the estimators read
            for block in x.blocks(store_rows):
                check(block, what)
        else:
            for start in range(0, n, _BLOCK):
                check(x[start : start + _BLOCK], what)
    if c is None:  # a conditional model says so when it needs c (the M2 sums over its label instead)
        return
    if callable(getattr(model, "classify", None)) and not bound_only:  # the semi-supervised M2: its label is a latent
        raise VaelabError("the semi-supervised M2 model scores x with its label summed out (log p(x), its ELBO "
                          "U(x)); it takes no context or label to score: leave c/label out (a label is for "
                          "generating, and its classifier's accuracy is read from labels= in evaluate)")
    if model.context is None:
        raise VaelabError("this model is unconditional: c must be None")
    if not isinstance(c, Tensor):
        raise VaelabError(f"c must be a tensor [N, P], got {type(c).__name__}")
    model.context.check(c, n=n, what="c")


def resolve_device(name: str | torch.device) -> torch.device:
    """A device by name: ``auto`` picks CUDA when available, else the CPU; any other name must
    be available here (a one-line VaelabError otherwise)."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaelabError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VaelabError(f"device '{name}' asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VaelabError(f"device '{name}' asked for but this machine has {torch.cuda.device_count()} "
                              "CUDA GPU(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise VaelabError(f"device '{name}' asked for but MPS is not available; use --device cpu")
    return device


def model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """Where to compute: ``device`` (checked by :func:`resolve_device`), else the model's."""
    if device is None:
        return next(model.parameters()).device
    return resolve_device(device)
