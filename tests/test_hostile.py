"""Careless and hostile uses of the command line found by trying them (2026-11-30): outputs that
would replace a file nobody named, an evaluation written over by a report, seeds out of range,
damaged records that crashed readers, resumes that wrote before they failed, a resize that
exhausted memory, one example to score, and the explorer's edges (a cancelled upload, 16-bit
images, the static copy of the page, opposite ends of a spherical path)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.runs import interpolate_latents
from conftest import run_cli  # vaelab ARGV in-process: its exit status

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(hidden=[8], latent_dim=2, epochs=1, batch_size=50, eval_k=0, device="cpu", figures=False, progress=False,
             log=lambda *a, **k: None)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}




@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, (np.random.default_rng(0).random((200, 16)) > 0.5).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def run(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = vaelab.train(data=str(data_file), out=str(tmp_path_factory.mktemp("runs")), name="r", **QUIET)
    run_cli(["eval", model.run_dir, "--k", 10, "--mi-samples", 10, "--gap-examples", 0])
    return model.run_dir


# --- outputs ------------------------------------------------------------------------------------
def test_an_output_never_replaces_a_sibling_nobody_named(run: Path, tmp_path: Path, refused) -> None:
    data = tmp_path / "t.npy"
    np.save(data, np.zeros((3, 16), np.float32))
    before = data.read_bytes()
    refused(["sample", run, "-o", tmp_path / "t.png"], "t.npy", "exists and was not written with", "t.png")
    assert data.read_bytes() == before and not (tmp_path / "t.png").exists()
    for _ in range(2):  # a pair written together is replaced as a pair: the same command runs twice
        assert run_cli(["sample", run, "-o", tmp_path / "s.png", "-n", 4]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 16)


@pytest.mark.parametrize("argv, culprits", [
    (["sample", "{run}", "-o", "{tmp}/"], ["is a folder", "out.png"]),
    (["sample", "{run}", "-o", "{tmp}/s.txt"], ["s.txt", "FILE.png and FILE.npy", ".png or .npy"]),
    (["encode", "{run}", "{data}", "-o", "{tmp}/in.npy"], ["in.npy", ".npz or .csv"]),
    (["report", "{run}", "-o", "{run}/eval.json"], ["eval.json", "would destroy the input"]),
    (["report", "{run}", "-o", "{run}/.lock", "--reevaluate"], [".lock", "would destroy the input"]),
    (["report", "{run}", "--reevaluate", "--seed", "-5"], ["--seed", "-5"]),
    (["eval", "{run}", "--seed", str(2**70)], ["--seed", str(2**70)]),
    (["sample", "{run}", "--seed", str(2**64), "-o", "{tmp}/q.png"], ["--seed"]),
])
def test_outputs_and_seeds_are_refused_before_the_first_write(run: Path, data_file: Path, tmp_path: Path, refused,
                                                               argv: list, culprits: list) -> None:
    (run / ".lock").touch(exist_ok=True)
    before = digest(run)
    fill = {"{run}": str(run), "{tmp}": str(tmp_path), "{data}": str(data_file)}
    args = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in argv]
    refused(args, *culprits)
    assert digest(run) == before  # eval.json kept: report -o RUN/eval.json wrote HTML over it before


def test_a_seed_beyond_64_bits_is_refused_by_train(data_file: Path, tmp_path: Path, refused) -> None:
    refused(["train", "--data", data_file, "--out", tmp_path, "--name", "s", "--seed", 2**64], "seed", "2^63 - 1")
    assert not (tmp_path / "s").exists()


# --- damaged records ------------------------------------------------------------------------------
def test_a_huge_number_in_eval_json_is_a_damaged_run_not_a_crash(run: Path, tmp_path: Path, refused,
                                                                 capsys: pytest.CaptureFixture) -> None:
    import shutil

    copy = tmp_path / "runs" / "huge"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "eval.json").read_text())
    doc["log_px"] = 10**400
    (copy / "eval.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert run_cli(["runs", tmp_path / "runs"]) == 0
    reason = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("huge: damaged:"))
    assert "log_px must be a number within the range of a float" in reason  # before: every run unlisted, a traceback
    refused(["report", copy, "-o", tmp_path / "r.html"], "log_px", "a number within the range of a float")


def test_a_metrics_record_without_a_whole_epoch_is_named(run: Path, tmp_path: Path, refused) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(run, copy)
    text = (copy / "metrics.jsonl").read_text().replace('"epoch": 1', '"epoch": "one"')
    (copy / "metrics.jsonl").write_text(text)
    refused(["report", copy, "-o", tmp_path / "r.html"], "metrics.jsonl:1", "epoch must be a whole number", "'one'")


# --- resuming ---------------------------------------------------------------------------------------
@pytest.fixture()
def resumable(data_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    local = tmp_path / "x.npy"
    local.write_bytes(data_file.read_bytes())
    model, _ = vaelab.train(data=str(local), out=str(tmp_path / "runs"), name="a", **QUIET)
    return model.run_dir, local


def test_a_resume_that_cannot_work_writes_nothing(resumable: tuple[Path, Path], tmp_path: Path, refused) -> None:
    run_dir, data = resumable
    other, _ = vaelab.train(data=str(data), out=str(tmp_path / "runs"), name="b", **{**QUIET, "latent_dim": 3})
    (run_dir / "checkpoint.safetensors").write_bytes((other.run_dir / "checkpoint.safetensors").read_bytes())
    before = digest(run_dir)
    refused(["train", "--resume", run_dir, "--epochs", 2], "checkpoint", "does not fit this model")
    assert digest(run_dir) == before  # config.json and manifest.json were rewritten before the refusal


@pytest.mark.parametrize("edit, culprits", [
    ("model", ["model.json and config.json describe different models", "likelihood"]),
    ("config", ["model.json and config.json describe different models", "latent_dim"]),
    ("shape", ["was trained on examples of shape (16,)", "now has (9,)"]),
    ("rows", ["changed since it was trained", "n_train"]),
])
def test_a_resume_refuses_edited_settings_and_changed_data(resumable: tuple[Path, Path], refused, edit: str,
                                                           culprits: list) -> None:
    run_dir, data = resumable
    if edit == "model":
        doc = json.loads((run_dir / "model.json").read_text())
        doc["likelihood"]["name"] = "gaussian"
        (run_dir / "model.json").write_text(json.dumps(doc))
    elif edit == "config":
        doc = json.loads((run_dir / "config.json").read_text())
        doc["config"]["latent_dim"] = 5
        (run_dir / "config.json").write_text(json.dumps(doc))
    elif edit == "shape":
        np.save(data, (np.random.default_rng(1).random((200, 9)) > 0.5).astype(np.float32))
    else:
        np.save(data, (np.random.default_rng(1).random((300, 16)) > 0.5).astype(np.float32))
    before = digest(run_dir)
    refused(["train", "--resume", run_dir, "--epochs", 2], *culprits)
    assert digest(run_dir) == before


# --- data -------------------------------------------------------------------------------------------
def test_one_example_is_enough_to_score(run: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.npy"
    np.save(one, np.ones((1, 16), np.float32))
    assert run_cli(["encode", run, one, "-o", tmp_path / "z.npz"]) == 0
    assert np.load(tmp_path / "z.npz")["mean"].shape == (1, 2)
    assert run_cli(["reconstruct", run, one, "-o", tmp_path / "r.png"]) == 0


def test_a_resize_beyond_memory_is_refused_before_decoding(tmp_path: Path, refused,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "1G")
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    refused(["train", "--data", folder, "--resize", "100000x100000", "--out", tmp_path / "runs", "--name", "z"],
            "100000x100000", "choose a smaller --resize", "VAELAB_MEMORY_LIMIT")
    assert not (tmp_path / "runs").exists()


# --- the explorer -------------------------------------------------------------------------------------
def test_a_cancelled_upload_is_a_400_not_a_traceback() -> None:
    from starlette.requests import Request

    from vaelab.serve.app import ApiError, _body

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/api/upload"}, receive)
    with pytest.raises(ApiError) as err:
        asyncio.run(_body(request, 1000, "the upload"))
    assert err.value.status == 400 and "the connection closed before the upload arrived" in err.value.message


def test_wide_grey_uploads_keep_their_grey_level() -> None:
    from vaelab.serve.uploads import UploadError, prepare_upload

    def encoded(a: np.ndarray, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt)
        return buf.getvalue()

    mid16 = prepare_upload(encoded(np.full((28, 28), 32768, np.uint16), "PNG"), "g.png", (1, 28, 28))
    half = prepare_upload(encoded(np.full((28, 28), 0.5, np.float32), "TIFF"), "f.tif", (1, 28, 28))
    assert abs(float(mid16.x.mean()) - 0.5) < 1e-3 and abs(float(half.x.mean()) - 0.5) < 1e-6  # were 1.0 and 0.0
    with pytest.raises(UploadError, match=r"float image with values in \[3, 3\]"):
        prepare_upload(encoded(np.full((28, 28), 3.0, np.float32), "TIFF"), "f3.tif", (1, 28, 28))


def test_the_static_copy_of_the_page_carries_the_policy(run: Path) -> None:
    from starlette.testclient import TestClient

    from vaelab.serve.app import CSP, create_app

    client = TestClient(create_app(run))
    for path in ("/", "/static/index.html", "/static/app.js"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-security-policy"] == CSP


def test_a_spherical_path_between_opposite_latents_keeps_its_radius() -> None:
    z0 = torch.tensor([2.0, 0.0, 0.0])
    path = interpolate_latents(z0, -z0, 9, "spherical")
    assert torch.equal(path[0], z0) and torch.equal(path[-1], -z0)
    assert torch.allclose(path.norm(dim=1), torch.full((9,), 2.0), atol=1e-5)  # before: the middle was all zeros
    steps = (path[1:] - path[:-1]).norm(dim=1)
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-5)  # even steps along a half circle


def test_a_file_or_a_run_folder_where_the_other_is_expected(run: Path, data_file: Path, refused) -> None:
    refused(["eval", data_file], "x.npy", "is a file, not a run folder")  # before: "cannot write 'x.npy/eval.json'"
    refused(["train", "--resume", data_file], "x.npy", "is a file, not a run folder")
    refused(["runs", run], "is a run folder itself", f"vaelab runs {run.parent}")  # before: "no run folders", exit 0


@pytest.mark.parametrize("args, culprits", [
    (["--hidden", "0"], ["hidden must be positive integers", "[0]"]),  # was "must be of type list[int]"
    (["--hidden", "64,,32"], ["hidden", "'64', '', '32'"]),  # was read as [64, 32]
    (["--latent-dims", "8,,4"], ["latent_dims", "'8', '', '4'"]),
])
def test_widths_are_read_as_written(data_file: Path, tmp_path: Path, refused, args: list, culprits: list) -> None:
    refused(["train", "--data", data_file, "--out", tmp_path, *args], *culprits)
    assert list(tmp_path.iterdir()) == []


def test_a_count_given_as_a_huge_float_is_refused(data_file: Path, tmp_path: Path, refused) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"batch_size": 1e30, "hidden": [16.0]}')  # (16.0 is 16; 1e30 is no batch size)
    refused(["train", "--data", data_file, "--config", config, "--out", tmp_path / "runs"], "batch_size", "1e+30")
    assert not (tmp_path / "runs").exists()


def test_the_explorer_reads_ascii_digits_only(run: Path) -> None:
    from starlette.testclient import TestClient

    from vaelab.serve.app import create_app

    client = TestClient(create_app(run))
    assert client.get("/api/sample?n=3").status_code == 200
    for bad in ("1_0", "%D9%A3", "+3"):  # int() reads the first two as 10 and 3
        response = client.get(f"/api/sample?n={bad}")
        assert response.status_code == 422 and "must be a whole number" in response.json()["error"]
    assert client.get("/api/example/1_0").status_code == 422


# --- data files and model families (a fifth tester) ---------------------------------------------------
def test_kl_analytic_without_a_closed_form_is_one_line(tmp_path: Path, refused) -> None:
    data = tmp_path / "v.csv"
    np.savetxt(data, np.random.default_rng(0).random((120, 6)), delimiter=",", fmt="%.4f")
    for extra in (["--posterior", "iaf"], ["--prior", "mog"], ["--latent-dims", "4,2"]):  # tracebacks before
        refused(["train", "--data", data, "--likelihood", "gaussian", "--kl", "analytic", "--out", tmp_path / "runs",
                 *extra], "--kl analytic", "no closed form", "--kl auto")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("ids, culprits", [
    ([1, 2, 3], ["class ids up to 3", "1 id(s) below it have no example (the first: 0)", "subtract 1"]),
    ([0, 1_000_000, 2_000_000], ["up to 2000000", "1,999,998 id(s)"]),  # a one-hot of 2,000,001 classes, 2 GB written
])
def test_class_ids_with_gaps_are_refused(tmp_path: Path, refused, ids: list, culprits: list) -> None:
    rng = np.random.default_rng(1)
    y = np.array(ids)[rng.integers(0, 3, 150)]
    np.savez(tmp_path / "d.npz", train=rng.random((150, 6)).astype(np.float32), train_labels=y)
    refused(["train", "--data", tmp_path / "d.npz", "--likelihood", "gaussian", "--condition-on", "label",
             "--out", tmp_path / "runs"], "--condition-on label", *culprits)
    assert not (tmp_path / "runs").exists()


def test_a_table_keeps_a_row_of_empty_cells_and_needs_its_header(tmp_path: Path, refused) -> None:
    rng = np.random.default_rng(0)
    rows = [f"{rng.normal(45, 12):.1f},{rng.choice(['Oslo', 'Paris', 'Rome'])}" for _ in range(120)]
    rows[10] = ","  # every cell missing: a row, not a blank line
    (tmp_path / "t.csv").write_text("age,city\n" + "\n".join(rows) + "\n")
    model, _ = vaelab.train(data=str(tmp_path / "t.csv"), likelihood="mixed", out=str(tmp_path / "runs"), name="t",
                            **{**QUIET, "hidden": [8]})
    info = json.loads((model.run_dir / "config.json").read_text())["data"]
    assert info["n_train"] + info["n_val"] + info["n_test"] == 120  # was 119: the row vanished, outputs shifted
    assert run_cli(["encode", model.run_dir, tmp_path / "t.csv", "-o", tmp_path / "z.npz"]) == 0
    assert np.load(tmp_path / "z.npz")["mean"].shape[0] == 120
    (tmp_path / "nohdr.csv").write_text("\n".join(rows[:10] + rows[11:]) + "\n")  # 41.2,Oslo would name the columns
    refused(["train", "--data", tmp_path / "nohdr.csv", "--likelihood", "mixed", "--out", tmp_path / "r2"],
            "has no header row", "reads as data")
    assert not (tmp_path / "r2").exists()


def test_an_npz_without_train_is_refused_and_covariate_arrays_are_named(tmp_path: Path, refused) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "t.npz", test=rng.random((50, 6)))
    refused(["train", "--data", tmp_path / "t.npz", "--out", tmp_path / "runs"], "holds only 'test'", "'train'")
    np.savez(tmp_path / "c.npz", train=rng.random((50, 6)), train_dose=rng.random(50))
    refused(["train", "--data", tmp_path / "c.npz", "--out", tmp_path / "runs"], "train_dose", "--condition-on dose")
    assert not (tmp_path / "runs").exists()


def test_mlflow_without_its_folder_store_says_what_works(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.tracking  # (an extra; the test command installs it)

    from vaelab.errors import VaelabError
    from vaelab.tracking.mlflow import MLflowLogger

    def refuse(*args, **kwargs):
        raise Exception("The filesystem tracking backend (e.g., './mlruns') is in maintenance mode and will be "
                        "removed; set MLFLOW_ALLOW_FILE_STORE=true to keep using it")  # MLflow 3.x on a folder

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", refuse)
    with pytest.raises(VaelabError, match=r"--mlflow-uri sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true"):
        MLflowLogger("/tmp/nowhere-mlruns").connect()


@pytest.mark.parametrize("kind", ["csv", "h5ad"])
def test_features_are_matched_by_name_not_position(tmp_path: Path, refused, kind: str) -> None:
    """A file whose columns (genes) come in another order encodes the same; other names are
    refused. Before, the columns were read by position: another order, other numbers, no word."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d", "e", "f"]
    x = rng.poisson(3.0, (120, 6)).astype(np.float32)

    def write(path: Path, cols: list[str]) -> Path:
        values = x[:, [names.index(c) if c in names else 0 for c in cols]]
        if kind == "csv":
            np.savetxt(path, values, delimiter=",", fmt="%.0f", header=",".join(cols), comments="")
        else:
            import anndata
            import pandas as pd

            anndata.AnnData(values, var=pd.DataFrame(index=cols)).write_h5ad(path)
        return path

    first = write(tmp_path / f"x.{kind}", names)
    backed = {"backed": True, "binarize": "none"} if kind == "h5ad" else {}  # rows on disk record their genes too
    model, _ = vaelab.train(data=str(first), likelihood="poisson", out=str(tmp_path / "runs"), name="m",
                            **{**QUIET, **backed})
    assert json.loads((model.run_dir / "config.json").read_text())["data"]["features"] == names
    assert run_cli(["encode", model.run_dir, first, "-o", tmp_path / "z1.npz"]) == 0
    assert run_cli(["encode", model.run_dir, write(tmp_path / f"r.{kind}", names[::-1]), "-o", tmp_path / "z2.npz"]) == 0
    assert np.array_equal(np.load(tmp_path / "z1.npz")["mean"], np.load(tmp_path / "z2.npz")["mean"])
    other = write(tmp_path / f"o.{kind}", names[:5] + ["g"])
    refused(["encode", model.run_dir, other, "-o", tmp_path / "z3.npz"], "other features than the run's training data",
            "'f'", "'g'")


