"""Issue 15's promises, tried as a careless user and a hostile world would.

* **NaN recovery** (:mod:`vaelab.training.recovery`): a non-finite loss rolls training back to
  the start of its epoch, halves the learning rate and goes on, a bounded number of times,
  logging each event; the forensics name the first non-finite module output or parameter and
  the likely cause; a resumed run recovers exactly as the uninterrupted one.
* **Sizes without bounds** (family 4): sizes that would not fit in memory are refused with the
  estimate and the limit, before anything is allocated or written.
* **Property tests** (hypothesis) over the command line: every call of train, eval, sample and
  encode, with valid and invalid values, ends with exit 0, or exit 2 and one ``error:`` line;
  no traceback; nothing written outside ``--out``/``-o`` and the run folder.
* **kill -9** (slow): training killed at random moments and resumed, again and again, ends
  with the uninterrupted run's weights, bit for bit.

Every run is tiny (a few hundred examples of 6 to 16 numbers, one hidden layer of 8 to 32).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from weights import assert_same_tensors, tensors
from torch import nn

from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.runs import TrainingStopped, read_metrics, train
from vaelab.training.checkpoint import read_metadata
from vaelab.training.recovery import EVENTS, NanRecovery, probe

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*args: Any) -> None:
    pass


def events(run: Path) -> list[dict[str, Any]]:
    path = run / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


TINY: dict[str, Any] = dict(hidden=[32], latent_dim=2, epochs=4, batch_size=32, eval_k=0, patience=0, device="cpu",
                            figures=False, progress=False, log=quiet)
STEPS = 6  # ceil(162 training examples / 32): 200 minus 10% test minus 10% validation


class Poison:
    """A global optimizer pre-hook that fills the gradients with NaN at the first step of the
    epoch in which the run folder's checkpoint first shows ``after`` epochs (once)."""

    def __init__(self, run: Path, after: int = 1) -> None:
        self.run, self.after, self.done = run, after, False

    def __call__(self, n: int, optimizer: torch.optim.Optimizer) -> None:
        ckpt = self.run / "checkpoint.safetensors"
        if self.done or not ckpt.exists() or read_metadata(ckpt)["state"]["epoch"] != self.after:
            return
        self.done = True
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad.fill_(math.nan)


# --- NaN recovery -------------------------------------------------------------------------------
def test_a_nan_is_rolled_back_and_training_goes_on_at_half_the_learning_rate(grey_file: Path, tmp_path: Path,
                                                                              adam_step_hook: Any,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    adam_step_hook(Poison(run))
    _, result = train(data=str(grey_file), out=str(tmp_path), name="r", **{**TINY, "progress": True})
    assert (result.stopped, result.epochs_done) == ("completed", 4)
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(m["train_elbo"]) and math.isfinite(m["val_elbo"]) for m in metrics)
    assert [m["lr"] for m in metrics] == [1e-3, 5e-4, 5e-4, 5e-4]  # the rate each epoch trained with
    [event] = events(run)
    assert event["epoch"] == 2 and event["step"] == 2  # NaN weights after step 1: the loss of step 2
    assert (event["lr_before"], event["lr_after"], event["retry"], event["retries"]) == (1e-3, 5e-4, 1, 2)
    assert event["culprit"] == "training loss" and event["value"] == "nan"
    state = read_metadata(run / "checkpoint.safetensors")
    assert state["state"]["recovery"]["lr_factor"] == 0.5 and state["state"]["recovery"]["retries_used"] == 1
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [5e-4]
    assert all(torch.isfinite(t).all() for t in tensors(run / "checkpoint.safetensors").values())
    err = capsys.readouterr().err
    assert "warning: the training loss became non-finite in epoch 2, step 2" in err
    assert "lowered the learning rate from 0.001 to 0.0005" in err


