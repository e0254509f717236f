"""SAM 2.1's mask decoder and the factory that builds both SAM heads from a ``SAM2Config``.

Export-first rewrite of ``sam2/modeling/sam/mask_decoder.py``. ``forward`` is the oracle's
``predict_masks`` with ``repeat_image=False``: it returns all four masks, IoU scores and mask
tokens. Choosing the single mask, the multimask outputs, the stability fallback or SAMURAI's
motion-aware candidate is data-dependent selection, and it lives outside this module (in the
graph wrappers or the runtime), so that this graph has no branches at all.

``conv_s0``/``conv_s1`` are kept as attributes (their weights are ``sam_mask_decoder.*`` keys) but
are not applied here: SAM 2 applies them to the backbone's high-resolution features once per
frame, so the export puts them in the image-encoder graph and this ``forward`` takes the
projected ``high_res_feat_s0``/``high_res_feat_s1`` directly.
"""

from __future__ import annotations

import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import MLP, LayerNorm2d
from samurai_onnx.compiler.modeling.config import SAM2Config
from samurai_onnx.compiler.modeling.prompt_encoder import PromptEncoder
from samurai_onnx.compiler.modeling.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predict mask logits, IoU scores, mask tokens and an object score from SAM tokens.

    The defaults are SAM 2.1's (as configured by SAMURAI); the flags are construction-time
    constants, so the branches they select are fixed before tracing. The ``dynamic_multimask_*``
    settings are not used by ``forward``; they are kept so that the code doing the selection
    outside reads them from one place.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(
                input_dim=transformer_dim,
                hidden_dim=transformer_dim,
                output_dim=transformer_dim // 8,
                num_layers=3,
            )
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            input_dim=transformer_dim,
            hidden_dim=iou_head_hidden_dim,
            output_dim=self.num_mask_tokens,
            num_layers=iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head: nn.Module
            if pred_obj_scores_mlp:
                self.pred_obj_score_head = MLP(
                    input_dim=transformer_dim,
                    hidden_dim=transformer_dim,
                    output_dim=1,
                    num_layers=3,
                )
            else:
                self.pred_obj_score_head = nn.Linear(transformer_dim, 1)

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_feat_s0: torch.Tensor | None = None,
        high_res_feat_s1: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All mask candidates for one prompt set per image (``predict_masks``).

        Args:
            image_embeddings: ``[B, C, H, W]`` (64x64 for 1024-pixel inputs).
            image_pe: ``[1, C, H, W]`` from ``PromptEncoder.get_dense_pe()``.
            sparse_prompt_embeddings: ``[B, N, C]``.
            dense_prompt_embeddings: ``[B, C, H, W]``.
            high_res_feat_s0: ``[B, C/8, 4H, 4W]``, already projected by ``conv_s0``.
            high_res_feat_s1: ``[B, C/4, 2H, 2W]``, already projected by ``conv_s1``.

        Returns:
            ``masks [B, M, 4H, 4W]``, ``iou_pred [B, M]``, ``mask_tokens_out [B, M, C]`` and
            ``object_score_logits [B, 1]``, with ``M = num_multimask_outputs + 1`` (index 0 is
            the single-mask output).
        """
        if self.pred_obj_scores:
            output_tokens = torch.cat(
                [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight],
                dim=0,
            )
            s = 1
        else:
            output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
            s = 0
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        src = image_embeddings + dense_prompt_embeddings
        b, c, h, w = src.shape
        # image_pe keeps batch 1: the transformer broadcasts it instead of repeating it.
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens, :]

        src = keys.transpose(1, 2).reshape(b, c, h, w)
        if self.use_high_res_features:
            if high_res_feat_s0 is None or high_res_feat_s1 is None:
                raise ValueError("use_high_res_features needs high_res_feat_s0 and _s1")
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            upscaled = act1(ln1(dc1(src) + high_res_feat_s1))
            upscaled = act2(dc2(upscaled) + high_res_feat_s0)
        else:
            upscaled = self.output_upscaling(src)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        ub, uc, uh, uw = upscaled.shape
        masks = torch.matmul(hyper_in, upscaled.reshape(ub, uc, uh * uw)).reshape(ub, -1, uh, uw)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            # The oracle's default: assume the object is present (sigmoid(10) ~ 1).
            object_score_logits = 10.0 * torch.ones_like(iou_pred[:, :1])
        return masks, iou_pred, mask_tokens_out, object_score_logits


def build_sam_heads(cfg: SAM2Config) -> tuple[PromptEncoder, MaskDecoder]:
    """The prompt encoder and mask decoder as ``SAM2Base._build_sam_heads`` builds them."""
    feat = cfg.feat_size
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.d_model,
        image_embedding_size=(feat, feat),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=cfg.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=cfg.d_model,
        transformer=TwoWayTransformer(
            depth=cfg.two_way_depth,
            embedding_dim=cfg.d_model,
            mlp_dim=cfg.two_way_mlp_dim,
            num_heads=cfg.two_way_num_heads,
        ),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
    )
    return prompt_encoder, mask_decoder
