"""The four export wrappers: where SAM 2.1 is cut into graphs, and SAMURAI's control flow as math.

Each wrapper is a small ``nn.Module`` over ``SAM2Model`` whose ``forward`` takes and returns
exactly the tensors of ``runtime.bundle.GRAPH_IO[name]`` (the names are defined there, once). The
branches of ``SAM2Base`` that depend on data are rewritten as arithmetic, in the way of
segment-anything's ``utils/onnx.py``:

- "is the object present" (``object_score_logits > min_obj_score_logits``) selects masks and
  pointers with ``torch.where`` / blends, instead of Python ``if``;
- the first frame's ``directly_add_no_mem_embed`` is a 0/1 input ``add_no_mem_embed``;
- binarizing the prompted frame's mask for the memory encoder is a 0/1 input ``binarize``;
- the boxes of every candidate mask (needed by SAMURAI's Kalman scoring) come from ArgMax over
  row/column occupancy of the upsampled mask, not from ``argwhere``.

The static memory-attention wrapper pads to fixed slot counts and masks the empty slots in the
attention softmax, which gives the same numbers as the dynamic graph (zero padding would not:
zero keys still take softmax weight).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from samurai_onnx.compiler.modeling.memory_attention import fold_value_projections
from samurai_onnx.compiler.modeling.position_encoding import get_1d_sine_pe
from samurai_onnx.compiler.modeling.sam2 import SAM2Model
from samurai_onnx.runtime.bundle import GRAPH_IO, TrackerSettings

NO_OBJ_SCORE = -1024.0
MASKED_KEY = -1.0e4  # additive attention mask for empty slots: exp(-1e4) == 0 in fp32 and fp16


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
    """Prompt encoder + mask decoder with all four candidates, pointers and boxes.

    Outputs every candidate (token 0 = single-mask output, 1..3 = multimask outputs) so that the
    choice among them (SAM 2's stability fallback on the prompted frame, SAMURAI's Kalman-weighted
    choice while tracking) is made by the tracker, outside the graph.
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
        embed = image_embed + add_no_mem_embed.reshape(1, 1, 1, 1) * no_mem
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


class MemoryEncoderGraph(nn.Module):
    """Memory of one frame from its features and chosen low-res mask (upsampled in the graph)."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.no_obj_embed_spatial = model.no_obj_embed_spatial
        self.scale = float(model.cfg.sigmoid_scale_for_mem_enc)
        self.bias = float(model.cfg.sigmoid_bias_for_mem_enc)
        self.image_size = int(model.cfg.image_size)

    def forward(
        self,
        vision_features: torch.Tensor,
        mask_logits: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.image_size, self.image_size)
        high = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        b = binarize.reshape(1, 1, 1, 1)
        mask = b * (high > 0).to(torch.float32) + (1 - b) * torch.sigmoid(high)
        mask = mask * self.scale + self.bias
        features, pos = self.memory_encoder(vision_features, mask)
        absent = 1 - (object_score_logits > 0).to(torch.float32)  # [B, 1]
        features = features + absent[:, :, None, None] * self.no_obj_embed_spatial[:, :, None, None]
        return features, pos


class MemoryAttentionGraph(nn.Module):
    """Current features conditioned on N memory frames and P object pointers (dynamic N, P).

    Temporal encodings are added inside the graph (``memory_tpos_index`` picks rows of
    ``maskmem_tpos_enc``; ``obj_ptr_offsets`` are SAMURAI's signed frame distances divided by
    ``max_obj_ptrs - 1``), so the runtime holds no weights.
    """

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.memory_attention = model.memory_attention
        fold_value_projections(self.memory_attention)
        self.maskmem_tpos_enc = model.maskmem_tpos_enc
        self.obj_ptr_tpos_proj = model.obj_ptr_tpos_proj
        self.d_model = model.cfg.d_model
        self.mem_dim = model.cfg.mem_dim
        self.split = model.cfg.ptr_tokens_per_frame

    def _tokens(
        self,
        vision_features: torch.Tensor,
        vision_pos_enc: torch.Tensor,
        memory: torch.Tensor,
        memory_pos_enc: torch.Tensor,
        memory_tpos_index: torch.Tensor,
        obj_ptrs: torch.Tensor,
        obj_ptr_offsets: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        b, c = vision_features.shape[0], vision_features.shape[1]
        curr = vision_features.flatten(2).transpose(1, 2)
        curr_pos = vision_pos_enc.flatten(2).transpose(1, 2)
        # [B, N, C_mem, H, W] -> [B, N * HW, C_mem], frame-major like SAM 2's concatenation.
        mem = memory.flatten(3).transpose(2, 3)
        tpos = self.maskmem_tpos_enc.reshape(-1, self.mem_dim)[memory_tpos_index]  # [N, C_mem]
        mem_pos = memory_pos_enc.flatten(3).transpose(2, 3) + tpos[None, :, None, :]
        mem = mem.reshape(b, -1, self.mem_dim)
        mem_pos = mem_pos.reshape(b, -1, self.mem_dim)
        # A pointer of width C is split into C // C_mem tokens that share its temporal encoding.
        ptr = obj_ptrs.reshape(b, -1, self.mem_dim)
        ptr_pos = self.obj_ptr_tpos_proj(get_1d_sine_pe(obj_ptr_offsets, dim=c))  # [P, C_mem]
        ptr_pos = ptr_pos.unsqueeze(1).expand(-1, self.split, -1).reshape(1, -1, self.mem_dim)
        ptr_pos = ptr_pos.expand(b, -1, -1)
        return curr, curr_pos, mem, mem_pos, ptr, ptr_pos

    def _run(self, tokens: tuple[torch.Tensor, ...], shape: torch.Size, mask: Any) -> torch.Tensor:
        out = self.memory_attention(*tokens, key_mask=mask)
        return out.transpose(1, 2).reshape(shape)

    def forward(
        self,
        vision_features: torch.Tensor,
        vision_pos_enc: torch.Tensor,
        memory: torch.Tensor,
        memory_pos_enc: torch.Tensor,
        memory_tpos_index: torch.Tensor,
        obj_ptrs: torch.Tensor,
        obj_ptr_offsets: torch.Tensor,
    ) -> torch.Tensor:
        tokens = self._tokens(
            vision_features,
            vision_pos_enc,
            memory,
            memory_pos_enc,
            memory_tpos_index,
            obj_ptrs,
            obj_ptr_offsets,
        )
        return self._run(tokens, vision_features.shape, None)


class StaticMemoryAttentionGraph(MemoryAttentionGraph):
    """Fixed slots (for TensorRT / ORT Mobile); ``*_valid`` (1/0) marks the filled slots."""

    def forward(  # type: ignore[override]
        self,
        vision_features: torch.Tensor,
        vision_pos_enc: torch.Tensor,
        memory: torch.Tensor,
        memory_pos_enc: torch.Tensor,
        memory_tpos_index: torch.Tensor,
        memory_valid: torch.Tensor,
        obj_ptrs: torch.Tensor,
        obj_ptr_offsets: torch.Tensor,
        obj_ptr_valid: torch.Tensor,
    ) -> torch.Tensor:
        tokens = self._tokens(
            vision_features,
            vision_pos_enc,
            memory,
            memory_pos_enc,
            memory_tpos_index,
            obj_ptrs,
            obj_ptr_offsets,
        )
        hw = memory.shape[3] * memory.shape[4]
        valid = torch.cat(
            [
                memory_valid.unsqueeze(1).expand(-1, hw).reshape(-1),
                obj_ptr_valid.unsqueeze(1).expand(-1, self.split).reshape(-1),
            ]
        )
        mask = ((1.0 - valid) * MASKED_KEY).reshape(1, 1, 1, -1)
        return self._run(tokens, vision_features.shape, mask)


def build_graph(name: str, model: SAM2Model, settings: TrackerSettings) -> nn.Module:
    """The export wrapper for a ``GRAPH_IO`` name (``memory_attention_static`` included)."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "image_encoder": lambda: ImageEncoderGraph(model),
        "mask_decoder": lambda: MaskDecoderGraph(model, settings),
        "memory_encoder": lambda: MemoryEncoderGraph(model),
        "memory_attention": lambda: MemoryAttentionGraph(model),
        "memory_attention_static": lambda: StaticMemoryAttentionGraph(model),
    }
    if name not in factories:
        raise ValueError(f"unknown graph {name!r}; known: {', '.join(GRAPH_IO)}")
    return factories[name]().eval()


