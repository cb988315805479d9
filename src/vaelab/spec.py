"""The model spec: everything needed to rebuild a model, as one JSON-ready object.

A :class:`ModelSpec` names the model family, the data shape, the latent size, one registered
part of each kind (:mod:`vaelab.registry`) with its options, and the conditioning variables
(:class:`~vaelab.context.Variable`). Every run folder keeps it as ``model.json``;
:func:`vaelab.load` rebuilds the model from it through the registry
(:func:`vaelab.build.build_model`), so every model the library can build can be saved,
loaded, evaluated, reported and served.

    {"version": 1, "family": "vae", "x_shape": [1, 28, 28], "latent_dim": 20,
     "net": {"name": "mlp", "hidden": [400]}, "posterior": {"name": "gaussian", "min_scale": 0.0001},
     "prior": {"name": "normal"}, "likelihood": {"name": "bernoulli"},
     "context": [{"name": "label", "kind": "categorical", "classes": 10, ...}]}

Families: ``"vae"`` (the VAE, conditional when ``context`` is not empty), ``"m2"`` (the
semi-supervised model of Kingma et al. 2014, whose label is a partly observed latent; its
context is the label alone) and ``"ladder"`` (the hierarchical ladder VAE of Sønderby et al.
2016, :mod:`vaelab.ladder`: ``latent_dims`` lists its layers' sizes, bottom first, and
``latent_dim`` is their sum, the size of the concatenated z; its layers are diagonal
Gaussians, so posterior ``gaussian`` and prior ``normal``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import registry
from .context import LABEL, Variable
from .errors import VaelabError

__all__ = ["PartSpec", "ModelSpec", "FAMILIES", "SPEC_VERSION", "LADDER_OPTIONS"]

FAMILIES: tuple[str, ...] = ("vae", "m2", "ladder")
SPEC_VERSION = 1
PART_KINDS = ("net", "posterior", "prior", "likelihood")
# the ladder VAE's ingredients (family "ladder" only; model.json key "ladder", :func:`vaelab.ladder.build_ladder`;
# ``--ladder-<name>`` on the CLI); the defaults are the ladder of vaelab before they existed
LADDER_OPTIONS: tuple[registry.Option, ...] = (
    registry.Option("inference", str, "precision", "the ladder's q(z_i|z_{i+1},x): precision (the bottom-up message "
                    "merged with p(z_i|z_{i+1}) by precision weighting, Sønderby et al.), residual (relative to the "
                    "prior, NVAE: N(mu_p + dmu, sigma_p dsigma)) or independent (the bottom-up message alone)",
                    choices=("precision", "residual", "independent")),
    registry.Option("activation", str, "relu", "the ladder's activation, in every network (bottom-up, top-down, "
                    "likelihood)", choices=("relu", "tanh", "elu")),
    registry.Option("norm", str, "none", "the ladder's normalisation: none, or layer (layer norm before every "
                    "activation of the bottom-up and top-down paths)", choices=("none", "layer")),
    registry.Option("skip", bool, False, "the ladder's likelihood reads every layer's z, not z_1 alone (true/false)"),
    registry.Option("init", str, "default", "the ladder's initialisation: default (PyTorch's), or prior (the last "
                    "layers of the messages and the top-down path zeroed: p(z_i|z_{i+1}) = N(0, I) at the start, and "
                    "with residual inference q = p)", choices=("default", "prior")),
)


# what a value of each setting type is, as the fix of a wrongly typed one says it
_EXPECTED = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "text in quotes",
    "list[int]": "a list of whole numbers, e.g. [64, 32]",
    "list[str]": 'a list of names, e.g. ["label"]',
}


def mistyped(value: Any, type_name: str) -> bool:
    """Whether ``value``, read from a file with types of its own (JSON, TOML: ``config.json``,
    ``model.json``, a ``--config`` file), lacks its setting's type ``type_name``: text for a
    number or for true/false (``"3"``, ``"true"``), a fraction for a whole number (3.5), a
    number or true/false for a text, a number for true/false, text, true/false or fractions
    among the items of a list of whole numbers. The conversions of
    text given in Python or on the command line do not apply to a file; a comma-separated
    text for a list (``"64,32"``, the command line's form) stays valid."""
    if type_name == "int":
        return isinstance(value, (str, bool)) or (isinstance(value, float) and not _whole(value))
    if type_name == "float":
        return isinstance(value, (str, bool))
    if type_name == "bool":
        return not isinstance(value, bool)
    if type_name == "str":
        return not isinstance(value, str)
    if type_name == "list[int]" and isinstance(value, (list, tuple)):
        return any(isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and _whole(v)))
                   for v in value)
    return False


def _whole(x: float) -> bool:
    """A float that is a count (3.0, 1e3: what TOML and other JSON writers may give); 3.5 and
    1e30 are not."""
    return x.is_integer() and abs(x) <= 2**53


