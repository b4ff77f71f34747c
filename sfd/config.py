"""Typed configuration that accepts the official SFD YAML layout unchanged.

A config is a tree of dataclasses. YAML files and ``section.key=value`` overrides are merged onto the defaults with
OmegaConf, so an unknown key or a value of the wrong type fails at load with the key's name. The defaults are the
values the official code uses when a key is absent (docs/method.md §7.1), so a partial official YAML means what it
meant there; keys the release requires have the SFD release value. Each section checks its own keys in its
``validate`` method, next to its fields; the module's ``validate`` runs them all and holds the few rules that span
sections. No other code checks config values.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sfd.files import write_text_atomic
from sfd.lightningdit import REPA_TARGET_DIMS, SIZES, LightningDiTArgs, parse_model_type
from sfd.phema import MAX_SIGMA_REL
from sfd.schedule import SCHEDULE_SHAPES


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the file and key."""


class InertSettingWarning(UserWarning):
    """A release key was set to a value this project does not act on."""


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def require(ok: bool, key: str, message: str, *, source: str = "config") -> None:
    """Raise ConfigError naming ``source`` (the file) and ``key`` unless ``ok``: the one form every validation rule
    takes."""
    if not ok:
        raise _fail(source, key, message)


def require_domains(rows: Sequence[tuple[str, Any, bool, str]], *, source: str) -> None:
    """Numeric settings with a domain, as rows (key, value, value in domain, domain): a value outside it fails here,
    not later in a division or an index."""
    for key, value, ok, domain in rows:
        require(ok, key, f"must be {domain} (got {value})", source=source)


# Keys of the release's layout that are accepted, so that its YAML files load unchanged, but that this project does
# not act on: key → (the value the release's configs use, why it has no effect). Any other value warns once per
# process, naming the key (docs/usage.md §9.3).
INERT_RELEASE_KEYS: dict[str, tuple[Any, str]] = {
    "train.ckpt": (None, "no code of the release reads it; initialise from weights with train.weight_init"),
    "train.load_ckpt": (None, "no code of the release reads it; initialise from weights with train.weight_init"),
    "train.use_checkpoint": (True, "the release only logs it; gradient checkpointing is model.use_checkpoint"),
    "transport.loss_weight": (None, "loss weightings are not implemented; SFD trains with the unweighted "
                                    "velocity loss"),
    "transport.sample_eps": (None, "time clipping is not implemented; sampling times span all of [0, 1]"),
    "transport.train_eps": (None, "time clipping is not implemented; training times span all of [0, 1]"),
    "sample.likelihood": (False, "likelihood evaluation is not implemented"),
}
_warned_keys: set[str] = set()


def warn_inert_keys(config: "SFDConfig", source: str = "config") -> None:
    """Warn (once per key and process) about every key of INERT_RELEASE_KEYS set to another value than the
    release's."""
    for key, (release_value, why) in INERT_RELEASE_KEYS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value != release_value and key not in _warned_keys:
            _warned_keys.add(key)
            warnings.warn(f"{source}: {key}={value!r} has no effect: {why}", InertSettingWarning, stacklevel=3)


@dataclass
class DataConfig:
    data_path: str = ""  # latent shard directory, also holds latents_stats.pt / latents_sv_stats.pt
    fid_reference_file: str = ""  # ADM reference batch (.npz): scripts/sweep.py's default --reference
    valid_path: Optional[str] = None  # held-out latent shards for the validation loss
    image_size: int = 256  # pixels
    num_classes: int = 1000
    num_workers: int = 8
    in_memory: bool = False  # hold every training latent in memory (on the device), batches without shard reads
    latent_norm: bool = False  # standardise texture channels with the dataset stats
    latent_sv_norm: bool = False  # standardise semantic channels with the dataset stats
    latent_multiplier: float = 0.18215  # global latent scale (SFD uses 1.0; 0.18215 is the official default)

    def validate(self, source: str = "config") -> None:
        require(self.num_classes > 0, "data.num_classes", f"must be positive (got {self.num_classes})", source=source)
        require_domains(source=source, rows=(
            ("data.num_workers", self.num_workers, self.num_workers >= 0, ">= 0"),
            ("data.latent_multiplier", self.latent_multiplier, self.latent_multiplier > 0, "> 0"),
        ))


