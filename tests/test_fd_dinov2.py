"""FD_DINOv2 (docs/evaluator.md §13): the preprocessing, the official position-table resampling, the features of a
tiny random ViT of the ViT-L/14 family against a forward pass written here with plain torch ops, the official
torch.hub key layout loading strictly, the distance against SciPy, the reference cache and the CLI. Offline; no real
weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from sfd.evaluation import adm, npz
from sfd.evaluation.dinov2 import (
    FEATURE_DIM,
    MODEL,
    WEIGHTS_URL,
    DINOv2Features,
    DINOv2WeightsError,
    fd_dinov2_preprocess,
    load_dinov2_features,
)
from sfd.tokenizers.dinov2 import build_dinov2, hub_resample_pos_embed, tiny_dinov2
from tests.test_evaluation import RESULT_LINE, TinyFeatures, random_images, write_pngs

WIDTH, DEPTH, HEADS, HUB_GRID = 32, 2, 2, 37  # the official table: 37×37 patches of the 518-px training size
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vitl(seed: int = 1):
    """A random ViT of the FD_DINOv2 architecture (DINOv2 without registers), small, built as ViT-L/14 is built."""
    return tiny_dinov2(embed_dim=WIDTH, depth=DEPTH, heads=HEADS, seed=seed, name="dinov2_vitl14")


def hub_state(seed: int = 0, width: int = WIDTH, depth: int = DEPTH) -> dict[str, torch.Tensor]:
    """A state dict in the official torch.hub names of DINOv2 without registers (``dinov2_vitl14_pretrain.pth``):
    CLS position inside a 1 + 37·37 table, a ``mask_token``, LayerScale ``ls1.gamma``/``ls2.gamma``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=g)

    state = {"cls_token": rand(1, 1, width), "pos_embed": rand(1, 1 + HUB_GRID ** 2, width, scale=0.5),
             "mask_token": rand(1, width), "patch_embed.proj.weight": rand(width, 3, 14, 14, scale=0.05),
             "patch_embed.proj.bias": rand(width)}
    for i in range(depth):
        block = f"blocks.{i}."
        state |= {block + "norm1.weight": rand(width, offset=1.0), block + "norm1.bias": rand(width),
                  block + "attn.qkv.weight": rand(3 * width, width), block + "attn.qkv.bias": rand(3 * width),
                  block + "attn.proj.weight": rand(width, width), block + "attn.proj.bias": rand(width),
                  block + "ls1.gamma": rand(width, scale=0.5),
                  block + "norm2.weight": rand(width, offset=1.0), block + "norm2.bias": rand(width),
                  block + "mlp.fc1.weight": rand(4 * width, width), block + "mlp.fc1.bias": rand(4 * width),
                  block + "mlp.fc2.weight": rand(width, 4 * width), block + "mlp.fc2.bias": rand(width),
                  block + "ls2.gamma": rand(width, scale=0.5)}
    return state | {"norm.weight": rand(width, offset=1.0), "norm.bias": rand(width)}


def cubic_weights(n_in: int, n_out: int, step: float) -> np.ndarray:
    """[n_out, n_in] bicubic sampling matrix of PyTorch's convention (a = −0.75, half-pixel centres, edge
    replication, no antialias): output j reads the source position (j + 0.5)·step − 0.5."""
    a = -0.75

    def kernel(t):
        t = abs(t)
        return ((a + 2) * t - (a + 3)) * t * t + 1 if t <= 1 else ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    matrix = np.zeros((n_out, n_in))
    for j in range(n_out):
        source = (j + 0.5) * step - 0.5
        base = int(np.floor(source))
        for k in range(-1, 3):
            matrix[j, min(max(base + k, 0), n_in - 1)] += kernel(source - (base + k))
    return matrix


def oracle_patch_positions(table: torch.Tensor, grid: int, step: float) -> torch.Tensor:
    """Resample a [1, M·M, D] table to [1, grid·grid, D] with :func:`cubic_weights` on both axes, in float64."""
    side = round(table.shape[1] ** 0.5)
    square = table[0].double().numpy().reshape(side, side, -1)
    weights = cubic_weights(side, grid, step)
    resampled = np.einsum("ia,abd,jb->ijd", weights, square, weights)
    return torch.from_numpy(resampled.reshape(1, grid * grid, -1))


