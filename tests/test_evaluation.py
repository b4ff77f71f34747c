"""ADM evaluation suite (docs/evaluator.md §12): metric maths against independent NumPy/SciPy oracles, the Inception
port with random weights (keys, taps, resize, torch-fidelity equality), npz I/O, the evaluator end to end with a
tiny random feature network, the tools and the launcher. Offline; no real weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from sfd.evaluation import adm, inception, metrics, npz
from sfd.evaluation.inception import (
    InceptionFeatures,
    InceptionV3,
    InceptionWeightsError,
    check_images,
    load_inception,
    spatial_features,
    tf1_resize_bilinear,
)
from sfd.evaluation.metrics import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    pairwise_squared_distances,
    precision_recall,
    softmax_float32,
)
from sfd.files import file_sha256

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import compare_eval  # noqa: E402
import pack_npz  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance (docs/evaluator.md §5, §12.1)

def random_spd(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return np.cov(x, rowvar=False)


def eigh_frechet(mu1, s1, mu2, s2) -> float:
    """Oracle: tr sqrt(Σ1Σ2) = tr sqrt(Σ1^½ Σ2 Σ1^½), from symmetric eigendecompositions only."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_closed_forms():
    one_d = frechet_distance(FeatureStatistics(np.array([1.5]), np.array([[4.0]])),
                             FeatureStatistics(np.array([-0.5]), np.array([[9.0]])))
    assert abs(one_d - ((1.5 + 0.5) ** 2 + (2 - 3) ** 2)) < 1e-12
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    diagonal = frechet_distance(FeatureStatistics(mu1, np.diag(a)), FeatureStatistics(mu2, np.diag(b)))
    assert abs(diagonal - (np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))) < 1e-10


def test_frechet_identity_symmetry_and_eigh_oracle():
    rng = np.random.default_rng(1)
    for d in (8, 32, 64):  # beyond ~100-d, multithreaded OpenBLAS sqrtm crawls on a busy 2-core machine
        s1, s2 = random_spd(rng, d, 3 * d), random_spd(rng, d, 2 * d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        ours = frechet_distance(FeatureStatistics(mu1, s1), FeatureStatistics(mu2, s2))
        assert ours == pytest.approx(eigh_frechet(mu1, s1, mu2, s2), rel=1e-10)
        swapped = frechet_distance(FeatureStatistics(mu2, s2), FeatureStatistics(mu1, s1))
        assert swapped == pytest.approx(ours, rel=1e-10)
        assert abs(frechet_distance(FeatureStatistics(mu1, s1), FeatureStatistics(mu1, s1))) < 1e-8 * np.trace(s1)


def test_frechet_float32_inputs_are_upcast():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 16, 40).astype(np.float32), random_spd(rng, 16, 40).astype(np.float32)
    mu1, mu2 = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    as32 = frechet_distance(FeatureStatistics(mu1, s1), FeatureStatistics(mu2, s2))
    as64 = frechet_distance(FeatureStatistics(mu1.astype(np.float64), s1.astype(np.float64)),
                            FeatureStatistics(mu2.astype(np.float64), s2.astype(np.float64)))
    assert as32 == as64


def test_frechet_rank_deficient_covariance_is_finite():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.5  # N < d: singular Σ
    value = frechet_distance(feature_statistics(x), feature_statistics(y))
    assert np.isfinite(value)


def test_frechet_singular_product_retries_with_eps(monkeypatch):
    rng = np.random.default_rng(4)
    s1, s2 = random_spd(rng, 6, 20), random_spd(rng, 6, 20)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    real_sqrtm, calls = metrics.linalg.sqrtm, []

    def first_nan(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(metrics.linalg, "sqrtm", first_nan)
    with pytest.warns(UserWarning, match="singular product; adding 1e-06 to diagonal"):
        value = frechet_distance(FeatureStatistics(mu1, s1), FeatureStatistics(mu2, s2))
    eye = np.eye(6) * 1e-6
    assert np.array_equal(calls[1], (s1 + eye) @ (s2 + eye))
    # Only the root uses the offset; the traces are those of the original covariances (ADM's formula).
    diff = mu1 - mu2
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(real_sqrtm((s1 + eye) @ (s2 + eye))).real
    assert value == pytest.approx(expected, rel=1e-12)


def test_frechet_complex_residue_tuple_return_and_no_clipping(monkeypatch):
    rng = np.random.default_rng(5)
    s = random_spd(rng, 5, 20)
    mu = rng.normal(size=5)
    root = metrics.linalg.sqrtm(s @ s)
    stats = FeatureStatistics(mu, s)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: root + 0.1j * np.eye(5))
    with pytest.raises(ValueError, match=r"^Imaginary component 0\.1"):
        frechet_distance(stats, stats)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: root + 1e-6j * np.eye(5))
    assert frechet_distance(stats, stats) == pytest.approx(2 * np.trace(s) - 2 * np.trace(root), abs=1e-10)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: (root, 0.0))  # SciPy's old (root, error) return
    assert frechet_distance(stats, stats) == pytest.approx(2 * np.trace(s) - 2 * np.trace(root), abs=1e-10)
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: 1.5 * root)
    assert frechet_distance(stats, stats) == pytest.approx(-np.trace(s), rel=1e-10)  # negative, not clipped


