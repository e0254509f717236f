"""The bundle format: one directory of ONNX graphs plus ``bundle.yaml``, read and verified here.

This module is the single definition of the format. The compiler imports it to write bundles
(``TrackerSettings``, ``FORMAT_VERSION``, ``write_bundle_manifest``) and the runtime to read them
(``load_bundle``), so the two cannot drift apart; each graph's I/O is the contract's
(``runtime/contract.py``). It imports neither torch nor onnx.

A bundle is untrusted input: the manifest is read with ``yaml.safe_load``, every file it names
must resolve to a path inside the bundle directory, and every file's sha256 is checked before a
session is created from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from samurai_onnx.runtime.contract import GRAPHS, ContractError, Geometry, TensorSpec, contract

# 2: six graphs (preprocess and postprocess added), memories and pointers in device-resident
# pools gathered and scattered by index, per-object batches.
FORMAT_VERSION = 2
MANIFEST_NAME = "bundle.yaml"
COMPONENTS = GRAPHS

class BundleError(ValueError):
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

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @property
    def geometry(self) -> Geometry:
        """The model sizes the graph contract depends on."""
        return Geometry(
            image_size=self.image_size,
            d_model=self.d_model,
            mem_dim=self.mem_dim,
            feat_size=self.feat_size,
            low_res_mask_size=self.low_res_mask_size,
            num_maskmem=self.num_maskmem,
            max_obj_ptrs_in_encoder=self.max_obj_ptrs_in_encoder,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "tracker") -> TrackerSettings:
        """Settings from a manifest's or bundle's ``tracker:`` mapping, every value type-checked."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a mapping of settings, got {data!r}")
        kwargs = check_fields(cls, data, where)
        settings = cls(**kwargs)
        if settings.memory_shape not in ("dynamic", "static"):
            raise BundleError(
                f"{where}.memory_shape: {settings.memory_shape!r} is not one of dynamic, static"
            )
        return settings


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

    def file(self, component: str) -> Path:
        return self.path / self.components[component].file

    @property
    def static_memory(self) -> bool:
        """Memory attention with fixed slots and validity masks (TensorRT, ORT Mobile)."""
        return self.components["memory_attention"].static

    @property
    def processing(self) -> str:
        """Where the target does pre- and postprocessing by default: ``graph`` or ``host``."""
        return str(self.target.get("processing", "graph"))

    @property
    def fixed_batch(self) -> int | None:
        """Objects per graph call when the bundle was built without dynamic batches, else None."""
        first = self.components["mask_decoder"].inputs
        size = first[1].shape[0] if len(first) > 1 and first[1].shape else None
        return size if isinstance(size, int) else None

    def constants(self) -> dict[str, Any]:
        """Every setting baked into one of the graphs (none of them can be overridden)."""
        return {k: v for c in self.components.values() for k, v in c.constants.items()}


