"""Model and target manifests: read safely (``runtime/documents.py``) and validated into frozen
dataclasses.

Every error names the file and the key (``manifests/tiny.yaml: components.image_encoder.attention:
...``) and says what is allowed, so a typo never turns into a silently different model. Manifests
are untrusted input: they are read and checked with ``runtime/documents.py`` (size limit, no YAML
anchors/aliases, short quoted values, the range rules of ``SAM2Config``/``TrackerSettings``).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from samurai_onnx.compiler.modeling.common import ATTENTION_LOWERINGS
from samurai_onnx.compiler.modeling.config import HieraConfig, SAM2Config, config_problem
from samurai_onnx.runtime import documents
from samurai_onnx.runtime.bundle import (
    DEPTHWISE,
    ENGINES,
    FORMS,
    GEOMETRY_SETTINGS,
    INT8_SCORE_FORMS,
    PROCESSING,
    TrackerSettings,
)
from samurai_onnx.runtime.contract import MODEL_GRAPHS
from samurai_onnx.runtime.documents import DocumentError, check_fields, kind_ok, short

PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("none", "int8")
FORMATS = ("onnx", "ort")
MEMORY_SHAPES = ("dynamic", "static")
MODEL_SIZES = ("tiny", "small", "base_plus", "large")
# torch.onnx.export's TorchScript exporter (dynamo=False, see passes/export.py) stops at opset 20.
OPSETS = (17, 18, 19, 20)


class ManifestError(DocumentError):
    """An invalid manifest; the message names the file, the key and the fix."""


# documents' checks, raising ManifestError
_at = documents.at
_kind_ok = kind_ok
_require = functools.partial(documents.require, error=ManifestError)
_unknown = functools.partial(documents.unknown_keys, error=ManifestError)


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    return documents.choice(value, allowed, where, error=ManifestError)


@dataclass(frozen=True)
class ComponentSpec:
    """A model graph's build settings: attention lowering, quantization, tolerances."""

    name: str
    attention: str  # the fallback lowering: runs on every provider
    quantization: dict[str, Any] | None  # None: never quantized
    tolerance: dict[str, float]
    fused_attention: str | None = None  # used where the target allows fused kernels
    # the int8attn and u8attn forms (attention scores in int8) are built where a target asks
    int8_attention: bool = False
    # the blocked form (attention in blocks of queries) is built for this graph where a target asks
    blocked_attention: bool = False


@dataclass(frozen=True)
class CheckpointSpec:
    file: str
    url: str
    sha256: str | None


@dataclass(frozen=True)
class ModelManifest:
    path: Path
    name: str
    checkpoint: CheckpointSpec
    model: SAM2Config
    tracker: TrackerSettings
    components: dict[str, ComponentSpec]


@dataclass(frozen=True)
class TargetManifest:
    path: Path
    name: str
    providers: tuple[str, ...]
    provider_options: dict[str, dict[str, Any]]
    precision: str
    quantization: str
    opset: int
    format: str
    memory_shape: str
    fused_attention: bool = False  # may graphs use fused attention ops (ORT contrib kernels)?
    # without fused attention: attention in blocks of queries where the model manifest offers it
    attention_blocks: bool = False
    processing: str = "graph"  # pre/postprocessing in graphs, or on the host (exact parity)
    prefetch: bool = False  # encode the next frame while this one is tracked (runtime/ahead.py)
    depthwise: str = "grouped"  # depthwise convolutions as grouped Conv, or dense (GPU)
    alternatives: tuple[str, ...] = ()  # other forms of graphs, the fastest runs (bundle.FORMS)
    engine: str = "onnxruntime"
    engine_options: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file; check the path")
    data = documents.load_yaml(path, error=ManifestError)
    if not isinstance(data, dict):
        raise ManifestError(
            f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}"
        )
    return data


