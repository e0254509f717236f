"""The fp16 pass's repair of onnxruntime 1.31's converter output (duplicate Cast nodes)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from samurai_onnx.compiler.passes.fp16 import _drop_duplicate_nodes


def _graph(second_cast_to: int) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])
    cast = helper.make_node("Cast", ["x"], ["x32"], name="x_cast", to=TensorProto.FLOAT)
    again = helper.make_node("Cast", ["x"], ["x32"], name="x_cast", to=second_cast_to)
    return helper.make_graph(
        [
            cast,
            helper.make_node("Relu", ["x32"], ["y"]),
            again,
            helper.make_node("Neg", ["x32"], ["z"]),
        ],
        "g",
        [x],
        [y, z],
    )


def test_identical_duplicates_are_dropped() -> None:
    graph = _graph(TensorProto.FLOAT)
    with pytest.raises(onnx.checker.ValidationError, match="SSA"):
        onnx.checker.check_model(helper.make_model(graph))
    _drop_duplicate_nodes(graph)
    assert [n.op_type for n in graph.node] == ["Cast", "Relu", "Neg"]
    onnx.checker.check_model(helper.make_model(graph))


def test_different_nodes_writing_one_name_are_an_error() -> None:
    graph = _graph(TensorProto.DOUBLE)
    with pytest.raises(RuntimeError, match="two different nodes"):
        _drop_duplicate_nodes(graph)
