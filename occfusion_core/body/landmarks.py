"""MediaPipe Pose's 33 landmarks and where they sit on the body model.

The landmark-to-body mapping is one matrix: row i of :data:`LANDMARK_FROM_JOINTS45` (33, 45) says which
combination of the body's ``joints45`` (24 SMPL joints, then smplx's vertex joints: nose, eyes, ears,
toes, heels, fingertips) lands where MediaPipe puts landmark i. :data:`LANDMARK_WEIGHTS` (33,) says
how much each landmark counts in a fit (0: unused). :data:`BONES` gives the bone directions the fit
compares with MediaPipe's metric landmarks. The detector itself lives in
:mod:`occfusion_core.data.keypoints`.
"""

from __future__ import annotations

import numpy as np

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
