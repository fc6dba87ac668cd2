"""Every fast path against the plain path (forward values and gradients) on random inputs.

The plain path is the core under :func:`convlstm.fast.plain`: autograd gate expressions, the
standard memory format, one batched input convolution, one autograd node per operation.
"""

from __future__ import annotations

import copy
import pickle
import platform
import subprocess
import sys
import time
import types

import pytest
import torch

from convlstm import ConvLSTM, ConvLSTM2d, ConvLSTMCell, _gates, _layout, _plan, _recurrence, fast
from convlstm._gates import fused_gates
from convlstm._recurrence import Run, recurrence
from convlstm.bench.measure import memory_mb

F64 = torch.float64
SIZES = {1: (7,), 2: (6, 5), 3: (3, 4, 5)}


def _plain_gates(pre, c, w_ci, w_cf, w_co):
    """The cell's plain expressions (ConvLSTMCell._gates without norm)."""
    i, f, g, o = pre.chunk(4, 1)
    if c is not None and w_ci is not None:
        i, f = i + w_ci * c, f + w_cf * c
    i, g = torch.sigmoid(i), torch.tanh(g)
    c_new = i * g if c is None else torch.sigmoid(f) * c + i * g
    if w_co is not None:
        o = o + w_co * c_new
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def _peepholes(kind, channels, size, dtype=F64):
    if kind is None:
        return (None, None, None)
    shape = (channels, 1, 1) if kind == "channel" else (channels, *size)
    return tuple(torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))


