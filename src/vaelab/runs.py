"""Run folders: training a configured model end to end, and loading a trained one.

A run folder holds::

    config.json               the TrainConfig and the data's shape/kind (JSON)
    model.json                the model spec: family, parts and options, conditioning variables
    model.safetensors         weights of the epoch with the best validation ELBO
    checkpoint.safetensors    the last epoch: weights, optimizer, state (for --resume)
    checkpoint.previous.safetensors   the epoch before (for vaelab verify)
    manifest.json             versions, command line, settings, data checksums (vaelab.manifest)
    .lock                     locked (fcntl.flock) while a process trains the run
    metrics.jsonl             one record per epoch (ELBO, reconstruction, KL; train and val)
    eval.json                 test-set evaluation (``vaelab eval``)
    reconstructions.png samples.png curves.png [manifold.png]

:func:`train` makes one; :func:`load` gives back a :class:`TrainedModel` with the Python
counterparts of every CLI command, rebuilt from ``model.json`` through the registry of parts
(run folders of vaelab 0.1.0, which have no ``model.json``, are read from ``config.json``).
Reading and writing the files themselves, each checked as it is read, is :mod:`vaelab.run_folder`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .build import build_model
from .config import TrainConfig, check_given
from .context import Batch
from .data import DataSplits, binarize, context_columns, context_variables, known_labels, load_data, split_batch
from .data.streaming import RowStore, row_totals
from .data.tabular import missing_cells, missing_note, table_spec
from .errors import VaelabError
from .inputs import check_data, check_whole, resolve_device
from .evaluation import EvalSettings, Evaluation, EvaluationSummary, LogLikelihood, evaluate, log_likelihood
from .evaluation.settings import DEFAULTS
from .m2 import batch_labelled_share
from .model import VAE, Classifier
from .objectives import ELBO, Objective, data_elbo
from .spec import ModelSpec
from .tracking import Tracking
from .manifest import write_manifest
from .outputs import (check_folder, check_run_name, check_unlocked, clean_stale_temps, create_run_folder, lock_folder,
                      releases_locks)
from .training.checkpoint import atomic_write_text, load_checkpoint, load_weights
from .training.loop import check_precision
from .training import distributed
from .training.loop import BEST_WEIGHTS, CHECKPOINT, METRICS, PREVIOUS_CHECKPOINT, FitResult, fit
from .training.recovery import EVENTS
from .run_folder import (CONFIG, EVAL, SPEC, check_run, check_run_files, check_weights_fit, described_model,
                         missing_record, read_config, read_metrics, read_run_config, read_spec, write_eval,
                         write_run_config)

__all__ = ["train", "load", "TrainedModel", "TrainingStopped", "resolve_device", "read_metrics", "write_eval", "objective_from",
           "interpolate_latents"]

TEST_BINARIZATION_SEED = 12345  # the fixed Bernoulli draw of the test set


class TrainingStopped(VaelabError):
    """Training stopped before its end (NaN loss); the run folder keeps the last good state."""


def objective_from(config: TrainConfig, labelled_share: float = 1.0) -> Objective:
    """The training objective a config asks for (a VaelabError for a bad combination)."""
    return Objective(kind=config.objective, k=config.k, kl=config.kl, beta=config.beta, warmup=config.warmup,
                     free_bits=config.free_bits, estimator=config.estimator, alpha=config.alpha,
                     labelled_share=labelled_share)


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

    A conditional model (``spec.context``) takes its context as ``c`` ``[N, P]`` (one column
    per conditioning variable) or, when it conditions on the label alone, as ``label``: a
    class id or name, or one per example. The semi-supervised M2 model needs no context to
    score x (its label is a latent) but takes ``label`` to generate.
    """

    vae: VAE
    config: TrainConfig
    run_dir: Path
    data_info: dict[str, Any]
    device: torch.device
    spec: ModelSpec

    # --- the context --------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """Whether scoring x needs a context c (a conditional VAE; not M2, whose label is latent)."""
        return self.spec.family != "m2" and self.spec.conditional

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the label's classes ("0", "1", ... when the data named none); () without a label."""
        v = self.spec.label()
        return () if v is None else v.names()

    def context(self, c: Any = None, label: Any = None, n: int | None = None, what: str = "c") -> Tensor | None:
        """The raw context ``[n, P]`` on the model's device, checked, from ``c`` or ``label``.

        ``label`` (a class id or name, or a sequence of them, one per example) stands for c
        when the label is the model's only conditioning variable. Returns None for a model
        that scores x without context.
        """
        if label is not None:
            if c is not None:
                raise VaelabError("give the context as c or as label, not both")
            v = self.spec.label()
            if v is None:
                raise VaelabError("this model has no label to condition on; it was trained without --condition-on label")
            if len(self.spec.context) != 1:
                names = ", ".join(x.name for x in self.spec.context)
                raise VaelabError(f"this model conditions on {names}: give every column as c, not only the label")
            values = [label] if isinstance(label, (str, int, np.integer)) else list(np.asarray(label).reshape(-1).tolist())
            ids = [v.class_id(x) for x in values]
            if n is not None and len(ids) == 1:
                ids = ids * n
            c = torch.tensor(ids, dtype=torch.float32)[:, None]
        if c is None:
            if self.conditional:
                names = ", ".join(x.name for x in self.spec.context)
                hint = " or label=" if self.spec.label() is not None and len(self.spec.context) == 1 else ""
                raise VaelabError(f"this model is conditional (on {names}): give c{hint}, one row per example")
            return None
        if not self.spec.context:
            raise VaelabError("this model is unconditional: give no c or label")
        t = torch.as_tensor(np.asarray(c) if not isinstance(c, Tensor) else c).float()
        if t.ndim == 1 and len(self.spec.context) == 1:
            t = t[:, None]
        encoder = self.vae.context  # the ContextEncoder (a VAE's, or M2's label encoder)
        assert encoder is not None
        encoder.check(t, n, what)
        return t.to(self.device)

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
        elif t.ndim == 1 and t.shape[0] == size:  # one example as a flat row
            t = t.reshape(1, *shape)
        elif t.ndim == 2 and t.shape[1] == size:
            t = t.reshape(-1, *shape)
        elif t.ndim == 3 and len(shape) == 3 and shape[0] == 1 and tuple(t.shape[1:]) == shape[1:]:
            t = t.unsqueeze(1)
        elif tuple(t.shape[1:]) != shape:
            flat = f" or [N, {size}]" if len(shape) > 1 else ""
            raise VaelabError(
                f"{what} has shape {tuple(t.shape)} but this model was trained on examples of "
                f"shape {shape} (give [N, {', '.join(map(str, shape))}]{flat})"
            )
        self.vae.decoder.check(t, what)
        return t.to(self.device)

    # --- the model ------------------------------------------------------------------------
    def _generation_context(self, c: Any, label: Any, n: int) -> Tensor | None:
        """The context for generating ``n`` examples: every model with a context needs one here."""
        if self.spec.context and c is None and label is None:
            names = ", ".join(x.name for x in self.spec.context)
            raise VaelabError(f"this model generates given {names}: give the class (--label on the command line, "
                              "label= or c= in Python)")
        return self.context(c, label, n=n)

    @torch.no_grad()
    def encode(self, x: Any, c: Any = None, label: Any = None) -> Distribution:
        """q(z|x, c) for a batch; ``.mean`` and ``.stddev`` are ``[N, D]``."""
        xb = self.as_batch(x)
        return self.vae.encode(xb, self.context(c, label, n=len(xb)))

    @torch.no_grad()
    def decode(self, z: Any, c: Any = None, label: Any = None) -> Distribution:
        """p(x|z, c) for latents ``[N, D]``; ``.mean`` is ``[N, *x_shape]``."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z).float()
        if z.ndim == 1:
            z = z.unsqueeze(0)
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise VaelabError(f"latents have shape {tuple(z.shape)}; this model decodes a 2-D tensor [N, {self.latent_dim}] "
                              f"(or one latent [{self.latent_dim}])")
        return self.vae.decode(z.to(self.device), self._generation_context(c, label, len(z)))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, seed: int | None = None, c: Any = None, label: Any = None) -> Tensor:
        """``n`` new examples decoded from z ~ p(z|c): decoder means, or draws if ``mean=False``.

        A conditional model needs the context: ``label=3`` (or a class name) for all ``n``,
        or one per sample; ``c`` ``[n, P]`` for several variables.
        """
        n = check_whole(n, "the number of samples")
        ctx = self._generation_context(c, label, n)
        if seed is None:
            return self.vae.sample(n, mean=mean, c=ctx).cpu()
        # seeded draws leave the caller's random stream where it was
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(check_whole(seed, "seed", low=0))
            return self.vae.sample(n, mean=mean, c=ctx).cpu()

    @torch.no_grad()
    def reconstruct(self, x: Any, c: Any = None, label: Any = None) -> Tensor:
        """The decoder's mean at the posterior mean: ``E[x | z = E_q[z|x, c], c]`` (count
        likelihoods: at x's own library size l, the total of its counts)."""
        xb = self.as_batch(x)
        ctx = self._own_context(xb, self.context(c, label, n=len(xb)))
        q = self.vae.encode(xb, ctx)
        p_x = self.vae.decode(q.mean, ctx)
        if getattr(self.vae.decoder, "counts", False):  # p(x|z, l): l observed, as when x is scored
            p_x = p_x.with_library(xb.reshape(len(xb), -1).sum(-1))
        return p_x.mean.cpu()

    def _own_context(self, xb: Tensor, ctx: Tensor | None) -> Tensor | None:
        """The context to decode x's own reconstruction with: the one given, or for the
        semi-supervised M2 (whose label is a latent) the class q(y|x) finds most likely."""
        if ctx is None and isinstance(self.vae, Classifier):
            return self.vae.classify(xb).probs.argmax(-1, keepdim=True).float()
        return ctx

    @torch.no_grad()
    def interpolate(
        self, x_from: Any, x_to: Any, steps: int = 10, method: Literal["linear", "spherical"] = "linear",
        c: Any = None, label: Any = None,
    ) -> Tensor:
        """Decoded means along a path between the posterior means of two inputs ``[steps, *x_shape]``.

        ``spherical`` follows the great circle (slerp), which keeps the path at the typical
        radius of a Gaussian prior instead of cutting through its low-density centre. A
        conditional model encodes both ends and decodes the path under one context (``c``
        ``[P]`` or ``label``).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise VaelabError(f"interpolation needs at least 2 steps (a whole number), got {steps!r}")
        ctx = self.context(None if c is None else torch.as_tensor(np.asarray(c), dtype=torch.float32).reshape(1, -1),
                           label, n=1)
        x0, x1 = self.as_batch(x_from, "first input"), self.as_batch(x_to, "second input")
        for what, end in (("first input", x0), ("second input", x1)):
            if len(end) != 1:
                raise VaelabError(f"the {what} holds {len(end)} examples; an interpolation runs between two: "
                                  "give one example for each end")
        ctx = self._own_context(x0, ctx)  # M2: the first input's most likely class
        z0 = self.vae.encode(x0, ctx).mean[0]
        z1 = self.vae.encode(x1, ctx).mean[0]
        path_c = None if ctx is None else ctx.expand(steps, -1)
        return self.vae.decode(interpolate_latents(z0, z1, steps, method), path_c).mean.cpu()

    @torch.no_grad()
    def elbo(self, x: Any, k: int = 1, c: Any = None, label: Any = None) -> ELBO:
        """Per-example ELBO, reconstruction and KL terms (nats), with ``k`` samples."""
        k = check_whole(k, "k (posterior samples per example)")
        xb = self.as_batch(x)
        return data_elbo(self.vae, Batch(xb, self.context(c, label, n=len(xb))), k, self.config.kl)

    def log_likelihood(self, x: Any, k: int = DEFAULTS.k, *, c: Any = None, label: Any = None,
                       batch_size: int = DEFAULTS.batch_size, k_chunk: int = DEFAULTS.k_chunk) -> LogLikelihood:
        """Importance-sampled log p(x) (log p(x|c) for a conditional model) per example with
        ``k`` samples (see :mod:`vaelab.evaluation`)."""
        xb = self.as_batch(x)
        return log_likelihood(self.vae, xb, k, batch_size=batch_size, k_chunk=k_chunk,
                              c=self.context(c, label, n=len(xb)))

    # --- the run's data -------------------------------------------------------------------
    def data(self) -> DataSplits:
        """The data splits this run was trained on (same source, fractions and seed)."""
        return load_data(self.config.data, **self.data_options())

    def data_options(self) -> dict[str, Any]:
        """:func:`load_data`'s arguments for this run's data: the config's, and for a table the
        model's own columns (types and level ids), whatever the file's cells suggest now."""
        options = self.config.data_options()
        if options.get("tabular"):
            options["column_types"] = self.spec.likelihood.options["column_types"]
        return options

    def test_set(self, data: DataSplits | None = None) -> tuple[Tensor, Tensor | None]:
        """The run's test examples as the model sees them (binarized once, with a fixed seed,
        when training used dynamic binarization) and their labels."""
        data = data or self.data()
        x = data.test
        if self.data_info.get("binarized"):
            x = binarize(x, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
        return x, data.test_labels

    def test_batch(self, data: DataSplits | None = None) -> Batch:
        """The run's test examples (as :meth:`test_set`) with their context c, when the model
        scores x given one."""
        data = data or self.data()
        x, _ = self.test_set(data)
        return Batch(x, context_columns(data, self.spec.context, "test") if self.conditional else None)

    def evaluate(
        self, settings: EvalSettings | None = None, x: Any = None, *, c: Any = None, label: Any = None,
        **changes: Any,
    ) -> Evaluation:
        """Test ELBO and its terms, -log p(x) (log p(x|c)) with K importance samples, latent
        health and the inference gap split (nats per example); ``.to_dict()`` is eval.json.

        Uses the run's test set (and its context) unless ``x`` (and ``c`` or ``label``) is
        given. ``settings`` (:class:`~vaelab.evaluation.EvalSettings`; keyword arguments
        change single fields, e.g. ``k=5000``) as in :func:`vaelab.evaluation.evaluate`; the
        KL method is the run's own unless given.
        """
        labels = None
        if x is None:
            if c is not None or label is not None:
                raise VaelabError("give c or label together with x (the run's test set brings its own context)")
            data = self.data()
            batch = self.test_batch(data)
            xb = batch.x if isinstance(batch.x, RowStore) else self.as_batch(batch.x)  # --backed: read in chunks
            ctx, labels = batch.c, data.test_labels
            if ctx is not None:
                ctx = self.context(ctx, n=len(xb), what="the test set's context")
        else:
            xb = self.as_batch(x)
            ctx = self.context(c, label, n=len(xb))
        st = settings or EvalSettings(kl=self.config.kl)
        st = st.replace(**changes) if changes else st
        from .evaluation.memory import check_evaluation_fits

        check_evaluation_fits(self.vae, xb, ctx, st)  # sizes that cannot fit: refused with the estimate, before any pass
        result = evaluate(self.vae, xb, st, c=ctx, labels=labels if self.spec.label() is not None else None)
        columns = getattr(self.vae.decoder, "columns", None)
        note = missing_note(xb, columns) if columns and isinstance(xb, Tensor) else None
        if note:  # a table with missing cells: said beside the numbers, which score the observed cells only
            result.notes.append(note)
        return result


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
        if omega.abs() < 1e-6 or not torch.isfinite(omega) or (z0.numel() < 2 and omega > 1):  # parallel, a zero vector
            return (1 - t) * z0 + t * z1
        if math.pi - omega < 1e-4:  # opposite: every great circle through both ends is one; take the half through
            # the axis least aligned with z0, at a radius going from |z0| to |z1| (the formula below gives 0 / 0)
            u0 = z0 / z0.norm()
            axis = torch.zeros_like(z0)
            axis[int(u0.abs().argmin())] = 1.0
            u1 = axis - torch.dot(axis, u0) * u0
            u1 = u1 / u1.norm()
            radius = (1 - t) * z0.norm() + t * z1.norm()  # [S, 1]
            path = radius * (torch.cos(math.pi * t) * u0 + torch.sin(math.pi * t) * u1)
            path[0], path[-1] = z0, z1  # the ends exactly
            return path
        return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)
    raise VaelabError(f"unknown interpolation {method!r}; choose linear or spherical")


def _run_name(config: TrainConfig) -> str:
    base = Path(config.data).stem if config.data else "data"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_outside_data(config: TrainConfig, run_dir: Path) -> None:
    """Refuse a run folder that would land inside (or be) the input data folder (an image folder):
    its files would become part of the data set, and every later read of that folder fails."""
    import os

    from .data import BUILTIN_DATASETS

    data = str(config.data)
    if data.lower() in BUILTIN_DATASETS or not os.path.isdir(data):
        return
    folder, run = Path(os.path.realpath(data)), Path(os.path.realpath(run_dir))
    if run == folder or folder in run.parents:
        where = "be the data folder" if run == folder else "be inside the data folder"
        raise VaelabError(f"--out '{config.out}': the run folder '{run_dir}' would {where} '{data}' and become part "
                          "of the data set; give an --out outside it, e.g. --out runs")


@releases_locks  # the run folder's lock (taken below) is held until training ends
def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    figures: bool = True,
    log: Any = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    evaluate: Callable[[TrainedModel, FitResult], EvaluationSummary | None] | None = None,
    **overrides: Any,
) -> tuple[TrainedModel, FitResult]:
    """Train a VAE as configured (or resume a run) and fill its run folder.

    ``vaelab.train(epochs=5, latent_dim=2)`` trains the classic VAE on ``mnist5k`` with
    those two settings changed. Returns the trained model (best validation epoch) and what
    the loop did. Raises :class:`TrainingStopped` if the loss became NaN.

    Under ``torchrun`` every process calls this; they train one model data-parallel
    (:mod:`vaelab.training.distributed`), rank 0 writes the run folder and logs.

    ``on_epoch(record)`` is called after each epoch with its metrics record, once the epoch's
    checkpoint is written (rank 0 only); an exception it raises (e.g. ``optuna.TrialPruned``)
    ends training there and propagates, the run folder keeping that epoch's checkpoint.

    ``evaluate(model, result)`` is called (rank 0) once the weights and figures are saved; the
    evaluation it returns (``vaelab train`` computes and saves eval.json there) is what the
    experiment trackers of ``config.log`` (:mod:`vaelab.tracking`) log with the run's files. A
    ``log`` that is not callable is the ``log`` setting: ``vaelab.train(log=["tensorboard"])``.

    ``resume`` of a run that finished its epochs is refused, unless it was interrupted after its
    last checkpoint, while its end was written: then the outputs it lacks (``metrics.jsonl``'s
    last records, the figures when ``figures``, ``eval.json`` when ``evaluate`` is given and
    ``eval_k`` > 0) are made from the saved weights and checkpoint, nothing trained, nothing
    else rewritten, and the model and the run's result are returned.
    """
    if not callable(log):  # the setting `log` (experiment trackers), not the function that prints
        overrides, log = {**overrides, "log": log}, print
    if resume is not None:
        run_dir = check_run(resume)
        check_unlocked(run_dir)  # a run being trained (maybe before its first checkpoint) is named as such first
        config = read_config(run_dir).replace(**overrides) if overrides else read_config(run_dir)
        if not (run_dir / CHECKPOINT).exists():
            raise VaelabError(missing_record(run_dir, CHECKPOINT, f"run '{run_dir}' has no checkpoint to resume from",
                                             "; train it anew"))
        state = check_run_files(run_dir)  # a damaged checkpoint fails before anything is written
        if not (run_dir / BEST_WEIGHTS).exists():  # (a checkpoint is always written with them)
            raise VaelabError(missing_record(run_dir, BEST_WEIGHTS, f"run '{run_dir}' has no trained weights",
                                             f" ({BEST_WEIGHTS})"))
        _check_records(run_dir)  # manifest.json, and a folder where a record must be written: before any write
        _check_continues(run_dir, config, state)  # a seed or lr edited in config.json: not the run continued
    else:
        config = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
        check_given(overrides, config)  # e.g. latent_dim beside latent_dims, dispersion with bernoulli
        run_dir = Path(config.out) / (check_run_name(config.name) if config.name else _run_name(config))
        check_folder(config.out, "--out folder")
        _check_outside_data(config, run_dir)
        if config.name and (run_dir / CONFIG).exists() and (run_dir / CHECKPOINT).exists():  # a default name gets a suffix
            raise VaelabError(f"run folder '{run_dir}' already holds a run; choose another --name or use --resume")
    world, device = distributed.setup(resolve_device(config.device))
    check_precision(config.precision, device)
    run_dir = world.from_main(run_dir)  # one folder for all processes (the default name holds the time)
    log = log if world.is_main else (lambda *args: None)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    objective_from(config)  # a bad combination of settings fails before anything is written
    if not world.is_main:
        world.barrier()  # rank 0 loads (and downloads) first
    data = load_data(config.data, **config.data_options())
    if world.is_main:
        world.barrier()
    variables = context_variables(data, config.condition_on, config.embedding)
    spec = config.model_spec(data.shape, variables)
    if data.columns:  # a table: the model spec keeps every column's type, levels and statistics
        spec = table_spec(spec, data.columns)
    if resume is not None:  # the run's own model, checked against its data and settings before any write
        spec = _resumed_spec(run_dir, config, data, spec)
    known = None
    if config.semi_supervised:
        assert data.train_labels is not None
        known = known_labels(data.train_labels, per_class=config.labels_per_class, fraction=config.labelled_fraction,
                             seed=config.seed, class_names=spec.context[0].names())
    objective = objective_from(config, 1.0 if known is None else batch_labelled_share(
        float(known.float().mean()), config.batch_size, config.labelled_per_batch))
    _check_model_size(config, spec, device)  # a huge latent_dim or width: refused with its estimate, nothing allocated
    torch.manual_seed(config.seed)
    vae = build_model(spec).to(device)
    unfinished: list[str] = []  # a finished run's final outputs that are missing (made again, nothing trained)
    ended = False  # a resume of a run that finished its epochs or stopped early: nothing is trained
    if resume is not None:  # a checkpoint of another model fails here, before anything is written
        load_checkpoint(run_dir / CHECKPOINT, vae, described=described_model(run_dir))
        check_weights_fit(run_dir, (BEST_WEIGHTS,))  # weights of another model copied over: named now, not after training
        stopped_early = state.get("stopped") == "early-stopping"  # (fit never continues such a run)
        if state["epoch"] >= config.epochs or stopped_early:  # (once it is known to fit)
            unfinished = _missing_outputs(run_dir, vae, spec, config, state, figures=figures,
                                          evaluates=evaluate is not None)  # (the same on every process)
            if not unfinished and not stopped_early:
                raise VaelabError(f"the run in '{run_dir}' already finished its {config.epochs} epochs; pass a larger "
                                  "--epochs to continue it")
            ended = True
    check_data(vae, data.train, what=f"training data '{config.data}'", store_rows=None)  # (--backed: block by block)
    for part in ("val", "test"):  # scored every epoch and at the end: a value the loss cannot take fails now
        if int(getattr(data, part).shape[0]):
            check_data(vae, getattr(data, part), what=f"the {'validation' if part == 'val' else part} split of "
                       f"'{config.data}'", store_rows=None)
    if getattr(vae.decoder, "counts", False):  # count likelihoods: the library-size law sampling draws l from
        vae.decoder.set_library_prior(row_totals(data.train)[:, None] if isinstance(data.train, RowStore) else data.train)
    first = split_batch(data, "train", spec.context, known)[:2].to(device)
    _check_batch_size(vae, first, config, int(data.train.shape[0]))
    objective.check(vae, first)  # e.g. STL with a flow posterior: fails here too
    binarized = _uses_binarization(config, data.kind)
    if isinstance(data.train, RowStore) and (binarized or config.labelled_per_batch):
        raise VaelabError("--backed streams batches from disk: it cannot binarize them dynamically nor add labelled rows "
                          "(--binarize none, --labelled-per-batch 0), or drop --backed")
    data_info = {"shape": list(data.shape), "kind": data.kind, "binarized": binarized,
                 "n_train": int(data.train.shape[0]), "n_val": int(data.val.shape[0]),
                 "n_test": int(data.test.shape[0]), "discrete_levels": data.discrete_levels}
    if known is not None:
        data_info["n_labelled"] = int(known.sum())
    if data.feature_names:  # so that data read later (encode, reconstruct, eval --data) is matched by name
        data_info["features"] = list(data.feature_names)
    if data.columns:  # a table: its missing cells per column, over all three splits
        data_info["missing"] = missing_cells(torch.cat([data.train, data.val, data.test]), data.columns)
    if ended:  # interrupted after its last checkpoint, while its figures or eval.json were made; or stopped early
        if world.is_main and unfinished:
            _lock_run(run_dir)
        return _finish_outputs(run_dir, unfinished, state, data, spec, config, device, world, figures, log, evaluate)
    tracking = _tracking(config, world.is_main)  # an unreachable MLflow server fails here, before anything is written
    planned, made = run_dir, False  # made: the run folder is this process's own (removed if interrupted unstarted)
    if world.is_main:  # made exclusively (a default name gets a suffix if taken) and locked
        existed = resume is None and planned.exists()
        run_dir = (create_run_folder(config.out, run_dir.name, unique=not config.name) if resume is None
                   else _lock_run(run_dir))
        made = resume is None and (run_dir != planned or not existed)
    run_dir = world.from_main(run_dir)
    try:
        if world.is_main and (resume is None or overrides):  # a resumed run records a raised --epochs
            write_run_config(run_dir, config, data_info)
        if world.is_main and resume is None:
            atomic_write_text(run_dir / SPEC, spec.to_json())
        if world.is_main:
            write_manifest(run_dir, config.to_dict(), data, device, resume=resume is not None)
        log(f"run folder: {run_dir}")
        tracking.start(spec, run_dir)
    except KeyboardInterrupt:  # Ctrl-C while the folder is set up: the name is not left taken by an empty run
        raise KeyboardInterrupt(_unstarted(run_dir, made, "interrupted while the run folder was set up")) from None
    try:
        result = fit(
            vae, data, run_dir,
            epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
            patience=config.patience, binarize=binarized, objective=objective,
            resume=resume is not None, progress=progress, compile=config.compile, precision=config.precision,
            variables=spec.context, known=known, labelled_per_batch=config.labelled_per_batch,
            nan_retries=config.nan_retries, checkpoint_every=config.checkpoint_every,
            on_epoch=_chain(tracking.epoch if tracking else None, on_epoch),
        )
    except BaseException as error:
        tracking.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        if isinstance(error, KeyboardInterrupt) and resume is None:
            raise KeyboardInterrupt(_unstarted(run_dir, made, str(error) or "interrupted")) \
                from None
        raise
    if result.stopped == "interrupted" and resume is None:
        result.message = _unstarted(run_dir, made, result.message)
    if result.stopped in ("nan", "interrupted"):
        tracking.close("FAILED" if result.stopped == "nan" else "KILLED")
    if result.stopped != "completed" and result.stopped != "early-stopping":
        distributed.teardown()
    if result.stopped == "nan":
        raise TrainingStopped(result.message)
    if result.stopped == "interrupted":  # the caller says it (vaelab train's one line), not the log as well
        raise KeyboardInterrupt(result.message)
    if result.message:
        log(result.message)
    model = load(run_dir, device=device)
    distributed.teardown()
    try:
        if figures and world.is_main:
            _final_figures(model, data, result, run_dir)
    except KeyboardInterrupt:  # Ctrl-C after the last checkpoint: --resume makes what is missing
        tracking.close("KILLED")
        raise KeyboardInterrupt(_interrupted_at_end(run_dir)) from None
    try:
        evaluation = evaluate(model, result) if evaluate is not None and world.is_main else None
    except BaseException as error:  # the model is trained and saved: the loggers get it, unevaluated
        if isinstance(error, Exception):
            _finish_tracking(tracking, model, result, None, data)
        tracking.close("KILLED")
        if isinstance(error, KeyboardInterrupt):
            raise KeyboardInterrupt(_interrupted_at_end(run_dir)) from None
        raise
    _finish_tracking(tracking, model, result, evaluation, data)
    return model, result


_FIGURES = ("reconstructions.png", "samples.png", "curves.png")  # drawn once training ends (and manifold.png)
_MANIFOLD = "manifold.png"


def _draws_manifold(vae: VAE, spec: ModelSpec) -> bool:
    """Whether a run's figures include the latent manifold: images and a 2-D latent, p(x|z) only."""
    return vae.latent_dim == 2 and len(vae.x_shape) == 3 and not spec.context


