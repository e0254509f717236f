"""Engines: where a bundle's graphs run. One interface (``base``), several implementations.

``create_engine`` picks the implementation a bundle's target names (``engine:`` in the target
manifest; ONNX Runtime when absent) and passes it the target's providers and options.
"""

from __future__ import annotations

from samurai_onnx.runtime.engine.base import (
    DEVICES,
    Engine,
    EngineError,
    EngineSettings,
    GraphSession,
    create_engine,
)

__all__ = [
    "DEVICES",
    "Engine",
    "EngineError",
    "EngineSettings",
    "GraphSession",
    "create_engine",
]