@pytest.mark.parametrize("peephole", [None, "channel", "spatial"])
@pytest.mark.parametrize("with_c", [True, False])
def test_fused_gates_gradcheck_and_plain_values(peephole, with_c):
    torch.manual_seed(0)
    pre = torch.randn(2, 12, 4, 5, dtype=F64, requires_grad=True)
    c = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True) if with_c else None
    inputs = (pre, c, *_peepholes(peephole, 3, (4, 5)))

    def fused(pre, *rest):
        return fused_gates(pre * 1, *rest, inplace=True)  # a buffer the function may own

    assert torch.autograd.gradcheck(fused, inputs)
    for got, want in zip(fused(*inputs), _plain_gates(*inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    with torch.no_grad():  # no autograd node, same values
        for got, want in zip(fused(*inputs), _plain_gates(*inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_fused_gates_only_overwrite_when_asked():
    pre = torch.randn(1, 8, 3, 3)
    kept = pre.clone()
    fused_gates(pre, None)
    assert torch.equal(pre, kept)
    fused_gates(pre, None, inplace=True)
    assert not torch.equal(pre, kept)


@pytest.mark.parametrize(
    "options",
    [
        {"chunks": 1},
        {"reverse": True, "state": True, "peephole": "channel"},
        {"mask": True, "state": True, "peephole": "spatial", "stride": 2},
        {"mask": True, "reverse": True, "steps": 1, "state": True},
        {"recompute": True, "chunks": 1, "peephole": "spatial"},
        {"recompute": True, "steps": 5, "state": True, "peephole": "channel"},
        {"recompute": True, "steps": 5, "reverse": True, "mask": True, "state": True},
        {"norm": 4, "state": True, "peephole": "channel"},
        {"norm": 8, "reverse": True, "mask": True, "chunks": 1, "peephole": "spatial"},
    ],
)
def test_whole_layer_node_gradcheck(options, monkeypatch):
    """The layer-as-one-node (:mod:`convlstm._recurrence`) by finite differences, with gradient
    chunks of one step and of several, saving the gate activations or recomputing them, with
    and without the gates' group norm (``norm``: its groups; the bias is its shift)."""
    monkeypatch.setattr(_recurrence, "CHUNKS", options.get("chunks", 2))
    torch.manual_seed(1)
    steps, batch, cin, channels, stride = options.get("steps", 3), 2, 2, 2, options.get("stride", 1)
    size = (3 * stride, 4 * stride)
    state_size = (3, 4)
    frames = torch.randn(steps * batch, cin, *size, dtype=F64, requires_grad=True)
    w_ih = (0.5 * torch.randn(4 * channels, cin, 3, 3, dtype=F64)).requires_grad_()
    bias = torch.randn(4 * channels, dtype=F64, requires_grad=True)
    w_hh = (0.5 * torch.randn(4 * channels, channels, 3, 3, dtype=F64)).requires_grad_()
    peepholes = _peepholes(options.get("peephole"), channels, state_size)
    state = (None, None)
    if options.get("state"):
        shape = (batch, channels, *state_size)
        state = tuple(torch.randn(shape, dtype=F64, requires_grad=True) for _ in "hc")
    mask = None
    if options.get("mask"):
        mask = (torch.rand(batch, channels, *state_size) > 0.3).to(F64)
    cell = ConvLSTMCell(cin, channels, 3, spatial_dims=2, stride=stride, padding=1)
    geometry = cell.geometry(size)
    assert geometry.input_padding == geometry.hh_padding == (1, 1)
    assert geometry.stride == (stride, stride) and geometry.output_size == state_size
    groups = options.get("norm", 0)
    reverse, recompute = options.get("reverse", False), options.get("recompute", False)
    run = Run(geometry, steps, reverse, recompute, norm_groups=groups)
    w_norm = (1 + 0.3 * torch.randn(4 * channels, dtype=F64)).requires_grad_() if groups else None

    def fn(frames, w_ih, bias, w_hh, w_ci, w_cf, w_co, w_norm, h0, c0):
        st = None if h0 is None else (h0, c0)
        weights = (w_ih, bias, w_hh, w_ci, w_cf, w_co, w_norm)
        return recurrence(frames, st, weights, mask, run)

    inputs = (frames, w_ih, bias, w_hh, *peepholes, w_norm, *state)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.4)


def _outputs_and_grads(layer, x, state=None, **kwargs):
    """Output, final states and the gradients of a loss using all of them."""
    output, states = layer(x, state, **kwargs)
    loss = output.square().sum() + sum(h.sum() + c.square().sum() for h, c in states)
    leaves = [x, *layer.parameters(), *(t for pair in state or () for t in pair)]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [output, *(t for pair in states for t in pair)], grads


def _assert_same(got, want, rtol=1e-9, atol=1e-10):
    (values, grads), (ref_values, ref_grads) = got, want
    for a, b in zip(values, ref_values, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=rtol * 10, atol=atol * 10)


FAST_MODES = {
    "default": {},
    "channels_last": {"channels_last": True},
    "joint_conv": {"input_conv": "joint"},
    "batched_conv": {"input_conv": "batched"},
    "per_step_nodes": {"fused_loop": False},
    "loop_without_fused_gates": {"fused_gates": False},
}
LAYERS = {
    "2d_plain": dict(dims=2),
    "1d_peephole_state": dict(dims=1, peephole="channel", state=True),
    "3d_spatial": dict(dims=3, peephole="spatial"),
    "2d_bidirectional_state": dict(dims=2, bidirectional=True, state=True, peephole="spatial"),
    "2d_recurrent_dropout": dict(dims=2, recurrent_dropout=0.3, state=True),
    "2d_lengths_bidirectional": dict(dims=2, bidirectional=True, lengths=True),
    "2d_repeated_frame": dict(dims=2, steps_mode=True, state=True),
    "2d_even_kernel": dict(dims=2, kernel=2),
    "2d_stride": dict(dims=2, stride=2),
    "2d_norm": dict(dims=2, norm="layer"),
    "2d_checkpointed": dict(dims=2, checkpoint_steps=True, state=True, peephole="channel"),
    "2d_checkpointed_repeated": dict(dims=2, checkpoint_steps=True, steps_mode=True),
    "2d_checkpointed_bidirectional_dropout": dict(
        dims=2,
        checkpoint_steps=True,
        bidirectional=True,
        recurrent_dropout=0.3,
        state=True,
        peephole="spatial",
    ),
    "3d_checkpointed_norm": dict(dims=3, checkpoint_steps=True, norm="layer"),
}


def _case(spec, in_channels):
    spec = dict(spec)
    dims, kernel = spec.pop("dims"), spec.pop("kernel", 3)
    size = SIZES[dims]
    with_state, lengths = spec.pop("state", False), spec.pop("lengths", False)
    steps_mode = spec.pop("steps_mode", False)
    layer = ConvLSTM(
        in_channels, [4, 3], kernel, spatial_dims=dims, spatial_size=size, dtype=F64, **spec
    )
    _randomise(layer)
    frames = (2,) if steps_mode else (2, 4)
    x = torch.randn(*frames, in_channels, *size, dtype=F64, requires_grad=True)
    kwargs = {"steps": 4} if steps_mode else {}
    if lengths:
        kwargs["lengths"] = torch.tensor([4, 2])
    state = None
    if with_state:
        sizes = [size, layer.cells[0].output_size(size)]
        directions = 2 if layer.bidirectional else 1
        state = [
            tuple(torch.randn(2, c, *s, dtype=F64, requires_grad=True) for _ in "hc")
            for c, s in zip([4, 3], sizes, strict=True)
            for _ in range(directions)
        ]
    return layer, x, state, kwargs


@pytest.mark.parametrize("mode", sorted(FAST_MODES))
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_fast_paths_equal_plain(case, mode):
    # 1: the joint convolution's domain on CPU, and channels-last strides forced on one channel;
    # 5: the whole-layer node's
    for in_channels in (1, 5) if mode in ("default", "channels_last") else (5,):
        layer, x, state, kwargs = _case(LAYERS[case], in_channels)
        checkpointed, layer.checkpoint_steps = layer.checkpoint_steps, False
        torch.manual_seed(2)  # the recurrent-dropout mask
        with fast.plain():
            want = _outputs_and_grads(layer, x, state, **kwargs)
        layer.checkpoint_steps = checkpointed
        torch.manual_seed(2)
        with fast.settings(**FAST_MODES[mode]):
            got = _outputs_and_grads(layer, x, state, **kwargs)
        _assert_same(got, want)


def test_one_channel_frames_get_channels_last_strides():
    """A one-channel tensor is both layouts; convolutions follow its strides, so the plan gives it
    channels-last ones (a view) and the convolution's output comes out channels-last."""
    x = torch.randn(3, 1, 5, 6, requires_grad=True)
    y = _layout.to_channels_last(x)
    assert y.stride(1) == 1 and y.data_ptr() == x.data_ptr() and torch.equal(y, x)
    out = torch.nn.functional.conv2d(y, torch.randn(8, 1, 3, 3), padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    z = torch.randn(3, 4, 5, 6)
    assert _layout.to_channels_last(z).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gate_tanh_in_place_on_a_channel_slice(channels_last):
    """The g gate's tanh runs in place on a channel slice of the activations; in channels-last
    that slice is strided (and goes through a dense copy), with the same values either way."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    act = torch.randn(3, 4 * 5, 6, 7).contiguous(memory_format=fmt)
    want = act.clone()
    want[:, 10:15] = _gates.tanh(want[:, 10:15].contiguous())
    _gates._tanh_(act[:, 10:15])
    assert torch.equal(act, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gate_tanh_against_float64(dtype):
    """The gates' tanh (2σ(2x) − 1 in float32 on CPU) is within 2.5e-7 of the float64 tanh and
    saturates exactly; other dtypes take torch.tanh itself; ``out=`` may alias the input."""
    x = torch.cat([torch.linspace(-12, 12, _gates.FAST_TANH_MIN), torch.tensor([0.0, 1e-30])])
    x = torch.cat([x, torch.tensor([-50.0, 50.0])])
    x = torch.cat([x, torch.tensor([float("inf"), -float("inf")])]).to(dtype)
    got = _gates.tanh(x)
    if dtype == torch.float32:
        error = (got.double() - torch.tanh(x.double())).abs()
        assert error.max().item() < 2.5e-7
        assert got[-4:].tolist() == [-1.0, 1.0, 1.0, -1.0]  # at -50, 50, inf, -inf: exactly ±1
    else:
        assert torch.equal(got, torch.tanh(x))
    y = x.clone()
    assert _gates.tanh(y, out=y) is y and torch.equal(y, got)
    assert torch.isnan(_gates.tanh(torch.tensor([float("nan")], dtype=dtype))).all()


def test_cell_fast_path_equals_plain():
    cell = ConvLSTMCell(3, 4, 3, spatial_dims=2, peephole="spatial", spatial_size=(5, 6), dtype=F64)
    _randomise(cell)
    x = torch.randn(2, 3, 5, 6, dtype=F64, requires_grad=True)
    state = tuple(torch.randn(2, 4, 5, 6, dtype=F64, requires_grad=True) for _ in "hc")
    results = []
    for context in (fast.plain, fast.settings):
        with context():
            h, c = cell(x, state)
            h2, c2 = cell(x, (h, c))
            loss = h2.square().sum() + c2.sum()
            results.append(([h2, c2], torch.autograd.grad(loss, [x, *state, *cell.parameters()])))
    _assert_same(results[1], results[0])


def test_float32_and_bf16_autocast_fast_paths():
    layer = ConvLSTM2d(2, [8, 8], 3, peephole="channel")
    x = torch.randn(2, 5, 2, 12, 12)
    with fast.plain():
        want = _outputs_and_grads(layer, x.clone().requires_grad_())
    got = _outputs_and_grads(layer, x.clone().requires_grad_())
    _assert_same(got, want, rtol=1e-4, atol=1e-5)
    with fast.settings(channels_last=True):
        got = _outputs_and_grads(layer, x.clone().requires_grad_())
    _assert_same(got, want, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _outputs_and_grads(layer, x.clone().requires_grad_())
    _assert_same(got, want, rtol=0.1, atol=0.1)
    plain_layer = ConvLSTM2d(2, [8, 8], 3)  # no fp32 peepholes: the whole step runs in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert plain_layer(x)[0].dtype == torch.bfloat16


def test_fused_loop_keeps_less_memory_and_checkpointing_even_less():
    x = torch.randn(4, 8, 4, 16, 16)
    output_mb = x[:, :, :1].numel() * 16 * 4 / 2**20  # one layer's h at every step
    memory = {}
    for name, options, fast_options in [
        ("plain", {}, None),
        ("fused", {}, {}),
        ("checkpointed", {"checkpoint_steps": True}, {}),
        ("checkpointed_per_step", {"checkpoint_steps": True}, {"fused_loop": False}),
    ]:
        torch.manual_seed(0)
        layer = ConvLSTM2d(4, [16, 16], 3, **options)
        with fast.plain() if fast_options is None else fast.settings(**fast_options):
            memory[name] = memory_mb(
                lambda layer=layer: layer(x)[0], lambda out: out.sum().backward(), x.device
            )
    # Saved per layer and step, in state tensors: plain 8, fused 5, checkpointed per step 3,
    # checkpointed as one node 1 (h, the output) and one c per chunk of about sqrt(T) steps.
    assert memory["fused"]["after_forward"] < 0.92 * memory["plain"]["after_forward"]
    assert memory["fused"]["peak"] < 0.95 * memory["plain"]["peak"]
    after_forward = {k: v["after_forward"] / output_mb for k, v in memory.items()}
    assert after_forward["checkpointed_per_step"] < 0.55 * after_forward["fused"]
    assert after_forward["checkpointed"] < 3.2  # two layers' outputs (2) and a few states
    assert memory["checkpointed"]["peak"] < 0.7 * memory["fused"]["peak"]


def test_channels_last_node_keeps_no_kernel_copy():
    """The node runs its convolutions with channels-last copies of the kernels (one per pass,
    not one per call) and saves the parameters themselves: with 7x7 kernels of 64 channels on
    8x8 maps, a kernel is 100x the output, so a saved copy would show."""
    layer = ConvLSTM2d(64, 64, 7)
    x = torch.randn(1, 2, 64, 8, 8, requires_grad=True)
    held = {}
    for channels_last in (False, True):
        with fast.settings(channels_last=channels_last):
            held[channels_last] = memory_mb(
                lambda: layer(x)[0], lambda out: out.sum().backward(), x.device
            )["after_forward"]
    kernel_mb = layer.cells[0].weight_hh.numel() * 4 / 1e6
    assert held[True] < held[False] + 0.1 * kernel_mb
    frames = _layout.to_channels_last(torch.randn(6, 1, 5, 5))  # one channel: strides only
    kernels = _recurrence._kernels_like(frames, torch.randn(8, 1, 3, 3), torch.randn(8, 2, 3, 3))
    assert all(k.stride(1) == 1 for k in kernels)
    standard = torch.randn(8, 2, 3, 3)
    assert _recurrence._kernels_like(torch.randn(6, 2, 5, 5), standard)[0] is standard


@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_whole_layer_node_backward_twice(checkpoint_steps):
    """Backward leaves what it saved untouched: a second pass (``retain_graph=True``) gives the
    same gradients."""
    layer = ConvLSTM2d(3, [4, 4], 3, peephole="channel", checkpoint_steps=checkpoint_steps)
    x = torch.randn(2, 5, 3, 6, 6, requires_grad=True)
    output, _ = layer(x)
    loss = output.square().sum()
    first = torch.autograd.grad(loss, [x, *layer.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *layer.parameters()])
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_compile_layer_matches_eager_on_cpu():
    layer = ConvLSTM2d(2, [4, 4], 3, peephole="channel")
    x = torch.randn(2, 3, 2, 6, 6)
    want = _outputs_and_grads(layer, x.clone().requires_grad_())
    compiled = fast.compile_layer(layer, backend="aot_eager")
    got = _outputs_and_grads(compiled, x.clone().requires_grad_())
    _assert_same(got, want, rtol=1e-5, atol=1e-6)


def test_settings_restore_and_validate():
    before = fast.current()
    with fast.plain():
        assert not fast.current().fused_loop
        with fast.settings(fused_gates=True, input_conv="joint"):
            assert fast.current().fused_gates and not fast.current().fused_loop
    assert fast.current() == before
    with pytest.raises(ValueError, match="input_conv must be None, 'batched' or 'joint'"):
        with fast.settings(input_conv="per_step"):
            pass


def test_tune_cpu_allocator_runs_in_a_fresh_process():
    """glibc has ``mallopt`` and accepts both settings: True there, False (nothing changed)
    elsewhere (musl, macOS, Windows)."""
    code = "from convlstm import fast; print(fast.tune_cpu_allocator())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert result.stdout.strip() == str(glibc)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _assert_as_accurate(got, plain, exact, noise=10, floor=1e-5):
    """Every tensor of ``got`` is as close to ``exact`` (the plain path in float64) as ``noise``
    times the plain float32 path's own error, or ``floor`` times the tensor's largest value.

    On GPUs, cuDNN's fp32 weight gradients differ from float64 by up to ~3e-3 of their largest
    value (measured on an H200, TF32 off), so a fixed tolerance between two fp32 paths is either
    flaky or blind; an error budget measured on the spot is neither."""
    flat = [[*values, *grads] for values, grads in (got, plain, exact)]
    for a, b, e in zip(*flat, strict=True):
        assert (a is None) == (b is None) == (e is None)
        if a is not None:
            e = e.to(a.dtype)
            bound = max(floor * e.abs().max().item(), noise * (b - e).abs().max().item())
            assert (a - e).abs().max().item() <= bound, (a - e).abs().max().item()


def _plain_and_exact(layer, x):
    """The plain path's outputs and gradients in float32 and, from a float64 copy, exactly."""
    exact = copy.deepcopy(layer).double()
    with fast.plain():
        plain = _outputs_and_grads(layer, x)
        return plain, _outputs_and_grads(exact, x.detach().double().requires_grad_())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("mode", sorted(FAST_MODES))
def test_cuda_fast_paths_equal_plain(mode, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    layer = ConvLSTM2d(3, [16, 8], 3, peephole="channel", bidirectional=True).cuda()
    x = torch.randn(4, 6, 3, 16, 16, device="cuda", requires_grad=True)
    plain, exact = _plain_and_exact(layer, x)
    with fast.settings(**FAST_MODES[mode]):
        got = _outputs_and_grads(layer, x)
    _assert_as_accurate(got, plain, exact)


@pytest.mark.gpu
@cuda
def test_cuda_compile_layer_with_cuda_graphs_trains_like_eager(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    layer = ConvLSTM2d(4, [16, 16], 3).cuda()
    x = torch.randn(2, 5, 4, 16, 16, device="cuda")
    plain, exact = _plain_and_exact(layer, x.clone().requires_grad_())
    compiled = fast.compile_layer(layer)
    for _ in range(3):  # warm-up, recording, replay
        torch.compiler.cudagraph_mark_step_begin()
        got = _outputs_and_grads(compiled, x.clone().requires_grad_())
        got = ([t.clone() for t in got[0]], [g.clone() for g in got[1]])
        _assert_as_accurate(got, plain, exact)


def test_joint_weight_cache_follows_weight_changes():
    cell = ConvLSTMCell(1, 4, 3, spatial_dims=2)
    x = torch.randn(2, 1, 6, 6)
    state = (torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6))
    with torch.no_grad():
        assert cell.joint_weight() is cell.joint_weight()  # cached without autograd
        before = cell(x, state)[0]
        cell.weight_hh.mul_(0.5)  # an in-place update (an optimiser step) invalidates it
        with fast.plain():
            want = cell(x, state)[0]
        got = cell(x, state)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, before)
    assert cell.joint_weight().requires_grad  # with autograd: a fresh, differentiable cat


def _stream_cell(**options):
    torch.manual_seed(0)
    cell = ConvLSTMCell(2, 4, 3, spatial_dims=2, **options)
    with torch.no_grad():
        for p in cell.parameters():
            if p.dim() < 4:
                p.uniform_(-0.5, 0.5)  # random peepholes and biases: no term hides behind a zero
    return cell


def _checked(cell, x, state):
    """``cell(x, state)`` through the checks, as at a first call."""
    cell._validated = None
    return cell(x, state)


@pytest.mark.parametrize(
    "options",
    [{}, {"bias": False}, {"peephole": "channel"}, {"peephole": "spatial", "spatial_size": 6}],
)
def test_streaming_calls_after_the_first_equal_the_checked_path_bitwise(options):
    cell = _stream_cell(**options)
    frames = torch.randn(4, 1, 2, 6, 6)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            state, checked = (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)), None
            for x in frames:
                checked = _checked(cell, x, state if checked is None else checked)
                state = cell(x, state)  # checked once, then the streaming path
                assert cell._validated is not None
                for got, want in zip(state, checked, strict=True):
                    assert torch.equal(got, want)
                    assert got.requires_grad is grad


def _error(call):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return info.type, str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        lambda x, h, c: (x[:, :1], (h, c)),  # channels
        lambda x, h, c: (x[..., :5], (h, c)),  # spatial size: the state no longer fits
        lambda x, h, c: (x.double(), (h, c)),  # float64 into a float32 cell
        lambda x, h, c: (x.half(), (h, c)),  # half precision without autocast
        lambda x, h, c: (x.long(), (h, c)),
        lambda x, h, c: (x.numpy(), (h, c)),
        lambda x, h, c: (x[0], (h, c)),  # no batch dimension
        lambda x, h, c: (x, (h[:, :3], c)),  # state h
        lambda x, h, c: (x, (h, c[..., :5])),  # state c
        lambda x, h, c: (x, (h, c, c)),
        lambda x, h, c: (x, (h, c.numpy())),
        lambda x, h, c: (x, torch.stack([h, c])),  # a tensor of two states is not a pair
        lambda x, h, c: (torch.cat([x, x]), (h, c)),  # batch
    ],
)
def test_streaming_calls_still_raise_the_checks_errors(bad):
    x, h, c = torch.randn(1, 2, 6, 6), torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    args = bad(x, h, c)
    want = _error(lambda: _stream_cell()(*args))  # a fresh cell: the checks run
    cell = _stream_cell(peephole="spatial", spatial_size=6)
    assert _error(lambda: cell(*args))[0] is want[0]
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            primed = _stream_cell()
            primed(x, (h, c))  # a validated call
            assert _error(lambda: primed(*args)) == want  # noqa: B023 (called at once)
            assert torch.equal(primed(x, (h, c))[0], _checked(primed, x, (h, c))[0])


def test_streaming_calls_follow_dtype_autocast_and_settings():
    cell = _stream_cell()
    x, state = torch.randn(1, 2, 6, 6), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))
    with torch.no_grad():
        cell(x, state)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = cell(x, state)  # the convolution in bfloat16, then the plain expressions
            assert torch.equal(got[0], _checked(cell, x, state)[0])
            cell(x.bfloat16(), state)  # autocast casts it
            with pytest.raises(TypeError, match="autocast casts float32 and half-precision"):
                cell(x.double(), state)
        with pytest.raises(
            TypeError, match=r"parameters' dtype torch\.float32, got torch\.bfloat16"
        ):
            cell(x.bfloat16(), state)
        with fast.plain():  # the plan changes: two convolutions, plain gate expressions
            plain = cell(x, state)
            assert cell._validated[1] == 0
        torch.testing.assert_close(cell(x, state), plain, rtol=1e-5, atol=1e-6)
        cell.double()  # .to() moves the module: a float32 input is refused again
        with pytest.raises(
            TypeError, match=r"parameters' dtype torch\.float64, got torch\.float32"
        ):
            cell(x, state)
        state64 = tuple(t.double() for t in state)
        torch.testing.assert_close(cell(x.double(), state64), plain, check_dtype=False)
        assert cell(x.double(), state64)[0].dtype == torch.float64


