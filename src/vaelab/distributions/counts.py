"""Count likelihoods with an observed library size, as scVI (Lopez et al. 2018): Poisson,
negative binomial and zero-inflated negative binomial.

A count vector x ``[F]`` (F features, e.g. genes; any ``x_shape``, flattened) is modelled
given the latent z and the example's *library size* l, the total of its counts:

    rho(z)  = softmax(f(z))                        proportions over the F features (decoder)
    mu_i    = l rho_i                              the mean count of feature i
    l       = sum_i x_i                            observed: computed from x when it is scored

    poisson             x_i ~ Poisson(mu_i)
    negative-binomial   x_i ~ NB(mu_i, theta_i),   Var = mu + mu^2 / theta
    zinb                x_i ~ pi_i delta_0 + (1 - pi_i) NB(mu_i, theta_i),   pi_i = sigmoid(g_i(z))

with the NB in scVI's (mean, inverse dispersion) form, theta = scVI's ``px_r``:

    NB(x; mu, theta) = Gamma(x + theta) / (Gamma(theta) x!) (theta / (theta + mu))^theta (mu / (theta + mu))^x,

which is ``torch.distributions.NegativeBinomial(total_count=theta, logits=log mu - log theta)``
(torch counts successes x before ``total_count`` failures with success probability
p = sigmoid(logits) = mu / (mu + theta), so its mean theta p / (1 - p) is mu).

The likelihood is p(x | z, l): l is treated as given (scVI's ``use_observed_lib_size``), so
``log_prob(x)`` reads l off x itself. For a fixed l each count distribution sums to 1 over
0, 1, 2, ...; the product is *not* normalised over the vectors whose counts add up to l, so
log p(x) here is comparable to scVI's marginal log-likelihood, not to a model of l.

The inverse dispersion theta (``dispersion``) is one learned number per feature
(``feature``, scVI's ``gene``), per feature and class of the conditioning covariate
(``feature-covariate``, scVI's ``gene-batch``: log theta = h(c) W with h(c) the context
features, one-hot for a categorical covariate, so one theta per feature and class), or an
output of the decoder per feature and example (``example``, scVI's ``gene-cell``).
The zero-inflation logits g(z) always come from the decoder.

Sampling and ``.mean`` (reconstructions, ``vaelab sample``, the report) have no x to read l
from: l is then drawn from the log-normal of the training data's library sizes,
log l ~ N(m, s^2), whose m and s the decoder keeps as buffers (saved with the weights) and
:meth:`CountDecoder.set_library_prior` sets from the training data before training
(``vaelab.train`` does it); ``.mean`` is E[x | z] under that law, E[l] rho with
E[l] = exp(m + s^2 / 2). :meth:`LibraryCounts.with_library` fixes l instead.

The encoder reads log(1 + x) (:meth:`CountDecoder.encoder_input`), as scVI's does.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Size, Tensor, nn
from torch.distributions import Distribution, NegativeBinomial, Poisson, constraints

from ..errors import VaelabError
from ..nets.transform import Log1p
from ..registry import Option, Shapes, register
from .likelihoods import Decoder

__all__ = [
    "ZeroInflatedNegativeBinomial",
    "LibraryCounts",
    "CountDecoder",
    "PoissonDecoder",
    "NegativeBinomialDecoder",
    "ZINBDecoder",
    "DISPERSION",
    "DISPERSIONS",
    "Family",
]

Family = Literal["poisson", "negative-binomial", "zinb"]
DISPERSIONS: tuple[str, ...] = ("feature", "feature-covariate", "example")
DISPERSION = Option(
    "dispersion", str, "feature",
    "negative-binomial or zinb likelihood: the inverse dispersion theta per feature, per feature and class of the "
    "conditioning covariate (feature-covariate; needs --condition-on), or per feature and example (example: a decoder output)",
    choices=DISPERSIONS,
)


def _check_dispersion(dispersion: str, context_dim: int) -> None:
    """A one-line VaelabError for an unknown ``dispersion``, or ``feature-covariate`` without a context."""
    if dispersion not in DISPERSIONS:
        raise VaelabError(f"dispersion must be one of {', '.join(DISPERSIONS)}, got {dispersion!r}")
    if dispersion == "feature-covariate" and context_dim < 1:
        raise VaelabError("--dispersion feature-covariate learns one theta per feature and class of a conditioning "
                          "covariate: add --condition-on (e.g. --condition-on batch), or use --dispersion feature")


def nb_log_prob(x: Tensor, log_mu: Tensor, log_theta: Tensor) -> Tensor:
    """log NB(x; mu, theta) element-wise from log mu and log theta (broadcast together):

        lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
            + theta (log theta - log(theta + mu)) + x (log mu - log(theta + mu)),

    log(theta + mu) = logaddexp(log theta, log mu). Equal to ``NegativeBinomial(theta,
    logits=log mu - log theta).log_prob(x)``, but lgamma(theta) (and its digamma in the
    backward pass) is computed at theta's own shape (one per feature), not broadcast to the batch.
    """
    theta = log_theta.exp()
    log_sum = torch.logaddexp(log_theta, log_mu)  # log(theta + mu)
    return (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
            + theta * (log_theta - log_sum) + x * (log_mu - log_sum))


class ZeroInflatedNegativeBinomial(Distribution):
    """pi delta_0 + (1 - pi) NB(total_count, logits), element-wise; pi = sigmoid(gate_logits).

    The NB is torch's (``total_count`` theta > 0, ``logits`` = log mu - log theta). The
    log-probability is computed without cancellation (as scVI's ``log_zinb_positive``, with
    logsigmoid and logaddexp in place of its epsilons):

        log P(0) = logaddexp(log pi, log(1 - pi) + theta logsigmoid(-logits))
        log P(x) = log(1 - pi) + log NB(x),   x > 0

    Example:
        >>> d = ZeroInflatedNegativeBinomial(torch.tensor(2.0), torch.tensor(0.5), torch.tensor(-1.0))
        >>> d.log_prob(torch.arange(400.0)).exp().sum()       # tensor(1.0000)
    """

    arg_constraints = {"total_count": constraints.positive, "logits": constraints.real,
                       "gate_logits": constraints.real}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, total_count: Tensor, logits: Tensor, gate_logits: Tensor,
                 validate_args: bool | None = False) -> None:
        self.total_count, self.logits, self.gate_logits = torch.broadcast_tensors(total_count, logits, gate_logits)
        super().__init__(self.logits.shape, Size(), validate_args=validate_args)

    @property
    def nb(self) -> NegativeBinomial:
        return NegativeBinomial(total_count=self.total_count, logits=self.logits, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        log_nb = self.nb.log_prob(value)
        log_keep = F.logsigmoid(-self.gate_logits)  # log(1 - pi)
        log_nb_zero = self.total_count * F.logsigmoid(-self.logits)  # log NB(0) = theta log(theta / (theta + mu))
        zero = torch.logaddexp(F.logsigmoid(self.gate_logits), log_keep + log_nb_zero)
        return torch.where(value == 0, zero, log_keep + log_nb)

    def sample(self, sample_shape: Size | tuple[int, ...] = Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(Size(sample_shape))
            counts = self.nb.sample(Size(sample_shape))
            inflated = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device) < torch.sigmoid(self.gate_logits)
            return torch.where(inflated, torch.zeros_like(counts), counts)

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(-self.gate_logits) * self.nb.mean

    @property
    def variance(self) -> Tensor:
        """(1 - pi) (mu + mu^2 / theta) + pi (1 - pi) mu^2."""
        keep, mu = torch.sigmoid(-self.gate_logits), self.nb.mean
        return keep * (mu + mu.pow(2) / self.total_count) + keep * (1 - keep) * mu.pow(2)


class LibraryCounts(Distribution):
    """Independent counts x_i ~ family(mu_i = l rho_i, ...) given the library size l; event ``x_shape``.

    Args:
        family: ``"poisson"``, ``"negative-binomial"`` or ``"zinb"``.
        logits: the proportions' logits ``[*batch, *x_shape]``; rho is their softmax over all
            of ``x_shape``.
        event_dims: how many trailing dimensions of ``logits`` are ``x_shape``.
        log_theta: log of the inverse dispersion, broadcastable to ``logits`` (NB and ZINB).
        gate_logits: zero-inflation logits, broadcastable to ``logits`` (ZINB).
        library: l ``[*batch]`` (broadcastable), fixed; None (the model's case): l = sum of the
            counts of the x being scored, and drawn from the log-normal when sampling.
        log_library_loc, log_library_scale: m and s of log l ~ N(m, s^2), for sampling and
            ``.mean`` when ``library`` is None.

    An example whose l is 0 has probability 1 at x = 0 (every mean is 0).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(self, family: Family, logits: Tensor, event_dims: int, *, log_theta: Tensor | None = None,
                 gate_logits: Tensor | None = None, library: Tensor | None = None,
                 log_library_loc: Tensor | float = 0.0, log_library_scale: Tensor | float = 1.0) -> None:
        if family not in ("poisson", "negative-binomial", "zinb"):
            raise ValueError(f"unknown count family {family!r}")
        if family != "poisson" and log_theta is None:
            raise ValueError(f"the {family} family needs log_theta")
        if family == "zinb" and gate_logits is None:
            raise ValueError("the zinb family needs gate_logits")
        self.family = family
        self.event_dims = int(event_dims)
        self.logits = logits
        self.log_rho = torch.log_softmax(logits.flatten(-self.event_dims), -1).reshape(logits.shape)
        self.log_theta = log_theta
        self.gate_logits = gate_logits
        self.library = library
        self.log_library_loc = torch.as_tensor(log_library_loc, dtype=logits.dtype, device=logits.device)
        self.log_library_scale = torch.as_tensor(log_library_scale, dtype=logits.dtype, device=logits.device)
        self.support = constraints.independent(constraints.nonnegative_integer, self.event_dims)
        n = self.event_dims
        super().__init__(logits.shape[:-n], logits.shape[-n:], validate_args=False)

    @property
    def rho(self) -> Tensor:
        """The proportions ``[*batch, *x_shape]`` (sum to 1 over ``x_shape``)."""
        return self.log_rho.exp()

    @property
    def theta(self) -> Tensor | None:
        """The inverse dispersion, broadcastable to the batch (None for Poisson)."""
        return None if self.log_theta is None else self.log_theta.exp()

    def with_library(self, library: Tensor | float) -> "LibraryCounts":
        """The same distribution with l fixed (``[*batch]``, broadcastable; e.g. the observed totals)."""
        lib = torch.as_tensor(library, dtype=self.logits.dtype, device=self.logits.device)
        return LibraryCounts(self.family, self.logits, self.event_dims, log_theta=self.log_theta,
                             gate_logits=self.gate_logits, library=lib, log_library_loc=self.log_library_loc,
                             log_library_scale=self.log_library_scale)

    def per_count(self, log_mu: Tensor) -> Distribution:
        """The element-wise count distribution with mean exp(log_mu) ``[..., *x_shape]``."""
        if self.family == "poisson":
            return Poisson(log_mu.exp(), validate_args=False)
        assert self.log_theta is not None
        theta = self.log_theta.exp()
        if self.family == "negative-binomial":
            return NegativeBinomial(total_count=theta, logits=log_mu - self.log_theta, validate_args=False)
        assert self.gate_logits is not None
        return ZeroInflatedNegativeBinomial(theta, log_mu - self.log_theta, self.gate_logits)

    def _unsqueeze(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape, *([1] * self.event_dims))

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(x | z, l) summed over ``x_shape``; l = the total of ``value`` unless fixed."""
        total = value.flatten(-self.event_dims).sum(-1)  # [*value batch]
        lib = total if self.library is None else self.library
        positive = lib > 0
        log_l = torch.log(torch.where(positive, lib, torch.ones_like(lib)))  # l = 0: handled below
        log_mu = self._unsqueeze(log_l) + self.log_rho  # [*batch, *x_shape]
        if self.family == "poisson":
            lp_each = self.per_count(log_mu).log_prob(value)
        else:  # NB and ZINB in log space (:func:`nb_log_prob`): about a third less work than torch's NB
            assert self.log_theta is not None
            lp_each = nb_log_prob(value, log_mu, self.log_theta)
            if self.family == "zinb":
                assert self.gate_logits is not None
                log_keep = F.logsigmoid(-self.gate_logits)  # log(1 - pi)
                log_nb_zero = self.log_theta.exp() * (self.log_theta - torch.logaddexp(self.log_theta, log_mu))
                zero = torch.logaddexp(F.logsigmoid(self.gate_logits), log_keep + log_nb_zero)
                lp_each = torch.where(value == 0, zero, log_keep + lp_each)
        lp = lp_each.flatten(-self.event_dims).sum(-1)  # [*batch]
        empty = torch.where(total == 0, 0.0, -math.inf).to(lp.dtype)  # l = 0: all the mass at x = 0
        return torch.where(positive, lp, empty)

    def _log_library(self, shape: Size) -> Tensor:
        """log l for ``shape``: the fixed l, or a draw from N(m, s^2)."""
        if self.library is not None:
            return torch.log(self.library).expand(shape)
        eps = torch.randn(shape, dtype=self.logits.dtype, device=self.logits.device)
        return self.log_library_loc + self.log_library_scale * eps

    def sample(self, sample_shape: Size | tuple[int, ...] = Size()) -> Tensor:
        """Counts ``[*sample_shape, *batch, *x_shape]``: l drawn (unless fixed), then each count."""
        with torch.no_grad():
            shape = Size(sample_shape) + self.batch_shape
            log_mu = self._unsqueeze(self._log_library(shape)) + self.log_rho  # [*S, *batch, *x_shape]
            return self.per_count(log_mu).sample()

    @property
    def mean(self) -> Tensor:
        """E[x | z]: l rho for a fixed l, else E[l] rho with E[l] = exp(m + s^2 / 2) (times 1 - pi for ZINB)."""
        if self.library is not None:
            log_l = torch.log(self.library).expand(self.batch_shape)
        else:
            log_l = (self.log_library_loc + 0.5 * self.log_library_scale.pow(2)).expand(self.batch_shape)
        return self.per_count(self._unsqueeze(log_l) + self.log_rho).mean

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(family={self.family!r}, batch_shape={tuple(self.batch_shape)}, "
                f"event_shape={tuple(self.event_shape)}, library={'observed' if self.library is None else 'fixed'})")


class CountDecoder(Decoder):
    """p(x | z, l) for counts, from proportions the decoder's network outputs (abstract).

    The network maps z (and the context) to ``[N, P * prod(x_shape)]`` numbers read as
    ``[N, P, *x_shape]``: channel 0 the proportions' logits, then (per subclass) the log
    inverse dispersion and the zero-inflation logits. Subclasses set ``family`` and
    :meth:`params_per_value_for`.

    The buffers ``log_library_loc`` and ``log_library_scale`` (m, s of log l ~ N(m, s^2)) are
    saved with the weights; until :meth:`set_library_prior` is called they say about ten
    counts per feature (m = log(10 F), s = 0.5).
    """

    family: Family = "poisson"
    name = "count"
    support = constraints.nonnegative_integer
    support_text = "non-negative whole numbers (counts)"
    support_hint = "give raw counts (not normalised or log-transformed data)"
    discrete = True  # log_prob is a probability of the counts: bits per dimension are reported
    counts = True  # vaelab.train loads the data as counts (no 8-bit scaling)

    def __init__(self, net: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__(net, x_shape)
        self.params_per_value = int(type(self).params_per_value)
        features = math.prod(self.x_shape)
        self.register_buffer("log_library_loc", torch.tensor(math.log(10.0 * features)))
        self.register_buffer("log_library_scale", torch.tensor(0.5))

    @staticmethod
    def encoder_input(x_shape: tuple[int, ...], **_: Any) -> tuple[nn.Module, tuple[int, ...]]:
        """What the encoder reads instead of x: log(1 + x), same shape (scVI's default)."""
        return Log1p(), tuple(x_shape)

    @torch.no_grad()
    def set_library_prior(self, x: Tensor) -> None:
        """Set m and s of log l ~ N(m, s^2) to the mean and standard deviation of the log
        library sizes of ``x`` ``[N, *x_shape]`` (the training data); examples with no counts
        are left out. A VaelabError when every example is empty."""
        totals = x.reshape(x.shape[0], -1).double().sum(-1)  # [N]
        logs = totals[totals > 0].log()
        if logs.numel() == 0:
            raise VaelabError(f"every one of the {x.shape[0]} training examples has zero counts; a count likelihood "
                              "needs data with counts")
        scale = float(logs.std()) if logs.numel() > 1 else 0.0
        self.log_library_loc.fill_(float(logs.mean()))
        self.log_library_scale.fill_(scale)

    def forward(self, z: Tensor, c: Tensor | None = None) -> LibraryCounts:
        lead = z.shape[:-1]
        if c is None:
            out = self.net(z.reshape(-1, z.shape[-1]))  # [N, ...]
        else:  # c [B, C] broadcast over the leading sample dimensions of z [*S, B, D]
            out = self.net(z.reshape(-1, z.shape[-1]), c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1]))
        params = out.reshape(*lead, self.params_per_value, *self.x_shape)  # [*lead, P, *x_shape]
        return self.counts_distribution(params, c)

    def counts_distribution(self, params: Tensor, c: Tensor | None) -> LibraryCounts:
        """The distribution from the network's outputs ``[*lead, P, *x_shape]`` (and the context)."""
        return LibraryCounts(self.family, params.select(-1 - len(self.x_shape), 0), len(self.x_shape),
                             log_library_loc=self.log_library_loc, log_library_scale=self.log_library_scale)

    def check(self, x: Tensor, what: str = "data") -> None:
        """A one-line VaelabError naming the first value that is not a count (row, column, value)."""
        flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        bad = ~torch.isfinite(flat) | (flat < 0) | (flat != torch.round(flat))
        if bool(bad.any()):
            row, col = divmod(int(bad.reshape(-1).int().argmax()), flat.shape[1])
            value = float(flat[row, col])
            problem = ("NaN/inf" if not math.isfinite(value) else "negative" if value < 0 else "not a whole number")
            raise VaelabError(
                f"{what}: value {value:g} at row {row}, column {col} is {problem} ({int(bad.sum())} such values in all) "
                f"but the {self.name} likelihood needs {self.support_text}; {self.support_hint}"
            )

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, family={self.family!r}"


