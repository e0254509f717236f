"""The two processing graphs, written directly in ONNX operators (they hold no weights).

``preprocess``: uint8 ``[H, W, 3]`` RGB frame -> normalised ``[1, 3, S, S]`` float32 image, as
SAM 2's loader makes it with PIL: ``Image.resize((S, S))`` (bicubic, a = -0.5, antialiased when
shrinking), then ``/ 255``, minus the mean, over the std. PIL resizes 8-bit images in two passes,
horizontal first, each rounded to uint8, with the kernel window clipped to the image and its
weights renormalised; ONNX ``Resize`` with ``antialias=1``, ``exclude_outside=1`` and
``cubic_coeff_a=-0.5`` is that kernel, so the graph runs one Resize per axis and rounds between
them. What remains is PIL's 22-bit fixed-point weights: on real frames a handful of pixels per
million differ by one level (measured: 10 of 3.1M on a 1280x720 frame). The normalisation is a
lookup table of exactly the host's float32 values, so it adds no error.

``postprocess``: low-res mask logits ``[B, 1, L, L]`` -> the masks at video size (bilinear,
``align_corners=False`` like SAM 2) thresholded at 0, and each mask's box ``(x0, y0, x1, y1)``
from the min/max occupied row and column (-1s for an empty mask). ONNX Runtime's bilinear resize
rounds differently from PyTorch's FMA-based kernel by up to ~1e-5 on the logits, which flips a
pixel only where a logit sits within 1e-5 of 0.

Opset 18 (``antialias`` needs it); both graphs are checked against the host implementations in
``runtime/preprocess.py`` when they are built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samurai_onnx.runtime.bundle import TrackerSettings
from samurai_onnx.runtime.contract import GraphContract, contract
from samurai_onnx.runtime.engine import Engine

OPSET = 18
_ONNX_TYPES = {
    "float32": TensorProto.FLOAT,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}


def _value_info(spec_list: tuple, prefix: str = "") -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info(prefix + s.name, _ONNX_TYPES[s.dtype], list(s.shape))
        for s in spec_list
    ]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # what ONNX Runtime 1.16+ reads
    model.producer_name = "samurai-onnx"
    onnx.checker.check_model(model, full_check=True)
    return model


def normalisation_table(settings: TrackerSettings) -> np.ndarray:
    """``[3 * 256]`` float32: channel c, level v -> ``(float32(v / 255) - mean_c) / std_c``.

    The same float operations, in the same order, as ``runtime.preprocess.preprocess_frame``.
    """
    levels = (np.arange(256) / 255.0).astype(np.float32)
    mean = np.asarray(settings.image_mean, np.float32)[:, None]
    std = np.asarray(settings.image_std, np.float32)[:, None]
    return ((levels[None, :] - mean) / std).astype(np.float32).reshape(-1)


def build_preprocess(settings: TrackerSettings, out: Path) -> Path:
    """Write the preprocess graph for ``settings`` (image size, mean, std) to ``out``."""
    spec: GraphContract = contract("preprocess", settings.geometry)
    s = settings.image_size
    resize: dict[str, Any] = {
        "mode": "cubic",
        "cubic_coeff_a": -0.5,
        "antialias": 1,
        "exclude_outside": 1,
        "coordinate_transformation_mode": "half_pixel",
    }
    nodes = [
        helper.make_node("Cast", ["frame"], ["f32"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f32"], ["chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "axis0"], ["nchw"]),
        helper.make_node("Shape", ["nchw"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero1", "three1", "axis0"], ["n_c_h"]),
        helper.make_node("Concat", ["n_c_h", "size1"], ["sizes_w"], axis=0),
        helper.make_node("Resize", ["nchw", "", "", "sizes_w"], ["wide"], **resize),
        *_round_clip("wide", "wide8"),
        helper.make_node("Resize", ["wide8", "", "", "sizes_hw"], ["full"], **resize),
        *_round_clip("full", "full8"),
        helper.make_node("Cast", ["full8"], ["levels"], to=TensorProto.INT64),
        helper.make_node("Add", ["levels", "channel_offsets"], ["lookup"]),
        helper.make_node("Gather", ["table", "lookup"], ["image"], axis=0),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([3], np.int64), "three1"),
        numpy_helper.from_array(np.array([s], np.int64), "size1"),
        numpy_helper.from_array(np.array([1, 3, s, s], np.int64), "sizes_hw"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(255.0, np.float32), "hi"),
        numpy_helper.from_array(
            (np.arange(3, dtype=np.int64) * 256).reshape(1, 3, 1, 1), "channel_offsets"
        ),
        numpy_helper.from_array(normalisation_table(settings), "table"),
    ]
    graph = helper.make_graph(
        nodes, "preprocess", _value_info(spec.inputs), _value_info(spec.outputs), inits
    )
    onnx.save(_model(graph), str(out))
    return out


def _round_clip(src: str, dst: str) -> list[onnx.NodeProto]:
    """``clip(floor(x + 0.5), 0, 255)``: PIL's rounding of each pass to 8 bits."""
    return [
        helper.make_node("Add", [src, "half"], [f"{src}_h"]),
        helper.make_node("Floor", [f"{src}_h"], [f"{src}_f"]),
        helper.make_node("Clip", [f"{src}_f", "lo", "hi"], [dst]),
    ]


