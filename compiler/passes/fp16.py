"""Pass 3: weights and compute in float16, inputs and outputs kept fp32.

Keeping the graph I/O in fp32 means the tracker feeds the same arrays to every bundle; Resize,
the mask-box ArgMax chain and other ops that are unsafe or unsupported in fp16 stay in fp32.

Why ONNX Runtime's converter (``onnxruntime.transformers.float16``) and not onnxconverter-common's:
the rewritten ``convert_float_to_float16`` of onnxconverter-common 1.16 retypes the outputs of
``Cast(to=float)`` nodes to float16 without changing the nodes, and inserts no cast between two
adjacent fp32-only ops (``Where`` -> ``Resize`` in the mask decoder), so ONNX Runtime refuses to
load the graphs it writes. ONNX Runtime's converter (the algorithm onnxconverter-common used
before) handles both; it appends its I/O casts at the end, hence the topological sort.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx

# Ops left in fp32: Resize/ArgMax feed the discrete mask boxes; Range/Gather index maths; Sin/Cos
# of the temporal encodings lose precision at large frame offsets in fp16; GatherElements picks
# the chosen mask's logits for the memory encoder, whose binarization (logit > 0) must see them
# unrounded, or pixels within an fp16 step of 0 flip.
# MultiHeadAttention (the fused lowering) runs in fp16: ONNX Runtime has fp16 kernels for it on
# CUDA (flash / memory-efficient attention) and on the CPU (used by the check after this pass).
FP32_OPS = [
    "Resize",
    "ArgMax",
    "Range",
    "Sin",
    "Cos",
    "Greater",
    "Where",
    "ReduceMax",
    "GatherElements",
]


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in available})
            raise RuntimeError(f"fp16 conversion left a graph with unproduced inputs {missing[:5]}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes).

    Why: onnxruntime(-gpu) 1.31's converter inserts the same ``<x>_cast_to_fp32`` Cast once per
    fp32-only consumer of ``x``, so the graph names one output twice and onnx.checker rejects it
    (not SSA). The copies are identical, so keeping the first changes nothing; two different
    nodes writing one name would be a real converter bug and is reported as such.
    """
    producers: dict[str, bytes] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        blob = node.SerializeToString(deterministic=True)
        clashes = [producers[o] for o in node.output if o in producers]
        if clashes:
            if all(c == blob for c in clashes) and len(clashes) == len(node.output):
                continue
            raise RuntimeError(
                f"fp16 conversion wrote output {node.output[0]!r} from two different nodes"
            )
        producers.update(dict.fromkeys(node.output, blob))
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _fp32_values(graph: onnx.GraphProto) -> set[str]:
    """Names of the fp32 tensors of ``graph`` (its inputs, and what type inference can tell)."""
    fp32 = onnx.TensorProto.FLOAT
    names = {i.name for i in graph.input if i.type.tensor_type.elem_type == fp32}
    try:
        inferred = onnx.shape_inference.infer_shapes(onnx.helper.make_model(graph)).graph
    except Exception:  # contrib ops it cannot type: the inputs are what is certain
        return names
    return names | {v.name for v in inferred.value_info if v.type.tensor_type.elem_type == fp32}


def _skip_round_trips(graph: onnx.GraphProto) -> None:
    """Feed fp32-only nodes fp32 values themselves, not copies rounded to fp16 and back.

    The converter casts every fp32 value that fp16 nodes may read to fp16 (graph inputs with
    ``keep_io_types``; the outputs of nodes left in fp32), and then, for each consumer left in
    fp32, casts it back: such a consumer sees fp16-rounded values. For the memory encoder's mask
    logits that rounding moves logits near 0 across the binarization threshold; for the pools'
    slot writes it would round every stored memory each frame. A round trip whose end is a graph
    output becomes the fp32 producer writing that output directly.
    """
    fp32 = _fp32_values(graph)
    to_fp16 = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Cast" and n.input[0] in fp32 and _cast_to(n) == onnx.TensorProto.FLOAT16
    }
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}  # the end of a round trip -> its fp32 start
    produce: dict[str, str] = {}  # an fp32 start -> the graph output it is written as
    kept = []
    for node in graph.node:
        back = _cast_to(node) == onnx.TensorProto.FLOAT
        if node.op_type == "Cast" and node.input[0] in to_fp16 and back:
            start, end = to_fp16[node.input[0]], node.output[0]
            if end not in outputs:
                rename[end] = start
                continue
            if start not in inputs and start not in outputs and start not in produce:
                produce[start] = end
                continue
        kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            name = rename.get(name, name)
            node.input[i] = produce.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = produce.get(name, name)
    used = {name for node in kept for name in node.input} | outputs
    kept = [n for n in kept if not (n.op_type == "Cast" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    stale = set(rename) | set(produce)
    infos = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), -1)


def convert_fp16(src: Path, out: Path, fp32_scopes: Sequence[str] = ()) -> Path:
    """``src`` in fp16 with fp32 I/O, the ops of ``FP32_OPS`` and the nodes whose names start
    with one of ``fp32_scopes`` (``graphs.FP32_SCOPES``) left in fp32."""
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    kept = [n.name for n in model.graph.node if n.name.startswith(tuple(fp32_scopes))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clipped to the fp16 range
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=kept or None
        )
    _drop_duplicate_nodes(converted.graph)
    _skip_round_trips(converted.graph)
    _sort_topologically(converted.graph)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(out))
    return out
