"""``convlstm train``: train a model, then evaluate it against baselines.

``convlstm train [--config FILE|NAME] [--out DIR] [--resume] [--overwrite] [section.key=value ...]``
(options and overrides in any order) trains a model (under ``torchrun --nproc_per_node=N``
with DistributedDataParallel), then rank 0 evaluates ``best.pt`` against the persistence and
zero-frame baselines and writes the report to ``DIR/report/`` (``metrics.json``, summary table,
curves, GIFs). With no arguments it trains the default Moving MNIST model (the bundled
``moving_mnist`` configuration: generated sequences from the training digits, validation on the
unseen ``val`` digits) on CUDA if available, else the CPU, into ``runs/<timestamp>-<model>/``.

``--config`` takes a ``.toml``/``.yaml``/``.json`` file or the name of a bundled configuration
(:func:`bundled_configs`). ``--resume`` continues the run in ``--out`` from its ``last.pt``, with
its saved ``config.yaml`` unless ``--config`` is given; overrides apply on top.

Exit codes: 0 success; 1 failure (unreadable checkpoint, NaN loss, I/O error, ...);
2 usage error (bad arguments, invalid configuration, unknown model/dataset, output folder
conflict); 130 / 143 interrupted by SIGINT / SIGTERM after saving ``last.pt``
(continue with ``--resume``). Errors are reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from convlstm.checkpoint import CheckpointError
from convlstm.cli._args import one_line
from convlstm.config import Config, ConfigError, load_config
from convlstm.registry import normalise_name

__all__ = ["add_parser", "bundled_configs", "resolve_config"]

DEFAULT_CONFIG = "moving_mnist"
# Datasets read from a file: the dataset option that holds the file, for the final report.
_FILE_OPTIONS = {"moving_mnist_file": "path", "array": "source", "radar_archive": "source"}


class UsageError(Exception):
    """A command-line problem, reported with exit status 2."""


def bundled_configs() -> list[str]:
    """Names of the configurations shipped with the package (``--config NAME``).

    >>> "moving_mnist" in bundled_configs()
    True
    """
    folder = resources.files("convlstm") / "configs"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in bundled_configs():
        return Path(str(resources.files("convlstm") / "configs" / f"{name_or_path}.toml"))
    raise UsageError(
        f"--config {name_or_path}: no such file, and not a bundled configuration "
        f"({', '.join(bundled_configs())})"
    )


def resolve_config(
    config: str | None, out: Path | None, resume: bool, overrides: list[str]
) -> Config:
    """The configuration a ``convlstm train`` command line describes (see the module docstring)."""
    if config is not None:
        return load_config(_config_path(config), overrides)
    if resume:
        assert out is not None
        saved = out / "config.yaml"
        if not saved.is_file():
            hint = (
                " (the run saved nothing yet; start it again with --overwrite)"
                if out.is_dir()
                else ""
            )
            raise UsageError(f"cannot resume: {saved} does not exist{hint}")
        return load_config(saved, overrides)
    return load_config(_config_path(DEFAULT_CONFIG), overrides)


def _default_out(config: Config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.model.name}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _report_data(config: Config) -> str:
    name = normalise_name(config.data.name, "dataset")
    option = _FILE_OPTIONS.get(name)
    if option is None:
        return name
    source = {**config.data.options, **config.data.val_options}.get(option)
    if not isinstance(source, str):
        raise UsageError(f"data.options.{option} must name the {name} file for the final report")
    return source


def _train_command(args: argparse.Namespace) -> int:
    from convlstm.training import train

    if args.resume and args.out is None:
        raise UsageError("--resume needs --out DIR (the run folder to continue)")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if args.overwrite and args.out is not None and args.out.is_symlink():
        raise UsageError(
            f"--out {args.out} is a symbolic link to {os.readlink(args.out)}: --overwrite "
            "replaces only a run folder itself, never a link"
        )
    config = resolve_config(args.config, args.out, args.resume, args.overrides)
    out = args.out or _default_out(config)
    result = train(config, out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if config.run.threads:  # validated by train(); the report runs on as many threads
        torch.set_num_threads(config.run.threads)
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.2f}"
    print(
        f"trained {result.steps} steps in {result.epochs} epochs ({result.stop_reason}, "
        f"{result.seconds / 60:.1f} min); best validation MSE/frame {best}; checkpoints in {out}"
    )
    if config.run.eval_samples:
        report = Path(out) / "report"
        from convlstm.evaluation import evaluate_checkpoint

        results = evaluate_checkpoint(
            result.best_checkpoint,
            _report_data(config),
            report,
            device=config.run.device if config.run.device != "auto" else None,
            batch_size=config.run.eval_batch_size,
            num_samples=config.run.eval_samples,
            overwrite=args.resume,
            progress=config.run.progress,
        )
        scores = ", ".join(
            f"{name} {values['mse_frame']['overall']:.1f}"
            for name, values in results["forecasters"].items()
        )
        print(
            f"MSE/frame on {results['dataset']['num_sequences']} validation sequences: {scores}; "
            f"report in {report}"
        )
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``convlstm train`` on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser(
        "train",
        help="train a forecasting model, then evaluate it against baselines",
        description=__doc__.split("\n\n")[1],
        usage="convlstm train [-h] [--config CONFIG] [--out OUT] [--resume] [--overwrite] "
        "[section.key=value ...]  (options and overrides in any order)",
    )
    parser.add_argument(
        "--config", help=f"config file or bundled name ({', '.join(bundled_configs())})"
    )
    parser.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>-<model>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out, only if it is a run folder that train wrote",
    )
    parser.set_defaults(handler=_run_train, overrides_allowed=True)


def _run_train(args: argparse.Namespace) -> int:
    from convlstm.training import NonFiniteLossError, TrainingInterrupted

    prefix = "convlstm train"
    rank = os.environ.get("RANK", "0")
    world = os.environ.get("WORLD_SIZE", "1")
    if rank != "0":
        prefix += f" [rank {rank}]"
    try:
        return _train_command(args)
    except TrainingInterrupted as stop:
        print(f"{prefix}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ConfigError, FileExistsError) as error:
        print(f"{prefix}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLossError, OSError, RuntimeError, ValueError) as error:
        message = one_line(error)
        if world != "1" and _collective_failure(error, message):
            message = (
                f"rank {rank} of {world} lost contact with the other processes of the run "
                f"({_gloo_free(message)}); another rank probably died or hung, see its own error"
            )
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 1


# "[/path/to/gloo/transport/tcp/pair.cc:537] " at the start of gloo's and NCCL's messages
_SOURCE_LOCATION = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")


def _collective_failure(error: BaseException, message: str) -> bool:
    """Whether ``error`` is a failed collective under ``torchrun`` (a lost peer, a timeout)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    return bool(_SOURCE_LOCATION.match(message)) or "NCCL" in message


def _gloo_free(message: str) -> str:
    """``message`` without the C++ source location and the boilerplate after its first sentence.

    >>> _gloo_free("[a/pair.cc:537] Read error [127.0.0.1]:1: Connection reset by peer. This is "
    ...            "typically caused by a remote worker hanging")
    'Read error [127.0.0.1]:1: Connection reset by peer'
    """
    message = _SOURCE_LOCATION.sub("", message)
    return message.split(". ")[0].rstrip(".")
