"""Per-graph latency of one bundle's graphs on several engines, in one process, alternating.

Why: timings on a shared machine drift by tens of percent between runs, so engines are compared
call for call: every repeat runs each engine once, in turn, on the same contract inputs (a full
bank: 7 memories, 16 pointers, one object). Also prints each engine's max error relative to
ONNX Runtime fp32 (max abs difference over the max abs value, worst output).

    python scripts/compare_engines.py bundles/tiny-cpu --int8 bundles/tiny-cpu-int8 --threads 2

Engines: ONNX Runtime fp32 (the bundle's files), ONNX Runtime int8 (``--int8``: a cpu-int8
bundle of the same checkpoint), OpenVINO f32 and bf16 (the bundle's files; needs openvino).
``--forms main,u8attn,blocked`` compares a bundle's graph forms on ONNX Runtime instead (errors
relative to the first form; graphs without a form leave it out), alternating their order from
one repeat to the next, the same runs as the loader's choice but more of them:

    python scripts/compare_engines.py bundles/tiny-cpu-int8 --forms main,blocked,u8attn \
        --graphs memory_attention --repeats 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.compiler.evaluate.bench import relative_error
from samurai_onnx.runtime.bundle import load_bundle
from samurai_onnx.runtime.contract import MODEL_GRAPHS, contract, steady_state_feeds
from samurai_onnx.runtime.engine import EngineSettings, create_engine
from samurai_onnx.runtime.host import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="an fp32 bundle (cpu or cpu-openvino target)")
    parser.add_argument("--int8", type=Path, help="a cpu-int8 bundle of the same checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--graphs", default=",".join(MODEL_GRAPHS))
    parser.add_argument("--forms", help="compare these forms of the bundle's graphs instead")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    ort = create_engine(EngineSettings(threads=args.threads))
    if args.forms:
        compare_forms(args, bundle, ort)
        return
    ov = {
        p: create_engine(
            EngineSettings(
                engine="openvino",
                threads=args.threads,
                options={"precision": p, "cache_dir": None},
            )
        )
        for p in ("f32", "bf16")
    }
    sides: dict[str, tuple[Any, Path]] = {"onnxruntime fp32": (ort, args.bundle)}
    if args.int8:
        sides["onnxruntime int8"] = (ort, args.int8)
    sides["openvino f32"] = (ov["f32"], args.bundle)
    sides["openvino bf16"] = (ov["bf16"], args.bundle)
    print(f"Machine: {machine()}")
    for name, (engine, _) in sides.items():
        print(f"{name}: {engine.describe()}")
    report: dict[str, dict[str, Any]] = {}
    for graph in args.graphs.split(","):
        spec = contract(graph, bundle.tracker.geometry)
        feeds = steady_state_feeds(graph, 1, bundle.tracker.geometry, False)
        sessions = {
            k: (e, e.load(load_bundle(path).file(graph), spec)) for k, (e, path) in sides.items()
        }
        report[graph] = _timed(sessions, feeds, args.repeats)
        print(graph, json.dumps(report[graph]), flush=True)
    names = list(sides)
    print()
    print("| graph | " + " | ".join(f"{k} s" for k in names) + " |")
    print("|---|" + "---|" * len(names))
    for graph, row in report.items():
        cells = []
        for k in names:
            r = row[k]
            extra = "" if k == "onnxruntime fp32" else f" (err {r['max_rel_error']:.1e})"
            cells.append(f"{r['median_s']:.3f}{extra}")
        print(f"| {graph} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "graphs": report}, indent=2))


def _timed(
    sessions: dict[str, tuple[Any, Any]],
    feeds: dict[str, Any],
    repeats: int,
    alternate: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each side's (engine, session) run once (the warm-up, whose outputs are compared with the
    first side's), then ``repeats`` times in turn; ``alternate``: in reverse order every other
    repeat, so that no side always runs right after the same one."""
    outputs = {
        k: {o: np.asarray(e.download(v)) for o, v in s.run(feeds).items()}
        for k, (e, s) in sessions.items()
    }
    ref = next(iter(outputs.values()))
    order = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in order}
    for i in range(repeats):
        for k in order[::-1] if alternate and i % 2 else order:
            t0 = time.perf_counter()
            sessions[k][1].run(feeds)
            times[k].append(time.perf_counter() - t0)
    return {
        k: {
            "median_s": float(np.median(times[k])),
            "min_s": min(times[k]),
            "runs_s": [round(t, 3) for t in times[k]],
            "max_rel_error": max(relative_error(outputs[k][o], ref[o]) for o in ref),
        }
        for k in order
    }


def compare_forms(args: argparse.Namespace, bundle: Any, engine: Any) -> None:
    """``--forms``: the bundle's forms of each graph on one engine, alternating their order."""
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    print(f"Machine: {machine()}")
    print(f"onnxruntime: {engine.describe()}")
    report: dict[str, dict[str, Any]] = {}
    for graph in args.graphs.split(","):
        have = [f for f in forms if f == "main" or f in bundle.components[graph].alternatives]
        if len(have) < 2:
            continue
        spec = contract(graph, bundle.tracker.geometry)
        feeds = steady_state_feeds(graph, 1, bundle.tracker.geometry, False)
        sessions = {
            f: (engine, engine.load(bundle.file(graph, None if f == "main" else f), spec))
            for f in have
        }
        report[graph] = _timed(sessions, feeds, args.repeats, alternate=True)
        print(graph, json.dumps(report[graph]), flush=True)
        print(f"| {graph} form | median s | min s | error vs {have[0]} |")
        print("|---|---|---|---|")
        for f, r in report[graph].items():
            print(f"| {f} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_rel_error']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "forms": report}, indent=2))


if __name__ == "__main__":
    main()