def test_streaming_calls_see_every_weight_change():
    cell = _stream_cell()
    x, state = torch.randn(1, 2, 6, 6), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))
    other = _stream_cell()
    with torch.no_grad():
        other.weight_ih.mul_(-1)
        changes = [
            lambda: cell.weight_ih.mul_(0.5),  # in place (an optimiser step)
            lambda: cell.weight_hh.add_(0.1),
            lambda: cell.bias.mul_(2),
            lambda: cell.load_state_dict(other.state_dict()),  # copied in place
            # .data replaced, through half precision and back: the same dtype, device, version
            lambda: setattr(cell.weight_ih, "data", cell.weight_ih.data.half().float()),
            lambda: setattr(cell, "weight_hh", torch.nn.Parameter(cell.weight_hh * 2)),
            lambda: cell.float(),  # .to() of the same dtype: nothing changes
        ]
        for change in changes:
            before = cell(x, state)[0]
            cell(x, state)
            change()
            got = cell(x, state)[0]
            with fast.plain():  # no joint weight, no cache: the weights as they are now
                want = cell(x, state)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            if change is not changes[-1]:
                assert not torch.equal(got, before)


def test_copies_and_pickles_of_a_streaming_cell_start_without_caches():
    cell = _stream_cell()
    x, state = torch.randn(1, 2, 6, 6), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))
    with torch.no_grad():
        want = cell(x, state)
        cell(x, state)
        for twin in (copy.deepcopy(cell), pickle.loads(pickle.dumps(cell))):
            assert twin._joint_cache is None and twin._validated is None
            for got, ref in zip(twin(x, state), want, strict=True):
                assert torch.equal(got, ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the checks' shape tests
def test_streaming_cell_traces_and_compiles_after_eager_calls():
    cell = _stream_cell()
    x, state = torch.randn(1, 2, 6, 6), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))
    x2, state2 = torch.randn(1, 2, 6, 6), (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6))
    with torch.no_grad():
        cell(x, state)  # validated: the streaming path from now on
        want = cell(x2, state2)
        traced = torch.jit.trace(cell, (x, state))
        for got, ref in zip(traced(x2, state2), want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        compiled = torch.compile(cell, backend="aot_eager", fullgraph=True)
        for got, ref in zip(compiled(x2, state2), want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match=r"state h must have shape \(1, 4, 6, 6\)"):
            cell(x2, (state2[0][:, :3], state2[1]))


@pytest.mark.parametrize(
    ("hidden", "autocast", "want"), [(32, False, False), (128, False, True), (32, True, True)]
)
def test_cuda_plan_takes_channels_last_for_wide_layers_or_autocast(
    hidden, autocast, want, monkeypatch
):
    # the rule needs only the frame's device and shape, so no GPU is needed to test it
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: autocast)
    frame = types.SimpleNamespace(device=torch.device("cuda"), shape=(8, 16, 16, 16))
    geometry = ConvLSTMCell(16, hidden, 5, spatial_dims=2).geometry(frame.shape[2:])
    assert _plan.use_channels_last(geometry, frame) is want


