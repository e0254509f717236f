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
from functools import partial
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
from samurai_onnx.compiler.graphs import (
    FP32_SCOPES,
    build_graph,
    example_inputs,
    graph_constants,
)
from samurai_onnx.compiler.manifest import (
    ComponentSpec,
    ManifestError,
    ModelManifest,
    TargetManifest,
    load_model_manifest,
    load_target_manifest,
)
from samurai_onnx.compiler.modeling.common import (
    BLOCKED_LOWERING,
    INT8_LOWERING,
    UINT8_KEYS_LOWERING,
    set_attention_lowering,
    set_norm_lowering,
)
from samurai_onnx.compiler.modeling.sam2 import SAM2Model, load_sam2
from samurai_onnx.compiler.passes.conv_gemm import count_gemm_convs, gemm_file
from samurai_onnx.compiler.passes.depthwise import count_depthwise, densify_file
from samurai_onnx.compiler.passes.export import export_graph
from samurai_onnx.compiler.passes.fp16 import convert_fp16
from samurai_onnx.compiler.passes.ort_format import convert_to_ort
from samurai_onnx.compiler.passes.quantize import quantize_int8
from samurai_onnx.compiler.passes.simplify import simplify_graph
from samurai_onnx.compiler.passes.verify import (
    NumericError,
    check_engine,
    check_outputs,
    declared_precision,
    max_abs_errors,
    run_graph,
)
from samurai_onnx.compiler.processing import PROCESSING_GRAPHS
from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    INT8_SCORE_FORMS,
    TrackerSettings,
    sha256_file,
    write_bundle_manifest,
)
from samurai_onnx.runtime.contract import BATCH_AXES, MODEL_GRAPHS, contract
from samurai_onnx.runtime.documents import one_line
from samurai_onnx.runtime.engine import Engine, EngineError
from samurai_onnx.runtime.signals import StopFlag

log = logging.getLogger(__name__)

_DTYPE_NAMES = {1: "float32", 7: "int64", 10: "float16", 9: "bool", 2: "uint8"}
# the forms that differ from the main form in their attention lowering alone (built where the
# model manifest offers them: attention.int8 for the integer-score forms, attention.blocked)
_ATTENTION_FORMS = {
    "int8attn": INT8_LOWERING,
    "u8attn": UINT8_KEYS_LOWERING,
    "blocked": BLOCKED_LOWERING,
}


class BuildError(RuntimeError):
    """A compiler pass that crashed (not one that broke the numbers: that is ``NumericError``)."""


@dataclass
class PassReport:
    component: str
    name: str
    seconds: float
    max_abs_error: dict[str, float]
    tolerance: float

    def line(self) -> str:
        """The one-line progress report that ``samurai-compile`` and ``export_onnx.py`` print."""
        worst = max(self.max_abs_error.items(), key=lambda kv: kv[1], default=("-", 0.0))
        return (
            f"  {self.component:<24} {self.name:<15} ok  {self.seconds:6.1f} s  "
            f"max abs error {worst[1]:.2e} ({worst[0]}, tolerance {self.tolerance:g})"
        )


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
    """The model manifest's fused lowering where the target allows fused kernels, else blocks of
    queries where the target asks for them and the manifest offers them, else its fallback."""
    if target.fused_attention and spec.fused_attention:
        return spec.fused_attention
    if target.attention_blocks and spec.blocked_attention:
        return BLOCKED_LOWERING
    return spec.attention


def _rounded(errors: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.4g}") for k, v in errors.items()}


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


@dataclass
class BuiltGraph:
    """What a component's build leaves: its final file and what the bundle records about it."""

    final: Path
    onnx_path: Path
    precision: str
    errors: dict[str, float]
    tolerance: float
    static: bool = False
    plain: Path | None = None  # the exported (and simplified) fp32 graph, before other passes


