"""Guidance as one function: classifier-free guidance and AutoGuidance with per-group scales.

Both extrapolate from a reference prediction towards the conditional one, g = ref + w·(cond − ref), separately
for the texture and the semantic channels (docs/method.md §6):

* CFG: ref is the same model with the null label (one doubled batch);
* AutoGuidance (Karras et al. 2024): ref is a smaller, weaker model conditioned on the *same* label.

A guidance interval keeps a group unguided (g = cond) while its own time is below ``interval_start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from sfd.config import SampleConfig, SFDConfig


def guidance_on(sample: SampleConfig) -> bool:
    """The release samples with guidance only when ``sample.cfg_scale`` > 1 (CFG and AutoGuidance alike)."""
    return sample.cfg_scale > 1.0


def guidance_scales(sample: SampleConfig, autoguidance: bool) -> tuple[float, float]:
    """(texture, semantic) scales. ``cfg_scale_tex`` / ``cfg_scale_sem`` default to ``cfg_scale`` and, as in the
    release, apply only with AutoGuidance; CFG uses ``cfg_scale`` for both groups."""
    if not autoguidance:
        return sample.cfg_scale, sample.cfg_scale
    return (sample.cfg_scale if sample.cfg_scale_tex is None else sample.cfg_scale_tex,
            sample.cfg_scale if sample.cfg_scale_sem is None else sample.cfg_scale_sem)


@dataclass
class Guidance:
    scale_tex: float = 1.0  # w for the texture channels
    scale_sem: float = 1.0  # w for the semantic channels
    guide: Optional[nn.Module] = None  # AutoGuidance reference model; None means CFG with the null label
    interval_start: float = 0.0  # a group is guided only while its time is >= this
    interval_mode: str = "both"  # which groups the interval applies to: both | tex | sem
    # Official quirk (docs/method.md §6.3): the interval test reads batch element 0 for the whole batch. In sampling
    # every element shares τ, so this only matters for callers that mix times in one batch.
    interval_from_first_element: bool = False

    @classmethod
    def from_config(cls, config: SFDConfig, guide: Optional[nn.Module] = None) -> Optional["Guidance"]:
        """The release's rules (:func:`guidance_on`, :func:`guidance_scales`); None when the plain conditional
        model is to be used."""
        if not guidance_on(config.sample):
            return None
        scale_tex, scale_sem = guidance_scales(config.sample, autoguidance=guide is not None)
        return cls(scale_tex=scale_tex, scale_sem=scale_sem, guide=guide,
                   interval_start=config.sample.cfg_interval_start,
                   interval_mode=config.model.semfirst_infer_interval_mode or "both")

    @property
    def is_identity(self) -> bool:
        """Both scales 1: the guided velocity is the conditional one, so no reference prediction is needed."""
        return self.scale_tex == 1.0 and self.scale_sem == 1.0

    def __post_init__(self) -> None:
        if self.interval_mode not in ("both", "tex", "sem"):
            raise ValueError(f"interval_mode must be both, tex or sem (got {self.interval_mode!r})")


def _outside_interval(t: torch.Tensor, guidance: Guidance, applies: bool) -> Optional[torch.Tensor]:
    """[B, 1, 1, 1] bool: True where the group must stay unguided (its time is before the interval)."""
    if not applies or guidance.interval_start <= 0:
        return None
    if guidance.interval_from_first_element:
        t = t[:1].expand_as(t)
    return (t < guidance.interval_start)[:, None, None, None]


def _extrapolate(cond: torch.Tensor, ref: torch.Tensor, scale: float, unguided: Optional[torch.Tensor]):
    guided = cond if scale == 1.0 else ref + scale * (cond - ref)
    return guided if unguided is None else torch.where(unguided, cond, guided)


def guided_velocity(
    model: nn.Module,
    x: torch.Tensor,
    t_tex: torch.Tensor,
    t_sem: torch.Tensor,
    y: torch.Tensor,
    guidance: Optional[Guidance],
    semantic_chans: int,
) -> torch.Tensor:
    """Velocity of ``model`` at (x, t_tex, t_sem, y), guided when ``guidance`` is given."""
    if guidance is None or guidance.is_identity:
        return model(x, t_tex, t_sem, y, repa=False).velocity
    mode = guidance.interval_mode
    unguided_tex = _outside_interval(t_tex, guidance, mode in ("both", "tex"))
    unguided_sem = _outside_interval(t_sem, guidance, mode in ("both", "sem"))
    if _all_unguided(unguided_tex, guidance.scale_tex) and _all_unguided(unguided_sem, guidance.scale_sem):
        # Outside the guidance interval for every sample and group: the guided velocity is the conditional one,
        # so the reference (guide or null-label) evaluation is skipped.
        return model(x, t_tex, t_sem, y, repa=False).velocity
    if guidance.guide is None:
        null = torch.full_like(y, model.null_label)
        both = model(torch.cat([x, x]), torch.cat([t_tex, t_tex]), torch.cat([t_sem, t_sem]),
                     torch.cat([y, null]), repa=False).velocity
        cond, ref = both.chunk(2)
    else:
        cond = model(x, t_tex, t_sem, y, repa=False).velocity
        ref = guidance.guide(x, t_tex, t_sem, y, repa=False).velocity
    texture = slice(0, x.shape[1] - semantic_chans)
    semantic = slice(x.shape[1] - semantic_chans, x.shape[1])
    out_tex = _extrapolate(cond[:, texture], ref[:, texture], guidance.scale_tex, unguided_tex)
    out_sem = _extrapolate(cond[:, semantic], ref[:, semantic], guidance.scale_sem, unguided_sem)
    return torch.cat([out_tex, out_sem], dim=1)


def _all_unguided(unguided: Optional[torch.Tensor], scale: float) -> bool:
    """Whether a group's guided velocity equals the conditional one for the whole batch."""
    return scale == 1.0 or (unguided is not None and bool(unguided.all()))
