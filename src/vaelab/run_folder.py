"""Reading and writing the files of a run folder, each checked as it is read.

The layout is described in :mod:`vaelab.runs`. Every reader here names a damaged or edited file
in one line (a :class:`~vaelab.errors.VaelabError`) instead of failing later: ``config.json``
(the settings, known keys of the right types, and the data's shape and kind), ``model.json``
(the model spec; a vaelab 0.1.0 folder has none and is read from its settings), the
checkpoints and weights (checksums, checkpoint metadata) and ``metrics.jsonl``. The writers of
``config.json`` and ``eval.json`` go through :func:`~vaelab.training.checkpoint.atomic_write_text`
(the spec writes itself, :meth:`ModelSpec.to_json`; checkpoints and metrics are the training
loop's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .data.splits import KINDS
from .errors import VaelabError
from .evaluation import Evaluation, EvaluationSummary
from .spec import ModelSpec
from .training.checkpoint import (atomic_write_text, check_state, misfit, read_metadata, shape_mismatch, stored_shapes,
                                  verify_file)
from .training.loop import BEST_WEIGHTS, CHECKPOINT, METRICS, PREVIOUS_CHECKPOINT

__all__ = ["CONFIG", "SPEC", "EVAL", "SWEEP", "check_run", "check_run_files", "read_config", "read_run_config", "read_spec",
           "read_metrics", "write_run_config", "write_eval", "epochs_shown", "missing_record", "described_model",
           "check_weights_fit"]

CONFIG = "config.json"
SPEC = "model.json"
EVAL = "eval.json"
SWEEP = "sweep.json"  # a sweep trial's record (vaelab.sweep): study, trial number, state, parameters, value


def check_run_files(run_dir: Path) -> dict[str, Any]:
    """Verify a run folder's checkpoints and weights (checksums, checkpoint metadata): a damaged
    file is named in one line before anything is written or trained. Returns the state of the
    last checkpoint."""
    states = {}
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT, BEST_WEIGHTS):
        path = run_dir / name
        if path.exists():
            meta = verify_file(path, "checkpoint" if name != BEST_WEIGHTS else "weights file")
            if name != BEST_WEIGHTS:
                states[name] = check_state(meta, path)
    if CHECKPOINT not in states:
        raise VaelabError(missing_record(run_dir, CHECKPOINT, f"run '{run_dir}' has no checkpoint",
                                         f" ({CHECKPOINT}): it did not finish an epoch"))
    return states[CHECKPOINT]


# the records that show an epoch finished although the file named is missing: each is written after it
# (the best weights, then the previous checkpoint kept, then the checkpoint, then metrics.jsonl's records;
# so a kill -9 between the best weights and the first checkpoint leaves weights without a checkpoint)
_WRITTEN_AFTER = {BEST_WEIGHTS: (CHECKPOINT, PREVIOUS_CHECKPOINT, METRICS), CHECKPOINT: (PREVIOUS_CHECKPOINT, METRICS)}


def epochs_shown(run_dir: Path, missing: str) -> tuple[int, str] | None:
    """The last epoch that the run's records written after the file ``missing`` show finished (a
    checkpoint's epoch, the records of ``metrics.jsonl``), with the record that shows the most;
    None when none shows one (a damaged record shows nothing): then no epoch finished, and a
    missing file was never written."""
    import warnings

    shown: tuple[int, str] | None = None
    for name in _WRITTEN_AFTER.get(missing, ()):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            if name == METRICS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    epoch = max((r.get("epoch") for r in read_metrics(Path(run_dir))), default=None)
            else:
                epoch = (read_metadata(path, "checkpoint").get("state") or {}).get("epoch")
        except (VaelabError, OSError, AttributeError, TypeError):
            continue
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1 and (shown is None or epoch > shown[0]):
            shown = (epoch, name)
    return shown


def missing_record(run_dir: Path, name: str, head: str, unstarted: str) -> str:
    """The message for a run's file ``name`` that is not there: ``head`` (what the run lacks),
    then, when records written after that file show an epoch finished, that the file is missing
    (deleted or moved), naming the record that says so, and the fix; otherwise ``unstarted``
    (no epoch finished, the file was never written)."""
    shown = epochs_shown(run_dir, name)
    if shown is None:
        return f"{head}{unstarted}"
    epoch, source = shown
    return (f"{head}: {name} is missing, though {source} shows epoch {epoch} finished (it was deleted or moved); "
            "restore it from a backup, or train a new run")


def described_model(run_dir: Path) -> str:
    """The run's model as an error names it: ``this model (the run's model.json)``."""
    return f"this model (the run's {SPEC if (Path(run_dir) / SPEC).exists() else CONFIG})"


def check_weights_fit(run_dir: Path, names: tuple[str, ...] = (BEST_WEIGHTS, CHECKPOINT, PREVIOUS_CHECKPOINT)) -> None:
    """Refuse, naming the file, the first of the run's weights files ``names`` (those there)
    whose tensors do not fit the model that ``model.json`` (``config.json`` in a vaelab 0.1.0
    run) describes: another tensor name or shape, e.g. the weights of a run with another
    ``--hidden`` copied over; when none of them fits (and there are several), ``model.json`` is
    named instead, as edited. Reads the files' headers only and builds the model on PyTorch's
    ``meta`` device (shapes, nothing allocated; parts that cannot be built there: on the CPU)."""
    import torch

    from .build import build_model

    run_dir = Path(run_dir)
    present = [n for n in names if (run_dir / n).is_file()]
    if not present:
        return
    config = read_config(run_dir)
    shape = read_run_config(run_dir / CONFIG)["data"].get("shape")
    spec = read_spec(run_dir, config, shape)
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                model = build_model(spec)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):  # (an IAF, a VampPrior)
            from .runs import _check_model_size

            _check_model_size(config, spec, torch.device("cpu"), factor=2)  # an edited model.json: not without bound
            model = build_model(spec)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    details = {}
    for name in present:
        what = "weights file" if name == BEST_WEIGHTS else "checkpoint"
        details[name] = (what, shape_mismatch(expected, stored_shapes(run_dir / name, what,
                                                                      "" if name == BEST_WEIGHTS else "model.")))
    wrong = [name for name, (_, detail) in details.items() if detail is not None]
    if len(present) > 1 and len(wrong) == len(present):  # every weights file, the same model: the description is off
        source = SPEC if (run_dir / SPEC).exists() else CONFIG
        raise VaelabError(f"run '{run_dir}': {source} describes another model than every one of its weights files "
                          f"({', '.join(present)}: {details[present[0]][1]}); it was edited by hand: restore it from "
                          "a backup, or train a new run")
    if wrong:
        what, detail = details[wrong[0]]
        raise misfit(run_dir / wrong[0], what, detail, described_model(run_dir))


def check_run(run: str | Path) -> Path:
    """``run`` as a run folder's path: refused in one line unless it is a folder with a ``config.json``."""
    run_dir = Path(run)
    if run_dir.is_file():
        raise VaelabError(f"'{run_dir}' is a file, not a run folder; pass the folder that 'vaelab train' printed")
    if not run_dir.is_dir():
        raise VaelabError(f"run folder '{run_dir}' not found")
    if not (run_dir / CONFIG).is_file():
        raise VaelabError(f"'{run_dir}' is not a vaelab run folder (no {CONFIG}); pass the folder that 'vaelab train' printed")
    return run_dir


