"""Every figure function makes a real, non-blank PNG (its bytes, or a file written
atomically), without global state."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from vaelab import plots
from vaelab.build import build_vae

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path | bytes) -> np.ndarray:
    """Check that ``path`` (or the bytes) is a PNG with visible content and return its pixels [H, W, C]."""
    data = path if isinstance(path, bytes) else path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = imread(io.BytesIO(data))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.02, "the picture is (nearly) one colour"
    return img


def images(n: int = 16, channels: int = 1, size: int = 28) -> torch.Tensor:
    """Smooth blobs of varying position, [n, C, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    centre = torch.rand(n, 2, generator=g) * size  # [n, 2]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d2 = (ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / (2 * (size / 6) ** 2))  # [n, size, size]
    brightness = torch.rand(n, channels, 1, 1, generator=g)
    return blob[:, None].expand(n, channels, size, size) * brightness


def vectors(n: int = 16, d: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g).cumsum(-1)  # [n, d]


DATA = {"image": images, "rgb": lambda n=16: images(n, channels=3, size=12), "vector": vectors}


@pytest.mark.parametrize("kind", DATA)
def test_image_grid(tmp_path: Path, kind: str) -> None:
    x = DATA[kind](20)
    out = plots.image_grid(x, tmp_path / "grid.png", title="twenty examples")
    assert out == tmp_path / "grid.png"
    read_png(out)
    read_png(plots.image_grid(x.numpy(), str(tmp_path / "sub" / "grid4.png"), nrow=4))


def test_image_grid_64_mnist_is_about_six_inches(tmp_path: Path) -> None:
    img = read_png(plots.image_grid(images(64), tmp_path / "g.png"))
    h, w = img.shape[:2]  # 100 dpi
    assert 450 < w < 750 and 450 < h < 800


def test_grayscale_is_not_inverted_and_values_are_clamped(tmp_path: Path) -> None:
    x = torch.full((1, 1, 28, 28), -3.0)
    x[..., :14] = 5.0  # left half above 1 -> white, right half below 0 -> black
    img = read_png(plots.image_grid(x, tmp_path / "g.png", title=""))
    h, w = img.shape[:2]
    np.testing.assert_allclose(img[h // 2, int(0.3 * w), :3], 1.0, atol=0.02)
    np.testing.assert_allclose(img[h // 2, int(0.7 * w), :3], 0.0, atol=0.02)


def test_rgb_channels_keep_their_colour(tmp_path: Path) -> None:
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0] = 1.0  # pure red
    img = imread(plots.image_grid(x, tmp_path / "g.png", title=""))
    h, w = img.shape[:2]
    np.testing.assert_allclose(img[h // 2, w // 2, :3], [1.0, 0.0, 0.0], atol=0.02)


def test_unsupported_shapes_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        plots.image_grid(torch.rand(4, 2, 8, 8), tmp_path / "g.png")
    with pytest.raises(ValueError, match="must match"):
        plots.reconstruction_grid(torch.rand(4, 10), torch.rand(4, 9), tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", DATA)
def test_reconstruction_grid(tmp_path: Path, kind: str) -> None:
    x = DATA[kind](20)
    x_rec = 0.8 * x + 0.1
    read_png(plots.reconstruction_grid(x, x_rec, tmp_path / "r.png", n=5 if kind == "rgb" else 16))


def epoch_record(epoch: int) -> dict[str, float]:
    kl = 10.0 / epoch
    rec = -200.0 + 80.0 * (1 - 0.7**epoch)
    return {
        "epoch": epoch,
        "train_elbo": rec - kl,
        "train_reconstruction": rec,
        "train_kl": kl,
        "val_elbo": rec - kl - 2.0,
        "val_reconstruction": rec - 1.5,
        "val_kl": kl + 0.5,
    }


def test_training_curves(tmp_path: Path) -> None:
    read_png(plots.training_curves([epoch_record(e) for e in range(1, 21)], tmp_path / "c.png"))


def test_training_curves_with_missing_values(tmp_path: Path) -> None:
    records = [epoch_record(e) for e in range(1, 8)]
    del records[2]["val_elbo"]
    records[3]["val_kl"] = None
    records[4]["train_kl"] = float("nan")
    records[5] = {"epoch": 6, "train_elbo": -150.0}  # an epoch without validation
    read_png(plots.training_curves(records, tmp_path / "c.png"))
    read_png(plots.training_curves([{"epoch": 1}], tmp_path / "none.png"))  # nothing to draw


def test_latent_manifold_of_a_real_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_vae((1, 28, 28), latent_dim=2, hidden=[32])
    img = read_png(plots.latent_manifold(model, tmp_path / "m.png", n=8))
    assert img.shape[1] > 300
    read_png(plots.latent_manifold(model, tmp_path / "m3.png", n=5, span=3.0))
    assert model.training  # the model's mode is restored


def test_latent_manifold_rejects_wrong_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="latent_dim 2"):
        plots.latent_manifold(build_vae((1, 28, 28), latent_dim=3, hidden=[8]), tmp_path / "m.png")
    with pytest.raises(ValueError, match="image"):
        plots.latent_manifold(build_vae((10,), latent_dim=2, hidden=[8]), tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "labels",
    [
        None,
        torch.arange(200) % 10,
        np.arange(200) % 3 * 1.0,
        ["odd", "even"] * 100,
        np.linspace(-1, 1, 200),
    ],
    ids=["none", "int", "whole-float", "str", "continuous"],
)
def test_latent_scatter(tmp_path: Path, labels: object) -> None:
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(2))
    read_png(plots.latent_scatter(z, tmp_path / "s.png", labels=labels, title="codes"))


def test_latent_scatter_checks_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plots.latent_scatter(torch.randn(10, 3), tmp_path / "s.png")
    with pytest.raises(ValueError, match="labels"):
        plots.latent_scatter(torch.randn(10, 2), tmp_path / "s.png", labels=[1, 2])


@pytest.mark.parametrize("kind", DATA)
def test_interpolation_strip(tmp_path: Path, kind: str) -> None:
    ends = DATA[kind](6)
    t = torch.linspace(0, 1, 7).view(1, 7, *[1] * (ends.dim() - 1))
    x_path = ends[:3, None] * (1 - t) + ends[3:, None] * t  # [3, 7, *shape]
    read_png(plots.interpolation_strip(x_path, tmp_path / "rows.png"))
    read_png(plots.interpolation_strip(x_path[0], tmp_path / "one.png", title="one path"))


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "g.png"
    plots.image_grid(images(4), target)
    plots.reconstruction_grid(vectors(4), vectors(4), tmp_path / "r.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "r.png"]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not a private temp-file mode

    before = target.read_bytes()

    def broken_savefig(self: Figure, fname: object, **kwargs: object) -> None:
        fname.write(PNG_SIGNATURE)  # type: ignore[attr-defined]  # half a file, then fail
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.image_grid(images(4), target)
    assert target.read_bytes() == before  # the old figure is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "r.png"]


def test_import_leaves_matplotlib_global_state_alone() -> None:
    # A backend other than the default Agg is chosen, so that a switch to Agg would show.
    code = (
        "import sys, matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "import vaelab.plots\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print(before)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"


def test_without_a_path_every_figure_is_the_png_bytes_it_would_write(tmp_path: Path) -> None:
    model = build_vae((1, 8, 8), latent_dim=2, hidden=[8])
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    figures = {
        "image_grid": lambda p: plots.image_grid(images(9), p, title=""),
        "reconstruction_grid": lambda p: plots.reconstruction_grid(vectors(4), vectors(4) + 1, p),
        "training_curves": lambda p: plots.training_curves([epoch_record(e) for e in (1, 2, 3)], p),
        "latent_manifold": lambda p: plots.latent_manifold(model, p, n=4),
        "latent_scatter": lambda p: plots.latent_scatter(z, p, labels=torch.arange(50) % 4),
        "interpolation_strip": lambda p: plots.interpolation_strip(images(5), p),
        "class_grid": lambda p: plots.class_grid(images(6).reshape(2, 3, 1, 28, 28), p, row_labels=["a", "b"]),
    }
    for name, draw in figures.items():
        png = draw(None)
        assert isinstance(png, bytes), name
        read_png(png)
        assert draw(tmp_path / f"{name}.png").read_bytes() == png, name  # the same picture either way
    assert len(list(tmp_path.iterdir())) == len(figures)  # only the files asked for


def bands(png: bytes) -> np.ndarray:
    """[H] True where an image row has non-white pixels right of the row labels."""
    gray = imread(io.BytesIO(png))[..., :3].mean(-1)  # [H, W]
    return (gray[:, gray.shape[1] // 3 : -4] < 0.9).any(1)


def grid_rows(png: bytes) -> int:
    """The rows of tiles of a grid: bands of non-white image rows between white gaps."""
    dark = bands(png)
    return int(dark[0]) + int((dark[1:] & ~dark[:-1]).sum())


def row_gaps(png: bytes) -> np.ndarray:
    """Heights (pixels) of the white gaps between consecutive rows of tiles."""
    dark = bands(png)
    starts, ends = np.flatnonzero(dark[1:] & ~dark[:-1]) + 1, np.flatnonzero(dark[:-1] & ~dark[1:]) + 1
    return starts[1:] - ends[: len(starts) - 1]


@pytest.mark.parametrize("rows", [1, 2, 3, 10, 20])
def test_class_grid_draws_one_row_of_tiles_per_class(rows: int) -> None:
    x = torch.zeros(rows, 6, 1, 8, 8)  # black tiles: every row of tiles is a dark band
    x[..., 2:6, 3:5] = 1.0
    png = plots.class_grid(x, row_labels=[f"class {k}" for k in range(rows)], title="")
    apart = plots.class_grid(x, row_labels=[str(k) for k in range(rows)], separate_first=True, title="")
    assert grid_rows(png) == rows and grid_rows(apart) == rows
    plain_gaps, apart_gaps = row_gaps(png), row_gaps(apart)
    assert len(plain_gaps) == len(apart_gaps) == rows - 1
    if rows > 1:  # the first row set apart: a wider white gap below it than anywhere else
        assert apart_gaps[0] > plain_gaps.max() and apart_gaps[0] > apart_gaps[1:].max(initial=0)


@pytest.mark.parametrize("kind", DATA)
def test_class_grid_of_every_kind_and_its_checks(kind: str) -> None:
    x = DATA[kind](12)
    grid = x.reshape(3, 4, *x.shape[1:])  # 3 classes x 4 examples
    read_png(plots.class_grid(grid, row_labels=["zero", "one", "two"], title="by class"))
    with pytest.raises(ValueError, match="3 rows but 2 row labels"):
        plots.class_grid(grid, row_labels=["zero", "one"])
    with pytest.raises(ValueError, match="rows, columns"):
        plots.class_grid(x, row_labels=[str(i) for i in range(12)])
