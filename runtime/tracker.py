"""SAMURAI's tracking loop on ONNX Runtime: ``Tracker`` (the public API) and its per-object state.

The loop follows SAMURAI's ``SAM2VideoPredictor`` / ``SAM2Base`` in samurai mode step for step:

- frame 0 is a conditioning frame prompted with a box (two points labelled 2 and 3): a single
  mask with SAM 2's stability fallback, the object pointer of the single-mask token, no memory
  attention (the no-memory embedding is added instead), and a memory encoded from the binarized
  (and hole-filled) mask;
- each later frame: memory attention over the conditioning memory and the selected past memories
  plus object pointers (``memory.MemoryBank``), three candidate masks, SAMURAI's Kalman-weighted
  choice among them, and a memory encoded from the chosen mask's sigmoid.

Sessions are stateless; everything that changes from frame to frame lives in ``ObjectState``.
All objects share one image-encoder pass per frame.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime import kalman
from samurai_onnx.runtime.bundle import Bundle, TrackerSettings, load_bundle
from samurai_onnx.runtime.memory import MemoryBank, MemoryEntry, Selection, to_bf16
from samurai_onnx.runtime.preprocess import (
    fill_holes,
    mask_to_box,
    preprocess_frame,
    upsample_mask_logits,
    validate_frame,
)
from samurai_onnx.runtime.session import create_session, providers_for_device
from samurai_onnx.runtime.video import ObjectResult, Source, open_frames

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


class TrackerError(ValueError):
    """Bad input to the tracker (a box, a frame, a call order), with the fix in the message."""


@dataclass(frozen=True)
class StepInfo:
    """What SAMURAI decided for one object on one frame (for parity tests and debugging)."""

    frame: int
    candidate: int  # decoder token of the chosen mask: 0 single-mask, 1..3 multimask
    iou: float
    object_score: float
    kf_score: float | None
    kf_ious: tuple[float, ...] | None
    memory_frames: tuple[int, ...]
    pointer_frames: tuple[int, ...]
    low_res_mask: np.ndarray = field(repr=False)  # chosen mask logits (after hole filling)


@dataclass
class ObjectState:
    """Everything the tracker knows about one object (SAMURAI keeps this on the model)."""

    obj_id: int
    memory: MemoryBank
    kf: kalman.KalmanState | None = None
    stable_frames: int = 0
    last: StepInfo | None = None


@dataclass(frozen=True)
class FrameResult:
    """Every object's result on one frame.

    ``index`` is the frame's position in the source (0 = the prompted frame); ``objects`` holds
    one :class:`ObjectResult` per box, in the order the boxes were given (``obj_id`` 0, 1, ...):
    ``mask`` (bool HxW at video size), ``box`` (LaSOT-style ``(x, y, w, h)`` ints, None when the
    mask is empty), ``score`` (the decoder's predicted IoU of the chosen mask) and ``present``
    (object score above SAMURAI's threshold and a non-empty mask).
    """

    index: int
    objects: list[ObjectResult]


def parse_box(text: str) -> Box:
    """``"x,y,w,h"`` -> floats; a one-line error for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(np.isfinite(values)):
        raise TrackerError(f"box {text!r} must be x,y,w,h: four numbers separated by commas")
    return (values[0], values[1], values[2], values[3])


def normalize_boxes(box: Any) -> list[Box]:
    """One box ``(x, y, w, h)`` or several (``[(x, y, w, h), ...]``, an ``[N, 4]`` array, or
    ``"x,y,w,h"`` strings) -> a list of 4-tuples of floats; a one-line error for anything else."""
    if isinstance(box, str):
        return [parse_box(box)]
    try:
        arr = np.asarray([parse_box(b) if isinstance(b, str) else b for b in box], dtype=np.float64)
    except TrackerError:
        raise
    except (TypeError, ValueError):
        raise TrackerError(
            f"box {box!r} must be x,y,w,h (four numbers) or a list of such boxes"
        ) from None
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise TrackerError(f"box {box!r} must be x,y,w,h (four numbers) or a list of such boxes")
    return [(float(x), float(y), float(w), float(h)) for x, y, w, h in arr]


def check_box(box: Sequence[float], width: int, height: int, index: int = 0) -> Box:
    """Validate a first-frame box against the frame; clip it where it crosses the border."""
    if len(box) != 4:
        raise TrackerError(f"box #{index} {tuple(box)} must have four values x,y,w,h")
    x, y, w, h = (float(v) for v in box)
    if not all(np.isfinite([x, y, w, h])):
        raise TrackerError(f"box #{index} {tuple(box)} has a non-finite value")
    if w <= 0 or h <= 0:
        raise TrackerError(
            f"box #{index} ({x:g},{y:g},{w:g},{h:g}) has zero or negative area; w and h must be > 0"
        )
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise TrackerError(
            f"box #{index} ({x:g},{y:g},{w:g},{h:g}) lies outside the {width}x{height} frame; "
            "boxes are x,y,w,h in pixels of the first frame"
        )
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        log.warning(
            "box #%d crosses the frame border; clipped to the %dx%d frame", index, width, height
        )
    return (x0, y0, x1 - x0, y1 - y0)


class Tracker:
    """Track boxes through a video with a SAMURAI bundle.

    ``start(frame, boxes)`` on the first frame, then ``step(frame)`` per frame; or ``track(video,
    box)``, a generator over a whole source. Frames are RGB uint8 HxWx3 numpy arrays.

    ``device`` is ``cpu``, ``cuda`` or ``tensorrt`` (default: the providers the bundle was compiled
    for); a missing provider logs a warning and falls back to the CPU. ``threads`` sets ONNX
    Runtime's intra-op threads, ``fill_hole_area`` overrides SAM 2's hole filling (0 = off),
    ``overrides`` any other ``TrackerSettings`` field of the tracking loop. ``num_frames`` (the
    video length) matters for videos shorter than 16 frames, where SAMURAI scales pointer distances
    by it; ``track`` takes it from the source when it is not given here.
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        *,
        device: str | None = None,
        threads: int | None = None,
        fill_hole_area: int | None = None,
        num_frames: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        changes = dict(overrides or {})
        if fill_hole_area is not None:
            changes["fill_hole_area"] = int(fill_hole_area)
        fixed = {
            "image_size",
            "d_model",
            "mem_dim",
            "feat_size",
            "low_res_mask_size",
            "memory_shape",
        }
        bad = sorted(
            set(changes) & fixed | set(changes) - set(TrackerSettings.__dataclass_fields__)
        )
        if bad:
            raise TrackerError(f"tracker setting(s) {', '.join(bad)} cannot be overridden")
        self.settings: TrackerSettings = dataclasses.replace(self.bundle.tracker, **changes)
        providers = (
            providers_for_device(device)
            if device
            else tuple(self.bundle.target.get("providers") or ("CPUExecutionProvider",))
        )
        self.sessions = {
            name: create_session(self.bundle.file(name), providers, threads)
            for name in self.bundle.components
        }
        self.static_memory = self.bundle.components["memory_attention"].graph.endswith("_static")
        self.num_frames = num_frames
        self._num_frames_given = num_frames
        self.states: list[ObjectState] = []
        self.frame_index = -1
        self.frame_size: tuple[int, int] | None = None  # (width, height)
        self._maskmem_pos: np.ndarray | None = None

    # -- graphs -------------------------------------------------------------------------------
    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[name]
        outputs = [o.name for o in session.get_outputs()]
        return dict(zip(outputs, session.run(outputs, feeds), strict=True))

    def _encode_image(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        s = self.settings
        image = preprocess_frame(frame, s.image_size, s.image_mean, s.image_std)
        return self._run("image_encoder", {"image": image})

    def _decode(
        self,
        feats: dict[str, np.ndarray],
        embed: np.ndarray,
        first: bool,
        coords: np.ndarray,
        labels: np.ndarray,
    ) -> dict[str, np.ndarray]:
        low = self.settings.low_res_mask_size
        return self._run(
            "mask_decoder",
            {
                "image_embed": embed,
                "add_no_mem_embed": np.array([1.0 if first else 0.0], np.float32),
                "high_res_feat_s0": feats["high_res_feat_s0"],
                "high_res_feat_s1": feats["high_res_feat_s1"],
                "point_coords": coords.astype(np.float32),
                "point_labels": labels.astype(np.float32),
                "mask_input": np.zeros((1, 1, low, low), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            },
        )

    def _encode_memory(
        self, feats: dict[str, np.ndarray], mask: np.ndarray, score: float, binarize: bool
    ) -> np.ndarray:
        out = self._run(
            "memory_encoder",
            {
                "vision_features": feats["vision_features"],
                "mask_logits": mask[None, None].astype(np.float32),
                "object_score_logits": np.array([[score]], np.float32),
                "binarize": np.array([1.0 if binarize else 0.0], np.float32),
            },
        )
        if self._maskmem_pos is None:
            self._maskmem_pos = out["maskmem_pos_enc"][0]
        features = out["maskmem_features"][0]
        return to_bf16(features) if self.settings.memory_bf16 else features

    def _attend(self, feats: dict[str, np.ndarray], sel: Selection) -> np.ndarray:
        assert self._maskmem_pos is not None
        memory = np.stack([m.features_f32() for m in sel.memories])[None]
        ptrs = np.stack(sel.pointers)[None].astype(np.float32)
        tpos = np.array(sel.tpos_index, np.int64)
        offsets = np.array(sel.pointer_offsets, np.float32)
        feeds: dict[str, np.ndarray] = {
            "vision_features": feats["vision_features"],
            "vision_pos_enc": feats["vision_pos_enc"],
        }
        if self.static_memory:
            n_slots, p_slots = self.settings.static_memory_slots, self.settings.static_pointer_slots
            memory, mem_valid = _pad(memory, 1, n_slots)
            ptrs, ptr_valid = _pad(ptrs, 1, p_slots)
            tpos, _ = _pad(tpos, 0, n_slots)
            offsets, _ = _pad(offsets, 0, p_slots)
            feeds.update(memory_valid=mem_valid, obj_ptr_valid=ptr_valid)
        pos = np.broadcast_to(self._maskmem_pos, memory.shape).astype(np.float32)
        feeds.update(
            memory=np.ascontiguousarray(memory, dtype=np.float32),
            memory_pos_enc=pos,
            memory_tpos_index=tpos,
            obj_ptrs=ptrs,
            obj_ptr_offsets=offsets,
        )
        return self._run("memory_attention", feeds)["conditioned_features"]

    # -- public API ---------------------------------------------------------------------------
    def start(
        self, frame: np.ndarray, boxes: Sequence[float] | Sequence[Sequence[float]]
    ) -> list[ObjectResult]:
        """Prompt frame 0 with one x,y,w,h box per object; returns their first-frame results.

        ``boxes`` is one box or a list of boxes, in pixels of ``frame``; starting again resets
        every object.
        """
        validate_frame(frame, "frame 0")
        height, width = frame.shape[:2]
        given = normalize_boxes(boxes)
        if not given:
            raise TrackerError("give at least one box x,y,w,h to track")
        checked = [check_box(b, width, height, i) for i, b in enumerate(given)]
        self.frame_size, self.frame_index, self.states = (width, height), 0, []
        s = self.settings
        feats = self._encode_image(frame)
        results = []
        scale = np.array([s.image_size / width, s.image_size / height], np.float32)
        for obj_id, (x, y, w, h) in enumerate(checked):
            coords = (np.array([[x, y], [x + w, y + h]], np.float32) * scale)[None]
            dec = self._decode(
                feats, feats["vision_features"], True, coords, np.array([[2.0, 3.0]])
            )
            ious = dec["iou_predictions"][0]
            # SAM 2's dynamic multimask: keep the single-mask output unless it is unstable.
            if float(dec["stability_score"][0, 0]) >= s.dynamic_multimask_stability_thresh:
                cand = 0
            else:
                cand = 1 + int(np.argmax(ious[1:]))
            score = float(dec["object_score_logits"][0, 0])
            mask = self._filled(dec["masks"][0, cand])
            entry = MemoryEntry(
                frame=0,
                features=self._encode_memory(
                    feats, mask, score, s.binarize_mask_from_pts_for_mem_enc
                ),
                obj_ptr=dec["obj_ptr"][0, 0].copy(),  # the single-mask token, whatever the mask
                iou=float(ious[cand]),
                object_score=score,
                kf_score=None,
            )
            bank = MemoryBank(
                num_maskmem=s.num_maskmem,
                max_obj_ptrs=s.max_obj_ptrs_in_encoder,
                iou_threshold=s.memory_bank_iou_threshold,
                obj_score_threshold=s.memory_bank_obj_score_threshold,
                kf_score_threshold=s.memory_bank_kf_score_threshold,
            )
            bank.set_conditioning(entry)
            state = ObjectState(obj_id=obj_id, memory=bank)
            state.last = StepInfo(0, cand, entry.iou, score, None, None, (), (), mask)
            self.states.append(state)
            results.append(self._result(state, mask, score))
        return results

    def step(self, frame: np.ndarray) -> list[ObjectResult]:
        """Track every object into the next frame."""
        if not self.states or self.frame_size is None:
            raise TrackerError("call start(frame, boxes) on the first frame before step()")
        t = self.frame_index + 1
        validate_frame(frame, f"frame {t}")
        if (frame.shape[1], frame.shape[0]) != self.frame_size:
            w, h = self.frame_size
            raise TrackerError(
                f"frame {t} is {frame.shape[1]}x{frame.shape[0]} but the video started at {w}x{h}; "
                "all frames of a video must have one size"
            )
        self.frame_index = t
        feats = self._encode_image(frame)
        return [self._track_object(state, feats, t) for state in self.states]

    def track(
        self,
        video: Source,
        box: Sequence[float] | Sequence[Sequence[float]],
        *,
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """Generator over a video: one ``FrameResult`` per frame, frames read one at a time.

        ``video`` is a video file, a folder of .jpg/.png frames, a webcam index, or any iterable
        (a list, a generator) of RGB uint8 HxWx3 numpy frames. ``box`` is one ``(x, y, w, h)``
        box in pixels of the first frame, or a list of boxes to track several objects (one
        image-encoder pass per frame for all of them). ``max_frames`` stops after that many.
        """
        for _, result in self.track_frames(video, box, max_frames=max_frames):
            yield result

    def track_frames(
        self,
        video: Source,
        box: Sequence[float] | Sequence[Sequence[float]],
        *,
        max_frames: int | None = None,
    ) -> Iterator[tuple[np.ndarray, FrameResult]]:
        """Like ``track``, yielding ``(frame, result)`` so that callers can draw on the frame."""
        boxes = normalize_boxes(box)
        if not boxes:
            raise TrackerError("give at least one box x,y,w,h to track")
        if max_frames is not None and max_frames < 1:
            raise TrackerError(f"max_frames is {max_frames}; it must be at least 1")
        with open_frames(video) as source:
            self.num_frames = self._num_frames_given
            if self.num_frames is None:
                counts = [n for n in (source.frame_count, max_frames) if n]
                self.num_frames = min(counts) if counts else None
            try:
                for i, frame in enumerate(source):
                    if max_frames is not None and i >= max_frames:
                        break
                    objects = self.start(frame, boxes) if i == 0 else self.step(frame)
                    yield frame, FrameResult(i, objects)
            finally:
                self.num_frames = self._num_frames_given

    # -- SAMURAI's per-frame logic ------------------------------------------------------------
    def _track_object(
        self, state: ObjectState, feats: dict[str, np.ndarray], t: int
    ) -> ObjectResult:
        sel = state.memory.select(t, self.num_frames)
        conditioned = self._attend(feats, sel)
        dec = self._decode(
            feats, conditioned, False, np.zeros((1, 1, 2), np.float32), np.array([[-1.0]])
        )
        ious = dec["iou_predictions"][0, 1:].astype(np.float32)
        boxes = [[round(float(v)) for v in b] for b in dec["mask_boxes"][0, 1:]]
        best, kf_score, kf_ious = self._samurai_choice(state, ious, boxes)
        cand = best + 1
        score = float(dec["object_score_logits"][0, 0])
        raw = dec["masks"][0, cand]
        entry = MemoryEntry(
            frame=t,
            features=self._encode_memory(feats, raw, score, False),
            obj_ptr=dec["obj_ptr"][0, cand].copy(),
            iou=float(ious[best]),
            object_score=score,
            kf_score=kf_score,
        )
        state.memory.add(entry)
        mask = self._filled(raw)
        state.last = StepInfo(
            t,
            cand,
            entry.iou,
            score,
            kf_score,
            kf_ious,
            sel.memory_frames,
            sel.pointer_frames,
            mask,
        )
        return self._result(state, mask, score)

    def _samurai_choice(
        self, state: ObjectState, ious: np.ndarray, boxes: list[list[int]]
    ) -> tuple[int, float | None, tuple[float, ...] | None]:
        """SAMURAI's candidate choice and Kalman bookkeeping (``_forward_sam_heads``)."""
        s = self.settings
        if state.kf is None or state.stable_frames == 0:
            best = int(np.argmax(ious))
            state.kf = kalman.initiate(kalman.xyxy_to_xyah(boxes[best]))
            state.stable_frames += 1
            return best, None, None
        if state.stable_frames < s.stable_frames_threshold:
            state.kf = kalman.predict(state.kf)
            best = int(np.argmax(ious))
            if ious[best] > s.stable_ious_threshold:
                state.kf = kalman.update(state.kf, kalman.xyxy_to_xyah(boxes[best]))
                state.stable_frames += 1
            else:
                state.stable_frames = 0
            return best, None, None
        state.kf = kalman.predict(state.kf)
        kf_ious = np.array(kalman.compute_iou(state.kf.mean[:4], boxes), np.float32)
        w = np.float32(s.kf_score_weight)
        weighted = w * kf_ious + (np.float32(1) - w) * ious
        best = int(np.argmax(weighted))
        if ious[best] < s.stable_ious_threshold:
            state.stable_frames = 0
        else:
            state.kf = kalman.update(state.kf, kalman.xyxy_to_xyah(boxes[best]))
        return best, float(kf_ious[best]), tuple(float(v) for v in kf_ious)

    def _filled(self, low_res: np.ndarray) -> np.ndarray:
        area = self.settings.fill_hole_area
        return fill_holes(low_res, area) if area > 0 else low_res

    def _result(self, state: ObjectState, low_res: np.ndarray, score: float) -> ObjectResult:
        assert self.frame_size is not None
        w, h = self.frame_size
        mask = upsample_mask_logits(low_res, (h, w)) > 0
        box = mask_to_box(mask)
        present = bool(score > self.settings.min_obj_score_logits) and box is not None
        iou = state.last.iou if state.last else 0.0
        return ObjectResult(obj_id=state.obj_id, mask=mask, box=box, score=iou, present=present)


def _pad(x: np.ndarray, axis: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``axis`` of ``x`` with zeros to ``slots``; returns the array and its 1/0 validity."""
    n = x.shape[axis]
    if n > slots:
        raise RuntimeError(f"{n} entries do not fit the static graph's {slots} slots")
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, slots - n)
    valid = (np.arange(slots) < n).astype(np.float32)
    return np.pad(x, widths), valid


class SAMURAIONNXPredictor:
    """The user guide's API: ``SAMURAIONNXPredictor(model_dir, device).track_video(path, box)``.

    ``model_dir`` is a bundle directory (made by ``samurai-compile``); it is loaded and verified
    here, so a bad bundle fails at construction with a ``BundleError``. ``device`` is ``cpu``,
    ``cuda`` or ``tensorrt``; other keyword arguments (``threads``, ``fill_hole_area``,
    ``overrides``, ``num_frames``) go to :class:`Tracker`. Example::

        predictor = SAMURAIONNXPredictor("bundles/base_plus-cpu", device="cpu")
        for result in predictor.track_video("clip.mp4", (450, 380, 250, 165)):
            obj = result.objects[0]
            print(result.index, obj.box if obj.present else None)
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", **kwargs: Any) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.tracker = Tracker(self.model_dir, device=device, **kwargs)

    def track_video(
        self,
        video_path: Source,
        bbox: Sequence[float] | Sequence[Sequence[float]],
        *,
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """Generator of one :class:`FrameResult` per frame of ``video_path``.

        ``video_path`` is a video file, a folder of .jpg/.png frames, a webcam index or an
        iterable of RGB uint8 frames; ``bbox`` is ``(x, y, w, h)`` in pixels of the first frame,
        or a list of such boxes for several objects. Frames are decoded and tracked one at a
        time as the generator is consumed; each call starts a new track.
        """
        yield from self.tracker.track(video_path, bbox, max_frames=max_frames)
