"""Prompts beyond a first-frame box, and several objects in one batch, against the oracle.

Definitions (README "Prompts"): an object prompted on frame F is SAMURAI tracking the clip that
starts at F, so its oracle is SAMURAI's video predictor on frames F.. with the same prompt on
its first frame (one object per predictor: SAMURAI keeps one Kalman state per model). A new
prompt for a tracked object restarts it there. Each object of a multi-object run must equal
that object tracked alone.

Pre/postprocessing on the host (the exact-parity path), hole filling off in both (the oracle
skips it on a CPU); ``stable_frames_threshold`` is lowered to 3 in both so that the
Kalman-weighted choice runs within these short clips.
"""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_VIDEOS, SMALL, requires_oracle, synthetic_frames, write_frames

from samurai_onnx.compiler.evaluate.oracle import OracleFrame, build_oracle, run_oracle
from samurai_onnx.runtime.tracker import Prompt, Tracker, TrackerError
from samurai_onnx.runtime.video import open_frames

pytestmark = [requires_oracle, pytest.mark.oracle, pytest.mark.slow]

N = 6
OVERRIDES = {"stable_frames_threshold": 3}
BOX_A = (100.0, 120.0, 90.0, 70.0)  # the white rectangle (moves right/down 8/3 px per frame)
CLICK_B = (330.0, 250.0)  # the centre of the red disc at frame 0 (moves left 5 px per frame)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _run_ours(tracker: Tracker, frames: list[np.ndarray], prompts: list[Prompt]):  # type: ignore[no-untyped-def]
    """Per frame: {obj_id: (mask, StepInfo, stable_frames, kf mean)}."""
    rows = []
    for result in tracker.track(frames, prompts=prompts):
        row = {}
        for obj in result.objects:
            state = next(s for s in tracker.states if s.obj_id == obj.obj_id)
            kf = None if state.kf is None else state.kf.mean.copy()
            row[obj.obj_id] = (obj.mask, state.last, state.stable_frames, kf)
        rows.append(row)
    return rows


def _oracle(ckpt: Path, image_size: int, frames_dir: Path, **prompt: object) -> list[OracleFrame]:
    """SAMURAI's code at ``image_size`` pixels on ``frames_dir``, prompted on its first frame."""
    settings = {**OVERRIDES, "fill_hole_area": 0, "image_size": image_size}
    oracle = build_oracle("tiny", ckpt, settings)
    return list(run_oracle(oracle, frames_dir, prompt.pop("box", None), **prompt))  # type: ignore[arg-type]


def _assert_same(ours: list, ref: list[OracleFrame], obj: int, start: int) -> list[float]:  # type: ignore[type-arg]
    """Object ``obj`` of our rows from ``start`` on equals the oracle on the clip from ``start``."""
    ious = []
    for k, expected in enumerate(ref):
        mask, info, stable, kf = ours[start + k][obj]
        iou = _iou(mask, expected.mask)
        ious.append(iou)
        where = f"object {obj}, frame {start + k}"
        assert iou >= 0.999, f"{where}: IoU {iou:.5f}"
        if expected.candidate is not None:
            assert info.candidate == expected.candidate, where
        assert info.memory_frames == tuple(f + start for f in expected.memory_frames), where
        assert stable == expected.stable_frames, where
        if expected.kf_mean is None:
            assert kf is None, where
        else:
            np.testing.assert_allclose(kf, expected.kf_mean, rtol=1e-6, atol=1e-6, err_msg=where)
    return ious


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[np.ndarray], Path]:
    """The synthetic clip as the oracle reads it: JPEG frames, decoded again."""
    root = tmp_path_factory.mktemp("clip")
    write_frames(synthetic_frames(N), root / "from0")
    with open_frames(root / "from0") as source:
        frames = list(source)
    return frames, root


def _frames_dir(clip: tuple[list[np.ndarray], Path], start: int) -> Path:
    """The clip from frame ``start`` as JPEGs: the same files as frames ``start..`` of from0."""
    root = clip[1]
    folder = root / f"from{start}"
    if not folder.exists():
        write_frames(synthetic_frames(N)[start:], folder)
    return folder


