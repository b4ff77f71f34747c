"""Training the Semantic VAE on pre-extracted DINOv2 patch tokens (docs/semvae.md §2).

The recipe is the release's: AdamW (lr 5e-5, weight decay 0.01), warm-up / constant / cosine learning rate,
loss = MSE + cosine + 1e-7·KL on the reconstruction of a posterior *sample*, bf16 autocast on accelerators, batch 64.
What the release leaves to chance is made reproducible here: the weight init, the posterior noise and the data
order come from seeded ``torch.Generator``s, and a checkpoint holds everything a run depends on (weights, optimizer,
step, noise-generator state, data position, loss averages), so rerunning the same command after a crash continues
with exactly the batches, noise and losses of an uninterrupted run.

The trainer has the shape every trainer of the project shares (sfd/training_loop.py): a step object
(:class:`SemVAEStep`), the run-folder services (one live run per log folder, fallback past a truncated or foreign
newest checkpoint) and the loop. Config files use the official ``tokenizer/configs/semvae_train/*.yaml`` layout
unchanged (the typed schema: sfd/tokenizers/semvae_config.py). Features are read lazily from safetensors files
(memory-mapped), so memory stays bounded for the 504 GB ImageNet feature set (docs/semvae.md §3.5).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sfd.checkpoint import (
    CheckpointError,
    atomic_save,
    check_optimizer_state,
    choose_checkpoint,
    explain_mismatch,
    read_file,
)
from sfd.config import ConfigError
from sfd.device import Accelerator, default_device
from sfd.files import write_text_atomic
from sfd.rng import derive_seed
from sfd.runlock import owned_folder
from sfd.tokenizers.semvae import SemanticVAE, grid_side, init_weights
from sfd.tokenizers.semvae_config import (  # noqa: F401  (load_train_config and the helpers are used from here)
    LossSection,
    SemVAETrainConfig,
    TrainingSection,
    config_yaml,
    configured_input_dim,
    load_train_config,
    semvae_args,
)
from sfd.training_loop import Every, RunLog, run_steps

CHECKPOINT_PATTERN = re.compile(r"^semantic_ae_checkpoint_step_(\d+)\.pt$")
CHECKPOINT_NAME = "semantic_ae_checkpoint_step_{}.pt"
FINAL_NAME = "semantic_ae_final.pt"


class DataError(ValueError):
    """Feature files that cannot be used; the message is one line naming the file."""


# ------------------------------------------------------------------------------------------------ loss and schedule

@dataclass
class SemVAELossTerms:
    total: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor
    cos: torch.Tensor  # 1 − mean cosine similarity along the configured axis
    kl: torch.Tensor  # batch mean of per-sample KL sums


class SemVAELoss:
    """total = w_mse·MSE + w_l1·L1 + w_cos·(1 − cos) + w_kl·KL (docs/semvae.md §2.3), all in fp32 on the reconstruction
    of a posterior sample. ``cosine_axis='tokens'`` is the release's ``F.cosine_similarity(recon, x)`` with its default
    dim=1, i.e. over the L tokens of each (sample, feature channel); ``'features'`` is the per-token cosine over the
    D features, the quantity the release's evaluation reports (docs/semvae.md §3.2)."""

    def __init__(self, mse_weight: float = 1.0, cos_weight: float = 1.0, l1_weight: float = 0.0,
                 kl_weight: float = 1e-7, cosine_axis: str = "tokens") -> None:
        if cosine_axis not in ("tokens", "features"):
            raise ValueError(f"SemVAELoss: cosine_axis must be tokens or features (got {cosine_axis!r})")
        self.weights = (mse_weight, cos_weight, l1_weight, kl_weight)
        self.cosine_dim = 1 if cosine_axis == "tokens" else -1

    @classmethod
    def from_config(cls, loss: LossSection) -> "SemVAELoss":
        return cls(loss.mse_weight, loss.cos_weight, loss.l1_weight, loss.kl_weight, loss.cosine_axis)

    def __call__(self, target: torch.Tensor, recon: torch.Tensor, kl_per_sample: torch.Tensor) -> SemVAELossTerms:
        target, recon, kl_per_sample = target.float(), recon.float(), kl_per_sample.float()
        mse = F.mse_loss(recon, target)
        l1 = F.l1_loss(recon, target)
        cos = 1 - F.cosine_similarity(recon, target, dim=self.cosine_dim).mean()
        kl = kl_per_sample.mean()
        w_mse, w_cos, w_l1, w_kl = self.weights
        return SemVAELossTerms(total=w_mse * mse + w_l1 * l1 + w_cos * cos + w_kl * kl, mse=mse, l1=l1, cos=cos, kl=kl)


