# syntax=docker/dockerfile:1
# The OccFusion workflow as a GPU batch job: snakemake is the entry point, results/ and the model
# cache are volumes. Build and run (docs/running.md has the details):
#   docker build -t occfusion .
#   docker run --gpus all -v "$PWD/results:/work/results" -v "$HOME/.cache/occfusion:/cache" occfusion
#   docker run --gpus all -v "$PWD/results:/work/results" -v "$PWD/my.yaml:/config/my.yaml:ro" \
#       occfusion --configfile /config/my.yaml
#
# Two stages: `build` (CUDA devel image, nvcc) compiles the CUDA rasterizers into wheels; the final
# image (CUDA runtime) installs them with no compiler toolchain for CUDA. PyPI's Linux wheel of
# torch 2.13.0 is built for CUDA 13.0 (it pulls its CUDA libraries as pip packages), so both stages
# use CUDA 13.0: an extension must be compiled by the CUDA major version torch was built with.

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
FROM nvidia/cuda:13.0.1-runtime-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    OCCFUSION_EXT_DIR=/opt/occfusion/torch_extensions \
    MPLCONFIGDIR=/tmp/matplotlib

# g++: the compiled CPU rasterizer (a fallback backend, built below); no CUDA compiler is needed here
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv g++ \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 1000 occfusion \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash occfusion \
    && python3.11 -m venv /opt/venv \
    && mkdir -p /work/results /cache/huggingface /cache/torch /opt/occfusion/torch_extensions \
    && chown -R occfusion:occfusion /work /cache /opt/occfusion

WORKDIR /work
# dependencies first (a layer that survives edits to the workflow), then the project
COPY pyproject.toml README.md ./
COPY occfusion_core ./occfusion_core
COPY --from=build /wheels /wheels
# DL3013 flags the two unversioned items: the wheels built above and this project itself
# hadolint ignore=DL3013
RUN pip install "torch==2.13.0" "torchvision==0.28.0" "lpips==0.1.4" "ninja==1.13.2" \
        "packaging==26.3" /wheels/*.whl \
    && pip install "torch==2.13.0" ".[workflow,diffusion]" \
    && rm -rf /wheels
COPY --chown=occfusion:occfusion . .

USER 1000:1000
# the CPU rasterizer, compiled once into OCCFUSION_EXT_DIR (GPU runs use gsplat or diff-gaussian-rasterization)
RUN python -m occfusion_core.render.backends.cpp --build

# results/ (outputs, logs, benchmarks) and /cache (Hugging Face models: HF_HOME; torch hub: TORCH_HOME)
VOLUME ["/work/results", "/cache"]
# Arguments after the image name go to snakemake, e.g. --configfile /config/my.yaml, -n, a target.
# One GPU job at a time by default; a later --resources gpu=N (N GPUs) replaces it. (--resources
# comes first here because it takes several values: a target right after it would be read as one.)
ENTRYPOINT ["snakemake", "--resources", "gpu=1", "--cores", "all"]
CMD []
