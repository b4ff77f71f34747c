"""DINOv2 through timm: weight layouts, the two preprocessing paths, token layout."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sfd.tokenizers.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_dinov2,
    extraction_preprocess,
    load_dinov2_weights,
    semvae_training_transform,
    tiny_dinov2,
    tokens_to_map,
)


def hub_layout(encoder):
    """The official torch.hub key layout of a timm DINOv2-reg state dict (registers, mask token, 37×37+CLS table)."""
    state = {}
    for key, value in encoder.vit.state_dict().items():
        if key == "reg_token":
            state["register_tokens"] = value.clone()
        elif key == "pos_embed":
            state["pos_embed"] = torch.randn(1, 1 + 37 * 37, value.shape[-1])
        else:
            state[key] = value.clone()
    state["mask_token"] = torch.zeros(1, value.shape[-1])
    return state


def test_timm_and_hub_layouts_load(tmp_path):
    source = tiny_dinov2(seed=0)
    torch.save(source.vit.state_dict(), tmp_path / "timm.pth")
    target = load_dinov2_weights(tiny_dinov2(seed=1), tmp_path / "timm.pth")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(target(images), source(images))
    torch.save(hub_layout(source), tmp_path / "hub.pth")
    converted = load_dinov2_weights(tiny_dinov2(seed=1), tmp_path / "hub.pth")
    assert torch.equal(converted.vit.reg_token, source.vit.reg_token)
    assert converted.vit.pos_embed.shape == (1, 256, 32)  # resampled from the 37×37 table
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_dinov2_weights(tiny_dinov2(), tmp_path / "missing.pth")
    torch.save({"blocks.0.norm1.weight": torch.ones(32)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        load_dinov2_weights(tiny_dinov2(), tmp_path / "partial.pth")


def test_release_model_shape_and_tokens():
    with torch.device("meta"):
        encoder = build_dinov2("dinov2_vitb14_reg")
    assert encoder.embed_dim == 768 and encoder.grid == 16 and encoder.vit.num_prefix_tokens == 5
    tiny = tiny_dinov2()
    tokens = tiny(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 256, 32)
    with pytest.raises(ValueError, match="unknown DINOv2"):
        build_dinov2("dinov3")


def test_extraction_preprocess_normalises_then_resizes_without_antialias():
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = F.interpolate(((images + 1) / 2 - mean) / std, size=(224, 224), mode="bicubic", align_corners=False,
                             antialias=False)
    assert torch.equal(extraction_preprocess(images), expected)
    # antialiasing would change the result: the path really is the release's plain bicubic
    antialiased = F.interpolate(((images + 1) / 2 - mean) / std, size=(224, 224), mode="bicubic", antialias=True)
    assert not torch.allclose(extraction_preprocess(images), antialiased)


def test_semvae_training_transform_and_token_grid():
    image = Image.new("RGB", (300, 400), (200, 10, 50))
    tensor = semvae_training_transform()(image)
    assert tensor.shape == (3, 224, 224)
    assert torch.allclose(tensor[:, 100, 100], (torch.tensor([200, 10, 50]) / 255 - torch.tensor(IMAGENET_MEAN))
                          / torch.tensor(IMAGENET_STD), atol=1e-5)
    tokens = torch.arange(2 * 256 * 3, dtype=torch.float32).reshape(2, 256, 3)
    grid = tokens_to_map(tokens)
    assert grid.shape == (2, 3, 16, 16) and torch.equal(grid[1, :, 1, 2], tokens[1, 16 + 2])
