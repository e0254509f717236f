"""The compiler driver: checkpoint -> modules -> graphs -> passes (each verified) -> bundle.

One function, ``compile_bundle``, used by ``samurai-compile``, ``scripts/export_onnx.py`` and the
tests, so that all of them build bundles the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from samurai_onnx.compiler import __version__, staging
from samurai_onnx.compiler.checkpoint import (
    read_state_dict,
    resolve_checkpoint,
    verify_sha256,
    warn_unverified,
)
from samurai_onnx.compiler.graphs import build_graph, example_inputs
from samurai_onnx.compiler.manifest import (
    ComponentSpec,
    ManifestError,
    ModelManifest,
    TargetManifest,
    load_model_manifest,
    load_target_manifest,
)
from samurai_onnx.compiler.modeling.common import set_attention_lowering
from samurai_onnx.compiler.modeling.sam2 import SAM2Model, load_sam2
from samurai_onnx.compiler.passes.export import export_graph
from samurai_onnx.compiler.passes.fp16 import convert_fp16
from samurai_onnx.compiler.passes.ort_format import convert_to_ort
from samurai_onnx.compiler.passes.quantize import quantize_int8
from samurai_onnx.compiler.passes.simplify import simplify_graph
from samurai_onnx.compiler.passes.verify import (
    NumericError,
    check_outputs,
    max_abs_errors,
    run_graph,
)
from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    GRAPH_IO,
    TrackerSettings,
    sha256_file,
    write_bundle_manifest,
)
from samurai_onnx.runtime.documents import one_line

log = logging.getLogger(__name__)

_DTYPE_NAMES = {1: "float32", 7: "int64", 10: "float16", 9: "bool"}


class BuildError(RuntimeError):
    """A compiler pass that crashed (not one that broke the numbers: that is ``NumericError``)."""


@dataclass
class PassReport:
    component: str
    name: str
    seconds: float
    max_abs_error: dict[str, float]
    tolerance: float


@dataclass
class BuildOptions:
    """Knobs of a build beyond the two manifests (``scripts/export_onnx.py`` maps onto these)."""

    simplify: bool = True
    dynamic_batch: bool = True
    verify: bool = True
    download: bool = True
    reports: list[PassReport] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # components kept from an existing --out


def attention_lowering(spec: ComponentSpec, target: TargetManifest) -> str:
    """The model manifest's fused lowering where the target allows fused kernels, else its fallback."""
    return (
        spec.fused_attention if target.fused_attention and spec.fused_attention else spec.attention
    )


def _dynamic_axes(
    spec: ComponentSpec, graph: str, dynamic_batch: bool
) -> dict[str, dict[int, str]]:
    axes = spec.dynamic_axes()
    if graph.endswith("_static"):
        # fixed slots: only the object axis stays dynamic
        axes = {k: {0: v[0]} for k, v in axes.items() if 0 in v and v[0] in ("objects", "batch")}
        for extra in ("memory_valid", "obj_ptr_valid"):
            axes.pop(extra, None)
    if not dynamic_batch:
        axes = {
            k: {i: n for i, n in v.items() if n not in ("objects", "batch")}
            for k, v in axes.items()
        }
        axes = {k: v for k, v in axes.items() if v}
    batch_name = next(
        (v[0] for v in axes.values() if 0 in v and v[0] in ("objects", "batch")), None
    )
    if batch_name:
        for out in GRAPH_IO[graph]["outputs"]:
            axes[out] = {0: batch_name}
    return axes


def _check_inputs(spec: ComponentSpec, inputs: dict[str, torch.Tensor], where: str) -> None:
    """The manifest's input dtypes and fixed sizes against the tensors the graph is traced with.

    Why: the manifest's shapes only name the dynamic axes for the exporter; a fixed size that
    disagrees with the model (``[batch, 3, 512, 512]`` for a 1024-pixel model) would otherwise
    be silently ignored. Static graphs' extra inputs (validity masks) are not in the manifest, and
    their slot axes are named (dynamic) there.
    """
    for i, item in enumerate(spec.inputs):
        tensor = inputs[item.name]
        at = f"{where}.inputs[{i}]"
        dtype = str(tensor.dtype).removeprefix("torch.")
        if item.dtype != dtype:
            raise ManifestError(
                f"{at}.dtype: {item.name} is {dtype} in the graph, not {item.dtype}"
            )
        if len(item.shape) != tensor.ndim or any(
            isinstance(d, int) and d != n for d, n in zip(item.shape, tensor.shape, strict=False)
        ):
            raise ManifestError(
                f"{at}.shape: {list(item.shape)} does not fit {item.name} of this model, "
                f"{list(tensor.shape)} (a string is a dynamic axis)"
            )