@dataclass
class VAEConfig:
    model_name: str = "sdvae_f16d32"  # texture tokenizer: configs/tokenizer/{model_name}.yaml
    downsample_ratio: int = 16  # latent stride
    config: Optional[str] = None  # explicit texture-VAE YAML (overrides model_name)

    @property
    def config_path(self) -> str:
        return self.config or f"configs/tokenizer/{self.model_name}.yaml"

    def validate(self, source: str = "config") -> None:
        require(self.downsample_ratio > 0, "vae.downsample_ratio", f"must be positive (got {self.downsample_ratio})",
                source=source)


@dataclass
class ModelConfig:
    model_type: str = "LightningDiT-XL/1"  # official registry name, or any name plus depth/hidden_size/num_heads
    depth: Optional[int] = None  # custom size (overrides the registry)
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None  # default: the `/N` suffix of model_type
    mlp_ratio: float = 4.0
    repa_projector_dim: int = 2048  # width of the REPA projector MLP
    class_dropout_prob: float = 0.1  # label dropout in training; > 0 adds the null label `num_classes`
    learn_sigma: bool = False
    use_qknorm: bool = True
    use_swiglu: bool = False
    use_rope: bool = False
    use_rmsnorm: bool = False
    wo_shift: bool = False
    use_checkpoint: bool = False  # gradient checkpointing of the transformer blocks
    in_chans: int = 4  # latent channels: texture first, then the semantic ones
    semantic_chans: int = 0  # trailing semantic channels
    semfirst_delta_t: float = 0.0  # Δt, how far semantics lead texture; 0 = synchronous model
    # The shape of the semantic lead (sfd/schedule.py, docs/method.md §3.4): constant (the release's), shrinking
    # (the lead falls from Δt to 0 at the end) or smooth (no kinks, lead Δt at mid-trajectory); all take Δt.
    semfirst_schedule: str = "constant"
    semantic_weight: float = 1.0  # β, weight of the semantic channels in the velocity MSE
    use_repa: bool = False  # REPA projector and alignment loss
    repa_dino_version: Optional[str] = None  # REPA target encoder; sets the projector output width
    repa_target_dim: Optional[int] = None  # projector output width for a target encoder outside the registry
    repa_feat_depth: Optional[int] = None  # 1-based block whose output the projector reads
    repa_weight: float = 1.0
    repa_mode: str = "cos"  # cos | mse | cos_mse
    semfirst_infer_interval_mode: Optional[str] = None  # both | tex | sem (None behaves as both)

    def sizes(self) -> dict[str, Optional[int]]:
        """depth, hidden_size, num_heads and patch_size: each key that is set, else the registry entry of model_type
        (and the patch of its ``/N`` suffix); None where neither gives one."""
        size, patch = parse_model_type(self.model_type)
        depth, hidden_size, num_heads = SIZES.get(size, (None, None, None))
        return dict(depth=self.depth or depth, hidden_size=self.hidden_size or hidden_size,
                    num_heads=self.num_heads or num_heads, patch_size=self.patch_size or patch)

    def validate(self, source: str = "config") -> None:
        size, _ = parse_model_type(self.model_type)
        custom = None not in (self.depth, self.hidden_size, self.num_heads)
        require(size in SIZES or custom, "model.model_type",
                f"unknown model type {self.model_type!r}; use one of LightningDiT-{{{','.join(SIZES)}}}/{{1,2}} "
                "or give model.depth, model.hidden_size and model.num_heads", source=source)
        sizes = self.sizes()
        require(sizes["patch_size"] is not None, "model.patch_size",
                f"no patch size: set model.patch_size or end model_type with /1 or /2 (got {self.model_type!r})",
                source=source)
        require(not self.use_repa or self.repa_target_dim is not None or self.repa_dino_version in REPA_TARGET_DIMS,
                "model.repa_dino_version", f"unknown REPA target {self.repa_dino_version!r}; known: "
                f"{', '.join(REPA_TARGET_DIMS)} (or set model.repa_target_dim)", source=source)
        for name, value in (*sizes.items(), ("in_chans", self.in_chans)):
            shown = value if value is not None else getattr(self, name)  # a custom size given as 0 resolves to None
            require(value is not None and value > 0, f"model.{name}", f"must be positive (got {shown})", source=source)
        hidden_size, num_heads = sizes["hidden_size"], sizes["num_heads"]
        require(hidden_size % num_heads == 0, "model.hidden_size",
                f"{hidden_size} is not divisible by model.num_heads={num_heads}", source=source)
        require(hidden_size % 4 == 0, "model.hidden_size",
                f"{hidden_size} must be divisible by 4 (2-D sin-cos position table)", source=source)
        require(not self.use_rope or hidden_size // num_heads % 4 == 0, "model.use_rope",
                f"2-D RoPE needs a head dim divisible by 4 (hidden_size/num_heads = {hidden_size // num_heads})",
                source=source)
        require(0 <= self.semantic_chans < self.in_chans, "model.semantic_chans",
                f"must be in [0, in_chans={self.in_chans}) (got {self.semantic_chans})", source=source)
        require(0 <= self.semfirst_delta_t < 1, "model.semfirst_delta_t",
                f"Δt must be in [0, 1) (got {self.semfirst_delta_t})", source=source)
        require(self.semfirst_delta_t == 0 or self.semantic_chans > 0, "model.semfirst_delta_t",
                f"Δt={self.semfirst_delta_t} needs semantic channels (model.semantic_chans is 0)", source=source)
        require(self.semfirst_schedule in SCHEDULE_SHAPES, "model.semfirst_schedule",
                f"must be one of {', '.join(SCHEDULE_SHAPES)} (got {self.semfirst_schedule!r})", source=source)
        require(0 <= self.class_dropout_prob < 1, "model.class_dropout_prob",
                f"must be in [0, 1) (got {self.class_dropout_prob})", source=source)
        require(self.repa_mode in ("cos", "mse", "cos_mse"), "model.repa_mode",
                f"expected cos, mse or cos_mse (got {self.repa_mode!r})", source=source)
        require(self.semfirst_infer_interval_mode in (None, "both", "tex", "sem"), "model.semfirst_infer_interval_mode",
                f"expected both, tex or sem (got {self.semfirst_infer_interval_mode!r})", source=source)
        depth = sizes["depth"]
        require(not self.use_repa or (self.repa_feat_depth is not None and 1 <= self.repa_feat_depth <= depth),
                "model.repa_feat_depth", f"must be a block index in [1, {depth}] (got {self.repa_feat_depth})",
                source=source)
        require_domains(source=source, rows=(
            ("model.mlp_ratio", self.mlp_ratio, self.mlp_ratio > 0, "> 0"),
            ("model.repa_projector_dim", self.repa_projector_dim, self.repa_projector_dim > 0, "> 0"),
            ("model.semantic_weight", self.semantic_weight, self.semantic_weight >= 0, ">= 0"),
            ("model.repa_weight", self.repa_weight, self.repa_weight >= 0, ">= 0"),
        ))


