"""Reconstruction metrics of the tokenizers: PSNR and SSIM of the texture VAE, feature MSE and cosine of the SemVAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image PSNR in dB for images [B, C, H, W] on a 0..data_range scale."""
    mse = (reference.double() - reconstruction.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-coords.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return kernel[:, None] * kernel[None, :]


def ssim(reference: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11×11 Gaussian window, σ 1.5, K1 0.01, K2 0.03, valid region, averaged
    over channels) for images [B, C, H, W]."""
    x, y = reference.double(), reconstruction.double()
    channels = x.shape[1]
    window = _gaussian_window().to(x.device).expand(channels, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.pow(2)
    var_y = blur(y * y) - mu_y.pow(2)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return score.flatten(1).mean(1)


def feature_errors(features: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample MSE and mean per-token cosine similarity (over the feature axis) of token maps [B, L, D]."""
    mse = (features.float() - reconstruction.float()).pow(2).flatten(1).mean(1)
    cosine = F.cosine_similarity(features.float(), reconstruction.float(), dim=-1).mean(1)
    return mse, cosine
