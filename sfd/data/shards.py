"""The latent shard format of the release and its statistics files (docs/formats.md §1, §2).

A folder of latents holds safetensors shards ``latents_shard000000.safetensors``, … and two statistics files. Each
latent shard holds, for N images:

| key | dtype | shape |
|---|---|---|
| latents, latents_flip | float32 | [N, 32, 16, 16] texture-VAE posterior samples of the image and its mirror |
| latents_sv, latents_sv_flip | float32 | [N, 16, 16, 16] semantic posterior samples (channels-first token grid) |
| feats_dino, feats_dino_flip | float16 | [N, 768, 16, 16] DINOv2 patch tokens, channels-first (REPA targets) |
| labels | int64 | [N] |

(the channel counts are those of the release; tiny and demo latents have fewer). ``latents_stats.pt`` and
``latents_sv_stats.pt`` hold per-channel ``mean`` and ``std`` tensors [1, C, 1, 1] of the unflipped latents.
Feature shards for SemVAE training (``features_shard*.safetensors``) hold ``patch_tokens`` and ``labels``.
The writer is :mod:`sfd.extract`; the readers are :mod:`sfd.data.latents` and the PCA fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sfd.files import atomic_path

LATENT_KEYS = ("latents", "latents_flip", "latents_sv", "latents_sv_flip", "feats_dino", "feats_dino_flip", "labels")
FEATURE_KEYS = ("patch_tokens", "labels")
STATS_FILES = {"latents": "latents_stats.pt", "latents_sv": "latents_sv_stats.pt"}


def shard_name(index: int, prefix: str = "latents") -> str:
    return f"{prefix}_shard{index:06d}.safetensors"


def save_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> None:
    with atomic_path(path) as tmp:
        save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, str(tmp), metadata=metadata)


def shard_files(data_dir: str | Path, prefix: str = "latents") -> list[Path]:
    files = sorted(Path(data_dir).glob(f"{prefix}*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no {prefix}*.safetensors shards")
    return files


def compute_stats(data_dir: str | Path, num_samples: int = 10_000, seed: int = 0) -> dict[str, Path]:
    """Per-channel mean and unbiased std over (N, H, W) of ``min(num_samples, N)`` seeded random images, for the
    unflipped texture and semantic latents; written as ``latents_stats.pt`` / ``latents_sv_stats.pt`` with
    [1, C, 1, 1] tensors. Existing files are kept (use the released ones with released models)."""
    data_dir = Path(data_dir)
    files = shard_files(data_dir)
    counts = []
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            counts.append(handle.get_slice("latents").get_shape()[0])
    total = sum(counts)
    written = {}
    for offset, (key, name) in enumerate(STATS_FILES.items()):
        target = data_dir / name
        if target.exists():
            written[key] = target
            continue
        generator = torch.Generator().manual_seed(seed + offset)
        chosen = torch.randperm(total, generator=generator)[: min(num_samples, total)].sort().values
        samples = _gather(files, counts, key, chosen)
        mean = samples.mean(dim=(0, 2, 3), keepdim=True)
        std = samples.std(dim=(0, 2, 3), keepdim=True)  # unbiased, as the release
        with atomic_path(target) as tmp:
            torch.save({"mean": mean.float(), "std": std.float()}, tmp)
        written[key] = target
    return written


def _gather(files: list[Path], counts: list[int], key: str, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` (sorted global positions) of ``key`` across the shards, reading only what is needed."""
    rows, start = [], 0
    for path, count in zip(files, counts):
        local = indices[(indices >= start) & (indices < start + count)] - start
        if len(local):
            with safe_open(str(path), framework="pt") as handle:
                data = handle.get_tensor(key)
            rows.append(data[local])
        start += count
    return torch.cat(rows).double()
