"""Memory attention of SAM 2.1: the current frame's features attend to the memory bank.

Export-first rewrite of ``sam2/modeling/memory_attention.py`` and ``RoPEAttention``
(``sam2/modeling/sam/transformer.py``). What changes and why:

- Batch-first tensors throughout (the oracle is sequence-first), so that the ONNX inputs read
  ``[B, tokens, C]`` like every other graph of the bundle.
- The spatial memories and the object-pointer tokens are two separate inputs instead of one
  concatenation plus a Python int ``num_obj_ptr_tokens``. The oracle slices the keys at that int
  to skip RoPE on the pointer tokens; a traced graph would bake the int in. Projecting the two
  parts separately and concatenating the projected keys is the same arithmetic (the projections
  act per token), and both the number of memory frames ``N`` and of pointer tokens ``T`` stay
  dynamic axes of the exported graph.
- RoPE uses real cos/sin tables (no complex tensors) computed once for the actual feature grid
  and kept as non-persistent buffers: the oracle recomputes its table on the first call because
  its config says 32x32 while the features are 64x64, a shape-keyed cache that must not be traced.
- ``key_mask`` (additive) lets a static-shape graph pad the memory to its maximum size and still
  give the unpadded result.

Both ``N >= 1`` and ``T >= 1`` are assumed by the exported graph (zero-length inputs are not
portable across execution providers); with the PyTorch module ``T = 0`` also works.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import Attention, attention
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.position_encoding import apply_rope, axial_rope_tables

# Large enough that exp() of a masked logit is exactly 0 in float32 and float16 softmax, small
# enough not to overflow float16 once added to a logit.
MASKED = -30000.0


class RoPEAttention(Attention):
    """Attention with SAM 2's axial 2-D rotary position encoding on queries and keys.

    The queries are the ``feat_size x feat_size`` grid of the current frame. Keys passed as ``k``
    get RoPE too: one grid for self-attention, or with ``rope_k_repeat`` any number of grids
    (one per memory frame), each rotated with the same table. Keys passed as ``k_no_rope`` (the
    object pointers) are appended after them without RoPE, as the oracle's
    ``num_k_exclude_rope`` does.
    """

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        feat_size: int,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        downsample_rate: int = 1,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=downsample_rate,
            kv_in_dim=kv_in_dim,
        )
        self.rope_k_repeat = rope_k_repeat
        # Set by the export wrappers (``fold_value_projections``); see ``forward``.
        self.fold_values = False
        self.tokens_per_grid = feat_size * feat_size
        cos, sin = axial_rope_tables(
            dim=self.internal_dim // num_heads, end_x=feat_size, end_y=feat_size, theta=rope_theta
        )
        # Non-persistent: derived from the config, so not part of (or expected in) checkpoints.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rope_keys(self, k: torch.Tensor) -> torch.Tensor:
        """RoPE on ``[B, heads, N * HW, D]`` keys, the same table for each of the N grids.

        Reshaping to ``[B, heads, N, HW, D]`` with ``-1`` for N (instead of repeating the table
        N times) keeps N a dynamic axis in the traced graph.
        """
        if not self.rope_k_repeat:
            return apply_rope(k, self.rope_cos, self.rope_sin)
        b, h, _, d = k.shape
        grids = k.reshape(b, h, -1, self.tokens_per_grid, d)
        return apply_rope(grids, self.rope_cos, self.rope_sin).reshape(b, h, -1, d)

    def forward(  # type: ignore[override]
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_no_rope: torch.Tensor | None = None,
        v_no_rope: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``q [B, HW, C]`` over ``concat(k, k_no_rope)`` with values ``concat(v, v_no_rope)``.

        ``mask`` is additive and broadcasts to ``[B, heads, HW, Nk]`` (see ``common.attention``).
        """
        q = apply_rope(self.separate_heads(self.q_proj(q)), self.rope_cos, self.rope_sin)
        k = self._rope_keys(self.separate_heads(self.k_proj(k)))
        if k_no_rope is not None:
            if v_no_rope is None:
                raise ValueError("k_no_rope needs v_no_rope")
            k = torch.cat([k, self.separate_heads(self.k_proj(k_no_rope))], dim=2)
            v = torch.cat([v, v_no_rope], dim=1)
        if self.fold_values and self.num_heads == 1 and self.kv_in_dim < self.internal_dim:
            # softmax(s) @ (v Wv^T + bv) == (softmax(s) @ v) Wv^T + bv, since every softmax row
            # sums to 1 (masked keys get weight 0). Attending over the raw kv_in_dim-channel
            # memories (64 instead of 256 for SAM 2.1) makes the value half of the largest
            # matmul of the model 4x smaller; out_proj . v_proj fold into one constant linear.
            out = self.recombine_heads(attention(q, k, v[:, None], mask=mask, lowering=self.lowering))
            weight = self.out_proj.weight @ self.v_proj.weight
            bias = self.out_proj.weight @ self.v_proj.bias + self.out_proj.bias
            return nn.functional.linear(out, weight, bias)
        out = attention(q, k, self.separate_heads(self.v_proj(v)), mask=mask, lowering=self.lowering)
        return self.out_proj(self.recombine_heads(out))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to the memory, ReLU MLP.

    The three ``pos_enc_at_*`` switches are SAM 2.1's (identical for all four sizes); they are
    construction-time constants, so they never become graph control flow.
    """

    def __init__(
        self,
        *,
        d_model: int,
        mem_dim: int,
        dim_feedforward: int,
        feat_size: int,
        num_heads: int = 1,
        rope_theta: float = 10000.0,
        pos_enc_at_attn: bool = False,
        pos_enc_at_cross_attn_keys: bool = True,
        pos_enc_at_cross_attn_queries: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(
            embedding_dim=d_model, num_heads=num_heads, feat_size=feat_size, rope_theta=rope_theta
        )
        self.cross_attn_image = RoPEAttention(
            embedding_dim=d_model,
            num_heads=num_heads,
            feat_size=feat_size,
            rope_theta=rope_theta,
            rope_k_repeat=True,
            kv_in_dim=mem_dim,
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.activation = nn.ReLU()
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        ptr_memory: torch.Tensor | None = None,
        ptr_pos: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One layer on batch-first tensors; see ``MemoryAttention.forward`` for the shapes."""
        tgt = self.self_block(tgt, query_pos)
        return self.cross_block(tgt, query_pos, memory, memory_pos, ptr_memory, ptr_pos, key_mask)

    def self_block(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """The pre-norm self-attention over the frame's own tokens (no memory involved)."""
        tgt2 = self.norm1(tgt)
        q = tgt2 + query_pos if self.pos_enc_at_attn else tgt2
        return tgt + self.self_attn(q, q, tgt2)

    def cross_block(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        ptr_memory: torch.Tensor | None = None,
        ptr_pos: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attention to the memory, then the MLP (both per object)."""
        tgt2 = self.norm2(tgt)
        q = tgt2 + query_pos if self.pos_enc_at_cross_attn_queries else tgt2
        k = memory + memory_pos if self.pos_enc_at_cross_attn_keys else memory
        k_ptr = ptr_memory
        if ptr_memory is not None and ptr_pos is not None and self.pos_enc_at_cross_attn_keys:
            k_ptr = ptr_memory + ptr_pos
        tgt = tgt + self.cross_attn_image(q, k, memory, k_ptr, ptr_memory, key_mask)

        tgt2 = self.norm3(tgt)
        return tgt + self.linear2(self.activation(self.linear1(tgt2)))


class MemoryAttention(nn.Module):
    """Stack of ``MemoryAttentionLayer`` and a final LayerNorm (SAM 2's ``MemoryAttention``)."""

    def __init__(
        self,
        *,
        d_model: int,
        mem_dim: int,
        num_layers: int,
        dim_feedforward: int,
        feat_size: int,
        num_heads: int = 1,
        rope_theta: float = 10000.0,
        pos_enc_at_input: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        self.pos_enc_at_input = pos_enc_at_input
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(
                d_model=d_model,
                mem_dim=mem_dim,
                dim_feedforward=dim_feedforward,
                feat_size=feat_size,
                num_heads=num_heads,
                rope_theta=rope_theta,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        ptr_memory: torch.Tensor | None = None,
        ptr_pos: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Condition the current frame's features on the memory bank.

        Args:
            curr: ``[B, HW, d_model]`` current frame features (HW = feat_size**2).
            curr_pos: ``[B, HW, d_model]`` their sine position encoding.
            memory: ``[B, N*HW, mem_dim]`` N spatial memory frames, frame after frame.
            memory_pos: ``[B, N*HW, mem_dim]`` their position (+ temporal) encodings.
            ptr_memory: ``[B, T, mem_dim]`` object-pointer tokens (no RoPE).
            ptr_pos: ``[B, T, mem_dim]`` their temporal encodings.
            key_mask: additive mask broadcastable to ``[B, 1, 1, N*HW + T]`` over the keys
                ``concat(memory, ptr_memory)``: 0 to use a key, ``MASKED`` to ignore it.

        Returns:
            ``[B, HW, d_model]`` memory-conditioned features.

        ``curr`` and ``curr_pos`` may have batch 1 while the memory has ``B`` objects: the first
        layer's self-attention sees only the frame, so it runs once and its result is broadcast
        to every object (the same numbers as running it per object).
        """
        output = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        for i, module in enumerate(self.layers):
            layer = cast(MemoryAttentionLayer, module)
            output = layer.self_block(output, curr_pos)
            if i == 0:
                output = output.expand(memory.shape[0], -1, -1)
            output = layer.cross_block(
                output, curr_pos, memory, memory_pos, ptr_memory, ptr_pos, key_mask
            )
        return self.norm(output)


def fold_value_projections(module: nn.Module, enabled: bool = True) -> None:
    """Let every memory cross-attention in ``module`` attend over the raw memory values.

    The same numbers up to float rounding (see ``RoPEAttention.forward``); the export wrappers
    turn it on, the modules keep the oracle's order of operations by default.
    """
    for sub in module.modules():
        if isinstance(sub, RoPEAttention):
            sub.fold_values = enabled


def memory_key_mask(
    *,
    num_frames: int,
    num_ptr_tokens: int,
    max_frames: int,
    max_ptr_tokens: int,
    tokens_per_frame: int,
) -> torch.Tensor:
    """Additive key mask ``[1, 1, 1, max_frames*HW + max_ptr_tokens]`` for a padded memory.

    The valid frames and pointer tokens must come first within their part (padding at the end
    of the spatial part and at the end of the pointer part).
    """
    spatial = torch.full((max_frames, tokens_per_frame), MASKED)
    spatial[:num_frames] = 0.0
    ptr = torch.full((max_ptr_tokens,), MASKED)
    ptr[:num_ptr_tokens] = 0.0
    return torch.cat([spatial.flatten(), ptr]).view(1, 1, 1, -1)


def build_memory_attention(cfg: SAM2Config) -> MemoryAttention:
    """SAM 2.1's memory attention for ``cfg`` (the same for all four sizes; one head)."""
    return MemoryAttention(
        d_model=cfg.d_model,
        mem_dim=cfg.mem_dim,
        num_layers=cfg.memory_attention_layers,
        dim_feedforward=cfg.memory_attention_dim_feedforward,
        feat_size=cfg.feat_size,
        rope_theta=cfg.rope_theta,
    )
