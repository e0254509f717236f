"""Frame sources (files, folders, webcams, Python iterables) and result writers.

Frames are streamed one at a time as RGB uint8 HxWx3 so that long videos never sit in memory.
Every error is a :class:`VideoError` with a one-line message saying what is wrong and what to do,
because these are the errors end users hit first. Writers write to hidden temporary files next to
their outputs and rename them into place on ``close`` (``discard`` drops them): an existing file
is never truncated, and is replaced only by a complete one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from PIL import Image

from samurai_onnx.runtime.documents import to_json_value
from samurai_onnx.runtime.preprocess import FrameError, validate_frame

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
Source = str | os.PathLike[str] | int | Iterable[np.ndarray]
# Larger frames are refused from their header, before decoding: a 30000x30000 PNG of zeros is a
# few kilobytes on disk and 2.7 GB once decoded (8K video is 33 megapixels).
MAX_FRAME_PIXELS = 8192 * 8192


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
    prompted: bool = False  # (re)started on this frame by a prompt


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


def check_frame_size(width: int, height: int, what: str) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise VideoError(
            f"{what} is {width}x{height}, over the {MAX_FRAME_PIXELS // 10**6} megapixels a frame "
            "may have; downscale it (the model sees at most 1024x1024 anyway)"
        )


def header_size(path: Path, what: str) -> tuple[int, int] | None:
    """(width, height) from an image file's header (nothing decoded), None if unreadable."""
    try:
        with warnings.catch_warnings():  # PIL warns above 89 MP; ours is the one message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return (int(im.size[0]), int(im.size[1]))
    except Image.DecompressionBombError:  # PIL's own limit, far above ours
        raise VideoError(
            f"{what} is over the {MAX_FRAME_PIXELS // 10**6} megapixels a frame may have; "
            "downscale it (the model sees at most 1024x1024 anyway)"
        ) from None
    except Exception:
        return None


def _open_video_file(path: Path) -> FrameSource:
    what = f"video file {path}"
    cap = _open_capture(str(path), what)
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        check_frame_size(width, height, what)
    except VideoError:
        cap.release()
        raise
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
    # the header alone gives the size; a broken file is reported when it is reached
    size = header_size(paths[0], f"frame 0 ({paths[0]})")
    if size is not None:
        check_frame_size(*size, f"frame 0 ({paths[0]})")

    def frames() -> Iterator[np.ndarray]:
        for i, p in enumerate(paths):
            header = header_size(p, f"frame {i} ({p})")
            if header is not None:  # refused before decoding: too large, or another size
                check_frame_size(*header, f"frame {i} ({p})")
                if size is not None and header != size:
                    raise VideoError(
                        f"frame {i} of folder {folder} is {header[0]}x{header[1]} but frame 0 is "
                        f"{size[0]}x{size[1]}; resize all frames to one size"
                    )
            # EXIF orientation is ignored, as SAMURAI's PIL loader does, so that boxes are in
            # the stored pixel frame (the one LaSOT-style ground truth uses).
            try:
                bgr = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            except cv2.error:  # e.g. OpenCV's own size limit
                bgr = None
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

    def discard(self) -> None:
        """Drop everything written so far; the output's final name is left as it was."""
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _by_id(results: Sequence[ObjectResult]) -> dict[int, ObjectResult]:
    return {r.obj_id: r for r in results}


def _ensure_dir(directory: Path, created: list[Path] | None = None) -> None:
    """Make ``directory`` (and parents); the ones made are appended to ``created``."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot create folder {directory} ({e.strerror}); pick another") from e
    if created is not None:
        created.extend(missing)  # deepest first


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def output_box(box: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """The box written for a mask's box: w and h at least 1.

    Why: SAMURAI's box is ``max - min``, so a one-pixel mask at (0, 0) is ``0,0,0,0``, which
    LaSOT-style files use for "absent". Writing w and h as at least 1 keeps every present object
    distinguishable from an absent one (a one-pixel mask at x,y is ``x,y,1,1``).
    """
    if box is None:
        return None
    x, y, w, h = (int(v) for v in box)
    return (x, y, max(w, 1), max(h, 1))


class _TempFile:
    """An output file written under a hidden temporary name in its folder and renamed into place.

    Why: nothing a run writes may truncate or replace an existing file before the run has
    something to put there (a run refused or failed before its first frame leaves every file as
    it was), and the final name only ever holds a complete file. ``commit`` renames (atomic on
    one file system); ``discard`` deletes the temporary file and the folders made for it.
    """

    def __init__(self, path: Path, suffix: str = "") -> None:
        self.path = path
        if path.is_dir():
            raise VideoError(f"{path} is a folder; give a file name for this output")
        self._created: list[Path] = []
        _ensure_dir(path.parent, self._created)
        try:
            fd, name = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent
            )
        except OSError as e:
            _remove_empty(self._created)
            raise VideoError(
                f"cannot write in {path.parent} ({e.strerror}); check the folder is writable"
            ) from e
        os.close(fd)
        self.temp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        self.temp.chmod(0o666 & ~umask)  # mkstemp's 0600 would make the output private

    def commit(self) -> None:
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)
        _remove_empty(self._created)


class _TextOutput(_TempFile):
    """A text ``_TempFile`` open for writing, flushed per line (a killed run keeps the lines in
    the temporary file; the final name is untouched)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.file: IO[str] = open(self.temp, "w", encoding="utf-8")
        except OSError as e:
            self.discard()
            raise VideoError(f"cannot write {path} ({e.strerror}); check it is writable") from e

    def close(self, keep: bool) -> None:
        if self.file.closed:
            return
        self.file.close()
        if keep:
            self.commit()
        else:
            self.discard()


