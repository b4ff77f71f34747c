#!/usr/bin/env python
"""Benchmarks of the network's forward, the training step, the training loop, the samplers, and the accelerator suite.

Every sub-command prints one line saying where and what it ran, then a Markdown table; --json PATH also writes the
rows as JSON (`device` writes device.json and device.md into --out). Config overrides (section.key=value) may come
anywhere on the command line. docs/benchmarks.md describes each table (§2-§6).

Examples:
    python scripts/bench.py forward --batch 1 4                         # SFD-XL/1 in fp32 on this machine's device
    python scripts/bench.py step --precision bf16 --compile --batch 32 64 --json step.json
    python scripts/bench.py step --config configs/sfd/autoguidance_b/train.yaml model.use_checkpoint=true
    python scripts/bench.py loop --config sfd/experiments/configs/sfd_fashion.yaml --batch 32 --steps 100
    python scripts/bench.py sample --batch 4 --samplers dopri5 euler-50 heun-9-phases
    python scripts/bench.py device --out outputs/bench/device           # the accelerator suite
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors.torch import load_file

from sfd.bench import (
    MemoryMeter,
    elapsed_ms,
    markdown_table,
    perturb_weights,
    relative_error,
    resolve_device,
    run_header,
    time_calls,
    timing_summary,
    write_json,
    write_markdown,
)
from sfd.build import build_model
from sfd.checkpoint import load_weights
from sfd.cli import UsageFormatter, add_overrides_argument, make_parser, parse_with_overrides
from sfd.config import ConfigError, SFDConfig, load_config
from sfd.device import Accelerator, DeviceError, compile_by_default, compile_module, matmul_precision
from sfd.lightningdit import LightningDiTArgs
from sfd.throughput import forward_flops_per_image, model_flop_utilisation, peak_flops, training_flops_per_image

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "data"  # the official-code reference tensors (docs/goldens.md)
XL_CONFIG = "configs/sfd/lightningdit_xl/train.yaml"
TINY_CONFIG = "configs/tiny/sfd_tiny.yaml"
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# (batch sizes, warm-up calls, timed calls) of forward and step: 32 is the release's per-GPU batch (256 over 8 GPUs).
CPU_DEFAULTS = ((1, 4), 1, 3)
ACCELERATOR_DEFAULTS = ((1, 32), 3, 10)
SUITE_CONFIGS = f"{XL_CONFIG} on accelerators, {TINY_CONFIG} on the CPU"
DEFAULT_SAMPLERS = ("dopri5", "euler-50", "heun-50", "euler-100", "heun-100")


# -- the command line ---------------------------------------------------------------------------------------------

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


def subcommand(subparsers, name: str, summary: str, default_config: Optional[str]) -> argparse.ArgumentParser:
    """A sub-command with the options every one has: --config, --device, --json and the overrides."""
    parser = subparsers.add_parser(name, help=summary, formatter_class=UsageFormatter,
                                   description=textwrap.fill(f"{summary[0].upper()}{summary[1:]}.", 116))
    parser.add_argument("--config", default=default_config,
                        help=f"SFD YAML (default: {default_config or SUITE_CONFIGS})")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cuda, cuda:1, npu, xpu, mps, cpu (default: $SFD_DEVICE, else the "
                             "machine's accelerator, else cpu)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    add_overrides_argument(parser)
    return parser


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """forward and step: batch sizes, precision, compilation and the number of calls (defaults by device)."""
    parser.add_argument("--batch", action="extend", nargs="+", type=positive_int, metavar="N",
                        help=f"batch size(s) (default: {' and '.join(map(str, CPU_DEFAULTS[0]))} on CPU, "
                             f"{' and '.join(map(str, ACCELERATOR_DEFAULTS[0]))} on accelerators)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 exact, tf32 matmuls, bf16/fp16 autocast with fp32 master weights; CPUs compute "
                             "in fp32 whatever the setting, as training and sampling do (default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="regional torch.compile (the repeated block); compilation happens in the warm-up calls, "
                             "so keep --warmup >= 1")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help=f"untimed calls per row (default: {CPU_DEFAULTS[1]} on CPU, "
                             f"{ACCELERATOR_DEFAULTS[1]} on accelerators)")
    parser.add_argument("--iters", type=positive_int, default=None,
                        help=f"timed calls per row; the median is reported (default: {CPU_DEFAULTS[2]} on CPU, "
                             f"{ACCELERATOR_DEFAULTS[2]} on accelerators)")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_timing_options(subcommand(commands, "forward", "time the eval forward (a sampler's call) per batch size, "
                                  "with images/s, MFU and peak memory", XL_CONFIG))
    add_timing_options(subcommand(commands, "step", "time one training step (the trainer's step object: loss, "
                                  "backward, AdamW, EMA) per batch size, with images/s, MFU and peak memory",
                                  XL_CONFIG))
    loop = subcommand(commands, "loop", "time the whole training loop (data loading and the step) on synthetic "
                      "shards per global batch size and data path", TINY_CONFIG)
    loop.add_argument("--batch", nargs="+", type=positive_int, default=[8], metavar="N", help="global batch sizes")
    loop.add_argument("--steps", type=positive_int, default=10, help="timed steps after one warm-up step")
    loop.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                      help="train.precision (CPUs run fp32) (default: %(default)s)")
    loop.add_argument("--data", nargs="+", choices=("shards", "memory"), default=["shards", "memory"],
                      help="per-item shard reads and/or data.in_memory (default: both)")
    sample = subcommand(commands, "sample", "NFE, seconds per image and peak memory of each sampler, unguided "
                        "and guided", TINY_CONFIG)
    add_sampling_options(sample)
    device = subcommand(commands, "device", "the accelerator suite: numerics against the goldens, throughput and "
                        "MFU of the config's network, sampling throughput (docs/benchmarks.md §6)", None)
    device.add_argument("--out", type=Path, default=Path("outputs/bench/device"),
                        help="folder for device.json and device.md (default: %(default)s)")
    device.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include the compiled rows (default: on for accelerators, off on the CPU)")
    return parser


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", help="weights (default: random, perturbed so that the velocity is not zero)")
    parser.add_argument("--guide-config", help="AutoGuidance model config (default: CFG with the null label)")
    parser.add_argument("--guide-ckpt", help="guide weights (default: random)")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS), metavar="NAME",
                        help="named settings as scripts/sample.py --sampler takes them: dopri5, euler-N, heun-N, "
                             "…-phases (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.5, help="guidance scale of the guided rows")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="as for forward (default: fp32)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line; forward/step defaults that depend on the device are filled in here."""
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    try:
        args.device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.command in ("forward", "step"):
        batches, warmup, iters = CPU_DEFAULTS if args.device.type == "cpu" else ACCELERATOR_DEFAULTS
        args.batch = list(dict.fromkeys(args.batch or batches))  # keep the order, drop repeats
        args.warmup = warmup if args.warmup is None else args.warmup
        args.iters = iters if args.iters is None else args.iters
    return args


