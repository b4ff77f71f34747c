#!/usr/bin/env python
"""Rebuild power-function EMAs of any width, or classic EMAs, from a run's power-EMA snapshots (docs/ema.md §7).

    python tools/reconstruct_ema.py outputs/train/sfd_xl --sigma-rel 0.05 0.075 0.1
    python tools/reconstruct_ema.py outputs/train/sfd_xl/power_ema --sigma-rel 0.08 --decay 0.9999 --step 400000
    python tools/reconstruct_ema.py outputs/train/sfd_xl --sigma-rel 0.03 0.05 0.08 0.12 --score 10000 \
        data.fid_reference_file=outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz sample.num_sampling_steps=50

Each width becomes {out}/ema_sigma<sigma_rel>_<step>.pt, each decay {out}/ema_decay<decay>_<step>.pt: the rebuilt
weights under 'ema', the run's config, and under 'power_ema' the snapshots used and their coefficients. Sample from
one with scripts/sample.py --config RUN/config.yaml --ckpt FILE. Every request is checked before the first file is
written; the snapshots are read one at a time. With --score N each rebuilt average is also scored as evaluation
during training scores the EMA (docs/usage.md §2.6: N class-balanced samples with the run config's sample.*
settings, FID against data.fid_reference_file), and the widths are printed as a table, best first, and written to
{out}/scores.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sfd import phema
from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.files import WriteError, write_json_atomic


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("source", help=f"run folder (its {phema.SNAPSHOT_FOLDER}/ snapshots) or a snapshot folder")
    parser.add_argument("--sigma-rel", type=float, nargs="+", default=[], metavar="SIGMA",
                        help="widths σ_rel to rebuild, in (0, 0.2887]")
    parser.add_argument("--decay", type=float, nargs="+", default=[], metavar="DECAY",
                        help="classic-EMA decays to rebuild (the release's: 0.9999)")
    parser.add_argument("--step", type=int, help="the snapshot step to rebuild at (default: the newest)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/power_ema_reconstructed)")
    parser.add_argument("--score", type=int, metavar="N",
                        help="also score each rebuilt average with N samples (FID; docs/usage.md §2.6)")
    parser.add_argument("--config", type=Path, help="config for --score (default: the run's config.yaml)")
    add_overrides_argument(parser)
    return parse_with_overrides(parser, argv)


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


def score_all(paths: Sequence[Path], config_path: Path, overrides: Sequence[str], samples: int,
              scorer_of=None) -> list[dict]:
    """FID of each rebuilt checkpoint with ``samples`` samples, scored by the road evaluation during training takes
    (sfd.evaluation.sample_scores.SampleScorer; ``scorer_of(config)`` replaces it in tests). Rows best first."""
    from sfd.build import build_model
    from sfd.checkpoint import load_weights, read_file
    from sfd.config import load_config
    from sfd.evaluation.sample_scores import SampleScorer

    if not config_path.is_file():
        raise ValueError(f"--score: {config_path} does not exist (give --config)")
    config = load_config(config_path, [*overrides, f"train.eval_samples={samples}"])
    scorer = scorer_of(config) if scorer_of else SampleScorer.from_config(config, config_path)
    model = build_model(config).to(scorer.device)
    rows = []
    for path in paths:
        info = read_file(path)["power_ema"]
        scores = scorer(load_weights(model, path))
        rows.append({"checkpoint": str(path), **{key: info[key] for key in ("sigma_rel", "decay", "step")
                                                    if key in info}, **scores})
        print(f"scored {path.name}: FID {scores['fid']:.4f} ({samples} samples)", flush=True)
    return sorted(rows, key=lambda row: row["fid"])


def scores_table(rows: Sequence[dict]) -> str:
    lines = ["| average | step | FID |", "|---|---|---|"]
    for row in rows:
        average = f"σ_rel {row['sigma_rel']:g}" if "sigma_rel" in row else f"decay {row['decay']:g}"
        lines.append(f"| {average} | {row['step']} | {row['fid']:.4f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, scorer_of=None) -> int:
    """The command; ``scorer_of(config)`` replaces the evaluator's scorer (tests)."""
    args = parse_args(argv)
    source = Path(args.source)
    run = source if (source / phema.SNAPSHOT_FOLDER).is_dir() else source.parent
    try:
        if args.score is not None and args.score < 2:
            raise ValueError(f"--score: need at least 2 samples (got {args.score})")
        written = reconstruct_all(source, args.out, args.sigma_rel, args.decay, args.step)
        if args.score is not None:
            rows = score_all(written, args.config or run / "config.yaml", args.overrides, args.score, scorer_of)
            print(scores_table(rows))
            print(f"wrote {write_json_atomic(written[0].parent / 'scores.json', rows, indent=2)}")
    except (ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
