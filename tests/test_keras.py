"""convlstm against Keras 3's ConvLSTM1D/2D/3D (torch backend): conversion and numerical equality."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from convlstm import ConvLSTM1d, ConvLSTM2d
from convlstm.cells import ACTIVATIONS
from convlstm.interop import KERAS_ACTIVATIONS, from_keras, to_keras

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")

LAYERS = {1: "ConvLSTM1D", 2: "ConvLSTM2D", 3: "ConvLSTM3D"}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster


def make_layer(rank, filters, kernel, in_channels, size, *, seed, dtype="float64", **options):
    """A built Keras ConvLSTM layer returning sequences and states, with random weights."""
    options = {"padding": "same", "return_sequences": True, "return_state": True, **options}
    layer = getattr(keras.layers, LAYERS[rank])(filters, kernel, dtype=dtype, **options)
    channels_last = options.get("data_format", "channels_last") == "channels_last"
    layer.build(
        (None, None, *size, in_channels) if channels_last else (None, None, in_channels, *size)
    )
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(dtype) for w in layer.get_weights()])
    return layer


def to_numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def run_keras(layers, x, initial=None):
    """Apply the stack; returns the output sequence and each layer's final (h, c), as numpy."""
    states = []
    for index, layer in enumerate(layers):
        init = None if initial is None else list(initial[index])
        x, h, c = layer(x, initial_state=init)
        states.append((to_numpy(h), to_numpy(c)))
    return to_numpy(x), states


def check_stack(layers, x, initial, channels_last, dtype):
    """Keras and from_keras(layers) agree on outputs and final states, from ``initial`` states."""
    expected, expected_states = run_keras(layers, x, initial)
    module = from_keras(layers)

    def torch_layout(a, dims):  # Keras channels_last array -> convlstm tensor
        t = torch.from_numpy(a)
        return t.movedim(-1, dims) if channels_last else t

    state = None if initial is None else [tuple(torch_layout(s, 1) for s in p) for p in initial]
    with torch.no_grad():
        output, states = module(torch_layout(x, 2), state)
    atol = TOLERANCE[dtype]
    back = (lambda t, dims: t.movedim(dims, -1)) if channels_last else (lambda t, dims: t)
    np.testing.assert_allclose(back(output, 2).numpy(), expected, atol=atol, rtol=0)
    assert len(states) == len(expected_states)
    for (h, c), (h_keras, c_keras) in zip(states, expected_states, strict=True):
        np.testing.assert_allclose(back(h, 1).numpy(), h_keras, atol=atol, rtol=0)
        np.testing.assert_allclose(back(c, 1).numpy(), c_keras, atol=atol, rtol=0)


def random_states(layers, input_shape, dtype, seed):
    """Random initial (h, c) per layer, in Keras' layout, following the stack's shapes."""
    rng = np.random.default_rng(seed)
    states, shape = [], input_shape
    for layer in layers:
        shape, state_shape, _ = layer.compute_output_shape(shape)
        states.append(tuple(rng.uniform(-1, 1, state_shape).astype(dtype) for _ in range(2)))
    return states


def case(rank, kernel, size, options=None, dtype="float64", initial=True):
    return pytest.param(rank, kernel, size, options or {}, dtype, initial)


SINGLE = {
    "1d-k3-same": case(1, 3, (9,)),
    "1d-k4-valid-stride2": case(1, 4, (11,), {"padding": "valid", "strides": 2}, initial=False),
    "1d-k4-valid-stride2-initial": case(1, 4, (11,), {"padding": "valid", "strides": 2}),
    "2d-k3-same-float32": case(2, 3, (8, 8), dtype="float32"),
    "2d-k2-same": case(2, 2, (7, 8)),
    "2d-k4-same-stride2": case(2, 4, (7, 8), {"strides": 2}, initial=False),
    "2d-k3-same-stride2-initial": case(2, 3, (7, 8), {"strides": 2}),
    "2d-k3-valid-stride2": case(2, 3, (8, 7), {"padding": "valid", "strides": 2}, initial=False),
    "2d-k3x2-valid": case(2, (3, 2), (8, 8), {"padding": "valid"}, initial=False),
    "2d-k3-same-dilation2": case(2, 3, (8, 8), {"dilation_rate": 2}),
    "2d-k2-same-dilation3": case(2, 2, (8, 8), {"dilation_rate": 3}),
    "2d-k3-valid-dilation2x1": case(
        2, 3, (8, 8), {"padding": "valid", "dilation_rate": (2, 1)}, initial=False
    ),
    "2d-no-bias": case(2, 3, (8, 8), {"use_bias": False}),
    "2d-relu-hard-sigmoid": case(
        2, 3, (8, 8), {"activation": "relu", "recurrent_activation": "hard_sigmoid"}
    ),
    "2d-channels-first": case(2, 2, (7, 8), {"data_format": "channels_first"}),
    "3d-k3-same": case(3, 3, (4, 6, 6)),
    "3d-k2-valid-stride": case(
        3, 2, (4, 6, 5), {"padding": "valid", "strides": (1, 2, 2)}, initial=False
    ),
    "3d-k2-valid-stride-initial": case(3, 2, (4, 6, 5), {"padding": "valid", "strides": (1, 2, 2)}),
}


