"""A user's own monocular video -> the sequence format: frames, person masks, keypoints, camera and
body, in one call (:func:`prepare_video`); and simulated occlusion on real frames with the originals
kept as ground truth (:func:`simulate_occlusion` on arrays, :func:`occlude_sequence` on a written
sequence folder of any source).

Steps of :func:`prepare_video`:

1. frames from the video through imageio-ffmpeg's bundled ffmpeg (start, stride, frame cap), at a
   tracking resolution (longer side ``track_max_side``);
2. the subject chosen and followed (:mod:`occfusion_core.data.tracking`): MediaPipe Pose
   (``model_complexity=1``) in a region around the subject, 33 keypoints with visibility, 33 metric
   world landmarks and a person mask; frames where the subject is not found, or a detection does not
   agree with the track, are dropped with the reason;
3. person-centric framing (:mod:`occfusion_core.data.framing`): one crop around the person's whole
   path (or one per frame for a moving camera or a person crossing the frame), cut from the
   full-resolution frames and scaled so the longer side is ``max_side``;
4. the camera: the user's intrinsics or a field-of-view default in the video's pixels, shifted and
   scaled by each frame's crop, and the extrinsics of :func:`occfusion_core.body.fit.camera_w2c`
   (camera at the world origin, world y up, level or pitched by ``camera_pitch_deg``);
5. the body fit of :mod:`occfusion_core.body.fit` to all frames at once, in the video's pixels;
6. optionally simulated occlusion, the original frames and masks going to ``gt/``; with
   ``detect_on: occluded`` (the default) the detector and the fit see the occluded frames, as with a
   really occluded video;
7. written as ``images/``, ``masks/``, ``metadata.json``, ``info.json`` (every method and setting,
   framing, dropped frames and why, fit residuals), ``keypoints.json`` (the detections, in the
   frames' pixels), ``dropped/`` (the dropped frames, for the overlay) and ``gt/`` when occluded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from occfusion_core import io
from occfusion_core.body.landmarks import LANDMARK_NAMES
from occfusion_core.data.framing import CROP_MODES, background_motion, crop_intrinsics, plan_framing
from occfusion_core.data.keypoints import DETECTOR, PoseDetector
from occfusion_core.data.occlusion import OCCLUSION_KINDS, estimate_background, pelvis_positions, simulate_occlusion
from occfusion_core.data.sequence import FrameMeta, write_gt_frame, write_sequence
from occfusion_core.data.source_configs import VideoConfig
from occfusion_core.data.tracking import (
    SubjectTracker,
    box_iou,
    choose_subject,
    detect_in_region,
    paste_mask,
    proposals,
    square_around,
)
from occfusion_core.imaging import resize
from occfusion_core.io import InputError
from occfusion_core.masks import mask_box_heights
from occfusion_core.render.camera import Camera

log = logging.getLogger(__name__)

MIN_LANDMARKS_DETECTED = 8
"""A frame with fewer confident landmarks than this counts as missed by the detector."""


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------

@dataclass
class VideoFrames:
    """Frames sampled from a video.

    Attributes:
        images: (T, H, W, 3) uint8 RGB, scaled.
        indices: (T,) int video frame numbers (0-based).
        fps: the video's frame rate.
        source_size: (width, height) of the video's frames.
        scale: (sx, sy) scaled size / source size per axis.
    """

    images: np.ndarray
    indices: np.ndarray
    fps: float
    source_size: tuple[int, int]
    scale: tuple[float, float]


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down (never up) so the longer side is at most ``max_side``."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def read_video_frames(path: str | os.PathLike, start_frame: int = 0, frame_stride: int = 1,
                      max_frames: int | None = None, max_side: int | None = None) -> VideoFrames:
    """Decode frames ``start_frame, start_frame + frame_stride, ...`` (at most ``max_frames``).

    Raises:
        InputError: the file is missing, ffmpeg cannot read it, or no frame is in the range.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "video file is missing")
    if frame_stride < 1 or start_frame < 0 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"video: frame_stride >= 1, start_frame >= 0, max_frames >= 1 or None; got "
                         f"{frame_stride}, {start_frame}, {max_frames}")
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise InputError(path, f"not a readable video (ffmpeg: {lines[-1] if lines else type(err).__name__})") from err
    width, height = meta["size"]
    if meta.get("rotate", 0) in (90, 270):  # ffmpeg auto-rotates; the reported size is pre-rotation
        width, height = height, width
    fps = float(meta.get("fps") or 0.0)
    out_w, out_h = scaled_size(width, height, max_side)
    images, indices = [], []
    try:
        for index, raw in enumerate(reader):
            if index < start_frame or (index - start_frame) % frame_stride:
                continue
            if len(raw) != width * height * 3:
                raise InputError(path, f"frame {index} has {len(raw)} bytes, expected {width}x{height}x3")
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            if (out_w, out_h) != (width, height):
                frame = resize(frame, (out_w, out_h), "lanczos")
            images.append(frame.copy())
            indices.append(index)
            if max_frames is not None and len(images) >= max_frames:
                break
    except RuntimeError as err:
        raise InputError(path, f"ffmpeg failed while decoding ({err})") from err
    finally:
        reader.close()
    if not images:
        raise InputError(path, f"no frame at or after start_frame {start_frame} (the video has fewer frames)")
    return VideoFrames(np.stack(images), np.asarray(indices), fps, (width, height),
                       (out_w / width, out_h / height))


