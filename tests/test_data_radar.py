"""Synthetic radar: reproducibility, documented statistics, recoverable motion, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data import (
    SyntheticRadar,
    dbz_to_rain,
    evolving_power_law_noise,
    inverse_log_rain,
    log_rain,
    power_law_noise,
    rain_to_dbz,
)


def test_items_shapes_units_and_determinism():
    ds = SyntheticRadar(num_samples=6, size=(24, 32), input_len=4, output_len=3, seed=11)
    inputs, targets = ds[2]
    assert inputs.shape == (4, 1, 24, 32) and targets.shape == (3, 1, 24, 32)
    assert inputs.dtype == torch.float32 and inputs.min() >= 0
    again = SyntheticRadar(num_samples=6, size=(24, 32), input_len=4, output_len=3, seed=11)
    assert ds.generate(2).rain.tobytes() == again.generate(2).rain.tobytes()
    assert ds.generate(2).rain.tobytes() != ds.generate(3).rain.tobytes()
    other_seed = SyntheticRadar(num_samples=6, size=(24, 32), input_len=4, output_len=3, seed=12)
    assert ds.generate(2).rain.tobytes() != other_seed.generate(2).rain.tobytes()


@pytest.mark.parametrize(("wet_fraction", "mean_rain"), [(0.3, 3.0), (0.5, 6.0)])
def test_wet_fraction_and_intensity_match_the_arguments(wet_fraction, mean_rain):
    ds = SyntheticRadar(num_samples=10, wet_fraction=wet_fraction, mean_rain=mean_rain, seed=1)
    rain = np.stack([ds.generate(i).rain for i in range(len(ds))])  # (N, T, H, W)
    first = rain[:, 0]
    first_fraction = (first > 0).mean(axis=(1, 2))
    assert np.abs(first_fraction - wet_fraction).max() < 0.05
    assert abs((rain > 0).mean() - wet_fraction) < 0.06
    wet_means = [frame[frame > 0].mean() for frame in first]
    assert abs(np.mean(wet_means) / mean_rain - 1) < 0.15
    log_std = np.log(rain[rain > 0]).std()
    assert 0.8 < log_std < 1.2  # rain_sigma = 1
    assert rain.max() < 50 * mean_rain


def _shift(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Integer displacement (dy, dx) of ``current`` relative to ``previous`` by phase correlation."""
    a = previous - previous.mean()
    b = current - current.mean()
    cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    correlation = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
    peak = np.array(np.unravel_index(np.argmax(correlation), correlation.shape))
    size = np.array(correlation.shape)
    return np.where(peak > size // 2, peak - size, peak)


def test_motion_is_recoverable_from_consecutive_frames():
    ds = SyntheticRadar(num_samples=4, speed_range=(2.0, 4.0), seed=3)
    errors = []
    for i in range(len(ds)):
        sequence = ds.generate(i)
        frames = log_rain(sequence.rain)
        for t in range(0, 19, 3):
            true = sequence.motion[t].mean(axis=(1, 2))
            errors.append(np.abs(_shift(frames[t], frames[t + 1]) - true))
    errors = np.array(errors)
    assert errors.max() <= 1.0
    assert errors.mean() < 0.5


def test_pure_advection_moves_every_frame_by_the_true_velocity():
    ds = SyntheticRadar(
        num_samples=1,
        speed_range=(3.0, 3.0),
        max_turn=0.0,
        motion_variation=0.0,
        growth_decay=0.0,
        seed=4,
    )
    sequence = ds.generate(0)
    velocity = sequence.motion[0, :, 0, 0]
    np.testing.assert_allclose(
        sequence.motion,
        np.broadcast_to(velocity[None, :, None, None], sequence.motion.shape),
        atol=1e-6,
    )
    assert np.hypot(*velocity) == pytest.approx(3.0, abs=1e-5)
    frames = log_rain(sequence.rain)
    total = _shift(frames[0], frames[6])
    assert np.abs(total - 6 * velocity).max() <= 0.5 + 1e-6


def test_power_law_noise_has_the_requested_spectral_slope():
    fields = power_law_noise(np.random.default_rng(0), 8, (64, 64), 3.0)
    power = (np.abs(np.fft.fft2(fields)) ** 2).mean(axis=0)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij"))
    band = (k > 0.05) & (k < 0.4)
    slope = np.polyfit(np.log(k[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.2)


def test_default_output_is_unchanged():
    """Values of the default generator before ``lifetime`` existed (results stay reproducible)."""
    sequence = SyntheticRadar(num_samples=2, seed=0).generate(1)
    points = ([0, 4, 8, 13, 16, 19], [0, 10, 58, 10, 53, 63], [13, 44, 13, 22, 6, 58])
    expected = [1.0398603677749634, 3.457998037338257, 1.987532138824463, 12.605224609375]
    expected += [0.37438079714775085, 0.27821215987205505]
    np.testing.assert_allclose(sequence.rain[points], expected, rtol=1e-6)
    assert sequence.rain.astype(np.float64).sum() == pytest.approx(62939.1601664921, rel=1e-6)
    assert (sequence.rain > 0).mean() == 0.31458740234375
    np.testing.assert_allclose(
        sequence.motion[[0, -1], :, 5, 7].ravel(),
        [-0.18042153120040894, 1.0076682567596436, -0.2542301416397095, 1.0070115327835083],
        rtol=1e-6,
    )


def _wavenumbers(shape: tuple[int, int]) -> np.ndarray:
    """``|k|`` in cycles per pixel on the ``rfft2`` grid of ``shape``."""
    return np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])


def test_evolving_noise_decorrelates_each_scale_as_its_lifetime_says():
    shape, beta, scale_break, lifetime = (64, 64), 3.0, 16.0, 4.0
    k = _wavenumbers(shape)
    rho = np.exp(-k * scale_break / lifetime)  # lifetime_exponent = 1
    power = np.maximum(k, 1 / scale_break) ** -beta
    bands = [(0.02, 0.04), (0.06, 0.1), (0.15, 0.25), (0.3, 0.5)]
    cross, energy_before, energy_after = np.zeros((3, len(bands)))
    rng = np.random.default_rng(0)
    for _ in range(6):
        first = power_law_noise(rng, 1, shape, beta, scale_break)[0]
        frames = evolving_power_law_noise(rng, first, 30, beta, scale_break, lifetime)
        spectra = np.fft.rfft2(np.stack(list(frames)))  # (T, H, W // 2 + 1)
        for b, (low, high) in enumerate(bands):
            band = (k >= low) & (k < high)
            before, after = spectra[:-1, band], spectra[1:, band]
            cross[b] += np.real(before * after.conj()).sum()
            energy_before[b] += (np.abs(before) ** 2).sum()
            energy_after[b] += (np.abs(after) ** 2).sum()
    measured = cross / np.sqrt(energy_before * energy_after)
    expected = [
        (rho * power)[(k >= low) & (k < high)].sum() / power[(k >= low) & (k < high)].sum()
        for low, high in bands
    ]
    np.testing.assert_allclose(measured, expected, atol=0.04)
    assert np.all(np.diff(measured) < -0.1)  # small scales decorrelate faster


def test_evolving_noise_keeps_the_spectrum():
    shape, rng = (64, 64), np.random.default_rng(1)
    last = []
    for _ in range(8):
        first = power_law_noise(rng, 1, shape, 3.0, 16.0)[0]
        *_, field = evolving_power_law_noise(rng, first, 12, 3.0, 16.0, 2.0, 1.5)
        last.append(field)
    power = (np.abs(np.fft.rfft2(np.stack(last))) ** 2).mean(axis=0)
    k = _wavenumbers(shape)
    band = (k > 0.08) & (k < 0.4)
    slope = np.polyfit(np.log(k[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.2)
    np.testing.assert_allclose(np.stack(last).std(axis=(1, 2)), 1.0)


def test_lifetime_evolves_only_the_structure():
    options = {"num_samples": 4, "size": 32, "seed": 7}
    static = SyntheticRadar(**options).generate(2)
    evolving = SyntheticRadar(**options, lifetime=3.0).generate(2)
    np.testing.assert_array_equal(evolving.motion, static.motion)
    np.testing.assert_array_equal(evolving.rain[0], static.rain[0])
    assert np.abs(evolving.rain[-1] - static.rain[-1]).mean() > 0.1 * static.rain[-1].mean()
    again = SyntheticRadar(**options, lifetime=3.0)
    assert again.generate(2).rain.tobytes() == evolving.rain.tobytes()
    assert again.generate(3).rain.tobytes() != evolving.rain.tobytes()
    nearly_static = SyntheticRadar(**options, lifetime=1e12).generate(2)
    np.testing.assert_allclose(nearly_static.rain, static.rain, rtol=1e-3, atol=2e-3)


def test_transform_option_applies_to_inputs_and_targets():
    plain = SyntheticRadar(num_samples=2, size=16, input_len=2, output_len=2)
    for name, function in [("dbz", rain_to_dbz), ("log", log_rain)]:
        transformed = SyntheticRadar(
            num_samples=2, size=16, input_len=2, output_len=2, transform=name
        )
        for got, mm_per_h in zip(transformed[1], plain[1], strict=True):
            assert torch.equal(got, function(mm_per_h))
    doubled = SyntheticRadar(
        num_samples=2, size=16, input_len=2, output_len=2, transform=lambda x: 2 * x
    )
    assert torch.equal(doubled[0][0], 2 * plain[0][0])
    with pytest.raises(ValueError, match=r"dbz.*log.*'db'"):
        SyntheticRadar(transform="db")


@settings(max_examples=25, deadline=None, database=None)
@given(st.lists(st.floats(0.04, 500.0) | st.just(0.0), min_size=1, max_size=30))
def test_dbz_transform_inverts_exactly(values):
    rain = np.array(values)
    np.testing.assert_allclose(dbz_to_rain(rain_to_dbz(rain)), rain, rtol=1e-12)
    tensor = torch.tensor(values, dtype=torch.float32)
    torch.testing.assert_close(dbz_to_rain(rain_to_dbz(tensor)), tensor, rtol=1e-5, atol=0)


@settings(max_examples=25, deadline=None, database=None)
@given(st.lists(st.floats(0.0, 500.0), min_size=1, max_size=30), st.sampled_from([0.01, 0.1, 1.0]))
def test_log_transform_inverts_exactly(values, offset):
    rain = np.array(values)
    np.testing.assert_allclose(
        inverse_log_rain(log_rain(rain, offset), offset), rain, rtol=1e-12, atol=1e-15
    )
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(
        inverse_log_rain(log_rain(tensor, offset), offset), tensor, rtol=1e-12, atol=1e-15
    )


def test_transforms_are_pure_and_keep_type_and_dtype():
    rain = np.array([0.0, 0.02, 1.0, 40.0], dtype=np.float32)
    copy = rain.copy()
    dbz = rain_to_dbz(rain)
    assert dbz.dtype == np.float32 and np.isfinite(dbz).all()
    np.testing.assert_array_equal(rain, copy)
    assert dbz[0] == dbz[1] == 0.0  # dry and below-floor rain share the floor
    assert dbz_to_rain(dbz)[1] == 0.0
    np.testing.assert_allclose(
        rain_to_dbz(dbz_to_rain(np.array([5.0, 30.0, 60.0]))), [5.0, 30.0, 60.0]
    )
    tensor = torch.tensor([0.0, 2.0], dtype=torch.float64)
    assert rain_to_dbz(tensor).dtype == torch.float64 and log_rain(tensor).dtype == torch.float64
    assert rain_to_dbz(np.array([0.0, 1.0]), zero_dbz=-np.inf)[0] == -np.inf
    assert log_rain(torch.tensor([0, 99]), offset=1.0).tolist() == [0.0, 2.0]
    with pytest.raises(ValueError, match=r"offset"):
        log_rain(rain, offset=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"wet_fraction": 0.0}, "wet_fraction"),
        ({"wet_fraction": 1.0}, "wet_fraction"),
        ({"mean_rain": -1.0}, "mean_rain"),
        ({"size": 4}, "size must be an integer >= 8, got 4"),
        ({"growth_decay": 1.0}, "growth_decay"),
        ({"speed_range": (-1.0, 1.0)}, "speed_range"),
        ({"spectral_exponent": float("nan")}, "spectral_exponent"),
        ({"lifetime": 0.0}, r"lifetime must be a finite number in \(0, inf\], got 0.0"),
        ({"lifetime": float("inf")}, "lifetime"),
        ({"lifetime": 5.0, "lifetime_exponent": -1.0}, "lifetime_exponent .* got -1.0"),
        ({"size": (100_000, 100_000)}, "GiB"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticRadar(**kwargs)


def test_lifetime_must_be_a_number():
    with pytest.raises(TypeError, match=r"lifetime must be a real number, got '5'"):
        SyntheticRadar(lifetime="5")
