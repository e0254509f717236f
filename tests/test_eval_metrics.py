"""samurai-eval's scores against independent implementations of the official protocols, on
hand-made results (to 1e-6):

- GOT-10k: the GOT-10k toolkit itself (PyPI ``got10k`` 0.1.3, ``ExperimentGOT10k.report``) on a
  GOT-10k-layout val split written here: AO and SR0.5 per sequence and overall, SR0.75 from its
  success curve;
- OTB: the same toolkit's ``ExperimentOTB.report`` (success AUC over 21 thresholds, precision at
  20 px) on OTB-layout results, with its dataset class swapped for the sequences written here
  (it would otherwise download OTB);
- LaSOT: a transcription, in plain Python loops, of the LaSOT toolkit's
  ``utils/calc_seq_err_robust.m`` and ``utils/eval_tracker.m`` (HengLan/LaSOT_Evaluation_Toolkit):
  invalid predictions take the previous frame's, frame 1 is the ground truth, absent frames
  (full occlusion or out of view) are removed and the rest divided by the full length; overlap
  by ``calc_rect_int.m``'s inclusive-pixel formula; precision at 20 px and normalized precision
  at 0.20 (its ``rank_idx = 21``). This checks the cases the got10k toolkit does not handle
  (absent frames, empty predictions).
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import (
    blank_frames,
    make_got10k_sequence,
    make_lasot_sequence,
    make_otb_sequence,
)

from samurai_onnx.compiler.evaluate import metrics
from samurai_onnx.compiler.evaluate.datasets import load_dataset
from samurai_onnx.compiler.evaluate.report import build_report, score_results, to_markdown
from samurai_onnx.compiler.evaluate.results import write_result

TOL = 1e-6

# (ground truth, prediction, absent / cover-0 flags) per sequence; cases: exact hits, shifts,
# float boxes, boxes partly or wholly outside the 320x240 image, disjoint boxes, IoU exactly 0.5,
# empty predictions (on frame 1, twice in a row, during and after absent frames).
SEQUENCES = {
    "cat-1": (
        [(50, 40, 60, 50)] * 8,
        [
            (48, 41, 60, 50),
            (0, 0, 0, 0),
            (55, 45, 60, 50),
            (50, 40, 30, 50),
            (200, 150, 40, 40),
            (0, 0, 0, 0),
            (0, 0, 0, 0),
            (52.5, 39.25, 58.5, 51),
        ],
        [0, 0, 0, 1, 1, 0, 0, 0],
    ),
    "cat-2": (
        [(10 + 7 * i, 20 + 3 * i, 40 + i, 30) for i in range(10)],
        [
            (10, 20, 40, 30),
            (15, 22, 40, 30),
            (30, 26, 45, 33),
            (-20, -10, 60, 50),
            (280, 200, 80, 60),
            (0, 0, 0, 0),
            (55, 38, 46, 30),
            (1, 1, 5, 5),
            (66, 44, 48, 30),
            (73.4, 47.1, 49.2, 30.3),
        ],
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    ),
    "dog-1": (
        [(100, 80, 20, 20), *[(100 + 2 * i, 80, 20, 20) for i in range(1, 6)]],
        [
            (90, 70, 40, 40),
            (101, 81, 20, 20),
            (104, 80, 10, 20),
            (0, 0, 0, 0),
            (300, 230, 30, 30),
            (110, 80, 20, 20),
        ],
        [0, 0, 0, 0, 0, 0],
    ),
}
SIZE = (320, 240)


def lasot_toolkit_reference(pred: list, gt: list, absent: list) -> dict[str, list[float]]:
    """The LaSOT toolkit's per-sequence curves (see the module docstring), frame by frame."""
    n = len(gt)
    res = [list(map(float, r)) for r in pred]
    for i in range(1, n):
        if res[i][2] <= 0 or res[i][3] <= 0:
            res[i] = list(res[i - 1])
    res[0] = list(map(float, gt[0]))
    overlaps, centers, norms = [], [], []
    for r, g, a in zip(res, gt, absent, strict=True):
        if a:
            continue
        right = min(r[0] + r[2] - 1, g[0] + g[2] - 1)
        left = max(r[0], g[0])
        bottom = min(r[1] + r[3] - 1, g[1] + g[3] - 1)
        top = max(r[1], g[1])
        inter = max(0.0, right - left + 1) * max(0.0, bottom - top + 1)
        overlaps.append(inter / (r[2] * r[3] + g[2] * g[3] - inter))
        cr = (r[0] + (r[2] - 1) / 2, r[1] + (r[3] - 1) / 2)
        cg = (g[0] + (g[2] - 1) / 2, g[1] + (g[3] - 1) / 2)
        centers.append(math.dist(cr, cg))
        norms.append(math.dist((cr[0] / g[2], cr[1] / g[3]), (cg[0] / g[2], cg[1] / g[3])))
    return {
        "success": [sum(o > k / 20 for o in overlaps) / n for k in range(21)],
        "precision": [sum(c <= k for c in centers) / n for k in range(51)],
        "norm": [sum(c <= k / 100 for c in norms) / n for k in range(51)],
    }


