"""Texture VAE: golden encode/decode, the release architecture against its manifest, strict loading, uint8 output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sfd.config import ConfigError
from sfd.tokenizers.texture_vae import (
    VAE_PREFIXES,
    TextureVAE,
    TextureVAEConfig,
    diffusers_to_ldm_key,
    ldm_to_diffusers_key,
    load_texture_vae,
)
from tests.conftest import DATA, golden, rel_error

TOL_VAE = 1e-4  # docs/goldens.md §5: VAE encode/decode

# The release's tokenizer/configs/sdvae_f16d32.yaml layout, training keys included (they must be ignored).
RELEASE_YAML = {
    "ckpt_path": "outputs/model_weights/ldm-imagenet256-f16d32-50ep.ckpt",
    "model": {
        "base_learning_rate": 1.0e-4,
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "monitor": "val/rec_loss",
            "embed_dim": 32,
            "use_vf": "dinov2",
            "reverse_proj": True,
            "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": {"kl_weight": 1.0e-6}},
            "ddconfig": {
                "double_z": True,
                "z_channels": 32,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 128,
                "ch_mult": [1, 1, 2, 2, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [16],
                "dropout": 0.0,
            },
        },
    },
}


@pytest.fixture(scope="module")
def vae_tiny() -> TextureVAE:
    return load_texture_vae(DATA / "vae_tiny.yaml")


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return torch.load(DATA / "vae_tiny.ckpt", weights_only=True)["state_dict"]


def _write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_golden_encode(vae_tiny):
    ref = golden("vae_tiny_golden")
    with torch.no_grad():
        moments = vae_tiny.quant_conv(vae_tiny.encoder(ref["image"]))
        posterior = vae_tiny.encode(ref["image"])
    errors = {
        "moments": rel_error(moments, ref["moments"]),
        "mean": rel_error(posterior.mean, ref["posterior_mean"]),
        "logvar": rel_error(posterior.logvar, ref["posterior_logvar"]),
    }
    print("texture VAE encode rel errors:", errors)
    assert all(error < TOL_VAE for error in errors.values()), errors


def test_golden_decode(vae_tiny):
    ref = golden("vae_tiny_golden")
    with torch.no_grad():
        decoded = vae_tiny.decode(ref["latent"])
    error = rel_error(decoded, ref["decoded"])
    print("texture VAE decode rel error:", error)
    assert decoded.shape == ref["decoded"].shape
    assert error < TOL_VAE


def test_tiny_properties(vae_tiny):
    assert vae_tiny.latent_channels == 32
    assert vae_tiny.downsample_ratio == 16
    assert not vae_tiny.training
    assert sum(p.numel() for p in vae_tiny.parameters()) == 484_131  # docs/goldens.md §3


def test_release_architecture_matches_manifest(tmp_path):
    manifest = json.loads((DATA / "manifest_vae_f16d32.json").read_text())
    config = TextureVAEConfig.from_yaml(_write_yaml(tmp_path / "sdvae_f16d32.yaml", RELEASE_YAML))
    with torch.device("meta"):
        vae = TextureVAE(config)
    own = vae.state_dict()
    assert sum(p.numel() for p in vae.parameters()) == manifest["total_params"] == 69_836_067
    # Our names back to LDM names give exactly the release key set (the name map is a bijection on it) ...
    assert sorted(diffusers_to_ldm_key(key, 5) for key in own) == sorted(manifest["state_dict"])
    assert all(ldm_to_diffusers_key(diffusers_to_ldm_key(key, 5), 5) == key for key in own)
    # ... and the strict loader accepts a release-shaped state dict (shapes checked, 1×1 attention convs included).
    release = {key: torch.empty(shape, device="meta") for key, shape in manifest["state_dict"].items()}
    vae.load_ldm_state_dict(release)
    assert vae.encoder.down_blocks[4].attentions[0].to_q.weight.shape == (512, 512)
    assert len(vae.decoder.up_blocks[0].attentions) == 3  # LDM decoder.up.4.attn.{0,1,2}


def test_checkpoint_extra_keys_are_ignored(tmp_path, tiny_state, vae_tiny):
    extra = dict(tiny_state)
    extra["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    extra["foundation_model.model.blocks.0.attn.qkv.weight"] = torch.zeros(6, 2)
    path = tmp_path / "with_extras.ckpt"
    torch.save({"state_dict": extra, "global_step": 7}, path)
    vae = load_texture_vae(DATA / "vae_tiny.yaml", ckpt_path=path)
    for (name, ours), reference in zip(vae.state_dict().items(), vae_tiny.state_dict().values()):
        assert torch.equal(ours, reference), name


def test_bare_state_dict_loads(tmp_path, tiny_state, vae_tiny):
    path = tmp_path / "bare.pt"
    torch.save(tiny_state, path)
    vae = load_texture_vae(DATA / "vae_tiny.yaml", ckpt_path=path)
    assert torch.equal(vae.decoder.conv_out.weight, vae_tiny.decoder.conv_out.weight)


def test_ldm_state_dict_is_the_checkpoint_layout(tiny_state, vae_tiny):
    exported = vae_tiny.ldm_state_dict()
    assert set(exported) == {key for key in tiny_state if key.startswith(VAE_PREFIXES)}
    for key, value in exported.items():
        assert torch.equal(value, tiny_state[key]), key
    again = TextureVAE(vae_tiny.config)
    again.load_ldm_state_dict(exported)  # strict round trip


def test_missing_decoder_key_is_named(tmp_path, tiny_state):
    dropped = "decoder.up.4.attn.1.proj_out.weight"
    assert dropped in tiny_state
    partial = {key: value for key, value in tiny_state.items() if key != dropped}
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": partial}, path)
    with pytest.raises(ValueError, match=r"lacks 1 keys: decoder\.up\.4\.attn\.1\.proj_out\.weight$"):
        load_texture_vae(DATA / "vae_tiny.yaml", ckpt_path=path)


def test_unexpected_vae_key_is_named(tmp_path, tiny_state):
    path = tmp_path / "unexpected.ckpt"
    torch.save({"state_dict": {**tiny_state, "decoder.up.5.block.0.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"unexpected keys: decoder\.up\.5\.block\.0\.conv1\.weight"):
        load_texture_vae(DATA / "vae_tiny.yaml", ckpt_path=path)


def test_shape_mismatch_names_both_shapes(tmp_path, tiny_state):
    path = tmp_path / "wide.ckpt"
    torch.save({"state_dict": {**tiny_state, "quant_conv.bias": torch.zeros(32)}}, path)
    with pytest.raises(ValueError, match=r"quant_conv\.bias: checkpoint shape \[32\] vs model shape \[64\]"):
        load_texture_vae(DATA / "vae_tiny.yaml", ckpt_path=path)


def test_non_tensor_checkpoint_gives_clear_error(tmp_path, tiny_state):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": tiny_state, "hparams": Path("x")}, path)
    with pytest.raises(ValueError, match=r"weights_only=True\) refuses a non-tensor object \(pathlib"):
        load_texture_vae(DATA / "vae_tiny.yaml", ckpt_path=path)


def test_relative_ckpt_path_resolves_beside_yaml(tmp_path, monkeypatch, tiny_state):
    folder = tmp_path / "configs"
    folder.mkdir()
    torch.save({"state_dict": tiny_state}, folder / "weights.ckpt")
    layout = yaml.safe_load((DATA / "vae_tiny.yaml").read_text())
    config_path = _write_yaml(folder / "vae.yaml", {**layout, "ckpt_path": "weights.ckpt"})
    monkeypatch.chdir(tmp_path)
    assert load_texture_vae(config_path).latent_channels == 32


def test_config_errors_name_the_key(tmp_path):
    def broken(update: dict) -> Path:
        content = yaml.safe_load(yaml.safe_dump(RELEASE_YAML))
        content["model"]["params"]["ddconfig"].update(update)
        return _write_yaml(tmp_path / "broken.yaml", content)

    with pytest.raises(ConfigError, match=r"ch_mult: first multiplier must be 1"):
        TextureVAEConfig.from_yaml(broken({"ch_mult": [2, 2, 4]}))
    with pytest.raises(ConfigError, match=r"num_res_block"):
        TextureVAEConfig.from_yaml(broken({"num_res_block": 2}))
    with pytest.raises(ConfigError, match=r"ch: every level width"):
        TextureVAEConfig.from_yaml(broken({"ch": 48}))
    with pytest.raises(ConfigError, match=r"double_z: must be true"):
        TextureVAEConfig.from_yaml(broken({"double_z": False}))
    content = yaml.safe_load(yaml.safe_dump(RELEASE_YAML))
    content["model"]["params"]["image_key"] = "image"
    with pytest.raises(ConfigError, match=r"model\.params\.image_key: unknown key"):
        TextureVAEConfig.from_yaml(_write_yaml(tmp_path / "extra.yaml", content))


def test_z_channels_may_differ_from_embed_dim():
    config = TextureVAEConfig(embed_dim=4, z_channels=8, ch=32, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[])
    vae = TextureVAE(config).eval()
    with torch.no_grad():
        posterior = vae.encode(torch.zeros(1, 3, 8, 8))
        decoded = vae.decode(posterior.mean)
    assert posterior.mean.shape == (1, 4, 4, 4)
    assert decoded.shape == (1, 3, 8, 8)
    assert vae.quant_conv.weight.shape == (8, 16, 1, 1)


def test_shape_errors(vae_tiny):
    with pytest.raises(ValueError, match=r"encode: expected images \[B, 3, H, W\], got \[1, 4, 32, 32\]"):
        vae_tiny.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"decode: expected latents \[B, 32, h, w\], got \[1, 16, 2, 2\]"):
        vae_tiny.decode(torch.zeros(1, 16, 2, 2))


def test_to_uint8_truncates_and_clamps():
    # 127.5·x + 128 = 200.7, 200.2, 128.999, 0.5, and far outside [0, 255] at both ends.
    targets = torch.tensor([200.7, 200.2, 128.999, 0.5, -1000.0, 1000.0], dtype=torch.float64)
    x = ((targets - 128.0) / 127.5).reshape(1, 1, 1, 6).expand(1, 3, 1, 6).float()
    pixels = TextureVAE.to_uint8(x)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 1, 6, 3)
    assert pixels[0, 0, :, 0].tolist() == [200, 200, 128, 0, 0, 255]
    assert TextureVAE.to_uint8(torch.ones(1, 3, 1, 1)).flatten().tolist() == [255] * 3  # 255.5 → clamp
    assert TextureVAE.to_uint8(-torch.ones(1, 3, 1, 1)).flatten().tolist() == [0] * 3  # 0.5 → truncate


def test_posterior_sample_is_reproducible(vae_tiny):
    ref = golden("vae_tiny_golden")
    with torch.no_grad():
        posterior = vae_tiny.encode(ref["image"])
    first = posterior.sample(generator=torch.Generator().manual_seed(3))
    second = posterior.sample(generator=torch.Generator().manual_seed(3))
    other = posterior.sample(generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape == (1, vae_tiny.latent_channels, 16, 16)
