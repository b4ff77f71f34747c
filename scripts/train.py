#!/usr/bin/env python
"""Train SFD (or the synchronous LightningDiT baseline) on latent shards.

    python scripts/train.py --config configs/sfd/lightningdit_xl/train.yaml [section.key=value ...] [--dry-run]
    torchrun --nproc_per_node 8 scripts/train.py --config ...        (or ./run_train.sh CONFIG, which does this)

Options and section.key=value overrides may come in any order; of two overrides of one key the later wins.

The run folder is {train.output_dir}/{train.exp_name}: config.yaml (resolved), log.jsonl, tensorboard/ and
checkpoints/{step:07d}.pt. Rerunning the same command resumes from the latest checkpoint, data order and random
draws included; the result does not depend on the number of processes sharing train.global_batch_size.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import yaml

from sfd import distributed
from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.config import ConfigError, config_to_dict, load_config
from sfd.device import DEVICE_ENV, DEVICE_TYPES, DeviceError
from sfd.files import WriteError
from sfd.train import Trainer, TrainingError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("--config", required=True, help="SFD YAML (official layout)")
    add_overrides_argument(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    parser.add_argument("--device", choices=DEVICE_TYPES,
                        help=f"accelerator type (default: ${DEVICE_ENV}, else the machine's accelerator, else cpu)")
    return parse_with_overrides(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    try:
        topology = distributed.init(args.device)
    except DeviceError as error:  # an unknown SFD_DEVICE, a missing device runtime
        print(f"error: {error}", file=sys.stderr)
        return 2
    completed = False
    try:
        trainer = Trainer(config, topology)
        if topology.is_main:
            where = f"resuming from {trainer.resumed_from}" if trainer.resumed_from else "starting"
            print(f"{where}: {config.model.model_type}, {sum(p.numel() for p in trainer.model.parameters()):,} "
                  f"parameters, {len(trainer.dataset):,} latents, {topology.world_size} process(es) on "
                  f"{topology.device.type}, run folder {trainer.run_dir}", flush=True)
        last = trainer.run(progress=not args.no_progress)
        if topology.is_main and last:
            print("done: step {} loss {:.5f}".format(trainer.step, last["loss"]), flush=True)
        completed = True
    except (TrainingError, DeviceError, FileNotFoundError, KeyError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 3 if isinstance(error, TrainingError) else 2
    finally:
        distributed.shutdown(completed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
