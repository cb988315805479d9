"""The classic VAE in JAX and optax: a peer for the speed benchmark (``benchmarks/speed.py``).

The same model and training as ``benchmarks/reference.py`` (PyTorch's official VAE example),
written the way a JAX user writes it: fc 784-400-(20, 20) / 20-400-784 with ReLU, the scale
``exp(0.5 logvar)``, z = mu + scale eps, and per example (nats, summed over dimensions)

    loss(x) = sum_p BCEwithlogits(l_p, x_p) + KL(N(mu, s^2) || N(0, I)),
    KL      = -1/2 sum_d (1 + logvar_d - mu_d^2 - exp(logvar_d)),

summed over the batch (as the reference does), minimised by ``optax.adam(1e-3)`` (b1 0.9, b2
0.999, eps 1e-8 outside the square root: torch.optim.Adam's rule). Batch 128 with the last,
smaller batch kept; a fresh shuffle each epoch (numpy) and dynamic binarization: each batch is
drawn x ~ Bernoulli(pixels) inside the step, with a key split off the carried one, so every
epoch sees fresh binary digits. The whole step is one ``jax.jit``:

    step(params, opt_state, key, batch [B, 784]) -> (params, opt_state, key, loss)

Weights are [in, out] (a torch ``nn.Linear`` weight transposed), so ``h = x @ W + b``. The
initial weights are the torch reference model's (``init_weights`` takes its ``state_dict``).

The step donates the parameters and the optimizer state (``donate_argnums``, so XLA updates
them in place: about 10% less CPU per epoch here than without); the batches are gathered on
the host (numpy) and passed in (gathering inside the step saved about 2%). Random bits come
from JAX's default generator (threefry). Compilation: the two batch shapes (128 and the last
one) are traced and compiled before the first epoch (on copies of the state), timed, and
reported as ``compile_seconds``.

Threads: XLA's CPU backend uses one intra-op thread per available core, as torch does by
default. ``--threads 1`` (in ``speed.py``) starts the worker with
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` (the documented switch for single-threaded
matrix products, which jax 0.10.2 no longer honours) and pins the worker to one core
(``sched_setaffinity``), so that every XLA thread shares it.

jax and optax are not vaelab dependencies; install the CPU wheels from PyPI::

    pip install jax optax        # checked with jax 0.10.2, optax 0.2.8 beside torch 2.13.0+cpu

Run alone (loads mnist5k through vaelab; prints examples/s per epoch and the test ELBO)::

    python benchmarks/jax_peer.py --epochs 5
    python benchmarks/jax_peer.py --check     # loss and gradients against the torch reference

``speed.py`` runs this file as a long-lived worker (``--worker``): JSON commands on stdin, one
JSON answer per line on stdout, so XLA's thread pool lives in its own process, away from
torch's. The worker imports numpy, jax and optax only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["JaxVAE", "init_weights", "TORCH_NAMES"]

TORCH_NAMES = ("fc1", "fc21", "fc22", "fc3", "fc4")  # the reference model's layers, in order


def init_weights(state_dict: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """JAX-layout parameters from the torch reference model's ``state_dict`` (tensors or
    arrays): ``{"fc1": {"w": [784, 400], "b": [400]}, ...}``, weights transposed, float32."""
    params = {}
    for name in TORCH_NAMES:
        w = np.asarray(state_dict[f"{name}.weight"], dtype=np.float32)  # [out, in]
        b = np.asarray(state_dict[f"{name}.bias"], dtype=np.float32)  # [out]
        params[name] = {"w": np.ascontiguousarray(w.T), "b": b.copy()}  # [in, out], [out]
    return params


class JaxVAE:
    """Training state and the jitted step of the JAX peer.

    Args:
        params: from :func:`init_weights`.
        x_train: ``[N, 784]`` float32 pixels in [0, 1] (binarized afresh in every step).
        batch_size, lr, seed: as the reference loop; ``seed`` seeds the shuffles and the key.
    """

    def __init__(self, params: dict[str, dict[str, np.ndarray]], x_train: np.ndarray, *,
                 batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        self._jax, self._jnp, self._optax = jax, jnp, optax
        self.x_train = np.ascontiguousarray(x_train, dtype=np.float32)  # [N, 784]
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.params = jax.tree.map(jnp.asarray, params)
        self.optimizer = optax.adam(lr)
        self.opt_state = self.optimizer.init(self.params)
        self.key = jax.random.key(seed)
        self.step = jax.jit(self._step, donate_argnums=(0, 1))  # params, opt_state updated in place
        self._elbo = jax.jit(self._test_elbo)
        self.compile_seconds = self._compile()

    # --- the model ---------------------------------------------------------------------------

    def _encode(self, params: Any, x: Any) -> tuple[Any, Any]:
        h = self._jax.nn.relu(x @ params["fc1"]["w"] + params["fc1"]["b"])  # [B, 400]
        mu = h @ params["fc21"]["w"] + params["fc21"]["b"]  # [B, 20]
        logvar = h @ params["fc22"]["w"] + params["fc22"]["b"]  # [B, 20]
        return mu, logvar

    def _decode(self, params: Any, z: Any) -> Any:
        h = self._jax.nn.relu(z @ params["fc3"]["w"] + params["fc3"]["b"])  # [B, 400]
        return h @ params["fc4"]["w"] + params["fc4"]["b"]  # [B, 784] logits

    def loss_terms(self, params: Any, x: Any, eps: Any) -> tuple[Any, Any]:
        """Summed BCE and KL of the batch ``x`` [B, 784] with the noise ``eps`` [B, 20]."""
        jnp = self._jnp
        mu, logvar = self._encode(params, x)
        z = mu + eps * jnp.exp(0.5 * logvar)  # [B, 20]
        logits = self._decode(params, z)  # [B, 784]
        bce = jnp.sum(jnp.logaddexp(0.0, logits) - x * logits)  # BCE with logits, summed
        kld = -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar))
        return bce, kld

    def _loss(self, params: Any, x: Any, eps: Any) -> Any:
        bce, kld = self.loss_terms(params, x, eps)
        return bce + kld

    def _step(self, params: Any, opt_state: Any, key: Any, batch: Any) -> tuple[Any, Any, Any, Any]:
        jax = self._jax
        key, k_bin, k_eps = jax.random.split(key, 3)
        x = jax.random.bernoulli(k_bin, batch).astype(batch.dtype)  # [B, 784] dynamic binarization
        eps = jax.random.normal(k_eps, (batch.shape[0], 20), batch.dtype)  # [B, 20]
        loss, grads = jax.value_and_grad(self._loss)(params, x, eps)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return self._optax.apply_updates(params, updates), opt_state, key, loss

    def _test_elbo(self, params: Any, x: Any, key: Any) -> Any:
        eps = self._jax.random.normal(key, (x.shape[0], 20), x.dtype)  # [N, 20]
        bce, kld = self.loss_terms(params, x, eps)
        return -(bce + kld) / x.shape[0]

    # --- running it ----------------------------------------------------------------------------

    def _batch_sizes(self) -> list[int]:
        n, b = self.x_train.shape[0], self.batch_size
        return sorted({min(b, n)} | ({n % b} if n % b else set()), reverse=True)

    def _compile(self) -> float:
        """Trace and compile the step for every batch shape of an epoch; the seconds taken.
        (The warm-up calls take copies of the state, which the step donates.)"""
        t0 = time.perf_counter()
        for b in self._batch_sizes():
            params, opt_state = self._jax.tree.map(self._jnp.copy, (self.params, self.opt_state))
            out = self.step(params, opt_state, self.key, self.x_train[:b])
            self._jax.block_until_ready(out)
        return time.perf_counter() - t0

    def epoch(self) -> dict[str, float]:
        """One pass over a fresh shuffle; wall and process CPU seconds, mean loss per example."""
        n, b = self.x_train.shape[0], self.batch_size
        t0, c0 = time.perf_counter(), time.process_time()
        perm = self.rng.permutation(n)
        params, opt_state, key = self.params, self.opt_state, self.key
        losses = []
        for i in range(0, n, b):
            batch = self.x_train[perm[i : i + b]]  # [B, 784]
            params, opt_state, key, loss = self.step(params, opt_state, key, batch)
            losses.append(loss)
        total = float(sum(np.asarray(self._jax.block_until_ready(losses))))  # the host waits here
        self.params, self.opt_state, self.key = params, opt_state, key
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "loss": total / n}

    def test_elbo(self, x_test: np.ndarray, seed: int = 0) -> float:
        """ELBO of ``x_test`` [N, 784] (binary), one posterior sample, nats per example."""
        x = self._jnp.asarray(np.asarray(x_test, dtype=np.float32))
        return float(self._elbo(self.params, x, self._jax.random.key(seed)))


# --- the worker that speed.py talks to -----------------------------------------------------------


def serve(data_file: str) -> None:
    """Answer JSON commands on stdin, one line each, until it closes:

    * ``{"cmd": "start", "weights": NPZ, "seed": r, "batch_size": B}``: a fresh model from the
      torch reference's initial weights (``fc1.weight``, ...), compiled; answers
      ``{"compile_seconds": s}``;
    * ``{"cmd": "epoch"}``: one epoch; answers its ``seconds``, ``cpu_seconds`` and ``loss``;
    * ``{"cmd": "elbo"}``: the test ELBO of the fixed binary test digits, ``{"elbo": e}``.

    ``data_file`` is an ``.npz`` with ``x_train`` [N, 784] and ``x_test`` [Nt, 784], float32.
    """
    import jax

    with np.load(data_file) as f:
        x_train, x_test = f["x_train"], f["x_test"]
    model: JaxVAE | None = None
    out = sys.stdout
    out.write(json.dumps({"ready": True, "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "start":
            with np.load(cmd["weights"]) as w:
                params = init_weights(dict(w))
            model = JaxVAE(params, x_train, batch_size=cmd["batch_size"], seed=cmd["seed"])
            answer: dict[str, Any] = {"compile_seconds": model.compile_seconds}
        elif cmd["cmd"] == "epoch" and model is not None:
            answer = model.epoch()
        elif cmd["cmd"] == "elbo" and model is not None:
            answer = {"elbo": model.test_elbo(x_test)}
        else:
            answer = {"error": f"unknown command or no model: {cmd!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# --- alone: a run, or a check against the torch reference -------------------------------------


def _check() -> None:
    """The loss and its gradient at the reference model's initial weights, same batch and
    noise, in torch (autograd) and JAX; float32, so agreement to about 1e-5 relative."""
    import jax
    import jax.numpy as jnp
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from reference import loss_function, reference_model

    from vaelab.data import binarize, load_data

    data = load_data("mnist5k")
    x = binarize(data.train[:128].reshape(128, -1), torch.Generator().manual_seed(0))  # [128, 784]
    ref = reference_model(0)
    eps = torch.randn(128, 20, generator=torch.Generator().manual_seed(1))  # [128, 20]
    mu, logvar = ref.encode(x)
    logits = ref.decode_logits(mu + eps * torch.exp(0.5 * logvar))
    loss, _, _ = loss_function(logits, x, mu, logvar)
    loss.backward()
    peer = JaxVAE(init_weights({k: v.detach() for k, v in ref.state_dict().items()}), x.numpy(), batch_size=128)
    j_loss, j_grads = jax.value_and_grad(peer._loss)(peer.params, jnp.asarray(x.numpy()), jnp.asarray(eps.numpy()))
    print(f"loss: torch {loss.item():.4f}, jax {float(j_loss):.4f}, relative difference "
          f"{abs(loss.item() - float(j_loss)) / abs(loss.item()):.1e}")
    for name in TORCH_NAMES:
        layer = getattr(ref, name)
        for t_grad, j_grad in ((layer.weight.grad.T, j_grads[name]["w"]), (layer.bias.grad, j_grads[name]["b"])):
            t, j = t_grad.numpy(), np.asarray(j_grad)
            print(f"  {name} {tuple(t.shape)}: max |grad difference| / max |grad| = "
                  f"{np.abs(t - j).max() / np.abs(t).max():.1e}")


def _alone(epochs: int, batch_size: int, seed: int) -> None:
    import jax
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from reference import reference_model

    from vaelab.data import binarize, load_data
    from vaelab.runs import TEST_BINARIZATION_SEED

    data = load_data("mnist5k")
    x_train = data.train.reshape(data.train.shape[0], -1).numpy()
    x_test = binarize(data.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    state = {k: v.detach() for k, v in reference_model(seed).state_dict().items()}
    peer = JaxVAE(init_weights(state), x_train, batch_size=batch_size, seed=seed)
    print(f"jax {jax.__version__} on {jax.devices()}; compiled in {peer.compile_seconds:.2f} s")
    for e in range(1, epochs + 1):
        r = peer.epoch()
        print(f"epoch {e}: {x_train.shape[0] / r['seconds']:8.0f} examples/s "
              f"(CPU {r['cpu_seconds'] / r['seconds']:.2f} x wall), loss {r['loss']:.2f} nats per example")
    print(f"test ELBO {peer.test_elbo(x_test.reshape(x_test.shape[0], -1).numpy()):.2f} nats per example")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", metavar="DATA_NPZ", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help="compare loss and gradients with the torch reference")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.worker:
        serve(args.worker)
    elif args.check:
        _check()
    else:
        _alone(args.epochs, args.batch_size, args.seed)


if __name__ == "__main__":
    main()
