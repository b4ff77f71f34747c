"""OpenAI's ADM evaluation suite (FID, sFID, Inception Score, Precision, Recall) in PyTorch, end to end.

``evaluate(reference, sample, network)`` follows guided-diffusion ``evaluations/evaluator.py``
(docs/evaluator.md §2): activations of the reference batch (always — Precision/Recall need its images) and of the sample
batch, 64 images at a time; statistics read from a file's ``mu``/``sigma``/``mu_s``/``sigma_s`` when it has ``mu``,
computed from its activations otherwise (docs/evaluator.md §3.2); then IS on the samples, FID, sFID, Precision and
Recall. The five result lines are printed exactly as ADM prints them (``print(label, value)``); its status lines and the
progress bars go to stderr, and a JSON report is written atomically. The feature network is pluggable: any callable
mapping uint8 images [N, 3, H, W] to :class:`~sfd.evaluation.inception.InceptionFeatures` (tests use a tiny random one).

Reference activations are cached in ``cache_dir`` under the reference file's SHA-256 and the network's identity
(the weights' SHA-256), so the 10,000-image forward pass runs once per reference and network.

``fd_dinov2(reference, sample, network)`` computes FD_DINOv2 (docs/evaluator.md §13) with the same image reader, feed
loop and cache; ``main`` adds its line after ADM's five with ``--fd-dinov2``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import scipy
import torch
from tqdm import tqdm

from sfd.cli import make_parser
from sfd.device import DeviceError, default_device
from sfd.evaluation import dinov2
from sfd.evaluation.inception import WEIGHTS_ENV, WEIGHTS_SHA256, InceptionFeatures, load_inception
from sfd.evaluation.metrics import (
    PR_MODES,
    FeatureStatistics,
    feature_statistics,
    frechet_distance,
    full_fp32,
    inception_score,
    precision_recall,
    softmax_float32,
)
from sfd.evaluation.npz import NPZ_BATCH, images_shape, iter_images, load_npz_statistics
from sfd.files import atomic_path, file_sha256, write_json_atomic

DEFAULT_CACHE_DIR = Path("outputs/eval_cache")
CONVENTIONAL_SAMPLES = 50_000  # ADM numbers are FID-50K; other counts are not comparable (docs/evaluator.md §10.3)
RESULT_LABELS = ("Inception Score", "FID", "sFID", "Precision", "Recall")
FD_DINOV2_LABEL = "FD_DINOv2"


class FeatureNetwork(Protocol):
    def __call__(self, images: torch.Tensor) -> InceptionFeatures: ...


# Any network the feed loop runs: taps in a dataclass of tensors (the Inception's) or one feature tensor (DINOv2's).
AnyNetwork = Callable[[torch.Tensor], InceptionFeatures | torch.Tensor]


@dataclass
class Activations:
    """Features of one image set in file order, float32: pool [N, 2048], spatial [N, 2023], logits [N, 1008]."""

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray


@dataclass
class Results:
    """The five numbers, with ADM's types: IS a float made from float32, FID/sFID float64, P/R float64 means."""

    inception_score: float
    fid: float
    sfid: float
    precision: float
    recall: float

    def lines(self) -> list[str]:
        """ADM's stdout result lines, ``print(label, value)``: 'Inception Score: 215.8370361328125', ..."""
        values = (self.inception_score, self.fid, self.sfid, self.precision, self.recall)
        return [f"{label}: {value}" for label, value in zip(RESULT_LABELS, values)]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def network_outputs(network: AnyNetwork, source: str | Path, device: str | torch.device = "cpu",
                    batch_size: int = NPZ_BATCH, desc: str = "") -> dict[str, np.ndarray]:
    """Run ``network`` over every image of an ADM ``.npz`` or PNG folder, ``batch_size`` at a time, in file order;
    uint8 NHWC batches are permuted to NCHW and fed without any other preprocessing (docs/evaluator.md §9.3). Returns
    each output as float32 [N, ...]: the fields of a dataclass output by name, a single tensor as ``features``."""
    count = images_shape(source)[0]
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad(), full_fp32():
        for batch in tqdm(iter_images(source, batch_size), total=math.ceil(count / batch_size), desc=desc,
                          unit="batch", file=sys.stderr, leave=False):
            for name, array in feed(network, batch, device).items():
                parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def feed(network: AnyNetwork, images: np.ndarray, device: str | torch.device) -> dict[str, np.ndarray]:
    """One batch of uint8 NHWC images through ``network`` (permuted to NCHW, no other preprocessing): each output as
    float32 on the CPU — the fields of a dataclass output by name, a single tensor as ``features``. Call it under
    ``torch.no_grad()`` and :func:`~sfd.evaluation.metrics.full_fp32`, as :func:`network_outputs` does."""
    output = network(torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2))
    named = ({"features": output} if isinstance(output, torch.Tensor)
             else {field.name: getattr(output, field.name) for field in fields(output)})
    return {name: tensor.float().cpu().numpy() for name, tensor in named.items()}