@pytest.mark.parametrize("make, args, culprits", [
    ("label_only", ["--condition-on", "label"], ["no feature columns besides the label", "(label)"]),  # said "no data rows"
    ("vectors", ["--likelihood", "gaussian", "--embedding", "4"], ["--embedding 4", "needs --condition-on label"]),
    ("vectors", ["--condition-on", "label", "--semi-supervised", "true", "--labels-per-class", "3",
                 "--labelled-fraction", "0.1"], ["--labels-per-class (3)", "--labelled-fraction (0.1)", "not both"]),
])
def test_options_that_did_nothing_or_were_misnamed(tmp_path: Path, refused, make: str, args: list,
                                                   culprits: list) -> None:
    data = tmp_path / "d.csv"
    if make == "label_only":
        data.write_text("label\n0\n1\n0\n1\n")
    else:
        rows = np.random.default_rng(0).random((60, 4))
        data.write_text("a,b,c,d,label\n" + "".join(",".join(f"{v:.3f}" for v in r) + f",{i % 2}\n"
                                                    for i, r in enumerate(rows)))
    refused(["train", "--data", data, "--out", tmp_path / "runs", *args], *culprits)
    assert not (tmp_path / "runs").exists()


# --- numbers that overflow, and options that had no effect (a sixth tester) ----------------------------
@pytest.mark.parametrize("args, culprits", [
    (["--beta", "1e308"], ["beta must be a number from 0 to 1e+06", "1e+308", "--beta"]),  # NaN blamed on the lr
    (["--free-bits", "1e308"], ["free_bits", "1e+308", "--free-bits"]),  # a traceback (clamp overflow)
    (["--alpha", "1e7"], ["alpha", "1e+07", "--alpha"]),
])
def test_overflowing_loss_weights_are_refused(data_file: Path, tmp_path: Path, refused, args: list,
                                              culprits: list) -> None:
    refused(["train", "--data", data_file, "--out", tmp_path / "runs", *args], *culprits)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["train", "test"])
