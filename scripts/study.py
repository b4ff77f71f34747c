#!/usr/bin/env python
"""The paper's claims at toy scale with paired seeds — Table 1 (LightningDiT, + REPA, + SFD), the Δt ablation, the
convergence speed-up — and the semantic-anchor diagnostics (oracle semantics, semantic Fréchet distance).

    python scripts/study.py                      # the full study: 4 models × 5 seeds × 10,800 steps (hours on a CPU)
    python scripts/study.py --steps 3600         # the same runs to 3,600 steps first; a later call extends them
    python scripts/study.py --seeds 1 3          # only these seeds (run parts side by side; no combined report)
    python scripts/study.py --delta-t 0 0.1 0.3 0.5 --repeats 3 --name delta_t   # the Δt ablation
    python scripts/study.py --quick              # every stage at tiny size, a couple of minutes
    python scripts/study.py --name ema --ema-widths 0.03 0.05 0.075 0.1 0.15 0.2 --repeats 3 --steps 3600
                                                 # each model at its best post-hoc EMA width (runs of their own)
    python scripts/study.py --name shapes --schedules constant shrinking smooth --repeats 5 --steps 3600
                                                 # SFD with each shape of the lead next to the four models
The study shares the demo's run folder (outputs/demo): its tokenizers, encoders and the demo's seed-0 runs are
reused and continued. Every stage resumes, so an interrupted study continues where it stopped. On a machine with a
GPU the trainers and samplers use it. Output: <run dir>/studies/<name>/report.md (the verdict rule, then the
verdicts), table.md, verdicts.json, results.json, fid_vs_step.png and semantic_fd_vs_step.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sfd.cli import make_parser, report_command
from sfd.experiments.fashion import ENCODERS, FashionBackend, FashionSettings
from sfd.experiments.study import StudySettings, run_study
from sfd.experiments.sweep import SOURCE_CHOICES, Scoring
from sfd.schedule import SCHEDULE_SHAPES


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    defaults = StudySettings()
    parser.add_argument("--name", default=defaults.name, help="study folder name (default: %(default)s)")
    parser.add_argument("--sources", nargs="+", choices=list(SOURCE_CHOICES), default=list(defaults.sources),
                        help="models: none (LightningDiT), none+repa, semvae (SFD), pca (ReDi-style) "
                             "(default: %(default)s)")
    parser.add_argument("--delta-t", type=float, nargs="+", default=list(defaults.delta_ts),
                        help="semantic leads of the models with semantic channels (default: %(default)s)")
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULE_SHAPES, default=list(defaults.schedules),
                        help="shapes of the semantic lead, all with SFD's Δt: constant (the release's lead Δt "
                             "throughout: SFD itself, required), shrinking (semantics alone for τ < Δt, then the "
                             "lead falls linearly to 0 at the end), smooth (no kinks, lead Δt at mid-trajectory); "
                             "each other shape adds SFD with that shape on every seed (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="training seeds (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train and score only these seeds (default: all)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="training steps per model; scored lengths beyond it wait (default: %(default)s)")
    parser.add_argument("--ema-widths", type=float, nargs="+", default=[],
                        help="also score each model at these power-EMA widths σ_rel, rebuilt from snapshots of "
                             f"{' and '.join(map(str, defaults.tracked_widths))} (docs/ema.md); the runs track them, "
                             "so they are runs of their own (…_pema)")
    parser.add_argument("--encoder", choices=ENCODERS, default="ssl", help="DINOv2 stand-in (default: ssl)")
    parser.add_argument("--run-dir", help="run folder (default: outputs/demo, or outputs/demo_quick with --quick)")
    parser.add_argument("--data-root", help="folder with the Fashion-MNIST *-ubyte.gz files")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    def study() -> Path:
        if args.quick:
            settings = StudySettings(args.name, args.sources, args.delta_t, args.repeats, args.seeds, steps=20,
                                     lengths=(10, 20), verdict_steps=(20,), curve_samples=20, verdict_samples=40,
                                     reference_images=256, main=Scoring("euler", 6, phases=True),
                                     ema_widths=args.ema_widths, schedules=args.schedules)
            backend = FashionSettings.quick(args.run_dir or "outputs/demo_quick", args.data_root,
                                            encoder=args.encoder, reference_images=settings.reference_images,
                                            power_ema_sigma_rels=settings.tracked_widths if args.ema_widths else ())
        else:
            settings = StudySettings(args.name, args.sources, args.delta_t, args.repeats, args.seeds, args.steps,
                                     ema_widths=args.ema_widths, schedules=args.schedules)
            backend = FashionSettings(run_dir=args.run_dir or "outputs/demo", data_root=args.data_root,
                                      encoder=args.encoder, reference_images=settings.reference_images,
                                      power_ema_sigma_rels=settings.tracked_widths if args.ema_widths else ())
        return run_study(FashionBackend(backend), settings)

    return report_command(study)


if __name__ == "__main__":
    sys.exit(main())
