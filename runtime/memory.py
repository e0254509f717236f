"""SAMURAI's memory bank as fixed-capacity ring buffers.

SAMURAI (``SAM2Base._prepare_memory_conditioned_features`` in samurai mode) keeps every past
frame's output and, at frame ``t``, scans frames ``t-1 .. 2`` backwards for "valid" ones (mask
IoU prediction > 0.5, object score > 0, Kalman IoU > 0 or absent), appends ``t-1`` if it is not
valid, and attends to the last ``num_maskmem - 1`` of that list plus the conditioning frame. Only
the most recent ``num_maskmem - 1`` valid frames and frame ``t-1`` can ever be chosen, so holding
exactly those reproduces the selection while memory stays bounded whatever the video length.
Object pointers come from the last ``max_obj_ptrs - 1`` frames regardless of validity, so they get
their own ring of that length. The conditioning memory lives outside the rings and is never
evicted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even like ``tensor.to(bfloat16)``.

    The oracle stores memory features as bfloat16; doing the same keeps parity and halves the
    memory bank's size.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (((u >> 16) & 1) + np.uint32(0x7FFF))
    return (rounded >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class MemoryEntry:
    """One frame's contribution to later frames: its spatial memory, pointer and scores."""

    frame: int
    features: np.ndarray  # [C_mem, H, W], bf16 bits (uint16) or float32
    obj_ptr: np.ndarray  # [C]
    iou: float  # predicted IoU of the chosen mask
    object_score: float  # object score logit
    kf_score: float | None  # Kalman IoU of the chosen mask (None before SAMURAI's stable phase)

    def features_f32(self) -> np.ndarray:
        return from_bf16(self.features) if self.features.dtype == np.uint16 else self.features


@dataclass(frozen=True)
class Selection:
    """What memory attention sees at one frame, in SAM 2's order (conditioning frame first)."""

    memories: tuple[MemoryEntry, ...]
    tpos_index: tuple[int, ...]  # row of maskmem_tpos_enc for each memory
    pointers: tuple[np.ndarray, ...]
    pointer_offsets: tuple[float, ...]  # signed frame distance / (max_obj_ptrs - 1)
    pointer_frames: tuple[int, ...]

    @property
    def memory_frames(self) -> tuple[int, ...]:
        return tuple(m.frame for m in self.memories)


@dataclass
class MemoryBank:
    """Per-object bounded memory: conditioning entry + ring of valid frames + last frame + pointers."""

    num_maskmem: int = 7
    max_obj_ptrs: int = 16
    iou_threshold: float = 0.5
    obj_score_threshold: float = 0.0
    kf_score_threshold: float = 0.0
    cond: MemoryEntry | None = None
    valid: deque[MemoryEntry] = field(default_factory=deque)
    last: MemoryEntry | None = None
    pointer_ring: deque[MemoryEntry] = field(default_factory=deque)

    def __post_init__(self) -> None:
        # SAMURAI stops scanning after max_obj_ptrs - 1 valid frames, so no more can be chosen.
        self.valid = deque(self.valid, maxlen=min(self.num_maskmem, self.max_obj_ptrs) - 1)
        self.pointer_ring = deque(self.pointer_ring, maxlen=self.max_obj_ptrs - 1)

    def is_valid(self, entry: MemoryEntry) -> bool:
        """SAMURAI's memory-bank criteria (frames 0 and 1 are never scanned)."""
        return (
            entry.frame >= 2
            and entry.iou > self.iou_threshold
            and entry.object_score > self.obj_score_threshold
            and (entry.kf_score is None or entry.kf_score > self.kf_score_threshold)
        )

    def set_conditioning(self, entry: MemoryEntry) -> None:
        self.cond = entry

    def add(self, entry: MemoryEntry) -> None:
        """Record a tracked (non-conditioning) frame's memory."""
        if self.is_valid(entry):
            self.valid.append(entry)
        self.last = entry
        self.pointer_ring.append(entry)

    def select(self, frame: int, num_frames: int | None = None) -> Selection:
        """The memories and pointers SAMURAI attends to when tracking ``frame``."""
        if self.cond is None:
            raise RuntimeError("the memory bank has no conditioning frame; call start() first")
        chosen = list(self.valid)
        if (
            self.last is not None
            and self.last.frame == frame - 1
            and (not chosen or chosen[-1].frame != self.last.frame)
        ):
            chosen.append(self.last)
        chosen = chosen[-(self.num_maskmem - 1) :]
        k = len(chosen)
        memories = (self.cond, *chosen)
        # conditioning frame: t_pos 0 -> row num_maskmem-1; chosen[j]: t_pos num_maskmem-k+j.
        tpos = (self.num_maskmem - 1, *(k - j - 1 for j in range(k)))
        max_ptrs = min(num_frames, self.max_obj_ptrs) if num_frames else self.max_obj_ptrs
        scale = float(max(max_ptrs - 1, 1))
        ptrs = [self.cond.obj_ptr]
        offsets = [(frame - self.cond.frame) / scale]
        frames = [self.cond.frame]
        for entry in reversed(self.pointer_ring):
            t_diff = frame - entry.frame
            if t_diff < 1 or t_diff > max_ptrs - 1:
                continue
            ptrs.append(entry.obj_ptr)
            offsets.append(t_diff / scale)
            frames.append(entry.frame)
        return Selection(memories, tpos, tuple(ptrs), tuple(offsets), tuple(frames))
