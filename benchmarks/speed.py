"""Speed: vaelab's training loop against plain PyTorch loops and a JAX/optax peer, round-robin.

Four loops train the classic VAE (MLP 784-400-20, Bernoulli likelihood, Adam 1e-3, batch
128, dynamic binarization) on the ``mnist5k`` training split (3,600 digits,
``vaelab.data.load_data``):

* ``vaelab``: ``vaelab.training.loop.fit``, the function ``vaelab train`` runs, with its
  defaults (eager unless ``--compile``);
* ``memory``: the plain in-memory loop, ``reference_epochs_in_memory`` in
  ``benchmarks/reference.py``: PyTorch's official VAE example with batches gathered from the
  training tensor by a per-epoch ``torch.randperm``;
* ``dataloader``: PyTorch's official VAE example as written (``reference_epochs``: a
  DataLoader over the training tensor);
* ``jax``: ``benchmarks/jax_peer.py``: the same net, loss and Adam in JAX, one ``jax.jit`` step,
  in a long-lived subprocess (so XLA's and torch's thread pools never share a process) that this
  script sends "epoch" commands to.

The plain loops and the JAX peer start from the same initial weights (``reference_model(r)``,
copied into JAX); vaelab builds its own nets (seeded with ``r``). Each loop keeps its own torch
random state, so their draws do not depend on the order they run in.

Rounds: in round ``r`` every loop trains ``E`` epochs from scratch, epochs interleaved in an
order rotated by ``r`` (epoch 1 of each loop, then epoch 2 of each, ...), with a large
``torch.mm`` timed before each set of epochs. Load from other work on a shared machine thus
falls on all loops alike: ratios are taken within a round (examples/s of two loops in the same
round) and summarised as the median and quartiles over rounds. The first ``--skip-first``
epochs of every run are left out of the rates (warm-up); JAX's compilation happens before
its first epoch and is reported on its own (``compile s``).

What an epoch's time covers: for the plain loops and JAX, the whole epoch (shuffle,
binarization, steps, the host waiting for the last step). For vaelab, from the start of its
per-epoch binarization and shuffle (``epoch_data``) to the end of its last step, timed by
wrapping ``epoch_data`` and ``_validation`` of ``vaelab.training.loop`` (its own ``seconds``
leave out the binarization); the validation pass and checkpoint that follow are in
``all-in``. CPU seconds (``time.process_time``, all threads of the process) are recorded
beside wall seconds, and the ratios are given by CPU time too (examples per CPU second): a busy
machine disturbs those less, as long as each loop runs on one thread (``--threads 1``; threads
waiting for each other also count as CPU time).

FLOPs are counted analytically: ``6 x MACs`` per example for the linear layers (2 forward, 4
backward), the usual convention (autograd skips the first layer's input gradient, so the work
actually done is about 84% of that). The achieved FLOP rate is given as a fraction of the
measured ``torch.mm`` rate. The test ELBO of every model (final weights, one posterior sample,
the same fixed binarization of the 1,000 test digits, nats per example) shows that all of them
learned the same thing.

Threads: ``--threads N`` sets ``torch.set_num_threads(N)``; for JAX, ``--threads 1`` starts the
worker with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` and pins it to one core
(``sched_setaffinity``, Linux: jax 0.10.2 ignores the flag and ran on 1.7 cores of an idle
2-core machine); otherwise XLA uses one thread per core, as torch does by default. jax and optax are not vaelab dependencies:
``pip install jax optax`` (CPU wheels), or leave ``jax`` out of ``--loops``.

Run::

    python benchmarks/speed.py --rounds 6 --epochs 6                # all four loops, batch 128
    python benchmarks/speed.py --loops vaelab,memory,dataloader     # without JAX
    python benchmarks/speed.py --batch-size 1024 --epochs 10 --json speed-1024.json
    python benchmarks/speed.py --threads 1 --compile                # one thread; vaelab compiled
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from reference import (  # noqa: E402
    ReferenceVAE, reference_elbo, reference_epochs, reference_epochs_in_memory, reference_model,
)

from vaelab.build import build_vae  # noqa: E402
from vaelab.data import DataSplits, binarize, load_data  # noqa: E402
from vaelab.evaluation import dataset_elbo  # noqa: E402
from vaelab.runs import TEST_BINARIZATION_SEED  # noqa: E402
from vaelab.training import loop as vaelab_loop  # noqa: E402

LOOPS = ("vaelab", "memory", "dataloader", "jax")
LABELS = {"vaelab": "vaelab (fit)", "memory": "plain in-memory", "dataloader": "plain DataLoader",
          "jax": "JAX/optax jit"}
RATIOS = (("vaelab", "memory"), ("vaelab", "dataloader"), ("vaelab", "jax"), ("jax", "memory"))
JAX_PEER = Path(__file__).parent / "jax_peer.py"


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


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (inclusive method; one value: itself thrice)."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


# --- the loops ---------------------------------------------------------------------------------


class TorchLoop:
    """A plain PyTorch loop (a generator of ``(model, seconds)`` per epoch) run one epoch at a
    time, with its own torch random state swapped in around each epoch."""

    def __init__(self, epochs: Iterator[tuple[ReferenceVAE, float]], seed: int) -> None:
        self.epochs = epochs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the generator seeds itself on its first epoch anyway
            self.rng = torch.get_rng_state()
        self.model: ReferenceVAE | None = None

    def epoch(self) -> dict[str, float]:
        outside = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        c0 = time.process_time()
        try:
            self.model, seconds = next(self.epochs)
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outside)
        return {"seconds": seconds, "cpu_seconds": time.process_time() - c0}

    def test_elbo(self, x_test: torch.Tensor) -> float:
        assert self.model is not None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return reference_elbo(self.model.eval(), x_test.reshape(x_test.shape[0], -1))["elbo"]


class JaxWorker:
    """``benchmarks/jax_peer.py --worker`` in a subprocess: one JSON command, one JSON answer."""

    def __init__(self, data_file: Path, threads: int) -> None:
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        pin = None
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
            if hasattr(os, "sched_setaffinity"):  # jax 0.10 ignores the flag: one core for every XLA thread
                core = min(os.sched_getaffinity(0))
                pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731  (in the child, before exec)
        self.proc = subprocess.Popen([sys.executable, str(JAX_PEER), "--worker", str(data_file)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=pin)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the JAX worker died (exit status {self.proc.wait()}); "
                               "is jax installed? pip install jax optax, or leave jax out of --loops")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the JAX worker: {answer['error']}")
        return answer

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class VaelabSpans:
    """Wall and CPU seconds of each vaelab training epoch: from the call of ``epoch_data`` (the
    epoch's binarization and shuffle) to the call of ``_validation`` (after its last step).
    Empty when ``vaelab.training.loop`` no longer has both (then ``seconds`` are used)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    _start: tuple[float, float] | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[bool]:
        names = ("epoch_data", "_validation")
        originals = {name: getattr(vaelab_loop, name, None) for name in names}
        if any(f is None for f in originals.values()):
            yield False
            return

        def begin(*args: Any, **kwargs: Any) -> Any:
            self._start = (time.perf_counter(), time.process_time())
            return originals["epoch_data"](*args, **kwargs)  # type: ignore[misc]

        def end(*args: Any, **kwargs: Any) -> Any:
            if self._start is not None:
                self.wall.append(time.perf_counter() - self._start[0])
                self.cpu.append(time.process_time() - self._start[1])
                self._start = None
            return originals["_validation"](*args, **kwargs)  # type: ignore[misc]

        vaelab_loop.epoch_data, vaelab_loop._validation = begin, end  # type: ignore[assignment]
        try:
            yield True
        finally:
            for name, f in originals.items():
                setattr(vaelab_loop, name, f)


# --- one round -----------------------------------------------------------------------------------


def one_round(r: int, data: DataSplits, x_test: torch.Tensor, loops: tuple[str, ...], *, epochs: int,
              batch_size: int, compile: bool = False, mm_size: int = 2048,
              jax: JaxWorker | None = None, work_dir: Path | None = None) -> dict[str, Any]:
    """Round ``r``: every loop in ``loops`` trains ``epochs`` epochs from scratch (seed ``r``),
    epochs interleaved in the order of ``loops`` rotated by ``r``. Per loop: wall and CPU
    seconds of every epoch and the final test ELBO (nats per example); plus the ``torch.mm``
    rates timed before each set of epochs, and JAX's compile seconds."""
    order = loops[r % len(loops):] + loops[: r % len(loops)]
    x_flat = data.train.reshape(data.train.shape[0], -1)  # [N, 784]
    runners: dict[str, Callable[[], dict[str, float]]] = {}
    torch_loops: dict[str, TorchLoop] = {}
    out: dict[str, Any] = {"round": r, "order": list(order), "mm_flops": []}
    if "memory" in loops:
        torch_loops["memory"] = TorchLoop(reference_epochs_in_memory(x_flat, epochs=epochs, batch_size=batch_size,
                                                                     seed=r), r)
    if "dataloader" in loops:
        torch_loops["dataloader"] = TorchLoop(reference_epochs(x_flat, epochs=epochs, batch_size=batch_size,
                                                               seed=r), r)
    for name, tl in torch_loops.items():
        runners[name] = tl.epoch
    if "jax" in loops:
        assert jax is not None and work_dir is not None
        weights = work_dir / f"weights-{r}.npz"
        np.savez(weights, **{k: v.detach().numpy() for k, v in reference_model(r).state_dict().items()})
        out["jax_compile_seconds"] = jax.ask(cmd="start", weights=str(weights), seed=r,
                                             batch_size=batch_size)["compile_seconds"]
        runners["jax"] = lambda: jax.ask(cmd="epoch")
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in loops}

    def run(names: tuple[str, ...]) -> None:
        for name in names:
            timings[name].append(runners[name]())

    def mm() -> None:
        with torch.random.fork_rng(devices=[]):
            out["mm_flops"].append(mm_rate(mm_size))

    if "vaelab" not in loops:
        for _ in range(epochs):
            mm()
            run(order)
    else:
        i = order.index("vaelab")
        before, after = order[:i], order[i + 1:]
        outside = [0.0]  # seconds of the other loops inside fit's callbacks

        def on_epoch(record: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            run(after)
            if record["epoch"] < epochs:
                mm()
                run(before)
            outside[0] += time.perf_counter() - t0

        mm()
        run(before)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r)
            vae = build_vae(data.shape, latent_dim=20, hidden=[400], likelihood="bernoulli")
        spans = VaelabSpans()
        with tempfile.TemporaryDirectory() as run_dir, spans.installed() as spanned:
            t0 = time.perf_counter()
            result = vaelab_loop.fit(vae, data, run_dir, epochs=epochs, batch_size=batch_size, seed=r,
                                     binarize=True, progress=False, on_epoch=on_epoch, compile=compile)
            all_in = time.perf_counter() - t0 - outside[0]
        seconds = [m["seconds"] for m in result.metrics]
        if spanned and len(spans.wall) == len(seconds):
            timings["vaelab"] = [{"seconds": w, "cpu_seconds": c, "own_seconds": s}
                                 for w, c, s in zip(spans.wall, spans.cpu, seconds)]
        else:  # fit no longer calls epoch_data and _validation: its own seconds
            timings["vaelab"] = [{"seconds": s, "cpu_seconds": math.nan, "own_seconds": s} for s in seconds]
        out["vaelab_all_in_seconds"] = all_in
        out["macs_per_example"] = macs_per_example(vae)
        vae.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out.setdefault("test_elbo", {})["vaelab"] = dataset_elbo(vae, x_test).elbo

    elbo = out.setdefault("test_elbo", {})
    for name, tl in torch_loops.items():
        elbo[name] = tl.test_elbo(x_test)
    if "jax" in loops:
        assert jax is not None
        elbo["jax"] = jax.ask(cmd="elbo")["elbo"]
    out["epochs"] = timings
    return out


