"""Frozen model configurations for the four SAM 2.1 sizes.

The values come from the model manifests (``manifests/*.yaml``), which mirror SAMURAI's hydra
configs (``configs/samurai/sam2.1_hiera_*.yaml``). Everything that is the same for all four sizes
has a default here, so a manifest only spells out what differs (the Hiera trunk); a manifest may
still override any field, and ``SAM2Config.from_dict`` rejects unknown keys so that a typo in a
manifest is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HieraConfig:
    """The Hiera trunk: the only part of SAM 2.1 whose shape changes with the model size."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Channels of the four stage outputs, deepest first (the FPN neck's order)."""
        dims = [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]
        return tuple(reversed(dims))


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build the SAM 2.1 modules of one size."""

    name: str = "tiny"
    hiera: HieraConfig = field(default_factory=HieraConfig)
    image_size: int = 1024
    backbone_stride: int = 16
    d_model: int = 256  # hidden_dim of SAM 2
    mem_dim: int = 64  # memory encoder output channels
    # FPN neck
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    scalp: int = 1
    # memory attention
    memory_attention_layers: int = 4
    memory_attention_dim_feedforward: int = 2048
    rope_theta: float = 10000.0
    # memory encoder
    mask_downsampler_kernel_size: int = 3
    mask_downsampler_stride: int = 2
    mask_downsampler_padding: int = 1
    fuser_layers: int = 2
    fuser_kernel_size: int = 7
    fuser_padding: int = 3
    # SAM heads
    num_multimask_outputs: int = 3
    mask_in_chans: int = 16
    two_way_depth: int = 2
    two_way_mlp_dim: int = 2048
    two_way_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # memory bank
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0

    @property
    def feat_size(self) -> int:
        """Side of the lowest-resolution feature map (64 for 1024-pixel inputs)."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's mask logits (256 for 1024-pixel inputs)."""
        return self.feat_size * 4

    @property
    def ptr_tokens_per_frame(self) -> int:
        """An object pointer (d_model wide) is split into d_model // mem_dim memory tokens."""
        return self.d_model // self.mem_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model") -> SAM2Config:
        """Build from a manifest's ``model:`` mapping; unknown keys raise ``ValueError``."""
        data = dict(data)
        hiera_data = data.pop("hiera", {}) or {}
        if not isinstance(hiera_data, dict):
            raise ValueError(f"{where}.hiera must be a mapping, got {type(hiera_data).__name__}")
        hiera = _build(HieraConfig, hiera_data, f"{where}.hiera")
        cfg = _build(cls, data, where, hiera=hiera)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML form (tuples become lists) for the bundle manifest."""
        return _plain(dataclasses.asdict(self))


def _build(kind: Any, data: dict[str, Any], where: str, **extra: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(kind(), name) if name != "hiera" else None
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}.{name} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool) or default is None:
            pass
        elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name} must be a number, got {value!r}")
        elif isinstance(default, float):
            value = float(value)
        kwargs[name] = value
    kwargs.update(extra)
    return kind(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
