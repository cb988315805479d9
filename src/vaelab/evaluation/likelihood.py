"""Importance-sampled estimates of log p(x) and the ELBO over a whole data set.

For each example, with K samples z_k ~ q(z|x) and log weights log w_k (see
:meth:`vaelab.model.VAE.trace`),

    log p(x) ~= log (1/K) sum_k w_k,

a consistent estimator (biased low for finite K, by Jensen) that converges to log p(x) as
K grows. Samples are drawn ``k_chunk`` at a time and combined with a running logsumexp, so
memory is bounded by ``batch_size * k_chunk`` whatever K is.

How far the estimate can be trusted is told by the Pareto k-hat of the weights
(:mod:`~vaelab.evaluation.psis`, Vehtari et al.): the largest ``tail_length(K) + 1`` log weights
of each example are kept while streaming (a running top-M), and a generalized Pareto
distribution fitted to them. Above 0.7 the estimate is unreliable, whatever its ESS says.

Every estimate here scores 10^5-10^6 decoder rows, and on the MLP VAE most of the time goes
to the decoder's ``[rows, P]`` output layer and the log-density on it: for the Bernoulli decoder
on a ReLU MLP (logits l = W h + b of its last hidden layer h), :class:`DecoderDensity` computes

    log p(x|z) = sum_p x_p l_p - softplus(l_p) = h . (W^T x) + b . x - sum_p softplus(l_p),

the first two terms once per example (``[B, H]``, ``[B]``), not once per sample, so the
``[rows, P]`` logits pass through one elementwise kernel (softplus) and one sum instead of
four; its gradient in z (AIS, the gap split) is written out and needs no softplus at all. The
encoder runs once per batch of examples, not once per ``k_chunk`` samples. On the default
mnist5k model that made encoder IS 1.8x faster at the same draws (README "How long
``vaelab eval`` takes").

The proposal need not be the encoder: ``proposal(xb, cb)`` may return any distribution over
z with ``sample`` and ``log_prob`` (e.g. the defensive mixture of
:mod:`~vaelab.evaluation.proposals`); the weights are then p(x, z) / proposal(z).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from typing import Callable

from torch.distributions import Distribution

from ..context import Batch
from ..distributions.likelihoods import BernoulliDecoder
from ..errors import VaelabError
from ..model import VAE, SampleWithDensity
from ..nets import MLP
from ..objectives import KLMethod, data_elbo
from .memory import check_fits
from .psis import MIN_TAIL, pareto_khat, tail_length
from .settings import DEFAULTS, K_CHUNK  # noqa: F401  (K_CHUNK: also importable from here, as in 0.1.0)

__all__ = ["LogLikelihood", "DatasetELBO", "log_likelihood", "dataset_elbo", "decoder_log_prob", "DecoderDensity"]


@dataclass
class LogLikelihood:
    """Per-example estimates of log p(x) and their summary, in nats.

    ``stderr`` is the standard error of the mean over examples. ``ess`` is the effective
    sample size of the normalised importance weights, (sum w)^2 / sum w^2, per example;
    ``khat`` the Pareto k-hat of the weights per example (None when K < 5, or for AIS);
    ``estimator`` names how the estimate was made (``"is"``: importance sampling from the
    encoder, ``"mixture"``: from the defensive mixture, ``"ais"``: annealed IS with ``k``
    chains); ``seconds`` is the wall time it took.
    """

    per_example: Tensor  # [N]
    ess: Tensor  # [N]
    k: int
    khat: Tensor | None = None  # [N]
    estimator: str = "is"
    seconds: float = 0.0

    @property
    def mc_se(self) -> Tensor:
        """Per-example Monte-Carlo standard error sqrt(1/ESS - 1/K) ``[N]`` (delta method)."""
        return (1.0 / self.ess - 1.0 / self.k).clamp(min=0).sqrt()

    @property
    def mean(self) -> float:
        return float(self.per_example.mean())

    @property
    def stderr(self) -> float:
        n = self.per_example.numel()
        return float(self.per_example.std() / math.sqrt(n)) if n > 1 else float("nan")


@dataclass
class DatasetELBO:
    """ELBO and its terms averaged over a data set, in nats per example."""

    elbo: float
    reconstruction: float
    kl: float
    n: int


def _bernoulli_mlp(model: object, c: Tensor | None) -> tuple[list[nn.Module], nn.Linear] | None:
    """(the layers before the output layer, the output layer) of a plain VAE's Bernoulli decoder
    on an :class:`~vaelab.nets.MLP` without context, else None (every other decoder)."""
    if c is not None or not isinstance(model, VAE) or type(model).decode is not VAE.decode:
        return None
    decoder = model.decoder
    if type(decoder) is not BernoulliDecoder or type(decoder.net) is not MLP or decoder.net.context != 0:
        return None
    layers = list(decoder.net)
    out = layers[-1]
    if type(out) is not nn.Linear or out.bias is None or out.out_features != math.prod(decoder.x_shape):
        return None
    return layers[:-1], out


def _relu_body(body: list[nn.Module]) -> bool:
    """Whether the layers before the output layer are Flatten, Linear and ReLU only."""
    return all(type(m) in (nn.Flatten, nn.Linear, nn.ReLU) for m in body)


class DecoderDensity:
    """log p(x|z, c) of fixed data ``x`` ``[B, *x_shape]`` (and context ``c``) as a function
    of the latents ``z`` ``[*S, B, D]``: :meth:`log_prob` ``[*S, B]`` and :meth:`grad`, its
    gradient in z ``[*S, B, D]``.

    It is ``model.decode(z, c).log_prob(x)``, except for the Bernoulli decoder on a ReLU
    :class:`~vaelab.nets.MLP` (without context), where the output layer and the density are
    fused (module docstring: the same numbers up to float rounding), W^T x and b . x are
    computed once for all the passes that score these x, and the gradient is written out:

        d/dh log p(x|z) = W^T x - W^T sigmoid(l),  then back through the ReLU layers to z,

    so :meth:`grad` needs no softplus pass (HMC's inner leapfrog steps and the gap split's
    optimisation read only the gradient). The fused density is differentiable in z only, never
    in the decoder's parameters: an evaluation does not train them.

    Example:
        >>> density = DecoderDensity(vae, x)  # x [B, 1, 28, 28]
        >>> density.log_prob(vae.encode(x).sample((10,))).shape  # [10, B]
    """

    def __init__(self, model: VAE, x: Tensor, c: Tensor | None = None) -> None:
        self.model, self.x, self.c = model, x, c
        parts = _bernoulli_mlp(model, c)
        self.fused = parts is not None and _relu_body(parts[0])
        if parts is not None and self.fused:
            self.body, self.out = parts
            with torch.no_grad():
                flat = x.reshape(x.shape[0], -1).to(self.out.weight.dtype)  # [B, P]
                self.xw = flat @ self.out.weight  # [B, H]: sum_p x_p l_p = h . (W^T x) + b . x
                self.xb = flat @ self.out.bias  # [B]

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(x|z, c) ``[*S, B]``; differentiable in z."""
        if not self.fused:
            return self.model.decode(z, self.c).log_prob(self.x)
        if torch.is_grad_enabled() and z.requires_grad:
            return _FusedBernoulli.apply(z, self)
        with torch.no_grad():
            return self._pass(z, with_value=True, with_grad=False)[0]  # type: ignore[return-value]

    def grad(self, z: Tensor) -> Tensor:
        """The gradient in z of log p(x|z, c), ``[*S, B, D]`` (each sample's own: the
        log-densities of the rows are separable)."""
        if self.fused:
            with torch.no_grad():
                return self._pass(z.detach(), with_value=False, with_grad=True)[1]  # type: ignore[return-value]
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.model.decode(leaf, self.c).log_prob(self.x).sum(), leaf)
        return grad

    def _pass(self, z: Tensor, with_value: bool, with_grad: bool) -> tuple[Tensor | None, Tensor | None]:
        """The fused decoder: log p(x|z) ``[*S, B]`` and/or its gradient in z ``[*S, B, D]``."""
        lead = z.shape[:-1]
        h = z.reshape(-1, z.shape[-1])  # [R, D]
        saved: list[tuple[nn.Module, Tensor]] = []
        for layer in self.body:
            h = layer(h)
            saved.append((layer, h))
        h = h.reshape(*lead, h.shape[-1])  # [*S, B, H]
        logits = F.linear(h, self.out.weight, self.out.bias)  # [*S, B, P]
        value = grad = None
        if with_value:
            value = (h * self.xw).sum(-1) + self.xb - F.softplus(logits).sum(-1)  # [*S, B]
        if with_grad:
            g = (self.xw - logits.sigmoid_() @ self.out.weight).reshape(-1, self.xw.shape[-1])  # [R, H]
            for layer, output in reversed(saved):
                if type(layer) is nn.ReLU:  # g where the unit was active, else 0: ReLU's own backward kernel
                    g = torch.ops.aten.threshold_backward(g, output, 0)
                elif type(layer) is nn.Linear:
                    g = g @ layer.weight  # [R, in]
            grad = g.reshape(*lead, g.shape[-1])
        return value, grad


