#!/bin/sh
# The image steps that both Dockerfile targets share (`cpu` on Debian, the default CUDA one on
# Ubuntu): the Dockerfile RUNs this script, so no step is written twice. Not meant to run on a host.
#
#   install.sh system          apt packages, the user `occfusion` (uid 1000), /opt/venv, the volumes
#   install.sh deps [REQ...]   torch 2.13.0, the target's extra requirements and this project's
#                              dependencies (needs only pyproject.toml: a layer that survives code edits)
#   install.sh project         this project (the current folder), without touching its dependencies,
#                              and its compiled CPU rasterizer (into $OCCFUSION_EXT_DIR)
#
# Where pip finds torch is the environment's business: PyPI by default (on Linux that is the CUDA 13.0
# build, which also runs on CPU); PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL (Dockerfile build args) can
# offer a CPU-only wheel, which pip then prefers (2.13.0+cpu sorts after 2.13.0).
set -eu

TORCH="torch==2.13.0"
EXTRAS=".[workflow,diffusion]"

case "${1:-}" in
system)
    # python3.11 on both bases (Debian bookworm's python3; Ubuntu 22.04's second Python);
    # g++ for the compiled CPU rasterizer (no CUDA compiler is needed at run time)
    apt-get update
    apt-get install -y --no-install-recommends python3.11 python3.11-venv g++
    rm -rf /var/lib/apt/lists/*
    groupadd --gid 1000 occfusion
    useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash occfusion
    python3.11 -m venv /opt/venv
    mkdir -p /work/results /cache/huggingface /cache/torch "${OCCFUSION_EXT_DIR}"
    chown -R occfusion:occfusion /work /cache /opt/occfusion
    # any uid may run the image (docker run --user "$(id -u):$(id -g)"): snakemake writes
    # /work/.snakemake, models land in /cache
    chmod 1777 /work /cache /cache/huggingface /cache/torch
    ;;
deps)
    shift
    # ninja: torch's extension builder needs it for the CPU rasterizer
    pip install "${TORCH}" "ninja==1.13.2" "$@"
    # the project's dependencies from pyproject.toml alone: its metadata names README.md, and with no
    # source folder yet the package itself is empty (removed again right after)
    [ -e README.md ] || { touch README.md; stub_readme=1; }
    pip install "${TORCH}" "${EXTRAS}"
    pip uninstall -y occfusion-core
    rm -rf build ./*.egg-info
    [ -z "${stub_readme:-}" ] || rm README.md
    ;;
project)
    pip install --no-deps .
    rm -rf build ./*.egg-info
    # the CPU rasterizer (a fallback backend on GPU machines); torch takes a lock file in the build
    # folder even when the build is current, so any uid that runs the image must be able to write there
    python -m occfusion_core.render.backends.cpp --build
    chown -R occfusion:occfusion "${OCCFUSION_EXT_DIR}"
    chmod -R a+rwX "${OCCFUSION_EXT_DIR}"
    ;;
*)
    echo "usage: $0 system | deps [REQUIREMENT...] | project" >&2
    exit 2
    ;;
esac