def build_postprocess(settings: TrackerSettings, out: Path) -> Path:
    """Write the postprocess graph (mask upsampling to the video size, mask -> box)."""
    spec = contract("postprocess", settings.geometry)
    big = 1 << 24  # larger than any frame side, exact in float32
    nodes = [
        helper.make_node("Shape", ["mask_logits"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero1", "two1", "axis0"], ["b_one"]),
        helper.make_node("Concat", ["b_one", "video_size"], ["sizes"], axis=0),
        helper.make_node(
            "Resize",
            ["mask_logits", "", "", "sizes"],
            ["up"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Greater", ["up", "zero_f"], ["on4"]),
        helper.make_node("Squeeze", ["on4", "axis1"], ["video_masks"]),
        helper.make_node("Cast", ["video_masks"], ["onf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["onf", "axis2"], ["rows"], keepdims=0),  # [B, H]
        helper.make_node("ReduceMax", ["onf", "axis1"], ["cols"], keepdims=0),  # [B, W]
        *_extent("rows", "y0", "y1", big),
        *_extent("cols", "x0", "x1", big),
        helper.make_node("Concat", ["x0", "y0", "x1", "y1"], ["box_f"], axis=1),
        helper.make_node("ReduceMax", ["rows", "axis1"], ["present"], keepdims=1),  # [B, 1]
        helper.make_node("Mul", ["box_f", "present"], ["kept"]),
        helper.make_node("Sub", ["present", "one_f"], ["minus"]),  # 0 present, -1 empty
        helper.make_node("Add", ["kept", "minus"], ["box_m"]),
        helper.make_node("Cast", ["box_m"], ["video_boxes"], to=TensorProto.INT64),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([2], np.int64), "two1"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(float(big), np.float32), "big"),
    ]
    graph = helper.make_graph(
        nodes, "postprocess", _value_info(spec.inputs), _value_info(spec.outputs), inits
    )
    onnx.save(_model(graph), str(out))
    return out


def build_mask_prompt(
    settings: TrackerSettings, out: Path, weight: np.ndarray, bias: np.ndarray
) -> Path:
    """Write the mask-prompt graph: SAM 2's ``add_new_mask`` and ``_use_mask_as_output``.

    The 0/1 mask (any size; the video's) is resized to the model's size with antialiased
    bilinear interpolation and thresholded at 0.5; ``mask_downsample`` (the model's 4x4
    stride-4 convolution, ``weight``/``bias``) turns it into the decoder's mask input, and
    ``mask * 20 - 10`` resized to the low-res size (antialiased) is the prompted frame's output
    mask. ONNX ``Resize`` (linear, ``antialias=1``, ``exclude_outside=1``) is PyTorch's
    antialiased bilinear kernel.
    """
    spec = contract("mask_prompt", settings.geometry)
    s, low = settings.image_size, settings.low_res_mask_size
    resize: dict[str, Any] = {
        "mode": "linear",
        "antialias": 1,
        "exclude_outside": 1,
        "coordinate_transformation_mode": "half_pixel",
    }
    nodes = [
        helper.make_node("Shape", ["mask"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero1", "two1", "axis0"], ["b_one"]),
        helper.make_node("Concat", ["b_one", "size_hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["mask", "", "", "sizes"], ["resized"], **resize),
        helper.make_node("GreaterOrEqual", ["resized", "half"], ["on"]),
        helper.make_node("Cast", ["on"], ["binary"], to=TensorProto.FLOAT),
        helper.make_node(
            "Conv",
            ["binary", "down_w", "down_b"],
            ["mask_input"],
            kernel_shape=[4, 4],
            strides=[4, 4],
        ),
        helper.make_node("Mul", ["binary", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["logits"]),
        helper.make_node("Concat", ["b_one", "size_low"], ["sizes_low"], axis=0),
        helper.make_node("Resize", ["logits", "", "", "sizes_low"], ["low_res_masks"], **resize),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([2], np.int64), "two1"),
        numpy_helper.from_array(np.array([s, s], np.int64), "size_hw"),
        numpy_helper.from_array(np.array([low, low], np.int64), "size_low"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(20.0, np.float32), "scale"),
        numpy_helper.from_array(np.array(-10.0, np.float32), "offset"),
        numpy_helper.from_array(weight.astype(np.float32), "down_w"),
        numpy_helper.from_array(bias.astype(np.float32), "down_b"),
    ]
    graph = helper.make_graph(
        nodes, "mask_prompt", _value_info(spec.inputs), _value_info(spec.outputs), inits
    )
    onnx.save(_model(graph), str(out))
    return out


def check_mask_prompt(
    path: Path,
    settings: TrackerSettings,
    weight: np.ndarray,
    bias: np.ndarray,
    engine: Engine | None = None,
) -> dict[str, float]:
    """Max abs difference from SAM 2's PyTorch computation, on a blob mask at two video sizes."""
    import cv2
    import torch
    import torch.nn.functional as F

    run = _runner(path, "mask_prompt", settings, engine)
    rng = np.random.default_rng(0)
    s, low = settings.image_size, settings.low_res_mask_size
    worst = {"mask_input": 0.0, "low_res_masks": 0.0}
    for h, w in ((720, 1280), (240, 320)):
        noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), h / 20)
        mask = (noise > 0.3).astype(np.float32)[None, None]
        got = dict(zip(("mask_input", "low_res_masks"), run({"mask": mask}), strict=True))
        with torch.no_grad():
            m = F.interpolate(
                torch.from_numpy(mask),
                size=(s, s),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            m = (m >= 0.5).float()
            want = {
                "mask_input": F.conv2d(
                    m, torch.from_numpy(weight), torch.from_numpy(bias), stride=4
                ),
                "low_res_masks": F.interpolate(
                    m * 20.0 - 10.0,
                    size=(low, low),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                ),
            }
        for k in worst:
            worst[k] = max(worst[k], float(np.abs(got[k] - want[k].numpy()).max()))
    return worst


def _extent(occ: str, lo: str, hi: str, big: int) -> list[onnx.NodeProto]:
    """First and last occupied index of ``occ [B, N]`` (0/1) as ``[B, 1]`` floats.

    Arithmetic instead of ArgMax over a flipped axis: ``max(i * occ)`` and
    ``min(i + big * (1 - occ))`` run on every provider and are exact for N < 2^24.
    """
    return [
        helper.make_node("Shape", [occ], [f"{occ}_shape"]),
        helper.make_node("Slice", [f"{occ}_shape", "axis1", "two1", "axis0"], [f"{occ}_n"]),
        helper.make_node("Squeeze", [f"{occ}_n"], [f"{occ}_n0"]),
        helper.make_node("Cast", [f"{occ}_n0"], [f"{occ}_nf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero_f", f"{occ}_nf", "one_f"], [f"{occ}_i"]),
        helper.make_node("Mul", [occ, f"{occ}_i"], [f"{occ}_on_i"]),
        helper.make_node("ReduceMax", [f"{occ}_on_i", "axis1"], [hi], keepdims=1),
        helper.make_node("Sub", ["one_f", occ], [f"{occ}_off"]),
        helper.make_node("Mul", [f"{occ}_off", "big"], [f"{occ}_pen"]),
        helper.make_node("Add", [f"{occ}_i", f"{occ}_pen"], [f"{occ}_far"]),
        helper.make_node("ReduceMin", [f"{occ}_far", "axis1"], [lo], keepdims=1),
    ]


def _test_frames() -> list[np.ndarray]:
    """Deterministic RGB frames with edges, gradients and noise: one shrunk, one enlarged."""
    rng = np.random.default_rng(0)
    frames = []
    for h, w in ((720, 1280), (240, 320)):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], axis=-1)
        base[h // 4 : h // 2, w // 4 : w // 2] = (250, 20, 30)  # a sharp-edged block
        noisy = base + rng.normal(0, 12, base.shape)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def _runner(
    path: Path, name: str, settings: TrackerSettings, engine: Engine | None
) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """Runs the graph at ``path`` on ONNX Runtime's CPU provider, or on ``engine``: feeds ->
    outputs in the contract's order."""
    if engine is None:
        from samurai_onnx.runtime.engine.onnxruntime import create_session

        session = create_session(path, ("CPUExecutionProvider",))
        return lambda feeds: list(session.run(None, feeds))
    loaded = engine.load(path, contract(name, settings.geometry))
    return lambda feeds: [np.asarray(engine.download(v)) for v in loaded.run(feeds).values()]


def check_preprocess(
    path: Path, settings: TrackerSettings, engine: Engine | None = None
) -> dict[str, float]:
    """Max abs difference from the host (PIL) preprocessing, in normalised units."""
    from samurai_onnx.runtime.preprocess import preprocess_frame

    run = _runner(path, "preprocess", settings, engine)
    worst = 0.0
    for frame in _test_frames():
        got = run({"frame": frame})[0]
        want = preprocess_frame(frame, settings.image_size, settings.image_mean, settings.image_std)
        worst = max(worst, float(np.max(np.abs(got - want))))
    return {"image": worst}


def check_postprocess(
    path: Path, settings: TrackerSettings, engine: Engine | None = None
) -> dict[str, float]:
    """Share of mask pixels that differ from the host upsampling, and the worst box error (px)."""
    import cv2

    from samurai_onnx.runtime.preprocess import mask_to_box, upsample_mask_logits

    run = _runner(path, "postprocess", settings, engine)
    rng = np.random.default_rng(0)
    low = settings.low_res_mask_size
    logits = np.stack(
        [
            cv2.GaussianBlur(rng.standard_normal((low, low)).astype(np.float32), (0, 0), 8) * 40
            for _ in range(2)
        ]
    )[:, None].astype(np.float32)
    logits[1] = -5.0  # an empty mask: its box must come back as -1s
    differ, box_error = 0.0, 0.0
    for h, w in ((720, 1280), (240, 320)):
        masks, boxes = run({"mask_logits": logits, "video_size": np.array([h, w])})
        for i in range(len(logits)):
            want = upsample_mask_logits(logits[i, 0], (h, w)) > 0
            differ = max(differ, float(np.mean(masks[i] != want)))
            ref = mask_to_box(want)
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            got = None if x0 < 0 else (x0, y0, x1 - x0, y1 - y0)
            if (got is None) != (ref is None):
                box_error = max(box_error, float(max(h, w)))
            elif got is not None and ref is not None:
                box_error = max(box_error, float(np.max(np.abs(np.subtract(got, ref)))))
    return {"video_masks": differ, "video_boxes": box_error}


# graph -> (builder, check against the host / PyTorch computation, tolerance). Tolerances: one
# 8-bit level after normalisation (1 / 255 / min(std) = 0.0175) for preprocess; a share of 1e-4
# of the pixels for the masks (the boxes' limit, 1 px, is a floor in passes/verify.py); 1e-4 for
# the mask prompt's logits (measured: 5e-7).
PROCESSING_GRAPHS: dict[str, tuple[Any, Any, float]] = {
    "preprocess": (build_preprocess, check_preprocess, 0.018),
    "postprocess": (build_postprocess, check_postprocess, 1e-4),
    "mask_prompt": (build_mask_prompt, check_mask_prompt, 1e-4),  # + the model's weights
}
