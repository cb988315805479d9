"""NaN recovery: roll back to the last good state, lower the learning rate, go on (a few times).

When the training loss (or the validation ELBO) of an epoch turns NaN or infinite, the loop
(:func:`vaelab.training.loop.fit`) asks a :class:`NanRecovery`, which

1. **rolls back** to the state at the start of the epoch: the weights and the optimizer's
   state, copied in memory (:class:`Snapshot`) before the epoch's first step. The random
   draws need no copy: every draw of epoch ``e`` comes from a seed derived from ``(seed, e)``
   (:func:`~vaelab.training.loop.epoch_seed`), set at the epoch's start, so the rolled-back
   epoch sees the same data order, binarization and noise;
2. **looks** (forensics, :func:`probe`): the epoch is replayed up to the step before the first
   non-finite one (bit-for-bit the steps that were taken), and the next steps run under
   forward hooks on every module and with their gradients checked, so the first module whose
   output, and the first parameter whose gradient, went non-finite are named, and the
   likely cause (:func:`likely_cause`): the data (the failing batch holds values whose squares
   overflow float32), an extreme likelihood scale (a Gaussian or Laplace scale s below
   ``SMALL_SCALE``: the log-density has a 1/s^2 or 1/s factor) or else the learning rate;
3. **lowers the learning rate**, lr <- lr x ``FACTOR``, and trains the epoch again.

At most ``retries`` times in a run (``--nan-retries``, default 2; 0: stop at the first NaN,
still with the forensics). Each recovery is a line on stderr and a record in
``RUN/events.jsonl`` (``{"event": "nan-recovery", "epoch", "step", "culprit", "value",
"lr_before", "lr_after", "forensics", "cause"}``). After the last retry the loop stops with
its one-line error (the last good checkpoint is kept), which now carries the forensics.

The recovery state (the lr factor, the retries used, the events) is saved in every
checkpoint, so a resumed run continues exactly as the uninterrupted one would have,
recoveries included. In a distributed run every process sees the same non-finite count (it is
summed over processes), so all roll back and retry together; each process probes its own
shard and rank 0 reports.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import VaelabError

__all__ = ["NanRecovery", "Snapshot", "Forensics", "probe", "likely_cause", "data_magnitude", "first_nonfinite_parameter",
           "FACTOR", "SMALL_SCALE", "EVENTS"]

FACTOR = 0.5  # the learning rate is multiplied by this at each recovery
SMALL_SCALE = 1e-2  # a likelihood scale below this is an "extreme" one
HUGE_WEIGHT = 1e4  # a weight beyond this in absolute value is named in the forensics
EVENTS = "events.jsonl"  # one JSON record per recovery, in the run folder


class Snapshot:
    """An in-memory copy of the weights and the optimizer's state (``clone``d tensors)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer = copy.deepcopy(optimizer.state_dict())

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Put the copied state back (into the same tensors: the optimizer keeps its parameters)."""
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(self.model[k])
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))


@dataclass
class Forensics:
    """What went non-finite first, and why that probably happened.

    ``module`` is the first module (in the order they ran) with a non-finite output,
    ``parameter`` the first parameter with a non-finite gradient (or value), ``cause`` the
    data, the learning rate or the likelihood scale, ``fix`` what to change; ``retry_helps`` is
    False when a lower learning rate cannot help (the data itself overflows)."""

    module: str | None
    parameter: str | None
    cause: str
    fix: str
    note: str = ""
    retry_helps: bool = True

    def text(self) -> str:
        """One clause for the error line and the log."""
        seen = []
        if self.module is not None:
            seen.append(f"first non-finite output: {self.module}")
        if self.parameter is not None:
            seen.append(f"first non-finite {self.parameter}")
        if self.note:
            seen.append(self.note)
        found = "; ".join(seen) if seen else "no module output or gradient went non-finite when replayed"
        return f"{found}; likely cause: {self.cause}"


def _tensors(value: Any) -> list[Tensor]:
    """The floating-point tensors in a module's output: a tensor, a tuple or list, a distribution."""
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, Distribution):
        return [v for v in vars(value).values() if isinstance(v, Tensor) and v.is_floating_point()]
    return []


