"""The ``int8`` attention lowering (query-key product in integers) and ``int8u8`` (the same
integers, keys stored as uint8): PyTorch and their ONNX graphs compute the same numbers, the
numbers stay within the quantization error of fp32 attention, memory attention with it stays
close to the oracle, and the ``int8attn`` and ``u8attn`` graph forms are built where the model
manifest offers them, checked, and track like the main form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from attention_support import Attend, export_attention, masked_runs, qkv
from conftest import REPO, _small_manifest, requires_oracle

from samurai_onnx.compiler.build import PassReport, compile_bundle
from samurai_onnx.compiler.evaluate.bench import FULL_BANK
from samurai_onnx.compiler.evaluate.metrics import mask_iou
from samurai_onnx.compiler.evaluate.synthetic import synthetic_box, synthetic_frames
from samurai_onnx.compiler.modeling import common
from samurai_onnx.compiler.modeling.common import (
    QUERY_BLOCK,
    int8_operands,
    set_attention_lowering,
)
from samurai_onnx.compiler.modeling.memory_attention import fold_value_projections
from samurai_onnx.compiler.passes.conv_gemm import constant_arrays
from samurai_onnx.runtime import graphs
from samurai_onnx.runtime.bundle import load_bundle
from samurai_onnx.runtime.engine.forms import forms_not_run
from samurai_onnx.runtime.host import int8_saturates_here
from samurai_onnx.runtime.tracker import Tracker

# ONNX Runtime computes PyTorch's integers with int8 keys only where its uint8 x int8 kernel
# does not saturate (VNNI, AMX, ARM); elsewhere the loader does not run the form
# (forms_not_run). Its uint8 x uint8 kernel (the int8u8 lowering) is exact everywhere.
SATURATES = "uint8 x int8 products saturate on this CPU (no VNNI/AMX)"
LOWERINGS = [
    pytest.param("int8", marks=pytest.mark.skipif(int8_saturates_here(), reason=SATURATES)),
    "int8u8",
]


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("chunk", [QUERY_BLOCK, 40])
def test_the_graph_computes_what_pytorch_computes(
    lowering: str, chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exported: each block of ``chunk`` queries (96 = 40 + 40 + 16, the last block a Slice to the
    end) gets one MatMulIntegerToFloat and one value MatMul; ONNX Runtime gives PyTorch's numbers
    to fp32 rounding, for other key and query counts than the traced ones; and blocks change
    nothing (the queries are quantized before they are split). int8u8 stores its keys as uint8
    and hands their zero point (128) to every product."""
    with torch.no_grad():
        whole = Attend(lowering)(*qkv(1, nk=1234))
    monkeypatch.setattr(common, "QUERY_BLOCK", chunk)
    path = export_attention(lowering, qkv(0), tmp_path / "int8.onnx", dynamic=True)
    nodes = onnx.load(str(path)).graph.node
    ops = [n.op_type for n in nodes]
    blocks = -(-96 // chunk)
    assert ops.count("MatMulIntegerToFloat") == blocks and ops.count("MatMul") == blocks
    assert ops.count("Slice") == (blocks if blocks > 1 else 0)
    assert ops.count("DynamicQuantizeLinear") == 1
    products = [n for n in nodes if n.op_type == "MatMulIntegerToFloat"]
    assert {len(n.input) for n in products} == {6 if lowering == "int8u8" else 5}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for nq in (96, 130, 50):  # the traced count, more and fewer (the last block takes the rest)
        q, k, v = qkv(1, nk=1234, nq=nq)
        got = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
        with torch.no_grad():
            want = Attend(lowering)(q, k, v)
            assert torch.equal(want, Attend("int8")(q, k, v))  # the same integers in PyTorch
        assert got.shape == want.shape
        assert np.abs(got - want.numpy()).max() <= 1e-5 * float(want.abs().max()), nq
        if nq == 96:
            assert float((want - whole).abs().max()) <= 1e-6 * float(whole.abs().max())


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_an_additive_key_mask_reaches_every_block(
    lowering: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padded (static) memories come with an additive key mask; the int8 graphs add it to each
    block's scores as PyTorch does, and masked keys get no weight."""
    monkeypatch.setattr(common, "QUERY_BLOCK", 40)
    got, want, hidden_changed = masked_runs(lowering, lowering, tmp_path / "masked.onnx")
    assert torch.allclose(hidden_changed, want)  # hidden keys: weight 0, values without effect
    assert np.abs(got - want.numpy()).max() <= 1e-5 * float(want.abs().max())


def test_uint8_keys_are_exact_where_int8_keys_saturate(tmp_path: Path) -> None:
    """Inputs whose products saturate 16-bit pair sums: queries all near their largest value
    (uint8 ~255) and keys whose channels share a sign (int8 ~+-127, so a pair of products is up
    to 2 x 255 x 127 = 64770). The int8u8 graph gives PyTorch's numbers on every CPU; the int8
    graph does too where its kernel is exact, and is off where it saturates (x86 without VNNI
    or AMX: this test's two halves say which this CPU is)."""
    g = torch.Generator().manual_seed(5)
    q = 0.9 + 0.1 * torch.rand(1, 1, 64, 64, generator=g)
    sign = torch.where(torch.rand(1, 1, 300, 1, generator=g) < 0.5, -1.0, 1.0)
    k = sign * (1.0 + 2.0 * torch.rand(1, 1, 300, 64, generator=g))
    v = torch.randn(1, 1, 300, 16, generator=g)
    with torch.no_grad():
        want = Attend("int8")(q, k, v).numpy()
    errors = {}
    for lowering in ("int8u8", "int8"):
        path = export_attention(lowering, (q, k, v), tmp_path / f"{lowering}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
        errors[lowering] = float(np.abs(got - want).max()) / float(np.abs(want).max())
    assert errors["int8u8"] <= 1e-5, errors
    if int8_saturates_here():
        assert errors["int8"] > 1e-3, errors  # the saturation these inputs are made for
    else:
        assert errors["int8"] <= 1e-5, errors


def test_int8_scores_are_fp32_scores_within_the_quantization_step() -> None:
    """Each score moves by at most what rounding q (step s_q) and k (step s_k) can move it:
    |dq.k| + |q.dk| + |dq.dk| <= D (s_q/2 max|k| + s_k/2 max|q| + s_q s_k / 4); and attention
    outputs stay within a few percent of fp32 attention."""
    q, k, v = qkv(2)
    d = q.shape[-1]
    exact = q @ k.transpose(-2, -1)
    qi, kt, scale = int8_operands(q, k)
    got = (qi @ kt) * scale
    s_q = float(q.max() - q.min()) / 255
    s_k = float(k.abs().max()) / 127
    bound = d * (s_q / 2 * float(k.abs().max()) + s_k / 2 * float(q.abs().max()) + s_q * s_k / 4)
    assert float((got - exact).abs().max()) <= bound
    assert float((got - exact).abs().max()) <= 0.02 * float(exact.abs().max())
    with torch.no_grad():
        ref = Attend("matmul")(q, k, v)
        out = Attend("int8")(q, k, v)
    assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())
    assert float((out - ref).abs().max()) > 0  # not exact: it is the int8 path that ran


def test_zero_keys_and_wide_heads() -> None:
    """All-zero keys give zero scores (uniform attention, as in fp32) instead of 0/0; head dims
    above 518 would leave the exact range of the fp32 integer product and are refused."""
    q, k, v = qkv(3)
    k = torch.zeros_like(k)
    with torch.no_grad():
        out = Attend("int8")(q, k, v)
        ref = Attend("matmul")(q, k, v)
    assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match="head dims up to 518"):
        int8_operands(torch.ones(1, 2, 520), torch.ones(1, 3, 520))


@requires_oracle
def test_memory_attention_with_int8_scores_follows_the_oracle(
    tiny_oracle: Any, tiny_checkpoint: Path
) -> None:
    """SAM 2.1's memory attention (random tiny weights, 16x16 grid, 7 memories and 8 pointer
    tokens) with every score product in int8 against SAMURAI's PyTorch code: a few percent of
    the output's range; the same module in fp32 is exact (test_modeling_memory)."""
    from test_modeling_memory import _load, _ma_inputs, _max_err, _oracle_ma, _small_grid_ma

    ma = _load(_small_grid_ma(16), tiny_checkpoint, "memory_attention.")
    fold_value_projections(ma)
    set_attention_lowering(ma, "int8")
    inputs = _ma_inputs(7, 8, hw=16 * 16, seed=11)
    with torch.no_grad():
        ref = _oracle_ma(tiny_oracle, inputs)
        out = ma(*inputs)
    err, scale = _max_err(out, ref), float(ref.abs().max())
    assert 0 < err <= 0.03 * scale, f"int8 scores: max abs error {err:.3g} of {scale:.3g}"


REPORTS: list[PassReport] = []


@pytest.fixture(scope="module")
def int8attn_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny256 model for the shipped cpu-int8 target (``alternatives: [int8attn, u8attn,
    blocked]``)."""
    tmp = tmp_path_factory.mktemp("int8attn")
    manifest = _small_manifest(tmp / "tiny-256.yaml", 256)
    return compile_bundle(
        manifest, "cpu-int8", checkpoint=tiny_checkpoint, out_dir=tmp / "b",
        on_pass=REPORTS.append,
    )  # fmt: skip


@pytest.mark.parametrize("form", ["int8attn", "u8attn"])
def test_the_form_is_built_where_the_model_manifest_offers_it(
    form: str, int8attn_bundle: Path
) -> None:
    """Built for memory attention only (``attention.int8`` in the model manifest), checked
    against PyTorch at the int8 tolerance from its export on, its weights quantized too; the
    u8attn form's keys are uint8 (zero point 128), the int8attn form's int8."""
    header = yaml.safe_load((int8attn_bundle / "bundle.yaml").read_text())
    assert header["target"]["alternatives"] == ["int8attn", "u8attn", "blocked"]
    built = {n: sorted(c.get("alternatives", {})) for n, c in header["components"].items()}
    assert {n: forms for n, forms in built.items() if forms} == {
        "memory_attention": ["blocked", "int8attn", "u8attn"]
    }
    entry = header["components"]["memory_attention"]
    alt = entry["alternatives"][form]
    model = onnx.load(str(int8attn_bundle / alt["file"]))
    ops = [n.op_type for n in model.graph.node]
    main = [n.op_type for n in onnx.load(str(int8attn_bundle / entry["file"])).graph.node]
    # every attention's scores in integers (4 layers: self and cross), the weights' products too
    assert ops.count("DynamicQuantizeLinear") > 8 and ops.count("MatMulIntegerToFloat") >= 8
    assert "MultiHeadAttention" in main and "MultiHeadAttention" not in ops
    constants = constant_arrays(model)
    key_types = {  # what the keys' QuantizeLinear writes (its zero point's type)
        constants[n.input[2]].dtype.name for n in model.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) == 3
    }  # fmt: skip
    assert key_types == {"uint8" if form == "u8attn" else "int8"}
    assert alt["precision"] == "int8" and entry["tolerance"] == 5.0
    assert 0 < max(alt["max_abs_error"].values()) <= entry["tolerance"]
    exported = [r for r in REPORTS if r.component == f"memory_attention/{form}"]
    assert [r.name for r in exported] == ["export", "simplify", "int8"]
    assert all(r.tolerance == 5.0 for r in exported)  # judged as int8 before quantizing


def test_tracking_with_int8_scores_stays_with_the_main_form(int8attn_bundle: Path) -> None:
    """Four synthetic frames with the full-bank settings: the int8 score forms' masks overlap the
    main form's (int8 weights, fp32 attention) at IoU >= 0.99 (measured: >= 0.9975 over 8
    frames), and the engine line names the form; where int8attn's products are exact, both
    forms give the same masks (the same integers)."""
    clip, box = synthetic_frames(4), list(synthetic_box())
    results = {}
    for forms in ("main", "u8attn", "int8attn"):
        bundle = load_bundle(int8attn_bundle)
        tracker = Tracker(bundle, num_frames=4, overrides=FULL_BANK, forms=forms)
        first = tracker.start(clip[0], [box])[0]
        results[forms] = [first, *(tracker.step(f)[0] for f in clip[1:])]
        assert f"memory_attention: {forms}" in tracker.describe()
    for form in ("u8attn", "int8attn"):
        for a, b in zip(results["main"], results[form], strict=True):
            assert mask_iou(a.mask, b.mask) >= 0.99
    if not int8_saturates_here():
        for a, b in zip(results["u8attn"], results["int8attn"], strict=True):
            assert np.array_equal(a.mask, b.mask)


def test_the_form_is_not_run_where_its_products_saturate(
    int8attn_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a CPU whose uint8 x int8 kernel saturates (x86 without VNNI or AMX; pretended here on
    any CPU) the loader times the other forms (main, u8attn, blocked) without int8attn, and the
    engine line says why; asked for by name, the form runs with a warning. Where int8attn runs,
    u8attn (the same integers) is not timed. Other engines: all forms are candidates."""
    both = ["int8attn", "u8attn"]
    assert forms_not_run(["int8attn"], "onnxruntime", saturates=False) == {}
    assert forms_not_run(["int8attn"], "openvino", saturates=True) == {}
    assert forms_not_run(["unfused", "dense"], "onnxruntime", saturates=True) == {}
    assert forms_not_run(["u8attn"], "onnxruntime", saturates=False) == {}
    assert list(forms_not_run(both, "onnxruntime", saturates=True)) == ["int8attn"]
    assert list(forms_not_run(both, "onnxruntime", saturates=False)) == ["u8attn"]
    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(int8attn_bundle.parent / "cache"))
    for saturates in (True, False):
        monkeypatch.setattr(graphs, "int8_saturates_here", lambda s=saturates: s)
        tracker = Tracker(load_bundle(int8attn_bundle), num_frames=2)
        choice = tracker.graphs.forms["memory_attention"]
        runs = "u8attn" if saturates else "int8attn"
        assert set(choice.seconds) == {"main", runs, "blocked"}, saturates
        assert choice.chosen in choice.seconds
    assert "; u8attn not run: int8attn computes the same integers on faster kernels here" in (
        tracker.describe()
    )
    monkeypatch.setattr(graphs, "int8_saturates_here", lambda: True)
    tracker = Tracker(load_bundle(int8attn_bundle), num_frames=2)
    assert "; int8attn not run: uint8 x int8 products saturate on this CPU (no VNNI/AMX)" in (
        tracker.describe()
    )  # the cached choice keeps the reason
    Tracker(load_bundle(int8attn_bundle), num_frames=2, forms="int8attn")
    assert "the int8attn form runs although uint8 x int8 products saturate" in caplog.text


