"""Three-phase samplers against the official goldens, and their invariants."""

import pytest
import torch

import sfd
from sfd.guidance import Guidance
from sfd.lightningdit import LightningDiT
from sfd.samplers import sample
from sfd.schedule import TimeSplit
from tests.conftest import TOL_DOPRI5, TOL_EULER, golden, rel_error, tiny_model_args

SFD_SPLIT = TimeSplit(0.3, 16)


def check(result, case, z, tol):
    reference = case["sample"][: z.shape[0]]
    assert rel_error(result.x, reference) < tol
    assert rel_error(result.x - z, reference - z) < tol


def test_euler_matches_golden_trajectory(sfd_tiny):
    model, _ = sfd_tiny
    case = golden("sample_euler_sfd_tiny")
    result = sample(model, case["z"], case["y"], SFD_SPLIT, method="euler", num_steps=20, keep_trajectory=True)
    assert result.nfe == 19
    assert torch.equal(SFD_SPLIT.grid(20), case["t_grid"])
    check(result, case, case["z"], TOL_EULER)
    assert rel_error(result.trajectory - case["z"], case["trajectory"] - case["z"]) < TOL_EULER


def test_dopri5_with_cfg_matches_golden(sfd_tiny):
    """The release doubles the state for CFG; we double only the model batch. Same numbers, same NFE."""
    model, _ = sfd_tiny
    case = golden("sample_dopri5_cfg_sfd_tiny")
    z, y = case["z"][:2], case["y"][:2]
    result = sample(model, z, y, SFD_SPLIT, method="dopri5", num_steps=250, atol=1e-6, rtol=1e-3,
                    guidance=Guidance(scale_tex=1.5, scale_sem=1.5))
    assert result.nfe == 26
    check(result, case, z, TOL_DOPRI5)


def test_shifted_euler_with_autoguidance_matches_golden(sfd_tiny, sfd_tiny_guide):
    model, _ = sfd_tiny
    case = golden("sample_euler_ag_sfd_tiny")
    assert torch.equal(SFD_SPLIT.grid(30, shift=0.3), case["t_grid"])
    result = sample(model, case["z"], case["y"], SFD_SPLIT, method="euler", num_steps=30, shift=0.3,
                    guidance=Guidance(scale_tex=1.5, scale_sem=1.5, guide=sfd_tiny_guide))
    assert result.nfe == 29
    check(result, case, case["z"], TOL_EULER)


def test_synchronous_baseline_euler_matches_golden(baseline_tiny):
    model, _ = baseline_tiny
    case = golden("sample_euler_baseline_tiny")
    result = sample(model, case["z"], case["y"], TimeSplit(0.0, 0), method="euler", num_steps=20)
    assert result.nfe == 19
    check(result, case, case["z"], TOL_EULER)


def test_sample_from_config_uses_the_release_rules(sfd_tiny, sfd_tiny_guide):
    model, _ = sfd_tiny
    case = golden("sample_euler_ag_sfd_tiny")
    config = sfd.load_config("tests/data/sfd_tiny.yaml", [
        "sample.sampling_method=euler", "sample.num_sampling_steps=30", "sample.timestep_shift=0.3",
        "sample.autoguidance=true", "sample.cfg_scale=1.5"])
    result = sfd.sample_from_config(model, case["z"], case["y"], config, guide=sfd_tiny_guide)
    check(result, case, case["z"], TOL_EULER)


@pytest.mark.parametrize("num_steps, shift, expected", [
    (10, 2.0, [0, 0.26, 0.4727, 0.65, 0.8, 0.9286, 1.04, 1.1375, 1.2235, 1.3]),
    (6, 0.3, [0, 0.0907, 0.2167, 0.4034, 0.7091, 1.3]),
])
def test_shift_grid_examples(num_steps, shift, expected):
    assert torch.allclose(SFD_SPLIT.grid(num_steps, shift), torch.tensor(expected), atol=1e-4)


def test_linspace_boundary_quirk():
    """float32 linspace(0, 1.3, 14) puts a nominal 0.3 just below it, delaying the first texture update."""
    grid = SFD_SPLIT.grid(14)
    assert grid[3] < 0.3 and SFD_SPLIT.active_mask(grid[3:4], 48)[0, 0].item() == 0


def test_phases_freeze_texture_then_semantics(sfd_tiny):
    model, _ = sfd_tiny
    z = torch.randn(1, 48, 16, 16, generator=torch.Generator().manual_seed(0))
    result = sample(model, z, torch.tensor([3]), SFD_SPLIT, method="euler", num_steps=27 + 1, keep_trajectory=True)
    grid = SFD_SPLIT.grid(28)
    for index, tau in enumerate(grid):
        state = result.trajectory[index]
        if tau <= 0.3:  # stage I: the texture is still exactly the initial noise
            assert torch.equal(state[:, :32], z[:, :32])
        if index > 0 and grid[index - 1] > 1.0:  # stage III: semantics frozen
            assert torch.equal(state[:, 32:], result.trajectory[index - 1][:, 32:])
    assert not torch.equal(result.x[:, :32], z[:, :32])


def tiny_model():
    torch.manual_seed(0)
    model = LightningDiT(tiny_model_args(semantic_first=False))
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.2)
    return model.eval()


def test_delta_t_zero_is_the_synchronous_ode():
    """With Δt = 0 the sampler is the plain ODE from t = 0 to 1: no masks, no clamping, identical states."""
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    result = sample(model, z, y, TimeSplit(0.0, 2), method="euler", num_steps=8)
    x = z
    grid = torch.linspace(0, 1, 8)
    with torch.no_grad():
        for t0, t1 in zip(grid[:-1], grid[1:]):
            x = x + (t1 - t0) * model(x, t0.expand(2), t0.expand(2), y).velocity
    assert torch.equal(result.x, x)


def test_heun_is_more_accurate_than_euler():
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    split = TimeSplit(0.3, 2)
    exact = sample(model, z, y, split, method="rk4", num_steps=261).x
    euler = sample(model, z, y, split, method="euler", num_steps=11)
    heun = sample(model, z, y, split, method="heun", num_steps=11)
    assert heun.nfe == 20 and euler.nfe == 10
    assert (heun.x - exact).abs().max() < (euler.x - exact).abs().max()


@pytest.mark.parametrize("split", [TimeSplit(0.3, 2), TimeSplit(0.0, 0)])
def test_sde_without_noise_is_euler_and_is_seeded(split):
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    euler = sample(model, z, y, split, method="euler", num_steps=12)
    quiet = sample(model, z, y, split, sde=True, num_steps=12, diffusion_norm=0.0)
    assert torch.allclose(quiet.x, euler.x, atol=1e-6)
    noisy = [sample(model, z, y, split, sde=True, num_steps=12, generator=torch.Generator().manual_seed(s)).x
             for s in (1, 1, 2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])
    assert torch.isfinite(noisy[0]).all()
    with pytest.raises(ValueError, match="diffusion_form"):
        sample(model, z, y, split, sde=True, num_steps=4, diffusion_form="SBDM")
