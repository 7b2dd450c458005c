"""The container image and the bare-Debian proof (benchmarks/fresh_root.py).

The fast tests check what the proof relies on: the README lines it runs, the Dockerfile's
last stage (entry point, user, volume, no compiler installed), and the helpers that find
this machine's Debian mirror and pip configuration and judge an image's root. The slow test
runs the whole proof: a debootstrapped root, the README's set-up and a subset of its tests in
a chroot, pipx, the image built on that root with buildah and run with podman (as root, on
Debian, several GB under $DANNA_FRESH_ROOT_WORKDIR; about half an hour on 2 cores).
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def fresh_root():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "benchmarks"))
        yield importlib.import_module("fresh_root")


def final_stage(dockerfile: str) -> str:
    """The Dockerfile's last stage, continuation lines joined."""
    text = dockerfile.replace("\\\n", " ")
    return re.split(r"^FROM .*$", text, flags=re.M)[-1]


def test_the_readme_shows_every_line_the_proof_runs(fresh_root):
    install = fresh_root.readme_block(README, "Install")
    test = fresh_root.readme_block(README, "Test")
    assert install[0].startswith("pip install torch") and install[-1].startswith("pip install -e .")
    assert test[-1].startswith("python -m pytest")  # the proof times the last line as the test run
    section = README.split("## Containers and isolated installs", 1)[1].split("\n## ", 1)[0]
    for line in fresh_root.BARE_DEBIAN + fresh_root.PIPX_LINES + fresh_root.DOCKER_LINES:
        assert line in section, line


