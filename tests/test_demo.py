"""The CI-sized demo: every stage of the Fashion-MNIST pipeline on generated IDX files, then a resumed rerun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sfd.experiments.demo import run_demo
from sfd.experiments.fashion import FashionBackend, FashionSettings, base_model
from sfd.experiments.fashion_mnist import load_fashion_mnist, to_model_images

ROOT = Path(__file__).parent.parent


def test_reader_and_image_conversion(fake_fashion):
    images, labels = load_fashion_mnist("train", fake_fashion)
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels[:3].tolist() == [0, 1, 2]
    tensor = to_model_images(images[:2])
    assert tensor.shape == (2, 3, 32, 32) and tensor.min() >= -1 and tensor.max() <= 1
    assert (tensor[:, :, :2] == -1).all()  # black padding


def test_quick_pipeline_runs_every_stage_and_resumes(fake_fashion, tmp_path):
    settings = FashionSettings.quick(str(tmp_path / "demo"), data_root=str(fake_fashion))
    report = Path(run_demo(FashionBackend(settings, log=lambda message: None)))
    run_dir = tmp_path / "demo"
    stages = {p.stem for p in (run_dir / "stages").glob("*.json")}
    assert {"texture_vae", "semantic_encoder_ssl", "semantic_encoder_supervised", "encoder_probes", "fid_classifier",
            "semvae_ssl", "latents_ssl", "train_ssl_lightningdit", "train_ssl_lightningdit_repa",
            "train_ssl_dt0.3_w2_semvae", "eval_ssl_dt0.3_w2_semvae_0000010_euler-6",
            "eval_ssl_lightningdit_0000020_euler-6_uncond"} <= stages
    text = report.read_text()
    assert text.startswith("# Table 1 at toy scale: LightningDiT, + REPA, + SFD")
    assert "**self-supervised** DINOv2 stand-in" in text
    for row in ("| LightningDiT | 20 | euler-6 | 5 | conditional |", "| LightningDiT + REPA | 20 | euler-6 | 5 | "
                "unconditional |", "| SemVAE semantics, Δt 0.3 | 20 | euler-6 | 5 | conditional |"):
        assert row in text
    assert "After 20 steps (euler-6, conditional), SFD's FID" in text
    assert "| self-supervised (contrastive, no labels) |" in text and "| untrained (same architecture" in text
    probes = json.loads((run_dir / "stages" / "encoder_probes.json").read_text())
    assert set(probes) >= {"ssl", "supervised", "untrained"} and 0 <= probes["ssl"]["knn"] <= 1
    for figure in ("samples_lightningdit.png", "samples_lightningdit_repa.png", "samples_dt0.3_w2_semvae.png",
                   "loss_curves.png", "fid_vs_step.png"):
        assert (run_dir / "report" / figure).stat().st_size > 0
    shards = sorted((run_dir / "latents_ssl" / "train").glob("latents_shard*.safetensors"))
    assert shards and (run_dir / "latents_ssl" / "train" / "latents_stats.pt").exists()
    evaluation = json.loads((run_dir / "stages" / "eval_ssl_dt0.3_w2_semvae_0000020_euler-6.json").read_text())
    assert evaluation["fid"] > 0 and 0 <= evaluation["class_accuracy"] <= 1 and evaluation["nfe"] == 5
    assert "semantic_fd" in evaluation
    # the oracle bound: SFD's texture from held-out images' true semantics, with the texture-to-source distances
    oracle = json.loads((run_dir / "stages" / "eval_ssl_dt0.3_w2_semvae_0000020_euler-6_oracle.json").read_text())
    assert oracle["samples"] == 40 and 0 < oracle["source_ratio"] and "semantic_fd" not in oracle
    assert "Oracle bound after 20 steps (euler-6): with the true semantic latents of held-out images" in text
    assert "Expect other machines to differ" in text
    assert "eval_ssl_lightningdit_0000020_euler-6_oracle" not in stages  # texture-only models have no oracle
    check_generation_paths(FashionBackend(settings, log=lambda message: None))

    messages = []
    run_demo(FashionBackend(settings, log=messages.append))  # a rerun only skips
    stage_messages = [message for message in messages if message.startswith("[")]
    assert all("skipped" in message for message in stage_messages) and len(stage_messages) == len(stages)

    # the supervised stand-in stays selectable: it shares the networks above and gets its own semantics and runs
    vae_written = (run_dir / "stages" / "texture_vae.json").stat().st_mtime_ns
    supervised = FashionSettings.quick(str(run_dir), data_root=str(fake_fashion), encoder="supervised")
    text = Path(run_demo(FashionBackend(supervised, log=lambda message: None))).read_text()
    assert "**supervised** DINOv2 stand-in" in text
    times = next(line for line in text.splitlines() if line.startswith("* Stage times"))
    assert "train_supervised_dt0.3_w2_semvae" in times and "train_ssl_" not in times  # its own models only
    assert "eval_supervised_lightningdit_0000020_euler-6 " in times and "texture_vae" in times
    assert {"semvae_supervised", "latents_supervised", "train_supervised_dt0.3_w2_semvae"} <= {
        p.stem for p in (run_dir / "stages").glob("*.json")}
    assert (run_dir / "stages" / "texture_vae.json").stat().st_mtime_ns == vae_written  # not retrained


    # a demo model works with the release's launchers: its resolved config names the exported texture VAE
    run = run_dir / "runs" / "ssl_dt0.3_w2_semvae"
    grid = tmp_path / "grid.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "run_fast_inference.sh", str(run / "config.yaml"), "--ckpt",
                             str(run / "checkpoints" / "0000020.pt"), "--labels", "0", "1", "2", "--out", str(grid)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(grid).size == (3 * 32, 32)


def check_generation_paths(backend):
    """Without the oracle, the evaluation's generation is the plain sampler's, bit for bit; with it, the samples
    take the held-out images' classes."""
    import torch

    from sfd.build import build_model
    from sfd.checkpoint import load_weights
    from sfd.experiments.sweep import Scoring, Variant
    from sfd.generate import ImageSampler, LabelPlan

    backend.prepare([])
    variant = Variant.of(base_model(), "semvae")
    latents, labels, nfe = backend.generate(variant, 20, Scoring("euler", 6), 12)
    config = backend.diffusion_config(variant, scoring=Scoring("euler", 6))
    model = build_model(config)
    load_weights(model, backend.checkpoint_path(variant, 20), prefer="ema")
    plain = ImageSampler(model.eval(), config, None, seed=backend.settings.seed + 1000)
    expected = LabelPlan(12, 10, balanced=True).labels(range(12))
    with torch.no_grad():
        assert torch.equal(latents, plain.latents(range(12), expected).float()) and torch.equal(labels, expected)
    _, held_labels = backend.generate(variant, 20, Scoring("euler", 6, oracle=True), 12)[:2]
    assert torch.equal(held_labels, backend.held_out_latents()[1][:12])
    with pytest.raises(ValueError, match="has no SemVAE semantic channels"):
        backend.generate(Variant.of(base_model(), "none"), 20, Scoring("euler", 6, oracle=True), 12)


def test_settings_reject_an_unknown_encoder(tmp_path):
    with pytest.raises(ValueError, match="encoder: 'clip' is not one of ssl, supervised"):
        FashionSettings(run_dir=str(tmp_path), encoder="clip")
