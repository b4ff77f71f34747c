"""The semantic-anchor diagnostics (sfd/experiments/diagnostics.py): oracle semantics through every solver, the
semantic Fréchet distance against an independent computation, and the texture-to-source distances."""

import numpy as np
import pytest
import scipy.linalg
import torch

from sfd.experiments.diagnostics import (
    SemanticOracle,
    same_class_partners,
    semantic_frechet_distance,
    source_distances,
)
from sfd.samplers import SamplerOptions, sample
from sfd.schedule import TimeSplit
from tests.conftest import random_tiny_model

SEMANTIC = 2  # the tiny model's trailing channels (6 in all: 4 texture, 2 semantic)


class Recording(torch.nn.Module):
    """The tiny model, keeping the inputs of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.args, self.null_label = model, model.args, model.null_label
        self.calls = []

    def forward(self, x, t_tex, t_sem, y, **kwargs):
        self.calls.append((x.clone(), t_sem.clone()))
        return self.model(x, t_tex, t_sem, y, **kwargs)


def tiny_model():
    return random_tiny_model(semantic_first=True)


@pytest.mark.parametrize("method, phases", [("euler", False), ("heun", True), ("dopri5", False), ("dopri5", True)])
def test_oracle_holds_the_semantic_channels_to_the_noised_truth_at_every_call(method, phases):
    model = tiny_model()
    z, y = torch.randn(3, 6, 4, 4), torch.tensor([0, 1, 2])
    truth = torch.randn(3, SEMANTIC, 4, 4)
    recording = Recording(model)
    options = SamplerOptions(TimeSplit(0.3, SEMANTIC), sampling_method=method, num_sampling_steps=9,
                             phase_split=phases)
    result = sample(SemanticOracle(recording, truth, z[:, -SEMANTIC:]), z, y, options)
    assert len(recording.calls) == result.nfe > 0
    for x, t_sem in recording.calls:
        t = t_sem.view(-1, 1, 1, 1)
        expected = t * truth + (1 - t) * z[:, -SEMANTIC:]
        assert torch.allclose(x[:, -SEMANTIC:], expected, atol=1e-6)
    # the texture channels are the solver's own: generation from these semantics, not a copy of them
    assert not torch.allclose(result.x[:, :-SEMANTIC], z[:, :-SEMANTIC])
    # the returned semantic velocity is the truth's, so phase by phase (no step across τ = 1, where the semantic
    # channels stop) the state's semantic channels end at the truth
    if phases:
        assert torch.allclose(result.x[:, -SEMANTIC:], truth, atol=1e-5)


def test_the_texture_follows_the_semantics_the_oracle_holds():
    model = tiny_model()
    z, y = torch.randn(2, 6, 4, 4), torch.tensor([1, 2])
    options = SamplerOptions(TimeSplit(0.3, SEMANTIC), sampling_method="dopri5", num_sampling_steps=2)
    plain = sample(model, z, y, options)
    held = [sample(SemanticOracle(model, truth, z[:, -SEMANTIC:]), z, y, options).x
            for truth in (torch.randn(2, SEMANTIC, 4, 4), torch.randn(2, SEMANTIC, 4, 4))]
    assert not torch.allclose(held[0][:, :-SEMANTIC], held[1][:, :-SEMANTIC], atol=1e-3)
    assert not torch.allclose(held[0][:, :-SEMANTIC], plain.x[:, :-SEMANTIC], atol=1e-3)


def test_oracle_serves_guidance_batches_and_refuses_bad_shapes():
    model = tiny_model()
    truth, noise = torch.randn(2, SEMANTIC, 4, 4), torch.randn(2, SEMANTIC, 4, 4)
    oracle = SemanticOracle(model, truth, noise)
    x, t = torch.randn(4, 6, 4, 4), torch.full((4,), 0.25)
    out = oracle(x, t, t, torch.tensor([0, 1, 3, 3]), repa=False)  # conditional and null-label halves
    assert torch.equal(out.velocity[:, -SEMANTIC:], (truth - noise).repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="x: 3 rows for an oracle of 2 samples"):
        oracle(x[:3], t[:3], t[:3], torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="truth: 6 semantic channels for a model of 6 channels"):
        SemanticOracle(model, torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match="shapes"):
        SemanticOracle(model, truth, noise[:1])


def independent_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½), written out with scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_semantic_frechet_distance_equals_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(400, 2, 3, 3, generator=generator)
    generated = torch.randn(300, 2, 3, 3, generator=generator) * 1.3 + 0.2
    expected = independent_frechet(generated.reshape(300, -1).double().numpy(), real.reshape(400, -1).double().numpy())
    assert semantic_frechet_distance(generated, real) == pytest.approx(expected, rel=1e-9)
    assert semantic_frechet_distance(real, real) == pytest.approx(0.0, abs=1e-8)


def test_partners_share_the_class_and_distances_compare_source_with_control():
    labels = np.array([0, 1, 0, 1, 0, 2])
    partners = same_class_partners(labels)
    assert partners.tolist() == [2, 3, 4, 1, 0, 5]  # class 2 is alone: its own partner
    sources = torch.randn(6, 2, 2, 2)
    near = sources + 0.01 * torch.randn(6, 2, 2, 2)
    found = source_distances(near, sources, labels)
    assert found["source_distance"] < 0.02 < found["control_distance"] and found["source_ratio"] < 0.1
    rms = lambda a, b: float(((a - b) ** 2).mean().sqrt())  # noqa: E731
    kept = [0, 1, 2, 3, 4]  # the lone image is left out
    assert found["source_distance"] == pytest.approx(np.mean([rms(near[i], sources[i]) for i in kept]))
    assert found["control_distance"] == pytest.approx(np.mean([rms(near[i], sources[partners[i]]) for i in kept]))
