"""PNG figures of data, reconstructions, training curves and 2-D latent spaces.

Every function draws on a fresh :class:`matplotlib.figure.Figure` rendered by the Agg canvas
directly, so importing this module touches no global matplotlib state (no pyplot, no backend
switch, no figure registry), and returns the PNG: as ``bytes`` when no path is given (so a
page can embed it without temporary files), else written atomically to ``path`` (rendered
in memory, then a temporary file in the target folder moved into place with ``os.replace``,
so a reader never sees half a file), returning the path. Missing parent folders are
created. The file is always PNG, whatever the path's suffix.

Data come as a tensor or array ``[N, *shape]`` of examples, where one example is either

* an image ``(C, H, W)``: ``C = 1`` is drawn in grayscale, ``C = 3`` as RGB, values clamped
  to [0, 1] for display (0 is black, 1 is white), or
* a vector ``(D,)``: drawn as a small line plot (one panel per example).

    >>> x = model.sample(64)                                  # [64, 1, 28, 28]
    >>> image_grid(x, "samples.png", title="Samples from p(x|z), z ~ p(z)")
    PosixPath('samples.png')
    >>> png = image_grid(x)                                   # the PNG's bytes

A ``title`` of ``None`` gives an informative default; ``""`` gives no title.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union, overload

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from .errors import VaelabError
from .outputs import atomic_write_bytes
from .model import VAE

__all__ = [
    "image_grid",
    "reconstruction_grid",
    "training_curves",
    "latent_manifold",
    "latent_scatter",
    "interpolation_strip",
    "class_grid",
    "save_png",
    "plain_text",
]

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]  # where a PNG goes

DPI = 100
_PAD = 2  # pixels of white between image tiles
_TILE_INCHES = 0.75  # one 28x28 tile; 8 columns of MNIST make a ~6 inch wide grid
_MAX_WIDTH = 12.0  # inches
_PANEL = (1.3, 0.95)  # inches per small vector panel (width, height)


# --------------------------------------------------------------------------- helpers


def plain_text(text: Any) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so a name such as
    ``$\\frac{1$`` or ``a$b$c`` (a class, run, column or covariate name) is neither parsed as
    mathtext (an unbalanced one crashed the figure) nor drawn as math. Matplotlib reads a
    string without unescaped ``$`` as plain text, backslashes included, and turns ``\\$`` back
    into ``$``. Every user-supplied string that reaches a figure goes through this."""
    return str(text).replace("$", r"\$")


def _numpy(x: ArrayLike | Sequence[Any], what: str) -> np.ndarray:
    """A float64 numpy copy of a tensor or array (detached, on the CPU)."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise VaelabError(
            f"{what} must be a tensor or numeric array, got {type(x).__name__}"
        ) from e


def _kind(shape: tuple[int, ...], what: str) -> str:
    """``"image"`` for (C, H, W) with C in {1, 3}, ``"vector"`` for (D,); else an error."""
    if len(shape) == 3 and shape[0] in (1, 3):
        return "image"
    if len(shape) == 1:
        return "vector"
    raise VaelabError(
        f"{what} has examples of shape {shape}; plots need images (C, H, W) with C = 1 or 3, "
        "or vectors (D,)"
    )


def _display(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> display-ready [N, H, W] (gray) or [N, H, W, 3] (RGB), in [0, 1]."""
    images = np.clip(images, 0.0, 1.0)
    if images.shape[1] == 1:
        return images[:, 0]  # [N, H, W]
    return images.transpose(0, 2, 3, 1)  # [N, H, W, 3]


