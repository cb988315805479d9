"""Run folders: training a configured model end to end, and loading a trained one.

A run folder holds::

    config.json               the TrainConfig and the data's shape/kind (JSON)
    model.safetensors         weights of the epoch with the best validation ELBO
    checkpoint.safetensors    the last epoch: weights, optimizer, state (for --resume)
    metrics.jsonl             one record per epoch (ELBO, reconstruction, KL; train and val)
    eval.json                 test-set evaluation (``vaelab eval``)
    reconstructions.png samples.png curves.png [manifold.png]

:func:`train` makes one; :func:`load` gives back a :class:`TrainedModel` with the Python
counterparts of every CLI command.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .build import build_vae
from .config import TrainConfig
from .data import DataSplits, binarize, load_data
from .errors import VaelabError
from .evaluation import LogLikelihood, evaluate, log_likelihood
from .evaluation.likelihood import K_CHUNK
from .model import VAE
from .objectives import ELBO, Objective, elbo
from .training.checkpoint import atomic_write_text, load_weights, read_metadata
from .training import distributed
from .training.loop import BEST_WEIGHTS, CHECKPOINT, METRICS, FitResult, fit

__all__ = ["train", "load", "TrainedModel", "TrainingStopped", "resolve_device", "read_metrics", "write_eval", "objective_from",
           "interpolate_latents"]

CONFIG = "config.json"
EVAL = "eval.json"
TEST_BINARIZATION_SEED = 12345  # the fixed Bernoulli draw of the test set


class TrainingStopped(VaelabError):
    """Training stopped before its end (NaN loss); the run folder keeps the last good state."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; any other name must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaelabError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VaelabError("device 'mps' asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def objective_from(config: TrainConfig) -> Objective:
    """The training objective a config asks for (a VaelabError for a bad combination)."""
    return Objective(kind=config.objective, k=config.k, kl=config.kl, beta=config.beta, warmup=config.warmup,
                     free_bits=config.free_bits, estimator=config.estimator)


def _uses_binarization(config: TrainConfig, data_kind: str) -> bool:
    if config.binarize == "auto":
        return config.likelihood == "bernoulli" and data_kind != "binary"
    return config.binarize == "dynamic"


