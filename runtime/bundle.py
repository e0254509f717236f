"""The bundle format: one directory of ONNX graphs plus ``bundle.yaml``, read and verified here.

This module is the single definition of the format. The compiler imports it to write bundles
(``TrackerSettings``, ``FORMAT_VERSION``, ``write_bundle_manifest``) and the runtime to read them
(``load_bundle``), so the two cannot drift apart; each graph's I/O is the contract's
(``runtime/contract.py``). It imports neither torch nor onnx.

A bundle is untrusted input: ``bundle.yaml`` must match the digest in ``bundle.yaml.sha256``
(written next to it by the compiler: the one hash that covers the whole bundle, since the manifest
holds every graph's sha256; ready to be signed), it is read by ``documents.load_yaml``'s rules
(size limit, no anchors or aliases) and every field is type- and range-checked; every file it
names must resolve to a path inside the bundle directory, and every file's sha256 is checked
before a session is created from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from samurai_onnx.runtime.contract import GRAPHS, ContractError, Geometry, TensorSpec, contract
from samurai_onnx.runtime.documents import (
    DocumentError,
    ErrorType,
    Range,
    check_fields,
    check_instance,
    dump_yaml,
    one_line,
    parse_yaml,
    read_verified,
    short,
    write_digest,
)
from samurai_onnx.runtime.documents import at as _at
from samurai_onnx.runtime.documents import require as _require
from samurai_onnx.runtime.documents import unknown_keys as _unknown_keys

# 2: seven graphs (preprocess, postprocess and mask_prompt added), memories and pointers in
# device-resident pools read and written by index, per-object batches.
FORMAT_VERSION = 2
MANIFEST_NAME = "bundle.yaml"
ENGINES = ("onnxruntime", "openvino")
PROCESSING = ("graph", "host")  # pre/postprocessing in graphs, or on the host (exact parity)
# How the graphs write depthwise convolutions: grouped Conv (fast on CPUs), or dense with
# block-diagonal weights (compiler/passes/depthwise.py: the same numbers, 256x the multiply-adds,
# one tensor-core kernel on a GPU where cuDNN's depthwise kernels are slow).
DEPTHWISE = ("grouped", "dense")
# Other forms of a graph a target may have the compiler add next to the main one (its
# ``alternatives``): the same computation written for other kernels (``dense``: depthwise
# convolutions as above; ``unfused``: attention as MatMul/Softmax/MatMul instead of a fused
# kernel; ``gemm``: the convolutions cuDNN serves worst as matrix products,
# compiler/passes/conv_gemm.py; ``layernorm``: LayerNorm2d as one LayerNormalization over the
# channels instead of channel-axis ReduceMeans; ``int8attn``: attention scores as an integer
# product, int8 targets only; ``u8attn``: the same integers with the keys stored as uint8, for
# ONNX Runtime's uint8 x uint8 kernels, exact on x86 CPUs without VNNI/AMX; ``blocked``: attention as MatMul/Softmax/MatMul for 1024 queries at
# a time, bounded score matrices), each checked against PyTorch like the main form. Which kernels are fastest depends on
# the device, so the runtime times the forms where it runs and keeps the fastest
# (runtime/engine/forms.py).
FORMS = ("dense", "unfused", "gemm", "layernorm", "int8attn", "u8attn", "blocked")
# the forms whose attention scores are integer products (uint8 x int8 keys, uint8 x uint8 keys):
# not exact, so int8 targets only, judged at the int8 tolerance from the export on
INT8_SCORE_FORMS = ("int8attn", "u8attn")
DIGEST_NAME = "bundle.yaml.sha256"  # sha256sum format: "<hex>  bundle.yaml"
COMPONENTS = GRAPHS

class BundleError(DocumentError):
    """A bundle that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class TrackerSettings:
    """SAMURAI's tracking-loop settings (``configs/samurai/*.yaml`` and SAM 2's video defaults).

    Written into every bundle by the compiler, so the runtime needs no model config of its own;
    the per-size ``kf_score_weight`` (0.25 for tiny/small/base_plus, 0.15 for large) travels with
    the bundle.
    """

    image_size: int = 1024
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    d_model: int = 256
    mem_dim: int = 64
    feat_size: int = 64
    low_res_mask_size: int = 256
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    # SAMURAI
    stable_frames_threshold: int = 15
    stable_ious_threshold: float = 0.3
    min_obj_score_logits: float = -1.0
    kf_score_weight: float = 0.25
    memory_bank_iou_threshold: float = 0.5
    memory_bank_obj_score_threshold: float = 0.0
    memory_bank_kf_score_threshold: float = 0.0
    # SAM 2 video predictor post-processing (build_sam2_video_predictor)
    fill_hole_area: int = 8
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    binarize_mask_from_pts_for_mem_enc: bool = True
    # The oracle stores memory features as bfloat16; rounding them the same way keeps parity.
    memory_bf16: bool = True
    # "dynamic": memory_attention takes any number of memories; "static": memory_attention_static
    # pads to static_memory_slots / static_pointer_slots with validity masks.
    memory_shape: str = "dynamic"
    static_memory_slots: int = 7
    static_pointer_slots: int = 16

    # The meaningful range of every number (each item of image_mean/image_std); a value outside
    # it is refused wherever it comes from: a manifest, bundle.yaml or an API override. Thresholds
    # compared with a predicted IoU (in [0, 1]) may be below 0, meaning "every frame passes".
    FIELD_RULES: ClassVar[dict[str, Range]] = {
        "image_size": Range(16, 8192),
        "image_mean": Range(0, 1),
        "image_std": Range(0, 10, lo_open=True),
        "d_model": Range(1, 8192),
        "mem_dim": Range(1, 8192),
        "feat_size": Range(1, 1024),
        "low_res_mask_size": Range(4, 4096),
        "num_maskmem": Range(1, 64),
        "max_obj_ptrs_in_encoder": Range(1, 1024),
        "stable_frames_threshold": Range(0, 1_000_000),
        "stable_ious_threshold": Range(0, 1),
        "kf_score_weight": Range(0, 1),
        "memory_bank_iou_threshold": Range(-1, 1),
        "memory_bank_kf_score_threshold": Range(-1, 1),
        "fill_hole_area": Range(0, 1 << 24),
        "dynamic_multimask_stability_delta": Range(0, 10),
        "dynamic_multimask_stability_thresh": Range(0, 1),
        "static_memory_slots": Range(1, 64),
        "static_pointer_slots": Range(1, 1024),
    }

    def __post_init__(self) -> None:
        """Every instance obeys ``FIELD_RULES``, also one made by ``dataclasses.replace``."""
        check_instance(self, "tracker settings", error=BundleError)
        _check_together(self.__dict__, "tracker settings", BundleError)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @property
    def geometry(self) -> Geometry:
        """The model sizes the graph contract depends on."""
        return Geometry(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Geometry)})

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "tracker") -> TrackerSettings:
        """Settings from a manifest's or bundle's ``tracker:`` mapping, every value checked."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a mapping of settings, got {short(data)}")
        kwargs = check_fields(cls, data, where, error=BundleError)
        _check_together({**_DEFAULT_SETTINGS, **kwargs}, where, BundleError)
        return cls(**kwargs)


def _check_together(s: Mapping[str, Any], where: str, error: ErrorType) -> None:
    """The rules that tie settings together (each value alone is already type/range-checked)."""
    if s["memory_shape"] not in ("dynamic", "static"):
        raise error(
            f"{where}.memory_shape: {short(s['memory_shape'])} is not one of dynamic, static"
        )
    if s["low_res_mask_size"] != 4 * s["feat_size"] or s["image_size"] % s["feat_size"]:
        raise error(
            f"{where}: image_size {s['image_size']}, feat_size {s['feat_size']} and "
            f"low_res_mask_size {s['low_res_mask_size']} do not fit together (image_size must be "
            "a multiple of feat_size, low_res_mask_size 4 x feat_size); rebuild the bundle"
        )
    if s["memory_shape"] == "static" and (
        s["static_memory_slots"] < s["num_maskmem"]
        or s["static_pointer_slots"] < s["max_obj_ptrs_in_encoder"]
    ):
        raise error(
            f"{where}: static_memory_slots {s['static_memory_slots']} / static_pointer_slots "
            f"{s['static_pointer_slots']} cannot hold num_maskmem {s['num_maskmem']} / "
            f"max_obj_ptrs_in_encoder {s['max_obj_ptrs_in_encoder']}"
        )


_DEFAULT_SETTINGS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrackerSettings)}

# Set by the model (and the static graph's slots): never changed at run time.
# The settings that follow from the model (and the target's memory shape): a manifest may not set
# them under tracker: (they could only contradict the model), nor may a run override them.
GEOMETRY_SETTINGS = (*(f.name for f in dataclasses.fields(Geometry)), "memory_shape")
MODEL_SETTINGS = frozenset(
    {
        *GEOMETRY_SETTINGS,
        "static_memory_slots",
        "static_pointer_slots",
        # constants baked into the graphs (recorded per graph in bundle.yaml)
        "image_mean",
        "image_std",
        "min_obj_score_logits",
        "dynamic_multimask_stability_delta",
        "memory_bf16",
    }
)


def check_overrides(
    base: TrackerSettings,
    overrides: Mapping[str, Any] | None,
    *,
    where: str = "tracker override",
    error: ErrorType = BundleError,
) -> TrackerSettings:
    """``base`` with API/CLI ``overrides`` applied, checked like a manifest's tracker settings.

    The one entry point for run-time changes (``Tracker(overrides=..., fill_hole_area=...)``):
    names must be settings that the model does not fix, values pass ``FIELD_RULES``, and a
    problem is one line raised as ``error`` (the Tracker passes its ``TrackerError``).
    """
    changes = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(TrackerSettings)}
    bad = sorted(set(changes) - fields, key=str)
    if bad:
        raise error(
            f"{where}: unknown tracker setting(s) {', '.join(short(b, 30) for b in bad[:5])}; "
            f"known: {', '.join(sorted(fields - MODEL_SETTINGS))}"
        )
    fixed = sorted(set(changes) & MODEL_SETTINGS)
    if fixed:
        raise error(
            f"{where}: {', '.join(fixed)} follow(s) from the model or are baked into its graphs; "
            "not overridable"
        )
    kwargs = check_fields(TrackerSettings, changes, where, error=error)
    _check_together({**base.__dict__, **kwargs}, where, error)
    return dataclasses.replace(base, **kwargs)


@dataclass(frozen=True)
class ComponentInfo:
    """One graph of the bundle: file, hash, precision, I/O signature, measured errors."""

    name: str
    file: str
    sha256: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    static: bool = False  # memory_attention with fixed slots and validity masks
    max_abs_error: dict[str, float] = field(default_factory=dict)
    tolerance: float = 0.0
    constants: dict[str, Any] = field(default_factory=dict)  # settings baked into the graph
    alternatives: dict[str, AlternativeInfo] = field(default_factory=dict)  # by form (FORMS)
    attention: str = ""  # the main form's attention lowering (ort_mha: fused; matmul; sdpa)


@dataclass(frozen=True)
class AlternativeInfo:
    """Another form of a component's graph (``FORMS``): same contract, other kernels."""

    form: str
    file: str
    sha256: str
    precision: str
    max_abs_error: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    path: Path
    format_version: int
    compiler_version: str
    model_name: str
    target: dict[str, Any]
    tracker: TrackerSettings
    components: dict[str, ComponentInfo]
    source_checkpoint_sha256: str = ""

    def file(self, component: str, form: str | None = None) -> Path:
        """The graph file of ``component``: its main form, or the alternative ``form``."""
        info = self.components[component]
        return self.path / (info.alternatives[form].file if form else info.file)

    @property
    def static_memory(self) -> bool:
        """Memory attention with fixed slots and validity masks (TensorRT, ORT Mobile)."""
        return self.components["memory_attention"].static

    @property
    def processing(self) -> str:
        """Where the target does pre- and postprocessing by default: ``graph`` or ``host``."""
        return str(self.target.get("processing", "graph"))

    @property
    def prefetch(self) -> bool:
        """Whether the target encodes the next frame while this one is tracked, by default."""
        return bool(self.target.get("prefetch", False))

    @property
    def fixed_batch(self) -> int | None:
        """Objects per graph call when the bundle was built without dynamic batches, else None."""
        first = self.components["mask_decoder"].inputs
        size = first[1].shape[0] if len(first) > 1 and first[1].shape else None
        return size if isinstance(size, int) else None

    def constants(self) -> dict[str, Any]:
        """Every setting baked into one of the graphs (none of them can be overridden)."""
        return {k: v for c in self.components.values() for k, v in c.constants.items()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` if that resolves (symlinks followed) to a path inside ``root``."""
    root = root.resolve()
    try:
        candidate = (root / rel).resolve()
    except (OSError, ValueError) as exc:
        raise BundleError(f"{where}: file {short(rel, 200)} is not a valid path ({exc})") from None
    if Path(rel).is_absolute() or not candidate.is_relative_to(root):
        raise BundleError(
            f"{where}: file {short(rel, 200)} points outside the bundle directory {root}; "
            "a bundle may only name files inside itself — rebuild it with samurai-compile"
        )
    return candidate


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")  # a source checkpoint's
_TOP_KEYS = (
    "format_version",
    "compiler_version",
    "model",
    "source_checkpoint",
    "target",
    "tracker",
    "components",
)
_TARGET_KEYS = {
    "name": str,
    "providers": list,
    "provider_options": dict,
    "precision": str,
    "quantization": str,
    "opset": int,
    "format": str,
    "memory_shape": str,
    "processing": str,
    "prefetch": bool,
    "depthwise": str,
    "alternatives": list,
    "engine": str,
    "engine_options": dict,
}
_OPTIONAL = ("static", "attention", "max_abs_error", "constants", "alternatives")
_COMPONENT_KEYS = {
    "file": str,
    "sha256": str,
    "static": bool,
    "constants": dict,
    "precision": str,
    "attention": str,
    "inputs": list,
    "outputs": list,
    "max_abs_error": dict,
    "tolerance": float,
    "alternatives": dict,
}
_ALTERNATIVE_KEYS = {"file": str, "sha256": str, "precision": str, "max_abs_error": dict}


def _section(
    data: Mapping[str, Any],
    key: str,
    where: str,
    kinds: Mapping[str, type],
    optional: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``data[key]``: a mapping whose keys are among ``kinds``, all present but ``optional``,
    with values of those types."""
    here = _at(where, key)
    value = _require(data, key, where, dict, error=BundleError)
    _unknown_keys(value, kinds, here, error=BundleError)
    for name, kind in kinds.items():
        if name in value or name not in optional:
            _require(value, name, here, kind, error=BundleError)
    return dict(value)


def _specs(items: list[Any], where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for i, item in enumerate(items[:64]):
        iw = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise BundleError(f"{iw}: expected {{name, dtype, shape}}, got {short(item)}")
        _unknown_keys(item, ("name", "dtype", "shape"), iw, error=BundleError)
        shape = _require(item, "shape", iw, list, error=BundleError)
        if len(shape) > 8 or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str)
            for d in shape
        ):
            raise BundleError(
                f"{iw}.shape: expected up to 8 sizes or axis names, got {short(shape)}"
            )
        specs.append(
            TensorSpec(
                _require(item, "name", iw, str, error=BundleError),
                _require(item, "dtype", iw, str, error=BundleError),
                tuple(shape),
            )
        )
    return tuple(specs)


def seal_manifest(root: Path) -> Path:
    """Write ``bundle.yaml.sha256`` for the ``bundle.yaml`` in ``root``; returns that file."""
    return write_digest(root / MANIFEST_NAME)


def read_manifest(root: Path) -> dict[str, Any]:
    """``bundle.yaml`` of ``root`` checked against its digest, parsed safely, every top-level
    section type-checked (components and tracker are checked by ``load_bundle``)."""
    manifest = root / MANIFEST_NAME
    raw = read_verified(
        manifest,
        error=BundleError,
        fix=f"rebuild or re-copy the bundle (after a deliberate edit of {MANIFEST_NAME}: "
        f"sha256sum {MANIFEST_NAME} > {DIGEST_NAME})",
    )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{manifest}: not UTF-8 text; rebuild the bundle") from None
    data = parse_yaml(text, where=str(manifest), error=BundleError)
    if not isinstance(data, dict):
        raise BundleError(f"{manifest}: expected a mapping at the top level; rebuild the bundle")
    version = data.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest}: bundle format version {short(version)} is not supported by this "
            f"runtime (it reads version {FORMAT_VERSION}); rebuild the bundle with this "
            "samurai-compile"
        )
    where = str(manifest)
    _unknown_keys(data, _TOP_KEYS, where, error=BundleError)
    if not isinstance(data.get("compiler_version", ""), str):
        raise BundleError(
            f"{_at(where, 'compiler_version')}: expected str, got {short(data['compiler_version'])}"
        )
    model = _section(data, "model", where, {"name": str, "config": dict})
    ckpt = _section(data, "source_checkpoint", where, {"file": str, "sha256": str})
    if not _SHA256.fullmatch(ckpt["sha256"]):
        raise BundleError(
            f"{_at(where, 'source_checkpoint.sha256')}: expected 64 hex digits, got {short(ckpt['sha256'])}"
        )
    target = _section(
        data,
        "target",
        where,
        _TARGET_KEYS,
        optional=(
            "provider_options",
            "processing",
            "prefetch",
            "depthwise",
            "alternatives",
            "engine",
            "engine_options",
        ),
    )
    tw = _at(where, "target")
    for key, allowed in (
        ("processing", PROCESSING),
        ("depthwise", DEPTHWISE),
        ("engine", ENGINES),
    ):
        if key in target and target[key] not in allowed:
            raise BundleError(
                f"{tw}.{key}: {short(target[key])} is not one of {', '.join(allowed)}; "
                "rebuild the bundle"
            )
    forms = target.get("alternatives", [])
    if len(forms) > len(FORMS) or not all(f in FORMS for f in forms):
        raise BundleError(
            f"{tw}.alternatives: expected a list of {', '.join(FORMS)}, got {short(forms)}; "
            "rebuild the bundle"
        )
    providers = target["providers"]
    if not providers or len(providers) > 16 or not all(isinstance(p, str) for p in providers):
        raise BundleError(
            f"{tw}.providers: expected a list of provider names, got {short(providers)}"
        )
    for name, opts in (target.get("provider_options") or {}).items():
        if not isinstance(name, str) or not isinstance(opts, dict):
            raise BundleError(
                f"{tw}.provider_options: expected provider: {{options}}, got {short({name: opts})}"
            )
    comps = _require(data, "components", where, dict, error=BundleError)
    _unknown_keys(comps, COMPONENTS, _at(where, "components"), error=BundleError)
    _require(data, "tracker", where, dict, error=BundleError)
    return {**data, "model": model, "source_checkpoint": ckpt, "target": target}


def check_file(
    root: Path,
    info: Mapping[str, Any],
    where: str,
    verify_hashes: bool = True,
    fix: str = "rebuild or re-copy the bundle",
) -> Path:
    """The graph file ``info`` names: inside the bundle, present, and (by default) unmodified.

    One check for the loader and for the compiler's ``--components`` merge (which keeps an
    existing bundle's files, so must trust them no more than the loader does); ``fix`` is what
    the one-line error tells the user to do.
    """
    file_path = _inside(root, info["file"], where)
    if not file_path.is_file():
        raise BundleError(f"{where}: file {info['file'][:200]} is missing; {fix}")
    if verify_hashes and sha256_file(file_path) != str(info.get("sha256", "")).lower():
        raise BundleError(
            f"{where}: {info['file'][:200]} does not match its sha256 (corrupted or "
            f"modified); {fix}"
        )
    return file_path


def _errors(info: Mapping[str, Any], where: str) -> dict[str, float]:
    errors = info.get("max_abs_error") or {}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in errors.values()):
        raise BundleError(f"{where}.max_abs_error: expected numbers, got {short(errors)}")
    return {str(k): float(v) for k, v in errors.items()}


def _alternatives(
    root: Path, info: Mapping[str, Any], where: str, verify_hashes: bool
) -> dict[str, AlternativeInfo]:
    """A component's other forms (``FORMS``), each file checked like the main one."""
    forms = info.get("alternatives") or {}
    _unknown_keys(forms, FORMS, f"{where}.alternatives", error=BundleError)
    out = {}
    for form in forms:
        aw = f"{where}.alternatives"
        alt = _section(forms, form, aw, _ALTERNATIVE_KEYS, ("max_abs_error",))
        check_file(root, alt, _at(aw, form), verify_hashes)
        out[form] = AlternativeInfo(
            form, alt["file"], alt["sha256"], alt["precision"], _errors(alt, _at(aw, form))
        )
    return out


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Read and verify a bundle directory; raise ``BundleError`` with the fix on any problem."""
    root = Path(path)
    manifest = root / MANIFEST_NAME
    if root.is_file() and root.name == MANIFEST_NAME:
        raise BundleError(
            f"{root} is a bundle's manifest; pass the bundle directory {root.parent} instead"
        )
    if root.exists() and not root.is_dir():
        raise BundleError(
            f"{root} is not a directory; a bundle is a directory holding {MANIFEST_NAME} and the "
            "graphs (build one with samurai-compile)"
        )
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist; build one with samurai-compile")
    if not manifest.is_file():
        raise BundleError(
            f"{root} is not a bundle: {MANIFEST_NAME} is missing; build one with samurai-compile"
        )
    data = read_manifest(root)
    comps = data["components"]
    missing = [c for c in COMPONENTS if c not in comps]
    if missing:
        raise BundleError(
            f"{manifest}: component(s) {', '.join(missing)} missing; a runnable bundle needs all "
            f"of {', '.join(COMPONENTS)} (compile with --components all)"
        )
    components: dict[str, ComponentInfo] = {}
    for name in COMPONENTS:
        where = f"{manifest}: components.{name}"
        if (
            not isinstance(comps[name], dict)
            or "file" not in comps[name]
            or "sha256" not in comps[name]
        ):
            raise BundleError(f"{where} needs 'file' and 'sha256'; rebuild the bundle")
        info = _section(comps, name, f"{manifest}: components", _COMPONENT_KEYS, _OPTIONAL)
        check_file(root, info, where, verify_hashes)
        static = info.get("static", False)
        if static and name != "memory_attention":
            raise BundleError(f"{where}.static: only memory_attention has a static variant; rebuild")
        errors = _errors(info, where)
        alternatives = _alternatives(root, info, where, verify_hashes)
        components[name] = ComponentInfo(
            name=name,
            file=info["file"],
            sha256=info["sha256"],
            precision=info["precision"],
            inputs=_specs(info.get("inputs", []), f"{where}.inputs"),
            outputs=_specs(info.get("outputs", []), f"{where}.outputs"),
            static=static,
            max_abs_error=errors,
            tolerance=float(info["tolerance"]),
            constants=dict(info.get("constants") or {}),
            alternatives=alternatives,
            attention=str(info.get("attention", "")),
        )
    tracker = TrackerSettings.from_dict(data["tracker"], where=f"{manifest}: tracker")
    for name, comp in components.items():
        try:  # the recorded signature; each ONNX file's own is checked when it is loaded
            contract(name, tracker.geometry, static=comp.static).check(
                [(t.name, t.dtype, t.shape) for t in comp.inputs],
                [(t.name, t.dtype, t.shape) for t in comp.outputs],
            )
        except ContractError as exc:
            raise BundleError(
                f"{manifest}: components.{name}: {one_line(exc)}; rebuild the bundle with this "
                "version of samurai-compile"
            ) from None
    return Bundle(
        path=root,
        format_version=FORMAT_VERSION,
        compiler_version=str(data.get("compiler_version", "")),
        model_name=data["model"]["name"],
        target=data["target"],
        tracker=tracker,
        components=components,
        source_checkpoint_sha256=data["source_checkpoint"]["sha256"],
    )


def write_bundle_manifest(root: Path, data: dict[str, Any]) -> Path:
    """Write ``bundle.yaml`` (keys in a stable order, so rebuilding gives the same file) and its
    digest ``bundle.yaml.sha256``."""
    data = {"format_version": FORMAT_VERSION, **data}
    path = root / MANIFEST_NAME
    path.write_text(dump_yaml(data), encoding="utf-8")
    seal_manifest(root)
    return path
