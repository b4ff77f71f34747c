"""LightningDiT against the official goldens, key manifests and the self-check numbers of docs/method.md §4.9, and the
fused path (sfd/fused.py, ``LightningDiT.fused``) against the reference path."""

import copy
import json

import pytest
import torch

import sfd
from sfd import fused
from sfd.lightningdit import (
    SIZES,
    LightningDiT,
    LightningDiTArgs,
    RMSNorm,
    RotaryEmbedding2D,
    TimestepEmbedder,
    modulate,
    sincos_pos_embed,
)
from tests.conftest import DATA, TOL_FORWARD, golden, rel_error, tiny_model_args


def run(model, case):
    with torch.no_grad():
        return model(case["x"], case["t_tex"], case["t_sem"], case["y"])


def with_path(model, fused_path):
    """A copy of ``model`` running the fused (default) or the reference path."""
    model = copy.deepcopy(model)
    model.fused = fused_path
    return model


@pytest.mark.parametrize("fused_path", [True, False])
def test_forward_and_repa_match_golden(sfd_tiny, fused_path):
    model = with_path(sfd_tiny[0], fused_path)
    case = golden("forward_sfd_tiny")
    out = run(model, case)
    assert rel_error(out.velocity, case["out"]) < TOL_FORWARD
    assert rel_error(out.repa, case["repa_proj"]) < TOL_FORWARD


@pytest.mark.parametrize("fused_path", [True, False])
def test_strong_signal_forward_matches_golden(sfd_tiny, fused_path):
    model = with_path(sfd_tiny[0], fused_path)
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


@pytest.mark.parametrize("fused_path", [True, False])
def test_baseline_forward_matches_golden(baseline_tiny, fused_path):
    model = with_path(baseline_tiny[0], fused_path)
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
# reference path of sfd/lightningdit.py against.
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
def test_reference_rope_and_modulation_are_the_release_formulas(dtype):
    generator = torch.Generator().manual_seed(0)
    rope = RotaryEmbedding2D(head_dim=72, grid=16)
    x = torch.randn(2, 3, 256, 72, generator=generator).to(dtype)
    assert torch.equal(rope(x), release_rope(x, rope.freqs_cos, rope.freqs_sin))
    tokens = torch.randn(2, 256, 64, generator=generator).to(dtype)
    shift, scale = (torch.randn(2, 64, generator=generator).to(dtype) for _ in range(2))
    assert torch.equal(modulate(tokens, shift, scale), release_modulate(tokens, shift, scale))
    assert torch.equal(modulate(tokens, None, scale), tokens * (1 + scale.unsqueeze(1)))


def test_rope_buffers_are_the_state_dict_tables_and_the_fused_rotation_follows_loading():
    """No derived table among the buffers (released checkpoints load strictly, DDP broadcasts no complex tensor); the
    fused path's complex rotation is made from whatever tables a state dict brings."""
    rope = RotaryEmbedding2D(head_dim=8, grid=4)
    assert set(rope.state_dict()) == {name for name, _ in rope.named_buffers()} == {"freqs_cos", "freqs_sin"}
    model = LightningDiT(tiny_model_args())
    model.load_state_dict({**model.state_dict(), "feat_rope.freqs_sin": torch.ones(16, 8)}, strict=True)
    assert torch.equal(fused.complex_rotation(model.feat_rope).imag, torch.ones(16, 4))


# -- the fused path (sfd/fused.py) against the reference path ------------------------------------------------------
# Values within the forward golden tolerance; gradients within 1e-4 relative (the q/k norm weights' gradients are
# sums of many cancelling terms, so their rounding differs most).
TOL_GRADIENT = 1e-4

# Architectures each fused variant and each fallback meets: RMSNorm with the joint q/k path, LayerNorm (q/k norm,
# GELU MLP, wo_shift, learn_sigma, patch 2), LayerNorm q/k norm with RoPE, no q/k norm, wo_shift with RMSNorm and REPA.
PATH_CONFIGS = {
    "sfd": {},
    "layernorm_gelu_wo_shift": dict(input_size=8, patch_size=2, hidden_size=32, num_classes=5, use_swiglu=False,
                                    use_rmsnorm=False, wo_shift=True, learn_sigma=True, semantic_first=False),
    "layernorm_qk_rope": dict(use_rmsnorm=False, hidden_size=32),
    "no_qknorm": dict(use_qknorm=False, hidden_size=32),
    "wo_shift_rmsnorm_repa": dict(wo_shift=True, repa_target_dim=8),
    "checkpointed": dict(use_checkpoint=True),
}


