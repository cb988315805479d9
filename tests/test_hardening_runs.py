"""Run folders after the accidents that happen to them.

* a run interrupted (Ctrl-C, kill -9) after its last checkpoint, while its figures, ``eval.json``
  or the last records of ``metrics.jsonl`` were written, is finished by ``vaelab train --resume``:
  the missing outputs are made from the saved weights, nothing is trained, nothing else changes
  (a complete finished run is still refused);
* weights of another model copied into a run (``model.safetensors`` or a checkpoint of a run
  with another ``--hidden``), or a ``model.json`` edited to another model, are named by
  ``vaelab runs`` (damaged) and ``vaelab verify`` (refused) instead of ``ok`` and
  ``bit-identical``; ``verify`` compares the retrained best weights too;
* a deleted ``model.safetensors`` or checkpoint of a run whose other records show epochs
  finished is named as missing, not as "no epoch finished";
* a state dict that does not fit is one sentence: the file, the first tensor with both shapes,
  the fix;
* the tables of ``vaelab runs`` and ``vaelab compare`` stay aligned when a run's name holds
  characters escaped for the terminal (or wide ones);
* ``vaelab runs`` lists a run interrupted at its end as ``unfinished``, naming what is missing
  and the resume that makes it (it was ``ok``), but not a run whose end never wrote it (the
  Python API's ``figures=False``, no ``evaluate``, ``eval_k`` 0, a sweep's trial).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import vaelab
from conftest import digest, run_cli
from vaelab.compare import display_width, format_runs, list_runs
from vaelab.errors import VaelabError, printable
from vaelab.training.checkpoint import load_checkpoint, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--hidden", 8, "--latent-dim", 2, "--epochs", 2, "--batch-size", 50, "--device", "cpu", "--quiet",
         "--eval-k", 5, "--threads", 1]


@pytest.fixture(scope="module")
def data_file(binary_file: Path) -> Path:
    return binary_file


@pytest.fixture(scope="module")
def runs(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ref``: a finished run with its figures and eval.json (2 epochs, hidden 8); ``wide``: the
    same with hidden 4; ``seed1``: the same as ``ref`` with another seed."""
    out = tmp_path_factory.mktemp("runs")
    for name, extra in (("ref", []), ("wide", ["--hidden", 4]), ("seed1", ["--seed", 1])):
        assert run_cli(["train", "--data", data_file, "--out", out, "--name", name, *TRAIN, *extra]) == 0
    return out


def copy(runs: Path, tmp_path: Path, name: str = "ref", to: str = "x") -> Path:
    shutil.copytree(runs / name, tmp_path / to)
    return tmp_path / to


# --- 1. a finished run interrupted while its final outputs were made ------------------------------------
def test_ctrl_c_in_the_final_figures_is_finished_by_resume(data_file: Path, runs: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import vaelab.plots

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vaelab.plots, "training_curves", interrupted)  # Ctrl-C while curves.png is drawn
    capsys.readouterr()
    assert run_cli(["train", "--data", data_file, "--out", tmp_path, "--name", "x", *TRAIN]) == 130
    err = capsys.readouterr().err
    x = tmp_path / "x"
    assert f"vaelab train --resume {x}" in err  # the interruption says how to finish the run
    assert not (x / "curves.png").exists() and not (x / "eval.json").exists()
    assert (x / "checkpoint.safetensors").exists() and (x / "samples.png").exists()
    monkeypatch.undo()
    kept = digest(x)
    assert run_cli(["train", "--resume", x]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "already finished" in line]
    assert len(said) == 1 and "curves.png, eval.json were missing" in said[0] and "without training" in said[0]
    after = digest(x)
    assert {k: v for k, v in after.items() if k in kept} == kept  # weights, checkpoints, settings, manifest: as they were
    assert set(after) - set(kept) == {"curves.png", "eval.json"}
    ref = runs / "ref"
    assert json.loads((x / "eval.json").read_text()) == json.loads((ref / "eval.json").read_text())
    assert (x / "curves.png").read_bytes() == (ref / "curves.png").read_bytes()
    refused = run_cli(["train", "--resume", x])  # complete now: refused as before
    assert refused == 2 and "already finished its 2 epochs" in capsys.readouterr().err
    assert digest(x) == after


