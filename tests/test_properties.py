"""Property-based tests (hypothesis) over the layers' constructor and forward arguments and over
the options of ``convlstm train`` / ``evaluate`` / ``predict``.

Layers: every drawn combination either works, with the documented output shape and the values of
the independent float64 reference (``tests/reference.py``), or raises ``ValueError``/``TypeError``
with a message; one invalid argument injected into a valid combination raises one of those two,
naming the argument. Command line: any option value ends with status 0, 1 or 2, and a failure
prints one ``convlstm CMD: error: ...`` line (argparse's usage lines may precede it for parse
errors), never a traceback.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import reference
from convlstm import ConvLSTM
from convlstm import training as training_module
from convlstm.checkpoint import make_checkpoint, save_checkpoint
from convlstm.cli import main
from convlstm.config import Config, apply_overrides, config_to_dict
from convlstm.models import MODEL_PARAMETERS, EncoderForecaster
from reference import layer_forward
from test_reliability_support import TINY

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- layers


def out_size(size: int, kernel: int, stride: int, dilation: int, padding) -> int:
    """The documented state size of one spatial dimension (independent of the package)."""
    if padding == "same":
        return -(-size // stride)
    pad = 0 if padding == "valid" else padding
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def layer_cases(draw):
    dims = draw(st.integers(1, 3))
    num_layers = draw(st.integers(1, 2))
    as_list = draw(st.booleans())
    hidden = draw(st.lists(st.integers(1, 4), min_size=num_layers, max_size=num_layers))
    if not as_list:
        hidden = [hidden[0]] * num_layers
    per_dim = st.tuples(*[st.integers(1, 3)] * dims)
    kernel = draw(st.one_of(st.integers(1, 4), per_dim))
    norm = draw(st.sampled_from([None, "layer", "group"]))
    groups = 2 if norm == "group" and all(h % 2 == 0 for h in hidden) else 1
    options = dict(
        stride=draw(st.integers(1, 2)),
        dilation=draw(st.integers(1, 2)),
        padding=draw(st.sampled_from(["same", "valid", 0, 1])),
        bias=draw(st.booleans()),
        peephole=draw(st.sampled_from([None, "channel", "spatial"])),
        norm=norm,
        norm_groups=groups,
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        unit_forget_bias=draw(st.booleans()),
    )
    size = draw(st.tuples(*[st.integers(1, 6 if dims < 3 else 4)] * dims))
    if options["peephole"] == "spatial":
        options["spatial_size"] = size
    steps = draw(st.integers(1, 3))
    case = dict(
        dims=dims,
        in_channels=draw(st.integers(1, 3)),
        hidden=hidden if as_list else hidden[0],
        num_layers=None if as_list else num_layers,
        kernel=kernel,
        options=options,
        size=size,
        batch=draw(st.integers(1, 2)),
        steps=steps,
        repeated=draw(st.booleans()),  # one frame fed at every step (steps=N)
        lengths=draw(st.none() | st.lists(st.integers(1, steps), min_size=2, max_size=2)),
        carried=draw(st.booleans()),  # continue from the states of a first call
        seed=draw(st.integers(0, 2**16)),
    )
    case["lengths"] = case["lengths"] and case["lengths"][: case["batch"]]
    return case


def build(case) -> ConvLSTM:
    return ConvLSTM(
        case["in_channels"],
        case["hidden"],
        case["kernel"],
        case["num_layers"],
        spatial_dims=case["dims"],
        dtype=torch.float64,
        **case["options"],
    )


def expected_sizes(case) -> list[tuple[int, ...]]:
    """State size of every layer, from the documented formula."""
    kernel = case["kernel"]
    kernels = (kernel,) * case["dims"] if isinstance(kernel, int) else kernel
    o = case["options"]
    sizes, size = [], case["size"]
    for _ in range(case["num_layers"] or len(case["hidden"])):
        size = tuple(
            out_size(s, k, o["stride"], o["dilation"], o["padding"])
            for s, k in zip(size, kernels, strict=True)
        )
        sizes.append(size)
    return sizes


def _same_padding_shim(conv):
    """``reference.CONV`` entries that also take ``padding="same"`` with a stride (which torch's
    convolutions refuse), padding as documented: output ``ceil(S / stride)``, the extra pixel on
    the high side."""

    def call(x, weight, bias, stride, padding, dilation=1):
        dims = x.dim() - 2
        strides = (stride,) * dims if isinstance(stride, int) else tuple(stride)
        if padding != "same" or all(s == 1 for s in strides):
            return conv(x, weight, bias, stride, padding, dilation)
        dilations = (dilation,) * dims if isinstance(dilation, int) else tuple(dilation)
        pads = []
        for n, k, s, d in zip(x.shape[2:], weight.shape[2:], strides, dilations, strict=True):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        x = torch.nn.functional.pad(x, [p for pair in reversed(pads) for p in pair])
        return conv(x, weight, bias, stride, 0, dilation)

    return call


def reference_forward(layer, case, sequence, lengths, state):
    """``reference.layer_forward`` with an explicit zero state of the documented state size when
    there is none (the reference's own zeros take the input's size, wrong for strided or
    "valid" layers) and the "same"-with-stride shim."""
    if state is None:
        directions = 2 if case["options"]["bidirectional"] else 1
        hidden = case["hidden"] if isinstance(case["hidden"], list) else [case["hidden"]]
        hidden = hidden * (case["num_layers"] or 1) if len(hidden) == 1 else hidden
        state = [
            (torch.zeros(case["batch"], h, *size, dtype=torch.float64),) * 2
            for h, size in zip(hidden, expected_sizes(case), strict=True)
            for _ in range(directions)
        ]
    shimmed = {d: _same_padding_shim(conv) for d, conv in reference.CONV.items()}
    original = dict(reference.CONV)
    reference.CONV.update(shimmed)
    try:
        return layer_forward(layer, sequence, lengths, state)
    finally:
        reference.CONV.update(original)


def degenerate_norm(case) -> bool:
    """Gate normalisation over a single value per group (torch refuses it with a ValueError)."""
    norm = case["options"]["norm"]
    if norm is None:
        return False
    hidden = case["hidden"] if isinstance(case["hidden"], list) else [case["hidden"]]
    groups = 1 if norm == "layer" else case["options"]["norm_groups"]
    return any(
        h // groups * math.prod(size) == 1
        for h, size in zip(hidden * 2, expected_sizes(case), strict=False)
    )


def inputs(case, generator):
    shape = (case["batch"], case["in_channels"], *case["size"])
    if case["repeated"]:
        frame = torch.randn(shape, generator=generator, dtype=torch.float64)
        return frame, frame[:, None].expand(-1, case["steps"], *[-1] * (len(shape) - 1))
    seq = torch.randn(
        (shape[0], case["steps"], *shape[1:]), generator=generator, dtype=torch.float64
    )
    return seq, seq


@SETTINGS
@given(layer_cases())
def test_layers_work_and_match_the_reference_or_refuse_clearly(case) -> None:
    sizes = expected_sizes(case)
    too_small = any(s < 1 for size in sizes for s in size)
    # known defects: test_a_spatial_peephole_too_big_for_its_size_is_refused_clearly and
    # test_an_input_too_small_for_a_deeper_layer_is_refused_clearly
    assume(not (too_small and case["options"]["peephole"] == "spatial"))
    assume(not (too_small and all(s >= 1 for s in sizes[0])))
    try:
        layer = build(case)
    except (ValueError, TypeError) as error:
        # only the documented refusals of valid-typed arguments: a state too small for a
        # spatial peephole (its shape is computed at construction)
        assert str(error), "an error without a message"
        assert too_small and case["options"]["peephole"] == "spatial", error
        return
    layer.eval()
    generator = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.4)
    given_input, sequence = inputs(case, generator)
    lengths = None if not case["lengths"] else torch.tensor(case["lengths"])
    call_input = given_input
    if not case["repeated"] and not layer.batch_first:
        call_input = given_input.transpose(0, 1)
    kwargs = {"steps": case["steps"]} if case["repeated"] else {}
    state = None
    try:
        if case["carried"]:  # a first call, whose states the second continues from
            _, state = layer(call_input, **kwargs)
        output, states = layer(call_input, state, lengths=lengths, **kwargs)
    except (ValueError, TypeError) as error:
        assert str(error)
        if degenerate_norm(case) and not too_small:
            # torch's message, "Expected more than 1 value per channel when training" (reported)
            assert "Expected more than 1 value per channel" in str(error), error
            return
        assert too_small, f"unexpected refusal: {error}"
        assert "too small" in str(error), error
        return
    assert not too_small, f"accepted a state size < 1: {sizes}"
    if not layer.batch_first:
        output = output.transpose(0, 1)
    directions = 2 if case["options"]["bidirectional"] else 1
    hidden = case["hidden"] if isinstance(case["hidden"], list) else [case["hidden"]]
    assert output.shape == (
        case["batch"],
        case["steps"],
        directions * hidden[-1],
        *sizes[-1],
    )
    assert len(states) == len(sizes) * directions
    want, want_states = reference_forward(layer, case, sequence, lengths, state)
    torch.testing.assert_close(output, want, rtol=1e-9, atol=1e-11)
    for (h, c), (wh, wc) in zip(states, want_states, strict=True):
        torch.testing.assert_close(h, wh, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(c, wc, rtol=1e-9, atol=1e-11)


def test_a_spatial_peephole_too_big_for_its_size_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="spatial_size"):
        ConvLSTM(1, 1, 2, spatial_dims=1, padding="valid", dilation=2, peephole="spatial",
                 spatial_size=1)  # fmt: skip


def test_an_input_too_small_for_a_deeper_layer_is_refused_clearly() -> None:
    layer = ConvLSTM(1, [1, 1], 3, spatial_dims=2, padding="valid")
    with pytest.raises(ValueError, match="too small"):
        layer(torch.randn(1, 2, 1, 3, 3))  # layer 1 gives 1x1 states, too small for layer 2


# One invalid value per argument: (argument named in the message, where, value)
INVALID = [
    ("in_channels", "init", 0),
    ("in_channels", "init", 1.5),
    ("in_channels", "init", True),
    ("hidden_channels", "init", 0),
    ("hidden_channels", "init", []),
    ("hidden_channels", "init", [2, -1]),
    ("hidden_channels", "init", "4"),
    ("kernel_size", "init", 0),
    ("kernel_size", "init", "3"),
    ("kernel_size", "init", (3, 3, 3, 3)),
    ("kernel_size", "init", [3, 3, 3]),
    ("stride", "init", 0),
    ("stride", "init", -2),
    ("dilation", "init", 0),
    ("padding", "init", "full"),
    ("padding", "init", -1),
    ("peephole", "init", "diagonal"),
    ("spatial_size", "init", "spatial-without-size"),
    ("norm", "init", "batch"),
    ("norm_groups", "init", 3),
    ("norm_groups", "init", 0),
    ("dropout", "init", 1.0),
    ("dropout", "init", -0.1),
    ("dropout", "init", "0.1"),
    ("recurrent_dropout", "init", 2.0),
    ("activation", "init", "swish"),
    ("recurrent_activation", "init", 3),
    ("num_layers", "init", 0),
    ("num_layers", "init", "mismatch"),
    ("spatial_dims", "init", 4),
    ("input", "forward", "channels"),
    ("input", "forward", "rank"),
    ("input", "forward", "integer"),
    ("input", "forward", "numpy"),
    ("input", "forward", "single-frame"),
    ("steps", "forward", 0),
    ("steps", "forward", 2.5),
    ("lengths", "forward", "zero"),
    ("lengths", "forward", "too-long"),
    ("lengths", "forward", "float"),
    ("lengths", "forward", "wrong-batch"),
    ("lengths", "forward", "list"),
    ("state", "forward", "count"),
    ("state", "forward", "shape"),
    ("state", "forward", "batch"),
    ("state", "forward", "not-a-pair"),
    ("spatial_size", "forward", "other-size"),
]


def _invalid_layer(dims: int, name: str, value):
    options: dict = {"spatial_dims": dims}
    args = [2, [4, 4], 3]
    if name in ("in_channels", "hidden_channels", "kernel_size"):
        args[["in_channels", "hidden_channels", "kernel_size"].index(name)] = value
    elif name == "spatial_size":
        options["peephole"] = "spatial"
    elif name == "norm_groups":
        options.update(norm="group", norm_groups=value)
    elif name == "num_layers":
        options["num_layers"] = 3 if value == "mismatch" else value
        if value != "mismatch":
            args[1] = 4
    else:
        options[name] = value
    return ConvLSTM(*args, **options)


@SETTINGS
@given(st.sampled_from(INVALID), st.integers(1, 3), st.integers(0, 2**16))
def test_one_invalid_argument_is_refused_naming_it(invalid, dims, seed) -> None:
    name, where, value = invalid
    if name == "kernel_size" and value == (3, 3, 3, 3):
        value = (3,) * (dims + 1)
    size = (5,) * dims
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 2, *size, generator=generator)
    with pytest.raises((ValueError, TypeError)) as error:
        if where == "init":
            _invalid_layer(dims, name, value)
        else:
            layer = ConvLSTM(2, [4, 4], 3, spatial_dims=dims, spatial_size=size)
            kwargs: dict = {}
            state = None
            if name == "input":
                x = {
                    "channels": x[:, :, :1],
                    "rank": x[..., 0] if dims > 1 else x[None],
                    "integer": x.long(),
                    "numpy": x.numpy(),
                    "single-frame": x[:, 0],
                }[value]
            elif name == "steps":
                x, kwargs = x[:, 0], {"steps": value}
            elif name == "lengths":
                kwargs["lengths"] = {
                    "zero": torch.tensor([0, 3]),
                    "too-long": torch.tensor([4, 3]),
                    "float": torch.tensor([1.0, 3.0]),
                    "wrong-batch": torch.tensor([3]),
                    "list": [3, 3],
                }[value]
            elif name == "state":
                _, good = layer(x)
                state = {
                    "count": good[:1],
                    "shape": [good[0], (good[1][0][..., :-1], good[1][1][..., :-1])],
                    "batch": [(h[:1], c[:1]) for h, c in good],
                    "not-a-pair": [good[0][0], good[1]],
                }[value]
            elif name == "spatial_size":
                x = torch.randn(2, 3, 2, *(6,) * dims)
            layer(x, state, **kwargs)
    message = str(error.value)
    keyword = {"input": ("input", "in_channels")}.get(name, (name,))
    assert any(k in message for k in keyword), (name, value, message)


# ----------------------------------------------------------------------------- command line


class Reached(BaseException):
    """Training would start: the configuration was accepted."""


FIELDS = {
    "model": ["name", *MODEL_PARAMETERS],
    "data": ["name", "input_len", "horizon", "train_samples", "val_samples", "val_seed",
             "num_workers", "options", "options.size", "options.num_digits", "options.digits",
             "options.speed_range", "train_options.seed", "val_options.num_samples"],
    "optim": ["lr", "betas", "weight_decay", "batch_size", "epochs", "max_steps", "schedule",
              "warmup_steps", "min_lr_ratio", "grad_clip", "loss", "teacher_forcing",
              "teacher_forcing_steps", "input_loss_weight", "nope"],
    "run": ["seed", "device", "precision", "compile", "channels_last", "max_minutes",
            "patience", "nonfinite", "max_skips", "progress", "dist_timeout_s", "eval_samples",
            "eval_batch_size"],
}  # fmt: skip
KEYS = [f"{section}.{key}" for section, keys in FIELDS.items() for key in keys]
TEXT_VALUES = [
    "none", "null", "true", "false", "[]", "[1,", "{a: 1}", "1e999", "-1e999", "nan", "-0",
    "", " ", "0x10", "[0]", "[-1, 2]", "[2, 2.5]", "cuda:x", "cuda:0", "bf16", "mse+l1",
    "skip", "layer", "'; rm -rf /'", "ü", "\\x00", "[[[[[[[[[[]]]]]]]]]]", "*" * 300,
]  # fmt: skip


def override_values():
    small = st.integers(-3, 8).map(str)
    big = st.integers(2**32, 10**30).map(lambda v: ("big", str(v)))
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr)
    return st.one_of(small, floats, st.sampled_from(TEXT_VALUES), st.text(max_size=6), big)


@pytest.fixture
def no_training(monkeypatch):
    def run(self, signals):
        raise Reached

    monkeypatch.setattr(training_module.loop.Trainer, "run", run)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.sampled_from(KEYS), override_values()), min_size=1, max_size=2))
def test_train_options_fail_cleanly(tmp_path, capsys, no_training, overrides) -> None:
    items = []
    for key, value in overrides:
        if isinstance(value, tuple):
            value = value[1]
        if key.startswith("model.") and value.lstrip("-").isdecimal() and abs(int(value)) > 8:
            return  # a large model is valid and would be built (see the report)
        items.append(f"{key}={value}")
    out = tmp_path / f"run-{abs(hash(tuple(items)))}"
    capsys.readouterr()
    try:
        code = main(["train", "--out", str(out), *TINY, *items])
    except Reached:
        return  # accepted: training would start
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert code in (1, 2), (items, code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlstm train: error: "), (items, err)
    assert not out.exists() or not any(out.iterdir())  # nothing written for a refused run


@pytest.mark.parametrize(
    ("key", "value"),
    [("data.train_samples", 10**23), ("data.val_samples", 2**63), ("run.seed", 2**40)],
)
def test_huge_counts_and_seeds_are_usage_errors(tmp_path, capsys, no_training, key, value):
    code = main(["train", "--out", str(tmp_path / "run"), *TINY, f"{key}={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"convlstm train: error: {key} must be in [0, "), err


@pytest.mark.parametrize("item", ["model.name=%", "optim.schedule='", "data.options.digits=[1,"])
def test_an_override_that_is_not_yaml_is_a_usage_error(tmp_path, capsys, no_training, item):
    # (config._parse_text used to let yaml.YAMLError escape: a traceback from the command line)
    code = main(["train", "--out", str(tmp_path / "run"), *TINY, item])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert item.split("=")[0].split(".")[-1] in err, err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    config = config_to_dict(apply_overrides(Config(), ["data.input_len=2", "data.horizon=2"]))
    checkpoint = save_checkpoint(
        folder / "model.pt", make_checkpoint(model, "moving_mnist", config)
    )
    frames = folder / "frames.npy"
    np.save(frames, np.random.default_rng(0).random((3, 2, 16, 16), dtype=np.float32))
    taken = folder / "taken"
    taken.write_text("x")
    return {"checkpoint": checkpoint, "frames": frames, "taken": taken, "folder": folder}


NUMBERS = ["-1", "0", "1", "2", "x", "", "1.5", "1e3", "nan", "inf", "-inf", " 2"]
EVALUATE_OPTIONS = {
    "--batch-size": NUMBERS,
    "--num-samples": NUMBERS,
    "--horizon": NUMBERS,
    "--device": ["cpu", "cuda", "cuda:7", "tpu", "", "meta", "cpu:0", "mps"],
    "--thresholds": ["0.5", "0.1,0.5", "a", "nan", "", ",", "1,,2", "inf", "-1"],
    "--layout": ["samples", "record", "moving_mnist", "xyz", ""],
    "--baselines": ["persistence", "zeros", "persistence,zeros", "nope", "", ","],
    "--gifs": ["0", "1", "x", "-1"],
    "--data-range": ["1", "0", "-1", "nan", "inf", "x", "1e-300"],
    "--data": ["moving_mnist", "radar", "nope", "FRAMES", "TAKEN", "CHECKPOINT", ""],
    "--checkpoint": ["CHECKPOINT", "FRAMES", "TAKEN", "missing.pt", ""],
}
PREDICT_OPTIONS = {
    "--batch-size": NUMBERS,
    "--horizon": NUMBERS,
    "--device": ["cpu", "cuda:7", "tpu", "", "meta"],
    "--layout": ["NTHW", "TCHW", "THW", "NTCHW", "xyz", ""],
    "--input": ["FRAMES", "CHECKPOINT", "TAKEN", "missing.npy", "", "FOLDER"],
    "--checkpoint": ["CHECKPOINT", "FRAMES", "missing.pt"],
    "--png": ["NEW", "TAKEN"],
    "--gif": ["NEW", "TAKEN"],
}
counter = itertools.count()


def _resolve(value: str, files: dict[str, Path], suffix: str) -> str:
    named = {"FRAMES": "frames", "TAKEN": "taken", "CHECKPOINT": "checkpoint", "FOLDER": "folder"}
    if value in named:
        return str(files[named[value]])
    if value == "NEW":
        return str(files["folder"] / f"new-{next(counter)}{suffix}")
    return value


def _check_cli(command: str, argv: list[str], capsys) -> int:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse: usage lines, then "convlstm CMD: error: ..."
        code = stop.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.splitlines()[-1].startswith(f"convlstm {command}: error: ")
        assert "Traceback" not in err
        return code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert code in (0, 1, 2), (argv, code, err)
    if code:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"convlstm {command}: error: "), (
            argv,
            err,
        )
    return code


def cli_arguments(options: dict[str, list[str]]):
    return st.dictionaries(
        st.sampled_from(sorted(options)), st.none(), min_size=1, max_size=3
    ).flatmap(
        lambda chosen: st.fixed_dictionaries({k: st.sampled_from(options[k]) for k in chosen})
    )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cli_arguments(EVALUATE_OPTIONS))
def test_evaluate_options_fail_cleanly(files, capsys, chosen) -> None:
    args = {"--checkpoint": "CHECKPOINT", "--data": "moving_mnist", "--num-samples": "2",
            "--gifs": "0", "--device": "cpu", **chosen}  # fmt: skip
    if args["--data"] == "FRAMES" and "--layout" not in chosen:
        args["--layout"] = "samples"
    out = files["folder"] / f"eval-{next(counter)}"
    argv = ["evaluate", "--out", str(out)]
    for key, value in args.items():
        argv += [key, _resolve(value, files, "")]
    code = _check_cli("evaluate", argv, capsys)
    if code:
        assert not out.exists()  # nothing half-written
    else:
        assert (out / "metrics.json").is_file()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cli_arguments(PREDICT_OPTIONS))
def test_predict_options_fail_cleanly(files, capsys, chosen) -> None:
    args = {"--checkpoint": "CHECKPOINT", "--input": "FRAMES", "--device": "cpu", **chosen}
    out = files["folder"] / f"forecast-{next(counter)}.npy"
    argv = ["predict", "--out", str(out)]
    for key, value in args.items():
        argv += [key, _resolve(value, files, ".gif" if key == "--gif" else "")]
    code = _check_cli("predict", argv, capsys)
    if code:
        assert not out.exists()
    else:
        forecast = np.load(out)
        assert forecast.dtype == np.float32 and np.isfinite(forecast).all()
        assert math.prod(forecast.shape) > 0
