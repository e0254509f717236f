"""Parity of the SAM heads (prompt encoder, two-way transformer, mask decoder) with the oracle.

The oracle is SAMURAI's own SAM 2 code loaded with a seeded random tiny checkpoint; our modules
load the same ``sam_prompt_encoder.*`` / ``sam_mask_decoder.*`` keys with ``strict=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import build_oracle, requires_oracle
from torch import nn

from samurai_onnx.compiler.modeling.common import Attention, set_attention_lowering
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.mask_decoder import MaskDecoder, build_sam_heads
from samurai_onnx.compiler.modeling.prompt_encoder import PromptEncoder

LOG = logging.getLogger(__name__)
# build_oracle lowers the root logger to WARNING; keep the measured errors visible with -o log_cli.
LOG.setLevel(logging.INFO)
PE_TOL = 1e-5
DEC_TOL = 1e-4
CFG = SAM2Config()


def _sub_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def heads(tiny_checkpoint: Path) -> tuple[PromptEncoder, MaskDecoder]:
    """Our heads loaded (strict) from the random tiny checkpoint file."""
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    pe, dec = build_sam_heads(CFG)
    pe.load_state_dict(_sub_state_dict(state, "sam_prompt_encoder."), strict=True)
    dec.load_state_dict(_sub_state_dict(state, "sam_mask_decoder."), strict=True)
    return pe.eval(), dec.eval()


def test_build_shapes_without_oracle() -> None:
    """Shapes and the pad label, with the modules' own init (runs without the oracle)."""
    pe, dec = build_sam_heads(CFG)
    pe.eval()
    dec.eval()
    b, n = 2, 3
    coords = torch.rand(b, n, 2) * CFG.image_size
    labels = torch.tensor([[1, 0, -1], [2, 3, 1]], dtype=torch.int32)
    with torch.no_grad():
        sparse, dense = pe(coords, labels, torch.zeros(b, 1, 256, 256), torch.zeros(b))
        assert sparse.shape == (b, n + 1, CFG.d_model)
        assert dense.shape == (b, CFG.d_model, CFG.feat_size, CFG.feat_size)
        assert torch.equal(sparse[0, 2], pe.not_a_point_embed.weight[0])
        assert torch.equal(sparse[:, -1], pe.not_a_point_embed.weight.expand(b, -1))
        assert pe.get_dense_pe().shape == (1, CFG.d_model, CFG.feat_size, CFG.feat_size)
        outs = dec(
            torch.randn(b, 256, 64, 64),
            pe.get_dense_pe(),
            sparse,
            dense,
            torch.randn(b, 32, 256, 256),
            torch.randn(b, 64, 128, 128),
        )
    assert [tuple(o.shape) for o in outs] == [(b, 4, 256, 256), (b, 4), (b, 4, 256), (b, 1)]
    # All 2 * 3 + 1 attention layers are common.Attention, so the lowering switch reaches them.
    set_attention_lowering(dec, "sdpa")
    lowerings = [m.lowering for m in dec.modules() if isinstance(m, Attention)]
    assert lowerings == ["sdpa"] * (2 * CFG.two_way_depth + CFG.two_way_depth + 1)


PROMPTS = {
    "box": ([[100.0, 200.0], [600.0, 700.0]], [2, 3]),
    "box_and_points": (
        [[100.0, 200.0], [600.0, 700.0], [300.5, 400.0], [50.0, 900.0]],
        [2, 3, 1, 0],
    ),
    "points": ([[512.0, 512.0], [10.0, 1000.0], [777.0, 3.0]], [1, 1, 0]),
}


@requires_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_prompt_encoder_matches_oracle(
    heads: tuple[PromptEncoder, MaskDecoder], tiny_oracle: Any, prompt: str, with_mask: bool
) -> None:
    pe, _ = heads
    gen = torch.Generator().manual_seed(1)
    pts, labs = PROMPTS[prompt]
    coords = torch.tensor([pts, pts[::-1]])  # batch of 2, different orders
    labels = torch.tensor([labs, labs[::-1]], dtype=torch.int32)
    mask = torch.randn(2, 1, 256, 256, generator=gen) * 5.0
    has_mask = torch.full((2,), 1.0 if with_mask else 0.0)
    with torch.no_grad():
        ref_sparse, ref_dense = tiny_oracle.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=mask if with_mask else None
        )
        sparse, dense = pe(coords, labels, mask, has_mask)
        sparse_f, dense_f = pe(coords, labels.float(), mask, has_mask)  # float labels too
    errs = {
        "sparse": _max_err(sparse, ref_sparse),
        "dense": _max_err(dense, ref_dense),
        "sparse_float_labels": _max_err(sparse_f, ref_sparse),
        "dense_float_labels": _max_err(dense_f, ref_dense),
    }
    LOG.info("prompt encoder %s mask=%s: %s", prompt, with_mask, errs)
    for name, err in errs.items():
        assert err <= PE_TOL, f"{name}: max abs error {err:.3g} > {PE_TOL}"


