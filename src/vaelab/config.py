"""The settings of a training run, as one dataclass: the edge between the CLI and the library.

Inside the library everything takes plain arguments; only here are they gathered, validated
and saved (``config.json`` in every run folder). A config file (TOML or JSON) holds any of
the fields below, flat; an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import VaelabError

__all__ = ["TrainConfig", "load_config_file", "CHOICES"]

CHOICES: dict[str, tuple[str, ...]] = {
    "binarize": ("auto", "dynamic", "none"),
    "net": ("mlp", "conv"),
    "likelihood": ("bernoulli", "continuous-bernoulli", "gaussian", "laplace", "logistic-mixture"),
    "posterior": ("gaussian", "full-gaussian", "planar", "iaf"),
    "prior": ("normal", "mog", "vamp"),
    "learn_scale": ("fixed", "global", "feature"),
    "kl": ("auto", "analytic", "mc"),
    "objective": ("elbo", "iwae"),
    "estimator": ("standard", "stl", "dreg"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("float32", "bfloat16"),
}


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of ``vaelab train``; the defaults are the classic MNIST VAE."""

    # data
    data: str = _f("mnist5k", "built-in name (mnist5k, digits, fashion-mnist, mnist) or a .npy/.npz/.csv file or image folder")
    val_fraction: float = _f(0.1, "fraction of the training set held out for validation and early stopping")
    test_fraction: float = _f(0.1, "fraction held out as test set when the data have no test split")
    binarize: str = _f("auto", "dynamic: a fresh Bernoulli draw of the pixels each epoch; auto: dynamic for a Bernoulli likelihood on non-binary data; none")
    # model
    latent_dim: int = _f(20, "number of latent dimensions D")
    net: str = _f("mlp", "encoder/decoder networks: mlp (any data) or conv (28x28 images)")
    hidden: list[int] = _f([400], "hidden layer widths, comma-separated (mirrored in the decoder)")
    likelihood: str = _f("bernoulli", "p(x|z): bernoulli (data in [0,1]), continuous-bernoulli (grey values in [0,1]), gaussian or laplace (real data), logistic-mixture (8-bit data k/255; reports bits per dimension)")
    gaussian_scale: float = _f(1.0, "Gaussian or Laplace likelihood: the fixed scale, or the initial learned one")
    learn_scale: str = _f("fixed", "Gaussian or Laplace likelihood scale: fixed, global (one learned) or feature (one per dimension)")
    mixtures: int = _f(5, "logistic-mixture likelihood: logistics per value")
    posterior: str = _f("gaussian", "q(z|x): gaussian (diagonal), full-gaussian (full covariance), planar or iaf (normalizing flows of --flow-steps steps)")
    flow_steps: int = _f(4, "planar or iaf posterior: number of flow steps")
    prior: str = _f("normal", "p(z): normal (N(0, I)), mog (learned mixture of Gaussians) or vamp (VampPrior, learned pseudo-inputs)")
    prior_components: int = _f(10, "mog or vamp prior: number of components (Gaussians or pseudo-inputs)")
    # training
    epochs: int = _f(100, "maximum number of epochs (early stopping may end sooner)")
    batch_size: int = _f(128, "mini-batch size")
    lr: float = _f(1e-3, "Adam learning rate")
    k: int = _f(1, "posterior samples per example in the training objective (the IWAE bound's K)")
    kl: str = _f("auto", "KL term: analytic (closed form), mc (Monte Carlo) or auto (closed form when one exists)")
    objective: str = _f("elbo", "what training maximises: elbo, or iwae (the importance-weighted bound with --k samples)")
    beta: float = _f(1.0, "weight of the ELBO's KL term (beta-VAE); the logged ELBO stays unweighted")
    warmup: float = _f(0.0, "epochs over which the KL weight rises linearly from 0 to beta (0: no warm-up)")
    free_bits: float = _f(0.0, "free bits: nats per latent dimension (batch-averaged KL) below which the KL is not penalised (0: off)")
    estimator: str = _f("standard", "gradient estimator: standard, stl (sticking the landing) or dreg (doubly reparameterized; objective iwae)")
    patience: int = _f(10, "stop when the validation ELBO has not improved for this many epochs (0: never)")
    seed: int = _f(0, "random seed: same seed, same machine, same numbers")
    eval_k: int = _f(1000, "importance samples per test example for log p(x) after training (0: skip)")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or mps")
    # speed (none changes the model or the objective)
    threads: int = _f(0, "CPU threads of PyTorch's kernels (0: PyTorch's default, one per core; 1 is often faster on a busy machine)")
    compile: bool = _f(False, "run the training forward pass through torch.compile (true/false): about 1.15x faster steps on a "
                            "CPU after a compilation of about 20 s (6 s with a warm cache); for runs of many thousand steps")
    precision: str = _f("float32", "float32, or bfloat16: CUDA autocast of the networks' matrix products (densities, KL and sums stay float32)")
    # output
    out: str = _f("runs", "folder in which the run folder is made")
    name: str = _f("", "run folder name (default: <data>-<date>-<time>)")

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise VaelabError(f"unknown value {value!r} for {key}; choose one of: {', '.join(allowed)}")
        positive = ("latent_dim", "epochs", "batch_size", "k")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise VaelabError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if not self.lr > 0:
            raise VaelabError(f"lr must be > 0, got {self.lr}")
        if self.threads < 0:
            raise VaelabError(f"threads must be >= 0 (0: PyTorch's default), got {self.threads}")
        if self.eval_k < 0 or self.patience < 0:
            raise VaelabError("eval_k and patience must be >= 0")
        for key in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise VaelabError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("beta", "warmup", "free_bits"):
            if not 0 <= getattr(self, key) < float("inf"):
                raise VaelabError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        if not self.gaussian_scale > 0:
            raise VaelabError(f"gaussian_scale must be > 0, got {self.gaussian_scale}")
        if any(int(h) < 1 for h in self.hidden):
            raise VaelabError(f"hidden widths must be positive integers, got {self.hidden}")
        for key in ("mixtures", "flow_steps", "prior_components"):
            if int(getattr(self, key)) < 1:
                raise VaelabError(f"{key} must be a positive integer, got {getattr(self, key)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a flat mapping; unknown keys and wrongly typed values are errors."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise VaelabError(
                f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}"
            )
        converted = {k: _convert(k, v, known[k].type, source) for k, v in values.items()}
        return cls(**converted)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated like the original)."""
        return TrainConfig.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`vaelab.build.build_vae` (besides the data shape)."""
        return {
            "latent_dim": self.latent_dim,
            "net": self.net,
            "hidden": list(self.hidden),
            "likelihood": self.likelihood,
            "gaussian_scale": self.gaussian_scale,
            "learn_scale": self.learn_scale,
            "mixtures": self.mixtures,
            "posterior": self.posterior,
            "flow_steps": self.flow_steps,
            "prior": self.prior,
            "prior_components": self.prior_components,
        }


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def _convert(key: str, value: Any, type_name: Any, source: str) -> Any:
    t = str(type_name)
    try:
        if t == "list[int]":
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [int(v) for v in value]
        if isinstance(value, bool) and t in ("int", "float"):
            raise TypeError
        if t == "bool":
            if isinstance(value, str) and value.lower() in _BOOLS:
                return _BOOLS[value.lower()]
            if not isinstance(value, bool):
                raise TypeError
            return value
        if t == "int":
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if t == "float":
            return float(value)
        if t == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise VaelabError(f"{source}: {key} must be of type {t}, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML (``.toml``) or JSON (``.json``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise VaelabError(f"config file '{path}' not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            values = tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise VaelabError(f"config file '{path}' is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {err}") from None
    if not isinstance(values, dict):
        raise VaelabError(f"config file '{path}' must hold a table of key = value settings")
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise VaelabError(f"config file '{path}': sections are not supported ({', '.join(nested)}); write the keys flat")
    return values
