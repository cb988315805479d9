"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

Neal (2001), "Annealed importance sampling"; for decoder-based models Wu, Burda,
Salakhutdinov & Grosse (2017), "On the quantitative analysis of decoder-based generative
models"; BDMC: Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
bidirectional Monte Carlo".

**The path.** For one example x (and its context c), a geometric path of unnormalised
densities from a normalised start f_0 to the joint f_1(z) = p(x, z|c):

    f_beta(z) = f_0(z)^(1 - beta) p(x, z)^beta                    (start: the encoder's q(z|x, c))
    f_beta(z) = p(z|c) p(x|z, c)^beta                             (start: the prior p(z|c))

at 0 = beta_0 < beta_1 < ... < beta_T = 1, the sigmoidal schedule of Grosse et al. (2013)
(beta_t proportional to sigmoid(delta (2t/T - 1)), delta = 4: small steps at both ends).
Both are f_beta = f_0 exp(beta h) with h(z) = log p(x, z) - log f_0(z).

**The estimator.** A chain starts at z_0 ~ f_0 and, for t = 1..T, adds
(beta_t - beta_{t-1}) h(z_{t-1}) to its log weight, then moves z by a Markov transition that
leaves f_{beta_t} invariant. E[w] = p(x|c) exactly, so with S independent chains

    log p_hat(x) = log (1/S) sum_s w_s

is a stochastic lower bound (E[log p_hat] <= log p(x), by Jensen) that converges to log p(x)
as T grows. T = 1 is importance sampling with S samples from f_0.

**The transitions** are Hamiltonian Monte Carlo (Neal 2011): ``leapfrog`` steps of size eps
with a fresh N(0, I) momentum and a Metropolis correction. The step size eps_t of each
example is tuned towards the ``target_accept`` rate as in Wu et al. (times 1.02 after an
acceptance probability above the target, divided by 1.02 below, starting from
``step_size``), but in a separate *pilot* run (one chain, at most 200 steps), whose step
sizes (adapted by 5 % a step) the estimating chains then follow as a fixed function of beta: adapting the estimating
chains from their own acceptances makes each transition depend on the chain's past, and on
the linear-Gaussian model that put the estimate *above* log p(x) by 3-5 standard errors.

**BDMC.** On data simulated from the model, (z*, x) ~ p(z) p(x|z), z* is an exact sample of
p(z|x). Reverse AIS runs the same path backwards from z* (beta from 1 to 0); its weights
have E[w_rev] = 1/p(x), so -log (1/S) sum_s w_rev,s is a stochastic *upper* bound. The two
bound log p(x) of the simulated examples from both sides; the width of the bracket bounds the
error of forward AIS with these settings on data like the model's own (Wu et al.). Real test
data, off the model's distribution, may be harder.

Errors: ``stderr`` is over examples; ``mc_se`` per example is the larger of the delta-method
error of the log of a mean of S i.i.d. chain weights, sqrt(1/ESS - 1/S), and the standard error
of the mean of the chains' log weights, sd_S(log w) / sqrt(S) (S >= 2; the first order of the
delta method when log w is Gaussian, as AIS's log weights nearly are). With the default S = 4 the
first alone came out 1.2-2.3x below the spread of the estimates over 30 seeds (linear-Gaussian
models, T = 10-20); the larger of the two was within 0.90-1.01x of it, per example and for the
data set's mean (``tests/test_ais.py``). It counts the chains' spread only: the pilot run that
picks the step sizes is one draw shared by an example's chains.

A model must have continuous latents whose joint density can be differentiated: the
semi-supervised M2, whose latent includes the discrete label, is refused (its
importance-sampling estimates work).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from ..errors import VaelabError
from ..inputs import check_data, check_whole, model_device
from ..model import VAE, Classifier
from .likelihood import DecoderDensity, LogLikelihood
from .memory import check_fits
from .settings import AUTO_COST, AUTO_MIN_STEPS, DEFAULTS

__all__ = ["AISResult", "BDMCResult", "ais", "bdmc", "sigmoid_schedule", "check_ais_model", "auto_steps",
           "ais_unavailable", "AUTO_MIN_STEPS"]



def sigmoid_schedule(steps: int, delta: float = 4.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """beta_0..beta_T ``[T + 1]``: 0, sigmoid(delta (2t/T - 1)) rescaled to [0, 1], 1."""
    if steps == 1:
        return torch.tensor([0.0, 1.0], dtype=dtype)
    s = torch.sigmoid(delta * (2 * torch.arange(steps + 1, dtype=dtype) / steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _logmeanexp(t: Tensor, dim: int = 0) -> Tensor:
    return torch.logsumexp(t, dim) - math.log(t.shape[dim])


def _ess(log_w: Tensor) -> Tensor:
    """(sum w)^2 / sum w^2 over dim 0."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


@dataclass
class AISResult:
    """Per-example AIS estimates of log p(x) (or upper bounds, for ``direction="reverse"``).

    ``log_weights`` ``[S, N]`` are the chains' log weights; ``per_example`` ``[N]`` their
    log-mean-exp (reverse: minus it, the upper bound); ``acceptance`` ``[N]`` the HMC acceptance
    rate over chains and transitions; ``step_size`` ``[N]`` the chains' final mean step size;
    ``trace`` maps a number of steps T' to per-example estimates ``[N]`` of separate runs with T'
    steps (the convergence of the estimate as T grows; the last is this run); ``seconds`` the
    wall time.
    """

    per_example: Tensor  # [N]
    log_weights: Tensor  # [S, N]
    acceptance: Tensor  # [N]
    step_size: Tensor  # [N]
    steps: int
    chains: int
    leapfrog: int
    start: str
    direction: str = "forward"
    trace: dict[int, Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ess(self) -> Tensor:
        """ESS of the chain weights, 1..S ``[N]``."""
        return _ess(self.log_weights)

    @property
    def mc_se(self) -> Tensor:
        """Per-example Monte-Carlo error ``[N]``: the larger of sqrt(1/ESS - 1/S) (the delta method
        over chains) and sd(log w) / sqrt(S) (S >= 2; module docstring)."""
        delta = (1.0 / self.ess - 1.0 / self.chains).clamp(min=0).sqrt()
        if self.log_weights.shape[0] < 2:
            return delta
        spread = (self.log_weights.double().var(0) / self.log_weights.shape[0]).sqrt().to(delta.dtype)
        return torch.maximum(delta, spread)

    @property
    def mean(self) -> float:
        return self.as_likelihood().mean

    @property
    def stderr(self) -> float:
        """Standard error of the mean over examples."""
        return self.as_likelihood().stderr

    def as_likelihood(self) -> LogLikelihood:
        """The forward estimate as a :class:`LogLikelihood` (``k`` = S chains, ESS of the chain weights)."""
        return LogLikelihood(per_example=self.per_example, ess=self.ess, k=self.chains, estimator="ais",
                             seconds=self.seconds, se=self.mc_se)


@dataclass
class BDMCResult:
    """The BDMC bracket on ``n`` examples simulated from the model: forward AIS (``lower``)
    and reverse AIS (``upper``) per example ``[n]``, and the simulated data ``x`` (and ``c``)."""

    lower: AISResult
    upper: AISResult
    x: Tensor
    c: Tensor | None

    @property
    def width(self) -> Tensor:
        """upper - lower ``[n]``, nats: how far forward AIS can be from log p(x) on such data."""
        return self.upper.per_example - self.lower.per_example


def check_ais_model(model: Any) -> VAE:
    """The model as a :class:`VAE` whose latent AIS can anneal, or a one-line VaelabError."""
    if isinstance(model, Classifier) or not isinstance(model, VAE):
        if isinstance(model, Classifier):
            raise VaelabError("AIS cannot run on the semi-supervised M2 model: its latent is partly discrete "
                              "(the label y), and HMC moves only continuous latents; use --estimator is or mixture")
        raise VaelabError(f"AIS needs a vaelab VAE (prior, encoder and decoder over continuous latents), "
                          f"got {type(model).__name__}; use --estimator is")
    return model


def _log_prob_and_grad(d: Distribution, z: Tensor) -> tuple[Tensor, Tensor]:
    """log d(z) ``[S, B]`` and its gradient in z ``[S, B, D]`` (detached): -(z - mu) / sigma^2 written
    out for a diagonal Gaussian (the start and prior of most models; an autograd pass per
    leapfrog step cost about a tenth of AIS), autograd for any other distribution."""
    base = d.base_dist if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 else None
    if type(base) is Normal:
        with torch.no_grad():
            return d.log_prob(z), (base.loc - z) / base.scale.pow(2)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        log_prob = d.log_prob(leaf)
        (grad,) = torch.autograd.grad(log_prob.sum(), leaf)
    return log_prob.detach(), grad


class _Path:
    """f_beta(z) = f_0(z) exp(beta h(z)) for a batch: the start's log density C(z) (cheap) and the
    joint E(z) = log p(x, z) or log p(x|z) (the decoder), each with its gradient ``[S, B, D]``."""

    def __init__(self, model: VAE, x: Tensor, c: Tensor | None, start: str) -> None:
        self.model, self.x, self.c, self.start = model, x, c, start
        with torch.no_grad():  # fixed distributions: no graph back to the parameters
            self.prior = model.prior_distribution(c)
            self.q0: Distribution = model.encode(x, c) if start == "encoder" else self.prior
        self.gamma = 1.0 if start == "encoder" else 0.0  # h = E - gamma C
        self.density = DecoderDensity(model, x, c)  # log p(x|z): one binding of x for every pass

    def sample_start(self, chains: int) -> Tensor:
        if self.q0.batch_shape == torch.Size([]):  # an unconditional prior: one for all examples
            return self.q0.sample((chains, self.x.shape[0]))  # [S, B, D]
        return self.q0.sample((chains,))  # [S, B, D]

    def terms(self, z: Tensor, value: bool = True) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """(C, E, grad C, grad E) at z ``[S, B, D]``; E is None with ``value=False`` (the inner
        leapfrog steps need the gradient only: a fused decoder then skips the log-density)."""
        cheap, g_cheap = _log_prob_and_grad(self.q0, z)
        if not value:
            g_joint = self.density.grad(z)  # [S, B, D]
            if self.start == "encoder":
                g_joint = g_joint + _log_prob_and_grad(self.prior, z)[1]
            return cheap, None, g_cheap, g_joint
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            joint = self.density.log_prob(leaf)  # [S, B]
            (g_joint,) = torch.autograd.grad(joint.sum(), leaf)
        joint = joint.detach()
        if self.start == "encoder":
            log_prior, g_prior = _log_prob_and_grad(self.prior, z)
            joint, g_joint = joint + log_prior, g_joint + g_prior
        return cheap, joint, g_cheap, g_joint

    def h(self, cheap: Tensor, joint: Tensor) -> Tensor:
        return joint - self.gamma * cheap  # [S, B]

    def f(self, beta: float, cheap: Tensor, joint: Tensor) -> Tensor:
        return (1 - beta * self.gamma) * cheap + beta * joint

    def grad(self, beta: float, g_cheap: Tensor, g_joint: Tensor) -> Tensor:
        return (1 - beta * self.gamma) * g_cheap + beta * g_joint


def _anneal(path: _Path, z: Tensor, betas: Tensor, leapfrog: int, eps: Tensor, *,
            target_accept: float | None = None, adapt_rate: float = 1.02) -> tuple[Tensor, Tensor, Tensor]:
    """Run chains from z ``[S, B, D]`` along ``betas`` ``[T + 1]``.

    ``eps``: step sizes ``[T - 1, B]`` of the T - 1 transitions (fixed: a valid AIS run), or,
    with ``target_accept``, the initial step size ``[B]`` adapted after every transition (the
    pilot run; its estimate is not used). Returns (log w ``[S, B]``, acceptance rate ``[B]``,
    the step sizes used ``[T - 1, B]``, averaged over chains).
    """
    dtype = z.dtype
    cheap, joint, g_cheap, g_joint = path.terms(z)
    assert joint is not None
    log_w = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)  # [S, B]
    accepted = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
    betas_list = betas.tolist()
    moves = len(betas_list) - 2  # no transition after the last increment
    adapt = target_accept is not None
    current = eps.to(dtype).expand(z.shape[0], -1)[..., None].clone() if adapt else None  # [S, B, 1]
    used = []
    for t in range(1, len(betas_list)):
        beta_prev, beta = betas_list[t - 1], betas_list[t]
        log_w += (beta - beta_prev) * path.h(cheap, joint).double()
        if t == len(betas_list) - 1:
            break
        # --- one HMC transition leaving f_beta invariant ------------------------------------
        e = current if current is not None else eps[t - 1].to(dtype)[None, :, None]  # [S or 1, B, 1]
        used.append(e[..., 0].double().mean(0))
        p0 = torch.randn_like(z)  # [S, B, D]
        f0 = path.f(beta, cheap, joint)
        zn, p = z, p0 + 0.5 * e * path.grad(beta, g_cheap, g_joint)
        for step in range(leapfrog):
            zn = zn + e * p
            c_n, j_n, gc_n, gj_n = path.terms(zn, value=step == leapfrog - 1)  # the density at the end only
            p = p + (e if step < leapfrog - 1 else 0.5 * e) * path.grad(beta, gc_n, gj_n)
        assert j_n is not None
        f1 = path.f(beta, c_n, j_n)
        log_ratio = (f1 - 0.5 * p.pow(2).sum(-1)) - (f0 - 0.5 * p0.pow(2).sum(-1))  # [S, B]
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        accept_prob = log_ratio.clamp(max=0).exp()
        take = torch.rand_like(accept_prob).log() < log_ratio  # [S, B]
        keep = take[..., None]
        z = torch.where(keep, zn, z)
        cheap, joint = torch.where(take, c_n, cheap), torch.where(take, j_n, joint)
        g_cheap, g_joint = torch.where(keep, gc_n, g_cheap), torch.where(keep, gj_n, g_joint)
        accepted += accept_prob.double()
        if current is not None and target_accept is not None:
            up = torch.where(accept_prob > target_accept, adapt_rate, 1 / adapt_rate).to(dtype)[..., None]
            current = (current * up).clamp(1e-4, 10.0)
    rate = accepted.mean(0) / max(moves, 1)
    steps_used = torch.stack(used) if used else torch.empty((0, z.shape[1]), dtype=torch.float64, device=z.device)
    return log_w, rate, steps_used


PILOT_STEPS = 200  # transitions of the pilot run that tunes the step sizes
PILOT_RANGE = 10.0  # the factor by which even a short pilot can change the step size


def _tuned_step_sizes(path: _Path, betas: Tensor, leapfrog: int, step_size: float, target_accept: float) -> Tensor:
    """Step sizes ``[T - 1, B]`` for the transitions at betas[1:-1]: a pilot run of one chain
    per example on a schedule of at most ``PILOT_STEPS`` steps adapts its step size towards
    ``target_accept`` (by 5 % a transition, more when the run is much longer), and each transition of the
    run takes the pilot's step size at the nearest beta.

    Adapting the step sizes of the estimating chains themselves, from their own acceptances,
    makes each transition depend on the chain's past: the weights are then no longer exact,
    and on the linear-Gaussian model the estimate came out above log p(x) by several standard
    errors. A separate pilot keeps every transition of the estimating chains fixed in advance.
    """
    t = betas.numel() - 1
    b = path.x.shape[0]
    if t < 2:
        return torch.empty((0, b), dtype=torch.float64)
    pilot_t = min(t, PILOT_STEPS)
    pilot_betas = sigmoid_schedule(pilot_t)
    # the pilot must cover the run's range, and a short pilot must still be able to move the
    # step size tenfold (measured on the MLP VAEs: a faster-moving pilot, tuned for T = 25, chose step sizes
    # that made the estimate looser on mnist5k and tighter on the 8x8 digits; tenfold was between)
    rate = max(1.05, 1.02 ** ((t - 1) / max(pilot_t - 1, 1)), PILOT_RANGE ** (1 / max(pilot_t - 2, 1)))
    start = torch.full((b,), step_size, dtype=torch.float64, device=path.x.device)
    with torch.no_grad():
        _, _, pilot_eps = _anneal(path, path.sample_start(1), pilot_betas, leapfrog, start,
                                  target_accept=target_accept, adapt_rate=rate)  # [pilot_t - 1, B]
    if pilot_eps.shape[0] == 0:
        return start[None].expand(t - 1, -1).clone()
    # each run transition at beta (ascending or descending) takes the pilot's step nearest in beta
    at = pilot_betas[1:-1].to(pilot_eps.device)  # [pilot_t - 1]
    wanted = betas[1:-1].to(pilot_eps.device)  # [T - 1]
    nearest = (wanted[:, None] - at[None, :]).abs().argmin(1)  # [T - 1]
    return pilot_eps[nearest]


def _batched(model: VAE, x: Tensor, c: Tensor | None, batch_size: int, device: torch.device,
             run: Callable[[Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor, Tensor]],
             z_star: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    outs: list[tuple[Tensor, Tensor, Tensor]] = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device)
        cb = None if c is None else c[i : i + batch_size].to(device)
        zb = None if z_star is None else z_star[i : i + batch_size].to(device)
        outs.append(tuple(t.cpu() for t in run(xb, cb, zb)))  # type: ignore[arg-type]
    return (torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs]), torch.cat([o[2] for o in outs], 1))


def auto_steps(k: int, chains: int, leapfrog: int) -> int:
    """T at which AIS with ``chains`` chains of ``leapfrog`` leapfrog steps costs about the CPU
    time of encoder IS with ``k`` samples: T = K * AUTO_COST / (S (L + 1)), at least 1
    (K = 1000, S = 4, L = 5: T = 25)."""
    return max(1, int(k * AUTO_COST / (chains * (leapfrog + 1))))


def ais_unavailable(model: Any, x: Tensor, c: Tensor | None = None, start: str = "encoder") -> str | None:
    """Why AIS cannot run on ``model`` (e.g. the M2 model's discrete label, a start distribution
    that cannot be sampled or scored, a decoder without a gradient in z), or None when it can.
    Checked on the first example of ``x`` (and ``c``)."""
    try:
        vae = check_ais_model(model)
        device = next(vae.parameters()).device
        _probe(vae, x[:1].to(device), None if c is None else c[:1].to(device), start)
    except VaelabError as err:
        return str(err)
    return None


def _validate(steps: int, chains: int, leapfrog: int, step_size: float, target_accept: float, start: str) -> None:
    for name, value, high in (("steps", steps, 1_000_000), ("chains", chains, 100_000), ("leapfrog", leapfrog, 1000)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise VaelabError(f"AIS {name} must be a whole number from 1 to {high:,}, got {value!r}")
    if not (isinstance(step_size, (int, float)) and 0 < step_size <= 10):
        raise VaelabError(f"AIS step_size must be in (0, 10], got {step_size!r}")
    if not (isinstance(target_accept, (int, float)) and 0 < target_accept < 1):
        raise VaelabError(f"AIS target_accept must be in (0, 1), got {target_accept!r}")
    if start not in ("encoder", "prior"):
        raise VaelabError(f"AIS start must be encoder or prior, got {start!r}")


def _probe(model: VAE, x: Tensor, c: Tensor | None, start: str) -> None:
    """Refuse a model whose start cannot be sampled or scored, or whose joint cannot be differentiated."""
    try:
        prior = model.prior_distribution(c)
    except Exception as err:  # noqa: BLE001: the part's own failure, named
        raise VaelabError(f"AIS: the prior {type(model.prior).__name__} failed ({err})") from None
    try:
        discrete = bool(getattr(prior.support, "is_discrete", False))
    except NotImplementedError:  # a distribution that does not declare its support (e.g. a mixture of flows)
        discrete = False
    if discrete:
        raise VaelabError(f"AIS: the prior {type(model.prior).__name__} is over discrete values; HMC needs continuous latents")
    path = _Path(model, x, c, start)
    try:
        z = path.sample_start(2)
    except NotImplementedError:
        part = "posterior" if start == "encoder" else "prior"
        raise VaelabError(f"AIS: the {part} {type(model.encoder if start == 'encoder' else model.prior).__name__} "
                          "cannot be sampled; use --ais-start " + ("prior" if start == "encoder" else "encoder")) from None
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        try:
            log_lik = model.decode(zz, c).log_prob(x)  # [2, B]
            (g_lik,) = torch.autograd.grad(log_lik.sum(), zz, allow_unused=True)
        except RuntimeError as err:
            g_lik, why = None, str(err).splitlines()[0]
        else:
            why = "no gradient reaches z"
    if g_lik is None:
        raise VaelabError(f"AIS: log p(x|z) of the decoder {type(model.decoder).__name__} cannot be differentiated "
                          f"in z ({why}); HMC needs its gradient")
    try:
        _, joint, g_cheap, g_joint = path.terms(z)
    except NotImplementedError:
        raise VaelabError(f"AIS from the encoder needs the density of q(z|x) at any z; the posterior "
                          f"{type(model.encoder).__name__} gives it only for its own samples: use --ais-start prior") from None
    except RuntimeError as err:
        raise VaelabError(f"AIS: log p(x, z) of the decoder {type(model.decoder).__name__} cannot be differentiated "
                          f"in z ({str(err).splitlines()[0]})") from None
    if not bool(torch.isfinite(g_joint).all() & torch.isfinite(g_cheap).all()):
        raise VaelabError(f"AIS: the gradient of log p(x, z) (decoder {type(model.decoder).__name__}) is not finite "
                          "at samples of the start distribution")


def ais(
    model: Any,
    x: Tensor,
    *,
    steps: int = DEFAULTS.steps,
    chains: int = DEFAULTS.chains,
    leapfrog: int = DEFAULTS.leapfrog,
    step_size: float = DEFAULTS.step_size,
    target_accept: float = DEFAULTS.target_accept,
    start: str = DEFAULTS.ais_start,
    batch_size: int = DEFAULTS.batch_size,
    ladder: int = 0,
    c: Tensor | None = None,
    device: torch.device | str | None = None,
    z_star: Tensor | None = None,
) -> AISResult:
    """AIS estimates of log p(x|c) for every example of ``x`` ``[N, *x_shape]``, all examples of
    a batch and their ``chains`` chains annealed together.

    Uses the global random number generator (seed it for reproducible numbers).

    Args:
        model: a :class:`~vaelab.model.VAE` with continuous latents (M2 is refused).
        steps: T, intermediate distributions (the cost grows linearly with it).
        chains: S, independent chains per example.
        leapfrog: leapfrog steps per HMC transition (gradient evaluations per step of the path).
        step_size: the initial HMC step size of the pilot run that tunes the step sizes towards
            ``target_accept`` (see :func:`_tuned_step_sizes`).
        start: ``"encoder"`` (f_0 = q(z|x, c)) or ``"prior"`` (f_0 = p(z|c)).
        batch_size: examples per pass (memory grows with ``batch_size * chains``; checked first).
        ladder: also run with T/2, T/4, ... (``ladder`` shorter runs) for :attr:`AISResult.trace`.
        c: the context ``[N, P]`` of a conditional model.
        z_star: exact posterior samples ``[N, D]`` (simulated data): run *reverse* AIS from them
            and return upper bounds (see :func:`bdmc`).

    Example:
        >>> r = ais(model, x_test[:100], steps=1000, chains=4)
        >>> r.mean, r.stderr, float(r.acceptance.mean())
    """
    _validate(steps, chains, leapfrog, step_size, target_accept, start)
    vae = check_ais_model(model)
    device = model_device(vae, device)
    batch_size = check_whole(batch_size, "batch_size")
    check_data(vae, x, c)
    x0 = x[:1].to(device)
    c0 = None if c is None else c[:1].to(device)
    _probe(vae, x0, c0, start)
    rows = min(batch_size, x.shape[0]) * chains
    check_fits(vae, x0, c0, rows, what=f"AIS with {min(batch_size, x.shape[0])} examples x {chains} chains per pass",
               fix="lower --batch-size or --chains")
    reverse = z_star is not None
    dtype = next(vae.parameters()).dtype

    def one(t_steps: int) -> tuple[Tensor, Tensor, Tensor]:
        betas = sigmoid_schedule(t_steps)
        if reverse:
            betas = betas.flip(0)

        def run(xb: Tensor, cb: Tensor | None, zb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
            path = _Path(vae, xb, cb, start)
            eps = _tuned_step_sizes(path, betas, leapfrog, step_size, target_accept)  # [T - 1, B]
            z0 = path.sample_start(chains) if zb is None else zb.to(dtype).expand(chains, *zb.shape).clone()  # [S, B, D]
            with torch.no_grad():
                return _anneal(path, z0.detach(), betas, leapfrog, eps)

        return _batched(vae, x, c, batch_size, device, run, z_star)

    began = time.perf_counter()
    trace: dict[int, Tensor] = {}
    for j in range(ladder, 0, -1):
        shorter = max(1, steps // 2**j)
        if shorter not in trace and shorter < steps:
            lw, _, _ = one(shorter)
            trace[shorter] = -_logmeanexp(lw) if reverse else _logmeanexp(lw)
    log_w, rate, eps = one(steps)
    estimate = -_logmeanexp(log_w) if reverse else _logmeanexp(log_w)
    trace[steps] = estimate
    return AISResult(per_example=estimate, log_weights=log_w, acceptance=rate, step_size=eps.double().mean(0) if eps.shape[0] else torch.full((x.shape[0],), float(step_size), dtype=torch.float64),
                     steps=steps, chains=chains, leapfrog=leapfrog, start=start,
                     direction="reverse" if reverse else "forward", trace=trace,
                     seconds=time.perf_counter() - began)


@torch.no_grad()
def simulate(model: VAE, n: int, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """n draws (z, x) ~ p(z|c) p(x|z, c): z ``[n, D]`` and x ``[n, *x_shape]`` (c ``[n, P]`` or None)."""
    prior = model.prior_distribution(c)
    z = prior.sample() if c is not None else prior.sample((n,))  # [n, D]
    return z, model.decode(z, c).sample()


def bdmc(
    model: Any,
    n: int,
    *,
    steps: int = DEFAULTS.steps,
    chains: int = DEFAULTS.chains,
    leapfrog: int = DEFAULTS.leapfrog,
    step_size: float = DEFAULTS.step_size,
    target_accept: float = DEFAULTS.target_accept,
    start: str = DEFAULTS.ais_start,
    batch_size: int = DEFAULTS.batch_size,
    c: Tensor | None = None,
    device: torch.device | str | None = None,
) -> BDMCResult:
    """The BDMC bracket of log p(x|c) on ``n`` examples simulated from the model: forward AIS
    (a stochastic lower bound) and reverse AIS from the simulating z (a stochastic upper bound),
    with the same settings (see :func:`ais`). ``c``: contexts ``[n, P]`` of a conditional model
    (e.g. those of the test set). Uses the global random number generator.

    Example:
        >>> b = bdmc(model, 100, steps=1000)
        >>> float(b.width.mean())  # nats between the bounds
    """
    vae = check_ais_model(model)
    if n < 1:
        raise VaelabError(f"BDMC needs at least one simulated example, got {n}")
    if c is not None and c.shape[0] != n:
        raise VaelabError(f"BDMC got {c.shape[0]} contexts for {n} simulated examples; give one per example")
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    z, x = simulate(vae, n, None if c is None else c.to(device))
    options = dict(steps=steps, chains=chains, leapfrog=leapfrog, step_size=step_size, target_accept=target_accept,
                   start=start, batch_size=batch_size, c=c, device=device)
    lower = ais(vae, x, **options)  # type: ignore[arg-type]
    upper = ais(vae, x, z_star=z, **options)  # type: ignore[arg-type]
    return BDMCResult(lower=lower, upper=upper, x=x.cpu(), c=c)
