"""ADM sample and reference batches: streaming ``arr_0`` reads, stored statistics, atomic sample writes, PNG packing.

Formats (docs/evaluator.md §3): ``arr_0`` holds uint8 RGB images [N, H, W, 3] (NHWC); a sample file may add labels
``arr_1``; a reference file (e.g. ``VIRTUAL_imagenet256_labeled.npz``) adds whole-dataset statistics ``mu``/``sigma``
(pool_3) and ``mu_s``/``sigma_s`` (spatial). ``arr_0`` is streamed 64 images at a time for npy format 1.0/2.0 in C
order, and loaded whole otherwise (docs/evaluator.md §3.1). Unlike ADM, anything but uint8 NHWC RGB is rejected
(docs/evaluator.md §10.5).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional

import numpy as np
from PIL import Image

from sfd.evaluation.metrics import FeatureStatistics
from sfd.files import atomic_path

NPZ_BATCH = 64  # ADM's read batch (docs/evaluator.md §3.1)
STATISTICS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _check_images(source: Path, shape: tuple[int, ...], dtype: np.dtype, key: str = "arr_0") -> None:
    if np.dtype(dtype) != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{source}: {key} must be uint8 RGB images [N, H, W, 3] (NHWC), got {np.dtype(dtype)} "
                         f"{list(shape)}")


def _arr_0_member(archive: zipfile.ZipFile, path: Path) -> str:
    if "arr_0.npy" not in archive.namelist():
        raise ValueError(f"{path}: missing arr_0 in npz file")
    return "arr_0.npy"


def _read_npy_header(handle: IO[bytes]) -> Optional[tuple[tuple[int, ...], bool, np.dtype]]:
    """(shape, fortran_order, dtype) for npy format 1.0 or 2.0; None for other versions (ADM's fallback cases)."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    return None


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None


def _read_exact(handle: IO[bytes], size: int, path: Path) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = handle.read(remaining)
        if not chunk:
            raise ValueError(f"{path}: arr_0 ends {remaining} bytes early (truncated file)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def list_pngs(folder: str | Path) -> list[Path]:
    """The ``.png`` files of a folder in sorted name order (``000000.png``, ``000001.png``, ...); hidden files
    (temporary files of an interrupted writer) are not images of the set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of PNG images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: contains no .png files")
    return files


def read_png(file: Path, expected: Optional[tuple[int, int, int]] = None, like: Optional[Path] = None) -> np.ndarray:
    """One 8-bit RGB PNG as uint8 [H, W, 3]; ``expected`` (with the file it came from) enforces a common size."""
    with Image.open(file) as image:
        if image.mode != "RGB":
            raise ValueError(f"{file}: image mode {image.mode}, expected 8-bit RGB")
        array = np.asarray(image, dtype=np.uint8)
    if expected is not None and array.shape != expected:
        raise ValueError(f"{file}: image is {list(array.shape)}, expected {list(expected)} like {like}")
    return array


def images_shape(source: str | Path) -> tuple[int, int, int, int]:
    """[N, H, W, 3] of an ADM ``.npz`` (from the npy header, without reading the images) or of a PNG folder."""
    source = Path(source)
    if source.is_dir():
        files = list_pngs(source)
        return (len(files), *read_png(files[0]).shape)
    with _open_archive(source) as archive, archive.open(_arr_0_member(archive, source)) as handle:
        header = _read_npy_header(handle)
    if header is None:
        with np.load(source) as data:
            array = data["arr_0"]
        shape, dtype = array.shape, array.dtype
    else:
        shape, _, dtype = header
    _check_images(source, shape, dtype)
    return tuple(shape)


def iter_npz_images(path: str | Path, batch_size: int = NPZ_BATCH) -> Iterator[np.ndarray]:
    """Batches of ``arr_0`` (uint8 [b, H, W, 3]) in file order, streamed from the archive like ADM's reader
    (docs/evaluator.md §3.1): npy 1.0/2.0 in C order is read ``batch_size`` images at a time; other versions or Fortran
    order load whole."""
    path = Path(path)
    with _open_archive(path) as archive, archive.open(_arr_0_member(archive, path)) as handle:
        header = _read_npy_header(handle)
        if header is not None and not header[1]:
            shape, _, dtype = header
            _check_images(path, shape, dtype)
            image_bytes = int(np.prod(shape[1:])) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                count = min(batch_size, shape[0] - start)
                data = bytearray(_read_exact(handle, count * image_bytes, path))
                yield np.frombuffer(data, dtype).reshape(count, *shape[1:])
            return
    with np.load(path) as data:
        images = np.ascontiguousarray(data["arr_0"])
    _check_images(path, images.shape, images.dtype)
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def iter_images(source: str | Path, batch_size: int = NPZ_BATCH) -> Iterator[np.ndarray]:
    """Batches of uint8 [b, H, W, 3] from an ADM ``.npz`` or a folder of same-sized PNGs (sorted names)."""
    source = Path(source)
    if not source.is_dir():
        yield from iter_npz_images(source, batch_size)
        return
    files = list_pngs(source)
    first = read_png(files[0])
    for start in range(0, len(files), batch_size):
        yield np.stack([read_png(f, first.shape, files[0]) for f in files[start:start + batch_size]])


def load_images(path_or_folder: str | Path) -> np.ndarray:
    """All images of an ADM ``.npz`` (``arr_0``) or a PNG folder as one uint8 array [N, H, W, 3]."""
    return np.concatenate(list(iter_images(path_or_folder, batch_size=1024)))


def load_npz_statistics(path: str | Path) -> Optional[tuple[FeatureStatistics, FeatureStatistics]]:
    """Stored (pool_3, spatial) statistics of a batch file as float64, or None when it has no ``mu``
    (docs/evaluator.md §3.2): when ``mu`` is present, ``sigma``, ``mu_s`` and ``sigma_s`` must be too. A PNG folder has
    none."""
    path = Path(path)
    if path.is_dir():
        return None
    with _open_archive(path) as archive:
        names = {name.removesuffix(".npy") for name in archive.namelist()}
    if "mu" not in names:
        return None
    missing = [key for key in STATISTICS_KEYS if key not in names]
    if missing:
        raise ValueError(f"{path}: has 'mu' but lacks {', '.join(missing)} (stored statistics need all of "
                         f"{', '.join(STATISTICS_KEYS)})")
    with np.load(path) as data:
        mu, sigma, mu_s, sigma_s = (np.asarray(data[key], np.float64) for key in STATISTICS_KEYS)
    return FeatureStatistics(mu, sigma), FeatureStatistics(mu_s, sigma_s)


def _write_npz(path: str | Path, shape: tuple[int, ...], batches: Iterable[np.ndarray],
               labels: Optional[np.ndarray]) -> Path:
    """Write ``arr_0`` (uint8 ``shape``) batch by batch, and ``arr_1``, into an uncompressed npz (np.savez's
    layout, npy 1.0 headers) under a temporary name, then rename: constant memory, never half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                              "shape": tuple(shape)})
                written = 0
                for batch in batches:
                    member.write(np.ascontiguousarray(batch, dtype=np.uint8).data)
                    written += len(batch)
            if written != shape[0]:
                raise ValueError(f"{path}: wrote {written} images, expected {shape[0]}")
            if labels is not None:
                with archive.open("arr_1.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(labels))
    return path


def save_sample_npz(path: str | Path, images: np.ndarray, labels: Optional[np.ndarray] = None) -> Path:
    """Write an ADM sample batch atomically: ``arr_0`` = uint8 images [N, H, W, 3], ``arr_1`` = labels [N] when
    given (guided-diffusion's ``np.savez(path, images, labels)`` layout, docs/evaluator.md §3.3)."""
    _check_images(Path(path), images.shape, images.dtype, key="images")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)
                               or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{path}: labels must be integers [N={len(images)}], got {labels.dtype} "
                         f"{list(labels.shape)}")
    batches = (images[start:start + NPZ_BATCH] for start in range(0, len(images), NPZ_BATCH))
    return _write_npz(path, images.shape, batches, labels)


def pack_png_folder(folder: str | Path, path: str | Path, limit: Optional[int] = None) -> Path:
    """Pack a folder of same-sized RGB PNGs (sorted names: ``000000.png``...) into an ADM sample ``.npz``
    (``arr_0`` uint8 NHWC) atomically, one image in memory at a time; ``limit`` keeps the first ``limit`` files.
    A file of another size or mode is an error naming it."""
    files = list_pngs(folder)
    if limit is not None:
        if limit < 1 or limit > len(files):
            raise ValueError(f"{folder}: limit {limit} asked, the folder has {len(files)} .png files")
        files = files[:limit]
    first = read_png(files[0])
    batches = (read_png(f, first.shape, files[0])[None] for f in files)
    return _write_npz(path, (len(files), *first.shape), batches, None)
