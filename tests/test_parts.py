"""One property test over every registered part, with and without a context, and every
combination in a VAE.

The parts under test come from the registry (:mod:`vaelab.registry`), the one list of them:
every posterior, prior and likelihood is built by its own factory,
``registry.get(kind, name).build(shapes, **options)``, from a small :class:`~vaelab.registry.Shapes`
made here (an ``mlp`` of width 8), so a newly registered part is checked with no edit to this
file. Each option with a fixed set of values (``learn_scale``) is tried with each; a prior that
reads the encoder (it exposes it as ``.encoder``, as the VampPrior does) is tried with every
posterior; a part is tried without a context and with one of ``CONTEXT`` features
(``encoder(x, h)``, ``decoder(z, h)``, ``prior(h)``), or only with one when it needs it
(``Part.conditional_only``, the conditional prior p(z|c)).

Each part is checked for the same things (float64, fixed seeds), by the ``check_*`` functions
(``tests/test_registry.py`` runs them on a part it registers itself):

* shapes: samples ``[K, B, D]`` (likelihoods ``[K, B, *x_shape]``), log-densities ``[K, B]``;
* the density integrates to 1 (a midpoint-rule grid in 2 dimensions) or sums to 1 (every
  value of a discrete likelihood);
* gradients reach every parameter, and the context when the part reads it;
* ``state_dict`` -> safetensors -> a fresh module gives identical outputs under one seed.

log_prob is checked against a reference built independently, for every registered part whose
class has one: ``torch.distributions`` for the closed forms; for the flows, the change of
variables log N(eps) - log |det J| with the Jacobian J = dz/deps from
``torch.autograd.functional.jacobian``.

Then every posterior x prior pair and every likelihood x network is built by ``build_vae`` (with
and without a context) and trains a step, and two tiny runs go through ``vaelab.runs.train`` and
``vaelab.load``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Laplace,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

import vaelab
from vaelab import registry
from vaelab.build import build_model, build_vae
from vaelab.config import TrainConfig
from vaelab.context import Variable
from vaelab.distributions import (
    BernoulliDecoder,
    ConditionalGaussianPrior,
    ContinuousBernoulliDecoder,
    DiscretizedLogisticMixture,
    FullCovarianceEncoder,
    GaussianDecoder,
    GaussianEncoder,
    GaussianMixturePrior,
    LaplaceDecoder,
    LogisticMixtureDecoder,
    MixedDecoder,
    StandardNormalPrior,
    VampPrior,
)
from vaelab.distributions.counts import CountDecoder, NegativeBinomialDecoder, PoissonDecoder, ZINBDecoder
from vaelab.distributions.posteriors import run_net
from vaelab.errors import VaelabError
from vaelab.nets import MLP
from vaelab.objectives import elbo, kl_term

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
X_IN = 5  # input features of the encoders under test
B, K = 3, 4
CONTEXT = 3  # context features of the with-context variants
LATENT_KINDS = ("posterior", "prior")
# small settings for the parts' options (every other option keeps its registered default)
TEST_OPTIONS: dict[str, Any] = {"hidden": [8], "flow_steps": 3, "prior_components": 3, "mixtures": 2,
                                "gaussian_scale": 0.7}


def quiet(*args: Any) -> None:
    pass


# --- the cases: every registered part, its option values, with and without a context ---------


@dataclass(frozen=True)
class PartCase:
    """One configuration of a registered part under test."""

    kind: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()  # overrides of TEST_OPTIONS / the defaults
    encoder: str | None = None  # the posterior a prior that reads the encoder is built on
    context: int = 0  # context features (0: none)

    @property
    def id(self) -> str:
        extra = [f"{k}={v}" for k, v in self.options] + ([f"encoder={self.encoder}"] if self.encoder else [])
        return f"{self.kind}-{self.name}" + (f"[{','.join(extra)}]" if extra else "") + (f"-c{self.context}" if self.context else "")

    @property
    def part(self) -> registry.Part:
        return registry.get(self.kind, self.name)

    def resolved(self) -> dict[str, Any]:
        """The part's options: TEST_OPTIONS where they apply, the overrides, else the defaults."""
        part = self.part
        values = {o.name: TEST_OPTIONS[o.name] for o in part.options if o.name in TEST_OPTIONS}
        return part.resolve({**values, **dict(self.options)}, f"test case {self.id}")


def choice_variants(part: registry.Part) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the values of the part's options that have a fixed set of values."""
    chosen = [o for o in part.options if o.choices]
    return [tuple(zip([o.name for o in chosen], values)) for values in itertools.product(*(o.choices for o in chosen))]


def test_shapes_for(d: int, x_shape: tuple[int, ...], context: int, encoder: nn.Module | None = None,
                    likelihood: str = "bernoulli") -> registry.Shapes:
    """What a factory is given: mlp networks of width 8 (reading ``context`` numbers too)."""
    net = registry.get("net", "mlp")

    def encoder_net(n_out: int) -> nn.Module:
        return net.build("encoder", x_shape, n_out, context, hidden=[8])

    def decoder_net(per_value: int) -> nn.Module:
        return net.build("decoder", d, (per_value, *x_shape), context, hidden=[8])

    return registry.Shapes(x_shape, d, context, encoder_net, decoder_net,
                           likelihood=registry.get("likelihood", likelihood), encoder=encoder)


test_shapes_for.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def build_part(case: PartCase, d: int = 2, x_shape: tuple[int, ...] = (2, 3)) -> nn.Module:
    """The part of ``case`` from its registered factory; priors come in a :class:`Holder` with
    the encoder they read, if any (so one state_dict holds each tensor once)."""
    if case.kind == "posterior":
        return case.part.build(test_shapes_for(d, (X_IN,), case.context), **case.resolved())
    if case.kind == "prior":
        encoder = build_part(PartCase("posterior", case.encoder or "gaussian", context=case.context), d)
        prior = case.part.build(test_shapes_for(d, (X_IN,), case.context, encoder), **case.resolved())
        return Holder(prior, encoder=encoder) if reads_encoder(prior, encoder) else Holder(prior)
    return case.part.build(test_shapes_for(d, x_shape, case.context), **case.resolved())


def reads_encoder(prior: nn.Module, encoder: nn.Module) -> bool:
    return getattr(prior, "encoder", None) is encoder


@functools.cache
def prior_reads_encoder(name: str) -> bool:
    """Whether prior ``name`` is built on the encoder (found by building a small one)."""
    part = registry.get("prior", name)
    context = CONTEXT if part.conditional_only else 0
    with torch.random.fork_rng():
        return len(list(build_part(PartCase("prior", name, context=context)).children())) > 1


