"""Experiment tracking: a training run reported to TensorBoard and MLflow, by their own libraries.

``vaelab train --log tensorboard,mlflow`` (``TrainConfig.log``) feeds every epoch's record to
each logger asked for, then, once the run folder is complete, its evaluation, figures and
files. A logger is the small protocol :class:`Logger`:

    connect()                       before anything is written: the package is importable, the
                                    MLflow server answers (else a one-line VaelabError)
    start(config, spec, run_dir)    the run folder exists; training starts
    epoch(record)                   after each epoch: the metrics.jsonl record, plus
                                    ``kl_weight`` and ``lr`` (:func:`epoch_record`)
    finish(run)                     the trained model, its evaluation and run folder (:class:`Finished`)
    close(status)                   training ended otherwise ("FAILED", "KILLED")

Each tracker is an optional extra (``pip install 'vaelab[tensorboard]'``, ``'vaelab[mlflow]'``);
nothing here imports it unless its logger is asked for.

Logging never kills a run: after :meth:`Tracking.start`, a logger that fails is reported in
one warning line and dropped, and the run folder stays complete.

The KL weight logged per epoch is the one of the epoch's last step,
beta_t = beta min(1, t / warmup) at t = epoch (:func:`vaelab.objectives.kl_weight`); the
learning rate is the one the epoch trained with (the setting, halved by each NaN recovery).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from ..config import LOGGERS, TrainConfig
from ..errors import VaelabError, printable
from ..objectives import kl_weight
from ..spec import ModelSpec

if TYPE_CHECKING:
    from torch import Tensor

    from ..context import Batch
    from ..evaluation.summary import EvaluationSummary
    from ..runs import TrainedModel
    from ..training.loop import FitResult

__all__ = ["Logger", "Finished", "Tracking", "make_loggers", "require", "epoch_record", "is_mlflow_uri",
           "MLFLOW_SCHEMES", "LOGGERS"]

MLFLOW_SCHEMES = ("runs:/", "mlflow-artifacts:/")  # what vaelab.load fetches from MLflow


def is_mlflow_uri(run: Any) -> bool:
    """Whether ``run`` names an MLflow run or artifact folder (``runs:/<run_id>``, ``mlflow-artifacts:/...``)."""
    return isinstance(run, str) and run.startswith(MLFLOW_SCHEMES)


def require(module: str, extra: str) -> ModuleType:
    """Import an optional package, or a one-line VaelabError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VaelabError(f"--log {extra} needs the optional package '{module.split('.')[0]}': "
                          f"pip install 'vaelab[{extra}]'") from None


@dataclass(frozen=True)
class Finished:
    """A finished training run as the loggers see it.

    ``test`` is the test set as the model scores it (with its context c for a conditional
    model), ``labels`` its class labels (or None), ``contexts`` the context columns to
    generate with (``[N_test, P]``; None for a model that generates without one).
    """

    model: TrainedModel
    result: FitResult
    evaluation: EvaluationSummary | None
    test: Batch
    labels: Tensor | None
    contexts: Tensor | None

    @property
    def run_dir(self) -> Path:
        return Path(self.model.run_dir)


class Logger(Protocol):
    """One experiment tracker fed by a training run (see the module docstring)."""

    name: str

    def connect(self) -> None: ...
    def start(self, config: TrainConfig, spec: ModelSpec, run_dir: Path) -> None: ...
    def epoch(self, record: dict[str, Any]) -> None: ...
    def finish(self, run: Finished) -> None: ...
    def close(self, status: str) -> None: ...


def epoch_record(record: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """The loop's per-epoch record with the KL weight of its last step and the learning rate."""
    return {**record, "kl_weight": kl_weight(float(record["epoch"]), config.beta, config.warmup),
            "lr": record.get("lr", config.lr)}  # the loop's (lowered by NaN recoveries); older records: the setting


def _warn(message: str) -> None:
    print(f"warning: {printable(message)}", file=sys.stderr, flush=True)  # a tracker's error may hold any name


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


class Tracking:
    """The loggers of one run, called together; after :meth:`start` a failing logger is
    reported in one warning line and dropped, never stopping the run."""

    def __init__(self, loggers: Sequence[Logger], config: TrainConfig, warn: Callable[[str], None] = _warn) -> None:
        self.loggers = list(loggers)
        self.config = config
        self.warn = warn

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, what: str, call: Callable[[Logger], None]) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as error:  # noqa: BLE001 - a tracker must never stop a run
                self.loggers.remove(logger)
                self.warn(f"{logger.name} logging failed at {what} ({_first_line(error)}); the run goes on without it")
                try:
                    logger.close("FAILED")
                except Exception:  # noqa: BLE001
                    pass

    def start(self, spec: ModelSpec, run_dir: Path) -> None:
        self._each("the start", lambda lg: lg.start(self.config, spec, run_dir))

    def epoch(self, record: dict[str, Any]) -> None:
        full = epoch_record(record, self.config)
        self._each(f"epoch {record['epoch']}", lambda lg: lg.epoch(full))

    def finish(self, run: Finished) -> None:
        self._each("the end", lambda lg: lg.finish(run))
        self.loggers = []

    def close(self, status: str) -> None:
        """Training ended without finishing (``"FAILED"``: NaN or an error; ``"KILLED"``: Ctrl-C)."""
        self._each("the end", lambda lg: lg.close(status))
        self.loggers = []


def make_loggers(config: TrainConfig, warn: Callable[[str], None] = _warn) -> Tracking:
    """The loggers ``config.log`` asks for, connected: a missing package or an MLflow server
    that cannot be reached is a one-line VaelabError here, before anything is written."""
    loggers: list[Logger] = []
    for name in config.log:
        if name == "tensorboard":
            from .tensorboard import TensorBoardLogger

            loggers.append(TensorBoardLogger())
        elif name == "mlflow":
            from .mlflow import MLflowLogger

            loggers.append(MLflowLogger(config.mlflow_uri))
        else:  # TrainConfig validates the names
            raise VaelabError(f"unknown logger {name!r}; choose from: {', '.join(LOGGERS)}")
    for logger in loggers:
        logger.connect()
    return Tracking(loggers, config, warn)
