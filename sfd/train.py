"""The SFD trainer: one code path for one process and for many (torchrun, DDP), exact resume.

What makes a run reproducible and independent of the process count:

* the data order is a permutation per epoch from a generator seeded by (seed, epoch); step s takes the global batch
  [s·G, (s+1)·G) of it (the last incomplete batch of an epoch is dropped) and process r the r-th slice of that;
* row j of step s draws its time, noise and label dropout from a generator seeded by (seed, step, j), and the
  horizontal flip of item i in epoch e from one seeded by (seed, e, i);
* gradients are averaged over processes, so G rows on W processes give the update of G rows on one.

A checkpoint holds model, EMA, optimizer, step, images seen, data position and the resolved config, and is written
to a temporary file and renamed. Rerunning the same command resumes from the highest step. A non-finite loss
stops the run before the update (the last checkpoint stays intact).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from sfd import distributed, rng
from sfd.build import build_model
from sfd.checkpoint import CheckpointError, atomic_save, explain_mismatch, extract_state_dict, read_file
from sfd.config import SFDConfig, config_to_dict, save_config
from sfd.data.latents import InMemoryLatents, LatentShardDataset, collate_latents
from sfd.device import Accelerator, compile_by_default, compile_module, float64_device
from sfd.files import remove_stale_temporaries, write_text_atomic
from sfd.loss import FlowMatchingLoss
from sfd.runlock import lock_run_folder
from sfd.throughput import model_flop_utilisation, peak_flops, training_flops_per_image

CHECKPOINT_NAME = re.compile(r"^(\d+)\.pt$")


class TrainingError(RuntimeError):
    """A run that cannot continue (bad data size, non-finite loss); the message says why in one line."""


@dataclass
class DataPosition:
    epoch: int
    batch_in_epoch: int


class StepBatchSampler(Sampler):
    """Yields, for each step from ``start_step``, this process's (index, epoch) keys of the step's global batch."""

    def __init__(self, num_items: int, global_batch: int, rank: int, world_size: int, seed: int,
                 start_step: int, max_steps: int) -> None:
        self.steps_per_epoch = num_items // global_batch
        if self.steps_per_epoch == 0:
            raise TrainingError(f"train.global_batch_size={global_batch} is larger than the dataset ({num_items} "
                                "latents); lower it or add data")
        self.num_items, self.global_batch, self.rank, self.world_size = num_items, global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self._permutation: tuple[int, torch.Tensor] = (-1, torch.empty(0))

    def position(self, step: int) -> DataPosition:
        return DataPosition(*divmod(step, self.steps_per_epoch))

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(rng.derive_seed(self.seed, epoch))
            self._permutation = (epoch, torch.randperm(self.num_items, generator=generator))
        return self._permutation[1]

    def rows(self) -> range:
        """Positions of this process's rows in the global batch."""
        return range(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            position = self.position(step)
            start = position.batch_in_epoch * self.global_batch
            batch = self.permutation(position.epoch)[start: start + self.global_batch]
            yield [(int(batch[row]), position.epoch) for row in self.rows()]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


def checkpoints_newest_first(folder: Path) -> list[Path]:
    """The run's checkpoints ({step:07d}.pt), highest step first."""
    steps = [(int(m.group(1)), p) for p in folder.glob("*.pt") if (m := CHECKPOINT_NAME.match(p.name))]
    return [path for _, path in sorted(steps, reverse=True)]


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint with the highest step (by name, {step:07d}.pt), or None."""
    found = checkpoints_newest_first(folder)
    return found[0] if found else None


def autocast_for(precision: str, device: torch.device):
    """bf16/fp16 autocast on accelerators; CPUs train in fp32 (their bf16 matmuls are ~100× slower,
    docs/environment.md §2). The device layer decides (``Accelerator.autocast``)."""
    return Accelerator.of(device).autocast(precision)


def build_optimizer(model: torch.nn.Module, config: SFDConfig, accelerator: Accelerator) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the config's settings (the release's optimizer). Where torch has a
    fused AdamW kernel for the device (CPU, CUDA, XPU, MPS) it is used: one pass per parameter instead of a dozen
    element-wise passes over all of them, the same update within rounding (3× faster on a 130M-parameter model on
    this project's CPU; scripts/bench_vs_release.py)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    settings = config.optimizer
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                             betas=(settings.beta1, settings.beta2), eps=settings.eps,
                             weight_decay=settings.weight_decay,
                             fused=accelerator.type in _get_fused_kernels_supported_devices() or None)


class Trainer:
    def __init__(self, config: SFDConfig, topology: Optional[distributed.Topology] = None,
                 run_dir: Optional[Path] = None, with_data: bool = True,
                 device: Optional[torch.device] = None) -> None:
        """A run of ``config``: model, EMA, optimizer and loss, resumed from the run folder's latest checkpoint.
        ``with_data=False`` builds the step alone (no dataset, no resume; :meth:`train_step` on given batches, as
        scripts/bench_model.py times it). ``device`` defaults to the topology's (this process's GPU, else CPU)."""
        self.config = config
        self.topology = topology or distributed.Topology()
        self.device = device or self.topology.device
        self.accelerator = Accelerator.of(self.device)
        train = config.train
        if train.global_batch_size % self.topology.world_size:
            raise TrainingError(f"train.global_batch_size={train.global_batch_size} is not divisible by the "
                                f"{self.topology.world_size} processes")
        self.run_dir = run_dir or Path(train.output_dir) / (train.exp_name or "sfd")
        self.checkpoint_dir = self.run_dir / "checkpoints"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.derive_seed(train.global_seed, -2))  # the same initial weights on every process
            self.model = build_model(config).to(self.device)
        if train.weight_init:
            self._initialise_from(Path(train.weight_init))
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = build_optimizer(self.model, config, self.accelerator)
        self.scaler = self.accelerator.grad_scaler(train.precision)
        self.loss = FlowMatchingLoss.from_config(config)
        self.dataset = self._dataset(config.data.data_path, flip_prob=0.5) if with_data else None
        self.step, self.images_seen = 0, 0
        self.skipped_checkpoints: list[str] = []  # why newer checkpoints could not resume this run
        self.flops_per_image: Optional[float] = None  # training FLOPs per image and the device's peak, for MFU
        self.peak_flops: Optional[float] = None
        resumed = self._resume() if with_data else None
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if not self.accelerator.is_cpu
                                            else None) if self.topology.world_size > 1 else self.model)
        compiled = compile_by_default(train.compile, self.accelerator)
        self.forward_model = compile_module(self.ddp, self.accelerator) if compiled else self.ddp
        self.resumed_from = resumed

    # -- setup -------------------------------------------------------------------------------------------------

    def _dataset(self, path: str, flip_prob: float) -> LatentShardDataset:
        """Shards of ``path`` normalised with the training set's statistics (data.data_path)."""
        data, model = self.config.data, self.config.model
        dataset = LatentShardDataset(path, latent_norm=data.latent_norm, latent_sv_norm=data.latent_sv_norm,
                                     latent_multiplier=data.latent_multiplier, semantic=model.semantic_chans > 0,
                                     with_dino=model.use_repa, flip_prob=flip_prob, seed=self.config.train.global_seed,
                                     stats_dir=data.data_path)
        channels = dataset.channels  # from the shards' headers
        if channels != model.in_chans:
            raise TrainingError(f"{path}: shards give {channels}-channel latents, model.in_chans is {model.in_chans}")
        if model.use_repa and not dataset.with_dino:
            raise TrainingError(f"{path}: model.use_repa needs 'feats_dino' in the shards")
        return dataset

    def _initialise_from(self, path: Path) -> None:
        state = extract_state_dict(read_file(path), path)
        problems = explain_mismatch(self.model, state)
        if problems:
            raise TrainingError(f"train.weight_init {path}: " + "; ".join(problems))
        self.model.load_state_dict(state)

    def _resume(self) -> Optional[Path]:
        """Continue from the newest checkpoint that reads and fits this run; an unreadable or mismatched newer one
        is reported (``skipped_checkpoints``, one line each) and passed over. Retraining from an older checkpoint
        ends where an uninterrupted run would: every draw is a function of the step.

        The main process chooses (it is the one that writes checkpoints, so its folder is the truth) and every
        process follows: a process that can read the chosen file loads it itself; when any cannot (no shared
        filesystem, e.g. node-local disks), the main process sends the state to all."""
        outcome = self._choose_checkpoint() if self.topology.is_main else None
        path, refusal = distributed.broadcast_from_main(outcome[:2] if outcome else None)
        if refusal:
            raise TrainingError(refusal)
        if path is None:
            return None
        payload = outcome[2] if self.topology.is_main else None
        if distributed.all_true(self.topology.is_main or Path(path).is_file()):
            if payload is None:
                payload = self._read_training_checkpoint(Path(path))
        else:
            payload = distributed.broadcast_from_main(payload)
        self._apply_training_state(payload)
        return Path(path)

    def _choose_checkpoint(self) -> tuple[Optional[str], Optional[str], Optional[Mapping]]:
        """(path, None, payload) of the checkpoint to resume from, (None, None, None) for a fresh run, or
        (None, why, None) when the run must not start."""
        candidates = checkpoints_newest_first(self.checkpoint_dir)
        if not candidates:
            return None, None, None
        if self.config.train.resume is False:
            return None, (f"train.resume is false but {self.checkpoint_dir} holds checkpoints (latest "
                          f"{candidates[0].name}): choose another train.exp_name, delete them, or drop "
                          "train.resume to continue the run"), None
        for path in candidates:
            try:
                payload = self._read_training_checkpoint(path)
            except CheckpointError as error:
                self.skipped_checkpoints.append(str(error))
                print(f"warning: skipping checkpoint: {error}", file=sys.stderr, flush=True)
                continue
            if self.skipped_checkpoints:
                print(f"warning: resuming from the older checkpoint {path}", file=sys.stderr, flush=True)
            return str(path), None, payload
        return None, (f"{self.checkpoint_dir}: none of its {len(candidates)} checkpoint(s) can resume this run "
                      f"(newest: {self.skipped_checkpoints[0]}); move them away to start afresh"), None

    def _read_training_checkpoint(self, path: Path) -> Mapping:
        """One of this run's checkpoints (weights-only, memory-mapped on the CPU), after checking that every part
        fits this trainer, so that a rejected file changes nothing."""
        payload = read_file(path, required=("model", "ema", "opt", "step", "images_seen"))
        for key in ("model", "ema", "opt"):
            if not isinstance(payload[key], Mapping):
                raise CheckpointError(f"{path}: its '{key}' entry is a {type(payload[key]).__name__}, not a state dict")
        for key, module in (("model", self.model), ("ema", self.ema)):
            problems = explain_mismatch(module, payload[key])
            if problems:
                raise CheckpointError(f"{path}: its '{key}' weights do not fit this model: " + "; ".join(problems[:3])
                                      + (f"; … {len(problems) - 3} more" if len(problems) > 3 else ""))
        saved_groups = [len(group["params"]) for group in payload["opt"].get("param_groups", [])]
        groups = [len(group["params"]) for group in self.optimizer.param_groups]
        if saved_groups != groups:
            raise CheckpointError(f"{path}: its optimizer state has parameter groups of sizes {saved_groups}, this "
                                  f"run's are {groups}")
        return payload

    def _apply_training_state(self, payload: Mapping) -> None:
        self.model.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["opt"])
        if "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        self.step, self.images_seen = int(payload["step"]), int(payload["images_seen"])

    # -- one step ----------------------------------------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        optimizer = self.config.optimizer
        if optimizer.warmup_steps and step < optimizer.warmup_steps:
            return optimizer.lr * (step + 1) / optimizer.warmup_steps
        return optimizer.lr

    def train_step(self, latents: torch.Tensor, labels: torch.Tensor, dino: Optional[torch.Tensor],
                   rows: range) -> dict[str, float]:
        """One optimizer step on this process's rows of the global batch; returns globally averaged loss terms."""
        self.model.train()
        seeds = [rng.derive_seed(self.config.train.global_seed, self.step, row) for row in rows]
        generators = rng.SampleGenerators(seeds, self.device)
        with autocast_for(self.config.train.precision, self.device):
            terms = self.loss(self.forward_model, latents, labels, dino, generator=generators)
        zero = torch.zeros((), device=self.device)
        values = torch.stack([term.detach().float().mean() if term is not None else zero
                              for term in (terms.total, terms.mse, terms.cos, terms.repa)])
        if dist.is_initialized():
            dist.all_reduce(values)
            values /= self.topology.world_size
        if not torch.isfinite(values).all():
            raise TrainingError(f"step {self.step}: non-finite loss (total {values[0].item()}, mse {values[1].item()}, "
                                f"cos {values[2].item()}, repa {values[3].item()}); stopped before the update, the "
                                f"last checkpoint ({latest_checkpoint(self.checkpoint_dir)}) is intact")
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        if self.config.optimizer.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimizer.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.update_ema()
        self.step += 1
        self.images_seen += self.config.train.global_batch_size
        return dict(zip(("loss", "mse", "cos", "repa"), values.tolist()))

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·θ over every parameter (pos_embed included; it is constant)."""
        decay = self.config.train.ema_decay
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.model.parameters()), 1.0 - decay)

    # -- checkpoints, validation, logging -----------------------------------------------------------------------

    def save_checkpoint(self, sampler: StepBatchSampler) -> Optional[Path]:
        path = self.checkpoint_dir / f"{self.step:07d}.pt"
        if self.topology.is_main:
            position = sampler.position(self.step)
            atomic_save({
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "images_seen": self.images_seen,
                "data_position": {"epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch},
                "rng": {"global_seed": self.config.train.global_seed},
                "config": config_to_dict(self.config),
            }, path)
        distributed.barrier()
        return path

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        """Mean velocity loss of held-out latents at each fixed time (fixed noise, no flips, no label dropout)."""
        dataset = self.valid_dataset
        count = min(len(dataset), self.config.train.valid_items)
        mine = range(self.topology.rank, count, self.topology.world_size)
        loss = FlowMatchingLoss.from_config(self.config, class_dropout_prob=0.0)
        sums = torch.zeros(len(self.config.train.valid_timesteps) + 1, device=float64_device(self.device),
                           dtype=torch.float64)  # on the CPU for MPS, which has no float64
        self.model.eval()
        batch = self.config.sample.per_proc_batch_size * 4
        for start in range(0, len(mine), batch):
            indices = list(mine[start: start + batch])
            latents, labels, dino = collate_latents([dataset[i] for i in indices])
            latents, labels = latents.to(self.device), labels.to(self.device)
            dino = dino.to(self.device) if dino is not None else None
            for k, t in enumerate(self.config.train.valid_timesteps):
                generators = rng.SampleGenerators([rng.derive_seed(self.config.train.global_seed, -1, i)
                                                   for i in indices], self.device)
                noise = generators.randn(latents.shape)
                terms = loss(self.model, latents, labels, dino, t=torch.full((len(indices),), t), noise=noise)
                sums[k] += terms.mse.to(sums.device).double().sum()
            sums[-1] += len(indices)
        if dist.is_initialized():
            dist.all_reduce(sums)
        return {f"valid_mse_t{t:g}": (sums[k] / sums[-1]).item()
                for k, t in enumerate(self.config.train.valid_timesteps)}

    def throughput(self, images_per_s: float) -> dict[str, float]:
        """Images/s per device and, where the device's peak is known (sfd/throughput.py), the model FLOP
        utilisation of the training step."""
        if self.flops_per_image is None:  # counted once, on the meta device
            self.flops_per_image = training_flops_per_image(self.config)
            self.peak_flops = peak_flops(self.accelerator.device_name(self.device),
                                         self.accelerator.effective_precision(self.config.train.precision))
        per_device = images_per_s / self.topology.world_size
        utilisation = model_flop_utilisation(per_device, self.flops_per_image, self.peak_flops)
        return {"images_per_s_per_device": per_device, **({"mfu": utilisation} if utilisation is not None else {})}

    def _forget_log_after(self, step: int) -> None:
        """Drop ``log.jsonl`` records of steps after ``step`` (those a killed run logged after its last checkpoint,
        which this run logs again), and a last line a kill cut short, so each step is logged once however often
        the run is resumed."""
        path = self.run_dir / "log.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))

    def log(self, record: dict) -> None:
        if not self.topology.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def _open_writer(self):
        if not (self.topology.is_main and self.config.train.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self, progress: bool = True, final_checkpoint: bool = True) -> dict:
        """Train to ``train.max_steps`` from the current step; returns the last step's loss terms."""
        if self.dataset is None:
            raise TrainingError("this trainer was built with_data=False; it can only take train_step calls")
        lock = lock_run_folder(self.run_dir, self.topology.is_main)  # one run per folder (sfd/runlock.py)
        try:
            return self._run(progress, final_checkpoint, lock.note)
        finally:
            lock.release()

    def _run(self, progress: bool, final_checkpoint: bool, lock_note: Optional[str]) -> dict:
        train = self.config.train
        if self.topology.is_main:
            if lock_note:
                print(f"warning: {self.run_dir}: {lock_note}", file=sys.stderr, flush=True)
            remove_stale_temporaries(self.run_dir, older_than_s=0)  # a killed run's; the lock says no writer lives
            remove_stale_temporaries(self.checkpoint_dir, older_than_s=0)
            self._forget_log_after(self.step)
            save_config(self.config, self.run_dir / "config.yaml")
        distributed.barrier()
        self.writer = self._open_writer()
        valid_path = self.config.data.valid_path
        self.valid_dataset = self._dataset(valid_path, flip_prob=0.0) if valid_path else None
        sampler = StepBatchSampler(len(self.dataset), train.global_batch_size, self.topology.rank,
                                   self.topology.world_size, train.global_seed, self.step, train.max_steps)
        if self.config.data.in_memory:  # the same batches without per-item reads (InMemoryLatents)
            memory = InMemoryLatents(self.dataset, self.device)
            loader: Iterable = (memory.batch(keys) for keys in sampler)
        else:
            loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_latents,
                                # workers only beside an accelerator: on a CPU they would compete with the step
                                num_workers=self.config.data.num_workers if not self.accelerator.is_cpu else 0,
                                pin_memory=self.accelerator.pin_memory)
        bar = None
        if progress and self.topology.is_main:
            from tqdm import tqdm

            bar = tqdm(total=train.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last: dict = {}
        window: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        for latents, labels, dino in loader:
            latents, labels = latents.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            dino = dino.to(self.device, non_blocking=True) if dino is not None else None
            last = self.train_step(latents, labels, dino, sampler.rows())
            window = {key: window.get(key, 0.0) + value for key, value in last.items()}
            window_steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            if self.step % train.log_every == 0 or self.step == train.max_steps:
                rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
                means = {key: value / window_steps for key, value in window.items()}
                self.log({"step": self.step, **means, "lr": self.learning_rate(self.step - 1),
                          "steps_per_s": rate, "images_per_s": rate * train.global_batch_size,
                          **self.throughput(rate * train.global_batch_size), "images_seen": self.images_seen})
                window, window_start, window_steps = {}, time.perf_counter(), 0
            if self.valid_dataset is not None and self.step % train.valid_every == 0:
                self.log({"step": self.step, **self.validation_loss()})
            if self.step % train.ckpt_every == 0 or (final_checkpoint and self.step == train.max_steps):
                self.save_checkpoint(sampler)
        if bar is not None:
            bar.close()
        if self.writer is not None:
            self.writer.close()
        return last