def part_cases(kinds: Sequence[str] = ("posterior", "prior", "likelihood"),
               names: Sequence[str] | None = None) -> list[PartCase]:
    """The cases of every registered part of ``kinds`` (or of the parts ``names``)."""
    out = []
    for kind in kinds:
        for name, part in registry.parts(kind).items():
            if names is not None and name not in names:
                continue
            encoders: Sequence[str | None] = (None,)
            if kind == "prior" and prior_reads_encoder(name):
                encoders = registry.names("posterior")
            for options, encoder in itertools.product(choice_variants(part), encoders):
                needs = part.conditional_only or needs_a_context(kind, name, options)
                for context in (CONTEXT,) if needs else (0, CONTEXT):
                    out.append(PartCase(kind, name, options, encoder, context))
    return out


@functools.cache
def needs_a_context(kind: str, name: str, options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether the part refuses to be built without a context under these option values (e.g.
    a negative binomial with one theta per covariate class): it is then tried with one only."""
    try:
        with torch.random.fork_rng():
            build_part(PartCase(kind, name, options))
    except VaelabError:
        return True
    return False


class Holder(nn.Module):
    """Every module a part needs, so that one state_dict holds each tensor once."""

    def __init__(self, part: nn.Module, **others: nn.Module) -> None:
        super().__init__()
        self.part = part
        for key, module in others.items():
            self.add_module(key, module)


def encoder_input(seed: int = 1, n: int = B) -> Tensor:
    return torch.randn(n, X_IN, generator=torch.Generator().manual_seed(seed), dtype=F64)


def context_input(case: PartCase, seed: int = 40, n: int = B) -> Tensor | None:
    """Context features ``[n, CONTEXT]`` for a with-context case, else None."""
    if not case.context:
        return None
    return torch.randn(n, case.context, generator=torch.Generator().manual_seed(seed), dtype=F64)


def call(module: nn.Module, first: Tensor | None, h: Tensor | None) -> Distribution:
    """``module(first)`` / ``module(first, h)``; priors: ``module()`` / ``module(h)``."""
    args = () if first is None else (first,)
    return module(*args) if h is None else module(*args, h)


def likelihood_data(spec: PartCase, x_shape: tuple[int, ...], n: int = B, seed: int = 0) -> Tensor:
    """n examples in the likelihood's support: drawn from another instance of the same part
    (its own seed, so the data do not depend on the parameters under test) at random latents.
    The caller's random state is kept."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    h = None if not spec.context else torch.randn(n, spec.context, generator=g, dtype=F64)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed + 100)
        decoder = build_part(spec, 2, x_shape).to(F64)
        x = call(decoder, z, h).sample()  # [n, *x_shape]
    assert x.shape == (n, *x_shape)
    return x


@dataclass
class Case:
    """One part under test: ``root`` holds every parameter, ``draw()`` gives its outputs
    (random under the global seed); ``h`` is the context features, or None."""

    spec: PartCase
    root: nn.Module
    draw: Callable[[], dict[str, Tensor]]
    h: Tensor | None = None
    data: Tensor | None = None  # a likelihood's data

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def part(self) -> nn.Module:
        return self.root.part if isinstance(self.root, Holder) else self.root

    def distribution(self, n: int = B, h: Tensor | None = None, z: Tensor | None = None) -> Distribution:
        """The part's distribution: q(z|x, c) for encoder inputs of n rows, p(z|c), or p(x|z, c)."""
        h = self.h if h is None else h
        if self.kind == "posterior":
            return call(self.root, encoder_input(n=n), None if h is None else h[:n])
        if self.kind == "prior":
            return call(self.part, None, None if h is None else h[:n])
        return call(self.root, z, h)


def sample_and_score(q: Distribution, k: int) -> tuple[Tensor, Tensor]:
    """What VAE.trace does: the flow's own density when it has one, else rsample + log_prob."""
    if hasattr(q, "rsample_and_log_prob"):
        return q.rsample_and_log_prob((k,))
    z = q.rsample((k,))
    return z, q.log_prob(z)


def make_case(spec: PartCase, seed: int, d: int = 2, x_shape: tuple[int, ...] = (2, 3)) -> Case:
    torch.manual_seed(seed)
    root = build_part(spec, d, x_shape).to(F64)
    h = context_input(spec)
    if spec.kind == "posterior":
        x = encoder_input()

        def draw() -> dict[str, Tensor]:
            z, log_q = sample_and_score(call(root, x, h), K)
            return {"z": z, "log_q": log_q}

        return Case(spec, root, draw, h)
    if spec.kind == "prior":
        z_fixed = torch.randn(K, B, d, generator=torch.Generator().manual_seed(2), dtype=F64)

        def draw() -> dict[str, Tensor]:
            p = call(root.part, None, h)
            z = p.sample((K,) if p.batch_shape == (B,) else (K, B))
            return {"z": z, "log_p": p.log_prob(z), "log_p_fixed": p.log_prob(z_fixed)}

        return Case(spec, root, draw, h)
    z = torch.randn(K, B, d, generator=torch.Generator().manual_seed(3), dtype=F64)
    data = likelihood_data(spec, x_shape)

    def draw() -> dict[str, Tensor]:
        p = call(root, z, h)
        return {"x": p.sample(), "log_p": p.log_prob(data), "mean": p.mean}

    return Case(spec, root, draw, h, data)


def case_of(kind: str, name: str, context: int = 0, encoder: str | None = None, **options: Any) -> PartCase:
    return PartCase(kind, name, tuple(options.items()), encoder, context)


ALL_CASES = part_cases()
IDS = [c.id for c in ALL_CASES]
LATENT_CASES = [c for c in ALL_CASES if c.kind in LATENT_KINDS]
LIKELIHOOD_CASES = [c for c in ALL_CASES if c.kind == "likelihood"]


# --- the checks (one function each, so that other test modules can run them on their parts) --


def check_shapes(spec: PartCase, d: int = 2, x_shape: tuple[int, ...] = (2, 3)) -> None:
    """Samples and log-densities have the documented shapes and are finite; a flow's density
    that comes with its sample is log_prob at the sample; a likelihood's samples lie in its
    support."""
    case = make_case(spec, seed=0, d=d, x_shape=x_shape)
    torch.manual_seed(4)
    out = case.draw()
    if spec.kind == "posterior":
        q = case.distribution()
        assert q.batch_shape == (B,) and q.event_shape == (d,)
        assert out["z"].shape == (K, B, d) and out["log_q"].shape == (K, B)
        assert q.rsample((K,)).shape == (K, B, d)
        torch.testing.assert_close(q.log_prob(out["z"]), out["log_q"], rtol=1e-9, atol=1e-9)
        assert q.mean.shape == (B, d) and q.stddev.shape == (B, d)
    elif spec.kind == "prior":
        p = case.distribution()
        # without a context: batch []; with one, [B] when p depends on c, [] when it ignores it
        assert p.batch_shape in (((), (B,)) if spec.context else ((),)) and p.event_shape == (d,)
        assert out["z"].shape == (K, B, d) and out["log_p"].shape == (K, B)
        assert out["log_p_fixed"].shape == (K, B)
    else:
        p = case.distribution(z=torch.zeros(K, B, d, dtype=F64))
        assert p.batch_shape == (K, B) and p.event_shape == x_shape
        assert out["x"].shape == (K, B, *x_shape) and out["log_p"].shape == (K, B)
        assert out["mean"].shape == (K, B, *x_shape)
        case.root.check(out["x"])  # samples lie in the likelihood's support
        case.root.check(case.data)
        # the registry's parameters per value are what the decoder reads off its network
        per_value = spec.part.params_per_value(**spec.resolved())
        assert case.root.params_per_value == per_value
        net_in = (torch.zeros(1, d, dtype=F64),) + ((torch.zeros(1, spec.context, dtype=F64),) if spec.context else ())
        assert case.root.net(*net_in).numel() == per_value * math.prod(x_shape)
    for value in out.values():
        assert torch.isfinite(value).all()


def grid_integral(dist: Distribution, lo: Tensor, hi: Tensor, n: int = 200) -> Tensor:
    """Midpoint rule for the integral of exp(log_prob) over the box [lo, hi] (2 dims, any batch)."""
    t = (torch.arange(n, dtype=F64) + 0.5) / n
    u = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # [P, 2] in [0, 1]^2
    u = u.reshape(-1, *([1] * (lo.ndim - 1)), 2)
    points = lo + (hi - lo) * u  # [P, *batch, 2]
    cell = ((hi - lo) / n).prod(-1)  # [*batch]
    with torch.no_grad():
        return dist.log_prob(points).exp().sum(0) * cell


def sample_box(dist: Distribution, width: float = 8.0) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        s = dist.sample((4000,))
    mean, std = s.mean(0), s.std(0)
    return mean - width * std, mean + width * std


def check_integrates_to_one(spec: PartCase) -> None:
    """Latent densities integrate to 1 over +-8 standard deviations (midpoint rule, 2 dims);
    a likelihood sums to 1 over every value (when its distribution enumerates them or its
    support is a grid of levels), else integrates to 1 over its interval or +-14 standard
    deviations."""
    if spec.kind in LATENT_KINDS:
        case = make_case(spec, seed=16, d=2)
        torch.manual_seed(17)
        with torch.no_grad():
            dist = case.distribution(n=2)
        lo, hi = sample_box(dist)
        total = grid_integral(dist, lo, hi)
        # midpoint rule on a smooth density over +-8 standard deviations: error far below 1e-3
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=2e-3)
        return
    case = make_case(spec, seed=18, x_shape=(2,))
    z = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(19), dtype=F64)
    with torch.no_grad():
        p = case.distribution(z=z, h=None if case.h is None else case.h[:2])  # batch [1, 2], event [2]
    if isinstance(case.root, CountDecoder):  # p(x|z, l): normalised over x for a fixed library size l
        p = p.with_library(torch.tensor(3.0, dtype=F64))
        levels = torch.arange(400, dtype=F64)  # the NB tail above 400 at mean <= 3 is far below 1e-9
        grid = torch.stack(torch.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 1, 2)
        total = p.log_prob(grid).exp().sum(0)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-9)
        return
    base = p.base_dist
    support = case.root.support
    levels = None
    if base.has_enumerate_support:
        levels = base.enumerate_support(expand=False).reshape(-1).unique()
    elif support.is_discrete and hasattr(support, "bins"):
        levels = torch.arange(support.bins, dtype=F64) / (support.bins - 1)
    if levels is not None:  # sum over every value of x
        grid = torch.stack(torch.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 1, 2)
        total = p.log_prob(grid).exp().sum(0)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
        return
    if isinstance(base.support, torch.distributions.constraints.interval):
        lo = torch.full((1, 2, 2), float(base.support.lower_bound), dtype=F64)
        hi = torch.full((1, 2, 2), float(base.support.upper_bound), dtype=F64)
    else:
        lo, hi = p.mean - 14 * p.stddev, p.mean + 14 * p.stddev
    total = grid_integral(p, lo, hi, n=600)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-3)


