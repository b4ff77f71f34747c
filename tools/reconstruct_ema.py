#!/usr/bin/env python
"""Rebuild power-function EMAs of any width, or classic EMAs, from a run's power-EMA snapshots (docs/ema.md §7).

    python tools/reconstruct_ema.py outputs/train/sfd_xl --sigma-rel 0.05 0.075 0.1
    python tools/reconstruct_ema.py outputs/train/sfd_xl/power_ema --sigma-rel 0.08 --decay 0.9999 --step 400000

Each width becomes {out}/ema_sigma<sigma_rel>_<step>.pt, each decay {out}/ema_decay<decay>_<step>.pt: the rebuilt
weights under 'ema', the run's config, and under 'power_ema' the snapshots used and their coefficients. Sample from
one with scripts/sample.py --config RUN/config.yaml --ckpt FILE. Every request is checked before the first file is
written; the snapshots are read one at a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sfd import phema
from sfd.cli import make_parser
from sfd.files import WriteError


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("source", help=f"run folder (its {phema.SNAPSHOT_FOLDER}/ snapshots) or a snapshot folder")
    parser.add_argument("--sigma-rel", type=float, nargs="+", default=[], metavar="SIGMA",
                        help="widths σ_rel to rebuild, in (0, 0.2887]")
    parser.add_argument("--decay", type=float, nargs="+", default=[], metavar="DECAY",
                        help="classic-EMA decays to rebuild (the release's: 0.9999)")
    parser.add_argument("--step", type=int, help="the snapshot step to rebuild at (default: the newest)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/power_ema_reconstructed)")
    return parser.parse_args(argv)


def summary(info: dict) -> str:
    """The coefficients of one rebuilt average in a few words: Σ|x| far above 1 means a fit from differences."""
    x = np.asarray(info["coefficients"])
    largest = int(np.abs(x).argmax())
    target = f"sigma_rel {info['sigma_rel']:g}" if "sigma_rel" in info else f"decay {info['decay']:g}"
    return (f"{target} at step {info['step']} from {len(x)} snapshots: sum |x| {np.abs(x).sum():.3g}, largest "
            f"{x[largest]:+.3g} on {info['sources'][largest]}")


def reconstruct_all(source: Path, out: Optional[Path], sigma_rels: Sequence[float], decays: Sequence[float],
                    step: Optional[int]) -> list[Path]:
    """Write one checkpoint per width and decay and return their paths; a request that cannot be met raises
    ValueError before any file is written."""
    folder = source / phema.SNAPSHOT_FOLDER if (source / phema.SNAPSHOT_FOLDER).is_dir() else source
    files = phema.snapshot_files(folder)
    targets = [{"sigma_rel": sigma} for sigma in sigma_rels] + [{"decay": decay} for decay in decays]
    if not targets:
        raise ValueError("nothing to rebuild: give --sigma-rel and/or --decay")
    for target in targets:
        phema.solve_for_files(files, step=step, **target)
    written = []
    for target in targets:
        if "decay" in target and (caveat := phema.exponential_caveat(files, target["decay"], step)):
            print(f"warning: {caveat}", file=sys.stderr)
        path, info = phema.write_reconstruction(folder, out or folder.parent / "power_ema_reconstructed",
                                                step=step, **target)
        print(f"wrote {path} ({summary(info)})", flush=True)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        reconstruct_all(Path(args.source), args.out, args.sigma_rel, args.decay, args.step)
    except (ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
