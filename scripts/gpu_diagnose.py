"""Where a bundle's graphs differ between the CPU and a GPU provider, and where their GPU time goes.

Why: on an H100 the fp32 ``cuda`` bundle tracked at per-frame IoU 0.9905 against the fp32
reference while the fp16 bundle and PyTorch's fp16 autocast both stayed at 0.9999, and the
memory encoder took 9.5-11.8 ms against PyTorch's 2 ms. This script answers both questions in
one run, so that one lent GPU session is enough:

1. parity: every graph on the contract's inputs (full bank, one object), CPU provider vs the
   bundle's device providers (with the target's options), max error relative to the largest
   value per output; the same with ONNX Runtime's graph optimizations off on the device (is a
   fusion the cause?); for a graph over ``--tolerance``, the first nodes whose outputs differ;
2. end to end: the bundle tracking ``--frames`` synthetic frames on the CPU and on the device,
   per-frame mask IoU between the two (does the device path alone lose accuracy?);
3. time: per model graph median ms with the target's options, with ``prefer_nhwc``, with CUDA
   graphs (``enable_cuda_graph``: fixed addresses), also on the graph specialised to its input
   shapes (onnxsim), and for the memory encoder with its depthwise convolutions made dense
   (``compiler/passes/depthwise.py``); each of the bundle's other forms (``alternatives``:
   ``bundle.FORMS``) timed the same way, with its own device-vs-CPU parity (would the runtime's
   fastest form also be the closer one?); the profiler's top nodes and op types per graph; with
   ``--checkpoint``, the reference's top operators for the memory encoder and decoder.

    python scripts/gpu_diagnose.py /tmp/gw/tiny-cuda --out out/diag [--device cuda]

``--node-times`` runs only the profiles, of every graph and form, with blocking CUDA launches
so that each node's time includes its GPU time (``nodes.md``): the plain profile times launches
only, which told nothing about where the memory encoder's 9-12 ms go on an H200.

Writes ``diagnose.json`` and ``diagnose.md`` under ``--out``. ``--device cpu`` runs every step on
the CPU (a dry run: the parity is then trivially exact and CUDA graphs are skipped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from samurai_onnx.compiler.evaluate.bench import relative_error
from samurai_onnx.compiler.evaluate.metrics import mask_iou
from samurai_onnx.compiler.passes.depthwise import densify_depthwise
from samurai_onnx.runtime.bundle import load_bundle
from samurai_onnx.runtime.contract import GRAPHS, MODEL_GRAPHS, steady_state_feeds
from samurai_onnx.runtime.engine.forms import time_call
from samurai_onnx.runtime.engine.onnxruntime import create_session
from samurai_onnx.runtime.host import machine
from samurai_onnx.runtime.tracker import engine_settings

log = logging.getLogger("gpu_diagnose")


CPU: list[Any] = [("CPUExecutionProvider", {})]
PROFILE_RUNS = 6


def _providers(bundle: Any, device: str, extra: dict[str, Any] | None = None) -> list[Any]:
    """The bundle's providers and options for ``device`` (as the runtime resolves them), with
    ``extra`` options for the CUDA provider. A target's own ``enable_cuda_graph`` is left out:
    it needs the engine's fixed buffers, and the CUDA-graph variant here sets it itself."""

    def cuda(opts: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in opts.items() if k != "enable_cuda_graph"}
        return {**kept, **(extra or {})}

    return [
        (name, cuda(opts) if name == "CUDAExecutionProvider" else opts)
        for name, opts in engine_settings(bundle, device, None).providers
    ]


def _errors(ref: list[np.ndarray], got: list[np.ndarray], names: list[str]) -> dict[str, float]:
    return {n: relative_error(g, r) for n, r, g in zip(names, ref, got, strict=True)}


