"""The encoder-forecaster model and the model registry."""

from __future__ import annotations

import pytest
import torch

from convlstm.models import EncoderForecaster, create_model, list_models, model_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> EncoderForecaster:
    return EncoderForecaster(
        **{"hidden_channels": [6, 5], "kernel_size": [3, 1], "patch_size": 2, **overrides}
    )


def test_horizon_is_a_call_time_argument() -> None:
    torch.manual_seed(0)
    model = tiny()
    for steps_in, horizon in [(4, 1), (4, 3), (2, 7)]:
        out = model(torch.rand(2, steps_in, 1, 8, 8), horizon)
        assert out.shape == (2, horizon, 1, 8, 8)
    with pytest.raises(ValueError, match="horizon must be greater than zero"):
        model(torch.rand(2, 4, 1, 8, 8), 0)


def test_longer_horizon_extends_the_shorter_forecast() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.rand(2, 4, 1, 8, 8)
    torch.testing.assert_close(model(x, 5)[:, :2], model(x, 2))


def test_patching_round_trips() -> None:
    model = create_model("moving_mnist", hidden_channels=[4])
    x = torch.rand(2, 3, 1, 64, 64)
    patches = model.patch(x)
    assert patches.shape == (2, 3, 64, 8, 8)
    assert torch.equal(model.unpatch(patches), x)
    assert torch.equal(tiny(patch_size=1).patch(x), x)


def test_output_range_and_residual() -> None:
    x = torch.rand(2, 3, 1, 8, 8)
    with torch.no_grad():
        out = tiny()(x, 2)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    residual = tiny(residual=True, output_activation="identity")
    with torch.no_grad():
        for p in residual.readout.parameters():
            p.zero_()
    torch.testing.assert_close(residual(x, 3), x[:, -1:].expand(-1, 3, -1, -1, -1))
    with pytest.raises(ValueError, match="residual=True needs output_activation"):
        tiny(residual=True)


def test_teacher_forcing_feeds_the_ground_truth() -> None:
    torch.manual_seed(0)
    model = tiny()
    x, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 4, 1, 8, 8)
    free = model(x, 4)
    forced = model(x, 4, targets=targets, teacher_forcing=1.0)
    forced_other = model(x, 4, targets=targets.flip(0), teacher_forcing=1.0)
    torch.testing.assert_close(forced[:, 0], free[:, 0])  # step 0 reads the last input frame
    assert not torch.allclose(forced[:, 1:], free[:, 1:])
    assert not torch.allclose(forced[:, 1:], forced_other[:, 1:])
    torch.testing.assert_close(model(x, 4, targets=targets, teacher_forcing=0.0), free)
    with pytest.raises(ValueError, match="needs targets"):
        model(x, 4, teacher_forcing=0.5)


@pytest.mark.parametrize(("readout", "readout_hidden"), [("concat", 0), ("top", 0), ("top", 7)])
def test_every_parameter_gets_a_gradient(readout: str, readout_hidden: int) -> None:
    model = tiny(readout=readout, readout_kernel=3, readout_hidden=readout_hidden)
    model(torch.rand(2, 3, 1, 8, 8), 2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_input_checks_name_the_problem() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.rand(2, 3, 2, 8, 8), 2)
    with pytest.raises(ValueError, match="multiple of patch_size=2"):
        model(torch.rand(2, 3, 1, 7, 8), 2)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(torch.rand(3, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="kernel_size must be an int or one per layer"):
        tiny(kernel_size=[3])
    with pytest.raises(ValueError, match="readout_hidden must be an integer >= 0"):
        tiny(readout_hidden=-2)


def test_registry() -> None:
    assert list_models() == ["moving_mnist", "moving_mnist_large", "radar"]
    large = model_config("moving_mnist_large")
    assert large["hidden_channels"] == [128] * 4 and large["kernel_size"] == 5
    assert large["patch_size"] == 4
    with pytest.raises(ValueError, match="valid models: moving_mnist, moving_mnist_large, radar"):
        create_model("convlstm9000")
    with pytest.raises(ValueError, match=r"unknown model parameter.*hidden"):
        create_model("moving_mnist", hiden_channels=[3])
    model = create_model("radar", hidden_channels=[4])
    rebuilt = EncoderForecaster(**model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_tiny_model_overfits_a_few_sequences() -> None:
    torch.manual_seed(0)
    frames = torch.zeros(4, 6, 1, 8, 8)
    for b in range(4):  # a bright 2x2 square moving one pixel per frame
        for t in range(6):
            frames[b, t, 0, 1 + b : 3 + b, t : t + 2] = 1.0
    inputs, targets = frames[:, :3], frames[:, 3:]
    model = tiny(hidden_channels=[16], kernel_size=3, patch_size=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(inputs, 3), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5  # well below the ~0.06 of predicting an empty frame
