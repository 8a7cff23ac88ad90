"""The report as one self-contained HTML file: inline CSS, images embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone

import pandas as pd

from harness.report.render import (
    NOTES,
    Report,
    comparison_table,
    facts_table,
    headline,
    reference_table,
    summary_table,
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 1rem 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; white-space: nowrap; }
th { background: #f4f4f6; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; min-width: 14rem; max-width: 28rem; text-align: left; overflow-wrap: anywhere; }
.reference { background: #fff8e1; border: 1px solid #f0c36d; padding: .5rem .75rem; }
.reference table th { background: #fdecc8; }
.flagged { background: #fdeaea; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1rem; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
.muted { color: #666; font-size: 12px; }
"""

WRAP_COLUMNS = {"reason", "warnings", "flags", "notes", "sources", "source", "recipe"}
NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+( %| G|x)?$")


def _cell(column: str, value: str) -> str:
    css = "wrap" if column in WRAP_COLUMNS else "num" if NUMBER.match(value) else ""
    return f'<td class="{css}">{html.escape(value)}</td>' if css else f"<td>{html.escape(value)}</td>"


def table_html(frame: pd.DataFrame, table_id: str, flag_column: str | None = None) -> str:
    """A table with long text columns wrapped and flagged rows highlighted."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.astype(str).to_dict("records"):
        flagged = flag_column is not None and record.get(flag_column)
        cells = "".join(_cell(c, v) for c, v in record.items())
        rows.append(f'<tr class="flagged">{cells}</tr>' if flagged else f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _image(title: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    alt = html.escape(title)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{encoded}"><figcaption>{alt}</figcaption></figure>'


def to_html(report: Report) -> str:
    """The whole report as a standalone HTML document."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(f"<code>{html.escape(s)}</code>" for s in report.sources)
    title = f"Comparison by {html.escape(report.by)}"
    if report.comparison.baseline and len(report.comparison.groups) > 1:
        baseline = html.escape(report.comparison.baseline)
        title += f" (ratios against {baseline}; flagged rows differ in more than the device)"
    body = [
        "<h1>harness report</h1>",
        f'<p class="muted">Generated {stamp} from {sources}.</p>',
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in headline(report)) + "</ul>",
        '<section class="reference"><h2>Published reference (not measured here)</h2>',
        table_html(reference_table(report), "reference"),
        *[f'<p class="muted">Source: {html.escape(ref["source"])}</p>' for ref in report.references],
        "</section>",
        "<h2>Summary (measured)</h2>",
        table_html(summary_table(report), "summary"),
        f"<h2>{title}</h2>",
        table_html(comparison_table(report), "comparison", flag_column="flags"),
        "<h2>Device facts</h2>",
        table_html(facts_table(report), "devices"),
    ]
    if report.plots:
        images = "".join(_image(t, path.read_bytes()) for t, path in report.plots)
        body += ["<h2>Plots</h2>", f'<div class="plots">{images}</div>']
    body += ["<h2>Definitions</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in NOTES) + "</ul>"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>harness report</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
