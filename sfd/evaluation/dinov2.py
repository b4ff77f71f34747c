"""The feature network of FD_DINOv2: DINOv2 ViT-L/14 with the preprocessing of Stein et al. 2023 as EDM2 runs it.

docs/evaluator.md §13: uint8 RGB images [N, 3, H, W] → float32 → bicubic resize to 224×224 with antialiasing, on
the 0..255 values (EDM2's default ``torch`` resize) → /255 → ImageNet mean and std → the original DINOv2 ViT-L/14 (no
registers) → its final-LayerNormed CLS token [N, 1024], float32. The network is built through timm by
:mod:`sfd.tokenizers.dinov2` (the loader SFD's own DINOv2 features use), with the position table resampled as the
official model does at 224 px (docs/evaluator.md §13.3). Weights are read from a local file only: the official
torch.hub file ``dinov2_vitl14_pretrain.pth`` or timm's weights of the same model; nothing is downloaded.

:class:`DINOv2Features` is a plain callable on uint8 images, so code other than the evaluator (scores during
training) can use it; ``sfd.evaluation.adm.fd_dinov2`` computes the distance between two image sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sfd.checkpoint import CheckpointError
from sfd.evaluation.inception import check_images
from sfd.files import file_sha256, local_file
from sfd.tokenizers.dinov2 import (
    DINO_INPUT,
    PatchFeatureEncoder,
    build_dinov2,
    imagenet_normalise,
    load_dinov2_weights,
)

MODEL = "dinov2_vitl14"
FEATURE_DIM = 1024
WEIGHTS_FILE = "dinov2_vitl14_pretrain.pth"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
WEIGHTS_ENV = "DINOV2_WEIGHTS"


class DINOv2WeightsError(CheckpointError):
    """The DINOv2 weights are missing or do not fit ViT-L/14; the message says what to do."""


def fd_dinov2_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [N, 3, H, W] → the network's input [N, 3, 224, 224], float32 (docs/evaluator.md §13.2): PyTorch
    bicubic (a = −0.75, align_corners False) with antialiasing on the 0..255 values, without clamping the overshoot;
    then /255 and ImageNet normalisation. The resize always runs, as in EDM2 (at 224 px it is the identity)."""
    check_images(images, network="DINOv2")
    resized = F.interpolate(images.float(), size=(DINO_INPUT, DINO_INPUT), mode="bicubic", antialias=True)
    return imagenet_normalise(resized / 255)


class DINOv2Features(nn.Module):
    """uint8 RGB images [N, 3, H, W] → FD_DINOv2 features [N, D] (float32; D = 1024 for ViT-L/14): the
    final-LayerNormed CLS token of the preprocessed images."""

    def __init__(self, encoder: PatchFeatureEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def feature_dim(self) -> int:
        return self.encoder.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.class_token(fd_dinov2_preprocess(images)).float()


def _missing_weights_message(detail: str) -> str:
    return (f"DINOv2 weights not found ({detail}): pass --dinov2-weights PATH or set {WEIGHTS_ENV} to a local copy of "
            f"{WEIGHTS_FILE} (the official torch.hub file, or timm's vit_large_patch14_dinov2.lvd142m weights), "
            f"downloaded by you from {WEIGHTS_URL}; this project never downloads it")


def resolve_dinov2_weights(path: Optional[str | Path] = None) -> Path:
    """The weights file: the explicit ``path``, else ``$DINOV2_WEIGHTS``; must exist (the Inception's offline rule,
    docs/evaluator.md §9.2)."""
    return local_file(path, WEIGHTS_ENV, lambda detail: DINOv2WeightsError(_missing_weights_message(detail)))


def load_dinov2_features(path: Optional[str | Path] = None, device: str | torch.device = "cpu",
                         encoder: Optional[PatchFeatureEncoder] = None) -> tuple[DINOv2Features, str]:
    """The FD_DINOv2 network from a local weights file (torch.hub or timm layout, loaded strictly), in eval mode on
    ``device``, with the file's SHA-256 (the network's identity, which keys the reference activation cache).
    ``encoder`` receives the weights (default: ViT-L/14 from :func:`~sfd.tokenizers.dinov2.build_dinov2`; tests pass a
    small model of the same architecture)."""
    chosen = resolve_dinov2_weights(path)
    digest = file_sha256(chosen)
    try:
        encoder = load_dinov2_weights(encoder if encoder is not None else build_dinov2(MODEL), chosen)
    except ValueError as error:  # unreadable, or its tensors do not fit (CheckpointError is a ValueError)
        raise DINOv2WeightsError(f"{error}; expected {WEIGHTS_FILE} from {WEIGHTS_URL}") from None
    return DINOv2Features(encoder).to(device).eval().requires_grad_(False), digest
