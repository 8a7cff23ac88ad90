"""The report as one self-contained HTML file: inline CSS and JavaScript, plots embedded as base64 SVG.

Tables scroll inside their own box (so the page never overflows, down to phone width), keep their
header and id columns in view while scrolling, and sort by any column on a click.
"""

from __future__ import annotations

import base64
import html
import math
import re
from datetime import datetime, timezone

import pandas as pd

from harness.report.render import (
    DEFINITIONS,
    EFFECTS_NOTE,
    Board,
    Report,
    Table,
    board_rule,
    board_title,
    comparison_note,
    comparison_table,
    definitions,
    effects_table,
    facts_table,
    failed_table,
    leaderboard,
    race_note,
    race_table,
    reference_table,
    results_table,
    skipped_table,
)
from harness.text import plural

CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: .75rem 1rem; color: #1d1d1f; }
p, li, code { overflow-wrap: anywhere; }
h1 { font-size: 1.35rem; margin: .2rem 0; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .4rem;
     border-bottom: 1px solid #ddd; } h3 { font-size: 1rem; margin: .8rem 0 .2rem; }
p { margin: .3rem 0; }
.muted { color: #555; font-size: 12px; }
.caveats { background: #fff4e5; border-left: 4px solid #f0a030; padding: .3rem .7rem; font-size: 13px; }
.caveats ul { margin: .1rem 0; padding-left: 1.1rem; }
.scroll { overflow: auto; max-height: 85vh; width: fit-content; max-width: 100%; margin: .3rem 0;
          border: 1px solid #ddd; }
.scroll.short { max-height: none; }
table { border-collapse: separate; border-spacing: 0; font-size: 12.5px; }
th, td { border-right: 1px solid #e3e3e3; border-bottom: 1px solid #e3e3e3; padding: 3px 7px; text-align: left;
         vertical-align: top; background: #fff; }
th { background: #f1f1f4; position: sticky; top: 0; z-index: 2; cursor: pointer; user-select: none;
     white-space: normal; min-width: 4.5rem; }
th[data-dir="asc"]::after { content: " \\25B2"; } th[data-dir="desc"]::after { content: " \\25BC"; }
.frozen { position: sticky; z-index: 1; } th.frozen { z-index: 3; }
td { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; min-width: 16rem; max-width: 34rem; }
tr.flagged td { background: #fdeaea; }
details summary { cursor: pointer; color: #0b57d0; }
details ul { margin: .2rem 0; padding-left: 1.1rem; }
.board { margin: .5rem 0 .2rem; font-size: 14px; } .board b { font-weight: 600; }
.leaderboard .scroll { max-height: 40vh; }
tr.tied td:nth-child(2) { border-left: 4px solid #0072B2; color: #0072B2; font-weight: 600; }
.bar { display: inline-block; position: relative; width: 70px; height: 8px; margin-left: 6px; background: #eef;
       vertical-align: middle; } .bar span { position: absolute; top: 0; height: 8px; background: #7aa7d6; }
.bar i { position: absolute; top: -2px; width: 2px; height: 12px; background: #1d1d1f; }
table.collapsed .more { display: none; }
label.toggle { font-size: 12px; cursor: pointer; }
.reference { background: #fff8e1; border: 1px solid #f0c36d; padding: .2rem .7rem; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 400px), 1fr)); gap: .8rem; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
@media (max-width: 700px) {
  body { padding: .5rem; } td.wrap { min-width: 12rem; }
  table.cards thead { display: none; }
  table.cards, .cards tbody, .cards tr, .cards td { display: block; }
  .cards tr { border-bottom: 2px solid #ccc; padding: 2px 0; }
  .cards td { border: 0; white-space: normal; text-align: left; min-width: 0; padding: 1px 6px; }
  .cards td::before { content: attr(data-label) ": "; font-weight: 600; }
}
"""

SCRIPT = """
const cellKey = c => c.dataset.v !== undefined ? Number(c.dataset.v) : c.textContent.trim().toLowerCase();
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
  const dir = th.dataset.dir === "asc" ? "desc" : "asc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const rows = [...body.rows].sort((a, b) => {
    const x = cellKey(a.cells[i]), y = cellKey(b.cells[i]);
    const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return dir === "asc" ? order : -order;
  });
  body.append(...rows);
}
function freeze(table) {
  const count = innerWidth < 700 ? Math.min(1, +table.dataset.frozen) : +table.dataset.frozen;
  let left = 0;
  for (let i = 1; i <= count; i++) {
    const cells = table.querySelectorAll(`tr > :nth-child(${i})`);
    cells.forEach(c => { c.classList.add("frozen"); c.style.left = left + "px"; });
    left += cells[0].getBoundingClientRect().width;
  }
}
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => sortBy(th)));
document.querySelectorAll("input[data-more]").forEach(box => box.addEventListener("change", () => {
  document.getElementById(box.dataset.more).classList.toggle("collapsed", !box.checked);
}));
document.querySelectorAll("table[data-frozen]").forEach(freeze);
"""

WRAP_COLUMNS = {"reason", "warnings", "flags", "notes", "sources", "recipe", "which cells", "status"}
NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+x?( \[[\d,.]+, [\d,.]+\])?( %)?$")


def _cell(column: str, value: object, key: float | None, more: bool = False, bar: str = "") -> str:
    label = f' data-label="{html.escape(column)}"'
    if isinstance(value, list):
        items = "".join(f"<li>{html.escape(v)}</li>" for v in value)
        return f'<td class="wrap"{label}><details><summary>{len(value)} cells</summary><ul>{items}</ul></details></td>'
    text = str(value)
    css = "wrap" if column in WRAP_COLUMNS else "num" if NUMBER.match(text) else ""
    css = f"{css} more".strip() if more else css
    attrs = (f' class="{css}"' if css else "") + label
    if key is not None and math.isfinite(key):
        attrs += f' data-v="{key:.12g}"'
    return f"<td{attrs}>{html.escape(text)}{bar}</td>"


def _bar(text: str, top: float) -> str:
    """The interval ``mean [low, high]`` as a bar on a 0..``top`` scale (the mean a tick)."""
    found = re.match(r"^([\d,.]+)(?: \[([\d,.]+), ([\d,.]+)\])?", text)
    if not found or not top > 0:
        return ""
    mean, low, high = (float(v.replace(",", "")) if v else None for v in found.groups())
    low, high = (low, high) if low is not None and high is not None else (mean, mean)
    share = [min(100 * float(v or 0) / top, 100) for v in (mean, low, high)]
    return (f'<span class="bar" aria-hidden="true"><span style="left:{share[1]:.1f}%;width:{share[2] - share[1]:.1f}%">'
            f'</span><i style="left:{share[0]:.1f}%"></i></span>')


def _header(column: str, more: bool = False) -> str:
    """A header cell, with the column's definition as its tooltip."""
    key = "time to target (s)" if re.search(r"\btime to [\d.]+ %", column) else column
    definition = next((text for name, text in DEFINITIONS.items() if key.endswith(name)), None)
    title = f' title="{html.escape(definition)}"' if definition else ""
    css = ' class="more"' if more else ""
    return f"<th{title}{css}>{html.escape(column)}</th>"


def table_html(table: Table, table_id: str, flag_column: str | None = None, short: bool = False,
               cards: bool = False, bars: str | None = None) -> str:
    """A sortable table in its own scroll box; flagged rows highlighted, long text wrapped. ``short``: no height
    limit; ``cards``: on narrow screens each row is a block of labelled lines; ``bars``: a column whose intervals
    are drawn as bars; rows whose ``tie`` column is set are bracketed; ``table.more`` columns behind a toggle."""
    frame = table.frame
    more = set(table.more)
    head = "".join(_header(str(c), c in more) for c in frame.columns)
    keys = {c: pd.to_numeric(v, errors="coerce").tolist() for c, v in table.keys.items()}
    top = max((float(v.replace(",", "")) for text in frame[bars] for v in re.findall(r"[\d,]*\.?\d+", str(text))),
              default=0.0) if bars in frame else 0.0
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        cells = "".join(_cell(c, v, keys[c][i] if c in keys else None, c in more,
                              _bar(str(v), top) if c == bars else "") for c, v in record.items())
        css = " ".join(name for name, on in (("flagged", flag_column is not None and record.get(flag_column)),
                                             ("tied", record.get("tie"))) if on)
        rows.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    frozen = f' data-frozen="{table.frozen}"' if table.frozen else ""
    box = "scroll short" if short else "scroll"
    css = " ".join(["sortable", *(["cards"] if cards else []), *(["collapsed"] if more else [])])
    toggle = (f'<label class="toggle"><input type="checkbox" data-more="{table_id}"> more columns '
              f"({len(more)})</label>" if more else "")
    return (
        f'{toggle}<div class="{box}"><table id="{table_id}" class="{css}"{frozen}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _image(title: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{html.escape(title)}" src="data:image/svg+xml;base64,{encoded}"></figure>'


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _board(report: Report, board: Board, index: int) -> str:
    table = leaderboard(report, board)
    header = table.frame.columns[3]
    return (f'<div class="leaderboard"><p class="board"><b>{html.escape(board_title(report, board))}</b>: '
            f"{html.escape(board.verdict)}</p>{table_html(table, f'leaderboard-{index}', bars=header)}</div>")


def _answer(report: Report) -> list[str]:
    rules = list(dict.fromkeys(board_rule(b) for b in report.boards))
    body = [
        '<section id="answer"><h2>Answer</h2>',
        *[_board(report, board, i) for i, board in enumerate(report.boards, 1)],
        *([] if report.boards else ["<p>No configuration ran: nothing to rank.</p>"]),
        *[f'<p class="muted">{html.escape(rule)}</p>' for rule in rules],
        f'<div class="caveats"><strong>Read with care</strong>{_list(report.caveats)}</div>',
    ]
    if report.effects:
        body += [
            "<h3>Effect of each factor on training throughput</h3>",
            f'<p class="muted">{html.escape(EFFECTS_NOTE)}</p>',
            table_html(effects_table(report), "effects", short=True, cards=True),
        ]
    return [*body, "</section>"]


def _sections(report: Report) -> list[str]:
    summary = report.summary
    ok, skipped = summary[summary["status"] == "ok"], summary[summary["status"] == "skipped"]
    body = [
        f'<section id="results"><h2>Results: {plural(len(ok), "cell")} that ran '
        f'({plural(int(ok["runs"].sum()), "run")})</h2>',
        f"<details><summary>How each column is measured</summary>{_list(definitions(report))}</details>",
        table_html(results_table(report), "summary"),
        "</section>",
    ]
    note = race_note(report)
    if note:
        eliminated = race_table(report)
        body += ['<section id="race"><h2>Race</h2>', f'<p class="muted">{html.escape(note)}</p>',
                 *([table_html(eliminated, "race")] if len(eliminated.frame) else []), "</section>"]
    failed = failed_table(report)
    if len(failed.frame):
        body += [f'<section id="unfinished"><h2>Did not finish: {plural(len(failed.frame), "cell")}</h2>',
                 table_html(failed, "failed"), "</section>"]
    if len(skipped):
        body += [f'<section id="not-run"><h2>Not run: {plural(len(skipped), "cell")}</h2>',
                 '<p class="muted">One row per reason; open a row\'s list for its cells.</p>',
                 table_html(skipped_table(report), "skipped"), "</section>"]
    if len(report.comparison.groups) > 1:
        baseline = html.escape(str(report.comparison.baseline))
        body += [f'<section id="device-comparison"><h2>Comparison by {html.escape(report.by)} (ratios against '
                 f"{baseline})</h2>",
                 f'<p class="muted">{html.escape(comparison_note(report))}</p>']
        table = comparison_table(report)
        body += [table_html(table, "comparison", flag_column="flags")] if len(table.frame) else []
        body += ["</section>"]
    if report.plots:
        images = "".join(_image(t, path.read_bytes()) for t, path in report.plots)
        body += ['<section id="plots"><h2>Plots</h2>', f'<div class="plots">{images}</div>', "</section>"]
    if report.references:
        sources = "".join(f'<p class="muted">Source: {html.escape(r["source"])}</p>' for r in report.references)
        body += ['<section class="reference" id="published"><h2>Published reference (not measured here)</h2>',
                 table_html(reference_table(report), "reference", short=True), sources, "</section>"]
    body += ['<section id="device-facts"><h2>Device facts</h2>', table_html(facts_table(report), "devices", short=True),
             "</section>"]
    return body


def to_html(report: Report) -> str:
    """The whole report as a standalone HTML document, the answer first."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(f"<code>{html.escape(s)}</code>" for s in report.sources)
    body = [
        f"<h1>{html.escape(report.title)}</h1>",
        f'<p class="muted">Generated {stamp} from {sources}.</p>',
        *_answer(report),
        *_sections(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