class _FusedBernoulli(torch.autograd.Function):
    """:meth:`DecoderDensity.log_prob` as an autograd function of z (the decoder's parameters
    held fixed): the forward pass computes the gradient too, the backward pass scales it."""

    @staticmethod
    def forward(ctx, z: Tensor, density: DecoderDensity) -> Tensor:  # type: ignore[override]
        with torch.no_grad():
            value, grad = density._pass(z, with_value=True, with_grad=True)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_value: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_value[..., None] * grad, None


def decoder_log_prob(model: VAE, z: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
    """log p(x|z, c) ``[*S, B]`` for latents ``z`` ``[*S, B, D]`` and data ``x`` ``[B, *x_shape]``:
    ``DecoderDensity(model, x, c).log_prob(z)`` (one pass; bind x once for many)."""
    return DecoderDensity(model, x, c).log_prob(z)


def _plain_trace(model: object) -> bool:
    """Whether ``model.log_weights`` is :class:`~vaelab.model.VAE`'s own (encoder, prior,
    decoder), so that the encoder's output may be kept across passes of samples."""
    return (isinstance(model, VAE) and type(model).log_weights is VAE.log_weights
            and type(model).trace is VAE.trace)


def _encoder_weights(model: VAE, density: DecoderDensity, q: Distribution, prior: Distribution, k: int) -> Tensor:
    """``model.log_weights(x, k, c)`` ``[k, B]`` from the encoder's output ``q`` (batch ``[B]``)
    and the prior, computed once per batch: the same draws as :meth:`VAE.trace`."""
    if isinstance(q, SampleWithDensity):  # flows: the density comes with the sample
        z, log_q = q.rsample_and_log_prob((k,))  # [k, B, D], [k, B]
    else:
        z = q.rsample((k,))  # [k, B, D]
        log_q = q.log_prob(z)
    return density.log_prob(z) + prior.log_prob(z) - log_q  # [k, B]


def _batches(x: Tensor, batch_size: int):
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


def _pairs(x: Tensor, c: Tensor | None, batch_size: int):
    """(x, c) slices of ``batch_size`` rows; c may be None (an unconditional model)."""
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], None if c is None else c[i : i + batch_size]


