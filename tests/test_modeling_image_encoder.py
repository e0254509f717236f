"""Parity of our Hiera + FPN image encoder with the oracle's, weight loading for all four sizes,
and a TorchScript-exporter ONNX smoke test."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import build_oracle, requires_oracle

from samurai_onnx.compiler.modeling.common import set_attention_lowering
from samurai_onnx.compiler.modeling.config import HieraConfig, SAM2Config
from samurai_onnx.compiler.modeling.hiera import (
    MultiScaleAttention,
    window_partition,
    window_unpartition,
)
from samurai_onnx.compiler.modeling.image_encoder import ImageEncoder, build_image_encoder

logger = logging.getLogger(__name__)

TOL = 1e-4
PREFIX = "image_encoder."

# Hiera settings of configs/samurai/sam2.1_hiera_{s,b+,l}.yaml (tiny is HieraConfig's default).
HIERA = {
    "tiny": HieraConfig(),
    "small": HieraConfig(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 11, 2),
        global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "base_plus": HieraConfig(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "large": HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
        # The yaml says [7, 7] for large (the Hiera default of (14, 14) is overridden).
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}


def _ours(size: str) -> ImageEncoder:
    return build_image_encoder(SAM2Config(name=size, hiera=HIERA[size])).eval()


def _max_err(ref: dict[str, list[torch.Tensor]], ours: tuple[list[torch.Tensor], ...]) -> list:
    errs = []
    for name, got_list in zip(("backbone_fpn", "vision_pos_enc"), ours, strict=True):
        assert len(ref[name]) == len(got_list), name
        for i, (want, got) in enumerate(zip(ref[name], got_list, strict=True)):
            shapes = f"{tuple(got.shape)} != {tuple(want.shape)}"
            assert want.shape == got.shape, f"{name}[{i}]: {shapes}"
            errs.append((f"{name}[{i}]", (want - got).abs().max().item()))
    return errs


def _assert_close(errs: list) -> None:
    worst = max(e for _, e in errs)
    logger.info("image encoder max abs errors: %s", errs)
    assert worst <= TOL, f"max abs error {worst:.3g} > {TOL}: {errs}"


def test_window_partition_roundtrip_with_padding() -> None:
    x = torch.randn(2, 10, 13, 5)
    windows, pad_hw = window_partition(x, 4)
    assert pad_hw == (12, 16)
    assert windows.shape == (2 * 3 * 4, 4, 4, 5)
    assert torch.equal(window_unpartition(windows, 4, pad_hw, (10, 13)), x)


def test_attention_lowering_switch_reaches_every_block() -> None:
    torch.manual_seed(0)
    model = _ours("tiny")
    attns = [m for m in model.modules() if isinstance(m, MultiScaleAttention)]
    assert len(attns) == sum(HIERA["tiny"].stages)
    x = torch.randn(1, 3, 256, 256)  # padded windows in stages 3 and 4 at this size
    with torch.no_grad():
        ref = model(x)
        set_attention_lowering(model, "sdpa")
        assert all(m.lowering == "sdpa" for m in attns)
        got = model(x)
    for want, have in zip(ref[0] + ref[1], got[0] + got[1], strict=True):
        assert (want - have).abs().max().item() <= TOL


@requires_oracle
def test_tiny_matches_oracle_1024(tiny_checkpoint, tiny_oracle) -> None:
    state = torch.load(tiny_checkpoint, map_location="cpu")["model"]
    enc_state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    model = _ours("tiny")
    model.load_state_dict(enc_state, strict=True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        ref = tiny_oracle.image_encoder(x)
        ours = model(x)
    assert [tuple(t.shape) for t in ours[0]] == [
        (1, 256, 256, 256),
        (1, 256, 128, 128),
        (1, 256, 64, 64),
    ]
    _assert_close(_max_err(ref, ours))


@requires_oracle
@pytest.mark.parametrize("size", ["small", "base_plus", "large"])
def test_oracle_weights_load_strict(size: str) -> None:
    oracle_state = build_oracle(size).image_encoder.state_dict()
    model = _ours(size)
    model.load_state_dict(oracle_state, strict=True)
    assert model.trunk.channel_list == list(HIERA[size].channel_list)


@requires_oracle
def test_small_matches_oracle_512() -> None:
    """A 512-pixel input keeps this cheap and also exercises window padding (32 % 14 != 0)."""
    from samurai_onnx.compiler.checkpoint import randomize_state_dict

    oracle = build_oracle("small").image_encoder.eval()
    state = randomize_state_dict(oracle.state_dict(), seed=1)
    oracle.load_state_dict(state, strict=True)
    model = _ours("small")
    model.load_state_dict(state, strict=True)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ref = oracle(x)
        ours = model(x)
    _assert_close(_max_err(ref, ours))


class _Flat(torch.nn.Module):
    """The encoder with its two lists flattened into one output tuple, as the exporter needs."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fpn, pos = self.encoder(x)
        return (*fpn, *pos)


@requires_oracle
@pytest.mark.slow
# Window padding and reshapes read the static map sizes as Python ints on purpose (the graph is
# exported for one image size), which the tracer reports once per block.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_tiny_onnx_export_matches_torch(tiny_checkpoint, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    state = torch.load(tiny_checkpoint, map_location="cpu")["model"]
    model = _ours("tiny")
    model.load_state_dict(
        {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True
    )
    flat = _Flat(model).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1024, 1024)
    path = tmp_path / "image_encoder.onnx"
    with torch.no_grad():
        want = flat(x)
        torch.onnx.export(flat, (x,), str(path), dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(got) == 6
    errs = [
        (f"out[{i}]", float((torch.from_numpy(g) - w).abs().max()))
        for i, (g, w) in enumerate(zip(got, want, strict=True))
    ]
    _assert_close(errs)
