"""Where a build goes: a staging folder next to ``--out``, renamed into place when complete.

Why: ``samurai-compile`` used to write into ``--out`` directly, so a failed or interrupted build
left an empty or half-filled folder, and ``--components`` into an existing bundle rewrote its
``bundle.yaml`` with that component alone (the bundle no longer ran). Now:

- ``inspect_out`` decides before anything is built whether ``--out`` may be replaced: a new
  path, an empty folder or a folder holding only bundle files (``bundle.yaml``, its digest,
  ``.onnx``/``.ort`` graphs); anything else (a file, a folder with other files) is refused;
- ``kept_components`` takes, for a ``--components`` build into an existing bundle, the other
  components from it, after checking that it was built from the same model, target, checkpoint
  and compiler (else refuses: mixing them would give a bundle whose graphs disagree);
- ``staging`` is the temporary folder the build writes into (removed on any failure or Ctrl-C,
  together with parent folders it created), and ``commit`` renames it into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    DIGEST_NAME,
    MANIFEST_NAME,
    BundleError,
    check_file,
    read_manifest,
)
from samurai_onnx.runtime.documents import short

log = logging.getLogger(__name__)

_BUNDLE_SUFFIXES = (".onnx", ".ort", ".data")


class OutputError(ValueError):
    """An ``--out`` that cannot be written or merged; one line with the fix."""


@dataclass(frozen=True)
class KeptComponent:
    name: str
    files: dict[str, Path]  # its graph files (main form and alternatives): name -> existing file
    entry: dict[str, Any]  # its bundle.yaml entry, unchanged


def inspect_out(out: Path) -> Path | None:
    """``out`` if it is an existing bundle folder that may be replaced, None if ``out`` is new
    or empty; raises ``OutputError`` for anything that must not be replaced."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a directory; choose another --out")
    if not out.is_dir():
        return None
    try:
        entries = list(out.iterdir())
    except OSError as exc:
        raise OutputError(f"cannot read --out {out} ({exc.strerror}); choose another") from None
    if not entries:
        return None
    foreign = sorted(
        p.name
        for p in entries
        if not (
            p.is_file()
            and not p.is_symlink()
            and (p.name in (MANIFEST_NAME, DIGEST_NAME) or p.suffix in _BUNDLE_SUFFIXES)
        )
    )
    if foreign or not (out / MANIFEST_NAME).is_file():
        what = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "") or "no bundle.yaml"
        raise OutputError(
            f"--out {out} is a folder that is not a bundle ({what}); it is left alone: choose a "
            "new or empty folder, or an existing bundle to replace"
        )
    return out


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first key path where two plain values differ, with both values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            here = f"{path}.{key}" if path else str(key)
            found = _first_difference(a.get(key), b.get(key), here)
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask (mkdtemp/mkstemp make private 0700/0600 entries)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def kept_components(
    existing: Path | None, header: Mapping[str, Any], chosen: Sequence[str]
) -> list[KeptComponent]:
    """The components of the ``existing`` bundle that a ``chosen``-only build keeps.

    ``header`` holds the new bundle.yaml's top-level values (all but ``components``); the
    existing bundle must have the same ones. Every kept graph is hash-checked here.
    """
    if existing is None or set(chosen) == set(COMPONENTS):
        return []
    try:
        data = read_manifest(existing)
    except BundleError as exc:
        raise OutputError(
            f"--out {existing} holds a bundle that cannot be read ({exc}); build all "
            "components (leave out --components) to replace it, or choose another --out"
        ) from None
    old = {k: v for k, v in data.items() if k not in ("components", "format_version")}
    new = dict(header)
    diff = _first_difference(new, old)
    if diff is not None:
        key, ours, theirs = diff
        raise OutputError(
            f"--out {existing} holds a bundle of another model, target, checkpoint or compiler "
            f"({key}: {short(theirs, 40)} there, {short(ours, 40)} now), so its other "
            f"components cannot be kept with a new "
            f"{', '.join(chosen)}; build all components (leave out --components) or choose "
            "another --out"
        )
    kept = []
    for name, entry in data["components"].items():
        if name in chosen:
            continue
        where = f"{existing / MANIFEST_NAME}: components.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise OutputError(f"{where}: malformed entry {short(entry)}; build all components")
        forms = entry.get("alternatives") or {}
        if not isinstance(forms, dict) or not all(
            isinstance(f, dict) and isinstance(f.get("file"), str) for f in forms.values()
        ):
            raise OutputError(f"{where}.alternatives: malformed {short(forms)}; build all components")
        files = {}
        for item in (entry, *forms.values()):
            try:
                source = check_file(
                    existing, item, where, fix="build all components (leave out --components)"
                )
            except BundleError as exc:
                raise OutputError(str(exc)) from None
            files[item["file"]] = source
        kept.append(KeptComponent(name, files, dict(entry)))
    return kept


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder next to ``out`` (same file system, so ``commit`` is a rename); removed
    with everything in it, and with the parent folders made for it, unless committed."""
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        stage.chmod(_umask_mode(0o777))
    except OSError as exc:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise OutputError(
            f"cannot create a folder next to --out {out} ({exc.strerror}); choose a writable "
            "location"
        ) from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone after commit: a no-op then
        if not out.exists():
            for folder in created:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()


def place(source: Path, dest: Path) -> None:
    """``source`` at ``dest``: a hard link where possible (a kept graph is not copied), else a
    copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def commit(stage: Path, out: Path) -> None:
    """Move the finished ``stage`` to ``out``, replacing what ``inspect_out`` allowed.

    The old bundle is moved aside first and deleted only once the new one is in place; if the
    second rename fails it is moved back.
    """
    if not out.exists():
        os.rename(stage, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
