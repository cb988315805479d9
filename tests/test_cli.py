"""The ``vaelab`` command line, end to end on a tiny configuration, and every way it should
refuse bad input: exit status 2, one line on stderr naming the culprit, nothing lost.

Commands run in-process through :func:`vaelab.cli.main` (which always ends in ``SystemExit``);
one test runs the real ``python -m vaelab`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import torch
from conftest import refusal_checker  # the shared check of a refused command line
from safetensors import safe_open

from vaelab.cli import cli, main
from vaelab.runs import read_metrics
from vaelab.training.checkpoint import read_metadata

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--hidden", "32", "--latent-dim", "2", "--device", "cpu"]


def run_cli(argv: list[str]) -> int:
    """Run ``vaelab ARGV`` in-process; its exit status."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    code = info.value.code
    return 0 if code is None else int(code)


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_captured(argv: list[str]) -> Result:
    """``run_cli`` for module fixtures, which cannot use capsys."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(argv)
    return Result(code, out.getvalue(), err.getvalue())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (temp files included) and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > len(PNG) and path.read_bytes()[:8] == PNG


# --- data and a trained run -------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    protos = rng.random((3, 1, 8, 8))
    img = np.clip(protos[rng.integers(0, 3, 200)] + 0.1 * rng.normal(size=(200, 1, 8, 8)), 0, 1)
    paths = {name: d / f"{name}.npy" for name in ("img", "vec5", "big", "nan", "real")}
    np.save(paths["img"], img.astype(np.float32))  # 8x8 grey images in [0, 1]
    np.save(paths["vec5"], rng.random((10, 5)).astype(np.float32))
    np.save(paths["big"], (255 * rng.random((200, 16))).astype(np.float32))  # not [0, 1]
    with_nan = img.astype(np.float32)
    with_nan[7, 0, 3, 3] = np.nan
    np.save(paths["nan"], with_nan)
    np.save(paths["real"], (3 * rng.normal(size=(200, 16))).astype(np.float32))
    paths["garbage"] = d / "garbage.npy"
    paths["garbage"].write_bytes(rng.bytes(3000))
    return paths


@pytest.fixture(scope="module")
def trained(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("runs")
    result = run_captured(["train", "--data", files["img"], *TINY, "--epochs", "2", "--eval-k", "20",
                           "--out", out, "--name", "r"])
    return out / "r", result


@pytest.fixture
def run(trained: tuple[Path, Result]) -> Path:
    run_dir, result = trained
    assert result.code == 0, result.err
    return run_dir


@pytest.fixture
def run_copy(run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, for tests that damage or extend it."""
    dest = tmp_path / "copy"
    shutil.copytree(run, dest)
    return dest


# --- end to end ---------------------------------------------------------------------------