def check_gradients(spec: PartCase) -> None:
    """Gradients reach every parameter (finite, not all zero) at parameters moved off their
    initial values; with a context they reach the context features too when the part reads them (a prior that returns batch ``[B]``;
    posteriors and likelihoods always), and a prior of batch ``[]`` is the same for every c."""
    case = make_case(spec, seed=20)
    with torch.no_grad():  # off their initial values (the conditional prior's map starts at zero)
        for p in case.root.parameters():
            p.add_(0.1 * torch.randn_like(p))
    h = None if case.h is None else case.h.clone().requires_grad_()
    torch.manual_seed(21)
    if spec.kind == "posterior":  # the ELBO's q terms with a N(0, I) prior, by reparameterization
        z, log_q = sample_and_score(call(case.root, encoder_input(), h), K)
        loss = (log_q + 0.5 * z.pow(2).sum(-1)).sum()
        reads_context = True
    elif spec.kind == "prior":
        z = torch.randn(K, B, 2, dtype=F64)
        p = call(case.part, None, h)
        loss = -p.log_prob(z).sum()
        reads_context = p.batch_shape == (B,)
        if h is not None and not reads_context:
            other = call(case.part, None, 2 * h.detach() + 1)
            torch.testing.assert_close(other.log_prob(z), p.log_prob(z).detach(), rtol=0, atol=0)
    else:
        z = torch.randn(K, B, 2, dtype=F64, requires_grad=True)
        loss = -call(case.root, z, h).log_prob(case.data).sum()
        reads_context = True
    parameters = list(case.root.named_parameters())
    if not parameters:  # nothing to learn (the standard normal prior)
        assert not loss.requires_grad
        return
    loss.backward()
    for pname, p in parameters:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and (p.grad != 0).any(), pname
    if spec.kind == "likelihood":
        assert z.grad is not None and (z.grad != 0).any()
    if h is not None and reads_context:
        assert h.grad is not None and torch.isfinite(h.grad).all() and (h.grad != 0).any(), "the context gets no gradient"


def check_round_trip(spec: PartCase, folder: Any) -> None:
    """``state_dict`` -> safetensors -> a freshly built part: identical outputs under one seed."""
    case = make_case(spec, seed=22)
    with torch.no_grad():  # move parameters off their initial values, so loading matters
        for p in case.root.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = folder / f"{spec.id}.safetensors"
    save_file(case.root.state_dict(), str(path))  # refuses tensors stored twice
    fresh = make_case(spec, seed=23)

    def outputs(c: Case) -> dict[str, Tensor]:
        torch.manual_seed(24)
        with torch.no_grad():
            return c.draw()

    expected = outputs(case)
    if list(case.root.parameters()):  # (the standard normal has no state)
        before = outputs(fresh)
        assert any(not torch.equal(before[k], expected[k]) for k in expected)
    fresh.root.load_state_dict(load_file(str(path)), strict=True)
    after = outputs(fresh)
    for key in expected:
        assert torch.equal(after[key], expected[key]), key


