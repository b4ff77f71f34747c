"""Building networks from configs and loading the weights a config points to."""

from __future__ import annotations

import re
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
    load_weights(model, model_checkpoint(config, config_path, ckpt_path))
    return model.to(device).eval(), config


def model_checkpoint(config: SFDConfig, config_path: str | Path, ckpt_path: Optional[str | Path] = None) -> Path:
    """The weights file :func:`load_model` reads: ``ckpt_path`` when given, else the config's ``ckpt_path``."""
    return Path(ckpt_path) if ckpt_path is not None else resolve_path(config.ckpt_path, config_path)


def guide_checkpoint_for_iteration(path: str | Path, iteration_k: int) -> Path:
    """The release's --autoguidance_ckpt_iter: …/0070000.pt → …/{k·1000:07d}.pt."""
    rewritten, count = re.subn(r"/(\d+)\.pt$", f"/{iteration_k * 1000:07d}.pt", str(path))
    if count != 1:
        raise ValueError(f"guide ckpt_path {str(path)!r} does not end in /<step>.pt, so its iteration cannot be set")
    return Path(rewritten)


def check_guide(config: SFDConfig, guide_config: SFDConfig, guide_path: str | Path) -> None:
    """A guide predicts on the main model's latents at the main model's times: the same channels, semantic
    channels, semantic lead Δt and its shape, latent size and label set. Raises ValueError naming the first
    difference."""
    main, guide = model_args(config), model_args(guide_config)
    for key, ours, theirs in (
        ("model.in_chans", config.model.in_chans, guide_config.model.in_chans),
        ("model.semantic_chans", config.model.semantic_chans, guide_config.model.semantic_chans),
        ("model.semfirst_delta_t", config.model.semfirst_delta_t, guide_config.model.semfirst_delta_t),
        ("model.semfirst_schedule", config.model.semfirst_schedule, guide_config.model.semfirst_schedule),
        ("latent size (data.image_size / vae.downsample_ratio)", main.input_size, guide.input_size),
        ("data.num_classes", config.data.num_classes, guide_config.data.num_classes),
    ):
        if ours != theirs:
            raise ValueError(f"{guide_path}: {key} is {theirs}, the main model's is {ours}; an AutoGuidance guide "
                             "must use the same latents and time split")


def guide_checkpoint(config: SFDConfig, config_path: str | Path, iteration_k: Optional[int] = None) -> Optional[Path]:
    """The weights file of the AutoGuidance guide (None when AutoGuidance is off): the ``ckpt_path`` of the YAML named
    by ``sample.autoguidance_config``, or the checkpoint of the same run at ``iteration_k`` thousand steps (the
    release's ``--autoguidance_ckpt_iter``)."""
    if not config.sample.autoguidance:
        return None
    guide_path = resolve_path(config.sample.autoguidance_config, config_path)
    ckpt = resolve_path(load_config(guide_path).ckpt_path, guide_path)
    return guide_checkpoint_for_iteration(ckpt, iteration_k) if iteration_k is not None else ckpt


def load_guide(
    config: SFDConfig, config_path: str | Path, device: str | torch.device = "cpu",
    iteration_k: Optional[int] = None,
) -> Optional[LightningDiT]:
    """The AutoGuidance model named by ``sample.autoguidance_config`` (None when AutoGuidance is off), built from its
    own YAML with the weights of :func:`guide_checkpoint`. It must match the main model (:func:`check_guide`)."""
    if not config.sample.autoguidance:
        return None
    guide_path = resolve_path(config.sample.autoguidance_config, config_path)
    check_guide(config, load_config(guide_path), guide_path)
    guide, _ = load_model(guide_path, ckpt_path=guide_checkpoint(config, config_path, iteration_k), device=device)
    return guide
