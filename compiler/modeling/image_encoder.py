"""SAM 2.1's image encoder: Hiera trunk + FPN neck, minus the lowest-resolution level (scalp).

An export-first rewrite of ``sam2/modeling/backbones/image_encoder.py``. Parameter names are the
official ones (``trunk.*``, ``neck.convs.<i>.conv.*``), so the ``image_encoder.*`` weights of a
SAM 2.1 checkpoint load with ``strict=True`` once the prefix is stripped.

What differs from the reference, and why:

- ``ImageEncoder.forward`` returns ``(backbone_fpn, vision_pos_enc)`` as two lists instead of a
  dict: the export wrappers flatten them into graph outputs, and ``vision_features`` is just
  ``backbone_fpn[-1]``.
- The neck does not cast the top-down features to float32 before upsampling: in float32 (the
  export dtype) it is a no-op, and a half-precision graph should not carry a forced Cast.
- The sine position encoding is computed without a shape-keyed cache, so tracing always sees
  the same ops (the exporter folds them to constants).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.hiera import Hiera
from samurai_onnx.compiler.modeling.position_encoding import PositionEmbeddingSine

logger = logging.getLogger(__name__)

FUSE_TYPES = ("sum", "avg")


class FpnNeck(nn.Module):
    """A Feature Pyramid Network without output convs (SAM 2's ``FpnNeck``).

    Each backbone level gets a lateral conv to ``d_model`` channels; only the levels listed in
    ``fpn_top_down_levels`` also receive the upsampled coarser level (SAM 2.1 uses ``(2, 3)``, so
    the two high-resolution levels are purely lateral, which the mask decoder expects).
    """

    def __init__(
        self,
        *,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: list[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in FUSE_TYPES:
            raise ValueError(f"fuse_type must be one of {FUSE_TYPES}, got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            # A Sequential holding one "conv" keeps the official key names (convs.<i>.conv.*).
            lateral = nn.Sequential()
            lateral.add_module(
                "conv",
                nn.Conv2d(
                    in_channels=dim,
                    out_channels=d_model,
                    kernel_size=kernel_size,
                    stride=stride,
                    padding=padding,
                ),
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        # Default: top-down features on every level.
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Backbone levels (highest resolution first) -> FPN features and their encodings.

        The loop runs over the static level count, from the coarsest level to the finest, so
        tracing unrolls it into a fixed graph.
        """
        n = len(self.convs) - 1
        if len(xs) != n + 1:
            raise ValueError(f"expected {n + 1} backbone levels, got {len(xs)}")
        out: list[torch.Tensor] = []  # coarsest first while building, reversed at the end
        pos: list[torch.Tensor] = []
        prev: torch.Tensor | None = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev,
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out.append(prev)
            pos.append(self.position_encoding(prev).to(prev.dtype))
        return out[::-1], pos[::-1]


class ImageEncoder(nn.Module):
    """Trunk + neck; drops the ``scalp`` lowest-resolution levels (SAM 2.1 uses ``scalp=1``)."""

    def __init__(self, *, trunk: Hiera, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                "channel dims of trunk and neck do not match: "
                f"trunk {trunk.channel_list}, neck {neck.backbone_channel_list}"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``[B, 3, S, S]`` normalized image -> ``(backbone_fpn, vision_pos_enc)``.

        Both lists are highest resolution first; for S=1024 and scalp=1 the maps are 256, 128
        and 64 pixels wide, all ``d_model`` channels.
        """
        features, pos = self.neck(self.trunk(x))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return features, pos


def build_image_encoder(cfg: SAM2Config) -> ImageEncoder:
    """The image encoder of the model size described by ``cfg`` (random weights).

    Load an official checkpoint's ``image_encoder.*`` entries (prefix stripped) into the result.
    """
    h = cfg.hiera
    trunk = Hiera(
        embed_dim=h.embed_dim,
        num_heads=h.num_heads,
        q_pool=h.q_pool,
        q_stride=h.q_stride,
        stages=tuple(h.stages),
        dim_mul=h.dim_mul,
        head_mul=h.head_mul,
        window_pos_embed_bkg_spatial_size=h.window_pos_embed_bkg_spatial_size,
        window_spec=tuple(h.window_spec),
        global_att_blocks=tuple(h.global_att_blocks),
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=cfg.d_model),
        d_model=cfg.d_model,
        backbone_channel_list=list(h.channel_list),
        fpn_interp_model=cfg.fpn_interp_model,
        fpn_top_down_levels=tuple(cfg.fpn_top_down_levels),
    )
    logger.debug(
        "image encoder %s: stages %s, channels %s", cfg.name, h.stages, list(h.channel_list)
    )
    return ImageEncoder(trunk=trunk, neck=neck, scalp=cfg.scalp)