def test_lasot_protocol_matches_the_lasot_toolkit(tmp_path: Path) -> None:
    for name, (gt, _, absent) in SEQUENCES.items():
        make_lasot_sequence(tmp_path / "lasot", name, blank_frames(len(gt)), gt, absent)
        _, pred, _ = SEQUENCES[name]
        write_result("lasot", tmp_path / "res", name, pred, [0.1] * len(pred))
    data = load_dataset(tmp_path / "lasot")
    assert data.format == "lasot"
    scores, missing = score_results(tmp_path / "res", data)
    assert not missing
    report = build_report(tmp_path / "res", data, scores, missing)
    curves = []
    for name, (gt, pred, absent) in SEQUENCES.items():
        ref = lasot_toolkit_reference(pred, gt, absent)
        curves.append(ref)
        row = report["sequences"][name]
        assert row["success_auc"] == pytest.approx(np.mean(ref["success"]), abs=TOL)
        assert row["precision"] == pytest.approx(ref["precision"][20], abs=TOL)
        assert row["normalized_precision"] == pytest.approx(ref["norm"][20], abs=TOL)
    overall = report["overall"]
    mean = {k: np.mean([c[k] for c in curves], axis=0) for k in ("success", "precision", "norm")}
    assert overall["success_auc"] == pytest.approx(np.mean(mean["success"]), abs=TOL)
    assert overall["precision"] == pytest.approx(mean["precision"][20], abs=TOL)
    assert overall["normalized_precision"] == pytest.approx(mean["norm"][20], abs=TOL)
    np.testing.assert_allclose(overall["success_curve"], mean["success"], atol=TOL)
    # the hand-made cases do exercise the rules: not everything passes, not everything fails
    assert 0.2 < overall["success_auc"] < 0.9 and 0.2 < overall["precision"] < 0.9
    for key in ("success_auc", "precision", "normalized_precision", "ao", "sr50", "sr75"):
        assert 0.0 <= overall[key] <= 1.0, key
    assert "| **overall** |" in to_markdown(report)


