#!/usr/bin/env python
"""Picture a latent shard: per image, the decoded texture latent beside the semantic latent and the DINOv2 features
as PCA colour maps (one PCA per kind, fitted over all shown images, so colours compare across rows).

    python tools/visualize_latents.py SHARD.safetensors --texture-vae tokenizer.yaml --out latents.png --count 8
"""

from __future__ import annotations

import argparse
import sys

import torch
from safetensors import SafetensorError, safe_open

from sfd.cli import make_parser
from sfd.visualize import image_grid, pca_rgb, save_png


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("shard", help="a latents_shard*.safetensors file")
    parser.add_argument("--texture-vae", help="texture VAE YAML; without it the texture column is a PCA map too")
    parser.add_argument("--texture-ckpt", help="checkpoint overriding the YAML's ckpt_path")
    parser.add_argument("--out", default="latents.png", help="output PNG (default: %(default)s)")
    parser.add_argument("--count", type=int, default=8, help="images to show (default: %(default)s)")
    parser.add_argument("--flip", action="store_true", help="show the mirrored keys instead")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    suffix = "_flip" if args.flip else ""
    try:
        with safe_open(args.shard, framework="pt") as handle:
            keys = set(handle.keys())
            missing = {f"latents{suffix}", f"latents_sv{suffix}"} - keys
            if missing:
                raise KeyError(f"{args.shard}: shard has no {', '.join(sorted(missing))}")
            texture = handle.get_slice(f"latents{suffix}")[: args.count].float()
            semantic = handle.get_slice(f"latents_sv{suffix}")[: args.count].float()
            dino_key = f"feats_dino{suffix}"
            dino = handle.get_slice(dino_key)[: args.count].float() if dino_key in keys else None
    except (KeyError, OSError, SafetensorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.texture_vae:
        from sfd.tokenizers.texture_vae import load_texture_vae

        vae = load_texture_vae(args.texture_vae, args.texture_ckpt)
        with torch.no_grad():
            pictures = vae.to_uint8(vae.decode(texture))
    else:
        pictures = pca_rgb(texture, size=256)
    size = pictures.shape[1]
    columns = [pictures, pca_rgb(semantic, size=size)] + ([pca_rgb(dino, size=size)] if dino is not None else [])
    rows = torch.stack(columns, dim=1).reshape(-1, size, size, 3)
    path = save_png(image_grid(rows.numpy(), columns=len(columns)), args.out)
    header = "decoded texture | semantic latent PCA" + (" | DINOv2 PCA" if dino is not None else "")
    print(f"wrote {path}: {len(texture)} rows, columns: {header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
