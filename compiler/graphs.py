"""The model graphs: where SAM 2.1 is cut, and SAMURAI's control flow written as arithmetic.

Each wrapper is a small ``nn.Module`` over ``SAM2Model`` whose ``forward`` takes and returns
exactly the tensors of the graph's contract (``runtime/contract.py``, the one definition of every
graph's I/O). Data-dependent branches of ``SAM2Base`` become arithmetic, in the way of
segment-anything's ``utils/onnx.py``:

- "is the object present" (``object_score_logits > min_obj_score_logits``) selects masks and
  pointers with ``torch.where`` / blends instead of Python ``if``;
- the prompted frame's ``directly_add_no_mem_embed`` is a per-object 0/1 input;
- binarizing the prompted frame's mask for the memory encoder is a per-object 0/1 input;
- the boxes of every candidate mask (SAMURAI's Kalman scoring needs them) come from ArgMax over
  row/column occupancy of the upsampled mask, not from ``argwhere``;
- the choice among candidates, made by the runtime from the downloaded scores, comes back as an
  index, and the memory encoder gathers the chosen mask and pointer itself, so masks and pointers
  never leave the device.

Memories and object pointers live in two pools on the device (``[slots, ...]``); memory
attention gathers each object's memories and pointers by index, the memory encoder writes the
new ones into their slots (``SlotWrite``: a gather, not a scatter) and returns the updated
pools. Memory features are rounded to bfloat16 in the graph, as the oracle stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samurai_onnx.compiler.modeling.memory_attention import MASKED, fold_value_projections
from samurai_onnx.compiler.modeling.position_encoding import get_1d_sine_pe
from samurai_onnx.compiler.modeling.sam2 import SAM2Model
from samurai_onnx.runtime.bundle import TrackerSettings
from samurai_onnx.runtime.contract import MODEL_GRAPHS, contract, example_feeds

NO_OBJ_SCORE = -1024.0

# Name scopes of the nodes that must stay fp32 in an fp16 bundle (``passes/fp16.py`` keeps them):
# the pools' slot writes, so stored memories keep the exact values written (bfloat16-rounded
# fp32), and the pools never pass through fp16 (which re-rounds every stored slot each frame).
FP32_SCOPES = ("/memory_write/", "/ptr_write/")


class ImageEncoderGraph(nn.Module):
    """image -> high-res features (conv_s0/conv_s1 applied), 64x64 features and their encoding."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fpn, pos = self.image_encoder(image)
        return self.conv_s0(fpn[0]), self.conv_s1(fpn[1]), fpn[-1], pos[-1]