@dataclass
class TrainConfig:
    max_steps: int = 4_000_000
    global_batch_size: int = 256  # split over processes
    global_seed: int = 0
    output_dir: str = "outputs/train"
    exp_name: Optional[str] = None  # run folder {output_dir}/{exp_name}
    ckpt: Optional[str] = None  # read by no code of the release; warns when set (INERT_RELEASE_KEYS)
    log_every: int = 100
    ckpt_every: int = 80_000
    # None: resume from the run folder's latest checkpoint when there is one (rerun = resume); false: refuse to
    # start when the run folder holds checkpoints (choose another exp_name or delete them); true: resume.
    resume: Optional[bool] = None
    load_ckpt: Any = None  # read by no code of the release; warns when set (INERT_RELEASE_KEYS)
    weight_init: Optional[str] = None  # initialise from another checkpoint (every key and shape must match)
    use_checkpoint: bool = True  # only logged by the release (gradient checkpointing is model.use_checkpoint)
    precision: str = "bf16"  # fp32 (or no) | bf16 | fp16 autocast on accelerators (CPU runs in fp32); PRECISION
    ema_decay: float = 0.9999  # EMA of the weights, updated after every optimizer step
    # Regional torch.compile of the repeated blocks (sfd.device.compile_module); None = auto: on for accelerators,
    # off on the CPU.
    compile: Optional[bool] = None
    tensorboard: bool = True  # also log to {run}/tensorboard when tensorboard is installed
    valid_every: int = 10_000  # validation-loss interval in steps (needs data.valid_path)
    valid_items: int = 1000  # held-out latents used for the validation loss
    valid_timesteps: List[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])  # fixed global t
    # Post-hoc EMA (docs/ema.md): power-function EMAs of these relative widths σ_rel (EDM2 tracks 0.05 and 0.10),
    # kept beside the classic EMA and written to {run}/power_ema/ every power_ema_every steps and at the last step,
    # so that any width can be reconstructed after training (tools/reconstruct_ema.py). Empty: off (the release).
    power_ema_sigma_rels: List[float] = field(default_factory=list)
    power_ema_every: int = 20_000  # snapshot interval in steps (5.1 M images at batch 256; EDM2: 8 Mi images)
    # Evaluation during training (sfd/evaluation/sample_scores.py): every eval_every steps (0: off), FID of
    # eval_samples class-balanced samples of the EMA, drawn with the sample.* settings, against
    # data.fid_reference_file, logged to log.jsonl and TensorBoard. It draws nothing from the training's generators.
    eval_every: int = 0
    eval_samples: int = 1000
    eval_inception_weights: Optional[str] = None  # the evaluator's Inception weights file (default: $INCEPTION_WEIGHTS)
    eval_fd_dinov2: bool = False  # also FD_DINOv2 (docs/evaluator.md §13) against the reference images
    eval_dinov2_weights: Optional[str] = None  # DINOv2 ViT-L/14 weights file (default: $DINOV2_WEIGHTS)

    def validate(self, source: str = "config") -> None:
        require(self.global_batch_size > 0, "train.global_batch_size", "must be positive", source=source)
        require(self.precision in ("no", "fp32", "bf16", "fp16"), "train.precision",
                f"expected fp32 (or no), bf16 or fp16 (got {self.precision!r})", source=source)
        require(0 <= self.ema_decay <= 1, "train.ema_decay", f"must be in [0, 1] (got {self.ema_decay})",
                source=source)
        for name in ("max_steps", "log_every", "ckpt_every", "valid_every", "power_ema_every"):
            value = getattr(self, name)
            require(value > 0, f"train.{name}", f"must be positive (got {value})", source=source)
        require(all(0 <= t <= 1 for t in self.valid_timesteps), "train.valid_timesteps", "values must be in [0, 1]",
                source=source)
        require_domains(source=source, rows=(
            ("train.valid_items", self.valid_items, self.valid_items > 0, "> 0"),
            ("train.eval_every", self.eval_every, self.eval_every >= 0, ">= 0 (0: no evaluation during training)"),
            ("train.eval_samples", self.eval_samples, self.eval_samples >= 2, ">= 2 (a covariance needs two)"),
            *(("train.power_ema_sigma_rels", sigma, 0 < sigma <= MAX_SIGMA_REL, f"in (0, 1/sqrt(12) = "
               f"{MAX_SIGMA_REL:.4f}] (1/sqrt(12) is the uniform average)") for sigma in self.power_ema_sigma_rels),
        ))
        require(len(set(self.power_ema_sigma_rels)) == len(self.power_ema_sigma_rels), "train.power_ema_sigma_rels",
                f"widths must be distinct (got {list(self.power_ema_sigma_rels)})", source=source)


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # AdamW decoupled weight decay (the release: 0)
    warmup_steps: int = 0  # linear warm-up from 0 to lr (the release: none)
    max_grad_norm: Optional[float] = None  # gradient clipping when set

    def validate(self, source: str = "config") -> None:
        require(self.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0", source=source)
        require_domains(source=source, rows=(
            ("optimizer.lr", self.lr, self.lr > 0, "> 0"),
            ("optimizer.beta1", self.beta1, 0 <= self.beta1 < 1, "in [0, 1)"),
            ("optimizer.beta2", self.beta2, 0 <= self.beta2 < 1, "in [0, 1)"),
            ("optimizer.eps", self.eps, self.eps > 0, "> 0"),
            ("optimizer.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
            ("optimizer.max_grad_norm", self.max_grad_norm, self.max_grad_norm is None or self.max_grad_norm > 0,
             "> 0 (or null: no clipping)"),
        ))


@dataclass
class TransportConfig:
    path_type: str = "Linear"  # the linear path x_t = t·x1 + (1-t)·x0 (only this one is implemented)
    prediction: str = "velocity"  # only velocity prediction is implemented
    loss_weight: Optional[str] = None  # not implemented (SFD trains unweighted); warns when set
    sample_eps: Optional[float] = None  # not implemented (times span all of [0, 1]); warns when set
    train_eps: Optional[float] = None  # not implemented (times span all of [0, 1]); warns when set
    use_cosine_loss: bool = False  # add 1 - cos(v, u) over channels
    use_lognorm: bool = False  # logit-normal t (else uniform)

    def validate(self, source: str = "config") -> None:
        require(self.path_type == "Linear", "transport.path_type",
                f"only 'Linear' is implemented, the path every SFD release uses (got {self.path_type!r})",
                source=source)
        require(self.prediction == "velocity", "transport.prediction",
                f"only 'velocity' is implemented, as in every SFD release (got {self.prediction!r})", source=source)


@dataclass
class SampleConfig:
    mode: str = "ODE"  # ODE | SDE
    sampling_method: str = "dopri5"  # euler | heun | any torchdiffeq method (dopri5, rk4, ...)
    atol: float = 1e-6
    rtol: float = 1e-3
    reverse: bool = False  # must be false (the release's reverse path is broken)
    likelihood: bool = False  # likelihood evaluation is not implemented; warns when true
    num_sampling_steps: int = 250  # grid points (dopri5: output points only)
    cfg_scale: float = 1.0  # guidance scale; guidance is used only when > 1
    cfg_scale_sem: Optional[float] = None  # AutoGuidance scale of the semantic channels (default cfg_scale)
    cfg_scale_tex: Optional[float] = None  # AutoGuidance scale of the texture channels (default cfg_scale)
    per_proc_batch_size: int = 4
    fid_num: int = 50_000
    cfg_interval_start: float = 0.0  # guidance off while a group's time is below this
    timestep_shift: float = 0.0  # 0 = off; s < 1 makes steps denser near noise
    balanced_sampling: bool = False  # fid_num // num_classes samples per class
    autoguidance: bool = False  # guide with a small model instead of the null label
    autoguidance_config: Optional[str] = None  # guide's YAML (its ckpt_path and model build the guide)
    class_label: Optional[int] = None  # fixed label for all samples (num_classes = unconditional)
    diffusion_form: str = "sigma"  # SDE diffusion coefficient w(t)
    diffusion_norm: float = 1.0  # SDE diffusion scale
    # sfd extension: restart the ODE solver where the three-phase drift jumps (τ = Δt and τ = 1). Adaptive solvers
    # integrate each phase separately; fixed grids (euler, heun) put grid points on both boundaries. Off reproduces
    # the release (docs/method.md §5.5).
    phase_split: bool = False

    def validate(self, source: str = "config") -> None:
        require(self.mode in ("ODE", "SDE"), "sample.mode", f"expected ODE or SDE (got {self.mode!r})", source=source)
        require(not self.reverse, "sample.reverse", "reverse (data -> noise) integration is not supported",
                source=source)
        require(self.num_sampling_steps >= 2, "sample.num_sampling_steps",
                f"need at least 2 grid points (got {self.num_sampling_steps})", source=source)
        require(self.timestep_shift >= 0, "sample.timestep_shift", f"must be >= 0 (got {self.timestep_shift})",
                source=source)
        require(not (self.phase_split and self.mode == "SDE"), "sample.phase_split",
                "phase-aware integration is for the ODE samplers (sample.mode: ODE)", source=source)
        require(not self.autoguidance or bool(self.autoguidance_config), "sample.autoguidance_config",
                "sample.autoguidance is true but no guide config is given", source=source)
        require_domains(source=source, rows=(
            ("sample.per_proc_batch_size", self.per_proc_batch_size, self.per_proc_batch_size > 0, "> 0"),
            ("sample.fid_num", self.fid_num, self.fid_num > 0, "> 0"),
            ("sample.atol", self.atol, self.atol > 0, "> 0"),
            ("sample.rtol", self.rtol, self.rtol > 0, "> 0"),
            ("sample.cfg_scale", self.cfg_scale, self.cfg_scale >= 0, ">= 0"),
            ("sample.cfg_scale_sem", self.cfg_scale_sem, self.cfg_scale_sem is None or self.cfg_scale_sem >= 0,
             ">= 0 (or null: cfg_scale)"),
            ("sample.cfg_scale_tex", self.cfg_scale_tex, self.cfg_scale_tex is None or self.cfg_scale_tex >= 0,
             ">= 0 (or null: cfg_scale)"),
            ("sample.cfg_interval_start", self.cfg_interval_start, 0 <= self.cfg_interval_start <= 1, "in [0, 1]"),
            ("sample.diffusion_norm", self.diffusion_norm, self.diffusion_norm >= 0, ">= 0"),
        ))


@dataclass
class SFDConfig:
    ckpt_path: str = ""  # checkpoint for inference
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def merge_layer(base: Any, layer: Any, source: str) -> Any:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = str(error).splitlines()[0]
        raise _fail(source, key, message) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file as plain Python data (OmegaConf's YAML rules: ``5e-5`` is a float); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return OmegaConf.to_container(OmegaConf.create(path.read_text() or "{}"), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).strip().splitlines()[0]})") from None


def load_structured(schema: type, path: str | Path | None, overrides: Sequence[str] = (),
                    adapt: Callable[[Any, str], Any] = lambda raw, source: raw) -> Any:
    """The one way configs are read: ``schema``'s defaults ← the YAML at ``path`` (``adapt`` may reshape it) ←
    ``section.key=value`` overrides, interpolations resolved, as a dataclass instance. Any unknown key, wrong type or
    unresolvable value raises ConfigError with one line naming the file (or override) and the key."""
    merged = OmegaConf.structured(schema)
    source = "config"
    if path is not None:
        source = str(path)
        raw = adapt(read_yaml(path), source)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        merged = merge_layer(merged, OmegaConf.create(raw or {}), source)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        merged = merge_layer(merged, OmegaConf.from_dotlist([item]), f"override {item!r}")
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:  # e.g. an interpolation that does not resolve
        raise _fail(source, getattr(error, "full_key", None) or "?", str(error).splitlines()[0]) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SFDConfig:
    """Load an official-layout YAML (or only the defaults when ``path`` is None), apply ``section.key=value``
    overrides and validate. Raises ConfigError with one line naming the file and key on any problem."""
    if path is not None and Path(path).is_file() and not read_yaml(path):
        raise ConfigError(f"{path}: the file is empty (for the defaults alone, load no file: load_config(None))")
    config = load_structured(SFDConfig, path, overrides)
    if config.train.precision == "False":  # YAML reads a bare `no` (train.precision=no) as false, stored as "False"
        config.train.precision = "no"
    validate(config, source=str(path) if path is not None else "config")
    warn_inert_keys(config, source=str(path) if path is not None else "config")
    return config


def config_to_dict(config: SFDConfig) -> dict:
    """Plain nested dict (what checkpoints and run folders store instead of a pickled object)."""
    return dataclasses.asdict(config)


def save_config(config: SFDConfig, path: str | Path) -> None:
    """Write the resolved config as YAML atomically (temp file, then rename)."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def resolve_path(path: str, config_path: str | Path | None) -> Path:
    """Paths in configs are relative to the working directory (official layout) or, failing that, to the
    config's own folder (self-contained configs such as the golden ones)."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists() or config_path is None:
        return candidate
    beside = Path(config_path).parent / candidate
    return beside if beside.exists() else candidate


def model_args(config: SFDConfig) -> LightningDiTArgs:
    """The network's architecture from a validated config. Every LightningDiTArgs field named like a ModelConfig field
    takes that field's value, except the renamed or derived ones written out here; a field the config does not set
    keeps LightningDiTArgs' default."""
    model = config.model
    derived = dict(
        model.sizes(),  # the keys that are set, else the registry's
        input_size=config.data.image_size // config.vae.downsample_ratio,  # the latent side
        num_classes=config.data.num_classes,
        semantic_first=model.semfirst_delta_t > 0 and model.semantic_chans > 0,  # two time embedders
        # the projector's output width (None: no projector): set explicitly, else the target encoder's
        repa_target_dim=(model.repa_target_dim or REPA_TARGET_DIMS[model.repa_dino_version]) if model.use_repa
        else None,
        repa_feat_depth=model.repa_feat_depth or 0,  # read only with a REPA projector
    )
    values = {**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)}, **derived}
    names = [f.name for f in dataclasses.fields(LightningDiTArgs)]
    return LightningDiTArgs(**{name: values[name] for name in names if name in values})


def validate(config: SFDConfig, source: str = "config") -> None:
    """Every section's own rules (its ``validate``), then the rules that span sections. Raises ConfigError naming the
    offending key."""
    for key in dataclasses.fields(config):  # every section (ckpt_path is a plain key)
        section = getattr(config, key.name)
        if dataclasses.is_dataclass(section):
            section.validate(source)
    data, vae, sample = config.data, config.vae, config.sample
    require(data.image_size % vae.downsample_ratio == 0, "data.image_size",
            f"{data.image_size} is not divisible by vae.downsample_ratio={vae.downsample_ratio}", source=source)
    args = model_args(config)
    require(args.input_size % args.patch_size == 0, "model.patch_size",
            f"latent side {args.input_size} is not divisible by patch size {args.patch_size}", source=source)
    require(sample.class_label is None or 0 <= sample.class_label <= data.num_classes, "sample.class_label",
            f"must be in [0, {data.num_classes}] (got {sample.class_label})", source=source)
