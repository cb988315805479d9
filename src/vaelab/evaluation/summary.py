"""The typed result of an evaluation: :class:`EvaluationSummary`, what eval.json holds.

:func:`vaelab.evaluation.evaluate` returns an :class:`~vaelab.evaluation.suite.Evaluation`
with per-example tensors; its ``summary()`` is an :class:`EvaluationSummary`: every number as
an attribute (with a :class:`~vaelab.evaluation.diagnostics.LatentSummary`, a
:class:`~vaelab.evaluation.gaps.GapSummary`, the estimators that were run and the
:class:`~vaelab.evaluation.settings.EvalSettings` inside), which the CLI's table, the report and
the explorer read. JSON only at the edge: :meth:`EvaluationSummary.to_dict` is ``eval.json``;
:meth:`EvaluationSummary.from_dict` and :meth:`EvaluationSummary.read` read back the files of
every vaelab version, checking each value's type (a malformed file is one line naming the file
and the key).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from torch import Tensor

from ..errors import VaelabError
from .ais import AISResult, BDMCResult
from .diagnostics import LatentSummary
from .gaps import GapSummary
from .likelihood import LogLikelihood
from .psis import KHAT_BAD
from .settings import EvalSettings

__all__ = ["EvaluationSummary", "EstimateSummary", "AISSummary", "AISTracePoint", "BDMCSummary", "PerExample",
           "ESTIMATOR_NAMES"]

ESTIMATOR_NAMES = {"is": "encoder IS", "mixture": "mixture IS", "ais": "AIS"}  # in tables and the report


@dataclass(frozen=True, kw_only=True)
class PerExample:
    """Per-example values ``[N]`` (nats): the ELBO and its terms, and with K > 0 the
    importance-sampled log p(x) and the ESS of its weights."""

    elbo: tuple[float, ...]
    reconstruction: tuple[float, ...]
    kl: tuple[float, ...]
    log_px: tuple[float, ...] | None = None
    ess: tuple[float, ...] | None = None
    khat: tuple[float, ...] | None = None  # Pareto k-hat of the importance weights

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"elbo": list(self.elbo), "reconstruction": list(self.reconstruction),
                               "kl": list(self.kl)}
        if self.log_px is not None and self.ess is not None:
            out.update(log_px=list(self.log_px), ess=list(self.ess))
        if self.khat is not None:
            out["khat"] = list(self.khat)
        return out


@dataclass(frozen=True, kw_only=True)
class EstimateSummary:
    """One estimate of log p(x) (nats per example): by which ``estimator`` (``is``: importance
    sampling from the encoder, ``mixture``: from the defensive mixture, ``ais``), with ``k``
    samples (chains for AIS), its standard errors, the wall time, and for importance sampling
    the Pareto k-hat of the weights (median, max, share of examples above 0.7)."""

    estimator: str
    k: int
    n: int
    log_px: float
    log_px_stderr: float | None = None
    log_px_mc_stderr: float | None = None
    ess_median: float | None = None
    khat_median: float | None = None
    khat_max: float | None = None
    khat_bad_share: float | None = None
    # wall time: shown in the table of a fresh evaluation, left out of eval.json (which a seed fixes)
    seconds: float | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """In words, e.g. ``"encoder IS, K=1000"``."""
        return f"{ESTIMATOR_NAMES.get(self.estimator, self.estimator)}, {'S' if self.estimator == 'ais' else 'K'}={self.k}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seconds"}


@dataclass(frozen=True, kw_only=True)
class AISTracePoint:
    """The AIS estimate of log p(x) with ``steps`` intermediate distributions (mean, stderr over examples)."""

    steps: int
    log_px: float
    log_px_stderr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seconds"}


@dataclass(frozen=True, kw_only=True)
class AISSummary:
    """How the AIS estimate was made: T ``steps``, S ``chains``, ``leapfrog`` steps per HMC
    transition, the ``start`` of the path, the mean HMC ``acceptance`` rate and step size, and
    ``trace``: the estimate at T/2^j .. T (separate runs), to see it converge."""

    steps: int
    chains: int
    leapfrog: int
    start: str
    acceptance: float
    step_size: float
    seconds: float | None = field(default=None, compare=False)  # wall time, not in eval.json
    trace: tuple[AISTracePoint, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seconds"}
        out["trace"] = [t.to_dict() for t in self.trace]
        return out


@dataclass(frozen=True, kw_only=True)
class BDMCSummary:
    """The BDMC bracket on ``n`` examples simulated from the model (nats per example): forward
    AIS ``lower`` and reverse AIS ``upper`` bounds of log p(x) of the simulated data, and the
    ``width`` upper - lower (how far forward AIS with these settings can be from the truth)."""

    n: int
    steps: int
    chains: int
    lower: float
    lower_stderr: float | None
    upper: float
    upper_stderr: float | None
    width: float
    width_stderr: float | None
    seconds: float | None = field(default=None, compare=False)  # wall time, not in eval.json

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seconds"}


def _khat(ll: LogLikelihood) -> dict[str, Any]:
    if ll.khat is None:
        return {}
    return {"khat_median": float(ll.khat.median()), "khat_max": float(ll.khat.max()),
            "khat_bad_share": float((ll.khat > KHAT_BAD).double().mean())}


def _estimate_summary(ll: LogLikelihood) -> EstimateSummary:
    mc = float(ll.mc_se.double().pow(2).sum().sqrt() / ll.per_example.numel())
    return EstimateSummary(estimator=ll.estimator, k=ll.k, n=ll.per_example.numel(), log_px=ll.mean,
                           log_px_stderr=_stderr(ll.per_example), log_px_mc_stderr=mc,
                           ess_median=float(ll.ess.median()), seconds=ll.seconds, **_khat(ll))


def _ais_summary(r: AISResult) -> AISSummary:
    return AISSummary(steps=r.steps, chains=r.chains, leapfrog=r.leapfrog, start=r.start,
                      acceptance=float(r.acceptance.mean()), step_size=float(r.step_size.mean()), seconds=r.seconds,
                      trace=tuple(AISTracePoint(steps=t, log_px=float(v.mean()), log_px_stderr=_stderr(v))
                                  for t, v in sorted(r.trace.items())))


def _bdmc_summary(b: BDMCResult) -> BDMCSummary:
    lo, up = b.lower.per_example, b.upper.per_example
    return BDMCSummary(n=lo.numel(), steps=b.lower.steps, chains=b.lower.chains, lower=float(lo.mean()),
                       lower_stderr=_stderr(lo), upper=float(up.mean()), upper_stderr=_stderr(up),
                       width=float((up - lo).mean()), width_stderr=_stderr(up - lo),
                       seconds=b.lower.seconds + b.upper.seconds)


@dataclass(frozen=True, kw_only=True)
class EvaluationSummary:
    """What an evaluation found, as numbers with attributes: the result that crosses from
    evaluation into the CLI, the report and the explorer. JSON only at the edge:
    :meth:`to_dict` is ``eval.json``, :meth:`from_dict` / :meth:`read` read it back (files of
    every vaelab version: a figure an older file lacks is ``None``).

    All values in nats per example (``units``). ``*_stderr`` is the standard error over the
    ``n`` examples (``None`` for one example), ``log_px_mc_stderr`` the Monte-Carlo error of
    log p(x) for these examples. The log p(x) block (``k`` .. ``ess_min``) is ``None`` when
    evaluated with K = 0; ``bits_per_dim`` only for discrete data, ``nats_per_count`` only for count likelihoods; ``accuracy`` only for a
    model with a classifier q(y|x) (M2) on labelled data; ``conditional_on`` names the
    context variables of a conditional model, whose figures are all given them (log p(x|c)).
    ``estimator`` names the estimator of the log p(x) block (``is``, ``mixture``, ``ais``;
    ``None`` in older files, which were all ``is``); for AIS ``k`` is the number of chains S
    and the ESS that of the chain weights. ``khat_*`` summarise the Pareto k-hat of the
    importance weights; ``estimates`` hold every estimate that was run, side by side.
    """

    n: int
    units: str = "nats per example"
    elbo: float
    elbo_stderr: float | None = None
    reconstruction: float
    reconstruction_stderr: float | None = None
    distortion: float | None = None  # -reconstruction
    distortion_stderr: float | None = None
    kl: float
    kl_stderr: float | None = None
    k: int | None = None
    log_px: float | None = None
    log_px_stderr: float | None = None
    log_px_mc_stderr: float | None = None
    nll: float | None = None
    ess_mean: float | None = None
    ess_median: float | None = None
    ess_min: float | None = None
    estimator: str | None = None  # which estimator gave log_px (None in files before it was recorded: is)
    khat_median: float | None = None  # Pareto k-hat of the importance weights (median over examples)
    khat_max: float | None = None
    khat_bad_share: float | None = None  # share of examples whose k-hat is above 0.7
    bits_per_dim: float | None = None
    nats_per_count: float | None = None  # count likelihoods: -log p(x) / the mean total count
    accuracy: float | None = None
    accuracy_stderr: float | None = None
    conditional_on: tuple[str, ...] = ()
    latents: LatentSummary | None = None
    gaps: GapSummary | None = None
    warnings: tuple[str, ...] = ()
    settings: EvalSettings | None = None  # None in files of vaelab 0.1.0
    device: str | None = None
    per_example: PerExample | None = None
    data: str | None = None  # what was evaluated, in words
    estimates: tuple[EstimateSummary, ...] = ()  # every log p(x) estimate run, side by side
    ais: AISSummary | None = None
    bdmc: BDMCSummary | None = None

    @property
    def given(self) -> str:
        """``"|label"`` (the conditioning variables after a bar) or ``""``: for p(x{given})."""
        return f"|{','.join(self.conditional_on)}" if self.conditional_on else ""

    def how(self, eq: str = "=") -> str:
        """How log p(x) was estimated, e.g. ``"K=1000"``, ``"mixture IS, K=5000"``, ``"AIS, S=4, T=1000"``
        (``eq=" = "`` spaces the signs, as the report does)."""
        if self.estimator in (None, "is"):
            return f"K{eq}{self.k}"
        if self.estimator == "ais":
            return f"AIS, S{eq}{self.k}" + (f", T{eq}{self.ais.steps}" if self.ais is not None else "")
        return f"{ESTIMATOR_NAMES.get(self.estimator, self.estimator)}, K{eq}{self.k}"

    def replace(self, **changes: Any) -> "EvaluationSummary":
        """A copy with some fields changed, e.g. ``summary.replace(data="mnist (test split)")``."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (no NaN: an undefined value is ``None``), the keys of ``eval.json``.

        ``n``, ``units``, ``elbo``, ``reconstruction``, ``distortion``, ``kl`` (each with
        ``*_stderr``); with K > 0 ``k``, ``log_px``, ``log_px_stderr``, ``log_px_mc_stderr``,
        ``nll``, ``ess_mean``/``ess_median``/``ess_min``, ``estimator`` and (importance
        sampling) ``khat_median``/``khat_max``/``khat_bad_share``, and ``bits_per_dim`` for discrete
        data; ``accuracy``/``accuracy_stderr`` and ``conditional_on`` when they apply; then
        ``latents``, ``gaps`` (or ``None``), ``warnings``, ``settings`` (with ``device``), and
        ``per_example`` and ``data`` when present, and ``estimates`` (every estimate side by
        side), ``ais`` and ``bdmc`` when they were run.
        """
        out: dict[str, Any] = {"n": self.n, "units": self.units}
        for key in ("elbo", "reconstruction", "distortion", "kl"):
            out[key] = getattr(self, key)
            out[f"{key}_stderr"] = getattr(self, f"{key}_stderr")
        if self.k is not None:
            for key in ("k", "log_px", "log_px_stderr", "log_px_mc_stderr", "nll", "ess_mean", "ess_median", "ess_min",
                        "estimator"):
                out[key] = getattr(self, key)
            if self.khat_median is not None:
                for key in ("khat_median", "khat_max", "khat_bad_share"):
                    out[key] = getattr(self, key)
        if self.bits_per_dim is not None:
            out["bits_per_dim"] = self.bits_per_dim
        if self.nats_per_count is not None:
            out["nats_per_count"] = self.nats_per_count
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
            out["accuracy_stderr"] = self.accuracy_stderr
        if self.conditional_on:
            out["conditional_on"] = list(self.conditional_on)
        out["latents"] = None if self.latents is None else self.latents.to_dict()
        out["gaps"] = None if self.gaps is None else self.gaps.to_dict()
        out["warnings"] = list(self.warnings)
        out["settings"] = None if self.settings is None else {**self.settings.to_dict(), "device": self.device}
        if self.per_example is not None:
            out["per_example"] = self.per_example.to_dict()
        if self.data is not None:
            out["data"] = self.data
        if self.estimates:
            out["estimates"] = [e.to_dict() for e in self.estimates]
        if self.ais is not None:
            out["ais"] = self.ais.to_dict()
        if self.bdmc is not None:
            out["bdmc"] = self.bdmc.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Any, source: str = "eval.json") -> "EvaluationSummary":
        """Read :meth:`to_dict`'s JSON back, checking every value's type.

        Files of older versions load: a key they lack is ``None`` (or empty); keys of newer
        versions are ignored. A malformed file is a one-line :class:`VaelabError` naming
        ``source`` and the key.
        """
        doc = _expect_object(d, source, "")
        settings = doc.get("settings")
        device = None
        if settings is not None:
            settings = dict(_expect_object(settings, source, "settings"))
            device = _read(str | None, settings.pop("device", None), source, "settings.device")
        summary = _read(cls, {key: value for key, value in doc.items() if key != "settings"}, source, "")
        return replace(summary, settings=None if settings is None else _read(EvalSettings, settings, source, "settings"),
                       device=device)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "EvaluationSummary":
        """An ``eval.json`` file (:meth:`from_dict`); a missing or corrupt file is a VaelabError."""
        p = Path(path)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VaelabError(f"'{p}' not found; run 'vaelab eval' on the run folder to write it") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise VaelabError(f"'{p}' is not readable JSON ({err}); rewrite it with 'vaelab eval'") from None
        return cls.from_dict(doc, source=str(p))


# --------------------------------------------------------------------------- reading JSON


def _expect_object(d: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise VaelabError(f"'{source}': {where or 'the file'} must be a JSON object, got {_shown(d)}; "
                          "rewrite it with 'vaelab eval'")
    return d


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) < 40 else text[:37] + "..."


def _read(tp: Any, value: Any, source: str, where: str) -> Any:
    """``value`` (parsed JSON) as the declared type ``tp``: a frozen dataclass (its fields by
    name; a missing field takes its default, one without a default is an error), ``X | None``,
    ``tuple[X, ...]`` (a JSON list), ``int``, ``float`` (an int is accepted), ``bool`` or ``str``."""
    def bad(what: str) -> VaelabError:
        return VaelabError(f"'{source}': {where} must be {what}, got {_shown(value)}; rewrite it with 'vaelab eval'")

    if is_dataclass(tp):
        doc = _expect_object(value, source, where)
        hints = get_type_hints(tp)
        values = {}
        for f in fields(tp):
            path = f"{where}.{f.name}" if where else f.name
            if f.name in doc:
                values[f.name] = _read(hints[f.name], doc[f.name], source, path)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise VaelabError(f"'{source}': {path} is missing; rewrite it with 'vaelab eval'")
        try:
            result = tp(**values)
        except VaelabError as err:  # a value out of its range (EvalSettings checks its own)
            raise VaelabError(f"'{source}': {where}: {err}; rewrite it with 'vaelab eval'") from None
        problem = _out_of_range(result)
        if problem is not None:  # a count below its least value, lists that disagree with a size
            key, what = problem
            raise VaelabError(f"'{source}': {f'{where}.{key}' if where else key} {what}; "
                              "rewrite it with 'vaelab eval'")
        return result
    args = get_args(tp)
    if get_origin(tp) in (Union, UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _read(inner, value, source, where)
    if get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise bad("a list")
        return tuple(_read(args[0], item, source, f"{where}[{i}]") for i, item in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
        if abs(value) > _LARGEST_INT:  # no count vaelab writes comes near; 10**30 examples is an edit
            raise bad("a whole number below 2^63")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise bad("a number within the range of a float") from None
        if not math.isfinite(number):  # NaN, Infinity, -Infinity (or 1e400): vaelab never writes them (write_eval)
            raise bad("a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"no JSON reader for {tp!r} ({where})")  # a field type this reader does not know


_LARGEST_INT = 2**63 - 1

# least values of the counts in eval.json, by the type that holds them (what vaelab writes: an
# evaluation has examples, an estimate samples, AIS steps and chains, latent health a latent)
_LEAST: dict[type, dict[str, int]] = {
    EvaluationSummary: {"n": 1, "k": 1},
    EstimateSummary: {"n": 1, "k": 1},
    AISSummary: {"steps": 1, "chains": 1},
    AISTracePoint: {"steps": 1},
    BDMCSummary: {"n": 1, "steps": 1, "chains": 1},
    LatentSummary: {"latent_dim": 1, "active_units": 0, "mi_samples": 0},
    GapSummary: {"n": 1},
}


def _out_of_range(value: Any) -> tuple[str, str] | None:
    """(key, what is wrong) for a value of eval.json read back that vaelab cannot have written:
    a count below its least value, a share outside [0, 1], per-dimension or per-example lists
    whose lengths disagree with the latent size or the number of examples; else None."""
    for key, least in _LEAST.get(type(value), {}).items():
        number = getattr(value, key)
        if number is not None and number < least:
            return key, f"must be at least {least}, got {number}"
    if isinstance(value, EvaluationSummary):
        for key in ("accuracy", "khat_bad_share"):
            share = getattr(value, key)
            if share is not None and not 0 <= share <= 1:
                return key, f"must be a share between 0 and 1, got {share:.6g}"
        if value.ais is not None and not 0 <= value.ais.acceptance <= 1:
            return "ais.acceptance", f"must be a share between 0 and 1, got {value.ais.acceptance:.6g}"
        if value.per_example is not None:
            for f in fields(value.per_example):
                rows = getattr(value.per_example, f.name)
                if rows is not None and len(rows) != value.n:
                    return f"per_example.{f.name}", f"has {len(rows)} values but n is {value.n}"
    if isinstance(value, LatentSummary):
        d = value.latent_dim
        for key in ("kl_per_dim", "activity", "active"):
            values = getattr(value, key)
            if values is not None and len(values) != d:
                return key, f"has {len(values)} values but latent_dim is {d}"
        if value.active_units > d:
            return "active_units", f"must be at most latent_dim = {d}, got {value.active_units}"
        for i in value.informative_units or ():
            if not 0 <= i < d:
                return "informative_units", f"must be unit indices from 0 to {d - 1}, got {i}"
        if value.layers is not None and (sum(value.layers) != d or min(value.layers, default=1) < 1):
            return "layers", f"must be layer sizes adding up to latent_dim = {d}, got {list(value.layers)}"
    return None


def _stderr(values: Tensor) -> float | None:
    n = values.numel()
    return float(values.double().std() / math.sqrt(n)) if n > 1 else None