@pytest.fixture(scope="module")
def got10k_toolkit(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    return pytest.importorskip("got10k.experiments", reason="got10k (dev extra) not installed")


def test_got10k_protocol_matches_the_got10k_toolkit(
    tmp_path: Path, got10k_toolkit: types.ModuleType
) -> None:
    subset = tmp_path / "GOT-10k" / "val"
    results = tmp_path / "results" / "GOT-10k" / "samurai"
    for name, (gt, pred, hidden) in SEQUENCES.items():
        cover = [0 if h else 1 + i % 8 for i, h in enumerate(hidden)]
        make_got10k_sequence(subset, name, blank_frames(len(gt)), gt, cover, resolution=SIZE)
        write_result("got10k", results, name, pred, [0.05 + 0.01 * i for i in range(len(pred))])
    data = load_dataset(subset)
    assert data.format == "got10k"
    ours = build_report(results, data, *score_results(results, data))

    experiment = got10k_toolkit.ExperimentGOT10k(
        str(tmp_path / "GOT-10k"),
        subset="val",
        result_dir=str(tmp_path / "results"),
        report_dir=str(tmp_path / "reports"),
    )
    theirs = experiment.report(["samurai"])["samurai"]
    for name in SEQUENCES:
        assert ours["sequences"][name]["ao"] == pytest.approx(
            theirs["seq_wise"][name]["ao"], abs=TOL
        )
        assert ours["sequences"][name]["sr50"] == pytest.approx(
            theirs["seq_wise"][name]["sr"], abs=TOL
        )
    assert ours["overall"]["ao"] == pytest.approx(theirs["overall"]["ao"], abs=TOL)
    assert ours["overall"]["sr50"] == pytest.approx(theirs["overall"]["sr"], abs=TOL)
    curve = theirs["overall"]["succ_curve"]  # IoU > t for t = 0, 0.01, ..., 1
    assert ours["overall"]["sr50"] == pytest.approx(curve[50], abs=TOL)
    assert ours["overall"]["sr75"] == pytest.approx(curve[75], abs=TOL)
    assert 0.1 < ours["overall"]["ao"] < 0.9


class OTBStandIn(list):
    """The sequences written by a test, where ``ExperimentOTB`` expects its OTB dataset."""

    def __init__(self, items: list, names: list[str]) -> None:
        super().__init__(items)
        self.seq_names = names


def test_otb_protocol_matches_the_got10k_toolkits_otb_experiment(
    tmp_path: Path, got10k_toolkit: types.ModuleType
) -> None:
    """The toolkit's OTB experiment keeps empty boxes as they are (the official OTB and LaSOT
    toolkits hold the last box instead), so its results here have no empty boxes."""
    results = tmp_path / "results" / "OTB2015" / "samurai"
    sequences = {}
    for name, (gt, pred, _) in SEQUENCES.items():
        pred = [p if p[2] > 0 else (5, 5, 3, 3) for p in pred]
        make_otb_sequence(tmp_path / "otb", name, blank_frames(len(gt)), gt, sep="\t")
        write_result("otb", results, name, pred, [0.1] * len(pred))
        sequences[name] = np.asarray(gt, np.float64)
    data = load_dataset(tmp_path / "otb")
    assert data.format == "otb"
    ours = build_report(results, data, *score_results(results, data))

    # what the experiment reads of its dataset: (frames, ground truth) pairs and seq_names
    experiment = object.__new__(got10k_toolkit.ExperimentOTB)
    experiment.dataset = OTBStandIn([(None, gt) for gt in sequences.values()], list(sequences))
    experiment.result_dir = str(tmp_path / "results" / "OTB2015")
    experiment.report_dir = str(tmp_path / "reports")
    experiment.nbins_iou, experiment.nbins_ce = 21, 51
    theirs = experiment.report(["samurai"])["samurai"]
    for name in sequences:
        assert ours["sequences"][name]["success_auc"] == pytest.approx(
            theirs["seq_wise"][name]["success_score"], abs=TOL
        )
        assert ours["sequences"][name]["precision"] == pytest.approx(
            theirs["seq_wise"][name]["precision_score"], abs=TOL
        )
    assert ours["overall"]["success_auc"] == pytest.approx(
        theirs["overall"]["success_score"], abs=TOL
    )
    assert ours["overall"]["precision"] == pytest.approx(
        theirs["overall"]["precision_score"], abs=TOL
    )
    np.testing.assert_allclose(
        ours["overall"]["success_curve"], theirs["overall"]["success_curve"], atol=TOL
    )


def test_iou_and_center_error_match_the_toolkit_on_random_boxes(
    got10k_toolkit: types.ModuleType,
) -> None:
    from got10k.utils.metrics import center_error, rect_iou

    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(-50, 300, (500, 2)), rng.uniform(0, 120, (500, 2))], 1)
    b = np.concatenate([rng.uniform(-50, 300, (500, 2)), rng.uniform(1, 120, (500, 2))], 1)
    a[::7, 2:] = 0  # empty predictions
    np.testing.assert_allclose(metrics.iou(a, b), rect_iou(a.copy(), b.copy()), atol=TOL)
    np.testing.assert_allclose(metrics.center_error(a, b), center_error(a, b), atol=TOL)
    bounded = rect_iou(a.copy(), b.copy(), bound=SIZE)
    ours = metrics.iou(metrics.clip_to_image(a, SIZE), metrics.clip_to_image(b, SIZE))
    np.testing.assert_allclose(ours, bounded, atol=TOL)


def test_invisible_and_boxless_frames_fail_every_measure() -> None:
    gt = np.array([[10, 10, 20, 20], [10, 10, 20, 20], [10, 10, 0, 0], [10, 10, 20, 20]], float)
    score = metrics.score_sequence("s", gt.copy(), gt, np.array([1, 0, 1, 1], bool), SIZE)
    # frames 0 and 3 are perfect; frame 1 is hidden and frame 2 has no ground-truth box
    assert score.success_curve[0] == 0.5 and score.precision == 0.5
    assert score.normalized_precision == 0.5
    # GOT-10k: frames 1.. that are visible (2 and 3); frame 2's empty box scores 0
    assert score.summary()["ao"] == pytest.approx(0.5) and score.summary()["scored_frames"] == 2


def test_json_overall_has_the_documented_fields(tmp_path: Path) -> None:
    gt, pred, absent = SEQUENCES["dog-1"]
    make_lasot_sequence(tmp_path / "d", "dog-1", blank_frames(len(gt)), gt, absent, nested=False)
    write_result("lasot", tmp_path / "r", "dog-1", pred, [0.2] * len(pred))
    data = load_dataset(tmp_path / "d")
    report = build_report(tmp_path / "r", data, *score_results(tmp_path / "r", data))
    doc = json.loads(json.dumps(report))
    for key in ("success_auc", "precision", "normalized_precision", "ao", "sr50", "sr75"):
        assert isinstance(doc["overall"][key], float)
    assert set(doc["sequences"]) == {"dog-1"}
    assert doc["sequences"]["dog-1"]["fps"] == pytest.approx(5.0)
