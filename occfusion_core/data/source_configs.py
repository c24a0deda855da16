"""Typed configs of the real-data sources: a user's video (``source: video``), ZJU-MoCap
(``source: zju``), the body fit and simulated occlusion on real frames.

Plain dataclasses with a docstring per field, like :mod:`occfusion_core.config`; build them with
:func:`occfusion_core.config.from_dict` (nested dicts become the nested dataclasses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..body.configs import FitConfig


@dataclass
class SimulatedOcclusionConfig:
    """Occlusion drawn onto real frames, keeping the originals as ground truth."""

    kind: str = "none"
    """'none', 'zju_band' (a vertical band over the central part of the person in the first frames,
    showing the background) or 'object' (a wooden crate sliding in front of the person)."""
    occluded_frames_fraction: float = 0.8
    """Fraction of frames, from the first, that carry the occlusion (ZJU-MoCap protocol: 0.8)."""
    band_width_fraction: float = 0.5
    """zju_band: band width as a fraction of the person's width in each frame (protocol: 0.5)."""
    band_fill: str = "background"
    """zju_band: what the band shows -- 'background' (the clip's background, estimated as the
    per-pixel median of the frames where no person covers the pixel), 'white' or 'black'."""
    detect_on: str = "occluded"
    """Video source only: run the detector (masks, keypoints for the fit) on the 'occluded' frames
    (what a user with a really occluded video would get; frames where it then finds nobody are
    dropped) or on the 'original' ones (the body fit is then as good as without occlusion, like
    ZJU-MoCap's multi-view SMPL: a benchmark that real users cannot have)."""
    seed: int = 0
    """object: random seed (crate travel direction, plank tones)."""


@dataclass
class TrackingConfig:
    """How the subject is chosen and followed (``video.tracking``)."""

    search_scales: list = field(default_factory=lambda: [2.0, 3.0, 4.5])
    """Sides of the square search regions, in multiples of the predicted box's longer side, tried in
    turn until a detection agrees with the track."""
    region_size: int = 384
    """Pixels of the square each search region is resampled to for the detector."""
    min_box_iou: float = 0.4
    """A detection agrees only if its box overlaps the predicted box at least this much ..."""
    max_mask_growth: float = 1.4
    """... its mask covers at most this many times the subject's usual area (a mask that spreads over
    a second person grows; arms spreading hardly change it) ..."""
    max_keypoint_motion: float = 0.5
    """... its keypoints moved at most this many box heights (median over the keypoints seen in both
    frames) since the last kept frame, per frame of gap ..."""
    max_appearance_distance: float = 0.45
    """... and the Hellinger distance between its colour histogram and the subject's is at most this
    (0: identical colours, 1: no colour in common)."""
    max_mask_outside_keypoints: float = 0.1
    """... at most this share of its mask lies beyond the box of its keypoints (grown by 15% of its
    size) ..."""
    max_foreign_colours: float = 0.15
    """... and at most this share of its mask is in colours the subject hardly shows (a patch of
    someone else) ..."""
    appearance_update: float = 0.1
    """The subject's histogram follows a kept frame's by this fraction (slow lighting changes), when
    that frame's distance is under two thirds of the limit (a frame with a little of someone else in it
    must not teach the track their colours)."""
    proposal_windows: list = field(default_factory=lambda: [0.6, 0.4])
    """Sides (fractions of the frame's shorter side) of the overlapping windows searched for people
    when choosing the subject, besides the whole frame."""


