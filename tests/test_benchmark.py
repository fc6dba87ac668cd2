"""Smoke test of the benchmark suite (``convlstm benchmark``) on tiny shapes."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from convlstm import _gates, benchmark

TINY = ["1,3,2,8,4-4,3", "1,1,2,8,4,3,stream"]


def test_suite_runs_checks_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    options = ["--rounds", "2", "--no-keras", "--no-tune-malloc", "--json", str(out)]
    code = benchmark.main(["--shapes", *TINY, *options])  # the allocator stays as tests expect
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


def _bench_convlstm_and_floor() -> dict:
    """``_bench_train`` of our layer and the floor on the tiny training shape, one round."""
    args = argparse.Namespace(
        compile=False, no_compile=True, no_keras=True, variants=["convlstm", "floor"],
        rounds=1, no_memory=True,
    )  # fmt: skip
    shape = benchmark.parse_shape(TINY[0])
    return benchmark._bench_train(shape, benchmark._device("cpu"), args, {"fp32": 1, "bf16": 1})


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
    benchmark.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", "--quick", "--shapes", "w16", "--device", "cpu"])
    assert args.command == "benchmark" and args.quick and callable(args.handler)


def test_unknown_shape_is_an_error(capsys):
    assert benchmark.main(["--shapes", "nope"]) == 2
    assert "unknown shape 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="B,T,C_in,S"):
        benchmark.parse_shape("1,2")


def _shifted(name, shift, w, x, **kwargs):
    """A variant computing ``x * w + shift``: ``shift`` plays a rounding error."""
    return benchmark.Variant(name, lambda inp: inp * w + shift, [w], x, **kwargs)


@pytest.mark.parametrize(("shift", "accepted"), [(5e-3, True), (2e-2, False)])
def test_the_check_allows_noise_times_the_references_own_error(shift, accepted):
    x = torch.randn(1, 2, 1, 3, 3, dtype=torch.float64)
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    exact = benchmark.Variant("exact", lambda inp: inp * w, [w], x)
    reference = _shifted("plain", 1e-3, w, x, truth=exact)  # 1e-3 off the exact output
    variant = _shifted("fast", shift, w, x, reference="plain", own=True)
    grad = torch.randn(x.shape, dtype=torch.float64)
    truth = benchmark._run_once(exact, grad, True)
    with pytest.raises(AssertionError, match="output"):  # without the truth: 1e-4 absolute
        benchmark._check(variant, reference, grad)
    if accepted:  # within NOISE (10) times the reference's error of 1e-3
        errors = benchmark._check(variant, reference, grad, truth)
        assert errors["output"] == pytest.approx(shift - 1e-3, rel=1e-4)
    else:
        with pytest.raises(AssertionError, match="output"):
            benchmark._check(variant, reference, grad, truth)


def test_a_path_that_fails_after_its_check_is_refused_and_the_rest_timed(monkeypatch):
    make = benchmark._train_variants

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

    monkeypatch.setattr(benchmark, "_train_variants", with_a_flaky_path)
    report = _bench_convlstm_and_floor()
    assert report["results"]["convlstm"]["refused"] == "failed: RuntimeError: overwritten"
    assert "train" not in report["results"]["convlstm"]
    assert "train" in report["results"]["floor"]