class PoissonDecoder(CountDecoder):
    """x_i ~ Poisson(l rho_i(z)) given the library size l (see the module docstring)."""

    family: Family = "poisson"
    name = "Poisson"
    params_per_value = 1


class NegativeBinomialDecoder(CountDecoder):
    """x_i ~ NB(l rho_i(z), theta_i) given the library size l (see the module docstring).

    Args:
        net: maps z (and the context) to ``[N, P * prod(x_shape)]`` numbers, P from
            :meth:`params_per_value_for`.
        x_shape: the shape of one example.
        dispersion: ``"feature"`` (one learned theta per feature), ``"feature-covariate"``
            (log theta = h(c) W, W ``[context_dim, F]``: one theta per feature and class of a
            one-hot covariate) or ``"example"`` (log theta from the network, per feature and
            example). Learned log thetas start at 0 (theta = 1).
        context_dim: the size of the context features h(c) (``feature-covariate`` needs > 0).
    """

    family: Family = "negative-binomial"
    name = "negative binomial"

    @staticmethod
    def params_per_value_for(dispersion: str = "feature", **_: object) -> int:
        """Numbers per value of x: the proportion's logit, and log theta for ``example``."""
        return 1 + int(dispersion == "example")

    def __init__(self, net: nn.Module, x_shape: Sequence[int], dispersion: str = "feature",
                 context_dim: int = 0) -> None:
        _check_dispersion(dispersion, context_dim)
        super().__init__(net, x_shape)
        self.dispersion = dispersion
        self.params_per_value = self.params_per_value_for(dispersion)
        features = math.prod(self.x_shape)
        if dispersion == "feature":
            self.log_theta = nn.Parameter(torch.zeros(self.x_shape))
        elif dispersion == "feature-covariate":
            self.log_theta = nn.Parameter(torch.zeros(context_dim, features))

    def _log_theta(self, params: Tensor, c: Tensor | None) -> Tensor:
        """log theta, broadcastable to ``[*lead, *x_shape]``."""
        if self.dispersion == "feature":
            return self.log_theta
        if self.dispersion == "example":
            return params.select(-1 - len(self.x_shape), 1)
        if c is None:
            raise VaelabError("this negative-binomial decoder has a theta per covariate class: call it with the context c")
        return (c.to(self.log_theta.dtype) @ self.log_theta).reshape(*c.shape[:-1], *self.x_shape)  # [B, *x_shape]

    def counts_distribution(self, params: Tensor, c: Tensor | None) -> LibraryCounts:
        return LibraryCounts(self.family, params.select(-1 - len(self.x_shape), 0), len(self.x_shape),
                             log_theta=self._log_theta(params, c),
                             log_library_loc=self.log_library_loc, log_library_scale=self.log_library_scale)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, dispersion={self.dispersion!r}"


