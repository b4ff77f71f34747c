"""Feature-quality probes as DINO reports them: weighted k-NN and linear-probe accuracy of frozen features.

Both take features [N, D] and integer class labels [N] of a train and a test split and return the test accuracy
(a fraction in [0, 1]). ``probe_report`` runs both on the mean-pooled patch tokens of an encoder, the image-level
feature of an encoder that has no class token (DINOv2 reports its probes on the class token and the pooled patch
tokens together).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07, batch_size: int = 1024) -> float:
    """DINO's weighted k-NN classifier: on L2-normalised features, each test point's ``k`` most cosine-similar
    train points vote for their class with weight exp(similarity / ``temperature``); the heaviest class wins.

    Ties are resolved deterministically: among equally similar train points the lower train index is the nearer
    neighbour (as a stable sort orders them), and equal votes go to the lower class index. The test points are
    processed ``batch_size`` at a time, so memory stays at batch_size × N similarities."""
    _check_split("train", train_features, train_labels)
    _check_split("test", test_features, test_labels)
    _check_same_dim(train_features, test_features)
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k={k} must be in [1, {len(train_features)}] for train_features {list(train_features.shape)}")
    if not temperature > 0 or batch_size < 1:
        raise ValueError(f"temperature and batch_size must be positive, got {temperature}, {batch_size}")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    train_labels = train_labels.long()
    classes = max(int(train_labels.max()), int(test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test), batch_size):
        similarity = test[start:start + batch_size] @ train.T  # [b, N]
        values, indices = similarity.topk(k, dim=1)
        # topk leaves the order of equal values unspecified. Only a tie that straddles the k-th place changes the
        # vote; for those (rare) rows take the lowest train indices, as a stable sort does.
        straddling = ((similarity >= values[:, -1:]).sum(dim=1) > k).nonzero()[:, 0]
        if len(straddling):
            indices[straddling] = similarity[straddling].sort(dim=1, descending=True, stable=True).indices[:, :k]
            values[straddling] = similarity[straddling].gather(1, indices[straddling])
        # The weights in float64: exp(1 / 0.07) ≈ 1.6e6, and sums of such weights should not round two classes'
        # votes into a tie (or out of one).
        weights = (values.double() / temperature).exp()
        votes = torch.zeros(len(values), classes, dtype=torch.float64).scatter_add_(1, train_labels[indices],
                                                                                    weights)
        predictions = votes.argmax(dim=1)  # the first of equal maxima: ties go to the lower class index
        correct += int((predictions == test_labels[start:start + batch_size].long()).sum())
    return correct / len(test)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, *, weight_decay: float = 1e-4,
                     steps: int = 300) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features: minimises mean cross-entropy of
    ((x − mean) / std) · Wᵀ + b plus ``weight_decay``·‖W‖² (the bias is not penalised), full batch, in float64,
    with L-BFGS (strong-Wolfe line search, at most ``steps`` iterations) from zero weights, so the fit is
    deterministic. The problem is convex, so L-BFGS reaches its minimum rather than a seed-dependent point.

    Returns float64 (weight [C, D], bias [C], mean [D], std [D]), C = max label + 1; a constant feature gets std 1."""
    _check_split("train", features, labels)
    if not weight_decay >= 0 or steps < 1:
        raise ValueError(f"weight_decay must be ≥ 0 and steps ≥ 1, got {weight_decay}, {steps}")
    features = features.double()
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    inputs = (features - mean) / std
    labels = labels.long()
    weight = torch.zeros(int(labels.max()) + 1, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(weight), dtype=torch.float64, requires_grad=True)
    # Tolerances far below the defaults: in float64 they let L-BFGS run on to the optimum instead of stopping where
    # the accuracy has settled but the parameters have not.
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(inputs @ weight.T + bias, labels) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach(), mean, std


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                          test_labels: torch.Tensor, *, weight_decay: float = 1e-4, steps: int = 300) -> float:
    """Test accuracy of ``fit_linear_probe`` fitted on the train split (standardised with the train statistics)."""
    _check_split("test", test_features, test_labels)
    _check_same_dim(train_features, test_features)
    weight, bias, mean, std = fit_linear_probe(train_features, train_labels, weight_decay=weight_decay, steps=steps)
    logits = ((test_features.double() - mean) / std) @ weight.T + bias
    return (logits.argmax(dim=1) == test_labels.long()).double().mean().item()


@torch.no_grad()
def probe_report(encoder_fn: Callable[[torch.Tensor], torch.Tensor], train_images: torch.Tensor,
                 train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                 batch_size: int = 256) -> Dict[str, float]:
    """{"knn": …, "linear": …} accuracies of the mean-pooled tokens of ``encoder_fn(images)`` → [B, T, D], run
    ``batch_size`` images at a time without gradients (put a module in eval mode before passing it)."""
    train_features = pooled_features(encoder_fn, train_images, batch_size)
    test_features = pooled_features(encoder_fn, test_images, batch_size)
    return {"knn": knn_accuracy(train_features, train_labels, test_features, test_labels),
            "linear": linear_probe_accuracy(train_features, train_labels, test_features, test_labels)}


@torch.no_grad()
def pooled_features(encoder_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    batch_size: int = 256) -> torch.Tensor:
    """The mean over tokens of ``encoder_fn(images)`` [B, T, D] → [N, D], in batches."""
    pooled = []
    for start in range(0, len(images), batch_size):
        tokens = encoder_fn(images[start:start + batch_size])
        if tokens.dim() != 3:
            raise ValueError(f"expected encoder tokens [B, T, D], got {list(tokens.shape)}")
        pooled.append(tokens.float().mean(dim=1))
    return torch.cat(pooled)


def _check_split(name: str, features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.dim() != 2 or len(features) == 0:
        raise ValueError(f"expected {name}_features [N, D] with N ≥ 1, got {list(features.shape)}")
    if labels.dim() != 1 or len(labels) != len(features) or labels.is_floating_point() or bool((labels < 0).any()):
        raise ValueError(f"expected non-negative integer {name}_labels [{len(features)}] for {name}_features "
                         f"{list(features.shape)}, got {labels.dtype} {list(labels.shape)}")


def _check_same_dim(train_features: torch.Tensor, test_features: torch.Tensor) -> None:
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train_features {list(train_features.shape)} and test_features "
                         f"{list(test_features.shape)} differ in feature dimension")