def _run_step(
    name: str,
    pass_name: str,
    fn: Callable[[], Path],
    check: Callable[[Path], dict[str, float]] | None,
    tolerance: float,
    where: str,
    options: BuildOptions,
    on_pass: Callable[[PassReport], None],
) -> tuple[Path, dict[str, float]]:
    """Run one pass, then its numeric check; failures name the component and the pass."""
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
    errors: dict[str, float] = {}
    if options.verify and check is not None:
        try:
            errors = check(path)
        except EngineError as exc:  # the target's engine could not load or run the graph
            raise BuildError(f"{name}: pass '{pass_name}': {exc}") from None
        check_outputs(name, pass_name, errors, tolerance, where)
    report = PassReport(name, pass_name, time.perf_counter() - start, dict(errors), tolerance)
    options.reports.append(report)
    on_pass(report)
    return path, errors


def _build_model_graph(
    name: str,
    model: SAM2Model,
    manifest: ModelManifest,
    target: TargetManifest,
    settings: TrackerSettings,
    work: Path,
    options: BuildOptions,
    on_pass: Callable[[PassReport], None],
    engine: Engine | None = None,
    form: str | None = None,
    main: BuiltGraph | None = None,
) -> BuiltGraph | None:
    """Build ``name`` through every pass the target asks for, each checked against PyTorch.

    ``form`` builds one of the target's alternatives instead of the main form, given the main
    form's build ``main``; None when it does not apply to this graph (``dense`` without
    depthwise convolutions, ``unfused`` where the main form has no fused attention, ``gemm``
    without convolutions its pass rewrites, ``layernorm`` without ``LayerNorm2d``, ``int8attn``,
    ``u8attn`` and ``blocked`` where the model manifest does not offer them). ``dense`` and ``gemm`` start
    from the main form's exported (and simplified) graph instead of exporting again."""
    spec = manifest.components[name]
    lowering = attention_lowering(spec, target)
    if form == "unfused":
        if lowering == spec.attention:
            return None
        lowering = spec.attention
    if form in _ATTENTION_FORMS:
        offered = spec.int8_attention if form in INT8_SCORE_FORMS else spec.blocked_attention
        if not offered:
            return None
        lowering = _ATTENTION_FORMS[form]

    def judged(precision: str) -> str:
        """int8 attention is not exact from the export on: its fp32 files are judged as int8."""
        return "int8" if form in INT8_SCORE_FORMS and precision == "fp32" else precision

    dense_from: Path | None = None
    if form in ("dense", "gemm"):
        assert main is not None and main.plain is not None, "made from the main form's graph"
        if form == "dense" and not count_depthwise(
            onnx.load(str(main.plain), load_external_data=False)
        ):
            return None
        if form == "gemm" and not count_gemm_convs(onnx.load(str(main.plain))):
            return None
        dense_from = main.plain
    label = f"{name}/{form}" if form else name  # in pass reports and file names
    stem = f"{name}.{form}" if form else name
    static = name == "memory_attention" and target.memory_shape == "static"
    graph = contract(name, settings.geometry, static=static)
    if not options.dynamic_batch:
        graph = graph.with_fixed(BATCH_AXES)
    wrapper = build_graph(name, model, settings, static=static)
    set_attention_lowering(wrapper, lowering)
    norms = set_norm_lowering(wrapper, "layernorm" if form == "layernorm" else "reduce")
    if form == "layernorm" and not norms:
        return None
    inputs = example_inputs(
        name, settings, static=static, objects=None if options.dynamic_batch else 1
    )
    with torch.no_grad():
        outs = wrapper(*(inputs[n] for n in graph.input_names))
    outs = outs if isinstance(outs, tuple) else (outs,)
    reference = dict(zip(graph.output_names, outs, strict=True))
    where = f"{manifest.path}: components.{name}.tolerance"

    def step(
        pass_name: str, precision: str, fn: Callable[[], Path], *, shipped: bool = True
    ) -> Path:
        """One pass and its check against PyTorch: on the target's engine, or on ONNX Runtime
        for a file that does not ship (the raw export, when simplify follows: OpenVINO takes
        minutes to compile the unsimplified image encoder and seconds for the simplified one)."""
        checker = engine if shipped else None
        precision = judged(precision)
        # the tolerance of what runs: an fp32 file runs in bf16 on OpenVINO with a bf16 hint
        runs_at = checker.run_precision(name, precision) if checker else precision
        tol = spec.tolerance.get(runs_at, 1e-4)
        path, errs = _run_step(
            label,
            pass_name,
            fn,
            lambda p: max_abs_errors(run_graph(p, inputs, checker, graph), reference),
            tol,
            f"{where}.{runs_at}",
            options,
            on_pass,
        )
        errors.clear()
        errors.update(errs)
        return path

    errors: dict[str, float] = {}
    if dense_from is not None:
        path = dense_from
    else:
        path = step(
            "export",
            "fp32",
            lambda: export_graph(
                wrapper, graph, inputs, work / f"{stem}.export.onnx", opset=target.opset
            ),
            shipped=not options.simplify,
        )
        if options.simplify:
            src = path
            path = step(
                "simplify", "fp32", lambda: simplify_graph(src, work / f"{stem}.sim.onnx")
            )
    plain = path
    # the dense form was checked for depthwise convolutions above; the main form is checked here
    if form == "dense" or (
        target.depthwise == "dense"
        and count_depthwise(onnx.load(str(path), load_external_data=False))
    ):
        src = path
        path = step(
            "dense-depthwise", "fp32", lambda: densify_file(src, work / f"{stem}.dw.onnx")
        )
    if form == "gemm":  # checked for convolutions to rewrite above
        src = path
        path = step("gemm-convs", "fp32", lambda: gemm_file(src, work / f"{stem}.mm.onnx"))
    precision = "fp32"
    if target.precision == "fp16":
        src = path
        path = step(
            "fp16", "fp16", lambda: convert_fp16(src, work / f"{stem}.fp16.onnx", FP32_SCOPES)
        )
        precision = "fp16"
    if target.quantization == "int8" and spec.quantization is not None:
        src, qs = path, spec.quantization
        path = step("int8", "int8", lambda: quantize_int8(src, work / f"{stem}.int8.onnx", qs))
        precision = "int8" if precision == "fp32" else f"{precision}+int8"
    precision = judged(precision)  # int8attn in a component the manifest keeps unquantized
    onnx_path = path
    if target.format == "ort":
        src = path
        path = step(
            "ort-format",
            precision.split("+")[-1],
            lambda: convert_to_ort(src, work / f"{stem}.ort"),
        )
    declared = declared_precision(target.engine, target.engine_options, precision.split("+")[-1])
    tol = spec.tolerance.get(declared, 1e-4)
    return BuiltGraph(path, onnx_path, precision, dict(errors), tol, static, plain)


