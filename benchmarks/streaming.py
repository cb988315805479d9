"""Training from disk (``--backed``) against training in memory: examples per second and peak memory.

Synthetic count data (negative-binomial counts of ``--genes`` genes, int32, in a ``.npy``
file) of growing size; for each file, one fresh subprocess trains the same tiny model (a
negative-binomial VAE, MLP genes-64-10, batch 128, one thread, seed 0) for ``--epochs``
epochs in each mode:

* ``memory``: the file loaded into memory (``load_data(path)``), the batches slices of it;
* ``backed``: the file left on disk (``load_data(path, backed=True)``), the batches streamed
  in shuffled blocks with a background reader thread (:mod:`vaelab.data.streaming`);
* ``backed-sync`` (with ``--sync``): the same, read in the training thread (no prefetch).

Throughput is that of the last epoch's steps: examples per second of wall time (the loop's
own ``examples_per_second``; reading included, validation not) and per CPU-second of the
process (``time.process_time`` between the ends of the last two epochs: validation and the
reader thread included). On a shared machine the CPU figure is the steadier. Peak memory is
the subprocess's resident high-water mark (``VmHWM``): loading, splitting and training
included. Every subprocess runs under ``VAELAB_MEMORY_LIMIT=--cap``, so a file whose
in-memory load would exceed the cap is refused in the memory mode (the one-line error is
shown) and trains backed.

    python benchmarks/streaming.py --sync                       # 50, 200, 800, 1600 MB, cap 700M
    python benchmarks/streaming.py --sizes 20,80 --cap 128M     # quick

The files are written once into ``--folder`` (default: a temporary folder, removed after).
The first epoch of each subprocess reads the file from wherever the kernel has it (just
written: mostly the page cache); the last epoch is the one measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_memory import peak_rss_mb  # benchmarks/eval_memory.py: the peak-RSS reader

HIDDEN, LATENT, BATCH = 64, 10, 128


def write_counts(path: Path, megabytes: float, genes: int, seed: int = 0) -> int:
    """A ``.npy`` file of about ``megabytes`` MB of int32 negative-binomial counts ``[N, genes]``
    (cells from ten types with their own mean profiles, library sizes log-normal), written in
    chunks so this process never holds it. Returns N."""
    import numpy as np

    n = int(megabytes * 1e6 / (4 * genes))
    rng = np.random.default_rng(seed)
    profiles = rng.dirichlet(np.full(genes, 0.3), size=10)  # [10, G] expression proportions
    partial = path.with_suffix(".partial.npy")  # renamed when complete: an interrupted write leaves no file
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.int32, shape=(n, genes))
    for a in range(0, n, 8192):
        b = min(a + 8192, n)
        types = rng.integers(0, 10, b - a)
        library = rng.lognormal(np.log(1500), 0.4, size=(b - a, 1))  # [B, 1]
        mean = library * profiles[types]  # [B, G]
        r = 2.0  # inverse dispersion
        out[a:b] = rng.negative_binomial(r, r / (r + mean)).astype(np.int32)
    out.flush()
    del out
    partial.rename(path)
    return n


def _worker(args: argparse.Namespace) -> None:
    """Train in this (fresh) process and print one JSON line."""
    import torch

    import vaelab.data.streaming as streaming
    from vaelab.build import build_model
    from vaelab.config import TrainConfig
    from vaelab.data import load_data
    from vaelab.errors import VaelabError
    from vaelab.training.loop import fit

    torch.set_num_threads(1)
    backed = args.worker != "memory"
    if args.worker == "backed-sync":
        streaming.PREFETCH = 0
    config = TrainConfig.from_mapping(dict(data=args.path, likelihood="negative-binomial", hidden=[HIDDEN],
                                           latent_dim=LATENT, batch_size=BATCH, binarize="none", backed=backed))
    t0 = time.perf_counter()
    try:
        data = load_data(args.path, **config.data_options())
    except VaelabError as err:
        print(json.dumps({"refused": str(err), "peak_mb": peak_rss_mb()}))
        return
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    vae = build_model(config.model_spec(data.shape))
    x = data.train
    vae.decoder.set_library_prior(streaming.row_totals(x)[:, None] if isinstance(x, streaming.RowStore) else x)
    marks: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(vae, data, run_dir, epochs=args.epochs, batch_size=BATCH, seed=0, patience=0, progress=False,
                     on_epoch=lambda record: marks.append(time.process_time()))
    last = result.metrics[-1]
    n = len(data.train)
    cpu = marks[-1] - marks[-2] if len(marks) > 1 else float("nan")
    print(json.dumps({"n_train": n, "load_s": load_s, "wall_eps": last["examples_per_second"], "cpu_eps": n / cpu,
                      "val_elbo": last["val_elbo"], "peak_mb": peak_rss_mb()}))


def _run(mode: str, path: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "VAELAB_MEMORY_LIMIT": args.cap, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", mode, "--path", str(path), "--epochs", str(args.epochs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50,200,800,1600", help="file sizes in MB, comma-separated")
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--cap", default="700M", help="VAELAB_MEMORY_LIMIT of every run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sync", action="store_true", help="also train backed without the reader thread")
    parser.add_argument("--folder", default=None, help="where the files are written (kept); default: a temporary one")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="vaelab-streaming-"))
    folder.mkdir(parents=True, exist_ok=True)
    modes = ["memory", "backed"] + (["backed-sync"] if args.sync else [])
    rows = []
    print(f"cap VAELAB_MEMORY_LIMIT={args.cap}; NB counts of {args.genes} genes, int32; MLP {args.genes}-{HIDDEN}-"
          f"{LATENT}, batch {BATCH}, {args.epochs} epochs, 1 thread; started {time.strftime('%H:%M:%S')}", flush=True)
    try:
        for size in [float(s) for s in args.sizes.split(",")]:
            path = folder / f"counts-{size:g}MB.npy"
            if not path.exists():
                write_counts(path, size, args.genes)
            for mode in modes:
                r = {"file_mb": path.stat().st_size / 1e6, "mode": mode, **_run(mode, path, args)}
                rows.append(r)
                print(json.dumps(r), flush=True)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{'file MB':>8} {'mode':>12} {'rows':>8} {'ex/s wall':>10} {'ex/s CPU':>9} {'backed/mem':>10} "
          f"{'peak RSS MB':>11}  val ELBO")
    memory = {r["file_mb"]: r for r in rows if r["mode"] == "memory" and "refused" not in r}
    for r in rows:
        if "refused" in r:
            print(f"{r['file_mb']:8.0f} {r['mode']:>12} {'refused':>8} {'':>10} {'':>9} {'':>10} {r['peak_mb']:11.0f}  "
                  f"({r['refused'][:90]}...)")
            continue
        ref = memory.get(r["file_mb"])
        ratio = ("" if ref is None or r is ref
                 else f"{r['cpu_eps'] / ref['cpu_eps']:.2f}/{r['wall_eps'] / ref['wall_eps']:.2f}")
        print(f"{r['file_mb']:8.0f} {r['mode']:>12} {r['n_train']:8d} {r['wall_eps']:10.0f} {r['cpu_eps']:9.0f} "
              f"{ratio:>10} {r['peak_mb']:11.0f}  {r['val_elbo']:.2f}")
    print("(backed/mem: CPU ratio / wall ratio of examples per second)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
