"""Frame sources (files, folders, webcams, Python iterables) and result writers.

Frames are streamed one at a time as RGB uint8 HxWx3 so that long videos never sit in memory.
Every error is a :class:`VideoError` with a one-line message saying what is wrong and what to do,
because these are the errors end users hit first. Writers flush as they go so that a crash
mid-video leaves valid partial output.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from PIL import Image

from samurai_onnx.runtime.preprocess import FrameError, validate_frame

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
Source = str | os.PathLike[str] | int | Iterable[np.ndarray]


class VideoError(ValueError):
    """A video source or output that cannot be used, with a one-line fix."""


@dataclass(frozen=True, eq=False)
class ObjectResult:
    """One object's result on one frame, as plain data for the writers."""

    obj_id: int
    mask: np.ndarray  # bool HxW at video size
    box: tuple[int, int, int, int] | None  # (x, y, w, h), None when absent
    score: float
    present: bool


Results = Sequence[ObjectResult]


def webcam_index(source: object) -> int | None:
    """The webcam index ``source`` names (an int or a digit string), else None."""
    if isinstance(source, bool):
        return None
    if isinstance(source, int):
        return source
    if isinstance(source, str) and source.strip().isdigit() and not Path(source).exists():
        return int(source.strip())
    return None


def _frame_sort_key(paths: list[Path]) -> list[Path]:
    """Numeric order when every stem is an integer (so 10.jpg follows 9.jpg), else by name."""
    if all(p.stem.isdigit() for p in paths):
        return sorted(paths, key=lambda p: (int(p.stem), p.name))
    return sorted(paths, key=lambda p: p.name)


class FrameSource:
    """An iterable of RGB uint8 HxWx3 frames with whatever metadata the source knows."""

    def __init__(
        self,
        frames: Callable[[], Iterator[np.ndarray]],
        description: str,
        fps: float | None = None,
        frame_count: int | None = None,
        size: tuple[int, int] | None = None,
        on_close: Callable[[], None] | None = None,
        reiterable: bool = True,
    ) -> None:
        self._frames, self.description = frames, description
        self._fps, self._frame_count, self._size = fps, frame_count, size
        self._on_close, self._reiterable, self._iterated = on_close, reiterable, False

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def frame_count(self) -> int | None:
        return self._frame_count

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the first frame."""
        return self._size

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterated and not self._reiterable:
            raise VideoError(f"{self.description} can be read only once; open it again")
        self._iterated = True
        first: tuple[int, int] | None = None
        for i, frame in enumerate(self._frames()):
            size = (int(frame.shape[1]), int(frame.shape[0]))
            if first is None:
                first = size
                self._size = self._size or size
            elif size != first:
                raise VideoError(
                    f"frame {i} of {self.description} is {size[0]}x{size[1]} but frame 0 is "
                    f"{first[0]}x{first[1]}; resize all frames to one size"
                )
            yield frame
        if first is None:
            raise VideoError(f"{self.description} has no frames; check the source")

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_capture(target: str | int, what: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        if isinstance(target, int):
            raise VideoError(
                f"cannot open {what}; check that the camera is connected and not in use by "
                "another program, or pass a video file or a folder of frames instead"
            )
        raise VideoError(
            f"cannot open {what} (missing device, empty or corrupt file, or unsupported codec); "
            "check it or re-encode it with ffmpeg -i IN -c:v libx264 OUT.mp4"
        )
    return cap


def _capture_frames(cap: cv2.VideoCapture, first: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Decode until the stream ends, converting OpenCV's BGR to RGB; always releases ``cap``."""
    try:
        bgr = first
        while True:
            if bgr is None:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            bgr = None
    finally:
        cap.release()


