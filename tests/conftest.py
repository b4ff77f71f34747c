"""Shared helpers: golden files (copied from the official-code reference set) and the error metric of their README."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"

# Tolerances of the golden README (max|ours - golden| / max|golden|).
TOL_FORWARD = 1e-5
TOL_EULER = 1e-4
TOL_DOPRI5 = 1e-3


def rel_error(ours: torch.Tensor, golden: torch.Tensor) -> float:
    return ((ours.float() - golden.float()).abs().max() / golden.float().abs().max()).item()


def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / f"{name}.safetensors"))


@pytest.fixture(scope="session")
def sfd_tiny():
    import sfd

    return sfd.load_model(DATA / "sfd_tiny.yaml")


@pytest.fixture(scope="session")
def sfd_tiny_guide():
    import sfd

    return sfd.load_model(DATA / "sfd_tiny_guide.yaml")[0]


@pytest.fixture(scope="session")
def baseline_tiny():
    import sfd

    return sfd.load_model(DATA / "baseline_tiny.yaml")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