def _final_figures(model: TrainedModel, data: DataSplits, result: FitResult, run_dir: Path,
                   only: Sequence[str] | None = None) -> None:
    """Draw the figures a finished run holds (all, or those named in ``only``): the same
    pictures whichever are drawn, since every one is computed in the same order from the seed."""
    from .plots import latent_manifold, reconstruction_grid, image_grid, training_curves

    def wanted(name: str) -> bool:
        return only is None or name in only

    spec, seed = model.spec, model.config.seed
    test = model.test_batch(data)
    torch.manual_seed(seed)
    recon = model.reconstruct(test.x[:32], None if test.c is None else test.c[:32])
    if wanted("reconstructions.png"):
        reconstruction_grid(test.x[:32], recon, run_dir / "reconstructions.png",
                            title="test inputs and their reconstructions")
    if spec.context:  # generation needs a context: the test set's own, in order
        contexts = context_columns(data, spec.context, "test")[:64]
        samples, title = model.sample(len(contexts), c=contexts), "decoded from z ~ p(z|c), c of the first test examples"
    else:
        samples, title = model.sample(64), "decoded from z ~ p(z)"
    if wanted("samples.png"):
        image_grid(samples, run_dir / "samples.png", title=title)
    if wanted("curves.png"):
        training_curves(result.metrics, run_dir / "curves.png")
    if _draws_manifold(model.vae, spec) and wanted(_MANIFOLD):
        latent_manifold(model.vae, run_dir / _MANIFOLD)


