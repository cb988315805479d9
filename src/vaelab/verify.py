"""``vaelab verify RUN``: does this machine still compute the run's bits?

Training is deterministic by construction: every random draw of epoch e derives from
``(seed, e)`` and a checkpoint holds the weights, Adam's state and the counters, so resuming
from the checkpoint of epoch e - 1 gives exactly the checkpoint of epoch e (same software, same
hardware, same thread count; :mod:`vaelab.training.loop`). :func:`verify` uses that as a test:
it copies the run's settings and the checkpoint of the epoch before the last (kept as
``checkpoint.previous.safetensors``) into a temporary folder, trains the last epoch again
there (with ``--checkpoint-every`` the checkpoints may lie several epochs apart: it trains
them all again, or from the seed when only one was written), and compares every tensor of the new checkpoint (model weights ``model.*``, optimizer
state ``optim.*``) and the epoch's metrics record with the run's own; when the best epoch is
among those trained again, the best weights (``model.safetensors``) too. A run of one epoch is
trained again from its seed. The run folder is only read. Weights files whose tensors do not
fit the run's model (another run's weights copied over) are refused first, as damaged files.

The answer is "bit-identical", or the first tensor (in name order) that differs and the
largest absolute difference in it: a different PyTorch, BLAS or thread count shows up here as
a difference of a few ulps, a weights file edited after the fact as a large one.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import VaelabError
from .manifest import read_manifest
from .outputs import check_unlocked, releases_locks
from .training.checkpoint import check_state, read_metadata, read_tensors
from .training.loop import BEST_WEIGHTS, CHECKPOINT, PREVIOUS_CHECKPOINT

__all__ = ["verify", "Verification", "compare_tensors"]

_TIMING = ("seconds", "examples_per_second")  # metrics that measure the machine, not the numbers
_NO_TRACKERS = {"log": [], "mlflow_uri": ""}  # training again is not a run to log to TensorBoard or MLflow


@dataclass
class Verification:
    """What :func:`verify` found: ``identical``, or the first differing tensor and its largest
    absolute difference (``first_difference``, ``max_difference``)."""

    run_dir: Path
    epoch: int
    compared: int
    identical: bool
    first_difference: str | None = None
    max_difference: float | None = None
    detail: str = ""

    def message(self) -> str:
        """One line for people."""
        where = f"epoch {self.epoch} of '{self.run_dir}' trained again"
        if self.identical:
            return f"bit-identical: {where} gives the same {self.compared} tensors and metrics"
        return f"differs: {where}: {self.detail}"


def compare_tensors(saved: dict[str, torch.Tensor], again: dict[str, torch.Tensor]) -> tuple[str, float, str] | None:
    """The first tensor name (model weights first, then optimizer state, each in name order)
    whose values differ, with the largest absolute difference and a phrase; None if all agree."""
    names = sorted(set(saved) | set(again), key=lambda n: (not n.startswith("model."), n))
    for name in names:
        a, b = saved.get(name), again.get(name)
        if a is None or b is None:
            return name, math.inf, f"tensor '{name}' is only in the {'run' if b is None else 'retrained'} checkpoint"
        if a.shape != b.shape or a.dtype != b.dtype:
            return name, math.inf, (f"tensor '{name}' has shape {tuple(a.shape)} {a.dtype} in the run but "
                                    f"{tuple(b.shape)} {b.dtype} retrained")
        if not torch.equal(a, b):
            diff = float((a.double() - b.double()).abs().nan_to_num(math.inf).max()) if a.numel() else 0.0
            return name, diff, f"first differing tensor '{name}', max absolute difference {diff:.6g}"
    return None


def _best_reference(run_dir: Path, again: Path, previous: Path | None,
                    saved_state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """What the run's best weights (``model.safetensors``) must equal: the best weights trained
    again (``again``), when their epoch was among those trained again from ``previous`` (None:
    from the seed); else the weights of the run's checkpoint of their epoch, when it keeps one
    (a checkpoint holds the same weights as the best weights written with it); else None."""
    best = saved_state["best_epoch"]
    since = 0 if previous is None else check_state(read_metadata(previous), previous)["epoch"]
    if best > since:
        return read_tensors(again / BEST_WEIGHTS, "weights file")
    if previous is not None and since == best:  # (the run's checkpoint.previous.safetensors)
        return {k[len("model."):]: v for k, v in read_tensors(previous).items() if k.startswith("model.")}
    return None


def _named(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The best weights' tensors, named as in the file they come from (``model.safetensors:encoder...``)."""
    return {f"{BEST_WEIGHTS}:{k}": v for k, v in weights.items()}


def _records_differ(saved: dict[str, Any], again: dict[str, Any]) -> str | None:
    for key in sorted(set(saved) | set(again)):
        if key in _TIMING:
            continue
        if saved.get(key) != again.get(key):
            return f"metrics record differs in '{key}': {saved.get(key)!r} in the run, {again.get(key)!r} retrained"
    return None


