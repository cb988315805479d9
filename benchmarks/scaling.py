"""Scaling curves: epoch time and peak memory against training-set size, width and processes.

The classic VAE (MLP 784-H-20 with H = 400 unless scanned, Bernoulli likelihood, batch 128,
Adam, seed 0) is trained by ``vaelab.runs.train``, the function ``vaelab train`` calls (same
data loading, checks, run folder, checkpoints; the figures and the final log p(x) left out),
each point in a fresh subprocess so that its peak memory is its own. Three scans:

* ``size``: ``mnist5k`` (4,000 digits: 3,600 training rows), ``fashion-mnist`` (60,000:
  54,000 training rows) and a synthetic ``.npy`` of ``--big`` binary 28x28 images (uint8 0/1,
  Bernoulli draws of the Fashion-MNIST training images' grey levels, written once into
  ``--folder``; 1,000,000 rows: 810,000 training) loaded into memory, as ``--data file.npy``
  does, and, with ``--backed``, streamed from disk as ``--data file.npy --backed true`` does;
* ``width``: H in ``--widths`` (100, 200, 400, 800, 1600) on ``--width-data``;
* ``procs``: ``torchrun --standalone --nproc_per_node N`` for N in ``--procs`` (1, 2) on
  ``--procs-data``, the global batch 128 split across the processes, one thread each.

Times per epoch, of the epochs after the first (which pays for loading and warm-up):

* ``steps``: the loop's own wall time of the optimizer steps (``seconds`` in metrics.jsonl);
* ``all-in``: wall and CPU time (``time.process_time``) between the ends of two epochs:
  the epoch's binarization and shuffle, its steps, the validation ELBO and the checkpoint
  written. Under torchrun, rank 0's (the other rank does the same steps; it writes nothing).

Memory: the subprocess's resident high-water mark (``VmHWM`` of /proc/self/status; loading
included), summed over the ranks under torchrun, and the baseline of a process that only
imports torch and vaelab. Single-process points run with one thread (``--threads 1``).

On a shared machine, the points run round-robin within each of ``--rounds`` rounds (the start
rotated each round); each run gives the median of its timed epochs, and the tables show the
median and quartiles over rounds. The big set runs after the rounds, ``--big-rounds`` times, one
run at a time. The cost's growth is fitted as log t = a + b log n by least squares over the
runs (every round a point), with b's 95% interval (Student t) and the slope between each pair
of neighbouring points; the CPU time also as c0 + c1 n (a fixed part and a part per row or per
unit of width), and the peak memory as linear in the rows of the data set (width scan: in the
model's parameters), by least squares. The synthetic set loaded into memory needs about 11 GB
at its peak (the loader's, see the README); ``--big`` sets its size.

    nice -n 10 python benchmarks/scaling.py --backed --big-rounds 2 --json scaling.json  # ~1 h on a busy 2-core CPU
    python benchmarks/scaling.py --scans width --widths 100,400 --rounds 1 --width-data mnist5k
    python benchmarks/scaling.py --summarise scaling.json                               # the tables again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

LATENT, BATCH = 20, 128
SCANS = ("size", "width", "procs")
# 97.5% quantiles of Student's t, by degrees of freedom (beyond the last: the last, conservative)
_T975 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def peak_rss_mb() -> float:
    """This process image's peak resident memory in MB (``VmHWM``; else ``ru_maxrss``)."""
    return _status_mb("VmHWM")


