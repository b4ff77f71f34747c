"""LightningDiT against the official goldens, key manifests and the self-check numbers of docs/method.md §4.9."""

import copy
import json

import pytest
import torch

import sfd
from sfd.lightningdit import (SIZES, LightningDiT, LightningDiTArgs, RMSNorm, RotaryEmbedding2D, TimestepEmbedder,
                              gated_residual, modulate, norm_modulate, sincos_pos_embed)
from tests.conftest import DATA, TOL_FORWARD, golden, rel_error, tiny_model_args


def run(model, case):
    with torch.no_grad():
        return model(case["x"], case["t_tex"], case["t_sem"], case["y"])


def test_forward_and_repa_match_golden(sfd_tiny):
    model, _ = sfd_tiny
    case = golden("forward_sfd_tiny")
    out = run(model, case)
    assert rel_error(out.velocity, case["out"]) < TOL_FORWARD
    assert rel_error(out.repa, case["repa_proj"]) < TOL_FORWARD


def test_strong_signal_forward_matches_golden(sfd_tiny):
    model = copy.deepcopy(sfd_tiny[0])
    state = model.state_dict()
    state.update(golden("sfd_tiny_strong_override"))
    model.load_state_dict(state)
    case = golden("forward_strong_sfd_tiny")
    assert rel_error(run(model, case).velocity, case["out"]) < TOL_FORWARD


def test_swapping_time_order_changes_output(sfd_tiny):
    """The (t_tex, t_sem) order matters: exchanging them moves the golden output far beyond tolerance."""
    model, _ = sfd_tiny
    case = golden("forward_sfd_tiny")
    swapped = dict(case, t_tex=case["t_sem"], t_sem=case["t_tex"])
    assert rel_error(run(model, swapped).velocity, case["out"]) > 1e-3


def test_baseline_forward_matches_golden(baseline_tiny):
    model, _ = baseline_tiny
    case = golden("forward_baseline_tiny")
    with torch.no_grad():
        out = model(case["x"], case["t"], case["t"], case["y"])
    assert out.repa is None
    assert rel_error(out.velocity, case["out"]) < TOL_FORWARD


def test_train_and_eval_return_the_same_type(sfd_tiny):
    model = copy.deepcopy(sfd_tiny[0]).train()
    case = golden("forward_sfd_tiny")
    out = model(case["x"], case["t_tex"], case["t_sem"], case["y"])
    assert isinstance(out, sfd.ModelOutput) and out.repa.shape == (2, 256, 768)
    assert torch.allclose(out.velocity, case["out"], atol=1e-6, rtol=1e-5)
    assert model(case["x"], case["t_tex"], case["t_sem"], case["y"], repa=False).repa is None


@pytest.mark.parametrize("name", ["xl_1", "1p0b_1", "b_1"])
def test_state_dict_matches_release_manifest(name):
    manifest = json.loads((DATA / f"manifest_lightningdit_{name}.json").read_text())
    config = sfd.load_config(DATA / "sfd_tiny.yaml", [
        f"model.model_type={manifest['name']}", "model.depth=null", "model.hidden_size=null", "model.num_heads=null",
        "model.patch_size=null", "model.repa_projector_dim=2048"])
    with torch.device("meta"):
        model = sfd.build_model(config)
    state = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(state) == list(manifest["state_dict"])
    assert state == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert len(state) == manifest["num_state_dict_entries"]


# docs/method.md §4.1: parameters of the SFD configuration excluding the REPA projector and pos_embed, and the
# projector alone.
EXPECTED_MILLIONS = {"S": (32.83, 6.56), "B": (130.09, 7.34), "L": (457.40, 7.87), "XL": (674.34, 8.13),
                     "1p0B": (1027.88, 8.92), "1p6B": (1629.76, 9.44)}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("patch", [1, 2])
