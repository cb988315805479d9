"""The registry of parts: every posterior, prior, likelihood and network, declared once.

A :class:`Part` is a name, a factory, the options it takes and (for likelihoods) its support
as a ``torch.distributions.constraints`` object and the parameters it needs per value of x.
The CLI's choices and options, ``--help``, :func:`vaelab.build.build_model`, the validation of
settings, the data-range checks and the parametrised property tests all read this table, so a
part's name, options and support are written in one place.

Adding a part is one module plus its registration::

    from vaelab.registry import Option, Part, register

    @register("posterior", "my-gaussian", options=(Option("my_floor", float, 1e-3, "floor of sigma", low=0.0),))
    def _build(shapes: Shapes, my_floor: float) -> nn.Module:
        return MyEncoder(shapes.encoder_net(2 * shapes.latent_dim), shapes.latent_dim, my_floor)

after which ``vaelab train --posterior my-gaussian --my-floor 0.01`` works, run folders that
use it save and load, and ``tests/test_parts.py`` checks it like every other posterior.

Factories take a :class:`Shapes` (the data shape, latent size, context size and the network
builders of the chosen ``net``) and their own options as keyword arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn
from torch.distributions import constraints

from .errors import VaelabError

__all__ = [
    "Option",
    "Part",
    "Shapes",
    "KINDS",
    "register",
    "get",
    "names",
    "parts",
    "options_of",
    "all_options",
    "unregister",
    "in_unit_interval",
]

Kind = Literal["net", "posterior", "prior", "likelihood"]
KINDS: tuple[str, ...] = ("net", "posterior", "prior", "likelihood")

_TYPES = {int: "int", float: "float", str: "str", bool: "bool", list: "list[int]"}


@dataclass(frozen=True)
class Option:
    """One setting of a part: name (snake_case; ``--name-with-dashes`` on the CLI), type,
    default, help, and its allowed values (``choices``, or bounds ``low``/``high``, with
    ``low_open`` for a strict lower bound). ``list`` means a list of positive integers."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    low_open: bool = False
    high: float | None = None

    @property
    def type_name(self) -> str:
        return _TYPES[self.type]

    def convert(self, value: Any, source: str = "options") -> Any:
        """``value`` as this option's type, checked against its bounds, or a VaelabError."""
        where = f"{source}: {self.name}"
        try:
            if self.type is list:
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",")]  # "64,,32": an empty item is an error, not dropped ("6 4" too)
                if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in value):
                    raise TypeError
                value = [int(v) for v in value]
                if any(v < 1 for v in value):
                    raise VaelabError(f"{where} must be positive integers, got {value}")
                return value
            if isinstance(value, bool) and self.type in (int, float):
                raise TypeError
            if self.type is int:
                if isinstance(value, float) and not (value.is_integer() and abs(value) <= 2**53):
                    raise TypeError
                value = int(value)
            elif self.type is float:
                value = float(value)
            elif self.type is str and not isinstance(value, str):
                raise TypeError
        except VaelabError:  # (a ValueError too: said as it is, not as a wrong type)
            raise
        except (TypeError, ValueError):
            raise VaelabError(f"{where} must be of type {self.type_name}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise VaelabError(f"{where}: unknown value {value!r}; choose one of: {', '.join(self.choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise VaelabError(f"{where} must be a finite number, got {value}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise VaelabError(f"{where} must be {'>' if self.low_open else '>='} {self.low:g}, got {value}")
        if self.high is not None and value > self.high:
            raise VaelabError(f"{where} must be <= {self.high:g}, got {value}")
        return value


@dataclass(frozen=True)
class Shapes:
    """What a factory needs to know about the model it is a part of.

    ``encoder_net(n_out)`` builds the chosen network from x (and the context, when there is
    one) to ``n_out`` numbers; ``decoder_net(per_value)`` from z (and the context) to
    ``per_value * prod(x_shape)`` numbers, read as ``[per_value, *x_shape]``. ``encoder`` is the
    model's encoder, for priors built on it (the VampPrior); ``likelihood`` the likelihood's part.
    """

    x_shape: tuple[int, ...]
    latent_dim: int
    context_dim: int
    encoder_net: Callable[[int], nn.Module]
    decoder_net: Callable[[int], nn.Module]
    likelihood: "Part | None" = None
    encoder: nn.Module | None = None


@dataclass(frozen=True)
class Part:
    """A registered part. ``build(shapes, **options)`` returns the module.

    For likelihoods, ``cls`` is the decoder class: its ``support`` (a constraint), the text
    that explains it and the hint for data outside it, ``discrete`` and
    ``params_per_value(**options)`` are read from it; it may also declare ``counts = True``
    (data are loaded as raw counts, see :func:`vaelab.data.load_data`) and
    ``encoder_input(x_shape, **options) -> (module, feature_shape)``, a transform of x that the
    encoder reads instead of x (see :func:`vaelab.build.build_parts`). For networks, ``build(role, n_in, n_out,
    context_dim, **options)`` with ``role`` "encoder" (``n_in`` is the input's shape) or
    "decoder" (``n_in`` is the latent size, ``n_out`` is ``(per_value, *x_shape)``).
    """

    kind: str
    name: str
    build: Callable[..., Any]
    options: tuple[Option, ...] = ()
    help: str = ""
    cls: type | None = None
    conditional_only: bool = False  # the part needs a context (e.g. a prior p(z|c))

    @property
    def support(self) -> constraints.Constraint | None:
        return getattr(self.cls, "support", None) if self.kind == "likelihood" else None

    def params_per_value(self, **options: Any) -> int:
        fn = getattr(self.cls, "params_per_value_for", None)
        return int(fn(**options)) if fn is not None else int(getattr(self.cls, "params_per_value", 1))

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def resolve(self, values: dict[str, Any], source: str = "options") -> dict[str, Any]:
        """This part's options from ``values`` (others ignored), defaults filled, converted."""
        return {o.name: o.convert(values[o.name], source) if o.name in values else o.default for o in self.options}


_REGISTRY: dict[str, dict[str, Part]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, *, options: Sequence[Option] = (), help: str = "", cls: type | None = None,
             conditional_only: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``build`` as part ``name`` of ``kind``.

    An option name shared by several parts must be the same :class:`Option` everywhere (one
    type, default and help), since the CLI has one flag for it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown part kind {kind!r}; one of {KINDS}")

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        known = _all_options()
        for opt in options:
            if opt.name in known and known[opt.name] != opt:
                raise ValueError(f"option {opt.name!r} of {kind} {name!r} differs from the one already registered; "
                                 "share one Option object")
        _REGISTRY[kind][name] = Part(kind, name, build, tuple(options), help, cls, conditional_only)
        return build

    return decorate


def unregister(kind: str, name: str) -> None:
    """Remove a part (tests that register their own)."""
    _REGISTRY[kind].pop(name, None)


def _load_builtins() -> None:
    # the built-in parts register themselves when their modules are imported
    from . import distributions, nets  # noqa: F401


def parts(kind: str) -> dict[str, Part]:
    """The registered parts of ``kind``, by name (in registration order)."""
    _load_builtins()
    return dict(_REGISTRY[kind])


def names(kind: str) -> tuple[str, ...]:
    return tuple(parts(kind))


def get(kind: str, name: str) -> Part:
    """The part, or a VaelabError naming the choices."""
    found = parts(kind).get(name)
    if found is None:
        raise VaelabError(f"unknown {kind} {name!r}; choose one of: {', '.join(names(kind))}")
    return found


def options_of(kind: str, name: str) -> tuple[Option, ...]:
    return get(kind, name).options


def all_options() -> dict[str, Option]:
    """Every option of every registered part, by name (each declared once)."""
    _load_builtins()
    return _all_options()


def _all_options() -> dict[str, Option]:
    out: dict[str, Option] = {}
    for kind in KINDS:
        for part in _REGISTRY[kind].values():
            for opt in part.options:
                out.setdefault(opt.name, opt)
    return out


def in_unit_interval(support: constraints.Constraint | None) -> bool:
    """Whether a likelihood's support lies in [0, 1] (read off the constraint itself)."""
    if support is None:
        return False
    probe = torch.tensor([0.0, 1.0, -0.5, 1.5, 0.5, 2.0])
    ok = support.check(probe)
    return bool(ok[0] and ok[1] and not ok[2] and not ok[3] and not ok[5])  # 2.0: counts are not [0, 1] data
