"""Images of any size and colour: the conv and resnet nets, image folders with their channels
and --resize, PixelCNN++'s colour logistic mixture, the colour data sets, pictures in colour.

Nothing here touches the network: the CIFAR-10 reader is tested on a small archive of the same
layout, fetched through a ``file://`` URL.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vaelab
from vaelab import registry
from vaelab.build import build_vae
from vaelab.data import colour, idx, load_data
from vaelab.data.images import parse_resize, read_image_folder
from vaelab.distributions import DiscretizedLogisticMixture, LogisticMixtureDecoder
from vaelab.distributions.logistic import RGBLogisticMixture
from vaelab.errors import VaelabError
from vaelab.nets import ConvDecoder, ConvEncoder, ResNetDecoder, ResNetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
NETS = ("mlp", "conv", "resnet")
SHAPES = ((1, 28, 28), (3, 32, 32), (3, 40, 24), (1, 7, 9))


# --- networks ------------------------------------------------------------------------------


def small(net: str) -> dict[str, object]:
    """Narrow nets, so that the tests stay fast (the shapes do not depend on the widths)."""
    return dict(hidden=[16], conv_channels=[4, 8], res_blocks=1) if net != "mlp" else dict(hidden=[16])


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("net", NETS)
def test_every_net_maps_every_shape_and_round_trips(net: str, shape: tuple[int, ...], tmp_path: Path) -> None:
    """Encoder ``[B, C, H, W] -> [B, n]``, decoder ``[N, D] -> [N, P * C, H, W]`` exactly, a VAE's
    log weights and samples, gradients reaching every parameter, and save/load of the weights."""
    torch.manual_seed(0)
    part = registry.get("net", net)
    options = part.resolve(small(net))
    encoder = part.build("encoder", shape, 6, 0, **options)
    decoder = part.build("decoder", 3, (2, *shape), 0, **options)
    x = torch.rand(5, *shape)
    assert encoder(x).shape == (5, 6)
    assert decoder(torch.randn(4, 3)).numel() == 4 * 2 * math.prod(shape)
    if net != "mlp":
        assert decoder(torch.randn(4, 3)).shape == (4, 2 * shape[0], *shape[1:])

    model = build_vae(shape, latent_dim=3, net=net, likelihood="bernoulli", **small(net))
    with torch.no_grad():  # off the initial values (a residual block's second convolution starts at zero)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    log_w = model.log_weights(x, 2)
    assert log_w.shape == (2, 5) and torch.isfinite(log_w).all()
    (-log_w.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert model.sample(2).shape == (2, *shape)

    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = build_vae(shape, latent_dim=3, net=net, likelihood="bernoulli", **small(net))
    fresh.load_state_dict(torch.load(tmp_path / "w.pt"))
    torch.manual_seed(1)
    a = model.log_weights(x, 2)
    torch.manual_seed(1)
    assert torch.equal(fresh.log_weights(x, 2), a)


@pytest.mark.parametrize("net", ("conv", "resnet"))
def test_conv_nets_read_a_context_and_reach_odd_sizes(net: str) -> None:
    torch.manual_seed(2)
    cls_e, cls_d = (ConvEncoder, ConvDecoder) if net == "conv" else (ResNetEncoder, ResNetDecoder)
    enc = cls_e((3, 33, 17), 4, channels=(4, 8, 8), hidden=8, context=2)
    dec = cls_d(5, (6, 33, 17), channels=(4, 8, 8), hidden=8, context=2)
    assert enc.feature_shape == (8, 4, 2)  # 33 -> 16 -> 8 -> 4, 17 -> 8 -> 4 -> 2
    c = torch.randn(3, 2)
    out = enc(torch.rand(3, 3, 33, 17), c)
    assert out.shape == (3, 4)
    assert not torch.equal(out, enc(torch.rand(3, 3, 33, 17), c + 1))
    assert dec(torch.randn(3, 5), c).shape == (3, 6, 33, 17)
    with pytest.raises(ValueError, match="needs a context of 2 numbers"):
        enc(torch.rand(3, 3, 33, 17))


def test_the_default_conv_net_is_the_classic_28x28_one() -> None:
    enc = registry.get("net", "conv").build("encoder", (1, 28, 28), 40, 0, **registry.get("net", "conv").defaults())
    assert enc.feature_shape == (64, 7, 7)  # 28 -> 14 -> 7
    assert [m.out_channels for m in enc.body if isinstance(m, nn.Conv2d)] == [32, 64]
    assert enc.head.hidden.out_features == 400


def test_a_net_that_cannot_reach_the_size_says_the_nearest_that_works() -> None:
    with pytest.raises(VaelabError, match=r"net 'conv' with 2 stride-2 stages .* at least 4x4 pixels, the data are 3x3; "
                                          r"the nearest size that works is 4x4"):
        build_vae((1, 3, 3), net="conv")
    with pytest.raises(VaelabError, match=r"net 'resnet' with 3 stride-2 stages \(--conv-channels 4,8,8\) .* the data "
                                          r"are 7x9; the nearest size that works is 8x9"):
        build_vae((1, 7, 9), net="resnet", conv_channels=[4, 8, 8])
    with pytest.raises(VaelabError, match=r"net 'conv' needs images of shape \(C, H, W\), the data have shape \(6,\); use --net mlp"):
        build_vae((6,), net="conv")


@pytest.mark.parametrize("likelihood", ("bernoulli", "continuous-bernoulli", "logistic-mixture"))
def test_colour_likelihoods_train_a_step(likelihood: str) -> None:
    torch.manual_seed(3)
    model = build_vae((3, 8, 6), latent_dim=2, net="conv", likelihood=likelihood, mixtures=2, **small("conv"))
    x = torch.randint(0, 256, (4, 3, 8, 6)).float() / 255
    model.decoder.check(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = -model.log_weights(x, 1).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(model.log_weights(x, 2)).all()
    model.decoder.check(model.sample(3, mean=False))
    mean = model.sample(3)
    assert mean.shape == (3, 3, 8, 6) and ((mean >= 0) & (mean <= 1)).all()


# --- the colour logistic mixture ------------------------------------------------------------


def random_rgb(batch: tuple[int, ...], m: int, bins: int, seed: int, coupled: bool = True) -> RGBLogisticMixture:
    g = torch.Generator().manual_seed(seed)
    loc = torch.rand(*batch, 3, m, generator=g, dtype=F64) * 1.6 - 0.3  # some beyond the edges
    scale = torch.exp(torch.rand(*batch, 3, m, generator=g, dtype=F64) * 6 - 6)  # 0.0025 .. 1
    coeffs = torch.rand(*batch, 3, m, generator=g, dtype=F64) * 2 - 1 if coupled else torch.zeros(*batch, 3, m, dtype=F64)
    return RGBLogisticMixture(torch.randn(*batch, m, generator=g, dtype=F64), loc, scale, coeffs, bins=bins)


def every_colour(bins: int) -> torch.Tensor:
    levels = torch.arange(bins, dtype=F64) / (bins - 1)
    return torch.cartesian_prod(levels, levels, levels)  # [bins^3, 3], red slowest


@pytest.mark.parametrize("bins", (2, 8, 16))
def test_colour_pixel_probabilities_sum_to_one(bins: int) -> None:
    """Brute force over all bins^3 colours of a pixel (256^3 is 16.7M values: reduced bins)."""
    d = random_rgb((4,), m=3, bins=bins, seed=bins)
    p = d.log_prob(every_colour(bins)[:, None, :]).exp()  # [bins^3, 4]
    torch.testing.assert_close(p.sum(0), torch.ones(4, dtype=F64), rtol=0, atol=1e-12)


def test_colour_pixel_matches_the_product_of_channel_logistics() -> None:
    """log P against a reference built from the one-channel DiscretizedLogisticMixture, one
    component at a time, with PixelCNN++'s shifted green and blue locations."""
    bins, m = 8, 3
    d = random_rgb((2,), m=m, bins=bins, seed=5)
    x = every_colour(bins)[:, None, :]  # [512, 1, 3]
    r, g, b = x.unbind(-1)  # [512, 1]
    log_pi = torch.log_softmax(d.logits, -1)
    parts = []
    for k in range(m):
        loc, scale, (alpha, beta, gamma) = d.loc[..., k], d.scale[..., k], d.coeffs[..., k].unbind(-1)
        def one(value, mu, s):  # noqa: E306
            return DiscretizedLogisticMixture(torch.zeros(*mu.shape, 1, dtype=F64), mu[..., None], s[..., None],
                                              bins=bins).log_prob(value)
        parts.append(log_pi[:, k] + one(r, loc[:, 0], scale[:, 0]) + one(g, loc[:, 1] + alpha * r, scale[:, 1])
                     + one(b, loc[:, 2] + beta * r + gamma * g, scale[:, 2]))
    torch.testing.assert_close(d.log_prob(x), torch.logsumexp(torch.stack(parts), 0), rtol=1e-12, atol=1e-12)


