"""Frame preprocessing and mask postprocessing, numerically matching SAMURAI's PyTorch code.

* ``preprocess_frame`` reproduces SAM 2's JPEG-folder loader (PIL resize with PIL's default
  resampling, /255 in float64, cast to float32, then float32 normalisation).
* ``upsample_mask_logits`` reproduces ``F.interpolate(bilinear, align_corners=False)``; OpenCV's
  INTER_LINEAR differs from it by up to ~1e-3 on large upscales, so it is done here in numpy with
  PyTorch's float32 coordinate/weight arithmetic and FMA rounding (bit-exact on upscales from
  256x256 to common video sizes, within 1 ulp otherwise).
* ``fill_holes`` reproduces ``fill_holes_in_mask_scores`` with OpenCV connected components
  (8-connectivity, like SAM 2's CUDA kernel). SAM 2 silently skips it on CPU, hence the switch.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
HOLE_FILL_SCORE = 0.1


class FrameError(ValueError):
    """A frame that the model cannot take (wrong dtype or channel count)."""


def validate_frame(frame: np.ndarray, where: str = "frame") -> None:
    """Raise :class:`FrameError` unless ``frame`` is an RGB uint8 HxWx3 array.

    Catching this here gives a one-line fix instead of a shape error deep in ONNX Runtime.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(
            f"{where} is a {type(frame).__name__}, not a numpy array; pass np.asarray(frame)"
        )
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        raise FrameError(
            f"{where} is grayscale (shape {frame.shape}); convert it to RGB with "
            "cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)"
        )
    if frame.ndim == 3 and frame.shape[2] == 4:
        raise FrameError(
            f"{where} has 4 channels (RGBA, shape {frame.shape}); drop alpha with "
            "frame[..., :3] or cv2.cvtColor(frame, cv2.COLOR_RGBA2RGB)"
        )
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise FrameError(f"{where} has shape {frame.shape}; expected an HxWx3 RGB image")
    if frame.dtype != np.uint8:
        raise FrameError(
            f"{where} has dtype {frame.dtype}; expected uint8 in 0..255, convert with "
            "np.clip(frame * 255, 0, 255).astype(np.uint8) (floats in 0..1)"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f"{where} is empty (shape {frame.shape}); pass a non-empty image")


def preprocess_frame(
    frame_rgb: np.ndarray,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """RGB uint8 HxWx3 -> normalised [1, 3, S, S] float32 model input.

    The resize is PIL's default filter on purpose: SAMURAI loads frames that way, and a different
    filter shifts the image embedding enough to change the chosen masks on hard frames.
    """
    validate_frame(frame_rgb)
    resized = np.asarray(Image.fromarray(frame_rgb).resize((image_size, image_size)))
    img = (resized / 255.0).astype(np.float32).transpose(2, 0, 1)
    img = img - np.asarray(mean, dtype=np.float32)[:, None, None]
    img = img / np.asarray(std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray(img[None])


def _linear_indices_weights(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear (align_corners=False), in float32.

    PyTorch's CPU build fuses ``scale * (i + 0.5) - 0.5`` into one FMA (a single rounding);
    rounding twice moves the weights by up to ~1e-6 and the output by up to ~1e-3, so the FMA
    is emulated in float64 (the float32 product is exact there) and rounded once.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    idx0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - idx0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    lam0 = np.float32(1.0) - lam1
    idx1 = idx0 + (idx0 < in_size - 1)
    return idx0, idx1, lam0.astype(np.float32), lam1.astype(np.float32)


def upsample_mask_logits(low_res: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize [h, w] mask logits to ``out_hw`` exactly like SAM 2 does for video-res masks.

    The mask threshold is at 0, so logits near 0 flip pixels if the interpolation differs.
    """
    x = np.asarray(low_res, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"low_res must be [h, w], got shape {x.shape}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if x.shape == (out_h, out_w):
        return x.copy()
    w0, w1, lw0, lw1 = _linear_indices_weights(x.shape[1], out_w)
    h0, h1, lh0, lh1 = _linear_indices_weights(x.shape[0], out_h)
    rows = _fma(x[:, w0], lw0, x[:, w1] * lw1)  # inner (width) pass, as PyTorch nests it
    out = np.empty((out_h, out_w), np.float32)
    for start in range(0, out_h, 64):  # row blocks keep the float64 temporaries in cache
        sl = slice(start, start + 64)
        out[sl] = _fma(rows[h0[sl]], lh0[sl, None], rows[h1[sl]] * lh1[sl, None])
    return out


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, like the FMA PyTorch's compiled kernel uses.

    The float32 product is exact in float64, so only the final sum is rounded twice (to
    float64, then float32), which almost never differs from a true FMA.
    """
    return (a.astype(np.float64) * b + c).astype(np.float32)


def fill_holes(mask_logits: np.ndarray, max_area: int) -> np.ndarray:
    """Set small background holes (area <= ``max_area``, 8-connected) to a 0.1 score.

    Works on [h, w] or any [..., h, w] stack; ``max_area <= 0`` turns it off (returns a copy),
    which is what SAM 2 effectively does on CPU where its CUDA kernel is missing.
    """
    scores = np.asarray(mask_logits, dtype=np.float32)
    out = scores.copy()
    if max_area <= 0:
        return out
    if scores.ndim < 2:
        raise ValueError(f"mask_logits must be [..., h, w], got shape {scores.shape}")
    flat = out.reshape(-1, *scores.shape[-2:])
    for plane in flat:
        background = (plane <= 0).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            background, connectivity=8, ltype=cv2.CV_32S
        )
        if n <= 1:
            continue
        areas = stats[:, cv2.CC_STAT_AREA]
        small = areas <= max_area
        small[0] = False  # label 0 is the foreground (mask > 0)
        plane[small[labels]] = np.float32(HOLE_FILL_SCORE)
    return out


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """LaSOT-style (x, y, w, h) of ``mask > 0`` as SAMURAI's demo computes it, None if empty.

    Note w = max col - min col (not +1), matching SAMURAI's reported boxes.
    """
    m = np.asarray(mask) > 0
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1])
    x0, x1 = int(cols[0]), int(cols[-1])
    return (x0, y0, x1 - x0, y1 - y0)
