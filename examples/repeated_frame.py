"""The tutorial's first block diagram: one frame fed at every step, outputs taken at chosen steps.

The widely copied seed code (``ConvLSTM(input_channels=512, hidden_channels=[128, 64, 64, 32, 32],
kernel_size=3, step=5, effective_step=[4])``) feeds the same input at each of ``step`` steps and
returns the outputs of the steps listed in ``effective_step``. Here that is ``steps=`` plus indexing;
the frame's input convolution is computed once, not once per step.

Run: ``python examples/repeated_frame.py``
"""

import torch

from convlstm import ConvLSTM2d

torch.manual_seed(0)
layer = ConvLSTM2d(512, [128, 64, 64, 32, 32], kernel_size=3, peephole="channel")
frame = torch.randn(1, 512, 8, 8)  # (B, C, H, W): one feature map
with torch.no_grad():
    output, states = layer(frame, steps=5)  # (B, 5, 32, 8, 8)
effective_step = [4]
chosen = output[:, effective_step]  # (B, len(effective_step), 32, 8, 8)
h_n, c_n = states[-1]  # the last layer's final state, each (B, 32, 8, 8)
print("output", tuple(output.shape), "chosen", tuple(chosen.shape), "h_n", tuple(h_n.shape))
assert torch.equal(chosen[:, -1], h_n)
