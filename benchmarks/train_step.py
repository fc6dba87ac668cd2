"""Time of one training step of the main job's model, the unit of its 15-minute budget.

A step as `convlstm train` takes it (fp32): the `moving_mnist` model with layer-normalised gates
reads 10 frames of 8 sequences (64x64) and forecasts 10, with the one-step-ahead predictions of
the inputs, an MSE loss, backward and an AdamW update. Prints the median over `--steps` steps
after 10 warm-up steps. To compare two versions of the code, run it alternately from each
checkout (`PYTHONPATH=other/src python benchmarks/train_step.py`), a few times each: a shared
machine's speed drifts by ~10% between runs.

    python benchmarks/train_step.py --steps 150
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convlstm.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="timed steps (default 150)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("moving_mnist", norm="layer")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, targets = torch.rand(8, 10, 1, 64, 64), torch.rand(8, 10, 1, 64, 64)

    def step() -> None:
        forecast = model(inputs, 10, predict_inputs=True)[:, -10:]
        loss = torch.nn.functional.mse_loss(forecast, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(
        f"median {1e3 * statistics.median(seconds):.1f} ms per training step ({args.steps} steps)"
    )


if __name__ == "__main__":
    main()