def read_config(run_dir: Path) -> TrainConfig:
    """The run's settings, from ``config.json`` (checked: :func:`read_run_config`)."""
    return TrainConfig.from_mapping(read_run_config(run_dir / CONFIG)["config"], source=str(run_dir / CONFIG))


def read_run_config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict with its two sections, ``config`` (the settings, read by
    :meth:`TrainConfig.from_mapping`) and ``data`` (shape, kind and counts, checked here)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VaelabError(f"'{path}' is corrupt ({err}); restore it from a backup") from None
    if not isinstance(doc, dict) or "config" not in doc or "data" not in doc:
        raise VaelabError(f"'{path}' is not a vaelab run configuration (needs 'config' and 'data')")
    unknown = sorted(set(doc) - {"config", "data"})
    if unknown:
        raise VaelabError(f"'{path}' has unknown section(s) {', '.join(unknown)}; a vaelab run configuration holds "
                          "'config' and 'data' only: restore it from a backup")
    if not isinstance(doc["config"], dict):
        raise VaelabError(f"'{path}': 'config' must be a JSON object of settings; restore it from a backup")
    _check_data_info(doc["data"], path)
    return doc


_DATA_INFO = {  # config.json's "data" section: what each entry must be
    "shape": ("a list of positive integers", lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v)),
    "kind": (f"one of {', '.join(KINDS)}", lambda v: v in KINDS),
    "missing": ("an object of column names and counts >= 0", lambda v: isinstance(v, dict) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v.values())),
    "binarized": ("true or false", lambda v: isinstance(v, bool)),
    "discrete_levels": ("null or an integer >= 2", lambda v: v is None or (
        isinstance(v, int) and not isinstance(v, bool) and v >= 2)),
    "features": ("a list of feature names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
    **{key: ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
       for key in ("n_train", "n_val", "n_test", "n_labelled")},
}


