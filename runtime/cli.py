"""``samurai-run``: track objects through a video with a SAMURAI ONNX bundle (no PyTorch).

``run_tracking`` is the loop (source -> tracker -> writers) shared by ``samurai-run`` and
``scripts/onnx_inference.py``; ``execute`` wraps it with the command line's error handling: bad
input (video, boxes, bundle, device, options) is one ``error: ...`` line on stderr and exit code
2, never a traceback. Writers are context managers, so a failure or Ctrl-C mid-video leaves every
output written so far valid (box and JSONL lines flushed per frame, whole PNGs, a finalised MP4).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from tqdm import tqdm

from samurai_onnx.runtime.bundle import Bundle, BundleError, load_bundle
from samurai_onnx.runtime.engine import EngineError
from samurai_onnx.runtime.engine.base import DEVICES as DEVICE_PROVIDERS
from samurai_onnx.runtime.preprocess import FrameError
from samurai_onnx.runtime.tracker import Box, Tracker, TrackerError, check_box, parse_box
from samurai_onnx.runtime.video import (
    AnnotatedVideoWriter,
    BoxWriter,
    JsonlWriter,
    MaskWriter,
    Source,
    VideoError,
    open_frames,
    webcam_index,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
# The errors a user can cause (and fix): reported as one line, exit code 2.
USER_ERRORS = (BundleError, VideoError, TrackerError, FrameError)


class UsageError(ValueError):
    """A command-line value that cannot be used (reported like the other user errors)."""


@dataclass
class RunSummary:
    """What ``run_tracking`` did: frames tracked, time spent, files written."""

    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class InferenceError(RuntimeError):
    """ONNX Runtime failed while running a graph (out of memory, a provider error)."""


class PartialRunError(Exception):
    """A failure after some frames were written; ``cause`` is the original error."""

    def __init__(self, cause: BaseException, summary: RunSummary) -> None:
        super().__init__(str(cause))
        self.cause, self.summary = cause, summary


def parse_boxes(texts: Sequence[str] | None) -> list[Box]:
    """``["x,y,w,h", ...]`` -> boxes; one-line errors for a missing or badly written box."""
    if not texts:
        raise UsageError("give the object's first-frame box with --bbox x,y,w,h (once per object)")
    return [parse_box(t) for t in texts]


def check_device(device: str | None) -> str | None:
    if device is not None and device not in DEVICE_PROVIDERS:
        raise UsageError(f"unknown device {device!r}; use one of {', '.join(DEVICE_PROVIDERS)}")
    return device


def video_stem(video: Source) -> str:
    """A file-name stem for outputs named after the video (``webcam0`` for a webcam)."""
    index = webcam_index(video)
    if index is not None:
        return f"webcam{index}"
    if isinstance(video, (str, os.PathLike)):
        return Path(video).resolve().stem or "video"
    return "video"


def default_boxes_path(video: Source) -> Path:
    return Path.cwd() / f"{video_stem(video)}_boxes.txt"


def load_tracker(
    bundle: str | os.PathLike[str] | Bundle,
    *,
    device: str | None = None,
    threads: int | None = None,
    fill_hole_area: int | None = None,
) -> Tracker:
    """A ``Tracker``, with ONNX Runtime's own load failures reported as a ``BundleError``."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    try:
        return Tracker(bundle, device=device, threads=threads, fill_hole_area=fill_hole_area)
    except EngineError as exc:
        raise BundleError(f"{bundle.path}: {exc}; rebuild the bundle") from None


