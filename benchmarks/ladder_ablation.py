"""What makes the ladder VAE train (issue 12): each ingredient alone, the four-way combination
and the combination minus each ingredient, on ``mnist5k``.

Every row is ``vaelab train`` (60 epochs, ``--hidden 400``, patience off, one thread) and then
``vaelab eval RUN --estimator is --k 1000 --no-gap`` (test -log p(x) by encoder importance
sampling, nats per example ± SE over the 1,000 test digits), each in a fresh process. From the
evaluation's per-unit KL (closed form given the layers above, :mod:`vaelab.ladder`) the table
shows each layer's KL and its informative units (KL above 0.1 nats).

    python benchmarks/ladder_ablation.py --seeds 0 1                  # every row, seeds 0 and 1
    python benchmarks/ladder_ablation.py --rows ladder "+ residual"   # some rows
    python benchmarks/ladder_ablation.py --table                      # the table of what has run

Results go to ``--out`` (default ``/tmp/vaelab-ladder-ablation``): a run folder per row and
seed, and ``results.jsonl`` (one line per finished row and seed; a row already there is not run
again). Long: about two minutes per row and seed on one core. Run it under ``nice`` on a
shared machine; timings are not part of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

LADDER = ["--latent-dims", "20,10"]
FREE_BITS = ["--free-bits", "0.25"]
# the ingredients, each as CLI flags added to the plain ladder
INGREDIENTS: dict[str, list[str]] = {
    "free bits 0.25": FREE_BITS,
    "residual": ["--ladder-inference", "residual"],
    "independent": ["--ladder-inference", "independent"],
    "tanh": ["--ladder-activation", "tanh"],
    "elu": ["--ladder-activation", "elu"],
    "layer norm": ["--ladder-norm", "layer"],
    "skip": ["--ladder-skip", "true"],
    "prior init": ["--ladder-init", "prior"],
}
# every ingredient that helped alone or promised to (the four-way combination the ablation takes apart)
COMBINATION: tuple[str, ...] = ("free bits 0.25", "residual", "skip", "prior init")

# free bits with each other inference parameterisation (with independent: the best found, README ladder section)
PAIRS: tuple[tuple[str, ...], ...] = (("free bits 0.25", "residual"), ("free bits 0.25", "independent"))


def _flags(names: tuple[str, ...]) -> list[str]:
    return [f for n in names for f in INGREDIENTS[n]]


def rows() -> dict[str, list[str]]:
    """Row name -> the flags of ``vaelab train`` besides the common ones."""
    out: dict[str, list[str]] = {"one layer": ["--latent-dim", "20"], "ladder": LADDER}
    out |= {f"+ {name}": LADDER + flags for name, flags in INGREDIENTS.items()}
    out["all four: " + " + ".join(COMBINATION)] = LADDER + _flags(COMBINATION)
    out |= {f"all four - {name}": LADDER + _flags(tuple(n for n in COMBINATION if n != name)) for name in COMBINATION}
    out |= {"+ " + " + ".join(pair): LADDER + _flags(pair) for pair in PAIRS}
    out["ladder, tanh 200-200"] = LADDER + ["--ladder-activation", "tanh", "--hidden", "200,200"]
    out["free bits 0.25, tanh 200-200"] = LADDER + FREE_BITS + ["--ladder-activation", "tanh", "--hidden", "200,200"]
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_row(name: str, flags: list[str], seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train and evaluate one row at one seed; the table's numbers for it."""
    run = f"{_slug(name)}-s{seed}"
    common = ["--data", "mnist5k", "--epochs", str(args.epochs), "--patience", "0", "--threads", "1",
              "--seed", str(seed), "--eval-k", "0", "--quiet", "--out", str(out), "--name", run]
    if "--hidden" not in flags:
        common += ["--hidden", "400"]
    if (out / run).exists():  # a row stopped before its result was written: start it afresh
        shutil.rmtree(out / run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    vaelab = [sys.executable, "-m", "vaelab"]
    subprocess.run([*vaelab, "train", *common, *flags], check=True, env=env, stdout=subprocess.DEVNULL)
    ev = subprocess.run([*vaelab, "eval", str(out / run), "--estimator", "is", "--k", str(args.k), "--no-gap",
                         "--json"], check=True, env=env, capture_output=True, text=True)
    result = json.loads(ev.stdout)
    kl = result["latents"]["kl_per_dim"]  # [D], nats per example, the layers' units bottom first
    dims = result["latents"].get("layers") or [len(kl)]
    layers, start = [], 0
    for d in dims:
        part = kl[start:start + d]
        layers.append({"units": d, "kl": sum(part), "informative": sum(k > 0.1 for k in part)})
        start += d
    return {"row": name, "seed": seed, "flags": flags, "nll": result["nll"], "nll_se": result["log_px_stderr"],
            "elbo": result["elbo"], "kl": result["kl"], "layers": layers}


def table(results: list[dict[str, Any]], order: list[str]) -> str:
    """The markdown table: per row, -log p(x) ± SE per seed, their mean, and KL (informative
    units) per layer for each seed."""
    lines = ["| model | -log p(x) ± SE, per seed | mean | KL z1 / z2 (informative units), per seed |",
             "|---|---|---|---|"]
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    for name in [n for n in order if n in by_row] + sorted(set(by_row) - set(order)):
        rs = sorted(by_row[name], key=lambda r: r["seed"])
        nll = ", ".join(f"{r['nll']:.2f} ± {r['nll_se']:.2f}" for r in rs)
        mean = sum(r["nll"] for r in rs) / len(rs)
        kls = "; ".join(" / ".join(f"{layer['kl']:.1f} ({layer['informative']})" for layer in r["layers"]) for r in rs)
        lines.append(f"| {name} | {nll} | {mean:.2f} | {kls} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rows", nargs="+", default=None, help="row names (default: all)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/vaelab-ladder-ablation")
    ap.add_argument("--table", action="store_true", help="print the table of the results so far and stop")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.jsonl"
    results = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    every = rows()
    if not args.table:
        unknown = [n for n in args.rows or [] if n not in every]
        if unknown:
            raise SystemExit(f"unknown row(s) {unknown}; rows: {list(every)}")
        for seed in args.seeds:
            for name in args.rows or list(every):
                if any(r["row"] == name and r["seed"] == seed and r["flags"] == every[name] for r in results):
                    continue
                result = run_row(name, every[name], seed, args, out)
                results.append(result)
                with store.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)
    print(table(results, list(every)))


if __name__ == "__main__":
    main()
