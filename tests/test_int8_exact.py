"""Int8 products are the same integers on every CPU.

ONNX Runtime's uint8 x int8 matmul kernel on x86 CPUs without VNNI or AMX (AVX2, AVX512 without
VNNI) adds each pair of products in 16 bits with saturation, so large inputs give wrong sums
(measured on an AMD EPYC with AVX2 only: 23% of the largest output). The runtime turns on ONNX
Runtime's exact path for constant int8 weights there (``session.x64quantprecision``), the
compiler gives every integer matmul its own weight (which that path needs) and stores ORT-format
weights as uint8 (which that path does not reach); the ``int8attn`` form, whose int8 keys are
computed at run time, is not run there (``tests/test_int8_attention.py``). These tests use
inputs that saturate the 16-bit pair sums, so on such a CPU they fail without those measures;
on a VNNI or AMX CPU the kernels are exact anyway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from samurai_onnx.compiler.passes.ort_format import convert_to_ort
from samurai_onnx.compiler.passes.quantize import quantize_int8
from samurai_onnx.runtime.engine.onnxruntime import create_session, session_options
from samurai_onnx.runtime.host import int8_saturates_here, u8s8_saturates


@pytest.mark.parametrize(
    ("flags", "arch", "saturates"),
    [
        ({"avx2", "fma"}, "x86_64", True),  # AMD Zen 2/3, Intel client before Alder Lake
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", True),  # Skylake-SP: AVX512 without VNNI
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", False),
        ({"avx2", "avx_vnni"}, "x86_64", False),  # Alder Lake and later client CPUs
        ({"avx2", "amx_int8", "amx_tile"}, "x86_64", False),
        (None, "AMD64", True),  # no /proc/cpuinfo (Windows): cannot tell, stay exact
        (set(), "aarch64", False),  # ARM's dot-product kernels accumulate in 32 bits
        (None, "arm64", False),
    ],
)
def test_which_cpus_saturate(flags: set[str] | None, arch: str, saturates: bool) -> None:
    assert u8s8_saturates(flags, arch) is saturates


def _float_matmul(path: Path, weight: np.ndarray, shared: bool = False) -> Path:
    """``y = a @ w`` (``shared``: ``y = a @ w + relu(a) @ w``, one weight for two MatMuls)."""
    nodes = [helper.make_node("MatMul", ["a", "w"], ["y" if not shared else "y1"])]
    if shared:
        nodes += [
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y2"]),
            helper.make_node("Add", ["y1", "y2"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _exact_dynamic_int8(a: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    """What a dynamically quantized MatMul computes, in exact integers: ``a`` quantized as
    ``DynamicQuantizeLinear`` does, the quantized weight and its scale from ``model``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    wq = next(v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2)
    ws = next(float(v) for k, v in inits.items() if k.endswith("scale") and v.size == 1)
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = np.float32((hi - lo) / 255)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    aq = np.clip(np.rint(a / scale) + zero, 0, 255) - zero
    return (aq @ wq.astype(np.float64)) * float(scale) * ws


def test_int8_weights_are_exact_on_this_cpu(tmp_path: Path) -> None:
    """The compiler's int8 pass on a MatMul with weights and activations spread over their whole
    range (pair sums up to 2 * 255 * 127): the runtime's session gives the exact integer result
    to fp32 rounding. On a CPU whose kernel saturates, a session without the runtime's options
    is far off, which shows the inputs do reach the saturation this test is about."""
    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (256, 96)).astype(np.float32)
    a = rng.uniform(-1, 1, (384, 256)).astype(np.float32)
    src = _float_matmul(tmp_path / "mm.onnx", weight)
    out = quantize_int8(src, tmp_path / "mm.int8.onnx", {"op_types": ["MatMul"]})
    want = _exact_dynamic_int8(a, onnx.load(str(out)))
    got = create_session(out).run(None, {"a": a})[0]
    peak = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 1e-5 * peak
    if int8_saturates_here():
        plain = ort.SessionOptions()
        raw = ort.InferenceSession(str(out), plain, providers=["CPUExecutionProvider"])
        assert float(np.abs(raw.run(None, {"a": a})[0] - want).max()) > 0.01 * peak
        assert "1" == session_options().get_session_config_entry("session.x64quantprecision")


def _saturating_case(tmp_path: Path, shared: bool = False) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (256, 96)).astype(np.float32)
    a = rng.uniform(-1, 1, (384, 256)).astype(np.float32)
    src = _float_matmul(tmp_path / "mm.onnx", weight, shared)
    return quantize_int8(src, tmp_path / "mm.int8.onnx", {"op_types": ["MatMul"]}), a


def test_ort_format_int8_is_exact_on_this_cpu(tmp_path: Path) -> None:
    """ORT-format files (the ort-mobile target) get no load-time rewrite, so the compiler stores
    their int8 weights as uint8: the same integers, exact on every CPU (on an AVX2-only EPYC
    the file without the rewrite was 23% off)."""
    path, a = _saturating_case(tmp_path)
    want = _exact_dynamic_int8(a, onnx.load(str(path)))
    ort_file = convert_to_ort(path, tmp_path / "mm.ort")
    got = create_session(ort_file).run(None, {"a": a})[0]
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
    stored = onnx.load(str(tmp_path / "mm.uint8.onnx"))
    assert {t.data_type for t in stored.graph.initializer if len(t.dims) == 2} == {
        TensorProto.UINT8
    }


def test_a_weight_shared_by_two_matmuls_gets_a_copy_each(tmp_path: Path) -> None:
    """One weight feeding two MatMuls (as in memory attention) is quantized into one copy per
    integer matmul: ONNX Runtime's exact int8 path fails to load a graph where two share one
    ("Attempt to replace the existing tensor"); the results stay exact."""
    path, a = _saturating_case(tmp_path, shared=True)
    model = onnx.load(str(path))
    users = [n.input[1] for n in model.graph.node if n.op_type == "MatMulInteger"]
    zeros = [n.input[3] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(users) == 2 and len(set(users)) == 2 and len(set(zeros)) == 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(inits[users[0]], inits[users[1]])
    got = create_session(path).run(None, {"a": a})[0]
    r = np.maximum(a, 0)
    want = _exact_dynamic_int8(a, model) + _exact_dynamic_int8(r, model)
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
