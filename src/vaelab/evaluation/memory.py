"""Will an evaluation fit in memory? Measure one small pass, scale it, compare with what is free.

The bytes a forward-and-backward pass keeps (the tensors autograd saves, plus the outputs)
grow linearly with the rows scored together (examples x samples, or examples x chains), so
a probe of a few rows, counted with ``torch.autograd.graph.saved_tensors_hooks``, predicts a
pass of any size. The free memory is the device's (``torch.cuda.mem_get_info``) or, on CPU,
``MemAvailable`` of ``/proc/meminfo`` (elsewhere the check is skipped).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import VaelabError

__all__ = ["bytes_per_row", "free_bytes", "check_fits"]

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
