"""Single-object tracking metrics (pure numpy), as the benchmarks' toolkits define them.

One-pass evaluation (OPE; LaSOT, OTB), as the LaSOT toolkit (``calc_seq_err_robust.m``,
``eval_tracker.m``) and pytracking's ``extract_results.py`` (which SAMURAI's repository uses for
its LaSOT numbers) compute it:

- a predicted box with zero width or height on frame >= 1 is replaced by the previous frame's
  prediction (the tracker "keeps its last box"; SAMURAI writes ``0,0,0,0`` for a lost target);
- frame 0 is the initialization and scores the ground-truth box itself;
- frames where the target cannot be seen (LaSOT's full-occlusion or out-of-view labels, GOT-10k's
  cover 0) and frames whose ground truth has no area count as failures: they stay in the
  denominator (all frames of the sequence) but never pass a threshold. The toolkits disagree only
  on the last case (the LaSOT toolkit counts such frames as hits for precision, pytracking as
  hits for normalized precision); the released datasets have no box-less visible frames, so
  published numbers do not depend on it;
- success curve: fraction of frames with IoU > t for t in 0, 0.05, ..., 1 (21 thresholds); its
  mean is the success AUC; precision: fraction with center distance <= t pixels, t = 0..50,
  reported at 20 px; normalized precision: the center offset divided by the ground-truth width
  and height, t = 0, 0.01, ..., 0.5, reported at 0.20 (the toolkit's rank index 21, pytracking's
  ``Norm Precision``); its mean over the thresholds is given as ``normalized_precision_auc``;
- overall: the per-sequence curves averaged over sequences.

GOT-10k (the ``got10k`` toolkit's ``ExperimentGOT10k.report``): frames 1..N-1 where the target is
visible (cover > 0), boxes clipped to the image, IoU per frame; AO is the mean IoU and SR_t the
fraction with IoU > t, each over all such frames of all sequences together (frame-weighted), and
per sequence over its own frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OVERLAP_THRESHOLDS = np.linspace(0.0, 1.0, 21)
CENTER_THRESHOLDS = np.arange(51, dtype=np.float64)
NORM_CENTER_THRESHOLDS = np.arange(51, dtype=np.float64) / 100.0
RANK_INDEX = 20  # 20 px, or 0.20 of the target size


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``x, y, w, h`` rows (continuous coordinates, which equals the toolkits' inclusive
    pixel convention: ``(x + w - 1) - x + 1 = w``); 0 when both boxes are empty."""
    x0 = np.maximum(a[:, 0], b[:, 0])
    y0 = np.maximum(a[:, 1], b[:, 1])
    x1 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y1 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    out = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.clip(out, 0.0, 1.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of one frame; 1.0 when both are empty (nothing to disagree on)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def center_error(pred: np.ndarray, gt: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Distance between box centers; ``normalized`` divides the offset by the ground truth's
    width and height (inf where the ground truth has no size)."""
    offset = (pred[:, :2] + pred[:, 2:] / 2) - (gt[:, :2] + gt[:, 2:] / 2)
    if normalized:
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = offset / gt[:, 2:]
        offset[~np.isfinite(offset)] = np.inf
    return np.hypot(offset[:, 0], offset[:, 1])


def clip_to_image(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """GOT-10k's bound: corners clipped into the image, sizes to what remains of it."""
    w, h = float(size[0]), float(size[1])
    out = boxes.astype(np.float64, copy=True)
    out[:, 0] = np.clip(out[:, 0], 0, w)
    out[:, 1] = np.clip(out[:, 1], 0, h)
    out[:, 2] = np.clip(out[:, 2], 0, w - out[:, 0])
    out[:, 3] = np.clip(out[:, 3], 0, h - out[:, 1])
    return out


def hold_last_box(pred: np.ndarray) -> np.ndarray:
    """Zero-size predictions (frame >= 1) take the previous frame's (already held) box."""
    out = pred.astype(np.float64, copy=True)
    for i in range(1, len(out)):
        if out[i, 2] <= 0 or out[i, 3] <= 0:
            out[i] = out[i - 1]
    return out


@dataclass
class SequenceScore:
    """One sequence's curves and GOT-10k overlaps; the scalar metrics are derived from them."""

    name: str
    frames: int
    success_curve: np.ndarray
    precision_curve: np.ndarray
    norm_precision_curve: np.ndarray
    got10k_ious: np.ndarray = field(repr=False)
    seconds: float | None = None
    timed_frames: int = 0

    @property
    def success_auc(self) -> float:
        return float(np.mean(self.success_curve))

    @property
    def precision(self) -> float:
        return float(self.precision_curve[RANK_INDEX])

    @property
    def normalized_precision(self) -> float:
        return float(self.norm_precision_curve[RANK_INDEX])

    def summary(self) -> dict[str, Any]:
        out = {
            "frames": self.frames,
            "success_auc": self.success_auc,
            "precision": self.precision,
            "normalized_precision": self.normalized_precision,
            "normalized_precision_auc": float(np.mean(self.norm_precision_curve)),
            **got10k_measures(self.got10k_ious),
        }
        if self.seconds is not None:
            out["seconds"] = self.seconds
            out["fps"] = self.timed_frames / self.seconds if self.seconds > 0 else None
        return out


def got10k_measures(ious: np.ndarray) -> dict[str, Any]:
    """AO, SR0.5 and SR0.75 over the given frames (None where there is no scorable frame)."""
    if ious.size == 0:
        return {"ao": None, "sr50": None, "sr75": None, "scored_frames": 0}
    return {
        "ao": float(np.mean(ious)),
        "sr50": float(np.mean(ious > 0.5)),
        "sr75": float(np.mean(ious > 0.75)),
        "scored_frames": int(ious.size),
    }


def score_sequence(
    name: str,
    pred: np.ndarray,
    gt: np.ndarray,
    visible: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
) -> SequenceScore:
    """Score one sequence; ``pred`` and ``gt`` are ``[N, 4]`` ``x, y, w, h``."""
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 4:
        raise ValueError(f"{name}: prediction {pred.shape} and ground truth {gt.shape} differ")
    seen = np.ones(len(gt), bool) if visible is None else np.asarray(visible, bool)
    held = hold_last_box(pred)
    held[0] = gt[0]
    valid = seen & (gt[:, 2] > 0) & (gt[:, 3] > 0)
    overlap = np.where(valid, iou(held, gt), -1.0)
    center = np.where(valid, center_error(held, gt), np.inf)
    norm_center = np.where(valid, center_error(held, gt, normalized=True), np.inf)
    bounded_pred, bounded_gt = pred[1:], gt[1:]
    if image_size is not None:
        bounded_pred = clip_to_image(bounded_pred, image_size)
        bounded_gt = clip_to_image(bounded_gt, image_size)
    return SequenceScore(
        name=name,
        frames=len(gt),
        success_curve=(overlap[:, None] > OVERLAP_THRESHOLDS[None]).mean(0),
        precision_curve=(center[:, None] <= CENTER_THRESHOLDS[None]).mean(0),
        norm_precision_curve=(norm_center[:, None] <= NORM_CENTER_THRESHOLDS[None]).mean(0),
        got10k_ious=iou(bounded_pred, bounded_gt)[seen[1:]],
    )


def overall(scores: list[SequenceScore]) -> dict[str, Any]:
    """Dataset-level measures: OPE curves averaged over sequences, GOT-10k measures over all
    scored frames together."""
    if not scores:
        raise ValueError("no sequences to score")
    success = np.mean([s.success_curve for s in scores], axis=0)
    precision = np.mean([s.precision_curve for s in scores], axis=0)
    norm = np.mean([s.norm_precision_curve for s in scores], axis=0)
    timed = [s for s in scores if s.seconds]
    seconds = sum(s.seconds or 0.0 for s in timed)
    return {
        "sequences": len(scores),
        "frames": int(sum(s.frames for s in scores)),
        "success_auc": float(np.mean(success)),
        "precision": float(precision[RANK_INDEX]),
        "normalized_precision": float(norm[RANK_INDEX]),
        "normalized_precision_auc": float(np.mean(norm)),
        **got10k_measures(np.concatenate([s.got10k_ious for s in scores])),
        "fps": sum(s.timed_frames for s in timed) / seconds if seconds > 0 else None,
        "success_curve": success.tolist(),
        "precision_curve": precision.tolist(),
        "normalized_precision_curve": norm.tolist(),
    }
