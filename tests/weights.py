"""Reading safetensors files in tests, and comparing them tensor by tensor (bit-for-bit)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, by name."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same names, and every tensor bit-for-bit equal (naming the first that differs)."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"tensor {key} differs"
