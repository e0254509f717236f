"""``samurai-run``: track objects through a video with a SAMURAI ONNX bundle (no PyTorch).

``run_tracking`` is the loop (source -> tracker -> writers) shared by ``samurai-run`` and
``scripts/onnx_inference.py``; ``execute`` wraps it with the command line's error handling: bad
input (video, boxes, bundle, device, options, output paths) is one ``error: ...`` line on stderr
and exit code 2, never a traceback.

Outputs are never allowed to destroy a user's file: ``check_outputs`` refuses (before anything is
read) an output path that is an input (the video, a frame of the frame folder, the bundle) or
another output, or a folder where a file is expected; every output is then opened under a
temporary name before frame 0 is tracked, and renamed into place when the run ends. A run that
stops before its first frame changes no file; one that fails or is interrupted midway (Ctrl-C or
SIGTERM: the frame in progress is finished first) keeps every frame tracked before that in every
output (whole lines, whole PNGs, a finalised MP4).
"""

from __future__ import annotations

import contextlib
import itertools
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

from samurai_onnx.runtime.bundle import FORMS, Bundle, BundleError, check_overrides, load_bundle
from samurai_onnx.runtime.documents import DocumentError, check_threads, one_line, short
from samurai_onnx.runtime.engine import EngineError
from samurai_onnx.runtime.engine.base import DEVICES as DEVICE_PROVIDERS
from samurai_onnx.runtime.engine.forms import check_forms
from samurai_onnx.runtime.preprocess import FrameError
from samurai_onnx.runtime.prompts import load_prompts
from samurai_onnx.runtime.signals import StopFlag, exit_code, handle_signals
from samurai_onnx.runtime.tracker import (
    Box,
    Prompt,
    Tracker,
    TrackerError,
    check_box,
    check_prompt,
    parse_box,
)
from samurai_onnx.runtime.video import (
    IMAGE_EXTENSIONS,
    AnnotatedVideoWriter,
    BoxWriter,
    FrameSource,
    JsonlWriter,
    MaskWriter,
    Source,
    VideoError,
    open_frames,
    webcam_index,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
# The errors a user can cause (and fix): reported as one line, exit code 2.
USER_ERRORS = (DocumentError, VideoError, TrackerError, FrameError)


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


# Each object holds a memory bank (~4 MB at 1024 pixels) and per-frame masks at the video's size:
# a few thousand --bbox would exhaust memory, so the command line stops well before that.
MAX_OBJECTS = 64


def parse_boxes(texts: Sequence[str] | None, *, required: bool = True) -> list[Box]:
    """``["x,y,w,h", ...]`` -> boxes; one-line errors for a missing or badly written box."""
    if not texts:
        if not required:
            return []
        raise UsageError(
            "give the object's first-frame box with --bbox x,y,w,h (once per object), or "
            "prompts on any frame with --prompts FILE"
        )
    if len(texts) > MAX_OBJECTS:
        raise UsageError(
            f"{len(texts)} --bbox given; at most {MAX_OBJECTS} objects are tracked in one run "
            "(split the objects over several runs)"
        )
    long = next((t for t in texts if len(t) > 200), None)
    if long is not None:
        raise UsageError(f"box {short(long)} is not x,y,w,h: four numbers separated by commas")
    return [parse_box(t) for t in texts]


def check_device(device: str | None) -> str | None:
    if device is not None and device not in DEVICE_PROVIDERS:
        raise UsageError(
            f"unknown device {short(device)}; use one of {', '.join(DEVICE_PROVIDERS)}"
        )
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


def _resolved(path: str | os.PathLike[str]) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        raise UsageError(f"{path}: not a usable path; give another") from None


def _same(a: Path, b: Path) -> bool:
    """Same resolved path, or the same existing file under two names (hard link, case)."""
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(
    video: Source,
    bundle: str | os.PathLike[str] | Bundle,
    obj_ids: Sequence[int],
    *,
    output_video: str | os.PathLike[str] | None = None,
    boxes_out: str | os.PathLike[str] | None = None,
    masks_dir: str | os.PathLike[str] | None = None,
    jsonl: str | os.PathLike[str] | None = None,
    extra_inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Refuse output paths that would overwrite an input or another output, before any work.

    Compared as resolved paths (symlinks followed; hard links via ``samefile``): every output
    file (``--boxes-out`` expands to one file per object) must differ from the video file, from
    the frames of a frame folder, from every other output, must not lie inside the bundle or in
    a mask folder ``<masks-dir>/obj<k>``, and must not be an existing folder; ``--masks-dir``
    must not be a file, the frame folder or hold the video.
    """
    files: list[tuple[str, Path]] = []
    if boxes_out:
        names = BoxWriter.paths_for(boxes_out, list(obj_ids))
        files += [("--boxes-out", _resolved(n)) for n in names]
    if jsonl:
        files.append(("--jsonl", _resolved(jsonl)))
    if output_video:
        files.append(("--output-video", _resolved(output_video)))
    inputs: list[tuple[str, Path]] = []
    video_path: Path | None = None
    if webcam_index(video) is None and isinstance(video, (str, os.PathLike)):
        video_path = _resolved(video)
        inputs.append(("the input video", video_path))
    inputs += [("an input file", _resolved(p)) for p in extra_inputs]  # e.g. the prompt file
    bundle_dir = _resolved(bundle.path if isinstance(bundle, Bundle) else bundle)
    seen: dict[Path, str] = {}
    for option, path in files:
        if path.is_dir():
            raise UsageError(f"{option} {path} is an existing folder; give a file name")
        for what, source in inputs:
            if _same(path, source):
                raise UsageError(
                    f"{option} {path} is {what}; writing it would destroy the input, give "
                    "another output name"
                )
        if video_path is not None and video_path.is_dir() and path.parent == video_path:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                raise UsageError(
                    f"{option} {path} is in the input frame folder and would become (or "
                    "overwrite) one of its frames; write it elsewhere"
                )
        if path.is_relative_to(bundle_dir):
            raise UsageError(f"{option} {path} is inside the bundle {bundle_dir}; write elsewhere")
        other = next((o for p, o in seen.items() if _same(p, path)), None)
        if other is not None:
            raise UsageError(
                f"{option} {path} is also the file of {other}; give each output its own name"
            )
        seen[path] = option
    if masks_dir:
        masks = _resolved(masks_dir)
        if masks.exists() and not masks.is_dir():
            raise UsageError(f"--masks-dir {masks} is a file; give a folder for the masks")
        if video_path is not None and (video_path == masks or video_path.is_relative_to(masks)):
            raise UsageError(
                f"--masks-dir {masks} holds the input video {video_path}; give another folder"
            )
        if masks.is_relative_to(bundle_dir) or bundle_dir.is_relative_to(masks):
            raise UsageError(f"--masks-dir {masks} overlaps the bundle {bundle_dir}; give another")
        for option, path in files:
            if path.parent.parent == masks and path.parent.name.startswith("obj"):
                raise UsageError(
                    f"{option} {path} is inside the mask folder {path.parent}; write it elsewhere"
                )


def _peek(source: FrameSource) -> tuple[Any, FrameSource]:
    """Frame 0 of ``source`` (read now: its size opens the video output before tracking) and a
    source that yields it again followed by the rest."""
    frames = iter(source)
    first = next(frames)  # an empty source raises VideoError("... has no frames") here
    height, width = first.shape[:2]
    wrapped = FrameSource(
        lambda: itertools.chain([first], frames),
        source.description,
        fps=source.fps,
        frame_count=source.frame_count,
        size=(int(width), int(height)),
        on_close=getattr(frames, "close", None),
        reiterable=False,
    )
    return first, wrapped


def load_tracker(
    bundle: str | os.PathLike[str] | Bundle,
    *,
    device: str | None = None,
    threads: int | None = None,
    fill_hole_area: int | None = None,
    forms: str = "fastest",
    prefetch: bool | None = None,
) -> Tracker:
    """A ``Tracker``, with ONNX Runtime's own load failures reported as a ``BundleError``."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    try:
        return Tracker(
            bundle, device=device, threads=threads, fill_hole_area=fill_hole_area, forms=forms,
            prefetch=prefetch,
        )  # fmt: skip
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
    stop: StopFlag | None = None,
    prompts: Sequence[Prompt] = (),
    extra_inputs: Sequence[str | os.PathLike[str]] = (),
    forms: str = "fastest",
    prefetch: bool | None = None,
) -> RunSummary:
    """Track ``boxes`` (objects 0, 1, ... on frame 0) and ``prompts`` (any frame, any object id)
    through ``video`` and write the requested outputs.

    Raises one of ``USER_ERRORS`` / ``UsageError`` for bad input found before any output is
    written (no file is changed then), and ``PartialRunError`` (wrapping the cause) for a failure
    after some frames were written; the outputs then hold every frame before the failure and
    are valid files. ``notice`` is printed to stderr once the outputs are open (before frame 0
    is tracked). ``stop`` (from ``signals.handle_signals``) is checked between frames.
    """
    check_device(device)
    check_threads(threads, "--threads", error=UsageError)
    try:
        check_forms(forms)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if fill_hole_area is not None and fill_hole_area < 0:
        raise UsageError(f"--fill-hole-area is {fill_hole_area}; it must be 0 (off) or more")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames is {max_frames}; it must be at least 1")
    if not boxes and not prompts:
        raise UsageError("give at least one box x,y,w,h (or a prompt file) to track")
    obj_ids = sorted(set(range(len(boxes))) | {p.obj_id for p in prompts})
    if len(obj_ids) > MAX_OBJECTS:
        raise UsageError(f"{len(obj_ids)} objects; at most {MAX_OBJECTS} are tracked in one run")
    outputs = (output_video, boxes_out, masks_dir, jsonl)
    if not any(outputs):
        raise UsageError(
            "no output requested; give --boxes-out, --masks-dir, --jsonl or --output-video"
        )
    check_outputs(
        video,
        bundle,
        obj_ids,
        extra_inputs=extra_inputs,
        output_video=output_video,
        boxes_out=boxes_out,
        masks_dir=masks_dir,
        jsonl=jsonl,
    )
    # cheap checks first: the bundle's manifest and hashes, the video, the boxes; then sessions
    manifest = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if fill_hole_area is not None:
        check_overrides(
            manifest.tracker,
            {"fill_hole_area": fill_hole_area},
            where="--fill-hole-area",
            error=UsageError,
        )
    summary = RunSummary(objects=len(obj_ids))
    writers: list[Any] = []
    with contextlib.ExitStack() as stack:
        opened = stack.enter_context(open_frames(video))
        first, source = _peek(opened)
        stack.callback(source.close)
        width, height = int(first.shape[1]), int(first.shape[0])
        boxes = [check_box(box, width, height, index=i) for i, box in enumerate(boxes)]
        prompts = [check_prompt(p, (width, height)) for p in prompts]  # all, before frame 0
        tracker = load_tracker(
            manifest, device=device, threads=threads, fill_hole_area=fill_hole_area, forms=forms,
            prefetch=prefetch,
        )  # fmt: skip
        if stop is not None:
            stop.check()
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
        started = time.perf_counter()
        try:
            try:
                # every output opened (under a temporary name) before frame 0 is tracked
                writers = _open_writers(source.fps, first, obj_ids, outputs, summary)
                if notice:
                    bar.write(notice, file=sys.stderr)
                results = stack.enter_context(
                    contextlib.closing(
                        tracker.track_frames(
                            source, list(boxes) or None, prompts=prompts, max_frames=max_frames
                        )
                    )
                )
                for frame, result in results:
                    for writer in writers:
                        writer.write(result.index, frame, result.objects)
                    summary.frames += 1
                    summary.seconds = time.perf_counter() - started
                    bar.update(1)
                    bar.set_postfix_str(f"{summary.fps:.2f} fps", refresh=False)
                    if stop is not None:
                        stop.check()
            except BaseException:
                if summary.frames == 0:  # nothing to keep: every file stays as it was
                    for writer in reversed(writers):
                        writer.discard()
                raise
            finally:
                _close_all(writers)
        except (*USER_ERRORS, OSError, KeyboardInterrupt) as exc:
            if summary.frames == 0:
                raise
            raise PartialRunError(exc, summary) from exc
        except EngineError as exc:
            failure = InferenceError(f"frame {summary.frames}: {one_line(exc)}")
            if summary.frames == 0:
                raise failure from exc
            raise PartialRunError(failure, summary) from exc
    return summary


def _close_all(writers: Sequence[Any]) -> None:
    """Close every writer (each moves its file into place), even when one of them fails; the
    first failure is raised once all are closed."""
    failure: BaseException | None = None
    for writer in writers:
        try:
            writer.close()
        except Exception as exc:
            failure = failure or exc
    if failure is not None and sys.exc_info()[1] is None:
        raise failure


def _open_writers(
    fps: float | None,
    frame: Any,
    obj_ids: Sequence[int],
    outputs: tuple[str | os.PathLike[str] | None, ...],
    summary: RunSummary,
) -> list[Any]:
    """Every requested writer, open; if one cannot be opened the others are discarded."""
    output_video, boxes_out, masks_dir, jsonl = outputs
    writers: list[Any] = []
    try:
        if boxes_out:
            box_writer = BoxWriter(boxes_out, len(obj_ids), obj_ids)
            writers.append(box_writer)
            summary.outputs.append("boxes " + ", ".join(str(p) for p in box_writer.paths))
        if masks_dir:
            writers.append(MaskWriter(masks_dir, len(obj_ids), obj_ids))
            summary.outputs.append(f"masks {Path(masks_dir) / 'obj<k>' / '<frame>.png'}")
        if jsonl:
            writers.append(JsonlWriter(jsonl))
            summary.outputs.append(f"jsonl {jsonl}")
        if output_video:
            size = (int(frame.shape[1]), int(frame.shape[0]))
            writers.append(AnnotatedVideoWriter(output_video, fps or 30.0, size))
            summary.outputs.append(f"video {output_video}")
    except BaseException:
        for writer in reversed(writers):
            writer.discard()
        summary.outputs.clear()
        raise
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
    with cli_logging(verbose), quiet_opencv(verbose), handle_signals(deferred=True) as stop:
        try:
            options.setdefault("stop", stop)
            prompts_file = options.pop("prompts_file", None)
            if prompts_file is not None:
                options["prompts"] = load_prompts(prompts_file)
                options["extra_inputs"] = [prompts_file]
            boxes = parse_boxes(bbox, required=prompts_file is None)
            check_device(options.get("device"))
            outputs = ("output_video", "boxes_out", "masks_dir", "jsonl")
            if not any(options.get(k) for k in outputs):
                options["boxes_out"] = default_boxes_path(video)
                options["notice"] = (
                    f"no output option given; writing boxes to {options['boxes_out']}"
                )
            summary = run_tracking(bundle, video, boxes, **options)
        except (*USER_ERRORS, UsageError, OSError) as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        except InferenceError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        except PartialRunError as exc:
            s, cause = exc.summary, exc.cause
            kept = f"the outputs hold the {s.frames} frame(s) tracked before it"
            if isinstance(cause, KeyboardInterrupt):
                print(f"interrupted; {kept}", file=sys.stderr, flush=True)
                return exit_code(cause)
            print(f"error: {one_line(cause)} ({kept})", file=sys.stderr, flush=True)
            return EXIT_FAILED if isinstance(cause, InferenceError) else EXIT_BAD_INPUT
        except KeyboardInterrupt as exc:
            print(
                "interrupted before the first frame was tracked; no file was changed",
                file=sys.stderr,
                flush=True,
            )
            return exit_code(exc)
        except Exception as exc:  # a bug: still one line, the traceback with --verbose
            log.debug("unexpected failure", exc_info=True)
            print(
                f"error: internal error ({type(exc).__name__}: {one_line(exc, 300)}); please "
                "report it with the output of --verbose",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_FAILED
    say(
        f"tracked {summary.frames} frame(s) x {summary.objects} object(s) in "
        f"{summary.seconds:.1f} s ({summary.fps:.2f} fps)"
    )
    for line in summary.outputs:
        say(f"wrote {line}")
    return EXIT_OK


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


RUN_HELP = (
    "Track the objects in the --bbox boxes (and/or the --prompts file) through VIDEO with a "
    "SAMURAI ONNX bundle, without PyTorch.\n\n"
    "Example: samurai-run bundles/base_plus-cpu dog.mp4 --bbox 450,380,250,165 "
    "--output-video dog_tracked.mp4 --boxes-out dog_boxes.txt\n\n"
    "Objects are reported from their first prompted frame on; box files hold one x,y,w,h line "
    "per frame (0,0,0,0 where the object is absent or not tracked) and the JSONL marks the "
    "frames where an object is (re)prompted (\"prompted\": true).\n\n"
    "Bad input (video, box, bundle, device, output paths) is reported as one 'error: ...' line "
    "with exit code 2 (1 if ONNX Runtime itself fails), and changes no file. Outputs are written "
    "under temporary names and renamed into place at the end; an output may not be an input or "
    "another output. If the run fails or is interrupted midway (Ctrl-C: exit code 130, SIGTERM: "
    "143; the frame in progress is finished first), the outputs keep every frame tracked before "
    "that."
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
        "objects (ids 0, 1, ...); all share one image-encoder pass per frame, and each graph "
        "after it runs all objects as one batch.",
    ),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        metavar="FILE",
        help='JSON prompts on any frame: {"prompts": [{"frame": 0, "object": 0, "box": [x, y, '
        'w, h]}, {"frame": 0, "object": 1, "points": [[x, y]], "labels": [1]}, {"frame": 12, '
        '"object": 2, "mask": "mask.png"}, {"frame": 40, "object": 0, "remove": true}]}. '
        "Pixels of the video; labels 1 positive, 0 negative; a mask PNG of the video's size "
        "next to the file (non-zero = object). A prompt for a tracked object restarts it there. "
        "With or without --bbox.",
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
        "absent; w and h of a present object are at least 1); with several objects one file per "
        "object, named <stem>_obj<k><suffix>. "
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
        "null), score (predicted mask IoU; null if not finite) and present.",
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
    forms: str = typer.Option(
        "fastest",
        "--forms",
        metavar="FORM",
        help="For graphs the bundle holds in several forms (its target's alternatives, e.g. the "
        "cuda targets' memory encoder): fastest (each timed on the device when loading), main, "
        f"or a form by name ({', '.join(FORMS)}). Bundles with one form per graph ignore it.",
    ),
    prefetch: bool | None = typer.Option(
        None,
        "--prefetch/--no-prefetch",
        help="Encode the next frame while this one is tracked (a second thread; same results). "
        "Meant for GPUs, which the other graphs leave idle much of the time (launch-bound); on "
        "a CPU whose cores are busy it only adds contention. Off with CUDA graphs. Default: the "
        "bundle's target (its prefetch field).",
        show_default=False,
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
        prompts_file=prompts,
        forms=forms,
        prefetch=prefetch,
    )
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="samurai-run")


if __name__ == "__main__":
    main()
