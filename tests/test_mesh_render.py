"""The z-buffer mesh rasterizer against a plainly written per-pixel ray/triangle reference."""

import time

import numpy as np
import pytest
import torch

from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at
from occfusion_core.render.mesh import (
    depth_map,
    interpolate,
    pixel_ray_directions,
    rasterize_mesh,
    silhouette,
    vertex_normals,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _screen_camera(width: int, height: int, f: float = 10.0) -> Camera:
    """Identity pose, K = diag(f, f, 1) with no principal-point offset: a point (x, y, 1) lands at
    continuous pixel coordinates (f x, f y), so screen-space shapes are easy to write down."""
    K = torch.tensor([[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, 1.0]])
    return Camera(K, torch.eye(4), width, height)


def _screen_mesh(points_uv, faces, f: float = 10.0, z: float = 1.0):
    """Vertices at depth z that project to the given continuous pixel coordinates (u, v)."""
    uv = torch.tensor(points_uv, dtype=torch.float32)
    verts = torch.cat([uv / f * z, torch.full((len(uv), 1), z)], dim=1)
    return verts, torch.tensor(faces)


def _reference(vertices: np.ndarray, faces: np.ndarray, camera: Camera):
    """Per-pixel ray/triangle intersection (Moller-Trumbore), nearest hit; float64, plain loops.

    Returns face index (H, W), depth (H, W) (camera z), barycentrics (H, W, 3) and the smallest
    barycentric margin of the winning hit (H, W) (how far the pixel centre is from an edge).
    """
    H, W = camera.height, camera.width
    K = camera.K.double().numpy()
    R, t = camera.R.double().numpy(), camera.t.double().numpy()
    origin = -R.T @ t
    face_index = -np.ones((H, W), dtype=np.int64)
    depth = np.full((H, W), np.inf)
    bary = np.zeros((H, W, 3))
    margin = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            d = R.T @ np.linalg.solve(K, np.array([j + 0.5, i + 0.5, 1.0]))
            for f, (a, b, c) in enumerate(faces):
                A, B, C = vertices[a], vertices[b], vertices[c]
                e1, e2 = B - A, C - A
                p = np.cross(d, e2)
                det = e1 @ p
                if abs(det) < 1e-12:
                    continue
                s = origin - A
                u = (s @ p) / det
                q = np.cross(s, e1)
                v = (d @ q) / det
                dist = (e2 @ q) / det
                if u < 0 or v < 0 or u + v > 1 or dist <= 0:
                    continue
                z = (R @ (origin + dist * d) + t)[2]
                if z < depth[i, j]:
                    depth[i, j], face_index[i, j] = z, f
                    bary[i, j] = (1 - u - v, u, v)
                    margin[i, j] = min(1 - u - v, u, v)
    return face_index, depth, bary, margin


def test_matches_ray_triangle_reference_on_random_triangles():
    rng = np.random.default_rng(3)
    W, H = 24, 20
    camera = Camera(intrinsics_from_fov(W, H, 50.0), look_at((0.4, 0.3, 3.0), (0.0, 0.0, 0.0)), W, H)
    # Six fat, tilted triangles around the origin at different depths, so they overlap and cross.
    centres = rng.uniform(-0.5, 0.5, size=(6, 3))
    angles = rng.uniform(0, 2 * np.pi, size=(6, 1)) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.3, 0.3, (6, 3))
    radii = rng.uniform(0.5, 0.9, size=(6, 3))
    offsets = np.stack([radii * np.cos(angles), radii * np.sin(angles), rng.uniform(-0.6, 0.6, (6, 3))], -1)
    vertices = (centres[:, None, :] + offsets).reshape(-1, 3)
    faces = np.arange(18).reshape(6, 3)
    ref_face, ref_depth, ref_bary, ref_margin = _reference(vertices, faces, camera)
    frags = rasterize_mesh(torch.tensor(vertices, dtype=torch.float32), torch.tensor(faces), camera)

    # Away from edges (margin) and from depth ties the answer is unambiguous: compare exactly there.
    second_depth = np.full((H, W), np.inf)  # reference depth of the runner-up hit
    for f in range(6):
        fd = _reference(vertices, faces[f : f + 1], camera)[1]
        second_depth = np.where((ref_face != f) & (fd < second_depth), fd, second_depth)
    finite_depth = np.where(np.isinf(ref_depth), 0.0, ref_depth)
    depth_gap = np.where(np.isinf(second_depth), np.inf, np.abs(second_depth - finite_depth))
    clear = ((ref_face < 0) | (ref_margin > 1e-4)) & (depth_gap > 1e-4)
    assert (ref_face >= 0).sum() > 100, "the triangles should cover a good part of the image"
    np.testing.assert_array_equal(frags.face_index.numpy()[clear], ref_face[clear])
    hit = clear & (ref_face >= 0)
    np.testing.assert_allclose(frags.depth.numpy()[hit], ref_depth[hit], rtol=1e-5)
    np.testing.assert_allclose(frags.bary.numpy()[hit], ref_bary[hit], atol=1e-4)
    assert np.isinf(frags.depth.numpy()[ref_face < 0]).all()
    assert (frags.bary.numpy()[ref_face < 0] == 0).all()