def test_every_registry_size_builds_with_the_official_count(size, patch):
    config = sfd.load_config(DATA / "sfd_tiny.yaml", [
        f"model.model_type=LightningDiT-{size}/{patch}", "model.depth=null", "model.hidden_size=null",
        "model.num_heads=null", "model.patch_size=null", "model.repa_projector_dim=2048"])
    with torch.device("meta"):
        model = sfd.build_model(config)
    depth, width, heads = SIZES[size]
    assert (model.args.depth, model.args.hidden_size, model.args.num_heads, model.args.patch_size) == (
        depth, width, heads, patch)
    projector = sum(p.numel() for p in model.repa_projector.parameters())
    body = sum(p.numel() for p in model.parameters()) - projector - model.pos_embed.numel()
    if patch == 1:
        assert round(body / 1e6, 2) == EXPECTED_MILLIONS[size][0]
        assert round(projector / 1e6, 2) == EXPECTED_MILLIONS[size][1]
    assert 25 + 14 * depth == len(model.state_dict())


def test_xl_self_check_shapes():
    config = sfd.load_config(DATA.parent.parent / "configs/sfd/lightningdit_xl/train.yaml")
    with torch.device("meta"):
        state = sfd.build_model(config).state_dict()
    assert state["blocks.0.attn.qkv.weight"].shape == (3456, 1152)
    assert state["blocks.0.mlp.w12.weight"].shape == (6144, 1152)
    assert state["blocks.0.mlp.w3.weight"].shape == (1152, 3072)
    assert state["feat_rope.freqs_cos"].shape == (256, 72)
    assert state["y_embedder.embedding_table.weight"].shape == (1001, 1152)
    assert state["final_layer.linear.weight"].shape == (48, 1152)


def test_position_tables_follow_the_release_layout():
    table = sincos_pos_embed(64, 16)
    quarter = 16
    expected_token0 = torch.cat([torch.zeros(quarter), torch.ones(quarter), torch.zeros(quarter), torch.ones(quarter)])
    assert torch.equal(table[0].float(), expected_token0)
    # token 17 is row 1, column 1: both halves see position 1
    assert torch.allclose(table[17, :32], table[17, 32:])
    # token 1 is row 0, column 1: only the first (column) half moves
    assert not torch.allclose(table[1, :32], table[0, :32]) and torch.equal(table[1, 32:], table[0, 32:])

    rope = RotaryEmbedding2D(head_dim=72, grid=16)
    assert torch.equal(rope.freqs_cos[0], torch.ones(72)) and torch.equal(rope.freqs_sin[0], torch.zeros(72))
    omega = 1.0 / 10000 ** (torch.arange(0, 36, 2)[:18].float() / 36)
    angles = torch.acos(rope.freqs_cos[1].clamp(-1, 1))
    assert torch.allclose(angles[:36], torch.zeros(36), atol=1e-3)  # row 0: first half unrotated
    assert torch.allclose(angles[36:], omega.repeat_interleave(2), atol=1e-3)  # column 1: ω_j twice

    assert torch.equal(TimestepEmbedder.sinusoid(torch.zeros(1))[0], torch.cat([torch.ones(128), torch.zeros(128)]))


def test_options_build_and_run():
    """Every non-SFD option of the backbone builds and runs (GELU MLP, LayerNorm, wo_shift, learn_sigma, patch 2,
    synchronous embedder, gradient checkpointing with identical outputs)."""
    args = tiny_model_args(input_size=8, patch_size=2, hidden_size=32, num_classes=5, use_swiglu=False,
                           use_rmsnorm=False, wo_shift=True, learn_sigma=True, semantic_first=False,
                           repa_target_dim=12, repa_projector_dim=16)
    torch.manual_seed(0)
    model = LightningDiT(args)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.1)
    x, t, y = torch.randn(3, 6, 8, 8), torch.rand(3), torch.tensor([0, 4, 5])
    out = model(x, t, t, y)
    assert out.velocity.shape == (3, 6, 8, 8) and out.repa.shape == (3, 16, 12)
    assert "blocks.0.mlp.fc1.weight" in model.state_dict() and "t_embedder.mlp.0.weight" in model.state_dict()
    checkpointed = LightningDiT(LightningDiTArgs(**{**args.__dict__, "use_checkpoint": True}))
    checkpointed.load_state_dict(model.state_dict())
    checkpointed.train()
    out_ckpt = checkpointed(x, t, t, y)
    assert torch.allclose(out_ckpt.velocity, out.velocity, atol=1e-6)
    out_ckpt.velocity.sum().backward()
    assert checkpointed.blocks[0].attn.qkv.weight.grad is not None


