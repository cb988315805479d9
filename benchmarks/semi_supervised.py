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

Ingredients, each a switch (every run's table line says which were on):

    --labelled-per-batch L   every batch gets L rows with a known label besides its 128 ordinary
                             rows (``vaelab train --labelled-per-batch``; see :mod:`vaelab.m2`);
    --alpha                  the weight of the classification term;
    --latent-dim, --hidden   the paper's M2 has latent 50 and hidden layers of 500;
    --m1-epochs E            M1+M2, the paper's stacking: an M1 VAE (latent ``--m1-latent-dim``,
                             hidden ``--m1-hidden``, Bernoulli) is first trained for E epochs on
                             every training image (no label read), and M2 is trained on the
                             posterior means E_q(z|x)[z] of the grey-level images, train and
                             test alike (its active units,
                             standardized; Gaussian likelihood with a learned scale per feature;
                             the same labelled examples). The baseline stays the image classifier
                             on the same labelled images; ``feats`` is the same classifier trained
                             on the labelled examples' M1 features instead (what M1 alone gives).

The paper's numbers, for reference (MNIST, 100 labels and 50,000 unlabelled images, Table 1):
M2 11.97% (+- 1.71) test error, M1+M2 3.33% (+- 0.14). ``mnist5k`` has 3,600 unlabelled
training images, fourteen times fewer, and short runs are far from the paper's training.

Run (progress on stderr, the table on stdout)::

    python benchmarks/semi_supervised.py --datasets mnist5k --epochs 30 --seeds 0 1 2 --threads 1
    python benchmarks/semi_supervised.py --datasets mnist5k fashion-mnist --epochs 200 --seeds 0 1 2 3 4
    python benchmarks/semi_supervised.py --datasets mnist5k --labelled-per-batch 32 --alpha 1 --seeds 0
    python benchmarks/semi_supervised.py --datasets mnist5k --m1-epochs 30 --labelled-per-batch 32 --seeds 0

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

import numpy as np
import torch

from vaelab import registry
from vaelab.data import binarize, known_labels
from vaelab.runs import TEST_BINARIZATION_SEED, TrainedModel, train

