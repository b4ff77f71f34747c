"""Scores of a model's samples without writing them: evaluation during training (``train.eval_every``) and the
width sweep of tools/reconstruct_ema.py.

:class:`SampleScorer` generates ``num_samples`` class-balanced samples with the config's sampler — exactly the
images scripts/sample.py writes for the same settings (sample i seeded by (seed, i), sfd/generate.py) — decodes them
in memory and computes their FID against the reference batch's statistics with the evaluator's network and feed
path, and optionally FD_DINOv2 (docs/evaluator.md §13) against the reference images' DINOv2 features. The
features are computed ``NPZ_BATCH`` images at a time in sample order, as scripts/evaluate.py reads a packed folder,
so on one process the FID equals scripts/evaluate.py's on the same samples (tests/test_sample_scores.py).
Processes share the samples as generation does (batch b on process b mod W) and the main process gathers the
features. Nothing here draws from the global random state, so scoring during training leaves the training's draws,
and therefore its weights, unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from sfd import distributed
from sfd.config import SFDConfig, resolve_path
from sfd.evaluation.adm import (
    DEFAULT_CACHE_DIR,
    AnyNetwork,
    FeatureNetwork,
    cached_reference_outputs,
    feed,
    reference_activations,
)
from sfd.evaluation.inception import load_inception
from sfd.evaluation.metrics import FeatureStatistics, feature_statistics, frechet_distance, full_fp32
from sfd.evaluation.npz import NPZ_BATCH, load_npz_statistics
from sfd.generate import ImageSampler, LabelPlan, LatentDecoder, batches_of_rank


class ScoringError(ValueError):
    """Evaluation settings that cannot work (no reference, a sample count below 2); the message names the key."""


@dataclass
class SampleScorer:
    """FID of ``num_samples`` class-balanced samples of a model against ``reference`` (pool_3 statistics), and
    FD_DINOv2 against ``dinov2_reference`` when a ``dinov2`` network is given.

    ``decode`` turns final latents into uint8 images [N, H, W, 3] (sfd.generate.LatentDecoder), ``network`` maps
    such images (as [N, 3, H, W]) to features (the evaluator's Inception; tests use a tiny one), ``dinov2`` to
    DINOv2 features (sfd.evaluation.dinov2.DINOv2Features), ``guide`` is the AutoGuidance model when the config's
    sampler uses one."""

    config: SFDConfig
    decode: Callable[[torch.Tensor], np.ndarray]
    network: FeatureNetwork
    reference: FeatureStatistics
    num_samples: int
    seed: int = 0
    guide: Optional[nn.Module] = None
    device: torch.device = torch.device("cpu")
    topology: distributed.Topology = field(default_factory=distributed.Topology)
    dinov2: Optional[AnyNetwork] = None
    dinov2_reference: Optional[FeatureStatistics] = None

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ScoringError(f"train.eval_samples: need at least 2 samples for a covariance (got {self.num_samples})")
        if (self.dinov2 is None) != (self.dinov2_reference is None):
            raise ScoringError("dinov2 and dinov2_reference: give both (FD_DINOv2) or neither")

    @classmethod
    def from_config(cls, config: SFDConfig, config_path: Optional[str | Path] = None, *,
                    topology: Optional[distributed.Topology] = None, device: Optional[torch.device] = None,
                    network: Optional[FeatureNetwork] = None, network_id: Optional[str] = None) -> "SampleScorer":
        """The scorer ``train.eval_*`` describe: the reference ``data.fid_reference_file`` (its stored statistics,
        else those of its images, cached like scripts/evaluate.py's), the Inception weights
        ``train.eval_inception_weights`` (default: $INCEPTION_WEIGHTS), with ``train.eval_fd_dinov2`` also the
        DINOv2 ViT-L/14 of ``train.eval_dinov2_weights`` (default: $DINOV2_WEIGHTS) and the reference images'
        features, the texture VAE of ``vae.*``, the guide of ``sample.autoguidance_config`` when AutoGuidance is on,
        ``sample.per_proc_batch_size`` images per batch."""
        from sfd.build import load_guide
        from sfd.tokenizers.texture_vae import load_texture_vae

        topology = topology or distributed.Topology()
        device = device or topology.device
        reference = config.data.fid_reference_file
        if not reference:
            raise ScoringError("data.fid_reference_file: evaluation (train.eval_every) needs a reference batch (.npz "
                               "with images or stored statistics, or a PNG folder)")
        reference_path = resolve_path(reference, config_path)
        if not reference_path.exists():
            raise ScoringError(f"data.fid_reference_file: {reference_path} does not exist")
        if network is None:
            network, network_id = load_inception(config.train.eval_inception_weights, device=device)
        dinov2 = dinov2_reference = None
        if config.train.eval_fd_dinov2:
            from sfd.evaluation.dinov2 import load_dinov2_features

            dinov2, dinov2_id = load_dinov2_features(config.train.eval_dinov2_weights, device)
            outputs, _, _ = cached_reference_outputs(dinov2, reference_path, device, NPZ_BATCH, DEFAULT_CACHE_DIR,
                                                     dinov2_id, kind="fd_dinov2_ref")
            dinov2_reference = feature_statistics(outputs["features"].astype(np.float64))
        vae = load_texture_vae(resolve_path(config.vae.config_path, config_path), device=device)
        return cls(config, LatentDecoder(vae, config, device), network,
                   reference_statistics(network, reference_path, device, network_id), config.train.eval_samples,
                   seed=config.train.global_seed, guide=load_guide(config, config_path, device), device=device,
                   topology=topology, dinov2=dinov2, dinov2_reference=dinov2_reference)

    def features(self, model: nn.Module) -> tuple[dict[str, np.ndarray], float]:
        """Features of this process's samples in sample order (the batches of :func:`batches_of_rank`): ``pool``
        [n, 2048] and, with a DINOv2 network, ``dinov2`` [n, 1024]; and the mean NFE of its batches."""
        sampler = ImageSampler(model, self.config, self.decode, guide=self.guide, device=self.device, seed=self.seed)
        plan = LabelPlan(self.num_samples, self.config.data.num_classes, balanced=True, seed=self.seed)
        features: dict[str, list[np.ndarray]] = {"pool": [], **({"dinov2": []} if self.dinov2 is not None else {})}

        def forward(images: np.ndarray) -> None:  # as scripts/evaluate.py feeds a file's batches
            features["pool"].append(feed(self.network, images, self.device)["pool"])
            if self.dinov2 is not None:
                features["dinov2"].append(feed(self.dinov2, images, self.device)["features"])

        waiting = np.empty((0,), np.uint8)
        with torch.no_grad(), full_fp32():
            for indices in batches_of_rank(self.num_samples, self.config.sample.per_proc_batch_size,
                                           self.topology.rank, self.topology.world_size):
                images = sampler.images(indices, plan.labels(indices))
                waiting = np.concatenate([waiting, images]) if len(waiting) else images
                while len(waiting) >= NPZ_BATCH:  # NPZ_BATCH images per pass, as scripts/evaluate.py reads a file
                    forward(waiting[:NPZ_BATCH])
                    waiting = waiting[NPZ_BATCH:]
            if len(waiting):
                forward(waiting)
        return {name: np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
                for name, parts in features.items()}, sampler.mean_nfe

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """{'fid', ['fd_dinov2'], 'eval_samples', 'eval_nfe', 'eval_seconds'} of ``model`` (in eval mode while
        sampling), the same on every process."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            gathered = distributed.all_gather(self.features(model))
        finally:
            model.train(was_training)
        scores = None
        if self.topology.is_main:
            batch = self.config.sample.per_proc_batch_size
            pool = _in_sample_order([part["pool"] for part, _ in gathered], self.num_samples, batch)
            scores = {"fid": frechet_distance(feature_statistics(pool), self.reference)}
            if self.dinov2 is not None:  # float64 statistics, as fd_dinov2 computes them
                dinov2 = _in_sample_order([part["dinov2"] for part, _ in gathered], self.num_samples, batch)
                scores["fd_dinov2"] = frechet_distance(feature_statistics(dinov2.astype(np.float64)),
                                                       self.dinov2_reference)
            scores |= {"eval_samples": self.num_samples, "eval_nfe": float(np.nanmean([nfe for _, nfe in gathered])),
                       "eval_seconds": time.perf_counter() - start}
        return distributed.broadcast_from_main(scores)


def _in_sample_order(parts: list[np.ndarray], num_samples: int, batch: int) -> np.ndarray:
    """Rows of every process's features back in sample order (process r holds batches r, r + W, ...)."""
    world = len(parts)
    if world == 1:
        return parts[0]
    rows, offsets = [], [0] * world
    for number, start in enumerate(range(0, num_samples, batch)):
        rank, size = number % world, min(batch, num_samples - start)
        rows.append(parts[rank][offsets[rank]: offsets[rank] + size])
        offsets[rank] += size
    return np.concatenate(rows)


def reference_statistics(network: FeatureNetwork, reference: str | Path, device: torch.device,
                         network_id: Optional[str], cache_dir: Path = DEFAULT_CACHE_DIR) -> FeatureStatistics:
    """pool_3 statistics of the reference: the file's stored ``mu``/``sigma`` when it has them (never recomputed,
    as scripts/evaluate.py), else those of its images' features (cached under ``cache_dir`` by the file's SHA-256
    and the network's identity)."""
    stored = load_npz_statistics(reference)
    if stored is not None:
        return stored[0]
    activations, _, _ = reference_activations(network, reference, device, NPZ_BATCH, cache_dir, network_id)
    return feature_statistics(activations.pool)