def _tile(
    cells: Sequence[np.ndarray | None],
    ncol: int,
    *,
    pad: int = _PAD,
    group_rows: int = 1,
    group_gap: int = 0,
    first_gap: int = 0,
) -> tuple[np.ndarray, list[float], list[float]]:
    """Tile equally sized display images row by row onto a white canvas.

    ``None`` cells stay blank. Every ``group_rows`` rows an extra ``group_gap`` pixels of
    space is added, and ``first_gap`` pixels after the first row. ``pad`` pixels of white
    separate the tiles. Returns the canvas and the pixel centres of its rows and columns.
    """
    first = next(c for c in cells if c is not None)
    h, w = first.shape[:2]
    nrow = math.ceil(len(cells) / ncol)
    n_gaps = (nrow - 1) // group_rows
    height = pad + nrow * (h + pad) + n_gaps * group_gap + (first_gap if nrow > 1 else 0)
    width = pad + ncol * (w + pad)
    canvas = np.ones((height, width, *first.shape[2:]))
    tops = [pad + r * (h + pad) + (r // group_rows) * group_gap + (first_gap if r > 0 else 0) for r in range(nrow)]
    lefts = [pad + c * (w + pad) for c in range(ncol)]
    for i, cell in enumerate(cells):
        if cell is not None:
            top, left = tops[i // ncol], lefts[i % ncol]
            canvas[top : top + h, left : left + w] = cell
    return canvas, [t + (h - 1) / 2 for t in tops], [x + (w - 1) / 2 for x in lefts]


def _imshow(ax: Axes, canvas: np.ndarray) -> None:
    """Draw a tiled canvas: grayscale with vmin 0 / vmax 1, or RGB, square pixels."""
    if canvas.ndim == 2:
        ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)


def _image_figure(
    canvas: np.ndarray,
    ncol: int,
    *,
    tile_width: int,
    extra: float = 0.0,
    max_width: float = _MAX_WIDTH,
) -> Figure:
    """A figure sized so that one 28-pixel tile is about ``_TILE_INCHES`` wide."""
    cell = float(np.clip(_TILE_INCHES * tile_width / 28, 0.4, 1.5))
    width = float(np.clip(ncol * cell, 2.5, max_width))
    height = width * canvas.shape[0] / canvas.shape[1] + 0.5 + extra
    # "compressed" removes the slack around fixed-aspect image axes
    return Figure(figsize=(width, min(height, 16.0)), dpi=DPI, layout="compressed")


def _ylim(*arrays: np.ndarray) -> tuple[float, float]:
    """A shared value range over all finite entries, with a 5% margin."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    margin = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - margin, hi + margin


_GAP = 0.18  # space between small panels, in panel widths


def _vector_grid(
    layers: Sequence[tuple[np.ndarray, dict[str, Any]]], ncol: int, *, legend: bool = False
) -> Figure:
    """Small multiples of vectors drawn in ONE axes (fast: one collection per layer).

    ``layers`` holds ``(values [N, D], style)`` pairs drawn on top of each other, panel i
    showing row i of every layer against the dimension index. All panels share one value
    range; the left edge is labelled with it, the bottom edge with the dimension indices.
    """
    n, d = layers[0][0].shape
    nrow = math.ceil(n / ncol)
    lo, hi = _ylim(*(values for values, _ in layers))
    xs = np.linspace(0.06, 0.94, d) if d > 1 else np.array([0.5])
    step = 1.0 + _GAP

    def y_of(v: np.ndarray) -> np.ndarray:
        return 0.04 + 0.92 * (v - lo) / (hi - lo)

    origins = [((i % ncol) * step, (nrow - 1 - i // ncol) * step) for i in range(n)]
    fig = Figure(
        figsize=(min(ncol * _PANEL[0] + 1.0, _MAX_WIDTH), nrow * _PANEL[1] + 1.0 + 0.3 * legend),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.add_subplot()
    corners = np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], dtype=float)  # [5, 2]
    frames = [corners + origin for origin in origins]
    ax.add_collection(LineCollection(frames, colors="0.8", linewidths=0.8))
    if lo < 0 < hi:
        zero = float(y_of(np.zeros(1))[0])
        zeros = [[(x0, y0 + zero), (x0 + 1, y0 + zero)] for x0, y0 in origins]
        ax.add_collection(LineCollection(zeros, colors="0.75", linewidths=0.6, linestyles="--"))
    handles = []
    for values, style in layers:
        lines = [np.column_stack([x0 + xs, y0 + y_of(v)]) for (x0, y0), v in zip(origins, values)]
        color, label = style.get("color", "C0"), style.get("label")
        ax.add_collection(LineCollection(lines, colors=color, linewidths=1.0))
        if d <= 40:
            pts = np.concatenate(lines)
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color=color, linewidths=0)
        handles.append(Line2D([], [], color=color, marker="o", markersize=3,
                              label=None if label is None else plain_text(label)))
    ax.set_xlim(-0.05, ncol * step - _GAP + 0.05)
    ax.set_ylim(-0.05, nrow * step - _GAP + 0.05)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(labelsize=7, length=2)
    # value scale on the left of every row, dimension indices under the bottom panels
    nice = [v for v in MaxNLocator(3).tick_values(lo, hi) if lo <= v <= hi]
    rows_y0 = [y0 for _, y0 in origins[::ncol]]
    ax.set_yticks(
        [y0 + float(y_of(np.array(v))) for y0 in rows_y0 for v in nice],
        [f"{v:g}" for _ in rows_y0 for v in nice],
    )
    last_row = origins[(nrow - 1) * ncol :]
    xticks = [x0 + xs[j] for x0, _ in last_row for j in sorted({0, d - 1})]
    ax.set_xticks(xticks, [str(j) for _ in last_row for j in sorted({0, d - 1})])
    ax.set_xlabel(f"dimension (0 to {d - 1})", fontsize=9)
    ax.set_ylabel("value (same scale in every panel)", fontsize=9)
    if legend:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    return fig


def _title(fig: Figure, title: str | None, default: str) -> None:
    text = default if title is None else title
    if text:
        fig.suptitle(plain_text(text), fontsize=11)


def save_png(fig: Figure, path: PathLike | None = None, *, crop: bool = False) -> Any:
    """Render ``fig`` to PNG: its bytes when ``path`` is None, else written to ``path``
    atomically (temp file in the same folder, then replace) and the path returned.

    ``crop`` trims the slack around fixed-aspect images (it costs a second draw); figures
    without it rely on their constrained layout for margins.
    """
    FigureCanvasAgg(fig)  # attach the Agg canvas; no global backend involved
    buf = io.BytesIO()
    try:
        bbox = {"bbox_inches": "tight", "pad_inches": 0.1} if crop else {}
        fig.savefig(buf, format="png", dpi=DPI, **bbox)
    finally:
        fig.clear()  # drop artists and data now rather than at garbage collection
    if path is None:
        return buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())  # the run's one safe writer: fsync, permissions, one-line errors
    return path


# --------------------------------------------------------------------------- figures


@overload
def image_grid(x: ArrayLike, path: None = None, *, nrow: int | None = None, title: str | None = None) -> bytes: ...
@overload
def image_grid(x: ArrayLike, path: PathLike, *, nrow: int | None = None, title: str | None = None) -> Path: ...
def image_grid(
    x: ArrayLike, path: PathLike | None = None, *, nrow: int | None = None, title: str | None = None
) -> Path | bytes:
    """A tiled grid of examples ``[N, *shape]``.

    Images are tiled on a white background (64 MNIST digits make a ~6 x 6 inch picture);
    vectors get one small line plot each, all panels sharing their axes (x: dimension index,
    y: value).

    Args:
        x: examples ``[N, C, H, W]`` (C = 1 or 3) or ``[N, D]``.
        path: where to write the PNG (``None``: return its bytes).
        nrow: examples per row (as in ``torchvision.utils.make_grid``); default
            ``ceil(sqrt(N))``.
        title: figure title; ``None`` gives ``"N examples"``.
    """
    data = _numpy(x, "x")
    if data.ndim < 2 or data.shape[0] == 0:
        raise VaelabError(f"x must be a non-empty batch [N, *shape], got shape {tuple(data.shape)}")
    n = data.shape[0]
    ncol = min(nrow if nrow is not None else math.ceil(math.sqrt(n)), n)
    if ncol < 1:
        raise VaelabError(f"nrow must be a positive integer, got {nrow}")
    default = f"{n} example{'s' if n > 1 else ''}"
    is_image = _kind(data.shape[1:], "x") == "image"
    if is_image:
        canvas, _, _ = _tile(list(_display(data)), ncol)
        fig = _image_figure(canvas, ncol, tile_width=data.shape[-1])
        ax = fig.add_subplot()
        _imshow(ax, canvas)
        ax.set_axis_off()
    else:
        fig = _vector_grid([(data, {"color": "C0"})], ncol)
    _title(fig, title, default)
    return save_png(fig, path, crop=is_image)


@overload
def reconstruction_grid(x: ArrayLike, x_rec: ArrayLike, path: None = None, *, n: int = 16,
                        title: str | None = None) -> bytes: ...
@overload
def reconstruction_grid(x: ArrayLike, x_rec: ArrayLike, path: PathLike, *, n: int = 16,
                        title: str | None = None) -> Path: ...
def reconstruction_grid(
    x: ArrayLike, x_rec: ArrayLike, path: PathLike | None = None, *, n: int = 16, title: str | None = None
) -> Path | bytes:
    """The first ``n`` inputs beside their reconstructions.

    Images: rows alternate "input" / "reconstruction" (labelled on the left), each
    reconstruction directly below its input, 8 pairs per row (more when n > 32, to keep the
    picture about square). Vectors: one panel per example with the input (grey) and its
    reconstruction (orange) overlaid.

    Args:
        x: inputs ``[N, *shape]``.
        x_rec: reconstructions of the same shape, e.g. ``model.decode(model.encode(x).mean).mean``.
        path: where to write the PNG (``None``: return its bytes).
        n: how many examples to show (at most N).
        title: figure title; ``None`` gives ``"Inputs and their reconstructions"``.
    """
    a, b = _numpy(x, "x"), _numpy(x_rec, "x_rec")
    if a.shape != b.shape:
        raise VaelabError(
            f"x has shape {tuple(a.shape)} but x_rec has shape {tuple(b.shape)}; they must match"
        )
    if a.ndim < 2 or a.shape[0] == 0 or n < 1:
        raise VaelabError(
            f"need a non-empty batch [N, *shape] and n >= 1, got shape {tuple(a.shape)}, n={n}"
        )
    a, b = a[:n], b[:n]
    n = a.shape[0]
    default = "Inputs and their reconstructions"
    is_image = _kind(a.shape[1:], "x") == "image"
    if is_image:
        ncol = min(n, max(8, math.ceil(math.sqrt(2 * n))))  # 8 pairs a row, more for large n
        da, db = _display(a), _display(b)
        cells: list[np.ndarray | None] = []
        for start in range(0, n, ncol):
            for src in (da, db):
                row = list(src[start : start + ncol])
                cells += row + [None] * (ncol - len(row))
        canvas, rows, _ = _tile(cells, ncol, group_rows=2, group_gap=3 * _PAD)
        fig = _image_figure(canvas, ncol, tile_width=a.shape[-1])
        ax = fig.add_subplot()
        _imshow(ax, canvas)
        ax.set_xticks([])
        ax.set_yticks(rows, ["input", "reconstruction"] * (len(rows) // 2), fontsize=8)
        ax.tick_params(axis="y", length=0)
    else:
        ncol = min(n, 4)
        layers = [
            (a, {"color": "0.5", "label": "input"}),
            (b, {"color": "C1", "label": "reconstruction"}),
        ]
        fig = _vector_grid(layers, ncol, legend=True)
    _title(fig, title, default)
    return save_png(fig, path, crop=is_image)


_CURVES = (
    ("elbo", "ELBO (higher is better)"),
    ("reconstruction", r"Reconstruction $\mathrm{E}_q[\log p(x|z)]$"),
    ("kl", r"KL$(q(z|x)\,\|\,p(z))$"),
)


def _series(metrics: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for records where ``key`` holds a finite number; others are skipped."""
    epochs, values = [], []
    for i, record in enumerate(metrics):
        value = record.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            epoch = record.get("epoch")
            epochs.append(float(epoch) if epoch is not None else float(i + 1))
            values.append(value)
    return epochs, values


@overload
def training_curves(metrics: Sequence[Mapping[str, Any]], path: None = None) -> bytes: ...
@overload
def training_curves(metrics: Sequence[Mapping[str, Any]], path: PathLike) -> Path: ...
def training_curves(metrics: Sequence[Mapping[str, Any]], path: PathLike | None = None) -> Path | bytes:
    """Three panels, ELBO, reconstruction term and KL, each training vs validation by epoch.

    Args:
        metrics: per-epoch records with keys ``epoch``, ``train_elbo``,
            ``train_reconstruction``, ``train_kl``, ``val_elbo``, ``val_reconstruction``,
            ``val_kl`` (values in nats per example). Missing, ``None`` or non-finite values
            are skipped; a record without ``epoch`` is placed at its 1-based position. The
            legend of the ELBO panel names the best validation ELBO and its epoch.
        path: where to write the PNG (``None``: return its bytes).
    """
    fig = Figure(figsize=(13.0, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (key, name) in zip(axes, _CURVES):
        drawn = False
        for split, label, style in (("train", "training", "-"), ("val", "validation", "--")):
            epochs, values = _series(metrics, f"{split}_{key}")
            if not values:
                continue
            if key == "elbo" and split == "val":
                best = int(np.argmax(values))
                label += f" (best {values[best]:.2f} at epoch {epochs[best]:g})"
            marker = "o" if len(values) <= 30 else None
            ax.plot(epochs, values, style, marker=marker, markersize=3, label=label)
            drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values recorded", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per example")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle("Training curves (ELBO = reconstruction - KL)", fontsize=11)
    return save_png(fig, path)


def _tick_subset(n: int, most: int = 7) -> list[int]:
    """About ``most`` evenly spread indices out of ``range(n)``, first and last included."""
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(n, most))})


