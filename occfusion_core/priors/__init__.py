"""Generative priors: diffusion models, score distillation, inpainting, segmentation."""