CHECKS = (check_shapes, check_integrates_to_one, check_gradients)


# --- the property tests -------------------------------------------------------------------------


def test_every_registered_part_is_under_test() -> None:
    """The cases are the registry's: each part, without and with a context (or with only)."""
    for kind in ("posterior", "prior", "likelihood"):
        for name, part in registry.parts(kind).items():
            contexts = {c.context for c in ALL_CASES if (c.kind, c.name) == (kind, name)}
            assert contexts == ({CONTEXT} if part.conditional_only else {0, CONTEXT}), (kind, name)
    assert any(c.name == "conditional" for c in ALL_CASES)
    assert {c.encoder for c in ALL_CASES if c.name == "vamp"} == set(registry.names("posterior"))


@pytest.mark.parametrize("spec", ALL_CASES, ids=IDS)
def test_shapes(spec: PartCase) -> None:
    check_shapes(spec)


@pytest.mark.parametrize("spec", ALL_CASES, ids=IDS)
def test_densities_integrate_or_sum_to_one(spec: PartCase) -> None:
    check_integrates_to_one(spec)


@pytest.mark.parametrize("spec", ALL_CASES, ids=IDS)
def test_gradients_reach_every_parameter_and_the_context(spec: PartCase) -> None:
    check_gradients(spec)


@pytest.mark.parametrize("spec", ALL_CASES, ids=IDS)
def test_save_load_round_trips_through_safetensors(spec: PartCase, tmp_path) -> None:
    check_round_trip(spec, tmp_path)


# --- log_prob against a reference ---------------------------------------------------------


def reference_posterior_log_prob(encoder: nn.Module, x: Tensor, z: Tensor, h: Tensor | None) -> Tensor:
    """log q(z|x, c) for the closed-form posteriors, from the network's outputs and torch."""
    d = encoder.latent_dim
    out = run_net(encoder.net, x, h)
    loc, scale = out[:, :d], nn.functional.softplus(out[:, d : 2 * d]) + encoder.min_scale
    if type(encoder) is GaussianEncoder:
        return Normal(loc, scale).log_prob(z).sum(-1)
    tril = torch.zeros(x.shape[0], d, d, dtype=x.dtype)
    entry = 2 * d
    for i in range(d):
        tril[:, i, i] = scale[:, i]
        for j in range(i):
            tril[:, i, j] = scale[:, i] * encoder.off_diagonal_scale * out[:, entry]  # L = diag(l) (I + M)
            entry += 1
    return MultivariateNormal(loc, covariance_matrix=tril @ tril.transpose(-1, -2)).log_prob(z)


CLOSED_FORM_POSTERIORS = [c for c in ALL_CASES if c.kind == "posterior" and c.part.cls in (GaussianEncoder, FullCovarianceEncoder)]


@pytest.mark.parametrize("spec", CLOSED_FORM_POSTERIORS, ids=[c.id for c in CLOSED_FORM_POSTERIORS])
def test_closed_form_posteriors_match_torch(spec: PartCase) -> None:
    case = make_case(spec, seed=5, d=3)
    x = encoder_input()
    torch.manual_seed(6)
    q = case.distribution()
    z = q.rsample((K,))
    torch.testing.assert_close(q.log_prob(z), reference_posterior_log_prob(case.root, x, z, case.h), rtol=1e-10, atol=1e-10)
    far = 5 * torch.randn(K, B, 3, dtype=F64)  # far from the mean too
    torch.testing.assert_close(q.log_prob(far), reference_posterior_log_prob(case.root, x, far, case.h), rtol=1e-10, atol=1e-10)


@functools.cache
def is_flow(name: str) -> bool:
    """Whether posterior ``name`` is a flow (its distribution has ``forward_and_log_det``)."""
    with torch.random.fork_rng():
        return hasattr(build_part(PartCase("posterior", name)).to(F64)(encoder_input()), "forward_and_log_det")


FLOW_CASES = [c for c in ALL_CASES if c.kind == "posterior" and is_flow(c.name)]


@pytest.mark.parametrize("spec", FLOW_CASES, ids=[c.id for c in FLOW_CASES])
@pytest.mark.parametrize("d", [1, 3])
def test_flow_density_is_the_change_of_variables_with_an_autograd_jacobian(spec: PartCase, d: int) -> None:
    case = make_case(spec, seed=7, d=d)
    q = case.distribution(n=1)  # batch [1]
    base = q.base.base_dist  # q0 = N(loc, diag(scale^2))

    def f(eps: Tensor) -> Tensor:  # [D] -> [D]: the sample as a function of the noise
        return q.forward_and_log_det(base.loc + base.scale * eps.unsqueeze(0))[0][0]

    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        eps = torch.randn(d, generator=g, dtype=F64)
        z = f(eps)
        jac = torch.autograd.functional.jacobian(f, eps)  # [D, D]
        expected = Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac).logabsdet
        got_inverse = q.log_prob(z.unsqueeze(0))[0]  # by inverting the flow
        z0 = base.loc + base.scale * eps.unsqueeze(0)
        _, log_det = q.forward_and_log_det(z0)
        got_forward = q.base.log_prob(z0)[0] - log_det[0]  # what rsample_and_log_prob returns
        torch.testing.assert_close(got_forward, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_inverse, expected, rtol=1e-7, atol=1e-7)


def reference_prior_log_prob(holder: Holder, z: Tensor, h: Tensor | None) -> Tensor:
    """log p(z|c) from the prior's parameters, built independently with torch."""
    prior = holder.part
    d = z.shape[-1]
    if type(prior) is StandardNormalPrior:
        return MultivariateNormal(torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64)).log_prob(z)
    if type(prior) is GaussianMixturePrior:
        scale = nn.functional.softplus(prior.raw_scale) + prior.min_scale
        log_w = torch.log_softmax(prior.logits, 0)
        terms = [log_w[c] + MultivariateNormal(prior.loc[c], torch.diag(scale[c] ** 2)).log_prob(z)
                 for c in range(prior.components)]
        return torch.logsumexp(torch.stack(terms), 0)
    if type(prior) is VampPrior:  # the mean of q(z|u_j, c) over the pseudo-inputs
        u = prior.pseudo_inputs
        terms = []
        for j in range(prior.components):
            uj = u[j : j + 1].expand(z.shape[-2], *u.shape[1:])  # [B, *x_shape]
            terms.append(call(holder.encoder, uj, h).log_prob(z))  # [K, B]
        return torch.logsumexp(torch.stack(terms), 0) - math.log(prior.components)
    assert type(prior) is ConditionalGaussianPrior and h is not None
    out = h @ prior.map.weight.T + prior.map.bias  # [B, 2D]
    return Normal(out[:, :d], out[:, d:].exp()).log_prob(z).sum(-1)


