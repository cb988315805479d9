"""Where ``vaelab eval`` spends its time, part by part, and what a change of settings buys.

Runs :func:`vaelab.evaluation.evaluate` on one trained run's test set (as ``vaelab eval RUN``
does) with two sets of evaluation settings, ``old`` (``--old``, default: today's defaults)
and ``new`` (``--new``, default: ``k_chunk=10``), alternating for ``--rounds`` rounds in one
process on one thread, and prints for each the CPU seconds (``time.process_time``) and wall
seconds of every part: the ELBO and its terms, encoder IS, AIS (``--estimator auto``), latent
health and the gap split, then the estimates of both side by side with their standard errors
(the same seed: every part is seeded separately, so a change of one part's settings moves only
that part's numbers). CPU time is the figure to read on a shared machine; medians over rounds.

    vaelab train --epochs 30 --threads 1 --name base      # the default mnist5k model
    python benchmarks/eval_speed.py runs/base --rounds 3
    python benchmarks/eval_speed.py runs/base --old k_chunk=50 --new k_chunk=10,gap_steps=150
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import vaelab
from vaelab.evaluation import EvalSettings, suite

PARTS = ("data_elbo", "log_likelihood", "ais", "latent_diagnostics", "inference_gaps")
NAMES = {"data_elbo": "ELBO and terms", "log_likelihood": "encoder IS", "ais": "AIS",
         "latent_diagnostics": "latent health", "inference_gaps": "gap split"}


def _changes(text: str) -> dict[str, Any]:
    """``"k_chunk=10,gap_steps=150"`` -> settings changes (numbers parsed, else strings)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        for kind in (int, float):
            try:
                out[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def timed_evaluation(model: Any, settings: EvalSettings) -> tuple[Any, dict[str, tuple[float, float]]]:
    """Evaluate the run's test set; (result, {part: (cpu s, wall s)}) with ``total`` among the parts."""
    spent: dict[str, list[float]] = {}
    originals = {name: getattr(suite, name) for name in PARTS}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cost = spent.setdefault(name, [0.0, 0.0])
                cost[0] += time.process_time() - cpu
                cost[1] += time.perf_counter() - wall
        return inner

    for name, fn in originals.items():
        setattr(suite, name, wrap(name, fn))
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        result = model.evaluate(settings)
        spent["total"] = [time.process_time() - cpu, time.perf_counter() - wall]
    finally:
        for name, fn in originals.items():
            setattr(suite, name, fn)
    return result, {k: (v[0], v[1]) for k, v in spent.items()}


def _estimates(result: Any) -> dict[str, tuple[float, float | None, float | None]]:
    """{quantity: (mean, stderr over examples, Monte-Carlo stderr)} of an evaluation."""
    s = result.summary()
    out: dict[str, tuple[float, float | None, float | None]] = {"ELBO": (s.elbo, s.elbo_stderr, None)}
    for name, ll in result.estimates.items():
        mc = float(ll.mc_se.double().pow(2).sum().sqrt() / ll.per_example.numel())
        out[f"log p(x), {name}"] = (ll.mean, ll.stderr, mc)
    if s.latents is not None:
        out["I(x;z)"] = (s.latents.mutual_information, s.latents.mutual_information_stderr, None)
        out["KL(q(z)||p(z))"] = (s.latents.marginal_kl, s.latents.marginal_kl_stderr, None)
    if s.gaps is not None:
        g = s.gaps
        for key in ("elbo_optimal", "approximation_gap", "amortization_gap"):
            out[key] = (getattr(g, key), getattr(g, f"{key}_stderr"), getattr(g, f"{key}_mc_stderr"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (vaelab train ... --name base)")
    parser.add_argument("--old", default="", help="settings changes of the old column, e.g. k_chunk=50")
    parser.add_argument("--new", default="k_chunk=10", help="settings changes of the new column")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = vaelab.load(args.run)
    base = EvalSettings(kl=model.config.kl)
    columns = {"old": base.replace(**_changes(args.old)), "new": base.replace(**_changes(args.new))}
    times: dict[str, dict[str, list[tuple[float, float]]]] = {c: {} for c in columns}
    results: dict[str, Any] = {}
    for r in range(args.rounds):
        for column, settings in (columns.items() if r % 2 == 0 else reversed(columns.items())):
            results[column], spent = timed_evaluation(model, settings)
            for part, cost in spent.items():
                times[column].setdefault(part, []).append(cost)
            print(f"round {r + 1}, {column}: {spent['total'][0]:.1f} s CPU, {spent['total'][1]:.1f} s wall", flush=True)

    print(f"\n{args.run}, one thread, medians over {args.rounds} rounds (CPU s / wall s)")
    print(f"  old: {args.old or 'the defaults'}\n  new: {args.new or 'the defaults'}")
    print(f"{'part':<16}{'old CPU':>10}{'new CPU':>10}{'ratio':>8}{'old wall':>10}{'new wall':>10}")
    for part in (*PARTS, "total"):
        if part not in times["old"] or part not in times["new"]:
            continue
        o = [statistics.median(c[i] for c in times["old"][part]) for i in (0, 1)]
        n = [statistics.median(c[i] for c in times["new"][part]) for i in (0, 1)]
        print(f"{NAMES.get(part, part):<16}{o[0]:>10.2f}{n[0]:>10.2f}{n[0] / max(o[0], 1e-9):>8.2f}{o[1]:>10.2f}{n[1]:>10.2f}")

    old, new = _estimates(results["old"]), _estimates(results["new"])
    print(f"\n{'estimate (nats)':<22}{'old':>10}{'new':>10}{'diff':>8}{'SE over x':>11}{'MC SE':>8}")
    for key, (value, se, mc) in old.items():
        if key not in new:
            continue
        other = new[key][0]
        se_text = "" if se is None else f"{se:.3f}"
        mc_text = "" if mc is None else f"{mc:.3f}"
        print(f"{key:<22}{value:>10.3f}{other:>10.3f}{other - value:>8.3f}{se_text:>11}{mc_text:>8}")


if __name__ == "__main__":
    main()