def _with_node_outputs(path: Path) -> tuple[bytes, dict[str, str]]:
    """The model with every float node output exposed as a graph output (for node-level
    parity), and each output's op type."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    known = {o.name for o in model.graph.output}
    ops = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        for name in node.output:
            # float outputs only (bfloat16 has no numpy type); untyped ones (contrib ops) are
            # float in these graphs
            if name and name not in known and types.get(name, onnx.TensorProto.FLOAT) in floats:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    return model.SerializeToString(), ops


def _static(model: Path | bytes, feeds: dict[str, np.ndarray]) -> bytes:
    """``model`` with its inputs fixed to the feeds' shapes and onnxsim's folding run: what a
    fixed-shape target would build (the dynamic graphs' shape arithmetic runs on the CPU between
    the kernels; ONNX Runtime captures CUDA graphs over it, with a warning, but not over a
    compute node that needs a copy to the CPU)."""
    import onnxsim

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    simplified, ok = onnxsim.simplify(proto, overwrite_input_shapes=shapes)
    if not ok:
        raise RuntimeError("onnxsim could not validate the static graph")
    return simplified.SerializeToString()


def parity(
    path: Path,
    feeds: dict[str, np.ndarray],
    ref: list[np.ndarray],
    names: list[str],
    dev: list[Any],
    tol: float,
) -> dict[str, Any]:
    """``ref`` (the graph's outputs ``names`` on the CPU provider) against ``dev``'s."""
    out: dict[str, Any] = {
        "optimized": _errors(ref, create_session(path, dev).run(None, feeds), names),
        "unoptimized": _errors(
            ref, create_session(path, dev, optimize=False).run(None, feeds), names
        ),
    }
    if max(out["optimized"].values()) > tol:
        data, ops = _with_node_outputs(path)
        a = create_session(data, CPU, optimize=False)
        b = create_session(data, dev, optimize=False)
        all_names = [o.name for o in a.get_outputs()]
        ra, rb = a.run(None, feeds), b.run(None, feeds)
        nodes = [
            {"output": n, "op": ops.get(n, "?"), "rel_error": relative_error(y, x)}
            for n, x, y in zip(all_names, ra, rb, strict=True)
            if np.asarray(x).dtype.kind == "f"
        ]
        out["first_nodes_over_tolerance"] = [d for d in nodes if d["rel_error"] > tol][:15]
        out["worst_nodes"] = sorted(nodes, key=lambda d: -d["rel_error"])[:15]
    return out


def timing(
    model: Path | bytes, feeds: dict[str, np.ndarray], providers: list[Any], repeats: int,
    device: str, *, cuda_graph: bool = False,
) -> float:  # fmt: skip
    """Median ms of ``run_with_iobinding`` with inputs and outputs resident on ``device``."""
    sess = create_session(model, providers)
    kind = "cuda" if device == "cuda" else "cpu"
    first = sess.run(None, feeds)
    binding = sess.io_binding()
    for k, v in feeds.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, kind, 0))
    for o, v in zip(sess.get_outputs(), first, strict=True):
        binding.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(v, kind, 0))
    if cuda_graph:  # the first runs capture the graph (one more is the timer's warm-up)
        for _ in range(2):
            sess.run_with_iobinding(binding)
    run = partial(sess.run_with_iobinding, binding)
    return time_call(run, repeats, binding.synchronize_outputs).median * 1e3


def profile(
    path: Path | bytes, feeds: dict[str, np.ndarray], providers: list[Any], out: Path, stem: str
) -> dict[str, Any]:
    """ONNX Runtime's profile: ms per run by op type and by node, over the runs after the first
    (which carries cuDNN's exhaustive algorithm search: 668 of 746 ms on an H200). Node times
    are host times (a CUDA kernel is only launched) unless CUDA launches block (``--node-times``)."""
    sess = create_session(path, providers, profile_prefix=str(out / f"profile-{stem}"))
    for _ in range(PROFILE_RUNS):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kept = runs[1:] or runs
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= e["ts"] <= end for start, end in kept):
            continue
        op = e.get("args", {}).get("op_name", "?")
        ms = e["dur"] / 1e3 / len(kept)
        by_op[op] += ms
        by_node[f"{e['name'][: -len('_kernel_time')]} ({op})"] += ms
    top = lambda d: sorted(([k, round(v, 4)] for k, v in d.items()), key=lambda kv: -kv[1])[:12]  # noqa: E731
    run_ms = [(end - start) / 1e3 for start, end in kept]
    return {
        "ms_per_run_by_op": top(by_op),
        "ms_per_run_by_node": top(by_node),
        "ms_per_run": round(float(np.median(run_ms)), 3) if run_ms else None,
        "ms_per_run_mean": round(float(np.mean(run_ms)), 3) if run_ms else None,
        "ms_in_nodes": round(sum(by_node.values()), 3),  # a mean over the kept runs
    }


def node_times(args: argparse.Namespace, bundle: Any, dev: list[Any]) -> dict[str, Any]:
    """``--node-times``: each graph and each of its forms profiled with blocking CUDA launches,
    so a node's time includes its kernels' GPU time (the plain profile shows only launch times:
    the H200's memory encoder spent 4.3 of 15.7 profiled ms in nodes, the rest waiting)."""
    graphs: dict[str, Any] = {}
    for name in [g for g in args.graphs.split(",") if g in bundle.components]:
        feeds = steady_state_feeds(name, 1, bundle.tracker.geometry, bundle.static_memory)
        for form in ("", *bundle.components[name].alternatives):
            key = f"{name}/{form}" if form else name
            graphs[key] = profile(bundle.file(name, form or None), feeds, dev, args.out, key.replace("/", "."))
            log.info("%s: %s", key, json.dumps(graphs[key])[:600])
    return graphs


def torch_profile(bundle: Any, checkpoint: Path, device: str, graphs: list[str]) -> dict[str, Any]:
    """The reference's kernels for ``graphs`` (one object, full bank), fp32 and, on a GPU, in
    SAMURAI's fp16 autocast: the top operators by device time per call (CPU time on the CPU).
    Tells which kernels PyTorch runs where ONNX Runtime is slower (its depthwise convolutions
    have their own kernels; ONNX Runtime's go through cuDNN)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from samurai_onnx.compiler.evaluate.bench import FULL_BANK, reference_calls
    from samurai_onnx.compiler.evaluate.oracle import build_oracle

    settings = {**FULL_BANK, "fill_hole_area": 0, "image_size": bundle.tracker.image_size}
    oracle = build_oracle(bundle.model_name, checkpoint, settings, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    out: dict[str, Any] = {}
    for half in (False, True) if device == "cuda" else (False,):

        def ctx(half: bool = half) -> Any:
            return (
                torch.autocast("cuda", dtype=torch.float16)
                if half
                else torch.autocast(device, enabled=False)
            )

        calls = reference_calls(oracle, 1, device, torch.Generator().manual_seed(0), ctx)
        for name in graphs:
            if name not in calls:
                continue
            with torch.inference_mode(), ctx():
                for _ in range(3):
                    calls[name]()
                if device == "cuda":
                    torch.cuda.synchronize()
                with profile(activities=activities) as prof:
                    for _ in range(5):
                        calls[name]()
                    if device == "cuda":
                        torch.cuda.synchronize()
            rows = []
            for e in prof.key_averages():
                dev_us = getattr(e, "self_device_time_total", None)
                if dev_us is None:
                    dev_us = getattr(e, "self_cuda_time_total", 0.0)
                us = float(dev_us or 0.0) if device == "cuda" else float(e.self_cpu_time_total)
                rows.append([e.key, round(us / 5e3, 4)])
            rows.sort(key=lambda r: -r[1])
            out[f"{name}{' fp16' if half else ''}"] = rows[:12]
    return out


def end_to_end(bundle_path: Path, device: str, frames: int) -> dict[str, Any]:
    from samurai_onnx.compiler.evaluate.bench import FULL_BANK
    from samurai_onnx.compiler.evaluate.synthetic import synthetic_box, synthetic_frames
    from samurai_onnx.runtime.tracker import Tracker

    clip = synthetic_frames(frames)
    box = list(synthetic_box())
    masks = {}
    for dev in ("cpu", device):
        bundle = load_bundle(bundle_path)
        # the main forms on both sides: the runtime could pick other forms on each device
        tracker = Tracker(bundle, device=dev, num_frames=frames, overrides=FULL_BANK, forms="main")
        got = [tracker.start(clip[0], [box])[0].mask]
        got += [tracker.step(f)[0].mask for f in clip[1:]]
        masks[dev] = got
    ious = [mask_iou(a, b) for a, b in zip(masks["cpu"], masks[device], strict=True)]
    return {"iou_cpu_vs_device": [round(x, 6) for x in ious], "min": min(ious)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--frames", type=int, default=10, help="end-to-end frames (0: skip)")
    parser.add_argument("--graphs", default=",".join(GRAPHS))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="the bundle's checkpoint: also profile the reference's memory encoder and decoder",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="relative error that counts (default 1e-3 for fp32 bundles, 2e-2 for fp16 ones)",
    )
    parser.add_argument(
        "--node-times",
        action="store_true",
        help="only the profile of each graph and form, with blocking CUDA launches "
        "(CUDA_LAUNCH_BLOCKING=1), so node times include GPU time; writes nodes.md",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.bundle)
    dev = _providers(bundle, args.device)
    if args.node_times:
        # read when the CUDA context is made, which no session has done yet in this process
        os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
        report = {"machine": machine(), "onnxruntime": ort.__version__, "bundle": str(args.bundle),
                  "providers": dev, "launch_blocking": True,
                  "graphs": node_times(args, bundle, dev)}  # fmt: skip
        (args.out / "nodes.json").write_text(json.dumps(report, indent=1))
        (args.out / "nodes.md").write_text(nodes_markdown(report))
        log.info("wrote %s", args.out / "nodes.md")
        return
    if args.tolerance is None:
        args.tolerance = 1e-3 if bundle.target.get("precision", "fp32") == "fp32" else 2e-2
    report: dict[str, Any] = {"machine": machine(), "onnxruntime": ort.__version__,
                              "bundle": str(args.bundle), "providers": dev, "graphs": {}}  # fmt: skip
    nhwc = _providers(bundle, "cuda", {"prefer_nhwc": 1})
    graph = _providers(bundle, "cuda", {"enable_cuda_graph": 1})
    for name in [g for g in args.graphs.split(",") if g in bundle.components]:
        path = bundle.file(name)
        feeds = steady_state_feeds(name, 1, bundle.tracker.geometry, bundle.static_memory)
        cpu = create_session(path, CPU)
        outs = [o.name for o in cpu.get_outputs()]
        ref = cpu.run(None, feeds)
        entry: dict[str, Any] = {"parity": parity(path, feeds, ref, outs, dev, args.tolerance)}
        models: dict[str, Path | bytes] = {"": path}
        on_cpu: dict[str, list[np.ndarray]] = {}  # each variant's outputs on the CPU provider
        for form in bundle.components[name].alternatives:
            # the bundle's other forms (the runtime times them and keeps the fastest): each
            # one's own device-vs-CPU parity (is one of them closer on this device?) and time
            alt = bundle.file(name, form)
            on_cpu[form] = create_session(alt, CPU).run(None, feeds)
            entry[f"parity_{form}"] = parity(alt, feeds, on_cpu[form], outs, dev, args.tolerance)
            models[form] = alt
        if name == "memory_encoder" and "dense" not in models:
            model = onnx.load(str(path))
            if densify_depthwise(model):
                models["dense_depthwise"] = model.SerializeToString()
        # pre/postprocessing graphs take ~0.3 ms on a GPU: parity only, timed as they are
        for key in list(models) if name in MODEL_GRAPHS else []:
            try:  # the graph specialised to these shapes: shape arithmetic folded away
                models[f"{key}+static" if key else "static"] = _static(models[key], feeds)
            except Exception as exc:
                entry[f"{key or 'target'}_static_failed"] = str(exc).strip().splitlines()[0][:200]
        for key, model_or_path in models.items():
            if key:  # every variant computes the bundle's numbers (relative error on the CPU)
                got = on_cpu.get(key) or create_session(model_or_path, CPU).run(None, feeds)
                entry[f"{key}_cpu_error"] = max(_errors(ref, got, outs).values())
        variants: dict[str, tuple[Path | bytes, list[Any], bool]] = {}
        for key, model_or_path in models.items():
            label = key or "target"
            variants[label] = (model_or_path, dev, False)
            if args.device == "cuda" and name in MODEL_GRAPHS:
                if "static" not in label:  # NHWC is a question of kernels, not of shapes
                    variants[f"{label}+prefer_nhwc"] = (model_or_path, nhwc, False)
                variants[f"{label}+cuda_graph"] = (model_or_path, graph, True)
        entry["ms"] = {}
        for key, (model_or_path, providers, graph_mode) in variants.items():
            try:
                entry["ms"][key] = round(
                    timing(
                        model_or_path,
                        feeds,
                        providers,
                        args.repeats,
                        args.device,
                        cuda_graph=graph_mode,
                    ),
                    3,
                )
            except Exception as exc:  # a variant the provider refuses is a result too
                entry["ms"][key] = f"failed: {str(exc).strip().splitlines()[0][:200]}"
        entry["profile"] = profile(path, feeds, dev, args.out, name)
        report["graphs"][name] = entry
        log.info(
            "%s: %s", name, json.dumps({"ms": entry["ms"], "parity": entry["parity"]["optimized"]})
        )
    if args.checkpoint:
        wanted = [g for g in ("memory_encoder", "mask_decoder") if g in args.graphs.split(",")]
        report["torch_profile"] = torch_profile(bundle, args.checkpoint, args.device, wanted)
        log.info("reference kernels: %s", json.dumps(report["torch_profile"])[:2000])
    if args.frames:
        report["end_to_end"] = end_to_end(args.bundle, args.device, args.frames)
        log.info("end to end: %s", report["end_to_end"])
    (args.out / "diagnose.json").write_text(json.dumps(report, indent=1))
    (args.out / "diagnose.md").write_text(to_markdown(report))
    log.info("wrote %s", args.out / "diagnose.md")


def nodes_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}; onnxruntime {report['onnxruntime']}",
        f"Bundle `{report['bundle']}`, providers {report['providers']}; CUDA launches "
        "blocking: a node's time includes its kernels' GPU time (plus a synchronisation, "
        "~10-20 us, per node)",
        "",
        "| graph | ms per run | ms in nodes | top nodes (ms per run) |",
        "|---|---|---|---|",
    ]
    for key, p in report["graphs"].items():
        top = "; ".join(f"{n} {ms}" for n, ms in p["ms_per_run_by_node"][:8])
        lines.append(f"| {key} | {p['ms_per_run']} | {p['ms_in_nodes']} | {top} |")
    lines += ["", "By op type (ms per run):", ""]
    for key, p in report["graphs"].items():
        lines.append(f"- {key}: {p['ms_per_run_by_op'][:8]}")
    return "\n".join(lines) + "\n"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}; onnxruntime {report['onnxruntime']}",
             f"Bundle `{report['bundle']}`, providers {report['providers']}", "",
             "| graph | max rel. error device vs CPU (optimized / unoptimized) | ms per variant |",
             "|---|---|---|"]  # fmt: skip
    for name, e in report["graphs"].items():
        p = e["parity"]
        err = f"{max(p['optimized'].values()):.2e} / {max(p['unoptimized'].values()):.2e}"
        ms = ", ".join(f"{k} {v}" for k, v in e["ms"].items())
        lines.append(f"| {name} | {err} | {ms} |")
    for name, e in report["graphs"].items():
        lines += ["", f"### {name}", "", f"- top ops (ms/run): {e['profile']['ms_per_run_by_op'][:8]}",
                  f"- top nodes (ms/run): {e['profile']['ms_per_run_by_node'][:8]}"]  # fmt: skip
        for key in ("first_nodes_over_tolerance", "worst_nodes"):
            if key in e["parity"]:
                lines.append(f"- {key}: {e['parity'][key][:8]}")
        for key, p in e.items():
            if key.startswith("parity_"):  # one of the bundle's other forms
                lines.append(
                    f"- {key[len('parity_') :]} form, max rel. error device vs CPU (optimized / "
                    f"unoptimized): {max(p['optimized'].values()):.2e} / "
                    f"{max(p['unoptimized'].values()):.2e}"
                )
                if "first_nodes_over_tolerance" in p:
                    lines.append(
                        f"  - first nodes over tolerance: {p['first_nodes_over_tolerance'][:8]}"
                    )
        for key, value in e.items():
            if key.endswith("_cpu_error"):
                lines.append(
                    f"- {key[: -len('_cpu_error')]} vs the bundle's graph on the CPU: {value:.2e}"
                )
            elif key.endswith("_static_failed"):
                lines.append(f"- {key}: {value}")
    for key, rows in report.get("torch_profile", {}).items():
        lines += ["", f"Reference (PyTorch) {key}, top ops, ms per call: {rows[:8]}"]
    if "end_to_end" in report:
        lines += ["", f"End to end, per-frame mask IoU CPU vs device: {report['end_to_end']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
