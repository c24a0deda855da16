# syntax=docker/dockerfile:1
# The OccFusion workflow as a batch job: snakemake is the entry point, results/ and the model cache
# are volumes. Two targets (docs/running.md has the details):
#   docker build -t occfusion .                       # default: CUDA 13.0, the compiled CUDA rasterizers
#   docker build -t occfusion:cpu --target cpu .      # CPU only, on Debian bookworm
#   docker run --gpus all -v "$PWD/results:/work/results" -v "$HOME/.cache/occfusion:/cache" occfusion
#   docker run --gpus all -v "$PWD/results:/work/results" -v "$PWD/my.yaml:/config/my.yaml:ro" \
#       occfusion --configfile /config/my.yaml
#
# Stages: `build` (CUDA devel image, nvcc) compiles the CUDA rasterizers into wheels; `cpu` (Debian)
# and the final CUDA image (CUDA runtime) install the workflow with the same script,
# docker/install.sh, so they differ only in their base and the CUDA extras. PyPI's Linux wheel of
# torch 2.13.0 is built for CUDA 13.0 (it pulls its CUDA libraries as pip packages), so the CUDA
# stages use CUDA 13.0: an extension must be compiled by the CUDA major version torch was built with.

# The CPU target's base: Debian bookworm (a local import of a debootstrapped rootfs works too:
# --build-arg CPU_BASE=localhost/debian:bookworm, as .ci/container/build-and-run.sh does)
ARG CPU_BASE=debian:bookworm

# ---------------------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-devel-ubuntu22.04 AS build

ARG DEBIAN_FRONTEND=noninteractive
# GPU generations the kernels are compiled for: Turing (7.5), Ampere (8.0, 8.6), Ada (8.9),
# Hopper (9.0), Blackwell (10.0, 12.0) + PTX for newer ones. Narrow it to your GPU for a faster build,
# e.g. --build-arg TORCH_CUDA_ARCH_LIST=9.0 (an extension built for another arch fails at run time
# with absurd out-of-memory errors).
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
# ashawkey's fork of the 3DGS rasterizer: its forward also returns depth and a differentiable alpha,
# which stage 1's mask loss needs (GauHuman / OccFusion vendor the same fork).
ARG DGR_REPO=https://github.com/ashawkey/diff-gaussian-rasterization.git
ARG DGR_COMMIT=8829d14f814fccdaf840b7b0f3021a616583c0a1
ARG GSPLAT_VERSION=1.5.3
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=4

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev g++ git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "torch==2.13.0" "setuptools==84.2.1" "wheel==0.48.0" "ninja==1.13.2"

WORKDIR /build
# diff-gaussian-rasterization is not on PyPI: a pinned commit, with its glm submodule
RUN git clone --recursive "${DGR_REPO}" dgr \
    && git -C dgr checkout "${DGR_COMMIT}" \
    && git -C dgr submodule update --init --recursive \
    && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ./dgr
# gsplat's PyPI wheel compiles its CUDA code on first use (needs nvcc at run time); building its
# sdist here compiles the kernels ahead of time instead
RUN pip wheel --no-deps --no-build-isolation --no-binary=gsplat --wheel-dir /wheels "gsplat==${GSPLAT_VERSION}"

# ---------------------------------------------------------------------------------------------------
# CPU target: docker build --target cpu. PyPI's torch 2.13.0 for Linux is the CUDA build (it runs on
# CPU, with several GB of CUDA libraries); PyPI has no CPU-only variant of it. To install the CPU-only
# wheel instead, point pip at it: --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu,
# or a folder holding torch-2.13.0+cpu-*.whl mounted at build time with
# --build-arg PIP_FIND_LINKS=/wheels (podman/buildah: -v /path/to/wheels:/wheels:ro).
# PIP_CERT: a CA bundle for pip behind a TLS-intercepting proxy (mounted the same way).
# Unset build args stay out of the environment.
FROM ${CPU_BASE} AS cpu

ARG DEBIAN_FRONTEND=noninteractive PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CERT
# for a uid the image does not know (--user), HOME is / and getpwuid fails: caches go to /tmp, and
# LOGNAME answers getpass.getuser() (snakemake asks)
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    OCCFUSION_EXT_DIR=/opt/occfusion/torch_extensions \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    LOGNAME=occfusion

COPY docker/install.sh /usr/local/bin/occfusion-install
RUN occfusion-install system
WORKDIR /work
# dependencies first (a layer that survives edits to the code), then the project
COPY pyproject.toml ./
RUN occfusion-install deps
COPY --chown=occfusion:occfusion . .
# the project, then the CPU rasterizer compiled once into OCCFUSION_EXT_DIR
RUN occfusion-install project
USER 1000:1000

VOLUME ["/work/results", "/cache"]
ENTRYPOINT ["snakemake", "--resources", "gpu=1", "--cores", "all"]
CMD []

# ---------------------------------------------------------------------------------------------------
# CUDA target (the default, last stage): the CUDA runtime, the wheels built above, torch's CUDA build
# from PyPI, LPIPS (torchvision works here). No CUDA compiler is needed in this image.
FROM nvidia/cuda:13.0.1-runtime-ubuntu22.04 AS cuda

ARG DEBIAN_FRONTEND=noninteractive
# for a uid the image does not know (--user), HOME is / and getpwuid fails: caches go to /tmp, and
# LOGNAME answers getpass.getuser() (snakemake asks)
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    OCCFUSION_EXT_DIR=/opt/occfusion/torch_extensions \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    LOGNAME=occfusion

COPY docker/install.sh /usr/local/bin/occfusion-install
RUN occfusion-install system
WORKDIR /work
COPY pyproject.toml ./
COPY --from=build /wheels /wheels
RUN occfusion-install deps "torchvision==0.28.0" "lpips==0.1.4" "packaging==26.3" /wheels/*.whl \
    && rm -rf /wheels
COPY --chown=occfusion:occfusion . .
# the project, then the CPU rasterizer compiled once into OCCFUSION_EXT_DIR (GPU runs use gsplat or
# diff-gaussian-rasterization)
RUN occfusion-install project
USER 1000:1000

# results/ (outputs, logs, benchmarks) and /cache (Hugging Face models: HF_HOME; torch hub: TORCH_HOME)
VOLUME ["/work/results", "/cache"]
# Arguments after the image name go to snakemake, e.g. --configfile /config/my.yaml, -n, a target.
# One GPU job at a time by default; a later --resources gpu=N (N GPUs) replaces it. (--resources
# comes first here because it takes several values: a target right after it would be read as one.)
ENTRYPOINT ["snakemake", "--resources", "gpu=1", "--cores", "all"]
CMD []
