"""Posteriors, priors and likelihoods: ``nn.Module``s whose ``forward`` returns a distribution."""

from .likelihoods import BernoulliDecoder, Decoder, GaussianDecoder
from .posteriors import GaussianEncoder, diagonal_gaussian
from .priors import StandardNormalPrior

__all__ = [
    "BernoulliDecoder",
    "Decoder",
    "GaussianDecoder",
    "GaussianEncoder",
    "StandardNormalPrior",
    "diagonal_gaussian",
]
