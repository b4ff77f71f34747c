"""End to end: a generated image folder → latent shards (2 processes, resumable) → the latent dataset."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sfd.data.images import center_crop_arr, list_image_folder, read_file_list
from sfd.data.latents import LatentShardDataset, collate_latents
from sfd.data.shards import LATENT_KEYS, ShardError, compute_stats
from sfd.extract import shards_of_rank
from sfd.tokenizers.semvae import SemanticVAE, SemVAEArgs
from tests.conftest import DATA

ROOT = Path(__file__).parent.parent
NUM_IMAGES = 6


def open_latents(path, **changes):
    """The dataset with every setting explicit (LatentShardDataset has no defaults): normalised, flipped, REPA
    features on, as the SFD configs train."""
    settings = dict(latent_norm=True, latent_sv_norm=True, latent_multiplier=1.0, semantic=True, with_dino=True,
                    flip_prob=0.5, seed=0)
    return LatentShardDataset(path, **{**settings, **changes})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Six images in two classes (odd sizes, one grayscale) and a tiny random SemVAE over 32-d tiny-DINO tokens."""
    root = tmp_path_factory.mktemp("extract")
    rng = np.random.default_rng(0)
    for index in range(NUM_IMAGES):
        folder = root / "images" / ("cat" if index % 2 else "ant")
        folder.mkdir(parents=True, exist_ok=True)
        size = (260 + 7 * index, 300 - 5 * index)
        mode = "L" if index == 3 else "RGB"
        shape = size[::-1] if mode == "L" else (*size[::-1], 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / f"img{index}.png")
    torch.manual_seed(0)
    semvae = SemanticVAE(SemVAEArgs(input_dim=32, bottleneck_dim=16, hidden_dim=32, transformer_heads=2,
                                    transformer_blocks=1))
    torch.save({"model_state_dict": semvae.state_dict(), "input_dim": 32, "bottleneck_dim": 16,
                "config": "model:\n  params:\n    transformer_heads: 2\n"}, root / "semvae.pt")
    return root


def run_extraction(workspace, output, processes, extra=()):
    command = [sys.executable, "scripts/extract_latents.py", "--images", str(workspace / "images"),
               "--output", str(output), "--texture-vae", str(DATA / "vae_tiny.yaml"),
               "--semvae", str(workspace / "semvae.pt"), "--dino-model", "tiny-random",
               "--batch-size", "2", "--shard-size", "2", "--stats-samples", "4", *extra]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_all(output):
    return {path.name: load_file(str(path)) for path in sorted(Path(output).glob("latents_shard*.safetensors"))}


def test_shard_assignment_covers_every_image_once():
    for world in (1, 2, 3, 5):
        covered = sorted(i for rank in range(world) for shard in shards_of_rank(11, 3, rank, world) for i in shard)
        assert covered == list(range(11))


def test_two_processes_resume_and_match_one_process(workspace, tmp_path):
    single = tmp_path / "single"
    run_extraction(workspace, single, processes=1)
    shards = read_all(single)
    assert len(shards) == 3
    first = shards["latents_shard000000.safetensors"]
    assert set(first) == set(LATENT_KEYS)
    assert first["latents"].shape == (2, 32, 16, 16) and first["latents"].dtype == torch.float32
    assert first["latents_sv"].shape == (2, 16, 16, 16) and first["feats_dino"].dtype == torch.float16
    assert first["feats_dino"].shape == (2, 32, 16, 16) and first["labels"].dtype == torch.int64
    assert not torch.equal(first["latents"], first["latents_flip"])
    labels = torch.cat([shard["labels"] for shard in shards.values()])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # ImageFolder order: sorted classes, then files

    # An interrupted run (one shard missing, a stale temporary file left behind) resumed with 2 processes.
    parallel = tmp_path / "parallel"
    parallel.mkdir()
    for name in ("latents_shard000000.safetensors", "latents_shard000002.safetensors"):
        (parallel / name).write_bytes((single / name).read_bytes())
    (parallel / ".latents_shard000001.safetensors.999.tmp").write_bytes(b"half")
    run_extraction(workspace, parallel, processes=2, extra=["--no-stats"])
    resumed = read_all(parallel)
    assert resumed.keys() == shards.keys()
    for name, tensors in shards.items():  # the same latents whatever the process count
        for key in LATENT_KEYS:
            assert torch.equal(resumed[name][key], tensors[key]), (name, key)

    stats = torch.load(single / "latents_stats.pt", weights_only=True)
    assert stats["mean"].shape == (1, 32, 1, 1) and stats["std"].shape == (1, 32, 1, 1)
    assert torch.load(single / "latents_sv_stats.pt", weights_only=True)["std"].shape == (1, 16, 1, 1)


