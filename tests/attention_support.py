"""The attention core as a module, and seeded queries, keys and values: what the tests of the
attention lowerings (``tests/test_int8_attention.py``, ``tests/test_blocked_attention.py``)
export and run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from samurai_onnx.compiler.modeling.common import attention


class Attend(torch.nn.Module):
    """``common.attention`` with one lowering, as a module that ``torch.onnx.export`` takes."""

    def __init__(self, lowering: str) -> None:
        super().__init__()
        self.lowering = lowering

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return attention(q, k, v, mask=mask, lowering=self.lowering)


def qkv(seed: int, nk: int = 700, d: int = 64, nq: int = 96) -> tuple[torch.Tensor, ...]:
    """Two objects' single-head queries ``[2, 1, nq, d]``, keys (spread wider, as memories'
    are) and 16-channel values over ``nk`` keys."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 1, nq, d, generator=g)
    k = torch.randn(2, 1, nk, d, generator=g) * 3.0
    v = torch.randn(2, 1, nk, 16, generator=g)
    return q, k, v


def key_mask(keys: int, masked: int = 200) -> torch.Tensor:
    """An additive key mask ``[1, 1, 1, keys]`` that hides the last ``masked`` keys, as a padded
    (static) memory bank's mask does."""
    mask = torch.zeros(1, 1, 1, keys)
    mask[..., -masked:] = -1e4
    return mask


def export_attention(
    lowering: str, args: tuple[torch.Tensor, ...], path: Path, dynamic: bool = False
) -> Path:
    """``Attend(lowering)`` exported at opset 17 with inputs ``q, k, v[, mask]`` and output
    ``o``; ``dynamic``: query and key counts as dynamic axes."""
    names = ["q", "k", "v", "mask"][: len(args)]
    axes = {"q": {2: "queries"}, "k": {2: "keys"}, "v": {2: "keys"}} if dynamic else None
    with torch.no_grad():
        torch.onnx.export(
            Attend(lowering), args, str(path), input_names=names, output_names=["o"],
            opset_version=17, dynamo=False, custom_opsets={"com.microsoft": 1},
            dynamic_axes=axes,
        )  # fmt: skip
    return path


def masked_runs(
    lowering: str, reference: str, path: Path
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``lowering`` with a key mask hiding the last 200 keys: ONNX Runtime's output of its graph
    (exported to ``path``), ``reference``'s eager output, and ``lowering``'s eager output with
    the hidden keys' values set to 1000 (a hidden key must change nothing)."""
    q, k, v = qkv(4)
    mask = key_mask(k.shape[2])
    export_attention(lowering, (q, k, v, mask), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        want = Attend(reference)(q, k, v, mask)
        v_off = v.clone()
        v_off[:, :, -200:] = 1e3
        return got[0], want, Attend(lowering)(q, k, v_off, mask)