def first_nonfinite_parameter(model: nn.Module, grad: bool) -> str | None:
    """``"gradient of NAME"`` (``grad``) or ``"value of NAME"`` for the first parameter, in
    ``named_parameters`` order, holding a NaN or an infinity; None when all are finite."""
    for name, p in model.named_parameters():
        t = p.grad if grad else p
        if t is not None and not bool(torch.isfinite(t).all()):
            return f"{'gradient' if grad else 'value'} of parameter {name}"
    return None


def largest_parameter(model: nn.Module) -> tuple[str, float] | None:
    """The parameter with the largest finite absolute value, and that value (None: no parameters)."""
    best = None
    for name, p in model.named_parameters():
        finite = p.detach()[torch.isfinite(p.detach())]
        if finite.numel():
            value = float(finite.abs().max())
            if best is None or value > best[1]:
                best = (name, value)
    return best


def likelihood_scale(model: nn.Module) -> float | None:
    """The smallest scale of the model's Gaussian or Laplace likelihood (None: it has none)."""
    scales = [float(torch.as_tensor(m.scale).min()) for m in model.modules()
              if hasattr(m, "learn_scale") and hasattr(m, "scale")]
    return min(scales) if scales else None


def data_magnitude(x: Tensor | None) -> tuple[str, str] | None:
    """``(cause, fix)`` when the batch ``x`` the failing step read is itself to blame, else None:
    non-finite values, or values so large that their squares summed over the batch (what a
    Gaussian log-density adds up) pass float32's largest number, 3.4e38, whatever the weights."""
    if x is None or not x.is_floating_point() or not x.numel():
        return None
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        return f"the batch itself holds {int(bad.sum())} NaN/inf value(s)", "remove or impute them"
    squares = float(x.detach().double().pow(2).sum())
    if squares > torch.finfo(torch.float32).max:
        return (f"the data's magnitude (values up to {float(x.abs().max()):.3g} in this batch: their squares summed "
                f"over the batch, {squares:.3g}, overflow float32 at 3.4e+38)",
                "standardise the data (subtract each feature's mean, divide by its standard deviation) or rescale it")
    return None


def likely_cause(model: nn.Module, lr: float, huge_weights: bool = False, x: Tensor | None = None) -> tuple[str, str]:
    """``(cause, fix)``: the data when the batch ``x`` (if given) holds non-finite values or
    values whose squares overflow float32 (:func:`data_magnitude`); else the learning rate
    when the weights have grown huge (steps too large); else an extreme likelihood scale when
    the model's Gaussian/Laplace scale is below :data:`SMALL_SCALE`; else the learning rate."""
    data = data_magnitude(x)
    if data is not None:
        return data
    s = likelihood_scale(model)
    if s is not None and s < SMALL_SCALE and not huge_weights:
        return (f"an extreme likelihood scale ({s:.3g}: the log-density grows like 1/scale^2)",
                "raise --gaussian-scale, learn it (--learn-scale global), or standardise the data")
    return f"the learning rate ({lr:.3g})", "try a lower --lr"


def probe(model: nn.Module, run: Callable[[], Tensor], lr: float, x: Tensor | None = None) -> tuple[Forensics, bool]:
    """Run one training step's forward and backward pass (``run`` returns the loss to
    differentiate) under forward hooks on every module of ``model``; find what went
    non-finite first. ``x``: the batch ``run`` reads, looked at for the cause. Returns the
    forensics and whether anything did (the step may then not be taken)."""
    names = {m: n or type(m).__name__ for n, m in model.named_modules()}
    first: list[str] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not first and any(not bool(torch.isfinite(t).all()) for t in _tensors(output)):
            first.append(f"{names.get(module, '?')} ({type(module).__name__})")

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    note = ""
    try:
        bad_value = first_nonfinite_parameter(model, grad=False)  # weights already broken by an earlier step
        try:
            loss = run()
        except (ValueError, RuntimeError) as err:  # e.g. a distribution refusing a NaN parameter
            loss = None
            note = f"the forward pass failed ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
        if loss is not None and not first and not bool(torch.isfinite(loss).all()):
            note = "the loss (the log-densities), with every module output finite"
        if loss is not None and loss.requires_grad and bool(torch.isfinite(loss).all()):
            loss.backward()
        bad_grad = first_nonfinite_parameter(model, grad=True)
    finally:
        for h in handles:
            h.remove()
    big = largest_parameter(model)
    if big is not None and big[1] > HUGE_WEIGHT and (first or bad_grad is not None or note):
        note = "; ".join(filter(None, [note, f"weights as large as {big[1]:.3g} ({big[0]})"]))
    cause, fix = likely_cause(model, lr, huge_weights=big is not None and big[1] > HUGE_WEIGHT, x=x)
    found = bool(first) or bool(note) or bad_grad is not None or bad_value is not None
    return Forensics(first[0] if first else None, bad_value or bad_grad, cause, fix, note,
                     retry_helps=data_magnitude(x) is None), found


