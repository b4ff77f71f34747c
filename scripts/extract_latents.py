#!/usr/bin/env python
"""Encode an image dataset into SFD latent shards (texture VAE + SemVAE + DINOv2), or DINOv2 features only.

Images: a folder with one subfolder per class (sorted names → labels 0, 1, ...) or a file list of
'<path> <label>' lines. Output: safetensors shards in the release's format plus latents_stats.pt /
latents_sv_stats.pt, computed once by the main process from a seeded subset. Rerunning the same command skips the
shards that exist, so an interrupted run resumes; every file is written under a temporary name, then renamed.

One process:     python scripts/extract_latents.py --images DIR --output OUT --texture-vae VAE.yaml \\
                     --semvae semantic_ae_final.pt --dino-weights dinov2_vitb14_reg4_pretrain.pth
Several (GPUs):  torchrun --nproc_per_node 8 scripts/extract_latents.py ...same arguments...
SemVAE features: python scripts/extract_latents.py --dino-only --images DIR --output FEATS --dino-weights W
Stats only:      python scripts/extract_latents.py --stats-only --output OUT
"""

from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from sfd import distributed
from sfd.cli import make_parser
from sfd.data.images import list_image_folder, read_file_list
from sfd.data.shards import compute_stats
from sfd.device import DEVICE_ENV, DEVICE_TYPES, DeviceError
from sfd.extract import LatentEncoders, extract_dino_features, extract_latents, shards_of_rank
from sfd.files import WriteError
from sfd.tokenizers.dinov2 import TIMM_NAMES, build_dinov2, tiny_dinov2


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(*__doc__.split("\n\n", 1))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="image folder with one subfolder per class")
    source.add_argument("--file-list", help="text file of '<image path> <label>' lines")
    parser.add_argument("--output", required=True, help="shard folder (created; existing shards are kept)")
    parser.add_argument("--texture-vae",
                        help="LDM-style texture VAE YAML (its ckpt_path is used unless --texture-ckpt)")
    parser.add_argument("--texture-ckpt", help="texture VAE checkpoint overriding the YAML's ckpt_path")
    semantic = parser.add_mutually_exclusive_group()
    semantic.add_argument("--semvae", help="Semantic VAE checkpoint (semantic_ae_final.pt or one of ours)")
    semantic.add_argument("--pca", help="ReDi-style PCA of the features (scripts/fit_pca.py) instead of a SemVAE")
    parser.add_argument("--dino-model", default="dinov2_vitb14_reg",
                        choices=[*TIMM_NAMES, "tiny-random"],
                        help="feature encoder; tiny-random is a small random stand-in for tests (default: %(default)s)")
    parser.add_argument("--dino-weights", help="local DINOv2 checkpoint (torch.hub or timm layout)")
    parser.add_argument("--image-size", type=int, default=256, help="ADM center-crop size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=20, help="images per forward (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="posterior-noise seed (default: %(default)s)")
    parser.add_argument("--stats-samples", type=int, default=10_000,
                        help="images for the per-channel statistics (default: %(default)s)")
    parser.add_argument("--dino-only", action="store_true", help="write DINOv2 patch tokens for SemVAE training")
    parser.add_argument("--stats-only", action="store_true", help="only (re)compute missing statistics files")
    parser.add_argument("--no-stats", action="store_true", help="skip the statistics files")
    parser.add_argument("--device", choices=DEVICE_TYPES,
                        help=f"accelerator type (default: ${DEVICE_ENV}, else the machine's accelerator, else cpu)")
    args = parser.parse_args(argv)
    if not args.stats_only and not (args.images or args.file_list):
        parser.error("give --images or --file-list")
    if not (args.stats_only or args.dino_only) and not (args.texture_vae and (args.semvae or args.pca)):
        parser.error("latent extraction needs --texture-vae and --semvae (or --pca)")
    if args.dino_model != "tiny-random" and not args.dino_weights and not args.stats_only:
        parser.error("--dino-weights is required (nothing is downloaded)")
    return args


def build_dino(args: argparse.Namespace, device: torch.device):
    if args.dino_model == "tiny-random":
        return tiny_dinov2().to(device)
    return build_dinov2(args.dino_model, args.dino_weights).to(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        topology = distributed.init(args.device)
        device = topology.device
    except DeviceError as error:  # an unknown SFD_DEVICE, a missing device runtime
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if not args.stats_only:
            items = read_file_list(args.file_list) if args.file_list else list_image_folder(args.images)[0]
            mine = sum(len(r) for r in shards_of_rank(len(items), args.shard_size, topology.rank,
                                                      topology.world_size))
            bar = tqdm(total=mine, desc=f"rank {topology.rank}", unit="img", disable=not topology.is_main)
            common = dict(shard_size=args.shard_size, rank=topology.rank, world_size=topology.world_size,
                          device=device, progress=bar.update)
            dino = build_dino(args, device)
            if args.dino_only:
                extract_dino_features(items, dino, args.output, batch_size=args.batch_size, **common)
            else:
                from sfd.tokenizers.pca import PCAProjector
                from sfd.tokenizers.semvae import load_semvae
                from sfd.tokenizers.texture_vae import load_texture_vae

                semantic = (PCAProjector.load(args.pca) if args.pca else load_semvae(args.semvae)).to(device).eval()
                encoders = LatentEncoders(load_texture_vae(args.texture_vae, args.texture_ckpt, device=device).eval(),
                                          semantic, dino)
                extract_latents(items, encoders, args.output, image_size=args.image_size,
                                batch_size=args.batch_size, seed=args.seed, **common)
            bar.close()
        distributed.barrier()
        if topology.is_main and not args.dino_only and not args.no_stats:
            for key, path in compute_stats(args.output, args.stats_samples).items():
                print(f"{key} statistics: {path}")
        distributed.barrier()
    except (FileNotFoundError, KeyError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
