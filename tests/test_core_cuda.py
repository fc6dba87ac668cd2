"""The core on CUDA agrees with the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from convlstm import ConvLSTM2d, ConvLSTM3d

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("cls", [ConvLSTM2d, ConvLSTM3d])
def test_cuda_float64_equals_cpu(cls):
    torch.manual_seed(0)
    layer = cls(2, [4, 3], 3, peephole="channel", bidirectional=True, dtype=torch.float64)
    size = (6, 6) if cls is ConvLSTM2d else (4, 4, 4)
    x = torch.randn(2, 5, 2, *size, dtype=torch.float64)
    lengths = torch.tensor([5, 3])
    want, want_states = layer(x, lengths=lengths)
    got, states = layer.cuda()(x.cuda(), lengths=lengths.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(states[-1][1].cpu(), want_states[-1][1], rtol=1e-9, atol=1e-10)


def test_cuda_bf16_autocast_and_backward():
    layer = ConvLSTM2d(4, [32, 32], 3).cuda()
    x = torch.randn(4, 6, 4, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = layer(x)
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    torch.testing.assert_close(out.float(), layer(x)[0], atol=0.05, rtol=0.05)
