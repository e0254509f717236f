"""Building blocks shared by several SAM 2.1 components: MLP, LayerNorm2d, multi-head attention.

The attention core is one function, ``attention``, so that how attention is lowered into the
ONNX graph is decided in one place (``Attention.lowering``, set by the export wrappers from the
manifest's ``attention`` setting):

- ``"matmul"``: ``softmax(q k^T / sqrt(d) + mask) v`` written out as MatMul/Softmax nodes; runs on
  every execution provider and is the fallback when no fused kernel exists.
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``; what the exporter makes of it
  depends on the exporter and opset (an ``Attention`` node at opset 23+, else MatMul/Softmax).
- ``"ort_mha"``: ONNX Runtime's fused ``com.microsoft.MultiHeadAttention`` contrib op (flash
  attention on the CPU for long sequences: it never materializes the 4096 x 28736 score matrix of
  memory attention). In PyTorch it computes the ``"matmul"`` form, so eager numbers are unchanged.
  Only for providers that implement the op (CPU, CUDA); no masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_LOWERINGS = ("matmul", "sdpa", "ort_mha")


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (SAM 2's ``MLP``)."""

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim, *h], [*h, output_dim], strict=True)
        )
        self.sigmoid_output = sigmoid_output
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self.act(layer(x)) if i < self.num_layers - 1 else layer(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, H, W]`` maps.

    ``channels_last`` (set by ``set_norm_lowering``) decides the ONNX it exports to. False (the
    main form): SAM 2's formula, mean and variance as ``ReduceMean`` over axis 1 and element-wise
    nodes (nine nodes per norm). True (the ``layernorm`` graph form): the map transposed to
    ``[B, H, W, C]``, one ``LayerNormalization`` over its last axis, and transposed back: one
    fused kernel per norm instead of two channel-axis reductions and seven passes over the map,
    for GPUs where those reductions are slow. The same function up to summation order, and the
    same parameters (``strict=True`` loads either way)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.num_channels = num_channels
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    lowering: str = "matmul",
) -> torch.Tensor:
    """Scaled dot-product attention of ``[B, H, Nq, D]`` queries over ``[B, H, Nk, D]`` keys.

    ``mask`` is additive (0 for keys to use, a large negative number for keys to ignore) and
    broadcasts to ``[B, H, Nq, Nk]``; a masked key then gets a softmax weight of exactly 0, so a
    padded static graph gives the same numbers as the dynamic graph without the padding.
    """
    if lowering == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if lowering == "ort_mha" and mask is None:
        b, h, nq, _ = q.shape
        packed = [t.transpose(1, 2).reshape(b, t.shape[2], h * t.shape[3]) for t in (q, k, v)]
        out = _ort_mha(packed[0], packed[1], packed[2], h)
        return out.reshape(b, nq, h, v.shape[3]).transpose(1, 2)
    if lowering == "ort_mha":
        lowering = "matmul"  # the fused op takes no additive mask here
    if lowering != "matmul":
        raise ValueError(
            f"unknown attention lowering {lowering!r}; use one of {ATTENTION_LOWERINGS}"
        )
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    if mask is not None:
        logits = logits + mask
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.matmul(torch.softmax(torch.matmul(q * scale, k.transpose(-2, -1)), dim=-1), v)


@torch.library.custom_op("samurai_onnx::multi_head_attention", mutates_args=())
def _ort_mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Packed ``[B, N, H*D]`` attention; exported as ``com.microsoft.MultiHeadAttention``.

    The values may be narrower than the queries/keys (``[B, Nk, H*Dv]``, as the op allows): the
    memory cross-attention attends over raw 64-channel memories (see ``RoPEAttention``).
    """
    b, nq, _ = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], num_heads, t.shape[2] // num_heads).transpose(1, 2)

    out = _matmul_attention(heads(q), heads(k), heads(v))
    return out.transpose(1, 2).reshape(b, nq, v.shape[2]).contiguous()


@_ort_mha.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


def _ort_mha_symbolic(g: Any, q: Any, k: Any, v: Any, num_heads: Any) -> Any:
    from torch.onnx import symbolic_helper

    heads = symbolic_helper._maybe_get_const(num_heads, "i")
    out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=int(heads))
    q_sizes, v_sizes = q.type().varyingSizes(), v.type().varyingSizes()
    if q_sizes and v_sizes and len(q_sizes) == 3 and len(v_sizes) == 3:
        out.setType(q.type().with_sizes([q_sizes[0], q_sizes[1], v_sizes[2]]))
    return out


torch.onnx.register_custom_op_symbolic("samurai_onnx::multi_head_attention", _ort_mha_symbolic, 1)


class Attention(nn.Module):
    """Multi-head attention with optional down-projection (SAM's ``Attention``).

    Parameter names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) are SAM 2's, so official
    checkpoints load with ``strict=True``. Dropout is omitted: these modules only run in eval.
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.lowering = "matmul"

    def separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, heads, N, C // heads]``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def recombine_heads(x: torch.Tensor) -> torch.Tensor:
        """``[B, heads, N, D]`` -> ``[B, N, heads * D]``."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.separate_heads(self.q_proj(q))
        k = self.separate_heads(self.k_proj(k))
        v = self.separate_heads(self.v_proj(v))
        out = attention(q, k, v, lowering=self.lowering)
        return self.out_proj(self.recombine_heads(out))


def set_attention_lowering(module: nn.Module, lowering: str) -> None:
    """Set how every attention layer inside ``module`` is lowered (see the module docstring)."""
    if lowering not in ATTENTION_LOWERINGS:
        raise ValueError(
            f"unknown attention lowering {lowering!r}; use one of {ATTENTION_LOWERINGS}"
        )
    for sub in module.modules():
        if hasattr(sub, "lowering"):
            setattr(sub, "lowering", lowering)  # noqa: B010 (nn.Module's __setattr__ typing)


NORM_LOWERINGS = ("reduce", "layernorm")


def set_norm_lowering(module: nn.Module, lowering: str) -> int:
    """Set how every ``LayerNorm2d`` inside ``module`` is lowered (``reduce``: SAM 2's formula,
    ``layernorm``: one ``LayerNormalization`` over the channels; see ``LayerNorm2d``); returns how
    many there are, so that a graph without any is known to have no ``layernorm`` form."""
    if lowering not in NORM_LOWERINGS:
        raise ValueError(f"unknown norm lowering {lowering!r}; use one of {NORM_LOWERINGS}")
    norms = [m for m in module.modules() if isinstance(m, LayerNorm2d)]
    for norm in norms:
        norm.channels_last = lowering == "layernorm"
    return len(norms)
