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
import json
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
from ..run_folder import EVAL
from ..runs import TrainedModel, interpolate_latents, load, read_metrics, write_eval
from ..training.checkpoint import atomic_write_text
from .evaluation import evaluation_section, gaps_section, latents_section
from .figures import kl_bars, latent_traversal, project_2d
from .html import CSS, Drawn, esc, fmt, img, section

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
    ``vaelab eval`` and ``vaelab train`` write it); None when missing or from vaelab 0.1.0
    (then the report evaluates anew). A damaged file (not JSON: eval.json is written atomically,
    so a truncated one was damaged afterwards) or one with a malformed value is an error, not
    silently evaluated over (``vaelab runs`` lists it as damaged too)."""
    path = run_dir / EVAL
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else str(err).splitlines()[0]
        raise VaelabError(f"'{path}' is damaged: not readable JSON ({reason}); rewrite it with 'vaelab eval "
                          f"{run_dir}', or use 'vaelab report --reevaluate'") from None
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
             traversal_dims: int) -> dict[str, Drawn]:
    """Every figure, keyed by name."""
    x, c = test.x, test.c
    is_image = len(model.x_shape) == 3
    has_context = bool(model.spec.context)
    out: dict[str, Drawn] = {}

    def draw(name: str, png: bytes, rows: int | None = None) -> None:
        out[name] = Drawn(_data_uri(png), rows)

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
    if not has_context and model.spec.latent_dims:  # a hierarchy: a row per top-layer draw
        from ..ladder import hierarchical_samples

        torch.manual_seed(seed)
        rows, cols = (8, 8) if is_image else (4, 4)
        z = hierarchical_samples(model.vae.prior, rows, cols)  # [rows, cols, D]
        draw("samples", plots.image_grid(model.decode(z.reshape(rows * cols, -1)).mean.cpu(), nrow=cols, title=""))
    elif not has_context:
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
    layers = model.spec.latent_dims
    if layers:  # a hierarchy: the layers below the varied unit follow it, as inference would
        from ..ladder import layer_of, unit_name

        q = model.vae.encode(x[:1].to(z.device), None if c0 is None else c0.to(z.device))
        for r, dim in enumerate(dims):
            z[r] = q.mean_given(z[r][:, None, :], layer_of(layers, dim))[:, 0, :]
    cs = None if c0 is None else c0.expand(len(dims) * len(values), -1)
    decoded = model.decode(z.reshape(-1, d), c=cs).mean.reshape(len(dims), len(values), *model.x_shape).cpu()
    notes = [(f"= {unit_name(layers, i)} " if layers else "") + (f"({fmt(float(kl[i]))} nats)" if kl else "") for i in dims]
    return dims, notes, decoded, values


# --------------------------------------------------------------------------- page

def _config_section(model: TrainedModel, ev: EvaluationSummary) -> str:
    def table(title: str, items: dict[str, Any]) -> str:
        body = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(_show(v))}</td></tr>" for k, v in items.items())
        return f"<table><tr><th colspan=2>{esc(title)}</th></tr>{body}</table>"

    settings: dict[str, Any] = {} if ev.settings is None else {**ev.settings.to_dict(), "device": ev.device}
    return ('<div class="config">' + table("training settings", model.config.to_dict())
            + table("data", model.data_info) + table("evaluation settings", settings) + "</div>")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "–" if value is None or value == "" else str(value)


def _latent_space(images: dict[str, Drawn]) -> str:
    scatter = img(images, "latent_space", "posterior means of the test set in 2-D", "One point per test example.")
    if "manifold" not in images:
        return scatter
    manifold = img(images, "manifold", "decoder means over a grid of the 2-D latent space",
                    "The decoder's mean over a grid of z (prior quantiles 5% to 95%): what each region "
                    "of the latent space decodes to.")
    return f'<div class="grid2">{scatter}{manifold}</div>'


def _samples_section(model: TrainedModel, images: dict[str, Drawn], test: _Test) -> str:
    """Samples from the prior, or, for a model with a context, samples given it."""
    if not model.spec.context and model.spec.latent_dims:
        top = f"z{len(model.spec.latent_dims)}"
        return ('<p class="explain">New examples from the hierarchy: each row one draw of the top layer '
                f"{top} ~ N(0, I); in the first column the layers below at their conditional means "
                f"(their noise held at 0), in the others drawn afresh from p(z<sub>i</sub> | z<sub>i+1</sub>). "
                "What stays the same along a row is what the top layer decides; what changes, the lower layers.</p>"
                + img(images, "samples", "samples decoded from the hierarchical prior",
                      f"Rows: draws of {top}; columns: lower layers at their means (first), then resampled."))
    if not model.spec.context:
        return ('<p class="explain">New examples: z drawn from the prior p(z), then the decoder\'s mean. '
                "Blurry or strange samples where reconstructions are good point to a large marginal KL: the "
                "prior puts mass where no code lies.</p>"
                + img(images, "samples", "samples decoded from the prior", "Decoder means at z ~ p(z)."))
    covariates = ", ".join(_covariates(model))
    label = model.spec.label()
    if label is None:
        m = min(64 if len(model.x_shape) == 3 else 16, test.x.shape[0])
        return ('<p class="explain">New examples given a context: z drawn from p(z|c), then the decoder\'s '
                f"mean of p(x|z, c). The covariates ({esc(covariates)}) cannot be made up, so each sample takes "
                "the context of a test example.</p>"
                + img(images, "samples", "samples given the test set's contexts",
                       f"Decoder means at z ~ p(z|c), c the context of each of the first {m} test examples, in order."))
    shown = min(label.classes, MAX_CLASSES)
    row, column = ("row", "column") if len(model.x_shape) == 3 else ("panel", "line (colour)")
    more = (f" Only the first {shown} of the {label.classes} classes are shown." if label.classes > shown else "")
    cov = (f" The covariates ({esc(covariates)}) are those of the first test examples: {column} j takes test "
           f"example j's, only the label changes from {row} to {row}." if covariates else "")
    return ('<p class="explain">New examples of each class: the label fixed, z drawn from the prior (given c '
            "when it depends on it), then the decoder's mean of p(x|z, c). A row that does not look like its class means the decoder "
            "ignores the label (the code carries the class instead).</p>"
            + img(images, "samples", "samples given each class",
                   f"One {row} per class ({shown} {row}s), each with its own draws of z.{more}{cov}"))


def _style_section(model: TrainedModel, images: dict[str, Drawn]) -> str:
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
            + img(images, "style", "the codes of test examples decoded under every class", caption))


def _page(model: TrainedModel, ev: EvaluationSummary, images: dict[str, Drawn], test: _Test) -> str:
    name = model.run_dir.name
    c = model.config
    arch = f"{c.net.upper()} {'-'.join(map(str, c.hidden))}, {c.latent_dim}-D latent, {c.likelihood} likelihood"
    if model.spec.family == "m2":
        arch += ", semi-supervised M2"
    elif model.spec.context:
        arch += f", conditioned on {', '.join(v.name for v in model.spec.context)}"
    given = ev.given
    cards = [("ELBO", f"{fmt(ev.elbo)}", "nats per example")]
    if ev.nll is not None:
        cards.insert(0, (f"−log p(x{given})", fmt(ev.nll), f"nats per example, {ev.how(' = ')}"))
    if ev.bits_per_dim is not None:
        cards.append(("bits / dim", fmt(ev.bits_per_dim, 4), "discrete data"))
    if ev.accuracy is not None:
        cards.append(("accuracy", f"{100 * ev.accuracy:.1f} %", "classifier q(y|x)"))
    lat = ev.latents
    if lat is not None:
        cards.append(("active units", f"{lat.active_units} / {lat.latent_dim}", "latent dimensions used"))
    if ev.gaps is not None:
        cards.append(("amortization gap", fmt(ev.gaps.amortization_gap), "nats per example"))
    card_html = "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="l">{esc(label)} · {esc(unit)}</div></div>'
                        for label, v, unit in cards)
    warnings = "".join(f'<div class="warn"><b>Warning.</b> {esc(w)}</div>' for w in ev.warnings)
    order = sections(model)
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in order)
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
        "evaluation": units + warnings + evaluation_section(ev, model),
        "latents": latents_section(ev, images),
        "gaps": gaps_section(ev),
        "curves": ('<p class="explain">ELBO and its two terms on the training and validation sets, '
                   "per epoch. A validation ELBO that falls while the training ELBO rises is overfitting.</p>"
                   + img(images, "curves", "training curves", "Training (solid) and validation (dashed), nats per example.")),
        "reconstructions": ('<p class="explain">Test inputs and the decoder\'s mean at their posterior '
                            "mean, E[x | z = E<sub>q</sub>[z|x]]: what survives the trip through the code."
                            f"{in_context}</p>"
                            + img(images, "reconstructions", "test inputs and their reconstructions",
                                   "Each input directly above (or overlaid with) its reconstruction.")),
        "samples": _samples_section(model, images, test),
        "style": _style_section(model, images),
        "interpolations": ('<p class="explain">Decoded points on the straight line between the posterior '
                           f"means of {interpolation_ends}. Smooth paths mean a smooth latent space.</p>"
                           + img(images, "interpolations", "latent interpolations",
                                  "One row per pair of test examples, t from 0 to 1.")),
        "traversals": ('<p class="explain">One latent dimension varied from −3 to 3 (prior standard '
                       "deviations) from the posterior mean of a test example, the others fixed; the most "
                       "informative dimensions (largest KL) first. An inactive dimension changes nothing."
                       + (" In a hierarchy the units are named z<i>layer</i>.<i>unit</i>, and the layers below a "
                          "varied unit follow it (their posterior means given the layers above)."
                          if model.spec.latent_dims else "")
                       + f"{in_context}</p>"
                       + img(images, "traversals", "latent traversals", "Rows: the varied dimension and its KL; columns: its value.")),
        "latent-space": ('<p class="explain">Posterior means E<sub>q</sub>[z|x] of the test set'
                         + (", the latents themselves." if model.latent_dim == 2 else
                            ", projected on their two principal components (PCA).")
                         + (" Colours are the examples' labels." if has_labels else " (The data have no labels.)")
                         + mixing + "</p>" + _latent_space(images)),
        "config": _config_section(model, ev),
    }
    body = [section(sid, heading, bodies[sid]) for sid, heading in order]
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vaelab report: {esc(name)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header><div class="wrap">
<h1>VAE report: {esc(name)}</h1>
<div class="sub">{esc(arch)} · data <code style="background:rgba(255,255,255,.15);color:#fff">{esc(c.data)}</code> ({esc(x_kind)} of shape {esc(tuple(model.x_shape))}) · {esc(ev.n)} test examples</div>
<div class="cards">{card_html}</div>
</div></header>
<nav><div class="wrap">{nav}</div></nav>
<main class="wrap">
{''.join(body)}
</main>
<footer><div class="wrap">Made by vaelab on {esc(when)} from the run folder <code>{esc(model.run_dir)}</code>.</div></footer>
</body>
</html>
"""
