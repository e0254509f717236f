"""SAMURAI's memory bank as fixed-capacity ring buffers.

SAMURAI (``SAM2Base._prepare_memory_conditioned_features`` in samurai mode) keeps every past
frame's output and, at frame ``t``, scans frames ``t-1 .. 2`` backwards for "valid" ones (mask
IoU prediction > 0.5, object score > 0, Kalman IoU > 0 or absent), appends ``t-1`` if it is not
valid, and attends to the last ``num_maskmem - 1`` of that list plus the conditioning frame. Only
the most recent ``num_maskmem - 1`` valid frames and frame ``t-1`` can ever be chosen, so holding
exactly those reproduces the selection while memory stays bounded whatever the video length.
Object pointers come from the last ``max_obj_ptrs - 1`` frames regardless of validity, so they get
their own ring of that length. The conditioning memory lives outside the rings and is never
evicted. The tensors themselves live in the engine's memory and pointer pools; the bank only
assigns their slots.
"""

from __future__ import annotations

import dataclasses
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
    """One frame's contribution to later frames: where its memory and pointer live, its scores.

    ``slot`` / ``ptr_slot`` index the object's block of the memory and pointer pools (slot 0 of
    each is the conditioning frame's); the bank assigns them in ``add``.
    """

    frame: int
    iou: float  # predicted IoU of the chosen mask
    object_score: float  # object score logit
    kf_score: float | None  # Kalman IoU of the chosen mask (None before SAMURAI's stable phase)
    slot: int = -1
    ptr_slot: int = -1


@dataclass(frozen=True)
class Selection:
    """What memory attention sees at one frame, in SAM 2's order (conditioning frame first)."""

    memories: tuple[MemoryEntry, ...]
    tpos_index: tuple[int, ...]  # row of maskmem_tpos_enc for each memory
    pointers: tuple[MemoryEntry, ...]
    pointer_offsets: tuple[float, ...]  # signed frame distance / (max_obj_ptrs - 1)

    @property
    def memory_frames(self) -> tuple[int, ...]:
        return tuple(m.frame for m in self.memories)

    @property
    def memory_slots(self) -> tuple[int, ...]:
        return tuple(m.slot for m in self.memories)

    @property
    def pointer_frames(self) -> tuple[int, ...]:
        return tuple(p.frame for p in self.pointers)

    @property
    def pointer_slots(self) -> tuple[int, ...]:
        return tuple(p.ptr_slot for p in self.pointers)


@dataclass
class MemoryBank:
    """Per-object bounded memory: conditioning entry + ring of valid frames + last frame + pointers.

    The bank holds no tensors: memories and pointers live in slots of device-resident pools
    (``memory_slots`` and ``pointer_slots`` per object), and the bank says which slot each frame
    goes to and which slots a frame attends to. A slot is reused only once its frame can no
    longer be selected: of the valid ring only the frames that ``select`` can still return are
    kept alive (when the last frame is invalid, the oldest valid frame is never selected again),
    so ``num_maskmem`` memory slots and ``max_obj_ptrs`` pointer slots are always enough.
    """

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

    @property
    def memory_slots(self) -> int:
        """Slots of the object's block of the memory pool (2 at least: the conditioning frame's
        and one for the newest frame, which is written even when it cannot be selected)."""
        return max(self.num_maskmem, 2)

    @property
    def pointer_slots(self) -> int:
        return self.max_obj_ptrs

    def is_valid(self, entry: MemoryEntry) -> bool:
        """SAMURAI's memory-bank criteria (frames 0 and 1 are never scanned)."""
        return (
            entry.frame >= 2
            and entry.iou > self.iou_threshold
            and entry.object_score > self.obj_score_threshold
            and (entry.kf_score is None or entry.kf_score > self.kf_score_threshold)
        )

    def set_conditioning(self, entry: MemoryEntry) -> MemoryEntry:
        """Start (or restart) the bank from a prompted frame; its memory and pointer go to slot 0."""
        self.cond = dataclasses.replace(entry, slot=0, ptr_slot=0)
        self.valid.clear()
        self.pointer_ring.clear()
        self.last = None
        return self.cond

    def add(self, entry: MemoryEntry) -> MemoryEntry:
        """Record a tracked (non-conditioning) frame; returns it with its slots assigned.

        Its memory slot is one that no frame still selectable after this one holds: those are
        the newest ``num_maskmem - 1`` of (valid frames + this frame), other than this frame.
        """
        valid = self.is_valid(entry)
        older = list(self.valid)
        if valid and self.valid.maxlen is not None:
            older = older[-(self.valid.maxlen - 1) :] if self.valid.maxlen > 1 else []
        keep = max(self.num_maskmem - 2, 0)  # selectable older frames besides this one
        busy = {e.slot for e in (older[-keep:] if keep else [])}
        free = [s for s in range(1, self.memory_slots) if s not in busy]
        if len(self.pointer_ring) == self.pointer_ring.maxlen:
            ptr_slot = self.pointer_ring[0].ptr_slot  # the pointer that drops out now
        else:
            ptr_slot = 1 + len(self.pointer_ring)
        placed = dataclasses.replace(entry, slot=free[0], ptr_slot=ptr_slot)
        if valid:
            self.valid.append(placed)
        self.last = placed
        self.pointer_ring.append(placed)
        return placed

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
        chosen = chosen[-(self.num_maskmem - 1) :] if self.num_maskmem > 1 else []
        k = len(chosen)
        memories = (self.cond, *chosen)
        # conditioning frame: t_pos 0 -> row num_maskmem-1; chosen[j]: t_pos num_maskmem-k+j.
        tpos = (self.num_maskmem - 1, *(k - j - 1 for j in range(k)))
        max_ptrs = min(num_frames, self.max_obj_ptrs) if num_frames else self.max_obj_ptrs
        scale = float(max(max_ptrs - 1, 1))
        ptrs = [self.cond]
        offsets = [(frame - self.cond.frame) / scale]
        for entry in reversed(self.pointer_ring):
            t_diff = frame - entry.frame
            if t_diff < 1 or t_diff > max_ptrs - 1:
                continue
            ptrs.append(entry)
            offsets.append(t_diff / scale)
        return Selection(memories, tpos, tuple(ptrs), tuple(offsets))
