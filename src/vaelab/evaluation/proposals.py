"""Better importance proposals for log p(x): q*, a Laplace Gaussian and a defensive mixture.

Importance sampling is only as good as its proposal: with the encoder's q(z|x), which is
trained to be *inside* the posterior (the ELBO's KL(q || p) is zero-forcing), the weights of
a large VAE are heavy-tailed (Pareto k-hat above 0.7) and log p_hat(x) is biased low by more
than it says. Three proposals per example, mixed with equal weights (a defensive mixture,
Hesterberg 1995; Owen & Zhou 2000):

* the encoder's q(z|x, c), wide where the encoder is unsure;
* q*(z|x), the diagonal Gaussian fitted to this example alone
  (:func:`~vaelab.evaluation.gaps.optimal_posterior`: Adam on the ELBO from the encoder's
  output), which removes the amortization gap;
* a Laplace approximation at q*'s mean mu*: N(mu*, H^{-1}) with H = -grad^2 log p(x, z) at
  mu* (D backward passes through the gradient). For a decoder of ReLU layers, log p(x|z) is a
  function of z only through piecewise-linear logits, so H is the Gauss-Newton matrix
  J^T Lambda J + the prior's precision; eigenvalues below ``floor`` are raised to it, so
  the Gaussian is proper even away from a mode. It captures the posterior's correlations,
  which no diagonal Gaussian can.

The mixture's density is sum_j pi_j q_j(z), so every weight p(x, z) / q_mix(z) is at most
p(x, z) / (pi_j q_j(z)) for each j: the mixture is never much worse than its best component
(at most log 3 nats per weight) and its tails are those of the widest.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, MultivariateNormal, constraints

from ..errors import VaelabError
from ..model import VAE, Classifier
from ..objectives import KLMethod
from .gaps import _diagonal_parts, optimal_posterior
from .settings import DEFAULTS

__all__ = ["DefensiveMixture", "laplace_posterior", "mixture_proposal", "LAPLACE_FLOOR"]

LAPLACE_FLOOR = 1e-2  # smallest precision eigenvalue of the Laplace Gaussian (the prior's is 1)


class DefensiveMixture(Distribution):
    """A mixture sum_j pi_j q_j(z) of distributions with the same batch ``[B]`` and event ``[D]``.

    ``sample`` draws a component per sample and example, ``log_prob`` is
    logsumexp_j (log pi_j + log q_j(z)). Not reparameterized (importance sampling needs none).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, components: list[Distribution], weights: list[float] | None = None) -> None:
        if not components:
            raise ValueError("a mixture needs at least one component")
        self.components = components
        w = torch.tensor(weights if weights is not None else [1.0] * len(components), dtype=torch.float64)
        self.log_weights = (w / w.sum()).log()  # [J]
        super().__init__(components[0].batch_shape, components[0].event_shape, validate_args=False)

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        with torch.no_grad():
            draws = torch.stack([q.sample(sample_shape) for q in self.components])  # [J, *S, B, D]
            which = torch.distributions.Categorical(logits=self.log_weights.to(draws.dtype)).sample(draws.shape[1:-1])
            return draws.gather(0, which[None, ..., None].expand(1, *draws.shape[1:]).to(draws.device))[0]

    def log_prob(self, value: Tensor) -> Tensor:
        parts = torch.stack([q.log_prob(value) for q in self.components])  # [J, *S, B]
        lw = self.log_weights.to(parts.dtype).to(parts.device).reshape(-1, *([1] * (parts.dim() - 1)))
        return torch.logsumexp(parts + lw, 0)


def laplace_posterior(model: VAE, x: Tensor, loc: Tensor, c: Tensor | None = None,
                      floor: float = LAPLACE_FLOOR) -> MultivariateNormal:
    """N(loc, H^{-1}) with H = -grad^2_z log p(x, z|c) at ``loc`` ``[B, D]`` (eigenvalues floored
    at ``floor``): the Laplace (for ReLU decoders, Gauss-Newton) Gaussian of each example."""
    d = loc.shape[-1]
    with torch.enable_grad():
        z = loc.detach().clone().requires_grad_(True)  # [B, D]
        joint = model.decode(z, c).log_prob(x) + model.prior_distribution(c).log_prob(z)  # [B]
        (g,) = torch.autograd.grad(joint.sum(), z, create_graph=True)  # [B, D]
        rows = [torch.autograd.grad(g[:, i].sum(), z, retain_graph=i < d - 1)[0] for i in range(d)]
    hessian = torch.stack(rows, 1).detach()  # [B, D, D]: rows i = d/dz (d log p / dz_i)
    precision = -(hessian + hessian.mT) / 2
    values, vectors = torch.linalg.eigh(precision)  # [B, D], [B, D, D]
    values = values.clamp(min=floor)
    cov = (vectors / values[:, None, :]) @ vectors.mT  # V diag(1/lambda) V^T
    cov = (cov + cov.mT) / 2
    return MultivariateNormal(loc.detach(), scale_tril=torch.linalg.cholesky(cov), validate_args=False)


def mixture_proposal(
    model: VAE,
    x: Tensor,
    c: Tensor | None = None,
    *,
    steps: int = DEFAULTS.gap_steps,
    lr: float = DEFAULTS.gap_lr,
    samples: int = DEFAULTS.gap_samples,
    kl: KLMethod = "auto",
) -> DefensiveMixture:
    """The defensive mixture (encoder + q* + Laplace at q*'s mean, equal weights) of each
    example of ``x`` ``[B, *x_shape]``: batch ``[B]``, event ``[D]``. q* is fitted with
    ``steps`` Adam steps (see :func:`~vaelab.evaluation.gaps.optimal_posterior`); uses the
    global random number generator. Needs a :class:`~vaelab.model.VAE` with a diagonal
    Gaussian encoder.

    Example:
        >>> ll = log_likelihood(model, x, 5000, proposal=lambda xb, cb: mixture_proposal(model, xb, cb),
        ...                     estimator="mixture")
    """
    if isinstance(model, Classifier) or not isinstance(model, VAE):
        raise VaelabError("the mixture proposal needs a VAE with continuous latents only; the semi-supervised M2's "
                          "latent includes the discrete label: use --estimator is")
    with torch.no_grad():
        q_encoder = model.encode(x, c)
    try:
        _diagonal_parts(q_encoder)
    except ValueError:
        raise VaelabError(f"the mixture proposal fits a diagonal Gaussian q* per example and needs an encoder of "
                          f"that family, got {type(q_encoder).__name__}; use --estimator is or ais") from None
    q_opt = optimal_posterior(model, x, steps=steps, lr=lr, samples=samples, kl=kl, c=c)
    loc, _ = _diagonal_parts(q_opt)
    laplace = laplace_posterior(model, x, loc, c)
    return DefensiveMixture([q_encoder, q_opt, laplace])

