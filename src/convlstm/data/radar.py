"""Synthetic radar rain-rate sequences for precipitation nowcasting (:class:`SyntheticRadar`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import (
    check_float,
    check_index,
    check_int,
    check_range,
    check_sample_bytes,
    check_seed,
    check_size,
)
from .transforms import Transform, resolve_transform

_SMOOTH_EXPONENT = 5.0  # spectrum of the growth/decay and motion-perturbation fields
_MIN_SIZE = 8
_TABLE_SIZE = 4096  # latent -> rain lookup points
# float32 arrays the size of one sample held while generating it; an evolving structure
# (``lifetime``) is made and sampled one frame at a time, so it adds none.
_WORK_ARRAYS = 8


@dataclass(frozen=True)
class RadarSequence:
    """One generated sequence with its true motion.

    Attributes:
        rain: rain rate in mm/h, float32 ``(T, H, W)``.
        motion: velocity used to advect frame ``t`` to frame ``t + 1`` in pixels per
            frame, float32 ``(T - 1, 2, H, W)``, components ``(dy, dx)``.
    """

    rain: np.ndarray
    motion: np.ndarray


@functools.cache
def _spectral_filter(shape: tuple[int, int], exponent: float, scale_break: float) -> np.ndarray:
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    k = np.maximum(np.hypot(ky, kx), 1 / scale_break)
    k[0, 0] = 1.0  # the mean (k = 0) is removed below
    amplitude = k ** (-exponent / 2)
    amplitude[0, 0] = 0.0
    amplitude.setflags(write=False)
    return amplitude


def power_law_noise(
    rng: np.random.Generator,
    count: int,
    shape: tuple[int, int],
    exponent: float,
    scale_break: float = math.inf,
) -> np.ndarray:
    """Periodic Gaussian fields whose power spectrum falls as ``|k|**-exponent``.

    White noise is filtered in Fourier space (as in pysteps' FFT noise generator) and
    each field is standardised to zero mean and unit variance. The spectrum is flat at
    wavelengths longer than ``scale_break`` pixels (the large-scale break seen in radar
    spectra), so no single scale dominates the field.

    Args:
        rng: random generator.
        count: number of fields.
        shape: ``(H, W)`` of each field.
        exponent: spectral exponent ``beta`` (0 gives white noise; ~3 is radar-like).
        scale_break: wavelength in pixels beyond which the spectrum is flat.

    Returns:
        float64 array ``(count, H, W)``.

    Example:
        >>> fields = power_law_noise(np.random.default_rng(0), 2, (32, 32), 3.0)
        >>> fields.shape, bool(abs(fields.std() - 1) < 1e-6)
        ((2, 32, 32), True)
    """
    white = rng.standard_normal((count, *shape))
    spectrum = np.fft.rfft2(white) * _spectral_filter(shape, exponent, scale_break)
    return _standardise(np.fft.irfft2(spectrum, s=shape))


def _standardise(fields: np.ndarray) -> np.ndarray:
    """Fields ``(..., H, W)`` shifted and scaled in place to zero mean and unit variance."""
    fields -= fields.mean(axis=(-2, -1), keepdims=True)
    fields /= fields.std(axis=(-2, -1), keepdims=True)
    return fields


@functools.cache
def _lagrangian_correlation(
    shape: tuple[int, int],
    exponent: float,
    scale_break: float,
    lifetime: float,
    lifetime_exponent: float,
) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) weights on the ``rfft2`` grid of ``shape``: ``rho`` and the innovation filter.

    ``rho(k) = exp(-1 / tau(L))`` with ``tau(L) = lifetime * (L / scale_break) **
    lifetime_exponent`` at wavelength ``L = 1 / |k|``. The innovation filter is
    ``sqrt(1 - rho**2)`` times the spectral filter scaled so that filtered unit white noise
    has unit expected variance.
    """
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    rho = np.exp(-((np.hypot(ky, kx) * scale_break) ** lifetime_exponent) / lifetime)
    amplitude = _spectral_filter(shape, exponent, scale_break)
    # Expected variance of irfft2(rfft2(white) * amplitude): the mean of amplitude**2 over
    # the full FFT grid, where the rfft2 columns other than 0 and W/2 stand for two modes.
    modes = np.full(amplitude.shape[1], 2.0)
    modes[0] = 1.0
    modes[-1] = 1.0 if shape[1] % 2 == 0 else 2.0
    variance = (amplitude**2 * modes).sum() / math.prod(shape)
    innovation = np.sqrt(1 - rho**2) * amplitude / math.sqrt(variance)
    rho.setflags(write=False)
    innovation.setflags(write=False)
    return rho, innovation


def evolving_power_law_noise(
    rng: np.random.Generator,
    first: np.ndarray,
    frames: int,
    exponent: float,
    scale_break: float,
    lifetime: float,
    lifetime_exponent: float = 1.0,
) -> Iterator[np.ndarray]:
    """Evolve a :func:`power_law_noise` field in time, small scales fastest (as S-PROG models).

    Each Fourier mode ``k`` follows an AR(1) process,
    ``s_t(k) = rho(k) s_{t-1}(k) + sqrt(1 - rho(k)**2) e_t(k)``, whose innovation ``e_t`` is
    new white noise filtered like :func:`power_law_noise`, so the spectrum stays
    ``|k|**-exponent`` (flat beyond ``scale_break``) at every step. Mode ``k`` has lag-1
    correlation ``rho(k) = exp(-1 / tau(1 / |k|))``: a feature of wavelength ``L`` pixels
    has the lifetime (e-folding time of its correlation) ``tau(L) = lifetime *
    (L / scale_break) ** lifetime_exponent`` steps. Each frame is standardised to zero
    mean and unit variance.

    Args:
        rng: random generator (one innovation field is drawn per step after the first).
        first: the first frame, a standardised :func:`power_law_noise` field ``(H, W)``.
        frames: number of frames yielded, ``first`` included.
        exponent: spectral exponent of ``first``.
        scale_break: spectral break of ``first`` in pixels, also the wavelength at which
            features live ``lifetime`` steps (finite).
        lifetime: lifetime in steps of features of wavelength ``scale_break``.
        lifetime_exponent: power ``p`` of the lifetime-size law ``tau ~ L**p``.

    Yields:
        float64 frames ``(H, W)``, ``first`` first; each is computed when requested, so
        memory does not grow with ``frames``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> first = power_law_noise(rng, 1, (32, 32), 3.0, 16.0)[0]
        >>> fields = np.stack(list(evolving_power_law_noise(rng, first, 5, 3.0, 16.0, 4.0)))
        >>> fields.shape, bool(np.allclose(fields.std(axis=(1, 2)), 1))
        ((5, 32, 32), True)
    """
    shape = first.shape
    rho, innovation = _lagrangian_correlation(
        shape, exponent, scale_break, lifetime, lifetime_exponent
    )
    yield first
    spectrum = np.fft.rfft2(first)  # the state keeps unit expected variance
    for _ in range(frames - 1):
        spectrum *= rho
        spectrum += innovation * np.fft.rfft2(rng.standard_normal(shape))
        yield _standardise(np.fft.irfft2(spectrum, s=shape))


def _interpolate(fields: np.ndarray, y: np.ndarray, x: np.ndarray, *, periodic: bool) -> np.ndarray:
    """Bilinear interpolation of ``fields (K, H, W)`` at points ``y, x``: ``(K, *y.shape)``.

    With ``periodic`` the coordinates wrap around; otherwise points beyond an edge take
    the edge's values.
    """
    count, height, width = fields.shape
    if periodic:
        y0, x0 = np.floor(y), np.floor(x)
        r0, c0 = y0.astype(np.intp) % height, x0.astype(np.intp) % width
        r1, c1 = (r0 + 1) % height, (c0 + 1) % width
    else:
        y, x = np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)
        y0, x0 = np.minimum(np.floor(y), height - 2), np.minimum(np.floor(x), width - 2)
        r0, c0 = y0.astype(np.intp), x0.astype(np.intp)
        r1, c1 = r0 + 1, c0 + 1
    wy, wx = (y - y0).astype(fields.dtype), (x - x0).astype(fields.dtype)
    r0, r1 = r0 * width, r1 * width
    out = np.empty((count, *y.shape), dtype=fields.dtype)
    for k, field in enumerate(fields.reshape(count, -1)):
        # 1-D takes per field are ~3x faster than one fancy-indexed gather of all fields.
        top = field.take(r0 + c0)
        top += (field.take(r0 + c1) - top) * wx
        bottom = field.take(r1 + c0)
        bottom += (field.take(r1 + c1) - bottom) * wx
        top += (bottom - top) * wy
        out[k] = top
    return out


