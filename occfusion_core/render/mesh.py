"""Z-buffer rasterizer for triangle meshes, vectorised in torch (CPU or GPU).

It draws the ground truth of the synthetic subject (body, studio, box occluder). It is deliberately a
different renderer from the Gaussian rasterizer: the model being fitted must not be the one that
drew the truth.

Conventions (see :mod:`occfusion_core.render.camera`): OpenCV camera axes; pixel (row i, column j)
is sampled at its centre, continuous coordinates (j + 0.5, i + 0.5), exactly as the Gaussian
rasterizer samples it, so both renders line up to the sub-pixel.

How it works, per call:
1. project the vertices; drop faces with a vertex at or behind the near plane (no clipping) and
   faces with zero screen area;
2. list, for every face, the pixel centres inside its screen bounding box (clamped to the image) as
   (face, pixel) candidate pairs -- at the image sizes used here faces cover a few pixels, so the
   pairs stay few;
3. keep the pairs whose pixel centre passes the three edge tests, with a tie rule that gives a pixel
   centre lying exactly on an edge shared by two faces to exactly one of them;
4. z-buffer: one ``scatter_reduce(amin)`` over an int64 key (float32 depth bits << 22 | face id):
   nearest face wins, ties go to the lower face id, and the result does not depend on the order in
   which the pairs are processed (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from occfusion_core.render.camera import Camera

_FACE_BITS = 22
"""Bits of the z-buffer key that hold the face id (so at most 2**22 faces per call)."""
_MAX_PAIRS_PER_CHUNK = 4_000_000
"""Candidate (face, pixel) pairs processed at once; bounds memory for big faces at high resolution."""


@dataclass
class Fragments:
    """What the rasterizer found at every pixel.

    Attributes:
        face_index: (H, W) long, index of the nearest face covering the pixel centre; -1 where empty.
        bary: (H, W, 3) float32, perspective-correct barycentric weights of that face's three
            vertices at the pixel centre (they sum to 1); 0 where empty.
        depth: (H, W) float32, camera-space z of the surface point; +inf where empty.
    """

    face_index: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(H, W) bool, True where a face covers the pixel centre."""
        return self.face_index >= 0


def rasterize_mesh(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, near: float = 0.01) -> Fragments:
    """Rasterize a triangle mesh with a z-buffer, one sample per pixel at the pixel centre.

    Back faces are not culled (open meshes such as a floor render from both sides); the z-buffer
    picks the nearest surface.

    Args:
        vertices: (V, 3) world coordinates.
        faces: (F, 3) long vertex indices.
        camera: the view (OpenCV axes, pixel centres at +0.5).
        near: faces with any vertex at camera z <= near are dropped, not clipped.

    Returns:
        :class:`Fragments` of size (camera.height, camera.width).
    """
    device = vertices.device
    H, W = camera.height, camera.width
    faces = torch.as_tensor(faces, dtype=torch.long, device=device)
    if faces.shape[0] >= 1 << _FACE_BITS:
        raise ValueError(f"rasterize_mesh: at most {1 << _FACE_BITS} faces, got {faces.shape[0]}")
    cam = camera.to(device, torch.float64)
    verts_cam = cam.world_to_camera(vertices.to(torch.float64))  # (V, 3)
    z = verts_cam[:, 2]
    z_safe = torch.where(z > near, z, torch.ones_like(z))
    K = cam.K
    u = (K[0, 0] * verts_cam[:, 0] + K[0, 1] * verts_cam[:, 1]) / z_safe + K[0, 2]
    v = K[1, 1] * verts_cam[:, 1] / z_safe + K[1, 2]
    uv = torch.stack([u, v], dim=-1)  # (V, 2) continuous pixel coordinates

    face_index = torch.full((H * W,), -1, dtype=torch.long, device=device)
    bary_out = torch.zeros(H * W, 3, dtype=torch.float32, device=device)
    depth_out = torch.full((H * W,), float("inf"), dtype=torch.float32, device=device)
    best_key = torch.full((H * W,), torch.iinfo(torch.int64).max, dtype=torch.long, device=device)

    # Keep faces entirely in front of the near plane, with non-zero screen area.
    in_front = (z[faces] > near).all(dim=1)
    tri = uv[faces]  # (F, 3, 2)
    area = _edge(tri[:, 0], tri[:, 1], tri[:, 2])  # twice the signed screen area
    keep = in_front & (area != 0)
    # Candidate pixels: centres j + 0.5 within [u_min, u_max]; clamp before the integer cast so that
    # vertices near the near plane (huge u) cannot overflow.
    lo = tri.amin(dim=1).clamp(-2.0, max(W, H) + 2.0)
    hi = tri.amax(dim=1).clamp(-2.0, max(W, H) + 2.0)
    j0 = torch.ceil(lo[:, 0] - 0.5).clamp(min=0).long()
    j1 = torch.floor(hi[:, 0] - 0.5).clamp(max=W - 1).long()
    i0 = torch.ceil(lo[:, 1] - 0.5).clamp(min=0).long()
    i1 = torch.floor(hi[:, 1] - 0.5).clamp(max=H - 1).long()
    nx, ny = j1 - j0 + 1, i1 - i0 + 1
    keep &= (nx > 0) & (ny > 0)
    face_ids = torch.nonzero(keep).squeeze(1)
    if face_ids.numel() == 0:
        return _fragments(face_index, bary_out, depth_out, H, W)
    kept = _KeptFaces(
        ids=face_ids, vertex_ids=faces[face_ids], i0=i0[face_ids], j0=j0[face_ids], nx=nx[face_ids],
        counts=nx[face_ids] * ny[face_ids],
        edges=_edge_coefficients(uv, faces[face_ids], torch.sign(area[face_ids])),
    )

    # Chunks of whole faces, each at most _MAX_PAIRS_PER_CHUNK pairs (a single huge face may exceed it).
    cum = torch.cumsum(kept.counts, 0)
    chunk_of_face = torch.div(cum - kept.counts, _MAX_PAIRS_PER_CHUNK, rounding_mode="floor")
    for chunk in torch.unique(chunk_of_face).tolist():
        sel = torch.nonzero(chunk_of_face == chunk).squeeze(1)
        _rasterize_chunk(sel, kept, z, W, face_index, bary_out, depth_out, best_key)
    return _fragments(face_index, bary_out, depth_out, H, W)


