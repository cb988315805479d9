"""Fixed cost of one training step: vaelab's against the leanest hand-written eager step.

With tiny tensors (4 pixels, 4 hidden units, 2 latents, batch 2) the arithmetic is negligible
and a step's time is what it costs to run it at all: Python, module calls, building and
walking the autograd graph, the optimizer. Two steps are timed on one thread:

* minimal: nn.Linear layers, BCE-with-logits summed, the closed-form KL written out,
  ``torch.optim.Adam(fused=True)``: the fastest eager step we know how to write by hand;
* vaelab general step: the step ``vaelab.training.loop.fit`` takes for any model
  (distributions, Objective, autograd, the per-step statistics) with vaelab's lean Adam;
* vaelab fast path: the step it takes for the common model (``vaelab.training.fastpath``:
  loss and gradients written out by hand, no autograd graph) with the same Adam.

Forward-only times are printed too. Best of five timings, microseconds per step. This is where
the eager ceiling at batch 128 comes from (see the README's "Speed and scale")::

    python benchmarks/step_overhead.py
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.build import build_vae
from vaelab.objectives import Objective
from vaelab.training.fastpath import fast_step
from vaelab.training.loop import _TrainStep
from vaelab.training.optim import make_optimizer


class Minimal(nn.Module):
    def __init__(self, x_dim: int = 4, hidden: int = 4, z_dim: int = 2) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(x_dim, hidden), nn.Linear(hidden, 2 * z_dim)
        self.fc3, self.fc4 = nn.Linear(z_dim, hidden), nn.Linear(hidden, x_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, raw = self.fc2(F.relu(self.fc1(x))).chunk(2, -1)
        sd = F.softplus(raw) + 1e-4
        z = mu + sd * torch.randn_like(mu)
        logits = self.fc4(F.relu(self.fc3(z)))
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (mu.pow(2) + sd.pow(2) - 1).sum() - sd.log().sum()
        return (rec + kl) / x.shape[0]


def best_time(f: Callable[[], object], n: int = 2000) -> float:
    """Microseconds per call, best of five runs of ``n`` calls."""
    for _ in range(100):
        f()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(2, 4))
    minimal = Minimal()
    adam = torch.optim.Adam(minimal.parameters(), lr=1e-3, fused=True)
    vae = build_vae((4,), latent_dim=2, hidden=[4])
    lean = make_optimizer(vae, 1e-3)
    step = _TrainStep(vae, Objective(), "float32")
    log = torch.zeros(4, 4)

    def minimal_step() -> None:
        loss = minimal(x)
        adam.zero_grad()
        loss.backward()
        adam.step()

    def vaelab_step() -> None:
        loss, stats = step(x, 0.0)
        lean.zero_grad()
        loss.backward()
        lean.step()
        log[0] = stats

    fast = fast_step(vae, Objective())
    assert fast is not None

    def fast_path_step() -> None:
        loss, stats = fast.step(x, 0.0)
        lean.step()
        log[0] = stats

    rows = [("minimal eager step", best_time(minimal_step)), ("vaelab general step", best_time(vaelab_step)),
            ("vaelab fast path step", best_time(fast_path_step)),
            ("minimal forward", best_time(lambda: minimal(x))), ("vaelab forward", best_time(lambda: step(x, 0.0)))]
    print(f"torch {torch.__version__}, 1 thread; tiny model, batch 2 (microseconds, best of 5)")
    for name, us in rows:
        print(f"{name:22}{us:9.1f}")


if __name__ == "__main__":
    main()
