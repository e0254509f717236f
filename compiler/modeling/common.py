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
- ``"blocked"``: ``"matmul"`` for ``QUERY_BLOCK`` queries at a time (Slice, MatMul/Softmax/MatMul
  per block, Concat), the last block taking the rest; attentions with fewer queries are plain
  ``"matmul"``. The same numbers (every query's row is computed alone either way). Why: written
  out, memory attention's cross-attention materializes a 4096 x 28736 score matrix (470 MB per
  object); a block's is 118 MB, and on a CPU the product, softmax and value product then work on
  a block still near the caches (measured on an AVX2 EPYC, 2 threads, ONNX Runtime: memory
  attention 3.56 s against 4.19 s fused and 4.51 s unblocked). Not a manifest choice: the
  ``blocked`` graph form, which targets list as an alternative to their fused attention, or the
  main form of targets without fused attention that set ``attention_blocks``.
- ``"int8"``: ``"matmul"`` with the query-key product in integers (``_int8_attention``): the
  queries quantized to uint8 with one scale per call (``DynamicQuantizeLinear``), the keys to
  int8 with one symmetric scale, ONNX Runtime's ``com.microsoft.MatMulIntegerToFloat``, then
  softmax and the value product in fp32, 1024 queries at a time. ONNX Runtime only (CPU).
  Not exact (an int8 target's tolerance), and the scales are per call, so objects tracked in
  one batch share them. Why: ONNX Runtime's CPU attention kernels are fp32 only, and the score
  product is most of memory attention's work; with VNNI the integer product runs at ~2x the
  fp32 rate (README "Speed"). PyTorch computes the same integers, so eager and ONNX agree to
  fp32 rounding.
- ``"int8u8"``: ``"int8"`` with the integer keys stored as uint8 shifted by 128 (zero point 128):
  the same integers and the same numbers, computed by ONNX Runtime's uint8 x uint8 kernels. Why:
  on x86 CPUs without VNNI or AMX its uint8 x int8 kernel adds pairs of products in 16 bits with
  saturation (``"int8"``'s scores are then not the checked integers), while its uint8 x uint8
  kernel widens to 16 bits first and is exact everywhere; where VNNI or AMX run ``"int8"``
  exactly they run it faster (MLAS has no AVX512-VNNI or AMX kernel for uint8 x uint8). Not a
  manifest choice either: the ``u8attn`` graph form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_LOWERINGS = ("matmul", "sdpa", "ort_mha")  # what model manifests may name
INT8_LOWERING = "int8"  # not a manifest choice: the int8attn graph form (int8 targets only)
UINT8_KEYS_LOWERING = "int8u8"  # not a manifest choice: the u8attn graph form (int8 targets only)
BLOCKED_LOWERING = "blocked"  # not a manifest choice: the blocked graph form
_LOWERINGS = (*ATTENTION_LOWERINGS, INT8_LOWERING, UINT8_KEYS_LOWERING, BLOCKED_LOWERING)


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
    if lowering not in ("matmul", INT8_LOWERING, UINT8_KEYS_LOWERING, BLOCKED_LOWERING):
        raise ValueError(f"unknown attention lowering {lowering!r}; use one of {_LOWERINGS}")
    scale = 1.0 / math.sqrt(q.shape[-1])
    q = q * scale
    if lowering == "matmul":
        return _scores_times_values(q, k.transpose(-2, -1), v, mask)
    # the traced query count only decides where the graph's blocks start (the last block takes
    # whatever is left), so the graph stays right for any count
    blocks = max(1, -(-int(q.shape[-2]) // QUERY_BLOCK))
    if lowering in (INT8_LOWERING, UINT8_KEYS_LOWERING):
        unsigned = int(lowering == UINT8_KEYS_LOWERING)
        return _int8_attention(q, k, v, mask, QUERY_BLOCK, blocks, unsigned)
    kt = k.transpose(-2, -1)
    if blocks == 1:
        return _scores_times_values(q, kt, v, mask)
    rows = _query_blocks(q, QUERY_BLOCK, blocks)
    return torch.cat([_scores_times_values(r, kt, v, mask) for r in rows], dim=-2)


def _query_blocks(q: torch.Tensor, block: int, blocks: int) -> list[torch.Tensor]:
    """``q``'s queries (axis -2) in ``blocks`` blocks of ``block``, the last taking the rest."""
    return [
        q[..., i * block :, :] if i == blocks - 1 else q[..., i * block : (i + 1) * block, :]
        for i in range(blocks)
    ]


def _scores_times_values(
    q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``softmax(q kt + mask) v`` for queries already scaled by ``1/sqrt(D)``."""
    logits = torch.matmul(q, kt)
    if mask is not None:
        logits = logits + mask
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    return _scores_times_values(q * scale, k.transpose(-2, -1), v, None)


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


# The integer product is computed in fp32 by PyTorch: exact while every partial sum stays below
# 2**24, i.e. for head dims up to 2**24 / (255 * 127) = 518 (SAM 2.1's largest is 256).
_INT8_EXACT_DIM = 518
_TINY = 1e-30  # keeps an all-zero key tensor's scale positive (no 0/0 in QuantizeLinear)


def _dynamic_uint8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX ``DynamicQuantizeLinear``: ``(x_q - zero_point, scale)`` with ``x_q`` uint8."""
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero tensor
    zero = torch.clamp(torch.round(-lo / scale), 0, 255)
    return torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero, scale


def _symmetric_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 with one symmetric scale ``max|x| / 127`` (the graph's ``QuantizeLinear``)."""
    scale = torch.clamp(x.abs().max(), min=_TINY) / 127.0
    return torch.clamp(torch.round(x / scale), -127, 127), scale


# Queries per score block: the int8 and blocked forms materialize their scores (no fused kernel),
# so they compute them for this many queries at a time, which bounds the block to 1024 x keys
# floats per object (118 MB for memory attention's 28,736 keys instead of 470 MB for all 4096
# queries). Exact: the int8 form quantizes its queries once, before they are split.
QUERY_BLOCK = 1024


def int8_operands(
    q: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The integer queries ``[..., Nq, D]`` and transposed keys ``[..., D, Nk]`` (as floats) and
    the scale of their product: ``q k^T ~= (qi @ kt) * scale`` (see ``"int8"``)."""
    if q.shape[-1] > _INT8_EXACT_DIM:
        raise ValueError(f"int8 attention supports head dims up to {_INT8_EXACT_DIM}")
    qi, qs = _dynamic_uint8(q)
    ki, ks = _symmetric_int8(k)
    return qi, ki.transpose(-2, -1), qs * ks


@torch.library.custom_op("samurai_onnx::int8_attention", mutates_args=())
def _int8_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    chunk: int,
    blocks: int,
    unsigned_keys: int,
) -> torch.Tensor:
    """``softmax(q k^T + mask) v`` with integer scores (``int8_operands``) in ``blocks`` blocks
    of ``chunk`` queries, the last taking the rest (``q`` already scaled by ``1/sqrt(D)``).
    ``unsigned_keys`` (1: ``"int8u8"``) changes only how the graph stores the keys, not the
    integers, so the eager computation is the same for both."""
    qi, kt, scale = int8_operands(q, k)
    outs = []
    for rows in _query_blocks(qi, chunk, blocks):
        logits = torch.matmul(rows, kt) * scale
        if mask is not None:
            logits = logits + mask
        outs.append(torch.matmul(torch.softmax(logits, dim=-1), v))
    return torch.cat(outs, dim=-2)


# shapes for tracing: the queries' with the values' width
_int8_attention.register_fake(lambda q, k, v, *_: q.new_empty(*q.shape[:-1], v.shape[-1]))


def _int8_attention_symbolic(
    g: Any, q: Any, k: Any, v: Any, mask: Any, chunk: Any, blocks: Any, unsigned_keys: Any
) -> Any:
    """DynamicQuantizeLinear (queries), ReduceMax/QuantizeLinear (keys) once; then per block of
    queries (a Slice) ONNX Runtime's ``com.microsoft.MatMulIntegerToFloat`` (the integer product
    and both scales), the mask, Softmax and the value MatMul; the blocks concatenated. Unsigned
    keys: QuantizeLinear to uint8 with zero point 128 (``round(k / s) + 128`` in [1, 255]) and
    the same zero point given to MatMulIntegerToFloat, which subtracts it again."""
    from torch.onnx import symbolic_helper

    rank = symbolic_helper._get_tensor_rank(q)
    if rank is None:
        raise ValueError("int8 attention needs queries of known rank")
    step = int(symbolic_helper._maybe_get_const(chunk, "i"))
    count = int(symbolic_helper._maybe_get_const(blocks, "i"))
    unsigned = bool(symbolic_helper._maybe_get_const(unsigned_keys, "i"))

    def const(value: Any, dtype: torch.dtype = torch.int64) -> Any:
        return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

    qq, qs, qz = g.op("DynamicQuantizeLinear", q, outputs=3)
    top = g.op("ReduceMax", g.op("Abs", k), keepdims_i=0)
    ks = g.op("Div", g.op("Max", top, const(_TINY, torch.float32)), const(127.0, torch.float32))
    kz = const(128, torch.uint8) if unsigned else const(0, torch.int8)
    kq = g.op("QuantizeLinear", k, ks, kz)
    kt = g.op("Transpose", kq, perm_i=[*range(rank - 2), rank - 1, rank - 2])
    outs = []
    for i in range(count):
        end = 2**62 if i == count - 1 else (i + 1) * step  # the last block: the rest
        block = (
            qq if count == 1
            else g.op("Slice", qq, const([i * step]), const([end]), const([rank - 2]))
        )  # fmt: skip
        # (block - qz) @ kt * qs * ks in one kernel (ONNX Runtime's own fusion of MatMulInteger,
        # Cast and Mul does not fire behind the Slice: the blocks then took 1.44 s, not 1.19 s)
        zeros = (qz, kz) if unsigned else (qz,)
        logits = g.op("com.microsoft::MatMulIntegerToFloat", block, kt, qs, ks, *zeros)
        if not symbolic_helper._is_none(mask):
            logits = g.op("Add", logits, mask)
        outs.append(g.op("MatMul", g.op("Softmax", logits, axis_i=-1), v))
    return outs[0] if count == 1 else g.op("Concat", *outs, axis_i=rank - 2)


torch.onnx.register_custom_op_symbolic(
    "samurai_onnx::int8_attention", _int8_attention_symbolic, 1
)


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
    if lowering not in _LOWERINGS:
        raise ValueError(f"unknown attention lowering {lowering!r}; use one of {_LOWERINGS}")
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
