"""Careless and hostile uses of the command line found by trying them (2026-11-30): outputs that
would replace a file nobody named, an evaluation written over by a report, seeds out of range,
damaged records that crashed readers, resumes that wrote before they failed, a resize that
exhausted memory, one example to score, and the explorer's edges (a cancelled upload, 16-bit
images, the static copy of the page, opposite ends of a spherical path)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.runs import interpolate_latents
from conftest import digest, run_cli  # vaelab ARGV in-process: its exit status

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = dict(hidden=[8], latent_dim=2, epochs=1, batch_size=50, eval_k=0, device="cpu", figures=False, progress=False,
             log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def data_file(binary_file: Path) -> Path:
    return binary_file


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
    assert abs(float(mid16.x.mean()) - 0.5) < 1e-3  # was 1.0
    with pytest.raises(UploadError, match="PNG or JPEG"):  # float grey comes as TIFF: not read (PNG and JPEG only)
        prepare_upload(encoded(np.full((28, 28), 0.5, np.float32), "TIFF"), "f.tif", (1, 28, 28))


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

    assert Path(target).exists()  # (Linux: both are always there)
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


# --- names that reach the terminal, names with spaces (an eighth tester) -------------------------------
HOSTILE = "ev\x1b]0;PWNED\x07\x1b[2J\x1b[31mRED\x9b\x7f"  # retitles the window, clears the screen, C1 CSI, DEL
SHOWN = r"ev\x1b]0;PWNED\x07\x1b[2J\x1b[31mRED\x9b\x7f"
CONTROLS = [chr(c) for c in [*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0)]]  # \t, \n: see below


def test_names_reach_the_terminal_escaped(run: Path, tmp_path: Path, refused, capsys: pytest.CaptureFixture) -> None:
    import shutil

    shutil.copytree(run, tmp_path / "runs" / HOSTILE)
    shutil.copytree(run, tmp_path / "runs" / "plain é")  # other scripts' letters stay as they are
    capsys.readouterr()
    assert run_cli(["runs", tmp_path / "runs"]) == 0
    listing = capsys.readouterr().out
    assert SHOWN in listing and "plain é" in listing
    assert not any(c in listing.replace("\n", "") for c in CONTROLS), repr(listing)  # was: the raw sequences
    assert run_cli(["compare", run, tmp_path / "runs" / HOSTILE, "--no-paired"]) == 0  # compare's table
    table = capsys.readouterr()
    assert SHOWN in table.out and not any(c in table.out.replace("\n", "") + table.err.replace("\n", "")
                                          for c in CONTROLS), repr(table)
    out = tmp_path / HOSTILE / "s.png"
    out.parent.mkdir()
    assert run_cli(["sample", run, "-n", 2, "-o", out]) == 0  # "wrote PATH"
    wrote = capsys.readouterr().out
    assert f"{SHOWN}/s.png" in wrote and not any(c in wrote.replace("\n", "") for c in CONTROLS), repr(wrote)
    (tmp_path / "esc.csv").write_text(f"a{HOSTILE},b\n" + "0.1,0.2\n" * 20)  # a column's name in an error
    line = refused(["train", "--data", tmp_path / "esc.csv", "--condition-on", "zzz", "--out", tmp_path / "r"],
                   "--condition-on zzz", f"(columns: a{SHOWN}, b)")
    assert not any(c in line for c in CONTROLS), repr(line)
    line = refused(["eval", tmp_path / f"x{HOSTILE}"], f"x{SHOWN}", "not found")  # an argument's own name too
    assert not any(c in line for c in CONTROLS), repr(line)
    line = refused(["train", "--likelihood", f"x{HOSTILE}"], "--likelihood", "x")  # click's own messages too
    assert not any(c in line for c in CONTROLS), repr(line)


def test_names_keep_their_inner_spaces(tmp_path: Path, refused, capsys: pytest.CaptureFixture) -> None:
    rows = np.random.default_rng(0).random((60, 2))
    (tmp_path / "d.csv").write_text("a,b,dose level\n" + "".join(f"{r[0]:.3f},{r[1]:.3f},{i % 2}\n"
                                                                for i, r in enumerate(rows)))
    assert run_cli(["train", "--data", tmp_path / "d.csv", "--condition-on", " dose level ", "--hidden", " 8, 4 ",
                    "--latent-dim", 2, "--epochs", 1, "--eval-k", 10, "--out", tmp_path / "runs", "--name", "s",
                    "--quiet"]) == 0  # was: "has no column 'doselevel' (columns: a, b, dose level)"
    config = json.loads((tmp_path / "runs" / "s" / "config.json").read_text())["config"]
    assert config["condition_on"] == ["dose level"] and config["hidden"] == [8, 4]
    refused(["train", "--data", tmp_path / "d.csv", "--hidden", "6 4", "--out", tmp_path / "r2"],
            "hidden", "'6 4'")  # was read as 64
    assert not (tmp_path / "r2").exists()


# --- names that look like mathtext, damaged eval.json numbers, the collapse verdict (2026-11-30) ---------
MATHTEXT = [r"$\frac{1$", r"$x^{$", "a$b$c$d"]  # unbalanced: crashed the figure; paired: drawn as math


@pytest.fixture
def drawn_texts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every text of every figure vaelab renders, as matplotlib reads it: (shown text, is it math)."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    texts: list[tuple[str, Any]] = []
    real = Figure.savefig

    def spy(self: Figure, *args: Any, **kwargs: Any) -> Any:
        texts.extend(t._preprocess_math(t.get_text()) for t in self.findobj(Text) if t.get_text())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return texts


def test_mathtext_names_are_drawn_as_plain_text(tmp_path: Path, drawn_texts: list[tuple[str, Any]]) -> None:
    import shutil

    rng = np.random.default_rng(0)
    rows = [f"{rng.normal():.3f},{rng.normal():.3f},{rng.normal():.3f},{MATHTEXT[i % 3]}" for i in range(90)]
    (tmp_path / "d.csv").write_text("a,b,c,label\n" + "\n".join(rows) + "\n")
    assert run_cli(["train", "--data", tmp_path / "d.csv", "--condition-on", "label", "--likelihood", "gaussian",
                    "--epochs", 1, "--eval-k", 10, "--hidden", 8, "--latent-dim", 2, "--out", tmp_path / "runs",
                    "--name", "r", "--quiet"]) == 0
    run = tmp_path / "runs" / "r"
    drawn_texts.clear()
    assert run_cli(["report", run]) == 0  # was: ParseSyntaxException from class_grid, no report
    assert (run / "report.html").is_file()
    math_texts = [text for text, is_math in drawn_texts if is_math]  # vaelab's own formulas, none with a name
    assert not any(part in text for text in math_texts for part in (r"\frac{1", "x^{", "a$b")), math_texts
    for name in MATHTEXT:  # each class name drawn as it is written (row titles of the class grids)
        assert (name, False) in drawn_texts, (name, drawn_texts)

    a, b = tmp_path / "runs" / MATHTEXT[0], tmp_path / "runs" / MATHTEXT[2]  # run folders named like mathtext
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    drawn_texts.clear()
    assert run_cli(["compare", a, b, "-o", tmp_path / "cmp.html", "--no-paired"]) == 0  # was: a crash in the legend
    assert (MATHTEXT[0], False) in drawn_texts and (MATHTEXT[2], False) in drawn_texts
    assert not any(is_math for _, is_math in drawn_texts)


def test_plain_text_survives_backslashes_and_dollars() -> None:
    from matplotlib.text import Text

    from vaelab.plots import plain_text

    for name in [*MATHTEXT, "a\\$b", "\\$", "$$", "100 $ and \\alpha", "plain"]:
        shown, is_math = Text()._preprocess_math(plain_text(name))
        assert (shown, is_math) == (name, False), name


@pytest.mark.parametrize("edit, culprits", [
    (lambda d: d.update(elbo=float("nan")), ["elbo", "a finite number", "NaN"]),
    (lambda d: d.update(nll=float("inf")), ["nll", "a finite number", "Infinity"]),
    (lambda d: d.update(kl=float("-inf")), ["kl", "a finite number", "-Infinity"]),
    (lambda d: d["latents"].update(kl_per_dim=d["latents"]["kl_per_dim"][:1]), ["latents.kl_per_dim", "1 values",
                                                                                "latent_dim is 2"]),
    (lambda d: d["latents"].update(activity=[]), ["latents.activity", "0 values"]),
    (lambda d: d.update(n=0), ["n must be at least 1", "got 0"]),
    (lambda d: d.update(k=0), ["k must be at least 1"]),
    (lambda d: d.update(n=10**30), ["n must be a whole number below 2^63"]),
    (lambda d: d["latents"].update(active_units=-3), ["latents.active_units must be at least 0", "-3"]),
    (lambda d: d["latents"].update(latent_dim=0), ["latents.latent_dim must be at least 1"]),
    (lambda d: d["latents"].update(informative_units=[999, -5]), ["latents.informative_units", "999"]),
])
def test_impossible_numbers_in_eval_json_are_a_damaged_file(run: Path, tmp_path: Path, refused, edit: Any,
                                                             culprits: list[str], capsys: pytest.CaptureFixture) -> None:
    import shutil

    copy = tmp_path / "runs" / "e"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "eval.json").read_text())
    edit(doc)
    (copy / "eval.json").write_text(json.dumps(doc))
    before = digest(copy)
    # was: accepted and shown ("nan", "-inf ± 0.05"), or an IndexError in the report's traversal
    refused(["report", copy, "-o", tmp_path / "r.html"], str(copy / "eval.json"), *culprits, "rewrite it with 'vaelab eval'")
    assert digest(copy) == before and not (tmp_path / "r.html").exists()
    capsys.readouterr()
    assert run_cli(["runs", tmp_path / "runs"]) == 0
    assert "e: damaged:" in capsys.readouterr().out
    refused(["compare", copy, run, "--no-paired"], "is damaged", culprits[0].split()[0])


def test_huge_finite_numbers_are_shown_short(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import re
    import shutil

    copy = tmp_path / "runs" / "big"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "eval.json").read_text())
    doc.update(elbo=-1e308, elbo_stderr=1e308, nll=1e308, log_px=-1e308, kl=1e308, reconstruction=-1e300)
    doc["latents"].update(kl=1e308, kl_per_dim=[1e30, 0.5])  # (matplotlib's ticks overflow near 1e308)
    (copy / "eval.json").write_text(json.dumps(doc))
    wide = re.compile(r"\d{20,}")  # 1e308 in fixed point: 309 digits (a page 5374 px wide)
    assert run_cli(["report", copy, "-o", tmp_path / "r.html"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "1e+308" in page and not wide.search(page)
    capsys.readouterr()
    assert run_cli(["runs", tmp_path / "runs"]) == 0
    assert run_cli(["compare", copy, run, "--no-paired", "-o", tmp_path / "c.html"]) == 0
    out = capsys.readouterr().out
    assert "1e+308" in out and not wide.search(out) and not wide.search((tmp_path / "c.html").read_text())


def test_vaelab_writes_only_numbers_it_reads_back(run: Path, tmp_path: Path) -> None:
    import shutil

    from vaelab.errors import VaelabError
    from vaelab.evaluation import EvaluationSummary
    from vaelab.runs import write_eval

    EvaluationSummary.read(run / "eval.json")  # a freshly written eval.json loads (finite numbers only)
    copy = tmp_path / "nan"
    shutil.copytree(run, copy)
    model = vaelab.load(copy)
    with torch.no_grad():
        next(iter(model.vae.decoder.parameters())).fill_(float("nan"))  # outputs NaN on every example
    ev = model.evaluate(k=30, mi_samples=10, gap_examples=0)
    before = (copy / "eval.json").read_bytes()
    with pytest.raises(VaelabError, match=r"has elbo = nan: the model's outputs are not finite .* was not written"):
        write_eval(copy, ev)  # never a file its own readers refuse (NaN is not even standard JSON)
    assert (copy / "eval.json").read_bytes() == before


def test_collapse_verdict_does_not_contradict_itself() -> None:
    import math

    from vaelab.build import build_vae
    from vaelab.evaluation import evaluate, format_table
    from vaelab.report.evaluation import latents_section

    vae = build_vae((16,), latent_dim=2, hidden=[8])
    last = vae.encoder.net[-1]
    with torch.no_grad():  # q(z|x) = N(1, 1) whatever x is: KL 0.5 nats per unit, I(x;z) = 0
        last.weight.zero_()
        last.bias[:2] = 1.0
        last.bias[2:] = math.log(math.expm1(1.0 - vae.encoder.min_scale))
    x = torch.tensor((np.random.default_rng(0).random((50, 16)) > 0.5).astype(np.float32))
    torch.manual_seed(0)
    ev = evaluate(vae, x, k=0, mi_samples=50, gap_examples=0).summary()
    assert ev.latents.verdict == "collapsed" and len(ev.latents.informative_units) == 2
    (line,) = [r for r in format_table(ev).splitlines() if r.lstrip().startswith("posterior collapsed")]
    # was: "YES (2 of 2 units carry information)"
    assert "YES (I(x;z) is 0 % of log N, under 10 %; 2 of 2 units have a KL above 0.1 nats)" in line
    assert not any("carry information" in text for text in (line, *ev.warnings, latents_section(ev, {})))
    (warning,) = ev.warnings
    assert "the same whatever x is" in warning and "is (almost) the prior" not in warning  # its KL is off the prior


# --- data readers under damaged and hostile files (a tenth tester, 2026-11-30) ----------------------
def _damaged_h5ad(path: Path, field: str) -> Path:
    """A CSR .h5ad of 30 cells x 6 genes with one entry of X/indptr or X/indices made impossible."""
    anndata = pytest.importorskip("anndata")
    h5py = pytest.importorskip("h5py")
    import scipy.sparse

    x = (np.random.default_rng(0).random((30, 6)) > 0.5).astype(np.float32)
    anndata.AnnData(scipy.sparse.csr_matrix(x)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        if field == "indptr":
            f["X/indptr"][10] = 10**9  # scipy trusted it: a segfault in toarray
        else:
            f["X/indices"][0] = 1000  # a column past the 6 genes: silently another cell's value
    return path


@pytest.mark.parametrize("backed", ["false", "true"])
@pytest.mark.parametrize("field,culprit", [("indptr", "X/indptr holds 1,000,000,000 at entry 10"),
                                           ("indices", "X/indices holds 1,000")])
def test_a_damaged_sparse_h5ad_is_named_not_a_crash(tmp_path: Path, refused, backed: str, field: str,
                                                   culprit: str) -> None:
    path = _damaged_h5ad(tmp_path / "cells.h5ad", field)
    refused(["train", "--data", path, "--backed", backed, "--likelihood", "poisson", "--out", tmp_path / "runs"],
            "cells.h5ad' is a damaged .h5ad file", culprit, "adata.write_h5ad")
    assert not (tmp_path / "runs").exists()


def test_a_sparse_check_accepts_what_anndata_writes(tmp_path: Path) -> None:
    pytest.importorskip("anndata")
    import scipy.sparse

    from vaelab.data.anndata import check_sparse, sparse_problem

    m = scipy.sparse.random(50, 7, density=0.3, format="csr", random_state=0)
    check_sparse(m, "m")
    check_sparse(m.tocsc(), "m")
    assert sparse_problem("X", np.array([0, 2, 1, 3]), np.array([0, 1, 0]), 3, 3, 2) == \
        "X/indptr decreases at entry 2 (2 then 1)"
    assert "starts at 1" in sparse_problem("X", np.array([1, 2, 3]), np.array([0, 1, 0]), 3, 2, 2)


def _fifo_with_a_writer(path: Path) -> Any:
    """A FIFO at ``path`` and a thread that writes a CSV row into it once a reader opens it (so
    a reader that waits for data is not blocked forever); the returned function releases it."""
    import os
    import threading

    os.mkfifo(path)
    stop = threading.Event()

    def write() -> None:
        for _ in range(20):  # a reader that opens it again (numpy after csv) gets the row again
            with open(path, "w") as f:  # blocks until someone opens the FIFO for reading
                f.write("x,y\n1,2\n" if not stop.is_set() else "")
            if stop.is_set():
                return

    threading.Thread(target=write, daemon=True).start()

    def release() -> None:
        stop.set()
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer through, if still waiting
        os.close(fd)

    return release


def test_a_data_path_that_is_not_a_regular_file_is_refused(run: Path, tmp_path: Path, refused) -> None:
    fifo = tmp_path / "fifo.csv"
    release = _fifo_with_a_writer(fifo)
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")  # read until MemoryError
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)  # was "not found"
    out = tmp_path / "runs"

    def waited(*_: Any) -> None:
        raise TimeoutError("a reader waited on the FIFO, or read /dev/zero, for 30 s")

    import signal

    before = signal.signal(signal.SIGALRM, waited)
    signal.setitimer(signal.ITIMER_REAL, 30, 5)  # without the check these hang (or read until memory runs out):
    # a failure, not a hang (again every 5 s, should a reader swallow the first)
    try:
        for path, kind in ((fifo, "(a FIFO)"), (zero, "(a character device)")):
            refused(["train", "--data", path, "--out", out], f"'{path}' is not a regular file {kind}")
        refused(["train", "--data", fifo, "--backed", "true", "--out", out], "is not a regular file (a FIFO)")
        refused(["train", "--data", tmp_path / "fifo.h5ad", "--out", out], "not found")  # missing: as before
        refused(["train", "--data", loop, "--out", out], f"'{loop}' is a loop of symbolic links")
        refused(["encode", run, fifo, "-o", tmp_path / "z.npz"], "is not a regular file (a FIFO)")
        refused(["eval", run, "--data", zero], "is not a regular file (a character device)")
        refused(["train", "--data", "", "--out", out], "the data path is empty")  # it read '.' as an image folder
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        release()
    assert not out.exists() and not (tmp_path / "z.npz").exists()


def _npy_declaring(shape: tuple[int, ...], payload: int = 16) -> bytes:
    """An .npy header declaring ``shape`` float64 values, followed by ``payload`` bytes."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return f.getvalue() + bytes(payload)


