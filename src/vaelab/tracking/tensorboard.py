"""TensorBoard: event files under ``RUN/tensorboard/``, written by PyTorch's ``SummaryWriter``.

    tensorboard --logdir runs/          # every run folder under runs/, side by side

Per epoch (step = epoch), in the units of ``metrics.jsonl`` (nats per example):

    elbo/train (nats)  elbo/val (nats)  reconstruction/train (nats)  reconstruction/val (nats)
    kl/train (nats)  kl/val (nats)  kl weight  learning rate  speed (examples/s)  epoch time (s)

At the end (step = the last epoch): the test evaluation's figures (``test/elbo (nats)``,
``test/-log p(x) (nats)``, ...), one hyperparameter record (the HPARAMS tab: the settings
against the test figures), the settings as text, and from the best weights:

- images: test inputs over their reconstructions and samples (the run folder's
  ``reconstructions.png`` and ``samples.png``, drawn anew by :mod:`vaelab.plots` when training
  drew no figures), and traversals of the dimensions whose posterior means vary most over the
  test set (-3..3 from the first test example's mean);
- histograms of the test set's posterior means E_q[z_d | x], one per dimension;
- the embedding projector: the posterior means of up to ``EMBEDDING_MAX`` test examples,
  their labels as metadata and, for images, a sprite of the inputs.

Scalars are stored as TensorBoard's 32-bit ``simple_value``: read back, a value equals
``float32(value)`` of ``metrics.jsonl``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..spec import ModelSpec
from . import Finished, require

__all__ = ["TensorBoardLogger", "SCALARS", "TEST_SCALARS", "FOLDER", "EMBEDDING_MAX"]

FOLDER = "tensorboard"
EMBEDDING_MAX = 10_000  # test examples in the projector (its sprite stays under 8192 px a side)
TRAVERSAL_DIMS = 8
TRAVERSAL_VALUES = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0)

# tag -> key of the epoch record (metrics.jsonl, plus kl_weight and lr)
SCALARS: dict[str, str] = {
    "elbo/train (nats)": "train_elbo",
    "elbo/val (nats)": "val_elbo",
    "reconstruction/train (nats)": "train_reconstruction",
    "reconstruction/val (nats)": "val_reconstruction",
    "kl/train (nats)": "train_kl",
    "kl/val (nats)": "val_kl",
    "kl weight": "kl_weight",
    "learning rate": "lr",
    "speed (examples/s)": "examples_per_second",
    "epoch time (s)": "seconds",
}
# tag -> field of the EvaluationSummary (eval.json)
TEST_SCALARS: dict[str, str] = {
    "test/elbo (nats)": "elbo",
    "test/reconstruction (nats)": "reconstruction",
    "test/kl (nats)": "kl",
    "test/-log p(x) (nats)": "nll",
    "test/bits per dim": "bits_per_dim",
    "test/accuracy": "accuracy",
}


def _png(data: bytes) -> np.ndarray:
    """A PNG's pixels ``[H, W, 3]`` uint8."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class TensorBoardLogger:
    """Writes one run's event files with ``torch.utils.tensorboard.SummaryWriter``."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None
        self.config: TrainConfig | None = None
        self.last_epoch = 0

    def connect(self) -> None:
        require("tensorboard", "tensorboard")  # torch's SummaryWriter needs it; fail before anything is written
        require("torch.utils.tensorboard", "tensorboard")

    def start(self, config: TrainConfig, spec: ModelSpec, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / FOLDER))
        self.writer.add_text("settings", "```\n" + json.dumps(config.to_dict(), indent=2) + "\n```")
        self.writer.add_text("model", "```\n" + spec.to_json() + "\n```")
        self.writer.flush()

    def epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for tag, key in SCALARS.items():
            if record.get(key) is not None:  # no val_* without a validation set (--val-fraction 0)
                self.writer.add_scalar(tag, float(record[key]), step)
        self.last_epoch = step
        self.writer.flush()  # TensorBoard shows the epoch while the run goes on

    def finish(self, run: Finished) -> None:
        w, step = self.writer, max(self.last_epoch, run.result.epochs_done)
        ev = run.evaluation
        figures: dict[str, float] = {}
        if ev is not None:
            for tag, key in TEST_SCALARS.items():
                value = getattr(ev, key)
                if value is not None:
                    w.add_scalar(tag, float(value), step)
                    figures[tag] = float(value)
        self._hparams(run, figures)
        self._model_figures(run, step)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # --- the end of a run --------------------------------------------------------------------
    def _hparams(self, run: Finished, figures: dict[str, float]) -> None:
        """The settings against the test figures, in the writer's own event file (as Lightning's
        TensorBoardLogger does), so ``--logdir runs/`` compares every run in the HPARAMS tab."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: (",".join(map(str, v)) if isinstance(v, list) else v)
                  for k, v in run.model.config.to_dict().items()}
        values = {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}
        best = run.result.best_val_elbo  # None without a validation set
        metrics = figures or ({} if best is None else {"elbo/val (nats)": best})
        if not metrics:
            return
        exp, ssi, sei = hparams(values, metrics)
        writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    @torch.no_grad()
    def _model_figures(self, run: Finished, step: int) -> None:
        from ..plots import image_grid, reconstruction_grid
        from ..report.figures import latent_traversal

        w, model = self.writer, run.model
        x, c = run.test.x, run.test.c  # [N, *x_shape], [N, P] or None
        n = min(len(x), EMBEDDING_MAX)
        means = torch.cat([model.encode(x[i:i + 500], c=None if c is None else c[i:i + 500]).mean.cpu()
                           for i in range(0, n, 500)])  # [n, D]

        def reconstructions() -> bytes:
            recon = model.reconstruct(x[:32], c=None if c is None else c[:32])
            return reconstruction_grid(x[:32], recon, title="test inputs and their reconstructions")

        def samples() -> bytes:
            ctx = None if run.contexts is None else run.contexts[:64]
            drawn = model.sample(64) if ctx is None else model.sample(len(ctx), c=ctx)
            return image_grid(drawn, title="decoded from z ~ p(z)" if ctx is None else "decoded from z ~ p(z|c)")

        torch.manual_seed(model.config.seed)
        for name, draw in (("reconstructions", reconstructions), ("samples", samples)):
            saved = run.run_dir / f"{name}.png"  # the run folder's own figure, when train drew it
            w.add_image(f"images/{name}", _png(saved.read_bytes() if saved.is_file() else draw()), step, dataformats="HWC")

        spread = means.var(0) if n > 1 else torch.zeros(model.latent_dim)  # [D]
        dims = spread.argsort(descending=True)[: min(TRAVERSAL_DIMS, model.latent_dim)].tolist()
        base = means[0]  # [D]
        z = base.repeat(len(dims), len(TRAVERSAL_VALUES), 1)  # [R, S, D]
        for r, dim in enumerate(dims):
            z[r, :, dim] = torch.tensor(TRAVERSAL_VALUES, dtype=z.dtype)
        c0 = c[:1] if c is not None else None if run.contexts is None else run.contexts[:1]  # M2: a label to decode with
        cs = None if c0 is None else c0.expand(len(dims) * len(TRAVERSAL_VALUES), -1)
        decoded = model.decode(z.reshape(-1, model.latent_dim), c=cs).mean  # [R * S, *x_shape]
        decoded = decoded.reshape(len(dims), len(TRAVERSAL_VALUES), *model.x_shape).cpu()
        notes = [f"(var {float(spread[d]):.2f})" for d in dims]
        w.add_image("images/traversals", _png(latent_traversal(decoded, TRAVERSAL_VALUES, dims, row_notes=notes)),
                    step, dataformats="HWC")

        for d in range(model.latent_dim):
            w.add_histogram(f"posterior mean/z{d}", means[:, d].numpy(), step)

        labels = run.labels
        metadata = None
        if labels is not None:
            names = model.class_names
            ids = labels[:n].long().tolist()
            metadata = [names[i] if names and 0 <= i < len(names) else str(i) for i in ids]
        images = None
        if len(model.x_shape) == 3 and model.x_shape[0] in (1, 3):
            images = x[:n].detach().float().clamp(0, 1).cpu()  # [n, C, H, W] in [0, 1]: the sprite
        w.add_embedding(means, metadata=metadata, label_img=images, global_step=step, tag="posterior means")
        w.flush()
