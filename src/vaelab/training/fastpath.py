"""The training step of the common VAE, differentiated by hand: a fused eager fast path.

Most runs train the classic model: an MLP encoder giving a diagonal Gaussian q(z|x), the
N(0, I) prior, an MLP decoder giving Bernoulli logits, and the ELBO with one sample and the
closed-form KL. For it, :class:`FastStep` computes the loss *and its gradient* with a fixed
sequence of tensor operations written out below, instead of building distribution objects
and walking an autograd graph. The maths is the same as the general path
(:meth:`vaelab.objectives.Objective.loss`), and so are the random draws (eps comes from the same
generator call as ``Normal.rsample``), so a run takes the same path through training up to
float rounding (tested against autograd in float64).

With x ``[B, P]`` (flattened), an encoder MLP giving ``(mu, s) [B, 2D]``, sigma = softplus(s) + m,
z = mu + sigma eps, decoder logits l ``[B, P]`` and KL weight w (beta, warm-up):

    rec_b = sum_p x_p l_p - softplus(l_p)                        (log p(x|z), Bernoulli)
    kl_b  = sum_d (sigma_d^2 + mu_d^2 - 1) / 2 - log sigma_d        (KL(q || N(0, I)))
    loss  = -(1/B) sum_b (rec_b - w kl_b)

and, with g = 1/B, the gradients that flow back:

    dL/dl     = g (sigmoid(l) - x)                                 [B, P]
    dL/dz     = (dL/dl through the decoder MLP)                    [B, D]
    dL/dmu    = dL/dz + g w mu
    dL/dsigma = dL/dz eps + g w (sigma - 1/sigma)
    dL/ds     = dL/dsigma sigmoid(s)                               (softplus' = sigmoid)

then through the encoder MLP (no gradient for x). Each Linear layer's weight gradient
``dout^T a`` and bias gradient ``sum_b dout`` are written into gradient buffers kept from step
to step (``torch.mm(..., out=)``), and every activation-sized tensor (each layer's output, the
logits, their sigmoid, the gradients flowing back) into scratch tensors kept the same way, so a
step allocates no parameter- or activation-sized memory: on a CPU a fresh tensor of the
logits' size (400 KB at batch 128) was handed back to the system when freed and page-faulted
in again on every step, which cost about a quarter of the step. On a CPU, sum softplus(l) is
taken as sum log(1 + exp(l)) (softplus's log1p cost more than the rest of the loss), exactly
where a logit overflows exp; the gradient uses sigmoid(l), so only the reported loss moves,
by float rounding.

Where it applies (:func:`fast_step`): a :class:`~vaelab.model.VAE` without context whose
encoder is exactly a :class:`~vaelab.distributions.posteriors.GaussianEncoder`, prior a
:class:`~vaelab.distributions.priors.StandardNormalPrior`, decoder a
:class:`~vaelab.distributions.likelihoods.BernoulliDecoder`, both networks
:class:`~vaelab.nets.MLP` with ReLU activations; the objective the ELBO with ``k = 1``, the
``standard`` estimator, the closed-form KL (``auto`` or ``analytic``), any beta and warm-up,
no free bits; float32 or float64 parameters that all require gradients; one process, no
compile, no autocast. Anything else returns None and trains on the general path, unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions.likelihoods import BernoulliDecoder
from ..distributions.posteriors import GaussianEncoder
from ..distributions.priors import StandardNormalPrior
from ..model import VAE
from ..nets import MLP
from ..objectives import Objective

__all__ = ["FastStep", "fast_step"]


def _linear_layers(net: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of an MLP ``Flatten, (Linear, ReLU)*, Linear`` without context, else None."""
    if type(net) is not MLP or net.context != 0:
        return None
    layers = list(net)
    if not layers or type(layers[0]) is not nn.Flatten or layers[0].start_dim != 1:
        return None
    body = layers[1:]
    if len(body) % 2 != 1:
        return None
    linears = body[0::2]
    if not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if not all(type(m) is nn.ReLU for m in body[1::2]):
        return None
    return linears  # type: ignore[return-value]


def fast_step(model: nn.Module, objective: Objective, *, precision: str = "float32", compile: bool = False,
              processes: int = 1) -> "FastStep | None":
    """A :class:`FastStep` for ``model`` and ``objective`` when the fast path applies (module
    docstring), else None."""
    if processes != 1 or compile or precision != "float32" or type(model) is not VAE or model.context is not None:
        return None
    o = objective
    if (o.kind, o.k, o.estimator, o.free_bits) != ("elbo", 1, "standard", 0.0) or o.kl not in ("auto", "analytic"):
        return None
    enc, dec, prior = model.encoder, model.decoder, model.prior
    if type(enc) is not GaussianEncoder or type(dec) is not BernoulliDecoder or type(prior) is not StandardNormalPrior:
        return None
    enc_layers, dec_layers = _linear_layers(enc.net), _linear_layers(dec.net)
    if enc_layers is None or dec_layers is None:
        return None
    params = list(model.parameters())
    layer_params = {id(p) for m in (*enc_layers, *dec_layers) for p in (m.weight, m.bias)}
    if {id(p) for p in params} != layer_params or not all(p.requires_grad for p in params):
        return None  # a parameter outside the two MLPs, or a frozen one
    if len({(p.dtype, p.device) for p in params}) != 1 or params[0].dtype not in (torch.float32, torch.float64):
        return None
    d = enc.latent_dim
    if enc_layers[-1].out_features != 2 * d or dec_layers[0].in_features != d:
        return None
    if dec_layers[-1].out_features != math.prod(dec.x_shape) or tuple(prior.loc.shape) != (d,):
        return None
    return FastStep(enc_layers, dec_layers, d, float(enc.min_scale), objective)