@pytest.mark.parametrize("shape,culprit", [((10**11, 10**5), "is cut short"),
                                           ((-5, 3), "declares the shape (-5, 3), with a negative dimension")])
def test_a_header_declaring_an_impossible_shape_is_refused(run: Path, tmp_path: Path, refused,
                                                          shape: tuple, culprit: str) -> None:
    import zipfile

    npy = tmp_path / "x.npy"
    npy.write_bytes(_npy_declaring(shape))
    npz = tmp_path / "x.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("train.npy", _npy_declaring(shape))
    out = tmp_path / "runs"
    for args in (["train", "--data", npy, "--out", out], ["train", "--data", npy, "--backed", "true", "--out", out],
                 ["train", "--data", npz, "--out", out], ["encode", run, npy, "-o", tmp_path / "z.npz"],
                 ["eval", run, "--data", npz]):
        refused(args, culprit, "numpy.save")
    assert not out.exists() and not (tmp_path / "z.npz").exists()


def test_archives_that_inflate_past_the_memory_cap_are_refused_unread(tmp_path: Path, refused,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import tracemalloc

    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "8M")
    npz = tmp_path / "bomb.npz"
    np.savez_compressed(npz, train=np.zeros((4_000, 1_000)))  # 32 MB of zeros in a small archive
    text = tmp_path / "bomb.csv.gz"
    with gzip.open(text, "wb") as f:
        row = b",".join([b"0"] * 100) + b"\n"
        for _ in range(300):
            f.write(row * 1_000)  # 60 MB of text
    assert npz.stat().st_size < 2**20 and text.stat().st_size < 2**20
    out = tmp_path / "runs"
    tracemalloc.start()
    try:
        refused(["train", "--data", npz, "--out", out], "bomb.npz' holds 1 array(s) of 4,000,000 values",
                "VAELAB_MEMORY_LIMIT=8M", "--backed true")
        # its numbers are counted as it inflates: 2 MiB of "0," hold 1,048,576 of them, 16 MiB once read (16 bytes each)
        refused(["train", "--data", text, "--out", out],
                "decompresses to 2 MiB of text holding 1,048,576 numbers or more (stopped there)", "the 8 MiB cap")
        refused(["train", "--data", text, "--likelihood", "mixed", "--out", out], "(stopped there)", "the 8 MiB cap")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20 and not out.exists()


