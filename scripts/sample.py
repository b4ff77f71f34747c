#!/usr/bin/env python
"""Generate samples with SFD: an FID folder of PNGs (+ packed .npz), or a demo grid.

    python scripts/sample.py --config configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml \\
        --cfg_scale 1.5 --autoguidance_model_size b --autoguidance_ckpt_iter 70
    torchrun --nproc_per_node 8 scripts/sample.py --config ...   (or ./run_inference.sh CONFIG)
    python scripts/sample.py --config ... --demo --labels 207 360 387 974 --out grid.png

The release's flags (underscored names; hyphens also work) override the config's sample.* keys, and
section.key=value overrides override both; options and overrides may come in any order (--labels 1 2
sample.cfg_scale=1.5 works: an override is never taken as a flag's value). Flags are spelled out in full, not
abbreviated. Samples go to {train.output_dir}/{train.exp_name}/<name from the settings>/000000.png ..., then
<name>.npz. Sample i is seeded by (seed, i): the images do not depend on the number of processes, and a rerun
completes an interrupted folder without duplicates or gaps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from sfd import distributed
from sfd.build import guide_checkpoint, load_guide, load_model, model_checkpoint
from sfd.checkpoint import CheckpointError
from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.config import ConfigError, resolve_path
from sfd.device import (
    DEVICE_ENV,
    DEVICE_TYPES,
    PRECISIONS,
    DeviceError,
    compile_by_default,
    compile_module,
    set_matmul_precision,
)
from sfd.files import WriteError
from sfd.generate import (
    DEMO_LABELS,
    ImageSampler,
    LabelPlan,
    LatentDecoder,
    SampleFolderError,
    batches_of_rank,
    demo_grid,
    folder_name,
    write_fid_set,
)
from sfd.pretrained import autoguidance_overrides
from sfd.runlock import RunFolderBusy
from sfd.samplers import sampler_overrides
from sfd.visualize import save_png


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    # No abbreviations: the launchers make --ckpt, --out and --output-dir absolute by their full names before they
    # change into the repository, so an abbreviated path flag would silently name a file in the wrong folder.
    parser = make_parser(*__doc__.split("\n\n", 1), allow_abbrev=False)
    parser.add_argument("--config", required=True, help="SFD inference YAML (official layout)")
    add_overrides_argument(parser)
    parser.add_argument("--demo", action="store_true", help="write one grid image instead of an FID folder")
    parser.add_argument("--labels", type=int, nargs="+", default=list(DEMO_LABELS), help="demo grid classes")
    parser.add_argument("--out", default="demo_images/demo_samples.png", help="demo grid path (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: train.global_seed)")
    parser.add_argument("--ckpt", help="checkpoint overriding the config's ckpt_path")
    parser.add_argument("--output-dir", help="parent of the sample folder (default: {output_dir}/{exp_name})")
    parser.add_argument("--precision", choices=PRECISIONS, default="tf32",
                        help="no/fp32: exact float32; tf32: float32 with TF32 matmuls, the release's sampling "
                             "numerics; bf16/fp16: autocast sampling, fastest, not the release's FID setting. "
                             "CPUs always sample in fp32 (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICE_TYPES,
                        help=f"accelerator type (default: ${DEVICE_ENV}, else the machine's accelerator, else cpu)")
    for flag, kind in (("cfg_scale", float), ("cfg_interval_start", float), ("timestep_shift", float),
                       ("cfg_scale_sem", float), ("cfg_scale_tex", float), ("num_sampling_steps", int),
                       ("autoguidance_model_size", str), ("autoguidance_ckpt_iter", int)):
        parser.add_argument(f"--{flag}", f"--{flag.replace('_', '-')}", dest=flag, type=kind, nargs="+",
                            help="release flag (only the first value is used)")
    parser.add_argument("--fid_num", "--fid-num", dest="fid_num", type=int, help="number of samples")
    parser.add_argument("--sampler", metavar="NAME",
                        help="a named sampler setting instead of the config's: dopri5 (the release's), euler-N, "
                             "heun-N, each optionally with -phases (phase-aware integration), e.g. heun-9-phases "
                             "(docs/benchmarks.md §8.3); config overrides given after it still win")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="regional torch.compile of the network and the guide (the repeated block compiled once); "
                             "auto: on for accelerators, off on CPUs (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")
    return parse_with_overrides(parser, argv)


def release_overrides(args: argparse.Namespace) -> list[str]:
    """The release's flags as config overrides (the first value of each list, as inference.py does)."""
    overrides = []
    for flag in ("cfg_scale", "cfg_interval_start", "timestep_shift", "cfg_scale_sem", "cfg_scale_tex",
                 "num_sampling_steps"):
        values = getattr(args, flag)
        if values:
            overrides.append(f"sample.{flag}={values[0]}")
    if args.fid_num is not None:
        overrides.append(f"sample.fid_num={args.fid_num}")
    if args.autoguidance_model_size:
        overrides += autoguidance_overrides(args.autoguidance_model_size[0])
    return overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        topology = distributed.init(args.device)
        device = topology.device
    except DeviceError as error:  # e.g. SFD_DEVICE=npu without torch_npu
        print(f"error: {error}", file=sys.stderr)
        return 2
    precision = topology.accelerator.effective_precision(args.precision)  # what runs here: on a CPU always fp32
    set_matmul_precision(precision)
    try:
        named = sampler_overrides(args.sampler) if args.sampler else []
        model, config = load_model(args.config, [*release_overrides(args), *named, *args.overrides], args.ckpt,
                                   device)
        ag_iter = args.autoguidance_ckpt_iter[0] if args.autoguidance_ckpt_iter else None
        guide = load_guide(config, args.config, device, iteration_k=ag_iter)
        if compile_by_default({"auto": None, "on": True, "off": False}[args.compile], topology.accelerator):
            for network in (model, guide):  # in place: same keys, one compiled block shared by all blocks
                if network is not None:
                    compile_module(network, topology.accelerator)
        from sfd.tokenizers.texture_vae import load_texture_vae

        vae = load_texture_vae(resolve_path(config.vae.config_path, args.config), device=device)
        decoder = LatentDecoder(vae, config, device)
        seed = config.train.global_seed if args.seed is None else args.seed
        sampler = ImageSampler(model, config, decoder, guide=guide, device=device, seed=seed, precision=precision)
    except (ConfigError, CheckpointError, DeviceError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        distributed.shutdown()
        return 2
    if args.demo:
        bad = [label for label in args.labels if not 0 <= label <= config.data.num_classes]
        if bad:
            print(f"error: --labels: {bad[0]} is outside [0, {config.data.num_classes}] (data.num_classes = "
                  f"{config.data.num_classes}; {config.data.num_classes} is the null label)", file=sys.stderr)
            distributed.shutdown()
            return 2
    try:
        if args.demo:
            if topology.is_main:
                path = save_png(demo_grid(sampler, args.labels), args.out)
                print(f"demo grid: {path}")
            return 0
        name = folder_name(config, args.ckpt or config.ckpt_path,
                           args.autoguidance_model_size[0] if args.autoguidance_model_size else None, ag_iter,
                           separate_scales=bool(args.cfg_scale_sem or args.cfg_scale_tex))
        parent = Path(args.output_dir) if args.output_dir else Path(config.train.output_dir) / (
            config.train.exp_name or "sfd")
        folder = parent / name
        plan = LabelPlan(config.sample.fid_num, config.data.num_classes, balanced=config.sample.balanced_sampling,
                         fixed=config.sample.class_label, seed=seed)
        mine = sum(len(b) for b in batches_of_rank(plan.num_samples, config.sample.per_proc_batch_size,
                                                   topology.rank, topology.world_size))
        bar = tqdm(total=mine, desc=f"sampling {name}", unit="img",
                   disable=args.no_progress or not topology.is_main)
        guide_file = guide_checkpoint(config, args.config, ag_iter)
        provenance = {"checkpoint": str(model_checkpoint(config, args.config, args.ckpt)),
                      "guide_checkpoint": str(guide_file) if guide_file else None,
                      "device": device.type}
        npz = write_fid_set(sampler, plan, folder, batch_size=config.sample.per_proc_batch_size, topology=topology,
                            progress=bar.update, provenance=provenance)
        bar.close()
        if topology.is_main:
            print(f"{plan.num_samples} samples in {folder}, packed as {npz}")
    except (SampleFolderError, RunFolderBusy, WriteError) as error:  # the message says what to change
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
