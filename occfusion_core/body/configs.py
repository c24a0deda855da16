"""Configs of the body estimate's three corrections, one dataclass each with a docstring per field
(the project's config convention, :mod:`occfusion_core.config`):

- :class:`FitConfig`: the SMPLify-style fit to a video's keypoints (:mod:`occfusion_core.body.fit`);
- :class:`BodyAlignConfig`: the alignment to each frame's visible evidence
  (:mod:`occfusion_core.body.align`), before stage 0 and after a video's fit;
- :class:`BodyRefineConfig`: the per-frame refinement learnt with the avatar in stages 1 and 3
  (:mod:`occfusion_core.body.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FitConfig:
    """SMPLify-style fit of the body to 2D keypoints and 3D world landmarks (:mod:`occfusion_core.body.fit`)."""

    iterations_global: int = 60
    """Stage 1: Adam steps on global orientation and translation only (torso keypoints)."""
    iterations_pose: int = 200
    """Stage 2: Adam steps on orientation, translation and body pose."""
    iterations_all: int = 120
    """Stage 3: Adam steps on everything, shared shape (betas) included."""
    learning_rate: float = 0.03
    """Adam learning rate of stages 1 and 2 (stage 3 uses half of it)."""
    min_visibility: float = 0.5
    """Keypoints with a detector visibility below this get no weight."""
    robust_sigma: float = 0.1
    """Geman-McClure scale of the 2D term, as a fraction of the person's keypoint box height."""
    weight_2d: float = 1.0
    """Weight of the robust 2D reprojection term (residuals in units of the box height)."""
    weight_3d: float = 0.05
    """Weight of the 3D world-landmark prior (bone directions after aligning orientation)."""
    weight_detector_frame: float = 0.1
    """Weight of the prior that MediaPipe's skeleton is seen along the ray through the hips (squared
    angle, rad^2, of the one free clip-wide offset rotation): anchors the body's lean towards or away
    from the camera, which 2D keypoints barely show. 0 leaves the offset free."""
    weight_pose: float = 1e-4
    """Weight of the quadratic pull of every joint angle towards the rest pose."""
    weight_limits: float = 1.0
    """Weight of the per-joint angle limits (knee/elbow hyper-extension, spine, neck ...)."""
    weight_shape: float = 1e-5
    """Weight of the shape prior ||betas||^2."""
    weight_smooth_pose: float = 0.01
    """Weight of temporal smoothness of joint rotations (squared second differences of the rotation
    matrices between consecutive frames: steady motion is free, jitter is not), for frames 1/30 s
    apart; scaled by (1/30 s / frame interval)^3 for other spacings."""
    weight_smooth_trans: float = 0.1
    """Weight of temporal smoothness of the translation (squared second differences, metres), for
    frames 1/30 s apart; scaled like weight_smooth_pose."""
    progress: bool = True
    """Show a progress bar (tqdm on stderr)."""


