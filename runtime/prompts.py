"""Prompt files: SAM 2's prompts for any frame, as JSON, read as untrusted documents.

    {"prompts": [
        {"frame": 0, "object": 0, "box": [x, y, w, h]},
        {"frame": 0, "object": 1, "points": [[x, y], [x, y]], "labels": [1, 0]},
        {"frame": 5, "object": 1, "box": [x, y, w, h], "points": [[x, y]], "labels": [0]},
        {"frame": 12, "object": 2, "mask": "mask.png"},
        {"frame": 40, "object": 0, "remove": true}
    ]}

Coordinates are pixels of the video; labels are 1 (positive) or 0 (negative); a mask is a PNG of
the video's size whose non-zero pixels are the object, named relative to the prompt file and
inside its folder. A prompt for a new object starts it on that frame; one for a tracked object
restarts it there (a correction); ``remove`` ends it. The file is read with the limits of every
untrusted document (``documents.load_json``: size, nesting, no NaN), every field is
type- and range-checked, and a problem is one line naming the entry and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime.documents import (
    DocumentError,
    load_json,
    read_bytes,
    require,
    short,
    unknown_keys,
)
from samurai_onnx.runtime.tracker import Prompt
from samurai_onnx.runtime.video import VideoError, check_frame_size, header_size

MAX_PROMPTS = 10_000
MAX_OBJECTS = 64  # as many as samurai-run tracks (--bbox)
MAX_POINTS = 64
MAX_FRAME = 10_000_000
MAX_MASK_BYTES = 64 << 20


class PromptError(DocumentError):
    """A prompt file that cannot be used; the message names the entry, the key and the fix."""


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read and check a prompt file; masks are loaded (bool arrays) from the file's folder."""
    path = Path(path)
    data = load_json(path, error=PromptError)
    where = str(path)
    if not isinstance(data, dict):
        raise PromptError(f'{where}: expected {{"prompts": [...]}} at the top level')
    unknown_keys(data, ("prompts",), where, error=PromptError)
    items = require(data, "prompts", where, list, error=PromptError)
    if not items:
        raise PromptError(f"{where}: prompts is empty; give at least one prompt")
    if len(items) > MAX_PROMPTS:
        raise PromptError(f"{where}: {len(items)} prompts; at most {MAX_PROMPTS} are read")
    prompts = [_prompt(item, f"{where}: prompts[{i}]", path.parent) for i, item in enumerate(items)]
    objects = {p.obj_id for p in prompts}
    if len(objects) > MAX_OBJECTS:
        raise PromptError(f"{where}: {len(objects)} objects; at most {MAX_OBJECTS} are tracked")
    seen: set[tuple[int, int]] = set()
    for i, p in enumerate(prompts):
        if (p.frame, p.obj_id) in seen:
            raise PromptError(
                f"{where}: prompts[{i}] is a second prompt for object {p.obj_id} on frame "
                f"{p.frame}; merge them (a box and points may share one entry)"
            )
        seen.add((p.frame, p.obj_id))
    return sorted(prompts, key=lambda p: p.frame)