def input_shape(size, channels, channels_last=True, batch=2, steps=4):
    return (batch, steps, *size, channels) if channels_last else (batch, steps, channels, *size)


@pytest.mark.parametrize(
    ("rank", "kernel", "size", "options", "dtype", "initial"), SINGLE.values(), ids=SINGLE.keys()
)
def test_single_layer_matches_keras(rank, kernel, size, options, dtype, initial):
    channels_last = options.get("data_format", "channels_last") == "channels_last"
    layer = make_layer(rank, 3, kernel, 2, size, seed=1, dtype=dtype, **options)
    shape = input_shape(size, 2, channels_last)
    x = np.random.default_rng(2).uniform(-1, 1, shape).astype(dtype)
    states = random_states([layer], shape, dtype, seed=3) if initial else None
    check_stack([layer], x, states, channels_last, dtype)


STACKS = {
    "1d-same-initial": pytest.param(1, (9,), {}, True),
    "2d-strided-dilated": pytest.param(2, (8, 7), {}, False),
    "2d-valid": pytest.param(2, (8, 8), {"padding": "valid"}, False),
    "2d-strided-initial": pytest.param(2, (8, 7), {}, True),
}


def make_stack(rank, size, options):
    """Three layers 2 -> 4 -> 3 -> 5 channels, kernels 3, 2, 3; "same" 2-d stacks stride the
    second layer and dilate the third, 1-d stacks dilate the third."""
    strided = rank == 2 and options.get("padding", "same") == "same"
    extra = [
        {},
        {"strides": 2} if strided else {},
        {"dilation_rate": 2} if strided or rank == 1 else {},
    ]
    layers, shape = [], input_shape(size, 2)
    for index, (filters, kernel) in enumerate([(4, 3), (3, 2), (5, 3)]):
        layer = make_layer(
            rank,
            filters,
            kernel,
            shape[-1],
            shape[2:-1],
            seed=10 + index,
            **options,
            **extra[index],
        )
        layers.append(layer)
        shape = layer.compute_output_shape(shape)[0]
    return layers


@pytest.mark.parametrize(("rank", "size", "options", "initial"), STACKS.values(), ids=STACKS.keys())
def test_stack_matches_keras(rank, size, options, initial):
    layers = make_stack(rank, size, options)
    shape = input_shape(size, 2)
    x = np.random.default_rng(4).uniform(-1, 1, shape)
    states = random_states(layers, shape, "float64", seed=5) if initial else None
    check_stack(layers, x, states, True, "float64")


def test_last_step_and_final_state_of_a_stack():
    """Keras without return_sequences on the last layer: its output is ``output[:, -1]`` and its
    return_state ``h, c`` are ``states[-1]``."""
    first = make_layer(2, 4, 3, 2, (6, 6), seed=20, return_state=False)
    last = make_layer(2, 3, 2, 4, (6, 6), seed=21, return_sequences=False)
    x = np.random.default_rng(6).uniform(-1, 1, (2, 5, 6, 6, 2))
    y, h, c = (to_numpy(t) for t in last(first(x)))
    with torch.no_grad():
        output, states = from_keras([first, last])(torch.from_numpy(x).movedim(-1, 2))
    np.testing.assert_allclose(output[:, -1].movedim(1, -1).numpy(), y, atol=1e-10, rtol=0)
    np.testing.assert_allclose(states[-1][0].movedim(1, -1).numpy(), h, atol=1e-10, rtol=0)
    np.testing.assert_allclose(states[-1][1].movedim(1, -1).numpy(), c, atol=1e-10, rtol=0)


# Keras 3.15 (torch backend), float64, ConvLSTM1D(2, 3, padding="same") with the kernel below,
# recurrent kernel Constant(-0.1), bias zeros with unit_forget_bias: h at the last of 3 steps.
GOLDEN = np.array(
    [
        [0.01547313241061507, 0.01676048015695409],
        [0.08133294993139326, 0.08136058022578628],
        [0.07262991323475913, 0.08030052717045587],
        [0.07438816520558837, 0.08998990866753798],
        [-0.03471750733569409, -0.0311589922521703],
    ]
)
GOLDEN_X = np.linspace(-1, 1, 30).reshape(1, 3, 5, 2)  # (B, T, W, C) channels_last


