"""Trusting the tool (issue 15): ordinary mistakes are refused in one line, and nothing is lost.

Each family of mistakes is one parametrized list of adversarial cases (the README counts
them next to the promise they test). Every case runs ``vaelab ...`` in-process and asserts the
refusal (exit status 2, exactly one line on stderr naming the culprit, no traceback) and that
nothing was written or changed: the SHA-256 of every file (hidden ones included) under the
watched folders is the same before and after, and no file or folder appeared.

Families here: 1 outputs that cannot be written, 2 an output that is an input, 3 two commands
on one run folder, 5 edited or damaged run folders, 6 options accepted then failing, 8 smaller
ones. Then the reproducibility manifest and ``vaelab verify``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vaelab
from vaelab import outputs
from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.manifest import data_checksums, git_commit, read_manifest
from vaelab.runs import read_metrics, train
from vaelab.training.checkpoint import read_tensors, tensor_digest
from vaelab.verify import verify

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"data": "digits", "hidden": [8], "latent_dim": 2, "epochs": 2, "eval_k": 0, "threads": 1, "device": "cpu",
        "batch_size": 256}


def quiet(*args: Any) -> None:
    pass


def snapshot(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folders`` (hidden ones too), and every folder, by path."""
    out: dict[str, str] = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def rewrite_safetensors(path: Path, edit_meta: Callable[[dict], None] | None = None,
                        edit_tensors: Callable[[dict], None] | None = None) -> None:
    """Rewrite a vaelab safetensors file with edited metadata or tensors and a *valid* checksum
    (an edit that the checksum cannot catch: the checks behind it must)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["vaelab"])
        ts = {k: f.get_tensor(k) for k in f.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(ts)
    raw = json.dumps(meta)
    save_file(ts, str(path), metadata={"vaelab": raw, "vaelab_sha256": tensor_digest(ts, raw)})


def flip_bit(path: Path, from_end: int = 3) -> None:
    """Flip the lowest bit of one byte near the end of ``path`` (inside the last tensor's data)."""
    raw = bytearray(path.read_bytes())
    raw[-from_end] ^= 1
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of two epochs on the 8x8 digits (tests copy it before touching it)."""
    out = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    _, result = train(out=str(out), name="base", progress=False, figures=False, log=quiet, **TINY)
    assert result.epochs_done == 2
    return out / "base"


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run in this test's folder."""
    dest = tmp_path / "run"
    shutil.copytree(base_run, dest)
    return dest


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    """Input files of 8x8 digits a model can encode: .npy, .npz, .csv and an image folder."""
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 17, size=(6, 64)).astype(np.float32) / 16
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.savez(folder / "x.npz", x=x)
    np.savetxt(folder / "x.csv", x, delimiter=",", fmt="%.4f")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray((x[i].reshape(8, 8) * 255).astype(np.uint8)).save(images / f"{i}.png")
    return {"npy": folder / "x.npy", "npz": folder / "x.npz", "csv": folder / "x.csv", "images": images}


def assert_refused_unchanged(refused: Callable[..., str], argv: list[Any], culprits: tuple[str, ...],
                             watch: list[Path]) -> str:
    before = snapshot(*watch)
    line = refused(argv, *culprits)
    assert snapshot(*watch) == before, "a refused command wrote or changed a file"
    return line


