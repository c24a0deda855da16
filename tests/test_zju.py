"""ZJU-MoCap refined folder -> sequence format, on a small fake subject the test writes: Rh/Th
conversion, millimetre cameras, scaling, undistortion, the band occlusion and held-out views."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from occfusion_core.data.sequence import read_sequence
from occfusion_core.data.source_configs import ZJUConfig
from occfusion_core.data.validate import validate_sequence
from occfusion_core.data.zju import (
    ZJU_OCCLUSION,
    band_columns,
    prepare_zju,
    rest_pelvis,
    subject_id,
    undistort,
    zju_to_smpl,
)
from occfusion_core.io import InputError
from occfusion_core.render.camera import Camera, look_at
from occfusion_core.render.mesh import rasterize_mesh

FULL = 96  # full-resolution image side of the fake subject (ZJU: 1024)
FRAMES = 8
CAMERAS = 3
K_CV = np.array([[130.0, 0.0, 47.0], [0.0, 131.0, 48.5], [0.0, 0.0, 1.0]])  # OpenCV pixel centres


def _zju_vertices(body, params: dict) -> torch.Tensor:
    """ZJU's body: R(Rh) @ SMPL(poses, shapes) + Th (rotation about the world origin)."""
    out = body(torch.tensor(params["poses"], dtype=torch.float32).reshape(1, 72),
               torch.tensor(params["shapes"], dtype=torch.float32).reshape(1, 10), torch.zeros(1, 3))
    R = torch.tensor(Rotation.from_rotvec(params["Rh"].ravel()).as_matrix(), dtype=torch.float32)
    return out.vertices[0] @ R.T + torch.tensor(params["Th"].ravel(), dtype=torch.float32)


def _camera_w2c(c: int) -> np.ndarray:
    """ZJU-like rig: world z up, cameras on a 3 m circle at 1 m height looking at the subject."""
    a = 2 * math.pi * c / CAMERAS
    return look_at((3 * math.sin(a), 3 * math.cos(a), 1.0), (0.0, 0.0, 0.9), up=(0.0, 0.0, 1.0)).double().numpy()