@overload
def latent_manifold(model: VAE, path: None = None, *, n: int = 20, span: float | None = None) -> bytes: ...
@overload
def latent_manifold(model: VAE, path: PathLike, *, n: int = 20, span: float | None = None) -> Path: ...
@torch.no_grad()
def latent_manifold(
    model: VAE, path: PathLike | None = None, *, n: int = 20, span: float | None = None
) -> Path | bytes:
    """Decoder means over an ``n x n`` grid of 2-D latents, tiled into one picture.

    By default the grid follows the quantiles of the N(0, 1) prior: probabilities evenly
    spaced in [0.05, 0.95] mapped through the inverse CDF, so that every tile covers the
    same prior mass (z from -1.64 to 1.64). With ``span`` the grid is evenly spaced in z on
    [-span, span] instead. Axes are labelled in z units (z1 right, z2 up; the tiles are
    evenly spaced, the tick labels give each tile's z).

    Only image models are supported: a model with vector data raises
    :class:`~vaelab.errors.VaelabError` (a ``ValueError``), as does ``latent_dim != 2``; for
    vector data plot ``model.sample(n)`` with :func:`image_grid` instead.

    Args:
        model: a VAE with ``latent_dim == 2`` and image data ``(C, H, W)``.
        path: where to write the PNG (``None``: return its bytes).
        n: tiles per side.
        span: ``None`` for the quantile grid, else the half-width of an even grid in z.
    """
    if model.latent_dim != 2:
        raise VaelabError(
            f"latent_manifold needs a model with latent_dim 2, this one has {model.latent_dim}; "
            "use latent_scatter on a 2-D projection of the codes instead"
        )
    if _kind(tuple(model.x_shape), "the model's data") != "image":
        raise VaelabError(
            f"latent_manifold draws images, but the model's data have shape "
            f"{tuple(model.x_shape)}; plot model.sample(n) with image_grid instead"
        )
    if n < 2:
        raise VaelabError(f"n must be at least 2 tiles per side, got {n}")
    if span is None:
        probs = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
        values = torch.distributions.Normal(0.0, 1.0).icdf(probs)  # [n]
        how = "N(0,1) quantiles 5% to 95%"
    else:
        if not span > 0:
            raise VaelabError(f"span must be positive, got {span}")
        values = torch.linspace(-span, span, n, dtype=torch.float64)
        how = f"z evenly spaced in [-{span:g}, {span:g}]"
    z1 = values  # columns, left to right
    z2 = values.flip(0)  # rows, top to bottom: z2 increases upwards
    row_z2, col_z1 = torch.meshgrid(z2, z1, indexing="ij")  # [n, n] each
    grid = torch.stack([col_z1, row_z2], dim=-1).reshape(-1, 2)  # [n*n, 2], row-major tiles
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    was_training = model.training
    model.eval()
    try:
        means = model.decode(grid.to(device, dtype)).mean  # [n*n, C, H, W]
    finally:
        model.train(was_training)
    images = _display(_numpy(means, "decoded means"))
    canvas, rows, cols = _tile(list(images), n, pad=0)  # a seamless picture of the manifold
    fig = _image_figure(canvas, n, tile_width=images.shape[2], max_width=8.0)
    ax = fig.add_subplot()
    _imshow(ax, canvas)
    ticks = _tick_subset(n)
    ax.set_xticks([cols[i] for i in ticks], [f"{float(z1[i]):.2f}" for i in ticks], fontsize=8)
    ax.set_yticks([rows[i] for i in ticks], [f"{float(z2[i]):.2f}" for i in ticks], fontsize=8)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"Decoder means E[x|z] on a {n}x{n} grid of z ({how})", fontsize=10)
    return save_png(fig, path, crop=True)


