"""Property test of the whole command line (issue 19): command lines for every subcommand, with
options (and ``train``'s overrides) in random order and random bad values, run in-process.

Each ends with exit status 0, 1 or 2; a failure prints exactly one ``convlstm CMD: error: ...``
line (no usage lines, no traceback); and no file or folder outside the command's output paths
changes (a snapshot of the working folder -- names, kinds, sizes, modification times -- is
compared before and after; on a failure nothing may change at all). The working folder holds a
training run, a folder of user files, files and symbolic links, all of which are drawn as
outputs too, with and without ``--overwrite``.
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from convlstm.checkpoint import load_model
from convlstm.cli import main
from convlstm.pretrained import save_pretrained
from test_predict import tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
counter = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working folder: a checkpoint and its pretrained folder, input frames, a training run, user files and links."""
    root = tmp_path_factory.mktemp("work")
    checkpoint = tiny_checkpoint(root / "model.pt")
    model, config = load_model(checkpoint)
    save_pretrained(model, root / "pretrained", model_name="moving_mnist", data=config["data"])
    rng = np.random.default_rng(0)
    np.save(root / "frames.npy", rng.random((2, 3, 32, 32), dtype=np.float32))
    nan = rng.random((1, 3, 32, 32), dtype=np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "mnist.npy", rng.integers(0, 256, (5, 2, 32, 32), np.uint8))
    run = root / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(checkpoint.read_bytes())
    (run / "config.yaml").write_text("model: {}\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("precious")
    (root / "notes.txt").write_text("precious")
    for name in ("run", "mine", "notes.txt", "frames.npy"):
        (root / f"link-{name}").symlink_to(root / name)
    (root / "outputs").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root``, links not followed: ``(mode, size, mtime_ns)``."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


EXISTING = ["run", "mine", "notes.txt", "frames.npy", "link-run", "link-mine", "link-notes.txt"]


def _path(work: Path, value: str, suffix: str) -> str:
    """``NEW`` (a fresh output name), an existing name in ``work``, or a literal value."""
    if value == "NEW":
        return str(work / "outputs" / f"new-{next(counter)}{suffix}")
    if value in EXISTING or value in ("model.pt", "nan.npy", "mnist.npy", "pretrained"):
        return str(work / value)
    return value


NUMBERS = ["1", "2", "0", "-1", "x", "", "1.5", "nan", "-0.5", "1e3"]
OPTIONS = {
    "evaluate": {
        "--checkpoint": ["model.pt", "frames.npy", "missing.pt", "run"],
        "--pretrained": ["pretrained", "mine", "missing", "frames.npy", "run"],
        "--data": ["moving_mnist", "frames.npy", "nan.npy", "mnist.npy", "nope", "run"],
        "--out": ["NEW", *EXISTING],
        "--num-samples": ["1", "2", "0", "x"],
        "--batch-size": NUMBERS,
        "--horizon": ["1", "2", "0", "-3"],
        "--thresholds": ["-0.3,2", "0.5", "a", "nan", "1,,2", "-1", "2,-2"],
        "--layout": ["NTHW", "TNHW", "samples", "record", "moving_mnist", "XYZ", ""],
        "--gifs": ["0", "1", "-1", "x"],
        "--data-range": ["1", "-1", "0", "nan", "x"],
        "--baselines": ["persistence", "zeros,persistence", "nope", ""],
        "--device": ["cpu", "cuda:7", "tpu", "meta", ""],
    },
    "predict": {
        "--checkpoint": ["model.pt", "frames.npy", "missing.pt"],
        "--pretrained": ["pretrained", "mine", "missing", "model.pt"],
        "--input": ["frames.npy", "nan.npy", "mnist.npy", "model.pt", "missing.npy", "mine"],
        "--out": ["NEW", *EXISTING],
        "--png": ["NEW", "mine", "run", "link-mine"],
        "--gif": ["NEW", "notes.txt", "link-notes.txt"],
        "--horizon": ["1", "2", "0", "-2", "x"],
        "--layout": ["NTHW", "TNHW", "THW", "NTCHW", "samples", "XYZ"],
        "--batch-size": NUMBERS,
        "--device": ["cpu", "cuda:7", "tpu"],
    },
    "export": {
        "--checkpoint": ["model.pt", "frames.npy", "missing.pt"],
        "--out": ["NEW", *EXISTING],
        "--formats": ["torchscript", "nope", "", "torchscript,torchscript"],
        "--horizon": ["1", "0", "x", "-1"],
        "--input-len": ["2", "0", "x"],
        "--frame-size": ["32,32", "32", "-32,32", "0,0", "x", "31,33"],
        "--tolerance": ["1e-3", "-1", "x", "nan"],
    },
}
SUFFIX = {"--out": ".npy", "--png": "", "--gif": ".gif"}
JUNK = ["--bogus", "stray", "a.b=1", "--layout"]


@st.composite
def command_lines(draw, command: str) -> list[str]:
    """Options of ``command`` (each list's first value is a good one, drawn half of the time
    except for output paths; required options, with --checkpoint or --pretrained, present most
    of the time), maybe ``--overwrite`` and a stray token, in a
    drawn order."""
    options = OPTIONS[command]
    sources = ["--checkpoint", "--pretrained"] if "--pretrained" in options else ["--checkpoint"]
    required = [draw(st.sampled_from(sources)), "--out"]
    required.append({"evaluate": "--data", "predict": "--input"}.get(command))
    chosen = [k for k in required if k and draw(st.integers(0, 9)) > 0]
    chosen += draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True))
    pairs = [
        [key, draw(st.sampled_from(options[key]))]
        if key in SUFFIX  # outputs: every existing path as often as a new one
        else [key, draw(st.just(options[key][0]) | st.sampled_from(options[key]))]
        for key in dict.fromkeys(chosen)
    ]
    if draw(st.booleans()):
        pairs.append(["--overwrite"])
    if draw(st.integers(0, 4)) == 0:
        pairs.append([draw(st.sampled_from(JUNK))])
    return [token for pair in draw(st.permutations(pairs)) for token in pair]


