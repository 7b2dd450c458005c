"""Audio files in and out.

Reading (`read`) turns any file into float32 `(channels, samples)`: soundfile (libsndfile)
first, for wav, flac, ogg, mp3 and friends; PyAV (ffmpeg, shipped inside the wheel) for the
rest (m4a, aac, mp4, MUSDB18 `.stem.mp4`, opus in webm, wma, ...); a file cut short is
judged the same way for every format (`truncation`). `load` then makes the 44.1 kHz stereo
track the models expect (`mix`, `resample`). Writing (`write`) is atomic: a hidden
temporary file in the target folder, renamed onto the final name only once complete
(`danna_sep.atomic`), several files all or none.

Every problem with a file raises `AudioError` with one line that names the file.
"""

from ..atomic import is_temporary_name, name_max, remove_stale_temporaries
from .common import AUDIO_EXTENSIONS, AudioError, PathLike, check_readable, is_audio_file
from .folders import long_name, remove_empty_folders
from .formats import (FORMAT_EXTENSIONS, WAV_LIMIT, BitDepth, Format, default_bit_depth, encoded_bytes,
                      output_format, wav_container)
from .load import load, load_spooled
from .mix import downmix
from .probe import declared_length, source_bit_depth
from .read import BLOCK, AudioBlocks, open_blocks, read_audio, read_audio_streams
from .resample import StreamResampler, resample
from .write import AudioWriter, AudioWriters, Target, plan_targets, write_audio

__all__ = [
    "AUDIO_EXTENSIONS", "BLOCK", "FORMAT_EXTENSIONS", "WAV_LIMIT", "AudioBlocks", "AudioError", "AudioWriter",
    "AudioWriters", "BitDepth", "Format", "PathLike", "StreamResampler", "Target", "check_readable", "declared_length",
    "default_bit_depth", "downmix", "encoded_bytes", "is_audio_file", "is_temporary_name", "load", "load_spooled",
    "long_name", "name_max", "open_blocks", "output_format", "plan_targets", "read_audio", "read_audio_streams",
    "remove_empty_folders", "remove_stale_temporaries", "resample", "source_bit_depth", "wav_container",
    "write_audio",
]
