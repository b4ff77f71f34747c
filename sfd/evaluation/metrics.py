"""The ADM evaluator's metrics on features: FID/sFID statistics and distance, Inception Score, Precision/Recall.

Each function follows OpenAI guided-diffusion ``evaluations/evaluator.py``: the statistics and the Fréchet distance
(TTUR's formula with its sqrtm safeguards; docs/evaluator.md §5), the Inception Score (consecutive splits of 5000 in
file order, float32; docs/evaluator.md §7), Precision and Recall (Kynkäänniemi et al.'s manifold estimator with
k = 3, 10,000-row/column blocks and TF's float16 distance path; docs/evaluator.md §8).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import linalg

from sfd.device import matmul_precision

PRMode = Literal["tf16", "fp32"]
PR_MODES: tuple[str, ...] = ("tf16", "fp32")
FID_EPS = 1e-6  # TTUR's diagonal offset, used only when sqrtm returns non-finite values (docs/evaluator.md §5, step 3)
IS_SPLIT_SIZE = 5000  # docs/evaluator.md §7
PR_BLOCK_SIZE = 10_000  # ManifoldEstimator row_batch_size = col_batch_size (docs/evaluator.md §8.1)
PR_NEIGHBOURS = 3  # nhood_sizes = (3,) (docs/evaluator.md §8.1)


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean and covariance of a feature set (docs/evaluator.md §5): ``mu`` float32 when computed (float64 when read from
    a file), ``sigma`` float64."""

    mu: np.ndarray
    sigma: np.ndarray