def test_overflowing_gaussian_data_is_refused_before_training(tmp_path: Path, refused, where: str) -> None:
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    if where == "train":
        x[5, 3] = 1e30  # (x - mu)^2 is inf in float32: NaN at step 1, blamed on the learning rate
        np.save(tmp_path / "d.npy", x)
        data, culprits = tmp_path / "d.npy", ["training data", "1e+30"]
    else:  # a split the training check never read: the validation/test ELBO was NaN
        np.savez(tmp_path / "d.npz", train=x, test=np.full((5, 8), 1e25, np.float32))
        data, culprits = tmp_path / "d.npz", ["the test split of", "1e+25"]
    refused(["train", "--data", data, "--likelihood", "gaussian", "--out", tmp_path / "runs"],
            *culprits, "squares them, which overflows float32", "standardise the data")
    assert not (tmp_path / "runs").exists()


def test_overflow_in_a_batch_is_blamed_on_the_data_not_the_learning_rate(tmp_path: Path, refused) -> None:
    """Each value's square fits float32, the batch's sum of squares does not: the forensics name
    the data, and no retry at a lower learning rate is wasted on it."""
    np.save(tmp_path / "d.npy", np.random.default_rng(0).uniform(-1.5e19, 1.5e19, (200, 8)).astype(np.float32))
    line = refused(["train", "--data", tmp_path / "d.npy", "--likelihood", "gaussian", "--hidden", 8, "--latent-dim", 2,
                    "--epochs", 1, "--eval-k", 0, "--out", tmp_path, "--name", "r", "--quiet"],
                   "likely cause: the data's magnitude", "overflow float32", "standardise the data", "holds no checkpoint")
    assert "learning rate" not in line and "--lr" not in line  # was: "likely cause: the learning rate (0.00025)"
    assert not (tmp_path / "r" / "events.jsonl").exists()  # no recovery: a lower lr cannot help