def candidate_boxes(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, K, 4]`` boxes (x0, y0, x1, y1) of ``upsample(masks) > 0``; zeros for empty masks.

    SAMURAI takes each candidate's box from ``argwhere(high_res_mask > 0)``; min/max of the
    occupied rows and columns is the same box, computed with ArgMax (first occurrence).
    """
    high = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
    occupied = (high > 0).to(torch.float32)
    rows = occupied.amax(dim=3)  # [B, K, H]
    cols = occupied.amax(dim=2)  # [B, K, W]
    last = float(size - 1)
    y0 = torch.argmax(rows, dim=2).to(torch.float32)
    y1 = last - torch.argmax(torch.flip(rows, dims=[2]), dim=2).to(torch.float32)
    x0 = torch.argmax(cols, dim=2).to(torch.float32)
    x1 = last - torch.argmax(torch.flip(cols, dims=[2]), dim=2).to(torch.float32)
    present = rows.amax(dim=2)
    return torch.stack([x0, y0, x1, y1], dim=2) * present.unsqueeze(2)


class MaskDecoderGraph(nn.Module):
    """Prompt encoder + mask decoder for a batch of objects, all four candidates out.

    ``image_embed`` has one entry per object (memory-conditioned features) or one for all (the
    frame's own features on a prompted frame, broadcast). The choice among the candidates (SAM 2's
    stability fallback on a prompted frame, SAMURAI's Kalman-weighted choice while tracking) is
    the runtime's.
    """

    def __init__(self, model: SAM2Model, settings: TrackerSettings) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.obj_ptr_proj = model.obj_ptr_proj
        self.no_mem_embed = model.no_mem_embed
        self.no_obj_ptr = model.no_obj_ptr
        self.min_obj_score_logits = float(settings.min_obj_score_logits)
        self.stability_delta = float(settings.dynamic_multimask_stability_delta)
        self.image_size = int(settings.image_size)

    def forward(
        self,
        image_embed: torch.Tensor,
        add_no_mem_embed: torch.Tensor,
        high_res_feat_s0: torch.Tensor,
        high_res_feat_s1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        no_mem = self.no_mem_embed.reshape(1, -1, 1, 1)
        embed = image_embed + add_no_mem_embed.reshape(-1, 1, 1, 1) * no_mem  # [B, C, H, W]
        sparse, dense = self.prompt_encoder(point_coords, point_labels, mask_input, has_mask_input)
        masks, iou, tokens, score = self.mask_decoder(
            embed,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            high_res_feat_s0,
            high_res_feat_s1,
        )
        # SAM 2's stability score of the single-mask output, on raw logits (before masking).
        single = masks[:, 0].flatten(1)
        area_i = (single > self.stability_delta).to(torch.float32).sum(dim=1, keepdim=True)
        area_u = (single > -self.stability_delta).to(torch.float32).sum(dim=1, keepdim=True)
        stability = torch.where(area_u > 0, area_i / area_u.clamp(min=1.0), torch.ones_like(area_u))
        appearing = score > self.min_obj_score_logits  # [B, 1]
        masks = torch.where(
            appearing[:, :, None, None], masks, torch.full_like(masks, NO_OBJ_SCORE)
        )
        lam = appearing.to(torch.float32).unsqueeze(2)  # [B, 1, 1]
        ptr = self.obj_ptr_proj(tokens)  # [B, 4, C]
        ptr = lam * ptr + (1 - lam) * self.no_obj_ptr.unsqueeze(0)
        boxes = candidate_boxes(masks, self.image_size)
        return masks, iou, score, ptr, boxes, stability


class SlotWrite(nn.Module):
    """``pool`` with ``values[b]`` in row ``slots[b]``: what ``pool.index_put((slots,), values)``
    computes, as a gather of the pool and the new rows.

    Why not ``index_put`` (ONNX ``ScatterND``): on an NVIDIA H200 with onnxruntime-gpu 1.31.1 the
    memory encoder's two ScatterND nodes took 9.6 of its 10.6 ms (one 64x64x64 memory into an
    8-slot pool; the graph without them: 0.94 ms; ``docs/measurements/h200-memory-encoder-
    scatter.txt``), ten times PyTorch's whole memory encoder. A gather copies each row once, on
    every engine. Each slot takes the first object that names it (the runtime never gives two).
    The row numbers come from the data (a cumulative sum of ones), not from the pool's shape:
    a value computed from a shape lives on the host, and feeding one into device arithmetic
    needs a copy node, with which ONNX Runtime refuses to capture the graph as a CUDA graph.
    Float row numbers are exact below 2**24 slots.
    """

    def forward(
        self, pool: torch.Tensor, slots: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        first = pool.reshape(pool.shape[0], -1)[:, 0].to(torch.float32)  # [S]
        rows = torch.ones_like(first).cumsum(0) - 1  # 0 .. S-1
        hit = (slots.to(torch.float32).reshape(1, -1) == rows.reshape(-1, 1)).to(torch.float32)
        written = hit.amax(dim=1) > 0  # [S]: some object writes this slot
        count = rows[-1:] + 1  # S, as data
        source = torch.where(written, hit.argmax(dim=1).to(torch.float32) + count, rows)
        return torch.cat([pool, values.to(pool.dtype)], dim=0)[source.to(torch.int64)]


class MemoryEncoderGraph(nn.Module):
    """Each object's chosen mask and pointer -> its memory, written into the pools.

    The chosen candidate's low-res mask is upsampled, binarized (prompted frames) or squashed
    with a sigmoid, and fused with the frame's features; an absent object gets the no-object
    embedding. The memory (rounded to bfloat16 when ``memory_bf16``) and the chosen pointer go
    to the objects' slots of the pools (``SlotWrite``); the pools come back whole.
    """

    def __init__(self, model: SAM2Model, settings: TrackerSettings) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.no_obj_embed_spatial = model.no_obj_embed_spatial
        self.scale = float(model.cfg.sigmoid_scale_for_mem_enc)
        self.bias = float(model.cfg.sigmoid_bias_for_mem_enc)
        self.image_size = int(model.cfg.image_size)
        self.bf16 = bool(settings.memory_bf16)
        self.memory_write = SlotWrite()
        self.ptr_write = SlotWrite()

    def forward(
        self,
        vision_features: torch.Tensor,
        masks: torch.Tensor,
        candidate: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: torch.Tensor,
        obj_ptr: torch.Tensor,
        ptr_candidate: torch.Tensor,
        memory_pool: torch.Tensor,
        memory_slot: torch.Tensor,
        ptr_pool: torch.Tensor,
        ptr_slot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, low = candidate.shape[0], masks.shape[-1]
        pick = candidate.reshape(-1, 1, 1, 1).expand(b, 1, low, low)
        mask_logits = torch.gather(masks, 1, pick)  # [B, 1, L, L]
        size = (self.image_size, self.image_size)
        high = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        bz = binarize.reshape(-1, 1, 1, 1)
        mask = bz * (high > 0).to(torch.float32) + (1 - bz) * torch.sigmoid(high)
        mask = mask * self.scale + self.bias
        # The frame's features have batch 1: the 1x1 projection runs once, then broadcasts.
        features, _ = self.memory_encoder(vision_features, mask)
        absent = 1 - (object_score_logits > 0).to(torch.float32)  # [B, 1]
        features = features + absent[:, :, None, None] * self.no_obj_embed_spatial[:, :, None, None]
        if self.bf16:
            features = features.to(torch.bfloat16).to(torch.float32)
        c = obj_ptr.shape[-1]
        ptr = torch.gather(obj_ptr, 1, ptr_candidate.reshape(-1, 1, 1).expand(b, 1, c))[:, 0]
        memory_out = self.memory_write(memory_pool, memory_slot, features)
        ptr_out = self.ptr_write(ptr_pool, ptr_slot, ptr)
        return memory_out, ptr_out


class MemoryAttentionGraph(nn.Module):
    """The frame's features conditioned, per object, on memories and pointers from the pools.

    ``memory_index`` / ``ptr_index`` pick each object's memories and pointers (in SAM 2's order:
    conditioning frame first); ``memory_tpos_index`` picks rows of ``maskmem_tpos_enc`` and
    ``ptr_offsets`` are SAMURAI's signed frame distances divided by ``max_obj_ptrs - 1``. The
    memories' spatial position encoding depends on nothing but the grid, so it is a constant of
    this graph. The static variant takes fixed slot counts and masks the empty slots in the
    attention softmax, which gives the dynamic graph's numbers (masked keys weigh exactly 0).
    """

    maskmem_pos: torch.Tensor

    def __init__(self, model: SAM2Model, *, static: bool = False) -> None:
        super().__init__()
        self.memory_attention = model.memory_attention
        fold_value_projections(self.memory_attention)
        self.maskmem_tpos_enc = model.maskmem_tpos_enc
        self.obj_ptr_tpos_proj = model.obj_ptr_tpos_proj
        self.d_model = model.cfg.d_model
        self.mem_dim = model.cfg.mem_dim
        self.split = model.cfg.d_model // model.cfg.mem_dim
        self.static = static
        f = model.cfg.feat_size
        with torch.no_grad():
            pos = model.memory_encoder.position_encoding(torch.zeros(1, self.mem_dim, f, f))
        self.register_buffer("maskmem_pos", pos.flatten(2).transpose(1, 2), persistent=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.static:
            (vf, vpos, pool, index, tpos_index, valid, ptr_pool, ptr_index, offsets, ptr_valid) = (
                inputs
            )
        else:
            vf, vpos, pool, index, tpos_index, ptr_pool, ptr_index, offsets = inputs
        b, c, m = index.shape[0], self.d_model, self.mem_dim
        curr = vf.flatten(2).transpose(1, 2)  # [1, HW, C]: the frame, shared by all objects
        curr_pos = vpos.flatten(2).transpose(1, 2)
        memory = pool[index]  # [B, N, C_mem, H, W]
        mem = memory.flatten(3).transpose(2, 3)  # [B, N, HW, C_mem], frame-major like SAM 2
        tpos = self.maskmem_tpos_enc.reshape(-1, m)[tpos_index]  # [B, N, C_mem]
        mem_pos = self.maskmem_pos.unsqueeze(0) + tpos.unsqueeze(2)  # [B, N, HW, C_mem]
        mem = mem.reshape(b, -1, m)
        mem_pos = mem_pos.reshape(b, -1, m)
        # A pointer of width C is split into C // C_mem tokens that share its temporal encoding.
        ptr = ptr_pool[ptr_index].reshape(b, -1, m)  # [B, Q * split, C_mem]
        ptr_pos = self.obj_ptr_tpos_proj(get_1d_sine_pe(offsets, dim=c))  # [B, Q, C_mem]
        ptr_pos = ptr_pos.unsqueeze(2).expand(-1, -1, self.split, -1).reshape(b, -1, m)
        mask = None
        if self.static:
            hw = memory.shape[3] * memory.shape[4]
            keys = torch.cat(
                [
                    valid.unsqueeze(2).expand(-1, -1, hw).reshape(b, -1),
                    ptr_valid.unsqueeze(2).expand(-1, -1, self.split).reshape(b, -1),
                ],
                dim=1,
            )
            mask = ((1.0 - keys) * MASKED).reshape(b, 1, 1, -1)
        out = self.memory_attention(curr, curr_pos, mem, mem_pos, ptr, ptr_pos, key_mask=mask)
        return out.transpose(1, 2).reshape(b, c, vf.shape[2], vf.shape[3])


def build_graph(
    name: str, model: SAM2Model, settings: TrackerSettings, *, static: bool = False
) -> nn.Module:
    """The export wrapper of a model graph (``static``: memory attention with fixed slots)."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "image_encoder": lambda: ImageEncoderGraph(model),
        "mask_decoder": lambda: MaskDecoderGraph(model, settings),
        "memory_encoder": lambda: MemoryEncoderGraph(model, settings),
        "memory_attention": lambda: MemoryAttentionGraph(model, static=static),
    }
    if name not in factories:
        raise ValueError(f"unknown model graph {name!r}; known: {', '.join(MODEL_GRAPHS)}")
    return factories[name]().eval()


