"""DINOv2 through timm: patch features (ViT-B/14 with 4 registers) and the release's two preprocessing paths, and the
CLS feature of the original ViT-L/14 that FD_DINOv2 uses (docs/evaluator.md §13).

SFD reads the final-LayerNormed patch tokens of DINOv2 (CLS and registers dropped): [B, 256, 768] for a 224×224
input. They feed the Semantic VAE (semantic latents) and are the REPA target. Weights come from a local file, in the
official torch.hub layout (``register_tokens``, ``mask_token``, a 1370-position ``pos_embed`` at 518 px) or in
timm's; timm's ``checkpoint_filter_fn`` converts the former (its patch tokens then equal the official
``x_norm_patchtokens`` exactly, docs/environment.md §5). Nothing is downloaded.

The position table is stored for 37×37 patches (518 px) and resampled here, once at load, to the 16×16 grid of a
224-px input exactly as the official model resamples it at run time (:func:`hub_resample_pos_embed`). timm's own
load-time resampling agrees with that for the models with registers only; the original models (ViT-L/14 of
FD_DINOv2) use another rule (docs/evaluator.md §13.3).

The release preprocesses differently in its two pipelines (docs/formats.md §4.2–§4.4), and both are kept,
named after their use:

* ``semvae_training_transform``: PIL image → Resize(256, bicubic, antialias) → CenterCrop(224) → ImageNet
  normalisation. Used to extract the features the SemVAE is trained on.
* ``extraction_preprocess``: the 256×256 ADM crop as a tensor in [-1, 1] → [0, 1] → ImageNet normalisation at 256 px
  → bicubic resize to 224 *without* antialias. Used for the SemVAE latents and REPA targets of the diffusion shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sfd.checkpoint import explain_mismatch, extract_state_dict, read_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_INPUT = 224  # 16×16 patches of 14 px
TIMM_NAMES = {"dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2", "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
              "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2", "dinov2_vitl14": "vit_large_patch14_dinov2"}
# The official models without registers resample their position table by the scale factor (grid + 0.1) / 37 rather
# than to the grid size: a work-around for a floating-point problem of DINO, kept for backward compatibility; the
# models with registers set it to 0 (dinov2 hub/backbones.py, interpolate_offset).
HUB_POS_OFFSET = 0.1


class PatchFeatureEncoder(nn.Module):
    """A timm ViT that returns its normalised patch tokens [B, L, D] (prefix tokens dropped)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def grid(self) -> int:
        return self.vit.patch_embed.grid_size[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: ImageNet-normalised [B, 3, 224, 224]."""
        return self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]

    def class_token(self, images: torch.Tensor) -> torch.Tensor:
        """The final-LayerNormed CLS token [B, D] of ImageNet-normalised ``images``: the official model's default
        output (``x_norm_clstoken``), the feature of FD_DINOv2."""
        return self.vit.forward_features(images)[:, 0]


def build_dinov2(name: str = "dinov2_vitb14_reg", weights: Optional[str | Path] = None) -> PatchFeatureEncoder:
    """DINOv2 at 224 px (eval mode): with registers for SFD's patch features, the original ViT-L/14
    (``dinov2_vitl14``) for FD_DINOv2; weights from a local file in the torch.hub or timm layout."""
    import timm

    if name not in TIMM_NAMES:
        raise ValueError(f"unknown DINOv2 model {name!r}; known: {', '.join(TIMM_NAMES)}")
    vit = timm.create_model(TIMM_NAMES[name], pretrained=False, img_size=DINO_INPUT, num_classes=0)
    encoder = PatchFeatureEncoder(vit).eval()
    if weights is not None:
        load_dinov2_weights(encoder, weights)
    return encoder


def hub_resample_pos_embed(table: torch.Tensor, grid: int, registers: bool) -> torch.Tensor:
    """The patch part of a position table [1, M·M, D] resampled to [1, grid·grid, D] as the official torch.hub model
    does for a grid×grid input (``interpolate_pos_encoding``): bicubic in float32, align_corners False; for models with
    registers to the output size with antialiasing (timm's load-time resampling is the same call), for the original
    models by the scale factor (grid + 0.1)/M without antialiasing. The scale factor, not the size ratio M/grid, sets
    the sampling positions, so the two rules give different tables (docs/evaluator.md §13.3)."""
    side = round(table.shape[1] ** 0.5)
    if side * side != table.shape[1]:
        raise ValueError(f"position table of {table.shape[1]} patches is not a square grid")
    if side == grid:
        return table
    square = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if registers:
        resized = F.interpolate(square, size=(grid, grid), mode="bicubic", antialias=True)
    else:
        scale = float(grid + HUB_POS_OFFSET) / side
        resized = F.interpolate(square, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)


def _positions_for_model(state: dict[str, torch.Tensor], vit: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint with its position table resampled to the model's grid the official way, before timm's
    ``checkpoint_filter_fn`` (which then leaves it alone). Official files keep the CLS position in the table (they have
    a ``mask_token``); timm files do so only for the models without registers (``no_embed_class`` False)."""
    table = state.get("pos_embed")
    prefix = 1 if "mask_token" in state or not vit.no_embed_class else 0
    grid = vit.patch_embed.grid_size[0]
    if table is None or table.shape[1] - prefix == grid * grid:
        return state
    patches = hub_resample_pos_embed(table[:, prefix:], grid, registers=vit.num_reg_tokens > 0)
    return {**state, "pos_embed": torch.cat([table[:, :prefix], patches], dim=1)}


def load_dinov2_weights(encoder: PatchFeatureEncoder, weights: str | Path) -> PatchFeatureEncoder:
    """Load a local checkpoint (torch.hub or timm layout, ``.pth`` or ``.safetensors``) strictly into ``encoder``;
    the position table is resampled to the 16×16 grid as the official model does (:func:`hub_resample_pos_embed`)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DINOv2 weights not found (the official torch.hub file, e.g. "
                                "dinov2_vitb14_reg4_pretrain.pth from https://dl.fbaipublicfiles.com/dinov2/, or "
                                "timm's weights of the same model)")
    state = _positions_for_model(extract_state_dict(read_file(path), path), encoder.vit)
    state = checkpoint_filter_fn(state, encoder.vit)
    problems = explain_mismatch(encoder.vit, state)
    if problems:
        raise ValueError(f"{path}: does not fit the DINOv2 model: " + "; ".join(problems))
    encoder.vit.load_state_dict(state, strict=True)
    return encoder


def tiny_dinov2(embed_dim: int = 32, depth: int = 1, heads: int = 2, seed: int = 0,
                name: str = "dinov2_vitb14_reg") -> PatchFeatureEncoder:
    """A random ViT of the ``name`` architecture (timm's definition, as :func:`build_dinov2` builds it: patch 14,
    LayerScale, registers where the model has them) with a small width and depth, for tests and offline demos: same
    input, same token grid, ``embed_dim`` features."""
    import timm

    if name not in TIMM_NAMES:
        raise ValueError(f"unknown DINOv2 model {name!r}; known: {', '.join(TIMM_NAMES)}")
    torch.manual_seed(seed)
    vit = timm.create_model(TIMM_NAMES[name], pretrained=False, img_size=DINO_INPUT, num_classes=0,
                            embed_dim=embed_dim, depth=depth, num_heads=heads)
    return PatchFeatureEncoder(vit).eval()


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """(x − mean)/std per channel with ImageNet's mean and std, for float images in [0, 1] [B, 3, H, W]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def extraction_preprocess(images: torch.Tensor) -> torch.Tensor:
    """Diffusion-latent path: x ∈ [-1, 1] (the texture VAE's input) → DINOv2 input. Normalise at the input size, then
    resize to 224 with PyTorch bicubic (a = −0.75), align_corners False and no antialias — as the release does."""
    normalised = imagenet_normalise((images + 1) / 2)
    if normalised.shape[-1] == DINO_INPUT and normalised.shape[-2] == DINO_INPUT:
        return normalised
    return F.interpolate(normalised, size=(DINO_INPUT, DINO_INPUT), mode="bicubic", align_corners=False)


def semvae_training_transform():
    """SemVAE-training path for a PIL image: Resize(256, bicubic) → CenterCrop(224) → ToTensor → ImageNet norm."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(DINO_INPUT),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """[B, L, D] row-major tokens → channels-first [B, D, √L, √L] (the shard layout of ``feats_dino``)."""
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
