"""The scvi-tools side of ``benchmarks/scvi_tools.py``: run in scvi-tools' own environment.

Not part of vaelab and never imported by it: ``benchmarks/scvi_tools.py`` launches it with the
Python of a virtual environment that has scvi-tools 1.4.2 (``--scvi-python``), hands it the
training and test counts as ``.npy`` files (the cells of vaelab's own split) and reads back one
JSON file. It trains ``scvi.model.SCVI`` and scores the test cells:

* log p(x) per test cell: ``SCVI.get_marginal_ll(adata_test, n_mc_samples=K,
  return_mean=False)`` (scvi-tools 1.4.2 returns log p, higher is better: its docstring says so,
  and ``VAE.marginal_ll`` is ``logsumexp_k(log p(z_k) + log p(x|z_k, l) - log q(z_k|x)) - log K``,
  the same estimator as vaelab's). The same quantity is also computed here from the module's
  own ``forward`` with K fresh samples, as a check of that sign and of the per-cell
  alignment: the two must agree within their Monte Carlo error (and the ESS of those weights).
* reconstruction error per test cell: ``-(1/K) sum_k log p(x|z_k, l)``, z_k ~ q(z|x), from the
  check's K samples (nats per cell, summed over genes); scvi-tools' ``get_reconstruction_error``
  (one sample, returned as a positive loss despite its docstring) is recorded beside it.
* per-epoch wall and CPU time (``time.perf_counter`` / ``time.process_time``, a Lightning
  callback): each epoch's start-to-end hooks and the time of each epoch's end; the whole
  ``train()`` call; the process's peak resident memory (``VmHWM``) during training (reset just
  before it) and overall, and the resident memory once the data were loaded.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from scvi_tools import memory_kib, reset_peak  # benchmarks/scvi_tools.py (numpy and torch only at import)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help=".npy of training counts [N, G]")
    ap.add_argument("--test", required=True, help=".npy of test counts [Nt, G]")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--likelihood", choices=("nb", "zinb", "poisson"), default="nb")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--latent-dim", type=int, default=10)
    ap.add_argument("--dropout", type=float, default=0.1, help="scVI's dropout_rate (its default 0.1)")
    ap.add_argument("--batch-norm", default="both", choices=("both", "encoder", "decoder", "none"),
                    help="scVI's use_batch_norm (its default 'both')")
    ap.add_argument("--optimizer", choices=("matched", "scvi"), default="matched",
                    help="matched: Adam lr 1e-3, eps 1e-8, no weight decay (vaelab's); scvi: its defaults "
                         "(eps 0.01, weight decay 1e-6)")
    ap.add_argument("--px-r-init", choices=("randn", "zero"), default="randn",
                    help="scVI's log inverse dispersion px_r at the start: randn (its own, N(0, 1) per gene) or "
                         "zero (theta = 1, as vaelab starts)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--k", type=int, default=1000, help="importance samples per test cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import anndata
    import lightning
    import scvi
    from lightning.pytorch.callbacks import Callback

    scvi.settings.seed = args.seed
    scvi.settings.dl_num_workers = 0
    x_train = np.load(args.train).astype(np.float32)
    x_test = np.load(args.test).astype(np.float32)
    genes = [f"g{i}" for i in range(x_train.shape[1])]
    adata = anndata.AnnData(x_train)
    adata.var_names = genes
    adata_test = anndata.AnnData(x_test)
    adata_test.var_names = genes
    scvi.model.SCVI.setup_anndata(adata)
    rss_loaded = memory_kib("VmRSS")

    model = scvi.model.SCVI(adata, n_hidden=args.hidden, n_latent=args.latent_dim, n_layers=args.layers,
                            dropout_rate=args.dropout, dispersion="gene", gene_likelihood=args.likelihood,
                            use_observed_lib_size=True, use_batch_norm=args.batch_norm)
    if args.px_r_init == "zero":
        with torch.no_grad():
            model.module.px_r.zero_()
    n_params = sum(p.numel() for p in model.module.parameters())
    n_used = n_params - sum(p.numel() for p in model.module.l_encoder.parameters())  # unused with observed l

    class EpochTimer(Callback):
        """Each training epoch's span (start to end hooks) and the time of each epoch's end,
        counted from the call to ``train`` (wall and CPU seconds)."""

        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.end_wall: list[float] = []
            self.end_cpu: list[float] = []
            self.t0 = self.c0 = 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            t, c = time.perf_counter(), time.process_time()
            self.wall.append(t - self._t)
            self.cpu.append(c - self._c)
            self.end_wall.append(t - self.t0)
            self.end_cpu.append(c - self.c0)

    timer = EpochTimer()
    plan = {"n_epochs_kl_warmup": None, "n_steps_kl_warmup": None, "max_kl_weight": 1.0, "lr": args.lr}
    if args.optimizer == "matched":
        plan.update(eps=1e-8, weight_decay=0.0)
    setup_cpu = time.process_time()  # the process so far: interpreter, imports, data, model
    peak_setup = reset_peak()  # the peak so far; then the peak of training alone
    t0, c0 = time.perf_counter(), time.process_time()
    timer.t0, timer.c0 = t0, c0
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, train_size=1.0, early_stopping=False,
                accelerator="cpu", devices=1, plan_kwargs=plan, enable_progress_bar=False, logger=False,
                enable_model_summary=False, enable_checkpointing=False, callbacks=[timer])
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_train = reset_peak()
    module = model.module.eval()

    # their estimator, per cell
    torch.manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    theirs = model.get_marginal_ll(adata_test, n_mc_samples=args.k, batch_size=64, return_mean=False,
                                   n_mc_samples_per_pass=min(args.k, 100))
    ll_seconds = time.perf_counter() - t0
    # the same estimator from the module's forward, with the reconstruction term (a sign check)
    torch.manual_seed(args.seed + 2)
    own, rec, ess = [], [], []
    with torch.inference_mode():
        for tensors in model._make_data_loader(adata=adata_test, batch_size=64):
            log_w, log_px = [], []
            for _ in range(math.ceil(args.k / 100)):
                s = min(100, args.k - 100 * len(log_w))
                inf, _, losses = module.forward(tensors, inference_kwargs={"n_samples": s},
                                                get_inference_input_kwargs={"full_forward_pass": True})
                qz, z = inf["qz"], inf["z"]  # batch [B], [s, B, D]
                lpx = -losses.dict_sum(losses.reconstruction_loss)  # [s, B]
                lpz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                log_w.append(lpx + lpz - qz.log_prob(z).sum(-1))
                log_px.append(lpx)
            lw = torch.cat(log_w).double()  # [K, B]
            own.append(torch.logsumexp(lw, 0) - math.log(lw.shape[0]))
            ess.append(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
            rec.append(-torch.cat(log_px).double().mean(0))
    own_ll = torch.cat(own)
    rec_error = torch.cat(rec)
    rec_scvi = model.get_reconstruction_error(adata_test, batch_size=64, return_mean=False)
    rec_scvi = rec_scvi["reconstruction_loss"] if isinstance(rec_scvi, dict) else rec_scvi

    theirs_np = np.asarray(theirs.double() if hasattr(theirs, "double") else theirs, dtype=np.float64)
    out = {
        "versions": {"scvi-tools": scvi.__version__, "torch": torch.__version__, "lightning": lightning.__version__,
                     "anndata": importlib.metadata.version("anndata"), "numpy": np.__version__},
        "settings": {**vars(args), "plan_kwargs": plan, "train_size": 1.0, "dispersion": "gene",
                     "use_observed_lib_size": True, "threads_after_training": torch.get_num_threads(),
                     "n_parameters": n_params, "n_parameters_used": n_used},
        "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]),
        "epoch_hook_wall": timer.wall, "epoch_hook_cpu": timer.cpu,
        "epoch_end_wall": timer.end_wall, "epoch_end_cpu": timer.end_cpu,
        "train_wall": train_wall, "train_cpu": train_cpu,
        "marginal_ll": theirs_np.tolist(), "marginal_ll_seconds": ll_seconds,
        "marginal_ll_check": own_ll.tolist(), "ess_check": torch.cat(ess).tolist(), "reconstruction_error": rec_error.tolist(),
        "reconstruction_error_scvi_one_sample": np.asarray(rec_scvi, dtype=np.float64).reshape(-1).tolist(),
        "setup_cpu": setup_cpu, "process_cpu": time.process_time(),
        "rss_after_load_kib": rss_loaded, "peak_rss_train_kib": peak_train,
        "peak_rss_kib": max(peak_setup, peak_train, memory_kib("VmHWM")),
    }
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
