"""Forecasting models: the encoder-forecaster ConvLSTM of Shi et al. (2015) and a registry.

Shape legend: ``B`` batch, ``T_in`` input frames, ``C`` frame channels, ``H, W`` frame size,
``p`` the patch size; inside the model frames are ``(C*p*p, H/p, W/p)`` patches.

The model (:class:`EncoderForecaster`):

* optional space-to-depth patching (``patch_size=4`` turns a ``64×64×1`` frame into a
  ``16×16×16`` tensor, as in the paper) with :func:`torch.nn.functional.pixel_unshuffle`;
* an **encoder**, a :class:`~convlstm.layers.ConvLSTM2d` stack, reads the ``T_in`` input frames
  (its input convolutions are batched over time);
* a **forecaster**, a second stack of the same shape, starts from the encoder's final states and
  unrolls ``horizon`` steps. At each step it reads the previous frame (the last input frame, then
  its own prediction, or the ground truth under teacher forcing). With ``shared=True`` the
  encoder itself goes on as the forecaster;
* a **readout**, one small convolution from the forecaster's hidden states of *all* layers
  concatenated (the paper's choice; ``readout="top"`` uses the top layer only) to a frame.
  With ``residual=True`` the readout predicts the change from the previous frame; with
  ``advection=True`` as well, it also predicts a motion field that moves the previous frame
  first (a semi-Lagrangian step, as in optical-flow extrapolation and NowcastNet's evolution
  network), so rain keeps its sharp structure while it travels.

Every parameter takes part in every forward pass, so DistributedDataParallel needs no
``find_unused_parameters``.

>>> model = create_model("moving_mnist", hidden_channels=[8], kernel_size=3)
>>> model(torch.rand(2, 10, 1, 64, 64), horizon=3).shape
torch.Size([2, 3, 1, 64, 64])
"""

from __future__ import annotations

import copy
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convlstm._checks import check_choice, check_int, check_positive
from convlstm.layers import ConvLSTM2d
from convlstm.registry import Registry

__all__ = [
    "MODEL_PARAMETERS",
    "EncoderForecaster",
    "advect",
    "create_model",
    "list_models",
    "model_config",
    "register_model",
]

READOUTS = ("concat", "top")
OUTPUT_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


class EncoderForecaster(nn.Module):
    """Encoder-forecaster ConvLSTM (Shi et al., 2015) for sequence-to-sequence forecasting.

    Args:
        in_channels: channels ``C`` of the frames.
        hidden_channels: hidden channels per layer, one int per layer (the list's length is the
            depth). The encoder and the forecaster have the same layers.
        kernel_size: kernel of every layer (an int), or one int per layer.
        patch_size: space-to-depth factor ``p``; ``H`` and ``W`` must be multiples of it.
        readout: ``"concat"`` maps the hidden states of all forecaster layers, concatenated, to a
            frame (as in the paper); ``"top"`` uses the top layer only.
        readout_kernel: kernel of the readout's first convolution (odd: 1 or 3).
        readout_hidden: ``0`` maps hidden states to a frame with one convolution; ``N > 0``
            with that convolution to ``N`` channels, GELU and a 1x1 convolution to the frame's
            channels (a small decoder of each patch's pixels).
        residual: predict the difference from the previous frame instead of the frame.
        advection: with ``residual=True``, the readout also predicts a displacement field (2
            channels on the patch grid, interpolated bilinearly to pixels) and the previous
            frame is first moved along it: ``frame_t(x) = frame_{t-1}(x - d_t(x)) + change_t(x)``
            (bilinear, the border pixels extended outwards). The displacement starts at zero, so
            the untrained model starts from persistence like ``residual`` alone.
        output_activation: ``"sigmoid"`` for data in [0, 1], ``"identity"`` for unbounded data
            (required by ``residual=True``, whose sum of frame and change is not squashed).
        norm: normalisation of the ConvLSTM gates (``None``, ``"layer"``, ``"group"``).
        peephole: ``None`` or ``"channel"`` peepholes in every cell.
        shared: one stack both reads and forecasts (as in OpenSTL's ConvLSTM): its output after
            the last input frame gives the first forecast frame, and every later step reads the
            previous frame. ``False`` (default) uses separate encoder and forecaster stacks.
        checkpoint_steps: activation recomputation in every layer (see
            :class:`~convlstm.layers.ConvLSTM2d`): less memory in training, more time.

    Inputs: ``inputs, horizon, *, targets=None, teacher_forcing=0.0``
        - ``inputs``: ``(B, T_in, C, H, W)``.
        - ``horizon``: number of frames to forecast, chosen per call.
        - ``targets``: ``(B, T, C, H, W)`` with ``T >= horizon - 1`` ground-truth future frames,
          needed when ``teacher_forcing > 0``.
        - ``teacher_forcing``: probability, per sequence and step, of feeding the forecaster the
          ground-truth previous frame instead of its own prediction (scheduled sampling); it
          draws from torch's global generator.

    Output: ``(B, horizon, C, H, W)``.

    Example:
        >>> model = EncoderForecaster(1, [8, 8], [3, 3], patch_size=4)
        >>> x = torch.rand(2, 5, 1, 16, 16)
        >>> model(x, horizon=2).shape, model(x, horizon=7).shape
        (torch.Size([2, 2, 1, 16, 16]), torch.Size([2, 7, 1, 16, 16]))
        >>> y = model(x, 3, targets=torch.rand(2, 3, 1, 16, 16), teacher_forcing=0.5)
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: list[int] | int = 64,
        kernel_size: list[int] | int = 3,
        *,
        patch_size: int = 4,
        readout: str = "concat",
        readout_kernel: int = 1,
        readout_hidden: int = 0,
        residual: bool = False,
        advection: bool = False,
        output_activation: str = "sigmoid",
        norm: str | None = None,
        peephole: str | None = None,
        shared: bool = False,
        checkpoint_steps: bool = False,
    ) -> None:
        super().__init__()
        hidden = [hidden_channels] if isinstance(hidden_channels, int) else list(hidden_channels)
        if not hidden:
            raise ValueError("hidden_channels must list at least one layer, got []")
        for i, h in enumerate(hidden):
            check_positive(h, f"hidden_channels[{i}]")
        kernels = [kernel_size] * len(hidden) if isinstance(kernel_size, int) else list(kernel_size)
        if len(kernels) != len(hidden):
            raise ValueError(
                f"kernel_size must be an int or one per layer ({len(hidden)}), got {kernel_size}"
            )
        for i, k in enumerate(kernels):
            check_positive(k, f"kernel_size[{i}]")
        self.in_channels = check_positive(in_channels, "in_channels")
        self.patch_size = check_positive(patch_size, "patch_size")
        self.readout_mode = check_choice(readout, READOUTS, "readout")
        check_positive(readout_kernel, "readout_kernel")
        if readout_kernel % 2 == 0:
            raise ValueError(f"readout_kernel must be odd, got {readout_kernel}")
        check_int(readout_hidden, "readout_hidden", minimum=0)
        check_choice(output_activation, list(OUTPUT_ACTIVATIONS), "output_activation")
        if residual and output_activation != "identity":
            raise ValueError(
                'residual=True needs output_activation="identity" (a squashed sum of the '
                f"previous frame and the change would shift every pixel), got {output_activation!r}"
            )
        if advection and not residual:
            raise ValueError(
                "advection=True needs residual=True (the readout predicts the change after the "
                "previous frame has moved), got residual=False"
            )
        self.residual = bool(residual)
        self.advection = bool(advection)
        self.output_activation = output_activation
        self._activation = OUTPUT_ACTIVATIONS[output_activation]
        channels = in_channels * patch_size**2
        stack: dict[str, Any] = dict(
            norm=norm, peephole=peephole, checkpoint_steps=bool(checkpoint_steps)
        )
        self.encoder = ConvLSTM2d(channels, hidden, kernels, **stack)
        self.forecaster = None if shared else ConvLSTM2d(channels, hidden, kernels, **stack)
        readout_in = sum(hidden) if readout == "concat" else hidden[-1]
        motion = 2 if advection else 0
        self.readout = _readout(readout_in, channels + motion, readout_kernel, readout_hidden)
        if advection:  # no motion at first: the untrained model forecasts persistence
            last = [m for m in self.readout.modules() if isinstance(m, nn.Conv2d)][-1]
            with torch.no_grad():
                last.weight[channels:].zero_()
                typing.cast(Tensor, last.bias)[channels:].zero_()
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            hidden_channels=hidden,
            kernel_size=kernels,
            patch_size=patch_size,
            readout=readout,
            readout_kernel=readout_kernel,
            readout_hidden=readout_hidden,
            residual=self.residual,
            advection=self.advection,
            output_activation=output_activation,
            norm=norm,
            peephole=peephole,
            shared=bool(shared),
            checkpoint_steps=bool(checkpoint_steps),
        )
        """The constructor's arguments as plain Python values: ``EncoderForecaster(**config)``
        builds the same architecture."""

    def save_pretrained(self, folder: str | os.PathLike[str], **options: Any) -> Path:
        """Write this model to ``folder`` as ``model.safetensors``, ``config.json`` and a model
        card ``README.md`` (the Hugging Face Hub layout); ``options`` are those of
        :func:`convlstm.pretrained.save_pretrained` (``data=``, ``card=``, ...)."""
        from convlstm.pretrained import save_pretrained

        return save_pretrained(self, folder, **options)

    @classmethod
    def from_pretrained(
        cls, name_or_folder: str | os.PathLike[str], map_location: Any = "cpu"
    ) -> EncoderForecaster:
        """The trained model of a folder written by :meth:`save_pretrained`, or of a name whose
        weights ship with the package (:func:`convlstm.pretrained.list_pretrained`), in eval
        mode; no pickle is read, so no code runs on load."""
        from convlstm.pretrained import load_pretrained

        return load_pretrained(name_or_folder, map_location=map_location)[0]

    def patch(self, frames: Tensor) -> Tensor:
        """Space-to-depth: ``(B, T, C, H, W)`` -> ``(B, T, C*p*p, H/p, W/p)``."""
        if self.patch_size == 1:
            return frames
        b, t = frames.shape[:2]
        out = F.pixel_unshuffle(frames.flatten(0, 1), self.patch_size)
        return out.unflatten(0, (b, t))

    def unpatch(self, patches: Tensor) -> Tensor:
        """Depth-to-space, the inverse of :meth:`patch`: ``(B, T, C*p*p, h, w)`` -> ``(B, T, C, h*p, w*p)``."""
        if self.patch_size == 1:
            return patches
        b, t = patches.shape[:2]
        return F.pixel_shuffle(patches.flatten(0, 1), self.patch_size).unflatten(0, (b, t))

    def check_frames(self, frames: Tensor, name: str = "inputs") -> None:
        """Raise a clear error unless ``frames`` is ``(B, T, C, H, W)`` that this model accepts."""
        if not isinstance(frames, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(frames).__name__}")
        if frames.dim() != 5:
            raise ValueError(
                f"{name} must be (B, T, C, H, W) with 5 dimensions, got shape {tuple(frames.shape)}"
            )
        if frames.shape[2] != self.in_channels:
            raise ValueError(
                f"{name} must have in_channels={self.in_channels} channels (dim 2), "
                f"got shape {tuple(frames.shape)}"
            )
        h, w = frames.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"{name} frame size {h}x{w} must be a multiple of patch_size={self.patch_size}"
            )

    def forward(
        self,
        inputs: Tensor,
        horizon: int,
        *,
        targets: Tensor | None = None,
        teacher_forcing: float = 0.0,
        predict_inputs: bool = False,
    ) -> Tensor:
        """Forecast ``horizon`` frames after ``inputs``; see the class docstring for shapes.

        With ``predict_inputs=True`` (``readout="top"`` only) the output starts with the
        one-step-ahead predictions of input frames ``2..T_in`` made while reading the inputs:
        ``(B, T_in - 1 + horizon, C, H, W)``. Training on them as well gives the recurrent
        weights an easy, dense signal early on.
        """
        self.check_frames(inputs)
        check_positive(horizon, "horizon")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing}")
        if predict_inputs and self.readout_mode != "top":
            raise ValueError('predict_inputs=True needs readout="top"')
        truth = None
        if teacher_forcing > 0 and horizon > 1:
            if targets is None:
                raise ValueError("teacher_forcing > 0 needs targets (B, T >= horizon - 1, C, H, W)")
            self.check_frames(targets, "targets")
            if targets.shape[1] < horizon - 1 or targets.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"targets must be (B={inputs.shape[0]}, T >= {horizon - 1}, C, H, W), "
                    f"got shape {tuple(targets.shape)}"
                )
            truth = self.patch(targets[:, : horizon - 1])
        x = self.patch(inputs)
        encoded, states = self.encoder(x)
        outputs: list[Tensor] = []
        if predict_inputs:
            seen = encoded[:, :-1]  # the output at step t predicts frame t + 1
            frames = self._frame(seen.flatten(0, 1), x[:, :-1].flatten(0, 1))
            outputs.extend(frames.unflatten(0, seen.shape[:2]).unbind(1))
        previous = x[:, -1]
        forecaster = self.encoder if self.forecaster is None else self.forecaster
        for step in range(horizon):
            if step > 0 or self.forecaster is not None:  # a shared stack has read the last frame
                _, states = forecaster(previous.unsqueeze(1), states)
            frame = self._read(states, previous)
            outputs.append(frame)
            previous = frame
            if truth is not None and step < horizon - 1:
                previous = self._mix(frame, truth[:, step], teacher_forcing)
        return self.unpatch(torch.stack(outputs, dim=1))

    def _read(self, states: list[tuple[Tensor, Tensor]], previous: Tensor) -> Tensor:
        """One frame (patched) from the stack's states; ``previous`` is the frame before it."""
        if self.readout_mode == "concat":
            hidden = torch.cat([h for h, _ in states], dim=1)
        else:
            hidden = states[-1][0]
        return self._frame(hidden, previous)

    def _frame(self, hidden: Tensor, previous: Tensor) -> Tensor:
        """The readout: hidden states ``(N, hidden, h, w)`` and the frame before, patched
        ``(N, C*p*p, h, w)``, to the next frame, patched ``(N, C*p*p, h, w)``."""
        frame = self.readout(hidden)
        if self.advection:
            channels = previous.shape[1]
            previous = self._move(previous, frame[:, channels:])
            frame = frame[:, :channels]
        if self.residual:
            frame = frame + previous
        return self._activation(frame)

    def _move(self, previous: Tensor, displacement: Tensor) -> Tensor:
        """The patched frames ``(N, C*p*p, h, w)`` moved by ``displacement`` ``(N, 2, h, w)``
        (x then y, in pixels of the unpatched frame), interpolated from the patch grid."""
        p = self.patch_size
        if p == 1:
            return advect(previous, displacement)
        pixels = F.interpolate(displacement, scale_factor=p, mode="bilinear", align_corners=False)
        moved = advect(F.pixel_shuffle(previous, p), pixels)
        return F.pixel_unshuffle(moved, p)

    @staticmethod
    def _mix(prediction: Tensor, truth: Tensor, probability: float) -> Tensor:
        """Per sequence, the ground truth with ``probability``, else the prediction."""
        if probability >= 1.0:
            return truth
        take = torch.rand(truth.shape[0], device=truth.device) < probability
        return torch.where(take.view(-1, 1, 1, 1), truth.to(prediction.dtype), prediction)


def advect(frames: Tensor, displacement: Tensor) -> Tensor:
    """One semi-Lagrangian step: each pixel takes the value found ``displacement`` upstream,
    ``out[..., y, x] = frames[..., y - dy, x - dx]``, interpolated bilinearly; points outside
    the frame take the nearest border pixel's value.

    Args:
        frames: ``(N, C, H, W)``.
        displacement: ``(N, 2, H, W)``, the motion ``(dx, dy)`` in pixels per step (x along
            ``W``, y along ``H``).

    Returns:
        ``(N, C, H, W)``.

    >>> frames = torch.zeros(1, 1, 3, 4); frames[..., 1, 1] = 1.0
    >>> right = torch.zeros(1, 2, 3, 4); right[:, 0] = 1.0
    >>> advect(frames, right)[0, 0].round(decimals=4)
    tensor([[0., 0., 0., 0.],
            [0., 0., 1., 0.],
            [0., 0., 0., 0.]])
    """
    if frames.dim() != 4 or displacement.shape != (frames.shape[0], 2, *frames.shape[2:]):
        raise ValueError(
            f"advect needs frames (N, C, H, W) and displacement (N, 2, H, W), got "
            f"{tuple(frames.shape)} and {tuple(displacement.shape)}"
        )
    h, w = frames.shape[-2:]
    xs = torch.arange(w, device=frames.device, dtype=displacement.dtype).view(1, 1, w)
    ys = torch.arange(h, device=frames.device, dtype=displacement.dtype).view(1, h, 1)
    # grid_sample's coordinates with align_corners=False: pixel i of n is at (2i + 1) / n - 1
    grid_x = (2 * (xs - displacement[:, 0]) + 1) / w - 1
    grid_y = (2 * (ys - displacement[:, 1]) + 1) / h - 1
    grid = torch.stack((grid_x, grid_y), dim=-1).to(frames.dtype)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _readout(channels: int, frame_channels: int, kernel: int, hidden: int) -> nn.Module:
    """Hidden states ``(N, channels, h, w)`` -> patched frames ``(N, frame_channels, h, w)``."""
    padding = kernel // 2
    if not hidden:
        return nn.Conv2d(channels, frame_channels, kernel, padding=padding)
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel, padding=padding),
        nn.GELU(),
        nn.Conv2d(hidden, frame_channels, 1),
    )


MODEL_PARAMETERS: dict[str, Any] = {
    name: hint
    for name, hint in typing.get_type_hints(EncoderForecaster.__init__).items()
    if name != "return"
}
"""The model's configurable parameters and their types (used to type-check configurations)."""

_DEFAULTS: dict[str, Any] = dict(
    in_channels=1,
    hidden_channels=[64, 64],
    kernel_size=3,
    patch_size=4,
    readout="concat",
    readout_kernel=1,
    readout_hidden=0,
    residual=False,
    advection=False,
    output_activation="sigmoid",
    norm=None,
    peephole=None,
    shared=False,
    checkpoint_steps=False,
)

_MODELS: dict[str, dict[str, Any]] = {
    # The CPU default (configs/moving_mnist.toml gives its training recipe): 2 layers of 32
    # channels, 3x3 kernels on 8x8 patches (an 8x8 grid of 64 channels), a readout of the top
    # layer through 128 hidden channels (3x3 conv, GELU, 1x1 conv). Small and cheap per step:
    # within the main job's CPU budget more steps beat more channels, and 8x8 patches learn
    # nearly as much per step as 4x4 at a quarter the cost. The readout's hidden layer decodes
    # the 8x8 pixels of a patch: validation MSE 111.3 against 114.0 after 2,048 steps, for 13%
    # more time per step.
    "moving_mnist": dict(
        hidden_channels=[32, 32],
        kernel_size=3,
        patch_size=8,
        readout="top",
        readout_kernel=3,
        readout_hidden=128,
    ),
    # OpenSTL's ConvLSTM setting for Moving MNIST (GPU): 4 layers of 128 channels, 5x5
    # kernels, 4x4 patches; trained with scheduled sampling (configs/moving_mnist_large.toml).
    "moving_mnist_large": dict(
        hidden_channels=[128, 128, 128, 128],
        kernel_size=5,
        patch_size=4,
        readout="top",
        shared=True,
    ),
    # Radar rain rates (configs/radar.toml gives its training recipe): unbounded values, so no
    # squashing; each forecast frame is the previous frame moved along a predicted motion field
    # plus a predicted change (advection, residual), so the untrained model starts from
    # persistence, learns the motion and the growth and decay, and rain cores stay as sharp as
    # optical-flow extrapolation keeps them; 2 layers of 16 channels with layer-normalised gates,
    # 3x3 kernels on 2x2 patches, a 3x3 readout of the top layer (it sees the neighbouring
    # patches, where rain moving across a patch boundary comes from). Small, so that the
    # 15-minute recipe affords thousands of steps.
    "radar": dict(
        hidden_channels=[16, 16],
        kernel_size=3,
        patch_size=2,
        readout="top",
        readout_kernel=3,
        norm="layer",
        residual=True,
        advection=True,
        output_activation="identity",
    ),
}


_REGISTRY: Registry[dict[str, Any]] = Registry("model", _MODELS)
"""The built-in models above and those added with :func:`register_model`."""


def _check_parameters(config: dict[str, Any]) -> None:
    unknown = sorted(set(config) - set(MODEL_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown model parameter(s) {', '.join(unknown)}; valid parameters: "
            f"{', '.join(MODEL_PARAMETERS)}"
        )


def register_model(name: str, *, overwrite: bool = False, **config: Any) -> None:
    """Make a model configuration available by name to :func:`create_model` (and so to a
    training configuration's ``model.name``).

    Names are case-insensitive and ``-`` equals ``_``. ``config`` holds constructor arguments
    of :class:`EncoderForecaster`; those left out take the defaults of :data:`MODEL_PARAMETERS`.

    Args:
        name: the new model's name.
        overwrite: replace a model already registered as ``name``.
        **config: constructor arguments of :class:`EncoderForecaster`.

    Raises:
        ValueError: an unknown constructor argument, or ``name`` taken and ``overwrite`` false.

    >>> register_model("tiny", hidden_channels=[4], patch_size=2)
    >>> create_model("tiny").config["hidden_channels"]
    [4]
    """
    _check_parameters(config)
    _REGISTRY.register(name, copy.deepcopy(config), overwrite=overwrite)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`.

    >>> list_models()
    ['moving_mnist', 'moving_mnist_large', 'radar']
    """
    return _REGISTRY.names()


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full constructor arguments of model ``name`` with ``overrides`` applied.

    Raises:
        ValueError: unknown model name or parameter (the message lists the valid ones).

    >>> model_config("moving_mnist_large")["hidden_channels"]
    [128, 128, 128, 128]
    """
    registered = _REGISTRY.get(name)
    _check_parameters(overrides)
    return copy.deepcopy({**_DEFAULTS, **registered, **overrides})


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> EncoderForecaster:
    """Build the registered model ``name``, with constructor arguments ``overrides`` changed;
    with ``pretrained=True`` load its shipped trained weights instead (in eval mode; no
    overrides), or raise an error naming the models that ship weights.

    >>> create_model("radar", hidden_channels=[16]).config["output_activation"]
    'identity'
    >>> create_model("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'nope'; valid models: moving_mnist, moving_mnist_large, radar
    """
    if pretrained:
        if overrides:
            raise ValueError(
                f"pretrained=True loads the trained architecture; drop {', '.join(overrides)}"
            )
        model_config(name)  # an unknown name: the error lists the valid ones
        return EncoderForecaster.from_pretrained(name)
    return EncoderForecaster(**model_config(name, **overrides))