def token_cosine(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each token's D features, [B, L]; its mean is the release's eval metric (train.py:72-74)."""
    return F.cosine_similarity(recon.float(), target.float(), dim=-1)


@dataclass(frozen=True)
class LRSchedule:
    """The release's three phases (SequentialLR of LinearLR, ConstantLR, CosineAnnealingLR; docs/semvae.md §2.2), as the
    closed form of the learning rate used by 0-based optimizer step ``step``:
    warm-up lr·(0.01 + 0.99·step/warmup); then lr for ``constant`` steps; then
    lr·(m + (1 − m)·(1 + cos(π·k/T))/2) with k = step − warmup − constant, T = total − warmup − constant.
    The release steps the PyTorch schedulers recursively; the closed form agrees to 2e-12 relative."""

    base_lr: float
    warmup: int
    constant: int
    total: int
    min_lr_factor: float = 0.1

    @classmethod
    def from_config(cls, training: TrainingSection) -> "LRSchedule":
        return cls(training.optimizer.lr, training.scheduler.warmup_steps, training.scheduler.constant_steps,
                   training.total_iterations, training.scheduler.min_lr_factor)

    def __call__(self, step: int) -> float:
        warmup = max(self.warmup, 1)  # the release turns a warm-up of 0 into 1 step
        cosine = max(self.total - warmup - self.constant, 1)  # ... and a cosine phase of <= 0 steps into 1
        if step < warmup:
            return self.base_lr * (0.01 + 0.99 * step / warmup)
        if step < warmup + self.constant:
            return self.base_lr
        k = step - warmup - self.constant
        floor = self.min_lr_factor
        return self.base_lr * (floor + (1 - floor) * (1 + math.cos(math.pi * k / cosine)) / 2)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self, step: int) -> dict:
        """What the official ``scheduler_state_dict`` slot holds for us: the schedule and its position."""
        return {"last_epoch": step, "_last_lr": [self(step)], "base_lrs": [self.base_lr], "warmup_steps": self.warmup,
                "constant_steps": self.constant, "total_iterations": self.total, "min_lr_factor": self.min_lr_factor}


# ------------------------------------------------------------------------------------------------ features

class FeatureBatch(NamedTuple):
    tokens: torch.Tensor  # [b, L, D] fp32
    labels: Optional[torch.Tensor]  # [b] int64 when every file has `labels` or `class_indices`


def feature_files(feature_dir: str, model_name: str, max_samples: Optional[int], key: str) -> List[Path]:
    """The files of a feature set: the official single file ``{dir}/{model_name}/features_{N}samples.safetensors``,
    ``dir`` itself when it is a file, else every ``*.safetensors`` in ``dir`` (or ``dir/model_name``), sorted."""
    root = Path(feature_dir)
    official = root / model_name / f"features_{max_samples}samples.safetensors"
    if official.is_file():
        return [official]
    if root.is_file():
        return [root]
    for folder in (root, root / model_name):
        shards = sorted(folder.glob("*.safetensors"))
        if shards:
            return shards
    raise DataError(f"{key}: no features in {root} (looked for {official} and *.safetensors in {root} "
                    f"and {root / model_name})")


class FeatureShards(Dataset):
    """Patch tokens of one or more safetensors files, read lazily through memory maps (``get_slice``).

    Each file holds ``patch_tokens`` [n, L, D] (fp16 in the release) and optionally ``labels`` or
    ``class_indices`` [n]; other keys (``cls_tokens``, ``patch_avg``) are ignored. The samples of all files form
    one global index in file order; ``max_samples`` keeps the first N. An item is a *list* of global indices and
    yields a whole batch, so a DataLoader with ``batch_size=None`` reads batches in worker processes.
    """

    def __init__(self, files: Sequence[Path], max_samples: Optional[int] = None) -> None:
        from safetensors import safe_open

        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("FeatureShards: no feature files given")
        sizes, self.label_keys, shape = [], [], None
        for path in self.files:
            with safe_open(str(path), "pt") as handle:
                keys = set(handle.keys())
                if "patch_tokens" not in keys:
                    raise DataError(f"{path}: no 'patch_tokens' tensor (keys: {', '.join(sorted(keys)) or 'none'})")
                file_shape = tuple(handle.get_slice("patch_tokens").get_shape())
                label_key = next((k for k in ("labels", "class_indices") if k in keys), None)
                if label_key and tuple(handle.get_slice(label_key).get_shape()) != file_shape[:1]:
                    raise DataError(f"{path}: {label_key} has shape {handle.get_slice(label_key).get_shape()}, "
                                    f"expected [{file_shape[0]}]")
            if len(file_shape) != 3:
                raise DataError(f"{path}: patch_tokens has shape {list(file_shape)}, expected [n, L, D]")
            if shape is not None and file_shape[1:] != shape:
                raise DataError(f"{path}: patch_tokens is [n, {file_shape[1]}, {file_shape[2]}] but "
                                f"{self.files[0]} has [n, {shape[0]}, {shape[1]}]")
            shape = file_shape[1:]
            sizes.append(file_shape[0])
            self.label_keys.append(label_key)
        self.tokens_per_sample, self.dim = shape
        grid_side(self.tokens_per_sample)
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.length = min(self.offsets[-1], max_samples) if max_samples else self.offsets[-1]
        if self.length == 0:
            raise DataError(f"{self.files[0]}: the feature set is empty")
        self._handles: dict = {}

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        # Open files are not picklable; each DataLoader worker reopens them.
        return {**self.__dict__, "_handles": {}}

    def _handle(self, file: int):
        from safetensors import safe_open

        if file not in self._handles:
            self._handles[file] = safe_open(str(self.files[file]), "pt")
        return self._handles[file]

    def _runs(self, indices: Sequence[int]) -> Iterator[tuple[int, int, int]]:
        """(file, first, stop) runs of consecutive indices within one file, in the given order."""
        run = None
        for index in indices:
            if not 0 <= index < self.length:
                raise IndexError(f"FeatureShards: index {index} out of range [0, {self.length})")
            file = bisect.bisect_right(self.offsets, index) - 1
            local = index - self.offsets[file]
            if run is not None and run[0] == file and run[2] == local:
                run = (file, run[1], local + 1)
                continue
            if run is not None:
                yield run
            run = (file, local, local + 1)
        if run is not None:
            yield run

    def __getitem__(self, indices: Sequence[int]) -> FeatureBatch:
        tokens, labels = [], []
        with_labels = all(self.label_keys)
        for file, first, stop in self._runs(indices):
            handle = self._handle(file)
            tokens.append(handle.get_slice("patch_tokens")[first:stop])
            if with_labels:
                labels.append(handle.get_slice(self.label_keys[file])[first:stop])
        return FeatureBatch(torch.cat(tokens).float(), torch.cat(labels).long() if with_labels else None)


def open_features(feature_dir: str, model_name: str, max_samples: Optional[int], key: str) -> FeatureShards:
    return FeatureShards(feature_files(feature_dir, model_name, max_samples, key), max_samples)


# The random streams of a SemVAE training run; each gets its own seed, derive_seed(seed, stream, index).
SEED_STREAMS = {"init": 0, "noise": 1, "epoch": 2}


def seeded_generator(seed: int, purpose: str, index: int = 0) -> torch.Generator:
    """A CPU generator for one purpose of :data:`SEED_STREAMS` (``index``: e.g. the epoch), seeded by
    :func:`sfd.rng.derive_seed`, so the streams of different purposes never coincide."""
    return torch.Generator().manual_seed(derive_seed(seed, SEED_STREAMS[purpose], index))


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch: a permutation drawn from a generator seeded by (seed, epoch), so any epoch
    can be rebuilt on resume without stored state; identity order without shuffling."""
    if not shuffle:
        return torch.arange(size)
    return torch.randperm(size, generator=seeded_generator(seed, "epoch", epoch))


# ------------------------------------------------------------------------------------------------ evaluation

@dataclass
class EvalResult:
    mse: float  # mean squared error over all elements
    cosine_per_token: float  # mean per-token cosine similarity over D (the release's eval metric)
    kl: float  # mean per-sample KL sum
    samples: int


@torch.no_grad()
def evaluate(model: SemanticVAE, data: FeatureShards, batch_size: int, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None) -> EvalResult:
    """Reconstruction quality from the posterior *mean*, so it is deterministic (the release samples here too).
    Averages run over every element / token / sample, not over batch means."""
    was_training = model.training
    model.eval()
    squared = cosine = kl = 0.0
    for start in range(0, len(data), batch_size):
        target = data[range(start, min(start + batch_size, len(data)))].tokens.to(device)
        with autocast or contextlib.nullcontext():
            out = model(target, sample=False)
        recon = out.recon.float()
        squared += (recon - target).double().pow(2).sum().item()
        cosine += token_cosine(recon, target).double().sum().item()
        kl += out.kl.double().sum().item()
    model.train(was_training)
    n = len(data)
    return EvalResult(mse=squared / (n * data.tokens_per_sample * data.dim),
                      cosine_per_token=cosine / (n * data.tokens_per_sample), kl=kl / n, samples=n)


# ------------------------------------------------------------------------------------------------ checkpoints

@dataclass
class TrainState:
    step: int = 0  # completed optimizer steps = 0-based index of the next one
    epoch: int = 0
    position: int = 0  # samples of this epoch's order already consumed
    averages: Dict[str, float] = field(default_factory=dict)  # EMA (momentum 0.99) of the loss terms, as logged


class LossAverages:
    """The release's LossTracker: an EMA with momentum 0.99, seeded by the first value (stored as
    ``loss_averages`` in checkpoints)."""

    momentum = 0.99

    @staticmethod
    def update(averages: Dict[str, float], values: Dict[str, float]) -> None:
        for key, value in values.items():
            averages[key] = value if key not in averages else (
                LossAverages.momentum * averages[key] + (1 - LossAverages.momentum) * value)


def official_payload(model: SemanticVAE, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                     state: TrainState, config: SemVAETrainConfig) -> dict:
    """The nine keys of the release's ``semantic_ae_*.pt`` (docs/semvae.md §2.4); ``iteration`` counts completed
    steps."""
    return {"iteration": state.step, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": schedule.state_dict(state.step),
            "loss": state.averages.get("total", 0.0), "loss_averages": dict(state.averages),
            "config": config_yaml(config), "input_dim": model.args.input_dim,
            "bottleneck_dim": model.args.bottleneck_dim}


# ------------------------------------------------------------------------------------------------ training

class SemVAEStep:
    """One optimizer step of Semantic VAE training (the step object of sfd/training_loop.py): the model, built on
    the meta device and initialised on the CPU from a generator seeded by training.seed (the same start on any
    device, the global RNG never drawn), AdamW, the loss, the learning-rate schedule, the posterior-noise generator
    (on the CPU: the same draws on any device) and the run's position (:class:`TrainState`)."""

    def __init__(self, config: SemVAETrainConfig, input_dim: int, device: torch.device) -> None:
        training = config.training
        self.config, self.device = config, device
        with torch.device("meta"):
            model = SemanticVAE(semvae_args(config, input_dim))
        self.model = init_weights(model.to_empty(device="cpu"), seeded_generator(training.seed, "init")).to(device)
        opt = training.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.lr, betas=tuple(opt.betas),
                                           weight_decay=opt.weight_decay)
        self.schedule, self.loss = LRSchedule.from_config(training), SemVAELoss.from_config(training.loss)
        self.noise = seeded_generator(training.seed, "noise")
        # bf16 autocast on accelerators only (the release's Accelerate bf16); the loss runs in fp32 on the
        # fp32-cast outputs
        self.autocast = functools.partial(Accelerator.of(device).autocast, training.mixed_precision)
        self.state = TrainState()

    def __call__(self, batch: FeatureBatch) -> Dict[str, float]:
        """One step on the reconstruction of a posterior sample; returns the release's tracked terms and the lr."""
        self.model.train()
        lr = self.schedule.apply(self.optimizer, self.state.step)
        target = batch.tokens.to(self.device)
        with self.autocast():
            out = self.model(target, generator=self.noise)
        terms = self.loss(target, out.recon, out.kl)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        record = _step_record(terms, out.latent)
        LossAverages.update(self.state.averages, record)
        self.state.step += 1
        return {"lr": lr, **record}

    def state_dict(self) -> dict:
        """Official layout plus what exact resumption needs: step, data position and the noise generator's state."""
        payload = official_payload(self.model, self.optimizer, self.schedule, self.state, self.config)
        payload.update(step=self.state.step, data_epoch=self.state.epoch, data_position=self.state.position,
                       noise_generator_state=self.noise.get_state())
        return payload

    def check_fits(self, payload: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
        """``payload`` after checking that it fits this run (weights, optimizer groups), so that a rejected file
        changes nothing; raises CheckpointError naming what does not fit."""
        if not isinstance(payload.get("model_state_dict"), Mapping):
            raise CheckpointError(f"{path}: no 'model_state_dict' (not a SemVAE training checkpoint)")
        problems = explain_mismatch(self.model, payload["model_state_dict"])
        if problems:
            raise CheckpointError(f"{path}: does not fit the configured SemVAE: " + "; ".join(problems))
        if "optimizer_state_dict" in payload:
            check_optimizer_state(path, payload["optimizer_state_dict"], self.optimizer)
        return payload

    def read_checkpoint(self, path: Path) -> Mapping[str, Any]:
        return self.check_fits(read_file(path), path)

    def load_state_dict(self, payload: Mapping[str, Any]) -> None:
        """Our files restore everything exactly; an official file restores weights and optimizer and continues at
        its ``iteration`` + 1, as the release's loader does (data order restarts)."""
        self.model.load_state_dict(payload["model_state_dict"])
        if "optimizer_state_dict" in payload:
            try:
                self.optimizer.load_state_dict(payload["optimizer_state_dict"])
            except (ValueError, KeyError) as error:
                raise CheckpointError(f"optimizer_state_dict does not fit ({error})") from None
        averages = dict(payload.get("loss_averages", {}))
        if "step" not in payload:
            self.state = TrainState(step=int(payload["iteration"]) + 1, averages=averages)
            return
        self.noise.set_state(payload["noise_generator_state"])
        self.state = TrainState(step=int(payload["step"]), epoch=int(payload["data_epoch"]),
                                position=int(payload["data_position"]), averages=averages)


@dataclass
class TrainResult:
    step: int  # completed steps
    checkpoint: Optional[Path]  # the last trainer checkpoint written or resumed from
    final: Optional[Path]  # semantic_ae_final.pt once total_iterations are done
    averages: Dict[str, float]  # EMA of the loss terms
    evaluation: Optional[EvalResult]  # the last evaluation of this run


def _open_data(config: SemVAETrainConfig) -> tuple[FeatureShards, Optional[FeatureShards], int]:
    """Training and held-out features, and the feature width D the model is built for."""
    data, evaluation = config.data, config.training.evaluation
    train_set = open_features(data.feature_dir, data.model_name, data.max_samples, "data.feature_dir")
    input_dim = configured_input_dim(config) or train_set.dim
    if train_set.dim != input_dim:
        raise DataError(f"{train_set.files[0]}: features have D={train_set.dim}, but the config implies "
                        f"input_dim={input_dim} (model.input_dim / data.model_name={data.model_name!r})")
    eval_set = None
    if evaluation.feature_dir:
        eval_set = open_features(evaluation.feature_dir, evaluation.model_name, evaluation.max_samples,
                                 "training.evaluation.feature_dir")
        if (eval_set.tokens_per_sample, eval_set.dim) != (train_set.tokens_per_sample, train_set.dim):
            raise DataError(f"{eval_set.files[0]}: held-out tokens are [{eval_set.tokens_per_sample}, {eval_set.dim}], "
                            f"training tokens [{train_set.tokens_per_sample}, {train_set.dim}]")
    return train_set, eval_set, input_dim


def _batches(data: FeatureShards, config: SemVAETrainConfig, state: TrainState) -> Iterator[FeatureBatch]:
    """Batches from the state's data position on, epoch after epoch; the last batch of an epoch is smaller
    (drop_last=False, docs/semvae.md §3.6). Advances ``state.epoch`` / ``state.position`` as batches are handed out."""
    size, batch_size = len(data), config.data.batch_size
    while state.epoch < config.training.max_epochs:
        order = epoch_order(size, config.training.seed, state.epoch, config.data.shuffle)
        plan = [order[start:start + batch_size].tolist() for start in range(state.position, size, batch_size)]
        loader = DataLoader(data, batch_size=None, sampler=plan, num_workers=config.data.num_workers)
        for indices, batch in zip(plan, loader):
            state.position += len(indices)
            yield batch
        state.epoch, state.position = state.epoch + 1, 0


def _step_record(terms: SemVAELossTerms, latent: torch.Tensor) -> Dict[str, float]:
    """The terms the release tracks (its names), as floats."""
    latent = latent.detach().float()
    return {"mse": terms.mse.item(), "l1": terms.l1.item(), "cos_loss": terms.cos.item(), "kl_loss": terms.kl.item(),
            "classification_loss": 0.0, "total": terms.total.item(), "bottleneck_std": latent.std().item(),
            "bottleneck_mean": latent.mean().item(), "bottleneck_min": latent.min().item(),
            "bottleneck_max": latent.max().item()}


def _run_logs(config: SemVAETrainConfig) -> tuple[RunLog, RunLog]:
    """The training log (config.yaml's folder, TensorBoard beside it when asked) and the evaluation log."""
    log = config.training.log
    tensorboard = Path(log.log_dir) / "tensorboard" / log.swandb_exp_name if log.tensorboard else None
    train_log = RunLog(Path(log.log_dir) / "train_log.jsonl", tensorboard=tensorboard, require_tensorboard=True,
                       tag_prefix="train/")
    try:
        train_log.open()
    except ImportError:
        raise ConfigError("training.log.tensorboard: true, but the tensorboard package is not installed "
                          "(pip install tensorboard, or set training.log.tensorboard=false)") from None
    return train_log, RunLog(Path(config.training.evaluation.output_dir) / "eval_log.jsonl")


def train(config: SemVAETrainConfig, device: str | torch.device | None = None, stop_after: Optional[int] = None,
          progress: bool = True) -> TrainResult:
    """Train (or resume) a SemVAE. Resume = rerun: the newest checkpoint in checkpoint_dir that reads and fits is
    continued exactly (a truncated or foreign newer one is reported and passed over); without one,
    training.checkpoint_path (if set) is the starting point. ``stop_after`` ends this run after that many steps with
    a checkpoint (for time-limited jobs); rerunning continues. One run owns the log folder at a time."""
    from tqdm import tqdm

    device = default_device(device)
    training, log = config.training, config.training.log
    train_set, eval_set, input_dim = _open_data(config)
    step = SemVAEStep(config, input_dim, device)
    checkpoint_dir = Path(training.checkpointing.checkpoint_dir)
    with owned_folder(log.log_dir, True, checkpoint_dir):
        found = choose_checkpoint(checkpoint_dir, step.read_checkpoint, CHECKPOINT_PATTERN)
        start = found.path or (Path(training.checkpoint_path) if training.checkpoint_path else None)
        if start is not None:
            step.load_state_dict(found.payload if found.path else step.read_checkpoint(start))
        write_text_atomic(Path(log.log_dir) / "config.yaml", config_yaml(config))
        train_log, eval_log = _run_logs(config)
        if found.path is not None:
            train_log.forget_after(step.state.step)
        outcome = {"checkpoint": start, "evaluation": None}

        def run_eval(at: int, record: Optional[Mapping[str, float]] = None) -> None:
            if eval_set is None:
                return
            result = evaluate(step.model, eval_set, training.evaluation.batch_size, device, step.autocast())
            eval_log.write({"step": at, **vars(result)})
            train_log.scalars({"step": at, "mse": result.mse, "cosine_per_token": result.cosine_per_token}, "eval/")
            tqdm.write(f"[eval] step {at}: mse {result.mse:.6f}, per-token cosine {result.cosine_per_token:.4f}")
            outcome["evaluation"] = result

        def save(at: int, record: Mapping[str, float]) -> None:
            outcome["checkpoint"] = atomic_save(step.state_dict(), checkpoint_dir / CHECKPOINT_NAME.format(at))

        def write_log(at: int, record: Mapping[str, float]) -> None:
            averages = step.state.averages
            bar.set_postfix(total=f"{averages['total']:.4f}", mse=f"{averages['mse']:.4f}",
                            cos=f"{averages['cos_loss']:.4f}", kl=f"{averages['kl_loss']:.4g}",
                            lr=f"{record['lr']:.3g}")
            train_log.write({"step": at, **record})

        if step.state.step == 0:
            run_eval(0)
        stop = training.total_iterations
        if stop_after is not None:
            stop = min(stop, step.state.step + stop_after)
        bar = tqdm(total=training.total_iterations, initial=min(step.state.step, training.total_iterations),
                   disable=not progress, dynamic_ncols=True, desc="semvae")
        batches = _batches(train_set, config, step.state)
        run_steps(step, batches, start=step.state.step, stop=stop, progress=lambda record: bar.update(1), events=[
            Every(log.log_every, write_log),
            Every(training.evaluation.eval_every, run_eval, also=(training.total_iterations,)),
            Every(training.checkpointing.save_every, save, also=(training.total_iterations, stop))])
        batches.close()
        bar.close()
        final = None
        if step.state.step >= training.total_iterations:
            final = atomic_save(official_payload(step.model, step.optimizer, step.schedule, step.state, config),
                                checkpoint_dir / FINAL_NAME)
        train_log.close()
    return TrainResult(step=step.state.step, checkpoint=outcome["checkpoint"], final=final,
                       averages=dict(step.state.averages), evaluation=outcome["evaluation"])
