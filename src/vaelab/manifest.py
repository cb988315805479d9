"""The reproducibility manifest of a run: ``RUN/manifest.json``.

Written when training starts (and extended by each ``--resume``), it records what it takes to
get the same numbers again:

* the software: Python, PyTorch (with its CUDA and cuDNN builds), vaelab and the installed
  version of every package vaelab requires (``importlib.metadata``);
* the call: the full command line (``sys.argv``; for a Python call, the interpreter's own
  argv) and the working directory, and the git commit of that directory when it lies inside a
  git repository (with whether its tree had uncommitted changes);
* the settings (``config.json``'s), the seed, the device, PyTorch's thread count and its
  determinism switches (``torch.are_deterministic_algorithms_enabled()``, cuDNN's
  ``deterministic`` and ``benchmark``, the float32 matmul precision, ``CUBLAS_WORKSPACE_CONFIG``);
* the data actually used: a SHA-256 of each split's tensors after loading (examples, labels and
  covariates: their dtype, shape and bytes), so a changed file or a changed split is seen even
  when the data's name is the same.

``vaelab verify RUN`` (:mod:`vaelab.verify`) re-runs the last epoch and checks that the same
software gives the same bits.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .data import DataSplits
from .data.streaming import RowStore, update_sha256
from .errors import VaelabError
from .outputs import atomic_write_text

__all__ = ["MANIFEST", "environment", "determinism", "data_checksums", "git_commit", "build_manifest",
           "write_manifest", "read_manifest"]

MANIFEST = "manifest.json"
GIT_TIMEOUT = 5.0  # seconds: a slow or hanging git is not worth delaying training for


def _requirements() -> list[str]:
    """The names of the packages vaelab requires (every extra included), as installed metadata says."""
    try:
        reqs = metadata.requires("vaelab") or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def environment() -> dict[str, Any]:
    """Python, PyTorch and the installed version of vaelab and of every package it requires
    (a required package that is not installed, e.g. an unused extra, is left out)."""
    packages: dict[str, str] = {}
    for name in ["vaelab", *_requirements()]:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": packages,
    }


def determinism() -> dict[str, Any]:
    """PyTorch's switches that decide whether two runs give the same bits."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_algorithms_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _tensor_sha(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none\n")
            continue
        if isinstance(t, RowStore):  # rows left on disk (--backed): the same digest, read block by block
            update_sha256(h, t)
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_checksums(data: DataSplits) -> dict[str, Any]:
    """SHA-256 of each split as loaded: its examples, labels and covariates (dtype, shape, bytes)."""
    out: dict[str, Any] = {}
    for part in ("train", "val", "test"):
        x = getattr(data, part)
        out[part] = {
            "examples": int(x.shape[0]),
            "sha256": _tensor_sha(x, getattr(data, f"{part}_labels"), getattr(data, f"{part}_covariates")),
        }
    return out


def git_commit(folder: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The git commit checked out in ``folder`` (default: the working directory) and whether
    its tree has uncommitted changes; None outside a git repository or without git."""
    cwd = str(folder) if folder is not None else None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)
        if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head.stdout.strip()):
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = None if status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def _session(device: torch.device | str) -> dict[str, Any]:
    """What may change from one training session of a run to the next (a resume)."""
    session: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "determinism": determinism(),
        "environment": environment(),
    }
    git = git_commit()
    if git is not None:
        session["git"] = git
    return session


def build_manifest(settings: dict[str, Any], data: DataSplits, device: torch.device | str) -> dict[str, Any]:
    """The manifest of a run that starts now: the session, the settings, the seed and the data."""
    return {
        "manifest_version": 1,
        **_session(device),
        "seed": settings.get("seed"),
        "settings": settings,
        "data": {"name": data.name, "shape": list(data.shape), "splits": data_checksums(data)},
        "resumed": [],
    }


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``RUN/manifest.json``, or None for a run without one (vaelab 0.1.0); a corrupt one is an error."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise VaelabError(f"'{path}' is corrupt ({err}); restore it from a backup") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resumed", []), list):
        raise VaelabError(f"'{path}' is not a vaelab manifest (needs a JSON object); restore it from a backup")
    return doc


def write_manifest(run_dir: str | os.PathLike, settings: dict[str, Any], data: DataSplits,
                   device: torch.device | str, *, resume: bool = False) -> dict[str, Any]:
    """Write ``RUN/manifest.json`` for a run that starts now, or (``resume``) add this session
    to the existing one (its data checksums too, so a resume on other data is on record)."""
    path = Path(run_dir) / MANIFEST
    existing = read_manifest(run_dir) if resume else None
    if existing is None:
        doc = build_manifest(settings, data, device)
        if resume:
            doc["note"] = "written at a resume: the run began without a manifest"
    else:
        doc = existing
        doc.setdefault("resumed", []).append({**_session(device), "settings": settings,
                                              "data_splits": data_checksums(data)})
    atomic_write_text(path, json.dumps(doc, indent=2))
    return doc
