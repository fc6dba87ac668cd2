"""The quiet one-CPU Lightning trainer the Lightning tests share (imported after their
``pytest.importorskip("lightning")``)."""

from __future__ import annotations

from typing import Any

import lightning as L


def cpu_trainer(**kwargs: Any) -> L.Trainer:
    """A ``lightning.Trainer`` on one CPU without logger, progress bar, model summary,
    checkpoints or sanity validation; ``kwargs`` override or add options."""
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**(options | kwargs))
