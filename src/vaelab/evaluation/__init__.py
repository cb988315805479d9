"""Evaluation of a trained model: log p(x) and the ELBO over data sets, latent health
(active units, I(x;z), collapse) and the approximation/amortization gap split; :func:`evaluate`
gathers them all (``vaelab eval``)."""

from .diagnostics import LatentDiagnostics, kl_per_dimension, latent_diagnostics
from .gaps import InferenceGaps, inference_gaps, optimal_posterior
from .likelihood import DatasetELBO, LogLikelihood, dataset_elbo, log_likelihood
from .suite import EvalSettings, Evaluation, evaluate, format_table

__all__ = ["DatasetELBO", "LogLikelihood", "dataset_elbo", "log_likelihood",
           "LatentDiagnostics", "latent_diagnostics", "kl_per_dimension",
           "InferenceGaps", "inference_gaps", "optimal_posterior",
           "Evaluation", "EvalSettings", "evaluate", "format_table"]
