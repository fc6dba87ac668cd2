"""The benchmark's shapes: a grid of named ones and ``B,T,C_in,S,H1-H2,K[,stream]``."""

from __future__ import annotations

import dataclasses

__all__ = ["FULL", "GPU", "QUICK", "SHAPES", "Shape", "parse_shape"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark shape: ``batch`` sequences of ``steps`` frames ``(in_channels, size, size)``
    through 2-D layers of ``hidden`` channels and ``kernel``×``kernel`` kernels. ``stream``: one
    step from a given state without gradients (streaming inference) instead of training."""

    name: str
    batch: int
    steps: int
    in_channels: int
    size: int
    hidden: tuple[int, ...]
    kernel: int
    stream: bool = False
    norm: str | None = None

    def describe(self) -> str:
        kind = "stream, 1 step" if self.stream else f"train, T={self.steps}"
        hidden = "x".join(map(str, self.hidden))
        norm = f", norm={self.norm}" if self.norm else ""
        return (
            f"B={self.batch} {kind}, {self.in_channels}x{self.size}x{self.size} in, "
            f"hidden {hidden}, k={self.kernel}{norm}"
        )


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("stream_tiny", 1, 1, 1, 16, (16,), 3, stream=True),
        Shape("stream_small", 1, 1, 16, 16, (32,), 3, stream=True),
        Shape("stream_main", 1, 1, 16, 16, (64, 64), 3, stream=True),
        # A small two-layer stack on 32x32 frames (the streaming shape of issue 22's peers).
        Shape("stream_peer", 1, 1, 8, 32, (16, 16), 3, stream=True),
        # The default main-job model: 64x64x1 frames, 8x8 patches -> 8x8x64, hidden [32, 32],
        # 3x3 kernels, batch 8.
        Shape("main_job", 8, 10, 64, 8, (32, 32), 3),
        # ... with the layer-normalised gates its recipe trains (the peers have no norm).
        Shape("main_job_norm", 8, 10, 64, 8, (32, 32), 3, norm="layer"),
        Shape("w16", 8, 10, 16, 16, (128, 128), 5),
        Shape("w64", 8, 10, 1, 64, (64, 64), 3),
        # Small shapes for --quick and the smoke test.
        Shape("quick_train", 2, 4, 16, 16, (32, 32), 3),
        Shape("quick_cin1", 2, 4, 1, 32, (16, 16), 3),
    ]
}
FULL = [
    "stream_tiny",
    "stream_small",
    "stream_main",
    "stream_peer",
    "main_job",
    "main_job_norm",
    "w16",
    "w64",
]
QUICK = ["stream_tiny", "stream_small", "quick_train", "quick_cin1"]
GPU = ["w16", "main_job"]


def parse_shape(text: str) -> Shape:
    """A grid name, or ``B,T,C_in,S,H1-H2-...,K[,stream]`` (e.g. ``8,10,16,16,128-128,5``)."""
    if text in SHAPES:
        return SHAPES[text]
    parts = text.split(",")
    try:
        batch, steps, cin, size = (int(p) for p in parts[:4])
        hidden = tuple(int(h) for h in parts[4].split("-"))
        kernel = int(parts[5])
    except (ValueError, IndexError):
        raise ValueError(
            f"unknown shape {text!r}: use one of {', '.join(SHAPES)} or B,T,C_in,S,H1-H2,K[,stream]"
        ) from None
    stream = len(parts) > 6 and parts[6] == "stream"
    return Shape(text, batch, 1 if stream else steps, cin, size, hidden, kernel, stream)