def _interrupted_at_end(run_dir: Path) -> str:
    """What an interruption after the last epoch's checkpoint, while the figures or the
    evaluation were made, leaves, and how to finish the run."""
    return (f"interrupted after the last epoch, while the final outputs of '{run_dir}' were made; its weights and "
            f"checkpoint are saved: 'vaelab train --resume {run_dir}' makes the missing ones without training")


def _missing_outputs(run_dir: Path, vae: VAE, spec: ModelSpec, config: TrainConfig, state: dict[str, Any], *,
                     figures: bool, evaluates: bool) -> list[str]:
    """What a finished run lacks of the outputs its end writes after the last checkpoint, in the
    order they are written: ``metrics.jsonl`` (or its last records), the figures (when ``figures``)
    and ``eval.json`` (when ``evaluates``: ``vaelab train`` evaluates a run with ``eval_k`` > 0).
    A run interrupted (Ctrl-C, kill -9) while they were made lacks some; a complete run none."""
    import warnings

    missing = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a last line cut short is a record missing)
            behind = len(read_metrics(run_dir)) < len(state["metrics"])
    except VaelabError:  # a damaged line: named by whoever reads it, not rewritten here
        behind = False
    if behind or not (run_dir / METRICS).exists():
        missing.append(METRICS)
    if figures:
        missing += [n for n in (*_FIGURES, *[_MANIFOLD] * _draws_manifold(vae, spec)) if not (run_dir / n).exists()]
    if evaluates and config.eval_k > 0 and not (run_dir / EVAL).exists():
        missing.append(EVAL)
    return missing