def _build_processing_graph(
    name: str,
    model: SAM2Model,
    target: TargetManifest,
    settings: TrackerSettings,
    work: Path,
    options: BuildOptions,
    on_pass: Callable[[PassReport], None],
    engine: Engine | None = None,
) -> BuiltGraph:
    """Graphs written in ONNX operators, checked against the host (or PyTorch) computation, on
    ``engine`` (or ONNX Runtime)."""
    build, check, tol = PROCESSING_GRAPHS[name]
    if name == "mask_prompt":  # the one that holds a weight: the model's mask_downsample conv
        conv = model.mask_downsample
        weights = {
            "weight": conv.weight.detach().numpy().copy(),
            "bias": conv.bias.detach().numpy().copy(),
        }
        build, check = partial(build, **weights), partial(check, **weights)
    where = f"the {name} graph's tolerance (compiler/processing.py)"

    def step(pass_name: str, fn: Callable[[], Path]) -> tuple[Path, dict[str, float]]:
        return _run_step(
            name,
            pass_name,
            fn,
            lambda p: check(p, settings, engine=engine),
            tol,
            where,
            options,
            on_pass,
        )

    path, errors = step("build", lambda: build(settings, work / f"{name}.onnx"))
    onnx_path = path
    if target.format == "ort":
        src = path
        path, errors = step("ort-format", lambda: convert_to_ort(src, work / f"{name}.ort"))
    return BuiltGraph(path, onnx_path, "fp32", errors, tol)


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
    stop: StopFlag | None = None,
) -> Path:
    """Build the bundle of ``manifest_path`` for ``target_name``; returns its directory.

    ``stop`` (the command line's signal flag) is honoured after every pass and before the
    bundle is put in place: a signal whose exception a library swallowed still stops the build
    (see ``StopFlag.honour``)."""
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
            "processing": target.processing,
            "prefetch": target.prefetch,
            "depthwise": target.depthwise,
            "alternatives": list(target.alternatives),
            "engine": target.engine,
            "engine_options": target.engine_options,
        },
        "tracker": settings.to_dict(),
    }
    kept = staging.kept_components(existing, header, chosen)
    model = _load_model(manifest, ckpt)
    entries: dict[str, Any] = {}
    def report(r: PassReport) -> None:
        if stop is not None:
            stop.honour()
        if on_pass is not None:
            on_pass(r)

    # Checks run on the target's engine (None: ONNX Runtime's CPU provider).
    try:
        engine = check_engine(target.engine, target.engine_options) if options.verify else None
    except EngineError as exc:
        raise BuildError(f"{target.path}: {exc}") from None
    # Everything is built in a staging folder next to ``out`` and renamed into place only when
    # every component has passed, so a failed or interrupted build leaves ``out`` as it was.
    with staging.staging(out) as stage:
        work = stage / ".work"
        work.mkdir()
        for name in chosen:
            forms: dict[str, BuiltGraph] = {}
            if name in MODEL_GRAPHS:
                main = _build_model_graph(
                    name, model, manifest, target, settings, work, options, report, engine
                )
                assert main is not None  # the main form always applies
                built = main
                for form in target.alternatives:
                    alt = _build_model_graph(
                        name, model, manifest, target, settings, work, options, report, engine,
                        form, main,
                    )  # fmt: skip
                    if alt is not None:
                        forms[form] = alt
            else:
                built = _build_processing_graph(
                    name, model, target, settings, work, options, report, engine
                )
            ins, outs = _signature(built.onnx_path)
            entries[name] = {
                "file": f"{name}{built.final.suffix}",
                "sha256": sha256_file(built.final),
                "static": built.static,
                "precision": built.precision,
                "attention": (
                    attention_lowering(manifest.components[name], target)
                    if name in MODEL_GRAPHS
                    else "none"
                ),
                "inputs": ins,
                "outputs": outs,
                "constants": graph_constants(name, settings),
                "max_abs_error": _rounded(built.errors),
                "tolerance": built.tolerance,
            }
            if forms:
                entries[name]["alternatives"] = {}
            for form, alt in forms.items():
                file = f"{name}.{form}{alt.final.suffix}"
                entries[name]["alternatives"][form] = {
                    "file": file,
                    "sha256": sha256_file(alt.final),
                    "precision": alt.precision,
                    "max_abs_error": _rounded(alt.errors),
                }
                shutil.move(alt.final, stage / file)
            shutil.move(built.final, stage / entries[name]["file"])
        shutil.rmtree(work)
        for k in kept:
            for rel, source in k.files.items():
                staging.place(source, stage / rel)
            entries[k.name] = k.entry
        ordered = {c: entries[c] for c in COMPONENTS if c in entries}
        write_bundle_manifest(stage, {**header, "components": ordered})
        if stop is not None:
            stop.honour()
        staging.commit(stage, out)
    options.kept = [k.name for k in kept]
    warn_unverified(ckpt, manifest.checkpoint, ckpt_sha)
    return out
