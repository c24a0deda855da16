"""The video source: frame sampling, masks, intrinsics, simulated occlusion with ground truth, and the
whole path on the real clip ../shared/data/taiji.mp4 (skipped without the clip or MediaPipe)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from occfusion_core.body.fit import CAMERA_W2C
from occfusion_core.data.keypoints import DETECTOR, mediapipe_available
from occfusion_core.data.occlusion import estimate_background, occlude_sequence, simulate_occlusion
from occfusion_core.data.sequence import FrameMeta, read_sequence, write_sequence
from occfusion_core.data.source_configs import FitConfig, SimulatedOcclusionConfig, VideoConfig
from occfusion_core.data.validate import validate_sequence
from occfusion_core.data.video import (
    prepare_video,
    read_cropped_frames,
    read_video_frames,
    scaled_size,
    video_intrinsics,
)
from occfusion_core.io import InputError, write_video
from occfusion_core.masks import mask_box_heights, person_mask
from occfusion_core.render.camera import Camera

TAIJI = SHARED_DATA / "taiji.mp4"
needs_mediapipe = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe 0.10.21 is not installed")
needs_taiji = pytest.mark.skipif(not TAIJI.is_file(), reason=f"{TAIJI} is absent")


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    """10 frames, 64x48, frame k has a bright column at x = 5k (so the frame number can be read back)."""
    frames = []
    for k in range(10):
        f = np.full((48, 64, 3), 40, np.uint8)
        f[:, 5 * k:5 * k + 3] = 230
        frames.append(f)
    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    write_video(path, frames, fps=10)
    return path


def test_read_video_frames_samples_and_scales(tiny_video, tmp_path):
    video = read_video_frames(tiny_video, start_frame=1, frame_stride=3, max_side=32)
    assert video.indices.tolist() == [1, 4, 7]
    assert video.images.shape == (3, 24, 32, 3) and video.images.dtype == np.uint8
    assert video.source_size == (64, 48) and video.scale == (0.5, 0.5) and video.fps == pytest.approx(10.0)
    for frame, k in zip(video.images, video.indices):
        assert abs(int(np.argmax(frame[12, :, 0])) - (5 * k + 1) / 2) <= 1.5
    assert read_video_frames(tiny_video, max_frames=2).indices.tolist() == [0, 1]
    with pytest.raises(InputError, match="no frame"):
        read_video_frames(tiny_video, start_frame=50)
    with pytest.raises(InputError, match="missing"):
        read_video_frames(tiny_video.with_name("absent.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    with pytest.raises(InputError, match=r"broken\.mp4: not a readable video \(ffmpeg: .+\)$"):
        read_video_frames(broken)


def test_scaled_size_and_intrinsics():
    assert scaled_size(1280, 720, 512) == (512, 288)
    assert scaled_size(1080, 1920, 512) == (288, 512)
    assert scaled_size(300, 200, 512) == (300, 200)  # never upscaled
    K, how = video_intrinsics(512, 288, (0.4, 0.4), [1000.0, 1010.0, 640.0, 360.0])
    np.testing.assert_allclose(K, [[400.0, 0, 256.0], [0, 404.0, 144.0], [0, 0, 1]])
    assert "user" in how
    K, how = video_intrinsics(288, 512, (1.0, 1.0), None, fov_deg=90.0)
    np.testing.assert_allclose(K[0, 0], 256.0)  # across the longer side (512 px) at 90 degrees
    np.testing.assert_allclose(K[:2, 2], [144.0, 256.0])
    assert "90" in how


def test_person_mask_drops_stray_blobs():
    prob = np.zeros((40, 40), np.float32)
    prob[5:35, 10:20] = 0.9  # the person
    prob[2:4, 30:32] = 0.8  # a stray blob, 4 px
    prob[20:30, 25:28] = 0.6  # an arm-sized piece, 30 px, kept
    mask = person_mask(prob, 0.5, 0.05)
    assert mask[10, 15] and mask[25, 26] and not mask[3, 31]
    assert mask_box_heights(mask[None]).tolist() == [30.0]


def _moving_person(T=10, H=40, W=60):
    """A textured static background and a box 'person' walking left to right."""
    yy, xx = np.mgrid[0:H, 0:W]
    background = np.stack([(xx * 4) % 256, (yy * 6) % 256, (xx * yy) % 256], -1).astype(np.uint8)
    images = np.repeat(background[None], T, 0)
    masks = np.zeros((T, H, W), bool)
    for t in range(T):
        x0 = 4 + 5 * t
        masks[t, 8:36, x0:x0 + 10] = True
        images[t][masks[t]] = (200, 30, 30)
    return images, masks, background


def test_estimate_background_recovers_the_static_scene():
    images, masks, background = _moving_person()
    estimate, known = estimate_background(images, masks, margin_px=1)
    assert known.mean() > 0.9
    np.testing.assert_array_equal(estimate[known], background[known])


def test_simulated_band_keeps_ground_truth():
    images, masks, background = _moving_person()
    before = images.copy()
    cfg = SimulatedOcclusionConfig(kind="zju_band", occluded_frames_fraction=0.8, band_fill="background")
    occ = simulate_occlusion(images, masks, cfg)
    np.testing.assert_array_equal(images, before)  # the inputs stay the ground truth
    occluded = occ.occluder_masks.reshape(10, -1).any(1)
    assert occluded.tolist() == [True] * 8 + [False] * 2
    np.testing.assert_array_equal(occ.visible_masks, masks & ~occ.occluder_masks)
    for t in range(8):
        band = occ.occluder_masks[t]
        assert band.all(axis=0).sum() == 5  # half of a 10-px-wide person, full height
        person_cols = np.flatnonzero(masks[t].any(0))
        assert np.flatnonzero(band.any(0)).tolist() == list(range(person_cols[0] + 2, person_cols[0] + 7))
        # the band shows the background (seen in other frames), the person is erased there
        np.testing.assert_array_equal(occ.images[t][band & masks[t]], background[band & masks[t]])
        np.testing.assert_array_equal(occ.images[t][~band], images[t][~band])
    np.testing.assert_array_equal(occ.images[8:], images[8:])
    assert occ.summary["occluded_frames"] == 8 and 0.45 < occ.summary["hidden_fraction_mean"] < 0.55


def test_simulated_object_occluder_hides_part_of_the_person():
    T, H, W = 6, 64, 64
    K = np.array([[70.0, 0, 32], [0, 70.0, 32], [0, 0, 1]])
    camera = Camera(torch.tensor(K), torch.tensor(CAMERA_W2C), W, H)
    images = np.full((T, H, W, 3), 100, np.uint8)
    masks = np.zeros((T, H, W), bool)
    masks[:, 8:60, 24:40] = True
    centres = np.tile([0.0, 0.0, -3.0], (T, 1))
    cfg = SimulatedOcclusionConfig(kind="object", occluded_frames_fraction=0.5)
    occ = simulate_occlusion(images, masks, cfg, camera, centres)
    assert occ.occluder_masks[:3].any(axis=(1, 2)).all() and not occ.occluder_masks[3:].any()
    assert (occ.visible_masks[:3].sum((1, 2)) < masks[:3].sum((1, 2))).all()
    assert occ.visible_masks.any(axis=(1, 2)).all()
    with pytest.raises(ValueError, match="camera"):
        simulate_occlusion(images, masks, cfg)


@pytest.mark.parametrize("kind", ["zju_band", "object"])
def test_occlude_sequence_moves_the_frames_to_gt(kind, proxy_body, tmp_path):
    images, masks, _ = _moving_person(T=6, H=64, W=64)
    K = np.array([[70.0, 0, 32], [0, 70.0, 32], [0, 0, 1]])
    meta = FrameMeta(np.zeros(72), np.zeros(10), np.array([0.0, 0.2, -3.0]), K, CAMERA_W2C)
    write_sequence(tmp_path, ((f"{t:05d}", images[t], masks[t], meta) for t in range(6)), {"source": "test"})
    summary = occlude_sequence(tmp_path, SimulatedOcclusionConfig(kind=kind, occluded_frames_fraction=0.5),
                               proxy_body)
    assert summary["occluded_frames"] == 3
    report = validate_sequence(tmp_path)
    assert report["gt"]["visible_share_of_person"]["min"] < 1.0
    seq = read_sequence(tmp_path)
    assert seq.info["occlusion"] == kind and seq.info["source"] == "test"
    for t, name in enumerate(seq.frames):
        np.testing.assert_array_equal(seq.gt_image(name), images[t])
        np.testing.assert_array_equal(seq.gt_full_mask(name), masks[t])
        occluder = seq.gt_occluder_mask(name)
        assert occluder.any() == (t < 3)
        np.testing.assert_array_equal(seq.mask(name), masks[t] & ~occluder)
    with pytest.raises(InputError, match="already has ground truth"):
        occlude_sequence(tmp_path, SimulatedOcclusionConfig(kind="zju_band"))


@needs_mediapipe
def test_video_without_a_person_fails_early_naming_the_frame(tiny_video, proxy_body, tmp_path):
    cfg = VideoConfig(path=str(tiny_video), frame_stride=4, on_missing_person="error")
    with pytest.raises(InputError, match=r"not found in video frame 0 \(t = 0.00 s\): no person found"):
        prepare_video(tiny_video, tmp_path / "a", cfg, proxy_body)
    cfg.on_missing_person = "drop"  # the default: every frame dropped, so nothing is left
    with pytest.raises(InputError, match="any sampled frame"):
        prepare_video(tiny_video, tmp_path / "b", cfg, proxy_body)
    assert not (tmp_path / "a" / "metadata.json").exists()


@needs_mediapipe
@needs_taiji
def test_taiji_clip_to_an_occluded_sequence(proxy_body, tmp_path):
    fit = FitConfig(progress=False, iterations_global=40, iterations_pose=120, iterations_all=40)
    cfg = VideoConfig(path=str(TAIJI), start_frame=40, frame_stride=12, max_frames=4, max_side=256, fit=fit,
                      occlusion=SimulatedOcclusionConfig(kind="zju_band", occluded_frames_fraction=0.5))
    out = tmp_path / "data"
    summary = prepare_video(TAIJI, out, cfg, proxy_body)

    report = validate_sequence(out)
    # the person-centric crop: one rectangle around the person's path (a 720 px tall person in a 1280x720
    # frame: the square would not fit), scaled to 256 px wide
    framing = seq_framing = read_sequence(out).info["framing"]
    assert framing["mode"] == "fixed" and report["framing"] == seq_framing
    x0, y0, x1, y1 = framing["crop_xyxy"]
    assert (y0, y1) == (0.0, 720.0) and 700 < x1 - x0 < 1000  # the person's whole height
    W, H = framing["output_size"]
    assert report["frames"] == 4 and (report["width"], report["height"]) == (W, H) and W == 256 and 200 < H < 235
    assert report["dropped_frames"] == []
    seq = read_sequence(out)
    assert seq.frames == ["00040", "00052", "00064", "00076"]
    assert seq.info["detector"] == DETECTOR and seq.info["source"] == "video"
    assert "region around the subject" in seq.info["detector_mode"]
    assert seq.info["subject"]["rule"] == "largest" and seq.info["subject"]["video_frame"] == 40
    assert "heldout" in seq.info and seq.info["occlusion"] == "zju_band"
    assert seq.info["fit"]["keypoints_from"] == "occluded frames"  # the default, as with a real occluder
    keypoints = json.loads((out / "keypoints.json").read_text())
    assert sorted(keypoints["frames"]) == seq.frames
    assert np.shape(keypoints["frames"]["00040"]["keypoints"]) == (33, 3)
    # the intrinsics follow the crop: the principal point shifts by its corner, the focal length scales
    K = seq.meta["00040"].K
    s = 256 / (x1 - x0)
    assert K[0, 2] == pytest.approx((640 - x0) * s, abs=0.01) and K[0, 0] == pytest.approx(K[1, 1])

    # the originals, cut and scaled like the frames, are the ground truth; the first half carries the band
    originals = read_cropped_frames(TAIJI, [40, 52, 64, 76], [(x0, y0, x1, y1)] * 4, (W, H))
    for t, name in enumerate(seq.frames):
        # (the crop in info.json is rounded to 0.01 px: a level or two of resampling difference)
        assert np.abs(seq.gt_image(name).astype(int) - originals[t]).max() <= 3
        occluder = seq.gt_occluder_mask(name)
        assert occluder.any() == (t < 2)
        np.testing.assert_array_equal(seq.mask(name), seq.gt_full_mask(name) & ~occluder)
    assert report["gt"]["visible_share_of_person"]["min"] < 0.8

    # the fitted body: in front of the camera, upright (world y up), over the person, keypoints close
    meta = seq.meta["00040"]
    np.testing.assert_allclose(meta.w2c, CAMERA_W2C, atol=1e-12)
    out_body = proxy_body(torch.tensor(meta.poses[None], dtype=torch.float32),
                          torch.tensor(meta.betas[None], dtype=torch.float32),
                          torch.tensor(meta.trans[None], dtype=torch.float32))
    pelvis, neck = out_body.joints[0, 0].numpy(), out_body.joints[0, 12].numpy()
    up = (neck - pelvis) / np.linalg.norm(neck - pelvis)
    assert pelvis[2] < -1.0 and up[1] > 0.8, (pelvis, up)
    assert summary["reprojection_error_box_fraction_mean"] < 0.06
    uv, _ = seq.camera("00040").project(out_body.vertices[0])
    cols, rows = uv[:, 0].long().clamp(0, W - 1).numpy(), uv[:, 1].long().clamp(0, H - 1).numpy()
    assert seq.gt_full_mask("00040")[rows, cols].mean() > 0.7
