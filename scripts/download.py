#!/usr/bin/env python
"""Fetch everything a paper row needs — weights, guide, latent statistics, texture decoder, evaluator files — and
lay it out where the release's configs expect it.

    python scripts/download.py --list                      # the rows, their paper FID and what they need
    python scripts/download.py sfd-xl-800ep-ag             # the headline row (and the evaluator's files)
    python scripts/download.py sfd-xxl-800ep-ag --dry-run  # what would be fetched, and where it goes
    make weights ROW=sfd-xl-800ep-ag
Hugging Face files go through huggingface_hub into its cache (HF_HOME / HF_HUB_CACHE; interrupted transfers resume;
HF_HUB_OFFLINE=1 uses the cache alone) and are linked into place (--copy copies them); the plain HTTPS files are
resumed from their partial download. Sizes and SHA-256 are checked where known, and a file that fails is deleted.
Without network the error names every file still missing and where to put it. The table is sfd/release_rows.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sfd.cli import make_parser
from sfd.config import load_config
from sfd.generate import folder_name
from sfd.hub import DownloadError, ReleaseTable, download
from sfd.pretrained import autoguidance_overrides

ROOT = Path(__file__).resolve().parents[1]


def list_rows(table: ReleaseTable) -> str:
    lines = ["| row | FID (paper / GPU re-run) | what | files |", "|---|---|---|---|"]
    for row in table.rows.values():
        files = ", ".join(item.key for item in table.files_of([row.name]))
        lines.append(f"| {row.name} | {row.fid or '—'} | {row.what} | {files} |")
    return "\n".join(lines)


def run_command(table: ReleaseTable, name: str) -> str:
    """The command that generates a row's 50K samples and scores them, once its files are in place ('' for a
    bundle)."""
    row = table.row(name)
    if not row.config:
        return ""
    env = row.env
    overrides = [f"sample.cfg_scale={env['CFG_SCALE']}"] if "CFG_SCALE" in env else []
    size = env.get("AUTOGUIDANCE_MODEL_SIZE")
    iteration = int(env["AUTOGUIDANCE_CKPT_ITER"]) if "AUTOGUIDANCE_CKPT_ITER" in env else None
    config = load_config(ROOT / row.config, overrides + (autoguidance_overrides(size) if size else []))
    npz = (Path(config.train.output_dir) / (config.train.exp_name or "sfd")
           / f"{folder_name(config, config.ckpt_path, size, iteration)}.npz")
    variables = " ".join(f"{key}={value}" for key, value in env.items())
    return (f"{variables + ' ' if variables else ''}FID_NUM=50000 ./run_inference.sh {row.config} && "
            f"INCEPTION_WEIGHTS={table.files['inception'].dest} ./run_eval_via_guided_diffusion.sh {npz}")


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("rows", nargs="*", metavar="ROW", help="rows to fetch (see --list)")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    parser.add_argument("--commands", action="store_true",
                        help="print each model row's download and generate-and-score commands (README table) and exit")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and where, fetch nothing")
    parser.add_argument("--copy", action="store_true", help="copy files out of the hub cache instead of linking")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="project root the configs' relative paths start from (default: the working directory)")
    args = parser.parse_args(argv)
    try:
        table = ReleaseTable.load()
        if args.list:
            print(list_rows(table))
            return 0
        if args.commands:
            for name, row in table.rows.items():
                if row.config:
                    print(f"# {name}: {row.what} (FID {row.fid})\npython scripts/download.py {name}\n"
                          f"{run_command(table, name)}\n")
            return 0
        if not args.rows:
            parser.error("name at least one ROW (or --list)")
        download(args.rows, args.root, copy=args.copy, dry_run=args.dry_run, table=table)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        if error.help:
            print(error.help, file=sys.stderr)
        return 2
    commands = [command for command in (run_command(table, name) for name in args.rows) if command]
    if commands:
        print(("then" if args.dry_run else "done;") + " generate and score with:\n  " + "\n  ".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
