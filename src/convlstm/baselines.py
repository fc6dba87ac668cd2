"""Baseline forecasters to compare a model against.

Every baseline has one signature, ``forecast(inputs, horizon) -> Tensor``: ``inputs`` is
a float tensor ``(B, T_in, C, H, W)`` of past frames and the result is ``(B, horizon, C,
H, W)``, on the device and with the dtype of ``inputs``. Extra options are keyword-only
with defaults, so :func:`functools.partial` adapts a baseline without changing its
signature.

* :func:`persistence`: the last input frame, repeated.
* :func:`zeros`: empty frames (no rain).
* :func:`climatology`: the mean of the input frames, or a given constant or mean field.
* :func:`optical_flow`: Lucas–Kanade motion and semi-Lagrangian extrapolation with
  pysteps, the standard precipitation nowcasting baseline. It needs pysteps and OpenCV, which
  the ``nowcast`` extra installs (``pip install "convlstm[nowcast]"``); without them it raises
  :class:`BaselineUnavailableError`, and :func:`available_baselines` leaves it out.
* :func:`sprog`: pysteps' S-PROG (Seed, 2003): the advected field's cascade levels evolve by
  AR(2) processes, so small scales decay with lead time. Same requirements as ``optical_flow``.

pysteps' import banner and its progress messages are not printed.

>>> import torch
>>> from convlstm.baselines import available_baselines, get_baseline
>>> inputs = torch.rand(2, 5, 1, 16, 16)
>>> for name in ("persistence", "zeros", "climatology"):
...     print(name, tuple(get_baseline(name)(inputs, 3).shape))
persistence (2, 3, 1, 16, 16)
zeros (2, 3, 1, 16, 16)
climatology (2, 3, 1, 16, 16)
>>> {"persistence", "zeros", "climatology"} <= set(available_baselines())
True
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
from collections.abc import Callable
from numbers import Integral
from typing import Any

import numpy as np
import torch
from torch import Tensor

from convlstm._pysteps import import_pysteps
from convlstm.registry import Registry, normalise_name

__all__ = [
    "BaselineUnavailableError",
    "Forecaster",
    "available_baselines",
    "climatology",
    "default_baselines",
    "describe_baseline",
    "get_baseline",
    "list_baselines",
    "optical_flow",
    "persistence",
    "register_baseline",
    "sprog",
    "zeros",
]

Forecaster = Callable[[Tensor, int], Tensor]
"""``forecast(inputs: (B, T_in, C, H, W), horizon: int) -> (B, horizon, C, H, W)``."""

_NOWCAST_HINT = 'install convlstm[nowcast], which brings both: pip install "convlstm[nowcast]"'


class BaselineUnavailableError(ImportError):
    """A baseline's optional dependencies are missing; the message says what to install."""


def _check_inputs(inputs: Tensor, horizon: int) -> tuple[int, int, int, int, int]:
    """Validate a forecaster's arguments and return the shape of the forecast."""
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"inputs must be a torch.Tensor of shape (B, T_in, C, H, W), "
            f"got {type(inputs).__name__}"
        )
    if inputs.dim() != 5 or 0 in inputs.shape:
        raise ValueError(
            f"inputs must be a non-empty 5-D tensor (B, T_in, C, H, W), "
            f"got shape {tuple(inputs.shape)}"
        )
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    if isinstance(horizon, bool) or not isinstance(horizon, Integral) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    batch, _, channels, height, width = inputs.shape
    return batch, int(horizon), channels, height, width


def persistence(inputs: Tensor, horizon: int) -> Tensor:
    """Repeat the last input frame ``horizon`` times.

    Args:
        inputs: past frames ``(B, T_in, C, H, W)``.
        horizon: number of frames to forecast.

    Returns:
        ``(B, horizon, C, H, W)``.

    >>> import torch
    >>> from convlstm.baselines import persistence
    >>> inputs = torch.arange(3.0).reshape(1, 3, 1, 1, 1)
    >>> persistence(inputs, 2).flatten().tolist()
    [2.0, 2.0]
    """
    _check_inputs(inputs, horizon)
    return inputs[:, -1:].repeat(1, horizon, 1, 1, 1)


