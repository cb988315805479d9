"""Evaluation of a trained model: log-likelihood estimates and ELBO over data sets."""

from .likelihood import DatasetELBO, LogLikelihood, dataset_elbo, log_likelihood

__all__ = ["DatasetELBO", "LogLikelihood", "dataset_elbo", "log_likelihood"]
