"""A variant of a target manifest, for measuring one change end to end (``gpu_check.sh``'s
``VARIANTS``): the target's YAML with named changes applied, under a new name.

    python scripts/target_variant.py cuda dense+unfused out/cuda-dense+unfused.yaml

Variants (join with ``+``; ``dense`` and ``unfused`` also drop that form from the target's
``alternatives``, so the variant's bundle runs it and only it):
  dense    ``depthwise: dense``: depthwise convolutions as dense block-diagonal ones
  nhwc     the CUDA provider's ``prefer_nhwc: 1`` (cuDNN's NHWC kernels)
  unfused  ``fused_attention: false``: attention as MatMul/Softmax/MatMul (cuBLAS on a GPU)
  graph    the CUDA provider's ``enable_cuda_graph: 1``: CUDA graphs, replayed per run signature
           (runtime/engine/captured.py); ``nograph``: ``enable_cuda_graph: 0``
  prefetch ``prefetch: true``: the next frame encoded while this one is tracked (runtime/ahead.py);
           ``noprefetch``: ``prefetch: false``

``nhwc``, ``graph``, ``nograph``, ``prefetch`` and ``noprefetch`` change only how the graphs run
(``RUNTIME_ONLY``), so a
compiled bundle can take them without compiling again: ``--bundle`` writes a copy of a bundle
(files hard-linked where possible) whose recorded target has the variant applied, sealed and
checked like any bundle. On a lent GPU machine that saves a compile (about 45 s of its time per bundle):

    python scripts/target_variant.py --bundle work/tiny-cuda-fp16 graph work/tiny-cuda-fp16-graph
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def _only(data: dict[str, Any], form: str) -> None:
    """The main form becomes ``form``, so it is no longer an alternative."""
    rest = [f for f in data.get("alternatives") or [] if f != form]
    if rest:
        data["alternatives"] = rest
    else:
        data.pop("alternatives", None)


def _dense(data: dict[str, Any]) -> None:
    data["depthwise"] = "dense"
    _only(data, "dense")


def _cuda_option(variant: str, key: str, value: int = 1) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        if "CUDAExecutionProvider" not in data.get("providers", []):
            raise ValueError(f"{variant}: the target does not use CUDAExecutionProvider")
        options = data.get("provider_options") or {}
        data["provider_options"] = options
        options.setdefault("CUDAExecutionProvider", {})[key] = value

    return apply


def _unfused(data: dict[str, Any]) -> None:
    data["fused_attention"] = False
    _only(data, "unfused")


VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "dense": _dense,
    "nhwc": _cuda_option("nhwc", "prefer_nhwc"),
    "unfused": _unfused,
    "graph": _cuda_option("graph", "enable_cuda_graph"),
    "nograph": _cuda_option("nograph", "enable_cuda_graph", 0),
    "prefetch": lambda data: data.update(prefetch=True),
    "noprefetch": lambda data: data.update(prefetch=False),
}


# variants that change how graphs run (provider options, prefetch), not graph files
RUNTIME_ONLY = ("nhwc", "graph", "nograph", "prefetch", "noprefetch")


def _apply(data: dict[str, Any], variant: str) -> None:
    """Apply each ``+``-joined part of ``variant`` to a target mapping ``data``."""
    for part in variant.split("+"):
        if part not in VARIANTS:
            raise ValueError(
                f"unknown variant {part!r}; known: {', '.join(VARIANTS)} (join with +)"
            )
        VARIANTS[part](data)


def derive_bundle(bundle: Path, variant: str, out: Path) -> Path:
    """A copy of the compiled ``bundle`` at ``out`` whose recorded target has ``variant`` (run-
    time-only parts: ``RUNTIME_ONLY``) applied and is named ``<target>-<variant>``: the graph
    files the bundle names, checked first (hard links where the file system allows, else
    copies; nothing else in the folder is taken), ``bundle.yaml`` written anew and sealed, then
    loaded with every hash checked. ``out`` must not exist; nothing is left there on failure."""
    from samurai_onnx.runtime.bundle import MANIFEST_NAME, load_bundle, read_manifest, seal_manifest

    graphs = [p for p in variant.split("+") if p in VARIANTS and p not in RUNTIME_ONLY]
    if graphs:
        raise ValueError(
            f"{'+'.join(graphs)} changes the graphs, so a bundle cannot take it; compile a "
            "target file written without --bundle instead"
        )
    source = load_bundle(bundle)  # every file checked: a bundle edited by hand is refused
    data = read_manifest(bundle)
    files = [info.file for info in source.components.values()]
    files += [alt.file for info in source.components.values() for alt in info.alternatives.values()]
    _apply(data["target"], variant)
    data["target"]["name"] = f"{data['target']['name']}-{variant}"
    if out.exists():
        raise ValueError(f"{out} exists; give a new folder for the variant's bundle")
    staged = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    try:
        staged.mkdir(parents=True)
        for name in files:  # checked by load_bundle: each resolves inside the bundle
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            link(str(bundle / name), str(staged / name))
        (staged / MANIFEST_NAME).write_text(yaml.safe_dump(data, sort_keys=False))
        seal_manifest(staged)
        load_bundle(staged)
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out


def write_variant(target: str, variant: str, out: Path) -> Path:
    """Write ``target`` (a packaged name or a file) with ``variant`` applied to ``out``, named
    ``<target name>-<variant>``; the result is checked by the compiler's own manifest reader."""
    from samurai_onnx.compiler.manifest import load_target_manifest

    base = load_target_manifest(target)
    data = yaml.safe_load(Path(base.path).read_text())
    _apply(data, variant)
    data["name"] = f"{base.name}-{variant}"
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.tmp.yaml")
    try:
        staged.write_text(yaml.safe_dump(data, sort_keys=False))
        load_target_manifest(staged)
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    return out


def main() -> None:
    from samurai_onnx.runtime.documents import DocumentError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a packaged target name or a target file (with --bundle: "
                        "a compiled bundle's folder)")  # fmt: skip
    parser.add_argument("variant", help=f"{', '.join(VARIANTS)}, joined with +")
    parser.add_argument("out", type=Path, help="the variant's target file (with --bundle: the "
                        "new bundle's folder)")  # fmt: skip
    parser.add_argument("--bundle", action="store_true", help="apply a run-time-only variant ("
                        f"{', '.join(RUNTIME_ONLY)}) to a compiled bundle instead")  # fmt: skip
    args = parser.parse_args()
    try:
        if args.bundle:
            derive_bundle(Path(args.target), args.variant, args.out)
        else:
            write_variant(args.target, args.variant, args.out)
    except (DocumentError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(args.out)


if __name__ == "__main__":
    main()
