"""The settings of a training run, as one dataclass: the edge between the CLI and the library.

Inside the library everything takes plain arguments; only here are they gathered, validated
and saved (``config.json`` in every run folder). A config file (TOML or JSON) holds any of
the fields below and the parts' options (:mod:`vaelab.registry`), flat; an unknown key is an
error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import registry
from .context import Variable
from .data.images import parse_resize
from .errors import VaelabError
from .inputs import MAX_SEED
from .objectives import check_weights
from .evaluation.settings import DEFAULTS
from .spec import LADDER_OPTIONS, ModelSpec, mistyped, type_error

__all__ = ["TrainConfig", "load_config_file", "check_given", "CHOICES", "PART_KINDS", "LOGGERS", "choices"]

# settings with a fixed set of values; the part names (net, posterior, prior, likelihood) come
# from the registry instead (:func:`choices`), so a registered part is a valid choice at once
CHOICES: dict[str, tuple[str, ...]] = {
    "binarize": ("auto", "dynamic", "none"),
    "kl": ("auto", "analytic", "mc"),
    "objective": ("elbo", "iwae"),
    "estimator": ("standard", "stl", "dreg"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("float32", "bfloat16"),
    **{f"ladder_{o.name}": o.choices for o in LADDER_OPTIONS if o.choices},
}
_LADDER = {o.name: o for o in LADDER_OPTIONS}
PART_KINDS = ("net", "posterior", "prior", "likelihood")
# experiment trackers `--log` may name (:mod:`vaelab.tracking`; each an optional extra)
LOGGERS = ("tensorboard", "mlflow")


def choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of setting ``key`` (None: any value of its type)."""
    if key in PART_KINDS:
        return registry.names(key)
    return CHOICES.get(key)


