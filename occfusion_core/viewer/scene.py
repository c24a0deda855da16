"""What the viewer shows, without the UI: a result's files, and the avatar's Gaussian splats and body
mesh in a training frame's pose or a motion's.

The splats are posed exactly as the renders are (:func:`occfusion_core.stages.render.render_all`):
the final model, :meth:`HumanGaussians.deform` with the per-frame refined body parameters the
model was trained with (:func:`training_body_params`), colours from the SH coefficients seen from
the frame's camera. Motions are placed as the animate stage places them
(:func:`occfusion_core.stages.animate.motion_placement`, with ``AnimateConfig``'s default heading):
turned towards the first training camera, their mean pelvis on the training frames' and their lowest
point on the training frames' floor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import InputError, read_json

log = logging.getLogger(__name__)

PROXY_BODY_MODEL = Path("body_model") / "proxy_smpl.pkl"
"""The workflow's generated body model, relative to the results folder (rules/common.smk ``body_model_file``)."""

MOTIONS_FOLDER = "motions"
"""Motion files the workflow writes (``results/motions/*.npz``), relative to the results folder."""


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewerInputs:
    """The files the viewer reads for one ``results/<subject>/<variant>`` folder.

    Attributes:
        variant_dir: ``results/<subject>/<variant>``.
        model_path: the variant's final ``stage3/model.pt`` or ``stage1/model.pt``.
        data_dir: the subject's sequence, ``results/<subject>/data``.
        body_model_path: the SMPL(-format) file the model was trained on.
        motion_paths: motion files offered besides the training poses.
    """

    variant_dir: Path
    model_path: Path
    data_dir: Path
    body_model_path: Path
    motion_paths: tuple[Path, ...] = ()


def final_model_path(variant_dir: str | Path) -> Path:
    """The variant's final model: stage 3's where it ran stage 3, else stage 1's (rules/common.smk
    ``final_model``).

    Raises:
        InputError: naming the folder, when it or both models are missing.
    """
    variant_dir = Path(variant_dir)
    if not variant_dir.is_dir():
        raise InputError(variant_dir, "results folder is missing (expected results/<subject>/<variant>)")
    for stage in ("stage3", "stage1"):
        path = variant_dir / stage / "model.pt"
        if path.is_file():
            if stage == "stage1" and (variant_dir / "stage2").is_dir():
                log.warning("%s: stage 3 has not finished; showing the stage-1 model", variant_dir)
            return path
    raise InputError(
        variant_dir,
        "holds no trained model (neither stage3/model.pt nor stage1/model.pt); run the workflow for this variant first",
    )


def find_viewer_inputs(
    variant_dir: str | Path, body_model: str | Path | None = None, motions: Iterable[str | Path] = ()
) -> ViewerInputs:
    """Locate everything the viewer needs, checking it exists before any server starts.

    Args:
        variant_dir: ``results/<subject>/<variant>``.
        body_model: the SMPL file the workflow was configured with (``body_model.path``); None: the
            workflow's proxy body, ``results/body_model/proxy_smpl.pkl``.
        motions: motion files to offer, besides those of the variant's animate stage
            (:func:`listed_motions`) and the workflow's built-in ones (``results/motions/*.npz``).

    Raises:
        InputError: naming the first missing file or folder.
    """
    variant_dir = Path(variant_dir)
    model_path = final_model_path(variant_dir)
    results_dir = variant_dir.parent.parent
    data_dir = variant_dir.parent / "data"
    if not (data_dir / "metadata.json").is_file():
        raise InputError(
            data_dir,
            "the subject's sequence (with metadata.json) is missing; the viewer poses the "
            "avatar with its body parameters",
        )
    if body_model is None:
        body_path = results_dir / PROXY_BODY_MODEL
        if not body_path.is_file():
            raise InputError(
                body_path,
                "body model is missing; pass --body-model with the SMPL file the workflow "
                "was configured with (body_model.path)",
            )
    else:
        body_path = Path(body_model)
        if not body_path.is_file():
            raise InputError(body_path, "body model file is missing")
    motion_paths = [Path(p) for p in motions]
    for path in motion_paths:
        if not path.is_file():
            raise InputError(path, "motion file is missing")
    for path in listed_motions(variant_dir) + sorted((results_dir / MOTIONS_FOLDER).glob("*.npz")):
        if path not in motion_paths:
            motion_paths.append(path)
    return ViewerInputs(variant_dir, model_path, data_dir, body_path, tuple(motion_paths))


