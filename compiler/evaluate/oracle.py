"""Run SAMURAI's own PyTorch code (the oracle, pip package ``absolutely-not-samurai``) on a clip and
record what it decided on every frame, for parity tests and ``samurai-validate``.

The oracle is never a runtime dependency: it is imported lazily, here only. It keeps its decisions
inside the model and a dict of dicts, so this module observes them from outside: the chosen
candidate by wrapping ``_forward_sam_heads``, the memory frames by matching the tensors handed to
memory attention against each frame's stored memory, the Kalman state from the model's attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ORACLE_CONFIGS = {
    "tiny": "configs/samurai/sam2.1_hiera_t.yaml",
    "small": "configs/samurai/sam2.1_hiera_s.yaml",
    "base_plus": "configs/samurai/sam2.1_hiera_b+.yaml",
    "large": "configs/samurai/sam2.1_hiera_l.yaml",
}


class OracleUnavailable(RuntimeError):
    """The oracle package is not installed."""


@dataclass(frozen=True)
class OracleFrame:
    index: int
    mask: np.ndarray  # bool, video resolution
    low_res: np.ndarray  # [256, 256] mask logits as output (after hole filling)
    candidate: int | None  # decoder token of the chosen mask; None if the object is absent
    memory_frames: tuple[int, ...]
    kf_mean: np.ndarray | None
    kf_covariance: np.ndarray | None
    stable_frames: int
    kf_score: float | None


def strict_fp32() -> str:
    """Turn TF32 off for PyTorch's fp32 convolutions and matmuls; returns what was set.

    Why: on Ampere and newer GPUs PyTorch runs cuDNN convolutions of fp32 tensors in TF32 by
    default (``torch.backends.cudnn.conv.fp32_precision`` is ``"tf32"``; matmuls default to
    full fp32), so SAMURAI's code on a GPU with default settings is not the fp32 model: its patch
    embedding, FPN neck, memory encoder and mask upscaling convolutions round their inputs to
    10 mantissa bits. On an H200 with those defaults (issue 8), the fp32 bundle on the CPU
    provider, exact against the CPU oracle, followed that GPU reference at IoU 0.9985 only.
    The fp32 bundles run with TF32 off (``use_tf32: 0``), so the reference they are checked
    and timed against does too. SAMURAI's fp16 autocast is unaffected (its convolutions
    and matmuls run in fp16).
    """
    import torch

    # The flags every torch version reads (torch >= 2.9 maps them onto its per-backend
    # ``fp32_precision`` settings; setting those instead makes the old flags raise when read).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return "TF32 off"


def build_oracle(
    size: str,
    checkpoint: Path | None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
) -> Any:
    """SAMURAI's ``SAM2VideoPredictor`` on ``device`` with hydra ``++model.k=v`` overrides.

    On a GPU the process's fp32 arithmetic is made strict first (``strict_fp32``): the oracle
    is the fp32 model on every device.
    """
    if device != "cpu":
        strict_fp32()
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except Exception as exc:
        raise OracleUnavailable(
            "the oracle is not installed: SAM2_BUILD_CUDA=0 pip install --no-deps "
            "--no-build-isolation absolutely-not-samurai (plus hydra-core iopath loguru scipy)"
        ) from exc
    extra = [f"++model.{k}={v}" for k, v in (overrides or {}).items()]
    root = logging.getLogger()
    level = root.level
    try:
        return build_sam2_video_predictor(
            ORACLE_CONFIGS[size],
            str(checkpoint) if checkpoint else None,
            device=device,
            hydra_overrides_extra=extra,
        )
    finally:
        root.setLevel(level)


def run_oracle(
    predictor: Any,
    frames_dir: Path,
    box: tuple[float, float, float, float] | None,
    max_frames: int | None = None,
    *,
    points: list[tuple[float, float]] | None = None,
    labels: list[int] | None = None,
    mask: np.ndarray | None = None,
) -> Iterator[OracleFrame]:
    """Track one object through a folder of JPEG frames, one ``OracleFrame`` per frame.

    The object is prompted on the first frame with ``box`` (x, y, w, h), ``points`` (x, y) with
    ``labels`` (1 positive, 0 negative), or both, through ``add_new_points_or_box``; or with a
    boolean ``mask`` at the frames' size through ``add_new_mask``.
    """
    import torch

    seen: dict[str, Any] = {}
    heads = predictor._forward_sam_heads
    attention = predictor.memory_attention.forward

    def spy_heads(*args: Any, **kwargs: Any) -> Any:
        out = heads(*args, **kwargs)
        seen["heads"] = out
        return out

    def spy_attention(*args: Any, **kwargs: Any) -> Any:
        seen["memory"] = kwargs.get("memory", args[1] if len(args) > 1 else None)
        seen["ptr_tokens"] = kwargs.get("num_obj_ptr_tokens", 0)
        return attention(*args, **kwargs)

    predictor._forward_sam_heads = spy_heads
    predictor.memory_attention.forward = spy_attention
    # SAMURAI keeps its Kalman state on the model: a new clip starts from none.
    predictor.kf_mean = predictor.kf_covariance = None
    predictor.stable_frames = 0
    try:
        with torch.inference_mode():
            state = predictor.init_state(str(frames_dir))
            prompt: dict[str, Any] = {}
            if box is not None:
                x, y, w, h = box
                prompt["box"] = [x, y, x + w, y + h]
            if points:
                prompt["points"] = np.asarray(points, np.float32)
                prompt["labels"] = np.asarray(labels, np.int32)
            if mask is not None:
                predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=torch.from_numpy(mask))
            else:
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, **prompt)
            outputs = state["output_dict"]
            for idx, _, masks in predictor.propagate_in_video(
                state, max_frame_num_to_track=None if max_frames is None else max_frames - 1
            ):
                store = (
                    outputs["cond_frame_outputs"] if idx == 0 else outputs["non_cond_frame_outputs"]
                )
                out = store[idx]
                yield OracleFrame(
                    index=idx,
                    mask=(masks[0, 0] > 0).numpy(),
                    low_res=out["pred_masks"][0, 0].float().numpy(),
                    candidate=_candidate(seen.get("heads"), idx),
                    memory_frames=_memory_frames(seen, outputs, idx),
                    kf_mean=None if predictor.kf_mean is None else np.array(predictor.kf_mean),
                    kf_covariance=None
                    if predictor.kf_covariance is None
                    else np.array(predictor.kf_covariance),
                    stable_frames=int(predictor.stable_frames),
                    kf_score=None if out.get("kf_score") is None else float(out["kf_score"]),
                )
                seen.pop("memory", None)
    finally:
        predictor._forward_sam_heads = heads
        predictor.memory_attention.forward = attention


def _candidate(heads: Any, idx: int) -> int | None:
    """Token index of the chosen mask among the decoder's outputs (tracking frames only)."""
    if heads is None or idx == 0:
        return None
    multi, chosen = heads[0][0], heads[3][0, 0]
    if multi.shape[0] == 1 or bool((chosen <= -1000).all()):
        return None
    diffs = [float((multi[i] - chosen).abs().max()) for i in range(multi.shape[0])]
    return 1 + int(np.argmin(diffs))


