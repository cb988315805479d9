"""A likelihood per column: p(x|z) for mixed-type tables with missing cells (HI-VAE's setting).

A table row x has C columns, each of one type (Nazabal et al. 2020, "Handling incomplete
heterogeneous data using VAEs"):

==============  ==================================================  =========================
type            p(x_j | z)                                          decoder numbers
==============  ==================================================  =========================
``numeric``     N(x_j; m_j + s_j mu_j(z), (s_j sigma_j)^2)          1 (mu_j); sigma_j learned
``binary``      Bernoulli(x_j; sigmoid(eta_j(z))), x_j in {0, 1}    1 (the logit)
``categorical`` Categorical(x_j; softmax(eta_j(z))), x_j = level    K_j (one logit per level)
``count``       NB(x_j; mean mu_j = n_j exp(eta_j(z)), theta_j)     1 (eta_j); theta_j learned
==============  ==================================================  =========================

Numeric columns are modelled in standardised units: m_j and s_j are the training set's mean
and standard deviation of column j (kept in the model spec), the network predicts the
standardised mean mu_j and the learned per-column scale sigma_j (``softplus(raw) + 1e-3``,
starting at 1) is in standard deviations; the density is of the raw value, so
log p includes -log s_j and log p(x) is in the data's own units. Counts use a negative
binomial with a learned inverse dispersion theta_j per column (``exp(raw)``, starting at 1;
variance mu + mu^2 / theta, the Poisson as theta -> infinity), mean n_j exp(eta_j) with n_j the
column's training mean (so eta_j = 0 is a sensible start). Categorical x_j holds the level's
id 0..K_j-1; the level names are kept with the column.

Missing cells are NaN in x. They are masked out of the likelihood,

    log p(x_obs | z) = sum_{j observed} log p(x_j | z),

which for a likelihood that factorises over columns is exactly the marginal of the observed
cells (the missing ones integrated out). NaN never enters an arithmetic operation: cells are
filled with 0 before any density is computed and the masked terms are then replaced by 0, so
neither the value nor the gradient depends on what a masked cell holds. The encoder reads
the same table through :class:`MixedInput`: standardised numeric values, log1p counts, 0/1
binaries, one-hot categories, every missing cell as zeros, then the C-number observed mask.

The columns are declared by the option ``column_types``: ``NAME=TYPE`` items, comma-separated,
where a complete entry (what a model spec keeps, written by :func:`format_columns`) carries the
type's details in brackets::

    age=numeric(38.5;12.25),smoker=binary,city=categorical(Oslo|Paris|Rome),visits=count(2.5)

(numeric: training mean and standard deviation; count: training mean; categorical: the
level names in id order; ``%``, ``,``, ``=``, ``(``, ``)``, ``|`` and ``;`` inside names are
written ``%XX``). With no columns declared, every value of x is a numeric column with m = 0,
s = 1: a Gaussian with a learned scale per feature, for data of any shape.

The decoder network's output is read as one flat vector of P = sum_j (numbers of column j)
numbers: the registry's ``decoder_net(per_value)`` gives ``per_value * C`` numbers, so the
decoder asks for ``per_value = ceil(P / C)`` and reads the first P (fewer than C unused).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import unquote

import torch
from torch import Size, Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, NegativeBinomial, Normal, constraints

from ..errors import VaelabError
from ..registry import Option, Shapes, register
from .likelihoods import Decoder

__all__ = [
    "COLUMN_TYPES",
    "TYPES",
    "Column",
    "parse_columns",
    "parse_column_types",
    "declared_statistics",
    "format_columns",
    "default_columns",
    "MixedCells",
    "MixedDecoder",
    "MixedInput",
]

TYPES: tuple[str, ...] = ("numeric", "binary", "categorical", "count")

COLUMN_TYPES = Option(
    "column_types", str, "",
    "mixed likelihood: column types NAME=TYPE, comma-separated (numeric, binary, categorical, count); "
    "columns not named are typed from the CSV",
)

_SPECIAL = re.compile(r"[%,=()|;]")
_ITEM = re.compile(r"^(?P<name>[^=]+)=(?P<type>[A-Za-z]+)(?:\((?P<args>.*)\))?$", re.S)


def _quote(text: str) -> str:
    return _SPECIAL.sub(lambda m: f"%{ord(m.group()):02X}", text)


@dataclass(frozen=True)
class Column:
    """One column of a table: its name, type (:data:`TYPES`), the names of its levels
    (categorical, in id order), and the training set's mean and standard deviation of its
    observed values (numeric: both standardise it; count: the mean sets the starting scale)."""

    name: str
    type: str
    levels: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise VaelabError(f"column '{self.name}': unknown type {self.type!r}; choose one of: {', '.join(TYPES)}")
        if self.type == "categorical" and len(self.levels) < 1:
            raise VaelabError(f"column '{self.name}': a categorical column needs its levels, e.g. "
                              f"{_quote(self.name)}=categorical(a|b|c)")
        if len(set(self.levels)) != len(self.levels):
            raise VaelabError(f"column '{self.name}': levels must be distinct, got {list(self.levels)}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise VaelabError(f"column '{self.name}': needs a finite mean and a std > 0, got {self.mean}, {self.std}")
        if self.type == "count" and self.mean < 0:
            raise VaelabError(f"column '{self.name}': a count column's mean must be >= 0, got {self.mean}")

    @property
    def params(self) -> int:
        """Numbers the decoder network gives this column: K logits for K levels, else 1."""
        return len(self.levels) if self.type == "categorical" else 1

    def to_text(self) -> str:
        """``NAME=TYPE(details)``, as :func:`parse_columns` reads it back (floats exactly)."""
        details = {
            "numeric": f"({self.mean!r};{self.std!r})",
            "count": f"({self.mean!r})",
            "categorical": "(" + "|".join(_quote(v) for v in self.levels) + ")",
            "binary": "",
        }[self.type]
        return f"{_quote(self.name)}={self.type}{details}"


def _floats(args: str, n: int, item: str, source: str) -> list[float]:
    try:
        values = [float(a) for a in args.split(";")]
    except ValueError:
        values = []
    if len(values) != n:
        raise VaelabError(f"{source}: {item!r} needs {n} number(s) in brackets separated by ';'")
    return values


def parse_columns(text: str, source: str = "column_types") -> tuple[Column, ...]:
    """The columns ``text`` declares (see the module docstring); "" declares none.

    Details left out take their defaults: numeric m = 0, s = 1; count mean 1. A categorical
    column without its levels is an error here (the CSV reader fills them in).
    """
    columns: list[Column] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, kind, args = _split_item(item, source)
        if kind == "numeric":
            mean, std = _floats(args, 2, item, source) if args is not None else (0.0, 1.0)
            col = Column(name, kind, mean=mean, std=std)
        elif kind == "count":
            col = Column(name, kind, mean=_floats(args, 1, item, source)[0] if args is not None else 1.0)
        elif kind == "categorical":
            levels = tuple(unquote(v) for v in args.split("|")) if args else ()
            col = Column(name, kind, levels=levels)
        else:
            if args:
                raise VaelabError(f"{source}: {item!r}: a binary column takes no details in brackets")
            col = Column(name, kind)
        columns.append(col)
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise VaelabError(f"{source}: column(s) {', '.join(map(repr, twice))} named more than once")
    return tuple(columns)


def parse_column_types(text: str, source: str = "--column-types") -> dict[str, tuple[str, tuple[str, ...]]]:
    """The type and declared levels (or ``()``) ``text`` gives each column it names
    (``"age=numeric,city=categorical(Oslo|Rome)"``; statistics are read by
    :func:`declared_statistics`): what the CSV reader takes as the user's override of its
    automatic types."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, kind, args = _split_item(item, source)
        if name in out:
            raise VaelabError(f"{source}: column '{name}' named more than once")
        out[name] = (kind, tuple(unquote(v) for v in args.split("|")) if kind == "categorical" and args else ())
    return out


