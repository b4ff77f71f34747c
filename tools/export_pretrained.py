#!/usr/bin/env python
"""Export a run (or any inference config) as the folder sfd.from_pretrained and sfd.pipeline.SFDPipeline load.

    python tools/export_pretrained.py outputs/demo/runs/ssl_dt0.3_w2_semvae/config.yaml exported/sfd-demo
    python tools/export_pretrained.py RUN/config.yaml OUT --ckpt RUN/checkpoints/0400000.pt --scores scores.json
    python tools/export_pretrained.py configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml OUT \\
        --autoguidance-ckpt-iter 70 sample.cfg_scale=1.5 sample.autoguidance=true
CONFIG and OUT come first; options and section.key=value overrides follow in any order.
The folder holds model.safetensors (EMA weights), config.yaml, latents_stats.pt, the texture VAE
(texture_vae.yaml + texture_vae.ckpt), guide/ when the config uses AutoGuidance, and README.md (a model card with
the training settings and the scores of --scores). Upload it as a Hugging Face model repository and
sfd.from_pretrained("<user>/<repo>") loads it (docs/formats.md §8).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from sfd.checkpoint import CheckpointError
from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.config import ConfigError
from sfd.pretrained import export_pretrained


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("config", metavar="CONFIG", help="the run's config.yaml, or an inference config")
    parser.add_argument("out", metavar="OUT", help="folder to write")
    add_overrides_argument(parser)
    parser.add_argument("--ckpt", help="checkpoint whose EMA weights are exported (default: the config's ckpt_path)")
    parser.add_argument("--autoguidance-ckpt-iter", type=int, help="guide checkpoint at this many thousand steps")
    parser.add_argument("--scores", help="JSON file of measured scores for the model card")
    return parse_with_overrides(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scores = json.loads(open(args.scores).read()) if args.scores else None
        out = export_pretrained(args.config, args.out, args.ckpt, args.autoguidance_ckpt_iter, scores,
                                args.overrides)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
