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


_TRANSFORM_PARAMETERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "log": ("offset",),
    "dbz": ("a", "b", "zero_dbz"),
}


class RainTransform:
    """A model's data transform as a small serialisable object: ``"none"``, ``"log"`` or ``"dbz"``.

    ``forward`` maps rain rates (mm/h) to the model's units (:func:`log_rain` or
    :func:`rain_to_dbz` with the given parameters, or the identity), ``inverse`` maps back
    to mm/h. :meth:`to_dict` / :meth:`from_dict` turn it into plain JSON-able data (a
    checkpoint can carry it), and ``RainTransform.from_dict(t.to_dict()) == t``.

    Args:
        kind: ``"none"``, ``"log"`` or ``"dbz"``.
        **params: the transform's parameters (``offset`` for ``"log"``; ``a``, ``b``,
            ``zero_dbz`` for ``"dbz"``), defaults as in the functions.

    Example:
        >>> t = RainTransform("log", offset=0.1)
        >>> t.to_dict()
        {'kind': 'log', 'offset': 0.1}
        >>> RainTransform.from_dict(t.to_dict()) == t
        True
        >>> t.inverse(t(np.array([0.0, 5.0]))).round(6).tolist()
        [0.0, 5.0]
    """

    def __init__(self, kind: str = "none", **params: float) -> None:
        if kind not in _TRANSFORM_PARAMETERS:
            raise ValueError(f"kind must be one of {sorted(_TRANSFORM_PARAMETERS)}, got {kind!r}")
        unknown = sorted(set(params) - set(_TRANSFORM_PARAMETERS[kind]))
        if unknown:
            raise ValueError(
                f"RainTransform({kind!r}) takes parameters {_TRANSFORM_PARAMETERS[kind]}, "
                f"got {unknown}"
            )
        self.kind = kind
        self.params = {name: check_float(value, name) for name, value in params.items()}

    def __call__(self, r: ArrayLike) -> ArrayLike:
        """Same as :meth:`forward`."""
        return self.forward(r)

    def forward(self, r: ArrayLike) -> ArrayLike:
        """Rain rate (mm/h) to the model's units."""
        if self.kind == "log":
            return log_rain(r, **self.params)
        if self.kind == "dbz":
            return rain_to_dbz(r, **self.params)
        return _float(r)

    def inverse(self, y: ArrayLike) -> ArrayLike:
        """The model's units back to rain rate (mm/h)."""
        if self.kind == "log":
            return inverse_log_rain(y, **self.params)
        if self.kind == "dbz":
            return dbz_to_rain(y, **self.params)
        return _float(y)

    def to_dict(self) -> dict[str, str | float]:
        """``{"kind": ..., **params}``: plain data for a checkpoint or a JSON file."""
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, data: dict[str, str | float]) -> RainTransform:
        """The transform described by :meth:`to_dict`'s output."""
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"a RainTransform dict needs a 'kind' key, got {data!r}")
        params = {k: v for k, v in data.items() if k != "kind"}
        return cls(str(data["kind"]), **params)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RainTransform) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"RainTransform({self.kind!r}{params})"
