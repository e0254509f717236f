"""SAMURAI's graphs as typed calls over an engine, with the memory pools on the engine's device.

``SamuraiGraphs`` loads a bundle's graphs into an engine (each checked against its contract) and
offers one call per step of SAMURAI's loop: ``encode_image``, ``attend``, ``decode``,
``encode_memory`` and ``finish`` (masks and boxes at video size). Values move between the calls
as engine values: on a GPU the features, the candidates, the memories and the pointers stay in
device memory; the host gets the small things SAMURAI decides with (IoUs, object scores,
candidate boxes, stability) and the chosen low-res masks (hole filling and the outputs).

Pre- and postprocessing run in the ``preprocess``/``postprocess`` graphs (``processing="graph"``)
or on the host with PIL and numpy exactly as the oracle does (``processing="host"``).

A graph the bundle holds in several forms (``bundle.FORMS``) runs in the fastest of them on this
engine (``forms="fastest"``, timed at load by ``engine/forms.py``, which also leaves out a form
whose outputs on this device stray from the CPU's by more than the graph's tolerance), in its
main form (``forms="main"``) or in the form named.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samurai_onnx.runtime.ahead import MAX_JOBS, Ahead
from samurai_onnx.runtime.bundle import PROCESSING, Bundle, BundleError
from samurai_onnx.runtime.contract import ContractError, contract, steady_state_feeds
from samurai_onnx.runtime.engine import Engine, EngineError, GraphSession
from samurai_onnx.runtime.engine.forms import (
    MAIN,
    FormCache,
    FormChoice,
    check_forms,
    fastest_form,
    forms_not_run,
)
from samurai_onnx.runtime.host import cache_root, int8_saturates_here, machine
from samurai_onnx.runtime.preprocess import mask_to_box, preprocess_frame, upsample_mask_logits

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

# the graphs that make a frame's features (run ahead of the frame when prefetching)
ENCODING = ("preprocess", "image_encoder")
# image encoder output sets with fixed buffers and prefetch: one per job Ahead may hold, and
# one for a frame stepped that was not given ahead (SamuraiGraphs._free_set)
FEATURE_SETS = MAX_JOBS + 1


@dataclass(frozen=True)
class FrameFeatures:
    """The image encoder's outputs for one frame (engine values, batch 1)."""

    high_res_feat_s0: Any
    high_res_feat_s1: Any
    vision_features: Any
    vision_pos_enc: Any


@dataclass(frozen=True)
class Decoded:
    """The mask decoder's outputs for a batch of objects.

    ``masks`` ([B, 4, L, L]) and ``obj_ptr`` ([B, 4, C]) stay engine values; what SAMURAI's
    choice needs is on the host.
    """

    masks: Any
    obj_ptr: Any
    ious: np.ndarray  # [B, 4]
    object_scores: np.ndarray  # [B]
    boxes: np.ndarray  # [B, 4, 4] candidate boxes (x0, y0, x1, y1) at model resolution
    stability: np.ndarray  # [B]