# ----------------------------------------------------------------------------------------------
# Masks, camera
# ----------------------------------------------------------------------------------------------

def video_intrinsics(width: int, height: int, scale: tuple[float, float], intrinsics=None,
                     fov_deg: float = 60.0) -> tuple[np.ndarray, str]:
    """(3, 3) K of the scaled frames and how it was obtained.

    Args:
        width, height: scaled frame size.
        scale: (sx, sy) scaled / source size.
        intrinsics: [fx, fy, cx, cy] in source pixels, or None.
        fov_deg: field of view across the longer side when ``intrinsics`` is None.
    """
    if intrinsics is not None:
        if len(intrinsics) != 4:
            raise ValueError(f"video.intrinsics wants [fx, fy, cx, cy], got {intrinsics!r}")
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        if fx <= 0 or fy <= 0:
            raise ValueError(f"video.intrinsics: focal lengths must be positive, got fx={fx}, fy={fy}")
        sx, sy = scale
        K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        return K, "user intrinsics [fx, fy, cx, cy], scaled with the frames"
    if not 1.0 < fov_deg < 179.0:
        raise ValueError(f"video.fov_deg must be in (1, 179), got {fov_deg}")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2.0)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return K, f"default: {fov_deg:g} deg field of view across the longer side, principal point at the centre"


# ----------------------------------------------------------------------------------------------
# The video source
# ----------------------------------------------------------------------------------------------

def frame_name(video_index: int) -> str:
    """Frame file stem: the video frame number, 5 digits (or more past 99999)."""
    return f"{video_index:05d}"


