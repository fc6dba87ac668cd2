"""Rain-rate transforms for precipitation nowcasting, for numpy arrays and torch tensors.

Each function is pure (returns a new array/tensor of the same type and floating dtype,
inputs are never modified) and comes with its exact inverse on the documented domain:

* :func:`rain_to_dbz` / :func:`dbz_to_rain`: reflectivity from a Z-R relation
  ``Z = a R^b`` (Marshall-Palmer ``a=200, b=1.6`` by default), ``dBZ = 10 log10 Z``.
* :func:`log_rain` / :func:`inverse_log_rain`: ``log10(R + offset)``.

:func:`resolve_transform` turns a name (``"dbz"``, ``"log"``), a callable or ``None``
into the callable applied by the datasets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from ._checks import check_float

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)
Transform = Callable[[torch.Tensor], torch.Tensor]


def _float(x: ArrayLike) -> ArrayLike:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def rain_to_dbz(r: ArrayLike, a: float = 200.0, b: float = 1.6, zero_dbz: float = 0.0) -> ArrayLike:
    """Convert rain rate (mm/h) to reflectivity (dBZ) with ``Z = a R^b``.

    ``dBZ = 10 log10(a) + 10 b log10(R)``, clipped from below at ``zero_dbz``: dry pixels
    and rain weaker than ``(10**(zero_dbz/10) / a) ** (1/b)`` mm/h (0.036 mm/h with the
    defaults) get ``zero_dbz``, so the result is finite.

    Args:
        r: rain rate >= 0, any shape (numpy array or torch tensor).
        a, b: Z-R coefficients (Marshall-Palmer by default).
        zero_dbz: floor of the result, used for dry pixels.

    Returns:
        dBZ, same shape and type as ``r``.

    :func:`dbz_to_rain` inverts it exactly (to floating-point rounding) for ``r == 0``
    and for ``r`` above the floor's rain rate.

    Example:
        >>> rain_to_dbz(np.array([0.0, 1.0, 10.0]))
        array([ 0.        , 23.01029996, 39.01029996])
    """
    x = _float(r)
    if isinstance(x, torch.Tensor):
        dbz = 10 * math.log10(a) + 10 * b * torch.log10(x)
        return torch.clamp(dbz, min=zero_dbz)
    with np.errstate(divide="ignore"):
        dbz = 10 * math.log10(a) + 10 * b * np.log10(x)
    return np.maximum(dbz, zero_dbz).astype(x.dtype, copy=False)


def dbz_to_rain(
    dbz: ArrayLike, a: float = 200.0, b: float = 1.6, zero_dbz: float = 0.0
) -> ArrayLike:
    """Convert reflectivity (dBZ) to rain rate (mm/h); inverse of :func:`rain_to_dbz`.

    ``R = (10**(dBZ/10) / a) ** (1/b)``; values at or below ``zero_dbz`` map to 0.

    Example:
        >>> r = np.array([0.0, 0.5, 12.0])
        >>> np.allclose(dbz_to_rain(rain_to_dbz(r)), r)
        True
    """
    x = _float(dbz)
    if isinstance(x, torch.Tensor):
        rain = torch.pow(10.0, (x - 10 * math.log10(a)) / (10 * b))
        return torch.where(x > zero_dbz, rain, torch.zeros_like(rain))
    rain = np.power(10.0, (x - 10 * math.log10(a)) / (10 * b)).astype(x.dtype, copy=False)
    return np.where(x > zero_dbz, rain, 0).astype(x.dtype, copy=False)


def log_rain(r: ArrayLike, offset: float = 0.01) -> ArrayLike:
    """``log10(r + offset)``: a finite log transform of rain rate (0 mm/h gives ``log10(offset)``).

    Args:
        r: rain rate >= 0 (numpy array or torch tensor).
        offset: positive constant added before the logarithm.

    Example:
        >>> log_rain(np.array([0.0, 0.99]))
        array([-2.,  0.])
    """
    offset = check_float(offset, "offset", low=0.0, low_open=True)
    x = _float(r)
    if isinstance(x, torch.Tensor):
        return torch.log10(x + offset)
    return np.log10(x + offset).astype(x.dtype, copy=False)


def inverse_log_rain(y: ArrayLike, offset: float = 0.01) -> ArrayLike:
    """Inverse of :func:`log_rain`: ``max(10**y - offset, 0)``.

    Example:
        >>> r = np.array([0.0, 0.2, 30.0])
        >>> np.allclose(inverse_log_rain(log_rain(r)), r)
        True
    """
    offset = check_float(offset, "offset", low=0.0, low_open=True)
    x = _float(y)
    if isinstance(x, torch.Tensor):
        return torch.clamp(torch.pow(10.0, x) - offset, min=0.0)
    return np.maximum(np.power(10.0, x) - offset, 0).astype(x.dtype, copy=False)


TRANSFORMS: dict[str, Transform] = {"dbz": rain_to_dbz, "log": log_rain}


def resolve_transform(transform: str | Transform | None) -> Transform | None:
    """Return the callable for ``transform``: a name in ``TRANSFORMS``, a callable, or ``None``.

    Example:
        >>> resolve_transform("log") is log_rain
        True
    """
    if transform is None or callable(transform):
        return transform
    if isinstance(transform, str) and transform in TRANSFORMS:
        return TRANSFORMS[transform]
    raise ValueError(
        f"transform must be None, a callable or one of {sorted(TRANSFORMS)}, got {transform!r}"
    )
