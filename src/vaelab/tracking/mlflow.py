"""MLflow: one MLflow run per vaelab run, through MLflow's own client (``MlflowClient``).

    vaelab train --log mlflow --mlflow-uri http://127.0.0.1:5000
    vaelab.load("runs:/<run_id>")             # the run back, from MLflow's artifact store

The run goes to the experiment named by ``$MLFLOW_EXPERIMENT_NAME``, else ``vaelab``; its
name is the run folder's. It holds:

- params: every setting of ``config.json`` (lists comma-separated);
- metrics per epoch (step = epoch, sent by MLflow's asynchronous logging queue, so training
  never waits for the server): the ``metrics.jsonl`` record under its own keys
  (``train_elbo``, ``val_elbo``, ``train_reconstruction``, ... in nats per example), plus
  ``kl_weight`` and ``lr``;
- at the end (step = the last epoch): the test evaluation's figures as ``test_<key>``
  (``test_elbo``, ``test_nll``, ``test_log_px``, ... every number of ``eval.json``'s top level);
- artifacts under ``run/``: the run folder's files (``config.json``, ``model.json``, the best
  weights ``model.safetensors``, ``metrics.jsonl``, ``eval.json``, the figures, and
  ``manifest.json`` or ``report.html`` when present), not the resume checkpoint.

The MLflow run's id is kept in ``RUN/mlflow.json``; ``vaelab train --resume RUN`` continues the
same MLflow run. :func:`download_run` (what :func:`vaelab.load` calls for a ``runs:/`` or
``mlflow-artifacts:/`` URI) fetches ``run/`` into the cache folder (``$VAELAB_CACHE`` or
``~/.cache/vaelab``, under ``mlflow/``) and loads it as any run folder, from the tracking
server MLflow is set to (``mlflow.set_tracking_uri`` or ``$MLFLOW_TRACKING_URI``).

An HTTP tracking URI is reached before anything is written (:meth:`MLflowLogger.connect`); a
server that does not answer is a one-line error, not a failure at the end of training.
A server that goes away during training costs MLflow's own retries once (about 4 minutes by
default: ``$MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``$MLFLOW_HTTP_REQUEST_TIMEOUT``); the logger is
then dropped with a warning and training goes on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from ..config import TrainConfig
from ..errors import VaelabError
from ..spec import ModelSpec
from ..training.checkpoint import atomic_write_text
from . import MLFLOW_SCHEMES, Finished, _first_line, require

__all__ = ["MLflowLogger", "download_run", "check_reachable", "RECORD", "ARTIFACT_DIR", "EXPERIMENT"]

RECORD = "mlflow.json"  # in the run folder: tracking URI, experiment and run id
ARTIFACT_DIR = "run"  # the run folder's files, as artifacts
EXPERIMENT = "vaelab"  # unless $MLFLOW_EXPERIMENT_NAME names another
SKIPPED = "checkpoint"  # the resume state (checkpoint*.safetensors): large, and not needed to load the model
PARAM_MAX = 6000  # MLflow's limit on a parameter's value (characters)
TIMEOUT_S = 5.0


def check_reachable(uri: str) -> None:
    """An HTTP(S) tracking URI answers (any HTTP status counts), else a one-line VaelabError.

    Other URIs (``sqlite:///``, folders, ``databricks``) are reached by MLflow's client."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # it answered (a server or proxy without /health)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise VaelabError(f"the MLflow tracking server at {uri} cannot be reached ({reason}); start it "
                          "('mlflow server --port ...') or fix --mlflow-uri") from None


F = TypeVar("F", bound=Callable[..., Any])


def _marks_broken(method: F) -> F:
    """A call that fails marks the logger broken: its close() then does not call the server
    again (an unreachable server costs MLflow's own retries, minutes, once, not twice)."""
    @functools.wraps(method)
    def call(self: "MLflowLogger", *args: Any) -> Any:
        try:
            return method(self, *args)
        except BaseException:
            self.broken = True
            raise

    return call  # type: ignore[return-value]


