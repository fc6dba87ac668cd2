"""Behaviour of the core beyond the equations: errors, golden values, dropout, dtypes, compile."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from convlstm import (
    ConvLSTM1d,
    ConvLSTM2d,
    ConvLSTM3d,
    ConvLSTMCell,
    ConvLSTMCell2d,
)


def _constant_init(module: torch.nn.Module) -> None:
    """Deterministic, non-trivial values: a ramp over each parameter's elements."""
    with torch.no_grad():
        for p in module.parameters():
            ramp = torch.linspace(-0.5, 0.5, p.numel(), dtype=torch.float64)
            p.copy_(ramp.view(p.shape))


# Pinned from the implementation (and equal to tests/reference.py at the time of pinning): any
# refactor that changes the function fails here.
GOLDEN = {
    "plain": (0.07247608270429119, 0.17182899381427127),
    "channel": (0.07699888855835256, 0.15668703037861081),
    "layer_norm": (0.0780338366841669, 0.1366812337097285),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_outputs(name):
    options = {"plain": {}, "channel": {"peephole": "channel"}, "layer_norm": {"norm": "layer"}}
    layer = ConvLSTM2d(2, [3, 2], 3, dtype=torch.float64, **options[name])
    _constant_init(layer)
    x = torch.linspace(-1, 1, 2 * 4 * 2 * 5 * 5, dtype=torch.float64).view(2, 4, 2, 5, 5)
    output, states = layer(x)
    got = (output.abs().sum().item() / output.numel(), states[-1][1].abs().mean().item())
    assert got == pytest.approx(GOLDEN[name], rel=1e-12)


def test_thin_subclasses_fix_the_rank():
    assert ConvLSTM1d(1, 2, 3).spatial_dims == 1
    assert ConvLSTM2d(1, 2, 3).cells[0].spatial_dims == 2
    assert ConvLSTM3d(1, 2, 3).cells[0].kernel_size == (3, 3, 3)


def test_parameters_exist_before_forward_and_are_learned():
    layer = ConvLSTM2d(1, 4, 3, peephole="spatial", spatial_size=(6, 6))
    cell = layer.cells[0]
    assert cell.weight_ci.shape == (4, 6, 6)
    names = {n for n, _ in layer.named_parameters()}
    assert {"cells.0.weight_ci", "cells.0.weight_cf", "cells.0.weight_co"} <= names
    before = cell.weight_co.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    out, _ = layer(torch.randn(2, 3, 1, 6, 6))
    out.sum().backward()
    optimizer.step()
    assert not torch.equal(before, cell.weight_co)


def test_channel_peephole_shape_and_any_size():
    layer = ConvLSTM3d(1, 4, 3, peephole="channel")
    assert layer.cells[0].weight_cf.shape == (4, 1, 1, 1)
    for size in [(3, 4, 5), (2, 2, 2)]:
        assert layer(torch.randn(1, 2, 1, *size))[0].shape == (1, 2, 4, *size)


def test_bias_false_registers_none_and_unit_forget_bias():
    assert ConvLSTMCell2d(1, 2, 3, bias=False).bias is None
    bias = ConvLSTMCell2d(1, 2, 3).bias
    assert torch.equal(bias, torch.tensor([0.0, 0, 1, 1, 0, 0, 0, 0]))
    assert torch.all(ConvLSTMCell2d(1, 2, 3, unit_forget_bias=False).bias == 0)


def test_activations_by_name_and_callable():
    x = torch.randn(1, 1, 5, 5)
    cell = ConvLSTMCell2d(1, 2, 3, activation="relu", recurrent_activation="hard_sigmoid")
    assert "activation='relu'" in repr(cell)
    h, c = cell(x)
    i, _, g, o = cell.input_conv(x).chunk(4, 1)
    want_c = torch.nn.functional.hardsigmoid(i) * torch.relu(g)
    torch.testing.assert_close(c, want_c)
    torch.testing.assert_close(h, torch.nn.functional.hardsigmoid(o) * torch.relu(want_c))
    custom = ConvLSTMCell2d(1, 2, 3, activation=torch.sin)
    assert custom(x)[0].shape == (1, 2, 5, 5)


def test_extra_repr_shows_arguments():
    text = repr(ConvLSTM2d(1, [4, 8], 5, bidirectional=True, peephole="channel"))
    assert "1, [4, 8], kernel_size=(5, 5), num_layers=2, spatial_dims=2" in text
    assert "bidirectional=True" in text and "peephole='channel'" in text


def test_dropout_between_layers_only_in_training():
    layer = ConvLSTM2d(1, [4, 4], 3, dropout=0.5)
    x = torch.randn(2, 3, 1, 6, 6)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0], rtol=0, atol=0)
    layer.train()
    torch.manual_seed(0)
    first = layer(x)[0]
    torch.manual_seed(0)
    assert torch.equal(first, layer(x)[0])  # deterministic given a seed
    assert not torch.equal(first, layer.eval()(x)[0])


