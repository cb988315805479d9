"""Which log p(x) estimator should ``vaelab eval`` use by default? Tightness per CPU-second.

For each of several trained models, on the same test examples, one thread: encoder
importance sampling at K = 100 ... 5000 and AIS (S chains, 5 leapfrog steps, from the encoder)
at T = 5 ... 100, each with its CPU seconds. Every estimate is a stochastic lower bound on
log p(x), so at equal cost the higher one is the better. The last lines put the estimator that
``--estimator auto`` (the default) picks, at the default K, beside encoder IS at the same K.

    python benchmarks/default_estimator.py                 # trains the models it needs (~10 min)
    python benchmarks/default_estimator.py --models mnist5k --n 100

Models (trained once into ``--out``, reused after): ``mnist5k`` (the default run: MLP 784-400-20,
Bernoulli, early stopping), ``mnist5k-z2`` (the same with a 2-D latent, 30 epochs), ``digits``
(8x8 digits, Gaussian likelihood, 100 epochs), ``conditional`` (mnist5k given the label, 30
epochs), ``fashion`` (Fashion-MNIST, 10 epochs; needs the Debian package ``dataset-fashion-mnist``),
``iaf`` (mnist5k with an IAF posterior, 30 epochs: AIS from its encoder needs the flow's inverse at
every leapfrog step, 16x the cost of encoder IS at K = 1000 when measured, so auto keeps encoder IS).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

import vaelab
from vaelab.evaluation import DEFAULTS, EvalSettings, evaluate
from vaelab.evaluation.ais import ais, auto_steps
from vaelab.evaluation.likelihood import log_likelihood

MODELS: dict[str, dict[str, Any]] = {
    "mnist5k": {"patience": 10},
    "mnist5k-z2": {"latent_dim": 2, "epochs": 30, "patience": 0},
    "digits": {"data": "digits", "likelihood": "gaussian", "epochs": 100, "patience": 0},
    "conditional": {"condition_on": ["label"], "epochs": 30, "patience": 0},
    "fashion": {"data": "fashion-mnist", "epochs": 10, "patience": 0},
    "iaf": {"posterior": "iaf", "epochs": 30, "patience": 0},  # auto keeps encoder IS (see suite._closed_form_density)
}


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default="/tmp/vaelab-default-estimator")
    p.add_argument("--n", type=int, default=200, help="test examples per model")
    p.add_argument("--ks", type=int, nargs="+", default=[100, 250, 1000, 5000])
    p.add_argument("--ts", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    p.add_argument("--chains", type=int, default=DEFAULTS.chains)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    for name in args.models:
        run = Path(args.out) / name
        if not (run / "model.json").exists():
            print(f"training {name} ...", flush=True)
            vaelab.train(**MODELS[name], threads=args.threads, eval_k=0, out=args.out, name=name, progress=False,
                         figures=False, log=lambda *a: None)
        model = vaelab.load(run)
        vae = model.vae.eval()
        batch = model.test_batch()
        x = model.as_batch(batch.x)[: args.n]
        c = None if batch.c is None else model.context(batch.c, n=len(batch.x), what="the test set's context")[: args.n]
        print(f"\n{name}: {x.shape[0]} test examples", flush=True)
        for k in args.ks:
            torch.manual_seed(0)
            ll, cpu = _cpu(lambda: log_likelihood(vae, x, k, c=c))
            results.append({"model": name, "estimator": f"IS K={k}", "nll": -ll.mean, "cpu_s": cpu})
            print(f"  encoder IS  K={k:<5}  -log p(x) = {-ll.mean:9.3f}   {cpu:6.1f} CPU s", flush=True)
        if name != "iaf":
            for t in args.ts:
                torch.manual_seed(0)
                r, cpu = _cpu(lambda: ais(vae, x, steps=t, chains=args.chains, c=c))
                results.append({"model": name, "estimator": f"AIS T={t}", "nll": -r.mean, "cpu_s": cpu,
                                "acceptance": float(r.acceptance.mean())})
                print(f"  AIS T={t:<4} S={args.chains}  -log p(x) = {-r.mean:9.3f}   {cpu:6.1f} CPU s  "
                      f"(acceptance {float(r.acceptance.mean()):.2f})", flush=True)
        settings = EvalSettings(mi_samples=0, gap_examples=0)
        for estimator in ("auto", "is"):
            ev, cpu = _cpu(lambda: evaluate(vae, x, settings, c=c, estimator=estimator).summary())
            results.append({"model": name, "estimator": f"eval --estimator {estimator}", "picked": ev.estimator,
                            "nll": ev.nll, "cpu_s": cpu})
            print(f"  eval --estimator {estimator:<5} -> {ev.how():<28} -log p(x) = {ev.nll:9.3f}   {cpu:6.1f} CPU s",
                  flush=True)
        print(f"  (auto's AIS at K={DEFAULTS.k}: T = {auto_steps(DEFAULTS.k, DEFAULTS.chains, DEFAULTS.leapfrog)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
