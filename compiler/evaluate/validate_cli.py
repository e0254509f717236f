"""``samurai-validate``: a bundle vs SAMURAI's PyTorch code on the same frames."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from samurai_onnx.runtime.bundle import FORMS

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def validate(
    bundle: Path = typer.Argument(..., help="Bundle directory made by samurai-compile."),
    video: str = typer.Argument(..., help="Video file or folder of frames."),
    bbox: str = typer.Option(..., "--bbox", help="First-frame box x,y,w,h in pixels."),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="The .pt the bundle was built from (default: the cached official file). Its sha256 must match bundle.yaml.",
    ),
    frames: int = typer.Option(
        8, "--frames", help="Frames to compare (>= 8 exercises memory selection)."
    ),
    stable_frames_threshold: int | None = typer.Option(
        None,
        "--stable-frames-threshold",
        help="Override SAMURAI's 15 in both (lower it to exercise the Kalman-weighted choice on short clips).",
    ),
    processing: str | None = typer.Option(
        None,
        "--processing",
        help="graph or host: resize/normalise and mask upsampling in the bundle's graphs, or on "
        "the host exactly as the oracle does (default: the bundle target's).",
    ),
    forms: str = typer.Option(
        "fastest",
        "--forms",
        help="Graphs the bundle holds in several forms (target 'alternatives'): fastest (timed "
        f"when loading), main, or a form ({', '.join(FORMS)}).",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    markdown_out: Path | None = typer.Option(
        None, "--markdown", help="Also write the report as Markdown."
    ),
) -> None:
    """Per component: max and mean abs error vs the oracle's modules; end to end: per-frame mask
    IoU, box error and chosen-candidate agreement. Exit code 1 beyond the bundle's tolerances
    (IoU >= 0.99 and boxes within 1 px for fp32 bundles, IoU >= 0.95 otherwise)."""
    from samurai_onnx.compiler.evaluate.oracle import OracleUnavailable, reference_checkpoint
    from samurai_onnx.compiler.evaluate.validate import validate as run_validation
    from samurai_onnx.runtime.bundle import PROCESSING, BundleError, load_bundle
    from samurai_onnx.runtime.engine import EngineError
    from samurai_onnx.runtime.engine.forms import check_forms
    from samurai_onnx.runtime.tracker import TrackerError, parse_box
    from samurai_onnx.runtime.video import VideoError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        info = load_bundle(bundle)
        ckpt = reference_checkpoint(info.model_name, info.source_checkpoint_sha256, checkpoint)
        overrides = (
            {}
            if stable_frames_threshold is None
            else {"stable_frames_threshold": stable_frames_threshold}
        )
        if processing is not None and processing not in PROCESSING:
            raise ValueError(f"--processing {processing!r} is not one of {', '.join(PROCESSING)}")
        check_forms(forms)
        report = run_validation(
            bundle,
            video,
            parse_box(bbox),
            checkpoint=ckpt,
            frames=frames,
            overrides=overrides,
            processing=processing,
            forms=forms,
        )
    except (
        BundleError,
        TrackerError,
        VideoError,
        OracleUnavailable,
        EngineError,
        ValueError,
    ) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    text = report.to_markdown()
    typer.echo(text)
    if markdown_out:
        markdown_out.write_text(text + "\n")
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    app(prog_name="samurai-validate")


if __name__ == "__main__":
    main()
