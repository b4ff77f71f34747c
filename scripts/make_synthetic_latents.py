#!/usr/bin/env python
"""Write synthetic latent shards (with their statistics files) for smoke-testing training and sampling on CPU.

    python scripts/make_synthetic_latents.py outputs/synthetic_latents --items 256
    ./run_train.sh configs/tiny/train_sfd_cpu.yaml
"""

from __future__ import annotations

from sfd.cli import make_parser
from sfd.data.synthetic import write_synthetic_shards


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("output", help="folder for the shards")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--texture-chans", type=int, default=32)
    parser.add_argument("--semantic-chans", type=int, default=16)
    parser.add_argument("--grid", type=int, default=16, help="latent side")
    parser.add_argument("--dino-dim", type=int, default=768, help="REPA target width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = write_synthetic_shards(args.output, args.items, args.classes, args.texture_chans, args.semantic_chans,
                                    args.grid, args.dino_dim, seed=args.seed)
    print(f"wrote {args.items} synthetic latents to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
