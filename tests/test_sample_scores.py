"""Scores of samples without writing them (sfd/evaluation/sample_scores.py), and evaluation during training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sfd.config import load_config
from sfd.data.synthetic import write_synthetic_shards
from sfd.evaluation.adm import evaluate
from sfd.evaluation.inception import InceptionFeatures
from sfd.evaluation.metrics import feature_statistics
from sfd.evaluation.npz import save_sample_npz
from sfd.evaluation.sample_scores import SampleScorer, ScoringError, reference_statistics
from sfd.generate import ImageSampler, LabelPlan, write_fid_set
from sfd.train import Trainer

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"


class TinyFeatures(nn.Module):
    """A stand-in for the FID Inception: uint8 images [N, 3, H, W] → 5 smooth features (no weights file)."""

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        x = images.float() / 255.0
        means = x.mean(dim=(2, 3))
        pool = torch.cat([means, x.std(dim=(1, 2, 3))[:, None], (means ** 2).sum(1, keepdim=True)], dim=1)
        return InceptionFeatures(pool=pool, spatial=pool[:, :2], logits=torch.cat([pool, pool], 1))


def three_channel_decode(latents: torch.Tensor) -> np.ndarray:
    """A 'decoder' that turns three latent channels into a small RGB image (uint8 NHWC; no VAE needed)."""
    return ((latents[:, :3].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    write_synthetic_shards(root / "sfd", num_items=32, num_classes=4, dino_dim=768, shard_size=16)
    images = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    save_sample_npz(root / "reference.npz", images)
    return root


def tiny_config(data, run_dir, *overrides):
    return load_config(DATA / "sfd_tiny.yaml", [
        f"data.data_path={data / 'sfd'}", f"data.fid_reference_file={data / 'reference.npz'}", "data.num_classes=4",
        f"train.output_dir={run_dir}", "train.exp_name=run", "train.global_batch_size=8", "train.log_every=1",
        "train.ckpt_every=3", "train.max_steps=4", "optimizer.lr=1e-3", "train.ema_decay=0.9",
        "train.tensorboard=false", "sample.sampling_method=euler", "sample.num_sampling_steps=2",
        "sample.per_proc_batch_size=3", "sample.cfg_scale=1.0", *overrides])


def scorer(config, data, samples=10):
    reference = reference_statistics(TinyFeatures(), data / "reference.npz", torch.device("cpu"), None)
    return SampleScorer(config, three_channel_decode, TinyFeatures(), reference, samples, seed=config.train.global_seed)


def test_the_score_equals_scripts_evaluate_on_the_same_samples(data, tmp_path):
    """The samples are those of the generation road (write_fid_set) and their FID is the evaluator's, exactly."""
    config = tiny_config(data, tmp_path)
    trainer = Trainer(config)
    model = trainer.ema
    scores = scorer(config, data)(model)

    sampler = ImageSampler(model, config, three_channel_decode, seed=config.train.global_seed)
    plan = LabelPlan(10, 4, balanced=True, seed=config.train.global_seed)
    npz = write_fid_set(sampler, plan, tmp_path / "samples", batch_size=3)
    results, _ = evaluate(data / "reference.npz", npz, TinyFeatures(), log=lambda message: None)
    assert scores["fid"] == results.fid
    assert scores["eval_samples"] == 10 and scores["eval_nfe"] > 0


def test_the_reference_statistics_are_the_stored_ones_when_the_file_has_them(data, tmp_path):
    pool = np.random.default_rng(1).normal(size=(20, 5))
    stored = feature_statistics(pool)
    np.savez(tmp_path / "stats.npz", mu=stored.mu, sigma=stored.sigma, mu_s=np.zeros(2), sigma_s=np.eye(2))
    read = reference_statistics(TinyFeatures(), tmp_path / "stats.npz", torch.device("cpu"), None)
    np.testing.assert_array_equal(read.mu, stored.mu)
    np.testing.assert_array_equal(read.sigma, stored.sigma)


def test_evaluation_during_training_leaves_the_weights_unchanged_and_logs_the_fid(data, tmp_path):
    plain = Trainer(tiny_config(data, tmp_path / "plain"))
    plain.run(progress=False)
    evaluated = Trainer(tiny_config(data, tmp_path / "evaluated", "train.eval_every=2", "train.eval_samples=6"))
    evaluated.scorer = scorer(evaluated.config, data, samples=6)
    evaluated.run(progress=False)

    for part in ("model", "ema"):
        other = getattr(evaluated, part).state_dict()
        for key, value in getattr(plain, part).state_dict().items():
            assert torch.equal(value, other[key]), (part, key)
    records = [json.loads(line) for line in (tmp_path / "evaluated" / "run" / "log.jsonl").read_text().splitlines()]
    scored = [record for record in records if "fid" in record]
    assert [record["step"] for record in scored] == [2, 4]
    assert scored[-1]["fid"] == scorer(evaluated.config, data, samples=6)(evaluated.ema)["fid"]

    evaluated.scorer = None  # a run resumed at its last step trains nothing and builds no scorer
    evaluated.run(progress=False)
    assert evaluated.scorer is None


