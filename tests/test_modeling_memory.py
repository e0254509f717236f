"""Memory attention and memory encoder against the oracle, padded static calls, ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_oracle, requires_oracle

from samurai_onnx.compiler.modeling.common import set_attention_lowering
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.memory_attention import (
    MemoryAttention,
    build_memory_attention,
    fold_value_projections,
    memory_key_mask,
)
from samurai_onnx.compiler.modeling.memory_encoder import MemoryEncoder, build_memory_encoder

CFG = SAM2Config()
HW = CFG.feat_size**2
MA_INPUTS = ["curr", "curr_pos", "memory", "memory_pos", "ptr_memory", "ptr_pos"]


_STATE_CACHE: dict[Path, dict[str, torch.Tensor]] = {}


def _load(module: torch.nn.Module, ckpt: Path, prefix: str) -> torch.nn.Module:
    """Load the ``prefix`` keys of an official-format checkpoint, strictly (file read once)."""
    if ckpt not in _STATE_CACHE:
        _STATE_CACHE[ckpt] = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    state = _STATE_CACHE[ckpt]
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    module.load_state_dict(sub, strict=True)
    return module.eval()


def _ma_inputs(
    n: int, t: int, *, hw: int = HW, batch: int = 1, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """curr, curr_pos, memory, memory_pos, ptr_memory, ptr_pos (batch-first, ~N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    d, m = CFG.d_model, CFG.mem_dim
    shapes = [(hw, d), (hw, d), (n * hw, m), (n * hw, m), (t, m), (t, m)]
    return tuple(torch.randn(batch, *s, generator=g) for s in shapes)


def _oracle_ma(oracle: Any, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The oracle's memory attention (sequence-first, one concatenated memory) on our inputs."""
    curr, curr_pos, mem, mem_pos, ptr, ptr_pos = inputs
    out = oracle.memory_attention(
        curr=[curr.transpose(0, 1)],
        curr_pos=[curr_pos.transpose(0, 1)],
        memory=torch.cat([mem, ptr], dim=1).transpose(0, 1),
        memory_pos=torch.cat([mem_pos, ptr_pos], dim=1).transpose(0, 1),
        num_obj_ptr_tokens=ptr.shape[1],
    )
    return out.transpose(0, 1)


def _pad(
    inputs: tuple[torch.Tensor, ...], *, max_frames: int, max_ptr: int, hw: int, seed: int = 1
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Pad memory and pointers with random junk at the end, plus the key mask that hides it."""
    curr, curr_pos, mem, mem_pos, ptr, ptr_pos = inputs
    n, t = mem.shape[1] // hw, ptr.shape[1]
    g = torch.Generator().manual_seed(seed)

    def junk(x: torch.Tensor, extra: int) -> torch.Tensor:
        return torch.cat([x, 5 * torch.randn(x.shape[0], extra, x.shape[2], generator=g)], dim=1)

    extra_mem, extra_ptr = (max_frames - n) * hw, max_ptr - t
    padded = (
        curr, curr_pos, junk(mem, extra_mem), junk(mem_pos, extra_mem),
        junk(ptr, extra_ptr), junk(ptr_pos, extra_ptr),
    )  # fmt: skip
    mask = memory_key_mask(
        num_frames=n, num_ptr_tokens=t, max_frames=max_frames, max_ptr_tokens=max_ptr,
        tokens_per_frame=hw,
    )  # fmt: skip
    return padded, mask


def _max_err(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.fixture(scope="module")
def ours_ma(tiny_checkpoint: Path) -> MemoryAttention:
    ma = _load(build_memory_attention(CFG), tiny_checkpoint, "memory_attention.")
    assert isinstance(ma, MemoryAttention)
    return ma


@pytest.fixture(scope="module")
def ours_me(tiny_checkpoint: Path) -> MemoryEncoder:
    me = _load(build_memory_encoder(CFG), tiny_checkpoint, "memory_encoder.")
    assert isinstance(me, MemoryEncoder)
    return me


def _small_grid_ma(feat_size: int = 16, seed: int = 0) -> MemoryAttention:
    """A memory attention for a small grid (cheap export tests); random weights."""
    torch.manual_seed(seed)
    cfg = SAM2Config(image_size=feat_size * CFG.backbone_stride)
    return build_memory_attention(cfg).eval()


@requires_oracle
@pytest.mark.parametrize(("n", "t"), [(1, 4), (2, 8), pytest.param(7, 64, marks=pytest.mark.slow)])
def test_memory_attention_matches_oracle(
    tiny_oracle: Any, ours_ma: MemoryAttention, n: int, t: int
) -> None:
    inputs = _ma_inputs(n, t, seed=n * 100 + t)
    with torch.no_grad():
        ref = _oracle_ma(tiny_oracle, inputs)
        out = ours_ma(*inputs)
    err = _max_err(out, ref)
    assert out.shape == (1, HW, CFG.d_model)
    assert err <= 1e-4, f"N={n} T={t}: max abs error {err:.3g} (output max {ref.abs().max():.3g})"


@requires_oracle
def test_memory_attention_batch_and_other_grid_matches_oracle(
    tiny_oracle: Any, tiny_checkpoint: Path
) -> None:
    """Batch 2 on a 16x16 grid: the RoPE tables follow the configured grid, batch is free."""
    ours = _load(_small_grid_ma(16), tiny_checkpoint, "memory_attention.")
    inputs = _ma_inputs(3, 8, hw=16 * 16, batch=2, seed=7)
    with torch.no_grad():
        ref = _oracle_ma(tiny_oracle, inputs)
        out = ours(*inputs)
    err = _max_err(out, ref)
    assert err <= 1e-4, f"B=2 16x16 N=3 T=8: max abs error {err:.3g}"


@requires_oracle
@pytest.mark.parametrize("feat_size", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_padded_static_call_equals_unpadded(tiny_checkpoint: Path, feat_size: int) -> None:
    """The static graph's padding (7 frames, 16*4 pointer tokens) is invisible behind the mask.

    32x32 by default (the 64x64 run needs ~1 GB of attention logits per layer and ~25 s on CPU).
    """
    hw = feat_size**2
    ma = _load(_small_grid_ma(feat_size), tiny_checkpoint, "memory_attention.")
    inputs = _ma_inputs(2, 8, hw=hw, seed=3)
    max_ptr = CFG.max_obj_ptrs_in_encoder * CFG.ptr_tokens_per_frame
    padded, mask = _pad(inputs, max_frames=CFG.num_maskmem, max_ptr=max_ptr, hw=hw)
    assert padded[2].shape[1] == 7 * hw and padded[4].shape[1] == 64
    with torch.no_grad():
        ref = ma(*inputs)
        out = ma(*padded, key_mask=mask)
    err = _max_err(out, ref)
    assert err <= 1e-5, f"{feat_size}x{feat_size} padded vs unpadded: max abs error {err:.3g}"


def test_masked_sdpa_lowering_equals_matmul() -> None:
    """Both attention lowerings honour the additive key mask the same way."""
    ma = _small_grid_ma(8)
    inputs = _ma_inputs(2, 4, hw=64, seed=5)
    padded, mask = _pad(inputs, max_frames=4, max_ptr=12, hw=64)
    with torch.no_grad():
        ref = ma(*inputs)
        set_attention_lowering(ma, "sdpa")
        out = ma(*padded, key_mask=mask)
    err = _max_err(out, ref)
    assert err <= 1e-5, f"sdpa padded vs matmul unpadded: max abs error {err:.3g}"


@requires_oracle
@pytest.mark.parametrize("lowering", ["matmul", "ort_mha"])
def test_folded_value_projection_matches_oracle(
    tiny_oracle: Any, tiny_checkpoint: Path, lowering: str
) -> None:
    """Attending over the raw 64-channel memories and folding out_proj . v_proj (what the
    exported graphs do) gives the oracle's numbers, padded with the mask or not."""
    ma = _load(_small_grid_ma(16), tiny_checkpoint, "memory_attention.")
    fold_value_projections(ma)
    set_attention_lowering(ma, lowering)
    inputs = _ma_inputs(3, 8, hw=16 * 16, seed=11)
    padded, mask = _pad(inputs, max_frames=7, max_ptr=64, hw=16 * 16)
    with torch.no_grad():
        ref = _oracle_ma(tiny_oracle, inputs)
        out = ma(*inputs)
        out_padded = ma(*padded, key_mask=mask)
    assert ma.layers[0].cross_attn_image.fold_values
    assert _max_err(out, ref) <= 1e-4, f"folded ({lowering}): {_max_err(out, ref):.3g}"
    assert _max_err(out_padded, ref) <= 1e-4, f"folded+mask: {_max_err(out_padded, ref):.3g}"
    fold_value_projections(ma, False)
    with torch.no_grad():
        unfolded = ma(*inputs)
    # A different order of operations: not bit-identical, but far inside fp32 tolerance.
    assert _max_err(out, unfolded) <= 1e-5


def test_rope_tables_are_not_state_dict_keys() -> None:
    ma = build_memory_attention(CFG)
    assert not [k for k in ma.state_dict() if "rope" in k]
    assert ma.layers[0].cross_attn_image.rope_cos.shape == (HW, CFG.d_model // 2)


@requires_oracle
def test_memory_encoder_matches_oracle(tiny_oracle: Any, ours_me: MemoryEncoder) -> None:
    g = torch.Generator().manual_seed(11)
    pix_feat = torch.randn(1, CFG.d_model, CFG.feat_size, CFG.feat_size, generator=g)
    logits = 4 * torch.randn(1, 1, CFG.image_size, CFG.image_size, generator=g)
    masks = torch.sigmoid(logits) * CFG.sigmoid_scale_for_mem_enc + CFG.sigmoid_bias_for_mem_enc
    with torch.no_grad():
        ref = tiny_oracle.memory_encoder(pix_feat, masks, skip_mask_sigmoid=True)
        feats, pos = ours_me(pix_feat, masks)
    err_f = _max_err(feats, ref["vision_features"])
    err_p = _max_err(pos, ref["vision_pos_enc"][0])
    assert feats.shape == pos.shape == (1, CFG.mem_dim, CFG.feat_size, CFG.feat_size)
    assert err_f <= 1e-4, f"memory features: max abs error {err_f:.3g}"
    assert err_p <= 1e-4, f"memory pos enc: max abs error {err_p:.3g}"


@requires_oracle
@pytest.mark.parametrize("size", ["small", "base_plus", "large"])
def test_oracle_weights_load_strict(size: str) -> None:
    oracle = build_oracle(size)
    cfg = SAM2Config(name=size)
    build_memory_attention(cfg).load_state_dict(oracle.memory_attention.state_dict(), strict=True)
    build_memory_encoder(cfg).load_state_dict(oracle.memory_encoder.state_dict(), strict=True)


def _ort_session(path: Path):  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_memory_attention_onnx_dynamic_n_and_t(tmp_path: Path) -> None:
    """One export with dynamic N and T serves every memory size (no baked-in shapes)."""
    pytest.importorskip("onnx")
    ma, hw = _small_grid_ma(16), 256
    path = tmp_path / "memory_attention.onnx"
    dyn = {name: {1: "num_mem_tokens"} for name in ("memory", "memory_pos")}
    dyn.update({name: {1: "num_ptr_tokens"} for name in ("ptr_memory", "ptr_pos")})
    torch.onnx.export(
        ma, _ma_inputs(2, 8, hw=hw), str(path), dynamo=False, opset_version=17,
        input_names=MA_INPUTS, output_names=["pix_feat_with_mem"], dynamic_axes=dyn,
    )  # fmt: skip
    session = _ort_session(path)
    for n, t in [(1, 4), (3, 8)]:
        inputs = _ma_inputs(n, t, hw=hw, seed=n + t)
        with torch.no_grad():
            ref = ma(*inputs)
        out = session.run(None, {k: v.numpy() for k, v in zip(MA_INPUTS, inputs, strict=True)})[0]
        err = _max_err(out, ref)
        assert err <= 1e-4, f"ONNX N={n} T={t}: max abs error {err:.3g}"


@pytest.mark.slow
def test_memory_attention_onnx_static_padded(tmp_path: Path) -> None:
    """The static-shape graph (mask as an input) gives the unpadded torch result."""
    pytest.importorskip("onnx")
    ma, hw, max_frames, max_ptr = _small_grid_ma(16), 256, 7, 64
    path = tmp_path / "memory_attention_static.onnx"
    example, mask = _pad(_ma_inputs(1, 4, hw=hw), max_frames=max_frames, max_ptr=max_ptr, hw=hw)
    torch.onnx.export(
        ma, (*example, mask), str(path), dynamo=False, opset_version=17,
        input_names=[*MA_INPUTS, "key_mask"], output_names=["pix_feat_with_mem"],
    )  # fmt: skip
    session = _ort_session(path)
    for n, t in [(2, 8), (7, 64)]:
        inputs = _ma_inputs(n, t, hw=hw, seed=n * t)
        padded, mask = _pad(inputs, max_frames=max_frames, max_ptr=max_ptr, hw=hw)
        feeds = {
            k: v.numpy() for k, v in zip([*MA_INPUTS, "key_mask"], [*padded, mask], strict=True)
        }
        with torch.no_grad():
            ref = ma(*inputs)
        err = _max_err(session.run(None, feeds)[0], ref)
        assert err <= 1e-4, f"static ONNX N={n} T={t}: max abs error {err:.3g}"


@pytest.mark.slow
def test_memory_encoder_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    me = build_memory_encoder(CFG).eval()
    g = torch.Generator().manual_seed(2)
    pix_feat = torch.randn(1, CFG.d_model, CFG.feat_size, CFG.feat_size, generator=g)
    masks = 20 * torch.rand(1, 1, CFG.image_size, CFG.image_size, generator=g) - 10
    path = tmp_path / "memory_encoder.onnx"
    torch.onnx.export(
        me, (pix_feat, masks), str(path), dynamo=False, opset_version=17,
        input_names=["pix_feat", "masks"], output_names=["maskmem_features", "maskmem_pos_enc"],
    )  # fmt: skip
    with torch.no_grad():
        ref_f, ref_p = me(pix_feat, masks)
    out_f, out_p = _ort_session(path).run(
        None, {"pix_feat": pix_feat.numpy(), "masks": masks.numpy()}
    )
    err_f, err_p = _max_err(out_f, ref_f), _max_err(out_p, ref_p)
    assert err_f <= 1e-4, f"ONNX memory features: max abs error {err_f:.3g}"
    assert err_p <= 1e-4, f"ONNX memory pos enc: max abs error {err_p:.3g}"