def listed_motions(variant_dir: Path) -> list[Path]:
    """The motion files of the variant's ``animate`` settings, as its animate stage recorded them in
    ``animate/summary.json`` (``{"motions": {name: {"file": path}}}``, rules/animate.smk); [] where
    it has not run. A missing listed file is skipped with a warning (the results may have moved)."""
    summary_path = variant_dir / "animate" / "summary.json"
    if not summary_path.is_file():
        return []
    try:
        motions = read_json(summary_path).get("motions", {})
        # the workflow records paths relative to its working folder, the results folder's parent
        workdir = variant_dir.parent.parent.parent
        files = [workdir / entry["file"] for entry in motions.values()]
    except (InputError, AttributeError, KeyError, TypeError) as err:
        log.warning(
            "%s: cannot read its motion list (%s); motions are taken from results/motions only", summary_path, err
        )
        return []
    found = [path for path in files if path.is_file()]
    for path in set(files) - set(found):
        log.warning("%s lists %s, which is missing", summary_path, path)
    return found


# ----------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------


@dataclass
class BodyPose:
    """One body's parameters: poses (72,) axis-angle, root first; betas (10,); trans (3,); float32."""

    poses: torch.Tensor
    betas: torch.Tensor
    trans: torch.Tensor


@dataclass
class PoseSequence:
    """A named run of body poses the viewer can scrub through.

    Attributes:
        name: shown in the UI.
        poses: (T, 72); trans: (T, 3); betas: (10,) or (T, 10); float32.
        fps: playback rate.
        training: True for the training frames (each frame seen from its own camera).
    """

    name: str
    poses: torch.Tensor
    trans: torch.Tensor
    betas: torch.Tensor
    fps: float
    training: bool = False

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    def pose(self, index: int) -> BodyPose:
        betas = self.betas if self.betas.ndim == 1 else self.betas[index]
        return BodyPose(self.poses[index], betas, self.trans[index])


def load_motions(paths: Iterable[Path], body, placement, betas: torch.Tensor) -> list[PoseSequence]:
    """Motion files as pose sequences placed in the training scene as the animate stage places them
    (:func:`occfusion_core.stages.animate.placed_motion`, every frame of the clip); a file that does not
    load is skipped with a warning, so that a bad motion does not keep the avatar from showing.

    Args:
        paths: motion files (``occfusion_core.data.motion_files`` formats).
        body: the body model.
        placement: the scene's :class:`~occfusion_core.stages.animate.MotionPlacement`.
        betas: (10,) the avatar's shape, on the body's device.
    """
    from ..data.motion_files import load_motion
    from ..stages.animate import placed_motion

    sequences = []
    for path in paths:
        try:
            clip = load_motion(path)
        except (ValueError, OSError) as err:  # InputError is a ValueError
            log.warning("skipping motion %s: %s", path, err)
            continue
        poses, trans, _, _ = placed_motion(body, clip.poses, clip.trans, placement, betas)
        sequences.append(
            PoseSequence(
                str(clip.name),
                torch.from_numpy(poses).float(),
                torch.from_numpy(trans).float(),
                betas.detach().cpu(),
                float(clip.fps),
            )
        )
    return sequences


# ----------------------------------------------------------------------------------------------
# Splats and mesh
# ----------------------------------------------------------------------------------------------


@dataclass
class SplatArrays:
    """Gaussian splats for viser's ``scene.add_gaussian_splats``, float32.

    Attributes:
        centers: (N, 3) world positions.
        covariances: (N, 3, 3) world covariances, symmetric positive semi-definite.
        rgbs: (N, 3) colours in [0, 1].
        opacities: (N, 1) in [0, 1].
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray


@dataclass
class MeshArrays:
    """A triangle mesh for viser's ``scene.add_mesh_simple``: vertices (V, 3) float32, faces (F, 3) uint32."""

    vertices: np.ndarray
    faces: np.ndarray


