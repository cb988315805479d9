"""vaelab against scvi-tools (scVI, Lopez et al. 2018) on the same single-cell counts.

Both sides fit the same model, the scVI model, to the same cells and are scored on the same
held-out cells:

    z ~ N(0, I_10),   rho = softmax(f(z)),   x_g ~ NB(l rho_g, theta_g)   (or ZINB)
    q(z|x) = N(mu(log1p x), sigma^2(log1p x)),   l = sum_g x_g observed (not a latent)

Equal terms (printed with the results and written to ``--json``):

* data: ``vaelab.data.load_data(--data, val_fraction=0, test_fraction=--test-fraction,
  seed=--seed, counts=True)``; its training and test count matrices go to both sides as the
  same ``.npy`` files (scVI gets ``AnnData(train)``, ``train_size=1.0``: no validation cells on
  either side, the final weights scored on both); ``--top-genes N`` keeps the N genes of
  highest variance over the training cells (the test cells play no part in the choice);
* model: latent dimension 10, one hidden layer of 128 in the encoder and in the decoder, the
  encoder reading log1p(x), library size observed (scVI's ``use_observed_lib_size=True``), one
  inverse dispersion per gene (``dispersion="gene"`` / vaelab's ``--dispersion feature``), NB or
  ZINB (``--likelihood``); scVI keeps its own layer recipe (batch norm and dropout 0.1 in the
  encoder, batch norm in the decoder: its defaults; ``--scvi-dropout``, ``--scvi-batch-norm``
  change them), vaelab its plain MLP (Linear-ReLU-Linear); scVI starts its per-gene log theta
  (``px_r``) at N(0, 1) draws, vaelab at 0 (``--scvi-theta-init zero`` starts scVI there too);
* training: the ELBO with one posterior sample and the closed-form KL, KL weight 1 from the
  first step on both sides (no warm-up: scVI's ``n_epochs_kl_warmup=None``,
  ``n_steps_kl_warmup=None``, so its ``kl_weight`` is ``max_kl_weight=1``; its default would
  ramp the KL up over 400 epochs), the same epochs and batch size (128), Adam with lr 1e-3,
  eps 1e-8 and no weight decay on both (scVI's defaults, eps 0.01 and weight decay 1e-6,
  with ``--scvi-optimizer scvi``), no early stopping, one thread (``torch.set_num_threads``)
  on both sides;
* log p(x) per test cell by importance sampling from the encoder with the same K on both
  sides: vaelab's ``log_likelihood`` and scVI's ``get_marginal_ll(return_mean=False)``, one
  value per cell (its ``return_mean=True`` averages minibatch means unweighted). scvi-tools
  1.4.2 returns log p (higher is better; its ``VAE.marginal_ll`` is
  ``logsumexp_k(log p(z_k) + log p(x|z_k,l) - log q(z_k|x)) - log K``, the estimator vaelab
  uses); ``benchmarks/scvi_side.py`` recomputes it from scVI's module with fresh samples and
  the script checks that the two agree (a check of the sign and of the cell order);
* reconstruction error per test cell: -E_q log p(x|z, l) in nats per cell (summed over
  genes), the mean over K posterior samples (as many as for log p(x)) on both sides;
* speed: CPU and wall time (``time.process_time`` and ``time.perf_counter``) of each epoch,
  as the interval between the ends of consecutive epochs (all of an epoch's cost: steps,
  logging, vaelab's checkpoint files), the median over epochs 2..E; the whole training call;
  and the training steps alone (vaelab's per-epoch ``seconds``, scVI's epoch start-to-end
  hooks), wall. With one thread, CPU time is the work done whatever else runs on the machine:
  the speed target is judged on it (wall times on a shared machine swing with others' jobs);
* memory: the peak resident set (``VmHWM``) of each side's process during training (the peak
  is reset just before it, ``/proc/self/clear_refs``) and over the whole process (imports,
  data, evaluation); each side runs in its own fresh process (vaelab in this Python, scVI in
  ``--scvi-python``), reading the same ``.npy`` files.

The comparison of log p(x) is paired over test cells: the mean of the per-cell differences
with its standard error (the cells are the same, so cell-to-cell variation cancels). Targets
(issue 13): vaelab at least as good in log p(x) (difference > -2 paired SE) and at least 1.5x
faster per epoch (CPU time).

Run (needs a virtual environment with scvi-tools 1.4.2, see the README)::

    python benchmarks/scvi_tools.py --data pbmc68k --epochs 200
    python benchmarks/scvi_tools.py --data pbmc68k --likelihood zinb --json scvi-zinb.json
    python benchmarks/scvi_tools.py --data pbmc68k --skip-scvi --epochs 1   # vaelab side only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from vaelab.model import VAE

HERE = Path(__file__).resolve().parent
SCVI_PYTHON = "/work/venvs/scvi/bin/python"
LIKELIHOODS = {"nb": "negative-binomial", "zinb": "zinb", "poisson": "poisson"}


def memory_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process in KiB, from /proc (Linux; -1 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak() -> int:
    """The peak resident set so far (KiB), then reset it to the current one (Linux's
    ``/proc/self/clear_refs``), so the next reading is the peak of what runs in between."""
    peak = memory_kib("VmHWM")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return peak


@torch.no_grad()
def score(vae: "VAE", x: torch.Tensor, k: int, *, batch_size: int = 64, k_chunk: int = 100) -> dict[str, list[float]]:
    """log p(x) (vaelab's ``log_likelihood``, K samples) and -E_q log p(x|z) (K fresh samples)
    of every row of ``x``, in nats per example."""
    from vaelab.evaluation import log_likelihood

    ll = log_likelihood(vae, x, k, batch_size=batch_size, k_chunk=k_chunk)
    rec = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        total = torch.zeros(xb.shape[0], dtype=torch.float64)
        for done in range(0, k, k_chunk):
            total += vae.trace(xb, min(k_chunk, k - done)).log_likelihood.double().sum(0)  # [B]
        rec.append(-total / k)
    return {"log_likelihood": ll.per_example.double().tolist(), "ess": ll.ess.double().tolist(),
            "reconstruction_error": torch.cat(rec).tolist()}


def vaelab_side(train: np.ndarray, test: np.ndarray, *, likelihood: str = "nb", epochs: int = 200,
                batch_size: int = 128, hidden: int = 128, layers: int = 1, latent_dim: int = 10, lr: float = 1e-3,
                k: int = 1000, seed: int = 0, threads: int = 1, checkpoint_every: float = 0.0) -> dict[str, Any]:
    """Train and score vaelab's scVI-like model on ``train`` / ``test`` counts ``[N, G]``; the
    timings, scores and memory as a JSON-ready dict (see the module docstring)."""
    from vaelab.build import build_vae
    from vaelab.data import load_data
    from vaelab.training.loop import fit

    if threads > 0:
        torch.set_num_threads(threads)
    data = load_data({"train": train, "test": test}, val_fraction=0.0, seed=seed, counts=True)
    rss_loaded = memory_kib("VmRSS")
    torch.manual_seed(seed)
    vae = build_vae(data.shape, latent_dim=latent_dim, hidden=[hidden] * layers, likelihood=LIKELIHOODS[likelihood],
                    **({} if likelihood == "poisson" else {"dispersion": "feature"}))
    vae.decoder.set_library_prior(data.train)  # only for sampling; log p(x|z, l) reads l off x
    ends_wall: list[float] = []  # seconds from the call to fit to the end of each epoch
    ends_cpu: list[float] = []

    def on_epoch(record: dict[str, Any]) -> None:
        ends_wall.append(time.perf_counter() - t0)
        ends_cpu.append(time.process_time() - c0)

    # torch.optim imports torch._dynamo on first use (about 1.5 s of CPU); scvi-tools' imports
    # (lightning) pay that before its training starts, so vaelab pays it here too, untimed
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    setup_cpu = time.process_time()  # the process so far: interpreter, imports, data
    peak_setup = reset_peak()  # the peak so far; then the peak of training alone
    with tempfile.TemporaryDirectory() as run_dir:
        t0, c0 = time.perf_counter(), time.process_time()
        result = fit(vae, data, run_dir, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False,
                     on_epoch=on_epoch, checkpoint_every=checkpoint_every)
        train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_train = reset_peak()
    vae.eval()
    torch.manual_seed(seed + 1)
    t0 = time.perf_counter()
    scores = score(vae, data.test, k)
    return {
        "versions": {"vaelab": _version("vaelab"), "torch": torch.__version__, "numpy": np.__version__},
        "settings": {"likelihood": LIKELIHOODS[likelihood], "dispersion": None if likelihood == "poisson" else "feature",
                     "epochs": epochs, "batch_size": batch_size, "hidden": [hidden] * layers, "latent_dim": latent_dim,
                     "lr": lr, "k": k, "seed": seed, "threads": torch.get_num_threads(),
                     "checkpoint_every": checkpoint_every,
                     "n_parameters": sum(p.numel() for p in vae.parameters())},
        "n_train": int(data.train.shape[0]), "n_test": int(data.test.shape[0]),
        "epoch_steps_wall": [m["seconds"] for m in result.metrics],
        "epoch_end_wall": ends_wall, "epoch_end_cpu": ends_cpu,
        "train_wall": train_wall, "train_cpu": train_cpu, "train_elbo": [m["train_elbo"] for m in result.metrics],
        **scores, "score_seconds": time.perf_counter() - t0,
        "setup_cpu": setup_cpu, "process_cpu": time.process_time(),
        "rss_after_load_kib": rss_loaded, "peak_rss_train_kib": peak_train,
        "peak_rss_kib": max(peak_setup, peak_train, memory_kib("VmHWM")),
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def per_epoch(ends: list[float], skip: int = 1) -> float:
    """The median interval between the ends of consecutive epochs, leaving out the first
    ``skip`` epochs (set-up, warm-up); ``ends`` are seconds from the start of training."""
    gaps = np.diff([0.0, *ends])[skip:]
    return float(np.median(gaps)) if len(gaps) else math.nan


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """The mean of a_i - b_i and its standard error over the n pairs."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan


def mean_se(a: list[float]) -> tuple[float, float]:
    x = np.asarray(a, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def _run(command: list[str], log: Path, what: str) -> None:
    """Run a side in its own process (output to ``log``); its log's tail on failure."""
    with open(log, "w") as out:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # scvi-tools and lightning are chatty
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        sys.exit(f"the {what} side failed (exit {code}); the end of its log {log}:\n{tail}")


def _side_args(args: argparse.Namespace) -> list[str]:
    return ["--likelihood", args.likelihood, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--hidden", str(args.hidden), "--layers", str(args.layers), "--latent-dim", str(args.latent_dim),
            "--lr", str(args.lr), "--k", str(args.k), "--seed", str(args.seed), "--threads", str(args.threads)]


def table(ours: dict[str, Any], theirs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The markdown table of the two sides and the summary numbers behind it."""
    def row(name: str, side: dict[str, Any], wall: float, cpu: float) -> str:
        ll, ll_se = mean_se(side["log_likelihood"])
        rec, rec_se = mean_se(side["reconstruction_error"])
        return (f"| {name} | {ll:.2f} ± {ll_se:.2f} | {rec:.2f} ± {rec_se:.2f} | {1e3 * wall:.1f} | {1e3 * cpu:.1f} "
                f"| {side['train_wall']:.1f} / {side['train_cpu']:.1f} "
                f"| {side['peak_rss_train_kib'] / 1024:.0f} / {side['peak_rss_kib'] / 1024:.0f} "
                f"| {side['settings']['n_parameters']:,} |")

    summary: dict[str, Any] = {}
    v_wall, v_cpu = per_epoch(ours["epoch_end_wall"]), per_epoch(ours["epoch_end_cpu"])
    lines = ["| | log p(x) per cell | -E_q log p(x\\|z) | wall ms/epoch | CPU ms/epoch | training call s, wall / CPU "
             "| peak RSS MiB, training / process | parameters |", "|---|---|---|---|---|---|---|---|",
             row("vaelab", ours, v_wall, v_cpu)]
    summary["vaelab"] = {"wall_per_epoch": v_wall, "cpu_per_epoch": v_cpu}
    if theirs is not None:
        s_wall, s_cpu = per_epoch(theirs["epoch_end_wall"]), per_epoch(theirs["epoch_end_cpu"])
        lines.append(row("scvi-tools", theirs, s_wall, s_cpu))
        d, d_se = paired(ours["log_likelihood"], theirs["log_likelihood"])
        r, r_se = paired(ours["reconstruction_error"], theirs["reconstruction_error"])
        check, check_se = paired(theirs["log_likelihood"], theirs["marginal_ll_check"])
        # the training steps alone: vaelab's per-epoch ``seconds`` (fit's own, without its files), scVI's
        # epoch start-to-end hooks (without Lightning's between-epoch work)
        v_steps = float(np.median(ours["epoch_steps_wall"][1:] or ours["epoch_steps_wall"]))
        s_steps = float(np.median(theirs["epoch_hook_wall"][1:] or theirs["epoch_hook_wall"]))
        summary["vaelab"]["steps_wall_per_epoch"] = v_steps
        summary["scvi"] = {"wall_per_epoch": s_wall, "cpu_per_epoch": s_cpu, "steps_wall_per_epoch": s_steps}
        summary["speedup_steps_wall"] = s_steps / v_steps
        summary.update({
            "log_likelihood_difference": d, "log_likelihood_difference_se": d_se,
            "reconstruction_difference": r, "reconstruction_difference_se": r_se,
            "speedup_wall": s_wall / v_wall, "speedup_cpu": s_cpu / v_cpu,
            "speedup_training_call": theirs["train_wall"] / ours["train_wall"],
            "scvi_marginal_ll_check": check, "scvi_marginal_ll_check_se": check_se,
            "target_log_likelihood_met": d > -2 * d_se, "target_speed_met": s_cpu / v_cpu >= 1.5,
        })
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="pbmc68k", help="a vaelab data source holding counts (built-in name or file)")
    ap.add_argument("--likelihood", choices=tuple(LIKELIHOODS), default="nb")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--latent-dim", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--k", type=int, default=1000, help="importance samples per test cell (both sides)")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--top-genes", type=int, default=0,
                    help="keep the N genes of highest variance over the training cells (0: all genes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on both sides")
    ap.add_argument("--scvi-python", default=SCVI_PYTHON, help="a Python with scvi-tools 1.4.2")
    ap.add_argument("--scvi-optimizer", choices=("matched", "scvi"), default="matched",
                    help="matched: Adam lr, eps 1e-8, no weight decay (as vaelab); scvi: scVI's defaults")
    ap.add_argument("--scvi-dropout", type=float, default=0.1, help="scVI's dropout_rate (its default)")
    ap.add_argument("--scvi-batch-norm", default="both", choices=("both", "encoder", "decoder", "none"),
                    help="scVI's use_batch_norm (its default)")
    ap.add_argument("--scvi-theta-init", choices=("randn", "zero"), default="randn",
                    help="scVI's log theta (px_r) at the start: randn, its own N(0, 1) per gene; zero, as vaelab's")
    ap.add_argument("--skip-scvi", action="store_true", help="run the vaelab side only")
    ap.add_argument("--checkpoint-every", type=float, default=0.0,
                    help="vaelab's --checkpoint-every: seconds between checkpoint writes (0, its default: every "
                         "epoch; scVI writes none while training)")
    ap.add_argument("--json", default=None, help="write every number (per cell and per epoch) to this file")
    ap.add_argument("--side", choices=("vaelab",), default=None, help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--train", help=argparse.SUPPRESS)
    ap.add_argument("--test", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side == "vaelab":
        result = vaelab_side(np.load(args.train), np.load(args.test), likelihood=args.likelihood, epochs=args.epochs,
                             batch_size=args.batch_size, hidden=args.hidden, layers=args.layers,
                             latent_dim=args.latent_dim, lr=args.lr, k=args.k, seed=args.seed, threads=args.threads,
                             checkpoint_every=args.checkpoint_every)
        Path(args.out).write_text(json.dumps(result))
        return

    if not args.skip_scvi and not Path(args.scvi_python).is_file():
        sys.exit(f"no Python at --scvi-python {args.scvi_python}; make one with scvi-tools 1.4.2: python3.11 -m venv "
                 "VENV && VENV/bin/pip install torch==2.13.0 && VENV/bin/pip install scvi-tools==1.4.2 (CPU torch first), "
                 "then pass --scvi-python VENV/bin/python, or --skip-scvi")
    from vaelab.data import load_data

    data = load_data(args.data, val_fraction=0.0, test_fraction=args.test_fraction, seed=args.seed, counts=True)
    if data.kind != "counts" or len(data.shape) != 1:
        sys.exit(f"data '{args.data}' is {data.kind} of shape {data.shape}; this benchmark needs a cells x genes count matrix")
    train, test = data.train.numpy(), data.test.numpy()
    if 0 < args.top_genes < train.shape[1]:  # chosen on the training cells alone: the test cells play no part
        keep = np.sort(np.argsort(-train.var(axis=0), kind="stable")[: args.top_genes])
        train, test = train[:, keep], test[:, keep]
        empty = int((train.sum(1) == 0).sum() + (test.sum(1) == 0).sum())
        if empty:
            sys.exit(f"{empty} cells have no counts in the {args.top_genes} genes kept; keep more genes (--top-genes)")
    n, g = train.shape
    genes = f" (the {g} of highest variance in training)" if g < data.shape[0] else ""
    print(f"data {args.data}: {n} training and {test.shape[0]} test cells x {g} genes{genes} (vaelab's split, seed "
          f"{args.seed}); {LIKELIHOODS[args.likelihood]}, latent 10 x hidden {args.hidden} x {args.layers} layer(s), "
          f"{args.epochs} epochs, batch {args.batch_size}, K = {args.k}, {args.threads} thread(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        np.save(tmp / "train.npy", train)
        np.save(tmp / "test.npy", test)
        files = ["--train", str(tmp / "train.npy"), "--test", str(tmp / "test.npy")]
        t0 = time.perf_counter()
        _run([sys.executable, str(Path(__file__).resolve()), "--side", "vaelab", *files, "--out", str(tmp / "vaelab.json"),
              *_side_args(args), "--checkpoint-every", str(args.checkpoint_every)], tmp / "vaelab.log", "vaelab")
        ours = json.loads((tmp / "vaelab.json").read_text())
        print(f"vaelab side done in {time.perf_counter() - t0:.0f} s", flush=True)
        theirs = None
        if not args.skip_scvi:
            t0 = time.perf_counter()
            _run([args.scvi_python, str(HERE / "scvi_side.py"), *files, "--out", str(tmp / "scvi.json"), *_side_args(args),
                  "--optimizer", args.scvi_optimizer, "--dropout", str(args.scvi_dropout),
                  "--batch-norm", args.scvi_batch_norm, "--px-r-init", args.scvi_theta_init], tmp / "scvi.log", "scvi-tools")
            theirs = json.loads((tmp / "scvi.json").read_text())
            theirs["log_likelihood"] = theirs.pop("marginal_ll")
            print(f"scvi-tools side done in {time.perf_counter() - t0:.0f} s", flush=True)
    text, summary = table(ours, theirs)
    print()
    print(text)
    print()
    versions = dict(ours["versions"])
    if theirs is not None:
        versions.update({f"scvi side: {k}": v for k, v in theirs["versions"].items()})
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if theirs is not None:
        st = theirs["settings"]
        print(f"scvi-tools: dropout {st['dropout']}, batch norm {st['batch_norm']}, optimizer {st['optimizer']} "
              f"({st['plan_kwargs']}), px_r init {st['px_r_init']}, train_size 1.0, dispersion gene, observed library")
    if theirs is not None:
        s = summary
        print(f"log p(x), vaelab - scvi-tools, paired over {len(ours['log_likelihood'])} test cells: "
              f"{s['log_likelihood_difference']:+.2f} ± {s['log_likelihood_difference_se']:.2f} nats per cell "
              f"(target: > -2 SE: {'met' if s['target_log_likelihood_met'] else 'MISSED'})")
        print(f"reconstruction error, vaelab - scvi-tools: {s['reconstruction_difference']:+.2f} ± "
              f"{s['reconstruction_difference_se']:.2f} nats per cell")
        print(f"speed, scvi-tools / vaelab per epoch: {s['speedup_wall']:.2f}x wall, {s['speedup_cpu']:.2f}x CPU; "
              f"whole training call {s['speedup_training_call']:.2f}x wall (target, CPU per epoch >= 1.5x: "
              f"{'met' if s['target_speed_met'] else 'MISSED'})")
        print(f"importance sampling, K = {args.k}: median ESS per test cell {np.median(ours['ess']):.1f} (vaelab), "
              f"{np.median(theirs['ess_check']):.1f} (scvi-tools, its module recomputed)")
        print(f"training steps alone (no per-epoch files or hooks), wall per epoch: vaelab "
              f"{1e3 * s['vaelab']['steps_wall_per_epoch']:.1f} ms, "
              f"scvi-tools {1e3 * s['scvi']['steps_wall_per_epoch']:.1f} ms "
              f"({s['speedup_steps_wall']:.2f}x)")
        print(f"check of scvi-tools' get_marginal_ll (log p, higher is better) against its module recomputed: "
              f"{s['scvi_marginal_ll_check']:+.3f} ± {s['scvi_marginal_ll_check_se']:.3f} nats per cell")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "vaelab": ours, "scvi": theirs},
                                              indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