def test_a_memory_error_while_reading_is_one_line(tmp_path: Path, refused, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((10, 3), np.float32))

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(np, "load", no_memory)
    refused(["train", "--data", path, "--out", tmp_path / "runs"], "x.npy' does not fit in memory", "--backed true")


def test_the_memory_cap_names_backed_with_its_value(tmp_path: Path, refused, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "100K")
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1_000, 100), np.float32))
    refused(["train", "--data", path, "--out", tmp_path / "runs"], "add --backed true to read it from disk")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels (its header only: no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_an_image_beyond_pillows_guard_is_named_with_its_size(tmp_path: Path, refused) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "small.png")
    (folder / "big.png").write_bytes(_png_header_only(20_000, 10_000))
    refused(["train", "--data", folder, "--resize", "8x8", "--out", tmp_path / "runs"],
            "big.png' is 200,000,000 pixels, more than Pillow will decode")
    assert not (tmp_path / "runs").exists()


def test_an_image_folder_reads_wide_grey_at_its_grey_level(tmp_path: Path) -> None:
    from vaelab.data.images import read_image_folder

    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(np.full((6, 6), 32_768, np.uint16)).save(folder / "a16.png")  # mode I;16: mid-grey
    Image.fromarray(np.full((6, 6), 1_000, np.uint16)).save(folder / "b16.png")  # dark grey, not white
    Image.fromarray(np.full((6, 6), 64, np.uint8)).save(folder / "d8.png")
    with Image.open(folder / "a16.png") as image:
        assert image.mode.startswith("I")
    x = read_image_folder(folder).x
    assert x.shape == (3, 1, 6, 6) and x.dtype == np.uint8
    assert x[:, 0, 0, 0].tolist() == [128, 4, 64]  # round(v / 65535 * 255), and 8 bits as they are
    small = read_image_folder(folder, (3, 3)).x  # resized as a float image: the same levels
    assert small[:, 0, 1, 1].tolist() == [128, 4, 64]
    from vaelab.data.images import _wide_grey  # 32-bit integer and float images (PNG holds neither)

    for image, level in ((Image.fromarray(np.full((2, 2), 200, np.int32), mode="I"), 200 / 255),
                         (Image.fromarray(np.full((2, 2), 40_000, np.int32), mode="I"), 40_000 / 65535),
                         (Image.fromarray(np.full((2, 2), 0.25, np.float32), mode="F"), 0.25)):
        assert np.allclose(np.asarray(_wide_grey(image, folder / "x.png")), level)


