"""Smoke test of the benchmark suite (``convlstm benchmark``, :mod:`convlstm.bench`) on tiny
shapes."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import types

import pytest
import torch
from torch import nn

from convlstm import _gates, bench, fast
from convlstm.bench import cli, references, suite, variants

TINY = ["1,3,2,8,4-4,3", "1,1,2,8,4,3,stream"]


def test_suite_runs_checks_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    options = ["--rounds", "2", "--no-keras", "--json", str(out)]
    code = bench.main(["--shapes", *TINY, *options])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["peak_gflops"]["fp32"] > 0
    train, stream = report["shapes"]
    results = train["results"]
    for name in ("floor", "naive", "convlstm", "convlstm_plain", "convlstm_ckpt", "convlstm_bf16"):
        assert results[name]["train"]["median_ms"] > 0, name
    assert "check" in results["convlstm"] and "refused" not in results["convlstm"]
    assert results["convlstm"]["memory_mb"]["peak"] > 0
    assert train["ratios"]["train_convlstm_vs_floor"] > 0
    assert stream["results"]["convlstm_layer"]["forward"]["median_ms"] > 0
    assert "convlstm_cell_vs_naive" in stream["ratios"]
    assert {"convlstm_cell_vs_openstl", "convlstm_cell_vs_ndrplz"} <= set(stream["ratios"])
    assert report["options"]["tune_malloc"] is False  # the allocator users get, by default


def _bench_convlstm_and_floor() -> dict:
    """``_bench_train`` of our layer and the floor on the tiny training shape, one round."""
    args = argparse.Namespace(
        compile=False, no_compile=True, no_keras=True, no_torchgeo=True,
        variants=["convlstm", "floor"], rounds=1, no_memory=True,
    )  # fmt: skip
    shape = bench.parse_shape(TINY[0])
    return suite.bench_train(shape, suite.resolve_device("cpu"), args, {"fp32": 1, "bf16": 1})


def test_a_path_that_does_not_match_is_refused(monkeypatch):
    activate = _gates.activate

    def wrong(*args, **kwargs):
        h, c = activate(*args, **kwargs)
        return h.mul_(1.01), c

    monkeypatch.setattr(_gates, "activate", wrong)
    report = _bench_convlstm_and_floor()
    assert report["results"]["convlstm"]["refused"].startswith("does not match plain")
    assert "train" not in report["results"]["convlstm"]
    assert "train" in report["results"]["floor"]


def test_add_parser_registers_the_subcommand():
    parser = argparse.ArgumentParser(prog="convlstm")
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", "--quick", "--shapes", "w16", "--device", "cpu"])
    assert args.command == "benchmark" and args.quick and callable(args.handler)


def test_unknown_shape_is_an_error(capsys):
    assert bench.main(["--shapes", "nope"]) == 2
    assert "unknown shape 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="B,T,C_in,S"):
        bench.parse_shape("1,2")


def _shifted(name, shift, w, x, **kwargs):
    """A variant computing ``x * w + shift``: ``shift`` plays a rounding error."""
    return variants.Variant(name, lambda inp: inp * w + shift, [w], x, **kwargs)


@pytest.mark.parametrize(("shift", "accepted"), [(5e-3, True), (2e-2, False)])
def test_the_check_allows_noise_times_the_references_own_error(shift, accepted):
    x = torch.randn(1, 2, 1, 3, 3, dtype=torch.float64)
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    exact = variants.Variant("exact", lambda inp: inp * w, [w], x)
    reference = _shifted("plain", 1e-3, w, x, truth=exact)  # 1e-3 off the exact output
    variant = _shifted("fast", shift, w, x, reference="plain", own=True)
    grad = torch.randn(x.shape, dtype=torch.float64)
    truth = variants.run_once(exact, grad, True)
    with pytest.raises(AssertionError, match="output"):  # without the truth: 1e-4 absolute
        variants.check(variant, reference, grad)
    if accepted:  # within NOISE (10) times the reference's error of 1e-3
        errors = variants.check(variant, reference, grad, truth)
        assert errors["output"] == pytest.approx(shift - 1e-3, rel=1e-4)
    else:
        with pytest.raises(AssertionError, match="output"):
            variants.check(variant, reference, grad, truth)


def test_a_path_that_fails_after_its_check_is_refused_and_the_rest_timed(monkeypatch):
    make = variants.train_variants

    def with_a_flaky_path(*args, **kwargs):
        variants, notes = make(*args, **kwargs)
        v = variants["convlstm"]
        calls = []

        def once(inp):  # passes the check, then breaks (as a CUDA graph did)
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("overwritten\nby a subsequent run")
            return v.forward(inp)

        variants["convlstm"] = dataclasses.replace(v, forward=once)
        return variants, notes

    monkeypatch.setattr(suite, "train_variants", with_a_flaky_path)
    report = _bench_convlstm_and_floor()
    assert report["results"]["convlstm"]["refused"] == "failed: RuntimeError: overwritten"
    assert "train" not in report["results"]["convlstm"]
    assert "train" in report["results"]["floor"]


def _suite_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli._add_arguments(parser)
    args = parser.parse_args(["--shapes", TINY[1], "--rounds", "1", "--no-keras", *argv])
    return args


@pytest.mark.parametrize("fail", [False, True])
def test_run_suite_restores_threads_and_tf32(monkeypatch, fail):
    """The suite sets the thread count (and TF32 on CUDA) for its run only, even if it fails."""
    threads = torch.get_num_threads()
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    seen = []

    def shapes(args, device, log):
        seen.append(torch.get_num_threads())
        torch.backends.cudnn.allow_tf32 = not tf32[0]  # a shape that changes them too
        torch.set_num_threads(threads + 2)
        if fail:
            raise RuntimeError("a shape failed")
        return {}

    monkeypatch.setattr(suite, "_run_shapes", shapes)
    args = _suite_args("--threads", str(threads + 1), "--device", "cpu")
    if fail:
        with pytest.raises(RuntimeError, match="a shape failed"):
            suite.run_suite(args)
    else:
        suite.run_suite(args)
    assert seen == [threads + 1]
    assert torch.get_num_threads() == threads
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == tf32


def test_the_allocator_is_tuned_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(fast, "tune_cpu_allocator", lambda: calls.append(1) or True)
    monkeypatch.setattr(suite.measure, "peak_gflops", lambda device, dtype: 1.0)
    monkeypatch.setattr(suite, "bench_stream", lambda *a: {"results": {}, "notes": []})
    suite.run_suite(_suite_args("--device", "cpu"), log=lambda line: None)
    assert calls == []
    assert not _suite_args("--no-tune-malloc").tune_malloc  # the old flag: now the default
    suite.run_suite(_suite_args("--device", "cpu", "--tune-malloc"), log=lambda line: None)
    assert calls == [1]


def test_the_old_module_is_a_deprecated_alias():
    sys.modules.pop("convlstm.benchmark", None)
    with pytest.warns(DeprecationWarning, match=r"convlstm\.benchmark is deprecated"):
        old = importlib.import_module("convlstm.benchmark")
    assert old.run_suite is bench.run_suite and old.add_parser is bench.add_parser
    assert old.main is bench.main and old.SHAPES is bench.SHAPES


class _TorchgeoCell(nn.Module):
    """torchgeo 0.10.1's documented ``ConvLSTMCell``: one ``Conv2d`` of ``[x, h]``, gates split
    (i, f, o, g) -- a stand-in with its attribute names, written from its equations."""

    def __init__(self, input_dim, hidden_dim, kernel_size, bias=True):
        super().__init__()
        self.hidden_dim = hidden_dim
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size, 1, padding,
                              bias=bias)  # fmt: skip

    def forward(self, input_tensor, cur_state):
        h, c = cur_state
        gates = self.conv(torch.cat([input_tensor, h], dim=1))
        i, f, o, g = torch.split(gates, self.hidden_dim, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class _TorchgeoConvLSTM(nn.Module):
    """torchgeo 0.10.1's documented ``ConvLSTM`` constructor and outputs (stand-in)."""

    def __init__(self, input_dim, hidden_dim, kernel_size, num_layers, batch_first=False,
                 bias=True, return_all_layers=False):  # fmt: skip
        super().__init__()
        assert isinstance(kernel_size, list) and isinstance(kernel_size[0], tuple)
        dims = [input_dim, *hidden_dim]
        self.batch_first = batch_first
        self.cell_list = nn.ModuleList(
            _TorchgeoCell(dims[i], dims[i + 1], kernel_size[i], bias) for i in range(num_layers)
        )

    def forward(self, input_tensor, hidden_state=None):
        x = input_tensor if self.batch_first else input_tensor.transpose(0, 1)
        outputs, states = [], []
        for cell in self.cell_list:
            h = x.new_zeros(x.shape[0], cell.hidden_dim, *x.shape[3:])
            c, steps = h, []
            for t in range(x.shape[1]):
                h, c = cell(x[:, t], (h, c))
                steps.append(h)
            x = torch.stack(steps, dim=1)
            outputs.append(x)
            states.append((h, c))
        return outputs[-1:], states[-1:]


