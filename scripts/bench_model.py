#!/usr/bin/env python
"""Time LightningDiT's eval forward and a full training step per batch size, and report the peak memory.

The forward row is one sampler-style call (no grad, eval mode, no REPA projector). The train row is one step of the
project's trainer (``sfd.train.Trainer.train_step``): the SFD flow-matching loss (semantic-first times, cosine and
REPA terms as the config says), backward, optional gradient clipping, the AdamW step and the EMA update. bf16/fp16
use autocast with fp32 master weights (fp16 also a gradient scaler); the trainer trains in fp32 on CPUs. Inputs are
random tensors of the config's latent shape, so no data or checkpoint is needed.

Examples:
    python scripts/bench_model.py                                     # SFD-XL/1 training config, fp32
    python scripts/bench_model.py --dtype bf16 --compile --batch 32 --batch 64 --json bench.json
    python scripts/bench_model.py --config configs/sfd/autoguidance_b/train.yaml --mode forward
    python scripts/bench_model.py --config tests/data/sfd_tiny.yaml --batch 2 --iters 2 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

import sfd
from sfd import distributed
from sfd.device import Accelerator, DeviceError, compile_module, default_device
from sfd.files import write_json_atomic

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = {"forward": ("forward",), "train": ("train",), "both": ("forward", "train")}
MIB = 2**20
# Defaults that depend on the device: (batch sizes, warmup, timed iterations).
CPU_DEFAULTS = ((1, 4), 1, 3)
# 32 is the release's per-GPU batch (global batch 256 over 8 GPUs).
ACCELERATOR_DEFAULTS = ((1, 32), 3, 10)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line; device-dependent defaults (batch, warmup, iters) are filled in by ``resolve_defaults``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Memory: on accelerators the peak of the device allocator (torch.accelerator.max_memory_allocated: "
               "weights, optimizer state, activations); "
               "on CPU the growth of the process's peak RSS during the row (see the note under the table).",
    )
    parser.add_argument("--config", default="configs/sfd/lightningdit_xl/train.yaml",
                        help="SFD YAML whose model/data/loss sections are benchmarked (default: %(default)s)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override such as model.depth=4 (repeatable)")
    parser.add_argument("--batch", action="extend", nargs="+", type=positive_int, metavar="N",
                        help="batch size(s), repeatable or a list (default: %s on CPU, %s on accelerators)"
                             % (" and ".join(map(str, CPU_DEFAULTS[0])),
                                " and ".join(map(str, ACCELERATOR_DEFAULTS[0]))))
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="compute dtype; bf16/fp16 run under autocast with fp32 master weights "
                             "(very slow on CPU) (default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model; compiling happens in the warm-up, so keep --warmup >= 1")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cuda, cuda:1, npu, xpu, mps, cpu (default: $SFD_DEVICE, else "
                             "the machine's accelerator, else cpu)")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help=f"untimed iterations per row "
                             f"(default: {CPU_DEFAULTS[1]} on CPU, {ACCELERATOR_DEFAULTS[1]} on accelerators)")
    parser.add_argument("--iters", type=positive_int, default=None,
                        help=f"timed iterations per row, the median is reported "
                             f"(default: {CPU_DEFAULTS[2]} on CPU, {ACCELERATOR_DEFAULTS[2]} on accelerators)")
    parser.add_argument("--mode", choices=MODES, default="both",
                        help="eval forward, train step, or both (default: %(default)s)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="gradient checkpointing of the transformer blocks (same as model.use_checkpoint=true)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    resolve_defaults(args)
    return args


def resolve_device(name: Optional[str]) -> torch.device:
    """The requested device, else the device layer's ($SFD_DEVICE, else the machine's accelerator, else the CPU);
    ValueError for an unknown or unavailable device."""
    try:
        device = default_device(name)
        present = Accelerator.of(device).count()
    except (DeviceError, ValueError) as error:  # unknown type, missing runtime, bad index
        raise ValueError(f"--device {name}: {error}") from None
    if present == 0:
        raise ValueError(f"--device {name}: no {device.type} device is available on this machine")
    if device.index is not None and device.index >= present:
        raise ValueError(f"--device {name}: only {present} {device.type} device(s) present")
    return device


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill in batch sizes, warmup and iterations that were not given, by device type."""
    batches, warmup, iters = CPU_DEFAULTS if Accelerator.of(args.device).is_cpu else ACCELERATOR_DEFAULTS
    args.batch = list(dict.fromkeys(args.batch or batches))  # keep order, drop repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    args.iters = iters if args.iters is None else args.iters


