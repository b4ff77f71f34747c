"""The precomputed-latents backend of :func:`sfd.experiments.sweep.run_sweep`: variants trained on latent folders
(e.g. ImageNet from ``scripts/extract_latents.py``) with a base training YAML, sampled with the project's sampler and
scored by the ADM suite against a reference batch; launch under torchrun for several GPUs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sfd.experiments.report import METRICS
from sfd.experiments.sweep import Scoring, Variant, channel_overrides


@dataclass
class LatentsBackend:
    """Sweep variants trained on precomputed latent folders with a base training YAML (e.g.
    ``configs/baselines/sfd_b.yaml``), sampled with its ``sample`` section and scored by the ADM suite against
    ``reference``. ``latents`` maps a semantic source to its latent folder (SemVAE and PCA latents share the texture
    channels and differ in the semantic ones); the model's channels follow the folder's statistics. Outputs go to
    ``output_dir/{runs,samples,scores}``."""

    config_path: Path
    output_dir: Path
    latents: dict[str, Path]
    reference: Path
    samples: int
    overrides: Sequence[str] = ()
    seed: int = 0
    network: Optional[Callable] = None  # the ADM feature network; default: Inception from ``inception_weights``
    inception_weights: Optional[str] = None
    network_id: Optional[str] = None
    progress: bool = True
    topology: Any = field(default=None)

    def __post_init__(self) -> None:
        from sfd import distributed

        self.topology = self.topology or distributed.init()
        self.device = self.topology.device

    def latent_folder(self, variant: Variant) -> Path:
        """The variant's latents; models without semantic channels read the texture channels of any folder."""
        if variant.semantics == "none" and self.latents:
            return self.latents.get("semvae", next(iter(self.latents.values())))
        if variant.semantics not in self.latents:
            raise ValueError(f"semantics {variant.semantics!r}: no latent folder given for it "
                             f"(have: {', '.join(self.latents) or 'none'})")
        return self.latents[variant.semantics]

    def config(self, variant: Variant, steps: Optional[int] = None, checkpoint_every: Optional[int] = None,
               scoring: Optional[Scoring] = None):
        from sfd.config import load_config

        return load_config(self.config_path, [
            *self.overrides, *channel_overrides(self.latent_folder(variant), variant.semantics != "none"),
            *variant.overrides(), f"train.output_dir={self.output_dir / 'runs'}", f"train.exp_name={variant.name}",
            f"train.global_seed={self.seed + variant.repeat}",
            f"sample.fid_num={(scoring and scoring.samples) or self.samples}",
            *([f"train.max_steps={steps}"] if steps else []),
            *([f"train.ckpt_every={checkpoint_every}"] if checkpoint_every else []),
            *(scoring.overrides() if scoring else [])])

    def train(self, variant: Variant, steps: int, checkpoint_every: int) -> None:
        from sfd.train import Trainer

        Trainer(self.config(variant, steps, checkpoint_every), self.topology).run(progress=self.progress)

    def evaluate(self, variant: Variant, step: int, scoring: Scoring) -> dict[str, float]:
        from sfd import distributed
        from sfd.evaluation import adm

        if scoring.oracle:
            raise ValueError("oracle: oracle semantics need held-out semantic latents per sample, which this backend "
                             "does not read; they are implemented by the Fashion-MNIST backend")
        if scoring.average is not None:
            raise ValueError(f"average: scoring a power-EMA width (σ_rel {scoring.average:g}) is implemented by the "
                             "Fashion-MNIST backend; here rebuild it with tools/reconstruct_ema.py --score")
        scores = self.output_dir / "scores" / f"{variant.name}_{step:07d}_{scoring.name}.json"
        if scores.exists():
            return scores_of(json.loads(scores.read_text()))
        npz, nfe = self.sample(variant, step, scoring)
        result: dict[str, float] = {}
        if self.topology.is_main:
            network, network_id = self.feature_network()
            results, report = adm.evaluate(self.reference, npz, network, device=self.device, network_id=network_id)
            adm.write_json(scores, {**report, "nfe": nfe})
            result = scores_of({**asdict(results), "nfe": nfe})
        distributed.barrier()
        return result

    def sample(self, variant: Variant, step: int, scoring: Scoring) -> tuple[Path, float]:
        """``samples`` images of the EMA weights at ``step`` (class-balanced, or all with the null label when
        ``scoring`` is unconditional), as a folder of PNGs and its .npz; returns the .npz and the mean NFE per
        batch (NaN when the folder was complete already)."""
        from sfd.build import build_model
        from sfd.checkpoint import load_weights
        from sfd.config import resolve_path
        from sfd.device import Accelerator, set_matmul_precision
        from sfd.generate import ImageSampler, LabelPlan, LatentDecoder, write_fid_set
        from sfd.tokenizers.texture_vae import load_texture_vae

        config = self.config(variant, scoring=scoring)
        folder = self.output_dir / "samples" / f"{variant.name}_{step:07d}_{scoring.name}"
        npz = folder.parent / f"{folder.name}.npz"  # not with_suffix: names hold dots (dt0.3)
        if npz.exists():
            return npz, float("nan")
        model = build_model(config)
        checkpoint = self.output_dir / "runs" / variant.name / "checkpoints" / f"{step:07d}.pt"
        load_weights(model, checkpoint, prefer="ema")
        vae = load_texture_vae(resolve_path(config.vae.config_path, self.config_path), device=self.device)
        seed = self.seed + variant.repeat
        # the release's sampling numerics (fp32 with TF32 matmuls on CUDA; plain fp32 where no such switch exists)
        precision = Accelerator.of(self.device).effective_precision("tf32")
        set_matmul_precision(precision)
        sampler = ImageSampler(model.to(self.device).eval(), config, LatentDecoder(vae, config, self.device),
                               device=self.device, seed=seed, precision=precision)
        plan = LabelPlan(config.sample.fid_num, config.data.num_classes, balanced=config.sample.balanced_sampling,
                         seed=seed,
                         fixed=None if scoring.conditional else config.data.num_classes)
        write_fid_set(sampler, plan, folder, batch_size=config.sample.per_proc_batch_size, topology=self.topology,
                      provenance={"checkpoint": str(checkpoint), "device": self.device.type})
        return npz, sampler.mean_nfe

    def feature_network(self):
        if self.network is None:
            from sfd.evaluation.inception import load_inception

            self.network, self.network_id = load_inception(self.inception_weights, device=self.device)
        return self.network, self.network_id


def scores_of(results: dict) -> dict[str, float]:
    """The metrics a report tabulates, from an ADM score file or result."""
    return {metric: float(results[metric]) for metric in (*METRICS, "nfe") if metric in results}
