"""The dense rewrite of depthwise convolutions gives the grouped convolution's numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from samurai_onnx.compiler.passes.depthwise import densify_depthwise


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


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_depthwise_becomes_dense_with_the_same_numbers() -> None:
    model = _model(16, 16, 7)
    x = np.random.default_rng(1).standard_normal((2, 16, 20, 20)).astype(np.float32)
    want = _run(model, x)
    assert densify_depthwise(model) == 1
    onnx.checker.check_model(model, full_check=True)
    (w,) = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w"]
    assert w.shape == (16, 16, 7, 7)
    off = ~np.eye(16, dtype=bool)
    assert not w[off].any()  # off-diagonal weights are exact zeros
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == 1
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)


def test_grouped_but_not_depthwise_and_dense_convs_are_left_alone() -> None:
    for groups in (1, 4):  # dense, and grouped with 4 channels per group
        model = _model(16, groups, 3)
        before = model.SerializeToString()
        assert densify_depthwise(model) == 0
        assert model.SerializeToString() == before


def test_the_channel_bound_is_respected() -> None:
    model = _model(16, 16, 3)
    assert densify_depthwise(model, max_channels=8) == 0
