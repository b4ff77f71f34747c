#!/usr/bin/env python
"""The whole SFD pipeline on Fashion-MNIST, offline on a CPU: tokenizers, a self-supervised DINOv2 stand-in,
semantic latents, the paper's Table 1 at toy scale (LightningDiT, + REPA, + SFD) trained alike, three-phase
sampling, FID conditional and unconditional, and a report (outputs/demo/report.md).

    python scripts/demo.py                        # the full demo (what `make demo` runs), ~10 min on 2 cores
    python scripts/demo.py --quick                # every stage at tiny size, about a minute
    python scripts/demo.py --encoder supervised   # semantics from the supervised stand-in instead
Rerunning skips the stages that finished; the trainers resume from their checkpoints.
"""

from __future__ import annotations

import sys

import torch

from sfd.cli import make_parser, report_command
from sfd.experiments.demo import run_demo
from sfd.experiments.fashion import ENCODERS, FashionBackend, FashionSettings


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("--run-dir", default=None, help="output folder (default: outputs/demo, or outputs/demo_quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="diffusion training steps per model")
    parser.add_argument("--encoder", choices=ENCODERS, default="ssl",
                        help="DINOv2 stand-in behind the semantic channels and REPA: self-supervised (default) or "
                             "a supervised classifier's features; both are trained and probed either way")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    changes = dict(seed=args.seed, encoder=args.encoder, **({"diffusion_steps": args.steps} if args.steps else {}))
    settings = (FashionSettings.quick(args.run_dir or "outputs/demo_quick", **changes) if args.quick else
                FashionSettings(run_dir=args.run_dir or "outputs/demo", **changes))
    return report_command(lambda: run_demo(FashionBackend(settings)))


if __name__ == "__main__":
    sys.exit(main())
