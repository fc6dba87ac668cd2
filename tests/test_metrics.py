"""Tests for convlstm.metrics: hand-computed values, numpy/scikit-image references,
exact merging and streaming, and the all-reduce over two gloo processes."""

from __future__ import annotations

import datetime
import doctest
import io
import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm import metrics
from convlstm.metrics import (
    CATEGORICAL_SCORES,
    CONTINUOUS_METRICS,
    ContingencyTable,
    ForecastMetrics,
    categorical_scores,
    mae,
    mse,
    psnr,
    score_forecasts,
    ssim,
)

RAIN = {"data_range": 40.0, "clip": None, "thresholds": (0.5, 2.0, 10.0)}


def _images(seed: int, shape: tuple[int, ...] = (3, 4, 2, 12, 12)) -> tuple[torch.Tensor, ...]:
    """Predictions spilling outside [0, 1] (so clipping matters) and targets in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=generator) * 1.4 - 0.2
    target = torch.rand(shape, generator=generator)
    return pred, target


def _rain(seed: int, shape: tuple[int, ...] = (5, 3, 1, 8, 8)) -> tuple[torch.Tensor, ...]:
    """Rain-rate-like fields in mm/h: many zeros, a heavy tail, some values on thresholds."""
    generator = torch.Generator().manual_seed(seed)
    fields = []
    for _ in range(2):
        rate = torch.rand(shape, generator=generator).pow(3) * 40
        rate[torch.rand(shape, generator=generator) < 0.3] = 0.0
        rate[torch.rand(shape, generator=generator) < 0.1] = 2.0
        fields.append(rate)
    return tuple(fields)


def _numpy_table(pred, target, thresholds, inclusive=True) -> np.ndarray:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    is_event = np.greater_equal if inclusive else np.greater
    table = np.zeros((len(thresholds), pred.shape[1], 4), dtype=np.int64)
    for k, threshold in enumerate(thresholds):
        for t in range(pred.shape[1]):
            forecast, observed = is_event(pred[:, t], threshold), is_event(target[:, t], threshold)
            table[k, t] = [
                np.sum(forecast & observed),
                np.sum(~forecast & observed),
                np.sum(forecast & ~observed),
                np.sum(~forecast & ~observed),
            ]
    return table


def _assert_results_close(actual: dict, expected: dict, rel: float = 1e-9) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        got, want = actual[name], expected[name]
        np.testing.assert_allclose(got["overall"], want["overall"], rtol=rel, err_msg=name)
        np.testing.assert_allclose(
            got["per_lead_time"], want["per_lead_time"], rtol=rel, err_msg=name
        )


# --------------------------------------------------------------------------- continuous


def test_mse_mae_by_hand() -> None:
    # B=2, T=2, C=1, 2x2 frames; the error of each frame is given below.
    target = torch.zeros(2, 2, 1, 2, 2)
    pred = torch.tensor(
        [
            [[[[0.1, 0.2], [0.3, 0.4]]], [[[0.5, 0.5], [0.5, 0.5]]]],
            [[[[0.3, 0.0], [0.0, 0.0]]], [[[1.0, 0.0], [0.0, 0.0]]]],
        ]
    )
    # lead 0: frame sums of squares 0.30 and 0.09; lead 1: 1.00 and 1.00.
    torch.testing.assert_close(mse(pred, target), torch.tensor([0.195, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        mse(pred, target, per_pixel=True), torch.tensor([0.195, 1.0], dtype=torch.float64) / 4
    )
    # lead 0: frame sums of |error| 1.0 and 0.3; lead 1: 2.0 and 1.0.
    torch.testing.assert_close(mae(pred, target), torch.tensor([0.65, 1.5], dtype=torch.float64))
    torch.testing.assert_close(
        mae(pred, target, per_pixel=True), torch.tensor([0.65, 1.5], dtype=torch.float64) / 4
    )


def test_clip_applies_to_predictions_only() -> None:
    pred, target = torch.full((1, 1, 1, 2, 2), 3.0), torch.full((1, 1, 1, 2, 2), 2.0)
    assert mse(pred, target).item() == pytest.approx(4 * 1.0)  # pred clipped to 1
    assert mse(pred, target, clip=None).item() == pytest.approx(4 * 1.0)
    assert mae(pred, target, clip=(0.0, 10.0)).item() == pytest.approx(4.0)
    assert mse(torch.full((1, 1, 1, 2, 2), -1.0), target).item() == pytest.approx(16.0)


def test_continuous_metrics_match_numpy() -> None:
    pred, target = _images(0)
    p, t = pred.double().numpy(), target.double().numpy()
    p_clipped = np.clip(p, 0.0, 1.0)
    frame_axes = (2, 3, 4)
    np.testing.assert_allclose(mse(pred, target), ((p_clipped - t) ** 2).sum(frame_axes).mean(0))
    np.testing.assert_allclose(
        mse(pred, target, clip=None), ((p - t) ** 2).sum(frame_axes).mean(0), rtol=1e-6
    )
    np.testing.assert_allclose(
        mae(pred, target, per_pixel=True), np.abs(p_clipped - t).mean(frame_axes).mean(0)
    )
    expected_psnr = 10 * np.log10(1.0 / ((p_clipped - t) ** 2).mean(frame_axes)).mean(0)
    np.testing.assert_allclose(psnr(pred, target), expected_psnr, rtol=1e-5)
    expected_psnr_range = 10 * np.log10(4.0 / ((p - t) ** 2).mean(frame_axes)).mean(0)
    np.testing.assert_allclose(
        psnr(pred, target, data_range=2.0, clip=None), expected_psnr_range, rtol=1e-5
    )


def test_psnr_by_hand() -> None:
    pred, target = torch.full((2, 1, 1, 4, 4), 0.5), torch.zeros(2, 1, 1, 4, 4)
    assert psnr(pred, target).item() == pytest.approx(10 * math.log10(1 / 0.25), rel=1e-6)
    assert psnr(target, target).item() == math.inf


def test_ssim_of_constant_frames_by_hand() -> None:
    # With constant frames a (pred) and b (target) both variances and the covariance are 0,
    # so SSIM = (2ab + c1) / (a^2 + b^2 + c1) with c1 = (0.01 * data_range)^2.
    a, b, c1 = 0.6, 0.2, 0.01**2
    pred = torch.full((1, 2, 3, 8, 8), a, dtype=torch.float64)
    target = torch.full((1, 2, 3, 8, 8), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    np.testing.assert_allclose(ssim(pred, target), [expected] * 2, rtol=1e-12)
    np.testing.assert_allclose(ssim(pred, pred), [1.0, 1.0], rtol=1e-12)


def test_ssim_matches_scikit_image() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    pred, target = _images(1, shape=(2, 3, 2, 16, 16))
    clipped = pred.clamp(0, 1).double().numpy()
    target_np = target.double().numpy()
    # torchmetrics reflect-pads each frame by 5 pixels and averages the SSIM map over the
    # whole frame; scikit-image averages over the interior only. Padding the frames the
    # same way and cropping scikit-image's full SSIM map gives torchmetrics' convention.
    pad = ((0, 0), (5, 5), (5, 5))
    expected = np.zeros(pred.shape[:2])
    for b in range(pred.shape[0]):
        for t in range(pred.shape[1]):
            _, full = skimage_metrics.structural_similarity(
                np.pad(clipped[b, t], pad, mode="reflect"),
                np.pad(target_np[b, t], pad, mode="reflect"),
                data_range=1.0,
                channel_axis=0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                full=True,
            )
            expected[b, t] = full[:, 5:-5, 5:-5].mean()
    np.testing.assert_allclose(ssim(pred, target), expected.mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 1, 64, 64), (1, 2, 3, 17, 9), (1, 2, 1, 6, 6)])
def test_ssim_matches_torchmetrics(dtype, shape) -> None:
    # ours applies the Gaussian window as two matrix products; torchmetrics as one 11x11
    # grouped convolution of reflect-padded frames
    from torchmetrics.functional.image import structural_similarity_index_measure

    generator = torch.Generator().manual_seed(sum(shape))
    pred = torch.rand(shape, generator=generator, dtype=dtype) * 1.2 - 0.1
    target = (pred + 0.3 * torch.rand(shape, generator=generator, dtype=dtype)).clamp(0, 1)
    for data_range in (1.0, 2.5):
        expected = structural_similarity_index_measure(
            pred.clamp(0, 1).flatten(0, 1),
            target.flatten(0, 1),
            data_range=data_range,
            reduction="none",
        )
        expected = expected.reshape(shape[:2]).double().mean(dim=0)
        got = ssim(pred, target, data_range=data_range)
        tolerance = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)


# --------------------------------------------------------------------------- categorical


def test_categorical_scores_by_hand() -> None:
    scores = categorical_scores(
        torch.tensor(2), torch.tensor(1), torch.tensor(1), torch.tensor(4)
    )  # hits a=2, misses c=1, false alarms b=1, correct negatives d=4
    assert scores["csi"].item() == pytest.approx(2 / 4)
    assert scores["pod"].item() == pytest.approx(2 / 3)
    assert scores["far"].item() == pytest.approx(1 / 3)
    assert scores["bias"].item() == pytest.approx(3 / 3)
    assert scores["hss"].item() == pytest.approx(2 * (2 * 4 - 1 * 1) / (3 * 5 + 3 * 5))


def test_zero_denominators_give_nan() -> None:
    # Nothing forecast, nothing observed: every score is undefined.
    for value in categorical_scores(*torch.tensor([0, 0, 0, 10])).values():
        assert math.isnan(value)
    # Events observed but none forecast: FAR undefined, POD 0, bias 0.
    scores = categorical_scores(*torch.tensor([0, 5, 0, 5]))
    assert math.isnan(scores["far"])
    assert scores["pod"] == 0 and scores["bias"] == 0 and scores["csi"] == 0
    # Events forecast but none observed: POD and bias undefined, FAR 1.
    scores = categorical_scores(*torch.tensor([0, 0, 5, 5]))
    assert math.isnan(scores["pod"]) and math.isnan(scores["bias"])
    assert scores["far"] == 1
    # Every pixel a hit: HSS undefined (no variability), CSI 1.
    scores = categorical_scores(*torch.tensor([7, 0, 0, 0]))
    assert math.isnan(scores["hss"]) and scores["csi"] == 1


def test_contingency_table_by_hand() -> None:
    # One lead time, four pixels: target 0 1 2 3, prediction 0 2 0 3.
    target = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 1, 2, 2)
    pred = torch.tensor([0.0, 2.0, 0.0, 3.0]).reshape(1, 1, 1, 2, 2)
    table = ContingencyTable((1.0, 2.0, 5.0)).update(pred, target)
    assert table.counts[:, 0].tolist() == [
        [2, 1, 0, 1],  # >= 1: hits at 2/3 and 3/3, miss at 1/0, correct negative at 0/0
        [1, 1, 1, 1],  # >= 2: hit 3/3, miss 2/0, false alarm 1 (pred 2), correct negative
        [0, 0, 0, 4],  # >= 5: no event
    ]
    scores = table.scores()
    assert scores["csi"][:, 0].tolist()[:2] == pytest.approx([2 / 3, 1 / 3])
    assert math.isnan(scores["csi"][2, 0])
    assert table.hits.tolist() == [[2], [1], [0]]
    assert table.misses.tolist() == [[1], [1], [0]]
    assert table.false_alarms.tolist() == [[0], [1], [0]]
    assert table.correct_negatives.tolist() == [[1], [1], [4]]


@pytest.mark.parametrize("inclusive", [True, False])
def test_contingency_table_matches_numpy(inclusive: bool) -> None:
    pred, target = _rain(2)
    thresholds = (0.5, 2.0, 5.0, 10.0, 30.0)
    table = ContingencyTable(thresholds, inclusive=inclusive).update(pred, target)
    expected = _numpy_table(pred.numpy(), target.numpy(), thresholds, inclusive)
    np.testing.assert_array_equal(table.counts.numpy(), expected)
    assert table.counts.dtype == torch.int64
    pooled = expected.sum(axis=1).astype(np.float64)
    hits, misses, false_alarms, negatives = pooled.T
    overall = table.scores(overall=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(overall["csi"], hits / (hits + misses + false_alarms))
        np.testing.assert_allclose(overall["far"], false_alarms / (hits + false_alarms))
        numerator = 2 * (hits * negatives - false_alarms * misses)
        denominator = (hits + misses) * (misses + negatives) + (hits + false_alarms) * (
            false_alarms + negatives
        )
        np.testing.assert_allclose(overall["hss"], numerator / denominator)


def test_inclusive_flag_differs_exactly_at_the_threshold() -> None:
    pred, target = _rain(3)
    at_threshold = (pred == 2.0).sum().item(), (target == 2.0).sum().item()
    assert min(at_threshold) > 0
    inclusive = ContingencyTable((2.0,)).update(pred, target)
    exclusive = ContingencyTable((2.0,), inclusive=False).update(pred, target)
    # `>` at 2 is the same as `>=` once the values equal to 2 are moved below it.
    lowered = ContingencyTable((2.0,)).update(
        torch.where(pred == 2.0, 1.0, pred), torch.where(target == 2.0, 1.0, target)
    )
    assert torch.equal(exclusive.counts, lowered.counts)
    assert not torch.equal(inclusive.counts, exclusive.counts)
    # Away from the threshold value the two conventions agree.
    nudged = ContingencyTable((2.0,)).update(pred + 0.25, target + 0.25)
    nudged_exclusive = ContingencyTable((2.0,), inclusive=False).update(pred + 0.25, target + 0.25)
    assert torch.equal(nudged.counts, nudged_exclusive.counts)


def test_contingency_table_leaves_nan_pixels_out() -> None:
    pred, target = _rain(4)
    pred[0, 0, 0, 0, :4] = torch.nan
    target[1, 1, 0, 2, :3] = torch.nan
    table = ContingencyTable((0.5, 5.0)).update(pred, target)
    assert table.counts.sum(dim=-1)[:, 0].tolist() == [5 * 64 - 4] * 2
    assert table.counts.sum(dim=-1)[:, 1].tolist() == [5 * 64 - 3] * 2
    valid = ~(pred.isnan() | target.isnan())
    expected = _numpy_table(
        torch.where(valid, pred, -1.0).numpy(), torch.where(valid, target, -1.0).numpy(), (0.5, 5)
    )
    expected[..., 3] -= np.array([4, 3, 0])  # the -1 placeholders were correct negatives
    np.testing.assert_array_equal(table.counts.numpy(), expected)


@settings(max_examples=15, deadline=None)
@given(split=st.integers(min_value=1, max_value=4), inclusive=st.booleans())
def test_contingency_tables_merge_exactly(split: int, inclusive: bool) -> None:
    pred, target = _rain(5)
    whole = ContingencyTable(inclusive=inclusive).update(pred, target)
    first = ContingencyTable(inclusive=inclusive).update(pred[:split], target[:split])
    second = ContingencyTable(inclusive=inclusive).update(pred[split:], target[split:])
    assert torch.equal((first + second).counts, whole.counts)
    assert torch.equal(first.merge(second).counts, whole.counts)
    assert torch.equal(ContingencyTable(inclusive=inclusive).merge(whole).counts, whole.counts)


def test_contingency_merge_rejects_other_settings() -> None:
    pred, target = _rain(6)
    table = ContingencyTable((1.0,)).update(pred, target)
    with pytest.raises(ValueError, match="different settings"):
        table.merge(ContingencyTable((2.0,)))
    with pytest.raises(ValueError, match="different settings"):
        table.merge(ContingencyTable((1.0,), inclusive=False))
    with pytest.raises(TypeError, match="ContingencyTable"):
        table.merge(ForecastMetrics())
    with pytest.raises(ValueError, match="lead times"):
        table.update(pred[:, :2], target[:, :2])


@pytest.mark.parametrize(
    ("thresholds", "error", "message"),
    [
        ((), ValueError, "at least one"),
        ((1.0, math.nan), ValueError, "finite"),
        ((1.0, math.inf), ValueError, "finite"),
        (("1.0",), TypeError, "numbers"),
        ((True,), TypeError, "numbers"),
        ("0.5", TypeError, "sequence"),
        (None, TypeError, "sequence"),
        ((2.0, 2), ValueError, "distinct"),
    ],
)
def test_thresholds_are_validated(thresholds, error, message) -> None:
    with pytest.raises(error, match=f"thresholds.*{message}"):
        ContingencyTable(thresholds)


def test_thresholds_accept_numbers_and_tensors() -> None:
    assert ContingencyTable(2).thresholds == (2.0,)
    assert ContingencyTable(torch.tensor([0.5, 2.0])).thresholds == (0.5, 2.0)
    assert ContingencyTable(np.array([1, 5])).thresholds == (1.0, 5.0)


# --------------------------------------------------------------------------- streaming


def test_streaming_equals_one_shot() -> None:
    pred, target = _rain(7, shape=(9, 3, 2, 8, 8))
    streamed = ForecastMetrics(**RAIN)
    for start in range(0, 9, 2):
        streamed.update(pred[start : start + 2], target[start : start + 2])
    one_shot = score_forecasts(pred, target, **RAIN)
    _assert_results_close(streamed.compute(), one_shot, rel=1e-6)
    assert streamed.num_sequences == 9 and streamed.lead_times == 3
    # The state is per lead time: it does not grow with the number of batches.
    assert all(t.numel() <= 4 * 3 for t in (streamed.sums, streamed.counts))


def test_compute_matches_functional_metrics_and_is_json() -> None:
    pred, target = _images(8)
    result = ForecastMetrics(thresholds=(0.5,)).update(pred, target).compute()
    expected_keys = {*CONTINUOUS_METRICS, *(f"{name}@0.5" for name in CATEGORICAL_SCORES)}
    assert set(result) == expected_keys
    for name, function, kwargs in [
        ("mse_frame", mse, {}),
        ("mae_frame", mae, {}),
        ("mse_pixel", mse, {"per_pixel": True}),
        ("mae_pixel", mae, {"per_pixel": True}),
        ("ssim", ssim, {}),
        ("psnr", psnr, {}),
    ]:
        per_lead_time = function(pred, target, **kwargs)
        np.testing.assert_allclose(result[name]["per_lead_time"], per_lead_time, rtol=1e-9)
        assert result[name]["overall"] == pytest.approx(per_lead_time.mean().item(), rel=1e-9)
    for value in result.values():
        assert type(value["overall"]) is float
        assert all(type(v) is float for v in value["per_lead_time"])
    assert json.loads(json.dumps(result)).keys() == result.keys()


def test_categorical_scores_in_compute_match_table() -> None:
    pred, target = _rain(9)
    result = score_forecasts(pred, target, **RAIN)
    table = ContingencyTable(RAIN["thresholds"]).update(pred, target)
    per_lead_time, overall = table.scores(), table.scores(overall=True)
    for name in CATEGORICAL_SCORES:
        for k, label in enumerate(("0.5", "2", "10")):
            np.testing.assert_allclose(
                result[f"{name}@{label}"]["per_lead_time"], per_lead_time[name][k]
            )
            np.testing.assert_allclose(result[f"{name}@{label}"]["overall"], overall[name][k])


def test_categorical_scores_use_raw_predictions() -> None:
    # Clipping to [0, 1] (the default) must not touch the categorical scores.
    rain = torch.full((1, 1, 1, 8, 8), 5.0)
    result = score_forecasts(rain, rain, thresholds=(2.0,))
    assert result["csi@2"]["overall"] == 1.0
    assert result["mse_frame"]["overall"] == pytest.approx(64 * 16.0)


def test_merge_state_dict_and_reset() -> None:
    pred, target = _rain(10)
    first = ForecastMetrics(**RAIN).update(pred[:2], target[:2])
    second = ForecastMetrics(**RAIN).update(pred[2:], target[2:])
    whole = score_forecasts(pred, target, **RAIN)
    _assert_results_close((first + second).compute(), whole, rel=1e-6)

    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    restored = ForecastMetrics(**RAIN)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_results_close(restored.merge(second).compute(), whole, rel=1e-6)

    empty = ForecastMetrics(**RAIN)
    _assert_results_close(empty.merge(first).compute(), first.compute())
    with pytest.raises(ValueError, match="settings"):
        ForecastMetrics().load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="different settings"):
        first.merge(ForecastMetrics(**{**RAIN, "data_range": 1.0}))
    first.reset()
    assert first.lead_times == 0 and first.num_sequences == 0
    with pytest.raises(RuntimeError, match="update"):
        first.compute()


def test_reduce_is_a_noop_without_distributed() -> None:
    pred, target = _rain(11)
    accumulator = ForecastMetrics(**RAIN).update(pred, target)
    before = accumulator.compute()
    assert accumulator.reduce_() is accumulator
    assert accumulator.compute() == before


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("function", [mse, mae, ssim, psnr, score_forecasts])
def test_shape_mismatch_names_both_shapes(function) -> None:
    with pytest.raises(
        ValueError, match=r"pred has \(2, 3, 1, 8, 8\), target has \(2, 4, 1, 8, 8\)"
    ):
        function(torch.zeros(2, 3, 1, 8, 8), torch.zeros(2, 4, 1, 8, 8))


@pytest.mark.parametrize(
    ("pred", "target", "error", "message"),
    [
        (torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8), ValueError, r"pred must be 5-D.*4-D"),
        (torch.zeros(1, 3, 1, 8, 8), torch.zeros(3, 1, 8, 8), ValueError, r"target must be 5-D"),
        (np.zeros((1, 1, 1, 8, 8)), torch.zeros(1, 1, 1, 8, 8), TypeError, "pred must be a torch"),
        (
            torch.zeros(1, 1, 1, 8, 8),
            torch.zeros(1, 1, 1, 8, 8, dtype=torch.int64),
            TypeError,
            "target must be a floating-point",
        ),
        (torch.zeros(0, 1, 1, 8, 8), torch.zeros(0, 1, 1, 8, 8), ValueError, "non-empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(pred, target, error, message) -> None:
    with pytest.raises(error, match=message):
        ForecastMetrics().update(pred, target)


def test_bad_settings_and_sizes_raise_clear_errors() -> None:
    small = torch.zeros(1, 1, 1, 5, 8)
    with pytest.raises(ValueError, match=r"SSIM needs frames of at least 6x6.*H=5"):
        ssim(small, small)
    for data_range in (0.0, -1.0, math.nan, "1", True):
        with pytest.raises(ValueError, match="data_range"):
            ForecastMetrics(data_range=data_range)
    for clip in ((1.0, 0.0), (0.0, math.inf)):
        with pytest.raises(ValueError, match="clip"):
            ForecastMetrics(clip=clip)
    for clip in ((0.0,), "ab", 1.0):
        with pytest.raises(TypeError, match="clip"):
            mse(small, small, clip=clip)
    accumulator = ForecastMetrics(thresholds=(0.5,)).update(*_images(12, (1, 3, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"expected 3 lead times.*\(1, 2, 1, 8, 8\)"):
        accumulator.update(*_images(12, (1, 2, 1, 8, 8)))
    assert accumulator.num_sequences == 1  # the rejected batch left no trace


def test_frames_smaller_than_ssims_window_are_scored_without_ssim() -> None:
    # issue 19: a 5x8 frame cannot hold SSIM's 11x11 window (6x6 after reflect-padding);
    # every other metric is still computed, SSIM is left out with a warning and a reason.
    pred, target = _images(14, (2, 3, 1, 5, 8))
    accumulator = ForecastMetrics(thresholds=(0.5,))
    with pytest.warns(UserWarning, match=r"SSIM needs frames of at least 6x6.*H=5.*left out"):
        accumulator.update(pred, target)
    result = accumulator.compute()
    assert "ssim" not in result
    assert set(result) == {*CONTINUOUS_METRICS, *(f"{n}@0.5" for n in CATEGORICAL_SCORES)} - {
        "ssim"
    }
    assert "H=5" in accumulator.skipped["ssim"]
    np.testing.assert_allclose(result["mse_frame"]["per_lead_time"], mse(pred, target))
    np.testing.assert_allclose(result["psnr"]["per_lead_time"], psnr(pred, target))
    with pytest.warns(UserWarning, match="SSIM"):
        assert "ssim" not in score_forecasts(pred, target)
    # Large frames afterwards do not bring back an SSIM averaged over part of the frames.
    large = _images(15, (1, 3, 1, 8, 8))
    assert "ssim" not in accumulator.update(*large).compute()
    accumulator.reset()
    assert accumulator.skipped == {}
    assert "ssim" in accumulator.update(*large).compute()


def test_evaluate_is_a_deprecated_alias_of_score_forecasts() -> None:
    pred, target = _rain(16)
    with pytest.warns(DeprecationWarning, match="score_forecasts"):
        old = metrics.evaluate(pred, target, **RAIN)
    assert old == score_forecasts(pred, target, **RAIN)


def test_metrics_are_torchmetrics_metrics_that_merge_exactly() -> None:
    # Two "ranks" accumulate uneven shards in several batches; merging their states (through
    # torchmetrics' merge_state, a saved state dict, or +) equals one pass over all the data.
    from torchmetrics import Metric

    pred, target = _rain(17, shape=(7, 3, 2, 8, 8))
    ranks = [ForecastMetrics(**RAIN), ForecastMetrics(**RAIN)]
    for start in range(0, 7, 2):
        ranks[start // 2 % 2].update(pred[start : start + 2], target[start : start + 2])
    single = ForecastMetrics(**RAIN).update(pred, target)
    assert isinstance(single, Metric) and single.sums.dtype == torch.float64
    merged = ForecastMetrics(**RAIN)
    merged.merge_state(ranks[0])
    merged.merge_state(ranks[1].metric_state)
    _assert_results_close(merged.compute(), single.compute(), rel=1e-12)
    _assert_results_close((ranks[0] + ranks[1]).compute(), single.compute(), rel=1e-12)
    assert torch.equal(merged.counts, single.counts) and torch.equal(merged.table, single.table)
    assert ranks[0].num_sequences == 4  # + left its operands alone

    tables = [
        ContingencyTable((0.5, 2.0)).update(pred[:3], target[:3]),
        ContingencyTable((0.5, 2.0)),
    ]
    tables[1].update(pred[3:], target[3:])
    whole = ContingencyTable((0.5, 2.0)).update(pred, target)
    tables[0].merge_state(tables[1])
    assert torch.equal(tables[0].counts, whole.counts)
    for name, value in tables[0].compute().items():
        torch.testing.assert_close(value, whole.scores()[name], equal_nan=True)
    with pytest.raises(TypeError, match="ContingencyTable"):
        tables[0].merge_state(single)


def test_docstring_examples() -> None:
    from convlstm.metrics import categorical, forecast, functional

    for module in (metrics, functional, categorical, forecast):
        outcome = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert outcome.attempted > 0 and outcome.failed == 0, module.__name__


# --------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _distributed_worker(
    rank: int, world_size: int, port: int, states: list[dict], expected: dict, rain: tuple
) -> None:
    # Runs in a fresh process: it gets each rank's accumulated state from the parent, so it
    # needs no torchmetrics import (seconds) of its own, only reduce_() and compute().
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),  # fail, rather than hang, if a rank is lost
    )
    try:
        # compute() syncs by itself (torchmetrics), then restores this rank's own state.
        synced = ForecastMetrics(**RAIN)
        synced.load_state_dict(states[rank])
        _assert_results_close(synced.compute(), expected, rel=1e-9)
        assert synced.num_sequences == (4, 3)[rank]

        local = ForecastMetrics(**RAIN)
        local.load_state_dict(states[rank])
        assert local.reduce_() is local
        _assert_results_close(local.compute(), expected, rel=1e-9)
        assert local.num_sequences == 7

        # A rank that saw no data still takes part, and gets the other ranks' totals.
        pred, target = rain
        table = ContingencyTable()
        if rank == 0:
            table.update(pred, target)
        whole = ContingencyTable().update(pred, target)
        for name, value in table.compute().items():
            torch.testing.assert_close(value, whole.scores()[name], equal_nan=True)
        table.reduce_()
        assert torch.equal(table.counts, whole.counts)

        # Ranks disagreeing on the number of lead times all raise (no deadlock).
        mismatched = ContingencyTable().update(pred[:, : 1 + rank], target[:, : 1 + rank])
        try:
            mismatched.reduce_()
        except ValueError as error:
            assert "different numbers of lead times" in str(error)
        else:
            raise AssertionError("reduce_ accepted ranks with different lead times")
        mismatched = ForecastMetrics().update(
            pred[:, : 1 + rank].clamp(0, 1), target[:, : 1 + rank]
        )
        try:
            mismatched.compute()
        except ValueError as error:
            assert "different numbers of lead times" in str(error)
        else:
            raise AssertionError("compute accepted ranks with different lead times")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_reduce_over_two_gloo_processes_equals_single_process() -> None:
    pred, target = _rain(13, shape=(7, 3, 2, 8, 8))
    shards = []
    for shard in (slice(0, 4), slice(4, 7)):  # uneven shards, several batches each
        accumulator = ForecastMetrics(**RAIN)
        for start in range(shard.start, shard.stop, 2):
            stop = min(start + 2, shard.stop)
            accumulator.update(pred[start:stop], target[start:stop])
        shards.append(accumulator.state_dict())
    expected = score_forecasts(pred, target, **RAIN)
    mp.spawn(
        _distributed_worker,
        args=(2, _free_port(), shards, expected, (pred, target)),
        nprocs=2,
        join=True,
    )


def test_states_saved_before_torchmetrics_still_load() -> None:
    # ForecastMetrics.state_dict() of convlstm 0.1 (before the metrics were torchmetrics Metrics)
    pred, target = _rain(18)
    whole = ForecastMetrics(**RAIN).update(pred, target)
    legacy = {
        "config": {"data_range": 40.0, "clip": None, "contingency": whole._config()["contingency"]},
        "sums": whole.sums.clone(),
        "counts": whole.counts[:2].clone(),  # frames and values; SSIM scored every frame then
        "contingency": {"config": whole._config()["contingency"], "counts": whole.table.clone()},
    }
    restored = ForecastMetrics(**RAIN)
    restored.load_state_dict(legacy)
    assert restored.compute() == whole.compute()
    no_thresholds = ForecastMetrics(clip=None, data_range=40.0)
    no_thresholds.load_state_dict(
        {**legacy, "config": {**legacy["config"], "contingency": None}, "contingency": None}
    )
    assert no_thresholds.compute()["mse_frame"] == whole.compute()["mse_frame"]


def test_forward_gives_the_batch_and_accumulates() -> None:
    # torchmetrics' forward: the metrics of this batch, while the state keeps every batch
    pred, target = _rain(19, shape=(4, 3, 1, 8, 8))
    accumulator = ForecastMetrics(**RAIN)
    first = accumulator(pred[:2], target[:2])
    _assert_results_close(first, score_forecasts(pred[:2], target[:2], **RAIN), rel=1e-12)
    accumulator(pred[2:], target[2:])
    _assert_results_close(accumulator.compute(), score_forecasts(pred, target, **RAIN), rel=1e-9)


def test_evaluation_and_report_of_frames_smaller_than_ssims_window() -> None:
    # issue 19, end to end: a dataset of 4x5 frames is scored and reported, SSIM left out
    from convlstm.data import ArrayDataset
    from convlstm.evaluation import evaluate
    from convlstm.report import report_files

    dataset = ArrayDataset(torch.rand(12, 1, 4, 5), input_len=3, output_len=2, layout="record")
    with pytest.warns(UserWarning, match="H=4, W=5: SSIM is left out"):
        results = evaluate(
            lambda inputs, horizon: inputs[:, -1:].expand(-1, horizon, -1, -1, -1),
            dataset,
            progress=False,
        )
    for scores in results["forecasters"].values():
        assert set(scores) == set(CONTINUOUS_METRICS) - {"ssim"}
    assert "metrics.json" in report_files(results)
