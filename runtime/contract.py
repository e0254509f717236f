"""The graph contract: one typed definition of every graph's inputs and outputs.

Each graph of a bundle is described once here, with the dtype and the shape of every input and
output. Shapes are written with the model's geometry resolved (``256`` channels, a ``64 x 64``
feature grid) and named symbolic axes for what varies at run time (``objects``, ``memories``,
``height`` ...). Everything that needs a graph's I/O derives it from here: the compiler (example
inputs for tracing, dynamic axes, output shapes), the bundle's recorded signature, the load-time
check of each ONNX file against the contract, the benchmark's feeds and the runtime's calls. The
model-independent parts are what optimum's ``OnnxConfig`` keeps per architecture.

The graphs (``B`` objects tracked together, ``S`` memory slots and ``P`` pointer slots per object,
``N`` memories and ``Q`` pointers attended to, ``K`` prompt points, ``C`` channels, ``F`` feature
grid, ``L`` low-res mask size):

- ``preprocess``: the video frame, uint8 ``[H, W, 3]`` RGB -> the normalised model input, as
  SAM 2's loader computes it (PIL's bicubic resize to ``image_size``, /255, ImageNet mean/std);
- ``image_encoder``: image -> high-res features (``conv_s0``/``conv_s1`` applied), features and
  their position encoding;
- ``memory_attention``: the frame's features (batch 1, shared by all objects) attend, per object,
  to the memories and object pointers picked by index out of device-resident pools;
- ``mask_decoder``: prompt encoder + mask decoder for ``B`` objects: four candidate masks, their
  IoU predictions, boxes and object pointers, the object score and the single mask's stability;
- ``memory_encoder``: the chosen candidate of each object (picked in the graph) -> its memory and
  pointer, written into their slots of the pools, which come back updated (the runtime ping-pongs
  two buffers);
- ``postprocess``: low-res mask logits -> the mask at video size and its box;
- ``mask_prompt``: a mask prompt (0/1 at video size) -> the decoder's mask input and the
  prompted frame's low-res mask logits, as SAM 2's ``add_new_mask`` / ``_use_mask_as_output``.

A static-shape variant (TensorRT, ORT Mobile) gives ``memory_attention`` fixed ``N = S`` and
``Q = P`` slots with ``memory_valid`` / ``ptr_valid`` masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# ONNX Runtime's names for tensor element types, by our dtype names.
ORT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "uint8": "tensor(uint8)",
    "bool": "tensor(bool)",
}
DTYPES = tuple(ORT_TYPES)

Dim = int | str


class ContractError(ValueError):
    """A graph (or its recorded signature) that does not match the contract."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints, or names of dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape for the given sizes of the named axes."""
        try:
            return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)
        except KeyError as exc:
            raise ContractError(f"{self.name}: no size given for axis {exc.args[0]!r}") from None

    def mismatch(self, dtype: str, shape: Sequence[Any]) -> str | None:
        """Why a tensor of ``dtype`` / ``shape`` (ints, names or None) cannot be this one, or None.

        A named axis matches anything (ONNX files name dynamic axes as they like); a fixed size
        must match exactly, and so must the rank and the dtype.
        """
        if dtype != self.dtype:
            return f"{self.name} is {dtype}, the contract says {self.dtype}"
        if len(shape) != len(self.shape):
            return f"{self.name} has rank {len(shape)}, the contract says {list(self.shape)}"
        for want, got in zip(self.shape, shape, strict=True):
            if isinstance(want, int) and isinstance(got, int) and want != got:
                return f"{self.name} has shape {list(shape)}, the contract says {list(self.shape)}"
            if isinstance(want, int) and not isinstance(got, int):
                return f"{self.name} has a dynamic axis where the contract fixes {want}"
        return None


