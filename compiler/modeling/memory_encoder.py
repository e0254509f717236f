"""Memory encoder of SAM 2.1: fuse a frame's features with its predicted mask into a memory.

Export-first rewrite of ``sam2/modeling/memory_encoder.py``. Parameter names are the oracle's
(``mask_downsampler.encoder.N``, ``pix_feat_proj``, ``fuser.layers.N.*``, ``out_proj``) so the
``memory_encoder.*`` keys of official checkpoints load with ``strict=True``. Differences:

- No ``skip_mask_sigmoid`` switch: the tracker always feeds ``sigmoid(logits) * scale + bias``
  (the oracle's ``_encode_new_memory`` passes ``skip_mask_sigmoid=True``), and that scaling is
  done by the caller, so the graph has no branch.
- ``forward`` returns a tuple instead of a dict (ONNX outputs are positional).
- No drop path / dropout: eval only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import LayerNorm2d
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Downsample a mask by ``total_stride`` in ``stride`` steps (conv, LayerNorm2d, GELU each).

    Each step multiplies the channels by ``stride**2`` so no information is dropped; a final
    1x1 conv projects to ``embed_dim``. ``encoder`` is an ``nn.Sequential`` so its indices match
    the oracle's keys (``encoder.0``, ``encoder.1``, ... ``encoder.12`` for 4 steps).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
    ) -> None:
        super().__init__()
        num_layers = round(math.log(total_stride) / math.log(stride))
        if stride**num_layers != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        layers: list[nn.Module] = []
        in_chans = out_chans = 1
        for _ in range(num_layers):
            out_chans = in_chans * stride**2
            layers.append(
                nn.Conv2d(
                    in_chans, out_chans, kernel_size=kernel_size, stride=stride, padding=padding
                )
            )
            layers.append(LayerNorm2d(out_chans))
            layers.append(nn.GELU())
            in_chans = out_chans
        layers.append(nn.Conv2d(out_chans, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm2d, pointwise MLP (as Linear), layer scale."""

    def __init__(
        self,
        *,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma: nn.Parameter | None = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim))
            if layer_scale_init_value > 0
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of ``CXBlock`` with an optional 1x1 input projection (unused by SAM 2.1)."""

    def __init__(
        self,
        *,
        num_layers: int,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        input_projection: bool = False,
    ) -> None:
        super().__init__()
        self.proj: nn.Module = (
            nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        )
        self.layers = nn.ModuleList(
            CXBlock(
                dim=dim,
                kernel_size=kernel_size,
                padding=padding,
                layer_scale_init_value=layer_scale_init_value,
            )
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Frame features + (already sigmoid-ed and scaled) mask -> memory features and their pos."""

    def __init__(
        self,
        *,
        out_dim: int,
        mask_downsampler: MaskDownSampler,
        fuser: Fuser,
        position_encoding: PositionEmbeddingSine,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = (
            nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        )

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one memory.

        Args:
            pix_feat: ``[B, in_dim, H, W]`` frame features (H = W = feat_size).
            masks: ``[B, 1, H*16, W*16]`` mask probabilities already scaled by the caller
                (``sigmoid(logits) * 20 - 10`` in SAM 2.1).

        Returns:
            ``([B, out_dim, H, W]`` features, ``[B, out_dim, H, W]`` sine position encoding).
            The position encoding is a constant of the graph (it depends only on H, W).
        """
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        x = self.out_proj(self.fuser(x))
        pos = self.position_encoding(x).to(x.dtype)
        return x, pos


def build_memory_encoder(cfg: SAM2Config) -> MemoryEncoder:
    """SAM 2.1's memory encoder for ``cfg`` (the same for all four sizes)."""
    return MemoryEncoder(
        out_dim=cfg.mem_dim,
        in_dim=cfg.d_model,
        mask_downsampler=MaskDownSampler(
            embed_dim=cfg.d_model,
            kernel_size=cfg.mask_downsampler_kernel_size,
            stride=cfg.mask_downsampler_stride,
            padding=cfg.mask_downsampler_padding,
            total_stride=cfg.backbone_stride,
        ),
        fuser=Fuser(
            num_layers=cfg.fuser_layers,
            dim=cfg.d_model,
            kernel_size=cfg.fuser_kernel_size,
            padding=cfg.fuser_padding,
        ),
        position_encoding=PositionEmbeddingSine(num_pos_feats=cfg.mem_dim),
    )