def _finish_outputs(run_dir: Path, missing: list[str], state: dict[str, Any], data: DataSplits, spec: ModelSpec,
                    config: TrainConfig, device: torch.device, world: Any, figures: bool, log: Any,
                    evaluate: Callable[[TrainedModel, FitResult], EvaluationSummary | None] | None,
                    ) -> tuple[TrainedModel, FitResult]:
    """``--resume`` of a finished run that was interrupted after its last checkpoint, while its
    final outputs were made: make the ``missing`` ones from the saved weights and checkpoint,
    training nothing and rewriting nothing else (its settings, manifest and weights stay). A run
    that stopped early is never trained further: with nothing missing, nothing is written."""
    from .training.loop import _write_metrics

    stopped = "early-stopping" if state.get("stopped") == "early-stopping" else "completed"
    result = FitResult(stopped, state["epoch"], state["best_epoch"], state["best_val_elbo"], state["metrics"])
    if not missing:  # (only a run that stopped early gets here with nothing missing)
        log(f"the run in '{run_dir}' stopped early at epoch {state['epoch']} (its validation ELBO had not improved for "
            f"{config.patience} epochs) and is complete: nothing to continue or to make; a new run with a larger "
            "--patience trains longer")
        model = load(run_dir, device=device)
        distributed.teardown()
        return model, result
    named = ", ".join(missing)
    how = "stopped early at epoch" if stopped == "early-stopping" else "already finished its"
    log(f"the run in '{run_dir}' {how} {state['epoch']}{'' if stopped == 'early-stopping' else ' epochs'}, but {named} "
        f"{'was' if len(missing) == 1 else 'were'} missing (interrupted at its end): made from its saved weights "
        "and checkpoint, without training further")
    if world.is_main and METRICS in missing:
        _write_metrics(run_dir / METRICS, state["metrics"])
    model = load(run_dir, device=device)
    distributed.teardown()
    if figures and world.is_main and any(n in missing for n in (*_FIGURES, _MANIFOLD)):
        _final_figures(model, data, result, run_dir, only=missing)
    if evaluate is not None and world.is_main and EVAL in missing:
        evaluate(model, result)
    return model, result


