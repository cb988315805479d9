"""One self-contained HTML page about a run: :func:`write_report`, behind ``vaelab report``.

The page holds the run's configuration, its training curves, the evaluation of
:func:`vaelab.evaluation.evaluate` (with a short explanation of every quantity), and figures
of what the model does: reconstructions, prior samples, interpolations, traversals of the
most informative latent dimensions, the test set's posterior means in 2-D and the KL per
dimension. Images are embedded as base64 PNG data URIs and the styles are inline, so the
file opens anywhere, offline, and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .. import plots
from ..runs import EVAL, TrainedModel, load, read_metrics, write_eval
from ..training.checkpoint import atomic_write_text
from .figures import kl_bars, latent_traversal, project_2d

__all__ = ["build_report", "write_report", "REPORT", "SECTIONS"]

REPORT = "report.html"
# (id, heading) of every section, in page order
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


# --------------------------------------------------------------------------- entry points


def write_report(
    run: str | Path,
    output: str | Path | None = None,
    *,
    reevaluate: bool = False,
    k: int = 1000,
    gap_examples: int = 100,
    gap_steps: int = 300,
    seed: int = 0,
    device: str | None = None,
) -> Path:
    """Write the HTML report of a run folder (default ``RUN/report.html``, atomically).

    The evaluation is read from ``RUN/eval.json`` when it is complete (it has the latent
    health and settings that ``vaelab eval`` writes) unless ``reevaluate``; otherwise the
    model is evaluated with ``k``, ``gap_examples``, ``gap_steps`` and ``seed`` and the
    result is saved to ``RUN/eval.json`` too. Returns the path written.
    """
    model = load(run, device=device)
    evaluation = None if reevaluate else _saved_evaluation(model.run_dir)
    if evaluation is None:
        evaluation = model.evaluate(k=k, gap_examples=gap_examples, gap_steps=gap_steps, seed=seed).to_dict()
        evaluation["data"] = f"{model.config.data} (test split)"
        write_eval(model.run_dir, evaluation)
    page = build_report(model, evaluation, seed=seed)
    path = Path(output) if output is not None else model.run_dir / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path


def _saved_evaluation(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / EVAL
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    complete = isinstance(doc, dict) and {"n", "elbo", "latents", "settings"} <= set(doc)
    return doc if complete else None


def build_report(model: TrainedModel, evaluation: dict[str, Any], *, seed: int = 0,
                 traversal_dims: int = 6) -> str:
    """The report page of ``model`` as one HTML string.

    Args:
        model: a loaded run.
        evaluation: :meth:`TrainedModel.evaluate`'s dictionary (e.g. ``RUN/eval.json``).
        seed: seeds the prior samples.
        traversal_dims: how many of the most informative dimensions to traverse.
    """
    images, has_labels = _figures(model, evaluation, seed=seed, traversal_dims=traversal_dims)
    return _page(model, evaluation, images, has_labels)


# --------------------------------------------------------------------------- figures


def _figures(model: TrainedModel, ev: dict[str, Any], *, seed: int,
             traversal_dims: int) -> tuple[dict[str, str], bool]:
    """Every figure as a ``data:image/png;base64,...`` URI, keyed by name, and whether the
    test set has labels."""
    x, labels = model.test_set()
    x = x[:5000]
    labels = None if labels is None else labels[: x.shape[0]]
    is_image = len(model.x_shape) == 3
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vaelab-report-") as tmp:
        def draw(name: str, make: Callable[[Path], Path]) -> None:
            out[name] = _data_uri(make(Path(tmp) / f"{name}.png"))

        metrics = read_metrics(model.run_dir)
        if metrics:
            draw("curves", lambda p: plots.training_curves(metrics, p))
        n_rec = min(16, x.shape[0])
        draw("reconstructions", lambda p: plots.reconstruction_grid(
            x[:n_rec], model.reconstruct(x[:n_rec]), p, n=n_rec, title=""))
        draw("samples", lambda p: plots.image_grid(model.sample(64 if is_image else 16, seed=seed), p, title=""))
        pairs = [(i, i + 1) for i in range(0, min(x.shape[0] - 1, 8), 2)]
        if pairs:
            paths = torch.stack([model.interpolate(x[i], x[j], steps=10) for i, j in pairs])
            draw("interpolations", lambda p: plots.interpolation_strip(paths, p, title=""))
        dims, notes, decoded, values = _traversal(model, x, ev, traversal_dims)
        draw("traversals", lambda p: latent_traversal(decoded, values, dims, p, row_notes=notes))
        z = model.encode(x).mean.cpu()  # [N, D]
        z2, (xlabel, ylabel) = project_2d(z)
        draw("latent_space", lambda p: plots.latent_scatter(
            z2, p, labels=labels, xlabel=xlabel, ylabel=ylabel, title=""))
        if model.latent_dim == 2 and is_image:
            draw("manifold", lambda p: plots.latent_manifold(model.vae, p))
        lat = ev.get("latents")
        if lat:
            draw("kl_bars", lambda p: kl_bars(lat["activity"], p, kl_per_dim=lat.get("kl_per_dim"),
                                                threshold=lat["active_threshold"]))
    return out, labels is not None


@torch.no_grad()
def _traversal(model: TrainedModel, x: torch.Tensor, ev: dict[str, Any], count: int):
    """The most informative dimensions (by KL, else activity) varied over -3..3 from the
    posterior mean of the first test example: (dims, row notes, decoded [R, S, ...], values)."""
    lat = ev.get("latents") or {}
    d = model.latent_dim
    score = lat.get("kl_per_dim") or lat.get("activity") or [0.0] * d
    dims = sorted(range(d), key=lambda i: -score[i])[: min(count, d)]
    values = [-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0]
    base = model.encode(x[:1]).mean[0]  # [D]
    z = base.repeat(len(dims), len(values), 1)  # [R, S, D]
    for r, dim in enumerate(dims):
        z[r, :, dim] = torch.tensor(values, dtype=z.dtype, device=z.device)
    decoded = model.decode(z.reshape(-1, d)).mean.reshape(len(dims), len(values), *model.x_shape).cpu()
    kl = lat.get("kl_per_dim")
    notes = [f"({kl[i]:.2f} nats)" if kl else "" for i in dims]
    return dims, notes, decoded, values


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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


def _img(images: dict[str, str], name: str, alt: str, caption: str, max_width: int | None = None) -> str:
    if name not in images:
        return f'<p class="explain">({_e(alt)}: not available for this run.)</p>'
    style = f' style="width:100%;max-width:{max_width}px"' if max_width else ""
    return (f'<figure><img src="{images[name]}" alt="{_e(alt)}"{style}>'
            f"<figcaption>{caption}</figcaption></figure>")


def _rows(rows: list[tuple[str, str, str]]) -> str:
    body = "".join(f'<tr><td>{name}</td><td class="num">{value}</td><td class="what">{what}</td></tr>'
                   for name, value, what in rows)
    return f"<table><tr><th>quantity</th><th>value</th><th>what it means</th></tr>{body}</table>"


def _section(sid: str, body: str) -> str:
    heading = dict(SECTIONS)[sid]
    return f'<section id="{sid}"><h2>{_e(heading)}</h2>{body}</section>'


def _evaluation_section(ev: dict[str, Any]) -> str:
    nats = "nats"
    rows = [
        ("test examples <i>N</i>", _fmt(ev["n"]), _e(ev.get("data", "the run's test split"))),
        ("ELBO", f"{_pm(ev['elbo'], ev.get('elbo_stderr'))} {nats}",
         "Evidence lower bound, E<sub>q</sub>[log p(x|z)] − KL(q(z|x) ‖ p(z)): a lower bound on "
         "log p(x) and what a standard VAE (β = 1) is trained to maximise. Higher is better."),
        ("&nbsp;&nbsp;reconstruction", f"{_pm(ev['reconstruction'], ev.get('reconstruction_stderr'))} {nats}",
         "E<sub>q</sub>[log p(x|z)]: how well the decoder rebuilds x from codes drawn from q(z|x). "
         "Its negative is the <b>distortion</b> D."),
        ("&nbsp;&nbsp;KL, the rate", f"{_pm(ev['kl'], ev.get('kl_stderr'))} {nats}",
         "KL(q(z|x) ‖ p(z)): how much information (in nats) the code carries about x beyond the "
         "prior, the <b>rate</b> R. ELBO = −(D + R)."),
    ]
    if "log_px" in ev:
        mc = ev.get("log_px_mc_stderr")
        rows.append((f"−log p(x), K = {ev['k']}", f"{_pm(ev['nll'], ev.get('log_px_stderr'))} {nats}",
                     "Negative log-likelihood of the test data, estimated by importance sampling with K "
                     "samples from q(z|x) (a slight over-estimate for finite K). ± is the standard error "
                     f"over examples; the Monte-Carlo error of the estimate is ± {_fmt(mc, 3)}. "
                     "The number to compare models by: lower is better."))
        if "bits_per_dim" in ev:
            rows.append(("bits per dimension", _fmt(ev["bits_per_dim"], 4),
                         "−log p(x) / (D ln 2), for discrete data: the average code length per "
                         "value (pixel) of a lossless compressor built on the model."))
        rows.append(("effective sample size", f"median {_fmt(ev['ess_median'], 1)}, min {_fmt(ev['ess_min'], 1)}",
                     f"ESS of the importance weights, (Σw)²/Σw², between 1 and K = {ev['k']}: how many of "
                     "the K samples really count. Tiny values mean a few samples dominate and log p(x) may "
                     "be underestimated."))
    else:
        rows.append(("−log p(x)", "not computed", "evaluated with K = 0 (ELBO only)"))
    return _rows(rows)


def _latents_section(ev: dict[str, Any], images: dict[str, str]) -> str:
    lat = ev.get("latents")
    if not lat:
        return '<p class="explain">Latent health was not computed for this evaluation.</p>'
    status = ('<span class="bad">collapsed</span>' if lat["collapsed"]
              else '<span class="ok">not collapsed</span>')
    per_dim = ("KL per dimension in closed form (diagonal Gaussian posterior, standard normal prior)."
               if lat.get("kl_per_dim") is not None else
               "The posterior is not a diagonal Gaussian, so a KL per dimension is not defined; only "
               "the activity is shown.")
    rows = [
        ("active units", f"{lat['active_units']} of {lat['latent_dim']}",
         f"Dimensions whose posterior mean moves with the input, Var<sub>x</sub>(E<sub>q</sub>[z<sub>d</sub>]) "
         f"&gt; {_fmt(lat['active_threshold'])} (Burda et al. 2016). Inactive ones are ignored by the model."),
        ("average KL", f"{_fmt(lat['kl'])} nats", "The rate again: the sum of the per-dimension KLs."),
        ("&nbsp;&nbsp;mutual information I(x; z)",
         f"{_pm(lat['mutual_information'], lat['mutual_information_stderr'])} nats",
         "How much the code tells about which example it came from, under the aggregate posterior "
         f"q(z) = (1/N) Σ<sub>n</sub> q(z|x<sub>n</sub>). At most log N = {_fmt(lat['mutual_information_max'])} "
         "nats for N examples (Monte-Carlo estimate; ± is its error)."),
        ("&nbsp;&nbsp;marginal KL(q(z) ‖ p(z))", f"{_pm(lat['marginal_kl'], lat['marginal_kl_stderr'])} nats",
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


def _gaps_section(ev: dict[str, Any]) -> str:
    intro = ("<p class=\"explain\">The ELBO falls short of log p(x) by exactly KL(q(z|x) ‖ p(z|x)), the "
             "<b>inference gap</b>. Cremer, Li &amp; Duvenaud (2018) split it in two. The "
             "<b>approximation gap</b> is what the family of q (diagonal Gaussians) cannot do: it remains "
             "even for q*, the best diagonal Gaussian for each example, found here by optimising its mean "
             "and scale for that example alone. The <b>amortization gap</b> is what the encoder loses by "
             "using one network for all examples instead of q*. A large amortization gap calls for a "
             "better encoder (or more training); a large approximation gap for a richer posterior "
             "(full covariance, flows).</p>")
    g = ev.get("gaps")
    if not g:
        return intro + '<p class="explain">Not computed for this evaluation (K = 0 or the split was switched off).</p>'
    s = g.get("settings", {})
    rows = [
        ("inference gap", f"{_pm(g['inference_gap'], g['inference_gap_stderr'])} nats",
         "log p(x) − ELBO of the encoder's q(z|x)."),
        ("&nbsp;&nbsp;approximation gap", f"{_pm(g['approximation_gap'], g['approximation_gap_stderr'])} nats",
         "log p(x) − ELBO(q*): the limit of the diagonal Gaussian family."),
        ("&nbsp;&nbsp;amortization gap", f"{_pm(g['amortization_gap'], g['amortization_gap_stderr'])} nats",
         "ELBO(q*) − ELBO(q): the price of one shared encoder."),
        ("ELBO of the encoder / of q*", f"{_fmt(g['elbo_encoder'])} / {_fmt(g['elbo_optimal'])} nats",
         f"on {g['n']} test examples, each ELBO from {s.get('eval_samples', '?')} samples with shared noise"),
    ]
    how = (f"q* from {s.get('steps', '?')} Adam steps (learning rate {s.get('lr', '?')}, cosine-decayed, "
           f"{s.get('samples', '?')} samples per step), started at the encoder's output. ± is the standard "
           f"error over the {g['n']} examples; the Monte-Carlo errors are ± {_fmt(g['approximation_gap_mc_stderr'], 3)} "
           f"(approximation) and ± {_fmt(g['amortization_gap_mc_stderr'], 3)} (amortization).")
    return intro + _rows(rows) + f'<p class="explain">{_e(how)}</p>'


def _config_section(model: TrainedModel, ev: dict[str, Any]) -> str:
    def table(title: str, items: dict[str, Any]) -> str:
        body = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(_show(v))}</td></tr>" for k, v in items.items())
        return f"<table><tr><th colspan=2>{_e(title)}</th></tr>{body}</table>"

    settings = dict(ev.get("settings", {}))
    return ('<div class="config">' + table("training settings", model.config.to_dict())
            + table("data", model.data_info) + table("evaluation settings", settings) + "</div>")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "–" if value is None or value == "" else str(value)


def _latent_space(images: dict[str, str]) -> str:
    scatter = _img(images, "latent_space", "posterior means of the test set in 2-D", "One point per test example.")
    if "manifold" not in images:
        return scatter
    manifold = _img(images, "manifold", "decoder means over a grid of the 2-D latent space",
                    "The decoder's mean over a grid of z (prior quantiles 5% to 95%): what each region "
                    "of the latent space decodes to.")
    return f'<div class="grid2">{scatter}{manifold}</div>'


def _page(model: TrainedModel, ev: dict[str, Any], images: dict[str, str], has_labels: bool) -> str:
    name = model.run_dir.name
    c = model.config
    arch = f"{c.net.upper()} {'-'.join(map(str, c.hidden))}, {c.latent_dim}-D latent, {c.likelihood} likelihood"
    cards = [("ELBO", f"{_fmt(ev['elbo'])}", "nats per example")]
    if "nll" in ev:
        cards.insert(0, ("−log p(x)", _fmt(ev["nll"]), f"nats per example, K = {ev['k']}"))
    if "bits_per_dim" in ev:
        cards.append(("bits / dim", _fmt(ev["bits_per_dim"], 4), "discrete data"))
    lat = ev.get("latents")
    if lat:
        cards.append(("active units", f"{lat['active_units']} / {lat['latent_dim']}", "latent dimensions used"))
    if ev.get("gaps"):
        cards.append(("amortization gap", _fmt(ev["gaps"]["amortization_gap"]), "nats per example"))
    card_html = "".join(f'<div class="card"><div class="v">{_e(v)}</div><div class="l">{_e(label)} · {_e(unit)}</div></div>'
                        for label, v, unit in cards)
    warnings = "".join(f'<div class="warn"><b>Warning.</b> {_e(w)}</div>' for w in ev.get("warnings", []))
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    units = ('<p class="explain">All quantities are in <b>nats per example</b> (natural-log units, summed '
             "over the dimensions of x and z) unless they say otherwise; 1 nat = 1.44 bits.</p>")
    x_kind = "images" if len(model.x_shape) == 3 else "vectors"
    body = [
        _section("evaluation", units + warnings + _evaluation_section(ev)),
        _section("latents", _latents_section(ev, images)),
        _section("gaps", _gaps_section(ev)),
        _section("curves", '<p class="explain">ELBO and its two terms on the training and validation sets, '
                 "per epoch. A validation ELBO that falls while the training ELBO rises is overfitting.</p>"
                 + _img(images, "curves", "training curves", "Training (solid) and validation (dashed), nats per example.")),
        _section("reconstructions", '<p class="explain">Test inputs and the decoder\'s mean at their posterior '
                 "mean, E[x | z = E<sub>q</sub>[z|x]]: what survives the trip through the code.</p>"
                 + _img(images, "reconstructions", "test inputs and their reconstructions",
                        "Each input directly above (or overlaid with) its reconstruction.")),
        _section("samples", '<p class="explain">New examples: z drawn from the prior p(z) = N(0, I), then the '
                 "decoder's mean. Blurry or strange samples where reconstructions are good point to a large "
                 "marginal KL: the prior puts mass where no code lies.</p>"
                 + _img(images, "samples", "samples decoded from the prior", "Decoder means at z ~ p(z).")),
        _section("interpolations", '<p class="explain">Decoded points on the straight line between the posterior '
                 "means of two test examples. Smooth paths mean a smooth latent space.</p>"
                 + _img(images, "interpolations", "latent interpolations", "One row per pair of test examples, t from 0 to 1.")),
        _section("traversals", '<p class="explain">One latent dimension varied from −3 to 3 (prior standard '
                 "deviations) from the posterior mean of a test example, the others fixed; the most "
                 "informative dimensions (largest KL) first. An inactive dimension changes nothing.</p>"
                 + _img(images, "traversals", "latent traversals", "Rows: the varied dimension and its KL; columns: its value.")),
        _section("latent-space", '<p class="explain">Posterior means E<sub>q</sub>[z|x] of the test set'
                 + (", the latents themselves." if model.latent_dim == 2 else
                    ", projected on their two principal components (PCA).")
                 + (" Colours are the examples' labels." if has_labels else " (The data have no labels.)") + "</p>"
                 + _latent_space(images)),
        _section("config", _config_section(model, ev)),
    ]
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
<div class="sub">{_e(arch)} · data <code style="background:rgba(255,255,255,.15);color:#fff">{_e(c.data)}</code> ({_e(x_kind)} of shape {_e(tuple(model.x_shape))}) · {_e(ev['n'])} test examples</div>
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
