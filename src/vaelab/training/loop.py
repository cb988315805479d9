"""The training loop: Adam on the negative ELBO, validation, early stopping, checkpoints.

One epoch: a fresh Bernoulli draw of the training pixels (dynamic binarization, when asked),
a fresh shuffle (x, its context c and the known-label mask permuted together), then one
optimizer step per mini-batch on

    loss = -(1/B) sum_b ELBO(x_b)          (nats per example; reconstruction - KL, no hidden weights)

with B the configured batch size, also for the epoch's last, partial batch: its n < B examples
weigh n/B of a full batch, as each example weighs the same in a summed loss. (Its mean at full
weight gave those few examples a whole step's weight once per epoch and cost about half a nat
of test log p(x) at the classic setting: ``benchmarks/quality_ablation.py``.)

(or whatever the :class:`~vaelab.objectives.Objective` says). After each epoch the validation
ELBO is computed, the metrics are appended, and the checkpoint is replaced atomically. Every
random draw of epoch ``e`` comes from a seed derived from ``(seed, e)``, so a run resumed from
the checkpoint of epoch ``e - 1`` continues exactly as the uninterrupted run would have: same
seed, same machine, same numbers.

Speed (see ``benchmarks/speed.py``): the data live on the model's device as one tensor; each
epoch is binarized and permuted there in one go and the batches are slices of it; Adam is
PyTorch's fused kernel called without its per-step Python bookkeeping
(:mod:`vaelab.training.optim`); the common model (MLP encoder and decoder, Gaussian posterior,
N(0, I) prior, Bernoulli likelihood, the ELBO with one sample) takes a fast path whose loss
and gradients are written out by hand (:mod:`vaelab.training.fastpath`; same maths, same draws); the host reads the device only every ``SYNC_EVERY``
steps (on CUDA one period late, so the GPU never drains), which is where a non-finite loss is
noticed; its step is known exactly from a per-step record, and the end-of-epoch check comes
before any file is written, so a NaN never reaches a checkpoint. Optional: ``compile``
(``torch.compile`` of the forward pass) and ``precision="bfloat16"`` (CUDA autocast).
Data left on disk (``--backed``: ``data.train`` a :class:`~vaelab.data.streaming.RowStore`)
are not moved to the device: each epoch's batches are read from disk in a seeded order of
shuffled blocks (:func:`streamed_epoch`), by a background thread.

Semi-supervised training (``labelled_per_batch`` L > 0): besides its B ordinary rows, every
batch gets L rows drawn from the examples whose label is known (:func:`labelled_rows`: the
known rows of the epoch's visiting order, cycled through seeded permutations, so each labelled
example comes back equally often and a resumed run draws the same rows). The batch then holds
B + L rows; how the model weights them is its business (M2: :mod:`vaelab.m2`, "Labelled rows in
every batch"). With L = 0 the loop is exactly the plain one.

Several processes (``torchrun``, see :mod:`vaelab.training.distributed`): the gradients of each
global batch are averaged by DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..context import Batch, Variable
from ..data import Binarizer, DataSplits, binarize as draw_binary, split_batch
from ..data.streaming import BUFFER, EpochStream, RowStore, block_rows, epoch_order
from ..errors import VaelabError
from ..evaluation import dataset_elbo
from ..inputs import check_data, check_whole
from ..model import VAE
from ..objectives import Objective
from .checkpoint import atomic_write_text, keep_previous, load_checkpoint, save_checkpoint, save_weights
from .distributed import World, world as current_world
from .fastpath import fast_step
from .optim import make_optimizer
from .recovery import EVENTS, NanRecovery

__all__ = ["fit", "FitResult", "CHECKPOINT", "PREVIOUS_CHECKPOINT", "BEST_WEIGHTS", "METRICS", "PRECISIONS", "SYNC_EVERY",
           "epoch_seed", "noise_seed", "EpochBuffers", "epoch_data", "streamed_epoch", "labelled_rows", "check_precision"]

CHECKPOINT = "checkpoint.safetensors"  # last epoch: weights + optimizer + state (for --resume)
PREVIOUS_CHECKPOINT = "checkpoint.previous.safetensors"  # the epoch before (for vaelab verify)
BEST_WEIGHTS = "model.safetensors"  # weights of the epoch with the best validation ELBO
METRICS = "metrics.jsonl"  # one JSON record per epoch
PRECISIONS = ("float32", "bfloat16")
SYNC_EVERY = 10  # steps between two reads of the device by the host (progress, NaN check)


@dataclass
class FitResult:
    """What :func:`fit` did. ``stopped`` is one of ``"completed"``, ``"early-stopping"``,
    ``"nan"`` (the loss became NaN/inf; the run folder keeps the last good checkpoint, the model
    in memory may not) or ``"interrupted"`` (Ctrl-C; resume from the last checkpoint)."""

    stopped: str
    epochs_done: int
    best_epoch: int
    best_val_elbo: float | None  # None: trained without a validation set (the last epoch is the model)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw in ``epoch`` (1-based) of a run seeded with ``seed``."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def noise_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of the reparameterization noise of process ``rank`` in ``epoch``.

    Rank 0 (and a single process) uses :func:`epoch_seed`; the others draw other noise.
    """
    s = epoch_seed(seed, epoch)
    return s if rank == 0 else (s + rank * 2_654_435_761) % (2**63 - 1)


