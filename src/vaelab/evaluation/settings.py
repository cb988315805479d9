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

__all__ = ["EvalSettings", "DEFAULTS", "K_CHUNK"]

# importance samples per forward pass, by default: with the default 100 examples, 5,000 rows
# per pass ran the K=1000 estimate 1.5x faster than 10,000 for the MLP VAE on MNIST on our CPU
# (the decoder's [rows, 784] output then stays in cache), and takes half the memory
K_CHUNK = 50


def _s(default: Any, help: str, low: float | None = None, low_open: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "low": low, "low_open": low_open})


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation is run: one object shared by ``vaelab eval``, ``vaelab report``, the
    Python API and the explorer; each default is declared here and nowhere else (the CLI's
    options and their help are made from these fields)."""

    k: int = _s(1000, "importance samples per example for log p(x) (0: ELBO only)", low=0)
    k_chunk: int = _s(K_CHUNK, "importance samples per forward pass (memory grows with batch size x k-chunk, not with K)", low=1)
    batch_size: int = _s(100, "examples per forward pass", low=1)
    elbo_samples: int = _s(10, "posterior samples per example for the ELBO's reconstruction term", low=1)
    kl: str = _s("auto", "KL term: auto (closed form when known), analytic or mc")
    mi_samples: int = _s(1000, "Monte-Carlo draws for I(x;z) and KL(q(z)||p(z)) (0: skip latent health)", low=0)
    gap_examples: int = _s(100, "examples for the approximation/amortization gap split (0: skip it)", low=0)
    gap_steps: int = _s(300, "Adam steps of the per-example posterior optimisation", low=0)
    gap_samples: int = _s(16, "samples per optimisation step", low=1)
    gap_lr: float = _s(0.05, "initial learning rate of the optimisation (cosine-decayed to 0)", low=0.0, low_open=True)
    gap_eval_samples: int = _s(1000, "samples for each ELBO of the gap split", low=1)
    seed: int = _s(0, "random seed of every draw")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise VaelabError(f"evaluation setting {f.name} must be a whole number, got {value!r}")
            low, open_ = f.metadata["low"], f.metadata["low_open"]
            if low is not None and (not value >= low or (open_ and value == low) or value != value):
                raise VaelabError(f"evaluation setting {f.name} must be {'>' if open_ else '>='} {low:g}, got {value!r}")
        if self.kl not in ("auto", "analytic", "mc"):
            raise VaelabError(f"evaluation setting kl must be auto, analytic or mc, got {self.kl!r}")

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