def test_latent_dim_beside_latent_dims_is_refused(data_file: Path, tmp_path: Path, refused) -> None:
    refused(["train", "--data", data_file, "--latent-dims", "4,2", "--latent-dim", 7, "--out", tmp_path / "runs"],
            "--latent-dims 4,2", "--latent-dim 7", "no effect", "only one")  # 7 was silently ignored
    (tmp_path / "c.toml").write_text("latent_dim = 7\n")
    refused(["train", "--data", data_file, "--config", tmp_path / "c.toml", "--latent-dims", "4,2",
             "--out", tmp_path / "runs"], "--latent-dim 7", "only one")
    with pytest.raises(vaelab.VaelabError, match="give only one of them"):
        vaelab.train(data=str(data_file), out=str(tmp_path / "runs"), latent_dims=[4, 2], latent_dim=7, epochs=1)
    assert not (tmp_path / "runs").exists()


def test_stratify_by_a_continuous_column_is_refused(tmp_path: Path, refused) -> None:
    import anndata
    import pandas as pd

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"size": rng.random(120) * 100, "n_genes": rng.integers(0, 1000, 120),
                        "batch": rng.integers(0, 3, 120)}, index=[f"c{i}" for i in range(120)])
    anndata.AnnData(rng.poisson(3.0, (120, 6)).astype(np.float32), obs=obs).write_h5ad(tmp_path / "x.h5ad")
    train = ["train", "--data", tmp_path / "x.h5ad", "--likelihood", "poisson", "--out", tmp_path / "runs"]
    refused([*train, "--stratify-by", "size"], "--stratify-by size", "non-integer values", "not categorical")
    refused([*train, "--stratify-by", "n_genes"], "--stratify-by n_genes", "distinct values", "at most 100")
    assert not (tmp_path / "runs").exists()  # each cell was its own stratum, silently
    s = vaelab.data.load_data(str(tmp_path / "x.h5ad"), stratify_by="batch", counts=True)  # whole, few: a category
    assert len(s.train) + len(s.val) + len(s.test) == 120


