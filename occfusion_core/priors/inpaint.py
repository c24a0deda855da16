"""Inpainting shared by stages 0 and 2: the padded person box, one ControlNet-inpaint call, and the
weight-free gradient-domain fill of stage 2's ``render_fill`` method.

:func:`run_inpaint` is a thin call of diffusers' ``StableDiffusionControlNetInpaintPipeline``;
:func:`poisson_fill` solves the discrete Poisson equation of Pérez et al. (2003, "Poisson image
editing") with scipy's sparse solver: inside the hidden region the result has the render's colour
gradients, and at the seam with the observed person it meets the observed colours.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..masks import bounding_box


def padded_roi(mask: np.ndarray, pad: int = 20, multiple: int = 8) -> tuple[int, int, int, int]:
    """The person box grown by ``pad`` pixels per side and rounded up to a multiple of ``multiple``
    (released stage0_oc.py / stage2_oc.py rule), kept inside the image.

    Where the grown box crosses the image border it is slid back inside rather than clamped, so
    its size stays a multiple of ``multiple`` (the released code clamps and loses that); an image
    side shorter than the box gives the largest multiple that fits.

    Args:
        mask: (H, W) bool person mask; empty -> the whole image (rounded down to the multiple).

    Returns:
        (x0, y0, x1, y1) end-exclusive.
    """
    H, W = mask.shape
    box = bounding_box(mask)
    if box is None:
        box = (0, 0, W, H)
    x0, y0, x1, y1 = box

    def fit(lo: int, hi: int, size: int) -> tuple[int, int]:
        length = math.ceil((hi - lo + 2 * pad) / multiple) * multiple
        length = min(length, size // multiple * multiple) or size  # an image under `multiple` px: all of it
        start = min(max(lo - pad - (length - (hi - lo + 2 * pad)) // 2, 0), size - length)
        return start, start + length

    x0, x1 = fit(x0, x1, W)
    y0, y1 = fit(y0, y1, H)
    return x0, y0, x1, y1


def run_inpaint(pipe, image: np.ndarray, mask: np.ndarray, control: np.ndarray, *, prompt: str,
                negative_prompt: str, num_inference_steps: int, guidance_scale: float,
                controlnet_conditioning_scale: float, guess_mode: bool = False, seed: int = 0) -> np.ndarray:
    """One ControlNet-inpaint call at the input's own size (a multiple of the VAE factor, 8).

    Args:
        pipe: a ``StableDiffusionControlNetInpaintPipeline``.
        image: (h, w, 3) uint8 RGB.
        mask: (h, w) bool, True where the model regenerates the pixels.
        control: (h, w, 3) uint8 OpenPose canvas.
        seed: seeds the sampler (one ``torch.Generator`` on the pipeline's device).

    Returns:
        (h, w, 3) uint8 generated image (every pixel decoded by the VAE).
    """
    from PIL import Image

    h, w = mask.shape
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    if h % factor or w % factor:
        raise ValueError(f"inpaint size {w}x{h} is not a multiple of the VAE factor {factor}")
    generator = torch.Generator(device=pipe.device).manual_seed(int(seed))
    out = pipe(
        prompt=prompt, negative_prompt=negative_prompt,
        image=Image.fromarray(np.ascontiguousarray(image)),
        mask_image=Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255),
        control_image=Image.fromarray(np.ascontiguousarray(control)),
        height=h, width=w, num_inference_steps=int(num_inference_steps), guidance_scale=float(guidance_scale),
        controlnet_conditioning_scale=float(controlnet_conditioning_scale), guess_mode=bool(guess_mode),
        generator=generator, output_type="np")
    return (np.clip(out.images[0], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def poisson_fill(guide: np.ndarray, known: np.ndarray, fill: np.ndarray, known_mask: np.ndarray,
                 anchor: float = 1e-5) -> np.ndarray:
    """Fill the pixels of ``fill`` with the colour gradients of ``guide``, matching ``known`` at the seam.

    For every fill pixel p and 4-neighbour q: (f_p - f_q) = (g_p - g_q), with f_q = known_q where q is
    a known pixel (Dirichlet seam) and no equation where q is neither (free border: occluder or
    background). A weak pull ``anchor`` (f_p - g_p) keeps regions that touch no known pixel equal to
    the guide, and makes the system always solvable.

    Args:
        guide: (H, W, C) float guide image (the stage-1 render).
        known: (H, W, C) float observed image.
        fill: (H, W) bool pixels to solve for.
        known_mask: (H, W) bool pixels whose observed colour is trusted (must not overlap ``fill``).

    Returns:
        (H, W, C) float: ``known`` outside ``fill``, the solution inside (clipped to [0, 1]).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    fill = np.asarray(fill, dtype=bool)
    known_mask = np.asarray(known_mask, dtype=bool) & ~fill
    out = np.array(known, dtype=np.float64, copy=True)
    n = int(fill.sum())
    if n == 0:
        return out
    H, W = fill.shape
    index = np.full((H, W), -1, dtype=np.int64)
    index[fill] = np.arange(n)
    ys, xs = np.nonzero(fill)
    guide = np.asarray(guide, dtype=np.float64)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, anchor)]
    diagonal = np.full(n, anchor)
    rhs = anchor * guide[ys, xs]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
        qy_c, qx_c = np.clip(qy, 0, H - 1), np.clip(qx, 0, W - 1)
        q_fill = inside & fill[qy_c, qx_c]
        q_known = inside & known_mask[qy_c, qx_c]
        counted = q_fill | q_known
        diagonal += counted
        rhs += counted[:, None] * (guide[ys, xs] - guide[qy_c, qx_c])
        rhs += q_known[:, None] * out[qy_c, qx_c]
        rows.append(np.nonzero(q_fill)[0])
        cols.append(index[qy_c[q_fill], qx_c[q_fill]])
        vals.append(-np.ones(int(q_fill.sum())))
    vals[0] = diagonal
    A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    solution = spsolve(A, rhs)
    out[ys, xs] = np.clip(solution.reshape(n, -1), 0.0, 1.0)
    return out