class SyntheticRadar(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Radar-like rain-rate sequences (mm/h) for precipitation nowcasting.

    How a sequence is made (all randomness from ``np.random.default_rng([seed, i])``, so
    sequence ``i`` is a pure function of ``(seed, i)``, as in :class:`MovingMNIST`):

    1. **Structure.** A periodic Gaussian field with a power-law spectrum
       ``|k|**-spectral_exponent`` (FFT-filtered white noise, as pysteps does), flat
       beyond wavelengths of ``scale_break`` pixels, on a domain twice the frame size.
       By default it is static in the Lagrangian frame (only advected). With ``lifetime``
       it evolves (:func:`evolving_power_law_noise`): each Fourier mode is an AR(1)
       process whose lag-1 correlation falls with the mode's wavelength ``L``, features
       living ``tau(L) = lifetime * (L / scale_break) ** lifetime_exponent`` frames (the
       e-folding time of their Lagrangian correlation), as S-PROG and STEPS model radar
       rain (Seed, 2003, J. Appl. Meteor. 42, 381-388; Bowler, Pierce and Seed, 2006,
       Q. J. R. Meteorol. Soc. 132, 2127-2155). The spectrum and the distribution of every
       frame are unchanged; only the temporal evolution changes.
    2. **Growth and decay.** A very smooth field (spectrum ``|k|**-5``) that rotates
       into a second one with period ``growth_decay_period`` frames is mixed in with
       weight ``growth_decay``. Through step 4 it shifts log-rain up or down smoothly
       and slowly (a multiplicative growth/decay factor) and lets rain areas appear and
       vanish.
    3. **Motion.** A velocity field: a uniform part with a speed drawn from
       ``speed_range`` (pixels/frame) and a random direction that turns slowly (up to
       ``max_turn`` degrees per frame), plus a smooth static perturbation with RMS
       ``motion_variation * speed``. Steps 1-2 are advected by semi-Lagrangian backward
       tracing: the displacement to each pixel's origin is accumulated frame by frame
       (bilinear interpolation) and the fields are sampled once per frame at the
       origin, so repeated interpolation does not blur them.
    4. **Rain.** The latent field is standardised over the first frame and pixels above
       its ``1 - wet_fraction`` normal quantile are wet. Wet values are mapped, keeping
       their order, onto a lognormal distribution with mean ``mean_rain`` mm/h and
       log-standard deviation ``rain_sigma``; rain therefore rises continuously from 0
       at the edge of each rain area to its peaks in the cores. Dry pixels are 0.

    So the first frame of every sequence has about ``wet_fraction`` of its pixels wet,
    with a wet-pixel mean near ``mean_rain`` mm/h; both drift slowly over the sequence as
    rain advects in and out, grows and decays. The true velocities come from
    :meth:`generate`.

    Imitated: power-law spatial correlation with a large-scale break, intermittency
    (sharp wet/dry boundary), skewed (lognormal) intensities, smooth advection with a
    slowly turning direction, slow Lagrangian growth and decay; with ``lifetime``, the
    scale-dependent Lagrangian decorrelation of radar rain (small features appear and
    vanish within minutes, large ones persist for hours).
    Not imitated: convective initiation and life cycles as coherent cells (with
    ``lifetime`` small features appear and vanish, but as Gaussian fluctuations),
    orographic or diurnal effects, anisotropic or banded structures, the evolution of
    small scales by default (they are only advected), radar artefacts (clutter, beam
    blockage, attenuation, range effects) and a detection threshold (rates just above 0
    occur at rain-area edges). Rain leaving the frame comes back after travelling twice
    the frame size (periodic domain).

    Physical scale: read with 2 km pixels and 5-minute frames, the default speeds are
    12-72 km/h. Radar rain decorrelates in the Lagrangian frame roughly in proportion to
    its scale: Germann and Zawadzki (2004, J. Appl. Meteor. 43, 74-89) find the scale
    below which Lagrangian persistence has lost its skill grows with lead time by about
    1 km/min (a feature of ``L`` km lives about ``L`` minutes, ``lifetime_exponent`` 1;
    Germann and Zawadzki, 2002, Mon. Wea. Rev. 130, 2859-2873, for the method), and
    Ruzanski and Chandrasekar (2012, J. Appl. Meteor. Climatol. 51, 838-850) a linear
    relation between lifetime and scale down to 0.5 km. At 2 km and 5 minutes this is
    ``lifetime=12.8`` frames at the default ``scale_break`` of 32 pixels (64 km, 64
    minutes) with ``lifetime_exponent=1``: 8 km features then live 1.6 frames (lag-1
    correlation 0.54) and 128 km features 25.6 frames (0.96).

    Args:
        num_samples: dataset length.
        input_len: input frames ``T_in``.
        output_len: target frames ``T_out``.
        size: frame ``(H, W)`` or an int (square), each >= 8.
        wet_fraction: fraction of wet pixels in the first frame, in (0, 1).
        mean_rain: mean rain rate of wet pixels, mm/h.
        rain_sigma: standard deviation of ``ln(rain)`` over wet pixels.
        spectral_exponent: power-law exponent ``beta`` of the rain structure (>= 0).
        scale_break: wavelength in pixels beyond which the spectrum is flat; default
            half the smaller frame side.
        speed_range: ``(low, high)`` advection speed in pixels per frame.
        max_turn: largest turning rate of the mean motion, degrees per frame.
        motion_variation: RMS of the spatial motion perturbation relative to the speed.
        growth_decay: weight in [0, 1) of the growth/decay field (0 = pure advection).
        growth_decay_period: frames for the growth/decay field to complete a cycle.
        lifetime: Lagrangian lifetime in frames of structure features of wavelength
            ``scale_break`` (> 0), or ``None`` (default) for a static structure that is
            only advected. The motion, the growth/decay fields and the first frame do not
            depend on it.
        lifetime_exponent: power ``p`` (>= 0) of the lifetime-size law
            ``tau(L) = lifetime * (L / scale_break) ** p``; used with ``lifetime``.
        transform: applied to inputs and targets: ``None`` (mm/h), ``"dbz"``
            (:func:`rain_to_dbz`), ``"log"`` (:func:`log_rain`) or a callable on tensors.
        seed: non-negative integer seed.

    Returns (per item):
        ``(inputs, targets)``: float32 tensors ``(input_len, 1, H, W)`` and
        ``(output_len, 1, H, W)``, in mm/h unless ``transform`` is set.

    Example:
        >>> ds = SyntheticRadar(num_samples=8, seed=0)
        >>> inputs, targets = ds[0]
        >>> inputs.shape, targets.shape
        (torch.Size([10, 1, 64, 64]), torch.Size([10, 1, 64, 64]))
        >>> bool(inputs.min() >= 0)
        True
    """

    def __init__(
        self,
        num_samples: int = 1000,
        *,
        input_len: int = 10,
        output_len: int = 10,
        size: int | tuple[int, int] = 64,
        wet_fraction: float = 0.3,
        mean_rain: float = 3.0,
        rain_sigma: float = 1.0,
        spectral_exponent: float = 3.0,
        scale_break: float | None = None,
        speed_range: tuple[float, float] = (0.5, 3.0),
        max_turn: float = 2.0,
        motion_variation: float = 0.2,
        growth_decay: float = 0.3,
        growth_decay_period: float = 40.0,
        lifetime: float | None = None,
        lifetime_exponent: float = 1.0,
        transform: str | Transform | None = None,
        seed: int = 0,
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=0)
        self.input_len = check_int(input_len, "input_len")
        self.output_len = check_int(output_len, "output_len")
        self.size = check_size(size, "size", minimum=_MIN_SIZE)
        self.wet_fraction = check_float(
            wet_fraction, "wet_fraction", low=0, high=1, low_open=True, high_open=True
        )
        self.mean_rain = check_float(mean_rain, "mean_rain", low=0, low_open=True)
        self.rain_sigma = check_float(rain_sigma, "rain_sigma", low=0, high=5)
        self.spectral_exponent = check_float(spectral_exponent, "spectral_exponent", low=0)
        self.scale_break = check_float(
            min(self.size) / 2 if scale_break is None else scale_break,
            "scale_break",
            low=1,
        )
        self.speed_range = check_range(speed_range, "speed_range")
        self.max_turn = check_float(max_turn, "max_turn", low=0)
        self.motion_variation = check_float(motion_variation, "motion_variation", low=0)
        self.growth_decay = check_float(growth_decay, "growth_decay", low=0, high=1, high_open=True)
        self.growth_decay_period = check_float(
            growth_decay_period, "growth_decay_period", low=0, low_open=True
        )
        self.lifetime = (
            None if lifetime is None else check_float(lifetime, "lifetime", low=0, low_open=True)
        )
        self.lifetime_exponent = check_float(lifetime_exponent, "lifetime_exponent", low=0)
        self.transform = resolve_transform(transform)
        self.seed = check_seed(seed)
        frames = self.input_len + self.output_len
        check_sample_bytes((_WORK_ARRAYS, frames, *self.size), "SyntheticRadar")
        self._threshold = -NormalDist().inv_cdf(self.wet_fraction)
        self._log_median = math.log(self.mean_rain) - self.rain_sigma**2 / 2
        self._table = self._rain_table()

    def __len__(self) -> int:
        return self.num_samples

    def _origins(
        self, rng: np.random.Generator, perturbation: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the motion; return it ``(T-1, 2, H, W)`` and each pixel's origin rows, cols."""
        height, width = self.size
        frames = self.input_len + self.output_len
        speed = rng.uniform(*self.speed_range)
        heading = rng.uniform(0, 2 * np.pi)
        turn = np.deg2rad(rng.uniform(-self.max_turn, self.max_turn))
        angle = heading + turn * np.arange(frames - 1)
        mean_motion = speed * np.stack([np.sin(angle), np.cos(angle)], axis=1)  # (T-1, 2)
        motion = mean_motion[:, :, None, None] + perturbation * (self.motion_variation * speed)
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
        displacement = np.zeros((frames, 2, height, width))
        for t in range(1, frames):
            v = motion[t - 1]
            back = _interpolate(displacement[t - 1], rows - v[0], cols - v[1], periodic=False)
            displacement[t] = back - v
        return motion, rows + displacement[:, 0], cols + displacement[:, 1]

    def generate(self, index: int) -> RadarSequence:
        """Return sequence ``index`` in mm/h with its true motion (see :class:`RadarSequence`).

        Example:
            >>> seq = SyntheticRadar(num_samples=1, size=32).generate(0)
            >>> seq.rain.shape, seq.motion.shape
            ((20, 32, 32), (19, 2, 32, 32))
        """
        index = check_index(index, self.num_samples, "SyntheticRadar")
        rng = np.random.default_rng([self.seed, index])
        height, width = self.size
        frames = self.input_len + self.output_len
        domain = (2 * height, 2 * width)
        structure = power_law_noise(rng, 1, domain, self.spectral_exponent, self.scale_break)
        smooth = power_law_noise(rng, 4, domain, _SMOOTH_EXPONENT)
        motion, origin_rows, origin_cols = self._origins(rng, smooth[2:, :height, :width])
        # Each frame samples the Lagrangian fields at its pixels' origins: (K, T, H, W).
        sampled = _interpolate(
            smooth[:2].astype(np.float32), origin_rows, origin_cols, periodic=True
        )
        if self.lifetime is None:
            lagrangian = _interpolate(
                structure.astype(np.float32), origin_rows, origin_cols, periodic=True
            )[0]
        else:
            evolving = evolving_power_law_noise(
                rng,
                structure[0],
                frames,
                self.spectral_exponent,
                self.scale_break,
                self.lifetime,
                self.lifetime_exponent,
            )
            lagrangian = np.stack(
                [
                    _interpolate(field[None].astype(np.float32), rows, cols, periodic=True)[0]
                    for field, rows, cols in zip(evolving, origin_rows, origin_cols, strict=True)
                ]
            )

        phase = (2 * np.pi / self.growth_decay_period) * np.arange(frames)[:, None, None]
        growth = np.cos(phase) * sampled[0] + np.sin(phase) * sampled[1]
        latent = math.sqrt(1 - self.growth_decay**2) * lagrangian + self.growth_decay * growth
        latent = (latent - latent[0].mean()) / latent[0].std()
        rain = np.interp(latent, *self._table, left=0.0)
        return RadarSequence(rain.astype(np.float32), motion.astype(np.float32))

    def _rain_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Latent values from the wet threshold up to 9 or more and the rain rate of each.

        A wet latent value ``Z`` has upper-tail probability ``u = Q(Z) / Q(threshold)``
        among wet values (``Q`` the standard normal upper tail); it maps to the lognormal
        quantile with the same upper-tail probability. Tabulated once, interpolated later.
        """
        latent = np.linspace(self._threshold, max(self._threshold, 0.0) + 9.0, _TABLE_SIZE)
        tail = math.erfc(self._threshold / math.sqrt(2))
        normal = NormalDist()
        upper_tail = [math.erfc(z / math.sqrt(2)) / tail for z in latent[1:]]
        rain = [0.0] + [
            math.exp(self._log_median - self.rain_sigma * normal.inv_cdf(u)) for u in upper_tail
        ]
        return latent, np.array(rain)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.from_numpy(self.generate(index).rain).unsqueeze(1)
        if self.transform is not None:
            frames = self.transform(frames)
        return frames[: self.input_len], frames[self.input_len :]
