"""The demo's small stand-in networks and their trainers (Fashion-MNIST, 32×32, CPU).

Pretrained SD-VAE and DINOv2 weights cannot be downloaded offline, so the demo trains three small networks on the
images themselves, each in a couple of minutes on two CPU cores:

* the texture VAE: a tiny member of the project's LDM KL-VAE family (``TextureVAE``), 32×32×3 → 4×8×8;
* ``PatchEncoder``: a CNN whose LayerNormed per-patch tokens [B, 64, 32] on the same 8×8 grid stand in for DINOv2's
  patch features, trained either supervised (``train_patch_encoder``) or, like DINOv2, without labels
  (``train_patch_encoder_ssl``): same architecture and initial weights, only the objective differs;
* ``FeatureClassifier``: a differently built CNN, trained independently, whose penultimate features define the
  demo's FID (the Inception network of real FID is not available either).

Images are float [N, 3, 32, 32] in [-1, 1] (Fashion-MNIST padded to 32 and replicated to RGB); labels int [N].
Every random draw — initial weights, batch order, augmentations, posterior noise — comes from the trainer's
``seed``, so a trainer returns identical weights and losses for the same inputs on the same machine (and thread
count). All the trainers share one loop: AdamW, linear warm-up then cosine decay, gradient clipping, and, when given,
``progress(step, loss)`` after every optimizer step (step = 1 … steps).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Tuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from sfd.rng import derive_seed
from sfd.tokenizers.texture_vae import TextureVAE, TextureVAEConfig
from sfd.training_loop import Every, run_steps

IMAGE_SIZE = 32  # demo images are 32×32 (Fashion-MNIST's 28×28 padded)
DEMO_VAE_YAML = Path(__file__).resolve().parent / "configs" / "demo_fashion_f4d4.yaml"
NUM_CLASSES = 10
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")  # Fashion-MNIST's labels 0-9
PATCH_GRID = 8  # tokens per side: the texture latent's grid, so semantic and texture latents align cell by cell

# Reconstruction is the mean squared error per pixel; the KL term is the mean KL per latent element. At this weight
# the KL only keeps the posterior from collapsing to a point of arbitrary scale (the latents come out with a standard
# deviation of order one); it is too weak to cost reconstruction detail. The pipeline standardises the latents per
# channel afterwards, as SFD does with its latent statistics.
VAE_KL_WEIGHT = 1e-4

WEIGHT_DECAY = 0.01  # AdamW's default, for all the trainers
WARMUP_FRACTION = 0.05  # linear warm-up over the first 5 % of the steps: high learning rates on fresh weights
MIN_LR_FACTOR = 0.05  # then cosine decay to 5 % of the peak, which settles a short run into a minimum
GRAD_CLIP = 1.0  # global gradient-norm clip; keeps the VAE's first steps at a high learning rate stable

# Offsets that give each random stream of a trainer its own seed (derive_seed(seed, stream)).
_INIT, _ORDER, _AUGMENT, _POSTERIOR = range(4)

ProgressFn = Optional[Callable[[int, float], None]]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


# ------------------------------------------------------------------------------------------------ the texture VAE

def demo_vae_config() -> TextureVAEConfig:
    """The demo's texture VAE (``sfd/experiments/configs/demo_fashion_f4d4.yaml``, without its weights): LDM KL-VAE at
    32 px with three levels (4× downsampling to an 8×8 latent), 4 latent channels, the family's minimum width of 32
    (GroupNorm with 32 groups) and one resnet per encoder level (the decoder has two); 0.78M parameters. As in SD-VAE
    f16d32, the lowest level also attends (resolution 8 here, 16 there); at 8×8 = 64 tokens that is cheap.

    The full-resolution level dominates the cost and cannot be narrower than 32 channels, so the only saving left
    is the middle level: ch_mult (1, 1, 2) trains about 30 % faster than (1, 2, 2) on a 2-core CPU and reconstructs
    Fashion-MNIST as well for the same time (24.5 vs 24.3 dB PSNR after ~3 min)."""
    config = TextureVAEConfig.from_yaml(DEMO_VAE_YAML)
    config.ckpt_path = None
    return config


def train_texture_vae(images: torch.Tensor, config: TextureVAEConfig, *, steps: int, batch_size: int, lr: float,
                      seed: int, progress: ProgressFn = None,
                      kl_weight: float = VAE_KL_WEIGHT) -> Tuple[TextureVAE, List[float]]:
    """Train a ``TextureVAE`` on ``images`` (float [N, 3, H, W] in [-1, 1]): loss = MSE(decode(z), x) +
    ``kl_weight``·mean KL, z a posterior sample drawn from a seeded generator (as LDM trains on samples, not means).
    The LDM recipe's LPIPS and GAN terms are left out: at 32 px and a budget of minutes they cost more than they
    give. Returns the model in eval mode and the loss of every step."""
    _check_images(images, config.in_channels, config.resolution)
    _check_schedule(steps, batch_size, lr)
    vae = _build_seeded(lambda: TextureVAE(config), seed)
    batches = _batch_indices(len(images), steps, batch_size, _generator(seed, _ORDER))
    noise = _generator(seed, _POSTERIOR)

    def loss_at(step: int) -> torch.Tensor:
        x = images[batches[step]]
        posterior = vae.encode(x)
        reconstruction = vae.decode(posterior.sample(generator=noise))
        kl_per_element = posterior.kl() / posterior.mean[0].numel()
        return F.mse_loss(reconstruction, x) + kl_weight * kl_per_element.mean()

    losses = _fit(vae, loss_at, steps=steps, lr=lr, progress=progress)
    return vae.eval(), losses


# ---------------------------------------------------------------------------------------- the DINOv2 stand-in

class PatchEncoder(nn.Module):
    """The demo's DINOv2 stand-in: images in [-1, 1] [B, 3, 32, 32] → patch tokens [B, 64, embed_dim], row-major on
    the 8×8 grid. Each token's convolutional receptive field is centred on its 4×4-pixel patch; the GroupNorm
    statistics are per image, so every token also depends a little on the whole image (as DINOv2's attention makes
    its tokens do), and the features are the same in train and eval mode.

    Like DINOv2's final norm, every token is LayerNormed over its features; the affine part is dropped so each
    token has exactly zero mean and unit variance (the next consumer, the SemVAE, has its own linear input layer).
    ``head`` is a linear classifier on the mean token, used only by the supervised trainer to train the features
    (the self-supervised one leaves it at its initial weights, so both trainers save the same state-dict keys)."""

    def __init__(self, embed_dim: int = 32, width: int = 64) -> None:
        super().__init__()
        self._embed_dim = embed_dim
        self.features = nn.Sequential(
            _conv_gn_gelu(3, width // 2, stride=2),  # 32 → 16
            _conv_gn_gelu(width // 2, width, stride=1),
            _conv_gn_gelu(width, width, stride=2),  # 16 → 8: the patch grid
            _conv_gn_gelu(width, width, stride=1),
            nn.Conv2d(width, embed_dim, kernel_size=1),
        )
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        self.head = nn.Linear(embed_dim, NUM_CLASSES)

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    @property
    def grid(self) -> int:
        return PATCH_GRID

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens [B, 64, embed_dim]; token t is grid cell (t // 8, t % 8)."""
        _check_images(images, 3, IMAGE_SIZE)
        maps = self.features(images)  # [B, D, 8, 8]
        return self.norm(maps.flatten(2).transpose(1, 2))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10] from the mean token (training only)."""
        return self.head(self(images).mean(dim=1))


def untrained_patch_encoder(seed: int) -> PatchEncoder:
    """A ``PatchEncoder`` with its seeded initial weights, in eval mode: the floor the probes of trained encoders are
    read against (random convolutional features already separate Fashion-MNIST classes fairly well)."""
    return _build_seeded(PatchEncoder, seed).eval()


def _conv_gn_gelu(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(8, channels_out), nn.GELU())


def train_patch_encoder(images: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                        seed: int, progress: ProgressFn = None) -> Tuple[PatchEncoder, List[float]]:
    """Train a ``PatchEncoder`` by cross-entropy of its head on the mean token, with random horizontal flips.

    This stands in for DINOv2's self-supervised training (DINO + iBOT on 142M images): what SFD needs from the
    semantic encoder is patch features that carry the image's semantics on the latent grid, and supervision is the
    cheapest way to get them from 60k images in a minute. Returns the model in eval mode and the loss of every
    step."""
    _check_labelled(images, labels)
    _check_schedule(steps, batch_size, lr)
    encoder = _build_seeded(PatchEncoder, seed)
    loss_at = _classification_loss(encoder.logits, images, labels, steps, batch_size, seed)
    losses = _fit(encoder, loss_at, steps=steps, lr=lr, progress=progress)
    return encoder.eval(), losses


def _classification_loss(logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         labels: torch.Tensor, steps: int, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """Cross-entropy of step ``step``'s batch (seeded order, seeded random horizontal flips), for the two supervised
    trainers."""
    labels = labels.long()
    batches = _batch_indices(len(images), steps, batch_size, _generator(seed, _ORDER))
    flips = _generator(seed, _AUGMENT)

    def loss_at(step: int) -> torch.Tensor:
        x = random_hflip(images[batches[step]], flips)
        return F.cross_entropy(logits_of(x), labels[batches[step]])

    return loss_at


# Views for the self-supervised trainer. SimCLR crops down to 8 % of a 224-px ImageNet photo; crops of a 32-px image
# of one centred garment are kept to at least 35 % of its area, so that both views of an image still show a
# recognisable part of the same garment. The images are grey, so brightness and contrast are the only colour
# changes that apply.
CROP_SCALE = (0.35, 1.0)  # crop area, as a fraction of the image
CROP_RATIO = (3 / 4, 4 / 3)  # crop width / height, drawn log-uniformly
CONTRAST_RANGE = (0.6, 1.4)  # pixels are multiplied by U(0.6, 1.4) …
BRIGHTNESS_SHIFT = 0.3  # … then shifted by U(−0.3, 0.3), and clamped back to [−1, 1]
SSL_TEMPERATURE = 0.2  # NT-Xent temperature, in SimCLR's useful range (0.1–0.5)
PROJECTION_WIDTH, PROJECTION_DIM = 128, 64  # the projection head 32 → 128 → 64


class _ContrastiveModel(nn.Module):
    """A ``PatchEncoder`` and SimCLR's projection head (Linear → GELU → Linear) on its mean token; ``forward`` gives
    the L2-normalised embeddings [B, PROJECTION_DIM]. The encoder is built first, so from the same seed it starts
    from the supervised trainer's initial weights."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = PatchEncoder()
        self.projector = nn.Sequential(nn.Linear(self.encoder.embed_dim, PROJECTION_WIDTH), nn.GELU(),
                                       nn.Linear(PROJECTION_WIDTH, PROJECTION_DIM))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.encoder(images).mean(dim=1)), dim=1)