# --- the summary ---------------------------------------------------------------------------------


def summarise(rounds: list[dict[str, Any]], loops: tuple[str, ...], n: int, *, skip_first: int,
              flops_per_example: int) -> dict[str, Any]:
    """Per loop: examples/s per round (counted epochs only) with median and quartiles, the share
    of the ``torch.mm`` rate, CPU seconds per counted epoch, the mean test ELBO; per pair of
    loops the per-round ratios of examples/s with median and quartiles."""
    k = skip_first
    mm = statistics.median(f for rd in rounds for f in rd["mm_flops"])
    per_loop: dict[str, Any] = {}
    rates: dict[str, list[float]] = {}
    for name in loops:
        counted = [rd["epochs"][name][k:] for rd in rounds]
        rates[name] = [n * len(es) / sum(e["seconds"] for e in es) for es in counted]
        q1, med, q3 = quartiles(rates[name])
        cpu = [e["cpu_seconds"] for es in counted for e in es]
        per_loop[name] = {
            "examples_per_second": med, "examples_per_second_quartiles": [q1, q3],
            "examples_per_second_per_round": rates[name],
            "gflops": med * flops_per_example / 1e9, "fraction_of_mm": med * flops_per_example / mm,
            "cpu_seconds_per_epoch": statistics.median(cpu),
            "wall_seconds_per_epoch": statistics.median(e["seconds"] for es in counted for e in es),
            "test_elbo": statistics.mean(rd["test_elbo"][name] for rd in rounds),
            "test_elbo_per_round": [rd["test_elbo"][name] for rd in rounds],
        }
    if "vaelab" in loops:
        per_loop["vaelab"]["all_in_examples_per_second"] = statistics.median(
            n * len(rd["epochs"]["vaelab"]) / rd["vaelab_all_in_seconds"] for rd in rounds)
    if "jax" in loops:
        per_loop["jax"]["compile_seconds"] = statistics.median(rd["jax_compile_seconds"] for rd in rounds)
        per_loop["jax"]["compile_seconds_per_round"] = [rd["jax_compile_seconds"] for rd in rounds]
    cpu_rates = {name: [n * len(es) / sum(e["cpu_seconds"] for e in es) for es in
                        (rd["epochs"][name][k:] for rd in rounds)] for name in loops}
    ratios = {}
    for a, b in RATIOS:
        if a in loops and b in loops:
            per_round = [x / y for x, y in zip(rates[a], rates[b])]
            q1, med, q3 = quartiles(per_round)
            cpu = [x / y for x, y in zip(cpu_rates[a], cpu_rates[b])]  # examples per CPU second
            c1, cmed, c3 = quartiles(cpu)
            ratios[f"{a}/{b}"] = {"median": med, "quartiles": [q1, q3], "per_round": per_round,
                                  "cpu_median": cmed, "cpu_quartiles": [c1, c3], "cpu_per_round": cpu}
    return {"mm_flops_median": mm, "loops": per_loop, "ratios": ratios}


