"""Subcommands of `danna-sep` that live apart from cli.py: one module each, with `register(subparsers)`."""
