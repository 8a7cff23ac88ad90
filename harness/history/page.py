"""``harness history page``: the history as one static, self-contained HTML page.

One small SVG graph per (machine, configuration, metric) over commits, oldest left; each point links to its
run's report (the copy filed with the record, or the URL given when recording) and names its commit in a
tooltip; change points are marked (red: a regression, green: an improvement) and listed in a table first.
The report's CSS, escaping and phone rules (:mod:`harness.report.html`): graphs scale to the width, tables
scroll inside their own box.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from harness import store
from harness.history.changes import Change, Series
from harness.report.html import CSS, SCRIPT, table_html
from harness.report.render import Table

WIDTH, HEIGHT, PAD = 400, 170, 34
PAGE_CSS = """
.graphs { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 400px), 1fr)); gap: .8rem; }
.graph svg { width: 100%; height: auto; border: 1px solid #eee; }
.graph h3 { font-size: 13px; overflow-wrap: anywhere; }
svg text { font: 10px system-ui, sans-serif; fill: #555; }
svg .line { fill: none; stroke: #0b57d0; stroke-width: 1.2; }
svg circle { fill: #0b57d0; } svg a:hover circle { fill: #f0a030; }
svg .regression { stroke: #c5221f; } svg .improvement { stroke: #188038; }
svg .change { stroke-width: 2; stroke-dasharray: 4 3; }
"""


def link(report: str | None, history: Path, out: Path) -> str | None:
    """A record's report as a link from the page in ``out``: a URL as is, a file of the history relative."""
    if report is None or urlparse(report).scheme:
        return report
    return Path(os.path.relpath(history.resolve() / report, out.resolve())).as_posix()


def graph(series: Series, changes: Sequence[Change], history: Path, out: Path) -> str:
    """One series as an inline SVG: a line over commits, a linked dot per commit, a dashed line per change."""
    values = [c.value for c in series.commits]
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    low, high = low - span * 0.08, high + span * 0.08
    count = len(values)

    def x(i: float) -> float:
        return PAD + (WIDTH - PAD - 8) * (i / (count - 1) if count > 1 else 0.5)

    def y(v: float) -> float:
        return 8 + (HEIGHT - 30) * (high - v) / (high - low)

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(series.name)}">',
             f'<text x="2" y="{y(high - span * 0.08) + 3:.1f}">{high - span * 0.08:.4g}</text>',
             f'<text x="2" y="{y(low + span * 0.08) + 3:.1f}">{low + span * 0.08:.4g}</text>',
             f'<text x="{PAD}" y="{HEIGHT - 4}">{html.escape(series.commits[0].commit[:7])}</text>',
             f'<text x="{WIDTH - 8}" y="{HEIGHT - 4}" text-anchor="end">'
             f"{html.escape(series.commits[-1].commit[:7])} ({count} commits)</text>"]
    for change in changes:
        kind = "regression" if change.regression else "improvement"
        at = x(change.index - 0.5)
        parts.append(f'<line class="change {kind}" x1="{at:.1f}" x2="{at:.1f}" y1="4" y2="{HEIGHT - 18}">'
                     f"<title>{html.escape(change.describe())}</title></line>")
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts.append(f'<polyline class="line" points="{points}"/>')
    for i, c in enumerate(series.commits):
        tip = f"{c.commit[:10]} {c.date}: {c.value:.4g} (median of {c.samples}) {c.subject}"
        dot = f'<circle cx="{x(i):.1f}" cy="{y(c.value):.1f}" r="3.2"><title>{html.escape(tip)}</title></circle>'
        href = link(c.report, history, out)
        parts.append(f'<a href="{html.escape(href)}">{dot}</a>' if href else dot)
    return "".join(parts) + "</svg>"


def changes_table(changes: Sequence[Change]) -> Table:
    frame = pd.DataFrame({
        "series": [c.series.name for c in changes],
        "kind": ["regression" if c.regression else "improvement" for c in changes],
        "change": [f"{c.change:+.1%}" for c in changes],
        "before": [f"{c.mean_before:.4g}" for c in changes],
        "after": [f"{c.mean_after:.4g}" for c in changes],
        "last commit before": [c.before.commit[:10] for c in changes],
        "first commit after": [f"{c.first.commit[:10]} {c.first.subject[:80]}" for c in changes],
        "confidence": [f"{c.confidence:.4f}" for c in changes],
    })
    return Table(frame, {"change": pd.Series([c.change for c in changes])}, frozen=1)


def to_html(history: Path, out: Path, series: Sequence[Series], changes: dict[str, list[Change]], title: str) -> str:
    """The page: the change points first, then one graph per series."""
    found = [c for s in series for c in changes[s.name]]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="muted">Generated {stamp} from <code>{html.escape(str(history))}</code>: {len(series)} series, '
            f"{len({c.commit for s in series for c in s.commits})} commits. Each point is one commit (the median of "
            "its samples) and links to its run's report; dashed lines mark change points (E-Divisive, Apache "
            "Otava), red a regression, green an improvement.</p>",
            f'<section id="changes"><h2>Change points: {len(found)}</h2>']
    body.append(table_html(changes_table(found), "change-points", short=True, cards=True) if found
                else "<p>None: every series kept its level.</p>")
    body.append('</section><section id="graphs"><h2>Series</h2><div class="graphs">')
    for s in series:
        body.append(f'<figure class="graph"><h3>{html.escape(s.name)} ({"higher" if s.higher_is_better else "lower"} '
                    f"is better)</h3>{graph(s, changes[s.name], history, out)}</figure>")
    body.append("</div></section>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}{PAGE_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def write(history: Path, out: Path, series: Sequence[Series], changes: dict[str, list[Change]],
          title: str = "Benchmark history") -> Path:
    """Write ``out/index.html``; its path."""
    path = out / "index.html"
    store.write_bytes(path, to_html(history, out, series, changes, title).encode())
    return path
