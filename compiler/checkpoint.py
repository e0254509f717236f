"""Official SAM 2.1 checkpoints: find, download, verify and load them; make random ones for tests.

(The loading half of this module is completed in a later step.)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

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
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in template.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        shape = value.shape
        if any(m in key for m in _EMBEDDING_MARKERS):
            new = torch.randn(shape, generator=gen) * 0.02
        elif value.ndim >= 2 and "positional_encoding_gaussian_matrix" not in key:
            fan_in = max(1, value[0].numel())
            new = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        elif key.endswith("bias"):
            new = torch.randn(shape, generator=gen) * 0.02
        elif value.ndim == 1 and key.endswith("weight"):
            new = 1.0 + 0.1 * torch.randn(shape, generator=gen)  # norm scales, layer scales
        else:
            new = torch.randn(shape, generator=gen)
        out[key] = new.to(value.dtype)
    return out


def save_official_format(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Save as the official files are saved: ``torch.save({"model": state_dict}, path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict}, path)
    return path
