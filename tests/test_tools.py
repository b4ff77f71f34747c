"""Tokenizer metrics against independent computations, and the latent visualiser / tokenizer evaluation end to end."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy.signal import convolve2d

from sfd.tokenizers.evaluation import feature_errors, psnr, ssim
from sfd.tokenizers.semvae import SemanticVAE, SemVAEArgs
from sfd.visualize import image_grid, pca_rgb
from tests.conftest import DATA

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import eval_tokenizers  # noqa: E402
import visualize_latents  # noqa: E402


def numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    scores = []
    for x, y in zip(a, b):
        f = lambda img: convolve2d(img, window[::-1, ::-1], mode="valid")  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        scores.append((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())
    return float(np.mean(scores))


def test_psnr_ssim_and_feature_errors():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 32, 40)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert torch.allclose(psnr(ta, ta + 1), torch.full((2,), 10 * np.log10(255**2), dtype=torch.float64))
    ours = ssim(ta, tb)
    for index in range(2):
        assert abs(ours[index].item() - numpy_ssim(a[index], b[index])) < 1e-10
    assert torch.allclose(ssim(ta, ta), torch.ones(2, dtype=torch.float64))
    tokens = torch.randn(2, 16, 8)
    mse, cosine = feature_errors(tokens, tokens * 2)
    assert torch.allclose(cosine, torch.ones(2)) and torch.allclose(mse, tokens.pow(2).mean(dim=(1, 2)))


def test_pca_rgb_and_grid():
    maps = torch.randn(3, 16, 4, 4)
    rgb = pca_rgb(maps, size=8)
    assert rgb.shape == (3, 8, 8, 3) and rgb.dtype == torch.uint8
    assert pca_rgb(torch.randn(2, 2, 4, 4)).shape == (2, 4, 4, 3)  # fewer than 3 channels
    grid = image_grid(np.zeros((5, 4, 4, 3), np.uint8), columns=2, padding=1)
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 3)


def test_visualize_latents(tmp_path):
    shard = tmp_path / "latents_shard000000.safetensors"
    save_file({"latents": torch.randn(3, 32, 16, 16), "latents_sv": torch.randn(3, 16, 16, 16),
               "feats_dino": torch.randn(3, 24, 16, 16).half()}, str(shard))
    out = tmp_path / "vis.png"
    assert visualize_latents.main([str(shard), "--texture-vae", str(DATA / "vae_tiny.yaml"), "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * 258 + 2, 3 * 258 + 2)
    assert visualize_latents.main([str(shard), "--flip", "--out", str(out)]) == 2  # no *_flip keys: clear error


def test_eval_tokenizers(tmp_path):
    for index in range(2):
        folder = tmp_path / "images" / f"class{index}"
        folder.mkdir(parents=True)
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (270, 256, 3), dtype=np.uint8)).save(
            folder / "a.png")
    torch.manual_seed(0)
    semvae = SemanticVAE(SemVAEArgs(input_dim=32, bottleneck_dim=4, hidden_dim=16, transformer_heads=2,
                                    transformer_blocks=1))
    torch.save({"model_state_dict": semvae.state_dict(),
                "config": "model:\n  params:\n    transformer_heads: 2\n"}, tmp_path / "semvae.pt")
    result = tmp_path / "result.json"
    code = eval_tokenizers.main(["--images", str(tmp_path / "images"), "--texture-vae", str(DATA / "vae_tiny.yaml"),
                                 "--semvae", str(tmp_path / "semvae.pt"), "--dino-model", "tiny-random",
                                 "--json", str(result), "--device", "cpu"])
    assert code == 0
    scores = json.loads(result.read_text())
    assert scores["images"] == 2 and set(scores) >= {"psnr", "ssim", "feature_mse", "feature_cosine"}
    assert 0 < scores["psnr"] < 100 and -1 <= scores["ssim"] <= 1
