"""The report's own figures: KL per latent dimension, latent traversals, a 2-D view of codes.

Like :mod:`vaelab.plots`, every function draws on a fresh Agg-rendered
:class:`~matplotlib.figure.Figure` (no pyplot, no global state) and returns the PNG: its
bytes, or, given a path, the path it wrote atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Union, overload

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor

from ..errors import VaelabError
from ..plots import plain_text, save_png

__all__ = ["kl_bars", "latent_traversal", "project_2d"]

PathLike = Union[str, "os.PathLike[str]"]
DPI = 100
_ACTIVE, _INACTIVE = "#2563eb", "#b6bcc6"


@overload
def kl_bars(activity: Sequence[float], path: None = None, *, kl_per_dim: Sequence[float] | None = None,
            threshold: float = 0.01) -> bytes: ...
@overload
def kl_bars(activity: Sequence[float], path: PathLike, *, kl_per_dim: Sequence[float] | None = None,
            threshold: float = 0.01) -> Path: ...
def kl_bars(
    activity: Sequence[float],
    path: PathLike | None = None,
    *,
    kl_per_dim: Sequence[float] | None = None,
    threshold: float = 0.01,
) -> Path | bytes:
    """Bars per latent dimension: KL(q(z_d|x) || p(z_d)) in nats (when known) and the
    activity Var_x(E_q[z_d]) on a log scale with the active-unit threshold.

    Active dimensions (activity above ``threshold``) are blue, inactive ones grey.
    """
    act = np.asarray(activity, dtype=np.float64)
    d = act.size
    if d == 0:
        raise VaelabError("kl_bars needs at least one latent dimension")
    active = act > threshold
    colors = [_ACTIVE if a else _INACTIVE for a in active]
    dims = np.arange(d)
    panels = 2 if kl_per_dim is not None else 1
    width = float(np.clip(0.28 * d + 2.5, 5.0, 12.0 / panels)) * panels
    fig = Figure(figsize=(width, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if kl_per_dim is not None:
        kl = np.asarray(kl_per_dim, dtype=np.float64)
        ax = axes[0]
        ax.bar(dims, kl, color=colors, width=0.8)
        total = float(kl.sum())
        ax.set_title(f"KL per dimension (total {total:.4g} nats)" if abs(total) >= 1e9 else
                     f"KL per dimension (total {total:.2f} nats)", fontsize=10)
        ax.set_ylabel("nats per example")
    ax = axes[-1]
    floor = max(float(act[act > 0].min()) if (act > 0).any() else threshold, 1e-8) / 3
    ax.bar(dims, np.maximum(act, floor), color=colors, width=0.8)
    ax.axhline(threshold, color="#dc2626", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_title(r"Activity $\mathrm{Var}_x(\mathrm{E}_q[z_d])$", fontsize=10)
    ax.set_ylabel("variance of posterior means")
    for ax in axes:
        ax.set_xlabel("latent dimension d")
        step = max(1, math.ceil(d / 20))
        ax.set_xticks(dims[::step])
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.6, d - 0.4)
    handles = [Patch(color=_ACTIVE, label=f"active ({int(active.sum())})"),
               Patch(color=_INACTIVE, label=f"inactive ({int((~active).sum())})"),
               Line2D([], [], color="#dc2626", linestyle="--", label=f"active-unit threshold {threshold:g}")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return save_png(fig, path)


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)


@overload
def latent_traversal(decoded: Tensor | np.ndarray, values: Sequence[float], dims: Sequence[int], path: None = None,
                     *, row_notes: Sequence[str] | None = None, title: str | None = None) -> bytes: ...
@overload
def latent_traversal(decoded: Tensor | np.ndarray, values: Sequence[float], dims: Sequence[int], path: PathLike,
                     *, row_notes: Sequence[str] | None = None, title: str | None = None) -> Path: ...
def latent_traversal(
    decoded: Tensor | np.ndarray,
    values: Sequence[float],
    dims: Sequence[int],
    path: PathLike | None = None,
    *,
    row_notes: Sequence[str] | None = None,
    title: str | None = None,
) -> Path | bytes:
    """Decoded means while one latent dimension moves and the others stay fixed.

    Args:
        decoded: ``[rows, steps, *shape]``: row r varies dimension ``dims[r]`` over ``values``.
            ``shape`` is an image ``(C, H, W)`` (C = 1 or 3) or a vector ``(D,)``.
        values: the ``steps`` values of the varied dimension (column labels).
        dims: the dimension varied in each row (row labels).
        row_notes: extra text per row label (e.g. the dimension's KL).
        path: where to write the PNG (``None``: return its bytes).
    """
    data = _numpy(decoded)
    rows, steps = data.shape[:2]
    if len(values) != steps or len(dims) != rows:
        raise VaelabError(f"decoded has {rows} rows x {steps} steps but got {len(dims)} dims and {len(values)} values")
    notes = list(row_notes) if row_notes is not None else [""] * rows
    labels = [f"z{d}{(' ' + n) if n else ''}" for d, n in zip(dims, notes)]
    shape = data.shape[2:]
    if len(shape) == 3 and shape[0] in (1, 3):
        c, h, w = shape
        pad = 2
        canvas = np.ones((pad + rows * (h + pad), pad + steps * (w + pad), 3))
        for r in range(rows):
            for s in range(steps):
                tile = np.clip(data[r, s], 0, 1).transpose(1, 2, 0)  # [H, W, C]
                top, left = pad + r * (h + pad), pad + s * (w + pad)
                canvas[top : top + h, left : left + w] = tile if c == 3 else np.repeat(tile, 3, axis=2)
        cell = float(np.clip(0.7 * w / 28, 0.35, 1.2))
        fig = Figure(figsize=(steps * cell + 1.6, rows * cell * h / w + 0.9), dpi=DPI, layout="compressed")
        ax = fig.add_subplot()
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks([pad + s * (w + pad) + (w - 1) / 2 for s in range(steps)], [f"{v:g}" for v in values],
                      fontsize=8)
        ax.set_yticks([pad + r * (h + pad) + (h - 1) / 2 for r in range(rows)], [plain_text(t) for t in labels],
                      fontsize=8)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("value of the varied dimension (the others fixed)", fontsize=9)
        crop = True
    elif len(shape) == 1:
        ncol = min(rows, 4)
        nrow = math.ceil(rows / ncol)
        fig = Figure(figsize=(ncol * 3.0 + 1.2, nrow * 2.3 + 0.8), dpi=DPI, layout="constrained")
        axes = np.asarray(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)).ravel()
        cmap, norm = colormaps["coolwarm"], Normalize(min(values), max(values))
        for r, ax in enumerate(axes):
            if r >= rows:
                ax.set_visible(False)
                continue
            for s in range(steps):
                ax.plot(np.arange(shape[0]), data[r, s], color=cmap(norm(values[s])), linewidth=1.1)
            ax.set_title(plain_text(labels[r]), fontsize=9)
            ax.grid(alpha=0.3)
        fig.colorbar(ScalarMappable(norm, cmap), ax=list(axes[:rows]), label="value of the varied dimension")
        fig.supxlabel("dimension of x", fontsize=9)
        fig.supylabel("decoded mean", fontsize=9)
        crop = False
    else:
        raise VaelabError(f"latent_traversal draws images (C, H, W) or vectors (D,), got examples of shape {shape}")
    if title:
        fig.suptitle(plain_text(title), fontsize=11)
    return save_png(fig, path, crop=crop)


def project_2d(z: Tensor | np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """Points ``[N, D]`` in 2-D: themselves when D = 2, else their first two principal
    components (D = 1 gets a zero second axis). Returns the points and the axis labels."""
    a = _numpy(z)
    n, d = a.shape
    if d == 2:
        return a, ("z1", "z2")
    if d == 1:
        return np.column_stack([a[:, 0], np.zeros(n)]), ("z1", "(none: one latent dimension)")
    centred = a - a.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max(float((s**2).sum()), 1e-300)
    pcs = centred @ vt[:2].T  # [N, 2]
    return pcs, (f"PC1 ({100 * share[0]:.0f}% of variance)", f"PC2 ({100 * share[1]:.0f}% of variance)")
