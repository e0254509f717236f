"""The Hiera trunk of SAM 2.1 (``Hieradet``), rewritten for export.

An export-first rewrite of ``sam2/modeling/backbones/hieradet.py`` and the windowing helpers of
``sam2/modeling/backbones/utils.py``. Parameter and attribute names are the official ones, so the
``image_encoder.trunk.*`` weights of a SAM 2.1 checkpoint load with ``strict=True``.

What differs from the reference, and why:

- Eval only: no drop path / dropout, no pretrained-weights loading inside the module.
- All window padding is derived from the (static) feature-map sizes with Python ints, so the
  traced graph holds constant Pad/Reshape shapes and no data-dependent branches.
- Attention goes through :func:`samurai_onnx.compiler.modeling.common.attention`, so one switch
  (``set_attention_lowering``) decides how every attention layer is lowered into ONNX.
- Constructors are keyword-only and typed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from samurai_onnx.compiler.modeling.common import MLP, attention


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``[B, H, W, C]`` into ``[B * nW, ws, ws, C]`` windows, zero-padding H and W.

    Returns the windows and the padded size ``(Hp, Wp)`` that :func:`window_unpartition` needs.
    The padding is a Python int computed from the static map size, so no branch is traced.
    """
    _, h, w, c = (int(s) for s in x.shape)
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(-1, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, ws, ws, C]`` -> ``[B, H, W, C]``."""
    hp, wp = pad_hw
    h, w = hw
    c = int(windows.shape[-1])
    x = windows.reshape(-1, hp // window_size, wp // window_size, window_size, window_size, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def do_pool(x: torch.Tensor, pool: nn.Module | None, norm: nn.Module | None = None) -> torch.Tensor:
    """Pool a channels-last ``[B, H, W, C]`` map in 2-D (identity when ``pool`` is None)."""
    if pool is None:
        return x
    x = pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    if norm is not None:
        x = norm(x)
    return x


class PatchEmbed(nn.Module):
    """Image to patch tokens: a strided conv, output channels-last ``[B, H, W, C]``."""

    def __init__(
        self,
        *,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (at a stage change).

    Pooling only the queries halves the token grid while every key/value still contributes,
    which is how Hiera downsamples between stages.
    """

    def __init__(
        self, *, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)
        self.lowering = "matmul"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H', W', dim_out]`` (``H' = H / stride`` if pooling)."""
        # The batch (times windows) axis stays -1 so only the static grid sizes are baked in.
        h, w = int(x.shape[1]), int(x.shape[2])
        head_dim = self.dim_out // self.num_heads
        qkv = self.qkv(x).reshape(-1, h * w, 3, self.num_heads, head_dim)
        q, k, v = torch.unbind(qkv, 2)  # each [B, H*W, heads, D]
        if self.q_pool is not None:
            q = do_pool(q.reshape(-1, h, w, self.dim_out), self.q_pool)
            h, w = int(q.shape[1]), int(q.shape[2])
            q = q.reshape(-1, h * w, self.num_heads, head_dim)
        out = attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), lowering=self.lowering
        )
        out = out.transpose(1, 2).reshape(-1, h, w, self.dim_out)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """A pre-norm transformer block with windowed (or global) attention and optional Q pooling."""

    def __init__(
        self,
        *,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool: nn.MaxPool2d | None = None
        if q_stride is not None:
            self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False)
        self.attn = MultiScaleAttention(
            dim=dim, dim_out=dim_out, num_heads=num_heads, q_pool=self.pool
        )
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(
            input_dim=dim_out,
            hidden_dim=int(dim_out * mlp_ratio),
            output_dim=dim_out,
            num_layers=2,
            activation=nn.GELU,
        )
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H', W', dim_out]``."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The residual changes width (and size, at a stage change) like the attention does.
            shortcut = do_pool(self.proj(x), self.pool)

        window_size = self.window_size
        pad_hw = (0, 0)
        if window_size > 0:
            x, pad_hw = window_partition(x, window_size)
        x = self.attn(x)
        h, w = int(shortcut.shape[1]), int(shortcut.shape[2])
        if window_size > 0:
            if self.q_stride is not None:
                # Q pooling shrank every window: unpartition with the pooled window size and
                # the padding that the pooled map would need.
                window_size = window_size // self.q_stride[0]
                pad_hw = (
                    h + (window_size - h % window_size) % window_size,
                    w + (window_size - w % window_size) % window_size,
                )
            x = window_unpartition(x, window_size, pad_hw, (h, w))

        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hiera (https://arxiv.org/abs/2306.00989) as used by SAM 2.1: four stages of
    :class:`MultiScaleBlock`, returning every stage's output as ``[B, C, H, W]``, highest
    resolution first.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        num_heads: int = 1,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {window_spec} differ in length")
        self.window_spec = tuple(window_spec)
        self.q_stride = (int(q_stride[0]), int(q_stride[1]))
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        if not 0 <= q_pool <= len(self.stage_ends) - 1:
            raise ValueError(f"q_pool must be in [0, {len(self.stage_ends) - 1}], got {q_pool}")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.global_att_blocks = tuple(global_att_blocks)
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        # Windowed positional embedding (https://arxiv.org/abs/2311.05613): a coarse background
        # embedding interpolated to the map size plus one window-sized embedding tiled over it.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size)
        )
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )

        self.blocks = nn.ModuleList()
        cur_stage = 1
        for i in range(sum(stages)):
            dim_out = embed_dim
            # The window size lags by a block: the first block of a stage still uses the
            # previous stage's window (it pools inside those windows).
            window_size = self.window_spec[cur_stage - 1]
            if i in self.global_att_blocks:
                window_size = 0
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            embed_dim = dim_out

        # Stage widths, deepest first: the order the FPN neck's convs are built in.
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Positional embedding ``[1, H, W, C]`` for an ``H x W`` token map.

        Depends only on parameters and static sizes, so the exporter can fold it to a constant.
        """
        h, w = hw
        ws = self.window_spec[0]
        pos_embed = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        # ``repeat``, not ``tile``: the TorchScript exporter lowers ``tile`` through ``If`` nodes.
        pos_embed = pos_embed + self.pos_embed_window.repeat(1, 1, h // ws, w // ws)
        return pos_embed.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` image -> the four stage outputs ``[B, C_i, S / 4 / 2^i, ...]``."""
        x = self.patch_embed(x)
        x = x + self._get_pos_embed((int(x.shape[1]), int(x.shape[2])))
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
