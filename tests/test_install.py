"""`pip install .` into a fresh virtual environment, then the README's first command, offline.

The environment reuses this interpreter's packages (torch and the codecs cannot be
downloaded here) but gets its own copy of danna-sep, so the default bundle must come
from the installed package data, not from the source tree.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_then_separate_the_example_offline(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    offline.pop("PYTHONPATH", None)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(ROOT)],
        cwd=tmp_path, env=offline, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import danna_sep; print(danna_sep.__file__)"],
                           cwd=tmp_path, env=offline, capture_output=True, text=True)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr
    run = subprocess.run([str(env_dir / "bin" / "danna-sep"), "separate", str(ROOT / "examples" / "synth-song.mp3"),
                          "-o", "out", "-q"], cwd=tmp_path, env=offline, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    for stem in ("drums", "bass", "other", "vocals"):
        info = sf.info(tmp_path / "out" / "synth-song" / f"{stem}.wav")
        assert info.samplerate == 44100 and info.channels == 2 and abs(info.duration - 15.0) < 1e-3
