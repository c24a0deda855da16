"""A proxy human body in SMPL's file format, generated from simple shapes.

SMPL's model files need a registration and cannot be downloaded here, so the project generates a body
with SMPL's 24 joints, kinematic tree, frame and file layout, and loads it through ``smplx.SMPL``
exactly like a real SMPL file (see ``model.py``). The body is the zero level set of a smooth union of
capsules, ellipsoids and rounded boxes (head, neck, torso, arms, mitten hands with a thumb, legs,
feet), meshed with marching cubes.

SMPL frame: T-pose, y up, the body faces +z, the subject's left side is +x, the pelvis joint near
(0, -0.22, 0), soles at y = -1.15, top of the head near y = +0.5.

How the SMPL quantities are made:
- Skinning weights: every vertex belongs softly to one of five chains (spine with neck and head, two
  arms, two legs with feet) by its distance to the chain's shapes. Along a chain, each joint has a
  gate that rises from 0 to 1 across a band of +-2.5 cm around the joint; a vertex's weight on a bone
  is the product of the gates it has passed times one minus the next gate. So a vertex more than
  2.5 cm on the parent side of a joint has exactly zero weight on that joint and everything below it.
- Joint regressor: each joint is a convex combination of nearby surface vertices (local
  maximum-entropy weights under a Gaussian prior) whose mean is exactly the designed joint centre,
  so ``J_regressor @ v_template`` gives the joints and a shape change that is locally affine moves
  the joint with the surface, as in SMPL.
- Shape directions: height, limb length, girth, shoulder width, head size and belly; the others are
  zero.
- Pose correctives (``posedirs``) are all zero: the proxy has no pose blend shapes.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from ..io import atomic_path

PROXY_VERSION = 2
"""Bumped whenever the generated body changes, so that cached proxy files are rebuilt."""

JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
NUM_JOINTS = 24
NUM_BETAS = 10
NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)  # 207: (R - I) of the 23 non-root joints

SOLE_Y = -1.15
BLEND_HALF_WIDTH = 0.025
"""Half-width (m) of the skinning blend band around each joint."""

# Designed joint centres (m) of the subject's left side and the midline; the right side mirrors x.
_JOINTS_LEFT_AND_MID = {
    "pelvis": (0.0, -0.22, 0.0),
    "left_hip": (0.065, -0.31, 0.0),
    "spine1": (0.0, -0.11, -0.01),
    "left_knee": (0.10, -0.70, 0.0),
    "spine2": (0.0, 0.02, -0.01),
    "left_ankle": (0.09, -1.075, -0.02),
    "spine3": (0.0, 0.08, -0.01),
    "left_foot": (0.11, -1.125, 0.10),
    "neck": (0.0, 0.29, -0.015),
    "left_collar": (0.075, 0.20, -0.01),
    "head": (0.0, 0.37, 0.02),
    "left_shoulder": (0.17, 0.215, -0.01),
    "left_elbow": (0.42, 0.21, -0.02),
    "left_wrist": (0.655, 0.21, -0.02),
    "left_hand": (0.74, 0.205, -0.015),
}

# Surface points of smplx's extra vertex joints (nearest mesh vertex is used), left side and midline.
_KEYPOINT_TARGETS_LEFT_AND_MID = {
    "nose": (0.0, 0.38, 0.14),
    "leye": (0.033, 0.415, 0.13),
    "lear": (0.09, 0.40, 0.02),
    "lthumb": (0.76, 0.19, 0.10),
    "lindex": (0.86, 0.205, 0.02),
    "lmiddle": (0.86, 0.205, -0.005),
    "lring": (0.86, 0.205, -0.03),
    "lpinky": (0.86, 0.205, -0.055),
    "LBigToe": (0.075, -1.135, 0.19),
    "LSmallToe": (0.125, -1.135, 0.17),
    "LHeel": (0.095, -1.15, -0.09),
}
_KEYPOINT_MIRROR = {"leye": "reye", "lear": "rear", "lthumb": "rthumb", "lindex": "rindex",
                    "lmiddle": "rmiddle", "lring": "rring", "lpinky": "rpinky",
                    "LBigToe": "RBigToe", "LSmallToe": "RSmallToe", "LHeel": "RHeel"}

_SMOOTH_UNION_M = 0.025  # blend radius of the smooth union between shapes
_TRUNK_SMOOTH_UNION_M = 0.10  # the torso's parts blend wider (no waist notches)
_MEMBERSHIP_BLEND_M = 0.04  # chains whose surfaces are this close share the vertices between them
_GRID_BOUNDS = ((-0.95, 0.95), (-1.21, 0.56), (-0.17, 0.26))  # (x, y, z) ranges holding the body


def joint_positions() -> np.ndarray:
    """(24, 3) designed joint centres in SMPL order (the regressor reproduces them exactly)."""
    out = np.zeros((NUM_JOINTS, 3))
    for j, name in enumerate(JOINT_NAMES):
        if name.startswith("right_"):
            out[j] = _JOINTS_LEFT_AND_MID["left_" + name[len("right_"):]]
            out[j, 0] *= -1.0
        else:
            out[j] = _JOINTS_LEFT_AND_MID[name]
    return out


# ----------------------------------------------------------------------------------------------
# Signed distance functions, all (N, 3) points -> (N,) distances (negative inside).

_CULL_MARGIN_M = 0.15
"""Shapes are evaluated only within this distance of their bounding box and read as this value
elsewhere. It exceeds the smooth-union radius (_SMOOTH_UNION_M) by more than the values that matter
near the surface, so the surface comes out exactly as without culling."""


class _Shape:
    """A signed distance function with the bounding box of its zero set."""

    def __init__(self, sdf: Callable[[np.ndarray], np.ndarray], lo, hi):
        self.sdf, self.lo, self.hi = sdf, np.asarray(lo, float), np.asarray(hi, float)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        near = np.all((points >= self.lo - _CULL_MARGIN_M) & (points <= self.hi + _CULL_MARGIN_M), axis=1)
        out = np.full(len(points), _CULL_MARGIN_M)
        out[near] = self.sdf(points[near])
        return out


def _norm(v: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N,) Euclidean norms."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def _capsule(a, b, radius_a: float, radius_b: float) -> _Shape:
    """Tapered capsule from ``a`` to ``b`` (radius interpolated along the axis; near-exact SDF)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a

    def sdf(p: np.ndarray) -> np.ndarray:
        t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
        return _norm(p - (a + t[:, None] * ab)) - (radius_a + t * (radius_b - radius_a))

    r = max(radius_a, radius_b)
    return _Shape(sdf, np.minimum(a, b) - r, np.maximum(a, b) + r)


