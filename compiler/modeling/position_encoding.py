"""Position encodings of SAM 2.1: 2-D sine, random Fourier features, 1-D sine, axial RoPE.

Export-first rewrites of ``sam2/modeling/position_encoding.py``: no caches keyed on shapes (a
traced graph would bake one branch), and RoPE is written with real cos/sin tables instead of
complex tensors, which neither the TorchScript exporter nor most execution providers support.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine encoding of a feature map's grid (DETR style), normalized to [0, 2*pi]."""

    def __init__(
        self,
        *,
        num_pos_feats: int,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def encode(self, height: int, width: int) -> torch.Tensor:
        """The encoding of an ``height x width`` grid, shape ``[C, H, W]``."""
        y_embed = torch.arange(1, height + 1, dtype=torch.float32).view(-1, 1).expand(height, width)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32).view(1, -1).expand(height, width)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[-1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, None] / dim_t
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for the grid of ``x`` (``[B, C, H, W]``), repeated over the batch.

        The grid size is read as a Python int at trace time: the feature sizes are fixed by the
        image size, so the exported graph holds the encoding as a constant.
        """
        pos = self.encode(int(x.shape[-2]), int(x.shape[-1])).to(x.dtype)
        return pos.unsqueeze(0).expand(x.shape[0], -1, -1, -1)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier-feature encoding of normalized coordinates (SAM's prompt encoder)."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, *, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an ``h x w`` grid of pixel centres, shape ``[C, H, W]``."""
        h, w = size
        grid = torch.ones((h, w), dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode pixel coordinates ``[B, N, 2]`` (x, y) of an image of ``image_size`` (h, w)."""
        scale = torch.tensor([1.0 / image_size[1], 1.0 / image_size[0]], dtype=torch.float32)
        coords = coords_input.to(torch.float32) * scale
        return self._pe_encoding(coords)


def get_1d_sine_pe(pos_inds: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """1-D sine encoding ``[..., dim]`` of (possibly fractional) positions ``[...]``."""
    pe_dim = dim // 2
    dim_t = torch.arange(pe_dim, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / pe_dim)
    pos_embed = pos_inds.unsqueeze(-1) / dim_t
    return torch.cat([pos_embed.sin(), pos_embed.cos()], dim=-1)


def axial_rope_tables(
    *, dim: int, end_x: int, end_y: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[end_x * end_y, dim // 2]`` of SAM 2's axial 2-D RoPE.

    Equal to the angles of ``compute_axial_cis`` in SAM 2, whose complex ``polar(1, angle)``
    entries are exactly ``cos(angle) + i sin(angle)``.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: (dim // 4)].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` of ``x [..., N, D]`` by the tables.

    ``cos``/``sin`` are ``[N, D // 2]``; this is the real form of ``x_complex * freqs_cis``.
    """
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2)