def test_tune_keeps_the_fastest_choice_once_and_restores_the_random_state():
    calls = []

    def trial(option):
        calls.append(option["n"])
        torch.rand(3)  # a trial that draws (recurrent dropout) must not shift the stream
        deadline = time.perf_counter() + (0.03 if option["n"] == 0 else 0.0)
        while time.perf_counter() < deadline:
            pass

    key = (torch.device("cpu"), "test-key")
    _plan.clear_tuned()
    state = torch.get_rng_state()
    assert _plan.tune(key, [{"n": 0}, {"n": 1}], trial) == {"n": 1}
    assert torch.equal(torch.get_rng_state(), state)
    assert calls == [0, 0, 0, 1, 1, 1]  # a warm-up and two timings each, the faster counting
    assert _plan.tune(key, [{"n": 0}, {"n": 1}], trial) == {"n": 1} and len(calls) == 6
    _plan.clear_tuned()


def test_autotune_times_the_choices_of_a_layer_once_without_touching_its_gradients(monkeypatch):
    """With ``fast.settings(autotune=True)`` each direction of each layer times the plan's
    alternatives (memory format x input convolution) at its first call of a shape, with no
    gradient left in ``.grad`` and the same result as the rules' plan; forced choices, small
    shapes and autotune off time nothing."""
    monkeypatch.setattr(_plan, "TUNE_MIN_WORK", 0)
    _plan.clear_tuned()
    timed = []
    tune = _plan.tune

    def counting(key, options, trial):
        if key not in _plan._tuned:
            timed.append(options)
        return tune(key, options, trial)

    monkeypatch.setattr(_plan, "tune", counting)
    torch.manual_seed(0)
    layer = ConvLSTM2d(2, [4, 3], 3)
    x = torch.randn(2, 3, 2, 8, 8, requires_grad=True)
    want, _ = layer(x)
    with fast.settings(autotune=True):
        got, _ = layer(x)
        assert (
            len(timed) == 2 and len(timed[0]) == 4
        )  # {standard, channels-last} x {batched, joint}
        assert x.grad is None and all(p.grad is None for p in layer.parameters())
        layer(x)
        assert len(timed) == 2  # kept
        with torch.no_grad():
            layer(x)  # inference is its own shape
        assert len(timed) == 4
        with fast.settings(channels_last=False):
            layer(x[:1])
        assert len(timed) == 4
    layer(x[:1])
    assert len(timed) == 4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert x.grad is not None
    monkeypatch.setattr(_plan, "TUNE_MIN_WORK", 1 << 20)
    with fast.settings(autotune=True):
        layer(x[:1, :2])
    assert len(timed) == 4
    fast.set_autotune()
    try:
        assert fast.current().autotune
    finally:
        fast.set_autotune(False)
    assert not fast.current().autotune
    _plan.clear_tuned()
