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
from typing import Any, ClassVar

from samurai_onnx.runtime.documents import Range, short


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

    # Checked for every manifest (``documents.check_fields``): a negative width or a zero stage
    # would otherwise crash deep inside module construction or export.
    FIELD_RULES: ClassVar[dict[str, Range]] = {
        "embed_dim": Range(1, 4096),
        "num_heads": Range(1, 64),
        "stages": Range(1, 64),
        "global_att_blocks": Range(0, 1023),
        "window_pos_embed_bkg_spatial_size": Range(1, 256),
        "window_spec": Range(1, 1024),
        "q_pool": Range(0, 3),
        "q_stride": Range(1, 8),
        "dim_mul": Range(1, 8),
        "head_mul": Range(1, 8),
    }

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

    FIELD_RULES: ClassVar[dict[str, Range]] = {
        "image_size": Range(64, 4096, multiple_of=32, why="(the Hiera trunk's total stride)"),
        "backbone_stride": Range(4, 64),
        "d_model": Range(8, 4096),
        "mem_dim": Range(1, 4096),
        "fpn_top_down_levels": Range(0, 3),
        "scalp": Range(0, 3),
        "memory_attention_layers": Range(1, 64),
        "memory_attention_dim_feedforward": Range(1, 65536),
        "rope_theta": Range(1, 1e9),
        "mask_downsampler_kernel_size": Range(1, 15),
        "mask_downsampler_stride": Range(1, 8),
        "mask_downsampler_padding": Range(0, 15),
        "fuser_layers": Range(0, 64),
        "fuser_kernel_size": Range(1, 31),
        "fuser_padding": Range(0, 15),
        "num_multimask_outputs": Range(3, 3, why="(SAMURAI chooses among three candidates)"),
        "mask_in_chans": Range(1, 1024),
        "two_way_depth": Range(1, 16),
        "two_way_mlp_dim": Range(1, 65536),
        "two_way_num_heads": Range(1, 64),
        "iou_head_depth": Range(1, 16),
        "iou_head_hidden_dim": Range(1, 8192),
        "num_maskmem": Range(1, 64),
        "max_obj_ptrs_in_encoder": Range(1, 1024),
        "sigmoid_scale_for_mem_enc": Range(0, 1e4, lo_open=True),
        "sigmoid_bias_for_mem_enc": Range(-1e4, 1e4),
    }

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


def config_problem(cfg: SAM2Config) -> str | None:
    """What makes ``cfg`` unbuildable although each field is in range, as ``key: reason``
    (the manifest reader prefixes the file and ``model``), or None."""
    h = cfg.hiera
    checks = [
        (len(h.stages) == 4, "hiera.stages", "SAM 2's FPN neck takes exactly 4 stages"),
        (
            len(h.window_spec) == len(h.stages),
            "hiera.window_spec",
            "needs one window size per stage",
        ),
        (h.q_pool <= len(h.stages) - 1, "hiera.q_pool", "must be less than the number of stages"),
        (
            all(b < sum(h.stages) for b in h.global_att_blocks),
            "hiera.global_att_blocks",
            f"block indices must be below the {sum(h.stages)} blocks of the trunk",
        ),
        (h.embed_dim % h.num_heads == 0, "hiera.embed_dim", "must be divisible by num_heads"),
        (
            cfg.image_size % cfg.backbone_stride == 0,
            "image_size",
            "must be a multiple of backbone_stride",
        ),
        (cfg.d_model % cfg.mem_dim == 0, "d_model", "must be a multiple of mem_dim"),
        (
            cfg.d_model % cfg.two_way_num_heads == 0,
            "two_way_num_heads",
            "must divide d_model",
        ),
        (
            cfg.fpn_interp_model in ("nearest", "bilinear"),
            "fpn_interp_model",
            "must be nearest or bilinear",
        ),
    ]
    for ok, key, reason in checks:
        if not ok:
            return f"{key}: {reason}"
    return None


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
                raise ValueError(f"{where}.{name} must be a list, got {short(value)}")
            value = tuple(value)
        elif isinstance(default, bool) or default is None:
            pass
        elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{name} must be a number, got {short(value)}")
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