def test_colour_pixel_samples_follow_its_probabilities_and_its_mean() -> None:
    bins = 4
    d = random_rgb((), m=2, bins=bins, seed=7)
    colours = every_colour(bins)  # [64, 3]
    p = d.log_prob(colours).exp()  # [64]
    torch.manual_seed(8)
    n = 200_000
    draws = d.sample((n,))  # [n, 3]
    codes = (draws * (bins - 1)).round().long()
    counts = torch.bincount(codes[:, 0] * bins * bins + codes[:, 1] * bins + codes[:, 2], minlength=bins**3).to(F64)
    se = torch.sqrt(n * p * (1 - p))
    assert ((counts - n * p).abs() <= 5 * se + 1).all()  # every colour within 5 standard errors
    exact = (p[:, None] * colours).sum(0)  # E[x] by brute force
    mean = d.mean
    assert abs(float(mean[0] - exact[0])) < 1e-12  # red: exact
    free = random_rgb((), m=2, bins=bins, seed=7, coupled=False)  # no coupling: every channel exact
    p0 = free.log_prob(colours).exp()
    torch.testing.assert_close(free.mean, (p0[:, None] * colours).sum(0), rtol=0, atol=1e-12)


def test_colour_decoder_scores_pixels_with_pixelcnn_pp() -> None:
    """The decoder reads 4M numbers per value for (3, H, W), and its log p(x|z) is the sum over
    pixels of the colour pixel's log-probabilities."""
    torch.manual_seed(9)
    shape, m = (3, 2, 3), 2
    per_value = LogisticMixtureDecoder.params_per_value_for(m, shape)
    assert per_value == 4 * m and LogisticMixtureDecoder.params_per_value_for(m, (1, 2, 3)) == 3 * m
    net = nn.Linear(2, per_value * math.prod(shape)).double()
    decoder = LogisticMixtureDecoder(net, shape, mixtures=m)
    z = torch.randn(4, 5, 2, dtype=F64)  # [K, B, D]
    x = torch.randint(0, 256, (5, *shape)).double() / 255
    p = decoder(z)
    assert p.batch_shape == (4, 5) and p.event_shape == shape
    params = net(z).reshape(4, 5, 4, m, 3, 2, 3)  # [K, B, slot, M, C, H, W]
    share, loc, raw, coeff = (params[:, :, i].permute(0, 1, 4, 5, 3, 2) for i in range(4))  # [K, B, H, W, C, M]
    pixels = RGBLogisticMixture(share.sum(-2), loc, torch.exp(raw) + decoder.min_scale, torch.tanh(coeff))
    expected = pixels.log_prob(x.permute(0, 2, 3, 1)).sum((-1, -2))  # [K, B]
    torch.testing.assert_close(p.log_prob(x), expected, rtol=1e-12, atol=1e-10)
    draw = p.sample()
    assert draw.shape == (4, 5, *shape)
    decoder.check(draw)
    assert p.mean.shape == (4, 5, *shape)