def test_points_and_late_objects_match_the_oracle(
    tiny256_bundle: Path, tiny_checkpoint: Path, clip: tuple[list[np.ndarray], Path]
) -> None:
    """Object 0: a box on frame 0. Object 1: one positive click on frame 2 (SAM 2's multimask
    prompt: three candidates and SAMURAI's Kalman start on the prompted frame). Object 2: a box
    plus a negative click on frame 1. Each equals its oracle; object 0 is reported from frame 0,
    the others from their first prompted frame."""
    frames, _ = clip
    neg = (BOX_A[0] + 80.0, BOX_A[1] + 60.0)
    prompts = [
        Prompt(0, 0, box=BOX_A),
        Prompt(2, 1, points=(CLICK_B,), labels=(1,)),
        Prompt(1, 2, box=(280.0, 200.0, 100.0, 100.0), points=(neg,), labels=(0,)),
    ]
    tracker = Tracker(
        tiny256_bundle, num_frames=N, overrides=OVERRIDES, processing="host", fill_hole_area=0
    )
    ours = _run_ours(tracker, frames, prompts)
    assert [sorted(r) for r in ours] == [[0], [0, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]]
    _assert_same(ours, _oracle(tiny_checkpoint, SMALL, _frames_dir(clip, 0), box=BOX_A), 0, 0)
    ref1 = _oracle(tiny_checkpoint, SMALL, _frames_dir(clip, 2), points=[CLICK_B], labels=[1])
    _assert_same(ours, ref1, 1, 2)
    assert ours[2][1][1].kf_score is None and ours[2][1][2] == ref1[0].stable_frames == 1
    ref2 = _oracle(
        tiny_checkpoint,
        SMALL,
        _frames_dir(clip, 1),
        box=(280.0, 200.0, 100.0, 100.0),
        points=[neg],
        labels=[0],
    )
    _assert_same(ours, ref2, 2, 1)


def test_several_objects_equal_each_alone(
    tiny256_bundle: Path, clip: tuple[list[np.ndarray], Path]
) -> None:
    """Two objects batched in every graph call give what each gives alone (host processing)."""
    frames, _ = clip
    boxes = [BOX_A, (300.0, 220.0, 60.0, 60.0)]
    together = Tracker(
        tiny256_bundle, num_frames=N, overrides=OVERRIDES, processing="host", fill_hole_area=0
    )
    both = _run_ours(together, frames, [Prompt(0, i, box=b) for i, b in enumerate(boxes)])
    for i, box in enumerate(boxes):
        alone = Tracker(
            tiny256_bundle, num_frames=N, overrides=OVERRIDES, processing="host", fill_hole_area=0
        )
        one = _run_ours(alone, frames, [Prompt(0, i, box=box)])
        for t in range(N):
            mask, info, stable, kf = both[t][i]
            mask1, info1, stable1, kf1 = one[t][i]
            assert _iou(mask, mask1) >= 0.9999, (i, t)
            assert info.candidate == info1.candidate and info.memory_frames == info1.memory_frames
            assert stable == stable1
            if kf is not None:
                np.testing.assert_allclose(kf, kf1, rtol=1e-6, atol=1e-6)


def test_correction_restarts_and_removal_ends(
    tiny256_bundle: Path, tiny_checkpoint: Path, clip: tuple[list[np.ndarray], Path]
) -> None:
    """A new box for object 0 on frame 3 restarts it there (= the oracle on the clip from frame
    3); object 1 removed on frame 2 is not reported from then on."""
    frames, _ = clip
    moved = (BOX_A[0] + 24.0, BOX_A[1] + 9.0, BOX_A[2], BOX_A[3])
    prompts = [
        Prompt(0, 0, box=BOX_A),
        Prompt(0, 1, box=(300.0, 220.0, 60.0, 60.0)),
        Prompt(2, 1, remove=True),
        Prompt(3, 0, box=moved),
    ]
    tracker = Tracker(
        tiny256_bundle, num_frames=N, overrides=OVERRIDES, processing="host", fill_hole_area=0
    )
    ours = _run_ours(tracker, frames, prompts)
    assert [sorted(r) for r in ours] == [[0, 1], [0, 1], [0], [0], [0], [0]]
    assert ours[3][0][1].memory_frames == ()  # a conditioning frame again
    _assert_same(ours, _oracle(tiny_checkpoint, SMALL, _frames_dir(clip, 3), box=moved), 0, 3)


