"""danna-sep: split a song into drums, bass, other and vocals.

Importing the package is light (no torch): `Separator` and `load_bundle` are loaded on
first use, so that tools such as the corpus generator's worker processes start fast.
"""

from typing import List

__version__ = "0.1.0"

#: Source order everywhere: model outputs, bundles, stems.
SOURCES: List[str] = ["drums", "bass", "other", "vocals"]

#: The rate every model, bundle, corpus and spool works at (MUSDB18's).
SAMPLERATE = 44100

#: The fraction of a segment the chunked engine shares with the next one, by default: 0.1
#: scored as well as 0.25 (the default bundle on 24 produced songs and 19 MIR-1K clips,
#: within 0.01 dB; its members within 0.03) for about a sixth less work on long tracks.
DEFAULT_OVERLAP = 0.1

#: The epsilon of the Music Demixing Challenge's SDR, in the metric, the loss and the blend fit.
MDX_EPS = 1e-7

__all__ = ["SOURCES", "SAMPLERATE", "Separator", "load_bundle", "__version__"]


def __getattr__(name: str):
    if name == "Separator":
        from .separator import Separator

        return Separator
    if name == "load_bundle":
        from .bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'danna_sep' has no attribute {name!r}")