def _component(name: str, data: Any, where: str) -> ComponentSpec:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a mapping of inputs, attention, quantization, ...")
    if "inputs" in data:
        raise ManifestError(
            f"{where}.inputs: graph inputs are no longer written in model manifests (the graph "
            "contract in runtime/contract.py defines them); delete this key"
        )
    _unknown(data, {"attention", "quantization", "tolerance"}, where)
    raw_attention = data.get("attention", "matmul")
    fused: str | None = None
    flags = {"int8": False, "blocked": False}  # the forms this graph offers (see ComponentSpec)
    if isinstance(raw_attention, dict):
        aw = f"{where}.attention"
        _unknown(raw_attention, {"fused", "fallback", *flags}, aw)
        for flag in flags:
            value = raw_attention.get(flag, False)
            if not isinstance(value, bool):
                raise ManifestError(f"{aw}.{flag}: expected true or false, got {short(value)}")
            flags[flag] = value
        fused = _choice(raw_attention.get("fused"), ATTENTION_LOWERINGS, f"{aw}.fused")
        attention = _choice(
            raw_attention.get("fallback", "matmul"), ATTENTION_LOWERINGS, f"{aw}.fallback"
        )
    else:
        attention = _choice(raw_attention, ATTENTION_LOWERINGS, f"{where}.attention")
    quant = data.get("quantization", "none")
    if quant == "none":
        quantization = None
    elif isinstance(quant, dict):
        qw = f"{where}.quantization"
        _unknown(quant, {"mode", "op_types", "per_channel"}, qw)
        _choice(quant.get("mode"), ("dynamic",), f"{qw}.mode")
        if not isinstance(quant.get("per_channel", False), bool):
            raise ManifestError(
                f"{qw}.per_channel: expected true or false, got {short(quant['per_channel'])}"
            )
        ops = quant.get("op_types", ["MatMul", "Gemm"])
        if not isinstance(ops, list) or not ops or not all(_kind_ok(o, str) for o in ops):
            raise ManifestError(
                f"{qw}.op_types: expected a list of ONNX op types, got {short(ops)}"
            )
        quantization = dict(quant)
    else:
        raise ManifestError(
            f"{where}.quantization: {short(quant)}; use 'none' or "
            "{mode: dynamic, op_types: [...], per_channel: true|false}"
        )
    tol = data.get("tolerance", {})
    if not isinstance(tol, dict):
        raise ManifestError(
            f"{where}.tolerance: expected a mapping like {{fp32: 1.0e-4, fp16: 0.5}}, got {short(tol)}"
        )
    _unknown(tol, {"fp32", "fp16", "int8", "bf16"}, f"{where}.tolerance")  # bf16: OpenVINO
    for key, value in tol.items():
        if not _kind_ok(value, (int, float)) or not 0 < value < float("inf"):
            raise ManifestError(
                f"{where}.tolerance.{key}: expected a positive number (max abs error), "
                f"got {short(value)}"
            )
    return ComponentSpec(
        name,
        attention,
        quantization,
        {k: float(v) for k, v in tol.items()},
        fused,
        int8_attention=flags["int8"],
        blocked_attention=flags["blocked"],
    )


_DERIVED_TRACKER_KEYS = GEOMETRY_SETTINGS


def _model_config(name: str, data: Any, where: str) -> SAM2Config:
    """``model:`` checked key by key (types of ``SAM2Config``/``HieraConfig``), then built."""
    where = _at(where, "model")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a mapping, got {short(data)}")
    hiera = data.get("hiera") or {}
    if not isinstance(hiera, dict):
        raise ManifestError(f"{where}.hiera: expected a mapping, got {short(hiera)}")
    check_fields(
        SAM2Config, {k: v for k, v in data.items() if k != "name"}, where, error=ManifestError
    )
    check_fields(HieraConfig, hiera, f"{where}.hiera", error=ManifestError)
    if "name" in data:
        raise ManifestError(f"{where}.name: the model's name is the top-level name: key")
    try:
        cfg = SAM2Config.from_dict({"name": name, **data}, where=where)
    except (TypeError, ValueError) as exc:
        raise ManifestError(documents.one_line(exc)) from None
    problem = config_problem(cfg)
    if problem:
        raise ManifestError(f"{where}.{problem}")
    return cfg