class MemoryPools:
    """The memory and pointer pools: one block of slots per object, two buffers each.

    The memory encoder returns whole pools, written into the spare buffer (I/O binding), and the
    buffers swap: no allocation per frame. Blocks are added when objects are (a host round trip,
    once per new object beyond the capacity).
    """

    def __init__(self, engine: Engine, bundle: Bundle, memory_slots: int, ptr_slots: int) -> None:
        geo = bundle.tracker.geometry
        self.engine = engine
        self.memory_slots, self.ptr_slots = memory_slots, ptr_slots
        self._memory_item = (geo.mem_dim, geo.feat_size, geo.feat_size)
        self._ptr_item = (geo.d_model,)
        self.blocks = 0
        self.memory: Any = None
        self.ptr: Any = None
        self._spare: tuple[Any, Any] = (None, None)

    def ensure(self, blocks: int) -> None:
        """Room for ``blocks`` objects, keeping what the pools hold."""
        if blocks <= self.blocks:
            return
        grow = max(blocks, 2 * self.blocks)
        mem = np.zeros((grow * self.memory_slots, *self._memory_item), np.float32)
        ptr = np.zeros((grow * self.ptr_slots, *self._ptr_item), np.float32)
        if self.blocks:
            mem[: self.blocks * self.memory_slots] = self.engine.download(self.memory)
            ptr[: self.blocks * self.ptr_slots] = self.engine.download(self.ptr)
        self.memory, self.ptr = self.engine.upload(mem), self.engine.upload(ptr)
        # copies: on the CPU an uploaded value wraps the array's memory, and the two buffers
        # must not alias (a run would read and write one buffer, and run signatures, which
        # name buffers by address, could not tell the two apart)
        self._spare = (self.engine.upload(mem.copy()), self.engine.upload(ptr.copy()))
        self.blocks = grow

    def adopt(self, finished: MemoryPools) -> None:
        """Take over the buffers of a finished video's pools (same slot layout).

        Why: a graph's run signature names the buffers it reads and writes (see
        ``engine/captured.py``), so with the same pools from one video to the next the
        signatures repeat and CUDA graphs captured for them are replayed, not captured anew
        until the engine's limit is reached. What the buffers hold from the last video is never
        read: the memory bank reads only slots it has written in this video.
        """
        layout = (self.memory_slots, self.ptr_slots, self._memory_item, self._ptr_item)
        theirs = (finished.memory_slots, finished.ptr_slots, finished._memory_item, finished._ptr_item)
        if layout != theirs or not finished.blocks:
            return
        self.blocks, self.memory, self.ptr = finished.blocks, finished.memory, finished.ptr
        self._spare = finished._spare
        finished.blocks, finished.memory, finished.ptr = 0, None, None
        finished._spare = (None, None)

    def memory_index(self, block: int, slot: int) -> int:
        return block * self.memory_slots + slot

    def ptr_index(self, block: int, slot: int) -> int:
        return block * self.ptr_slots + slot

    def spare(self) -> dict[str, Any]:
        return {"memory_pool_out": self._spare[0], "ptr_pool_out": self._spare[1]}

    def swap(self, out: dict[str, Any]) -> None:
        self._spare = (self.memory, self.ptr)
        self.memory, self.ptr = out["memory_pool_out"], out["ptr_pool_out"]


