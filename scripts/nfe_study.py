#!/usr/bin/env python
"""FID against network evaluations (NFE) on the demo's trained SFD models: the release's dopri5 against
phase-aware dopri5 and Euler/Heun at several step counts, plain and phase-split, over every training seed.

    python scripts/nfe_study.py                      # the long study's SFD models at 3600 steps (~10 min CPU)
    python scripts/nfe_study.py --step 1200          # the demo's length
It needs the trained runs of the demo's SFD model (scripts/study.py --name long --steps 3600 trains them) and reuses
the demo's tokenizers and FID network. Every score is a resumable stage. Output: <run dir>/studies/<name>/report.md
(verdict first), table.md, fid_vs_nfe.png, results.json.
"""

from __future__ import annotations

import sys

import torch

from sfd.cli import make_parser, report_command
from sfd.experiments.fashion import FashionBackend, FashionSettings
from sfd.experiments.nfe import NfeStudySettings, run_nfe_study


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    defaults = NfeStudySettings()
    parser.add_argument("--name", default=defaults.name, help="study folder name (default: %(default)s)")
    parser.add_argument("--step", type=int, default=defaults.step,
                        help="training length whose checkpoints are scored (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="training seeds (default: %(default)s)")
    parser.add_argument("--run-dir", default="outputs/demo", help="the demo's run folder (default: %(default)s)")
    parser.add_argument("--data-root", help="folder with the Fashion-MNIST *-ubyte.gz files")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return report_command(lambda: run_nfe_study(FashionBackend(FashionSettings(run_dir=args.run_dir,
                                                                           data_root=args.data_root)),
                                                NfeStudySettings(args.name, args.step, args.repeats)))


if __name__ == "__main__":
    sys.exit(main())
