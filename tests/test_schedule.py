"""The schedule family of sfd/schedule.py: each shape's times and rates, the loss's draws, sampling with Euler and
dopri5, the manifest and the guide check (the constant lead's goldens are in tests/test_samplers.py)."""

import pytest
import torch

import sfd
from sfd.build import check_guide
from sfd.lightningdit import ModelOutput
from sfd.loss import FlowMatchingLoss
from sfd.samplers import SamplerOptions, sample
from sfd.schedule import SCHEDULE_SHAPES, TimeSplit
from tests.conftest import DATA

SEMANTIC = 2


def dense(split: TimeSplit, count: int = 2001) -> torch.Tensor:
    return torch.linspace(0.0, split.tau_max, count, dtype=torch.float64)


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_times_are_monotone_from_noise_to_data_with_semantics_ahead(shape):
    split = TimeSplit(0.3, SEMANTIC, shape)
    t_tex, t_sem = split.times(dense(split))
    assert (t_tex[0], t_sem[0]) == (0.0, 0.0) and t_tex[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert t_sem[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert (t_tex.diff() >= 0).all() and (t_sem.diff() >= 0).all()
    assert (t_sem >= t_tex - 1e-12).all() and (t_sem - t_tex).max() > 0.29
    synchronous = TimeSplit(0.0, SEMANTIC, shape)  # Δt = 0: every shape is the identity
    tau = torch.linspace(0, 1, 11)
    assert all(torch.equal(part, tau) for part in synchronous.times(tau))


def test_each_shape_is_the_formula_it_documents():
    tau = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0, 1.2], dtype=torch.float64)
    t_tex, t_sem = TimeSplit(0.3, SEMANTIC, "constant").times(tau)
    assert torch.allclose(t_tex, (tau - 0.3).clamp(min=0)) and torch.allclose(t_sem, tau.clamp(max=1))
    t_tex, t_sem = TimeSplit(0.3, SEMANTIC, "shrinking").times(tau[:5])
    assert torch.allclose(t_tex, (tau[:5] - 0.3).clamp(min=0) / 0.7) and torch.allclose(t_sem, tau[:5])
    smooth = TimeSplit(0.3, SEMANTIC, "smooth")
    t_tex, t_sem = smooth.times(torch.tensor([0.5], dtype=torch.float64))
    assert (t_sem - t_tex).item() == pytest.approx(0.3)  # the lead is Δt at mid-trajectory
    assert TimeSplit(0.3, SEMANTIC, "shrinking").tau_max == smooth.tau_max == 1.0
    assert TimeSplit(0.3, SEMANTIC, "constant").tau_max == 1.3


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_rates_are_the_derivatives_of_the_times(shape):
    """dt/dτ by central differences, away from the phase boundaries where it jumps."""
    split = TimeSplit(0.3, SEMANTIC, shape)
    tau = dense(split)[1:-1]
    tau = tau[torch.stack([(tau - b).abs() > 1e-3 for b in split.phase_boundaries]).all(0)] \
        if split.phase_boundaries else tau
    h = 1e-6
    (tex_hi, sem_hi), (tex_lo, sem_lo) = split.times(tau + h), split.times(tau - h)
    rates = split.rates(tau, torch.zeros(len(tau), 3 + SEMANTIC, dtype=torch.float64))
    assert torch.allclose(rates[:, 0, 0, 0], (tex_hi - tex_lo) / (2 * h), atol=1e-5)
    assert torch.allclose(rates[:, -1, 0, 0], (sem_hi - sem_lo) / (2 * h), atol=1e-5)


@pytest.mark.parametrize("shape", ["constant", "shrinking"])
def test_phase_rates_are_the_rates_inside_each_phase(shape):
    split = TimeSplit(0.3, SEMANTIC, shape)
    edges = [0.0, *split.phase_boundaries, split.tau_max]
    like = torch.zeros(1, 3 + SEMANTIC)
    for phase, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
        inside = split.rates(torch.tensor([(start + end) / 2]), like)
        for edge in (start, end):  # also at the phase's own edges
            assert torch.equal(split.rates(torch.tensor([edge]), like, phase), inside), (phase, edge)
    assert split.phase_boundaries == ((0.3, 1.0) if shape == "constant" else (0.3,))
    assert TimeSplit(0.3, SEMANTIC, "smooth").phase_boundaries == ()


