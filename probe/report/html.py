"""``report.html``: the report as one self-contained page to send to a colleague.

Figures are embedded as PNG data URIs and the table sorter is a few lines of inline script, so
the page needs no other file and no network. Every leaderboard and ranking table sorts by any
column (click or Enter on its header; numbers best-first on the first click, missing cells
last). Each number shows its record's configuration on hover (protocol, head, layers,
learning rate, seeds, record files) and links to the full records, embedded at the end of the
page. The page lists the protocols and the feature stores it was built from.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cache import DataRoot
from probe.report.figures import BoardFigures
from probe.records import column_of
from probe.report.tables import Leaderboard

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #1d232a; }
h1 { margin-top: 24px; } h2 { margin-top: 40px; border-bottom: 1px solid #d6dbe0; padding-bottom: 4px; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f4f6f8; padding: 8px; overflow-x: auto; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 8px 0 4px; }
th, td { border: 1px solid #d6dbe0; padding: 4px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, tbody th { text-align: left; }
thead th { background: #eef1f4; cursor: pointer; user-select: none; vertical-align: bottom; }
thead th small { color: #5b6670; font-weight: normal; }
thead th::after { content: " \\21C5"; color: #a3acb5; }
thead th[aria-sort="ascending"]::after { content: " \\25B2"; color: #1d232a; }
thead th[aria-sort="descending"]::after { content: " \\25BC"; color: #1d232a; }
tbody tr:nth-child(even) { background: #fafbfc; }
td a { color: inherit; text-decoration: none; border-bottom: 1px dotted #7a8590; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figure img { max-width: 480px; border: 1px solid #e3e7eb; }
figcaption, .note { color: #5b6670; font-size: 12px; }
details { margin: 2px 0; } details[open] { background: #fbfcfd; }
"""

SCRIPT = """
(function () {
  function key(cell, type) {
    var value = cell.getAttribute('data-value');
    if (type === 'number') {
      var x = parseFloat(value);
      return isNaN(x) ? null : x;
    }
    return (value === null ? cell.textContent : value).toLowerCase();
  }
  function sortBy(table, index, th) {
    var type = th.getAttribute('data-type');
    var now = th.getAttribute('aria-sort');
    var dir = now ? (now === 'ascending' ? 'descending' : 'ascending') : th.getAttribute('data-first');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index], type), y = key(b.cells[index], type);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return dir === 'ascending' ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.tabIndex = 0;
      th.addEventListener('click', function () { sortBy(table, index, th); });
      th.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sortBy(table, index, th); }
      });
    });
  });
  function openTarget() {
    var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
    if (target && target.tagName === 'DETAILS') { target.open = true; }
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();
})();
"""


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _inline(text: str) -> str:
    """Escaped text with markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _text(text))


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _figure(title: str, figure: tuple[Path | None, str]) -> str:
    path, note = figure
    if path is None:
        return f'<p class="note">{_text(title)}: not drawn — {_text(note)}.</p>'
    return (f'<figure><img src="{_image(path)}" alt="{_text(title)}"><figcaption>{_text(title)}: {_text(note)}'
            f'</figcaption></figure>')


def markdown_section(lines: Sequence[str], folder: Path) -> str:
    """The report's generated markdown (headings, paragraphs, tables, ``![](figures/...)`` images,
    relative to ``folder``) as HTML, figures embedded; tables sort like the leaderboards."""
    out: list[str] = []
    table: list[list[str]] = []

    def number(cell: str) -> float | None:
        match = re.match(r"^[+-]?\d+(\.\d+)?", cell.strip())
        return float(match.group(0)) if match else None

    def flush() -> None:
        if table:
            head, *rows = [r for r in table if not all(set(c) <= set("-: ") for c in r)]
            numeric = [all(number(r[i]) is not None for r in rows if i < len(r)) for i in range(len(head))]
            heads = "".join(f'<th scope="col" data-type="number" data-first="descending">{_inline(c)}</th>' if numeric[i]
                            else f'<th scope="col" data-type="text" data-first="ascending">{_inline(c)}</th>'
                            for i, c in enumerate(head))
            body = "".join("<tr>" + "".join(f'<td data-value="{number(c)}">{_inline(c)}</td>' if numeric[i]
                                            else f"<td>{_inline(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                           for r in rows)
            out.append(f'<table class="sortable"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>')
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if image:
            out.append(f'<figure><img src="{_image(folder / image.group(2))}" alt="{_text(image.group(1))}"></figure>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def cell_records(board: Leaderboard, model: str, column: str,
                 records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records behind one leaderboard cell: the cell's probe configuration, one per seed."""
    probe = board.probe.get((model, column))
    return [r for r in records
            if r.get("protocol", "midprobe") == board.protocol and r.get("config", {}).get("head") in (board.head, None)
            and column_of(r) == column and r["model"] == model and r["probe"] == probe
            and r.get("headline") is not None and math.isfinite(r["headline"])]


