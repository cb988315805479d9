"""Quality at the classic setting: vaelab against a plain PyTorch loop, trained the same way.

MLP 784-400-20, Bernoulli likelihood, Adam 1e-3, batch 128, dynamic binarization, 30 epochs
(no early stopping) on ``mnist5k`` (3,600 training digits after the validation hold-out);
test -log p(x) with K=1000 importance samples on the same fixed binarization of the 1,000
test digits. Run: ``python benchmarks/quality.py [--epochs 30] [--k 1000] [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from reference import reference_elbo, reference_log_px, train_reference
from vaelab.runs import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="/tmp/vaelab-quality")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        model, _ = train(epochs=args.epochs, patience=0, seed=seed, eval_k=0, out=args.out,
                         name=f"classic-{seed}-{int(time.time())}", figures=False, progress=False, log=lambda m: None)
        t_vaelab = time.perf_counter() - t0
        x_test, _ = model.test_set()
        ev = model.evaluate(k=args.k, estimator="is")  # the plain loop is scored by encoder IS: the same estimator on both
        data = model.data()
        x_train = data.train.reshape(-1, 784)
        ref, t_ref = train_reference(x_train, epochs=args.epochs, seed=seed)
        ref.eval()
        torch.manual_seed(0)
        r_elbo = reference_elbo(ref, x_test.reshape(-1, 784))
        r_ll, r_se = reference_log_px(ref, x_test.reshape(-1, 784), k=args.k)
        rows.append({
            "seed": seed,
            "vaelab_nll": ev["nll"], "vaelab_nll_se": ev["log_px_stderr"], "vaelab_elbo": ev["elbo"],
            "reference_nll": -r_ll, "reference_nll_se": r_se, "reference_elbo": r_elbo["elbo"],
            "vaelab_train_s": t_vaelab, "reference_train_s": t_ref,
        })
        print(json.dumps(rows[-1]))
    print(f"{'seed':>4} {'vaelab -log p(x)':>18} {'plain -log p(x)':>18} {'vaelab ELBO':>12} {'plain ELBO':>11}")
    for r in rows:
        print(f"{r['seed']:>4} {r['vaelab_nll']:>12.2f} ± {r['vaelab_nll_se']:.2f} {r['reference_nll']:>12.2f} ± "
              f"{r['reference_nll_se']:.2f} {r['vaelab_elbo']:>12.2f} {r['reference_elbo']:>11.2f}")


if __name__ == "__main__":
    main()
