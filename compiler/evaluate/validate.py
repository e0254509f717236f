"""Validate a bundle against SAMURAI's PyTorch code on the same frames: per component and end to end.

Per component, the ONNX graph and the oracle's own modules get the same real inputs (taken from
the clip's first frame): max and mean abs error per output, checked against the tolerance the
bundle declares for its precision. Graphs run on the bundle's own engine (ONNX Runtime, or
OpenVINO for ``engine: openvino`` targets, at the precision it runs at on this machine). End to end, the oracle's video predictor and our tracker run
on the same JPEG frames: per-frame mask IoU, box error, chosen-candidate and memory agreement.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from samurai_onnx.compiler.evaluate.metrics import mask_iou
from samurai_onnx.compiler.evaluate.oracle import ORACLE_CONFIGS, build_oracle, run_oracle
from samurai_onnx.compiler.passes.verify import DISCRETE_FLOORS, bf16_step
from samurai_onnx.runtime.bundle import Bundle, load_bundle
from samurai_onnx.runtime.contract import contract
from samurai_onnx.runtime.engine import Engine, create_engine
from samurai_onnx.runtime.graphs import _pad
from samurai_onnx.runtime.preprocess import mask_to_box, preprocess_frame
from samurai_onnx.runtime.tracker import Tracker, check_box, engine_settings
from samurai_onnx.runtime.video import open_frames


@dataclass
class OutputError:
    max_abs: float
    mean_abs: float


@dataclass
class ComponentReport:
    name: str
    precision: str
    tolerance: float
    outputs: dict[str, OutputError]

    def limit(self, output: str) -> float:
        """The tolerance of ``output`` (discrete outputs have a floor, e.g. 1 px for boxes)."""
        return max(self.tolerance, DISCRETE_FLOORS.get(output, 0.0))

    @property
    def ok(self) -> bool:
        return all(
            math.isfinite(e.max_abs) and e.max_abs <= self.limit(k) for k, e in self.outputs.items()
        )


@dataclass
class FrameReport:
    index: int
    mask_iou: float
    box_error: float  # max abs difference of x, y, w, h in pixels (0 when both absent)
    candidate: int | None
    oracle_candidate: int | None
    memories_agree: bool


@dataclass
class ValidationReport:
    bundle: str
    precision: str
    min_mask_iou: float
    max_box_error: float
    components: list[ComponentReport] = field(default_factory=list)
    frames: list[FrameReport] = field(default_factory=list)
    forms: str = ""  # the form each multi-form graph ran in end to end (Tracker.describe)

    @property
    def ok(self) -> bool:
        frames_ok = all(
            f.mask_iou >= self.min_mask_iou and f.box_error <= self.max_box_error
            for f in self.frames
        )
        return frames_ok and all(c.ok for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        for comp, rep in zip(data["components"], self.components, strict=True):
            comp["ok"] = rep.ok
        return data

    def to_markdown(self) -> str:
        lines = [
            f"### Validation of `{self.bundle}` ({self.precision})",
            "",
            *(
                [f"End to end, graphs with several forms ran as: {self.forms}", ""]
                if self.forms
                else []
            ),
            "| component | output | max abs error | mean abs error | tolerance | ok |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.components:
            for name, e in c.outputs.items():
                ok = "yes" if e.max_abs <= c.limit(name) else "**NO**"
                lines.append(
                    f"| {c.name} | {name} | {e.max_abs:.3g} | {e.mean_abs:.3g} | {c.limit(name):g} | {ok} |"
                )
        lines += [
            "",
            f"| frame | mask IoU (>= {self.min_mask_iou}) | box error px (<= {self.max_box_error:g}) | candidate ours / oracle | memories agree |",
            "|---|---|---|---|---|",
        ]
        for f in self.frames:
            lines.append(
                f"| {f.index} | {f.mask_iou:.4f} | {f.box_error:g} | {f.candidate} / {f.oracle_candidate} | {f.memories_agree} |"
            )
        if self.frames:
            ious = [f.mask_iou for f in self.frames]
            agree = sum(
                f.candidate == f.oracle_candidate
                for f in self.frames
                if f.oracle_candidate is not None
            )
            total = sum(f.oracle_candidate is not None for f in self.frames)
            lines += [
                "",
                f"min IoU {min(ious):.4f}, mean IoU {np.mean(ious):.4f}, candidate agreement {agree}/{total}",
            ]
        lines += ["", f"**{'PASS' if self.ok else 'FAIL'}**"]
        return "\n".join(lines)


def _err(ours: np.ndarray, ref: torch.Tensor | np.ndarray, *, bf16: bool = False) -> OutputError:
    """Max/mean abs difference; for bfloat16-rounded memories, what exceeds one bf16 step."""
    r = ref.detach().float().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    d = np.abs(ours.astype(np.float32) - r.astype(np.float32))
    if bf16:
        d = np.maximum(d - bf16_step(r), 0.0)
    return OutputError(float(d.max()), float(d.mean()))


class _Graphs:
    """Runs a bundle's graphs one call at a time on ``engine`` (the bundle's)."""

    def __init__(self, bundle: Bundle, engine: Engine) -> None:
        self.bundle, self.engine = bundle, engine

    def precision(self, name: str, form: str | None = None) -> str:
        """What ``name`` (in ``form``) runs at here (bf16 for an fp32 graph on OpenVINO with a
        bf16 hint)."""
        info = self.bundle.components[name]
        file_precision = info.alternatives[form].precision if form else info.precision
        return self.engine.run_precision(name, file_precision)

    def run(
        self, name: str, feeds: dict[str, np.ndarray], form: str | None = None
    ) -> dict[str, np.ndarray]:
        engine = self.engine
        spec = contract(
            name, self.bundle.tracker.geometry, static=self.bundle.components[name].static
        )
        out = engine.load(self.bundle.file(name, form), spec).run(feeds)
        return {k: np.array(engine.download(v)) for k, v in out.items()}

    def check(
        self,
        name: str,
        feeds: dict[str, np.ndarray],
        errors: Callable[[dict[str, np.ndarray]], dict[str, OutputError]],
    ) -> tuple[dict[str, np.ndarray], list[ComponentReport]]:
        """Run ``name`` on ``feeds`` in its main form and in each of its other forms; one row
        per form (``name/form``), each measured by ``errors`` against the same reference.

        The main form's outputs are returned: the next graphs' inputs come from them (or from
        the oracle), so every form is checked on the same inputs without a second pass.
        """
        info = self.bundle.components[name]
        out = self.run(name, feeds)
        rows = [ComponentReport(name, self.precision(name), info.tolerance, errors(out))]
        for form in info.alternatives:
            rows.append(
                ComponentReport(
                    f"{name}/{form}",
                    self.precision(name, form),
                    info.tolerance,
                    errors(self.run(name, feeds, form)),
                )
            )
        return out, rows


def _component_reports(
    graphs: _Graphs, oracle: Any, frame: np.ndarray, box: tuple[float, ...]
) -> list[ComponentReport]:
    bundle = graphs.bundle
    s = bundle.tracker
    geo = s.geometry
    reports: list[ComponentReport] = []

    def check(
        name: str,
        feeds: dict[str, np.ndarray],
        errors: Callable[[dict[str, np.ndarray]], dict[str, OutputError]],
    ) -> dict[str, np.ndarray]:
        out, rows = graphs.check(name, feeds, errors)
        reports.extend(rows)
        return out

    image = preprocess_frame(frame, s.image_size, s.image_mean, s.image_std)
    if "preprocess" in bundle.components:  # in-graph preprocessing vs SAM 2's PIL loader
        check("preprocess", {"frame": frame}, lambda o: {"image": _err(o["image"], image)})
    with torch.inference_mode():
        backbone = oracle.forward_image(torch.from_numpy(image))
    fpn, pos = backbone["backbone_fpn"], backbone["vision_pos_enc"]
    check(
        "image_encoder",
        {"image": image},
        lambda o: {
            "high_res_feat_s0": _err(o["high_res_feat_s0"], fpn[0]),
            "high_res_feat_s1": _err(o["high_res_feat_s1"], fpn[1]),
            "vision_features": _err(o["vision_features"], fpn[2]),
            "vision_pos_enc": _err(o["vision_pos_enc"], pos[2]),
        },
    )
    # The same inputs for both from here on: the oracle's features.
    vf, vpos, s0, s1 = fpn[2], pos[2], fpn[0], fpn[1]
    h, w = frame.shape[:2]
    x, y, bw, bh = box
    coords = (
        torch.tensor([[[x, y], [x + bw, y + bh]]], dtype=torch.float32)
        / torch.tensor([w, h], dtype=torch.float32)
        * float(s.image_size)
    )
    labels = torch.tensor([[2, 3]], dtype=torch.int32)
    with torch.inference_mode():
        embed = vf + oracle.no_mem_embed.reshape(1, -1, 1, 1)
        sparse, dense = oracle.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        masks, iou, tokens, score = oracle.sam_mask_decoder.predict_masks(
            image_embeddings=embed,
            image_pe=oracle.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[s0, s1],
        )
        appearing = score > oracle.min_obj_score_logits
        masks = torch.where(appearing[:, :, None, None], masks, torch.tensor(-1024.0))
        lam = appearing.float()[:, :, None]
        ptr = lam * oracle.obj_ptr_proj(tokens) + (1 - lam) * oracle.no_obj_ptr
    low = s.low_res_mask_size
    dec = check(
        "mask_decoder",
        {
            "image_embed": vf.numpy(),
            "add_no_mem_embed": np.ones(1, np.float32),
            "high_res_feat_s0": s0.numpy(),
            "high_res_feat_s1": s1.numpy(),
            "point_coords": coords.numpy(),
            "point_labels": labels.numpy().astype(np.float32),
            "mask_input": np.zeros((1, 1, low, low), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        },
        lambda o: {
            "masks": _err(o["masks"], masks),
            "iou_predictions": _err(o["iou_predictions"], iou),
            "object_score_logits": _err(o["object_score_logits"], score),
            "obj_ptr": _err(o["obj_ptr"], ptr),
        },
    )
    mask_low = masks[:, 3:4]
    with torch.inference_mode():
        high = F.interpolate(
            mask_low, size=(s.image_size, s.image_size), mode="bilinear", align_corners=False
        )
        feats_seq = [t.flatten(2).permute(2, 0, 1) for t in (vf,)]
        mem, mem_pos = oracle._encode_new_memory(
            current_vision_feats=feats_seq,
            feat_sizes=[(s.feat_size, s.feat_size)],
            pred_masks_high_res=high,
            object_score_logits=score,
            is_mask_from_pts=False,
        )
        if s.memory_bf16:  # as the video predictor stores it
            mem = mem.to(torch.bfloat16).float()
    slots, ptr_slots = geo.memory_slots, geo.pointer_slots
    check(
        "memory_encoder",
        {
            "vision_features": vf.numpy(),
            "masks": masks.numpy(),
            "candidate": np.array([3], np.int64),
            "object_score_logits": score.numpy(),
            "binarize": np.zeros(1, np.float32),
            "obj_ptr": dec["obj_ptr"],
            "ptr_candidate": np.array([3], np.int64),
            "memory_pool": np.zeros((slots, s.mem_dim, s.feat_size, s.feat_size), np.float32),
            "memory_slot": np.array([1], np.int64),
            "ptr_pool": np.zeros((ptr_slots, s.d_model), np.float32),
            "ptr_slot": np.array([2], np.int64),
        },
        lambda o: {
            "memory_pool_out": _err(o["memory_pool_out"][1:2], mem, bf16=s.memory_bf16),
            "ptr_pool_out": _err(o["ptr_pool_out"][2:3], ptr[:, 3]),
        },
    )
    reports += _memory_attention_reports(graphs, oracle, vf, vpos, mem, mem_pos[-1], ptr[:, 3])
    if "postprocess" in bundle.components:
        reports.append(_postprocess_report(graphs, masks[0, 3].numpy(), (w, h)))
    return reports


def _postprocess_report(
    graphs: _Graphs, low_res: np.ndarray, size: tuple[int, int]
) -> ComponentReport:
    """In-graph mask upsampling and box vs the host's (SAM 2's interpolation, SAMURAI's box):
    the share of pixels that differ and the box error in pixels."""
    from samurai_onnx.runtime.preprocess import upsample_mask_logits

    w, h = size
    bundle = graphs.bundle
    out = graphs.run(
        "postprocess",
        {"mask_logits": low_res[None, None].astype(np.float32), "video_size": np.array([h, w])},
    )
    want = upsample_mask_logits(low_res, (h, w)) > 0
    got = out["video_masks"][0]
    differ = float(np.mean(got != want))
    ref_box = mask_to_box(want)
    x0, y0, x1, y1 = (int(v) for v in out["video_boxes"][0])
    ours = None if x0 < 0 else (x0, y0, x1 - x0, y1 - y0)
    box_err = (
        0.0
        if ours == ref_box
        else (float(np.abs(np.subtract(ours, ref_box)).max()) if ours and ref_box else float("inf"))
    )
    info = bundle.components["postprocess"]
    return ComponentReport(
        "postprocess",
        graphs.precision("postprocess"),
        info.tolerance,
        {"video_masks": OutputError(differ, differ), "video_boxes": OutputError(box_err, box_err)},
    )


def _memory_attention_reports(
    graphs: _Graphs,
    oracle: Any,
    vf: torch.Tensor,
    vpos: torch.Tensor,
    mem: torch.Tensor,
    mem_pos: torch.Tensor,
    ptr: torch.Tensor,
) -> list[ComponentReport]:
    """Three memories (the encoded first frame at three temporal positions, perturbed) and five
    pointers, laid out for the oracle the way ``_prepare_memory_conditioned_features`` does, and
    put in pool slots (out of order) for the graph."""
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    bundle = graphs.bundle
    s = bundle.tracker
    geo = s.geometry
    g = torch.Generator().manual_seed(0)
    n, p = 3, 5
    mems = torch.stack([mem[0] + 0.1 * torch.randn(mem[0].shape, generator=g) for _ in range(n)])
    tpos = torch.tensor([6, 1, 0])
    ptrs = ptr.expand(p, -1) + 0.1 * torch.randn(p, ptr.shape[-1], generator=g)
    offsets = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0]) / (s.max_obj_ptrs_in_encoder - 1)
    with torch.inference_mode():
        memory = torch.cat([m.flatten(1).T[:, None] for m in mems])
        pos = torch.cat(
            [
                mem_pos[0].flatten(1).T[:, None] + oracle.maskmem_tpos_enc[i].reshape(1, 1, -1)
                for i in tpos
            ]
        )
        split = s.d_model // s.mem_dim
        ptr_tok = ptrs[:, None].reshape(p, 1, split, s.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        ptr_pos = oracle.obj_ptr_tpos_proj(get_1d_sine_pe(offsets, dim=s.d_model))
        ptr_pos = ptr_pos[:, None].expand(-1, 1, -1).repeat_interleave(split, dim=0)
        out = oracle.memory_attention(
            curr=[vf.flatten(2).permute(2, 0, 1)],
            curr_pos=[vpos.flatten(2).permute(2, 0, 1)],
            memory=torch.cat([memory, ptr_tok]),
            memory_pos=torch.cat([pos, ptr_pos]),
            num_obj_ptr_tokens=p * split,
        )
        ref = out.permute(1, 2, 0).reshape(vf.shape)
    mem_slots = np.array([[4, 0, 2]])  # any slots: the graph gathers them in this order
    ptr_slots = np.array([[9, 3, 0, 15, 7]])
    pool = np.zeros((geo.memory_slots, s.mem_dim, s.feat_size, s.feat_size), np.float32)
    pool[mem_slots[0]] = mems.numpy()
    ptr_pool = np.zeros((geo.pointer_slots, s.d_model), np.float32)
    ptr_pool[ptr_slots[0]] = ptrs.numpy()
    index, tpos_index = mem_slots.astype(np.int64), tpos.numpy()[None].astype(np.int64)
    ptr_index, ptr_offsets = ptr_slots.astype(np.int64), offsets.numpy()[None]
    feeds = {
        "vision_features": vf.numpy(),
        "vision_pos_enc": vpos.numpy(),
        "memory_pool": pool,
        "ptr_pool": ptr_pool,
    }
    info = bundle.components["memory_attention"]
    if info.static:
        index, feeds["memory_valid"] = _pad(index, geo.memory_slots)
        tpos_index, _ = _pad(tpos_index, geo.memory_slots)
        ptr_index, feeds["ptr_valid"] = _pad(ptr_index, geo.pointer_slots)
        ptr_offsets, _ = _pad(ptr_offsets, geo.pointer_slots)
    feeds.update(
        memory_index=index,
        memory_tpos_index=tpos_index,
        ptr_index=ptr_index,
        ptr_offsets=ptr_offsets.astype(np.float32),
    )
    _, rows = graphs.check(
        "memory_attention",
        feeds,
        lambda o: {"conditioned_features": _err(o["conditioned_features"], ref)},
    )
    return rows


def validate(
    bundle_dir: str | Path,
    video: str | Path,
    box: tuple[float, float, float, float],
    *,
    checkpoint: Path,
    size: str | None = None,
    frames: int = 8,
    overrides: dict[str, Any] | None = None,
    processing: str | None = None,
    forms: str = "fastest",
) -> ValidationReport:
    """Run the oracle and the bundle on the first ``frames`` frames of ``video``.

    ``processing`` and ``forms`` are the tracker's (see ``Tracker``); every form of a graph
    that has several is checked against the oracle's module (rows ``graph/form``).
    """
    bundle = load_bundle(bundle_dir)
    size = size or bundle.model_name
    if size not in ORACLE_CONFIGS:
        raise ValueError(f"unknown model size {size!r}; use one of {', '.join(ORACLE_CONFIGS)}")
    graphs = _Graphs(bundle, create_engine(engine_settings(bundle, None, None)))
    precisions = sorted({graphs.precision(c) for c in bundle.components})
    all_fp32 = precisions == ["fp32"]
    report = ValidationReport(
        bundle=str(bundle_dir),
        precision="+".join(precisions),
        min_mask_iou=0.99 if all_fp32 else 0.95,
        max_box_error=1.0 if all_fp32 else 8.0,
    )
    clip: list[np.ndarray] = []
    with open_frames(video) as src:
        for f in src:
            clip.append(f)
            if len(clip) == frames:
                break
    if not clip:
        raise ValueError(f"{video} has no frames")
    height, width = clip[0].shape[:2]
    box = check_box(box, width, height)
    overrides = dict(overrides or {})
    # SAM 2's modules follow model.image_size as the compiler's do: the oracle of a bundle made
    # for another input size (scripts/small_manifest.py) is SAMURAI's code built at that size
    image_size = bundle.tracker.image_size
    oracle = build_oracle(
        size, checkpoint, {**overrides, "fill_hole_area": 0, "image_size": image_size}
    )
    report.components = _component_reports(graphs, oracle, clip[0], box)
    with tempfile.TemporaryDirectory(prefix="samurai-validate-") as tmp:
        import cv2

        for i, f in enumerate(clip):
            cv2.imwrite(
                str(Path(tmp) / f"{i:05d}.jpg"),
                cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
        expected = list(run_oracle(oracle, Path(tmp), box, max_frames=len(clip)))
        tracker = Tracker(
            bundle,
            fill_hole_area=0,
            num_frames=len(clip),
            overrides=overrides,
            processing=processing,
            forms=forms,
        )
        report.forms = tracker.graphs.describe_forms()
        for res, ref in zip(tracker.track(tmp, box), expected, strict=False):
            ours, info = res.objects[0], tracker.states[0].last
            iou = mask_iou(ours.mask, ref.mask)
            b_ref = mask_to_box(ref.mask)
            if ours.box is None and b_ref is None:
                err = 0.0
            elif ours.box is None or b_ref is None:
                err = float("inf")
            else:
                err = float(np.abs(np.subtract(ours.box, b_ref)).max())
            report.frames.append(
                FrameReport(
                    res.index,
                    iou,
                    err,
                    info.candidate if info and res.index else None,
                    ref.candidate,
                    bool(info and info.memory_frames == ref.memory_frames),
                )
            )
    return report