_RECORDS = (CONFIG, SPEC, "manifest.json", METRICS, EVENTS, CHECKPOINT, PREVIOUS_CHECKPOINT, BEST_WEIGHTS, "eval.json",
            "mlflow.json", "reconstructions.png", "samples.png", "curves.png", "manifold.png")  # what a resume writes


def _check_records(run_dir: Path) -> None:
    """Before a resume writes anything: every record it rewrites is a plain file (or absent),
    and ``manifest.json``, which it extends, reads as a manifest."""
    from .manifest import read_manifest

    for name in _RECORDS:
        path = run_dir / name
        if path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a plain file"
            raise VaelabError(f"run '{run_dir}': '{path}' is {kind}, where the run keeps a file; move it away (or "
                              "restore the file from a backup) and resume again")
    read_manifest(run_dir)  # corrupt or not a manifest: named, before config.json is rewritten


_START_FILES = (CONFIG, SPEC, "manifest.json", METRICS, EVENTS)  # what a new run writes before its first checkpoint


def _unstarted(run_dir: Path, made: bool, said: str) -> str:
    """``said`` (an interruption's message), after removing the new run folder ``run_dir`` when
    it holds no checkpoint, was made by this process (``made``) and holds nothing but its start
    files; otherwise, without a checkpoint, the message names the folder to delete."""
    if (run_dir / CHECKPOINT).exists():
        return said
    try:
        names = [p.name for p in run_dir.iterdir()]
        if made and all(n in _START_FILES or n.startswith(".") for n in names):  # (.lock, an interrupted write's temp)
            for n in names:
                (run_dir / n).unlink()
            run_dir.rmdir()
            return f"{said}; its run folder '{run_dir}' held no checkpoint and was removed"
    except OSError:
        pass
    return f"{said}; '{run_dir}' holds no checkpoint: delete it to reuse the name"