def compute_activations(network: FeatureNetwork, source: str | Path, device: str | torch.device = "cpu",
                        batch_size: int = NPZ_BATCH, desc: str = "") -> Activations:
    """The Inception taps of every image of a batch file or folder, in file order (:func:`network_outputs`)."""
    return Activations(**network_outputs(network, source, device, batch_size, desc))


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)


def cached_reference_outputs(network: AnyNetwork, reference: str | Path, device: str | torch.device,
                             batch_size: int, cache_dir: Optional[Path], network_id: Optional[str],
                             kind: str = "adm_ref") -> tuple[dict[str, np.ndarray], Optional[str], Optional[Path]]:
    """:func:`network_outputs` of the reference, read from / written to ``cache_dir`` as
    ``{kind}_{reference SHA-256}_{network id}.npz`` (16 hex digits each) when both a cache folder and the network's
    identity are given; a PNG folder is never cached. Returns (outputs, the reference's SHA-256 or None, the cache
    file or None)."""
    if cache_dir is None or network_id is None or Path(reference).is_dir():
        return network_outputs(network, reference, device, batch_size, "reference"), None, None
    digest = file_sha256(reference)
    cache = Path(cache_dir) / f"{kind}_{digest[:16]}_{network_id[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return {name: data[name] for name in data.files}, digest, cache
    outputs = network_outputs(network, reference, device, batch_size, "reference")
    _save_npz_atomic(cache, outputs)
    return outputs, digest, cache


def reference_activations(network: FeatureNetwork, reference: str | Path, device: str | torch.device,
                          batch_size: int, cache_dir: Optional[Path], network_id: Optional[str],
                          ) -> tuple[Activations, Optional[str], Optional[Path]]:
    """Activations of the reference batch, through the cache of :func:`cached_reference_outputs`. Returns
    (activations, the reference's SHA-256 or None, the cache file or None)."""
    outputs, digest, cache = cached_reference_outputs(network, reference, device, batch_size, cache_dir, network_id)
    return Activations(**outputs), digest, cache


def batch_statistics(path: str | Path, activations: Activations) -> tuple[FeatureStatistics, FeatureStatistics, str]:
    """(pool_3, spatial) statistics of a batch: the stored ones when the file has ``mu``, else computed from its
    activations (ADM's ``read_statistics``, docs/evaluator.md §3.2; applied to reference and sample alike). Third item:
    'stored' or 'computed'. Never recompute a reference's statistics from its 10,000 images when it stores them."""
    stored = load_npz_statistics(path)
    if stored is not None:
        return stored[0], stored[1], "stored"
    return feature_statistics(activations.pool), feature_statistics(activations.spatial), "computed"


