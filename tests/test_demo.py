"""The CI-sized demo: every stage of the Fashion-MNIST pipeline on generated IDX files, then a resumed rerun."""

import json
from pathlib import Path

import numpy as np

from sfd.demo.pipeline import DemoPipeline, DemoSettings, load_fashion_mnist, to_model_images


def test_reader_and_image_conversion(fake_fashion):
    images, labels = load_fashion_mnist("train", fake_fashion)
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels[:3].tolist() == [0, 1, 2]
    tensor = to_model_images(images[:2])
    assert tensor.shape == (2, 3, 32, 32) and tensor.min() >= -1 and tensor.max() <= 1
    assert (tensor[:, :, :2] == -1).all()  # black padding


def test_quick_pipeline_runs_every_stage_and_resumes(fake_fashion, tmp_path):
    settings = DemoSettings.quick(str(tmp_path / "demo"), data_root=str(fake_fashion))
    report = Path(DemoPipeline(settings, log=lambda message: None).run())
    stages = {p.stem for p in (tmp_path / "demo" / "stages").glob("*.json")}
    assert {"texture_vae", "semantic_encoder", "fid_classifier", "semvae", "latents", "train_dt0.3_w2_semvae",
            "train_dt0_w2_semvae", "eval_dt0.3_w2_semvae_0000010", "eval_dt0_w2_semvae_0000020"} <= stages
    text = report.read_text()
    assert "| dt0.3_w2_semvae | 0.3 | 20 |" in text and "| dt0_w2_semvae | 0.0 | 20 |" in text
    assert "SFD had the lower FID" in text
    for figure in ("samples_dt0.3_w2_semvae.png", "samples_dt0_w2_semvae.png", "loss_curves.png",
                   "fid_vs_step.png"):
        assert (tmp_path / "demo" / "report" / figure).stat().st_size > 0
    shards = sorted((tmp_path / "demo" / "latents" / "train").glob("latents_shard*.safetensors"))
    assert shards and (tmp_path / "demo" / "latents" / "train" / "latents_stats.pt").exists()
    evaluation = json.loads((tmp_path / "demo" / "stages" / "eval_dt0.3_w2_semvae_0000020.json").read_text())
    assert evaluation["fid"] > 0 and 0 <= evaluation["class_accuracy"] <= 1

    messages = []
    DemoPipeline(settings, log=messages.append).run()  # a rerun only skips
    stage_messages = [message for message in messages if message.startswith("[")]
    assert all("skipped" in message for message in stage_messages) and len(stage_messages) == len(stages)
