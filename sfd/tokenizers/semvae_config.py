"""The Semantic VAE training config: the official ``tokenizer/configs/semvae_train/*.yaml`` layout, typed.

Sections are dataclasses merged from YAML and ``section.key=value`` overrides (sfd.config.load_structured), so an
unknown key or a wrong type fails at load with its name; each section checks its own values next to its fields
(``validate``, through sfd.config.require). A few keys are added for what the release hard-codes
(``training.seed``, ``training.loss.cosine_axis``, ``training.optimizer.weight_decay``, ...; docs/semvae.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from sfd.config import load_structured, require
from sfd.tokenizers.semvae import SemVAEArgs

# Feature width of each encoder name the official trainer knows (train.py looks input_dim up by data.model_name).
INPUT_DIMS = {"dinov2_vits14_reg": 384, "dinov2_vitb14_reg": 768, "dinov2_vitl14_reg": 1024,
              "dinov2_vitg14_reg": 1536, "mae_base": 768, "mae_large": 1024, "clip_vit_base_patch16": 768,
              "clip_vit_large_patch14": 1024, "siglip_base_patch16_224": 768}


@dataclass
class ModelParams:
    hidden_dim: int = 768  # E, transformer width
    transformer_heads: int = 6
    transformer_blocks: int = 4  # per side (encoder and decoder)

    def validate(self, source: str) -> None:
        for name in ("hidden_dim", "transformer_heads", "transformer_blocks"):
            value = getattr(self, name)
            require(value > 0, f"model.params.{name}", f"must be positive (got {value})", source=source)
        require(self.hidden_dim % self.transformer_heads == 0, "model.params.hidden_dim",
                f"{self.hidden_dim} is not divisible by transformer_heads={self.transformer_heads}", source=source)


@dataclass
class ModelSection:
    variational: bool = True  # only the variational model is released (and implemented)
    bottleneck_dim: int = 16  # C, latent channels
    arch: str = "transformer"  # only the released transformer arch is implemented
    params: ModelParams = field(default_factory=ModelParams)
    input_dim: Optional[int] = None  # D; null: INPUT_DIMS[data.model_name], else the width of the features

    def validate(self, source: str) -> None:
        require(self.arch == "transformer", "model.arch",
                f"only 'transformer' (the released arch) is implemented, got {self.arch!r}", source=source)
        require(self.variational, "model.variational", "only the variational model is implemented", source=source)
        require(self.bottleneck_dim > 0, "model.bottleneck_dim", f"must be positive (got {self.bottleneck_dim})",
                source=source)
        self.params.validate(source)
        require(self.input_dim is None or self.input_dim > 0, "model.input_dim",
                f"must be positive (got {self.input_dim})", source=source)


@dataclass
class DataSection:
    # A folder of *.safetensors shards, or the official {feature_dir}/{model_name}/features_{N}samples.safetensors.
    feature_dir: str = "outputs/dataset/imagenet-dinov2/train"
    model_name: str = "dinov2_vitb14_reg"  # feature extractor; names the official file's folder and sets input_dim
    max_samples: Optional[int] = 1_281_167  # use the first N samples (null: all); names the official file
    batch_size: int = 64
    num_workers: int = 4  # DataLoader reader processes (the data itself is deterministic)
    shuffle: bool = True  # seeded permutation per epoch (training.seed, epoch)

    def validate(self, source: str) -> None:
        require(self.batch_size > 0, "data.batch_size", f"must be positive (got {self.batch_size})", source=source)
        require(self.max_samples is None or self.max_samples > 0, "data.max_samples",
                f"must be positive or null (got {self.max_samples})", source=source)
        require(self.num_workers >= 0, "data.num_workers", f"must be >= 0 (got {self.num_workers})", source=source)


@dataclass
class OptimizerSection:
    type: str = "AdamW"  # only AdamW is implemented (the release's choice)
    lr: float = 5e-5  # base learning rate
    weight_decay: float = 0.01  # PyTorch's AdamW default, applied to every parameter as in the release
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])

    def validate(self, source: str) -> None:
        require(self.lr > 0, "training.optimizer.lr", f"must be positive (got {self.lr})", source=source)
        require(self.type == "AdamW", "training.optimizer.type",
                f"only AdamW (the release's optimizer) is implemented, got {self.type!r}", source=source)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "training.optimizer.betas",
                f"expected two values in [0, 1) (got {list(self.betas)})", source=source)
        require(self.weight_decay >= 0, "training.optimizer.weight_decay", "must be >= 0", source=source)


@dataclass
class SchedulerSection:
    warmup_steps: int = 500  # linear 0.01·lr → lr
    constant_steps: int = 800_000  # then lr held constant
    min_lr_factor: float = 0.1  # then cosine to min_lr_factor·lr at training.total_iterations

    def validate(self, source: str) -> None:
        require(self.warmup_steps >= 0 and self.constant_steps >= 0, "training.scheduler",
                "warmup_steps and constant_steps must be >= 0", source=source)
        require(0 <= self.min_lr_factor <= 1, "training.scheduler.min_lr_factor", "must be in [0, 1]", source=source)


@dataclass
class LossSection:
    mse_weight: float = 1.0
    cos_weight: float = 1.0
    l1_weight: float = 0.0
    kl_weight: float = 1e-7  # on the batch mean of per-sample KL sums (docs/semvae.md §3.3)
    classification_weight: float = 0.0  # the release disables its classification head; must stay 0
    # tokens: the release's cosine over the token axis (docs/semvae.md §3.2); features: per token
    cosine_axis: str = "tokens"

    def validate(self, source: str) -> None:
        require(self.cosine_axis in ("tokens", "features"), "training.loss.cosine_axis",
                f"expected tokens (the release) or features (got {self.cosine_axis!r})", source=source)
        require(self.classification_weight == 0, "training.loss.classification_weight",
                "the classification head is not implemented (the release trains with weight 0)", source=source)
        for name in ("mse_weight", "cos_weight", "l1_weight", "kl_weight"):
            value = getattr(self, name)
            require(value >= 0, f"training.loss.{name}", f"must be >= 0 (got {value})", source=source)


@dataclass
class CheckpointingSection:
    save_every: int = 100_000  # steps between checkpoints (resume continues from the highest step)
    checkpoint_dir: str = "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16/checkpoints"

    def validate(self, source: str) -> None:
        require(self.save_every > 0, "training.checkpointing.save_every", f"must be positive (got {self.save_every})",
                source=source)


@dataclass
class EvaluationSection:
    feature_dir: Optional[str] = "outputs/dataset/imagenet-dinov2/val"  # held-out features; null: no evaluation
    model_name: str = "dinov2_vitb14_reg"
    max_samples: Optional[int] = 500  # the first N held-out samples
    batch_size: int = 64
    eval_every: int = 2000  # steps; also before the first and after the last step
    output_dir: str = "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16/eval"  # eval_log.jsonl

    def validate(self, source: str) -> None:
        key = "training.evaluation"
        require(self.batch_size > 0, f"{key}.batch_size", f"must be positive (got {self.batch_size})", source=source)
        require(self.eval_every > 0, f"{key}.eval_every", f"must be positive (got {self.eval_every})", source=source)
        require(self.max_samples is None or self.max_samples > 0, f"{key}.max_samples",
                f"must be positive or null (got {self.max_samples})", source=source)


@dataclass
class LogSection:
    log_dir: str = "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16"  # config.yaml, train_log.jsonl
    log_every: int = 100  # steps between log lines
    swandb_exp_name: str = "arch_transformer_ch16"  # run name (the release's SwanLab name; our TensorBoard subfolder)
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)

    def validate(self, source: str) -> None:
        require(self.log_every > 0, "training.log.log_every", f"must be positive (got {self.log_every})",
                source=source)


@dataclass
class TrainingSection:
    mixed_precision: str = "bf16"  # bf16: autocast on accelerators (CPU runs fp32, bf16 is far slower there) | no
    max_epochs: int = 10_000_000_000
    total_iterations: int = 1_000_000  # optimizer steps
    checkpoint_path: str = ""  # start from this checkpoint (official or ours) when checkpoint_dir holds none
    seed: int = 0  # weight init, posterior noise and data order
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    loss: LossSection = field(default_factory=LossSection)
    checkpointing: CheckpointingSection = field(default_factory=CheckpointingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    log: LogSection = field(default_factory=LogSection)

    def validate(self, source: str) -> None:
        for name in ("total_iterations", "max_epochs"):
            value = getattr(self, name)
            require(value > 0, f"training.{name}", f"must be positive (got {value})", source=source)
        require(self.mixed_precision in ("bf16", "no"), "training.mixed_precision",
                f"expected bf16 or no (got {self.mixed_precision!r})", source=source)
        for section in (self.optimizer, self.scheduler, self.loss, self.checkpointing, self.evaluation, self.log):
            section.validate(source)


@dataclass
class SemVAETrainConfig:
    # Free-form values other keys interpolate, e.g. ${variables.bottleneck_dim} (official layout).
    variables: Dict[str, Any] = field(default_factory=lambda: {
        "output_root": "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16", "bottleneck_dim": 16,
        "model_name": "dinov2_vitb14_reg"})
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)

    def validate(self, source: str = "config") -> None:
        """Every rule on the values, each section checking its own keys; raises ConfigError naming the key."""
        self.model.validate(source)
        self.data.validate(source)
        self.training.validate(source)


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SemVAETrainConfig:
    """An official-layout SemVAE YAML (or the defaults, the released recipe) with ``section.key=value`` overrides,
    interpolations resolved and validated. Raises ConfigError with one line naming the file and key."""
    config = load_structured(SemVAETrainConfig, path, overrides)
    source = str(path) if path is not None else "config"
    config.validate(source)
    return config


def config_yaml(config: SemVAETrainConfig) -> str:
    """The resolved config as YAML (stored as the ``config`` string of checkpoints, like the release)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def semvae_args(config: SemVAETrainConfig, input_dim: int) -> SemVAEArgs:
    params = config.model.params
    return SemVAEArgs(input_dim=input_dim, bottleneck_dim=config.model.bottleneck_dim, hidden_dim=params.hidden_dim,
                      transformer_heads=params.transformer_heads, transformer_blocks=params.transformer_blocks)


def configured_input_dim(config: SemVAETrainConfig) -> Optional[int]:
    """D from the config: model.input_dim, else the official table by data.model_name, else unknown (None)."""
    return config.model.input_dim or INPUT_DIMS.get(config.data.model_name)
