"""Speed: vaelab's training loop against a plain PyTorch loop, in one process, epochs interleaved.

Both train the classic VAE (MLP 784-400-20, Bernoulli likelihood, Adam 1e-3, dynamic
binarization) on the ``mnist5k`` training split (3,600 digits, ``vaelab.data.load_data``):

* vaelab: ``vaelab.training.loop.fit``, the function ``vaelab train`` runs, with its defaults;
* plain: ``benchmarks/reference.py``, PyTorch's official VAE example (eager, a DataLoader over
  the training tensor, a ``torch.bernoulli`` of each batch, ``torch.optim.Adam``).

The two alternate epoch by epoch (vaelab first in even repeats, plain first in odd ones) and a
large ``torch.mm`` is timed between them, so a machine shared with other work slows all
three alike and the ratios stay meaningful when the absolute numbers do not.

Examples per second count the training steps of an epoch (vaelab's per-epoch ``seconds``, which
leave out its validation and checkpoint; those are reported separately as ``all-in``). FLOPs
are counted analytically: ``6 x MACs`` per example for the linear layers (2 forward, 4
backward), the usual convention (autograd skips the first layer's input gradient, so the work
actually done is about 84% of that). The achieved FLOP rate is given as a fraction of the
measured ``torch.mm`` rate. The test ELBO of both models (final weights, one posterior sample,
the same fixed binarization of the 1,000 test digits) shows that both learned the same thing.

Run::

    python benchmarks/speed.py                       # batch 128, 5 epochs, 3 repeats
    python benchmarks/speed.py --batch-size 1024 --epochs 10 --json speed-1024.json
    python benchmarks/speed.py --threads 1           # torch.set_num_threads(1) for everything
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_elbo, reference_epochs  # noqa: E402

from vaelab.build import build_vae  # noqa: E402
from vaelab.data import binarize, load_data  # noqa: E402
from vaelab.evaluation import dataset_elbo  # noqa: E402
from vaelab.runs import TEST_BINARIZATION_SEED  # noqa: E402
from vaelab.training.loop import fit  # noqa: E402


def mm_rate(size: int = 2048, repeats: int = 1) -> float:
    """FLOP/s of ``torch.mm`` on two ``size x size`` float32 matrices (best of three timings)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 * repeats / best


