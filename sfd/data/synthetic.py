"""Synthetic latent shards with learnable class structure, for tests, smoke runs and benchmarks (no images needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from sfd.data.shards import compute_stats, save_shard, shard_name


def write_synthetic_shards(
    folder: str | Path,
    num_items: int = 64,
    num_classes: int = 4,
    texture_chans: int = 32,
    semantic_chans: int = 16,
    grid: int = 16,
    dino_dim: int = 768,
    shard_size: int = 32,
    seed: int = 0,
) -> Path:
    """Shards in the extraction format: each class has a smooth random pattern per channel group, items are that
    pattern plus noise (the semantic pattern is a coarse version of the class, the DINOv2 map a projection of it),
    and the statistics files. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    def smooth(chans: int) -> torch.Tensor:
        coarse = torch.randn(num_classes, chans, 4, 4, generator=generator)
        return torch.nn.functional.interpolate(coarse, size=(grid, grid), mode="bilinear", align_corners=False)

    texture_means, semantic_means = 2 * smooth(texture_chans), 2 * smooth(semantic_chans)
    projection = torch.randn(dino_dim, semantic_chans, generator=generator) / semantic_chans**0.5
    labels = torch.arange(num_items) % num_classes
    for shard, start in enumerate(range(0, num_items, shard_size)):
        rows = labels[start: start + shard_size]
        tensors = {"labels": rows.clone()}
        for suffix in ("", "_flip"):
            texture = texture_means[rows] + 0.3 * torch.randn(len(rows), texture_chans, grid, grid, generator=generator)
            semantic = semantic_means[rows] + 0.3 * torch.randn(len(rows), semantic_chans, grid, grid,
                                                                generator=generator)
            if suffix:
                texture, semantic = texture.flip(-1), semantic.flip(-1)
            tensors["latents" + suffix] = texture
            tensors["latents_sv" + suffix] = semantic
            tensors["feats_dino" + suffix] = torch.einsum("dc,nchw->ndhw", projection, semantic).half()
        save_shard(tensors, folder / shard_name(shard))
    compute_stats(folder, seed=seed)
    return folder
