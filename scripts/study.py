#!/usr/bin/env python
"""The paper's claims at toy scale with repeated seeds: Table 1 (LightningDiT, + REPA, + SFD), the Δt ablation and
the convergence speed-up, conditional and unconditional, with a converged solver and at equal NFE.

    python scripts/study.py                  # `make study`: 3 sources × Δt 0/0.1/0.3/0.5 × 3 seeds (~30 min CPU)
    python scripts/study.py --repeats 5      # more seeds: only the new runs are trained
    python scripts/study.py --sources none none+repa semvae pca --name with_pca
    python scripts/study.py --quick          # every stage at tiny size, a couple of minutes
The study shares the demo's run folder (outputs/demo): its tokenizers, encoders and the demo's seed-0 runs are
reused. Every stage resumes, so an interrupted study continues where it stopped. On a machine with a GPU the
trainers and samplers use it. Output: <run dir>/studies/<name>/report.md (verdicts first), table.md,
verdicts.json, results.json, fid_vs_step.png and fid_vs_delta_t.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sfd.cli import make_parser
from sfd.demo.pipeline import ENCODERS, DemoPipeline, DemoSettings
from sfd.demo.report import report_command
from sfd.demo.study import StudySettings, run_study
from sfd.sweep import SOURCE_CHOICES


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    defaults = StudySettings()
    parser.add_argument("--name", default=defaults.name, help="study folder name (default: %(default)s)")
    parser.add_argument("--sources", nargs="+", choices=list(SOURCE_CHOICES), default=list(defaults.sources),
                        help="models: none (LightningDiT), none+repa, semvae (SFD), pca (ReDi-style) "
                             "(default: %(default)s)")
    parser.add_argument("--delta-t", type=float, nargs="+", default=list(defaults.delta_ts),
                        help="semantic leads of the models with semantic channels (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="training seeds (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="training steps per model (default: the demo's 1200)")
    parser.add_argument("--eval-every", type=int, help="scored training lengths (default: the demo's 600)")
    parser.add_argument("--encoder", choices=ENCODERS, default="ssl", help="DINOv2 stand-in (default: ssl)")
    parser.add_argument("--run-dir", help="run folder (default: outputs/demo, or outputs/demo_quick with --quick)")
    parser.add_argument("--data-root", help="folder with the Fashion-MNIST *-ubyte.gz files")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    def study() -> Path:
        settings = (DemoSettings.quick(args.run_dir or "outputs/demo_quick", args.data_root, encoder=args.encoder)
                    if args.quick else DemoSettings(run_dir=args.run_dir or "outputs/demo", data_root=args.data_root,
                                                    encoder=args.encoder))
        return run_study(DemoPipeline(settings), StudySettings(args.name, args.sources, args.delta_t, args.repeats,
                                                               args.steps, args.eval_every))

    return report_command(study)


if __name__ == "__main__":
    sys.exit(main())
