"""One self-contained HTML page about a run: :func:`write_report`, behind ``vaelab report``.

The page holds the run's configuration, its training curves, the evaluation of
:func:`vaelab.evaluation.evaluate` (an :class:`~vaelab.evaluation.summary.EvaluationSummary`,
with a short explanation of every quantity), and figures of what the model does:
reconstructions, samples, interpolations, traversals of the most informative latent
dimensions, the test set's posterior means in 2-D and the KL per dimension.

A model with a context (a conditional VAE, ``--condition-on``, or the semi-supervised M2)
gets every figure given each example's own context c: reconstructions, interpolations
(between two test examples of the same class), traversals and the latent space use the test
set's c. Its samples are drawn given the label, one row per class, and a style/content grid
decodes the codes of a few test examples under every class. Covariates (continuous context)
cannot be made up: samples take the covariates of test examples, and the captions say so.
The evaluation says -log p(x|c) and names the conditioning; a model with a classifier (M2)
shows its test accuracy.

Images are embedded as base64 PNG data URIs (the plots return their bytes: no temporary
files) and the styles are inline, so the file opens anywhere, offline, and can be mailed or
archived as it is.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import plots
from ..context import LABEL
from ..data import context_columns
from ..errors import VaelabError
from ..evaluation import EvalSettings
from ..evaluation.summary import EvaluationSummary
from ..runs import EVAL, TrainedModel, interpolate_latents, load, read_metrics, write_eval
from ..training.checkpoint import atomic_write_text
from .figures import kl_bars, latent_traversal, project_2d

__all__ = ["build_report", "write_report", "sections", "REPORT", "SECTIONS"]

REPORT = "report.html"
# (id, heading) of every section of an unconditional model's page, in page order
SECTIONS: tuple[tuple[str, str], ...] = (
    ("evaluation", "Evaluation"),
    ("latents", "Latent health"),
    ("gaps", "Inference gaps"),
    ("curves", "Training curves"),
    ("reconstructions", "Reconstructions"),
    ("samples", "Samples from the prior"),
    ("interpolations", "Interpolations"),
    ("traversals", "Latent traversals"),
    ("latent-space", "The latent space"),
    ("config", "Configuration"),
)
MAX_CLASSES = 20  # rows of the class grids; a model with more classes shows the first ones
MAX_EXAMPLES = 5000  # test examples encoded for the latent space


def sections(model: TrainedModel) -> tuple[tuple[str, str], ...]:
    """(id, heading) of every section of ``model``'s page, in order: :data:`SECTIONS`, where a
    model with a label has samples given the label and a style/content section, and one with
    covariates alone samples given the context."""
    if not model.spec.context:
        return SECTIONS
    out: list[tuple[str, str]] = []
    for sid, heading in SECTIONS:
        if sid != "samples":
            out.append((sid, heading))
        elif model.spec.label() is not None:
            out += [("samples", "Samples given the label"), ("style", "Style and content")]
        else:
            out.append(("samples", "Samples given the context"))
    return tuple(out)


# --------------------------------------------------------------------------- entry points


def write_report(
    run: str | Path | TrainedModel,
    output: str | Path | None = None,
    *,
    reevaluate: bool = False,
    settings: EvalSettings | None = None,
    device: str | None = None,
) -> Path:
    """Write the HTML report of a run folder (default ``RUN/report.html``, atomically).

    The evaluation is read from ``RUN/eval.json`` when it is complete (it has the latent
    health and settings that ``vaelab eval`` writes) unless ``reevaluate``; otherwise the
    model is evaluated with ``settings`` (default: :class:`EvalSettings` with the run's KL
    method) and the result is saved to ``RUN/eval.json`` too. ``settings.seed`` also seeds
    the figures. Returns the path written.

    Example:
        >>> write_report("runs/mnist", settings=EvalSettings(k=5000, gap_examples=0))
    """
    model = run if isinstance(run, TrainedModel) else load(run, device=device)
    settings = settings if settings is not None else EvalSettings(kl=model.config.kl)
    evaluation = None if reevaluate else _saved_evaluation(model.run_dir)
    if evaluation is None:
        evaluation = model.evaluate(settings).summary(data=f"{model.config.data} (test split)")
        write_eval(model.run_dir, evaluation.to_dict())
    page = build_report(model, evaluation, seed=settings.seed)
    path = Path(output) if output is not None else model.run_dir / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path


def _saved_evaluation(run_dir: Path) -> EvaluationSummary | None:
    """``RUN/eval.json`` when it holds a complete evaluation (settings and latent health, as
    ``vaelab eval`` and ``vaelab train`` write it); None when missing, unreadable or from
    vaelab 0.1.0 (then the report evaluates anew). A file with a malformed value is an error."""
    path = run_dir / EVAL
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    try:
        summary = EvaluationSummary.from_dict(doc, source=str(path))
    except VaelabError as err:
        raise VaelabError(f"{err} (or use 'vaelab report --reevaluate')") from None
    return summary if summary.settings is not None else None


def build_report(model: TrainedModel, evaluation: EvaluationSummary, *, seed: int = 0,
                 traversal_dims: int = 6) -> str:
    """The report page of ``model`` as one HTML string.

    Args:
        model: a loaded run.
        evaluation: what :meth:`TrainedModel.evaluate` found (``.summary()``, or
            :meth:`EvaluationSummary.read` of ``RUN/eval.json``).
        seed: seeds the samples.
        traversal_dims: how many of the most informative dimensions to traverse.
    """
    with torch.random.fork_rng(devices=[]):  # the figures' draws leave the caller's random state alone
        test = _test_data(model)
        images = _figures(model, test, evaluation, seed=seed, traversal_dims=traversal_dims)
    return _page(model, evaluation, images, test)


# --------------------------------------------------------------------------- figures


@dataclass
class _Test:
    """The test examples the figures show: x ``[N, *x_shape]``, their labels ``[N]`` (or
    None) and their context c ``[N, P]``: a conditional VAE's c, M2's label as a column, or
    None for a model without context (or whose context the test set lacks)."""

    x: Tensor
    labels: Tensor | None
    c: Tensor | None


@dataclass
class _Drawn:
    """A figure: its ``data:`` URI, and for a grid with one row per class, its rows."""

    uri: str
    rows: int | None = None


def _test_data(model: TrainedModel) -> _Test:
    data = model.data()
    x, labels = model.test_set(data)
    x = x[:MAX_EXAMPLES]
    labels = None if labels is None else labels[: x.shape[0]]
    c = None
    if model.spec.context:
        try:
            c = context_columns(data, model.spec.context, "test")
        except VaelabError:  # e.g. a test split without labels: figures that need c are left out
            c = None
        c = None if c is None else c[: x.shape[0]]
    return _Test(x, labels, c)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _covariates(model: TrainedModel) -> list[str]:
    return [v.name for v in model.spec.context if v.kind == "continuous"]


def _with_label(c: Tensor, column: int, cls: int) -> Tensor:
    """A copy of contexts ``c`` ``[n, P]`` with the label column set to class ``cls``."""
    out = c.clone()
    out[:, column] = float(cls)
    return out


def _figures(model: TrainedModel, test: _Test, ev: EvaluationSummary, *, seed: int,
             traversal_dims: int) -> dict[str, _Drawn]:
    """Every figure, keyed by name."""
    x, c = test.x, test.c
    is_image = len(model.x_shape) == 3
    has_context = bool(model.spec.context)
    out: dict[str, _Drawn] = {}

    def draw(name: str, png: bytes, rows: int | None = None) -> None:
        out[name] = _Drawn(_data_uri(png), rows)

    metrics = read_metrics(model.run_dir)
    if metrics:
        draw("curves", plots.training_curves(metrics))
    can_encode = not has_context or c is not None  # q(z|x, c) needs c (M2: its label)
    n_rec = min(16, x.shape[0])
    if can_encode:
        draw("reconstructions", plots.reconstruction_grid(
            x[:n_rec], model.reconstruct(x[:n_rec], c=None if c is None else c[:n_rec]), n=n_rec, title=""))
    label = model.spec.label()
    names = [v.name for v in model.spec.context]
    column = names.index(LABEL) if label is not None else None  # the label's column of c
    classes = 0 if label is None else min(label.classes, MAX_CLASSES)  # rows of the class grids
    covariates = _covariates(model)
    if not has_context:
        draw("samples", plots.image_grid(model.sample(64 if is_image else 16, seed=seed), title=""))
    elif column is not None and (c is not None or not covariates):
        n = 10 if is_image else 6
        base = c[:n] if covariates and c is not None else torch.zeros(n, len(names))
        grid = torch.stack([model.sample(len(base), c=_with_label(base, column, k), seed=seed + k)
                            for k in range(classes)])  # [classes, n, *x_shape]
        draw("samples", plots.class_grid(grid, row_labels=list(model.class_names[:classes]), title=""), classes)
    elif c is not None:  # covariates only: the test set's own contexts
        m = min(64 if is_image else 16, c.shape[0])
        draw("samples", plots.image_grid(model.sample(m, c=c[:m], seed=seed), title=""))
    if column is not None and c is not None:
        pick = _one_per_class(test.labels if test.labels is not None else c[:, column], 8 if is_image else 5)
        z = model.encode(x[pick], c=c[pick]).mean  # [m, D]
        decoded = [model.decode(z, c=_with_label(c[pick], column, k)).mean.cpu() for k in range(classes)]
        grid = torch.stack([x[pick].cpu(), *decoded])  # [1 + classes, m, *x_shape]
        draw("style", plots.class_grid(grid, row_labels=["input", *model.class_names[:classes]],
                                       separate_first=True, title=""), classes + 1)
    if can_encode:
        pairs = _pairs(x.shape[0], None if column is None or c is None else c[:, column])
        if pairs:
            paths = torch.stack([_interpolation(model, x, c, i, j) for i, j in pairs])
            draw("interpolations", plots.interpolation_strip(paths, title=""))
        dims, notes, decoded, values = _traversal(model, x, c, ev, traversal_dims)
        draw("traversals", latent_traversal(decoded, values, dims, row_notes=notes))
        z_all = model.encode(x, c=c).mean.cpu()  # [N, D]
        z2, (xlabel, ylabel) = project_2d(z_all)
        draw("latent_space", plots.latent_scatter(z2, labels=test.labels, xlabel=xlabel, ylabel=ylabel, title=""))
    if model.latent_dim == 2 and is_image and not has_context:
        draw("manifold", plots.latent_manifold(model.vae))
    lat = ev.latents
    if lat is not None:
        draw("kl_bars", kl_bars(lat.activity, kl_per_dim=lat.kl_per_dim, threshold=lat.active_threshold))
    return out


def _one_per_class(labels: Tensor, count: int) -> list[int]:
    """Indices of up to ``count`` examples, the first of each class before any second one."""
    seen: dict[float, int] = {}
    rank = []  # (how many of its class came before, index)
    for i, y in enumerate(labels.tolist()):
        rank.append((seen.get(y, 0), i))
        seen[y] = seen.get(y, 0) + 1
    return [i for _, i in sorted(rank)[:count]]


def _pairs(n: int, labels: Tensor | None, count: int = 4) -> list[tuple[int, int]]:
    """Pairs of test examples to interpolate between: consecutive ones, or (with ``labels``)
    each example with the next one of its class, so that both ends share their label."""
    if labels is None:
        return [(i, i + 1) for i in range(0, min(n - 1, 2 * count), 2)]
    ys = labels.tolist()
    used: set[int] = set()
    out: list[tuple[int, int]] = []
    for i in range(n):
        if i in used:
            continue
        j = next((j for j in range(i + 1, n) if j not in used and ys[j] == ys[i]), None)
        if j is not None:
            used |= {i, j}
            out.append((i, j))
        if len(out) == count:
            break
    return out


@torch.no_grad()
def _interpolation(model: TrainedModel, x: Tensor, c: Tensor | None, i: int, j: int, steps: int = 10) -> Tensor:
    """Decoded means ``[steps, *x_shape]`` on the line between the posterior means of examples
    i and j, each encoded with its own context; the path's context moves from c_i to c_j
    (the label is the same at both ends; covariates move with the code)."""
    ci, cj = (None, None) if c is None else (c[i : i + 1], c[j : j + 1])
    z0 = model.encode(x[i : i + 1], c=ci).mean[0]
    z1 = model.encode(x[j : j + 1], c=cj).mean[0]
    path = interpolate_latents(z0, z1, steps)  # [steps, D]
    if ci is None or cj is None:
        return model.decode(path).mean.cpu()
    t = torch.linspace(0, 1, steps)[:, None]  # [steps, 1]
    return model.decode(path, c=ci + t * (cj - ci)).mean.cpu()


@torch.no_grad()
def _traversal(model: TrainedModel, x: Tensor, c: Tensor | None, ev: EvaluationSummary,
               count: int) -> tuple[list[int], list[str], Tensor, list[float]]:
    """The most informative dimensions (by KL, else activity) varied over -3..3 from the
    posterior mean of the first test example, decoded in its context: (dims, row notes,
    decoded [R, S, ...], values)."""
    lat = ev.latents
    d = model.latent_dim
    kl = lat.kl_per_dim if lat is not None else None
    score = kl or (lat.activity if lat is not None else None) or [0.0] * d
    dims = sorted(range(d), key=lambda i: -score[i])[: min(count, d)]
    values = [-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0]
    c0 = None if c is None else c[:1]
    base = model.encode(x[:1], c=c0).mean[0]  # [D]
    z = base.repeat(len(dims), len(values), 1)  # [R, S, D]
    for r, dim in enumerate(dims):
        z[r, :, dim] = torch.tensor(values, dtype=z.dtype, device=z.device)
    cs = None if c0 is None else c0.expand(len(dims) * len(values), -1)
    decoded = model.decode(z.reshape(-1, d), c=cs).mean.reshape(len(dims), len(values), *model.x_shape).cpu()
    notes = [f"({kl[i]:.2f} nats)" if kl else "" for i in dims]
    return dims, notes, decoded, values


# --------------------------------------------------------------------------- page

_CSS = """
:root { --fg:#1f2937; --muted:#5b6472; --accent:#2563eb; --bg:#f4f6fa; --card:#fff;
        --border:#e3e7ee; --warn-bg:#fff7ed; --warn:#c2410c; --ok:#15803d; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:var(--bg);
       font: 15px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header { background: linear-gradient(135deg, #1e3a8a, #2563eb 70%, #3b82f6); color:#fff; padding: 28px 0 24px; }
header h1 { margin: 0 0 4px; font-size: 1.7rem; font-weight: 650; letter-spacing: -0.01em; }
header .sub { opacity: .85; font-size: .95rem; }
.cards { display:flex; flex-wrap:wrap; gap: 12px; margin-top: 18px; }
.card { background: rgba(255,255,255,.13); border: 1px solid rgba(255,255,255,.25); border-radius: 10px;
        padding: 10px 16px; flex: 1 1 0; min-width: 140px; }
.card .v { font-size: 1.35rem; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .l { font-size: .8rem; opacity: .85; }
nav { position: sticky; top: 0; z-index: 2; background: rgba(255,255,255,.96);
      border-bottom: 1px solid var(--border); backdrop-filter: blur(4px); }
nav .wrap { display:flex; flex-wrap:wrap; gap: 4px 16px; padding-top: 8px; padding-bottom: 8px; }
nav a { color: var(--accent); text-decoration: none; font-size: .9rem; }
nav a:hover { text-decoration: underline; }
section { background: var(--card); border: 1px solid var(--border); border-radius: 12px;
          padding: 20px 26px; margin: 22px 0; box-shadow: 0 1px 3px rgba(15,23,42,.05); }
h2 { margin: 0 0 8px; font-size: 1.3rem; }
h3 { margin: 18px 0 6px; font-size: 1.05rem; }
p { margin: 6px 0 10px; }
.explain { color: var(--muted); font-size: .93rem; }
table { border-collapse: collapse; width: 100%; font-size: .93rem; margin: 8px 0 4px; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--border); text-align: left; vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .82rem; text-transform: uppercase; letter-spacing: .03em; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; font-weight: 600; }
td.what { color: var(--muted); font-size: .88rem; }
td:first-child { min-width: 190px; }
tr:hover td { background: #f8fafc; }
code { background: #f1f5f9; padding: 1px 5px; border-radius: 4px; font-size: .88em; }
figure { margin: 14px 0 6px; text-align: center; }
figure img { max-width: 100%; height: auto; border-radius: 6px; }
figcaption { color: var(--muted); font-size: .88rem; margin-top: 6px; }
.warn { background: var(--warn-bg); border-left: 4px solid var(--warn); color: #7c2d12;
        padding: 10px 14px; border-radius: 6px; margin: 10px 0; }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--warn); font-weight: 600; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; align-items: start; }
.config { columns: 2; column-gap: 32px; }
.config table { break-inside: avoid; }
@media (max-width: 860px) { .grid2 { grid-template-columns: 1fr; } .config { columns: 1; } }
footer { color: var(--muted); font-size: .85rem; padding: 10px 0 40px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def _pm(value: float | None, se: float | None, digits: int = 2) -> str:
    """``value ± se``, the error with enough decimals to show its first significant digit."""
    if value is None:
        return "–"
    if se is None:
        return _fmt(value, digits)
    places = digits
    while 0 < se < 10 ** -places and places < 4:
        places += 1
    return f"{_fmt(value, digits)} ± {se:.{places}f}"


def _img(images: dict[str, _Drawn], name: str, alt: str, caption: str, max_width: int | None = None) -> str:
    if name not in images:
        return f'<p class="explain">({_e(alt)}: not available for this run.)</p>'
    drawn = images[name]
    style = f' style="width:100%;max-width:{max_width}px"' if max_width else ""
    rows = f' data-rows="{drawn.rows}"' if drawn.rows is not None else ""
    return (f'<figure id="figure-{_e(name)}"{rows}><img src="{drawn.uri}" alt="{_e(alt)}"{style}>'
            f"<figcaption>{caption}</figcaption></figure>")


def _rows(rows: list[tuple[str, str, str]]) -> str:
    body = "".join(f'<tr><td>{name}</td><td class="num">{value}</td><td class="what">{what}</td></tr>'
                   for name, value, what in rows)
    return f"<table><tr><th>quantity</th><th>value</th><th>what it means</th></tr>{body}</table>"


def _section(sid: str, heading: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(heading)}</h2>{body}</section>'


def _variable(model: TrainedModel, name: str) -> str:
    """One conditioning variable in words, e.g. ``label: 10 classes (0, 1, …, 9)``."""
    v = next((v for v in model.spec.context if v.name == name), None)
    if v is None:
        return _e(name)
    if v.kind == "continuous":
        return f"<code>{_e(name)}</code>: a continuous covariate (standardised with mean {_fmt(v.mean)}, sd {_fmt(v.std)})"
    names = v.names()
    shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:10]) + f", … ({len(names)} in all)"
    how = f"an embedding of {v.embedding}" if v.embedding else "one-hot"
    return f"<code>{_e(name)}</code>: {v.classes} classes ({_e(shown)}), {how}"


def _evaluation_section(ev: EvaluationSummary, model: TrainedModel) -> str:
    nats = "nats"
    given = ev.given
    cz = f"x,{','.join(ev.conditional_on)}" if ev.conditional_on else "x"
    rows = [
        ("test examples <i>N</i>", _fmt(ev.n), _e(ev.data or "the run's test split")),
    ]
    if ev.conditional_on:
        rows.append(("conditioned on", _e(", ".join(ev.conditional_on)),
                     "<br>".join(_variable(model, n) for n in ev.conditional_on)
                     + "<br>Every figure is given each example's own context c: the encoder is q(z|x, c), the "
                     "prior p(z|c), the decoder p(x|z, c), so the numbers below are of log p(x|c), "
                     "not log p(x)."))
    if model.spec.family == "m2":
        labelled = model.data_info.get("n_labelled")
        rows.append(("model", "semi-supervised M2",
                     "Kingma et al. (2014): the label y is a latent variable with a classifier q(y|x), observed "
                     f"for {_e(labelled if labelled is not None else 'some')} training examples; log p(x) and the "
                     "ELBO sum y out."))
    rows += [
        ("ELBO", f"{_pm(ev.elbo, ev.elbo_stderr)} {nats}",
         f"Evidence lower bound, E<sub>q</sub>[log p(x|z{_e(given.replace('|', ','))})] − KL(q(z|{_e(cz)}) ‖ "
         f"p(z{_e(given)})): a lower bound on log p(x{_e(given)}) and what a standard VAE (β = 1) is trained "
         "to maximise. Higher is better."),
        ("&nbsp;&nbsp;reconstruction", f"{_pm(ev.reconstruction, ev.reconstruction_stderr)} {nats}",
         "E<sub>q</sub>[log p(x|z)]: how well the decoder rebuilds x from codes drawn from q(z|x). "
         "Its negative is the <b>distortion</b> D."),
        ("&nbsp;&nbsp;KL, the rate", f"{_pm(ev.kl, ev.kl_stderr)} {nats}",
         f"KL(q(z|{_e(cz)}) ‖ p(z{_e(given)})): how much information (in nats) the code carries about x beyond "
         "the prior, the <b>rate</b> R. ELBO = −(D + R)."),
    ]
    if ev.k is not None and ev.nll is not None:
        how = {"mixture": ("mixture IS", "importance sampling from a defensive mixture of the encoder's q(z|x), the "
                           "per-example optimal diagonal Gaussian q* and a Laplace Gaussian at q*'s mean"),
               "ais": ("AIS", "annealed importance sampling (Neal 2001; Wu et al. 2017): chains moved by HMC "
                       "along a path from q(z|x) to p(x, z)")}.get(ev.estimator or "is",
                      ("K", "importance sampling with K samples from q(z|x)"))
        label = (f"−log p(x{_e(given)}), K = {ev.k}" if how[0] == "K" else
                 f"−log p(x{_e(given)}), {how[0]}" + (f", T = {ev.ais.steps}, S = {ev.k}" if ev.ais is not None and how[0] == "AIS" else f", K = {ev.k}"))
        rows.append((label, f"{_pm(ev.nll, ev.log_px_stderr)} {nats}",
                     "Negative log-likelihood of the test data"
                     + (" given their context" if given else "")
                     + f", estimated by {how[1]}: a stochastic over-estimate of −log p(x) that shrinks as the "
                     "estimator is given more effort. ± is the standard error over examples; the Monte-Carlo error of the "
                     f"estimate is ± {_fmt(ev.log_px_mc_stderr, 3)}. The number to compare models by: lower "
                     "is better" + (" (against other models given the same context)." if given else ".")))
        if len(ev.estimates) > 1:
            side = "".join(
                f"<tr><td>{_e(e.name)}</td><td class=\"num\">{_pm(-e.log_px, e.log_px_stderr)}</td>"
                f"<td class=\"num\">{_fmt(e.log_px_mc_stderr, 3)}</td>"
                f"<td class=\"num\">{'–' if e.khat_median is None else _fmt(e.khat_median)}</td>"
                f"<td class=\"num\">{'–' if e.seconds is None else _fmt(e.seconds, 1)}</td></tr>" for e in ev.estimates)
            rows.append(("estimates side by side",
                         "<table><tr><th>estimator</th><th>−log p(x)</th><th>MC ±</th><th>k-hat</th><th>seconds (when measured)</th></tr>"
                         f"{side}</table>",
                         "The same model and data, scored by each estimator that was run. All are stochastic lower "
                         "bounds on log p(x) (upper bounds on −log p(x)): the lowest −log p(x) is the tightest, and "
                         "the spread shows how much the headline number depends on the estimator."))
        if ev.khat_median is not None and ev.khat_bad_share is not None:
            share = f"{100 * ev.khat_bad_share:.0f} % above 0.7"
            if ev.khat_bad_share > 0:
                share = f'<span class="bad">{share}</span>'
            rows.append(("Pareto k-hat", f"median {_fmt(ev.khat_median)}, {share}",
                         "Shape of a generalized Pareto fitted to the largest importance weights of each example "
                         "(Vehtari et al., PSIS): below 0.5 the weights have finite variance; above 0.7 the estimate "
                         "is unreliable and biased low by more than its error says (use a better proposal or AIS)."))
        if ev.ais is not None:
            a = ev.ais
            trace = ", ".join(f"T = {t.steps}: {_fmt(-t.log_px)}" for t in a.trace)
            rows.append(("annealed importance sampling", f"T = {a.steps}, S = {a.chains}",
                         f"{a.leapfrog} leapfrog steps per HMC transition, path from the {_e(a.start)}, "
                         f"acceptance {100 * a.acceptance:.0f} %" + ("." if a.seconds is None else f", {_fmt(a.seconds, 1)} s.")
                         + (f" −log p(x) as T grows: {_e(trace)} (separate runs; a converged estimate stops falling)."
                            if len(a.trace) > 1 else "")))
        if ev.bdmc is not None:
            b = ev.bdmc
            rows.append(("BDMC bracket", f"[{_fmt(b.lower)}, {_fmt(b.upper)}] · width {_pm(b.width, b.width_stderr)} {nats}",
                         f"Bidirectional Monte Carlo (Grosse et al. 2015) on {b.n} examples simulated from the model: "
                         "forward AIS bounds log p(x) from below, reverse AIS from the simulating z from above. The width "
                         f"bounds the error of AIS with these settings (T = {b.steps}, S = {b.chains}) on data like the "
                         "model's own."))
        if ev.gaps is not None:
            rows.append(("log p(x) of the gap split", _e({"is": "encoder IS", "mixture": "mixture IS", "ais": "AIS"}.get(
                ev.gaps.settings.log_px_estimator, ev.gaps.settings.log_px_estimator)),
                         "The inference-gap split below uses the tightest estimate of log p(x) that was run."))
        if ev.bits_per_dim is not None:
            rows.append(("bits per dimension", _fmt(ev.bits_per_dim, 4),
                         "−log p(x) / (D ln 2), for discrete data: the average code length per "
                         "value (pixel) of a lossless compressor built on the model."))
        what = "chain weights of AIS" if ev.estimator == "ais" else "importance weights"
        rows.append(("effective sample size", f"median {_fmt(ev.ess_median, 1)}, min {_fmt(ev.ess_min, 1)}",
                     f"ESS of the {what}, (Σw)²/Σw², between 1 and {ev.k}: how many of "
                     "the samples really count. Tiny values mean a few samples dominate and log p(x) may "
                     "be underestimated."))
    else:
        rows.append((f"−log p(x{_e(given)})", "not computed", "evaluated with K = 0 (ELBO only)"))
    if ev.accuracy is not None:
        rows.append(("classifier accuracy", f"{_pm(100 * ev.accuracy, None if ev.accuracy_stderr is None else 100 * ev.accuracy_stderr)} %",
                     "Share of test examples whose label the model's classifier gets right, argmax<sub>y</sub> "
                     "q(y|x). ± is the binomial standard error √(a(1 − a)/N)."))
    return _rows(rows)


def _latents_section(ev: EvaluationSummary, images: dict[str, _Drawn]) -> str:
    lat = ev.latents
    if lat is None:
        return '<p class="explain">Latent health was not computed for this evaluation.</p>'
    verdict = lat.verdict or ("collapsed" if lat.collapsed else "not collapsed")
    status = f'<span class="{"ok" if verdict in ("healthy", "not collapsed") else "bad"}">{_e(verdict)}</span>'
    if lat.informative_units is not None:
        status += f" ({len(lat.informative_units)} of {lat.latent_dim} units carry information)"
    per_dim = ("KL per dimension in closed form (diagonal Gaussian posterior and factorised prior)."
               if lat.kl_per_dim is not None else
               "The posterior is not a diagonal Gaussian, so a KL per dimension is not defined; only "
               "the activity is shown.")
    rows = [
        ("active units", f"{lat.active_units} of {lat.latent_dim}",
         f"Dimensions whose posterior mean moves with the input, Var<sub>x</sub>(E<sub>q</sub>[z<sub>d</sub>]) "
         f"&gt; {_fmt(lat.active_threshold)} (Burda et al. 2016). Inactive ones are ignored by the model."),
        ("average KL", f"{_fmt(lat.kl)} nats", "The rate again: the sum of the per-dimension KLs."),
        ("&nbsp;&nbsp;mutual information I(x; z)",
         f"{_pm(lat.mutual_information, lat.mutual_information_stderr)} nats",
         "How much the code tells about which example it came from, under the aggregate posterior "
         f"q(z) = (1/N) Σ<sub>n</sub> q(z|x<sub>n</sub>). At most log N = {_fmt(lat.mutual_information_max)} "
         "nats for N examples (Monte-Carlo estimate; ± is its error)."),
        ("&nbsp;&nbsp;marginal KL(q(z) ‖ p(z))", f"{_pm(lat.marginal_kl, lat.marginal_kl_stderr)} nats",
         "How far the codes of all examples together are from the prior: large values mean samples "
         "from p(z) land where the decoder was never trained. Average KL = I(x; z) + marginal KL "
         "(Hoffman &amp; Johnson 2016), up to Monte-Carlo error."),
        ("posterior collapse", status,
         "Collapse: q(z|x) ≈ p(z) for every x (no active unit or KL near zero), so the code carries "
         "no information and the decoder models the data alone."),
    ]
    return (_rows(rows) + _img(images, "kl_bars", "KL and activity per latent dimension",
                               f"Left: KL per dimension (nats per example). Right: activity, log scale, with "
                               f"the active-unit threshold. {per_dim}"))


def _gaps_section(ev: EvaluationSummary) -> str:
    given = (f" (here log p(x{_e(ev.given)}), every density given the context)" if ev.given else "")
    intro = (f"<p class=\"explain\">The ELBO falls short of log p(x){given} by exactly KL(q(z|x) ‖ p(z|x)), the "
             "<b>inference gap</b>. Cremer, Li &amp; Duvenaud (2018) split it in two. The "
             "<b>approximation gap</b> is what the family of q (diagonal Gaussians) cannot do: it remains "
             "even for q*, the best diagonal Gaussian for each example, found here by optimising its mean "
             "and scale for that example alone. The <b>amortization gap</b> is what the encoder loses by "
             "using one network for all examples instead of q*. A large amortization gap calls for a "
             "better encoder (or more training); a large approximation gap for a richer posterior "
             "(full covariance, flows).</p>")
    g = ev.gaps
    if g is None:
        return intro + '<p class="explain">Not computed for this evaluation (K = 0 or the split was switched off).</p>'
    s = g.settings
    rows = [
        ("inference gap", f"{_pm(g.inference_gap, g.inference_gap_stderr)} nats",
         "log p(x) − ELBO of the encoder's q(z|x)."),
        ("&nbsp;&nbsp;approximation gap", f"{_pm(g.approximation_gap, g.approximation_gap_stderr)} nats",
         "log p(x) − ELBO(q*): the limit of the diagonal Gaussian family."),
        ("&nbsp;&nbsp;amortization gap", f"{_pm(g.amortization_gap, g.amortization_gap_stderr)} nats",
         "ELBO(q*) − ELBO(q): the price of one shared encoder."),
        ("ELBO of the encoder / of q*", f"{_fmt(g.elbo_encoder)} / {_fmt(g.elbo_optimal)} nats",
         f"on {g.n} test examples, each ELBO from {s.eval_samples} samples with shared noise"),
        ("log p(x) from", _e(s.log_px_estimator), "the tightest estimate of log p(x) that was run"),
    ]
    how = (f"q* from {s.steps} Adam steps (learning rate {s.lr}, cosine-decayed, "
           f"{s.samples} samples per step), started at the encoder's output. ± is the standard "
           f"error over the {g.n} examples; the Monte-Carlo errors are ± {_fmt(g.approximation_gap_mc_stderr, 3)} "
           f"(approximation) and ± {_fmt(g.amortization_gap_mc_stderr, 3)} (amortization).")
    return intro + _rows(rows) + f'<p class="explain">{_e(how)}</p>'


def _config_section(model: TrainedModel, ev: EvaluationSummary) -> str:
    def table(title: str, items: dict[str, Any]) -> str:
        body = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(_show(v))}</td></tr>" for k, v in items.items())
        return f"<table><tr><th colspan=2>{_e(title)}</th></tr>{body}</table>"

    settings: dict[str, Any] = {} if ev.settings is None else {**ev.settings.to_dict(), "device": ev.device}
    return ('<div class="config">' + table("training settings", model.config.to_dict())
            + table("data", model.data_info) + table("evaluation settings", settings) + "</div>")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "–" if value is None or value == "" else str(value)


def _latent_space(images: dict[str, _Drawn]) -> str:
    scatter = _img(images, "latent_space", "posterior means of the test set in 2-D", "One point per test example.")
    if "manifold" not in images:
        return scatter
    manifold = _img(images, "manifold", "decoder means over a grid of the 2-D latent space",
                    "The decoder's mean over a grid of z (prior quantiles 5% to 95%): what each region "
                    "of the latent space decodes to.")
    return f'<div class="grid2">{scatter}{manifold}</div>'


def _samples_section(model: TrainedModel, images: dict[str, _Drawn], test: _Test) -> str:
    """Samples from the prior, or, for a model with a context, samples given it."""
    if not model.spec.context:
        return ('<p class="explain">New examples: z drawn from the prior p(z), then the decoder\'s mean. '
                "Blurry or strange samples where reconstructions are good point to a large marginal KL: the "
                "prior puts mass where no code lies.</p>"
                + _img(images, "samples", "samples decoded from the prior", "Decoder means at z ~ p(z)."))
    covariates = ", ".join(_covariates(model))
    label = model.spec.label()
    if label is None:
        m = min(64 if len(model.x_shape) == 3 else 16, test.x.shape[0])
        return ('<p class="explain">New examples given a context: z drawn from p(z|c), then the decoder\'s '
                f"mean of p(x|z, c). The covariates ({_e(covariates)}) cannot be made up, so each sample takes "
                "the context of a test example.</p>"
                + _img(images, "samples", "samples given the test set's contexts",
                       f"Decoder means at z ~ p(z|c), c the context of each of the first {m} test examples, in order."))
    shown = min(label.classes, MAX_CLASSES)
    row, column = ("row", "column") if len(model.x_shape) == 3 else ("panel", "line (colour)")
    more = (f" Only the first {shown} of the {label.classes} classes are shown." if label.classes > shown else "")
    cov = (f" The covariates ({_e(covariates)}) are those of the first test examples: {column} j takes test "
           f"example j's, only the label changes from {row} to {row}." if covariates else "")
    return ('<p class="explain">New examples of each class: the label fixed, z drawn from the prior (given c '
            "when it depends on it), then the decoder's mean of p(x|z, c). A row that does not look like its class means the decoder "
            "ignores the label (the code carries the class instead).</p>"
            + _img(images, "samples", "samples given each class",
                   f"One {row} per class ({shown} {row}s), each with its own draws of z.{more}{cov}"))


def _style_section(model: TrainedModel, images: dict[str, _Drawn]) -> str:
    label = model.spec.label()
    shown = 0 if label is None else min(label.classes, MAX_CLASSES)
    cov = (" The covariates stay those of the example." if _covariates(model) else "")
    if len(model.x_shape) == 3:
        where, what = "each column takes one test example (top row)", "a column shows"
        caption = (f"Top row: the test inputs; below, one row per class ({shown} rows): the decoder's mean at the "
                   f"input's posterior mean, given that class.{cov}")
    else:
        where, what = "each colour is one test example (first panel)", "each colour shows"
        caption = (f"First panel: the test inputs; then one panel per class ({shown} panels): the decoder's mean at "
                   f"each input's posterior mean, given that class, in the input's colour.{cov}")
    return (f'<p class="explain">Style and content, separated: {where} '
            "is encoded with its own label, z = E<sub>q</sub>[z|x, c], and that z decoded under every class. "
            "Where the model has learned to put the class in c and everything else (slant, thickness, "
            f"position) in z, {what} every class drawn in the style of its input.</p>"
            + _img(images, "style", "the codes of test examples decoded under every class", caption))


def _page(model: TrainedModel, ev: EvaluationSummary, images: dict[str, _Drawn], test: _Test) -> str:
    name = model.run_dir.name
    c = model.config
    arch = f"{c.net.upper()} {'-'.join(map(str, c.hidden))}, {c.latent_dim}-D latent, {c.likelihood} likelihood"
    if model.spec.family == "m2":
        arch += ", semi-supervised M2"
    elif model.spec.context:
        arch += f", conditioned on {', '.join(v.name for v in model.spec.context)}"
    given = ev.given
    cards = [("ELBO", f"{_fmt(ev.elbo)}", "nats per example")]
    if ev.nll is not None:
        how = {"ais": f"AIS, S = {ev.k}", "mixture": f"mixture IS, K = {ev.k}"}.get(ev.estimator or "is", f"K = {ev.k}")
        cards.insert(0, (f"−log p(x{given})", _fmt(ev.nll), f"nats per example, {how}"))
    if ev.bits_per_dim is not None:
        cards.append(("bits / dim", _fmt(ev.bits_per_dim, 4), "discrete data"))
    if ev.accuracy is not None:
        cards.append(("accuracy", f"{100 * ev.accuracy:.1f} %", "classifier q(y|x)"))
    lat = ev.latents
    if lat is not None:
        cards.append(("active units", f"{lat.active_units} / {lat.latent_dim}", "latent dimensions used"))
    if ev.gaps is not None:
        cards.append(("amortization gap", _fmt(ev.gaps.amortization_gap), "nats per example"))
    card_html = "".join(f'<div class="card"><div class="v">{_e(v)}</div><div class="l">{_e(label)} · {_e(unit)}</div></div>'
                        for label, v, unit in cards)
    warnings = "".join(f'<div class="warn"><b>Warning.</b> {_e(w)}</div>' for w in ev.warnings)
    order = sections(model)
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in order)
    units = ('<p class="explain">All quantities are in <b>nats per example</b> (natural-log units, summed '
             "over the dimensions of x and z) unless they say otherwise; 1 nat = 1.44 bits.</p>")
    x_kind = "images" if len(model.x_shape) == 3 else "vectors"
    in_context = (" Each example is encoded and decoded with its own label y (its true one): q(z|x, y) and "
                  "p(x|y, z)." if model.spec.family == "m2" else
                  " Each example is encoded and decoded with its own context (a conditional model: the figures "
                  "are of q(z|x, c) and p(x|z, c))." if model.spec.context else "")
    has_labels = test.labels is not None
    interpolation_ends = ("two test examples of the same class (both ends share their label, the path is decoded "
                          "under it)" if model.spec.label() is not None else
                          "two test examples (each encoded with its own context; the covariates move along "
                          "the path with the code)" if model.spec.context else "two test examples")
    mixing = (" In a conditional model the code need not carry the label: well-mixed colours mean z holds "
              "what the label does not (the style)." if model.spec.label() is not None and has_labels else "")
    bodies = {
        "evaluation": units + warnings + _evaluation_section(ev, model),
        "latents": _latents_section(ev, images),
        "gaps": _gaps_section(ev),
        "curves": ('<p class="explain">ELBO and its two terms on the training and validation sets, '
                   "per epoch. A validation ELBO that falls while the training ELBO rises is overfitting.</p>"
                   + _img(images, "curves", "training curves", "Training (solid) and validation (dashed), nats per example.")),
        "reconstructions": ('<p class="explain">Test inputs and the decoder\'s mean at their posterior '
                            "mean, E[x | z = E<sub>q</sub>[z|x]]: what survives the trip through the code."
                            f"{in_context}</p>"
                            + _img(images, "reconstructions", "test inputs and their reconstructions",
                                   "Each input directly above (or overlaid with) its reconstruction.")),
        "samples": _samples_section(model, images, test),
        "style": _style_section(model, images),
        "interpolations": ('<p class="explain">Decoded points on the straight line between the posterior '
                           f"means of {interpolation_ends}. Smooth paths mean a smooth latent space.</p>"
                           + _img(images, "interpolations", "latent interpolations",
                                  "One row per pair of test examples, t from 0 to 1.")),
        "traversals": ('<p class="explain">One latent dimension varied from −3 to 3 (prior standard '
                       "deviations) from the posterior mean of a test example, the others fixed; the most "
                       "informative dimensions (largest KL) first. An inactive dimension changes nothing."
                       f"{in_context}</p>"
                       + _img(images, "traversals", "latent traversals", "Rows: the varied dimension and its KL; columns: its value.")),
        "latent-space": ('<p class="explain">Posterior means E<sub>q</sub>[z|x] of the test set'
                         + (", the latents themselves." if model.latent_dim == 2 else
                            ", projected on their two principal components (PCA).")
                         + (" Colours are the examples' labels." if has_labels else " (The data have no labels.)")
                         + mixing + "</p>" + _latent_space(images)),
        "config": _config_section(model, ev),
    }
    body = [_section(sid, heading, bodies[sid]) for sid, heading in order]
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vaelab report: {_e(name)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<header><div class="wrap">
<h1>VAE report: {_e(name)}</h1>
<div class="sub">{_e(arch)} · data <code style="background:rgba(255,255,255,.15);color:#fff">{_e(c.data)}</code> ({_e(x_kind)} of shape {_e(tuple(model.x_shape))}) · {_e(ev.n)} test examples</div>
<div class="cards">{card_html}</div>
</div></header>
<nav><div class="wrap">{nav}</div></nav>
<main class="wrap">
{''.join(body)}
</main>
<footer><div class="wrap">Made by vaelab on {_e(when)} from the run folder <code>{_e(model.run_dir)}</code>.</div></footer>
</body>
</html>
"""
