"""The ladder VAE against one stochastic layer of equal width on Fashion-MNIST (issue 12).

Models (MLP, hidden 400, Bernoulli likelihood on dynamically binarized images, Adam 1e-3,
batch 128, no early stopping so that every run gets the same number of epochs; the weights
kept are those of the best validation ELBO; one CPU thread):

    one       784-400-20, one stochastic layer                       (--latent-dim 20)
    ladder    the ladder VAE, layers 20 (bottom) and 10 (top)         (--latent-dims 20,10 --free-bits 0.25)
    one-fb    one layer with the ladder's free bits                   (--free-bits 0.25)

``--ladder-flags`` replaces the ladder's flags (e.g. with the best ingredients found on
mnist5k). Each (model, seed) is one run folder ``OUT/<model>-<seed>``, trained with
``vaelab train`` and tested with the evaluation of ``vaelab eval RUN --estimator is --k K
--no-gap --per-example`` in its Python form (``vaelab.load(RUN).evaluate(x=...)``, cached in
``RUN/eval-study.json``): -log p(x) by importance sampling from the encoder on the 10,000 test
images, or on the first ``--test-n`` of them (binarized once with a fixed seed, so every run
sees the same test examples). A folder that exists with fewer epochs is continued with
``--resume`` (exactly as an uninterrupted run), so the budget can be raised in steps and an
interrupted study picks up where it stopped.

Reported per run: test -log p(x) ± its standard error over examples, the test ELBO, KL per
stochastic layer and informative units per layer (KL above 0.1 nats, from ``vaelab eval``),
and the convergence of the validation ELBO: its best value and how much the best value rose
over the last 20 % of the epochs,

    Delta_20 = max_{e <= E} ELBO_val(e) - max_{e <= 0.8 E} ELBO_val(e)   (nats).

Paired differences, model minus ``one`` (negative: the model is better), on the same test
images: per seed, the mean of the per-example differences d_i = -log p_m(x_i) + log p_1(x_i)
± sd(d) / sqrt(N); over seeds, the mean of the per-seed means ± their sd / sqrt(S) (the
seed-to-seed spread, which is what decides whether one model beats the other; S - 1 degrees
of freedom), beside the example-level SE of the seed-averaged differences.

Also reported, a smoother convergence figure: the rise of the mean validation ELBO of the last
10 % of the epochs over the 10 % before (a single lucky epoch moves the maximum, not the mean).
With ``--ais-steps T`` every run is also scored by AIS from the encoder (T steps, ``--ais-chains``
S chains of vaelab's HMC, seed 0) on the first ``--ais-n`` test images, cached in
``RUN/eval-ais.json``, and the same paired differences are printed: a stochastic lower bound
much tighter than encoder IS, whose estimate of log p(x) is biased low by an amount that may
differ between the models.

Run (progress on stderr, markdown tables on stdout and in ``--markdown``)::

    nice -n 10 python benchmarks/fashion_ladder.py --epochs 50 --seeds 0 1 2 --test-n 2000 \\
        --out runs/fashion --json fashion.json --markdown fashion.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS: dict[str, list[str]] = {
    "one": [],
    "ladder": ["--latent-dims", "20,10", "--free-bits", "0.25"],
    "one-fb": ["--free-bits", "0.25"],
}
SHARED = ["--data", "fashion-mnist", "--hidden", "400", "--latent-dim", "20", "--patience", "0", "--eval-k", "0",
          "--threads", "1", "--quiet"]
INFORMATIVE = 0.1  # nats: vaelab's informative-unit threshold (the eval's own list is used when present)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_cpu() -> float:
    """CPU seconds of finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def vaelab(*args: str) -> tuple[str, float, float]:
    """Run ``python -m vaelab ARGS`` on one thread; its stdout, CPU seconds and wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cpu0, wall0 = child_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vaelab", *args], env=env, capture_output=True, text=True)
    cpu, wall = child_cpu() - cpu0, time.perf_counter() - wall0
    if done.returncode != 0:
        raise SystemExit(f"vaelab {shlex.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout, cpu, wall


def metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_run(run: Path, model: str, seed: int, epochs: int, flags: list[str], log: dict[str, Any]) -> None:
    """Train ``run`` to ``epochs`` epochs: from scratch, or on from its last checkpoint."""
    done = len(metrics(run))
    if done >= epochs:
        return
    if run.exists():
        say(f"{run.name}: epochs {done} -> {epochs} (--resume)")
        args = ["train", "--resume", str(run), "--epochs", str(epochs), "--threads", "1", "--quiet"]
    else:
        say(f"{run.name}: training {epochs} epochs")
        args = ["train", *SHARED, *flags, "--epochs", str(epochs), "--seed", str(seed), "--out", str(run.parent),
                "--name", run.name]
    _, cpu, wall = vaelab(*args)
    log.setdefault(run.name, []).append({"epochs": [done, epochs], "cpu_s": cpu, "wall_s": wall})
    for name in ("eval.json", "eval-study.json"):  # an evaluation of fewer epochs is stale
        if (run / name).exists():
            (run / name).unlink()


def eval_run(run: Path, k: int, mi_samples: int, test_n: int | None) -> dict[str, Any]:
    """``vaelab eval RUN --estimator is --k K --no-gap --per-example`` in its Python form, on the
    first ``test_n`` test images (all when None); cached in RUN/eval-study.json."""
    import torch

    from vaelab.runs import load

    path = run / "eval-study.json"
    if path.exists():
        ev = json.loads(path.read_text())
        if ev.get("k") == k and ev.get("test_n_asked") == test_n and "per_example" in ev:
            return ev
        path.unlink()
    say(f"{run.name}: encoder IS, K = {k}, on {test_n or 'all'} test images")
    torch.set_num_threads(1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model = load(run)
    x, _ = model.test_set()
    x = x if test_n is None else x[:test_n]
    result = model.evaluate(x=x, estimator="is", k=k, gap_examples=0, mi_samples=mi_samples)
    ev = result.summary(data=f"fashion-mnist (first {x.shape[0]} test images)", per_example=True).to_dict()
    ev["eval_cpu_s"], ev["eval_wall_s"] = time.process_time() - cpu0, time.perf_counter() - wall0
    ev["test_n_asked"] = test_n
    path.write_text(json.dumps(ev))
    return ev


def ais_run(run: Path, steps: int, chains: int, n: int) -> dict[str, Any]:
    """AIS from the encoder (``vaelab eval --estimator ais --steps T --chains S`` in its Python form,
    seed 0) on the first ``n`` test images; cached in RUN/eval-ais.json."""
    import torch

    from vaelab.evaluation.ais import ais
    from vaelab.runs import load

    path = run / "eval-ais.json"
    if path.exists():
        ev = json.loads(path.read_text())
        if (ev.get("steps"), ev.get("chains"), ev.get("n")) == (steps, chains, n):
            return ev
        path.unlink()
    say(f"{run.name}: AIS, T = {steps}, S = {chains}, on the first {n} test images")
    torch.set_num_threads(1)
    cpu0 = time.process_time()
    model = load(run)
    x, _ = model.test_set()
    torch.manual_seed(0)
    r = ais(model.vae, x[:n], steps=steps, chains=chains)
    ev = {"steps": steps, "chains": chains, "n": int(min(n, x.shape[0])), "log_px": r.per_example.tolist(),
          "mean": r.mean, "stderr": r.stderr, "mc_se": float(r.mc_se.pow(2).sum().sqrt() / r.per_example.numel()),
          "acceptance": float(r.acceptance.mean()), "cpu_s": time.process_time() - cpu0}
    path.write_text(json.dumps(ev))
    return ev


def ais_table(runs: dict[tuple[str, int], dict[str, Any]], models: list[str], steps: int, chains: int) -> str:
    """-log p(x) by AIS per run, and each model minus one layer paired over the same images."""
    rows = [{"model": m, "seed": s, "log_px": ev["log_px"]} for (m, s), ev in runs.items()]
    lines = [f"| model | seed | test -log p(x) (AIS, T={steps}, S={chains}) | Monte-Carlo SE | HMC acceptance |",
             "|---|---:|---:|---:|---:|"]
    for (m, s), ev in runs.items():
        lines.append(f"| {m} | {s} | {-ev['mean']:.2f} ± {ev['stderr']:.2f} | {ev['mc_se']:.3f} | {ev['acceptance']:.2f} |")
    for p in (paired(rows, m) for m in models if m != "one"):
        if p is not None:
            each = ", ".join(f"{x['mean']:+.2f} ± {x['stderr']:.2f}" for x in p["per_seed"])
            se = "" if p["seed_stderr"] is None else f" ± {p['seed_stderr']:.2f}"
            lines.append(f"\n{p['model']} - one, AIS, paired over the images: {each}; mean {p['mean']:+.2f}{se} "
                         f"(± {p['example_stderr']:.2f} over images), better in {p['wins']} of {len(p['seeds'])} seeds")
    return "\n".join(lines)


def convergence(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best validation ELBO, its epoch, its rise over the last 20 % of the epochs, and the rise of the
    mean validation ELBO of the last 10 % of the epochs over the 10 % before."""
    val = np.array([r["val_elbo"] for r in rows], dtype=np.float64)
    n = len(val)
    head = max(1, int(math.floor(0.8 * n)))
    w = max(1, n // 10)  # the mean of the last 10 % of epochs against the 10 % before (smoother than a maximum)
    window = float(val[-w:].mean() - val[-2 * w : -w].mean()) if n >= 2 * w else float("nan")
    return {"epochs": n, "best_val_elbo": float(val.max()), "best_epoch": int(val.argmax()) + 1,
            "rise_last_20pct": float(val.max() - val[:head].max()), "from_epoch": head, "window_rise": window,
            "epoch_wall_s": float(sum(r.get("seconds", 0.0) for r in rows))}


def layers(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """KL (nats) and informative units per stochastic layer, bottom first."""
    lat = ev["latents"]
    kl = np.asarray(lat["kl_per_dim"], dtype=np.float64)
    sizes = lat.get("layers") or [len(kl)]
    informative = set(lat.get("informative_units", np.flatnonzero(kl > INFORMATIVE).tolist()))
    out, start = [], 0
    for size in sizes:
        units = range(start, start + size)
        out.append({"size": size, "kl": float(kl[start:start + size].sum()),
                    "informative": sum(1 for u in units if u in informative)})
        start += size
    return out


def summarise(run: Path, model: str, seed: int, ev: dict[str, Any], train_log: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": model, "seed": seed, "run": str(run), "nll": -ev["log_px"], "nll_stderr": ev["log_px_stderr"],
            "elbo": ev["elbo"], "kl": ev["kl"], "ess_median": ev.get("ess_median"),
            "khat_bad_share": ev.get("khat_bad_share"), "layers": layers(ev), **convergence(metrics(run)),
            "train_cpu_s_this_session": sum(t["cpu_s"] for t in train_log), "eval_cpu_s": ev.get("eval_cpu_s"),
            "log_px": ev["per_example"]["log_px"]}


def paired(rows: list[dict[str, Any]], model: str, base: str = "one") -> dict[str, Any] | None:
    """model - base in -log p(x): per seed (SE over examples) and over seeds."""
    by = {(r["model"], r["seed"]): r for r in rows}
    seeds = sorted(s for (m, s) in by if m == model and (base, s) in by)
    if not seeds:
        return None
    diffs = [np.asarray(by[(base, s)]["log_px"]) - np.asarray(by[(model, s)]["log_px"]) for s in seeds]  # [S][N]
    per_seed = [{"seed": s, "mean": float(d.mean()), "stderr": float(d.std(ddof=1) / math.sqrt(d.size))}
                for s, d in zip(seeds, diffs)]
    means = np.array([p["mean"] for p in per_seed])
    pooled = np.mean(diffs, axis=0)  # [N]: the seed-averaged difference per example
    return {"model": model, "base": base, "seeds": seeds, "per_seed": per_seed, "mean": float(means.mean()),
            "seed_stderr": float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else None,
            "example_stderr": float(pooled.std(ddof=1) / math.sqrt(pooled.size)),
            "wins": int((means < 0).sum())}


def tables(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], k: int) -> str:
    lines = [f"| model | seed | epochs | test -log p(x) (IS, K={k}) | test ELBO | KL per layer, nats (informative units) "
             "| best val ELBO (epoch) | val rise, last 20 % | mean val rise, last 10 % | train wall s |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        kl = " / ".join(f"{x['kl']:.1f} ({x['informative']} of {x['size']})" for x in r["layers"])
        lines.append(f"| {r['model']} | {r['seed']} | {r['epochs']} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} | "
                     f"{-r['elbo']:.2f} | {kl} | {r['best_val_elbo']:.2f} ({r['best_epoch']}) | "
                     f"{r['rise_last_20pct']:.2f} | {r.get('window_rise', float('nan')):.2f} | {r['epoch_wall_s']:.0f} |")
    if pairs:
        lines += ["", "| model - one | per seed (paired over test images) | mean over seeds ± SE over seeds "
                  "| ± SE over test images | seeds better |", "|---|---|---:|---:|---:|"]
        for p in pairs:
            each = ", ".join(f"{x['mean']:+.2f} ± {x['stderr']:.2f}" for x in p["per_seed"])
            se = "" if p["seed_stderr"] is None else f" ± {p['seed_stderr']:.2f}"
            lines.append(f"| {p['model']} | {each} | {p['mean']:+.2f}{se} | ± {p['example_stderr']:.2f} | "
                         f"{p['wins']} of {len(p['seeds'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fashion-ladder", help="folder of the run folders (kept; resumable)")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["one", "ladder"], choices=list(MODELS))
    ap.add_argument("--ladder-flags", default=None, help="replace the ladder's flags, e.g. '--latent-dims 20,10 "
                    "--free-bits 0.25 --warmup 10'")
    ap.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    ap.add_argument("--mi-samples", type=int, default=1000, help="vaelab eval --mi-samples (latent health)")
    ap.add_argument("--test-n", type=int, default=None, help="evaluate on the first N test images (default: all 10,000)")
    ap.add_argument("--train-only", action="store_true", help="train (or continue) the runs, evaluate nothing")
    ap.add_argument("--ais-steps", type=int, default=0, help="also score every run by AIS with T steps (0: no)")
    ap.add_argument("--ais-chains", type=int, default=4, help="AIS chains S per image")
    ap.add_argument("--ais-n", type=int, default=1000, help="AIS on the first N test images")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    flags = dict(MODELS)
    if args.ladder_flags is not None:
        flags["ladder"] = shlex.split(args.ladder_flags)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_log: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:  # seed by seed, so that an early stop leaves whole pairs
        for model in args.models:
            run = out / f"{model}-{seed}"
            train_run(run, model, seed, args.epochs, flags[model], train_log)
            if args.train_only:
                continue
            ev = eval_run(run, args.k, args.mi_samples, args.test_n)
            rows.append(summarise(run, model, seed, ev, train_log.get(run.name, [])))
            r = rows[-1]
            say(f"{run.name}: -log p(x) {r['nll']:.2f} ± {r['nll_stderr']:.2f}, KL per layer "
                + ", ".join(f"{x['kl']:.1f} ({x['informative']})" for x in r["layers"])
                + f", val ELBO rise over the last 20 %: {r['rise_last_20pct']:.2f}")
        if rows:
            pairs = [p for m in args.models if m != "one" for p in [paired(rows, m)] if p is not None]
            text = tables(rows, pairs, args.k)
            if args.markdown:
                Path(args.markdown).write_text(text + "\n")
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"epochs": args.epochs, "k": args.k, "flags": flags, "pairs": pairs, "train_log": train_log,
                     "rows": [{k: v for k, v in r.items() if k != "log_px"} for r in rows]}, indent=2))
    if rows:
        print(tables(rows, [p for m in args.models if m != "one" for p in [paired(rows, m)] if p is not None], args.k))
    if args.ais_steps > 0 and not args.train_only:
        runs = {(m, s): ais_run(out / f"{m}-{s}", args.ais_steps, args.ais_chains, args.ais_n)
                for s in args.seeds for m in args.models}
        text = ais_table(runs, args.models, args.ais_steps, args.ais_chains)
        print("\n" + text)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