def test_recurrent_dropout_mask_is_fixed_across_time():
    layer = ConvLSTM2d(1, 3, 3, recurrent_dropout=0.5, dtype=torch.float64)
    x = torch.randn(2, 4, 1, 5, 5, dtype=torch.float64)
    torch.manual_seed(1)
    out, _ = layer.train()(x)
    torch.manual_seed(1)  # draw the mask the layer draws: one per sequence and channel/location
    mask = torch.nn.functional.dropout(torch.ones(2, 3, 5, 5, dtype=torch.float64), 0.5)
    cell, state, want = layer.cells[0], None, []
    for t in range(4):
        gates = cell.input_conv(x[:, t])
        if state is not None:
            gates = gates - cell.recurrent_conv(state[0]) + cell.recurrent_conv(state[0] * mask)
        state = cell.step(gates, state)
        want.append(state[0])
    torch.testing.assert_close(out, torch.stack(want, 1))
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0], rtol=0, atol=0)


def test_float64_and_bfloat16_autocast():
    layer = ConvLSTM2d(1, 4, 3)
    x = torch.randn(2, 3, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), layer(x)[0], atol=0.05, rtol=0.05)
    assert layer.double()(x.double())[0].dtype == torch.float64


def test_state_zeros_follow_input_dtype_and_device():
    layer = ConvLSTM2d(1, 2, 3, dtype=torch.float64)
    _, states = layer(torch.zeros(1, 1, 1, 4, 4, dtype=torch.float64))
    assert states[0][0].dtype == torch.float64


def test_torch_compile_matches_eager():
    layer = ConvLSTM2d(2, [4, 4], 3, peephole="channel")
    x = torch.randn(2, 3, 2, 6, 6)
    eager_out, eager_states = layer(x)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out, states = compiled(x)
    torch.testing.assert_close(out, eager_out)
    torch.testing.assert_close(states[1][1], eager_states[1][1])


def test_torch_export_matches_eager():
    layer = ConvLSTM2d(2, 4, 3, peephole="channel", bidirectional=True)
    x = torch.randn(2, 3, 2, 6, 6)
    lengths = torch.tensor([3, 2])
    program = torch.export.export(layer, (x,), {"lengths": lengths})
    out, states = program.module()(x, lengths=lengths)
    want, want_states = layer(x, lengths=lengths)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(states[1][0], want_states[1][0])


def test_tutorial_effective_step_is_indexing():
    """The seed code's ``step=5, effective_step=[2, 4]`` is ``steps=5`` plus indexing."""
    layer = ConvLSTM2d(3, [8, 4], 3)
    frame = torch.randn(1, 3, 16, 16)
    output, _ = layer(frame, steps=5)
    chosen = output[:, [2, 4]]
    assert chosen.shape == (1, 2, 4, 16, 16)
    torch.testing.assert_close(chosen[:, 1], output[:, 4])


