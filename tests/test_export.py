"""TorchScript and ONNX export: outputs match PyTorch, files are written atomically."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convlstm.export
from convlstm.export import ExportCheckError, export_model
from convlstm.models import EncoderForecaster
from test_predict import run_command, tiny_checkpoint

HORIZON = 2


@pytest.fixture(scope="module")
def model() -> EncoderForecaster:
    torch.manual_seed(0)
    return EncoderForecaster(1, [4], 3, patch_size=4)


@pytest.fixture
def example() -> torch.Tensor:
    return torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _expected(model: EncoderForecaster, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(inputs, HORIZON).numpy()


def _force_legacy_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the dynamo exporter fail (and be fast), as on setups where it is unavailable."""
    export = torch.onnx.export

    def legacy_only(*args: object, dynamo: bool = True, **kwargs: object) -> object:
        if dynamo:
            raise RuntimeError("dynamo exporter unavailable (injected)")
        return export(*args, dynamo=False, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", legacy_only)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript(model: EncoderForecaster, example: torch.Tensor, tmp_path: Path) -> None:
    model.train()
    differences = export_model(model, tmp_path / "out", example, HORIZON, ["torchscript"])
    assert model.training  # mode restored
    assert set(differences) == {"torchscript"} and differences["torchscript"] < 1e-4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "export.json",
        "model.torchscript.pt",
    ]
    loaded = torch.jit.load(str(tmp_path / "out" / "model.torchscript.pt"))
    inputs = torch.rand(3, 3, 1, 16, 16)  # another batch size
    np.testing.assert_allclose(loaded(inputs).detach().numpy(), _expected(model, inputs), atol=1e-5)
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["input_shape"] == ["B", 3, 1, 16, 16]
    assert info["output_shape"] == ["B", HORIZON, 1, 16, 16]
    assert info["formats"]["torchscript"]["max_abs_diff"] == differences["torchscript"]


def test_onnx_dynamo(model: EncoderForecaster, example: torch.Tensor, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    differences = export_model(model, tmp_path / "out", example, HORIZON, ["onnx"])
    assert differences["onnx"] is not None and differences["onnx"] < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    inputs = torch.rand(3, 3, 1, 16, 16)
    (output,) = session.run(None, {"inputs": inputs.numpy()})
    np.testing.assert_allclose(output, _expected(model, inputs), atol=1e-5)
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["formats"]["onnx"]["exporter"] == "torch.onnx.export (dynamo)"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_advection_model_exports(example: torch.Tensor, tmp_path: Path) -> None:
    """The semi-Lagrangian readout (grid sampling) survives both exporters."""
    torch.manual_seed(0)
    model = EncoderForecaster(
        1,
        [4],
        3,
        patch_size=2,
        readout="top",
        residual=True,
        advection=True,
        output_activation="identity",
    )
    with torch.no_grad():
        model.readout.bias[4:] = torch.tensor([0.7, -0.4])  # a real displacement
    formats = ["torchscript"] + (["onnx"] if importlib.util.find_spec("onnxruntime") else [])
    differences = export_model(model, tmp_path / "out", example, HORIZON, formats)
    assert all(d is not None and d < 1e-4 for d in differences.values()), differences


def test_onnx_legacy_fallback(
    model: EncoderForecaster, example: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    _force_legacy_onnx(monkeypatch)
    differences = export_model(model, tmp_path / "out", example, HORIZON, ["onnx"])
    assert differences["onnx"] is not None and differences["onnx"] < 1e-4
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["formats"]["onnx"]["exporter"].startswith("torch.onnx.export (legacy")


def test_onnx_check_skipped_without_onnxruntime(
    model: EncoderForecaster,
    example: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _force_legacy_onnx(monkeypatch)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert export_model(model, tmp_path / "out", example, HORIZON, ["onnx"]) == {"onnx": None}
    assert "onnx: check skipped (onnxruntime is not installed)" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_failed_check_writes_nothing(
    model: EncoderForecaster, example: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong(path: Path, inputs: torch.Tensor) -> np.ndarray:
        return _expected(model, inputs) + 0.01

    monkeypatch.setitem(convlstm.export._RUNNERS, "torchscript", wrong)
    with pytest.raises(ExportCheckError, match=r"differs from the PyTorch model by 0\.01"):
        export_model(model, tmp_path / "out", example, HORIZON, ["torchscript"])
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_and_bad_formats(
    model: EncoderForecaster, example: torch.Tensor, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(model, tmp_path / "out", example, HORIZON, ["torchscript"])
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match="formats must be some of torchscript, onnx"):
        export_model(model, tmp_path / "x", example, HORIZON, ["tflite"])
    with pytest.raises(ValueError, match=r"\(B, T_in, C, H, W\)"):
        export_model(model, tmp_path / "x", example[0], HORIZON, ["torchscript"])


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    argv = ["export", "--checkpoint", ckpt, "--out", str(tmp_path / "e"), "--horizon", "3"]
    assert run_command([*argv, "--formats", "torchscript"]) == 0
    assert "max |difference|" in capsys.readouterr().out
    info = json.loads((tmp_path / "e" / "export.json").read_text())
    assert info["input_shape"] == ["B", 3, 1, 32, 32] and info["horizon"] == 3  # trained shape
    for extra, code, message in [
        (["--formats", "torchscript"], 2, "already exists (pass --overwrite"),
        (["--formats", "tflite", "--overwrite"], 2, "--formats: formats must be some of"),
        (["--frame-size", "30,30", "--overwrite"], 1, "multiple of patch_size=8"),
        (["--frame-size", "a,b", "--overwrite"], 2, "--frame-size: 'a' is not a number"),
    ]:
        assert run_command([*argv, *extra]) == code
        err = capsys.readouterr().err
        assert err.startswith("convlstm export: error: ") and err.count("\n") == 1, err
        assert message in err, err