def type_error(key: str, value: Any, type_name: str, source: str) -> str:
    """The one line that refuses ``value`` for setting ``key`` of type ``type_name``: the source
    (a file, the options), the key, the value, the type and what to write instead."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    unquoted = isinstance(value, str) and type_name in ("int", "float", "bool")
    return (f"{source}: {key} must be of type {type_name}, got {shown}; give "
            f"{_EXPECTED.get(type_name, f'a {type_name}')}{' without quotes' if unquoted else ''}")


@dataclass(frozen=True)
class PartSpec:
    """A registered part by name, with all of its options (defaults filled in)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, kind: str, name: str, values: Mapping[str, Any], source: str = "options") -> "PartSpec":
        """The part ``name`` of ``kind`` with its options taken from ``values`` (others ignored)."""
        part = registry.get(kind, name)
        return cls(name, part.resolve(dict(values), source))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class ModelSpec:
    """What a model is made of; see the module docstring. Validated on construction."""

    x_shape: tuple[int, ...]
    latent_dim: int = 20
    net: PartSpec = PartSpec("mlp")  # options: the registry's defaults, filled in on construction
    posterior: PartSpec = PartSpec("gaussian")
    prior: PartSpec = PartSpec("normal")
    likelihood: PartSpec = PartSpec("bernoulli")
    context: tuple[Variable, ...] = ()
    family: str = "vae"
    latent_dims: tuple[int, ...] = ()  # the ladder's layer sizes, bottom first (family "ladder" only)
    ladder: Mapping[str, Any] = field(default_factory=dict)  # the ladder's LADDER_OPTIONS, defaults filled in

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_shape", tuple(int(s) for s in self.x_shape))
        object.__setattr__(self, "context", tuple(self.context))
        dims = self.latent_dims
        if not isinstance(dims, (tuple, list)) or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
            raise VaelabError(f"latent_dims must be a list of integers, got {dims!r}")
        object.__setattr__(self, "latent_dims", tuple(dims))
        if (self.family == "ladder") != bool(dims):
            raise VaelabError("latent_dims (the layers of a hierarchy) go with family 'ladder' and only with it")
        if dims:
            if len(dims) < 2 or any(d < 1 for d in dims):
                raise VaelabError(f"latent_dims must list two or more positive layer sizes, bottom first, e.g. 64,32; "
                                  f"got {','.join(map(str, dims)) or 'nothing'}")
            object.__setattr__(self, "latent_dim", sum(dims))
        if not self.x_shape or any(s < 1 for s in self.x_shape):
            raise VaelabError(f"model spec: x_shape must be positive sizes, got {list(self.x_shape)}")
        if isinstance(self.latent_dim, bool) or int(self.latent_dim) != self.latent_dim or self.latent_dim < 1:
            raise VaelabError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        if self.family not in FAMILIES:
            raise VaelabError(f"unknown model family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        for kind in PART_KINDS:
            part = getattr(self, kind)
            registered = registry.get(kind, part.name)
            object.__setattr__(self, kind, PartSpec(part.name, registered.resolve(dict(part.options), f"model spec {kind}")))
            if registered.conditional_only and not self.context:
                raise VaelabError(f"{kind} {part.name!r} needs a conditioning variable; add --condition-on (e.g. label) "
                                  f"or choose another {kind}")
        self._check_ladder_options()
        if self.family == "ladder" and (self.posterior.name, self.prior.name) != ("gaussian", "normal"):
            raise VaelabError(f"the ladder VAE's layers are diagonal Gaussians with a N(0, I) top: it takes posterior "
                              f"gaussian and prior normal, not {self.posterior.name} and {self.prior.name}")
        if self.family == "m2":
            if [v.name for v in self.context] != [LABEL] or self.context[0].kind != "categorical":
                raise VaelabError("the semi-supervised model (m2) conditions on the class label alone: "
                                  "--condition-on label, no other variables")

    def _check_ladder_options(self) -> None:
        """``ladder``: only for family ladder, known names only, each converted; defaults filled in."""
        given = self.ladder
        if not isinstance(given, Mapping):
            raise VaelabError(f"model spec: ladder must be an object of ladder options, got {given!r}")
        if self.family != "ladder":
            if given:
                raise VaelabError(f"ladder options ({', '.join(sorted(given))}) are for a hierarchy; add latent_dims "
                                  "(--latent-dims, e.g. 20,10) or drop them")
            return
        known = {o.name: o for o in LADDER_OPTIONS}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise VaelabError(f"model spec: unknown ladder option(s) {', '.join(unknown)}; ladder options: "
                              f"{', '.join(known)}")
        if "skip" in given and not isinstance(given["skip"], bool):
            raise VaelabError(f"model spec ladder: skip must be true or false, got {given['skip']!r}")
        object.__setattr__(self, "ladder", {name: o.convert(given.get(name, o.default), "model spec ladder")
                                            for name, o in known.items()})

    @property
    def context_dim(self) -> int:
        return sum(v.width for v in self.context)

    @property
    def conditional(self) -> bool:
        return bool(self.context)

    def label(self) -> Variable | None:
        """The categorical ``label`` variable, if the model conditions on one."""
        return next((v for v in self.context if v.name == LABEL), None)

    @classmethod
    def create(
        cls,
        x_shape: Sequence[int],
        *,
        latent_dim: int = 20,
        net: str = "mlp",
        posterior: str = "gaussian",
        prior: str = "normal",
        likelihood: str = "bernoulli",
        context: Sequence[Variable] = (),
        family: str = "vae",
        options: Mapping[str, Any] | None = None,
        source: str = "options",
        latent_dims: Sequence[int] = (),
        ladder: Mapping[str, Any] | None = None,
    ) -> "ModelSpec":
        """A spec from part names and one flat mapping of options (each part takes its own)."""
        values = dict(options or {})
        known = registry.all_options()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise VaelabError(f"{source}: unknown option(s) {', '.join(unknown)}; part options: {', '.join(known)}")
        parts = {kind: PartSpec.resolve(kind, name, values, source)
                 for kind, name in (("net", net), ("posterior", posterior), ("prior", prior), ("likelihood", likelihood))}
        return cls(x_shape=tuple(x_shape), latent_dim=latent_dim, context=tuple(context), family=family,
                   latent_dims=tuple(latent_dims), ladder=dict(ladder or {}), **parts)

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "family": self.family,
            "x_shape": list(self.x_shape),
            "latent_dim": self.latent_dim,
            **({"latent_dims": list(self.latent_dims)} if self.latent_dims else {}),
            **({"ladder": dict(self.ladder)} if self.family == "ladder" else {}),
            **{kind: getattr(self, kind).to_dict() for kind in PART_KINDS},
            "context": [v.to_dict() for v in self.context],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Any, source: str = "model spec") -> "ModelSpec":
        """Parse and validate (unknown keys, unknown parts and bad options are VaelabErrors)."""
        if not isinstance(d, dict):
            raise VaelabError(f"{source} must be a JSON object")
        allowed = {"version", "family", "x_shape", "latent_dim", "latent_dims", "ladder", "context", *PART_KINDS}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise VaelabError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")
        if d.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise VaelabError(f"{source}: version {d.get('version')!r} is not one this vaelab reads ({SPEC_VERSION})")
        missing = [k for k in ("x_shape", *PART_KINDS) if k not in d]
        if missing:
            raise VaelabError(f"{source}: missing key(s) {', '.join(missing)}")
        parts = {}
        for kind in PART_KINDS:
            entry = d[kind]
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise VaelabError(f"{source}: {kind} must be an object with a 'name', got {entry!r}")
            options = {k: v for k, v in entry.items() if k != "name"}
            if kind == "net" and entry["name"] == "conv" and "conv_channels" not in options:
                entry = {**entry, "name": "conv-0.1"}  # written before conv took any size: vaelab 0.1's 28x28 nets
            try:
                part = registry.get(kind, entry["name"])
            except VaelabError as err:  # name the file as well as the choices
                raise VaelabError(f"{source}: {err}") from None
            extra = sorted(set(options) - {o.name for o in part.options})
            if extra:
                valid = ", ".join(o.name for o in part.options) or "none"
                raise VaelabError(f"{source}: {kind} {entry['name']!r} has no option(s) {', '.join(extra)}; "
                                  f"its options: {valid}")
            types = {o.name: o.type_name for o in part.options}
            for key, value in options.items():  # "hidden": ["16"], "flow_steps": "2": not what vaelab writes
                if mistyped(value, types[key]):
                    raise VaelabError(type_error(f"{kind} {entry['name']!r}: {key}", value, types[key], source))
            parts[kind] = PartSpec(entry["name"], options)
        shape = d["x_shape"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise VaelabError(f"{source}: x_shape must be a list of integers, got {shape!r}")
        context = d.get("context", [])
        if not isinstance(context, list):
            raise VaelabError(f"{source}: context must be a list of variables, got {context!r}")
        latent = d.get("latent_dim", 20)
        if isinstance(latent, bool) or not isinstance(latent, int):
            raise VaelabError(f"{source}: latent_dim must be an integer, got {latent!r}")
        dims = d.get("latent_dims", [])
        if not isinstance(dims, list):
            raise VaelabError(f"{source}: latent_dims must be a list of integers, got {dims!r}")
        ladder = d.get("ladder", {})  # absent in run folders written before the ladder had options
        if not isinstance(ladder, dict):
            raise VaelabError(f"{source}: ladder must be an object of ladder options, got {ladder!r}")
        return cls(x_shape=tuple(shape), latent_dim=latent, family=str(d.get("family", "vae")), latent_dims=tuple(dims),
                   ladder=ladder, context=tuple(Variable.from_dict(v, source) for v in context), **parts)
