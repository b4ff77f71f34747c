"""The asynchronous flow-matching loss against the official goldens and its reductions."""

import copy

import pytest
import torch

from sfd import rng
from sfd.lightningdit import LightningDiT
from sfd.loss import FlowMatchingLoss
from sfd.schedule import TimeSplit
from tests.conftest import TOL_FORWARD, golden, rel_error, tiny_model_args


def golden_loss(model, config, case, **overrides):
    loss = FlowMatchingLoss.from_config(config, class_dropout_prob=0.0, **overrides)
    model = copy.deepcopy(model).train()
    return loss(model, case["x1"], case["y"], case.get("feature_dino"), t=case["t"], noise=case["x0"])


def test_sfd_loss_terms_match_golden(sfd_tiny):
    model, config = sfd_tiny
    case = golden("loss_sfd_tiny")
    terms = golden_loss(model, config, case)
    assert torch.equal(terms.t_tex, case["t_tex"]) and torch.equal(terms.t_sem, case["t_sem"])
    assert rel_error(terms.xt, case["xt"]) < TOL_FORWARD
    assert rel_error(terms.pred, case["pred"]) < TOL_FORWARD
    assert rel_error(terms.mse, case["loss"]) < TOL_FORWARD
    assert rel_error(terms.cos, case["cos_loss"]) < TOL_FORWARD
    assert rel_error(terms.repa, case["repa_loss"]) < TOL_FORWARD
    expected_total = case["loss"].mean() + case["cos_loss"].mean() + case["repa_loss"].mean()
    assert abs(terms.total.item() - expected_total.item()) < 1e-5 * expected_total.item()


def test_baseline_loss_matches_golden(baseline_tiny):
    model, config = baseline_tiny
    case = golden("loss_baseline_tiny")
    terms = golden_loss(model, config, case)
    assert torch.equal(terms.t_tex, case["t_model"])
    assert rel_error(terms.xt, case["xt"]) < TOL_FORWARD
    assert rel_error(terms.mse, case["loss"]) < TOL_FORWARD
    assert rel_error(terms.cos, case["cos_loss"]) < TOL_FORWARD
    assert terms.repa is None


def test_time_split_clamps_and_probability():
    split = TimeSplit(0.3, 16)
    t_tex, t_sem = split.times(split.training_tau(torch.tensor([0.1, 0.5, 0.9])))
    assert torch.allclose(t_tex, torch.tensor([0.0, 0.35, 0.87]))
    assert torch.allclose(t_sem, torch.tensor([0.13, 0.65, 1.0]))
    assert torch.all(t_sem >= t_tex)
    # P(t_sem = 1) = P(t_tex = 0) = 0.1143 for logit-normal t and Δt = 0.3 (docs/method.md §3.1).
    loss = make_loss(split)
    t = loss.sample_time(200_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    t_tex, t_sem = split.times(split.training_tau(t))
    assert abs((t_sem == 1).float().mean().item() - 0.1143) < 0.003
    assert abs((t_tex == 0).float().mean().item() - 0.1143) < 0.003


def make_loss(split, **changes):
    """A loss with every setting explicit (FlowMatchingLoss has no defaults): plain velocity MSE with logit-normal
    times unless changed."""
    settings = dict(semantic_weight=1.0, use_cosine_loss=False, use_lognorm=True, use_repa=False, repa_weight=1.0,
                    repa_mode="cos", class_dropout_prob=0.0, null_label=1000)
    return FlowMatchingLoss(split, **{**settings, **changes})


def tiny_model(semantic_first, repa=False):
    torch.manual_seed(0)
    model = LightningDiT(tiny_model_args(semantic_first=semantic_first, repa_target_dim=8 if repa else None))
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.2)
    return model


def test_delta_t_zero_is_the_synchronous_loss():
    """Δt = 0 with semantic channels gives t_tex = t_sem = t and the plain flow-matching loss."""
    model = tiny_model(semantic_first=False)
    x1, noise, t, y = torch.randn(4, 6, 4, 4), torch.randn(4, 6, 4, 4), torch.rand(4), torch.tensor([0, 1, 2, 0])
    terms = make_loss(TimeSplit(0.0, 2), use_cosine_loss=True)(model, x1, y, t=t, noise=noise)
    assert torch.equal(terms.t_tex, t) and torch.equal(terms.t_sem, t)
    xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * noise
    velocity = model(xt, t, t, y).velocity
    expected = ((velocity - (x1 - noise)) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(terms.mse, expected, atol=1e-6)


def test_semantic_weight_and_repa_modes():
    model = tiny_model(semantic_first=True, repa=True)
    x1, noise, t, y = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4), torch.rand(2), torch.tensor([0, 1])
    target = torch.randn(2, 8, 4, 4)
    base = make_loss(TimeSplit(0.3, 2), use_repa=True)
    plain = base(model, x1, y, target, t=t, noise=noise)
    weighted = make_loss(TimeSplit(0.3, 2), semantic_weight=2.0, use_repa=True)(model, x1, y, target, t=t,
                                                                                         noise=noise)
    squared = (plain.pred - (x1 - noise)) ** 2
    assert torch.allclose(weighted.mse - plain.mse, squared[:, 4:].sum(dim=(1, 2, 3)) / squared[0].numel(), atol=1e-6)
    terms = {mode: make_loss(TimeSplit(0.3, 2), use_repa=True, repa_mode=mode, repa_weight=0.5)(
        model, x1, y, target, t=t, noise=noise).repa for mode in ("cos", "mse", "cos_mse")}
    assert torch.allclose(terms["cos_mse"], (terms["cos"] + terms["mse"]) / 2)
    proj = model(plain.xt, plain.t_tex, plain.t_sem, y).repa
    tokens = target.flatten(2).transpose(1, 2)
    assert torch.allclose(terms["mse"], 0.5 * ((proj - tokens) ** 2).mean(dim=(1, 2)), atol=1e-6)