def feature_statistics(activations: np.ndarray) -> FeatureStatistics:
    """μ = row mean in the activations' dtype, Σ = ``np.cov(rowvar=False)`` (ddof 1, float64), as ADM
    (docs/evaluator.md §5)."""
    if activations.ndim != 2 or len(activations) < 2:
        raise ValueError(f"feature_statistics: need activations [N >= 2, D], got shape {activations.shape}")
    return FeatureStatistics(mu=np.mean(activations, axis=0), sigma=np.cov(activations, rowvar=False))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without the ``disp`` argument (deprecated in SciPy 1.16, removed in 1.18,
    docs/evaluator.md §5); old SciPy versions called with ``disp=False`` returned ``(root, error)``, so a tuple is
    unpacked too."""
    root = linalg.sqrtm(matrix)
    return root[0] if isinstance(root, tuple) else root


def frechet_distance(sample: FeatureStatistics, reference: FeatureStatistics, eps: float = FID_EPS) -> float:
    """Fréchet distance ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr sqrt(Σ1Σ2) between two Gaussians, ADM's
    ``FIDStatistics.frechet_distance`` (docs/evaluator.md §5): everything cast to float64 first; sqrtm of the
    (non-symmetric) product; retried with ``eps`` added to both diagonals only when that root is non-finite; a complex
    root is accepted when its diagonal's imaginary parts are within 1e-3 of 0, else ``ValueError("Imaginary component
    ...")``. The result is not clipped at 0. Used for FID (pool_3) and sFID (spatial)."""
    mu1, mu2 = np.atleast_1d(np.asarray(sample.mu, np.float64)), np.atleast_1d(np.asarray(reference.mu, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sample.sigma, np.float64))
    sigma2 = np.atleast_2d(np.asarray(reference.sigma, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
                      stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def softmax_float32(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float32, shifted by the row max (TF's ``softmax`` of the unbiased logits,
    docs/evaluator.md §4.3)."""
    shifted = np.asarray(logits, np.float32) - np.max(logits, axis=1, keepdims=True).astype(np.float32)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=1, keepdims=True)


def inception_score(probabilities: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """ADM's Inception Score (docs/evaluator.md §7): consecutive chunks of ``split_size`` rows in file order (the last,
    shorter chunk included), per chunk exp(mean_rows Σ_k p_k (log p_k − log p̄_k)) in float32, then the unweighted mean
    of the chunk scores. Order-dependent by design; ``probabilities`` are softmax(pool_3 · W_fc) without the bias."""
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"inception_score: need probabilities [N >= 1, classes], got shape {probabilities.shape}")
    scores = []
    for start in range(0, len(probabilities), split_size):
        part = probabilities[start:start + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def full_fp32() -> contextlib.AbstractContextManager:
    """Turn TF32 (and the NPU's HF32) off for matmuls and convolutions (docs/evaluator.md §9.3: TF32 moves Inception
    features by ~1e-3 and would truncate the fp16-valued operands of the P/R distances), restoring the previous
    settings afterwards."""
    return matmul_precision("fp32")


def _squared_distances_fp32(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """max(‖u‖² − 2u·v + ‖v‖², 0) in float32, in TF's ``_batch_pairwise_distances`` order (docs/evaluator.md §8.2)."""
    return (u.square().sum(1)[:, None] - 2 * (u @ v.T) + v.square().sum(1)[None, :]).clamp_min(0)


def _squared_distances_tf16(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same formula evaluated the way TF runs it on float16 casts (docs/evaluator.md §8.5): every product and sum is
    computed in float32 and rounded to float16 (exact emulation of fp16 arithmetic, since fp32 has ≥ 2·11 + 2 bits), the
    row sums and the matmul accumulate in float32 before their rounding."""
    u16, v16 = u.half().float(), v.half().float()
    norm_u = u16.square().half().float().sum(1).half().float()
    norm_v = v16.square().half().float().sum(1).half().float()
    twice_cross = (2 * (u16 @ v16.T).half().float()).half().float()
    combined = (norm_u[:, None] - twice_cross).half().float()
    return (combined + norm_v[None, :]).half().clamp_min(0)


def pairwise_squared_distances(u: torch.Tensor, v: torch.Tensor, mode: PRMode = "tf16") -> torch.Tensor:
    """ADM's ``DistanceBlock`` (docs/evaluator.md §8.2): squared Euclidean distances [len(u), len(v)] as float32.
    ``tf16`` evaluates them in emulated float16 and falls back to float32 for the whole block when any entry is
    non-finite; ``fp32`` is the exact float32 variant."""
    if mode not in PR_MODES:
        raise ValueError(f"pairwise_squared_distances: mode must be one of {PR_MODES}, got {mode!r}")
    u, v = u.float(), v.float()
    if mode == "tf16":
        block = _squared_distances_tf16(u, v)
        if bool(torch.isfinite(block).all()):
            return block.float()
    return _squared_distances_fp32(u, v)


def manifold_radii(features: torch.Tensor, k: int = PR_NEIGHBOURS, row_block: int = PR_BLOCK_SIZE,
                   col_block: int = PR_BLOCK_SIZE, mode: PRMode = "tf16") -> torch.Tensor:
    """Squared k-NN radius of every point within its own set [N] (float32), ADM's ``manifold_radii``
    (docs/evaluator.md §8.3): for each block of ``row_block`` rows the distances to all N points (``col_block`` columns
    at a time), then the (k+1)-th smallest per row — the point itself counts as its own nearest neighbour (at
    distance 0)."""
    if len(features) <= k:
        raise ValueError(f"manifold_radii: need more than k={k} points, got {len(features)}")
    radii = torch.empty(len(features), dtype=torch.float32, device=features.device)
    buffer = torch.empty(min(row_block, len(features)), len(features), dtype=torch.float32, device=features.device)
    for begin in range(0, len(features), row_block):
        rows = features[begin:begin + row_block]
        for c in range(0, len(features), col_block):
            buffer[:len(rows), c:c + col_block] = pairwise_squared_distances(rows, features[c:c + col_block], mode)
        radii[begin:begin + len(rows)] = torch.kthvalue(buffer[:len(rows)], k + 1, dim=1).values
    return radii


def precision_recall(reference: np.ndarray | torch.Tensor, sample: np.ndarray | torch.Tensor,
                     k: int = PR_NEIGHBOURS, row_block: int = PR_BLOCK_SIZE, col_block: int = PR_BLOCK_SIZE,
                     mode: PRMode = "tf16", device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved Precision and Recall as ADM computes them (docs/evaluator.md §8.4) from pool_3 features [N, D].
    Precision: fraction of samples j with some reference i at d(i, j) ≤ r_ref[i]; Recall: fraction of references i with
    some sample j at d(i, j) ≤ r_sample[j] (both inclusive; d and r squared distances). Row blocks run over the
    reference, column blocks over the samples, each distance block through :func:`pairwise_squared_distances`."""
    with full_fp32(), torch.no_grad():
        ref = torch.as_tensor(reference, dtype=torch.float32, device=device)
        gen = torch.as_tensor(sample, dtype=torch.float32, device=device)
        if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1]:
            raise ValueError(f"precision_recall: need features [N, D] with equal D, got {tuple(ref.shape)} and "
                             f"{tuple(gen.shape)}")
        ref_radii = manifold_radii(ref, k, row_block, col_block, mode)
        gen_radii = manifold_radii(gen, k, row_block, col_block, mode)
        ref_in = torch.zeros(len(ref), dtype=torch.bool, device=device)
        gen_in = torch.zeros(len(gen), dtype=torch.bool, device=device)
        for r in range(0, len(ref), row_block):
            for c in range(0, len(gen), col_block):
                distances = pairwise_squared_distances(ref[r:r + row_block], gen[c:c + col_block], mode)
                ref_in[r:r + row_block] |= (distances <= gen_radii[None, c:c + col_block]).any(dim=1)
                gen_in[c:c + col_block] |= (distances <= ref_radii[r:r + row_block, None]).any(dim=0)
        return gen_in.double().mean().item(), ref_in.double().mean().item()
