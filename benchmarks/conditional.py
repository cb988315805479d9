"""The conditional VAE against the unconditional one, trained alike, and what its samples show.

Two models share the classic setting (MLP 784-400-20, Bernoulli likelihood with dynamic
binarization, Adam 1e-3, batch 128, equal epochs, no early stopping: the weights kept are those
of the best validation ELBO, as ``vaelab train`` keeps them):

    vae            p(x) = int p(z) p(x|z) dz                           (Kingma & Welling 2014)
    cvae           p(x|y) = int p(z) p(x|z, y) dz, q(z|x, y); y the class label, one-hot
                   (Sohn, Lee & Yan 2015: ``vaelab train --condition-on label``)
    cvae, p(z|y)   the same with a learned conditional prior (``--prior conditional``)
    cvae, D=2      the cvae with two latent dimensions: less room in z for the class

On the test set (the data set's fixed binarization, the first ``--test-n`` examples), in nats
per example, with K importance samples (``--k``):

* ``-log p(x)`` of the vae and ``-log p(x|y)`` of the cvae, each with its standard error over
  examples, and their paired per-example difference with its standard error. Knowing y is
  worth at most H(y) nats on average (log 10 = 2.30 for ten balanced classes):
  E[log p(x|y) - log p(x)] = E[log p(y|x) - log p(y)] <= log 10 for the true distribution.
* ``-log p(x)`` of the cvae as a model of x alone, log p(x) = log sum_y p(y) p(x|y) with p(y)
  the training class frequencies and K/10 importance samples per class (the same total budget
  as the vae's K), against the vae's, paired: whether conditioning helped model x itself.
* Conditional-sample accuracy: a classifier (MLP 784-400-10, trained on the real training
  images, early-stopped on the validation split; its own test accuracy is printed) labels
  ``--samples`` images drawn with ``model.sample(n, label=y)`` (decoder means, every class
  equally often); the share labelled as the requested class, with its binomial standard error.

Run (progress on stderr, the markdown table on stdout)::

    python benchmarks/conditional.py --datasets mnist5k --epochs 100 --threads 1
    python benchmarks/conditional.py --datasets mnist5k fashion-mnist --epochs 100 8 \\
        --test-n 0 2000 --k 1000 --threads 1 --json conditional.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richer import per_dataset, say  # benchmarks/richer.py: progress lines, per-data-set arguments
from vaelab.data import load_data
from vaelab.evaluation import log_likelihood
from vaelab.runs import TrainedModel, train

CLASSIC = {"latent_dim": 20, "hidden": [400], "likelihood": "bernoulli", "lr": 1e-3, "batch_size": 128,
           "patience": 0, "eval_k": 0}
MODELS: dict[str, dict[str, Any]] = {
    "vae": {},
    "cvae": {"condition_on": ["label"]},
    "cvae, p(z|y)": {"condition_on": ["label"], "prior": "conditional"},
    "cvae, D=2": {"condition_on": ["label"], "latent_dim": 2},
}


def mean_se(t: Tensor) -> tuple[float, float]:
    t = t.double()
    return float(t.mean()), float(t.std() / math.sqrt(t.numel()))


def train_classifier(data: Any, seed: int, epochs: int) -> tuple[nn.Module, float, float]:
    """MLP 784-400-10 on the real (grey-level) training images, the epoch of best validation
    accuracy kept; returns the classifier and its test accuracy with its standard error."""
    torch.manual_seed(seed)
    d = int(torch.tensor(data.shape).prod())
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 400), nn.ReLU(), nn.Linear(400, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data.train, data.train_labels
    best, best_state = -1.0, None
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(data.val).argmax(-1) == data.val_labels).double().mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
    assert best_state is not None
    net.load_state_dict(best_state)
    with torch.no_grad():
        correct = (net(data.test).argmax(-1) == data.test_labels).double()
    a = float(correct.mean())
    return net, a, math.sqrt(a * (1 - a) / correct.numel())


@torch.no_grad()
def marginal_log_px(model: TrainedModel, x: Tensor, prior_y: Tensor, k: int, k_chunk: int) -> Tensor:
    """log p(x) = logsumexp_y [log p(y) + log p(x|y)] with ``k`` importance samples per class ``[N]``."""
    terms = []
    for y in range(len(prior_y)):
        c = torch.full((len(x), 1), float(y))
        ll = log_likelihood(model.vae, x, k, c=c, k_chunk=k_chunk)
        terms.append(ll.per_example.double() + math.log(float(prior_y[y])))
    return torch.logsumexp(torch.stack(terms), 0)


def run_dataset(name: str, epochs: int, test_n: int, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    models: dict[str, TrainedModel] = {}
    for label, settings in MODELS.items():
        say(f"{name}: training {label} for {epochs} epochs")
        t0 = time.perf_counter()
        model, _ = train(data=name, epochs=epochs, seed=args.seed, threads=args.threads, out=str(out),
                         name=f"{name}-{len(models)}", progress=False, figures=False, log=lambda *a: None,
                         **{**CLASSIC, **settings})
        models[label] = model
        rows.append({"data": name, "model": label, "epochs": epochs, "train_s": time.perf_counter() - t0})
    data = models["cvae"].data()
    x, labels = models["vae"].test_set(data)
    if test_n:
        x, labels = x[:test_n], labels[:test_n]
    assert labels is not None
    torch.manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    ll_vae = log_likelihood(models["vae"].vae, x, args.k, k_chunk=args.k_chunk).per_example.double()
    rows[0]["eval_s"] = time.perf_counter() - t0
    rows[0]["nll"], rows[0]["nll_se"] = mean_se(-ll_vae)
    prior_y = torch.bincount(data.train_labels, minlength=10).double()
    prior_y = prior_y / prior_y.sum()
    say(f"{name}: classifier for the conditional samples")
    clf, acc, acc_se = train_classifier(data, args.seed, args.classifier_epochs)
    per_class = max(1, args.samples // 10)
    for row in rows[1:]:
        model = models[row["model"]]
        t0 = time.perf_counter()
        ll_cond = log_likelihood(model.vae, x, args.k, c=labels.float()[:, None], k_chunk=args.k_chunk).per_example.double()
        ll_marg = marginal_log_px(model, x, prior_y, max(1, args.k // 10), args.k_chunk)
        row["eval_s"] = time.perf_counter() - t0
        row["nll_given_y"], row["nll_given_y_se"] = mean_se(-ll_cond)
        row["diff_given_y"], row["diff_given_y_se"] = mean_se(ll_vae - ll_cond)  # -log p(x|y) minus the vae's -log p(x)
        row["nll"], row["nll_se"] = mean_se(-ll_marg)
        row["diff"], row["diff_se"] = mean_se(ll_vae - ll_marg)
        row["label_prior_entropy"] = float(-(prior_y * prior_y.log()).sum())
        hits = []
        for y in range(10):
            samples = model.sample(per_class, label=y, seed=args.seed + y)
            with torch.no_grad():
                hits.append((clf(samples).argmax(-1) == y).double())
        hit = torch.cat(hits)
        share = float(hit.mean())
        row.update(sample_accuracy=share, sample_accuracy_se=math.sqrt(share * (1 - share) / hit.numel()),
                   samples=int(hit.numel()), classifier_test_accuracy=acc, classifier_test_accuracy_se=acc_se,
                   per_class_sample_accuracy=[float(h.mean()) for h in hits])
    for r in rows:
        r["test_n"] = int(x.shape[0])
        r["k"] = args.k
    return rows


def escape(text: str) -> str:
    """A markdown table cell: its bars escaped."""
    return text.replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data set | model | epochs | test -log p(x) | -log p(x\\|y) | vs vae (paired) | samples of the asked class | train s | eval s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nll = f"{r['nll']:.2f} ± {r['nll_se']:.2f}"
        given = f"{r['nll_given_y']:.2f} ± {r['nll_given_y_se']:.2f}" if "nll_given_y" in r else ""
        diff = (f"x: {r['diff']:+.2f} ± {r['diff_se']:.2f}; x\\|y: {r['diff_given_y']:+.2f} ± {r['diff_given_y_se']:.2f}"
                if "diff" in r else "")
        samples = (f"{100 * r['sample_accuracy']:.1f} ± {100 * r['sample_accuracy_se']:.1f}% "
                   f"(classifier: {100 * r['classifier_test_accuracy']:.1f}% on test)" if "sample_accuracy" in r else "")
        lines.append(f"| {r['data']} (n={r['test_n']}) | {escape(r['model'])} | {r['epochs']} | {nll} | {given} | {diff} | "
                     f"{samples} | {r['train_s']:.0f} | {r.get('eval_s', 0):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist5k"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[100])
    parser.add_argument("--test-n", nargs="+", type=int, default=[0], help="0: the whole test set")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--k-chunk", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000, help="conditional samples scored by the classifier")
    parser.add_argument("--classifier-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = per_dataset(args.epochs, args.datasets, "epochs")
    test_n = per_dataset(args.test_n, args.datasets, "test-n")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            load_data(name)  # fails early (e.g. Fashion-MNIST offline and not installed)
            rows += run_dataset(name, epochs[name], test_n[name], args, Path(tmp))
            print(table(rows), file=sys.stderr)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