def test_initialisation_zeroes_the_output():
    """adaLN-Zero: a freshly built model predicts exactly zero velocity (zeroed final layer)."""
    config = sfd.load_config(DATA / "sfd_tiny.yaml")
    model = sfd.build_model(config)
    out = model(torch.randn(2, 48, 16, 16), torch.rand(2), torch.rand(2), torch.tensor([1, 2]))
    assert torch.equal(out.velocity, torch.zeros_like(out.velocity))
    assert not model.pos_embed.requires_grad


# The release's element-wise formulas, written out as it writes them (docs/method.md §4.4, §4.5), to check the
# fused versions in sfd/lightningdit.py against.
def release_rms_norm(x, weight, eps=1e-6):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def release_rope(x, freqs_cos, freqs_sin):
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * freqs_cos + rotated * freqs_sin


def release_modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def release_gated_residual(x, gate, update):
    return x + gate.unsqueeze(1) * update


RMS_SHAPES = [(2, 256, 64), (3, 7, 33), (2, 256, 1152), (5, 17, 72)]


@pytest.mark.parametrize("shape", RMS_SHAPES)
def test_rmsnorm_is_the_release_formula(shape):
    """F.rms_norm keeps the release's numbers: bit-identical in fp32; in bf16 the cast-then-weight order stays
    (quirk 6), so the output dtype matches and the values agree to within one bf16 rounding."""
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(shape, generator=generator)
    norm = RMSNorm(shape[-1])
    norm.weight.data.normal_(generator=generator)
    with torch.no_grad():
        assert torch.equal(norm(x), release_rms_norm(x, norm.weight))
        ours, release = norm(x.bfloat16()), release_rms_norm(x.bfloat16(), norm.weight)
    assert ours.dtype == release.dtype
    torch.testing.assert_close(ours, release, rtol=2**-8, atol=0)