class EpochBuffers:
    """What :func:`epoch_data` keeps from one epoch to the next: the memory of the binarized and
    the permuted x (the same numbers as fresh tensors, without allocating and page-faulting in
    two copies of the training set every epoch) and the :class:`~vaelab.data.Binarizer` of the
    training x (its list of uncertain pixels is found once, not every epoch)."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []  # [drawn, visited]: the returned x lives in these until the next epoch
        self._binarizer: Binarizer | None = None

    def binarizer(self, x: Tensor) -> Binarizer:
        if self._binarizer is None or self._binarizer.x is not x:
            self._binarizer = Binarizer(x)
        return self._binarizer

    def pair(self, x: Tensor) -> list[Tensor]:
        if len(self.tensors) != 2 or self.tensors[0].shape != x.shape or self.tensors[0].dtype != x.dtype:
            self.tensors = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(2)]
        return self.tensors


def epoch_data(train: Tensor | Batch, seed: int, epoch: int, binarize: bool,
               buffers: EpochBuffers | None = None) -> Batch:
    """The training examples of ``epoch`` in the order the loop visits them, a :class:`Batch`.

    On ``train``'s device, from one generator seeded by :func:`epoch_seed`: a Bernoulli draw of
    every pixel (when ``binarize``; :class:`~vaelab.data.Binarizer`: a uniform number only for
    the pixels strictly between 0 and 1), then one permutation of x, c and the known-label mask.
    Batch ``i`` is rows ``[i * B, (i + 1) * B)``; every process of a distributed run holds the
    same tensors.

    ``buffers`` (the same :class:`EpochBuffers` each epoch) lets the x of one epoch reuse the
    memory of the previous one: the same numbers. The returned x then lives in those buffers
    until the next call.
    """
    train = train if isinstance(train, Batch) else Batch(train)
    gen = torch.Generator(device=train.x.device).manual_seed(epoch_seed(seed, epoch))
    if buffers is None:
        x = Binarizer(train.x)(gen) if binarize else train.x
        perm = torch.randperm(len(train), generator=gen, device=train.x.device)
        return Batch(x, train.c, train.known)[perm]
    drawn, visited = buffers.pair(train.x)
    x = buffers.binarizer(train.x)(gen, out=drawn) if binarize else train.x
    perm = torch.randperm(len(train), generator=gen, device=train.x.device)
    torch.index_select(x, 0, perm, out=visited)
    return Batch(visited, None if train.c is None else train.c[perm], None if train.known is None else train.known[perm])


def streamed_epoch(train: Batch, seed: int, epoch: int) -> EpochStream:
    """The training examples of ``epoch`` in visiting order when x stays on disk (``train.x`` a
    :class:`~vaelab.data.streaming.RowStore`, ``--backed``): seeded by :func:`epoch_seed` like
    :func:`epoch_data`, but in shuffled blocks of contiguous rows
    (:func:`~vaelab.data.streaming.epoch_order`), read ahead by a background thread. Slice it
    like a Batch, in order; close it when the epoch ends."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    block = block_rows(train.x)  # type: ignore[arg-type]
    return EpochStream(train.x, epoch_order(len(train), gen, block, BUFFER), train.c, train.known,  # type: ignore[arg-type]
                       group=block * BUFFER)


