#!/usr/bin/env python
"""Measure the whole training loop (data loading, loss, backward, AdamW, EMA) on synthetic shards shaped like the
config's latents: step time, images/s and peak memory per global batch size and data path (per-item shard reads,
or the in-memory fast path ``data.in_memory``), as a table with the speed-up of the fast path.

    python scripts/bench_train.py --config configs/tiny/sfd_tiny.yaml --batch 8 16 --steps 10
    python scripts/bench_train.py --config configs/demo/sfd_fashion.yaml --batch 32 --steps 100   # the demo's model
    python scripts/bench_train.py --config configs/sfd/lightningdit_xl/train.yaml --batch 32 --precision bf16
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from sfd.config import ConfigError, load_config
from sfd.data.synthetic import write_synthetic_shards
from sfd.device import Accelerator, default_device
from sfd.lightningdit import REPA_TARGET_DIMS
from sfd.train import Trainer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny/sfd_tiny.yaml")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch", type=int, nargs="+", default=[8], help="global batch sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
    parser.add_argument("--precision", choices=["no", "fp32", "bf16", "fp16"], default="fp32",
                        help="train.precision: no|fp32 (exact), bf16|fp16 (autocast); CPUs always run fp32")
    parser.add_argument("--device", help="torch device, e.g. cuda, npu, mps, cpu (default: $SFD_DEVICE, else the "
                                         "machine's accelerator, else cpu)")
    parser.add_argument("--data", nargs="+", choices=["shards", "memory"], default=["shards", "memory"],
                        help="data paths to time: per-item shard reads and/or data.in_memory (default: both)")
    return parser.parse_args(argv)


def peak_memory_mib(device: torch.device) -> float:
    """The accelerator's peak tensor memory, or the process's peak RSS where the device does not track one."""
    peak = Accelerator.of(device).max_memory_allocated(device)
    if peak is not None:
        return peak / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process peak


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for batch, data_path in itertools.product(args.batch, args.data):
            try:
                config = load_config(args.config, [*args.override, f"train.global_batch_size={batch}",
                                                   f"train.precision={args.precision}", "data.valid_path=null",
                                                   f"data.in_memory={str(data_path == 'memory').lower()}"])
            except ConfigError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            model = config.model
            side = config.data.image_size // config.vae.downsample_ratio
            data = Path(scratch) / f"data{batch}"
            if not data.exists():
                write_synthetic_shards(data, num_items=batch * (args.steps + 1), num_classes=min(config.data.num_classes, 10),
                                       texture_chans=model.in_chans - model.semantic_chans,
                                       semantic_chans=max(model.semantic_chans, 1), grid=side,
                                       dino_dim=model.repa_target_dim or REPA_TARGET_DIMS.get(model.repa_dino_version
                                                                                               or "", 8),
                                       shard_size=batch)
            config.data.data_path = str(data)
            config.train.output_dir = str(Path(scratch) / f"runs{batch}_{data_path}")
            config.train.max_steps, config.train.ckpt_every = args.steps + 1, 10**9
            config.train.log_every, config.train.tensorboard = 10**9, False
            trainer = Trainer(config, device=default_device(args.device))
            accelerator = trainer.accelerator
            accelerator.reset_peak_memory_stats(trainer.device)
            config.train.max_steps = 1
            trainer.run(progress=False, final_checkpoint=False)  # warm-up step (allocations, kernels, compilation)
            config.train.max_steps = args.steps + 1
            accelerator.synchronize(trainer.device)
            start = time.perf_counter()
            trainer.run(progress=False, final_checkpoint=False)
            accelerator.synchronize(trainer.device)
            seconds = (time.perf_counter() - start) / args.steps
            rows.append((batch, data_path, seconds * 1000, batch / seconds, peak_memory_mib(trainer.device),
                         trainer.throughput(batch / seconds).get("mfu")))
            device = accelerator.device_name(trainer.device)
    print(f"# {device} | torch {torch.__version__} | {args.config} | {config.model.model_type} | "
          f"precision {args.precision} (CPU runs fp32) | {args.steps} timed steps incl. data loading and EMA\n")
    flops = trainer.flops_per_image
    peak = f"{trainer.peak_flops / 1e12:g} TFLOP/s peak" if trainer.peak_flops else "peak unknown: set SFD_PEAK_TFLOPS"
    print(f"# training FLOPs per image {flops / 1e9:.2f} G (3 × forward); MFU against {peak}\n")
    print("| global batch | data path | ms/step | steps/s | img/s (one device) | MFU | speed-up vs shards | "
          "peak mem (MiB) |\n|---:|---|---:|---:|---:|---:|---:|---:|")
    shard_ms = {row[0]: row[2] for row in rows if row[1] == "shards"}
    for batch, path, ms, rate, memory, utilisation in rows:
        ratio = f"{shard_ms[batch] / ms:.2f}×" if batch in shard_ms else "–"
        mfu = f"{100 * utilisation:.1f} %" if utilisation is not None else "–"
        print(f"| {batch} | {path} | {ms:.1f} | {1000 / ms:.1f} | {rate:.1f} | {mfu} | {ratio} | {memory:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