@releases_locks  # the shared lock taken below: no training of the run starts while it is compared
def verify(run: str | Path, device: str | None = None) -> Verification:
    """Train the last epoch of ``run`` again from the checkpoint before it, in a temporary
    folder, and compare the result bit for bit with the run's checkpoint (see the module)."""
    from .run_folder import check_run, check_run_files, check_weights_fit, missing_record, read_config

    run_dir = check_run(run)
    check_unlocked(run_dir, hold=True)  # a run being trained has files being rewritten: refused, not "differs"
    if not (run_dir / CHECKPOINT).exists():  # (a folder or an unreadable file there is named by check_run_files)
        raise VaelabError(missing_record(run_dir, CHECKPOINT, f"run '{run_dir}' has no checkpoint",
                                         f" ({CHECKPOINT}): it did not finish an epoch"))
    check_run_files(run_dir)  # a damaged file is named as such, not as a difference
    if not (run_dir / BEST_WEIGHTS).exists():  # (training writes them with every checkpoint)
        raise VaelabError(missing_record(run_dir, BEST_WEIGHTS, f"run '{run_dir}' has no trained weights",
                                         f" ({BEST_WEIGHTS})"))
    check_weights_fit(run_dir)  # weights of another model copied over: named, not "bit-identical"
    saved_state = check_state(read_metadata(run_dir / CHECKPOINT), run_dir / CHECKPOINT)
    epoch = saved_state["epoch"]
    config = read_config(run_dir)
    previous = run_dir / PREVIOUS_CHECKPOINT
    spaced = float(getattr(config, "checkpoint_every", 0.0)) > 0  # checkpoints may be several epochs apart
    before = 0  # the epoch trained again from: 0 is the seed
    if epoch > 1 and previous.is_file():
        before = check_state(read_metadata(previous), previous)["epoch"]
        if before >= epoch or (before != epoch - 1 and not spaced):
            expected = f"an epoch before {epoch}" if spaced else f"{epoch - 1}"
            raise VaelabError(f"'{previous}' holds epoch {before}, not {expected}: the run folder was edited; restore it")
    elif epoch > 1 and not spaced:
        raise VaelabError(f"run '{run_dir}' keeps no checkpoint of epoch {epoch - 1} ({PREVIOUS_CHECKPOINT}; runs "
                          "trained before vaelab kept one have none), so there is nothing to verify from")
    overrides: dict[str, Any] = {"epochs": epoch}
    if device is not None:
        overrides["device"] = device
    quiet = {"progress": False, "figures": False, "log": lambda *a: None}
    threads_before = torch.get_num_threads()
    if config.threads == 0:  # PyTorch's default when the run was trained: the count it recorded, if any
        manifest = read_manifest(run_dir) or {}
        sessions = [manifest, *manifest.get("resumed", [])]
        recorded = sessions[-1].get("threads") if sessions[-1] else None
        if isinstance(recorded, int) and recorded > 0:
            torch.set_num_threads(recorded)
    try:
        return _again(run_dir, config, epoch, previous if before else None, saved_state, overrides, quiet)
    finally:
        torch.set_num_threads(threads_before)


def _again(run_dir: Path, config: Any, epoch: int, previous: Path | None, saved_state: dict[str, Any],
           overrides: dict[str, Any], quiet: dict[str, Any]) -> Verification:
    """Train up to epoch ``epoch`` again in a temporary folder, from the checkpoint ``previous``
    (None: from the seed), and compare (see :func:`verify`)."""
    from .runs import CONFIG, SPEC, TrainingStopped, train

    with tempfile.TemporaryDirectory(prefix="vaelab-verify-") as tmp:
        again = Path(tmp) / "run"
        try:
            if previous is None:  # from the seed: a fresh run up to the epoch
                train(config.replace(out=str(tmp), name="run", **_NO_TRACKERS, **overrides), **quiet)
            else:
                again.mkdir()
                doc = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
                doc["config"].update({k: v for k, v in _NO_TRACKERS.items() if k in doc["config"]})
                (again / CONFIG).write_text(json.dumps(doc), encoding="utf-8")
                for name in (SPEC, BEST_WEIGHTS):
                    if (run_dir / name).is_file():
                        shutil.copyfile(run_dir / name, again / name)
                shutil.copyfile(previous, again / CHECKPOINT)
                train(resume=again, **quiet, **overrides)
        except TrainingStopped as err:
            raise VaelabError(f"verify: training epoch {epoch} again stopped ({err}); the run gave a finite loss, "
                              "so this machine computes differently") from None
        except VaelabError as err:  # a refusal names the copy, gone when it is read: name the run itself
            raise VaelabError(str(err).replace(str(again), str(run_dir)).replace(str(tmp), str(run_dir.parent))) \
                from None
        new_state = read_metadata(again / CHECKPOINT)["state"]
        found = compare_tensors(read_tensors(run_dir / CHECKPOINT), read_tensors(again / CHECKPOINT))
        compared = len(read_tensors(again / CHECKPOINT))
        if found is None:  # the best weights: retrained, or as the run's own checkpoint of their epoch holds them
            best = _best_reference(run_dir, again, previous, saved_state)
            if best is not None:
                found = compare_tensors(_named(read_tensors(run_dir / BEST_WEIGHTS, "weights file")), _named(best))
                compared += len(best)
    result = Verification(run_dir, epoch, compared, identical=found is None)
    if found is not None:
        result.first_difference, result.max_difference, result.detail = found
        return result
    saved_record = saved_state["metrics"][-1] if saved_state["metrics"] else {}
    new_record = new_state["metrics"][-1] if new_state["metrics"] else {}
    differ = _records_differ(saved_record, new_record)
    if differ is not None:
        result.identical, result.detail = False, differ
    return result
