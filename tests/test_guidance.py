"""CFG and AutoGuidance as one function, against the goldens and the release's rules."""

import torch

import sfd
from sfd.guidance import Guidance, guided_velocity
from tests.conftest import TOL_FORWARD, golden, rel_error


def test_cfg_matches_golden(sfd_tiny):
    model, _ = sfd_tiny
    case = golden("forward_sfd_tiny")
    with torch.no_grad():
        out = guided_velocity(model, case["x"], case["t_tex"], case["t_sem"], case["y"], Guidance(1.5, 1.5), 16)
    assert rel_error(out, case["cfg_out"][:2]) < TOL_FORWARD
    assert torch.equal(case["cfg_out"][:2], case["cfg_out"][2:])  # the release returns [guided, guided]


def test_autoguidance_matches_golden(sfd_tiny, sfd_tiny_guide):
    model, _ = sfd_tiny
    case = golden("forward_sfd_tiny")
    with torch.no_grad():
        guide_out = sfd_tiny_guide(case["x"], case["t_tex"], case["t_sem"], case["y"]).velocity
        out = guided_velocity(model, case["x"], case["t_tex"], case["t_sem"], case["y"],
                              Guidance(1.5, 1.5, guide=sfd_tiny_guide), 16)
    assert rel_error(guide_out, case["guide_out"]) < TOL_FORWARD
    assert rel_error(out, case["ag_out"]) < TOL_FORWARD


def test_baseline_cfg_matches_golden(baseline_tiny):
    model, _ = baseline_tiny
    case = golden("forward_baseline_tiny")
    half = case["cfg_x"].shape[0] // 2
    with torch.no_grad():
        out = guided_velocity(model, case["cfg_x"][:half], case["cfg_t"][:half], case["cfg_t"][:half],
                              case["cfg_y"][:half], Guidance(1.5, 1.5), 0)
    assert rel_error(out, case["cfg_out"][:half]) < TOL_FORWARD


def test_scale_one_is_the_conditional_prediction(sfd_tiny, sfd_tiny_guide):
    model, _ = sfd_tiny
    case = golden("forward_sfd_tiny")
    with torch.no_grad():
        cond = model(case["x"], case["t_tex"], case["t_sem"], case["y"]).velocity
        for guide in (None, sfd_tiny_guide):
            out = guided_velocity(model, case["x"], case["t_tex"], case["t_sem"], case["y"], Guidance(1.0, 1.0, guide),
                                  16)
            assert torch.equal(out, cond)
        # one group at scale 1 stays exactly conditional while the other is guided
        mixed = guided_velocity(model, case["x"], case["t_tex"], case["t_sem"], case["y"],
                                Guidance(1.0, 2.0, sfd_tiny_guide), 16)
    assert torch.equal(mixed[:, :32], cond[:, :32]) and not torch.equal(mixed[:, 32:], cond[:, 32:])


def test_interval_keeps_early_groups_unguided(sfd_tiny):
    model, _ = sfd_tiny
    x = golden("forward_sfd_tiny")["x"]
    t_tex, t_sem, y = torch.tensor([0.1, 0.6]), torch.tensor([0.4, 0.9]), torch.tensor([3, 4])
    with torch.no_grad():
        cond = model(x, t_tex, t_sem, y).velocity
        full = guided_velocity(model, x, t_tex, t_sem, y, Guidance(2.0, 2.0), 16)
        both = guided_velocity(model, x, t_tex, t_sem, y, Guidance(2.0, 2.0, interval_start=0.5), 16)
        tex_only = guided_velocity(model, x, t_tex, t_sem, y, Guidance(2.0, 2.0, interval_start=0.5,
                                                                          interval_mode="tex"), 16)
        quirk = guided_velocity(model, x, t_tex, t_sem, y, Guidance(2.0, 2.0, interval_start=0.5,
                                                                       interval_from_first_element=True), 16)
    # element 0: both times below 0.5 -> conditional; element 1: both above -> guided
    assert torch.allclose(both[0], cond[0], atol=1e-6) and torch.allclose(both[1], full[1])
    # mode 'tex': semantics always guided
    assert torch.allclose(tex_only[0, :32], cond[0, :32], atol=1e-6) and torch.allclose(tex_only[0, 32:], full[0, 32:])
    # the release reads element 0 for the whole batch
    assert torch.allclose(quirk[1], cond[1], atol=1e-6) and not torch.allclose(quirk[1], full[1])


def test_from_config_follows_the_release():
    config = sfd.load_config("tests/data/sfd_tiny.yaml", ["sample.cfg_scale=1.0", "sample.cfg_scale_sem=2.0"])
    assert Guidance.from_config(config, guide=torch.nn.Identity()) is None  # guidance only when cfg_scale > 1
    config = sfd.load_config("tests/data/sfd_tiny.yaml", ["sample.cfg_scale=1.5", "sample.cfg_scale_sem=2.0",
                                                          "sample.cfg_interval_start=0.2"])
    cfg = Guidance.from_config(config)
    assert (cfg.scale_tex, cfg.scale_sem, cfg.guide, cfg.interval_start) == (1.5, 1.5, None, 0.2)
    guide = torch.nn.Identity()
    ag = Guidance.from_config(config, guide=guide)
    assert (ag.scale_tex, ag.scale_sem, ag.guide) == (1.5, 2.0, guide)


class CountingGuide(torch.nn.Module):
    """A guide that counts its calls (and predicts like the main model)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def test_reference_evaluation_is_skipped_outside_the_interval(sfd_tiny):
    """Where every sample and group is before the interval the guided velocity is the conditional one, so neither
    the guide nor the null-label half of CFG is evaluated; inside it the guide runs."""
    model, _ = sfd_tiny
    x = golden("forward_sfd_tiny")["x"][:2]
    y = torch.tensor([3, 4])
    guide = CountingGuide(model)
    early_tex, early_sem = torch.tensor([0.0, 0.1]), torch.tensor([0.3, 0.4])
    with torch.no_grad():
        cond = model(x, early_tex, early_sem, y, repa=False).velocity
        for reference in (guide, None):
            out = guided_velocity(model, x, early_tex, early_sem, y, Guidance(2.0, 2.0, reference, 0.5), 16)
            assert torch.equal(out, cond)
        assert guide.calls == 0
        # texture-only interval: the semantic group is always guided, so the guide is needed
        guided_velocity(model, x, early_tex, early_sem, y, Guidance(2.0, 2.0, guide, 0.5, interval_mode="tex"), 16)
        assert guide.calls == 1
        guided_velocity(model, x, torch.tensor([0.6, 0.7]), torch.tensor([0.9, 1.0]), y,
                        Guidance(2.0, 2.0, guide, 0.5), 16)
    assert guide.calls == 2