REFERENCE_PRIORS = (StandardNormalPrior, GaussianMixturePrior, VampPrior, ConditionalGaussianPrior)
PRIOR_CASES = [c for c in ALL_CASES if c.kind == "prior" and c.part.cls in REFERENCE_PRIORS]


@pytest.mark.parametrize("spec", PRIOR_CASES, ids=[c.id for c in PRIOR_CASES])
def test_priors_match_references(spec: PartCase) -> None:
    case = make_case(spec, seed=10)
    with torch.no_grad():  # parameters away from their initial values (the conditional prior starts at N(0, I))
        for p in case.part.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = 1.5 * torch.randn(K, B, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    expected = reference_prior_log_prob(case.root, z, case.h)
    torch.testing.assert_close(case.distribution().log_prob(z), expected, rtol=1e-8, atol=1e-8)
    if type(case.part) is VampPrior:
        u = case.part.pseudo_inputs
        assert u.shape == (3, X_IN) and ((u > 0) & (u < 1)).all()  # [0, 1] data (a Bernoulli likelihood)


def reference_likelihood_log_prob(decoder: nn.Module, z: Tensor, x: Tensor, h: Tensor | None) -> Tensor:
    flat = z.reshape(-1, z.shape[-1])
    if h is None:
        out = decoder.net(flat)
    else:
        out = decoder.net(flat, h.expand(*z.shape[:-1], h.shape[-1]).reshape(-1, h.shape[-1]))
    out = out.reshape(*z.shape[:-1], -1)  # [K, B, P * n]
    x = x.reshape(x.shape[0], -1)  # [B, n]
    if type(decoder) is BernoulliDecoder:
        return Bernoulli(logits=out).log_prob(x).sum(-1)
    if type(decoder) is ContinuousBernoulliDecoder:
        return ContinuousBernoulli(logits=out).log_prob(x).sum(-1)
    if type(decoder) is LogisticMixtureDecoder:  # the textbook formula, in float64: cdf differences, edges to +-inf
        m, n = decoder.mixtures, x.shape[-1]
        logits, loc, raw = out.reshape(*out.shape[:-1], 3, m, n).unbind(-3)  # each [K, B, M, n]
        s = raw.exp() + decoder.min_scale
        xx = x.unsqueeze(-2)  # [B, 1, n]
        upper = torch.where(xx >= 1, 1.0, torch.sigmoid((xx + 0.5 / 255 - loc) / s))
        lower = torch.where(xx <= 0, 0.0, torch.sigmoid((xx - 0.5 / 255 - loc) / s))
        prob = (torch.softmax(logits, dim=-2) * (upper - lower)).sum(-2)  # [K, B, n]
        return prob.log().sum(-1)
    if isinstance(decoder, CountDecoder):  # scVI's formulas by hand: mu = l softmax(logits), l = the total of x
        params = out.reshape(*out.shape[:-1], decoder.params_per_value, -1)  # [K, B, P, n]
        mu = x.sum(-1, keepdim=True) * torch.softmax(params[..., 0, :], -1)  # [K, B, n]
        if type(decoder) is PoissonDecoder:
            return (x * mu.log() - mu - torch.lgamma(x + 1)).sum(-1)
        if decoder.dispersion == "feature":
            theta = decoder.log_theta.reshape(-1).exp()
        elif decoder.dispersion == "example":
            theta = params[..., 1, :].exp()
        else:  # one theta per feature, log-linear in the context features
            theta = (h @ decoder.log_theta).exp()  # [B, n]
        log_nb = (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
                  + theta * (theta.log() - (theta + mu).log()) + x * (mu.log() - (theta + mu).log()))
        if type(decoder) is NegativeBinomialDecoder:
            return log_nb.sum(-1)
        pi = torch.sigmoid(params[..., -1, :])
        return torch.where(x == 0, (pi + (1 - pi) * log_nb.exp()).log(), (1 - pi).log() + log_nb).sum(-1)
    if type(decoder) is MixedDecoder:  # no columns declared: a Gaussian per value (m = 0, s = 1), a learned scale each
        return Normal(out, decoder.numeric_scale.detach()).log_prob(x).sum(-1)
    family = {GaussianDecoder: Normal, LaplaceDecoder: Laplace}[type(decoder)]
    return family(out, decoder.scale.reshape(-1).detach()).log_prob(x).sum(-1)


REFERENCE_LIKELIHOODS = (BernoulliDecoder, ContinuousBernoulliDecoder, LogisticMixtureDecoder, GaussianDecoder, LaplaceDecoder,
                         PoissonDecoder, NegativeBinomialDecoder, ZINBDecoder, MixedDecoder)
REFERENCE_LIKELIHOOD_CASES = [c for c in LIKELIHOOD_CASES if c.part.cls in REFERENCE_LIKELIHOODS]


@pytest.mark.parametrize("spec", REFERENCE_LIKELIHOOD_CASES, ids=[c.id for c in REFERENCE_LIKELIHOOD_CASES])
def test_likelihoods_match_references(spec: PartCase) -> None:
    x_shape = (2, 3)
    case = make_case(spec, seed=13, x_shape=x_shape)
    decoder = case.root
    if hasattr(decoder, "raw_scale"):  # learned scales away from their initial value
        with torch.no_grad():
            decoder.raw_scale.add_(0.3 * torch.randn_like(decoder.raw_scale))
    if isinstance(getattr(decoder, "log_theta", None), nn.Parameter):  # learned dispersions too
        with torch.no_grad():
            decoder.log_theta.add_(0.3 * torch.randn_like(decoder.log_theta))
    z = torch.randn(K, B, 2, generator=torch.Generator().manual_seed(14), dtype=F64)
    x = case.data.clone()
    if registry.in_unit_interval(spec.part.support):  # the edges of [0, 1] too
        x[0].view(-1)[:2] = torch.tensor([0.0, 1.0], dtype=F64)
    expected = reference_likelihood_log_prob(decoder, z, x, case.h)
    torch.testing.assert_close(case.distribution(z=z).log_prob(x), expected, rtol=1e-9, atol=1e-9)


def test_the_references_cover_every_built_in_part() -> None:
    """Every part vaelab ships has its reference above (a new part of a test has none)."""
    from vaelab.distributions import IAFEncoder, PlanarFlowEncoder

    shipped = {"posterior": (GaussianEncoder, FullCovarianceEncoder, PlanarFlowEncoder, IAFEncoder),
               "prior": REFERENCE_PRIORS, "likelihood": REFERENCE_LIKELIHOODS}
    for kind, classes in shipped.items():
        for name, part in registry.parts(kind).items():
            if part.cls is not None and part.cls.__module__.startswith("vaelab."):
                assert part.cls in classes, (kind, name)
    assert {c.name for c in FLOW_CASES} == {"planar", "iaf"}


def test_vamp_prior_does_not_own_the_encoder() -> None:
    holder = make_case(case_of("prior", "vamp", encoder="gaussian"), seed=25).root
    prior = holder.part
    assert list(prior.state_dict()) == ["raw_pseudo_inputs"]
    assert prior.encoder is holder.encoder
    assert not any(m is holder.encoder for m in prior.modules())
    x = torch.rand(3, X_IN, dtype=F64) * 0.8 + 0.1
    prior.set_pseudo_inputs(x)
    torch.testing.assert_close(prior.pseudo_inputs, x, rtol=1e-10, atol=1e-10)
    unbounded = VampPrior(holder.encoder, (X_IN,), components=3, unit_interval=False).to(F64)
    unbounded.set_pseudo_inputs(5 * x)
    torch.testing.assert_close(unbounded.pseudo_inputs, 5 * x)


# --- part-specific properties -------------------------------------------------------------


def test_full_covariance_kl_to_a_diagonal_gaussian_is_closed_form_and_exact():
    encoder = make_case(case_of("posterior", "full-gaussian"), seed=26, d=3).root
    q = encoder(encoder_input())
    loc, scale = torch.tensor([0.5, -1.0, 0.0], dtype=F64), torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    diagonal = torch.distributions.Independent(Normal(loc, scale), 1)
    reference = MultivariateNormal(loc, torch.diag(scale**2))
    torch.testing.assert_close(kl_divergence(q, diagonal), kl_divergence(q, reference), rtol=1e-10, atol=1e-10)
    # and the objectives pick it up against the standard normal prior (kl="analytic" does not raise)
    vae = vaelab.VAE(encoder, BernoulliDecoder(MLP(3, [], X_IN), (X_IN,)), StandardNormalPrior(3)).to(F64)
    trace = vae.trace(torch.randint(0, 2, (B, X_IN)).to(F64), 2)
    standard = MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64))
    torch.testing.assert_close(kl_term(trace, "analytic"), kl_divergence(trace.posterior, standard))


