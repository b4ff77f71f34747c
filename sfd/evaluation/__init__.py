"""OpenAI's ADM evaluation suite in PyTorch (docs/evaluator.md): the TF-compatible FID Inception-v3, the metrics
(FID, sFID, Inception Score, Precision, Recall) and the sample/reference ``.npz`` formats; FD_DINOv2 next to them
(docs/evaluator.md §13).

    python scripts/evaluate.py VIRTUAL_imagenet256_labeled.npz samples.npz --inception-weights W.pth [--fd-dinov2]
"""

from sfd.evaluation.adm import Activations, FeatureNetwork, Results, compute_activations, evaluate, fd_dinov2
from sfd.evaluation.dinov2 import DINOv2Features, DINOv2WeightsError, fd_dinov2_preprocess, load_dinov2_features
from sfd.evaluation.inception import (
    WEIGHTS_SHA256,
    InceptionFeatures,
    InceptionV3,
    InceptionWeightsError,
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
from sfd.evaluation.npz import iter_images, load_images, load_npz_statistics, pack_png_folder, save_sample_npz

__all__ = [
    "WEIGHTS_SHA256", "Activations", "DINOv2Features", "DINOv2WeightsError", "FeatureNetwork", "FeatureStatistics",
    "InceptionFeatures", "InceptionV3", "InceptionWeightsError", "Results", "compute_activations", "evaluate",
    "fd_dinov2", "fd_dinov2_preprocess", "feature_statistics", "frechet_distance", "inception_score", "iter_images",
    "load_dinov2_features", "load_images", "load_inception", "load_npz_statistics", "manifold_radii",
    "pack_png_folder", "pairwise_squared_distances", "precision_recall", "save_sample_npz", "softmax_float32",
    "spatial_features", "tf1_resize_bilinear",
]
