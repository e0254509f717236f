"""SAMURAI's tracking loop: ``Tracker`` (graphs + settings) and the per-video ``VideoSession``.

The loop follows SAMURAI's ``SAM2VideoPredictor`` / ``SAM2Base`` in samurai mode:

- a prompted frame (a box, points, or both) is a conditioning frame: no memory attention (the
  no-memory embedding is added instead), one mask with SAM 2's stability fallback (or, for a
  single click, three candidates and SAMURAI's choice), the object pointer of the token used,
  and a memory encoded from the binarized, hole-filled mask;
- every later frame: memory attention over the conditioning memory and the selected past
  memories and object pointers (``memory.MemoryBank``), three candidate masks, SAMURAI's
  Kalman-weighted choice (``policy``), and a memory encoded from the chosen mask's sigmoid.

All objects share one image-encoder pass per frame; objects tracked on a frame run memory
attention, the decoder and the memory encoder as one batch (per group of equal memory and
pointer counts on dynamic-shape engines). An object prompted on frame F is SAMURAI tracking the
clip that starts at F: its frames count from F, and so does the video length that scales its
pointer distances. A new prompt for a tracked object restarts it there (a correction).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime import policy
from samurai_onnx.runtime.bundle import PROCESSING, Bundle, check_overrides, load_bundle
from samurai_onnx.runtime.documents import check_threads
from samurai_onnx.runtime.engine import EngineSettings, create_engine
from samurai_onnx.runtime.engine.base import DEVICES
from samurai_onnx.runtime.engine.forms import check_forms
from samurai_onnx.runtime.graphs import Decoded, FrameFeatures, MemoryPools, SamuraiGraphs
from samurai_onnx.runtime.memory import MemoryBank, MemoryEntry
from samurai_onnx.runtime.preprocess import FrameError, fill_holes, validate_frame
from samurai_onnx.runtime.video import ObjectResult, Source, open_frames

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
Point = tuple[float, float]

# SAM 2's object score for a mask prompt that marks the object: 20 * 1 - 10.
MASK_PROMPT_SCORE = 10.0


class TrackerError(ValueError):
    """Bad input to the tracker (a box, a prompt, a frame, a call order), with the fix."""


@dataclass(frozen=True)
class Prompt:
    """A prompt for one object on one frame, in pixels of the video.

    ``box`` is ``(x, y, w, h)``; ``points`` are ``(x, y)`` with ``labels`` 1 (positive) or 0
    (negative); a box and points may be given together (SAM 2 puts the box first). ``mask`` is
    a boolean ``[H, W]`` array at the video's size (alone: SAM 2's ``add_new_mask``). ``remove``
    ends the object's track from this frame on.
    """

    frame: int
    obj_id: int
    box: Box | None = None
    points: tuple[Point, ...] = ()
    labels: tuple[int, ...] = ()
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    remove: bool = False

    @property
    def num_points(self) -> int:
        """Points as SAM 2 counts them (a box is two)."""
        return len(self.points) + (2 if self.box is not None else 0)


@dataclass(frozen=True)
class StepInfo:
    """What SAMURAI decided for one object on one frame (for parity tests and debugging)."""

    frame: int
    candidate: int  # decoder token of the chosen mask: 0 single-mask, 1..3 multimask
    iou: float
    object_score: float
    kf_score: float | None
    kf_ious: tuple[float, ...] | None
    memory_frames: tuple[int, ...]  # video frame numbers
    pointer_frames: tuple[int, ...]
    low_res_mask: np.ndarray = field(repr=False)  # chosen mask logits (after hole filling)


@dataclass
class ObjectState:
    """Everything the tracker knows about one object (SAMURAI keeps this on the model)."""

    obj_id: int
    block: int  # its block of slots in the memory pools
    start: int  # the video frame of its latest prompt: frame 0 of its SAMURAI clip
    memory: MemoryBank
    motion: policy.Motion = field(default_factory=policy.Motion)
    num_frames: int | None = None  # the clip's length counted from ``start``
    last: StepInfo | None = None

    @property
    def kf(self) -> Any:
        return self.motion.kf

    @property
    def stable_frames(self) -> int:
        return self.motion.stable_frames


@dataclass(frozen=True)
class FrameResult:
    """Every tracked object's result on one frame.

    ``index`` is the frame's position in the source; ``objects`` holds one :class:`ObjectResult`
    per object tracked on this frame (from its first prompted frame on, until it is removed), in
    the order the objects were first prompted: ``mask`` (bool HxW at video size), ``box``
    (LaSOT-style ``(x, y, w, h)`` ints, None when the mask is empty), ``score`` (the decoder's
    predicted IoU of the chosen mask) and ``present`` (object score above SAMURAI's threshold
    and a non-empty mask).
    """

    index: int
    objects: list[ObjectResult]


@dataclass
class VideoSession:
    """The state of one video: its objects, the frame counter, the frame size, the pools."""

    pools: MemoryPools
    objects: dict[int, ObjectState] = field(default_factory=dict)
    frame_index: int = -1
    frame_size: tuple[int, int] | None = None  # (width, height)
    free_blocks: list[int] = field(default_factory=list)
    next_block: int = 0


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
    """Validate a box against the frame; clip it where it crosses the border."""
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
            "boxes are x,y,w,h in pixels of the frame they prompt"
        )
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        log.warning(
            "box #%d crosses the frame border; clipped to the %dx%d frame", index, width, height
        )
    return (x0, y0, x1 - x0, y1 - y0)


def check_prompt(p: Prompt, size: tuple[int, int]) -> Prompt:
    """``p`` checked against a ``(width, height)`` frame: labels, points inside, the box clipped
    to the frame, a mask of the frame's size made boolean; a one-line ``TrackerError`` else."""
    width, height = size
    where = f"prompt for object {p.obj_id} on frame {p.frame}"
    if p.remove:
        return p
    if p.mask is not None:
        return _check_mask(p, where, size)
    if p.box is None and not p.points:
        raise TrackerError(f"{where} has neither a box, points nor a mask")
    if len(p.labels) != len(p.points):
        raise TrackerError(
            f"{where} has {len(p.points)} point(s) and {len(p.labels)} label(s); "
            "give one label (1 positive, 0 negative) per point"
        )
    if any(label not in (0, 1) for label in p.labels):
        raise TrackerError(f"{where}: point labels must be 1 (positive) or 0 (negative)")
    for x, y in p.points:
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < width and 0 <= y < height):
            raise TrackerError(
                f"{where}: point ({x:g}, {y:g}) lies outside the {width}x{height} frame"
            )
    box = check_box(p.box, width, height, p.obj_id) if p.box is not None else None
    return dataclasses.replace(p, box=box)


