"""ZJU-MoCap (refined layout of Instant-NVR / GauHuman) -> the sequence format, with the OccNeRF /
OccFusion simulated occlusion on the training frames and the other cameras as held-out views.

Input folder (``cfg.path``)::

    annots.npy             {'cams': {'K', 'D', 'R', 'T'} lists over cameras (T in millimetres),
                            'ims': [{'ims': [image path per camera]} per frame]}
    <camera folders>/...jpg   the paths listed in annots (relative to the folder)
    mask/... .png          at the image path with 'images' -> 'mask' and .jpg -> .png (or 'mask_cihp')
    smpl_params/<i>.npy    {'Rh' (1, 3), 'Th' (1, 3), 'shapes' (1, 10), 'poses' (1, 72)}, i = the image's
                           frame number (or ``params/``)

Conventions converted here (the usual sources of all-black renders):

- ZJU's body: ``V = R(Rh) @ SMPL(poses, shapes) + Th``, the rotation about the world origin. Ours
  (OcMotion's): ``V = SMPL(poses', betas) + trans`` with ``poses'[:3]`` rotating about the pelvis
  joint. So ``poses'[:3] = R(Rh) R(poses[:3])`` and ``trans = Th + R(Rh) J0 - J0``, J0 the shaped
  rest pelvis of the body model (:func:`zju_to_smpl`).
- Camera translation T is in millimetres: divided by 1000. ``[R | T]`` is world-to-camera.
- K is OpenCV's (pixel centres at integer coordinates); this project puts them at +0.5, so cx, cy
  gain 0.5, then K scales with ``image_scaling``. Images and masks are undistorted with D first.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
from scipy.spatial.transform import Rotation

from occfusion_core.data.occlusion import BAND_FILLS, apply_occlusion, band_fill
from occfusion_core.data.sequence import FrameMeta, write_gt_frame, write_heldout, write_sequence
from occfusion_core.data.source_configs import ZJUConfig
from occfusion_core.imaging import resize
from occfusion_core.io import InputError
from occfusion_core.render.camera import Camera

log = logging.getLogger(__name__)

ZJU_OCCLUSION = {
    "377": {"range": 456, "mid": 460, "width": 70},
    "386": {"range": 432, "mid": 415, "width": 80},
    "387": {"range": 432, "mid": 451, "width": 66},
    "392": {"range": 444, "mid": 417, "width": 78},
    "393": {"range": 526, "mid": 434, "width": 68},
    "394": {"range": 380, "mid": 423, "width": 64},
}
"""OccNeRF's per-subject band (OccNeRF's released code, configs/occnerf/zju_mocap/<id>/occnerf.yaml):
frames with index below 'range' (80 % of the subject's frames) lose the columns
[mid - width//2, mid + width//2) of full-resolution (1024 px) pixels. OccFusion's own loader
(``scene/dataset_readers.py``) has 387 at mid 448, width 50, and 394 at mid 418."""

ZJU_MM_PER_M = 1000.0


def subject_id(path: str | os.PathLike) -> str:
    """'my_377' / 'CoreView_377' / '377' -> '377' (the last '_'-separated token of the folder name)."""
    return Path(path).resolve().name.split("_")[-1]


def rest_pelvis(body, betas: np.ndarray) -> np.ndarray:
    """(3,) pelvis joint of the shaped rest body: J_regressor[0] @ (v_template + shapedirs betas)."""
    b = torch.as_tensor(np.asarray(betas, np.float64).reshape(1, -1)[:, :10], dtype=torch.float32)
    with torch.no_grad():
        v_shaped = body.v_template + torch.einsum("vcb,nb->nvc", body.shapedirs, b)[0]
        return (body.J_regressor[0] @ v_shaped).double().numpy()


def zju_to_smpl(Rh: np.ndarray, Th: np.ndarray, poses: np.ndarray, pelvis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ZJU's (Rh, Th, poses) -> our (poses (72,), trans (3,)).

    ZJU: ``V = R(Rh) (R0 (u - J0) + J0) + Th`` where R0 = R(poses[:3]) turns about the pelvis J0 and
    u are the vertices posed below the root. Ours: ``V = R_g (u - J0) + J0 + trans``. Equal when
    ``R_g = R(Rh) R0`` and ``trans = Th + R(Rh) J0 - J0``.

    Args:
        Rh, Th: (3,) axis-angle and translation (metres); poses: (72,); pelvis: (3,) J0.
    """
    R_h = Rotation.from_rotvec(np.asarray(Rh, np.float64).reshape(3))
    out = np.asarray(poses, np.float64).reshape(72).copy()
    out[:3] = (R_h * Rotation.from_rotvec(out[:3])).as_rotvec()
    J0 = np.asarray(pelvis, np.float64).reshape(3)
    trans = np.asarray(Th, np.float64).reshape(3) + R_h.apply(J0) - J0
    return out, trans


def undistort(image: np.ndarray, K: np.ndarray, D: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Undo lens distortion (OpenCV's k1, k2, p1, p2[, k3] model), keeping K (like ``cv2.undistort``).

    Args:
        image: (H, W, C) or (H, W) array.
        K: (3, 3) OpenCV intrinsics (pixel centres at integer coordinates).
        D: (4,) or (5,) (or (5, 1)) distortion coefficients.
        nearest: nearest-neighbour sampling (masks) instead of bilinear.

    Returns:
        Same shape and dtype; pixels that map outside the source are 0.
    """
    D = np.zeros(5) if D is None else np.asarray(D, np.float64).ravel()
    if not np.any(D):
        return image
    k1, k2, p1, p2 = D[:4]
    k3 = D[4] if D.size > 4 else 0.0
    H, W = image.shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    x, y = (cols - cx) / fx, (rows - cy) / fy
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    src = np.stack([fy * yd + cy, fx * xd + cx])  # (2, H, W): source row, column
    order = 0 if nearest else 1
    channels = image[..., None] if image.ndim == 2 else image
    out = np.stack([ndi.map_coordinates(channels[..., c].astype(np.float32), src, order=order, cval=0.0)
                    for c in range(channels.shape[2])], axis=-1)
    if image.dtype == np.uint8:
        out = np.clip(out + (0.0 if nearest else 0.5), 0, 255)
    out = out.astype(image.dtype)
    return out[..., 0] if image.ndim == 2 else out


def band_columns(width: int, scaling: float, mid_px: float, width_px: float) -> np.ndarray:
    """(width,) bool: columns of the scaled image whose centre lies in the full-resolution band
    [mid - width//2, mid + width//2) (OccNeRF's slice)."""
    half = int(width_px) // 2
    lo, hi = mid_px - half, mid_px + half
    centres = (np.arange(width) + 0.5) / scaling
    return (centres >= lo) & (centres < hi)


class _ZJUFolder:
    """Reads one subject folder; every problem is an InputError naming the file."""

    def __init__(self, root: Path):
        self.root = root
        path = root / "annots.npy"
        if not path.is_file():
            raise InputError(path, "file is missing (is this a refined ZJU-MoCap subject folder?)")
        try:
            annots = np.load(path, allow_pickle=True).item()
        except Exception as err:  # noqa: BLE001 - a foreign or truncated file
            raise InputError(path, f"cannot read annots.npy ({type(err).__name__}: {err})") from err
        if not isinstance(annots, dict) or "cams" not in annots or "ims" not in annots:
            raise InputError(path, "expected a dict with keys 'cams' and 'ims'")
        cams = annots["cams"]
        missing = [k for k in ("K", "R", "T") if k not in cams]
        if missing:
            raise InputError(path, f"'cams' has no key(s) {missing}")
        self.K = [np.asarray(k, np.float64).reshape(3, 3) for k in cams["K"]]
        self.R = [np.asarray(r, np.float64).reshape(3, 3) for r in cams["R"]]
        self.T_mm = [np.asarray(t, np.float64).reshape(3) for t in cams["T"]]
        self.D = [np.asarray(d, np.float64).ravel() for d in cams.get("D", [np.zeros(5)] * len(self.K))]
        self.num_cameras = len(self.K)
        self.ims = [[str(p).replace("\\", "/") for p in entry["ims"]] for entry in annots["ims"]]
        self.annots_path = path
        for folder in ("smpl_params", "params"):
            if (root / folder).is_dir():
                self.params_dir = root / folder
                break
        else:
            raise InputError(root / "smpl_params", "folder is missing (ZJU SMPL parameters, <i>.npy)")

    def image_rel(self, frame: int, camera: int) -> str:
        if frame >= len(self.ims):
            raise InputError(self.annots_path, f"frame {frame} requested, annots has {len(self.ims)} frames")
        if camera >= len(self.ims[frame]):
            raise InputError(self.annots_path, f"camera {camera} requested, frame {frame} lists "
                                               f"{len(self.ims[frame])} images")
        return self.ims[frame][camera]

    def frame_number(self, frame: int, camera: int) -> int:
        """The number of the SMPL parameter file: the image's file number (GauHuman), else the index."""
        stem = Path(self.image_rel(frame, camera)).stem
        return int(stem) if stem.isdigit() else frame

    def image(self, frame: int, camera: int) -> np.ndarray:
        from occfusion_core.io import read_image

        return read_image(self.root / self.image_rel(frame, camera))

    def mask(self, frame: int, camera: int) -> np.ndarray:
        from PIL import Image

        rel = self.image_rel(frame, camera)
        stem = re.sub(r"\.(jpg|jpeg|png)$", ".png", rel, flags=re.IGNORECASE)
        candidates = [stem.replace("images", folder, 1) if "images" in stem else f"{folder}/{stem}"
                      for folder in ("mask", "mask_cihp")]
        for cand in candidates:
            path = self.root / cand
            if path.is_file():
                with Image.open(path) as im:
                    arr = np.asarray(im)
                # 0/1, 0/255 or part labels: anything non-zero is the person
                return (arr[..., 0] if arr.ndim == 3 else arr) != 0
        raise InputError(self.root / candidates[0], f"mask file is missing for image {rel}")

    def smpl(self, frame: int, camera: int) -> dict:
        number = self.frame_number(frame, camera)
        path = self.params_dir / f"{number}.npy"
        if not path.is_file():
            raise InputError(path, f"SMPL parameter file is missing for frame {frame}")
        try:
            params = np.load(path, allow_pickle=True).item()
        except Exception as err:  # noqa: BLE001
            raise InputError(path, f"cannot read SMPL parameters ({type(err).__name__}: {err})") from err
        missing = [k for k in ("Rh", "Th", "shapes", "poses") if k not in params]
        if missing:
            raise InputError(path, f"no key(s) {missing} (expected Rh, Th, shapes, poses)")
        out = {k: np.asarray(params[k], np.float64).ravel() for k in ("Rh", "Th", "shapes", "poses")}
        if out["poses"].size != 72 or out["Rh"].size != 3 or out["Th"].size != 3 or out["shapes"].size < 10:
            raise InputError(path, "expected Rh (1, 3), Th (1, 3), shapes (1, 10), poses (1, 72); got "
                                   + ", ".join(f"{k} {v.size} values" for k, v in out.items()))
        out["shapes"] = out["shapes"][:10]
        return out

    def camera(self, camera: int, scaling: float, size: tuple[int, int]) -> Camera:
        """Our Camera of ZJU camera ``camera`` at ``scaling`` (size = scaled (width, height))."""
        K = self.K[camera].copy()
        K[0, 2] += 0.5  # OpenCV pixel centres at integers -> this project's at +0.5
        K[1, 2] += 0.5
        K[:2] *= scaling
        w2c = np.eye(4)
        w2c[:3, :3] = self.R[camera]
        w2c[:3, 3] = self.T_mm[camera] / ZJU_MM_PER_M
        return Camera(torch.tensor(K), torch.tensor(w2c), size[0], size[1])


def _load_view(folder: _ZJUFolder, frame: int, camera: int, cfg: ZJUConfig) -> tuple[np.ndarray, np.ndarray]:
    """Undistorted, scaled (image uint8 (h, w, 3), mask bool (h, w)) of one frame in one camera."""
    image = folder.image(frame, camera)
    mask = folder.mask(frame, camera)
    if mask.shape != image.shape[:2]:
        raise InputError(folder.root / folder.image_rel(frame, camera),
                         f"mask is {mask.shape[::-1]} (w, h) but the image is {image.shape[1::-1]}")
    if cfg.undistort:
        image = undistort(image, folder.K[camera], folder.D[camera])
        mask = undistort(mask.astype(np.uint8), folder.K[camera], folder.D[camera], nearest=True) > 0
    H, W = mask.shape
    size = (max(1, round(W * cfg.image_scaling)), max(1, round(H * cfg.image_scaling)))
    return resize(image, size, "box"), resize(mask, size, "box")


def prepare_zju(root: str | os.PathLike, out_dir: str | os.PathLike, cfg: ZJUConfig, body_model) -> dict:
    """A refined ZJU-MoCap subject -> sequence folder ``out_dir`` (training camera, occluded training
    frames, ``gt/`` with unoccluded frames, full masks, occluder masks and held-out views).

    Args:
        root: the subject folder (``cfg.path``).
        out_dir: the sequence folder to write.
        cfg: :class:`~occfusion_core.data.source_configs.ZJUConfig`.
        body_model: body model whose rest pelvis converts Th (use the SMPL model ZJU was fitted with).

    Returns:
        Summary: frames, views, occlusion.
    """
    start = time.time()
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "ZJU-MoCap subject folder is missing")
    if cfg.occlusion not in ("zju_band", "none"):
        raise ValueError(f"zju.occlusion: {cfg.occlusion!r} is not 'zju_band' or 'none'")
    if cfg.occluded_frames not in ("fraction", "subject_range"):
        raise ValueError(f"zju.occluded_frames: {cfg.occluded_frames!r} is not 'fraction' or 'subject_range'")
    if cfg.band_fill not in BAND_FILLS:
        raise ValueError(f"zju.band_fill: {cfg.band_fill!r} is not one of {', '.join(BAND_FILLS)}")
    if not 0.0 < cfg.image_scaling <= 1.0:
        raise ValueError(f"zju.image_scaling must be in (0, 1], got {cfg.image_scaling}")
    folder = _ZJUFolder(root)
    if not 0 <= cfg.camera < folder.num_cameras:
        raise ValueError(f"zju.camera {cfg.camera} is not one of the {folder.num_cameras} cameras")
    frames = list(range(cfg.frame_start, min(cfg.frame_stop, len(folder.ims)), cfg.frame_stride))
    if not frames:
        raise InputError(folder.annots_path, f"no training frame in range({cfg.frame_start}, {cfg.frame_stop}, "
                                             f"{cfg.frame_stride}); annots has {len(folder.ims)} frames")
    subject = str(cfg.subject) if cfg.subject is not None else subject_id(root)

    # Training camera: unoccluded frames and full masks (the ground truth), body parameters.
    views = [_load_view(folder, f, cfg.camera, cfg) for f in frames]
    images = np.stack([v[0] for v in views])
    full_masks = np.stack([v[1] for v in views])
    empty = [f for f, m in zip(frames, full_masks) if not m.any()]
    if empty:
        raise InputError(root, f"the mask of frame(s) {empty[:8]} in camera {cfg.camera} is empty")
    T, h, w = full_masks.shape
    camera = folder.camera(cfg.camera, cfg.image_scaling, (w, h))
    names = [f"{f:05d}" for f in frames]
    metas = []
    for f in frames:
        p = folder.smpl(f, cfg.camera)
        poses, trans = zju_to_smpl(p["Rh"], p["Th"], p["poses"], rest_pelvis(body_model, p["shapes"]))
        metas.append(FrameMeta(poses, p["shapes"], trans, camera.K.double().numpy(), camera.w2c.double().numpy()))

    # Occlusion of the training frames.
    occluder = np.zeros_like(full_masks)
    occlusion_summary = None
    if cfg.occlusion == "zju_band":
        table = ZJU_OCCLUSION.get(subject)
        mid = cfg.band_mid_px if cfg.band_mid_px is not None else (table or {}).get("mid")
        width = cfg.band_width_px if cfg.band_width_px is not None else (table or {}).get("width")
        if mid is None or width is None:
            raise ValueError(f"zju: subject '{subject}' has no occlusion settings (known: "
                             f"{', '.join(ZJU_OCCLUSION)}); set zju.band_mid_px and zju.band_width_px")
        if cfg.occluded_frames == "fraction":
            n_occ = min(T, int(math.floor(cfg.occluded_frames_fraction * T + 0.5)))
            occluded = np.arange(T) < n_occ
            rule = f"first {n_occ} of {T} training frames ({cfg.occluded_frames_fraction:g}, OccFusion)"
        else:
            if table is None:
                raise ValueError(f"zju: occluded_frames 'subject_range' needs a known subject, not '{subject}'")
            occluded = np.asarray(frames) < table["range"]
            rule = f"training frames with index < {table['range']} (OccNeRF's range for {subject})"
        columns = band_columns(w, cfg.image_scaling, mid, width)
        occluder[occluded] = columns[None, None, :]
        fill, note = band_fill(cfg.band_fill, images, full_masks)
        train_images = np.empty_like(images)
        visible = np.empty_like(full_masks)
        for t in range(T):
            train_images[t], visible[t] = apply_occlusion(images[t], full_masks[t], occluder[t], fill)
            if not visible[t].any():
                raise ValueError(f"zju: the band hides the whole person in frame {frames[t]}")
        hidden = (full_masks & occluder).reshape(T, -1).sum(1) / full_masks.reshape(T, -1).sum(1)
        occlusion_summary = {
            "kind": "zju_band", "subject": subject, "band_mid_px_full_res": mid, "band_width_px_full_res": width,
            "band_columns_scaled": [int(np.flatnonzero(columns)[0]), int(np.flatnonzero(columns)[-1]) + 1]
            if columns.any() else None,
            "occluded_frames": int(occluded.sum()), "frames_rule": rule, **note,
            "hidden_fraction_mean": float(hidden[occluded].mean()) if occluded.any() else 0.0,
            "settings_from": "config" if cfg.band_mid_px is not None or cfg.band_width_px is not None
            else "OccNeRF configs/occnerf/zju_mocap/<id>/occnerf.yaml",
        }
    else:
        train_images, visible = images, full_masks

    # Held-out views: the other cameras on every heldout_frame_stride-th frame that is trained on.
    others = [c for c in range(folder.num_cameras) if c != cfg.camera]
    if cfg.heldout_views is not None:
        others = others[:cfg.heldout_views]
    heldout_frames = [(t, f) for t, f in enumerate(frames)
                      if f % cfg.heldout_frame_stride == 0 and f < cfg.heldout_frame_stop]
    cameras, heldout = {}, {}
    for c in others if heldout_frames else []:
        view = f"cam{c:02d}"
        shots = []
        for t, f in heldout_frames:
            image, mask = _load_view(folder, f, c, cfg)
            shots.append((names[t], image, mask))
        cameras[view] = folder.camera(c, cfg.image_scaling, (shots[0][1].shape[1], shots[0][1].shape[0]))
        heldout[view] = shots

    info = {
        "source": "zju",
        "subject": subject,
        "path": str(root),
        "width": w,
        "height": h,
        "fps": 50.0 / cfg.frame_stride,  # ZJU-MoCap is captured at 50 fps
        "training_camera": cfg.camera,
        "frames": frames,
        "image_scaling": cfg.image_scaling,
        "undistorted": bool(cfg.undistort),
        "camera_units": "annots T in millimetres, divided by 1000; [R | T] is world-to-camera; K's "
                        "principal point +0.5 px (OpenCV pixel centres -> this project's)",
        "smpl": f"from {folder.params_dir.name}/<i>.npy; poses[:3] = R(Rh) R(poses[:3]), trans = Th + "
                "R(Rh) J0 - J0 with J0 the shaped rest pelvis of the body model",
        "body_model": "proxy" if getattr(body_model, "is_proxy", False) else str(getattr(body_model, "name", "smpl")),
        "masks": "mask/ (or mask_cihp/) png, non-zero = person; scaled by area, > half covered",
        "occlusion": cfg.occlusion,
        "occlusion_settings": occlusion_summary,
        "heldout": {"cameras": [int(c) for c in others] if heldout_frames else [],
                    "frames": [f for _, f in heldout_frames]},
        "config": asdict(cfg),
    }
    write_sequence(out_dir, ((names[t], train_images[t], visible[t], metas[t]) for t in range(T)), info)
    for t in range(T):
        write_gt_frame(out_dir, names[t], images[t], full_masks[t],
                       occluder[t] if cfg.occlusion != "none" else None)
    if cameras:
        write_heldout(out_dir, cameras, heldout)
    summary = {"frames": T, "width": w, "height": h, "heldout_views": len(cameras),
               "heldout_frames": len(heldout_frames), "occlusion": occlusion_summary,
               "seconds": round(time.time() - start, 1)}
    log.info("zju %s: %s", subject, summary)
    return summary
