"""Command lines of the form ``script --option ... section.key=value ...`` in any order.

argparse alone cannot take config overrides anywhere: an option with ``nargs="+"`` (the release's ``--labels 1 2``,
``--cfg_scale 1.5``) would swallow a following ``sample.cfg_scale=1.5`` as one of its values, and positionals split
by options are refused. Overrides have a shape no option value has, so they are taken out of the command line first
(keeping their order, which decides which of two settings of one key wins) and the rest goes to argparse.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

# section.key=value (or deeper: section.sub.key=value). A path or a number never has this shape: the text before the
# first "=" is dotted identifiers, with no "/" and no leading digit.
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+=")

OVERRIDES_HELP = ("config overrides; they may come anywhere on the command line, before, between or after the "
                  "options (a section.key=value token is never taken as an option's value)")


def is_override(token: str) -> bool:
    return OVERRIDE.match(token) is not None


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides in their given order, everything else in its given order)."""
    overrides = [token for token in argv if is_override(token)]
    rest = [token for token in argv if not is_override(token)]
    return overrides, rest


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """The ``section.key=value`` positional, for the usage line and --help; parse_with_overrides fills it."""
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help=OVERRIDES_HELP)


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv[1:]) with ``parser``, which has add_overrides_argument's positional; the
    overrides may be anywhere. A leftover positional that is not an override is a usage error (exit 2)."""
    overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if args.overrides:
        parser.error(f"not a section.key=value override: {args.overrides[0]!r}")
    args.overrides = overrides
    return args


class UsageFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help with ``Usage:`` (capitalised) as the first word, as launchers' --help print it; descriptions
    and epilogs keep their line breaks, so examples stay one command a line."""

    def add_usage(self, usage, actions, groups, prefix=None) -> None:
        super().add_usage(usage, actions, groups, "Usage: " if prefix is None else prefix)


def make_parser(description: str, epilog: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help and usage errors start with ``Usage:``. Sub-commands get the same formatter
    from ``subparsers.add_parser(name, formatter_class=UsageFormatter, ...)``."""
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=UsageFormatter, **kwargs)


def report_command(make_report: Callable[[], Path]) -> int:
    """The tail of the experiment commands (scripts/demo.py, study.py, nfe_study.py): run ``make_report``, print
    where the report is and return 0, or print the one-line reason and return 2."""
    from sfd.files import WriteError

    try:
        report = make_report()
    except (FileNotFoundError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0
