"""The report's evaluation, latent-health and inference-gap sections: an
:class:`~vaelab.evaluation.summary.EvaluationSummary` as HTML, each quantity with a short
explanation of what it means."""

from __future__ import annotations

from ..evaluation.summary import ESTIMATOR_NAMES, EvaluationSummary
from ..runs import TrainedModel
from .html import Drawn, esc, fmt, img, pm, table_rows

__all__ = ["evaluation_section", "latents_section", "gaps_section", "variable_text"]


def variable_text(model: TrainedModel, name: str) -> str:
    """One conditioning variable in words, e.g. ``label: 10 classes (0, 1, …, 9)``."""
    v = next((v for v in model.spec.context if v.name == name), None)
    if v is None:
        return esc(name)
    if v.kind == "continuous":
        return f"<code>{esc(name)}</code>: a continuous covariate (standardised with mean {fmt(v.mean)}, sd {fmt(v.std)})"
    names = v.names()
    shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:10]) + f", … ({len(names)} in all)"
    how = f"an embedding of {v.embedding}" if v.embedding else "one-hot"
    return f"<code>{esc(name)}</code>: {v.classes} classes ({esc(shown)}), {how}"


def evaluation_section(ev: EvaluationSummary, model: TrainedModel) -> str:
    nats = "nats"
    given = ev.given
    cz = f"x,{','.join(ev.conditional_on)}" if ev.conditional_on else "x"
    rows = [
        ("test examples <i>N</i>", fmt(ev.n), esc(ev.data or "the run's test split")),
    ]
    if ev.conditional_on:
        rows.append(("conditioned on", esc(", ".join(ev.conditional_on)),
                     "<br>".join(variable_text(model, n) for n in ev.conditional_on)
                     + "<br>Every figure is given each example's own context c: the encoder is q(z|x, c), the "
                     "prior p(z|c), the decoder p(x|z, c), so the numbers below are of log p(x|c), "
                     "not log p(x)."))
    if model.spec.family == "m2":
        labelled = model.data_info.get("n_labelled")
        rows.append(("model", "semi-supervised M2",
                     "Kingma et al. (2014): the label y is a latent variable with a classifier q(y|x), observed "
                     f"for {esc(labelled if labelled is not None else 'some')} training examples; log p(x) and the "
                     "ELBO sum y out."))
    rows += [
        ("ELBO", f"{pm(ev.elbo, ev.elbo_stderr)} {nats}",
         f"Evidence lower bound, E<sub>q</sub>[log p(x|z{esc(given.replace('|', ','))})] − KL(q(z|{esc(cz)}) ‖ "
         f"p(z{esc(given)})): a lower bound on log p(x{esc(given)}) and what a standard VAE (β = 1) is trained "
         "to maximise. Higher is better."),
        ("&nbsp;&nbsp;reconstruction", f"{pm(ev.reconstruction, ev.reconstruction_stderr)} {nats}",
         "E<sub>q</sub>[log p(x|z)]: how well the decoder rebuilds x from codes drawn from q(z|x). "
         "Its negative is the <b>distortion</b> D."),
        ("&nbsp;&nbsp;KL, the rate", f"{pm(ev.kl, ev.kl_stderr)} {nats}",
         f"KL(q(z|{esc(cz)}) ‖ p(z{esc(given)})): how much information (in nats) the code carries about x beyond "
         "the prior, the <b>rate</b> R. ELBO = −(D + R)."),
    ]
    if ev.k is not None and ev.nll is not None:
        method = {"mixture": "importance sampling from a defensive mixture of the encoder's q(z|x), the "
                             "per-example optimal diagonal Gaussian q* and a Laplace Gaussian at q*'s mean",
                  "ais": "annealed importance sampling (Neal 2001; Wu et al. 2017): chains moved by HMC "
                         "along a path from q(z|x) to p(x, z)"}.get(ev.estimator or "is",
                                                                     "importance sampling with K samples from q(z|x)")
        if ev.settings is not None and ev.settings.estimator == "auto":
            method += (" (chosen by the default estimator, auto: annealed importance sampling at about the CPU cost "
                       "of K encoder samples where it applies, else encoder importance sampling)")
        rows.append((f"−log p(x{esc(given)}), {ev.how(' = ')}", f"{pm(ev.nll, ev.log_px_stderr)} {nats}",
                     "Negative log-likelihood of the test data"
                     + (" given their context" if given else "")
                     + f", estimated by {method}: a stochastic over-estimate of −log p(x) that shrinks as the "
                     "estimator is given more effort. ± is the standard error over examples; the Monte-Carlo error of the "
                     f"estimate is ± {fmt(ev.log_px_mc_stderr, 3)}. The number to compare models by: lower "
                     "is better" + (" (against other models given the same context)." if given else ".")))
        if len(ev.estimates) > 1:
            side = "".join(
                f"<tr><td>{esc(e.name)}</td><td class=\"num\">{pm(-e.log_px, e.log_px_stderr)}</td>"
                f"<td class=\"num\">{fmt(e.log_px_mc_stderr, 3)}</td>"
                f"<td class=\"num\">{'–' if e.khat_median is None else fmt(e.khat_median)}</td>"
                f"<td class=\"num\">{'–' if e.seconds is None else fmt(e.seconds, 1)}</td></tr>" for e in ev.estimates)
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
            rows.append(("Pareto k-hat", f"median {fmt(ev.khat_median)}, {share}",
                         "Shape of a generalized Pareto fitted to the largest importance weights of each example "
                         "(Vehtari et al., PSIS): below 0.5 the weights have finite variance; above 0.7 the estimate "
                         "is unreliable and biased low by more than its error says (use a better proposal or AIS)."))
        if ev.ais is not None:
            a = ev.ais
            trace = ", ".join(f"T = {t.steps}: {fmt(-t.log_px)}" for t in a.trace)
            rows.append(("annealed importance sampling", f"T = {a.steps}, S = {a.chains}",
                         f"{a.leapfrog} leapfrog steps per HMC transition, path from the {esc(a.start)}, "
                         f"acceptance {100 * a.acceptance:.0f} %" + ("." if a.seconds is None else f", {fmt(a.seconds, 1)} s.")
                         + (f" −log p(x) as T grows: {esc(trace)} (separate runs; a converged estimate stops falling)."
                            if len(a.trace) > 1 else "")))
        if ev.bdmc is not None:
            b = ev.bdmc
            rows.append(("BDMC bracket", f"[{fmt(b.lower)}, {fmt(b.upper)}] · width {pm(b.width, b.width_stderr)} {nats}",
                         f"Bidirectional Monte Carlo (Grosse et al. 2015) on {b.n} examples simulated from the model: "
                         "forward AIS bounds log p(x) from below, reverse AIS from the simulating z from above. The width "
                         f"bounds the error of AIS with these settings (T = {b.steps}, S = {b.chains}) on data like the "
                         "model's own."))
        if ev.gaps is not None:
            rows.append(("log p(x) of the gap split", esc(ESTIMATOR_NAMES.get(
                ev.gaps.settings.log_px_estimator, ev.gaps.settings.log_px_estimator)),
                         "The inference-gap split below uses the tightest estimate of log p(x) that was run."))
        if ev.bits_per_dim is not None:
            rows.append(("bits per dimension", fmt(ev.bits_per_dim, 4),
                         "−log p(x) / (D ln 2), for discrete data: the average code length per "
                         "value (pixel) of a lossless compressor built on the model."))
        if ev.nats_per_count is not None:
            rows.append(("nats per count", fmt(ev.nats_per_count, 4),
                         "−log p(x) over the examples' mean total count (library size): the code length per "
                         "counted molecule, comparable across data sets of different depth."))
        what = "chain weights of AIS" if ev.estimator == "ais" else "importance weights"
        rows.append(("effective sample size", f"median {fmt(ev.ess_median, 1)}, min {fmt(ev.ess_min, 1)}",
                     f"ESS of the {what}, (Σw)²/Σw², between 1 and {ev.k}: how many of "
                     "the samples really count. Tiny values mean a few samples dominate and log p(x) may "
                     "be underestimated."))
    else:
        rows.append((f"−log p(x{esc(given)})", "not computed", "evaluated with K = 0 (ELBO only)"))
    if ev.accuracy is not None:
        rows.append(("classifier accuracy", f"{pm(100 * ev.accuracy, None if ev.accuracy_stderr is None else 100 * ev.accuracy_stderr)} %",
                     "Share of test examples whose label the model's classifier gets right, argmax<sub>y</sub> "
                     "q(y|x). ± is the binomial standard error √(a(1 − a)/N)."))
    return table_rows(rows)


