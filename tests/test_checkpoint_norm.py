"""``checkpoint_steps=True`` with normalised gates: the per-step path's checkpoints of about
``sqrt(T)`` steps give the values and gradients of the path without checkpoints, and keep less
for backward."""

from __future__ import annotations

import pytest
import torch

from convlstm import ConvLSTM2d
from convlstm.bench.measure import memory_mb
from convlstm.models import EncoderForecaster

F64 = torch.float64


def _randomise(module: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)


def _outputs_and_grads(module, inputs, call):
    out = call(module, inputs)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum()
    params = [p for p in module.parameters()]
    return out.detach(), torch.autograd.grad(loss, [inputs, *params])


def _compare(module, inputs, call):
    module.train()
    results = []
    for flag in (False, True):
        for m in module.modules():
            if hasattr(m, "checkpoint_steps"):
                m.checkpoint_steps = flag
        results.append(_outputs_and_grads(module, inputs, call))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["layer", "group"])
@pytest.mark.parametrize("peephole", [None, "channel"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_checkpointed_norm_layer_equals_plain(norm, peephole, bidirectional):
    layer = ConvLSTM2d(
        3, [4, 4], 3, norm=norm, norm_groups=2, peephole=peephole,
        bidirectional=bidirectional, dtype=F64,
    )  # fmt: skip
    _randomise(layer)
    x = torch.randn(2, 7, 3, 5, 5, dtype=F64, requires_grad=True)  # 7 steps: chunks 3, 3, 1
    _compare(layer, x, lambda m, x: m(x)[0])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_checkpointed_norm_with_lengths_state_and_repeated_frame(bidirectional):
    layer = ConvLSTM2d(2, 4, 3, norm="layer", bidirectional=bidirectional, dtype=F64)
    _randomise(layer)
    x = torch.randn(3, 5, 2, 4, 4, dtype=F64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def masked(m, x):
        out, states = m(x, lengths=lengths)
        return torch.cat([out.flatten(), *(t.flatten() for s in states for t in s)])

    _compare(layer, x, masked)
    if not bidirectional:
        frame = torch.randn(3, 2, 4, 4, dtype=F64, requires_grad=True)
        _compare(layer, frame, lambda m, x: m(x, steps=5)[0])


def test_checkpointed_encoder_forecaster_equals_plain():
    model = EncoderForecaster(1, [4, 4], 3, patch_size=2, norm="layer", peephole="channel")
    model.double()
    _randomise(model)
    x = torch.rand(2, 4, 1, 8, 8, dtype=F64, requires_grad=True)
    _compare(model, x, lambda m, x: m(x, 3))


def _saved_bytes(forward) -> int:
    """Bytes of the distinct storages that autograd's saved-tensor hooks receive in ``forward``."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def test_checkpointed_norm_keeps_less_after_forward():
    """Saved tensors seen by saved-tensor hooks, and (since a checkpoint holds its inputs where no
    hook sees them) everything the forward pass leaves allocated, from the profiler's record."""
    torch.manual_seed(0)
    x = torch.randn(4, 9, 4, 16, 16)
    layers = {flag: ConvLSTM2d(4, [16, 16], 3, norm="layer", checkpoint_steps=flag)
              for flag in (False, True)}  # fmt: skip
    saved = {flag: _saved_bytes(lambda m=m: m(x)) for flag, m in layers.items()}
    assert saved[True] < 0.25 * saved[False]
    held = {
        flag: memory_mb(lambda m=m: m(x)[0], lambda out: out.sum().backward(), x.device)
        for flag, m in layers.items()
    }
    output_mb = x[:, :, :1].numel() * 16 * 4 / 1e6  # one layer's h at every step
    # Without checkpoints about 9 state tensors per layer and step; with them the two layers'
    # outputs and a state per chunk of 3 steps.
    assert held[True]["after_forward"] < 0.4 * held[False]["after_forward"]
    assert held[True]["after_forward"] < 3.5 * output_mb
