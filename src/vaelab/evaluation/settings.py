"""How an evaluation is run: :class:`EvalSettings`, the one home of every evaluation default.

``vaelab eval`` and ``vaelab report`` make their options from its fields, :func:`evaluate`
takes it, the lower-level estimators (:func:`~vaelab.evaluation.log_likelihood`,
:func:`~vaelab.evaluation.inference_gaps`), :meth:`vaelab.TrainedModel.log_likelihood`, the
training run's evaluation and the explorer read their defaults from :data:`DEFAULTS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import VaelabError
from ..inputs import MAX_SEED

__all__ = ["EvalSettings", "DEFAULTS", "K_CHUNK", "ESTIMATORS", "AUTO_COST", "AUTO_MIN_STEPS"]

# importance samples per forward pass, by default: with the default 100 examples, 5,000 rows
# per pass ran the K=1000 estimate 1.5x faster than 10,000 for the MLP VAE on MNIST on our CPU
# (the decoder's [rows, 784] output then stays in cache), and takes half the memory
K_CHUNK = 50


def _s(default: Any, help: str, low: float | None = None, low_open: bool = False, high: float | None = None,
       high_open: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "low": low, "low_open": low_open, "high": high,
                                            "high_open": high_open, "choices": choices})


ESTIMATORS = ("auto", "is", "mixture", "ais")

# --estimator auto: what one step of the AIS path costs against one encoder importance sample,
# per chain (L leapfrog gradients of log p(x, z), the Metropolis test's density, the pilot run
# that tunes the step sizes). Measured on the MLP VAEs of benchmarks/default_estimator.py (one
# thread): AIS with T = K * AUTO_COST / (S (L + 1)) took about the CPU time of encoder IS with K.
AUTO_COST = 0.6
AUTO_MIN_STEPS = 10  # below this, auto keeps encoder IS (too few steps to anneal)


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation is run: one object shared by ``vaelab eval``, ``vaelab report``, the
    Python API and the explorer; each default is declared here and nowhere else (the CLI's
    options and their help are made from these fields)."""

    estimator: str = _s("auto", "log p(x) estimator: auto (AIS at about the CPU cost of encoder IS with K samples "
                               "where AIS applies, the posterior is Gaussian and that budget gives it at least "
                               f"{AUTO_MIN_STEPS} steps, else encoder IS: measured the tighter per CPU-second; the "
                               "headline is the higher of that AIS and the encoder IS run beside it), "
                               "is (importance sampling from the encoder), "
                               "mixture (importance sampling from encoder + optimal q* + Laplace at q*'s mean) or ais "
                               "(annealed importance sampling with --steps T; encoder IS is run too, for comparison)",
                        choices=ESTIMATORS)
    k: int = _s(1000, "importance samples per example for log p(x) (0: ELBO only)", low=0, high=10_000_000)
    k_chunk: int = _s(K_CHUNK, "importance samples per forward pass (memory grows with batch size x k-chunk, not with K)", low=1, high=10_000_000)
    steps: int = _s(1000, "AIS (--estimator ais): intermediate distributions T (time grows linearly with T; "
                          "--estimator auto picks T from K)", low=1, high=1_000_000)
    chains: int = _s(4, "AIS: independent chains S per example (memory grows with batch size x chains)", low=1, high=100_000)
    leapfrog: int = _s(5, "AIS: leapfrog steps per HMC transition", low=1, high=1000)
    step_size: float = _s(0.05, "AIS: initial HMC step size (adapted per chain towards --target-accept)",
                          low=0.0, low_open=True, high=10.0)
    target_accept: float = _s(0.65, "AIS: HMC acceptance rate the step size is adapted towards",
                              low=0.0, low_open=True, high=1.0, high_open=True)
    ais_start: str = _s("encoder", "AIS: the start of the path, encoder (q(z|x)) or prior (p(z))",
                        choices=("encoder", "prior"))
    ais_ladder: int = _s(0, "AIS: also run T/2, T/4, ... (this many shorter runs) to show the estimate converge as T grows",
                         low=0, high=10)
    bdmc_examples: int = _s(0, "BDMC: examples simulated from the model for the AIS bracket (0: skip it)", low=0, high=100_000)
    batch_size: int = _s(100, "examples per forward pass", low=1)
    elbo_samples: int = _s(10, "posterior samples per example for the ELBO's reconstruction term", low=1)
    kl: str = _s("auto", "KL term: auto (closed form when known), analytic or mc", choices=("auto", "analytic", "mc"))
    mi_samples: int = _s(1000, "Monte-Carlo draws for I(x;z) and KL(q(z)||p(z)) (0: skip latent health)", low=0)
    gap_examples: int = _s(100, "examples for the approximation/amortization gap split (0: skip it)", low=0)
    # 100 sticking-the-landing steps reached the ELBO(q*) of 300 closed-form-KL steps on the default
    # mnist5k model (within 0.001 nats, paired noise; benchmarks/eval_speed.py, README "How long vaelab eval takes")
    gap_steps: int = _s(100, "Adam steps of the per-example posterior optimisation (sticking-the-landing gradient)", low=0)
    gap_samples: int = _s(8, "samples per optimisation step, in antithetic pairs (eps and -eps; give an even number)", low=1)
    gap_lr: float = _s(0.05, "initial learning rate of the optimisation (cosine-decayed to 0)", low=0.0, low_open=True)
    gap_eval_samples: int = _s(1000, "samples for each ELBO of the gap split", low=1)
    seed: int = _s(0, "random seed of every draw", low=0, high=MAX_SEED)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise VaelabError(f"evaluation setting {f.name} must be a whole number, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise VaelabError(f"evaluation setting {f.name} must be a number, got {value!r}")
            low, open_ = f.metadata["low"], f.metadata["low_open"]
            if low is not None and (not value >= low or (open_ and value == low) or value != value):
                raise VaelabError(f"evaluation setting {f.name} must be {'>' if open_ else '>='} {low:g}, got {value!r}")
            high, high_open = f.metadata["high"], f.metadata["high_open"]
            if high is not None and (not value <= high or (high_open and value == high)):
                raise VaelabError(f"evaluation setting {f.name} must be {'<' if high_open else '<='} {_number(high)}, "
                                  f"got {value!r}")
            choices = f.metadata["choices"]
            if choices is not None and value not in choices:
                raise VaelabError(f"evaluation setting {f.name} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                                  f"got {value!r}")

    def replace(self, **changes: Any) -> "EvalSettings":
        """A copy with some settings changed (unknown names are errors)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise VaelabError(f"unknown evaluation setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS = EvalSettings()  # every evaluation default, read by the functions that take them one by one