def train_patch_encoder_ssl(images: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
                            temperature: float = SSL_TEMPERATURE,
                            progress: ProgressFn = None) -> Tuple[PatchEncoder, List[float]]:
    """Train a ``PatchEncoder`` without labels: SimCLR's contrastive NT-Xent (InfoNCE) loss between two augmented
    views of each image (``augment_views``), embedded by a projection head on the mean patch token.

    Why this objective: like DINOv2's, it learns from the images alone, so the features are not told the class and
    keep the pose, shape and layout variation an image has beyond it — invariance is learned only to what the
    augmentations change. Of the self-supervised objectives it is the one that converges reliably within the demo's
    budget of a few minutes on two CPU cores: the other views in the batch are the negatives that keep the
    embeddings from collapsing, whereas DINO avoids collapse with teacher centering and sharpening, a temperature
    schedule and an EMA teacher, machinery that needs long schedules to settle.

    The projection head is discarded afterwards, as in SimCLR (the layer before it keeps more of the image), and
    ``head`` is never trained. Returns the encoder in eval mode and the loss of every step."""
    _check_images(images, 3, IMAGE_SIZE)
    _check_schedule(steps, batch_size, lr)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    model = _build_seeded(_ContrastiveModel, seed)
    batches = _batch_indices(len(images), steps, batch_size, _generator(seed, _ORDER))
    views = _generator(seed, _AUGMENT)

    def loss_at(step: int) -> torch.Tensor:
        first, second = augment_views(images[batches[step]], views)
        return nt_xent_loss(model(torch.cat([first, second])), temperature)

    losses = _fit(model, loss_at, steps=steps, lr=lr, progress=progress)
    return model.encoder.eval(), losses