def device_name(device: torch.device) -> str:
    """Human-readable name of the accelerator, or of the CPU with the number of threads torch uses."""
    accelerator = Accelerator.of(device)
    if not accelerator.is_cpu:
        return accelerator.device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU {name} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    Accelerator.of(device).synchronize(device)


class MemoryMeter:
    """Peak memory of one row, in MiB.

    Accelerators: the device allocator's peak (``torch.accelerator.max_memory_allocated``) after resetting it; NaN
    where the backend does not track one. CPU: the process's peak RSS during the row
    minus its value at the start; on Linux the peak (VmHWM) is reset per row through /proc/self/clear_refs, elsewhere
    the growth of ``ru_maxrss`` is used, which only counts memory above the highest earlier peak (a lower bound).
    Memory the allocator kept from earlier rows is not counted again on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.accelerator = Accelerator.of(device)
        self.resettable = self.accelerator.is_cpu and self._reset_rss_peak()
        if not self.accelerator.is_cpu:
            self.method = "torch.accelerator.max_memory_allocated (weights + optimizer state + activations)"
        elif self.resettable:
            self.method = "peak RSS growth during the row (Linux VmHWM, reset per row); weights already resident " \
                          "are not counted"
        else:
            self.method = "growth of the process peak RSS (resource.getrusage ru_maxrss); a lower bound"
        self.start_bytes = 0

    @staticmethod
    def _reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _rss_peak_bytes() -> int:
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere

    def start(self) -> None:
        gc.collect()
        if not self.accelerator.is_cpu:
            self.accelerator.synchronize(self.device)
            self.accelerator.empty_cache()
            self.accelerator.reset_peak_memory_stats(self.device)
            return
        if self.resettable:
            self._reset_rss_peak()
        self.start_bytes = self._rss_peak_bytes()

    def peak_mib(self) -> float:
        if not self.accelerator.is_cpu:
            peak = self.accelerator.max_memory_allocated(self.device)
            return peak / MIB if peak is not None else float("nan")
        return max(0, self._rss_peak_bytes() - self.start_bytes) / MIB


@dataclass
class Batch:
    """Random model inputs of the config's shapes."""

    x: torch.Tensor  # [B, in_chans, S, S] clean latents
    t_tex: torch.Tensor  # [B]
    t_sem: torch.Tensor  # [B]
    y: torch.Tensor  # [B] class labels
    repa_target: Optional[torch.Tensor]  # [B, repa_dim, S/p, S/p], None without REPA


def make_batch(args: sfd.LightningDiTArgs, batch: int, device: torch.device, generator: torch.Generator) -> Batch:
    """Inputs for ``batch`` samples: latents, times, labels and (with REPA) a target feature map."""
    side = args.input_size
    grid = side // args.patch_size
    rand = partial(torch.randn, generator=generator, device=device)
    repa = None if args.repa_target_dim is None else rand(batch, args.repa_target_dim, grid, grid)
    return Batch(
        x=rand(batch, args.in_chans, side, side),
        t_tex=torch.rand(batch, generator=generator, device=device),
        t_sem=torch.rand(batch, generator=generator, device=device),
        y=torch.randint(0, args.num_classes, (batch,), generator=generator, device=device),
        repa_target=repa,
    )


@dataclass
class Bench:
    """Everything a row needs: the (possibly compiled) model for the forward rows and the run settings."""

    model: torch.nn.Module
    model_args: sfd.LightningDiTArgs
    config: sfd.SFDConfig
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def forward_step(bench: Bench, inputs: Batch) -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, cleanup) for one eval forward as a sampler calls it: no grad, no REPA projector."""
    bench.model.eval()

    def step() -> None:
        with torch.no_grad(), bench.autocast():
            bench.model(inputs.x, inputs.t_tex, inputs.t_sem, inputs.y, repa=False)

    return step, lambda: None


def train_step(bench: Bench, inputs: Batch) -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, cleanup) for one step of the project's trainer (``Trainer.train_step``: loss with per-row generators,
    backward, clipping when configured, AdamW, EMA). The trainer is new for each row so its optimizer state counts
    in that row's memory only; precision and compilation follow the trainer's rules (``train.precision``,
    ``train.compile``; CPUs train in fp32)."""
    from sfd.train import Trainer

    trainer = Trainer(bench.config, distributed.Topology(), with_data=False, device=bench.device)  # writes nothing
    rows = range(len(inputs.x))

    def step() -> None:
        trainer.train_step(inputs.x, inputs.y, inputs.repa_target, rows)

    def cleanup() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.optimizer.state.clear()

    return step, cleanup