def max_threads() -> int:
    """The most CPU threads ``--threads`` may ask for: 4 per core, at least 64 (OpenBLAS and
    OpenMP fail to start tens of thousands, with a crash, not an error)."""
    return max(64, 4 * (os.cpu_count() or 1))


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of ``vaelab train``; the defaults are the classic MNIST VAE.

    The options of the parts (``hidden``, ``flow_steps``, ``prior_components``, ...) are not
    fields: they are declared once, in :mod:`vaelab.registry`, and held in ``options`` (only
    those given explicitly; :meth:`part_options` fills in the defaults). In a config file and
    on the command line they are written flat, like every other key.
    """

    # data
    data: str = _f("mnist5k", "built-in name (mnist5k, digits, fashion-mnist, mnist, synthetic-nb; colour: patches, cifar10; single-cell counts: pbmc68k, celltypist-demo, pbmc3k) or a .npy/.npz/.csv/.h5ad file or image folder")
    val_fraction: float = _f(0.1, "fraction of the training set held out for validation and early stopping")
    test_fraction: float = _f(0.1, "fraction held out as test set when the data have no test split")
    binarize: str = _f("auto", "dynamic: a fresh Bernoulli draw of the pixels each epoch; auto: dynamic for a Bernoulli likelihood on non-binary data; none")
    backed: bool = _f(False, "leave the examples of a .npy or .h5ad file on disk and stream training batches from it (true/false): for data larger than memory")
    layer: str = _f("", ".h5ad files: read this layer (e.g. counts) instead of X; empty: X")
    stratify_by: str = _f("", ".h5ad files and pbmc68k: an obs column (e.g. cell_type) whose levels the seeded test and validation draws keep in proportion; empty: the labels, if any")
    resize: str = _f("", "image folders: resize every image to HxW pixels, height first (e.g. 32x32; the aspect ratio is not kept); empty: images must all have one size")
    # conditioning
    condition_on: list[str] = _f([], "conditioning variables, comma-separated: label (the class labels) and/or covariate names (CSV columns, npz arrays train_NAME/test_NAME); empty: an unconditional model")
    embedding: int = _f(0, "label: 0 for a one-hot code, else the size of a learned embedding")
    semi_supervised: bool = _f(False, "train the semi-supervised model M2 (Kingma et al. 2014): the label is a latent, observed for some examples (true/false)")
    labels_per_class: int = _f(0, "semi-supervised: keep the labels of this many training examples per class (seeded, stratified), hide the rest")
    labelled_fraction: float = _f(0.0, "semi-supervised: or keep the labels of this fraction of the training examples")
    alpha: float = _f(0.1, "semi-supervised: weight of the classification term, alpha x N / N_labelled per labelled example (the paper's 0.1 N)")
    labelled_per_batch: int = _f(0, "semi-supervised: add this many rows with a known label to every training batch, besides its batch-size ordinary rows (0: none)")
    # model
    latent_dim: int = _f(20, "number of latent dimensions D")
    latent_dims: list[int] = _f([], "a hierarchy: the ladder VAE (Sønderby et al. 2016) with these layer sizes, bottom first, comma-separated (e.g. 64,32); replaces --latent-dim")
    # the ladder's ingredients, declared once in spec.LADDER_OPTIONS (with --latent-dims only)
    ladder_inference: str = _f(_LADDER["inference"].default, _LADDER["inference"].help)
    ladder_activation: str = _f(_LADDER["activation"].default, _LADDER["activation"].help)
    ladder_norm: str = _f(_LADDER["norm"].default, _LADDER["norm"].help)
    ladder_skip: bool = _f(_LADDER["skip"].default, _LADDER["skip"].help)
    ladder_init: str = _f(_LADDER["init"].default, _LADDER["init"].help)
    net: str = _f("mlp", "encoder/decoder networks")
    likelihood: str = _f("bernoulli", "p(x|z): bernoulli (data in [0,1]), continuous-bernoulli (grey values in [0,1]), gaussian or laplace (real data), logistic-mixture (8-bit data k/255; reports bits per dimension), poisson, negative-binomial or zinb (counts, library size observed, as scVI), mixed (a CSV table: a likelihood per column, missing cells masked)")
    posterior: str = _f("gaussian", "q(z|x): gaussian (diagonal), full-gaussian (full covariance), planar or iaf (normalizing flows of --flow-steps steps)")
    prior: str = _f("normal", "p(z): normal (N(0, I)), mog (learned mixture of Gaussians), vamp (VampPrior, learned pseudo-inputs) or conditional (p(z|c), needs --condition-on)")
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
    nan_retries: int = _f(2, "when the loss turns NaN/inf: roll back to the epoch's start, halve the learning rate and go on, at most this many times (0: stop at once)")
    checkpoint_every: float = _f(0.0, "seconds: write the checkpoint, best weights and metrics at most this often (always after the last epoch and when stopping early); 0: after every epoch. For data so small that writing an epoch's files takes longer than training it; a stopped run resumes from the last checkpoint written")
    eval_k: int = _f(DEFAULTS.k, "importance samples per test example for log p(x) after training (0: skip)")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or mps")
    # speed (none changes the model or the objective)
    threads: int = _f(0, "CPU threads of PyTorch's kernels (0: PyTorch's default, one per core; 1 is often faster on a busy machine)")
    compile: bool = _f(False, "run the training forward pass through torch.compile (true/false): about 1.15x faster steps on a "
                            "CPU after a compilation of about 20 s (6 s with a warm cache); for runs of many thousand steps")
    precision: str = _f("float32", "float32, or bfloat16: CUDA autocast of the networks' matrix products (densities, KL and sums stay float32)")
    # output
    out: str = _f("runs", "folder in which the run folder is made")
    name: str = _f("", "run folder name (default: <data>-<date>-<time>)")
    # experiment tracking (optional extras: pip install 'vaelab[tensorboard]' / 'vaelab[mlflow]')
    log: list[str] = _f([], "experiment trackers, comma-separated: tensorboard (event files in RUN/tensorboard) and/or mlflow (a run on --mlflow-uri)")
    mlflow_uri: str = _f("", "MLflow tracking URI (http://host:port, sqlite:///file.db, a folder); empty: MLflow's own default, $MLFLOW_TRACKING_URI or else ./mlflow.db (MLflow 3)")
    # the parts' options (see the class docstring)
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": ""})

    def __post_init__(self) -> None:
        for key in (*CHOICES, *PART_KINDS):
            value, allowed = getattr(self, key), choices(key)
            if allowed is not None and value not in allowed:
                raise VaelabError(f"unknown value {value!r} for {key}; choose one of: {', '.join(allowed)}")
        known = registry.all_options()
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise VaelabError(f"unknown option(s) {', '.join(unknown)}; part options: {', '.join(known)}")
        converted = {k: known[k].convert(v) for k, v in self.options.items()}
        self.options = {k: v for k, v in converted.items() if v != known[k].default}  # defaults are implied
        positive = ("latent_dim", "epochs", "batch_size", "k")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise VaelabError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.epochs > MAX_EPOCHS:  # (a count past int64 was stored in config.json and in every checkpoint)
            raise VaelabError(f"epochs (--epochs) {self.epochs} is more than {MAX_EPOCHS:,}; give a smaller number "
                              "(early stopping, --patience, ends a run when the validation ELBO stops improving)")
        if not 0 < self.lr < float("inf"):
            raise VaelabError(f"lr must be > 0 and finite, got {self.lr}")
        if self.threads < 0:
            raise VaelabError(f"threads must be >= 0 (0: PyTorch's default), got {self.threads}")
        if self.threads > max_threads():
            raise VaelabError(f"threads (--threads) {self.threads} is more than vaelab allows on this machine, "
                              f"{max_threads()} (4 x its {os.cpu_count() or 1} cores, at least 64; more threads than "
                              "that only fail to start); give at most that, or 0 for PyTorch's default")
        if not 0 <= self.checkpoint_every < float("inf"):
            raise VaelabError(f"checkpoint_every must be a finite number of seconds >= 0 (0: every epoch), got {self.checkpoint_every}")
        if self.nan_retries < 0:
            raise VaelabError(f"nan_retries must be >= 0 (0: stop at the first NaN), got {self.nan_retries}")
        for key in ("eval_k", "patience"):
            if getattr(self, key) < 0:
                raise VaelabError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise VaelabError(f"seed must be a whole number from 0 to 2^63 - 1, got {self.seed}")
        for key in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise VaelabError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("beta", "warmup", "free_bits", "alpha"):
            if not 0 <= getattr(self, key) < float("inf"):
                raise VaelabError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        check_weights(beta=self.beta, free_bits=self.free_bits, alpha=self.alpha)  # 1e308: inf in float32
        if self.embedding < 0 or self.labels_per_class < 0 or self.labelled_per_batch < 0:
            raise VaelabError("embedding, labels_per_class and labelled_per_batch must be >= 0")
        if self.embedding > 0 and not self.condition_on:
            raise VaelabError(f"--embedding {self.embedding} is the size of the label's learned code; it needs "
                              "--condition-on label (or a categorical covariate), or leave it out")
        if not 0 <= self.labelled_fraction <= 1:
            raise VaelabError(f"labelled_fraction must be in [0, 1], got {self.labelled_fraction}")
        if self.latent_dims and (len(self.latent_dims) < 2 or min(self.latent_dims) < 1):
            raise VaelabError(f"latent_dims must list two or more positive layer sizes, bottom first, e.g. 64,32; got "
                              f"{','.join(map(str, self.latent_dims))} (one layer: --latent-dim)")
        parse_resize(self.resize)  # "HxW" or empty; anything else: one line
        if self.latent_dims and self.semi_supervised:
            raise VaelabError("--latent-dims (a ladder VAE) and --semi-supervised (M2) cannot be combined; choose one")
        self._check_ladder_flags()
        names = [n for n in self.condition_on]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise VaelabError(f"condition_on must name distinct variables, got {','.join(names)!r}")
        unknown_loggers = [n for n in self.log if n not in LOGGERS]
        if unknown_loggers or len(set(self.log)) != len(self.log):
            raise VaelabError(f"unknown or repeated logger in log {','.join(self.log)!r}; choose from: {', '.join(LOGGERS)}")
        if self.mlflow_uri and "mlflow" not in self.log:
            raise VaelabError("--mlflow-uri is where --log mlflow sends the run; add --log mlflow (or drop --mlflow-uri)")
        if self.semi_supervised:
            if names != ["label"]:
                raise VaelabError("--semi-supervised needs --condition-on label (the label is M2's partly observed latent)")
            if self.labels_per_class > 0 and self.labelled_fraction > 0:
                raise VaelabError(f"--semi-supervised takes one of --labels-per-class ({self.labels_per_class}) and "
                                  f"--labelled-fraction ({self.labelled_fraction:g}), not both: which labels are kept "
                                  "would be ambiguous")
            if self.labels_per_class == 0 and self.labelled_fraction == 0:
                raise VaelabError("--semi-supervised needs one of --labels-per-class N or --labelled-fraction F (> 0)")
            off = [f"--{key.replace('_', '-')} {getattr(self, key)}" for key, plain in (
                ("objective", "elbo"), ("estimator", "standard"), ("beta", 1.0), ("warmup", 0.0), ("free_bits", 0.0),
            ) if getattr(self, key) != plain]
            if off:
                raise VaelabError(f"--semi-supervised trains M2's own bound (Kingma et al. 2014, eq. 9), which has no "
                                  f"{', '.join(off)}; use objective elbo, estimator standard, beta 1, warmup 0, free bits 0")
            if registry.get("prior", self.prior).conditional_only or self.prior == "vamp":
                raise VaelabError(f"--semi-supervised: M2's p(z) must not depend on the label, and prior {self.prior!r} "
                                  "does (through the label it is given); use --prior normal or mog")
        elif self.labels_per_class > 0 or self.labelled_fraction > 0 or self.labelled_per_batch > 0:
            raise VaelabError("--labels-per-class, --labelled-fraction and --labelled-per-batch are for --semi-supervised "
                              "training; add it")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config", *,
                     typed: bool | None = None) -> "TrainConfig":
        """Build from a flat mapping; unknown keys and wrongly typed values are errors.

        ``typed``: the values were read from a file with types of its own (JSON or TOML: a run
        folder's ``config.json``, a ``--config`` file), so a setting must have its type there:
        ``"epochs": "3"`` (text for a number), ``"compile": "true"`` (text for true/false) or
        ``"hidden": ["64"]`` is refused naming ``source``, the key, the value and the type, not
        converted. A comma-separated text for a list (``"hidden": "64,32"``, the command line's
        form) stays valid. Default (None): typed when ``source`` is the path of a ``.json`` or
        ``.toml`` file, as the readers of run folders and config files give it; values given
        in Python (``vaelab.train(threads="1")``) are converted from text.
        """
        if typed is None:
            typed = source.lower().endswith((".json", ".toml"))
        known = {f.name: f for f in fields(cls) if f.name != "options"}
        part_options = registry.all_options()
        unknown = sorted(set(values) - set(known) - set(part_options))
        if unknown:
            raise VaelabError(
                f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join([*known, *part_options])}"
            )
        if typed:
            for k, v in values.items():
                _check_typed(k, v, str(known[k].type) if k in known else part_options[k].type_name, source)
        converted = {k: _convert(k, v, known[k].type, source) for k, v in values.items() if k in known}
        if isinstance(values.get("latent_dims"), str) and not converted["latent_dims"]:
            raise VaelabError(f"{source}: latent_dims is empty; give two or more layer sizes, bottom first, e.g. 64,32")
        options: dict[str, Any] = {}
        for k, v in values.items():
            if k in part_options:
                try:
                    options[k] = part_options[k].convert(v, source)
                except OverflowError:  # an integer of 400 digits for a float: float() overflows
                    raise VaelabError(type_error(k, v, part_options[k].type_name, source)) from None
        return cls(**converted, options=options)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated like the original)."""
        return TrainConfig.from_mapping({**self.to_dict(), **changes})

    def __getattr__(self, name: str) -> Any:
        """A part's option read like a field: ``config.hidden``, ``config.flow_steps``."""
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        known = registry.all_options()
        if name in known:
            return self.options.get(name, known[name].default)
        raise AttributeError(f"'TrainConfig' has no setting {name!r}")

    def part_options(self) -> dict[str, Any]:
        """The options of the chosen parts, defaults filled in, plus any other given."""
        out: dict[str, Any] = {}
        for kind in PART_KINDS:
            out.update(registry.get(kind, getattr(self, kind)).defaults())
        return {**out, **self.options}

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready settings (what ``config.json`` holds)."""
        d = dataclasses.asdict(self)
        del d["options"]
        return {**d, **self.part_options()}

    def data_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`vaelab.data.load_data` these settings ask for, in one
        place (training, evaluation, reports and sweeps load a run's data the same way)."""
        return {
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "covariates": [n for n in self.condition_on if n != "label"],
            "counts": bool(getattr(registry.get("likelihood", self.likelihood).cls, "counts", False)),
            "backed": self.backed,
            **({"resize": self.resize} if self.resize else {}),  # image folders only
            **({"layer": self.layer} if self.layer else {}),  # .h5ad files only
            **({"stratify_by": self.stratify_by} if self.stratify_by else {}),  # .h5ad files and pbmc68k
            # a mixed-type table (the mixed likelihood): its CSV reader, with the user's column types
            **({"tabular": True, "column_types": self.column_types}
               if getattr(registry.get("likelihood", self.likelihood).cls, "tabular", False) else {}),
        }

    def model_spec(self, x_shape: Sequence[int], context: Sequence[Variable] = ()) -> ModelSpec:
        """The spec of the model these settings describe, for data of shape ``x_shape``."""
        return ModelSpec.create(
            x_shape, latent_dim=self.latent_dim, net=self.net, posterior=self.posterior, prior=self.prior,
            likelihood=self.likelihood, context=context,
            family="m2" if self.semi_supervised else "ladder" if self.latent_dims else "vae",
            options=self.part_options(), latent_dims=tuple(self.latent_dims),
            ladder=self.ladder_options() if self.latent_dims else None,
        )

    def ladder_options(self) -> dict[str, Any]:
        """The ladder's options (spec.LADDER_OPTIONS) these settings give, by their names in the spec."""
        return {o.name: getattr(self, f"ladder_{o.name}") for o in LADDER_OPTIONS}

    def _check_ladder_flags(self) -> None:
        """A ``--ladder-*`` setting away from its default needs ``--latent-dims`` (a hierarchy)."""
        given = [f"--ladder-{name} {str(value).lower() if isinstance(value, bool) else value}"
                 for name, value in self.ladder_options().items()
                 if value != _LADDER[name].default]
        if given and not self.latent_dims:
            raise VaelabError(f"{', '.join(given)} set(s) an ingredient of the ladder VAE; add --latent-dims "
                              "(e.g. 20,10) or drop it")


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


MAX_EPOCHS = 10**9  # a run of more epochs than this is a typo, and a count past int64 does not round-trip


def check_given(given: Mapping[str, Any], config: "TrainConfig | None" = None) -> None:
    """Refuse settings given together where one would silently have no effect (``given``: the
    settings stated explicitly, in a config file or on the command line; defaults are not):
    ``latent_dims`` (a ladder) replaces ``latent_dim``; a part's option (``--dispersion``,
    ``--column-types``, ``--flow-steps``, ...) needs a chosen part that has it (``config``: the
    settings in force, else the given ones over the defaults)."""
    dims = given.get("latent_dims")
    if "latent_dim" in given and dims not in (None, "", []):
        shown = ",".join(map(str, dims)) if isinstance(dims, (list, tuple)) else dims
        raise VaelabError(f"--latent-dims {shown} (a ladder's layer sizes) replaces --latent-dim "
                          f"{given['latent_dim']}, which would have no effect; give only one of them")
    defaults = TrainConfig()
    chosen = {kind: str(getattr(config, kind) if config is not None else given.get(kind, getattr(defaults, kind)))
              for kind in PART_KINDS}
    for key, value in given.items():
        option = registry.all_options().get(key)
        if option is None:
            continue
        users = {kind: [name for name, part in registry.parts(kind).items() if option in part.options]
                 for kind in PART_KINDS}
        users = {kind: names for kind, names in users.items() if names}
        if any(chosen[kind] in names for kind, names in users.items()):
            continue
        flag = f"--{key.replace('_', '-')}"
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        needs = "; ".join(f"--{kind} {' or '.join(names)}" for kind, names in users.items())
        now = ", ".join(f"{kind} is {chosen[kind]}" for kind in users)
        raise VaelabError(f"{flag} {shown} is a setting of {needs} only, but this run's {now}, which has none, so it "
                          f"would have no effect; use {needs}, or drop {flag}")


def _convert(key: str, value: Any, type_name: Any, source: str) -> Any:
    t = str(type_name)
    if t == "list[str]" and isinstance(value, str) and value.strip() and not all(v.strip() for v in value.split(",")):
        example = "label,dose" if key == "condition_on" else "tensorboard,mlflow" if key == "log" else "a,b"
        raise VaelabError(f"{source}: {key} (--{key.replace('_', '-')}) {value!r} has an empty name between commas (it "
                          f"would silently name fewer); give names separated by single commas (e.g. {example}), or '' for none")
    try:
        if t == "list[str]":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]  # "dose level": inner spaces kept
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if t == "list[int]":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",")]  # "64,,32": an empty item is an error, not dropped ("6 4" too)
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in value):
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
            if isinstance(value, float) and not (value.is_integer() and abs(value) <= 2**53):  # 1e30: not a count
                raise TypeError
            return int(value)
        if t == "float":
            return float(value)
        if t == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError, OverflowError):  # (OverflowError: an integer of 400 digits for a float)
        pass
    else:
        return value
    raise VaelabError(type_error(key, value, t, source))


def _check_typed(key: str, value: Any, t: str, source: str) -> None:
    """Refuse a value read from a typed file (JSON, TOML) whose type is not the setting's own
    (:func:`vaelab.spec.mistyped`): the conversions that :func:`_convert` makes of text given in
    Python or on the command line do not apply there."""
    if mistyped(value, t):
        raise VaelabError(type_error(key, value, t, source))


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