def test_a_single_number_in_an_npz_is_refused(tmp_path: Path, refused) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, train=np.zeros((40, 5), np.float32), test=np.array(1.0))
    refused(["train", "--data", path, "--out", tmp_path / "runs"], "its array 'test' is a single number (shape ())")


# --- labels matched by name, a run folder inside its data, options without effect (a tenth tester, 2026-11-30) ---
def _labelled_csv(path: Path, labels: list[str], n: int = 60, seed: int = 0, column: str = "label") -> Path:
    rows = np.random.default_rng(seed).random((n, 3))
    path.write_text(f"a,b,c,{column}\n" + "".join(f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{labels[i % len(labels)]}\n"
                                                   for i, r in enumerate(rows)))
    return path


def _class_folders(root: Path, classes: list[str], per_class: int = 6) -> Path:
    rng = np.random.default_rng(1)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_new_data_labels_are_matched_to_the_models_classes_by_name(tmp_path: Path, refused) -> None:
    data = _labelled_csv(tmp_path / "named.csv", ["cat", "dog", "fish"])
    model, _ = vaelab.train(data=str(data), condition_on=["label"], likelihood="gaussian", out=str(tmp_path / "runs"),
                            name="named", **QUIET)
    assert model.class_names == ("cat", "dog", "fish")
    fish = _labelled_csv(tmp_path / "fish.csv", ["fish"], n=2)  # one class: numbered 0 within the file alone
    both = _labelled_csv(tmp_path / "both.csv", ["fish", "fish", "cat", "dog"], n=4)
    assert run_cli(["encode", model.run_dir, fish, "-o", tmp_path / "f.npz"]) == 0
    assert run_cli(["encode", model.run_dir, both, "-o", tmp_path / "b.npz"]) == 0
    f, b = np.load(tmp_path / "f.npz"), np.load(tmp_path / "b.npz")
    assert f["labels"].tolist() == [2, 2] and b["labels"].tolist() == [2, 2, 0, 1]  # were [0, 0] (cat) and [2, 2, 0, 1]
    assert np.allclose(f["mean"], b["mean"][:2])  # q(z|x, fish) in both files: the same context
    assert np.allclose(f["mean"], model.encode(np.loadtxt(fish, delimiter=",", skiprows=1, usecols=(0, 1, 2)),
                                               label="fish").mean.numpy(), atol=1e-6)
    bird = _labelled_csv(tmp_path / "bird.csv", ["cat", "bird"], n=4)
    before = digest(tmp_path)
    for argv in (["encode", model.run_dir, bird, "-o", tmp_path / "o.npz"],
                 ["reconstruct", model.run_dir, bird, "-o", tmp_path / "o.png"],
                 ["eval", model.run_dir, "--data", bird, "--k", 5],
                 ["interpolate", model.run_dir, "--data", bird, "-o", tmp_path / "i.png"]):
        refused(argv, "bird.csv", "label 'bird' is not one this model was trained on", "cat, dog, fish")
    assert digest(tmp_path) == before


