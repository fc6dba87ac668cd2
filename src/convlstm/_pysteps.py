"""pysteps, imported quietly (internal)."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

__all__ = ["import_pysteps"]


def import_pysteps() -> Any:
    """Import pysteps without its banner ("Pysteps configuration file found at ...").

    pysteps prints the banner on import unless its configuration file sets
    ``"silent_import": true``; rather than replacing the user's ``pystepsrc``, the first
    import runs with standard output captured (the banner is its only output).

    Returns:
        The ``pysteps`` module.

    Raises:
        ImportError: pysteps is not installed.
    """
    if sys.modules.get("pysteps") is not None:  # imported already (None: blocked)
        return sys.modules["pysteps"]
    with contextlib.redirect_stdout(io.StringIO()):
        import pysteps
    return pysteps
