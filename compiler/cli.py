"""``samurai-compile``: build a versioned ONNX bundle from a model manifest and a target.

Bad input (manifests, checkpoint, ``--out``) is one ``error:`` line and exit code 2; Ctrl-C or
SIGTERM removes the half-built staging folder and exits 130 / 143 with one line. ``--out`` is
only ever replaced by a complete bundle (see ``compiler/staging.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from samurai_onnx.compiler.manifest import packaged_names
from samurai_onnx.runtime.bundle import COMPONENTS
from samurai_onnx.runtime.documents import DocumentError, one_line
from samurai_onnx.runtime.signals import exit_code, handle_signals

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def parse_components(values: list[str] | None) -> list[str]:
    """``all`` or component names, given repeated and/or comma-separated."""
    names = [n.strip() for v in (values or ["all"]) for n in v.split(",") if n.strip()]
    if not names or "all" in names:
        return list(COMPONENTS)
    bad = [n for n in names if n not in COMPONENTS]
    if bad:
        raise typer.BadParameter(
            f"unknown component(s) {', '.join(bad)}; use all or {', '.join(COMPONENTS)}"
        )
    return [c for c in COMPONENTS if c in names]


@app.command()
def compile(
    manifest: Path = typer.Argument(
        ...,
        help="Model manifest, e.g. manifests/base_plus.yaml "
        f"(or: {', '.join(packaged_names('manifests'))}).",
    ),
    target: str = typer.Option(
        "cpu",
        "--target",
        "-t",
        help=f"Target manifest: {', '.join(packaged_names('targets'))}, or a path to one.",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="Official SAM 2.1 .pt file. Default: the cache (~/.cache/samurai-onnx/checkpoints), else download it.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Bundle directory. Default: bundles/<model>-<target>. Built next to it and renamed "
        "into place when complete; an existing folder is replaced only if it holds a bundle.",
    ),
    components: list[str] | None = typer.Option(
        None,
        "--components",
        help="all (default) or some of image_encoder, memory_attention, mask_decoder, memory_encoder; repeat or comma-separate. Into an existing bundle of the same model, target and checkpoint, its other components are kept.",
    ),
    no_download: bool = typer.Option(
        False,
        "--no-download",
        help="Never download; fail with instructions if the checkpoint is not at hand.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Export -> onnx.checker -> onnxsim -> FP16 / int8 (as the target says) -> ORT format
    (mobile), checking every graph against PyTorch after every pass, into a versioned bundle."""
    from samurai_onnx.compiler.build import BuildError, BuildOptions, PassReport, compile_bundle
    from samurai_onnx.compiler.checkpoint import CheckpointError
    from samurai_onnx.compiler.passes.verify import NumericError
    from samurai_onnx.compiler.staging import OutputError

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    chosen = parse_components(components)

    def show(r: PassReport) -> None:
        typer.echo(r.line())

    typer.echo(f"samurai-compile {manifest} --target {target}: {', '.join(chosen)}")
    options = BuildOptions(download=not no_download)
    errors = (DocumentError, CheckpointError, NumericError, BuildError, OutputError, ValueError)
    try:
        with handle_signals(deferred=False) as stop:
            bundle = compile_bundle(
                manifest,
                target,
                checkpoint=checkpoint,
                out_dir=out,
                components=chosen,
                options=options,
                on_pass=show,
                stop=stop,
            )
    except KeyboardInterrupt as exc:
        typer.echo("interrupted; nothing was written", err=True)
        raise typer.Exit(exit_code(exc)) from None
    except (*errors, OSError) as exc:
        logging.getLogger(__name__).debug("build failed", exc_info=True)
        typer.echo(f"error: {one_line(exc)}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a bug: still one line, the traceback with --verbose
        logging.getLogger(__name__).debug("unexpected failure", exc_info=True)
        typer.echo(
            f"error: internal error ({type(exc).__name__}: {one_line(exc, 300)}); please report "
            "it with the output of --verbose",
            err=True,
        )
        raise typer.Exit(1) from None
    if options.kept:
        typer.echo(f"kept {', '.join(options.kept)} from the existing bundle in {bundle}")
    typer.echo(f"bundle written to {bundle}")


def main() -> None:
    app(prog_name="samurai-compile")


if __name__ == "__main__":
    main()
