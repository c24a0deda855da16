"""The embedded synthetic subject: a dressed body walking and turning, seen by one static camera and
partly hidden, with ground truth for everything hidden.

The body (proxy or real SMPL, through :class:`occfusion_core.body.model.BodyModel`) wears the
procedural clothing of :mod:`occfusion_core.data.texture`, moves with
:func:`occfusion_core.data.motion.walk_turn` and is drawn with the z-buffer mesh rasterizer -- never
with the Gaussian rasterizer whose model is later fitted to these frames. The background is a round
studio (tiled floor, panelled cylindrical wall, ray-cast per pixel, so it is consistent from every
view) or a plain colour.

Output layout (see :func:`generate_synthetic_subject`) is the project's sequence format plus ``gt/``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from occfusion_core import io
from occfusion_core.config import SyntheticConfig, to_dict
from occfusion_core.data.clothing import clothing_description, clothing_offsets, dress
from occfusion_core.data.motion import ground_trans, walk_turn
from occfusion_core.data.occlusion import apply_occlusion, moving_box_occluder, occluded_frame_count, zju_band_masks
from occfusion_core.data.texture import BodyTexture
from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at, orbit_cameras
from occfusion_core.render.mesh import pixel_ray_directions

FPS = 15
OCCLUSIONS = ("zju_band", "object", "person", "none")
BACKGROUNDS = ("studio", "white", "black")
SHADING = 0.25
"""Lambertian shading strength of the body (0 = flat albedo)."""
_STUDIO_WALL_HEIGHT = 6.0


def frame_name(index: int) -> str:
    """File stem of frame ``index``: 00000, 00001, ..."""
    return f"{index:05d}"


def heldout_azimuths(views: int) -> list[float]:
    """Azimuths (degrees) of ``views`` held-out cameras, evenly spaced, the training azimuth 0 excluded."""
    return [360.0 * k / (views + 1) for k in range(1, views + 1)]


def view_name(azimuth_deg: float) -> str:
    """Name of the held-out view at ``azimuth_deg``: view072, view144, ..."""
    return f"view{int(round(azimuth_deg)) % 360:03d}"


def studio_background(camera: Camera, floor_y: float, center_xz, radius: float) -> np.ndarray:
    """A round studio seen from ``camera``: a tiled floor and a panelled cylindrical wall.

    Ray-cast analytically per pixel centre (no tessellation), so floor and wall are exact from every
    view. The camera must stand inside the room.

    Args:
        camera: the view.
        floor_y: world height of the floor (SMPL world: y up).
        center_xz: (2,) axis of the cylindrical wall on the floor.
        radius: wall radius, metres.

    Returns:
        (H, W, 3) float32 RGB in [0, 1].
    """
    d = pixel_ray_directions(camera).double().numpy()  # (H, W, 3)
    o = camera.center.double().numpy()
    cx, cz = float(center_xz[0]), float(center_xz[1])
    ox, oz = o[0] - cx, o[2] - cz
    if ox * ox + oz * oz >= radius * radius:
        raise ValueError("studio_background: the camera stands outside the studio wall")
    # Wall: the ray leaves the cylinder at the larger root of |o + t d|^2 = R^2 (x-z plane).
    a = np.maximum(d[..., 0] ** 2 + d[..., 2] ** 2, 1e-12)
    b = 2.0 * (ox * d[..., 0] + oz * d[..., 2])
    c = ox * ox + oz * oz - radius * radius
    t_wall = (-b + np.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[..., 1] < 0, (floor_y - o[1]) / d[..., 1], np.inf)
    on_floor = t_floor < t_wall

    rgb = np.zeros(d.shape, dtype=np.float64)
    # Floor: 0.75 m tiles in two wood tones with dark grout.
    fx = o[0] + t_floor * d[..., 0]
    fz = o[2] + t_floor * d[..., 2]
    with np.errstate(invalid="ignore"):
        tile = (np.floor(fx / 0.75) + np.floor(fz / 0.75)) % 2 == 0
        grout = (np.mod(fx, 0.75) < 0.02) | (np.mod(fz, 0.75) < 0.02)
    floor = np.where(tile[..., None], [0.63, 0.53, 0.41], [0.52, 0.42, 0.32])
    floor = np.where(grout[..., None], [0.33, 0.28, 0.23], floor)
    # Wall: panels 0.9 m wide along the arc, skirting board, dado rail, lighter upper wall; ceiling.
    wy = o[1] + t_wall * d[..., 1] - floor_y
    arc = radius * (np.arctan2(o[0] + t_wall * d[..., 0] - cx, o[2] + t_wall * d[..., 2] - cz) + math.pi)
    wall = np.where((wy < 0.95)[..., None], [0.56, 0.62, 0.66], [0.68, 0.75, 0.79])
    wall = np.where((np.mod(arc, 0.9) < 0.03)[..., None], wall * 0.82, wall)
    wall = np.where(((wy > 0.95) & (wy < 1.03))[..., None], [0.45, 0.50, 0.58], wall)
    wall = np.where((wy < 0.12)[..., None], [0.30, 0.29, 0.28], wall)
    wall = np.where((wy > _STUDIO_WALL_HEIGHT)[..., None], [0.90, 0.90, 0.88], wall)
    rgb = np.where(on_floor[..., None], floor, wall)
    return rgb.astype(np.float32)


def background_image(kind: str, camera: Camera, floor_y: float, center_xz, radius: float) -> np.ndarray:
    """(H, W, 3) float32 background for ``kind`` in {'studio', 'white', 'black'}."""
    if kind == "studio":
        return studio_background(camera, floor_y, center_xz, radius)
    value = {"white": 1.0, "black": 0.0}[kind]
    return np.full((camera.height, camera.width, 3), value, dtype=np.float32)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float,
                     correlation_frames: float) -> np.ndarray:
    """Stationary AR(1) noise along axis 0 (time) with per-element std ``std``.

    e[0] ~ N(0, std^2), e[t] = rho e[t-1] + sqrt(1 - rho^2) N(0, std^2), rho = exp(-1 / correlation_frames)
    (0 frames: independent samples).
    """
    white = rng.normal(size=shape) * std
    if correlation_frames <= 0 or shape[0] < 2:
        return white
    rho = math.exp(-1.0 / correlation_frames)
    out = np.empty_like(white)
    out[0] = white[0]
    scale = math.sqrt(1.0 - rho * rho)
    for t in range(1, shape[0]):
        out[t] = rho * out[t - 1] + scale * white[t]
    return out


def add_pose_noise(poses: np.ndarray, trans: np.ndarray, pose_noise_deg: float, trans_noise_m: float,
                   seed: int, correlation_frames: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Perturb body parameters as a pose estimator would.

    Every joint rotation (global orientation included) is composed with an error rotation whose
    rotation-vector components have std ``pose_noise_deg``; translations get errors of std
    ``trans_noise_m`` per axis. Both follow :func:`correlated_noise` in time. Zero std returns exact
    copies.

    Args:
        poses: (T, 72) axis-angle; trans: (T, 3).
    Returns:
        (noisy poses (T, 72), noisy trans (T, 3)), float64.
    """
    rng = np.random.default_rng([seed, 0x5EED])  # a stream separate from the motion's
    pose_eps = correlated_noise(rng, poses.shape, math.radians(pose_noise_deg), correlation_frames)
    trans_eps = correlated_noise(rng, trans.shape, trans_noise_m, correlation_frames)
    noisy_poses = np.array(poses, dtype=np.float64, copy=True)
    if pose_noise_deg > 0:
        clean = Rotation.from_rotvec(noisy_poses.reshape(-1, 3))
        noisy_poses = (clean * Rotation.from_rotvec(pose_eps.reshape(-1, 3))).as_rotvec().reshape(poses.shape)
    noisy_trans = np.array(trans, dtype=np.float64, copy=True)
    if trans_noise_m > 0:
        noisy_trans += trans_eps
    return noisy_poses, noisy_trans


