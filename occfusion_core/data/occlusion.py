"""Simulated occlusion of a person in a video, for any source with complete person masks.

- :func:`zju_band_masks`: the ZJU-MoCap protocol of OccNeRF, reused by OccFusion (docs/method.md,
  "Evaluation protocols"): in the first 80 % of the frames a vertical band covering the central 50 %
  of the person's width is hidden; the band shows the background, i.e. the person is erased there.
- :func:`moving_box_occluder`: a wooden crate moving across in front of the person, drawn with the
  mesh rasterizer, so it has a real depth and hides only what lies behind it.
- :func:`apply_occlusion`: composite an occluder into a frame and derive the visible person mask.
- :func:`simulate_occlusion`: either occluder over real frames with complete masks (what a band
  shows: :func:`band_fill`, e.g. the static background :func:`estimate_background` recovers);
  :func:`occlude_sequence` does it in place on a written sequence folder, moving the originals to ``gt/``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from occfusion_core import io
from occfusion_core.data.sequence import read_sequence, write_gt_frame
from occfusion_core.data.source_configs import SimulatedOcclusionConfig
from occfusion_core.io import InputError
from occfusion_core.render.camera import Camera
from occfusion_core.render.mesh import interpolate, rasterize_mesh

OCCLUSION_KINDS = ("none", "zju_band", "object")
BAND_FILLS = ("background", "white", "black")
BACKGROUND_MAX_FRAMES = 50
"""The background median uses at most this many frames (evenly spaced)."""
BACKGROUND_MARGIN_PX = 3
"""Person masks are grown by this many pixels before a pixel counts as showing background."""


def occluded_frame_count(frames: int, occluded_frames_fraction: float) -> int:
    """Number of leading frames that carry the occlusion: round(fraction * frames), halves up."""
    if not 0.0 <= occluded_frames_fraction <= 1.0:
        raise ValueError(f"occluded_frames_fraction must be in [0, 1], got {occluded_frames_fraction}")
    return min(frames, int(math.floor(occluded_frames_fraction * frames + 0.5)))


def zju_band_masks(
    full_masks: np.ndarray, occluded_frames_fraction: float = 0.8, band_width_fraction: float = 0.5
) -> np.ndarray:
    """Occluder masks of the ZJU-MoCap / OccNeRF protocol.

    In each of the first ``round(occluded_frames_fraction * T)`` frames, the occluder is a vertical
    band spanning the whole image height, centred on the person's horizontal extent in that frame,
    ``round(band_width_fraction * person_width)`` pixels wide (at most person_width - 1, so part of
    the person always stays visible). OccNeRF's own constants (mid, width per subject) are this rule
    evaluated once per subject; here the band follows the person frame by frame.

    Args:
        full_masks: (T, H, W) bool complete person masks.
        occluded_frames_fraction: fraction of frames, from the first, that are occluded.
        band_width_fraction: band width as a fraction of the person's width, in (0, 1).

    Returns:
        (T, H, W) bool occluder masks; all False in unoccluded frames and where a mask is empty.
    """
    full_masks = np.asarray(full_masks, dtype=bool)
    if full_masks.ndim != 3:
        raise ValueError(f"zju_band_masks wants (T, H, W) masks, got shape {full_masks.shape}")
    if not 0.0 < band_width_fraction < 1.0:
        raise ValueError(f"band_width_fraction must be in (0, 1), got {band_width_fraction}")
    T, H, W = full_masks.shape
    occluder = np.zeros_like(full_masks)
    for t in range(occluded_frame_count(T, occluded_frames_fraction)):
        cols = np.flatnonzero(full_masks[t].any(axis=0))
        if cols.size == 0:
            continue
        left, right = int(cols[0]), int(cols[-1]) + 1  # person spans columns [left, right)
        width = right - left
        band = min(int(math.floor(band_width_fraction * width + 0.5)), width - 1)
        if band <= 0:
            continue
        start = left + int(math.floor((width - band) / 2.0))
        occluder[t, :, start : start + band] = True
    return occluder


def apply_occlusion(
    image: np.ndarray, full_mask: np.ndarray, occluder_mask: np.ndarray, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw an occluder into a frame.

    Args:
        image: (H, W, 3) unoccluded frame, uint8 or float.
        full_mask: (H, W) bool complete person mask.
        occluder_mask: (H, W) bool pixels where the occluder is in front.
        fill: what those pixels show -- (H, W, 3) background image (band protocol: the person is
            erased) or occluder colours (object), or a (3,) constant colour; same value range as
            ``image``.

    Returns:
        (occluded image (H, W, 3) in ``image``'s dtype, visible person mask (H, W) bool =
        full mask minus occluder).
    """
    image = np.asarray(image)
    occ = np.asarray(occluder_mask, dtype=bool)
    fill = np.broadcast_to(np.asarray(fill, dtype=image.dtype), image.shape)
    out = np.where(occ[..., None], fill, image)
    visible = np.asarray(full_mask, dtype=bool) & ~occ
    return out, visible


