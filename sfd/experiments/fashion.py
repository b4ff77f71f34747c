"""The whole SFD pipeline at toy scale on Fashion-MNIST, offline on a CPU, with resumable stages.

Stages (each leaves ``stages/<name>.json`` when complete; a rerun skips completed stages and resumes the trainers
from their checkpoints):

1. ``texture_vae``: a tiny LDM KL-VAE (32×32 → 4×8×8) trained on the images — stands in for SD-VAE f16d32.
2. ``semantic_encoder_ssl`` and ``semantic_encoder_supervised``: two stand-ins for DINOv2 (pretrained weights
   cannot be downloaded here), the same small CNN with per-patch tokens on the latent's 8×8 grid, trained without
   labels (contrastive, the default, as DINOv2 is self-supervised) or as a classifier; ``encoder_probes`` scores
   both (k-NN and linear-probe accuracy of their pooled tokens on held-out images, next to an untrained one).
3. ``fid_classifier``: a different CNN trained independently, whose penultimate features define the demo's FID.
4. ``semvae_<encoder>``: the project's Semantic VAE trained on the chosen encoder's features (4 latent channels).
5. ``latents_<encoder>``: latent extraction into the project's shard format, with statistics.
6. ``pca<k>_<encoder>`` and ``pca<k>_latents_<encoder>`` (only when a variant asks for them): ReDi-style semantic
   channels, a PCA of the same features, extracted with the same texture latents.
7. ``train_<encoder>_<variant>``: the models compared (names from :class:`sfd.experiments.sweep.Variant`): by
   default the paper's Table 1 at toy scale — LightningDiT (texture latents only), LightningDiT + REPA (aligned to the
   encoder's features) and SFD (texture + SemVAE semantics, Δt = 0.3, REPA) — with the same backbone, steps, batch
   and seed. Asking for more steps resumes a run.
8. ``eval_<encoder>_<variant>_<step>_<scoring>``: samples decoded and scored by FID against the held-out test
   images, at several training lengths and with each :class:`sfd.experiments.sweep.Scoring` (solver;
   class-balanced labels, the null label for every sample, or oracle semantics).
9. report.md (rewritten on every run): the Table-1-style comparison, sample grids per class, encoder probes, loss
   curves, FID-vs-step plots and the findings of the sweeps and studies run in the same folder.

The same object is the Fashion-MNIST backend of ``scripts/sweep.py`` and ``scripts/study.py``
(:mod:`sfd.experiments.sweep`, :mod:`sfd.experiments.study`): any grid of semantic source, Δt, semantic weight and
seed, trained and scored exactly like the demo's models.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from sfd.config import SFDConfig, load_config, read_yaml
from sfd.data.shards import compute_stats
from sfd.distributed import Topology
from sfd.evaluation.metrics import feature_statistics, frechet_distance
from sfd.experiments.fashion_mnist import load_fashion_mnist, subset, to_model_images
from sfd.experiments.sweep import Scoring, Variant, channel_overrides, latent_channels, run_sweep
from sfd.extract import LatentEncoders, write_missing_shards
from sfd.files import atomic_path, write_json_atomic, write_text_atomic

# What an evaluation stage returns to the sweep (its stage file also records the sample count).
EVALUATION_KEYS = ("fid", "class_accuracy", "nfe", "semantic_fd", "source_distance", "control_distance", "source_ratio")
ENCODERS = ("ssl", "supervised")  # the DINOv2 stand-ins: self-supervised (default) or a classifier's features
# The demo configs ship inside the package (package data), so an installed sfd runs the demo from any folder.
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "sfd_fashion.yaml"


def base_model():
    """The ``model`` section every demo model starts from (the demo config's: SFD's Δt, β and REPA)."""
    return load_config(DEMO_CONFIG).model


def table1_variants() -> tuple[Variant, ...]:
    """The paper's Table 1 at toy scale: LightningDiT without and with REPA, and SFD as the demo config sets it."""
    model = base_model()
    return Variant.of(model, "none", repa=False), Variant.of(model, "none", repa=True), Variant.of(model, "semvae")