def test_planar_steps_are_invertible_whatever_the_raw_u():
    """u = -5 w would fold the plane (w^T u = -5 < -1); u_hat keeps w^T u_hat > -1."""
    d, steps = 2, 2
    w = torch.tensor([[[1.0, 0.5], [-0.3, 2.0]]], dtype=F64)  # [1, K, D]
    from vaelab.distributions import PlanarFlow

    q = PlanarFlow(torch.zeros(1, d, dtype=F64), torch.ones(1, d, dtype=F64), -5 * w, w, torch.zeros(1, steps, dtype=F64))
    assert (q.wu_hat > -1).all()
    torch.manual_seed(27)
    z, log_q = q.rsample_and_log_prob((50,))
    assert torch.isfinite(log_q).all()
    torch.testing.assert_close(q.log_prob(z), log_q, rtol=1e-9, atol=1e-9)


def test_planar_flow_with_detached_parameters_differentiates_in_z_only():
    """What STL and DReG need (``detach_parameters``): same value, gradient in z, none in the parameters."""
    encoder = make_case(case_of("posterior", "planar"), seed=36).root
    q = encoder(encoder_input())
    torch.manual_seed(37)
    z = q.sample((K,)).requires_grad_()  # a leaf: no path back to the parameters
    frozen = q.detach_parameters().log_prob(z)
    full = q.log_prob(z)
    torch.testing.assert_close(frozen, full, rtol=1e-9, atol=1e-9)
    grad_frozen = torch.autograd.grad(frozen.sum(), [z, *encoder.parameters()], allow_unused=True)
    grad_full = torch.autograd.grad(full.sum(), [z, *encoder.parameters()], allow_unused=True)
    torch.testing.assert_close(grad_frozen[0], grad_full[0], rtol=1e-9, atol=1e-9)
    assert all(g is None for g in grad_frozen[1:])
    assert any(g is not None and (g != 0).any() for g in grad_full[1:])  # the full one does depend on them


@pytest.mark.parametrize("spec", FLOW_CASES, ids=[c.id for c in FLOW_CASES])
def test_flow_moments_are_deterministic_monte_carlo_estimates(spec: PartCase) -> None:
    q = make_case(spec, seed=28).distribution(n=2)
    mean, std = q.mean, q.stddev
    assert torch.equal(mean, q.mean) and torch.equal(std, q.stddev)
    torch.manual_seed(29)
    with torch.no_grad():
        s = q.sample((20000,))
    # the moments use 1000 draws: their error is about std / sqrt(1000)
    assert ((mean - s.mean(0)).abs() < 4 * s.std(0) / math.sqrt(1000)).all()
    assert ((std - s.std(0)).abs() < 0.15 * s.std(0)).all()


def test_discretized_logistic_is_exact_and_stable_for_extreme_parameters():
    levels = torch.arange(256, dtype=F64) / 255
    for dtype in (torch.float32, F64):
        for loc, scale in [(0.5, 1e-6), (0.5, 1e3), (-40.0, 0.01), (40.0, 0.01), (0.2, 1e-4)]:
            d = DiscretizedLogisticMixture(
                torch.zeros(1, dtype=dtype), torch.tensor([loc], dtype=dtype), torch.tensor([scale], dtype=dtype)
            )
            log_p = d.log_prob(levels.to(dtype))
            assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all(), (loc, scale)
            assert float(torch.logsumexp(log_p.double(), 0)) == pytest.approx(0.0, abs=1e-5)
    # a tiny scale puts all the mass on the bin holding the location; the edges collect the tails
    sharp = DiscretizedLogisticMixture(torch.zeros(1, dtype=F64), torch.tensor([128 / 255], dtype=F64), torch.tensor([1e-6], dtype=F64))
    assert float(sharp.log_prob(torch.tensor(128 / 255, dtype=F64))) == pytest.approx(0.0, abs=1e-12)
    left = DiscretizedLogisticMixture(torch.zeros(1, dtype=F64), torch.tensor([-40.0], dtype=F64), torch.tensor([0.01], dtype=F64))
    assert float(left.log_prob(torch.tensor(0.0, dtype=F64))) == pytest.approx(0.0, abs=1e-12)