def _run(work: Path, command: str, tokens: list[str], capsys) -> None:
    argv, outputs = [command], []
    for i, token in enumerate(tokens):
        option = tokens[i - 1] if i else ""
        if option in (
            "--checkpoint",
            "--pretrained",
            "--data",
            "--input",
            "--out",
            "--png",
            "--gif",
        ):
            token = _path(work, token, SUFFIX.get(option, ""))
            if option in SUFFIX:
                outputs.append(token)
        argv.append(token)
    before = snapshot(work)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracing warnings on success
        code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 1, 2), (argv, code, err)
    after = snapshot(work)
    if code:
        lines = [line for line in err.splitlines() if "warning:" not in line]
        assert len(lines) == 1 and lines[0].startswith(f"convlstm {command}: error: "), (argv, err)
        assert after == before, argv  # a refused command changes nothing
        return
    kept = [str(Path(out).relative_to(work)) for out in outputs if Path(out).is_relative_to(work)]

    def outside(entries: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
        return {k: v for k, v in entries.items() if not any(
            k == out or k.startswith(out + os.sep) for out in kept) and k != "outputs"}  # fmt: skip

    assert outside(after) == outside(before), argv


@QUICK
@given(tokens=command_lines("evaluate"))
@example(
    ["--pretrained", "pretrained", "--data", "moving_mnist", "--num-samples", "1", "--out", "NEW"]
)
def test_evaluate_command_lines(work: Path, capsys, tokens: list[str]) -> None:
    _run(work, "evaluate", tokens, capsys)


@QUICK
@given(tokens=command_lines("predict"))
@example(["--input", "frames.npy", "--pretrained", "pretrained", "--out", "NEW"])
def test_predict_command_lines(work: Path, capsys, tokens: list[str]) -> None:
    _run(work, "predict", tokens, capsys)


@settings(QUICK, max_examples=8)
@given(tokens=command_lines("export"))
def test_export_command_lines(work: Path, capsys, tokens: list[str]) -> None:
    _run(work, "export", tokens, capsys)


class Reached(Exception):
    """Raised instead of training: the command line was accepted."""


OVERRIDES = ["optim.epochs=1", "run.device=cpu", "model.hidden_channels=[4]", "optim.lr=-1",
             "model.name=unet", "optim.epochs", "=1", "bogus", "run.progress=maybe",
             "data.input_len=3"]  # fmt: skip


TRAIN_OPTIONS = [
    ["--out", "NEW"], ["--out", "run"], ["--out", "mine"], ["--out", "link-run"],
    ["--out", "notes.txt"], ["--config", "moving_mnist"], ["--config", "nope.toml"],
    ["--config", "frames.npy"], ["--resume"], ["--overwrite"], ["--bogus"],
]  # fmt: skip


@QUICK
@given(
    options=st.lists(st.sampled_from(TRAIN_OPTIONS), max_size=3, unique_by=lambda pair: pair[0]),
    overrides=st.lists(st.sampled_from(OVERRIDES), max_size=3, unique=True),
    data=st.data(),
)
def test_train_command_lines(work: Path, capsys, monkeypatch, options, overrides, data) -> None:
    import convlstm.training

    def reached(config, out, **kwargs):
        raise Reached

    monkeypatch.setattr(convlstm.training, "train", reached)
    items = [*options, *([item] for item in overrides)]
    tokens = [token for pair in data.draw(st.permutations(items)) for token in pair]
    tokens = [_path(work, t, "") if t in ("NEW", *EXISTING) else t for t in tokens]
    tokens = [str(work / t) if t == "frames.npy" else t for t in tokens]
    before = snapshot(work)
    capsys.readouterr()
    try:
        code = main(["train", *tokens])
    except Reached:
        code = 0
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err
    if code:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("convlstm train: error: "), (tokens, err)
    assert snapshot(work) == before


@settings(QUICK, max_examples=5)
@given(
    st.permutations([["--rounds", "x"], ["--threads", "-"], ["--quick"], ["--bogus"]]).map(
        lambda pairs: [t for pair in pairs[:2] for t in pair]
    )
)
def test_benchmark_bad_command_lines(work: Path, capsys, tokens: list[str]) -> None:
    before = snapshot(work)
    capsys.readouterr()
    code = main(["benchmark", *tokens])
    err = capsys.readouterr().err
    assert code == 2, (tokens, code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convlstm benchmark: error: "), err
    assert snapshot(work) == before
