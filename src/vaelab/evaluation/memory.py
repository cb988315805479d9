"""Will an evaluation fit in memory? Measure one small pass, scale it, compare with what is free.

The bytes a forward-and-backward pass keeps (the tensors autograd saves, plus the outputs)
grow linearly with the rows scored together (examples x samples, or examples x chains), so
a probe of a few rows, counted with ``torch.autograd.graph.saved_tensors_hooks``, predicts a
pass of any size. The free memory is the device's (``torch.cuda.mem_get_info``) or, on CPU,
``MemAvailable`` of ``/proc/meminfo`` (elsewhere the check is skipped).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import VaelabError

__all__ = ["bytes_per_row", "free_bytes", "check_fits", "memory_limit", "check_bytes", "parameter_count",
           "check_model_fits", "check_rows_fit", "check_evaluation_fits", "format_bytes", "MEMORY_LIMIT_ENV", "TRAINING_FACTOR"]

PROBE_ROWS = 8
HEADROOM = 3.0  # peak / saved tensors: outputs, gradients, the leapfrog's copies, the allocator
SHARE = 0.8  # of the free memory an evaluation may plan to use


def bytes_per_row(model: torch.nn.Module, x: Tensor, c: Tensor | None = None) -> float:
    """Bytes one row (one latent sample of one example) of a scoring pass holds, measured on
    ``PROBE_ROWS`` samples of the first example of ``x`` ``[>=1, *x_shape]``."""
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    x1, c1 = x[:1], None if c is None else c[:1]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        prior = model.prior_distribution(c1)
        dtype = next(model.parameters()).dtype
        # zeros, not draws: the probe leaves the random number generator as it was
        z = torch.zeros(PROBE_ROWS, 1, *prior.event_shape, dtype=dtype, device=x.device, requires_grad=True)  # [R, 1, D]
        out = model.decode(z, c1).log_prob(x1)  # [R, 1]
    x_bytes = x1.numel() * x1.element_size() * 4  # the decoder's parameters of x: a few copies per row
    return saved[0] / PROBE_ROWS + x_bytes + out.element_size()


def free_bytes(device: torch.device) -> float | None:
    """Free memory on ``device`` in bytes, or None when it cannot be known."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return None


def check_fits(model: torch.nn.Module, x: Tensor, c: Tensor | None, rows: int, *, what: str, fix: str) -> float:
    """Estimated peak bytes of a pass of ``rows`` rows; a one-line VaelabError when it exceeds
    the share of free memory an evaluation may use (``what`` names the pass, ``fix`` the remedy)."""
    need = bytes_per_row(model, x, c) * rows * HEADROOM
    device = x.device
    free = free_bytes(device)
    if free is not None and need > SHARE * free:
        raise VaelabError(f"{what} needs about {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is free on {device}; {fix}")
    return need


# --- a limit for sizes the user chooses (issue 15, family 4) -----------------------------------
# A latent dimension, a width, a sample count typed with a few digits too many must be refused
# with an estimate, before anything is allocated or written, not met by the allocator (a
# traceback) or the kernel's out-of-memory killer. The limit is a share of the machine's
# physical memory (``os.sysconf``; the device's on CUDA), or what VAELAB_MEMORY_LIMIT says.

MEMORY_LIMIT_ENV = "VAELAB_MEMORY_LIMIT"  # e.g. "64G", "500M", "1e9" (bytes): raise or lower the limit
LIMIT_SHARE = 0.8  # of the physical memory a single allocation plan may use
TRAINING_FACTOR = 8  # bytes per parameter / 4: weights, gradients, Adam's two moments, the NaN-recovery
#                      snapshot of those three, and the copy a checkpoint is written from
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40}


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``, ``3.2e12`` -> ``"2.9 TiB"``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} bytes"