def test_a_resumed_run_recovers_as_the_uninterrupted_one(grey_file: Path, tmp_path: Path, adam_step_hook: Any) -> None:
    """Recovery in epoch 2, stop after epoch 3, resume to 4: the same weights, optimizer state,
    metrics and events as four epochs in one go."""
    a, b = tmp_path / "a", tmp_path / "b"
    adam_step_hook(Poison(a))
    train(data=str(grey_file), out=str(tmp_path), name="a", **TINY)
    adam_step_hook(Poison(b))
    train(data=str(grey_file), out=str(tmp_path), name="b", **{**TINY, "epochs": 3})
    adam_step_hook(None)
    _, result = train(resume=b, epochs=4, progress=False, figures=False, log=quiet)
    assert result.epochs_done == 4
    assert_same_tensors(tensors(a / "checkpoint.safetensors"), tensors(b / "checkpoint.safetensors"))
    assert_same_tensors(tensors(a / "model.safetensors"), tensors(b / "model.safetensors"))
    meta_a, meta_b = read_metadata(a / "checkpoint.safetensors"), read_metadata(b / "checkpoint.safetensors")
    assert meta_a["state"]["recovery"] == meta_b["state"]["recovery"]
    assert meta_a["optimizer"] == meta_b["optimizer"]
    assert events(a) == events(b) and len(events(a)) == 1
    drop = ("seconds", "examples_per_second")
    assert [{k: v for k, v in m.items() if k not in drop} for m in read_metrics(a)] == \
        [{k: v for k, v in m.items() if k not in drop} for m in read_metrics(b)]


def test_without_a_nan_recovery_changes_nothing(grey_file: Path, tmp_path: Path) -> None:
    """The snapshots are only copies: a run without NaN is bit-identical with or without retries."""
    train(data=str(grey_file), out=str(tmp_path), name="on", **{**TINY, "epochs": 2})
    train(data=str(grey_file), out=str(tmp_path), name="off", nan_retries=0, **{**TINY, "epochs": 2})
    assert_same_tensors(tensors(tmp_path / "on" / "checkpoint.safetensors"),
                        tensors(tmp_path / "off" / "checkpoint.safetensors"))
    assert not (tmp_path / "on" / EVENTS).exists()


def test_spent_retries_stop_with_the_forensics_and_the_cause(real_file: Path, tmp_path: Path) -> None:
    """lr 1e30: every retry diverges; the error names the module, the huge weights and the learning rate."""
    with pytest.raises(TrainingStopped) as info:
        train(data=str(real_file), out=str(tmp_path), name="x", likelihood="gaussian", lr=1e30, **TINY)
    message = str(info.value)
    assert "\n" not in message
    for part in ("epoch 1, step", "no checkpoint", "2 recoveries (learning rate lowered to 2.5e+29) did not help",
                 "first non-finite output: ", "(Linear)", "weights as large as", "likely cause: the learning rate",
                 "try a lower --lr"):
        assert part in message, (part, message)
    logged = events(tmp_path / "x")
    assert [(e["lr_before"], e["lr_after"]) for e in logged] == [(1e30, 5e29), (5e29, 2.5e29)]
    assert all("first non-finite output" in e["forensics"] for e in logged)
    assert not (tmp_path / "x" / "checkpoint.safetensors").exists()


def test_an_extreme_likelihood_scale_is_named_as_the_cause(real_file: Path, tmp_path: Path) -> None:
    """A Gaussian scale of 1e-20: (x - mu)^2 / 2 s^2 overflows float32 at once, whatever the
    learning rate; every module output is finite, the log-density is not."""
    with pytest.raises(TrainingStopped) as info:
        train(data=str(real_file), out=str(tmp_path), name="s", likelihood="gaussian", gaussian_scale=1e-20,
              nan_retries=1, **TINY)
    message = str(info.value)
    for part in ("step 1", "1 recovery", "the loss (the log-densities), with every module output finite",
                 "likely cause: an extreme likelihood scale (1e-20", "raise --gaussian-scale"):
        assert part in message, (part, message)
    assert "try a lower --lr" not in message


def test_nan_retries_is_validated(grey_file: Path, tmp_path: Path, refused: Any) -> None:
    refused(["train", "--data", grey_file, "--nan-retries", "-1", "--out", tmp_path], "nan_retries", ">= 0")
    refused(["train", "--data", grey_file, "--nan-retries", "1.5", "--out", tmp_path], "--nan-retries")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VaelabError, match="damaged"):
        NanRecovery(2, 1e-3, {"lr_factor": "half", "retries_used": 0, "events": []})