class BoxWriter(_Writer):
    """LaSOT-style boxes: one ``x,y,w,h`` line per frame; one file per object if several.

    Objects are ``obj_ids`` (default 0..num_objects-1); with several, object k goes to
    ``<stem>_obj<k><suffix>``. Absent objects and skipped frames write ``0,0,0,0``; present ones
    have w and h of at least 1 (``output_box``). Files are written to temporary names and moved
    into place by ``close`` once at least one frame was written (with none, nothing changes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        num_objects: int,
        obj_ids: Sequence[int] | None = None,
    ) -> None:
        self.obj_ids = list(obj_ids) if obj_ids is not None else list(range(num_objects))
        if len(self.obj_ids) != num_objects:
            raise ValueError(f"obj_ids has {len(self.obj_ids)} ids for {num_objects} objects")
        self.paths = self.paths_for(path, self.obj_ids)
        self._files: list[_TextOutput] = []
        try:
            for p in self.paths:
                self._files.append(_TextOutput(p))
        except BaseException:
            self.discard()
            raise
        self._next = 0

    @staticmethod
    def paths_for(path: str | os.PathLike[str], obj_ids: Sequence[int]) -> list[Path]:
        """The files written for ``obj_ids``: ``path`` for one object, else one per object."""
        path = Path(path)
        if len(obj_ids) == 1:
            return [path]
        return [path.with_name(f"{path.stem}_obj{k}{path.suffix}") for k in obj_ids]

    def write(self, frame_idx: int, frame_rgb: np.ndarray | None, results: Results) -> None:
        if frame_idx < self._next:
            raise ValueError(f"frame {frame_idx} is after frame {self._next - 1}; write in order")
        by_id = _by_id(results)
        for _ in range(self._next, frame_idx):  # frames never written count as absent
            for f in self._files:
                f.file.write("0,0,0,0\n")
        for k, f in zip(self.obj_ids, self._files, strict=True):
            r = by_id.get(k)
            box = output_box(r.box) if r is not None and r.present else None
            f.file.write(",".join(str(v) for v in box or (0, 0, 0, 0)) + "\n")
            f.file.flush()
        self._next = frame_idx + 1

    def close(self) -> None:
        for f in self._files:
            f.close(keep=self._next > 0)

    def discard(self) -> None:
        for f in reversed(self._files):  # the first file's folders are removed last
            f.close(keep=False)


class MaskWriter(_Writer):
    """Binary 0/255 PNG per frame and object: ``<dir>/obj<k>/<frame:06d>.png``.

    Each PNG is written to a temporary name and renamed, so an existing PNG is only ever
    replaced by a complete new one. ``discard`` removes the PNGs this writer made (and the folders
    it created), leaving files that were there before untouched.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        num_objects: int,
        obj_ids: Sequence[int] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.obj_ids = list(obj_ids) if obj_ids is not None else list(range(num_objects))
        if self.directory.exists() and not self.directory.is_dir():
            raise VideoError(f"{self.directory} is a file, not a folder; give a folder for masks")
        self._created: list[Path] = []
        for k in self.obj_ids:
            sub = self.directory / f"obj{k}"
            if sub.exists() and not sub.is_dir():
                raise VideoError(f"{sub} is a file, not a folder; remove it or pick another folder")
            made: list[Path] = []
            _ensure_dir(sub, made)
            self._created = made + self._created
        self._new: list[Path] = []
        self.frames_written = 0

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
            tmp = final.with_name(f".{final.name}.tmp")
            if not final.exists():
                self._new.append(final)
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, final)  # a crash never leaves a half-written PNG
        self.frames_written += 1

    def close(self) -> None:
        """Nothing is held open (every PNG is complete once ``write`` returns); with no frame
        written, the folders made for the masks are removed again."""
        if self.frames_written == 0:
            self.discard()

    def discard(self) -> None:
        for png in self._new:
            png.unlink(missing_ok=True)
        _remove_empty(self._created)


class JsonlWriter(_Writer):
    """One JSON object per frame (``null`` for a non-finite score), flushed every line; written
    to a temporary name and moved into place on ``close`` once a frame was written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._out = _TextOutput(self.path)
        self.frames_written = 0

    @property
    def temp(self) -> Path:
        return self._out.temp

    def write(self, frame_idx: int, frame_rgb: np.ndarray | None, results: Results) -> None:
        objects = [
            {
                "id": int(r.obj_id),
                "box": list(output_box(r.box) or ()) or None,
                "score": float(r.score),
                "present": bool(r.present),
                "prompted": bool(r.prompted),
            }
            for r in results
        ]
        line = {"frame": int(frame_idx), "objects": objects}
        self._out.file.write(json.dumps(to_json_value(line), allow_nan=False) + "\n")
        self._out.file.flush()
        self.frames_written += 1

    def close(self) -> None:
        self._out.close(keep=self.frames_written > 0)

    def discard(self) -> None:
        self._out.close(keep=False)


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
    """MP4 ('mp4v') of frames with masks and boxes drawn; written to a hidden temporary file next
    to ``path`` and renamed on close, so the final name only ever holds a finalised, playable
    file (and an existing file there is replaced only then)."""

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.frames_written = 0
        self._out = _TempFile(self.path, self.path.suffix or ".mp4")
        self.partial = self._out.temp
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
            self._out.discard()
            raise VideoError(
                f"cannot open {self.path} for writing an mp4v video at {self.size[0]}x"
                f"{self.size[1]}; check the folder is writable, the name ends in .mp4 and the size "
                "is positive"
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
            self._out.discard()
            log.warning("no frames were written; %s was not created", self.path)
            return
        self._out.commit()

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._out.discard()
