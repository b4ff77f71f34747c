"""Demo stand-in networks: shapes, normalisation, input checks, learning on an easy synthetic task, determinism."""

from __future__ import annotations

import inspect
import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from sfd.experiments.networks import (
    MIN_LR_FACTOR,
    FeatureClassifier,
    PatchEncoder,
    _build_seeded,
    accuracy,
    augment_views,
    demo_vae_config,
    learning_rate,
    nt_xent_loss,
    random_brightness_contrast,
    random_hflip,
    random_resized_crop,
    train_classifier,
    train_patch_encoder,
    train_patch_encoder_ssl,
    train_texture_vae,
)
from sfd.tokenizers.dinov2 import tokens_to_map
from sfd.tokenizers.texture_vae import TextureVAE

CLASSES = 3


def synthetic_images(count: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images in [-1, 1] whose class decides the pattern — vertical stripes, horizontal stripes, a centred
    blob — plus a little noise: separable in a few steps, and mirroring keeps each class's pattern."""
    coords = torch.arange(32, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    blob = 2 * torch.exp(-((rows - 15.5) ** 2 + (cols - 15.5) ** 2) / 40) - 1
    patterns = torch.stack([torch.sin(0.8 * cols), torch.sin(0.8 * rows), blob])
    labels = torch.arange(count) % CLASSES
    noise = 0.1 * torch.randn(count, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
    images = (patterns[labels][:, None] + noise).clamp(-1, 1)
    return images.expand(-1, 3, -1, -1).contiguous(), labels


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_images()


def _vae(images, labels, **kwargs):
    return train_texture_vae(images, demo_vae_config(), **kwargs)


def _encoder(images, labels, **kwargs):
    return train_patch_encoder(images, labels, **kwargs)


def _classifier(images, labels, **kwargs):
    return train_classifier(images, labels, **kwargs)


def _ssl_encoder(images, labels, **kwargs):
    return train_patch_encoder_ssl(images, **kwargs)  # the labels are never passed


TRAINERS: dict[str, Callable] = {"texture_vae": _vae, "patch_encoder": _encoder, "patch_encoder_ssl": _ssl_encoder,
                                 "classifier": _classifier}


# ------------------------------------------------------------------------------------------------------ shapes

def test_vae_config_builds_an_f4_texture_vae_with_4_channels():
    vae = TextureVAE(demo_vae_config())
    images = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        posterior = vae.encode(images)
        decoded = vae.decode(posterior.mode())
    assert vae.downsample_ratio == 4 and vae.latent_channels == 4
    assert posterior.mean.shape == (2, 4, 8, 8) and posterior.std.shape == (2, 4, 8, 8)
    assert decoded.shape == (2, 3, 32, 32)
    assert sum(p.numel() for p in vae.parameters()) < 1_000_000


def test_patch_encoder_tokens_are_on_the_latent_grid_and_layer_normalised():
    encoder = PatchEncoder().eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        tokens = encoder(images)
        logits = encoder.logits(images)
    assert encoder.embed_dim == 32 and encoder.grid == 8
    assert tokens.shape == (3, encoder.grid**2, encoder.embed_dim)
    assert logits.shape == (3, 10)
    # DINOv2-like final norm: zero mean, unit variance over each token's features.
    assert tokens.mean(dim=-1).abs().max() < 1e-5
    assert (tokens.var(dim=-1, unbiased=False) - 1).abs().max() < 1e-3


def test_patch_encoder_tokens_are_row_major_grid_cells():
    """Token t is grid cell (t // 8, t % 8), the layout ``tokens_to_map`` (and so the shard writer) assumes."""
    encoder = PatchEncoder().eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        maps = encoder.features(images)  # [B, D, 8, 8] before the per-token norm
        tokens = encoder(images)
    expected = F.layer_norm(maps.permute(0, 2, 3, 1), (encoder.embed_dim,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(tokens_to_map(tokens), expected)


def test_classifier_features_and_logits():
    classifier = FeatureClassifier().eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert classifier.features(images).shape == (4, FeatureClassifier.feature_dim) == (4, 128)
        assert classifier(images).shape == (4, 10)


def test_classifier_reads_uint8_images_as_to_uint8_writes_them():
    classifier = FeatureClassifier().eval()
    pixels = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    floats = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(TextureVAE.to_uint8(floats), pixels)  # the decoding is to_uint8's exact inverse
    with torch.no_grad():
        torch.testing.assert_close(classifier.features(pixels), classifier.features(floats))


@pytest.mark.parametrize("bad", [torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 28, 28), torch.zeros(3, 32, 32)])
def test_networks_reject_wrong_image_shapes(bad):
    with pytest.raises(ValueError, match=r"expected float images \[B, 3, 32, 32\]"):
        PatchEncoder()(bad)
    with pytest.raises(ValueError, match=r"expected float images \[B, 3, 32, 32\]"):
        FeatureClassifier().features(bad)


def test_classifier_rejects_channels_first_uint8():
    with pytest.raises(ValueError, match=r"expected uint8 images \[B, 32, 32, 3\]"):
        FeatureClassifier().features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_trainers_reject_mismatched_labels_and_bad_schedules(data):
    images, labels = data
    with pytest.raises(ValueError, match="integer labels"):
        train_classifier(images, labels[:-1], steps=1, batch_size=4, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="must be positive"):
        train_patch_encoder(images, labels, steps=0, batch_size=4, lr=1e-3, seed=0)


# -------------------------------------------------------------------------------------------------- training

def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_texture_vae_learns_to_reconstruct(data):
    images, labels = data
    vae, losses = _vae(images, labels, steps=12, batch_size=8, lr=2e-3, seed=0)
    assert len(losses) == 12 and not vae.training
    assert _mean(losses[-4:]) < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ["patch_encoder", "classifier"])
def test_supervised_trainers_learn_the_synthetic_classes(data, name):
    images, labels = data
    model, losses = TRAINERS[name](images, labels, steps=30, batch_size=16, lr=2e-3, seed=0)
    assert not model.training
    assert _mean(losses[-5:]) < 0.5 * losses[0], losses
    classify = model.logits if isinstance(model, PatchEncoder) else model
    with torch.no_grad():
        assert (classify(images).argmax(dim=1) == labels).float().mean() > 0.9


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainers_are_deterministic_given_the_seed(data, name):
    images, labels = data
    reports: list[tuple[int, float]] = []
    first, losses_first = TRAINERS[name](images, labels, steps=3, batch_size=8, lr=1e-3, seed=5,
                                         progress=lambda step, loss: reports.append((step, loss)))
    second, losses_second = TRAINERS[name](images, labels, steps=3, batch_size=8, lr=1e-3, seed=5)
    other, _ = TRAINERS[name](images, labels, steps=3, batch_size=8, lr=1e-3, seed=6)
    assert losses_first == losses_second
    assert reports == list(zip([1, 2, 3], losses_first))
    state, same, different = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(state[key], same[key]) for key in state)
    assert any(not torch.equal(state[key], different[key]) for key in state if state[key].is_floating_point())


def test_ssl_trainer_takes_no_labels():
    parameters = inspect.signature(train_patch_encoder_ssl).parameters
    assert list(parameters) == ["images", "steps", "batch_size", "lr", "seed", "temperature", "progress"]
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(parameters)[1:])


def test_ssl_trainer_lowers_its_contrastive_loss(data):
    images, _ = data
    encoder, losses = train_patch_encoder_ssl(images, steps=30, batch_size=32, lr=2e-3, seed=0)
    assert len(losses) == 30 and not encoder.training
    assert math.isclose(losses[0], math.log(2 * 32 - 1), rel_tol=0.05)  # fresh embeddings: about uniform
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 0.3, losses


def test_ssl_encoder_saves_the_supervised_encoders_keys_and_leaves_the_head_untrained(data):
    images, _ = data
    ssl, _ = train_patch_encoder_ssl(images, steps=2, batch_size=8, lr=1e-3, seed=3)
    fresh = PatchEncoder()
    assert type(ssl) is PatchEncoder and list(ssl.state_dict()) == list(fresh.state_dict())
    fresh.load_state_dict(ssl.state_dict())  # strict, as load_module loads a saved encoder
    # It starts from the supervised trainer's initial weights for the seed; only the features move.
    initial, trained = _build_seeded(PatchEncoder, 3).state_dict(), ssl.state_dict()
    assert all(torch.equal(initial[key], trained[key]) for key in initial if key.startswith("head."))
    assert not any(torch.equal(initial[key], trained[key]) for key in initial if key.startswith("features."))


def test_nt_xent_matches_its_definition():
    embeddings = F.normalize(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    temperature, count = 0.3, 3
    total = 0.0
    for row in range(2 * count):
        partner = (row + count) % (2 * count)
        logits = [float(embeddings[row] @ embeddings[other]) / temperature for other in range(2 * count)
                  if other != row]
        partner_logit = float(embeddings[row] @ embeddings[partner]) / temperature
        total += math.log(sum(math.exp(value) for value in logits)) - partner_logit
    assert math.isclose(nt_xent_loss(embeddings, temperature).item(), total / (2 * count), rel_tol=1e-5)


def test_views_are_seeded_independent_crops_inside_the_image(data):
    images, _ = data
    first, second = augment_views(images, torch.Generator().manual_seed(0))
    again = augment_views(images, torch.Generator().manual_seed(0))
    assert first.shape == second.shape == images.shape
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, second) and first.min() >= -1 and first.max() <= 1
    # A crop samples only inside the image: a constant image stays constant, a ramp stays within its range.
    constant = torch.full((16, 3, 32, 32), 0.25)
    torch.testing.assert_close(random_resized_crop(constant, torch.Generator().manual_seed(1)), constant)
    ramp = torch.linspace(-1, 1, 32).expand(16, 3, 32, 32)
    crops = random_resized_crop(ramp, torch.Generator().manual_seed(1))
    spans = crops[:, 0, 0, -1] - crops[:, 0, 0, 0]  # the ramp's rise across the crop: its width, times 2
    assert (spans > 2 * math.sqrt(0.35 * 3 / 4) * 31 / 32 - 1e-4).all() and (spans < 2 + 1e-4).all()
    assert spans.std() > 0.05  # the crops differ in size


def test_brightness_contrast_is_one_affine_map_per_image(data):
    images, _ = data
    jittered = random_brightness_contrast(images * 0.5, torch.Generator().manual_seed(2))
    for original, changed in zip(images * 0.5, jittered):
        gain, shift = torch.linalg.lstsq(torch.stack([original.flatten(), torch.ones(original.numel())], 1),
                                         changed.flatten()[:, None]).solution.flatten().tolist()
        assert 0.6 <= gain <= 1.4 and -0.3 <= shift <= 0.3  # images * 0.5 with |shift| ≤ 0.3: nothing clamps


def test_trainers_leave_the_global_rng_alone(data):
    images, labels = data
    before = torch.get_rng_state()
    train_classifier(images, labels, steps=1, batch_size=4, lr=1e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    steps, peak = 200, 1e-3
    rates = [learning_rate(step, steps, peak) for step in range(steps)]
    warmup = rates.index(max(rates))
    assert 0 < rates[0] < peak and math.isclose(max(rates), peak)
    assert all(a < b for a, b in zip(rates[:warmup], rates[1:warmup + 1]))
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))
    assert math.isclose(rates[-1], MIN_LR_FACTOR * peak)


def test_random_hflip_mirrors_a_seeded_half(data):
    images, _ = data
    flipped = random_hflip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f, i.flip(-1)) and not torch.equal(f, i) for f, i in zip(flipped, images)]
    kept = [torch.equal(f, i) for f, i in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 16 < sum(mirrored) < 48
    assert torch.equal(flipped, random_hflip(images, torch.Generator().manual_seed(0)))


def test_accuracy_restores_the_training_mode(data):
    images, labels = data
    classifier = FeatureClassifier().train()
    value = accuracy(classifier, images, labels, batch_size=10)
    assert classifier.training and 0.0 <= value <= 1.0
