"""Fashion-MNIST for the demo: the IDX files from Debian's ``dataset-fashion-mnist`` package (or torchvision's
download when online), seeded subsets, and the 32×32 RGB images the demo's tokenizers take."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        # a writable copy: torch refuses to share memory with a read-only buffer (and warns)
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header).copy()


def load_fashion_mnist(split: str, root: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of ``train`` or ``test`` from Debian's dataset-fashion-mnist,
    else torchvision's download when online; otherwise a message saying how to get it."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = root or DEBIAN_ROOT
    images_file, labels_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_file.exists():
        images_file, labels_file = _torchvision_files(prefix)
    images = _read_idx(images_file, 16).reshape(-1, 28, 28)
    labels = _read_idx(labels_file, 8).astype(np.int64)
    return images, labels


def _torchvision_files(prefix: str) -> tuple[Path, Path]:
    cache = Path("outputs/datasets")
    raw = cache / "FashionMNIST" / "raw"
    if not (raw / f"{prefix}-images-idx3-ubyte.gz").exists():
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(cache), train=True, download=True)
        except Exception as error:  # no network, or torchvision cannot reach its mirrors
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {DEBIAN_ROOT} and not downloadable ({type(error).__name__}); install "
                "it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put the four "
                f"*-ubyte.gz files in {raw}") from None
    return raw / f"{prefix}-images-idx3-ubyte.gz", raw / f"{prefix}-labels-idx1-ubyte.gz"


def to_model_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] → float [N, 3, 32, 32] in [-1, 1] (padded with black, grey replicated to RGB)."""
    tensor = torch.from_numpy(images).float().div(127.5).sub(1.0)
    tensor = F.pad(tensor, (2, 2, 2, 2), value=-1.0)
    return tensor[:, None].expand(-1, 3, -1, -1).contiguous()


def subset(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset (all of it when ``count`` ≥ N)."""
    if count >= len(images):
        return images, labels
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).numpy()
    return images[order[:count]], labels[order[:count]]
