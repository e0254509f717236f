"""Preprocessing and mask postprocessing against SAMURAI's PyTorch code."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import requires_oracle, scipy_connected_components
from PIL import Image

from samurai_onnx.runtime.preprocess import (
    FrameError,
    fill_holes,
    mask_to_box,
    preprocess_frame,
    upsample_mask_logits,
    validate_frame,
)
from samurai_onnx.runtime.video import open_frames

log = logging.getLogger(__name__)


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 1.5)


@requires_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("size", [64, 1024])
def test_preprocess_matches_oracle_jpeg_folder(tmp_path: Path, size: int) -> None:
    import torch
    from sam2.utils.misc import _load_img_as_tensor, load_video_frames_from_jpg_images

    frames = [_smooth_image(90, 130, 0), _smooth_image(90, 130, 1)]
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    ref, ref_h, ref_w = load_video_frames_from_jpg_images(
        str(tmp_path), size, offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    img, h, w = _load_img_as_tensor(str(tmp_path / "0.jpg"), size)
    assert (h, w) == (ref_h, ref_w) == (90, 130)
    with open_frames(tmp_path) as src:
        assert src.size == (130, 90)
        decoded = list(src)  # OpenCV's JPEG decoder, as the runtime reads folders
    for i in range(2):
        pil_rgb = np.asarray(Image.open(tmp_path / f"{i}.jpg").convert("RGB"))
        np.testing.assert_array_equal(decoded[i], pil_rgb)  # same libjpeg output
        ours = preprocess_frame(decoded[i], size)
        assert ours.shape == (1, 3, size, size) and ours.dtype == np.float32
        err = float(np.abs(ours[0] - ref[i].numpy()).max())
        log.info("preprocess size %d frame %d max abs error vs oracle: %g", size, i, err)
        assert err <= 1e-6
    np.testing.assert_allclose(  # the un-normalised /255 image, too
        (np.asarray(Image.fromarray(decoded[0]).resize((size, size))) / 255.0).transpose(2, 0, 1),
        img.numpy(), rtol=0, atol=0,
    )


@pytest.mark.parametrize(
    ("low", "out"),
    [((256, 256), (480, 640)), ((256, 256), (1080, 1920)), ((256, 256), (100, 77)),
     ((64, 64), (64, 64)), ((31, 47), (33, 45)), ((256, 256), (128, 128)),
     ((64, 64), (32, 32))],
)
def test_upsample_matches_torch(low: tuple[int, int], out: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(low) * 20).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], size=out, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    ours = upsample_mask_logits(x, out)
    assert ours.shape == out and ours.dtype == np.float32
    err = float(np.abs(ours - ref).max())
    log.info("upsample %s -> %s max abs error vs torch: %g (%d of %d values differ)",
             low, out, err, int((ours != ref).sum()), ours.size)
    assert err <= 1e-5
    assert np.array_equal(ours > 0, ref > 0) or np.abs(ref[(ours > 0) != (ref > 0)]).max() < 1e-5


def _masks_with_holes(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = np.full((n, 1, h, w), 5.0, np.float32) + rng.standard_normal((n, 1, h, w))
    for k in range(n):
        logits[k, 0, :, : w // 5] = -3.0  # a big background region that must stay
        for _ in range(25):  # small holes, some touching diagonally
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            hh, ww = rng.integers(1, 5, 2)
            logits[k, 0, y : y + hh, x : x + ww] = -rng.random() * 4
        logits[k, 0][rng.random((h, w)) < 0.03] = 0.0  # exact zeros count as background
    return logits.astype(np.float32)


@requires_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("max_area", [1, 8, 20])
def test_fill_holes_matches_patched_oracle(monkeypatch: pytest.MonkeyPatch, max_area: int) -> None:
    import torch
    from sam2.utils import misc

    pytest.importorskip("scipy")
    monkeypatch.setattr(misc, "get_connected_components", scipy_connected_components)
    logits = _masks_with_holes(3, 48, 64, seed=max_area)
    ref = misc.fill_holes_in_mask_scores(torch.from_numpy(logits), max_area).numpy()
    ours = fill_holes(logits, max_area)
    assert (ref != logits).any()  # holes were filled
    np.testing.assert_array_equal(ours, ref)
    for k in range(3):  # the 2-D form is the same
        np.testing.assert_array_equal(fill_holes(logits[k, 0], max_area), ref[k, 0])


@requires_oracle
@pytest.mark.oracle
def test_unpatched_oracle_skips_filling_on_cpu() -> None:
    import torch
    from sam2.utils.misc import fill_holes_in_mask_scores

    logits = _masks_with_holes(1, 32, 32, seed=0)
    with pytest.warns(UserWarning, match="Skipping the post-processing"):
        ref = fill_holes_in_mask_scores(torch.from_numpy(logits), 8).numpy()
    np.testing.assert_array_equal(ref, logits)
    np.testing.assert_array_equal(fill_holes(logits, 0), logits)  # our switch: 0 = off
    assert not np.array_equal(fill_holes(logits, 8), logits)


def test_mask_to_box_matches_demo_formula() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((40, 50)) < rng.random() * 0.01
        got = mask_to_box(mask)
        nz = np.argwhere(mask)
        if len(nz) == 0:
            assert got is None
            continue
        (y0, x0), (y1, x1) = nz.min(axis=0).tolist(), nz.max(axis=0).tolist()
        assert got == (x0, y0, x1 - x0, y1 - y0)
    single = np.zeros((5, 5), bool)
    single[2, 3] = True
    assert mask_to_box(single) == (3, 2, 0, 0)
    assert mask_to_box(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (np.zeros((8, 8), np.uint8), "grayscale"),
        (np.zeros((8, 8, 1), np.uint8), "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), "RGBA"),
        (np.zeros((8, 8, 3), np.float32), "dtype float32"),
        (np.zeros((8, 8, 2), np.uint8), "HxWx3"),
        ([[1, 2, 3]], "not a numpy array"),
    ],
)
def test_frame_validation(frame: np.ndarray, needle: str) -> None:
    with pytest.raises(FrameError, match=needle) as info:
        preprocess_frame(frame, 32)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    validate_frame(np.zeros((8, 8, 3), np.uint8))  # a good frame passes
