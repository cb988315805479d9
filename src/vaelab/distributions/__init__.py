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
p(x|z)              :class:`BernoulliDecoder`                   likelihood ``bernoulli``
                    :class:`ContinuousBernoulliDecoder`         likelihood ``continuous-bernoulli``
                    :class:`GaussianDecoder`                    likelihood ``gaussian``
                    :class:`LaplaceDecoder`                     likelihood ``laplace``
                    :class:`LogisticMixtureDecoder`             likelihood ``logistic-mixture``
==================  ==========================================  ==============================
"""

from .flows import IAFEncoder, InverseAutoregressiveFlow, PlanarFlow, PlanarFlowEncoder
from .likelihoods import (
    BernoulliDecoder,
    ContinuousBernoulliDecoder,
    Decoder,
    GaussianDecoder,
    LaplaceDecoder,
    LocationScaleDecoder,
    LogisticMixtureDecoder,
)
from .logistic import DiscretizedLogisticMixture
from .posteriors import FullCovarianceEncoder, GaussianEncoder, diagonal_gaussian
from .priors import GaussianMixturePrior, StandardNormalPrior, VampPrior

__all__ = [
    "BernoulliDecoder",
    "ContinuousBernoulliDecoder",
    "Decoder",
    "DiscretizedLogisticMixture",
    "FullCovarianceEncoder",
    "GaussianDecoder",
    "GaussianEncoder",
    "GaussianMixturePrior",
    "IAFEncoder",
    "InverseAutoregressiveFlow",
    "LaplaceDecoder",
    "LocationScaleDecoder",
    "LogisticMixtureDecoder",
    "PlanarFlow",
    "PlanarFlowEncoder",
    "StandardNormalPrior",
    "VampPrior",
    "diagonal_gaussian",
]
