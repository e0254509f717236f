"""The dense rewrite of depthwise convolutions gives the grouped convolution's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from conftest import run_unoptimized
from onnx import TensorProto, helper, numpy_helper

from samurai_onnx.compiler.passes.depthwise import count_depthwise, densify_depthwise


def _model(channels: int, groups: int, kernel: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((channels, channels // groups, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    pad = kernel // 2
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], group=groups, pads=[pad] * 4, kernel_shape=[kernel] * 2
    )
    graph = helper.make_graph(
        [conv, helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, channels, 20, 20])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, channels, 20, 20])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_depthwise_becomes_dense_with_the_same_numbers() -> None:
    model = _model(16, 16, 7)
    x = np.random.default_rng(1).standard_normal((2, 16, 20, 20)).astype(np.float32)
    want = run_unoptimized(model, x)
    assert densify_depthwise(model) == 1
    onnx.checker.check_model(model, full_check=True)
    (w,) = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w"]
    assert w.shape == (16, 16, 7, 7)
    off = ~np.eye(16, dtype=bool)
    assert not w[off].any()  # off-diagonal weights are exact zeros
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == 1
    np.testing.assert_allclose(run_unoptimized(model, x), want, rtol=1e-5, atol=1e-5)


def test_grouped_but_not_depthwise_and_dense_convs_are_left_alone() -> None:
    for groups in (1, 4):  # dense, and grouped with 4 channels per group
        model = _model(16, groups, 3)
        before = model.SerializeToString()
        assert densify_depthwise(model) == 0
        assert model.SerializeToString() == before


def test_the_channel_bound_is_respected() -> None:
    model = _model(16, 16, 3)
    assert densify_depthwise(model, max_channels=8) == 0


def test_a_dense_target_builds_and_tracks_like_the_grouped_one(
    tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``depthwise: dense`` in a target: the compiler rewrites the memory encoder's two 7x7
    depthwise convolutions (checked against PyTorch after the pass), the bundle says so, and it
    tracks like the grouped bundle of the same checkpoint (summation order only: a memory may
    move by one bfloat16 step, so masks agree to IoU >= 0.999 and object scores closely)."""
    import yaml
    from conftest import REPO, _small_manifest

    from samurai_onnx.compiler.build import PassReport, compile_bundle
    from samurai_onnx.compiler.evaluate.bench import FULL_BANK
    from samurai_onnx.compiler.evaluate.metrics import mask_iou
    from samurai_onnx.compiler.evaluate.synthetic import synthetic_box, synthetic_frames
    from samurai_onnx.runtime.bundle import load_bundle
    from samurai_onnx.runtime.tracker import Tracker

    target = yaml.safe_load((REPO / "targets" / "cpu.yaml").read_text())
    target.update(name="cpu-dense", depthwise="dense")
    target_file = tmp_path / "cpu-dense.yaml"
    target_file.write_text(yaml.safe_dump(target))
    manifest = _small_manifest(tmp_path / "tiny-256.yaml", 256)  # the tiny256 bundle's
    reports: list[PassReport] = []
    out = compile_bundle(
        manifest, target_file, checkpoint=tiny_checkpoint, out_dir=tmp_path / "b",
        on_pass=reports.append,
    )  # fmt: skip
    dense_passes = [r.component for r in reports if r.name == "dense-depthwise"]
    assert dense_passes == ["memory_encoder"]  # the only SAM 2.1 graph with depthwise convs
    header = yaml.safe_load((out / "bundle.yaml").read_text())
    assert header["target"]["depthwise"] == "dense"
    model = onnx.load(str(out / "memory_encoder.onnx"))
    groups = [
        helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "group"
    ]
    assert groups and all(g == 1 for g in groups)
    assert count_depthwise(onnx.load(str(tiny256_bundle / "memory_encoder.onnx"))) == 2

    clip, box = synthetic_frames(4), list(synthetic_box())
    runs = []
    for path in (tiny256_bundle, out):
        tracker = Tracker(load_bundle(path), num_frames=4, overrides=FULL_BANK)
        runs.append([tracker.start(clip[0], [box])[0], *(tracker.step(f)[0] for f in clip[1:])])
    for a, b in zip(*runs, strict=True):
        assert mask_iou(a.mask, b.mask) >= 0.999
        assert a.present == b.present
        assert abs(a.score - b.score) <= 1e-3 * max(1.0, abs(a.score))
