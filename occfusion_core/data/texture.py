"""Procedural clothing for the synthetic subject: shirt, trousers, skin, hair and shoes.

Colour is a function of the canonical (T-pose template) surface point and of the dominant skinning
joint there, evaluated per pixel from interpolated canonical positions, so patterns stay crisp at any
resolution and stick to the body as it moves. Only the template, the skinning weights and the rest
joints are used, so the same code dresses the generated proxy body and a real SMPL.

Garments, by dominant joint (SMPL joint order):
- shirt: spine1-3, collars, upper arms. Horizontal stripes; front: a yellow disc logo on the
  subject's left chest; back: a red yoke across the shoulders and a cream band down the spine, so front,
  back, left and right all look different (hidden texture is then measurable).
- trousers: pelvis, thighs, shins. A 3D check pattern.
- skin: neck, forearms, hands, face (with eyes and a mouth on the front of the head).
- hair: top and back of the head.
- shoes: ankles and toes, with a white sole.

Pattern periods (about 0.1 m) are a few pixels wide at 128 px, so they are resolvable there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from occfusion_core.render.camera import Camera
from occfusion_core.render.mesh import interpolate, rasterize_mesh, vertex_normals

SHIRT, TROUSERS, SKIN, HAIR, SHOES = range(5)
GARMENT_NAMES = ("shirt", "trousers", "skin", "hair", "shoes")

JOINT_GARMENT = torch.tensor([
    TROUSERS,  # 0 pelvis
    TROUSERS, TROUSERS,  # 1-2 hips (thighs)
    SHIRT,  # 3 spine1
    TROUSERS, TROUSERS,  # 4-5 knees (shins)
    SHIRT,  # 6 spine2
    SHOES, SHOES,  # 7-8 ankles (feet)
    SHIRT,  # 9 spine3
    SHOES, SHOES,  # 10-11 toes
    SKIN,  # 12 neck
    SHIRT, SHIRT,  # 13-14 collars
    SKIN,  # 15 head (hair is cut out by position)
    SHIRT, SHIRT,  # 16-17 shoulders (upper arms)
    SKIN, SKIN,  # 18-19 elbows (forearms)
    SKIN, SKIN, SKIN, SKIN,  # 20-23 wrists, hands
])
"""(24,) garment of the body part that each joint's skinning weights dominate."""

_HEAD, _SPINE3, _L_SHOULDER, _R_SHOULDER = 15, 9, 16, 17
_SHOE_JOINTS = (7, 8, 10, 11)

_COLOURS = {
    "shirt_a": (0.10, 0.40, 0.62), "shirt_b": (0.93, 0.90, 0.80), "logo": (0.98, 0.74, 0.08),
    "yoke": (0.78, 0.15, 0.13), "trousers_a": (0.62, 0.55, 0.34), "trousers_b": (0.28, 0.31, 0.16),
    "skin": (0.88, 0.66, 0.52), "eye": (0.08, 0.06, 0.06), "mouth": (0.70, 0.24, 0.24),
    "hair": (0.22, 0.13, 0.07), "shoe": (0.55, 0.08, 0.10), "sole": (0.95, 0.95, 0.93),
}

HAIR_BOUNDS = (0.62, 0.55, 0.15)
"""Hair on the head: relative height above (crown), or relative depth below (back) at a relative
height above (nape); relative to the head's box on the template."""

OTHER_PERSON_PALETTE = {
    "shirt_a": (0.80, 0.22, 0.20), "shirt_b": (0.85, 0.80, 0.30), "logo": (0.15, 0.15, 0.15),
    "yoke": (0.20, 0.45, 0.25), "trousers_a": (0.18, 0.22, 0.40), "trousers_b": (0.30, 0.35, 0.55),
    "skin": (0.60, 0.42, 0.30), "hair": (0.05, 0.04, 0.03), "shoe": (0.15, 0.15, 0.18),
}
"""Colours of the second person of the synthetic scene (a red-and-yellow shirt, blue trousers)."""

MURAL_PALETTE = {
    "shirt_a": (0.25, 0.55, 0.30), "shirt_b": (0.30, 0.62, 0.36), "logo": (0.85, 0.85, 0.80),
    "yoke": (0.25, 0.55, 0.30), "trousers_a": (0.45, 0.30, 0.20), "trousers_b": (0.50, 0.34, 0.24),
    "skin": (0.90, 0.72, 0.60), "hair": (0.35, 0.20, 0.10), "shoe": (0.30, 0.20, 0.15),
}
"""Colours of the figure painted on the synthetic studio's wall."""