def cell_summary(records: Sequence[Mapping[str, Any]], root: DataRoot) -> str:
    """The hover text of a cell: its configuration and the records it averages."""
    first = records[0]
    config = first.get("config", {})
    lines = [f"probe: {first['probe']}", f"protocol: {first.get('protocol', 'midprobe')}"]
    if config.get("head"):
        lines.append(f"head: {config['head']}")
    if config.get("layers"):
        lines.append(f"layers: {', '.join(config['layers'])}")
    if config.get("lr") is not None:
        lines.append(f"lr: {config['lr']:g}")
    lines.append(f"metric: {first['headline_metric']}")
    lines.append("seeds: " + ", ".join(str(r.get("seed")) for r in records))
    lines += [f"record: {_relative(r['path'], root)}" for r in records]
    return "\n".join(lines)


def _relative(path: str, root: DataRoot) -> str:
    try:
        return str(Path(path).relative_to(root.root))
    except ValueError:
        return str(path)


def _column_head(column: str) -> str:
    """``task (dataset)`` as the task over the dataset, so wide boards fit a page."""
    task, sep, dataset = column.partition(" (")
    return f"{_text(task)}<br><small>({_text(dataset)}</small>" if sep else _text(column)


def _leaderboard(board: Leaderboard, records: Sequence[Mapping[str, Any]], anchors: Mapping[str, str],
                 root: DataRoot) -> str:
    head = ['<th scope="col" data-type="text" data-first="ascending">model</th>']
    head += ['<th scope="col" data-type="text" data-first="ascending">source</th>'] if board.source else []
    head += [f'<th scope="col" data-type="number" data-first="descending" title="{_text(c)}">{_column_head(c)}<br>'
             f'<small>{_text(board.metric[c])}</small></th>' for c in board.columns]
    rows = []
    for model in board.models:
        cells = [f'<th scope="row" data-value="{_text(model)}">{_text(model)}</th>']
        cells += [f"<td>{_text(board.source_of(model))}</td>"] if board.source else []
        for column in board.columns:
            if board.is_published(model) and (model, column) in board.mean:
                cells.append(f'<td data-value="{board.mean[model, column]!r}" title="published: read off the paper\'s '
                             f'figures, ±0.3">{_text(board.cell(model, column))}</td>')
                continue
            behind = cell_records(board, model, column, records)
            if (model, column) not in board.mean or not behind:
                cells.append('<td data-value="">–</td>')
                continue
            cells.append(f'<td data-value="{board.mean[model, column]!r}" title="{_text(cell_summary(behind, root))}">'
                         f'<a href="#{anchors[behind[0]["path"]]}">{_text(board.cell(model, column))}</a></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable leaderboard" id="leaderboard-{_text(board.slug)}"><thead><tr>{"".join(head)}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _ranking(section: BoardFigures) -> str:
    rows = "".join(f'<tr><th scope="row" data-value="{_text(m)}">{_text(m)}</th>'
                   f'<td data-value="{r!r}">{r:.2f}</td></tr>'
                   for m, r in sorted(section.mid_rank.items(), key=lambda kv: kv[1]))
    return ('<table class="sortable ranking"><thead><tr><th scope="col" data-type="text" data-first="ascending">model'
            '</th><th scope="col" data-type="number" data-first="ascending">mean rank over tasks</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def _board_section(section: BoardFigures, records: Sequence[Mapping[str, Any]], anchors: Mapping[str, str],
                   root: DataRoot, protocols: Mapping[str, str]) -> str:
    from probe.report.compare import measured_vs_published, ranking_rows
    from probe.report.page import probe_lines

    board = section.board
    drawn = {c: f for c, f in section.scatter.items() if f[0] is not None}
    skipped: dict[str, list[str]] = {}
    for column, (_, note) in section.scatter.items():
        if column not in drawn:
            skipped.setdefault(note.split("; have")[0], []).append(column)
    scatter = "".join(_figure(column, figure) for column, figure in drawn.items())
    scatter += "".join(f'<p class="note">Not drawn for {"any task" if len(cs) == len(section.scatter) > 1 else _text(", ".join(cs))}'
                       f' — {_text(note)}.</p>' for note, cs in skipped.items())
    note = f'<p class="note">{_inline(board.published_note)}.</p>' if board.published_note else ""
    return "\n".join([
        f'<section id="board-{_text(board.slug)}"><h2>Leaderboard — {_text(board.label)}</h2>',
        f"<p>Protocol <code>{_text(board.protocol)}</code>: {_inline(protocols[board.protocol])}</p>", note,
        _leaderboard(board, records, anchors, root),
        f'<p class="note">CSV: <code>leaderboard_{_text(board.slug)}.csv</code> beside this page. Hover a number '
        'for its configuration; click it for its records.</p>',
        markdown_section([*measured_vs_published(board), *probe_lines(board)], Path(".")),
        "<h3>Mid-level vs ImageNet linear accuracy</h3>", f'<p class="note">ImageNet axis: {_inline(section.axis)}.</p>',
        f'<div class="figures">{scatter}</div>',
        "<h3>Task correlations</h3>", _figure("task correlations", section.correlations),
        "<h3>Ranking</h3>", _figure("ranking", section.ranking),
        markdown_section(ranking_rows(board, section.imagenet), Path(".")), "</section>"])


def _records_section(records: Sequence[Mapping[str, Any]], anchors: Mapping[str, str], root: DataRoot) -> str:
    items = []
    for r in records:
        shown = {k: v for k, v in r.items() if k not in ("path", "versions", "feature_fingerprint")}
        body = json.dumps(shown, indent=2, sort_keys=True, default=str)
        items.append(f'<details id="{anchors[r["path"]]}"><summary><code>{_text(_relative(r["path"], root))}</code>'
                     f'</summary><pre>{_text(body)}</pre></details>')
    return '<section id="records"><h2>Result records</h2>' + "".join(items) + "</section>"


def write_html(path: Path, *, sections: Sequence[BoardFigures], records: Sequence[Mapping[str, Any]], root: DataRoot,
               built: str, intro: str, protocols: Mapping[str, str], stores: Sequence[tuple[Path, str]],
               imagenet_source: str, studies: str = "") -> Path:
    """Write the self-contained page to ``path``; returns it.

    ``protocols``: each leaderboard's protocol -> its description; ``stores``: the feature stores
    (path, weights) the records came from; ``intro`` and ``imagenet_source`` are shown as text
    (markdown code spans become code); ``studies``: the label-efficiency and robustness sections,
    already HTML (:func:`markdown_section`).
    """
    anchors = {r["path"]: f"record-{i}" for i, r in enumerate(records)}
    nav = "".join(f'<a href="#board-{_text(s.board.slug)}">{_text(s.board.label)}</a>' for s in sections)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', "<title>midprobe report</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>midprobe report</h1>",
        f"<p>Built {_text(built)} from {len(records)} result records under <code>{_text(root.root)}</code>.</p>",
        f"<p>{_inline(intro)}</p>", f"<nav>{nav}<a href=\"#protocols\">Protocols</a><a href=\"#sources\">Sources</a>"
        "<a href=\"#records\">Records</a></nav>",
        *[_board_section(s, records, anchors, root, protocols) for s in sections],
        *([f'<section id="studies">{studies}</section>'] if studies else []),
        '<section id="protocols"><h2>Protocols</h2><dl>',
        *[f"<dt><code>{_text(p)}</code></dt><dd>{_inline(text)}</dd>" for p, text in sorted(protocols.items())],
        "</dl></section>",
        '<section id="sources"><h2>Sources</h2>', f"<p>ImageNet accuracies: {_inline(imagenet_source)}.</p>",
        "<p>Feature stores:</p><ul>",
        *[f"<li><code>{_text(store)}</code> (weights <code>{_text(weights)}</code>)</li>" for store, weights in stores],
        "</ul></section>",
        _records_section(records, anchors, root),
        f"<script>{SCRIPT}</script>", "</body></html>",
    ]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
