#!/usr/bin/env python
"""Sweep SFD's design axes at equal budgets — semantic lead Δt, semantic loss weight β, semantic channel source
(Semantic VAE or ReDi-style PCA) — through train → sample → evaluate, and write one table and one plot.

On the Fashion-MNIST pipeline of `make demo` (default; shares its tokenizers and runs in outputs/demo):
    python scripts/sweep.py --delta-t 0 0.1 0.3 0.5 0.7                      # the Δt ablation
    python scripts/sweep.py --name semantics --delta-t 0 0.3 --semantics semvae pca
    python scripts/sweep.py --name table1 --delta-t 0.3 --semantics none none+repa semvae --repeats 3
    python scripts/sweep.py --name beta --delta-t 0.3 --semantic-weight 1 2 4 --repeats 2
    python scripts/sweep.py --name shapes --delta-t 0.1 0.3 0.5 --schedules constant shrinking smooth
    python scripts/sweep.py --quick --delta-t 0 0.3 0.6                      # every stage at tiny size
On precomputed latents (e.g. ImageNet from scripts/extract_latents.py; several GPUs through torchrun):
    torchrun --nproc_per_node 8 scripts/sweep.py --config configs/baselines/sfd_b.yaml \\
        --latents data/imagenet_latents/train --pca-latents data/imagenet_pca8/train \\
        --reference outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz --inception-weights weights-inception.pth \\
        --steps 400000 --eval-every 100000 --samples 50000 --delta-t 0 0.1 0.3 0.5 0.7 sample.cfg_scale=1.0
    (section.key=value overrides of the --config may come anywhere on the command line)
Outputs: <run dir>/sweeps/<name>/table.md, <metric>_vs_delta_t.png and results.json. Every stage resumes, so a
rerun with more Δt values, repeats or steps computes only what is missing (runs are named by their settings,
e.g. dt0.3_w2_semvae, and shared between sweeps in the same run folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.experiments.latents_backend import LatentsBackend
from sfd.experiments.report import write_sweep_report
from sfd.experiments.sweep import SOURCE_CHOICES, Scoring, grid, run_sweep
from sfd.files import WriteError
from sfd.schedule import SCHEDULE_SHAPES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(*__doc__.split("\n\n", 1))
    axes = parser.add_argument_group("the grid (every combination is trained)")
    axes.add_argument("--delta-t", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5, 0.7],
                      help="semantic leads; 0 is the synchronous baseline (default: %(default)s)")
    axes.add_argument("--semantic-weight", type=float, nargs="+",
                      help="weights β of the semantic velocity loss (default: the base config's model.semantic_weight, "
                           "2 in the demo's, the paper's)")
    axes.add_argument("--semantics", nargs="+", choices=list(SOURCE_CHOICES), default=["semvae"],
                      help="semantic sources: none (texture-only LightningDiT, Table 1's baseline), none+repa "
                           "(LightningDiT + REPA), semvae (SFD's Semantic VAE) or pca (ReDi-style); the models "
                           "without semantic channels take no Δt (default: semvae)")
    axes.add_argument("--schedules", nargs="+", choices=list(SCHEDULE_SHAPES),
                      help="shapes of the lead for Δt > 0 (docs/method.md §3.4): constant (the release's), shrinking, "
                           "smooth (default: the base config's model.semfirst_schedule)")
    axes.add_argument("--repeats", type=int, default=1, help="training runs per point, seeds seed..seed+N-1, for the "
                                                             "run-to-run spread (default: 1)")
    budget = parser.add_argument_group("the budget (equal for every point)")
    budget.add_argument("--steps", type=int, help="training steps (default: the demo's 1200, or the config's)")
    budget.add_argument("--eval-every", type=int, help="also score at every multiple of this (default: the demo's 600; "
                                                       "on latents only the last step)")
    budget.add_argument("--samples", type=int, help="samples per score (default: the demo's 500; 50000 on latents)")
    budget.add_argument("--seed", type=int, default=0,
                        help="base seed; on Fashion-MNIST also the tokenizers' (so use a new --run-dir) (default: 0)")
    output = parser.add_argument_group("output")
    output.add_argument("--name", default="delta_t", help="sweep name: <run dir>/sweeps/<name>/ (default: %(default)s)")
    output.add_argument("--run-dir", help="run folder (default: outputs/demo, outputs/demo_quick with --quick, "
                                          "outputs/sweep on latents)")
    fashion = parser.add_argument_group("Fashion-MNIST pipeline (default)")
    fashion.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    fashion.add_argument("--data-root", help="folder with the Fashion-MNIST *-ubyte.gz files")
    fashion.add_argument("--pca-components", type=int, default=4, help="ReDi-style channels (default: 4, as the "
                                                                       "demo's SemVAE)")
    latents = parser.add_argument_group("precomputed latents (e.g. ImageNet)")
    latents.add_argument("--config", help="base training YAML; selects this backend")
    latents.add_argument("--latents", help="latent folder with SemVAE semantic channels (and its *_stats.pt)")
    latents.add_argument("--pca-latents", help="latent folder with PCA semantic channels (extract_latents.py --pca)")
    latents.add_argument("--reference", help="ADM reference batch .npz (default: the config's data.fid_reference_file, "
                                             "e.g. outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz in the release's)")
    latents.add_argument("--inception-weights", help="weights-inception-2015-12-05-6726825d.pth "
                                                     "(default: $INCEPTION_WEIGHTS)")
    add_overrides_argument(latents)
    args = parse_with_overrides(parser, argv)
    if args.config is None and (args.latents or args.pca_latents or args.reference or args.overrides):
        parser.error("--latents, --pca-latents, --reference and config overrides need --config")
    return args


def base_model(args):
    """The ``model`` section the variants change: the demo config's, or --config with its overrides."""
    from sfd.config import load_config
    from sfd.experiments.fashion import base_model as demo_model

    return demo_model() if args.config is None else load_config(args.config, args.overrides).model