def test_train_writes_a_complete_run_folder(trained: tuple[Path, Result]) -> None:
    run_dir, result = trained
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert "trained 2 epochs (completed)" in result.out
    assert f"run folder: {run_dir}" in result.out
    for row in ("ELBO", "reconstruction", "KL", "-log p(x), K=20"):
        assert row in result.out
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "eval.json"):
        assert (run_dir / name).is_file(), name
    for name in ("reconstructions.png", "samples.png", "curves.png", "manifold.png"):
        assert is_png(run_dir / name), name
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("train_elbo", "val_elbo", "train_reconstruction", "val_reconstruction", "train_kl", "val_kl"):
            assert math.isfinite(m[key]), key
        assert m["val_elbo"] == pytest.approx(m["val_reconstruction"] - m["val_kl"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["hidden"] == [32] and config["data"]["shape"] == [1, 8, 8]
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["k"] == 20 and ev["n"] == 20
    assert ev["elbo"] == pytest.approx(ev["reconstruction"] - ev["kl"])
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_eval_prints_a_table_and_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["eval", run, "--k", "20"]) == 0
    out = capsys.readouterr().out
    for row in ("ELBO", "reconstruction", "KL", "-log p(x), K=20", "nats"):
        assert row in out
    assert run_cli(["eval", run, "--k", "20", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    for key in ("elbo", "reconstruction", "kl", "log_px", "log_px_stderr", "nll", "n", "k"):
        assert key in ev
    assert ev["nll"] == -ev["log_px"] and ev["k"] == 20
    assert json.loads((run / "eval.json").read_text())["elbo"] == ev["elbo"]


def test_eval_on_other_data(run: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = (run / "eval.json").read_bytes()
    assert run_cli(["eval", run, "--k", "0", "--json", "--data", files["img"]]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 200 and "log_px" not in ev
    assert (run / "eval.json").read_bytes() == before  # only the run's own test set is recorded


def test_sample(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["sample", run, "-n", "8", "-o", tmp_path / "out" / "s.png"]) == 0
    assert "s.png" in capsys.readouterr().out
    assert is_png(tmp_path / "out" / "s.png")
    x = np.load(tmp_path / "out" / "s.npy")
    assert x.shape == (8, 1, 8, 8) and ((x >= 0) & (x <= 1)).all()


def test_encode_npz_and_csv(run: Path, files: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["encode", run, files["img"], "-o", tmp_path / "e.npz"]) == 0
    assert "200 examples x 2 latent dimensions" in capsys.readouterr().out
    with np.load(tmp_path / "e.npz") as z:
        mean, std = z["mean"], z["std"]
    assert mean.shape == std.shape == (200, 2)
    assert (std > 0).all() and np.isfinite(mean).all()
    assert run_cli(["encode", run, files["img"], "-o", tmp_path / "e.csv"]) == 0
    with open(tmp_path / "e.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["mean_1", "mean_2", "std_1", "std_2"]
    table = np.array(rows[1:], dtype=np.float64)
    assert table.shape == (200, 4)
    np.testing.assert_allclose(table, np.concatenate([mean, std], 1), rtol=1e-6)


def test_reconstruct(run: Path, files: dict[str, Path], tmp_path: Path) -> None:
    assert run_cli(["reconstruct", run, files["img"], "-o", tmp_path / "r.png", "-n", "8"]) == 0
    assert is_png(tmp_path / "r.png")
    rec = np.load(tmp_path / "r.npy")
    assert rec.shape == (200, 1, 8, 8) and ((rec >= 0) & (rec <= 1)).all()


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolate(run: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "i.png"
    assert run_cli(["interpolate", run, "--steps", "5", "--method", method, "--from", "2", "--to", "9",
                    "-o", out]) == 0
    assert is_png(out)
    assert np.load(tmp_path / "i.npy").shape == (5, 1, 8, 8)


@pytest.mark.slow
def test_config_file_options_override_and_resume_matches_uninterrupted_run(
    run: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Train one epoch from a TOML file (--epochs overriding it), resume to two from the
    command line: the weights are bit-identical to the run trained for two epochs at once."""
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        f"data = {json.dumps(str(files['img']))}\nhidden = [32]\nlatent_dim = 2\nepochs = 5\n"
        f"eval_k = 0\ndevice = \"cpu\"\nout = {json.dumps(str(tmp_path))}\nname = \"cfg\"\n"
    )
    assert run_cli(["train", "--config", toml, "--epochs", "1", "--quiet"]) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    cfg = tmp_path / "cfg"
    saved = json.loads((cfg / "config.json").read_text())["config"]
    assert (saved["epochs"], saved["hidden"], saved["latent_dim"], saved["eval_k"]) == (1, [32], 2, 0)
    assert len(read_metrics(cfg)) == 1

    assert run_cli(["train", "--resume", cfg, "--epochs", "2", "--quiet"]) == 0
    assert "trained 2 epochs (completed)" in capsys.readouterr().out
    assert len(read_metrics(cfg)) == 2
    for name in ("checkpoint.safetensors", "model.safetensors"):
        with safe_open(str(cfg / name), "pt") as a, safe_open(str(run / name), "pt") as b:
            assert set(a.keys()) == set(b.keys())
            for key in a.keys():
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), (name, key)


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "eval", "sample", "encode", "reconstruct", "interpolate"])
def test_help_mentions_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: vaelab {command}" in out
    options = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    assert options
    for option in options:
        for name in option.opts + option.secondary_opts:
            assert name in out, f"{command} --help does not mention {name}"


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "sample", "encode", "reconstruct", "interpolate"):
        assert command in out


# --- bad input: exit 2, one line, the culprit named ------------------------------------------


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture[str], *culprits: str) -> str:
    """Exit 2, one ``error:`` line naming every culprit, no traceback (see conftest.py)."""
    return refusal_checker(capsys)(argv, *culprits)


def test_missing_data_file(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.npy"
    assert_refused(["train", "--data", missing, *TINY, "--out", tmp_path, "--name", "x"], capsys, str(missing),
                   "not found")
    assert not (tmp_path / "x").exists()


def test_corrupt_data_file(run: Path, files: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    garbage = str(files["garbage"])
    assert_refused(["train", "--data", garbage, *TINY, "--out", tmp_path, "--name", "x"], capsys, garbage)
    assert not (tmp_path / "x").exists()
    before = snapshot(run)
    assert_refused(["encode", run, garbage, "-o", tmp_path / "out" / "e.npz"], capsys, garbage, ".npy")
    assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["eval"], ["sample"], ["interpolate"], ["encode", "DATA", "-o", "e.npz"]])
def test_run_folder_that_does_not_exist(command: list[str], files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    nope = tmp_path / "no-such-run"
    argv = [command[0], nope, *[str(files["img"]) if a == "DATA" else a for a in command[1:]]]
    assert_refused(argv, capsys, str(nope), "not found")


def test_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert_refused(["eval", tmp_path], capsys, str(tmp_path), "not a vaelab run folder")
    assert_refused(["train", "--resume", tmp_path], capsys, "not a vaelab run folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_corrupt_weights_file_in_a_run(run_copy: Path, files: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    weights = run_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    before = snapshot(run_copy)
    assert_refused(["eval", run_copy, "--k", "5"], capsys, "model.safetensors", "corrupt")
    assert_refused(["encode", run_copy, files["img"], "-o", tmp_path / "out" / "e.npz"], capsys,
                   "model.safetensors")
    assert_refused(["sample", run_copy, "-o", tmp_path / "out" / "s.png"], capsys, "model.safetensors")
    assert snapshot(run_copy) == before
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_file_in_a_run(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = run_copy / "checkpoint.safetensors"
    checkpoint.write_bytes(np.random.default_rng(0).bytes(checkpoint.stat().st_size))
    before = snapshot(run_copy)
    assert_refused(["train", "--resume", run_copy, "--epochs", "3", "--quiet"], capsys,
                   "checkpoint.safetensors", "corrupt")
    assert snapshot(run_copy) == before


def test_corrupt_config_json_in_a_run(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_copy / "config.json").write_text('{"config": {"latent_dim": ')
    before = snapshot(run_copy)
    assert_refused(["eval", run_copy], capsys, "config.json", "corrupt")
    assert snapshot(run_copy) == before


def test_data_of_the_wrong_shape(run: Path, files: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run)
    line = assert_refused(["encode", run, files["vec5"], "-o", tmp_path / "out" / "e.npz"], capsys,
                          "(10, 5)", "(1, 8, 8)")
    assert "shape" in line
    assert_refused(["reconstruct", run, files["vec5"], "-o", tmp_path / "out" / "r.png"], capsys, "(10, 5)")
    assert_refused(["eval", run, "--data", files["vec5"]], capsys, "(10, 5)")
    assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


def test_values_outside_the_bernoulli_support(files: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    big = str(files["big"])
    assert_refused(["train", "--data", big, *TINY, "--likelihood", "bernoulli", "--binarize", "none",
                    "--out", tmp_path, "--name", "x"], capsys, big, "[0, 1]", "Bernoulli")
    assert not (tmp_path / "x").exists()


def test_nan_in_data(run: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nan = str(files["nan"])
    assert_refused(["train", "--data", nan, *TINY, "--out", tmp_path, "--name", "x"], capsys, nan, "NaN")
    assert not (tmp_path / "x").exists()
    before = snapshot(run)
    assert_refused(["encode", run, nan, "-o", tmp_path / "out" / "e.npz"], capsys, nan, "NaN")
    assert_refused(["eval", run, "--data", nan], capsys, nan, "NaN")
    assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


def test_unknown_key_in_config_file(files: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "typo.toml"
    toml.write_text(f"data = {json.dumps(str(files['img']))}\nlattent_dim = 2\n")
    assert_refused(["train", "--config", toml, "--out", tmp_path], capsys, str(toml), "lattent_dim")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.toml"]


def test_config_file_with_a_section_or_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "nested.toml"
    toml.write_text("[model]\nlatent_dim = 2\n")
    assert_refused(["train", "--config", toml], capsys, str(toml), "model")
    assert_refused(["train", "--config", tmp_path / "nope.toml"], capsys, "nope.toml", "not found")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--net", "transformer"), ("--likelihood", "tweedie"), ("--epochs", "ten"), ("--binarize", "maybe")],
)
def test_unknown_option_value(option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(["train", option, value, "--out", tmp_path], capsys, option, value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_and_missing_argument(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(["train", "--no-such-option", "3"], capsys, "--no-such-option")
    assert_refused(["encode", run], capsys, "DATA")
    assert_refused(["no-such-command"], capsys, "no-such-command")


def test_resume_refuses_other_settings(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run)
    assert_refused(["train", "--resume", run, "--lr", "0.1"], capsys, "--resume", "--epochs")
    assert_refused(["train", "--resume", run, "--quiet"], capsys, "already finished its 2 epochs", "--epochs")
    assert snapshot(run) == before


def test_index_out_of_range(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(["interpolate", run, "--to", "999", "-o", tmp_path / "out" / "i.png"], capsys, "--to 999")
    assert not (tmp_path / "out").exists()


def test_diverging_training_stops_with_nan(files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate of 1e30 on real data: the loss is NaN/inf within the first epoch."""
    argv = ["train", "--data", files["real"], *TINY, "--likelihood", "gaussian", "--lr", "1e30",
            "--epochs", "3", "--eval-k", "0", "--out", tmp_path, "--name", "x", "--quiet"]
    line = assert_refused(argv, capsys, "lower --lr", "no checkpoint")
    assert "nan" in line.lower() or "inf" in line.lower() or "non-finite" in line
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "x" / "checkpoint.safetensors").exists()


def test_nan_loss_keeps_the_last_good_checkpoint(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], adam_step_hook: Any) -> None:
    """The loss turns NaN in the second epoch: the checkpoint of the first one is kept whole."""

    def poison(n: int, optimizer: torch.optim.Optimizer) -> None:
        if (tmp_path / "x" / "checkpoint.safetensors").exists():  # the first epoch is saved
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad.fill_(math.nan)

    adam_step_hook(poison)
    argv = ["train", "--data", files["img"], *TINY, "--epochs", "3", "--eval-k", "0", "--out", tmp_path,
            "--name", "x", "--quiet"]
    line = assert_refused(argv, capsys, "nan", "epoch 2", "kept the last good checkpoint (epoch 1)",
                          str(tmp_path / "x"))
    assert "lower --lr" in line
    run_dir = tmp_path / "x"
    assert read_metadata(run_dir / "checkpoint.safetensors")["state"]["epoch"] == 1
    assert len(read_metrics(run_dir)) == 1
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    adam_step_hook(None)
    assert run_cli(["eval", run_dir, "--k", "5"]) == 0  # the kept weights are usable


@pytest.mark.parametrize("quiet", [True, False])  # (without --quiet the line was printed twice)
def test_ctrl_c_exits_130_and_says_how_to_resume(files: dict[str, Path], tmp_path: Path, quiet: bool,
                                                 capsys: pytest.CaptureFixture[str], adam_step_hook: Any) -> None:
    def ctrl_c(n: int, optimizer: torch.optim.Optimizer) -> None:
        if (tmp_path / "x" / "checkpoint.safetensors").exists():  # in epoch 2
            raise KeyboardInterrupt

    adam_step_hook(ctrl_c)
    argv = ["train", "--data", files["img"], *TINY, "--epochs", "3", "--eval-k", "0", "--out", tmp_path,
            "--name", "x", *(["--quiet"] * quiet)]
    assert run_cli(argv) == 130
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert (out + err).count("interrupted in epoch") == 1, out + err
    lines = [line for line in err.splitlines() if "interrupted" in line or quiet and line.strip()]
    assert len(lines) == 1, err
    assert "interrupted in epoch 2; the checkpoint of epoch 1 is intact" in lines[0]
    assert f"--resume {tmp_path / 'x'}" in err
    assert read_metadata(tmp_path / "x" / "checkpoint.safetensors")["state"]["epoch"] == 1


# --- the real console script ---------------------------------------------------------------


@pytest.mark.slow
def test_subprocess_missing_data_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--data", "missing.npy"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.npy" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []
