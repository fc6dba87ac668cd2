"""Physical units for rain models: a model that takes and returns rain rates in mm/h.

A radar model is trained on transformed rain rates (``log10(R + 0.01)`` for the ``radar``
recipe, or dBZ), but a forecaster reads, thresholds and scores rain in mm/h. Training stores
the data's transform in the checkpoint (key ``data_transform``, a
:meth:`~convlstm.data.transforms.RainTransform.to_dict`, written for rain datasets: the
synthetic ``radar`` data and radar archives), and
``convlstm.checkpoint.load_model(path, physical_units=True)`` wraps such a model in
:class:`PhysicalUnits`, so ``model(inputs_mm_h, horizon)`` returns mm/h. Checkpoints without
the key (older ones, and models of other data) load unwrapped and keep their model units.

>>> import torch
>>> from convlstm.data.transforms import RainTransform
>>> from convlstm.models import EncoderForecaster
>>> net = EncoderForecaster(hidden_channels=[4], output_activation="identity")
>>> model = PhysicalUnits(net, RainTransform("log"))
>>> forecast = model(torch.rand(1, 3, 1, 16, 16) * 10, 2)  # mm/h in, mm/h out
>>> tuple(forecast.shape), bool((forecast >= 0).all()), model.units
((1, 2, 1, 16, 16), True, 'mm/h')
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from convlstm.data.transforms import TRANSFORMS, RainTransform

__all__ = ["RAIN_UNITS", "PhysicalUnits", "data_transform", "rain_transform", "untransformed"]

RAIN_UNITS = "mm/h"


class PhysicalUnits(nn.Module):
    """``model`` seen in mm/h: inputs go through ``transform``, forecasts through its inverse.

    Args:
        model: a forecaster ``model(inputs (B, T_in, C, H, W), horizon, **kwargs) ->
            (B, horizon, C, H, W)`` working in the transform's units (e.g. an
            :class:`~convlstm.models.EncoderForecaster`).
        transform: the data transform the model was trained with.

    Calling it with rain rates ``(B, T_in, C, H, W)`` in mm/h returns ``(B, horizon, C, H,
    W)`` in mm/h (``transform.inverse`` of the model's output; for ``"log"`` and ``"dbz"``
    that is >= 0). Attributes it does not define (``in_channels``, ``patch_size``,
    ``config``, ``check_frames``, ...) are the wrapped model's; ``units`` is ``"mm/h"``.
    """

    units = RAIN_UNITS

    def __init__(self, model: nn.Module, transform: RainTransform) -> None:
        super().__init__()
        if not isinstance(transform, RainTransform):
            raise TypeError(f"transform must be a RainTransform, got {type(transform).__name__}")
        self.model = model
        self.transform = transform

    def forward(self, inputs: Tensor, horizon: int, **kwargs: Any) -> Tensor:
        """Forecast ``horizon`` frames in mm/h from rain rates ``inputs`` in mm/h."""
        return self.transform.inverse(self.model(self.transform(inputs), horizon, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def _base(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def data_transform(dataset: Dataset) -> RainTransform | None:
    """The :class:`RainTransform` of a rain dataset (synthetic ``radar`` data or a radar
    archive), ``RainTransform("none")`` for rain rates in mm/h; ``None`` for other data, or
    for a transform other than the named ones (``"log"``, ``"dbz"`` with their default
    parameters, or a :class:`RainTransform`), which a checkpoint cannot describe.

    >>> from convlstm.data import get_dataset
    >>> data_transform(get_dataset("radar", num_samples=1, size=32, transform="log"))
    RainTransform('log')
    """
    from convlstm.data.archive import RadarArchiveDataset
    from convlstm.data.radar import SyntheticRadar

    dataset = _base(dataset)
    if not isinstance(dataset, SyntheticRadar | RadarArchiveDataset):
        return None
    transform = getattr(dataset, "transform", None)
    if transform is None:
        return RainTransform("none")
    if isinstance(transform, RainTransform):
        return transform
    for kind, function in TRANSFORMS.items():
        if transform is function:
            return RainTransform(kind)
    return None


def rain_transform(checkpoint: dict[str, Any]) -> RainTransform | None:
    """The data transform a checkpoint dict carries (``data_transform``), or ``None``."""
    stored = checkpoint.get("data_transform")
    return None if stored is None else RainTransform.from_dict(dict(stored))


def untransformed(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run's configuration whose data options have no ``transform``: the same
    data, read in mm/h (for scoring a :class:`PhysicalUnits` model).

    >>> untransformed({"data": {"name": "radar", "options": {"transform": "log", "size": 32}}})
    {'data': {'name': 'radar', 'options': {'size': 32}}}
    """
    data = dict(config["data"])
    for key in ("options", "val_options"):
        if key in data:
            data[key] = {k: v for k, v in data[key].items() if k != "transform"}
    return {**config, "data": data}