def zeros(inputs: Tensor, horizon: int) -> Tensor:
    """Empty frames (all zeros): the "no rain" forecast.

    Args:
        inputs: past frames ``(B, T_in, C, H, W)`` (only their shape, dtype and device
            are used).
        horizon: number of frames to forecast.

    Returns:
        ``(B, horizon, C, H, W)`` of zeros.

    >>> import torch
    >>> from convlstm.baselines import zeros
    >>> zeros(torch.ones(2, 4, 1, 3, 3), 5).abs().sum().item()
    0.0
    """
    shape = _check_inputs(inputs, horizon)
    return inputs.new_zeros(shape)


def climatology(
    inputs: Tensor, horizon: int, *, field: float | Tensor | np.ndarray | None = None
) -> Tensor:
    """Forecast a fixed field at every lead time.

    Args:
        inputs: past frames ``(B, T_in, C, H, W)``.
        horizon: number of frames to forecast.
        field: the field to forecast: ``None`` (default) for the mean of each sequence's
            input frames, a constant, or a mean field (e.g. a training-set mean)
            broadcastable to ``(C, H, W)``.

    Returns:
        ``(B, horizon, C, H, W)``.

    >>> import torch
    >>> from convlstm.baselines import climatology
    >>> inputs = torch.tensor([1.0, 2.0, 6.0]).reshape(1, 3, 1, 1, 1)
    >>> climatology(inputs, 2).flatten().tolist()
    [3.0, 3.0]
    >>> climatology(inputs, 2, field=0.5).flatten().tolist()
    [0.5, 0.5]
    """
    shape = _check_inputs(inputs, horizon)
    if field is None:
        mean = inputs.mean(dim=1, keepdim=True)
    else:
        values = torch.as_tensor(field, dtype=inputs.dtype, device=inputs.device)
        frame = tuple(inputs.shape[2:])
        try:
            broadcast = torch.broadcast_shapes(values.shape, frame)
        except RuntimeError:
            broadcast = None
        if broadcast != frame:
            raise ValueError(
                f"field must be a number or broadcastable to (C, H, W) = {frame}, "
                f"got shape {tuple(values.shape)}"
            )
        mean = values.expand(frame)
    return mean.expand(shape).clone()


def _pysteps_methods() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """pysteps' Lucas–Kanade motion and semi-Lagrangian extrapolation methods.

    Raises:
        BaselineUnavailableError: when pysteps or OpenCV cannot be imported.
    """
    try:
        import_pysteps()  # without its banner
        importlib.import_module("cv2")  # pysteps' Lucas–Kanade is built on OpenCV
        from pysteps import extrapolation, motion
    except ImportError as error:
        raise BaselineUnavailableError(
            f"the optical_flow and sprog baselines need pysteps and OpenCV ({error}): {_NOWCAST_HINT}"
        ) from error
    return motion.get_method("LK"), extrapolation.get_method("semilagrangian")


def optical_flow(inputs: Tensor, horizon: int, *, outval: float = 0.0) -> Tensor:
    """Extrapolate the last frame along the motion of the input frames (pysteps).

    For each sequence and channel, pysteps estimates a motion field from the input frames
    with Lucas–Kanade (``pysteps.motion.get_method("LK")``) and advects the last frame
    with semi-Lagrangian extrapolation
    (``pysteps.extrapolation.get_method("semilagrangian")``), on the CPU in float64.

    Args:
        inputs: past frames ``(B, T_in, C, H, W)`` with ``T_in >= 2``.
        horizon: number of frames to forecast.
        outval: value of pixels advected in from outside the domain (0: no rain).

    Returns:
        ``(B, horizon, C, H, W)``.

    Raises:
        BaselineUnavailableError: pysteps or OpenCV is missing.

    >>> import torch
    >>> from convlstm.baselines import available_baselines, optical_flow
    >>> frames = torch.rand(1, 3, 1, 32, 32)
    >>> "optical_flow" not in available_baselines() or optical_flow(frames, 2).shape == (
    ...     1, 2, 1, 32, 32)
    True
    """
    shape = _check_inputs(inputs, horizon)
    if inputs.shape[1] < 2:
        raise ValueError(
            f"optical_flow needs at least 2 input frames (T_in >= 2), "
            f"got inputs of shape {tuple(inputs.shape)}"
        )
    estimate_motion, extrapolate = _pysteps_methods()
    frames = inputs.detach().to("cpu", torch.float64).numpy()
    forecast = np.empty(shape, dtype=np.float64)
    for b in range(shape[0]):
        for c in range(shape[2]):
            sequence = frames[b, :, c]
            velocity = estimate_motion(sequence)
            forecast[b, :, c] = extrapolate(sequence[-1], velocity, horizon, outval=outval)
    return torch.from_numpy(forecast).to(device=inputs.device, dtype=inputs.dtype)


