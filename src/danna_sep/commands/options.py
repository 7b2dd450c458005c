"""Options that several subcommands share, and the argparse types that check values as they
are parsed: a value out of range, or a device this machine lacks, is a usage error (exit
code 2, one line) before anything heavy is imported or loaded."""

from __future__ import annotations

import argparse
import re
from typing import Callable, List, Optional

from .. import DEFAULT_OVERLAP

PRECISIONS = ("auto", "float32", "bfloat16")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`danna-sep separate: ...`) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def ranged(kind: Callable[[str], float], low: Optional[float] = None, high: Optional[float] = None,
           unit: str = "") -> Callable[[str], float]:
    """An argparse type: `kind(text)` within [low, high], refused with the range otherwise
    (argparse itself refuses text that `kind` cannot read)."""

    def parse(text: str):
        value = kind(text)
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                bounds = f"at least {low:g}{unit}"
            elif low is None:
                bounds = f"at most {high:g}{unit}"
            else:
                bounds = f"from {low:g} to {high:g}{unit}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bounds})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def device(text: str) -> str:
    """An argparse type: a device that this machine has (torch is imported only for cuda and mps)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text}: not a device (auto, cpu, cuda, cuda:N or mps)")
    if text in ("auto", "cpu"):
        return text
    import torch

    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    else:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: Apple's MPS is not available on this machine")
    return text


def comma_list(choices: List[str]) -> Callable[[str], List[str]]:
    """An argparse type: comma-separated words, each one of `choices`, none twice."""

    def parse(text: str) -> List[str]:
        words = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [w for w in words if w not in choices]
        if unknown or not words:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'names nothing'} "
                f"(choose from {', '.join(choices)})")
        if len(set(words)) != len(words):
            raise argparse.ArgumentTypeError(f"{text!r}: names a stem twice")
        return words

    parse.__name__ = "list"
    return parse


def add_model_arguments(choice, extra) -> None:
    """--bundle, --checkpoints and --umx into `choice` (an argument group, or a mutually
    exclusive one), --fast into `extra`."""
    choice.add_argument("--bundle", default=None,
                        help="bundle folder, or the name of a shipped bundle or of one in a $DANNA_BUNDLES "
                             "folder (danna-sep models lists them) (default: the shipped default)")
    choice.add_argument("--checkpoints", default=None, metavar="DIR",
                        help="the original tool's TorchScript checkpoints folder (separate uses "
                             "$DANNA_CHECKPOINTS when set and neither this nor --bundle is given)")
    choice.add_argument("--umx", default=None, metavar="umxhq|umxl|DIR",
                        help="Open-Unmix's published files, one TARGET-HASH.pth per source (their names' "
                             "sha256 prefixes are checked): umxhq or umxl from torch hub's checkpoints folder, "
                             "where 'danna-sep download umxhq|umxl' puts them, or a folder holding one set "
                             "(./umxhq for a folder of that name)")
    extra.add_argument("--fast", action="store_true", help="with --checkpoints: U-Net and Demucs only")


def batch_segments(text: str) -> int:
    """--batch-segments: "auto" (0) or a count from 1 to 256."""
    if text == "auto":
        return 0
    return int(ranged(int, 1, 256)(text))


def add_engine_arguments(group, *, precision: str) -> None:
    """The chunked engine's options (--device, --segment, --overlap, --shifts, --precision);
    `precision` is the default of --precision."""
    group.add_argument("--device", type=device, default="auto",
                       help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    group.add_argument("--segment", type=ranged(float, 1.0, 600.0, " s"), default=10.0,
                       help="segment length, 1 to 600 seconds (default: %(default)s)")
    group.add_argument("--overlap", type=ranged(float, 0.0, 0.5), default=DEFAULT_OVERLAP,
                       help="overlap between segments, 0 to 0.5 (default: %(default)s)")
    group.add_argument("--shifts", type=ranged(int, 0, 100), default=0,
                       help="random shifts per segment, 0 to 100 (default: %(default)s)")
    group.add_argument("--wiener-blend", choices=["members", "joint"], default="members",
                       help="members: each spectrogram model's estimate Wiener-filtered on its own, then "
                            "blended (the original's way); joint: their blended magnitudes filtered once, "
                            "faster (default: %(default)s)")
    group.add_argument("--blend-bins", choices=["modelled", "all"], default="modelled",
                       help="modelled: a model's blend weight counts only on the frequencies it models, the "
                            "others' weights standing in above them; all: on every frequency, as the "
                            "original did (default: %(default)s)")
    group.add_argument("--batch-segments", type=batch_segments, default=0, metavar="N|auto",
                       help="segments of a track separated together, 1 to 256, or auto: as many as fit in "
                            "a GPU's memory (16 at first, halved until they fit), one on the CPU, where more "
                            "is slower; ignored with --shifts (default: auto)")
    group.add_argument("--pipeline", choices=["streamed", "original"], default="streamed",
                       help="streamed: overlapping segments, memory bounded whatever the track's length; "
                            "original: the original Danna-Sep tool's separation step by step, on the whole "
                            "track at once (whole-track models and Wiener filter; --segment and --overlap do "
                            "not apply, --shifts is refused), which needs memory growing with the track: "
                            "with the default bundle about 45 MB per second of audio (peak 3.1 GB for a "
                            "minute, about 10 GB for a 4-minute song; streamed: 1 GB at any length), more "
                            "with the original checkpoints (default: %(default)s)")
    group.add_argument("--precision", choices=PRECISIONS, default=precision,
                       help="the networks' arithmetic: bfloat16 is about twice as fast on CPUs with "
                            "native bfloat16 (AVX512-BF16, AMX), float32 reproduces the models exactly "
                            "and gives the same scores on every machine; auto picks bfloat16 on such "
                            "CPUs, float32 elsewhere (default: %(default)s)")


def add_verbosity_arguments(parser, *, quiet: str) -> None:
    """-q (only warnings and errors; `quiet` says what else it silences) and -v (debug lines
    too); `danna_sep.cli.main` sets the log level from them."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help=quiet)
    group.add_argument("-v", "--verbose", action="store_true", help="say more: choices made, timings")
