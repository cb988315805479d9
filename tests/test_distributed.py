"""Data-parallel training (two CPU processes, gloo) and the loop's speed options.

The data: 57 examples of 16 grey values (46 training rows after the splits), an MLP 16-8-2,
global batch 15, so each epoch has three batches of 15, split 8 + 7 between the two processes
(their losses weighted 16/15 and 14/15), and a last one of a single row, which leaves the
second process without rows (it scores one row with weight 0).

* ``torchrun --standalone --nproc_per_node 2 -m vaelab train ...``: the real entry point; the
  run folder is whole and written once, loads in one process, and resumes in one process.
* two processes from ``torch.multiprocessing.spawn`` (the same environment torchrun sets):
  the replicas end with identical weights, and the averaged gradient of the first step equals
  the gradient of the global batch's loss computed in this process with the same per-shard
  noise (float32 rounding: rtol 1e-5, atol 1e-6; an unweighted mean of the two shard means
  is off by up to 6% of the largest gradient and fails).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vaelab
import vaelab.runs as runs
from vaelab.build import build_model, build_vae
from vaelab.config import TrainConfig
from vaelab.data import load_data
from vaelab.errors import VaelabError
from vaelab.runs import objective_from, read_metrics
from vaelab.training.distributed import World
from vaelab.training.loop import SYNC_EVERY, epoch_data, fit, noise_seed

WORLD = 2
BATCH = 15


def quiet(*args: Any) -> None:
    pass


@pytest.fixture(scope="module")
def grey57(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "grey57.npy"
    rng = np.random.default_rng(0)
    centres = rng.random((3, 16))
    x = np.clip(centres[rng.integers(0, 3, 57)] + 0.1 * rng.normal(size=(57, 16)), 0, 1)
    np.save(path, x.astype(np.float32))
    assert len(load_data(str(path)).train) % BATCH == 1  # the last batch: one row for two processes
    return path


def tiny(data: Path, out: Path, name: str, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(data=str(data), hidden=[8], latent_dim=2, epochs=2, batch_size=BATCH,
                                    eval_k=0, patience=0, device="cpu", out=str(out), name=name)
    settings.update(changes)
    return TrainConfig.from_mapping(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This process's environment without any process-group variables."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"}
    return {k: v for k, v in os.environ.items() if k not in drop}


# --- sharding -----------------------------------------------------------------------------


def test_shards_cover_a_batch_once_in_order() -> None:
    for size in (1, 2, 3, 5):
        for rows in (0, 1, 2, 7, 16, 17):
            spans = [World(r, size).shard(rows) for r in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [hi - lo for lo, hi in spans]
            assert max(sizes) - min(sizes) <= 1


# --- torchrun, the real entry point -----------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run_that_loads_and_resumes_alone(grey57: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "vaelab", "train", "--data", str(grey57), "--hidden", "8", "--latent-dim", "2",
           "--epochs", "2", "--batch-size", str(BATCH), "--eval-k", "0", "--patience", "0",
           "--device", "cpu", "--out", str(tmp_path), "--name", "ddp", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 epochs (completed)") == 1, done.stdout  # rank 0 reports
    run = tmp_path / "ddp"
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "checkpoint.safetensors", "model.safetensors", "metrics.jsonl"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert all(math.isfinite(m["train_elbo"]) and math.isfinite(m["val_elbo"]) for m in read_metrics(run))
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["batch_size"] == BATCH  # the global batch, as given

    model = vaelab.load(run, device="cpu")  # one process, no process group
    assert model.encode(torch.rand(3, 16)).mean.shape == (3, 2)
    _, result = vaelab.train(resume=run, epochs=3, progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 3)
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]


# --- two spawned processes: identical replicas, the exact averaged gradient ------------------


def _worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    real_step = torch.optim.Adam.step
    first: list[bool] = []

    def step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        if not first:  # the averaged gradient of the first step, as this replica holds it
            first.append(True)
            grads = {f"p{i}": p.grad.detach().clone() for g in self.param_groups for i, p in enumerate(g["params"])}
            save_file(grads, f"{out}/grad{rank}.safetensors")
        return real_step(self, *args, **kwargs)

    torch.optim.Adam.step = step  # type: ignore[method-assign]
    real_fit = runs.fit

    def fit_and_keep(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        result = real_fit(model, *args, **kwargs)  # then this replica's live weights
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/final{rank}.safetensors")
        return result

    runs.fit = fit_and_keep  # type: ignore[assignment]
    runs.train(tiny(Path(data), Path(out), "spawned"), progress=False, figures=False, log=quiet)


@pytest.mark.slow
def test_spawned_replicas_stay_identical_and_average_the_global_gradient(grey57: Path, tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_worker, args=(free_port(), str(grey57), str(tmp_path)), nprocs=WORLD)
    finals = [load_file(tmp_path / f"final{r}.safetensors") for r in range(WORLD)]
    grads = [load_file(tmp_path / f"grad{r}.safetensors") for r in range(WORLD)]
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key
    for key in grads[0]:
        assert torch.equal(grads[0][key], grads[1][key]), key

    # the same first step in this process: shard by shard, each with its process's noise
    config = tiny(grey57, tmp_path, "unused")
    data = load_data(config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                     seed=config.seed)
    torch.manual_seed(config.seed)
    vae = build_model(config.model_spec(data.shape))
    objective = objective_from(config)
    x = epoch_data(data.train, config.seed, 1, binarize=True).x[:BATCH]  # the first global batch
    total = torch.zeros(())
    for rank in range(WORLD):
        lo, hi = World(rank, WORLD).shard(BATCH)
        torch.manual_seed(noise_seed(config.seed, 1, rank))
        loss, _ = objective.loss(vae, x[lo:hi], 0.0)
        total = total + loss * (hi - lo) / BATCH  # the global batch's mean loss
    total.backward()
    for i, p in enumerate(vae.parameters()):
        torch.testing.assert_close(grads[0][f"p{i}"], p.grad, rtol=1e-5, atol=1e-6)


# --- the loop's speed options, in one process ---------------------------------------------------


def test_bfloat16_is_refused_off_cuda(grey57: Path, tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match="CUDA"):
        vaelab.train(tiny(grey57, tmp_path, "bf16", precision="bfloat16"), progress=False, figures=False, log=quiet)


def test_config_speed_settings_convert_and_validate() -> None:
    assert TrainConfig.from_mapping({"compile": "true", "threads": "1"}).compile is True
    assert TrainConfig.from_mapping({"compile": False}).compile is False
    with pytest.raises(VaelabError, match="compile"):
        TrainConfig.from_mapping({"compile": "maybe"})
    with pytest.raises(VaelabError, match="threads"):
        TrainConfig(threads=-1)


def test_nan_in_the_middle_of_an_epoch_is_found_at_its_step(tmp_path: Path, adam_step_hook: Any) -> None:
    """The host reads the device every SYNC_EVERY steps; the message still names the exact step."""
    path = tmp_path / "many.npy"
    np.save(path, np.random.default_rng(0).random((500, 16)).astype(np.float32))
    steps = math.ceil(len(load_data(str(path)).train) / 8)
    assert steps > 2 * SYNC_EVERY

    def poison(n: int, optimizer: torch.optim.Optimizer) -> None:
        if n == steps + 3:  # epoch 2, step 3: NaN weights, so the loss of step 4 is NaN
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad.fill_(math.nan)

    adam_step_hook(poison)
    with pytest.raises(vaelab.runs.TrainingStopped, match=r"nan at epoch 2, step 4\b.*\(epoch 1\)"):
        vaelab.train(tiny(path, tmp_path, "nan", batch_size=8, epochs=3, nan_retries=0), progress=False, figures=False, log=quiet)
    meta = vaelab.training.checkpoint.read_metadata(tmp_path / "nan" / "checkpoint.safetensors")
    assert meta["state"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "nan" / "checkpoint.safetensors").values())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch
def test_compiled_training_gives_the_eager_numbers(grey57: Path, tmp_path: Path) -> None:
    """torch.compile changes how the forward pass runs, not what it computes: the same batches
    and noise give the same losses up to float rounding (1e-4 nats)."""
    records = []
    for compile in (False, True):
        data = load_data(str(grey57))
        torch.manual_seed(0)
        vae = build_vae(data.shape, latent_dim=2, hidden=[8])
        result = fit(vae, data, tmp_path / f"c{compile}", epochs=1, batch_size=23, binarize=True,
                     progress=False, compile=compile)  # 46 = 2 x 23 rows: one shape, one compilation
        records.append(result.metrics[0])
    eager, compiled = records
    for key in ("train_elbo", "train_reconstruction", "train_kl", "val_elbo"):
        assert compiled[key] == pytest.approx(eager[key], abs=1e-4), key


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch
def test_a_failing_compilation_is_one_clear_error(grey57: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No C++ compiler for inductor: a VaelabError that says what to do, nothing written after."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))  # nothing cached
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    torch._dynamo.reset()
    data = load_data(str(grey57))
    vae = build_vae(data.shape, latent_dim=2, hidden=[8])
    try:
        with pytest.raises(VaelabError, match=r"torch\.compile failed .*--compile false"):
            fit(vae, data, tmp_path / "run", epochs=1, batch_size=23, progress=False, compile=True)
    finally:
        torch._dynamo.reset()
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