def read_cropped_frames(path: str | os.PathLike, indices: list[int], regions: list,
                        size: tuple[int, int]) -> np.ndarray:
    """Decode the video again at full resolution and cut frame ``indices[k]`` to ``regions[k]``
    (x0, y0, x1, y1 in original pixels; black past the frame's edge), resampled to ``size``
    (width, height). Only the crops are kept in memory.

    Returns:
        (K, height, width, 3) uint8.
    """
    import imageio_ffmpeg
    from PIL import Image

    wanted = {int(i): k for k, i in enumerate(indices)}
    out = np.zeros((len(indices), size[1], size[0], 3), dtype=np.uint8)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    if meta.get("rotate", 0) in (90, 270):
        width, height = height, width
    try:
        for index, raw in enumerate(reader):
            k = wanted.get(index)
            if k is None:
                if index > max(wanted):
                    break
                continue
            frame = Image.fromarray(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            x0, y0, x1, y1 = regions[k]
            sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]
            # box-filter when shrinking a lot (LANCZOS on the crop), exact affine otherwise
            if sx > 1.5 and x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
                crop = frame.resize(size, Image.Resampling.LANCZOS, box=(x0, y0, x1, y1))
            else:
                crop = frame.transform(size, Image.Transform.AFFINE, (sx, 0.0, x0, 0.0, sy, y0),
                                       resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
            out[k] = np.asarray(crop)
    finally:
        reader.close()
    return out


@dataclass
class TrackedClip:
    """The subject followed through the sampled frames (tracking resolution).

    Attributes:
        kept: positions (into the sampled frames) of the frames where the subject was found.
        detections: the subject's detection in each kept frame.
        dropped: [{"video_frame", "time_s", "reason"}] for every other frame.
        chosen: how the subject was chosen (rule, frame, candidates).
    """

    kept: list[int]
    detections: list
    dropped: list[dict]
    chosen: dict


def track_subject(frames: np.ndarray, indices: np.ndarray, fps: float, cfg: VideoConfig, scale: float,
                  video_path=None) -> TrackedClip:
    """Choose the subject in the first frame where anyone is found, then follow it
    (:mod:`occfusion_core.data.tracking`).

    Args:
        frames: (T, H, W, 3) uint8 sampled frames at tracking resolution.
        indices: (T,) their video frame numbers.
        scale: tracking pixels per original pixel (for a subject box given in original pixels).
    """
    kept, detections, dropped, chosen = [], [], [], {}
    tracker = None

    def drop(t: int, reason: str) -> None:
        dropped.append({"video_frame": int(indices[t]), "time_s": round(float(indices[t]) / fps, 3),
                        "reason": reason})
        if cfg.on_missing_person == "error":  # fail at the first such frame, before tracking the rest
            raise InputError(video_path, f"subject not found in video frame {int(indices[t])} "
                                         f"(t = {float(indices[t]) / fps:.2f} s): {reason}; set "
                                         "video.on_missing_person: drop to skip such frames")

    with PoseDetector(video_mode=False) as detector:
        for t, frame in enumerate(frames):
            if tracker is None:
                candidates = proposals(detector, frame, cfg.tracking)
                subject = choose_subject(candidates, cfg.person, frame.shape[:2], scale)
                if subject is None:
                    drop(t, "no person found yet" if not candidates else
                         f"none of the {len(candidates)} people found lies in video.person's box")
                    continue
                tracker = SubjectTracker(detector, cfg.tracking, frame, subject)
                chosen = {"rule": cfg.person if isinstance(cfg.person, str) else [float(v) for v in cfg.person],
                          "video_frame": int(indices[t]), "people_found": len(candidates),
                          "box_xyxy": [round(v / scale, 1) for v in subject.box]}
                kept.append(t)
                detections.append(subject)
                continue
            step = tracker.step(frame)
            if step.detection is None:
                drop(t, step.status)
            else:
                kept.append(t)
                detections.append(step.detection)
    return TrackedClip(kept, detections, dropped, chosen)


def _paste_into_frames(detections, regions, size, track_scale: float) -> np.ndarray:
    """Each detection's mask drawn into its output frame (crop ``regions`` in original pixels,
    output ``size`` (width, height)); detections live in tracking pixels."""
    masks = np.zeros((len(detections), size[1], size[0]), dtype=bool)
    for k, (det, region) in enumerate(zip(detections, regions)):
        s = size[0] / (region[2] - region[0])  # output pixels per original pixel
        masks[k] = paste_mask(det.mask, det.region, (size[1], size[0]),
                              origin=(region[0] * track_scale, region[1] * track_scale), scale=s / track_scale)
    return masks


def _to_output(points: np.ndarray, region, size) -> np.ndarray:
    """(..., 2) original pixels -> output pixels of the frame cut to ``region`` at ``size``."""
    s = np.array([size[0] / (region[2] - region[0]), size[1] / (region[3] - region[1])])
    return (points - np.array(region[:2])) * s


def _background_per_frame(frames: np.ndarray, masks: np.ndarray, regions, size, track_scale: float) -> np.ndarray:
    """The clip's background (estimated on the uncropped tracking frames) cut like each frame."""
    from PIL import Image

    background, _ = estimate_background(frames, masks)
    image = Image.fromarray(background)
    out = np.zeros((len(regions), size[1], size[0], 3), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(regions):
        box = tuple(v * track_scale for v in (x0, y0, x1, y1))
        sx, sy = (box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1]
        out[k] = np.asarray(image.transform(size, Image.Transform.AFFINE, (sx, 0.0, box[0], 0.0, sy, box[1]),
                                            resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)))
    return out


def _redetect(images: np.ndarray, full_masks: np.ndarray, cfg: VideoConfig) -> list:
    """Detect the subject again in every (occluded) output frame, in a region around its box (known
    from the unoccluded frame, as a tracker's prediction would be); None where nobody is found, or
    where the detection does not agree with that box (the detector then found a fragment of the
    person, split by the occluder, and its keypoints would be nonsense)."""
    found = []
    with PoseDetector(video_mode=False) as detector:
        for image, mask in zip(images, full_masks):
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            det = detect_in_region(detector, image, square_around(box, cfg.tracking.search_scales[0]),
                                   cfg.tracking.region_size, cfg.mask_threshold, cfg.min_component_fraction)
            if det is not None and box_iou(_keypoint_box(det), box) < REDETECTION_MIN_IOU:
                det = None
            found.append(det)
    return found


REDETECTION_MIN_IOU = 0.5
"""A detection on an occluded frame counts only if the box of its visible keypoints overlaps the
subject's box this much."""


def _keypoint_box(det) -> tuple[float, float, float, float]:
    seen = det.visibility > 0.5
    points = det.keypoints[seen] if seen.sum() >= 2 else det.keypoints
    return (float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max()))