def fashion_sweep(args, variants) -> Path:
    from sfd.experiments.fashion import FashionBackend, FashionSettings
    from sfd.experiments.report import setup_lines

    run_dir = args.run_dir or ("outputs/demo_quick" if args.quick else "outputs/demo")
    settings = FashionSettings.quick(run_dir, args.data_root) if args.quick else FashionSettings(run_dir=run_dir,
                                                                                           data_root=args.data_root)
    settings.seed, settings.pca_components = args.seed, args.pca_components
    if args.samples:
        settings.samples = args.samples
    pipeline = FashionBackend(settings)
    steps = args.steps or settings.diffusion_steps
    # the demo's final scorings but the oracle diagnostic, which the study runs (scripts/study.py)
    final = [scoring for scoring in settings.final_scorings if not scoring.oracle]
    rows = pipeline.sweep(variants, steps, args.eval_every or settings.eval_every, final_scorings=final)
    return write_sweep_report(rows, Path(run_dir) / "sweeps" / args.name,
                              f"Sweep '{args.name}' on Fashion-MNIST (toy scale, CPU)",
                              [*setup_lines(pipeline), f"Budget: {steps} training steps per point."])


def latents_sweep(args, variants) -> Path | None:
    folders = {source: Path(path) for source, path in (("semvae", args.latents), ("pca", args.pca_latents)) if path}
    if not folders:
        raise ValueError("--config needs --latents (or --pca-latents): the latent folder the models train on")
    missing = sorted({variant.semantics for variant in variants} - set(folders) - {"none"})
    if missing:
        raise ValueError(f"--semantics {' '.join(missing)} needs " + " and ".join(
            "--latents" if source == "semvae" else "--pca-latents" for source in missing))
    if not args.reference:
        from sfd.config import load_config

        args.reference = load_config(args.config, args.overrides).data.fid_reference_file
        if not args.reference:
            raise ValueError("--config needs --reference or a data.fid_reference_file in the config (the ADM "
                             "reference batch the samples are scored against)")
    if not Path(args.reference).is_file():
        raise FileNotFoundError(f"{args.reference}: reference batch not found")
    output = Path(args.run_dir or "outputs/sweep")
    sweep = LatentsBackend(Path(args.config), output, folders, Path(args.reference), args.samples or 50_000,
                         overrides=args.overrides, seed=args.seed, inception_weights=args.inception_weights)
    if sweep.topology.is_main:
        sweep.feature_network()  # missing or wrong Inception weights fail now, not after training
    steps = args.steps or sweep.config(variants[0]).train.max_steps
    scoring = Scoring.from_config(sweep.config(variants[0]).sample)
    rows = run_sweep(sweep, variants, steps, args.eval_every, scorings=(scoring,),
                     log=print if sweep.topology.is_main else lambda _: None)
    if not sweep.topology.is_main:
        return None
    return write_sweep_report(rows, output / "sweeps" / args.name, f"Sweep '{args.name}' on {args.config}", [
        f"Base config: {args.config} {' '.join(args.overrides)}".rstrip(),
        *[f"{source} latents: {folder}" for source, folder in folders.items()],
        f"Budget: {steps} training steps per point; {sweep.samples} samples scored by the ADM suite against "
        f"{args.reference}."])


def main(argv=None) -> int:
    args = parse_args(argv)
    from sfd.config import ConfigError

    try:
        variants = grid(base_model(args), args.delta_t, args.semantic_weight, args.semantics, args.repeats,
                        args.schedules)
        if args.config is None:
            torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
            table = fashion_sweep(args, variants)
        else:
            table = latents_sweep(args, variants)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if args.config is not None:
            from sfd import distributed

            distributed.shutdown()
    if table is not None:
        print(f"table: {table}\nplot: {next(table.parent.glob('*_vs_delta_t.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