def declared_statistics(text: str, source: str = "--column-types") -> dict[str, tuple[float, float]]:
    """The mean and standard deviation ``text`` declares for the numeric columns it gives them
    (``age=numeric(45;12)``) and the mean for count ones (``visits=count(7.5)``, std 1): what
    the CSV reader keeps instead of the training split's statistics. Checked as a
    :class:`Column` checks them (finite, std > 0, a count's mean >= 0)."""
    out: dict[str, tuple[float, float]] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, kind, args = _split_item(item, source)
        if args is None or kind not in ("numeric", "count"):
            continue
        values = _floats(args, 2 if kind == "numeric" else 1, item, source)
        try:
            col = Column(name, kind, mean=values[0], std=values[1] if kind == "numeric" else 1.0)
        except VaelabError as err:
            raise VaelabError(f"{source}: {item!r}: {err}") from None
        out[name] = (col.mean, col.std)
    return out


def _split_item(item: str, source: str) -> tuple[str, str, str | None]:
    m = _ITEM.match(item)
    if m is None:
        raise VaelabError(f"{source}: {item!r} is not NAME=TYPE (types: {', '.join(TYPES)}), e.g. age=numeric,visits=count")
    name, kind = unquote(m.group("name").strip()), m.group("type").lower()
    if kind not in TYPES:
        raise VaelabError(f"{source}: column '{name}' has unknown type {kind!r}; choose one of: {', '.join(TYPES)}")
    return name, kind, m.group("args")


