"""Griffe extension: read convlstm's docstrings, written for ``help()`` and Sphinx, as Markdown.

The docstrings follow the Google style with a few reStructuredText habits. Before griffe parses a
docstring, this extension rewrites, outside fenced code:

* doctest blocks (``>>>`` lines, their ``...`` continuations and expected output) as fenced
  ``pycon`` code, so that ``[0]`` in an output is not read as a Markdown link;
* ``Examples:`` and ``Example::`` as ``Example:`` (griffe's admonition), and a reST literal block
  (an indented block after a line ending in ``::``) as fenced ``python`` code;
* reST simple tables (``===== =====`` borders) as Markdown tables;
* reST section titles underlined with ``----`` or ``====`` as bold lines;
* an ``Args:`` entry whose names run over two lines (``a, b,`` / ``c: text``) as one line.

The docstrings themselves are unchanged; ``help()`` still shows them as written.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_BORDER = re.compile(r"^(\s*)(=+)((?: +=+)+)\s*$")
_UNDERLINE = re.compile(r"^\s*(-{3,}|={3,})\s*$")
_ARGS = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes):\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _doctests(lines: list[str]) -> list[str]:
    """Fence doctest blocks: a ``>>>`` line starts one; it ends at a blank line."""
    out: list[str] = []
    i, fenced = 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith(">>>"):
            pad = " " * _indent(line)
            out.append(f"{pad}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{pad}```")
            continue
        out.append(line)
        i += 1
    return out


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    cells = []
    for n, (start, end) in enumerate(spans):
        stop = len(line) if n == len(spans) - 1 else end
        cells.append(line[start:stop].strip())
    return cells


def _tables(lines: list[str]) -> list[str]:
    """reST simple tables -> Markdown tables (a row whose first cell is empty continues the
    previous row)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BORDER.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
        rows: list[list[str]] = []
        borders, j = 1, i + 1
        header_rows = 0
        while j < len(lines) and borders < 3:
            if _BORDER.match(lines[j]):
                borders += 1
                if borders == 2:
                    header_rows = len(rows)
            elif lines[j].strip():
                cells = _cells(lines[j], spans)
                if rows and not cells[0]:
                    rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
                else:
                    rows.append(cells)
            j += 1
        if borders < 3 or header_rows == 0:  # not a table after all
            out.append(lines[i])
            i += 1
            continue
        pad = match.group(1)
        out.append("")
        for n, row in enumerate(rows):
            out.append(pad + "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
            if n == header_rows - 1:
                out.append(pad + "|" + "|".join("---" for _ in row) + "|")
        out.append("")
        i = j
    return out


def _headings(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if (
            _UNDERLINE.match(line)
            and out
            and out[-1].strip()
            and len(line.strip()) == len(out[-1].strip())
        ):
            out[-1] = f"{' ' * _indent(out[-1])}**{out[-1].strip()}**"
            out.append("")
            continue
        out.append(line)
    return out


def _args(lines: list[str]) -> list[str]:
    """Join an argument list entry whose names are split over lines (``a, b,\\n c: ...``)."""
    out: list[str] = []
    section_indent: int | None = None
    for line in lines:
        match = _ARGS.match(line)
        if match:
            section_indent = len(match.group(1))
            out.append(line)
            continue
        if section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None
        if (
            section_indent is not None
            and out
            and out[-1].rstrip().endswith(",")
            and ":" not in out[-1]
            and _indent(out[-1]) > section_indent
        ):
            out[-1] = out[-1].rstrip() + " " + line.strip()
            continue
        out.append(line)
    return out


def _examples(lines: list[str]) -> list[str]:
    """``Examples:`` / ``Example::`` -> ``Example:`` (griffe's admonition, whose doctest
    :func:`_doctests` fences); a reST literal block after ``::`` -> fenced ``python`` code."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped in ("Examples:", "Example::"):
            out.append(line.replace(stripped, "Example:"))
            literal = stripped == "Example::"
        elif stripped.endswith("::") and not stripped.startswith((">>>", "...")):
            out.append(line.rstrip()[:-1])
            literal = True
        else:
            out.append(line)
            literal = False
        i += 1
        if not literal:
            continue
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or _indent(lines[j]) <= _indent(line):
            continue
        block_indent = _indent(lines[j])
        end = j
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) >= block_indent):
            end += 1
        while end > j and not lines[end - 1].strip():
            end -= 1
        pad = " " * block_indent
        out.extend(["", f"{pad}```python", *lines[j:end], f"{pad}```"])
        i = end
    return out


def markdown_docstring(text: str) -> str:
    """The Markdown form of one docstring (see the module docstring)."""
    lines = text.splitlines()
    for step in (_examples, _args, _tables, _headings, _doctests):
        lines = step(lines)
    return "\n".join(lines)


class MarkdownDocstrings(griffe.Extension):
    """Rewrite every docstring with :func:`markdown_docstring` before griffe parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
