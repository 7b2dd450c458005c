"""`danna-sep corpus`: write a synthetic multitrack corpus in the MUSDB18-HQ layout."""

from __future__ import annotations

import argparse
import sys

from .bars import TaskBars
from .options import add_verbosity_arguments, ranged

# The genres of danna_sep.data.corpus.compose.GENRES, named here so that --help imports no numpy.
GENRE_NAMES = ("pop", "rock", "electronic", "ballad", "funk")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="generate synthetic songs with separate stems (MUSDB18-HQ layout)",
        description="Compose songs in five genres and render every part apart with FluidSynth "
                    "(General MIDI soundfonts and recorded drum kits) or a small synthesizer, through "
                    "its own effect chain (vocals: espeak-ng words sung with the WORLD vocoder, with "
                    "breaths and backing lines). Writes "
                    "OUT/{train,test}/NAME/{mixture,drums,bass,other,vocals}.wav (44.1 kHz stereo "
                    "16-bit; the mixture is the exact sum of the stems) and meta.json. Complete "
                    "tracks already there are skipped, so an interrupted run can be run again.",
    )
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--tracks", type=ranged(int, 1), default=120, help="number of tracks (default: %(default)s)")
    parser.add_argument("--seconds", type=ranged(float, 0.1, 3600, " s"), default=30.0,
                        help="length of each track, 0.1 to 3600 s (default: %(default)s)")
    parser.add_argument("--seed", type=ranged(int, 0), default=0,
                        help="corpus seed; same seed, same bytes (default: %(default)s)")
    parser.add_argument("--soundfont", action="append", default=None, metavar="PATH",
                        help="soundfont (.sf2/.sf3); repeat for several, and each part picks one by the "
                             "seed (default: FluidR3_GM.sf2 and whichever of TimGM6mb, MuseScore General "
                             "and the AVLdrums kits are installed)")
    parser.add_argument("--genre", default=None, choices=sorted(GENRE_NAMES),
                        help="make every song of this genre (default: drawn per song from the seed)")
    parser.add_argument("--workers", type=ranged(int, 1), default=1,
                        help="processes rendering in parallel; the output does not depend on it (default: %(default)s)")
    parser.add_argument("--test-fraction", type=ranged(float, 0, 1), default=0.2, metavar="F",
                        help="share of tracks in test/, spread evenly by index: track i is a test "
                             "track when floor((i+1)F) > floor(iF) (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="re-render and replace existing track folders")
    add_verbosity_arguments(parser, quiet="no progress bar or summary")
    parser.set_defaults(handler=_cmd_corpus)


def _cmd_corpus(args: argparse.Namespace) -> int:
    from danna_sep.data.corpus import generate_corpus

    # A missing soundfont or program raises CorpusError (exit code 2) before anything is rendered.
    bars = None if args.quiet else TaskBars({"corpus": "track"})
    try:
        report = generate_corpus(
            args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed, soundfonts=args.soundfont,
            workers=args.workers, test_fraction=args.test_fraction, force=args.force, genre=args.genre,
            progress=None if bars is None else lambda done, total: bars("corpus", done, total, ""),
        )
    finally:
        if bars is not None:
            bars.close()
    for _, line in report.failed:
        print(f"danna-sep: {line}", file=sys.stderr)
    if not args.quiet:
        made = len(report.written)
        per_track = f", {report.seconds / made:.1f} s per track" if made else ""
        print(f"{args.out}: {made} tracks written, {len(report.skipped)} already complete, "
              f"{len(report.failed)} failed ({report.seconds:.1f} s{per_track})", file=sys.stderr)
    return 1 if report.failed else 0