def load_model_manifest(path: str | Path) -> ModelManifest:
    """Read ``manifests/<size>.yaml`` (a path, or a bare size name for the packaged copy)."""
    path = _locate(path, "manifests")
    data = _read(path)
    where = str(path)
    _unknown(data, {"name", "checkpoint", "model", "tracker", "components"}, where)
    name = _choice(_require(data, "name", where, str), MODEL_SIZES, _at(where, "name"))
    ck = _require(data, "checkpoint", where, dict)
    cw = _at(where, "checkpoint")
    _unknown(ck, {"file", "url", "sha256"}, cw)
    sha = ck.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise ManifestError(f"{cw}.sha256: expected 64 hex digits or null, got {short(sha)}")
    checkpoint = CheckpointSpec(
        file=_require(ck, "file", cw, str),
        url=_require(ck, "url", cw, str),
        sha256=sha.lower() if sha else None,
    )
    model = _model_config(name, data.get("model"), where)
    tw = _at(where, "tracker")
    tracker_data = data.get("tracker") or {}
    if not isinstance(tracker_data, dict):
        raise ManifestError(f"{tw}: expected a mapping, got {short(tracker_data)}")
    derived = [k for k in _DERIVED_TRACKER_KEYS if k in tracker_data]
    if derived:
        raise ManifestError(
            f"{tw}.{derived[0]}: follows from the model (or the target's memory_shape) and "
            "cannot be set here"
        )
    try:
        tracker = TrackerSettings.from_dict(
            {
                "image_size": model.image_size,
                "d_model": model.d_model,
                "mem_dim": model.mem_dim,
                "feat_size": model.feat_size,
                "low_res_mask_size": model.low_res_mask_size,
                "num_maskmem": model.num_maskmem,
                "max_obj_ptrs_in_encoder": model.max_obj_ptrs_in_encoder,
                **tracker_data,
            },
            where=tw,
        )
    except DocumentError as exc:
        raise ManifestError(str(exc)) from None
    comps = _require(data, "components", where, dict)
    pw = _at(where, "components")
    _unknown(comps, set(MODEL_GRAPHS), pw)
    missing = [c for c in MODEL_GRAPHS if c not in comps]
    if missing:
        raise ManifestError(f"{pw}: missing {', '.join(missing)} (all four are required)")
    components = {c: _component(c, comps[c], f"{pw}.{c}") for c in MODEL_GRAPHS}
    return ModelManifest(path, name, checkpoint, model, tracker, components)


def _known_providers() -> set[str]:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return set()
    return set(ort.get_all_providers())


