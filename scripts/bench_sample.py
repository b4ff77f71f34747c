#!/usr/bin/env python
"""Sampler cost per method, with and without guidance: NFE, seconds per image and peak memory, as a table.

    python scripts/bench_sample.py --config configs/tiny/sfd_tiny.yaml --batch 4
    python scripts/bench_sample.py --config configs/sfd/lightningdit_xl/inference_4m.yaml --ckpt 4000000.pt \\
        --guide-config configs/sfd/autoguidance_b/inference.yaml --batch 16

Without --ckpt the weights are random (perturbed so the velocity is not zero): timings per evaluation are real,
but an adaptive solver's NFE depends on the trained field, so pass real weights to measure dopri5's NFE.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from sfd.build import build_model
from sfd.checkpoint import load_weights
from sfd.config import ConfigError, load_config
from sfd.device import Accelerator, DeviceError, default_device
from sfd.guidance import Guidance
from sfd.samplers import sample
from sfd.schedule import TimeSplit


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny/sfd_tiny.yaml")
    parser.add_argument("--ckpt", help="weights (default: random)")
    parser.add_argument("--guide-config", help="AutoGuidance model config (default: CFG with the null label)")
    parser.add_argument("--guide-ckpt", help="guide weights (default: the guide config's, or random)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100], help="grid points for Euler and Heun")
    parser.add_argument("--scale", type=float, default=1.5, help="guidance scale of the guided rows")
    parser.add_argument("--device", help="torch device, e.g. cuda, cuda:1, npu, mps, cpu (default: $SFD_DEVICE, "
                                         "else the machine's accelerator, else cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    return parser.parse_args(argv)


def network(config_path: str, ckpt: str | None, device: torch.device, seed: int) -> torch.nn.Module:
    config = load_config(config_path)
    model = build_model(config)
    if ckpt:
        load_weights(model, ckpt)
    else:
        generator = torch.Generator().manual_seed(seed)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model.to(device).eval()


def peak_memory_mib(device: torch.device) -> float:
    """The accelerator's peak tensor memory, or the process's peak RSS where the device does not track one."""
    peak = Accelerator.of(device).max_memory_allocated(device)
    if peak is not None:
        return peak / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = default_device(args.device)
        config = load_config(args.config)
        model = network(args.config, args.ckpt, device, seed=0)
        guide = network(args.guide_config, args.guide_ckpt, device, seed=1) if args.guide_config else None
    except (ConfigError, DeviceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    split = TimeSplit.from_config(config)
    side = model.args.input_size
    z = torch.randn(args.batch, model.args.in_chans, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.arange(args.batch, device=device) % config.data.num_classes
    methods = [("dopri5", config.sample.num_sampling_steps)]
    methods += [(name, steps) for steps in args.steps for name in ("euler", "heun")]
    guidances = [("none", None), ("autoguidance" if guide else "cfg", Guidance(args.scale, args.scale, guide=guide))]
    accelerator = Accelerator.of(device)
    # An explicit benchmark setting: bf16 autocasts on the CPU too (unlike training and sampling, which keep it fp32).
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    rows = []
    for method, steps in methods:
        for label, guidance in guidances:
            accelerator.reset_peak_memory_stats(device)
            accelerator.synchronize(device)
            start = time.perf_counter()
            with autocast:
                result = sample(model, z, y, split, method=method, num_steps=steps, atol=config.sample.atol,
                                rtol=config.sample.rtol, guidance=guidance)
            accelerator.synchronize(device)
            seconds = time.perf_counter() - start
            name = method if method == "dopri5" else f"{method}-{steps}"
            rows.append((name, label, result.nfe, seconds / args.batch, peak_memory_mib(device)))
    where = accelerator.device_name(device)
    print(f"# {where} | torch {torch.__version__} | {args.config} ({config.model.model_type}) | batch {args.batch} | "
          f"{args.dtype} | weights: {'checkpoint' if args.ckpt else 'random'}\n")
    print("| sampler | guidance | NFE | s/image | peak mem (MiB) |\n|---|---|---:|---:|---:|")
    for name, label, nfe, per_image, memory in rows:
        print(f"| {name} | {label} | {nfe} | {per_image:.4f} | {memory:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