def _status_mb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (from a table; a dof
    between two entries gets the smaller one's, wider, quantile)."""
    if dof < 1:
        return math.inf
    return _T975[max(d for d in _T975 if d <= dof)]


def power_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of log y = a + b log x.

    Returns ``b``, its standard error ``se`` (from the residuals, n - 2 degrees of freedom)
    and the 95% interval ``lo``, ``hi`` = b -/+ t_{0.975, n-2} se (infinite with two distinct
    x or fewer points than three).
    """
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if len(set(lx.tolist())) < 2:
        raise ValueError("a power fit needs at least two distinct x values")
    n = len(lx)
    sxx = float(((lx - lx.mean()) ** 2).sum())
    b = float(((lx - lx.mean()) * (ly - ly.mean())).sum() / sxx)
    a = float(ly.mean() - b * lx.mean())
    if n > 2:
        resid = ly - (a + b * lx)
        se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
        half = t975(n - 2) * se
    else:
        se = half = math.inf
    return {"a": a, "b": b, "se": se, "lo": b - half, "hi": b + half, "n": float(n)}


def write_binary_images(path: Path, rows: int, seed: int = 0) -> None:
    """A ``.npy`` of ``rows`` binary 28x28 images ``[N, 1, 28, 28]`` uint8 in {0, 1}: Bernoulli
    draws of the grey levels of Fashion-MNIST's training images, cycled, written in chunks into
    a memory map (renamed when complete)."""
    from vaelab.data import load_data

    grey = load_data("fashion-mnist", val_fraction=0.0).train.numpy().reshape(-1, 1, 28, 28)  # [60000, 1, 28, 28]
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(rows, 1, 28, 28))
    for a in range(0, rows, 20_000):
        b = min(a + 20_000, rows)
        src = grey[np.arange(a, b) % len(grey)]  # [B, 1, 28, 28]
        out[a:b] = (rng.random(src.shape, dtype=np.float32) < src).astype(np.uint8)
    out.flush()
    del out
    partial.rename(path)


def _worker(point: dict[str, Any], result: str) -> None:
    """Train one point in this fresh process (or this torchrun rank); write one JSON file."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    import torch  # noqa: F401  (imported before the baseline reading)

    from vaelab.config import TrainConfig
    from vaelab.runs import train

    rank = int(os.environ.get("RANK", "0"))
    if point.get("baseline"):
        Path(f"{result}.{rank}").write_text(json.dumps({"rank": rank, "peak_mb": peak_rss_mb()}))
        return
    marks: list[tuple[float, float, float]] = []  # per epoch: wall, CPU at its end; its steps' wall seconds
    config = TrainConfig.from_mapping(dict(
        data=point["data"], hidden=[point["hidden"]], latent_dim=LATENT, batch_size=BATCH, epochs=point["epochs"],
        threads=point["threads"], backed=point.get("backed", False), patience=0, eval_k=0, seed=0,
        out=point["out"], name="scaling"))
    model, _ = train(config, progress=False, figures=False, log=lambda *a: None,
                     on_epoch=lambda r: marks.append((time.perf_counter(), time.process_time(), r["seconds"])))
    data_info = json.loads((model.run_dir / "config.json").read_text())["data"]
    params = sum(p.numel() for p in model.vae.parameters())
    rss = _status_mb("VmRSS")  # before the high-water mark: read after, it could pass a mark read first
    Path(f"{result}.{rank}").write_text(json.dumps({
        "rank": rank, "peak_mb": peak_rss_mb(), "rss_mb": rss, "params": params,
        "n_train": data_info["n_train"], "n_val": data_info["n_val"], "n_test": data_info["n_test"],
        "wall_total": time.perf_counter() - wall0, "cpu_total": time.process_time() - cpu0,
        "marks": marks}))


def run_point(point: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run ``point`` in a fresh subprocess (under torchrun when ``procs`` is set); its row."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    try:
        spec = {**point, "out": str(work)}
        worker = [__file__, "--worker", json.dumps(spec), "--result", str(work / "result")]
        if point.get("procs"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(point["procs"]), *worker]
        else:
            cmd = [sys.executable, *worker]
        env = {**os.environ, "OMP_NUM_THREADS": str(point.get("threads") or 1)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{point['label']} failed:\n{done.stderr[-3000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(work.glob("result.*"))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = {**point, "peak_mb": sum(r["peak_mb"] for r in ranks), "ranks": len(ranks)}
    main = next(r for r in ranks if r["rank"] == 0)
    if point.get("baseline"):
        return row
    marks = main["marks"]
    timed = range(1, len(marks))  # the first epoch left out
    row.update(
        n_train=main["n_train"], n_val=main["n_val"], n_test=main["n_test"], params=main["params"], rss_mb=main["rss_mb"],
        steps_s=statistics.median(marks[e][2] for e in timed),
        wall_s=statistics.median(marks[e][0] - marks[e - 1][0] for e in timed),
        cpu_s=statistics.median(marks[e][1] - marks[e - 1][1] for e in timed),
        cpu_total_all_ranks=sum(r["cpu_total"] for r in ranks))
    return row


def plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The points of the rounds, and those of the big set (run after them, one at a time)."""
    common = dict(hidden=400, threads=1, epochs=args.epochs)
    rounds: list[dict[str, Any]] = []
    big: list[dict[str, Any]] = []
    scans = args.scans.split(",")
    if "size" in scans:
        rounds += [{**common, "scan": "size", "label": name, "data": name} for name in args.sizes.split(",")]
        if args.big:
            path = str(Path(args.folder) / f"binary-{args.big}.npy")
            big.append({**common, "scan": "size", "label": f"synthetic {args.big:,}", "data": path,
                        "epochs": args.big_epochs})
            if args.backed:
                big.append({**big[-1], "label": f"synthetic {args.big:,}, --backed", "backed": True})
    if "width" in scans:
        rounds += [{**common, "scan": "width", "label": f"H={h}", "data": args.width_data, "hidden": h}
                   for h in [int(w) for w in args.widths.split(",")]]
    if "procs" in scans:
        rounds += [{**common, "scan": "procs", "label": f"torchrun x{n}", "data": args.procs_data, "procs": n}
                   for n in [int(p) for p in args.procs.split(",")]]
    return rounds, big


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summarise(rows: list[dict[str, Any]], baseline_mb: float | None) -> str:
    """The README table (markdown) and the fitted exponents."""
    out = ["| scan | point | training rows | H | processes x threads | steps s/epoch | all-in s/epoch "
           "| all-in CPU s/epoch | peak RSS MB | runs |", "|---|---|---|---|---|---|---|---|---|---|"]
    labels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if not r.get("baseline"):
            labels.setdefault((r["scan"], r["label"]), []).append(r)
    fmt = lambda v: "{1:.2f} ({0:.2f}-{2:.2f})".format(*_quartiles(v))  # noqa: E731
    for (scan, label), rs in labels.items():
        r0 = rs[0]
        procs = f"{r0.get('procs') or 1} x {r0['threads']}"
        out.append(f"| {scan} | {label} | {r0['n_train']:,} | {r0['hidden']} | {procs} | "
                   f"{fmt([r['steps_s'] for r in rs])} | {fmt([r['wall_s'] for r in rs])} | "
                   f"{fmt([r['cpu_s'] for r in rs])} | {statistics.median(r['peak_mb'] for r in rs):,.0f} | {len(rs)} |")
    if baseline_mb is not None:
        out.append(f"\nbaseline (a process that imports torch and vaelab): {baseline_mb:.0f} MB")
    for scan, key, what in (("size", "n_train", "training rows"), ("width", "hidden", "width H")):
        rs = [r for r in rows if r.get("scan") == scan and not r.get("backed") and not r.get("baseline")]
        if len({r[key] for r in rs}) < 2:
            continue
        out.append(f"\nexponent b of t ~ ({what})^b, over {len(rs)} runs:")
        for metric in ("steps_s", "wall_s", "cpu_s"):
            f = power_fit([r[key] for r in rs], [r[metric] for r in rs])
            xs = sorted({r[key] for r in rs})
            med = {x: statistics.median(r[metric] for r in rs if r[key] == x) for x in xs}
            local = ", ".join(f"{a:,}->{b:,}: {math.log(med[b] / med[a]) / math.log(b / a):.3f}"
                              for a, b in zip(xs, xs[1:]))
            out.append(f"  {metric:8s} b = {f['b']:.3f} (95%: {f['lo']:.3f} to {f['hi']:.3f}); between medians: {local}")
        c1, c0 = np.polyfit([r[key] for r in rs], [r["cpu_s"] for r in rs], 1)
        out.append(f"  all-in CPU s/epoch = {c0:.3g} + {c1:.3g} x {what} (linear least squares)")
        size = lambda r: r["n_train"] + r["n_val"] + r["n_test"] if scan == "size" else r["params"]  # noqa: E731
        slope = np.polyfit([size(r) for r in rs], [r["peak_mb"] for r in rs], 1)[0] * 2**20
        unit = "row of the data set (train + validation + test)" if scan == "size" else "model parameter"
        out.append(f"  peak memory grows by {slope:,.1f} bytes per {unit} (linear least squares)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", default=",".join(SCANS), help="which of size, width, procs (comma-separated)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    parser.add_argument("--sizes", default="mnist5k,fashion-mnist", help="built-in sets of the size scan")
    parser.add_argument("--big", type=int, default=1_000_000, help="rows of the synthetic binary set (0: none)")
    parser.add_argument("--big-epochs", type=int, default=2)
    parser.add_argument("--big-rounds", type=int, default=1)
    parser.add_argument("--backed", action="store_true", help="also train the synthetic set from disk (--backed)")
    parser.add_argument("--widths", default="100,200,400,800,1600")
    parser.add_argument("--width-data", default="fashion-mnist")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--procs-data", default="fashion-mnist")
    parser.add_argument("--folder", default=None, help="where the synthetic set is written (kept); default: a temporary one")
    parser.add_argument("--json", default=None, help="also write every run's row to this JSON file")
    parser.add_argument("--summarise", default=None, help="only print the tables of a --json file written before")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker), args.result)
        return
    if args.summarise:
        rows = json.loads(Path(args.summarise).read_text())
        print(summarise(rows, next((r["peak_mb"] for r in rows if r.get("baseline")), None)))
        return
    temporary = args.folder is None
    args.folder = args.folder or tempfile.mkdtemp(prefix="vaelab-scaling-")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    rounds, big = plan(args)
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "out"}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    print(f"MLP 784-H-{LATENT}, Bernoulli, batch {BATCH}; started {time.strftime('%H:%M:%S')}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    try:
        record({**run_point({"baseline": True, "label": "baseline"}, folder), "scan": "baseline"})
        for i in range(args.rounds):
            k = i % len(rounds) if rounds else 0
            for point in rounds[k:] + rounds[:k]:  # the start rotated each round
                record({**run_point(point, folder), "round": i, "load": os.getloadavg()[0]})
        for point in big:
            path = Path(point["data"])
            if not path.exists():
                write_binary_images(path, args.big)
            for i in range(args.big_rounds):
                record({**run_point(point, folder), "round": i, "load": os.getloadavg()[0]})
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    base = next((r["peak_mb"] for r in rows if r.get("baseline")), None)
    print("\n" + summarise(rows, base))


if __name__ == "__main__":
    main()