def _ellipsoid(centre, radii) -> _Shape:
    """Ellipsoid (Quilez's first-order distance bound, exact on the surface)."""
    centre, radii = np.asarray(centre, float), np.asarray(radii, float)

    def sdf(p: np.ndarray) -> np.ndarray:
        q = p - centre
        k0 = _norm(q / radii)
        k1 = _norm(q / radii**2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)

    return _Shape(sdf, centre - radii, centre + radii)


def _rounded_box(centre, half_extents, radius: float) -> _Shape:
    """Axis-aligned box with edges rounded by ``radius`` (exact SDF)."""
    centre, half = np.asarray(centre, float), np.asarray(half_extents, float)
    inner = half - radius

    def sdf(p: np.ndarray) -> np.ndarray:
        q = np.abs(p - centre) - inner
        return _norm(np.maximum(q, 0.0)) + np.minimum(q.max(axis=1), 0.0) - radius

    return _Shape(sdf, centre - half, centre + half)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a smooth union of two SDFs with a fillet of size ``k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - 0.25 * k * h * h


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mirror(point) -> tuple[float, float, float]:
    return (-point[0], point[1], point[2])


def _limb_shapes(side: float) -> dict[str, list[_Shape]]:
    """Shapes of one side's arm and leg chains; ``side`` is +1 (left, +x) or -1 (right)."""
    def s(x, y, z):
        return (side * x, y, z)

    arm = [
        _capsule(s(0.06, 0.21, -0.01), s(0.17, 0.215, -0.01), 0.06, 0.055),  # collar and deltoid
        _capsule(s(0.17, 0.215, -0.01), s(0.42, 0.21, -0.02), 0.052, 0.042),  # upper arm
        _capsule(s(0.42, 0.21, -0.02), s(0.655, 0.21, -0.02), 0.042, 0.031),  # forearm
        _rounded_box(s(0.755, 0.205, -0.015), (0.09, 0.019, 0.045), 0.017),  # mitten
        _capsule(s(0.69, 0.195, 0.03), s(0.75, 0.19, 0.08), 0.016, 0.014),  # thumb
    ]
    leg = [
        _capsule(s(0.085, -0.30, 0.0), s(0.10, -0.70, 0.0), 0.085, 0.055),  # thigh
        _capsule(s(0.10, -0.70, 0.0), s(0.09, -1.075, -0.02), 0.052, 0.035),  # shin
        _rounded_box(s(0.095, -1.125, 0.05), (0.045, 0.025, 0.12), 0.022),  # foot, sole at -1.15
    ]
    return {"arm": arm, "leg": leg}