def random_model(**changes):
    """A tiny network with every weight drawn (a fresh one has zeroed adaLN layers, which hide most of the block)."""
    torch.manual_seed(0)
    model = LightningDiT(tiny_model_args(**changes))
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.1)
    return model


def network_inputs(args):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, args.in_chans, args.input_size, args.input_size, generator=generator)
    times = torch.rand(2, 3, generator=generator)
    return x, times[0], times[1], torch.tensor([0, 1, args.num_classes])


def values_and_gradients(model, inputs):
    """Training-mode velocity and REPA output, and the gradients of a loss on both for the input and every weight."""
    x = inputs[0].clone().requires_grad_()
    model.train().zero_grad()
    out = model(x, *inputs[1:])
    loss = out.velocity.square().mean() + (out.repa.square().mean() if out.repa is not None else 0)
    loss.backward()
    values = {"velocity": out.velocity.detach()} | ({} if out.repa is None else {"repa": out.repa.detach()})
    gradients = {"x": x.grad} | {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return values, gradients


def test_the_switch_is_on_by_default_and_keeps_the_state_dict():
    model = LightningDiT(tiny_model_args())
    assert model.fused and all(block.fused for block in model.blocks) and model.final_layer.fused
    reference = LightningDiT(tiny_model_args(), fused=False)
    assert not reference.fused and not any(block.fused for block in reference.blocks)
    reference.load_state_dict(model.state_dict(), strict=True)
    assert list(reference.state_dict()) == list(model.state_dict())
    model.fused = False
    assert not model.fused and not any(block.fused for block in model.blocks) and not model.final_layer.fused


@pytest.mark.parametrize("config", list(PATH_CONFIGS))
def test_fused_path_equals_the_reference_path_in_values_and_gradients(config):
    """The one switch: the whole network (every block and the final layer) on either path, trained one step."""
    model = random_model(**PATH_CONFIGS[config])
    inputs = network_inputs(model.args)
    fused_values, fused_gradients = values_and_gradients(model, inputs)
    model.fused = False
    reference_values, reference_gradients = values_and_gradients(model, inputs)
    assert fused_values.keys() == reference_values.keys() and fused_gradients.keys() == reference_gradients.keys()
    for name, value in fused_values.items():
        assert rel_error(value, reference_values[name]) < TOL_FORWARD, name
    for name, gradient in fused_gradients.items():
        assert rel_error(gradient, reference_gradients[name]) < TOL_GRADIENT, name


@pytest.mark.parametrize("config", ["sfd", "layernorm_gelu_wo_shift"])
def test_fused_inference_equals_fused_training_and_the_reference(config):
    """Without autograd the fused SwiGLU writes its product in place: the same numbers as with autograd."""
    model = random_model(**PATH_CONFIGS[config]).eval()
    inputs = network_inputs(model.args)
    with_autograd = model(*inputs).velocity
    with torch.no_grad():
        fused_velocity = model(*inputs).velocity
        reference_velocity = with_path(model, False)(*inputs).velocity
    assert torch.equal(fused_velocity, with_autograd)
    assert rel_error(fused_velocity, reference_velocity) < TOL_FORWARD


def test_fused_path_in_bfloat16_stays_within_bfloat16_rounding_of_the_reference():
    """In bf16 the fused path keeps only the addcmul modulation and residuals (one rounding instead of two)."""
    model = random_model().eval().to(torch.bfloat16)
    x, t_tex, t_sem, y = network_inputs(model.args)
    with torch.no_grad():
        fused_velocity = model(x.bfloat16(), t_tex, t_sem, y).velocity
        reference_velocity = with_path(model, False)(x.bfloat16(), t_tex, t_sem, y).velocity
    assert fused_velocity.dtype == torch.bfloat16
    assert rel_error(fused_velocity, reference_velocity) < 4 * 2**-8


def perturbed_block():
    """The first block of a tiny SFD network with non-trivial RMSNorm weights, its RoPE and its token shape."""
    model = random_model()
    block = model.blocks[0]
    with torch.no_grad():
        for norm in (block.norm1, block.attn.q_norm, block.attn.k_norm):
            norm.weight.add_(0.3 * torch.randn_like(norm.weight))
    return block, model.feat_rope, model.pos_embed.shape[1:]


def assert_same_values_and_gradients(fused_out, reference_out, leaves):
    assert rel_error(fused_out, reference_out) < TOL_FORWARD
    weights = torch.randn(fused_out.shape, generator=torch.Generator().manual_seed(2))
    fused_grads = torch.autograd.grad((fused_out * weights).sum(), leaves)
    reference_grads = torch.autograd.grad((reference_out * weights).sum(), leaves)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads):
        assert rel_error(fused_grad, reference_grad) < TOL_GRADIENT