def _open_video_file(path: Path) -> FrameSource:
    what = f"video file {path}"
    cap = _open_capture(str(path), what)
    ok, first = cap.read()  # decode one frame now so a broken file fails here, not mid-run
    fps, count = float(cap.get(cv2.CAP_PROP_FPS)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    if not ok or first is None:
        raise VideoError(f"{what} has no decodable frames; re-encode it or pick another file")
    open_caps: list[cv2.VideoCapture] = []

    def frames() -> Iterator[np.ndarray]:
        open_caps.append(_open_capture(str(path), what))
        return _capture_frames(open_caps[-1])

    def close() -> None:
        for c in open_caps:
            c.release()

    return FrameSource(
        frames,
        what,
        fps=fps if fps > 0 else None,
        frame_count=count if count > 0 else None,
        size=(first.shape[1], first.shape[0]),
        on_close=close,
    )


def _open_folder(folder: Path) -> FrameSource:
    paths = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not paths:
        raise VideoError(f"folder {folder} has no .jpg/.jpeg/.png frames; point to a frame folder")
    paths = _frame_sort_key(paths)
    size: tuple[int, int] | None = None
    try:  # the header alone gives the size; a broken file is reported when it is reached
        with Image.open(paths[0]) as im:
            size = (int(im.size[0]), int(im.size[1]))
    except Exception:
        size = None

    def frames() -> Iterator[np.ndarray]:
        for i, p in enumerate(paths):
            # EXIF orientation is ignored, as SAMURAI's PIL loader does, so that boxes are in
            # the stored pixel frame (the one LaSOT-style ground truth uses).
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if bgr is None:
                raise VideoError(f"cannot decode frame {i} ({p}); replace or remove that file")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return FrameSource(frames, f"folder {folder}", frame_count=len(paths), size=size)


def _open_webcam(index: int) -> FrameSource:
    cap = _open_capture(index, f"webcam {index}")
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    return FrameSource(
        lambda: _capture_frames(cap),
        f"webcam {index}",
        fps=fps if fps > 0 else None,
        on_close=cap.release,
        reiterable=False,
    )


def _from_iterable(frames_in: Iterable[np.ndarray]) -> FrameSource:
    def frames() -> Iterator[np.ndarray]:
        for i, frame in enumerate(frames_in):
            try:
                validate_frame(frame, where=f"frame {i}")
            except FrameError as e:
                raise VideoError(str(e)) from None
            yield frame

    count = len(frames_in) if isinstance(frames_in, Sized) else None
    return FrameSource(
        frames,
        "the frame iterable",
        frame_count=count,
        reiterable=not isinstance(frames_in, Iterator),
    )


def open_frames(source: Source) -> FrameSource:
    """Open a video file, a frame folder, a webcam index, or an iterable of RGB uint8 frames.

    An already open :class:`FrameSource` is returned as it is.
    """
    if isinstance(source, FrameSource):
        return source
    index = webcam_index(source)
    if index is not None:
        return _open_webcam(index)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise VideoError(f"{path} does not exist; check the path")
        if path.is_dir():
            return _open_folder(path)
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise VideoError(
                f"{path} is not a supported video ({', '.join(VIDEO_EXTENSIONS)}); "
                "convert it or pass a folder of .jpg/.png frames"
            )
        return _open_video_file(path)
    if isinstance(source, Iterable):
        return _from_iterable(source)
    raise VideoError(
        f"cannot read frames from a {type(source).__name__}; pass a path, webcam index or iterable"
    )


class _Writer:
    """Context-manager plumbing shared by the writers: ``__exit__`` always closes."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _by_id(results: Sequence[ObjectResult]) -> dict[int, ObjectResult]:
    return {r.obj_id: r for r in results}


def _ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot create folder {directory} ({e.strerror}); pick another") from e


def _open_text(path: Path) -> IO[str]:
    _ensure_dir(path.parent)
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise VideoError(f"cannot write {path} ({e.strerror}); check it is writable") from e


class BoxWriter(_Writer):
    """LaSOT-style boxes: one ``x,y,w,h`` line per frame; one file per object if several.

    Objects are ``obj_ids`` (default 0..num_objects-1); with several, object k goes to
    ``<stem>_obj<k><suffix>``. Absent objects and skipped frames write ``0,0,0,0``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        num_objects: int,
        obj_ids: Sequence[int] | None = None,
    ) -> None:
        path = Path(path)
        self.obj_ids = list(obj_ids) if obj_ids is not None else list(range(num_objects))
        if len(self.obj_ids) != num_objects:
            raise ValueError(f"obj_ids has {len(self.obj_ids)} ids for {num_objects} objects")
        self.paths = (
            [path]
            if num_objects == 1
            else [path.with_name(f"{path.stem}_obj{k}{path.suffix}") for k in self.obj_ids]
        )
        self._files: list[IO[str]] = []
        for p in self.paths:
            self._files.append(_open_text(p))
        self._next = 0

    def write(self, frame_idx: int, frame_rgb: np.ndarray | None, results: Results) -> None:
        if frame_idx < self._next:
            raise ValueError(f"frame {frame_idx} is after frame {self._next - 1}; write in order")
        by_id = _by_id(results)
        for _ in range(self._next, frame_idx):  # frames never written count as absent
            for f in self._files:
                f.write("0,0,0,0\n")
        for k, f in zip(self.obj_ids, self._files, strict=True):
            r = by_id.get(k)
            box = r.box if r is not None and r.present and r.box is not None else (0, 0, 0, 0)
            f.write(",".join(str(int(v)) for v in box) + "\n")
            f.flush()
        self._next = frame_idx + 1

    def close(self) -> None:
        for f in self._files:
            f.close()