@dataclass(frozen=True)
class GraphContract:
    """A graph's inputs and outputs, in the order the ONNX file declares them."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, self.name)

    def with_fixed(self, dims: Mapping[str, int]) -> GraphContract:
        """This contract with the named axes in ``dims`` fixed to those sizes (e.g. a batch of 1
        for engines or deployments without dynamic batches)."""

        def fix(spec: TensorSpec) -> TensorSpec:
            shape = tuple(dims.get(d, d) if isinstance(d, str) else d for d in spec.shape)
            return TensorSpec(spec.name, spec.dtype, shape)

        return GraphContract(
            self.name, tuple(fix(t) for t in self.inputs), tuple(fix(t) for t in self.outputs)
        )

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes``: every named axis of every tensor."""
        axes: dict[str, dict[int, str]] = {}
        for spec in (*self.inputs, *self.outputs):
            named = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            if named:
                axes[spec.name] = named
        return axes

    def check(
        self,
        inputs: Sequence[tuple[str, str, Sequence[Any]]],
        outputs: Sequence[tuple[str, str, Sequence[Any]]],
    ) -> None:
        """Raise ``ContractError`` unless (name, dtype, shape) lists match the contract.

        Why: a bundle is untrusted. Two graphs swapped in ``bundle.yaml`` with consistent hashes,
        or a graph from another build, would otherwise fail deep inside a run, or worse, run.
        """
        for kind, want, got in (
            ("inputs", self.inputs, inputs),
            ("outputs", self.outputs, outputs),
        ):
            names = [g[0] for g in got]
            if names != [w.name for w in want]:
                raise ContractError(
                    f"{self.name}: {kind} are {names}, the contract says {[w.name for w in want]}"
                )
            for spec, (_, dtype, shape) in zip(want, got, strict=True):
                problem = spec.mismatch(dtype, shape)
                if problem:
                    raise ContractError(f"{self.name}: {problem}")


