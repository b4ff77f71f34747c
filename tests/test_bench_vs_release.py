"""tools/bench_vs_release.py against a local stand-in of the release (no download, no timing thresholds).

The stand-in is a folder with the release's module names and calling conventions (``models/lightningdit.py`` with
``LightningDiT_models``; ``transport`` with ``create_transport`` and ``Sampler``) whose network wraps this project's
LightningDiT, so the script's loading, weight transfer, agreement checks, table and JSON are exercised end to end."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import DATA, load_script

STAND_IN_MODELS = '''
import torch
from sfd.config import load_config, model_args
from sfd.lightningdit import LightningDiT

OFFSET = 0.0  # a non-zero value makes the stand-in disagree with sfd


class LabelDropout:
    dropout_prob = 0.1


class ReleaseLike(torch.nn.Module):
    """The release's calling convention: forward(x, t, y), t a (t_tex, t_sem) tuple, REPA output only in training."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.net = LightningDiT(model_args(load_config(CONFIG)))
        self.y_embedder_holder = LabelDropout()

    @property
    def y_embedder(self):
        return self.y_embedder_holder

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict=True):
        return self.net.load_state_dict(state, strict=strict)

    def named_parameters(self, *args, **kwargs):
        return self.net.named_parameters(*args, **kwargs)

    def forward(self, x, t, y):
        t_tex, t_sem = t
        out = self.net(x, t_tex, t_sem, y, repa=self.training)
        velocity = out.velocity + OFFSET
        return (velocity, out.repa) if self.training else velocity


LightningDiT_models = {"LightningDiT-Tiny/1": ReleaseLike}
'''

STAND_IN_TRANSPORT = '''
import torch
from sfd.config import load_config
from sfd.loss import FlowMatchingLoss
from sfd.samplers import SamplerOptions, sample
from sfd.schedule import TimeSplit

CONFIG = None


class Transport:
    def __init__(self, *args, **kwargs):
        self.kwargs = kwargs
        self.loss = FlowMatchingLoss.from_config(load_config(CONFIG))

    def training_losses(self, model, x1, model_kwargs, use_repa=False, feature_dino=None):
        terms = self.loss(model.net, x1, model_kwargs["y"], feature_dino)
        return {"loss": terms.mse, "cos_loss": terms.cos, "repa_loss": terms.repa}


def create_transport(*args, **kwargs):
    return Transport(*args, **kwargs)


class Sampler:
    def __init__(self, transport):
        self.transport = transport

    def sample_ode_semantic_first(self, *, sampling_method, num_steps, semfirst_delta_t, semantic_chans, **kwargs):
        options = SamplerOptions(split=TimeSplit(semfirst_delta_t, semantic_chans), sampling_method=sampling_method,
                                 num_sampling_steps=num_steps)

        def solve(z, model_fn, y):
            net = model_fn.__self__.net
            return [z, sample(net, z, y, options).x]

        return solve
'''


@pytest.fixture(scope="module")
def bench():
    yield load_script("tools/bench_vs_release.py")
    for name in [name for name in sys.modules if name.split(".")[0] in ("models", "transport")]:
        del sys.modules[name]


def make_release(folder: Path, offset: float = 0.0) -> Path:
    config = DATA / "sfd_tiny.yaml"
    (folder / "models").mkdir(parents=True)
    (folder / "transport").mkdir()
    (folder / "models" / "__init__.py").write_text("")
    (folder / "models" / "lightningdit.py").write_text(
        f"CONFIG = {str(config)!r}\n" + textwrap.dedent(STAND_IN_MODELS).replace("OFFSET = 0.0", f"OFFSET = {offset}"))
    (folder / "transport" / "__init__.py").write_text(
        textwrap.dedent(STAND_IN_TRANSPORT).replace("CONFIG = None", f"CONFIG = {str(config)!r}"))
    return folder


def test_side_by_side_table_and_json(bench, tmp_path, capsys):
    release = make_release(tmp_path / "release")
    out = tmp_path / "vs.json"
    status = bench.main(["--release", str(release), "--config", str(DATA / "sfd_tiny.yaml"), "--batch", "2",
                         "--repeats", "2", "--warmup", "0", "--sample-steps", "3", "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    assert [(row["path"], row["mode"]) for row in result["rows"]] == [("forward", "eager"), ("train", "eager"),
                                                                       ("sample", "eager")]
    for row in result["rows"]:
        assert row["release_ms"] > 0 and row["sfd_ms"] > 0 and row["ratio"] > 0
        assert len(row["times_ms"]["sfd"]) == len(row["times_ms"]["release"]) == 2
        assert set(row["first_call_ms"]) == {"release", "sfd"}
        assert all(value <= 1e-5 for value in row["errors"].values())  # the stand-in is sfd itself
    assert set(result["rows"][1]["errors"]) == {"velocity", "repa", "gradients"}
    printed = capsys.readouterr().out
    assert "| path | mode | release ms | sfd ms |" in printed and "| forward | eager |" in printed


def test_disagreeing_outputs_stop_before_timing(bench, tmp_path, capsys):
    release = make_release(tmp_path / "release", offset=0.5)
    status = bench.main(["--release", str(release), "--config", str(DATA / "sfd_tiny.yaml"), "--batch", "2",
                         "--repeats", "1", "--paths", "forward"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench_vs_release: forward: velocity differs from the release by")
    assert len(error.splitlines()) == 1


def test_a_folder_that_is_not_the_release_is_named(bench, tmp_path, capsys):
    status = bench.main(["--release", str(tmp_path), "--config", str(DATA / "sfd_tiny.yaml")])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"bench_vs_release: {tmp_path}: not a checkout of the SFD release (missing "
                     "models/lightningdit.py, transport/__init__.py)")