@dataclass
class FashionSettings:
    run_dir: str = "outputs/demo"
    data_root: Optional[str] = None  # folder with the four *-ubyte.gz files (default: Debian's, then torchvision)
    seed: int = 0
    train_images: int = 10_000  # training images used (a subset keeps the demo inside its 30-minute budget)
    test_images: int = 2_000  # held-out images: FID reference, validation latents and encoder probes
    vae_steps: int = 300
    vae_batch: int = 16
    encoder: str = "ssl"  # the DINOv2 stand-in whose features become the semantic channels and REPA targets
    encoder_steps: int = 300  # the supervised stand-in (batch 128)
    ssl_steps: int = 300  # the self-supervised stand-in (batch ssl_batch, two views per image)
    ssl_batch: int = 256
    classifier_steps: int = 400
    semvae_steps: int = 600
    diffusion_steps: int = 1200  # per model
    diffusion_batch: int = 32
    eval_every: int = 600  # FID at these training lengths
    samples: int = 500  # samples per evaluation (class-balanced when conditional)
    # FID reference: the held-out images above (None) or this many of the Fashion-MNIST test set (10,000: all of it);
    # scores against another reference are stages of their own.
    reference_images: Optional[int] = None
    # Every model is scored with the paper's adaptive solver at the release's tolerances at every length; at the
    # last length also unconditionally and at an equal, small number of model evaluations (Euler, 24 NFE).
    scoring: Scoring = Scoring()
    # The last length also scores SFD with oracle semantics (the bound a perfect semantic generator would give).
    final_scorings: Sequence[Scoring] = (Scoring(conditional=False), Scoring("euler", 25), Scoring(oracle=True))
    # The models compared (report.md compares these); default: the paper's Table 1 at toy scale
    # (:func:`table1_variants`).
    variants: Optional[Sequence[Variant]] = None
    pca_components: int = 4  # ReDi-style semantic channels (ReDi: 8 of DINOv2's 768; here as many as the SemVAE's)
    overrides: Sequence[str] = ()  # extra config overrides for the diffusion models
    # Power-EMA widths the diffusion runs track (docs/ema.md), with a snapshot every power_ema_every steps (a divisor
    # of every scored length), so that scorings can sample any width (Scoring.average). Tracking runs are runs of
    # their own (named …_pema): a power EMA must be tracked from the first step.
    power_ema_sigma_rels: Sequence[float] = ()
    power_ema_every: int = 200

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder: {self.encoder!r} is not one of {', '.join(ENCODERS)}")
        if self.variants is None:
            self.variants = table1_variants()

    @classmethod
    def quick(cls, run_dir: str, data_root: Optional[str] = None, **changes) -> "FashionSettings":
        """The CI-sized pipeline: every stage, tiny sizes, a few hundred images, seconds per stage."""
        return cls(**{**dict(run_dir=run_dir, data_root=data_root, train_images=256, test_images=128, vae_steps=10,
                             encoder_steps=10, ssl_steps=4, ssl_batch=32, classifier_steps=10, semvae_steps=10,
                             diffusion_steps=20, diffusion_batch=16, eval_every=10, samples=40,
                             scoring=Scoring("euler", 6),
                             final_scorings=(Scoring("euler", 6, conditional=False), Scoring("euler", 6, oracle=True)),
                             power_ema_every=5,
                             overrides=("model.hidden_size=32", "model.depth=2", "model.num_heads=2",
                                        "model.repa_projector_dim=32")), **changes})


# -- stage bookkeeping -----------------------------------------------------------------------------------------

