"""Experiment tracking (``--log tensorboard,mlflow``), read back with the trackers' own readers.

TensorBoard's event files are read with ``tensorboard.backend.event_processing``'s
``EventAccumulator`` and its projector config with the projector's protobuf; the MLflow run
is read from a real ``mlflow server`` with a SQLite backend store, started here on a free
port (once for the module) and stopped at the end. One tiny run (digits, 2 epochs, hidden 32)
logs to both; every per-epoch value read back must equal the run's ``metrics.jsonl``.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.runs import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "digits", "--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--eval-k", "20",
        "--warmup", "4", "--threads", "1", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(argv: list[str]) -> None:
    """``vaelab ARGV`` in-process; it must succeed."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 0


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend store, proxied artifacts) on a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the session started above
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, mlflow_server):
    """One tiny run logged to TensorBoard and to the MLflow server, through the command line."""
    out = tmp_path_factory.mktemp("tracked")
    _cli(["train", *TINY, "--out", out, "--name", "both", "--log", "tensorboard,mlflow", "--mlflow-uri", mlflow_server])
    return out / "both"


# --- TensorBoard --------------------------------------------------------------------------


def _accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0,
                                                                        "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_equal_metrics_jsonl(tracked_run):
    from vaelab.tracking.tensorboard import SCALARS, TEST_SCALARS

    records = read_metrics(tracked_run)
    assert [r["epoch"] for r in records] == [1, 2]
    acc = _accumulator(tracked_run)
    for tag, key in SCALARS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        if key == "kl_weight":  # beta min(1, epoch / warmup) with warmup 4
            expected = [0.25, 0.5]
        elif key == "lr":
            expected = [1e-3, 1e-3]
        else:
            expected = [r[key] for r in records]
        assert [e.value for e in events] == [float(np.float32(v)) for v in expected], tag  # stored as float32
    ev = json.loads((tracked_run / "eval.json").read_text())
    for tag, key in TEST_SCALARS.items():
        if ev.get(key) is None:
            assert tag not in acc.Tags()["scalars"]
            continue
        (event,) = acc.Scalars(tag)
        assert event.step == 2 and event.value == float(np.float32(ev[key])), tag
    assert "test/-log p(x) (nats)" in acc.Tags()["scalars"]
    assert set(acc.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                      "_hparams_/session_end_info"}  # the HPARAMS tab's record


def test_tensorboard_images_histograms_and_embedding(tracked_run):
    from google.protobuf import text_format
    from PIL import Image
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    acc = _accumulator(tracked_run)
    tags = acc.Tags()
    for name in ("reconstructions", "samples", "traversals"):
        (image,) = acc.Images(f"images/{name}")
        with Image.open(io.BytesIO(image.encoded_image_string)) as png:
            assert png.size == (image.width, image.height) and image.width > 50 and image.height > 50

    model = vaelab.load(tracked_run, device="cpu")
    x, labels = model.test_set()
    means = model.encode(x).mean.numpy()  # [N, 4]
    for d in range(model.latent_dim):
        (hist,) = acc.Histograms(f"posterior mean/z{d}")
        h = hist.histogram_value
        assert h.num == len(x)
        assert h.min == pytest.approx(means[:, d].min(), rel=1e-6) and h.max == pytest.approx(means[:, d].max(), rel=1e-6)
        assert h.sum == pytest.approx(means[:, d].astype(np.float64).sum(), rel=1e-5, abs=1e-4)
    assert {t for t in tags["histograms"] if t.startswith("posterior mean/")} == {f"posterior mean/z{d}" for d in range(4)}

    config = ProjectorConfig()
    text_format.Parse((tracked_run / "tensorboard" / "projector_config.pbtxt").read_text(), config)
    (emb,) = config.embeddings
    folder = tracked_run / "tensorboard"
    tensor = np.loadtxt(folder / emb.tensor_path, delimiter="\t", ndmin=2)
    np.testing.assert_allclose(tensor, means, rtol=1e-6, atol=1e-6)  # the test set's posterior means, in order
    meta = (folder / emb.metadata_path).read_text().splitlines()
    assert meta == [str(int(y)) for y in labels.tolist()]  # digits' classes are named 0..9
    with Image.open(folder / emb.sprite.image_path) as sprite:
        size = sprite.size
    side = math.ceil(math.sqrt(len(x)))
    assert list(emb.sprite.single_image_dim) == [8, 8] and size == (side * 8, side * 8)


# --- MLflow ---------------------------------------------------------------------------------