# -- shared pieces ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigSource:
    """A config file with the command line's overrides; each row adds its own settings."""

    path: str
    overrides: tuple[str, ...]

    def load(self, *extra: str) -> SFDConfig:
        return load_config(self.path, [*self.overrides, *extra])

    def describe(self, *extra: str) -> str:
        return " ".join([self.path, *self.overrides, *extra])


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device):
    """The matmul switches (TF32 on for tf32 only) and the autocast of ``precision`` on ``device``, as the device
    layer applies them to training and sampling (the CPU computes in fp32)."""
    with matmul_precision(precision), Accelerator.of(device).autocast(precision):
        yield


def effective(precision: str, device: torch.device) -> str:
    return Accelerator.of(device).effective_precision(precision)


def random_inputs(model: LightningDiTArgs, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Latents, times, labels and (with REPA) a DINOv2 map of the network's shapes, for ``batch`` samples."""
    generator = torch.Generator().manual_seed(seed)
    side, grid = model.input_size, model.input_size // model.patch_size
    inputs = {"x": torch.randn(batch, model.in_chans, side, side, generator=generator),
              "t": torch.rand(batch, generator=generator),
              "y": torch.randint(0, model.num_classes, (batch,), generator=generator)}
    if model.repa_target_dim is not None:
        inputs["dino"] = torch.randn(batch, model.repa_target_dim, grid, grid, generator=generator)
    return {key: value.to(device) for key, value in inputs.items()}


def measure_row(mode: str, batch: int, make_call: Callable[[], Callable[[], object]], device: torch.device,
                meter: MemoryMeter, warmup: int, iters: int, flops_per_image: float, peak: Optional[float]) -> dict:
    """One (mode, batch) row: ``make_call`` builds what the row needs (inside the memory window, so a step's
    optimizer state counts in its own row) and returns the call to time. Out of memory gives a row with ``error``."""
    row = {"mode": mode, "batch": batch}
    try:
        meter.start()
        call = make_call()
        times = time_calls(call, device, warmup, iters)
        peak_mib = meter.peak_memory_mib()
    except torch.OutOfMemoryError:
        return {**row, "ms_per_iter": None, "images_per_s": None, "mfu": None, "peak_mem_mib": None, "times_ms": [],
                "error": "out of memory"}
    summary = timing_summary(times, batch)
    return {**row, "ms_per_iter": summary["ms"], "images_per_s": summary["per_s"],
            "mfu": model_flop_utilisation(summary["per_s"], flops_per_image, peak), "peak_mem_mib": peak_mib,
            "times_ms": times}


def rows_table(rows: list[dict]) -> str:
    """forward/step rows: OOM for rows that ran out of memory, – where the device's peak FLOP/s is unknown."""
    def cells(row: dict) -> list:
        if row.get("error"):
            return [row["mode"], row["batch"], "OOM", "OOM", "–", "OOM"]
        mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else None
        return [row["mode"], row["batch"], row["ms_per_iter"], row["images_per_s"], mfu, f"{row['peak_mem_mib']:.1f}"]

    return markdown_table(["mode", "batch", "ms/iter", "img/s", "MFU", "peak mem (MiB)"], [cells(row) for row in rows])


# -- forward and step ---------------------------------------------------------------------------------------------

def forward_call(model: torch.nn.Module, inputs: dict, precision: str, device: torch.device) -> Callable[[], None]:
    """One eval forward as a sampler calls it: no grad, no REPA projector."""
    def call() -> None:
        with torch.no_grad(), precision_scope(precision, device):
            model(inputs["x"], inputs["t"], inputs["t"], inputs["y"], repa=False)

    return call


def step_call(config: SFDConfig, batch: int, device: torch.device, precision: str) -> Callable[[], None]:
    """One optimizer step of the trainer's step object (loss with per-row generators, backward, clipping when
    configured, AdamW, EMA), built fresh so that its optimizer state counts in this row only."""
    from sfd.train import DiffusionStep

    step = DiffusionStep(config, device)  # compiles its network's blocks when train.compile is on
    inputs = random_inputs(step.model.args, batch, device)
    rows = range(batch)

    def call() -> None:
        with matmul_precision(precision):  # train.precision has no tf32: fp32 with the TF32 switches on
            step(inputs["x"], inputs["y"], inputs.get("dino"), rows=rows)

    return call


def step_config(source: ConfigSource, batch: int, precision: str, compiled: bool) -> SFDConfig:
    """The config of a step row: its batch, its precision (tf32 trains as fp32 with TF32 matmuls) and whether the
    step compiles (train.compile: regional compilation of the network's blocks)."""
    train_precision = "fp32" if precision == "tf32" else precision
    return source.load(f"train.global_batch_size={batch}", f"train.precision={train_precision}",
                       f"train.compile={str(compiled).lower()}")


def run_forward(args: argparse.Namespace) -> dict:
    source, device = ConfigSource(args.config, tuple(args.overrides)), args.device
    config = source.load()
    flops, peak = forward_flops_per_image(config), device_peak(device, args.precision)
    model = build_model(config).to(device).eval()
    if args.compile:
        model = compile_module(model, Accelerator.of(device))
    meter, rows = MemoryMeter(device), []
    for batch in args.batch:
        inputs = random_inputs(model.args, batch, device)
        rows.append(measure_row("forward", batch, partial(forward_call, model, inputs, args.precision, device),
                                device, meter, args.warmup, args.iters, flops, peak))
    return report_rows(args, source, config, flops, peak, meter, rows)


def run_step(args: argparse.Namespace) -> dict:
    source, device = ConfigSource(args.config, tuple(args.overrides)), args.device
    config = source.load()
    flops, peak = training_flops_per_image(config), device_peak(device, args.precision)
    meter, rows = MemoryMeter(device), []
    for batch in args.batch:
        make_call = partial(step_call, step_config(source, batch, args.precision, args.compile), batch, device,
                            args.precision)
        rows.append(measure_row("step", batch, make_call, device, meter, args.warmup, args.iters, flops, peak))
    return report_rows(args, source, config, flops, peak, meter, rows)


def device_peak(device: torch.device, precision: str) -> Optional[float]:
    """The device's dense peak FLOP/s at the precision it really computes in (None when unknown: no MFU)."""
    return peak_flops(Accelerator.of(device).device_name(device), effective(precision, device))


def peak_note(peak: Optional[float]) -> str:
    return f"MFU against the {peak / 1e12:g} TFLOP/s peak" if peak else "no MFU: peak unknown (set SFD_PEAK_TFLOPS)"


def report_rows(args: argparse.Namespace, source: ConfigSource, config: SFDConfig, flops: float,
                peak: Optional[float], meter: MemoryMeter, rows: list[dict]) -> dict:
    """Print forward/step rows under their header line; the JSON payload."""
    precision = effective(args.precision, args.device)
    header = run_header(args.device, f"config {source.describe()}", config.model.model_type,
                        f"{flops / 1e9:.2f} GFLOP per image", f"precision {args.precision} (runs as {precision})",
                        f"compile {args.compile}", f"warmup {args.warmup}, iters {args.iters}")
    print(header, "", rows_table(rows), "", f"ms/iter: median of {args.iters} timed calls; {peak_note(peak)}; "
          f"peak mem: {meter.method}", sep="\n")
    return {"header": header, "config": source.describe(), "model_type": config.model.model_type,
            "flops_per_image": flops, "precision": args.precision, "effective_precision": precision,
            "compile": args.compile, "warmup": args.warmup, "iters": args.iters, "memory": meter.method,
            "rows": rows}


# -- the training loop --------------------------------------------------------------------------------------------

def loop_config(source: ConfigSource, scratch: Path, batch: int, data_path: str, steps: int,
                precision: str) -> SFDConfig:
    """A config that trains ``steps`` steps on synthetic shards in ``scratch`` (written once per batch size)."""
    from sfd.data.synthetic import write_synthetic_shards
    from sfd.lightningdit import REPA_TARGET_DIMS

    data = scratch / f"data{batch}"
    config = source.load(f"train.global_batch_size={batch}", f"train.precision={precision}", "data.valid_path=null",
                         f"data.in_memory={str(data_path == 'memory').lower()}", f"train.max_steps={steps}",
                         f"train.ckpt_every={10**9}", f"train.log_every={10**9}", "train.tensorboard=false",
                         f"data.data_path={data}", f"train.output_dir={scratch / f'runs{batch}_{data_path}'}")
    if not data.exists():
        model = config.model
        write_synthetic_shards(data, num_items=batch * steps, num_classes=min(config.data.num_classes, 10),
                               texture_chans=model.in_chans - model.semantic_chans,
                               semantic_chans=max(model.semantic_chans, 1),
                               grid=config.data.image_size // config.vae.downsample_ratio,
                               dino_dim=model.repa_target_dim or REPA_TARGET_DIMS.get(model.repa_dino_version or "", 8),
                               shard_size=batch)
    return config


def loop_row(config: SFDConfig, device: torch.device, steps: int, meter: MemoryMeter) -> dict:
    """Milliseconds per step of ``steps`` steps of the training loop after one warm-up step (allocations, kernels,
    compilation), data loading included."""
    from sfd.train import Trainer

    meter.start()
    trainer = Trainer(config, device=device)
    config.train.max_steps = 1
    trainer.run(progress=False, final_checkpoint=False)
    config.train.max_steps = steps + 1
    ms = elapsed_ms(partial(trainer.run, progress=False, final_checkpoint=False), device) / steps
    return {"ms_per_step": ms, "peak_mem_mib": meter.peak_memory_mib(),
            "images_per_s": config.train.global_batch_size / (ms / 1e3)}


def run_loop(args: argparse.Namespace) -> dict:
    source, device = ConfigSource(args.config, tuple(args.overrides)), args.device
    meter, rows = MemoryMeter(device), []
    with tempfile.TemporaryDirectory() as scratch:
        for batch, data_path in itertools.product(args.batch, args.data):
            config = loop_config(source, Path(scratch), batch, data_path, args.steps + 1, args.precision)
            rows.append({"batch": batch, "data": data_path, **loop_row(config, device, args.steps, meter)})
    flops, peak = training_flops_per_image(config), device_peak(device, args.precision)
    shard_ms = {row["batch"]: row["ms_per_step"] for row in rows if row["data"] == "shards"}
    for row in rows:
        row["mfu"] = model_flop_utilisation(row["images_per_s"], flops, peak)
        row["speedup_vs_shards"] = shard_ms[row["batch"]] / row["ms_per_step"] if row["batch"] in shard_ms else None
    header = run_header(device, f"config {source.describe()}", config.model.model_type,
                        f"precision {args.precision} (runs as {effective(args.precision, device)})",
                        f"{args.steps} timed steps incl. data loading and EMA")
    table = markdown_table(
        ["global batch", "data path", "ms/step", "steps/s", "img/s (one device)", "MFU", "speed-up vs shards",
         "peak mem (MiB)"],
        [[row["batch"], row["data"], f"{row['ms_per_step']:.1f}", f"{1e3 / row['ms_per_step']:.1f}",
          f"{row['images_per_s']:.1f}", f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else None,
          f"{row['speedup_vs_shards']:.2f}×" if row["speedup_vs_shards"] is not None else None,
          f"{row['peak_mem_mib']:.0f}"] for row in rows], align="rlrrrrrr")
    print(header, "", table, "", f"training FLOPs per image {flops / 1e9:.2f} G (3 × forward); {peak_note(peak)}; "
          f"peak mem: {meter.method}", sep="\n")
    return {"header": header, "config": source.describe(), "flops_per_image": flops, "memory": meter.method,
            "rows": rows}


# -- samplers -----------------------------------------------------------------------------------------------------

def bench_network(config: SFDConfig, ckpt: Optional[str], device: torch.device, seed: int) -> torch.nn.Module:
    """The config's network with ``ckpt``'s weights, or random weights perturbed so that the zero-initialised
    output layers give a non-zero velocity (timings per evaluation are real; an adaptive solver's NFE on random
    weights is not a trained model's)."""
    model = build_model(config)
    if ckpt:
        load_weights(model, ckpt)
    else:
        perturb_weights(model, seed)
    return model.to(device).eval()


def timed_sampling(model: torch.nn.Module, z: torch.Tensor, y: torch.Tensor, config: SFDConfig,
                   guide: Optional[torch.nn.Module], precision: str, device: torch.device) -> tuple[float, int]:
    """Milliseconds and NFE of sampling ``z`` with the config's sampler and guidance."""
    from sfd.samplers import SamplerOptions, sample

    options = SamplerOptions.from_config(config, guide)
    options.check_device(device)
    generator = torch.Generator(device).manual_seed(0)  # the SDE's noise (sample.mode=SDE)
    result = {}

    def call() -> None:
        with precision_scope(precision, device):
            result["nfe"] = sample(model, z, y, options, generator).nfe

    return elapsed_ms(call, device), result["nfe"]


def sampler_rows(source: ConfigSource, model: torch.nn.Module, guide: Optional[torch.nn.Module],
                 names: Sequence[str], scale: float, batch: int, precision: str, device: torch.device) -> list[dict]:
    """One row per sampler and guidance (none, then CFG or AutoGuidance at ``scale``): NFE, s/image, peak memory."""
    from sfd.samplers import sampler_overrides

    meter, rows = MemoryMeter(device), []
    args = model.args
    z = torch.randn(batch, args.in_chans, args.input_size, args.input_size,
                    generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.arange(batch, device=device) % args.num_classes
    guided = "autoguidance" if guide is not None else "cfg"
    for name, (label, cfg_scale) in itertools.product(names, [("none", 1.0), (guided, scale)]):
        config = source.load(*sampler_overrides(name), f"sample.cfg_scale={cfg_scale}")
        meter.start()
        ms, nfe = timed_sampling(model, z, y, config, guide if label != "none" else None, precision, device)
        rows.append({"sampler": name, "guidance": label, "nfe": nfe, "s_per_image": ms / 1e3 / batch,
                     "images_per_s": batch / (ms / 1e3), "peak_mem_mib": meter.peak_memory_mib()})
    return rows


def samplers_table(rows: list[dict]) -> str:
    return markdown_table(["sampler", "guidance", "NFE", "s/image", "img/s", "peak mem (MiB)"],
                          [[row["sampler"], row["guidance"], row["nfe"], f"{row['s_per_image']:.4f}",
                            f"{row['images_per_s']:.2f}", f"{row['peak_mem_mib']:.0f}"] for row in rows],
                          align="llrrrr")


def run_sample(args: argparse.Namespace) -> dict:
    from sfd.samplers import sampler_overrides

    for name in args.samplers:
        sampler_overrides(name)  # a ValueError naming the accepted forms before any work
    source, device = ConfigSource(args.config, tuple(args.overrides)), args.device
    config = source.load()
    model = bench_network(config, args.ckpt, device, seed=0)
    guide = (bench_network(load_config(args.guide_config), args.guide_ckpt, device, seed=1)
             if args.guide_config else None)
    rows = sampler_rows(source, model, guide, args.samplers, args.scale, args.batch, args.precision, device)
    header = run_header(device, f"config {source.describe()}", config.model.model_type, f"batch {args.batch}",
                        f"precision {args.precision} (runs as {effective(args.precision, device)})",
                        f"weights: {'checkpoint' if args.ckpt else 'random'}")
    print(header, "", samplers_table(rows), sep="\n")
    return {"header": header, "config": source.describe(), "batch": args.batch, "precision": args.precision,
            "rows": rows}


# -- the accelerator suite ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SuiteSize:
    """How big the `device` suite runs: the network timed and sampled, batches and repetitions."""

    config: str
    batch: int
    warmup: int
    iters: int
    sample_batch: int
    samplers: tuple[str, ...]


# Sized for 8 minutes on one H100, compilation included; the CPU variant (tiny network) checks that the suite runs.
ACCELERATOR_SUITE = SuiteSize(XL_CONFIG, batch=32, warmup=3, iters=10, sample_batch=16,
                              samplers=("euler-50", "heun-9-phases", "dopri5"))
CPU_SUITE = SuiteSize(TINY_CONFIG, batch=4, warmup=1, iters=2, sample_batch=2,
                      samplers=("euler-8", "heun-5-phases", "dopri5"))
SAMPLING_PRECISION = "tf32"  # scripts/sample.py's default: the release's FID setting


def suite_modes(device: torch.device, compiled: bool) -> dict[str, tuple[str, bool]]:
    """Precision modes (name: precision, compiled) that compute differently on ``device``: fp32, tf32, bf16 and
    bf16 compiled on a GPU; on the CPU, which computes every precision in fp32, fp32 (and fp32 compiled)."""
    modes: dict[str, tuple[str, bool]] = {}
    seen = set()
    for precision in ("fp32", "tf32", "bf16"):
        if effective(precision, device) not in seen:
            seen.add(effective(precision, device))
            modes[precision] = (precision, False)
    if compiled:
        last = list(modes)[-1]
        modes[f"{last}+compile"] = (last, True)
    return modes


def fresh_compilation() -> None:
    """Forget earlier compiled graphs: the golden models and the timed network share their block's code, and the
    graphs of one would count against the recompilation limit of the other (past it dynamo runs eagerly)."""
    torch._dynamo.reset()


def golden(name: str, device: torch.device) -> dict[str, torch.Tensor]:
    path = GOLDENS / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: golden file missing (the goldens live in tests/data of a checkout)")
    return {key: value.to(device) for key, value in load_file(str(path)).items()}


def golden_errors(device: torch.device, precision: str, compiled: bool) -> dict[str, float]:
    """Errors of every golden case (forward, CFG, AutoGuidance, Euler and dopri5 samplers, loss) in one mode."""
    import sfd
    from sfd.guidance import Guidance, guided_velocity
    from sfd.samplers import SamplerOptions, sample
    from sfd.schedule import TimeSplit

    model, config = sfd.load_model(GOLDENS / "sfd_tiny.yaml", device=device)
    guide, _ = sfd.load_model(GOLDENS / "sfd_tiny_guide.yaml", device=device)
    if compiled:
        fresh_compilation()
        model, guide = compile_module(model, Accelerator.of(device)), compile_module(guide, Accelerator.of(device))
    split, errors = TimeSplit.from_config(config), {}  # Δt 0.3, 16 semantic channels
    with torch.no_grad(), precision_scope(precision, device):
        case = golden("forward_sfd_tiny", device)
        x, t_tex, t_sem, y = case["x"], case["t_tex"], case["t_sem"], case["y"]
        out = model(x, t_tex, t_sem, y)
        errors["forward"] = relative_error(out.velocity, case["out"])
        errors["repa"] = relative_error(out.repa, case["repa_proj"])
        errors["cfg"] = relative_error(guided_velocity(model, x, t_tex, t_sem, y, Guidance(1.5, 1.5), 16),
                                       case["cfg_out"][:2])
        errors["autoguidance"] = relative_error(
            guided_velocity(model, x, t_tex, t_sem, y, Guidance(1.5, 1.5, guide=guide), 16), case["ag_out"])
        euler = golden("sample_euler_sfd_tiny", device)
        result = sample(model, euler["z"], euler["y"],
                        SamplerOptions(split=split, sampling_method="euler", num_sampling_steps=20))
        errors["euler (sample − z)"] = relative_error(result.x - euler["z"], euler["sample"] - euler["z"])
        dopri = golden("sample_dopri5_cfg_sfd_tiny", device)
        z = dopri["z"][:2]
        result = sample(model, z, dopri["y"][:2],
                        SamplerOptions(split=split, guidance=Guidance(1.5, 1.5), sampling_method="dopri5"))
        errors["dopri5+cfg (sample − z)"] = relative_error(result.x - z, dopri["sample"][:2] - z)
        errors["dopri5 NFE (golden 26)"] = result.nfe
    case = golden("loss_sfd_tiny", device)
    with precision_scope(precision, device):
        terms = sfd.FlowMatchingLoss.from_config(config, class_dropout_prob=0.0)(
            model.train(), case["x1"], case["y"], case["feature_dino"], t=case["t"], noise=case["x0"])
    errors["loss mse"] = relative_error(terms.mse, case["loss"])
    errors["loss repa"] = relative_error(terms.repa, case["repa_loss"])
    return errors


def numerics_table(columns: dict[str, dict[str, float]]) -> str:
    cases = list(next(iter(columns.values())))
    return markdown_table(["case", *columns], [[case, *(value if isinstance(value, int) else f"{value:.2e}"
                                                        for value in (column[case] for column in columns.values()))]
                                               for case in cases])


def suite_throughput(source: ConfigSource, size: SuiteSize, modes: dict[str, tuple[str, bool]],
                     device: torch.device) -> list[dict]:
    """Forward and step rows of every mode at the suite's batch, with MFU."""
    config = source.load()
    forward_flops, train_flops = forward_flops_per_image(config), training_flops_per_image(config)
    meter, rows, accelerator = MemoryMeter(device), [], Accelerator.of(device)
    for name, (precision, compiled) in modes.items():
        peak = device_peak(device, precision)
        model = build_model(config).to(device).eval()
        if compiled:
            fresh_compilation()
            model = compile_module(model, accelerator)
        inputs = random_inputs(model.args, size.batch, device)
        forward = measure_row("forward", size.batch, partial(forward_call, model, inputs, precision, device), device,
                              meter, size.warmup, size.iters, forward_flops, peak)
        del model, inputs  # not resident during the step row
        make_step = partial(step_call, step_config(source, size.batch, precision, compiled), size.batch, device,
                            precision)
        step = measure_row("step", size.batch, make_step, device, meter, size.warmup, size.iters, train_flops, peak)
        rows += [{"precision": name, **forward}, {"precision": name, **step}]
    return rows


def memory_text(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def throughput_table(rows: list[dict]) -> str:
    """One line per precision mode with the forward and step columns side by side (docs/benchmarks.md §8.1)."""
    def pair(forward: dict, step: dict) -> list:
        mfu = f"{100 * step['mfu']:.1f} %" if step.get("mfu") is not None else None
        if step.get("error") or forward.get("error"):
            return [forward["precision"], forward["batch"], "OOM", "OOM", "OOM", "OOM", None, "OOM"]
        return [forward["precision"], forward["batch"], f"{forward['ms_per_iter']:.1f}",
                f"{forward['images_per_s']:.0f}", f"{step['ms_per_iter']:.1f}", f"{step['images_per_s']:.0f}", mfu,
                memory_text(step["peak_mem_mib"])]

    lines = [pair(rows[index], rows[index + 1]) for index in range(0, len(rows), 2)]
    return markdown_table(["precision", "batch", "forward ms", "forward img/s", "step ms", "step img/s", "step MFU",
                           "peak step memory"], lines)


class SuiteReport:
    """The suite's results so far, rewritten to device.md and device.json after each part (so that a run cut short
    by a time limit leaves what it measured) and printed as each part ends."""

    def __init__(self, out: Path, device: torch.device, source: ConfigSource, suite: str) -> None:
        self.out, self.device, self.started = out, device, time.perf_counter()
        self.details = [f"config {source.describe()}", f"suite {suite}"]
        self.sections: list[tuple[str, str]] = []
        self.payload: dict = {"config": source.describe(), "suite": suite}
        out.mkdir(parents=True, exist_ok=True)
        print(run_header(device, *self.details), flush=True)

    def add(self, key: str, results: object, heading: str, table: str) -> None:
        self.payload[key] = results
        self.sections.append((heading, table))
        seconds = time.perf_counter() - self.started
        self.payload.update(header=run_header(self.device, *self.details, f"{seconds:.0f} s"), seconds=seconds)
        write_markdown(self.out / "device.md", self.sections, title=self.payload["header"].lstrip("# "))
        write_json(self.out / "device.json", self.payload)
        print(f"\n## {heading}\n\n{table}", flush=True)


def run_device(args: argparse.Namespace) -> dict:
    device, accelerator = args.device, Accelerator.of(args.device)
    size = CPU_SUITE if accelerator.is_cpu else ACCELERATOR_SUITE
    source = ConfigSource(args.config or size.config, tuple(args.overrides))
    model_type = source.load().model.model_type
    report = SuiteReport(args.out, device, source, "cpu (tiny network)" if accelerator.is_cpu else "accelerator")
    modes = suite_modes(device, compile_by_default(args.compile, accelerator))
    numerics = {name: golden_errors(device, *mode) for name, mode in modes.items()}
    report.add("numerics", numerics, "Numerics against the goldens",
               "error = max|ours − golden| / max|golden| (docs/goldens.md §5)\n\n" + numerics_table(numerics))
    throughput = suite_throughput(source, size, modes, device)
    report.add("throughput", throughput, f"Throughput ({model_type}, batch {size.batch}, median of {size.iters} "
               "calls)", throughput_table(throughput))
    model = bench_network(source.load(), None, device, seed=0)
    sampling = sampler_rows(source, model, None, size.samplers, 1.5, size.sample_batch, SAMPLING_PRECISION, device)
    report.add("sampling", sampling, f"Sampling ({model_type}, random weights, batch {size.sample_batch}, "
               f"{SAMPLING_PRECISION} (runs as {effective(SAMPLING_PRECISION, device)}))", samplers_table(sampling))
    print(f"\nwrote {args.out / 'device.md'} and {args.out / 'device.json'} ({report.payload['seconds']:.0f} s)")
    return report.payload


# -- main ---------------------------------------------------------------------------------------------------------

COMMANDS = {"forward": run_forward, "step": run_step, "loop": run_loop, "sample": run_sample,
            "device": run_device}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one sub-command; returns the exit status (2 with a one-line error for a bad config, file or setting)."""
    args = parse_args(argv)
    try:
        payload = COMMANDS[args.command](args)
    except (ConfigError, DeviceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json is not None:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
