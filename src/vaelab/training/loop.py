"""The training loop: Adam on the negative ELBO, validation, early stopping, checkpoints.

One epoch: a fresh Bernoulli draw of the training pixels (dynamic binarization, when asked),
a fresh shuffle, then one optimizer step per mini-batch on

    loss = -(1/B) sum_b ELBO(x_b)          (nats per example; reconstruction - KL, no hidden weights)

After each epoch the validation ELBO is computed, the metrics are appended, and the checkpoint
is replaced atomically. Every random draw of epoch ``e`` comes from a seed derived from
``(seed, e)``, so a run resumed from the checkpoint of epoch ``e - 1`` continues exactly as the
uninterrupted run would have: same seed, same machine, same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..data import DataSplits, binarize as draw_binary
from ..errors import VaelabError
from ..evaluation import dataset_elbo
from ..model import VAE
from ..objectives import Objective
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint, save_weights

__all__ = ["fit", "FitResult", "CHECKPOINT", "BEST_WEIGHTS", "METRICS", "epoch_seed"]

CHECKPOINT = "checkpoint.safetensors"  # last epoch: weights + optimizer + state (for --resume)
BEST_WEIGHTS = "model.safetensors"  # weights of the epoch with the best validation ELBO
METRICS = "metrics.jsonl"  # one JSON record per epoch


@dataclass
class FitResult:
    """What :func:`fit` did. ``stopped`` is one of ``"completed"``, ``"early-stopping"``,
    ``"nan"`` (the loss became NaN/inf; the last good checkpoint is kept) or
    ``"interrupted"`` (Ctrl-C; resume from the last checkpoint)."""

    stopped: str
    epochs_done: int
    best_epoch: int
    best_val_elbo: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw in ``epoch`` (1-based) of a run seeded with ``seed``."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def _write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    import json

    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in metrics))


def _stopped(run_dir: Path, epoch: int) -> str:
    """What a run stopped in ``epoch`` leaves behind: the checkpoint of the epoch before, if any."""
    if epoch > 1:
        return f"stopped and kept the last good checkpoint (epoch {epoch - 1}) in '{run_dir}'"
    return f"stopped before the first epoch finished, so '{run_dir}' holds no checkpoint"


def fit(
    model: VAE,
    data: DataSplits,
    run_dir: str | Path,
    *,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    patience: int = 0,
    binarize: bool = False,
    objective: Objective | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train`` and keep its checkpoints in ``run_dir``.

    Args:
        epochs: the total number of epochs (a resumed run continues up to it).
        batch_size, lr: mini-batch size and Adam's learning rate.
        seed: the run's seed; every epoch's draws derive from it (see :func:`epoch_seed`).
        patience: stop when the validation ELBO has not improved for this many epochs
            (0: never stop early).
        binarize: draw x ~ Bernoulli(pixels) afresh each epoch (dynamic binarization); the
            validation set is binarized once, with a fixed seed.
        objective: what to maximise (default: the ELBO with one sample and the closed-form
            KL when one exists); the logged terms are always the true ELBO's.
        resume: continue from ``run_dir/checkpoint.safetensors``.
        progress: show a progress bar with the running ELBO.
        on_epoch: called with each epoch's metrics record.
    """
    objective = objective or Objective()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    metrics: list[dict[str, Any]] = []
    start_epoch, best_val, best_epoch, bad_epochs = 1, -math.inf, 0, 0
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT, model, optimizer)
        metrics = state["metrics"]
        start_epoch = state["epoch"] + 1
        best_val, best_epoch, bad_epochs = state["best_val_elbo"], state["best_epoch"], state["bad_epochs"]
        if state.get("stopped") == "early-stopping":
            return FitResult("early-stopping", state["epoch"], best_epoch, best_val, metrics,
                             "the run had already stopped early")
        _write_metrics(run_dir / METRICS, metrics)  # drop records newer than the checkpoint

    if start_epoch > epochs:
        raise VaelabError(
            f"the run in '{run_dir}' already finished its {epochs} epochs; pass a larger "
            "--epochs to continue it"
        )
    train = data.train.to(device)
    val = data.val.to(device)
    if binarize:
        val = draw_binary(val, torch.Generator(device=device).manual_seed(seed + 1))
    n = train.shape[0]
    steps = math.ceil(n / batch_size)

    result = FitResult("completed", start_epoch - 1, best_epoch, best_val, metrics)
    for epoch in range(start_epoch, epochs + 1):
        s = epoch_seed(seed, epoch)
        gen = torch.Generator(device=device).manual_seed(s)
        torch.manual_seed(s)  # the reparameterization noise eps
        x_epoch = draw_binary(train, gen) if binarize else train
        perm = torch.randperm(n, generator=gen, device=device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        model.train()
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False, unit="batch", dynamic_ncols=True)
        try:
            for i in range(steps):
                xb = x_epoch[perm[i * batch_size : (i + 1) * batch_size]]
                loss, terms = objective.loss(model, xb, epoch - 1 + i / steps)
                if not torch.isfinite(loss):
                    result.stopped = "nan"
                    result.message = (
                        f"training loss became {float(loss.detach())} at epoch {epoch}, step {i + 1}; "
                        f"{_stopped(run_dir, epoch)}; try a lower --lr"
                    )
                    return result
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    sums += torch.stack([terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()]).double()
                if progress and (i % 10 == 0 or i == steps - 1):
                    seen = min((i + 1) * batch_size, n)
                    bar.set_postfix_str(f"ELBO {float(sums[0]) / seen:.2f} nats")
                bar.update(1)
        except KeyboardInterrupt:
            result.stopped = "interrupted"
            result.message = (
                f"interrupted in epoch {epoch}; the checkpoint of epoch {epoch - 1} is intact: "
                f"resume with 'vaelab train --resume {run_dir}'"
            )
            return result
        finally:
            bar.close()
        seconds = time.perf_counter() - t0

        model.eval()
        v = dataset_elbo(model, val, kl=objective.kl)
        tr = (sums / n).tolist()
        if not all(math.isfinite(t) for t in tr) or not math.isfinite(v.elbo):
            result.stopped = "nan"
            result.message = (
                f"the ELBO became non-finite in epoch {epoch}; {_stopped(run_dir, epoch)}; "
                "try a lower --lr"
            )
            return result
        record = {
            "epoch": epoch,
            "train_elbo": tr[0],
            "train_reconstruction": tr[1],
            "train_kl": tr[2],
            "val_elbo": v.elbo,
            "val_reconstruction": v.reconstruction,
            "val_kl": v.kl,
            "seconds": seconds,
            "examples_per_second": n / seconds,
        }
        metrics.append(record)
        improved = v.elbo > best_val
        if improved:
            best_val, best_epoch, bad_epochs = v.elbo, epoch, 0
            save_weights(run_dir / BEST_WEIGHTS, model, {"epoch": epoch, "val_elbo": v.elbo})
        else:
            bad_epochs += 1
        stop_early = patience > 0 and bad_epochs >= patience
        state = {
            "epoch": epoch,
            "best_val_elbo": best_val,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "stopped": "early-stopping" if stop_early else None,
            "metrics": metrics,
        }
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, state)
        _write_metrics(run_dir / METRICS, metrics)
        if progress:
            tqdm.write(
                f"epoch {epoch}: train ELBO {tr[0]:.2f}, val ELBO {v.elbo:.2f} nats "
                f"(reconstruction {v.reconstruction:.2f}, KL {v.kl:.2f}){' *' if improved else ''}"
            )
        if on_epoch is not None:
            on_epoch(record)
        result = FitResult("completed", epoch, best_epoch, best_val, metrics)
        if stop_early:
            result.stopped = "early-stopping"
            result.message = f"validation ELBO did not improve for {patience} epochs"
            break
    return result
