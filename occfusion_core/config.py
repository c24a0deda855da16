"""Typed configs, one dataclass per stage, with a docstring per field.

The workflow's ``config.yaml`` is validated against ``schemas/config.schema.yaml`` before any job
starts; the Snakefile then hands each rule the merged dict for its stage (defaults < stage section <
variant overrides), and the rule's script turns it into one of these dataclasses with
:func:`from_dict`, which refuses unknown keys by name. ``tests/test_config.py`` keeps the schema and
these dataclasses in step.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

# every stage config importable from here (workflow scripts and tests do)
from .body.configs import BodyAlignConfig, BodyRefineConfig, FitConfig  # noqa: F401 (re-exported)
from .priors.configs import GuidanceConfig, InpaintConfig, MaskCompletionConfig  # noqa: F401 (re-exported)

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    A field nests when its type hint (resolved with :func:`typing.get_type_hints`, so postponed
    annotations work) is a dataclass, or an optional one (``X | None``). A nested dict overrides the
    field's own default key by key (``refine: {densify: {interval: 100}}`` keeps stage 3's
    densification on), not the nested class's defaults.

    Raises:
        ConfigError: naming ``where.key`` for an unknown key.
    """
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_in(hints[key])
        if sub is not None and isinstance(value, dict):
            default = _field_default(fields[key])
            if dataclasses.is_dataclass(default):
                value = merge(to_dict(default), value)
            value = from_dict(sub, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _field_default(f: dataclasses.Field):
    """A dataclass field's default value (built by its factory), or None without one."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _dataclass_in(hint) -> type | None:
    """The dataclass a field's type hint names: ``X``, ``X | None`` or ``Optional[X]``; else None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def merge(*dicts: dict | None) -> dict:
    """Recursive merge, later dicts win; nested dicts merge key by key."""
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = v
    return out


@dataclass
class BodyModelConfig:
    path: str | None = None
    """A user's SMPL model file (e.g. SMPL_NEUTRAL.pkl). None: the generated proxy body."""
    proxy_grid_mm: float = 20.0
    """Proxy body: marching-cubes grid step in millimetres (smaller = more vertices)."""


@dataclass
class SyntheticConfig:
    frames: int = 50
    """Number of training frames."""
    width: int = 128
    """Image width in pixels."""
    height: int = 128
    """Image height in pixels."""
    occlusion: str = "zju_band"
    """'zju_band' (central band of the person hidden in the first frames), 'object' (a textured box
    moving in front of the person), 'person' (another person walking past in front) or 'none'."""
    painted_figure: bool = False
    """Paint a life-size figure of a person on the wall behind the subject (a detector's decoy)."""
    occluded_frames_fraction: float = 0.8
    """Fraction of frames, from the first, that carry the occlusion (ZJU-MoCap protocol: 0.8)."""
    band_width_fraction: float = 0.5
    """zju_band: width of the hidden band as a fraction of the person's width (protocol: 0.5)."""
    seed: int = 0
    """Random seed: same seed, same files."""
    pose_noise_deg: float = 5.0
    """Error of the body estimate written to metadata.json, like a monocular pose estimator's: std
    (degrees) of each rotation-vector component of the error composed with every joint rotation,
    global orientation included. 0 writes the exact parameters (gt/clean_metadata.json always has
    them)."""
    trans_noise_m: float = 0.02
    """Std (metres) of the translation error per axis in metadata.json."""
    noise_correlation_frames: float = 3.0
    """Time constant (frames) of the estimate's error: an AR(1) process with coefficient
    exp(-1 / this) per frame, so neighbouring frames err alike as a tracker's estimates do;
    0 gives independent errors per frame."""
    betas_std: float = 1.0
    """Std of the person's true shape coefficients (drawn from the seed; 0: the mean shape)."""
    betas_noise: float = 0.5
    """Std of the error of the shape estimate in metadata.json, per coefficient (one estimate for the
    whole sequence)."""
    clothing: str = "loose"
    """'loose': shirt, sleeves, trousers and hair stand off the body (the person's outline is not the
    body model's); 'fitted': the person is the textured body model itself."""
    turns: float = 1.0
    """Full turns of the body about the vertical axis over the sequence."""
    camera_distance: float = 3.0
    """Training camera distance to the body (metres)."""
    fov_deg: float = 40.0
    """Vertical field of view of every camera."""
    heldout_views: int = 4
    """Number of held-out cameras on a circle around the subject (training azimuth excluded)."""
    heldout_every: int = 5
    """Held-out views are rendered on every k-th frame."""
    background: str = "studio"
    """'studio' (textured wall and floor), 'white' or 'black'."""
    supersample: int = 3
    """Samples per pixel along each axis, averaged like a camera sensor (1 = aliased, one sample)."""


@dataclass
class DensifyConfig:
    enabled: bool = False
    """KL-based clone/split/merge/prune (GauHuman); OccFusion stage 1 keeps it off."""
    start_iter: int = 400
    """First iteration (exclusive) at which densification may run."""
    stop_iter: int = 1000
    """Last iteration (exclusive) at which densification may run."""
    interval: int = 100
    """Iterations between densification steps."""
    grad_threshold: float = 2e-4
    """Mean screen-space position-gradient norm above which a Gaussian is densified."""
    kl_threshold: float = 0.4
    """Clone/split only where the KL divergence to the nearest neighbour exceeds this."""
    merge_kl_threshold: float = 0.1
    """Merge pairs whose KL divergence is below this."""
    percent_dense: float = 0.01
    """Scale (fraction of scene extent) that separates clone (small) from split (large)."""
    min_opacity: float = 0.005
    """Prune Gaussians whose opacity is below this."""
    max_body_distance: float = 0.05
    """Prune Gaussians farther than this (metres) from the nearest canonical body vertex."""
    max_gaussians: int | None = None
    """At most this many Gaussians after a step: the clone/split candidates with the largest
    gradients that fit (None: no cap). Unbounded KL densification keeps doubling the count at
    every step; GauHuman reports about 13k Gaussians per avatar."""


@dataclass
class OptimizeConfig:
    iterations: int = 1200
    """Optimisation steps."""
    seed: int = 0
    """Random seed."""
    backend: str = "auto"
    """Rasterizer backend: 'auto', 'torch', 'cpp', 'gsplat' or 'inria'."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""
    loss_region: str = "visible"
    """'visible': photometric losses on visible person pixels only (OccGauHuman); 'full': on the
    whole frame with the non-person pixels set to the background (GauHuman)."""
    mask_source: str = "visible"
    """Target of the mask loss: 'visible' (input masks), 'complete' (stage-0 masks) or 'ground_truth'
    (the sequence's gt/full_masks: a control that needs ground truth, not a method)."""
    lambda_l1: float = 1.0
    """Weight of the L1 colour loss."""
    lambda_mask: float = 2.0
    """Weight of the squared alpha-vs-mask loss inside the projected body box."""
    lambda_ssim: float = 0.1
    """Weight of (1 - SSIM)."""
    lambda_lpips: float = 0.1
    """Weight of LPIPS-VGG; used only where lpips and its weights are available."""
    sh_degree: int = 3
    """Highest spherical-harmonics degree."""
    sh_increase_every: int = 1000
    """Raise the active SH degree every this many iterations."""
    sh_view_frame: str = "canonical"
    """View directions for SH colours: 'canonical' (rotated into each Gaussian's body frame, so
    appearance can turn with the body) or 'world' (GauHuman)."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    lr_position: float = 1.6e-4
    """Initial learning rate of Gaussian centres (log-linear decay to lr_position_final)."""
    lr_position_final: float = 1.6e-6
    """Final learning rate of Gaussian centres at lr_position_steps."""
    lr_position_steps: int = 30000
    """Steps of the position learning-rate decay (GauHuman: 30000)."""
    lr_feature: float = 2.5e-3
    """Learning rate of SH DC colour; higher SH bands use 1/20 of it."""
    lr_opacity: float = 0.05
    """Learning rate of opacity logits."""
    lr_scaling: float = 5e-3
    """Learning rate of log-scales."""
    lr_rotation: float = 1e-3
    """Learning rate of rotation quaternions."""
    lr_pose_refiner: float = 5e-5
    """Learning rate of the pose-refinement MLP."""
    lr_lbs_offset: float = 5e-5
    """Learning rate of the skinning-weight offset network."""
    pose_refiner: bool = True
    """Learn per-frame joint-rotation corrections from the body pose (GauHuman)."""
    lbs_offsets: bool = True
    """Learn skinning-weight offsets on top of nearest-vertex weights (GauHuman)."""
    lbs_offset_every: int = 8
    """Run the skinning-offset decoder (and let it learn) every this many iterations; between, its
    last offsets are reused. The decoder costs about 70k multiply-adds per Gaussian forward and twice
    that backward, the largest single part of a CPU iteration, while its output moves by at most
    about lr_lbs_offset per step. 1: every iteration (GauHuman). Measured on the synthetic subject
    (128 px, 1200 iterations, one thread): held-out 19.72 / 19.73 / 19.73 dB for 1 / 4 / no decoder,
    stage 1 in 84 / 53 / 43 s (``bench/stage1_quality.py --set lbs_offset_every=4``). On the demo's
    data an iteration that runs it took 45 ms against 19 ms (3.4k Gaussians), and in stage 3 (up to
    13k Gaussians) four times that: at 8 the decoder is a sixth of a CPU iteration's time, not a quarter."""
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Background colour (RGB in [0, 1]); the paper trains on white."""
    checkpoint_every: int = 200
    """Write a resumable checkpoint every this many iterations."""
    log_every: int = 50
    """Log the loss terms every this many iterations."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """KL densification (off in OccFusion stage 1)."""
    sds: GuidanceConfig = field(default_factory=GuidanceConfig)
    """Score distillation on the rendered silhouette (OccFusion stage 1; needs SD weights)."""
    body_refine: BodyRefineConfig = field(default_factory=BodyRefineConfig)
    """Per-frame corrections of the body estimate, learnt with the Gaussians (stages 1 and 3)."""
    pixel_loss_scale: float = 10000.0
    """Factor on every term but SDS (released stage1.py: pixel_loss = 10000 * loss), which sets the
    balance against the SDS weights; without SDS, Adam makes it irrelevant."""


def _refine_densify() -> "DensifyConfig":
    # OccFusion stage 3: every 200 iterations from 200 to 1000 after the stage-1 end
    # (docs/method.md, "Stage 3: refinement").
    return DensifyConfig(enabled=True, start_iter=0, stop_iter=1001, interval=200, max_gaussians=13000)


@dataclass
class RefineConfig:
    iterations: int = 1800
    """Stage-3 iterations after the stage-1 end (the paper: 1800, i.e. 1201..3000)."""
    seed: int = 0
    """Random seed."""
    backend: str = "auto"
    """Rasterizer backend (see OptimizeConfig.backend)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    l1_region: str = "visible"
    """Pixels of the L1 (and SSIM) against the input: 'visible' (the observed person, as stage 1) or
    'box' (released: the body box outside the hidden region, no SSIM)."""
    lambda_l1: float = 1.0
    """Weight of L1 against the input (released, with l1_region 'box': 2.0)."""
    lambda_ssim: float = 0.1
    """Weight of 1 - SSIM against the input on the L1's pixels (released: none)."""
    lambda_mask: float = 0.1
    """Weight of the squared alpha-vs-complete-mask loss in the body box."""
    gen_region: str = "hidden"
    """Pixels of the L1 against the stage-2 frame: 'hidden' (complete mask minus visible) or 'box'
    (released: the whole body-box crop)."""
    lambda_gen_l1: float = 0.1
    """Weight of L1 against the stage-2 inpainted frame."""
    lambda_gen_lpips: float = 0.2
    """Weight of LPIPS-VGG against the stage-2 frame; used only where LPIPS can be computed."""
    checkpoint_every: int = 200
    """Write a resumable checkpoint every this many iterations."""
    log_every: int = 50
    """Log the loss terms every this many iterations."""
    densify: DensifyConfig = field(default_factory=_refine_densify)
    """KL densification; iteration numbers count from the start of stage 3."""
    refine_body: bool = True
    """Keep learning the per-frame body corrections of stage 1 (with stage 1's settings, at the rates
    stage 1 ended with); false keeps them as stage 1 left them."""


@dataclass
class RenderConfig:
    orbit_frames: int = 36
    """Views of the 360-degree orbit."""
    orbit_frame_index: int = 0
    """Training frame whose pose is shown in the orbit."""
    novel_pose_frames: int = 30
    """Frames of the novel-pose sequence."""
    novel_pose_motion: str = "dance"
    """Motion of the novel-pose sequence: 'dance' or 'kick'."""
    fps: int = 15
    """Frame rate of the mp4 files."""
    backend: str = "auto"
    """Rasterizer backend (see OptimizeConfig.backend)."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""


@dataclass
class AnimateConfig:
    motions: list = field(default_factory=lambda: ["walk_wave"])
    """Motions the avatar performs: built-in names ('walk_wave', written to results/motions/) or
    AMASS-style .npz files (docs/motions.md). Each gives ``{name}_{camera}.mp4``, name = the file's
    stem."""
    up_axis: str = "z"
    """Up axis of the listed .npz files: 'z' (AMASS) or 'y' (already in SMPL's y-up frame). Built-in
    motions are written z-up, as AMASS, and always read so."""
    frame_stride: int = 2
    """Render every k-th frame of a motion (a 30 fps clip at 2 plays at 15 fps)."""
    max_frames: int = 36
    """At most this many frames (after the stride) per motion and camera: the cost bound."""
    cameras: list = field(default_factory=lambda: ["train", "orbit"])
    """Views: 'train' (the first training frame's camera, fixed) and/or 'orbit' (a camera circling
    the body at the training camera's distance and height, following it as it moves)."""
    orbit_deg_per_frame: float = 10.0
    """Azimuth step of the orbit camera per rendered frame (10: a full turn in 36 frames)."""
    heading: str = "motion"
    """How a motion is turned about the vertical: 'motion' (its world's +z, where a body at rest
    faces, points at the training camera) or 'camera' (its first frame faces the training camera)."""
    fps: float | None = None
    """Frame rate of the mp4 files; None: the motion's own rate / frame_stride (real time)."""
    backend: str = "auto"
    """Rasterizer backend (see OptimizeConfig.backend)."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""


@dataclass
class MetricsConfig:
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'."""
    lpips: bool = True
    """Compute LPIPS-VGG where the lpips package and its weights are available (else null + reason)."""
    crop_to_body_box: bool = False
    """GauHuman protocol: set pixels outside the projected body box to background before scoring."""
    heldout_body_fit_steps: int = 0
    """Also score the held-out views with each frame's pose and translation first fitted to the view
    (the avatar fixed; test-time pose optimisation, ``heldout_body_fitted`` in metrics.json): this many
    Adam steps per image; 0 skips it. Off by default: about 1 s per held-out image on a CPU thread
    at 40 steps (bench/robustness.py turns it on: 40 steps, within about 0.25 dB of 60)."""


@dataclass
class ExportConfig:
    posed_frame_index: int | None = None
    """Training frame (index in time order) whose pose ``avatar_frame_<name>.ply`` shows; None: the
    middle training frame (docs/exports.md)."""
