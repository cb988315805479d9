"""Memory and speed of log p(x) with K = 5000 importance samples on Fashion-MNIST's test set.

vaelab's :func:`~vaelab.evaluation.log_likelihood` draws the K samples ``k_chunk`` at a time
and combines them with a running logsumexp, so its memory is set by ``batch_size * k_chunk``
and does not grow with K or with the number of examples. The comparison is the plain
PyTorch computation written by hand: all K samples at once for a small batch of examples.

Each method runs in a fresh subprocess, so its peak resident memory is its own: torch, the
model, the test images, and the estimate. It is read from ``VmHWM`` in /proc/self/status (the
high-water mark of this process image; ``ru_maxrss`` would also count the parent's pages
that a fork copied before ``exec``), else ``ru_maxrss``. The script fails (exit status 1)
when vaelab's peak goes over ``--ceiling-mb``. Throughput is given per second of wall time
and per CPU-second (``time.process_time``): on a shared machine the latter is the steadier.

    python benchmarks/eval_memory.py --n 500                 # a quick run on 500 test images
    python benchmarks/eval_memory.py                         # all 10,000 (long on a CPU)
    python benchmarks/eval_memory.py --run runs/my-run       # a trained run instead

Without ``--run`` it first trains the classic MLP 784-400-20 (Bernoulli likelihood, dynamic
binarization) on Fashion-MNIST for ``--epochs`` epochs (Debian: apt install
dataset-fashion-mnist; else it is downloaded once). The test images are binarized once with
vaelab's fixed seed, as ``vaelab eval`` does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process image's peak resident memory in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import numpy as np
    import torch

    from vaelab.runs import load

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.run, device="cpu")
    x = torch.from_numpy(np.load(args.x)).float().reshape(-1, *model.x_shape)  # [N, 1, 28, 28]
    base = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.worker == "vaelab":
        from vaelab.evaluation import log_likelihood

        ll = log_likelihood(model.vae, x, args.k, batch_size=args.batch_size, k_chunk=args.k_chunk)
        values = ll.per_example
    else:
        values = _plain_log_px(model.vae, x, args.k, args.naive_batch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({
        "method": args.worker, "n": x.shape[0], "k": args.k, "seconds": seconds, "cpu_seconds": cpu,
        "examples_per_s": x.shape[0] / seconds, "examples_per_cpu_s": x.shape[0] / cpu,
        "log_px": float(values.double().mean()),
        "rss_before_mb": base, "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
    }))


def _plain_log_px(vae, x, k: int, batch: int):
    """The same estimate in plain PyTorch: every one of the K samples at once per batch."""
    import torch
    import torch.nn.functional as F

    enc, dec = vae.encoder.net, vae.decoder.net  # MLPs: x -> [B, 2D], z -> [*, 784] logits
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = x[i : i + batch].reshape(x[i : i + batch].shape[0], -1)  # [B, 784]
            mu, raw = enc(xb).chunk(2, dim=-1)  # [B, D] each
            sigma = F.softplus(raw) + vae.encoder.min_scale
            eps = torch.randn(k, *mu.shape)  # [K, B, D]
            z = mu + sigma * eps
            logits = dec(z.reshape(-1, z.shape[-1])).reshape(k, xb.shape[0], -1)  # [K, B, 784]
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * eps**2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
            lw = (log_px_z + log_pz - log_qz).double()  # [K, B]
            out.append(torch.logsumexp(lw, 0) - math.log(k))
    return torch.cat(out)


def _train(out: str, epochs: int) -> Path:
    from vaelab.runs import train

    name = f"fashion-mlp-{int(time.time())}"
    print(f"training MLP 784-400-20 on fashion-mnist for {epochs} epochs -> {out}/{name}", flush=True)
    model, _ = train(data="fashion-mnist", hidden=[400], latent_dim=20, epochs=epochs, patience=0,
                     eval_k=0, device="cpu", out=out, name=name, figures=False, progress=False,
                     log=lambda m: None)
    return model.run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a trained run folder (default: train one)")
    ap.add_argument("--n", type=int, default=None, help="use the first N test images (default: all)")
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=100, help="vaelab: examples per forward pass")
    ap.add_argument("--k-chunk", type=int, default=100, help="vaelab: samples per forward pass")
    ap.add_argument("--naive-batch", type=int, default=8, help="plain PyTorch: examples per pass (all K at once)")
    ap.add_argument("--ceiling-mb", type=float, default=768.0, help="vaelab's peak RSS must stay below this")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs when no --run is given")
    ap.add_argument("--out", default="/tmp/vaelab-bench", help="where a trained run goes")
    ap.add_argument("--skip-plain", action="store_true", help="measure vaelab only")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each measurement (0: torch's default)")
    ap.add_argument("--worker", choices=["vaelab", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--x", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)

    import numpy as np

    from vaelab.runs import load

    run = Path(args.run) if args.run else _train(args.out, args.epochs)
    x_test, _ = load(run, device="cpu").test_set()
    x_test = x_test[: args.n] if args.n else x_test
    with tempfile.TemporaryDirectory() as tmp:
        x_path = Path(tmp) / "x.npy"
        np.save(x_path, x_test.numpy())
        results = []
        for method in ["vaelab"] + ([] if args.skip_plain else ["plain"]):
            cmd = [sys.executable, __file__, "--worker", method, "--run", str(run), "--x", str(x_path),
                   "--k", str(args.k), "--batch-size", str(args.batch_size), "--k-chunk", str(args.k_chunk),
                   "--naive-batch", str(args.naive_batch), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode != 0:
                sys.exit(f"{method} failed:\n{done.stderr}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    n = results[0]["n"]
    print(f"\nlog p(x) with K={args.k} on {n} Fashion-MNIST test images (run {run})")
    print(f"{'method':<34} {'examples/s':>11} {'per CPU-s':>10} {'peak RSS MB':>12} {'RSS before MB':>14} "
          f"{'mean log p(x)':>14}")
    labels = {"vaelab": f"vaelab (batch {args.batch_size}, k_chunk {args.k_chunk})",
              "plain": f"plain PyTorch (batch {args.naive_batch}, all K)"}
    for r in results:
        print(f"{labels[r['method']]:<34} {r['examples_per_s']:>11.2f} {r['examples_per_cpu_s']:>10.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['rss_before_mb']:>14.0f} {r['log_px']:>14.3f}")
    peak = results[0]["peak_rss_mb"]
    ok = peak < args.ceiling_mb
    print(f"vaelab peak RSS {peak:.0f} MB {'<' if ok else '>='} ceiling {args.ceiling_mb:.0f} MB: "
          f"{'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