def _int(item: dict[str, Any], key: str, where: str, hi: int) -> int:
    value = require(item, key, where, int, error=PromptError)
    if not 0 <= value <= hi:
        raise PromptError(f"{where}.{key}: {short(value)} must be between 0 and {hi}")
    return int(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PromptError(f"{where}: {short(value)} is not a finite number")
    return float(value)


def _prompt(item: Any, where: str, folder: Path) -> Prompt:
    if not isinstance(item, dict):
        raise PromptError(
            f'{where}: expected {{"frame": ..., "object": ..., ...}}, got {short(item)}'
        )
    unknown_keys(
        item,
        ("frame", "object", "box", "points", "labels", "mask", "remove"),
        where,
        error=PromptError,
    )
    frame = _int(item, "frame", where, MAX_FRAME)
    obj = _int(item, "object", where, 1_000_000)
    remove = item.get("remove", False)
    if not isinstance(remove, bool):
        raise PromptError(f"{where}.remove: expected true or false, got {short(remove)}")
    given = [k for k in ("box", "points", "mask") if k in item]
    if remove:
        if given:
            raise PromptError(f"{where}: remove ends a track; give no {given[0]} with it")
        return Prompt(frame, obj, remove=True)
    if not given:
        raise PromptError(f"{where}: give a box, points (with labels) or a mask")
    if "mask" in item:
        if len(given) > 1:
            raise PromptError(f"{where}: a mask prompt stands alone; drop the box and points")
        return Prompt(frame, obj, mask=_mask(item["mask"], f"{where}.mask", folder))
    box = None
    if "box" in item:
        raw = require(item, "box", where, list, error=PromptError)
        if len(raw) != 4:
            raise PromptError(f"{where}.box: expected [x, y, w, h], got {short(raw)}")
        x, y, w, h = (_number(v, f"{where}.box[{i}]") for i, v in enumerate(raw))
        if w <= 0 or h <= 0:
            raise PromptError(f"{where}.box: w and h must be > 0, got {short(raw)}")
        box = (x, y, w, h)
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    if "points" in item or "labels" in item:
        raw_points = require(item, "points", where, list, error=PromptError)
        raw_labels = require(item, "labels", where, list, error=PromptError)
        if not raw_points or len(raw_points) > MAX_POINTS:
            raise PromptError(f"{where}.points: give 1 to {MAX_POINTS} points [x, y]")
        if len(raw_labels) != len(raw_points):
            raise PromptError(
                f"{where}.labels: {len(raw_labels)} label(s) for {len(raw_points)} point(s); "
                "give one per point"
            )
        for i, pt in enumerate(raw_points):
            if not isinstance(pt, list) or len(pt) != 2:
                raise PromptError(f"{where}.points[{i}]: expected [x, y], got {short(pt)}")
        points = tuple(
            (_number(pt[0], f"{where}.points[{i}]"), _number(pt[1], f"{where}.points[{i}]"))
            for i, pt in enumerate(raw_points)
        )
        for i, label in enumerate(raw_labels):
            if isinstance(label, bool) or label not in (0, 1):
                raise PromptError(
                    f"{where}.labels[{i}]: {short(label)}; use 1 (positive) or 0 (negative)"
                )
        labels = tuple(int(v) for v in raw_labels)
    return Prompt(frame, obj, box=box, points=points, labels=labels)


def _mask(value: Any, where: str, folder: Path) -> np.ndarray:
    """A PNG named relative to the prompt file, inside its folder, decoded to a bool array."""
    import cv2

    if not isinstance(value, str) or not value:
        raise PromptError(f"{where}: expected a PNG file name, got {short(value)}")
    root = folder.resolve()
    path = (folder / value).resolve()
    if Path(value).is_absolute() or not path.is_relative_to(root):
        raise PromptError(
            f"{where}: {short(value)} is outside the prompt file's folder {root}; put the mask "
            "next to the prompt file"
        )
    if path.suffix.lower() != ".png":
        raise PromptError(f"{where}: {short(value)} is not a .png file")
    raw = read_bytes(path, error=PromptError, max_bytes=MAX_MASK_BYTES)
    try:  # from the header, before decoding: a few KB of PNG can declare gigapixels
        size = header_size(path, f"{where} ({short(value)})")
        if size is None:
            raise PromptError(f"{where}: {short(value)} is not a readable PNG")
        check_frame_size(*size, f"{where} ({short(value)})")
    except VideoError as exc:
        raise PromptError(str(exc)) from None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PromptError(f"{where}: {short(value)} is not a readable PNG")
    if image.ndim == 3:
        image = image.max(axis=2)  # any non-zero channel marks the object
    return np.asarray(image != 0)
