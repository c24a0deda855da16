"""Stage export: the final avatar and its training data in standard formats (docs/exports.md).

Writes, per subject and variant::

    avatar_canonical.ply        the canonical (big-pose) Gaussians as a 3DGS PLY
    avatar_frame_<name>.ply     the Gaussians posed as in training frame <name>, in world space
    body_params.npz             per-frame SMPL parameters and cameras
    dataset/transforms.json     a nerfstudio / instant-ngp dataset of the training frames,
    dataset/images/, masks/     with the frames and their person masks
    summary.json                what was written, and from what

Everything runs on the CPU: no rendering, one deformation.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, ExportConfig
from ..gaussians.splat_ply import SplatPly, write_splat_ply
from ..io import InputError, atomic_dir, atomic_path, write_json, write_mask
from ..render.projection import polar_rotation, quats_wxyz_from_rotations
from ..render.sh import rotate_sh
from .trained_model import load_trained_model, training_body_params

log = logging.getLogger(__name__)

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Camera axes x right, y down, z forward (OpenCV, the project's) -> x right, y up, z back (OpenGL,
what nerfstudio and instant-ngp read)."""


# ------------------------------------------------------------------------------------- Gaussians


def active_sh(model) -> torch.Tensor:
    """(N, K, 3) the model's SH coefficients, K = (max_sh_degree + 1)², with the bands above the
    active degree set to zero: the renderer ignores them, a viewer would not."""
    sh = model.sh().detach().clone()
    sh[:, (model.active_sh_degree + 1) ** 2 :] = 0.0
    return sh


def canonical_splats(model) -> SplatPly:
    """The canonical (big-pose) Gaussians of a :class:`HumanGaussians`, exactly as stored.

    The model keeps colours as SH (``features_dc`` / ``features_rest``) and the other attributes
    before activation, as 3DGS does, so they are written unchanged."""
    return SplatPly(
        means=model.xyz.detach().cpu(),
        sh=active_sh(model).cpu(),
        opacity_logits=model.opacity.detach()[:, 0].cpu(),
        log_scales=model.scaling.detach().cpu(),
        quats=model.rotation.detach().cpu(),
    )


@torch.no_grad()
def posed_splats(model, poses: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor, sh_view_frame: str) -> SplatPly:
    """The Gaussians posed as the renderer poses them (``HumanGaussians.deform``), in world space.

    Centres are the deformed centres. Rotations and scales come from the eigendecomposition of the
    deformed covariances, so a 3DGS renderer draws the very same ellipsoids. Colours: a model trained
    with ``sh_view_frame: world`` evaluates its SH along world directions, as 3DGS does, so they are
    written as they are; with ``canonical`` it evaluates them along directions turned back into each
    Gaussian's canonical frame by its skinning transform, so the view-dependent bands are rotated
    by that transform's nearest rotation (exact for a rigidly moved Gaussian; a blend of bones that
    also stretches is approximated by its rotation). The DC term is never changed.

    Args:
        poses: (72,), betas: (10,), trans: (3,) one frame's body parameters.
        sh_view_frame: the model's ``OptimizeConfig.sh_view_frame``.
    """
    if sh_view_frame not in ("world", "canonical"):
        raise ValueError(f"sh_view_frame must be 'world' or 'canonical', got {sh_view_frame!r}")
    dev = model.xyz.device
    # fused=False: the torch reference of the same deformation, with no compiled extension to build
    deformed = model.deform(poses.to(dev), betas.to(dev), trans.to(dev), fused=False)
    covars = deformed.covars.double().cpu()
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (covars + covars.transpose(-1, -2)))
    # eigenvectors of either handedness: make them a rotation by flipping one axis where needed
    eigvecs[..., :, 0] *= torch.linalg.det(eigvecs).sign()[:, None]
    log_scales = 0.5 * eigvals.clamp_min(1e-30).log()
    sh = active_sh(model).cpu()
    if sh_view_frame == "canonical":
        sh = rotate_sh(sh, polar_rotation(deformed.transforms.double().cpu()))
    return SplatPly(
        means=deformed.means.cpu(),
        sh=sh,
        opacity_logits=model.opacity.detach()[:, 0].cpu(),
        log_scales=log_scales,
        quats=quats_wxyz_from_rotations(eigvecs),
    )


