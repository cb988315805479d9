"""vaelab: Bayesian inference over latent variables with Variational Autoencoders.

Quick start::

    import vaelab
    model, _ = vaelab.train(epochs=10)            # the classic VAE on 4,000 real MNIST digits
    model = vaelab.load("runs/mnist5k-...")       # or load a run folder
    q = model.encode(x)                           # q(z|x): q.mean, q.stddev
    x_new = model.sample(16)                      # decoded from z ~ p(z)
    model.log_likelihood(x, k=1000).mean          # importance-sampled log p(x), nats

The building blocks (:mod:`vaelab.distributions`, :mod:`vaelab.nets`, :class:`VAE`,
:mod:`vaelab.objectives`, :mod:`vaelab.evaluation`) compose into models of your own.
"""

from .build import build_vae
from .config import TrainConfig
from .data import DataSplits, load_data
from .errors import VaelabError
from .evaluation import dataset_elbo, log_likelihood
from .model import VAE, Trace
from .objectives import ELBO, Objective, elbo, iwae, kl_term
from .runs import TrainedModel, load, train

__all__ = [
    "VAE",
    "Trace",
    "ELBO",
    "Objective",
    "elbo",
    "iwae",
    "kl_term",
    "log_likelihood",
    "dataset_elbo",
    "build_vae",
    "TrainConfig",
    "DataSplits",
    "load_data",
    "VaelabError",
    "TrainedModel",
    "load",
    "train",
]
__version__ = "0.1.0"