def person_shape(betas_std: float, betas_noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The person's true shape and the estimate of it written to metadata.

    Returns:
        (true betas (10,), estimated betas (10,)), float64; zero stds give zeros / the true shape.
    """
    rng = np.random.default_rng([seed, 0xB37A])
    true = rng.normal(size=10) * betas_std
    return true, true + rng.normal(size=10) * betas_noise


def other_person_passing(body_model, faces, camera: Camera, background_fine: np.ndarray, supersample: int,
                         target: np.ndarray, floor_y: float, camera_distance: float, frames: int,
                         fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A second person (other shape, other clothes) walking across the view, a metre in front of the
    subject, during the first ``fraction`` of the frames: entering on one side, leaving on the other.

    Returns:
        (occluder masks (T, H, W) bool: the pixels the second person covers, their colours
        (T, H, W, 3) float32).
    """
    from occfusion_core.data.texture import OTHER_PERSON_PALETTE

    H, W = camera.height, camera.width
    texture = BodyTexture.from_body_model(body_model, OTHER_PERSON_PALETTE)
    n = occluded_frame_count(frames, fraction)
    poses, trans = walk_turn(frames, turns=0.0, seed=seed + 7)
    direction = 1.0 if np.random.default_rng([seed, 0xB1]).random() < 0.5 else -1.0
    heading = Rotation.from_euler("y", 90.0 * direction, degrees=True)
    poses[:, :3] = (heading * Rotation.from_rotvec(poses[:, :3])).as_rotvec()
    betas = np.tile([1.2, 0.3, 0.6, 0.5, 0.0, 0.4, 0, 0, 0, 0], (frames, 1))
    trans = ground_trans(body_model, poses, trans, floor_y, betas)
    # across the field of view at the depth of its path (2/3 of the way from the camera)
    depth = camera_distance * 2.0 / 3.0
    half_width = 0.5 * depth * W / float(camera.K[0, 0]) + 0.5
    masks = np.zeros((frames, H, W), dtype=bool)
    rgb = np.zeros((frames, H, W, 3), dtype=np.float32)
    with torch.no_grad():
        for t in range(n):
            progress = t / max(n - 1, 1)
            offset = np.array([direction * (-half_width + 2 * half_width * progress), 0.0,
                               camera_distance - depth])
            moved = trans[t] + (target * np.array([1.0, 0.0, 1.0])) + offset
            vertices = body_model.forward(torch.as_tensor(poses[t:t + 1], dtype=torch.float32),
                                          torch.as_tensor(betas[t:t + 1], dtype=torch.float32),
                                          torch.as_tensor(moved[None], dtype=torch.float32)).vertices[0]
            image, mask, _ = render_person(texture, vertices, faces, camera, background_fine, supersample)
            masks[t], rgb[t] = mask, image
    return masks, rgb


def painted_figure(body_model, faces, target: np.ndarray, floor_y: float, room_radius: float):
    """A life-size figure painted on the studio wall behind the subject, a little to its side: a posed
    body flattened onto the wall (no depth of its own), in its own colours. Returns (texture, (V, 3)
    world vertices) to draw into every view's background."""
    from occfusion_core.data.motion import novel_pose_motion
    from occfusion_core.data.texture import MURAL_PALETTE

    texture = BodyTexture.from_body_model(body_model, MURAL_PALETTE)
    pose = novel_pose_motion("dance", 12)[6]
    with torch.no_grad():
        vertices = body_model.forward(torch.as_tensor(pose[None], dtype=torch.float32), torch.zeros(1, 10),
                                      torch.zeros(1, 3)).vertices[0].double().numpy()
    wall_z = float(target[2]) - room_radius * math.cos(math.radians(14.0)) + 0.05
    vertices[:, 2] = wall_z + 0.01 * (vertices[:, 2] - vertices[:, 2].mean())
    vertices[:, 0] += float(target[0]) + room_radius * math.sin(math.radians(14.0))
    vertices[:, 1] += floor_y - vertices[:, 1].min() + 0.1
    return texture, torch.as_tensor(vertices, dtype=torch.float32)


def _frame_metadata(poses, betas, trans, camera: Camera) -> dict:
    return {
        "poses": [float(x) for x in poses],
        "betas": [float(x) for x in betas],
        "trans": [float(x) for x in trans],
        "cam_intrinsics": camera.K.double().tolist(),
        "cam_extrinsics": camera.w2c.double().tolist(),
    }


def _check_inside(mask: np.ndarray, where: str) -> None:
    if not mask.any():
        raise RuntimeError(f"synthetic subject: the person is not visible in {where}")
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        raise RuntimeError(f"synthetic subject: the person touches the image border in {where}; "
                           "raise camera_distance or fov_deg")


def generate_synthetic_subject(out_dir: str | Path, cfg: SyntheticConfig, body_model) -> dict:
    """Render the synthetic subject and write it in the sequence format, with ground truth.

    Layout written under ``out_dir`` (frame names 00000, 00001, ...)::

        images/<name>.png                 occluded RGB frames
        masks/<name>.png                  visible person mask 0/255 (full mask minus occluder)
        metadata.json                     {name: poses (72), betas (10), trans (3), cam_intrinsics
                                          3x3, cam_extrinsics 4x4 world-to-camera OpenCV}; body
                                          parameters carry the configured noise
        info.json                         source, size, fps, occlusion, seed, body model, config, notes
        gt/images/<name>.png              unoccluded frames
        gt/full_masks/<name>.png          complete person masks
        gt/occluder_masks/<name>.png      occluder pixels (absent for occlusion 'none')
        gt/clean_metadata.json            noise-free body parameters, same schema as metadata.json
        gt/heldout/cameras.json           {view: {K, w2c, width, height}}
        gt/heldout/<view>/images/<name>.png, gt/heldout/<view>/masks/<name>.png
                                          every cfg.heldout_every-th frame, unoccluded

    Deterministic: the same config (seed included) writes byte-identical files.

    Args:
        out_dir: output folder (created).
        cfg: the synthetic-subject config.
        body_model: a :class:`occfusion_core.body.model.BodyModel` (proxy or SMPL).

    Returns:
        Summary dict: counts, hidden-pixel fractions, seconds taken.
    """
    # Every tensor op here is small; intra-op threads only add contention (10x slower on a busy
    # 2-core machine), and one thread also keeps float reductions in a fixed order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(Path(out_dir), cfg, body_model)
    finally:
        torch.set_num_threads(threads)


def _block_mean(x: np.ndarray, s: int) -> np.ndarray:
    """(H*s, W*s, ...) -> (H, W, ...) mean over s x s blocks."""
    h, w = x.shape[0] // s, x.shape[1] // s
    return x.reshape(h, s, w, s, *x.shape[2:]).mean(axis=(1, 3))


def render_person(texture: BodyTexture, vertices, faces, camera: Camera, background: np.ndarray,
                  supersample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The textured body over a background, integrated over each pixel like a camera sensor.

    Renders at ``supersample`` x the resolution and averages s x s blocks (a box filter), so edges are
    anti-aliased as in real footage.

    Args:
        background: (H*s, W*s, 3) background at the supersampled resolution.
    Returns:
        rgb (H, W, 3) float in [0, 1]; mask (H, W) bool, person coverage >= 50%;
        depth (H, W) the nearest person depth among the pixel's samples (+inf where none).
    """
    s = supersample
    r = texture.render(vertices, faces, camera.scaled(s) if s > 1 else camera, shading=SHADING)
    hit = r.mask.numpy()
    rgb = np.where(hit[..., None], r.rgb.numpy(), background)
    if s == 1:
        return rgb.astype(np.float32), hit, r.depth.numpy()
    depth = r.depth.numpy()
    h, w = hit.shape[0] // s, hit.shape[1] // s
    return (_block_mean(rgb, s).astype(np.float32), _block_mean(hit.astype(np.float32), s) >= 0.5,
            depth.reshape(h, s, w, s).min(axis=(1, 3)))


def _generate(out: Path, cfg: SyntheticConfig, body_model) -> dict:
    started = time.perf_counter()
    if cfg.occlusion not in OCCLUSIONS:
        raise ValueError(f"synthetic.occlusion: {cfg.occlusion!r} is not one of {', '.join(OCCLUSIONS)}")
    if cfg.background not in BACKGROUNDS:
        raise ValueError(f"synthetic.background: {cfg.background!r} is not one of {', '.join(BACKGROUNDS)}")
    if cfg.frames < 1 or cfg.heldout_every < 1 or cfg.heldout_views < 0:
        raise ValueError("synthetic: frames and heldout_every must be >= 1, heldout_views >= 0")
    T, W, H = cfg.frames, cfg.width, cfg.height
    names = [frame_name(t) for t in range(T)]

    # Motion, grounded so that the lowest point of the body touches the floor in every frame.
    v_template = torch.as_tensor(body_model.v_template, dtype=torch.float32)
    faces = torch.as_tensor(body_model.faces, dtype=torch.long)
    floor_y = float(v_template[:, 1].min())
    poses, trans = walk_turn(T, cfg.turns, cfg.seed)
    true_betas, estimated_betas = person_shape(cfg.betas_std, cfg.betas_noise, cfg.seed)
    betas = np.tile(true_betas, (T, 1))
    trans = ground_trans(body_model, poses, trans, floor_y, betas)
    texture = BodyTexture.from_body_model(body_model)
    with torch.no_grad():
        posed = body_model.forward(torch.as_tensor(poses, dtype=torch.float32),
                                   torch.as_tensor(betas, dtype=torch.float32),
                                   torch.as_tensor(trans, dtype=torch.float32))
        offsets = clothing_offsets(texture, faces, texture.rest_joints, cfg.clothing)
        # the person: the body with its clothing and hair (shoes and skin stay on the body)
        vertices = dress(posed.vertices, posed.transforms, body_model.lbs_weights, offsets)  # (T, V, 3)
    lo, hi = vertices.amin(dim=(0, 1)), vertices.amax(dim=(0, 1))
    target = (0.5 * (lo + hi)).double().numpy()  # centre of the body's box over the whole motion

    # Cameras: training at azimuth 0 (+z, the way the body faces at rest), held-out on the same circle.
    K = intrinsics_from_fov(W, H, cfg.fov_deg)
    train_cam = Camera(K, look_at(target + np.array([0.0, 0.0, cfg.camera_distance]), target), W, H)
    azimuths = heldout_azimuths(cfg.heldout_views)
    heldout_cams = orbit_cameras(target, cfg.camera_distance, float(target[1]), azimuths, K, W, H)
    room_radius = max(4.5, cfg.camera_distance + 1.5)

    mural = painted_figure(body_model, faces, target, floor_y, room_radius) if cfg.painted_figure else None

    def background(camera: Camera) -> np.ndarray:
        image = background_image(cfg.background, camera, floor_y, (target[0], target[2]), room_radius)
        if mural is not None:  # painted on the wall: drawn into the background of every view
            texture, vertices = mural
            r = texture.render(vertices, faces, camera, shading=0.0)
            image = np.where(r.mask.numpy()[..., None], r.rgb.numpy(), image).astype(np.float32)
        return image

    S = cfg.supersample
    if S < 1:
        raise ValueError("synthetic: supersample must be >= 1")

    # Training view: unoccluded frames, full masks, person depth.
    train_bg_fine = background(train_cam.scaled(S)) if S > 1 else background(train_cam)
    train_bg = _block_mean(train_bg_fine, S).astype(np.float32) if S > 1 else train_bg_fine
    gt_images = np.zeros((T, H, W, 3), dtype=np.float32)
    full_masks = np.zeros((T, H, W), dtype=bool)
    person_depth = np.full((T, H, W), np.inf, dtype=np.float32)
    for t in range(T):
        rgb, mask, depth = render_person(texture, vertices[t], faces, train_cam, train_bg_fine, S)
        _check_inside(mask, f"training frame {names[t]}")
        gt_images[t], full_masks[t], person_depth[t] = rgb, mask, depth

    # Occlusion.
    if cfg.occlusion == "person":
        occluder, fill = other_person_passing(body_model, faces, train_cam, train_bg_fine, S, target, floor_y,
                                              cfg.camera_distance, T, cfg.occluded_frames_fraction, cfg.seed)
    elif cfg.occlusion == "zju_band":
        occluder = zju_band_masks(full_masks, cfg.occluded_frames_fraction, cfg.band_width_fraction)
        fill = np.broadcast_to(train_bg, gt_images.shape)
    elif cfg.occlusion == "object":
        centres = (0.5 * (vertices.amin(dim=1) + vertices.amax(dim=1))).double().numpy()  # (T, 3)
        box = moving_box_occluder(train_cam, centres, person_depth, cfg.occluded_frames_fraction,
                                  floor_y=floor_y, up=(0.0, 1.0, 0.0), seed=cfg.seed)
        occluder, fill = box.mask, box.rgb
    else:
        occluder = np.zeros_like(full_masks)
        fill = gt_images
    images = np.zeros_like(gt_images)
    visible = np.zeros_like(full_masks)
    for t in range(T):
        images[t], visible[t] = apply_occlusion(gt_images[t], full_masks[t], occluder[t], fill[t])
        if not visible[t].any():
            raise RuntimeError(f"synthetic subject: the occluder hides the whole person in frame {names[t]}")

    # Held-out views, unoccluded, every heldout_every-th frame; all rendered and checked before any
    # file is written.
    heldout_frames = list(range(0, T, cfg.heldout_every))
    heldout = {}  # view name -> (camera, images (N, H, W, 3), masks (N, H, W))
    for az, cam in zip(azimuths, heldout_cams):
        view = view_name(az)
        bg_fine = background(cam.scaled(S)) if S > 1 else background(cam)
        view_images = np.zeros((len(heldout_frames), H, W, 3), dtype=np.float32)
        view_masks = np.zeros((len(heldout_frames), H, W), dtype=bool)
        for k, t in enumerate(heldout_frames):
            view_images[k], view_masks[k], _ = render_person(texture, vertices[t], faces, cam, bg_fine, S)
            _check_inside(view_masks[k], f"held-out view {view}, frame {names[t]}")
        heldout[view] = (cam, view_images, view_masks)

    # Body parameters: clean ones for the ground truth, noisy ones for the input metadata.
    noisy_poses, noisy_trans = add_pose_noise(poses, trans, cfg.pose_noise_deg, cfg.trans_noise_m, cfg.seed,
                                              cfg.noise_correlation_frames)
    clean_meta = {n: _frame_metadata(poses[t], betas[t], trans[t], train_cam) for t, n in enumerate(names)}
    noisy_meta = {n: _frame_metadata(noisy_poses[t], estimated_betas, noisy_trans[t], train_cam)
                  for t, n in enumerate(names)}

    for t, n in enumerate(names):
        io.write_image(out / "images" / f"{n}.png", images[t])
        io.write_mask(out / "masks" / f"{n}.png", visible[t])
        io.write_image(out / "gt" / "images" / f"{n}.png", gt_images[t])
        io.write_mask(out / "gt" / "full_masks" / f"{n}.png", full_masks[t])
        if cfg.occlusion != "none":
            io.write_mask(out / "gt" / "occluder_masks" / f"{n}.png", occluder[t])
    io.write_json(out / "metadata.json", noisy_meta)
    io.write_json(out / "gt" / "clean_metadata.json", clean_meta)
    for view, (cam, view_images, view_masks) in heldout.items():
        for k, t in enumerate(heldout_frames):
            io.write_image(out / "gt" / "heldout" / view / "images" / f"{names[t]}.png", view_images[k])
            io.write_mask(out / "gt" / "heldout" / view / "masks" / f"{names[t]}.png", view_masks[k])
    cameras_json = {view: cam.to_dict() for view, (cam, _, _) in heldout.items()}
    io.write_json(out / "gt" / "heldout" / "cameras.json", cameras_json)

    body_name = "proxy" if getattr(body_model, "is_proxy", False) else str(getattr(body_model, "name", "smpl"))
    occluded_frames = occluder.reshape(T, -1).any(axis=1)
    n_occ = int(occluded_frames.sum())
    person_px = full_masks.reshape(T, -1).sum(axis=1)
    hidden = (full_masks & occluder).reshape(T, -1).sum(axis=1) / np.maximum(person_px, 1)
    info = {
        "source": "synthetic",
        "width": W,
        "height": H,
        "fps": FPS,
        "occlusion": cfg.occlusion,
        "seed": cfg.seed,
        "body_model": body_name,
        "config": to_dict(cfg),
        "notes": (
            "rendered with a z-buffer mesh rasterizer (occfusion_core.render.mesh) at "
            f"{S}x{S} samples per pixel averaged (box filter; masks = coverage >= 50%), from the clean body "
            "parameters; procedural clothing (striped shirt with a "
            "chest logo in front and a red yoke on the back, checked trousers, skin, hair, shoes) with "
            f"Lambertian shading {SHADING}; clothing {clothing_description(cfg.clothing)}; motion: walking in "
            f"place while turning {cfg.turns} time(s); background: {cfg.background}; metadata.json holds an "
            f"estimate of the body like a monocular estimator's (pose error {cfg.pose_noise_deg} deg and "
            f"translation error {cfg.trans_noise_m} m std, correlated over {cfg.noise_correlation_frames} "
            f"frames; shape error {cfg.betas_noise} std per coefficient), gt/clean_metadata.json the exact "
            "parameters (true shape included); "
            f"held-out views at azimuths {[round(a, 2) for a in azimuths]} deg on every "
            f"{cfg.heldout_every}-th frame."
        ),
    }
    io.write_json(out / "info.json", info)
    return {
        "out_dir": str(out),
        "frames": T,
        "occluded_frames": n_occ,
        "hidden_fraction_mean": float(hidden[occluded_frames].mean()) if n_occ else 0.0,
        "hidden_fraction_min": float(hidden[occluded_frames].min()) if n_occ else 0.0,
        "hidden_fraction_max": float(hidden[occluded_frames].max()) if n_occ else 0.0,
        "heldout_views": list(cameras_json),
        "heldout_frames": len(heldout_frames),
        "body_model": body_name,
        "num_vertices": int(v_template.shape[0]),
        "seconds": time.perf_counter() - started,
    }
