"""Official SAM 2.1 checkpoints: find, download, verify and load them; make random ones for tests.

The official files are ``torch.save({"model": state_dict}, path)`` pickles. They are untrusted
input, so they are only ever read with ``torch.load(..., weights_only=True)``, and every way they
can be wrong (missing, truncated, not SAM 2, another model size, a pickle with code in it) is
turned into a one-line ``CheckpointError`` that says what to do.
"""

from __future__ import annotations

import logging
import math
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

from samurai_onnx.compiler.manifest import CheckpointSpec, ModelManifest
from samurai_onnx.runtime.bundle import sha256_file
from samurai_onnx.runtime.documents import short
from samurai_onnx.runtime.host import cache_root

log = logging.getLogger(__name__)

# (trunk embed dim, number of Hiera blocks) -> size name, to tell which model a file holds.
_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$SAMURAI_ONNX_CACHE`` or ``~/.cache/samurai-onnx``."""
    return cache_root() / "checkpoints"


# One sha256 helper for checkpoints and bundle files (the runtime's, which the compiler may import).
sha256_of = sha256_file


def warn_unverified(path: Path, spec: CheckpointSpec, sha256: str) -> None:
    """The warning for a manifest without an official sha256 (logged once the build succeeded:
    a failed build has more important things to say)."""
    if spec.sha256 is None:
        log.warning(
            "%s: the manifest has no official sha256 for %s, so the file is not verified "
            "(its sha256 %s is recorded in the bundle)",
            path,
            spec.file,
            sha256,
        )


def verify_sha256(path: Path, spec: CheckpointSpec, *, warn: bool = True) -> str:
    """The file's sha256, checked against the manifest's when the manifest has one; ``warn``:
    log at once that a manifest without one leaves the file unverified (``warn_unverified``)."""
    actual = sha256_of(path)
    if spec.sha256 is None:
        if warn:
            warn_unverified(path, spec, actual)
    elif actual != spec.sha256.lower():
        raise CheckpointError(
            f"checkpoint {path} has sha256 {actual}, expected {spec.sha256} for {spec.file}: "
            f"the file is corrupted or not the official one; download it again from {spec.url}"
        )
    return actual


def resolve_checkpoint(
    spec: CheckpointSpec, explicit: Path | None = None, *, download: bool = True
) -> Path:
    """The checkpoint to use: ``explicit``, else the cached file, else a fresh download."""
    if explicit is not None:
        explicit = Path(explicit)
        if explicit.is_dir():
            raise CheckpointError(
                f"checkpoint {explicit} is a directory; pass the .pt file itself "
                f"(e.g. {explicit / spec.file}) to --checkpoint"
            )
        if not explicit.is_file():
            raise CheckpointError(
                f"checkpoint {explicit} does not exist; check the --checkpoint path "
                f"(the official file is {spec.file}, from {spec.url})"
            )
        return explicit
    cached = cache_dir() / spec.file
    if cached.is_file():
        return cached
    if not download:
        raise CheckpointError(
            f"{spec.file} is not in the cache; download {spec.url} and put it at {cached}, "
            "or pass --checkpoint PATH"
        )
    return _download(spec, cached)


def _download(spec: CheckpointSpec, dest: Path) -> Path:
    """Download ``spec.url`` to ``dest``: into ``dest.part`` first, renamed only once complete.

    Why the ``.part`` file and the rename: an interrupted or corrupted download must never be
    left where the next run would take it for the checkpoint (``resolve_checkpoint`` trusts a
    cached file that exists). So the partial file is deleted on any failure: network error,
    short read (fewer bytes than ``Content-Length``), sha256 mismatch, Ctrl-C.
    """
    import http.client

    from tqdm import tqdm

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create the checkpoint cache {dest.parent} ({exc.strerror or exc}); set "
            "SAMURAI_ONNX_CACHE to a writable folder or pass --checkpoint PATH"
        ) from None
    part = dest.with_name(dest.name + ".part")
    hint = f"on a machine with internet download it and put it at {dest}, or pass --checkpoint PATH"
    try:
        try:
            with urllib.request.urlopen(spec.url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                written = 0
                with (
                    open(part, "wb") as fh,
                    tqdm(
                        total=total, unit="B", unit_scale=True, desc=f"download {spec.file}"
                    ) as bar,
                ):
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        fh.write(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise CheckpointError(f"could not download {spec.url} ({reason}); {hint}") from None
        if total is not None and written != total:
            raise CheckpointError(
                f"download of {spec.url} stopped after {written} of {total} bytes; "
                f"run again to retry, or {hint}"
            )
        if spec.sha256 is not None:
            actual = sha256_of(part)
            if actual != spec.sha256.lower():
                raise CheckpointError(
                    f"download of {spec.url} has sha256 {actual}, expected {spec.sha256}: the "
                    f"download is corrupted and was deleted; run again to retry, or {hint}"
                )
        part.replace(dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def read_state_dict(path: Path, manifest: ModelManifest) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an official-format file, checked to be this manifest's size."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head == b"PK\x03\x04":  # a zip archive's start without its end: cut short
            raise CheckpointError(
                f"checkpoint {path} is truncated ({size} bytes, the archive's end is missing: an "
                f"interrupted download?); download it again from {manifest.checkpoint.url}"
            )
        raise CheckpointError(
            f"checkpoint {path} is not a readable torch checkpoint (not a .pt zip archive, "
            f"{size} bytes); download it again from {manifest.checkpoint.url}"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError by case
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects besides tensors and is refused "
                "(only weights are loaded, with weights_only=True); use an official SAM 2.1 file"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({text}); download it again from "
            f"{manifest.checkpoint.url}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(
            f"checkpoint {path} is not a SAM 2 checkpoint (no 'model' state dict inside); "
            f"use an official file such as {manifest.checkpoint.file}"
        )
    state = data["model"]
    official = f"use an official file such as {manifest.checkpoint.file}"
    patch = state.get(_PATCH_KEY)
    if not isinstance(patch, torch.Tensor):
        raise CheckpointError(
            f"checkpoint {path} is not a SAM 2 checkpoint ({_PATCH_KEY} missing); {official}"
        )
    odd = next(
        (k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)),
        None,
    )
    if odd is not None:
        raise CheckpointError(
            f"checkpoint {path}: entry {short(odd)} of the state dict is not a named tensor "
            f"({type(state[odd]).__name__}); the file is damaged or not SAM 2; {official}"
        )
    if patch.ndim != 4 or patch.shape[0] < 1:
        raise CheckpointError(
            f"checkpoint {path}: {_PATCH_KEY} has shape {list(patch.shape)}, not [width, 3, 7, 7]; "
            f"the file is damaged or not SAM 2; {official}"
        )
    blocks = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    found = _SIZES.get((int(patch.shape[0]), len(blocks)))
    if found != manifest.name:
        what = f"SAM 2.1 {found}" if found else f"a Hiera trunk of width {patch.shape[0]}"
        hint = f"use manifests/{found}.yaml" if found else "use the matching model manifest"
        raise CheckpointError(
            f"checkpoint {path} holds {what}, but {manifest.path.name} is {manifest.name}; {hint}"
        )
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"checkpoint {path} has non-finite weights ({count} NaN/inf values in "
                f"{short(key)}); the file is damaged (or came from a diverged training run): "
                f"download it again from {manifest.checkpoint.url}"
            )
    return state


# Tensors that SAM 2 initializes as small learned embeddings (trunc_normal std 0.02) rather than as
# layer weights; scaling them like weights would swamp the features they are added to.
_EMBEDDING_MARKERS = (
    "pos_embed",
    "maskmem_tpos_enc",
    "no_mem_embed",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)


def randomize_state_dict(
    template: dict[str, torch.Tensor], *, seed: int
) -> dict[str, torch.Tensor]:
    """Seeded random weights with the template's keys, shapes and dtypes.

    Why not the modules' own init: SAM 2's init (trunc_normal 0.02 everywhere) gives mask logits
    with a std of ~0.1 and three near-identical candidate masks, which would make parity tests
    pass trivially. Fan-in-scaled normal weights keep activations at unit scale through the
    whole network: mask logits then have a std of ~2, candidates differ, and masks cover
    40-60% of the frame, so numerical errors and wrong candidate choices show up.
    """
    rng = np.random.default_rng(seed)

    def randn(shape: torch.Size) -> torch.Tensor:
        # numpy's generator, not torch.randn: torch's normal sampler is vectorized per CPU
        # capability (ATEN_CPU_CAPABILITY: default and avx2 gave values up to 1.9e-6 apart for
        # one seed), so the "same" random checkpoint, and what was measured on it, differed
        # between machines
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    out: dict[str, torch.Tensor] = {}
    for key, value in template.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        shape = value.shape
        if any(m in key for m in _EMBEDDING_MARKERS):
            new = randn(shape) * 0.02
        elif value.ndim >= 2 and "positional_encoding_gaussian_matrix" not in key:
            fan_in = max(1, value[0].numel())
            new = randn(shape) / math.sqrt(fan_in)
        elif key.endswith("bias"):
            new = randn(shape) * 0.02
        elif value.ndim == 1 and key.endswith("weight"):
            new = 1.0 + 0.1 * randn(shape)  # norm scales, layer scales
        else:
            new = randn(shape)
        out[key] = new.to(value.dtype)
    return out


def save_official_format(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Save as the official files are saved: ``torch.save({"model": state_dict}, path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict}, path)
    return path