def test_stats_are_seeded_and_unbiased(workspace, tmp_path):
    output = tmp_path / "out"
    run_extraction(workspace, output, processes=1, extra=["--no-stats"])
    compute_stats(output, num_samples=100)  # more than available: every image
    latents = torch.cat([shard["latents"] for shard in read_all(output).values()]).double()
    stats = torch.load(output / "latents_stats.pt", weights_only=True)
    assert torch.allclose(stats["mean"].double(), latents.mean(dim=(0, 2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(stats["std"].double(), latents.std(dim=(0, 2, 3), keepdim=True), atol=1e-6)
    (output / "latents_stats.pt").unlink()
    (output / "latents_sv_stats.pt").unlink()
    first = compute_stats(output, num_samples=3, seed=5)
    mean_a = torch.load(first["latents"], weights_only=True)["mean"]
    for path in first.values():
        path.unlink()
    mean_b = torch.load(compute_stats(output, num_samples=3, seed=5)["latents"], weights_only=True)["mean"]
    assert torch.equal(mean_a, mean_b)

    dataset = open_latents(output)
    assert len(dataset) == NUM_IMAGES
    batch = collate_latents([dataset[i] for i in range(NUM_IMAGES)])
    latents, labels, dino = batch
    assert latents.shape == (NUM_IMAGES, 48, 16, 16) and dino.shape == (NUM_IMAGES, 32, 16, 16)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    # normalised with the stats: the unflipped items reproduce (x - mean) / std exactly
    raw = read_all(output)
    tex_mean, tex_std = stats_of(output, "latents_stats.pt")
    for index in range(NUM_IMAGES):
        shard = raw[f"latents_shard{index // 2:06d}.safetensors"]
        key = "latents_flip" if dataset.flipped(index) else "latents"
        expected = (shard[key][index % 2] - tex_mean[0]) / tex_std[0]
        assert torch.allclose(dataset[index].latent[:32], expected)
    # the flip draw is a function of (seed, epoch, index): another dataset object agrees, another epoch differs
    other = open_latents(output)
    many = range(64)
    assert [dataset.flipped(i) for i in many] == [other.flipped(i) for i in many]
    other.set_epoch(1)
    assert [dataset.flipped(i) for i in many] != [other.flipped(i) for i in many]


def stats_of(folder, name):
    stats = torch.load(Path(folder) / name, weights_only=True)
    return stats["mean"], stats["std"]


def test_bad_shards_are_named(tmp_path, workspace):
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(2, 32, 4, 4), "latents_flip": torch.zeros(2, 32, 4, 4),
               "labels": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "latents_shard000000.safetensors"))
    with pytest.raises(ShardError, match=r"latents_shard000000.safetensors: shard has no 'latents_sv'"):
        open_latents(tmp_path, latent_norm=False, latent_sv_norm=False)
    save_file({"latents": torch.zeros(2, 32, 4, 4), "latents_flip": torch.zeros(3, 32, 4, 4),
               "labels": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "latents_shard000000.safetensors"))
    with pytest.raises(ValueError, match="disagree"):
        open_latents(tmp_path, semantic=False, latent_norm=False)
    save_file({"latents": torch.zeros(2, 32, 4, 4), "latents_flip": torch.zeros(2, 32, 4, 4),
               "labels": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "latents_shard000000.safetensors"))
    with pytest.raises(FileNotFoundError, match="latents_stats.pt"):
        open_latents(tmp_path, semantic=False)


def test_image_sources_and_center_crop(tmp_path, workspace):
    items, classes = list_image_folder(workspace / "images")
    assert classes == ["ant", "cat"] and len(items) == NUM_IMAGES
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{item.path} {item.label}\n" for item in items))
    assert read_file_list(listing) == items
    listing.write_text("image.png not-a-label\n")
    with pytest.raises(ValueError, match=r"list.txt:1"):
        read_file_list(listing)
    big = Image.fromarray(np.zeros((1100, 600, 3), dtype=np.uint8))
    assert center_crop_arr(big, 256).size == (256, 256)


def test_dino_only_features(workspace, tmp_path):
    command = [sys.executable, "scripts/extract_latents.py", "--dino-only", "--images", str(workspace / "images"),
               "--output", str(tmp_path / "feats"), "--dino-model", "tiny-random", "--shard-size", "4"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shards = sorted((tmp_path / "feats").glob("features_shard*.safetensors"))
    assert len(shards) == 2
    first = load_file(str(shards[0]))
    assert first["patch_tokens"].shape == (4, 256, 32) and first["patch_tokens"].dtype == torch.float16
    assert not (tmp_path / "feats" / "latents_stats.pt").exists()


def test_pca_semantics_through_extraction(workspace, tmp_path):
    """ReDi variant: DINOv2 features → fit_pca.py → extraction with --pca gives the same shard keys, with
    latents_sv = the PCA coefficients of feats_dino."""
    feats = tmp_path / "feats"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in ([sys.executable, "scripts/extract_latents.py", "--dino-only", "--images", str(workspace / "images"),
                     "--output", str(feats), "--dino-model", "tiny-random"],
                    [sys.executable, "scripts/fit_pca.py", str(feats), str(tmp_path / "pca.safetensors"),
                     "--components", "8"]):
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    output = tmp_path / "latents"
    command = [sys.executable, "scripts/extract_latents.py", "--images", str(workspace / "images"), "--output",
               str(output), "--texture-vae", str(DATA / "vae_tiny.yaml"), "--pca", str(tmp_path / "pca.safetensors"),
               "--dino-model", "tiny-random", "--shard-size", "6", "--stats-samples", "6"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shard = load_file(str(output / "latents_shard000000.safetensors"))
    assert set(shard) == set(LATENT_KEYS) and shard["latents_sv"].shape == (6, 8, 16, 16)
    from sfd.tokenizers.pca import PCAProjector

    pca = PCAProjector.load(tmp_path / "pca.safetensors")
    tokens = shard["feats_dino"].float().flatten(2).transpose(1, 2)
    assert torch.allclose(shard["latents_sv"], pca.project(tokens), atol=2e-2)  # feats are stored in float16
    assert open_latents(output)[0].latent.shape == (40, 16, 16)
