"""Released models and exported runs in one call: ``sfd.from_pretrained(name_or_path)``.

Three kinds of names:

* a row of the release table (``sfd-xl-800ep-ag``, …; ``python scripts/download.py --list``): its files are fetched
  when missing (``sfd.hub.download``, into the working directory, where the release's configs look) and the row's
  inference config is loaded with the row's guidance settings (scale, guide and guide iteration);
* a local folder written by :func:`export_pretrained` (``tools/export_pretrained.py``);
* a Hugging Face repository id holding such a folder (fetched into the hub cache; ``HF_HUB_OFFLINE=1`` uses the
  cache alone).

The result holds the network in eval mode, its AutoGuidance guide when it has one, the config, and the decoder
(latent statistics + texture VAE) that turns final states into images, ready for ``sfd.sample`` (with
``sfd.SamplerOptions.from_config(config, guide)``) or :meth:`Pretrained.sampler`. The folder format is
docs/formats.md §8.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml
from torch import nn

from sfd.build import check_guide, load_guide, load_model
from sfd.checkpoint import atomic_save
from sfd.config import SFDConfig, load_config, resolve_path, save_config
from sfd.files import atomic_path, write_text_atomic
from sfd.generate import ImageSampler, LatentDecoder

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
GUIDE_FOLDER = "guide"
VAE_CONFIG_FILE = "texture_vae.yaml"
VAE_WEIGHTS_FILE = "texture_vae.ckpt"
STATS_FILES = ("latents_stats.pt",)  # the texture statistics the decoder needs
# The release launchers' guidance variables (run_inference.sh) as config overrides.
AUTOGUIDANCE_CONFIG = "configs/sfd/autoguidance_{size}/inference.yaml"


@dataclass
class Pretrained:
    model: nn.Module
    config: SFDConfig
    config_path: Path
    guide: Optional[nn.Module]
    decoder: LatentDecoder
    device: torch.device
    vae_config_path: Path  # the texture VAE's tokenizer YAML (written again by save_pretrained)

    def sampler(self, seed: Optional[int] = None, precision: str = "fp32") -> ImageSampler:
        """An :class:`sfd.generate.ImageSampler` with the config's sampling and guidance settings: sample k gets the
        noise of (seed, k), as in ``scripts/sample.py`` (default seed: ``train.global_seed``)."""
        seed = self.config.train.global_seed if seed is None else seed
        return ImageSampler(self.model, self.config, self.decoder, guide=self.guide, device=self.device, seed=seed,
                            precision=precision)


def autoguidance_overrides(size: str) -> list[str]:
    """The config overrides of the release's ``--autoguidance_model_size`` (``AUTOGUIDANCE_MODEL_SIZE``)."""
    return ["sample.autoguidance=true", f"sample.autoguidance_config={AUTOGUIDANCE_CONFIG.format(size=size)}"]


def from_pretrained(name_or_path: str | Path, *, device: str | torch.device = "cpu", overrides: Sequence[str] = (),
                    download: bool = True) -> Pretrained:
    """A released row, an exported folder or a hub repository id → :class:`Pretrained` (see the module docstring).
    ``overrides`` are config overrides (``sample.num_sampling_steps=50``); ``download=False`` never fetches."""
    from sfd.hub import ReleaseTable

    device = torch.device(device)
    name = str(name_or_path)
    table = ReleaseTable.load()
    if name in table.rows:
        return _from_row(table, name, device, overrides, download)
    folder = Path(name)
    if not folder.exists():
        if name.count("/") != 1 or not download:
            raise FileNotFoundError(f"{name}: not a release row ({', '.join(table.rows)}), an exported folder or "
                                    "a Hugging Face repository id")
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name))
    return _from_folder(folder, device, overrides)


def _from_row(table, name: str, device: torch.device, overrides: Sequence[str], download: bool) -> Pretrained:
    from sfd.hub import download as fetch

    row = table.row(name)
    if row.config is None:
        raise ValueError(f"{name}: a bundle of files, not a model (rows with a model: "
                         f"{', '.join(n for n, r in table.rows.items() if r.config)})")
    if download:  # the row's own files; the evaluator's (the row's `needs`) are not needed to sample
        fetch([name], ".", log=lambda message: None, with_needs=False)
    env = row.env
    row_overrides = [f"sample.cfg_scale={env['CFG_SCALE']}"] if "CFG_SCALE" in env else []
    if "AUTOGUIDANCE_MODEL_SIZE" in env:
        row_overrides += autoguidance_overrides(env["AUTOGUIDANCE_MODEL_SIZE"])
    iteration = int(env["AUTOGUIDANCE_CKPT_ITER"]) if "AUTOGUIDANCE_CKPT_ITER" in env else None
    model, config = load_model(row.config, [*row_overrides, *overrides], device=device)
    guide = load_guide(config, row.config, device, iteration_k=iteration)
    return _assemble(model, config, Path(row.config), guide, device)


def _assemble(model: nn.Module, config: SFDConfig, config_path: Path, guide: Optional[nn.Module],
              device: torch.device, vae_weights: Optional[Path] = None) -> Pretrained:
    """Add the decoder (latent statistics of ``data.data_path`` + the texture VAE of ``vae.config``)."""
    from sfd.tokenizers.texture_vae import load_texture_vae

    vae_yaml = resolve_path(config.vae.config_path, config_path)
    vae = load_texture_vae(vae_yaml, vae_weights, device=device)
    return Pretrained(model, config, config_path, guide, LatentDecoder(vae, config, device), device, vae_yaml)