def format_columns(columns: Sequence[Column]) -> str:
    """The ``column_types`` text of ``columns`` (complete: what a model spec keeps)."""
    return ",".join(c.to_text() for c in columns)


def default_columns(x_shape: Sequence[int]) -> tuple[Column, ...]:
    """With no columns declared: one numeric column (m = 0, s = 1) per value of x."""
    return tuple(Column(str(i), "numeric") for i in range(math.prod(x_shape)))


def columns_for(x_shape: Sequence[int], column_types: str) -> tuple[Column, ...]:
    """The columns of a model of data shape ``x_shape``: declared ones (which need x of shape
    ``(C,)``) or the default numeric ones."""
    columns = parse_columns(column_types, "mixed likelihood column_types")
    if not columns:
        return default_columns(x_shape)
    if tuple(x_shape) != (len(columns),):
        raise VaelabError(f"mixed likelihood: {len(columns)} columns are declared but the data have shape "
                          f"{tuple(x_shape)}; a table needs examples of shape ({len(columns)},)")
    return columns


class _Layout(nn.Module):
    """Where each column's numbers sit in the flat decoder output, by type (buffers, rebuilt
    from the columns: nothing here is saved with the weights)."""

    def __init__(self, columns: Sequence[Column]) -> None:
        super().__init__()
        self.columns = tuple(columns)
        starts, p = [], 0
        for col in self.columns:
            starts.append(p)
            p += col.params
        self.n_params = p
        idx = {t: [j for j, col in enumerate(self.columns) if col.type == t] for t in TYPES}
        self.counts = {t: len(v) for t, v in idx.items()}
        order = idx["numeric"] + idx["binary"] + idx["count"] + idx["categorical"]
        inverse = [0] * len(order)
        for pos, j in enumerate(order):
            inverse[j] = pos
        k_max = max([self.columns[j].params for j in idx["categorical"]], default=1)
        cat_par = [[starts[j] + min(k, self.columns[j].params - 1) for k in range(k_max)] for j in idx["categorical"]]
        cat_pad = [[k >= self.columns[j].params for k in range(k_max)] for j in idx["categorical"]]

        def buffer(name: str, values: Any, dtype: torch.dtype) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

        for t in ("numeric", "binary", "count", "categorical"):
            buffer(f"{t}_cols", idx[t], torch.long)  # [C_t] column of each
        for t in ("numeric", "binary", "count"):
            buffer(f"{t}_par", [starts[j] for j in idx[t]], torch.long)  # [C_t] its number in the output
        self.register_buffer("categorical_par", torch.tensor(cat_par, dtype=torch.long).reshape(-1, k_max),
                             persistent=False)  # [C_cat, K_max]
        self.register_buffer("categorical_pad", torch.tensor(cat_pad, dtype=torch.bool).reshape(-1, k_max),
                             persistent=False)  # [C_cat, K_max]
        buffer("inverse", inverse, torch.long)  # [C]: type-grouped order back to column order
        # float64, as the spec writes them; each use casts to the computation's dtype
        buffer("numeric_mean", [self.columns[j].mean for j in idx["numeric"]], torch.float64)
        buffer("numeric_std", [self.columns[j].std for j in idx["numeric"]], torch.float64)
        buffer("count_offset", [math.log(max(self.columns[j].mean, 1e-3)) for j in idx["count"]], torch.float64)


