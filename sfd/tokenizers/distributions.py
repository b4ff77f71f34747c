"""The diagonal Gaussian posterior shared by the texture VAE and the Semantic VAE.

Same numerics as diffusers' / LDM's ``DiagonalGaussianDistribution``: moments [B, 2C, ...] split along dim 1 into
mean and log-variance, the log-variance clamped to [-30, 20]. Sampling takes an explicit generator, so the latents
a run writes are reproducible (the release draws from the global RNG).
"""

from __future__ import annotations

from typing import Optional

import torch


class DiagonalGaussian:
    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """mean + std·ε with ε from ``generator`` (or the given ``noise``)."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) summed over every non-batch dimension: ½ Σ (mean² + var − 1 − logvar), shape [B]."""
        dims = tuple(range(1, self.mean.dim()))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
