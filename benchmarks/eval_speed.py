"""Where ``vaelab eval`` spends its time, part by part, and what a change of settings buys.

Runs :func:`vaelab.evaluation.evaluate` on one trained run's test set (as ``vaelab eval RUN``
does) with two sets of evaluation settings, ``old`` (``--old``, default: today's defaults)
and ``new`` (``--new``, default: ``k_chunk=10``), alternating for ``--rounds`` rounds in one
process on one thread (``--threads``), and prints for each the CPU seconds (``time.process_time``) and wall
seconds of every part: the ELBO and its terms, encoder IS, AIS (``--estimator auto``), latent
health and the gap split, then the estimates of both side by side with their standard errors
(the same seed: every part is seeded separately, so a change of one part's settings moves only
that part's numbers). CPU time is the figure to read on a shared machine; medians over rounds.

    vaelab train --epochs 30 --threads 1 --name base      # the default mnist5k model
    python benchmarks/eval_speed.py runs/base --rounds 3
    python benchmarks/eval_speed.py runs/base --old k_chunk=50 --new k_chunk=10,gap_steps=150

Two versions of the *code* (today's defaults of each) are compared one process at a time:
``--one LABEL --log FILE`` runs one evaluation with the ``--new`` settings and appends its
times and estimates to FILE as a JSON line; alternate the versions (``PYTHONPATH`` naming the
other's ``src``), then ``--table FILE`` prints the medians of the first two labels side by side:

    git archive c9b7e15 src | tar -x -C /tmp/vaelab-old     # the code before, unpacked
    for r in 1 2; do
        PYTHONPATH=/tmp/vaelab-old/src python benchmarks/eval_speed.py runs/base --one before --new "" --log e.jsonl
        python benchmarks/eval_speed.py runs/base --one after --new "" --log e.jsonl
    done
    python benchmarks/eval_speed.py --table e.jsonl

``--optimisers`` compares the gap split's local optimisers on its 100 examples (the subset
``vaelab eval`` takes) with the final ELBOs' noise *paired* (the same 1,000 draws for every
optimiser), so that differences of ELBO(q*) far below its Monte-Carlo error show, each
optimiser run from two seeds (STEPS:GRADIENT[:SAMPLES[:LR[:DRAWS]]], DRAWS ``anti``: antithetic
pairs, the default, or ``iid``):

    python benchmarks/eval_speed.py runs/base --optimisers 300:closed,150:closed,150:stl,100:stl,60:stl
    python benchmarks/eval_speed.py runs/base --optimisers 100:stl:16:0.05:iid,100:stl:8:0.05:iid,100:stl:8
"""

from __future__ import annotations

import argparse
import json
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


def _print_table(times: dict[str, dict[str, list[tuple[float, float]]]], labels: tuple[str, str],
                 estimates: tuple[dict[str, Any], dict[str, Any]], rounds: int) -> None:
    """The medians of every part's (CPU s, wall s) of two columns, then their estimates side by side."""
    a, b = labels
    print(f"{'part':<16}{a + ' CPU':>12}{b + ' CPU':>12}{'ratio':>8}{a + ' wall':>12}{b + ' wall':>12}   ({rounds} rounds)")
    for part in (*PARTS, "total"):
        if part not in times[a] or part not in times[b]:
            continue
        o = [statistics.median(c[i] for c in times[a][part]) for i in (0, 1)]
        n = [statistics.median(c[i] for c in times[b][part]) for i in (0, 1)]
        print(f"{NAMES.get(part, part):<16}{o[0]:>12.2f}{n[0]:>12.2f}{n[0] / max(o[0], 1e-9):>8.2f}{o[1]:>12.2f}{n[1]:>12.2f}")
    old, new = estimates
    print(f"\n{'estimate (nats)':<22}{a:>10}{b:>10}{'diff':>8}{'SE over x':>11}{'MC SE':>8}")
    for key, (value, se, mc) in old.items():
        if key not in new:
            continue
        other = new[key][0]
        se_text = "" if se is None else f"{se:.3f}"
        mc_text = "" if mc is None else f"{mc:.3f}"
        print(f"{key:<22}{value:>10.3f}{other:>10.3f}{other - value:>8.3f}{se_text:>11}{mc_text:>8}")


