"""From a bare Debian to separated stems: the README's set-up, an isolated install and the image.

    python benchmarks/fresh_root.py --workdir /var/tmp/danna-sep-fresh-root      # as root, on Debian
    python benchmarks/fresh_root.py --workdir DIR --test-args "tests/test_golden.py"   # a subset

Needs root, Linux, and the Debian packages debootstrap, buildah, podman and runc. Each step
is timed, and a Markdown table of the times is printed at the end, headed by a line naming
the machine:

1. `debootstrap --variant=minbase` makes a minimal root of the suite (default bookworm) from
   the Debian mirror this machine's apt uses.
2. That root, as debootstrap left it (less /dev, /proc, /sys and apt's package caches, as in
   Debian's slim images), is imported into buildah as a base image.
3. In a chroot of the same root: a bare Debian's prerequisites (BARE_DEBIAN below: Python,
   its venv module and headers, a virtual environment), then the README's Install block and
   its Test block, each line run exactly as written (read from README.md), the test command
   with --test-args appended where given.
4. The isolated install, in the same chroot: the wheel is built, checked to hold the shipped
   bundle, and installed with pipx (Debian's), whose `danna-sep` separates the example.
5. The CPU image is built from the Dockerfile with buildah (`--isolation chroot`, vfs
   storage), with one build argument: BASE_IMAGE, the root of step 2. Then the README's
   `docker run` lines run through podman (`--runtime runc`), and the image's root is checked
   for compilers, CUDA libraries and build-time secrets.

Every separation's four stems are checked (44.1 kHz stereo, the input's length, not silent)
and compared with this checkout's own `danna-sep separate` of the same clip.

pip needs this machine's configuration (index, links, certificate bundle) in the chroot and
in the image build. It is read from `pip config list` (which includes PIP_* variables) and
REQUESTS_CA_BUNDLE / SSL_CERT_FILE, rewritten to a pip.conf whose `cert` points at a copy of
the bundle, and passed in at build time as buildah secrets (`pip.conf`, `pip-cert`), never
written into the image; local folders it names (file:// indexes, find-links) are mounted
read-only at the same paths, in the chroot and in each RUN of the build.

Everything big stays under --workdir (the root, image storage, outputs); the root's mounts
are undone whatever happens, and a previous run's folders are removed at the start.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
STEMS = ("drums", "bass", "other", "vocals")
EXAMPLE = "examples/synth-song.mp3"
EXAMPLE_SECONDS = 15.0
IMAGE = "danna-sep"  # the tag the README's docker lines use
BASE_IMAGE = "localhost/danna-sep-fresh-base"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE_IN_ROOT = "/root/danna-sep"  # where the checkout is copied in the fresh root
VENV_IN_ROOT = "~/venv"  # in bash, as the README writes it

# A bare Debian has no Python: what the README's "Containers and isolated installs" section
# says to run before the Install block (python3-dev: the corpus extra builds pyworld).
BARE_DEBIAN = [
    "apt-get install -y --no-install-recommends python3 python3-venv python3-dev",
    f"python3 -m venv {VENV_IN_ROOT} && . {VENV_IN_ROOT}/bin/activate",
]
# The README's isolated install, run from the checkout's folder in the fresh root (pipx from
# Debian, outside the virtual environment).
PIPX_LINES = [
    "pip wheel --no-deps -w dist .",
    "echo torch==2.13.0 > torch-cpu.txt",
    'pipx install dist/danna_sep-*.whl --pip-args="--extra-index-url https://download.pytorch.org/whl/cpu -c $PWD/torch-cpu.txt"',
]
# The README's docker lines, run in a folder holding songs/synth-song.mp3 and song.mp3 (the
# example); `docker` is podman with this machine's flags. The second line is run with a uid
# other than the image's (and than root's), as `$(id -u)` is for most users.
DOCKER_BUILD_LINE = "docker build -t danna-sep ."
DOCKER_RUN_FOLDER = 'docker run --rm -v "$PWD:/data" danna-sep separate songs -o separated'
DOCKER_RUN_AS_ME = 'docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" danna-sep separate song.mp3 -o mine'
OTHER_UID = 2000
DOCKER_RUN_APP = "docker run --rm -p 127.0.0.1:7860:7860 danna-sep app --host 0.0.0.0"
APP_URL = "http://127.0.0.1:7860/"
CORPUS_IMAGE = "danna-sep:corpus"
DOCKER_BUILD_CORPUS = "docker build --build-arg EXTRAS=app,corpus -t danna-sep:corpus ."
DOCKER_RUN_CORPUS = 'docker run --rm -v "$PWD:/data" danna-sep:corpus corpus --tracks 1 --seconds 5 corpus'
DOCKER_LINES = [DOCKER_BUILD_LINE, DOCKER_RUN_FOLDER, DOCKER_RUN_AS_ME, DOCKER_RUN_APP, DOCKER_BUILD_CORPUS,
                DOCKER_RUN_CORPUS]

COMPILER_PACKAGES = re.compile(r"^(gcc(-\d+)?|g\+\+(-\d+)?|cpp(-\d+)?|clang(-\d+)?|binutils|"
                               r"binutils-.*|libgcc-\d+-dev|libstdc\+\+-\d+-dev|python3(\.\d+)?-dev|"
                               r"libpython3(\.\d+)?-dev|build-essential|make|cmake)$")
COMPILER_PROGRAMS = ("cc", "c++", "gcc", "g++", "cpp", "clang", "clang++", "ld", "as", "make", "cmake")
CUDA_LIBRARY = re.compile(r"^lib(cuda|cudart|cublas(Lt)?|cudnn.*|cufft|cufile|curand|cusolver|cusparse(Lt)?|"
                          r"nccl|nvrtc.*|nvJitLink|nvToolsExt|cupti|nvshmem.*)\.so")


class FreshRootError(Exception):
    """A step that failed or a check that did not hold; one line."""


# --- what this machine uses: its Debian mirror and its pip configuration ---------------------

def debian_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The first `deb` URI this machine's apt sources give for `suite` (deb822 .sources files
    and one-line .list files), else Debian's own."""
    candidates: List[Path] = []
    if (apt_dir / "sources.list").is_file():
        candidates.append(apt_dir / "sources.list")
    listed = apt_dir / "sources.list.d"
    if listed.is_dir():
        candidates += sorted(p for p in listed.iterdir() if p.suffix in (".list", ".sources"))
    for path in candidates:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for paragraph in re.split(r"\n\s*\n", text):
                fields: Dict[str, str] = {}
                for line in paragraph.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if ("deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split()
                        and fields.get("enabled", "yes").lower() != "no" and fields.get("uris")):
                    return fields["uris"].split()[0].rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1].rstrip("/")
    return "http://deb.debian.org/debian"


