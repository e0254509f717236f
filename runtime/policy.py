"""SAMURAI's decisions as pure functions: which candidate mask to keep, and the Kalman bookkeeping.

Everything here takes the state it needs and returns the new state (``Motion``: the Kalman
belief and the stable-frame count, which SAMURAI keeps on the model); nothing reads a graph or
holds a tensor, so each rule can be tested against the oracle on its own.

The rules are those of ``SAM2Base._forward_sam_heads`` in samurai mode, applied wherever SAM 2
outputs several candidates (every tracked frame, and a prompted frame with at most one click):

- no Kalman state yet (or the track was lost, ``stable_frames == 0``): take the highest
  predicted IoU and start the filter from that mask's box;
- while fewer than ``stable_frames_threshold`` stable frames: predict, take the highest IoU,
  update the filter only if that IoU exceeds ``stable_ious_threshold`` (else the track is lost);
- then: predict, score every candidate by ``w * kf_iou + (1 - w) * iou`` and take the best;
  update the filter with its box unless its IoU is below ``stable_ious_threshold``.

A prompted frame with a box or several points yields one mask: SAM 2's token 0, or, when its
stability score is below ``dynamic_multimask_stability_thresh``, the best of the other three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from samurai_onnx.runtime import kalman
from samurai_onnx.runtime.bundle import TrackerSettings


@dataclass(frozen=True)
class Motion:
    """SAMURAI's motion state of one object: its Kalman belief and stable-frame count."""

    kf: kalman.KalmanState | None = None
    stable_frames: int = 0


@dataclass(frozen=True)
class Choice:
    """The candidate kept on one frame (decoder token 0..3) and the new motion state."""

    candidate: int
    motion: Motion
    kf_score: float | None = None  # Kalman IoU of the kept mask (stable phase only)
    kf_ious: tuple[float, ...] | None = None


def single_mask_choice(stability: float, ious: Sequence[float], threshold: float) -> int:
    """SAM 2's dynamic multimask fallback for one-mask prompts (a box, several points).

    ``ious`` holds all four tokens' predicted IoUs. Returns the decoder token kept.
    """
    if stability >= threshold:
        return 0
    return 1 + int(np.argmax(np.asarray(ious, np.float32)[1:]))


def uses_multimask(num_points: int, has_mask: bool = False) -> bool:
    """Whether SAM 2.1 outputs three candidates for a prompt (``_use_multimask``).

    SAM 2.1's video configs: ``multimask_output_in_sam`` with ``multimask_min_pt_num = 0`` and
    ``multimask_max_pt_num = 1``; a box counts as two points. A mask prompt alone has no points.
    """
    return not has_mask and 0 <= num_points <= 1


def samurai_choice(
    motion: Motion,
    ious: Sequence[float],
    boxes: Sequence[Sequence[float]],
    settings: TrackerSettings,
) -> Choice:
    """SAMURAI's choice among the three multimask candidates (tokens 1..3).

    ``ious`` are the three predicted IoUs and ``boxes`` the three candidates' (x0, y0, x1, y1)
    boxes at model resolution ((0, 0, 0, 0) for an empty mask), as SAMURAI computes them.
    """
    scores = np.asarray(ious, np.float32)
    s = settings
    if motion.kf is None or motion.stable_frames == 0:
        best = int(np.argmax(scores))
        kf = kalman.initiate(kalman.xyxy_to_xyah(boxes[best]))
        return Choice(best + 1, Motion(kf, motion.stable_frames + 1))
    if motion.stable_frames < s.stable_frames_threshold:
        kf = kalman.predict(motion.kf)
        best = int(np.argmax(scores))
        if scores[best] > s.stable_ious_threshold:
            kf = kalman.update(kf, kalman.xyxy_to_xyah(boxes[best]))
            return Choice(best + 1, Motion(kf, motion.stable_frames + 1))
        return Choice(best + 1, Motion(kf, 0))
    kf = kalman.predict(motion.kf)
    kf_ious = np.array(kalman.compute_iou(kf.mean[:4], boxes), np.float32)
    w = np.float32(s.kf_score_weight)
    weighted = w * kf_ious + (np.float32(1) - w) * scores
    best = int(np.argmax(weighted))
    stable = motion.stable_frames
    if scores[best] < s.stable_ious_threshold:
        stable = 0
    else:
        kf = kalman.update(kf, kalman.xyxy_to_xyah(boxes[best]))
    return Choice(
        best + 1, Motion(kf, stable), float(kf_ious[best]), tuple(float(v) for v in kf_ious)
    )


def rounded_boxes(boxes: np.ndarray) -> list[list[int]]:
    """The decoder's float candidate boxes as the integer boxes SAMURAI's argwhere gives."""
    return [[round(float(v)) for v in b] for b in boxes]