@requires_oracle
@pytest.mark.oracle
def test_dense_pe_matches_oracle(
    heads: tuple[PromptEncoder, MaskDecoder], tiny_oracle: Any
) -> None:
    pe, _ = heads
    with torch.no_grad():
        err = _max_err(pe.get_dense_pe(), tiny_oracle.sam_prompt_encoder.get_dense_pe())
    assert err <= PE_TOL, f"dense PE: max abs error {err:.3g}"


@requires_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("prompt", ["box_and_points", "points"])
def test_mask_decoder_matches_oracle(
    heads: tuple[PromptEncoder, MaskDecoder], tiny_oracle: Any, prompt: str
) -> None:
    _, dec = heads
    gen = torch.Generator().manual_seed(2)
    pts, labs = PROMPTS[prompt]
    coords = torch.tensor([pts, pts[::-1]])
    labels = torch.tensor([labs, labs[::-1]], dtype=torch.int32)
    image = torch.randn(2, 256, 64, 64, generator=gen)
    s0 = torch.randn(2, 32, 256, 256, generator=gen)
    s1 = torch.randn(2, 64, 128, 128, generator=gen)
    oracle_pe = tiny_oracle.sam_prompt_encoder
    with torch.no_grad():
        sparse, dense = oracle_pe(points=(coords, labels), boxes=None, masks=None)
        image_pe = oracle_pe.get_dense_pe()
        ref = tiny_oracle.sam_mask_decoder.predict_masks(
            image_embeddings=image,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[s0, s1],
        )
        ours = dec(image, image_pe, sparse, dense, s0, s1)
    names = ("masks", "iou_pred", "mask_tokens_out", "object_score_logits")
    errs = {n: _max_err(o, r) for n, o, r in zip(names, ours, ref, strict=True)}
    LOG.info("mask decoder %s: %s (mask logit std %.3g)", prompt, errs, ref[0].std().item())
    for name, err in errs.items():
        assert err <= DEC_TOL, f"{name}: max abs error {err:.3g} > {DEC_TOL}"


@requires_oracle
@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "base_plus", "large"])
def test_strict_load_other_sizes(size: str) -> None:
    oracle = build_oracle(size)
    pe, dec = build_sam_heads(CFG)
    pe.load_state_dict(oracle.sam_prompt_encoder.state_dict(), strict=True)
    dec.load_state_dict(oracle.sam_mask_decoder.state_dict(), strict=True)


class _HeadsWrapper(nn.Module):
    """Prompt encoder + mask decoder in one graph, as the export smoke test needs."""

    def __init__(self, pe: PromptEncoder, dec: MaskDecoder) -> None:
        super().__init__()
        self.pe = pe
        self.dec = dec

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        high_res_feat_s0: torch.Tensor,
        high_res_feat_s1: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse, dense = self.pe(point_coords, point_labels, mask_input, has_mask_input)
        return self.dec(
            image_embeddings,
            self.pe.get_dense_pe(),
            sparse,
            dense,
            high_res_feat_s0,
            high_res_feat_s1,
        )


def _export_inputs(n_points: int, with_mask: bool, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([[2.0, 3.0, 1.0, 0.0, 1.0, -1.0][i % 6] for i in range(n_points)])
    return (
        torch.randn(1, 256, 64, 64, generator=gen),
        torch.rand(1, n_points, 2, generator=gen) * 1024.0,
        labels[None],
        torch.randn(1, 1, 256, 256, generator=gen) * 5.0,
        torch.tensor([1.0 if with_mask else 0.0]),
        torch.randn(1, 32, 256, 256, generator=gen),
        torch.randn(1, 64, 128, 128, generator=gen),
    )


@requires_oracle
@pytest.mark.oracle
def test_export_smoke(heads: tuple[PromptEncoder, MaskDecoder], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    wrapper = _HeadsWrapper(*heads).eval()
    names = [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "high_res_feat_s0",
        "high_res_feat_s1",
    ]
    outputs = ["masks", "iou_pred", "mask_tokens_out", "object_score_logits"]
    path = tmp_path / "sam_heads.onnx"
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            _export_inputs(2, True, seed=3),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=outputs,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n_points, with_mask in [(2, True), (4, False)]:
        inputs = _export_inputs(n_points, with_mask, seed=10 + n_points)
        with torch.no_grad():
            ref = wrapper(*inputs)
        got = sess.run(outputs, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})
        for name, r, g in zip(outputs, ref, got, strict=True):
            err = _max_err(torch.from_numpy(g), r)
            LOG.info("onnx %d points, %s: max abs error %.3g", n_points, name, err)
            assert err <= DEC_TOL, f"{n_points} points, {name}: max abs error {err:.3g}"