def _chain_sdfs(points: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N, 5) SDF of each chain: spine, left_arm, right_arm, left_leg, right_leg."""
    # the torso's three parts blend with a wide fillet, so that they read as one trunk; that fillet
    # is wider than the culling allows for, so these are evaluated everywhere
    pelvis = _ellipsoid((0.0, -0.30, 0.0), (0.165, 0.12, 0.11)).sdf(points)
    abdomen = _ellipsoid((0.0, -0.10, 0.01), (0.145, 0.17, 0.10)).sdf(points)
    chest = _ellipsoid((0.0, 0.11, -0.005), (0.165, 0.165, 0.11)).sdf(points)
    trunk = _smooth_min(_smooth_min(pelvis, abdomen, _TRUNK_SMOOTH_UNION_M), chest, _TRUNK_SMOOTH_UNION_M)
    neck_and_head = [
        _capsule((0.0, 0.22, -0.015), (0.0, 0.36, 0.0), 0.055, 0.05),
        _ellipsoid((0.0, 0.405, 0.02), (0.078, 0.10, 0.095)),
    ]
    left, right = _limb_shapes(+1.0), _limb_shapes(-1.0)

    def union(values: list[np.ndarray]) -> np.ndarray:
        d = values[0]
        for v in values[1:]:
            d = _smooth_min(d, v, _SMOOTH_UNION_M)
        return d

    spine = union([trunk] + [shape(points) for shape in neck_and_head])
    limbs = [union([shape(points) for shape in shapes])
             for shapes in (left["arm"], right["arm"], left["leg"], right["leg"])]
    return np.stack([spine] + limbs, axis=1)


def _body_sdf(chain_sdf: np.ndarray) -> np.ndarray:
    """(N, 5) chain SDFs -> (N,) SDF of the whole body (smooth union of the chains)."""
    d = chain_sdf[:, 0]
    for c in range(1, chain_sdf.shape[1]):
        d = _smooth_min(d, chain_sdf[:, c], _SMOOTH_UNION_M)
    return d


# ----------------------------------------------------------------------------------------------
# Mesh

def _grid_axis(lo: float, hi: float, step: float, symmetric: bool) -> np.ndarray:
    if symmetric:  # x: samples mirror about 0 so that the two sides come out alike
        n = int(np.ceil(max(-lo, hi) / step))
        return np.arange(-n, n + 1) * step
    return np.arange(np.floor(lo / step), np.ceil(hi / step) + 1) * step


def _largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(adj, directed=False)
    keep_label = np.bincount(labels[faces[:, 0]]).argmax()
    keep = labels == keep_label
    new_index = np.cumsum(keep) - 1
    return verts[keep], new_index[faces[labels[faces[:, 0]] == keep_label]]


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh; positive when the faces wind outwards."""
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _mesh(grid_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the body SDF -> (verts (V, 3) float64, faces (F, 3) int64), outward winding."""
    from skimage.measure import marching_cubes

    axes = [_grid_axis(lo, hi, grid_m, symmetric=(i == 0)) for i, (lo, hi) in enumerate(_GRID_BOUNDS)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    volume = _body_sdf(_chain_sdfs(pts)).reshape(tuple(len(a) for a in axes))
    # the grid's border must lie outside the body, or the surface would be cut open there
    outer_faces = (volume[[0, -1]], volume[:, [0, -1]], volume[:, :, [0, -1]])
    if not all((face > 0).all() for face in outer_faces):
        raise RuntimeError("proxy body: the shapes reach the border of the marching-cubes grid")
    verts, faces, _, _ = marching_cubes(volume, level=0.0, spacing=(grid_m,) * 3,
                                        gradient_direction="ascent", allow_degenerate=False)
    verts = verts.astype(np.float64) + np.array([a[0] for a in axes])
    verts, faces = _largest_component(verts, faces.astype(np.int64))
    if signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


# ----------------------------------------------------------------------------------------------
# Skinning weights

def _plane_gate(joint: np.ndarray, normal) -> Callable[[np.ndarray], np.ndarray]:
    """Gate rising from 0 to 1 across the band |(v - joint) . normal| < BLEND_HALF_WIDTH."""
    normal = np.asarray(normal, float) / np.linalg.norm(normal)

    def gate(v: np.ndarray) -> np.ndarray:
        return _smoothstep(((v - joint) @ normal + BLEND_HALF_WIDTH) / (2.0 * BLEND_HALF_WIDTH))

    return gate


def _chains(joints: np.ndarray) -> list[tuple[int, list[tuple[int, Callable]]]]:
    """Per chain (same order as ``_chain_sdfs``): its root bone and its (joint, gate) list in order."""
    J = {name: joints[j] for j, name in enumerate(JOINT_NAMES)}
    up, down, fwd = (0, 1, 0), (0, -1, 0), (0, 0, 1)

    def ankle_gate(side: str) -> Callable[[np.ndarray], np.ndarray]:
        below = _plane_gate(J[f"{side}_ankle"], down)
        # the front of the foot is foot even where it reaches up to the ankle's height
        ahead = _plane_gate(J[f"{side}_ankle"] + np.array([0.0, 0.0, 0.06]), fwd)
        low = _plane_gate(J[f"{side}_ankle"] + np.array([0.0, 0.03, 0.0]), down)  # not the shin's front
        return lambda v: np.maximum(below(v), ahead(v) * low(v))

    spine = (0, [(JOINT_NAMES.index(n), _plane_gate(J[n], up))
                 for n in ("spine1", "spine2", "spine3", "neck", "head")])
    chains = [spine]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        out = (sign, 0, 0)
        chains.append((9, [(JOINT_NAMES.index(f"{side}_{n}"), _plane_gate(J[f"{side}_{n}"], out))
                           for n in ("collar", "shoulder", "elbow", "wrist", "hand")]))
    for side in ("left", "right"):
        chains.append((0, [
            (JOINT_NAMES.index(f"{side}_hip"), _plane_gate(J[f"{side}_hip"], down)),
            (JOINT_NAMES.index(f"{side}_knee"), _plane_gate(J[f"{side}_knee"], down)),
            (JOINT_NAMES.index(f"{side}_ankle"), ankle_gate(side)),
            (JOINT_NAMES.index(f"{side}_foot"), _plane_gate(J[f"{side}_foot"], fwd)),
        ]))
    return chains


def _chain_membership(chain_sdf: np.ndarray) -> np.ndarray:
    """(V, C) chain SDFs at the vertices -> (V, C) soft assignment, rows summing to 1.

    A chain counts only where its surface is within _MEMBERSHIP_BLEND_M of the nearest chain's, so
    chains blend where they meet (armpits, crotch, neck) and nowhere else.
    """
    behind = chain_sdf - chain_sdf.min(axis=1, keepdims=True)
    m = _smoothstep(1.0 - behind / _MEMBERSHIP_BLEND_M)
    return m / m.sum(axis=1, keepdims=True)


def _skinning_weights(verts: np.ndarray, membership: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(V, 3) vertices, (V, 5) chain membership, (24, 3) joints -> (V, 24) weights, rows sum to 1."""
    weights = np.zeros((len(verts), NUM_JOINTS))
    for c, (root, gates) in enumerate(_chains(joints)):
        passed = np.ones(len(verts))  # product of the gates passed so far
        bone = root
        for joint, gate in gates:
            h = gate(verts)
            weights[:, bone] += membership[:, c] * passed * (1.0 - h)
            passed = passed * h
            bone = joint
        weights[:, bone] += membership[:, c] * passed
    return weights


# ----------------------------------------------------------------------------------------------
# Joint regressor

def _local_max_entropy_weights(points: np.ndarray, target: np.ndarray, sigma: float) -> np.ndarray | None:
    """Non-negative weights (N,) over ``points`` (N, 3), summing to 1, with mean exactly ``target``.

    Maximises entropy relative to a Gaussian prior of width ``sigma`` around ``target``: w_i is
    proportional to prior_i exp(lambda . x_i) with x_i = (points_i - target) / sigma, and lambda
    minimises the convex log-partition function log sum_i prior_i exp(lambda . x_i), whose gradient
    is the weighted mean of x. Damped Newton converges in a few steps. Returns None when ``target``
    is not inside the points' convex hull (no such weights exist and lambda diverges).
    """
    x = (points - target) / sigma
    log_prior = -0.5 * (x * x).sum(axis=1)

    def log_partition_and_weights(lam: np.ndarray) -> tuple[float, np.ndarray]:
        s = log_prior + x @ lam
        w = np.exp(s - s.max())
        z = w.sum()
        return float(np.log(z) + s.max()), w / z

    lam = np.zeros(3)
    value, w = log_partition_and_weights(lam)
    for _ in range(60):
        grad = w @ x
        if np.abs(grad).max() < 1e-13:
            return w
        hess = (x * w[:, None]).T @ x - np.outer(grad, grad)
        step = np.linalg.solve(hess + 1e-12 * np.eye(3), grad)
        t = 1.0
        while True:  # backtrack until the (convex) objective does not increase
            new_value, new_w = log_partition_and_weights(lam - t * step)
            if new_value <= value + 1e-14 or t < 1e-6:
                break
            t *= 0.5
        lam, value, w = lam - t * step, new_value, new_w
    return None


def _joint_regressor(verts: np.ndarray, joints: np.ndarray, grid_m: float) -> scipy.sparse.csc_matrix:
    """(V, 3) vertices, (24, 3) joints -> (24, V) sparse regressor with J_regressor @ verts = joints."""
    rows, cols, vals = [], [], []
    for j, target in enumerate(joints):
        dist = np.linalg.norm(verts - target, axis=1)
        # the nearest surface is about the local body radius: a ball a little larger than it cuts
        # out the cross-section around the joint; widen it until it surrounds the joint
        for margin in (1.5, 2.5, 4.0, 6.0):
            reach = dist.min() + margin * grid_m
            near = np.flatnonzero(dist < reach)
            w = _local_max_entropy_weights(verts[near], target, sigma=0.5 * reach)
            if w is not None:
                break
        else:
            raise RuntimeError(f"proxy body: joint {JOINT_NAMES[j]} is outside the mesh")
        rows.append(np.full(len(near), j))
        cols.append(near)
        vals.append(w)
    reg = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(NUM_JOINTS, len(verts)))
    reg.sort_indices()
    return reg


