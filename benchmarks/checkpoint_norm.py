"""Cost of ``checkpoint_steps=True`` with and without ``norm``, in one process.

Times forward+backward of ``ConvLSTM2d`` (default: the main job's layers, B=8, T=10, 64x8x8 in,
hidden 32-32, k=3) or of the main job's model (``--model``: ``create_model("moving_mnist")``,
10 frames in, 10 out), for ``norm`` in (None, "layer") with and without ``checkpoint_steps``,
interleaved round-robin (every round runs every variant once, in a rotating order), and prints
the medians and the ratio checkpointed / not checkpointed for each norm.

    python benchmarks/checkpoint_norm.py --rounds 20 --threads 2
    python benchmarks/checkpoint_norm.py --model --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convlstm import ConvLSTM2d
from convlstm.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--model", action="store_true", help="the main job's whole model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    if args.model:
        x = torch.rand(8, 10, 1, 64, 64, generator=generator)
        y = torch.rand(8, 10, 1, 64, 64, generator=generator)
    else:
        x = torch.randn(8, 10, 64, 8, 8, generator=generator)

    def build(norm: str | None, checkpointed: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        if args.model:
            return create_model("moving_mnist", norm=norm, checkpoint_steps=checkpointed)
        return ConvLSTM2d(64, [32, 32], 3, norm=norm, checkpoint_steps=checkpointed)

    def step(module: torch.nn.Module) -> None:
        if args.model:
            loss = (module(x, 10) - y).square().mean()
        else:
            loss = module(x.requires_grad_())[0].square().mean()
        loss.backward()

    variants = {(n, c): build(n, c) for n in (None, "layer") for c in (False, True)}
    for module in variants.values():  # warm-up
        step(module)
        step(module)
    times: dict[tuple, list[float]] = {key: [] for key in variants}
    keys = list(variants)
    for r in range(args.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            step(variants[key])
            times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    for (norm, checkpointed), ms in medians.items():
        print(f"norm={norm!s:6} checkpoint_steps={checkpointed!s:5}  median {ms:9.2f} ms")
    for norm in (None, "layer"):
        ratio = medians[(norm, True)] / medians[(norm, False)]
        print(f"norm={norm!s:6} checkpointed / not: {ratio:.2f}x")


if __name__ == "__main__":
    main()