def evaluate(reference: str | Path, sample: str | Path, network: FeatureNetwork, *,
             device: str | torch.device = "cpu", batch_size: int = NPZ_BATCH, pr_mode: str = "tf16",
             cache_dir: Optional[Path] = None, network_id: Optional[str] = None,
             log: Callable[[str], None] = _stderr) -> tuple[Results, dict[str, Any]]:
    """ADM's evaluator (docs/evaluator.md §2) on a reference and a sample batch (``.npz`` or PNG folder). Returns the
    results and a report (results, set sizes, statistics sources, network identity, device, P/R mode, library
    versions)."""
    if pr_mode not in PR_MODES:
        raise ValueError(f"pr_mode must be one of {PR_MODES}, got {pr_mode!r}")
    if isinstance(network, torch.nn.Module):
        network = network.to(device).eval()
    reference_shape, sample_shape = images_shape(reference), images_shape(sample)
    if sample_shape[0] != CONVENTIONAL_SAMPLES:
        log(f"warning: {sample} holds {sample_shape[0]} images; ADM numbers use {CONVENTIONAL_SAMPLES} "
            "(FID, IS splits and P/R change with the count)")
    if sample_shape[1:3] != reference_shape[1:3]:
        log(f"warning: sample images are {sample_shape[1]}x{sample_shape[2]}, reference images "
            f"{reference_shape[1]}x{reference_shape[2]}")

    log("computing reference batch activations...")
    ref_acts, ref_digest, cache = reference_activations(network, reference, device, batch_size, cache_dir, network_id)
    log("computing/reading reference batch statistics...")
    ref_stats, ref_stats_spatial, ref_source = batch_statistics(reference, ref_acts)
    log("computing sample batch activations...")
    sample_acts = compute_activations(network, sample, device, batch_size, "sample")
    log("computing/reading sample batch statistics...")
    sample_stats, sample_stats_spatial, sample_source = batch_statistics(sample, sample_acts)

    log("Computing evaluations...")
    precision, recall = precision_recall(ref_acts.pool, sample_acts.pool, mode=pr_mode, device=device)
    results = Results(
        inception_score=inception_score(softmax_float32(sample_acts.logits)),
        fid=frechet_distance(sample_stats, ref_stats),
        sfid=frechet_distance(sample_stats_spatial, ref_stats_spatial),
        precision=precision, recall=recall)
    report = {
        **asdict(results),
        "reference": str(reference), "reference_sha256": ref_digest, "reference_statistics": ref_source,
        "sample": str(sample), "sample_statistics": sample_source,
        "n_reference": int(reference_shape[0]), "n_sample": int(sample_shape[0]),
        "reference_image_size": list(reference_shape[1:3]), "sample_image_size": list(sample_shape[1:3]),
        "network": network_id, "activation_cache": str(cache) if cache else None,
        "device": str(device), "tf32": False, "pr_mode": pr_mode, "batch_size": batch_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__},
    }
    return results, report


