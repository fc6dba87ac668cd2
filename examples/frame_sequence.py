"""The tutorial's second block diagram: a real sequence, one frame per step, and streaming.

A sequence ``(B, T, C, H, W)`` is read frame by frame. Feeding it in chunks and passing the returned
states back gives exactly the output of one call: the way to run a ConvLSTM on a live feed.

Run: ``python examples/frame_sequence.py``
"""

import torch

from convlstm import ConvLSTM2d

torch.manual_seed(0)
layer = ConvLSTM2d(1, [16, 16], kernel_size=3, peephole="channel").eval()
frames = torch.rand(2, 12, 1, 32, 32)  # (B, T, C, H, W)
with torch.no_grad():
    output, states = layer(frames)  # output (B, T, 16, H, W): the top layer's h at every step
    state, chunks = None, []
    for chunk in frames.split(4, dim=1):  # three chunks of 4 frames, as they arrive
        out, state = layer(chunk, state)
        chunks.append(out)
streamed = torch.cat(chunks, dim=1)
print("output", tuple(output.shape), "max |streamed - one call|", (streamed - output).abs().max().item())
assert torch.allclose(streamed, output, atol=1e-6)