def prepare_video(video_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: VideoConfig, body_model) -> dict:
    """A user's video -> sequence folder ``out_dir`` (see the module docstring).

    Args:
        video_path: the video file.
        out_dir: the sequence folder to write (created).
        cfg: :class:`~occfusion_core.data.source_configs.VideoConfig`.
        body_model: :class:`~occfusion_core.body.model.BodyModel` to fit (proxy or SMPL).

    Returns:
        Summary: frames, size, dropped frames, framing, fit residuals, timings.

    Raises:
        InputError: unreadable video, no person at all, or (``on_missing_person: error``) a frame
            where the subject is not found, naming the video frame, its time and why.
    """
    from occfusion_core.body.fit import camera_w2c
    _check_video_config(cfg)
    occ = cfg.occlusion
    out = Path(out_dir)
    timings: dict[str, float] = {}

    start = time.time()
    video = read_video_frames(video_path, cfg.start_frame, cfg.frame_stride, cfg.max_frames, cfg.track_max_side)
    timings["decode_s"] = time.time() - start
    fps = video.fps if video.fps > 0 else 30.0
    gap_s = cfg.frame_stride / fps
    track_scale = video.scale[0]  # tracking pixels per original pixel

    start = time.time()
    tracked = track_subject(video.images, video.indices, fps, cfg, track_scale, video_path)
    timings["track_s"] = time.time() - start
    for d in tracked.dropped:
        log.warning("video frame %d (t = %.2f s) dropped: %s", d["video_frame"], d["time_s"], d["reason"])
    if not tracked.kept:
        raise InputError(video_path, "no person found in any sampled frame")

    # where each frame is cut (original pixels), and the frames cut so
    boxes = [tuple(v / track_scale for v in det.box) for det in tracked.detections]
    track_boxes = [None] * len(video.images)
    for t, det in zip(tracked.kept, tracked.detections):
        track_boxes[t] = det.box
    motion = background_motion(video.images, track_boxes)
    framing = plan_framing(boxes, video.source_size, cfg.crop, cfg.max_side, cfg.crop_margin, motion)
    indices = [int(video.indices[t]) for t in tracked.kept]
    start = time.time()
    images = read_cropped_frames(video_path, indices, framing.regions, framing.size)
    timings["crop_s"] = time.time() - start
    W, H = framing.size
    full_masks = _paste_into_frames(tracked.detections, framing.regions, framing.size, track_scale)
    T = len(indices)
    names = [frame_name(i) for i in indices]

    # camera: intrinsics in original pixels (the fit's), and per frame after its crop
    K_source, k_source = video_intrinsics(*video.source_size, (1.0, 1.0), cfg.intrinsics, cfg.fov_deg)
    Ks = [crop_intrinsics(K_source, region, framing.size) for region in framing.regions]
    w2c = camera_w2c(cfg.camera_pitch_deg)
    keypoints = np.stack([det.keypoints / track_scale for det in tracked.detections])  # original pixels
    visibility = np.stack([det.visibility for det in tracked.detections])
    world = np.stack([det.world for det in tracked.detections])
    fit_masks, fit_keypoints, fit_visibility, fit_world = full_masks, keypoints, visibility, world

    occlusion, fit = None, None
    if occ.kind in ("none", "object") or occ.detect_on == "original":
        # the crate of 'object' aims at the fitted person, so this fit comes first
        start = time.time()
        fit = _fit(body_model, keypoints, visibility, world, full_masks, framing, K_source, w2c, cfg, gap_s)
        timings["fit_s"] = time.time() - start
    if occ.kind != "none":
        centers = _pelvis(body_model, fit) if occ.kind == "object" else None
        background = (_background_per_frame(video.images[tracked.kept],
                                             _paste_track_masks(tracked, video.images.shape[1:3]),
                                             framing.regions, framing.size, track_scale)
                      if occ.kind == "zju_band" and occ.band_fill == "background" else None)
        camera = Camera(Ks[0], w2c, W, H) if framing.mode != "per_frame" else None
        if occ.kind == "object" and camera is None:
            raise ValueError("simulated occlusion 'object' needs one camera for the clip; use video.crop: none or "
                             "a clip the fixed crop covers")
        occlusion = simulate_occlusion(images, full_masks, occ, camera, centers, background=background)
        fit_masks = occlusion.visible_masks
        if occ.detect_on == "occluded":
            # what a user with a really occluded video gets: the detector's keypoints on the occluded
            # frames; where it finds nobody the frame keeps no keypoints and the fit bridges it from its
            # neighbours (temporal smoothness)
            start = time.time()
            found = _redetect(occlusion.images, full_masks, cfg)
            timings["detect_occluded_s"] = time.time() - start
            lost = [indices[t] for t, d in enumerate(found) if d is None]
            if len(lost) == len(found):
                raise InputError(video_path, "with the simulated occlusion the detector finds nobody in any frame; "
                                             "use occlusion.detect_on: original")
            if lost:
                log.warning("with the simulated occlusion the detector finds nobody in %d of %d frames (%s); "
                            "their body comes from their neighbours", len(lost), len(found), lost[:8])
            fit_keypoints = np.stack([np.zeros((33, 2)) if d is None else
                                      _from_output(d.keypoints, framing.regions[t], framing.size)
                                      for t, d in enumerate(found)])
            fit_visibility = np.stack([np.zeros(33) if d is None else
                                       d.visibility * on_mask(d.keypoints, fit_masks[t]) for t, d in enumerate(found)])
            fit_world = np.stack([world[t] * 0 if d is None else d.world for t, d in enumerate(found)])
            start = time.time()
            fit = _fit(body_model, fit_keypoints, fit_visibility, fit_world, fit_masks, framing, K_source, w2c, cfg,
                       gap_s)
            timings["fit_occluded_s"] = time.time() - start
            occlusion.summary["frames_without_detection"] = lost

    visible_masks = full_masks if occlusion is None else occlusion.visible_masks
    train_images = images if occlusion is None else occlusion.images
    poses, betas, trans = fit.poses, np.tile(fit.betas, (T, 1)), fit.trans
    alignment = None
    if cfg.align_to_masks:
        # the keypoint fit, aligned to the masks too (a frame whose keypoints the occluder hid gets its
        # limbs from what the mask shows)
        from occfusion_core.body.align import align_to_evidence
        from occfusion_core.body.configs import BodyAlignConfig

        start = time.time()
        out_keypoints = np.stack([_to_output(fit_keypoints[t], framing.regions[t], framing.size) for t in range(T)])
        align_cfg = BodyAlignConfig()
        # frames whose landmarks hold the body; runs of others are crossed from their neighbours first
        detected = (fit_visibility >= align_cfg.keypoint_min_visibility).sum(axis=1) >= MIN_LANDMARKS_DETECTED
        aligned = align_to_evidence(body_model, poses, betas, trans, [Camera(K, w2c, W, H) for K in Ks],
                                    visible_masks, align_cfg, keypoints=out_keypoints,
                                    keypoint_visibility=fit_visibility, detected=detected)
        poses, betas, trans, alignment = aligned.poses, aligned.betas, aligned.trans, aligned.summary
        timings["align_s"] = time.time() - start
    metas = [FrameMeta(poses[t], betas[t], trans[t], Ks[t], w2c) for t in range(T)]
    dropped = sorted(tracked.dropped, key=lambda d: d["video_frame"])

    info = {
        "source": "video",
        "video": str(video_path),
        "width": W,
        "height": H,
        "fps": fps / cfg.frame_stride,
        "video_fps": fps,
        "video_size": list(video.source_size),
        "framing": framing.to_json(),
        "video_frames": indices,
        "dropped_frames": dropped,
        "subject": {**tracked.chosen, "tracking": asdict(cfg.tracking)},
        "detector": DETECTOR,
        "detector_mode": f"static image, in a square region around the subject, resampled to "
                         f"{cfg.tracking.region_size} px; frames {gap_s:.3f} s apart",
        "masks": f"MediaPipe segmentation probability > {cfg.mask_threshold}, blobs under "
                 f"{cfg.min_component_fraction} of the largest dropped",
        "camera": {"intrinsics": k_source, "K_source": K_source.tolist(), "K": Ks[0].tolist(), "w2c": w2c.tolist(),
                   "per_frame_intrinsics": framing.mode == "per_frame",
                   "convention": "camera at the world origin facing -z, world y up, OpenCV image axes; "
                                 "units metres; K of each frame in metadata.json (the crop shifts and scales it)",
                   "pitch_deg": cfg.camera_pitch_deg,
                   "tilt": "given by the user" if cfg.camera_pitch_deg else "level camera assumed (one view "
                           "cannot tell its tilt; set video.camera_pitch_deg if it looks down)"},
        "body_model": "proxy" if getattr(body_model, "is_proxy", False) else str(getattr(body_model, "name", "smpl")),
        "fit": {"method": "SMPLify-style: robust 2D reprojection of the MediaPipe landmarks mapped onto the "
                          "body's joints45, MediaPipe world landmarks as a bone-direction prior, quadratic "
                          "pose prior with joint limits, shape prior, temporal smoothness; Adam in three "
                          "stages (orientation + translation, + pose, + shape); in the video's own pixels",
                "keypoints_from": "original frames" if occlusion is None or occ.detect_on == "original"
                else "occluded frames",
                "config": asdict(cfg.fit),
                **fit.summary(),
                "residual_box_fraction_per_frame": {n: _round(v) for n, v in zip(names, fit.residual_fraction)},
                "residual_px_per_landmark": {LANDMARK_NAMES[i]: _round(v) for i, v in enumerate(fit.landmark_error_px)
                                             if np.isfinite(v)},
                "box": "bounding box of the person mask, in the video's pixels",
                "aligned_to_masks": alignment or "no (video.align_to_masks: false)"},
        "occlusion": occ.kind,
        "occlusion_settings": occlusion.summary if occlusion is not None else None,
        "seed": occ.seed,
        "heldout": "none: a monocular clip has no other views; evaluate on the hidden pixels of the "
                   "training frames (gt/) or on visible pixels",
        "config": asdict(cfg),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    write_sequence(out, ((names[t], train_images[t], visible_masks[t], metas[t]) for t in range(T)), info)
    if occlusion is not None:
        for t in range(T):
            write_gt_frame(out, names[t], images[t], full_masks[t], occlusion.occluder_masks[t])
    _write_dropped_frames(out, video_path, dropped, framing)
    io.write_json(out / "keypoints.json", {
        "detector": DETECTOR,
        "landmarks": list(LANDMARK_NAMES),
        "image_size": [W, H],
        "keypoints": "per landmark [u, v, visibility]: continuous pixel coordinates of images/ "
                     "(pixel (i, j) covers [j, j+1) x [i, i+1))",
        "world": "per landmark [x, y, z] metres, centred between the hips, camera-like axes "
                 "(x right, y down, z away from the camera)",
        "detected_on": info["fit"]["keypoints_from"],
        "dropped_frames": dropped,
        "frames": {n: {"video_frame": int(i),
                       **_keypoints_json(_to_output(fit_keypoints[t], framing.regions[t], framing.size),
                                         fit_visibility[t], fit_world[t])}
                   for t, (n, i) in enumerate(zip(names, indices))},
    })
    summary = {"frames": T, "width": W, "height": H, "dropped_frames": dropped, "framing": framing.to_json(),
               **fit.summary(), "timings_s": info["timings_s"]}
    summary.pop("stage_losses", None)
    return summary


def on_mask(keypoints: np.ndarray, mask: np.ndarray, reach: float = 0.02) -> np.ndarray:
    """(33,) 1.0 where a keypoint (pixels of ``mask``'s frame) lies on the person mask or within
    ``reach`` (fraction of the mask's box height) of it, else 0.0: a keypoint off the visible person
    was guessed, not seen (a detector places hidden joints with confidence all the same)."""
    rows = np.nonzero(mask.any(1))[0]
    if rows.size == 0:
        return np.zeros(len(keypoints))
    distance = ndi.distance_transform_edt(~mask)
    H, W = mask.shape
    cols = np.clip(keypoints[:, 0].astype(np.int64), 0, W - 1)
    rws = np.clip(keypoints[:, 1].astype(np.int64), 0, H - 1)
    inside = (keypoints[:, 0] >= 0) & (keypoints[:, 0] < W) & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < H)
    return (inside & (distance[rws, cols] <= max(1.0, reach * (rows[-1] - rows[0] + 1)))).astype(np.float64)


