"""Bits per dimension on colour images: MLP against convolutional and residual networks, with
one stochastic layer and with two (the ladder VAE).

VAEs are trained on the built-in ``patches`` (32x32 RGB patches of scikit-learn's two
photographs; training patches from the left three quarters of each photo, test patches from
the right quarter) for the same fixed budget, and differ only in their encoder/decoder
networks and in the number of stochastic layers:

    mlp      3072-400-(2x32) encoder, mirrored decoder                            (--net mlp)
    conv     two 4x4 stride-2 convolutions 32, 64 (32 -> 16 -> 8), ELU, FC 400     (--net conv)
    resnet   the same with 2 residual blocks (ELU, 3x3 convs) per stage            (--net resnet)
    <net>-ladder   the same net as the ladder's first bottom-up layer and its likelihood's
             network, two stochastic layers of 32 (bottom) and 16 units, free bits 0.25 nats
             per unit (--latent-dims 32,16 --free-bits 0.25; ``src/vaelab/ladder.py``)

Shared: latent dimension 32 (the ladder's bottom layer), N(0, I) prior, diagonal Gaussian
posterior, PixelCNN++'s discretized logistic mixture over whole RGB pixels (5 logistics, green
and blue locations
linear in the pixel's red and green values), Adam 1e-3, batch 64, no early stopping
(``patience 0``; the weights kept are those of the best validation ELBO), one CPU thread.
The test score is -log p(x) by importance sampling with ``--k`` samples on the first
``--test-n`` test patches (half from each photo), in bits per dimension:
-log p(x) / (3072 ln 2), with its standard error over examples; the ELBO likewise; paired
differences on the same test patches against the MLP and, for a ladder row, against the same
net with one layer. KL per stochastic layer and its informative units (KL above 0.1 nats) come
from :func:`vaelab.evaluation.latent_diagnostics` on the same patches. Train time is the CPU
time of the training process (``time.process_time``, one thread), which a busy machine
inflates less than wall time, and its wall time beside it.

The budget is short (a few epochs), so these are the nets' standings early in training, not
converged results. The literature's CIFAR-10 figures (IAF-VAE 3.11, NVAE 2.91 bits/dim; much
larger models, trained for days on GPUs) are for another data set and are quoted only as a
scale.

Run (progress on stderr, the markdown table on stdout)::

    python benchmarks/colour.py --epochs 6 --test-n 500 --k 20 --json colour.json
    python benchmarks/colour.py --models mlp-ladder conv-ladder resnet-ladder   # the ladder rows alone
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

from vaelab.evaluation import dataset_elbo, latent_diagnostics, log_likelihood
from vaelab.runs import train

NETS: dict[str, dict[str, Any]] = {
    "mlp": {"net": "mlp", "hidden": [400]},
    "conv": {"net": "conv", "hidden": [400], "conv_channels": [32, 64]},
    "resnet": {"net": "resnet", "hidden": [400], "conv_channels": [32, 64], "res_blocks": 2},
}
LADDER: dict[str, Any] = {"latent_dims": [32, 16], "free_bits": 0.25}  # two stochastic layers, bottom first
MODELS: dict[str, dict[str, Any]] = {**NETS, **{f"{net}-ladder": {**options, **LADDER} for net, options in NETS.items()}}
SHARED = {"data": "patches", "latent_dim": 32, "likelihood": "logistic-mixture", "mixtures": 5, "lr": 1e-3,
          "batch_size": 64, "patience": 0, "eval_k": 0, "threads": 1}
DIMS = 3 * 32 * 32


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_one(model: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    settings = {**SHARED, **MODELS[model], "epochs": args.epochs, "seed": args.seed}
    torch.set_num_threads(1)
    say(f"{model}: training {args.epochs} epochs")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trained, fit = train(**settings, out=str(out), name=model, figures=False, progress=False, log=lambda *a: None)
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    vae = trained.vae.eval()
    x = trained.test_set()[0][: args.test_n]
    cpu0 = time.process_time()
    torch.manual_seed(args.seed)
    ll = log_likelihood(vae, x, args.k, batch_size=5, k_chunk=args.k)  # small passes: 3072 x 20 numbers per value
    torch.manual_seed(args.seed)
    terms = dataset_elbo(vae, x, k=1, batch_size=50)
    torch.manual_seed(args.seed)
    health = latent_diagnostics(vae, x, mi_samples=10, batch_size=50)  # the KL per unit; I(x;z) is not used
    eval_cpu = time.process_time() - cpu0
    sizes = list(health.layers or [vae.latent_dim])
    kl_unit = health.kl_per_dim.double() if health.kl_per_dim is not None else None  # [D], bottom layer first
    layers, start = [], 0
    for size in sizes:
        unit = slice(start, start + size)
        layers.append({"size": size, "kl": None if kl_unit is None else float(kl_unit[unit].sum()),
                       "informative": int(health.informative[unit].sum())})
        start += size
    scale = 1 / (DIMS * math.log(2))
    row = {
        "model": model, "epochs": fit.epochs_done, "best_epoch": fit.best_epoch, "n_test": int(x.shape[0]),
        "k": args.k, "bpd": -ll.mean * scale, "bpd_stderr": ll.stderr * scale, "elbo_bpd": -terms.elbo * scale,
        "kl_nats": terms.kl, "layers": layers, "params": sum(p.numel() for p in vae.parameters()),
        "train_cpu_s": train_cpu, "train_wall_s": train_wall, "eval_cpu_s": eval_cpu, "settings": settings,
        "log_px": ll.per_example.tolist(),
    }
    say(f"{model}: {row['bpd']:.3f} ± {row['bpd_stderr']:.3f} bits/dim (ELBO {row['elbo_bpd']:.3f}), "
        f"trained in {train_cpu:.0f} s CPU ({train_wall:.0f} s wall)")
    return row


def _paired(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    """r - base in bits/dim on the same test patches, ± the SE of the per-patch differences."""
    if base is None or r is base:
        return ""
    d = -(torch.tensor(r["log_px"], dtype=torch.float64) - torch.tensor(base["log_px"], dtype=torch.float64))
    d = d / (DIMS * math.log(2))
    return f"{float(d.mean()):+.3f} ± {float(d.std() / math.sqrt(d.numel())):.3f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| net | stochastic layers | parameters | epochs | test bits/dim (IS, K) | vs mlp (paired) "
             "| vs one layer (paired) | ELBO bits/dim | KL nats per layer (informative units) | train CPU s "
             "| train wall s |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    by_model = {r["model"]: r for r in rows}
    for r in rows:
        ladder = r["model"].endswith("-ladder")
        net = r["model"].removesuffix("-ladder")
        versus_mlp = _paired(r, by_model.get("mlp"))
        versus_one = _paired(r, by_model.get(net)) if ladder else ""
        sizes = ", ".join(str(x["size"]) for x in r["layers"])
        kl = " / ".join(("?" if x["kl"] is None else f"{x['kl']:.1f}") + f" ({x['informative']} of {x['size']})"
                        for x in r["layers"])
        lines.append(f"| {net} | {sizes} | {r['params'] / 1e6:.2f} M | {r['epochs']} | {r['bpd']:.3f} ± {r['bpd_stderr']:.3f} "
                     f"(K={r['k']}) | {versus_mlp} | {versus_one} | {r['elbo_bpd']:.3f} | {kl} | {r['train_cpu_s']:.0f} "
                     f"| {r['train_wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--test-n", type=int, default=500)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the rows (without per-example values) here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows.append(run_one(model, args, Path(tmp)))
            if args.json:  # after every model, so that a late failure keeps the finished rows
                Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "log_px"} for r in rows],
                                                      indent=2))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "log_px"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
