"""SAMURAI's constant-velocity Kalman filter over boxes, in numpy only.

This mirrors ``sam2.utils.kalman_filter.KalmanFilter`` from SAMURAI operation for operation
(same matrix products, same order) so that the tracker picks the same masks as the PyTorch
reference. The only change is ``update``: SAMURAI uses ``scipy.linalg.cho_solve``; scipy is not
a runtime dependency, so the Cholesky solve is done with numpy (results agree to ~1e-15).

The state is 8-dimensional: box centre (x, y), aspect ratio a = w / h, height h, and their
velocities. Functions are stateless: they take a :class:`KalmanState` and return a new one, so
the tracker can keep one state per object and snapshot it freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NDIM = 4
DT = 1.0
STD_WEIGHT_POSITION = 1.0 / 20
STD_WEIGHT_VELOCITY = 1.0 / 160

# Motion model F (x' = x + v * dt) and observation model H (we observe x, y, a, h directly).
_MOTION_MAT = np.eye(2 * NDIM, 2 * NDIM)
for _i in range(NDIM):
    _MOTION_MAT[_i, NDIM + _i] = DT
_UPDATE_MAT = np.eye(NDIM, 2 * NDIM)
_MOTION_MAT.setflags(write=False)
_UPDATE_MAT.setflags(write=False)

EMPTY_BOX: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class KalmanState:
    """One track's Gaussian belief: ``mean`` [8] float64 and ``covariance`` [8, 8] float64."""

    mean: np.ndarray
    covariance: np.ndarray


def initiate(measurement: Sequence[float] | np.ndarray) -> KalmanState:
    """Start a track from one (x, y, a, h) measurement; velocities start at 0 with wide priors."""
    meas = np.asarray(measurement, dtype=np.float64)
    mean = np.r_[meas, np.zeros_like(meas)]
    h = meas[3]
    std = [
        2 * STD_WEIGHT_POSITION * h,
        2 * STD_WEIGHT_POSITION * h,
        1e-2,
        2 * STD_WEIGHT_POSITION * h,
        10 * STD_WEIGHT_VELOCITY * h,
        10 * STD_WEIGHT_VELOCITY * h,
        1e-5,
        10 * STD_WEIGHT_VELOCITY * h,
    ]
    return KalmanState(mean, np.diag(np.square(std)))


def predict(state: KalmanState) -> KalmanState:
    """Advance the state one frame; process noise scales with the box height, as in SAMURAI."""
    h = state.mean[3]
    std_pos = [STD_WEIGHT_POSITION * h, STD_WEIGHT_POSITION * h, 1e-2, STD_WEIGHT_POSITION * h]
    std_vel = [STD_WEIGHT_VELOCITY * h, STD_WEIGHT_VELOCITY * h, 1e-5, STD_WEIGHT_VELOCITY * h]
    motion_cov = np.diag(np.square(np.r_[std_pos, std_vel]))
    mean = np.dot(state.mean, _MOTION_MAT.T)
    covariance = (
        np.linalg.multi_dot((_MOTION_MAT, state.covariance, _MOTION_MAT.T)) + motion_cov
    )
    return KalmanState(mean, covariance)


def project(state: KalmanState) -> tuple[np.ndarray, np.ndarray]:
    """Map the state to measurement space: (mean [4], covariance [4, 4] incl. observation noise)."""
    h = state.mean[3]
    std = [STD_WEIGHT_POSITION * h, STD_WEIGHT_POSITION * h, 1e-1, STD_WEIGHT_POSITION * h]
    innovation_cov = np.diag(np.square(std))
    mean = np.dot(_UPDATE_MAT, state.mean)
    covariance = np.linalg.multi_dot((_UPDATE_MAT, state.covariance, _UPDATE_MAT.T))
    return mean, covariance + innovation_cov


def _cho_solve(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``L L^T X = rhs`` by forward then backward substitution (what scipy's potrs does)."""
    n = chol.shape[0]
    y = np.empty_like(rhs)
    for i in range(n):
        y[i] = (rhs[i] - chol[i, :i] @ y[:i]) / chol[i, i]
    x = np.empty_like(rhs)
    for i in range(n - 1, -1, -1):
        x[i] = (y[i] - chol[i + 1 :, i] @ x[i + 1 :]) / chol[i, i]
    return x


def update(state: KalmanState, measurement: Sequence[float] | np.ndarray) -> KalmanState:
    """Correct the state with an observed (x, y, a, h) box (the Kalman gain via Cholesky)."""
    projected_mean, projected_cov = project(state)
    chol = np.linalg.cholesky(projected_cov)
    kalman_gain = _cho_solve(chol, np.dot(state.covariance, _UPDATE_MAT.T).T).T
    innovation = np.asarray(measurement, dtype=np.float64) - projected_mean
    new_mean = state.mean + np.dot(innovation, kalman_gain.T)
    new_covariance = state.covariance - np.linalg.multi_dot(
        (kalman_gain, projected_cov, kalman_gain.T)
    )
    return KalmanState(new_mean, new_covariance)


def xyxy_to_xyah(box: Sequence[float] | np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) -> (xc, yc, w / h, h); a zero height becomes 1, as in SAMURAI."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w = x2 - x1
    h = y2 - y1
    if h == 0:
        h = 1.0
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, w / h, h], dtype=np.float64)


def xyah_to_xyxy(box: Sequence[float] | np.ndarray) -> np.ndarray:
    """(xc, yc, a, h) -> (x1, y1, x2, y2)."""
    xc, yc, a, h = (float(v) for v in box)
    return np.array(
        [xc - a * h / 2, yc - h / 2, xc + a * h / 2, yc + h / 2], dtype=np.float64
    )


def _iou_xyxy(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes; the (0, 0, 0, 0) "no mask" box scores 0, as in SAMURAI."""
    if [float(v) for v in box2] == [0.0, 0.0, 0.0, 0.0]:
        return 0.0
    x1, y1, x2, y2 = box1
    x1_, y1_, x2_, y2_ = box2
    inter = max(0, min(x2, x2_) - max(x1, x1_)) * max(0, min(y2, y2_) - max(y1, y1_))
    union = (x2 - x1) * (y2 - y1) + (x2_ - x1_) * (y2_ - y1_) - inter
    return float(inter / union) if union != 0 else 0.0


def compute_iou(
    pred_xyah: Sequence[float] | np.ndarray,
    boxes_xyxy: Sequence[Sequence[float]] | np.ndarray,
) -> list[float]:
    """IoU of the predicted (x, y, a, h) box with each candidate (x1, y1, x2, y2) box.

    SAMURAI blends these with the mask decoder's IoU scores to choose among its candidate masks.
    """
    pred = [float(v) for v in xyah_to_xyxy(pred_xyah)]
    return [_iou_xyxy(pred, [float(v) for v in box]) for box in boxes_xyxy]


class KalmanFilter:
    """Method-style access to the same stateless functions (mirrors SAMURAI's class)."""

    initiate = staticmethod(initiate)
    predict = staticmethod(predict)
    project = staticmethod(project)
    update = staticmethod(update)
    compute_iou = staticmethod(compute_iou)
    xyxy_to_xyah = staticmethod(xyxy_to_xyah)
    xyah_to_xyxy = staticmethod(xyah_to_xyxy)
