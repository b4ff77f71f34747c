"""The latent dataset: lazily read shards → normalised [texture, semantic] latents, labels and REPA targets.

Per item (docs/method.md §2.3; docs/formats.md §3): pick the unflipped or the mirrored keys with p = 0.5 (one
choice for texture, semantics and DINOv2 features), standardise texture and semantic latents with their own
per-channel statistics, concatenate texture first and multiply by ``latent_multiplier``. The flip is drawn from a
generator seeded by (seed, epoch, index), so an epoch's data is reproducible whatever the worker layout.

Opening a folder reads every shard's header (not its tensors) and the statistics files, and checks them against
each other before any item is read: a truncated shard, a missing key, shards of two kinds, or statistics of another
channel count raise a one-line :class:`sfd.data.shards.ShardError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from sfd.data.shards import (
    STATS_FILES,
    ShardError,
    check_latent_shard,
    check_shards_agree,
    read_shard_header,
    read_stats,
    shard_files,
)
from sfd.rng import derive_seed


@dataclass
class LatentItem:
    latent: torch.Tensor  # [C_tex + C_sem, H, W] normalised, texture channels first
    label: int
    dino: Optional[torch.Tensor]  # [D, H, W] float32, unnormalised (None when the shards have no features)


def load_stats(data_dir: str | Path, key: str, channels: Optional[int] = None,
               channels_of: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [1, C, 1, 1] of ``latents`` or ``latents_sv`` from the shard folder, checked by
    :func:`sfd.data.shards.read_stats`; with ``channels``, C must equal it (``channels_of`` names where that count
    comes from, for the message)."""
    path = Path(data_dir) / STATS_FILES[key]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: latent statistics missing; copy the released file or run "
                                "scripts/extract_latents.py --stats-only on this folder")
    mean, std = read_stats(path)
    if channels is not None and mean.shape[1] != channels:
        expected = f"{channels_of} has {channels}" if channels_of else f"{channels} are expected"
        raise ShardError(f"{path}: statistics of {mean.shape[1]} channels, but {expected} "
                         "(statistics of another latent folder?)")
    return mean, std


class LatentShardDataset(Dataset):
    def __init__(
        self,
        data_dir: str | Path,
        *,
        latent_norm: bool,  # data.latent_norm (the trainer passes the config's values; there are no defaults here)
        latent_sv_norm: bool,  # data.latent_sv_norm
        latent_multiplier: float,  # data.latent_multiplier
        semantic: bool,  # False: texture latents only (the LightningDiT baseline)
        with_dino: bool,  # return the REPA target features (when the shards hold them)
        flip_prob: float,
        seed: int,
        stats_dir: Optional[str | Path] = None,  # where the statistics files are (default: data_dir)
    ) -> None:
        self.data_dir = Path(data_dir)
        stats_dir = Path(stats_dir) if stats_dir is not None else self.data_dir
        self.files = shard_files(self.data_dir)
        self.latent_multiplier = latent_multiplier
        self.semantic = semantic
        self.flip_prob = flip_prob
        self.seed = seed
        self.epoch = 0
        # Every check below reads safetensors headers only, so a bad folder fails here, before training or sampling.
        headers = [read_shard_header(path) for path in self.files]
        dino_keys = ["feats_dino", "feats_dino_flip"]
        self.with_dino = with_dino and all(key in header.shapes for header in headers for key in dino_keys)
        keys = ["latents", "latents_flip", "labels"]
        keys += ["latents_sv", "latents_sv_flip"] if semantic else []
        keys += dino_keys if self.with_dino else []
        self.counts = [check_latent_shard(header, keys) for header in headers]
        check_shards_agree(headers, keys)
        self.starts = torch.tensor([0] + self.counts).cumsum(0)
        first = headers[0]
        self.texture_chans = first.shapes["latents"][1]
        self.semantic_chans = first.shapes["latents_sv"][1] if semantic else 0
        self.texture_stats = (load_stats(stats_dir, "latents", self.texture_chans, f"'latents' of {first.path}")
                              if latent_norm else None)
        self.semantic_stats = (load_stats(stats_dir, "latents_sv", self.semantic_chans, f"'latents_sv' of {first.path}")
                               if semantic and latent_sv_norm else None)
        self._handles: dict[Path, object] = {}

    @property
    def channels(self) -> int:
        """Channels of an item's latent (texture then semantic), known from the shard headers."""
        return self.texture_chans + self.semantic_chans

    def set_epoch(self, epoch: int) -> None:
        """A new flip draw per epoch (call from the training loop)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def _read(self, path: Path, key: str, row: int) -> torch.Tensor:
        return self._handle(path).get_slice(key)[row: row + 1][0]

    def flipped(self, index: int, epoch: Optional[int] = None) -> bool:
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
        return bool(torch.rand((), generator=generator) < self.flip_prob)

    def __getitem__(self, key: int | tuple[int, int]) -> LatentItem:
        """Item ``key`` = index, or (index, epoch) so that samplers in DataLoader workers choose the epoch's flip."""
        index, epoch = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        shard = int(torch.searchsorted(self.starts, torch.tensor(index), right=True)) - 1
        path, row = self.files[shard], index - int(self.starts[shard])
        suffix = "_flip" if self.flipped(index, epoch) else ""
        texture = self._read(path, "latents" + suffix, row).float()
        if self.texture_stats is not None:
            texture = (texture - self.texture_stats[0][0]) / self.texture_stats[1][0]
        parts = [texture]
        if self.semantic:
            semantic = self._read(path, "latents_sv" + suffix, row).float()
            if self.semantic_stats is not None:
                semantic = (semantic - self.semantic_stats[0][0]) / self.semantic_stats[1][0]
            parts.append(semantic)
        latent = torch.cat(parts) * self.latent_multiplier
        dino = self._read(path, "feats_dino" + suffix, row).float() if self.with_dino else None
        return LatentItem(latent=latent, label=int(self._read(path, "labels", row)), dino=dino)

    def __getstate__(self) -> dict:
        # Open file handles do not cross process boundaries (DataLoader workers reopen them).
        return {**self.__dict__, "_handles": {}}