def _check_continues(run_dir: Path, config: TrainConfig, state: dict[str, Any]) -> None:
    """Refuse a resume whose ``config.json`` has another learning rate than its checkpoint's
    optimizer (over the NaN recovery's factor) or another seed than the run recorded in
    ``manifest.json``: training would go on as another run, and ``vaelab verify`` say "differs"."""
    from .manifest import read_manifest
    from .training.checkpoint import read_metadata

    def refuse(field: str, now: Any, was: Any, where: str) -> VaelabError:
        return VaelabError(f"run '{run_dir}': {CONFIG} says {field} {now}, but the run was trained with {field} {was} "
                           f"({where}); a resume continues the run only with its own settings: restore {field} {was} "
                           f"in {CONFIG}, or train a new run")

    recovery = state.get("recovery") if isinstance(state.get("recovery"), dict) else {}
    factor = recovery.get("lr_factor", 1.0)
    groups = read_metadata(run_dir / CHECKPOINT)["optimizer"]["param_groups"]  # (checked by check_run_files)
    if groups and isinstance(factor, (int, float)) and factor > 0:
        was = groups[0]["lr"] / factor
        if not math.isclose(config.lr * factor, groups[0]["lr"], rel_tol=1e-9):
            raise refuse("lr", f"{config.lr:g}", f"{was:g}", f"its checkpoint {CHECKPOINT}")
    manifest = read_manifest(run_dir) or {}
    sessions = [manifest, *manifest.get("resumed", [])]
    settings = sessions[-1].get("settings") if isinstance(sessions[-1], dict) else None
    seed = settings.get("seed") if isinstance(settings, dict) else None
    if isinstance(seed, int) and not isinstance(seed, bool) and seed != config.seed:
        raise refuse("seed", config.seed, seed, "manifest.json")