def test_image_subfolders_and_numbered_classes_are_matched_by_name(tmp_path: Path, refused) -> None:
    images = _class_folders(tmp_path / "img", ["ant", "bee", "cow"])
    model, _ = vaelab.train(data=str(images), condition_on=["label"], out=str(tmp_path / "runs"), name="img", **QUIET)
    cows = _class_folders(tmp_path / "cows", ["cow"], per_class=2)
    assert run_cli(["encode", model.run_dir, cows, "-o", tmp_path / "c.npz"]) == 0
    assert np.load(tmp_path / "c.npz")["labels"].tolist() == [2, 2]  # was [0, 0]: ant
    # a model trained on numbered classes: names are refused, its ids (or subfolders named by them) are read as ids
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "num.npz", train=rng.random((60, 3)).astype(np.float32), train_labels=np.arange(60) % 3)
    numbered, _ = vaelab.train(data=str(tmp_path / "num.npz"), condition_on=["label"], likelihood="gaussian",
                               out=str(tmp_path / "runs"), name="num", **QUIET)
    refused(["encode", numbered.run_dir, _labelled_csv(tmp_path / "cat.csv", ["cat"], n=2), "-o", tmp_path / "o.npz"],
            "label 'cat' is a name", "numbered classes (ids 0..2)")  # was read as class 0
    np.savez(tmp_path / "q.npz", train=rng.random((3, 3)).astype(np.float32), train_labels=np.array([2, 7, 0]))
    refused(["encode", numbered.run_dir, tmp_path / "q.npz", "-o", tmp_path / "o.npz"], "label 7", "ids 0..2")
    assert not (tmp_path / "o.npz").exists()
    from vaelab.context import Variable

    digits = Variable("label", "categorical", classes=3, class_names=("1", "2", "3"))  # subfolders 1/ 2/ 3/
    assert digits.ids_from(np.array([3, 1]), None, "f").tolist() == [2, 0]  # numbers name them
    assert Variable("label", "categorical", classes=3).ids_from(np.array([1, 0]), ("0", "2"), "f").tolist() == [2, 0]
    assert Variable("label", "categorical", classes=3, class_names=("a", "b", "c")).ids_from(
        np.array([2.0]), None, "f").tolist() == [2]  # numbers given to named classes: the ids, as --label 1


