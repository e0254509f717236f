"""Convolutions that cuDNN may run slowly, rewritten as matrix products (the ``gemm`` graph form).

Why: on an NVIDIA H200 (onnxruntime-gpu 1.31.1, fp16 bundle) the memory encoder took 9.7 ms
per frame against PyTorch's 2 ms. ONNX Runtime hands every ``Conv`` to cuDNN, and the
convolutions of SAM 2.1 outside the image encoder are shapes cuDNN may serve badly — 7x7
depthwise filters over 256 channels (PyTorch runs its own depthwise kernel), strided filters over
1-16 input channels (no tensor-core layout fits them), 2x2 stride-2 transposed convolutions.
This form makes each a few large, regular matrix products that cuBLAS runs in any precision:

- **depthwise k x k, stride 1** (the fuser's ``dwconv``): a horizontal pass as one batched
  product with banded (Toeplitz) matrices gathered from the filter at run time
  (``[.., C, 1, Hp, Wp] x [C, kh, Wp, Wo]``), then the vertical sum of the kh shifted rows as a
  product with a constant 0/1 shift matrix. Needs static spatial sizes (read from shape
  inference); about 2 GFLOP per 64x64x256 layer, trivial for a GPU.
- **convolutions over at most ``MAX_IM2COL_CHANNELS`` input channels** (the mask downsampler's,
  the prompt encoder's mask downscaling): im2col with one strided ``Slice`` per filter tap (ends
  counted from the back, so dynamic spatial sizes work), then one product with the
  ``[C_out, kh*kw*C_in]`` filter.
- **transposed convolutions with kernel == stride** (the decoder's output upscaling): no
  overlap, so a product with the ``[C_out*kh*kw, C_in]`` filter followed by a pixel shuffle.

Numbers: every output is the same sum of the same products (zeros from the band and shift
matrices add exact zeros); only the summation order differs, as between two cuDNN algorithms.
On the CPU the fp32 form matches the main form to ~1e-6 (tests/test_conv_gemm.py); the
compiler checks it against PyTorch like every pass.

Measured on that H200: slower than the main form in every graph it applies to (memory encoder
10.5 vs 9.7 ms, image encoder 6.0 vs 5.5, mask decoder 3.3 vs 2.8), so cuDNN's convolutions
are not where the memory encoder's time goes, and no packaged target carries the form. It
stays a target option (``alternatives: [gemm]``; the runtime times it on the device and keeps
it only where it is faster) for GPUs and runtimes whose convolution kernels differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from samurai_onnx.compiler.passes.depthwise import rewrite_file

MAX_IM2COL_CHANNELS = 16  # im2col for convolutions over this many input channels or fewer
MAX_CONCAT_INPUTS = 32  # ONNX Runtime's CUDA Concat during CUDA-graph capture
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class _Conv:
    """One convolution the pass can rewrite, with what the rewrite needs to know."""

    node: onnx.NodeProto
    kind: str  # "banded" | "im2col" | "shuffle"
    weight: np.ndarray
    bias: np.ndarray | None
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    spatial: tuple[int, int] | None  # input H, W where shape inference knows them


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(attrs: dict[str, object], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = attrs.get(key, default)
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else default


def constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs, as arrays (weights come as either)."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def _spatial(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Static (H, W) of every 4-d value shape inference can size."""
    inferred = shape_inference.infer_shapes(model)
    out: dict[str, tuple[int, int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].HasField("dim_value") and dims[3].HasField("dim_value"):
            out[vi.name] = (int(dims[2].dim_value), int(dims[3].dim_value))
    return out


def _candidates(model: onnx.ModelProto) -> list[_Conv]:
    """The convolutions of ``model`` this pass rewrites, in graph order."""
    consts = constant_arrays(model)
    spatial = _spatial(model)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        weight = consts.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.ndim != 4 or weight.dtype != np.float32:
            continue
        bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            continue  # a computed bias: leave the node alone
        a = _attrs(node)
        ints = partial(_ints, a)
        kernel = ints("kernel_shape", tuple(weight.shape[2:]))
        group = int(a.get("group", 1))  # type: ignore[call-overload]
        if len(kernel) != 2 or ints("dilations", (1, 1)) != (1, 1):
            continue
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        pads = ints("pads", (0, 0, 0, 0))
        strides = ints("strides", (1, 1))
        pads4 = (pads[0], pads[1], pads[2], pads[3])
        k2, s2 = (kernel[0], kernel[1]), (strides[0], strides[1])
        hw = spatial.get(node.input[0])
        kind = None
        if node.op_type == "ConvTranspose":
            plain = not any(a.get(k) for k in ("output_padding", "output_shape"))
            if group == 1 and k2 == s2 and pads4 == (0, 0, 0, 0) and plain:
                kind = "shuffle"
        elif group > 1:
            depthwise = weight.shape[0] == group and weight.shape[1] == 1
            if depthwise and s2 == (1, 1) and hw is not None and max(k2) > 1:
                kind = "banded"
        elif weight.shape[1] <= MAX_IM2COL_CHANNELS:
            kind = "im2col"
        if kind is not None:
            found.append(_Conv(node, kind, weight, bias, k2, s2, pads4, hw))
    return found


def count_gemm_convs(model: onnx.ModelProto) -> int:
    """How many convolutions ``gemm_convs`` would rewrite (weights must be loaded)."""
    return len(_candidates(model))


class _Builder:
    """Adds the nodes and initializers of one rewrite under a unique prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}/{what}_{self._n}"

    def const(self, what: str, value: np.ndarray) -> str:
        name = self.name(what)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _pad(b: _Builder, x: str, pads: tuple[int, int, int, int]) -> str:
    if not any(pads):
        return x
    top, left, bottom, right = pads
    return b.op("Pad", [x, b.const("pads", _i64(0, 0, top, left, 0, 0, bottom, right))])


def _add_bias(b: _Builder, y: str, conv: _Conv, out: str) -> None:
    if conv.bias is None:
        b.op("Identity", [y], out)
    else:
        b.op("Add", [y, b.const("bias", conv.bias.reshape(-1, 1, 1).astype(np.float32))], out)


def _banded(b: _Builder, conv: _Conv, out: str) -> None:
    """Depthwise stride-1 convolution as two products (horizontal band, vertical shift)."""
    assert conv.spatial is not None
    (kh, kw), (top, left, bottom, right) = conv.kernel, conv.pads
    hp, wp = conv.spatial[0] + top + bottom, conv.spatial[1] + left + right
    ho, wo = hp - kh + 1, wp - kw + 1
    channels = conv.weight.shape[0]
    # the filter with a zero tap appended; index kw reads that zero outside the band
    taps = np.concatenate(
        [conv.weight[:, 0], np.zeros((channels, kh, 1), dtype=np.float32)], axis=2
    )
    p, q = np.arange(wp)[:, None], np.arange(wo)[None, :]
    index = np.where((p - q >= 0) & (p - q < kw), p - q, kw).astype(np.int64)  # [Wp, Wo]
    shift = np.zeros((ho, kh * hp), dtype=np.float32)  # out row y sums rows y+i of band i
    for i in range(kh):
        shift[np.arange(ho), i * hp + np.arange(ho) + i] = 1.0
    band = b.op("Gather", [b.const("taps", taps), b.const("band_index", index)], axis=2)
    xp = _pad(b, conv.node.input[0], conv.pads)
    rows = b.op("Unsqueeze", [xp, b.const("axes", _i64(2))])  # [B, C, 1, Hp, Wp]
    horizontal = b.op("MatMul", [rows, band])  # [B, C, kh, Hp, Wo]
    stacked = b.op("Reshape", [horizontal, b.const("shape", _i64(0, channels, kh * hp, wo))])
    _add_bias(b, b.op("MatMul", [b.const("shift", shift), stacked]), conv, out)


def _im2col(b: _Builder, conv: _Conv, out: str) -> None:
    """Convolution over few input channels: strided slices per tap, then one product."""
    (kh, kw), (sh, sw) = conv.kernel, conv.strides
    c_out, c_in = conv.weight.shape[:2]
    xp = _pad(b, conv.node.input[0], conv.pads)
    taps = []
    for i in range(kh):
        for j in range(kw):
            # ends counted from the back give every tap the same output size, static or not
            end_h = _INT64_MAX if i == kh - 1 else i - (kh - 1)
            end_w = _INT64_MAX if j == kw - 1 else j - (kw - 1)
            taps.append(
                b.op(
                    "Slice",
                    [
                        xp,
                        b.const("starts", _i64(i, j)),
                        b.const("ends", _i64(end_h, end_w)),
                        b.const("axes", _i64(2, 3)),
                        b.const("steps", _i64(sh, sw)),
                    ],
                )
            )
    cols = _concat(b, taps)  # [B, kh*kw*C_in, Ho, Wo]
    flat = b.op("Reshape", [cols, b.const("shape", _i64(0, kh * kw * c_in, -1))])
    # column (i*kw + j)*C_in + c of the filter matrix is tap (i, j) of input channel c
    matrix = conv.weight.transpose(0, 2, 3, 1).reshape(c_out, kh * kw * c_in)
    y = b.op("MatMul", [b.const("filter", np.ascontiguousarray(matrix)), flat])
    hw = b.op("Shape", [taps[0]], start=2)
    shape = b.op("Concat", [b.const("shape", _i64(0, c_out)), hw], axis=0)
    _add_bias(b, b.op("Reshape", [y, shape]), conv, out)


def _concat(b: _Builder, parts: list[str]) -> str:
    """Concat along channels in groups of at most ``MAX_CONCAT_INPUTS`` (ONNX Runtime's CUDA
    Concat refuses more inputs while capturing a CUDA graph: a 7x7 patch embedding has 49)."""
    while len(parts) > 1:
        parts = [
            parts[i] if len(parts[i : i + MAX_CONCAT_INPUTS]) == 1
            else b.op("Concat", parts[i : i + MAX_CONCAT_INPUTS], axis=1)
            for i in range(0, len(parts), MAX_CONCAT_INPUTS)
        ]  # fmt: skip
    return parts[0]


def _shuffle(b: _Builder, conv: _Conv, out: str) -> None:
    """Transposed convolution with kernel == stride: one product, then a pixel shuffle."""
    kh, kw = conv.kernel
    c_in, c_out = conv.weight.shape[:2]
    x = conv.node.input[0]
    matrix = conv.weight.transpose(1, 2, 3, 0).reshape(c_out * kh * kw, c_in)  # rows (o, i, j)
    flat = b.op("Reshape", [x, b.const("shape", _i64(0, c_in, -1))])
    y = b.op("MatMul", [b.const("filter", np.ascontiguousarray(matrix)), flat])
    hw = b.op("Shape", [x], start=2)
    split = b.op("Concat", [b.const("shape", _i64(0, c_out, kh, kw)), hw], axis=0)
    blocks = b.op("Transpose", [b.op("Reshape", [y, split])], perm=[0, 1, 4, 2, 5, 3])
    scaled = b.op("Mul", [hw, b.const("stride", _i64(kh, kw))])
    full = b.op("Concat", [b.const("shape", _i64(0, c_out)), scaled], axis=0)
    _add_bias(b, b.op("Reshape", [blocks, full]), conv, out)


_REWRITES = {"banded": _banded, "im2col": _im2col, "shuffle": _shuffle}


def gemm_convs(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every convolution of ``model`` that ``_candidates`` selects; returns
    how many. Each node is replaced where it stood (the graph stays topologically sorted)."""
    convs = {id(c.node): c for c in _candidates(model)}
    if not convs:
        return 0
    kept: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for index, node in enumerate(model.graph.node):
        conv = convs.get(id(node))
        if conv is None:
            kept.append(node)
            continue
        b = _Builder(f"{node.name or node.op_type}/gemm{index}")
        _REWRITES[conv.kind](b, conv, node.output[0])
        kept.extend(b.nodes)
        inits.extend(b.inits)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(inits)
    _drop_unused(model)
    return len(convs)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove the replaced filters (initializers and Constant nodes nothing reads any more)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep_inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep_inits)
    keep_nodes = [
        n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] not in used)
    ]
    del model.graph.node[:]
    model.graph.node.extend(keep_nodes)


def gemm_file(src: Path, out: Path) -> Path:
    """The compiler pass: ``src`` with its slow-on-cuDNN convolutions as products, into ``out``."""
    return rewrite_file(src, out, gemm_convs, "convolution for the gemm form")


__all__ = ["MAX_IM2COL_CHANNELS", "count_gemm_convs", "gemm_convs", "gemm_file"]
