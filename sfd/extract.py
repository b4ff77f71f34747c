"""ImageNet-style images → latent shards in the release's format (docs/formats.md §1), and their statistics.

Each shard is a safetensors file with, for N images:

| key | dtype | shape |
|---|---|---|
| latents, latents_flip | float32 | [N, 32, 16, 16] texture-VAE posterior samples of the image and its mirror |
| latents_sv, latents_sv_flip | float32 | [N, 16, 16, 16] SemVAE posterior samples (channels-first token grid) |
| feats_dino, feats_dino_flip | float16 | [N, 768, 16, 16] DINOv2 patch tokens, channels-first (REPA targets) |
| labels | int64 | [N] |

Differences from the release, none of which changes the format: shard k holds the images [k·S, (k+1)·S) of the
sorted image list and is written by process k mod W, so no image is duplicated (the release's DistributedSampler
repeats image 0) and the same shards come out for any number of processes; the posterior noise of image i comes
from a generator seeded by (seed, i), so latents do not depend on batch size or world size; completed shards are
skipped on rerun and every file is written to a temporary name first. The statistics files are computed once, by
one process, from a seeded random subset.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sfd.data.images import ImageItem, load_image
from sfd.tokenizers.dinov2 import PatchFeatureEncoder, extraction_preprocess, semvae_training_transform, tokens_to_map

LATENT_KEYS = ("latents", "latents_flip", "latents_sv", "latents_sv_flip", "feats_dino", "feats_dino_flip", "labels")
FEATURE_KEYS = ("patch_tokens", "labels")
STATS_FILES = {"latents": "latents_stats.pt", "latents_sv": "latents_sv_stats.pt"}


def shard_name(index: int, prefix: str = "latents") -> str:
    return f"{prefix}_shard{index:06d}.safetensors"


def shards_of_rank(num_items: int, shard_size: int, rank: int, world_size: int) -> list[range]:
    """Image index ranges of the shards process ``rank`` writes (shard k goes to process k mod W)."""
    num_shards = math.ceil(num_items / shard_size)
    return [range(k * shard_size, min((k + 1) * shard_size, num_items)) for k in range(rank, num_shards, world_size)]


def image_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of image ``index``: its posterior noise is the same for any batch size or process count."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: Optional[dict] = None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@dataclass
class LatentEncoders:
    """The three tokenizers of the composite latent (any modules with these interfaces)."""

    texture_vae: nn.Module  # encode(images in [-1, 1]) -> DiagonalGaussian
    semvae: nn.Module  # posterior(tokens [B, L, D]) -> DiagonalGaussian over [B, C, h, w]
    dino: PatchFeatureEncoder  # preprocessed images -> [B, L, D]
    # The texture VAE's input in [-1, 1] -> the feature encoder's input (the release's DINOv2 path by default).
    preprocess: Callable[[torch.Tensor], torch.Tensor] = extraction_preprocess

    @torch.no_grad()
    def encode(self, images: torch.Tensor, indices: Sequence[int], seed: int) -> dict[str, torch.Tensor]:
        """Every shard key but ``labels`` for a batch of images in [-1, 1], unflipped and mirrored."""
        out: dict[str, torch.Tensor] = {}
        generators = [image_generator(seed, index, images.device) for index in indices]
        for suffix, batch in (("", images), ("_flip", images.flip(-1))):
            texture = self.texture_vae.encode(batch)
            tokens = self.dino(self.preprocess(batch))
            semantic = self.semvae.posterior(tokens)
            # Per-image noise, drawn in a fixed order (texture, then semantic; unflipped, then mirrored).
            out["latents" + suffix] = texture.sample(noise=_per_image_noise(texture.mean, generators))
            out["latents_sv" + suffix] = semantic.sample(noise=_per_image_noise(semantic.mean, generators))
            out["feats_dino" + suffix] = tokens_to_map(tokens).half()
        return out


def _per_image_noise(like: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                        for g in generators])


def _batches(indices: range, batch_size: int) -> Iterable[range]:
    for start in range(indices.start, indices.stop, batch_size):
        yield range(start, min(start + batch_size, indices.stop))


def write_missing_shards(
    num_items: int,
    output_dir: str | Path,
    prefix: str,
    encode_shard: Callable[[range], dict[str, torch.Tensor]],
    *,
    shard_size: int,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Path]:
    """Write this process's shards that do not exist yet (shard k = items [k·S, (k+1)·S), process k mod W);
    ``encode_shard`` returns a shard's tensors. Returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for shard in shards_of_rank(num_items, shard_size, rank, world_size):
        path = output_dir / shard_name(shard.start // shard_size, prefix)
        if path.exists():
            progress(len(shard))
            continue
        atomic_save_file(encode_shard(shard), path,
                         metadata={"total_size": str(len(shard)), "first_index": str(shard.start)})
        written.append(path)
    return written


def extract_latents(
    items: Sequence[ImageItem],
    encoders: LatentEncoders,
    output_dir: str | Path,
    *,
    image_size: int = 256,
    batch_size: int = 20,
    shard_size: int = 1000,
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] = lambda n: None,
) -> list[Path]:
    """Write this process's missing latent shards; return the paths it wrote."""

    def encode_shard(shard: range) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in LATENT_KEYS}
        for batch in _batches(shard, batch_size):
            images = torch.stack([load_image(items[i].path, image_size) for i in batch]).to(device)
            for key, value in encoders.encode(images, batch, seed).items():
                parts[key].append(value.cpu())
            parts["labels"].append(torch.tensor([items[i].label for i in batch], dtype=torch.int64))
            progress(len(batch))
        return {key: torch.cat(values) for key, values in parts.items()}

    return write_missing_shards(len(items), output_dir, "latents", encode_shard, shard_size=shard_size, rank=rank,
                                world_size=world_size, progress=progress)


@torch.no_grad()
def extract_dino_features(
    items: Sequence[ImageItem],
    dino: PatchFeatureEncoder,
    output_dir: str | Path,
    *,
    batch_size: int = 64,
    shard_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] = lambda n: None,
) -> list[Path]:
    """DINOv2 patch tokens for SemVAE training (the release's SemVAE-training preprocessing, docs/formats.md §4.2), in
    shards with ``patch_tokens`` float16 [N, L, D] and ``labels``."""
    from PIL import Image

    transform = semvae_training_transform()

    def encode_shard(shard: range) -> dict[str, torch.Tensor]:
        tokens, labels = [], []
        for batch in _batches(shard, batch_size):
            images = []
            for i in batch:
                with Image.open(items[i].path) as image:
                    images.append(transform(image.convert("RGB")))
            tokens.append(dino(torch.stack(images).to(device)).half().cpu())
            labels.append(torch.tensor([items[i].label for i in batch], dtype=torch.int64))
            progress(len(batch))
        return {"patch_tokens": torch.cat(tokens), "labels": torch.cat(labels)}

    return write_missing_shards(len(items), output_dir, "features", encode_shard, shard_size=shard_size, rank=rank,
                                world_size=world_size, progress=progress)


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
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        torch.save({"mean": mean.float(), "std": std.float()}, tmp)
        os.replace(tmp, target)
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