# --- image folders ----------------------------------------------------------------------------


def save(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path)


def test_colour_folders_keep_their_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)  # H=5, W=7
    for i, im in enumerate(rgb):
        save(tmp_path / "rgb" / f"{i}.png", im)
    s = load_data(tmp_path / "rgb", val_fraction=0.0, test_fraction=0.0)
    assert s.shape == (3, 5, 7) and (s.kind, s.discrete_levels) == ("unit", 256)
    torch.testing.assert_close(s.train, torch.from_numpy(rgb.transpose(0, 3, 1, 2) / np.float32(255)))
    grey = rng.integers(0, 256, (4, 5, 7), dtype=np.uint8)
    for i, im in enumerate(grey):
        save(tmp_path / "grey" / f"{i}.png", im)
    save(tmp_path / "grey" / "alpha.png", np.stack([grey[0], np.full_like(grey[0], 255)], -1), "LA")  # stays grey
    g = read_image_folder(tmp_path / "grey")
    assert g.x.shape == (5, 1, 5, 7) and np.array_equal(g.x[:4, 0], grey)  # sorted by name: alpha.png last
    assert np.array_equal(g.x[4, 0], grey[0])


def test_alpha_and_palette_images_become_rgb(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    folder = tmp_path / "f"
    alpha = np.zeros((4, 4, 1), np.uint8)
    alpha[:2] = 255  # top half opaque, bottom half transparent
    save(folder / "a.png", np.concatenate([rgb, alpha], -1))  # RGBA
    palette = Image.fromarray(rgb).quantize(8)  # mode P
    palette.save(folder / "b.png")
    got = read_image_folder(folder)
    assert got.x.shape == (2, 3, 4, 4)
    assert np.array_equal(got.x[0, :, :2], rgb[:2].transpose(2, 0, 1))  # opaque: the colours
    assert (got.x[0, :, 2:] == 255).all()  # transparent: white
    assert np.array_equal(got.x[1], np.asarray(palette.convert("RGB")).transpose(2, 0, 1))


def test_a_folder_mixing_grey_and_colour_names_one_file_of_each(tmp_path: Path) -> None:
    save(tmp_path / "m" / "a.png", np.zeros((4, 4), np.uint8))
    save(tmp_path / "m" / "b.png", np.zeros((4, 4), np.uint8))
    save(tmp_path / "m" / "c.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(VaelabError, match=r"mixes grey and colour images: '.*a\.png' is grey \(mode L\), '.*c\.jpg' is "
                                          r"colour \(mode RGB\); convert them all to one kind"):
        load_data(tmp_path / "m")


def test_images_of_different_sizes_need_resize(tmp_path: Path) -> None:
    save(tmp_path / "s" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "s" / "b.png", np.full((12, 10, 3), 200, np.uint8))  # H=12, W=10
    with pytest.raises(VaelabError, match=r"images of different sizes: '.*a\.png' is 8x8 and '.*b\.png' is 12x10 "
                                          r"\(height x width\); pass --resize HxW .* --resize 8x8"):
        load_data(tmp_path / "s")
    s = load_data(tmp_path / "s", resize="6x9", val_fraction=0.0, test_fraction=0.0)
    assert s.shape == (3, 6, 9)
    assert sorted(float(v) for v in s.train.mean((1, 2, 3))) == pytest.approx([0.0, 200 / 255])  # flat stays flat
    from PIL import Image

    photo = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    save(tmp_path / "p" / "a.png", photo)
    expected = np.asarray(Image.fromarray(photo).resize((9, 6), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    assert np.array_equal(read_image_folder(tmp_path / "p", (6, 9)).x[0], expected)  # Pillow's filter, (W, H) order


@pytest.mark.parametrize("bad", ["32", "32x", "x32", "0x5", "32x32x3", "ax b", "-3x4"])
def test_a_resize_that_is_not_hxw_is_one_line(bad: str) -> None:
    with pytest.raises(VaelabError, match=r"--resize must be HxW"):
        parse_resize(bad)
    with pytest.raises(VaelabError, match=r"resize"):
        vaelab.config.TrainConfig(resize=bad)


def test_resize_is_for_image_folders_only(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 4), np.float32))
    assert parse_resize(" 32 X 24 ") == (32, 24) and parse_resize("") is None
    for source in (tmp_path / "x.npy", "digits", np.zeros((10, 4))):
        with pytest.raises(VaelabError, match=r"--resize 8x8 resizes the images of an image folder.*leave out --resize"):
            load_data(source, resize="8x8")


# --- colour data sets ------------------------------------------------------------------------


def test_patches_are_fixed_colour_patches_from_two_regions() -> None:
    a, b = load_data("patches", seed=0), load_data("patches", seed=1)
    assert a.shape == (3, 32, 32) and (a.kind, a.discrete_levels) == ("unit", 256)
    assert (len(a.train) + len(a.val), len(a.test)) == (4000, 1000)
    assert torch.equal(a.test, b.test)  # fixed: the seed draws only the validation part
    assert a.class_names == ("china", "flower") and a.test_labels[:4].tolist() == [0, 1, 0, 1]
    assert torch.bincount(a.test_labels).tolist() == [500, 500]
    assert torch.equal((a.train * 255).round() / 255, a.train)
    # train and test patches come from disjoint column ranges of each photo
    rng = np.random.default_rng(0)
    photo = np.broadcast_to(np.arange(100)[None, :, None], (40, 100, 3))  # each pixel holds its column
    left = colour.cut_patches(photo, 200, (0, 60), rng)
    right = colour.cut_patches(photo, 200, (60, 100), rng)
    assert left.shape == right.shape == (200, 3, 32, 32)
    assert left.max() < 60 and right.min() >= 60 and right.max() == 99 and left.min() == 0
    assert (np.diff(left[:, 0], axis=-1) == 1).all()  # whole patches, columns in order


def fake_cifar(path: Path, per_file: int) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-binary.tar.gz of the real layout with ``per_file`` records per batch file."""
    rng = np.random.default_rng(3)
    records = rng.integers(0, 256, (6 * per_file, 3073), dtype=np.uint8)
    records[:, 0] = np.arange(6 * per_file) % 10
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, raw: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        for i, name in enumerate([*(f"data_batch_{j}.bin" for j in range(1, 6)), "test_batch.bin"]):
            add(name, records[i * per_file:(i + 1) * per_file].tobytes())
        add("batches.meta.txt", "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                           "ship", "truck"]).encode() + b"\n\n")
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def test_cifar10_is_downloaded_checked_and_read_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    www.mkdir()
    pixels, labels = fake_cifar(www / "cifar-10-binary.tar.gz", per_file=10)
    monkeypatch.setattr(colour, "_CIFAR_PER_FILE", 10)
    monkeypatch.setattr(colour, "CIFAR10_MIRRORS", (www.as_uri() + "/",))
    monkeypatch.setattr(colour, "CIFAR10_FILE", ("cifar-10-binary.tar.gz", idx.md5sum(www / "cifar-10-binary.tar.gz")))
    s = load_data("cifar10", cache=tmp_path / "cache", val_fraction=0.0)
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz").is_file()
    assert s.shape == (3, 32, 32) and len(s.train) == 50 and len(s.test) == 10
    assert s.class_names[:3] == ("airplane", "automobile", "bird")
    torch.testing.assert_close(s.test, torch.from_numpy(pixels[50:] / np.float32(255)))
    assert s.test_labels.tolist() == labels[50:].tolist()
    # a damaged archive: one line, delete and download again
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"not a tar file"))
    with pytest.raises(VaelabError, match=r"CIFAR-10 archive '.*broken\.tar\.gz' is damaged.*download it again"):
        colour.read_cifar10_binary(broken)


def test_cifar10_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(colour, "CIFAR10_MIRRORS", ((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(VaelabError, match=r"could not download 'cifar-10-binary\.tar\.gz'.*check the network, or "
                                          r"download the file by hand and place it at '.*cifar10.*c32a1d4ab5d03f1284b67883e8d87530"):
        load_data("cifar10", cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.tar.gz"))


# --- pictures in colour --------------------------------------------------------------------------


def test_pictures_draw_colour_images_in_colour() -> None:
    from PIL import Image

    from vaelab.plots import image_grid
    from vaelab.serve.explorer import render

    x = torch.zeros(3, 3, 6, 6)
    for i in range(3):
        x[i, i] = 1.0  # red, green, blue
    picture = np.asarray(Image.open(io.BytesIO(image_grid(x, nrow=3))).convert("RGB")).reshape(-1, 3).astype(int)
    for colour_ in ([255, 0, 0], [0, 255, 0], [0, 0, 255]):
        assert (np.abs(picture - colour_).sum(1) < 60).any(), colour_
    import base64

    png = render(x[1], (3, 6, 6))["png"].split(",", 1)[1]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
    assert shown.shape == (6, 6, 3) and (shown == [0, 255, 0]).all()


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 colour PNGs of 10x12 pixels in two classes (red-ish and blue-ish)."""
    folder = tmp_path_factory.mktemp("data") / "colour"
    rng = np.random.default_rng(4)
    for i in range(40):
        im = rng.integers(0, 120, (10, 12, 3), dtype=np.uint8)
        im[..., 0 if i % 2 else 2] += 120
        save(folder / ("red" if i % 2 else "blue") / f"{i}.png", im)
    return folder


def test_cli_trains_conv_and_logistic_mixture_on_a_colour_folder_then_loads(colour_folder: Path, tmp_path: Path) -> None:
    from vaelab.cli import main

    args = ["train", "--data", colour_folder, "--resize", "8x8", "--net", "resnet", "--conv-channels", "4,8",
            "--res-blocks", "1", "--hidden", "16", "--likelihood", "logistic-mixture", "--mixtures", "2",
            "--latent-dim", "2", "--epochs", "1", "--batch-size", "16", "--eval-k", "4", "--threads", "1",
            "--quiet", "--out", tmp_path, "--name", "run"]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 0
    run = tmp_path / "run"
    spec = json.loads((run / "model.json").read_text())
    assert spec["x_shape"] == [3, 8, 8] and spec["net"]["name"] == "resnet"
    assert "bits_per_dim" in json.dumps(json.loads((run / "eval.json").read_text()))
    model = vaelab.load(run)
    assert model.config.resize == "8x8"
    x = model.test_set()[0]
    assert x.shape[1:] == (3, 8, 8)
    fresh = vaelab.load(run)
    torch.manual_seed(5)
    a = model.vae.log_weights(model.as_batch(x), 2)
    torch.manual_seed(5)
    assert torch.equal(fresh.vae.log_weights(fresh.as_batch(x), 2), a)


@pytest.mark.slow
def test_cli_trains_conv_with_the_logistic_mixture_on_patches(tmp_path: Path) -> None:
    from PIL import Image

    from vaelab.cli import main

    args = ["train", "--data", "patches", "--net", "conv", "--conv-channels", "4,8", "--hidden", "16",
            "--likelihood", "logistic-mixture", "--mixtures", "1", "--latent-dim", "2", "--epochs", "1",
            "--batch-size", "200", "--eval-k", "2", "--threads", "1", "--quiet", "--out", tmp_path, "--name", "p"]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 0
    result = json.loads((tmp_path / "p" / "eval.json").read_text())
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (3 * 32 * 32 * math.log(2)), rel=1e-12)
    picture = np.asarray(Image.open(tmp_path / "p" / "reconstructions.png").convert("RGB")).astype(int)
    assert (np.abs(picture[..., 0] - picture[..., 2]) > 30).any()  # the inputs are drawn in colour