def compare_optimisers(model: Any, specs: str, seeds: int = 2) -> None:
    """ELBO(q*) of the gap split's examples for each optimiser ``STEPS:GRADIENT[:SAMPLES[:LR[:DRAWS]]]``
    of ``specs`` (comma-separated), the final ELBOs from the same 1,000 draws for all."""
    from vaelab.evaluation.gaps import _paired_elbos, optimal_posterior

    x, _ = model.test_set()
    x = model.as_batch(x)
    torch.manual_seed(EvalSettings().seed + 3)  # the subset evaluate() takes (inference_gaps under seed + 3)
    n = EvalSettings().gap_examples
    rows = torch.randperm(x.shape[0])[:n] if x.shape[0] > n else torch.arange(x.shape[0])
    xb = x[rows]
    with torch.no_grad():
        q_enc = model.vae.encode(xb)
    base = None
    print(f"{'optimiser':<28}{'CPU s':>8}{'ELBO(q*)':>12}{'vs first':>10}{'seeds differ by':>17}")
    for spec in filter(None, specs.split(",")):
        parts = spec.split(":")
        steps, gradient = int(parts[0]), parts[1]
        samples = int(parts[2]) if len(parts) > 2 else EvalSettings().gap_samples
        lr = float(parts[3]) if len(parts) > 3 else EvalSettings().gap_lr
        antithetic = (parts[4] if len(parts) > 4 else "anti") != "iid"
        values, cpu = [], []
        for seed in range(seeds):
            torch.manual_seed(100 + seed)
            began = time.process_time()
            q = optimal_posterior(model.vae, xb, steps=steps, lr=lr, samples=samples, gradient=gradient,
                                  antithetic=antithetic)
            cpu.append(time.process_time() - began)
            torch.manual_seed(12345)  # the same final draws for every optimiser
            values.append(float(_paired_elbos(model.vae, xb, q_enc, q, 1000, 20, "auto")[2].mean()))
        mean = statistics.mean(values)
        base = mean if base is None else base
        print(f"{spec:<28}{statistics.median(cpu):>8.2f}{mean:>12.4f}{mean - base:>10.4f}{max(values) - min(values):>17.4f}",
              flush=True)


def _table_from_log(path: str) -> None:
    """``--table``: the medians of the first two labels of a ``--one`` log."""
    times: dict[str, dict[str, list[tuple[float, float]]]] = {}
    estimates: dict[str, dict[str, Any]] = {}
    rounds: dict[str, int] = {}
    threads: set[int] = set()
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            label = row["label"]
            for part, cost in row["times"].items():
                times.setdefault(label, {}).setdefault(part, []).append((cost[0], cost[1]))
            estimates[label] = {k: tuple(v) for k, v in row["estimates"].items()}
            rounds[label] = rounds.get(label, 0) + 1
            threads.add(row.get("threads", 1))
    labels = tuple(times)[:2]
    if len(labels) < 2:
        raise SystemExit(f"{path} holds {len(labels)} label(s); --table needs two")
    print(f"{path}: {', '.join(f'{k}: {v} runs' for k, v in rounds.items())}; "
          f"{'/'.join(map(str, sorted(threads)))} thread(s), medians (CPU s / wall s)")
    _print_table(times, labels, (estimates[labels[0]], estimates[labels[1]]), min(rounds[k] for k in labels))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run folder (vaelab train ... --name base)")
    parser.add_argument("--old", default="", help="settings changes of the old column, e.g. k_chunk=50")
    parser.add_argument("--new", default="k_chunk=10", help="settings changes of the new column")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", metavar="LABEL", help="run one evaluation (the --new settings) and append it to --log")
    parser.add_argument("--log", help="the JSON-lines file of --one")
    parser.add_argument("--table", metavar="LOG", help="print the medians of a --one log's first two labels")
    parser.add_argument("--optimisers", metavar="SPECS", help="compare gap-split optimisers, e.g. 300:closed,100:stl")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 0: torch's own default, as `vaelab eval` runs: one per core)")
    args = parser.parse_args()
    if args.table:
        _table_from_log(args.table)
        return
    if args.run is None:
        parser.error("give a run folder (or --table LOG)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = vaelab.load(args.run)
    base = EvalSettings(kl=model.config.kl)
    if args.optimisers:
        compare_optimisers(model, args.optimisers)
        return
    if args.one:
        if not args.log:
            parser.error("--one needs --log FILE")
        settings = base.replace(**_changes(args.new))
        result, spent = timed_evaluation(model, settings)
        with open(args.log, "a") as f:
            f.write(json.dumps({"label": args.one, "threads": torch.get_num_threads(), "vaelab": vaelab.__file__, "settings": settings.to_dict(),
                                "times": spent, "estimates": _estimates(result)}) + "\n")
        print(f"{args.one}: {spent['total'][0]:.1f} s CPU, {spent['total'][1]:.1f} s wall", flush=True)
        return
    columns = {"old": base.replace(**_changes(args.old)), "new": base.replace(**_changes(args.new))}
    times: dict[str, dict[str, list[tuple[float, float]]]] = {c: {} for c in columns}
    results: dict[str, Any] = {}
    for r in range(args.rounds):
        for column, settings in (columns.items() if r % 2 == 0 else reversed(columns.items())):
            results[column], spent = timed_evaluation(model, settings)
            for part, cost in spent.items():
                times[column].setdefault(part, []).append(cost)
            print(f"round {r + 1}, {column}: {spent['total'][0]:.1f} s CPU, {spent['total'][1]:.1f} s wall", flush=True)

    print(f"\n{args.run}, {torch.get_num_threads()} thread(s), medians over {args.rounds} rounds (CPU s / wall s)")
    print(f"  old: {args.old or 'the defaults'}\n  new: {args.new or 'the defaults'}")
    _print_table(times, ("old", "new"), (_estimates(results["old"]), _estimates(results["new"])), args.rounds)


if __name__ == "__main__":
    main()
