"""The HTML page of a report (``summary.html``): one self-contained file, styles inline and every
figure and animation embedded as a ``data:`` URI, laid out for a laptop screen (a centred
column about 1200 pixels wide; figures in a grid that folds to one column on narrow windows).

:func:`page` takes the pieces :mod:`convlstm.report` prepares; it draws nothing itself.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_STYLE = """
:root{color-scheme:light;--ink:#1d2330;--muted:#5b6475;--line:#d7dce4;--best:#e3f3e3;
--panel:#f6f8fb}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:#fff}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px;
border-bottom:1px solid var(--line);padding-bottom:4px}
.lead{color:var(--muted);margin:0 0 12px}
.note{background:#fff6dc;border-left:4px solid #e0b000;padding:8px 12px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:6px 0}
td,th{border:1px solid var(--line);padding:5px 10px;text-align:right;white-space:nowrap}
th{background:var(--panel);font-weight:600}
td:first-child,th:first-child{text-align:left}
td.best{font-weight:700;background:var(--best)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(360px,100%),1fr));gap:16px}
figure{margin:0;background:var(--panel);border:1px solid var(--line);border-radius:6px;
padding:8px}
figure img{display:block;width:100%;height:auto}
.samples{grid-template-columns:repeat(auto-fill,minmax(min(540px,100%),1fr))}
figure.sample img{image-rendering:pixelated}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted)}dd{margin:0;word-break:break-all;font-family:ui-monospace,monospace;
font-size:13px}
.config{display:grid;align-items:start;grid-template-columns:repeat(auto-fill,minmax(min(270px,100%),1fr));gap:12px}
.config table{width:100%;font-size:13px}
.config td{white-space:normal;word-break:break-all}
details{margin-top:8px}summary{cursor:pointer;color:var(--muted)}
"""

Table = tuple[str, list[str], list[list[str]], list[list[bool]]]


def data_uri(data: bytes, name: str) -> str:
    """``data:`` URI of a ``.png`` or ``.gif`` file's bytes.

    >>> data_uri(b"GIF89a", "a.gif")
    'data:image/gif;base64,R0lGODlh'
    """
    kind = {".png": "image/png", ".gif": "image/gif"}[Path(name).suffix.lower()]
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _table(title: str, header: list[str], rows: list[list[str]], best: list[list[bool]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="best">{e(c)}</td>' if m else f"<td>{e(c)}</td>"
            for c, m in zip(row, marks, strict=True)
        )
        + "</tr>"
        for row, marks in zip(rows, best, strict=True)
    )
    return (
        f"<h2>{e(title)}</h2>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div>"
    )


def _definitions(items: Mapping[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<dt>{e(str(k))}</dt><dd>{e(_value(v))}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _config(config: Mapping[str, Any]) -> str:
    """One small key/value table per section of a training configuration."""
    e = html.escape
    parts = []
    for section, values in config.items():
        if not isinstance(values, Mapping):
            values = {"": values}
        rows = "".join(
            f"<tr><td>{e(str(k))}</td><td>{e(_value(v))}</td></tr>" for k, v in values.items()
        )
        parts.append(
            f'<table><thead><tr><th colspan="2">[{e(str(section))}]</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    return f'<div class="config">{"".join(parts)}</div>'


def page(
    *,
    subtitle: str,
    units: str | None,
    tables: Sequence[Table],
    curves: Sequence[tuple[str, str, bytes]],
    samples: Sequence[tuple[str, str, bytes]],
    provenance: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    conventions: Sequence[str],
) -> str:
    """The page's HTML text.

    Args:
        subtitle: the line under the title (dataset, sequences).
        units: the values' units, stated prominently, or ``None``.
        tables: ``(title, header, rows, best-cell marks)`` score tables.
        curves, samples: ``(file name, caption, bytes)`` of each PNG curve and GIF animation.
        provenance: what produced the results (version, command, data, seed, ...).
        config: the training configuration (sections of keys), or ``None``.
        conventions: one line per metric convention.
    """
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Evaluation report</title><style>{_STYLE}</style></head><body><main>",
        "<h1>Evaluation report</h1>",
        f'<p class="lead">{e(subtitle)}</p>',
    ]
    if units:
        out.append(f'<p class="note">{e(units)}</p>')
    out += [_table(*table) for table in tables]
    out.append('<p class="lead">Best value per column highlighted; n/a: undefined or infinite.</p>')
    if curves:
        out += ["<h2>Metrics against lead time</h2>", '<div class="grid">']
        out += [
            f'<figure><img src="{data_uri(data, name)}" alt="{e(caption)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
            for name, caption, data in curves
        ]
        out.append("</div>")
    if samples:
        out += ["<h2>Samples: input | truth | forecast | error</h2>", '<div class="grid samples">']
        out += [
            f'<figure class="sample"><img src="{data_uri(data, name)}" alt="{e(caption)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
            for name, caption, data in samples
        ]
        out.append("</div>")
    out += ["<h2>Provenance</h2>", _definitions(provenance)]
    if config:
        out += ["<h2>Configuration</h2>", _config(config)]
    out += ["<h2>Conventions</h2>", "<details><summary>How each metric is computed</summary>"]
    out += ["<ul>"] + [f"<li>{e(c)}</li>" for c in conventions] + ["</ul></details>"]
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