def macs_per_example(model: nn.Module) -> int:
    """Multiply-accumulates of one example through every linear layer (the forward pass)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def one_repeat(r: int, data: Any, x_test: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Train both loops once, their epochs alternating; the timings of every epoch."""
    x_flat = data.train.reshape(data.train.shape[0], -1)
    plain = reference_epochs(x_flat, epochs=args.epochs, batch_size=args.batch_size, seed=r)
    plain_seconds: list[float] = []
    mm: list[float] = []
    callback_seconds = [0.0]
    plain_model: list[nn.Module] = []

    def plain_epoch() -> None:
        t0 = time.perf_counter()
        mm.append(mm_rate(args.mm_size))
        model, seconds = next(plain)
        plain_model[:] = [model]
        plain_seconds.append(seconds)
        callback_seconds[0] += time.perf_counter() - t0

    plain_first = r % 2 == 1
    if plain_first:
        plain_epoch()
    callback_seconds[0] = 0.0  # only the time spent inside fit is taken off its wall time

    def on_epoch(record: dict[str, Any]) -> None:
        if len(plain_seconds) < args.epochs:
            plain_epoch()

    torch.manual_seed(r)
    vae = build_vae(data.shape, latent_dim=20, hidden=[400], likelihood="bernoulli")
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        result = fit(vae, data, run_dir, epochs=args.epochs, batch_size=args.batch_size, seed=r,
                     binarize=True, progress=False, on_epoch=on_epoch, compile=args.compile)
        fit_seconds = time.perf_counter() - t0 - callback_seconds[0]
    vaelab_seconds = [m["seconds"] for m in result.metrics]

    vae.eval()
    torch.manual_seed(0)
    v_elbo = dataset_elbo(vae, x_test).elbo
    ref = plain_model[0].eval()
    torch.manual_seed(0)
    p_elbo = reference_elbo(ref, x_test.reshape(x_test.shape[0], -1))["elbo"]
    return {"repeat": r, "plain_first": plain_first, "vaelab_epoch_seconds": vaelab_seconds,
            "vaelab_all_in_seconds": fit_seconds, "plain_epoch_seconds": plain_seconds,
            "mm_flops": mm, "vaelab_test_elbo": v_elbo, "plain_test_elbo": p_elbo,
            "macs_per_example": macs_per_example(vae), "plain_macs_per_example": macs_per_example(ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5, help="epochs per training run")
    ap.add_argument("--repeats", type=int, default=3, help="training runs of each loop")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads for both loops (0: default)")
    ap.add_argument("--compile", action="store_true", help="vaelab with compile=True")
    ap.add_argument("--skip-first", type=int, default=1,
                    help="epochs of each run left out of the rates (warm-up; compilation)")
    ap.add_argument("--mm-size", type=int, default=2048)
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 <= args.skip_first < args.epochs:
        ap.error("--skip-first must be smaller than --epochs")

    data = load_data("mnist5k")
    n = data.train.shape[0]
    x_test = binarize(data.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; mnist5k: {n} training examples; "
          f"batch {args.batch_size}, {args.epochs} epochs x {args.repeats} repeats"
          f"{', vaelab compiled' if args.compile else ''}", flush=True)

    runs = []
    for r in range(args.repeats):
        run = one_repeat(r, data, x_test, args)
        runs.append(run)
        k = args.skip_first
        v, p = sum(run["vaelab_epoch_seconds"][k:]), sum(run["plain_epoch_seconds"][k:])
        print(f"repeat {r}: vaelab {n * (args.epochs - k) / v:8.0f} ex/s, plain {n * (args.epochs - k) / p:8.0f} ex/s, "
              f"ratio {p / v:.2f}; test ELBO {run['vaelab_test_elbo']:.2f} vs {run['plain_test_elbo']:.2f}",
              flush=True)

    k = args.skip_first
    counted = n * (args.epochs - k)
    v_rate = [counted / sum(run["vaelab_epoch_seconds"][k:]) for run in runs]
    p_rate = [counted / sum(run["plain_epoch_seconds"][k:]) for run in runs]
    all_in = [n * args.epochs / run["vaelab_all_in_seconds"] for run in runs]
    p_all = [n * args.epochs / sum(run["plain_epoch_seconds"]) for run in runs]
    ratios = [v / p for v, p in zip(v_rate, p_rate)]
    # the headline: plain/vaelab seconds of neighbouring epochs (same moment, same load)
    pairs = sorted(p / v for run in runs for v, p in zip(run["vaelab_epoch_seconds"][k:], run["plain_epoch_seconds"][k:]))
    q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
    mm = statistics.median(f for run in runs for f in run["mm_flops"])
    flops = 6 * runs[0]["macs_per_example"]
    v_elbo = statistics.mean(run["vaelab_test_elbo"] for run in runs)
    p_elbo = statistics.mean(run["plain_test_elbo"] for run in runs)
    med = statistics.median
    summary = {
        "batch_size": args.batch_size, "epochs": args.epochs, "repeats": args.repeats, "skip_first": k,
        "threads": torch.get_num_threads(), "compile": args.compile, "torch": torch.__version__,
        "n_train": n, "flops_per_example": flops, "mm_size": args.mm_size, "mm_flops_median": mm,
        "vaelab_examples_per_second": med(v_rate), "plain_examples_per_second": med(p_rate),
        "ratio_epoch_pairs_median": med(pairs), "ratio_epoch_pairs_quartiles": [q1, q3],
        "ratio_epoch_pairs": pairs, "ratio_per_repeat": ratios,
        "vaelab_all_in_examples_per_second": med(all_in), "plain_all_examples_per_second": med(p_all),
        "vaelab_fraction_of_mm": med(v_rate) * flops / mm, "plain_fraction_of_mm": med(p_rate) * flops / mm,
        "vaelab_test_elbo": v_elbo, "plain_test_elbo": p_elbo, "runs": runs,
    }
    print()
    print(f"matrix multiply {args.mm_size}x{args.mm_size} float32: {mm / 1e9:.1f} GFLOP/s (median of "
          f"{sum(len(run['mm_flops']) for run in runs)} timings between epochs)")
    print(f"model: {flops / 1e6:.2f} MFLOP per example (6 x {runs[0]['macs_per_example']:,} MACs)")
    print(f"{'':16}{'examples/s':>12}{'GFLOP/s':>10}{'of mm':>8}{'test ELBO':>11}")
    for name, rate, elbo in (("vaelab", med(v_rate), v_elbo), ("plain PyTorch", med(p_rate), p_elbo)):
        print(f"{name:16}{rate:12.0f}{rate * flops / 1e9:10.1f}{rate * flops / mm:8.0%}{elbo:11.2f}")
    print(f"{'vaelab all-in':16}{med(all_in):12.0f}   (with validation and checkpoints each epoch)")
    print(f"ratio vaelab / plain: {med(pairs):.2f}x (median of {len(pairs)} neighbouring epoch pairs, "
          f"quartiles {q1:.2f}-{q3:.2f}; per repeat {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"test ELBO difference vaelab - plain: {v_elbo - p_elbo:+.2f} nats")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