def test_categorical_covariate_levels_are_matched_by_name(tmp_path: Path, refused) -> None:
    data = _labelled_csv(tmp_path / "cov.csv", ["b1", "b2", "b3"], column="batch")
    model, _ = vaelab.train(data=str(data), condition_on=["batch"], likelihood="mixed", out=str(tmp_path / "runs"),
                            name="cov", **QUIET)
    from vaelab.cli import _read_inputs

    _, _, c = _read_inputs(model, str(_labelled_csv(tmp_path / "q.csv", ["b3"], n=2, column="batch")))
    assert c[:, 0].tolist() == [2, 2]  # was [0, 0]: b1
    refused(["encode", model.run_dir, _labelled_csv(tmp_path / "q9.csv", ["b9"], n=2, column="batch"), "-o",
             tmp_path / "o.npz"], "level 'b9' of 'batch'", "b1, b2, b3")


def test_a_run_folder_inside_the_data_folder_is_refused(tmp_path: Path, refused) -> None:
    images = _class_folders(tmp_path / "img", ["a", "b"])
    (tmp_path / "link").symlink_to(images)
    before = digest(tmp_path)
    for argv, culprit in (([], "would be inside the data folder"), (["--out", images / "sub"], "inside"),
                          (["--out", tmp_path, "--name", "img"], "would be the data folder"),
                          (["--data", tmp_path / "link"], "inside")):
        refused(["train", "--data", images, "--out", images, "--epochs", 1, *argv], culprit, "--out")
        assert digest(tmp_path) == before  # was: a run folder in the data set, and every later read refused
    assert sorted(p.name for p in images.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("options, culprits", [
    (["--likelihood", "gaussian", "--column-types", "a=numeric"], ["--column-types a=numeric", "--likelihood mixed"]),
    (["--dispersion", "example"], ["--dispersion example", "--likelihood negative-binomial or zinb", "bernoulli"]),
    (["--flow-steps", 8], ["--flow-steps 8", "--posterior planar or iaf", "gaussian"]),
    (["--condition-on", ","], ["condition_on (--condition-on) ','", "empty name"]),
    (["--condition-on", "label,,b"], ["condition_on (--condition-on) 'label,,b'", "empty name"]),
])
def test_options_that_would_have_no_effect_are_refused(tmp_path: Path, refused, options: list[Any],
                                                       culprits: list[str]) -> None:
    data = _labelled_csv(tmp_path / "d.csv", ["x", "y"])
    refused(["train", "--data", data, "--out", tmp_path / "runs", "--epochs", 1, *options], *culprits)
    assert not (tmp_path / "runs").exists()


def test_a_config_file_and_python_options_without_effect_are_refused(tmp_path: Path, refused) -> None:
    (tmp_path / "c.toml").write_text('dispersion = "example"\nlikelihood = "gaussian"\n')
    refused(["train", "--config", tmp_path / "c.toml", "--out", tmp_path / "runs"], "--dispersion example",
            "likelihood is gaussian")
    with pytest.raises(vaelab.VaelabError, match="--prior-components 3 is a setting of --prior mog or vamp"):
        vaelab.train(prior_components=3, out=str(tmp_path / "runs"), **QUIET)
    assert not (tmp_path / "runs").exists()
    assert vaelab.TrainConfig.from_mapping({"condition_on": ""}).condition_on == []  # '': none, as documented


# --- training runs, resume and verify (a tenth tester, 2026-11-30) ------------------------------
def _copy_run(run: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(run, where)
    return where


def _hold_lock(folder: Path) -> int:
    """Hold RUN/.lock as a training process does (flock belongs to the open file, so it conflicts in-process too)."""
    import fcntl
    import os

    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_verify_and_resume_of_a_run_being_trained_are_refused_naming_the_lock(run: Path, tmp_path: Path,
                                                                               refused) -> None:
    import os

    x = _copy_run(run, tmp_path / "x")
    fd = _hold_lock(x)
    try:
        before = digest(x)
        refused(["verify", x], "in use by another vaelab process", ".lock")  # it compared files being rewritten
        assert digest(x) == before
        os.remove(x / "checkpoint.safetensors")  # being trained, before its first checkpoint: not "train it anew"
        os.remove(x / "checkpoint.previous.safetensors") if (x / "checkpoint.previous.safetensors").exists() else None
        before = digest(x)
        refused(["train", "--resume", x, "--epochs", 2], "in use by another vaelab process", ".lock")
        assert digest(x) == before
    finally:
        os.close(fd)
    refused(["train", "--resume", x, "--epochs", 2], "has no checkpoint to resume from")  # once it is free


@pytest.mark.parametrize("threads", [20000, 100000])
def test_threads_beyond_the_machine_are_refused_before_anything_is_written(tmp_path: Path, refused,
                                                                          threads: int) -> None:
    with pytest.raises(vaelab.VaelabError, match="at most"):  # (checked first: unrefused, it starts the threads)
        vaelab.TrainConfig(threads=threads)
    refused(["train", "--data", "digits", "--out", tmp_path / "runs", "--threads", threads], f"--threads) {threads}",
            "at most")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("damage", ["garbage", "list", "metrics-folder", "manifest-folder"])
def test_a_resume_with_a_damaged_record_changes_nothing(run: Path, tmp_path: Path, refused, damage: str) -> None:
    x = _copy_run(run, tmp_path / "x")
    if damage in ("garbage", "list"):
        (x / "manifest.json").write_text("{garbage" if damage == "garbage" else "[1, 2]")
        culprit = "manifest.json"
    else:
        name = "metrics.jsonl" if damage == "metrics-folder" else "manifest.json"
        (x / name).unlink()
        (x / name).mkdir()
        culprit = f"{name}' is a folder"
    before = digest(x)
    refused(["train", "--resume", x, "--epochs", 3], culprit)
    assert digest(x) == before  # config.json was rewritten (epochs 1 -> 3) before the refusal


def test_verify_names_the_run_not_its_temporary_copy(run: Path, tmp_path: Path, refused) -> None:
    x = _copy_run(run, tmp_path / "x")
    vaelab.train(resume=x, epochs=2, progress=False, figures=False, log=lambda *a: None)  # verified from epoch 1
    spec = json.loads((x / "model.json").read_text())
    spec["latent_dim"] = 5
    (x / "model.json").write_text(json.dumps(spec))
    line = refused(["verify", x], f"run '{x}'", "model.json")
    assert "vaelab-verify-" not in line


def test_a_foreign_checkpoint_is_named_before_the_epoch_count(data_file: Path, run: Path, tmp_path: Path,
                                                              refused) -> None:
    import shutil

    other, _ = vaelab.train(data=str(data_file), out=str(tmp_path / "o"), name="o",
                            **{**QUIET, "hidden": [4], "latent_dim": 3, "epochs": 2})
    x = _copy_run(run, tmp_path / "x")
    shutil.copyfile(other.run_dir / "checkpoint.safetensors", x / "checkpoint.safetensors")
    before = digest(x)
    line = refused(["train", "--resume", x, "--epochs", 2], "checkpoint.safetensors", "does not fit this model")
    assert "already finished" not in line and digest(x) == before


@pytest.mark.parametrize("name,culprit", [(" ", "empty or blank"), ("", "--name '' is empty"),
                                          ("a\nb", "control characters"), ("a\tb", "control characters"),
                                          ("a\x1bb", "control characters"), ("é" * 101, "202 bytes")])
def test_run_names_that_are_blank_controlled_or_too_long_are_refused(tmp_path: Path, refused, name: str,
                                                                     culprit: str) -> None:
    (tmp_path / "runs").mkdir()
    refused(["train", "--data", "digits", "--out", tmp_path / "runs", "--name", name, "--epochs", 1], "--name", culprit)
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("field,value,was", [("seed", 5, "seed 0"), ("lr", 0.5, "lr 0.001")])
def test_a_resume_refuses_a_seed_or_lr_edited_in_config_json(run: Path, tmp_path: Path, refused, field: str,
                                                             value: Any, was: str) -> None:
    x = _copy_run(run, tmp_path / "x")
    doc = json.loads((x / "config.json").read_text())
    assert doc["config"]["seed"] == 0 and doc["config"]["lr"] == 0.001  # the run's own (QUIET leaves the defaults)
    doc["config"][field] = value
    (x / "config.json").write_text(json.dumps(doc))
    before = digest(x)
    refused(["train", "--resume", x, "--epochs", 2], f"config.json says {field} {value}", was)
    assert digest(x) == before  # it trained on as another run, and verify then said "differs"


@pytest.mark.parametrize("where", ["setup", "first-epoch", "user-folder"])
def test_ctrl_c_before_the_first_checkpoint_does_not_leave_the_name_taken(data_file: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          where: str) -> None:
    from vaelab.training import optim

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    if where == "setup":  # Ctrl-C while the manifest is written: config.json and model.json are there already
        monkeypatch.setattr("vaelab.runs.write_manifest", interrupt)
    else:  # in the first training step, inside the loop (which reports "interrupted ... train it anew")
        monkeypatch.setattr(optim.Adam, "step", interrupt)
    if where == "user-folder":  # a folder the user made for --name is not removed: it is named
        (tmp_path / "runs" / "r").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt) as info:
        vaelab.train(data=str(data_file), out=str(tmp_path / "runs"), name="r", **QUIET)
    monkeypatch.undo()
    if where == "user-folder":
        assert "delete it to reuse the name" in str(info.value) and (tmp_path / "runs" / "r").is_dir()
        return
    assert "was removed" in str(info.value), str(info.value)
    assert list((tmp_path / "runs").iterdir()) == []  # the name was left taken by a run --resume cannot resume
    model, _ = vaelab.train(data=str(data_file), out=str(tmp_path / "runs"), name="r", **QUIET)
    assert (model.run_dir / "checkpoint.safetensors").exists()


def test_an_epoch_count_past_a_billion_is_refused_before_anything_is_written(tmp_path: Path, refused) -> None:
    # 99999999999999999999 (past int64) was accepted and stored in config.json
    refused(["train", "--data", "digits", "--out", tmp_path / "runs", "--epochs", "99999999999999999999"],
            "--epochs) 99999999999999999999", "1,000,000,000")
    assert not (tmp_path / "runs").exists()


def test_the_explorer_prints_a_hostile_run_name_escaped(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    import shutil

    import uvicorn

    from vaelab.serve import serve

    shutil.copytree(run, tmp_path / HOSTILE)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # the address printed, nothing served
    capsys.readouterr()
    serve(tmp_path / HOSTILE, port=0)
    printed = capsys.readouterr().out
    assert SHOWN in printed and not any(c in printed.replace("\n", "") for c in CONTROLS), repr(printed)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path, refused) -> None:
    # features are matched by name at encode/eval time: a header "a,a,b" trained, then every
    # reordered file was refused as "a name given twice"; said at training now, as the mixed table did
    (tmp_path / "dup.csv").write_text("a,a,b\n" + "0.1,0.2,0.3\n" * 20)
    refused(["train", "--data", tmp_path / "dup.csv", "--likelihood", "gaussian", "--out", tmp_path / "runs"],
            "dup.csv", "'a' appear more than once", "its own name")
    assert not (tmp_path / "runs").exists()