def _check_data_info(info: Any, path: Path) -> None:
    """config.json's ``data`` section: known keys, each of the right type (an edited or damaged
    file is named in one line instead of failing later)."""
    if not isinstance(info, dict):
        raise VaelabError(f"'{path}': 'data' must be a JSON object (shape, kind, ...), got {info!r:.60}; "
                          "restore it from a backup")
    unknown = sorted(set(info) - set(_DATA_INFO))
    if unknown:
        raise VaelabError(f"'{path}': unknown key(s) {', '.join(unknown)} in 'data' (known: {', '.join(_DATA_INFO)}); "
                          "restore it from a backup")
    for key, value in info.items():
        want, ok = _DATA_INFO[key]
        if not ok(value):
            raise VaelabError(f"'{path}': data.{key} must be {want}, got {value!r:.60}; restore it from a backup")


def read_spec(run_dir: Path, config: TrainConfig, shape: Any) -> ModelSpec:
    """The run's model spec: ``model.json``, or (a run folder of vaelab 0.1.0) the one its
    flat settings describe."""
    path = run_dir / SPEC
    if not path.exists():
        if not isinstance(shape, list):
            raise VaelabError(f"'{run_dir / CONFIG}': data.shape must be a list of sizes, got {shape!r}")
        spec = config.model_spec(shape)
        if spec.net.name == "conv":  # 0.1.0 had the 28x28-only conv nets: read as net conv-0.1 (ModelSpec.from_dict)
            spec = ModelSpec.from_dict({**spec.to_dict(), "net": {"name": "conv", "hidden": spec.net.options["hidden"]}})
        return spec
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VaelabError(f"'{path}' is corrupt ({err}); restore it from a backup") from None
    return ModelSpec.from_dict(doc, source=str(path))


def write_run_config(run_dir: Path, config: TrainConfig, data_info: dict[str, Any]) -> Path:
    """Save ``config.json``: the settings and the data's description, the two sections
    :func:`read_run_config` reads back (and checks)."""
    path = run_dir / CONFIG
    atomic_write_text(path, json.dumps({"config": config.to_dict(), "data": data_info}, indent=2))
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``metrics.jsonl``)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise VaelabError(f"'{path}' cannot be read ({err}); restore it from a backup or resume the run") from None
    records = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            epoch = record.get("epoch")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise VaelabError(f"'{path}:{i + 1}': epoch must be a whole number >= 1, got {epoch!r}; the file is "
                                  "damaged: restore it from a backup (a resumed run rewrites it from its checkpoint; a finished "
                                  "one only with a larger --epochs, training on)")
            records.append(record)
        elif i == last:  # cut off by a crash (other writers than vaelab's atomic one): the rest is good
            import warnings

            warnings.warn(f"'{path}': the last line ({i + 1}) is truncated; it was left out", RuntimeWarning,
                          stacklevel=2)
        else:
            raise VaelabError(f"'{path}:{i + 1}' is not a JSON record; the file is damaged: restore it from a backup "
                              "(a resumed run rewrites it from its checkpoint; a finished one only with a larger --epochs, "
                              "training on)")
    return records


def write_eval(run_dir: Path, result: Evaluation | EvaluationSummary | dict[str, Any]) -> Path:
    """Save an evaluation as the run's ``eval.json``.

    Only finite numbers are written (standard JSON, which every reader of eval.json checks):
    an evaluation with a NaN or infinite value (a model whose outputs are not finite on the
    test set) is a one-line error naming the value, and nothing is written."""
    path = Path(run_dir) / EVAL
    doc = result.to_dict() if isinstance(result, (Evaluation, EvaluationSummary)) else result
    bad = _non_finite(doc, "")
    if bad is not None:
        key, value = bad
        raise VaelabError(f"the evaluation of '{run_dir}' has {key} = {value}: the model's outputs are not finite on "
                          f"its test examples, so '{path}' was not written; retrain the model (or check its test data)")
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False))
    return path


def _non_finite(value: Any, where: str) -> tuple[str, float] | None:
    """(key, value) of the first NaN or infinite number in a JSON-ready document, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "the value", value)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found is not None:
            return found
    return None
