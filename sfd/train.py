"""The SFD trainer: one code path for one process and for many (torchrun, DDP), exact resume.

What makes a run reproducible and independent of the process count:

* the data order is a permutation per epoch from a generator seeded by (seed, epoch); step s takes the global batch
  [s·G, (s+1)·G) of it (the last incomplete batch of an epoch is dropped) and process r the r-th slice of that;
* row j of step s draws its time, noise and label dropout from a generator seeded by (seed, step, j), and the
  horizontal flip of item i in epoch e from one seeded by (seed, e, i);
* gradients are averaged over processes, so G rows on W processes give the update of G rows on one.

The trainer has the shape every trainer of the project shares (sfd/training_loop.py): a step object
(:class:`DiffusionStep`: network, EMA, AdamW, grad scaler, loss), the run-folder services and a loop of steps with
periodic events (log, validation, checkpoint). A checkpoint holds model, EMA, optimizer, step, images seen, data
position and the resolved config, and is written to a temporary file and renamed. Rerunning the same command
resumes from the newest checkpoint that reads and fits. A non-finite loss stops the run before the update (the last
checkpoint stays intact).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from sfd import distributed, rng
from sfd.build import build_model
from sfd.checkpoint import (
    CheckpointError,
    atomic_save,
    check_optimizer_state,
    choose_checkpoint,
    explain_mismatch,
    extract_state_dict,
    latest_checkpoint,
    read_file,
)
from sfd.config import SFDConfig, config_to_dict, save_config
from sfd.data.latents import InMemoryLatents, LatentShardDataset, collate_latents
from sfd.device import Accelerator, compile_by_default, compile_module, float64_device
from sfd.evaluation.sample_scores import SampleScorer
from sfd.loss import FlowMatchingLoss
from sfd.phema import PowerEMA, save_snapshots
from sfd.runlock import owned_folder
from sfd.throughput import model_flop_utilisation, peak_flops, training_flops_per_image
from sfd.training_loop import Every, RunLog, run_steps


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


def build_optimizer(model: torch.nn.Module, config: SFDConfig, accelerator: Accelerator) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the config's settings (the release's optimizer). Where torch has a
    fused AdamW kernel for the device (CPU, CUDA, XPU, MPS) it is used: one pass per parameter instead of a dozen
    element-wise passes over all of them, the same update within rounding (3× faster on a 130M-parameter model on
    this project's CPU; tools/bench_vs_release.py)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    settings = config.optimizer
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                             betas=(settings.beta1, settings.beta2), eps=settings.eps,
                             weight_decay=settings.weight_decay,
                             fused=accelerator.type in _get_fused_kernels_supported_devices() or None)


class DiffusionStep:
    """One optimizer step of SFD training and everything it needs: the network, its EMA, AdamW, the gradient scaler
    and the flow-matching loss, plus the counters a checkpoint records (``step``, ``images_seen``). It reads no data
    and writes no file, so the trainer, the benchmarks and tests drive the same step.

    The initial weights are drawn from a generator seeded by ``train.global_seed`` (the same on every process).
    With ``world_size`` > 1 the network is wrapped in DistributedDataParallel (gradients averaged over processes);
    with ``train.compile`` on (auto: on accelerators) its blocks are compiled in place (sfd.device.compile_module).
    """

    def __init__(self, config: SFDConfig, device: torch.device | str = "cpu", world_size: int = 1) -> None:
        self.config = config
        self.device = torch.device(device)
        self.accelerator = Accelerator.of(self.device)
        self.world_size = world_size
        train = config.train
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.derive_seed(train.global_seed, -2))  # the same initial weights on every process
            self.model = build_model(config).to(self.device)
        if train.weight_init:
            self.initialise_from(Path(train.weight_init))
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # post-hoc EMA (docs/ema.md): power-function averages beside the classic one, when widths are configured
        self.power_ema = PowerEMA(self.model, train.power_ema_sigma_rels) if train.power_ema_sigma_rels else None
        self.optimizer = build_optimizer(self.model, config, self.accelerator)
        self.scaler = self.accelerator.grad_scaler(train.precision)
        self.loss = FlowMatchingLoss.from_config(config)
        self.step, self.images_seen = 0, 0
        wrapped = (DistributedDataParallel(self.model, device_ids=None if self.accelerator.is_cpu
                                           else [self.device.index]) if world_size > 1 else self.model)
        compiled = compile_by_default(train.compile, self.accelerator)
        self.forward_model = compile_module(wrapped, self.accelerator) if compiled else wrapped

    def initialise_from(self, path: Path) -> None:
        """train.weight_init: start from a file's weights (its EMA when it has one), strictly."""
        state = extract_state_dict(read_file(path), path)
        problems = explain_mismatch(self.model, state)
        if problems:
            raise TrainingError(f"train.weight_init {path}: " + "; ".join(problems))
        self.model.load_state_dict(state)

    def learning_rate(self, step: int) -> float:
        optimizer = self.config.optimizer
        if optimizer.warmup_steps and step < optimizer.warmup_steps:
            return optimizer.lr * (step + 1) / optimizer.warmup_steps
        return optimizer.lr

    def __call__(self, latents: torch.Tensor, labels: torch.Tensor, dino: Optional[torch.Tensor],
                 rows: range) -> dict[str, float]:
        """One optimizer step on this process's ``rows`` of the global batch; row j draws its time, noise and label
        dropout from a generator seeded by (seed, step, j). Returns the loss terms averaged over processes; a
        non-finite loss raises TrainingError before the update."""
        self.model.train()
        seeds = [rng.derive_seed(self.config.train.global_seed, self.step, row) for row in rows]
        generators = rng.SampleGenerators(seeds, self.device)
        with self.accelerator.autocast(self.config.train.precision):
            terms = self.loss(self.forward_model, latents, labels, dino, generator=generators)
        zero = torch.zeros((), device=self.device)
        values = torch.stack([term.detach().float().mean() if term is not None else zero
                              for term in (terms.total, terms.mse, terms.cos, terms.repa)])
        if dist.is_initialized():
            dist.all_reduce(values)
            values /= self.world_size
        if not torch.isfinite(values).all():
            raise TrainingError(f"step {self.step}: non-finite loss (total {values[0].item()}, mse {values[1].item()}, "
                                f"cos {values[2].item()}, repa {values[3].item()}); stopped before the update")
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        if self.config.optimizer.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimizer.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.update_ema()
        self.images_seen += self.config.train.global_batch_size
        return dict(zip(("loss", "mse", "cos", "repa"), values.tolist()))

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·θ over every parameter (pos_embed included; it is constant), and the power
        EMAs' update for the step just made (``self.step`` counts it; sfd.phema.PowerEMA.update)."""
        decay = self.config.train.ema_decay
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)
        if self.power_ema is not None:
            self.power_ema.update(self.model, self.step)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "images_seen": self.images_seen,
                **({"power_ema": self.power_ema.state_dict()} if self.power_ema is not None else {})}

    def check_fits(self, payload: Mapping, path: Path) -> Mapping:
        """``payload`` (a checkpoint read from ``path``) after checking that every part fits this step, so that a
        rejected file changes nothing; raises CheckpointError naming what does not fit."""
        for key in ("model", "ema"):
            if not isinstance(payload[key], Mapping):
                raise CheckpointError(f"{path}: its '{key}' entry is a {type(payload[key]).__name__}, not a state dict")
        check_optimizer_state(path, payload["opt"], self.optimizer)
        for key, module in (("model", self.model), ("ema", self.ema)):
            problems = explain_mismatch(module, payload[key])
            if problems:
                raise CheckpointError(f"{path}: its '{key}' weights do not fit this model: " + "; ".join(problems[:3])
                                      + (f"; … {len(problems) - 3} more" if len(problems) > 3 else ""))
        if self.power_ema is not None:
            # a power EMA's profile starts at step 0, so it cannot be switched on, or its widths changed, mid-run
            saved = payload.get("power_ema")
            widths = list(self.power_ema.sigma_rels)
            if not isinstance(saved, Mapping) or [float(s) for s in saved.get("sigma_rels", [])] != widths:
                had = "none" if not isinstance(saved, Mapping) else saved.get("sigma_rels")
                raise CheckpointError(f"{path}: train.power_ema_sigma_rels is {widths} but the checkpoint tracked "
                                      f"{had}; power EMAs must be tracked from the first step (start a new run)")
        return payload

    def load_state_dict(self, payload: Mapping) -> None:
        self.model.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["opt"])
        if self.power_ema is not None:
            self.power_ema.load_state_dict(payload["power_ema"])
        if "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        self.step, self.images_seen = int(payload["step"]), int(payload["images_seen"])


