"""Evaluation of a trained model: log p(x) and the ELBO over data sets (importance sampling
from the encoder or a defensive mixture, annealed importance sampling, the BDMC bracket, the
Pareto k-hat of the weights), latent health (active units, I(x;z), graded collapse) and the
approximation/amortization gap split; :func:`evaluate` gathers them all (``vaelab eval``)."""

from .ais import AISResult, BDMCResult, ais, bdmc
from .diagnostics import LatentDiagnostics, LatentSummary, collapse_verdict, kl_per_dimension, latent_diagnostics
from .gaps import GapSettings, GapSummary, InferenceGaps, gap_rows, inference_gaps, optimal_posterior
from .likelihood import DatasetELBO, EncoderDraws, LogLikelihood, dataset_elbo, log_likelihood
from .proposals import DefensiveMixture, laplace_posterior, mixture_proposal
from .psis import pareto_khat
from .settings import DEFAULTS, EvalSettings
from .suite import Evaluation, evaluate, format_table
from .summary import AISSummary, BDMCSummary, EstimateSummary, EvaluationSummary, PerExample

__all__ = ["DatasetELBO", "EncoderDraws", "LogLikelihood", "dataset_elbo", "log_likelihood",
           "AISResult", "BDMCResult", "ais", "bdmc", "pareto_khat",
           "DefensiveMixture", "laplace_posterior", "mixture_proposal",
           "LatentDiagnostics", "LatentSummary", "latent_diagnostics", "kl_per_dimension", "collapse_verdict",
           "InferenceGaps", "GapSummary", "GapSettings", "inference_gaps", "optimal_posterior", "gap_rows",
           "Evaluation", "EvaluationSummary", "EstimateSummary", "AISSummary", "BDMCSummary", "DEFAULTS",
           "PerExample", "EvalSettings", "evaluate", "format_table"]