class MixedCells(Distribution):
    """The distribution of every cell of a table given the decoder's numbers: batch shape
    ``[*lead, *x_shape]`` (one entry per cell), event shape ``[]``; wrap it in
    ``Independent(cells, len(x_shape))`` for p(x|z).

    ``log_prob(x)`` is 0 at missing (NaN) cells; :meth:`cell_log_prob` takes the mask
    explicitly. ``mean`` is each cell's decoded value: numeric and count means, the
    probability of a binary 1, and the most probable level id of a categorical column.
    ``variance`` is that of the value (of the level id about that mode, for a categorical).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, params: Tensor, layout: _Layout, numeric_scale: Tensor, count_theta: Tensor,
                 x_shape: Sequence[int]) -> None:
        self.params = params  # [*lead, P]
        self.layout = layout
        self.numeric_scale = numeric_scale  # [C_num] standard deviations, in data units
        self.count_theta = count_theta  # [C_count]
        self.x_shape = tuple(int(s) for s in x_shape)
        super().__init__(params.shape[:-1] + Size(self.x_shape), Size(), validate_args=False)

    # --- the parts, each [*lead, C_t] ---------------------------------------------------------
    def _numeric(self) -> Normal:
        lay = self.layout
        mean, std = lay.numeric_mean.to(self.params.dtype), lay.numeric_std.to(self.params.dtype)
        return Normal(mean + std * self.params[..., lay.numeric_par], self.numeric_scale, validate_args=False)

    def _binary(self) -> Bernoulli:
        return Bernoulli(logits=self.params[..., self.layout.binary_par], validate_args=False)

    def _count_eta(self) -> Tensor:
        lay = self.layout
        return self.params[..., lay.count_par] + lay.count_offset.to(self.params.dtype)  # log of the mean

    def _count(self) -> NegativeBinomial:
        theta = self.count_theta
        return NegativeBinomial(total_count=theta, logits=self._count_eta() - theta.log(), validate_args=False)

    def _categorical_log_probs(self) -> Tensor:
        lay = self.layout
        logits = self.params[..., lay.categorical_par].masked_fill(lay.categorical_pad, -math.inf)
        return torch.log_softmax(logits, -1)  # [*lead, C_cat, K_max]; padded levels -inf

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[: x.ndim - len(self.x_shape)], -1)  # [..., C]

    def _unflat(self, v: Tensor) -> Tensor:
        return v.reshape(*v.shape[:-1], *self.x_shape)

    def _join(self, parts: list[Tensor]) -> Tensor:
        """Per-type results [..., C_t] (numeric, binary, count, categorical) back in column order."""
        shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
        joined = torch.cat([p.expand(*shape, p.shape[-1]) for p in parts], -1)
        return self._unflat(joined[..., self.layout.inverse])

    # --- densities ------------------------------------------------------------------------
    def cell_log_prob(self, x: Tensor, observed: Tensor) -> Tensor:
        """log p(x_j|z) at each observed cell, 0 at the others ``[*batch, *x_shape]``; ``x`` and
        ``observed`` (bool) ``[..., *x_shape]`` broadcast against the batch. What an unobserved
        cell holds (NaN, inf, anything) changes neither the value nor any gradient."""
        lay = self.layout
        obs = self._flat(observed)
        xf = torch.where(obs, self._flat(x), 0.0)  # [..., C], NaN-free before any maths
        parts = [
            self._numeric().log_prob(xf[..., lay.numeric_cols]),
            self._binary().log_prob(xf[..., lay.binary_cols]),
            self._count().log_prob(xf[..., lay.count_cols]),
        ]
        logp = self._categorical_log_probs()  # [*lead, C_cat, K_max]
        ids = xf[..., lay.categorical_cols].long()  # [..., C_cat]
        shape = torch.broadcast_shapes(logp.shape[:-1], ids.shape)
        parts.append(logp.expand(*shape, logp.shape[-1]).gather(-1, ids.expand(shape).unsqueeze(-1)).squeeze(-1))
        lp = self._join(parts)
        return torch.where(observed.expand_as(lp), lp, 0.0)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p at each cell, 0 where ``value`` is NaN (missing)."""
        return self.cell_log_prob(value, ~torch.isnan(value))

    # --- moments and samples --------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        logp = self._categorical_log_probs()
        mode = logp.argmax(-1).to(self.params.dtype)
        return self._join([self._numeric().mean, self._binary().mean, self._count_eta().exp(), mode])

    @property
    def variance(self) -> Tensor:
        p = self._categorical_log_probs().exp()  # [*lead, C_cat, K_max]
        ids = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)
        mode = p.argmax(-1, keepdim=True).to(p.dtype)
        cat = (p * (ids - mode) ** 2).sum(-1)
        mu = self._count_eta().exp()
        return self._join([self._numeric().variance, self._binary().variance, mu + mu**2 / self.count_theta, cat])

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        with torch.no_grad():
            logp = self._categorical_log_probs()
            cat = torch.distributions.Categorical(logits=logp, validate_args=False).sample(sample_shape)
            return self._join([self._numeric().sample(sample_shape), self._binary().sample(sample_shape),
                               self._count().sample(sample_shape), cat.to(self.params.dtype)])