@dataclass
class TrainedModel:
    """A trained VAE with its run folder: encode, decode, sample, score.

    Inputs may be numpy arrays or tensors of shape ``[N, *x_shape]`` (or one example
    ``x_shape``, or flat ``[N, prod(x_shape)]``); they are checked against the model's shape
    and the likelihood's support.
    """

    vae: VAE
    config: TrainConfig
    run_dir: Path
    data_info: dict[str, Any]
    device: torch.device

    # --- inputs -------------------------------------------------------------------------
    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.vae.x_shape

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    def as_batch(self, x: Any, what: str = "data") -> Tensor:
        """``x`` as a float tensor ``[N, *x_shape]`` on the model's device, or a VaelabError."""
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
        shape = self.x_shape
        size = math.prod(shape)
        if tuple(t.shape) == shape:
            t = t.unsqueeze(0)
        elif t.ndim == 2 and t.shape[1] == size:
            t = t.reshape(-1, *shape)
        elif t.ndim == 3 and len(shape) == 3 and shape[0] == 1 and tuple(t.shape[1:]) == shape[1:]:
            t = t.unsqueeze(1)
        elif tuple(t.shape[1:]) != shape:
            raise VaelabError(
                f"{what} has shape {tuple(t.shape)} but this model was trained on examples of "
                f"shape {shape} (give [N, {', '.join(map(str, shape))}] or [N, {size}])"
            )
        self.vae.decoder.check(t, what)
        return t.to(self.device)

    # --- the model ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Any) -> Distribution:
        """q(z|x) for a batch; ``.mean`` and ``.stddev`` are ``[N, D]``."""
        return self.vae.encode(self.as_batch(x))

    @torch.no_grad()
    def decode(self, z: Any) -> Distribution:
        """p(x|z) for latents ``[N, D]``; ``.mean`` is ``[N, *x_shape]``."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z).float()
        if z.ndim == 1:
            z = z.unsqueeze(0)
        if z.shape[-1] != self.latent_dim:
            raise VaelabError(f"latents have {z.shape[-1]} dimensions; this model has {self.latent_dim}")
        return self.vae.decode(z.to(self.device))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, seed: int | None = None) -> Tensor:
        """``n`` new examples decoded from z ~ p(z): decoder means, or draws if ``mean=False``."""
        if n < 1:
            raise VaelabError(f"number of samples must be >= 1, got {n}")
        if seed is not None:
            torch.manual_seed(seed)
        return self.vae.sample(n, mean=mean).cpu()

    @torch.no_grad()
    def reconstruct(self, x: Any) -> Tensor:
        """The decoder's mean at the posterior mean: ``E[x | z = E_q[z|x]]``."""
        q = self.vae.encode(self.as_batch(x))
        return self.vae.decode(q.mean).mean.cpu()

    @torch.no_grad()
    def interpolate(
        self, x_from: Any, x_to: Any, steps: int = 10, method: Literal["linear", "spherical"] = "linear"
    ) -> Tensor:
        """Decoded means along a path between the posterior means of two inputs ``[steps, *x_shape]``.

        ``spherical`` follows the great circle (slerp), which keeps the path at the typical
        radius of a Gaussian prior instead of cutting through its low-density centre.
        """
        if steps < 2:
            raise VaelabError(f"interpolation needs at least 2 steps, got {steps}")
        z0 = self.vae.encode(self.as_batch(x_from, "first input")).mean[0]
        z1 = self.vae.encode(self.as_batch(x_to, "second input")).mean[0]
        return self.vae.decode(interpolate_latents(z0, z1, steps, method)).mean.cpu()

    @torch.no_grad()
    def elbo(self, x: Any, k: int = 1) -> ELBO:
        """Per-example ELBO, reconstruction and KL terms (nats), with ``k`` samples."""
        return elbo(self.vae.trace(self.as_batch(x), k), self.config.kl)

    def log_likelihood(self, x: Any, k: int = 1000, *, batch_size: int = 100, k_chunk: int = K_CHUNK) -> LogLikelihood:
        """Importance-sampled log p(x) per example with ``k`` samples (see :mod:`vaelab.evaluation`)."""
        return log_likelihood(self.vae, self.as_batch(x), k, batch_size=batch_size, k_chunk=k_chunk)

    # --- the run's data -------------------------------------------------------------------
    def data(self) -> DataSplits:
        """The data splits this run was trained on (same source, fractions and seed)."""
        c = self.config
        return load_data(c.data, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=c.seed)

    def test_set(self, data: DataSplits | None = None) -> tuple[Tensor, Tensor | None]:
        """The run's test examples as the model sees them (binarized once, with a fixed seed,
        when training used dynamic binarization) and their labels."""
        data = data or self.data()
        x = data.test
        if self.data_info.get("binarized"):
            x = binarize(x, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
        return x, data.test_labels

    def evaluate(
        self, k: int = 1000, x: Any = None, *, k_chunk: int = K_CHUNK, batch_size: int = 100,
        elbo_samples: int = 10, mi_samples: int = 1000, gap_examples: int = 100, gap_steps: int = 300,
        gap_samples: int = 16, gap_lr: float = 0.05, gap_eval_samples: int = 1000, seed: int = 0,
        per_example: bool = False,
    ) -> dict[str, Any]:
        """Test ELBO and its terms, -log p(x) with ``k`` importance samples, latent health and
        the inference gap split, as a JSON-ready dict (nats per example).

        Uses the run's test set unless ``x`` is given. See :func:`vaelab.evaluation.evaluate`
        for the arguments and :meth:`vaelab.evaluation.Evaluation.to_dict` for the keys.
        """
        x = self.test_set()[0] if x is None else x
        ev = evaluate(
            self.vae, self.as_batch(x), k=k, k_chunk=k_chunk, batch_size=batch_size,
            elbo_samples=elbo_samples, kl=self.config.kl, mi_samples=mi_samples,
            gap_examples=gap_examples, gap_steps=gap_steps, gap_samples=gap_samples, gap_lr=gap_lr,
            gap_eval_samples=gap_eval_samples, seed=seed,
        )
        return ev.to_dict(per_example=per_example)


def interpolate_latents(
    z0: Tensor, z1: Tensor, steps: int = 10, method: Literal["linear", "spherical"] = "linear"
) -> Tensor:
    """``steps`` latents ``[steps, D]`` on the path from ``z0`` to ``z1`` (both ``[D]``), ends included.

    ``linear``: z(t) = (1 - t) z0 + t z1. ``spherical`` (slerp): with omega the angle between
    z0 and z1, z(t) = (sin((1 - t) omega) z0 + sin(t omega) z1) / sin(omega), which follows the
    great circle and keeps the path at the typical radius of a Gaussian prior instead of
    cutting through its low-density centre (straight line when z0 and z1 are parallel).
    """
    if steps < 2:
        raise VaelabError(f"interpolation needs at least 2 steps, got {steps}")
    if z0.shape != z1.shape or z0.ndim != 1:
        raise VaelabError(f"interpolation needs two latents of the same shape [D], got {tuple(z0.shape)} and {tuple(z1.shape)}")
    t = torch.linspace(0, 1, steps, device=z0.device, dtype=z0.dtype)[:, None]  # [S, 1]
    if method == "linear":
        return (1 - t) * z0 + t * z1
    if method == "spherical":
        omega = torch.arccos(torch.clamp(torch.dot(z0, z1) / (z0.norm() * z1.norm()), -1, 1))
        if omega.abs() < 1e-6 or not torch.isfinite(omega):  # parallel, or a zero vector
            return (1 - t) * z0 + t * z1
        return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)
    raise VaelabError(f"unknown interpolation {method!r}; choose linear or spherical")