def benchmark(data: DataSplits, x_test: torch.Tensor, loops: tuple[str, ...] = LOOPS, *, rounds: int = 6,
              epochs: int = 6, skip_first: int = 1, batch_size: int = 128, threads: int = 0,
              compile: bool = False, mm_size: int = 2048,
              echo: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run ``rounds`` rounds of :func:`one_round` and :func:`summarise` them; the JAX worker, if
    ``"jax"`` is in ``loops``, lives for the whole benchmark."""
    n = data.train.shape[0]
    flops = 6 * macs_per_example(ReferenceVAE())
    runs = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work_dir = Path(tmp)
        jax, jax_version = None, None
        if "jax" in loops:
            np.savez(work_dir / "data.npz", x_train=data.train.reshape(n, -1).numpy(),
                     x_test=x_test.reshape(x_test.shape[0], -1).numpy())
            jax = JaxWorker(work_dir / "data.npz", threads)
            stack.callback(jax.close)
            jax_version = jax.info["jax"]
            echo(f"JAX worker: jax {jax.info['jax']} on {', '.join(jax.info['devices'])}")
        for r in range(rounds):
            rd = one_round(r, data, x_test, loops, epochs=epochs, batch_size=batch_size, compile=compile,
                           mm_size=mm_size, jax=jax, work_dir=work_dir)
            runs.append(rd)
            rate = {name: n * (epochs - skip_first) / sum(e["seconds"] for e in rd["epochs"][name][skip_first:])
                    for name in loops}
            echo(f"round {r} ({' > '.join(rd['order'])}): "
                 + ", ".join(f"{name} {rate[name]:.0f}" for name in loops) + " ex/s; test ELBO "
                 + ", ".join(f"{rd['test_elbo'][name]:.2f}" for name in loops))
    summary = summarise(runs, loops, n, skip_first=skip_first, flops_per_example=flops)
    summary.update({
        "batch_size": batch_size, "epochs": epochs, "rounds": rounds, "skip_first": skip_first,
        "threads": torch.get_num_threads(), "compile": compile, "torch": torch.__version__,
        "jax": jax_version,
        "n_train": n, "flops_per_example": flops, "mm_size": mm_size, "runs": runs,
    })
    return summary


def report(s: dict[str, Any]) -> str:
    """The summary as text: one row per loop, then the ratios."""
    loops, mm, flops = s["loops"], s["mm_flops_median"], s["flops_per_example"]
    lines = [f"matrix multiply {s['mm_size']}x{s['mm_size']} float32: {mm / 1e9:.1f} GFLOP/s (median of "
             f"{sum(len(rd['mm_flops']) for rd in s['runs'])} timings)",
             f"model: {flops / 1e6:.2f} MFLOP per example; {s['rounds']} rounds x {s['epochs']} epochs, "
             f"first {s['skip_first']} left out; median [quartiles] over rounds",
             f"{'':18}{'examples/s':>10}{'[quartiles]':>16}{'GFLOP/s':>9}{'of mm':>7}{'CPU s/ep':>10}"
             f"{'wall s/ep':>10}{'test ELBO':>11}"]
    for name, v in loops.items():
        q1, q3 = v["examples_per_second_quartiles"]
        lines.append(f"{LABELS[name]:18}{v['examples_per_second']:10.0f}{f'[{q1:.0f}-{q3:.0f}]':>16}"
                     f"{v['gflops']:9.1f}{v['fraction_of_mm']:7.0%}{v['cpu_seconds_per_epoch']:10.3f}"
                     f"{v['wall_seconds_per_epoch']:10.3f}{v['test_elbo']:11.2f}")
    if "vaelab" in loops:
        lines.append(f"{'vaelab all-in':18}{loops['vaelab']['all_in_examples_per_second']:10.0f}"
                     "   (every epoch, with validation and checkpoints)")
    if "jax" in loops:
        lines.append(f"JAX compile: {loops['jax']['compile_seconds']:.2f} s (median; both batch shapes, "
                     "before the first epoch)")
    for pair, v in s["ratios"].items():
        a, b = pair.split("/")
        lines.append(f"ratio {LABELS[a]} / {LABELS[b]}: {v['median']:.2f}x [{v['quartiles'][0]:.2f}-"
                     f"{v['quartiles'][1]:.2f}] (per round: {', '.join(f'{x:.2f}' for x in v['per_round'])}); "
                     f"by CPU time {v['cpu_median']:.2f}x [{v['cpu_quartiles'][0]:.2f}-{v['cpu_quartiles'][1]:.2f}]")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5, help="epochs per training run")
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=3,
                    help="rounds: each trains every loop once (--repeats: the old name)")
    ap.add_argument("--loops", default=",".join(LOOPS),
                    help=f"comma-separated, from {', '.join(LOOPS)} (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads for the torch loops; 1 also "
                    "makes JAX's matrix products single-threaded (0: defaults)")
    ap.add_argument("--compile", action="store_true", help="vaelab with compile=True")
    ap.add_argument("--skip-first", type=int, default=1,
                    help="epochs of each run left out of the rates (warm-up; compilation)")
    ap.add_argument("--mm-size", type=int, default=2048)
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args()
    loops = tuple(dict.fromkeys(x.strip() for x in args.loops.split(",") if x.strip()))
    if not loops or set(loops) - set(LOOPS):
        ap.error(f"--loops takes names from {', '.join(LOOPS)}; got {args.loops!r}")
    if not 0 <= args.skip_first < args.epochs:
        ap.error("--skip-first must be smaller than --epochs")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if "jax" in loops:
        import importlib.util

        if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
            ap.error("the jax loop needs jax and optax: pip install jax optax, or --loops vaelab,memory,dataloader")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_data("mnist5k")
    x_test = binarize(data.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; mnist5k: {data.train.shape[0]} training "
          f"examples; batch {args.batch_size}, {args.epochs} epochs x {args.rounds} rounds; loops "
          f"{', '.join(loops)}{'; vaelab compiled' if args.compile else ''}", flush=True)
    summary = benchmark(data, x_test, loops, rounds=args.rounds, epochs=args.epochs, skip_first=args.skip_first,
                        batch_size=args.batch_size, threads=args.threads, compile=args.compile,
                        mm_size=args.mm_size, echo=lambda s: print(s, flush=True))
    print()
    print(report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