@dataclass
class VideoConfig:
    """A user's own monocular video: frames, person masks, keypoints, camera and a body fit."""

    path: str = ""
    """The video file (anything ffmpeg reads: mp4, mov, ...); passed to ``prepare_video`` as video_path."""
    start_frame: int = 0
    """First video frame used (0-based)."""
    frame_stride: int = 1
    """Use every k-th video frame from start_frame."""
    max_frames: int | None = None
    """At most this many frames (after the stride); None: to the end of the video."""
    max_side: int | None = 512
    """Longer side of the frames written, in pixels, after the crop (a crop is resampled to exactly
    this; without a crop the frame is only ever scaled down); None keeps the crop's own size."""
    intrinsics: list | None = None
    """[fx, fy, cx, cy] in pixels of the original video (before max_side scaling); None: derived from
    fov_deg with the principal point at the image centre."""
    fov_deg: float = 60.0
    """Field of view (degrees) across the longer image side, used when intrinsics is None (a phone's
    main camera is about 65-70, a webcam 60-78)."""
    camera_pitch_deg: float = 0.0
    """How far the camera looks down (degrees; negative: up). One view cannot tell the camera's tilt,
    so the world is built level with the camera unless this is given; world y is up either way, and
    an orbit render circles the person only when the tilt is right."""
    person: Any = "largest"
    """Who the subject is, chosen in the first frame where anyone is found: 'largest', 'center' (box
    nearest the frame centre) or [x0, y0, x1, y1], a box in the video's pixels around them."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """How the subject is followed from frame to frame."""
    track_max_side: int | None = 960
    """Longer side (pixels) of the frames the subject is tracked in; None: the video's size."""
    crop: str = "person"
    """'person': cut every frame to the person's region before scaling to max_side (one crop for a
    static camera; one per frame when the camera moves or the person crosses the frame); 'none':
    scale the whole frame."""
    crop_margin: float = 0.15
    """Margin added on every side of the person's region, as a fraction of its extent."""
    mask_threshold: float = 0.5
    """The person mask is MediaPipe's segmentation probability above this value."""
    min_component_fraction: float = 0.05
    """Mask blobs smaller than this fraction of the largest blob are dropped (stray detections)."""
    on_missing_person: str = "drop"
    """A frame where the subject is not found, or where the detection disagrees with the track:
    'drop' (skip it with a warning; info.json and the data report say why, the overlay marks it) or
    'error' (stop, naming the frame)."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Body fitting settings."""
    align_to_masks: bool = True
    """After the keypoint fit, align the body to the visible masks too (and the keypoints again):
    limbs the detector missed, behind an occluder or in motion blur, follow what the mask shows
    (:mod:`occfusion_core.body.align`)."""
    occlusion: SimulatedOcclusionConfig = field(default_factory=SimulatedOcclusionConfig)
    """Simulated occlusion on the video's frames (kind 'none' keeps the clip as it is)."""


@dataclass
class ZJUConfig:
    """A ZJU-MoCap subject in the refined (Instant-NVR / GauHuman) layout."""

    path: str = ""
    """The subject folder holding annots.npy, the camera image folders, mask folders and smpl_params/."""
    subject: str | None = None
    """Subject id for the occlusion table (377, 386, 387, 392, 393, 394); None: the last '_'-separated
    token of the folder name (my_377, CoreView_377)."""
    camera: int = 0
    """Training camera index into annots['cams'] (OccFusion: 0; GauHuman: 4)."""
    frame_start: int = 0
    """First training frame index."""
    frame_stop: int = 500
    """Training frames are frame_start, frame_start + frame_stride, ... below this index."""
    frame_stride: int = 5
    """Training frame interval (protocol: 5, so 100 frames)."""
    image_scaling: float = 0.5
    """Resize factor of images, masks and intrinsics (protocol: 0.5, 1024 -> 512 pixels)."""
    undistort: bool = True
    """Undistort images and masks with the cameras' distortion coefficients D (as GauHuman does)."""
    occlusion: str = "zju_band"
    """'zju_band' (OccNeRF's per-subject band, :data:`occfusion_core.data.zju.ZJU_OCCLUSION`, on the
    training frames) or 'none'."""
    band_mid_px: float | None = None
    """Band centre column in full-resolution pixels; None: the subject's value from the table."""
    band_width_px: float | None = None
    """Band width in full-resolution pixels; None: the subject's value from the table."""
    occluded_frames: str = "fraction"
    """Which training frames are occluded: 'fraction' (the first occluded_frames_fraction of the
    selected frames, as OccFusion) or 'subject_range' (frames with index below the subject's OccNeRF
    'range', e.g. 456 for 377)."""
    occluded_frames_fraction: float = 0.8
    """With occluded_frames 'fraction': fraction of the training frames, from the first."""
    band_fill: str = "background"
    """What the band shows: 'background' (per-pixel median of the training frames where no person
    covers the pixel), 'white' or 'black'."""
    heldout_views: int | None = None
    """Number of evaluation cameras (the cameras after the training camera, in order); None: all
    other cameras (22 in ZJU-MoCap)."""
    heldout_frame_stride: int = 30
    """Evaluation frames: every k-th frame (protocol: 0, 30, ..., 480) that is also a training frame."""
    heldout_frame_stop: int = 481
    """Evaluation frames are below this index."""
