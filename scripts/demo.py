#!/usr/bin/env python
"""The whole SFD pipeline on Fashion-MNIST, offline on a CPU: tokenizers, semantic latents, SFD and the synchronous
baseline trained alike, three-phase sampling, FID, and a report (outputs/demo/report.md).

    python scripts/demo.py                 # the full demo (what `make demo` runs), ~25 min on 2 cores
    python scripts/demo.py --quick         # every stage at tiny size, about a minute
Rerunning skips the stages that finished; the trainers resume from their checkpoints.
"""

from __future__ import annotations

import argparse
import sys

import torch

from sfd.demo.pipeline import DemoPipeline, DemoSettings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=None, help="output folder (default: outputs/demo, or outputs/demo_quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="diffusion training steps per model")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    settings = DemoSettings.quick(args.run_dir or "outputs/demo_quick") if args.quick else DemoSettings(
        run_dir=args.run_dir or "outputs/demo")
    settings.seed = args.seed
    if args.steps:
        settings.diffusion_steps = args.steps
    try:
        report = DemoPipeline(settings).run()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