def test_discretized_logistic_mean_and_samples_follow_the_probabilities():
    g = torch.Generator().manual_seed(30)
    d = DiscretizedLogisticMixture(
        torch.randn(2, 3, generator=g, dtype=F64), torch.rand(2, 3, generator=g, dtype=F64),
        0.05 + 0.1 * torch.rand(2, 3, generator=g, dtype=F64),
    )
    levels = (torch.arange(256, dtype=F64) / 255)[:, None].expand(256, 2)
    prob = d.log_prob(levels).exp()  # [256, 2]
    torch.testing.assert_close(d.mean, (levels * prob).sum(0), rtol=1e-12, atol=1e-12)
    torch.manual_seed(31)
    n = 40000
    x = d.sample((n,))  # [n, 2]
    counts = torch.stack([(torch.round(x[:, j] * 255).long() == torch.arange(256)[:, None]).sum(1) for j in range(2)], 1)
    expected = n * prob
    # every bin within 5 binomial standard errors (plus one count), and the means agree
    assert ((counts - expected).abs() <= 5 * (expected * (1 - prob)).sqrt() + 1).all()
    assert ((x.mean(0) - d.mean).abs() < 5 * x.std(0) / math.sqrt(n)).all()


def test_likelihood_support_checks():
    cb = ContinuousBernoulliDecoder(MLP(2, [], 3), (3,))
    cb.check(torch.tensor([[0.0, 0.3, 1.0]]))
    with pytest.raises(VaelabError, match=r"continuous Bernoulli.*\[0, 1\]"):
        cb.check(torch.tensor([[0.0, 1.5, 1.0]]))
    lm = LogisticMixtureDecoder(MLP(2, [], 9), (3,), mixtures=1)
    lm.check(torch.tensor([[0.0, 17 / 255, 1.0]]))
    lm.check((torch.tensor([[0, 17, 255]]) / 255).float())  # float32 rounding of k/255 passes
    with pytest.raises(VaelabError, match="off the grid k/255"):
        lm.check(torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(VaelabError, match=r"needs \[0, 1\]"):
        lm.check(torch.tensor([[0.0, 255.0, 1.0]]))
    with pytest.raises(VaelabError, match="NaN"):
        lm.check(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(VaelabError, match="Laplace likelihood scale must be > 0"):
        LaplaceDecoder(MLP(2, [], 3), (3,), scale=0.0)


# --- every combination in a VAE -----------------------------------------------------------


LABEL3 = Variable("label", "categorical", classes=3)


def vae_data(likelihood: str, x_shape: tuple[int, ...], n: int = 8) -> Tensor:
    """Data in the likelihood's support: 8-bit levels k/255 for [0, 1] data, Poisson(3) counts for
    count likelihoods, else N(0, 1)."""
    g = torch.Generator().manual_seed(32)
    if getattr(registry.get("likelihood", likelihood).cls, "counts", False):
        return torch.poisson(torch.full((n, *x_shape), 3.0), generator=g)
    if registry.in_unit_interval(registry.get("likelihood", likelihood).support):
        return torch.randint(0, 256, (n, *x_shape), generator=g).float() / 255
    return torch.randn(n, *x_shape, generator=g)


def vae_context(conditional: bool, n: int = 8) -> Tensor | None:
    """Class ids c ``[n, 1]`` of LABEL3 for a conditional VAE, else None."""
    return (torch.arange(n) % 3).float()[:, None] if conditional else None


def train_one_step(model: vaelab.VAE, x: Tensor, c: Tensor | None = None) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    terms = elbo(model.trace(x, 2, c))
    loss = -terms.elbo.mean()
    assert torch.isfinite(loss) and torch.isfinite(terms.kl).all()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    optimizer.step()
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.isfinite(model.log_weights(x, 2, c)).all()


POSTERIOR_PRIOR_PAIRS = [(posterior, prior, conditional) for posterior in registry.names("posterior")
                         for prior, part in registry.parts("prior").items()
                         for conditional in ((True,) if part.conditional_only else (False, True))]


@pytest.mark.parametrize("posterior,prior,conditional", POSTERIOR_PRIOR_PAIRS,
                         ids=[f"{a}-{b}" + ("-c" if c else "") for a, b, c in POSTERIOR_PRIOR_PAIRS])
def test_every_posterior_and_prior_trains_a_step_in_a_vae(posterior: str, prior: str, conditional: bool, tmp_path) -> None:
    torch.manual_seed(33)
    kwargs = dict(latent_dim=2, hidden=[16], posterior=posterior, prior=prior, flow_steps=2, prior_components=3,
                  context=(LABEL3,) if conditional else ())
    model = build_vae((1, 8, 8), **kwargs)
    c = vae_context(conditional)
    train_one_step(model, vae_data("bernoulli", (1, 8, 8)), c)
    assert model.sample(3, c=None if c is None else c[:3]).shape == (3, 1, 8, 8)
    # the weights save as safetensors (no tensor twice) and load into a fresh build
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = build_vae((1, 8, 8), **kwargs)
    fresh.load_state_dict(load_file(str(path)), strict=True)


@functools.cache
def net_x_shape(net: str) -> tuple[int, ...]:
    """Vectors (6,) when the network takes them, else 28x28 images (the conv nets)."""
    part = registry.get("net", net)
    try:
        part.build("encoder", (6,), 4, 0, **part.defaults())
    except VaelabError:
        return (1, 28, 28)
    return (6,)


@pytest.mark.parametrize("conditional", [False, True], ids=["", "c"])
@pytest.mark.parametrize("likelihood", registry.names("likelihood"))
@pytest.mark.parametrize("net", registry.names("net"))
def test_every_likelihood_and_net_trains_a_step_in_a_vae(net: str, likelihood: str, conditional: bool) -> None:
    torch.manual_seed(34)
    x_shape = net_x_shape(net)
    model = build_vae(x_shape, latent_dim=2, hidden=[16], net=net, likelihood=likelihood, mixtures=2, learn_scale="feature",
                      context=(LABEL3,) if conditional else ())
    x = vae_data(likelihood, x_shape)
    c = vae_context(conditional)
    model.decoder.check(x)
    train_one_step(model, x, c)
    c2 = None if c is None else c[:2]
    assert model.sample(2, c=c2).shape == (2, *x_shape)
    model.decoder.check(model.sample(2, mean=False, c=c2))


def test_build_vae_and_config_defaults_are_the_classic_vae():
    config = TrainConfig()
    model = build_model(config.model_spec((1, 28, 28)))
    assert type(model.encoder) is GaussianEncoder and type(model.prior) is StandardNormalPrior
    assert type(model.decoder) is BernoulliDecoder
    with pytest.raises(VaelabError, match="unknown posterior 'radial'"):
        build_vae((4,), posterior="radial")  # type: ignore[arg-type]
    with pytest.raises(VaelabError, match="unknown prior"):
        build_vae((4,), prior="flow")  # type: ignore[arg-type]
    with pytest.raises(VaelabError, match="flow_steps"):
        build_vae((4,), posterior="planar", flow_steps=0)
    with pytest.raises(VaelabError, match="unknown value 'radial' for posterior"):
        TrainConfig(posterior="radial")
    with pytest.raises(VaelabError, match="prior_components"):
        TrainConfig.from_mapping({"prior_components": 0})
    spec = TrainConfig.from_mapping(dict(posterior="iaf", flow_steps=3, prior="vamp", prior_components=7,
                                         likelihood="logistic-mixture", mixtures=4)).model_spec((1, 28, 28))
    assert (spec.posterior.name, spec.posterior.options["flow_steps"]) == ("iaf", 3)
    assert (spec.prior.name, dict(spec.prior.options)) == ("vamp", {"prior_components": 7})
    assert (spec.likelihood.name, dict(spec.likelihood.options)) == ("logistic-mixture", {"mixtures": 4})


def train_help() -> str:
    """``vaelab train --help`` as one line (click wraps long lines, also after a hyphen)."""
    from click.testing import CliRunner

    from vaelab.cli import cli

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    return " ".join(result.output.split()).replace("- ", "-")


def test_cli_offers_every_part() -> None:
    text = train_help()
    for kind in registry.KINDS:
        assert f"--{kind} " in text
        for name, part in registry.parts(kind).items():
            assert name in text, (kind, name)
            for option in part.options:  # one flag per option, saying which parts read it
                assert "--" + option.name.replace("_", "-") in text, option.name
                assert f"{kind} {name}" in text


@pytest.mark.parametrize(
    "settings",
    [
        dict(posterior="iaf", flow_steps=2, prior="vamp", prior_components=5),
        dict(posterior="planar", flow_steps=2, prior="mog", prior_components=3, likelihood="continuous-bernoulli"),
    ],
    ids=["iaf-vamp", "planar-mog-cb"],
)
def test_train_and_load_round_trip(settings, tmp_path):
    config = TrainConfig.from_mapping(dict(data="digits", hidden=[32], latent_dim=2, epochs=1, eval_k=10,
                                           out=str(tmp_path), name="run", **settings))
    model, result = vaelab.runs.train(config, figures=False, progress=False, log=quiet)
    assert result.epochs_done == 1
    loaded = vaelab.load(model.run_dir)
    assert loaded.config == model.config
    assert type(loaded.vae.encoder) is type(model.vae.encoder) and type(loaded.vae.prior) is type(model.vae.prior)
    x = model.test_set()[0][:16]
    with torch.no_grad():
        torch.manual_seed(35)
        expected = model.vae.log_weights(model.as_batch(x), 3)
        torch.manual_seed(35)
        got = loaded.vae.log_weights(loaded.as_batch(x), 3)
    assert torch.isfinite(expected).all()
    assert torch.equal(got, expected)
    assert model.encode(x).mean.shape == (16, 2)  # the flows' Monte Carlo moments
    assert model.reconstruct(x[:2]).shape == (2, 1, 8, 8)


def test_full_covariance_off_diagonal_factor_is_the_scaled_network_output() -> None:
    """L = diag(l) (I + M) with M = off_diagonal_scale x the network's outputs for M: checked
    on set outputs, and M's outputs get gradients; a scale <= 0 is refused."""
    torch.manual_seed(0)
    d = 3
    enc = FullCovarianceEncoder(MLP(4, [8], FullCovarianceEncoder.outputs(d)), d)
    assert enc.off_diagonal_scale == 0.03
    last = [m for m in enc.net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight[2 * d :] = 0.0
        last.bias[2 * d :] = 1.0  # every raw output for M is 1, so M_ij = off_diagonal_scale
    x = torch.randn(5, 4)
    q = enc(x)
    tril = q.scale_tril  # [5, 3, 3]
    diag = torch.diagonal(tril, dim1=-2, dim2=-1)  # [5, 3]
    assert (diag > 0).all()
    rows, cols = torch.tril_indices(d, d, -1)
    torch.testing.assert_close(tril[:, rows, cols], diag[:, rows] * 0.03)  # L_ij = l_i M_ij
    assert torch.count_nonzero(torch.triu(tril, diagonal=1)) == 0
    q.rsample((4,)).pow(2).sum().backward()  # a loss that depends on the correlations
    assert last.weight.grad[2 * d :].abs().sum() > 0  # M's outputs are being learned
    with pytest.raises(ValueError, match="off_diagonal_scale"):
        FullCovarianceEncoder(MLP(4, [8], FullCovarianceEncoder.outputs(d)), d, off_diagonal_scale=0)


def test_a_flows_monte_carlo_mean_is_exact_where_the_flow_is_linear_and_close_elsewhere() -> None:
    # the moments' draws come in antithetic pairs: a flow that only shifts (w = 0) has its mean
    # exactly; a curved one is within 3 standard errors of 1,000 draws of a 400,000-draw reference
    from vaelab.distributions.flows import PlanarFlow

    torch.manual_seed(3)
    loc, scale = torch.randn(2, 3, dtype=F64), torch.rand(2, 3, dtype=F64) + 0.5
    shift = PlanarFlow(loc, scale, torch.randn(2, 2, 3, dtype=F64), torch.zeros(2, 2, 3, dtype=F64),
                       torch.randn(2, 2, dtype=F64))
    expected = loc + (shift.u_hat * torch.tanh(shift.b)[..., None]).sum(-2)  # w = 0: z0 + sum_k u_hat tanh(b)
    torch.testing.assert_close(shift.mean, expected, rtol=0, atol=1e-12)
    curved = PlanarFlow(loc, scale, 2 * torch.randn(2, 2, 3, dtype=F64), torch.randn(2, 2, 3, dtype=F64),
                        torch.randn(2, 2, dtype=F64))
    draws = curved.sample((400_000,))
    error = draws.std(0) / math.sqrt(1000)  # the moments' own error, 1,000 draws
    assert bool(((curved.mean - draws.mean(0)).abs() < 3 * error).all())


@pytest.mark.parametrize("likelihood, family", [("gaussian", Normal), ("laplace", Laplace)])
def test_a_fixed_scale_keeps_its_exact_value_in_a_float64_model(likelihood: str, family: type) -> None:
    # the scale was a float32 buffer cast by .double(): 0.3 became 0.30000001192..., 1e-5 nats off
    vae = build_vae((5,), latent_dim=2, hidden=[4], likelihood=likelihood, gaussian_scale=0.3).double()
    x, z = torch.randn(3, 5, dtype=F64), torch.randn(3, 2, dtype=F64)
    p = vae.decode(z)
    reference = family(p.base_dist.loc, torch.tensor(0.3, dtype=F64)).log_prob(x).sum(-1)
    torch.testing.assert_close(p.log_prob(x), reference, rtol=0, atol=1e-13)
    assert vae.float().decoder.scale.dtype == torch.float32  # and back