def test_a_huge_embedding_is_named_as_the_culprit(tmp_path: Path, refused, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "1G")
    rows = np.random.default_rng(0).random((60, 4))
    (tmp_path / "d.csv").write_text("a,b,c,d,label\n" + "".join(",".join(f"{v:.3f}" for v in r) + f",{i % 2}\n"
                                                                for i, r in enumerate(rows)))
    refused(["train", "--data", tmp_path / "d.csv", "--condition-on", "label", "--embedding", 100_000_000,
             "--out", tmp_path / "runs"], "--embedding 100000000", "choose a smaller --embedding")  # named --latent-dim/--hidden
    assert not (tmp_path / "runs").exists()


def test_column_types_statistics_are_kept(tmp_path: Path, refused) -> None:
    rng = np.random.default_rng(0)
    rows = [f"{rng.normal(45, 12):.1f},{rng.choice(['Oslo', 'Paris'])},{rng.poisson(7)}" for _ in range(120)]
    (tmp_path / "t.csv").write_text("age,city,visits\n" + "\n".join(rows) + "\n")
    model, _ = vaelab.train(data=str(tmp_path / "t.csv"), likelihood="mixed", out=str(tmp_path / "runs"), name="t",
                            column_types="age=numeric(50;10),visits=count(3)", **QUIET)
    kept = json.loads((model.run_dir / "model.json").read_text())["likelihood"]["column_types"]
    assert "age=numeric(50.0;10.0)" in kept and "visits=count(3.0)" in kept  # were the training split's, silently
    refused(["train", "--data", tmp_path / "t.csv", "--likelihood", "mixed", "--column-types", "age=numeric(50;0)",
             "--out", tmp_path / "r2"], "--column-types", "age=numeric(50;0)", "std > 0")
    assert not (tmp_path / "r2").exists()


