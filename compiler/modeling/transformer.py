"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Export-first rewrite of ``TwoWayTransformer`` / ``TwoWayAttentionBlock`` from
``sam2/modeling/sam/transformer.py``. Differences that matter for export, none for the numbers:

- every attention goes through ``common.Attention``, so ``set_attention_lowering`` reaches it
  (the oracle calls ``F.scaled_dot_product_attention`` inside a CUDA kernel-selection context);
- dropout is omitted (eval only);
- the image positional encoding may have batch 1 and is broadcast against the batch instead of
  being repeated, which keeps a ``[1, C, H, W]`` constant in the graph instead of a
  ``repeat_interleave`` on a dynamic batch.

Parameter names are SAM 2's so that ``sam_mask_decoder.transformer.*`` loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import MLP, Attention


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of the tokens, token->image, MLP, image->token (four residual steps).

    ``skip_first_layer_pe`` is set on the first block: its self-attention sees the raw tokens
    (which already *are* the prompt encodings) and replaces them instead of adding a residual.
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim=embedding_dim, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=attention_downsample_rate,
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(
            input_dim=embedding_dim,
            hidden_dim=mlp_dim,
            output_dim=embedding_dim,
            num_layers=2,
            activation=activation,
        )
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=attention_downsample_rate,
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``queries [B, Nq, C]`` (tokens) and ``keys [B, HW, C]`` (image).

        ``key_pe`` may be ``[1, HW, C]``; it is broadcast over the batch.
        """
        # skip_first_layer_pe is a construction-time constant, so this branch is fixed per block.
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token->image attention and LayerNorm."""

    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            downsample_rate=attention_downsample_rate,
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Args:
            image_embedding: ``[B, C, H, W]`` image tokens.
            image_pe: ``[1 or B, C, H, W]`` their positional encoding (broadcast over B).
            point_embedding: ``[B, N, C]`` output tokens + prompt tokens; also their PE.

        Returns:
            ``(queries [B, N, C], keys [B, H*W, C])``: the updated tokens and image tokens.
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)

        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
