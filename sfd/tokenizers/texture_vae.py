"""The texture tokenizer: the LDM KL-autoencoder family ("SD-VAE f16d32", and VA-VAE f16d32 with the same layout).

SFD's texture latent is the posterior of the LDM ``AutoencoderKL`` checkpoint ``ldm-imagenet256-f16d32-50ep.ckpt``
(ch 128, ch_mult 1,1,2,2,4, 2 residual blocks, attention at resolution 16, z 32, embed_dim 32; docs/formats.md §5.1).
The VA-VAE checkpoint ``vavae-imagenet256-f16d32-dinov2.pt`` (release YAML ``tokenizer/configs/vavae_f16d32.yaml``)
has the same architecture with DINOv2-aligned weights; its YAML differs only in ``ckpt_path`` and ``use_vf`` (a
training key, ignored), and whatever DINOv2 / loss / projection entries its checkpoint carries lie outside the four
VAE prefixes and are skipped, so ``load_texture_vae`` reads both unchanged.

Design: diffusers' ``Encoder`` / ``Decoder`` (the modules inside its ``AutoencoderKL``) plus our own 1×1
``quant_conv`` and ``post_quant_conv``. diffusers represents every LDM config whose first ``ch_mult`` is 1 exactly:
attention is chosen per level through the block types (``Attn*Block2D`` at the levels whose resolution is in
``attn_resolutions``), GroupNorm has 32 groups and eps 1e-6, the decoder has ``num_res_blocks + 1`` resnets per
level, and downsampling pads (0, 1, 0, 1) before a stride-2 convolution, all as in LDM. Keeping the two 1×1 convs
ourselves also lifts diffusers' ``latent_channels`` coupling, so ``z_channels`` and ``embed_dim`` may differ as in
LDM. A first ``ch_mult`` other than 1 (LDM's ``conv_in`` stays at ``ch`` and the first level widens; diffusers'
``conv_in`` emits the first level's width) is rejected at config time; no released KL-VAE of this line uses one.
LDM checkpoints are converted with an explicit, bijective name map (``ldm_to_diffusers_key``) instead of
``diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint``: that helper matches names by substring and
leaves the per-level attention keys (``encoder.down.4.attn.*``, ``decoder.up.4.attn.*``) unmapped.

Measured on the tiny golden (tests/data/vae_tiny*, float32, this 2-core CPU, max|Δ|/max|golden|): moments, posterior
mean and clamped logvar 3.5e-06, 3.5e-06, 3.0e-06; decoded 6.9e-06; tolerance 1e-4. The official LDM modules give the
same moments (3.5e-06) and decoded 3.3e-06 on this CPU, so most of the gap is the machine's convolution algorithms;
the rest is diffusers' scaled_dot_product_attention in place of LDM's bmm + softmax.

Official loader trap (docs/formats.md §5.3): the release builds ``AutoencoderKL(embed_dim, ch_mult=(1, 1, 2,
2, 4))`` with hard-coded defaults (its ``ddconfig`` is never read), filters the checkpoint with
``'foundation_model.model' and 'loss' not in k`` (which only drops keys containing ``loss``) and loads with
``strict=False``: a checkpoint of another
architecture, a truncated file or a renamed key loads silently and leaves random weights. Here the YAML's
``ddconfig`` builds the model, the checkpoint is filtered to the four VAE prefixes, and loading is strict: a
missing or unexpected VAE key, or a shape mismatch, is a one-line error naming it.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional

import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from sfd.config import ConfigError, load_structured, resolve_path
from sfd.tokenizers.distributions import DiagonalGaussian

# Checkpoint entries that belong to the autoencoder; everything else (loss.*, foundation_model.*, EMA copies,
# VA-VAE projection heads) is training-only and skipped, as the release does.
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")

# Keys of the LDM config that describe training, not the network (release layout, model.params and model).
_IGNORED_PARAMS = ("lossconfig", "use_vf", "reverse_proj", "monitor")
_IGNORED_MODEL = ("base_learning_rate", "target")

# LDM AttnBlock / ResnetBlock sub-module names → diffusers Attention / ResnetBlock2D names.
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET_PARTS = {
    "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"
}
_GROUPS = 32  # LDM's Normalize: GroupNorm(32, C, eps=1e-6)


@dataclass
class TextureVAEConfig:
    """Architecture of an LDM ``AutoencoderKL``; defaults are the official ``Encoder``/``Decoder`` defaults with the
    SFD release's embed_dim 32 and ch_mult (1, 1, 2, 2, 4), i.e. the f16d32 texture VAE."""

    embed_dim: int = 32  # latent channels after quant_conv (model.params.embed_dim)
    z_channels: int = 32  # encoder output channels per moment (ddconfig.z_channels)
    double_z: bool = True  # encoder emits mean and logvar; LDM's AutoencoderKL requires it
    resolution: int = 256  # training image size in pixels; decides which levels carry attention
    in_channels: int = 3  # image channels in
    out_ch: int = 3  # image channels out
    ch: int = 128  # base width
    ch_mult: List[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])  # width multiplier per level
    num_res_blocks: int = 2  # resnets per encoder level (the decoder has one more)
    attn_resolutions: List[int] = field(default_factory=lambda: [16])  # feature-map sizes with self-attention
    dropout: float = 0.0  # resnet dropout; only 0 is supported (inference module)
    ckpt_path: Optional[str] = None  # weights; relative paths resolve against CWD, then the YAML's folder

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TextureVAEConfig":
        """Read an LDM-style tokenizer YAML (``ckpt_path``, ``model.params.embed_dim``, ``model.params.ddconfig``;
        the release's training keys are ignored). Unknown keys and wrong types fail naming the file and key."""
        config = load_structured(cls, path, adapt=_flatten_ldm_layout)
        config.check(str(path))
        return config

    def check(self, source: str = "texture VAE config") -> None:
        """Cross-field rules; raises ConfigError naming the key."""
        for name in ("embed_dim", "z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{source}: {name}: must be >= 1, got {getattr(self, name)}")
        if not self.double_z:
            raise ConfigError(f"{source}: double_z: must be true (the KL posterior needs mean and logvar)")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError(f"{source}: ch_mult: must be a non-empty list of positive ints, got {self.ch_mult}")
        if self.ch_mult[0] != 1:
            raise ConfigError(
                f"{source}: ch_mult: first multiplier must be 1 (diffusers' Encoder cannot widen inside level 0), "
                f"got {self.ch_mult}"
            )
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % _GROUPS for w in widths):
            raise ConfigError(f"{source}: ch: every level width {widths} must be divisible by {_GROUPS} (GroupNorm)")
        if self.dropout != 0.0:
            raise ConfigError(f"{source}: dropout: only 0.0 is supported, got {self.dropout}")

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    def encoder_attention(self) -> List[bool]:
        """Per LDM level: does the encoder attend there? LDM tests the map size resolution // 2**level."""
        return [self.resolution // 2**level in self.attn_resolutions for level in range(self.num_levels)]

    def decoder_attention(self) -> List[bool]:
        """Per LDM level: does the decoder attend there? LDM starts from resolution // 2**(levels-1) and doubles, so
        for resolutions not divisible by that power the two sides can differ."""
        lowest = self.resolution // 2 ** (self.num_levels - 1)
        sizes = [lowest * 2 ** (self.num_levels - 1 - level) for level in range(self.num_levels)]
        return [size in self.attn_resolutions for size in sizes]


def _flatten_ldm_layout(raw: Any, source: str) -> dict:
    """{ckpt_path, model: {params: {embed_dim, ddconfig: {...}}}} → the flat fields of TextureVAEConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with `model` at the top level")
    unknown = sorted(set(raw) - {"ckpt_path", "model"})
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown top-level key")
    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise ConfigError(f"{source}: model.params: missing (expected the LDM tokenizer layout)")
    unknown = sorted(set(model) - {"params", *_IGNORED_MODEL})
    if unknown:
        raise ConfigError(f"{source}: model.{unknown[0]}: unknown key")
    params = model["params"]
    unknown = sorted(set(params) - {"embed_dim", "ddconfig", *_IGNORED_PARAMS})
    if unknown:
        raise ConfigError(f"{source}: model.params.{unknown[0]}: unknown key")
    ddconfig = params.get("ddconfig")
    if not isinstance(ddconfig, dict):
        raise ConfigError(f"{source}: model.params.ddconfig: missing (expected a mapping)")
    reserved = {"embed_dim", "ckpt_path"} & set(ddconfig)
    if reserved:
        raise ConfigError(f"{source}: model.params.ddconfig.{sorted(reserved)[0]}: unknown key")
    values = dict(ddconfig)
    if "embed_dim" in params:
        values["embed_dim"] = params["embed_dim"]
    if raw.get("ckpt_path") is not None:
        values["ckpt_path"] = raw["ckpt_path"]
    return values


# ---------------------------------------------------------------------------------------------- LDM ↔ diffusers names

# (LDM name, TextureVAE name) templates. {L}: LDM level; {R}: the same decoder level in diffusers' up-block order,
# levels - 1 - L (LDM indexes up levels by resolution, diffusers in execution order); {j}: layer index;
# {res} / {att}: resnet / attention sub-layer (renamed through _RESNET_PARTS / _ATTN_PARTS); {p}: weight | bias.
_NAME_TABLE = (
    ("{side}.conv_in.{p}", "{side}.conv_in.{p}"),
    ("{side}.conv_out.{p}", "{side}.conv_out.{p}"),
    ("{side}.norm_out.{p}", "{side}.conv_norm_out.{p}"),
    ("{side}.mid.block_1.{res}.{p}", "{side}.mid_block.resnets.0.{res}.{p}"),
    ("{side}.mid.block_2.{res}.{p}", "{side}.mid_block.resnets.1.{res}.{p}"),
    ("{side}.mid.attn_1.{att}.{p}", "{side}.mid_block.attentions.0.{att}.{p}"),
    ("encoder.down.{L}.block.{j}.{res}.{p}", "encoder.down_blocks.{L}.resnets.{j}.{res}.{p}"),
    ("encoder.down.{L}.attn.{j}.{att}.{p}", "encoder.down_blocks.{L}.attentions.{j}.{att}.{p}"),
    ("encoder.down.{L}.downsample.conv.{p}", "encoder.down_blocks.{L}.downsamplers.0.conv.{p}"),
    ("decoder.up.{L}.block.{j}.{res}.{p}", "decoder.up_blocks.{R}.resnets.{j}.{res}.{p}"),
    ("decoder.up.{L}.attn.{j}.{att}.{p}", "decoder.up_blocks.{R}.attentions.{j}.{att}.{p}"),
    ("decoder.up.{L}.upsample.conv.{p}", "decoder.up_blocks.{R}.upsamplers.0.conv.{p}"),
    ("quant_conv.{p}", "quant_conv.{p}"),
    ("post_quant_conv.{p}", "post_quant_conv.{p}"),
)


def _compile(template: str, sub_layers: Mapping[str, Mapping[str, str]]) -> re.Pattern:
    """Template → regex with one named group per placeholder."""
    groups = {
        "side": "encoder|decoder",
        "L": r"\d+",
        "R": r"\d+",
        "j": r"\d+",
        "p": "weight|bias",
        **{name: "|".join(re.escape(part) for part in parts) for name, parts in sub_layers.items()},
    }
    regex = re.escape(template)
    for name, alternatives in groups.items():
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{alternatives})")
    return re.compile(regex)


def _invert(mapping: Mapping[str, str]) -> dict[str, str]:
    return {value: key for key, value in mapping.items()}


_LDM_PARTS = {"res": _RESNET_PARTS, "att": _ATTN_PARTS}
_DIFFUSERS_PARTS = {"res": _invert(_RESNET_PARTS), "att": _invert(_ATTN_PARTS)}
_TO_DIFFUSERS = [(_compile(ldm, _LDM_PARTS), diffusers) for ldm, diffusers in _NAME_TABLE]
_TO_LDM = [(_compile(diffusers, _DIFFUSERS_PARTS), ldm) for ldm, diffusers in _NAME_TABLE]


def _rename(
    key: str, num_levels: int, rules: List[tuple[re.Pattern, str]], parts: Mapping[str, Mapping[str, str]]
) -> Optional[str]:
    """Apply the first matching rule. The decoder level flip L ↔ levels - 1 - L is its own inverse, so the same code
    renames in both directions."""
    for pattern, template in rules:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        values = {name: parts[name][value] if name in parts else value for name, value in match.groupdict().items()}
        level = values.get("L", values.get("R"))
        if level is not None:
            if int(level) >= num_levels:
                return None
            flipped = str(num_levels - 1 - int(level))
            values["R" if "L" in values else "L"] = flipped
        return template.format(**values)
    return None


def ldm_to_diffusers_key(key: str, num_levels: int) -> Optional[str]:
    """TextureVAE name of an LDM autoencoder entry, or None if it names no layer of a ``num_levels`` model."""
    return _rename(key, num_levels, _TO_DIFFUSERS, _LDM_PARTS)


def diffusers_to_ldm_key(key: str, num_levels: int) -> Optional[str]:
    """LDM name of a TextureVAE entry (the inverse of ``ldm_to_diffusers_key``), or None."""
    return _rename(key, num_levels, _TO_LDM, _DIFFUSERS_PARTS)


def _is_attention_projection(name: str) -> bool:
    """LDM's attention q/k/v/proj_out are 1×1 convolutions; diffusers' are linear layers with the same matrix."""
    return re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", name) is not None


def _name_list(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


# ----------------------------------------------------------------------------------------------------------- the model


class TextureVAE(nn.Module):
    """LDM KL-autoencoder: images in [-1, 1] [B, C, H, W] ↔ latents [B, embed_dim, H/f, W/f], f = 2**(levels-1)."""

    def __init__(self, config: TextureVAEConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        widths = [config.ch * m for m in config.ch_mult]
        down_types = ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in config.encoder_attention()]
        up_types = ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in config.decoder_attention()]
        self.encoder = Encoder(
            in_channels=config.in_channels,
            out_channels=config.z_channels,
            down_block_types=tuple(down_types),
            block_out_channels=tuple(widths),
            layers_per_block=config.num_res_blocks,
            norm_num_groups=_GROUPS,
            act_fn="silu",
            double_z=True,
        )
        self.decoder = Decoder(
            in_channels=config.z_channels,
            out_channels=config.out_ch,
            up_block_types=tuple(reversed(up_types)),  # diffusers runs the up blocks lowest resolution first
            block_out_channels=tuple(widths),
            layers_per_block=config.num_res_blocks,
            norm_num_groups=_GROUPS,
            act_fn="silu",
        )
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    @property
    def downsample_ratio(self) -> int:
        return 2 ** (self.config.num_levels - 1)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """Posterior q(z | x) of images in [-1, 1]; SFD's texture latent is its ``sample()`` (docs/formats.md §5.2)."""
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"encode: expected images [B, {self.config.in_channels}, H, W], got {list(images.shape)}"
            )
        return DiagonalGaussian(self.quant_conv(self.encoder(images)))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (float, roughly [-1, 1]) from unnormalised latents [B, embed_dim, h, w] (docs/method.md §2.4.3)."""
        if latents.dim() != 4 or latents.shape[1] != self.config.embed_dim:
            raise ValueError(f"decode: expected latents [B, {self.config.embed_dim}, h, w], got {list(latents.shape)}")
        return self.decoder(self.post_quant_conv(latents))

    @staticmethod
    def to_uint8(images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3] as the release does: clamp(127.5·x + 128, 0, 255), then a
        cast that truncates (docs/method.md §2.4.4). The +128 (not +127.5) with truncation equals rounding
        127.5·x + 127.5 to nearest; keep both so saved PNGs match the release bit for bit."""
        if images.dim() != 4:
            raise ValueError(f"to_uint8: expected images [B, C, H, W], got {list(images.shape)}")
        return torch.clamp(127.5 * images + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)

    def load_ldm_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strictly load an LDM-named state dict. Entries outside ``VAE_PREFIXES`` are skipped; a missing or
        unexpected VAE entry, or one of another shape, raises ValueError naming it (in LDM names)."""
        levels = self.config.num_levels
        own = self.state_dict()
        converted: dict[str, torch.Tensor] = {}
        unexpected: List[str] = []
        for key, value in state_dict.items():
            if not key.startswith(VAE_PREFIXES):
                continue
            name = ldm_to_diffusers_key(key, levels)
            if name is None or name not in own:
                unexpected.append(key)
                continue
            expected = list(own[name].shape) + ([1, 1] if _is_attention_projection(name) else [])
            if list(value.shape) != expected:
                raise ValueError(f"{source}: {key}: checkpoint shape {list(value.shape)} vs model shape {expected}")
            converted[name] = value.reshape(own[name].shape)
        if unexpected:
            raise ValueError(
                f"{source}: texture VAE checkpoint has {len(unexpected)} unexpected keys: {_name_list(unexpected)}"
            )
        missing = [diffusers_to_ldm_key(name, levels) or name for name in own if name not in converted]
        if missing:
            raise ValueError(f"{source}: texture VAE checkpoint lacks {len(missing)} keys: {_name_list(missing)}")
        self.load_state_dict(converted, strict=True)


    def ldm_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under LDM names and shapes (attention projections as 1×1 convolutions): the layout of the
        release's tokenizer checkpoints, which ``load_ldm_state_dict`` and ``load_texture_vae`` read."""
        levels = self.config.num_levels
        state = {}
        for name, value in self.state_dict().items():
            key = diffusers_to_ldm_key(name, levels)
            if key is None:
                raise ValueError(f"texture VAE entry {name} has no LDM name")
            state[key] = value[..., None, None] if _is_attention_projection(name) else value
        return state


