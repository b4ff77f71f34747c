#!/usr/bin/env python
"""Fit the ReDi-style PCA of DINOv2 patch features (for semantic channels without a Semantic VAE).

    python scripts/extract_latents.py --dino-only --images imagenet/train --output dino_feats --dino-weights W
    python scripts/fit_pca.py dino_feats pca8.safetensors --components 8 --max-items 10000
    python scripts/extract_latents.py --pca pca8.safetensors --texture-vae ... --images ... --output latents_pca
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors import safe_open

from sfd.cli import make_parser
from sfd.data.shards import shard_files
from sfd.files import WriteError
from sfd.tokenizers.pca import fit_pca


def token_batches(folder: Path, max_items: int, batch: int = 256):
    """``patch_tokens`` of the feature shards, in order, up to ``max_items`` images."""
    left = max_items
    for path in shard_files(folder, prefix="features"):
        with safe_open(str(path), framework="pt") as handle:
            if "patch_tokens" not in handle.keys():
                raise KeyError(f"{path}: no 'patch_tokens'")
            tokens = handle.get_slice("patch_tokens")
            count = min(tokens.get_shape()[0], left)
            for start in range(0, count, batch):
                yield tokens[start: min(start + batch, count)].float()
            left -= count
        if left <= 0:
            return


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("features", help="folder of features_shard*.safetensors (extract_latents.py --dino-only)")
    parser.add_argument("output", help="where to write the PCA (.safetensors)")
    parser.add_argument("--components", type=int, default=8, help="principal components kept (ReDi: 8)")
    parser.add_argument("--max-items", type=int, default=10_000, help="images whose tokens are used")
    args = parser.parse_args(argv)
    try:
        pca = fit_pca(token_batches(Path(args.features), args.max_items), args.components)
    except (FileNotFoundError, KeyError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    variance = ", ".join(f"{v:.3g}" for v in pca.explained_variance.tolist())
    print(f"wrote {pca.save(args.output)}: {pca.num_components} components, variances {variance}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
