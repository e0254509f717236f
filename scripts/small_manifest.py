"""Write a model manifest for a smaller input image (tests and long runs on a CPU).

    python scripts/small_manifest.py tiny 256 out/tiny-256.yaml
    samurai-compile out/tiny-256.yaml --checkpoint sam2.1_hiera_tiny.pt --out bundles/tiny-256

SAM 2.1's modules follow ``model.image_size`` (feature maps are image_size/16, masks 4x that;
Hiera interpolates its position embedding), and the official checkpoints load unchanged, so a
256-pixel model runs the same tracking loop ~15x faster than the 1024-pixel one. Its tracks are
not SAMURAI's (the model was trained at 1024); it exists for reliability tests and the 2,000-frame
memory run in the README. The fixed sizes of the inputs listed under ``components`` are scaled
with the image (the last two axes of every 4-D/5-D input).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


def small_manifest(source: Path, image_size: int) -> dict[str, Any]:
    """The manifest at ``source`` with ``model.image_size`` set and input shapes scaled."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    model = data.setdefault("model", {}) or {}
    data["model"] = model
    scale = image_size / int(model.get("image_size", 1024))
    model["image_size"] = image_size
    for component in (data.get("components") or {}).values():
        for spec in component.get("inputs") or []:
            shape = spec.get("shape") or []
            if len(shape) >= 4:
                spec["shape"] = [
                    round(d * scale) if i >= len(shape) - 2 and isinstance(d, int) else d
                    for i, d in enumerate(shape)
                ]
    return dict(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", help="model size (tiny, small, base_plus, large) or a manifest")
    parser.add_argument("image_size", type=int, help="input image side, a multiple of 32")
    parser.add_argument("out", type=Path, help="manifest to write")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    source = Path(args.size)
    if not source.is_file():
        source = repo / "manifests" / f"{args.size}.yaml"
    if not source.is_file():
        print(f"error: no manifest {args.size}; use tiny, small, base_plus, large", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(small_manifest(source, args.image_size), sort_keys=False)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({source.name} at {args.image_size} pixels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
