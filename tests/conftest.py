"""Shared fixtures: the oracle (SAMURAI's own PyTorch code) and seeded random checkpoints."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from samurai_onnx.compiler.evaluate.synthetic import BASE_BOX, synthetic_frames

__all__ = ["SMALL", "SYNTHETIC_BOX", "synthetic_frames"]

# The image size of ``tiny256_bundle``. SAMURAI's code follows ``model.image_size`` as the
# compiler does, so the oracle built with ``image_size=SMALL`` is that bundle's reference: tests of
# the tracking loop's logic (prompts, objects, plumbing) compare at 256 pixels, ~10x cheaper on 2
# cores, and the 1024-pixel parity stays in tests/test_e2e_parity.py.
SMALL = 256

REPO = Path(__file__).resolve().parent.parent
# The tests' own cache folder (checkpoints, timed graph forms, OpenVINO models), never the user's.
os.environ.setdefault("SAMURAI_ONNX_CACHE", tempfile.mkdtemp(prefix="samurai-onnx-test-cache-"))
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


def scipy_connected_components(mask):  # type: ignore[no-untyped-def]
    """CPU stand-in for SAM 2's CUDA kernel: (labels, areas), each [N, 1, H, W] int32."""
    import torch
    from scipy import ndimage

    m = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(m.shape, np.int32)
    areas = np.zeros(m.shape, np.int32)
    for n in range(m.shape[0]):
        lab, num = ndimage.label(m[n, 0], structure=np.ones((3, 3)))
        counts = np.bincount(lab.ravel(), minlength=num + 1)
        counts[0] = 0
        labels[n, 0] = lab
        areas[n, 0] = counts[lab]
    return torch.from_numpy(labels), torch.from_numpy(areas)


def make_random_checkpoint(path: Path, size: str = "tiny", seed: int = 0) -> Path:
    import torch

    from samurai_onnx.compiler.checkpoint import randomize_state_dict, save_official_format

    torch.manual_seed(seed)
    template = build_oracle(size).state_dict()
    return save_official_format(randomize_state_dict(template, seed=seed), path)


# Developers may set SAMURAI_TEST_CACHE to a folder to reuse the random checkpoint and the compiled
# tiny bundle across pytest runs (each takes minutes to make); CI leaves it unset.
TEST_CACHE = os.environ.get("SAMURAI_TEST_CACHE")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-weight SAM 2.1 tiny checkpoint in the official file format."""
    if not oracle_available():
        pytest.skip("the oracle (absolutely-not-samurai) is needed to make the test checkpoint")
    if TEST_CACHE:
        cached = Path(TEST_CACHE) / "sam2.1_hiera_tiny.pt"
        return cached if cached.is_file() else make_random_checkpoint(cached)
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="session")
def tiny_oracle(tiny_checkpoint: Path):
    """The oracle loaded with the random tiny checkpoint, in eval mode."""
    model = build_oracle("tiny", tiny_checkpoint)
    return model.eval()


def _compiler_stamp() -> str:
    """Hash of everything a compiled bundle depends on, so a cached bundle from older code is
    rebuilt instead of silently tested."""
    digest = hashlib.sha256()
    files = sorted(
        [
            *(f for f in (REPO / "compiler").rglob("*.py") if "evaluate" not in f.parts),
            *(REPO / "manifests").glob("*.yaml"),
            *(REPO / "targets").glob("*.yaml"),
            REPO / "runtime" / "bundle.py",
            REPO / "runtime" / "contract.py",
            REPO / "runtime" / "preprocess.py",
            REPO / "runtime" / "documents.py",
            REPO / "scripts" / "small_manifest.py",
        ]
    )
    for f in files:
        digest.update(f.relative_to(REPO).as_posix().encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random checkpoint compiled for the cpu target (fp32, dynamic memory)."""

    def build(out_dir: Path) -> Path:
        from samurai_onnx.compiler.build import compile_bundle  # only when a build is needed

        return compile_bundle(
            REPO / "manifests" / "tiny.yaml", "cpu", checkpoint=tiny_checkpoint, out_dir=out_dir
        )

    if not TEST_CACHE:
        return build(tmp_path_factory.mktemp("bundles") / "tiny-cpu")
    cached = Path(TEST_CACHE) / "tiny-cpu"
    stamp_file = Path(TEST_CACHE) / "tiny-cpu.stamp"
    stamp = _compiler_stamp()
    fresh = stamp_file.is_file() and stamp_file.read_text() == stamp
    if fresh and (cached / "bundle.yaml").is_file():
        return cached
    out = build(cached)
    stamp_file.write_text(stamp)
    return out


def _small_manifest(path: Path, image_size: int) -> Path:
    """``scripts/small_manifest.py``'s tiny manifest at ``image_size`` pixels, written to ``path``."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location(
        "small_manifest", REPO / "scripts" / "small_manifest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = module.small_manifest(REPO / "manifests" / "tiny.yaml", image_size)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny256_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random checkpoint as a 256-pixel model for the cpu target: the same graphs and
    tracking loop at ~0.3 s a frame, for tests that must track many frames (signals, outputs)."""

    def build(out_dir: Path) -> Path:
        from samurai_onnx.compiler.build import compile_bundle

        manifest = _small_manifest(out_dir.parent / "tiny-256.yaml", SMALL)
        return compile_bundle(manifest, "cpu", checkpoint=tiny_checkpoint, out_dir=out_dir)

    if not TEST_CACHE:
        return build(tmp_path_factory.mktemp("bundles") / "tiny-256-cpu")
    cached = Path(TEST_CACHE) / "tiny-256-cpu"
    stamp_file = Path(TEST_CACHE) / "tiny-256-cpu.stamp"
    stamp = _compiler_stamp()
    if (
        stamp_file.is_file()
        and stamp_file.read_text() == stamp
        and (cached / "bundle.yaml").is_file()
    ):
        return cached
    out = build(cached)
    stamp_file.write_text(stamp)
    return out


def same_rows(want: list[list[Any]], got: list[list[Any]]) -> None:
    """Two runs' results, one row per frame of ``(obj_id, mask, box, score, present)`` per
    object, are equal: the same objects, masks bit for bit, boxes, scores and presence."""
    for t, (a, b) in enumerate(zip(want, got, strict=True)):
        assert [o[0] for o in a] == [o[0] for o in b], t
        for (oid, m1, box1, s1, p1), (_, m2, box2, s2, p2) in zip(a, b, strict=True):
            where = f"frame {t}, object {oid}"
            np.testing.assert_array_equal(m1, m2, err_msg=where)
            assert (box1, s1, p1) == (box2, s2, p2), where


def write_frames(frames: list[np.ndarray], folder: Path) -> Path:
    """RGB frames -> a folder of JPEGs (the oracle reads JPEG folders)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(
            str(folder / f"{i:05d}.jpg"),
            cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
    return folder


SYNTHETIC_BOX = BASE_BOX


def run_unoptimized(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """A one-input ONNX model (``x``) on the CPU provider with graph optimizations off: the
    graph as a pass wrote it, not as ONNX Runtime would fuse it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])