STEPS = {"forward": forward_step, "train": train_step}


def time_step(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Run ``warmup`` untimed then ``iters`` timed calls; wall-clock ms of each timed call (device synchronised)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def run_row(bench: Bench, meter: MemoryMeter, mode: str, batch: int, warmup: int, iters: int) -> dict:
    """Time one (mode, batch) pair; an accelerator out-of-memory gives a row with ``error`` set instead of times."""
    row = {"mode": mode, "batch": batch}
    cleanup = None
    try:
        inputs = make_batch(bench.model_args, batch, bench.device, bench.generator)
        meter.start()
        step, cleanup = STEPS[mode](bench, inputs)
        times = time_step(step, warmup, iters, bench.device)
        peak = meter.peak_mib()
    except torch.OutOfMemoryError:
        row.update(ms_per_iter=None, images_per_s=None, peak_mem_mib=None, times_ms=[], error="out of memory")
    else:
        median = statistics.median(times)
        row.update(ms_per_iter=median, images_per_s=batch / (median / 1e3), peak_mem_mib=peak, times_ms=times)
    finally:
        if cleanup is not None:
            cleanup()
    return row


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table (OOM for rows that ran out of memory)."""
    lines = ["| mode | batch | ms/iter | img/s | peak mem (MiB) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['mode']} | {row['batch']} | OOM | OOM | OOM |")
        else:
            lines.append(f"| {row['mode']} | {row['batch']} | {row['ms_per_iter']:.2f} | {row['images_per_s']:.2f} "
                         f"| {row['peak_mem_mib']:.1f} |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    write_json_atomic(path, payload, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Benchmark the config's model; returns the exit status (2 for a config error)."""
    args = parse_args(argv)
    overrides = list(args.override) + (["model.use_checkpoint=true"] if args.grad_checkpointing else []) + [
        f"train.precision={args.dtype}", f"train.compile={str(args.compile).lower()}"]  # the train rows' trainer
    try:
        config = sfd.load_config(args.config, overrides)
    except sfd.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device, dtype = args.device, DTYPES[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        print(f"warning: {args.dtype} on CPU runs under CPU autocast and is usually far slower than fp32; "
              "use it only to check that the path works", file=sys.stderr)
    if args.compile and args.warmup == 0:
        print("warning: --compile with --warmup 0 counts the compilation in the first timed iteration", file=sys.stderr)

    model = sfd.build_model(config).to(device)
    model_args = model.args
    n_params = sum(p.numel() for p in model.parameters())
    if args.compile:
        model = compile_module(model, Accelerator.of(device))
    generator = torch.Generator(device=device).manual_seed(config.train.global_seed)
    bench = Bench(model, model_args, config, device, dtype, generator)
    meter = MemoryMeter(device)

    tokens = (model_args.input_size // model_args.patch_size) ** 2
    config_text = args.config + "".join(f" {item}" for item in overrides)
    print(f"# {device_name(device)} | torch {torch.__version__} | config {config_text} | "
          f"{config.model.model_type}, {n_params / 1e6:.2f}M params, {tokens} tokens | dtype {args.dtype} | "
          f"compile {args.compile} | grad checkpointing {model_args.use_checkpoint} | "
          f"warmup {args.warmup}, iters {args.iters}", flush=True)

    rows = [run_row(bench, meter, mode, batch, args.warmup, args.iters)
            for mode in MODES[args.mode] for batch in args.batch]
    print()
    print(markdown_table(rows))
    print(f"\nms/iter: median over {args.iters} timed iterations; peak mem: {meter.method}")

    if args.json is not None:
        write_json(args.json, {
            "device": device_name(device), "torch": torch.__version__, "config": args.config,
            "overrides": overrides, "model_type": config.model.model_type, "params_m": n_params / 1e6,
            "tokens": tokens, "dtype": args.dtype, "compile": args.compile,
            "grad_checkpointing": model_args.use_checkpoint, "warmup": args.warmup, "iters": args.iters,
            "memory": meter.method, "rows": rows,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
