"""The latent space explorer's API (``vaelab serve``) through Starlette's test client.

Three tiny trained runs: 8x8 digits with a 2-D latent space (the map is the latents), the same
with 3-D latents (the map is a PCA plane), and 16-D real vectors without labels (bar charts)
under a mixture-of-Gaussians prior (no per-dimension KL). Two conditional ones: digits given
the label (the page's class selector), and digits given the label and a continuous covariate
``dose`` under the prior p(z|c) (covariates come from a chosen test example); and the
semi-supervised M2 (a classifier q(y|x); encoding under the predicted class).
Every endpoint is called with good and bad input; bad input must be a 4xx with a one-line
``{"error": ...}`` and the server must go on answering. The run folder is never written to.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import pickle
import re
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import vaelab.runs
from vaelab.cli import main
from vaelab.data import load_data
from vaelab.model import Classifier
from vaelab.runs import interpolate_latents
from vaelab.serve import Explorer, create_app
from vaelab.serve.app import ApiError, Gate
from vaelab.serve.uploads import MAX_UPLOAD_BYTES

OCTET = {"content-type": "application/octet-stream"}  # how the page sends an upload
JSON = {"content-type": "application/json"}  # ... and everything else
QUIET: dict[str, Any] = {"epochs": 2, "eval_k": 0, "figures": False, "progress": False, "log": lambda m: None, "device": "cpu"}


def train(out: Path, name: str, **kw: Any) -> Path:
    model, _ = vaelab.runs.train(out=str(out), name=name, **{**QUIET, **kw})
    return model.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    vectors = np.random.default_rng(0).normal(size=(240, 16)).astype(np.float32)
    np.save(out / "vectors.npy", vectors)
    return {
        "2d": train(out, "d2", data="digits", hidden=[32], latent_dim=2),
        "3d": train(out, "d3", data="digits", hidden=[32], latent_dim=3),
        # a mixture prior: no per-dimension KL, dimensions ordered by activity
        "vec": train(out, "v", data=str(out / "vectors.npy"), hidden=[16], latent_dim=3, likelihood="gaussian",
                     prior="mog", prior_components=3),
        # a conditional VAE: p(x|z, label), q(z|x, label)
        "cond": train(out, "c", data="digits", condition_on=["label"], epochs=1, hidden=[16], latent_dim=2),
        # conditional on the label and a covariate the page cannot set, under the prior p(z|c)
        "cov": train(out, "cv", data=dose_data(out / "dose.npz"), condition_on=["label", "dose"], epochs=1,
                     hidden=[16], latent_dim=2, prior="conditional"),
        # the semi-supervised M2: a classifier q(y|x), the label a latent observed for 5 examples per class
        "m2": train(out, "m2", data="digits", condition_on=["label"], semi_supervised=True, labels_per_class=5,
                    epochs=1, hidden=[16], latent_dim=2),
    }


def dose_data(path: Path) -> str:
    """The digits with a random continuous covariate 'dose' beside the labels (an .npz file)."""
    d = load_data("digits")
    rng = np.random.default_rng(0)
    x, y = torch.cat([d.train, d.val]).numpy(), torch.cat([d.train_labels, d.val_labels]).numpy()
    np.savez(path, train=x, train_labels=y, train_dose=rng.normal(size=len(x)),
             test=d.test.numpy(), test_labels=d.test_labels.numpy(), test_dose=rng.normal(1.0, 2.0, size=len(d.test)))
    return str(path)


@pytest.fixture(scope="module")
def clients(runs: dict[str, Path]) -> dict[str, TestClient]:
    return {k: TestClient(create_app(v)) for k, v in runs.items()}


def png_array(data_url: str) -> np.ndarray:
    """A PNG data URL as float pixels in [0, 1] ``[H, W]``."""
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))), dtype=np.float64) / 255


def png_bytes(size: tuple[int, int], mode: str = "L", fmt: str = "PNG", colour: Any = 0) -> bytes:
    img = Image.new(mode, size, colour)
    for i in range(min(size)):  # a diagonal stroke
        img.putpixel((i, i), 255 if mode == "L" else (255,) * len(mode))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noise_png() -> bytes:
    """A PNG of random pixels (it does not compress, so cutting it short truncates the pixels)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    return body["error"]


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# --- info, map, dimensions -----------------------------------------------------------------------
def test_info_summarises_the_model_and_orders_dimensions_by_kl(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    info = clients["3d"].get("/api/info").json()
    assert info["latent_dim"] == 3 and info["x_shape"] == [1, 8, 8] and info["x_kind"] == "image"
    assert info["dims_by"] == "kl" and info["posterior"] == "gaussian" and info["prior"] == "normal"
    assert info["labelled"] and info["epochs"] == 2 and info["projection"]["kind"] == "pca"
    kls = [d["kl"] for d in info["dims"]]
    assert sorted(d["dim"] for d in info["dims"]) == [0, 1, 2] and kls == sorted(kls, reverse=True)
    # the closed-form KL of each dimension, averaged over the test set, from the model itself
    model = vaelab.load(runs["3d"], device="cpu")
    q = model.encode(model.test_set()[0])
    mu, var = q.mean.double(), q.stddev.double() ** 2
    kl = (0.5 * (mu**2 + var - 1 - var.log())).mean(0)
    for d in info["dims"]:
        assert d["kl"] == pytest.approx(float(kl[d["dim"]]), abs=1e-3)
        assert d["active"] == (d["kl"] >= 0.01 and d["activity"] >= 0.01)


def test_map_of_2d_latents_is_the_posterior_means(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    m = clients["2d"].get("/api/map").json()
    model = vaelab.load(runs["2d"], device="cpu")
    x, labels = model.test_set()
    assert m["projection"]["kind"] == "latent" and m["classes"] == list(range(10))
    assert m["labels"] == labels.tolist()
    np.testing.assert_allclose(m["coords"], model.encode(x).mean.numpy(), atol=1e-3)


def test_pca_plane_projects_and_lifts_consistently(runs: dict[str, Path]) -> None:
    ex = Explorer.from_run(runs["3d"])
    p = ex.projection
    torch.testing.assert_close(p.components @ p.components.T, torch.eye(2), atol=1e-5, rtol=0)
    c = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    torch.testing.assert_close(p.to_plane(p.lift(c)), c, atol=1e-5, rtol=0)
    # the first axis carries the most variance of the posterior means, the two at most all of it
    assert p.explained[0] >= p.explained[1] >= 0 and sum(p.explained) <= 1 + 1e-6
    torch.testing.assert_close(p.center.double(), ex.means.mean(0), atol=1e-5, rtol=0)


def test_vector_model_renders_values_and_has_no_labels(clients: dict[str, TestClient]) -> None:
    c = clients["vec"]
    info = c.get("/api/info").json()
    assert info["x_kind"] == "vector" and not info["labelled"] and info["prior"] == "mog"
    # the mixture prior does not factorise: no KL per dimension, ordered by activity instead
    assert info["dims_by"] == "activity" and all(d["kl"] is None for d in info["dims"])
    activity = [d["activity"] for d in info["dims"]]
    assert activity == sorted(activity, reverse=True)
    assert all(d["active"] == (d["activity"] >= 0.01) for d in info["dims"])
    assert len(c.get("/api/sample?n=3").json()["images"][0]["values"]) == 16  # z ~ the mixture
    assert c.get("/api/map").json()["labels"] is None
    out = c.post("/api/decode", json={"z": [0.0, 0.0, 0.0]}).json()
    assert set(out["image"]) == {"values"} and len(out["image"]["values"]) == 16


def test_a_run_whose_data_moved_still_serves_without_a_map(runs: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(runs["vec"], moved)
    doc = json.loads((moved / "config.json").read_text())
    doc["config"]["data"] = str(tmp_path / "gone.npy")
    (moved / "config.json").write_text(json.dumps(doc))
    c = TestClient(create_app(moved))
    info = c.get("/api/info").json()
    assert "could not be loaded" in info["note"] and info["n_map"] == 0 and info["dims"][0]["kl"] is None
    assert c.get("/api/map").json()["coords"] == []
    assert c.post("/api/decode", json={"z": [0, 0, 0]}).status_code == 200
    assert "could not be loaded" in error_of(c.get("/api/example/0"), 404)
    assert "does not exist" in error_of(c.post("/api/interpolate", json={"from": {"index": 0}, "to": {"z": [0, 0, 0]}}), 422)


# --- decoding -----------------------------------------------------------------------------------
def test_decode_z_returns_the_decoder_mean_as_png(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    z = [0.5, -1.0]
    out = clients["2d"].post("/api/decode", json={"z": z}).json()
    assert out["z"] == z and out["coords"] == pytest.approx(z)
    expected = vaelab.load(runs["2d"], device="cpu").decode(torch.tensor([z])).mean[0, 0].numpy()
    np.testing.assert_allclose(png_array(out["image"]["png"]), expected, atol=1 / 255 + 1e-6)


def test_decode_point_lifts_through_the_projection(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    info = clients["3d"].get("/api/info").json()["projection"]
    out = clients["3d"].post("/api/decode", json={"point": [1.0, -0.5]}).json()
    lifted = np.array(info["center"]) + np.array([1.0, -0.5]) @ np.array(info["components"])
    np.testing.assert_allclose(out["z"], lifted, atol=1e-4)
    assert out["coords"] == pytest.approx([1.0, -0.5], abs=1e-3)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"z": [' + b"9" * 5000 + b", 0]}", 400, "not valid JSON"),  # an integer too long for Python to read
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"z": [1, 2, 3]}', 422, "has 3 numbers; this model needs 2"),
        (b'{"z": [NaN, 0]}', 422, "NaN"),
        (b'{"z": [Infinity, 0]}', 422, "NaN or infinite"),
        (b'{"z": ["a", 0]}', 422, "list of 2 numbers"),
        (b'{"z": [true, 0]}', 422, "list of 2 numbers"),
        (b'{"z": 3}', 422, "list of 2 numbers"),
        (b'{"z": [1e300, 0]}', 422, "beyond"),
        (b'{"point": [1]}', 422, "'point' has 1 numbers"),
        (b"{}", 422, "either"),
        (b'{"z": [0, 0], "point": [0, 0]}', 422, "either"),
    ],
)
def test_decode_refuses_bad_requests(clients: dict[str, TestClient], body: bytes, status: int, says: str) -> None:
    c = clients["2d"]
    assert says in error_of(c.post("/api/decode", content=body, headers=JSON), status)
    assert c.post("/api/decode", json={"z": [0, 0]}).status_code == 200  # still serving


def test_oversized_json_body_is_refused(clients: dict[str, TestClient]) -> None:
    body = b'{"z": [' + b"0," * 40_000 + b"0]}"
    assert "larger than 64 KB;" in error_of(clients["2d"].post("/api/decode", content=body, headers=JSON), 413)


# --- samples, examples, interpolation -----------------------------------------------------------
def test_sample_draws_from_the_prior_and_is_seedable(clients: dict[str, TestClient]) -> None:
    c = clients["2d"]
    a, b = c.get("/api/sample?n=5&seed=3").json(), c.get("/api/sample?n=5&seed=3").json()
    assert len(a["images"]) == len(a["z"]) == len(a["coords"]) == 5 and a["z"] == b["z"]
    assert c.get("/api/sample?n=5").json()["z"] != c.get("/api/sample?n=5").json()["z"]
    assert len(c.get("/api/sample").json()["images"]) == 16
    for query, says in [("n=0", "between 1 and 64"), ("n=65", "between 1 and 64"), ("n=abc", "whole number"),
                        ("n=2&seed=-1", "'seed'")]:
        assert says in error_of(c.get(f"/api/sample?{query}"), 422)


def test_example_shows_input_reconstruction_and_posterior(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c = clients["2d"]
    ex = c.get("/api/example/7").json()
    model = vaelab.load(runs["2d"], device="cpu")
    x, labels = model.test_set()
    assert ex["index"] == 7 and ex["label"] == int(labels[7]) and len(ex["std"]) == 2
    np.testing.assert_allclose(png_array(ex["input"]["png"]), x[7, 0].numpy(), atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(png_array(ex["reconstruction"]["png"]), model.reconstruct(x[7])[0, 0].numpy(), atol=1 / 255 + 1e-6)
    n = len(x)
    assert f"between 0 and {n - 1}" in error_of(c.get(f"/api/example/{n}"), 422)
    assert "whole number" in error_of(c.get("/api/example/two"), 422)
    assert "no API endpoint" in error_of(c.get("/api/nothing"), 404)


def test_interpolate_between_examples_and_latents(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c = clients["3d"]
    model = vaelab.load(runs["3d"], device="cpu")
    x, _ = model.test_set()
    out = c.post("/api/interpolate", json={"from": {"index": 2}, "to": {"index": 5}, "steps": 6, "method": "spherical"}).json()
    assert len(out["images"]) == len(out["z"]) == 6
    # the same path as TrainedModel.interpolate, which shares interpolate_latents
    expected = model.interpolate(x[2], x[5], steps=6, method="spherical")[:, 0].numpy()
    for image, e in zip(out["images"], expected):
        np.testing.assert_allclose(png_array(image["png"]), e, atol=1 / 255 + 1e-6)
    z0 = model.encode(x[2]).mean[0].tolist()
    lin = c.post("/api/interpolate", json={"from": {"z": z0}, "to": {"point": [0, 0]}, "steps": 3}).json()
    assert lin["z"][0] == pytest.approx(z0, abs=1e-4) and lin["coords"][-1] == pytest.approx([0, 0], abs=1e-3)
    for body, says in [
        ({"from": {"index": 0}, "to": {"index": 1}, "method": "cubic"}, "'linear' or 'spherical'"),
        ({"from": {"index": 0}, "to": {"index": 1}, "steps": 1}, "between 2 and 50"),
        ({"from": {"index": 0}}, "'to' must be an object"),
        ({"from": {"index": 0, "z": [0, 0, 0]}, "to": {"index": 1}}, "one of 'z', 'index' or 'point'"),
        ({"from": {"z": [0, 0]}, "to": {"index": 1}}, "needs 3"),
        ({"from": {"index": 10_000}, "to": {"index": 1}}, "between 0 and"),
    ]:
        assert says in error_of(c.post("/api/interpolate", json=body), 422)


def test_interpolate_latents_linear_and_spherical() -> None:
    z0, z1 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    lin = interpolate_latents(z0, z1, 5, "linear")
    torch.testing.assert_close(lin[2], torch.tensor([1.0, 1.0]))
    sph = interpolate_latents(z0, z1, 5, "spherical")
    torch.testing.assert_close(sph.norm(dim=1), torch.full((5,), 2.0))  # stays on the circle
    torch.testing.assert_close(sph[[0, -1]], torch.stack([z0, z1]))
    torch.testing.assert_close(interpolate_latents(z0, 3 * z0, 3, "spherical"), interpolate_latents(z0, 3 * z0, 3, "linear"))
    assert torch.isfinite(interpolate_latents(torch.zeros(2), z1, 4, "spherical")).all()
    with pytest.raises(vaelab.VaelabError, match="at least 2 steps"):
        interpolate_latents(z0, z1, 1)
    with pytest.raises(vaelab.VaelabError, match="unknown interpolation"):
        interpolate_latents(z0, z1, 3, "cubic")  # type: ignore[arg-type]


# --- uploads ------------------------------------------------------------------------------------
def test_upload_png_is_resized_encoded_and_scored(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c = clients["2d"]
    out = c.post("/api/upload?name=stroke.png", content=png_bytes((40, 40)), headers=OCTET).json()
    assert out["name"] == "stroke.png" and any("resized from 40 x 40 to 8 x 8" in n for n in out["notes"])
    assert len(out["z"]) == len(out["std"]) == 2 and all(s > 0 for s in out["std"]) and len(out["coords"]) == 2
    assert out["log_px_k"] == 1000 and out["log_px_groups"] == 10 and 1 <= out["ess"] <= 1000
    assert isinstance(out["khat"], float) and -1 <= out["khat"] < 50  # PSIS k-hat of the weights (median of groups)
    assert out["log_px_se"] > 0 and out["elbo"] <= out["log_px"] + 3 * out["log_px_se"] + 3 * out["elbo_se"]
    assert out["elbo"] == pytest.approx(out["reconstruction_term"] - out["kl"], abs=2e-3)
    # log p(x) agrees with TrainedModel.log_likelihood on the same input within the standard errors
    x = png_array(out["input"]["png"])[None]
    model = vaelab.load(runs["2d"], device="cpu")
    torch.manual_seed(1)
    ll = model.log_likelihood(x, k=1000)
    assert abs(ll.mean - out["log_px"]) < 5 * out["log_px_se"] + 0.01
    assert set(out["reconstruction"]) == {"png"}


def test_upload_light_background_is_inverted_and_rgba_jpeg_read(clients: dict[str, TestClient]) -> None:
    c = clients["2d"]
    light = c.post("/api/upload?name=paper.png", content=png_bytes((16, 16), colour=255), headers=OCTET).json()
    assert any("inverted" in n for n in light["notes"])
    assert png_array(light["input"]["png"]).max() < 0.1  # white paper with a white stroke: all dark now
    rgba = c.post("/api/upload?name=a.png", content=png_bytes((8, 8), mode="RGBA", colour=(0, 0, 0, 0)), headers=OCTET).json()
    assert rgba["notes"] == ["colours inverted: the image has a light background, the model's data a dark one"]
    jpeg = c.post("/api/upload", content=png_bytes((30, 20), mode="RGB", fmt="JPEG"), headers={"x-filename": "p.jpg", **OCTET})
    assert jpeg.status_code == 200 and jpeg.json()["name"] == "p.jpg"


def test_upload_npy_of_the_right_size(clients: dict[str, TestClient]) -> None:
    flat = np.random.default_rng(1).random(64).astype(np.float32)
    out = clients["2d"].post("/api/upload?name=row.npy", content=npy_bytes(flat), headers=OCTET).json()
    assert out["notes"] == ["reshaped from (64,) to (1, 8, 8)"]
    np.testing.assert_allclose(png_array(out["input"]["png"]), flat.reshape(8, 8), atol=1 / 255 + 1e-6)
    vec = clients["vec"].post("/api/upload?name=v.npy", content=npy_bytes(np.ones((1, 16))), headers=OCTET).json()
    assert len(vec["input"]["values"]) == 16 and len(vec["reconstruction"]["values"]) == 16 and len(vec["z"]) == 3
    # read from the header's layout: Fortran order and big-endian numbers give the same pixels
    square = flat.reshape(8, 8)
    for a in (np.asfortranarray(square), square.astype(">f8")):
        out = clients["2d"].post("/api/upload?name=sq.npy", content=npy_bytes(a), headers=OCTET).json()
        np.testing.assert_allclose(png_array(out["input"]["png"]), square, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    ("model", "content", "status", "says"),
    [
        ("2d", b"just some text\n", 422, "not an image"),
        ("2d", b"", 422, "is empty"),
        ("2d", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 422, "not an image"),
        ("2d", noise_png()[:400], 422, "damaged or truncated"),
        ("2d", png_bytes((400, 10)), 422, "long and thin"),
        ("2d", npy_bytes(np.zeros((3, 3))), 422, "has shape (3, 3) (9 numbers)"),
        ("2d", npy_bytes(np.full(64, np.nan)), 422, "NaN"),
        ("2d", npy_bytes(np.full(64, 3.0)), 422, "Bernoulli likelihood needs [0, 1]"),
        ("2d", npy_bytes(np.array(["a"] * 64)), 422, "upload a .npy array of numbers"),
        ("2d", b"\x93NUMPY" + pickle.dumps([1, 2]), 422, "not a readable .npy"),
        ("vec", png_bytes((8, 8)), 422, "vectors of shape (16,)"),
        ("2d", b"\0" * (MAX_UPLOAD_BYTES + 1), 413, "larger than 5 MB"),
    ],
)
def test_upload_refuses_bad_files(clients: dict[str, TestClient], model: str, content: bytes, status: int, says: str) -> None:
    c = clients[model]
    assert says in error_of(c.post("/api/upload?name=f", content=content, headers=OCTET), status)
    assert c.get("/api/sample?n=1").status_code == 200  # still serving


def test_pickled_npy_is_never_unpickled(clients: dict[str, TestClient]) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "not a readable .npy" in error_of(clients["2d"].post("/api/upload?name=o.npy", content=buf.getvalue(), headers=OCTET), 422)


# --- conditional models ---------------------------------------------------------------------------
def test_conditional_info_lists_the_classes_and_the_map_uses_each_label(clients: dict[str, TestClient],
                                                                          runs: dict[str, Path]) -> None:
    info = clients["cond"].get("/api/info").json()
    assert info["classes"] == [str(i) for i in range(10)] and info["context"] == ["label"]
    assert info["conditional"] and info["family"] == "vae" and info["covariates"] == [] and not info["classifier"]
    for plain in ("2d", "vec"):  # unconditional: no selector
        other = clients[plain].get("/api/info").json()
        assert other["classes"] is None and other["context"] == [] and not other["conditional"]
    # every test example is encoded under its own label: q(z|x, c)
    model = vaelab.load(runs["cond"], device="cpu")
    batch = model.test_batch()
    m = clients["cond"].get("/api/map").json()
    np.testing.assert_allclose(m["coords"], model.encode(batch.x, c=batch.c).mean.numpy(), atol=1e-3)
    assert m["labels"] == batch.c[:, 0].long().tolist()
    assert m["contexts"][:3] == [{"label": str(int(v))} for v in batch.c[:3, 0]]
    # the dimensions' KL is KL(q(z|x, c) || p(z)), averaged over the test set
    q = model.encode(batch.x, c=batch.c)
    mu, var = q.mean.double(), q.stddev.double() ** 2
    kl = (0.5 * (mu**2 + var - 1 - var.log())).mean(0)
    for d in info["dims"]:
        assert d["kl"] == pytest.approx(float(kl[d["dim"]]), abs=1e-3)


def test_conditional_decode_follows_the_chosen_class(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c, z = clients["cond"], [0.4, -0.8]
    three = c.post("/api/decode", json={"z": z, "label": 3}).json()
    seven = c.post("/api/decode", json={"z": z, "label": 7}).json()
    assert three["context"] == {"label": "3"} and seven["context"] == {"label": "7"}
    assert three["z"] == seven["z"] == z
    assert three["image"]["png"] != seven["image"]["png"]  # another class, another image
    again = c.post("/api/decode", json={"z": z, "label": "3"}).json()  # by name: the same class
    assert again["image"]["png"] == three["image"]["png"]
    model = vaelab.load(runs["cond"], device="cpu")
    for out, label in ((three, 3), (seven, 7)):
        expected = model.decode(torch.tensor([z]), label=label).mean[0, 0].numpy()
        np.testing.assert_allclose(png_array(out["image"]["png"]), expected, atol=1 / 255 + 1e-6)
    p = c.post("/api/decode", json={"point": [0.1, 0.2], "label": 5}).json()
    expected = model.decode(torch.tensor([[0.1, 0.2]]), label=5).mean[0, 0].numpy()
    np.testing.assert_allclose(png_array(p["image"]["png"]), expected, atol=1 / 255 + 1e-6)


def test_conditional_sample_and_interpolate_under_a_class(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c = clients["cond"]
    model = vaelab.load(runs["cond"], device="cpu")
    five = c.get("/api/sample?n=4&seed=2&label=5").json()
    assert len(five["images"]) == 4 and five["context"] == {"label": "5"}
    torch.manual_seed(2)
    z = torch.randn(4, 2)  # p(z|c) = N(0, I) for this model's prior, whatever the class
    np.testing.assert_allclose(five["z"], z.numpy(), atol=1e-4)
    x = model.decode(torch.tensor(five["z"]), label=5).mean[:, 0].numpy()
    for image, e in zip(five["images"], x):
        np.testing.assert_allclose(png_array(image["png"]), e, atol=1 / 255 + 1e-5)
    one = c.get("/api/sample?n=4&seed=2&label=1").json()  # the same draws, decoded as another class
    assert one["z"] == five["z"] and [i["png"] for i in one["images"]] != [i["png"] for i in five["images"]]
    path = c.post("/api/interpolate", json={"from": {"index": 0}, "to": {"index": 1}, "steps": 4, "label": 2}).json()
    assert path["context"] == {"label": "2"}
    expected = model.decode(torch.tensor(path["z"]), label=2).mean[:, 0].numpy()
    for image, e in zip(path["images"], expected):
        np.testing.assert_allclose(png_array(image["png"]), e, atol=1 / 255 + 1e-5)


def test_conditional_example_is_reconstructed_under_its_own_label(clients: dict[str, TestClient],
                                                                   runs: dict[str, Path]) -> None:
    model = vaelab.load(runs["cond"], device="cpu")
    x, labels = model.test_set()
    for i in (0, 4):
        ex = clients["cond"].get(f"/api/example/{i}").json()
        assert ex["label"] == int(labels[i]) and ex["context"] == {"label": str(int(labels[i]))} and ex["predicted"] is None
        rec = model.reconstruct(x[i], label=int(labels[i]))[0, 0].numpy()
        np.testing.assert_allclose(png_array(ex["reconstruction"]["png"]), rec, atol=1 / 255 + 1e-6)
        np.testing.assert_allclose(ex["z"], model.encode(x[i], label=int(labels[i])).mean[0].numpy(), atol=1e-4)


def test_conditional_upload_is_scored_under_the_chosen_class(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c = clients["cond"]
    row = npy_bytes(np.random.default_rng(2).random(64).astype(np.float32))
    out = c.post("/api/upload?name=row.npy&label=6", content=row, headers=OCTET).json()
    assert out["conditional"] and out["context"] == {"label": "6"} and out["predicted"] is None
    model = vaelab.load(runs["cond"], device="cpu")
    x = np.load(io.BytesIO(row)).reshape(1, 1, 8, 8)
    np.testing.assert_allclose(out["z"], model.encode(x, label=6).mean[0].numpy(), atol=1e-4)
    torch.manual_seed(1)
    ll = model.log_likelihood(x, k=1000, label=6)  # log p(x|c), c = class 6
    assert abs(ll.mean - out["log_px"]) < 5 * out["log_px_se"] + 0.01
    assert out["elbo"] <= out["log_px"] + 3 * out["log_px_se"] + 3 * out["elbo_se"]
    rec = model.decode(torch.tensor([out["z"]]), label=6).mean[0, 0].numpy()
    np.testing.assert_allclose(png_array(out["reconstruction"]["png"]), rec, atol=1 / 255 + 1e-5)
    says = error_of(c.post("/api/upload?name=row.npy", content=row, headers=OCTET), 422)
    assert "scores an upload given a class" in says and "0, 1, 2" in says


CLASSES = "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        ("post", "/api/decode", {"z": [0, 0]}, f"give 'label', one of: {CLASSES}"),
        ("post", "/api/decode", {"point": [0, 0], "label": None}, f"give 'label', one of: {CLASSES}"),
        ("post", "/api/decode", {"z": [0, 0], "label": 10}, "class '10'"),
        ("post", "/api/decode", {"z": [0, 0], "label": -1}, "class '-1'"),
        ("post", "/api/decode", {"z": [0, 0], "label": "ten"}, "class 'ten'"),
        ("post", "/api/decode", {"z": [0, 0], "label": True}, "class True"),
        ("post", "/api/decode", {"z": [0, 0], "label": 2.5}, "class 2.5"),
        ("post", "/api/decode", {"z": [0, 0], "label": [1] * 1000}, "class [1, 1,"),
        ("post", "/api/decode", {"z": [0, 0], "label": "9" * 5000}, "class '99999"),
        ("post", "/api/interpolate", {"from": {"index": 0}, "to": {"index": 1}, "label": 11}, "class '11'"),
        ("get", "/api/sample?n=2&label=x", None, "class 'x'"),
        ("get", "/api/sample?n=2", None, f"give 'label', one of: {CLASSES}"),
        ("post", "/api/upload?name=a.npy&label=12", b"", "class '12'"),
        ("post", "/api/upload?name=a.npy", b"", f"scores an upload given a class: give 'label', one of: {CLASSES}"),
        ("post", "/api/decode", {"z": [0, 0], "label": 1, "context_of": 10_000}, "'context_of' must be between 0 and"),
        ("get", "/api/sample?n=2&label=1&context_of=" + "9" * 5000, None, "'context_of' must be a whole number"),
    ],
)
def test_conditional_bad_class_is_a_422_naming_the_classes(clients: dict[str, TestClient], method: str, path: str,
                                                           body: Any, says: str) -> None:
    c = clients["cond"]
    if method == "get":
        r = c.get(path)
    else:
        r = c.post(path, content=body, headers=OCTET) if isinstance(body, bytes) else c.post(path, json=body)
    message = error_of(r, 422)
    assert says in message and len(message) < 300
    if says.startswith("class"):
        assert CLASSES in message  # names the valid classes
    assert c.post("/api/decode", json={"z": [0, 0], "label": 0}).status_code == 200  # still serving


def test_unconditional_model_refuses_a_class(clients: dict[str, TestClient]) -> None:
    c = clients["2d"]
    assert "unconditional" in error_of(c.post("/api/decode", json={"z": [0, 0], "label": 1}), 422)
    assert "'context_of'" in error_of(c.get("/api/sample?n=1&context_of=0"), 422)
    assert "unconditional" in error_of(c.post("/api/upload?name=a.png&label=1", content=png_bytes((8, 8)), headers=OCTET), 422)


def test_covariates_come_from_a_chosen_test_example(clients: dict[str, TestClient], runs: dict[str, Path]) -> None:
    c = clients["cov"]
    info = c.get("/api/info").json()
    assert info["context"] == ["label", "dose"] and info["covariates"] == ["dose"] and info["classes"] == [str(i) for i in range(10)]
    model = vaelab.load(runs["cov"], device="cpu")
    batch = model.test_batch()  # c [N, 2]: label, dose
    assert "dose cannot be chosen here: give 'context_of'" in error_of(c.post("/api/decode", json={"z": [0, 0], "label": 3}), 422)
    z = [0.3, 0.1]
    out = c.post("/api/decode", json={"z": z, "label": 3, "context_of": 7}).json()
    dose = float(batch.c[7, 1])
    assert out["context"] == {"label": "3", "dose": pytest.approx(dose, abs=1e-5)}
    expected = model.decode(torch.tensor([z]), c=torch.tensor([[3.0, dose]])).mean[0, 0].numpy()
    np.testing.assert_allclose(png_array(out["image"]["png"]), expected, atol=1 / 255 + 1e-6)
    own = c.post("/api/decode", json={"z": z, "context_of": 7}).json()  # no label: the example's own
    assert own["context"]["label"] == str(int(batch.c[7, 0]))
    ex = c.get("/api/example/7").json()
    assert ex["context"] == own["context"]
    # z ~ p(z|c), a Gaussian whose mean and scale depend on c: the same seed, the same draws
    s = c.get("/api/sample?n=3&seed=4&label=1&context_of=2").json()
    ctx = torch.tensor([[1.0, float(batch.c[2, 1])]]).expand(3, -1)
    prior = model.vae.prior_distribution(ctx)
    assert tuple(prior.batch_shape) == (3,)
    torch.manual_seed(4)
    np.testing.assert_allclose(s["z"], prior.sample().numpy(), atol=1e-4)
    up = c.post("/api/upload?name=r.npy&label=2&context_of=2", content=npy_bytes(np.full(64, 0.5, np.float32)), headers=OCTET).json()
    assert up["context"] == {"label": "2", "dose": pytest.approx(float(batch.c[2, 1]), abs=1e-5)}
    assert "'context_of' must be a whole number" in error_of(c.post("/api/decode", json={"z": z, "context_of": "x"}), 422)
    assert "'context_of' must be between 0 and" in error_of(c.post("/api/decode", json={"z": z, "label": 1, "context_of": 10**6}), 422)


def test_m2_shows_the_predicted_class_and_generates_under_the_chosen_one(clients: dict[str, TestClient],
                                                                         runs: dict[str, Path]) -> None:
    m2 = vaelab.load(runs["m2"], device="cpu")
    assert isinstance(m2.vae, Classifier) and not m2.conditional
    c = clients["m2"]
    info = c.get("/api/info").json()
    assert info["family"] == "m2" and info["classifier"] and not info["conditional"] and info["classes"][3] == "3"
    x, labels = m2.test_set()
    with torch.no_grad():
        probs = m2.vae.classify(x).probs  # [N, 10]
    # a test example: its label, the classifier's prediction, and its reconstruction under that class
    ex = c.get("/api/example/5").json()
    k = int(probs[5].argmax())
    assert ex["predicted"] == {"class": str(k), "id": k, "probability": pytest.approx(float(probs[5, k]), abs=1e-4)}
    assert ex["label"] == int(labels[5]) and ex["context"] == {"label": str(k)}
    np.testing.assert_allclose(ex["z"], m2.encode(x[5], label=k).mean[0].numpy(), atol=1e-4)
    rec = m2.decode(torch.tensor([ex["z"]]), label=k).mean[0, 0].numpy()
    np.testing.assert_allclose(png_array(ex["reconstruction"]["png"]), rec, atol=1 / 255 + 1e-5)
    # generation under the chosen class
    a, b = (c.post("/api/decode", json={"z": [0.2, 0.2], "label": y}).json() for y in (1, 8))
    assert a["image"]["png"] != b["image"]["png"] and b["context"] == {"label": "8"}
    expected = m2.decode(torch.tensor([[0.2, 0.2]]), label=8).mean[0, 0].numpy()
    np.testing.assert_allclose(png_array(b["image"]["png"]), expected, atol=1 / 255 + 1e-6)
    s = c.get("/api/sample?n=3&seed=5&label=4").json()
    torch.manual_seed(5)
    np.testing.assert_allclose(s["z"], torch.randn(3, 2).numpy(), atol=1e-4)  # p(z) = N(0, I) for every class
    assert s["context"] == {"label": "4"}
    assert "give 'label'" in error_of(c.get("/api/sample?n=2"), 422)
    # an upload needs no class: the classifier's prediction with its probabilities, log p(x) over (y, z)
    up = c.post("/api/upload?name=x.npy", content=npy_bytes(x[9].numpy()), headers=OCTET).json()
    assert up["predicted"]["id"] == int(probs[9].argmax()) and not up["conditional"]
    assert up["predicted"]["probabilities"] == pytest.approx(probs[9].tolist(), abs=1e-4)
    assert up["predicted"]["probability"] == pytest.approx(float(probs[9].max()), abs=1e-4)
    assert up["elbo_se"] is None and up["context"] == {"label": up["predicted"]["class"]}
    torch.manual_seed(1)
    ll = m2.log_likelihood(x[9], k=1000)
    assert abs(ll.mean - up["log_px"]) < 5 * up["log_px_se"] + 0.01
    # the ELBO is M2's U(x) with 100 draws of z: against 400 single-draw estimates, within 5 standard errors
    single = m2.elbo(x[9:10].expand(400, -1, -1, -1), k=1).elbo.double()  # [400]
    se = float(single.std()) * math.sqrt(1 / 100 + 1 / 400)
    assert abs(up["elbo"] - float(single.mean())) < 5 * se + 1e-3
    assert up["elbo"] <= up["log_px"] + 3 * up["log_px_se"] + 3 * se
    says = error_of(c.post("/api/upload?name=x.npy&label=3", content=npy_bytes(x[9].numpy()), headers=OCTET), 422)
    assert "without a class" in says


def test_cli_serve_names_the_conditioning(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from vaelab.serve import serve

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    serve(runs["cov"], host="127.0.0.1", port=0)
    assert "conditional on label, dose" in capsys.readouterr().out


# --- the page, safety ---------------------------------------------------------------------------
def test_page_and_its_files_load_nothing_from_elsewhere(clients: dict[str, TestClient]) -> None:
    c = clients["2d"]
    page = c.get("/")
    assert page.status_code == 200 and "Latent space explorer" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        r = c.get(f"/static/{name}")
        assert r.status_code == 200
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", r.text), f"{name} links outside"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)


def test_loopback_server_refuses_foreign_host_headers(runs: dict[str, Path]) -> None:
    c = TestClient(create_app(runs["2d"], allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8765")
    assert c.get("/api/info").status_code == 200
    assert c.get("/api/info", headers={"host": "evil.example:8765"}).status_code == 400


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds almost none of them."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# Family 7 of issue 15: every hostile request is a 4xx JSON line, never a 500, and the server goes on.
HOSTILE_JSON = [
    (b'{"z": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "nested too deeply"),
    (b"[" * 60_000, 400, "nested too deeply"),
    (b'{"z": [1' + b"0" * 400 + b", 0]}", 422, "beyond"),  # an integer beyond the float range
    (b'{"z": [-1' + b"0" * 4000 + b", 0]}", 422, "beyond"),
    (b'{"z": [1e400, 0]}', 422, "NaN or infinite"),  # a float literal that overflows to inf
    (b'{"z": [-Infinity, 0]}', 422, "NaN or infinite"),
    (b'{"z": {"0": 1, "1": 2}}', 422, "list of 2 numbers"),
    (b'{"z": [[0], [0]]}', 422, "list of 2 numbers"),
    (b'{"z": null}', 422, "list of 2 numbers"),
    (b'{"z": [0, 0], "label": {"a": 1}}', 422, "unconditional"),
    (b'{"point": [1e308, 1e308]}', 422, "beyond"),
    (b'"just a string"', 400, "JSON object"),
    (b"null", 400, "JSON object"),
    (b'{"z": [0, 0]} trailing', 400, "not valid JSON"),
]
HOSTILE_INTERPOLATE = [
    ({"from": {"index": 0}, "to": {"index": 1}, "steps": 10**400}, "'steps' must be between 2 and 50, got 1000"),
    ({"from": {"index": 0}, "to": {"index": 1}, "steps": 2.5}, "'steps' must be a whole number"),
    ({"from": {"index": 0}, "to": {"index": 1}, "steps": "ten"}, "'steps' must be a whole number"),
    ({"from": {"index": 0}, "to": {"index": 1}, "steps": [3]}, "'steps' must be a whole number"),
    ({"from": {"index": 0}, "to": {"index": 1}, "method": {"x": 1}}, "'method' must be"),
    ({"from": {"index": -1}, "to": {"index": 1}}, "'from.index' must be between"),
    ({"from": {"index": 2**70}, "to": {"index": 1}}, "'from.index' must be between"),
    ({"from": {"index": 0, "z": [0, 0]}, "to": {"index": 1}}, "one of 'z', 'index' or 'point'"),
    ({"from": [0, 0], "to": {"index": 1}}, "'from' must be an object"),
    ({"from": {"z": [0, 1e7]}, "to": {"index": 1}}, "beyond"),
]


@pytest.mark.parametrize(("body", "status", "says"), HOSTILE_JSON)
def test_hostile_json_is_a_4xx_never_a_500(clients: dict[str, TestClient], body: bytes, status: int, says: str) -> None:
    c = clients["2d"]
    assert says in error_of(c.post("/api/decode", content=body, headers=JSON), status)
    assert c.post("/api/decode", json={"z": [0, 0]}).status_code == 200  # still serving


@pytest.mark.parametrize(("doc", "says"), HOSTILE_INTERPOLATE)
def test_hostile_interpolation_is_a_422(clients: dict[str, TestClient], doc: dict[str, Any], says: str) -> None:
    message = error_of(clients["2d"].post("/api/interpolate", json=doc), 422)
    assert says in message and len(message) < 300


@pytest.mark.parametrize(
    ("query", "says"),
    [("n=" + "9" * 400, "between 1 and 64"), ("n=1e3", "whole number"), ("n=-1", "between 1 and 64"),
     ("n=2&seed=" + "9" * 30, "'seed' must be between"), ("n=2&seed=nan", "whole number"), ("n=%00", "whole number")],
)
def test_hostile_query_parameters_are_a_422(clients: dict[str, TestClient], query: str, says: str) -> None:
    message = error_of(clients["2d"].get(f"/api/sample?{query}"), 422)
    assert says in message and len(message) < 300
    assert "between 0 and" in error_of(clients["2d"].get("/api/example/" + "9" * 100), 422)


@pytest.mark.parametrize(
    ("path", "headers", "status", "says"),
    [
        ("/api/decode", {"content-type": "text/plain"}, 415, "application/json"),  # a cross-site form or fetch
        ("/api/decode", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ("/api/decode", {"content-type": "multipart/form-data; boundary=x"}, 415, "application/json"),
        ("/api/decode", {"content-type": "application/octet-stream"}, 415, "application/json"),
        ("/api/interpolate", {}, 415, "got 'none'"),
        ("/api/upload?name=a.png", {}, 415, "application/octet-stream"),  # a no-CORS fetch of raw bytes
        ("/api/upload?name=a.png", {"content-type": "text/plain"}, 415, "form and text types are refused"),
        ("/api/upload?name=a.png", {"content-type": "multipart/form-data; boundary=x"}, 415, "refused"),
        ("/api/decode", {**JSON, "origin": "http://evil.example"}, 403, "cross-origin request from 'http://evil.example'"),
        ("/api/decode", {**JSON, "origin": "null"}, 403, "cross-origin"),  # a sandboxed frame, a file:// page
        ("/api/decode", {**JSON, "origin": "http://testserver:8080"}, 403, "cross-origin"),  # another port is another site
        ("/api/upload?name=a.png", {**OCTET, "origin": "http://127.0.0.1.evil.example"}, 403, "cross-origin"),
        ("/api/decode", {**JSON, "sec-fetch-site": "cross-site"}, 403, "cross-site request refused"),
    ],
)
def test_cross_site_posts_are_refused_before_any_work(clients: dict[str, TestClient], path: str,
                                                      headers: dict[str, str], status: int, says: str) -> None:
    c = clients["2d"]
    body = png_bytes((8, 8)) if "upload" in path else b'{"z": [0, 0]}'
    assert says in error_of(c.post(path, content=body, headers=headers), status)


def test_same_origin_requests_and_the_page_from_a_link_are_answered(clients: dict[str, TestClient]) -> None:
    c = clients["2d"]  # the test client's origin is http://testserver
    assert c.post("/api/decode", json={"z": [0, 0]}, headers={"origin": "http://testserver"}).status_code == 200
    assert c.post("/api/upload?name=a.png", content=png_bytes((8, 8)),
                  headers={**OCTET, "origin": "http://testserver", "sec-fetch-site": "same-origin"}).status_code == 200
    assert c.get("/", headers={"sec-fetch-site": "cross-site"}).status_code == 200  # a link to the page opens it
    assert "cross-site" in error_of(c.get("/api/sample?n=1", headers={"sec-fetch-site": "cross-site"}), 403)


@pytest.mark.parametrize(
    ("base", "host", "status"),
    [
        ("http://[::1]:8765", None, 200),
        ("http://[::1]:8765", "[::1]", 200),
        ("http://localhost:8765", None, 200),
        ("http://[::1]:8765", "evil.example:8765", 400),
        ("http://[::1]:8765", "[::1", 400),
        ("http://[::1]:8765", "[::1]x", 400),
        ("http://[::1]:8765", "[::2]:8765", 400),
        ("http://[::1]:8765", "::1.evil.example", 400),
        ("http://[::1]:8765", "", 400),
        ("http://127.0.0.1:8765", "127.0.0.1:80:80", 400),
    ],
)
def test_loopback_host_check_covers_ipv6(runs: dict[str, Path], base: str, host: str | None, status: int) -> None:
    from vaelab.serve.server import LOOPBACK

    c = TestClient(create_app(runs["2d"], allowed_hosts=list(LOOPBACK)), base_url=base)
    r = c.get("/api/info", headers=None if host is None else {"host": host})
    if status == 200:
        assert r.status_code == 200
    else:
        assert "answers only requests addressed to" in error_of(r, 400)


@pytest.mark.parametrize("host", ["::1", "127.0.0.1", "localhost"])
def test_serving_on_any_loopback_address_checks_the_host(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                         host: str) -> None:
    import vaelab.serve.app
    from vaelab.serve import serve

    seen: list[Any] = []

    class Stop(Exception):
        pass

    def spy(run: Any, **kw: Any) -> Any:
        seen.append(kw.get("allowed_hosts"))
        raise Stop

    monkeypatch.setattr(vaelab.serve.app, "create_app", spy)
    with pytest.raises(Stop):
        serve(runs["2d"], host=host, port=0)
    assert seen and seen[0] is not None and host in seen[0] and "::1" in seen[0]


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (100_000, 100_000), (2**31 - 1, 2**31 - 1), (4097, 4097)])
def test_huge_image_dimensions_are_refused_from_the_header(clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch,
                                                           width: int, height: int) -> None:
    from PIL import ImageFile

    decoded: list[int] = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real(self))
    says = error_of(clients["2d"].post("/api/upload?name=bomb.png", content=png_header(width, height), headers=OCTET), 422)
    assert "pixels" in says and "4,096 x 4,096" not in says and "16,777,216" in says
    assert decoded == []  # refused from the header: not one pixel decoded


def test_uploads_are_decoded_under_the_gate(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import vaelab.serve.app

    app = create_app(runs["2d"])
    held: list[bool] = []
    real = vaelab.serve.app.prepare_upload

    def spy(*args: Any) -> Any:
        held.append(app.state.gate._work.locked())  # decoding runs one at a time, as model work does
        return real(*args)

    monkeypatch.setattr(vaelab.serve.app, "prepare_upload", spy)
    assert TestClient(app).post("/api/upload?name=a.png", content=png_bytes((8, 8)), headers=OCTET).status_code == 200
    assert held == [True]


def npy_header(header: str, data: bytes = b"\0" * 64, version: bytes = b"\x01\x00") -> bytes:
    """A .npy file of version 1.0 with the header ``header`` (a dict literal) and ``data``."""
    text = header.encode("latin-1")
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + data


HOSTILE_NPY = [  # each header is read and refused before np.load could allocate what it declares
    (npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000,), }"), "has shape (100000000000,)"),
    (npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904), }"),
     "this model's examples have shape (1, 8, 8) (64 numbers)"),
    (npy_header("{'descr': '<V1000000000', 'fortran_order': False, 'shape': (1,), }"), "of type |V1000000000;"),
    (npy_header("{'descr': [('a', '<f8', (64,))], 'fortran_order': False, 'shape': (1,), }", b"\0" * 512),
     "upload a .npy array of numbers"),
    (npy_header("{'descr': '<c16', 'fortran_order': False, 'shape': (64,), }", b"\0" * 1024), "of type complex128"),
    (npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (-64,), }"), "declares shape (-64,)"),
    (npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (64,), }"), "declares 512 bytes of data, the file holds 64"),
    (npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (64,), }", b"\0" * 520), "the file holds 520"),
    (npy_header("(" * 4000), "not a readable .npy array"),  # a tokenizer error, not a ValueError
    (npy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (64,), }", version=b"\x03\x00"), "format version 3.0"),
]


@pytest.mark.parametrize(("content", "says"), HOSTILE_NPY)
def test_npy_headers_are_checked_before_the_data_are_read(clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch,
                                                          content: bytes, says: str) -> None:
    loaded: list[int] = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loaded.append(1) or real(*a, **k))
    c = clients["2d"]
    message = error_of(c.post("/api/upload?name=h.npy", content=content, headers=OCTET), 422)
    assert says in message and message.startswith("'h.npy'") and len(message) < 400
    assert loaded == []
    assert c.get("/api/sample?n=1").status_code == 200  # still serving


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("L" if fmt != "WEBP" else "RGB", (8, 8), 0).save(buf, fmt)
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "TIFF", "GIF", "WEBP", "BMP", "PPM", "ICO", "EPS"])
def test_uploads_are_png_or_jpeg_only(clients: dict[str, TestClient], monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    from PIL import EpsImagePlugin

    opened: list[int] = []  # Pillow's EPS reader runs Ghostscript to decode; it must never be tried
    real = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or real(self))
    content = EPS if fmt == "EPS" else image_bytes(fmt)
    says = error_of(clients["2d"].post(f"/api/upload?name=a.{fmt.lower()}", content=content, headers=OCTET), 422)
    assert "not an image the explorer reads (PNG or JPEG" in says and "upload a PNG or JPEG image or a .npy array" in says
    assert opened == []


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/api/decode", "POST"), ("POST", "/api/info", "GET, HEAD"), ("PUT", "/api/upload", "POST"),
     ("GET", "/api/interpolate", "POST"), ("DELETE", "/api/sample", "GET, HEAD"), ("POST", "/api/example/3", "GET, HEAD"),
     ("POST", "/", "GET, HEAD")],
)
def test_a_wrong_method_is_a_405_naming_the_right_one(clients: dict[str, TestClient], method: str, path: str,
                                                     allow: str) -> None:
    r = clients["2d"].request(method, path, content=b"{}", headers=JSON)
    takes = " or ".join(m for m in allow.split(", ") if m != "HEAD")
    assert error_of(r, 405) == f"{method} is not allowed on {path}; it takes {takes}"
    assert r.headers["allow"] == allow
    assert "no API endpoint /api/nothing" in error_of(clients["2d"].request(method, "/api/nothing", headers=JSON), 404)


def test_every_answer_says_nosniff(clients: dict[str, TestClient]) -> None:
    c = clients["2d"]
    answers = [c.get("/"), c.get("/api/info"), c.get("/static/app.js"), c.get("/api/sample?n=0"), c.get("/api/nothing"),
               c.post("/api/decode", json={"z": [0, 0]}), c.get("/api/info", headers={"sec-fetch-site": "cross-site"}),
               c.post("/api/decode", content=b"x" * 70_000, headers=JSON), c.get("/static/missing.js")]
    assert [r.status_code for r in answers] == [200, 200, 200, 422, 404, 200, 403, 413, 404]
    for r in answers:
        assert r.headers.get_list("x-content-type-options") == ["nosniff"], r.request.url


def test_a_bug_is_a_500_json_line_and_one_log_line_not_a_traceback(runs: dict[str, Path],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(runs["2d"])

    def bug(*args: Any) -> Any:
        raise MemoryError("no room for this")

    app.state.explorer.sample = bug
    # the test client re-raises whatever escapes the app, as uvicorn prints its traceback
    c = TestClient(app)
    with caplog.at_level("ERROR", logger="vaelab.serve"):
        r = c.get("/api/sample?n=2")
    assert error_of(r, 500) == "internal error (MemoryError); the server goes on serving"
    assert r.headers["x-content-type-options"] == "nosniff"
    [record] = caplog.records
    assert record.getMessage() == ("error: internal error answering GET /api/sample (MemoryError: no room for this); "
                                   "the server goes on serving")
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert c.get("/api/info").status_code == 200


def served_app(run: Path, monkeypatch: pytest.MonkeyPatch, host: str, **kw: Any) -> Any:
    """The app ``serve(run, host=host)`` would run (uvicorn not started)."""
    import uvicorn

    from vaelab.serve import serve

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: apps.append(self.config.app))
    serve(run, host=host, port=0, **kw)
    return apps[0]


@pytest.mark.parametrize("host", ["127.0.0.2", "LOCALHOST", "127.255.0.1"])
def test_every_loopback_address_and_localhost_spelling_is_this_computer_only(
        runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], host: str) -> None:
    app = served_app(runs["2d"], monkeypatch, host)
    assert capsys.readouterr().err == ""  # no "not only this computer" warning
    c = TestClient(app, base_url=f"http://{host}:8765")
    assert c.get("/api/info").status_code == 200
    assert c.get("/api/info", headers={"host": "LocalHost:8765"}).status_code == 200
    says = error_of(c.get("/api/info", headers={"host": "rebound.evil.example:8765"}), 400)
    assert "answers only requests addressed to" in says and "127.0.0.0/8" in says and "IP address" not in says
    assert "answers only" in error_of(c.get("/api/info", headers={"host": "192.168.1.7:8765"}), 400)


def test_a_server_on_every_address_still_checks_the_host(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from vaelab.serve.server import allowed_hosts

    # "::" (every IPv6 address) allows what "0.0.0.0" does; checked without binding it (a machine may lack IPv6)
    assert sorted(allowed_hosts("::", ["Explorer.Lab.Example"])) == sorted(allowed_hosts("0.0.0.0", ["Explorer.Lab.Example"]))
    app = served_app(runs["2d"], monkeypatch, "0.0.0.0", allow_hosts=["Explorer.Lab.Example"])
    assert "not only this computer" in capsys.readouterr().err
    c = TestClient(app, base_url="http://192.168.1.7:8765")
    for name in ("192.168.1.7:8765", "10.0.0.3", "[2001:db8::5]:8765", "127.0.0.1:8765", "localhost:8765",
                 f"{socket.gethostname()}:8765", socket.getfqdn(), "explorer.lab.example:8765"):
        assert c.get("/api/info", headers={"host": name}).status_code == 200, name
    # a page whose DNS name was rebound to this computer's address sends its own name
    says = error_of(c.get("/api/info", headers={"host": "rebound.evil.example:8765"}), 400)
    assert "not 'rebound.evil.example:8765'" in says and "any IP address" in says and "by this computer's IP address" in says
    assert c.post("/api/decode", json={"z": [0, 0]}, headers={"host": "rebound.evil.example"}).status_code == 400


def test_a_session_never_writes_into_the_run_folder(runs: dict[str, Path]) -> None:
    before = folder_digest(runs["3d"])
    c = TestClient(create_app(runs["3d"]))
    c.get("/"), c.get("/api/info"), c.get("/api/map"), c.get("/api/example/0"), c.get("/api/sample?n=3")
    c.post("/api/decode", json={"z": [0, 1, 0]}), c.post("/api/decode", json={"point": [0.5, 0.5]})
    c.post("/api/interpolate", json={"from": {"index": 0}, "to": {"index": 1}})
    c.post("/api/upload?name=a.png", content=png_bytes((8, 8)), headers=OCTET), c.post("/api/upload?name=b.txt", content=b"text", headers=OCTET)
    assert folder_digest(runs["3d"]) == before
    for run in ("cond", "m2"):  # the conditional and semi-supervised ones too
        before = folder_digest(runs[run])
        c = TestClient(create_app(runs[run]))
        c.get("/api/info"), c.get("/api/example/0"), c.get("/api/sample?n=3&label=2")
        c.post("/api/decode", json={"z": [0, 1], "label": 4}), c.post("/api/decode", json={"z": [0, 1], "label": 40})
        c.post("/api/interpolate", json={"from": {"index": 0}, "to": {"index": 1}, "label": "3"})
        c.post("/api/upload?name=a.png" + ("&label=1" if run == "cond" else ""), content=png_bytes((8, 8)), headers=OCTET)
        assert folder_digest(runs[run]) == before


def test_gate_runs_one_call_at_a_time_and_answers_503_when_full() -> None:
    gate, release, inside = Gate(capacity=2), threading.Event(), []

    def slow(tag: str) -> str:
        inside.append(tag)
        assert len(inside) == 1, "two calls ran at once"
        release.wait(5)
        inside.remove(tag)
        return tag

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(gate.run(slow, "a"))
        second = asyncio.ensure_future(gate.run(slow, "b"))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as full:
            await gate.run(slow, "c")
        assert full.value.status == 503 and "busy" in full.value.message
        release.set()
        done = await asyncio.gather(first, second)
        return [*done, await gate.run(slow, "d")]  # admitted again once the queue drained

    assert asyncio.run(scenario()) == ["a", "b", "d"]


# --- the command line ---------------------------------------------------------------------------
def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def test_cli_serve_help_and_errors(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["serve", "--help"], capsys)
    assert code == 0 and "--port" in out and "--host" in out and "never writing" in " ".join(out.split())
    code, _, err = run_cli(["serve", tmp_path / "missing"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not found" in err
    code, _, err = run_cli(["serve", tmp_path], capsys)
    assert code == 2 and "not a vaelab run folder" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", runs["2d"], "--port", port], capsys)
    assert code == 2 and err.count("\n") == 1 and f"port {port}" in err and "in use" in err


def test_bound_socket_is_tcp_so_answers_are_not_delayed() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; a socket made with
    # proto 0 stalled every answer ~40 ms (Nagle's algorithm against delayed ACKs)
    from vaelab.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_serve_prints_the_address_and_warns_off_loopback(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from vaelab.serve import serve

    served: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets[0].getsockname()))
    serve(runs["2d"], host="127.0.0.1", port=0)
    out = capsys.readouterr()
    assert f"http://127.0.0.1:{served[0][1]}/" in out.out and out.err == ""
    serve(runs["2d"], host="0.0.0.0", port=0)
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err


def test_the_command_line_passes_extra_host_names_to_the_guard(monkeypatch) -> None:
    from click.testing import CliRunner

    import vaelab.serve as serve_module
    from vaelab.cli import cli
    from vaelab.serve.server import allowed_hosts

    seen: dict = {}
    monkeypatch.setattr(serve_module, "serve", lambda run, **kw: seen.update(kw))
    result = CliRunner().invoke(cli, ["serve", "RUN", "--host", "0.0.0.0", "--allow-host", "vae.lab.example",
                                      "--allow-host", "Other.Example"])
    assert result.exit_code == 0, result.output
    assert seen["allow_hosts"] == ("vae.lab.example", "Other.Example")
    hosts = allowed_hosts("0.0.0.0", seen["allow_hosts"])
    assert "vae.lab.example" in hosts and "other.example" in hosts and "evil.example" not in hosts
