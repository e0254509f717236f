"""The user guide's Python lines and commands work as written (from the repository root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, requires_oracle, synthetic_frames, write_frames


def test_predictor_import_as_the_guide_writes_it() -> None:
    """``from scripts.onnx_inference import SAMURAIONNXPredictor``: works, prints nothing, and
    does not import torch."""
    code = (
        "import sys\n"
        "from scripts.onnx_inference import SAMURAIONNXPredictor\n"
        "assert SAMURAIONNXPredictor.__name__ == 'SAMURAIONNXPredictor'\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, proc.stderr


def test_validate_default_box() -> None:
    sys.path.insert(0, str(REPO))
    try:
        from scripts.validate_onnx import centre_half
    finally:
        sys.path.remove(str(REPO))
    assert centre_half(1280, 720) == "320,180,640,360"
    assert centre_half(481, 361) == "120,90,240,180"
    proc = subprocess.run(
        [sys.executable, "scripts/validate_onnx.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "centre half of the first frame" in proc.stdout


@pytest.mark.slow
@requires_oracle
def test_validate_without_bbox(tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The guide's command has no --bbox: the centre half of the first frame is used (said on
    stderr) and the comparison runs."""
    frames = write_frames(synthetic_frames(2), tmp_path / "frames")
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "scripts/validate_onnx.py",
         "--pytorch_model", "configs/samurai/sam2.1_hiera_t.yaml",
         "--onnx_models", str(tiny256_bundle), "--test_video", str(frames),
         "--checkpoint", str(tiny_checkpoint), "--frames", "2", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    assert "no --bbox given: using the centre half of the first frame, 120,90,240,180" in (
        proc.stderr
    )
    report = json.loads(out.read_text())
    assert len(report["frames"]) == 2
