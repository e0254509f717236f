"""The SAM 2.1 model as a container of its components, with the official state-dict layout.

Only parameters and sub-modules live here (named exactly as in ``SAM2Base`` so official
checkpoints load with ``strict=True``); the tracking logic that SAM2Base mixes into the model
lives in the runtime, and the graph boundaries in ``compiler/graphs.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import MLP
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.image_encoder import build_image_encoder
from samurai_onnx.compiler.modeling.mask_decoder import build_sam_heads
from samurai_onnx.compiler.modeling.memory_attention import build_memory_attention
from samurai_onnx.compiler.modeling.memory_encoder import build_memory_encoder


class SAM2Model(nn.Module):
    """SAM 2.1 with SAMURAI's options (object pointers, no-object embeddings, high-res SAM)."""

    def __init__(self, *, cfg: SAM2Config) -> None:
        super().__init__()
        self.cfg = cfg
        c, m = cfg.d_model, cfg.mem_dim
        self.image_encoder = build_image_encoder(cfg)
        self.sam_prompt_encoder, self.sam_mask_decoder = build_sam_heads(cfg)
        self.memory_attention = build_memory_attention(cfg)
        self.memory_encoder = build_memory_encoder(cfg)
        # Object pointers: a 3-layer MLP on the SAM output token (use_mlp_for_obj_ptr_proj) and a
        # projection of their temporal encoding (proj_tpos_enc_in_obj_ptrs).
        self.obj_ptr_proj = MLP(input_dim=c, hidden_dim=c, output_dim=c, num_layers=3)
        self.obj_ptr_tpos_proj = nn.Linear(c, m)
        # Mask prompts only: the mask_prompt graph (compiler/processing.py) carries it.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(cfg.num_maskmem, 1, 1, m))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))


def build_sam2(cfg: SAM2Config) -> SAM2Model:
    """An eval-mode model of the configured size with freshly initialised weights."""
    return SAM2Model(cfg=cfg).eval()


def load_sam2(
    cfg: SAM2Config, state_dict: dict[str, torch.Tensor], *, source: Path | str
) -> SAM2Model:
    """A model loaded with ``strict=True``; key mismatches become one readable error."""
    model = build_sam2(cfg)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ValueError(
            f"checkpoint {source} does not match SAM 2.1 {cfg.name} ({detail[:200]}); "
            "use an official SAM 2.1 checkpoint of this size"
        ) from None
    return model