def test_golden_keras_output():
    layer = keras.layers.ConvLSTM1D(
        2,
        3,
        padding="same",
        dtype="float64",
        recurrent_initializer=keras.initializers.Constant(-0.1),
    )
    layer.build((None, None, 5, 2))
    kernel, recurrent, bias = layer.get_weights()
    layer.set_weights([np.linspace(-0.3, 0.3, kernel.size).reshape(kernel.shape), recurrent, bias])
    np.testing.assert_allclose(to_numpy(layer(GOLDEN_X))[0], GOLDEN, atol=1e-12, rtol=0)

    x = torch.from_numpy(GOLDEN_X).movedim(-1, 2)
    module = ConvLSTM1d(2, 2, 3, dtype=torch.float64)  # bias 0, forget gate 1
    with torch.no_grad():
        module.cells[0].weight_ih.copy_(
            torch.linspace(-0.3, 0.3, 48, dtype=torch.float64).reshape(3, 2, 8).permute(2, 1, 0)
        )
        module.cells[0].weight_hh.fill_(-0.1)
    for candidate in (module, from_keras(layer)):
        with torch.no_grad():
            output, _ = candidate(x)
        np.testing.assert_allclose(output[0, -1].T.numpy(), GOLDEN, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", KERAS_ACTIVATIONS)
def test_shared_activations_agree(name):
    x = torch.linspace(-5, 5, 201, dtype=torch.float64)
    expected = to_numpy(keras.activations.get(name)(x))
    np.testing.assert_allclose(ACTIVATIONS[name](x).numpy(), expected, atol=1e-12, rtol=0)


def test_options_mapping():
    first = make_layer(
        2,
        4,
        (3, 2),
        2,
        (6, 6),
        seed=30,
        dtype="float32",
        strides=(1, 2),
        recurrent_dropout=0.25,
        dropout=0.5,
        unit_forget_bias=False,
    )
    second = make_layer(
        2, 3, 1, 4, (6, 3), seed=31, dtype="float32", dilation_rate=(2, 1), recurrent_dropout=0.25
    )
    module = from_keras((first, second), batch_first=False)
    assert isinstance(module, ConvLSTM2d)
    assert module.hidden_channels == [4, 3]
    assert [cell.kernel_size for cell in module.cells] == [(3, 2), (1, 1)]
    assert [cell.stride for cell in module.cells] == [(1, 2), (1, 1)]
    assert [cell.dilation for cell in module.cells] == [(1, 1), (2, 1)]
    assert [cell.unit_forget_bias for cell in module.cells] == [False, True]
    assert module.recurrent_dropout == 0.25
    assert module.dropout == 0.0
    assert not module.batch_first
    assert module.cells[0].weight_ih.dtype == torch.float32
    x = np.random.default_rng(7).uniform(-1, 1, (2, 3, 6, 6, 2)).astype("float32")
    expected, _ = run_keras([first, second], x)
    with torch.no_grad():
        output, _ = module.eval()(torch.from_numpy(x).movedim(-1, 2).transpose(0, 1))
    np.testing.assert_allclose(
        output.transpose(0, 1).movedim(2, -1).numpy(), expected, atol=1e-5, rtol=0
    )


def test_activation_aliases():
    layer = built(keras.layers.ConvLSTM1D(2, 3, activation="swish", recurrent_activation=None))
    cell = from_keras(layer).cells[0]
    assert cell.activation is ACTIVATIONS["silu"]
    assert cell.recurrent_activation is ACTIVATIONS["linear"]


def built(layer, shape=(None, None, 6, 2)):
    layer.build(shape)
    return layer


ERRORS = {
    "not-convlstm": (lambda: built(keras.layers.Dense(3), (None, 2)), TypeError, "ConvLSTM1D"),
    "bidirectional": (
        lambda: keras.layers.Bidirectional(keras.layers.ConvLSTM1D(2, 3)),
        TypeError,
        "Bidirectional",
    ),
    "empty": (lambda: [], ValueError, "at least one"),
    "unbuilt": (lambda: keras.layers.ConvLSTM1D(2, 3), ValueError, "not built"),
    "go-backwards": (
        lambda: built(keras.layers.ConvLSTM1D(2, 3, go_backwards=True)),
        ValueError,
        "go_backwards",
    ),
    "stateful": (
        lambda: built(keras.layers.ConvLSTM1D(2, 3, stateful=True), (2, None, 6, 2)),
        ValueError,
        "stateful",
    ),
    "unknown-activation": (
        lambda: built(keras.layers.ConvLSTM1D(2, 3, activation="selu")),
        ValueError,
        "selu",
    ),
    "custom-activation": (
        lambda: built(keras.layers.ConvLSTM1D(2, 3, recurrent_activation=lambda x: x)),
        ValueError,
        "recurrent_activation",
    ),
    "channels": (
        lambda: [built(keras.layers.ConvLSTM1D(4, 3)), built(keras.layers.ConvLSTM1D(2, 3))],
        ValueError,
        "do not form a stack",
    ),
    "last-step-inside": (
        lambda: [
            built(keras.layers.ConvLSTM1D(2, 3)),
            built(keras.layers.ConvLSTM1D(2, 3), (None, None, 4, 2)),
        ],
        ValueError,
        "return_sequences",
    ),
    "rank": (
        lambda: [
            built(keras.layers.ConvLSTM1D(2, 3, return_sequences=True)),
            built(keras.layers.ConvLSTM2D(2, 3), (None, None, 4, 4, 2)),
        ],
        ValueError,
        "rank",
    ),
    "data-format": (
        lambda: [
            built(keras.layers.ConvLSTM1D(2, 3, return_sequences=True)),
            built(keras.layers.ConvLSTM1D(2, 3, data_format="channels_first"), (None, None, 2, 4)),
        ],
        ValueError,
        "data_format",
    ),
    "padding-differs": (
        lambda: [
            built(keras.layers.ConvLSTM1D(2, 3, padding="same", return_sequences=True)),
            built(keras.layers.ConvLSTM1D(2, 3)),
        ],
        ValueError,
        "shares padding",
    ),
    "activation-differs": (
        lambda: [
            built(keras.layers.ConvLSTM1D(2, 3, padding="same", return_sequences=True)),
            built(keras.layers.ConvLSTM1D(2, 3, padding="same", activation="relu")),
        ],
        ValueError,
        "shares activation",
    ),
}


@pytest.mark.parametrize(("make", "error", "match"), ERRORS.values(), ids=ERRORS.keys())
def test_from_keras_rejects(make, error, match):
    with pytest.raises(error, match=match):
        from_keras(make())


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_to_keras_matches_module(data_format):
    torch.manual_seed(0)
    module = ConvLSTM2d(
        2,
        [4, 3],
        [3, 2],
        stride=[1, 2],
        activation="relu",
        recurrent_activation="hard_sigmoid",
        dtype=torch.float64,
    )
    layers = to_keras(module, (7, 8), data_format=data_format)
    assert [layer.data_format for layer in layers] == [data_format] * 2
    x = torch.rand(2, 3, 2, 7, 8, dtype=torch.float64)
    keras_x = x.movedim(2, -1) if data_format == "channels_last" else x
    y = to_numpy(layers[1](layers[0](keras_x.numpy())))
    with torch.no_grad():
        output, _ = module(x)
    expected = output.movedim(2, -1) if data_format == "channels_last" else output
    np.testing.assert_allclose(expected.numpy(), y, atol=1e-10, rtol=0)
    back = from_keras(layers)
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)


