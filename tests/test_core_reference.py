"""The core against the independent float64 reference in ``reference.py`` and gradcheck."""

from __future__ import annotations

import pytest
import torch

from convlstm import ConvLSTM, ConvLSTMCell
from reference import cell_step, layer_forward

SIZES = {1: (7,), 2: (6, 5), 3: (4, 3, 5)}


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Fill every parameter with random values so that no term hides behind a zero init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.4)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("peephole", [None, "channel", "spatial"])
@pytest.mark.parametrize("kernel", [3, 2])
def test_cell_matches_reference(dims, peephole, kernel):
    size = SIZES[dims]
    cell = ConvLSTMCell(
        3, 4, kernel, spatial_dims=dims, peephole=peephole, spatial_size=size, dtype=torch.float64
    )
    _randomise(cell)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    h, c = torch.randn(2, 2, 4, *size, dtype=torch.float64)
    got = cell(x, (h, c))
    want = cell_step(cell, x, h, c)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (2, 4, *size)
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # A missing state is zeros (the fast path skips the recurrent convolution).
    zero = torch.zeros_like(h)
    for g, w in zip(cell(x), cell_step(cell, x, zero, zero), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        {"norm": "layer"},
        {"norm": "group", "norm_groups": 2},
        {"norm": "layer", "bias": False, "peephole": "channel"},
        {"bias": False},
        {"padding": "valid", "stride": 2},
        {"padding": "valid", "dilation": 2},
        {"padding": 1, "kernel": 3},
        {"kernel": (3, 2)},
    ],
)
def test_cell_options_match_reference(options):
    options = dict(options)
    kernel = options.pop("kernel", 3)
    cell = ConvLSTMCell(3, 4, kernel, spatial_dims=2, dtype=torch.float64, **options)
    _randomise(cell, seed=1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    out_size = cell.output_size((9, 8))
    h, c = torch.randn(2, 2, 4, *out_size, dtype=torch.float64)
    for g, w in zip(cell(x, (h, c)), cell_step(cell, x, h, c), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_same_padding_keeps_size_for_even_kernels_and_strides():
    for kernel in (2, 3, 4, 5):
        cell = ConvLSTMCell(1, 2, kernel, spatial_dims=2)
        assert cell(torch.randn(1, 1, 7, 8))[0].shape[2:] == (7, 8)
    cell = ConvLSTMCell(1, 2, 4, spatial_dims=2, stride=2)
    assert cell(torch.randn(1, 1, 7, 8))[0].shape[2:] == (4, 4)  # ceil(size / stride)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_layer_matches_reference(dims, bidirectional, use_lengths):
    size = SIZES[dims]
    layer = ConvLSTM(
        2,
        [3, 4],
        [3, 2],
        spatial_dims=dims,
        bidirectional=bidirectional,
        peephole="channel",
        dtype=torch.float64,
    )
    _randomise(layer, seed=dims)
    x = torch.randn(3, 5, 2, *size, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4]) if use_lengths else None
    output, states = layer(x, lengths=lengths)
    want_out, want_states = layer_forward(layer, x, lengths)
    torch.testing.assert_close(output, want_out, rtol=1e-10, atol=1e-12)
    assert len(states) == len(want_states) == 2 * (2 if bidirectional else 1)
    for (h, c), (wh, wc) in zip(states, want_states, strict=True):
        torch.testing.assert_close(h, wh, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c, wc, rtol=1e-10, atol=1e-12)


def test_spatial_peephole_layer_and_initial_state_match_reference():
    layer = ConvLSTM(
        1, [3, 2], 3, spatial_dims=2, peephole="spatial", spatial_size=(5, 6), dtype=torch.float64
    )
    _randomise(layer, seed=4)
    x = torch.randn(2, 4, 1, 5, 6, dtype=torch.float64)
    state = [tuple(torch.randn(2, 2, n, 5, 6, dtype=torch.float64)) for n in (3, 2)]
    output, states = layer(x, state)
    want_out, want_states = layer_forward(layer, x, state=state)
    torch.testing.assert_close(output, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(states[1][1], want_states[1][1], rtol=1e-10, atol=1e-12)


def test_time_major_layout():
    layer = ConvLSTM(2, 3, 3, spatial_dims=1, batch_first=False, dtype=torch.float64)
    x = torch.randn(6, 2, 2, 9, dtype=torch.float64)  # (T, B, C, W)
    output, _ = layer(x)
    assert output.shape == (6, 2, 3, 9)
    want, _ = layer_forward(layer, x.transpose(0, 1))
    torch.testing.assert_close(output.transpose(0, 1), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1, 1], [2, 4], [3, 3], [5, 1]])