class Stages:
    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.folder = run_dir / "stages"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = log

    def done(self, name: str) -> Optional[dict]:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, name: str, work: Callable[[], dict], keep: Callable[[dict], bool] = lambda result: True) -> dict:
        """Run ``work`` unless an earlier result exists that ``keep`` accepts (e.g. a training that was long
        enough); the result is recorded atomically."""
        finished = self.done(name)
        if finished is not None and keep(finished):
            self.log(f"[{name}] done earlier, skipped")
            return finished
        self.log(f"[{name}] running")
        start = time.perf_counter()
        result = {**work(), "seconds": round(time.perf_counter() - start, 1)}
        write_json_atomic(self.folder / f"{name}.json", result)
        self.log(f"[{name}] finished in {result['seconds']} s")
        return result


def demo_latents(folder: Path, stats: Optional[Path] = None):
    """A latent folder's texture and SemVAE channels, unflipped, normalised with ``stats``' statistics (default: its
    own) as the demo config normalises training latents."""
    from sfd.data.latents import LatentShardDataset

    data = load_config(DEMO_CONFIG).data
    return LatentShardDataset(folder, latent_norm=data.latent_norm, latent_sv_norm=data.latent_sv_norm,
                              latent_multiplier=data.latent_multiplier, semantic=True, with_dino=False, flip_prob=0.0,
                              seed=0, stats_dir=stats)


def save_module(module: torch.nn.Module, path: Path, **extra) -> None:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": module.state_dict(), **extra}, tmp)


