"""Benchmark a bundle and SAMURAI's PyTorch reference side by side, in one run, on one machine.

Each side runs in its own subprocess (so peak RSS is each side's own):

- per-graph latency (median and p90 over repeats) for each batch size (objects), with inputs
  made from the graph contract (a full bank: 7 memories, 16 pointers);
- end to end, for each object count: steady-state seconds per frame with a full memory bank,
  split into the time inside graph runs and the host time outside them; for the bundle also
  with every object run alone (batch-1 passes), which shows what batching saves;
- per-frame mask IoU of every side against the fp32 reference (one object).

SAMURAI's PyTorch code keeps one Kalman state per model, so it tracks one object per predictor;
the reference is timed end to end with one object, and N objects count as N such runs.

A full bank needs every frame to pass SAMURAI's memory criteria; with random weights few do, so
both sides run with the memory-bank thresholds lowered (the same for both): from frame 7 on
every frame attends to 7 memories, from frame 16 on to 16 pointers as well, which is SAMURAI's
steady state. On ``--device cuda`` the reference runs on the GPU in fp32 and in SAMURAI's fp16
autocast.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.compiler.evaluate.metrics import mask_iou
from samurai_onnx.runtime.contract import steady_state_feeds
from samurai_onnx.runtime.engine.forms import Timing, time_call
from samurai_onnx.runtime.host import machine

FULL_BANK = {"memory_bank_iou_threshold": -1.0, "memory_bank_obj_score_threshold": -1.0e9}


@dataclass
class EndToEnd:
    seconds_per_frame: float
    graph_seconds_per_frame: float | None
    host_seconds_per_frame: float | None
    frames_timed: int


@dataclass
class SideResult:
    side: str
    components: dict[str, dict[int, Timing]] = field(default_factory=dict)
    end_to_end: dict[int, EndToEnd] = field(default_factory=dict)
    unbatched: dict[int, EndToEnd] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    engine: str = ""
    masks_file: str = ""
    # per end-to-end pass with all objects batched (key: objects), per graph, over its timed
    # frames: [replayed as CUDA graphs, runs, signatures captured by the pass's end]
    replays: dict[str, dict[str, list[int]]] = field(default_factory=dict)


def _clip_jpegs(video: str | None, n: int) -> list[bytes]:
    """The clip as JPEG files, as both sides see it: the reference reads a folder of JPEGs (SAM
    2's video predictor) and the bundle side tracks the same files decoded, so the IoU column
    compares the models, not a codec."""
    import cv2

    from samurai_onnx.runtime.video import open_frames

    if video is None:
        from samurai_onnx.compiler.evaluate.synthetic import synthetic_frames

        raw = synthetic_frames(n)
    else:
        with open_frames(video) as src:
            raw = list(islice(src, n))
    out = []
    for f in raw:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("could not encode a frame as JPEG")
        out.append(data.tobytes())
    return out


def _decode(jpeg: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError("could not decode a JPEG frame")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def object_boxes(first: list[float], n: int, width: int, height: int) -> list[list[float]]:
    """``n`` boxes: the given one, then copies shifted across the frame (other objects)."""
    x, y, w, h = first
    boxes = [[x, y, w, h]]
    for k in range(1, n):
        dx = (k * 0.37 % 1.0) * max(width - w, 1)
        dy = (k * 0.61 % 1.0) * max(height - h, 1)
        boxes.append([float(dx), float(dy), w, h])
    return boxes


def _steady(times: list[float], graph: list[float] | None, start: int) -> EndToEnd:
    t = times[start:]
    g = graph[start:] if graph is not None else None
    return EndToEnd(
        float(np.median(t)),
        float(np.median(g)) if g is not None else None,
        float(np.median(np.subtract(t, g))) if g is not None else None,
        len(t),
    )


def run_onnx_side(args: dict[str, Any]) -> SideResult:
    from samurai_onnx.runtime.bundle import load_bundle
    from samurai_onnx.runtime.tracker import Tracker

    bundle = load_bundle(args["bundle"])
    frames = [_decode(j) for j in _clip_jpegs(args.get("video"), args["frames"])]
    height, width = frames[0].shape[:2]
    tracker = Tracker(
        bundle,
        device=args["device"],
        threads=args.get("threads"),
        num_frames=len(frames),
        overrides=FULL_BANK,
        processing=args.get("processing"),
        fill_hole_area=0,  # as the reference side: the IoU compares models, not hole filling
        forms=args.get("forms", "fastest"),
    )
    res = SideResult(args.get("side", "onnx"), engine=tracker.describe())
    for name, session in tracker.graphs.sessions.items():
        res.components[name] = {}
        for b in args["batch_sizes"]:
            if name in ("image_encoder", "preprocess") and b > 1:
                continue  # one frame per step, whatever the number of objects
            feeds = steady_state_feeds(name, b, bundle.tracker.geometry, bundle.static_memory)
            fed = {k: tracker.engine.upload(v) for k, v in feeds.items()}
            res.components[name][b] = time_call(partial(session.run, fed), args["repeats"])
    masks: dict[str, np.ndarray] = {}

    def replay_counts() -> dict[str, tuple[int, int, int]]:
        counts = {name: s.replay_counts() for name, s in tracker.graphs.sessions.items()}
        return {name: c for name, c in counts.items() if c is not None}

    for n in args["objects"]:
        for batched in (True, False) if n > 1 and args.get("unbatched", True) else (True,):
            tracker.max_batch = None if batched else 1
            boxes = object_boxes(args["box"], n, width, height)
            times, graph = [], []
            tracker.reset()
            before = replay_counts()
            for i, f in enumerate(frames):
                if i == args["steady_from"]:
                    before = replay_counts()
                g0, t0 = tracker.graphs.graph_seconds, time.perf_counter()
                if i + 1 < len(frames):  # as Tracker.track does (nothing without prefetch)
                    tracker.encode_ahead(frames[i + 1])
                objs = tracker.start(f, boxes) if i == 0 else tracker.step(f)
                times.append(time.perf_counter() - t0)
                graph.append(tracker.graphs.graph_seconds - g0)
                if n == 1:
                    masks[f"f{i}"] = np.packbits(objs[0].mask)
            (res.end_to_end if batched else res.unbatched)[n] = _steady(
                times, graph, args["steady_from"]
            )
            if batched and before:  # CUDA graphs: how many timed runs were replays
                now = replay_counts()
                res.replays[str(n)] = {
                    g: [c[0] - before[g][0], c[1] - before[g][1], c[2]] for g, c in now.items()
                }
    res.masks_file = _save_masks(args, args.get("masks_name", "onnx"), masks)
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def reference_calls(
    oracle: Any, b: int, device: str, g: Any, ctx: Callable[[], Any]
) -> dict[str, Callable[[], Any]]:
    """The reference's four model graphs as calls at ``b`` objects with a full bank (7 memories,
    16 pointers), on random inputs from generator ``g``; ``ctx`` is the autocast context the
    features are made in. Used by the bench and by ``scripts/gpu_diagnose.py``'s profile."""
    import torch

    n, p = oracle.num_maskmem, oracle.max_obj_ptrs_in_encoder
    size, feat = oracle.image_size, oracle.sam_image_embedding_size
    d, m = oracle.hidden_dim, oracle.mem_dim
    img = torch.randn(b, 3, size, size, generator=g).to(device)
    vf = torch.randn(feat * feat, b, d, generator=g).to(device)
    with torch.inference_mode(), ctx():
        backbone = oracle.forward_image(img[:1])
        hr = [t.expand(b, -1, -1, -1) for t in backbone["backbone_fpn"][:2]]
    # a full bank: n memories of feat x feat tokens, p pointers of d / m tokens each
    memory = torch.randn(n * feat * feat + p * (d // m), b, m, generator=g).to(device)
    mask = torch.randn(b, 1, size, size, generator=g).to(device)
    return {
        "image_encoder": partial(oracle.forward_image, img[:1]),
        "memory_attention": partial(
            oracle.memory_attention, curr=[vf], curr_pos=[vf], memory=memory,
            memory_pos=memory, num_obj_ptr_tokens=p * (d // m),
        ),
        "mask_decoder": partial(
            oracle._forward_sam_heads, vf.permute(1, 2, 0).reshape(b, d, feat, feat),
            None, None, hr, True,
        ),
        "memory_encoder": partial(
            oracle._encode_new_memory, [vf], [(feat, feat)], mask,
            torch.ones(b, 1, device=device), False,
        ),
    }  # fmt: skip


def run_torch_side(args: dict[str, Any]) -> SideResult:
    import torch

    from samurai_onnx.compiler.evaluate.oracle import build_oracle

    device = "cuda" if args["device"] in ("cuda", "tensorrt") else "cpu"
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    oracle = build_oracle(
        args["size"],
        Path(args["checkpoint"]),
        {**FULL_BANK, "fill_hole_area": 0, "image_size": int(args["image_size"])},
        device=device,
    )
    half = bool(args.get("autocast"))
    side = "pytorch-fp16" if half else "pytorch"
    res = SideResult(side, engine=f"torch {torch.__version__} on {device}")
    if device == "cuda":
        # build_oracle made fp32 strict (no TF32 convolutions, PyTorch's GPU default)
        res.engine += f" ({torch.cuda.get_device_name(0)}), " + (
            "fp16 autocast" if half else "fp32, TF32 off"
        )

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def ctx() -> Any:
        return (
            torch.autocast("cuda", dtype=torch.float16)
            if half
            else torch.autocast(device, enabled=False)
        )

    g = torch.Generator().manual_seed(0)
    for b in args["batch_sizes"]:
        calls = reference_calls(oracle, b, device, g, ctx)
        for name, fn in calls.items():
            if b > 1 and name in ("image_encoder", "mask_decoder"):
                # one image per frame; SAMURAI's heads hold one object's Kalman state (its
                # candidate choice fails on a batch), so the reference decodes one object a call
                continue
            oracle.kf_mean = oracle.kf_covariance = None
            oracle.stable_frames = 0

            def call(fn: Callable[[], Any] = fn) -> Any:
                with torch.inference_mode(), ctx():
                    return fn()

            res.components.setdefault(name, {})[b] = time_call(call, args["repeats"], sync)
    jpegs = _clip_jpegs(args.get("video"), args["frames"])
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(jpegs):
            (Path(tmp) / f"{i:05d}.jpg").write_bytes(data)
        # SAMURAI's PyTorch code tracks one object per predictor (its Kalman state lives on the
        # model), so the reference end to end is one object; N objects there are N such runs.
        oracle.kf_mean = oracle.kf_covariance = None
        oracle.stable_frames = 0
        x, y, w, h = args["box"]
        with torch.inference_mode(), ctx():
            state = oracle.init_state(tmp)
            oracle.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=[x, y, x + w, y + h])
            sync()
            t0 = time.perf_counter()
            times = []
            for idx, _, out in oracle.propagate_in_video(state):
                sync()
                times.append(time.perf_counter() - t0)
                masks[f"f{idx}"] = np.packbits((out[0, 0] > 0).cpu().numpy())
                t0 = time.perf_counter()
        res.end_to_end[1] = _steady(times, None, args["steady_from"])
    res.masks_file = _save_masks(args, args.get("masks_name", side), masks)
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _save_masks(args: dict[str, Any], side: str, masks: dict[str, np.ndarray]) -> str:
    if not masks or not args.get("work_dir"):
        return ""
    path = Path(args["work_dir"]) / f"{side}-masks.npz"
    np.savez_compressed(path, **masks)  # type: ignore[arg-type]
    return str(path)


def _subprocess(side: str, args: dict[str, Any]) -> SideResult:
    cmd = [sys.executable, "-m", "samurai_onnx.compiler.evaluate.bench", side, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        raise RuntimeError(f"the {side} benchmark failed: {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    res = SideResult(
        data["side"],
        peak_rss_mb=data["peak_rss_mb"],
        engine=data["engine"],
        masks_file=data["masks_file"],
        replays={
            n: {g: list(c) for g, c in per_graph.items()}
            for n, per_graph in data.get("replays", {}).items()
        },
    )
    res.components = {
        k: {int(b): Timing(**t) for b, t in v.items()} for k, v in data["components"].items()
    }
    res.end_to_end = {int(n): EndToEnd(**e) for n, e in data["end_to_end"].items()}
    res.unbatched = {int(n): EndToEnd(**e) for n, e in data["unbatched"].items()}
    return res


def _ious(a_file: str, b_file: str) -> list[float]:
    if not a_file or not b_file:
        return []
    a, b = np.load(a_file), np.load(b_file)
    out = []
    for key in sorted(set(a.files) & set(b.files), key=lambda k: int(k[1:])):
        out.append(mask_iou(np.unpackbits(a[key]).astype(bool), np.unpackbits(b[key]).astype(bool)))
    return out


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Max abs difference over the largest abs value of ``want`` (over 1 where that is 0);
    inf for a shape mismatch. How engines and providers are compared on one graph's output."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not want.size:
        return 0.0
    return float(np.abs(got - want).max() / (np.abs(want).max() or 1.0))


def compared_sides(args: dict[str, Any]) -> list[tuple[str, str]]:
    """(side name, bundle path) of every bundle in the run: ``onnx`` for ``args["bundle"]``, then
    ``onnx <folder name>`` for each of ``args["compare"]`` (numbered where two names clash)."""
    out = [("onnx", str(args["bundle"]))]
    for i, path in enumerate(args.get("compare") or [], start=2):
        name = f"onnx {Path(path).name}"
        if any(name == n for n, _ in out):
            name = f"{name} #{i}"
        out.append((name, str(path)))
    return out


def benchmark(args: dict[str, Any], *, reference: bool = True) -> dict[str, Any]:
    """Every side, each in a subprocess; returns the JSON-able report.

    Several bundles (``args["compare"]``) share one reference run, so their ratios to it and to
    each other come from the same run on the same machine."""
    with tempfile.TemporaryDirectory() as work:
        args = {**args, "work_dir": work}
        sides: list[SideResult] = []
        failed: dict[str, str] = {}
        for i, (name, path) in enumerate(compared_sides(args)):
            try:
                sides.append(
                    _subprocess(
                        "onnx", {**args, "bundle": path, "side": name, "masks_name": f"onnx{i}"}
                    )
                )
            except RuntimeError as exc:
                if i == 0:
                    raise
                failed[name] = str(exc)  # a compared bundle that fails is a result, not the end
        ref: SideResult | None = None
        if reference:
            runs = max(1, int(args.get("reference_runs") or 1))
            ref = fastest_run(
                [_subprocess("torch", {**args, "masks_name": f"pytorch{i}"}) for i in range(runs)]
            )
            sides.append(ref)
            if args["device"] in ("cuda", "tensorrt"):
                half = {**args, "autocast": True}
                sides.append(fastest_run(
                    [_subprocess("torch", {**half, "masks_name": f"fp16-{i}"}) for i in range(runs)]
                ))  # fmt: skip
        report: dict[str, Any] = {"machine": machine(), "args": args, "sides": {}}
        if failed:
            report["failed"] = failed
        for s in sides:
            entry = _as_dict(s)
            entry.pop("masks_file")  # a temporary file of this run
            if ref is not None and s is not ref:
                ious = _ious(s.masks_file, ref.masks_file)
                if ious:
                    entry["iou_vs_fp32_reference"] = {
                        "min": min(ious),
                        "mean": float(np.mean(ious)),
                        "frames": len(ious),
                        "per_frame": [round(float(v), 4) for v in ious],
                    }
            report["sides"][s.side] = entry
    report["args"].pop("work_dir", None)
    return report


def fastest_run(runs: list[SideResult]) -> SideResult:
    """Of several runs of one reference side, the one with the least one-object seconds per
    frame (the fewest objects timed, where one object was not), its engine line listing every
    run's time. Why: PyTorch's GPU time moves between identical runs (fp16 autocast on an H200:
    24.1 and 34.4 ms per frame; the bundles' 27.5 and 28.5), so a ratio against one run can
    flatter either side; against the fastest of several it does not flatter the bundle."""
    if len(runs) == 1:
        return runs[0]

    def seconds(r: SideResult) -> float:
        if not r.end_to_end:
            return float("inf")
        return r.end_to_end[min(r.end_to_end)].seconds_per_frame

    best = min(runs, key=seconds)
    times = ", ".join(f"{seconds(r) * 1e3:.1f}" for r in runs)
    best.engine += f"; fastest of {len(runs)} runs (ms per frame: {times})"
    return best


def _as_dict(r: SideResult) -> dict[str, Any]:
    data = asdict(r)
    data["components"] = {
        k: {str(b): t for b, t in v.items()} for k, v in data["components"].items()
    }
    data["end_to_end"] = {str(n): e for n, e in data["end_to_end"].items()}
    data["unbatched"] = {str(n): e for n, e in data["unbatched"].items()}
    return data


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _speed(ref: dict[str, Any] | None, n: str, seconds: float) -> str:
    """``ref``'s time for ``n`` objects over ``seconds``: the reference tracks one object per
    predictor (see run_torch_side), so its N objects are N one-object runs."""
    if ref is None or "1" not in ref["end_to_end"]:
        return "-"
    one = ref["end_to_end"]["1"]["seconds_per_frame"]
    return f"{int(n) * one / seconds:.2f}x" + (f" (vs {n} runs)" if n != "1" else "")


def to_markdown(report: dict[str, Any]) -> str:
    sides = report["sides"]
    onnx_sides = {name: s for name, s in sides.items() if name.startswith("onnx")}
    ref = sides.get("pytorch")
    half = sides.get("pytorch-fp16")
    compared = report["args"].get("compare") or []
    lines = [
        f"Machine: {report['machine']}",
        f"Bundle `{report['args']['bundle']}`"
        + "".join(f", compared with `{c}`" for c in compared)
        + f", device {report['args']['device']}; "
        + "; ".join(f"{name}: {s['engine']}" for name, s in sides.items()),
        "",
        "| graph | batch | ONNX median s | ONNX p90 s | PyTorch median s | PyTorch p90 s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, onnx in onnx_sides.items():
        suffix = "" if side == "onnx" else f" ({side[len('onnx ') :]})"
        for name, per_b in onnx["components"].items():
            for b, tim in per_b.items():
                r = (ref or {}).get("components", {}).get(name, {}).get(b)
                tail = (
                    f"{r['median']:.3f} | {r['p90']:.3f} | {r['median'] / tim['median']:.2f}x"
                    if r
                    else "- | - | -"
                )
                lines.append(
                    f"| {name}{suffix} | {b} | {tim['median']:.4f} | {tim['p90']:.4f} | {tail} |"
                )
    fp16_head = " vs PyTorch fp16 autocast |" if half else ""
    lines += [
        "",
        "| side | objects | s / frame | in graphs | host | vs PyTorch fp32 |"
        + fp16_head
        + " frames timed | IoU vs fp32 reference (min / mean) | peak RSS MB |",
        "|---|---|---|---|---|---|" + ("---|" if half else "") + "---|---|---|",
    ]
    for name, s in sides.items():
        for n, e in s["end_to_end"].items():
            spf = e["seconds_per_frame"]
            fp16 = f" {_speed(half, n, spf) if s is not half else '-'} |" if half else ""
            iou = s.get("iou_vs_fp32_reference")
            iou_text = f"{iou['min']:.4f} / {iou['mean']:.4f}" if iou and n == "1" else "-"
            low = [k for k, v in enumerate(iou.get("per_frame", [])) if v < 0.99] if iou else []
            if low and n == "1":  # which frames: one outlier reads differently from a drift
                iou_text += f" (< 0.99: frame {', '.join(map(str, low[:8]))}"
                iou_text += f" of {len(iou['per_frame'])})" if len(low) <= 8 else f", ... {len(low)} frames)"
            lines.append(
                f"| {name} | {n} | {spf:.4f} | {_fmt(e['graph_seconds_per_frame'], 4)} "
                f"| {_fmt(e['host_seconds_per_frame'], 4)} | {_speed(ref, n, spf)} |{fp16} "
                f"{e['frames_timed']} | {iou_text} | {s['peak_rss_mb']:.0f} |"
            )
        for n, e in s.get("unbatched", {}).items():
            batched = s["end_to_end"][n]["seconds_per_frame"]
            lines.append(
                f"| {name}, one object per pass | {n} | {e['seconds_per_frame']:.4f} | "
                f"{_fmt(e['graph_seconds_per_frame'], 4)} | {_fmt(e['host_seconds_per_frame'], 4)} | "
                f"batched: {e['seconds_per_frame'] / batched:.2f}x faster |"
                + (" - |" if half else "")
                + f" {e['frames_timed']} | - | - |"
            )
    for name, error in (report.get("failed") or {}).items():
        lines.append(f"| {name} | failed: {error} |")
    for name, s in onnx_sides.items():
        for objects, per_graph in (s.get("replays") or {}).items():
            counts = ", ".join(f"{g} {r}/{n} ({c})" for g, (r, n, c) in per_graph.items())
            lines += ["", f"{name}, {objects} object(s), CUDA graphs in the timed frames "
                      f"(replayed / runs (signatures captured)): {counts}"]  # fmt: skip
    if ref is not None and any(n != "1" for o in onnx_sides.values() for n in o["end_to_end"]):
        lines += [
            "",
            "SAMURAI's PyTorch code tracks one object per predictor (its Kalman state is per "
            "model): its time for N objects is N one-object runs, N x its 1-object s / frame.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    side, payload = sys.argv[1], json.loads(sys.argv[2])
    result = run_onnx_side(payload) if side == "onnx" else run_torch_side(payload)
    print(json.dumps(_as_dict(result)))