PAPER = "Kingma et al. 2014, MNIST with 100 labels: M2 11.97% error (88.03% accuracy), M1+M2 3.33% (96.67%)"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Share right and its binomial standard error."""
    a = float((logits.argmax(-1) == labels).double().mean())
    return a, math.sqrt(a * (1 - a) / len(labels))


def baseline(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             steps: int, seed: int, binarized: bool) -> tuple[float, float]:
    """``net``, fresh, trained with cross-entropy on the labelled examples (x ``[N_l, ...]``, y
    ``[N_l]``) alone: full batch, Adam 1e-3, ``steps`` steps, a fresh Bernoulli draw of the
    pixels per step when ``binarized`` (as M2 sees them); its test accuracy."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        xb = torch.bernoulli(x, generator=gen) if binarized else x
        loss = torch.nn.functional.cross_entropy(net(xb), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        return accuracy(net(x_test), y_test)


def fresh_classifier(m2: TrainedModel) -> torch.nn.Module:
    """The M2 run's classifier network, freshly initialised (under the current torch seed)."""
    spec = m2.spec
    return registry.get("net", spec.net.name).build("encoder", spec.x_shape, spec.context[0].classes, 0,
                                                     **spec.net.options)


def labelled_of(m2: TrainedModel, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples whose label the M2 run saw (indices into ``data.train``) and their labels."""
    config = m2.config
    known = known_labels(data.train_labels, per_class=config.labels_per_class, fraction=config.labelled_fraction,
                         seed=config.seed, class_names=m2.spec.context[0].names())
    return torch.nonzero(known, as_tuple=True)[0], data.train_labels[known].long()


def m1_features(dataset: str, seed: int, args: argparse.Namespace,
                out: Path) -> tuple[dict[str, Any], Path, Any, float]:
    """M1: a VAE trained on every training image (labels unread); the posterior means of the
    train+val images and of the test images (active units only, standardized with the training
    images' mean and spread) as a data mapping (``train``, ``train_labels``,
    ``test``, ``test_labels``) and the .npz file holding it, the image splits, and the seconds
    it took."""
    start = time.time()
    m1, _ = train(data=dataset, epochs=args.m1_epochs, latent_dim=args.m1_latent_dim, hidden=args.m1_hidden,
                  seed=seed, threads=args.threads, eval_k=0, device="cpu", out=str(out), name=f"{dataset}-{seed}-m1",
                  progress=False, figures=False, log=lambda *a: None)
    data = m1.data()

    def means(x: torch.Tensor) -> torch.Tensor:  # E_q(z|x)[z], [N, D]
        with torch.no_grad():
            return torch.cat([m1.encode(x[i : i + 1000]).mean for i in range(0, len(x), 1000)])

    train_means, test_means = torch.cat([means(data.train), means(data.val)]), means(data.test)  # [N, D]
    active = train_means.var(0) > 0.01  # the active units (Burda et al. 2016); the others carry nothing
    if not bool(active.any()):
        raise SystemExit(f"M1 on {dataset} has no active unit after {args.m1_epochs} epochs; train it longer")
    centre, spread = train_means[:, active].mean(0), train_means[:, active].std(0)
    features = {"train": ((train_means[:, active] - centre) / spread).numpy(),
                "train_labels": torch.cat([data.train_labels, data.val_labels]).numpy(),
                "test": ((test_means[:, active] - centre) / spread).numpy(), "test_labels": data.test_labels.numpy()}
    path = out / f"{dataset}-{seed}-m1-features.npz"  # vaelab.train reads data from a file
    np.savez(path, **features)
    return features, path, data, time.time() - start


def run(dataset: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    m1_s, features, source = 0.0, None, dataset
    if args.m1_epochs:
        features, source, images, m1_s = m1_features(dataset, seed, args, out)
    start = time.time()
    m2, fit = train(data=str(source), condition_on=["label"], semi_supervised=True,
                    labels_per_class=args.labels_per_class, alpha=args.alpha, labelled_per_batch=args.labelled_per_batch,
                    epochs=args.epochs, latent_dim=args.latent_dim, hidden=args.hidden, net=args.net,
                    likelihood="gaussian" if features is not None else "bernoulli",
                    **({"learn_scale": "feature"} if features is not None else {}), seed=seed, threads=args.threads,
                    eval_k=0, device="cpu", out=str(out), name=f"{dataset}-{seed}", progress=False, figures=False,
                    log=lambda *a: None)
    seconds = time.time() - start
    data = m2.data()
    x_test, y_test = m2.test_set(data)
    assert y_test is not None
    with torch.no_grad():
        logits = torch.cat([m2.vae.classifier(x_test[i : i + 500]) for i in range(0, len(x_test), 500)])
    m2_acc, m2_se = accuracy(logits, y_test.long())
    index, y_l = labelled_of(m2, data)
    start = time.time()
    row: dict[str, Any] = {"dataset": dataset, "seed": seed, "m2": m2_acc, "m2_se": m2_se, "epochs": fit.epochs_done,
                           "best": fit.best_epoch, "m2_s": seconds + m1_s, "n_test": len(y_test)}
    if features is None:
        torch.manual_seed(seed)
        row["base"], row["base_se"] = baseline(fresh_classifier(m2), data.train[index], y_l, x_test, y_test.long(),
                                               args.baseline_steps, seed, bool(m2.data_info.get("binarized")))
    else:  # the labelled feature rows are the M1 means of labelled images: find those images
        feats = torch.as_tensor(features["train"])  # [N_train + N_val, D], images' train then val
        distance, match = torch.cdist(data.train[index].double(), feats.double()).min(1)
        assert float(distance.max()) < 1e-4, "a labelled feature row matches no image"
        x_img = torch.cat([images.train, images.val])[match]
        y_img = torch.cat([images.train_labels, images.val_labels])[match].long()
        assert torch.equal(y_img, y_l)
        torch.manual_seed(seed)
        img_net = registry.get("net", args.net).build("encoder", tuple(images.shape), m2.spec.context[0].classes, 0,
                                                      hidden=args.hidden)
        x_img_test = binarize(images.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
        row["base"], row["base_se"] = baseline(img_net, x_img, y_img, x_img_test, images.test_labels.long(),
                                               args.baseline_steps, seed, True)
        torch.manual_seed(seed)
        row["feats"], row["feats_se"] = baseline(fresh_classifier(m2), data.train[index], y_l, x_test, y_test.long(),
                                                 args.baseline_steps, seed, False)
    row["base_s"] = time.time() - start
    return row


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
    p.add_argument("--labelled-per-batch", type=int, default=0)
    p.add_argument("--m1-epochs", type=int, default=0, help="M1+M2: train M1 for this many epochs first (0: M2 alone)")
    p.add_argument("--m1-latent-dim", type=int, default=50)
    p.add_argument("--m1-hidden", type=int, nargs="+", default=[600, 600])
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
                feats = f"  feats {100 * r['feats']:.2f}%" if "feats" in r else ""
                say(f"  M2 {100 * r['m2']:.2f}%  baseline {100 * r['base']:.2f}%{feats}  "
                    f"({r['m2_s']:.0f} s + {r['base_s']:.0f} s)")

    m1 = (f"M1+M2 (M1: {args.m1_epochs} epochs, latent {args.m1_latent_dim}, mlp {','.join(map(str, args.m1_hidden))}); "
          if args.m1_epochs else "")
    print(f"\n{args.labels_per_class} labels per class; {m1}M2: {args.epochs} epochs, alpha {args.alpha:g}, "
          f"{args.labelled_per_batch} labelled rows per batch, latent {args.latent_dim}, {args.net} "
          f"{','.join(map(str, args.hidden))}; baseline: {args.baseline_steps} full-batch Adam steps on the labelled "
          "images alone. Test accuracy in %, +- binomial standard error.\n")
    feats = bool(args.m1_epochs)  # the classifier on the M1 features of the labelled examples alone
    print("| data | seed | M2 | baseline | M2 - baseline | M2 epochs (best) |" + (" classifier on M1 features |" if feats else ""))
    print("|---|---|---|---|---|---|" + ("---|" if feats else ""))
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {100 * r['m2']:.2f} ± {100 * r['m2_se']:.2f} "
              f"| {100 * r['base']:.2f} ± {100 * r['base_se']:.2f} | {100 * (r['m2'] - r['base']):+.2f} "
              f"| {r['epochs']} ({r['best']}) |" + (f" {100 * r['feats']:.2f} ± {100 * r['feats_se']:.2f} |" if feats else ""))
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
