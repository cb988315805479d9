"""Settings read from files keep their types, and torchrun prints an error once.

* ``config.json`` (and ``model.json``, a ``--config`` file) are typed files: a setting of
  another type there (``"epochs": "3"``, ``3.5``, ``true``; ``"lr": "0.01"``; ``"data": 3``;
  ``"compile": "true"``; ``"hidden": ["16"]``) is refused in one line naming the file, the key,
  the value and the type, where text used to be converted silently. Text given in Python
  (``TrainConfig.from_mapping({"threads": "1"})``) is still converted, and every run folder
  vaelab wrote (0.1.0's in ``tests/data`` too) still loads.
* under ``torchrun`` a bad option or setting fails in every process: local rank 0 prints the
  line, the others wait for torchrun to end them (still a non-zero exit), so the line is
  printed once and never lost; ``--help``, ``--version`` and vaelab's one-line warnings are
  printed by local rank 0 alone too (the others exit quietly, status 0, or say nothing).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vaelab
from vaelab.config import TrainConfig, load_config_file
from vaelab.errors import VaelabError
from vaelab.run_folder import read_config
from vaelab.spec import ModelSpec
from vaelab.training import distributed

DATA = Path(__file__).parent / "data"


def one_line(err: pytest.ExceptionInfo[VaelabError], *culprits: str) -> str:
    text = str(err.value)
    assert "\n" not in text
    for culprit in culprits:
        assert culprit in text, f"{culprit!r} not in {text!r}"
    return text


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the run folder vaelab 0.1.0 wrote (no model.json: read from config.json)."""
    return Path(shutil.copytree(DATA / "run-0.1.0", tmp_path / "runs" / "old"))


def edit_config(run: Path, **changes: Any) -> str:
    """Set ``changes`` in the run's config.json; the file's SHA-256 after the edit."""
    path = run / "config.json"
    doc = json.loads(path.read_text())
    doc["config"].update(changes)
    path.write_text(json.dumps(doc, indent=2))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. config.json's settings keep their types ----------------------------------------------

WRONG_TYPES = [  # (key, value as config.json holds it, the type named)
    ("epochs", "3", "int"),  # text for a number: converted before
    ("epochs", 3.5, "int"),
    ("epochs", True, "int"),
    ("epochs", None, "int"),
    ("seed", "0", "int"),
    ("lr", "0.001", "float"),  # text for a float: converted before
    ("beta", False, "float"),
    ("compile", "true", "bool"),  # text for true/false: converted before
    ("compile", 1, "bool"),
    ("data", 3, "str"),
    ("binarize", ["auto"], "str"),
    ("hidden", ["8"], "list[int]"),  # a part's option: text items in a list of numbers, converted before
    ("hidden", [8.5], "list[int]"),
    ("gaussian_scale", "1.0", "float"),  # a part's option: text for a number, converted before
    ("mixtures", "5", "int"),
    ("learn_scale", 3, "str"),
    ("condition_on", [1], "list[str]"),
]


@pytest.mark.parametrize("key,value,type_name", WRONG_TYPES, ids=[f"{k}={v!r}" for k, v, _ in WRONG_TYPES])
def test_a_setting_of_another_type_in_config_json_is_refused_on_read(old_run: Path, key: str, value: Any,
                                                                     type_name: str) -> None:
    edit_config(old_run, **{key: value})
    with pytest.raises(VaelabError) as err:
        read_config(old_run)
    one_line(err, str(old_run / "config.json"), f"{key} must be of type {type_name}", f"got {value!r}", "; give ")


@pytest.mark.parametrize("argv", [
    lambda run: ["eval", run, "--k", "5", "--no-gap"],
    lambda run: ["train", "--resume", run, "--epochs", "4", "--quiet"],
    lambda run: ["sample", run, "-n", "4", "-o", run.parent / "s.png"],
], ids=["eval", "resume", "sample"])
def test_every_command_refuses_text_for_a_number_in_config_json(old_run: Path, argv: Any, refused: Any) -> None:
    digest = edit_config(old_run, epochs="3")
    before = sorted(p.name for p in old_run.parent.rglob("*"))
    refused(argv(old_run), "config.json", "epochs must be of type int", "got '3'", "a whole number without quotes")
    assert hashlib.sha256((old_run / "config.json").read_bytes()).hexdigest() == digest  # nothing rewritten
    assert sorted(p.name for p in old_run.parent.rglob("*")) == before  # nothing written


