#!/usr/bin/env python
"""Train the Semantic VAE on pre-extracted DINOv2 patch tokens (the release's recipe, docs/semvae.md §2).

    python scripts/train_semvae.py configs/semvae/ch16.yaml
    python scripts/train_semvae.py configs/semvae/ch16.yaml data.feature_dir=/data/dinov2/train training.seed=1

CONFIG comes first; options and section.key=value overrides follow in any order (of two overrides of one key the
later wins). Rerunning the same command resumes exactly from the highest-step checkpoint in
training.checkpointing.checkpoint_dir. See sfd/tokenizers/semvae_train.py for every config key.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sfd.checkpoint import CheckpointError
from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.config import ConfigError
from sfd.device import DeviceError
from sfd.files import WriteError
from sfd.tokenizers.semvae_train import DataError, load_train_config, train

EPILOG = """\
features (data.feature_dir, training.evaluation.feature_dir):
  a folder of *.safetensors shards, each with patch_tokens [n, L, D] (fp16; L a perfect square) and optionally
  labels or class_indices [n]; or the official {feature_dir}/{model_name}/features_{max_samples}samples.safetensors.
  Files are memory-mapped and read batch by batch.

outputs:
  training.checkpointing.checkpoint_dir  semantic_ae_checkpoint_step_{k}.pt (resume) and semantic_ae_final.pt
                                         (the official layout: model_state_dict, iteration, config, ...)
  training.log.log_dir                   config.yaml (resolved), train_log.jsonl, tensorboard/ (if enabled)
  training.evaluation.output_dir         eval_log.jsonl (MSE and per-token cosine from the posterior mean)
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, EPILOG)
    parser.add_argument("config", metavar="CONFIG", help="YAML in the official semvae_train layout, e.g. "
                                                         "configs/semvae/ch16.yaml")
    add_overrides_argument(parser)
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, npu, mps, cpu (default: "
                                                       "$SFD_DEVICE, else the machine's accelerator, else cpu); bf16 "
                                                       "autocast is used on accelerators only")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop after this many steps in this run, writing a checkpoint (for time-limited jobs; "
                             "rerun the same command to continue)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parse_with_overrides(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_train_config(args.config, args.overrides)
        result = train(config, device=args.device, stop_after=args.stop_after, progress=not args.no_progress)
    except (ConfigError, DataError, CheckpointError, DeviceError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    where = result.final or result.checkpoint
    print(f"step {result.step}/{config.training.total_iterations}; weights: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