def _check_video_config(cfg: VideoConfig) -> None:
    if cfg.on_missing_person not in ("error", "drop"):
        raise ValueError(f"video.on_missing_person: {cfg.on_missing_person!r} is not 'error' or 'drop'")
    if cfg.crop not in CROP_MODES:
        raise ValueError(f"video.crop: {cfg.crop!r} is not one of {', '.join(CROP_MODES)}")
    if not (cfg.person in ("largest", "center")
            or (isinstance(cfg.person, (list, tuple)) and len(cfg.person) == 4
                and cfg.person[2] > cfg.person[0] and cfg.person[3] > cfg.person[1])):
        raise ValueError(f"video.person: {cfg.person!r} is not 'largest', 'center' or a box [x0, y0, x1, y1] "
                         "with x1 > x0 and y1 > y0")
    occ = cfg.occlusion
    if occ.kind not in OCCLUSION_KINDS:
        raise ValueError(f"video.occlusion.kind: {occ.kind!r} is not one of {', '.join(OCCLUSION_KINDS)}")
    if occ.detect_on not in ("original", "occluded"):
        raise ValueError(f"video.occlusion.detect_on: {occ.detect_on!r} is not 'original' or 'occluded'")


def _paste_track_masks(tracked: TrackedClip, shape: tuple[int, int]) -> np.ndarray:
    """The subject's masks in the kept tracking frames, (K, H, W) bool."""
    return np.stack([paste_mask(d.mask, d.region, shape) for d in tracked.detections])


