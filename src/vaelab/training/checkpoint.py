"""Checkpoints that survive interruption: one safetensors file, replaced atomically.

A training checkpoint is a single ``.safetensors`` file holding the model's weights
(``model.*``), the optimizer's tensors (``optim.<param>.<key>``) and, in the file's string
metadata, a JSON document with everything else (epoch, early-stopping state, the optimizer's
hyper-parameters, the metrics so far). It is written to a temporary file in the same folder,
flushed to disk and moved over the old one with ``os.replace``: a crash at any moment leaves
either the old checkpoint or the new one, never half of one. Nothing is ever unpickled.

Every file also stores, in its metadata, a SHA-256 of its contents (each tensor's name, dtype,
shape and bytes, in name order, then the JSON metadata); reading verifies it, so one flipped
bit is named as a damaged run folder instead of loading quietly. Files of vaelab 0.1.0 carry
no checksum and load unverified. The JSON metadata of a checkpoint is checked field by field
(:func:`check_state`) before training continues from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import VaelabError
from ..outputs import atomic_write_bytes, atomic_write_text, atomic_write_with

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "read_metadata",
    "verify_file",
    "check_state",
    "tensor_digest",
    "read_tensors",
    "keep_previous",
    "shape_mismatch",
    "stored_shapes",
    "misfit",
]

_META_KEY = "vaelab"
_SUM_KEY = "vaelab_sha256"  # SHA-256 of the tensors and the JSON metadata (tensor_digest)


def tensor_digest(tensors: dict[str, torch.Tensor], meta_json: str = "") -> str:
    """SHA-256 (hex) of ``tensors`` (name, dtype, shape and bytes of each, in name order) and ``meta_json``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(meta_json.encode("utf-8"))
    return h.hexdigest()


def _metadata(tensors: dict[str, torch.Tensor], meta_json: str) -> dict[str, str]:
    return {_META_KEY: meta_json, _SUM_KEY: tensor_digest(tensors, meta_json)}