def test_pixel_centre_convention_square_covers_exactly_four_pixels():
    # Two triangles covering [0, 2] x [0, 2] in continuous coordinates; the diagonal passes
    # exactly through the centres (0.5, 0.5) and (1.5, 1.5), so the tie rule decides those.
    camera = _screen_camera(4, 4)
    for diagonal in ([[0, 1, 2], [0, 2, 3]], [[0, 1, 3], [1, 2, 3]]):
        verts, faces = _screen_mesh([[0, 0], [2, 0], [2, 2], [0, 2]], diagonal)
        expected = np.zeros((4, 4), dtype=bool)
        expected[:2, :2] = True
        np.testing.assert_array_equal(silhouette(verts, faces, camera).numpy(), expected)
        # Each centre belongs to exactly one of the two triangles: no gap, no double cover.
        per_face = [silhouette(verts, faces[k : k + 1], camera).numpy() for k in range(2)]
        assert not (per_face[0] & per_face[1]).any()
        np.testing.assert_array_equal(per_face[0] | per_face[1], expected)


def test_shared_edges_through_pixel_centres_are_watertight():
    # A fan and a grid whose vertices and edges pass exactly through pixel centres: every centre
    # strictly inside the covered region is drawn by exactly one face, whatever the winding.
    camera = _screen_camera(12, 12)
    n = 5
    pts = [[1.5 + 2 * x, 1.5 + 2 * y] for y in range(n) for x in range(n)]
    faces = []
    for y in range(n - 1):
        for x in range(n - 1):
            a, b, c, d = y * n + x, y * n + x + 1, (y + 1) * n + x + 1, (y + 1) * n + x
            faces += [[a, b, c], [a, d, c]] if (x + y) % 2 else [[a, b, d], [b, c, d]]
    verts, faces = _screen_mesh(pts, faces)
    count = sum(silhouette(verts, faces[k : k + 1], camera).numpy().astype(int) for k in range(len(faces)))
    interior = np.zeros((12, 12), dtype=bool)
    interior[2:9, 2:9] = True  # centres 2.5 .. 8.5, strictly inside [1.5, 9.5]
    assert (count[interior] == 1).all()
    assert (count <= 1).all()
    np.testing.assert_array_equal(silhouette(verts, faces, camera).numpy(), count == 1)


def test_nearest_face_wins_whatever_the_order():
    camera = _screen_camera(8, 8)
    near_v, _ = _screen_mesh([[0, 0], [8, 0], [0, 8]], [[0, 1, 2]], z=2.0)
    far_v, _ = _screen_mesh([[0, 0], [8, 0], [0, 8]], [[0, 1, 2]], z=3.0)
    verts = torch.cat([near_v, far_v])
    for faces, nearest in ((torch.tensor([[0, 1, 2], [3, 4, 5]]), 0), (torch.tensor([[3, 4, 5], [0, 1, 2]]), 1)):
        frags = rasterize_mesh(verts, faces, camera)
        covered = frags.mask.numpy()
        assert covered.sum() > 20
        assert (frags.face_index.numpy()[covered] == nearest).all()
        np.testing.assert_allclose(frags.depth.numpy()[covered], 2.0, rtol=1e-6)


