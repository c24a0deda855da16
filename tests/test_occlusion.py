"""Occlusion simulation: the ZJU-MoCap band protocol, the moving crate, compositing."""

import numpy as np
import pytest
import torch

from occfusion_core.data.occlusion import (
    apply_occlusion,
    box_mesh,
    moving_box_occluder,
    occluded_frame_count,
    zju_band_masks,
)
from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at
from occfusion_core.render.mesh import rasterize_mesh

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _moving_person_masks(T=10, H=40, W=60):
    """A 'person' (a rectangle with an arm sticking out) drifting right and getting wider."""
    masks = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        left, width = 5 + 3 * t, 10 + t
        masks[t, 8:35, left : left + width] = True
        masks[t, 12:15, left + width : left + width + 4] = True  # arm: widens the horizontal extent
    return masks


def test_occluded_frame_count_rounds_half_up():
    assert occluded_frame_count(50, 0.8) == 40
    assert occluded_frame_count(10, 0.8) == 8
    assert occluded_frame_count(5, 0.5) == 3
    assert occluded_frame_count(7, 0.0) == 0
    assert occluded_frame_count(7, 1.0) == 7
    with pytest.raises(ValueError):
        occluded_frame_count(7, 1.2)


def test_zju_band_follows_the_protocol():
    masks = _moving_person_masks()
    T, H, W = masks.shape
    occ = zju_band_masks(masks, occluded_frames_fraction=0.8, band_width_fraction=0.5)
    assert occ.shape == masks.shape and occ.dtype == bool
    assert occ[:8].any(axis=(1, 2)).all(), "first 80 % of the frames are occluded"
    assert not occ[8:].any(), "the last 20 % are not"
    for t in range(8):
        cols = np.flatnonzero(occ[t].any(axis=0))
        # A vertical band: contiguous columns, every row.
        assert (np.diff(cols) == 1).all()
        assert occ[t][:, cols].all()
        person_cols = np.flatnonzero(masks[t].any(axis=0))
        person_width = person_cols[-1] + 1 - person_cols[0]
        assert cols.size == int(np.floor(0.5 * person_width + 0.5))
        # Centred on the person's horizontal extent, to within half a pixel.
        band_mid = (cols[0] + cols[-1] + 1) / 2
        person_mid = (person_cols[0] + person_cols[-1] + 1) / 2
        assert abs(band_mid - person_mid) <= 0.5
        visible = masks[t] & ~occ[t]
        assert visible.any() and (masks[t] & occ[t]).any()


def test_zju_band_never_hides_a_whole_person_and_skips_empty_frames():
    masks = np.zeros((4, 10, 10), dtype=bool)
    masks[0, 2:8, 4:5] = True  # one column wide: nothing can be hidden without hiding all
    masks[1, 2:8, 4:6] = True  # two columns wide: one column hidden
    masks[3, 2:8, 1:9] = True
    occ = zju_band_masks(masks, occluded_frames_fraction=1.0, band_width_fraction=0.9)
    assert not occ[0].any()
    assert occ[1].any(axis=0).sum() == 1
    assert not occ[2].any()  # empty mask: no band
    assert (masks[3] & ~occ[3]).any()
    with pytest.raises(ValueError):
        zju_band_masks(masks, band_width_fraction=1.0)


def test_apply_occlusion_composites_and_derives_visible_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    background = np.full_like(image, 17)
    full = np.zeros((6, 7), dtype=bool)
    full[1:5, 2:6] = True
    occ = np.zeros((6, 7), dtype=bool)
    occ[:, 3:5] = True
    out, visible = apply_occlusion(image, full, occ, background)
    assert out.dtype == np.uint8
    assert (out[occ] == 17).all() and (out[~occ] == image[~occ]).all()
    np.testing.assert_array_equal(visible, full & ~occ)
    out_const, _ = apply_occlusion(image.astype(np.float32) / 255, full, occ, np.array([1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(out_const[occ], np.tile([1.0, 0.0, 0.0], (int(occ.sum()), 1)))


def _person_scene(T=10, W=64, H=64):
    """A flat 'person' (a 0.5 x 1.6 m box) 3 m in front of the camera, with a forward-reaching
    'arm' nearer the camera than the crate will be."""
    camera = Camera(intrinsics_from_fov(W, H, 40.0), look_at((0.0, 0.0, 3.0), (0.0, 0.0, 0.0)), W, H)
    body_v, body_f, _, _ = box_mesh((0.0, 0.0, 0.0), np.eye(3), (0.5, 1.6, 0.3))
    arm_v, arm_f, _, _ = box_mesh((0.15, -0.2, 1.9), np.eye(3), (0.06, 0.06, 0.3))  # 1.05 m from camera
    verts = torch.cat([body_v, arm_v])
    faces = torch.cat([body_f, arm_f + body_v.shape[0]])
    frags = rasterize_mesh(verts, faces, camera)
    depth = np.repeat(frags.depth.numpy()[None], T, axis=0)
    arm_pixels = (frags.face_index.numpy() >= body_f.shape[0])
    centres = np.zeros((T, 3))
    return camera, depth, arm_pixels, centres


def test_moving_box_occludes_only_in_front_and_moves_across():
    camera, depth, arm_pixels, centres = _person_scene()
    person = np.isfinite(depth)
    box = moving_box_occluder(camera, centres, depth, occluded_frames_fraction=0.8, floor_y=-0.8,
                              up=(0.0, 1.0, 0.0), seed=0)
    assert box.mask.shape == depth.shape and box.rgb.shape == depth.shape + (3,)
    assert box.mask[:8].any(axis=(1, 2)).all() and not box.mask[8:].any()
    # The crate has a real depth: between camera and person, and it never covers the nearer arm.
    assert arm_pixels.any()
    assert not (box.mask & arm_pixels[None]).any()
    covered = np.isfinite(box.depth)
    torso = covered & person & ~arm_pixels[None]
    behind_arm = covered & arm_pixels[None]
    assert torso.any() and behind_arm.any(), "the crate passes both in front of the torso and behind the arm"
    assert (box.depth[torso] < depth[torso]).all() and (box.depth[behind_arm] > depth[behind_arm]).all()
    # It hides a large part of the person in some frames but never all of it.
    hidden = (box.mask & person).sum(axis=(1, 2)) / person.sum(axis=(1, 2))
    assert hidden[:8].max() > 0.4
    assert ((person & ~box.mask).sum(axis=(1, 2)) > 0).all()
    # It slides across: the horizontal centroid of its pixels moves monotonically.
    cols = [np.nonzero(box.mask[t])[1].mean() for t in range(8)]
    steps = np.diff(cols)
    assert (steps > 0).all() or (steps < 0).all()
    # Wooden texture, not a flat colour; zero where absent.
    assert box.rgb[box.mask].std(axis=0).max() > 0.03
    assert (box.rgb[~box.mask] == 0).all()


def test_moving_box_is_deterministic_and_seeded():
    camera, depth, _, centres = _person_scene(T=6)
    a = moving_box_occluder(camera, centres, depth, floor_y=-0.8, up=(0.0, 1.0, 0.0), seed=4)
    b = moving_box_occluder(camera, centres, depth, floor_y=-0.8, up=(0.0, 1.0, 0.0), seed=4)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.mask, b.mask)
    others = [moving_box_occluder(camera, centres, depth, floor_y=-0.8, up=(0.0, 1.0, 0.0), seed=s)
              for s in range(1, 4)]
    assert any(not np.array_equal(o.rgb, a.rgb) for o in others)