def _kind_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_fields(cls: Any, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` checked against the fields of dataclass ``cls``; returns constructor kwargs.

    Why: YAML happily reads ``kf_score_weight: "0.25"`` or ``stages: [1, 2]`` and a dataclass
    takes anything, so a typo would otherwise become a silently different model or tracker. The
    type of each field's default is the rule (bool, int, float (ints allowed), str, tuples of
    those; a tuple annotated with a fixed arity must have that length); fields whose default is
    a dataclass are left to the caller. Lists become tuples, ints given for floats become floats.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BundleError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    defaults = cls()
    out: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        at = f"{where}.{key}"
        if dataclasses.is_dataclass(default):
            out[key] = value
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise BundleError(f"{at}: expected a list, got {value!r}")
            fixed = "..." not in str(fields[key].type)
            if fixed and len(value) != len(default):
                raise BundleError(f"{at}: expected a list of {len(default)}, got {value!r}")
            kind = type(default[0]) if default else object
            if not all(_kind_ok(v, kind) for v in value):
                raise BundleError(f"{at}: expected a list of {kind.__name__}, got {value!r}")
            out[key] = tuple(float(v) if kind is float else v for v in value)
        elif not _kind_ok(value, type(default)):
            raise BundleError(f"{at}: expected {type(default).__name__}, got {value!r}")
        else:
            out[key] = float(value) if isinstance(default, float) else value
    return out


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
        raise BundleError(f"{where}: file {rel!r} is not a valid path ({exc})") from None
    if Path(rel).is_absolute() or not candidate.is_relative_to(root):
        raise BundleError(
            f"{where}: file {rel!r} points outside the bundle directory {root}; "
            "a bundle may only name files inside itself — rebuild it with samurai-compile"
        )
    return candidate


def _specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list):
        raise BundleError(f"{where} must be a list of {{name, dtype, shape}}")
    try:
        return tuple(TensorSpec(str(i["name"]), str(i["dtype"]), tuple(i["shape"])) for i in items)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{where}: every entry needs name, dtype and shape ({exc})") from None


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
    try:
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{manifest}: not valid YAML ({_one_line(exc)}); rebuild the bundle"
        ) from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest}: expected a mapping at the top level; rebuild the bundle")
    version = data.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest}: bundle format version {version!r} is not supported by this runtime "
            f"(it reads version {FORMAT_VERSION}); rebuild the bundle with this samurai-compile"
        )
    comps = data.get("components")
    if not isinstance(comps, dict):
        raise BundleError(f"{manifest}: 'components' is missing; rebuild the bundle")
    missing = [c for c in COMPONENTS if c not in comps]
    if missing:
        raise BundleError(
            f"{manifest}: component(s) {', '.join(missing)} missing; a runnable bundle needs all "
            f"of {', '.join(COMPONENTS)} (compile with --components all)"
        )
    components: dict[str, ComponentInfo] = {}
    for name, info in comps.items():
        where = f"{manifest}: components.{name}"
        if not isinstance(info, dict) or "file" not in info or "sha256" not in info:
            raise BundleError(f"{where} needs 'file' and 'sha256'; rebuild the bundle")
        file_path = _inside(root, str(info["file"]), where)
        if not file_path.is_file():
            raise BundleError(
                f"{where}: file {info['file']} is missing; rebuild or re-copy the bundle"
            )
        if verify_hashes and sha256_file(file_path) != str(info["sha256"]).lower():
            raise BundleError(
                f"{where}: {info['file']} does not match its sha256 (corrupted or modified); "
                "rebuild or re-copy the bundle"
            )
        static = info.get("static", False)
        if not isinstance(static, bool) or (static and name != "memory_attention"):
            raise BundleError(f"{where}.static: {static!r} is not valid for {name}; rebuild")
        try:
            components[name] = ComponentInfo(
                name=name,
                file=str(info["file"]),
                sha256=str(info["sha256"]),
                precision=str(info.get("precision", "fp32")),
                inputs=_specs(info.get("inputs", []), f"{where}.inputs"),
                outputs=_specs(info.get("outputs", []), f"{where}.outputs"),
                static=static,
                max_abs_error={k: float(v) for k, v in (info.get("max_abs_error") or {}).items()},
                tolerance=float(info.get("tolerance", 0.0)),
                constants=dict(info.get("constants") or {}),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"{where}: malformed entry ({exc}); rebuild the bundle") from None
    tracker = TrackerSettings.from_dict(data.get("tracker") or {}, where=f"{manifest}: tracker")
    for name, comp in components.items():
        if name not in COMPONENTS:
            raise BundleError(
                f"{manifest}: components.{name} is not a graph this runtime knows "
                f"({', '.join(COMPONENTS)}); rebuild the bundle with this samurai-compile"
            )
        try:  # the recorded signature; each ONNX file's own is checked when it is loaded
            contract(name, tracker.geometry, static=comp.static).check(
                [(t.name, t.dtype, t.shape) for t in comp.inputs],
                [(t.name, t.dtype, t.shape) for t in comp.outputs],
            )
        except ContractError as exc:
            raise BundleError(
                f"{manifest}: components.{name}: {exc}; rebuild the bundle with this "
                "version of samurai-compile"
            ) from None
    return Bundle(
        path=root,
        format_version=int(version),
        compiler_version=str(data.get("compiler_version", "")),
        model_name=str((data.get("model") or {}).get("name", "")),
        target=dict(data.get("target") or {}),
        tracker=tracker,
        components=components,
        source_checkpoint_sha256=str((data.get("source_checkpoint") or {}).get("sha256", "")),
    )


def _one_line(exc: BaseException) -> str:
    """A YAML error (multi-line, with a caret drawing) as one line: problem and position."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def write_bundle_manifest(root: Path, data: dict[str, Any]) -> Path:
    """Write ``bundle.yaml`` (keys in a stable order, so rebuilding gives the same file)."""
    data = {"format_version": FORMAT_VERSION, **data}
    path = root / MANIFEST_NAME
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