def load_target_manifest(path: str | Path) -> TargetManifest:
    """Read ``targets/<name>.yaml`` (a path, or a bare target name for the packaged copy)."""
    path = _locate(path, "targets")
    data = _read(path)
    where = str(path)
    _unknown(
        data,
        {
            "name",
            "providers",
            "provider_options",
            "precision",
            "quantization",
            "opset",
            "format",
            "memory_shape",
            "fused_attention",
            "attention_blocks",
            "processing",
            "prefetch",
            "depthwise",
            "alternatives",
            "engine",
            "engine_options",
        },
        where,
    )
    name = _require(data, "name", where, str)
    fused_attention = _flag(data, "fused_attention", where)
    providers = _require(data, "providers", where, list)
    if not providers or not all(_kind_ok(p, str) for p in providers):
        raise ManifestError(
            f"{_at(where, 'providers')}: expected a non-empty list of provider names, "
            f"got {short(providers)}"
        )
    known = _known_providers()
    unknown = [p for p in providers if known and p not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
        raise ManifestError(
            f"{_at(where, 'providers')}: unknown execution provider {short(unknown[0])}; {hint}"
        )
    opset = _require(data, "opset", where, int)
    if opset not in OPSETS:
        raise ManifestError(
            f"{_at(where, 'opset')}: {opset} is outside the supported range "
            f"{OPSETS[0]}..{OPSETS[-1]}"
        )
    ow = _at(where, "provider_options")
    options = data.get("provider_options") or {}
    if not isinstance(options, dict):
        raise ManifestError(f"{ow}: expected a mapping provider -> options, got {short(options)}")
    for provider, opts in options.items():
        if provider not in providers:
            raise ManifestError(
                f"{ow}.{documents.key_text(provider)}: not one of this target's providers"
            )
        if not isinstance(opts, dict):
            raise ManifestError(
                f"{ow}.{documents.key_text(provider)}: expected a mapping of options, got {short(opts)}"
            )

    engine_options = data.get("engine_options") or {}
    if not isinstance(engine_options, dict):
        raise ManifestError(
            f"{_at(where, 'engine_options')}: expected a mapping of options, got {short(engine_options)}"
        )

    def choice(key: str, default: str, allowed: tuple[str, ...]) -> str:
        return _choice(data.get(key, default), allowed, _at(where, key))

    depthwise = choice("depthwise", "grouped", DEPTHWISE)
    alternatives = _alternatives(data.get("alternatives") or [], _at(where, "alternatives"))
    if "dense" in alternatives and depthwise == "dense":
        raise ManifestError(
            f"{_at(where, 'alternatives')}: dense is already the main form (depthwise: dense); "
            "drop one of them"
        )
    if "unfused" in alternatives and not fused_attention:
        raise ManifestError(
            f"{_at(where, 'alternatives')}: unfused needs fused_attention: true (without it the "
            "graphs are unfused already); drop it or set fused_attention: true"
        )
    attention_blocks = _flag(data, "attention_blocks", where)
    if attention_blocks and fused_attention:
        raise ManifestError(
            f"{_at(where, 'attention_blocks')}: blocks are for unfused attention (a fused kernel "
            "never holds all scores); set fused_attention: false, or list blocked in alternatives"
        )
    if attention_blocks and "blocked" in alternatives:
        raise ManifestError(
            f"{_at(where, 'alternatives')}: blocked is already the main form (attention_blocks: "
            "true); drop one of them"
        )
    quantization = choice("quantization", "none", QUANTIZATIONS)
    for form in INT8_SCORE_FORMS:
        if form in alternatives and quantization != "int8":
            raise ManifestError(
                f"{_at(where, 'alternatives')}: {form} (attention scores in int8) is not exact, "
                "so it needs quantization: int8 (the int8 tolerance); drop it or set "
                "quantization: int8"
            )
    return TargetManifest(
        path=path,
        name=name,
        providers=tuple(providers),
        provider_options={str(k): dict(v) for k, v in options.items()},
        precision=choice("precision", "fp32", PRECISIONS),
        quantization=quantization,
        opset=opset,
        format=choice("format", "onnx", FORMATS),
        memory_shape=choice("memory_shape", "dynamic", MEMORY_SHAPES),
        fused_attention=fused_attention,
        attention_blocks=attention_blocks,
        processing=choice("processing", "graph", PROCESSING),
        prefetch=_flag(data, "prefetch", where),
        depthwise=depthwise,
        alternatives=alternatives,
        engine=choice("engine", "onnxruntime", ENGINES),
        engine_options=engine_options,
    )


def _flag(data: dict[str, Any], key: str, where: str) -> bool:
    """An optional true/false field (false when absent)."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ManifestError(f"{_at(where, key)}: expected true or false, got {short(value)}")
    return value


def _alternatives(value: Any, where: str) -> tuple[str, ...]:
    """A target's ``alternatives``: a list of distinct form names (``bundle.FORMS``)."""
    if not isinstance(value, list):
        raise ManifestError(f"{where}: expected a list of {', '.join(FORMS)}, got {short(value)}")
    names = tuple(_choice(v, FORMS, f"{where}[{i}]") for i, v in enumerate(value[: len(FORMS) + 1]))
    if len(set(names)) != len(value):
        raise ManifestError(f"{where}: each of {', '.join(FORMS)} at most once, got {short(value)}")
    return names


def _locate(path: str | Path, folder: str) -> Path:
    """A path as given, or ``<name>`` looked up among the packaged manifests of ``folder``."""
    p = Path(path)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    packaged = resources.files(f"samurai_onnx.{folder}").joinpath(f"{p.name}.yaml")
    candidate = Path(str(packaged))
    if candidate.is_file():
        return candidate
    raise ManifestError(
        f"{path!s}: no such {folder[:-1]}; known: {', '.join(packaged_names(folder))}"
    )


def packaged_names(folder: str) -> list[str]:
    """Names of the packaged manifests of ``folder`` (``manifests`` or ``targets``), for help texts."""
    return sorted(
        Path(str(f)).stem
        for f in resources.files(f"samurai_onnx.{folder}").iterdir()
        if str(f).endswith(".yaml")
    )