class InMemoryLatents:
    """The fast path for latents that fit in memory (``data.in_memory``): every shard of a
    :class:`LatentShardDataset` read once, normalised once for both flip states, and held as tensors (on the
    training device when given), so a batch is two gathers and one ``torch.where`` instead of per-item shard reads.

    A batch equals ``collate_latents`` of the dataset's items bit for bit: the flip of each item comes from the
    dataset's own (seed, epoch, index) draw and the normalisation is the same element-wise arithmetic."""

    def __init__(self, dataset: LatentShardDataset, device: torch.device | str = "cpu") -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.latents = [self._normalised(dataset, suffix) for suffix in ("", "_flip")]
        self.labels = self._gather(dataset, "labels").long().to(self.device)
        self.dino = ([self._gather(dataset, "feats_dino" + suffix).float().to(self.device)
                      for suffix in ("", "_flip")] if dataset.with_dino else None)

    def _normalised(self, dataset: LatentShardDataset, suffix: str) -> torch.Tensor:
        texture = self._gather(dataset, "latents" + suffix).float()
        if dataset.texture_stats is not None:
            texture = (texture - dataset.texture_stats[0]) / dataset.texture_stats[1]
        parts = [texture]
        if dataset.semantic:
            semantic = self._gather(dataset, "latents_sv" + suffix).float()
            if dataset.semantic_stats is not None:
                semantic = (semantic - dataset.semantic_stats[0]) / dataset.semantic_stats[1]
            parts.append(semantic)
        return (torch.cat(parts, dim=1) * dataset.latent_multiplier).to(self.device)

    @staticmethod
    def _gather(dataset: LatentShardDataset, key: str) -> torch.Tensor:
        return torch.cat([dataset._handle(path).get_tensor(key) for path in dataset.files])

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(latents, labels, dino) of the (index, epoch) keys a :class:`sfd.train.StepBatchSampler` yields."""
        index = torch.tensor([key[0] for key in keys], dtype=torch.int64)
        if len(index) and not (0 <= int(index.min()) and int(index.max()) < len(self)):
            raise IndexError(f"indices {int(index.min())}..{int(index.max())} out of range for {len(self)} latents")
        flip = torch.tensor([self.dataset.flipped(i, epoch) for i, epoch in keys], dtype=torch.bool)
        index, flip = index.to(self.device), flip.to(self.device)[:, None, None, None]
        latents = torch.where(flip, self.latents[1][index], self.latents[0][index])
        dino = torch.where(flip, self.dino[1][index], self.dino[0][index]) if self.dino is not None else None
        return latents, self.labels[index], dino


def collate_latents(items: list[LatentItem]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Batch of (latents [B, C, H, W], labels [B], dino [B, D, H, W] or None)."""
    latents = torch.stack([item.latent for item in items])
    labels = torch.tensor([item.label for item in items], dtype=torch.int64)
    dino = torch.stack([item.dino for item in items]) if items[0].dino is not None else None
    return latents, labels, dino
