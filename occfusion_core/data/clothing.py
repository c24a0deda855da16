"""Clothing and hair that stand off the body, for the synthetic subject.

A real person's outline is not the body model's: a loose shirt flares out at the hem, sleeves and
trouser legs are wider than the limbs, hair has volume. The synthetic subject reproduces that by
displacing every vertex of the body's canonical (T-pose) template along its outward normal by a
garment thickness, and carrying the displacement through the skinning of the same vertex: the
posed person is ``v_posed + (sum_j w_j R_j) d`` where ``d`` is the canonical offset and ``R_j`` the
bone rotations (exactly linear blend skinning of the displaced template). The garments are those of
:mod:`occfusion_core.data.texture` (same dominant-joint rule), so the colours stay where they were.

Styles (:data:`CLOTHING_STYLES`):
- ``fitted``: no offsets; the person is the body model itself (the old default subject).
- ``loose``: shirt 1.5 cm at the chest flaring to 4.5 cm at the hem, sleeves 1.2 cm widening to
  3 cm at the cuff, trousers 1.2 cm widening to 2.4 cm at the ankles, hair 2-4 cm of volume on the
  top and back of the head; skin and shoes stay on the body.
"""

from __future__ import annotations

import torch

from occfusion_core.data.texture import HAIR_BOUNDS, JOINT_GARMENT, SHIRT, TROUSERS, BodyTexture

CLOTHING_STYLES = ("loose", "fitted")

_L_SHOULDER, _R_SHOULDER, _L_ELBOW, _L_KNEE, _L_ANKLE, _HEAD = 16, 17, 18, 4, 7, 15


def outward_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(V, 3) unit vertex normals of a closed mesh, pointing out of the enclosed volume whatever the
    winding of ``faces``."""
    from occfusion_core.render.mesh import vertex_normals

    v = vertices.double()
    a, b, c = (v[faces[:, i]] for i in range(3))
    volume = float((a * torch.linalg.cross(b, c)).sum())  # 6x the signed volume
    normals = vertex_normals(v, faces)
    return torch.nn.functional.normalize(-normals if volume < 0 else normals, dim=-1).to(vertices.dtype)


def _ramp(value: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """0 at ``start``, 1 at ``end``, linear between, clamped."""
    return ((value - start) / (end - start)).clamp(0.0, 1.0)


def clothing_offsets(texture: BodyTexture, faces: torch.Tensor, rest_joints: torch.Tensor,
                     style: str = "loose") -> torch.Tensor:
    """Canonical displacement of every template vertex by the clothing of ``style``.

    Args:
        texture: the subject's :class:`BodyTexture` (template, dominant joints, head landmarks).
        faces: (F, 3) long triangles of the template.
        rest_joints: (24, 3) joints of the template (zero pose, zero shape).
        style: one of :data:`CLOTHING_STYLES`.

    Returns:
        (V, 3) float32 offsets in metres (zeros for ``fitted``).
    """
    if style not in CLOTHING_STYLES:
        raise ValueError(f"synthetic.clothing: {style!r} is not one of {', '.join(CLOTHING_STYLES)}")
    template = texture.v_template
    if style == "fitted":
        return torch.zeros_like(template)
    joint = texture.dominant_joint
    garment = JOINT_GARMENT[joint]
    x, y, z = template.unbind(-1)
    joints = torch.as_tensor(rest_joints, dtype=torch.float32)
    thickness = torch.zeros_like(x)

    sleeve = (joint == _L_SHOULDER) | (joint == _R_SHOULDER)
    torso = (garment == SHIRT) & ~sleeve
    if torso.any():
        chest_y, hem_y = float(joints[9, 1]), float(y[torso].min())
        flare = _ramp(y, chest_y, hem_y)  # 0 at the chest, 1 at the hem
        thickness = torch.where(torso, 0.015 + 0.03 * flare, thickness)
    if sleeve.any():
        shoulder_x, elbow_x = abs(float(joints[_L_SHOULDER, 0])), abs(float(joints[_L_ELBOW, 0]))
        cuff = _ramp(x.abs(), shoulder_x, elbow_x)
        thickness = torch.where(sleeve, 0.012 + 0.018 * cuff, thickness)
    trousers = garment == TROUSERS
    if trousers.any():
        knee_y, ankle_y = float(joints[_L_KNEE, 1]), float(joints[_L_ANKLE, 1])
        thickness = torch.where(trousers, 0.012 + 0.012 * _ramp(y, knee_y, ankle_y), thickness)
    on_head = joint == _HEAD
    if on_head.any():
        lo, hi = texture.head_lo, texture.head_hi
        rel_y = (y - lo[1]) / (hi[1] - lo[1])
        rel_z = (z - lo[2]) / (hi[2] - lo[2])
        top, back_z, back_y = HAIR_BOUNDS
        hair = on_head & ((rel_y > top) | ((rel_z < back_z) & (rel_y > back_y)))
        # fuller on the crown and at the back of the head, thinning towards the hairline
        volume = 0.02 + 0.02 * torch.maximum(_ramp(rel_y, top, 1.0), _ramp(rel_z, back_z, 0.0))
        thickness = torch.where(hair, volume, thickness)
    return outward_normals(template, faces) * thickness[:, None]


def dress(vertices: torch.Tensor, transforms: torch.Tensor, lbs_weights: torch.Tensor,
          offsets: torch.Tensor) -> torch.Tensor:
    """Posed body vertices -> posed person vertices (the canonical offsets carried by the skinning).

    Args:
        vertices: (B, V, 3) posed body vertices (world).
        transforms: (B, J, 4, 4) bone transforms of the same bodies (``BodyOutput.transforms``).
        lbs_weights: (V, J) skinning weights.
        offsets: (V, 3) canonical offsets (:func:`clothing_offsets`).

    Returns:
        (B, V, 3) posed person vertices.
    """
    if not offsets.abs().any():
        return vertices
    rotations = torch.einsum("vj,bjcd->bvcd", lbs_weights.to(transforms), transforms[..., :3, :3])
    return vertices + torch.einsum("bvcd,vd->bvc", rotations, offsets.to(transforms))


def clothing_description(style: str) -> str:
    """One phrase for the subject's notes."""
    if style == "fitted":
        return "fitted: the person's surface is the body model's"
    return ("loose: shirt flaring from 1.5 cm off the body at the chest to 4.5 cm at the hem, sleeves "
            "1.2-3 cm, trousers 1.2-2.4 cm, hair 2-4 cm of volume, so the person's outline is not the "
            "body model's")
