#!/usr/bin/env python
"""Export the EMA weights of a training checkpoint (or of a run folder's latest one) for inference.

    python tools/export_ema.py outputs/train/sfd_xl               # -> outputs/train/sfd_xl/ema_<step>.safetensors
    python tools/export_ema.py outputs/train/sfd_xl/checkpoints/0400000.pt sfd_xl_400k.pt

A .pt output has the release's inference layout {'ema': state_dict}; a .safetensors output holds the bare EMA
state dict. Both load with sfd.load_weights and with the official sampler (.pt).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sfd.checkpoint import CheckpointError, atomic_save, latest_checkpoint, read_file
from sfd.cli import make_parser


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("source", help="checkpoint file, or a run folder (its latest checkpoint is used)")
    parser.add_argument("output", nargs="?", help="output .pt or .safetensors (default: beside the run)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if source.is_dir():
        found = latest_checkpoint(source / "checkpoints") or latest_checkpoint(source)
        if found is None:
            print(f"error: {source}: no checkpoints/<step>.pt found", file=sys.stderr)
            return 2
        source = found
    try:
        payload = read_file(source)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "ema" not in payload:
        print(f"error: {source}: no 'ema' entry (keys: {', '.join(payload)})", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else source.parent.parent / f"ema_{source.stem}.safetensors"
    atomic_save(payload["ema"] if output.suffix == ".safetensors" else {"ema": payload["ema"]}, output)
    print(f"wrote {output} (EMA of {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