def test_official_quirk_drops_repa_without_cosine():
    model = tiny_model(semantic_first=True, repa=True)
    x1, noise, t, y = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4), torch.rand(2), torch.tensor([0, 1])
    target = torch.randn(2, 8, 4, 4)
    ours = make_loss(TimeSplit(0.3, 2), use_repa=True)(model, x1, y, target, t=t, noise=noise)
    quirk = make_loss(TimeSplit(0.3, 2), use_repa=True, official_repa_requires_cosine=True)(
        model, x1, y, target, t=t, noise=noise)
    assert torch.allclose(ours.total, ours.mse.mean() + ours.repa.mean())
    assert torch.allclose(quirk.total, quirk.mse.mean())


def test_generator_makes_the_step_reproducible_and_drops_labels():
    model = tiny_model(semantic_first=True)
    x1, y = torch.randn(64, 6, 4, 4), torch.zeros(64, dtype=torch.long)
    loss = make_loss(TimeSplit(0.3, 2), class_dropout_prob=0.5, null_label=3)
    first = loss(model, x1, y, generator=torch.Generator().manual_seed(7))
    second = loss(model, x1, y, generator=torch.Generator().manual_seed(7))
    other = loss(model, x1, y, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.total, second.total) and not torch.equal(first.total, other.total)
    dropped = loss.drop_labels(y, generator=torch.Generator().manual_seed(0))
    assert 10 < (dropped == 3).sum() < 54 and set(dropped.tolist()) <= {0, 3}


def test_missing_repa_target_is_a_clear_error():
    model = tiny_model(semantic_first=True, repa=True)
    with pytest.raises(ValueError, match="repa_target"):
        make_loss(TimeSplit(0.3, 2), use_repa=True)(model, torch.randn(1, 6, 4, 4), torch.tensor([0]))


def test_per_sample_generators_make_the_loss_independent_of_the_batch_split():
    """With one generator per sample (seeded by its global position) a batch gives the same per-sample terms as its
    halves computed separately, as two processes sharing a global batch would."""
    model = tiny_model(semantic_first=True)
    x1, y = torch.randn(4, 6, 4, 4), torch.tensor([0, 1, 2, 0])
    loss = make_loss(TimeSplit(0.3, 2), use_cosine_loss=True, class_dropout_prob=0.3, null_label=3)
    seeds = [rng.derive_seed(0, 5, i) for i in range(4)]
    whole = loss(model, x1, y, generator=rng.SampleGenerators(seeds))
    halves = [loss(model, x1[i:i + 2], y[i:i + 2], generator=rng.SampleGenerators(seeds[i:i + 2])) for i in (0, 2)]
    assert torch.allclose(whole.mse, torch.cat([h.mse for h in halves]), atol=1e-6)
    assert torch.equal(whole.t_tex, torch.cat([h.t_tex for h in halves]))
    assert torch.allclose(whole.total, torch.stack([h.total for h in halves]).mean(), atol=1e-6)


def release_repa_variants(projected, target):
    """The three REPA variants as computed before: all of them on every call, one kept."""
    tokens = target.flatten(2).transpose(1, 2).to(projected.dtype)
    cos = (1 - torch.nn.functional.cosine_similarity(tokens, projected, dim=-1)).mean(1)
    mse = ((tokens - projected) ** 2).flatten(1).mean(1)
    return {"cos": cos, "mse": mse, "cos_mse": (cos + mse) / 2}


def test_each_repa_mode_gives_the_same_value_as_computing_all_three():
    generator = torch.Generator().manual_seed(0)
    projected = torch.randn(3, 256, 768, generator=generator)
    target = torch.randn(3, 768, 16, 16, generator=generator)
    expected = release_repa_variants(projected, target)
    for mode in ("cos", "mse", "cos_mse"):
        ours = make_loss(TimeSplit(0.3, 16), use_repa=True, repa_mode=mode).repa_alignment(projected, target)
        assert torch.equal(ours, expected[mode]), mode
    with pytest.raises(ValueError, match="repa_mode"):
        make_loss(TimeSplit(0.3, 16), use_repa=True, repa_mode="l1").repa_alignment(projected, target)


def test_cos_mode_does_not_compute_the_squared_error(monkeypatch):
    """The released `cos` mode never forms the [B, T, D] squared error."""
    import sfd.loss

    def forbidden(*_args):
        raise AssertionError("repa_mse computed in cos mode")

    monkeypatch.setattr(sfd.loss, "repa_mse", forbidden)
    projected, target = torch.randn(2, 16, 8), torch.randn(2, 8, 4, 4)
    loss = make_loss(TimeSplit(0.3, 2), use_repa=True, repa_mode="cos")
    assert torch.equal(loss.repa_alignment(projected, target), release_repa_variants(projected, target)["cos"])
