"""The HTML report of a sweep (``vaelab sweep --report``): one self-contained page of a study,
its trials, Optuna's optimization history drawn by us, the per-epoch values the pruner saw
and the parameter importances (Optuna's ``get_param_importances``). Written by
:func:`vaelab.sweep.sweep` at the end of a sweep; :func:`write_sweep_report` redraws it from
any study.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..plots import plain_text
from ..training.checkpoint import atomic_write_text
from .html import CSS, esc, fmt, section

__all__ = ["write_sweep_report"]


def _png(fig: Figure) -> str:
    from ..plots import save_png

    return "data:image/png;base64," + base64.b64encode(save_png(fig)).decode("ascii")


def _history_figure(trials: Sequence[Any], objective: str) -> str:
    """Optuna's optimization history, drawn by us: each finished trial's value, the best so far."""
    fig = Figure(figsize=(7.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    if done:
        xs, ys = [t.number for t in done], [t.value for t in done]
        ax.scatter(xs, ys, color="#2563eb", s=22, label="complete", zorder=3)
        ax.step(xs, np.maximum.accumulate(ys), where="post", color="#dc2626", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="#9ca3af", label="pruned (last value)", zorder=2)
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(plain_text(f"validation {objective} (nats)"))
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial finished yet", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _intermediate_figure(trials: Sequence[Any], objective: str) -> str:
    """The per-epoch values Optuna saw, complete trials in colour, pruned ones in grey."""
    fig = Figure(figsize=(7.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.state.name == "PRUNED":
            ax.plot(steps, values, color="#9ca3af", linewidth=1, marker="x", markersize=3)
        else:
            failed = "" if t.state.name == "COMPLETE" else f" ({t.state.name.lower()})"
            ax.plot(steps, values, linewidth=1.2, marker="o", markersize=3, label=f"trial {t.number}{failed}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(plain_text(f"validation {objective} (nats)"))
    ax.grid(alpha=0.3)
    if 0 < sum(1 for t in trials if t.intermediate_values and t.state.name != "PRUNED") <= 12:
        ax.legend(fontsize=7, ncols=2)
    return _png(fig)


def _importance_figure(importances: Mapping[str, float]) -> str:
    names = list(importances)[::-1]
    fig = Figure(figsize=(7.5, 0.5 * len(names) + 1.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.barh([plain_text(n) for n in names], [importances[n] for n in names], color="#2563eb")
    ax.set_xlabel("importance (share of the objective's variance, Optuna's get_param_importances)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def write_sweep_report(study: Any, path: str | Path, *, objective: str, best_run: Path | None) -> Path:
    """One self-contained HTML page of a study: its trials, history, per-epoch values, importances."""
    from ..sweep import _quiet_experimental, require_optuna  # (vaelab.sweep imports this module)

    optuna = require_optuna()
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        run = t.user_attrs.get("run", "")
        value = t.value if t.state.name == "COMPLETE" else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        params = ", ".join(f"{k}={fmt(v, 4) if isinstance(v, float) else v}" for k, v in t.params.items())
        retry = f" (retry of {t.user_attrs['retry_of']})" if "retry_of" in t.user_attrs else ""
        rows.append(f'<tr><td>{t.number}{esc(retry)}</td><td>{esc(t.state.name.lower())}</td>'
                    f'<td class="num">{fmt(value)}</td><td class="num">{len(t.intermediate_values)}</td>'
                    f'<td>{esc(params)}</td><td><code>{esc(run)}</code></td></tr>')
    table = ('<table id="trials"><tr><th>trial</th><th>state</th><th>value</th><th>epochs</th><th>parameters</th>'
             f'<th>run folder</th></tr>{"".join(rows)}</table>')
    body = [section("trials", "Trials", '<p class="explain">Value: the validation '
                    f'{esc(objective)} (nats per example, higher is better) at the best epoch; for a pruned trial, '
                    f'the last value reported before it was stopped.</p>{table}')]
    body.append(section("history", "Optimization history",
                        f'<figure><img src="{_history_figure(trials, objective)}" alt="history"></figure>'))
    body.append(section("intermediate", "Per-epoch values",
                        f'<figure><img src="{_intermediate_figure(trials, objective)}" alt="per-epoch values">'
                        "<figcaption>what the pruner compared; pruned trials in grey</figcaption></figure>"))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    varied = {k for t in complete for k in t.params}
    if len(complete) >= 2 and varied:
        importances, why = {}, "the complete trials do not vary"
        try:
            with _quiet_experimental():
                importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as err:  # e.g. every complete trial has the same parameters
            why = str(err).splitlines()[0]
        if importances:
            body.append(section("importance", "Parameter importances",
                                f'<figure><img src="{_importance_figure(importances)}" alt="importances"></figure>'))
        else:
            body.append(section("importance", "Parameter importances", f'<p class="explain">not available: {esc(why)}</p>'))
    best = ("" if best_run is None else f"best trial: {esc(best_run)}")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vaelab sweep {esc(study.study_name)}'
            f'</title><style>{CSS}</style></head><body><header><div class="wrap"><h1>Sweep {esc(study.study_name)}</h1>'
            f'<div class="sub">{len(trials)} trials, objective: validation {esc(objective)}; {best}</div></div></header>'
            f'<main class="wrap">{"".join(body)}</main></body></html>')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path