class FastStep:
    """Loss and gradients of one step of the common VAE (module docstring).

    ``step(x, progress, share)`` draws eps, computes the loss, writes the gradient of
    ``share * loss`` into every parameter's ``.grad`` (replacing what was there; ``share`` is
    the loop's weight of a batch: rows / batch size for the last, partial one) and returns
    ``(loss, stats)`` like the general path: the loss (detached, unweighted) and
    ``[loss, sum ELBO, sum reconstruction, sum KL]`` over the batch.
    """

    def __init__(self, encoder: Sequence[nn.Linear], decoder: Sequence[nn.Linear], latent_dim: int,
                 min_scale: float, objective: Objective) -> None:
        self.encoder = list(encoder)
        self.decoder = list(decoder)
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.objective = objective
        self._grads: dict[int, Tensor] = {}
        self._scratch: dict[tuple[str, tuple[int, ...]], Tensor] = {}

    def _grad(self, p: Tensor) -> Tensor:
        """The persistent gradient buffer of parameter ``p``."""
        g = self._grads.get(id(p))
        if g is None or g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            g = self._grads[id(p)] = torch.empty_like(p, memory_format=torch.contiguous_format)
        return g

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A scratch tensor kept from step to step (one per name and shape: the last, partial
        batch of an epoch has its own), so that no step allocates activation-sized memory."""
        key = (name, shape)
        t = self._scratch.get(key)
        if t is None or t.dtype != like.dtype or t.device != like.device:
            t = self._scratch[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return t

    def _forward(self, net: str, layers: Sequence[nn.Linear], a: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The MLP's output and the input of each layer (post-ReLU activations), in scratch tensors."""
        inputs = []
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            inputs.append(a)
            out = self._buffer(f"{net}{i}", (a.shape[0], layer.out_features), a)
            a = torch.addmm(layer.bias, a, layer.weight.t(), out=out)  # [B, out]
            if i < last:
                a = a.relu_()
        return a, inputs

    def _backward(self, net: str, layers: Sequence[nn.Linear], inputs: Sequence[Tensor], dout: Tensor,
                  need_input_grad: bool) -> Tensor | None:
        """Write the layers' gradients for ``dout`` = dL/d(output); return dL/d(input) or None."""
        for i in reversed(range(len(layers))):
            layer, a = layers[i], inputs[i]
            gw, gb = self._grad(layer.weight), self._grad(layer.bias)
            torch.mm(dout.t(), a, out=gw)  # [out, in]
            torch.sum(dout, 0, out=gb)
            layer.weight.grad, layer.bias.grad = gw, gb
            if i == 0 and not need_input_grad:
                return None
            da = torch.mm(dout, layer.weight, out=self._buffer(f"d{net}{i}", a.shape, a))  # [B, in]
            if i > 0:  # ReLU': a is the ReLU's output; in place, ReLU's own backward kernel
                da = torch.ops.aten.threshold_backward.grad_input(da, a, 0.0, grad_input=da)
            dout = da
        return dout

    def _softplus_sum(self, logits: Tensor) -> Tensor:
        """sum softplus(l) over all logits, a scalar. On a CPU as log(1 + exp(l)) in a scratch
        tensor (softplus's log1p cost more than the rest of the loss and gradient together),
        exact softplus where a logit overflows exp (l > 88 in float32); elsewhere torch's softplus."""
        if logits.device.type != "cpu":
            return F.softplus(logits).sum()
        total = torch.exp(logits, out=self._buffer("softplus", logits.shape, logits)).add_(1).log_().sum()
        return total if math.isfinite(total.item()) else F.softplus(logits).sum()  # one op, not isfinite's five

    @torch.no_grad()
    def step(self, x: Tensor, progress: float, share: float = 1.0) -> tuple[Tensor, Tensor]:
        x = x.reshape(x.shape[0], -1)  # [B, P]
        b, d = x.shape[0], self.latent_dim
        out, enc_in = self._forward("enc", self.encoder, x)  # [B, 2D]
        loc, raw = out[:, :d], out[:, d:].contiguous()  # softplus of a strided view took 45 us, of a copy 5
        scale = F.softplus(raw).add_(self.min_scale)  # [B, D]
        eps = torch.empty((1, b, d), dtype=x.dtype, device=x.device).normal_()[0]  # as Normal.rsample((1,))
        z = torch.addcmul(loc, scale, eps)  # [B, D]
        logits, dec_in = self._forward("dec", self.decoder, z)  # [B, P]

        rec_sum = torch.dot(x.reshape(-1), logits.reshape(-1)) - self._softplus_sum(logits)  # sum_b log p(x_b|z_b)
        kl_sum = (scale.square() + loc.square() - 1).mul_(0.5).sub_(scale.log()).sum()  # sum_b KL(q_b || N(0, I))
        weight = self.objective.kl_weight(progress)
        loss = (weight * kl_sum - rec_sum) / b
        stats = torch.stack([loss, rec_sum - kl_sum, rec_sum, kl_sum]).float()

        g = share / b  # the gradients of share * loss (the loop's weight of a partial batch)
        dlogits = torch.sigmoid(logits, out=self._buffer("dlogits", logits.shape, logits)).sub_(x).mul_(g)  # [B, P]
        dz = self._backward("dec", self.decoder, dec_in, dlogits, True)  # [B, D]
        assert dz is not None
        dloc = torch.add(dz, loc, alpha=g * weight)
        dscale = dz.mul(eps).add_(scale - scale.reciprocal(), alpha=g * weight)
        draw = dscale.mul_(torch.sigmoid(raw))
        self._backward("enc", self.encoder, enc_in, torch.cat([dloc, draw], 1), False)
        return loss, stats
