"""Hyperparameter sweeps on Optuna: ``vaelab sweep`` (the optional extra ``vaelab[optuna]``).

A sweep is an Optuna study (Akiba et al. 2019, "Optuna: a next-generation hyperparameter
optimization framework") whose trials are ordinary vaelab runs:

- the **search space** is a TOML or JSON file with one table per setting (:class:`SearchSpace`)::

      [lr]                              # a float, sampled on a log scale
      low = 1e-4
      high = 3e-3
      log = true
      [latent_dim]                      # an int (the setting's own type decides)
      low = 2
      high = 32
      [hidden]                          # widths: one layer of 16..512 units, or choices of lists
      choices = [[200], [400], [400, 400]]
      [posterior]                       # any part, or any setting with a fixed set of values
      choices = ["gaussian", "iaf"]

  Keys are settings of ``vaelab train`` (TrainConfig fields or part options); the keys of a
  table are ``low``/``high`` (with ``log``, ``step``, and ``layers`` for widths) or ``choices``.
- every trial trains with :func:`vaelab.train` into ``OUT/STUDY-NNN`` (NNN: Optuna's trial
  number) with the sampled settings over the fixed ones; an ``on_epoch`` hook reports the
  epoch's **validation** value to Optuna, which may prune the trial there
  (:class:`optuna.TrialPruned`); the run folder keeps the checkpoint of that epoch and its
  ``sweep.json`` says ``pruned``. The trial's value is the validation value at the run's best
  epoch (whose weights the folder keeps), so the study ranks exactly the saved models.
- the objective, maximised: ``elbo``, the validation ELBO the training loop logs, or ``iwae``,
  the importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2016) on the
  validation set with K samples and a fixed seed, computed from each epoch's checkpoint.
  The test set is never looked at to choose: only the best trial is evaluated on it at the end.
- the study lives in a database (``--storage``: SQLite or any SQLAlchemy URL), opened with
  Optuna's ``load_if_exists``, so several processes (or machines) work on one study at once
  and a sweep resumes after an interruption. Its space, objective and fixed settings are
  stored in the study's user attributes; opening it with others is refused.
- ``trials`` is the study's target of **finished** (complete + pruned) trials, not a number to
  add: a resumed sweep runs the remaining ones. Every process stops once the study holds that
  many; a process that sees the rest already running in other processes waits for them.
- **interruption**: every running trial writes a heartbeat to the database (Optuna's
  ``heartbeat_interval``). A trial whose process died (killed, machine lost) stops beating; any
  process working on the study marks it ``FAIL`` once its heartbeat is older than the grace
  period (3 heartbeats) and enqueues a new trial with the same parameters
  (``study.enqueue_trial``); a trial stopped by Ctrl-C is marked ``FAIL`` by Optuna at once and
  enqueued the same way. So no sampled setting is lost, and none runs twice to completion:
  the failed trial keeps its number and folder (``sweep.json``: ``failed``, ``retried_as``).

At the end :func:`sweep` evaluates the best trial on its test set (its ``eval.json``) and
writes a report: the trials, Optuna's history, the per-epoch values with the pruned trials,
and the parameter importances (Optuna's ``get_param_importances``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import inspect
import json
import math
import os
import signal
import socket
import threading
import time
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from . import registry
from .config import TrainConfig
from .errors import VaelabError
from .report.sweep import write_sweep_report
from .run_folder import SWEEP  # in every trial's run folder: study, trial number, state, parameters, value
from .outputs import check_writable
from .training.checkpoint import atomic_write_text

__all__ = ["Param", "SearchSpace", "SweepResult", "sweep", "read_space", "write_sweep_report", "trial_name",
           "require_optuna", "SWEEP", "OBJECTIVES", "SPEED_SETTINGS"]

OBJECTIVES = ("elbo", "iwae")
# settings that change how fast a trial runs or what is done besides it (the final test evaluation,
# experiment trackers), not what it computes: a study may be resumed with others
SPEED_SETTINGS = ("threads", "device", "compile", "precision", "out", "name", "eval_k", "log", "mlflow_uri")
_NOT_SWEPT = ("out", "name", "options")  # set by the sweep itself
_TABLE_KEYS = ("low", "high", "log", "step", "choices", "layers")
MAX_STUDY_NAME = 100  # bytes: STUDY-NNN and the temporary names of its files stay far below 255
MAX_FAILURES = 5  # a process stops after this many failed (NaN) trials in a row


def require_optuna() -> Any:
    """The ``optuna`` module, or a one-line VaelabError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise VaelabError("sweeps need Optuna, which is not installed: pip install 'vaelab[optuna]'") from None
    return optuna


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    """A block in which Optuna's ExperimentalWarning (heartbeats, stale trials) is silent."""
    optuna = require_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """A block that Ctrl-C does not cut short: SIGINT is held until the block ends and then
    handled as usual (a KeyboardInterrupt). The study's database writes made while a trial
    trains go in such blocks: a KeyboardInterrupt raised inside SQLAlchemy can leave a SQLite
    transaction open, and its lock then stalls every later write of the study, the heartbeat
    thread's and the re-enqueue of the interrupted trial, for the 120-s busy timeout (seen in
    CI: a Ctrl-C'd sweep that did not exit; a Ctrl-C at a random moment of a stream of
    ``set_trial_intermediate_value`` calls left the lock held in 2 of 20 tries, in 0 of 30
    inside this block). Outside the main thread, a plain block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if held and callable(previous):
        previous(*held[0])  # Python's default handler raises KeyboardInterrupt


# --------------------------------------------------------------------------- the search space


def _setting_types() -> dict[str, str]:
    """Every sweepable setting and its type name (``int``, ``float``, ``str``, ``bool``, ``list[int]``, ...)."""
    out = {f.name: str(f.type) for f in fields(TrainConfig) if f.name not in _NOT_SWEPT}
    out.update({name: opt.type_name for name, opt in registry.all_options().items()})
    return out


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a setting and its range or choices.

    ``kind`` is ``float`` or ``int`` (``low``..``high``, both included, ``log`` scale, ``step``),
    ``widths`` (a list of ``layers`` layers of one width drawn from ``low``..``high``) or
    ``categorical`` (``choices``; a list value such as ``[400, 400]`` is held by Optuna as the
    string ``"400,400"``, which the setting reads back)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    layers: int = 1
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this setting's value in an Optuna trial (the value as TrainConfig takes it)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind in ("int", "widths"):
            width = trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                      step=1 if self.step is None else int(self.step))
            return [width] * self.layers if self.kind == "widths" else width
        return trial.suggest_categorical(self.name, list(self.choices))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        if self.kind == "widths":
            out["layers"] = self.layers
        return out


def _optuna_value(value: Any) -> Any:
    """A choice as Optuna can store it: lists become comma-separated strings."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def _param(name: str, table: Any, kind_name: str, source: str) -> Param:
    where = f"{source}: {name}"
    if not isinstance(table, dict):
        raise VaelabError(f"{where} must be a table with low/high (and log, step) or choices, got {table!r}")
    unknown = sorted(set(table) - set(_TABLE_KEYS))
    if unknown:
        raise VaelabError(f"{where}: unknown key(s) {', '.join(unknown)}; a range has low, high, log, step "
                          "(and layers for widths), a list of values has choices")
    if "choices" in table:
        if set(table) != {"choices"}:
            raise VaelabError(f"{where}: give either choices or low/high, not both")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise VaelabError(f"{where}: choices is empty; give at least one value, e.g. choices = [...]")
        values = tuple(_optuna_value(c) for c in choices)
        if len(set(map(str, values))) != len(values):
            raise VaelabError(f"{where}: choices repeat a value ({choices!r}); list each once")
        return Param(name, "categorical", choices=values)
    if kind_name not in ("int", "float", "list[int]"):
        raise VaelabError(f"{where} is a {kind_name} setting: give its values as choices = [...], not a range")
    missing = [k for k in ("low", "high") if k not in table]
    if missing:
        raise VaelabError(f"{where}: a range needs low and high (missing {', '.join(missing)})")
    low, high = table["low"], table["high"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numeric or not all(math.isfinite(v) for v in (low, high)):
        raise VaelabError(f"{where}: low and high must be finite numbers, got {low!r} and {high!r}")
    if kind_name in ("int", "list[int]") and not all(float(v).is_integer() for v in (low, high)):
        raise VaelabError(f"{where} is a whole number: low and high must be integers, got {low!r} and {high!r}")
    if not low < high:
        raise VaelabError(f"{where}: empty range [{low}, {high}]; low must be below high (to fix a value, "
                          "pass it after -- as a train option)")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise VaelabError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise VaelabError(f"{where}: a log scale needs low > 0, got {low}")
    step = table.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
        raise VaelabError(f"{where}: step must be a number > 0, got {step!r}")
    if step is not None and log:
        raise VaelabError(f"{where}: give step or log, not both (Optuna samples a log scale without steps)")
    if step is not None and kind_name in ("int", "list[int]") and not float(step).is_integer():
        raise VaelabError(f"{where} is a whole number: step must be a whole number >= 1, got {step!r}")
    layers = table.get("layers", 1)
    if "layers" in table and kind_name != "list[int]":
        raise VaelabError(f"{where}: layers is for network widths (hidden), not for {name}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise VaelabError(f"{where}: layers must be a whole number >= 1, got {layers!r}")
    kind = {"int": "int", "float": "float", "list[int]": "widths"}[kind_name]
    if kind != "float":
        low, high = int(low), int(high)
    return Param(name, kind, low=float(low) if kind == "float" else low, high=float(high) if kind == "float" else high,
                 log=log, step=step, layers=layers)


@dataclass(frozen=True)
class SearchSpace:
    """The settings a sweep varies (:class:`Param` each), read from a TOML or JSON file."""

    params: tuple[Param, ...]
    path: Path | None = field(default=None, compare=False)  # the file it was read from, if any

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], source: str = "space") -> "SearchSpace":
        """Check every key (a setting of ``vaelab train``) and range; a VaelabError names the culprit."""
        if not doc:
            raise VaelabError(f"{source}: the search space is empty; give at least one setting with its range")
        types = _setting_types()
        unknown = sorted(k for k in doc if k not in types)
        if unknown:
            hint = " (the sweep names the run folders itself)" if set(unknown) & set(_NOT_SWEPT) else ""
            raise VaelabError(f"{source}: unknown setting(s) {', '.join(unknown)}{hint}; sweepable settings are the "
                              f"options of 'vaelab train': {', '.join(types)}")
        return cls(tuple(_param(name, table, types[name], source) for name, table in doc.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One point of the space, drawn in ``trial``: settings as TrainConfig takes them."""
        return {p.name: p.suggest(trial) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (also what is stored in the study, to refuse another space later)."""
        return {p.name: p.to_dict() for p in self.params}

    def check(self, fixed: Mapping[str, Any]) -> None:
        """Every end of every range and every choice makes a valid TrainConfig with ``fixed``."""
        from .runs import objective_from

        for p in self.params:
            values = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
            for v in values:
                if p.kind == "widths":
                    v = [int(v)] * p.layers  # type: ignore[arg-type]
                try:
                    objective_from(TrainConfig.from_mapping({**fixed, p.name: v}, source="the search space"))
                except VaelabError as err:
                    raise VaelabError(f"space: {p.name} = {v!r} is not a valid setting here ({err})") from None


def read_space(path: str | Path) -> SearchSpace:
    """A search-space file: TOML (``.toml``) or JSON (``.json``), one table per setting."""
    p = Path(path)
    if not p.is_file():
        raise VaelabError(f"search-space file '{p}' not found")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        doc = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise VaelabError(f"search-space file '{p}' is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                          f"{str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise VaelabError(f"search-space file '{p}' must hold one table per setting")
    return dataclasses.replace(SearchSpace.from_mapping(doc, source=str(p)), path=p)


# --------------------------------------------------------------------------- the trials


def trial_name(study: str, number: int) -> str:
    """The run folder name of trial ``number`` of ``study``."""
    return f"{study}-{number:03d}"


def _mark(run_dir: Path, **values: Any) -> None:
    """Update the trial's ``sweep.json`` in its run folder (written from the trial's first epoch
    on; a trial that stopped before its folder was made has none)."""
    if not run_dir.is_dir():
        return
    path = run_dir / SWEEP
    doc: dict[str, Any] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = {}
    doc.update(values, updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(path, json.dumps(doc, indent=2))


class _ValidationIWAE:
    """The IWAE bound on the validation set, from the checkpoint of the epoch just finished.

    Reads the run's ``model.json`` and ``checkpoint.safetensors`` into a model of its own (the
    training loop's model is not touched); the validation set is the loop's (binarized once
    with the loop's seed when training binarizes); the K samples are drawn under a fixed seed.
    """

    def __init__(self, run_dir: Path, config: TrainConfig, k: int) -> None:
        self.run_dir, self.config, self.k = run_dir, config, k
        self.model: Any = None

    def __call__(self) -> float:
        from .build import build_model
        from .data import binarize, load_data, split_batch
        from .evaluation import log_likelihood
        from .run_folder import CONFIG, SPEC
        from .spec import ModelSpec
        from .training.checkpoint import load_checkpoint
        from .training.loop import CHECKPOINT

        if self.model is None:
            c = self.config
            spec = ModelSpec.from_dict(json.loads((self.run_dir / SPEC).read_text(encoding="utf-8")))
            info = json.loads((self.run_dir / CONFIG).read_text(encoding="utf-8"))["data"]
            data = load_data(c.data, **c.data_options())
            val = split_batch(data, "val", spec.context)
            x = binarize(val.x, torch.Generator().manual_seed(c.seed + 1)) if info.get("binarized") else val.x
            self.model, self.x, self.c = build_model(spec).eval(), x, val.c
        load_checkpoint(self.run_dir / CHECKPOINT, self.model)
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            return float(log_likelihood(self.model, self.x, self.k, c=self.c).mean)


class _Reporter:
    """The ``on_epoch`` hook of one trial: report the epoch's validation value, prune if told."""

    def __init__(self, trial: Any, objective: str, value: Callable[[dict[str, Any]], float], run_dir: Path,
                 about: dict[str, Any]) -> None:
        self.trial, self.objective, self.value, self.run_dir, self.about = trial, objective, value, run_dir, about
        self.values: dict[int, float] = {}

    def __call__(self, record: dict[str, Any]) -> None:
        optuna = require_optuna()
        epoch = int(record["epoch"])
        if not self.values:  # the run folder exists now: say which trial it is
            _mark(self.run_dir, **self.about, state="running")
        v = self.value(record)
        self.values[epoch] = v
        with _ctrl_c_deferred():  # database writes (see there)
            self.trial.report(v, epoch)
            prune = self.trial.should_prune()
        if prune:
            _mark(self.run_dir, state="pruned", epoch=epoch, value=v)
            raise optuna.TrialPruned(f"validation {self.objective} {v:.2f} nats at epoch {epoch}")


@dataclass
class SweepResult:
    """What :func:`sweep` left: the study, its best trial's run folder and value, the report."""

    study: Any  # optuna.Study
    best_run: Path | None
    best_value: float | None
    report: Path | None
    counts: dict[str, int] = field(default_factory=dict)


def _storage(optuna: Any, url: str, heartbeat: int, on_stale: Callable[[Any, Any], None]) -> Any:
    """Optuna's RDB storage at ``url`` with heartbeats (SQLite waits for its lock instead of failing)."""
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Optuna 4.9 renamed the stale-trial callback (the old name warns, and goes in 6.0)
    stale = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
             inspect.signature(optuna.storages.RDBStorage).parameters else "failed_trial_callback")
    for attempt in range(8):
        try:
            with _quiet_experimental():
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                  heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                                  **{stale: on_stale})
        except Exception as err:  # SQLAlchemy: a bad URL, a missing driver, a server that cannot be reached
            text = str(err)
            # two processes making a new database at once: one made the tables as the other tried; again
            if attempt < 7 and any(sign in text for sign in ("already exists", "locked", "UNIQUE constraint failed")):
                time.sleep(0.25 * (attempt + 1))
                continue
            first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
            raise VaelabError(f"--storage {url!r} cannot be opened ({first[:200]}); give an SQLAlchemy URL such as "
                              "sqlite:///sweep.db") from None
    raise AssertionError("unreachable")


def _sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (None for another database); an in-memory or
    nameless SQLite database is refused (its study would vanish with the process)."""
    if not url.startswith("sqlite:"):
        return None
    name = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if name in ("", ":memory:") or name.startswith(":memory:") or "mode=memory" in url:
        raise VaelabError(f"--storage {url!r} is an in-memory database: its study would be lost when this process "
                          "ends and could be neither resumed nor shared; give a file, e.g. sqlite:///sweep.db")
    return Path(name.split("?")[0]).expanduser()


def _comparable(fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed settings that change what a trial computes (not how fast), as JSON."""
    return {k: v for k, v in sorted(fixed.items()) if k not in SPEED_SETTINGS}


def _check_study(study: Any, name: str, attrs: dict[str, Any]) -> None:
    """Store the sweep's definition in a new study; refuse an existing study defined otherwise."""
    stored = study.user_attrs
    if not stored.get("vaelab"):
        if study.trials:
            raise VaelabError(f"study {name!r} exists and was not made by vaelab sweep; choose another --study")
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return
    for key, what in (("space", "another search space"), ("objective", "another objective"),
                      ("fixed", "other fixed train settings")):
        old, new = stored.get(key), attrs[key]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            shown = "; ".join(f"{k}: {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} here"
                              for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        else:
            shown = f"{json.dumps(old)} there"
        raise VaelabError(f"study {name!r} exists with {what} ({shown}); resume it with the same one or choose "
                          "another --study")


def sweep(
    space: SearchSpace,
    trials: int,
    *,
    study: str = "sweep",
    storage: str | None = None,
    objective: str = "elbo",
    objective_k: int = 50,
    out: str | Path = "runs",
    prune: bool = True,
    fixed: Mapping[str, Any] | None = None,
    heartbeat: float = 10,
    report: str | Path | None = None,
    evaluate_best: bool = True,
    pruner: Any = None,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or resume, or join) the study ``study`` until it holds ``trials`` finished trials.

    Args:
        space: what to vary (:func:`read_space`).
        trials: the target number of finished (complete or pruned) trials of the whole study.
        storage: an SQLAlchemy URL (default ``sqlite:///OUT/sweep.db``).
        objective: ``elbo`` (validation ELBO) or ``iwae`` (validation IWAE bound, ``objective_k`` samples).
        out: the folder of the trials' run folders (``OUT/STUDY-NNN``).
        prune: stop poor trials early (Optuna's MedianPruner over the per-epoch values).
        fixed: train settings common to every trial (a flat TrainConfig mapping).
        heartbeat: seconds between a running trial's heartbeats; a trial silent for three is stale.
        report: the HTML report (default ``OUT/STUDY.html``; ``""``: none).
        evaluate_best: evaluate the best trial on its test set (``eval.json``) at the end.
        pruner: an Optuna pruner instead of the one ``prune`` chooses.

    Example::

        >>> from vaelab.sweep import read_space, sweep
        >>> result = sweep(read_space("space.toml"), 20, fixed={"data": "mnist5k", "epochs": 10})
        >>> result.best_run, result.best_value             # the best trial's run folder, its validation ELBO
    """
    optuna = require_optuna()
    from .runs import TrainingStopped, load, train, write_eval

    if objective not in OBJECTIVES:
        raise VaelabError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise VaelabError(f"--trials must be a whole number >= 1, got {trials!r}")
    if objective_k < 1:
        raise VaelabError(f"--objective-k must be >= 1, got {objective_k}")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)) or not heartbeat >= 1:
        raise VaelabError(f"--heartbeat must be at least 1 second, got {heartbeat!r}")
    heartbeat = math.ceil(heartbeat)  # Optuna keeps whole seconds
    if not study or any(ch in study for ch in "/\\") or study.startswith("."):
        raise VaelabError(f"--study {study!r} must be a plain name (it names the run folders)")
    if len(study.encode()) > MAX_STUDY_NAME:
        raise VaelabError(f"--study is {len(study.encode())} bytes long; at most {MAX_STUDY_NAME} (it names the run "
                          "folders and their files)")
    fixed = dict(fixed or {})
    clash = sorted(set(fixed) & set(space.names))
    if clash:
        raise VaelabError(f"{', '.join(clash)} both fixed (after --) and in the search space; give each in one place")
    for key in ("out", "name"):
        if key in fixed:
            raise VaelabError(f"--{key} is set by the sweep (its --out and the trial number); leave it out after --")
    base = TrainConfig.from_mapping(fixed, source="the fixed train settings")  # bad fixed settings fail here
    space.check(fixed)
    out = Path(out)
    url = storage or f"sqlite:///{out / 'sweep.db'}"
    database = _sqlite_file(url)
    report_path = None if report == "" else Path(report) if report is not None else out / f"{study}.html"
    if report_path is not None:  # checked before the first trial trains, never written over an input
        check_writable(report_path, "sweep report",
                       inputs=[f for f in (database, space.path) if f is not None and f.is_file()])

    def folder(number: int) -> Path:
        return out / trial_name(study, number)

    def retry(st: Any, trial: Any) -> None:  # a stale trial (its process died): run its parameters again
        st.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        _mark(folder(trial.number), state="failed", reason="its process stopped (no heartbeat)", retried=True)
        log(f"trial {trial.number} was left running by a process that stopped; marked failed, its parameters "
            "enqueued again")

    db = _storage(optuna, url, heartbeat, retry)
    direction = "maximize"
    if pruner is None:
        pruner = optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "using an existing study" before a refusal
    try:
        st = optuna.create_study(study_name=study, storage=db, direction=direction, pruner=pruner, load_if_exists=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VaelabError(f"study {study!r} in {url} cannot be opened ({first[:200]}); check --storage") from None
    finally:
        optuna.logging.set_verbosity(verbosity)
    if st.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise VaelabError(f"study {study!r} minimises; vaelab sweeps maximise a bound: choose another --study")
    attrs = {"vaelab": True, "space": space.to_dict(), "objective": {"name": objective, "k": objective_k},
             "fixed": _comparable({k: base.to_dict()[k] for k in fixed})}
    _check_study(st, study, attrs)

    def run_trial(trial: Any) -> float:
        params = space.suggest(trial)
        run_dir = folder(trial.number)
        with _ctrl_c_deferred():  # database writes
            trial.set_user_attr("run", str(run_dir))
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        about = dict(study=study, trial=trial.number, params=params, objective=objective,
                     storage=url if "@" not in url else "(a database URL)")
        config = TrainConfig.from_mapping({**fixed, **params, "out": str(out), "name": trial_name(study, trial.number)},
                                          source=f"trial {trial.number}")
        about["params"] = {k: config.to_dict()[k] for k in params}  # as the run's config.json has them
        if objective == "iwae":
            iwae = _ValidationIWAE(run_dir, config, objective_k)
            value: Callable[[dict[str, Any]], float] = lambda record: iwae()
        else:
            value = lambda record: float(record["val_elbo"])
        reporter = _Reporter(trial, objective, value, run_dir, about)
        log(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        try:
            _, result = train(config, progress=False, log=lambda m: None, on_epoch=reporter)
        except KeyboardInterrupt:
            with _ctrl_c_deferred():  # a second Ctrl-C must not cut the re-enqueue short
                st.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            _mark(run_dir, state="failed", reason="interrupted (Ctrl-C)", retried=True)
            raise
        except TrainingStopped as err:  # NaN: this trial fails, the sweep goes on
            _mark(run_dir, state="failed", reason=str(err))
            failures[0] += 1
            raise
        failures[0] = 0
        best = reporter.values[result.best_epoch]
        _mark(run_dir, state="complete", value=best, best_epoch=result.best_epoch, epochs=result.epochs_done)
        return best

    failures = [0]  # trials of this process that failed in a row (NaN)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    waiting_said = False
    while True:
        if failures[0] >= MAX_FAILURES:
            raise VaelabError(f"the last {MAX_FAILURES} trials all stopped on a NaN loss; check the fixed settings "
                              "and the ranges (a lower lr?)")
        with _quiet_experimental():
            optuna.storages.fail_stale_trials(st)
        finished = len(st.get_trials(deepcopy=False, states=done_states))
        running = len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        if finished >= trials:
            break
        if finished + running >= trials:  # the rest are running elsewhere: wait for them (or for them to go stale)
            if not waiting_said:
                log(f"{finished} of {trials} trials finished, {running} running in other processes: waiting for them")
                waiting_said = True
            time.sleep(min(heartbeat, 5.0))
            continue
        waiting_said = False
        st.optimize(run_trial, n_trials=1, catch=(TrainingStopped,))

    all_trials = st.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in all_trials) for s in optuna.trial.TrialState}
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_run = best_value = None
    if complete:
        best = max(complete, key=lambda t: t.value)
        best_run, best_value = Path(best.user_attrs.get("run", folder(best.number))), float(best.value)
        if evaluate_best and base.eval_k > 0 and not (best_run / "eval.json").exists():
            model = load(best_run)
            ev = model.evaluate(k=base.eval_k, gap_examples=0).summary(data=f"{model.config.data} (test split)")
            write_eval(best_run, ev.to_dict())
    path = None
    if report_path is not None:
        path = write_sweep_report(st, report_path, objective=objective, best_run=best_run)
    return SweepResult(study=st, best_run=best_run, best_value=best_value, report=path, counts=counts)
