"""Building networks from configs and loading the weights a config points to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from sfd.checkpoint import load_weights
from sfd.config import SFDConfig, load_config, model_args, resolve_path
from sfd.lightningdit import LightningDiT


def build_model(config: SFDConfig) -> LightningDiT:
    """A freshly initialised LightningDiT for ``config`` (validated by ``load_config``)."""
    return LightningDiT(model_args(config))


def load_model(
    config_path: str | Path,
    overrides: tuple[str, ...] | list[str] = (),
    ckpt_path: Optional[str | Path] = None,
    device: str | torch.device = "cpu",
) -> tuple[LightningDiT, SFDConfig]:
    """Model of a config with the weights of ``ckpt_path`` (default: the config's ``ckpt_path``), in eval mode.

    Relative checkpoint paths are resolved against the working directory, then against the config's folder."""
    config = load_config(config_path, overrides)
    model = build_model(config)
    path = Path(ckpt_path) if ckpt_path is not None else resolve_path(config.ckpt_path, config_path)
    load_weights(model, path)
    return model.to(device).eval(), config


def load_guide(
    config: SFDConfig, config_path: str | Path, device: str | torch.device = "cpu"
) -> Optional[LightningDiT]:
    """The AutoGuidance model named by ``sample.autoguidance_config`` (None when AutoGuidance is off). The guide is
    built from its own YAML and loads the EMA weights of that YAML's ``ckpt_path``."""
    if not config.sample.autoguidance:
        return None
    guide_path = resolve_path(config.sample.autoguidance_config, config_path)
    guide, guide_config = load_model(guide_path, device=device)
    if (guide_config.model.in_chans, guide_config.model.semantic_chans) != (config.model.in_chans,
                                                                              config.model.semantic_chans):
        raise ValueError(f"{guide_path}: model.in_chans/semantic_chans differ from the main model's; a guide must "
                         "use the same latents")
    return guide