def test_to_keras_last_layer_and_spatial_size():
    module = ConvLSTM1d(2, [3, 2], 3, bias=False, spatial_size=6)
    layers = to_keras(module, return_sequences=False)
    assert [layer.return_sequences for layer in layers] == [True, False]
    assert [layer.use_bias for layer in layers] == [False, False]
    assert layers[0].dtype == "float32"


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (ConvLSTM1d(2, 3, 3, bidirectional=True), "bidirectional"),
        (ConvLSTM1d(2, 3, 3, peephole="channel"), "peephole"),
        (ConvLSTM1d(2, 4, 3, norm="layer"), "norm"),
        (ConvLSTM1d(2, 3, 3, padding=1), "padding"),
        (ConvLSTM1d(2, 3, 3, activation=torch.sin), "activation"),
        (ConvLSTM1d(2, 3, 3), "spatial_size"),
    ],
    ids=["bidirectional", "peephole", "norm", "int-padding", "activation", "no-size"],
)
def test_to_keras_rejects(module, match):
    with pytest.raises(ValueError, match=match):
        to_keras(module)


def test_from_keras_without_a_backend_says_to_set_keras_backend(tmp_path):
    """Keras 3 defaults to TensorFlow: with it absent and no backend configured, ``import keras``
    fails deep inside Keras; from_keras and to_keras say what to set instead."""
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # as if TensorFlow were not installed\n"
        "from convlstm import ConvLSTM2d\n"
        "from convlstm.interop import from_keras, to_keras\n"
        "for call in (lambda: from_keras([]), lambda: to_keras(ConvLSTM2d(1, 2, 3), (4, 4))):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as error:\n"
        "        print(error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["HOME"] = str(tmp_path)  # no ~/.keras/keras.json naming a backend
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line, caller in zip(lines, ("from_keras", "to_keras"), strict=True):
        assert line.startswith(f"{caller}: Keras could not load its backend: tensorflow")
        assert "Set the environment variable KERAS_BACKEND=torch" in line
