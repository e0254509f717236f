"""``samurai-eval``: run a SAMURAI bundle over a tracking benchmark and score the results.

``run`` tracks every sequence (Ray actors, resumable, retried); ``score`` computes the toolkits'
measures. Bad input (dataset, results, bundle, options, a missing extra) is one ``error: ...``
line and exit code 2; a run where some sequences failed exits 1 after finishing the others;
Ctrl-C exits 130 and keeps every finished sequence.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import typer

from samurai_onnx.compiler.evaluate.datasets import FORMATS, DatasetError, load_dataset

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXTRA_HINT = "pip install 'samurai-onnx[eval]'"

HELP = (
    "Run a SAMURAI bundle over a tracking benchmark (LaSOT, GOT-10k, OTB) and score the results.\n\n"
    "run tracks every sequence (Ray actors, resumable, retried); score computes the toolkits' "
    "measures. Bad input is one 'error: ...' line and exit code 2; a run where some sequences "
    "failed exits 1 after finishing the others; Ctrl-C exits 130 and keeps finished sequences."
)
app = typer.Typer(
    add_completion=False, help=HELP, no_args_is_help=True, pretty_exceptions_enable=False
)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def check_format(fmt: str) -> str:
    if fmt not in ("auto", *FORMATS):
        raise fail(f"--format {fmt!r}: use auto, {', '.join(FORMATS)}")
    return fmt


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


@app.command()
def run(
    dataset: Path = typer.Argument(..., help="Dataset folder (LaSOT root, GOT-10k subset, OTB)."),
    bundle: Path = typer.Option(..., "--bundle", "-b", help="Bundle made by samurai-compile."),
    fmt: str = typer.Option("auto", "--format", help="auto, lasot, got10k or otb."),
    sequences: str | None = typer.Option(None, "--sequences", help="Only these, e.g. a-1,b-2."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Results folder (default: results/<bundle name>)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or tensorrt."),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster to join (default: start a local Ray)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", help="Trackers (default: as many as CPUs / GPUs allow)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", "-t", help="ONNX Runtime threads per worker (default: CPUs / workers)."
    ),
    retries: int = typer.Option(1, "--retries", help="Extra attempts for a failing sequence."),
    backend: str = typer.Option("ray", "--backend", help="ray, or local (in-process, no Ray)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more (and Ray's workers)."),
) -> None:
    """Track every sequence from its first-frame ground-truth box and write the results in the
    toolkit's layout; sequences with complete results are skipped, partial ones redone."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from samurai_onnx.compiler.evaluate.runner import RunError, run_dataset
    from samurai_onnx.runtime.bundle import BundleError, load_bundle
    from samurai_onnx.runtime.engine.base import DEVICES as DEVICE_PROVIDERS

    setup_logging(verbose)
    if device is not None and device not in DEVICE_PROVIDERS:
        raise fail(f"--device {device!r}: use one of {', '.join(DEVICE_PROVIDERS)}")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise fail(f"Ray is not installed: {EXTRA_HINT}, or run in-process with --backend local")
    try:
        load_bundle(bundle)  # a bad bundle is one line here, not one failure per sequence
        data = load_dataset(dataset, check_format(fmt), names(sequences))
        out_dir = out or Path("results") / bundle.resolve().name
        with logging_redirect_tqdm():
            summary = run_dataset(
                data,
                bundle,
                out_dir,
                device=device,
                workers=workers,
                threads=threads,
                retries=retries,
                backend=backend,
                address=address,
                progress=not no_progress,
                verbose=verbose,
            )
    except (BundleError, DatasetError, RunError) as e:
        raise fail(str(e)) from None
    except ConnectionError as e:
        raise fail(f"cannot reach the Ray cluster at {address}: {e}") from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted; finished sequences are kept, run again to resume", EXIT_INTERRUPTED
        ) from None
    failed = summary.names("failed")
    typer.echo(
        f"{len(summary.sequences)} sequences: {len(summary.names('tracked'))} tracked, "
        f"{len(summary.names('skipped'))} already complete, {len(failed)} failed; "
        f"{summary.wall_seconds:.1f} s with {summary.workers} worker(s) x {summary.threads} "
        f"thread(s) ({summary.backend}); results in {out_dir}",
        err=True,
    )
    for name in failed:
        typer.echo(f"failed: {name}: {summary.sequences[name]['error']}", err=True)
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def score(
    results: Path = typer.Argument(..., help="Results folder written by samurai-eval run."),
    dataset: Path = typer.Argument(..., help="The dataset folder the results are for."),
    fmt: str = typer.Option("auto", "--format", help="auto, lasot, got10k or otb."),
    sequences: str | None = typer.Option(None, "--sequences", help="Only these sequences."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the scores as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write the table."),
    plots: Path | None = typer.Option(
        None, "--plots", help="Folder for success_plot.png and precision_plot.png."
    ),
    name: str = typer.Option("SAMURAI-ONNX", "--name", help="Tracker name in the plots."),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Score the sequences that have results, leave out the rest."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """OPE success AUC, precision at 20 px, normalized precision, GOT-10k AO / SR0.5 / SR0.75,
    per sequence and overall, as a Markdown table (stdout), JSON and plots."""
    from samurai_onnx.compiler.evaluate.report import (
        build_report,
        score_results,
        to_markdown,
        write_json,
        write_plots,
    )
    from samurai_onnx.compiler.evaluate.results import result_paths, write_atomic

    setup_logging(verbose)
    if plots is not None and importlib.util.find_spec("matplotlib") is None:
        raise fail(f"--plots needs matplotlib, which is not installed: {EXTRA_HINT}")
    try:
        data = load_dataset(dataset, check_format(fmt), names(sequences))
        inputs = {s.groundtruth_path.resolve() for s in data.sequences}
        for s in data.sequences:
            inputs.update(p.resolve() for p in result_paths(data.format, results, s.name))
        outputs = [json_out, markdown_out]
        if plots is not None:
            outputs += [plots / "success_plot.png", plots / "precision_plot.png"]
        for path in outputs:
            if path is not None and path.resolve() in inputs:
                raise DatasetError(f"{path} is an input of this scoring; write elsewhere")
        scores, missing = score_results(results, data, skip_missing)
        report = build_report(results, data, scores, missing)
        text = to_markdown(report)
        if json_out:
            write_json(report, json_out)
        if markdown_out:
            write_atomic(markdown_out, text + "\n")
        if plots is not None:
            write_plots(report, plots, name)
    except DatasetError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"cannot write {e.filename}: {e.strerror}") from None
    typer.echo(text)


def main() -> None:
    app(prog_name="samurai-eval")


if __name__ == "__main__":
    main()