# ------------------------------------------------------------------------------------------------------------ loading


def read_ldm_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an LDM / Lightning checkpoint (its ``state_dict``) or of a bare state dict, loaded with
    ``weights_only=True`` so that opening a checkpoint never runs code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: texture VAE checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = refused.group(1) if refused else str(error).splitlines()[0]
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refuses a non-tensor object ({what}); from a copy you trust, "
            f"re-save its tensors: torch.save({{'state_dict': torch.load(src, weights_only=False)['state_dict']}}, dst)"
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict or a dict with `state_dict`, got {type(checkpoint).__name__}")
    bad = [key for key, value in state.items() if key.startswith(VAE_PREFIXES) and not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: {bad[0]}: expected a tensor, got {type(state[bad[0]]).__name__}")
    return state


def load_texture_vae(
    config_path: str | Path, ckpt_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> TextureVAE:
    """Build the VAE of an LDM tokenizer YAML (e.g. the release's ``tokenizer/configs/sdvae_f16d32.yaml`` or
    ``vavae_f16d32.yaml``, unchanged) and strictly load its weights: ``ckpt_path`` if given, else the YAML's
    ``ckpt_path`` resolved against the working directory, then the YAML's folder. Returns it frozen, in eval mode."""
    config = TextureVAEConfig.from_yaml(config_path)
    if ckpt_path is None:
        if config.ckpt_path is None:
            raise ConfigError(f"{config_path}: ckpt_path: not set and no checkpoint given")
        ckpt_path = resolve_path(config.ckpt_path, config_path)
    vae = TextureVAE(config)
    vae.load_ldm_state_dict(read_ldm_state_dict(ckpt_path), source=str(ckpt_path))
    return vae.requires_grad_(False).eval().to(device)
