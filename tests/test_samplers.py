"""Three-phase samplers against the official goldens, and their invariants."""

from dataclasses import replace

import pytest
import torch

import sfd
from sfd import samplers
from sfd.guidance import Guidance
from sfd.samplers import SamplerOptions, sample
from sfd.schedule import TimeSplit
from tests.conftest import TOL_DOPRI5, TOL_EULER, golden, random_tiny_model, rel_error

SFD_SPLIT = TimeSplit(0.3, 16)


def check(result, case, z, tol):
    reference = case["sample"][: z.shape[0]]
    assert rel_error(result.x, reference) < tol
    assert rel_error(result.x - z, reference - z) < tol


def test_euler_matches_golden_trajectory(sfd_tiny):
    model, _ = sfd_tiny
    case = golden("sample_euler_sfd_tiny")
    options = SamplerOptions(SFD_SPLIT, sampling_method="euler", num_sampling_steps=20, keep_trajectory=True)
    result = sample(model, case["z"], case["y"], options)
    assert result.nfe == 19
    assert torch.equal(SFD_SPLIT.grid(20), case["t_grid"])
    check(result, case, case["z"], TOL_EULER)
    assert rel_error(result.trajectory - case["z"], case["trajectory"] - case["z"]) < TOL_EULER


def test_dopri5_with_cfg_matches_golden(sfd_tiny):
    """The release doubles the state for CFG; we double only the model batch. Same numbers, same NFE."""
    model, _ = sfd_tiny
    case = golden("sample_dopri5_cfg_sfd_tiny")
    z, y = case["z"][:2], case["y"][:2]
    result = sample(model, z, y, SamplerOptions(SFD_SPLIT, guidance=Guidance(scale_tex=1.5, scale_sem=1.5),
                                                sampling_method="dopri5", num_sampling_steps=250, atol=1e-6, rtol=1e-3))
    assert result.nfe == 26
    check(result, case, z, TOL_DOPRI5)


def test_shifted_euler_with_autoguidance_matches_golden(sfd_tiny, sfd_tiny_guide):
    model, _ = sfd_tiny
    case = golden("sample_euler_ag_sfd_tiny")
    assert torch.equal(SFD_SPLIT.grid(30, shift=0.3), case["t_grid"])
    result = sample(model, case["z"], case["y"], SamplerOptions(
        SFD_SPLIT, guidance=Guidance(scale_tex=1.5, scale_sem=1.5, guide=sfd_tiny_guide), sampling_method="euler",
        num_sampling_steps=30, timestep_shift=0.3))
    assert result.nfe == 29
    check(result, case, case["z"], TOL_EULER)


def test_synchronous_baseline_euler_matches_golden(baseline_tiny):
    model, _ = baseline_tiny
    case = golden("sample_euler_baseline_tiny")
    result = sample(model, case["z"], case["y"], SamplerOptions(TimeSplit(0.0, 0), sampling_method="euler",
                                                                num_sampling_steps=20))
    assert result.nfe == 19
    check(result, case, case["z"], TOL_EULER)


def test_options_from_config_use_the_release_rules(sfd_tiny, sfd_tiny_guide):
    model, _ = sfd_tiny
    case = golden("sample_euler_ag_sfd_tiny")
    config = sfd.load_config("tests/data/sfd_tiny.yaml", [
        "sample.sampling_method=euler", "sample.num_sampling_steps=30", "sample.timestep_shift=0.3",
        "sample.autoguidance=true", "sample.cfg_scale=1.5"])
    result = sfd.sample(model, case["z"], case["y"], sfd.SamplerOptions.from_config(config, guide=sfd_tiny_guide))
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
    assert grid[3] < 0.3 and SFD_SPLIT.rates(grid[3:4], torch.zeros(1, 48))[0, 0].item() == 0


def test_phases_freeze_texture_then_semantics(sfd_tiny):
    model, _ = sfd_tiny
    z = torch.randn(1, 48, 16, 16, generator=torch.Generator().manual_seed(0))
    result = sample(model, z, torch.tensor([3]), SamplerOptions(SFD_SPLIT, sampling_method="euler",
                                                                num_sampling_steps=27 + 1, keep_trajectory=True))
    grid = SFD_SPLIT.grid(28)
    for index, tau in enumerate(grid):
        state = result.trajectory[index]
        if tau <= 0.3:  # stage I: the texture is still exactly the initial noise
            assert torch.equal(state[:, :32], z[:, :32])
        if index > 0 and grid[index - 1] > 1.0:  # stage III: semantics frozen
            assert torch.equal(state[:, 32:], result.trajectory[index - 1][:, 32:])
    assert not torch.equal(result.x[:, :32], z[:, :32])


def tiny_model():
    return random_tiny_model(semantic_first=False)