# --- separators, the command line's words, unreadable records, outputs checked first (a seventh tester) -------
def _table(path: Path, sep: str = ",", quote: bool = False, decimal: str = ".", header: bool = True) -> Path:
    rows = np.random.default_rng(0).random((60, 4))
    cell = (lambda v: f'"{v:.3f}"') if quote else (lambda v: f"{v:.3f}".replace(".", decimal))
    path.write_text((sep.join("abcd") + "\n" if header else "") + "".join(sep.join(map(cell, r)) + "\n" for r in rows))
    return path


def test_quoted_numbers_are_read_as_the_numbers_they_quote(tmp_path: Path) -> None:
    quoted = vaelab.data.load_data(str(_table(tmp_path / "q.csv", quote=True)), seed=0)  # was: "could not be parsed"
    plain = vaelab.data.load_data(str(_table(tmp_path / "p.csv")), seed=0)
    assert torch.equal(quoted.train, plain.train) and torch.equal(quoted.test, plain.test)


SEPARATED = [
    (";", ".", True, ["looks semicolon-separated", "'a;b;c;d'", "sep=';')"]),  # was: line 2 ... not a number
    (";", ",", True, ["semicolon-separated with decimal commas", "decimal=','"]),  # was: '637;0' is not a number
    ("\t", ".", True, ["looks tab-separated", "sep='\\t'"]),
]