def latents_section(ev: EvaluationSummary, images: dict[str, Drawn]) -> str:
    lat = ev.latents
    if lat is None:
        return '<p class="explain">Latent health was not computed for this evaluation.</p>'
    verdict = lat.verdict or ("collapsed" if lat.collapsed else "not collapsed")
    status = f'<span class="{"ok" if verdict in ("healthy", "not collapsed") else "bad"}">{esc(verdict)}</span>'
    if lat.verdict_details():
        status += f" ({esc(lat.verdict_details())})"
    per_dim = ("KL per unit given the layers above (closed form for each layer's Gaussians), averaged over "
               "draws of those layers; units in layer order, bottom first." if lat.layers and lat.kl_per_dim is not None
               else "KL per dimension in closed form (diagonal Gaussian posterior and factorised prior)."
               if lat.kl_per_dim is not None else
               "The posterior is not a diagonal Gaussian, so a KL per dimension is not defined; only "
               "the activity is shown.")
    rows = [
        ("active units", f"{lat.active_units} of {lat.latent_dim}",
         f"Dimensions whose posterior mean moves with the input, Var<sub>x</sub>(E<sub>q</sub>[z<sub>d</sub>]) "
         f"&gt; {fmt(lat.active_threshold)} (Burda et al. 2016). Inactive ones are ignored by the model."),
        ("average KL", f"{fmt(lat.kl)} nats", "The rate again: the sum of the per-dimension KLs."),
        ("&nbsp;&nbsp;mutual information I(x; z)",
         f"{pm(lat.mutual_information, lat.mutual_information_stderr)} nats",
         "How much the code tells about which example it came from, under the aggregate posterior "
         f"q(z) = (1/N) Σ<sub>n</sub> q(z|x<sub>n</sub>). At most log N = {fmt(lat.mutual_information_max)} "
         "nats for N examples (Monte-Carlo estimate; ± is its error)."),
        ("&nbsp;&nbsp;marginal KL(q(z) ‖ p(z))", f"{pm(lat.marginal_kl, lat.marginal_kl_stderr)} nats",
         "How far the codes of all examples together are from the prior: large values mean samples "
         "from p(z) land where the decoder was never trained. Average KL = I(x; z) + marginal KL "
         "(Hoffman &amp; Johnson 2016), up to Monte-Carlo error."),
        ("posterior collapse", status,
         "Collapse: q(z|x) ≈ p(z) for every x (no active unit or KL near zero), so the code carries "
         "no information and the decoder models the data alone."),
    ]
    for layer in lat.per_layer():  # a hierarchy: layer by layer, bottom first
        kl = "" if layer["kl"] is None else f"KL {fmt(layer['kl'])} nats, "
        rows.append((f"&nbsp;&nbsp;layer z{layer['layer']} ({layer['units']} units)",
                     f"{kl}{layer['informative']} informative, {layer['active']} active",
                     "This layer's share of the rate (its units' KL given the layers above) and its units that carry "
                     "information (KL above 0.1 nats) or move with x (activity). A lower-layer unit can move only "
                     "because the layer above moves while carrying no information of its own: then it is active "
                     "but not informative."))
    return (table_rows(rows) + img(images, "kl_bars", "KL and activity per latent dimension",
                               f"Left: KL per dimension (nats per example). Right: activity, log scale, with "
                               f"the active-unit threshold. {per_dim}"))