def _check_mask(p: Prompt, where: str, size: tuple[int, int]) -> Prompt:
    if p.box is not None or p.points:
        raise TrackerError(
            f"{where} gives a mask together with a box or points; a mask prompt stands alone "
            "(as SAM 2's add_new_mask)"
        )
    mask = np.asarray(p.mask)
    if mask.shape != (size[1], size[0]):
        got = f"{mask.shape[1]}x{mask.shape[0]}" if mask.ndim == 2 else f"of shape {mask.shape}"
        raise TrackerError(
            f"{where}: the mask is {got}, the video {size[0]}x{size[1]}; give a mask of the "
            "video's size (non-zero = object)"
        )
    mask = mask != 0
    if not mask.any():
        raise TrackerError(f"{where}: the mask is empty; mark the object with non-zero pixels")
    return dataclasses.replace(p, mask=mask)


def box_prompts(boxes: Sequence[Box], frame: int = 0) -> list[Prompt]:
    """One box prompt per object (ids 0, 1, ...) on ``frame``."""
    return [Prompt(frame, i, box=tuple(b)) for i, b in enumerate(boxes)]  # type: ignore[arg-type]


class Tracker:
    """Track objects through a video with a SAMURAI bundle.

    ``start(frame, boxes)`` on the first frame, then ``step(frame)`` per frame (with
    ``prompts=`` to add, correct or remove objects on that frame); or ``track(video, box)`` /
    ``track(video, prompts=...)``, a generator over a whole source. Frames are RGB uint8 HxWx3.

    ``device`` is ``cpu``, ``cuda`` or ``tensorrt`` (default: the bundle's target); it only picks
    which of the target's providers run, with the target's options. ``threads`` sets the engine's
    intra-op threads, ``fill_hole_area`` overrides SAM 2's hole filling (0 = off),
    ``processing`` chooses pre/postprocessing in graphs (fast) or on the host (exact parity with
    the oracle), ``max_batch`` caps how many objects share one graph call (None: all; 1: every
    object alone), ``forms`` which form runs of a graph the bundle holds in several (``fastest``,
    timed at load; ``main``; or a form's name), ``prefetch`` whether ``track`` encodes the next
    frame while this one is tracked (default: the bundle's target; ``encode_ahead`` does it for
    callers of ``step``), ``overrides`` any other run-time setting of ``TrackerSettings``.
    ``num_frames``
    (the video length) matters for videos shorter than 16 frames, where SAMURAI scales pointer
    distances by it; ``track`` takes it from the source when it is not given here.
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        *,
        device: str | None = None,
        threads: int | None = None,
        fill_hole_area: int | None = None,
        num_frames: int | None = None,
        overrides: Mapping[str, Any] | None = None,
        processing: str | None = None,
        max_batch: int | None = None,
        profile_prefix: str | None = None,
        forms: str = "fastest",
        prefetch: bool | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        changes = dict(overrides or {})
        if fill_hole_area is not None:
            changes["fill_hole_area"] = fill_hole_area
        self.settings = check_overrides(
            self.bundle.tracker, changes, where="tracker settings", error=TrackerError
        )
        if device is not None and device not in DEVICES:
            raise TrackerError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if processing is not None and processing not in PROCESSING:
            raise TrackerError(f"processing {processing!r} is not one of {', '.join(PROCESSING)}")
        try:
            check_forms(forms, "forms")
        except ValueError as exc:
            raise TrackerError(str(exc)) from None
        threads = check_threads(threads, "threads", error=TrackerError)
        self.engine = create_engine(engine_settings(self.bundle, device, threads, profile_prefix))
        self.graphs = SamuraiGraphs(self.bundle, self.engine, processing=processing, forms=forms)
        if max_batch is not None and (
            isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
        ):
            raise TrackerError(
                f"max_batch is {max_batch!r}; it must be a whole number of at least 1"
            )
        # a bundle built without dynamic batches takes one object per call
        limits = [v for v in (max_batch, self.bundle.fixed_batch) if v]
        self.max_batch = min(limits) if limits else None
        if prefetch is not None and not isinstance(prefetch, bool):
            raise TrackerError(f"prefetch is {prefetch!r}; it must be True or False")
        self.prefetch = self.bundle.prefetch if prefetch is None else prefetch
        self.num_frames = num_frames
        self._num_frames_given = num_frames
        self.session: VideoSession | None = None
        self._last_pools: MemoryPools | None = None
        log.debug("tracker on %s, processing %s", self.describe(), self.graphs.processing)

    # -- public API ---------------------------------------------------------------------------
    def describe(self) -> str:
        """The engine line, with the form each multi-form graph runs in (bench, logs)."""
        forms = self.graphs.describe_forms()
        line = self.engine.describe() + ("; prefetch" if self.prefetch else "")
        return line + (f"; forms: {forms}" if forms else "")

    @property
    def states(self) -> list[ObjectState]:
        """The current video's objects, in the order they were first prompted."""
        return list(self.session.objects.values()) if self.session else []

    @property
    def frame_index(self) -> int:
        return self.session.frame_index if self.session else -1

    def reset(self) -> None:
        """Forget the current video (its objects and memories; a frame encoded ahead stays for
        the ``step`` or ``start`` it was meant for)."""
        self.session = None

    def encode_ahead(self, frame: np.ndarray) -> None:
        """With ``prefetch`` on, start encoding ``frame``, the frame the next ``step`` gets, in
        the background (``runtime/ahead.py``); ``step(frame)`` with this very array then uses
        it. The array must not change until then. Without ``prefetch`` it does nothing."""
        if self.prefetch:
            validate_frame(frame, "the frame encoded ahead")
            self.graphs.encode_ahead(frame)

    def start(
        self, frame: np.ndarray, boxes: Sequence[float] | Sequence[Sequence[float]]
    ) -> list[ObjectResult]:
        """Start a new video: prompt ``frame`` (frame 0) with one x,y,w,h box per object."""
        given = normalize_boxes(boxes)
        if not given:
            raise TrackerError("give at least one box x,y,w,h to track")
        self.reset()
        return self.step(frame, box_prompts(given))

    def step(self, frame: np.ndarray, prompts: Sequence[Prompt] = ()) -> list[ObjectResult]:
        """Track every object into the next frame, applying ``prompts`` given for this frame.

        The first call of a video (or after ``reset``) is frame 0. A prompt for a new object id
        starts it here, one for a tracked object restarts it here, ``remove`` ends it.
        """
        if self.session is None and not prompts:
            raise TrackerError(
                "call start(frame, boxes) on the first frame (or step(frame, prompts)) before step()"
            )
        session = self.session or self._new_session()
        t = session.frame_index + 1
        validate_frame(frame, f"frame {t}")
        size = (int(frame.shape[1]), int(frame.shape[0]))
        if session.frame_size is None:
            session.frame_size = size
        elif size != session.frame_size:
            w, h = session.frame_size
            raise TrackerError(
                f"frame {t} is {size[0]}x{size[1]} but the video started at {w}x{h}; "
                "all frames of a video must have one size"
            )
        checked = self._check_prompts(prompts, t, size, session)
        self.session = session
        session.frame_index = t
        for p in checked:
            if p.remove:
                self._remove(session, p.obj_id)
        new = [p for p in checked if not p.remove]
        tracked = [o for o in session.objects.values() if o.obj_id not in {p.obj_id for p in new}]
        if not new and not tracked:
            return []
        feats = self.graphs.encode_image(frame)
        infos: dict[int, StepInfo] = {}
        for group in self._groups(tracked, t):
            self._track_group(group, feats, t, infos)
        for group in (c for g in _by_points(new) for c in _chunks(g, self.max_batch)):
            run = self._mask_group if group[0].mask is not None else self._prompt_group
            run(group, feats, t, infos)
        order = [o for o in session.objects.values() if o.obj_id in infos]
        finished = self.graphs.finish(np.stack([infos[o.obj_id].low_res_mask for o in order]), size)
        results = []
        prompted = {p.obj_id for p in new}
        for obj, (mask, box) in zip(order, finished, strict=True):
            info = infos[obj.obj_id]
            present = bool(info.object_score > self.settings.min_obj_score_logits)
            results.append(
                ObjectResult(
                    obj.obj_id, mask, box, info.iou, present and box is not None,
                    obj.obj_id in prompted,
                )
            )  # fmt: skip
        return results

    def remove(self, obj_id: int) -> None:
        """Stop tracking ``obj_id`` (its slots are reused by objects added later)."""
        if self.session is None or obj_id not in self.session.objects:
            raise TrackerError(f"object {obj_id} is not being tracked")
        self._remove(self.session, obj_id)

    def track(
        self,
        video: Source,
        box: Sequence[float] | Sequence[Sequence[float]] | None = None,
        *,
        prompts: Iterable[Prompt] | None = None,
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """Generator over a video: one ``FrameResult`` per frame, frames read one at a time.

        ``video`` is a video file, a folder of .jpg/.png frames, a webcam index, or any iterable
        (a list, a generator) of RGB uint8 HxWx3 numpy frames. ``box`` is one ``(x, y, w, h)``
        box in pixels of the first frame, or a list of boxes for several objects (ids 0, 1, ...);
        ``prompts`` adds prompts on any frame (ids after the boxes'). ``max_frames`` stops after
        that many frames.
        """
        for _, result in self.track_frames(video, box, prompts=prompts, max_frames=max_frames):
            yield result

    def track_frames(
        self,
        video: Source,
        box: Sequence[float] | Sequence[Sequence[float]] | None = None,
        *,
        prompts: Iterable[Prompt] | None = None,
        max_frames: int | None = None,
    ) -> Iterator[tuple[np.ndarray, FrameResult]]:
        """Like ``track``, yielding ``(frame, result)`` so that callers can draw on the frame."""
        schedule = self._schedule(box, prompts)
        if max_frames is not None and max_frames < 1:
            raise TrackerError(f"max_frames is {max_frames}; it must be at least 1")
        with open_frames(video) as source:
            self.num_frames = self._num_frames_given
            if self.num_frames is None:
                counts = [n for n in (source.frame_count, max_frames) if n]
                self.num_frames = min(counts) if counts else None
            late = [f for f in schedule if self.num_frames is not None and f >= self.num_frames]
            if late:
                raise TrackerError(
                    f"a prompt is on frame {min(late)} but the video has {self.num_frames} "
                    "frame(s); prompt frames count from 0"
                )
            self.session = self._new_session()
            frames = iter(source)
            try:
                ahead: np.ndarray | None = next(frames, None)
                self._read_ahead(ahead)
                i = 0
                while ahead is not None:
                    frame, ahead = ahead, None
                    more = max_frames is None or i + 1 < max_frames  # no frame read past it
                    failed: Exception | None = None  # reading the next frame: after this one
                    if self.prefetch and more:
                        try:
                            ahead = next(frames, None)
                        except Exception as exc:
                            failed = exc
                        self._read_ahead(ahead)
                    objects = self.step(frame, schedule.get(i, ()))
                    yield frame, FrameResult(i, objects)
                    if failed is not None:
                        raise failed
                    if not self.prefetch and more:
                        ahead = next(frames, None)
                    i += 1
            finally:
                self.graphs.drop_ahead()
                self.num_frames = self._num_frames_given

    # -- the loop's pieces --------------------------------------------------------------------
    def _read_ahead(self, frame: np.ndarray | None) -> None:
        """``encode_ahead`` for a frame ``track`` has read ahead (none at the source's end); a
        frame it refuses is left to ``step``, whose error names the frame's number."""
        if frame is not None:
            try:
                self.encode_ahead(frame)
            except FrameError:
                pass

    def _new_session(self) -> VideoSession:
        bank = self._bank()
        pools = MemoryPools(self.engine, self.bundle, bank.memory_slots, bank.pointer_slots)
        if self._last_pools is not None:  # the previous video's buffers (see MemoryPools.adopt)
            pools.adopt(self._last_pools)
        self._last_pools = pools
        return VideoSession(pools=pools)

    def _bank(self) -> MemoryBank:
        s = self.settings
        return MemoryBank(
            num_maskmem=s.num_maskmem,
            max_obj_ptrs=s.max_obj_ptrs_in_encoder,
            iou_threshold=s.memory_bank_iou_threshold,
            obj_score_threshold=s.memory_bank_obj_score_threshold,
            kf_score_threshold=s.memory_bank_kf_score_threshold,
        )

    def _schedule(self, box: Any, prompts: Iterable[Prompt] | None) -> dict[int, list[Prompt]]:
        """Prompts by frame: the boxes on frame 0 (ids 0..n-1), then ``prompts``."""
        given = normalize_boxes(box) if box is not None else []
        extra = list(prompts or ())
        if not given and not extra:
            raise TrackerError("give at least one box x,y,w,h (or a prompt) to track")
        schedule: dict[int, list[Prompt]] = defaultdict(list)
        for p in box_prompts(given):
            schedule[0].append(p)
        for p in extra:
            if not isinstance(p, Prompt):
                raise TrackerError(f"prompts must be Prompt objects, got {type(p).__name__}")
            if p.frame < 0:
                raise TrackerError(f"prompt for object {p.obj_id} is on frame {p.frame} < 0")
            schedule[p.frame].append(p)
        return dict(schedule)

    def _check_prompts(
        self, prompts: Sequence[Prompt], t: int, size: tuple[int, int], session: VideoSession
    ) -> list[Prompt]:
        seen: set[int] = set()
        out = []
        for p in prompts:
            where = f"prompt for object {p.obj_id} on frame {t}"
            if p.frame != t:
                raise TrackerError(f"{where} says frame {p.frame}; give it on that frame")
            if p.obj_id in seen:
                raise TrackerError(f"{where}: one prompt per object and frame (merge them)")
            seen.add(p.obj_id)
            if p.remove and p.obj_id not in session.objects:
                raise TrackerError(f"{where} removes an object that is not being tracked")
            out.append(check_prompt(p, size))
        return out

    def _remove(self, session: VideoSession, obj_id: int) -> None:
        obj = session.objects.pop(obj_id)
        session.free_blocks.append(obj.block)

    def _groups(self, tracked: list[ObjectState], t: int) -> list[list[Any]]:
        """Tracked objects with their selections, batched by (memories, pointers) counts.

        A static-shape graph pads every object to its slot counts, so one batch holds all.
        """
        groups: dict[tuple[int, int], list[Any]] = defaultdict(list)
        for obj in tracked:
            sel = obj.memory.select(t - obj.start, obj.num_frames)
            key = (0, 0) if self.graphs.static else (len(sel.memories), len(sel.pointers))
            groups[key].append((obj, sel))
        return [c for g in groups.values() for c in _chunks(g, self.max_batch)]

    def _track_group(
        self, group: list[Any], feats: FrameFeatures, t: int, out: dict[int, StepInfo]
    ) -> None:
        """Tracked objects with equal memory and pointer counts: one batch through memory
        attention, the decoder and the memory encoder; SAMURAI's choice per object."""
        pools = self._pools()
        mem_index = np.array(
            [[pools.memory_index(o.block, s) for s in sel.memory_slots] for o, sel in group]
        )
        ptr_index = np.array(
            [[pools.ptr_index(o.block, s) for s in sel.pointer_slots] for o, sel in group]
        )
        tpos = np.array([sel.tpos_index for _, sel in group])
        offsets = np.array([sel.pointer_offsets for _, sel in group], np.float32)
        conditioned = self.graphs.attend(feats, pools, mem_index, tpos, ptr_index, offsets)
        dec = self.graphs.decode(conditioned, feats, prompted=False, batch=len(group))
        choices = []
        for i, (obj, _) in enumerate(group):
            boxes = policy.rounded_boxes(dec.boxes[i, 1:])
            choice = policy.samurai_choice(obj.motion, dec.ious[i, 1:], boxes, self.settings)
            obj.motion = choice.motion
            choices.append(choice)
        cands = [c.candidate for c in choices]
        entries = [
            obj.memory.add(
                MemoryEntry(
                    frame=t - obj.start,
                    iou=float(np.float32(dec.ious[i, c.candidate])),
                    object_score=float(dec.object_scores[i]),
                    kf_score=c.kf_score,
                )
            )
            for i, ((obj, _), c) in enumerate(zip(group, choices, strict=True))
        ]
        objs = [obj for obj, _ in group]
        self._encode(feats, objs, entries, dec.masks, cands, dec.object_scores, False, dec, cands)
        chosen = self._filled(self.graphs.chosen_masks(dec, cands))
        for i, ((obj, sel), c) in enumerate(zip(group, choices, strict=True)):
            memories = tuple(f + obj.start for f in sel.memory_frames)
            pointers = tuple(f + obj.start for f in sel.pointer_frames)
            out[obj.obj_id] = obj.last = StepInfo(
                t, c.candidate, entries[i].iou, entries[i].object_score, c.kf_score, c.kf_ious,
                memories, pointers, chosen[i],
            )  # fmt: skip

    def _prompt_group(
        self, group: list[Prompt], feats: FrameFeatures, t: int, out: dict[int, StepInfo]
    ) -> None:
        """Objects prompted on this frame with the same number of points: one decoder batch."""
        session = self._session()
        assert session.frame_size is not None
        coords, labels = _prompt_points(group, session.frame_size, self.settings.image_size)
        dec = self.graphs.decode(
            feats.vision_features, feats, prompted=True, coords=coords, labels=labels
        )
        multimask = policy.uses_multimask(group[0].num_points)
        objs = [self._object_for(session, p.obj_id, t) for p in group]
        cands, ptr_cands, choices = [], [], []
        for i, obj in enumerate(objs):
            choice = None
            if multimask:  # one click: three candidates and SAMURAI's choice, as on tracked frames
                boxes = policy.rounded_boxes(dec.boxes[i, 1:])
                choice = policy.samurai_choice(obj.motion, dec.ious[i, 1:], boxes, self.settings)
                obj.motion = choice.motion
                cand = ptr_cand = choice.candidate
            else:
                thresh = self.settings.dynamic_multimask_stability_thresh
                cand = policy.single_mask_choice(float(dec.stability[i]), dec.ious[i], thresh)
                ptr_cand = 0  # the single-mask token's pointer, whatever the mask
            cands.append(cand)
            ptr_cands.append(ptr_cand)
            choices.append(choice)
        chosen = self._filled(self.graphs.chosen_masks(dec, cands))
        entries = [
            obj.memory.set_conditioning(
                MemoryEntry(
                    frame=0,
                    iou=float(np.float32(dec.ious[i, cands[i]])),
                    object_score=float(dec.object_scores[i]),
                    kf_score=None,
                )
            )
            for i, obj in enumerate(objs)
        ]
        # The prompted frame's memory comes from the hole-filled mask, binarized (SAM 2's
        # consolidation step), so the filled masks go back to the device.
        binarize = self.settings.binarize_mask_from_pts_for_mem_enc
        zero = [0] * len(group)
        self._encode(
            feats, objs, entries, chosen[:, None], zero, dec.object_scores, binarize, dec, ptr_cands
        )
        for i, (obj, c) in enumerate(zip(objs, choices, strict=True)):
            out[obj.obj_id] = obj.last = StepInfo(
                t, cands[i], entries[i].iou, entries[i].object_score,
                c.kf_score if c else None, c.kf_ious if c else None, (), (), chosen[i],
            )  # fmt: skip

    def _mask_group(
        self, group: list[Prompt], feats: FrameFeatures, t: int, out: dict[int, StepInfo]
    ) -> None:
        """Objects prompted with a mask on this frame: SAM 2's ``_use_mask_as_output``.

        The output is the mask itself (as +-10 logits at low resolution, IoU 1, object score
        +10); the decoder runs with the mask as its dense prompt only for the object pointer
        (token 0, on the frame's own features); the memory is the binarized mask.
        """
        session = self._session()
        masks = np.stack([np.asarray(p.mask, np.float32) for p in group])
        mask_input, logits = self.graphs.mask_prompt(masks)
        dec = self.graphs.decode(
            feats.vision_features, feats, prompted=False, mask_input=mask_input, batch=len(group)
        )
        objs = [self._object_for(session, p.obj_id, t) for p in group]
        score = MASK_PROMPT_SCORE
        entries = [
            obj.memory.set_conditioning(
                MemoryEntry(frame=0, iou=1.0, object_score=score, kf_score=None)
            )
            for obj in objs
        ]
        # as on every prompted frame, the memory comes from the hole-filled mask, binarized
        chosen = self._filled(self.engine.download(logits)[:, 0].astype(np.float32))
        zero = [0] * len(group)
        scores = np.full(len(group), score, np.float32)
        self._encode(feats, objs, entries, chosen[:, None], zero, scores, True, dec, zero)
        for i, obj in enumerate(objs):
            out[obj.obj_id] = obj.last = StepInfo(t, 0, 1.0, score, None, None, (), (), chosen[i])

    def _encode(
        self,
        feats: FrameFeatures,
        objs: Sequence[ObjectState],
        entries: Sequence[MemoryEntry],
        masks: Any,
        candidate: Sequence[int],
        object_scores: np.ndarray,
        binarize: bool,
        dec: Decoded,
        ptr_candidate: Sequence[int],
    ) -> None:
        """Each object's chosen mask and pointer into the pool slots its memory bank assigned."""
        pools = self._pools()
        self.graphs.encode_memory(
            feats,
            pools,
            masks=masks,
            candidate=candidate,
            object_scores=object_scores,
            binarize=binarize,
            obj_ptr=dec.obj_ptr,
            ptr_candidate=ptr_candidate,
            memory_slot=[
                pools.memory_index(o.block, e.slot) for o, e in zip(objs, entries, strict=True)
            ],
            ptr_slot=[
                pools.ptr_index(o.block, e.ptr_slot) for o, e in zip(objs, entries, strict=True)
            ],
        )

    def _session(self) -> VideoSession:
        assert self.session is not None, "no video session"
        return self.session

    def _pools(self) -> MemoryPools:
        return self._session().pools

    def _object_for(self, session: VideoSession, obj_id: int, t: int) -> ObjectState:
        """The object ``obj_id`` (re)started on frame ``t``: new motion state and memory bank."""
        obj = session.objects.get(obj_id)
        remaining = None if self.num_frames is None else self.num_frames - t
        if obj is None:
            if session.free_blocks:
                block = session.free_blocks.pop(0)
            else:
                block = session.next_block
                session.next_block += 1
            session.pools.ensure(block + 1)
            obj = ObjectState(obj_id, block, t, self._bank(), num_frames=remaining)
            session.objects[obj_id] = obj
            return obj
        obj.start, obj.num_frames = t, remaining
        obj.motion, obj.memory, obj.last = policy.Motion(), self._bank(), None
        return obj

    def _filled(self, low_res: np.ndarray) -> np.ndarray:
        area = self.settings.fill_hole_area
        return fill_holes(low_res, area) if area > 0 else low_res


def _chunks(items: list[Any], size: int | None) -> list[list[Any]]:
    if not size:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def _by_points(prompts: list[Prompt]) -> list[list[Prompt]]:
    """Prompts that can share one decoder call: same number of points (masks together)."""
    groups: dict[tuple[int, bool, bool], list[Prompt]] = defaultdict(list)
    for p in prompts:
        groups[(p.num_points, p.box is not None, p.mask is not None)].append(p)
    return list(groups.values())


def _prompt_points(
    group: list[Prompt], size: tuple[int, int], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """SAM 2's point inputs: box corners (labels 2, 3) first, then the clicks, in model pixels.

    Scaled as ``add_new_points_or_box`` does: ``points / [W, H] * image_size`` in float32.
    """
    width, height = size
    scale = np.array([width, height], np.float32)
    coords, labels = [], []
    for p in group:
        pts: list[Sequence[float]] = []
        lab: list[float] = []
        if p.box is not None:
            x, y, w, h = p.box
            pts += [(x, y), (x + w, y + h)]
            lab += [2.0, 3.0]
        pts += list(p.points)
        lab += [float(v) for v in p.labels]
        coords.append((np.asarray(pts, np.float32) / scale) * np.float32(image_size))
        labels.append(lab)
    return np.stack(coords).astype(np.float32), np.asarray(labels, np.float32)


def engine_settings(
    bundle: Bundle, device: str | None, threads: int | None, profile_prefix: str | None = None
) -> EngineSettings:
    """The engine, providers and options of the bundle's target, filtered by ``device``."""
    from samurai_onnx.runtime.engine.onnxruntime import providers_for_device

    target = bundle.target
    providers = providers_for_device(
        device,
        tuple(target.get("providers") or ("CPUExecutionProvider",)),
        target.get("provider_options") or {},
    )
    return EngineSettings(
        engine=str(target.get("engine", "onnxruntime")),
        providers=providers,
        threads=threads,
        options=dict(target.get("engine_options") or {}),
        profile_prefix=profile_prefix,
    )


class SAMURAIONNXPredictor:
    """The user guide's API: ``SAMURAIONNXPredictor(model_dir, device).track_video(path, box)``.

    ``model_dir`` is a bundle directory (made by ``samurai-compile``); it is loaded and verified
    here, so a bad bundle fails at construction with a ``BundleError``. ``device`` is ``cpu``,
    ``cuda`` or ``tensorrt``; other keyword arguments (``threads``, ``fill_hole_area``,
    ``overrides``, ``num_frames``, ``processing``) go to :class:`Tracker`. Example::

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
        bbox: Sequence[float] | Sequence[Sequence[float]] | None = None,
        *,
        prompts: Iterable[Prompt] | None = None,
        max_frames: int | None = None,
    ) -> Iterator[FrameResult]:
        """Generator of one :class:`FrameResult` per frame of ``video_path``.

        ``video_path`` is a video file, a folder of .jpg/.png frames, a webcam index or an
        iterable of RGB uint8 frames; ``bbox`` is ``(x, y, w, h)`` in pixels of the first frame,
        or a list of such boxes for several objects; ``prompts`` adds prompts on any frame.
        Frames are decoded and tracked one at a time as the generator is consumed; each call
        starts a new track.
        """
        yield from self.tracker.track(video_path, bbox, prompts=prompts, max_frames=max_frames)