def test_mlflow_run_read_back_from_the_server(tracked_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    record = json.loads((tracked_run / "mlflow.json").read_text())
    assert record["tracking_uri"] == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "both"
    assert client.get_experiment(run.info.experiment_id).name == "vaelab"

    config = json.loads((tracked_run / "config.json").read_text())["config"]
    expected = {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in config.items()}
    assert run.data.params == expected

    records = read_metrics(tracked_run)
    for key in ("train_elbo", "val_elbo", "train_reconstruction", "val_reconstruction", "train_kl", "val_kl",
                "examples_per_second", "seconds"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(record["run_id"], key))
        assert history == [(r["epoch"], r[key]) for r in records], key  # exactly: doubles end to end
    assert sorted((m.step, m.value) for m in client.get_metric_history(record["run_id"], "kl_weight")) == [(1, 0.25), (2, 0.5)]
    ev = json.loads((tracked_run / "eval.json").read_text())
    for key in ("elbo", "reconstruction", "kl", "nll", "log_px", "log_px_stderr"):
        (m,) = client.get_metric_history(record["run_id"], f"test_{key}")
        assert (m.step, m.value) == (2, ev[key]), key

    names = {Path(a.path).name for a in client.list_artifacts(record["run_id"], "run")}
    assert {"config.json", "model.json", "model.safetensors", "metrics.jsonl", "eval.json", "reconstructions.png",
            "samples.png", "curves.png"} <= names
    assert ("manifest.json" in names) == (tracked_run / "manifest.json").exists()
    assert "checkpoint.safetensors" not in names


def test_load_from_mlflow_gives_the_same_model(tracked_run, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    run_id = json.loads((tracked_run / "mlflow.json").read_text())["run_id"]
    remote = vaelab.load(f"runs:/{run_id}", device="cpu")
    local = vaelab.load(tracked_run, device="cpu")
    assert remote.run_dir != local.run_dir and (tmp_path / "cache" / "mlflow") in remote.run_dir.parents
    x, _ = local.test_set()
    torch.manual_seed(0)
    a = local.elbo(x).elbo
    torch.manual_seed(0)
    b = remote.elbo(x).elbo
    assert torch.equal(a, b)  # same weights, same draws: the same ELBO on the test set
    again = vaelab.load(f"runs:/{run_id}", device="cpu")  # from the cache
    assert again.run_dir == remote.run_dir

    with pytest.raises(VaelabError, match="could not be fetched from MLflow") as info:
        vaelab.load("runs:/0123456789abcdef0123456789abcdef")
    assert "\n" not in str(info.value)


def test_resumed_run_continues_its_mlflow_run(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    argv = ["train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--eval-k", "0",
            "--threads", "1", "--quiet", "--out", tmp_path, "--name", "r", "--log", "mlflow", "--mlflow-uri", mlflow_server]
    _cli(argv)
    first = json.loads((tmp_path / "r" / "mlflow.json").read_text())["run_id"]
    _cli(["train", "--resume", tmp_path / "r", "--epochs", "2", "--quiet"])
    assert json.loads((tmp_path / "r" / "mlflow.json").read_text())["run_id"] == first
    client = MlflowClient(tracking_uri=mlflow_server)
    history = sorted((m.step, m.value) for m in client.get_metric_history(first, "val_elbo"))
    assert history == [(r["epoch"], r["val_elbo"]) for r in read_metrics(tmp_path / "r")]
    assert [s for s, _ in history] == [1, 2] and client.get_run(first).info.status == "FINISHED"


# --- bad input and failures -------------------------------------------------------------------


def test_unreachable_mlflow_uri_is_refused_before_anything_is_written(tmp_path, refused):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    line = refused(["train", *TINY, "--out", tmp_path / "out", "--name", "x", "--log", "tensorboard,mlflow",
                    "--mlflow-uri", uri], uri, "cannot be reached")
    assert "--mlflow-uri" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("extra,modules", [("mlflow", ["mlflow"]), ("tensorboard", ["tensorboard", "torch.utils.tensorboard"])])
def test_missing_extra_is_named(tmp_path, refused, monkeypatch, extra, modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    refused(["train", *TINY, "--out", tmp_path / "out", "--name", "x", "--log", extra], f"pip install 'vaelab[{extra}]'")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_logger_and_stray_uri_are_refused(tmp_path, refused):
    refused(["train", *TINY, "--out", tmp_path, "--log", "wandb"], "wandb", "tensorboard, mlflow")
    refused(["train", *TINY, "--out", tmp_path, "--mlflow-uri", "http://127.0.0.1:1"], "--log mlflow")
    assert not any(tmp_path.iterdir())


def test_a_logger_failing_at_the_end_is_a_warning_and_the_run_is_complete(tmp_path, capsys, monkeypatch):
    from vaelab.tracking.tensorboard import TensorBoardLogger

    def broken(self, run):
        raise RuntimeError("disk full")

    monkeypatch.setattr(TensorBoardLogger, "finish", broken)
    model, result = vaelab.train(data="digits", epochs=1, hidden=[16], latent_dim=2, threads=1, out=str(tmp_path),
                                 name="w", log=["tensorboard"], progress=False)  # log= the setting, not the printer
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: tensorboard logging failed at the end (disk full); the run goes on without it"]
    assert result.stopped == "completed" and model.config.log == ["tensorboard"]
    for name in ("config.json", "model.json", "model.safetensors", "metrics.jsonl", "samples.png"):
        assert (tmp_path / "w" / name).is_file(), name
    acc = _accumulator(tmp_path / "w")
    assert [e.step for e in acc.Scalars("elbo/val (nats)")] == [1]  # the epochs were logged before the failure


@pytest.mark.parametrize("settings", [
    {"condition_on": ["label"]},
    {"condition_on": ["label"], "semi_supervised": True, "labels_per_class": 5},
], ids=["conditional", "m2"])
def test_tensorboard_end_of_run_for_models_with_a_label(tmp_path, capsys, settings):
    model, _ = vaelab.train(data="digits", epochs=1, hidden=[16], latent_dim=2, threads=1, out=str(tmp_path),
                            name="c", log=["tensorboard"], progress=False, figures=False, **settings)
    assert "warning:" not in capsys.readouterr().err
    acc = _accumulator(tmp_path / "c")
    assert {"images/reconstructions", "images/samples", "images/traversals"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Scalars("elbo/train (nats)")] == [1]
    x, labels = model.test_set()
    folder = tmp_path / "c" / "tensorboard"
    (meta,) = folder.glob("*/*/metadata.tsv")
    assert meta.read_text().splitlines() == [model.class_names[int(y)] for y in labels.tolist()]


def test_no_tracker_is_imported_unless_asked_for(tmp_path):
    code = ("import sys, vaelab; vaelab.train(data='digits', epochs=1, hidden=[16], latent_dim=2, threads=1, "
            f"out={str(tmp_path)!r}, name='plain', progress=False, figures=False); "
            "bad = sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
