# syntax=docker/dockerfile:1
# The containerised batch job (first version; the CUDA rasterizers come in a later step).
#   docker build -t occfusion .
#   docker run --gpus all -v "$PWD/results:/work/results" -v "$HOME/.cache/huggingface:/cache/hf" occfusion
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/hf \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /work
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY occfusion_core ./occfusion_core
RUN pip install "torch>=2.4,<2.14" && pip install -e ".[workflow,diffusion]"
COPY . .

VOLUME ["/work/results", "/cache/hf"]
ENTRYPOINT ["snakemake", "--cores", "all", "--resources", "gpu=1"]