@overload
def latent_scatter(z_2d: ArrayLike, path: None = None, *, labels: ArrayLike | Sequence[Any] | None = None,
                   title: str | None = None, xlabel: str = "z1", ylabel: str = "z2") -> bytes: ...
@overload
def latent_scatter(z_2d: ArrayLike, path: PathLike, *, labels: ArrayLike | Sequence[Any] | None = None,
                   title: str | None = None, xlabel: str = "z1", ylabel: str = "z2") -> Path: ...
def latent_scatter(
    z_2d: ArrayLike,
    path: PathLike | None = None,
    *,
    labels: ArrayLike | Sequence[Any] | None = None,
    title: str | None = None,
    xlabel: str = "z1",
    ylabel: str = "z2",
) -> Path | bytes:
    """A scatter plot of 2-D points, e.g. posterior means of a 2-D latent space.

    With ``labels``: up to 20 distinct labels (integers or strings) get one colour each and
    a legend; numeric labels with more distinct values get a continuous colour scale and a
    colorbar.

    Args:
        z_2d: points ``[N, 2]``.
        path: where to write the PNG (``None``: return its bytes).
        labels: one label per point, or ``None``.
        title: figure title; ``None`` gives ``"Latent codes (N points)"``.
        xlabel, ylabel: axis labels.
    """
    z = _numpy(z_2d, "z_2d")
    if z.ndim != 2 or z.shape[1] != 2 or z.shape[0] == 0:
        raise VaelabError(f"z_2d must have shape [N, 2] with N >= 1, got {tuple(z.shape)}")
    n = z.shape[0]
    size = float(np.clip(6000 / n, 4, 30))
    alpha = 0.8 if n <= 2000 else 0.5
    fig = Figure(figsize=(6.5, 5.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=size, alpha=alpha, linewidths=0, color="C0")
    else:
        lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        lab = lab.reshape(-1)  # [N]
        if lab.shape[0] != n:
            raise VaelabError(f"labels has {lab.shape[0]} entries but z_2d has {n} points")
        classes = np.unique(lab)
        numeric = np.issubdtype(lab.dtype, np.number)
        whole = numeric and bool(np.all(np.isfinite(classes) & (classes == np.round(classes))))
        if (whole or not numeric) and len(classes) <= 20:
            palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for i, c in enumerate(classes):
                mask = lab == c  # [N]
                name = f"{c:g}" if numeric else str(c)
                ax.scatter(z[mask, 0], z[mask, 1], s=size, alpha=alpha, linewidths=0,
                           color=palette(i), label=plain_text(name))
            ax.legend(title="label", fontsize=8, title_fontsize=8, framealpha=0.8,
                      markerscale=max(1.0, (20 / size) ** 0.5),
                      loc="center left", bbox_to_anchor=(1.02, 0.5))
        elif numeric:
            points = ax.scatter(z[:, 0], z[:, 1], c=lab.astype(np.float64), s=size,
                                alpha=alpha, linewidths=0, cmap="viridis")
            fig.colorbar(points, ax=ax, label="label")
        else:
            raise VaelabError(
                f"labels has {len(classes)} distinct non-numeric values; at most 20 can be coloured"
            )
    ax.set_xlabel(plain_text(xlabel))
    ax.set_ylabel(plain_text(ylabel))
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title(f"Latent codes ({n} points)" if title is None else plain_text(title), fontsize=11)
    return save_png(fig, path)


@overload
def interpolation_strip(x_path: ArrayLike, path: None = None, *, title: str | None = None) -> bytes: ...
@overload
def interpolation_strip(x_path: ArrayLike, path: PathLike, *, title: str | None = None) -> Path: ...
def interpolation_strip(x_path: ArrayLike, path: PathLike | None = None, *, title: str | None = None) -> Path | bytes:
    """Decoded examples along one or several interpolation paths.

    Images: one row of tiles per path, steps from left to right, the x axis labelled with
    the interpolation fraction t in [0, 1]. Vectors: one panel per path with every step
    drawn as a line, coloured from the start (dark) to the end (yellow) of the path.

    Args:
        x_path: ``[steps, *shape]`` for one path or ``[rows, steps, *shape]`` for several,
            where ``shape`` is ``(C, H, W)`` or ``(D,)``.
        path: where to write the PNG (``None``: return its bytes).
        title: figure title; ``None`` gives ``"Interpolation in latent space"``.
    """
    data = _numpy(x_path, "x_path")
    if data.ndim in (2, 4):  # one path: [steps, D] or [steps, C, H, W]
        data = data[None]
    if data.ndim not in (3, 5) or data.shape[0] == 0 or data.shape[1] == 0:
        raise VaelabError(
            "x_path must be [steps, *shape] or [rows, steps, *shape] with shape (C, H, W) "
            f"or (D,), "
            f"got {tuple(data.shape)}"
        )
    rows, steps = data.shape[:2]
    ts = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
    default = "Interpolation in latent space"
    is_image = _kind(data.shape[2:], "x_path") == "image"
    if is_image:
        images = _display(data.reshape(rows * steps, *data.shape[2:]))
        canvas, row_centres, cols = _tile(list(images), steps)
        fig = _image_figure(canvas, steps, tile_width=data.shape[-1], extra=0.3)
        ax = fig.add_subplot()
        _imshow(ax, canvas)
        ticks = _tick_subset(steps, most=11)
        ax.set_xticks([cols[i] for i in ticks], [f"{ts[i]:.2g}" for i in ticks], fontsize=8)
        ax.set_xlabel("interpolation fraction t (0 = start, 1 = end)", fontsize=9)
        if rows > 1:
            ax.set_yticks(row_centres, [f"path {r + 1}" for r in range(rows)], fontsize=8)
            ax.tick_params(axis="y", length=0)
        else:
            ax.set_yticks([])
    else:
        ncol = 2 if rows == 4 else min(rows, 3)
        nrow = math.ceil(rows / ncol)
        size = (min(ncol * 3.4 + 1.4, _MAX_WIDTH), nrow * 2.4 + 0.9)
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        axes = np.asarray(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)).ravel()
        cmap = colormaps["viridis"]
        dims = np.arange(data.shape[2])
        for r, ax in enumerate(axes):
            if r >= rows:
                ax.set_visible(False)
                continue
            segments = [np.column_stack([dims, v]) for v in data[r]]
            colors = [cmap(t) for t in ts]  # dark at the start, yellow at the end
            ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.2))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if rows > 1:
                ax.set_title(f"path {r + 1}", fontsize=9)
            if r + ncol >= rows:  # nothing drawn below: keep this panel's x tick labels
                ax.xaxis.set_tick_params(labelbottom=True)
        axes[0].set_xlim(-0.5, data.shape[2] - 0.5)
        axes[0].set_ylim(*_ylim(data))
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=list(axes[:rows]),
                     label="interpolation fraction t", shrink=0.9)
        fig.supxlabel("dimension", fontsize=9)
        fig.supylabel("value", fontsize=9)
    _title(fig, title, default)
    return save_png(fig, path, crop=is_image)


