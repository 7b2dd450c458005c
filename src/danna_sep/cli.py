"""The `danna-sep` command: a thin layer that parses, calls the library and maps errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator, List, Optional

from . import __version__
from .commands.options import Parser
from .errors import INTERRUPTED, DannaSepError, Interrupted

log = logging.getLogger("danna_sep")


# Subcommands that live in their own modules under danna_sep.commands; each module has
# `register(subparsers)` and imports its heavy dependencies only inside its handler.
EXTRA_COMMANDS = ("models", "separate", "corpus", "train", "export", "evaluate", "download", "app")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="danna-sep",
        description="Split songs into drums, bass, other and vocals.",
    )
    parser.add_argument("--version", action="version", version=f"danna-sep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    import importlib

    for name in EXTRA_COMMANDS:
        importlib.import_module(f"danna_sep.commands.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or argparse's one-line usage error (2)
        return int(done.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    with _logging(verbose=getattr(args, "verbose", False), quiet=getattr(args, "quiet", False)), _signals():
        try:
            return handler(args)
        except DannaSepError as error:  # the one place where a user's problem becomes an exit code
            log.error("%s", error)
            return error.exit_code
        except KeyboardInterrupt as interrupt:
            signum = getattr(interrupt, "signum", signal.SIGINT)
            log.error("%s", _SIGNAL_WORDS.get(signum, "interrupted"))
            return getattr(interrupt, "exit_code", INTERRUPTED)


# What the last line says for each signal that stops a command.
_SIGNAL_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, `docker stop`, systemd) and SIGHUP (the terminal closed)
    stop a command as Ctrl-C does: an `Interrupted` (a KeyboardInterrupt) is raised in the
    main thread, so that the work under way cleans up as for Ctrl-C, and main exits 143 or
    129 (130 for Ctrl-C). Once one has arrived, more are ignored until main returns, so that
    the clean-up is not cut short. A signal the process was started ignoring stays ignored
    (`nohup` ignores SIGHUP). Handlers are installed only from the main thread (Python allows
    no other) and put back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []

    def stop(signum, frame) -> None:
        if caught:  # the clean-up of the first one is under way
            return
        caught.append(signum)
        raise Interrupted(signum)

    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {}
    for signum in wanted:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # ignored on purpose: nohup (SIGHUP), a shell's background job (SIGINT)
        previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _OneLineFormatter(logging.Formatter):
    """Every log line on one line: a line break inside a message (a file named with one)
    is written as \\n, so that each problem stays one line on the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


@contextlib.contextmanager
def _logging(verbose: bool, quiet: bool) -> Iterator[None]:
    """The package's log lines, on stderr as `danna-sep: message` (through tqdm, so that they
    never land on a progress bar): info and up, debug too with -v, warnings and errors
    only with -q. Undone on the way out, so that main can be called again."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("danna_sep")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("danna-sep: %(message)s"))
    level = logger.level
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.addHandler(handler)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run() -> None:
    """The console entry point: `main()` on the command line, then exit with its code.

    A process torchrun started leaves without tearing the interpreter down: gloo's worker
    threads can still be dropping the last collective's tensors then, which needs the GIL
    a finalising interpreter no longer hands out, and the process would abort after a
    run that succeeded (see `distributed.leave_process_group`).
    """
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
