"""The semantic-first time split, written once (paper §3; docs/method.md §3.1, §3.4, §5.2).

A global time τ runs over [0, τ_max]; each channel group sees its own time, t_sem for the semantic channels and
t_tex for the texture channels, with t_sem ≥ t_tex (semantics lead). The shape of the lead is
``model.semfirst_schedule``; every shape takes the one lead Δt and starts both groups at noise (0) and ends them at
data (1):

* ``constant`` — the release's: τ ∈ [0, 1 + Δt], t_sem = min(τ, 1), t_tex = max(τ − Δt, 0). Three phases:
  semantics only (τ < Δt), both (Δt ≤ τ ≤ 1), texture only (τ > 1).
* ``shrinking`` — semantics ahead early, joint at the end: τ ∈ [0, 1], t_sem = τ, t_tex = max(τ − Δt, 0)/(1 − Δt).
  Two phases: semantics only (τ < Δt), then both, the lead falling linearly from Δt to 0.
* ``smooth`` — no kinks: τ ∈ [0, 1], t_sem = 1 − (1 − τ)^p, t_tex = τ^p with p = 1 − log2(1 − Δt), so the lead is
  Δt at τ = ½. One phase: both groups move throughout (texture starts, and semantics end, at rate 0), so adaptive
  solvers need no restarts.

Sampling integrates dx/dτ = (dt/dτ)·v per group (:meth:`TimeSplit.rates`): 1 or 0 for the constant lead (its phase
masks), 1/(1 − Δt) for the shrinking lead's texture. Training draws t ∈ [0, 1] and uses τ = t·τ_max. With Δt = 0
(or no semantic channels) every shape is the plain synchronous model: t_tex = t_sem = τ, no clamping and no rates.
The loss, every sampler and the guidance use these functions; nothing else computes t_tex or t_sem or branches on the
shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

SCHEDULE_SHAPES = ("constant", "shrinking", "smooth")  # model.semfirst_schedule


@dataclass(frozen=True)
class TimeSplit:
    delta_t: float = 0.0  # Δt: how far the semantic time leads the texture time
    semantic_chans: int = 0  # the trailing channels of the latent that are semantic
    shape: str = "constant"  # the lead's shape over the trajectory, one of SCHEDULE_SHAPES

    def __post_init__(self) -> None:
        if self.shape not in SCHEDULE_SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SCHEDULE_SHAPES)} (got {self.shape!r})")
        if not 0 <= self.delta_t < 1:
            raise ValueError(f"delta_t must be in [0, 1) (got {self.delta_t})")

    @classmethod
    def from_config(cls, config) -> "TimeSplit":
        """The split of a config's model (``model.semfirst_delta_t``, ``model.semantic_chans``,
        ``model.semfirst_schedule``); the loss, the samplers and every script build it here."""
        return cls(config.model.semfirst_delta_t, config.model.semantic_chans, config.model.semfirst_schedule)

    @property
    def semantic_first(self) -> bool:
        return self.delta_t > 0 and self.semantic_chans > 0

    @property
    def tau_max(self) -> float:
        """End of the global time: 1 + Δt for the constant lead, 1 for the other shapes and the synchronous model."""
        return 1.0 + self.delta_t if self.semantic_first and self.shape == "constant" else 1.0

    @property
    def power(self) -> float:
        """The smooth lead's exponent p = 1 − log2(1 − Δt): t_sem − t_tex = 1 − 2·(½)^p = Δt at τ = ½."""
        return 1.0 - math.log2(1.0 - self.delta_t)

    def times(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_tex, t_sem) for global times τ. For the constant and shrinking leads t_tex is not clamped above:
        dopri5 evaluates past τ_max and the release feeds t_tex > 1 there (quirk 11 of docs/method.md §9.2)."""
        if not self.semantic_first:
            return tau, tau
        if self.shape == "constant":
            return (tau - self.delta_t).clamp(min=0.0), tau.clamp(max=1.0)
        if self.shape == "shrinking":
            return (tau - self.delta_t).clamp(min=0.0) / (1.0 - self.delta_t), tau.clamp(max=1.0)
        u = tau.clamp(0.0, 1.0)
        return u ** self.power, 1.0 - (1.0 - u) ** self.power

    def training_tau(self, t: torch.Tensor) -> torch.Tensor:
        """Map a training time t ∈ [0, 1] onto the global time τ = t·τ_max."""
        return t * self.tau_max if self.semantic_first and self.shape == "constant" else t

    def per_channel(self, t_tex: torch.Tensor, t_sem: torch.Tensor, num_chans: int) -> torch.Tensor:
        """[B, C, 1, 1] tensor holding t_tex on the texture channels and t_sem on the semantic ones."""
        texture_chans = num_chans - self.semantic_chans
        parts = [t_tex[:, None].expand(-1, texture_chans), t_sem[:, None].expand(-1, self.semantic_chans)]
        return torch.cat(parts, dim=1)[:, :, None, None]

    def rates(self, tau: torch.Tensor, like: torch.Tensor, phase: Optional[int] = None) -> Optional[torch.Tensor]:
        """[B, C, 1, 1] dt/dτ of each channel group at τ [B], for a state shaped like ``like`` — the factor of the
        velocity in the sampling drift — or None for the synchronous model (both 1). For the constant lead it is the
        0/1 mask of the groups that move (both bounds inclusive: texture for τ ≥ Δt, semantics for τ ≤ 1, compared
        and returned in the dtype of τ). With ``phase`` (0, 1, … between the :attr:`phase_boundaries`), the rates
        strictly inside that phase, in the state's dtype, also at its edges, so that a solver restarted at a
        boundary sees one smooth drift per phase."""
        if not self.semantic_first:
            return None
        num_chans = like.shape[1]
        if self.shape == "smooth":  # one phase; smooth rates, 0 only at the ends
            u = tau.clamp(0.0, 1.0)
            return self.per_channel(self.power * u ** (self.power - 1.0),
                                    self.power * (1.0 - u) ** (self.power - 1.0), num_chans)
        if phase is None:
            texture_on = (tau >= self.delta_t).to(tau.dtype)
            semantic_on = (tau <= 1.0).to(tau.dtype)
        else:  # constant: semantics only, both, texture only; shrinking: semantics only, both
            texture_on = torch.full((like.shape[0],), float(phase > 0), dtype=like.dtype, device=like.device)
            semantic_on = torch.full((like.shape[0],), float(phase < 2), dtype=like.dtype, device=like.device)
        if self.shape == "shrinking":
            texture_on = texture_on / (1.0 - self.delta_t)
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
        """The global times where the sampling drift jumps (a channel group starts or stops moving, or its rate
        changes): (Δt, 1) for the constant lead, (Δt,) for the shrinking one, none for the smooth lead and the
        synchronous model."""
        if not self.semantic_first or self.shape == "smooth":
            return ()
        return (self.delta_t, 1.0) if self.shape == "constant" else (self.delta_t,)

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