def _resumed_spec(run_dir: Path, config: TrainConfig, data: DataSplits, expected: ModelSpec) -> ModelSpec:
    """The model spec of a run being resumed (``model.json``), refused in one line when its data
    no longer match what the run recorded (shape, split sizes) or when ``model.json`` and
    ``config.json`` describe different models (one of them edited by hand)."""
    recorded = read_run_config(run_dir / CONFIG)["data"]
    if list(data.shape) != recorded["shape"]:
        raise VaelabError(f"run '{run_dir}' was trained on examples of shape {tuple(recorded['shape'])}, but its data "
                          f"'{config.data}' now has {tuple(data.shape)}: restore that data, or train a new run")
    now = {"n_train": int(data.train.shape[0]), "n_val": int(data.val.shape[0]), "n_test": int(data.test.shape[0])}
    changed = [f"{k} {recorded[k]} -> {v}" for k, v in now.items() if k in recorded and recorded[k] != v]
    if changed:
        raise VaelabError(f"run '{run_dir}': its data '{config.data}' changed since it was trained ({', '.join(changed)}); "
                          "restore that data, or train a new run")
    spec = read_spec(run_dir, config, list(data.shape))
    if (run_dir / SPEC).exists():
        ours, theirs = spec.to_dict(), expected.to_dict()
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise VaelabError(f"run '{run_dir}': {SPEC} and {CONFIG} describe different models ({', '.join(differ)} "
                              "differ; one was edited by hand): restore it from a backup, or train a new run")
    return spec


