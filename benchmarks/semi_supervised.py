"""The semi-supervised M2 against its own classifier trained on the labelled examples alone.

Setting: ``--labels-per-class`` (default 10) training labels per class are kept (seeded,
stratified: :func:`vaelab.data.known_labels`, as ``vaelab train --semi-supervised`` keeps
them), the rest of the training split is unlabelled. Two classifiers, the same network
(``--net``, ``--hidden``: MLP 784-400-10 by default), are scored on the test set (each data
set's fixed binarization) with the binomial standard error sqrt(a (1 - a) / N):

    M2         q(y|x) of the semi-supervised model (Kingma et al. 2014), trained for
               ``--epochs`` on the bound of every training example plus alpha x N / N_labelled
               times the cross-entropy of the labelled ones (``--alpha``, the paper's 0.1 N is
               0.1); latent size ``--latent-dim``, Bernoulli likelihood with dynamic
               binarization, Adam 1e-3, batch 128; the weights kept are those of the best
               validation bound U(x) (no validation label is read).
    baseline   the same network trained with cross-entropy on the labelled examples alone:
               full batch, Adam 1e-3, a fresh Bernoulli draw of the pixels per step (as M2
               sees them), a fixed budget of ``--baseline-steps`` steps (default 500) stated
               here, before any test number was seen: no test label chooses it, and the
               training split has too few labels to hold some out for early stopping.

The paper's numbers, for reference (MNIST, 100 labels and 50,000 unlabelled images, Table 1):
M2 11.97% (+- 1.71) test error, M1+M2 3.33% (+- 0.14). ``mnist5k`` has 3,600 unlabelled
training images, fourteen times fewer, and short runs are far from the paper's training.

Run (progress on stderr, the table on stdout)::

    python benchmarks/semi_supervised.py --datasets mnist5k --epochs 30 --seeds 0 1 2 --threads 1
    python benchmarks/semi_supervised.py --datasets mnist5k fashion-mnist --epochs 200 --seeds 0 1 2 3 4

On a CPU shared with other work ``--threads 1`` matters (see ``benchmarks/richer.py``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vaelab import registry
from vaelab.data import known_labels
from vaelab.runs import TrainedModel, train

PAPER = "Kingma et al. 2014, MNIST with 100 labels: M2 11.97% error (88.03% accuracy), M1+M2 3.33% (96.67%)"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Share right and its binomial standard error."""
    a = float((logits.argmax(-1) == labels).double().mean())
    return a, math.sqrt(a * (1 - a) / len(labels))


def baseline(m2: TrainedModel, steps: int, seed: int) -> tuple[float, float]:
    """The M2 run's classifier network, fresh, trained on the run's labelled examples alone."""
    config, spec = m2.config, m2.spec
    data = m2.data()
    assert data.train_labels is not None
    known = known_labels(data.train_labels, per_class=config.labels_per_class, fraction=config.labelled_fraction,
                         seed=config.seed, class_names=spec.context[0].names())
    x, y = data.train[known], data.train_labels[known].long()  # [N_l, *x_shape], [N_l]
    classes = spec.context[0].classes
    torch.manual_seed(seed)
    net = registry.get("net", spec.net.name).build("encoder", spec.x_shape, classes, 0, **spec.net.options)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    binarized = bool(m2.data_info.get("binarized"))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        xb = torch.bernoulli(x, generator=gen) if binarized else x  # as M2 sees its inputs
        loss = torch.nn.functional.cross_entropy(net(xb), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    x_test, y_test = m2.test_set(data)
    assert y_test is not None
    with torch.no_grad():
        return accuracy(net(x_test), y_test.long())


def run(dataset: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    start = time.time()
    m2, fit = train(data=dataset, condition_on=["label"], semi_supervised=True, labels_per_class=args.labels_per_class,
                    alpha=args.alpha, epochs=args.epochs, latent_dim=args.latent_dim, hidden=args.hidden, net=args.net,
                    seed=seed, threads=args.threads, eval_k=0, device="cpu", out=str(out), name=f"{dataset}-{seed}",
                    progress=False, figures=False, log=lambda *a: None)
    seconds = time.time() - start
    x_test, y_test = m2.test_set()
    assert y_test is not None
    with torch.no_grad():
        logits = torch.cat([m2.vae.classifier(x_test[i : i + 500]) for i in range(0, len(x_test), 500)])
    m2_acc, m2_se = accuracy(logits, y_test.long())
    start = time.time()
    base_acc, base_se = baseline(m2, args.baseline_steps, seed)
    return {"dataset": dataset, "seed": seed, "m2": m2_acc, "m2_se": m2_se, "base": base_acc, "base_se": base_se,
            "epochs": fit.epochs_done, "best": fit.best_epoch, "m2_s": seconds, "base_s": time.time() - start,
            "n_test": len(y_test)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist5k"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, nargs="+", default=[400])
    p.add_argument("--net", default="mlp")
    p.add_argument("--baseline-steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="keep the M2 run folders here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for dataset in args.datasets:
            for seed in args.seeds:
                say(f"{dataset} seed {seed}: M2 for {args.epochs} epochs, then the baseline")
                rows.append(run(dataset, seed, args, out))
                r = rows[-1]
                say(f"  M2 {100 * r['m2']:.2f}%  baseline {100 * r['base']:.2f}%  ({r['m2_s']:.0f} s + {r['base_s']:.0f} s)")

    print(f"\n{args.labels_per_class} labels per class; M2: {args.epochs} epochs, alpha {args.alpha:g}, latent "
          f"{args.latent_dim}, {args.net} {','.join(map(str, args.hidden))}; baseline: {args.baseline_steps} full-batch "
          "Adam steps on the labelled examples alone. Test accuracy in %, +- binomial standard error.\n")
    print("| data | seed | M2 | baseline | M2 - baseline | M2 epochs (best) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {100 * r['m2']:.2f} ± {100 * r['m2_se']:.2f} "
              f"| {100 * r['base']:.2f} ± {100 * r['base_se']:.2f} | {100 * (r['m2'] - r['base']):+.2f} "
              f"| {r['epochs']} ({r['best']}) |")
    for dataset in args.datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        if len(mine) > 1:
            diff = torch.tensor([r["m2"] - r["base"] for r in mine], dtype=torch.float64)
            m2 = sum(r["m2"] for r in mine) / len(mine)
            base = sum(r["base"] for r in mine) / len(mine)
            print(f"| {dataset} | mean of {len(mine)} | {100 * m2:.2f} | {100 * base:.2f} "
                  f"| {100 * float(diff.mean()):+.2f} ± {100 * float(diff.std() / math.sqrt(len(mine))):.2f} (over seeds) | |")
    print(f"\nFor reference, {PAPER}.")


if __name__ == "__main__":
    main()