# ------------------------------------------------------------------------------------- cameras


def opengl_camera_to_world(w2c: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV world-to-camera -> (4, 4) camera-to-world with OpenGL camera axes (the
    ``transform_matrix`` of nerfstudio and instant-ngp)."""
    w2c = np.asarray(w2c, dtype=np.float64)
    rotation, translation = w2c[:3, :3], w2c[:3, 3]
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T  # rigid (checked when the sequence was validated): inverse = transpose
    c2w[:3, 3] = -rotation.T @ translation
    return c2w @ OPENCV_TO_OPENGL


def intrinsics_entry(K: np.ndarray, where: Path, frame: str) -> dict:
    """The OPENCV camera's pinhole part of K (no skew: the model has none) and zero distortion."""
    K = np.asarray(K, dtype=np.float64)
    if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]):
        raise InputError(
            where,
            f"frame '{frame}': intrinsics with skew K[0][1] = {K[0, 1]}, which the OPENCV "
            "camera model of transforms.json cannot express",
        )
    return {
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
    }


# ------------------------------------------------------------------------------------- files


def posed_frame_index(cfg: ExportConfig, num_frames: int) -> int:
    """The training frame shown by the posed PLY: ``cfg.posed_frame_index``, else the middle one."""
    if cfg.posed_frame_index is None:
        return num_frames // 2
    if not 0 <= cfg.posed_frame_index < num_frames:
        raise ConfigError(
            f"export.posed_frame_index: {cfg.posed_frame_index} is not a training frame "
            f"(the sequence has {num_frames}: 0..{num_frames - 1})"
        )
    return cfg.posed_frame_index