def run_tracking(
    bundle: str | os.PathLike[str] | Bundle,
    video: Source,
    boxes: Sequence[Sequence[float]],
    *,
    device: str | None = None,
    output_video: str | os.PathLike[str] | None = None,
    boxes_out: str | os.PathLike[str] | None = None,
    masks_dir: str | os.PathLike[str] | None = None,
    jsonl: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    fill_hole_area: int | None = None,
    max_frames: int | None = None,
    progress: bool = True,
    notice: str | None = None,
) -> RunSummary:
    """Track ``boxes`` (one per object) through ``video`` and write the requested outputs.

    Raises one of ``USER_ERRORS`` / ``UsageError`` for bad input found before any output is
    written, and ``PartialRunError`` (wrapping the cause) for a failure after some frames were
    written; the outputs then hold every frame before the failure and are valid files.
    ``notice`` is printed to stderr once the outputs are open (after frame 0 is tracked).
    """
    check_device(device)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads is {threads}; it must be at least 1")
    if fill_hole_area is not None and fill_hole_area < 0:
        raise UsageError(f"--fill-hole-area is {fill_hole_area}; it must be 0 (off) or more")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames is {max_frames}; it must be at least 1")
    if not boxes:
        raise UsageError("give at least one box x,y,w,h to track")
    if not any((output_video, boxes_out, masks_dir, jsonl)):
        raise UsageError(
            "no output requested; give --boxes-out, --masks-dir, --jsonl or --output-video"
        )
    # cheap checks first: the bundle's manifest and hashes, the video, the boxes; then sessions
    manifest = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    summary = RunSummary(objects=len(boxes))
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_frames(video))
        if source.size is not None:  # fail on a bad box before anything is shown or written
            boxes = [check_box(box, *source.size, index=i) for i, box in enumerate(boxes)]
        tracker = load_tracker(
            manifest, device=device, threads=threads, fill_hole_area=fill_hole_area
        )
        counts = [n for n in (source.frame_count, max_frames) if n]
        bar = stack.enter_context(
            tqdm(
                total=min(counts) if counts else None,
                desc="tracking",
                unit="frame",
                disable=not progress,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        )
        results = stack.enter_context(
            contextlib.closing(tracker.track_frames(source, list(boxes), max_frames=max_frames))
        )
        writers: list[Any] = []
        started = time.perf_counter()
        try:
            for frame, result in results:
                if not writers:  # opened once frame 0 is tracked: boxes and size are known good
                    outputs = (output_video, boxes_out, masks_dir, jsonl)
                    writers = _open_writers(stack, source.fps, frame, len(boxes), outputs, summary)
                    if notice:
                        bar.write(notice, file=sys.stderr)
                for writer in writers:
                    writer.write(result.index, frame, result.objects)
                summary.frames += 1
                summary.seconds = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix_str(f"{summary.fps:.2f} fps", refresh=False)
        except (*USER_ERRORS, OSError, KeyboardInterrupt) as exc:
            if summary.frames == 0:
                raise
            raise PartialRunError(exc, summary) from exc
        except EngineError as exc:
            failure = InferenceError(f"frame {summary.frames}: {_one_line(exc)}")
            if summary.frames == 0:
                raise failure from exc
            raise PartialRunError(failure, summary) from exc
    return summary


def _open_writers(
    stack: contextlib.ExitStack,
    fps: float | None,
    frame: Any,
    num_objects: int,
    outputs: tuple[str | os.PathLike[str] | None, ...],
    summary: RunSummary,
) -> list[Any]:
    output_video, boxes_out, masks_dir, jsonl = outputs
    writers: list[Any] = []
    if boxes_out:
        box_writer = stack.enter_context(BoxWriter(boxes_out, num_objects))
        writers.append(box_writer)
        summary.outputs.append("boxes " + ", ".join(str(p) for p in box_writer.paths))
    if masks_dir:
        writers.append(stack.enter_context(MaskWriter(masks_dir, num_objects)))
        summary.outputs.append(f"masks {Path(masks_dir) / 'obj<k>' / '<frame>.png'}")
    if jsonl:
        writers.append(stack.enter_context(JsonlWriter(jsonl)))
        summary.outputs.append(f"jsonl {jsonl}")
    if output_video:
        size = (int(frame.shape[1]), int(frame.shape[0]))
        writers.append(stack.enter_context(AnnotatedVideoWriter(output_video, fps or 30.0, size)))
        summary.outputs.append(f"video {output_video}")
    return writers


class _OncePerMessage(logging.Filter):
    """Drop repeats (one session per graph would print the same fallback warning four times)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextlib.contextmanager
def cli_logging(verbose: bool = False) -> Any:
    """Warnings (and with ``verbose``, debug messages) of samurai_onnx as lines on stderr."""
    logger = logging.getLogger("samurai_onnx")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_OncePerMessage())
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def quiet_opencv(verbose: bool = False) -> Any:
    """Keep OpenCV's and FFmpeg's own log lines ("moov atom not found", "can't open camera by
    index") off stderr, where they would sit next to our one-line errors."""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    if verbose:
        yield
        return
    saved = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(saved)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def execute(
    bundle: str | os.PathLike[str] | Bundle,
    video: Source,
    bbox: Sequence[str] | None,
    *,
    verbose: bool = False,
    echo: Callable[[str], None] | None = None,
    **options: Any,
) -> int:
    """``run_tracking`` with the command line's reporting; returns the exit code.

    ``bbox`` holds ``"x,y,w,h"`` strings; ``options`` are ``run_tracking``'s keyword arguments.
    Without any output option, boxes go to ``<video stem>_boxes.txt`` in the current folder.
    """
    say = echo or (lambda text: print(text, flush=True))
    with cli_logging(verbose), quiet_opencv(verbose):
        try:
            boxes = parse_boxes(bbox)
            check_device(options.get("device"))
            outputs = ("output_video", "boxes_out", "masks_dir", "jsonl")
            if not any(options.get(k) for k in outputs):
                options["boxes_out"] = default_boxes_path(video)
                options["notice"] = (
                    f"no output option given; writing boxes to {options['boxes_out']}"
                )
            summary = run_tracking(bundle, video, boxes, **options)
        except (*USER_ERRORS, UsageError, OSError) as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        except InferenceError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        except PartialRunError as exc:
            s, cause = exc.summary, exc.cause
            kept = f"the outputs hold the {s.frames} frame(s) tracked before it"
            if isinstance(cause, KeyboardInterrupt):
                print(f"interrupted; {kept}", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
            print(f"error: {_one_line(cause)} ({kept})", file=sys.stderr, flush=True)
            return EXIT_FAILED if isinstance(cause, InferenceError) else EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted before the first frame was tracked", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
    say(
        f"tracked {summary.frames} frame(s) x {summary.objects} object(s) in "
        f"{summary.seconds:.1f} s ({summary.fps:.2f} fps)"
    )
    for line in summary.outputs:
        say(f"wrote {line}")
    return EXIT_OK


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


RUN_HELP = (
    "Track the objects in the --bbox boxes through VIDEO with a SAMURAI ONNX bundle, without "
    "PyTorch.\n\n"
    "Example: samurai-run bundles/base_plus-cpu dog.mp4 --bbox 450,380,250,165 "
    "--output-video dog_tracked.mp4 --boxes-out dog_boxes.txt\n\n"
    "Bad input (video, box, bundle, device) is reported as one 'error: ...' line with exit code "
    "2 (1 if ONNX Runtime itself fails). If the run fails or is interrupted midway, the outputs "
    "keep every frame tracked before that (exit code 130 for Ctrl-C)."
)


@app.command(no_args_is_help=True, help=RUN_HELP)
def run(
    bundle: Path = typer.Argument(
        ...,
        metavar="BUNDLE",
        help="Bundle directory made by samurai-compile (holds bundle.yaml and the graphs).",
        show_default=False,
    ),
    video: str = typer.Argument(
        ...,
        metavar="VIDEO",
        help="A video file (.mp4 .avi .mov .mkv .webm), a folder of .jpg/.png frames (in "
        "numeric or name order), or a webcam index such as 0.",
        show_default=False,
    ),
    bbox: list[str] | None = typer.Option(
        None,
        "--bbox",
        "-b",
        metavar="X,Y,W,H",
        help="First-frame box in pixels (top-left corner, width, height). Repeat for several "
        "objects; all share one image-encoder pass per frame.",
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        "-d",
        metavar="cpu|cuda|tensorrt",
        help="Execution provider. One missing from this onnxruntime build is reported as a "
        "warning and the CPU is used. Default: what the bundle was compiled for.",
    ),
    output_video: Path | None = typer.Option(
        None,
        "--output-video",
        metavar="FILE",
        help="Write an MP4 (mp4v) of the frames with masks and boxes drawn.",
    ),
    boxes_out: Path | None = typer.Option(
        None,
        "--boxes-out",
        metavar="FILE",
        help="Write LaSOT-style boxes, one x,y,w,h line per frame (0,0,0,0 when the object is "
        "absent); with several objects one file per object, named <stem>_obj<k><suffix>. "
        "Default when no output option is given: <video stem>_boxes.txt in the current folder.",
    ),
    masks_dir: Path | None = typer.Option(
        None,
        "--masks-dir",
        metavar="DIR",
        help="Write binary (0/255) PNG masks, one per object and frame, as "
        "DIR/obj<k>/<frame>.png with 6-digit frame numbers.",
    ),
    jsonl: Path | None = typer.Option(
        None,
        "--jsonl",
        metavar="FILE",
        help="Write one JSON line per frame: frame index and, per object, id, box (x,y,w,h or "
        "null), score (predicted mask IoU) and present.",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        metavar="N",
        help="ONNX Runtime intra-op threads. Default: ONNX Runtime's (all cores).",
    ),
    fill_hole_area: int | None = typer.Option(
        None,
        "--fill-hole-area",
        metavar="N",
        help="Fill background holes of up to N pixels in the 256x256 low-res masks (0 = off). "
        "Default: the bundle's setting (SAM 2's 8).",
    ),
    max_frames: int | None = typer.Option(
        None,
        "--max-frames",
        metavar="N",
        help="Stop after N frames. Default: the whole video.",
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Progress bar with frames per second on stderr."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    code = execute(
        bundle,
        video,
        bbox,
        verbose=verbose,
        echo=typer.echo,
        device=device,
        output_video=output_video,
        boxes_out=boxes_out,
        masks_dir=masks_dir,
        jsonl=jsonl,
        threads=threads,
        fill_hole_area=fill_hole_area,
        max_frames=max_frames,
        progress=progress,
    )
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="samurai-run")


if __name__ == "__main__":
    main()