def _signature(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    model = onnx.load(str(path), load_external_data=False)

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return {
            "name": v.name,
            "dtype": _DTYPE_NAMES.get(t.elem_type, str(t.elem_type)),
            "shape": dims,
        }

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def _graph_name(component: str, target: TargetManifest) -> str:
    static = component == "memory_attention" and target.memory_shape == "static"
    return "memory_attention_static" if static else component


def _build_component(
    name: str,
    model: SAM2Model,
    manifest: ModelManifest,
    target: TargetManifest,
    settings: TrackerSettings,
    work: Path,
    options: BuildOptions,
    on_pass: Callable[[PassReport], None],
) -> tuple[Path, Path, str, str, dict[str, float], float]:
    spec = manifest.components[name]
    graph = _graph_name(name, target)
    wrapper = build_graph(graph, model, settings)
    set_attention_lowering(wrapper, attention_lowering(spec, target))
    inputs = example_inputs(graph, settings)
    with torch.no_grad():
        outs = wrapper(*(inputs[n] for n in GRAPH_IO[graph]["inputs"]))
    outs = outs if isinstance(outs, tuple) else (outs,)
    reference = dict(zip(GRAPH_IO[graph]["outputs"], outs, strict=True))
    where = f"{manifest.path}: components.{name}.tolerance"
    errors: dict[str, float] = {}

    def step(pass_name: str, precision: str, fn: Callable[[], Path]) -> Path:
        nonlocal errors
        start = time.perf_counter()
        try:
            path = fn()
        except (NumericError, ManifestError):
            raise
        except Exception as exc:
            log.debug("pass %s of %s failed", pass_name, name, exc_info=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BuildError(
                f"{name}: pass '{pass_name}' failed ({type(exc).__name__}: {first[:300]}); "
                "run samurai-compile with --verbose for the traceback"
            ) from exc
        tol = spec.tolerance.get(precision, 1e-4)
        if options.verify:
            errors = max_abs_errors(run_graph(path, inputs), reference)
            check_outputs(name, pass_name, errors, tol, f"{where}.{precision}")
        report = PassReport(name, pass_name, time.perf_counter() - start, dict(errors), tol)
        options.reports.append(report)
        on_pass(report)
        return path

    axes = _dynamic_axes(spec, graph, options.dynamic_batch)
    path = step(
        "export",
        "fp32",
        lambda: export_graph(
            wrapper,
            graph,
            inputs,
            axes,
            work / f"{name}.export.onnx",
            opset=target.opset,
            output_shapes={k: tuple(v.shape) for k, v in reference.items()},
        ),
    )
    if options.simplify:
        src = path
        path = step("simplify", "fp32", lambda: simplify_graph(src, work / f"{name}.sim.onnx"))
    precision = "fp32"
    if target.precision == "fp16":
        src = path
        path = step("fp16", "fp16", lambda: convert_fp16(src, work / f"{name}.fp16.onnx"))
        precision = "fp16"
    if target.quantization == "int8" and spec.quantization is not None:
        src, qs = path, spec.quantization
        path = step("int8", "int8", lambda: quantize_int8(src, work / f"{name}.int8.onnx", qs))
        precision = "int8" if precision == "fp32" else f"{precision}+int8"
    onnx_path = path
    if target.format == "ort":
        src = path
        path = step(
            "ort-format",
            precision.split("+")[-1],
            lambda: convert_to_ort(src, work / f"{name}.ort"),
        )
    tol = spec.tolerance.get(precision.split("+")[-1], 1e-4)
    return path, onnx_path, graph, precision, errors, tol


def _load_model(manifest: ModelManifest, ckpt: Path) -> SAM2Model:
    """The PyTorch model of ``manifest`` with the checkpoint's weights; a configuration that
    passed the manifest's checks but still cannot be built is reported as a manifest error."""
    state = read_state_dict(ckpt, manifest)
    try:
        return load_sam2(manifest.model, state, source=ckpt)
    except ValueError:
        raise
    except Exception as exc:
        log.debug("building the model failed", exc_info=True)
        raise ManifestError(
            f"{manifest.path}: model: this configuration cannot be built ({type(exc).__name__}: "
            f"{one_line(exc, 300)}); compare it with the official config"
        ) from None


def compile_bundle(
    manifest_path: str | Path,
    target_name: str | Path = "cpu",
    *,
    checkpoint: Path | None = None,
    out_dir: Path | None = None,
    components: Sequence[str] | None = None,
    options: BuildOptions | None = None,
    on_pass: Callable[[PassReport], None] | None = None,
) -> Path:
    """Build the bundle of ``manifest_path`` for ``target_name``; returns its directory."""
    options = options or BuildOptions()
    manifest = load_model_manifest(manifest_path)
    target = load_target_manifest(target_name)
    chosen = list(components or COMPONENTS)
    unknown = [c for c in chosen if c not in COMPONENTS]
    if unknown:
        raise ValueError(
            f"unknown component(s) {', '.join(unknown)}; use all or {', '.join(COMPONENTS)}"
        )
    settings = dataclasses.replace(manifest.tracker, memory_shape=target.memory_shape)
    for name in chosen:  # manifest mistakes first, before the checkpoint is looked for
        graph = _graph_name(name, target)
        where = f"{manifest.path}: components.{name}"
        _check_inputs(manifest.components[name], example_inputs(graph, settings), where)
    out = Path(out_dir) if out_dir else Path("bundles") / f"{manifest.name}-{target.name}"
    existing = staging.inspect_out(out)  # refuse an --out that must not be replaced, early
    ckpt = resolve_checkpoint(manifest.checkpoint, checkpoint, download=options.download)
    ckpt_sha = verify_sha256(ckpt, manifest.checkpoint, warn=False)
    header = {
        "compiler_version": __version__,
        "model": {"name": manifest.name, "config": manifest.model.to_dict()},
        "source_checkpoint": {"file": manifest.checkpoint.file, "sha256": ckpt_sha},
        "target": {
            "name": target.name,
            "providers": list(target.providers),
            "provider_options": target.provider_options,
            "precision": target.precision,
            "quantization": target.quantization,
            "opset": target.opset,
            "format": target.format,
            "memory_shape": target.memory_shape,
        },
        "tracker": settings.to_dict(),
    }
    kept = staging.kept_components(existing, header, chosen)
    model = _load_model(manifest, ckpt)
    entries: dict[str, Any] = {}
    # Everything is built in a staging folder next to ``out`` and renamed into place only when
    # every component has passed, so a failed or interrupted build leaves ``out`` as it was.
    with staging.staging(out) as stage:
        work = stage / ".work"
        work.mkdir()
        for name in chosen:
            final, onnx_path, graph, precision, errors, tol = _build_component(
                name,
                model,
                manifest,
                target,
                settings,
                work,
                options,
                on_pass or (lambda r: None),
            )
            ins, outs = _signature(onnx_path)
            entries[name] = {
                "file": f"{name}{final.suffix}",
                "sha256": sha256_file(final),
                "graph": graph,
                "precision": precision,
                "attention": attention_lowering(manifest.components[name], target),
                "inputs": ins,
                "outputs": outs,
                "max_abs_error": {k: float(f"{v:.4g}") for k, v in errors.items()},
                "tolerance": tol,
            }
            shutil.move(final, stage / entries[name]["file"])
        shutil.rmtree(work)
        for k in kept:
            staging.place(k.source, stage / k.entry["file"])
            entries[k.name] = k.entry
        ordered = {c: entries[c] for c in COMPONENTS if c in entries}
        write_bundle_manifest(stage, {**header, "components": ordered})
        staging.commit(stage, out)
    options.kept = [k.name for k in kept]
    warn_unverified(ckpt, manifest.checkpoint, ckpt_sha)
    return out
