"""``samurai-eval score``: read a results folder against a dataset, score it, and report the
scores as Markdown, JSON and success / precision plots (matplotlib, the ``eval`` extra)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from samurai_onnx.compiler.evaluate import metrics
from samurai_onnx.compiler.evaluate.datasets import Dataset, DatasetError, Sequence, list_frames
from samurai_onnx.compiler.evaluate.results import (
    read_result,
    read_times,
    replace_from,
    result_paths,
    write_atomic,
)

log = logging.getLogger(__name__)

COLUMNS = (
    ("success_auc", "AUC"),
    ("precision", "P@20px"),
    ("normalized_precision", "P_norm@0.2"),
    ("ao", "AO"),
    ("sr50", "SR0.5"),
    ("sr75", "SR0.75"),
)


def image_size(seq: Sequence) -> tuple[int, int]:
    """The size GOT-10k clips boxes to: the dataset's stated resolution, else the first frame's."""
    if seq.image_size is not None:
        return seq.image_size
    first = list_frames(seq.frames_dir)[0]
    try:
        with Image.open(first) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as e:
        raise DatasetError(f"{first}: cannot read the image size ({e})") from None


def score_results(
    results_dir: Path, dataset: Dataset, skip_missing: bool = False
) -> tuple[list[metrics.SequenceScore], list[str]]:
    """Score every sequence of ``dataset`` that has a result in ``results_dir``.

    Returns the scores and the names without a result (only with ``skip_missing``; otherwise a
    missing or incomplete result file is an error naming it).
    """
    if not results_dir.is_dir():
        raise DatasetError(f"{results_dir}: results folder does not exist")
    scores, missing = [], []
    for seq in dataset.sequences:
        if not seq.scorable:
            raise DatasetError(
                f"{seq.groundtruth_path}: ground truth for the first frame only (GOT-10k's "
                "test split); submit the results to the benchmark's server to score them"
            )
        box_path, time_path = result_paths(dataset.format, results_dir, seq.name)
        if skip_missing and not box_path.exists():
            missing.append(seq.name)
            continue
        pred = read_result(box_path, seq.num_frames)
        score = metrics.score_sequence(
            seq.name, pred, seq.groundtruth, seq.visible, image_size(seq)
        )
        times = read_times(time_path)
        if times is not None:
            score.seconds, score.timed_frames = float(times.sum()), int(times.size)
        scores.append(score)
    if not scores:
        raise DatasetError(f"{results_dir}: no result files for the {dataset.format} sequences")
    return scores, missing


def build_report(
    results_dir: Path, dataset: Dataset, scores: list[metrics.SequenceScore], missing: list[str]
) -> dict[str, Any]:
    """The JSON document: ``overall`` (fractions and curves) and one object per sequence."""
    return {
        "results": str(results_dir),
        "dataset": {"root": str(dataset.root), "format": dataset.format},
        "protocol": {
            "success": "IoU > t, t = 0:0.05:1, AUC = mean; first frame = ground truth; "
            "zero-size boxes hold the previous box; invisible frames fail",
            "precision": "center distance <= 20 px",
            "normalized_precision": "center offset / ground-truth size <= 0.2",
            "ao_sr": "GOT-10k: frames 1.. with the target visible, boxes clipped to the image, "
            "frame-weighted over the dataset",
        },
        "overall": metrics.overall(scores),
        "sequences": {s.name: s.summary() for s in scores},
        "missing": missing,
    }


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def to_markdown(report: dict[str, Any]) -> str:
    """Per-sequence and overall scores as a Markdown table, in percent."""
    header = "| sequence | frames | " + " | ".join(label for _, label in COLUMNS) + " | fps |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    rows = [*report["sequences"].items(), ("**overall**", report["overall"])]
    for name, row in rows:
        fps = row.get("fps")
        cells = [_cell(row.get(key)) for key, _ in COLUMNS]
        lines.append(
            f"| {name} | {row['frames']} | " + " | ".join(cells) + f" | {fps:.2f} |"
            if fps
            else f"| {name} | {row['frames']} | " + " | ".join(cells) + " | n/a |"
        )
    if report.get("missing"):
        lines.append(f"\n{len(report['missing'])} sequence(s) without results were left out.")
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """Success and precision plots of the overall curves, as the toolkits draw them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = report["overall"]
    where = f" on {Path(report['dataset']['root']).name}"
    plots = [
        (
            "success_plot.png",
            metrics.OVERLAP_THRESHOLDS,
            overall["success_curve"],
            f"{name} [AUC {overall['success_auc']:.3f}]",
            ("Overlap threshold", "Success rate", "Success plot of OPE" + where),
        ),
        (
            "precision_plot.png",
            metrics.CENTER_THRESHOLDS,
            overall["precision_curve"],
            f"{name} [P@20 {overall['precision']:.3f}]",
            ("Location error threshold (px)", "Precision", "Precision plot of OPE" + where),
        ),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, x, y, label, (xlabel, ylabel, title) in plots:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(x, np.asarray(y), "-", linewidth=2, label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(x[0], x[-1]), ylim=(0, 1.02))
        ax.grid(True, linestyle=":")
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        path = out_dir / file_name
        replace_from(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        written.append(path)
    return written


def write_json(report: dict[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(report, indent=2) + "\n")