@pytest.mark.parametrize("with_shift", [True, False])
def test_fused_norm_modulate_equals_norm_then_modulate(with_shift):
    """The RMSNorm weight folded into the modulation scale, the mean square from one reading pass."""
    block, _, (tokens, dim) = perturbed_block()
    x = torch.randn(2, tokens, dim, requires_grad=True)
    shift = torch.randn(2, dim, requires_grad=True) if with_shift else None
    scale = torch.randn(2, dim, requires_grad=True)
    leaves = [x, scale, block.norm1.weight] + ([shift] if with_shift else [])
    assert_same_values_and_gradients(fused.norm_modulate(block.norm1, x, shift, scale),
                                     modulate(block.norm1(x), shift, scale), leaves)


def test_fused_attention_equals_the_attention_module():
    """q and k normalised and rotated together (one complex multiplication; ScaleQK for the norm weights' gradient)."""
    block, rope, (tokens, dim) = perturbed_block()
    attn = block.attn
    x = torch.randn(2, tokens, dim, requires_grad=True)
    leaves = [x, attn.qkv.weight, attn.q_norm.weight, attn.k_norm.weight, attn.proj.weight]
    assert_same_values_and_gradients(fused.attention(attn, x, rope), attn(x, rope), leaves)
    qkv = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim))
    joint = fused.normalize_rotate(attn, qkv[:, :, :2], rope)
    for index, norm in enumerate((attn.q_norm, attn.k_norm)):
        module_path = rope(norm(qkv[:, :, index].transpose(1, 2))).transpose(1, 2)
        assert rel_error(joint[:, :, index], module_path) < TOL_FORWARD


def test_fused_swiglu_without_autograd_is_the_module():
    block, _, (tokens, dim) = perturbed_block()
    x = torch.randn(2, tokens, dim)
    with torch.no_grad():
        assert torch.equal(fused.mlp(block.mlp, x), block.mlp(x))


def fused_or_release(ours, release, exact):
    """Each element equals the release's two roundings (no fused multiply-add on this machine) or the single rounding
    of the exact value (a fused multiply-add, e.g. AVX-512 or CUDA): never anything else."""
    return bool(((ours == release) | (ours == exact.float())).all())


@pytest.mark.parametrize("shape", [(2, 256, 64), (3, 7, 33), (2, 256, 1152)])
def test_addcmul_modulation_and_residual_round_at_most_as_the_release(shape):
    """The fused modulate and gated_residual are one torch.addcmul each. With a fused multiply-add that is not
    bit-identical to the release's product-then-sum (one rounding instead of two, ≤ 1 ulp); the golden tests bound the
    effect on the network (docs/goldens.md §5)."""
    generator = torch.Generator().manual_seed(0)
    x, update = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    shift, scale, gate = (torch.randn(shape[0], shape[-1], generator=generator) for _ in range(3))
    exact = x.double() * (1 + scale.unsqueeze(1)).double() + shift.unsqueeze(1).double()
    assert fused_or_release(fused.modulate(x, shift, scale), release_modulate(x, shift, scale), exact)
    exact = x.double() + gate.unsqueeze(1).double() * update.double()
    assert fused_or_release(fused.gated_residual(x, gate, update), release_gated_residual(x, gate, update), exact)
    assert torch.equal(fused.modulate(x, None, scale), x * (1 + scale.unsqueeze(1)))


def test_bf16_branch_output_is_rounded_before_the_residual_as_in_the_release():
    """Under bf16 autocast the gate and the branch output are bf16 and the residual stream fp32: the release rounds
    their product to bf16 before adding it, and so does the fused path (addcmul would keep it in fp32)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, generator=generator)
    gate = torch.randn(2, 64, generator=generator).bfloat16()
    update = torch.randn(2, 16, 64, generator=generator).bfloat16()
    ours = fused.gated_residual(x, gate, update)
    assert ours.dtype == torch.float32 and torch.equal(ours, release_gated_residual(x, gate, update))
    assert not torch.equal(ours, torch.addcmul(x, gate.unsqueeze(1), update))
