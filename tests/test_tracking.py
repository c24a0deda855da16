"""One person followed through a clip, and person-centric framing: the geometry helpers, the framing
plans, and the whole video path on a synthetic scene where a second person walks past in front of
the subject and a figure is painted on the wall (ground truth for every pixel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occfusion_core.data.framing import background_motion, crop_intrinsics, plan_framing
from occfusion_core.data.keypoints import mediapipe_available
from occfusion_core.data.tracking import box_iou, crop_square, hellinger, paste_mask, square_around
from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at

needs_mediapipe = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe 0.10.21 is not installed")


def test_box_helpers():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert square_around((10, 20, 30, 60), 1.5) == (-10.0, 10.0, 50.0, 70.0)
    p = np.array([0.5, 0.5, 0.0])
    assert hellinger(p, p) == pytest.approx(0.0) and hellinger(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0)


def test_crop_and_paste_are_each_others_inverse():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 120:130] = 255
    region = (110.0, 30.0, 150.0, 70.0)
    crop = crop_square(frame, region, 80)  # 2x
    rows, cols = np.nonzero(crop[..., 0] > 127)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 59, 20, 39)
    back = paste_mask(crop[..., 0] > 127, region, (100, 200))
    assert np.array_equal(back, frame[..., 0] > 0)
    assert not crop_square(frame, (-50.0, -50.0, -10.0, -10.0), 16).any()  # off the frame: black


def test_crop_intrinsics_keep_the_projection():
    """A point projects to the same place of the scene whether the frame is cut or not."""
    K = intrinsics_from_fov(1280, 720, 50.0)
    camera = Camera(K, look_at(np.array([0.0, 1.0, 3.0]), np.array([0.0, 1.0, 0.0])), 1280, 720)
    region, size = (300.0, 100.0, 700.0, 500.0), (256, 256)
    cropped = Camera(torch.as_tensor(crop_intrinsics(K.numpy(), region, size), dtype=torch.float32), camera.w2c, *size)
    points = torch.tensor([[0.1, 1.2, 0.2], [-0.3, 0.5, -0.1]])
    full, _ = camera.project(points)
    cut, _ = cropped.project(points)
    expected = (full.numpy() - np.array(region[:2])) * np.array([size[0] / 400.0, size[1] / 400.0])
    np.testing.assert_allclose(cut.numpy(), expected, atol=1e-3)


def test_framing_plans():
    standing = [(600.0, 200.0, 700.0, 500.0), (610.0, 205.0, 705.0, 505.0)]
    fixed = plan_framing(standing, (1280, 720), "person", 256)
    assert fixed.mode == "fixed" and fixed.size == (256, 256)
    (x0, y0, x1, y1), = set(fixed.regions)
    assert x1 - x0 == pytest.approx(y1 - y0) and x0 < 600 and x1 > 705 and y0 < 200 and y1 > 505
    tall = plan_framing([(500.0, 20.0, 800.0, 710.0)], (1280, 720), "person", 256)
    x0, y0, x1, y1 = tall.regions[0]
    assert tall.mode == "fixed" and (y0, y1) == (0.0, 720.0) and tall.size[1] < 256  # a rectangle
    assert (x1 - x0) / (y1 - y0) == pytest.approx(tall.size[0] / tall.size[1])  # square pixels
    crossing = [(x, 300.0, x + 100.0, 600.0) for x in np.linspace(20, 1150, 12)]
    per_frame = plan_framing(crossing, (1280, 720), "person", 256)
    assert per_frame.mode == "per_frame" and "crosses" in per_frame.reason
    assert len({r for r in per_frame.regions}) > 1 and per_frame.size == (256, 256)
    moving = plan_framing(standing, (1280, 720), "person", 256, camera_motion=8.0)
    assert moving.mode == "per_frame" and "moves" in moving.reason
    whole = plan_framing(standing, (1280, 720), "none", 256)
    assert whole.mode == "none" and whole.size == (256, 144)
    with pytest.raises(ValueError, match="video.crop"):
        plan_framing(standing, (1280, 720), "tight", 256)


def test_background_motion_tells_a_still_camera_from_a_moving_one():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (60, 300, 3)).astype(np.uint8)
    still = np.stack([scene[:, :200]] * 4)
    still[1:, 20:40, 80:120] = 255  # a person moving in front does not count
    pan = np.stack([scene[:, 10 * t:10 * t + 200] for t in range(4)])
    boxes = [(80.0, 20.0, 120.0, 40.0)] * 4
    assert background_motion(still, boxes) < 1.0 < 3.0 < background_motion(pan, boxes)


@pytest.fixture(scope="module")
def crowd_scene(tmp_path_factory, proxy_body):
    """30 frames, 384 px: the subject walks and turns; another person walks past in front of it in
    the first 80%; a figure is painted on the wall behind. Written as an mp4 too."""
    from occfusion_core.config import SyntheticConfig
    from occfusion_core.data.sequence import read_sequence
    from occfusion_core.data.synthetic import generate_synthetic_subject
    from occfusion_core.io import write_video

    root = tmp_path_factory.mktemp("crowd")
    generate_synthetic_subject(root / "scene", SyntheticConfig(
        frames=30, width=384, height=384, occlusion="person", painted_figure=True, heldout_views=0,
        supersample=2), proxy_body)
    seq = read_sequence(root / "scene")
    write_video(root / "crowd.mp4", [seq.image(n) for n in seq.frames], fps=15)
    return root / "crowd.mp4", seq


def test_synthetic_scene_with_a_second_person_and_a_painted_figure(crowd_scene):
    _, seq = crowd_scene
    occluded = [n for n in seq.frames if seq.gt_occluder_mask(n).any()]
    assert 10 <= len(occluded) <= 24  # the second person is in view part of the time
    for name in seq.frames:  # it hides the subject, never the other way round
        np.testing.assert_array_equal(seq.mask(name), seq.gt_full_mask(name) & ~seq.gt_occluder_mask(name))
    hidden = max(float((seq.gt_full_mask(n) & seq.gt_occluder_mask(n)).sum() / seq.gt_full_mask(n).sum())
                 for n in occluded)
    assert hidden > 0.4


@needs_mediapipe
def test_the_tracked_mask_stays_on_the_subject(crowd_scene, proxy_body, tmp_path):
    """Through the video path (MediaPipe, tracking, framing): in the kept frames the mask is the
    subject's (IoU >= 0.8 with its true visible mask in >= 95% of them) and never the other person's;
    the frames where the two overlap too much are dropped with a reason, and the overlay marks them."""
    from occfusion_core.data.sequence import read_sequence
    from occfusion_core.data.source_configs import FitConfig, VideoConfig
    from occfusion_core.data.video import prepare_video
    from occfusion_core.masks import mask_iou
    from occfusion_core.stages.overlay import draw_overlays

    video, truth = crowd_scene
    cfg = VideoConfig(path=str(video), max_side=256, align_to_masks=False,
                      fit=FitConfig(progress=False, iterations_global=20, iterations_pose=40, iterations_all=10))
    summary = prepare_video(video, tmp_path / "data", cfg, proxy_body)
    seq = read_sequence(tmp_path / "data")
    framing = seq.info["framing"]
    assert framing["mode"] == "fixed"
    x0, y0, x1, y1 = framing["crop_xyxy"]
    W, H = framing["output_size"]
    ys = np.clip((y0 + (np.arange(H) + 0.5) * (y1 - y0) / H).astype(int), 0, 383)
    xs = np.clip((x0 + (np.arange(W) + 0.5) * (x1 - x0) / W).astype(int), 0, 383)
    ious, on_other = [], []
    for name in seq.frames:
        visible = truth.mask(name)[np.ix_(ys, xs)]
        other = truth.gt_occluder_mask(name)[np.ix_(ys, xs)]
        mask = seq.mask(name)
        ious.append(mask_iou(mask, visible))
        on_other.append(float((mask & other).sum() / max(mask.sum(), 1)))
    ious = np.array(ious)
    print(f"\nkept {len(seq.frames)} of 30 frames; IoU with the subject: mean {ious.mean():.3f}, "
          f"min {ious.min():.3f}; largest share on the other person {max(on_other):.3f}")
    assert len(seq.frames) >= 18
    assert (ious >= 0.8).mean() >= 0.95
    assert max(on_other) < 0.05, "a frame was assigned to the other person"
    dropped = summary["dropped_frames"]
    assert dropped and all(d["reason"].startswith(("disagrees", "lost")) for d in dropped)
    assert sorted(seq.info["dropped_frames"], key=lambda d: d["video_frame"]) == dropped
    assert sorted(p.stem for p in (tmp_path / "data" / "dropped").glob("*.png")) == \
        [f"{d['video_frame']:05d}" for d in dropped]
    count = draw_overlays(tmp_path / "data", None, tmp_path / "overlay", tmp_path / "overlay.mp4")
    assert count == 30 and (tmp_path / "overlay" / f"{dropped[0]['video_frame']:05d}.png").is_file()
