"""Pictures of latents and samples: PCA of feature maps to RGB, image grids, atomic PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sfd.files import atomic_path


def pca_rgb(maps: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Project channel vectors of ``maps`` [N, C, H, W] on their first three principal components (fitted jointly
    over every pixel of every map, so colours are comparable across the batch) → uint8 [N, size, size, 3]."""
    n, c, h, w = maps.shape
    pixels = maps.permute(0, 2, 3, 1).reshape(-1, c).double()
    pixels = pixels - pixels.mean(0)
    _, _, basis = torch.linalg.svd(pixels, full_matrices=False)
    components = min(3, basis.shape[0])
    projected = pixels @ basis[:components].T
    if components < 3:
        projected = torch.cat([projected, projected.new_zeros(len(projected), 3 - components)], dim=1)
    low, high = projected.quantile(0.01, dim=0), projected.quantile(0.99, dim=0)
    scaled = ((projected - low) / (high - low).clamp(min=1e-8)).clamp(0, 1)
    image = scaled.reshape(n, h, w, 3).permute(0, 3, 1, 2).float()
    if size is not None and size != h:
        image = F.interpolate(image, size=(size, size), mode="nearest")
    return (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def image_grid(images: torch.Tensor | np.ndarray, columns: int, padding: int = 2) -> np.ndarray:
    """uint8 [N, H, W, 3] → one uint8 grid image with ``columns`` columns and white padding."""
    images = np.asarray(images)
    n, h, w, channels = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, channels), 255, np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        top, left = padding + row * (h + padding), padding + col * (w + padding)
        grid[top: top + h, left: left + w] = image
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 array as PNG under a temporary name, then rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array)).save(tmp, format="PNG")
    return path


def line_plot(path: Path, series: dict[str, tuple], xlabel: str, ylabel: str, title: str) -> Path:
    """One line per series {label: (x, y)} or {label: (x, y, error)} (error bars), written as a PNG under a temporary
    name, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (x, y, *error) in series.items():
        marker = "o" if len(x) < 20 else None
        if error and any(value > 0 for value in error[0]):
            axis.errorbar(x, y, yerr=error[0], marker=marker, capsize=3, label=label)
        else:
            axis.plot(x, y, marker=marker, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