def test_delta_t_zero_is_the_synchronous_ode():
    """With Δt = 0 the sampler is the plain ODE from t = 0 to 1: no masks, no clamping, identical states."""
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    result = sample(model, z, y, SamplerOptions(TimeSplit(0.0, 2), sampling_method="euler", num_sampling_steps=8))
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
    exact = sample(model, z, y, SamplerOptions(split, sampling_method="rk4", num_sampling_steps=261)).x
    euler = sample(model, z, y, SamplerOptions(split, sampling_method="euler", num_sampling_steps=11))
    heun = sample(model, z, y, SamplerOptions(split, sampling_method="heun", num_sampling_steps=11))
    assert heun.nfe == 20 and euler.nfe == 10
    assert (heun.x - exact).abs().max() < (euler.x - exact).abs().max()


@pytest.mark.parametrize("split", [TimeSplit(0.3, 2), TimeSplit(0.0, 0)])
def test_sde_without_noise_is_euler_and_is_seeded(split):
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    euler = sample(model, z, y, SamplerOptions(split, sampling_method="euler", num_sampling_steps=12))
    quiet = sample(model, z, y, SamplerOptions(split, mode="SDE", num_sampling_steps=12, diffusion_norm=0.0))
    assert torch.allclose(quiet.x, euler.x, atol=1e-6)
    sde = SamplerOptions(split, mode="SDE", num_sampling_steps=12)
    noisy = [sample(model, z, y, sde, generator=torch.Generator().manual_seed(s)).x for s in (1, 1, 2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])
    assert torch.isfinite(noisy[0]).all()
    with pytest.raises(ValueError, match="diffusion_form"):
        sample(model, z, y, SamplerOptions(split, mode="SDE", num_sampling_steps=4, diffusion_form="SBDM"))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_fixed_step_samplers_hold_only_the_final_state_unless_asked(method):
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    split = TimeSplit(0.3, 2)
    full = sample(model, z, y, SamplerOptions(split, sampling_method=method, num_sampling_steps=9,
                                              keep_trajectory=True))
    final = sample(model, z, y, SamplerOptions(split, sampling_method=method, num_sampling_steps=9))
    assert full.trajectory.shape == (9, 2, 6, 4, 4) and final.trajectory is None
    assert torch.equal(final.x, full.x) and final.nfe == full.nfe
    drift = samplers.Drift(model, split, y)
    with torch.no_grad():
        states = getattr(samplers, method)(drift, z, split.grid(9), keep_trajectory=False)
    assert len(states) == 1 and torch.equal(states[0], full.x)


def test_sde_holds_only_the_final_state_unless_asked():
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    runs = [sample(model, z, y, SamplerOptions(TimeSplit(0.3, 2), mode="SDE", num_sampling_steps=9,
                                               keep_trajectory=keep), generator=torch.Generator().manual_seed(0))
            for keep in (True, False)]
    assert runs[0].trajectory.shape[0] == 9 and runs[1].trajectory is None
    assert torch.equal(runs[0].x, runs[1].x)


def record_odeint_times(monkeypatch):
    """Wrap the odeint the samplers call, recording how many output times each call asks for."""
    asked = []

    def recording_odeint(func, y0, t, **kwargs):
        asked.append(len(t))
        return samplers_odeint(func, y0, t, **kwargs)

    samplers_odeint = samplers.odeint
    monkeypatch.setattr(samplers, "odeint", recording_odeint)
    return asked


def test_dopri5_asks_only_for_the_end_time_and_gets_the_same_steps(sfd_tiny, monkeypatch):
    """dopri5 picks its steps from the error estimate alone and interpolates the outputs, so asking torchdiffeq for
    the end time only gives the golden case's final state bit for bit, with the same 26 model calls (rejected steps
    included)."""
    model, _ = sfd_tiny
    case = golden("sample_dopri5_cfg_sfd_tiny")
    z, y = case["z"][:2], case["y"][:2]
    asked = record_odeint_times(monkeypatch)
    runs = [sample(model, z, y, SamplerOptions(SFD_SPLIT, guidance=Guidance(scale_tex=1.5, scale_sem=1.5),
                                               sampling_method="dopri5", num_sampling_steps=250, atol=1e-6, rtol=1e-3,
                                               keep_trajectory=keep)) for keep in (True, False)]
    assert asked == [250, 2]
    assert runs[0].trajectory.shape[0] == 250 and runs[1].trajectory is None
    assert torch.equal(runs[0].x, runs[1].x) and runs[0].nfe == runs[1].nfe == 26
    assert runs[1].x.untyped_storage().nbytes() == runs[1].x.numel() * runs[1].x.element_size()


def test_torchdiffeq_fixed_grid_method_steps_on_the_full_grid_without_keeping_it(monkeypatch):
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([0, 2])
    asked = record_odeint_times(monkeypatch)
    rk4 = SamplerOptions(TimeSplit(0.3, 2), sampling_method="rk4", num_sampling_steps=12)
    full = sample(model, z, y, replace(rk4, keep_trajectory=True))
    final = sample(model, z, y, rk4)
    assert asked == [12, 2] and final.trajectory is None
    assert torch.equal(final.x, full.x) and final.nfe == full.nfe == 4 * 11


