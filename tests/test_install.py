"""`pip install .` into a fresh virtual environment, then the README's first command, offline.

The new environment sees this one's packages (torch and the codecs are not downloaded
again) through a .pth file, which adds their folders to sys.path without running their
own .pth files, so this checkout's editable install stays out of it: danna-sep, and the
default bundle with it, must come from what `pip install .` put into the environment.
"""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_then_separate_the_example_offline(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    (site_packages,) = (env_dir / "lib").glob("python*/site-packages")
    parents = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (site_packages / "parent_environment.pth").write_text("\n".join(parents) + "\n")
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    offline.pop("PYTHONPATH", None)
    # Build from a copy: setuptools leaves build/ and *.egg-info in the folder it builds.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(source)],
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