def labelled_rows(known: Tensor, seed: int, epoch: int, steps: int, per_batch: int) -> Tensor:
    """Which rows of the epoch's visiting order each batch adds as its labelled rows: ``[steps, L]``.

    ``known`` ``[N]`` bool is the known-label mask in visiting order (``epoch_data(...).known``).
    The N_l known rows are cycled through independent permutations (one generator seeded from
    ``(seed, epoch)``, apart from :func:`epoch_data`'s), so in one epoch each labelled example
    is drawn floor or ceil of steps L / N_l times, and the same epoch always draws the same rows.
    """
    positions = torch.nonzero(known, as_tuple=True)[0]  # [N_l]
    n_l = positions.numel()
    if n_l == 0:
        raise VaelabError("labelled_per_batch needs known labels, but no training example has one; "
                          "keep some with --labels-per-class or --labelled-fraction")
    gen = torch.Generator(device=known.device).manual_seed((epoch_seed(seed, epoch) + 104_729) % (2**63 - 1))
    need = steps * per_batch
    draws = torch.cat([torch.randperm(n_l, generator=gen, device=known.device) for _ in range(-(-need // n_l))])
    return positions[draws[:need]].reshape(steps, per_batch)  # [steps, L]


class _TrainStep(nn.Module):
    """The forward pass of one step as a module, for DistributedDataParallel and torch.compile.

    Returns the loss and ``[loss, sum ELBO, sum reconstruction, sum KL]`` over the batch
    (detached, float32). With ``precision="bfloat16"`` the objective runs under CUDA autocast:
    the matrix products of the networks run in bfloat16, while autocast keeps the ops that
    make up the log-densities and the KL (softplus, log, exp, pow, sum,
    binary_cross_entropy_with_logits) in float32, so z, log q(z|x), log p(x|z), the KL and
    every sum over dimensions and examples are float32.
    """

    def __init__(self, model: VAE, objective: Objective, precision: str) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.precision = precision

    def forward(self, x: Tensor, progress: float, c: Tensor | None = None,
                known: Tensor | None = None) -> tuple[Tensor, Tensor]:
        autocast = (torch.autocast(x.device.type, dtype=torch.bfloat16) if self.precision == "bfloat16"
                    else contextlib.nullcontext())
        with autocast:
            loss, terms = self.objective.loss(self.model, Batch(x, c, known), progress)
        loss = loss.float()
        stats = torch.stack([loss, terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()])
        return loss, stats.detach().float()


class _Lagged:
    """Small device tensors read by the host without draining the device.

    On CUDA a snapshot is copied to pinned memory asynchronously and read one call later
    (waiting, if at all, only for that copy, while the next steps are already queued); on
    other devices at once. Every process reads the same snapshots, so they decide alike.
    """

    def __init__(self, device: torch.device) -> None:
        self.lag = device.type == "cuda"
        self.pending: tuple[Tensor, Any, Any] | None = None

    def push_and_read(self, t: Tensor, tag: Any = None) -> tuple[list[float], Any] | None:
        """Start reading ``t``; the values (and tag) of the newest snapshot ready, or None."""
        if not self.lag:
            return t.tolist(), tag
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self.pending = self.pending, (host, event, tag)
        if previous is None:
            return None
        previous[1].synchronize()
        return previous[0].tolist(), previous[2]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in (before any file is written)."""
    if precision not in PRECISIONS:
        raise VaelabError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bfloat16" and device.type != "cuda":
        raise VaelabError(
            f"precision 'bfloat16' is CUDA autocast; on {device.type} autocast would compute the "
            "posterior samples and log-densities in bfloat16 too; use precision float32"
        )


def _nan_message(log: Tensor, done: int, w: World, epoch: int, run_dir: Path, kept: int | None = None) -> str:
    """Names the first step (over all processes of ``w``) whose record is not finite."""
    bad = (~torch.isfinite(log[:done])).any(1)  # [done]
    first = torch.where(bad.any(), bad.int().argmax(), torch.tensor(done, device=log.device))
    step = int(w.all_min(first.reshape(1).long())[0])
    value = float(log[step, 0]) if step < done else math.nan
    return (f"training loss became {value if not math.isfinite(value) else 'non-finite'} at epoch {epoch}, "
            f"step {step + 1}; {_stopped(run_dir, epoch - 1 if kept is None else kept)}; try a lower --lr")


def _first_bad(log: Tensor, done: int, w: World) -> tuple[int, float]:
    """The first step (0-based, over all processes of ``w``) whose record is not finite, and its loss."""
    bad = (~torch.isfinite(log[:done])).any(1)  # [done]
    first = torch.where(bad.any(), bad.int().argmax(), torch.tensor(done, device=log.device))
    step = int(w.all_min(first.reshape(1).long())[0])
    return min(step, max(0, done - 1)), float(log[step, 0]) if step < done else math.nan


def _compile_failed(error: BaseException) -> bool:
    """Whether ``error`` came from torch.compile (tracing, or the backend's code generation)."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(error, TorchDynamoException) or type(error).__module__.startswith("torch._inductor")


class _Weights:
    """A state dict held in memory, saved like a model (:func:`save_weights` reads ``state_dict()``)."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Tensor]:
        return self.state


def _write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    import json

    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in metrics))


def _stopped(run_dir: Path, kept: int) -> str:
    """What a stopped run leaves behind: the checkpoint of epoch ``kept`` (the last one
    written: the epoch before, or older with ``checkpoint_every``), if any."""
    if kept > 0:
        return f"stopped and kept the last good checkpoint (epoch {kept}) in '{run_dir}'"
    return f"stopped before the first epoch finished, so '{run_dir}' holds no checkpoint"


def _validation(model: VAE, val: Batch, objective: Objective, w: World) -> tuple[float, float, float]:
    """The validation ELBO and its terms; each process scores its shard and the sums are shared."""
    model.eval()
    if w.size == 1:
        v = dataset_elbo(model, val.x, kl=objective.kl, c=val.c)
        return v.elbo, v.reconstruction, v.kl
    lo, hi = w.shard(len(val))
    device = val.x.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    if hi > lo:
        part = val[lo:hi]
        v = dataset_elbo(model, part.x, kl=objective.kl, c=part.c)
        sums += torch.tensor([v.elbo, v.reconstruction, v.kl], dtype=torch.float64, device=device) * (hi - lo)
    e, r, k = (w.all_sum(sums) / len(val)).tolist()
    return e, r, k


def _check_arguments(model: VAE, data: DataSplits, *, epochs: int, batch_size: int, lr: float, patience: int,
                     nan_retries: int) -> None:
    """:func:`fit`'s numbers and data, refused in one line before a file is written: whole
    numbers in range, a finite positive learning rate, and training (and validation) rows of
    the model's shape with values in its likelihood's support (:func:`vaelab.inputs.check_data`)."""
    check_whole(epochs, "epochs")
    check_whole(batch_size, "batch_size")
    check_whole(patience, "patience", low=0)
    check_whole(nan_retries, "nan_retries", low=0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise VaelabError(f"lr must be a finite number > 0, got {lr!r}")
    check_data(model, data.train, what="training data", store_rows=None)  # (on disk: in the store's scan blocks)
    if data.val.shape[0] > 0:
        check_data(model, data.val, what="validation data", store_rows=None)


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
    compile: bool = False,
    precision: str = "float32",
    variables: tuple[Variable, ...] = (),
    known: Tensor | None = None,
    labelled_per_batch: int = 0,
    nan_retries: int = 2,
    checkpoint_every: float = 0.0,
) -> FitResult:
    """Train ``model`` on ``data.train`` and keep its checkpoints in ``run_dir``.

    Args:
        epochs: the total number of epochs (a resumed run continues up to it).
        batch_size, lr: mini-batch size and Adam's learning rate. In a distributed run the
            batch is global: each of the ``W`` processes takes about ``batch_size / W`` of it.
        seed: the run's seed; every epoch's draws derive from it (see :func:`epoch_seed`).
        patience: stop when the validation ELBO has not improved for this many epochs
            (0: never stop early).
        binarize: draw x ~ Bernoulli(pixels) afresh each epoch (dynamic binarization); the
            validation set is binarized once, with a fixed seed.
        objective: what to maximise (default: the ELBO with one sample and the closed-form
            KL when one exists); the logged terms are always the true ELBO's.
        resume: continue from ``run_dir/checkpoint.safetensors``.
        progress: show a progress bar with the running ELBO.
        on_epoch: called with each epoch's metrics record (on rank 0 only).
        compile: run the forward pass through ``torch.compile`` (the first steps pay for the
            compilation).
        precision: ``"float32"``, or ``"bfloat16"`` for CUDA autocast (see ``_TrainStep``).
        variables: the model's conditioning variables (its spec's ``context``): each batch
            carries their columns c (:func:`vaelab.data.split_batch`); empty for none.
        known: ``[N_train]`` bool, which training labels semi-supervised training sees.
        labelled_per_batch: semi-supervised training: add this many rows with a known label to
            every batch (:func:`labelled_rows`), besides its ``batch_size`` ordinary rows;
            0 (the default): none, the plain loop.
        nan_retries: when the loss or the validation ELBO turns NaN/inf, roll back to the
            start of the epoch, halve the learning rate and train it again, at most this many
            times in the run (:mod:`vaelab.training.recovery`); 0: stop at the first NaN.
        checkpoint_every: seconds; 0 (the default) writes the checkpoint, the best weights and
            metrics.jsonl after every epoch. Above 0 they are written when that long has passed
            since the last write, and always after the last epoch and when stopping early: for
            data so small that an epoch takes less time than writing its files. The best
            weights wait in memory meanwhile; a run stopped in between (Ctrl-C, kill, NaN)
            resumes from the last checkpoint written, as exactly as from any other.

    A process group set up beforehand (:func:`vaelab.training.distributed.setup`) makes this
    one replica of a data-parallel run: the model is wrapped in DistributedDataParallel and
    only rank 0 writes to ``run_dir``.
    """
    objective = objective or Objective()
    run_dir = Path(run_dir)
    device = next(model.parameters()).device
    check_precision(precision, device)
    _check_arguments(model, data, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                     nan_retries=nan_retries)  # before anything is written
    w = current_world()
    if w.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model, lr)

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
        if w.is_main:
            _write_metrics(run_dir / METRICS, metrics)  # drop records newer than the checkpoint

    if start_epoch > epochs:
        raise VaelabError(
            f"the run in '{run_dir}' already finished its {epochs} epochs; pass a larger "
            "--epochs to continue it"
        )
    if labelled_per_batch < 0:
        raise VaelabError(f"labelled_per_batch must be >= 0, got {labelled_per_batch}")
    if labelled_per_batch and (known is None or not bool(known.any())):
        raise VaelabError("labelled_per_batch needs semi-supervised training with some known labels; "
                          "give the known-label mask (--semi-supervised with --labels-per-class N)")
    recovery = NanRecovery(nan_retries, lr, state.get("recovery") if resume else None, report=progress and w.is_main,
                           on_event=(lambda events: _write_metrics(run_dir / EVENTS, events)) if w.is_main else None)
    if resume and w.is_main and (run_dir / EVENTS).exists():
        _write_metrics(run_dir / EVENTS, recovery.events)  # drop events newer than the checkpoint
    train = split_batch(data, "train", variables, known).to(device)
    streamed = isinstance(train.x, RowStore)  # --backed: batches are read from disk as training goes
    if streamed and (binarize or labelled_per_batch):
        raise VaelabError("training from disk (--backed) cannot binarize dynamically nor add labelled rows to "
                          "batches; use --binarize none and --labelled-per-batch 0, or load the data into memory")
    val = split_batch(data, "val", variables).to(device)
    if binarize:
        val = Batch(draw_binary(val.x, torch.Generator(device=device).manual_seed(seed + 1)), val.c)
    n = len(train)
    steps = math.ceil(n / batch_size)

    step: nn.Module = _TrainStep(model, objective, precision)
    plain = step  # unwrapped: NaN forensics run it under forward hooks
    fast = None if labelled_per_batch else fast_step(model, objective, precision=precision, compile=compile,
                                                      processes=w.size)  # the common VAE, by hand
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        step = DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        # one eager pass first (random state restored), so that lazily filled caches such as
        # torch.distributions' KL dispatch table are warm and dynamo captures a single graph
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            first = train[: min(batch_size, n)]
            step(first.x, 0.0, first.c, first.known)
        step = torch.compile(step)  # type: ignore[assignment]
    progress = progress and w.is_main
    reader = _Lagged(device)

    result = FitResult("completed", start_epoch - 1, best_epoch, best_val, metrics)
    written, last_write = start_epoch - 1, time.monotonic()  # the epoch of the checkpoint on disk, and when
    best_pending: tuple[dict[str, Tensor], dict[str, Any]] | None = None  # best weights not yet written
    epoch_buffers = EpochBuffers()  # each epoch's binarized, permuted x reuses the last one's memory
    for epoch in recovery.epochs(start_epoch, epochs):  # an epoch comes again after a NaN (recovery)
        recovery.begin(model, optimizer)  # the in-memory snapshot a NaN rolls back to
        x_epoch = (streamed_epoch(train, seed, epoch) if streamed  # [N, *x_shape], visiting order
                   else epoch_data(train, seed, epoch, binarize, epoch_buffers))
        extra = (labelled_rows(x_epoch.known, seed, epoch, steps, labelled_per_batch)  # [steps, L]
                 if labelled_per_batch else None)
        torch.manual_seed(noise_seed(seed, epoch, w.rank))  # the reparameterization noise eps
        log = torch.zeros(steps, 4, device=device)  # per step: loss, sums of ELBO, rec., KL
        t0 = time.perf_counter()
        model.train()
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False, unit="batch", dynamic_ncols=True)
        done = 0
        try:
            for i in range(steps):
                a, b = i * batch_size, min((i + 1) * batch_size, n)
                lo, hi = w.shard(b - a)
                if extra is None:
                    weight = w.size * (hi - lo) / batch_size  # 1 for a full batch in one process; the last, partial
                    # batch weighs (b - a) / batch_size of a full one (as a summed loss does under Adam: its mean
                    # at full weight costs ~0.6 nat at the classic setting, benchmarks/quality_ablation.py)
                    xb = x_epoch[a + lo : a + hi] if hi > lo else x_epoch[a : a + 1]  # no rows: one, weighted 0
                else:  # the ordinary rows, then the labelled ones; each process takes its share of both
                    elo, ehi = w.shard(labelled_per_batch)
                    rows = torch.cat([torch.arange(a + lo, a + hi, device=device), extra[i, elo:ehi]])
                    weight = w.size * rows.numel() / (batch_size + labelled_per_batch)
                    xb = x_epoch[rows] if rows.numel() else x_epoch[a : a + 1]
                if recovery.looking(i):  # replaying the epoch up to the failing step: look, do not train
                    if recovery.look(model, optimizer, lambda: plain(xb.x, epoch - 1 + i / steps, xb.c, xb.known)[0] * weight,
                                     xb.x):
                        break
                    continue
                if fast is not None:  # loss and gradients written out by hand (training/fastpath.py)
                    loss, stats = fast.step(xb.x, epoch - 1 + i / steps, weight)
                else:
                    loss, stats = step(xb.x, epoch - 1 + i / steps, xb.c, xb.known)
                    optimizer.zero_grad(set_to_none=True)
                    (loss if weight == 1 else loss * weight).backward()
                optimizer.step()
                log[i] = stats if weight > 0 else 0.0
                done = i + 1
                if done % SYNC_EVERY == 0 or done == steps:
                    seen = log[:done]
                    snap = torch.stack([seen[:, 1].double().sum(), (~torch.isfinite(seen)).sum().double()])
                    ready = reader.push_and_read(w.all_sum(snap), min(done * batch_size, n) + done * labelled_per_batch)
                    if ready is not None and ready[0][1] > 0:
                        break  # a non-finite loss: the check after the loop reports it
                    bar.update(done - bar.n)
                    if ready is not None and progress:
                        bar.set_postfix_str(f"ELBO {ready[0][0] / ready[1]:.2f} nats")
        except KeyboardInterrupt:
            result.stopped = "interrupted"
            result.message = (
                f"interrupted in epoch {epoch}; the checkpoint of epoch {written} is intact: "
                f"resume with 'vaelab train --resume {run_dir}'" if written > 0 else
                f"interrupted in epoch {epoch}, before any checkpoint was written; train it anew"
            )
            return result
        except Exception as error:
            if compile and _compile_failed(error):
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise VaelabError(
                    f"torch.compile failed ({first[:200]}); train with --compile false, or give "
                    "PyTorch's inductor a working C++ compiler (g++) for the CPU"
                ) from error
            if done and not bool(torch.isfinite(log[:done]).all()):  # a consequence of a NaN
                message = _nan_message(log, done, World(), epoch, run_dir)
                if w.size == 1 and recovery.failed(model, optimizer, epoch, *_first_bad(log, done, World()), message):
                    reader = _Lagged(device)
                    continue
                result.stopped = "nan"
                result.message = _nan_message(log, done, World(), epoch, run_dir)  # no collective here
                return result
            raise
        finally:
            bar.close()
            if streamed:
                x_epoch.close()  # stops the reader thread
        if recovery.replay_to is not None:  # the replay reached the failing step and looked
            if recovery.retry(model, optimizer):  # rolled back, learning rate lowered: the epoch again
                reader = _Lagged(device)
                continue
            result.stopped, result.message = "nan", recovery.message()
            return result
        totals = torch.cat([log.double().sum(0), (~torch.isfinite(log)).sum().double().reshape(1)])
        totals_host = w.all_sum(totals).tolist()  # the host waits for the epoch here
        seconds = time.perf_counter() - t0
        if totals_host[4] > 0:  # before anything is written: a NaN never reaches a checkpoint
            message = _nan_message(log, done, w, epoch, run_dir)
            if recovery.failed(model, optimizer, epoch, *_first_bad(log, done, w), message):
                reader = _Lagged(device)  # no stale snapshot of the failed pass
                continue  # replay the epoch to the failing step for the forensics
            result.stopped = "nan"
            result.message = _nan_message(log, done, w, epoch, run_dir, kept=written)
            return result

        # no validation set (val_fraction 0): no early stopping, every epoch is the model so far
        v_elbo, v_rec, v_kl = _validation(model, val, objective, w) if len(val) else (None, None, None)
        tr = [t / (n + steps * labelled_per_batch) for t in totals_host[1:4]]  # per row seen
        if v_elbo is not None and not math.isfinite(v_elbo):
            result.stopped = "nan"
            result.message = (
                f"the ELBO became non-finite in epoch {epoch}; {_stopped(run_dir, written)}; "
                "try a lower --lr"
            )
            score = lambda: torch.tensor(_validation(model, val, objective, World())[0])  # noqa: E731 (probed under hooks)
            if recovery.validation_failed(model, optimizer, epoch, result.message, score):
                result.stopped, reader = "completed", _Lagged(device)
                continue
            result.message = recovery.message()
            return result
        record = {
            "epoch": epoch,
            "train_elbo": tr[0],
            "train_reconstruction": tr[1],
            "train_kl": tr[2],
            "val_elbo": v_elbo,
            "val_reconstruction": v_rec,
            "val_kl": v_kl,
            "seconds": seconds,
            "examples_per_second": n / seconds,
            "lr": recovery.current_lr,  # the configured rate, lowered by each NaN recovery
        }
        metrics.append(record)
        improved = v_elbo is None or v_elbo > best_val
        if improved:
            best_val, best_epoch, bad_epochs = v_elbo, epoch, 0
        else:
            bad_epochs += 1
        stop_early = patience > 0 and bad_epochs >= patience
        due = (checkpoint_every <= 0 or stop_early or epoch == epochs
               or time.monotonic() - last_write >= checkpoint_every)  # write this epoch's files?
        if w.is_main and improved and not due:  # the best weights wait in memory for the next write
            best_pending = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                            {"epoch": epoch, "val_elbo": v_elbo})
        if w.is_main and due:
            if improved:
                save_weights(run_dir / BEST_WEIGHTS, model, {"epoch": epoch, "val_elbo": v_elbo})
            elif best_pending is not None:  # an earlier epoch since the last write was the best
                save_weights(run_dir / BEST_WEIGHTS, _Weights(best_pending[0]), best_pending[1])  # type: ignore[arg-type]
            best_pending = None
            keep_previous(run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT)  # for `vaelab verify`
            state = {
                "epoch": epoch,
                "best_val_elbo": best_val,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "stopped": "early-stopping" if stop_early else None,
                "recovery": recovery.state(),  # the lr factor and the NaN recoveries so far
                "metrics": metrics,
            }
            save_checkpoint(run_dir / CHECKPOINT, model, optimizer, state)
            _write_metrics(run_dir / METRICS, metrics)
        if due:
            written, last_write = epoch, time.monotonic()
        if w.is_main:
            if progress and v_elbo is None:
                tqdm.write(f"epoch {epoch}: train ELBO {tr[0]:.2f} nats (reconstruction {tr[1]:.2f}, KL {tr[2]:.2f})")
            elif progress:
                tqdm.write(
                    f"epoch {epoch}: train ELBO {tr[0]:.2f}, val ELBO {v_elbo:.2f} nats "
                    f"(reconstruction {v_rec:.2f}, KL {v_kl:.2f}){' *' if improved else ''}"
                )
            if on_epoch is not None:
                on_epoch(record)
        w.barrier()  # the files of this epoch exist before any process goes on
        result = FitResult("completed", epoch, best_epoch, best_val, metrics)
        if stop_early:
            result.stopped = "early-stopping"
            result.message = f"validation ELBO did not improve for {patience} epochs"
            break
    return result