def test_phase_grid_has_points_on_both_boundaries():
    grid = SFD_SPLIT.phase_grid(14)
    assert len(grid) == 14 and grid[0] == 0 and torch.isclose(grid[-1], torch.tensor(1.3))
    assert (grid == torch.tensor(0.3)).any() and (grid == torch.tensor(1.0)).any()
    assert (grid[1:] > grid[:-1]).all()
    with pytest.raises(ValueError, match="^sample.num_sampling_steps: 3 grid points cannot put a point on both"):
        SFD_SPLIT.phase_grid(3)


def test_phase_split_freezes_each_group_outside_its_phase(sfd_tiny):
    """With phase_split the texture channels stay at their noise until τ = Δt and the semantic channels do not
    move after τ = 1, also at the boundary grid points themselves."""
    model, _ = sfd_tiny
    z = torch.randn(2, 48, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    grid = SFD_SPLIT.phase_grid(14)
    for method in ("euler", "heun"):
        phased = SamplerOptions(SFD_SPLIT, sampling_method=method, num_sampling_steps=14, phase_split=True)
        result = sample(model, z, y, replace(phased, keep_trajectory=True))
        states = result.trajectory
        assert len(states) == 14
        at_delta = int((grid == torch.tensor(0.3)).nonzero())
        at_one = int((grid == torch.tensor(1.0)).nonzero())
        assert torch.equal(states[at_delta][:, :32], z[:, :32])
        assert all(torch.equal(states[k][:, 32:], states[at_one][:, 32:]) for k in range(at_one, 14))
        assert not torch.equal(states[-1][:, :32], states[at_one][:, :32])
        final = sample(model, z, y, phased)
        assert torch.equal(final.x, states[-1]) and final.nfe == result.nfe


def test_phase_split_dopri5_solves_the_same_ode(sfd_tiny):
    """Restarting dopri5 at τ = Δt and τ = 1 changes the steps, not the solution: at tight tolerances both runs
    agree, and the split run needs far fewer evaluations because no step straddles a jump of the drift (here 90
    against 482)."""
    model, _ = sfd_tiny
    z = torch.randn(2, 48, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([5, 6])
    tight = SamplerOptions(SFD_SPLIT, sampling_method="dopri5", num_sampling_steps=5, rtol=1e-6, atol=1e-8)
    plain = sample(model, z, y, tight)
    split = sample(model, z, y, replace(tight, phase_split=True))
    assert rel_error(split.x - z, plain.x - z) < 1e-3
    assert 0 < split.nfe < plain.nfe / 2


def test_options_read_phase_split_from_the_config():
    config = sfd.load_config("tests/data/sfd_tiny.yaml", ["sample.phase_split=true", "sample.sampling_method=heun"])
    plan = SamplerOptions.from_config(config)
    assert plan.phase_split and plan.sampling_method == "heun"
    assert not SamplerOptions.from_config(sfd.load_config("tests/data/sfd_tiny.yaml")).phase_split
    with pytest.raises(sfd.ConfigError, match="sample.phase_split: phase-aware integration is for the ODE samplers"):
        sfd.load_config("tests/data/sfd_tiny.yaml", ["sample.phase_split=true", "sample.mode=SDE"])


def test_options_take_every_setting_by_its_config_name():
    """A sampler setting is a SampleConfig field and a SamplerOptions field of the same name with the config's
    default; from_config copies it with no line of its own."""
    from dataclasses import fields

    from sfd.config import SampleConfig

    config_fields = {field.name: field.default for field in fields(SampleConfig)}
    own = ("split", "guidance", "keep_trajectory")
    shared = [field.name for field in fields(SamplerOptions) if field.name not in own]
    assert all(name in config_fields for name in shared)
    assert all(getattr(SamplerOptions(), name) == config_fields[name] for name in shared)
    config = sfd.load_config("tests/data/sfd_tiny.yaml", [
        "sample.mode=SDE", "sample.sampling_method=heun", "sample.num_sampling_steps=9", "sample.atol=1e-5",
        "sample.rtol=1e-2", "sample.timestep_shift=0.5", "sample.diffusion_form=linear", "sample.diffusion_norm=0.5"])
    options = SamplerOptions.from_config(config)
    assert all(getattr(options, name) == getattr(config.sample, name) for name in shared)
    assert options.split == TimeSplit(0.3, 16) and options.guidance.scale_tex == 1.5 and options.sde


def test_named_sampler_settings():
    assert samplers.sampler_overrides("heun-9-phases") == [
        "sample.sampling_method=heun", "sample.phase_split=true", "sample.num_sampling_steps=9"]
    assert samplers.sampler_overrides("dopri5") == ["sample.sampling_method=dopri5", "sample.phase_split=false"]
    assert samplers.sampler_overrides("euler-33")[-1] == "sample.num_sampling_steps=33"
    for bad in ("heun", "euler-1", "dopri5-9", "-phases", "heun-x"):
        with pytest.raises(ValueError, match=f"sampler {bad!r}: expected euler-N, heun-N"):
            samplers.sampler_overrides(bad)
    config = sfd.load_config("tests/data/sfd_tiny.yaml", samplers.sampler_overrides("heun-9-phases"))
    assert config.sample.phase_split and config.sample.num_sampling_steps == 9
