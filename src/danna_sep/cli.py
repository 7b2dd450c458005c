"""The `danna-sep` command: a thin layer that parses, calls the library and maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

from . import __version__


def _cmd_models(args: argparse.Namespace) -> int:
    from . import models

    rows = [("name", "class", "parameters", "input", "output", "sources")]
    for name in models.names():
        model = models.build(name)
        count = models.parameter_count(model)
        rows.append((
            name,
            type(model).__name__,
            f"{count / 1e6:.2f} M ({count})",
            model.input_domain,
            model.output_kind,
            ",".join(model.sources),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danna-sep",
        description="Split songs into drums, bass, other and vocals.",
    )
    parser.add_argument("--version", action="version", version=f"danna-sep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_models = sub.add_parser(
        "models", help="list the model registry with each default model's size and input domain"
    )
    p_models.set_defaults(handler=_cmd_models)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("danna-sep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