class Blows(nn.Module):
    """y = x * w, then a layer that overflows float32 when its input exceeds 1e20."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Linear(3, 3)
        self.square = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scale(x)
        return self.square(h * h * h).sum()


def test_probe_names_the_first_non_finite_output_and_gradient() -> None:
    torch.manual_seed(0)
    m = Blows()
    forensics, found = probe(m, lambda: m(torch.full((2, 3), 1e20)), lr=1e-3)
    assert found and forensics.module == "square (Linear)"  # h ~ 1e20 is finite, h^3 is not: the next layer's output
    m = Blows()
    with torch.no_grad():
        m.square.weight.fill_(math.inf)
    forensics, found = probe(m, lambda: m(torch.ones(2, 3)), lr=1e-3)
    assert found and forensics.parameter == "value of parameter square.weight"
    m = Blows()
    forensics, found = probe(m, lambda: m(torch.ones(2, 3)) * 0 + torch.tensor(3e38) * 10, lr=1e-3)
    assert found and forensics.module is None and "the loss" in forensics.note
    m = Blows()  # a finite loss, a non-finite gradient: d sqrt(u)/du = inf at u = 0, times du/dw = 0
    forensics, found = probe(m, lambda: (m.scale.weight - m.scale.weight.detach()).pow(2).sum().sqrt() + m(torch.ones(2, 3)),
                             lr=1e-3)
    assert found and forensics.module is None and forensics.parameter == "gradient of parameter scale.weight"
    assert "likely cause: the learning rate (0.001)" in forensics.text()
    m = Blows()
    forensics, found = probe(m, lambda: m(torch.ones(2, 3)), lr=1e-3)
    assert not found and forensics.module is None and forensics.parameter is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# --- sizes without bounds (family 4) ------------------------------------------------------------
@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 grey 8 x 8 images in [0, 1] (strokes on black), as a .npy file."""
    path = tmp_path_factory.mktemp("data") / "images.npy"
    rng = np.random.default_rng(2)
    x = np.zeros((240, 1, 8, 8), np.float32)
    for i in range(240):
        x[i, 0, rng.integers(0, 8), :] = 1.0
        x[i, 0, :, rng.integers(0, 8)] = rng.random()
    np.save(path, x)
    return path


@pytest.fixture(scope="module")
def tiny_run(image_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = train(data=str(image_file), out=str(tmp_path_factory.mktemp("runs")), name="tiny", hidden=[16],
                     latent_dim=2, epochs=1, batch_size=64, eval_k=0, device="cpu", figures=False, progress=False,
                     log=quiet)
    return model.run_dir


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TRAIN_TOO_BIG = [
    # (extra arguments, VAELAB_MEMORY_LIMIT (a fixed limit: the same refusals on any machine), culprits the line names)
    (["--latent-dim", "1000000000"], "16G", ["--latent-dim 1000000000", "TiB of memory", "VAELAB_MEMORY_LIMIT=16G"]),
    (["--hidden", "100000000"], "16G", ["--hidden 100000000", "GiB of memory"]),
    (["--latent-dim", "100000000", "--posterior", "iaf"], "16G", ["--latent-dim 100000000"]),  # counted without the flow
    (["--latent-dim", "100000000", "--prior", "vamp"], "16G", ["--latent-dim 100000000"]),
    (["--k", "100000000"], "16G", ["x 100000000 samples (--batch-size, --k)", "lower --batch-size or --k"]),
    (["--hidden", "2000,2000"], "100M", ["--hidden 2000,2000", "more than the 100 MiB", "VAELAB_MEMORY_LIMIT=100M"]),
    (["--latent-dim", "300", "--posterior", "full-gaussian"], "200M", ["--latent-dim 300", "200 MiB"]),
    (["--batch-size", "200", "--k", "5000"], "1G", ["a training batch of 194 examples x 5000 samples"]),
    ([], "lots", ["VAELAB_MEMORY_LIMIT='lots' is not a size"]),
]


@pytest.mark.parametrize(("extra", "limit", "culprits"), TRAIN_TOO_BIG)
def test_training_sizes_beyond_memory_are_refused_before_anything_is_written(
        image_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: Any,
        extra: list[str], limit: str, culprits: list[str]) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", limit)
    out = tmp_path / "out"
    refused(["train", "--data", image_file, "--epochs", "1", "--eval-k", "0", "--quiet", "--out", out, *extra], *culprits)
    assert not out.exists() or list(out.iterdir()) == []


EVAL_TOO_BIG = [
    (["--elbo-samples", "100000000"], "16G", ["the ELBO with 24 examples x 100000000 samples", "lower --elbo-samples"]),
    (["--mi-samples", "100000000000"], "16G", ["latent health with 100,000,000,000 Monte-Carlo draws", "--mi-samples"]),
    (["--estimator", "ais", "--chains", "100000", "--batch-size", "10000", "--k", "10"], "1G",
     ["AIS with 24 examples x 100000 chains", "--chains"]),
    (["--k", "10", "--gap-samples", "100000000"], "16G", ["gap split's optimisation", "--gap-samples"]),
    (["--k", "2000", "--k-chunk", "2000", "--estimator", "is"], "64M", ["log p(x) with 24 examples x 2000 samples per pass",
                                                                      "lower --k-chunk"]),
]


@pytest.mark.parametrize(("extra", "limit", "culprits"), EVAL_TOO_BIG)
def test_evaluation_sizes_beyond_memory_are_refused_with_the_estimate(
        tiny_run: Path, monkeypatch: pytest.MonkeyPatch, refused: Any, extra: list[str], limit: str,
        culprits: list[str]) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", limit)
    before = tree(tiny_run)
    refused(["eval", tiny_run, *extra], *culprits, "needs about")
    assert tree(tiny_run) == before


def test_large_k_runs_in_chunks_under_a_limit_that_one_pass_would_exceed(tiny_run: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """K = 2000 in chunks of 100 fits where one pass of 2000 would not: the same limit, the same K."""
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "64M")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(SystemExit) as info:
        main(["eval", str(run), "--k", "2000", "--k-chunk", "100", "--estimator", "is", "--gap-examples", "0",
              "--mi-samples", "100", "--json"])
    assert info.value.code == 0
    assert json.loads((run / "eval.json").read_text())


def test_sample_count_beyond_memory_is_refused_and_nothing_written(tiny_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, refused: Any) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "1M")
    refused(["sample", tiny_run, "-n", "100000", "-o", tmp_path / "s.png"], "drawing 100,000 samples of shape (1, 8, 8)",
            "lower -n")
    assert list(tmp_path.iterdir()) == []