def test_cli_refuses_bad_images_with_one_line_and_writes_nothing(colour_folder: Path, tmp_path: Path, refused) -> None:
    mixed = tmp_path / "mixed"
    save(mixed / "a.png", np.zeros((8, 8), np.uint8))
    save(mixed / "b.png", np.zeros((8, 8, 3), np.uint8))
    sizes = tmp_path / "sizes"
    save(sizes / "a.png", np.zeros((8, 8, 3), np.uint8))
    save(sizes / "b.png", np.zeros((9, 8, 3), np.uint8))
    tiny = tmp_path / "tiny"
    for i in range(4):
        save(tiny / f"{i}.png", np.full((3, 5, 3), 40 * i, np.uint8))
    out = tmp_path / "runs"
    base = ["train", "--epochs", "1", "--out", out, "--quiet"]
    refused([*base, "--data", mixed], "a.png", "b.png", "grey", "colour")
    refused([*base, "--data", sizes], "a.png", "b.png", "9x8", "--resize")
    refused([*base, "--data", colour_folder, "--resize", "32"], "--resize", "'32'")
    refused([*base, "--data", tiny, "--net", "conv"], "3x5", "4x5")
    refused([*base, "--data", "digits", "--resize", "8x8"], "--resize", "digits")
    assert not out.exists()