@dataclass
class PipSetup:
    """This machine's pip configuration, made portable: settings for a pip.conf, the
    certificate bundle to hand over, and the local folders its indexes and links name."""
    settings: Dict[str, str]
    cert: Optional[Path]
    local_paths: List[Path]

    def conf_text(self, cert_path: Optional[str]) -> str:
        parser = configparser.ConfigParser(interpolation=None)
        parser["global"] = dict(self.settings)
        if cert_path and self.cert:
            parser["global"]["cert"] = cert_path
        lines = ["[global]"] + [f"{k} = {v}" for k, v in parser["global"].items()]
        return "\n".join(lines) + "\n"


def parse_pip_config_list(text: str) -> Dict[str, str]:
    """`pip config list` lines (`global.cert='...'`, `:env:.find-links='...'`) as one pip.conf
    [global] section: environment variables over the files, as pip ranks them."""
    ranked: Dict[str, Tuple[int, str]] = {}
    for line in text.splitlines():
        match = re.match(r"^(?P<section>[^.=]*)\.(?P<key>[^=]+)=(?P<value>.*)$", line.strip())
        if not match:
            continue
        section, key = match["section"], match["key"].strip().replace("_", "-")
        value = match["value"].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        rank = 2 if section == ":env:" else 1 if section == "global" else 0
        if section not in (":env:", "global", "install", "download", "wheel"):
            continue
        if key not in ranked or rank >= ranked[key][0]:
            ranked[key] = (rank, value)
    return {key: value for key, (_, value) in sorted(ranked.items())}


def local_paths_of(settings: Dict[str, str]) -> List[Path]:
    """The folders on this machine that the index and link settings name (file:// URLs and
    absolute paths): they must be visible at the same paths where pip runs."""
    paths: List[Path] = []
    for key in ("index-url", "extra-index-url", "find-links"):
        for word in settings.get(key, "").split():
            path = Path(word[len("file://"):]) if word.startswith("file://") else Path(word) if word.startswith("/") else None
            if path is None:
                continue
            # a file:// index names .../simple; the wheels it links to lie beside it
            folder = path.parent if path.name == "simple" else path
            if folder not in paths:
                paths.append(folder)
    return paths


def pip_setup(python: str = sys.executable) -> PipSetup:
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings = parse_pip_config_list(listed.stdout)
    cert_text = settings.pop("cert", None) or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    cert = Path(cert_text) if cert_text and Path(cert_text).is_file() else None
    for key in ("client-cert", "config-file"):  # paths that mean nothing elsewhere
        settings.pop(key, None)
    return PipSetup(settings, cert, [p for p in local_paths_of(settings) if p.exists()])


# --- the README ----------------------------------------------------------------------------