class SamuraiGraphs:
    """A bundle's graphs loaded into ``engine``; ``processing`` is ``graph`` or ``host``."""

    def __init__(
        self,
        bundle: Bundle,
        engine: Engine,
        *,
        processing: str | None = None,
        forms: str = "fastest",
    ) -> None:
        self.bundle = bundle
        self.engine = engine
        self.processing = processing or bundle.processing
        if self.processing not in PROCESSING:
            raise ValueError(f"processing {self.processing!r} is not one of graph, host")
        check_forms(forms, "forms")
        self.forms: dict[str, FormChoice] = {}  # graphs with several forms: which one runs
        geo = bundle.tracker.geometry
        self.geometry = geo
        self.static = bundle.static_memory
        needed = ["image_encoder", "memory_attention", "mask_decoder", "memory_encoder"]
        if self.processing == "graph":
            needed += ["preprocess", "postprocess"]
        if "mask_prompt" in bundle.components:
            needed.append("mask_prompt")
        loaded: dict[str, GraphSession] = {}
        # graphs with one form first: a file that does not match its contract then fails the
        # load before seconds go into timing other graphs' forms
        for name in sorted(needed, key=lambda n: bool(bundle.components[n].alternatives)):
            spec = contract(name, geo, static=self.static and name == "memory_attention")
            try:
                loaded[name] = self._load(name, spec, forms)
            except ContractError as exc:
                raise BundleError(
                    f"{bundle.path}: {bundle.components[name].file} does not match its graph "
                    f"contract ({exc}); rebuild the bundle with this samurai-compile"
                ) from None
        self.sessions: dict[str, GraphSession] = {n: loaded[n] for n in needed}
        self._constants: dict[tuple[str, int], Any] = {}
        self._ahead: Ahead[FrameFeatures] | None = None
        # with fixed buffers and prefetch: the image encoder's output sets (FEATURE_SETS), each
        # encoding into one that no pending frame's features and no step in progress hold
        self._feature_sets: list[dict[str, Any]] = []
        # seconds the caller's thread spent getting features: the encoding graphs' runs, or
        # the wait for features encoded ahead (their runs overlap the other graphs)
        self._encode_seconds = 0.0
        warning = self.check_attention_kernels()
        if warning:
            log.warning("%s", warning)

    def _load(self, name: str, spec: Any, forms: str) -> GraphSession:
        """``name``'s session in the form ``forms`` asks for (see the module's docstring)."""
        info = self.bundle.components[name]
        skipped = forms_not_run(list(info.alternatives), self.engine.name, int8_saturates_here())
        if forms in info.alternatives:
            if forms in skipped:  # asked for by name: it runs, with the reason said
                log.warning("%s: the %s form runs although %s", name, forms, skipped[forms])
            self.forms[name] = FormChoice(name, forms)
            return self.engine.load(self.bundle.file(name, forms), spec)
        alternatives = {f: a for f, a in info.alternatives.items() if f not in skipped}
        if not alternatives or forms != "fastest":  # main, or a form this graph does not have
            if skipped:
                self.forms[name] = FormChoice(name, MAIN, skipped=skipped)
                log.info("graph form %s", self.forms[name].line())
            return self.engine.load(self.bundle.file(name), spec)
        files = {MAIN: self.bundle.file(name), **{f: self.bundle.file(name, f) for f in alternatives}}
        feeds = steady_state_feeds(name, 1, self.geometry, self.static and name == "memory_attention")
        cache, key = None, ""
        if self.engine.device == "cpu":  # where timing costs seconds: once per machine
            cache = FormCache(cache_root() / "forms.json")
            hashes = {MAIN: info.sha256, **{f: a.sha256 for f, a in alternatives.items()}}
            text = json.dumps([name, hashes, self.engine.describe(), machine()], sort_keys=True)
            key = hashlib.sha256(text.encode()).hexdigest()
        session, self.forms[name] = fastest_form(
            self.engine, spec, files, feeds, cache=cache, key=key, tolerance=info.tolerance
        )
        self.forms[name].skipped.update(skipped)
        return session

    def check_attention_kernels(self) -> str | None:
        """A warning where memory attention would run ONNX Runtime's fused fp32
        ``MultiHeadAttention`` on CUDA, else None. On an H200 (onnxruntime-gpu 1.31.1) that
        kernel computed memory attention's cross-attention with a relative error of 4 against
        the CPU provider (0.48 on the conditioned features; per-frame mask IoU down to 0.993),
        while the unfused graph agreed to 5e-7: a ``cpu`` bundle run with ``--device cuda``
        would track measurably off."""
        info = self.bundle.components["memory_attention"]
        choice = self.forms.get("memory_attention")
        form = choice.chosen if choice is not None else MAIN
        if self.engine.name != "onnxruntime" or self.engine.device != "cuda":
            return None
        if info.attention != "ort_mha" or form != MAIN or info.precision != "fp32":
            return None
        fix = "--forms unfused" if "unfused" in info.alternatives else "a bundle built with --target cuda"
        return (
            f"{self.bundle.path}: memory_attention runs ONNX Runtime's fused fp32 MultiHeadAttention "
            "on CUDA, which gave its cross-attention a relative error of 0.48 on an H200 "
            f"(onnxruntime-gpu 1.31.1); use {fix} (unfused attention) on a GPU"
        )

    def describe_forms(self) -> str:
        """Which form runs for each graph that has several (empty when none has)."""
        return ", ".join(c.line() for c in self.forms.values())

    @property
    def graph_seconds(self) -> float:
        """Seconds the caller's thread spent inside graph runs so far (all graphs; for features
        encoded ahead, the time it waited for them)."""
        rest = sum(s.seconds for name, s in self.sessions.items() if name not in ENCODING)
        return rest + self._encode_seconds

    def _const(self, kind: str, b: int) -> Any:
        """Per-batch-size constant inputs, uploaded once (zeros, padding points)."""
        key = (kind, b)
        if key not in self._constants:
            low = self.geometry.low_res_mask_size
            arrays = {
                "mask_input": np.zeros((b, 1, low, low), np.float32),
                "zeros": np.zeros(b, np.float32),
                "ones": np.ones(b, np.float32),
                "no_coords": np.zeros((b, 1, 2), np.float32),
                "no_labels": -np.ones((b, 1), np.float32),
            }
            self._constants[key] = self.engine.upload(arrays[kind])
        return self._constants[key]

    # -- the steps ----------------------------------------------------------------------------
    def encode_ahead(self, frame: np.ndarray) -> None:
        """Start encoding ``frame`` in a background thread (``runtime/ahead.py``); the next
        ``encode_image`` of this very array takes the result. With fixed output buffers (CUDA
        graphs) each job writes into an output set of its own (``_free_set``), so the frame
        ahead never overwrites the features of the frame being tracked."""
        if self._ahead is None:
            self._ahead = Ahead(self._encode)
        self._ahead.make_room()  # the jobs dropped to make room hold no set any more
        self._ahead.submit(frame, self._free_set(self._ahead.tags()))

    def drop_ahead(self) -> None:
        """Forget a frame encoded ahead and not taken (waiting for its run to end)."""
        if self._ahead is not None:
            self._ahead.drop()

    def encode_image(self, frame: np.ndarray) -> FrameFeatures:
        """RGB uint8 HxWx3 frame -> features: those encoded ahead for this array, else now."""
        got = self._ahead.take(frame) if self._ahead is not None else None
        if got is not None:
            self._encode_seconds += got[1]
            return got[0]
        # no job runs now (take waited); the jobs' features, not taken yet, keep their sets
        held = self._ahead.tags() if self._ahead is not None else []
        before = self._encoding_runs()
        features = self._encode(frame, self._free_set(held))
        self._encode_seconds += self._encoding_runs() - before
        return features

    def _encoding_runs(self) -> float:
        """Seconds inside the encoding graphs' runs so far (whichever thread ran them)."""
        return sum(self.sessions[n].seconds for n in ENCODING if n in self.sessions)

    def _encode(self, frame: np.ndarray, into_set: int | None = None) -> FrameFeatures:
        """Preprocess (in a graph or on the host) and run the image encoder (into output set
        ``into_set``, or wherever the engine puts its outputs)."""
        if self.processing == "graph":
            image = self.sessions["preprocess"].run({"frame": frame})["image"]
        else:
            s = self.bundle.tracker
            image = preprocess_frame(frame, s.image_size, s.image_mean, s.image_std)
        into = self._feature_sets[into_set] if into_set is not None else None
        out = self.sessions["image_encoder"].run({"image": image}, into=into)
        return FrameFeatures(
            out["high_res_feat_s0"],
            out["high_res_feat_s1"],
            out["vision_features"],
            out["vision_pos_enc"],
        )

    def _free_set(self, held: list[int | None]) -> int | None:
        """The image encoder's output set for the next encoding, none of ``held`` (the sets of
        frames encoded ahead and not taken); None where outputs need no set of their own (no
        fixed buffers, or no prefetch).

        Why sets: with fixed buffers (CUDA graphs) an encoder run writes into the same buffers
        every time, and with prefetch the frame ahead is encoded while the frame before it is
        tracked. Each set is its own run signature, so its own CUDA graph. Chosen in the
        caller's thread, when a job is submitted (no step runs then: the features of the last
        step are free) or when a frame not given ahead is encoded (no job runs then): at most
        ``MAX_JOBS`` sets are held, so one of ``FEATURE_SETS`` is always free.
        """
        if self._ahead is None or not self.engine.fixed_buffers:
            return None
        if not self._feature_sets:
            spec = self.sessions["image_encoder"].contract
            self._feature_sets = [
                {o.name: self.engine.zeros(o.resolve({"batch": 1}), o.dtype) for o in spec.outputs}
                for _ in range(FEATURE_SETS)
            ]
        return next(k for k in range(FEATURE_SETS) if k not in held)

    def attend(
        self,
        feats: FrameFeatures,
        pools: MemoryPools,
        memory_index: np.ndarray,
        tpos_index: np.ndarray,
        ptr_index: np.ndarray,
        ptr_offsets: np.ndarray,
    ) -> Any:
        """Memory attention for a batch of objects with equal memory and pointer counts.

        Indices are ``[B, N]`` / ``[B, Q]`` rows into the pools; a static graph gets them padded
        to its slot counts with validity masks (padding points at a real slot and weighs 0).
        """
        feeds: dict[str, Any] = {
            "vision_features": feats.vision_features,
            "vision_pos_enc": feats.vision_pos_enc,
            "memory_pool": pools.memory,
            "ptr_pool": pools.ptr,
        }
        if self.static:
            n, q = self.geometry.memory_slots, self.geometry.pointer_slots
            memory_index, memory_valid = _pad(memory_index, n)
            tpos_index, _ = _pad(tpos_index, n)
            ptr_index, ptr_valid = _pad(ptr_index, q)
            ptr_offsets, _ = _pad(ptr_offsets, q)
            feeds.update(memory_valid=memory_valid, ptr_valid=ptr_valid)
        feeds.update(
            memory_index=memory_index.astype(np.int64),
            memory_tpos_index=tpos_index.astype(np.int64),
            ptr_index=ptr_index.astype(np.int64),
            ptr_offsets=ptr_offsets.astype(np.float32),
        )
        return self.sessions["memory_attention"].run(feeds)["conditioned_features"]

    def decode(
        self,
        embed: Any,
        feats: FrameFeatures,
        *,
        prompted: bool,
        coords: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        mask_input: Any = None,
        batch: int | None = None,
    ) -> Decoded:
        """The mask decoder for ``B`` objects.

        ``embed`` is the conditioned features ``[B, ...]`` of tracked objects, or the frame's own
        features (batch 1, broadcast) for objects prompted on this frame (``prompted``: the
        no-memory embedding is added). ``coords`` / ``labels`` are ``[B, K, 2]`` / ``[B, K]`` in
        model pixels (None: no points, SAM 2's padding point); ``mask_input`` ``[B, 1, L, L]``
        logits or None.
        """
        b = batch if batch is not None else (len(coords) if coords is not None else 1)
        feeds = {
            "image_embed": embed,
            "add_no_mem_embed": self._const("ones" if prompted else "zeros", b),
            "high_res_feat_s0": feats.high_res_feat_s0,
            "high_res_feat_s1": feats.high_res_feat_s1,
            "point_coords": (
                self._const("no_coords", b) if coords is None else coords.astype(np.float32)
            ),
            "point_labels": (
                self._const("no_labels", b) if labels is None else labels.astype(np.float32)
            ),
            "mask_input": (self._const("mask_input", b) if mask_input is None else mask_input),
            "has_mask_input": self._const("zeros" if mask_input is None else "ones", b),
        }
        out = self.sessions["mask_decoder"].run(feeds)
        get = self.engine.download
        return Decoded(
            masks=out["masks"],
            obj_ptr=out["obj_ptr"],
            ious=get(out["iou_predictions"]),
            object_scores=get(out["object_score_logits"])[:, 0],
            boxes=get(out["mask_boxes"]),
            stability=get(out["stability_score"])[:, 0],
        )

    def mask_prompt(self, masks: np.ndarray) -> tuple[Any, Any]:
        """Mask prompts ``[B, H, W]`` (0/1 at video size) -> (the decoder's mask input, the
        prompted frame's low-res mask logits), both engine values ``[B, 1, L, L]``."""
        if "mask_prompt" not in self.sessions:
            raise BundleError(
                f"{self.bundle.path} has no mask_prompt graph; rebuild it with this samurai-compile"
            )
        out = self.sessions["mask_prompt"].run(
            {"mask": np.ascontiguousarray(masks[:, None], np.float32)}
        )
        return out["mask_input"], out["low_res_masks"]

    def chosen_masks(self, decoded: Decoded, candidates: Sequence[int]) -> np.ndarray:
        """The chosen candidates' low-res logits on the host, ``[B, L, L]`` float32 (a copy)."""
        masks = self.engine.download(decoded.masks)
        return np.stack([masks[i, c] for i, c in enumerate(candidates)]).astype(np.float32)

    def encode_memory(
        self,
        feats: FrameFeatures,
        pools: MemoryPools,
        *,
        masks: Any,
        candidate: Sequence[int],
        object_scores: np.ndarray,
        binarize: bool,
        obj_ptr: Any,
        ptr_candidate: Sequence[int],
        memory_slot: Sequence[int],
        ptr_slot: Sequence[int],
    ) -> None:
        """Encode each object's chosen mask into its memory slot; its pointer into its slot."""
        b = len(candidate)
        out = self.sessions["memory_encoder"].run(
            {
                "vision_features": feats.vision_features,
                "masks": masks,
                "candidate": np.asarray(candidate, np.int64),
                "object_score_logits": np.asarray(object_scores, np.float32).reshape(b, 1),
                "binarize": self._const("ones" if binarize else "zeros", b),
                "obj_ptr": obj_ptr,
                "ptr_candidate": np.asarray(ptr_candidate, np.int64),
                "memory_pool": pools.memory,
                "memory_slot": np.asarray(memory_slot, np.int64),
                "ptr_pool": pools.ptr,
                "ptr_slot": np.asarray(ptr_slot, np.int64),
            },
            into=pools.spare(),
        )
        pools.swap(out)

    def finish(
        self, low_res: np.ndarray, size: tuple[int, int]
    ) -> list[tuple[np.ndarray, Box | None]]:
        """Each object's mask at video size (bool HxW) and its box (x, y, w, h) or None.

        ``low_res`` is ``[B, L, L]`` (after hole filling); ``size`` is (width, height). Boxes are
        SAMURAI's: w = max column - min column, h likewise.
        """
        width, height = size
        if self.processing == "host":
            out = []
            for plane in low_res:
                mask = upsample_mask_logits(plane, (height, width)) > 0
                out.append((mask, mask_to_box(mask)))
            return out
        res = self.sessions["postprocess"].run(
            {
                "mask_logits": np.ascontiguousarray(low_res[:, None], np.float32),
                "video_size": np.array([height, width], np.int64),
            }
        )
        masks = self.engine.download(res["video_masks"])
        boxes = self.engine.download(res["video_boxes"])
        results: list[tuple[np.ndarray, Box | None]] = []
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist(), strict=True):
            box = None if x0 < 0 else (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
            results.append((np.asarray(mask, bool), box))
        return results


def _pad(rows: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[B, n]`` to ``[B, slots]`` by repeating the first column; returns it and 1/0 validity.

    Padding repeats a real entry (so an index stays in range) and is masked out by validity 0.
    """
    b, n = rows.shape
    if n > slots:
        raise EngineError(f"{n} entries do not fit the static graph's {slots} slots")
    padded = np.concatenate([rows, np.repeat(rows[:, :1], slots - n, axis=1)], axis=1)
    valid = np.zeros((b, slots), np.float32)
    valid[:, :n] = 1.0
    return padded, valid