# --- 1. outputs that cannot be written -------------------------------------------------------


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``os.access`` say ``folder`` is read-only (the tests may run as root, who may write anywhere)."""
    real = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(outputs.os, "access", access)


def o_empty(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["sample", run, "-o", ""], ("-o", "empty")


def o_is_folder(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "s.png").mkdir()
    return ["sample", run, "-o", t / "s.png"], (str(t / "s.png"), "is a folder")


def o_npz_is_folder(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "e.npz").mkdir()
    return ["encode", run, files["npy"], "-o", t / "e.npz"], (str(t / "e.npz"), "is a folder")


def o_parent_is_file(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "afile").write_text("x")
    return ["sample", run, "-o", t / "afile" / "s.png"], (str(t / "afile"), "is a file")


def o_grandparent_is_file(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "afile").write_text("x")
    return ["reconstruct", run, files["npy"], "-o", t / "afile" / "sub" / "r.png"], (str(t / "afile"), "is a file")


def o_read_only_folder(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "ro").mkdir()
    _read_only(mp, t / "ro")
    return ["encode", run, files["npy"], "-o", t / "ro" / "e.npz"], (str(t / "ro"), "read-only")


def o_report_read_only(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "ro").mkdir()
    _read_only(mp, t / "ro")
    return ["report", run, "-o", t / "ro" / "r.html", "--k", "5"], (str(t / "ro"), "read-only")


def o_eval_json_is_folder(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (run / "eval.json").mkdir()
    return ["eval", run, "--k", "5"], (str(run / "eval.json"), "is a folder")


def o_eval_read_only_run(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    _read_only(mp, run)
    return ["eval", run, "--k", "5"], (str(run), "read-only")


def o_train_out_is_file(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "afile").write_text("x")
    return ["train", "--data", "digits", "--out", t / "afile", "--epochs", "1"], (str(t / "afile"), "is a file")


def o_train_out_read_only(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "ro").mkdir()
    _read_only(mp, t / "ro")
    return ["train", "--data", "digits", "--out", t / "ro" / "runs", "--epochs", "1"], (str(t / "ro"), "read-only")


def o_full_disk(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(outputs.os, "fsync", no_space)
    return ["encode", run, files["npy"], "-o", t / "e.npz"], (str(t / "e.npz"), "No space left", "disk space")


def o_full_disk_figure(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    def no_space(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(src))  # the temporary file's name

    mp.setattr(os, "replace", no_space)
    return ["sample", run, "-o", t / "s.png"], (str(t / "s.png"), "No space left")


OUTPUTS = [pytest.param(f, id=f.__name__) for f in (
    o_empty, o_is_folder, o_npz_is_folder, o_parent_is_file, o_grandparent_is_file, o_read_only_folder,
    o_report_read_only, o_eval_json_is_folder, o_eval_read_only_run, o_train_out_is_file, o_train_out_read_only,
    o_full_disk, o_full_disk_figure)]


@pytest.mark.parametrize("case", OUTPUTS)
def test_family1_outputs_that_cannot_be_written(case: Any, run: Path, data_files: dict, tmp_path: Path,
                                                refused: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, culprits = case(tmp_path, run, data_files, monkeypatch)
    assert_refused_unchanged(refused, argv, culprits, [tmp_path])


def test_family1_eval_prints_its_result_then_says_the_save_failed(run: Path, capsys: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", no_space)
    before = snapshot(run)
    with pytest.raises(SystemExit) as info:
        main(["eval", str(run), "--k", "5", "--gap-examples", "0"])
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert "ELBO" in out  # the result was shown
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(run / "eval.json") in err and "No space left" in err and "not saved" in err
    assert snapshot(run) == before


def test_family1_stale_temp_files_of_a_target_are_removed_by_its_next_write(tmp_path: Path) -> None:
    old = tmp_path / ".out.bin.abc123.tmp"
    fresh = tmp_path / ".out.bin.def456.tmp"
    other = tmp_path / ".other.bin.abc123.tmp"
    for p in (old, fresh, other):
        p.write_bytes(b"half")
    past = time.time() - 2 * outputs.STALE_SECONDS
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    outputs.atomic_write_bytes(tmp_path / "out.bin", b"whole")
    assert (tmp_path / "out.bin").read_bytes() == b"whole"
    assert not old.exists()  # an interrupted write of the same file, long ago
    assert fresh.exists() and other.exists()  # maybe being written now; another file's


# --- 2. an output that is an input -----------------------------------------------------------


def i_encode_over_npz(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["encode", run, files["npz"], "-o", files["npz"]], (str(files["npz"]), "is the input")


def i_encode_over_csv(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["encode", run, files["csv"], "-o", files["csv"]], (str(files["csv"]), "is the input")


def i_encode_through_symlink(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "link.csv").symlink_to(files["csv"])
    return ["encode", run, t / "link.csv", "-o", files["csv"]], (str(files["csv"]), str(t / "link.csv"))


def i_encode_hard_link(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    os.link(files["csv"], t / "same.csv")
    return ["encode", run, files["csv"], "-o", t / "same.csv"], (str(t / "same.csv"), str(files["csv"]))


def i_reconstruct_sibling_npy(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    png = files["npy"].with_suffix(".png")  # writes x.png and x.npy: the input
    return ["reconstruct", run, files["npy"], "-o", png], (str(files["npy"]), "is the input")


def i_reconstruct_into_image_folder(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["reconstruct", run, files["images"], "-o", files["images"] / "r.png"], (str(files["images"]), "inside")


def i_interpolate_sibling_npy(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return (["interpolate", run, "--data", files["npy"], "-o", files["npy"].with_suffix(".png")],
            (str(files["npy"]), "is the input"))


def i_report_over_config(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["report", run, "-o", run / "config.json", "--k", "5"], (str(run / "config.json"), "is the input")


def i_report_over_weights(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["report", run, "-o", run / "model.safetensors", "--k", "5"], (str(run / "model.safetensors"),)


def i_report_over_checkpoint(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["report", run, "-o", run / "checkpoint.safetensors", "--k", "5"], (str(run / "checkpoint.safetensors"),)


def i_report_over_metrics(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    return ["report", run, "-o", run / "metrics.jsonl", "--k", "5"], (str(run / "metrics.jsonl"),)


def i_sample_over_spec_via_symlink(t: Path, run: Path, files: dict, mp: Any) -> tuple[list, tuple]:
    (t / "s.npy").symlink_to(run / "model.json")  # sample writes s.png and s.npy
    return ["sample", run, "-o", t / "s.png"], (str(t / "s.npy"), str(run / "model.json"))


INPUTS = [pytest.param(f, id=f.__name__) for f in (
    i_encode_over_npz, i_encode_over_csv, i_encode_through_symlink, i_encode_hard_link, i_reconstruct_sibling_npy,
    i_reconstruct_into_image_folder, i_interpolate_sibling_npy, i_report_over_config, i_report_over_weights,
    i_report_over_checkpoint, i_report_over_metrics, i_sample_over_spec_via_symlink)]


@pytest.mark.parametrize("case", INPUTS)
def test_family2_an_output_that_is_an_input_is_refused(case: Any, run: Path, data_files: dict, tmp_path: Path,
                                                       refused: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, culprits = case(tmp_path, run, data_files, monkeypatch)
    assert_refused_unchanged(refused, argv, culprits, [tmp_path])


# --- 3. two commands on one run folder -------------------------------------------------------


def r_same_name(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    return ["train", "--data", "digits", "--out", t, "--name", "run", "--epochs", "1"], (str(t / "run"), "already holds")


def r_same_name_unfinished(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    (run / "checkpoint.safetensors").unlink()  # a run that has not finished an epoch yet
    return ["train", "--data", "digits", "--out", t, "--name", "run", "--hidden", "8"], (str(t / "run"), "already holds")


def r_name_parent(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    return ["train", "--data", "digits", "--out", t / "runs", "--name", "../escaped"], ("'../escaped'", "inside --out")


def r_name_dotdot(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    return ["train", "--data", "digits", "--out", t / "runs", "--name", ".."], ("'..'", "inside --out")


def r_name_absolute(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    return ["train", "--data", "digits", "--out", t / "runs", "--name", str(t / "abs")], (str(t / "abs"), "--out")


def r_name_nested(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    return ["train", "--data", "digits", "--out", t / "runs", "--name", "a/b"], ("'a/b'", "--out")


def r_name_hidden(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    return ["train", "--data", "digits", "--out", t / "runs", "--name", ".hidden"], ("'.hidden'",)


def r_resume_while_training(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    import fcntl

    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)  # another process is training it
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    mp.setattr(sys.modules[__name__], "_held_fd", fd, raising=False)
    return ["train", "--resume", run, "--epochs", "4"], (str(run / ".lock"), "in use")


def r_train_into_locked_empty_folder(t: Path, run: Path, mp: Any) -> tuple[list, tuple]:
    import fcntl

    (t / "fresh").mkdir()
    fd = os.open(t / "fresh" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    mp.setattr(sys.modules[__name__], "_held_fd", fd, raising=False)
    argv = ["train", "--out", t, "--name", "fresh", *(f"--{k.replace('_', '-')}={v if not isinstance(v, list) else v[0]}"
                                                     for k, v in TINY.items())]
    return argv, (str(t / "fresh"), "in use")


RUN_FOLDERS = [pytest.param(f, id=f.__name__) for f in (
    r_same_name, r_same_name_unfinished, r_name_parent, r_name_dotdot, r_name_absolute, r_name_nested, r_name_hidden,
    r_resume_while_training, r_train_into_locked_empty_folder)]


@pytest.mark.parametrize("case", RUN_FOLDERS)
def test_family3_two_commands_on_one_run_folder(case: Any, run: Path, tmp_path: Path, refused: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    argv, culprits = case(tmp_path, run, monkeypatch)
    try:
        assert_refused_unchanged(refused, argv, culprits, [tmp_path])
    finally:
        fd = getattr(sys.modules[__name__], "_held_fd", None)
        if fd is not None:
            os.close(fd)


def test_family3_default_names_in_the_same_second_make_two_runs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-120000")
    dirs = [train(out=str(tmp_path), progress=False, figures=False, log=quiet, **{**TINY, "epochs": 1})[0].run_dir
            for _ in range(2)]
    assert [d.name for d in dirs] == ["digits-20260101-120000", "digits-20260101-120000-2"]
    assert all((d / "checkpoint.safetensors").is_file() for d in dirs)


def test_family3_a_lock_dies_with_its_process(run: Path) -> None:
    """A training killed with -9 leaves its lock file, not its lock: the run resumes at once."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(VaelabError, match="in use"):
            train(resume=run, epochs=3, progress=False, figures=False, log=quiet)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    _, result = train(resume=run, epochs=3, progress=False, figures=False, log=quiet)
    assert result.epochs_done == 3


