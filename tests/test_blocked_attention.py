"""The ``blocked`` attention lowering (MatMul/Softmax/MatMul for ``QUERY_BLOCK`` queries at a
time): PyTorch and its ONNX graph compute what the unblocked ``matmul`` lowering computes, for
any query count, with an additive key mask too. The ``blocked`` graph form: built and tracked
with in ``tests/test_forms.py``, offered by the model manifests (``tests/test_manifest.py``),
the ``ort-mobile`` main form (``tests/test_compile.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from attention_support import Attend, export_attention, masked_runs, qkv

from samurai_onnx.compiler.modeling import common
from samurai_onnx.compiler.modeling.common import QUERY_BLOCK

REPO = Path(__file__).resolve().parents[1]


def _close(got: np.ndarray, want: torch.Tensor) -> bool:
    return float(np.abs(got - want.numpy()).max()) <= 1e-6 * float(want.abs().max())


@pytest.mark.parametrize("block", [QUERY_BLOCK, 40])
def test_the_graph_computes_the_unblocked_attention(
    block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """96 queries in blocks of 40 (40 + 40 + 16, the last a Slice to the end): two MatMuls and a
    Softmax per block, a Concat, no fused op; ONNX Runtime gives the unblocked attention's numbers
    to fp32 rounding for the traced query count and for others (the last block takes the rest).
    One block (1024 >= 96) is the plain ``matmul`` graph: no Slice, no Concat."""
    monkeypatch.setattr(common, "QUERY_BLOCK", block)
    path = export_attention("blocked", qkv(0), tmp_path / "blocked.onnx", dynamic=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    blocks = -(-96 // block)
    assert ops.count("MatMul") == 2 * blocks and ops.count("Softmax") == blocks
    assert ops.count("Slice") == (blocks if blocks > 1 else 0)
    assert ops.count("Concat") == (1 if blocks > 1 else 0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for nq in (96, 130, 50):
        q, k, v = qkv(1, nq=nq, nk=1234)
        got = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
        with torch.no_grad():
            want = Attend("matmul")(q, k, v)
            eager = Attend("blocked")(q, k, v)
        assert got.shape == want.shape, nq
        assert _close(got, want) and _close(eager.numpy(), want), nq


def test_an_additive_key_mask_reaches_every_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padded (static) memories come with an additive key mask: every block adds it, so masked
    keys get no weight in any block (their values change nothing)."""
    monkeypatch.setattr(common, "QUERY_BLOCK", 40)
    got, want, hidden_changed = masked_runs("blocked", "matmul", tmp_path / "masked.onnx")
    assert _close(got, want) and _close(hidden_changed.numpy(), want)
