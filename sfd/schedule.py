"""The semantic-first time split, written once (paper §3; docs/method.md §3.1, §5.2).

A global time τ runs over [0, 1 + Δt]. The semantic channels see t_sem = min(τ, 1) and the texture channels
t_tex = max(τ − Δt, 0), so semantics lead texture by Δt. Sampling therefore has three phases: semantics only
(τ < Δt), both (Δt ≤ τ ≤ 1) and texture only (τ > 1). With Δt = 0 (or no semantic channels) this is the plain
synchronous model: t_tex = t_sem = τ, no clamping and no masks. The loss, every sampler and the guidance use these
functions; nothing else computes t_tex or t_sem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class TimeSplit:
    delta_t: float = 0.0  # Δt: how far the semantic time leads the texture time
    semantic_chans: int = 0  # the trailing channels of the latent that are semantic

    @classmethod
    def from_config(cls, config) -> "TimeSplit":
        """The split of a config's model (``model.semfirst_delta_t``, ``model.semantic_chans``); the loss, the
        samplers and every script build it here."""
        return cls(config.model.semfirst_delta_t, config.model.semantic_chans)

    @property
    def semantic_first(self) -> bool:
        return self.delta_t > 0 and self.semantic_chans > 0

    @property
    def tau_max(self) -> float:
        """End of the global time: 1 + Δt (1 for the synchronous model)."""
        return 1.0 + self.delta_t if self.semantic_first else 1.0

    def times(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_tex, t_sem) for global times τ. t_tex is not clamped above: dopri5 evaluates past τ_max and the
        release feeds t_tex > 1 there (quirk 11 of docs/method.md §9.2)."""
        if not self.semantic_first:
            return tau, tau
        return (tau - self.delta_t).clamp(min=0.0), tau.clamp(max=1.0)

    def training_tau(self, t: torch.Tensor) -> torch.Tensor:
        """Map a training time t ∈ [0, 1] onto the global time τ = t·(1 + Δt)."""
        return t * (1 + self.delta_t) if self.semantic_first else t

    def per_channel(self, t_tex: torch.Tensor, t_sem: torch.Tensor, num_chans: int) -> torch.Tensor:
        """[B, C, 1, 1] tensor holding t_tex on the texture channels and t_sem on the semantic ones."""
        texture_chans = num_chans - self.semantic_chans
        parts = [t_tex[:, None].expand(-1, texture_chans), t_sem[:, None].expand(-1, self.semantic_chans)]
        return torch.cat(parts, dim=1)[:, :, None, None]

    def active_mask(self, tau: torch.Tensor, num_chans: int) -> Optional[torch.Tensor]:
        """[B, C, 1, 1] 0/1 mask of the channel groups that move at τ; None for the synchronous model.
        Both bounds are inclusive: texture moves for τ ≥ Δt, semantics for τ ≤ 1 (compared in the dtype of τ)."""
        if not self.semantic_first:
            return None
        texture_on = (tau >= self.delta_t).to(tau.dtype)
        semantic_on = (tau <= 1.0).to(tau.dtype)
        return self.per_channel(texture_on, semantic_on, num_chans)

    def grid(self, num_steps: int, shift: float = 0.0, start: float = 0.0) -> torch.Tensor:
        """float32 time grid of ``num_steps`` points from ``start`` to τ_max. A shift s > 0 warps the normalised
        grid u = τ/τ_max to s·u / (1 + (s − 1)·u) (s < 1: denser near noise), as the release does."""
        grid = torch.linspace(start, self.tau_max, num_steps, dtype=torch.float32)
        if shift > 0:
            scaled = grid / self.tau_max if self.semantic_first else grid
            warped = shift * scaled / (1 + (shift - 1) * scaled)
            grid = warped * self.tau_max if self.semantic_first else warped
        return grid

    @property
    def phase_boundaries(self) -> tuple[float, ...]:
        """The global times where the sampling drift jumps (a channel group starts or stops moving): (Δt, 1) for
        the semantic-first model, none for the synchronous one."""
        return (self.delta_t, 1.0) if self.semantic_first else ()

    def phase_grid(self, num_steps: int) -> torch.Tensor:
        """float32 grid of ``num_steps`` points over [0, τ_max] with a point on every phase boundary: the intervals
        are shared out in proportion to each phase's length (at least one each) and are uniform within a phase."""
        edges = [0.0, *self.phase_boundaries, self.tau_max]
        lengths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        intervals = num_steps - 1
        if intervals < len(lengths):
            raise ValueError(f"sample.num_sampling_steps: {num_steps} grid points cannot put a point on both phase "
                             f"boundaries (need at least {len(lengths) + 1})")
        counts = [max(1, round(intervals * length / self.tau_max)) for length in lengths]
        counts[counts.index(max(counts))] += intervals - sum(counts)  # the longest phase absorbs the rounding
        pieces = [torch.linspace(start, end, count + 1, dtype=torch.float64)[:-1]
                  for start, end, count in zip(edges[:-1], edges[1:], counts)]
        return torch.cat([*pieces, torch.tensor([self.tau_max], dtype=torch.float64)]).float()

    def phase_mask(self, phase: int, like: torch.Tensor) -> torch.Tensor:
        """[B, C, 1, 1] 0/1 mask of the groups that move inside phase 0 (semantics only), 1 (both) or 2 (texture
        only), for a state shaped like ``like``: the mask :meth:`active_mask` gives strictly inside the phase, also
        at its edges, so a solver restarted at a boundary sees one smooth drift per phase."""
        batch = like.shape[0]
        texture_on = torch.full((batch,), float(phase > 0), dtype=like.dtype, device=like.device)
        semantic_on = torch.full((batch,), float(phase < 2), dtype=like.dtype, device=like.device)
        return self.per_channel(texture_on, semantic_on, like.shape[1])
