"""Smoke test of the benchmark suite (``convlstm benchmark``) on tiny shapes."""

from __future__ import annotations

import argparse
import json

import pytest

from convlstm import _gates, benchmark

TINY = ["1,3,2,8,4-4,3", "1,1,2,8,4,3,stream"]


def test_suite_runs_checks_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    code = benchmark.main(["--shapes", *TINY, "--rounds", "2", "--no-keras", "--json", str(out)])
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


def test_a_path_that_does_not_match_is_refused(monkeypatch):
    activate = _gates.activate

    def wrong(*args, **kwargs):
        h, c = activate(*args, **kwargs)
        return h.mul_(1.01), c

    monkeypatch.setattr(_gates, "activate", wrong)
    args = argparse.Namespace(
        compile=False, no_compile=True, no_keras=True, variants=["convlstm", "floor"],
        rounds=1, no_memory=True,
    )  # fmt: skip
    shape = benchmark.parse_shape(TINY[0])
    report = benchmark._bench_train(shape, benchmark._device("cpu"), args, {"fp32": 1, "bf16": 1})
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
