"""The semi-supervised model M2 (Kingma, Rezende, Mohamed & Welling 2014): the class label as a
partly observed latent variable.

Generative model, with a class label y in {1..C} and a continuous latent z:

    p(y) = Cat(y; 1/C)  (uniform),   p(z) = the spec's prior (never depending on y),
    p(x|y, z) = the spec's likelihood, its decoder reading y as a context.

Inference model: a classifier q(y|x) = Cat(y; softmax(f(x))) (the spec's network, C outputs)
and a conditional posterior q(z|x, y) (the spec's posterior, its encoder reading y). The
encoder, decoder and prior form an inner conditional :class:`~vaelab.model.VAE` whose context
is the label, so everything it computes (traces, flows, closed-form KLs) is reused here.

Bounds (nats per example, paper eq. 6 and 7). For a labelled pair (x, y),

    log p(x, y) >= L(x, y) = E_q(z|x,y)[log p(x|y, z)] - KL(q(z|x, y) || p(z)) + log p(y),

and for an unlabelled x, with y summed out exactly (C classes, one batched pass),

    log p(x) >= U(x) = sum_y q(y|x) L(x, y) + H(q(y|x))
              = sum_y q(y|x) E_q(z|x,y)[log p(x|y, z)]                       reconstruction
                - [sum_y q(y|x) KL(q(z|x, y) || p(z)) + KL(q(y|x) || p(y))]  KL

(the second form uses sum_y q(y|x) (-log p(y)) - H(q(y|x)) = KL(q(y|x) || p(y))). The KL of z
is taken in closed form when torch knows the pair, else by Monte Carlo (``Objective.kl``).

Training (paper eq. 9). The paper minimises

    J^alpha = sum_{(x,y) labelled} -L(x, y) + sum_{x unlabelled} -U(x)
              + alpha E_{labelled}[-log q(y|x)],      alpha = 0.1 N,

adding a classification loss because otherwise q(y|x) learns only from unlabelled data. In
nats per example (divided by N) over a batch of B examples of which B_l are labelled:

    loss = -(sum_labelled L + sum_unlabelled U) / B
           + (alpha / labelled_share) (sum_labelled -log q(y|x)) / B,

with ``labelled_share`` = N_labelled / N. Its expectation over batches is J^alpha / N with the
paper's alpha equal to ``alpha`` x N: each labelled example's cross-entropy is weighted by
alpha N / N_labelled, and ``alpha = 0.1`` (the default) is the paper's 0.1 N.

Labelled rows in every batch (``labelled_per_batch`` L > 0 in training). With few labels a
plain batch of B rows holds B N_l / N of them on average (3.5 of 128 for 100 labels among
3,600), often none, so the classification term arrives in rare, large kicks. The loop then
adds L rows drawn from the labelled examples to each batch of B ordinary rows
(:func:`vaelab.training.loop.labelled_rows`), and the same loss is used with ``labelled_share`` set
to the expected share of labelled rows among the B + L (:func:`batch_labelled_share`):

    s = (B N_l / N + L) / (B + L).

Expectations over batches (E[sum over labelled rows of f] = (B + L) s mean_labelled f):

    classification:  alpha / s x (sum_labelled -log q(y|x)) / (B + L)  ->  alpha mean_labelled(-log q(y|x)),

exactly the term above (still alpha N / N_labelled per labelled example, in nats per example),
now from B N_l / N + L labelled rows per step instead of B N_l / N. The bounds become

    -(B / (B + L)) (sum_labelled L + sum_unlabelled U) / N  -  (L / (B + L)) mean_labelled L(x, y),

the (negative) bound of a data set in which the labelled examples are up-weighted to a share
s, times B / (B + L): against the classification term the bounds weigh B / (B + L) of what
they weigh without added rows (as if alpha were (B + L) / B times larger: 1.25 for B = 128,
L = 32). L(x, y) of the few labelled examples so teaches the decoder what each class looks like
in every step; the alternative, down-weighting those rows' L(x, y) to keep J^alpha exactly,
would only lower the variance of the classification term. L = 0 is the paper's objective,
unchanged.

Estimating log p(x). :meth:`SemiSupervisedVAE.log_weights` is an importance sampler over the
joint latent (y, z) with proposal q(y|x) q(z|x, y):

    log w_k = log p(x|y_k, z_k) + log p(z_k) + log p(y_k) - log q(z_k|x, y_k) - log q(y_k|x),
    y_k ~ q(y|x), z_k ~ q(z|x, y_k),

so :func:`vaelab.evaluation.log_likelihood` estimates log p(x) unchanged. Given the label
(``c``), it is log p(x, y, z_k) - log q(z_k|x, y), whose estimate is log p(x, y).

Reference numbers (paper, Table 1; MNIST, 100 labels, 50,000 unlabelled): M2 alone 11.97%
(+- 1.71) test error, M1+M2 (M2 on the latents of a VAE) 3.33% (+- 0.14).

Example:
    >>> spec = ModelSpec.create((1, 28, 28), latent_dim=50, family="m2",
    ...                         context=[Variable("label", "categorical", classes=10)])
    >>> model = build_m2(spec)
    >>> loss, terms = model.loss(Batch(x, c, known), Objective(alpha=0.1, labelled_share=0.02))
    >>> model.classify(x).probs.argmax(-1)      # predicted classes [B]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from . import registry
from .build import build_parts
from .context import Batch, ContextEncoder
from .errors import VaelabError
from .model import VAE
from .objectives import ELBO, KLMethod, Objective, elbo
from .spec import ModelSpec

__all__ = ["SemiSupervisedVAE", "LabelFreePrior", "build_m2", "batch_labelled_share"]


class LabelFreePrior(nn.Module):
    """p(z) for a model whose other parts read the label: ``forward(c)`` ignores c.

    The inner VAE passes the label's features to its prior; M2's p(z) must not depend on y,
    so this wrapper calls the wrapped prior without them.
    """

    def __init__(self, prior: nn.Module) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, c: Tensor | None = None) -> Distribution:
        return self.prior()  # batch [], event [D]


def _rows(t: ELBO, index: slice) -> ELBO:
    return ELBO(t.elbo[index], t.reconstruction[index], t.kl[index])


class SemiSupervisedVAE(nn.Module):
    """M2: a classifier q(y|x) and a VAE conditioned on the label (see the module docstring).

    Args:
        classifier: maps ``[B, *x_shape]`` to ``[B, C]`` logits of q(y|x).
        vae: the inner VAE, q(z|x, y), p(x|y, z) and p(z) (a :class:`LabelFreePrior`), whose
            context is one categorical variable with C classes: the label.

    ``encoder``, ``decoder``, ``prior`` and ``context`` are the inner VAE's, so code written
    for a :class:`~vaelab.model.VAE` (checks, evaluation, generation) reads them alike. The
    label travels as the raw context c ``[B, 1]`` of class ids (as floats).
    """

    def __init__(self, classifier: nn.Module, vae: VAE) -> None:
        super().__init__()
        ctx = vae.context
        if ctx is None or len(ctx.variables) != 1 or ctx.variables[0].kind != "categorical":
            raise VaelabError("the semi-supervised model (m2) needs an inner VAE conditioned on one categorical label")
        self.classifier = classifier
        self.vae = vae
        self.classes = ctx.variables[0].classes

    # --- the parts, as a VAE has them -------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """q(z|x, y)."""
        return self.vae.encoder

    @property
    def decoder(self) -> nn.Module:
        """p(x|y, z)."""
        return self.vae.decoder

    @property
    def prior(self) -> nn.Module:
        """p(z), the same for every y."""
        return self.vae.prior

    @property
    def context(self) -> ContextEncoder:
        """The label's encoder: class ids ``[B, 1]`` -> features ``[B, C]`` (or an embedding)."""
        assert self.vae.context is not None
        return self.vae.context

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.vae.x_shape

    # --- the label ------------------------------------------------------------------------
    @property
    def log_prior_y(self) -> float:
        """log p(y) = -log C for every class."""
        return -math.log(self.classes)

    def classify(self, x: Tensor) -> Categorical:
        """q(y|x) for a batch ``[B, *x_shape]``: batch ``[B]``, C classes."""
        return Categorical(logits=self.classifier(x), validate_args=False)

    def _predicted(self, x: Tensor) -> Tensor:
        """argmax_y q(y|x) as a label column ``[B, 1]``."""
        return self.classify(x).probs.argmax(-1).unsqueeze(-1).to(x.dtype)

    # --- the VAE interface ----------------------------------------------------------------
    def log_weights(self, x: Tensor, k: int = 1, c: Tensor | None = None) -> Tensor:
        """Importance log weights ``[K, B]`` over (y, z) (c None) or over z given y = c.

        c None: y_k ~ q(y|x), z_k ~ q(z|x, y_k),
            log w_k = log p(x|y_k, z_k) + log p(z_k) + log p(y_k) - log q(z_k|x, y_k) - log q(y_k|x);
        c ``[B, 1]``: log w_k = log p(x, y=c, z_k) - log q(z_k|x, y=c).

        For evaluation: the draw of y is not reparameterized, so these weights carry no
        gradient for the classifier's choice of y (training uses :meth:`loss`).
        """
        if c is not None:
            return self.vae.log_weights(x, k, c) + self.log_prior_y  # [K, B]
        b = x.shape[0]
        q_y = self.classify(x)  # batch [B]
        y = q_y.sample((k,))  # [K, B]
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])  # [K B, *x_shape]
        log_w = self.vae.log_weights(x_rep, 1, y.reshape(k * b, 1).to(x.dtype))  # [1, K B]
        return log_w.reshape(k, b) + self.log_prior_y - q_y.log_prob(y)  # [K, B]

    def encode(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z|x, y) with y = c, or (c None) y = argmax q(y|x)."""
        return self.vae.encode(x, self._predicted(x) if c is None else c)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Distribution:
        """p(x|y, z) for latents ``[..., B, D]`` and labels c ``[B, 1]`` (required)."""
        if c is None:
            raise VaelabError("the semi-supervised model (m2) decodes given a label: give c, the class ids as a "
                              "column [B, 1]")
        return self.vae.decode(z, c)

    def prior_distribution(self, c: Tensor | None = None) -> Distribution:
        """p(z): batch ``[]``, event ``[D]``, the same whatever c is (p(z) does not depend on y)."""
        return self.vae.prior()

    def label_prior(self) -> Categorical:
        """p(y), uniform over the C classes."""
        logits = torch.zeros(self.classes, device=next(self.parameters()).device)
        return Categorical(logits=logits, validate_args=False)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, c: Tensor | None = None) -> Tensor:
        """``n`` examples ``[n, *x_shape]``: y = c (``[n, 1]`` or ``[1]``), or y ~ p(y) when c is
        None; z ~ p(z); then the decoder's mean (or a draw) of p(x|y, z)."""
        if c is None:
            device = next(self.parameters()).device
            c = torch.randint(self.classes, (n, 1), device=device).float()  # y ~ p(y)
        return self.vae.sample(n, mean=mean, c=c)

    # --- the bounds -----------------------------------------------------------------------
    def labelled_bound(self, x: Tensor, y: Tensor, k: int = 1, kl: KLMethod = "auto") -> ELBO:
        """L(x, y) per example ``[N]`` for class ids y ``[N]``, as ELBO terms:
        reconstruction E_q(z|x,y)[log p(x|y, z)] and kl KL(q(z|x, y) || p(z)) - log p(y)
        (the KL of the point mass at y from p(y) included), so elbo = L(x, y). ``k`` samples
        of z per example."""
        terms = elbo(self.vae.trace(x, k, y.unsqueeze(-1).to(x.dtype)), kl)  # [N] each
        kl_total = terms.kl - self.log_prior_y
        return ELBO(elbo=terms.reconstruction - kl_total, reconstruction=terms.reconstruction, kl=kl_total)

    def _summed_out(self, log_q_y: Tensor, per_class: ELBO) -> ELBO:
        """U(x) from the labelled bounds of every class: ``log_q_y`` ``[B, C]``; ``per_class``
        rows ``[C B]``, class-major (row y B + b is L(x_b, y))."""
        b, classes = log_q_y.shape
        q = log_q_y.exp()  # [B, C]
        rec = per_class.reconstruction.reshape(classes, b).T  # [B, C]
        kl_y = per_class.kl.reshape(classes, b).T  # [B, C], KL_z - log p(y)
        reconstruction = (q * rec).sum(-1)  # [B]
        kl = (q * kl_y).sum(-1) + (q * log_q_y).sum(-1)  # sum_y q (KL_z - log p(y)) - H(q(y|x))
        return ELBO(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)

    def unlabelled_bound(self, x: Tensor, k: int = 1, kl: KLMethod = "auto") -> ELBO:
        """U(x) per example ``[B]``, y summed out exactly: reconstruction
        sum_y q(y|x) E[log p(x|y, z)], kl sum_y q(y|x) KL(q(z|x,y) || p(z)) + KL(q(y|x) || p(y))."""
        log_q_y = self.classifier(x).log_softmax(-1)  # [B, C]
        x_rep, y_rep = self._every_class(x)
        return self._summed_out(log_q_y, self.labelled_bound(x_rep, y_rep, k, kl))

    def _every_class(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x once per class, class-major: ``[C B, *x_shape]`` and their class ids ``[C B]``."""
        b = x.shape[0]
        x_rep = x.repeat(self.classes, *([1] * (x.ndim - 1)))  # [C B, *x_shape]
        y_rep = torch.arange(self.classes, device=x.device).repeat_interleave(b)  # [C B]
        return x_rep, y_rep

    # --- the OwnLoss protocol of vaelab.objectives -----------------------------------------
    def loss(self, batch: Batch, objective: Objective, progress: float = 0.0) -> tuple[Tensor, ELBO]:
        """The training loss of a batch (paper eq. 9, nats per example; see the module
        docstring) and, for logging, each example's bound in batch order: L(x, y) where the
        label is known, U(x) where it is not.

        ``batch.known`` marks the labelled examples (None: all of them when ``batch.c`` is
        given, none when it is None); ``batch.c`` is read at those rows only. Every bound
        takes ``objective.k`` samples of z and ``objective.kl``; the classification term is
        weighted by ``objective.alpha / objective.labelled_share``, ``labelled_share`` being the
        expected share of labelled rows in a batch (:func:`batch_labelled_share`).
        """
        _check_objective(objective)
        x = batch.x
        b = x.shape[0]
        known = self._known(batch)  # [B] bool
        log_q_y = self.classifier(x).log_softmax(-1)  # [B, C]
        y_l = (batch.c[known, 0].long() if batch.c is not None
               else torch.zeros(0, dtype=torch.long, device=x.device))  # [B_l], known rows only
        x_l, x_u = x[known], x[~known]
        n_l = x_l.shape[0]
        x_rep, y_rep = self._every_class(x_u)  # [C B_u, ...]
        # one pass over the labelled rows and every class of the unlabelled ones
        terms = self.labelled_bound(torch.cat([x_l, x_rep]), torch.cat([y_l, y_rep]), objective.k, objective.kl)
        labelled = _rows(terms, slice(0, n_l))  # L(x, y), [B_l]
        unlabelled = self._summed_out(log_q_y[~known], _rows(terms, slice(n_l, None)))  # U(x), [B_u]
        cross_entropy = -log_q_y[known].gather(1, y_l.unsqueeze(-1)).squeeze(-1)  # -log q(y|x), [B_l]
        bound = labelled.elbo.sum() + unlabelled.elbo.sum()
        loss = (-bound + objective.alpha / objective.labelled_share * cross_entropy.sum()) / b

        def in_order(a: Tensor, u: Tensor) -> Tensor:  # [B]: labelled rows from a, the others from u
            out = a.new_empty(b)
            out[known] = a
            out[~known] = u
            return out

        return loss, ELBO(*(in_order(getattr(labelled, key), getattr(unlabelled, key))
                            for key in ("elbo", "reconstruction", "kl")))

    def elbo_terms(self, batch: Batch, k: int = 1, kl: KLMethod = "auto") -> ELBO:
        """The unlabelled bound U(x) per example ``[B]`` and its terms, whatever ``batch.c``
        holds: the bound on log p(x) that validation and evaluation report."""
        return self.unlabelled_bound(batch.x, k, kl)

    @staticmethod
    def _known(batch: Batch) -> Tensor:
        """Which rows of the batch have their label, ``[B]`` bool."""
        b, device = batch.x.shape[0], batch.x.device
        if batch.known is None:
            return torch.full((b,), batch.c is not None, dtype=torch.bool, device=device)
        if batch.c is None and bool(batch.known.any()):
            raise VaelabError("batch: labels are marked known but c is None; give the label column c [B, 1]")
        return batch.known.to(device=device, dtype=torch.bool)

    def extra_repr(self) -> str:
        return f"classes={self.classes}"


def batch_labelled_share(labelled_share: float, batch_size: int, labelled_per_batch: int = 0) -> float:
    """The expected share s of labelled rows in a training batch of ``batch_size`` ordinary rows
    and ``labelled_per_batch`` added labelled rows, when ``labelled_share`` = N_l / N of the
    data are labelled: s = (B N_l / N + L) / (B + L) (``labelled_share`` itself when L = 0).

    It is the ``Objective.labelled_share`` that keeps the classification term at alpha
    mean_labelled(-log q(y|x)) in expectation (module docstring, "Labelled rows in every batch").

    Example:
        >>> round(batch_labelled_share(0.025, 128, 32), 4)   # 100 labels among 4,000, 32 added rows
        0.22
    """
    if not 0 < labelled_share <= 1 or batch_size < 1 or labelled_per_batch < 0:
        raise VaelabError(f"batch_labelled_share: needs 0 < labelled_share <= 1, batch_size >= 1 and "
                          f"labelled_per_batch >= 0, got {labelled_share}, {batch_size}, {labelled_per_batch}")
    if labelled_per_batch == 0:
        return labelled_share
    return (batch_size * labelled_share + labelled_per_batch) / (batch_size + labelled_per_batch)


def _check_objective(objective: Objective) -> None:
    """Refuse the settings M2's bound does not have (a one-line VaelabError)."""
    off = [f"{name} {value!r}" for name, value, plain in (
        ("objective", objective.kind, "elbo"), ("estimator", objective.estimator, "standard"),
        ("beta", objective.beta, 1.0), ("warmup", objective.warmup, 0.0), ("free_bits", objective.free_bits, 0.0),
    ) if value != plain]
    if off:
        raise VaelabError(f"the semi-supervised model (m2) trains its own bound (Kingma et al. 2014, eq. 9); "
                          f"{', '.join(off)} is not supported: use objective elbo, estimator standard, beta 1, "
                          "warmup 0 and free_bits 0")


def build_m2(spec: ModelSpec) -> SemiSupervisedVAE:
    """M2 as ``spec`` describes it (family ``"m2"``; its context is the label alone): the
    classifier is the spec's network with C outputs, the rest the spec's parts conditioned on
    the label, with a prior that must not depend on it."""
    label = spec.label()
    if spec.family != "m2" or label is None or len(spec.context) != 1:
        raise VaelabError("build_m2 needs a model spec of family 'm2' conditioned on the label alone")
    if registry.get("prior", spec.prior.name).conditional_only:
        raise VaelabError(f"prior {spec.prior.name!r} depends on the label, but M2's p(z) must not; use prior normal or mog")
    net = registry.get("net", spec.net.name)
    classifier = net.build("encoder", spec.x_shape, label.classes, 0, **spec.net.options)  # [B, C] logits
    encoder, decoder, prior = build_parts(spec)
    model = SemiSupervisedVAE(classifier, VAE(encoder, decoder, LabelFreePrior(prior), ContextEncoder(spec.context)))
    try:
        model.prior_distribution()
    except (ValueError, TypeError):  # e.g. the VampPrior, whose components q(z|u, y) need the label
        raise VaelabError(f"prior {spec.prior.name!r} depends on the label, but M2's p(z) must not; "
                          "use prior normal or mog") from None
    return model
