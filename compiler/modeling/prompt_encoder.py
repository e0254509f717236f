"""SAM's prompt encoder, rewritten so that one traced graph serves every prompt.

The oracle (``sam2/modeling/sam/prompt_encoder.py``) picks its code path from Python values:
boolean-mask writes per label (``emb[labels == k] += w``), ``masks is None`` and ``boxes is
None``. A trace would freeze whichever branch the example input took. As in segment-anything's
``utils/onnx.py``, the label-dependent writes become arithmetic on ``labels == k`` and the
mask/no-mask choice becomes a per-batch-element ``torch.where`` on ``has_mask_input``.

SAM 2 always calls the prompt encoder with ``boxes=None`` (a box is two points labelled 2 and 3),
so the oracle always appends one padding point ``(0, 0)`` with label -1; this module does the
same, unconditionally. Parameter names are SAM 2's, so ``sam_prompt_encoder.*`` loads with
``strict=True``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import LayerNorm2d
from samurai_onnx.compiler.modeling.position_encoding import PositionEmbeddingRandom

# Point labels of SAM 2 (the oracle's ``point_labels``).
LABEL_PAD = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class PromptEncoder(nn.Module):
    """Embed points (and boxes as point pairs) into sparse tokens and a mask into a dense map."""

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(num_pos_feats=embed_dim // 2)

        self.num_point_embeddings = 4  # negative, positive, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, ``[1, C, H, W]``.

        It depends on no input, so the export wrappers can hold it as a graph constant.
        """
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """Sparse tokens ``[B, N + 1, C]`` for ``N`` points plus SAM 2's padding point.

        ``point_labels == -1`` gives exactly ``not_a_point_embed`` (the oracle overwrites the
        positional encoding with 0 first); label ``k`` in 0..3 adds ``point_embeddings[k]``.
        The ``torch.where``/multiply form adds exact zeros elsewhere, so it equals the oracle's
        masked in-place writes bit for bit.
        """
        coords = point_coords.to(torch.float32) + 0.5  # shift to the pixel centre
        labels = point_labels.to(torch.float32)
        # The padding point is appended after the shift, as in the oracle: it sits at (0, 0).
        coords = torch.cat([coords, torch.zeros_like(coords[:, :1, :])], dim=1)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], LABEL_PAD)], dim=1)

        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == LABEL_PAD, self.not_a_point_embed.weight, pe)
        for k, point_embed in enumerate(self.point_embeddings):
            weight = cast(nn.Embedding, point_embed).weight
            emb = emb + (lab == k).to(emb.dtype) * weight
        return emb

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Dense embedding ``[B, C, H, W]``: the downscaled mask where ``has_mask_input`` is 1,
        else ``no_mask_embed`` broadcast over the grid (the oracle's ``masks=None`` path).

        ``torch.where`` rather than a 0/1 blend: it selects exact values and ignores whatever the
        caller put in ``mask_input`` for the elements without a mask (even NaN).
        """
        mask_embedding = self.mask_downscaling(mask_input)
        has = has_mask_input.to(mask_embedding.dtype).reshape(-1, 1, 1, 1)
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return torch.where(has > 0.5, mask_embedding, no_mask)

    def forward(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed one set of prompts per batch element.

        Args:
            point_coords: ``[B, N, 2]`` (x, y) in pixels of the model's input frame
                (``input_image_size``), as the oracle receives them.
            point_labels: ``[B, N]`` float or int: -1 pad, 0 negative, 1 positive,
                2 box top-left, 3 box bottom-right.
            mask_input: ``[B, 1, 4*H, 4*W]`` mask logits (256x256 for a 64x64 embedding).
            has_mask_input: ``[B]`` or ``[1]``, 1 to use ``mask_input``, 0 to ignore it.

        Returns:
            ``(sparse [B, N + 1, C], dense [B, C, H, W])``.
        """
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        return sparse, dense