def sprog(
    inputs: Tensor,
    horizon: int,
    *,
    rain_threshold: float = 0.1,
    n_cascade_levels: int = 6,
    ar_order: int = 2,
) -> Tensor:
    """pysteps' S-PROG nowcast of rain rates (mm/h): the field's spectral cascade, advected.

    Settings as in pysteps' S-PROG example: the frames go to dBR (``10 log10 R``, rain
    below ``rain_threshold`` mm/h set to -15 dBR, ``pysteps.utils.transformation.
    dB_transform``), Lucas–Kanade motion is estimated on them, and
    ``pysteps.nowcasts.sprog.forecast`` runs with ``precip_thr`` the threshold in dBR, an
    FFT cascade of ``n_cascade_levels`` Gaussian band-pass levels, an AR(``ar_order``)
    model per level from the last ``ar_order + 1`` frames, CDF probability matching and
    semi-Lagrangian advection; the result goes back to mm/h, rain below the threshold and
    pixels advected in from outside the domain being 0.

    Args:
        inputs: past rain rates ``(B, T_in, C, H, W)`` in mm/h (>= 0), ``T_in >= ar_order + 1``.
        horizon: number of frames to forecast.
        rain_threshold: smallest rain rate (mm/h) treated as rain.
        n_cascade_levels: cascade levels (6 in pysteps' examples; small frames need fewer).
        ar_order: order of the autoregressive model (1 or 2).

    Returns:
        ``(B, horizon, C, H, W)`` in mm/h.

    Raises:
        BaselineUnavailableError: pysteps or OpenCV is missing.
        ValueError: negative inputs (not rain rates) or too few input frames.
    """
    shape = _check_inputs(inputs, horizon)
    if inputs.shape[1] < ar_order + 1:
        raise ValueError(
            f"sprog with ar_order={ar_order} needs T_in >= {ar_order + 1} input frames, "
            f"got inputs of shape {tuple(inputs.shape)}"
        )
    if bool((inputs < 0).any()):
        raise ValueError("sprog forecasts rain rates in mm/h; inputs have negative values")
    estimate_motion, _ = _pysteps_methods()
    from pysteps.nowcasts import sprog as pysteps_sprog
    from pysteps.utils.transformation import dB_transform

    frames = inputs.detach().to("cpu", torch.float64).numpy()
    forecast = np.zeros(shape, dtype=np.float64)
    threshold_db = 10.0 * np.log10(rain_threshold)
    for b in range(shape[0]):
        for c in range(shape[2]):
            sequence = frames[b, -(ar_order + 1) :, c]
            if not (sequence[-1] >= rain_threshold).any():
                continue  # no rain to advect: the forecast stays dry
            db, _ = dB_transform(sequence, threshold=rain_threshold, zerovalue=-15.0)
            with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints its progress
                velocity = estimate_motion(db)
                out = pysteps_sprog.forecast(
                    db,
                    velocity,
                    horizon,
                    precip_thr=threshold_db,
                    n_cascade_levels=n_cascade_levels,
                    ar_order=ar_order,
                )
            rain, _ = dB_transform(out, threshold=threshold_db, inverse=True)
            forecast[b, :, c] = np.nan_to_num(rain, nan=0.0)
    return torch.from_numpy(forecast).to(device=inputs.device, dtype=inputs.dtype)


_BASELINES: dict[str, Forecaster] = {
    "persistence": persistence,
    "zeros": zeros,
    "climatology": climatology,
    "optical_flow": optical_flow,
    "sprog": sprog,
}
_REQUIREMENTS: dict[str, Callable[[], object]] = {
    "optical_flow": _pysteps_methods,
    "sprog": _pysteps_methods,
}
_REGISTRY: Registry[Forecaster] = Registry("baseline", _BASELINES, sort=False)
"""The built-in baselines above and those added with :func:`register_baseline`."""