def _run_name(config: TrainConfig) -> str:
    base = Path(config.data).stem if config.data else "data"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    figures: bool = True,
    log: Any = print,
    **overrides: Any,
) -> tuple[TrainedModel, FitResult]:
    """Train a VAE as configured (or resume a run) and fill its run folder.

    ``vaelab.train(epochs=5, latent_dim=2)`` trains the classic VAE on ``mnist5k`` with
    those two settings changed. Returns the trained model (best validation epoch) and what
    the loop did. Raises :class:`TrainingStopped` if the loss became NaN.

    Under ``torchrun`` every process calls this; they train one model data-parallel
    (:mod:`vaelab.training.distributed`), rank 0 writes the run folder and logs.
    """
    if resume is not None:
        run_dir = _check_run(resume)
        config = _read_config(run_dir).replace(**overrides) if overrides else _read_config(run_dir)
        if not (run_dir / CHECKPOINT).exists():
            raise VaelabError(f"run '{run_dir}' has no checkpoint to resume from; train it anew")
        read_metadata(run_dir / CHECKPOINT)  # a corrupt checkpoint fails before anything is written
    else:
        config = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
        run_dir = Path(config.out) / (config.name or _run_name(config))
        if (run_dir / CONFIG).exists() and (run_dir / CHECKPOINT).exists():
            raise VaelabError(f"run folder '{run_dir}' already holds a run; choose another --name or use --resume")
    world, device = distributed.setup(resolve_device(config.device))
    run_dir = world.from_main(run_dir)  # one folder for all processes (the default name holds the time)
    log = log if world.is_main else (lambda *args: None)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    objective = objective_from(config)  # a bad combination of settings fails before anything is written
    if not world.is_main:
        world.barrier()  # rank 0 loads (and downloads) first
    data = load_data(config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    if world.is_main:
        world.barrier()
    torch.manual_seed(config.seed)
    vae = build_vae(data.shape, **config.model_kwargs()).to(device)
    vae.decoder.check(data.train, f"training data '{config.data}'")
    objective.check(vae, data.train[:2].to(device))  # e.g. STL with a flow posterior: fails here too
    binarized = _uses_binarization(config, data.kind)
    data_info = {"shape": list(data.shape), "kind": data.kind, "binarized": binarized,
                 "n_train": int(data.train.shape[0]), "n_val": int(data.val.shape[0]),
                 "n_test": int(data.test.shape[0]), "discrete_levels": data.discrete_levels}
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main and (resume is None or overrides):  # a resumed run records a raised --epochs
        atomic_write_text(run_dir / CONFIG, json.dumps({"config": config.to_dict(), "data": data_info}, indent=2))
    log(f"run folder: {run_dir}")
    result = fit(
        vae, data, run_dir,
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        patience=config.patience, binarize=binarized, objective=objective,
        resume=resume is not None, progress=progress, compile=config.compile, precision=config.precision,
    )
    if result.stopped != "completed" and result.stopped != "early-stopping":
        distributed.teardown()
    if result.stopped == "nan":
        raise TrainingStopped(result.message)
    if result.message:
        log(result.message)
    if result.stopped == "interrupted":
        raise KeyboardInterrupt(result.message)
    model = load(run_dir, device=device)
    distributed.teardown()
    if figures and world.is_main:
        from .plots import latent_manifold, reconstruction_grid, image_grid, training_curves

        x_test, _ = model.test_set(data)
        torch.manual_seed(config.seed)
        reconstruction_grid(x_test[:32], model.reconstruct(x_test[:32]), run_dir / "reconstructions.png",
                            title="test inputs and their reconstructions")
        image_grid(model.sample(64), run_dir / "samples.png", title="decoded from z ~ p(z)")
        training_curves(result.metrics, run_dir / "curves.png")
        if model.latent_dim == 2 and len(model.x_shape) == 3:  # the manifold draws images only
            latent_manifold(model.vae, run_dir / "manifold.png")
    return model, result


def _check_run(run: str | Path) -> Path:
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise VaelabError(f"run folder '{run_dir}' not found")
    if not (run_dir / CONFIG).is_file():
        raise VaelabError(f"'{run_dir}' is not a vaelab run folder (no {CONFIG}); pass the folder that 'vaelab train' printed")
    return run_dir


def _read_config(run_dir: Path) -> TrainConfig:
    return TrainConfig.from_mapping(_read_json(run_dir / CONFIG)["config"], source=str(run_dir / CONFIG))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VaelabError(f"'{path}' is corrupt ({err}); restore it from a backup") from None
    if not isinstance(doc, dict) or "config" not in doc or "data" not in doc:
        raise VaelabError(f"'{path}' is not a vaelab run configuration (needs 'config' and 'data')")
    return doc


def load(run: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """Load the best weights of a run folder as a :class:`TrainedModel` (eval mode)."""
    run_dir = _check_run(run)
    doc = _read_json(run_dir / CONFIG)
    config = TrainConfig.from_mapping(doc["config"], source=str(run_dir / CONFIG))
    dev = resolve_device("auto" if device is None else str(device))
    weights = run_dir / BEST_WEIGHTS
    if not weights.exists():
        raise VaelabError(f"run '{run_dir}' has no trained weights ({BEST_WEIGHTS}); it did not finish an epoch")
    vae = build_vae(doc["data"]["shape"], **config.model_kwargs())
    load_weights(weights, vae, "weights file")
    vae.to(dev).eval()
    return TrainedModel(vae=vae, config=config, run_dir=run_dir, data_info=doc["data"], device=dev)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``metrics.jsonl``)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_eval(run_dir: Path, result: dict[str, Any]) -> Path:
    path = Path(run_dir) / EVAL
    atomic_write_text(path, json.dumps(result, indent=2))
    return path