@dataclass
class _KeptFaces:
    """Per-face data of the faces that may cover a pixel (K of them)."""

    ids: torch.Tensor  # (K,) face index in the input mesh
    vertex_ids: torch.Tensor  # (K, 3)
    i0: torch.Tensor  # (K,) first candidate row
    j0: torch.Tensor  # (K,) first candidate column
    nx: torch.Tensor  # (K,) candidate columns
    counts: torch.Tensor  # (K,) candidate pixels
    edges: tuple  # (A, B, C, tie), each (K, 3): see _edge_coefficients


def _rasterize_chunk(sel, kept: _KeptFaces, z, W, face_index, bary_out, depth_out, best_key) -> None:
    """Rasterize kept faces ``sel`` (indices into ``kept``) into the flat buffers, in place."""
    device = z.device
    counts = kept.counts[sel]
    total = int(counts.sum())
    pair = torch.repeat_interleave(sel, counts)  # (P,) index into kept
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - torch.repeat_interleave(starts, counts)
    row_len = kept.nx[pair]
    col = kept.j0[pair] + local % row_len
    row = kept.i0[pair] + torch.div(local, row_len, rounding_mode="floor")

    A, B, C, tie = (e[pair] for e in kept.edges)  # (P, 3) each
    w = A * (col.to(A.dtype) + 0.5)[:, None] + B * (row.to(A.dtype) + 0.5)[:, None] + C
    inside = ((w > 0) | ((w == 0) & tie)).all(dim=1)
    if not bool(inside.any()):
        return
    pair, pix, lam = pair[inside], (row * W + col)[inside], w[inside]
    lam = lam / lam.sum(dim=-1, keepdim=True)  # screen-space barycentrics
    inv_z = lam / z[kept.vertex_ids[pair]]  # perspective correction: 1/z is linear on screen
    inv_depth = inv_z.sum(dim=-1)
    bary = inv_z / inv_depth[:, None]
    depth = (1.0 / inv_depth).to(torch.float32)
    face = kept.ids[pair]

    # Positive float32 bit patterns sort like the floats, so the key orders by depth, then face id.
    key = (depth.view(torch.int32).to(torch.int64) << _FACE_BITS) | face
    chunk_min = torch.full_like(best_key, torch.iinfo(torch.int64).max)
    chunk_min.scatter_reduce_(0, pix, key, reduce="amin")
    win = (key == chunk_min[pix]) & (key < best_key[pix])
    wpix = pix[win]
    best_key[wpix] = key[win]
    face_index[wpix] = face[win]
    bary_out[wpix] = bary[win].to(torch.float32)
    depth_out[wpix] = depth[win]


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Edge function of a -> b at p, all (..., 2): twice the signed area of triangle (a, b, p)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _edge_coefficients(uv: torch.Tensor, faces: torch.Tensor, orient: torch.Tensor):
    """Oriented edge functions w_k(x, y) = A_k x + B_k y + C_k of each face's three edges.

    w_k belongs to the edge opposite vertex k, is positive inside the face whatever its winding, and
    w_k / sum(w) is vertex k's screen-space barycentric weight. Coefficients are computed from the
    edge's lower vertex index to the higher one and then signed, so two faces sharing an edge get
    bitwise-opposite values at every point (watertight edge tests).

    Tie rule for a pixel centre exactly on an edge: it belongs to the face that the direction
    (1, +epsilon) points into, i.e. where the inside gradient (A, B) has A > 0, or A == 0 and B > 0.
    Faces sharing an edge have opposite gradients, so exactly one of them takes the pixel.

    Args:
        uv: (V, 2) screen coordinates; faces: (K, 3) vertex indices; orient: (K,) sign of the area.
    Returns:
        (A, B, C, tie), each (K, 3); tie is bool.
    """
    ia, ib = faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]  # edge k runs from vertex k+1 to vertex k+2
    flip = ia > ib
    a, b = uv[torch.where(flip, ib, ia)], uv[torch.where(flip, ia, ib)]  # (K, 3, 2)
    A = a[..., 1] - b[..., 1]
    B = b[..., 0] - a[..., 0]
    C = -(A * a[..., 0] + B * a[..., 1])
    sign = torch.where(flip, -1.0, 1.0).to(uv.dtype) * orient[:, None]
    A, B, C = A * sign, B * sign, C * sign
    tie = (A > 0) | ((A == 0) & (B > 0))
    return A, B, C, tie