class MaskWriter(_Writer):
    """Binary 0/255 PNG per frame and object: ``<dir>/obj<k>/<frame:06d>.png``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        num_objects: int,
        obj_ids: Sequence[int] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.obj_ids = list(obj_ids) if obj_ids is not None else list(range(num_objects))
        for k in self.obj_ids:
            _ensure_dir(self.directory / f"obj{k}")

    def write(self, frame_idx: int, frame_rgb: np.ndarray | None, results: Results) -> None:
        by_id = _by_id(results)
        shape = (
            frame_rgb.shape[:2]
            if frame_rgb is not None
            else (np.shape(results[0].mask) if results else None)
        )
        for k in self.obj_ids:
            r = by_id.get(k)
            if r is not None and r.present:
                png = np.where(np.asarray(r.mask) > 0, 255, 0).astype(np.uint8)
            elif shape is not None:
                png = np.zeros(shape, np.uint8)
            else:
                continue
            ok, buf = cv2.imencode(".png", png)
            if not ok:
                raise VideoError(f"cannot encode the mask of object {k} on frame {frame_idx}")
            final = self.directory / f"obj{k}" / f"{frame_idx:06d}.png"
            tmp = final.with_name(final.name + ".tmp")
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, final)  # a crash never leaves a half-written PNG

    def close(self) -> None:
        """Nothing is held open; every PNG is complete once ``write`` returns."""


class JsonlWriter(_Writer):
    """One JSON object per frame, flushed every line so that a crash loses at most one frame."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = _open_text(self.path)

    def write(self, frame_idx: int, frame_rgb: np.ndarray | None, results: Results) -> None:
        objects = [
            {
                "id": int(r.obj_id),
                "box": [int(v) for v in r.box] if r.box is not None else None,
                "score": float(r.score),
                "present": bool(r.present),
            }
            for r in results
        ]
        self._file.write(json.dumps({"frame": int(frame_idx), "objects": objects}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


_PALETTE = [
    (255, 64, 64),
    (64, 200, 64),
    (64, 128, 255),
    (255, 200, 0),
    (200, 64, 255),
    (0, 220, 220),
    (255, 128, 0),
    (160, 160, 160),
]


def draw_results(
    frame_rgb: np.ndarray, results: Sequence[ObjectResult], alpha: float = 0.45
) -> np.ndarray:
    """A copy of the frame with each present object's mask tinted and its box labelled."""
    out = frame_rgb.copy()
    for r in results:
        if not r.present:
            continue
        color = _PALETTE[r.obj_id % len(_PALETTE)]
        m = np.asarray(r.mask) > 0
        if m.shape == out.shape[:2] and m.any():
            tint = np.asarray(color, np.float32)
            out[m] = (out[m] * (1 - alpha) + tint * alpha).astype(np.uint8)
        if r.box is not None:
            x, y, w, h = (int(v) for v in r.box)
            cv2.rectangle(out, (x, y), (x + w, y + h), color, 2)
            cv2.putText(
                out,
                f"obj {r.obj_id}",
                (x, max(y - 5, 12)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                color,
                1,
                cv2.LINE_AA,
            )
    return out


class AnnotatedVideoWriter(_Writer):
    """MP4 ('mp4v') of frames with masks and boxes drawn; written to ``<name>.partial<suffix>``
    and renamed on close, so the final name only ever holds a finalised, playable file."""

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        self.frames_written = 0
        _ensure_dir(self.path.parent)
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        self._writer: cv2.VideoWriter | None = None
        try:
            self._writer = cv2.VideoWriter(
                str(self.partial), fourcc, float(fps) if fps and fps > 0 else 30.0, self.size
            )
        except cv2.error:
            self._writer = None
        if self._writer is None or not self._writer.isOpened():
            self._writer = None
            raise VideoError(
                f"cannot open {self.partial} for writing an mp4v video at {self.size}; check the "
                "folder is writable and the size is positive"
            )

    def write(self, frame_idx: int, frame_rgb: np.ndarray | None, results: Results) -> None:
        if self._writer is None:
            raise VideoError(f"{self.path} is already closed; open a new writer")
        if frame_rgb is None:
            raise ValueError("AnnotatedVideoWriter needs the frame to draw on")
        if (frame_rgb.shape[1], frame_rgb.shape[0]) != self.size:
            raise VideoError(
                f"frame {frame_idx} is {frame_rgb.shape[1]}x{frame_rgb.shape[0]} but the video is "
                f"{self.size[0]}x{self.size[1]}; pass size=(width, height) of the frames"
            )
        drawn = draw_results(frame_rgb, results)
        self._writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        """Finalise the file and move it to its name; with no frames, remove it instead."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if self.frames_written == 0:
            self.partial.unlink(missing_ok=True)
            log.warning("no frames were written; %s was not created", self.path)
            return
        os.replace(self.partial, self.path)
