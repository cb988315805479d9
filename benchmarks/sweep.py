"""A sweep of 20 trials on mnist5k by two worker processes sharing one SQLite study, one of them
killed mid-way (``kill -9``) and started again: how many trials finished, whether any was lost
or ran twice, and the best trial's test -log p(x) against the default settings' with the same
epoch budget (README, "Comparing runs and sweeping settings").

    python benchmarks/sweep.py                       # ~12 minutes on 2 cores (one thread per worker)
    python benchmarks/sweep.py --trials 6 --epochs 2 --out /tmp/quick   # a quick look

What it does:

1. starts two ``vaelab sweep --trials N`` processes on one study in ``OUT/sweep.db``
   (``--threads 1`` each; the space: lr, latent dimension, beta, hidden widths);
2. once a third of the trials have finished, kills worker B with SIGKILL while it is in the
   middle of a trial (at least one epoch of it done), and starts B again at once;
3. waits for both; reads the study back: finished (complete + pruned) trials, failed ones, the
   retries (``retry_of``) and whether every killed trial's parameters ran again, trial numbers
   and run folders each used once;
4. trains the default settings (``vaelab train`` defaults, same ``--epochs``), evaluates it and
   the best trial on the same test set (encoder IS, K = 1000, seed 0, per example) and compares
   them with ``vaelab.compare`` (paired difference of -log p(x) and its standard error).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch

import vaelab
from vaelab.compare import compare
from vaelab.runs import write_eval

SPACE = """\
[lr]
low = 1e-4
high = 1e-2
log = true

[latent_dim]
low = 5
high = 50

[beta]
low = 0.5
high = 1.5

[hidden]
choices = [[200], [400], [200, 200]]
"""


def worker(args: argparse.Namespace, space: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vaelab", "sweep", "--trials", str(args.trials), "--space", str(space),
           "--study", args.study, "--storage", f"sqlite:///{args.out / 'sweep.db'}", "--out", str(args.out / "runs"),
           "--heartbeat", str(args.heartbeat), "--report", "",
           "--", "--data", args.data, "--epochs", str(args.epochs), "--threads", "1", "--eval-k", "0",
           "--device", "cpu"]
    log = open(args.out / f"worker-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def trials(args: argparse.Namespace) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=f"sqlite:///{args.out / 'sweep.db'}")
    return study.get_trials(deepcopy=False)


def epochs_done(trial: optuna.trial.FrozenTrial) -> int:
    return len(trial.intermediate_values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--study", default="bench")
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=Path("/tmp/vaelab-sweep-benchmark"))
    p.add_argument("--k", type=int, default=1000, help="importance samples of the test evaluation")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; give a new --out")
    args.out.mkdir(parents=True, exist_ok=True)
    space = args.out / "space.toml"
    space.write_text(SPACE)

    t0 = time.perf_counter()
    a = worker(args, space)
    time.sleep(2.0)  # the first worker makes the database's tables
    b = worker(args, space)
    killed = None
    while killed is None:  # kill B in the middle of one of its trials, once a third of the study is done
        time.sleep(0.5)
        if b.poll() is not None:
            sys.exit("worker B ended before it could be killed; use more --trials or --epochs")
        try:
            ts = trials(args)
        except Exception:  # the study is not made yet
            continue
        finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in ts)
        mine = [t for t in ts if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{b.pid}")]
        if finished >= args.trials // 3 and mine and epochs_done(mine[0]) >= 1:
            b.send_signal(signal.SIGKILL)
            b.wait()
            killed = {"trial": mine[0].number, "epochs_done": epochs_done(mine[0]), "finished_before": finished,
                      "at_seconds": round(time.perf_counter() - t0, 1)}
            print(f"killed worker B in trial {killed['trial']} (epoch {killed['epochs_done']} done), "
                  f"{finished} trials finished; starting it again", flush=True)
    b2 = worker(args, space)
    codes = [a.wait(), b2.wait()]
    sweep_seconds = time.perf_counter() - t0
    ts = trials(args)
    states = {s: sum(t.state.name == s for t in ts) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    failed = [t for t in ts if t.state.name == "FAIL"]
    retried = {t.user_attrs["retry_of"]: t for t in ts if "retry_of" in t.user_attrs}
    lost = [t.number for t in failed if t.number not in retried or retried[t.number].params != t.params
            or retried[t.number].state.name not in ("COMPLETE", "PRUNED")]
    numbers = [t.number for t in ts]
    folders = [t.user_attrs.get("run") for t in ts]
    complete = [t for t in ts if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    print(f"sweep: {sweep_seconds:.0f} s, worker exit codes {codes}, states {states}", flush=True)

    # the default settings, same epochs; both evaluated the same way on the same test set
    t1 = time.perf_counter()
    default, _ = vaelab.train(data=args.data, epochs=args.epochs, threads=1, device="cpu", eval_k=0,
                             out=str(args.out / "runs"), name="default", progress=False, log=lambda m: None)
    default_seconds = time.perf_counter() - t1
    best_run = Path(best.user_attrs["run"])
    for model in (vaelab.load(best_run), default):
        ev = model.evaluate(k=args.k, estimator="is", gap_examples=0, seed=0)
        write_eval(model.run_dir, ev.summary(data=f"{args.data} (test split)", per_example=True).to_dict())
    comp = compare([args.out / "runs" / "default", best_run])
    (pair,) = comp.pairs
    figures = {r.name: r.evaluation for r in comp.runs}
    result = {
        "command": " ".join(["python", *sys.argv]),
        "trials_asked": args.trials, "epochs": args.epochs, "data": args.data,
        "sweep_seconds": round(sweep_seconds, 1), "worker_exit_codes": codes, "killed": killed,
        "states": states, "finished": states["COMPLETE"] + states["PRUNED"], "trial_numbers_unique": len(set(numbers)) == len(numbers),
        "run_folders_unique": len(set(folders)) == len(folders), "failed": [t.number for t in failed],
        "retries": {str(k): v.number for k, v in retried.items()}, "lost": lost,
        "best": {"trial": best.number, "params": best.params, "val_elbo": best.value, "run": str(best_run),
                 "test_nll": figures[best_run.name].nll, "test_nll_stderr": figures[best_run.name].log_px_stderr},
        "default": {"val_elbo": max(m["val_elbo"] for m in vaelab.runs.read_metrics(default.run_dir)),
                    "test_nll": figures["default"].nll, "test_nll_stderr": figures["default"].log_px_stderr,
                    "seconds": round(default_seconds, 1)},
        "paired_difference_best_minus_default": {"nats": pair.difference, "stderr": pair.stderr,
                                                 "unpaired_stderr": pair.unpaired_stderr, "n": pair.n,
                                                 "source": pair.source},
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