def test_torchgeo_is_left_out_cleanly_when_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchgeo", None)  # import torchgeo raises ImportError
    args = argparse.Namespace(compile=False, no_compile=True, no_keras=True, no_torchgeo=False)
    found, notes = variants.train_variants(bench.parse_shape(TINY[0]), torch.device("cpu"), args)
    assert "torchgeo" not in found
    assert any(n.startswith("torchgeo left out") and "convlstm[bench]" in n for n in notes)


def test_torchgeo_gets_our_weights_and_passes_the_check(monkeypatch):
    """Against a stand-in with torchgeo 0.10.1's documented API (torchgeo is not installed
    here): the adapter maps our (i, f, g, o) kernels onto its (i, f, o, g) joint convolution."""
    models = types.ModuleType("torchgeo.models")
    models.ConvLSTM = _TorchgeoConvLSTM
    package = types.ModuleType("torchgeo")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchgeo", package)
    monkeypatch.setitem(sys.modules, "torchgeo.models", models)
    args = argparse.Namespace(
        compile=False, no_compile=True, no_keras=True, no_torchgeo=False,
        variants=["torchgeo"], rounds=1, no_memory=True,
    )  # fmt: skip
    shape = bench.parse_shape(TINY[0])
    report = suite.bench_train(shape, torch.device("cpu"), args, {"fp32": 1, "bf16": 1})
    entry = report["results"]["torchgeo"]
    assert "refused" not in entry and entry["check"]["output"] < 1e-5
    assert entry["train"]["median_ms"] > 0