# Sizes of the named axes used for tracing and for the numeric check after every pass: more
# than one object (so nothing gets specialised to a batch of 1) and fewer memories than slots.
EXAMPLE_DIMS = {
    "batch": 1,
    "objects": 2,
    "embed_batch": 1,
    "memories": 3,
    "pointers": 5,
    "points": 3,
    "candidates": 4,
    "ptr_candidates": 4,
}


def example_inputs(
    name: str,
    settings: TrackerSettings,
    *,
    static: bool = False,
    seed: int = 0,
    objects: int | None = None,
) -> dict[str, torch.Tensor]:
    """Fixed random inputs of a model graph that satisfy its contract (``example_feeds``)."""
    geo = settings.geometry
    b = objects or EXAMPLE_DIMS["objects"]
    dims = {
        **EXAMPLE_DIMS,
        "objects": b,
        "memory_slots": b * geo.memory_slots,
        "ptr_slots": b * geo.pointer_slots,
    }
    if static:  # all slots attended, the first memories/pointers valid
        dims.update(
            memories=geo.memory_slots,
            pointers=geo.pointer_slots,
            valid_memory=EXAMPLE_DIMS["memories"],
            valid_ptr=EXAMPLE_DIMS["pointers"],
        )
    feeds = example_feeds(contract(name, geo, static=static), geo, dims, seed)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


def graph_constants(name: str, settings: TrackerSettings) -> dict[str, Any]:
    """The settings baked into graph ``name`` at compile time (recorded per graph in the bundle;
    the runtime refuses to override them)."""
    keys = {
        "mask_decoder": ("min_obj_score_logits", "dynamic_multimask_stability_delta"),
        "memory_encoder": ("memory_bf16",),
        "preprocess": ("image_mean", "image_std"),
    }.get(name, ())
    return {k: v for k, v in settings.to_dict().items() if k in keys}
