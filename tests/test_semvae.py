"""Semantic VAE: golden equivalence with the official model (docs/goldens.md §4, tag 'visible'), posterior clamps,
loading the official checkpoint layouts, the released full-size key/shape manifest, and input errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sfd.checkpoint import CheckpointError
from sfd.tokenizers.distributions import DiagonalGaussian
from sfd.tokenizers.semvae import SIZES, SemanticVAE, SemVAEArgs, init_weights, load_semvae
from sfd.tokenizers.semvae_train import SemVAELoss, configured_input_dim, load_train_config, semvae_args, token_cosine

DATA = Path(__file__).parent / "data" / "semvae"
ROOT = Path(__file__).parents[1]
CHECKPOINT = DATA / "semvae_visible_semantic_ae_final.pt"
ATOL = RTOL = 1e-5  # tensors (docs/goldens.md §5)
RTOL_SCALAR = 1e-6  # KL sums and loss scalars


def close(ours: torch.Tensor, golden: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> None:
    torch.testing.assert_close(ours, golden, atol=atol, rtol=rtol)


def close_scalar(ours: torch.Tensor, golden: torch.Tensor) -> None:
    torch.testing.assert_close(ours, golden, atol=0.0, rtol=RTOL_SCALAR)


@pytest.fixture(scope="module")
def golden():
    return load_file(str(DATA / "semvae_visible_golden.safetensors"))


@pytest.fixture(scope="module")
def model():
    return load_semvae(CHECKPOINT).train()  # the golden training-path tensors were computed in train mode


def to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, H·W, C] (token t = W·row + col)."""
    return grid.flatten(2).transpose(1, 2)


def test_posterior_matches_golden(model, golden):
    x = golden["x"]
    moments = model.encoder(x).transpose(1, 2).reshape(2, 32, 16, 16)  # channels-first layout of the release
    close(moments, golden["moments"])
    posterior = model.posterior(x)
    close(posterior.mean, golden["mean"])
    close(posterior.logvar, golden["logvar"])
    close(posterior.std, golden["std"])
    assert (posterior.logvar == -30).any(), "the golden weights push part of logvar channel 0 onto the clamp"
    close(to_tokens(posterior.mean), golden["mean_tokens"])
    close_scalar(posterior.kl(), golden["kl_per_sample"])


def test_sample_and_reconstruction_match_golden(model, golden):
    out = model(golden["x"], noise=golden["eps"])
    close(to_tokens(out.latent), golden["z_sample_tokens"])
    close(out.recon, golden["recon_sample"])
    close_scalar(out.kl, golden["kl_per_sample"])
    close(model.decode(golden["mean"]), golden["decode_mean"])
    close(model.decode(model.encode(golden["x"], sample=False)), golden["decode_mean"])


def test_eval_path_matches_golden(golden):
    model = load_semvae(CHECKPOINT)  # eval mode; no-grad may take PyTorch's fused MHA path
    with torch.no_grad():
        close(model.decode(model.encode(golden["x"], sample=False)), golden["decode_mean_eval"])
        close(model.encode(golden["x"], noise=golden["eps"]), golden["latents_sv"])  # what a latent shard stores


def test_loss_terms_match_golden(model, golden):
    x = golden["x"]
    out = model(x, noise=golden["eps"])
    terms = SemVAELoss()(x, out.recon, out.kl)  # released weights, token-axis cosine
    for name in ("mse", "l1", "cos", "kl", "total"):
        close_scalar(getattr(terms, name), golden[f"loss_{name}"])
    close(torch.nn.functional.cosine_similarity(out.recon, x, dim=1), golden["cos_sim_token_axis"])
    features = SemVAELoss(cosine_axis="features")(x, out.recon, out.kl)
    close_scalar(features.cos, golden["loss_cos_if_feature_axis"])
    close_scalar(token_cosine(out.recon, x).mean(), golden["eval_cosine_sim_per_token"])


def test_loss_from_golden_reconstruction_is_tight(golden):
    """The loss lines alone, on the official reconstruction: only summation order can differ."""
    terms = SemVAELoss()(golden["x"], golden["recon_sample"], golden["kl_per_sample"])
    total = golden["loss_mse"] + golden["loss_cos"] + 1e-7 * golden["loss_kl"]
    close_scalar(terms.total, total)
    close_scalar(terms.cos, golden["loss_cos"])


def test_dist_probe_clamps():
    probe = load_file(str(DATA / "semvae_visible_dist_probe.safetensors"))
    raw_logvar = probe["moments"][:, 16:]
    assert raw_logvar.min() < -30 and raw_logvar.max() > 20, "the probe must exercise both clamps"
    posterior = DiagonalGaussian(probe["moments"])
    for name in ("mean", "logvar", "std", "var"):
        close(getattr(posterior, name), probe[name])
    close(posterior.mode(), probe["mode"])
    close(posterior.sample(noise=probe["eps"]), probe["sample"])
    close_scalar(posterior.kl(), probe["kl"])