DEFAULT_LIGHT = (0.3, 0.6, 0.75)
"""World direction towards the light (SMPL world: y up, the body faces +z at rest)."""


@dataclass
class TexturedRender:
    """A textured mesh render.

    Attributes:
        rgb: (H, W, 3) float32 in [0, 1]; 0 outside the mask.
        mask: (H, W) bool, pixels covered by the mesh.
        depth: (H, W) float32 camera z; +inf outside the mask.
    """

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor


class BodyTexture:
    """Procedural clothing attached to a body model's canonical surface.

    Args:
        v_template: (V, 3) canonical T-pose vertices.
        lbs_weights: (V, 24) skinning weights.
        rest_joints: (24, 3) joints of the canonical body (zero pose, zero shape).
    """

    def __init__(self, v_template: torch.Tensor, lbs_weights: torch.Tensor, rest_joints: torch.Tensor,
                 palette: dict | None = None):
        self.colours = {**_COLOURS, **(palette or {})}
        self.v_template = torch.as_tensor(v_template, dtype=torch.float32)
        self.dominant_joint = torch.as_tensor(lbs_weights).argmax(dim=1)  # (V,)
        joints = torch.as_tensor(rest_joints, dtype=torch.float32)
        self.rest_joints = joints
        head = self.v_template[self.dominant_joint == _HEAD]
        torso = self.v_template[JOINT_GARMENT[self.dominant_joint] == SHIRT]
        shoes = self.v_template[torch.isin(self.dominant_joint, torch.tensor(_SHOE_JOINTS))]
        if head.shape[0] == 0 or torso.shape[0] == 0 or shoes.shape[0] == 0:
            raise ValueError("BodyTexture: the skinning weights leave the head, torso or feet without vertices")
        # Landmarks measured on the template, so the layout adapts to the proxy or a real SMPL.
        self.head_lo, self.head_hi = head.amin(0), head.amax(0)
        self.torso_mid_z = float(0.5 * (torso[:, 2].amin() + torso[:, 2].amax()))
        self.sole_y = float(shoes[:, 1].amin())
        self.pelvis_y = float(joints[0, 1])
        one_hot = torch.nn.functional.one_hot(self.dominant_joint, 24).to(torch.float32)
        self._vertex_attributes = torch.cat([self.v_template, one_hot], dim=1)

    @classmethod
    def from_body_model(cls, body_model, palette: dict | None = None) -> "BodyTexture":
        """Dress ``body_model`` (a :class:`occfusion_core.body.model.BodyModel` or the same interface),
        optionally in other colours (``palette``: keys of the default colours, RGB in [0, 1])."""
        zeros = torch.zeros(1, 72)
        rest = body_model.forward(zeros, torch.zeros(1, 10), torch.zeros(1, 3))
        return cls(body_model.v_template, body_model.lbs_weights, rest.joints[0], palette)

    def albedo(self, points: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        """Clothing colour at canonical surface points.

        Args:
            points: (N, 3) canonical (T-pose template) coordinates.
            joint: (N,) long dominant skinning joint at each point.

        Returns:
            (N, 3) float32 RGB in [0, 1].
        """
        points = points.to(torch.float32)
        x, y, z = points.unbind(-1)
        chest = self.rest_joints[_SPINE3].to(points.device)
        garment = JOINT_GARMENT.to(joint.device)[joint]
        c = {k: torch.tensor(v, dtype=torch.float32, device=points.device) for k, v in self.colours.items()}
        out = torch.zeros_like(points)

        def paint(where: torch.Tensor, colour: torch.Tensor) -> None:
            out[:] = torch.where(where[:, None], colour, out)

        # Shirt: horizontal stripes (period 0.1 m) on the torso, rings along the sleeves.
        shirt = garment == SHIRT
        sleeve = (joint == _L_SHOULDER) | (joint == _R_SHOULDER)
        stripe_coord = torch.where(sleeve, x.abs(), y - self.pelvis_y)
        stripe = torch.remainder(torch.floor(stripe_coord / 0.05), 2) == 0
        paint(shirt & stripe, c["shirt_a"])
        paint(shirt & ~stripe, c["shirt_b"])
        front = z > self.torso_mid_z
        logo = (x - (chest[0] + 0.075)) ** 2 + (y - (chest[1] + 0.01)) ** 2 < 0.055 ** 2
        paint(shirt & ~sleeve & front & logo, c["logo"])
        back = shirt & ~sleeve & ~front
        paint(back & (y > chest[1] + 0.03), c["yoke"])
        paint(back & ((x - chest[0]).abs() < 0.035) & (y <= chest[1] + 0.03), c["shirt_b"])

        # Trousers: 3D check (0.08 m cells), seen as a check on every side of the legs.
        cells = torch.floor(x / 0.08) + torch.floor(y / 0.08) + torch.floor(z / 0.08)
        check = torch.remainder(cells, 2) == 0
        trousers = garment == TROUSERS
        paint(trousers & check, c["trousers_a"])
        paint(trousers & ~check, c["trousers_b"])

        # Skin, then the head: hair on the top and back, eyes and mouth on the front.
        paint(garment == SKIN, c["skin"])
        on_head = joint == _HEAD
        lo, hi = self.head_lo.to(points.device), self.head_hi.to(points.device)
        rel_y = (y - lo[1]) / (hi[1] - lo[1])
        rel_z = (z - lo[2]) / (hi[2] - lo[2])
        centre_x = 0.5 * (lo[0] + hi[0])
        top, back_z, back_y = HAIR_BOUNDS
        hair = on_head & ((rel_y > top) | ((rel_z < back_z) & (rel_y > back_y)))
        paint(hair, c["hair"])
        face = on_head & ~hair & (rel_z > 0.6)
        head_h = hi[1] - lo[1]
        eye_r = 0.09 * head_h
        eyes = (((x - centre_x).abs() - 0.16 * head_h) ** 2 + (rel_y - 0.58) ** 2 * head_h ** 2) < eye_r ** 2
        mouth = ((x - centre_x).abs() < 0.14 * head_h) & ((rel_y - 0.30).abs() < 0.045)
        paint(face & eyes, c["eye"])
        paint(face & mouth, c["mouth"])

        # Shoes with a white sole.
        shoes = garment == SHOES
        paint(shoes, c["shoe"])
        paint(shoes & (y < self.sole_y + 0.03), c["sole"])
        return out

    def vertex_attributes(self) -> torch.Tensor:
        """(V, 27): canonical position (3) and one-hot dominant joint (24), for :func:`interpolate`."""
        return self._vertex_attributes

    def render(
        self,
        vertices: torch.Tensor,
        faces: torch.Tensor,
        camera: Camera,
        light_dir=DEFAULT_LIGHT,
        shading: float = 0.25,
    ) -> TexturedRender:
        """Render the dressed body in a posed configuration.

        Args:
            vertices: (V, 3) posed world vertices (same order as the template).
            faces: (F, 3) long.
            camera: the view.
            light_dir: (3,) world direction towards a distant light.
            shading: Lambertian strength s: colour * ((1 - s) + s * max(0, n . l)); 0 = flat albedo.

        Returns:
            :class:`TexturedRender`.
        """
        vertices = vertices.to(torch.float32)
        frags = rasterize_mesh(vertices, faces, camera)
        normals = vertex_normals(vertices, faces)
        per_vertex = torch.cat([self.vertex_attributes().to(vertices.device), vertices, normals], dim=1)
        attrs = interpolate(frags, per_vertex, faces)
        mask = frags.mask
        sel = attrs[mask]  # (N, 33): canonical xyz, one-hot joint (24), world xyz, normal
        colour = self.albedo(sel[:, :3], sel[:, 3:27].argmax(dim=1))
        if shading > 0:
            n = torch.nn.functional.normalize(sel[:, 30:33], dim=-1, eps=1e-12)
            # Face the normal towards the camera: the visible side is the lit side whatever the
            # mesh's winding (a generated proxy may wind the other way round).
            to_camera = camera.center.to(sel) - sel[:, 27:30]
            n = torch.where(((n * to_camera).sum(-1) < 0)[:, None], -n, n)
            light = torch.tensor(light_dir, dtype=torch.float32, device=n.device)
            light = light / light.norm()
            lambert = (n @ light).clamp(min=0.0)
            colour = colour * ((1.0 - shading) + shading * lambert)[:, None]
        rgb = torch.zeros(camera.height, camera.width, 3, device=vertices.device)
        rgb[mask] = colour.clamp(0.0, 1.0)
        return TexturedRender(rgb=rgb, mask=mask, depth=frags.depth)