@dataclass
class BodyAlignConfig:
    """Alignment of the body estimate to each frame's visible evidence before stage 0 draws from it
    (:mod:`occfusion_core.body.align`). Data terms measure errors in units of the body box height,
    so a weight of 1e4 makes an error of 1% of the height cost 1; the priors are 1 / sigma^2 of the
    correction they allow."""

    enabled: bool = True
    """Align the body before drawing its silhouette (``silhouette``) or its OpenPose canvas (``diffusion``)."""
    rounds: int = 15
    """L-BFGS rounds over all frames at once; the evidence and the nearest-vertex assignments are
    measured again before each (like ICP, the alignment gains more from rounds than from iterations)."""
    iterations_per_round: int = 8
    """L-BFGS iterations per round."""
    refine_shape: bool = False
    """Also correct the shape (one betas correction for all frames); off by default, as masks and
    keypoints hardly constrain it."""
    weight_cover: float = 1e4
    """Weight of the cover term: pixels of the eroded visible mask should have a body vertex nearby."""
    weight_outside: float = 1e4
    """Weight of the outside term: no body vertex on pixels known to be background."""
    weight_keypoints: float = 1e4
    """Weight of the robust 2D keypoint term (where the source has keypoints)."""
    keypoint_min_visibility: float = 0.5
    """Keypoints with a detector visibility below this get no weight."""
    robust_sigma: float = 0.05
    """Geman-McClure scale of the cover and keypoint terms, fraction of the body box height."""
    cover_erosion: float = 0.015
    """The visible mask is eroded by this fraction of the box height before sampling cover pixels:
    clothing and hair stand off the body, so the mask's rim need not lie on it."""
    cover_samples: int = 300
    """Cover pixels sampled per frame."""
    outside_reach: float = 0.03
    """Known-background pixels lie within this fraction of the box height of the person's outline."""
    outline_band: float = 0.06
    """Outline evidence: largest distance between the visible outline and the body's, fraction of the
    box height."""
    max_vertices: int = 2000
    """Body vertices used per frame (every k-th vertex beyond this many)."""
    prior_pose: float = 10.0
    """Weight of the mean squared pose correction (rad^2): 10 lets about 18 degrees through."""
    prior_trans: float = 400.0
    """Weight of the mean squared translation correction (m^2): 400 lets about 5 cm through."""
    prior_shape: float = 1.0
    """Weight of the mean squared refined betas."""
    smooth_pose: float = 5.0
    """Weight of the squared second differences of the joint rotation matrices between frames."""
    smooth_trans: float = 400.0
    """Weight of the squared second differences of the translations (m^2)."""
    gap_rounds: int = 6
    """Frames the detector missed (a run of them behind an occluder) are first crossed one frame at a
    time from their detected neighbours, each aligned alone for this many rounds (0: off); used where
    the caller says which frames had detections (the video source)."""
    gap_anchor_frames: int = 3
    """Only runs of at least this many detected frames anchor a crossing; shorter ones inside an
    occlusion are crossed too (their keypoints still count in the alignment of the whole clip)."""


@dataclass
class BodyRefineConfig:
    enabled: bool = True
    """Learn a correction of the global orientation, body pose and translation of every training
    frame together with the Gaussians (stages 1 and 3)."""
    lr_pose: float = 5e-3
    """Adam learning rate of the pose corrections (radians of axis-angle per step)."""
    lr_trans: float = 1e-3
    """Adam learning rate of the translation corrections (metres per step)."""
    lr_final_fraction: float = 0.05
    """Both rates decay exponentially over each stage to this fraction of their start value."""
    start_iter: int = 0
    """Stage-1 iteration from which the corrections learn (0: from the start; measured on the noisy
    synthetic subject, waiting gained nothing)."""
    prior_pose: float = 0.5
    """Weight of the mean squared pose correction (rad^2) over frames and components, on a joint whose
    body part the frame does not show (behind an occluder): the images cannot correct it, so it
    stays near the estimate."""
    prior_trans: float = 50.0
    """Weight of the mean squared translation correction (m^2) over frames and axes, in a frame that
    shows none of the body."""
    prior_pose_seen: float = 0.01
    """The pose prior's weight on a joint whose body part the frame shows entirely; in between, the
    weight follows the share shown (:func:`occfusion_core.body.refine.seen_share`). Weaker, since the
    images can correct what they show: on the default subject trained without occlusion (the
    ceiling row) visible-pixel PSNR rose from 24.1 to 24.7 dB over the full prior everywhere."""
    prior_trans_seen: float = 1.0
    """The translation prior's weight in a frame that shows the whole body (the share shown,
    averaged over the joints, sets it in between)."""
    seen_reach: float = 0.08
    """A body vertex counts as shown when it projects within this fraction of the body's projected
    height of a visible person pixel (room for the estimate's own error)."""
    smooth_pose: float = 0.05
    """Weight of the mean squared second difference of the refined joint rotation matrices between
    consecutive frames."""
    smooth_trans: float = 50.0
    """Weight of the mean squared second difference of the refined translations (m^2)."""
    refine_shape: bool = False
    """Also learn one correction of the shape (betas) shared by all frames. Off by default: on the
    synthetic subject the images hardly constrain it (the Gaussians absorb most of a shape error) and
    the directions they do not see drift."""
    lr_shape: float = 2e-3
    """Adam learning rate of the shape correction (betas units per step)."""
    prior_shape: float = 1e-3
    """Weight of the mean squared refined betas (the shape estimator's own N(0, 1) prior)."""