def load_module(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return module.eval()


# -- stages 1-6: the data, the stand-in networks, the tokenizers and the latents -------------------------------

class FashionTokenizers:
    """Everything the diffusion models are trained on, in one run folder: the Fashion-MNIST subsets, the texture VAE,
    both DINOv2 stand-ins and their probes, the Semantic VAE (or the PCA) and the latent shards."""

    def __init__(self, settings: FashionSettings, log: Callable[[str], None] = print) -> None:
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
        self._held_out: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # held_out_latents(), read once

    # stages 1-2: the stand-in networks (stage 3, the FID network, is the scoring's: FashionBackend)
    def texture_vae(self):
        from sfd.experiments.networks import demo_vae_config, train_texture_vae
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
        vae = load_module(TextureVAE(demo_vae_config()), path)
        self.export_tokenizer(vae)
        return vae, result

    def export_tokenizer(self, vae) -> Path:
        """The texture VAE as a release-layout tokenizer: ``models/texture_vae.ckpt`` (LDM names) and
        ``models/texture_vae.yaml`` (the shipped demo tokenizer config, pointing at it), so the diffusion models'
        configs (``vae.config``) decode with scripts/sample.py and the release's launchers."""
        from sfd.experiments.networks import DEMO_VAE_YAML

        ckpt, yaml_path = self.models_dir / "texture_vae.ckpt", self.models_dir / "texture_vae.yaml"
        if not ckpt.exists():
            with atomic_path(ckpt) as tmp:
                torch.save({"state_dict": vae.ldm_state_dict()}, tmp)
        if not yaml_path.exists():  # the shipped config with its weights beside it (resolved from the YAML's folder)
            layout = {**read_yaml(DEMO_VAE_YAML), "ckpt_path": ckpt.name}
            write_text_atomic(yaml_path, yaml.safe_dump(layout, sort_keys=False))
        return yaml_path

    def semantic_encoder(self, kind: str):
        """A DINOv2 stand-in (:data:`ENCODERS`): the self-supervised one never sees a label."""
        from sfd.experiments.networks import PatchEncoder, train_patch_encoder, train_patch_encoder_ssl

        path = self.models_dir / f"semantic_encoder_{kind}.pt"
        settings = self.settings

        def work() -> dict:
            if kind == "ssl":
                encoder, losses = train_patch_encoder_ssl(self.train_x, steps=settings.ssl_steps,
                                                          batch_size=settings.ssl_batch, lr=2e-3,
                                                          seed=settings.seed + 30)
            else:
                encoder, losses = train_patch_encoder(self.train_x, self.train_labels, steps=settings.encoder_steps,
                                                      batch_size=128, lr=2e-3, seed=settings.seed + 10)
            save_module(encoder, path)
            return {"final_loss": losses[-1], "losses": losses[:: max(1, len(losses) // 100)]}

        result = self.stages.run(f"semantic_encoder_{kind}", work)
        return load_module(PatchEncoder(), path), result

    def encoder_probes(self, encoders: dict) -> dict:
        """k-NN and linear-probe test accuracy of each encoder's mean-pooled patch tokens (fitted on the training
        images, scored on the held-out ones), with an untrained encoder of the same architecture as the floor."""
        from sfd.evaluation.probe import probe_report
        from sfd.experiments.networks import untrained_patch_encoder

        def work() -> dict:
            chosen = {**encoders, "untrained": untrained_patch_encoder(self.settings.seed + 30)}
            return {name: probe_report(encoder, self.train_x, self.train_labels, self.test_x, self.test_labels)
                    for name, encoder in chosen.items()}

        return self.stages.run("encoder_probes", work)

    # stage 4: Semantic VAE on the stand-in features
    def semvae(self, encoder):
        from sfd.tokenizers.semvae import load_semvae
        from sfd.tokenizers.semvae_train import load_train_config, train

        features = self.run_dir / f"features_{self.settings.encoder}"
        out = self.run_dir / f"semvae_{self.settings.encoder}"

        def tokens(images: torch.Tensor) -> Callable[[range], dict]:
            def encode_shard(shard: range) -> dict:
                with torch.no_grad():
                    batches = [encoder(images[i: min(i + 256, shard.stop)])
                               for i in range(shard.start, shard.stop, 256)]
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

        result = self.stages.run(f"semvae_{self.settings.encoder}", work)
        return load_semvae(result["final_checkpoint"]), result

    # stage 5 (and 6): latents in the release's shard format
    def latents(self, vae, semantic_tokenizer, encoder, stage: str, folder: str) -> Path:
        """Train and validation shards of (texture, semantic) latents in ``run_dir/folder``; returns the train one.
        The texture latents do not depend on the semantic tokenizer (per-image seeded posterior noise)."""
        encoders = LatentEncoders(vae, semantic_tokenizer, encoder, preprocess=lambda images: images)

        def shards(images: torch.Tensor, labels: torch.Tensor, target: Path, offset: int) -> None:
            def encode_shard(shard: range) -> dict:
                parts: dict[str, list] = {}
                for start in range(shard.start, shard.stop, 256):
                    batch = range(start, min(start + 256, shard.stop))
                    for key, value in encoders.encode(images[batch.start: batch.stop],
                                                      [offset + i for i in batch], self.settings.seed).items():
                        parts.setdefault(key, []).append(value)
                return {**{k: torch.cat(v) for k, v in parts.items()}, "labels": labels[shard.start: shard.stop]}

            write_missing_shards(len(images), target, "latents", encode_shard, shard_size=4096)

        def work() -> dict:
            shards(self.train_x, self.train_labels, self.run_dir / folder / "train", 0)
            shards(self.test_x, self.test_labels, self.run_dir / folder / "valid", 10**7)
            compute_stats(self.run_dir / folder / "train", seed=self.settings.seed)
            return {"train": len(self.train_x), "valid": len(self.test_x)}

        self.stages.run(stage, work)
        return self.run_dir / folder / "train"

    def pca_latents(self, vae, encoder) -> Path:
        """ReDi-style semantic channels: a PCA of the stand-in features of the training images (fitted once, saved
        as ``models/pca<k>.safetensors``), projected per patch in place of the SemVAE posterior."""
        from sfd.tokenizers.pca import PCAProjector, fit_pca

        k = self.settings.pca_components
        tag = f"pca{k}_{self.settings.encoder}"
        path = self.models_dir / f"{tag}.safetensors"

        def work() -> dict:
            with torch.no_grad():
                pca = fit_pca((encoder(self.train_x[i: i + 256]) for i in range(0, len(self.train_x), 256)), k)
            pca.save(path)
            return {"components": k, "explained_variance": pca.explained_variance.tolist()}

        self.stages.run(tag, work)
        folder = self.latent_folder("pca").parent.name
        return self.latents(vae, PCAProjector.load(path), encoder, stage=f"pca{k}_latents_{self.settings.encoder}",
                            folder=folder)

    # the latents of stages 5 and 6
    def latent_folder(self, semantics: str) -> Path:
        """The training latents of a semantic source; ``none`` reads the texture channels of the SemVAE folder."""
        encoder = self.settings.encoder
        if semantics == "pca":
            return self.run_dir / f"latents_{encoder}_pca{self.settings.pca_components}" / "train"
        return self.run_dir / f"latents_{encoder}" / "train"

    def held_out_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images' composite latents (texture, then SemVAE semantics), normalised as the models see
        their training latents, and their labels."""
        from sfd.data.latents import InMemoryLatents

        if self._held_out is None:
            train = self.latent_folder("semvae")
            memory = InMemoryLatents(demo_latents(train.parent / "valid", stats=train))
            self._held_out = (memory.latents[0], memory.labels)
        return self._held_out

    def semantic_fd_floor(self, count: int) -> float:
        """The semantic Fréchet distance of ``count`` training images' true semantic latents against the held-out
        ones: what a perfect semantic generator would score with that many samples."""
        from sfd.data.latents import InMemoryLatents
        from sfd.experiments.diagnostics import semantic_frechet_distance

        truth, _ = self.held_out_latents()
        train = InMemoryLatents(demo_latents(self.latent_folder("semvae"))).latents[0]
        semantic_chans = latent_channels(self.latent_folder("semvae"))[1]
        return semantic_frechet_distance(train[:count, -semantic_chans:], truth[:, -semantic_chans:])


# -- stages 7-8: the diffusion models and their scores ----------------------------------------------------------

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


def classifier_reference_statistics(settings: FashionSettings, held_out: torch.Tensor, classifier):
    """The FID network's feature statistics of the reference images: ``held_out`` (model images in [-1, 1]) or
    :attr:`FashionSettings.reference_images` Fashion-MNIST test images."""
    reference = held_out
    if settings.reference_images is not None:
        root = Path(settings.data_root) if settings.data_root else None
        images, _ = subset(*load_fashion_mnist("test", root), settings.reference_images, settings.seed + 1)
        reference = to_model_images(images)
    images = ((reference + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return feature_statistics(classifier_outputs(classifier, images)[0])


def scored_name(run_name: str, scoring: Scoring) -> str:
    """The name a score and its samples are stored under. Tracking power EMAs changes no weight
    (tests/test_train.py), so a tracking run's (``…_pema``) classic-EMA scores are its non-tracking twin's: shared,
    not redone."""
    return run_name.removesuffix("_pema") if scoring.average is None else run_name


def rebuilt_average(run: Path, step: int, sigma_rel: float) -> Path:
    """The power-EMA average of width ``sigma_rel`` at ``step``, rebuilt from ``run``'s snapshots (docs/ema.md §7)
    into ``run/power_ema_reconstructed`` once, then reused."""
    from sfd.phema import SNAPSHOT_FOLDER, write_reconstruction

    rebuilt = run / "power_ema_reconstructed" / f"ema_sigma{sigma_rel:g}_{step:07d}.pt"
    if not rebuilt.exists():
        write_reconstruction(run / SNAPSHOT_FOLDER, rebuilt.parent, sigma_rel=sigma_rel, step=step)
    return rebuilt


class FashionBackend(FashionTokenizers):
    """The demo's stages 1-8: the tokenizers' stages, then the FID network and every diffusion model trained alike and
    scored by FID at several training lengths; the backend of :func:`sfd.experiments.sweep.run_sweep` (``train`` and
    ``evaluate``)."""

    def __init__(self, settings: FashionSettings, log: Callable[[str], None] = print) -> None:
        super().__init__(settings, log)
        # The networks the scores need, set by prepare(): the texture VAE decodes the samples, the FID network
        # embeds them and the reference statistics are its features of the held-out images.
        self.vae = self.classifier = self.reference = self.probes = None
        # The diffusion models train and sample on the machine's accelerator ($SFD_DEVICE, else CUDA/NPU, else the
        # CPU); the small networks, decoding and scoring stay on the CPU.
        self.device = Topology().device

    # stage 7: the diffusion models
    def run_name(self, variant: Variant) -> str:
        """Runs, stages and samples carry the encoder, so both stand-ins can share a run folder, and ``_pema`` when
        the run tracks power EMAs."""
        return f"{self.settings.encoder}_{variant.name}{'_pema' if self.settings.power_ema_sigma_rels else ''}"

    def diffusion_config(self, variant: Variant, steps: Optional[int] = None, checkpoint_every: Optional[int] = None,
                         scoring: Optional[Scoring] = None) -> SFDConfig:
        settings = self.settings
        train = self.latent_folder(variant.semantics)
        return load_config(DEMO_CONFIG, [
            *channel_overrides(train, variant.semantics != "none"), *variant.overrides(),
            f"data.valid_path={train.parent / 'valid'}", "data.in_memory=true",
            f"vae.config={self.models_dir / 'texture_vae.yaml'}",
            f"train.output_dir={self.run_dir / 'runs'}", f"train.exp_name={self.run_name(variant)}",
            f"train.max_steps={steps or settings.diffusion_steps}",
            f"train.global_batch_size={settings.diffusion_batch}",
            f"train.ckpt_every={checkpoint_every or settings.eval_every}",
            f"train.valid_every={checkpoint_every or settings.eval_every}",
            f"train.global_seed={settings.seed + variant.repeat}",
            *([f"train.power_ema_sigma_rels=[{','.join(map(str, settings.power_ema_sigma_rels))}]",
               f"train.power_ema_every={settings.power_ema_every}"] if settings.power_ema_sigma_rels else []),
            *(scoring or settings.scoring).overrides(), *settings.overrides])

    def train(self, variant: Variant, steps: int, checkpoint_every: int) -> dict:
        """Train ``variant`` to ``steps`` (resuming its run when it stopped earlier or is extended)."""
        from sfd.train import Trainer

        def work() -> dict:
            trainer = Trainer(self.diffusion_config(variant, steps, checkpoint_every))
            trainer.run(progress=True)
            return {"steps": trainer.step, "run_dir": str(trainer.run_dir)}

        return self.stages.run(f"train_{self.run_name(variant)}", work, keep=lambda result: result["steps"] >= steps)

    # stage 8: samples and FID at several training lengths
    def samples_file(self, variant: Variant, step: int, scoring: Scoring) -> Path:
        name = scored_name(self.run_name(variant), scoring)
        return self.run_dir / "samples" / f"{name}_{step:07d}_{scoring.name}.npz"

    def checkpoint_path(self, variant: Variant, step: int) -> Path:
        """The training checkpoint of ``variant`` at ``step`` (its EMA weights are scored)."""
        return self.run_dir / "runs" / self.run_name(variant) / "checkpoints" / f"{step:07d}.pt"

    def weights_path(self, variant: Variant, step: int, scoring: Scoring) -> Path:
        """The file whose weights ``scoring`` samples: the checkpoint (its classic EMA) or a power-EMA average."""
        if scoring.average is None:
            return self.checkpoint_path(variant, step)
        if not self.settings.power_ema_sigma_rels:
            raise ValueError(f"scoring {scoring.name}: the runs track no power EMAs "
                             "(FashionSettings.power_ema_sigma_rels is empty)")
        return rebuilt_average(self.run_dir / "runs" / self.run_name(variant), step, scoring.average)

    def evaluate(self, variant: Variant, step: int, scoring: Optional[Scoring] = None) -> dict:
        """FID of ``scoring.samples`` (default: the settings') images of the EMA weights at ``step`` against the
        reference images, the mean NFE per batch and, when conditional, the class accuracy of the samples; for
        models with semantic channels also the semantic Fréchet distance of their first 500 samples, and with
        oracle semantics the texture-to-source distances (:mod:`sfd.experiments.diagnostics`). Sample i has the
        same noise in every model of a repeat (seed + repeat), so models are compared on common noise."""
        scoring = scoring or self.settings.scoring
        count = scoring.samples or self.settings.samples

        def work() -> dict:
            latents, labels, nfe = self.generate(variant, step, scoring, count)
            images = self.vae_decoder(variant)(latents)
            np.savez_compressed(self.samples_file(variant, step, scoring), images=images, labels=labels.numpy(),
                                latents=latents.half().numpy())
            features, predicted = classifier_outputs(self.classifier, images)
            result = {"fid": frechet_distance(feature_statistics(features), self.reference), "nfe": nfe,
                      "samples": count}
            if scoring.conditional:  # the null label asks for no class
                result["class_accuracy"] = float((predicted == labels.numpy()).mean())
            result.update(self.semantic_scores(variant, scoring, latents))
            return result

        (self.run_dir / "samples").mkdir(exist_ok=True)
        stage = f"eval_{scored_name(self.run_name(variant), scoring)}_{step:07d}_{scoring.name}{self.reference_tag}"
        result = self.stages.run(stage, work, keep=lambda result: result.get("samples") == count)
        return {key: result[key] for key in EVALUATION_KEYS if key in result}

    def generate(self, variant: Variant, step: int, scoring: Scoring, count: int):
        """Final latents [count, C, H, W] (normalised), labels and mean NFE per batch of the EMA weights at
        ``step``: class-balanced labels, the null label (unconditional) or, with oracle semantics, held-out image
        i's class and noised semantic latent for sample i."""
        from sfd.build import build_model
        from sfd.checkpoint import load_weights
        from sfd.experiments.diagnostics import SemanticOracle
        from sfd.generate import ImageSampler, LabelPlan, initial_noise

        config = self.diffusion_config(variant, scoring=scoring)
        model = build_model(config)
        load_weights(model, self.weights_path(variant, step, scoring), prefer="ema")
        sampler = ImageSampler(model.to(self.device).eval(), config, decode=None, device=self.device,
                               seed=self.settings.seed + variant.repeat + 1000)
        if scoring.oracle:
            if variant.semantics != "semvae":
                raise ValueError(f"oracle: {variant.label} has no SemVAE semantic channels to hold to the truth")
            truth, labels = self.held_out_latents()
            if count > len(truth):
                raise ValueError(f"samples: {count} oracle samples need as many held-out images (have {len(truth)})")
            truth, labels = truth[:count, config.model.in_chans - config.model.semantic_chans:], labels[:count]
            truth = truth.to(self.device)
        else:
            labels = LabelPlan(count, 10, balanced=True, fixed=None if scoring.conditional else 10).labels(range(count))
        latents = []
        with torch.no_grad():
            for start in range(0, count, 100):
                indices = range(start, min(start + 100, count))
                batch = sampler
                if scoring.oracle:  # the oracle's noise is the semantic part of the sampler's own initial state
                    side = model.args.input_size
                    noise = initial_noise(sampler.seed, indices, (config.model.in_chans, side, side), self.device)
                    part = truth[indices.start: indices.stop]
                    batch = replace(sampler, model=SemanticOracle(model, part, noise[:, -part.shape[1]:]))
                latents.append(batch.latents(indices, labels[indices.start: indices.stop]).float().cpu())
        return torch.cat(latents), labels, sampler.mean_nfe

    def vae_decoder(self, variant: Variant):
        from sfd.generate import LatentDecoder

        return LatentDecoder(self.vae, self.diffusion_config(variant), torch.device("cpu"))

    def semantic_scores(self, variant: Variant, scoring: Scoring, latents: torch.Tensor) -> dict:
        """Semantic Fréchet distance (every sample against every held-out semantic latent) of normal generation;
        texture-to-source distances of oracle generation; nothing for texture-only models."""
        from sfd.experiments.diagnostics import semantic_frechet_distance, source_distances

        if variant.semantics != "semvae":
            return {}
        truth, labels = self.held_out_latents()
        model = self.diffusion_config(variant).model
        texture_chans = model.in_chans - model.semantic_chans
        if scoring.oracle:
            count = len(latents)
            return source_distances(latents[:, :texture_chans], truth[:count, :texture_chans], labels[:count].numpy())
        return {"semantic_fd": semantic_frechet_distance(latents[:, texture_chans:], truth[:, texture_chans:])}

    # stage 3: the FID network, a classifier trained apart from every network it scores, and its reference
    def fid_classifier(self):
        from sfd.experiments.networks import FeatureClassifier, accuracy, train_classifier

        path = self.models_dir / "fid_classifier.pt"

        def work() -> dict:
            classifier, losses = train_classifier(self.train_x, self.train_labels,
                                                  steps=self.settings.classifier_steps, batch_size=128, lr=2e-3,
                                                  seed=self.settings.seed + 20)
            save_module(classifier, path)
            return {"final_loss": losses[-1], "test_accuracy": accuracy(classifier, self.test_x, self.test_labels, 256)}

        result = self.stages.run("fid_classifier", work)
        return load_module(FeatureClassifier(), path), result

    @property
    def reference_tag(self) -> str:
        """Part of the evaluation stage names: empty for the held-out images, ``_ref<N>`` for N test images."""
        return "" if self.settings.reference_images is None else f"_ref{self.settings.reference_images}"

    # everything
    def prepare(self, variants: Sequence[Variant]) -> None:
        """Stages 1-6: the tokenizers, both encoders and their probes, the FID network and the latents the
        ``variants`` need."""
        self.vae, _ = self.texture_vae()
        encoders = {kind: self.semantic_encoder(kind)[0] for kind in ENCODERS}
        self.probes = self.encoder_probes(encoders)
        self.classifier, _ = self.fid_classifier()
        encoder = encoders[self.settings.encoder]
        semvae, _ = self.semvae(encoder)
        self.latents(self.vae, semvae, encoder, stage=f"latents_{self.settings.encoder}",
                     folder=self.latent_folder("semvae").parent.name)
        if any(variant.semantics == "pca" for variant in variants):
            self.pca_latents(self.vae, encoder)
        self.reference = classifier_reference_statistics(self.settings, self.test_x, self.classifier)

    def sweep(self, variants: Sequence[Variant], steps: Optional[int] = None, eval_every: Optional[int] = None,
              final_scorings: Optional[Sequence[Scoring]] = None, check_scorings: Sequence[Scoring] = (),
              scorings: Optional[Sequence[Scoring]] = None, **schedule) -> list[dict]:
        """Train and score ``variants`` at equal budgets (the demo's steps, evaluation lengths and scorings by
        default; ``schedule``: run_sweep's ``lengths`` and ``at``)."""
        self.prepare(variants)
        settings = self.settings
        return run_sweep(self, variants, steps or settings.diffusion_steps, eval_every or settings.eval_every,
                         scorings=(settings.scoring,) if scorings is None else scorings,
                         final_scorings=settings.final_scorings if final_scorings is None else final_scorings,
                         check_scorings=check_scorings, log=self.log, **schedule)