def test_feature_statistics_dtypes():
    acts = np.random.default_rng(6).normal(size=(50, 7)).astype(np.float32)
    stats = feature_statistics(acts)
    assert stats.mu.dtype == np.float32 and np.array_equal(stats.mu, acts.mean(0))
    assert stats.sigma.dtype == np.float64 and np.array_equal(stats.sigma, np.cov(acts, rowvar=False))


def test_frechet_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(FeatureStatistics(np.zeros(3), np.eye(3)), FeatureStatistics(np.zeros(4), np.eye(4)))


# ----------------------------------------------------------------------------------------------------------------
# Inception Score (docs/evaluator.md §7, §12.3)

def near_one_hot(classes: np.ndarray, num_classes: int = 10) -> np.ndarray:
    return softmax_float32(30.0 * np.eye(num_classes, dtype=np.float32)[classes])


def test_inception_score_known_distributions():
    spread = near_one_hot(np.arange(5000) % 10)
    assert inception_score(spread) == pytest.approx(10, rel=1e-5)
    identical = np.tile(softmax_float32(np.random.default_rng(0).normal(size=(1, 10))), (5000, 1))
    assert inception_score(identical) == pytest.approx(1, abs=1e-4)  # float32 rounding of the 5000-row mean
    # Chunks are scored separately: classes 0-3 then 4-9 give (4 + 6) / 2, not the pooled score.
    chunks = near_one_hot(np.concatenate([np.arange(5000) % 4, 4 + np.arange(5000) % 6]))
    assert inception_score(chunks) == pytest.approx(5, rel=1e-5)
    # N = 5001: the last one-row chunk scores exactly 1 and counts in the mean.
    extra = np.concatenate([spread, spread[:1]])
    assert inception_score(extra) == pytest.approx((10 + 1) / 2, rel=1e-5)
    # Order matters: class-sorted files lower IS (why SFD shuffles its PNGs before packing).
    sorted_rows = near_one_hot(np.repeat(np.arange(10), 1000))
    shuffled = sorted_rows[np.random.default_rng(1).permutation(10000)]
    assert inception_score(sorted_rows) == pytest.approx(5, rel=1e-5)
    assert inception_score(shuffled) > 9


def test_inception_score_matches_float64_oracle():
    rng = np.random.default_rng(2)
    probs = softmax_float32(rng.normal(scale=3, size=(12000, 50)))
    assert probs.dtype == np.float32
    p = probs.astype(np.float64)
    oracle = np.mean([np.exp(np.mean(np.sum(c * (np.log(c) - np.log(c.mean(0))), 1)))
                      for c in (p[:5000], p[5000:10000], p[10000:])])
    assert inception_score(probs) == pytest.approx(oracle, rel=1e-4)


