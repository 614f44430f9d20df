"""The ``fg2u-zo`` command line."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fg2u-zo",
        description="Meta-gradients and outer optimization of bilevel problems whose inner "
                    "solver is a black box (FG2U-ZO).")
    parser.add_argument("--version", action="version", version=f"fg2u-zo {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