def readme_block(readme: str, heading: str) -> List[str]:
    """The lines of the first ```bash block under the `## heading` of README.md (comments after
    `#` kept: they are part of the line as written, and bash ignores them)."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## )", readme + "\n## ", re.M | re.S)
    if not match:
        raise FreshRootError(f"README.md: no '## {heading}' section")
    block = re.search(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S)
    if not block:
        raise FreshRootError(f"README.md: no ```bash block under '## {heading}'")
    return [line for line in block.group(1).splitlines() if line.strip()]


# --- checks ----------------------------------------------------------------------------------

def installed_packages(root: Path) -> List[str]:
    """Package names dpkg lists as installed in a root (its status file)."""
    status = root / "var/lib/dpkg/status"
    names, name = [], None
    for line in status.read_text(errors="replace").splitlines():
        if line.startswith("Package:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Status:") and name and line.split()[-1] == "installed":
            names.append(name)
    return names


def compilers_in(root: Path) -> List[str]:
    """Compiler packages dpkg has installed and compiler programs on the usual paths, in a root."""
    found = [f"package {p}" for p in installed_packages(root) if COMPILER_PACKAGES.match(p)]
    for folder in ("usr/bin", "usr/local/bin", "bin"):
        for program in COMPILER_PROGRAMS:
            if os.path.lexists(root / folder / program):
                found.append(f"/{folder}/{program}")
        if (root / folder).is_dir():
            found += [f"/{folder}/{p.name}" for p in (root / folder).iterdir()
                      if re.match(r"^(x86_64|aarch64)-linux-gnu-(gcc|g\+\+|cpp|ld|as)(-\d+)?$", p.name)]
    return sorted(set(found))


def cuda_libraries_in(root: Path) -> List[str]:
    """Every CUDA runtime library (libcudart, cuBLAS, cuDNN, NCCL, ...) and pip's `nvidia`
    packages anywhere in a root."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in files:
            if CUDA_LIBRARY.match(name):
                found.append("/" + str(Path(folder, name).relative_to(root)))
        if Path(folder).name == "site-packages" and "nvidia" in dirs:
            found.append("/" + str(Path(folder, "nvidia").relative_to(root)))
    return sorted(found)


