"""Richer posteriors, prior and bound against the plain VAE, trained for equal epochs.

Five models share the classic setting: MLP 784-400-20, Bernoulli likelihood with dynamic
binarization, Adam 1e-3, batch 128, no early stopping (``patience 0``: every model trains
the same number of epochs; the weights kept are those of the best validation ELBO, as
``vaelab train`` keeps them). Only one thing changes per model:

    vae        q(z|x) diagonal Gaussian, p(z) = N(0, I), ELBO               (Kingma & Welling 2014)
    full-cov   q(z|x) Gaussian with a full covariance (Cholesky factor), STL gradient  (Roeder et al. 2017)
    iaf        q(z|x) diagonal Gaussian followed by 4 IAF steps             (Kingma et al. 2016)
    vamp       p(z) VampPrior with 100 learned pseudo-inputs                (Tomczak & Welling 2018)
    iwae       trained on the importance-weighted bound with K = 5          (Burda et al. 2016)

On the test set (each data set's fixed binarization, the first ``--test-n`` examples) the
table gives -log p(x) estimated with K importance samples (``--k``, default 1000) and its
standard error over examples, the ELBO with its two terms, reconstruction E_q[log p(x|z)] and
KL(q(z|x) || p(z)) (10 posterior samples per example; the KL in closed form where one exists,
else Monte Carlo), and the active latent dimensions: d is active when
Var_x(E_q[z_d | x]) > 0.01 (Burda et al. 2016). All in nats per example.

A richer model should reach a lower -log p(x) than the plain VAE (the papers above). The
IWAE-trained model is judged on log p(x): its ELBO is expected to be *lower* than the VAE's,
since it is trained for a tighter bound, not for the ELBO. The full-covariance posterior is
trained with the sticking-the-landing gradient (STL, which drops the zero-mean score term of
the ELBO's gradient), and its off-diagonal factor learns slowly (see
``FullCovarianceEncoder``). Without those it lost to the diagonal VAE (mnist5k, 100 epochs:
+0.19 and +0.11 nats for seeds 0 and 1 with the standard gradient; Fashion-MNIST, 8 epochs:
+1.6, and +0.84 with STL). The diagonal VAE trained with STL: 104.26 (mnist5k) and 240.07
(Fashion-MNIST, 8 epochs), against 104.43 and 240.25.

Run (progress on stderr, the markdown table on stdout)::

    python benchmarks/richer.py --datasets mnist5k --epochs 100
    python benchmarks/richer.py --datasets mnist5k fashion-mnist --epochs 100 8 \\
        --test-n 0 2000 --k 1000 --threads 1 --json richer.json      # ~30 min on 2 busy CPU cores

On a CPU shared with other work ``--threads 1`` matters: with PyTorch's default of one
thread per core an epoch of Fashion-MNIST took 10-40 times longer on a loaded 2-core machine.

``--epochs``, ``--test-n`` and ``--warmup`` take one value for all data sets or one per data
set, in the order of ``--datasets``; ``--test-n 0`` is the whole test set.
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

MODELS: dict[str, dict[str, Any]] = {
    "vae": {},
    "full-cov": {"posterior": "full-gaussian", "estimator": "stl"},
    "iaf": {"posterior": "iaf", "flow_steps": 4},
    "vamp": {"prior": "vamp", "prior_components": 100},
    "iwae": {"objective": "iwae", "k": 5},
}
CLASSIC = {"latent_dim": 20, "hidden": [400], "likelihood": "bernoulli", "lr": 1e-3, "batch_size": 128,
           "patience": 0, "eval_k": 0}
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016)
ELBO_SAMPLES = 10


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def per_dataset(values: list[Any], datasets: list[str], name: str) -> dict[str, Any]:
    """One value for every data set, or one per data set in order."""
    if len(values) == 1:
        return {d: values[0] for d in datasets}
    if len(values) != len(datasets):
        raise SystemExit(f"--{name} takes one value or one per data set ({len(datasets)}), got {len(values)}")
    return dict(zip(datasets, values))


@torch.no_grad()
def active_units(vae: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[int, str]:
    """Active latent dimensions over ``x``, and how they were counted.

    :func:`vaelab.evaluation.latent_diagnostics` when it works for this model, else directly:
    Var_n(E_q[z_d | x_n]) > 0.01, with E_q[z] the exact mean when the posterior knows it and
    a 64-sample Monte-Carlo mean otherwise (flows).
    """
    torch.manual_seed(seed)
    try:
        return latent_diagnostics(vae, x, mi_samples=1).active_units, "latent_diagnostics"
    except Exception as err:  # noqa: BLE001 - fall back, and say why
        say(f"  latent_diagnostics failed ({type(err).__name__}: {err}); counting active units directly")
    means = []
    for i in range(0, x.shape[0], 500):
        q = vae.encode(x[i : i + 500])
        try:
            means.append(q.mean.double())
        except NotImplementedError:
            means.append(q.sample((64,)).mean(0).double())
    activity = torch.cat(means).var(0)  # [D]
    return int((activity > ACTIVE_THRESHOLD).sum()), "direct"


def run_one(dataset: str, model: str, args: argparse.Namespace, epochs: int, test_n: int, warmup: float,
            out: Path) -> dict[str, Any]:
    settings = {**CLASSIC, **MODELS[model], "data": dataset, "epochs": epochs, "seed": args.seed,
                "threads": args.threads}
    if model in args.warmup_models and warmup > 0:
        settings["warmup"] = warmup
    if model == "vamp":
        settings["prior_components"] = args.vamp_components
    say(f"{dataset} / {model}: training {epochs} epochs "
        f"({', '.join(f'{k}={v}' for k, v in MODELS[model].items() if k != 'prior_components') or 'classic'}"
        f"{', prior_components=' + str(args.vamp_components) if model == 'vamp' else ''}"
        f"{f', warmup={warmup:g}' if 'warmup' in settings else ''})")
    t0 = time.perf_counter()
    trained, fit = train(**settings, out=str(out), name=f"{dataset}-{model}", figures=False, progress=False,
                         log=lambda *a: None)
    train_s = time.perf_counter() - t0
    last = fit.metrics[-1] if fit.metrics else {}
    say(f"{dataset} / {model}: trained in {train_s:.0f} s ({train_s / max(fit.epochs_done, 1):.1f} s/epoch); "
        f"best validation ELBO {fit.best_val_elbo:.2f} at epoch {fit.best_epoch}")

    t0 = time.perf_counter()
    vae = trained.vae.eval()
    x = trained.test_set()[0]
    if test_n > 0:
        x = x[:test_n]
    x = x.to(trained.device)
    torch.manual_seed(args.seed)
    ll = log_likelihood(vae, x, args.k, batch_size=100, k_chunk=100)
    torch.manual_seed(args.seed)
    terms = dataset_elbo(vae, x, k=ELBO_SAMPLES, kl=trained.config.kl)
    active, how = active_units(vae, x, args.seed)
    eval_s = time.perf_counter() - t0
    row = {
        "dataset": dataset, "model": model, "epochs": fit.epochs_done, "best_epoch": fit.best_epoch,
        "warmup": settings.get("warmup", 0.0), "n_test": int(x.shape[0]), "k": args.k,
        "nll": -ll.mean, "nll_stderr": ll.stderr, "median_ess": float(ll.ess.median()),
        "elbo": terms.elbo, "reconstruction": terms.reconstruction, "kl": terms.kl,
        "active_units": active, "latent_dim": trained.latent_dim, "active_units_by": how,
        "best_val_elbo": fit.best_val_elbo, "last_train_elbo": last.get("train_elbo"),
        "train_seconds": train_s, "eval_seconds": eval_s, "settings": settings,
        "log_px": ll.per_example.tolist(),  # [N], for the paired differences
    }
    say(f"{dataset} / {model}: -log p(x) {row['nll']:.2f} ± {row['nll_stderr']:.2f}, ELBO {row['elbo']:.2f}, "
        f"active {active}/{trained.latent_dim}; evaluated in {eval_s:.0f} s")
    return row


def paired_difference(row: dict[str, Any], base: dict[str, Any] | None) -> tuple[float, float] | None:
    """-log p(x) of ``row`` minus that of ``base`` on the same test examples, and its standard
    error from the per-example differences (much smaller than either model's own standard
    error: the spread between examples cancels)."""
    if base is None or row is base or len(row["log_px"]) != len(base["log_px"]):
        return None
    d = -(torch.tensor(row["log_px"], dtype=torch.float64) - torch.tensor(base["log_px"], dtype=torch.float64))
    return float(d.mean()), float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else math.nan


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| data set | model | epochs | test -log p(x) | vs vae (paired) | ELBO | E_q log p(x\\|z) | KL "
            "| active units | train s | eval s |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["dataset"]: r for r in rows if r["model"] == "vae"}
    for r in rows:
        diff = paired_difference(r, base.get(r["dataset"]))
        delta_s = "" if diff is None else f"{diff[0]:+.2f} ± {diff[1]:.2f}"
        epochs = f"{r['epochs']}" + (f" (warm-up {r['warmup']:g})" if r["warmup"] else "")
        lines.append(
            f"| {r['dataset']} (n={r['n_test']}) | {r['model']} | {epochs} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} "
            f"| {delta_s} | {r['elbo']:.2f} | {r['reconstruction']:.2f} | {r['kl']:.2f} "
            f"| {r['active_units']}/{r['latent_dim']} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_json(path: str, rows: list[dict[str, Any]]) -> None:
    """The rows with the paired differences to the plain VAE (per-example values left out)."""
    base = {r["dataset"]: r for r in rows if r["model"] == "vae"}
    doc = []
    for r in rows:
        diff = paired_difference(r, base.get(r["dataset"]))
        doc.append({**{k: v for k, v in r.items() if k != "log_px"},
                    "nll_minus_vae": None if diff is None else diff[0],
                    "nll_minus_vae_stderr": None if diff is None else diff[1]})
    Path(path).write_text(json.dumps(doc, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist5k", "fashion-mnist"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--epochs", nargs="+", type=int, default=[100, 8],
                    help="epochs for every model: one value, or one per data set (default: 100 8)")
    ap.add_argument("--k", type=int, default=1000, help="importance samples per test example for log p(x)")
    ap.add_argument("--test-n", nargs="+", type=int, default=[0],
                    help="evaluate on the first N test examples (0: all); one value or one per data set")
    ap.add_argument("--warmup", nargs="+", type=float, default=[0.0],
                    help="KL warm-up epochs for the --warmup-models; one value or one per data set (0: none)")
    ap.add_argument("--warmup-models", nargs="*", default=["iaf", "vamp"], choices=list(MODELS))
    ap.add_argument("--vamp-components", type=int, default=100, help="VampPrior pseudo-inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--json", help="also write the rows (with every setting) to this file")
    ap.add_argument("--out", help="folder for the run folders (default: a temporary folder, removed)")
    args = ap.parse_args()
    if "iwae" in args.warmup_models:
        ap.error("warm-up applies to ELBO-trained models only (the IWAE objective has no KL weight)")
    epochs = per_dataset(args.epochs, args.datasets, "epochs")
    test_n = per_dataset(args.test_n, args.datasets, "test-n")
    warmup = per_dataset(args.warmup, args.datasets, "warmup")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data sets {args.datasets}, "
        f"models {args.models}, epochs {epochs}, K={args.k}, test-n {test_n}, warm-up {warmup} "
        f"for {args.warmup_models}, seed {args.seed}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vaelab-richer-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        if args.out:
            out = out / time.strftime("%Y%m%d-%H%M%S")
        for dataset in args.datasets:
            for model in args.models:
                rows.append(run_one(dataset, model, args, epochs[dataset], test_n[dataset], warmup[dataset], out))
                if args.json:  # partial results survive an interrupted run
                    write_json(args.json, rows)
    total = time.perf_counter() - t_start
    say(f"all done in {total / 60:.1f} min")
    print(table(rows))
    print()
    print(f"nats per example; -log p(x) with K={args.k} importance samples (± standard error over test "
          f"examples; 'vs vae': the mean per-example difference to the plain VAE, ± its standard error); ELBO with {ELBO_SAMPLES} samples; active: Var_x(E_q[z_d|x]) > {ACTIVE_THRESHOLD}; "
          f"seed {args.seed}; total {total / 60:.1f} min")
    if args.json:
        write_json(args.json, rows)
        say(f"wrote {args.json}")


if __name__ == "__main__":
    main()
