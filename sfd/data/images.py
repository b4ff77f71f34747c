"""Image sources for extraction: a folder with one subfolder per class, or a file list; ADM center cropping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageItem:
    path: Path
    label: int


def list_image_folder(root: str | Path) -> tuple[list[ImageItem], list[str]]:
    """Images of ``root/<class>/...`` in ImageFolder order: sorted class folders (label = position), then sorted
    file paths. Returns the items and the class names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    items = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items.extend(ImageItem(path, label) for path in files)
    if not items:
        raise ValueError(f"{root}: no images found in the class subfolders")
    return items, classes


def read_file_list(path: str | Path) -> list[ImageItem]:
    """A text file with one ``<image path> <label>`` per line (paths relative to the list's folder allowed)."""
    path = Path(path)
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<image path> <integer label>', got {line!r}")
        image = Path(parts[0])
        items.append(ImageItem(image if image.is_absolute() else path.parent / image, int(parts[1])))
    if not items:
        raise ValueError(f"{path}: the file list is empty")
    return items


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM center crop: halve with BOX while the short side is ≥ 2·size, resize the short side to ``size`` with
    BICUBIC (long side rounded), then crop the center size×size."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return Image.fromarray(array[top: top + size, left: left + size])


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """RGB image → ADM crop → float tensor [3, size, size] in [-1, 1] (the texture VAE's input)."""
    with Image.open(path) as image:
        cropped = center_crop_arr(image.convert("RGB"), size)
    array = torch.from_numpy(np.asarray(cropped).copy()).permute(2, 0, 1).float() / 255.0
    return array * 2 - 1
