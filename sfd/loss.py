"""The asynchronous flow-matching loss of SFD (paper §3; docs/method.md §3).

x_t = t_g·x1 + (1 − t_g)·x0 per channel group g, with (t_tex, t_sem) from the semantic-first split of
τ = t·(1 + Δt); the target is the velocity u = x1 − x0. Terms, each reduced per sample and then over the batch:

* velocity MSE with the semantic channels weighted by β (the mean still divides by all channels);
* cosine loss 1 − cos(v, u) over the channel dimension (all channels, unweighted), when enabled;
* REPA: alignment of the projector output to the target encoder's patch features (cos, mse or cos_mse) × weight.

Randomness (t, noise, label dropout) comes from an explicit ``torch.Generator`` or is passed in, so a step is a
pure function of its inputs. Label dropout lives here rather than in the network for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sfd import rng
from sfd.config import SFDConfig
from sfd.device import has_float64
from sfd.schedule import TimeSplit


@dataclass
class LossTerms:
    total: torch.Tensor  # scalar to optimise: mean(mse) + mean(cos) + mean(repa)
    mse: torch.Tensor  # [B] β-weighted velocity MSE
    cos: Optional[torch.Tensor]  # [B] cosine velocity loss (None when off)
    repa: Optional[torch.Tensor]  # [B] weighted REPA loss (None when off)
    pred: torch.Tensor  # [B, C, H, W] predicted velocity
    t_tex: torch.Tensor  # [B] the times the network saw
    t_sem: torch.Tensor
    xt: torch.Tensor  # [B, C, H, W] the network input


@dataclass
class FlowMatchingLoss:
    """The loss of a config (:meth:`from_config`); the fields have no defaults of their own: the config dataclasses
    (``model``, ``transport``, ``data``) hold the one set."""

    split: TimeSplit
    semantic_weight: float  # β on the semantic channels' squared error
    use_cosine_loss: bool
    use_lognorm: bool  # t = sigmoid(n), n ~ N(0, 1); else t ~ U(0, 1)
    use_repa: bool
    repa_weight: float
    repa_mode: str  # cos | mse | cos_mse
    class_dropout_prob: float  # probability of replacing a label by the null label
    null_label: int  # the unconditional label index (= num_classes)
    # Official quirk (docs/method.md §3.2): train.py adds REPA to the total only when the cosine loss is on.
    official_repa_requires_cosine: bool = False

    @classmethod
    def from_config(cls, config: SFDConfig, **overrides) -> "FlowMatchingLoss":
        model = config.model
        fields = dict(
            split=TimeSplit.from_config(config),
            semantic_weight=model.semantic_weight,
            use_cosine_loss=config.transport.use_cosine_loss,
            use_lognorm=config.transport.use_lognorm,
            use_repa=model.use_repa,
            repa_weight=model.repa_weight,
            repa_mode=model.repa_mode,
            class_dropout_prob=model.class_dropout_prob,
            null_label=config.data.num_classes,
        )
        fields.update(overrides)
        return cls(**fields)

    def sample_time(self, batch: int, generator: rng.Generator, device: torch.device) -> torch.Tensor:
        """Training time t ∈ [0, 1]: logit-normal (sigmoid computed in float64, then float32, as the release) or
        uniform. MPS has no float64: there the normals are drawn in float32 and the sigmoid runs on the CPU."""
        if self.use_lognorm and not has_float64(device):
            return torch.sigmoid(rng.randn(generator, (batch,), device).cpu().double()).float().to(device)
        if self.use_lognorm:
            return torch.sigmoid(rng.randn(generator, (batch,), device, torch.float64)).float()
        return rng.rand(generator, (batch,), device)

    def drop_labels(self, y: torch.Tensor, generator: rng.Generator) -> torch.Tensor:
        """Replace each label by the null label with probability ``class_dropout_prob`` (trains the unconditional
        branch that classifier-free guidance uses)."""
        dropped = rng.rand(generator, (y.shape[0],), y.device) < self.class_dropout_prob
        return torch.where(dropped, torch.full_like(y, self.null_label), y)

    def __call__(
        self,
        model: nn.Module,
        x1: torch.Tensor,
        y: torch.Tensor,
        repa_target: Optional[torch.Tensor] = None,
        *,
        t: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        generator: rng.Generator = None,
    ) -> LossTerms:
        """Loss for data latents ``x1`` [B, C, H, W] with labels ``y`` [B]. ``repa_target`` is the target feature
        map [B, D, h, w] (used as is, not normalised). ``t`` and ``noise`` are drawn from ``generator`` unless given;
        the generator (one ``torch.Generator``, per-sample ``rng.SampleGenerators`` or None for the global RNG) is
        used in the order t, noise, label dropout."""
        if t is None:
            t = self.sample_time(x1.shape[0], generator, x1.device)
        if noise is None:
            noise = rng.randn(generator, x1.shape, x1.device, x1.dtype)
        if self.use_repa and repa_target is None:
            raise ValueError("REPA is enabled (model.use_repa) but no repa_target features were given")
        t = t.to(x1)
        t_tex, t_sem = self.split.times(self.split.training_tau(t))
        t_channel = self.split.per_channel(t_tex, t_sem, x1.shape[1])
        xt = t_channel * x1 + (1 - t_channel) * noise
        target = x1 - noise
        labels = self.drop_labels(y, generator) if self.class_dropout_prob > 0 else y
        output = model(xt, t_tex, t_sem, labels, repa=self.use_repa)
        pred = output.velocity

        squared = (pred - target) ** 2
        if self.split.semantic_chans > 0 and self.semantic_weight != 1.0:
            weights = torch.ones(x1.shape[1], device=x1.device, dtype=squared.dtype)
            weights[x1.shape[1] - self.split.semantic_chans:] = self.semantic_weight
            squared = squared * weights[:, None, None]
        mse = squared.flatten(1).mean(1)
        total = mse.mean()

        cos = None
        if self.use_cosine_loss:
            cos = (1 - F.cosine_similarity(pred, target, dim=1)).flatten(1).mean(1)
            total = total + cos.mean()

        repa = None
        if self.use_repa:
            if output.repa is None:
                raise ValueError("REPA is enabled but the model has no REPA projector (model.use_repa at build time)")
            repa = self.repa_weight * self.repa_alignment(output.repa, repa_target)
            if self.use_cosine_loss or not self.official_repa_requires_cosine:
                total = total + repa.mean()
        return LossTerms(total=total, mse=mse, cos=cos, repa=repa, pred=pred, t_tex=t_tex, t_sem=t_sem, xt=xt)

    def repa_alignment(self, projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample REPA loss between projector tokens [B, T, D] and a target map [B, D, h, w] whose tokens are
        taken in row-major order (token = w_index + h_index·w). Only ``repa_mode``'s variant is computed, so the
        ``cos`` mode of every released config never forms the [B, T, D] squared error; each variant is the same
        expression as when all three were computed and one kept (tests/test_loss.py checks equality)."""
        target_tokens = target.flatten(2).transpose(1, 2).to(projected.dtype)
        if target_tokens.shape != projected.shape:
            raise ValueError(f"REPA target has {tuple(target_tokens.shape)} tokens×features, "
                             f"the projector gives {tuple(projected.shape)}")
        if self.repa_mode == "cos":
            return repa_cosine(projected, target_tokens)
        if self.repa_mode == "mse":
            return repa_mse(projected, target_tokens)
        if self.repa_mode == "cos_mse":
            return (repa_cosine(projected, target_tokens) + repa_mse(projected, target_tokens)) / 2
        raise ValueError(f"model.repa_mode: expected cos, mse or cos_mse (got {self.repa_mode!r})")


def repa_cosine(projected: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """[B]: mean over tokens of 1 − cos over the features (docs/method.md §3.2)."""
    return (1 - F.cosine_similarity(target_tokens, projected, dim=-1)).mean(1)


def repa_mse(projected: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """[B]: mean squared error over tokens × features (docs/method.md §3.2)."""
    return ((target_tokens - projected) ** 2).flatten(1).mean(1)
