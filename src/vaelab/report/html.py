"""The report's HTML building blocks: the inline style sheet, escaping and number formats,
sections, tables of rows and embedded figures. Plain functions of strings and numbers."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["CSS", "Drawn", "esc", "fmt", "pm", "img", "table_rows", "section"]


@dataclass
class Drawn:
    """A figure: its ``data:`` URI, and for a grid with one row per class, its rows."""

    uri: str
    rows: int | None = None


CSS = """
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


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


HUGE = 1e9  # numbers this large are shown in %g style (4 significant digits), never hundreds of digits wide


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= HUGE:  # 1e308 in fixed point is 309 digits: a page wider than any screen
            return f"{value:.4g}"
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    if isinstance(value, int) and abs(value) >= HUGE:
        return f"{value:.4g}"
    return str(value)


def pm(value: float | None, se: float | None, digits: int = 2) -> str:
    """``value ± se``, the error with enough decimals to show its first significant digit."""
    if value is None:
        return "–"
    if se is None:
        return fmt(value, digits)
    places = digits
    while 0 < se < 10 ** -places and places < 4:
        places += 1
    return f"{fmt(value, digits)} ± {fmt(float(se), places) if abs(se) >= HUGE else f'{se:.{places}f}'}"


def img(images: dict[str, Drawn], name: str, alt: str, caption: str, max_width: int | None = None) -> str:
    if name not in images:
        return f'<p class="explain">({esc(alt)}: not available for this run.)</p>'
    drawn = images[name]
    style = f' style="width:100%;max-width:{max_width}px"' if max_width else ""
    rows = f' data-rows="{drawn.rows}"' if drawn.rows is not None else ""
    return (f'<figure id="figure-{esc(name)}"{rows}><img src="{drawn.uri}" alt="{esc(alt)}"{style}>'
            f"<figcaption>{caption}</figcaption></figure>")


def table_rows(rows: list[tuple[str, str, str]]) -> str:
    body = "".join(f'<tr><td>{name}</td><td class="num">{value}</td><td class="what">{what}</td></tr>'
                   for name, value, what in rows)
    return f"<table><tr><th>quantity</th><th>value</th><th>what it means</th></tr>{body}</table>"


def section(sid: str, heading: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(heading)}</h2>{body}</section>'