def _params(config: TrainConfig) -> dict[str, str]:
    out = {}
    for key, value in config.to_dict().items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        out[key] = text[:PARAM_MAX]
    return out


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class MLflowLogger:
    """Logs one vaelab run as one MLflow run (see the module docstring)."""

    name = "mlflow"

    def __init__(self, uri: str = "") -> None:
        self.uri = uri
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.last_epoch = 0
        self.broken = False
        self.pending: list[Any] = []  # the epochs' asynchronous log_batch operations

    def connect(self) -> None:
        mlflow = require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = self.uri or mlflow.get_tracking_uri()  # MLflow's own default: $MLFLOW_TRACKING_URI, ./mlflow.db
        check_reachable(self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(name)
            self.experiment_id = (experiment.experiment_id if experiment is not None
                                  else self.client.create_experiment(name))
        except Exception as error:  # noqa: BLE001 - any failure of the store, in one line
            if "maintenance mode" in str(error) or "MLFLOW_ALLOW_FILE_STORE" in str(error):  # MLflow 3.x on a folder
                raise VaelabError(f"MLflow at {self.uri}: this MLflow keeps its folder store (./mlruns style) switched "
                                  "off; give --mlflow-uri sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true to "
                                  "use the folder") from None
            raise VaelabError(f"MLflow at {self.uri} cannot be used ({_first_line(error)}); fix --mlflow-uri") from None

    @_marks_broken
    def start(self, config: TrainConfig, spec: ModelSpec, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        record = run_dir / RECORD
        previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
        if previous is not None and previous.get("tracking_uri") == self.uri:  # a resumed run: the same MLflow run
            self.run_id = str(previous["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"vaelab.run_dir": str(run_dir.resolve()), "vaelab.data": config.data, "vaelab.family": spec.family}
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        atomic_write_text(record, json.dumps({"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                                              "run_id": self.run_id, "artifact_uri": run.info.artifact_uri,
                                              "load": f"runs:/{self.run_id}"}, indent=2))
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    @_marks_broken
    def epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(record["epoch"])
        now = int(time.time() * 1000)
        values = _numbers({k: v for k, v in record.items() if k != "epoch"})
        # asynchronous: MLflow's own queue sends it while training goes on (finish waits for it)
        self.pending.append(self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()],
                                                  synchronous=False))
        self.last_epoch = step

    def _wait(self) -> None:
        """Block until every epoch's metrics have reached the server (raises if one failed)."""
        pending, self.pending = self.pending, []
        for operation in pending:
            if operation is not None:
                operation.wait()

    @_marks_broken
    def finish(self, run: Finished) -> None:
        from mlflow.entities import Metric

        self._wait()
        step = max(self.last_epoch, run.result.epochs_done)
        if run.evaluation is not None:
            now = int(time.time() * 1000)
            values = _numbers(run.evaluation.to_dict(), "test_")
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
        for path in sorted(run.run_dir.iterdir()):
            if path.is_file() and not path.name.startswith((".", SKIPPED)) and not path.name.endswith(".tmp"):
                self.client.log_artifact(self.run_id, str(path), ARTIFACT_DIR)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None and not self.broken:
            run_id, self.run_id = self.run_id, None
            try:
                self._wait()
            finally:
                self.client.set_terminated(run_id, status)


def download_run(uri: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The run folder that an MLflow URI names, downloaded into the cache (once) and returned.

    ``runs:/<run_id>`` means its ``run/`` artifacts (what ``--log mlflow`` uploads);
    ``runs:/<run_id>/<path>`` and ``mlflow-artifacts:/...`` name the folder themselves. The
    tracking server is the one MLflow is set to (``mlflow.set_tracking_uri`` or
    ``$MLFLOW_TRACKING_URI``). What comes back is loaded and validated as any run folder.
    """
    from ..data.idx import cache_dir

    if not uri.startswith(MLFLOW_SCHEMES):
        raise VaelabError(f"'{uri}' is not an MLflow URI; give runs:/<run_id> or mlflow-artifacts:/...")
    mlflow = require("mlflow", "mlflow")
    import mlflow.artifacts

    tracking = mlflow.get_tracking_uri()
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        if not run_id:
            raise VaelabError(f"'{uri}' names no run; give runs:/<run_id> (the id is in RUN/{RECORD})")
        path = path or ARTIFACT_DIR
        uri = f"runs:/{run_id}/{path}"
    key = hashlib.sha256(f"{tracking}|{uri}".encode()).hexdigest()[:16]
    root = cache_dir(cache) / "mlflow"
    target = root / key
    if (target / "config.json").is_file():
        return target
    check_reachable(tracking)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging),
                                                             tracking_uri=tracking))
        except Exception as error:  # noqa: BLE001 - an unknown run, a missing path: one line
            raise VaelabError(f"'{uri}' could not be fetched from MLflow at {tracking} ({_first_line(error)}); "
                              "check the run id and the tracking URI (mlflow.set_tracking_uri or "
                              "$MLFLOW_TRACKING_URI)") from None
        if not local.is_dir():
            raise VaelabError(f"'{uri}' is a file, not a run folder; give the folder (runs:/<run_id>/{ARTIFACT_DIR})")
        if target.exists():
            shutil.rmtree(target)
        os.replace(local, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