def test_mask_prompt_matches_the_oracle(
    tiny256_bundle: Path, tiny_checkpoint: Path, clip: tuple[list[np.ndarray], Path]
) -> None:
    """A mask prompt on frame 1 (the white rectangle's pixels) = the oracle's ``add_new_mask``
    on the clip from frame 1; object 0 (a box on frame 0) is tracked alongside."""
    frames, _ = clip
    mask = frames[1].min(axis=2) > 200  # the white rectangle
    assert 0.01 < mask.mean() < 0.2
    prompts = [Prompt(0, 0, box=BOX_A), Prompt(1, 1, mask=mask)]
    tracker = Tracker(
        tiny256_bundle, num_frames=N, overrides=OVERRIDES, processing="host", fill_hole_area=0
    )
    ours = _run_ours(tracker, frames, prompts)
    assert [sorted(r) for r in ours] == [[0], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]]
    assert ours[1][1][1].iou == 1.0 and ours[1][1][1].object_score == 10.0
    _assert_same(ours, _oracle(tiny_checkpoint, SMALL, _frames_dir(clip, 1), mask=mask), 1, 1)


def test_prompt_errors(tiny256_bundle: Path) -> None:
    frames = synthetic_frames(2, 160, 120)
    tracker = Tracker(tiny256_bundle, processing="host")
    for prompt, needle in [
        (Prompt(0, 0), "neither a box, points nor a mask"),
        (Prompt(0, 0, mask=np.ones((120, 160), bool), box=(1, 1, 5, 5)), "stands alone"),
        (Prompt(0, 0, mask=np.ones((10, 10), bool)), "the video 160x120"),
        (Prompt(0, 0, mask=np.zeros((120, 160), bool)), "the mask is empty"),
        (Prompt(0, 0, points=((10.0, 10.0),), labels=()), "one label"),
        (Prompt(0, 0, points=((10.0, 10.0),), labels=(2,)), "1 (positive) or 0"),
        (Prompt(0, 0, points=((500.0, 10.0),), labels=(1,)), "outside the 160x120 frame"),
        (Prompt(0, 3, remove=True), "not being tracked"),
        (Prompt(5, 0, box=(1, 1, 5, 5)), "has 2 frame"),
    ]:
        with pytest.raises(TrackerError, match=re.escape(needle)) as info:
            list(tracker.track(frames, prompts=[prompt]))
        assert "\n" not in str(info.value)
    with pytest.raises(TrackerError, match="one prompt per object"):
        list(tracker.track(frames, prompts=[Prompt(0, 0, box=(1, 1, 5, 5))] * 2))


@pytest.mark.skipif(not (SHARED_VIDEOS / "cups.mp4").is_file(), reason="../shared/videos is absent")
def test_prompts_on_a_shared_clip(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A real clip (cups.mp4, 1280x720): object 0 a box on frame 0 (the red cup), object 1 one
    positive click on frame 1 (the small cup's centre): each equals its oracle on the clip from
    its prompted frame, both tracked in one batch."""
    n = 4
    with open_frames(SHARED_VIDEOS / "cups.mp4") as src:
        raw = list(islice(src, n))
    write_frames(raw, tmp_path / "from0")
    write_frames(raw[1:], tmp_path / "from1")  # the same JPEG files as frames 1.. of from0
    with open_frames(tmp_path / "from0") as source:
        frames = list(source)
    cup, click = (574.0, 294.0, 162.0, 246.0), (401.0, 462.0)
    tracker = Tracker(
        tiny_bundle, num_frames=n, overrides=OVERRIDES, processing="host", fill_hole_area=0
    )
    prompts = [Prompt(0, 0, box=cup), Prompt(1, 1, points=(click,), labels=(1,))]
    ours = _run_ours(tracker, frames, prompts)
    assert [sorted(r) for r in ours] == [[0], [0, 1], [0, 1], [0, 1]]
    _assert_same(ours, _oracle(tiny_checkpoint, 1024, tmp_path / "from0", box=cup), 0, 0)
    ref1 = _oracle(tiny_checkpoint, 1024, tmp_path / "from1", points=[click], labels=[1])
    _assert_same(ours, ref1, 1, 1)