def example_inputs(
    name: str,
    settings: TrackerSettings,
    *,
    seed: int = 0,
    objects: int = 1,
    memories: int = 3,
    pointers: int = 5,
    points: int = 3,
) -> dict[str, torch.Tensor]:
    """Fixed random inputs of a graph, for tracing and for the numeric check after every pass.

    Features are unit-scale normals and mask logits have a std of 4, like real activations of
    the random-weight and the official models; static graphs get ``memories``/``pointers`` real
    slots and the rest padding.
    """
    g = torch.Generator().manual_seed(seed)
    s, c, m, f = settings.image_size, settings.d_model, settings.mem_dim, settings.feat_size
    low = settings.low_res_mask_size

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    if name == "image_encoder":
        return {"image": randn(objects, 3, s, s)}
    if name == "mask_decoder":
        coords = torch.rand(objects, points, 2, generator=g) * s
        labels = torch.tensor([2.0, 3.0] + [1.0, 0.0, -1.0] * points)[:points]
        return {
            "image_embed": randn(objects, c, f, f),
            "add_no_mem_embed": torch.ones(1),
            "high_res_feat_s0": randn(objects, c // 8, f * 4, f * 4),
            "high_res_feat_s1": randn(objects, c // 4, f * 2, f * 2),
            "point_coords": coords,
            "point_labels": labels.expand(objects, -1).contiguous(),
            "mask_input": randn(objects, 1, low, low, std=4.0),
            "has_mask_input": torch.ones(1),
        }
    if name == "memory_encoder":
        return {
            "vision_features": randn(objects, c, f, f),
            "mask_logits": randn(objects, 1, low, low, std=4.0),
            "object_score_logits": randn(objects, 1, std=2.0),
            "binarize": torch.zeros(1),
        }
    if name in ("memory_attention", "memory_attention_static"):
        n_slots = settings.static_memory_slots if name.endswith("static") else memories
        p_slots = settings.static_pointer_slots if name.endswith("static") else pointers
        inputs = {
            "vision_features": randn(objects, c, f, f),
            "vision_pos_enc": randn(objects, c, f, f),
            "memory": randn(objects, n_slots, m, f, f),
            "memory_pos_enc": randn(objects, n_slots, m, f, f),
            "memory_tpos_index": torch.randint(0, settings.num_maskmem, (n_slots,), generator=g),
            "obj_ptrs": randn(objects, p_slots, c),
            "obj_ptr_offsets": torch.rand(p_slots, generator=g) * 2 - 1,
        }
        if name.endswith("static"):
            inputs["memory_valid"] = (torch.arange(n_slots) < memories).to(torch.float32)
            inputs["obj_ptr_valid"] = (torch.arange(p_slots) < pointers).to(torch.float32)
            ordered = GRAPH_IO[name]["inputs"]
            return {k: inputs[k] for k in ordered}
        return inputs
    raise ValueError(f"unknown graph {name!r}")