def nt_xent_loss(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of L2-normalised embeddings [2B, E], rows i and i + B being the two views of one image:
    for each row, cross-entropy of its cosine similarities / ``temperature`` to the other 2B − 1 rows (its own
    similarity masked), the target being its other view."""
    count = len(embeddings) // 2
    similarity = embeddings @ embeddings.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * count, dtype=torch.bool), float("-inf"))
    partner = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])
    return F.cross_entropy(similarity, partner)


def augment_views(images: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of each image: resized crop, horizontal flip, brightness/contrast jitter."""
    return _augment(images, generator), _augment(images, generator)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return random_brightness_contrast(random_hflip(random_resized_crop(images, generator), generator), generator)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random crop of each image (area CROP_SCALE, aspect ratio CROP_RATIO, anywhere inside the image) resized
    back to the image's size bilinearly, all images in one ``grid_sample``. A crop side that would exceed the image
    (large areas at extreme ratios) is cut to the image, where torchvision would re-draw: one batched draw instead."""
    count = len(images)
    draws = torch.rand(count, 4, generator=generator)
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * draws[:, 0]
    log_ratio = math.log(CROP_RATIO[0]) + (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])) * draws[:, 1]
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # fractions of the image's side
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    # In grid_sample's coordinates the image spans [−1, 1]: a crop of side fraction s has half-side s, and its
    # centre can move by up to 1 − s either way.
    centre_x = (2 * draws[:, 2] - 1) * (1 - width)
    centre_y = (2 * draws[:, 3] - 1) * (1 - height)
    zero = torch.zeros(count)
    theta = torch.stack([torch.stack([width, zero, centre_x], 1), torch.stack([zero, height, centre_y], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_brightness_contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x · U(CONTRAST_RANGE) + U(±BRIGHTNESS_SHIFT) per image, clamped to [−1, 1]."""
    draws = torch.rand(len(images), 2, 1, 1, 1, generator=generator).to(images.dtype)
    gain = CONTRAST_RANGE[0] + (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * draws[:, 0]
    shift = BRIGHTNESS_SHIFT * (2 * draws[:, 1] - 1)
    return (images * gain + shift).clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------------ the FID network

class FeatureClassifier(nn.Module):
    """The network behind the demo's FID: a small ResNet (BatchNorm, ReLU, three residual stages 32→64→128 on
    16→8→4 maps). It is built differently from ``PatchEncoder`` and trained from another seed, so the metric does
    not share the diffusion models' own semantic features. ``features`` are the 128 pooled penultimate
    activations; ``forward`` gives the logits."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())  # 32 → 16
        self.stages = nn.Sequential(_ResidualBlock(32, 32, stride=1), _ResidualBlock(32, 64, stride=2),
                                    _ResidualBlock(64, self.feature_dim, stride=2))  # 16 → 8 → 4
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 128] of float images [B, 3, 32, 32] in [-1, 1], or of uint8 images
        [B, 32, 32, 3] as ``TextureVAE.to_uint8`` and image files give them (x = u / 127.5 − 1, its inverse)."""
        if images.dtype == torch.uint8:
            _check_uint8(images)
            images = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        _check_images(images, 3, IMAGE_SIZE)
        return self.stages(self.stem(images)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class _ResidualBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with BatchNorm; a strided 1×1 projection when the shape changes."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                     seed: int, progress: ProgressFn = None) -> Tuple[FeatureClassifier, List[float]]:
    """Train a ``FeatureClassifier`` (cross-entropy, random horizontal flips). Returns it in eval mode and the loss
    of every step."""
    _check_labelled(images, labels)
    _check_schedule(steps, batch_size, lr)
    classifier = _build_seeded(FeatureClassifier, seed)
    loss_at = _classification_loss(classifier, images, labels, steps, batch_size, seed)
    losses = _fit(classifier, loss_at, steps=steps, lr=lr, progress=progress)
    return classifier.eval(), losses


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy of a classifier (``model(images)`` → logits), evaluated in eval mode in batches; the
    model's train/eval mode is restored afterwards."""
    _check_labelled(images, labels)
    was_training = model.training
    model.eval()
    correct = sum(int((model(images[start:start + batch_size]).argmax(dim=1) == labels[start:start + batch_size])
                      .sum()) for start in range(0, len(images), batch_size))
    model.train(was_training)
    return correct / len(images)


# ------------------------------------------------------------------------------------------ shared training

def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ½ (one draw per image from ``generator``)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over WARMUP_FRACTION of the steps, then cosine decay to MIN_LR_FACTOR·peak."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)  # reaches 1 at the last step
    return peak * (MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def _fit(model: nn.Module, loss_at: Callable[[int], torch.Tensor], *, steps: int, lr: float,
         progress: ProgressFn) -> List[float]:
    """AdamW for ``steps`` steps on ``loss_at(step)`` through the project's loop (sfd/training_loop.py);
    ``progress(completed_steps, loss)`` after each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    model.train()
    losses: List[float] = []

    def step(index: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(index, steps, lr)
        loss = loss_at(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        losses.append(loss.item())
        return {"loss": losses[-1]}

    report = [Every(1, lambda done, record: progress(done, record["loss"]))] if progress is not None else []
    run_steps(step, range(steps), start=0, stop=steps, events=report)
    return losses


def _batch_indices(count: int, steps: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """[steps, batch_size] sample indices: successive seeded permutations of range(count), cut into batches, so
    every image is seen once per epoch."""
    epochs = math.ceil(steps * batch_size / count)
    order = torch.cat([torch.randperm(count, generator=generator) for _ in range(epochs)])
    return order[:steps * batch_size].view(steps, batch_size)


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def _build_seeded(factory: Callable[[], ModuleT], seed: int) -> ModuleT:
    """Construct a module with PyTorch's default initialisation drawn from ``seed``; the global RNG state is
    restored afterwards, so building does not disturb (or depend on) any other random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, _INIT))
        return factory()


# ------------------------------------------------------------------------------------------ input checks

def _check_images(images: torch.Tensor, channels: int, size: int) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != (channels, size, size) or not images.is_floating_point():
        raise ValueError(f"expected float images [B, {channels}, {size}, {size}] in [-1, 1], got "
                         f"{images.dtype} {list(images.shape)}")


def _check_uint8(images: torch.Tensor) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected uint8 images [B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {list(images.shape)}")


def _check_labelled(images: torch.Tensor, labels: torch.Tensor) -> None:
    _check_images(images, 3, IMAGE_SIZE)
    if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
        raise ValueError(f"expected integer labels [{len(images)}], got {labels.dtype} {list(labels.shape)}")


def _check_schedule(steps: int, batch_size: int, lr: float) -> None:
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