def bundle_files_in_wheel(wheel: Path, bundle_folder: Path) -> List[str]:
    """The files of `src/danna_sep/pretrained` that the wheel lacks or holds with another size."""
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    missing = []
    for path in sorted(p for p in bundle_folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        name = "danna_sep/pretrained/" + path.relative_to(bundle_folder).as_posix()
        if sizes.get(name) != path.stat().st_size:
            missing.append(name)
    return missing


def check_stems(folder: Path, reference: Optional[Path]) -> str:
    """The four stems of the example in `folder`: 44.1 kHz stereo, the clip's length, not
    silent; compared with `reference`'s stems when given. Returns a summary."""
    import numpy as np
    import soundfile as sf
    worst = None
    for stem in STEMS:
        path = folder / f"{stem}.wav"
        if not path.is_file():
            raise FreshRootError(f"{path}: missing")
        data, rate = sf.read(path, dtype="float64", always_2d=True)
        if rate != 44100 or data.shape[1] != 2 or abs(data.shape[0] / rate - EXAMPLE_SECONDS) > 1e-3:
            raise FreshRootError(f"{path}: {rate} Hz, {data.shape[1]} channels, {data.shape[0] / rate:.3f} s")
        if not np.abs(data).max() > 1e-3:
            raise FreshRootError(f"{path}: silent")
        if reference is not None:
            ref, _ = sf.read(reference / f"{stem}.wav", dtype="float64", always_2d=True)
            error = float(np.sum((data - ref) ** 2))
            snr = float("inf") if error == 0 else 10 * np.log10(np.sum(ref ** 2) / error)
            worst = snr if worst is None else min(worst, snr)
    if worst is None:
        return "4 stems, 44.1 kHz stereo, 15.0 s"
    same = "identical to" if worst == float("inf") else f"{worst:.1f} dB SNR (worst stem) against"
    return f"4 stems, 44.1 kHz stereo, 15.0 s, {same} this checkout's"


# --- running things --------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    seconds: float
    note: str = ""


@dataclass
class Run:
    workdir: Path
    log: Path
    steps: List[Step] = field(default_factory=list)
    facts: Dict[str, object] = field(default_factory=dict)

    def sh(self, argv: Sequence[str], *, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
           check: bool = True, capture: bool = False, label: str = "") -> subprocess.CompletedProcess:
        """Run a command, its output appended to the log (or captured)."""
        with open(self.log, "a") as log:
            log.write(f"\n$ {label or shlex.join(argv)}\n")
            log.flush()
            done = subprocess.run(list(argv), cwd=cwd, env=env, text=True,
                                  stdout=subprocess.PIPE if capture else log,
                                  stderr=subprocess.STDOUT if not capture else subprocess.PIPE)
            if capture:
                log.write(done.stdout[-20000:] + (done.stderr or "")[-5000:])
        if check and done.returncode != 0:
            raise FreshRootError(f"'{label or shlex.join(argv)}' exited {done.returncode} (log: {self.log})")
        return done

    def timed(self, name: str, note: str = ""):
        run = self

        class _Timer:
            def __enter__(self):
                self.start = time.monotonic()
                print(f"[fresh_root] {name} ...", file=sys.stderr, flush=True)
                return self

            def __exit__(self, kind, value, tb):
                seconds = time.monotonic() - self.start
                if kind is None:
                    run.steps.append(Step(name, seconds, note))
                    print(f"[fresh_root] {name}: {seconds:.0f} s", file=sys.stderr, flush=True)
                return False
        return _Timer()


def mounts_under(path: Path) -> List[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts") as handle:
        points = [line.split()[1].replace("\\040", " ") for line in handle]
    return sorted((p for p in points if (p + "/").startswith(prefix)), key=len, reverse=True)


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(path)
    if left:
        raise FreshRootError(f"{left[0]}: still mounted; not removing {path}")


def remove_tree(path: Path) -> None:
    """Remove a previous run's folder, never through a mount (a bound /dev would be the host's)."""
    if path.exists():
        unmount_all(path)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


class Chroot:
    """The fresh root with /proc, /sys, /dev and pip's local folders mounted; commands run in it
    with a clean environment and pip's configuration."""

    def __init__(self, run: Run, root: Path, pip: PipSetup):
        self.run, self.root, self.pip = run, root, pip

    def __enter__(self) -> "Chroot":
        root = self.root
        try:
            self.run.sh(["mount", "-t", "proc", "proc", str(root / "proc")])
            self.run.sh(["mount", "-t", "sysfs", "-o", "ro", "sysfs", str(root / "sys")])
            self.run.sh(["mount", "--rbind", "/dev", str(root / "dev")])
            self.run.sh(["mount", "--make-rslave", str(root / "dev")])
            for folder in self.pip.local_paths:
                target = root / str(folder).lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                self.run.sh(["mount", "--bind", str(folder), str(target)])
                self.run.sh(["mount", "-o", "remount,bind,ro", str(target)])
        except BaseException:
            unmount_all(root)
            raise
        config = root / "etc/fresh-root"
        config.mkdir(exist_ok=True)
        if self.pip.cert:
            shutil.copy(self.pip.cert, config / "pip-cert.pem")
        (config / "pip.conf").write_text(self.pip.conf_text("/etc/fresh-root/pip-cert.pem"))
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # debootstrap writes no /etc/hosts; Debian's installer writes localhost and the
        # machine's name (127.0.1.1), and torchrun's store resolves both.
        if not (root / "etc/hosts").exists():
            (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{socket.gethostname()}\n"
                                            "::1\tlocalhost ip6-localhost ip6-loopback\n")
        # A person at the terminal answers apt's question; in the proof, apt's own setting does.
        (root / "etc/apt/apt.conf.d/90fresh-root-assume-yes").write_text('APT::Get::Assume-Yes "true";\n')
        return self

    def __exit__(self, *exc) -> bool:
        unmount_all(self.root)
        return False

    def env(self) -> Dict[str, str]:
        return {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                "DEBIAN_FRONTEND": "noninteractive", "PIP_CONFIG_FILE": "/etc/fresh-root/pip.conf"}

    def line(self, line: str, *, cwd: str = SOURCE_IN_ROOT, venv: bool = True, capture: bool = False,
             check: bool = True) -> subprocess.CompletedProcess:
        """One line as a user types it into bash, in `cwd`, with the virtual environment active."""
        script = f"set -e\ncd {shlex.quote(cwd)}\n"
        if venv:
            script += f". {VENV_IN_ROOT}/bin/activate\n"
        argv = ["chroot", str(self.root), "/usr/bin/env", "-i"] + [f"{k}={v}" for k, v in self.env().items()]
        return self.run.sh(argv + ["/bin/bash", "-c", script + line], capture=capture, check=check,
                           label=f"(chroot) {line}")


# --- the proof -------------------------------------------------------------------------------

def copy_checkout(destination: Path, ref: Optional[str]) -> None:
    """The checkout's files as a clone would have them: a commit (`ref`) or the working tree's
    tracked and untracked-but-not-ignored files."""
    destination.mkdir(parents=True)
    if ref:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def reference_stems(run: Run, out: Path) -> Path:
    """This checkout's own separation of the example (the environment running the script)."""
    command = Path(sys.executable).parent / "danna-sep"
    run.sh([str(command), "separate", str(REPO / EXAMPLE), "-o", str(out), "-q"])
    return out / "synth-song"


def start_app(run: Run, docker_function: str, podman: List[str], timeout: float = 600.0) -> str:
    """The README's web app line, until its page answers on the published port; then Ctrl-C's
    sibling, SIGTERM, as `docker stop` sends it."""
    import urllib.request
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 7860)) == 0:
            raise FreshRootError("127.0.0.1:7860 is taken; the README's app line publishes that port")
    name = "danna-sep-fresh-root-app"
    subprocess.run(podman + ["rm", "-f", name], capture_output=True)
    with open(run.log, "a") as log:
        log.write(f"\n$ {DOCKER_RUN_APP}\n")
        log.flush()
        app = subprocess.Popen(["bash", "-c", docker_function + DOCKER_RUN_APP], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "DOCKER_NAME": name}, start_new_session=True)
    start, page = time.monotonic(), None
    try:
        while time.monotonic() - start < timeout and app.poll() is None:
            try:
                with urllib.request.urlopen(APP_URL, timeout=5) as answer:
                    page = answer.read().decode(errors="replace")
                    break
            except OSError:
                time.sleep(1)
        if page is None:
            raise FreshRootError(f"{APP_URL}: no page in {timeout:.0f} s (app exit status {app.poll()})")
        if "gradio" not in page.lower():
            raise FreshRootError(f"{APP_URL}: the page is not the Gradio app's")
        return f"{APP_URL} answered with the Gradio page after {time.monotonic() - start:.0f} s"
    finally:
        subprocess.run(podman + ["stop", "-t", "20", name], capture_output=True)
        try:
            app.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, 9)
            app.wait()
        subprocess.run(podman + ["rm", "-f", name], capture_output=True)


