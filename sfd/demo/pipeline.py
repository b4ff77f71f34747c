"""The whole SFD pipeline at toy scale on Fashion-MNIST, offline on a CPU, with resumable stages.

Stages (each leaves ``stages/<name>.json`` when complete; a rerun skips completed stages and resumes the trainers
from their checkpoints):

1. ``texture_vae``: a tiny LDM KL-VAE (32×32 → 4×8×8) trained on the images — stands in for SD-VAE f16d32.
2. ``semantic_encoder``: a small CNN trained as a classifier whose per-patch features (8×8×32) stand in for DINOv2
   (pretrained DINOv2 weights cannot be downloaded here).
3. ``fid_classifier``: a different CNN trained independently, whose penultimate features define the demo's FID.
4. ``semvae``: the project's Semantic VAE trained on the stand-in features (4 latent channels).
5. ``latents``: latent extraction into the project's shard format, with statistics.
6. ``train_<model>``: SFD (Δt = 0.3) and the synchronous baseline (Δt = 0): same backbone, steps, batch and seed.
7. ``eval_<model>_<step>``: class-balanced samples (three-phase sampler for SFD), decoded, scored by FID against
   the held-out test images, at several training lengths.
8. ``report``: report.md with the FID table, sample grids per class, loss curves and FID-vs-step plots.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sfd.config import SFDConfig, load_config
from sfd.extract import LatentEncoders, compute_stats, write_missing_shards

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEMO_CONFIG = Path(__file__).resolve().parent.parent.parent / "configs" / "demo" / "sfd_fashion.yaml"


@dataclass
class DemoSettings:
    run_dir: str = "outputs/demo"
    data_root: Optional[str] = None  # folder with the four *-ubyte.gz files (default: Debian's, then torchvision)
    seed: int = 0
    train_images: int = 10_000  # training images used (a subset keeps the demo inside its 30-minute budget)
    test_images: int = 2_000  # held-out images: FID reference and validation latents
    vae_steps: int = 300
    vae_batch: int = 16
    encoder_steps: int = 300
    classifier_steps: int = 400
    semvae_steps: int = 600
    diffusion_steps: int = 1200  # per model
    diffusion_batch: int = 32
    eval_every: int = 400  # FID at these training lengths
    samples: int = 500  # class-balanced samples per evaluation
    sampling_method: str = "euler"
    sampling_steps: int = 25
    models: dict = field(default_factory=lambda: {"sfd": 0.3, "baseline": 0.0})  # name -> Δt
    overrides: Sequence[str] = ()  # extra config overrides for the diffusion models

    @classmethod
    def quick(cls, run_dir: str, data_root: Optional[str] = None) -> "DemoSettings":
        """The CI-sized pipeline: every stage, tiny sizes, a few hundred images, seconds per stage."""
        return cls(run_dir=run_dir, data_root=data_root, train_images=256, test_images=128, vae_steps=10, encoder_steps=10,
                   classifier_steps=10, semvae_steps=10, diffusion_steps=20, diffusion_batch=16, eval_every=10,
                   samples=40, sampling_steps=6,
                   overrides=("model.hidden_size=32", "model.depth=2", "model.num_heads=2",
                              "model.repa_projector_dim=32"))


# -- data ------------------------------------------------------------------------------------------------------

def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def load_fashion_mnist(split: str, root: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of ``train`` or ``test`` from Debian's dataset-fashion-mnist,
    else torchvision's download when online; otherwise a message saying how to get it."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = root or DEBIAN_ROOT
    images_file, labels_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_file.exists():
        images_file, labels_file = _torchvision_files(prefix)
    images = _read_idx(images_file, 16).reshape(-1, 28, 28)
    labels = _read_idx(labels_file, 8).astype(np.int64)
    return images, labels


def _torchvision_files(prefix: str) -> tuple[Path, Path]:
    cache = Path("outputs/datasets")
    raw = cache / "FashionMNIST" / "raw"
    if not (raw / f"{prefix}-images-idx3-ubyte.gz").exists():
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(cache), train=True, download=True)
        except Exception as error:  # no network, or torchvision cannot reach its mirrors
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {DEBIAN_ROOT} and not downloadable ({type(error).__name__}); install "
                "it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put the four "
                f"*-ubyte.gz files in {raw}") from None
    return raw / f"{prefix}-images-idx3-ubyte.gz", raw / f"{prefix}-labels-idx1-ubyte.gz"


def to_model_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] → float [N, 3, 32, 32] in [-1, 1] (padded with black, grey replicated to RGB)."""
    tensor = torch.from_numpy(images).float().div(127.5).sub(1.0)
    tensor = F.pad(tensor, (2, 2, 2, 2), value=-1.0)
    return tensor[:, None].expand(-1, 3, -1, -1).contiguous()


