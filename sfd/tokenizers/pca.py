"""ReDi-style semantic channels: a PCA of DINOv2 patch features instead of a Semantic VAE.

ReDi (Kouzelis et al. 2025) represents semantics by the first principal components of the DINOv2 patch tokens (8 in
ReDi). The SFD paper applies semantic-first denoising on top of it. Here a PCA is fitted on a sample of patch tokens,
saved as safetensors, and used by extraction in place of the SemVAE: same shard keys (``latents_sv``), same
statistics files, so the trainer and the sampler do not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sfd.files import atomic_path


class Projection:
    """A deterministic "posterior": the PCA coefficients, with the sampling interface of DiagonalGaussian."""

    def __init__(self, mean: torch.Tensor) -> None:
        self.mean = mean

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class PCAProjector(nn.Module):
    """tokens [B, L, D] → the first ``k`` principal-component coefficients as a channels-first map [B, k, √L, √L]."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, explained_variance: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())  # [D]
        self.register_buffer("components", components.float().contiguous())  # [k, D], orthonormal rows
        self.register_buffer("explained_variance", explained_variance.float())  # [k], descending

    @property
    def num_components(self) -> int:
        return self.components.shape[0]

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        coefficients = (tokens.float() - self.mean) @ self.components.T  # [B, L, k]
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
        return coefficients.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    def reconstruct(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Map [B, k, h, w] back to tokens [B, h·w, D] (the best rank-k approximation of the features)."""
        return coefficients.flatten(2).transpose(1, 2) @ self.components + self.mean

    def posterior(self, tokens: torch.Tensor) -> Projection:
        """The extraction interface of the SemVAE (``posterior(tokens).sample(noise=...)``), without noise."""
        return Projection(self.project(tokens))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"mean": self.mean, "components": self.components,
                       "explained_variance": self.explained_variance}, str(tmp))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PCAProjector":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: PCA file not found (fit one with scripts/fit_pca.py)")
        with safe_open(str(path), framework="pt") as handle:
            missing = {"mean", "components", "explained_variance"} - set(handle.keys())
            if missing:
                raise KeyError(f"{path}: missing {', '.join(sorted(missing))}")
            return cls(handle.get_tensor("mean"), handle.get_tensor("components"),
                       handle.get_tensor("explained_variance")).eval()


def fit_pca(batches: Iterable[torch.Tensor], num_components: int = 8) -> PCAProjector:
    """PCA of every token in ``batches`` ([B, L, D] each), accumulated in float64 (mean and covariance), so any
    number of features fits in memory. Components are the eigenvectors of the covariance in descending order of
    eigenvalue, each with its largest-magnitude entry positive (a deterministic sign)."""
    total, sum_, outer = 0, None, None
    for batch in batches:
        tokens = batch.reshape(-1, batch.shape[-1]).double()
        sum_ = tokens.sum(0) if sum_ is None else sum_ + tokens.sum(0)
        outer = tokens.T @ tokens if outer is None else outer + tokens.T @ tokens
        total += len(tokens)
    if total < 2:
        raise ValueError("fit_pca needs at least two feature tokens")
    mean = sum_ / total
    covariance = (outer - total * torch.outer(mean, mean)) / (total - 1)
    if not 0 < num_components <= covariance.shape[0]:
        raise ValueError(f"num_components must be in [1, {covariance.shape[0]}] (got {num_components})")
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    order = torch.argsort(eigenvalues, descending=True)[:num_components]
    components = eigenvectors[:, order].T  # [k, D]
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    return PCAProjector(mean, components * signs, eigenvalues[order].clamp(min=0))