def _from_folder(folder: Path, device: torch.device, overrides: Sequence[str]) -> Pretrained:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; not a folder written by tools/export_pretrained.py")
    # Every file of the folder by its absolute path, so that nothing resolves against the working directory.
    fixed = [f"ckpt_path={folder / WEIGHTS_FILE}", f"data.data_path={folder}",
             f"vae.config={folder / VAE_CONFIG_FILE}"]
    guide_config = folder / GUIDE_FOLDER / CONFIG_FILE
    if guide_config.is_file():
        fixed += [f"sample.autoguidance_config={guide_config}"]
    model, config = load_model(config_path, [*fixed, *overrides], device=device)
    guide = None
    if config.sample.autoguidance:
        check_guide(config, load_config(guide_config), guide_config)
        guide, _ = load_model(guide_config, ckpt_path=folder / GUIDE_FOLDER / WEIGHTS_FILE, device=device)
    return _assemble(model, config, config_path, guide, device, folder / VAE_WEIGHTS_FILE)


# -- export ---------------------------------------------------------------------------------------------------------

def save_pretrained(pretrained: Pretrained, out: str | Path, scores: Optional[dict] = None) -> Path:
    """Write ``pretrained`` as the folder :func:`from_pretrained` loads (docs/formats.md §8): the weights as
    safetensors, the config with paths inside the folder, the decoder's latent statistics, the texture VAE (LDM
    layout), the guide in ``guide/`` when there is one, and a model card with ``scores``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(pretrained.config)

    def weights(model: nn.Module) -> dict[str, torch.Tensor]:
        return {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}

    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(weights(pretrained.model), tmp)
    decoder = pretrained.decoder
    atomic_save({"mean": decoder.mean.cpu(), "std": decoder.std.cpu()}, out / STATS_FILES[0])
    atomic_save({"state_dict": decoder.vae.ldm_state_dict()}, out / VAE_WEIGHTS_FILE)
    layout = yaml.safe_load(pretrained.vae_config_path.read_text())
    write_text_atomic(out / VAE_CONFIG_FILE, yaml.safe_dump({**layout, "ckpt_path": VAE_WEIGHTS_FILE},
                                                            sort_keys=False))
    if pretrained.guide is not None:
        guide_config = load_config(resolve_path(config.sample.autoguidance_config, pretrained.config_path))
        guide_config.ckpt_path = WEIGHTS_FILE
        (out / GUIDE_FOLDER).mkdir(exist_ok=True)
        with atomic_path(out / GUIDE_FOLDER / WEIGHTS_FILE) as tmp:
            save_file(weights(pretrained.guide), tmp)
        save_config(guide_config, out / GUIDE_FOLDER / CONFIG_FILE)
        config.sample.autoguidance_config = f"{GUIDE_FOLDER}/{CONFIG_FILE}"
    config.ckpt_path, config.data.data_path, config.vae.config = WEIGHTS_FILE, ".", VAE_CONFIG_FILE
    save_config(config, out / CONFIG_FILE)
    write_text_atomic(out / "README.md", model_card(config, pretrained.guide is not None, scores))
    return out


def export_pretrained(config_path: str | Path, out: str | Path, checkpoint: Optional[str | Path] = None,
                      iteration_k: Optional[int] = None, scores: Optional[dict] = None,
                      overrides: Sequence[str] = ()) -> Path:
    """The folder of :func:`save_pretrained` for a run (or inference) config: the EMA weights of ``checkpoint``
    (default: the config's ``ckpt_path``) with the config's statistics, texture VAE and guide (at ``iteration_k``
    thousand steps when given), loaded by the same road as ``scripts/sample.py``."""
    config_path = Path(config_path)
    model, config = load_model(config_path, overrides, checkpoint)
    guide = load_guide(config, config_path, iteration_k=iteration_k)
    return save_pretrained(_assemble(model, config, config_path, guide, torch.device("cpu")), out, scores)


def model_card(config: SFDConfig, guided: bool, scores: Optional[dict]) -> str:
    model, train, sample = config.model, config.train, config.sample
    lines = ["---", "library_name: sfd", "tags: [diffusion, semantic-first-diffusion, class-conditional]", "---", "",
             f"# {train.exp_name or model.model_type}", "",
             "A Semantic-First Diffusion model (arXiv 2512.04926) written by `sfd.save_pretrained` "
             "(`tools/export_pretrained.py`); load it with `sfd.from_pretrained(\"<this folder or repo id>\")` or "
             "`sfd.pipeline.SFDPipeline.from_pretrained(...)`.", "",
             "| setting | value |", "|---|---|",
             f"| network | {model.model_type}, {model.in_chans} channels ({model.semantic_chans} semantic), "
             f"Δt {model.semfirst_delta_t} |",
             f"| training | {train.max_steps} steps at global batch {train.global_batch_size}, lr "
             f"{config.optimizer.lr}, REPA {'on' if model.use_repa else 'off'} |",
             f"| sampler | {sample.sampling_method}, {sample.num_sampling_steps} grid points, guidance scale "
             f"{sample.cfg_scale}{', AutoGuidance guide in guide/' if guided else ''} |"]
    if scores:
        lines += ["", "## Scores", "", "```json", json.dumps(scores, indent=1), "```"]
    return "\n".join(lines) + "\n"
