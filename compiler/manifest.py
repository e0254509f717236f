"""Model and target manifests: read with ``yaml.safe_load`` and validated into frozen dataclasses.

Every error names the file and the key (``manifests/tiny.yaml: components.image_encoder.attention:
...``) and says what is allowed, so a typo never turns into a silently different model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from samurai_onnx.compiler.modeling.common import ATTENTION_LOWERINGS
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.runtime.bundle import COMPONENTS, GRAPH_IO, TrackerSettings

PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("none", "int8")
FORMATS = ("onnx", "ort")
MEMORY_SHAPES = ("dynamic", "static")
_DTYPES = ("float32", "int64")


class ManifestError(ValueError):
    """An invalid manifest; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    attention: str
    quantization: dict[str, Any] | None  # None: never quantized
    tolerance: dict[str, float]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axes given as names in the manifest, in ``torch.onnx.export``'s form."""
        axes: dict[str, dict[int, str]] = {}
        for spec in self.inputs:
            named = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            if named:
                axes[spec.name] = named
        return axes


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


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping of keys at the top level")
    return data


def _require(data: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ManifestError(f"{where}.{key}: missing (required)")
    value = data[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ManifestError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ManifestError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ManifestError(
            f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}"
        )


def _component(name: str, data: Any, where: str) -> ComponentSpec:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a mapping")
    _unknown(data, {"inputs", "attention", "quantization", "tolerance"}, where)
    raw_inputs = _require(data, "inputs", where, list)
    inputs = []
    for i, item in enumerate(raw_inputs):
        iw = f"{where}.inputs[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{iw}: expected {{name, dtype, shape}}")
        _unknown(item, {"name", "dtype", "shape"}, iw)
        shape = _require(item, "shape", iw, list)
        if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
            raise ManifestError(f"{iw}.shape: every dimension must be an int or an axis name")
        inputs.append(
            InputSpec(
                name=_require(item, "name", iw, str),
                dtype=_choice(_require(item, "dtype", iw, str), _DTYPES, f"{iw}.dtype"),
                shape=tuple(shape),
            )
        )
    expected = GRAPH_IO[name]["inputs"]
    got = tuple(s.name for s in inputs)
    if got != expected:
        raise ManifestError(
            f"{where}.inputs: names {list(got)} do not match the graph's inputs {list(expected)}"
        )
    attention = _choice(data.get("attention", "matmul"), ATTENTION_LOWERINGS, f"{where}.attention")
    quant = data.get("quantization", "none")
    if quant == "none":
        quantization = None
    elif isinstance(quant, dict):
        _unknown(quant, {"mode", "op_types"}, f"{where}.quantization")
        _choice(quant.get("mode"), ("dynamic",), f"{where}.quantization.mode")
        quantization = dict(quant)
    else:
        raise ManifestError(
            f"{where}.quantization: use 'none' or {{mode: dynamic, op_types: [...]}}"
        )
    tol = data.get("tolerance", {})
    if not isinstance(tol, dict) or not all(isinstance(v, (int, float)) for v in tol.values()):
        raise ManifestError(
            f"{where}.tolerance: expected a mapping like {{fp32: 1.0e-4, fp16: 0.5}}"
        )
    _unknown(tol, {"fp32", "fp16", "int8"}, f"{where}.tolerance")
    return ComponentSpec(
        name, tuple(inputs), attention, quantization, {k: float(v) for k, v in tol.items()}
    )


def load_model_manifest(path: str | Path) -> ModelManifest:
    """Read ``manifests/<size>.yaml`` (a path, or a bare size name for the packaged copy)."""
    path = _locate(path, "manifests")
    data = _read(path)
    where = str(path)
    _unknown(data, {"name", "checkpoint", "model", "tracker", "components"}, where)
    name = _require(data, "name", where, str)
    ck = _require(data, "checkpoint", where, dict)
    _unknown(ck, {"file", "url", "sha256"}, f"{where}: checkpoint")
    sha = ck.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ManifestError(f"{where}: checkpoint.sha256: expected 64 hex digits or null")
    checkpoint = CheckpointSpec(
        file=_require(ck, "file", f"{where}: checkpoint", str),
        url=_require(ck, "url", f"{where}: checkpoint", str),
        sha256=sha,
    )
    try:
        model = SAM2Config.from_dict(
            {"name": name, **(data.get("model") or {})}, where=f"{where}: model"
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(str(exc)) from None
    try:
        tracker_data = dict(data.get("tracker") or {})
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
            where=f"{where}: tracker",
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(str(exc)) from None
    comps = _require(data, "components", where, dict)
    _unknown(comps, set(COMPONENTS), f"{where}: components")
    missing = [c for c in COMPONENTS if c not in comps]
    if missing:
        raise ManifestError(f"{where}: components: missing {', '.join(missing)}")
    components = {c: _component(c, comps[c], f"{where}: components.{c}") for c in COMPONENTS}
    return ModelManifest(path, name, checkpoint, model, tracker, components)


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
        },
        where,
    )
    providers = _require(data, "providers", where, list)
    if not providers or not all(isinstance(p, str) for p in providers):
        raise ManifestError(f"{where}: providers: expected a non-empty list of provider names")
    opset = _require(data, "opset", where, int)
    if not 17 <= opset <= 21:
        raise ManifestError(f"{where}: opset: {opset} is outside the supported range 17..21")
    options = data.get("provider_options") or {}
    if not isinstance(options, dict):
        raise ManifestError(f"{where}: provider_options: expected a mapping provider -> options")
    return TargetManifest(
        path=path,
        name=_require(data, "name", where, str),
        providers=tuple(providers),
        provider_options={str(k): dict(v) for k, v in options.items()},
        precision=_choice(data.get("precision", "fp32"), PRECISIONS, f"{where}: precision"),
        quantization=_choice(
            data.get("quantization", "none"), QUANTIZATIONS, f"{where}: quantization"
        ),
        opset=opset,
        format=_choice(data.get("format", "onnx"), FORMATS, f"{where}: format"),
        memory_shape=_choice(
            data.get("memory_shape", "dynamic"), MEMORY_SHAPES, f"{where}: memory_shape"
        ),
    )


def _locate(path: str | Path, folder: str) -> Path:
    """A path as given, or ``<name>`` looked up among the packaged manifests of ``folder``."""
    p = Path(path)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    packaged = resources.files(f"samurai_onnx.{folder}").joinpath(f"{p.name}.yaml")
    candidate = Path(str(packaged))
    if candidate.is_file():
        return candidate
    names = sorted(
        Path(str(f)).stem
        for f in resources.files(f"samurai_onnx.{folder}").iterdir()
        if str(f).endswith(".yaml")
    )
    raise ManifestError(f"{path!s}: no such {folder[:-1]}; known: {', '.join(names)}")