def test_explorer_uploads_to_a_colour_model_keep_colour_and_are_never_inverted() -> None:
    from PIL import Image

    from vaelab.serve.uploads import prepare_upload

    photo = np.full((10, 12, 3), 230, np.uint8)
    photo[3:7, 4:8] = [200, 30, 10]  # a red square on a light background
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    got = prepare_upload(buf.getvalue(), "photo.png", (3, 5, 6), background=0.1)  # the model's data: dark borders
    assert got.x.shape == (3, 5, 6) and not any("inverted" in n for n in got.notes)
    assert (got.x[:, 0, 0] > 0.85).all()  # the light border stays light (not inverted)
    assert got.x[0, 2, 2:4].min() > 0.6 and got.x[2, 2, 2:4].max() < 0.4  # the square stays red


def test_a_conv_model_json_of_vaelab_0_1_loads_as_its_own_28x28_nets() -> None:
    """model.json written before conv took any size has no conv_channels: it is read as the
    net 'conv-0.1', vaelab 0.1's layers (ReLU, the old layer names), so old weights load and
    compute what they did; a spec written now stays 'conv'."""
    from vaelab.build import build_model
    from vaelab.nets.conv_legacy import LegacyConvDecoder, LegacyConvEncoder
    from vaelab.spec import ModelSpec

    now = ModelSpec.create((1, 28, 28), net="conv", options={"hidden": [64]}).to_dict()
    assert ModelSpec.from_dict(now).net.name == "conv"
    old = {**now, "net": {"name": "conv", "hidden": [64]}}
    spec = ModelSpec.from_dict(old)
    assert spec.net.name == "conv-0.1"
    model = build_model(spec)
    assert isinstance(model.encoder.net, LegacyConvEncoder) and isinstance(model.decoder.net, LegacyConvDecoder)
    keys = set(model.state_dict())
    assert {"encoder.net.0.weight", "encoder.net.5.weight", "encoder.net.7.weight", "decoder.net.0.weight",
            "decoder.net.5.weight", "decoder.net.7.weight"} <= keys  # 0.1's names: its safetensors files load
    assert any(isinstance(m, torch.nn.ReLU) for m in model.encoder.net.modules())
    x = torch.rand(2, 1, 28, 28)
    assert model.log_weights(x, 3).shape == (3, 2)
    with pytest.raises(VaelabError, match="net 'conv-0.1' needs 28x28 images"):
        build_model(ModelSpec.from_dict({**old, "x_shape": [3, 32, 32]}))


def test_a_conv_run_of_vaelab_0_1_0_without_model_json_reads_as_conv_0_1(tmp_path: Path) -> None:
    from vaelab.config import TrainConfig
    from vaelab.run_folder import read_spec

    config = TrainConfig.from_mapping({"net": "conv", "hidden": [64]})
    spec = read_spec(tmp_path, config, [1, 28, 28])  # no model.json: 0.1.0's flat settings
    assert spec.net.name == "conv-0.1" and spec.net.options == {"hidden": [64]}