@torch.no_grad()
def log_likelihood(
    model: VAE,
    x: Tensor,
    k: int = DEFAULTS.k,
    *,
    batch_size: int = DEFAULTS.batch_size,
    k_chunk: int = DEFAULTS.k_chunk,
    device: torch.device | str | None = None,
    c: Tensor | None = None,
    proposal: Callable[[Tensor, Tensor | None], Distribution] | None = None,
    estimator: str = "is",
) -> LogLikelihood:
    """Estimate log p(x) (log p(x|c) for a conditional model) for every example of ``x`` with
    ``k`` importance samples, and the Pareto k-hat of their weights.

    Args:
        model: the VAE (put in eval mode by the caller if it has dropout/batch norm).
        x: data ``[N, *x_shape]``.
        c: the context ``[N, P]`` of a conditional model, else None.
        k: importance samples per example (the literature uses 5000; 1000 is common).
        batch_size: examples per forward pass.
        k_chunk: samples per forward pass; memory grows with ``batch_size * k_chunk``.
        device: where to compute (default: the model's device).
        proposal: ``proposal(xb, cb)`` -> a distribution over z, batch ``[B]``, event ``[D]``,
            to sample from instead of the encoder (a :class:`~vaelab.model.VAE` only).
        estimator: the name recorded in the result (``"is"``, ``"mixture"``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VaelabError(f"k must be >= 1 (importance samples per example), got {k!r}")
    if isinstance(k_chunk, bool) or not isinstance(k_chunk, int) or k_chunk < 1:
        raise VaelabError(f"k_chunk must be a whole number >= 1, got {k_chunk!r}")
    if device is None:
        device = next(model.parameters()).device
    if isinstance(model, VAE) and x.shape[0] > 0:  # refuse a pass that will not fit, before it starts
        check_fits(model, x[:1].to(device), None if c is None else c[:1].to(device),
                   min(batch_size, x.shape[0]) * min(k_chunk, k),
                   what=f"log p(x) with {min(batch_size, x.shape[0])} examples x {min(k_chunk, k)} samples per pass",
                   fix="lower --batch-size or --k-chunk")
    began = time.perf_counter()
    keep = tail_length(k) + 1 if tail_length(k) >= MIN_TAIL else 0  # the largest log weights, for the Pareto fit
    per_example, ess, khat = [], [], []
    for xb, cb in _pairs(x, c, batch_size):
        xb = xb.to(device)
        cb = None if cb is None else cb.to(device)
        q = None if proposal is None else proposal(xb, cb)
        plain = q is None and _plain_trace(model)
        if plain:  # the encoder and the prior once for the batch, not once per k_chunk samples
            q_enc, prior, density = model.encode(xb, cb), model.prior_distribution(cb), DecoderDensity(model, xb, cb)
        log_sum_w = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=device)  # log sum_k w_k
        log_sum_w2 = torch.full_like(log_sum_w, -math.inf)  # log sum_k w_k^2
        top = torch.empty((0, xb.shape[0]), device=device)  # [<=M+1, B]
        done = 0
        while done < k:
            kc = min(k_chunk, k - done)
            if plain:
                raw = _encoder_weights(model, density, q_enc, prior, kc)  # [kc, B]
            else:
                raw = model.log_weights(xb, kc, cb) if q is None else _proposal_weights(model, xb, cb, q, kc)
            lw = raw.double()
            log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(lw, 0))
            log_sum_w2 = torch.logaddexp(log_sum_w2, torch.logsumexp(2 * lw, 0))
            if keep:
                both = torch.cat([top.to(raw.dtype), raw])  # the model's precision: k-hat's resolution
                top = torch.topk(both, min(keep, both.shape[0]), dim=0).values
            done += kc
        per_example.append((log_sum_w - math.log(k)).cpu())
        ess.append(torch.exp(2 * log_sum_w - log_sum_w2).cpu())
        if keep:
            khat.append(pareto_khat(top, total=k).cpu())
    return LogLikelihood(per_example=torch.cat(per_example), ess=torch.cat(ess), k=k,
                         khat=torch.cat(khat) if keep else None, estimator=estimator,
                         seconds=time.perf_counter() - began)


def _proposal_weights(model: VAE, x: Tensor, c: Tensor | None, q: Distribution, k: int) -> Tensor:
    """log p(x, z_k|c) - log q(z_k) for k draws of the proposal q, ``[k, B]``."""
    z = q.sample((k,))  # [k, B, D]
    return decoder_log_prob(model, z, x, c) + model.prior_distribution(c).log_prob(z) - q.log_prob(z)


@torch.no_grad()
def dataset_elbo(
    model: VAE,
    x: Tensor,
    *,
    k: int = 1,
    kl: KLMethod = "auto",
    batch_size: int = 500,
    device: torch.device | str | None = None,
    c: Tensor | None = None,
) -> DatasetELBO:
    """The ELBO, reconstruction and KL terms averaged over ``x`` (``k`` samples per example;
    ``c`` the context of a conditional model)."""
    if device is None:
        device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64)
    for xb, cb in _pairs(x, c, batch_size):
        terms = data_elbo(model, Batch(xb.to(device), None if cb is None else cb.to(device)), k, kl)
        sums += torch.stack(
            [terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()]
        ).double().cpu()
    n = x.shape[0]
    e, r, kl_value = (sums / n).tolist()
    return DatasetELBO(elbo=e, reconstruction=r, kl=kl_value, n=n)