def test_an_edited_model_json_with_a_huge_latent_space_is_refused_on_load(tiny_run: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          refused: Any) -> None:
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "16G")
    run = tmp_path / "edited"
    shutil.copytree(tiny_run, run)
    spec = json.loads((run / "model.json").read_text())
    spec["latent_dim"] = 10**9
    (run / "model.json").write_text(json.dumps(spec))
    refused(["sample", run, "-o", tmp_path / "s.png"], "--latent-dim 1000000000", "loaded,", "387 GiB")
    assert not (tmp_path / "s.png").exists()


def test_the_limit_is_a_share_of_physical_memory_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.evaluation.memory import LIMIT_SHARE, memory_limit

    monkeypatch.delenv("VAELAB_MEMORY_LIMIT", raising=False)
    limit, source = memory_limit()
    assert limit == LIMIT_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert "of this machine's" in source and "VAELAB_MEMORY_LIMIT" in source
    for text, size in (("500M", 500 * 2**20), ("64G", 64 * 2**30), ("1.5GiB", 1.5 * 2**30), ("12345", 12345), ("2 tb", 2 * 2**40)):
        monkeypatch.setenv("VAELAB_MEMORY_LIMIT", text)
        assert memory_limit()[0] == size
    for bad in ("-1G", "0", "nan", "inf", "1X", "G"):
        monkeypatch.setenv("VAELAB_MEMORY_LIMIT", bad)
        with pytest.raises(VaelabError, match="is not a size"):
            memory_limit()


