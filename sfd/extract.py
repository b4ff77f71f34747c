"""ImageNet-style images → latent shards in the release's format (:mod:`sfd.data.shards`, docs/formats.md §1).

Differences from the release, none of which changes the format: shard k holds the images [k·S, (k+1)·S) of the
sorted image list and is written by process k mod W, so no image is duplicated (the release's DistributedSampler
repeats image 0) and the same shards come out for any number of processes; the posterior noise of image i comes
from a generator seeded by (seed, i), so latents do not depend on batch size or world size; completed shards are
skipped on rerun and every file is written to a temporary name first. The statistics files are computed once, by
one process, from a seeded random subset (:func:`sfd.data.shards.compute_stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from sfd.data.images import ImageItem, load_image
from sfd.data.shards import LATENT_KEYS, save_shard, shard_name
from sfd.rng import derive_seed
from sfd.tokenizers.dinov2 import PatchFeatureEncoder, extraction_preprocess, semvae_training_transform, tokens_to_map


def shards_of_rank(num_items: int, shard_size: int, rank: int, world_size: int) -> list[range]:
    """Image index ranges of the shards process ``rank`` writes (shard k goes to process k mod W)."""
    num_shards = math.ceil(num_items / shard_size)
    return [range(k * shard_size, min((k + 1) * shard_size, num_items)) for k in range(rank, num_shards, world_size)]


def image_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of image ``index``: its posterior noise is the same for any batch size or process count."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, index))


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
        save_shard(encode_shard(shard), path,
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