def make_zju(root: Path, body) -> Path:
    """A fake refined subject: annots.npy (T in mm), images/<cam>/<frame>.jpg, mask/<cam>/<frame>.png
    (0/1 silhouettes of the ZJU-posed body), smpl_params/<frame>.npy with Rh/Th/shapes/poses."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "smpl_params").mkdir()
    cams = {"K": [], "R": [], "T": [], "D": []}
    for c in range(CAMERAS):
        w2c = _camera_w2c(c)
        cams["K"].append(K_CV.copy())
        cams["R"].append(w2c[:3, :3])
        cams["T"].append(w2c[:3, 3:] * 1000.0)  # millimetres, (3, 1)
        cams["D"].append(np.zeros((5, 1)))
    shapes = rng.normal(0, 0.5, (1, 10))
    ims = []
    yy, xx = np.mgrid[0:FULL, 0:FULL]
    background = np.stack([xx * 2, yy * 2, np.full_like(xx, 90)], -1).astype(np.uint8)
    for f in range(FRAMES):
        poses = np.zeros((1, 72))
        poses[0, 3:] = rng.normal(0, 0.15, 69)
        params = {"Rh": np.array([[math.pi / 2, 0.0, 0.0]]) + rng.normal(0, 0.1, (1, 3)),  # SMPL y-up -> z-up
                  "Th": np.array([[0.05 * f, -0.1, 1.1]]), "shapes": shapes, "poses": poses}
        np.save(root / "smpl_params" / f"{f}.npy", params, allow_pickle=True)
        verts = _zju_vertices(body, params)
        paths = []
        for c in range(CAMERAS):
            K = K_CV.copy()
            K[:2, 2] += 0.5
            camera = Camera(torch.tensor(K), torch.tensor(_camera_w2c(c)), FULL, FULL)
            mask = rasterize_mesh(verts, body.faces, camera).mask.numpy()
            image = np.where(mask[..., None], np.array([200, 120, 60], np.uint8), background)
            rel = f"images/{c:02d}/{f:06d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel, quality=95)
            (root / "mask" / f"{c:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8)).save(root / "mask" / f"{c:02d}" / f"{f:06d}.png")
            paths.append(rel)
        ims.append({"ims": paths})
    np.save(root / "annots.npy", {"cams": cams, "ims": ims}, allow_pickle=True)
    return root


@pytest.fixture(scope="module")
def zju_subject(tmp_path_factory, proxy_body) -> Path:
    return make_zju(tmp_path_factory.mktemp("zju") / "my_377", proxy_body)


def _cfg(root: Path, **kw) -> ZJUConfig:
    base = dict(path=str(root), frame_stop=FRAMES, frame_stride=2, heldout_frame_stride=6, band_mid_px=48.0,
                band_width_px=24.0)
    base.update(kw)
    return ZJUConfig(**base)


def test_rh_th_conversion_matches_zju_posing(proxy_body):
    rng = np.random.default_rng(1)
    betas = rng.normal(0, 1.0, 10)
    poses = rng.normal(0, 0.3, 72)  # a non-zero poses[:3] too
    Rh, Th = rng.normal(0, 1.0, 3), rng.normal(0, 1.0, 3)
    ours_poses, ours_trans = zju_to_smpl(Rh, Th, poses, rest_pelvis(proxy_body, betas))
    ours = proxy_body(torch.tensor(ours_poses[None], dtype=torch.float32),
                      torch.tensor(betas[None], dtype=torch.float32),
                      torch.tensor(ours_trans[None], dtype=torch.float32)).vertices[0]
    zju = _zju_vertices(proxy_body, {"Rh": Rh, "Th": Th, "poses": poses, "shapes": betas})
    assert (ours - zju).abs().max().item() < 1e-5
    # the naive rename (trans = Th) is wrong by R(Rh) J0 - J0: centimetres to decimetres
    naive = proxy_body(torch.tensor(ours_poses[None], dtype=torch.float32),
                       torch.tensor(betas[None], dtype=torch.float32),
                       torch.tensor(Th[None], dtype=torch.float32)).vertices[0]
    assert (naive - zju).abs().max().item() > 0.05


def test_subject_table_and_band_columns():
    assert subject_id("/data/zju_mocap_refine/my_377") == "377"
    assert subject_id("CoreView_394") == "394"
    assert ZJU_OCCLUSION["377"] == {"range": 456, "mid": 460, "width": 70}
    assert set(ZJU_OCCLUSION) == {"377", "386", "387", "392", "393", "394"}
    # 377 at half resolution: full-res columns [425, 495) -> scaled columns 212..246 (35 = 70 / 2)
    cols = np.flatnonzero(band_columns(512, 0.5, 460, 70))
    assert (cols[0], cols[-1], cols.size) == (212, 246, 35)


def test_undistort_moves_a_point_back():
    K = np.array([[200.0, 0.0, 64.0], [0.0, 200.0, 60.0], [0.0, 0.0, 1.0]])
    D = np.array([-0.3, 0.1, 0.001, -0.002, 0.0])
    x, y = 0.2, -0.15  # normalised undistorted point
    r2 = x * x + y * y
    radial = 1 + D[0] * r2 + D[1] * r2 ** 2
    xd = x * radial + 2 * D[2] * x * y + D[3] * (r2 + 2 * x * x)
    yd = y * radial + D[2] * (r2 + 2 * y * y) + 2 * D[3] * x * y
    image = np.zeros((120, 128), np.uint8)
    image[round(60 + 200 * yd), round(64 + 200 * xd)] = 255
    out = undistort(image.astype(np.float32), K, D)
    row, col = np.unravel_index(np.argmax(out), out.shape)
    assert abs(col - (64 + 200 * x)) <= 1.0 and abs(row - (60 + 200 * y)) <= 1.0
    assert undistort(image, K, np.zeros(5)) is image


def test_prepare_zju_writes_a_valid_occluded_sequence(zju_subject, proxy_body, tmp_path):
    out = tmp_path / "data"
    summary = prepare_zju(zju_subject, out, _cfg(zju_subject), proxy_body)
    report = validate_sequence(out)
    assert report["frames"] == 4 and (report["width"], report["height"]) == (FULL // 2, FULL // 2)
    assert summary["heldout_views"] == 2 and report["gt"]["heldout_views"] == {"cam01": 2, "cam02": 2}
    seq = read_sequence(out)
    assert seq.frames == ["00000", "00002", "00004", "00006"]
    assert seq.info["subject"] == "377" and seq.info["source"] == "zju"

    # millimetres -> metres, principal point +0.5 then scaled by 0.5
    cam = seq.camera("00000")
    np.testing.assert_allclose(cam.t.numpy(), _camera_w2c(0)[:3, 3], atol=1e-5)
    np.testing.assert_allclose(cam.K.numpy()[:2, 2], (K_CV[:2, 2] + 0.5) * 0.5, atol=1e-6)

    # the converted body lands on the ZJU silhouettes, in the training and in a held-out view (at
    # 48 px the area-downscaled masks and the centre-sampled render differ on thin limbs)
    for view, name in ((None, "00004"), ("cam02", "00006")):
        camera = seq.camera(name) if view is None else seq.heldout_views()[view]
        truth = seq.gt_full_mask(name) if view is None else seq.heldout_mask(view, name)
        assert _silhouette_iou(proxy_body, seq, name, camera, truth) > 0.8, f"{view or 'training'} frame {name}"

    # band on the first round(0.8 * 4) = 3 training frames, columns of the full-res band [36, 60)
    band = band_columns(FULL // 2, 0.5, 48.0, 24.0)
    assert np.flatnonzero(band).tolist() == list(range(18, 30))
    for t, name in enumerate(seq.frames):
        occluder = seq.gt_occluder_mask(name)
        full, visible = seq.gt_full_mask(name), seq.mask(name)
        if t < 3:
            assert occluder.all(axis=0)[band].all() and not occluder[:, ~band].any()
        else:
            assert not occluder.any()
        np.testing.assert_array_equal(visible, full & ~occluder)
        # the unoccluded frame is kept; outside the band the training frame is that frame
        gt, train = seq.gt_image(name), seq.image(name)
        np.testing.assert_array_equal(train[:, ~band], gt[:, ~band])
    assert seq.info["occlusion_settings"]["occluded_frames"] == 3


def _silhouette_iou(body, seq, name, camera, truth) -> float:
    m = seq.meta[name]
    verts = body(torch.tensor(m.poses[None], dtype=torch.float32), torch.tensor(m.betas[None], dtype=torch.float32),
                 torch.tensor(m.trans[None], dtype=torch.float32)).vertices[0]
    drawn = rasterize_mesh(verts, body.faces, camera).mask.numpy()
    return float((drawn & truth).sum() / (drawn | truth).sum())


def test_prepare_zju_full_resolution_is_pixel_exact(zju_subject, proxy_body, tmp_path):
    """At image_scaling 1 the converted body and camera redraw ZJU's silhouettes (a half-pixel error in
    the principal point or a wrong translation would show)."""
    cfg = _cfg(zju_subject, image_scaling=1.0, occlusion="none", heldout_views=1)
    prepare_zju(zju_subject, tmp_path / "full", cfg, proxy_body)
    seq = read_sequence(tmp_path / "full")
    assert seq.size == (FULL, FULL) and not seq.gt_root.joinpath("occluder_masks").exists()
    for name in seq.frames:
        assert _silhouette_iou(proxy_body, seq, name, seq.camera(name), seq.gt_full_mask(name)) > 0.98, name
    view = seq.heldout_views()["cam01"]
    assert _silhouette_iou(proxy_body, seq, "00006", view, seq.heldout_mask("cam01", "00006")) > 0.98


def test_prepare_zju_subject_range_and_errors(zju_subject, proxy_body, tmp_path):
    cfg = _cfg(zju_subject, occluded_frames="subject_range", heldout_views=1)
    prepare_zju(zju_subject, tmp_path / "a", cfg, proxy_body)
    seq = read_sequence(tmp_path / "a")
    assert seq.info["occlusion_settings"]["occluded_frames"] == 4  # every frame index < 456
    assert list(seq.heldout_views()) == ["cam01"]

    with pytest.raises(InputError, match="annots.npy"):
        prepare_zju(tmp_path, tmp_path / "b", _cfg(tmp_path), proxy_body)
    with pytest.raises(ValueError, match="no occlusion settings"):
        prepare_zju(zju_subject, tmp_path / "c", _cfg(zju_subject, subject="999", band_mid_px=None,
                                                      band_width_px=None), proxy_body)