def test_chunked_streaming_equals_one_call(chunks):
    layer = ConvLSTM(2, [4, 3], 3, spatial_dims=2, peephole="channel", dtype=torch.float64)
    _randomise(layer, seed=7)
    x = torch.randn(2, 6, 2, 5, 5, dtype=torch.float64)
    full, full_states = layer(x)
    state, pieces = None, []
    for piece in x.split(chunks, dim=1):
        out, state = layer(piece, state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-13)
    for (h, c), (fh, fc) in zip(state, full_states, strict=True):
        torch.testing.assert_close(h, fh, rtol=0, atol=1e-13)
        torch.testing.assert_close(c, fc, rtol=0, atol=1e-13)


def test_repeated_input_mode_equals_repeated_sequence():
    layer = ConvLSTM(3, [5, 4], 3, spatial_dims=2, dtype=torch.float64, bidirectional=True)
    frame = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    out, states = layer(frame, steps=4)
    seq_out, seq_states = layer(frame[:, None].expand(-1, 4, -1, -1, -1))
    torch.testing.assert_close(out, seq_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(states[-1][0], seq_states[-1][0], rtol=0, atol=1e-13)


def test_variable_lengths_freeze_state_and_zero_outputs():
    layer = ConvLSTM(1, 3, 3, spatial_dims=1, dtype=torch.float64)
    x = torch.randn(2, 6, 1, 8, dtype=torch.float64)
    output, states = layer(x, lengths=torch.tensor([6, 3]))
    assert torch.all(output[1, 3:] == 0)
    short, short_states = layer(x[1:, :3])
    torch.testing.assert_close(output[1, :3], short[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(states[0][0][1], short_states[0][0][0], rtol=0, atol=1e-13)


def test_gradcheck_cell_with_every_parameter():
    cell = ConvLSTMCell(
        2,
        2,
        3,
        spatial_dims=2,
        peephole="spatial",
        spatial_size=(4, 4),
        norm="layer",
        dtype=torch.float64,
    )
    _randomise(cell, seed=3)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    h, c = (torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    params = list(cell.parameters())

    def fn(x, h, c, *weights):
        mapping = dict(zip([n for n, _ in cell.named_parameters()], weights, strict=True))
        return torch.func.functional_call(cell, mapping, (x, (h, c)))

    inputs = (x, h, c, *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_bidirectional_layer_with_lengths():
    layer = ConvLSTM(
        1, [2, 2], 2, spatial_dims=1, bidirectional=True, peephole="channel", dtype=torch.float64
    )
    _randomise(layer, seed=5)
    x = torch.randn(2, 3, 1, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])
    names = [n for n, _ in layer.named_parameters()]

    def fn(x, *weights):
        mapping = dict(zip(names, weights, strict=True))
        out, states = torch.func.functional_call(layer, mapping, (x,), {"lengths": lengths})
        return out, states[-1][1]

    weights = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(fn, (x, *weights), fast_mode=True)


def test_every_parameter_receives_gradient():
    layer = ConvLSTM(
        2,
        [3, 3],
        3,
        spatial_dims=2,
        peephole="spatial",
        spatial_size=(5, 5),
        norm="group",
        norm_groups=3,
        bidirectional=True,
    )
    out, states = layer(torch.randn(2, 4, 2, 5, 5))
    (out.square().mean() + states[-1][1].square().mean()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_streaming_through_strided_and_valid_layers():
    layer = ConvLSTM(
        2, [3, 4], 3, spatial_dims=2, stride=[2, 1], padding="valid", dtype=torch.float64
    )
    x = torch.randn(1, 4, 2, 11, 9, dtype=torch.float64)
    full, _ = layer(x)
    first, states = layer(x[:, :2])
    assert states[0][0].shape == (1, 3, 5, 4) and states[1][0].shape == (1, 4, 3, 2)
    second, _ = layer(x[:, 2:], states)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=0, atol=1e-13)
