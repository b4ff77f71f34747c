"""Loading released checkpoint layouts strictly and explaining mismatches; atomic export."""

import fractions

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

import sfd
from sfd.checkpoint import CheckpointError, atomic_save, export_weights, load_weights
from tests.conftest import DATA


@pytest.fixture
def tiny():
    return sfd.build_model(sfd.load_config(DATA / "sfd_tiny.yaml"))


@pytest.fixture
def released_state():
    return torch.load(DATA / "sfd_tiny.pt", weights_only=True)["ema"]


def same_weights(model, state):
    return all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


@pytest.mark.parametrize("layout", ["ema", "model", "bare", "module_prefix", "safetensors", "with_config"])
def test_every_official_layout_loads(tmp_path, tiny, released_state, layout):
    path = tmp_path / "ckpt.pt"
    if layout == "ema":
        torch.save({"ema": released_state, "model": {k: v * 0 for k, v in released_state.items()}}, path)
    elif layout == "model":
        torch.save({"model": released_state, "opt": {"state": {}, "param_groups": []}}, path)
    elif layout == "bare":
        torch.save(released_state, path)
    elif layout == "module_prefix":
        torch.save({"ema": {f"module.{k}": v for k, v in released_state.items()}}, path)
    elif layout == "safetensors":
        path = tmp_path / "ckpt.safetensors"
        save_file(released_state, str(path))
    else:  # train.py pickles the OmegaConf config object next to the weights
        config = OmegaConf.create({"model": {"model_type": "LightningDiT-XL/1", "in_chans": 48}, "lr": 1e-4})
        torch.save({"ema": released_state, "model": released_state, "opt": {}, "config": config}, path)
    load_weights(tiny, path)
    assert same_weights(tiny, released_state)


def test_mismatches_are_named_by_key(tmp_path, tiny, released_state):
    wrong = dict(released_state)
    del wrong["blocks.0.attn.qkv.bias"]
    wrong["blocks.9.extra"] = torch.zeros(1)
    wrong["x_embedder.proj.weight"] = torch.zeros(64, 32, 1, 1)
    torch.save({"ema": wrong}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError) as error:
        load_weights(tiny, tmp_path / "wrong.pt")
    message = str(error.value)
    assert "blocks.0.attn.qkv.bias" in message and "blocks.9.extra" in message
    assert "x_embedder.proj.weight: checkpoint (64, 32, 1, 1), model (64, 48, 1, 1)" in message
    assert "\n" not in message


def test_baseline_checkpoint_does_not_fit_sfd_model(tiny):
    with pytest.raises(CheckpointError, match="t_embedder.mlp.0.weight"):
        load_weights(tiny, DATA / "baseline_tiny.pt")


def test_unreadable_and_unsafe_files(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tiny, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_weights(tiny, tmp_path / "junk.pt")

    # arbitrary pickled objects are refused (weights_only=True)
    torch.save({"ema": {}, "extra": fractions.Fraction(1, 3)}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_weights(tiny, tmp_path / "unsafe.pt")


def test_export_round_trip_and_atomicity(tmp_path, tiny, released_state):
    tiny.load_state_dict(released_state)
    for name in ("export.pt", "export.safetensors"):
        export_weights(tiny, tmp_path / name)
        fresh = sfd.build_model(sfd.load_config(DATA / "sfd_tiny.yaml"))
        load_weights(fresh, tmp_path / name)
        assert same_weights(fresh, released_state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.pt", "export.safetensors"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    atomic_save({"ok": 1}, tmp_path / "keep.pt")
    with pytest.raises(RuntimeError):
        atomic_save({"bad": Unpicklable()}, tmp_path / "keep.pt")
    assert torch.load(tmp_path / "keep.pt") == {"ok": 1}  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.pt", "export.safetensors", "keep.pt"]


def test_load_model_resolves_paths_beside_the_config():
    model, config = sfd.load_model(DATA / "sfd_tiny.yaml")
    assert not model.training and config.ckpt_path == "sfd_tiny.pt"
    guided = sfd.load_config(DATA / "sfd_tiny.yaml", ["sample.autoguidance=true"])
    guide = sfd.load_guide(guided, DATA / "sfd_tiny.yaml")
    assert isinstance(guide, sfd.LightningDiT)
    assert sfd.load_guide(config, DATA / "sfd_tiny.yaml") is None
