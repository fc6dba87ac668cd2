"""MkDocs hook: render the package docstrings' Sphinx roles as plain code.

The docstrings use Sphinx-style cross-reference roles (``:class:`ConvLSTM2d```,
``:func:`~convlstm.data.get_dataset```), which Markdown renders as ``:class:`` followed by
code. This hook drops the role and, as Sphinx does for ``~``, keeps the last name only.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj|const):<code>(~)?([^<]*)</code>")


def _strip(match: re.Match[str]) -> str:
    name = match.group(2)
    if match.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_strip, html)
