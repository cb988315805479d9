"""Posteriors, priors and likelihoods: ``nn.Module``s whose ``forward`` returns a distribution.

==================  ==========================================  ==============================
part                class                                       build_vae / CLI name
==================  ==========================================  ==============================
q(z|x)              :class:`GaussianEncoder`                    posterior ``gaussian``
                    :class:`FullCovarianceEncoder`              posterior ``full-gaussian``
                    :class:`PlanarFlowEncoder`                  posterior ``planar``
                    :class:`IAFEncoder`                         posterior ``iaf``
p(z)                :class:`StandardNormalPrior`                prior ``normal``
                    :class:`GaussianMixturePrior`               prior ``mog``
                    :class:`VampPrior`                          prior ``vamp``
p(z|c)              :class:`ConditionalGaussianPrior`           prior ``conditional``
p(x|z)              :class:`BernoulliDecoder`                   likelihood ``bernoulli``
                    :class:`ContinuousBernoulliDecoder`         likelihood ``continuous-bernoulli``
                    :class:`GaussianDecoder`                    likelihood ``gaussian``
                    :class:`LaplaceDecoder`                     likelihood ``laplace``
                    :class:`LogisticMixtureDecoder`             likelihood ``logistic-mixture``
                    :class:`MixedDecoder`                       likelihood ``mixed`` (a table)
p(x|z, l)           :class:`PoissonDecoder`                     likelihood ``poisson``
(counts)            :class:`NegativeBinomialDecoder`            likelihood ``negative-binomial``
                    :class:`ZINBDecoder`                        likelihood ``zinb``
==================  ==========================================  ==============================

Each registers itself in :mod:`vaelab.registry` (name, options, support), which the CLI,
:func:`vaelab.build.build_model` and the tests read. Every module takes an optional context
``c`` (``encoder(x, c)``, ``decoder(z, c)``, ``prior(c)``) for conditional models.
"""

from .counts import LibraryCounts, NegativeBinomialDecoder, PoissonDecoder, ZeroInflatedNegativeBinomial, ZINBDecoder
from .flows import IAFEncoder, InverseAutoregressiveFlow, PlanarFlow, PlanarFlowEncoder
from .likelihoods import (
    BernoulliDecoder,
    ContinuousBernoulliDecoder,
    Decoder,
    GaussianDecoder,
    Grid,
    LaplaceDecoder,
    LocationScaleDecoder,
    LogisticMixtureDecoder,
)
from .logistic import DiscretizedLogisticMixture, RGBLogisticMixture
from .mixed import MixedDecoder
from .posteriors import FullCovarianceEncoder, GaussianEncoder, diagonal_gaussian
from .priors import ConditionalGaussianPrior, GaussianMixturePrior, StandardNormalPrior, VampPrior

__all__ = [
    "BernoulliDecoder",
    "ConditionalGaussianPrior",
    "Grid",
    "ContinuousBernoulliDecoder",
    "Decoder",
    "DiscretizedLogisticMixture",
    "RGBLogisticMixture",
    "FullCovarianceEncoder",
    "GaussianDecoder",
    "GaussianEncoder",
    "GaussianMixturePrior",
    "IAFEncoder",
    "InverseAutoregressiveFlow",
    "LaplaceDecoder",
    "LibraryCounts",
    "NegativeBinomialDecoder",
    "PoissonDecoder",
    "ZeroInflatedNegativeBinomial",
    "ZINBDecoder",
    "LocationScaleDecoder",
    "LogisticMixtureDecoder",
    "MixedDecoder",
    "PlanarFlow",
    "PlanarFlowEncoder",
    "StandardNormalPrior",
    "VampPrior",
    "diagonal_gaussian",
]
