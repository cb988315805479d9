"""One call that evaluates a model on a data set: :func:`evaluate`, behind ``vaelab eval``.

It gathers, in nats per example (sums over the dimensions of x and z):

* the ELBO and its two terms, reconstruction E_q[log p(x|z)] (minus the *distortion*) and
  KL(q(z|x) || p(z)) (the *rate*), per example and averaged;
* log p(x) by the chosen ``estimator``: importance sampling with K samples from the encoder
  (``is``, :func:`~vaelab.evaluation.log_likelihood`) or from a defensive mixture
  (``mixture``, :mod:`~vaelab.evaluation.proposals`), or annealed importance sampling
  (``ais``, :mod:`~vaelab.evaluation.ais`); encoder IS is run too whenever K > 0, and every
  estimate that was run is kept side by side (``estimates``, each with its wall time). With
  it: its standard error over examples and its Monte-Carlo error, the effective sample size
  (ESS) of the weights, the Pareto k-hat of the importance weights (:mod:`~vaelab.evaluation.psis`;
  a warning above 0.7), the BDMC bracket on simulated data when asked (``bdmc_examples``),
  and bits per dimension, -log p(x) / (D ln 2), when
  log p(x|z) is a probability of discrete values (a Bernoulli likelihood on binary data, or
  a decoder marked ``discrete`` such as the discretized logistic mixture);
* latent health (:func:`~vaelab.evaluation.latent_diagnostics`): KL per dimension, active
  units, I(x; z), KL(q(z) || p(z)), posterior collapse;
* the inference gap split into approximation and amortization gaps on a subset
  (:func:`~vaelab.evaluation.inference_gaps`), with the tightest log p(x) that was run.

Two standard errors, two questions. ``*_stderr`` is the spread over examples divided by
sqrt(N): how far the average might move on another test set of the same size.
``log_px_mc_stderr`` is the Monte-Carlo error of the estimate for *these* examples, from the
delta method: Var[log p_hat(x)] ~= 1/ESS - 1/K per example. It is trustworthy only when the
ESS is not tiny; with a few dominant weights the estimate is biased low by more than it
says (a warning is given).

Every part is seeded separately from ``seed``, so a number does not change when another
part's settings do, and the caller's random state is left as it was.

The result, :class:`Evaluation`, keeps the per-example tensors; :meth:`Evaluation.summary`
gives the numbers as an :class:`~vaelab.evaluation.summary.EvaluationSummary` (see
:mod:`vaelab.evaluation.summary`: the typed result that eval.json, the table, the report and
the explorer read by attribute).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from ..distributions.likelihoods import BernoulliDecoder
from ..errors import VaelabError
from ..inputs import check_data, model_device
from ..model import VAE, Classifier
from ..objectives import ELBO, data_elbo
from ..context import Batch
from .ais import AUTO_MIN_STEPS, AISResult, BDMCResult, ais, ais_unavailable, auto_steps, bdmc, check_ais_model
from .diagnostics import LatentDiagnostics, latent_diagnostics
from .gaps import InferenceGaps, gap_rows, inference_gaps
from .likelihood import LogLikelihood, log_likelihood
from .memory import check_fits
from .proposals import mixture_proposal
from .psis import KHAT_BAD
from .settings import EvalSettings
from .summary import (ESTIMATOR_NAMES, EvaluationSummary, PerExample, _ais_summary, _bdmc_summary, _estimate_summary,
                      _khat, _stderr)

__all__ = ["Evaluation", "evaluate", "format_table"]

LOW_ESS = 0.01  # warn when the median ESS is below this fraction of K


@dataclass
class Evaluation:
    """Everything :func:`evaluate` measured, tensors included; :meth:`summary` gives the
    numbers as an :class:`EvaluationSummary`, and :meth:`to_dict` its JSON (``eval.json``)."""

    n: int
    x_dim: int
    discrete: bool  # log p(x) is a log-probability of discrete values: bits/dim make sense
    terms: ELBO  # per example [N]
    likelihood: LogLikelihood | None
    latents: LatentDiagnostics | None
    gaps: InferenceGaps | None
    settings: EvalSettings
    device: str
    notes: list[str] = field(default_factory=list)
    correct: Tensor | None = None  # [N] 1.0 where the model's classifier q(y|x) labels x right
    context: tuple[str, ...] = ()  # the conditioning variables: every figure is given them
    estimates: dict[str, LogLikelihood] = field(default_factory=dict)  # every log p(x) estimate run, by estimator
    ais: AISResult | None = None
    bdmc: BDMCResult | None = None
    mean_count: float | None = None  # count likelihoods: the examples' mean total count l (for nats per count)

    @property
    def accuracy(self) -> float | None:
        """Share of examples the classifier labels right (models with a classifier, labelled data)."""
        return None if self.correct is None else float(self.correct.double().mean())

    @property
    def accuracy_stderr(self) -> float | None:
        """Binomial standard error of the accuracy, sqrt(a (1 - a) / N)."""
        a = self.accuracy
        return None if a is None or self.correct is None else math.sqrt(a * (1 - a) / self.correct.numel())

    @property
    def log_px_mc_se(self) -> Tensor | None:
        """Per-example Monte-Carlo standard error of log p_hat(x), sqrt(1/ESS - 1/K) ``[N]``."""
        ll = self.likelihood
        return None if ll is None else ll.mc_se

    @property
    def warnings(self) -> list[str]:
        out = list(self.notes)
        if self.latents is not None:
            out += self.latents.warnings
        return out

    def summary(self, *, data: str | None = None, per_example: bool = False) -> "EvaluationSummary":
        """The numbers (means with their standard errors), without the tensors.

        Args:
            data: what was evaluated, in words (e.g. ``"mnist5k (test split)"``).
            per_example: keep the per-example ELBO, terms, log p(x) and ESS too.
        """
        t = self.terms
        means: dict[str, Any] = {}
        for key, values in (("elbo", t.elbo), ("reconstruction", t.reconstruction),
                            ("distortion", -t.reconstruction), ("kl", t.kl)):
            means[key] = float(values.double().mean())
            means[f"{key}_stderr"] = _stderr(values)
        ll = self.likelihood
        if ll is not None:
            mc = self.log_px_mc_se
            assert mc is not None
            means.update(
                k=ll.k, log_px=ll.mean, log_px_stderr=_stderr(ll.per_example),
                log_px_mc_stderr=float(mc.double().pow(2).sum().sqrt() / self.n), nll=-ll.mean,
                ess_mean=float(ll.ess.mean()), ess_median=float(ll.ess.median()), ess_min=float(ll.ess.min()),
                estimator=ll.estimator, **_khat(ll),
            )
            if self.discrete:
                means["bits_per_dim"] = -ll.mean / (self.x_dim * math.log(2))
            if self.mean_count:
                means["nats_per_count"] = -ll.mean / self.mean_count
        rows = None
        if per_example:
            rows = PerExample(elbo=tuple(t.elbo.tolist()), reconstruction=tuple(t.reconstruction.tolist()),
                              kl=tuple(t.kl.tolist()),
                              log_px=None if ll is None else tuple(ll.per_example.tolist()),
                              ess=None if ll is None else tuple(ll.ess.tolist()),
                              khat=None if ll is None or ll.khat is None else tuple(ll.khat.tolist()))
        return EvaluationSummary(
            n=self.n, **means, accuracy=self.accuracy, accuracy_stderr=self.accuracy_stderr,
            conditional_on=tuple(self.context),
            latents=None if self.latents is None else self.latents.summary(),
            gaps=None if self.gaps is None else self.gaps.summary(),
            warnings=tuple(self.warnings), settings=self.settings, device=self.device,
            per_example=rows, data=data,
            estimates=tuple(_estimate_summary(e) for e in self.estimates.values()),
            ais=None if self.ais is None else _ais_summary(self.ais),
            bdmc=None if self.bdmc is None else _bdmc_summary(self.bdmc),
        )

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        """The JSON of :meth:`summary` (see :meth:`EvaluationSummary.to_dict`)."""
        return self.summary(per_example=per_example).to_dict()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with ``torch.manual_seed(seed)``, restoring the caller's random state after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def evaluate(
    model: VAE,
    x: Tensor,
    settings: EvalSettings | None = None,
    *,
    c: Tensor | None = None,
    labels: Tensor | None = None,
    device: torch.device | str | None = None,
    **changes: Any,
) -> Evaluation:
    """Evaluate ``model`` on ``x`` ``[N, *x_shape]``: ELBO, log p(x), latent health, gaps.

    Args:
        settings: how (:class:`EvalSettings`; its defaults when None); keyword arguments
            named like its fields change single settings, e.g. ``evaluate(model, x, k=5000)``.
            ``k = 0`` skips log p(x) and the gaps, ``mi_samples = 0`` latent health,
            ``gap_examples = 0`` the gap split; every part is seeded from ``seed``.
            ``estimator`` picks the log p(x) reported (``is``, ``mixture`` or ``ais``); encoder
            IS is run too whenever K > 0, so :attr:`Evaluation.estimates` holds them side by
            side, and the gap split uses the highest (tightest) of them.
            ``bdmc_examples > 0`` adds the BDMC bracket on that many simulated examples.
        c: the context ``[N, P]`` of a conditional model: then every figure is conditional
            (log p(x|c), KL(q(z|x,c) || p(z|c)), ...).
        labels: class ids ``[N]``: a model with a classifier (:class:`~vaelab.model.Classifier`,
            the semi-supervised M2) is scored for accuracy on them.
        device: where to compute (default: the model's device).

    Example:
        >>> ev = evaluate(model, x_test, k=5000)
        >>> print(format_table(ev.summary()))
    """
    st = (settings or EvalSettings()).replace(**changes) if changes else (settings or EvalSettings())
    k, k_chunk, batch_size, kl = st.k, st.k_chunk, st.batch_size, st.kl
    n = x.shape[0]
    if n < 1:
        raise ValueError("evaluate needs at least one example")
    check_data(model, x, c)
    device = model_device(model, device)
    seed = st.seed
    notes: list[str] = []
    estimator, steps, ais_batch = st.estimator, st.steps, batch_size
    if estimator == "auto":
        with _seeded(seed + 7, device):  # the probe draws a few samples: leave the caller's random state alone
            estimator, steps, ais_batch = _auto_estimator(model, x, c, st, device)
    if estimator == "ais" or st.bdmc_examples > 0:
        check_ais_model(model)  # refused before anything is computed (M2: a partly discrete latent)
        examples = max(min(ais_batch, n) if estimator == "ais" else 0, min(batch_size, st.bdmc_examples))
        check_fits(model, x[:1].to(device), None if c is None else c[:1].to(device), examples * st.chains,
                   what=f"AIS with {examples} examples x {st.chains} chains per pass", fix="lower --batch-size or --chains")
    if estimator == "mixture" and (isinstance(model, Classifier) or not isinstance(model, VAE)):
        raise VaelabError("the mixture proposal needs a VAE with continuous latents only; the semi-supervised M2's "
                          "latent includes the discrete label: use --estimator is")

    def rows(i: int) -> Batch:
        return Batch(x[i : i + batch_size].to(device), None if c is None else c[i : i + batch_size].to(device))

    with _seeded(seed, device), torch.no_grad():
        parts = [data_elbo(model, rows(i), st.elbo_samples, kl) for i in range(0, n, batch_size)]
    terms = ELBO(*(torch.cat([getattr(p, key).detach().double().cpu() for p in parts])
                   for key in ("elbo", "reconstruction", "kl")))

    ll = None
    estimates: dict[str, LogLikelihood] = {}
    ais_result = bdmc_result = None
    split = None  # the gap split's examples, chosen first: encoder IS keeps their draws for it
    if st.gap_examples > 0:
        with _seeded(seed + 3, device):  # the rows inference_gaps draws first from this seed (below)
            split = gap_rows(n, st.gap_examples)
    if k > 0:
        with _seeded(seed + 1, device):
            estimates["is"] = log_likelihood(model, x, k, batch_size=batch_size, k_chunk=k_chunk, device=device, c=c,
                                             keep_rows=split if k >= st.gap_eval_samples else None)
    if estimator == "mixture" and k > 0:
        def proposal(xb: Tensor, cb: Tensor | None) -> Any:
            return mixture_proposal(model, xb, cb, steps=st.gap_steps, lr=st.gap_lr, samples=st.gap_samples, kl=kl)
        with _seeded(seed + 4, device):
            estimates["mixture"] = log_likelihood(model, x, k, batch_size=batch_size, k_chunk=k_chunk, device=device,
                                                  c=c, proposal=proposal, estimator="mixture")
    if estimator == "ais":
        with _seeded(seed + 5, device):
            ais_result = ais(model, x, steps=steps, chains=st.chains, leapfrog=st.leapfrog, step_size=st.step_size,
                             target_accept=st.target_accept, start=st.ais_start, batch_size=ais_batch,
                             ladder=st.ais_ladder, c=c, device=device)
        estimates["ais"] = ais_result.as_likelihood()
        if ais_result.acceptance.mean() < 0.2 and steps > 1:
            notes.append(f"the HMC transitions of AIS accepted only {100 * float(ais_result.acceptance.mean()):.0f} % "
                         "of their moves: lower --step-size or raise --leapfrog")
    if st.bdmc_examples > 0:
        with _seeded(seed + 6, device):
            bdmc_result = bdmc(model, st.bdmc_examples, steps=steps, chains=st.chains, leapfrog=st.leapfrog,
                               step_size=st.step_size, target_accept=st.target_accept, start=st.ais_start,
                               batch_size=batch_size, device=device,
                               c=None if c is None else c[torch.arange(st.bdmc_examples) % n])
    if estimates:
        ll = estimates[estimator] if estimator in estimates else estimates["is"]
        if st.estimator == "auto" and ll is estimates.get("ais") and "is" in estimates:
            ll = _tighter_of(estimates["is"], ll, steps, k, notes)
    if "is" in estimates and ll is estimates["is"]:  # (beside a tighter estimate, k-hat below speaks for it)
        encoder_is = estimates["is"]
        median_ess = float(encoder_is.ess.median())
        if median_ess < LOW_ESS * k:
            notes.append(
                f"the importance weights are dominated by a few samples (median ESS {median_ess:.1f} "
                f"of K = {k}): log p(x) may be underestimated by more than its Monte-Carlo error "
                "says; a larger K or a better proposal (--estimator mixture or ais) tightens it"
            )
    for name, e in estimates.items():
        if e.khat is not None and bool((e.khat > KHAT_BAD).any()):
            share = float((e.khat > KHAT_BAD).double().mean())
            notes.append(
                f"Pareto k-hat of the {ESTIMATOR_NAMES[name]} weights is above {KHAT_BAD} for {100 * share:.0f} % of "
                f"the examples (median {float(e.khat.median()):.2f}): their log p(x) is unreliable and biased low "
                "by more than its error says" + ("" if name != "is" else "; try --estimator mixture or ais" if e is ll
                                                 else f" (the headline -log p(x) is by {ESTIMATOR_NAMES[ll.estimator]})")
            )

    latents = None
    if st.mi_samples > 0 and n >= 2:
        with _seeded(seed + 2, device):
            latents = latent_diagnostics(model, x, mi_samples=st.mi_samples, batch_size=max(batch_size, 100),
                                         device=device, c=c)

    gaps = None
    if st.gap_examples > 0 and ll is not None:
        # the tightest estimate (the highest: every estimator here is a stochastic lower bound)
        tight_name, tight = max(estimates.items(), key=lambda item: item[1].mean)
        try:
            with _seeded(seed + 3, device):
                gap_rows(n, st.gap_examples)  # the draw of `split` again: the optimisation's draws follow it
                gaps = inference_gaps(
                    model, x, n=st.gap_examples, log_px=tight.per_example, log_px_mc_se=tight.mc_se,
                    steps=st.gap_steps, lr=st.gap_lr, samples=st.gap_samples, eval_samples=st.gap_eval_samples,
                    batch_size=batch_size, kl=kl, device=device, c=c, log_px_estimator=tight_name,
                    indices=split, encoder_draws=estimates["is"].draws if "is" in estimates else None,
                )
        except ValueError as err:  # an encoder outside the diagonal Gaussian family
            notes.append(f"gap split skipped: {err}")
    if "is" in estimates:
        estimates["is"].draws = None  # used: not carried in the result

    correct = None
    if labels is not None and isinstance(model, Classifier):
        with torch.no_grad():
            predicted = torch.cat([model.classify(x[i : i + batch_size].to(device)).probs.argmax(-1).cpu()
                                   for i in range(0, n, batch_size)])
        correct = (predicted == labels.cpu().long()).double()

    binary = _all_binary(x, batch_size)
    discrete = bool(getattr(model.decoder, "discrete", False)) or (binary and isinstance(model.decoder, BernoulliDecoder))
    mean_count = _mean_total(x, batch_size) if getattr(model.decoder, "counts", False) else None
    return Evaluation(n=n, x_dim=math.prod(x.shape[1:]), discrete=discrete, terms=terms, likelihood=ll, mean_count=mean_count,
                      latents=latents, gaps=gaps, settings=st, device=str(device), notes=notes, correct=correct,
                      estimates=estimates, ais=ais_result, bdmc=bdmc_result,
                      context=tuple(v.name for v in model.context.variables) if c is not None and model.context is not None else ())


def _tighter_of(encoder_is: LogLikelihood, annealed: LogLikelihood, steps: int, k: int, notes: list[str]) -> LogLikelihood:
    """``--estimator auto``'s headline: the higher (tighter) of the AIS run it chose and the
    encoder IS run beside it. Both are stochastic lower bounds of log p(x); a short anneal
    (T = 25 at K = 1000) was the tighter on the models measured, but on models whose encoder
    nearly matches the posterior in few dimensions it came out below encoder IS by more than
    its Monte-Carlo error says (a bias, not noise: its error counts the chains' spread only),
    and then the headline is encoder IS's, with a note. Choosing the higher of two estimates
    of one quantity favours the higher by at most about their Monte-Carlo errors."""
    if encoder_is.mean <= annealed.mean:
        return annealed
    n = encoder_is.per_example.numel()
    noise = math.sqrt(float(encoder_is.mc_se.pow(2).sum() + annealed.mc_se.pow(2).sum())) / n
    if encoder_is.mean - annealed.mean > 2 * noise:
        notes.append(f"--estimator auto: AIS with T={steps} came out {encoder_is.mean - annealed.mean:.3f} nats below "
                     f"encoder IS with K={k} (Monte-Carlo error {noise:.3f}): too few steps for this model; the "
                     "headline -log p(x) is encoder IS's, the tighter of the two (--estimator ais --steps T for a "
                     "longer anneal)")
    return encoder_is


def _mean_total(x: Tensor, batch_size: int) -> float:
    """The mean over examples of each example's total (its library size for counts), read
    ``batch_size`` rows at a time."""
    total = sum(float(x[i : i + batch_size].double().sum()) for i in range(0, x.shape[0], batch_size))
    return total / max(1, x.shape[0])


def _all_binary(x: Tensor, batch_size: int) -> bool:
    """Whether every value of ``x`` is 0 or 1, read ``batch_size`` rows at a time (x may be rows
    left on disk, a :class:`~vaelab.data.streaming.RowStore`, read on demand)."""
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        if not bool(((xb == 0) | (xb == 1)).all()):
            return False
    return True


def _closed_form_density(q: Any) -> bool:
    """Whether log q(z|x) at any z costs one cheap pass (the Gaussian posteriors). A flow's
    density away from its own samples needs its inverse (for an IAF, D sequential passes):
    AIS evaluates it at every leapfrog step, and on an IAF model at K = 1000 that cost 16x the
    CPU time of encoder IS (benchmarks/default_estimator.py), so auto keeps encoder IS there."""
    base = q.base_dist if isinstance(q, torch.distributions.Independent) else q
    return isinstance(base, (torch.distributions.Normal, torch.distributions.MultivariateNormal,
                             torch.distributions.LowRankMultivariateNormal))


def _auto_estimator(model: Any, x: Tensor, c: Tensor | None, st: EvalSettings,
                    device: torch.device) -> tuple[str, int, int]:
    """What ``estimator="auto"`` runs, with how many AIS steps and examples per AIS pass: AIS at about the CPU cost
    of encoder IS with K samples (T = :func:`~vaelab.evaluation.ais.auto_steps`) where AIS
    applies to the model, the encoder's density is closed-form (Gaussian posteriors; a flow's
    needs its inverse at every leapfrog step) and that budget gives at least ``AUTO_MIN_STEPS``
    steps; else encoder IS. AIS then anneals as many rows at once as a pass of encoder IS has
    (batch size x k-chunk / S examples, 1,250 by default): small passes of 400 rows ran AIS at
    half the speed on two threads, where one thread did not care.

    Measured (benchmarks/default_estimator.py, README "Evaluating a model"): at equal CPU time
    AIS from the encoder was the tighter bound on every model where it applies."""
    steps = auto_steps(st.k, st.chains, st.leapfrog)
    keep = ("is", st.steps, st.batch_size)
    if st.k <= 0 or steps < AUTO_MIN_STEPS or ais_unavailable(model, x[:1], None if c is None else c[:1], st.ais_start):
        return keep
    if st.ais_start == "encoder":
        with torch.no_grad():
            q = model.encode(x[:1].to(device), None if c is None else c[:1].to(device))
        if not _closed_form_density(q):
            return keep
    wide = min(max(st.batch_size, st.batch_size * min(st.k_chunk, st.k) // st.chains), x.shape[0])
    for batch in dict.fromkeys((wide, min(st.batch_size, x.shape[0]))):  # the wide pass, else the usual one
        try:
            check_fits(model, x[:1].to(device), None if c is None else c[:1].to(device), batch * st.chains,
                       what="AIS", fix="")
        except VaelabError:
            continue
        return "ais", steps, batch
    return keep


def _f(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or in %g style when it is huge (1e308 in fixed point is
    309 digits wide: a value an evaluation can reach, with the weights of a diverged model)."""
    return f"{value:.4g}" if abs(value) >= 1e9 else f"{value:.{digits}f}"


def _pm(value: float, se: float | None, digits: int = 2) -> str:
    """``value ± se``, the error with enough decimals to show its first significant digit."""
    if se is None:
        return _f(value, digits)
    places = digits
    while 0 < se < 10 ** -places and places < 4:
        places += 1
    return f"{_f(value, digits)} ± {_f(se, places)}"


def format_table(ev: EvaluationSummary | Evaluation | Mapping[str, Any]) -> str:
    """A readable table of an evaluation: an :class:`EvaluationSummary`, an :class:`Evaluation`,
    or the JSON of ``eval.json`` (read with :meth:`EvaluationSummary.from_dict`)."""
    if isinstance(ev, Evaluation):
        ev = ev.summary()
    elif not isinstance(ev, EvaluationSummary):
        ev = EvaluationSummary.from_dict(ev, source="the evaluation")
    c = f",{','.join(ev.conditional_on)}" if ev.conditional_on else ""
    rows: list[tuple[str, str]] = [
        ("test examples", f"{ev.n}"),
        ("ELBO", f"{_pm(ev.elbo, ev.elbo_stderr)} nats"),
        ("  reconstruction E_q[log p(x|z)]", f"{_pm(ev.reconstruction, ev.reconstruction_stderr)} nats"),
        (f"  KL(q(z|x{c}) || p(z{ev.given})), the rate", f"{_pm(ev.kl, ev.kl_stderr)} nats"),
    ]
    if ev.k is not None and ev.nll is not None:
        mc = ev.log_px_mc_stderr
        extra = f" (Monte Carlo ± {_f(mc, 3)})" if mc is not None else ""
        rows.append((f"-log p(x{ev.given}), {ev.how()}", f"{_pm(ev.nll, ev.log_px_stderr)} nats{extra}"))
    if len(ev.estimates) > 1:
        for e in ev.estimates:
            extra = f" (MC ± {_f(e.log_px_mc_stderr, 3)})" if e.log_px_mc_stderr is not None else ""
            took = f", {_f(e.seconds, 1)} s" if e.seconds is not None else ""
            khat = f", k-hat {_f(e.khat_median, 2)}" if e.khat_median is not None and ev.khat_median is None else ""
            rows.append((f"  {e.name}", f"{_pm(-e.log_px, e.log_px_stderr)} nats{extra}{took}{khat}"))
    if ev.khat_median is not None and ev.khat_bad_share is not None:
        rows.append(("Pareto k-hat of the weights", f"median {_f(ev.khat_median, 2)}, {100 * ev.khat_bad_share:.0f} % "
                                                    f"of examples above 0.7 (unreliable)"))
    if ev.ais is not None:
        a = ev.ais
        rows.append(("AIS", f"T={a.steps}, S={a.chains}, {a.leapfrog} leapfrog steps, from the {a.start}; "
                            f"acceptance {100 * a.acceptance:.0f} %" + ("" if a.seconds is None else f", {_f(a.seconds, 1)} s")))
        if len(a.trace) > 1:
            rows.append(("  -log p(x) as T grows", ", ".join(f"T={t.steps}: {_f(-t.log_px, 2)}" for t in a.trace)))
    if ev.bdmc is not None:
        b = ev.bdmc
        rows.append((f"BDMC bracket ({b.n} simulated)", f"log p(x) in [{_f(b.lower, 2)}, {_f(b.upper, 2)}], width "
                                                        f"{_pm(b.width, b.width_stderr)} nats (T={b.steps}, S={b.chains})"))
    if ev.bits_per_dim is not None:
        rows.append(("bits per dimension", f"{_f(ev.bits_per_dim, 4)}"))
    if ev.nats_per_count is not None:
        rows.append(("nats per count", f"{_f(ev.nats_per_count, 4)} (-log p(x) over the mean total count)"))
    if ev.accuracy is not None:
        se = "" if ev.accuracy_stderr is None else f" ± {_f(100 * ev.accuracy_stderr, 2)}"
        rows.append(("classifier accuracy q(y|x)", f"{_f(100 * ev.accuracy, 2)}{se} %"))
    if ev.ess_median is not None and ev.ess_min is not None:
        what = "chain weights" if ev.estimator == "ais" else "importance weights"
        rows.append((f"ESS of {what}", f"median {_f(ev.ess_median, 1)}, min {_f(ev.ess_min, 1)} of {'S' if ev.estimator == 'ais' else 'K'}={ev.k}"))
    lat = ev.latents
    if lat is not None:
        rows += [
            ("active units", f"{lat.active_units} of {lat.latent_dim} (Var_x E_q[z_d] > {lat.active_threshold:g})"),
            ("  mutual information I(x;z)", f"{_pm(lat.mutual_information, lat.mutual_information_stderr)} nats "
                                            f"(at most log N = {_f(lat.mutual_information_max, 2)})"),
            ("  marginal KL(q(z) || p(z))", f"{_pm(lat.marginal_kl, lat.marginal_kl_stderr)} nats"),
            ("  posterior collapsed", {"collapsed": "YES", "mostly collapsed": "MOSTLY", "healthy": "no, healthy"}.get(
                lat.verdict or "", "YES" if lat.collapsed else "no")
             + (f" ({lat.verdict_details()})" if lat.verdict_details() else "")),
        ]
        for layer in lat.per_layer():  # a hierarchy: KL and units layer by layer, bottom first
            kl = "" if layer["kl"] is None else f"KL {_f(layer['kl'], 2)} nats, "
            rows.append((f"  layer z{layer['layer']} ({layer['units']} units)",
                         f"{kl}{layer['informative']} with KL > 0.1, {layer['active']} active"))
    gaps = ev.gaps
    if gaps is not None:
        rows += [
            ("inference gap log p(x) - ELBO", f"{_pm(gaps.inference_gap, gaps.inference_gap_stderr)} nats "
                                              f"({gaps.n} examples)"),
            ("  approximation gap", f"{_pm(gaps.approximation_gap, gaps.approximation_gap_stderr)} nats"),
            ("  amortization gap", f"{_pm(gaps.amortization_gap, gaps.amortization_gap_stderr)} nats"),
            ("  log p(x) of the split from", ESTIMATOR_NAMES.get(gaps.settings.log_px_estimator,
                                                                 gaps.settings.log_px_estimator)),
        ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b}" for a, b in rows]
    lines += [f"warning: {w}" for w in ev.warnings]
    return "\n".join(lines)