@pytest.mark.parametrize("likelihood, sep, decimal, header, culprits", [
    *(("gaussian", *case) for case in SEPARATED),
    ("gaussian", ";", ".", False, ["looks semicolon-separated", "sep=';')"]),  # no header: a mixed table needs one
    *(("mixed", *case) for case in SEPARATED),
])
def test_a_table_with_another_separator_is_named_with_the_fix(tmp_path: Path, refused, likelihood: str, sep: str,
                                                              decimal: str, header: bool, culprits: list) -> None:
    data = _table(tmp_path / "d.csv", sep=sep, decimal=decimal, header=header)
    refused(["train", "--data", data, "--likelihood", likelihood, "--out", tmp_path / "runs"],
            "d.csv", *culprits, "comma-separated")  # mixed: "column 'a;b;c;d' has level ... never in training"
    assert not (tmp_path / "runs").exists()


def test_sample_names_its_own_options_for_a_model_with_covariates(tmp_path: Path, refused) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "d.csv").write_text("a,b,c,d,dose,label\n" + "".join(
        ",".join(f"{v:.3f}" for v in rng.random(4)) + f",{rng.random():.2f},{i % 2}\n" for i in range(60)))
    model, _ = vaelab.train(data=str(tmp_path / "d.csv"), likelihood="gaussian", condition_on=["label", "dose"],
                            out=str(tmp_path / "runs"), name="c", **QUIET)
    out = ["-o", tmp_path / "s.png"]
    line = refused(["sample", model.run_dir, "--label", 1, *out], "--label 1", "label, dose", "--context 1,DOSE")
    assert " as c" not in line  # was: "give every column as c, not only the label" (the Python API's words)
    refused(["sample", model.run_dir, *out], "label, dose", "--context LABEL,DOSE")  # was: "give the class (--label"
    refused(["sample", model.run_dir, "--label", 1, "--context", "1,0.5", *out], "--label and --context", "one of them")
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "s.npy").exists()
    assert run_cli(["sample", model.run_dir, "--context", "1,0.5", "-n", 4, *out]) == 0


