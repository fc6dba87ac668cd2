"""SIGINT and SIGTERM during training: the first one becomes a flag that the loop checks between
steps (it then saves ``last.pt`` and raises :class:`TrainingInterrupted`); a second one aborts."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convlstm.training.rundir import resume_command

__all__ = ["Signals", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved.

    ``exit_code`` is ``128 + signal`` (130 for SIGINT, 143 for SIGTERM); ``resume_command`` is
    the command line that continues the run (printed in the message).
    """

    def __init__(self, signum: int, checkpoint: Path, step: int, world_size: int = 1) -> None:
        name = signal.Signals(signum).name
        self.resume_command = resume_command(checkpoint.parent, world_size)
        super().__init__(
            f"interrupted by {name} at step {step}; checkpoint saved to {checkpoint}; "
            f"continue with: {self.resume_command}"
        )
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


class Signals:
    """Turn the first SIGINT/SIGTERM into a flag (``received``, the signal's number) checked
    between steps; a second one raises :class:`KeyboardInterrupt`."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        """Within the block, the handlers are installed (in the main thread only; elsewhere
        Python cannot install them and the flag stays unset); the previous ones come back after."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