class Trainer:
    """A training run of ``config`` in its run folder (train.output_dir/train.exp_name): the step object, the data,
    the run log, and the checkpoint it resumes from (the newest that reads and fits, chosen when it is built)."""

    def __init__(self, config: SFDConfig, topology: Optional[distributed.Topology] = None,
                 run_dir: Optional[Path] = None, device: Optional[torch.device] = None) -> None:
        self.config = config
        self.topology = topology or distributed.Topology()
        self.device = device or self.topology.device
        train = config.train
        if train.global_batch_size % self.topology.world_size:
            raise TrainingError(f"train.global_batch_size={train.global_batch_size} is not divisible by the "
                                f"{self.topology.world_size} processes")
        self.run_dir = run_dir or Path(train.output_dir) / (train.exp_name or "sfd")
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.state = DiffusionStep(config, self.device, self.topology.world_size)
        self.dataset = self._dataset(config.data.data_path, flip_prob=0.5)
        self.valid_dataset = self._dataset(config.data.valid_path, flip_prob=0.0) if config.data.valid_path else None
        self.log = RunLog(self.run_dir / "log.jsonl", enabled=self.topology.is_main,
                          tensorboard=self.run_dir / "tensorboard" if train.tensorboard else None)
        self.skipped_checkpoints: list[str] = []  # why newer checkpoints could not resume this run
        self.scorer: Optional[SampleScorer] = None  # train.eval_every's scorer; built by run() unless given
        self.flops_per_image: Optional[float] = None  # training FLOPs per image and the device's peak, for MFU
        self.peak_flops: Optional[float] = None
        self.resumed_from = self._resume()

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def images_seen(self) -> int:
        return self.state.images_seen

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def ema(self) -> torch.nn.Module:
        return self.state.ema

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

    # -- resuming ----------------------------------------------------------------------------------------------

    def _resume(self) -> Optional[Path]:
        """Continue from the newest checkpoint that reads and fits this run (sfd.checkpoint.choose_checkpoint: an
        unreadable or mismatched newer one is reported in ``skipped_checkpoints`` and passed over).

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
                payload = self._read_checkpoint(Path(path))
        else:
            payload = distributed.broadcast_from_main(payload)
        self.state.load_state_dict(payload)
        return Path(path)

    def _choose_checkpoint(self) -> tuple[Optional[str], Optional[str], Optional[Mapping]]:
        """(path, None, payload) of the checkpoint to resume from, (None, None, None) for a fresh run, or
        (None, why, None) when the run must not start."""
        latest = latest_checkpoint(self.checkpoint_dir)
        if latest is not None and self.config.train.resume is False:
            return None, (f"train.resume is false but {self.checkpoint_dir} holds checkpoints (latest "
                          f"{latest.name}): choose another train.exp_name, delete them, or drop "
                          "train.resume to continue the run"), None
        try:
            found = choose_checkpoint(self.checkpoint_dir, self._read_checkpoint)
        except CheckpointError as error:
            return None, str(error), None
        self.skipped_checkpoints = found.skipped
        return (str(found.path), None, found.payload) if found.path else (None, None, None)

    def _read_checkpoint(self, path: Path) -> Mapping:
        """One of this run's checkpoints (weights-only, memory-mapped on the CPU), checked to fit the step."""
        return self.state.check_fits(read_file(path, required=("model", "ema", "opt", "step", "images_seen")), path)

    # -- one step, and what happens between steps ---------------------------------------------------------------

    def train_step(self, latents: torch.Tensor, labels: torch.Tensor, dino: Optional[torch.Tensor],
                   rows: range) -> dict[str, float]:
        """One optimizer step on this process's rows of the global batch; returns globally averaged loss terms."""
        try:
            return self.state(latents, labels, dino, rows)
        except TrainingError as error:
            raise TrainingError(f"{error}, the last checkpoint ({latest_checkpoint(self.checkpoint_dir)}) is "
                                "intact") from None

    def save_checkpoint(self, sampler: StepBatchSampler) -> Path:
        """``{step:07d}.pt``: the step object's state, the data position and the resolved config, written
        atomically by the main process."""
        path = self.checkpoint_dir / f"{self.step:07d}.pt"
        if self.topology.is_main:
            position = sampler.position(self.step)
            atomic_save({**self.state.state_dict(),
                         "data_position": {"epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch},
                         "rng": {"global_seed": self.config.train.global_seed},
                         "config": config_to_dict(self.config)}, path)
        distributed.barrier()
        return path

    def save_power_ema(self) -> None:
        """The power EMAs' snapshots at this step (docs/ema.md §6), written by the main process."""
        if self.topology.is_main:
            save_snapshots(self.run_dir / "power_ema", self.state.power_ema, self.images_seen,
                           config_to_dict(self.config))
        distributed.barrier()

    def validation_loss(self) -> dict[str, float]:
        return validation_loss(self.model, self.valid_dataset, self.config, self.topology, self.device)

    def throughput(self, images_per_s: float) -> dict[str, float]:
        """Images/s per device and, where the device's peak is known (sfd/throughput.py), the model FLOP
        utilisation of the training step."""
        if self.flops_per_image is None:  # counted once, on the meta device
            self.flops_per_image = training_flops_per_image(self.config)
            self.peak_flops = peak_flops(self.state.accelerator.device_name(self.device),
                                         self.state.accelerator.effective_precision(self.config.train.precision))
        per_device = images_per_s / self.topology.world_size
        utilisation = model_flop_utilisation(per_device, self.flops_per_image, self.peak_flops)
        return {"images_per_s_per_device": per_device, **({"mfu": utilisation} if utilisation is not None else {})}

    def _batches(self, sampler: StepBatchSampler) -> Iterator[tuple]:
        """This process's batches from the current step on, on the device."""
        accelerator = self.state.accelerator
        if self.config.data.in_memory:  # the same batches without per-item reads (InMemoryLatents)
            memory = InMemoryLatents(self.dataset, self.device)
            loader: Iterable = (memory.batch(keys) for keys in sampler)
        else:
            loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_latents,
                                # workers only beside an accelerator: on a CPU they would compete with the step
                                num_workers=self.config.data.num_workers if not accelerator.is_cpu else 0,
                                pin_memory=accelerator.pin_memory)
        for latents, labels, dino in loader:
            yield (latents.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                   dino.to(self.device, non_blocking=True) if dino is not None else None)

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self, progress: bool = True, final_checkpoint: bool = True) -> dict:
        """Train to ``train.max_steps`` from the current step; returns the last step's loss terms."""
        train, is_main = self.config.train, self.topology.is_main
        with owned_folder(self.run_dir, is_main, self.checkpoint_dir):  # one run per folder (sfd/runlock.py)
            if is_main:
                self.log.forget_after(self.step)
                save_config(self.config, self.run_dir / "config.yaml")
            distributed.barrier()
            self.log.open()
            sampler = StepBatchSampler(len(self.dataset), train.global_batch_size, self.topology.rank,
                                       self.topology.world_size, train.global_seed, self.step, train.max_steps)
            meter = _LogWindow(self, train.global_batch_size)
            # The checkpoint comes last: what a step's other events wrote is redone by a run that resumes from the
            # previous checkpoint (RunLog.forget_after drops their records), never lost.
            events = [Every(train.log_every, meter.write, also=(train.max_steps,))]
            if self.valid_dataset is not None:
                events.append(Every(train.valid_every, lambda step, _: self.log.write(
                    {"step": step, **self.validation_loss()})))
            if train.eval_every and self.step < train.max_steps:  # a bad reference file fails now, not at the event
                self.scorer = self.scorer or build_scorer(self.config, self.topology, self.device)
                events.append(Every(train.eval_every, lambda step, _: self.log.write(
                    {"step": step, **self.scorer(self.ema)}), also=(train.max_steps,)))
            if self.state.power_ema is not None:
                events.append(Every(train.power_ema_every, lambda step, _: self.save_power_ema(),
                                    also=(train.max_steps,)))
            events.append(Every(train.ckpt_every, lambda step, _: self.save_checkpoint(sampler),
                                also=(train.max_steps,) if final_checkpoint else ()))
            bar = _progress_bar(progress and is_main, train.max_steps, self.step)
            try:
                last = run_steps(lambda batch: self.train_step(*batch, sampler.rows()), self._batches(sampler),
                                 start=self.step, stop=train.max_steps, events=events,
                                 progress=lambda record: meter.add(record, bar))
            finally:
                if bar is not None:
                    bar.close()
                self.log.close()
        return dict(last)


