"""Long fault-injection and load soaks of convlstm, beyond what the CI tests afford.

Usage (from the repository root, with the package installed)::

    python scripts/soak.py kill --runs 20 --jobs 2        # chains of random SIGKILLs + resumes
    python scripts/soak.py stream --steps 100000          # streaming soak, memory and equality
    python scripts/soak.py distributed                    # torchrun: a rank dies / hangs
    python scripts/soak.py memmap --size-gb 2             # evaluation of a large memmapped file

Each prints one line per event and a JSON summary at the end (``--json FILE`` also writes it).
The faults use the start-up hook of ``tests/test_reliability_support.py`` (a ``sitecustomize``
put on ``PYTHONPATH``; no test-only code in the package). ``scripts/README.md`` lists the
figures measured on the development machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_reliability_support import (  # noqa: E402
    STEPS_PER_EPOCH,
    TINY,
    cli,
    fault_env,
    log_lines,
    rss_mb,
    same_weights,
    steps_done,
    weights,
)


def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


# ----------------------------------------------------------------------------- kill


def _straight(folder: Path, overrides: list[str]) -> Path:
    from convlstm.cli import resolve_config
    from convlstm.training import train

    _torch()
    out = folder / "straight"
    train(resolve_config(None, None, False, overrides), out)
    return out


def _random_fault(rng: random.Random, epochs: int) -> dict | None:
    """A hook kill at a random checkpoint write, or None for an external SIGKILL at a random time."""
    choice = rng.random()
    if choice < 0.5:
        return None
    at = rng.choice(["save-mid", "save-before-install", "save-after-install"])
    name = rng.choice(["last.pt", "best.pt", "config.yaml"])
    return {"at": at, "name": name, "nth": rng.randint(1, epochs if name != "config.yaml" else 1)}


def _one_chain(index: int, seed: int, epochs: int, folder: Path, straight: Path) -> dict:
    """Train one run to the end through a chain of kills; check every invariant on the way."""
    from convlstm.checkpoint import CheckpointError, load_checkpoint

    rng = random.Random(seed)
    overrides = [*TINY, f"optim.epochs={epochs}"]
    total = epochs * STEPS_PER_EPOCH
    run = folder / f"chain-{index}"
    run.mkdir()
    out = run / "run"
    stats = {"kills": 0, "mid_write": 0, "max_lost_steps": 0, "restarts": 0, "attempts": 0}
    while True:
        stats["attempts"] += 1
        log = run / f"log-{stats['attempts']}"
        resume = (out / "last.pt").exists()
        args = ["train", "--out", str(out)]
        if resume:
            args.append("--resume")
        elif out.exists():
            args.append("--overwrite")
            stats["restarts"] += 1
        fault = _random_fault(rng, epochs) if stats["attempts"] < 8 else None
        env = fault_env(run, {"log": str(log), "kill": fault, "step_delay": 0.02})
        process = subprocess.Popen(
            cli(*args, *overrides), env=env, cwd=run, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if fault is None and stats["attempts"] < 8:
            deadline = time.monotonic() + 120
            while steps_done(log) < 1 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=600)
        reached = steps_done(log)
        if process.returncode == 0:
            break
        if process.returncode == 2 and "does not look like a training run folder" in stderr:
            # killed while writing the very first file (config.yaml): only a hidden temporary
            # file is left, and --overwrite refuses the folder; it needs removing by hand
            stats["stuck_folders"] = stats.get("stuck_folders", 0) + 1
            stats["stuck_contents"] = sorted(p.name for p in out.iterdir())
            import shutil

            shutil.rmtree(out)
            continue
        if process.returncode != -signal.SIGKILL:
            raise AssertionError(f"chain {index}: exit {process.returncode}: {stderr[-2000:]}")
        stats["kills"] += 1
        stats["mid_write"] += any("in the middle" in line for line in log_lines(log))
        for path in out.glob("*.pt"):  # no half-written file under a final name, ever
            try:
                load_checkpoint(path)
            except CheckpointError as error:
                raise AssertionError(f"chain {index}: {error}") from None
        saved = load_checkpoint(out / "last.pt")["step"] if (out / "last.pt").exists() else 0
        lost = max(reached - saved, 0)  # steps done but not in the last complete checkpoint
        stats["max_lost_steps"] = max(stats["max_lost_steps"], lost)
        if lost > STEPS_PER_EPOCH:
            raise AssertionError(f"chain {index}: lost {lost} steps > one epoch")
    if load_checkpoint(out / "last.pt")["step"] != total:
        raise AssertionError(f"chain {index}: ended at step != {total}")
    stats["equal_weights"] = same_weights(weights(out / "last.pt"), weights(straight / "last.pt"))
    stats["stale_tmp"] = len(list(out.glob(".*.tmp")))
    if not stats["equal_weights"]:
        raise AssertionError(f"chain {index}: final weights differ from the uninterrupted run")
    return stats


def kill(args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="soak-kill-"))
    overrides = [*TINY, f"optim.epochs={args.epochs}"]
    straight = _straight(folder, overrides)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"kill soak: {args.runs} chains, seed {seed}, folder {folder}")
    started = time.monotonic()
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(_one_chain, i, seed + i, args.epochs, folder, straight)
            for i in range(args.runs)
        ]
        for future in concurrent.futures.as_completed(futures):
            stats = future.result()
            results.append(stats)
            print(json.dumps(stats))
    return {
        "chains": len(results),
        "seed": seed,
        "kills": sum(r["kills"] for r in results),
        "kills_mid_write": sum(r["mid_write"] for r in results),
        "fresh_restarts": sum(r["restarts"] for r in results),
        "max_lost_steps": max(r["max_lost_steps"] for r in results),
        "steps_per_checkpoint": STEPS_PER_EPOCH,
        "all_equal_to_uninterrupted": all(r["equal_weights"] for r in results),
        "stale_temporary_files": sum(r["stale_tmp"] for r in results),
        "folders_needing_manual_removal": sum(r.get("stuck_folders", 0) for r in results),
        "seconds": round(time.monotonic() - started, 1),
    }


# ----------------------------------------------------------------------------- stream


def stream(args: argparse.Namespace) -> dict:
    torch = _torch()
    from convlstm import ConvLSTM

    torch.manual_seed(0)
    layer = ConvLSTM(1, [2, 2], 3, spatial_dims=2, peephole="channel", dtype=torch.float64)
    x = torch.randn(1, args.steps, 1, 4, 4, dtype=torch.float64)
    started = time.monotonic()
    with torch.no_grad():
        full, _ = layer(x)
    one_shot_s = time.monotonic() - started
    summary: dict = {"steps": args.steps, "one_shot_s": round(one_shot_s, 1)}
    chunks = [1, 2, 3, 5, 8, 13]
    for mode in ("no_grad", "detach"):
        state, pos, index, samples = None, 0, 0, []
        started = time.monotonic()
        while pos < args.steps:
            n = chunks[index % len(chunks)]
            chunk = x[:, pos : pos + n]
            if mode == "no_grad":
                with torch.no_grad():
                    out, state = layer(chunk, state)
            else:
                out, state = layer(chunk, state)
                out.square().mean().backward()
                state = [(h.detach(), c.detach()) for h, c in state]
            # equal up to float64 rounding: 1-step chunks convolve [x, h] jointly, the
            # one-shot run batches the input convolution (another summation order)
            error = (out.detach() - full[:, pos : pos + n]).abs().max().item()
            if error > 1e-12:
                raise AssertionError(
                    f"{mode}: chunk at step {pos} differs from the one-shot run by {error:.3g}"
                )
            pos += n
            index += 1
            if index % max(args.steps // 10 // 5, 1) == 0 or pos >= args.steps:
                gc.collect()
                samples.append((pos, round(rss_mb(), 1)))
        layer.zero_grad(set_to_none=True)
        after_warmup = [rss for step, rss in samples if step >= args.steps // 10]
        summary[mode] = {
            "seconds": round(time.monotonic() - started, 1),
            "rss_mib_first_last": [after_warmup[0], after_warmup[-1]],
            "rss_mib_min_max": [min(after_warmup), max(after_warmup)],
            "equal_to_one_shot": True,
        }
        print(mode, json.dumps(summary[mode]))
    summary["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return summary


# ----------------------------------------------------------------------------- distributed


def _torchrun(folder: Path, fault: dict, timeout_s: float) -> dict:
    out = folder / "run"
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "convlstm.cli", "train", "--out", str(out), *TINY, "optim.epochs=4",
        f"run.dist_timeout_s={timeout_s}",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        argv, env=fault_env(folder, fault), cwd=folder, capture_output=True, text=True,
        timeout=timeout_s + 300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    log = Path(fault["log"])
    ours = [line for line in done.stderr.splitlines() if line.startswith("convlstm train")]
    return {
        "exit": done.returncode,
        "seconds_total": round(seconds, 1),
        "survivor_error": ours,
        "rank0_steps": steps_done(log, 0),
        "rank1_wrote": [line for line in log_lines(log, 1) if line.startswith("wrote")],
        "files": sorted(p.name for p in out.iterdir()) if out.exists() else [],
    }


def distributed(args: argparse.Namespace) -> dict:
    summary = {}
    for case, hang, timeout_s in (("rank 1 killed", False, 300), ("rank 1 hangs", True, 20)):
        folder = Path(tempfile.mkdtemp(prefix="soak-dist-"))
        step = random.Random(args.seed).randint(1, 6)
        fault = {"log": str(folder / "log"), "kill": {"at": "step", "step": step, "rank": 1,
                                                      "hang": hang}}  # fmt: skip
        result = _torchrun(folder, fault, timeout_s)
        result["dist_timeout_s"] = timeout_s
        result["fault_before_step"] = step + 1
        summary[case] = result
        print(case, json.dumps(result))
    return summary


# ----------------------------------------------------------------------------- memmap


def memmap(args: argparse.Namespace) -> dict:
    import io

    import numpy as np

    torch = _torch()
    from convlstm.checkpoint import make_checkpoint, save_checkpoint
    from convlstm.config import Config, apply_overrides, config_to_dict
    from convlstm.evaluation import evaluate_checkpoint
    from convlstm.models import EncoderForecaster

    folder = Path(tempfile.mkdtemp(prefix="soak-memmap-"))
    model = EncoderForecaster(1, [4], 3, patch_size=4)
    config = config_to_dict(apply_overrides(Config(), ["data.input_len=10", "data.horizon=10"]))
    checkpoint = save_checkpoint(
        folder / "model.pt", make_checkpoint(model, "moving_mnist", config)
    )
    sequences = int(args.size_gb * 2**30 / (20 * 64 * 64))

    def sparse(path: Path, shape: tuple[int, ...]) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        with path.open("wb") as handle:
            handle.write(header.getvalue())
            handle.truncate(len(header.getvalue()) + int(np.prod(shape)))

    sparse(folder / "small.npy", (20, 8, 64, 64))
    evaluate_checkpoint(checkpoint, folder / "small.npy", folder / "warm", num_samples=2,
                        progress=False)  # fmt: skip
    sparse(folder / "big.npy", (20, sequences, 64, 64))
    summary = {"file_gib": round((folder / "big.npy").stat().st_size / 2**30, 2)}
    for count in args.samples:
        start, peak = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.monotonic()
        evaluate_checkpoint(checkpoint, folder / "big.npy", folder / f"report-{count}",
                            num_samples=count, batch_size=16, num_gifs=1, progress=False)  # fmt: skip
        summary[f"{count} sequences"] = {
            "seconds": round(time.monotonic() - started, 1),
            "rss_growth_mib": round(rss_mb() - start, 1),
            "peak_rss_growth_mib": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak, 1
            ),
        }
        print(count, json.dumps(summary[f"{count} sequences"]))
    del torch
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the summary to this file")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("kill", help="chains of random SIGKILLs and resumes")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int)
    p.set_defaults(handler=kill)
    p = sub.add_parser("stream", help="streaming soak: memory and equality with one call")
    p.add_argument("--steps", type=int, default=100_000)
    p.set_defaults(handler=stream)
    p = sub.add_parser("distributed", help="torchrun with a rank that dies or hangs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=distributed)
    p = sub.add_parser("memmap", help="evaluate a large sparse memory-mapped file")
    p.add_argument("--size-gb", type=float, default=2.0)
    p.add_argument("--samples", type=int, nargs="+", default=[4, 64])
    p.set_defaults(handler=memmap)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    summary = args.handler(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
