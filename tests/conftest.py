"""Shared helpers: golden files (copied from the official-code reference set) and their error metric
(docs/goldens.md §5)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"

# Tolerances of docs/goldens.md §5 (max|ours - golden| / max|golden|).
TOL_FORWARD = 1e-5
TOL_EULER = 1e-4
TOL_DOPRI5 = 1e-3


# A tiny SFD backbone with every architecture field explicit (LightningDiTArgs has no defaults); tests change fields
# with tiny_model_args(**changes).
TINY_MODEL_ARGS = dict(input_size=4, patch_size=1, in_chans=6, hidden_size=16, depth=2, num_heads=2, mlp_ratio=4.0,
                       num_classes=3, class_dropout_prob=0.1, learn_sigma=False, use_qknorm=True, use_swiglu=True,
                       use_rope=True, use_rmsnorm=True, wo_shift=False, use_checkpoint=False, semantic_first=True,
                       repa_target_dim=None, repa_feat_depth=1, repa_projector_dim=8)


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    """A latent folder holding only texture statistics (32 channels), for decoding samples of the tiny models."""
    folder = tmp_path_factory.mktemp("stats")
    torch.save({"mean": 0.1 * torch.ones(1, 32, 1, 1), "std": 0.5 * torch.ones(1, 32, 1, 1)},
               folder / "latents_stats.pt")
    return folder


def load_script(relative: str):
    """Import a command-line script (``scripts/x.py``, ``tools/y.py``) as a module, registered in ``sys.modules`` as
    ``script_<stem>`` (dataclasses in a script resolve their annotations through it)."""
    import importlib.util
    import sys

    name = f"script_{Path(relative).stem}"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_model_args(**changes):
    from sfd.lightningdit import LightningDiTArgs

    return LightningDiTArgs(**{**TINY_MODEL_ARGS, **changes})


def random_tiny_model(**changes):
    """The tiny LightningDiT with weights drawn from N(0, 0.2²) (seed 0), in eval mode: outputs far from zero, so
    sampler tests see every term move."""
    from sfd.lightningdit import LightningDiT

    torch.manual_seed(0)
    model = LightningDiT(tiny_model_args(**changes))
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.2)
    return model.eval()


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


@pytest.fixture
def one_thread():
    """One torch thread (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a busy 2-core machine
    two threads make small ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(folder: Path, prefix: str, count: int, seed: int) -> None:
    """Fashion-MNIST-format files: ten classes of blurry class-dependent shapes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.uint8) % 10
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((count, 28, 28), np.float64)
    for index, label in enumerate(labels):
        cy, cx = 8 + (label % 5) * 3, 8 + (label // 5) * 10
        images[index] = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (10 + 4 * label))
    images = np.clip(images + rng.normal(0, 10, images.shape), 0, 255).astype(np.uint8)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([count, 28, 28], ">i4").tobytes()
                     + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([count], ">i4").tobytes()
                     + labels.tobytes())


@pytest.fixture(scope="session")
def fake_fashion(tmp_path_factory):
    """A small Fashion-MNIST-format dataset (300 training, 150 test images) for the demo pipeline and sweeps."""
    folder = tmp_path_factory.mktemp("fashion")
    write_idx(folder, "train", 300, 0)
    write_idx(folder, "t10k", 150, 1)
    return folder
