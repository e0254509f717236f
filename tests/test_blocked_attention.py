"""The ``blocked`` attention lowering (MatMul/Softmax/MatMul for ``QUERY_BLOCK`` queries at a
time): PyTorch and its ONNX graph compute what the unblocked ``matmul`` lowering computes, for
any query count, with an additive key mask too; the ``blocked`` graph form is built where the
model manifest offers it (``tests/test_forms.py`` tracks with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from samurai_onnx.compiler.manifest import ManifestError, load_model_manifest
from samurai_onnx.compiler.modeling import common
from samurai_onnx.compiler.modeling.common import QUERY_BLOCK, attention

REPO = Path(__file__).resolve().parents[1]


class _Attend(torch.nn.Module):
    def __init__(self, lowering: str) -> None:
        super().__init__()
        self.lowering = lowering

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return attention(q, k, v, mask=mask, lowering=self.lowering)


def _qkv(seed: int, nq: int = 96, nk: int = 700) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 1, nq, 64, generator=g)
    k = torch.randn(2, 1, nk, 64, generator=g) * 3.0
    v = torch.randn(2, 1, nk, 16, generator=g)
    return q, k, v


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
    path = tmp_path / "blocked.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _Attend("blocked"), _qkv(0), str(path), input_names=["q", "k", "v"],
            output_names=["o"], opset_version=17, dynamo=False,
            dynamic_axes={"q": {2: "queries"}, "k": {2: "keys"}, "v": {2: "keys"}},
        )  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    blocks = -(-96 // block)
    assert ops.count("MatMul") == 2 * blocks and ops.count("Softmax") == blocks
    assert ops.count("Slice") == (blocks if blocks > 1 else 0)
    assert ops.count("Concat") == (1 if blocks > 1 else 0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for nq in (96, 130, 50):
        q, k, v = _qkv(1, nq=nq, nk=1234)
        got = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
        with torch.no_grad():
            want = _Attend("matmul")(q, k, v)
            eager = _Attend("blocked")(q, k, v)
        assert got.shape == want.shape, nq
        assert _close(got, want) and _close(eager.numpy(), want), nq


def test_an_additive_key_mask_reaches_every_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Padded (static) memories come with an additive key mask: every block adds it, so masked
    keys get no weight in any block (their values change nothing)."""
    monkeypatch.setattr(common, "QUERY_BLOCK", 40)
    q, k, v = _qkv(4)
    mask = torch.zeros(1, 1, 1, k.shape[2])
    mask[..., -200:] = -30000.0
    path = tmp_path / "masked.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _Attend("blocked"), (q, k, v, mask), str(path), input_names=["q", "k", "v", "mask"],
            output_names=["o"], opset_version=17, dynamo=False,
        )  # fmt: skip
        want = _Attend("matmul")(q, k, v, mask)
        v_off = v.clone()
        v_off[:, :, -200:] = 1e3
        assert _close(_Attend("blocked")(q, k, v_off, mask).numpy(), want)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(
        None, {"q": q.numpy(), "k": k.numpy(), "v": v_off.numpy(), "mask": mask.numpy()}
    )[0]
    assert _close(got, want)


def test_the_model_manifests_offer_it_for_memory_attention_only(tmp_path: Path) -> None:
    """Where blocks pay (measured): memory attention's 4096 x 28736 scores; the image encoder's
    4096 x 4096 global attention ran no faster blocked. ``blocked`` takes true or false."""
    for size in ("tiny", "small", "base_plus", "large"):
        manifest = load_model_manifest(REPO / "manifests" / f"{size}.yaml")
        offered = [n for n, spec in manifest.components.items() if spec.blocked_attention]
        assert offered == ["memory_attention"], size
    text = (REPO / "manifests" / "tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("int8: true, blocked: true", "int8: true, blocked: 2"))
    with pytest.raises(
        ManifestError, match=r"memory_attention\.attention\.blocked: expected true or false, got 2"
    ):
        load_model_manifest(bad)