class MixedInput(nn.Module):
    """x ``[B, C]`` (NaN: missing) -> encoder features ``[B, F + C]``: the numeric columns
    standardised, the binary ones as they are, the counts' log1p, the categorical ones one-hot
    (in that order, by type), every missing cell as zeros; then the observed mask (1 observed,
    0 missing), in column order."""

    def __init__(self, columns: Sequence[Column]) -> None:
        super().__init__()
        self.layout = _Layout(columns)
        lay = self.layout
        self.levels = tuple(columns[j].params for j in lay.categorical_cols.tolist())
        self.width = lay.counts["numeric"] + lay.counts["binary"] + lay.counts["count"] + sum(self.levels) + len(columns)

    def forward(self, x: Tensor) -> Tensor:
        lay = self.layout
        obs = ~torch.isnan(x)  # [B, C]
        xf = torch.where(obs, x, 0.0)
        w = obs.to(x.dtype)
        num = (xf[:, lay.numeric_cols] - lay.numeric_mean.to(x.dtype)) / lay.numeric_std.to(x.dtype)
        parts = [num * w[:, lay.numeric_cols], xf[:, lay.binary_cols], torch.log1p(xf[:, lay.count_cols])]
        for i, (j, k) in enumerate(zip(lay.categorical_cols.tolist(), self.levels)):
            parts.append(nn.functional.one_hot(xf[:, j].long(), k).to(x.dtype) * w[:, j : j + 1])
        return torch.cat([*parts, w], -1)  # [B, F + C]

    def extra_repr(self) -> str:
        return f"columns={len(self.layout.columns)}, features={self.width}"


