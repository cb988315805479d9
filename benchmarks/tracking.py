"""Overhead of the experiment trackers: ``vaelab train`` with no logger, ``--log tensorboard``
and ``--log mlflow``, the same run each time, round-robin.

Each run is one ``vaelab train`` process (the command a user types, from interpreter start to
exit: imports, training, figures, the test evaluation and the loggers' end-of-run work);
its wall time is measured here, around the child process, and its CPU time (user + system,
``getrusage`` of the children), which a machine shared with other work disturbs less. The three variants alternate in
every round (the order rotating from round to round) so that a machine shared with other
work slows them alike. MLflow logs to a real ``mlflow server`` with a SQLite backend store,
started by this script on a free port before the first run (its start is not timed) and
stopped at the end. Overhead = (median with - median without) / median without.

Run::

    python benchmarks/tracking.py                        # the default run (mnist5k, 100 epochs), 3 rounds
    python benchmarks/tracking.py --rounds 2 --json tracking.json
    python benchmarks/tracking.py -- --data digits --epochs 5   # a short run (smoke test)

Everything after ``--`` is passed to ``vaelab train``; ``--threads 1`` is added unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            return proc, uri
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mlflow server did not start; see " + str(root / "server.log"))
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server this script started, and its workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_once(args: list[str], out: Path, name: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vaelab", "train", *args, "--quiet", "--out", str(out), "--name", name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": wall, "cpu_s": cpu, "epochs": len(metrics), "epoch_seconds": sum(m["seconds"] for m in metrics)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("train_args", nargs="*", help="after --: options of vaelab train")
    ns = parser.parse_args()
    train_args = list(ns.train_args)
    if "--threads" not in train_args:
        train_args += ["--threads", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "server").mkdir()
        server, uri = start_server(root / "server")
        variants = {"none": [], "tensorboard": ["--log", "tensorboard"], "mlflow": ["--log", "mlflow", "--mlflow-uri", uri]}
        names = list(variants)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
        try:
            for r in range(ns.rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for v in order:
                    res = run_once(train_args + variants[v], root / "runs", f"{v}-{r}")
                    results[v].append(res)
                    print(f"round {r + 1}: {v:12s} {res['wall_s']:8.1f} s wall, {res['cpu_s']:8.1f} s CPU "
                          f"({res['epochs']} epochs)", flush=True)
        finally:
            stop_server(server)
    base = statistics.median(x["wall_s"] for x in results["none"])
    base_cpu = statistics.median(x["cpu_s"] for x in results["none"])
    print(f"\nvaelab train {' '.join(train_args)}   ({ns.rounds} rounds, round-robin; medians per run)")
    print("| logger | wall time (s) | overhead (wall) | each run, wall (s) | CPU time (s) | overhead (CPU) |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for v in names:
        med = statistics.median(x["wall_s"] for x in results[v])
        med_cpu = statistics.median(x["cpu_s"] for x in results[v])
        over, over_cpu = 100 * (med - base) / base, 100 * (med_cpu - base_cpu) / base_cpu
        each = ", ".join(f"{x['wall_s']:.1f}" for x in results[v])
        show = (lambda o: "–" if v == "none" else f"{o:+.1f} %")
        print(f"| {v} | {med:.1f} | {show(over)} | {each} | {med_cpu:.1f} | {show(over_cpu)} |")
        summary[v] = {"median_wall_s": med, "overhead_percent": over, "median_cpu_s": med_cpu,
                      "cpu_overhead_percent": over_cpu, "runs": results[v]}
    if ns.json is not None:
        ns.json.write_text(json.dumps({"train_args": train_args, "rounds": ns.rounds, "results": summary}, indent=2))


if __name__ == "__main__":
    main()
