"""SAMURAI on ONNX Runtime: track objects in videos with a compiled bundle, without PyTorch.

    from samurai_onnx.runtime import SAMURAIONNXPredictor

    predictor = SAMURAIONNXPredictor("bundles/base_plus-cpu", device="cpu")
    for result in predictor.track_video("dog.mp4", (450, 380, 250, 165)):
        print(result.index, result.objects[0].box)

``Tracker`` is the lower-level API (``start(frame, boxes)`` / ``step(frame)`` / ``track(video,
boxes)``), ``load_bundle`` reads and verifies a bundle. Names are imported on first use, so that
importing this package (as the compiler does for the bundle schema) loads neither ONNX Runtime
nor OpenCV; nothing here ever imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from samurai_onnx.runtime.bundle import Bundle, BundleError, load_bundle
    from samurai_onnx.runtime.tracker import (
        FrameResult,
        SAMURAIONNXPredictor,
        Tracker,
        TrackerError,
    )
    from samurai_onnx.runtime.video import ObjectResult, VideoError, open_frames

_EXPORTS = {
    "Tracker": "tracker",
    "TrackerError": "tracker",
    "SAMURAIONNXPredictor": "tracker",
    "FrameResult": "tracker",
    "ObjectResult": "video",
    "VideoError": "video",
    "open_frames": "video",
    "Bundle": "bundle",
    "BundleError": "bundle",
    "load_bundle": "bundle",
}

__all__ = [
    "Bundle",
    "BundleError",
    "FrameResult",
    "ObjectResult",
    "SAMURAIONNXPredictor",
    "Tracker",
    "TrackerError",
    "VideoError",
    "load_bundle",
    "open_frames",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
