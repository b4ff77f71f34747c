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

Readers check what they open and report a truncated or foreign file, a missing key, a misshapen tensor or statistics
of the wrong size as a :class:`ShardError`: one line that starts with the file's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sfd.checkpoint import describe_read_error
from sfd.files import atomic_path

LATENT_KEYS = ("latents", "latents_flip", "latents_sv", "latents_sv_flip", "feats_dino", "feats_dino_flip", "labels")
FEATURE_KEYS = ("patch_tokens", "labels")
STATS_FILES = {"latents": "latents_stats.pt", "latents_sv": "latents_sv_stats.pt"}

# safetensors dtype names, as the header stores them.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
INTEGER_DTYPES = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"})


class ShardError(ValueError):
    """A shard or statistics file that cannot be read or does not fit the others; the message is one line that
    starts with the file's path."""


@dataclass(frozen=True)
class ShardHeader:
    """What a safetensors file's header says about its tensors (read without loading any of them)."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # safetensors names: "F32", "F16", "I64", ...

    def describe(self, key: str) -> str:
        return f"{key} {self.dtypes[key]} {list(self.shapes[key])}"


def read_shard_header(path: str | Path) -> ShardHeader:
    """The keys, shapes and dtypes of a safetensors file. Only the header is read (safetensors also checks that it
    covers the whole file, so a truncated shard fails here)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            return ShardHeader(path, {key: tuple(s.get_shape()) for key, s in slices.items()},
                               {key: s.get_dtype() for key, s in slices.items()})
    except Exception as error:  # SafetensorError (truncated, random bytes), OSError (unreadable)
        raise ShardError(f"{path}: cannot be read as a safetensors shard ({describe_read_error(error)})") from None


def check_latent_shard(header: ShardHeader, keys: Sequence[str]) -> int:
    """Number of items in a latent shard, after checking that it holds every one of ``keys`` (a subset of
    LATENT_KEYS) with the format's layout: ``labels`` integer [N], the others floating point [N, C, H, W], one N
    for all, a mirrored key shaped like its unflipped one, the semantic grid equal to the texture grid."""
    path, shapes = header.path, header.shapes
    missing = [key for key in keys if key not in shapes]
    if missing:
        raise ShardError(f"{path}: shard has no '{missing[0]}' (has {', '.join(sorted(shapes)) or 'nothing'})")
    for key in keys:
        rank, kinds = (1, INTEGER_DTYPES) if key == "labels" else (4, FLOAT_DTYPES)
        if len(shapes[key]) != rank or header.dtypes[key] not in kinds:
            layout = "integer [N]" if key == "labels" else "floating-point [N, C, H, W]"
            raise ShardError(f"{path}: {header.describe(key)} is not {layout}")
    if len({shapes[key][0] for key in keys}) > 1:
        raise ShardError(f"{path}: keys disagree on the number of items: "
                         + ", ".join(f"{key} {list(shapes[key])}" for key in keys))
    for key in keys:
        flipped = key + "_flip"
        if flipped in keys and shapes[flipped] != shapes[key]:
            raise ShardError(f"{path}: {key} {list(shapes[key])} and {flipped} {list(shapes[flipped])} differ in shape")
    if "latents_sv" in keys and "latents" in keys and shapes["latents_sv"][2:] != shapes["latents"][2:]:
        raise ShardError(f"{path}: latents_sv grid {list(shapes['latents_sv'][2:])} differs from the texture grid "
                         f"{list(shapes['latents'][2:])}")
    return shapes[keys[0]][0] if keys else 0


def check_shards_agree(headers: Sequence[ShardHeader], keys: Sequence[str]) -> None:
    """Every shard stores each of ``keys`` with the first shard's per-item shape and dtype (a folder mixing
    latents of two tokenizers would otherwise fail mid-epoch, or be concatenated into nonsense)."""
    first = headers[0]
    for header in headers[1:]:
        for key in keys:
            if header.shapes[key][1:] != first.shapes[key][1:] or header.dtypes[key] != first.dtypes[key]:
                raise ShardError(f"{header.path}: {header.describe(key)} does not match {first.describe(key)} in "
                                 f"{first.path.name} (one folder must hold latents of one kind)")


def read_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 [1, C, 1, 1] from a statistics file, loaded weights-only (no arbitrary pickled objects),
    after checking both are there, have that shape, are finite, and that every std is positive."""
    path = Path(path)
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # random bytes, truncated zip, pickled objects that are not tensors
        raise ShardError(f"{path}: cannot be read as a statistics file ({describe_read_error(error)})") from None
    expected = "expected {'mean', 'std'} tensors of shape [1, C, 1, 1]"
    if not isinstance(stats, dict):
        raise ShardError(f"{path}: holds a {type(stats).__name__}; {expected}")
    for name in ("mean", "std"):
        if not isinstance(stats.get(name), torch.Tensor):
            raise ShardError(f"{path}: no '{name}' tensor ({expected})")
    mean, std = stats["mean"].float(), stats["std"].float()
    if mean.dim() != 4 or (mean.shape[0], mean.shape[2], mean.shape[3]) != (1, 1, 1) or std.shape != mean.shape:
        raise ShardError(f"{path}: mean {list(mean.shape)} and std {list(std.shape)}; {expected}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ShardError(f"{path}: mean or std has non-finite values or std has values <= 0")
    return mean, std


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
    counts = [check_latent_shard(read_shard_header(path), tuple(STATS_FILES)) for path in files]
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
