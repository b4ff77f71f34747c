"""Feature probes: weighted k-NN against a brute-force reference, the linear probe's accuracy and optimality, the
mean-pooled report, and input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sfd.evaluation.probe import fit_linear_probe, knn_accuracy, linear_probe_accuracy, pooled_features, probe_report


def reference_knn_predictions(train_features, train_labels, test_features, k, temperature):
    """DINO's weighted k-NN, one test point at a time in pure Python: sort every train point by similarity (stable,
    so equal similarities keep train order), vote exp(sim / T) over the first k, lowest class among equal votes."""
    def normalised(rows):
        return [[value / math.sqrt(sum(v * v for v in row)) for value in row] for row in rows]

    train, test = normalised(train_features.tolist()), normalised(test_features.tolist())
    labels = train_labels.tolist()
    predictions = []
    for query in test:
        similarities = [sum(a * b for a, b in zip(query, point)) for point in train]
        nearest = sorted(range(len(train)), key=lambda index: -similarities[index])[:k]
        votes: dict[int, float] = {}
        for index in nearest:
            votes[labels[index]] = votes.get(labels[index], 0.0) + math.exp(similarities[index] / temperature)
        predictions.append(min(votes, key=lambda label: (-votes[label], label)))
    return predictions


def reference_knn_accuracy(train_features, train_labels, test_features, test_labels, k, temperature=0.07):
    predictions = reference_knn_predictions(train_features, train_labels, test_features, k, temperature)
    return sum(p == t for p, t in zip(predictions, test_labels.tolist())) / len(predictions)


def gaussian_clusters(count: int, classes: int, dim: int, spread: float, seed: int):
    """Points around ``classes`` fixed centres (the same for every seed, so two seeds give a train and a test split
    of one distribution), labels cycling through the classes."""
    centres = 3 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(1000 + classes * dim))
    labels = torch.arange(count) % classes
    noise = spread * torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))
    return centres[labels] + noise, labels


# --------------------------------------------------------------------------------------------------------- k-NN

@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_the_brute_force_reference_on_overlapping_classes(k, temperature):
    train, train_labels = gaussian_clusters(120, classes=4, dim=6, spread=3.0, seed=0)
    test, test_labels = gaussian_clusters(45, classes=4, dim=6, spread=3.0, seed=1)
    expected = reference_knn_accuracy(train, train_labels, test, test_labels, k, temperature)
    assert 0.2 < expected < 1.0  # overlapping classes: neither trivial nor hopeless, so the vote matters
    for batch_size in (7, 1024):  # batching the test points changes nothing
        assert knn_accuracy(train, train_labels, test, test_labels, k=k, temperature=temperature,
                            batch_size=batch_size) == expected


def one_hot_points(axes: list[int], dim: int = 4) -> torch.Tensor:
    """Points on the coordinate axes (scaled, so normalising matters): every similarity is exactly 0 or 1."""
    return F.one_hot(torch.tensor(axes), dim).float() * torch.arange(1, len(axes) + 1, dtype=torch.float32)[:, None]


def test_knn_breaks_similarity_ties_by_train_index_and_vote_ties_by_class():
    # Train points 1 and 3 lie on axis 0 with labels 2 and 1; points 0 and 2 on axis 1 with labels 0 and 3.
    train = one_hot_points([1, 0, 1, 0, 2])
    train_labels = torch.tensor([0, 2, 3, 1, 1])
    test = one_hot_points([0, 1, 0, 1])
    for k, expected in [(1, [2, 0, 2, 0]),  # the lower train index wins among equally similar points
                        (2, [1, 0, 1, 0])]:  # one equal vote each: the lower class wins
        assert reference_knn_predictions(train, train_labels, test, k, 0.07) == expected
        for test_class in range(4):
            want = sum(p == test_class for p in expected) / len(expected)
            assert knn_accuracy(train, train_labels, test, torch.full((4,), test_class), k=k) == want


def test_knn_with_k_equal_to_the_train_set_is_a_weighted_vote_of_all():
    train, train_labels = gaussian_clusters(30, classes=3, dim=5, spread=2.0, seed=2)
    test, test_labels = gaussian_clusters(20, classes=3, dim=5, spread=2.0, seed=3)
    assert knn_accuracy(train, train_labels, test, test_labels, k=30, temperature=0.3) == \
        reference_knn_accuracy(train, train_labels, test, test_labels, k=30, temperature=0.3)


# ------------------------------------------------------------------------------------------------- linear probe

def test_linear_probe_separates_gaussian_clusters():
    train, train_labels = gaussian_clusters(300, classes=5, dim=8, spread=0.3, seed=4)
    test, test_labels = gaussian_clusters(200, classes=5, dim=8, spread=0.3, seed=5)
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == 1.0


def test_linear_probe_parameters_are_the_penalised_optimum():
    features, labels = gaussian_clusters(200, classes=4, dim=6, spread=2.0, seed=6)
    features = 5 * features + 10  # off-centre and unscaled: the standardisation is part of the fit
    weight_decay = 1e-2
    weight, bias, mean, std = fit_linear_probe(features, labels, weight_decay=weight_decay)
    torch.testing.assert_close(mean, features.double().mean(dim=0))
    torch.testing.assert_close(std, features.double().std(dim=0, unbiased=False))
    assert weight.shape == (4, 6) and bias.shape == (4,) and weight.dtype == torch.float64
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    inputs = (features.double() - mean) / std
    loss = F.cross_entropy(inputs @ weight.T + bias, labels) + weight_decay * weight.square().sum()
    grad_weight, grad_bias = torch.autograd.grad(loss, [weight, bias])
    assert grad_weight.abs().max() < 1e-6 and grad_bias.abs().max() < 1e-6
    assert weight.abs().max() > 0.1  # the optimum is not the zero start


def test_linear_probe_is_deterministic():
    features, labels = gaussian_clusters(100, classes=3, dim=4, spread=2.0, seed=7)
    first, second = fit_linear_probe(features, labels), fit_linear_probe(features, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------------------------------------ report

def test_probe_report_probes_the_mean_pooled_tokens():
    train, train_labels = gaussian_clusters(60, classes=3, dim=4, spread=1.0, seed=8)
    test, test_labels = gaussian_clusters(30, classes=3, dim=4, spread=1.0, seed=9)
    offsets = torch.randn(5, 4, generator=torch.Generator().manual_seed(10))
    offsets -= offsets.mean(dim=0)  # the tokens of an "image" average to its feature

    def encoder_fn(images: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        return images[:, None, :] + offsets  # [B, 5 tokens, 4]

    torch.testing.assert_close(pooled_features(encoder_fn, train, batch_size=7), train)
    report = probe_report(encoder_fn, train, train_labels, test, test_labels, batch_size=7)
    assert report == {"knn": knn_accuracy(train, train_labels, test, test_labels),
                      "linear": linear_probe_accuracy(train, train_labels, test, test_labels)}


# ------------------------------------------------------------------------------------------------ input checks

def test_probes_reject_bad_shapes_with_the_shape_in_the_message():
    features, labels = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match=r"train_features \[N, D\].*\[10, 4, 1\]"):
        knn_accuracy(features[..., None], labels, features, labels)
    with pytest.raises(ValueError, match=r"test_labels \[10\].*\[9\]"):
        knn_accuracy(features, labels, features, labels[:9])
    with pytest.raises(ValueError, match=r"k=11 .*\[10, 4\]"):
        knn_accuracy(features, labels, features, labels, k=11)
    with pytest.raises(ValueError, match=r"\[10, 4\] and test_features \[10, 3\]"):
        linear_probe_accuracy(features, labels, features[:, :3], labels)
    with pytest.raises(ValueError, match=r"train_labels \[10\].*torch.float32"):
        fit_linear_probe(features, labels.float())
    with pytest.raises(ValueError, match=r"encoder tokens \[B, T, D\], got \[10, 4\]"):
        probe_report(lambda images: images, features, labels, features, labels)
