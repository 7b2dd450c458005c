# danna-sep in a container: the CPU image by default.
#
#   docker build -t danna-sep .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" danna-sep separate song.mp3 -o separated
#   docker run --rm -p 127.0.0.1:7860:7860 danna-sep app --host 0.0.0.0
#
# Build arguments:
#   BASE_IMAGE       a Debian bookworm image (default debian:bookworm-slim; benchmarks/fresh_root.py
#                    passes a root it made itself with debootstrap)
#   EXTRAS           the package's extras, comma-separated (default "app"; "app,corpus" adds
#                    `danna-sep corpus` with FluidSynth, the General MIDI soundfont and espeak-ng)
#   TORCH_VERSION    torch to install (default 2.13.0)
#   TORCH_INDEX_URL  an extra index searched for torch (default PyTorch's CPU wheels, whose
#                    versions, 2.13.0+cpu, sort above PyPI's CUDA build; empty: PyPI's torch,
#                    which on Linux x86_64 is the CUDA build, for the CUDA image)
#
# A private index or proxy is passed in at build time and never stored in the image: a pip
# configuration file as the secret `pip.conf` and a certificate bundle as the secret
# `pip-cert` (`docker build --secret id=pip.conf,src=FILE --secret id=pip-cert,src=FILE`;
# point the file's `cert` at /run/secrets/pip-cert). Without them pip uses PyPI.

ARG BASE_IMAGE=debian:bookworm-slim

# --- build: a virtual environment in /opt/danna-sep, compilers allowed ----------------------
FROM ${BASE_IMAGE} AS build
ARG EXTRAS=app
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG DEBIAN_FRONTEND=noninteractive
# The corpus extra builds pyworld from source: g++ and Python's headers, here only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && case ",${EXTRAS}," in *,corpus,*) apt-get install -y --no-install-recommends g++ python3-dev ;; esac \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
# torch first and alone, so that the extra index decides its build; the package is then
# installed from its wheel (not the source folder), as pip would install it from PyPI.
RUN --mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=pip-cert,target=/run/secrets/pip-cert \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
 && python3 -m venv /opt/danna-sep \
 && /opt/danna-sep/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
 && /opt/danna-sep/bin/pip wheel --no-deps --wheel-dir /wheels /src \
 && /opt/danna-sep/bin/pip install "$(echo /wheels/danna_sep-*.whl)${EXTRAS:+[$EXTRAS]}" \
 && /opt/danna-sep/bin/danna-sep models >/dev/null

# --- runtime: Python and the shared libraries the extras load, no compilers -----------------
FROM ${BASE_IMAGE}
ARG EXTRAS=app
ARG DEBIAN_FRONTEND=noninteractive
# The corpus extra loads FluidSynth and the soundfont, runs espeak-ng, and pedalboard's
# native module links libatomic (g++ brings it in the first stage; nothing does here).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && case ",${EXTRAS}," in *,corpus,*) apt-get install -y --no-install-recommends libfluidsynth3 fluid-soundfont-gm espeak-ng libatomic1 ;; esac \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && useradd --create-home --uid 1000 --user-group danna \
 && mkdir /data && chown danna:danna /data
COPY --from=build /opt/danna-sep /opt/danna-sep
ENV PATH=/opt/danna-sep/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
USER danna
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7860
ENTRYPOINT ["danna-sep"]
CMD ["--help"]
