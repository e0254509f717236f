"""Benchmark a bundle and SAMURAI's PyTorch reference side by side, in one run, on one machine.

Each side runs in its own subprocess (so peak RSS is each side's own): per-component latency
(median and p90 over repeats) for each batch size, and the end-to-end steady-state seconds per
frame of the tracking loop with a full memory bank. A full bank needs every frame to pass
SAMURAI's memory criteria; with random weights few do, so both sides run with the memory-bank
thresholds lowered (the same settings for both): from frame 7 on every frame attends to 7
memories, from frame 16 on to 16 pointers as well, which is SAMURAI's steady state.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

FULL_BANK = {"memory_bank_iou_threshold": -1.0, "memory_bank_obj_score_threshold": -1.0e9}


@dataclass
class Timing:
    median: float
    p90: float


@dataclass
class SideResult:
    side: str
    components: dict[str, dict[int, Timing]] = field(default_factory=dict)
    seconds_per_frame: float = 0.0
    frames_timed: int = 0
    peak_rss_mb: float = 0.0


def _time(fn: Callable[[], Any], repeats: int) -> Timing:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return Timing(float(np.median(ts)), float(np.percentile(ts, 90)))


def _feeds(
    name: str, b: int, s: Any, rng: np.random.Generator, static: bool
) -> dict[str, np.ndarray]:
    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    f, c, m, low = s.feat_size, s.d_model, s.mem_dim, s.low_res_mask_size
    if name == "image_encoder":
        return {"image": r(b, 3, s.image_size, s.image_size)}
    if name == "mask_decoder":
        return {
            "image_embed": r(b, c, f, f),
            "add_no_mem_embed": np.zeros(1, np.float32),
            "high_res_feat_s0": r(b, c // 8, 4 * f, 4 * f),
            "high_res_feat_s1": r(b, c // 4, 2 * f, 2 * f),
            "point_coords": np.zeros((b, 1, 2), np.float32),
            "point_labels": -np.ones((b, 1), np.float32),
            "mask_input": np.zeros((b, 1, low, low), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
    if name == "memory_encoder":
        return {
            "vision_features": r(b, c, f, f),
            "mask_logits": r(b, 1, low, low),
            "object_score_logits": np.ones((b, 1), np.float32),
            "binarize": np.zeros(1, np.float32),
        }
    n, p = s.num_maskmem, s.max_obj_ptrs_in_encoder
    feeds = {
        "vision_features": r(b, c, f, f),
        "vision_pos_enc": r(b, c, f, f),
        "memory": r(b, n, m, f, f),
        "memory_pos_enc": r(b, n, m, f, f),
        "memory_tpos_index": np.arange(n)[::-1].astype(np.int64),
        "obj_ptrs": r(b, p, c),
        "obj_ptr_offsets": (np.arange(p) / (p - 1)).astype(np.float32),
    }
    if static:
        feeds["memory_valid"] = np.ones(n, np.float32)
        feeds["obj_ptr_valid"] = np.ones(p, np.float32)
    return feeds


def _frames(video: str | None, n: int) -> list[np.ndarray]:
    from samurai_onnx.runtime.video import open_frames

    if video is None:
        import cv2

        out = []
        for i in range(n):
            f = np.zeros((360, 480, 3), np.uint8)
            cv2.rectangle(
                f, (100 + 8 * i, 120 + 3 * i), (190 + 8 * i, 190 + 3 * i), (255, 255, 255), -1
            )
            out.append(f)
        return out
    frames = []
    with open_frames(video) as src:
        for f in src:
            frames.append(f)
            if len(frames) == n:
                break
    return frames


def run_onnx_side(args: dict[str, Any]) -> SideResult:
    from samurai_onnx.runtime.bundle import load_bundle
    from samurai_onnx.runtime.session import create_session, providers_for_device
    from samurai_onnx.runtime.tracker import Tracker

    bundle = load_bundle(args["bundle"])
    providers = providers_for_device(args["device"])
    res = SideResult("onnx")
    rng = np.random.default_rng(0)
    static = bundle.components["memory_attention"].graph.endswith("_static")
    for name in bundle.components:
        sess = create_session(bundle.file(name), providers, args.get("threads"))
        res.components[name] = {}
        for b in args["batch_sizes"]:
            feeds = _feeds(name, b, bundle.tracker, rng, static)
            res.components[name][b] = _time(partial(sess.run, None, feeds), args["repeats"])
        del sess
    frames = _frames(args.get("video"), args["frames"])
    tracker = Tracker(
        bundle,
        device=args["device"],
        threads=args.get("threads"),
        num_frames=len(frames),
        overrides=FULL_BANK,
    )
    times = []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        tracker.start(f, [args["box"]]) if i == 0 else tracker.step(f)
        times.append(time.perf_counter() - t0)
    steady = times[args["steady_from"] :]
    res.seconds_per_frame, res.frames_timed = float(np.median(steady)), len(steady)
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def run_torch_side(args: dict[str, Any]) -> SideResult:
    import cv2
    import torch

    from samurai_onnx.compiler.evaluate.oracle import build_oracle

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    oracle = build_oracle(
        args["size"], Path(args["checkpoint"]), {**FULL_BANK, "fill_hole_area": 0}
    )
    res = SideResult("pytorch")
    g = torch.Generator().manual_seed(0)
    n, p = oracle.num_maskmem, oracle.max_obj_ptrs_in_encoder
    for b in args["batch_sizes"]:
        img = torch.randn(b, 3, oracle.image_size, oracle.image_size, generator=g)
        vf = torch.randn(64 * 64, b, 256, generator=g)
        with torch.inference_mode():
            backbone = oracle.forward_image(img[:1])
            hr = [t.expand(b, -1, -1, -1) for t in backbone["backbone_fpn"][:2]]
        memory = torch.randn(n * 4096 + p * 4, b, 64, generator=g)

        mask = torch.randn(b, 1, 1024, 1024, generator=g)
        calls: dict[str, Callable[[], Any]] = {
            "image_encoder": partial(oracle.forward_image, img),
            "memory_attention": partial(
                oracle.memory_attention,
                curr=[vf],
                curr_pos=[vf],
                memory=memory,
                memory_pos=memory,
                num_obj_ptr_tokens=p * 4,
            ),
            "mask_decoder": partial(
                oracle._forward_sam_heads,
                vf.permute(1, 2, 0).reshape(b, 256, 64, 64),
                None,
                None,
                hr,
                True,
            ),
            "memory_encoder": partial(
                oracle._encode_new_memory, [vf], [(64, 64)], mask, torch.ones(b, 1), False
            ),
        }
        with torch.inference_mode():
            for name, fn in calls.items():
                oracle.kf_mean = oracle.kf_covariance = None
                oracle.stable_frames = 0
                res.components.setdefault(name, {})[b] = _time(fn, args["repeats"])
    oracle.kf_mean = oracle.kf_covariance = None
    oracle.stable_frames = 0
    frames = _frames(args.get("video"), args["frames"])
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(frames):
            cv2.imwrite(str(Path(tmp) / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        with torch.inference_mode():
            state = oracle.init_state(tmp)
            x, y, w, h = args["box"]
            t0 = time.perf_counter()
            oracle.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=[x, y, x + w, y + h])
            times = []
            for _ in oracle.propagate_in_video(state):
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
    steady = times[args["steady_from"] :]
    res.seconds_per_frame, res.frames_timed = float(np.median(steady)), len(steady)
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _subprocess(side: str, args: dict[str, Any]) -> SideResult:
    cmd = [sys.executable, "-m", "samurai_onnx.compiler.evaluate.bench", side, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        raise RuntimeError(f"the {side} benchmark failed: {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    res = SideResult(
        data["side"],
        seconds_per_frame=data["seconds_per_frame"],
        frames_timed=data["frames_timed"],
        peak_rss_mb=data["peak_rss_mb"],
    )
    res.components = {
        k: {int(b): Timing(**t) for b, t in v.items()} for k, v in data["components"].items()
    }
    return res


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def benchmark(args: dict[str, Any], *, reference: bool = True) -> dict[str, Any]:
    """Both sides, each in a subprocess; returns the JSON-able report."""
    onnx_side = _subprocess("onnx", args)
    torch_side = _subprocess("torch", args) if reference else None
    report: dict[str, Any] = {"machine": machine(), "args": args, "onnx": _as_dict(onnx_side)}
    if torch_side:
        report["pytorch"] = _as_dict(torch_side)
        report["speedup_end_to_end"] = torch_side.seconds_per_frame / onnx_side.seconds_per_frame
    return report


def _as_dict(r: SideResult) -> dict[str, Any]:
    return {
        "side": r.side,
        "components": {
            k: {str(b): t.__dict__ for b, t in v.items()} for k, v in r.components.items()
        },
        "seconds_per_frame": r.seconds_per_frame,
        "frames_timed": r.frames_timed,
        "peak_rss_mb": r.peak_rss_mb,
    }


def to_markdown(report: dict[str, Any]) -> str:
    o, t = report["onnx"], report.get("pytorch")
    lines = [
        f"Machine: {report['machine']}; bundle `{report['args']['bundle']}`, device {report['args']['device']}",
        "",
        "| component | batch | ONNX median s | ONNX p90 s | PyTorch median s | PyTorch p90 s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_b in o["components"].items():
        for b, tim in per_b.items():
            ref = (t or {}).get("components", {}).get(name, {}).get(b)
            ref_s = (
                f"{ref['median']:.3f} | {ref['p90']:.3f} | {ref['median'] / tim['median']:.2f}x"
                if ref
                else "- | - | -"
            )
            lines.append(f"| {name} | {b} | {tim['median']:.3f} | {tim['p90']:.3f} | {ref_s} |")
    lines += [
        "",
        "| end to end (full memory bank) | s / frame | frames timed | peak RSS MB |",
        "|---|---|---|---|",
    ]
    lines.append(
        f"| ONNX Runtime | {o['seconds_per_frame']:.3f} | {o['frames_timed']} | {o['peak_rss_mb']:.0f} |"
    )
    if t:
        lines.append(
            f"| PyTorch reference | {t['seconds_per_frame']:.3f} | {t['frames_timed']} | {t['peak_rss_mb']:.0f} |"
        )
        lines += ["", f"End-to-end speed-up: **{report['speedup_end_to_end']:.2f}x**"]
    return "\n".join(lines)


if __name__ == "__main__":
    side, payload = sys.argv[1], json.loads(sys.argv[2])
    result = run_onnx_side(payload) if side == "onnx" else run_torch_side(payload)
    print(json.dumps(_as_dict(result)))
