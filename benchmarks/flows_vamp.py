"""An IAF posterior with the VampPrior: epoch CPU time against the IAF with N(0, I).

Under the VampPrior, p(z) = (1/C) sum_c q(z|u_c), every prior density scores each sample z
under the C flow posteriors of the pseudo-inputs, and an IAF's density at an arbitrary z
needs its inverse: D sequential steps per flow step. zuko's inverse runs the whole MADE
network at every one of those steps; vaelab's (``vaelab.distributions.flows.iaf_inverse``)
evaluates each hidden unit once, as soon as its inputs are known, with a hand-written reverse
sweep for the gradient. The density is the same (the script checks it in float64 against
zuko's), so this is a speed-up of the exact model, not an approximation.

Three training runs, round-robin within each round, on ``mnist5k`` (MLP 784-400, D = 20,
4 IAF steps, 10 pseudo-inputs, batch 128, dynamic binarization), through
``vaelab.training.loop.fit``, the loop ``vaelab train`` runs:

* ``iaf + normal``: the reference;
* ``iaf + vamp``: the VampPrior, vaelab's inverse (the default);
* ``iaf + vamp, zuko inverse``: the same model with zuko's inverse (what vaelab did before),
  fewer epochs (``--zuko-epochs``; 0 leaves it out).

Times are CPU seconds of the process per epoch (``time.process_time()``; the whole epoch:
training steps, validation ELBO and checkpoint), one thread, so other work on a shared machine
disturbs them less than wall time; the first epoch of every run is left out. Each round gives
the ratio of its own median epochs; the table shows the median and quartiles over rounds.

Run::

    python benchmarks/flows_vamp.py                 # 5 rounds, 3 epochs (2 timed) per run
    python benchmarks/flows_vamp.py --rounds 9 --json flows_vamp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch
from zuko.distributions import NormalizingFlow

from vaelab.build import build_vae
from vaelab.data import load_data
from vaelab.distributions.flows import InverseAutoregressiveFlow
from vaelab.training.loop import fit

CONFIGS = ("iaf + normal", "iaf + vamp", "iaf + vamp, zuko inverse")


VAELAB_LOG_PROB = InverseAutoregressiveFlow.log_prob


def zuko_inverse(enabled: bool) -> None:
    """Score IAF densities with zuko's inverse (D full MADE passes per step) or vaelab's."""
    InverseAutoregressiveFlow.log_prob = (  # type: ignore[method-assign]
        NormalizingFlow.log_prob if enabled else VAELAB_LOG_PROB)


def epoch_seconds(config: str, data: Any, epochs: int, seed: int) -> tuple[list[float], list[float]]:
    """CPU seconds and validation ELBO of each epoch of one training run."""
    torch.manual_seed(seed)
    prior = "normal" if config == "iaf + normal" else "vamp"
    vae = build_vae(data.shape, latent_dim=20, hidden=[400], posterior="iaf", prior=prior)
    marks = [time.process_time()]

    def on_epoch(record: dict[str, Any]) -> None:
        marks.append(time.process_time())

    zuko_inverse(config.endswith("zuko inverse"))
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            result = fit(vae, data, run_dir, epochs=epochs, seed=seed, binarize=True, progress=False,
                         on_epoch=on_epoch)
    finally:
        zuko_inverse(False)
    return [b - a for a, b in zip(marks[:-1], marks[1:])], [float(m["val_elbo"]) for m in result.metrics]


def check_density(data: Any) -> float:
    """max |log p(z) (vaelab's inverse) - log p(z) (zuko's, one component at a time)| in float64."""
    torch.manual_seed(0)
    vae = build_vae(data.shape, latent_dim=20, hidden=[400], posterior="iaf", prior="vamp").double()
    x = data.train[:64].double()
    with torch.no_grad():
        z = vae.encoder(x).sample((2,))  # [2, 64, D]
        fast = vae.prior().log_prob(z)  # [2, 64]
        u = vae.prior.pseudo_inputs
        per_component = torch.stack([NormalizingFlow.log_prob(vae.encoder(u[c : c + 1]), z)
                                     for c in range(u.shape[0])], -1)  # [2, 64, C]
        slow = torch.logsumexp(per_component, -1) - torch.log(torch.tensor(float(u.shape[0]), dtype=z.dtype))
    return float((fast - slow).abs().max())


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is left out")
    ap.add_argument("--zuko-epochs", type=int, default=2, help="epochs of the zuko-inverse run (0: leave it out)")
    ap.add_argument("--zuko-rounds", type=int, default=1, help="rounds that include the zuko-inverse run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.epochs < 2 or args.zuko_epochs == 1:
        ap.error("--epochs (and --zuko-epochs, unless 0) must be at least 2: the first epoch is left out")
    torch.set_num_threads(args.threads)
    data = load_data("mnist5k")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); mnist5k: {data.train.shape[0]} "
          f"training examples; {args.rounds} rounds of {args.epochs} epochs (first left out)")
    diff = check_density(data)
    print(f"exact path: max |log p(z) - zuko's per-component log p(z)| = {diff:.2e} (float64)")

    per_round: dict[str, list[float]] = {c: [] for c in CONFIGS}
    ratios: dict[str, list[float]] = {c: [] for c in CONFIGS[1:]}
    val: dict[str, list[float]] = {}
    for r in range(args.rounds):
        configs = list(CONFIGS[:2]) if r % 2 == 0 else list(reversed(CONFIGS[:2]))
        if args.zuko_epochs and r < args.zuko_rounds:
            configs.append(CONFIGS[2])
        for config in configs:
            epochs = args.zuko_epochs if config == CONFIGS[2] else args.epochs
            seconds, val[config] = epoch_seconds(config, data, epochs, seed=0)
            per_round[config].append(statistics.median(seconds[1:]))
        for config in ratios:
            if len(per_round[config]) == r + 1:
                ratios[config].append(per_round[config][r] / per_round[CONFIGS[0]][r])
        print(f"round {r + 1}: " + ", ".join(f"{c} {per_round[c][r]:.2f} s" for c in configs))

    print()
    print(f"{'model':28s} {'rounds':>6s} {'epoch CPU s (q1, median, q3)':>30s} "
          f"{'x iaf + normal (q1, median, q3)':>34s}")
    for config in CONFIGS:
        if not per_round[config]:
            continue
        q1, med, q3 = quartiles(per_round[config])
        ratio = "1" if config == CONFIGS[0] else "{:.2f}, {:.2f}, {:.2f}".format(*quartiles(ratios[config]))
        print(f"{config:28s} {len(per_round[config]):6d} {f'{q1:.2f}, {med:.2f}, {q3:.2f}':>30s} {ratio:>34s}")
    print()
    shared = min(len(v) for v in val.values())
    print(f"validation ELBO after epoch {shared} (seed 0, the last run of each): "
          + ", ".join(f"{c} {v[shared - 1]:.3f}" for c, v in val.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "epochs": args.epochs, "density_max_abs_diff": diff,
                       "epoch_cpu_seconds": per_round, "ratios": ratios, "val_elbo": val}, f, indent=1)


if __name__ == "__main__":
    main()