class _ZeroFill(nn.Module):
    """x with every NaN (missing value) replaced by 0, shape kept: the encoder's input when no
    columns are declared."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nan_to_num(x, nan=0.0)


class MixedDecoder(Decoder):
    """p(x|z) = prod over observed cells of each column's own likelihood (module docstring).

    Args:
        net: maps ``[N, D]`` to at least P numbers (P = sum of the columns' numbers).
        x_shape: ``(C,)`` for declared columns; any shape for the default numeric ones.
        columns: the table's columns (:func:`parse_columns`), C of them.
    """

    name = "mixed"
    support = constraints.real
    support_text = "a table: numbers, 0/1, level ids or counts per column; NaN for a missing cell"
    tabular = True  # the data come from the mixed-table CSV reader (vaelab.data.tabular)

    @staticmethod
    def params_per_value_for(column_types: str = "", **_: object) -> int:
        """ceil(P / C): the network's numbers per value of x, of which the first P are read."""
        columns = parse_columns(column_types, "mixed likelihood column_types")
        if not columns:
            return 1
        return math.ceil(sum(c.params for c in columns) / len(columns))

    @staticmethod
    def encoder_input(x_shape: tuple[int, ...], column_types: str = "", **_: object) -> tuple[nn.Module, tuple[int, ...]]:
        """The encoder's view of x: :class:`MixedInput` for declared columns, else x with
        missing values zero-filled (shape kept, so any network reads it)."""
        columns = parse_columns(column_types, "mixed likelihood column_types")
        if not columns:
            return _ZeroFill(), tuple(x_shape)
        columns = columns_for(x_shape, column_types)
        module = MixedInput(columns)
        return module, (module.width,)

    def __init__(self, net: nn.Module, x_shape: Sequence[int], columns: Sequence[Column]) -> None:
        super().__init__(net, x_shape)
        self.columns = tuple(columns)
        if len(self.columns) != math.prod(self.x_shape):
            raise VaelabError(f"mixed likelihood: {len(self.columns)} columns for data of shape {self.x_shape}")
        self.layout = _Layout(self.columns)
        self.params_per_value = math.ceil(self.layout.n_params / len(self.columns))
        n_num, n_count = self.layout.counts["numeric"], self.layout.counts["count"]
        # per-column parameters only for the types present (an empty one would get no gradient)
        self.raw_scale = nn.Parameter(torch.full((n_num,), math.log(math.expm1(1.0 - 1e-3)))) if n_num else None
        self.raw_theta = nn.Parameter(torch.zeros(n_count)) if n_count else None

    @property
    def numeric_scale(self) -> Tensor:
        """s_j sigma_j ``[C_num]``: the numeric columns' standard deviations in data units."""
        if self.raw_scale is None:
            return self.layout.numeric_std.float()
        sigma = nn.functional.softplus(self.raw_scale) + 1e-3
        return self.layout.numeric_std.to(sigma.dtype) * sigma

    @property
    def count_theta(self) -> Tensor:
        """theta_j ``[C_count]``: the count columns' inverse dispersions."""
        return self.layout.count_offset.new_ones(0) if self.raw_theta is None else self.raw_theta.exp()

    def forward(self, z: Tensor, c: Tensor | None = None) -> Distribution:
        lead = z.shape[:-1]
        if c is None:
            out = self.net(z.reshape(-1, z.shape[-1]))
        else:  # c [B, C] broadcast over the leading sample dimensions of z [*S, B, D]
            c = c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1])
            out = self.net(z.reshape(-1, z.shape[-1]), c)
        params = out.reshape(*lead, -1)[..., : self.layout.n_params]  # [*lead, P]
        cells = MixedCells(params, self.layout, self.numeric_scale.to(params.dtype), self.count_theta.to(params.dtype),
                           self.x_shape)
        return Independent(cells, len(self.x_shape), validate_args=False)

    def check(self, x: Tensor, what: str = "data") -> None:
        """Raise a one-line VaelabError unless every observed cell fits its column: finite
        numbers, 0/1, a level id or a non-negative whole number (NaN marks a missing cell)."""
        if x.shape[x.ndim - len(self.x_shape):] != self.x_shape:
            raise VaelabError(f"{what} has shape {tuple(x.shape)}; this table has examples of shape {self.x_shape}")
        flat = x.reshape(-1, len(self.columns))  # [N, C]
        obs = ~torch.isnan(flat)
        for j, col in enumerate(self.columns):
            v = flat[:, j]
            if col.type == "numeric":
                bad = torch.isinf(v)
                need = "a finite number"
            elif col.type == "binary":
                bad = obs[:, j] & (v != 0) & (v != 1)
                need = "0 or 1"
            elif col.type == "count":
                bad = obs[:, j] & ((v < 0) | (v != torch.round(v)) | torch.isinf(v))
                need = "a count 0, 1, 2, ..."
            else:
                bad = obs[:, j] & ((v < 0) | (v >= len(col.levels)) | (v != torch.round(v)))
                need = f"a level id 0..{len(col.levels) - 1}"
            if bad.any():
                row = int(bad.int().argmax())
                raise VaelabError(f"{what}: column '{col.name}' ({col.type}) holds {float(v[row]):g} at row {row}; "
                                  f"it needs {need} (NaN for a missing cell)")

    def extra_repr(self) -> str:
        kinds = ", ".join(f"{t} {n}" for t, n in self.layout.counts.items() if n)
        return f"columns={len(self.columns)} ({kinds}), params={self.layout.n_params}"


@register("likelihood", "mixed", options=(COLUMN_TYPES,), cls=MixedDecoder,
          help="mixed-type tables (CSV with a header): a likelihood per column, missing cells masked out")
def _mixed(shapes: Shapes, column_types: str) -> nn.Module:
    columns = columns_for(shapes.x_shape, column_types)
    per_value = math.ceil(sum(c.params for c in columns) / len(columns))
    return MixedDecoder(shapes.decoder_net(per_value), shapes.x_shape, columns)
