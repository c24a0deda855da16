"""OcMotion *_w2a folder -> sequence format: stride, frame cap, scale (images, masks, K)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occfusion_core.data.ocmotion import prepare_ocmotion
from occfusion_core.data.sequence import read_sequence
from occfusion_core.data.validate import validate_sequence
from occfusion_core.io import InputError, read_image

W, H = 32, 24
N_FRAMES = 5


def _K() -> list:
    return [[40.0, 0.0, 15.5], [0.0, 41.0, 12.25], [0.0, 0.0, 1.0]]


def make_w2a(root: Path) -> Path:
    """A fake OcMotion ``*_w2a`` folder: jpg frames, 3-channel 0/255 png masks, metadata.json with
    per-frame cameras, and the pickles OccNeRF's preparation leaves beside them."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    metadata = {}
    for i in range(N_FRAMES):
        name = f"{i:05d}"
        # Smooth image so the jpg round trip stays close to the pixels written.
        yy, xx = np.mgrid[0:H, 0:W]
        image = np.stack([xx * 7 + i, yy * 9, np.full_like(xx, 60 + 20 * i)], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
        mask = np.zeros((H, W, 3), np.uint8)
        mask[4:20, 8:16] = 255  # columns 8..15: a pixel-aligned box
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        w2c = np.eye(4)
        w2c[:3, 3] = [0.1 * i, 0.0, 4.0]
        metadata[name] = {
            "poses": rng.normal(0, 0.1, 72).tolist(),
            "betas": rng.normal(0, 1, 10).tolist(),
            "trans": [0.0, 0.2, 0.01 * i],
            "cam_intrinsics": _K(),
            "cam_extrinsics": w2c.tolist(),
        }
    (root / "metadata.json").write_text(json.dumps(metadata))
    (root / "mesh_infos.pkl").write_bytes(pickle.dumps({"00000": {"Rh": np.zeros(3)}}))
    (root / "all_cameras.pkl").write_bytes(b"not read by the converter")
    (root / "canonical_joints.pkl").write_bytes(b"")
    return root


@pytest.fixture
def w2a(tmp_path: Path) -> Path:
    return make_w2a(tmp_path / "0011_02_1_w2a")


def test_convert_stride_and_half_scale(w2a: Path, tmp_path: Path):
    out = tmp_path / "data"
    report = prepare_ocmotion(w2a, out, frame_stride=2, scale=0.5)
    assert report["frames"] == 3 and (report["height"], report["width"]) == (12, 16)
    assert report == validate_sequence(out)

    seq = read_sequence(out)
    assert seq.frames == ["00000", "00002", "00004"]
    assert seq.info["source"] == "ocmotion"
    assert seq.info["source_dir"] == str(w2a.resolve())
    assert (seq.info["frame_stride"], seq.info["scale"], seq.info["max_frames"]) == (2, 0.5, None)
    assert not (out / "mesh_infos.pkl").exists()

    src_meta = json.loads((w2a / "metadata.json").read_text())
    for name in seq.frames:
        m, src = seq.meta[name], src_meta[name]
        np.testing.assert_allclose(m.K, [[20.0, 0.0, 7.75], [0.0, 20.5, 6.125], [0.0, 0.0, 1.0]])
        np.testing.assert_array_equal(m.w2c, src["cam_extrinsics"])
        np.testing.assert_array_equal(m.poses, src["poses"])
        np.testing.assert_array_equal(m.trans, src["trans"])

        # Nearest keeps the pixel-aligned box on the halved grid: rows 2..9, columns 4..7.
        expected = np.zeros((12, 16), bool)
        expected[2:10, 4:8] = True
        np.testing.assert_array_equal(seq.mask(name), expected)

        # Area resampling = mean over each 2x2 block of the source pixels.
        src_image = read_image(w2a / "images" / f"{name}.jpg").astype(np.float64)
        block_mean = src_image.reshape(12, 2, 16, 2, 3).mean(axis=(1, 3))
        assert np.abs(seq.image(name).astype(np.float64) - block_mean).max() <= 1.0


def test_pixel_corners_stay_corners_at_uneven_scale(w2a: Path, tmp_path: Path):
    """32x24 at 0.3 -> 10x7: K is scaled per axis by the exact size ratio, so the image's far corner
    (u=W, v=H) in the source still projects onto the far corner of the output."""
    out = tmp_path / "data"
    prepare_ocmotion(w2a, out, scale=0.3, max_frames=2)
    seq = read_sequence(out)
    assert seq.frames == ["00000", "00001"] and seq.size == (7, 10)
    K_src, K_out = np.array(_K()), seq.meta["00000"].K
    corner_src = np.array([W, H, 1.0])
    ray = np.linalg.solve(K_src, corner_src)
    np.testing.assert_allclose(K_out @ ray, [10.0, 7.0, 1.0], atol=1e-12)


def test_max_frames_after_stride(w2a: Path, tmp_path: Path):
    prepare_ocmotion(w2a, tmp_path / "data", frame_stride=2, max_frames=2)
    seq = read_sequence(tmp_path / "data")
    assert seq.frames == ["00000", "00002"] and seq.size == (H, W)
    np.testing.assert_allclose(seq.meta["00002"].K, _K())


def test_bad_source_is_rejected_before_writing(w2a: Path, tmp_path: Path):
    meta = json.loads((w2a / "metadata.json").read_text())
    meta["00003"]["betas"] = meta["00003"]["betas"][:9]
    (w2a / "metadata.json").write_text(json.dumps(meta))
    out = tmp_path / "data"
    with pytest.raises(InputError) as info:
        prepare_ocmotion(w2a, out, frame_stride=2)
    assert str(info.value) == f"{w2a / 'metadata.json'}: frame '00003' key 'betas' has 9 values, expected 10"
    assert not out.exists()


def test_source_missing_mask(w2a: Path, tmp_path: Path):
    (w2a / "masks" / "00001.png").unlink()
    with pytest.raises(InputError, match=r"masks/00001\.png: mask file is missing"):
        prepare_ocmotion(w2a, tmp_path / "data")


def test_bad_options(w2a: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="frame_stride"):
        prepare_ocmotion(w2a, tmp_path / "data", frame_stride=0)
    with pytest.raises(ValueError, match="scale"):
        prepare_ocmotion(w2a, tmp_path / "data", scale=0.0)