@dataclass
class CameraView:
    """Where the browser's camera starts: position, look_at, up (3,) world; vertical fov in radians."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float


class AvatarScene:
    """A trained avatar, its body and the pose sequences it can be shown in.

    Args:
        model: the trained :class:`~occfusion_core.gaussians.human.HumanGaussians` (eval mode).
        body: the :class:`~occfusion_core.body.model.BodyModel` it was trained on.
        training: the training frames' body parameters (:func:`training_body_params`).
        cameras: the training frames' cameras, one per frame.
        view_frame: the frame SH colours are evaluated in ("canonical" or "world"; the saved
            ``sh_view_frame``).
        motions: further pose sequences.
        description: a line about the model for the UI.
    """

    def __init__(
        self,
        model,
        body,
        training: PoseSequence,
        cameras: list,
        view_frame: str,
        motions: Iterable[PoseSequence] = (),
        description: str = "",
    ):
        self.model, self.body, self.view_frame, self.description = model, body, view_frame, description
        self.cameras = cameras
        self.sequences: dict[str, PoseSequence] = {training.name: training}
        for motion in motions:
            name, k = motion.name, 2
            while name in self.sequences:  # two files may carry the same clip name
                name, k = f"{motion.name} ({k})", k + 1
            motion.name = name
            self.sequences[name] = motion
        self.faces = body.faces.detach().cpu().numpy().astype(np.uint32)

    @classmethod
    def load(cls, inputs: ViewerInputs, device: str = "cpu") -> "AvatarScene":
        """Read the model, body and sequence of :func:`find_viewer_inputs`' result."""
        from ..body.model import load_body_model
        from ..config import AnimateConfig
        from ..data.sequence import read_sequence
        from ..stages.animate import motion_placement
        from ..stages.device import pick_device
        from ..stages.trained_model import load_trained_model, training_body_params

        torch_device = pick_device(device)
        seq = read_sequence(inputs.data_dir)
        body = load_body_model(inputs.body_model_path).to(torch_device)
        model, saved = load_trained_model(inputs.model_path, body, torch_device)
        params, body_source = training_body_params(seq, saved)
        fps = seq.info.get("fps")
        fps = float(fps) if isinstance(fps, (int, float)) and fps > 0 else 25.0
        training = PoseSequence(
            "training frames", params["poses"], params["trans"], params["betas"], fps, training=True
        )
        cameras = [seq.camera(name) for name in seq.frames]
        motions = []
        if inputs.motion_paths:
            # as the animate stage: the avatar's one shape, the scene placement of its default heading
            betas = params["betas"].mean(0).to(torch_device)
            placement = motion_placement(body, params, cameras[0], betas, AnimateConfig().heading)
            motions = load_motions(inputs.motion_paths, body, placement, betas)
        stage_model = f"{inputs.model_path.parent.name}/{inputs.model_path.name}"
        description = f"{stage_model}, {model.num_gaussians} Gaussians; body parameters: {body_source}"
        return cls(
            model,
            body,
            training,
            cameras,
            saved["config"].get("sh_view_frame", "world"),
            motions,
            description,
        )

    @property
    def training(self) -> PoseSequence:
        return next(s for s in self.sequences.values() if s.training)

    def camera_for(self, sequence: PoseSequence, index: int):
        """The camera whose view sets the SH colours: the frame's own for a training frame, the first
        frame's for a motion (as the render stage's novel poses)."""
        return self.cameras[index] if sequence.training else self.cameras[0]

    @torch.no_grad()
    def splats(self, pose: BodyPose, camera) -> SplatArrays:
        """The Gaussians deformed to ``pose`` with their colours seen from ``camera``'s centre."""
        from ..render.sh import sh_to_rgb, view_directions

        dev = self.model.xyz.device
        deformed = self.model.deform(pose.poses.to(dev), pose.betas.to(dev), pose.trans.to(dev))
        transforms = deformed.transforms if self.view_frame == "canonical" else None
        colours = sh_to_rgb(deformed.sh_degree, deformed.sh, view_directions(deformed.means, camera.center, transforms))
        covariances = deformed.covars
        covariances = 0.5 * (covariances + covariances.transpose(-1, -2))  # exact symmetry for viser's upper triangle
        as_numpy = lambda t: t.detach().float().cpu().numpy()
        return SplatArrays(
            centers=as_numpy(deformed.means),
            covariances=as_numpy(covariances),
            rgbs=as_numpy(colours.clamp(0.0, 1.0)),
            opacities=as_numpy(deformed.opacities)[:, None],
        )

    @torch.no_grad()
    def mesh(self, pose: BodyPose) -> MeshArrays:
        """The body model's surface in ``pose`` (the posed SMPL vertices, world space)."""
        dev = self.model.xyz.device
        out = self.body(pose.poses[None].to(dev), pose.betas[None].to(dev), pose.trans[None].to(dev))
        return MeshArrays(vertices=out.vertices[0].float().cpu().numpy(), faces=self.faces)

    def initial_view(self) -> CameraView:
        """The first training frame's camera, looking at the body's centre (world up = the camera's
        up, -y of an OpenCV camera)."""
        camera = self.cameras[0]
        center = camera.center.float().cpu().numpy()
        vertices = self.mesh(self.training.pose(0)).vertices
        look_at = (vertices.min(0) + vertices.max(0)) / 2
        up = -camera.R[1].float().cpu().numpy()
        fov = 2.0 * math.atan(camera.height / (2.0 * float(camera.K[1, 1])))
        return CameraView(position=center, look_at=look_at, up=up / np.linalg.norm(up), fov=fov)
