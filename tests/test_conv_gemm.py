"""The gemm form: convolutions rewritten as matrix products give the convolutions' numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_unoptimized
from onnx import TensorProto, helper, numpy_helper

from samurai_onnx.compiler.passes.conv_gemm import (
    MAX_CONCAT_INPUTS,
    MAX_IM2COL_CHANNELS,
    count_gemm_convs,
    gemm_convs,
)


def _model(
    op: str,
    weight_shape: tuple[int, ...],
    *,
    in_shape: list[int | str],
    bias: bool = True,
    constant_weight: bool = False,
    **attrs: object,
) -> onnx.ModelProto:
    """One convolution (then a Relu, so the rewrite's output feeds another node)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    c_out = weight_shape[1] * int(attrs.get("group", 1)) if op == "ConvTranspose" else weight_shape[0]  # type: ignore[call-overload]
    inputs = ["x", "w"] + (["b"] if bias else [])
    inits = [] if constant_weight else [numpy_helper.from_array(w, "w")]
    nodes = []
    if constant_weight:  # onnxsim leaves some filters as Constant nodes
        nodes.append(helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)))
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
    nodes += [helper.make_node(op, inputs, ["y"], **attrs), helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a", "b", "c", "d"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


CASES = {
    # the memory encoder's fuser: 7x7 depthwise, stride 1, 'same' padding, static 20x20
    "banded 7x7 depthwise": (
        "Conv", (16, 1, 7, 7), [2, 16, 20, 20], dict(group=16, kernel_shape=[7, 7], pads=[3] * 4)
    ),
    "banded, asymmetric pads and kernel": (
        "Conv", (8, 1, 3, 5), [1, 8, 9, 12],
        dict(group=8, kernel_shape=[3, 5], pads=[0, 2, 2, 1]),
    ),
    # the mask downsampler: 3x3 stride 2 over 1 and 4 channels, spatial size unknown
    "im2col 3x3 stride 2, dynamic size": (
        "Conv", (4, 1, 3, 3), ["n", 1, "h", "w"],
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
    ),
    "im2col at the channel bound": (
        "Conv", (8, MAX_IM2COL_CHANNELS, 3, 3), [2, MAX_IM2COL_CHANNELS, 15, 14],
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
    ),
    # the prompt encoder's mask downscaling: 2x2 stride 2 and a 1x1 over 16 channels
    "im2col 2x2 stride 2": (
        "Conv", (4, 1, 2, 2), [2, 1, 16, 16], dict(kernel_shape=[2, 2], strides=[2, 2])
    ),
    "im2col 1x1": ("Conv", (32, 16, 1, 1), [2, 16, 8, 8], dict(kernel_shape=[1, 1])),
    # the image encoder's patch embedding: 49 taps, concatenated in groups of at most 32
    "im2col 7x7 stride 4": (
        "Conv", (8, 3, 7, 7), [1, 3, 32, 32],
        dict(kernel_shape=[7, 7], strides=[4, 4], pads=[3] * 4),
    ),
    # the decoder's output upscaling: 2x2 stride 2 transposed convolutions
    "shuffle 2x2 stride 2": (
        "ConvTranspose", (32, 8, 2, 2), ["n", 32, "h", "w"],
        dict(kernel_shape=[2, 2], strides=[2, 2]),
    ),
}  # fmt: skip


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rewrite_gives_the_convolution_s_numbers(case: str, bias: bool) -> None:
    op, weight_shape, in_shape, attrs = CASES[case]
    model = _model(op, weight_shape, in_shape=in_shape, bias=bias, constant_weight=not bias, **attrs)
    concrete = [d if isinstance(d, int) else {"n": 2, "h": 17, "w": 10}[d] for d in in_shape]
    x = np.random.default_rng(1).standard_normal(concrete).astype(np.float32)
    want = run_unoptimized(model, x)
    assert count_gemm_convs(model) == 1
    assert gemm_convs(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert all(len(n.input) <= MAX_CONCAT_INPUTS for n in concats)  # CUDA-graph capturable
    # the replaced filter is gone (an initializer or a Constant node nothing reads)
    assert "w" not in {t.name for t in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    got = run_unoptimized(model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if "dynamic" in case or op == "ConvTranspose":  # the same graph at another size
        x2 = np.random.default_rng(2).standard_normal([1, concrete[1], 11, 6]).astype(np.float32)
        original = _model(op, weight_shape, in_shape=in_shape, bias=bias, **attrs)
        np.testing.assert_allclose(run_unoptimized(model, x2), run_unoptimized(original, x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "op, weight_shape, in_shape, attrs",
    [
        # many input channels: cuDNN's own ground
        ("Conv", (8, 32, 3, 3), [1, 32, 8, 8], dict(kernel_shape=[3, 3], pads=[1] * 4)),
        # depthwise with stride 2, and depthwise of unknown size (the band needs static sizes)
        ("Conv", (8, 1, 3, 3), [1, 8, 8, 8], dict(group=8, kernel_shape=[3, 3], strides=[2, 2])),
        ("Conv", (8, 1, 3, 3), [1, 8, "h", "w"], dict(group=8, kernel_shape=[3, 3], pads=[1] * 4)),
        # grouped, not depthwise; dilated; overlapping transposed convolution
        ("Conv", (8, 2, 3, 3), [1, 8, 8, 8], dict(group=4, kernel_shape=[3, 3])),
        ("Conv", (8, 4, 3, 3), [1, 4, 9, 9], dict(kernel_shape=[3, 3], dilations=[2, 2])),
        ("ConvTranspose", (8, 4, 3, 3), [1, 8, 5, 5], dict(kernel_shape=[3, 3], strides=[2, 2])),
    ],
)
def test_convolutions_cudnn_serves_well_are_left_alone(
    op: str, weight_shape: tuple[int, ...], in_shape: list[int | str], attrs: dict[str, object]
) -> None:
    model = _model(op, weight_shape, in_shape=in_shape, **attrs)
    before = model.SerializeToString()
    assert count_gemm_convs(model) == 0
    assert gemm_convs(model) == 0
    assert model.SerializeToString() == before


def test_a_gemm_form_is_built_checked_and_tracks_like_the_main_form(
    tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``alternatives: [gemm]``: the compiler adds the form to every graph with convolutions the
    pass rewrites (image encoder patch embedding, memory encoder, mask decoder), each checked
    against PyTorch after the pass; the main forms are the plain bundle's, and the gemm forms
    track like them (summation order only: a memory may move by one bfloat16 step)."""
    import yaml
    from conftest import REPO, _small_manifest

    from samurai_onnx.compiler.build import PassReport, compile_bundle
    from samurai_onnx.compiler.evaluate.bench import FULL_BANK
    from samurai_onnx.compiler.evaluate.metrics import mask_iou
    from samurai_onnx.compiler.evaluate.synthetic import synthetic_box, synthetic_frames
    from samurai_onnx.runtime.bundle import load_bundle
    from samurai_onnx.runtime.tracker import Tracker

    target = yaml.safe_load((REPO / "targets" / "cpu.yaml").read_text())
    target.update(name="cpu-gemm", alternatives=["gemm"])
    target_file = tmp_path / "cpu-gemm.yaml"
    target_file.write_text(yaml.safe_dump(target))
    reports: list[PassReport] = []
    out = compile_bundle(
        _small_manifest(tmp_path / "tiny-256.yaml", 256), target_file,
        checkpoint=tiny_checkpoint, out_dir=tmp_path / "b", on_pass=reports.append,
    )  # fmt: skip
    checked = sorted(r.component for r in reports if r.name == "gemm-convs")
    assert checked == ["image_encoder/gemm", "mask_decoder/gemm", "memory_encoder/gemm"]
    header = yaml.safe_load((out / "bundle.yaml").read_text())
    for name, entry in header["components"].items():
        alt = entry.get("alternatives", {}).get("gemm")
        assert (alt is not None) == (f"{name}/gemm" in checked), name
        if alt is None:
            continue
        ops = {n.op_type for n in onnx.load(str(out / alt["file"])).graph.node}
        assert count_gemm_convs(onnx.load(str(out / alt["file"]))) == 0
        assert count_gemm_convs(onnx.load(str(out / entry["file"]))) > 0
        assert "MatMul" in ops
        assert max(alt["max_abs_error"].values()) <= entry["tolerance"]

    clip, box = synthetic_frames(4), list(synthetic_box())
    runs = []
    for path, forms in ((tiny256_bundle, "main"), (out, "gemm")):
        tracker = Tracker(load_bundle(path), num_frames=4, overrides=FULL_BANK, forms=forms)
        runs.append([tracker.start(clip[0], [box])[0], *(tracker.step(f)[0] for f in clip[1:])])
    chosen = {n: c.chosen for n, c in tracker.graphs.forms.items()}
    assert chosen == {g: "gemm" for g in ("image_encoder", "mask_decoder", "memory_encoder")}
    for a, b in zip(*runs, strict=True):
        assert mask_iou(a.mask, b.mask) >= 0.999
        assert a.present == b.present
        assert abs(a.score - b.score) <= 1e-3 * max(1.0, abs(a.score))