def build_scorer(config: SFDConfig, topology: distributed.Topology, device: torch.device) -> SampleScorer:
    """train.eval_every's scorer; building its networks draws nothing the training sees."""
    with torch.random.fork_rng(devices=[]):
        return SampleScorer.from_config(config, topology=topology, device=device)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, dataset: LatentShardDataset, config: SFDConfig,
                    topology: distributed.Topology, device: torch.device) -> dict[str, float]:
    """Mean velocity loss of held-out latents at each of train.valid_timesteps (fixed noise seeded by (seed, -1, i),
    no flips, no label dropout), over the first train.valid_items latents shared among the processes."""
    count = min(len(dataset), config.train.valid_items)
    mine = range(topology.rank, count, topology.world_size)
    loss = FlowMatchingLoss.from_config(config, class_dropout_prob=0.0)
    sums = torch.zeros(len(config.train.valid_timesteps) + 1, device=float64_device(device),
                       dtype=torch.float64)  # on the CPU for MPS, which has no float64
    model.eval()
    batch = config.sample.per_proc_batch_size * 4
    for start in range(0, len(mine), batch):
        indices = list(mine[start: start + batch])
        latents, labels, dino = collate_latents([dataset[i] for i in indices])
        latents, labels = latents.to(device), labels.to(device)
        dino = dino.to(device) if dino is not None else None
        for k, t in enumerate(config.train.valid_timesteps):
            generators = rng.SampleGenerators([rng.derive_seed(config.train.global_seed, -1, i) for i in indices],
                                              device)
            noise = generators.randn(latents.shape)
            terms = loss(model, latents, labels, dino, t=torch.full((len(indices),), t), noise=noise)
            sums[k] += terms.mse.to(sums.device).double().sum()
        sums[-1] += len(indices)
    if dist.is_initialized():
        dist.all_reduce(sums)
    return {f"valid_mse_t{t:g}": (sums[k] / sums[-1]).item() for k, t in enumerate(config.train.valid_timesteps)}


class _LogWindow:
    """Loss terms averaged over the steps since the last log line, with the speed (and MFU) over that window."""

    def __init__(self, trainer: Trainer, global_batch: int) -> None:
        self.trainer, self.global_batch = trainer, global_batch
        self.sums: dict[str, float] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, record: Mapping[str, float], bar: Any) -> None:
        self.sums = {key: self.sums.get(key, 0.0) + value for key, value in record.items()}
        self.steps += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")

    def write(self, step: int, record: Mapping[str, float]) -> None:
        rate = self.steps / max(time.perf_counter() - self.start, 1e-9)
        means = {key: value / self.steps for key, value in self.sums.items()}
        trainer = self.trainer
        trainer.log.write({"step": step, **means, "lr": trainer.state.learning_rate(step - 1), "steps_per_s": rate,
                           "images_per_s": rate * self.global_batch, **trainer.throughput(rate * self.global_batch),
                           "images_seen": trainer.images_seen})
        self.sums, self.steps, self.start = {}, 0, time.perf_counter()


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
