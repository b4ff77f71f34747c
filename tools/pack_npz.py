#!/usr/bin/env python
"""Pack a folder of same-sized RGB PNGs (sorted names, 000000.png...) into an ADM sample batch .npz (arr_0 uint8
[N, H, W, 3]), as the evaluator expects; the file is written under a temporary name, then renamed.

    python tools/pack_npz.py outputs/samples/sfd_xl-shuffle                 # -> outputs/samples/sfd_xl-shuffle.npz
    python tools/pack_npz.py FOLDER OUT.npz --limit 10000
"""

from __future__ import annotations

import sys
from pathlib import Path

from sfd.cli import make_parser
from sfd.evaluation.npz import pack_png_folder


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("folder", help="folder of PNG images")
    parser.add_argument("output", nargs="?", help="output .npz (default: <folder>.npz beside the folder)")
    parser.add_argument("--limit", type=int, default=None, help="pack only the first LIMIT files (sorted names)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    output = Path(args.output) if args.output else folder.parent / f"{folder.name}.npz"
    try:
        written = pack_png_folder(folder, output, limit=args.limit)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