class ZINBDecoder(NegativeBinomialDecoder):
    """x_i ~ pi_i(z) delta_0 + (1 - pi_i(z)) NB(l rho_i(z), theta_i) given the library size l.

    As :class:`NegativeBinomialDecoder`, with one more output channel, the last: the
    zero-inflation logits log(pi / (1 - pi)).
    """

    family: Family = "zinb"
    name = "zero-inflated negative binomial"

    @staticmethod
    def params_per_value_for(dispersion: str = "feature", **_: object) -> int:
        """The proportion's logit, log theta for ``example``, and the zero-inflation logit."""
        return 2 + int(dispersion == "example")

    def counts_distribution(self, params: Tensor, c: Tensor | None) -> LibraryCounts:
        axis = -1 - len(self.x_shape)
        return LibraryCounts(self.family, params.select(axis, 0), len(self.x_shape),
                             log_theta=self._log_theta(params, c), gate_logits=params.select(axis, self.params_per_value - 1),
                             log_library_loc=self.log_library_loc, log_library_scale=self.log_library_scale)


@register("likelihood", "poisson", cls=PoissonDecoder, help="counts, library size observed (scVI's Poisson)")
def _poisson(shapes: Shapes) -> nn.Module:
    return PoissonDecoder(shapes.decoder_net(1), shapes.x_shape)


@register("likelihood", "negative-binomial", options=(DISPERSION,), cls=NegativeBinomialDecoder,
          help="overdispersed counts, library size observed (scVI's NB)")
def _negative_binomial(shapes: Shapes, dispersion: str) -> nn.Module:
    _check_dispersion(dispersion, shapes.context_dim)  # before any network is built
    net = shapes.decoder_net(NegativeBinomialDecoder.params_per_value_for(dispersion))
    return NegativeBinomialDecoder(net, shapes.x_shape, dispersion, shapes.context_dim)


@register("likelihood", "zinb", options=(DISPERSION,), cls=ZINBDecoder,
          help="zero-inflated overdispersed counts, library size observed (scVI's ZINB)")
def _zinb(shapes: Shapes, dispersion: str) -> nn.Module:
    _check_dispersion(dispersion, shapes.context_dim)  # before any network is built
    net = shapes.decoder_net(ZINBDecoder.params_per_value_for(dispersion))
    return ZINBDecoder(net, shapes.x_shape, dispersion, shapes.context_dim)
