"""Every Table-1 baseline and every variant config trains a few steps and samples, shrunk to a tiny size."""

from pathlib import Path

import pytest
import torch

from sfd.config import load_config
from sfd.data.synthetic import write_synthetic_shards
from sfd.samplers import SamplerOptions, sample
from sfd.train import Trainer

ROOT = Path(__file__).parent.parent
CONFIGS = sorted([*(ROOT / "configs" / "baselines").glob("*.yaml"), *(ROOT / "configs" / "variants").glob("*.yaml")])
TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.repa_projector_dim=32",
        "data.image_size=64", "data.num_classes=4", "train.global_batch_size=4", "train.max_steps=2",
        "train.ckpt_every=2", "train.log_every=1", "train.tensorboard=false", "data.num_workers=0",
        "sample.sampling_method=euler", "sample.num_sampling_steps=3", "train.precision=fp32"]


def test_table1_rows_are_all_there():
    names = {path.stem for path in CONFIGS}
    for size in ("b", "l", "xl"):
        assert {f"lightningdit_{size}", f"lightningdit_repa_{size}", f"sfd_{size}"} <= names
    assert {"sfd_xl_vavae", "sfd_xl_redi_pca8"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_and_samples_at_tiny_size(path, tmp_path):
    full = load_config(path)
    model = full.model
    data = write_synthetic_shards(tmp_path / "data", num_items=8, num_classes=4,
                                  texture_chans=model.in_chans - model.semantic_chans,
                                  semantic_chans=max(model.semantic_chans, 1), grid=4, dino_dim=768, shard_size=8)
    config = load_config(path, [*TINY, f"data.data_path={data}", f"train.output_dir={tmp_path / 'runs'}"])
    assert config.model.use_repa == full.model.use_repa and config.model.semfirst_delta_t == full.model.semfirst_delta_t
    trainer = Trainer(config)
    last = trainer.run(progress=False)
    assert trainer.step == 2 and torch.isfinite(torch.tensor(last["loss"]))
    z = torch.randn(2, config.model.in_chans, 4, 4, generator=torch.Generator().manual_seed(0))
    result = sample(trainer.ema.eval(), z, torch.tensor([0, 3]), SamplerOptions.from_config(config))
    assert result.x.shape == z.shape and torch.isfinite(result.x).all() and result.nfe == 2


TINY_COUNTERPARTS = {"train_baseline_cpu": "lightningdit_b", "train_repa_cpu": "lightningdit_repa_b",
                     "train_sfd_cpu": "sfd_b"}


@pytest.mark.parametrize("tiny, full", TINY_COUNTERPARTS.items())
def test_tiny_counterparts_switch_like_their_rows(tiny, full, tmp_path):
    """The tiny CPU configs differ from their Table-1 rows in size only: same semantic channels on/off, Δt, REPA."""
    small, large = load_config(ROOT / "configs" / "tiny" / f"{tiny}.yaml"), load_config(
        ROOT / "configs" / "baselines" / f"{full}.yaml")
    for key in ("in_chans", "semantic_chans", "semfirst_delta_t", "use_repa", "repa_feat_depth", "semantic_weight"):
        assert getattr(small.model, key) == getattr(large.model, key), key
    data = write_synthetic_shards(tmp_path / "data", num_items=8, num_classes=4,
                                  texture_chans=32, semantic_chans=16, grid=4, dino_dim=768, shard_size=8)
    config = load_config(ROOT / "configs" / "tiny" / f"{tiny}.yaml", [
        f"data.data_path={data}", f"train.output_dir={tmp_path / 'runs'}", "train.max_steps=2",
        "train.global_batch_size=4", "train.log_every=1", "data.image_size=64"])
    assert torch.isfinite(torch.tensor(Trainer(config).run(progress=False)["loss"]))