def test_vaelab_runs_lists_a_config_json_with_text_for_a_number_as_damaged(old_run: Path, capsys: Any) -> None:
    from conftest import run_cli

    edit_config(old_run, lr="0.001")
    assert run_cli(["runs", old_run.parent]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and "lr must be of type float, got '0.001'" in out, out


def test_run_folders_of_every_version_still_load(tmp_path: Path) -> None:
    for name in ("run-0.1.0", "run-0.1.0-planar-mog"):  # written by vaelab 0.1.0 (no model.json)
        run = Path(shutil.copytree(DATA / name, tmp_path / name))
        config = read_config(run)
        assert (config.epochs, config.hidden, config.threads) == (1, [8], 1)
        assert vaelab.load(run, device="cpu").config == config
    # what this version writes: every kind of setting, read back as a typed file
    config = TrainConfig.from_mapping(dict(
        data="digits", latent_dims=[4, 2], ladder_skip=True, ladder_norm="layer", hidden=[16, 8], epochs=3, lr=0.01,
        compile=True, condition_on=["label"], embedding=3, log=["tensorboard"], checkpoint_every=1.5, seed=7))
    doc = json.loads(json.dumps({"config": config.to_dict()}))
    assert TrainConfig.from_mapping(doc["config"], source=str(tmp_path / "config.json")) == config
    assert TrainConfig.from_mapping(doc["config"], typed=True) == config
    spec = ModelSpec.create((1, 8, 8), posterior="planar", prior="mog", likelihood="gaussian",
                            options={"hidden": [8], "flow_steps": 2, "gaussian_scale": 0.5})
    assert ModelSpec.from_dict(json.loads(spec.to_json()), source="model.json") == spec


@pytest.mark.parametrize("part,key,value,type_name", [
    ("net", "hidden", ["16"], "list[int]"),
    ("posterior", "min_scale", "0.1", "float"),
])
def test_a_part_option_of_another_type_in_model_json_is_refused(part: str, key: str, value: Any,
                                                                 type_name: str) -> None:
    doc = ModelSpec.create((1, 8, 8), options={"hidden": [16]}).to_dict()
    doc[part][key] = value
    with pytest.raises(VaelabError) as err:
        ModelSpec.from_dict(doc, source="RUN/model.json")
    one_line(err, "RUN/model.json", f"{part} ", f"{key} must be of type {type_name}", f"got {value!r}")


def test_a_config_file_is_typed_too_and_text_in_python_is_still_converted(tmp_path: Path, refused: Any) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('data = "digits"\nepochs = "3"\n')
    refused(["train", "--config", toml, "--out", tmp_path / "runs"], "c.toml", "epochs must be of type int",
            "got '3'")
    settings = tmp_path / "settings.cfg"  # any name: --config reads TOML unless it ends in .json
    settings.write_text('data = "digits"\ncompile = "true"\n')
    refused(["train", "--config", settings, "--out", tmp_path / "runs"], "settings.cfg", "compile must be of type bool")
    assert not (tmp_path / "runs").exists()
    # the command line's comma-separated form of a list stays valid in a file
    toml.write_text('hidden = "16,8"\nlatent_dims = "4,2"\ncondition_on = "label"\n')
    config = TrainConfig.from_mapping(load_config_file(toml), source=str(toml))
    assert (config.hidden, config.latent_dims, config.condition_on) == ([16, 8], [4, 2], ["label"])
    # given in Python, text is converted as before (vaelab.train(threads="1"))
    config = TrainConfig.from_mapping({"epochs": "3", "lr": "0.01", "compile": "yes", "hidden": ["8"]})
    assert (config.epochs, config.lr, config.compile, config.hidden) == (3, 0.01, True, [8])


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("key", ["lr", "gaussian_scale"])
def test_an_integer_too_large_for_a_float_is_one_line_not_an_overflow(key: str, typed: bool) -> None:
    values = {key: 10**400, **({"likelihood": "gaussian"} if key == "gaussian_scale" else {})}
    with pytest.raises(VaelabError) as err:  # it was an OverflowError, a traceback
        TrainConfig.from_mapping(values, source="config.json", typed=typed)
    one_line(err, "config.json", f"{key} must be of type float", "give a number")


# --- 2. under torchrun the error is printed once ---------------------------------------------


def clean_env() -> dict[str, str]:
    import os

    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1"}


def test_torchrun_prints_a_bad_setting_once_and_fails(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vaelab", "train", "--data", "digits", "--epochs", "1", "--lr", "-1", "--out", str(tmp_path / "runs")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: lr must be > 0 and finite, got -1.0"], done.stderr[-3000:]  # once, by local rank 0
    assert "(rank 1)" not in done.stderr
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def torchrun_env(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """This process as one of torchrun's (``rank``/``local_rank`` set by the test); the
    waits for local rank 0, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(distributed.time, "sleep", waits.append)
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", WORLD_SIZE="4").items():
        monkeypatch.setenv(key, value)
    return waits


@pytest.mark.parametrize("argv,line", [
    (["train", "--bad-option"], "error: No such option '--bad-option'"),
    (["train", "--data", "digits", "--lr", "-1"], "error: lr must be > 0 and finite, got -1.0"),
])
def test_another_local_rank_leaves_the_error_to_local_rank_0_but_never_loses_it(
        torchrun_env: list[float], monkeypatch: pytest.MonkeyPatch, capsys: Any, argv: list[str], line: str) -> None:
    from vaelab.cli import main

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2  # a non-zero exit on this rank too
    assert torchrun_env == [distributed.ERROR_WAIT_S]  # it waited for torchrun to end it, silent meanwhile
    [printed] = capsys.readouterr().err.splitlines()  # not ended: its own line, with its rank
    assert printed.startswith(line) and printed.endswith("(rank 3)"), printed


def test_local_rank_0_prints_at_once_on_every_machine(torchrun_env: list[float], monkeypatch: pytest.MonkeyPatch,
                                                      refused: Any) -> None:
    monkeypatch.setenv("RANK", "2")  # the first process of a second machine
    monkeypatch.setenv("LOCAL_RANK", "0")
    line = refused(["train", "--data", "digits", "--lr", "-1"], "lr must be > 0")
    assert "(rank" not in line and torchrun_env == []


def test_an_error_of_one_rank_alone_is_printed_by_that_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", WORLD_SIZE="2", RANK="1",
                           LOCAL_RANK="1").items():
        monkeypatch.setenv(key, value)
    assert distributed.error_left_to_local_rank_0(VaelabError("every rank")) == 1
    err = VaelabError("local rank 1 has no GPU")
    err.this_rank_only = True  # type: ignore[attr-defined]  # as setup() raises it
    assert distributed.error_left_to_local_rank_0(err) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.error_left_to_local_rank_0(VaelabError("alone")) is None


# --- 3. under torchrun --help, --version and warnings are printed once --------------------------------


def test_torchrun_prints_help_once(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vaelab", "train", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Usage: vaelab train") == 1, done.stdout[-3000:]  # by local rank 0, not by each process


def _warning_run(folder: Path) -> Path:
    """A folder holding one run whose metrics.jsonl ends in a truncated line: ``vaelab runs`` warns."""
    run = folder / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}, "data": {}}))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    return folder


RANKS = [
    (None, None, True),  # no torchrun: as ever
    ("2", "0", True),  # local rank 0 (of a second machine): prints for its machine
    ("3", "1", False),  # another local rank: silent, local rank 0 printed the same
]


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: str | None, local_rank: str | None) -> None:
    """This process as one of torchrun's (``torchrun_env``), or, with ``rank`` None, as no launcher's."""
    if rank is None:
        monkeypatch.delenv("WORLD_SIZE")
    else:
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", local_rank)


@pytest.mark.parametrize("rank,local_rank,shown", RANKS)
@pytest.mark.parametrize("argv", [["--help"], ["train", "-h"], ["runs", "--help"], ["--version"]])
def test_help_and_version_are_printed_by_local_rank_0_only(
        torchrun_env: list[float], monkeypatch: pytest.MonkeyPatch, capsys: Any, argv: list[str], rank: str | None,
        local_rank: str | None, shown: bool) -> None:
    from vaelab.cli import main

    _as_rank(monkeypatch, rank, local_rank)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code in (0, None)  # a success on every process
    out = capsys.readouterr()
    assert out.err == "" and torchrun_env == []  # no wait: nothing can be lost
    assert ("vaelab, version" if argv == ["--version"] else "Usage: vaelab") in out.out if shown else out.out == ""


@pytest.mark.filterwarnings("default::RuntimeWarning")  # (the suite's "error" would raise it)
@pytest.mark.parametrize("rank,local_rank,shown", RANKS)
def test_warnings_are_printed_by_local_rank_0_only(torchrun_env: list[float], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: Any, tmp_path: Path, rank: str | None,
                                                   local_rank: str | None, shown: bool) -> None:
    from vaelab.cli import main

    _as_rank(monkeypatch, rank, local_rank)
    with pytest.raises(SystemExit) as info:
        main(["runs", str(_warning_run(tmp_path / "runs"))])
    assert info.value.code in (0, None)
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    line = f"warning: '{tmp_path / 'runs/r/metrics.jsonl'}': the last line (2) is truncated; it was left out"
    assert warned == ([line] if shown else []), warned