def test_softmax_float32_matches_scipy():
    logits = np.random.default_rng(3).normal(scale=10, size=(64, 1008)).astype(np.float32)
    ours = softmax_float32(logits)
    assert ours.dtype == np.float32
    assert np.allclose(ours, scipy.special.softmax(logits.astype(np.float64), axis=1), atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Precision and Recall (docs/evaluator.md §8, §12.4)

def brute_force_pr(ref: np.ndarray, gen: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Oracle: full (a − b)² matrices in float64, full sort, index 3 including self, inclusive comparisons."""
    def squared(a, b):
        return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)

    r_ref = np.sort(squared(ref, ref), axis=1)[:, 3]
    r_gen = np.sort(squared(gen, gen), axis=1)[:, 3]
    d = squared(ref, gen)
    return float(np.mean((d <= r_ref[:, None]).any(0))), float(np.mean((d <= r_gen[None, :]).any(1))), r_ref, r_gen


def test_precision_recall_against_brute_force_with_odd_blocks():
    rng = np.random.default_rng(0)
    # Small integers: every float32 operation is exact whatever the summation order, ties included.
    ref = rng.integers(0, 4, (500, 32)).astype(np.float32)
    gen = rng.integers(0, 4, (450, 32)).astype(np.float32)
    gen[:, :8] += rng.integers(0, 2, (450, 8))
    precision, recall, r_ref, _ = brute_force_pr(ref, gen)
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95
    for mode in ("fp32", "tf16"):
        assert precision_recall(ref, gen, row_block=37, col_block=53, mode=mode) == (precision, recall)
        radii = manifold_radii(torch.from_numpy(ref), row_block=37, col_block=53, mode=mode)
        assert np.array_equal(radii.numpy(), r_ref.astype(np.float32))
    assert precision_recall(ref, gen, row_block=37, col_block=53) == precision_recall(ref, gen)


def test_precision_recall_extremes_ties_and_duplicates():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100, mode="fp32") == (0.0, 0.0)
    # Ties count as in: ref {0,1,2,3} has radius 9 at 3; a sample at 6 lies exactly on it.
    ref = np.array([[0, 0], [1, 0], [2, 0], [3, 0]], np.float32)
    gen = np.array([[6, 0], [50, 0], [51, 0], [52, 0]], np.float32)
    assert precision_recall(ref, gen)[0] == 0.25
    assert precision_recall(ref, gen + np.float32([0.5, 0]))[0] == 0.0
    # Four identical rows: index 3 includes the point itself and its copies, so the radius is (almost) 0.
    u = rng.uniform(0, 1, (1, 2048)).astype(np.float32)
    feats = np.concatenate([np.repeat(u, 4, 0), rng.uniform(0, 1, (20, 2048)).astype(np.float32)])
    for mode in ("tf16", "fp32"):
        radius = manifold_radii(torch.from_numpy(feats), mode=mode)[0].item()
        assert radius <= 1e-3 * float(u[0] @ u[0])


def numpy_tf16_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Oracle of docs/evaluator.md §8.5 with NumPy's float16 arithmetic (each operation rounded to float16)."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    nu = np.square(u16).astype(np.float32).sum(1).astype(np.float16)
    nv = np.square(v16).astype(np.float32).sum(1).astype(np.float16)
    m = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
    d = (nu[:, None] - np.float16(2) * m) + nv[None, :]
    return np.maximum(d, np.float16(0)).astype(np.float32)


def test_tf16_distances_match_numpy_emulation_and_overflow_falls_back():
    rng = np.random.default_rng(2)
    # Multiples of 1/8 below 4: float32 sums and products are exact, so only the float16 roundings matter.
    u = (rng.integers(0, 32, (40, 2048)) / 8).astype(np.float32)
    v = (rng.integers(0, 32, (30, 2048)) / 8).astype(np.float32)
    ours = pairwise_squared_distances(torch.from_numpy(u), torch.from_numpy(v), "tf16").numpy()
    assert ours.dtype == np.float32 and np.array_equal(ours, numpy_tf16_distances(u, v))
    assert not np.array_equal(ours, pairwise_squared_distances(torch.from_numpy(u), torch.from_numpy(v), "fp32"))
    big = torch.from_numpy(u * 300)  # squared norms far above 65,504: the float16 block overflows
    assert torch.equal(pairwise_squared_distances(big, big, "tf16"), pairwise_squared_distances(big, big, "fp32"))


def test_tf16_and_fp32_precision_recall_agree_on_pool3_like_features():
    rng = np.random.default_rng(3)
    ref = rng.gamma(0.5, 0.6, (800, 2048)).astype(np.float32)
    gen = (rng.gamma(0.5, 0.6, (800, 2048)) * 1.05).astype(np.float32)
    fp16 = np.array(precision_recall(ref, gen, mode="tf16"))
    fp32 = np.array(precision_recall(ref, gen, mode="fp32"))
    # At most 8 of 800 decisions flip (docs/evaluator.md §8.5: 1e-4..3e-3 at 5k-10k).
    assert np.all(np.abs(fp16 - fp32) <= 0.01)


# ----------------------------------------------------------------------------------------------------------------
# Inception network, resize and taps (docs/evaluator.md §4, §6, §12.5–§12.7)

def numpy_tf1_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Oracle of docs/evaluator.md §4.1 for one float32 image [H, W, C]: legacy coordinates, x first, then y."""
    def axis(n_in, n_out):
        src = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
        lo = np.floor(src).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

    y_lo, y_hi, wy = axis(image.shape[0], out_h)
    x_lo, x_hi, wx = axis(image.shape[1], out_w)
    wx = wx[None, :, None]
    top = image[y_lo][:, x_lo] + (image[y_lo][:, x_hi] - image[y_lo][:, x_lo]) * wx
    bottom = image[y_hi][:, x_lo] + (image[y_hi][:, x_hi] - image[y_hi][:, x_lo]) * wx
    return top + (bottom - top) * wy[:, None, None]


def test_tf1_resize_worked_example_and_oracle():
    line = torch.tensor([[[[0.0, 100.0]]]])
    assert tf1_resize_bilinear(line, (1, 4)).flatten().tolist() == [0, 50, 100, 100]
    half_pixel = F.interpolate(line, size=(1, 4), mode="bilinear", align_corners=False).flatten().tolist()
    assert half_pixel == [0, 25, 75, 100]
    rng = np.random.default_rng(0)
    for h, w in ((32, 32), (64, 64), (256, 256), (512, 512), (256, 320)):
        image = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
        ours = tf1_resize_bilinear(torch.from_numpy(image).permute(2, 0, 1)[None]).numpy()[0].transpose(1, 2, 0)
        assert np.array_equal(ours, numpy_tf1_resize(image, 299, 299)), (h, w)
    same = torch.from_numpy(rng.integers(0, 256, (1, 3, 299, 299)).astype(np.float32))
    assert torch.equal(tf1_resize_bilinear(same), same)


def test_spatial_features_are_flattened_nhwc():
    c, h, w = torch.meshgrid(torch.arange(192), torch.arange(17), torch.arange(17), indexing="ij")
    tap = (10000 * c + 100 * h + w).float()[None].repeat(2, 1, 1, 1)
    vector = spatial_features(tap)
    assert vector.shape == (2, 2023)
    grid = vector[1].reshape(17, 17, 7)
    hh, ww, cc = torch.meshgrid(torch.arange(17), torch.arange(17), torch.arange(7), indexing="ij")
    assert torch.equal(grid, (10000 * cc + 100 * hh + ww).float())
    assert not torch.equal(vector, tap[:, :7].reshape(2, -1))  # NCHW flattening is a different vector


def random_inception(seed: int = 0) -> InceptionV3:
    """He-scaled random convolutions (so deep features still depend on the input) and random BatchNorm
    statistics and affine terms (so every unit's normalisation matters)."""
    torch.manual_seed(seed)
    model = InceptionV3()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("conv.weight"):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (2 / tensor[0].numel()) ** 0.5)
            elif name.endswith(("running_var", "bn.weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.4 + 0.8)
            elif name.endswith(("running_mean", "bn.bias", "fc.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def inception_run():
    """A random network and its taps on 3 images, computed on one thread like every test here (module fixtures are
    set up before the function-level thread fixture, and bitwise comparisons need the same thread count)."""
    torch.set_num_threads(1)
    model = random_inception()
    images = torch.randint(0, 256, (3, 3, 64, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, images, model(images)


def test_inception_state_dict_matches_torchvision_layout():
    ours = InceptionV3().state_dict()
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                num_classes=1008).state_dict()
    assert list(ours) == list(reference)
    assert all(ours[k].shape == reference[k].shape for k in ours)
    assert len(ours) == 566 and len([k for k in ours if not k.endswith("num_batches_tracked")]) == 472
    assert len([k for k in ours if k.endswith("conv.weight")]) == 94
    assert ours["fc.weight"].shape == (1008, 2048)
    assert ours["Mixed_6d.branch1x1.conv.weight"].shape == (192, 768, 1, 1)


def test_inception_taps_shapes_bias_and_batch_independence(inception_run):
    model, images, out = inception_run
    assert out.pool.shape == (3, 2048) and out.spatial.shape == (3, 2023) and out.logits.shape == (3, 1008)
    assert (out.pool >= 0).all() and (out.spatial >= 0).all() and out.pool.abs().sum() > 0
    assert not torch.equal(out.pool[0], out.pool[1]) and not torch.equal(out.spatial[0], out.spatial[1])
    assert torch.allclose(out.logits, out.pool @ model.fc.weight.T)
    assert not torch.allclose(out.logits, model.fc(out.pool))  # IS uses the unbiased logits (docs/evaluator.md §4.3)
    with torch.no_grad():
        again, single = model(images), model(images[1:2])
    assert torch.equal(again.pool, out.pool) and torch.equal(again.spatial, out.spatial)
    assert torch.allclose(single.pool, out.pool[1:2], atol=1e-6)
    assert torch.allclose(single.spatial, out.spatial[1:2], atol=1e-6)


def test_inception_matches_torch_fidelity_with_the_same_weights(inception_run, tmp_path):
    """Bit-exact equality with torch-fidelity's inception-v3-compat network (docs/evaluator.md §9.1), run where it is
    installed. It is not a project dependency: its 0.4.0 wheel installs a top-level ``tests`` package that shadows this
    folder."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    model, images, out = inception_run
    torch.save(model.state_dict(), tmp_path / "random.pth")
    theirs = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                  feature_extractor_weights_path=str(tmp_path / "random.pth")).eval()
    tap = {}
    theirs.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, output: tap.setdefault("x", output))
    with torch.no_grad():
        pool, logits = theirs(images)
    assert torch.equal(out.pool, pool) and torch.equal(out.logits, logits)
    assert torch.equal(out.spatial, tap["x"][:, :7].permute(0, 2, 3, 1).reshape(3, -1))


def test_pooling_quirks(inception_run):
    constant = torch.full((1, 2, 5, 5), 3.0)
    assert torch.equal(inception._avg_pool_tf(constant), constant)  # padding excluded: no darker borders
    model = inception_run[0]
    assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


@pytest.mark.skipif(not os.environ.get("INCEPTION_WEIGHTS"), reason="real Inception weights: set INCEPTION_WEIGHTS")
def test_real_weights_match_torch_fidelity():
    """docs/evaluator.md §12.10, run where the standard weights file is present: our taps equal torch-fidelity's on 16
    images."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    model, _ = load_inception()
    theirs = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                  feature_extractor_weights_path=os.environ["INCEPTION_WEIGHTS"])
    tap = {}
    theirs.eval().Mixed_6d.branch1x1.register_forward_hook(lambda module, args, output: tap.setdefault("x", output))
    ramp = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64) % 256
    images = torch.stack([((ramp * (i + 1) + 17 * c) % 256).expand(64, 64) for i in range(16) for c in range(3)])
    images = images.reshape(16, 3, 64, 64).to(torch.uint8)
    with torch.no_grad():
        ours, (pool, logits) = model(images), theirs(images)
    assert (ours.pool - pool).abs().max() <= 1e-5 and (ours.logits - logits).abs().max() <= 1e-5
    assert (ours.spatial - spatial_features(tap["x"])).abs().max() <= 1e-5


def test_inception_input_guard():
    check_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    for bad in (torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8, 3, dtype=torch.uint8),
                torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 4, 8, 8, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"expected uint8 images \[N, 3, H, W\]"):
            check_images(bad)


def test_inception_weights_loading(inception_run, tmp_path, monkeypatch):
    state = {k: v for k, v in inception_run[0].state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    digest = file_sha256(path)
    loaded, identity = load_inception(path, allowed_sha256=(digest,))
    assert identity == digest and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(InceptionWeightsError, match=f"sha256 {digest} is not an allowed"):
        load_inception(path)  # not the standard file's hash
    monkeypatch.setenv("INCEPTION_WEIGHTS", str(path))
    assert load_inception(allowed_sha256=(digest,))[1] == digest
    torch.save({k: v for k, v in state.items() if k != "fc.bias"}, path)
    with pytest.raises(InceptionWeightsError, match="missing keys .*fc.bias"):
        load_inception(path, allowed_sha256=(file_sha256(path),))


def test_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.delenv("INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(InceptionWeightsError) as caught:
        load_inception()
    message = str(caught.value)
    assert "INCEPTION_WEIGHTS" in message and "--inception-weights" in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message and inception.WEIGHTS_URLS[0] in message
    assert "never downloads" in message
    with pytest.raises(InceptionWeightsError, match="absent.pth does not exist"):
        load_inception(tmp_path / "absent.pth")


# ----------------------------------------------------------------------------------------------------------------
# NPZ I/O (docs/evaluator.md §3, §12.8)

def random_images(n: int, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def write_npy_member(path: Path, array: np.ndarray, version: tuple[int, int]) -> None:
    with zipfile.ZipFile(path, "w") as archive, archive.open("arr_0.npy", "w") as member:
        np.lib.format.write_array(member, array, version=version)


def test_streaming_reader_versions_and_fallbacks(tmp_path):
    images = random_images(130)
    files = {"savez": tmp_path / "a.npz", "compressed": tmp_path / "b.npz"}
    np.savez(files["savez"], images)
    np.savez_compressed(files["compressed"], images, np.arange(130))
    for version in ((1, 0), (2, 0), (3, 0)):
        files[f"v{version[0]}"] = tmp_path / f"v{version[0]}.npz"
        write_npy_member(files[f"v{version[0]}"], images, version)
    files["fortran"] = tmp_path / "f.npz"
    write_npy_member(files["fortran"], np.asfortranarray(images), (1, 0))
    for name, path in files.items():
        batches = list(npz.iter_npz_images(path))
        assert [len(b) for b in batches] == [64, 64, 2], name
        assert np.array_equal(np.concatenate(batches), np.load(path)["arr_0"]), name
        assert npz.images_shape(path) == (130, 8, 8, 3)


def test_reader_rejects_bad_batches(tmp_path):
    np.savez(tmp_path / "no_arr0.npz", images=random_images(2))
    with pytest.raises(ValueError, match="missing arr_0 in npz file"):
        list(npz.iter_npz_images(tmp_path / "no_arr0.npz"))
    np.savez(tmp_path / "float.npz", random_images(2).astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"float.npz: arr_0 must be uint8 RGB images \[N, H, W, 3\]"):
        list(npz.iter_npz_images(tmp_path / "float.npz"))
    np.savez(tmp_path / "nchw.npz", random_images(2).transpose(0, 3, 1, 2).copy())
    with pytest.raises(ValueError, match=r"got uint8 \[2, 3, 8, 8\]"):
        npz.images_shape(tmp_path / "nchw.npz")


def test_statistics_loader(tmp_path):
    stats = {"mu": np.ones(4, np.float32), "sigma": np.eye(4, dtype=np.float32), "mu_s": np.zeros(3, np.float32),
             "sigma_s": np.eye(3, dtype=np.float32)}
    np.savez(tmp_path / "ref.npz", random_images(2), **stats)
    pool, spatial = npz.load_npz_statistics(tmp_path / "ref.npz")
    assert pool.mu.dtype == pool.sigma.dtype == spatial.sigma.dtype == np.float64
    assert np.array_equal(spatial.sigma, np.eye(3))
    np.savez(tmp_path / "partial.npz", random_images(2), mu=stats["mu"], sigma=stats["sigma"])
    with pytest.raises(ValueError, match="partial.npz: has 'mu' but lacks mu_s, sigma_s"):
        npz.load_npz_statistics(tmp_path / "partial.npz")
    np.savez(tmp_path / "plain.npz", random_images(2))
    assert npz.load_npz_statistics(tmp_path / "plain.npz") is None


def test_save_sample_npz_round_trip(tmp_path):
    images, labels = random_images(70, 6, 10), np.arange(70) % 7
    path = npz.save_sample_npz(tmp_path / "samples.npz", images, labels)
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        assert data["arr_0"].dtype == np.uint8 and np.array_equal(data["arr_0"], images)
        assert np.array_equal(data["arr_1"], labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]  # no temporary file left
    assert np.array_equal(npz.load_images(npz.save_sample_npz(tmp_path / "plain.npz", images)), images)
    with pytest.raises(ValueError, match="images must be uint8"):
        npz.save_sample_npz(tmp_path / "bad.npz", images.astype(np.float32))


def write_pngs(folder: Path, images: np.ndarray, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)


def test_pack_png_folder_sorted_limit_and_size_errors(tmp_path):
    images = random_images(5, 12, 9, seed=3)
    names = ["000003.png", "000001.png", "000000.png", "000004.png", "000002.png"]
    write_pngs(tmp_path / "pngs", images, names)
    expected = images[np.argsort(names)]
    packed = npz.pack_png_folder(tmp_path / "pngs", tmp_path / "out.npz")
    assert np.array_equal(np.load(packed)["arr_0"], expected)
    assert np.array_equal(npz.load_images(tmp_path / "pngs"), expected)
    assert np.array_equal(np.load(npz.pack_png_folder(tmp_path / "pngs", tmp_path / "3.npz", limit=3))["arr_0"],
                          expected[:3])
    write_pngs(tmp_path / "pngs", random_images(1, 12, 10), ["000005.png"])
    with pytest.raises(ValueError, match=r"000005.png: image is \[12, 10, 3\], expected \[12, 9, 3\]"):
        npz.pack_png_folder(tmp_path / "pngs", tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_pack_npz_tool(tmp_path, capsys):
    images = random_images(4, seed=4)
    write_pngs(tmp_path / "run-shuffle", images, [f"{i:06d}.png" for i in range(4)])
    assert pack_npz.main([str(tmp_path / "run-shuffle")]) == 0
    assert np.array_equal(np.load(tmp_path / "run-shuffle.npz")["arr_0"], images)
    assert "wrote" in capsys.readouterr().out
    assert pack_npz.main([str(tmp_path / "run-shuffle"), str(tmp_path / "x.npz"), "--limit", "9"]) == 2
    assert "limit 9 asked, the folder has 4" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The evaluator end to end with a tiny random feature network (docs/evaluator.md §2, §12.9)

class TinyFeatures(torch.nn.Module):
    """Stand-in with the evaluator's interface: pool [N, 12], spatial [N, 2·2·7], logits [N, 10]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 3)
        self.fc = torch.nn.Linear(12, 10)
        self.batches = 0

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        check_images(images)
        self.batches += 1
        tap = F.adaptive_avg_pool2d(F.relu(self.conv(images.float() / 128 - 1)), 2)
        pool = tap.mean(dim=(2, 3))
        return InceptionFeatures(pool=pool, spatial=spatial_features(tap), logits=4 * pool @ self.fc.weight.T)


RESULT_LINE = re.compile(r"^(Inception Score|FID|sFID|Precision|Recall): (\S+)$")


def test_evaluator_end_to_end(tmp_path, capsys):
    ref_images, sample_images = random_images(96, 16, 16, seed=5), random_images(70, 16, 16, seed=6)
    np.savez(tmp_path / "ref.npz", ref_images)
    npz.save_sample_npz(tmp_path / "samples.npz", sample_images, np.arange(70))
    network = TinyFeatures()
    argv = [str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--device", "cpu", "--batch-size", "32",
            "--cache-dir", str(tmp_path / "cache")]
    assert adm.main(argv, network=network, network_id="tiny") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [RESULT_LINE.match(line).group(1) for line in lines] == list(adm.RESULT_LABELS)
    printed = [float(RESULT_LINE.match(line).group(2)) for line in lines]
    for status in ("computing reference batch activations...", "computing/reading sample batch statistics...",
                   "Computing evaluations...", "holds 70 images"):
        assert status in captured.err

    # Oracle: features of the whole arrays at once, then the metric functions (tested above against NumPy).
    with torch.no_grad():
        ref = network(torch.from_numpy(ref_images).permute(0, 3, 1, 2))
        gen = network(torch.from_numpy(sample_images).permute(0, 3, 1, 2))
    expected = [
        inception_score(softmax_float32(gen.logits.numpy())),
        frechet_distance(feature_statistics(gen.pool.numpy()), feature_statistics(ref.pool.numpy())),
        frechet_distance(feature_statistics(gen.spatial.numpy()), feature_statistics(ref.spatial.numpy())),
        *precision_recall(ref.pool.numpy(), gen.pool.numpy()),
    ]
    assert printed == pytest.approx(expected, rel=1e-5)

    report = json.loads((tmp_path / "samples_adm_eval.json").read_text())
    assert [report[k] for k in ("inception_score", "fid", "sfid", "precision", "recall")] == printed
    assert report["n_reference"] == 96 and report["n_sample"] == 70 and report["network"] == "tiny"
    assert report["reference_statistics"] == report["sample_statistics"] == "computed"
    assert report["reference_sha256"] == file_sha256(tmp_path / "ref.npz") and report["tf32"] is False

    # Second run: the reference activations come from the cache; only the sample batches run.
    network.batches = 0
    assert adm.main(argv + ["--json", str(tmp_path / "again.json")], network=network, network_id="tiny") == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert network.batches == 3 and Path(report["activation_cache"]).is_file()


def test_evaluator_uses_stored_statistics(tmp_path, capsys):
    rng = np.random.default_rng(7)
    stored = {"mu": rng.normal(size=12), "sigma": np.cov(rng.normal(size=(40, 12)), rowvar=False),
              "mu_s": rng.normal(size=28), "sigma_s": np.cov(rng.normal(size=(60, 28)), rowvar=False)}
    np.savez(tmp_path / "ref.npz", random_images(40, 16, 16, seed=8), **stored)
    np.savez(tmp_path / "samples.npz", random_images(50, 16, 16, seed=9))
    network = TinyFeatures()
    results, report = adm.evaluate(tmp_path / "ref.npz", tmp_path / "samples.npz", network, log=lambda m: None)
    with torch.no_grad():
        gen = network(torch.from_numpy(np.load(tmp_path / "samples.npz")["arr_0"]).permute(0, 3, 1, 2))
    assert report["reference_statistics"] == "stored" and report["sample_statistics"] == "computed"
    assert results.fid == pytest.approx(frechet_distance(feature_statistics(gen.pool.numpy()),
                                                         FeatureStatistics(stored["mu"], stored["sigma"])), rel=1e-6)
    assert results.sfid == pytest.approx(frechet_distance(feature_statistics(gen.spatial.numpy()),
                                                          FeatureStatistics(stored["mu_s"], stored["sigma_s"])),
                                         rel=1e-6)
    write_pngs(tmp_path / "pngs", np.load(tmp_path / "samples.npz")["arr_0"], [f"{i:06d}.png" for i in range(50)])
    from_pngs, _ = adm.evaluate(tmp_path / "ref.npz", tmp_path / "pngs", network, log=lambda m: None)
    assert from_pngs == results
    np.savez(tmp_path / "bad.npz", random_images(50, 16, 16), mu=stored["mu"], sigma=stored["sigma"])
    argv = [str(tmp_path / "ref.npz"), str(tmp_path / "bad.npz"), "--no-cache", "--device", "cpu"]
    assert adm.main(argv, network=network) == 2
    assert "bad.npz: has 'mu' but lacks mu_s, sigma_s" in capsys.readouterr().err


def test_evaluator_cli_help_and_missing_weights(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exited:
        adm.main(["--help"])
    assert exited.value.code == 0 and "--inception-weights" in capsys.readouterr().out
    monkeypatch.delenv("INCEPTION_WEIGHTS", raising=False)
    assert adm.main([str(tmp_path / "ref.npz"), str(tmp_path / "s.npz"), "--device", "cpu"]) == 2
    assert "Inception weights not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# compare_eval and the launcher

ADM_STDOUT = """computing reference batch activations...
Computing evaluations...
Inception Score: 215.8370361328125
FID: 3.9425574129223264
sFID: 6.140433703346162
Precision: 0.8265
Recall: 0.5309
"""


def test_compare_eval_table(tmp_path, capsys):
    (tmp_path / "tf.txt").write_text(ADM_STDOUT)
    ours = {"inception_score": 215.9764, "fid": 3.941033, "sfid": 6.140490, "precision": 0.82548, "recall": 0.5285}
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    assert compare_eval.main([str(tmp_path / "tf.txt"), str(tmp_path / "ours.json")]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["FID"].split()[1:4] == ["3.942557413", "3.941033", "-0.00152441"]
    assert "+0.139364" in rows["Inception"] and "-0.0024" in rows["Recall"]
    (tmp_path / "broken.txt").write_text("FID: 1\n")
    assert compare_eval.main([str(tmp_path / "broken.txt"), str(tmp_path / "ours.json")]) == 2
    assert "no 'Inception Score: <value>' line" in capsys.readouterr().err


def run_launcher(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("INCEPTION_WEIGHTS", "ADM_EVALUATOR")}
    environment.update(env)
    return subprocess.run(["bash", str(ROOT / "run_eval_via_guided_diffusion.sh"), *args], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=120)


def test_launcher_paths_and_errors(tmp_path):
    missing = run_launcher(["absent.npz"], tmp_path)
    assert missing.returncode == 1 and "sample batch not found: absent.npz" in missing.stderr
    np.savez(tmp_path / "samples.npz", random_images(4))
    no_ref = run_launcher(["samples.npz"], tmp_path)
    assert no_ref.returncode == 1
    assert "reference batch not found: outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz" in no_ref.stderr
    np.savez(tmp_path / "ref.npz", random_images(4))
    fake = tmp_path / "evaluator.py"
    fake.write_text("import sys\nprint('args', *sys.argv[1:])\nprint('FID: 1.5')\n")
    via_adm = run_launcher(["samples.npz", "ref.npz"], tmp_path, ADM_EVALUATOR=str(fake), ADM_PYTHON=sys.executable)
    assert via_adm.returncode == 0 and "args ref.npz samples.npz" in via_adm.stdout
    assert "FID: 1.5" in (tmp_path / "samples_adm_tf.txt").read_text()
    ours = run_launcher(["samples.npz", "ref.npz", "--device", "cpu"], tmp_path, PYTHON=sys.executable)
    assert ours.returncode == 2 and "Inception weights not found" in ours.stderr
