"""The numpy Kalman filter against SAMURAI's (scipy-based) one, call for call."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import requires_oracle

from samurai_onnx.runtime import kalman

log = logging.getLogger(__name__)
RTOL = 1e-9


def _close(ours: np.ndarray, ref: np.ndarray) -> float:
    """Max error relative to the array's scale (covariances mix 1e2 and 1e-10 entries)."""
    ref = np.asarray(ref, dtype=np.float64)
    err = float(np.max(np.abs(np.asarray(ours) - ref)) / max(float(np.max(np.abs(ref))), 1e-300))
    assert err <= RTOL, err
    return err


def _random_box(rng: np.random.Generator) -> list[int]:
    r = rng.random()
    if r < 0.1:
        return [0, 0, 0, 0]
    x1, y1 = (int(v) for v in rng.integers(0, 600, 2))
    w = int(rng.integers(0, 200))
    h = 0 if r < 0.15 else int(rng.integers(1, 200))
    return [x1, y1, x1 + w, y1 + h]


@requires_oracle
@pytest.mark.oracle
def test_random_sequence_matches_oracle() -> None:
    from sam2.utils.kalman_filter import KalmanFilter

    ref = KalmanFilter()
    rng = np.random.default_rng(0)
    worst = 0.0
    for _track in range(20):
        box = _random_box(rng)
        ours_m = kalman.xyxy_to_xyah(box)
        ref_m = ref.xyxy_to_xyah(box)
        worst = max(worst, _close(ours_m, np.asarray(ref_m, dtype=np.float64)))
        state = kalman.initiate(ours_m)
        r_mean, r_cov = ref.initiate(ref_m)
        for _step in range(30):
            op = rng.choice(["predict", "update", "iou", "project"])
            if op == "predict":
                state = kalman.predict(state)
                r_mean, r_cov = ref.predict(r_mean, r_cov)
            elif op == "update":
                box = _random_box(rng)
                state = kalman.update(state, kalman.xyxy_to_xyah(box))
                r_mean, r_cov = ref.update(r_mean, r_cov, ref.xyxy_to_xyah(box))
            elif op == "project":
                pm, pc = kalman.project(state)
                rm, rc = ref.project(r_mean, r_cov)
                worst = max(worst, _close(pm, rm), _close(pc, rc))
            else:
                boxes = [_random_box(rng) for _ in range(3)]
                ours_iou = kalman.compute_iou(state.mean[:4], boxes)
                ref_iou = ref.compute_iou(r_mean[:4], boxes)
                assert all(isinstance(v, float) for v in ours_iou)
                np.testing.assert_allclose(ours_iou, ref_iou, rtol=RTOL, atol=0)
            worst = max(worst, _close(state.mean, r_mean), _close(state.covariance, r_cov))
            np.testing.assert_allclose(
                kalman.xyah_to_xyxy(state.mean[:4]), ref.xyah_to_xyxy(r_mean[:4]), rtol=RTOL
            )
    log.info("kalman worst relative error vs oracle: %.3g", worst)


def test_xyxy_to_xyah_quirks() -> None:
    # A zero height becomes 1 (and a = w / 1), exactly as SAMURAI does.
    np.testing.assert_array_equal(kalman.xyxy_to_xyah([10, 20, 30, 20]), [20, 20, 20, 1])
    np.testing.assert_array_equal(kalman.xyxy_to_xyah([0, 0, 0, 0]), [0, 0, 0, 1])
    np.testing.assert_allclose(kalman.xyah_to_xyxy(kalman.xyxy_to_xyah([1, 2, 5, 10])),
                               [1, 2, 5, 10])


def test_iou_quirks() -> None:
    pred = kalman.xyxy_to_xyah([0, 0, 10, 10])
    assert kalman.compute_iou(pred, [[0, 0, 0, 0]]) == [0.0]  # "no mask" box
    assert kalman.compute_iou(pred, [(0, 0, 0, 0)]) == [0.0]
    assert kalman.compute_iou(pred, [[0, 0, 10, 10]]) == [1.0]
    assert kalman.compute_iou(pred, [[5, 0, 15, 10]]) == pytest.approx([50 / 150])
    flat = kalman.xyxy_to_xyah([5, 5, 5, 5])  # zero-area prediction against a zero-area box
    assert kalman.compute_iou(flat, [[5, 5, 5, 5]]) == [0.0]


def test_state_is_immutable_and_functions_are_stateless() -> None:
    s0 = kalman.initiate(kalman.xyxy_to_xyah([10, 10, 50, 90]))
    s1 = kalman.predict(s0)
    s1b = kalman.predict(s0)
    np.testing.assert_array_equal(s1.mean, s1b.mean)
    with pytest.raises(AttributeError):
        s0.mean = s1.mean  # type: ignore[misc]
    kf = kalman.KalmanFilter()
    np.testing.assert_array_equal(kf.update(s1, [30, 50, 0.5, 80]).mean,
                                  kalman.update(s1, [30, 50, 0.5, 80]).mean)