def test_barycentrics_interpolate_vertex_attributes_exactly():
    W, H = 32, 24
    camera = Camera(intrinsics_from_fov(W, H, 60.0), look_at((1.0, -0.5, 2.5), (0.0, 0.0, 0.0)), W, H)
    # A strongly slanted triangle, so perspective correction matters.
    verts = torch.tensor([[-1.0, -0.8, 1.2], [1.2, -0.5, -1.5], [-0.2, 1.0, 0.3]])
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize_mesh(verts, faces, camera)
    mask = frags.mask
    assert mask.sum() > 50
    # World position interpolated at a pixel lies on that pixel's ray, at the rasterizer's depth.
    world = interpolate(frags, verts.double(), faces)[mask]
    uv, z = camera.to("cpu", torch.float64).project(world)
    ii, jj = torch.nonzero(mask, as_tuple=True)
    np.testing.assert_allclose(uv[:, 0].numpy(), jj.numpy() + 0.5, atol=1e-4)
    np.testing.assert_allclose(uv[:, 1].numpy(), ii.numpy() + 0.5, atol=1e-4)
    np.testing.assert_allclose(z.numpy(), frags.depth[mask].numpy(), rtol=1e-5)
    # Any affine function of position interpolates to its value at the surface point.
    M = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 1.5]], dtype=torch.float64)
    attr = verts.double() @ M + torch.tensor([0.25, -3.0], dtype=torch.float64)
    got = interpolate(frags, attr, faces)[mask]
    np.testing.assert_allclose(got.numpy(), (world @ M + torch.tensor([0.25, -3.0], dtype=torch.float64)).numpy(),
                               atol=1e-5)
    assert (interpolate(frags, attr, faces)[~mask] == 0).all()
    np.testing.assert_allclose(frags.bary[mask].sum(-1).numpy(), 1.0, atol=1e-6)


def test_faces_behind_near_plane_and_off_screen_are_dropped():
    camera = _screen_camera(8, 8)
    # One vertex behind the camera: dropped (not clipped); the other, wholly off-screen: nothing.
    behind = torch.tensor([[0.0, 0.0, 1.0], [0.8, 0.0, 1.0], [0.0, 0.8, -1.0]])
    off = torch.tensor([[2.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 3.0, 1.0]])
    verts = torch.cat([behind, off])
    frags = rasterize_mesh(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), camera)
    assert not frags.mask.any()
    assert torch.isinf(depth_map(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), camera)).all()
    # Partly off-screen faces are drawn on the part inside the image.
    part = torch.tensor([[-0.5, 0.2, 1.0], [0.3, 0.2, 1.0], [0.3, 1.5, 1.0]])
    assert silhouette(part, torch.tensor([[0, 1, 2]]), camera).sum() > 3


def test_vertex_normals_and_ray_directions():
    quad = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    normals = vertex_normals(quad, torch.tensor([[0, 1, 2], [0, 2, 3]]))
    np.testing.assert_allclose(normals.numpy(), np.tile([0.0, 0.0, 1.0], (4, 1)), atol=1e-6)
    camera = Camera(intrinsics_from_fov(16, 16, 40.0), look_at((0.0, 0.0, 3.0), (0.0, 0.0, 0.0)), 16, 16)
    rays = pixel_ray_directions(camera)
    # The central pixels look straight at the target (-z); rays are unit length.
    centre = rays[7:9, 7:9].mean(dim=(0, 1))
    np.testing.assert_allclose(torch.nn.functional.normalize(centre, dim=0).numpy(), [0, 0, -1], atol=1e-3)
    np.testing.assert_allclose(rays.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_body_renders_fast_enough(proxy_body):
    """50 frames of the proxy body at 128^2 must take a few seconds at most (printed)."""
    out = proxy_body.forward(torch.zeros(1, 72), torch.zeros(1, 10), torch.zeros(1, 3))
    verts, faces = out.vertices[0], proxy_body.faces
    camera = Camera(intrinsics_from_fov(128, 128, 40.0), look_at((0.0, -0.33, 3.0), (0.0, -0.33, 0.0)), 128, 128)
    start = time.perf_counter()
    for _ in range(10):
        frags = rasterize_mesh(verts, faces, camera)
    per_frame = (time.perf_counter() - start) / 10
    print(f"rasterize {proxy_body.num_vertices} vertices / {faces.shape[0]} faces at 128x128: "
          f"{per_frame * 1000:.1f} ms per frame")
    assert frags.mask.sum() > 1000
    assert per_frame * 50 < 10.0
