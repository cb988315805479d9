"""The inference gap and its split into approximation and amortization gaps.

Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders". For one
example x, with the encoder's posterior q_phi(z|x) and the best posterior q*(z|x) of the
same family (diagonal Gaussians) for this x alone,

    log p(x) - ELBO(q_phi)  =  [log p(x) - ELBO(q*)]  +  [ELBO(q*) - ELBO(q_phi)]
    inference gap           =  approximation gap      +  amortization gap
                            =  KL(q* || p(z|x))       +  KL(q_phi || p(z|x)) - KL(q* || p(z|x))

The approximation gap is what the family cannot do; the amortization gap is what one shared
encoder network loses against fitting every example separately.

For a hierarchy (the ladder VAE, :mod:`vaelab.ladder`) the family is the ladder's own: q*
keeps the model's top-down merge (whose networks are the generative model's, shared with the
prior) and frees the bottom-up messages (mu^_i, sigma^_i) of every layer per example. Its
approximation gap is what precision-weighted Gaussian layers cannot do even with the best
messages; its amortization gap is what the shared bottom-up network loses against them.

q* is found by local optimisation: a per-example diagonal Gaussian (mu, log sigma),
initialised at the encoder's output, maximising the ELBO with Adam (``samples``
reparameterized draws per step in antithetic pairs, eps and -eps; cosine-decayed learning
rate) for a fixed number of ``steps``. The gradient is the *sticking-the-landing* one (Roeder, Wu & Duvenaud 2017): of

    ELBO = E_eps[log p(x, z) - log q(z)],   z = mu + sigma eps,

it keeps the path through z and drops the score term d log q_phi(z) / d phi (zero in
expectation), so its noise vanishes where q* equals the posterior and is small where q*
nearly does. Near the optimum that is what limits Adam: on the default mnist5k model 100
steps reached the ELBO(q*) of 300 steps with the closed-form KL's gradient (within 0.001
nats, paired noise), where 150 steps of the latter stayed 0.013 nats short (README "How long
``vaelab eval`` takes"). Antithetic pairs cancel the part of the gradient's noise that is odd
in eps (all of it where log p(x, z) is quadratic in z): 8 draws as 4 pairs reached the
ELBO(q*) of 16 independent draws (within 0.003 nats on three mnist5k models, paired noise)
at half the decoder passes, where 8 independent draws stayed 0.016 nats short; the gradient in
log sigma is even in eps, so the pairs do not help it, and on small latents 4 pairs fell up to
0.011 nats below 16 independent draws (README). q* after ``steps`` steps is not fully
converged: the approximation gap is biased high (and the amortization gap low) by what is
left, which the split's Monte-Carlo errors do not include (0.03 nats on a 10-latent
linear-Gaussian model at 100 steps, 0.0025 at 300). Both ELBOs are then estimated with ``eval_samples``
draws that share their noise (z = mu + sigma * eps with the same eps for q_phi and q*), so
the amortization gap, a difference of two close numbers, has a small Monte-Carlo error. In
:func:`~vaelab.evaluation.evaluate` the shared noise is encoder IS's own: it keeps the draws of
the split's examples (:class:`~vaelab.evaluation.likelihood.EncoderDraws`), ELBO(q_phi) is
scored from them and only ELBO(q*) needs a decoder pass.

log p(x) is the tightest estimate available (:func:`~vaelab.evaluation.evaluate` passes the
highest of encoder IS, mixture IS and AIS; all are stochastic lower bounds), named in
``settings.log_px_estimator``. Every lower bound biases the approximation gap low by its own
looseness: with the encoder as proposal (K = 1000) on the classic MNIST model that was about
1.2 nats, more than half the gap, which is why a tighter estimator matters here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from ..distributions import diagonal_gaussian
from ..errors import VaelabError
from ..inputs import check_data, check_whole, model_device
from ..model import VAE
from ..objectives import KLMethod
from .ais import _log_prob_and_grad
from .likelihood import DecoderDensity, EncoderDraws, gaussian_parts, log_likelihood
from .settings import DEFAULTS

__all__ = ["InferenceGaps", "GapSummary", "GapSettings", "inference_gaps", "optimal_posterior", "gap_rows"]

# decoder rows per pass of the final ELBOs (samples x examples): [2000, 784] outputs stay in the
# cache, and on the default mnist5k model that pass ran 15 % faster than 10,000 rows (one
# thread). The draws are the same in distribution whatever the pass size, and the same draws
# where every pass holds a multiple of 16 normals (torch fills them 16 at a time), as there
PASS_ROWS = 2000


@dataclass
class InferenceGaps:
    """Per-example ELBOs of the encoder and of the locally optimal posterior, and log p(x).

    Every tensor is ``[n]`` in nats, except ``loc``/``scale`` ``[n, D]`` (the optimal q*) and
    ``indices`` (which rows of the data were used). ``*_mc_se`` are per-example Monte-Carlo
    standard errors; ``amortization_mc_se`` uses the shared noise of the two ELBOs.
    """

    indices: Tensor
    log_px: Tensor
    log_px_mc_se: Tensor
    elbo_encoder: Tensor
    elbo_encoder_mc_se: Tensor
    elbo_optimal: Tensor
    elbo_optimal_mc_se: Tensor
    amortization_mc_se: Tensor
    loc: Tensor
    scale: Tensor
    settings: dict[str, Any]

    @property
    def inference_gap(self) -> Tensor:
        """log p(x) - ELBO(q_phi), ``[n]``."""
        return self.log_px - self.elbo_encoder

    @property
    def approximation_gap(self) -> Tensor:
        """log p(x) - ELBO(q*), ``[n]``."""
        return self.log_px - self.elbo_optimal

    @property
    def amortization_gap(self) -> Tensor:
        """ELBO(q*) - ELBO(q_phi), ``[n]``."""
        return self.elbo_optimal - self.elbo_encoder

    def summary(self) -> "GapSummary":
        """Means over the examples with two standard errors each: ``*_stderr`` over examples
        (how much the mean would move with other examples) and ``*_mc_stderr`` (Monte Carlo,
        for these examples)."""
        n = self.log_px.numel()

        def over(t: Tensor) -> float | None:
            return float(t.std() / math.sqrt(n)) if n > 1 else None

        def mc(*se: Tensor) -> float:
            return float(sum(s.double() ** 2 for s in se).sum().sqrt() / n)

        rows = {
            "log_px": (self.log_px, mc(self.log_px_mc_se)),
            "elbo_encoder": (self.elbo_encoder, mc(self.elbo_encoder_mc_se)),
            "elbo_optimal": (self.elbo_optimal, mc(self.elbo_optimal_mc_se)),
            "inference_gap": (self.inference_gap, mc(self.log_px_mc_se, self.elbo_encoder_mc_se)),
            "approximation_gap": (self.approximation_gap, mc(self.log_px_mc_se, self.elbo_optimal_mc_se)),
            "amortization_gap": (self.amortization_gap, mc(self.amortization_mc_se)),
        }
        values: dict[str, Any] = {}
        for key, (per_example, mc_se) in rows.items():
            values[key] = float(per_example.mean())
            values[f"{key}_stderr"] = over(per_example)
            values[f"{key}_mc_stderr"] = mc_se
        return GapSummary(n=n, **values, settings=GapSettings(**self.settings))


@dataclass(frozen=True)
class GapSettings:
    """How the gap split was computed: ``n`` examples, q* from ``steps`` Adam steps with
    learning rate ``lr`` and ``samples`` draws per step, each final ELBO from
    ``eval_samples`` draws."""

    n: int
    steps: int
    lr: float
    samples: int
    eval_samples: int
    optimizer: str
    family: str
    kl: str
    log_px_estimator: str = "is"  # which estimate of log p(x) the gaps use (is, mixture, ais)


@dataclass(frozen=True)
class GapSummary:
    """The gap split as plain numbers (nats per example), the form that crosses into the
    report and the explorer; :meth:`to_dict` is its JSON (``eval.json``'s ``gaps``).

    Each quantity comes with ``*_stderr``, over the ``n`` examples (``None`` for one
    example), and ``*_mc_stderr``, the Monte-Carlo error for these examples.
    inference_gap = approximation_gap + amortization_gap.
    """

    n: int
    log_px: float
    log_px_stderr: float | None
    log_px_mc_stderr: float
    elbo_encoder: float
    elbo_encoder_stderr: float | None
    elbo_encoder_mc_stderr: float
    elbo_optimal: float
    elbo_optimal_stderr: float | None
    elbo_optimal_mc_stderr: float
    inference_gap: float
    inference_gap_stderr: float | None
    inference_gap_mc_stderr: float
    approximation_gap: float
    approximation_gap_stderr: float | None
    approximation_gap_mc_stderr: float
    amortization_gap: float
    amortization_gap_stderr: float | None
    amortization_gap_mc_stderr: float
    settings: GapSettings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, ``settings`` as an object."""
        return asdict(self)


def _diagonal_parts(q: Distribution) -> tuple[Tensor, Tensor]:
    """(loc, scale) ``[B, D]`` of a diagonal Gaussian ``Independent(Normal, 1)``, else an error."""
    parts = gaussian_parts(q)
    if parts is not None:
        return parts
    raise ValueError(
        f"the gap split needs an encoder that returns a diagonal Gaussian (Independent(Normal)), "
        f"got {type(q).__name__}; the locally optimised family would not match the encoder's"
    )


def _free_parameters(q: Distribution) -> tuple[list[Tensor], Callable[[list[Tensor]], Distribution], str]:
    """The parameters of ``q`` that q* frees per example (initial values ``[B, ...]``), how to
    build a posterior from them, and the family's name: (mu, log sigma) of a diagonal
    Gaussian, or a ladder posterior's bottom-up messages (mu^_i, log sigma^_i) per layer."""
    from ..ladder import LadderPosterior

    if isinstance(q, LadderPosterior):
        flat = [t for loc, scale in q.messages for t in (loc, scale.log())]

        def ladder(params: list[Tensor]) -> Distribution:
            messages = [(params[i], params[i + 1].exp()) for i in range(0, len(params), 2)]
            return q.with_messages(messages)  # the model's inference (precision, residual, ...) kept

        return flat, ladder, "ladder (per-example bottom-up messages, the model's top-down merge)"
    loc, scale = _diagonal_parts(q)
    return [loc, scale.log()], lambda params: diagonal_gaussian(params[0], params[1].exp()), "diagonal Gaussian"


def _from_noise(q: Distribution, eps: Tensor) -> Tensor:
    """z from standard-normal noise ``eps`` ``[S, B, D]`` by ``q``'s reparameterization."""
    if hasattr(q, "from_noise"):
        return q.from_noise(eps)[0]
    loc, scale = _diagonal_parts(q)
    return loc + scale * eps


def _mean_and_scale(q: Distribution) -> tuple[Tensor, Tensor]:
    """q*'s location and spread ``[B, D]`` to keep (a hierarchy: its mean path and conditional scales)."""
    if hasattr(q, "from_noise"):
        return q.mean, q.stddev
    return _diagonal_parts(q)


def _closed_kl(q: Distribution, prior: Distribution, kl: KLMethod) -> Tensor | None:
    """KL(q || p) ``[B]`` in closed form, or ``None`` when there is none or ``kl="mc"``."""
    if kl == "mc":
        return None
    try:
        return kl_divergence(q, prior)
    except NotImplementedError:
        if kl == "analytic":
            raise
        return None


def _kl(q: Distribution, prior: Distribution, z: Tensor, kl: KLMethod) -> Tensor:
    """KL(q || p) ``[B]``: closed form when known (and not ``kl="mc"``), else from ``z`` ``[S, B, D]``."""
    closed = _closed_kl(q, prior, kl)
    return (q.log_prob(z) - prior.log_prob(z)).mean(0) if closed is None else closed


def optimal_posterior(
    model: VAE,
    x: Tensor,
    *,
    steps: int = DEFAULTS.gap_steps,
    lr: float = DEFAULTS.gap_lr,
    samples: int = DEFAULTS.gap_samples,
    kl: KLMethod = "auto",
    c: Tensor | None = None,
    gradient: str = "stl",
    antithetic: bool = True,
) -> Distribution:
    """The locally optimal diagonal Gaussian q*(z|x) of each example of ``x`` ``[B, *x_shape]``
    (for a hierarchy, the ladder posterior with the best bottom-up messages; module docstring).

    Maximises ELBO(mu, sigma) = E_q[log p(x|z)] - KL(q || p(z)) over a separate (mu, log sigma)
    per example, starting from the encoder's output, with Adam (learning rate ``lr``
    decayed to 0 along a cosine) for ``steps`` steps of ``samples`` draws each. ``gradient``:
    ``"stl"`` (sticking the landing: the gradient of log p(x, z) - log q(z) through z only,
    module docstring) or ``"closed"`` (E_q[log p(x|z)] - KL, the KL in closed form when there
    is one; the gradient of earlier versions, run with 300 steps). ``antithetic``: each step's
    draws in pairs (eps, -eps) (the default; ``False``: independent draws, as before 0.2). The
    model's parameters are not touched. Uses the global random number generator.

    Returns:
        ``Independent(Normal(mu, sigma), 1)``, batch ``[B]``, event ``[D]``, detached (a
        hierarchy: its ladder posterior).
    """
    if steps < 0 or samples < 1:
        raise ValueError(f"steps must be >= 0 and samples >= 1, got steps={steps}, samples={samples}")
    if gradient not in ("stl", "closed"):
        raise ValueError(f"gradient must be stl or closed, got {gradient!r}")
    with torch.no_grad():
        start, build, family = _free_parameters(model.encode(x, c))
        prior = model.prior_distribution(c)
    density = DecoderDensity(model, x, c)  # log p(x|z) of these x
    params = [p.detach().clone().requires_grad_(True) for p in start]  # [B, ...] each
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    diagonal = family == "diagonal Gaussian" and gradient == "stl"
    for t in range(1, steps + 1):
        if diagonal:  # the same gradient written out: no autograd graph per step
            grads = _stl_diagonal(params, density, prior, samples, antithetic)
        else:
            grads = _autograd_step(params, build, density, prior, samples, gradient, kl, antithetic)
        # Adam (Kingma & Ba 2015), written out: two tensors need no optimizer machinery;
        # the learning rate follows a cosine from lr (first step) towards 0 (last step)
        step_size = lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
        with torch.no_grad():
            for p, g, (m, v) in zip(params, grads, moments):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
                p.sub_(step_size * m_hat / (v_hat.sqrt() + eps))
    with torch.no_grad():
        return build([p.detach() for p in params])


def _autograd_step(params: list[Tensor], build: Callable[[list[Tensor]], Distribution], density: DecoderDensity,
                   prior: Distribution, samples: int, gradient: str, kl: KLMethod,
                   antithetic: bool = True) -> tuple[Tensor, ...]:
    """The gradient of minus the ELBO in the free parameters, through autograd (any family)."""
    with torch.enable_grad():
        q = build(params)
        z = _from_noise(q, _antithetic_noise(samples, _mean_and_scale(q)[0], antithetic))  # [S, B, D]
        if gradient == "stl":
            # d/dz of log p(x|z) + log p(z) - log q(z) with q's parameters held (a fused decoder
            # gives its gradient without the log-density), then back through z = mu + sigma eps
            leaf = z.detach().requires_grad_(True)
            frozen = build([p.detach() for p in params])
            (g_rest,) = torch.autograd.grad((prior.log_prob(leaf) - frozen.log_prob(leaf)).sum(), leaf)
            g_z = density.grad(leaf) + g_rest  # [S, B, D]
            # the loss is minus the mean over samples, summed over the (separable) examples:
            # its gradient is that of sum(z * G), G = -g_z / S held fixed (a scalar: no grad_outputs)
            return torch.autograd.grad((z * (-g_z / samples)).sum(), params)
        reconstruction = density.log_prob(z).mean(0)  # [B]
        # each example's ELBO depends on its own (mu, sigma) only: the sum is separable
        loss = -(reconstruction - _kl(q, prior, z, kl)).sum()
        return torch.autograd.grad(loss, params)


def _antithetic_noise(samples: int, like: Tensor, paired: bool = True) -> Tensor:
    """Standard-normal noise ``[samples, *like.shape]`` in antithetic pairs: eps_1..eps_m drawn
    (m = ceil(samples / 2), from the global generator), then -eps_1..-eps_m, cut to ``samples``.
    Each draw is still N(0, I), so a mean over them stays unbiased; terms odd in eps cancel
    within a pair. ``paired=False``: ``samples`` independent draws."""
    if not paired:
        return torch.empty((samples, *like.shape), dtype=like.dtype, device=like.device).normal_()
    half = torch.empty((-(-samples // 2), *like.shape), dtype=like.dtype, device=like.device).normal_()
    return torch.cat([half, -half])[:samples]


@torch.no_grad()
def _stl_diagonal(params: list[Tensor], density: DecoderDensity, prior: Distribution, samples: int,
                  antithetic: bool = True) -> tuple[Tensor, Tensor]:
    """The sticking-the-landing gradient of minus the ELBO in (mu, log sigma) ``[B, D]`` of a
    diagonal Gaussian, written out: with z = mu + sigma eps and g = d/dz [log p(x, z) - log q(z)]
    (q held), g = d/dz log p(x|z) + d/dz log p(z) + eps / sigma, and the gradient is
    (-mean_s g, -mean_s g eps sigma). The same draws (:func:`_antithetic_noise`) and numbers as
    :func:`_autograd_step`'s."""
    loc, scale = params[0].detach(), params[1].detach().exp()
    eps = _antithetic_noise(samples, loc, antithetic)  # [S, B, D]
    z = loc + scale * eps
    g = density.grad(z) + _log_prob_and_grad(prior, z)[1] + eps / scale  # [S, B, D]
    return -g.sum(0) / samples, -(g * eps).sum(0) * scale / samples


@torch.no_grad()
def _paired_elbos(
    model: VAE, x: Tensor, q_a: Distribution, q_b: Distribution, samples: int, chunk: int, kl: KLMethod,
    c: Tensor | None = None, drawn: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """ELBOs of two posteriors of one family over the same x with shared noise eps ``[S, B, D]``.

    ``drawn``: q_a's draws already scored, (eps ``[S, B, D]``, log p(x|z) ``[S, B]``) (encoder
    IS's, :class:`~vaelab.evaluation.likelihood.EncoderDraws`): their noise is the shared one
    and q_a's decoder pass is not repeated. Returns (elbo_a, se_a, elbo_b, se_b, se of
    elbo_b - elbo_a), each ``[B]``.
    """
    prior = model.prior_distribution(c)
    density = DecoderDensity(model, x, c)  # log p(x|z) of these x
    ref = _mean_and_scale(q_a)[0]  # [B, D]: shape, dtype and device of the noise
    terms_a, terms_b = [], []
    done = 0
    while done < samples:
        s = min(chunk, samples - done)
        if drawn is None:
            eps, scored = torch.randn((s, *ref.shape), dtype=ref.dtype, device=ref.device), None  # [s, B, D]
        else:
            eps, scored = drawn[0][done : done + s].to(ref), drawn[1][done : done + s].to(ref)
        for q, out in ((q_a, terms_a), (q_b, terms_b)):
            z = _from_noise(q, eps)
            log_lik = scored if q is q_a and scored is not None else density.log_prob(z)  # [s, B]
            closed = _closed_kl(q, prior, kl)
            if closed is None:  # per-sample log p(x|z) + log p(z) - log q(z|x)
                out.append((log_lik + prior.log_prob(z) - q.log_prob(z)).double())
            else:
                out.append((log_lik - closed).double())
        done += s
    a, b = torch.cat(terms_a), torch.cat(terms_b)  # [S, B]
    root = math.sqrt(samples)
    sd = (lambda t: t.std(0) / root) if samples > 1 else (lambda t: torch.zeros_like(t[0]))
    return a.mean(0), sd(a), b.mean(0), sd(b), sd(b - a)


def gap_rows(total: int, n: int) -> Tensor:
    """Which of ``total`` examples the gap split takes: ``n`` uniformly at random (all of them
    when ``total <= n``), from the global random number generator."""
    count = min(n, total)
    if count < 1:
        raise ValueError(f"the gap split needs at least one example, got n={n} of {total}")
    return torch.randperm(total)[:count] if total > count else torch.arange(count)


def _drawn(draws: EncoderDraws | None, rows: Tensor, samples: int, q_enc: Distribution) -> tuple[Tensor, Tensor] | None:
    """The first ``samples`` draws (eps ``[S, b, D]``, log p(x|z) ``[S, b]``) of ``rows`` ``[b]``
    in ``draws``, or None where it lacks a row or has fewer draws. Draws whose encoder output
    is not ``q_enc``'s for these rows (another model's, or other data's) are refused."""
    if draws is None or draws.noise.shape[0] < samples:
        return None
    where = {int(r): i for i, r in enumerate(draws.rows.tolist())}
    if any(int(r) not in where for r in rows.tolist()):
        return None
    loc, scale = _diagonal_parts(q_enc)  # [b, D]
    n, d = draws.rows.numel(), loc.shape[-1]
    if (draws.noise.dim() != 3 or tuple(draws.noise.shape[1:]) != (n, d) or draws.log_lik.shape != draws.noise.shape[:2]
            or tuple(draws.loc.shape) != (n, d) or draws.scale.shape != draws.loc.shape):
        raise VaelabError(f"encoder_draws do not fit this model: noise {tuple(draws.noise.shape)}, log_lik "
                          f"{tuple(draws.log_lik.shape)}, loc {tuple(draws.loc.shape)} for {n} rows of a "
                          f"{d}-dimensional latent; keep them with log_likelihood(model, x, keep_rows=...)")
    pos = torch.tensor([where[int(r)] for r in rows.tolist()], device=draws.noise.device)
    kept_loc, kept_scale = draws.loc[pos].to(loc), draws.scale[pos].to(scale)
    if not (torch.allclose(kept_loc, loc, rtol=1e-4, atol=1e-5) and torch.allclose(kept_scale, scale, rtol=1e-4, atol=1e-6)):
        raise VaelabError("encoder_draws were not drawn by this model's encoder on these rows of x (its posterior "
                          "for them differs); keep them with log_likelihood(model, x, keep_rows=...) on the same "
                          "model and data, or leave encoder_draws out")
    return draws.noise[:samples, pos], draws.log_lik[:samples, pos]


def inference_gaps(
    model: VAE,
    x: Tensor,
    *,
    n: int = 100,
    log_px: Tensor | None = None,
    log_px_mc_se: Tensor | None = None,
    k: int = DEFAULTS.k,
    k_chunk: int = DEFAULTS.k_chunk,
    steps: int = DEFAULTS.gap_steps,
    lr: float = DEFAULTS.gap_lr,
    samples: int = DEFAULTS.gap_samples,
    eval_samples: int = DEFAULTS.gap_eval_samples,
    batch_size: int = DEFAULTS.batch_size,
    kl: KLMethod = "auto",
    indices: Tensor | None = None,
    device: torch.device | str | None = None,
    c: Tensor | None = None,
    log_px_estimator: str = "is",
    encoder_draws: EncoderDraws | None = None,
) -> InferenceGaps:
    """Approximation and amortization gaps on ``n`` examples of ``x`` (a random subset).

    Uses the global random number generator (seed it for reproducible numbers).

    Args:
        model: a VAE whose encoder returns diagonal Gaussians.
        x: data ``[N, *x_shape]``.
        n: how many examples (a uniformly random subset when N > n, all of them otherwise).
        log_px, log_px_mc_se: per-example log p(x) of **all** N examples and its Monte-Carlo
            standard error, if already estimated; otherwise estimated here with ``k``
            importance samples, ``k_chunk`` at a time.
        steps, lr, samples: the local optimisation (see :func:`optimal_posterior`).
        eval_samples: draws for each final ELBO estimate.
        batch_size: examples optimised together.
        kl: how the KL term is computed (see :func:`vaelab.objectives.kl_term`).
        indices: use exactly these rows of ``x`` instead of a random subset.
        c: the context ``[N, P]`` of a conditional model (the gaps of log p(x|c)).
        log_px_estimator: the name of the estimator that gave ``log_px`` (recorded).
        encoder_draws: encoder IS's draws of some rows of ``x``
            (``log_likelihood(..., keep_rows=indices).draws``): where they hold every example
            of the split with at least ``eval_samples`` draws, ELBO(q_phi) is scored from the
            first ``eval_samples`` of them and ELBO(q*) from their noise, and no fresh noise is
            drawn for the final ELBOs.

    Example:
        >>> g = inference_gaps(model, x_test, n=100)
        >>> g.summary().approximation_gap, g.summary().amortization_gap
    """
    batch_size = check_whole(batch_size, "batch_size")
    check_data(model, x, c)
    device = model_device(model, device)
    if indices is None:
        indices = gap_rows(x.shape[0], n)
    parts: dict[str, list[Tensor]] = {key: [] for key in ("ea", "sa", "eb", "sb", "sd", "loc", "scale")}
    for start in range(0, indices.numel(), batch_size):
        rows = indices[start : start + batch_size]
        xb = x[rows].to(device)
        cb = None if c is None else c[rows].to(device)
        with torch.no_grad():
            q_enc = model.encode(xb, cb)
        q_opt = optimal_posterior(model, xb, steps=steps, lr=lr, samples=samples, kl=kl, c=cb)
        chunk = max(1, PASS_ROWS // xb.shape[0])  # samples per pass
        drawn = _drawn(encoder_draws, rows, eval_samples, q_enc)
        ea, sa, eb, sb, sd = _paired_elbos(model, xb, q_enc, q_opt, eval_samples, chunk, kl, cb, drawn)
        loc, scale = _mean_and_scale(q_opt)
        family = _free_parameters(q_opt)[2]
        for key, value in zip(parts, (ea, sa, eb, sb, sd, loc, scale)):
            parts[key].append(value.detach().double().cpu())
    if log_px is None:
        ll = log_likelihood(model, x[indices], k, k_chunk=k_chunk, batch_size=batch_size, device=device,
                            c=None if c is None else c[indices])
        lp, lp_se = ll.per_example.double(), (1.0 / ll.ess - 1.0 / k).clamp(min=0).sqrt()
    else:
        lp = log_px[indices].double()
        lp_se = torch.zeros_like(lp) if log_px_mc_se is None else log_px_mc_se[indices].double()
    cat = {key: torch.cat(values) for key, values in parts.items()}
    settings = {"n": int(indices.numel()), "steps": steps, "lr": lr, "samples": samples,
                "eval_samples": eval_samples, "optimizer": "adam, cosine-decayed learning rate, sticking-the-landing gradient, draws in antithetic pairs",
                "family": family, "kl": kl, "log_px_estimator": log_px_estimator if log_px is not None else "is"}
    return InferenceGaps(
        indices=indices.cpu(), log_px=lp, log_px_mc_se=lp_se,
        elbo_encoder=cat["ea"], elbo_encoder_mc_se=cat["sa"],
        elbo_optimal=cat["eb"], elbo_optimal_mc_se=cat["sb"], amortization_mc_se=cat["sd"],
        loc=cat["loc"], scale=cat["scale"], settings=settings,
    )