def _tensors_to_save(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_weights(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save ``model.state_dict()`` (and optional JSON ``meta``) atomically as safetensors."""
    tensors = _tensors_to_save(model.state_dict())
    metadata = _metadata(tensors, json.dumps(meta or {}))
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _denied(path: Path) -> str:
    return f"cannot be read (permission denied); make it readable (chmod u+r '{path}') or run as its owner"


def unreadable(path: Path) -> str | None:
    """Why a run's file at ``path`` cannot be read, with the fix, or None: not found, a folder
    or another thing that is not a plain file, or a file this user may not read."""
    if path.is_dir():
        return "is a folder, not a file: the run folder is damaged; restore the file from a backup or retrain"
    if not path.exists():
        return "not found"
    if not path.is_file():
        return "is not a plain file: the run folder is damaged; restore the file from a backup or retrain"
    if not os.access(path, os.R_OK):
        return _denied(path)
    return None


def _open(path: Path, what: str):
    problem = unreadable(path)
    if problem:
        raise VaelabError(f"{what} '{path}' {problem}")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, PermissionError) or "os error 13" in str(err):  # (safetensors wraps the OS error)
            raise VaelabError(f"{what} '{path}' {_denied(path)}") from None
        raise VaelabError(
            f"{what} '{path}' is corrupt or truncated ({str(err).splitlines()[0]}); "
            "restore it or retrain"
        ) from None


def read_metadata(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """The JSON metadata stored in a vaelab safetensors file."""
    with _open(Path(path), what) as f:
        raw = (f.metadata() or {}).get(_META_KEY)
    if raw is None:
        raise VaelabError(f"{what} '{path}' is a safetensors file but not one written by vaelab")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise VaelabError(f"{what} '{path}' has corrupt metadata; restore it or retrain") from None


def read_tensors(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Every tensor of a vaelab safetensors file, its checksum verified (when it has one)."""
    path = Path(path)
    with _open(path, what) as f:
        try:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise VaelabError(f"{what} '{path}' is corrupt ({err}); restore it or retrain") from None
    stored = raw.get(_SUM_KEY)
    if stored is not None and stored != tensor_digest(tensors, raw.get(_META_KEY, "")):
        raise VaelabError(
            f"{what} '{path}' does not match its SHA-256 checksum: the run folder is damaged (a file was changed "
            "or corrupted after it was written); restore it from a backup or retrain"
        )
    return tensors


_read_tensors = read_tensors


def verify_file(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Read a whole vaelab safetensors file, verify its checksum, and return its JSON metadata."""
    read_tensors(path, what)
    return read_metadata(path, what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_state(meta: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Check the JSON metadata of a checkpoint field by field; returns its ``state``.

    A wrongly typed or missing field is a one-line VaelabError naming the file and the field
    (an edited or damaged checkpoint), never a KeyError or TypeError later in training.
    """

    def bad(field: str, want: str, value: Any) -> VaelabError:
        return VaelabError(f"checkpoint '{path}': {field} must be {want}, got {value!r:.60}; the run folder is "
                           "damaged or was edited: restore it from a backup or retrain")

    if not isinstance(meta, dict):
        raise bad("its metadata", "a JSON object", meta)
    state, opt = meta.get("state"), meta.get("optimizer")
    if not isinstance(state, dict):
        raise bad("state", "a JSON object", state)
    for key in ("epoch", "best_epoch", "bad_epochs"):
        if not _is_int(state.get(key)) or state[key] < 0:
            raise bad(f"state.{key}", "an integer >= 0", state.get(key))
    if state["epoch"] < 1 or state["best_epoch"] > state["epoch"]:
        raise bad("state.epoch", f"an integer >= 1 and >= best_epoch ({state['best_epoch']})", state["epoch"])
    best = state.get("best_val_elbo")
    if not (best is None or _is_number(best)) or (_is_number(best) and math.isnan(best)):
        raise bad("state.best_val_elbo", "a number", best)
    if state.get("stopped") not in (None, "early-stopping"):
        raise bad("state.stopped", "null or 'early-stopping'", state.get("stopped"))
    metrics = state.get("metrics")
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise bad("state.metrics", "a list of records", metrics)
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) \
            or not all(isinstance(g, dict) for g in opt["param_groups"]):
        raise bad("optimizer.param_groups", "a list of objects", None if not isinstance(opt, dict) else opt.get("param_groups"))
    scalars = opt.get("scalars")
    if not isinstance(scalars, dict) or not all(k.isdigit() and isinstance(v, dict) for k, v in scalars.items()):
        raise bad("optimizer.scalars", "an object of objects keyed by parameter index", scalars)
    for g in opt["param_groups"]:
        if not _is_number(g.get("lr")) or not math.isfinite(g["lr"]) or g["lr"] <= 0:
            raise bad("optimizer.param_groups[].lr", "a finite number > 0", g.get("lr"))
        if not isinstance(g.get("params"), list) or not all(_is_int(i) for i in g["params"]):
            raise bad("optimizer.param_groups[].params", "a list of integers", g.get("params"))
    return state


def _shape(shape: Any) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def shape_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    """The first way the tensors ``found`` (name -> shape, a file's) do not fit ``expected``
    (name -> shape, a model's ``state_dict``), in words, or None when every name and shape agree:
    a tensor of another shape (the model's order), one the model has that the file lacks, one the
    file holds that the model has no place for."""
    for name, shape in expected.items():
        if name not in found:
            return f"the model's tensor '{name}' {_shape(shape)} is not in the file"
        if tuple(found[name]) != tuple(shape):
            return f"tensor '{name}' is {_shape(found[name])} in the file but {_shape(shape)} in the model"
    extra = [name for name in found if name not in expected]
    if extra:
        return f"the file holds a tensor '{extra[0]}' {_shape(found[extra[0]])} that the model has no place for"
    return None


def stored_shapes(path: str | os.PathLike, what: str = "weights file", prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a safetensors file whose name starts with ``prefix`` (the
    prefix removed), read from its header only (nothing loaded, the checksum not verified)."""
    path = Path(path)
    with _open(path, what) as f:
        try:
            return {k[len(prefix):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix)}
        except (SafetensorError, OSError, ValueError) as err:
            raise VaelabError(f"{what} '{path}' is corrupt ({str(err).splitlines()[0]}); restore it or retrain") from None


def misfit(path: Path, what: str, detail: str, model: str = "this model") -> VaelabError:
    """The one-line error of a weights file or checkpoint whose tensors do not fit ``model``."""
    return VaelabError(f"{what} '{path}' does not fit {model}: {detail}; it was written for another model (another "
                       "--hidden, --latent-dim or part): restore the run's own file from a backup, or train a new run")


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
                described: str = "this model") -> None:
    detail = shape_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                            {k: tuple(v.shape) for k, v in state.items()})
    if detail is not None:
        raise misfit(path, what, detail, described)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # (names and shapes agree: what is left, in PyTorch's words, on one line)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise misfit(path, what, lines[-1] if lines else "PyTorch refused it", described) from None


def load_weights(path: str | os.PathLike, model: nn.Module, what: str = "weights file",
                 described: str = "this model") -> dict[str, Any]:
    """Load weights saved by :func:`save_weights` into ``model``; returns the stored meta.
    ``described`` names the model in the error when the tensors do not fit it."""
    path = Path(path)
    meta = read_metadata(path, what)
    _load_state(model, _read_tensors(path, what), path, what, described)
    return meta


def keep_previous(path: str | os.PathLike, previous: str | os.PathLike) -> None:
    """Keep the checkpoint ``path`` as ``previous`` before it is replaced (nothing when missing).

    A hard link under a temporary name moved over ``previous`` (a copy where links are not
    possible), so ``path`` is never missing and ``previous`` is always a whole file.
    """
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return
    tmp = previous.with_name(f".{previous.name}.{os.getpid()}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, previous)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(previous, path.read_bytes())


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Save weights, optimizer state and a JSON ``state`` dict in one atomic file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {
        "state": state,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
    }
    tensors = _tensors_to_save(tensors)
    metadata = _metadata(tensors, json.dumps(meta))
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    described: str = "this model",
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state`` dict
    (``described`` names the model in the error when its tensors do not fit it)."""
    path = Path(path)
    meta = read_metadata(path, "checkpoint")
    check_state(meta, path)
    tensors = _read_tensors(path, "checkpoint")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_state(model, model_state, path, "checkpoint", described)
    if optimizer is not None:
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[key] = v
        for idx, entry in meta["optimizer"]["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(entry)
        device = next(model.parameters()).device
        opt_state = {
            i: {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "step" else v) for k, v in e.items()}
            for i, e in opt_state.items()
        }
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta["state"]