def _paste_output_mask(detection, shape: tuple[int, int]) -> np.ndarray:
    return paste_mask(detection.mask, detection.region, shape)


def _from_output(points: np.ndarray, region, size) -> np.ndarray:
    """(..., 2) output pixels of the frame cut to ``region`` at ``size`` -> original pixels."""
    s = np.array([size[0] / (region[2] - region[0]), size[1] / (region[3] - region[1])])
    return points / s + np.array(region[:2])


def _keypoints_json(keypoints: np.ndarray, visibility: np.ndarray, world: np.ndarray) -> dict:
    return {"keypoints": np.round(np.concatenate([keypoints, visibility[:, None]], 1), 3).tolist(),
            "world": np.round(world, 4).tolist()}


def _write_dropped_frames(out: Path, video_path, dropped: list[dict], framing) -> None:
    """``dropped/<frame>.png`` for each dropped frame (cut like the kept frames, the last kept crop in
    per-frame mode), so that the overlay can show them; their reasons are in info.json."""
    if not dropped:
        return
    indices = [d["video_frame"] for d in dropped]
    region = framing.regions[0] if framing.regions else None
    if region is None:
        return
    images = read_cropped_frames(video_path, indices, [region] * len(indices), framing.size)
    for d, image in zip(dropped, images):
        io.write_image(out / "dropped" / f"{frame_name(d['video_frame'])}.png", image)


def _round(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def _fit(body_model, keypoints: np.ndarray, visibility: np.ndarray, world: np.ndarray, masks: np.ndarray, framing,
         K: np.ndarray, w2c: np.ndarray, cfg: VideoConfig, frame_interval_s: float):
    """The body fit in the video's own pixels (keypoints and K there); residuals are normalised by the
    height of each frame's person mask, measured in output pixels and brought back to the video's."""
    from occfusion_core.body.fit import fit_body

    per_pixel = np.array([(r[2] - r[0]) / framing.size[0] for r in framing.regions])  # video px per output px
    heights = mask_box_heights(masks) * per_pixel
    return fit_body(body_model, keypoints, visibility, K, world, cfg.fit, box_height_px=heights,
                    frame_interval_s=frame_interval_s, w2c=w2c)


def _pelvis(body_model, fit) -> np.ndarray:
    """(T, 3) world pelvis of a fit."""
    T = len(fit.poses)
    return pelvis_positions(body_model, fit.poses, np.tile(fit.betas, (T, 1)), fit.trans)