# --- 5. edited or damaged run folders --------------------------------------------------------


def _edit_config(run: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads((run / "config.json").read_text())
    edit(doc)
    (run / "config.json").write_text(json.dumps(doc))


def d_data_not_object(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d.__setitem__("data", "digits"))
    return ["sample", run, "-o", t / "s.png"], ("config.json", "'data' must be a JSON object")


def d_data_shape_nonsense(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d["data"].__setitem__("shape", [1, -8, "8"]))
    return ["sample", run, "-o", t / "s.png"], ("config.json", "data.shape")


def d_data_kind_nonsense(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d["data"].__setitem__("kind", "purple"))
    return ["encode", run, "digits", "-o", t / "e.npz"], ("config.json", "data.kind", "purple")


def d_data_binarized_string(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d["data"].__setitem__("binarized", "yes"))
    return ["eval", run, "--k", "5"], ("config.json", "data.binarized")


def d_data_unknown_key(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d["data"].__setitem__("colour", "blue"))
    return ["sample", run, "-o", t / "s.png"], ("config.json", "colour")


def d_config_wrong_type(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d["config"].__setitem__("lr", "fast"))
    return ["sample", run, "-o", t / "s.png"], ("config.json", "lr", "'fast'")


def d_config_unknown_key(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d["config"].__setitem__("learning_rate", 0.1))
    return ["sample", run, "-o", t / "s.png"], ("config.json", "learning_rate")


def d_config_unknown_section(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_config(run, lambda d: d.__setitem__("extra", {}))
    return ["sample", run, "-o", t / "s.png"], ("config.json", "extra")


def d_checkpoint_epoch_string(t: Path, run: Path) -> tuple[list, tuple]:
    rewrite_safetensors(run / "checkpoint.safetensors", lambda m: m["state"].__setitem__("epoch", "two"))
    return ["train", "--resume", run, "--epochs", "4"], ("checkpoint.safetensors", "state.epoch", "'two'")


def d_checkpoint_metrics_not_list(t: Path, run: Path) -> tuple[list, tuple]:
    rewrite_safetensors(run / "checkpoint.safetensors", lambda m: m["state"].__setitem__("metrics", {"a": 1}))
    return ["train", "--resume", run, "--epochs", "4"], ("checkpoint.safetensors", "state.metrics")


def d_checkpoint_lr_negative(t: Path, run: Path) -> tuple[list, tuple]:
    rewrite_safetensors(run / "checkpoint.safetensors",
                        lambda m: m["optimizer"]["param_groups"][0].__setitem__("lr", -1))
    return ["train", "--resume", run], ("checkpoint.safetensors", "lr")


def d_checkpoint_no_optimizer(t: Path, run: Path) -> tuple[list, tuple]:
    rewrite_safetensors(run / "checkpoint.safetensors", lambda m: m.pop("optimizer"))
    return ["train", "--resume", run, "--epochs", "4"], ("checkpoint.safetensors", "optimizer")


def d_weights_bit_flip(t: Path, run: Path) -> tuple[list, tuple]:
    flip_bit(run / "model.safetensors")
    return ["sample", run, "-o", t / "s.png"], (str(run / "model.safetensors"), "checksum", "damaged")


def d_checkpoint_bit_flip(t: Path, run: Path) -> tuple[list, tuple]:
    flip_bit(run / "checkpoint.safetensors")
    return ["train", "--resume", run, "--epochs", "4"], (str(run / "checkpoint.safetensors"), "damaged")


def d_checkpoint_header_bit_flip(t: Path, run: Path) -> tuple[list, tuple]:
    raw = bytearray((run / "checkpoint.safetensors").read_bytes())
    at = raw.index(b'epoch\\": 2') + len(b'epoch\\": ')  # the state's epoch, in the header's JSON string
    raw[at] ^= 1  # "2" -> "3": valid JSON, a different epoch
    (run / "checkpoint.safetensors").write_bytes(bytes(raw))
    return ["train", "--resume", run, "--epochs", "5"], (str(run / "checkpoint.safetensors"), "damaged")


def d_previous_checkpoint_bit_flip(t: Path, run: Path) -> tuple[list, tuple]:
    flip_bit(run / "checkpoint.previous.safetensors")
    return ["verify", run], (str(run / "checkpoint.previous.safetensors"), "damaged")


def d_spec_garbage(t: Path, run: Path) -> tuple[list, tuple]:
    (run / "model.json").write_text("{not json")
    return ["sample", run, "-o", t / "s.png"], (str(run / "model.json"),)


def _edit_spec(run: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads((run / "model.json").read_text())
    edit(doc)
    (run / "model.json").write_text(json.dumps(doc))


def d_spec_wrong_type(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_spec(run, lambda d: d.__setitem__("latent_dim", "two"))
    return ["sample", run, "-o", t / "s.png"], ("model.json", "latent_dim", "'two'")


def d_spec_unknown_key(t: Path, run: Path) -> tuple[list, tuple]:
    _edit_spec(run, lambda d: d.__setitem__("temperature", 2))
    return ["sample", run, "-o", t / "s.png"], ("model.json", "temperature")


def d_checkpoint_best_string(t: Path, run: Path) -> tuple[list, tuple]:
    rewrite_safetensors(run / "checkpoint.safetensors", lambda m: m["state"].__setitem__("best_val_elbo", "-40"))
    return ["train", "--resume", run, "--epochs", "4"], ("checkpoint.safetensors", "best_val_elbo")


DAMAGE = [pytest.param(f, id=f.__name__) for f in (
    d_spec_wrong_type, d_spec_unknown_key, d_checkpoint_best_string, d_data_not_object, d_data_shape_nonsense, d_data_kind_nonsense, d_data_binarized_string, d_data_unknown_key,
    d_config_wrong_type, d_config_unknown_key, d_config_unknown_section, d_checkpoint_epoch_string,
    d_checkpoint_metrics_not_list, d_checkpoint_lr_negative, d_checkpoint_no_optimizer, d_weights_bit_flip,
    d_checkpoint_bit_flip, d_checkpoint_header_bit_flip, d_previous_checkpoint_bit_flip, d_spec_garbage)]


@pytest.mark.parametrize("case", DAMAGE)
def test_family5_edited_or_damaged_run_folders(case: Any, run: Path, tmp_path: Path, refused: Any) -> None:
    argv, culprits = case(tmp_path, run)
    assert_refused_unchanged(refused, argv, culprits, [tmp_path])


def test_family5_metrics_truncated_last_line_is_tolerated_with_a_warning(run: Path) -> None:
    path = run / "metrics.jsonl"
    records = read_metrics(run)
    path.write_text(path.read_text() + '{"epoch": 3, "train_el')
    with pytest.warns(RuntimeWarning, match="metrics.jsonl.*last line \\(3\\) is truncated"):
        assert read_metrics(run) == records


def test_family5_metrics_garbage_inside_names_file_and_line(run: Path) -> None:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(VaelabError, match=f"{path}:2"):
        read_metrics(run)


def test_family5_old_runs_without_checksums_still_load() -> None:
    run = Path(__file__).parent / "data" / "run-0.1.0"
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        assert "vaelab_sha256" not in (f.metadata() or {})
    assert vaelab.load(run, device="cpu").latent_dim == 2


def test_family5_every_weights_file_carries_a_checksum_of_its_contents(run: Path) -> None:
    for name in ("model.safetensors", "checkpoint.safetensors", "checkpoint.previous.safetensors"):
        with safe_open(str(run / name), framework="pt") as f:
            meta = f.metadata()
            ts = {k: f.get_tensor(k) for k in f.keys()}
        assert meta["vaelab_sha256"] == tensor_digest(ts, meta["vaelab"])
        assert meta["vaelab_sha256"] != tensor_digest(ts, meta["vaelab"] + " ")


# --- 6. options that are accepted and then fail ----------------------------------------------

OPTIONS = [pytest.param(argv, culprits, id=name) for name, argv, culprits in (
    ("lr_inf", ["--lr", "inf"], ("lr", "inf")),
    ("lr_nan", ["--lr", "nan"], ("lr", "nan")),
    ("lr_zero", ["--lr", "0"], ("lr",)),
    ("beta_nan", ["--beta", "nan"], ("beta", "nan")),
    ("warmup_inf", ["--warmup", "inf"], ("warmup", "inf")),
    ("free_bits_nan", ["--free-bits", "nan"], ("free_bits",)),
    ("val_fraction_nan", ["--val-fraction", "nan"], ("val_fraction",)),
    ("val_fraction_one", ["--val-fraction", "1"], ("val_fraction",)),
    ("test_fraction_negative", ["--test-fraction", "-0.1"], ("test_fraction",)),
    ("alpha_inf", ["--alpha", "inf"], ("alpha",)),
    ("gaussian_scale_nan", ["--likelihood", "gaussian", "--gaussian-scale", "nan"], ("gaussian_scale",)),
    ("bfloat16_on_cpu", ["--precision", "bfloat16", "--device", "cpu"], ("bfloat16", "float32")),
    ("epochs_zero", ["--epochs", "0"], ("epochs",)),
)]


@pytest.mark.parametrize("argv, culprits", OPTIONS)
def test_family6_bad_options_are_refused_before_the_run_folder_exists(argv: list[str], culprits: tuple[str, ...],
                                                                      tmp_path: Path, refused: Any) -> None:
    out = tmp_path / "runs"
    assert_refused_unchanged(refused, ["train", "--data", "digits", "--out", out, "--name", "r", "--hidden", "8",
                                       *argv], culprits, [tmp_path])
    assert not out.exists()


def test_family6_val_fraction_zero_means_no_validation_and_the_last_epoch_is_the_model(tmp_path: Path) -> None:
    model, result = train(out=str(tmp_path), name="noval", progress=False, figures=False, log=quiet,
                          **{**TINY, "epochs": 3, "val_fraction": 0.0, "patience": 1})
    assert (result.stopped, result.epochs_done, result.best_epoch) == ("completed", 3, 3)  # no early stop
    assert result.best_val_elbo is None
    metrics = read_metrics(model.run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(m["val_elbo"] is None and np.isfinite(m["train_elbo"]) for m in metrics)
    best = tensors(model.run_dir / "model.safetensors")
    last = {k[len("model."):]: v for k, v in tensors(model.run_dir / "checkpoint.safetensors").items()
            if k.startswith("model.")}
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)


# --- 8. smaller ones -----------------------------------------------------------------------


def test_family8_resume_removes_stale_temp_files_of_interrupted_writes(run: Path) -> None:
    stale = [run / ".checkpoint.safetensors.x1y2.tmp", run / ".metrics.jsonl.k3.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    train(resume=run, epochs=3, progress=False, figures=False, log=quiet)
    assert not any(p.exists() for p in stale)
    assert not list(run.glob(".*.tmp"))


def test_family8_resume_with_a_bad_checkpoint_rewrites_nothing(run: Path, refused: Any) -> None:
    flip_bit(run / "checkpoint.safetensors")
    before = snapshot(run)
    refused(["train", "--resume", run, "--epochs", "9", "--threads", "1"], "checkpoint.safetensors", "damaged")
    assert snapshot(run) == before  # config.json too (a raised --epochs would be written to it)


def test_family8_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path: Path) -> None:
    rows = np.arange(12, dtype=np.float64).reshape(4, 3) / 11
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "bom_header.csv").write_bytes(b"\xef\xbb\xbfa,b,c\n" + text.encode())
    for name in ("bom.csv", "bom_header.csv"):
        d = vaelab.load_data(str(tmp_path / name), val_fraction=0.0, test_fraction=0.0)
        assert d.train.shape == (4, 3), name
        assert sorted(d.train[:, 0].tolist()) == pytest.approx(sorted(rows[:, 0].tolist()), abs=1e-6)


def test_family8_header_only_csv_is_one_error_without_numpy_warnings(tmp_path: Path, refused: Any) -> None:
    (tmp_path / "h.csv").write_text("a,b,c\n")
    with pytest.raises(VaelabError, match="header but no data rows"):
        vaelab.load_data(str(tmp_path / "h.csv"))  # warnings are errors in pytest: none was raised
    refused(["train", "--data", tmp_path / "h.csv", "--out", tmp_path / "runs"], "h.csv", "no data rows")
    assert not (tmp_path / "runs").exists()


def test_family8_safetensors_files_get_the_permissions_of_the_rest(run: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert modes["model.safetensors"] == modes["checkpoint.safetensors"] == modes["config.json"], modes
    umask = os.umask(0)
    os.umask(umask)
    assert modes["config.json"] == 0o666 & ~umask


# --- the reproducibility manifest and vaelab verify --------------------------------------


def test_manifest_records_versions_command_settings_data_and_determinism(base_run: Path) -> None:
    doc = read_manifest(base_run)
    assert doc is not None
    env = doc["environment"]
    assert env["python"] == sys.version.split()[0] and env["torch"] == torch.__version__
    from importlib import metadata

    for name in ("torch", "numpy", "safetensors", "click", "zuko"):
        assert env["packages"][name] == metadata.version(name)
    assert doc["argv"] == sys.argv and doc["cwd"] == os.getcwd()
    assert doc["seed"] == 0 and doc["settings"]["hidden"] == [8] and doc["settings"]["lr"] == 1e-3
    assert doc["device"] == "cpu" and doc["threads"] == 1
    assert doc["determinism"]["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    data = vaelab.load_data("digits", val_fraction=0.1, test_fraction=0.1, seed=0)
    assert doc["data"]["splits"] == data_checksums(data)
    assert doc["data"]["splits"]["train"]["examples"] == data.train.shape[0]
    other = vaelab.load_data("digits", val_fraction=0.1, test_fraction=0.1, seed=1)  # another split, same data
    assert data_checksums(other)["train"]["sha256"] != doc["data"]["splits"]["train"]["sha256"]
    head = (subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True) if shutil.which("git")
            else subprocess.CompletedProcess([], 1, "", ""))
    if head.returncode == 0:  # the tests run inside the project's repository (or a copy without .git)
        assert doc["git"]["commit"] == head.stdout.strip()
    else:
        assert "git" not in doc


def test_manifest_git_commit_is_absent_outside_a_repository(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None


def test_manifest_a_resume_adds_its_session(run: Path) -> None:
    train(resume=run, epochs=3, progress=False, figures=False, log=quiet)
    doc = read_manifest(run)
    assert doc is not None and len(doc["resumed"]) == 1
    assert doc["resumed"][0]["settings"]["epochs"] == 3
    assert doc["resumed"][0]["data_splits"] == doc["data"]["splits"]


def test_verify_an_intact_run_is_bit_identical(base_run: Path, capsys: Any) -> None:
    before = snapshot(base_run)
    result = verify(base_run)
    assert result.identical and result.epoch == 2 and result.compared > 0
    with pytest.raises(SystemExit) as info:
        main(["verify", str(base_run)])
    assert info.value.code in (0, None)
    assert capsys.readouterr().out.startswith("bit-identical")
    assert snapshot(base_run) == before  # verify only reads the run folder


def test_verify_a_run_of_one_epoch_retrains_it_from_the_seed(tmp_path: Path) -> None:
    model, _ = train(out=str(tmp_path), name="one", progress=False, figures=False, log=quiet, **{**TINY, "epochs": 1})
    result = verify(model.run_dir)
    assert result.identical and result.epoch == 1


def test_verify_names_a_tensor_changed_after_the_fact(run: Path, capsys: Any) -> None:
    keys = list(read_tensors(run / "checkpoint.safetensors"))
    name = next(k for k in keys if k.startswith("model.decoder"))

    def nudge(ts: dict[str, torch.Tensor]) -> None:
        ts[name] = ts[name].clone()
        ts[name].view(-1)[0] += 0.25

    rewrite_safetensors(run / "checkpoint.safetensors", edit_tensors=nudge)  # a valid file, other numbers
    result = verify(run)
    assert not result.identical
    assert result.first_difference == name
    assert result.max_difference == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(SystemExit) as info:
        main(["verify", str(run)])
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert name in out and "differs" in out
