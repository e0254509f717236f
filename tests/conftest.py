"""Shared fixtures: the oracle (SAMURAI's own PyTorch code) and seeded random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_VIDEOS = Path(os.environ.get("SAMURAI_SHARED_VIDEOS", REPO.parent / "shared" / "videos"))
ORACLE_CONFIGS = {
    "tiny": "configs/samurai/sam2.1_hiera_t.yaml",
    "small": "configs/samurai/sam2.1_hiera_s.yaml",
    "base_plus": "configs/samurai/sam2.1_hiera_b+.yaml",
    "large": "configs/samurai/sam2.1_hiera_l.yaml",
}


def oracle_available() -> bool:
    try:
        import sam2  # noqa: F401
    except Exception:
        return False
    return True


requires_oracle = pytest.mark.skipif(
    not oracle_available(),
    reason="the oracle (pip package absolutely-not-samurai, import name sam2) is not installed",
)


def build_oracle(size: str = "tiny", ckpt: Path | None = None, **overrides: object):
    """SAMURAI's SAM2VideoPredictor on the CPU, optionally loaded from ``ckpt``.

    ``overrides`` are hydra overrides, e.g. ``fill_hole_area=0``.
    """
    import logging

    from sam2.build_sam import build_sam2_video_predictor

    logging.getLogger().setLevel(logging.WARNING)
    extra = [f"++model.{k}={v}" for k, v in overrides.items()]
    return build_sam2_video_predictor(
        ORACLE_CONFIGS[size],
        str(ckpt) if ckpt else None,
        device="cpu",
        hydra_overrides_extra=extra,
    )


def make_random_checkpoint(path: Path, size: str = "tiny", seed: int = 0) -> Path:
    import torch

    from samurai_onnx.compiler.checkpoint import randomize_state_dict, save_official_format

    torch.manual_seed(seed)
    template = build_oracle(size).state_dict()
    return save_official_format(randomize_state_dict(template, seed=seed), path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-weight SAM 2.1 tiny checkpoint in the official file format."""
    if not oracle_available():
        pytest.skip("the oracle (absolutely-not-samurai) is needed to make the test checkpoint")
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="session")
def tiny_oracle(tiny_checkpoint: Path):
    """The oracle loaded with the random tiny checkpoint, in eval mode."""
    model = build_oracle("tiny", tiny_checkpoint)
    return model.eval()