def write_body_params(path: Path, frames: list[str], params: dict, cameras: list, source: str) -> None:
    """``body_params.npz``: SMPL layout, one row per training frame (see docs/exports.md)."""
    w2c = np.stack([c.w2c.double().numpy() for c in cameras])
    arrays = {
        "frames": np.asarray(frames),
        "poses": params["poses"].numpy().astype(np.float32),  # (T, 72) axis-angle, root first
        "betas": params["betas"].numpy().astype(np.float32),  # (T, 10): per frame (refined shape may differ)
        "trans": params["trans"].numpy().astype(np.float32),  # (T, 3)
        "K": np.stack([c.K.double().numpy() for c in cameras]),  # (T, 3, 3)
        "w2c": w2c,  # (T, 4, 4) OpenCV world-to-camera
        "R": w2c[:, :3, :3],  # (T, 3, 3)
        "T": w2c[:, :3, 3],  # (T, 3)
        "width": np.asarray(cameras[0].width),
        "height": np.asarray(cameras[0].height),
        "source": np.asarray(source),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_nerf_dataset(
    out: Path, seq, params: dict, cameras: list, source: str, body_params_file: str = "../body_params.npz"
) -> dict:
    """``out/transforms.json`` with ``out/images/`` (the frames, copied) and ``out/masks/`` (the
    visible-person masks, 0/255 single channel); returns the transforms dict."""
    from ..data.sequence import image_size

    height, width = seq.size
    metadata = seq.root / "metadata.json"
    intrinsics = [intrinsics_entry(c.K.numpy(), metadata, name) for name, c in zip(seq.frames, cameras)]
    shared = all(entry == intrinsics[0] for entry in intrinsics)
    frames = []
    for t, (name, camera) in enumerate(zip(seq.frames, cameras)):
        image_src = seq.image_path(name)
        if image_size(image_src) != (height, width):
            raise InputError(image_src, f"size {image_size(image_src)} differs from the sequence's {(height, width)}")
        image_rel = f"images/{name}{image_src.suffix.lower()}"
        (out / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_src, out / image_rel)
        mask = seq.mask(name)
        if mask.shape != (height, width):
            raise InputError(seq.mask_path(name), f"mask size {mask.shape} differs from the frame's {(height, width)}")
        mask_rel = f"masks/{name}.png"
        write_mask(out / mask_rel, mask)
        frame = {
            "file_path": image_rel,
            "mask_path": mask_rel,
            "transform_matrix": opengl_camera_to_world(camera.w2c.numpy()).tolist(),
            "frame_name": name,
            "smpl_params": {key: params[key][t].tolist() for key in ("poses", "betas", "trans")},
        }
        if not shared:
            frame.update(intrinsics[t])
        frames.append(frame)
    transforms = {
        "camera_model": "OPENCV",
        "w": width,
        "h": height,
        **(intrinsics[0] if shared else {}),
        "frames": frames,
        "body_params": body_params_file,
        "body_params_source": source,
        "world": "SMPL world, metres, +y up; transform_matrix: camera-to-world, OpenGL camera axes",
        "masks": "255 = visible person (masks of the input: occluded parts are 0)",
    }
    write_json(out / "transforms.json", transforms)
    return transforms


def export_all(data_dir, model_path, body_model_path, cfg: ExportConfig, out_dir) -> dict:
    """Write every export of a trained model into ``out_dir`` (replaced whole, atomically).

    Args:
        data_dir: the sequence the model was trained on.
        model_path: a stage's ``model.pt``.
        body_model_path: the body model the model was trained with.

    Returns:
        the summary (also written as ``summary.json``).

    Raises:
        InputError: naming the file that is missing or does not fit (the model and the body model,
            the model and the sequence's frames).
        ConfigError: ``cfg.posed_frame_index`` is not a frame.
    """
    from ..body.model import load_body_model
    from ..data.sequence import read_sequence

    device = torch.device("cpu")
    seq = read_sequence(data_dir)
    body = load_body_model(body_model_path).to(device)
    try:
        model, saved = load_trained_model(model_path, body, device)
    except (KeyError, TypeError) as err:
        raise InputError(model_path, f"not a stage's model.pt (no {err})") from err
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(model_path, f"does not fit the body model {body_model_path}: {err}") from err
    try:
        params, source = training_body_params(seq, saved)
    except ValueError as err:
        raise InputError(model_path, f"does not fit the sequence {data_dir}: {err}") from err
    view_frame = saved.get("config", {}).get("sh_view_frame", "world")  # as the render stage reads it
    index = posed_frame_index(cfg, len(seq.frames))
    posed_name = seq.frames[index]
    cameras = [seq.camera(name) for name in seq.frames]

    with atomic_dir(out_dir) as tmp:
        canonical = canonical_splats(model)
        write_splat_ply(tmp / "avatar_canonical.ply", canonical)
        posed = posed_splats(model, params["poses"][index], params["betas"][index], params["trans"][index], view_frame)
        write_splat_ply(tmp / f"avatar_frame_{posed_name}.ply", posed)
        write_body_params(tmp / "body_params.npz", seq.frames, params, cameras, source)
        write_nerf_dataset(tmp / "dataset", seq, params, cameras, source)
        summary = {
            "model": str(model_path),
            "data": str(data_dir),
            "gaussians": canonical.num_gaussians,
            "sh_degree": model.max_sh_degree,
            "active_sh_degree": model.active_sh_degree,
            "sh_view_frame": view_frame,
            "posed_frame": posed_name,
            "posed_frame_index": index,
            "frames": len(seq.frames),
            "body_params": source,
            "files": sorted(str(p.relative_to(tmp)) for p in tmp.iterdir()),
        }
        write_json(tmp / "summary.json", summary)
    log.info("export: %s", summary)
    return summary