def test_rmsnorm_on_the_attention_layout_is_the_release_formula():
    """The QK-norm sees q and k as permuted (non-contiguous) views of the qkv output."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 256, 3, 2, 32, generator=generator).permute(2, 0, 3, 1, 4)[0]  # [B, heads, T, head_dim]
    norm = RMSNorm(32)
    norm.weight.data.normal_(generator=generator)
    with torch.no_grad():
        assert torch.equal(norm(q), release_rms_norm(q, norm.weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_with_sign_folded_sin_is_the_release_rotation(dtype):
    """Swapping pair members against a sign-folded sin table gives the release's (−x1, x0) rotation bit for bit."""
    rope = RotaryEmbedding2D(head_dim=72, grid=16)
    x = torch.randn(2, 3, 256, 72, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(rope(x), release_rope(x, rope.freqs_cos, rope.freqs_sin))


def test_rope_sign_folded_table_is_derived_and_follows_loading():
    """The derived table is not in the state dict (released checkpoints load strictly) and is rebuilt from whatever
    freqs_sin a state dict brings."""
    rope = RotaryEmbedding2D(head_dim=8, grid=4)
    assert set(rope.state_dict()) == {"freqs_cos", "freqs_sin"}
    state = {"freqs_cos": torch.rand(16, 8), "freqs_sin": torch.rand(16, 8)}
    for assign in (False, True):
        rope.load_state_dict(state, strict=True, assign=assign)
        x = torch.randn(1, 1, 16, 8)
        assert torch.equal(rope(x), release_rope(x, state["freqs_cos"], state["freqs_sin"]))
    model = LightningDiT(tiny_model_args())
    model.load_state_dict({**model.state_dict(), "feat_rope.freqs_sin": torch.ones(16, 8)}, strict=True)
    assert torch.equal(model.feat_rope.signed_sin[:, 0], -torch.ones(16))
    assert torch.equal(model.feat_rope.rotation().imag, torch.ones(16, 4))


def test_fused_norm_paths_equal_the_module_paths():
    """norm_modulate (RMSNorm weight folded into the scale) and the joint q/k normalise-and-rotate (one complex
    multiplication) give the release's two-module results within rounding, with gradients to match."""
    torch.manual_seed(0)
    model = LightningDiT(tiny_model_args())
    block = model.blocks[0]
    with torch.no_grad():
        for norm in (block.norm1, block.attn.q_norm, block.attn.k_norm):
            norm.weight.add_(0.3 * torch.randn_like(norm.weight))
    tokens, dim = model.pos_embed.shape[1:]
    x = torch.randn(2, tokens, dim, requires_grad=True)
    shift, scale = torch.randn(2, dim), torch.randn(2, dim)
    fused = norm_modulate(block.norm1, x, shift, scale)
    reference = modulate(block.norm1(x), shift, scale)
    assert rel_error(fused, reference) < 1e-6
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), x)
    assert rel_error(grad_fused, grad_reference) < 1e-5
    attn, rope = block.attn, model.feat_rope
    qkv = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim))
    joint = attn.normalize_rotate(qkv[:, :, :2], rope)
    q = rope(attn.q_norm(qkv[:, :, 0].transpose(1, 2))).transpose(1, 2)
    k = rope(attn.k_norm(qkv[:, :, 1].transpose(1, 2))).transpose(1, 2)
    assert rel_error(joint[:, :, 0], q) < 1e-6 and rel_error(joint[:, :, 1], k) < 1e-6
    weights = torch.randn(joint.shape)
    leaves = [x, attn.q_norm.weight, attn.k_norm.weight]
    fused_grads = torch.autograd.grad((joint * weights).sum(), leaves, retain_graph=True)
    module_grads = torch.autograd.grad((torch.stack([q, k], dim=2) * weights).sum(), leaves)
    for fused_grad, module_grad in zip(fused_grads, module_grads):
        assert rel_error(fused_grad, module_grad) < 1e-5


def fused_or_release(ours, release, exact):
    """Each element equals the release's two roundings (no fused multiply-add on this machine) or the single rounding
    of the exact value (a fused multiply-add, e.g. AVX-512 or CUDA): never anything else."""
    return bool(((ours == release) | (ours == exact.float())).all())


@pytest.mark.parametrize("shape", [(2, 256, 64), (3, 7, 33), (2, 256, 1152)])
def test_addcmul_modulation_and_residual_round_at_most_as_the_release(shape):
    """modulate and gated_residual are one torch.addcmul each. With a fused multiply-add that is not bit-identical to
    the release's product-then-sum (one rounding instead of two, ≤ 1 ulp); the golden tests bound the effect on the
    network (docs/goldens.md §5)."""
    generator = torch.Generator().manual_seed(0)
    x, update = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    shift, scale, gate = (torch.randn(shape[0], shape[-1], generator=generator) for _ in range(3))
    exact = x.double() * (1 + scale.unsqueeze(1)).double() + shift.unsqueeze(1).double()
    assert fused_or_release(modulate(x, shift, scale), release_modulate(x, shift, scale), exact)
    exact = x.double() + gate.unsqueeze(1).double() * update.double()
    assert fused_or_release(gated_residual(x, gate, update), release_gated_residual(x, gate, update), exact)
    assert torch.equal(modulate(x, None, scale), x * (1 + scale.unsqueeze(1)))


def test_bf16_branch_output_is_rounded_before_the_residual_as_in_the_release():
    """Under bf16 autocast the gate and the branch output are bf16 and the residual stream fp32: the release rounds
    their product to bf16 before adding it, and so do we (addcmul would keep it in fp32)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, generator=generator)
    gate = torch.randn(2, 64, generator=generator).bfloat16()
    update = torch.randn(2, 16, 64, generator=generator).bfloat16()
    ours = gated_residual(x, gate, update)
    assert ours.dtype == torch.float32 and torch.equal(ours, release_gated_residual(x, gate, update))
    assert not torch.equal(ours, torch.addcmul(x, gate.unsqueeze(1), update))