def test_objects_tracked_together_stay_close_to_tracked_alone(int8attn_bundle: Path) -> None:
    """Dynamic int8 scales are per call, so in a batch the objects share them: an object's masks
    move a little with the objects tracked beside it, in both forms of an int8 bundle (weights'
    activations and, in int8attn, the scores; README "Speed"). Measured here: IoU >= 0.998."""
    clip, box = synthetic_frames(4), list(synthetic_box())
    ball = [300.0, 220.0, 60.0, 60.0]  # the red disc of the synthetic scene

    def track(boxes: list[list[float]], forms: str) -> list[list[Any]]:
        tracker = Tracker(load_bundle(int8attn_bundle), num_frames=4, forms=forms)
        return [tracker.start(clip[0], boxes), *(tracker.step(f) for f in clip[1:])]

    for forms in ("main", "int8attn"):
        together = track([box, ball], forms)
        for i, alone in enumerate((track([box], forms), track([ball], forms))):
            ious = [mask_iou(t[i].mask, a[0].mask) for t, a in zip(together, alone, strict=True)]
            assert min(ious) >= 0.99, (forms, i, ious)


def test_compare_engines_times_the_forms_alternately(int8attn_bundle: Path, tmp_path: Path) -> None:
    """``scripts/compare_engines.py --forms`` (how the README's per-form times were taken): each
    graph that has two of the forms asked for gets a row per form, errors against the first
    form; u8attn is within int8 error of the main form (int8 weights, fp32 attention)."""
    out = tmp_path / "forms.json"
    run = subprocess.run(
        [
            sys.executable, str(REPO / "scripts" / "compare_engines.py"), str(int8attn_bundle),
            "--forms", "main,u8attn,blocked", "--graphs", "memory_attention,image_encoder",
            "--repeats", "2", "--threads", "2", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())["forms"]
    assert list(report) == ["memory_attention"]  # the image encoder has one form here
    rows = report["memory_attention"]
    assert list(rows) == ["main", "u8attn", "blocked"]
    assert all(len(r["runs_s"]) == 2 and r["median_s"] > 0 for r in rows.values())
    assert rows["main"]["max_rel_error"] == 0
    assert 0 < rows["u8attn"]["max_rel_error"] < 0.1
    assert "| memory_attention form | median s | min s | error vs main |" in run.stdout