def gaps_section(ev: EvaluationSummary) -> str:
    given = (f" (here log p(x{esc(ev.given)}), every density given the context)" if ev.given else "")
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
    if s.family.startswith("ladder"):  # a hierarchy: q* frees the bottom-up messages (vaelab.evaluation.gaps)
        intro += ('<p class="explain">For this hierarchy the family is the ladder\'s own: q* keeps the model\'s '
                  "top-down merge and frees every layer's bottom-up message (mean and scale) per example. The "
                  "approximation gap is what precision-weighted Gaussian layers cannot do even with the best "
                  "messages; the amortization gap, what the shared bottom-up network loses against them.</p>")
    rows = [
        ("inference gap", f"{pm(g.inference_gap, g.inference_gap_stderr)} nats",
         "log p(x) − ELBO of the encoder's q(z|x)."),
        ("&nbsp;&nbsp;approximation gap", f"{pm(g.approximation_gap, g.approximation_gap_stderr)} nats",
         f"log p(x) − ELBO(q*): the limit of the {esc(s.family.split(' (')[0])} family."),
        ("&nbsp;&nbsp;amortization gap", f"{pm(g.amortization_gap, g.amortization_gap_stderr)} nats",
         "ELBO(q*) − ELBO(q): the price of one shared encoder."),
        ("ELBO of the encoder / of q*", f"{fmt(g.elbo_encoder)} / {fmt(g.elbo_optimal)} nats",
         f"on {g.n} test examples, each ELBO from {s.eval_samples} samples with shared noise"),
        ("log p(x) from", esc(s.log_px_estimator), "the tightest estimate of log p(x) that was run"),
    ]
    gradient = "the sticking-the-landing gradient, " if "sticking" in str(s.optimizer) else ""
    how = (f"q* from {s.steps} Adam steps ({gradient}learning rate {s.lr}, cosine-decayed, "
           f"{s.samples} samples per step), started at the encoder's output. ± is the standard "
           f"error over the {g.n} examples; the Monte-Carlo errors are ± {fmt(g.approximation_gap_mc_stderr, 3)} "
           f"(approximation) and ± {fmt(g.amortization_gap_mc_stderr, 3)} (amortization).")
    return intro + table_rows(rows) + f'<p class="explain">{esc(how)}</p>'