def _fragments(face_index, bary, depth, H, W) -> Fragments:
    return Fragments(face_index.view(H, W), bary.view(H, W, 3), depth.view(H, W))


def interpolate(fragments: Fragments, vertex_attr: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel with the fragments' barycentrics.

    Args:
        fragments: from :func:`rasterize_mesh` with the same ``faces``.
        vertex_attr: (V, C) attribute per vertex (positions, normals, colours, one-hot labels ...).
        faces: (F, 3) long.

    Returns:
        (H, W, C) interpolated attributes in ``vertex_attr``'s dtype; 0 at empty pixels.
    """
    faces = torch.as_tensor(faces, dtype=torch.long, device=vertex_attr.device)
    mask = fragments.mask
    corner_attr = vertex_attr[faces[fragments.face_index[mask]]]  # (N, 3, C), covered pixels only
    values = (fragments.bary[mask].to(vertex_attr.dtype)[..., None] * corner_attr).sum(dim=-2)
    out = vertex_attr.new_zeros(*mask.shape, vertex_attr.shape[1])
    out[mask] = values
    return out


def silhouette(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, near: float = 0.01) -> torch.Tensor:
    """(H, W) bool: pixels whose centre a face of the mesh covers."""
    return rasterize_mesh(vertices, faces, camera, near).mask


def depth_map(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, near: float = 0.01) -> torch.Tensor:
    """(H, W) float32 camera-space depth of the nearest surface; +inf where empty."""
    return rasterize_mesh(vertices, faces, camera, near).depth


def pixel_ray_directions(camera: Camera) -> torch.Tensor:
    """(H, W, 3) unit world directions of the rays from the camera centre through the pixel centres."""
    j = torch.arange(camera.width, dtype=torch.float64) + 0.5
    i = torch.arange(camera.height, dtype=torch.float64) + 0.5
    ii, jj = torch.meshgrid(i, j, indexing="ij")
    pixels = torch.stack([jj, ii, torch.ones_like(jj)], dim=-1)  # homogeneous pixel centres
    cam = camera.to("cpu", torch.float64)
    d_world = pixels @ torch.linalg.inv(cam.K).T @ cam.R  # R^T d, as row vectors
    return torch.nn.functional.normalize(d_world, dim=-1).to(torch.float32)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(V, 3) unit area-weighted vertex normals of a mesh with (V, 3) vertices and (F, 3) faces.

    Orientation follows the winding (counter-clockwise seen from outside -> outward normals).
    """
    faces = torch.as_tensor(faces, dtype=torch.long, device=vertices.device)
    tri = vertices[faces]  # (F, 3, 3)
    face_n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)  # length = 2 * area
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(0, faces[:, k], face_n)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
