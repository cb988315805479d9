"""Evaluation of a trained model: log p(x) and the ELBO over data sets, latent health
(active units, I(x;z), collapse) and the approximation/amortization gap split; :func:`evaluate`
gathers them all (``vaelab eval``)."""

from .diagnostics import LatentDiagnostics, LatentSummary, kl_per_dimension, latent_diagnostics
from .gaps import GapSettings, GapSummary, InferenceGaps, inference_gaps, optimal_posterior
from .likelihood import DatasetELBO, LogLikelihood, dataset_elbo, log_likelihood
from .settings import DEFAULTS
from .suite import EvalSettings, Evaluation, EvaluationSummary, PerExample, evaluate, format_table

__all__ = ["DatasetELBO", "LogLikelihood", "dataset_elbo", "log_likelihood",
           "LatentDiagnostics", "LatentSummary", "latent_diagnostics", "kl_per_dimension",
           "InferenceGaps", "GapSummary", "GapSettings", "inference_gaps", "optimal_posterior",
           "Evaluation", "EvaluationSummary", "DEFAULTS", "PerExample", "EvalSettings", "evaluate", "format_table"]