ERRORS = [
    (lambda: ConvLSTMCell2d(0, 2, 3), ValueError, "in_channels must be greater than zero, got 0"),
    (lambda: ConvLSTMCell2d(1, -2, 3), ValueError, "hidden_channels must be greater than zero"),
    (
        lambda: ConvLSTMCell2d(1, 2, (3, 3, 3)),
        TypeError,
        "kernel_size must be an int or a sequence of 2",
    ),
    (lambda: ConvLSTMCell2d(1, 2, 0), ValueError, "kernel_size must be >= 1"),
    (lambda: ConvLSTMCell2d(1, 2, 3, padding="full"), ValueError, "padding must be one of"),
    (lambda: ConvLSTMCell2d(1, 2, 3, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: ConvLSTMCell2d(1, 2, 3, peephole="pixel"), ValueError, "peephole must be one of"),
    (lambda: ConvLSTMCell2d(1, 2, 3, peephole="spatial"), ValueError, "needs spatial_size="),
    (
        lambda: ConvLSTMCell2d(1, 2, 3, activation="swish"),
        ValueError,
        "activation must be a callable or one of",
    ),
    (
        lambda: ConvLSTMCell2d(1, 2, 3, recurrent_activation=3),
        ValueError,
        "recurrent_activation must be",
    ),
    (
        lambda: ConvLSTMCell2d(1, 3, 3, norm="group", norm_groups=2),
        ValueError,
        "norm_groups must divide",
    ),
    (lambda: ConvLSTMCell2d(1, 3, 3, norm="batch"), ValueError, "norm must be one of"),
    (lambda: ConvLSTMCell(1, 2, 3, spatial_dims=4), ValueError, "spatial_dims must be one of"),
    (
        lambda: ConvLSTM2d(1, [2, 3], 3, num_layers=3),
        ValueError,
        "num_layers must equal len(hidden_channels)",
    ),
    (lambda: ConvLSTM2d(1, [], 3), ValueError, "hidden_channels must not be an empty list"),
    (lambda: ConvLSTM2d(1, 2, 3, num_layers=0), ValueError, "num_layers must be greater than zero"),
    (
        lambda: ConvLSTM2d(1, 2, [3, 3], num_layers=3),
        ValueError,
        "kernel_size given as a list must have one entry per layer (3), got 2",
    ),
    (lambda: ConvLSTM2d(1, 2, 3, dropout=1.0), ValueError, "dropout must be in [0, 1), got 1.0"),
    (
        lambda: ConvLSTM2d(1, 2, 3, recurrent_dropout=-0.1),
        ValueError,
        "recurrent_dropout must be in [0, 1)",
    ),
]


@pytest.mark.parametrize(("make", "kind", "message"), ERRORS)
def test_constructor_errors(make, kind, message):
    with pytest.raises(kind, match=re.escape(message)):
        make()


def _forward_errors():
    layer = ConvLSTM2d(2, [3, 4], 3)
    spatial = ConvLSTM2d(2, 3, 3, peephole="spatial", spatial_size=(6, 6))
    x = torch.randn(2, 5, 2, 6, 6)
    good = [(torch.zeros(2, 3, 6, 6),) * 2, (torch.zeros(2, 4, 6, 6),) * 2]
    return [
        (
            lambda: layer(x[:, :, :, 0, 0]),
            ValueError,
            "input must have 5 dimensions (B, T, C, H, W), got 3",
        ),
        (lambda: layer(x[:, 0]), ValueError, "pass steps=N to feed it N times"),
        (lambda: layer(x, steps=3), ValueError, "input must have 4 dimensions (B, C, H, W), got 5"),
        (lambda: layer(x[:, 0], steps=0), ValueError, "steps must be greater than zero"),
        (
            lambda: layer(torch.randn(2, 5, 3, 6, 6)),
            ValueError,
            "input.size(2) must be equal to in_channels. Expected 2, got 3",
        ),
        (
            lambda: layer(x.long()),
            TypeError,
            "input must be a floating-point tensor, got dtype torch.int64",
        ),
        (lambda: layer(x.numpy()), TypeError, "input must be a torch.Tensor, got ndarray"),
        (
            lambda: layer(x.double()),
            TypeError,
            "input must have the parameters' dtype torch.float32, got torch.float64: convert "
            "the input (input.to(torch.float32)) or the module (.to(torch.float64))",
        ),
        (
            lambda: ConvLSTMCell2d(2, 3, 3)(x[:, 0].double()),
            TypeError,
            "x must have the parameters' dtype torch.float32, got torch.float64",
        ),
        (
            lambda: layer(x[:, :0]),
            ValueError,
            "input must hold at least one time step, got T=0 (shape (2, 0, 2, 6, 6), (B, T, ...))",
        ),
        (
            lambda: ConvLSTM2d(2, 3, 3, batch_first=False)(x[:, :0].transpose(0, 1)),
            ValueError,
            "got T=0 (shape (0, 2, 2, 6, 6), (T, B, ...))",
        ),
        (
            lambda: spatial(torch.randn(1, 2, 2, 7, 6)),
            ValueError,
            "spatial size must match spatial_size=(6, 6) given at construction, got (7, 6)",
        ),
        (
            lambda: layer(torch.randn(1, 2, 2, 6, 6), good),
            ValueError,
            "state[0] h must have shape (1, 3, 6, 6)",
        ),
        (
            lambda: layer(x, good[:1]),
            ValueError,
            "state must be a list of num_layers * directions = 2 (h, c) pairs, got 1",
        ),
        (lambda: layer(x, [good[0], (good[1][0],)]), TypeError, "state[1] must be a pair (h, c)"),
        (lambda: layer(x, lengths=torch.tensor([5, 6])), ValueError, "lengths must lie in [1, 5]"),
        (lambda: layer(x, lengths=torch.tensor([0, 2])), ValueError, "lengths must lie in [1, 5]"),
        (
            lambda: layer(x, lengths=torch.tensor([5])),
            ValueError,
            "lengths must be a 1-D tensor of 2 lengths",
        ),
        (
            lambda: layer(x, lengths=torch.tensor([5.0, 2.0])),
            TypeError,
            "lengths must be an integer tensor",
        ),
        (
            lambda: ConvLSTM2d(1, 2, 5, padding="valid")(torch.randn(1, 2, 1, 3, 3)),
            ValueError,
            "is too small for kernel_size=(5, 5)",
        ),
    ]


@pytest.mark.parametrize("index", range(len(_forward_errors())))
def test_forward_errors(index):
    make, kind, message = _forward_errors()[index]
    with pytest.raises(kind, match=re.escape(message)):
        make()


def test_deterministic_given_a_seed():
    def run():
        torch.manual_seed(123)
        layer = ConvLSTM2d(1, [4, 4], 3, dropout=0.2, recurrent_dropout=0.2)
        out, _ = layer(torch.randn(2, 3, 1, 6, 6))
        out.sum().backward()
        return out, layer.cells[0].weight_hh.grad

    (a, ga), (b, gb) = run(), run()
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_other_dtypes_only_where_autocast_casts_them():
    """Without autocast the layer refuses a dtype other than its parameters' (above); under
    autocast it takes what autocast casts (bfloat16 here), and still refuses float64, which
    autocast leaves alone."""
    layer = ConvLSTM2d(2, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(torch.randn(1, 2, 2, 5, 5, dtype=torch.bfloat16))
        assert out.dtype == torch.bfloat16
        with pytest.raises(TypeError, match=r"torch\.autocast casts float32 and half-precision"):
            layer(torch.randn(1, 2, 2, 5, 5, dtype=torch.float64))


def test_one_layer_with_dropout_warns_as_torch_lstm_does():
    with pytest.warns(UserWarning, match=r"dropout=0.3 and num_layers=1"):
        ConvLSTM2d(1, 2, 3, dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConvLSTM2d(1, [2, 2], 3, dropout=0.3)  # between two layers: no warning
        ConvLSTM2d(1, 2, 3)


def test_linear_activation_is_a_function_not_a_shared_module():
    """``"linear"`` once mapped to one ``nn.Identity()`` registered as a submodule of every
    cell that used it; now it is a plain function: no submodule, the same state_dict."""
    a = ConvLSTMCell2d(1, 2, 3, activation="linear", recurrent_activation="linear")
    b = ConvLSTMCell2d(1, 2, 3)
    assert list(a.children()) == [] and a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(3, 4)
    assert a.activation(x) is x
    assert "activation='linear'" in repr(a)