def fd_dinov2(reference: str | Path, sample: str | Path, network: AnyNetwork, *,
              device: str | torch.device = "cpu", batch_size: int = NPZ_BATCH, cache_dir: Optional[Path] = None,
              network_id: Optional[str] = None, log: Callable[[str], None] = _stderr) -> tuple[float, dict[str, Any]]:
    """FD_DINOv2 (docs/evaluator.md §13) between two image sources (``.npz`` or PNG folder): ``network`` maps uint8
    images [N, 3, H, W] to features [N, D] (:class:`~sfd.evaluation.dinov2.DINOv2Features`). Every image of both
    sources is used (a file's stored Inception statistics are not DINOv2 statistics); mean and unbiased covariance of
    the features in float64, as EDM2 accumulates them; the distance is :func:`frechet_distance`. The reference's
    features are cached like the Inception's. Returns the distance and a report."""
    if isinstance(network, torch.nn.Module):
        network = network.to(device).eval()
    log("computing FD_DINOv2 reference activations...")
    reference_features, _, cache = cached_reference_outputs(network, reference, device, batch_size, cache_dir,
                                                            network_id, kind="fd_dinov2_ref")
    log("computing FD_DINOv2 sample activations...")
    sample_features = network_outputs(network, sample, device, batch_size, "sample")
    value = frechet_distance(feature_statistics(sample_features["features"].astype(np.float64)),
                             feature_statistics(reference_features["features"].astype(np.float64)))
    return value, {"fd_dinov2": value, "fd_dinov2_network": network_id,
                   "fd_dinov2_feature_dim": int(sample_features["features"].shape[1]),
                   "fd_dinov2_activation_cache": str(cache) if cache else None}


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a JSON report atomically."""
    return write_json_atomic(path, payload, indent=2)


def default_json_path(sample: str | Path) -> Path:
    """``<sample stem>_adm_eval.json`` beside the sample file or folder."""
    sample = Path(sample)
    return sample.parent / f"{sample.stem if sample.is_file() else sample.name}_adm_eval.json"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        description="ADM evaluation suite (FID, sFID, Inception Score, Precision, Recall) in PyTorch, equivalent to "
                    "guided-diffusion's evaluations/evaluator.py. Prints its five result lines on stdout.")
    parser.add_argument("ref_batch", help="reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("sample_batch", help="sample batch .npz (arr_0 uint8 [N, H, W, 3]) or a folder of PNGs")
    parser.add_argument("--inception-weights", default=None,
                        help=f"local weights-inception-2015-12-05-6726825d.pth (default: ${WEIGHTS_ENV})")
    parser.add_argument("--weights-sha256", action="append", default=None,
                        help="allowed SHA-256 of the weights file (repeatable; default: the standard file's hash)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, npu, cpu (default: "
                                                       "$SFD_DEVICE, else the machine's accelerator, else cpu)")
    parser.add_argument("--batch-size", type=int, default=NPZ_BATCH, help="images per forward pass (ADM: 64)")
    parser.add_argument("--pr-mode", choices=PR_MODES, default="tf16",
                        help="P/R distances: tf16 emulates ADM's float16 path (default), fp32 is exact float32")
    parser.add_argument("--json", default=None, help="report path (default: <sample>_adm_eval.json beside it)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="reference activation cache folder")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the activation cache")
    parser.add_argument("--fd-dinov2", action="store_true",
                        help="also compute FD_DINOv2 (DINOv2 ViT-L/14 features, EDM2's protocol) and print it after "
                             "ADM's five lines")
    parser.add_argument("--dinov2-weights", default=None,
                        help=f"local {dinov2.WEIGHTS_FILE} for --fd-dinov2 (default: ${dinov2.WEIGHTS_ENV})")
    return parser


def main(argv: Optional[list[str]] = None, network: Optional[FeatureNetwork] = None,
         network_id: Optional[str] = None, dinov2_network: Optional[AnyNetwork] = None,
         dinov2_id: Optional[str] = None) -> int:
    """CLI entry point. ``network``/``network_id`` replace the Inception weights, ``dinov2_network``/``dinov2_id`` the
    DINOv2 weights of ``--fd-dinov2`` (tests, other feature nets)."""
    args = build_parser().parse_args(argv)
    weights = dinov2_weights = None
    cache_dir = None if args.no_cache else Path(args.cache_dir)
    try:
        device = default_device(args.device)
        if network is None:
            network, network_id = load_inception(args.inception_weights, args.weights_sha256 or (WEIGHTS_SHA256,),
                                                  device)
            weights = args.inception_weights or os.environ.get(WEIGHTS_ENV)
        if args.fd_dinov2 and dinov2_network is None:  # loaded before the ADM pass, so a missing file fails at once
            dinov2_network, dinov2_id = dinov2.load_dinov2_features(args.dinov2_weights, device)
            dinov2_weights = args.dinov2_weights or os.environ.get(dinov2.WEIGHTS_ENV)
        results, report = evaluate(args.ref_batch, args.sample_batch, network, device=device,
                                   batch_size=args.batch_size, pr_mode=args.pr_mode, cache_dir=cache_dir,
                                   network_id=network_id)
        if args.fd_dinov2:
            fd, fd_report = fd_dinov2(args.ref_batch, args.sample_batch, dinov2_network, device=device,
                                      batch_size=args.batch_size, cache_dir=cache_dir, network_id=dinov2_id)
            report.update(fd_report, dinov2_weights=dinov2_weights)
    except (ValueError, DeviceError) as error:  # bad inputs, missing/unknown weights (InceptionWeightsError and
        # DINOv2WeightsError are ValueErrors), a device that cannot be used
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in results.lines():
        print(line, flush=True)
    if args.fd_dinov2:
        print(f"{FD_DINOV2_LABEL}: {fd}", flush=True)
    report["inception_weights"] = weights
    _stderr(f"wrote {write_json(args.json or default_json_path(args.sample_batch), report)}")
    return 0
