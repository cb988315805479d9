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
``[rows, P]`` logits pass through softplus (as log(1 + exp), in place, the bias entering as
the factor exp(b): log(1 + exp(W h) exp(b)), so the product writes no copy of it first) and one
sum; its gradient in z (AIS, the gap split) is written out and needs no softplus at all. Every pass
writes into scratch tensors reused from pass to pass (:class:`Workspace`: no fresh 16 MB of
logits per pass), and multiplies by weights transposed once. The encoder runs once per batch
of examples, not once per ``k_chunk`` samples. On the default mnist5k model encoder IS takes
0.41x the CPU time it took before these changes (c9b7e15), at the same draws (README "How long
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

from torch.distributions import Distribution, Independent, Normal

from ..context import Batch
from ..distributions.likelihoods import BernoulliDecoder
from ..errors import VaelabError
from ..inputs import check_data, check_whole, model_device
from ..model import VAE, SampleWithDensity
from ..nets import MLP
from ..objectives import KLMethod, data_elbo
from .memory import check_fits
from .psis import MIN_TAIL, pareto_khat, tail_length
from .settings import DEFAULTS, K_CHUNK  # noqa: F401  (K_CHUNK: also importable from here, as in 0.1.0)

__all__ = ["LogLikelihood", "EncoderDraws", "DatasetELBO", "log_likelihood", "dataset_elbo", "decoder_log_prob", "DecoderDensity",
           "Workspace"]


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
    draws: EncoderDraws | None = None  # the draws of the rows asked for with ``keep_rows``
    se: Tensor | None = None  # [N] the estimator's own Monte-Carlo error (AIS), else None: see mc_se

    @property
    def mc_se(self) -> Tensor:
        """Per-example Monte-Carlo standard error ``[N]``: ``se`` when the estimator gave its own
        (AIS: :attr:`~vaelab.evaluation.AISResult.mc_se`), else sqrt(1/ESS - 1/K) (delta method)."""
        if self.se is not None:
            return self.se
        return (1.0 / self.ess - 1.0 / self.k).clamp(min=0).sqrt()

    @property
    def mean(self) -> float:
        return float(self.per_example.mean())

    @property
    def stderr(self) -> float:
        n = self.per_example.numel()
        return float(self.per_example.std() / math.sqrt(n)) if n > 1 else float("nan")


@dataclass
class EncoderDraws:
    """Encoder IS's draws for some examples, kept for the gap split's ELBO of the encoder.

    ``rows`` ``[n]`` are indices into the data set, in the order the batches reached them (not
    necessarily the order asked for); for each, the encoder's ``loc`` and ``scale`` ``[n, D]``,
    and the K draws z = loc + scale * eps as their noise ``eps`` ``[K, n, D]`` and their
    ``log_lik`` = log p(x|z) ``[K, n]``. With them the gap split scores ELBO(q_phi) without a
    second decoder pass, and scores ELBO(q*) at z* = mu* + sigma* eps: the same noise, so the
    amortization gap keeps its paired (small) Monte-Carlo error. ``loc`` and ``scale`` tell
    draws of another model or of other data apart (:func:`~vaelab.evaluation.inference_gaps`
    refuses them).
    """

    rows: Tensor  # [n]
    noise: Tensor  # [K, n, D]
    log_lik: Tensor  # [K, n]
    loc: Tensor  # [n, D]
    scale: Tensor  # [n, D]


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


class Workspace:
    """Scratch tensors reused from one decoder pass to the next (:class:`DecoderDensity`).

    A pass over 5,000 rows of a 784-pixel decoder writes 16 MB of logits; a fresh tensor for it
    every pass costs page faults on every pass (the allocator returns such blocks to the
    system), and on the default mnist5k model that was 10-15 % of encoder IS. :meth:`get`
    hands back the tensor last made under a name when shape, dtype and device match, else a
    new one. Only the fused decoder's internals live here: nothing it returns is a buffer.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        t = self._tensors.get(name)
        if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
            t = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._tensors[name] = t
        return t


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
    in the decoder's parameters: an evaluation does not train them. Its layers write into the
    scratch tensors of a :class:`Workspace` (pass one to share them between the densities of
    successive batches) and sum_p softplus(l_p) is taken as sum_p log(1 + exp(l_p)) in place
    (two cheap kernels instead of softplus's log1p, which took a quarter of encoder IS; the
    exact softplus where a logit overflows exp): the same numbers to float rounding (1e-4 nats
    in a sum of 784 pixels).

    Example:
        >>> density = DecoderDensity(vae, x)  # x [B, 1, 28, 28]
        >>> density.log_prob(vae.encode(x).sample((10,))).shape  # [10, B]
    """

    def __init__(self, model: VAE, x: Tensor, c: Tensor | None = None, workspace: Workspace | None = None) -> None:
        self.model, self.x, self.c = model, x, c
        parts = _bernoulli_mlp(model, c)
        self.fused = parts is not None and _relu_body(parts[0])
        if parts is not None and self.fused:
            self.body, self.out = parts
            self.work = workspace if workspace is not None else Workspace()
            with torch.no_grad():
                flat = x.reshape(x.shape[0], -1).to(self.out.weight.dtype)  # [B, P]
                self.xw = flat @ self.out.weight  # [B, H]: sum_p x_p l_p = h . (W^T x) + b . x
                self.xb = flat @ self.out.bias  # [B]
                # each weight transposed once ([in, out], contiguous): the passes multiply by it
                self.wt = {i: m.weight.t().contiguous() for i, m in enumerate([*self.body, self.out])
                           if type(m) is nn.Linear}
            self.exp_bias: Tensor | None = None  # exp(b) of the output layer, made on the first value pass
            self.one = torch.ones((), dtype=self.out.weight.dtype, device=self.out.weight.device)
            # the gradient leaving this layer is z's: a fresh tensor, never a workspace one
            self.first_linear = min((i for i, m in enumerate(self.body) if type(m) is nn.Linear), default=None)

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

    def _linear(self, i: int, layer: nn.Linear, h: Tensor, name: str) -> Tensor:
        """``layer(h)`` ``[R, out]`` written into the workspace tensor ``name``."""
        out = self.work.get(name, (h.shape[0], layer.out_features), h)
        if layer.bias is None:
            return torch.mm(h, self.wt[i], out=out)
        return torch.addmm(layer.bias, h, self.wt[i], out=out)

    @torch.no_grad()  # the decoder's parameters are held fixed (the gradient in z is written out)
    def _pass(self, z: Tensor, with_value: bool, with_grad: bool) -> tuple[Tensor | None, Tensor | None]:
        """The fused decoder: log p(x|z) ``[*S, B]`` and/or its gradient in z ``[*S, B, D]``."""
        lead = z.shape[:-1]
        h = z.reshape(-1, z.shape[-1])  # [R, D]
        owned = False  # whether h is a workspace tensor (a ReLU may then work in place)
        saved: list[tuple[nn.Module, Tensor]] = []
        for i, layer in enumerate(self.body):
            if type(layer) is nn.Linear:
                h, owned = self._linear(i, layer, h, f"hidden{i}"), True
            elif type(layer) is nn.ReLU:
                h = h.clamp_(min=0) if owned else torch.relu(h)
            else:
                h = layer(h)
            saved.append((layer, h))
        value = grad = None
        if with_value and not with_grad:  # the value alone: the bias joins the softplus pass (below)
            return self._value(h, lead), None
        logits = self._linear(len(self.body), self.out, h, "logits")  # [R, P]
        hs = h.reshape(*lead, h.shape[-1])  # [*S, B, H]
        if with_grad:  # d/dh = W^T x - W^T sigmoid(l), before the logits are overwritten below
            g = torch.mm(torch.sigmoid(logits, out=self.work.get("sigmoid", logits.shape, logits)), self.out.weight,
                         out=self.work.get("grad_h", h.shape, h))  # [R, H]
            torch.sub(self.xw, g.view(hs.shape), out=g.view(hs.shape))
            for i in range(len(saved) - 1, -1, -1):
                layer, output = saved[i]
                if type(layer) is nn.ReLU:  # g where the unit was active, else 0: ReLU's own backward kernel
                    g = torch.ops.aten.threshold_backward.grad_input(g, output, 0, grad_input=g)
                elif type(layer) is nn.Linear:
                    g = g @ layer.weight if i == self.first_linear else torch.mm(
                        g, layer.weight, out=self.work.get(f"grad{i}", (g.shape[0], layer.in_features), g))
            grad = (g if self.first_linear is not None else g.clone()).reshape(*lead, g.shape[-1])
        if with_value:
            total = logits.exp_().add_(1).log_().sum(-1)  # sum_p softplus(l_p) [R]
            value = self._x_term(h, lead) - self._checked(total, h).reshape(lead)
        return value, grad

    def _x_term(self, h: Tensor, lead: torch.Size) -> Tensor:
        """sum_p x_p l_p = h . (W^T x) + b . x ``[*S, B]`` of the last hidden layer ``h`` ``[R, H]``:
        one batched product over the examples (each example's samples against its own W^T x)."""
        b = self.xw.shape[0]
        hs = h.view(-1, b, h.shape[-1]).transpose(0, 1)  # [B, S', H] (a view: rows of one example)
        return (torch.bmm(hs, self.xw.unsqueeze(-1)).squeeze(-1).t() + self.xb).reshape(lead)  # [*S, B]

    def _checked(self, total: Tensor, h: Tensor) -> Tensor:
        """``total`` ``[R]`` (sum_p log(1 + exp(l_p))), or the exact softplus sum where exp overflowed
        (a logit above ~88 in float32)."""
        if bool(torch.isfinite(total).all()):
            return total
        return F.softplus(self._linear(len(self.body), self.out, h, "logits")).sum(-1)

    def _value(self, h: Tensor, lead: torch.Size) -> Tensor:
        """log p(x|z) ``[*S, B]`` from the last hidden layer ``h`` ``[R, H]``, without the gradient.

        The logits' bias enters as a factor: log(1 + exp(W h + b)) = log(1 + exp(W h) exp(b)), so the
        product needs no copy of the bias into its ``[R, P]`` output first (``addmm`` writes one) and
        the factor rides on the "+ 1" pass (``addcmul``): one memory pass fewer over the logits.
        """
        if self.exp_bias is None:
            self.exp_bias = self.out.bias.exp()  # [P]; exp(b) = inf or 0 only where exp(l) would be
        logits = torch.mm(h, self.wt[len(self.body)], out=self.work.get("logits", (h.shape[0], self.out.out_features), h))
        logits.exp_()
        total = torch.addcmul(self.one, logits, self.exp_bias, out=logits).log_().sum(-1)  # [R]
        return self._x_term(h, lead) - self._checked(total, h).reshape(lead)


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


def _encoder_weights(model: VAE, density: DecoderDensity, q: Distribution, prior: Distribution, k: int,
                     store: list[tuple[Tensor, Tensor]] | None = None, cols: Tensor | None = None) -> Tensor:
    """``model.log_weights(x, k, c)`` ``[k, B]`` from the encoder's output ``q`` (batch ``[B]``)
    and the prior, computed once per batch: the same draws as :meth:`VAE.trace`. With ``store``,
    the noise and log p(x|z) of the examples ``cols`` (a diagonal Gaussian q) are appended to it."""
    if isinstance(q, SampleWithDensity):  # flows: the density comes with the sample
        z, log_q = q.rsample_and_log_prob((k,))  # [k, B, D], [k, B]
    else:
        z = q.rsample((k,))  # [k, B, D]
        log_q = q.log_prob(z)
    log_lik = density.log_prob(z)  # [k, B]
    if store is not None and cols is not None:
        loc, scale = gaussian_parts(q)  # type: ignore[misc]
        store.append(((z[:, cols] - loc[cols]) / scale[cols], log_lik[:, cols]))  # eps [k, m, D], [k, m]
    return log_lik + prior.log_prob(z) - log_q  # [k, B]


def gaussian_parts(q: Distribution) -> tuple[Tensor, Tensor] | None:
    """(loc, scale) ``[B, D]`` of a diagonal Gaussian ``Independent(Normal, 1)``, else None (the
    gap split's family check and encoder IS's kept draws read it)."""
    if (isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1):
        return q.base_dist.loc, q.base_dist.scale
    return None


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
    keep_rows: Tensor | None = None,
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
        keep_rows: indices ``[n]`` of examples whose draws to keep in the result's ``draws``
            (:class:`EncoderDraws`, for the gap split), where the proposal is a plain VAE's
            diagonal-Gaussian encoder; ``draws`` is None otherwise.
    """
    k = check_whole(k, "k (importance samples per example)")
    k_chunk = check_whole(k_chunk, "k_chunk (importance samples per pass)")
    batch_size = check_whole(batch_size, "batch_size")
    check_data(model, x, c)
    device = model_device(model, device)
    if isinstance(model, VAE) and x.shape[0] > 0:  # refuse a pass that will not fit, before it starts
        check_fits(model, x[:1].to(device), None if c is None else c[:1].to(device),
                   min(batch_size, x.shape[0]) * min(k_chunk, k),
                   what=f"log p(x) with {min(batch_size, x.shape[0])} examples x {min(k_chunk, k)} samples per pass",
                   fix="lower --batch-size or --k-chunk")
    began = time.perf_counter()
    keep = tail_length(k) + 1 if tail_length(k) >= MIN_TAIL else 0  # the largest log weights, for the Pareto fit
    per_example, ess, khat = [], [], []
    workspace = Workspace()  # the decoder's scratch tensors, shared by every batch
    # the draws of keep_rows: per batch, (its rows, loc, scale, [(eps [kc, m, D], log p(x|z) [kc, m]) per pass])
    kept: list[tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, Tensor]]]] | None = [] if keep_rows is not None else None
    keep_rows = None if keep_rows is None else _row_indices(keep_rows, x.shape[0])
    for start, (xb, cb) in zip(range(0, x.shape[0], batch_size), _pairs(x, c, batch_size)):
        xb = xb.to(device)
        cb = None if cb is None else cb.to(device)
        q = None if proposal is None else proposal(xb, cb)
        plain = q is None and _plain_trace(model)
        cols, passes = None, None
        if plain:  # the encoder and the prior once for the batch, not once per k_chunk samples
            q_enc, prior = model.encode(xb, cb), model.prior_distribution(cb)
            density = DecoderDensity(model, xb, cb, workspace)
            if kept is not None and gaussian_parts(q_enc) is not None:
                assert keep_rows is not None
                mine = keep_rows[(keep_rows >= start) & (keep_rows < start + xb.shape[0])]
                cols, passes = (mine - start).to(device), []
                loc, scale = gaussian_parts(q_enc)  # type: ignore[misc]
                kept.append((mine, loc[cols], scale[cols], passes))
        if kept is not None and passes is None:  # draws that are not a Gaussian encoder's: none are kept
            kept = None
        log_sum_w = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=device)  # log sum_k w_k
        log_sum_w2 = torch.full_like(log_sum_w, -math.inf)  # log sum_k w_k^2
        top = torch.empty((0, xb.shape[0]), device=device)  # [<=M+1, B]
        done = 0
        while done < k:
            kc = min(k_chunk, k - done)
            if plain:
                raw = _encoder_weights(model, density, q_enc, prior, kc, passes, cols)  # [kc, B]
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
    draws = None
    if kept:
        draws = EncoderDraws(rows=torch.cat([k[0] for k in kept]),
                             noise=torch.cat([torch.cat([e for e, _ in k[3]]) for k in kept], 1),  # [K, n, D]
                             log_lik=torch.cat([torch.cat([v for _, v in k[3]]) for k in kept], 1),  # [K, n]
                             loc=torch.cat([k[1] for k in kept]), scale=torch.cat([k[2] for k in kept]))  # [n, D]
    return LogLikelihood(per_example=torch.cat(per_example), ess=torch.cat(ess), k=k,
                         khat=torch.cat(khat) if keep else None, estimator=estimator,
                         seconds=time.perf_counter() - began, draws=draws)


def _row_indices(rows: Tensor | list[int], n: int) -> Tensor:
    """``keep_rows`` as distinct whole-number indices into ``n`` examples ``[m]``, else a one-line error."""
    t = torch.as_tensor(rows).cpu()
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise VaelabError(f"keep_rows must be a 1-D sequence of whole-number row indices, got {tuple(t.shape)} {t.dtype}")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise VaelabError(f"keep_rows must lie in 0..{n - 1} (the rows of x), got {int(t.min())}..{int(t.max())}")
    if t.unique().numel() != t.numel():
        raise VaelabError("keep_rows names a row more than once; give each row once")
    return t


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
    k = check_whole(k, "k (posterior samples per example)")
    batch_size = check_whole(batch_size, "batch_size")
    check_data(model, x, c, bound_only=True)  # (the M2's U(x) takes no label: its c is ignored)
    device = model_device(model, device)
    sums = torch.zeros(3, dtype=torch.float64)
    for xb, cb in _pairs(x, c, batch_size):
        terms = data_elbo(model, Batch(xb.to(device), None if cb is None else cb.to(device)), k, kl)
        sums += torch.stack(
            [terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()]
        ).double().cpu()
    n = x.shape[0]
    e, r, kl_value = (sums / n).tolist()
    return DatasetELBO(elbo=e, reconstruction=r, kl=kl_value, n=n)