_BOX_SIDES = ((2, 1, 0, 1), (2, -1, 0, 1), (0, 1, 2, 1), (0, -1, 2, 1), (1, 1, 0, 2), (1, -1, 0, 2))
"""Box sides as (normal axis, sign, horizontal axis, vertical axis), axes indexing (lateral, up, depth)."""


@dataclass
class BoxOccluder:
    """The crate as seen by the camera, per frame.

    Attributes:
        rgb: (T, H, W, 3) float32 crate colours in [0, 1] (0 where the crate is absent).
        mask: (T, H, W) bool, where the crate is in front of everything (person and background).
        depth: (T, H, W) float32 camera z of the crate; +inf where absent.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def box_mesh(center, axes, size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An oriented box with four vertices per side, so each side has its own surface coordinates.

    Args:
        center: (3,) world centre.
        axes: (3, 3) rows = unit box axes in world coordinates (lateral, up, depth).
        size: (3,) edge lengths along those axes (metres).

    Returns:
        vertices (24, 3) float32, faces (12, 3) long, surface (24, 2) float32 metric coordinates on
        each side (horizontal, vertical from the side's corner), normals (24, 3) float32 outward.
    """
    center = np.asarray(center, dtype=np.float64)
    axes = np.asarray(axes, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    verts, surf, normals, faces = [], [], [], []
    for k, s, p, q in _BOX_SIDES:
        base = len(verts)
        for a, b in ((0, 0), (1, 0), (1, 1), (0, 1)):
            verts.append(center + s * 0.5 * size[k] * axes[k] + (a - 0.5) * size[p] * axes[p]
                         + (b - 0.5) * size[q] * axes[q])
            surf.append((a * size[p], b * size[q]))
            normals.append(s * axes[k])
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    return (torch.tensor(np.array(verts), dtype=torch.float32), torch.tensor(faces),
            torch.tensor(surf, dtype=torch.float32), torch.tensor(np.array(normals), dtype=torch.float32))


def crate_albedo(surface: torch.Tensor, side: torch.Tensor, side_size: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Wooden-crate colour: a dark frame with a diagonal brace over horizontal planks with seams.

    Args:
        surface: (N, 2) metric coordinates on a side (horizontal, vertical).
        side: (N,) long side index 0..5 (plank tones differ between sides).
        side_size: (6, 2) extent of each side (horizontal, vertical), metres.
        seed: varies the plank tones.

    Returns:
        (N, 3) float32 RGB in [0, 1].
    """
    u, v = surface.unbind(-1)
    w, h = side_size[side].unbind(-1)
    plank = torch.floor(v / 0.12)
    # A hash of (plank, side, seed) picks each plank's tone; sin-hash is deterministic on CPU.
    tone = torch.remainder(torch.sin(plank * 12.9898 + side * 78.233 + seed * 3.17) * 43758.5453, 1.0)
    light_wood = torch.tensor([0.74, 0.56, 0.33])
    dark_wood = torch.tensor([0.42, 0.27, 0.13])
    seam_colour = torch.tensor([0.25, 0.16, 0.08])
    grain = 1.0 + 0.05 * torch.sin(2.0 * math.pi * (v * 30.0 + 2.0 * torch.sin(u * 9.0 + plank)))
    out = light_wood * ((0.85 + 0.25 * tone) * grain)[:, None]
    seam = torch.remainder(v, 0.12) < 0.012
    out = torch.where(seam[:, None], seam_colour, out)
    border = 0.06
    frame = (u < border) | (u > w - border) | (v < border) | (v > h - border)
    # Distance from (u, v) to the diagonal from (0, 0) to (w, h).
    diagonal = (u * h - v * w).abs() / torch.sqrt(w * w + h * h) < 0.035
    out = torch.where((frame | diagonal)[:, None], dark_wood * grain[:, None], out)
    return out.clamp(0.0, 1.0)


def moving_box_occluder(
    camera: Camera,
    person_centers: np.ndarray,
    person_depth: np.ndarray,
    occluded_frames_fraction: float = 0.8,
    size=(0.6, 0.95, 0.35),
    floor_y: float | None = None,
    up=None,
    distance_fraction: float = 0.62,
    sweep: float = 0.7,
    shading: float = 0.3,
    light_dir=(0.3, 0.6, 0.75),
    seed: int = 0,
) -> BoxOccluder:
    """A crate that slides across in front of the person during the occluded frames.

    The crate stands between the camera and the person (its centre at ``distance_fraction`` of the
    way from the camera to the person, horizontally), upright along ``up`` and facing the camera. Over
    the first ``round(occluded_frames_fraction * T)`` frames its lateral offset from the line of sight
    moves linearly from -sweep/2 to +sweep/2 metres (direction chosen by the seed); later frames have
    no crate. It hides the pixels where its depth is smaller than the person's (or where there is no
    person), so it really occludes only what is behind it.

    Args:
        camera: the (static) view.
        person_centers: (T, 3) world points the crate is aimed at (e.g. the body's bounding-box centre).
        person_depth: (T, H, W) camera z of the person; +inf where there is no person.
        occluded_frames_fraction: fraction of frames, from the first, with the crate.
        size: (3,) crate width, height, depth in metres.
        floor_y: height (along ``up``) of the floor the crate stands on; None: the crate's top is
            0.1 m above the person centre.
        up: (3,) world up direction; None: the camera's up (minus its y axis).
        distance_fraction: where the crate stands between camera (0) and person (1).
        sweep: lateral travel in metres.
        shading: Lambertian strength, as in :meth:`occfusion_core.data.texture.BodyTexture.render`.
        light_dir: (3,) world direction towards the light.
        seed: random seed (travel direction, plank tones).

    Returns:
        :class:`BoxOccluder` with (T, H, W) arrays.
    """
    person_centers = np.asarray(person_centers, dtype=np.float64)
    person_depth = np.asarray(person_depth, dtype=np.float32)
    T, H, W = person_depth.shape
    R = camera.R.double().numpy()
    cam_center = camera.center.double().numpy()
    up = -R[1] if up is None else np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    lateral = R[0] - np.dot(R[0], up) * up
    lateral /= np.linalg.norm(lateral)
    axes = np.stack([lateral, up, np.cross(lateral, up)])
    size = np.asarray(size, dtype=np.float64)
    side_size = torch.tensor([[size[p], size[q]] for _, _, p, q in _BOX_SIDES], dtype=torch.float32)
    direction = 1.0 if np.random.default_rng(seed).random() < 0.5 else -1.0
    n_occ = occluded_frame_count(T, occluded_frames_fraction)
    light = torch.nn.functional.normalize(torch.tensor(light_dir, dtype=torch.float32), dim=0)

    rgb = np.zeros((T, H, W, 3), dtype=np.float32)
    depth = np.full((T, H, W), np.inf, dtype=np.float32)
    for t in range(n_occ):
        progress = t / (n_occ - 1) if n_occ > 1 else 0.5
        along = cam_center + distance_fraction * (person_centers[t] - cam_center)
        height = (floor_y + 0.5 * size[1]) if floor_y is not None else (
            np.dot(person_centers[t], up) + 0.1 - 0.5 * size[1])
        center = along + (height - np.dot(along, up)) * up + direction * sweep * (progress - 0.5) * lateral
        verts, faces, surface, normals = box_mesh(center, axes, size)
        frags = rasterize_mesh(verts, faces, camera)
        covered = frags.mask
        if not bool(covered.any()):
            continue
        attrs = interpolate(frags, torch.cat([surface, normals], dim=1), faces)[covered]
        side = torch.div(frags.face_index[covered], 2, rounding_mode="floor")
        colour = crate_albedo(attrs[:, :2], side, side_size, seed)
        n = torch.nn.functional.normalize(attrs[:, 2:5], dim=-1)
        colour = colour * ((1.0 - shading) + shading * (n @ light).clamp(min=0.0))[:, None]
        frame_rgb = torch.zeros(H, W, 3)
        frame_rgb[covered] = colour.clamp(0.0, 1.0)
        rgb[t] = frame_rgb.numpy()
        depth[t] = frags.depth.numpy()
    mask = np.isfinite(depth) & (depth < person_depth)
    rgb[~mask] = 0.0
    return BoxOccluder(rgb=rgb, mask=mask, depth=depth)


# ----------------------------------------------------------------------------------------------
# Simulated occlusion on real frames
# ----------------------------------------------------------------------------------------------

def estimate_background(images: np.ndarray, person_masks: np.ndarray,
                        max_frames: int = BACKGROUND_MAX_FRAMES,
                        margin_px: int = BACKGROUND_MARGIN_PX) -> tuple[np.ndarray, np.ndarray]:
    """Background of a static camera: per pixel, the median over frames where no person covers it.

    Pixels covered in every frame take the colour of the nearest pixel that is not (so a band drawn
    there shows a plausible smear rather than the person).

    Args:
        images: (T, H, W, 3) uint8; person_masks: (T, H, W) bool.

    Returns:
        background (H, W, 3) uint8, known (H, W) bool (pixels seen free in some frame).
    """
    T, H, W = person_masks.shape
    pick = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    covered = np.stack([ndimage.binary_dilation(person_masks[t], iterations=margin_px) if margin_px > 0
                        else person_masks[t] for t in pick])
    background = np.zeros((H, W, 3), dtype=np.float32)
    chunk = max(1, 2_000_000 // max(1, len(pick) * W * 3))  # rows per chunk: bounded memory
    for r0 in range(0, H, chunk):
        block = images[pick, r0:r0 + chunk].astype(np.float32)
        block[covered[:, r0:r0 + chunk]] = np.nan
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            background[r0:r0 + chunk] = np.nanmedian(block, axis=0)
    known = ~covered.all(axis=0)
    if not known.any():
        return np.zeros((H, W, 3), dtype=np.uint8), known
    if not known.all():
        _, (ri, ci) = ndimage.distance_transform_edt(~known, return_indices=True)
        background = background[ri, ci]
    return np.clip(background + 0.5, 0, 255).astype(np.uint8), known


class _quiet_nan_warnings:
    """Silence numpy's 'All-NaN slice' warning (those pixels are filled afterwards)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def band_fill(kind: str, images: np.ndarray, person_masks: np.ndarray) -> tuple[np.ndarray, dict]:
    """What a band occluder shows: (H, W, 3) uint8 background estimate or constant colour, and a note."""
    if kind == "background":
        background, known = estimate_background(images, person_masks)
        return background, {"band_fill": "background (per-pixel median of frames where the person "
                                          "does not cover the pixel; never-free pixels: nearest free "
                                          "pixel's colour)", "background_known_fraction": float(known.mean())}
    if kind in ("white", "black"):
        value = 255 if kind == "white" else 0
        return np.full(images.shape[1:], value, dtype=np.uint8), {"band_fill": kind}
    raise ValueError(f"band_fill: {kind!r} is not one of {', '.join(BAND_FILLS)}")


@dataclass
class SimulatedOcclusion:
    """Occluded frames and their ground truth.

    Attributes:
        images: (T, H, W, 3) uint8 occluded frames.
        visible_masks: (T, H, W) bool complete person mask minus occluder.
        occluder_masks: (T, H, W) bool occluder pixels.
        summary: JSON-ready description (kind, settings, frames occluded, hidden share of the person).
    """

    images: np.ndarray
    visible_masks: np.ndarray
    occluder_masks: np.ndarray
    summary: dict


def simulate_occlusion(images: np.ndarray, full_masks: np.ndarray, cfg: SimulatedOcclusionConfig,
                       camera=None, person_centers: np.ndarray | None = None,
                       background: np.ndarray | None = None) -> SimulatedOcclusion:
    """Hide part of the person in real frames; the inputs are the ground truth.

    Args:
        images: (T, H, W, 3) uint8 unoccluded frames.
        full_masks: (T, H, W) bool complete person masks.
        cfg: kind 'zju_band' (:func:`occfusion_core.data.occlusion.zju_band_masks`, filled per
            ``cfg.band_fill``) or 'object' (a crate from
            :func:`occfusion_core.data.occlusion.moving_box_occluder`).
        camera: :class:`occfusion_core.render.camera.Camera` of the frames ('object' only).
        person_centers: (T, 3) world points the crate aims at, e.g. the fitted pelvis ('object' only).
        background: (T, H, W, 3) uint8 background of every frame for ``band_fill: background`` (e.g.
            estimated in the uncropped video and cut like each frame); None: estimated from ``images``.

    Raises:
        ValueError: unknown kind, missing camera for 'object', or an occluder hiding the whole person.
    """
    images = np.asarray(images)
    full_masks = np.asarray(full_masks, dtype=bool)
    T = len(images)
    summary: dict = {"kind": cfg.kind, "occluded_frames_fraction": cfg.occluded_frames_fraction}
    if cfg.kind == "zju_band":
        occluder = zju_band_masks(full_masks, cfg.occluded_frames_fraction, cfg.band_width_fraction)
        if background is not None and cfg.band_fill == "background":
            fills, note = np.asarray(background), {"band_fill": "background (per-pixel median of the uncropped "
                                                                 "frames where the person does not cover the pixel)"}
        else:
            fill, note = band_fill(cfg.band_fill, images, full_masks)
            fills = np.broadcast_to(fill, images.shape)
        summary.update(note, band_width_fraction=cfg.band_width_fraction,
                       rule="ZJU-MoCap/OccNeRF protocol: vertical band over the central part of the "
                            "person's horizontal extent, full image height, in the first frames")
    elif cfg.kind == "object":
        if camera is None or person_centers is None:
            raise ValueError("simulated occlusion 'object' needs the camera and the person's centres")
        R = camera.R.double().numpy()
        t = camera.t.double().numpy()
        depth = (np.asarray(person_centers, np.float64) @ R.T + t)[:, 2]  # (T,) camera z of the person
        person_depth = np.where(full_masks, depth[:, None, None], np.inf).astype(np.float32)
        box = moving_box_occluder(camera, person_centers, person_depth, cfg.occluded_frames_fraction,
                                  seed=cfg.seed)
        occluder = box.mask
        fills = (np.clip(box.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        summary.update(seed=cfg.seed, rule="a wooden crate sliding across between camera and person "
                                           "(moving_box_occluder), drawn by the mesh rasterizer")
    else:
        raise ValueError(f"simulated occlusion: kind {cfg.kind!r} is not one of zju_band, object "
                         "('none' needs no call)")
    out = np.empty_like(images)
    visible = np.empty_like(full_masks)
    for i in range(T):
        out[i], visible[i] = apply_occlusion(images[i], full_masks[i], occluder[i], fills[i])
        if full_masks[i].any() and not visible[i].any():
            raise ValueError(f"simulated occlusion hides the whole person in frame {i}")
    occluded = occluder.reshape(T, -1).any(axis=1)
    person_px = full_masks.reshape(T, -1).sum(axis=1)
    hidden = (full_masks & occluder).reshape(T, -1).sum(axis=1) / np.maximum(person_px, 1)
    summary.update(occluded_frames=int(occluded.sum()),
                   hidden_fraction_mean=float(hidden[occluded].mean()) if occluded.any() else 0.0)
    return SimulatedOcclusion(out, visible, occluder, summary)


def occlude_sequence(root: str | os.PathLike, cfg: SimulatedOcclusionConfig, body_model=None) -> dict:
    """Simulated occlusion on an already written sequence folder (any source), in place.

    The folder's current frames and masks are taken as complete: they move to ``gt/images`` and
    ``gt/full_masks`` (with ``gt/occluder_masks``), and ``images/`` and ``masks/`` get the occluded
    frames and the visible masks. 'object' aims the crate at the bodies of ``metadata.json``, seen
    from the first frame's camera (``body_model`` needed).

    Raises:
        InputError: the folder already has ground truth (``gt/``), which would be overwritten.
    """
    seq = read_sequence(root)
    if seq.gt_root.exists():
        raise InputError(seq.gt_root, "the sequence already has ground truth; simulated occlusion would "
                                      "overwrite it")
    images = np.stack([seq.image(n) for n in seq.frames])
    masks = np.stack([seq.mask(n) for n in seq.frames])
    camera = centres = None
    if cfg.kind == "object":
        if body_model is None:
            raise ValueError("occlude_sequence: 'object' needs the body model (the crate aims at the body)")
        camera = seq.camera(seq.frames[0])
        params = seq.body_params()
        centres = pelvis_positions(body_model, params["poses"], params["betas"], params["trans"])
    occlusion = simulate_occlusion(images, masks, cfg, camera, centres)
    for t, name in enumerate(seq.frames):
        write_gt_frame(seq.root, name, images[t], masks[t], occlusion.occluder_masks[t])
        for folder, path, write, value in (("images", seq.image_path(name), io.write_image, occlusion.images[t]),
                                           ("masks", seq.mask_path(name), io.write_mask, occlusion.visible_masks[t])):
            target = seq.root / folder / f"{name}.png"
            write(target, value)
            if path != target and path.exists():  # a .jpg frame is replaced by the .png written
                path.unlink()
    info = dict(seq.info)
    info.update(occlusion=cfg.kind, occlusion_settings=occlusion.summary)
    io.write_json(seq.root / "info.json", info)
    return occlusion.summary


def pelvis_positions(body_model, poses, betas, trans) -> np.ndarray:
    """(T, 3) world pelvis of bodies poses (T, 72), betas (T, 10), trans (T, 3)."""
    import torch

    from occfusion_core.body.fit import JointsFK

    with torch.no_grad():
        joints, _ = JointsFK(body_model)(torch.as_tensor(np.asarray(poses), dtype=torch.float32),
                                         torch.as_tensor(np.asarray(betas), dtype=torch.float32),
                                         torch.as_tensor(np.asarray(trans), dtype=torch.float32))
    return joints[:, 0].double().numpy()