def test_the_image_runs_danna_sep_as_a_user_in_data_without_compilers():
    last = final_stage((ROOT / "Dockerfile").read_text())
    assert re.search(r'^ENTRYPOINT \["danna-sep"\]\s*$', last, re.M)
    user = re.findall(r"^USER (\S+)", last, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^WORKDIR /data\s*$", last, re.M) and re.search(r'^VOLUME \["/data"\]', last, re.M)
    assert re.search(r"^EXPOSE 7860\s*$", last, re.M)  # the web app's port, as the README publishes it
    installed = " ".join(re.findall(r"apt-get install ([^&;]*)", last))
    assert installed, "the last stage installs its runtime packages with apt-get"
    for package in installed.split():
        assert not re.match(r"^(gcc|g\+\+|cpp|clang|build-essential|make|.*-dev)(-\d+)?$", package), package
    # the package comes from the first stage's environment, not from a pip run here
    assert "pip install" not in last and "COPY --from=build /opt/danna-sep /opt/danna-sep" in last


def test_the_debian_mirror_comes_from_this_machines_apt_sources(fresh_root, tmp_path):
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    assert fresh_root.debian_mirror("bookworm", apt) == "http://deb.debian.org/debian"  # nothing listed
    (apt / "sources.list").write_text("# deb http://old.example/debian bookworm main\n"
                                      "deb [signed-by=/k.gpg] http://one.example/debian/ bookworm main\n")
    assert fresh_root.debian_mirror("bookworm", apt) == "http://one.example/debian"
    assert fresh_root.debian_mirror("trixie", apt) == "http://deb.debian.org/debian"
    (apt / "sources.list").unlink()
    (apt / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian http://second.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    (apt / "sources.list.d" / "b.sources.disabled").write_text("Types: deb\nURIs: http://no.example\nSuites: bookworm\n")
    assert fresh_root.debian_mirror("bookworm", apt) == "http://mirror.example/debian"
    assert fresh_root.debian_mirror("bookworm-updates", apt) == "http://mirror.example/debian"


def test_pip_configuration_becomes_a_portable_file(fresh_root):
    listed = ("global.cert='/etc/ssl/certs/ca.crt'\n"
              "global.extra-index-url='file:///opt/mirror/simple https://idx.example/simple'\n"
              "global.find-links='/opt/wheels'\n"
              ":env:.default-timeout='180'\n"
              "global.default-timeout='60'\n"
              "user.index-url='https://ignored.example'\n")
    settings = fresh_root.parse_pip_config_list(listed)
    assert settings["default-timeout"] == "180"  # a PIP_ variable over the file, as pip ranks them
    assert "index-url" not in settings  # another section than pip's own
    assert fresh_root.local_paths_of(settings) == [Path("/opt/mirror"), Path("/opt/wheels")]
    setup = fresh_root.PipSetup({k: v for k, v in settings.items() if k != "cert"}, Path("/etc/ssl/certs/ca.crt"), [])
    text = setup.conf_text("/run/secrets/pip-cert")
    assert text.startswith("[global]\n") and "cert = /run/secrets/pip-cert\n" in text
    assert "/etc/ssl/certs/ca.crt" not in text and "find-links = /opt/wheels\n" in text


def test_compilers_and_cuda_libraries_are_found_in_a_root(fresh_root, tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    status = ""
    for name, state in [("gcc-12-base", "install ok installed"), ("libgcc-s1", "install ok installed"),
                        ("python3", "install ok installed"), ("cpp-12", "deinstall ok config-files")]:
        status += f"Package: {name}\nStatus: {state}\nVersion: 1\n\n"
    (root / "var/lib/dpkg/status").write_text(status)
    (root / "usr/bin/python3").write_text("")
    site = root / "opt/venv/lib/python3.11/site-packages"
    (site / "torch/lib").mkdir(parents=True)
    (site / "torch/lib/libtorch_cpu.so").write_text("")
    (site / "torch/lib/libgomp-98b21ff3.so.1").write_text("")
    assert fresh_root.compilers_in(root) == [] and fresh_root.cuda_libraries_in(root) == []

    (root / "var/lib/dpkg/status").write_text(status + "Package: g++-12\nStatus: install ok installed\n\n"
                                              "Package: libpython3.11-dev\nStatus: install ok installed\n")
    (root / "usr/bin/cc").symlink_to("gcc-12")  # dangling, as when only the link is left: still found
    (root / "usr/bin/x86_64-linux-gnu-gcc-12").write_text("")
    assert fresh_root.compilers_in(root) == ["/usr/bin/cc", "/usr/bin/x86_64-linux-gnu-gcc-12",
                                             "package g++-12", "package libpython3.11-dev"]
    (site / "nvidia/cuda_runtime/lib").mkdir(parents=True)
    (site / "nvidia/cuda_runtime/lib/libcudart.so.12").write_text("")
    (site / "torch/lib/libcudnn_graph.so.9").write_text("")
    found = fresh_root.cuda_libraries_in(root)
    assert "/opt/venv/lib/python3.11/site-packages/nvidia" in found
    assert "/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12" in found
    assert "/opt/venv/lib/python3.11/site-packages/torch/lib/libcudnn_graph.so.9" in found


def test_a_wheel_without_the_bundle_is_caught(fresh_root, tmp_path):
    bundle = tmp_path / "pretrained"
    (bundle / "default").mkdir(parents=True)
    (bundle / "default/bundle.json").write_text("{}")
    (bundle / "default/00-xumx.safetensors").write_bytes(b"x" * 100)
    wheel = tmp_path / "danna_sep-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("danna_sep/pretrained/default/bundle.json", "{}")
        archive.writestr("danna_sep/pretrained/default/00-xumx.safetensors", b"x" * 99)  # cut short
    assert fresh_root.bundle_files_in_wheel(wheel, bundle) == ["danna_sep/pretrained/default/00-xumx.safetensors"]
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("danna_sep/pretrained/default/00-xumx.safetensors", b"x" * 100)
    assert fresh_root.bundle_files_in_wheel(wheel, bundle) == ["danna_sep/pretrained/default/bundle.json"]
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("danna_sep/pretrained/default/bundle.json", "{}")
    assert fresh_root.bundle_files_in_wheel(wheel, bundle) == []


# The README's test command, narrowed to what an install on a new machine can break: the
# package installed and separating offline, the default bundle's stems bit for bit, the
# references the numeric core is held to, bad input, and the corpus extra's native parts
# (FluidSynth with its soundfont, pyworld built here, espeak-ng).
SUBSET = ("tests/test_install.py tests/test_golden.py tests/test_spectral.py tests/test_wiener.py "
          "tests/test_cli_bad_input.py tests/test_corpus.py::test_fluidsynth_renders_deterministically_on_its_block_grid "
          "tests/test_corpus.py::test_sung_vocals_follow_the_melody")


@pytest.mark.slow
def test_from_a_bare_debian_root_to_separated_stems_in_the_image(tmp_path):
    tools = ("debootstrap", "buildah", "podman", "runc", "chroot")
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists() or not all(map(shutil.which, tools)):
        pytest.skip("needs root on Debian with " + ", ".join(tools))
    workdir = Path(os.environ.get("DANNA_FRESH_ROOT_WORKDIR", "/var/tmp/danna-sep-fresh-root"))
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/fresh_root.py"), "--workdir", str(workdir),
                           "--test-args", SUBSET, "--json", str(report)],
                          capture_output=True, text=True, timeout=3 * 3600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    steps = [step["name"] for step in result["steps"]]
    assert steps[:2] == ["debootstrap", "import the root as a base image"]
    assert "README test command" in steps and "docker run --user: separate a file" in steps
    facts = result["facts"]
    assert re.match(r"^\d+ passed", facts["tests"]) and "failed" not in facts["tests"]
    assert facts["pipx_torch"].endswith("+cpu None")
    assert facts["image_config"]["Entrypoint"] == ["danna-sep"] and facts["image_config"]["User"] == "danna"
    assert facts["app"].startswith("http://127.0.0.1:7860/ answered with the Gradio page")
    for image in ("image", "corpus_image"):
        assert facts[f"{image}_compilers"] == [] and facts[f"{image}_cuda_libraries"] == [], image
        assert facts[f"{image}_build_secrets"] == [] and facts[f"{image}_torch"].endswith("+cpu None"), image
    assert "mixture = sum of the 4 stems" in facts["corpus_song"]
    for key in ("pipx_stems", "image_stems", "image_stems_as_other_uid"):
        assert facts[key].startswith("4 stems, 44.1 kHz stereo, 15.0 s"), facts[key]