def image_size_bytes(run: Run, podman: List[str], image: str = IMAGE) -> int:
    done = run.sh(podman + ["image", "inspect", "--format", "{{.Size}}", image], capture=True)
    return int(done.stdout.strip())


def prove(args: argparse.Namespace, run: Run) -> None:
    """Every step; raises FreshRootError at the first that fails (the steps so far stay in `run`),
    or at the end where only the README's test command failed."""
    workdir = run.workdir
    root, storage, runroot, data = workdir / "root", workdir / "storage", workdir / "run", workdir / "data"
    for path in (root, data, workdir / "source", workdir / "reference"):
        remove_tree(path)
    if not args.keep_storage:
        remove_tree(storage)
        remove_tree(runroot)
    buildah = ["buildah", "--root", str(storage), "--runroot", str(runroot), "--storage-driver", "vfs"]
    pip = pip_setup()
    mirror = args.mirror or debian_mirror(args.suite)
    run.facts.update(mirror=mirror, suite=args.suite, pip_local_paths=[str(p) for p in pip.local_paths],
                     pip_settings=sorted(pip.settings), pip_cert=str(pip.cert) if pip.cert else None)
    # The checkout being proven: its README's commands, its Dockerfile.
    context = workdir / "source"
    copy_checkout(context, args.ref)
    readme = (context / "README.md").read_text()
    install_lines = readme_block(readme, "Install")
    test_lines = readme_block(readme, "Test")
    for line in BARE_DEBIAN + PIPX_LINES + DOCKER_LINES:
        if line not in readme:
            raise FreshRootError(f"README.md no longer shows the line the proof runs: {line}")

    reference = reference_stems(run, workdir / "reference")

    with run.timed("debootstrap", f"--variant=minbase {args.suite}, {mirror}"):
        run.sh(["debootstrap", "--variant=minbase", args.suite, str(root), mirror])

    with run.timed("import the root as a base image"):
        tarball = workdir / "base.tar"
        run.sh(["tar", "-C", str(root), "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                "--exclude=./sys/*", "--exclude=./var/cache/apt/archives/*.deb",
                "--exclude=./var/lib/apt/lists/*", "-cf", str(tarball), "."])
        container = run.sh(buildah + ["from", "scratch"], capture=True).stdout.strip()
        run.sh(buildah + ["add", container, str(tarball), "/"])
        run.sh(buildah + ["commit", "--rm", container, f"{BASE_IMAGE}:{args.suite}"])
        tarball.unlink()

    source = root / SOURCE_IN_ROOT.lstrip("/")
    shutil.copytree(context, source, symlinks=True)
    with Chroot(run, root, pip) as chroot:
        with run.timed("bare Debian: Python and a virtual environment", "; ".join(BARE_DEBIAN)):
            for line in BARE_DEBIAN:
                chroot.line(line, venv=False)
        with run.timed("README Install block", " && ".join(install_lines)):
            for line in install_lines:
                chroot.line(line)
        with run.timed("README Test block, set-up lines", f"{len(test_lines) - 1} lines"):
            for line in test_lines[:-1]:
                chroot.line(line)
        test_line = test_lines[-1] + (" " + args.test_args if args.test_args else "")
        with run.timed("README test command", test_line):
            done = chroot.line(test_line, capture=True, check=False)
        summary = [l for l in done.stdout.splitlines() if re.search(r"\b(passed|failed)\b", l)]
        run.facts["tests"] = summary[-1].strip("= ") if summary else "?"
        run.steps[-1].note += f": {run.facts['tests']}"
        # The other steps still run and are measured; the proof fails at the end.
        tests_failed = done.returncode != 0
        if tests_failed:
            failed = [l for l in done.stdout.splitlines() if l.startswith(("FAILED ", "ERROR "))]
            run.facts["tests_failed"] = failed

        with run.timed("isolated install: wheel, then pipx", " && ".join(PIPX_LINES)):
            chroot.line(PIPX_LINES[0])
            (wheel,) = (source / "dist").glob("danna_sep-*.whl")
            lacking = bundle_files_in_wheel(wheel, source / "src/danna_sep/pretrained")
            if lacking:
                raise FreshRootError(f"{wheel.name} lacks {lacking[0]} (and {len(lacking) - 1} more)")
            run.facts["wheel"] = f"{wheel.name}, {wheel.stat().st_size / 1e6:.1f} MB, bundle inside"
            chroot.line("apt-get install -y --no-install-recommends pipx", venv=False)
            for line in PIPX_LINES[1:]:
                chroot.line(line, venv=False)
        pipx_out = "/root/pipx-check"
        with run.timed("pipx's danna-sep separate (example)"):
            chroot.line(f"mkdir -p {pipx_out}", venv=False)
            chroot.line(f"~/.local/bin/danna-sep separate {SOURCE_IN_ROOT}/{EXAMPLE} -o out -q",
                        cwd=pipx_out, venv=False)
        torch = chroot.line("~/.local/pipx/venvs/danna-sep/bin/python -c "
                            "'import torch; print(torch.__version__, torch.version.cuda)'",
                            venv=False, capture=True).stdout.strip().splitlines()[-1]
        run.facts["pipx_torch"] = torch
        pipx_venv = root / "root/.local/pipx/venvs/danna-sep"
        run.facts["pipx_venv_bytes"] = sum(p.stat().st_size for p in pipx_venv.rglob("*") if p.is_file()
                                           and not p.is_symlink())
        cuda = cuda_libraries_in(pipx_venv)
        if cuda or not torch.endswith("None"):
            raise FreshRootError(f"pipx installed a CUDA torch ({torch}; {len(cuda)} CUDA libraries)")
        run.facts["pipx_stems"] = check_stems(root / pipx_out.lstrip("/") / "out/synth-song", reference)

    if not args.skip_image:
        prove_image(args, run, pip, reference)
    if tests_failed:
        raise FreshRootError(f"the README's test command in the fresh root: {run.facts['tests']}")


def prove_image(args: argparse.Namespace, run: Run, pip: PipSetup, reference: Path) -> None:
    """Build the image on the fresh root's base image, run the README's docker lines, and
    check what the image holds."""
    workdir = run.workdir
    storage, runroot, data, context = workdir / "storage", workdir / "run", workdir / "data", workdir / "source"
    buildah = ["buildah", "--root", str(storage), "--runroot", str(runroot), "--storage-driver", "vfs"]
    podman = ["podman", "--root", str(storage), "--runroot", str(runroot), "--storage-driver", "vfs"]

    build_dir = workdir / "build-config"
    remove_tree(build_dir)
    build_dir.mkdir()
    (build_dir / "pip.conf").write_text(pip.conf_text("/run/secrets/pip-cert"))
    secrets = ["--secret", f"id=pip.conf,src={build_dir / 'pip.conf'}"]
    if pip.cert:
        secrets += ["--secret", f"id=pip-cert,src={pip.cert}"]
    volumes = [a for p in pip.local_paths for a in ("-v", f"{p}:{p}:ro")]
    with run.timed("image build (buildah bud)", f"{DOCKER_BUILD_LINE}, as buildah bud --build-arg BASE_IMAGE"):
        run.sh(buildah + ["bud", "--isolation", "chroot", "--network", "host", "--layers=false",
                          "--build-arg", f"BASE_IMAGE={BASE_IMAGE}:{args.suite}", *secrets, *volumes,
                          "-t", IMAGE, "-f", str(context / "Dockerfile"), str(context)])
    run.facts["image_bytes"] = image_size_bytes(run, podman)

    # podman with runc: crun 1.8 refuses this machine's hybrid cgroups. podman's default
    # limits (1048576 open files) need CAP_SYS_RESOURCE, which root lacks here: the open-file
    # limit stays this process's, and the process limit is lowered (runc refuses even the
    # current one).
    open_files = next(l.split()[-3] for l in open("/proc/self/limits") if l.startswith("Max open files"))
    docker_flags = f"--runtime runc --ulimit nofile={open_files} --ulimit nproc=4096"
    docker_function = (f"docker() {{ sub=$1; shift; if [ \"$sub\" = run ]; then {shlex.join(podman)} run "
                       f"{docker_flags} ${{DOCKER_NAME:+--name $DOCKER_NAME}} \"$@\"; "
                       f"else {shlex.join(podman)} \"$sub\" \"$@\"; fi; }}\n")
    (data / "songs").mkdir(parents=True)
    shutil.copy(REPO / EXAMPLE, data / "songs/synth-song.mp3")
    shutil.copy(REPO / EXAMPLE, data / "song.mp3")
    os.chown(data, 1000, 1000)  # the image's user owns the folder it writes into
    with run.timed("docker run: separate a folder", DOCKER_RUN_FOLDER):
        run.sh(["bash", "-c", docker_function + DOCKER_RUN_FOLDER], cwd=data, label=DOCKER_RUN_FOLDER)
    run.facts["image_stems"] = check_stems(data / "separated/synth-song", reference)
    # As a user whose uid is neither the image's nor root's: `id` answers OTHER_UID.
    os.chown(data, OTHER_UID, OTHER_UID)
    as_me = docker_function + f"id() {{ echo {OTHER_UID}; }}\n" + DOCKER_RUN_AS_ME
    with run.timed("docker run --user: separate a file", DOCKER_RUN_AS_ME):
        run.sh(["bash", "-c", as_me], cwd=data, label=DOCKER_RUN_AS_ME)
    run.facts["image_stems_as_other_uid"] = check_stems(data / "mine/song", reference)
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in (data / "mine/song").iterdir()}
    if owners != {(OTHER_UID, OTHER_UID)}:
        raise FreshRootError(f"--user {OTHER_UID}: stems owned by {owners}")

    with run.timed("docker run: the web app, until its page loads", DOCKER_RUN_APP):
        run.facts["app"] = start_app(run, docker_function, podman)

    check_image(run, buildah, docker_function, pip, IMAGE, "image")

    if not args.skip_corpus_image:
        # The corpus extra: g++ and Python's headers in the first stage only, FluidSynth, a
        # soundfont and espeak-ng in the last; one short song rendered in the container.
        with run.timed("image build, EXTRAS=app,corpus", DOCKER_BUILD_CORPUS):
            run.sh(buildah + ["bud", "--isolation", "chroot", "--network", "host", "--layers=false",
                              "--build-arg", f"BASE_IMAGE={BASE_IMAGE}:{args.suite}", "--build-arg", "EXTRAS=app,corpus",
                              *secrets, *volumes, "-t", CORPUS_IMAGE, "-f", str(context / "Dockerfile"), str(context)])
        run.facts["corpus_image_bytes"] = image_size_bytes(run, podman, CORPUS_IMAGE)
        os.chown(data, 1000, 1000)
        with run.timed("docker run: a corpus song", DOCKER_RUN_CORPUS):
            run.sh(["bash", "-c", docker_function + DOCKER_RUN_CORPUS], cwd=data, label=DOCKER_RUN_CORPUS)
        run.facts["corpus_song"] = check_corpus_song(data / "corpus")
        check_image(run, buildah, docker_function, pip, CORPUS_IMAGE, "corpus_image")

    if not args.keep_storage:
        remove_tree(storage)
        remove_tree(runroot)


def check_corpus_song(folder: Path) -> str:
    """The one song `danna-sep corpus --tracks 1` writes: five 16-bit files, the mixture the
    exact sum of the stems."""
    import numpy as np
    import soundfile as sf
    mixtures = sorted(folder.glob("*/*/mixture.wav"))
    if len(mixtures) != 1:
        raise FreshRootError(f"{folder}: {len(mixtures)} songs, not 1")
    song = mixtures[0].parent
    mixture, rate = sf.read(song / "mixture.wav", dtype="int32", always_2d=True)
    total = sum(sf.read(song / f"{stem}.wav", dtype="int32", always_2d=True)[0].astype(np.int64) for stem in STEMS)
    if not np.array_equal(total, mixture) or not np.abs(mixture).max() > 0:
        raise FreshRootError(f"{song}: the mixture is not the sum of the stems, or silent")
    return f"{song.relative_to(folder)}: {mixture.shape[0] / rate:.1f} s at {rate} Hz, mixture = sum of the 4 stems"


def check_image(run: Run, buildah: List[str], docker_function: str, pip: PipSetup, image: str, key: str) -> None:
    """What an image holds: user, entry point, volume; no compiler, no CUDA, no build secrets."""
    config = json.loads(run.sh(buildah + ["inspect", "--type", "image", image], capture=True).stdout)["OCIv1"]["config"]
    run.facts[f"{key}_config"] = {k: config.get(k) for k in ("User", "Entrypoint", "Cmd", "WorkingDir", "Volumes")}
    if config.get("Entrypoint") != ["danna-sep"] or config.get("User") in (None, "", "root", "0"):
        raise FreshRootError(f"{image} config: {run.facts[f'{key}_config']}")
    if any(e.startswith("PIP_") for e in config.get("Env", [])):
        raise FreshRootError(f"{image} config: a PIP_ variable was baked in")
    container = run.sh(buildah + ["from", image], capture=True).stdout.strip()
    try:
        mounted = Path(run.sh(buildah + ["mount", container], capture=True).stdout.strip())
        compilers = compilers_in(mounted)
        cuda = cuda_libraries_in(mounted)
        # buildah leaves the mount points of `-v` as folders: they must be empty
        secrets_left = [str(p) for p in [mounted / "run/secrets", mounted / "etc/pip.conf", mounted / "etc/fresh-root"]
                        + [mounted / str(q).lstrip("/") for q in pip.local_paths]
                        if p.exists() and (p.is_file() or any(p.iterdir()))]
        run.facts[f"{key}_packages"] = len(installed_packages(mounted))
        run.facts[f"{key}_compilers"] = compilers
        run.facts[f"{key}_cuda_libraries"] = cuda
        run.facts[f"{key}_build_secrets"] = secrets_left
    finally:
        run.sh(buildah + ["umount", container], check=False)
        run.sh(buildah + ["rm", container], check=False)
    torch = run.sh(["bash", "-c", docker_function + f"docker run --rm --entrypoint python {image} -c "
                    "'import torch; print(torch.__version__, torch.version.cuda)'"], capture=True).stdout.split()
    run.facts[f"{key}_torch"] = " ".join(torch)
    if compilers or cuda or secrets_left or torch[-1] != "None":
        raise FreshRootError(f"{image} holds compilers {compilers}, CUDA {cuda[:3]}, secrets {secrets_left}, torch {torch}")


def report(run: Run, args: argparse.Namespace) -> str:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _common as common  # type: ignore[import-not-found]
        header = common.machine_line(common.machine_info())
    except Exception:  # torch or the package missing: name the machine without them
        header = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [f"Measured on {header}.", "", "| step | seconds | what ran |", "| --- | ---: | --- |"]
    for step in run.steps:
        lines.append(f"| {step.name} | {step.seconds:.0f} | {step.note.replace('|', '¦')} |")
    lines.append("")
    for key, value in run.facts.items():
        if key.endswith("_bytes"):
            value = f"{value} bytes ({value / 1e6:.0f} MB, {value / 2**20:.0f} MiB)"
        lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/danna-sep-fresh-root"),
                        help="folder for the root, image storage and outputs (several GB; outside the repository)")
    parser.add_argument("--suite", default="bookworm", help="Debian suite to debootstrap (default bookworm)")
    parser.add_argument("--mirror", help="Debian mirror (default: the one this machine's apt uses)")
    parser.add_argument("--ref", help="a commit to prove (default: the working tree's files)")
    parser.add_argument("--test-args", default="", help="appended to the README's test command (a subset of the suite)")
    parser.add_argument("--skip-image", action="store_true", help="stop after the chroot proof")
    parser.add_argument("--skip-corpus-image", action="store_true", help="build no image with EXTRAS=app,corpus")
    parser.add_argument("--keep-storage", action="store_true", help="keep buildah's storage (the images) afterwards")
    parser.add_argument("--json", type=Path, help="also write the steps and facts to this JSON file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fresh_root.py: needs root (debootstrap, chroot, mounts)", file=sys.stderr)
        return 2
    missing = [t for t in ("debootstrap", "buildah", "podman", "runc", "chroot") if shutil.which(t) is None]
    if missing:
        print(f"fresh_root.py: missing {', '.join(missing)} (apt-get install debootstrap buildah podman runc)",
              file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    if REPO in (workdir, *workdir.parents):
        print(f"fresh_root.py: {workdir}: inside the repository; big files stay out of it", file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(workdir, workdir / "fresh_root.log")
    run.log.write_text("")
    failure = None
    try:
        prove(args, run)
    except FreshRootError as error:
        failure = str(error)
    print(report(run, args))
    if args.json:
        args.json.write_text(json.dumps({"steps": [vars(s) for s in run.steps], "facts": run.facts,
                                         "failure": failure}, indent=1))
    if failure:
        print(f"fresh_root.py: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