def official_positions(state: dict[str, torch.Tensor], grid: int = 16) -> torch.Tensor:
    """The official model's table for a 224-px input: CLS position kept, the patches sampled with step
    37/(16 + 0.1) — the scale factor (grid + 0.1)/37 of ``interpolate_pos_encoding``, not the size ratio 37/16."""
    table = state["pos_embed"]
    return torch.cat([table[:, :1].double(), oracle_patch_positions(table[:, 1:], grid, HUB_GRID / (grid + 0.1))], 1)


def oracle_features(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The protocol written out in float64: resize (bicubic, antialiased) → /255 → ImageNet norm → patch conv, CLS
    and positions → pre-norm blocks with LayerScale → final LayerNorm → CLS token."""
    w = {key: value.double() for key, value in state.items()}
    x = F.interpolate(images.double(), size=(224, 224), mode="bicubic", antialias=True) / 255
    x = (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(
        1, 3, 1, 1)
    tokens = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(len(tokens), -1, -1), tokens], 1) + official_positions(state)
    n, length, width = x.shape
    head = width // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        q, k, v = (h @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]).view(n, length, 3, HEADS, head).permute(
            2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / head ** 0.5, dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(n, length, width)
        x = x + w[p + "ls1.gamma"] * (mixed @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        hidden = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        x = x + w[p + "ls2.gamma"] * (hidden @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"])
    return F.layer_norm(x, (width,), w["norm.weight"], w["norm.bias"], eps=1e-6)[:, 0]


@pytest.fixture(scope="module")
def hub_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vitl14_pretrain.pth"
    torch.save(hub_state(), path)
    return path


@pytest.fixture(scope="module")
def features(hub_file) -> DINOv2Features:
    network, _ = load_dinov2_features(hub_file, encoder=tiny_vitl())
    return network


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing (docs/evaluator.md §13.2)

def test_preprocessing_resizes_then_scales_and_normalises():
    images = torch.from_numpy(random_images(3, 40, 56, seed=1)).permute(0, 3, 1, 2)
    resized = F.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True)
    expected = (resized / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(fd_dinov2_preprocess(images), expected)
    # at 224 px the resize is the identity: only the scaling and the normalisation remain
    native = torch.from_numpy(random_images(2, 224, 224, seed=2)).permute(0, 3, 1, 2)
    plain = (native.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(fd_dinov2_preprocess(native), plain, atol=1e-6, rtol=0)


def test_preprocessing_antialiases_and_does_not_clamp():
    large = torch.from_numpy(random_images(1, 448, 448, seed=3)).permute(0, 3, 1, 2)
    aliased = F.interpolate(large.float(), size=(224, 224), mode="bicubic", antialias=False) / 255
    unnormalised = fd_dinov2_preprocess(large) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1,
                                                                                                                 1)
    assert (unnormalised - aliased).abs().mean() > 0.05  # averaging over 2×2 pixels of noise, not sampling them
    edge = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    edge[..., 4:] = 255  # upsampling a step with the cubic kernel overshoots on both sides; the values are kept
    values = fd_dinov2_preprocess(edge) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert values.min() < -0.01 and values.max() > 1.01
    for bad in (torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8, 3, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="DINOv2 input: expected uint8 images"):
            fd_dinov2_preprocess(bad)


# ----------------------------------------------------------------------------------------------------------------
# Position table (docs/evaluator.md §13.3)

def test_official_position_resampling_and_the_timm_difference():
    table = torch.randn(1, HUB_GRID ** 2, 8, generator=torch.Generator().manual_seed(4))
    official = hub_resample_pos_embed(table, 16, registers=False)
    # PyTorch computes the sampling positions in float32: agreement with the float64 oracle is ~1e-5, not 1e-12
    assert torch.allclose(official.double(), oracle_patch_positions(table, 16, HUB_GRID / 16.1), atol=1e-4)
    assert not torch.allclose(official.double(), oracle_patch_positions(table, 16, HUB_GRID / 16), atol=1e-2)
    # timm resamples at load by output size with antialiasing: the rule of the models with registers, not this one's
    timm = resample_abs_pos_embed(table, new_size=[16, 16], num_prefix_tokens=0)
    assert torch.equal(hub_resample_pos_embed(table, 16, registers=True), timm)
    assert (official - timm).abs().max() > 0.1
    assert hub_resample_pos_embed(table, HUB_GRID, registers=False) is table


# ----------------------------------------------------------------------------------------------------------------
# Weights: the official layout loads strictly, timm's too (docs/evaluator.md §13.4)

def test_hub_layout_loads_strictly_into_the_vitl_architecture(features):
    state = hub_state()
    vit = features.encoder.vit
    assert features.feature_dim == WIDTH and vit.num_reg_tokens == 0 and vit.pos_embed.shape == (1, 257, WIDTH)
    assert torch.equal(vit.cls_token, state["cls_token"]) and torch.equal(vit.blocks[1].ls2.gamma,
                                                                          state["blocks.1.ls2.gamma"])
    assert torch.allclose(vit.pos_embed.double(), official_positions(state), atol=1e-4)
    assert not any(p.requires_grad for p in features.parameters()) and not features.training


def test_the_full_model_has_the_hub_file_names_and_shapes():
    with torch.device("meta"):
        vit = build_dinov2(MODEL).vit
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (FEATURE_DIM, 24, 16)
    assert vit.num_reg_tokens == 0 and vit.num_prefix_tokens == 1 and vit.patch_embed.grid_size == (16, 16)
    expected = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    with torch.device("meta"):
        hub = {k: tuple(v.shape) for k, v in hub_state(width=FEATURE_DIM, depth=24).items()}
    assert hub.pop("mask_token") == (1, FEATURE_DIM) and hub.pop("pos_embed") == (1, 1 + HUB_GRID ** 2, FEATURE_DIM)
    assert expected.pop("pos_embed") == (1, 1 + 16 ** 2, FEATURE_DIM) and hub == expected


@pytest.mark.parametrize("change, message", [
    (lambda s: s | {"blocks.2.norm1.weight": torch.ones(WIDTH)}, "unexpected keys"),
    (lambda s: {k: v for k, v in s.items() if k != "norm.bias"}, "missing keys"),
    (lambda s: hub_state(width=48), "shape of"),
])
def test_a_file_that_does_not_fit_is_refused(tmp_path, change, message):
    torch.save(change(hub_state()), tmp_path / "bad.pth")
    with pytest.raises(DINOv2WeightsError, match=f"bad.pth: does not fit the DINOv2 model: .*{message}.*"
                                                 f"expected dinov2_vitl14_pretrain.pth from {re.escape(WEIGHTS_URL)}"):
        load_dinov2_features(tmp_path / "bad.pth", encoder=tiny_vitl())


def test_timm_layouts_give_the_same_features(features, tmp_path):
    images = torch.from_numpy(random_images(2, 30, 30, seed=5)).permute(0, 3, 1, 2)
    torch.save(features.encoder.vit.state_dict(), tmp_path / "timm224.pth")  # timm's layout at the 224-px grid
    timm_518 = {k: v for k, v in hub_state().items() if k != "mask_token"}  # timm's layout at 518 px
    torch.save(timm_518, tmp_path / "timm518.pth")
    with torch.no_grad():
        expected = features(images)
        for name in ("timm224.pth", "timm518.pth"):
            network, digest = load_dinov2_features(tmp_path / name, encoder=tiny_vitl(seed=7))
            assert torch.allclose(network(images), expected, atol=1e-6, rtol=0) and len(digest) == 64


# ----------------------------------------------------------------------------------------------------------------
# Features and the distance (docs/evaluator.md §13.5)

def test_features_match_a_forward_pass_written_out(features):
    images = torch.from_numpy(random_images(3, 64, 48, seed=6)).permute(0, 3, 1, 2)
    with torch.no_grad():
        ours = features(images)
    assert ours.dtype == torch.float32 and ours.shape == (3, WIDTH)
    assert torch.allclose(ours.double(), oracle_features(hub_state(), images), atol=2e-5, rtol=0)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(root).real)


class Counting(torch.nn.Module):
    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.batches = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.network(images)


def test_distance_matches_scipy_and_the_reference_is_cached(features, tmp_path):
    ref_images, sample_images = random_images(72, 20, 20, seed=8), random_images(64, 20, 20, seed=9)
    np.savez(tmp_path / "ref.npz", ref_images)
    write_pngs(tmp_path / "samples", sample_images, [f"{i:06d}.png" for i in range(64)])
    network = Counting(features)
    value, report = adm.fd_dinov2(tmp_path / "ref.npz", tmp_path / "samples", network, batch_size=16,
                                  cache_dir=tmp_path / "cache", network_id="ab" * 32, log=lambda _: None)
    with torch.no_grad():
        ref = features(torch.from_numpy(ref_images).permute(0, 3, 1, 2)).double().numpy()
        gen = features(torch.from_numpy(sample_images).permute(0, 3, 1, 2)).double().numpy()
    assert value == pytest.approx(scipy_frechet(gen, ref), rel=1e-5) and value > 0
    assert network.batches == 5 + 4 and report["fd_dinov2"] == value and report["fd_dinov2_feature_dim"] == WIDTH
    cache = tmp_path / "cache" / report["fd_dinov2_activation_cache"].split("/")[-1]
    assert cache.name.startswith("fd_dinov2_ref_") and cache.is_file()
    network.batches = 0
    again, _ = adm.fd_dinov2(tmp_path / "ref.npz", tmp_path / "samples", network, batch_size=16,
                             cache_dir=tmp_path / "cache", network_id="ab" * 32, log=lambda _: None)
    assert again == value and network.batches == 4  # only the samples ran
    npz.save_sample_npz(tmp_path / "same.npz", ref_images)
    same, _ = adm.fd_dinov2(tmp_path / "ref.npz", tmp_path / "same.npz", features, log=lambda _: None)
    assert abs(same) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# The CLI (docs/evaluator.md §13.6)

def test_cli_prints_fd_dinov2_after_the_five_lines(features, tmp_path, capsys):
    np.savez(tmp_path / "ref.npz", random_images(64, 16, 16, seed=10))
    np.savez(tmp_path / "samples.npz", random_images(64, 16, 16, seed=11))
    argv = [str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--device", "cpu", "--no-cache"]
    assert adm.main(argv, network=TinyFeatures(), network_id="tiny") == 0
    plain = capsys.readouterr().out.splitlines()
    assert [RESULT_LINE.match(line).group(1) for line in plain] == list(adm.RESULT_LABELS)
    assert "fd_dinov2" not in json.loads((tmp_path / "samples_adm_eval.json").read_text())

    assert adm.main(argv + ["--fd-dinov2"], network=TinyFeatures(), network_id="tiny", dinov2_network=features,
                    dinov2_id="cd" * 32) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[:5] == plain and len(lines) == 6 and lines[5].startswith("FD_DINOv2: ")
    expected, _ = adm.fd_dinov2(tmp_path / "ref.npz", tmp_path / "samples.npz", features, log=lambda _: None)
    assert float(lines[5].split(": ")[1]) == expected
    assert "computing FD_DINOv2 sample activations..." in captured.err
    report = json.loads((tmp_path / "samples_adm_eval.json").read_text())
    assert report["fd_dinov2"] == expected and report["fd_dinov2_network"] == "cd" * 32


def test_cli_missing_dinov2_weights_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        adm.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--fd-dinov2" in help_text and "--dinov2-weights" in help_text and "DINOV2_WEIGHTS" in help_text
    np.savez(tmp_path / "ref.npz", random_images(8, 16, 16))
    argv = [str(tmp_path / "ref.npz"), str(tmp_path / "ref.npz"), "--device", "cpu", "--no-cache", "--fd-dinov2"]
    monkeypatch.delenv("DINOV2_WEIGHTS", raising=False)
    for extra, detail in (([], "$DINOV2_WEIGHTS is unset"), (["--dinov2-weights", str(tmp_path / "nope.pth")],
                                                             "nope.pth does not exist")):
        network = TinyFeatures()
        assert adm.main(argv + extra, network=network, network_id="tiny") == 2
        captured = capsys.readouterr()
        assert captured.out == "" and network.batches == 0
        assert captured.err.count("\n") == 1 and captured.err.startswith("error: DINOv2 weights not found")
        assert detail in captured.err and "--dinov2-weights PATH" in captured.err and WEIGHTS_URL in captured.err