def test_evaluation_settings_fail_clearly(data, tmp_path):
    with pytest.raises(Exception, match="train.eval_samples"):
        tiny_config(data, tmp_path, "train.eval_samples=1")
    with pytest.raises(Exception, match="train.eval_every"):
        tiny_config(data, tmp_path, "train.eval_every=-1")
    config = tiny_config(data, tmp_path, "train.eval_every=2", "data.fid_reference_file=''")
    with pytest.raises(ScoringError, match="data.fid_reference_file"):
        SampleScorer.from_config(config, network=TinyFeatures())
    config = tiny_config(data, tmp_path, "train.eval_every=2", f"data.fid_reference_file={tmp_path / 'none.npz'}")
    with pytest.raises(ScoringError, match="does not exist"):
        SampleScorer.from_config(config, network=TinyFeatures())


def test_from_config_decodes_with_the_texture_vae(data, tmp_path):
    """The wiring the trainer uses: the config's texture VAE decodes the samples (the tiny test VAE, 16× upsampling)."""
    config = tiny_config(data, tmp_path, f"vae.config={DATA / 'vae_tiny.yaml'}", "train.eval_samples=4")
    built = SampleScorer.from_config(config, network=TinyFeatures(), device=torch.device("cpu"))
    model = Trainer(config).ema
    images = built.decode(ImageSampler(model, config, built.decode).latents(range(2), torch.tensor([0, 1])))
    assert images.dtype == np.uint8 and images.shape == (2, 256, 256, 3)
    assert np.isfinite(built(model)["fid"])


def test_reconstruct_ema_scores_each_rebuilt_width(data, tmp_path, capsys):
    """tools/reconstruct_ema.py --score: every rebuilt average scored by the same road; a tracked width's score is
    its snapshot's."""
    import importlib.util

    from sfd.checkpoint import load_weights

    spec = importlib.util.spec_from_file_location("reconstruct_ema", ROOT / "tools" / "reconstruct_ema.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = tiny_config(data, tmp_path, "train.power_ema_sigma_rels=[0.1,0.2]", "train.power_ema_every=2")
    trainer = Trainer(config)
    trainer.run(progress=False)
    run = tmp_path / "run"
    code = tool.main([str(run), "--sigma-rel", "0.1", "0.15", "--score", "6"],
                     scorer_of=lambda config: scorer(config, data, samples=6))
    assert code == 0
    rows = json.loads((run / "power_ema_reconstructed" / "scores.json").read_text())
    assert sorted(row["sigma_rel"] for row in rows) == [0.1, 0.15] and rows[0]["fid"] <= rows[1]["fid"]
    assert "| σ_rel 0.1" in capsys.readouterr().out
    snapshot = load_weights(Trainer(config).ema, run / "power_ema" / "0000004_sigma0.1.pt")
    tracked = next(row for row in rows if row["sigma_rel"] == 0.1)
    assert tracked["fid"] == pytest.approx(scorer(config, data, samples=6)(snapshot)["fid"], rel=1e-5)


def test_fd_dinov2_during_training_equals_the_evaluators(data, tmp_path):
    """With a DINOv2 network the scorer also gives FD_DINOv2, equal to sfd.evaluation.adm.fd_dinov2 on the same
    samples (a tiny random ViT of the ViT-L/14 architecture stands in for the weights)."""
    from sfd.evaluation.adm import cached_reference_outputs, fd_dinov2
    from sfd.evaluation.dinov2 import DINOv2Features
    from sfd.tokenizers.dinov2 import tiny_dinov2

    dinov2 = DINOv2Features(tiny_dinov2(embed_dim=32, depth=1, heads=2, seed=3, name="dinov2_vitl14")).eval()
    config = tiny_config(data, tmp_path)
    model = Trainer(config).ema
    outputs, _, _ = cached_reference_outputs(dinov2, data / "reference.npz", "cpu", 64, None, None)
    plain = scorer(config, data, samples=6)
    reference = feature_statistics(outputs["features"].astype(np.float64))
    with_dinov2 = SampleScorer(config, plain.decode, plain.network, plain.reference, 6, seed=plain.seed,
                               dinov2=dinov2, dinov2_reference=reference)
    scores = with_dinov2(model)
    npz = write_fid_set(ImageSampler(model, config, three_channel_decode, seed=plain.seed),
                        LabelPlan(6, 4, balanced=True, seed=plain.seed), tmp_path / "samples", batch_size=3)
    expected, _ = fd_dinov2(data / "reference.npz", npz, dinov2, log=lambda message: None)
    assert scores["fd_dinov2"] == pytest.approx(expected, rel=1e-6)
    assert scores["fid"] == plain(model)["fid"]
    with pytest.raises(ScoringError, match="give both"):
        SampleScorer(config, plain.decode, plain.network, plain.reference, 6, dinov2=dinov2)