def _memory_frames(seen: dict[str, Any], outputs: dict[str, Any], idx: int) -> tuple[int, ...]:
    """Which stored frames' memories were concatenated for memory attention at frame ``idx``."""
    memory = seen.get("memory")
    if memory is None or idx == 0:
        return ()
    n_ptr = int(seen.get("ptr_tokens") or 0)
    spatial = memory[: memory.shape[0] - n_ptr, 0].float()
    stored: dict[int, Any] = {}
    for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
        for frame, out in outputs[key].items():
            if frame < idx and out.get("maskmem_features") is not None:
                stored[frame] = out["maskmem_features"][0].float().flatten(1).T
    hw = next(iter(stored.values())).shape[0]
    frames = []
    for j in range(spatial.shape[0] // hw):
        block = spatial[j * hw : (j + 1) * hw]
        match = [f for f, feats in stored.items() if bool((feats == block).all())]
        frames.append(match[0] if match else -1)
    return tuple(frames)


def reference_checkpoint(
    model_name: str, expected_sha256: str, explicit: Path | None = None
) -> Path:
    """The checkpoint a bundle was built from: ``explicit`` or the cached official file.

    The oracle must run the same weights as the bundle, so the file's sha256 is compared with the
    one the compiler recorded in ``bundle.yaml``.
    """
    from samurai_onnx.compiler.checkpoint import cache_dir, sha256_of
    from samurai_onnx.compiler.manifest import load_model_manifest

    path = explicit or cache_dir() / load_model_manifest(model_name).checkpoint.file
    if not path.is_file():
        raise ValueError(
            f"checkpoint {path} not found; pass --checkpoint with the file the bundle was built from"
        )
    if expected_sha256 and sha256_of(path) != expected_sha256:
        raise ValueError(
            f"checkpoint {path} is not the one the bundle was built from (sha256 differs from "
            "bundle.yaml's source_checkpoint); pass --checkpoint with that file"
        )
    return path