@pytest.mark.parametrize("lost", [("samples.png",), ("reconstructions.png", "eval.json"), ("metrics.jsonl:2",),
                                  ("metrics.jsonl", "curves.png", "samples.png", "reconstructions.png", "eval.json")])
def test_a_kill_at_the_end_leaves_what_resume_makes_again(runs: Path, tmp_path: Path, lost: tuple[str, ...],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    x = copy(runs, tmp_path)
    ref = runs / "ref"
    for name in lost:
        if name == "metrics.jsonl:2":  # killed between the last checkpoint and metrics.jsonl's last record
            (x / "metrics.jsonl").write_text((ref / "metrics.jsonl").read_text().splitlines()[0] + "\n")
        else:
            (x / name).unlink()
    before = digest(x)
    capsys.readouterr()
    assert run_cli(["train", "--resume", x]) == 0
    assert "were missing" in capsys.readouterr().err or len(lost) == 1
    after = digest(x)
    assert after == digest(ref)  # every output as the uninterrupted run wrote it, bit for bit
    assert {k: v for k, v in before.items() if k.split(":")[0] not in {n.split(":")[0] for n in lost}} == \
        {k: v for k, v in after.items() if k.split(":")[0] not in {n.split(":")[0] for n in lost}}


def test_a_complete_finished_run_is_refused_as_before(runs: Path, tmp_path: Path, refused) -> None:
    x = copy(runs, tmp_path)
    before = digest(x)
    refused(["train", "--resume", x], "already finished its 2 epochs", "--epochs")
    (x / "curves.png").unlink()  # Python, without figures: nothing of what it makes is missing
    before = digest(x)
    with pytest.raises(VaelabError, match="already finished"):
        vaelab.train(resume=x, figures=False, progress=False, log=lambda *a: None)
    assert digest(x) == before


def test_a_run_that_stopped_early_gets_its_missing_end_and_nothing_else(data_file: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An early-stopped run is never trained further: its resume makes what an interrupted end
    left missing and, once complete, writes nothing (it had redrawn every figure, rewritten
    eval.json and left a metrics.jsonl behind its checkpoint behind)."""
    out = tmp_path / "runs"
    assert run_cli(["train", "--data", data_file, *TRAIN[:4], "--epochs", 8, "--lr", 1e-12, "--patience", 1,
                    *TRAIN[6:], "--out", out, "--name", "e"]) == 0
    run = out / "e"
    assert json.loads((run / "eval.json").read_text())  # a complete run, stopped early
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert 1 < len(lines) < 8
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # killed before the last record
    (run / "curves.png").unlink()
    kept = {k: v for k, v in digest(run).items() if k not in ("metrics.jsonl", "curves.png")}
    capsys.readouterr()
    assert run_cli(["train", "--resume", run]) == 0
    assert "stopped early at epoch" in capsys.readouterr().err
    after = digest(run)
    assert {k: v for k, v in after.items() if k not in ("metrics.jsonl", "curves.png")} == kept  # nothing else
    assert (run / "metrics.jsonl").read_text().splitlines() == lines and "curves.png" in after
    assert run_cli(["train", "--resume", run, "--quiet"]) == 0  # complete: nothing to continue, nothing written
    assert digest(run) == after


# --- 2. weights of another model --------------------------------------------------------------------
@pytest.mark.parametrize("swapped", ["model.safetensors", "checkpoint.safetensors", "checkpoint.previous.safetensors"])
def test_weights_of_another_model_are_named_by_runs_and_verify(runs: Path, tmp_path: Path, refused, swapped: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "all"
    folder.mkdir()
    x = copy(runs, folder)
    shutil.copyfile(runs / "wide" / swapped, x / swapped)  # hidden 4 where the run has hidden 8
    info = {r.name: r for r in list_runs(folder)}["x"]
    assert info.status == "damaged"
    for part in (swapped, "does not fit this model (the run's model.json)", "is [4, 16] in the file but [8, 16] in "
                 "the model", "restore the run's own file"):
        assert part in (info.problem or ""), info.problem
    capsys.readouterr()
    assert run_cli(["runs", folder]) == 0
    assert "x: damaged: " in capsys.readouterr().out
    before = digest(x)
    refused(["verify", x], str(x / swapped), "does not fit", "[4, 16]", "[8, 16]")
    assert digest(x) == before


def test_resume_names_best_weights_of_another_model_before_writing(runs: Path, tmp_path: Path, refused) -> None:
    x = copy(runs, tmp_path / "all")
    shutil.copyfile(runs / "wide" / "model.safetensors", x / "model.safetensors")  # hidden 4 in a hidden-8 run
    before = digest(x)
    refused(["train", "--resume", x, "--epochs", 3, "--quiet"], str(x / "model.safetensors"), "does not fit",
            "[4, 16]", "[8, 16]")
    assert digest(x) == before  # nothing trained, nothing rewritten


def test_an_edited_model_json_is_named_not_the_weights(runs: Path, tmp_path: Path, refused) -> None:
    x = copy(runs, tmp_path / "all")
    spec = json.loads((x / "model.json").read_text())
    spec["latent_dim"] = 3
    (x / "model.json").write_text(json.dumps(spec))
    problem = {r.name: r for r in list_runs(tmp_path / "all")}["x"].problem or ""
    assert "model.json describes another model than every one of its weights files" in problem
    refused(["verify", x], f"run '{x}'", "model.json", "edited by hand")


@pytest.mark.parametrize("epochs", [2, 1])  # best weights kept by the previous checkpoint; retrained from the seed
def test_verify_compares_the_best_weights_too(data_file: Path, runs: Path, tmp_path: Path, epochs: int,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    if epochs == 2:
        x = copy(runs, tmp_path)
    else:
        x = tmp_path / "x"
        assert run_cli(["train", "--data", data_file, "--out", tmp_path, "--name", "x", *TRAIN[:4], "--epochs", 1,
                        *TRAIN[6:], "--eval-k", 0]) == 0
    capsys.readouterr()
    assert run_cli(["verify", x]) == 0
    assert "bit-identical" in capsys.readouterr().out
    shutil.copyfile(runs / "seed1" / "model.safetensors", x / "model.safetensors")  # the same model, other weights
    assert run_cli(["verify", x]) == 1
    assert "differs" in (out := capsys.readouterr().out) and "'model.safetensors:" in out


# --- 3. a deleted file of a run that finished epochs ----------------------------------------------
def test_a_deleted_weights_file_is_named_missing(runs: Path, tmp_path: Path, refused,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "all"
    x = copy(runs, folder)
    (x / "model.safetensors").unlink()
    problem = {r.name: r for r in list_runs(folder)}["x"].problem or ""
    assert "model.safetensors is missing, though checkpoint.safetensors shows epoch 2 finished" in problem
    assert "no epoch finished" not in problem and "restore it from a backup" in problem
    before = digest(x)
    for argv in (["eval", x], ["sample", x, "-o", tmp_path / "s.png"], ["verify", x], ["train", "--resume", x],
                 ["compare", runs / "ref", x, "--no-paired"]):
        line = refused(argv, "model.safetensors is missing", "shows epoch 2 finished")
        assert "did not finish an epoch" not in line and "no epoch finished" not in line
    with pytest.raises(VaelabError, match="model.safetensors is missing"):
        vaelab.load(x)
    assert digest(x) == before


def test_a_deleted_checkpoint_is_named_missing(runs: Path, tmp_path: Path, refused) -> None:
    x = copy(runs, tmp_path)
    (x / "checkpoint.safetensors").unlink()
    before = digest(x)
    line = refused(["verify", x], "checkpoint.safetensors is missing", "shows epoch")
    assert "did not finish an epoch" not in line
    refused(["train", "--resume", x, "--epochs", 3], "has no checkpoint to resume from",
            "checkpoint.safetensors is missing")
    assert digest(x) == before


def test_a_run_that_finished_no_epoch_still_says_so(runs: Path, tmp_path: Path, refused) -> None:
    folder = tmp_path / "all"
    x = copy(runs, folder)
    for name in ("model.safetensors", "checkpoint.safetensors", "checkpoint.previous.safetensors"):
        (x / name).unlink()
    (x / "metrics.jsonl").write_text("")  # as a run killed in its first epoch leaves it
    assert "no epoch finished" in ({r.name: r for r in list_runs(folder)}["x"].problem or "")
    refused(["eval", x], "it did not finish an epoch")
    refused(["verify", x], "it did not finish an epoch")


def test_weights_without_a_first_checkpoint_are_a_kill_not_a_deletion(runs: Path, tmp_path: Path, refused) -> None:
    x = copy(runs, tmp_path)  # killed between the first best weights and the first checkpoint
    for name in ("checkpoint.safetensors", "checkpoint.previous.safetensors"):
        (x / name).unlink()
    (x / "metrics.jsonl").write_text("")
    line = refused(["train", "--resume", x, "--epochs", 3], "has no checkpoint to resume from", "train it anew")
    assert "missing" not in line


# --- 4. a state dict that does not fit -------------------------------------------------------------
def test_a_state_dict_that_does_not_fit_is_one_clear_sentence(runs: Path, tmp_path: Path) -> None:
    path = runs / "wide" / "checkpoint.safetensors"
    with pytest.raises(VaelabError) as err:
        load_checkpoint(path, vaelab.build_vae((16,), latent_dim=2, hidden=[8]))
    text = str(err.value)
    assert "\n" not in text and "Error(s)" not in text and "state_dict" not in text
    assert text.startswith(f"checkpoint '{path}' does not fit this model: tensor 'encoder.net.1.weight' is [4, 16] "
                           "in the file but [8, 16] in the model; "), text
    assert text.endswith("restore the run's own file from a backup, or train a new run")
    from torch import nn

    from vaelab.training.checkpoint import save_weights

    with_bias, without = tmp_path / "b.safetensors", tmp_path / "n.safetensors"
    save_weights(with_bias, nn.Linear(3, 2))
    save_weights(without, nn.Linear(3, 2, bias=False))
    with pytest.raises(VaelabError, match=r"n.safetensors' does not fit this model: the model's tensor 'bias' \[2\] "
                       "is not in the file; "):
        load_weights(without, nn.Linear(3, 2))
    with pytest.raises(VaelabError, match=r"b.safetensors' does not fit this model: the file holds a tensor 'bias' "
                       r"\[2\] that the model has no place for; "):
        load_weights(with_bias, nn.Linear(3, 2, bias=False))
    x = copy(runs, tmp_path)
    shutil.copyfile(runs / "wide" / "model.safetensors", x / "model.safetensors")
    with pytest.raises(VaelabError) as err:  # loaded from the run: the run's model.json named
        vaelab.load(x)
    assert "does not fit this model (the run's model.json): tensor 'encoder.net.1.weight'" in str(err.value)


# --- 5. tables with escaped and wide names ---------------------------------------------------------
def _columns(line: str, cells: list[str]) -> list[int]:
    """The display column at which each of ``cells`` (in order, after the first, the name) begins in ``line``."""
    cols, pos = [], 0
    for i, cell in enumerate(cells):
        pos = line.index(cell, pos)
        if i:
            cols.append(display_width(line[:pos]))
        pos += len(cell)
    return cols


@pytest.mark.parametrize("odd", ["ev\x1b]0;PWNED\x07\x1b[2J", "tab\there", "名前の実行", "e\u0301\u0301"])
def test_tables_stay_aligned_with_escaped_or_wide_names(runs: Path, data_file: Path, tmp_path: Path, odd: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "all"
    folder.mkdir()
    for name in ("plain", odd):
        shutil.copytree(runs / "ref", folder / name)
    capsys.readouterr()
    assert run_cli(["runs", folder]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b" not in "\n".join(lines) and "\t" not in "\n".join(lines)
    header = _columns(lines[0], ["run", "status", "data", "model", "headline"])
    shown = printable(odd)
    rows = {line.split(" ")[0]: line for line in lines[1:3]}
    assert set(rows) == {"plain", shown}, lines
    for name, line in rows.items():
        assert _columns(line, [name, "ok", str(data_file), "mlp[8]", "-log p(x)"]) == header, lines
    text = format_runs(list_runs(folder))  # the text itself: escaped as the terminal shows it
    assert "\t" not in text and "\x1b" not in text
    assert run_cli(["compare", folder / "plain", folder / odd, "--no-paired"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = _columns(lines[0], ["run", "data", "model", "-log p(x)"])
    rows = {line.split(" ")[0]: line for line in lines[1:3]}
    assert set(rows) == {"plain", shown}, lines
    for name, line in rows.items():
        assert _columns(line, [name, str(data_file), "mlp[8]", " ± "])[:2] == header[:2], lines


# --- 6. vaelab runs names a run interrupted at its end ------------------------------------------------
CLI_ARGV = ["/usr/local/bin/vaelab", "train", "--data", "x.npy"]  # manifest.json's argv of `vaelab train`


def trained_by(run: Path, argv: list[str]) -> None:
    """Record ``argv`` as the command line of the run's last session, as ``vaelab train`` (run
    in a terminal, not in-process as here) records its own."""
    doc = json.loads((run / "manifest.json").read_text())
    (doc["resumed"][-1] if doc["resumed"] else doc)["argv"] = argv
    (run / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("lost,said", [
    (("curves.png",), "curves.png missing; 'vaelab train --resume {x}' makes it without training"),
    (("metrics.jsonl:1",), "the last records of metrics.jsonl missing; 'vaelab train --resume {x}' makes it"),
    (("eval.json",), "eval.json missing; 'vaelab train --resume {x}' makes it"),  # trained by `vaelab train`
    (("reconstructions.png", "samples.png", "curves.png", "eval.json"),  # killed right after the last checkpoint
     "reconstructions.png, samples.png, curves.png and eval.json missing; 'vaelab train --resume {x}' makes them"),
])
def test_runs_lists_a_run_interrupted_at_its_end_as_unfinished(runs: Path, tmp_path: Path, lost: tuple[str, ...],
                                                               said: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "all"
    x = copy(runs, folder)
    trained_by(x, CLI_ARGV)
    for name in lost:
        if name == "metrics.jsonl:1":  # killed between the last checkpoint and metrics.jsonl's last record
            (x / "metrics.jsonl").write_text((runs / "ref" / "metrics.jsonl").read_text().splitlines()[0] + "\n")
        else:
            (x / name).unlink()
    before = digest(x)
    info = {r.name: r for r in list_runs(folder)}["x"]
    assert info.status == "unfinished"  # it was "ok"
    assert said.format(x=x) in (info.problem or ""), info.problem
    assert "interrupted after its last checkpoint" in (info.problem or "")
    capsys.readouterr()
    assert run_cli(["runs", folder]) == 0
    out = capsys.readouterr().out
    assert "x: unfinished: interrupted after its last checkpoint" in out and said.format(x=x) in out
    assert out.splitlines()[1].split()[:2] == ["x", "unfinished"]
    assert digest(x) == before  # listing changes nothing
    if len(lost) == 4:  # the resume it names finishes the run: ok again
        assert run_cli(["train", "--resume", x, "--quiet"]) == 0
        assert {r.name: r for r in list_runs(folder)}["x"].status == "ok"


@pytest.mark.parametrize("case", ["python", "figures=False", "eval_k=0", "sweep", "short of its epochs"])
def test_runs_asks_for_no_output_a_run_never_wanted(runs: Path, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "all"
    x = copy(runs, folder)
    if case == "python":  # vaelab.train() without an evaluate: figures, no eval.json (here as in-process run_cli)
        (x / "eval.json").unlink()
    elif case == "figures=False":  # vaelab.train(figures=False): neither figures nor eval.json
        for name in ("reconstructions.png", "samples.png", "curves.png", "eval.json"):
            (x / name).unlink()
    elif case == "eval_k=0":  # vaelab train --eval-k 0: no eval.json
        trained_by(x, CLI_ARGV)
        doc = json.loads((x / "config.json").read_text())
        doc["config"]["eval_k"] = 0
        (x / "config.json").write_text(json.dumps(doc))
        (x / "eval.json").unlink()
    elif case == "sweep":  # a sweep's trial: figures, no eval.json
        trained_by(x, ["/usr/local/bin/vaelab", "sweep", "--trials", "2"])
        (x / "eval.json").unlink()
    else:  # interrupted in its training: --resume trains on, nothing of its end is due yet
        trained_by(x, CLI_ARGV)
        doc = json.loads((x / "config.json").read_text())
        doc["config"]["epochs"] = 3
        (x / "config.json").write_text(json.dumps(doc))
        for name in ("curves.png", "eval.json"):
            (x / name).unlink()
    info = {r.name: r for r in list_runs(folder)}["x"]
    assert (info.status, info.problem) == ("ok", None)


def test_a_run_of_the_python_api_without_figures_is_ok(data_file: Path, tmp_path: Path) -> None:
    model, _ = vaelab.train(data=str(data_file), out=str(tmp_path), name="py", hidden=[8], latent_dim=2, epochs=1,
                            batch_size=50, device="cpu", eval_k=5, threads=1, figures=False, progress=False,
                            log=lambda *a: None)
    assert not list((tmp_path / "py").glob("*.png")) and not (tmp_path / "py" / "eval.json").exists()
    info = {r.name: r for r in list_runs(tmp_path)}["py"]
    assert (info.status, info.problem) == ("ok", None)


@pytest.mark.parametrize("argv,cli", [
    (["/usr/local/bin/vaelab", "train", "--data", "x.npy"], True),  # the console script
    (["/site-packages/vaelab/__main__.py", "train"], True),  # python -m vaelab train, torchrun -m vaelab train
    (["C:\\Python\\Scripts\\vaelab.exe", "train"], True),
    (["/usr/local/bin/vaelab", "sweep", "--trials", "2"], False),
    (["/usr/local/bin/vaelab", "--quiet"], False),
    (["train.py", "train"], False),  # a script of the user's, calling vaelab.train
    (["-c"], False),
    ([], False),
])
def test_a_run_of_vaelab_train_is_known_by_its_manifest(runs: Path, tmp_path: Path, argv: list[str], cli: bool) -> None:
    from pathlib import PureWindowsPath

    from vaelab.compare import _trained_by_vaelab_train

    x = copy(runs, tmp_path)
    if argv and argv[0].startswith("C:"):  # (a Windows path read on this system: only its name counts)
        argv = [PureWindowsPath(argv[0]).name, *argv[1:]]
    trained_by(x, argv)
    assert _trained_by_vaelab_train(x) is cli
    doc = json.loads((x / "manifest.json").read_text())  # a resume's session decides: the last one
    doc["resumed"].append({"argv": ["/usr/local/bin/vaelab", "train", "--resume", str(x)]})
    (x / "manifest.json").write_text(json.dumps(doc))
    assert _trained_by_vaelab_train(x) is True
    doc["resumed"].append({"argv": ["notebook.py"]})
    (x / "manifest.json").write_text(json.dumps(doc))
    assert _trained_by_vaelab_train(x) is False