def _check_model_size(config: TrainConfig, spec: ModelSpec, device: torch.device, factor: float | None = None) -> None:
    """Refuse a model too large to train (or, ``factor`` given, to load) with the estimate,
    counting its parameters on the meta device (:func:`~vaelab.evaluation.memory.check_model_fits`).
    Parts that cannot be built there (flows, VampPrior) are counted by the same model with a
    Gaussian posterior and a normal prior: the networks, which is most of it."""
    from .evaluation.memory import TRAINING_FACTOR, check_bytes, parameter_count

    hidden = ",".join(map(str, config.hidden)) if isinstance(config.hidden, (list, tuple)) else config.hidden
    sizes = {"--latent-dims" if config.latent_dims else "--latent-dim":  # the settings that size the model
             ",".join(map(str, config.latent_dims)) if config.latent_dims else spec.latent_dim,
             "--hidden": hidden, **({"--embedding": config.embedding} if config.embedding else {})}
    culprits = ", ".join(f"{k} {v}" for k, v in sizes.items())
    names = list(sizes)[-1:] * bool(config.embedding) + list(sizes)[:2]  # --embedding first when given
    fix = f"choose a smaller {', '.join(names[:-1])} or {names[-1]}"
    doing = "trained with Adam" if factor is None else "loaded"

    def check(make: Callable[[], torch.nn.Module]) -> int | None:
        n = parameter_count(make)
        if n is not None:
            check_bytes(n * 4.0 * (factor or TRAINING_FACTOR), f"a model of {n:,} parameters ({culprits}), {doing},",
                        fix, device)
        return n

    with torch.random.fork_rng(devices=[]):
        if check(lambda: build_model(spec)) is None:
            try:
                plain = config.replace(posterior="gaussian", prior="normal").model_spec(spec.x_shape, spec.context)
            except VaelabError:
                return
            check(lambda: build_model(plain))


def _check_batch_size(vae: VAE, first: Batch, config: TrainConfig, n_train: int) -> None:
    """Refuse a training batch (B examples x K samples) whose activations would not fit, with the estimate."""
    from .evaluation.memory import check_rows_fit

    b = min(config.batch_size, max(1, n_train)) + config.labelled_per_batch
    with torch.random.fork_rng(devices=[]):
        check_rows_fit(vae, first.x[:1], None if first.c is None else first.c[:1], b * config.k,
                       what=f"a training batch of {b} examples x {config.k} samples (--batch-size, --k)",
                       fix="lower --batch-size or --k")


def _tracking(config: TrainConfig, is_main: bool) -> Tracking:
    """The experiment trackers ``config.log`` asks for, connected (rank 0; none elsewhere)."""
    from .tracking import make_loggers

    return make_loggers(config) if config.log and is_main else Tracking([], config)


def _chain(*callbacks: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None] | None:
    """One per-epoch callback calling each given one in turn (None when none is given)."""
    given = [f for f in callbacks if f is not None]
    if not given:
        return None

    def each(record: dict[str, Any]) -> None:
        for f in given:
            f(record)

    return each


def _finish_tracking(tracking: Tracking, model: TrainedModel, result: FitResult, evaluation: EvaluationSummary | None,
                     data: DataSplits) -> None:
    """Hand the finished run (model, evaluation, test set, run folder) to the loggers; a
    failure is a warning, the run folder stays complete."""
    from .tracking import Finished

    if not tracking:
        return
    try:
        test = model.test_batch(data)
        contexts = context_columns(data, model.spec.context, "test") if model.spec.context else None
        run = Finished(model=model, result=result, evaluation=evaluation, test=test, labels=data.test_labels,
                       contexts=contexts)
    except Exception as error:  # noqa: BLE001 - logging never fails a finished run
        tracking.warn(f"the loggers could not be given the finished run ({error}); their runs stay incomplete")
        tracking.close("FAILED")
        return
    tracking.finish(run)


def _lock_run(run_dir: Path) -> Path:
    """Lock a run folder to resume it (refused while another process trains it) and remove the
    temporary files of writes that an interruption cut short (nobody else writes it now)."""
    lock_folder(run_dir)
    clean_stale_temps(run_dir, older_than=0)
    return run_dir


def load(run: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """Load the best weights of a run folder as a :class:`TrainedModel` (eval mode).

    The model is rebuilt from the run's spec (``model.json``) through the registry of parts,
    so any model vaelab can build loads, conditional and semi-supervised ones included.

    ``run`` may also be an MLflow URI, ``runs:/<run_id>`` (a run logged with ``--log mlflow``)
    or ``mlflow-artifacts:/...``: its files are downloaded into the cache folder and loaded as
    a run folder (:func:`vaelab.tracking.mlflow.download_run`)."""
    from .tracking import is_mlflow_uri

    if is_mlflow_uri(run):
        from .tracking.mlflow import download_run

        run = download_run(str(run))
    run_dir = check_run(run)
    doc = read_run_config(run_dir / CONFIG)
    config = TrainConfig.from_mapping(doc["config"], source=str(run_dir / CONFIG))
    spec = read_spec(run_dir, config, doc["data"].get("shape") if isinstance(doc["data"], dict) else None)
    dev = resolve_device("auto" if device is None else str(device))
    weights = run_dir / BEST_WEIGHTS
    if not weights.exists():
        raise VaelabError(missing_record(run_dir, BEST_WEIGHTS, f"run '{run_dir}' has no trained weights",
                                         f" ({BEST_WEIGHTS}); it did not finish an epoch"))
    _check_model_size(config, spec, dev, factor=2)  # an edited model.json cannot allocate without bound
    vae = build_model(spec)
    load_weights(weights, vae, "weights file", described_model(run_dir))
    vae.to(dev).eval()
    return TrainedModel(vae=vae, config=config, run_dir=run_dir, data_info=doc["data"], device=dev, spec=spec)