# --- property tests over the command line -------------------------------------------------------
def run_main(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """``vaelab ARGV`` in-process, in folder ``cwd``: (exit status, stdout, stderr). Any
    exception other than SystemExit escapes: that is a traceback the user would see."""
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as stop:
                code = int(stop.code or 0) if not isinstance(stop.code, str) else 1
    finally:
        os.chdir(before)
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Every file (its size and mtime) and folder under ``folder``, outside ``skip``."""
    found = {}
    for p in folder.rglob("*"):
        if any(p == s or s in p.parents for s in skip):
            continue
        st_ = p.lstat()
        found[str(p.relative_to(folder))] = "folder" if p.is_dir() else (st_.st_size, st_.st_mtime_ns)
    return found


def check_call(argv: list[str], root: Path, allowed: tuple[Path, ...]) -> tuple[int, str]:
    """Run ``argv`` in an empty folder under ``root``; assert issue 15's promise: exit 0, or exit
    2 with one ``error:`` line; never a traceback; nothing written under ``root`` outside
    ``allowed``. Returns (status, stderr)."""
    cwd = root / "cwd"
    cwd.mkdir(exist_ok=True)
    before = snapshot(root, allowed)
    code, out, err = run_main(argv, cwd)
    assert "Traceback" not in out + err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert snapshot(root, allowed) == before, (argv, "wrote outside --out/-o", set(snapshot(root, allowed)) ^ set(before))
    assert list(cwd.iterdir()) == [], (argv, "wrote into the working folder")
    return code, err


def opts(**choices: list[str]) -> st.SearchStrategy[list[str]]:
    """A subset of ``--option value`` pairs, each value drawn from its list, as argv words."""
    optional = {name: st.sampled_from(values) for name, values in choices.items()}
    return st.fixed_dictionaries({}, optional=optional).map(
        lambda d: [w for k, v in d.items() for w in (["--" + k.replace("_", "-")] if v is None else ["--" + k.replace("_", "-"), v])])


@pytest.fixture(scope="module")
def arena(image_file: Path, tiny_run: Path) -> dict[str, Path]:
    return {"images": image_file, "run": tiny_run}


@contextlib.contextmanager
def case(arena: dict[str, Path]) -> Any:
    """A fresh folder for one example, holding what a careless user points at: data (good, garbage,
    empty, a table), a file where a folder is expected, a copy of a trained run, an output folder."""
    root = Path(tempfile.mkdtemp(prefix="vaelab-case-"))
    try:
        (root / "data").mkdir()
        shutil.copy(arena["images"], root / "data" / "images.npy")
        (root / "data" / "garbage.npy").write_bytes(b"\x93NUMPY garbage" * 10)
        (root / "data" / "table.csv").write_text("a,b,c\n1,2,3\n4,5,6\n0,1,0\n1,0,1\n0,0,0\n1,1,1\n")
        (root / "data" / "empty.npy").write_bytes(b"")
        (root / "a-file").write_text("not a folder")
        shutil.copytree(arena["run"], root / "run")
        (root / "out").mkdir()
        yield {"root": root, "data": root / "data", "run": root / "run", "out": root / "out"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def written(output: str) -> tuple[Path, ...]:
    """What ``-o OUTPUT`` may write: the file, and its siblings with the other suffixes."""
    if not output:
        return ()
    p = Path(output)
    stem = p.with_suffix("") if p.suffix else p
    return (p, *(stem.with_suffix(x) for x in (".png", ".npy", ".npz", ".csv")))


DATA = ["{data}/images.npy", "{data}/garbage.npy", "{data}/table.csv", "{data}/empty.npy", "{data}/missing.npy",
        "{data}", "{root}/a-file", "nonsense-name"]
NUMBERS = ["-1", "0", "1", "2", "1.5", "x", "", "nan", "inf", "1e400", "99999999999999999999999"]
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(data=st.sampled_from(["{data}/images.npy"] * 6 + DATA),  # mostly good data, so that the options decide
       extra=opts(latent_dim=["0", "2", "-3", "x", "1000000000", "2.5"], hidden=["8", "0", "-1", "8,8", "a", "", "99999999999"],
                  batch_size=["0", "1", "64", "100000000000"], lr=["1e-3", "0", "-1", "nan", "inf", "1e30"],
                  val_fraction=["0", "0.5", "1", "-0.1", "nan"], k=["1", "0", "3", "100000000000"],
                  likelihood=["bernoulli", "gaussian", "nope"], posterior=["gaussian", "iaf", "planar", "x"],
                  name=["a", "", "../escape", "a/b", ".", "..", "x" * 300, "-", "a-file"],
                  epochs=["1", "0", "-1", "2", "x"], eval_k=["0", "3", "-1"], seed=["0", "-1", "1e3", "18446744073709551616"],
                  nan_retries=["0", "2", "-1"], precision=["float32", "bfloat16"], patience=["0", "-2"]))
def test_any_train_command_ends_in_exit_0_or_one_line(arena: dict[str, Path], data: str, extra: list[str]) -> None:
    with case(arena) as at:
        out = at["out"]
        argv = ["train", "--data", data.format(**at), "--epochs", "1", "--eval-k", "0", "--hidden", "8",
                "--latent-dim", "2", "--threads", "1", "--device", "cpu", "--quiet", "--out", str(out), *extra]
        code, err = check_call(argv, at["root"], (out,))
        if code == 0:
            runs = [p for p in out.iterdir() if p.is_dir()]
            assert len(runs) == 1 and (runs[0] / "model.safetensors").exists(), argv


@PROPERTY
@given(extra=opts(k=["0", "5", "-1", "x", "100000000"], k_chunk=["1", "3", "0", "100000000000"],
                  batch_size=["1", "7", "0", "-5"], estimator=["is", "ais", "mixture", "auto", "x"],
                  steps=["2", "0", "5"], chains=["1", "2", "0"], mi_samples=["0", "10", "-1", "100000000000000"],
                  gap_examples=["0", "2", "-1"], gap_steps=["2", "0"], elbo_samples=["1", "0", "3"],
                  seed=["0", "-1", "x"], kl=["mc", "analytic", "auto", "nope"], data=DATA[:5] + ["{run}", "{run}/config.json"]),
       flags=st.sets(st.sampled_from(["--json", "--no-gap", "--per-example"])))
def test_any_eval_command_ends_in_exit_0_or_one_line(arena: dict[str, Path], extra: list[str], flags: set[str]) -> None:
    with case(arena) as at:
        words = [w.format(**at) for w in extra]
        defaults = ["--gap-examples", "0", "--mi-samples", "10", "--k", "5", "--steps", "3"]
        check_call(["eval", str(at["run"]), *defaults, *words, *sorted(flags)], at["root"], (at["run"] / "eval.json",))


OUTPUTS = ["{out}/s.png", "{out}/deep/er/s.png", "{out}", "", "{out}/s.npy", "{out}/s", "{root}/a-file/s.png",
           "{run}/config.json", "{run}/model.safetensors", "{out}/s.csv", "{out}/s.npz", "{data}/images.npy",
           "{data}/images.npz", "{data}/table.csv"]


@PROPERTY
@given(n=st.sampled_from(["1", "5", "0", "-3", "x", "100001", "2.5"]), output=st.sampled_from(OUTPUTS),
       extra=opts(seed=["0", "-1", "x", "99999999999999999999"], label=["3", "x"], context=["1,2", "x"]),
       draw=st.booleans())
def test_any_sample_command_ends_in_exit_0_or_one_line(arena: dict[str, Path], n: str, output: str, extra: list[str],
                                                       draw: bool) -> None:
    with case(arena) as at:
        o = output.format(**at)
        check_call(["sample", str(at["run"]), "-n", n, "-o", o, *extra, *(["--draw"] if draw else [])], at["root"],
                   (at["out"], *written(o)))


@PROPERTY
@given(data=st.sampled_from(["{data}/images.npy"] * 4 + DATA), output=st.sampled_from(OUTPUTS))
def test_any_encode_command_ends_in_exit_0_or_one_line(arena: dict[str, Path], data: str, output: str) -> None:
    with case(arena) as at:
        d, o = data.format(**at), output.format(**at)
        code, err = check_call(["encode", str(at["run"]), d, "-o", o], at["root"],
                               (at["out"], *[p for p in written(o) if p != Path(d)]))  # never the input itself


# --- kill -9 at random moments, then --resume -------------------------------------------------------
KILLS = 5  # kill -9 this many times (the loop's count, reported in the README)


def epoch_of(run: Path) -> int:
    """The epoch of the run's checkpoint (0: none yet, or being replaced right now)."""
    try:
        return int(read_metadata(run / "checkpoint.safetensors")["state"]["epoch"])
    except (VaelabError, OSError, KeyError, ValueError):
        return 0


@pytest.mark.slow
def test_kill_9_at_random_moments_and_resume_ends_with_the_uninterrupted_weights(image_file: Path, tmp_path: Path) -> None:
    """Train in a subprocess; once it has saved an epoch, kill -9 it at a random moment (in a
    step, in a checkpoint write, between files); resume; again, ``KILLS`` times; then let it
    finish. The weights, the optimizer state and the metrics equal an uninterrupted run's, bit for bit."""
    epochs = 15  # enough that every kill lands before the end: each process runs about one or two epochs
    base = [sys.executable, "-m", "vaelab", "train", "--data", str(image_file), "--hidden", "16", "--latent-dim", "2",
            "--epochs", str(epochs), "--batch-size", "8", "--eval-k", "0", "--threads", "1", "--device", "cpu",
            "--quiet", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run([*base, "--name", "ref"], check=True, env=env, capture_output=True, timeout=300)
    epoch_seconds = float(np.median([m["seconds"] for m in read_metrics(tmp_path / "ref")]))
    run, rng, kills = tmp_path / "run", random.Random(15), 0
    while True:
        fresh = epoch_of(run) == 0
        if fresh:
            shutil.rmtree(run, ignore_errors=True)  # killed before its first checkpoint: nothing to keep
        argv = [*base, "--name", "run"] if fresh else [*base[:4], "--resume", str(run), "--quiet"]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < KILLS:
            start, seen = time.monotonic(), epoch_of(run)
            while proc.poll() is None and epoch_of(run) <= seen and time.monotonic() - start < 120:
                time.sleep(0.01)  # until this process has saved an epoch of its own
            time.sleep(rng.uniform(0.0, 1.5 * epoch_seconds))  # then a random moment of the next epoch or two
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()  # reaped, its pipe closed
                kills += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 or "already finished" in err, err
        if epoch_of(run) == epochs:
            break
    assert kills == KILLS
    assert_same_tensors(tensors(tmp_path / "ref" / "checkpoint.safetensors"), tensors(run / "checkpoint.safetensors"))
    assert_same_tensors(tensors(tmp_path / "ref" / "model.safetensors"), tensors(run / "model.safetensors"))
    drop = ("seconds", "examples_per_second")
    assert [{k: v for k, v in m.items() if k not in drop} for m in read_metrics(tmp_path / "ref")] == \
        [{k: v for k, v in m.items() if k not in drop} for m in read_metrics(run)]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# --- NaN recovery in a data-parallel run ----------------------------------------------------------
def _ddp_worker(rank: int, port: int, data: str, out: str) -> None:
    """One of two gloo processes; rank 1's gradients turn NaN once (after DDP averaged them),
    so only its replica goes bad: the NaN count is summed, so both must roll back together."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import vaelab.runs as runs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    calls = [0]

    def poison(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        calls[0] += 1
        if rank == 1 and calls[0] == STEPS + 2:  # epoch 2, step 2, this replica only
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad.fill_(math.nan)

    register_optimizer_step_pre_hook(poison)
    real_fit = runs.fit

    def fit_and_keep(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        result = real_fit(model, *args, **kwargs)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out}/final{rank}.pt")
        return result

    runs.fit = fit_and_keep  # type: ignore[assignment]
    train(data=data, out=out, name="ddp", **{**TINY, "epochs": 3})


@pytest.mark.slow
def test_data_parallel_replicas_recover_together(grey_file: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(port, str(grey_file), str(tmp_path)), nprocs=2)
    finals = [torch.load(tmp_path / f"final{r}.pt") for r in range(2)]
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key
        assert torch.isfinite(finals[0][key]).all(), key
    [event] = events(tmp_path / "ddp")
    assert (event["epoch"], event["step"], event["lr_after"]) == (2, 3, 5e-4)
    assert [m["epoch"] for m in read_metrics(tmp_path / "ddp")] == [1, 2, 3]


def test_probe_reports_a_forward_pass_that_raises() -> None:
    m = Blows()

    def run() -> torch.Tensor:
        raise ValueError("Expected parameter loc of Normal to satisfy the constraint Real()\nmore")

    forensics, found = probe(m, run, lr=1e-3)
    assert found and "the forward pass failed (ValueError: Expected parameter loc" in forensics.text()


def test_encode_and_reconstruct_run_in_chunks(tiny_run: Path, image_file: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 examples give the numbers of one pass over all 240 (float32 rounding aside)."""
    import vaelab.cli

    monkeypatch.setattr(vaelab.cli, "CHUNK", 7)
    for argv in (["encode", tiny_run, image_file, "-o", tmp_path / "e.npz"],
                 ["reconstruct", tiny_run, image_file, "-o", tmp_path / "r.png"]):
        code, _, err = run_main([str(a) for a in argv], tmp_path)
        assert code == 0, err
    model, x = vaelab.load(tiny_run), np.load(image_file)
    q = model.encode(x)
    with np.load(tmp_path / "e.npz") as saved:
        np.testing.assert_allclose(saved["mean"], q.mean.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(saved["std"], q.stddev.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), model.reconstruct(x).numpy(), rtol=0, atol=1e-6)