def test_an_unreadable_weights_file_says_what_is_wrong(run: Path, tmp_path: Path, refused, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    import os
    import shutil

    import vaelab.training.checkpoint as checkpoint

    copy = tmp_path / "runs" / "w"
    shutil.copytree(run, copy)
    weights, ckpt = copy / "model.safetensors", copy / "checkpoint.safetensors"
    real = os.access  # the tests run as root, who may read anything: a file we may not read, as os.access says
    monkeypatch.setattr(checkpoint.os, "access", lambda p, mode, *a, **k: False if Path(p) == weights
                        and mode & os.R_OK else real(p, mode, *a, **k))
    refused(["sample", copy, "-o", tmp_path / "s.png"], str(weights), "cannot be read (permission denied)", "chmod u+r")
    monkeypatch.undo()
    weights.unlink()
    weights.mkdir()  # was: "weights file ... not found" (and "no epoch finished" in 'vaelab runs')
    refused(["sample", copy, "-o", tmp_path / "s.png"], str(weights), "is a folder, not a file", "damaged")
    capsys.readouterr()
    assert run_cli(["runs", tmp_path / "runs"]) == 0
    assert "w: damaged: model.safetensors is a folder, not a file" in capsys.readouterr().out
    ckpt.unlink()
    ckpt.mkdir()
    before = digest(copy)
    refused(["train", "--resume", copy], str(ckpt), "is a folder, not a file")  # was: "checkpoint ... not found"
    refused(["verify", copy], str(ckpt), "is a folder, not a file")  # was: "it did not finish an epoch"
    assert digest(copy) == before and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("target", ["/proc/version", "/dev/null"])
def test_compare_checks_its_output_before_estimating(run: Path, tmp_path: Path, refused,
                                                     monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    import shutil

    import vaelab.compare

    if not Path(target).exists():
        pytest.skip(f"no {target} here")
    shutil.copytree(run, tmp_path / "r2")

    def estimate(*args, **kwargs):
        raise AssertionError("compared (estimated) before -o was checked")

    monkeypatch.setattr(vaelab.compare, "compare", estimate)
    refused(["compare", run, tmp_path / "r2", "-o", target], f"'{target}'")  # /proc: failed after the estimation
    assert Path("/dev/null").is_char_device()  # (and /dev/null, as root, was replaced by the page)


def test_eval_keeps_a_read_only_eval_json(run: Path, tmp_path: Path, refused, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    import vaelab.outputs

    copy = tmp_path / "ro"
    shutil.copytree(run, copy)
    record = copy / "eval.json"
    record.chmod(0o444)
    real = os.access  # root may write a 0444 file, so os.access answers as it would for its owner
    monkeypatch.setattr(vaelab.outputs.os, "access", lambda p, mode, *a, **k: False if Path(p) == record
                        and mode & os.W_OK else real(p, mode, *a, **k))
    before = digest(copy)
    for argv in (["eval", copy, "--k", 5], ["report", copy, "--reevaluate", "--k", 5, "-o", tmp_path / "r.html"]):
        refused(argv, str(record), "is read-only", "chmod u+w")  # eval: replaced by the atomic rename
    assert digest(copy) == before and not (tmp_path / "r.html").exists()
    record.chmod(0o644)


def test_report_names_a_damaged_eval_json(run: Path, tmp_path: Path, refused, capsys: pytest.CaptureFixture) -> None:
    import shutil

    copy = tmp_path / "runs" / "d"
    shutil.copytree(run, copy)
    (copy / "eval.json").write_bytes((copy / "eval.json").read_bytes()[:100])  # truncated
    before = digest(copy)
    refused(["report", copy, "-o", tmp_path / "r.html"], str(copy / "eval.json"), "is damaged", "not readable JSON",
            f"vaelab eval {copy}", "--reevaluate")  # was: evaluated anew and written over, silently
    assert digest(copy) == before and not (tmp_path / "r.html").exists()
    capsys.readouterr()
    assert run_cli(["runs", tmp_path / "runs"]) == 0
    assert "d: damaged: eval.json is not readable JSON" in capsys.readouterr().out  # the same word in the listing