def _checked(state: Any) -> dict[str, Any]:
    """A checkpoint's ``"recovery"`` entry, checked field by field (None: a fresh run)."""
    if state is None:
        return {}
    factor, used, events = (state.get(k) if isinstance(state, dict) else None
                            for k in ("lr_factor", "retries_used", "events"))
    ok = (isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor <= 1
          and isinstance(used, int) and not isinstance(used, bool) and used >= 0
          and isinstance(events, list) and all(isinstance(e, dict) for e in events))
    if not ok:
        raise VaelabError(f"the checkpoint's NaN-recovery state is damaged ({str(state)[:80]!r}); restore the "
                          "run folder from a backup or retrain")
    return state


@dataclass
class _Failure:
    epoch: int
    step: int  # 0-based index of the first non-finite step (-1: the validation ELBO)
    culprit: str
    value: float
    message: str


class NanRecovery:
    """The loop's recovery bookkeeping (module docstring): snapshots, replay, events.

    Args:
        retries: recoveries allowed in the whole run.
        lr: the configured learning rate (the current one is ``lr * lr_factor``).
        state: the ``"recovery"`` entry of a checkpoint (a resumed run), or None.
        report: print each event's line on stderr (rank 0 does).
        on_event: called with all events so far after each one (rank 0 writes events.jsonl).
    """

    def __init__(self, retries: int, lr: float, state: dict[str, Any] | None = None, report: bool = True,
                 on_event: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise VaelabError(f"nan_retries must be a whole number >= 0, got {retries!r}")
        state = _checked(state)
        self.retries = retries
        self.lr = lr
        self.lr_factor = float(state.get("lr_factor", 1.0))
        self.used = int(state.get("retries_used", 0))
        self.events: list[dict[str, Any]] = list(state.get("events", []))
        self.report = report
        self.on_event = on_event
        self.snapshot: Snapshot | None = None
        self.failure: _Failure | None = None
        self.forensics: Forensics | None = None
        self.replay_to: int | None = None  # replaying the epoch: look from this step on
        self._again = False

    # --- the epoch loop ---------------------------------------------------------------------
    def epochs(self, start: int, stop: int) -> Iterator[int]:
        """``range(start, stop + 1)``, except that an epoch comes again after a rollback
        (:meth:`failed`: the replay for the forensics; :meth:`retry`: training it again)."""
        epoch = start
        while epoch <= stop:
            self._again = False
            yield epoch
            if not self._again:
                epoch += 1

    def begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """At the start of an epoch: snapshot it, unless this is the replay for the forensics
        (a retry snapshots again: the rolled-back state with the lowered learning rate)."""
        if self.failure is None and self.replay_to is None:
            self.snapshot = Snapshot(model, optimizer)

    @property
    def current_lr(self) -> float:
        return self.lr * self.lr_factor

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (a resumed run recovers as the uninterrupted one)."""
        return {"lr_factor": self.lr_factor, "retries_used": self.used, "events": self.events}

    # --- a non-finite value ------------------------------------------------------------------
    def failed(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int, value: float,
               message: str, culprit: str = "training loss") -> bool:
        """A non-finite ``culprit`` at ``step`` (0-based) of ``epoch``; ``message`` is the loop's
        error line. Rolls back to the epoch's start and arranges a replay up to that step for
        the forensics (True: go through the epoch again); False when there is no snapshot."""
        if self.snapshot is None:
            return False
        self.failure = _Failure(epoch, step, culprit, value, message)
        self.snapshot.restore(model, optimizer)
        self.replay_to = max(0, step - 1)  # the step before: its gradient may be the first non-finite thing
        self._again = True
        return True

    def looking(self, i: int) -> bool:
        """Whether step ``i`` of the replayed epoch is one to probe (not an ordinary step)."""
        return self.replay_to is not None and i >= self.replay_to

    def look(self, model: nn.Module, optimizer: torch.optim.Optimizer, run: Callable[[], Tensor],
             x: Tensor | None = None) -> bool:
        """Probe one replayed step (``x``: its batch); True once the culprit is found (or the failing
        step is reached). Otherwise the step is taken and the replay goes on to the next one."""
        optimizer.zero_grad(set_to_none=True)
        forensics, found = probe(model, run, self.current_lr, x)
        assert self.failure is not None and self.replay_to is not None
        if found or self.replay_to >= self.failure.step:
            self.forensics = forensics
            return True
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.replay_to += 1
        return False

    def validation_failed(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, message: str,
                          score: Callable[[], Tensor]) -> bool:
        """The validation ELBO of ``epoch`` is non-finite: probe it (``score`` returns it), then as
        :meth:`retry`. True: go through the epoch again."""
        forensics, _ = probe(model, lambda: score().detach(), self.current_lr)
        if self.snapshot is None:
            self.forensics = forensics
            self.failure = _Failure(epoch, -1, "validation ELBO", math.nan, message)
            return False
        self.failure = _Failure(epoch, -1, "validation ELBO", math.nan, message)
        self.forensics = forensics
        return self.retry(model, optimizer)

    def retry(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """After the forensics: roll back, lower the learning rate and log the event (True: train
        the epoch again), or False when the retries are spent (then :meth:`message`)."""
        assert self.failure is not None and self.snapshot is not None
        self.replay_to = None
        if self.used >= self.retries or (self.forensics is not None and not self.forensics.retry_helps):
            return False  # spent, or futile: the same batch overflows at any learning rate
        self.snapshot.restore(model, optimizer)
        before = self.current_lr
        self.lr_factor *= FACTOR
        self.used += 1
        for group in optimizer.param_groups:
            group["lr"] = self.current_lr
        f, fx = self.failure, self.forensics
        event = {"event": "nan-recovery", "epoch": f.epoch, "step": None if f.step < 0 else f.step + 1,
                 "culprit": f.culprit, "value": None if f.step < 0 else str(f.value),
                 "lr_before": before, "lr_after": self.current_lr,
                 "forensics": None if fx is None else fx.text(), "cause": None if fx is None else fx.cause,
                 "retry": self.used, "retries": self.retries}
        self.events.append(event)
        where = f"epoch {f.epoch}" + (f", step {f.step + 1}" if f.step >= 0 else "")
        if self.on_event is not None:
            self.on_event(self.events)
        if self.report:
            print(f"warning: the {f.culprit} became non-finite in {where} "
                  f"({'' if fx is None else fx.text() + '; '}recovery {self.used} of {self.retries}): "
                  f"rolled back to the start of epoch {f.epoch} and lowered the learning rate "
                  f"from {before:.3g} to {self.current_lr:.3g}", file=sys.stderr, flush=True)
        self.failure = None
        self._again = True
        return True

    def message(self) -> str:
        """The loop's error line, with the forensics and the cause's fix, after the last retry."""
        assert self.failure is not None
        text = self.failure.message
        for plain in ("; try a lower --lr",):
            text = text.removesuffix(plain)
        fx = self.forensics
        spent = (f"{self.used} recover{'y' if self.used == 1 else 'ies'} (learning rate lowered to "
                 f"{self.current_lr:.3g}) did not help" if self.used else "")
        parts = [text, *([spent] if spent else []), *([fx.text(), fx.fix] if fx is not None else ["try a lower --lr"])]
        return "; ".join(parts)