def register_baseline(name: str, forecaster: Forecaster, *, overwrite: bool = False) -> None:
    """Make ``forecaster`` available by name to :func:`get_baseline` (and so to
    ``convlstm evaluate --baselines``).

    Args:
        name: the baseline's name (case-insensitive, ``-`` equals ``_``).
        forecaster: ``forecaster(inputs (B, T_in, C, H, W), horizon) -> (B, horizon, C, H, W)``.
        overwrite: replace a baseline already registered as ``name``.

    Raises:
        TypeError: ``forecaster`` is not callable.
        ValueError: ``name`` is taken and ``overwrite`` is false.

    >>> import torch
    >>> from convlstm.baselines import get_baseline, register_baseline
    >>> def halves(inputs, horizon):
    ...     return inputs[:, -1:].expand(-1, horizon, -1, -1, -1) / 2
    >>> register_baseline("halves", halves)
    >>> get_baseline("halves")(torch.ones(1, 2, 1, 4, 4), 3).unique()
    tensor([0.5000])
    """
    if not callable(forecaster):
        raise TypeError(f"forecaster must be callable, got {type(forecaster).__name__}")
    key = _REGISTRY.register(name, forecaster, overwrite=overwrite)
    _REQUIREMENTS.pop(key, None)  # a replaced built-in no longer needs its dependencies


def list_baselines() -> list[str]:
    """Names of all registered baselines, usable here or not.

    >>> from convlstm.baselines import list_baselines
    >>> list_baselines()
    ['persistence', 'zeros', 'climatology', 'optical_flow', 'sprog']
    """
    return _REGISTRY.names()


def available_baselines() -> list[str]:
    """Names of the baselines whose dependencies are installed here.

    A registered name missing from this list raises :class:`BaselineUnavailableError`
    from :func:`get_baseline`, whose message says what to install; print it to explain
    why a baseline is skipped.

    >>> from convlstm.baselines import available_baselines
    >>> available_baselines()[:3]
    ['persistence', 'zeros', 'climatology']
    """
    usable = []
    for name in _REGISTRY:
        try:
            _REQUIREMENTS.get(name, lambda: None)()
        except BaselineUnavailableError:
            continue
        usable.append(name)
    return usable


def get_baseline(name: str) -> Forecaster:
    """The baseline called ``name`` (see :func:`list_baselines`).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
        BaselineUnavailableError: the baseline's dependencies are missing here.

    >>> import torch
    >>> from convlstm.baselines import get_baseline
    >>> get_baseline("persistence")(torch.ones(1, 2, 1, 4, 4), 3).shape
    torch.Size([1, 3, 1, 4, 4])
    """
    forecaster = _REGISTRY.get(name)
    _REQUIREMENTS.get(normalise_name(name), lambda: None)()
    return forecaster


_RAIN_BASELINES = ("persistence", "zeros", "optical_flow", "sprog")


def default_baselines(rain: bool = False) -> list[str]:
    """The baselines a report compares a model with: ``persistence`` and ``zeros``, and for
    rain data (``rain=True``, values in mm/h) also the field's standard nowcasts,
    ``optical_flow`` and ``sprog``, when pysteps and OpenCV are installed.

    >>> default_baselines()
    ['persistence', 'zeros']
    """
    if not rain:
        return ["persistence", "zeros"]
    usable = set(available_baselines())
    return [name for name in _RAIN_BASELINES if name in usable]


def describe_baseline(name: str) -> dict[str, Any]:
    """What the baseline ``name`` does and with which settings, for a report:
    ``{"method": first line of its docstring, "settings": {option: default}}`` (its
    keyword-only options and their values; ``optical_flow`` and ``sprog`` also name the
    pysteps methods they call).

    >>> describe_baseline("persistence")
    {'method': 'Repeat the last input frame ``horizon`` times.', 'settings': {}}
    """
    forecaster = _REGISTRY.get(name)
    doc = (getattr(forecaster, "__doc__", None) or "").strip()
    settings: dict[str, Any] = {}
    try:
        parameters = list(inspect.signature(forecaster).parameters.values())
    except (TypeError, ValueError):  # a callable without a signature: no settings to show
        parameters = []
    for parameter in parameters:
        if parameter.kind is parameter.KEYWORD_ONLY and parameter.default is not parameter.empty:
            settings[parameter.name] = parameter.default
    extra = {
        "optical_flow": {"motion": "pysteps LK (Lucas-Kanade)", "extrapolation": "semilagrangian"},
        "sprog": {
            "motion": "pysteps LK (Lucas-Kanade)",
            "nowcast": "pysteps.nowcasts.sprog, on dBR, CDF probability matching",
        },
    }.get(normalise_name(name), {})
    return {"method": doc.splitlines()[0] if doc else name, "settings": {**extra, **settings}}
