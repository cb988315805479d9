"""Checkpoints that survive interruption: one safetensors file, replaced atomically.

A training checkpoint is a single ``.safetensors`` file holding the model's weights
(``model.*``), the optimizer's tensors (``optim.<param>.<key>``) and, in the file's string
metadata, a JSON document with everything else (epoch, early-stopping state, the optimizer's
hyper-parameters, the metrics so far). It is written to a temporary file in the same folder,
flushed to disk and moved over the old one with ``os.replace``: a crash at any moment leaves
either the old checkpoint or the new one, never half of one. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import VaelabError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "read_metadata",
]

_META_KEY = "vaelab"


def _atomic(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _tensors_to_save(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_weights(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save ``model.state_dict()`` (and optional JSON ``meta``) atomically as safetensors."""
    tensors = _tensors_to_save(model.state_dict())
    metadata = {_META_KEY: json.dumps(meta or {})}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _open(path: Path, what: str):
    if not path.is_file():
        raise VaelabError(f"{what} '{path}' not found")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
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


def _read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    with _open(path, what) as f:
        try:
            return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise VaelabError(f"{what} '{path}' is corrupt ({err}); restore it or retrain") from None


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise VaelabError(
            f"{what} '{path}' does not fit this model ({first}); was it written by another "
            "configuration?"
        ) from None


def load_weights(path: str | os.PathLike, model: nn.Module, what: str = "weights file") -> dict[str, Any]:
    """Load weights saved by :func:`save_weights` into ``model``; returns the stored meta."""
    path = Path(path)
    meta = read_metadata(path, what)
    _load_state(model, _read_tensors(path, what), path, what)
    return meta


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
    metadata = {_META_KEY: json.dumps(meta)}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``state`` dict."""
    path = Path(path)
    meta = read_metadata(path, "checkpoint")
    tensors = _read_tensors(path, "checkpoint")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_state(model, model_state, path, "checkpoint")
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