def _find(specs: tuple[TensorSpec, ...], name: str, graph: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise ContractError(f"{graph} has no tensor {name!r}")


@dataclass(frozen=True)
class Geometry:
    """The model sizes the contract depends on (read-only: they follow from the model config)."""

    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    feat_size: int = 64
    low_res_mask_size: int = 256
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16

    @property
    def memory_slots(self) -> int:
        """Memory slots per object: the conditioning frame + ``num_maskmem - 1`` past frames."""
        return self.num_maskmem

    @property
    def pointer_slots(self) -> int:
        """Pointer slots per object: the conditioning frame + ``max_obj_ptrs - 1`` past frames."""
        return self.max_obj_ptrs_in_encoder


GRAPHS = (
    "preprocess",
    "image_encoder",
    "memory_attention",
    "mask_decoder",
    "memory_encoder",
    "postprocess",
    "mask_prompt",
)
# The graphs traced from SAM 2.1's modules; the others are written in ONNX operators directly
# (mask_prompt holds one small convolution of the model's).
MODEL_GRAPHS = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")
# The batch axes: fixed to 1 in bundles built without dynamic batches.
BATCH_AXES = {"batch": 1, "objects": 1, "embed_batch": 1}


def contract(name: str, geo: Geometry, *, static: bool = False) -> GraphContract:
    """The contract of graph ``name`` for a model of geometry ``geo``.

    ``static`` (memory_attention only) fixes the attended memories and pointers to the slot
    counts and adds their validity masks, for engines that need static shapes.
    """
    s, c, m, f, low = geo.image_size, geo.d_model, geo.mem_dim, geo.feat_size, geo.low_res_mask_size
    t = TensorSpec
    features = (
        t("high_res_feat_s0", "float32", (1, c // 8, 4 * f, 4 * f)),
        t("high_res_feat_s1", "float32", (1, c // 4, 2 * f, 2 * f)),
    )
    frame_feats = t("vision_features", "float32", (1, c, f, f))
    pools = (
        t("memory_pool", "float32", ("memory_slots", m, f, f)),
        t("ptr_pool", "float32", ("ptr_slots", c)),
    )
    if name == "preprocess":
        return GraphContract(
            name,
            (t("frame", "uint8", ("height", "width", 3)),),
            (t("image", "float32", (1, 3, s, s)),),
        )
    if name == "image_encoder":
        return GraphContract(
            name,
            (t("image", "float32", ("batch", 3, s, s)),),
            (
                t("high_res_feat_s0", "float32", ("batch", c // 8, 4 * f, 4 * f)),
                t("high_res_feat_s1", "float32", ("batch", c // 4, 2 * f, 2 * f)),
                t("vision_features", "float32", ("batch", c, f, f)),
                t("vision_pos_enc", "float32", ("batch", c, f, f)),
            ),
        )
    if name == "memory_attention":
        n: Dim = geo.memory_slots if static else "memories"
        q: Dim = geo.pointer_slots if static else "pointers"
        inputs = [
            frame_feats,
            t("vision_pos_enc", "float32", (1, c, f, f)),
            pools[0],
            t("memory_index", "int64", ("objects", n)),
            t("memory_tpos_index", "int64", ("objects", n)),
            pools[1],
            t("ptr_index", "int64", ("objects", q)),
            t("ptr_offsets", "float32", ("objects", q)),
        ]
        if static:
            inputs.insert(5, t("memory_valid", "float32", ("objects", n)))
            inputs.append(t("ptr_valid", "float32", ("objects", q)))
        return GraphContract(
            name, tuple(inputs), (t("conditioned_features", "float32", ("objects", c, f, f)),)
        )
    if name == "mask_decoder":
        return GraphContract(
            name,
            (
                t("image_embed", "float32", ("embed_batch", c, f, f)),
                t("add_no_mem_embed", "float32", ("objects",)),
                *features,
                t("point_coords", "float32", ("objects", "points", 2)),
                t("point_labels", "float32", ("objects", "points")),
                t("mask_input", "float32", ("objects", 1, low, low)),
                t("has_mask_input", "float32", ("objects",)),
            ),
            (
                t("masks", "float32", ("objects", 4, low, low)),
                t("iou_predictions", "float32", ("objects", 4)),
                t("object_score_logits", "float32", ("objects", 1)),
                t("obj_ptr", "float32", ("objects", 4, c)),
                t("mask_boxes", "float32", ("objects", 4, 4)),
                t("stability_score", "float32", ("objects", 1)),
            ),
        )
    if name == "memory_encoder":
        return GraphContract(
            name,
            (
                frame_feats,
                t("masks", "float32", ("objects", "candidates", low, low)),
                t("candidate", "int64", ("objects",)),
                t("object_score_logits", "float32", ("objects", 1)),
                t("binarize", "float32", ("objects",)),
                t("obj_ptr", "float32", ("objects", "ptr_candidates", c)),
                t("ptr_candidate", "int64", ("objects",)),
                pools[0],
                t("memory_slot", "int64", ("objects",)),
                pools[1],
                t("ptr_slot", "int64", ("objects",)),
            ),
            (
                t("memory_pool_out", "float32", ("memory_slots", m, f, f)),
                t("ptr_pool_out", "float32", ("ptr_slots", c)),
            ),
        )
    if name == "postprocess":
        return GraphContract(
            name,
            (
                t("mask_logits", "float32", ("objects", 1, low, low)),
                t("video_size", "int64", (2,)),
            ),
            (
                t("video_masks", "bool", ("objects", "height", "width")),
                t("video_boxes", "int64", ("objects", 4)),
            ),
        )
    if name == "mask_prompt":
        return GraphContract(
            name,
            (t("mask", "float32", ("objects", 1, "mask_height", "mask_width")),),
            (
                t("mask_input", "float32", ("objects", 1, low, low)),
                t("low_res_masks", "float32", ("objects", 1, low, low)),
            ),
        )
    raise ContractError(f"unknown graph {name!r}; known: {', '.join(GRAPHS)}")


def contracts(geo: Geometry, *, static: bool = False) -> dict[str, GraphContract]:
    """Every graph's contract for ``geo`` (``static`` as in :func:`contract`)."""
    return {name: contract(name, geo, static=static) for name in GRAPHS}


def example_feeds(
    spec: GraphContract, geo: Geometry, dims: Mapping[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs that satisfy ``spec`` at the given axis sizes, in the contract's order.

    Used to trace and check graphs (compiler) and to time them (bench). Features are unit
    normals, mask logits have a std of 4 and object scores of 2, like real activations; indices
    point at distinct, valid slots of each object's block of the pools; half the objects get the
    0/1 flags set.
    """
    rng = np.random.default_rng(seed)
    b = int(dims.get("objects", 1))
    per = {"memory": geo.memory_slots, "ptr": geo.pointer_slots}
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        kind = t.name.split("_")[0]
        if t.dtype == "uint8":
            out[t.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif t.name in ("memory_index", "ptr_index"):
            rows = [rng.permutation(per[kind])[: shape[1]] + i * per[kind] for i in range(b)]
            out[t.name] = np.stack(rows).astype(np.int64)
        elif t.name in ("memory_slot", "ptr_slot"):
            out[t.name] = (np.arange(b) * per[kind] + 1).astype(np.int64)
        elif t.name == "memory_tpos_index":
            out[t.name] = rng.integers(0, geo.num_maskmem, shape).astype(np.int64)
        elif t.name in ("candidate", "ptr_candidate"):
            out[t.name] = rng.integers(0, 4, shape).astype(np.int64)
        elif t.name in ("memory_valid", "ptr_valid"):
            real = int(dims.get("valid_" + kind, shape[1]))
            out[t.name] = np.broadcast_to(np.arange(shape[1]) < real, shape).astype(np.float32)
        elif t.name == "point_labels":
            labels = np.array([2.0, 3.0, 1.0, 0.0, -1.0], np.float32)[: shape[1]]
            out[t.name] = np.broadcast_to(labels, shape).astype(np.float32)
        elif t.name == "point_coords":
            out[t.name] = (rng.random(shape) * geo.image_size).astype(np.float32)
        elif t.name in ("add_no_mem_embed", "has_mask_input", "binarize"):
            out[t.name] = (np.arange(shape[0]) % 2).astype(np.float32)
        elif t.name == "ptr_offsets":
            out[t.name] = (rng.random(shape) * 2 - 1).astype(np.float32)
        elif t.name == "mask":
            out[t.name] = (rng.random(shape) > 0.7).astype(np.float32)
        elif t.name == "video_size":
            out[t.name] = np.array([dims.get("height", 720), dims.get("width", 1280)], np.int64)
        else:
            std = {"masks": 4.0, "mask_input": 4.0, "mask_logits": 4.0}.get(t.name, 1.0)
            std = 2.0 if t.name == "object_score_logits" else std
            out[t.name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return out


def ort_signature(session: Any) -> tuple[list[tuple[str, str, list[Any]]], ...]:
    """(name, dtype, shape) of an ONNX Runtime session's inputs and outputs, dtypes our names."""
    names = {v: k for k, v in ORT_TYPES.items()}

    def rows(values: Any) -> list[tuple[str, str, list[Any]]]:
        return [(v.name, names.get(v.type, v.type), list(v.shape)) for v in values]

    return rows(session.get_inputs()), rows(session.get_outputs())


def steady_state_feeds(name: str, objects: int, geo: Geometry, static: bool) -> dict[str, np.ndarray]:
    """Feeds for graph ``name`` at ``objects`` objects with a full bank (all memories and
    pointers), a 720p frame: what a video's steady state runs (timing: bench, form choice)."""
    s, p = geo.memory_slots, geo.pointer_slots
    b = objects
    dims = {
        "batch": b, "objects": b, "embed_batch": b, "memories": s, "pointers": p, "points": 1,
        "candidates": 4, "ptr_candidates": 4, "memory_slots": b * s, "ptr_slots": b * p,
        "height": 720, "width": 1280, "mask_height": 720, "mask_width": 1280,
    }  # fmt: skip
    return example_feeds(contract(name, geo, static=static), geo, dims)