def memory_limit(device: torch.device | str | None = None) -> tuple[float, str]:
    """The bytes one allocation plan may use, and where the figure comes from.

    ``VAELAB_MEMORY_LIMIT`` (bytes, or with a unit: ``500M``, ``64G``) when set; else
    ``LIMIT_SHARE`` of the device's total memory on CUDA, or of the physical memory
    (``SC_PAGE_SIZE x SC_PHYS_PAGES``) elsewhere; infinite where neither can be read.
    """
    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if raw:
        text = raw.lower().replace(" ", "").removesuffix("ib").removesuffix("i")
        number = text.rstrip("kmgtb")
        unit = text[len(number):]
        try:
            value = float(number) * _UNITS[unit]
        except (KeyError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise VaelabError(f"{MEMORY_LIMIT_ENV}={raw!r} is not a size; give bytes or a size such as 500M or 64G")
        return value, f"{MEMORY_LIMIT_ENV}={raw}"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        total = float(torch.cuda.get_device_properties(dev).total_memory)
        return LIMIT_SHARE * total, f"{LIMIT_SHARE:.0%} of the GPU's {format_bytes(total)}; raise it with {MEMORY_LIMIT_ENV}"
    try:
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not on this system
        return math.inf, "no limit (the physical memory is unknown)"
    return LIMIT_SHARE * total, f"{LIMIT_SHARE:.0%} of this machine's {format_bytes(total)}; raise it with {MEMORY_LIMIT_ENV}"


def check_bytes(need: float, what: str, fix: str, device: torch.device | str | None = None) -> float:
    """``need`` bytes, or a one-line VaelabError naming ``what`` needs them, the limit and ``fix``."""
    limit, source = memory_limit(device)
    if need > limit:
        raise VaelabError(f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(limit)} "
                          f"vaelab may use ({source}); {fix}")
    return need


def parameter_count(make: Callable[[], torch.nn.Module]) -> int | None:
    """The number of parameters and buffers of the module ``make()`` builds, counted on the
    ``meta`` device (shapes only, nothing allocated); None when it cannot be built there."""
    try:
        with torch.device("meta"):
            module = make()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    return sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def check_model_fits(make: Callable[[], torch.nn.Module], culprits: str, device: torch.device | str | None = None,
                     factor: float = TRAINING_FACTOR, doing: str = "trained with Adam") -> int | None:
    """Refuse a model whose parameters, ``factor`` x 4 bytes each (training: with their
    gradients, Adam's state and the copies training keeps, ``TRAINING_FACTOR``), exceed
    :func:`memory_limit`: before a byte of it is allocated. ``culprits`` names the settings
    that size it (e.g. ``"--latent-dim 1000000000, --hidden 400"``). Returns the parameter
    count (None: it could not be counted)."""
    n = parameter_count(make)
    if n is not None:
        check_bytes(n * 4.0 * factor, f"a model of {n:,} parameters ({culprits}), {doing},",
                    "choose a smaller --latent-dim or --hidden", device)
    return n


def check_rows_fit(model: torch.nn.Module, x: Tensor, c: Tensor | None, rows: int, *, what: str, fix: str) -> float:
    """Like :func:`check_fits`, against :func:`memory_limit` (the machine's size, steady)
    rather than the memory free at this moment: for sizes the user sets once (a training
    batch x K samples), refused with the estimate before the first step."""
    need = bytes_per_row(model, x, c) * rows * HEADROOM
    return check_bytes(need, what, fix, x.device)


def check_evaluation_fits(model: torch.nn.Module, x: Tensor, c: Tensor | None, settings: Any) -> None:
    """Refuse, with the estimate, an evaluation whose settings (:class:`~vaelab.evaluation.EvalSettings`)
    ask for a pass that cannot fit in :func:`memory_limit`, before any of it runs: the ELBO's
    ``batch_size x elbo_samples`` rows, log p(x)'s ``batch_size x k_chunk``, AIS's
    ``batch_size x chains``, the gap split's ``gap_examples x gap_samples`` and the
    ``mi_samples`` indices of latent health. Every larger quantity is processed in chunks of these."""
    st = settings
    if len(x) == 0:
        return
    b = min(st.batch_size, len(x))
    passes = [(b * st.elbo_samples, f"the ELBO with {b} examples x {st.elbo_samples} samples per pass",
               "lower --elbo-samples or --batch-size")]
    if st.k > 0:
        passes.append((b * min(st.k_chunk, st.k), f"log p(x) with {b} examples x {min(st.k_chunk, st.k)} samples per pass",
                       "lower --k-chunk or --batch-size"))
    if st.estimator in ("ais", "auto") and st.k > 0:
        passes.append((b * st.chains, f"AIS with {b} examples x {st.chains} chains", "lower --chains or --batch-size"))
    if st.gap_examples > 0 and st.k > 0:
        g = min(st.gap_examples, len(x))
        passes.append((g * st.gap_samples, f"the gap split's optimisation of {g} examples x {st.gap_samples} samples",
                       "lower --gap-samples or --gap-examples"))
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        try:
            per_row = bytes_per_row(model, x[:1], None if c is None else c[:1])
        except VaelabError:  # a model that decodes only given a class it infers (M2): its passes check themselves
            per_row = 0.0
    for rows, what, fix in passes:
        check_bytes(rows * per_row * HEADROOM, what, fix, x.device)
    if st.mi_samples > 0:
        check_bytes(st.mi_samples * 8.0 * 4, f"latent health with {st.mi_samples:,} Monte-Carlo draws",
                    "lower --mi-samples", x.device)
