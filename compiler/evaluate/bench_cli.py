"""``samurai-bench``: a bundle and SAMURAI's PyTorch reference, side by side, in one run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from samurai_onnx.runtime.bundle import FORMS

if TYPE_CHECKING:
    from samurai_onnx.runtime.bundle import TrackerSettings

app = typer.Typer(add_completion=False, help=__doc__)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(
            f"{text!r}: expected positive integers separated by commas, e.g. 1,4,8"
        )
    return sizes


def steady_from(frames: int, settings: TrackerSettings) -> int:
    """First timed frame: SAMURAI's bank holds all ``num_maskmem`` memories from that frame on
    and all ``max_obj_ptrs_in_encoder`` pointers from that frame on (7 and 16 for SAM 2.1);
    shorter runs time what they have (from the frame after the memories fill, or the last)."""
    if frames > settings.max_obj_ptrs_in_encoder:
        return settings.max_obj_ptrs_in_encoder
    return min(settings.num_maskmem + 1, max(frames - 1, 1))


@app.command()
def bench(
    bundle: Path = typer.Argument(..., help="Bundle directory made by samurai-compile."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or tensorrt (ONNX side)."),
    batch_sizes: str = typer.Option(
        "1",
        "--batch-sizes",
        help="Batch sizes for per-component latency, e.g. 1,4,8 (objects for the per-object graphs).",
    ),
    video: str | None = typer.Option(
        None, "--video", help="Clip for the end-to-end timing (default: a synthetic clip)."
    ),
    bbox: str = typer.Option(
        "100,120,90,70", "--bbox", help="First-frame box x,y,w,h for the end-to-end timing."
    ),
    frames: int = typer.Option(
        20,
        "--frames",
        help="Frames tracked end to end; frames 16 on (all 7 memories and 16 pointers) are timed.",
    ),
    objects: str = typer.Option(
        "1",
        "--objects",
        help="Object counts for the end-to-end timing, e.g. 1,3,8 (counts above 1 are also timed "
        "with every object in its own pass, to show what batching saves; the PyTorch reference "
        "tracks one object per predictor, so its N objects are N one-object runs).",
    ),
    processing: str | None = typer.Option(
        None,
        "--processing",
        help="graph or host pre/postprocessing for the bundle (default: the bundle target's).",
    ),
    forms: str = typer.Option(
        "fastest",
        "--forms",
        help="Graphs the bundle holds in several forms (target 'alternatives'): fastest (timed "
        f"when loading), main, or a form ({', '.join(FORMS)}).",
    ),
    repeats: int = typer.Option(
        3, "--repeats", help="Timed runs per component and batch size (after one warm-up)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Intra-op threads for both sides (default: all cores)."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="The .pt the bundle was built from, for the reference (default: the cached official file).",
    ),
    compare: list[Path] = typer.Option(
        [],
        "--compare",
        help="Another bundle of the same model, checkpoint and image size (e.g. another target) "
        "timed in the same run against the same reference; repeat for several.",
    ),
    no_reference: bool = typer.Option(False, "--no-reference", help="Skip the PyTorch reference."),
    reference_runs: int = typer.Option(
        1,
        "--reference-runs",
        min=1,
        max=5,
        help="Run each PyTorch reference side this many times (each in its own process) and "
        "keep the fastest: PyTorch's GPU time moves between identical runs.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
    markdown_out: Path | None = typer.Option(
        None, "--markdown", help="Write the report as Markdown."
    ),
) -> None:
    """Per-graph latency (median, p90) per batch size; end to end, per object count, steady-state
    seconds per frame with a full memory bank split into time in graphs and host time, and peak
    RSS; for the bundle and (unless --no-reference) for the PyTorch reference (on --device cuda
    in fp32 and in SAMURAI's fp16 autocast), with the ratios and the per-frame mask IoU against
    the fp32 reference (SAMURAI's code built at the bundle's image size); as a Markdown table and
    JSON. With --compare, other bundles of the same checkpoint and image size get their own rows
    in the same run."""
    from samurai_onnx.compiler.evaluate.bench import benchmark, to_markdown
    from samurai_onnx.compiler.evaluate.oracle import reference_checkpoint
    from samurai_onnx.runtime.bundle import PROCESSING, BundleError, load_bundle
    from samurai_onnx.runtime.engine.forms import check_forms
    from samurai_onnx.runtime.tracker import TrackerError, parse_box

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        info = load_bundle(bundle)
        args = {
            "bundle": str(bundle),
            "device": device,
            "batch_sizes": parse_batch_sizes(batch_sizes),
            "objects": parse_batch_sizes(objects),
            "processing": processing,
            "forms": forms,
            "video": video,
            "box": list(parse_box(bbox)),
            "frames": frames,
            "repeats": repeats,
            "threads": threads,
            "size": info.model_name,
            "image_size": info.tracker.image_size,  # the reference is built at the bundle's size
            "steady_from": steady_from(frames, info.tracker),
            "reference_runs": reference_runs,
        }
        for other in compare:
            theirs = load_bundle(other)
            if (
                theirs.model_name,
                theirs.source_checkpoint_sha256,
                theirs.tracker.image_size,
            ) != (info.model_name, info.source_checkpoint_sha256, info.tracker.image_size):
                raise ValueError(
                    f"--compare {other}: built from another model, checkpoint or image size "
                    f"than {bundle} (SAM 2.1 {theirs.model_name} at "
                    f"{theirs.tracker.image_size} pixels, checkpoint sha256 "
                    f"{theirs.source_checkpoint_sha256[:12]}...), so one reference cannot serve "
                    "both; compare bundles of the same checkpoint and size"
                )
            if other.resolve() == bundle.resolve():
                raise ValueError(f"--compare {other}: that is the bundle being benchmarked")
        args["compare"] = [str(c) for c in compare]
        if processing is not None and processing not in PROCESSING:
            raise ValueError(f"--processing {processing!r} is not one of {', '.join(PROCESSING)}")
        check_forms(forms)
        if not no_reference:
            args["checkpoint"] = str(
                reference_checkpoint(info.model_name, info.source_checkpoint_sha256, checkpoint)
            )
        report = benchmark(args, reference=not no_reference)
    except (BundleError, TrackerError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    text = to_markdown(report)
    typer.echo(text)
    if markdown_out:
        markdown_out.write_text(text + "\n")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


def main() -> None:
    app(prog_name="samurai-bench")


if __name__ == "__main__":
    main()
