"""DINOv2 patch features (ViT-B/14 with 4 registers) through timm, and the release's two preprocessing paths.

SFD reads the final-LayerNormed patch tokens of DINOv2 (CLS and registers dropped): [B, 256, 768] for a 224×224
input. They feed the Semantic VAE (semantic latents) and are the REPA target. Weights come from a local file, in the
official torch.hub layout (``register_tokens``, ``mask_token``, a 1370-position ``pos_embed`` at 518 px) or in
timm's; timm's ``checkpoint_filter_fn`` converts the former (its patch tokens then equal the official
``x_norm_patchtokens`` exactly, docs/environment.md §5). Nothing is downloaded.

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_INPUT = 224  # 16×16 patches of 14 px
TIMM_NAMES = {"dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2", "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
              "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2"}


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


def build_dinov2(name: str = "dinov2_vitb14_reg", weights: Optional[str | Path] = None) -> PatchFeatureEncoder:
    """DINOv2 with registers at 224 px (eval mode), weights from a local file in the torch.hub or timm layout."""
    import timm

    if name not in TIMM_NAMES:
        raise ValueError(f"unknown DINOv2 model {name!r}; known: {', '.join(TIMM_NAMES)}")
    vit = timm.create_model(TIMM_NAMES[name], pretrained=False, img_size=DINO_INPUT, num_classes=0)
    encoder = PatchFeatureEncoder(vit).eval()
    if weights is not None:
        load_dinov2_weights(encoder, weights)
    return encoder


def load_dinov2_weights(encoder: PatchFeatureEncoder, weights: str | Path) -> PatchFeatureEncoder:
    """Load a local checkpoint (torch.hub or timm layout; the position table is resampled to the 16×16 grid the
    way timm converts DINOv2 checkpoints) strictly into ``encoder``."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DINOv2 weights not found (download dinov2_vitb14_reg4_pretrain.pth from "
                                "the DINOv2 release, or timm's vit_base_patch14_reg4_dinov2 weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint_filter_fn(state, encoder.vit)
    problems = encoder.vit.load_state_dict(state, strict=False)
    if problems.missing_keys or problems.unexpected_keys:
        raise ValueError(f"{path}: does not fit the DINOv2 model: missing {problems.missing_keys[:6]}, "
                         f"unexpected {problems.unexpected_keys[:6]}")
    return encoder


def tiny_dinov2(embed_dim: int = 32, depth: int = 1, heads: int = 2, seed: int = 0) -> PatchFeatureEncoder:
    """A random ViT with DINOv2-with-registers structure (patch 14, 4 registers, LayerScale) and a small width, for
    tests and offline demos: same input, same token grid, ``embed_dim`` features."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=DINO_INPUT, patch_size=14, embed_dim=embed_dim, depth=depth, num_heads=heads,
                            reg_tokens=4, no_embed_class=True, init_values=1e-5, num_classes=0)
    return PatchFeatureEncoder(vit).eval()


def extraction_preprocess(images: torch.Tensor) -> torch.Tensor:
    """Diffusion-latent path: x ∈ [-1, 1] (the texture VAE's input) → DINOv2 input. Normalise at the input size, then
    resize to 224 with PyTorch bicubic (a = −0.75), align_corners False and no antialias — as the release does."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    normalised = ((images + 1) / 2 - mean) / std
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
