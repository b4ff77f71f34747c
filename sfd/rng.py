"""Seeds and per-sample random generators: determinism by construction.

A draw for sample i depends only on the run seed and i's identity (its global sample index, or the training step
and its position in the global batch), never on how many processes share the work or on the batch size (the idea
of EDM2's ``StackedRandomGenerator``).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (stable across runs, machines and Python versions)."""
    digest = hashlib.sha256(",".join(str(int(part)) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SampleGenerators:
    """One ``torch.Generator`` per batch row; ``randn``/``rand`` draw each row from its own generator."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[len, *shape[1:]] normal draws; ``shape[0]`` must equal the number of rows."""
        self._check(shape)
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        self._check(shape)
        return torch.stack([torch.rand(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per row."""
        return torch.stack([torch.randint(high, (), generator=g, device=self.device) for g in self.generators])

    def _check(self, shape: Sequence[int]) -> None:
        if shape[0] != len(self.generators):
            raise ValueError(f"asked for {shape[0]} rows from {len(self.generators)} per-sample generators")


Generator = Optional[torch.Generator | SampleGenerators]


def randn(generator: Generator, shape: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32):
    """Normal draws from a single generator (or the global RNG) or from per-sample generators."""
    if isinstance(generator, SampleGenerators):
        return generator.randn(shape, dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def rand(generator: Generator, shape: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32):
    if isinstance(generator, SampleGenerators):
        return generator.rand(shape, dtype).to(device)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