def subset(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset (all of it when ``count`` ≥ N)."""
    if count >= len(images):
        return images, labels
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).numpy()
    return images[order[:count]], labels[order[:count]]


# -- stage bookkeeping -----------------------------------------------------------------------------------------

class Stages:
    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.folder = run_dir / "stages"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = log

    def done(self, name: str) -> Optional[dict]:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, name: str, work: Callable[[], dict]) -> dict:
        finished = self.done(name)
        if finished is not None:
            self.log(f"[{name}] done earlier, skipped")
            return finished
        self.log(f"[{name}] running")
        start = time.perf_counter()
        result = {**work(), "seconds": round(time.perf_counter() - start, 1)}
        path = self.folder / f"{name}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
        self.log(f"[{name}] finished in {result['seconds']} s")
        return result


def save_module(module: torch.nn.Module, path: Path, **extra) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": module.state_dict(), **extra}, tmp)
    os.replace(tmp, path)


def load_module(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return module.eval()


# -- the pipeline ----------------------------------------------------------------------------------------------

class DemoPipeline:
    def __init__(self, settings: DemoSettings, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.models_dir = self.run_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.stages = Stages(self.run_dir, log)
        self.log = log
        root = Path(settings.data_root) if settings.data_root else None
        train_images, train_labels = subset(*load_fashion_mnist("train", root), settings.train_images, settings.seed)
        test_images, test_labels = subset(*load_fashion_mnist("test", root), settings.test_images, settings.seed + 1)
        self.train_uint8, self.train_labels = train_images, torch.from_numpy(train_labels)
        self.test_uint8, self.test_labels = test_images, torch.from_numpy(test_labels)
        self.train_x, self.test_x = to_model_images(train_images), to_model_images(test_images)

    # stage 1-3: the stand-in networks
    def texture_vae(self):
        from sfd.demo.networks import demo_vae_config, train_texture_vae
        from sfd.tokenizers.texture_vae import TextureVAE

        path = self.models_dir / "texture_vae.pt"

        def work() -> dict:
            vae, losses = train_texture_vae(self.train_x, demo_vae_config(), steps=self.settings.vae_steps,
                                            batch_size=self.settings.vae_batch, lr=2e-3, seed=self.settings.seed)
            save_module(vae, path)
            recon = vae.decode(vae.encode(self.test_x[:256]).mode()).detach()
            return {"final_loss": losses[-1], "losses": losses[:: max(1, len(losses) // 100)],
                    "test_mse": F.mse_loss(recon, self.test_x[:256]).item()}

        result = self.stages.run("texture_vae", work)
        return load_module(TextureVAE(demo_vae_config()), path), result

    def semantic_encoder(self):
        from sfd.demo.networks import PatchEncoder, train_patch_encoder

        path = self.models_dir / "semantic_encoder.pt"

        def work() -> dict:
            encoder, losses = train_patch_encoder(self.train_x, self.train_labels, steps=self.settings.encoder_steps,
                                                  batch_size=128, lr=2e-3, seed=self.settings.seed + 10)
            save_module(encoder, path)
            return {"final_loss": losses[-1]}

        result = self.stages.run("semantic_encoder", work)
        return load_module(PatchEncoder(), path), result

    def fid_classifier(self):
        from sfd.demo.networks import FeatureClassifier, accuracy, train_classifier

        path = self.models_dir / "fid_classifier.pt"

        def work() -> dict:
            classifier, losses = train_classifier(self.train_x, self.train_labels,
                                                  steps=self.settings.classifier_steps, batch_size=128, lr=2e-3,
                                                  seed=self.settings.seed + 20)
            save_module(classifier, path)
            return {"final_loss": losses[-1], "test_accuracy": accuracy(classifier, self.test_x, self.test_labels, 256)}

        result = self.stages.run("fid_classifier", work)
        return load_module(FeatureClassifier(), path), result

    # stage 4: Semantic VAE on the stand-in features
    def semvae(self, encoder):
        from sfd.tokenizers.semvae import load_semvae
        from sfd.tokenizers.semvae_train import load_train_config, train

        features = self.run_dir / "features"
        out = self.run_dir / "semvae"

        def tokens(images: torch.Tensor) -> Callable[[range], dict]:
            def encode_shard(shard: range) -> dict:
                with torch.no_grad():
                    batches = [encoder(images[i: min(i + 256, shard.stop)]) for i in range(shard.start, shard.stop, 256)]
                return {"patch_tokens": torch.cat(batches).half()}
            return encode_shard

        def work() -> dict:
            for split, images in (("train", self.train_x), ("val", self.test_x[:512])):
                write_missing_shards(len(images), features / split, "features", tokens(images), shard_size=4096)
            config = load_train_config(DEMO_CONFIG.parent / "semvae_fashion.yaml", [
                f"data.feature_dir={features / 'train'}", f"training.evaluation.feature_dir={features / 'val'}",
                f"variables.output_root={out}", f"training.total_iterations={self.settings.semvae_steps}",
                f"training.seed={self.settings.seed}",
                f"training.scheduler.constant_steps={max(1, self.settings.semvae_steps * 3 // 4)}",
                f"training.checkpointing.save_every={self.settings.semvae_steps}",
                f"training.evaluation.eval_every={self.settings.semvae_steps}"])
            result = train(config, device="cpu", progress=True)
            return {"final_checkpoint": str(result.final), "loss_averages": result.averages,
                    "eval": asdict(result.evaluation) if result.evaluation is not None else None}

        result = self.stages.run("semvae", work)
        return load_semvae(result["final_checkpoint"]), result

    # stage 5: latents in the release's shard format
    def latents(self, vae, semvae, encoder) -> dict:
        encoders = LatentEncoders(vae, semvae, encoder, preprocess=lambda images: images)

        def shards(images: torch.Tensor, labels: torch.Tensor, folder: Path, offset: int) -> None:
            def encode_shard(shard: range) -> dict:
                parts: dict[str, list] = {}
                for start in range(shard.start, shard.stop, 256):
                    batch = range(start, min(start + 256, shard.stop))
                    for key, value in encoders.encode(images[batch.start: batch.stop],
                                                      [offset + i for i in batch], self.settings.seed).items():
                        parts.setdefault(key, []).append(value)
                return {**{k: torch.cat(v) for k, v in parts.items()}, "labels": labels[shard.start: shard.stop]}

            write_missing_shards(len(images), folder, "latents", encode_shard, shard_size=4096)

        def work() -> dict:
            shards(self.train_x, self.train_labels, self.run_dir / "latents" / "train", 0)
            shards(self.test_x, self.test_labels, self.run_dir / "latents" / "valid", 10**7)
            compute_stats(self.run_dir / "latents" / "train", seed=self.settings.seed)
            return {"train": len(self.train_x), "valid": len(self.test_x)}

        return self.stages.run("latents", work)

    # stage 6: SFD and the synchronous baseline
    def diffusion_config(self, name: str, delta_t: float) -> SFDConfig:
        settings = self.settings
        return load_config(DEMO_CONFIG, [
            f"model.semfirst_delta_t={delta_t}", f"data.data_path={self.run_dir / 'latents' / 'train'}",
            f"data.valid_path={self.run_dir / 'latents' / 'valid'}", f"train.output_dir={self.run_dir / 'runs'}",
            f"train.exp_name={name}", f"train.max_steps={settings.diffusion_steps}",
            f"train.global_batch_size={settings.diffusion_batch}", f"train.ckpt_every={settings.eval_every}",
            f"train.valid_every={settings.eval_every}", f"train.global_seed={settings.seed}",
            f"sample.sampling_method={settings.sampling_method}", f"sample.num_sampling_steps={settings.sampling_steps}",
            *settings.overrides])

    def train_model(self, name: str, delta_t: float) -> dict:
        from sfd.train import Trainer

        def work() -> dict:
            config = self.diffusion_config(name, delta_t)
            trainer = Trainer(config)
            trainer.run(progress=True)
            return {"steps": trainer.step, "run_dir": str(trainer.run_dir)}

        return self.stages.run(f"train_{name}", work)

    # stage 7: samples and FID at several training lengths
    def evaluate(self, name: str, delta_t: float, step: int, vae, classifier, reference) -> dict:
        from sfd.build import build_model
        from sfd.evaluation.metrics import feature_statistics, frechet_distance
        from sfd.generate import ImageSampler, LabelPlan, LatentDecoder

        def work() -> dict:
            config = self.diffusion_config(name, delta_t)
            checkpoint = self.run_dir / "runs" / name / "checkpoints" / f"{step:07d}.pt"
            model = build_model(config)
            model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["ema"])
            sampler = ImageSampler(model.eval(), config, LatentDecoder(vae, config, torch.device("cpu")),
                                   seed=self.settings.seed + 1000)
            plan = LabelPlan(self.settings.samples, 10, balanced=True)
            images, labels = [], plan.labels(range(self.settings.samples))
            for start in range(0, self.settings.samples, 100):
                indices = range(start, min(start + 100, self.settings.samples))
                images.append(sampler.images(indices, labels[indices.start: indices.stop]))
            images = np.concatenate(images)
            np.savez_compressed(self.run_dir / "samples" / f"{name}_{step:07d}.npz", images=images,
                                labels=labels.numpy())
            features, predicted = self.classifier_outputs(classifier, images)
            fid = frechet_distance(feature_statistics(features), reference)
            return {"model": name, "delta_t": delta_t, "step": step, "fid": fid,
                    "class_accuracy": float((predicted == labels.numpy()).mean())}

        (self.run_dir / "samples").mkdir(exist_ok=True)
        return self.stages.run(f"eval_{name}_{step:07d}", work)

    @staticmethod
    @torch.no_grad()
    def classifier_outputs(classifier, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features and predicted classes of RGB uint8 [N, 32, 32, 3] images."""
        features, predicted = [], []
        tensor = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        for start in range(0, len(tensor), 256):
            batch = tensor[start: start + 256]
            features.append(classifier.features(batch).double().numpy())
            predicted.append(classifier(batch).argmax(1).numpy())
        return np.concatenate(features), np.concatenate(predicted)

    def reference_statistics(self, classifier):
        from sfd.evaluation.metrics import feature_statistics

        images = ((self.test_x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return feature_statistics(self.classifier_outputs(classifier, images)[0])

    # everything
    def run(self) -> Path:
        vae, _ = self.texture_vae()
        encoder, _ = self.semantic_encoder()
        classifier, _ = self.fid_classifier()
        semvae, _ = self.semvae(encoder)
        self.latents(vae, semvae, encoder)
        reference = self.reference_statistics(classifier)
        results = []
        for name, delta_t in self.settings.models.items():
            self.train_model(name, delta_t)
            for step in range(self.settings.eval_every, self.settings.diffusion_steps + 1, self.settings.eval_every):
                results.append(self.evaluate(name, delta_t, step, vae, classifier, reference))
        from sfd.demo.report import write_report

        return self.stages.run("report", lambda: {"path": str(write_report(self, results))})["path"]