# ----------------------------------------------------------------------------------------------
# Shape directions

def _shape_directions(verts: np.ndarray, membership: np.ndarray, weights: np.ndarray,
                      joints: np.ndarray) -> np.ndarray:
    """(V, 3) template -> (V, 3, 10) displacement per unit beta.

    beta0 height (uniform scale about the soles, about +5 cm of height per unit), beta1 limb length
    (arms and legs stretch along their bones, hands and feet translate; soles stay put), beta2
    girth (radial from the bone axes), beta3 shoulder width, beta4 head size, beta5 belly; 6-9 zero.
    """
    J = {name: joints[j] for j, name in enumerate(JOINT_NAMES)}
    m_spine, m_larm, m_rarm, m_lleg, m_rleg = membership.T
    x, y, z = verts.T
    dirs = np.zeros((len(verts), 3, NUM_BETAS))

    # beta0: 1.65 m * 0.03 = 5 cm per unit
    dirs[:, :, 0] = 0.03 * (verts - np.array([0.0, SOLE_Y, 0.0]))

    # beta1: 4 % longer limbs per unit
    stretch = 0.04
    leg_len = J["left_hip"][1] - J["left_ankle"][1]
    for m_leg, side in ((m_lleg, "left"), (m_rleg, "right")):
        along = np.clip(J[f"{side}_hip"][1] - y, 0.0, leg_len)
        dirs[:, 1, 1] -= stretch * m_leg * along
    dirs[:, 1, 1] += stretch * leg_len  # lift everything so the soles stay at SOLE_Y
    arm_len = J["left_wrist"][0] - J["left_shoulder"][0]
    for m_arm, sign in ((m_larm, 1.0), (m_rarm, -1.0)):
        dirs[:, 0, 1] += sign * stretch * m_arm * np.clip(sign * x - J["left_shoulder"][0], 0.0, arm_len)

    # beta2: 8 % more girth per unit; hands, feet and head keep their size but move with the surface
    girth = 0.08
    head_and_neck = weights[:, JOINT_NAMES.index("head")] + weights[:, JOINT_NAMES.index("neck")]
    torso_radial = np.stack([x, np.zeros_like(x), z - J["spine2"][2]], axis=1)
    dirs[:, :, 2] += girth * (m_spine * (1.0 - head_and_neck))[:, None] * torso_radial
    for m_arm, side, sign in ((m_larm, "left", 1.0), (m_rarm, "right", -1.0)):
        hand = weights[:, JOINT_NAMES.index(f"{side}_wrist")] + weights[:, JOINT_NAMES.index(f"{side}_hand")]
        radial = np.stack([np.zeros_like(x), y - J[f"{side}_elbow"][1], z - J[f"{side}_elbow"][2]], axis=1)
        shift = np.array([sign * J["left_shoulder"][0], 0.0, 0.0])  # the arm rides on the wider chest
        dirs[:, :, 2] += girth * m_arm[:, None] * (radial * (1.0 - hand)[:, None] + shift)
    for m_leg, side in ((m_lleg, "left"), (m_rleg, "right")):
        foot = weights[:, JOINT_NAMES.index(f"{side}_ankle")] + weights[:, JOINT_NAMES.index(f"{side}_foot")]
        axis_x = np.interp(-y, [-J[f"{side}_hip"][1], -J[f"{side}_ankle"][1]],
                           [J[f"{side}_hip"][0], J[f"{side}_ankle"][0]])
        radial = np.stack([x - axis_x, np.zeros_like(x), z], axis=1)
        shift = np.stack([axis_x, np.zeros_like(x), np.zeros_like(x)], axis=1)  # legs ride on the hips
        dirs[:, :, 2] += girth * m_leg[:, None] * (radial * (1.0 - foot)[:, None] + shift)

    # beta3: 1.5 cm wider shoulders per side per unit
    upper_chest = _smoothstep((np.abs(x) - 0.04) / 0.12) * _smoothstep((y - 0.05) / 0.13)
    dirs[:, 0, 3] = 0.015 * np.sign(x) * (m_larm + m_rarm + m_spine * upper_chest)

    # beta4: 8 % larger head per unit, about the neck joint
    head = weights[:, JOINT_NAMES.index("head")]
    dirs[:, :, 4] = 0.08 * head[:, None] * (verts - J["neck"])

    # beta5: belly forward, up to 2 cm per unit
    belly = (np.exp(-(((y + 0.05) / 0.11) ** 2) - (x / 0.12) ** 2) * _smoothstep(z / 0.08) * m_spine)
    dirs[:, 2, 5] = 0.02 * belly
    return dirs