class RecordingModel(torch.nn.Module):
    """Returns the exact velocity of the linear path to one data point x1 for each group at its own time, and
    records the times it is called with."""

    null_label = 10

    def __init__(self, x1: torch.Tensor, split: TimeSplit) -> None:
        super().__init__()
        self.x1, self.split, self.calls = x1, split, []

    def forward(self, x, t_tex, t_sem, y, repa=False):
        self.calls.append((t_tex.clone(), t_sem.clone()))
        t = self.split.per_channel(t_tex, t_sem, x.shape[1]).to(x.dtype).clamp(max=1 - 1e-9)
        return ModelOutput((self.x1 - x) / (1 - t))


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_the_loss_draws_each_shapes_times(shape):
    split = TimeSplit(0.3, SEMANTIC, shape)
    x1 = torch.randn(4, 3 + SEMANTIC, 2, 2)
    model = RecordingModel(x1, split)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    loss = FlowMatchingLoss(split, semantic_weight=2.0, use_cosine_loss=False, use_lognorm=True, use_repa=False,
                            repa_weight=1.0, repa_mode="cos", class_dropout_prob=0.0, null_label=10)
    loss(model, x1, torch.zeros(4, dtype=torch.long), t=t, noise=torch.randn_like(x1))
    expected = split.times(split.training_tau(t))
    assert torch.equal(model.calls[0][0], expected[0]) and torch.equal(model.calls[0][1], expected[1])


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
@pytest.mark.parametrize("method, phases", [("euler", False), ("dopri5", False), ("dopri5", True)])
def test_sampling_follows_each_group_along_its_own_time(shape, method, phases):
    """With the exact velocity of the path to x1, integrating dx/dτ = (dt/dτ)·v carries both groups from noise to
    x1 whatever the shape: Euler to first order, dopri5 (whole, or phase by phase) to its tolerance."""
    split = TimeSplit(0.3, SEMANTIC, shape)
    x1 = torch.randn(2, 3 + SEMANTIC, 2, 2, dtype=torch.float64)
    z = torch.randn_like(x1)
    options = SamplerOptions(split, sampling_method=method, num_sampling_steps=400 if method == "euler" else 10,
                             atol=1e-8, rtol=1e-8, phase_split=phases)
    result = sample(RecordingModel(x1, split), z, torch.zeros(2, dtype=torch.long), options)
    tolerance = 2e-2 if method == "euler" else 1e-4
    assert torch.allclose(result.x, x1, atol=tolerance), (result.x - x1).abs().max()
    assert result.nfe > 0


def test_the_manifest_names_a_shape_other_than_the_releases():
    from sfd.generate import ImageSampler, LabelPlan, image_settings

    for shape, written in (("constant", None), ("smooth", "smooth")):
        config = sfd.load_config(DATA / "sfd_tiny.yaml", [f"model.semfirst_schedule={shape}"])
        sampler = ImageSampler(torch.nn.Identity(), config, decode=lambda latents: latents)
        settings = image_settings(sampler, LabelPlan(4, 10), 2)
        assert settings.get("time_split.shape") == written


def test_a_guide_with_another_shape_is_refused():
    main = sfd.load_config(DATA / "sfd_tiny.yaml", ["model.semfirst_schedule=smooth"])
    guide = sfd.load_config(DATA / "sfd_tiny_guide.yaml")
    with pytest.raises(ValueError, match="model.semfirst_schedule is constant, the main model's is smooth"):
        check_guide(main, guide, "guide.yaml")


def test_shapes_are_checked_at_load_and_in_the_split():
    with pytest.raises(sfd.ConfigError, match="model.semfirst_schedule: must be one of constant, shrinking, smooth"):
        sfd.load_config(DATA / "sfd_tiny.yaml", ["model.semfirst_schedule=linear"])
    with pytest.raises(ValueError, match="shape must be one of"):
        TimeSplit(0.3, SEMANTIC, "linear")