def test_the_peers_compute_our_layers_function():
    """ndrplz's (torchgeo's) and OpenSTL's cells, written from their code, with our weights give
    our layer's output in float64; OpenSTL's has no bias, so a layer with one is refused."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 9, 9, dtype=torch.float64)
    for bias, make in ((True, references.joint_from), (False, references.openstl_from)):
        layer = variants.make_layer(
            bench.parse_shape("2,4,3,9,5-4,3"), torch.device("cpu"), bias=bias
        )
        layer = layer.double()
        torch.testing.assert_close(make(layer)(x), layer(x)[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(AssertionError, match="no bias"):
        references.openstl_from(layer.__class__(3, [4], 3))
    twin = variants.bias_free_copy(layer)
    assert all(cell.bias is None for cell in twin.cells)
    assert torch.equal(twin.cells[0].weight_hh, layer.cells[0].weight_hh)


def test_the_peers_are_checked_and_timed_in_fp32_and_bf16():
    args = argparse.Namespace(
        compile=False, no_compile=True, no_keras=True, no_torchgeo=True,
        variants=["convlstm", "convlstm_bf16", "ndrplz", "ndrplz_bf16", "openstl", "openstl_bf16"],
        rounds=1, no_memory=True,
    )  # fmt: skip
    shape = bench.parse_shape(TINY[0])
    report = suite.bench_train(shape, torch.device("cpu"), args, {"fp32": 1, "bf16": 1})
    for name in args.variants:
        entry = report["results"][name]
        assert "refused" not in entry and entry["train"]["median_ms"] > 0, name
    ratios = suite._ratios(shape, report["results"])
    for label in ("train_convlstm_vs_openstl", "train_bf16_convlstm_vs_ndrplz"):
        assert ratios[label] > 0


def test_a_normalised_shape_times_the_floor_with_its_norm():
    """``norm`` shapes (``main_job_norm``): the floor normalises each step's convolutions as the
    layer does; the cells without norm (naive, peers, Keras) are left out with a note."""
    shape = dataclasses.replace(bench.parse_shape(TINY[0]), name="tiny_norm", norm="layer")
    args = argparse.Namespace(
        compile=False, no_compile=True, no_keras=False, no_torchgeo=False,
        variants=["convlstm", "floor", "naive"], rounds=1, no_memory=True,
    )  # fmt: skip
    report = suite.bench_train(shape, torch.device("cpu"), args, {"fp32": 1, "bf16": 1})
    assert set(report["results"]) == {"convlstm", "floor"}
    assert any("not normalised" in note for note in report["notes"])
    layer = variants.make_layer(shape, torch.device("cpu"))
    assert all(cell.norm == "layer" for cell in layer.cells)
    floor = references.FloorConvs(layer)
    x = torch.randn(1, 3, 2, 8, 8)
    with torch.no_grad():
        first = floor(x)[:, 0]
        gates = torch.nn.functional.group_norm(
            layer.cells[0].input_conv(x[:, 0]), 4, layer.cells[0].norm_weight, layer.cells[0].bias
        )
        want = layer.cells[1].input_conv(gates[:, :4])
        want = torch.nn.functional.group_norm(
            want, 4, layer.cells[1].norm_weight, layer.cells[1].bias
        )
    torch.testing.assert_close(first, want[:, :4])
    assert "norm=layer" in shape.describe()


def test_throughput_reports_sequences_per_second_and_memory(tmp_path):
    out = tmp_path / "throughput.json"
    args = ["--throughput", "--models", "default", "--batches", "1", "2", "--rounds", "1"]
    assert cli.main([*args, "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())["default"]
    assert report["model"] == "moving_mnist" and report["overrides"] == {"norm": "layer"}
    assert [e["batch"] for e in report["batches"]] == [1, 2]
    for entry in report["batches"]:
        assert entry["sequences_per_s"] == pytest.approx(entry["batch"] / entry["median_ms"] * 1e3)
        assert entry["peak_mb"] > 0
    assert report["saturating_batch"] in (1, 2)
    assert cli.main(["--throughput", "--batches", "0"]) == 2
