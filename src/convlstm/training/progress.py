"""What rank 0 prints while training: a progress bar per epoch, only on a terminal, and one line
per epoch (``run.progress``), so that a redirected log gets one line per epoch and no bars."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

from convlstm.config import Config

__all__ = ["epoch_bar", "epoch_line", "fmt", "header_line", "say"]


def _on_terminal() -> bool:
    """Whether bars can be drawn: stderr is a terminal, or a Jupyter kernel shows them as
    widgets (``tqdm.auto`` chose its notebook bar)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or tqdm.__module__.startswith("tqdm.notebook")


def epoch_bar(epoch: int, total: int, initial: int, show: bool) -> tqdm:
    """The bar of ``epoch`` (1-based) over ``total`` batches from ``initial``; shown only when
    ``show`` and stderr is a terminal or a notebook (a disabled bar accepts the same calls)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch}",
        unit="batch",
        dynamic_ncols=True,
        disable=not (show and _on_terminal()),
        leave=False,
    )


def say(line: str) -> None:
    """Print ``line`` to stdout without breaking a bar that is being drawn."""
    tqdm.write(line)


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, ``n/a`` when undefined.

    >>> fmt(1.23456, ".3g"), fmt(None, ".2f"), fmt(math.nan, ".2f")
    ('1.23', 'n/a', 'n/a')
    """
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def epoch_line(
    epoch: int,
    step: int,
    total_steps: int,
    train_loss: float | None,
    val: float,
    best: float | None,
    seq_per_s: float | None,
) -> str:
    """The line printed at the end of an epoch.

    >>> epoch_line(1, 4, 8, 0.5, 120.0, 120.0, 3.0)
    'epoch 1: step 4/8 train loss 0.5, val MSE/frame 120.00 (best 120.00), 3.0 seq/s'
    """
    return (
        f"epoch {epoch}: step {step}/{total_steps} train loss {fmt(train_loss, '.5g')}, val "
        f"MSE/frame {fmt(val, '.2f')} (best {fmt(best, '.2f')}), {seq_per_s or 0:.1f} seq/s"
    )


def header_line(
    config: Config,
    parameters: int,
    where: str,
    out_dir: Path,
    steps: int,
    steps_per_epoch: int,
    resumed_at: tuple[int, int] | None,
) -> str:
    """The line printed when a run starts: the model, ``where`` it trains, the plan, and
    ``resumed_at`` ``(step, epoch)`` for a resumed run."""
    budget = config.run.max_minutes
    line = (
        f"training {config.model.name} ({parameters:,} parameters) on {where} into {out_dir}: "
        f"{steps} steps of {config.optim.batch_size} sequences ({steps_per_epoch} per epoch), "
        + (f"time budget {budget:g} min" if budget is not None else "no time budget")
    )
    if resumed_at is not None:
        line += f"; resuming at step {resumed_at[0]} (epoch {resumed_at[1] + 1})"
    return line