@overload
def class_grid(x: ArrayLike, path: None = None, *, row_labels: Sequence[str], separate_first: bool = False,
               title: str | None = None) -> bytes: ...
@overload
def class_grid(x: ArrayLike, path: PathLike, *, row_labels: Sequence[str], separate_first: bool = False,
               title: str | None = None) -> Path: ...
def class_grid(
    x: ArrayLike,
    path: PathLike | None = None,
    *,
    row_labels: Sequence[str],
    separate_first: bool = False,
    title: str | None = None,
) -> Path | bytes:
    """Rows of examples with a name each, e.g. samples of a conditional model, one row per class.

    Images: a grid, row r labelled ``row_labels[r]`` on the left. Vectors: one panel per row
    with its examples overlaid, example j in the same colour in every panel (so a column that
    holds one latent code decoded under every class reads across the panels).

    Args:
        x: ``[rows, columns, *shape]`` with ``shape`` ``(C, H, W)`` or ``(D,)``.
        path: where to write the PNG (``None``: return its bytes).
        row_labels: one name per row.
        separate_first: set the first row apart (e.g. the inputs above their decodings).
        title: figure title; ``None`` gives ``"rows x columns examples"``.
    """
    data = _numpy(x, "x")
    if data.ndim not in (3, 5) or data.shape[0] == 0 or data.shape[1] == 0:
        raise VaelabError(f"x must be [rows, columns, *shape] with shape (C, H, W) or (D,), got {tuple(data.shape)}")
    rows, cols = data.shape[:2]
    if len(row_labels) != rows:
        raise VaelabError(f"x has {rows} rows but {len(row_labels)} row labels were given; give one per row")
    default = f"{rows} x {cols} examples"
    is_image = _kind(data.shape[2:], "x") == "image"
    if is_image:
        images = _display(data.reshape(rows * cols, *data.shape[2:]))
        canvas, centres, _ = _tile(list(images), cols, first_gap=3 * _PAD if separate_first else 0)
        fig = _image_figure(canvas, cols, tile_width=data.shape[-1])
        ax = fig.add_subplot()
        _imshow(ax, canvas)
        ax.set_xticks([])
        ax.set_yticks(centres, [plain_text(label) for label in row_labels], fontsize=8)
        ax.tick_params(axis="y", length=0)
    else:
        ncol = min(rows, 4)
        nrow = math.ceil(rows / ncol)
        fig = Figure(figsize=(min(ncol * 3.0 + 0.8, _MAX_WIDTH), nrow * 2.1 + 0.8), dpi=DPI, layout="constrained")
        axes = np.asarray(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)).ravel()
        palette = colormaps["tab10" if cols <= 10 else "tab20"]
        dims = np.arange(data.shape[2])
        for r, ax in enumerate(axes):
            if r >= rows:
                ax.set_visible(False)
                continue
            for j in range(cols):
                ax.plot(dims, data[r, j], color=palette(j % palette.N), linewidth=1.0)
            ax.set_title(plain_text(row_labels[r]), fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(*_ylim(data))
        fig.supxlabel("dimension", fontsize=9)
        fig.supylabel("value", fontsize=9)
    _title(fig, title, default)
    return save_png(fig, path, crop=is_image)