def test_official_checkpoint_and_safetensors_load_the_same_weights():
    from_pt, from_st = load_semvae(CHECKPOINT), load_semvae(DATA / "semvae_visible_model.safetensors")
    meta = json.loads((DATA / "semvae_visible_meta.json").read_text())
    kwargs = {k: v for k, v in meta["constructor_kwargs"].items() if k not in ("arch", "is_vae")}
    assert from_pt.args == from_st.args == SemVAEArgs(**kwargs)
    assert not from_pt.training
    for key, value in from_pt.state_dict().items():
        assert torch.equal(value, from_st.state_dict()[key]), key
    assert [[k, list(v.shape)] for k, v in from_pt.state_dict().items()] == meta["state_dict_keys_in_order"]
    payload = torch.load(CHECKPOINT, weights_only=True)
    assert list(payload) == meta["checkpoint_top_level_keys"]
    assert "${variables.bottleneck_dim}" in payload["config"], "the heads are read from an unresolved YAML string"


def test_heads_must_be_known_and_agree(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)["model_state_dict"]
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="does not record transformer_heads"):
        load_semvae(tmp_path / "bare.pt")
    assert load_semvae(tmp_path / "bare.pt", transformer_heads=4).args.transformer_heads == 4
    with pytest.raises(CheckpointError, match="transformer_heads=2 given, the file records 4"):
        load_semvae(CHECKPOINT, transformer_heads=2)


def test_mismatched_state_dict_names_the_keys(tmp_path):
    state = dict(load_file(str(DATA / "semvae_visible_model.safetensors")))
    del state["decoder.1.mlp.0.bias"]
    state["decoder.1.attn.extra"] = torch.zeros(1)
    state["decoder.4.weight"] = torch.zeros(65, 64)
    torch.save({"model_state_dict": state, "config": "model:\n  params:\n    transformer_heads: 4\n"},
               tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError) as error:
        load_semvae(tmp_path / "wrong.pt")
    message = str(error.value)
    assert "decoder.1.mlp.0.bias" in message and "decoder.1.attn.extra" in message
    assert "decoder.4.weight: checkpoint (65, 64), model (64, 64)" in message


def test_full_size_model_matches_the_release_manifest():
    manifest = json.loads((DATA / "manifest_semvae_transformer_ch16.json").read_text())
    config = load_train_config(ROOT / "configs/semvae/ch16.yaml")
    args = semvae_args(config, configured_input_dim(config))
    assert args == SIZES["transformer_ch16"]
    with torch.device("meta"):
        model = SemanticVAE(args)
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert shapes == manifest["state_dict"] and list(shapes) == list(manifest["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == 57_924_896
    for part, count in manifest["params_by_top_module"].items():
        assert sum(p.numel() for p in getattr(model, part).parameters()) == count
    assert not list(model.buffers())


def test_token_grid_and_shapes():
    torch.manual_seed(0)
    model = init_weights(SemanticVAE(SemVAEArgs(32, 4, 16, 2, 1)), torch.Generator().manual_seed(0)).eval()
    tokens = torch.randn(3, 64, 32)
    latent = model.encode(tokens, generator=torch.Generator().manual_seed(1))
    assert latent.shape == (3, 4, 8, 8) and model.decode(latent).shape == (3, 64, 32)
    # Token t = 8·row + col: moving a token moves its latent to the matching grid cell (no positional info).
    mean = model.encode(tokens, sample=False)
    swapped = tokens.clone()
    swapped[:, [0, 8 * 3 + 5]] = tokens[:, [8 * 3 + 5, 0]]
    moved = model.encode(swapped, sample=False)
    close(moved[:, :, 3, 5], mean[:, :, 0, 0])
    close(moved[:, :, 0, 0], mean[:, :, 3, 5])


def test_sampling_is_reproducible_with_a_generator():
    model = init_weights(SemanticVAE(SemVAEArgs(32, 4, 16, 2, 1)), torch.Generator().manual_seed(0))
    tokens = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
    first = model.encode(tokens, generator=torch.Generator().manual_seed(5))
    again = model.encode(tokens, generator=torch.Generator().manual_seed(5))
    other = model.encode(tokens, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    twin = init_weights(SemanticVAE(SemVAEArgs(32, 4, 16, 2, 1)), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


@pytest.mark.parametrize("shape, message", [((2, 15, 32), "15 tokens do not form a square grid"),
                                            ((2, 16, 31), r"expected tokens \[B, L, 32\], got \[2, 16, 31\]")])
def test_bad_token_shapes_are_named(shape, message):
    model = SemanticVAE(SemVAEArgs(32, 4, 16, 2, 1))
    with pytest.raises(ValueError, match=message):
        model.encode(torch.zeros(shape))


def test_bad_latent_shape_is_named():
    with pytest.raises(ValueError, match=r"expected a latent \[B, 4, side, side\], got \[1, 5, 4, 4\]"):
        SemanticVAE(SemVAEArgs(32, 4, 16, 2, 1)).decode(torch.zeros(1, 5, 4, 4))


def test_safetensors_with_constructor_kwargs_round_trip(tmp_path):
    model = init_weights(SemanticVAE(SemVAEArgs(32, 4, 16, 2, 1)), torch.Generator().manual_seed(3))
    kwargs = {"arch": "transformer", "is_vae": True, **vars(model.args)}
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"), metadata={"constructor_kwargs": json.dumps(kwargs)})
    loaded = load_semvae(tmp_path / "m.safetensors")
    assert loaded.args == model.args
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