# ----------------------------------------------------------------------------------------------
# Assembly

def _nearest_vertex(verts: np.ndarray, point) -> int:
    return int(np.argmin(np.linalg.norm(verts - np.asarray(point), axis=1)))


def _vertex_ids(verts: np.ndarray) -> dict[str, int]:
    """smplx's extra-joint vertex names (as in ``smplx.vertex_ids.vertex_ids['smplh']``) -> indices."""
    ids = {}
    for name, point in _KEYPOINT_TARGETS_LEFT_AND_MID.items():
        ids[name] = _nearest_vertex(verts, point)
        if name in _KEYPOINT_MIRROR:
            ids[_KEYPOINT_MIRROR[name]] = _nearest_vertex(verts, _mirror(point))
    return ids


def build_proxy_smpl(grid_mm: float = 20.0) -> dict:
    """Generate the proxy body as the dict that SMPL's pickle holds.

    Args:
        grid_mm: marching-cubes grid step in millimetres (20 mm: about 5.5k vertices, 11k faces).

    Returns:
        dict with SMPL's keys ``v_template`` (V, 3) float64, ``f`` (F, 3) int64, ``weights``
        (V, 24) float64, ``J_regressor`` (24, V) scipy.sparse.csc_matrix, ``kintree_table`` (2, 24)
        int64 (row 0 the parents, the root's stored as 4294967295 like SMPL; row 1 the joint ids),
        ``shapedirs`` (V, 3, 10) float64 and ``posedirs`` (V, 3, 207) float64 zeros (the proxy has no
        pose correctives); plus ``vertex_ids`` (smplx's extra-joint vertex names -> indices),
        ``joint_names`` (24 names), ``proxy`` True and ``proxy_version``.
    """
    if not 5.0 <= grid_mm <= 40.0:  # finer is needlessly slow; coarser loses the hands' shape
        raise ValueError(f"proxy body: grid_mm must lie in [5, 40], got {grid_mm}")
    grid_m = grid_mm / 1000.0
    verts, faces = _mesh(grid_m)
    joints = joint_positions()
    membership = _chain_membership(_chain_sdfs(verts))
    weights = _skinning_weights(verts, membership, joints)
    kintree = np.array([[4294967295] + list(SMPL_PARENTS[1:]), list(range(NUM_JOINTS))], dtype=np.int64)
    return {
        "v_template": verts,
        "f": faces,
        "weights": weights,
        "J_regressor": _joint_regressor(verts, joints, grid_m),
        "kintree_table": kintree,
        "shapedirs": _shape_directions(verts, membership, weights, joints),
        "posedirs": np.zeros((len(verts), 3, NUM_POSE_BASIS)),
        "vertex_ids": _vertex_ids(verts),
        "joint_names": list(JOINT_NAMES),
        "proxy": True,
        "proxy_version": PROXY_VERSION,
    }


class _ZerosOnLoad:
    """Pickles as a call to ``numpy.zeros``: the all-zero ``posedirs`` would otherwise take ~25 MB."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(n) for n in shape)

    def __reduce__(self):
        return (np.zeros, (self.shape, "float64"))


def write_proxy_smpl(path: str | os.PathLike, grid_mm: float = 20.0) -> Path:
    """Generate the proxy body and write it atomically as an SMPL-format pickle; returns ``path``.

    Same ``grid_mm`` gives a byte-identical file. Unpickling yields plain numpy / scipy objects.
    """
    path = Path(path)
    data = build_proxy_smpl(grid_mm)
    data["posedirs"] = _ZerosOnLoad(data["posedirs"].shape)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    return path
