"""The sequence format: write -> read round trip, and one test per kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from occfusion_core.data.sequence import (
    FrameMeta,
    read_sequence,
    write_gt_frame,
    write_heldout,
    write_sequence,
)
from occfusion_core.data.validate import validate_sequence
from occfusion_core.io import InputError, write_image, write_mask
from occfusion_core.render.camera import Camera
from occfusion_core.stages.validate import validate_subject

SIZE = 24
NAMES = ["00000", "00001", "00002"]


def _K(f: float = 30.0) -> np.ndarray:
    return np.array([[f, 0.0, SIZE / 2], [0.0, f, SIZE / 2], [0.0, 0.0, 1.0]])


def _w2c(angle: float = 0.0) -> np.ndarray:
    """Rotation about y by ``angle`` radians, camera 3 m in front."""
    c, s = np.cos(angle), np.sin(angle)
    w2c = np.eye(4)
    w2c[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    w2c[2, 3] = 3.0
    return w2c


def _box_mask(i: int) -> np.ndarray:
    """bool (SIZE, SIZE): a box that moves one pixel per frame."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[6:18, 8 + i:14 + i] = True
    return mask


def _meta(i: int) -> FrameMeta:
    rng = np.random.default_rng(i)
    return FrameMeta(rng.normal(0, 0.1, 72), rng.normal(0, 1, 10), np.array([0.0, 0.1 * i, 0.0]),
                     _K(), _w2c(0.1 * i))


def make_sequence(root: Path, gt: bool = True) -> Path:
    """Write a tiny valid sequence (3 frames of 24x24) with gt and one held-out view."""
    rng = np.random.default_rng(0)
    images = {n: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for n in NAMES}
    write_sequence(root, ((n, images[n], _box_mask(i), _meta(i)) for i, n in enumerate(NAMES)),
                   info={"source": "test", "width": SIZE, "height": SIZE, "fps": 10})
    if gt:
        for i, n in enumerate(NAMES):
            full = _box_mask(i)
            full[18:22, 8 + i:14 + i] = True  # the legs the occluder hides
            occluder = np.zeros_like(full)
            occluder[18:, :] = True
            write_gt_frame(root, n, images[n], full, occluder if i == 0 else None)
        side = Camera(_K(20.0), _w2c(np.pi / 2), 16, 20)
        mask = np.zeros((20, 16), bool)
        mask[5:15, 4:12] = True
        write_heldout(root, {"side": side},
                      {"side": [(n, rng.integers(0, 256, (20, 16, 3), dtype=np.uint8), mask)
                                for n in NAMES[::2]]})
    return root


@pytest.fixture
def seq_root(tmp_path: Path) -> Path:
    return make_sequence(tmp_path / "data")


def _expect_error(root: Path, rel_path: str, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        validate_sequence(root)
    err = info.value
    assert err.path == str(root / rel_path), str(err)
    assert str(err).startswith(f"{root / rel_path}: ")
    for fragment in fragments:
        assert fragment in err.problem, str(err)
    return err


def _edit_metadata(root: Path, edit) -> None:
    """Apply ``edit(metadata dict)`` and rewrite metadata.json (NaN/inf allowed, as json.dumps does)."""
    path = root / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# ----------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------

def test_round_trip(seq_root: Path):
    report = validate_sequence(seq_root)
    assert report["frames"] == 3 and (report["height"], report["width"]) == (SIZE, SIZE)
    assert report["first_frame"] == "00000" and report["last_frame"] == "00002"
    assert report["person_fraction"]["min"] == pytest.approx(72 / SIZE**2)
    assert report["gt"]["heldout_views"] == {"side": 2}
    assert report["gt"]["visible_share_of_person"]["mean"] == pytest.approx(72 / 96)
    assert report["gt"]["occluder_mask_frames"] == 1

    seq = read_sequence(seq_root)
    assert seq.frames == NAMES and seq.size == (SIZE, SIZE) and len(seq) == 3
    assert seq.info["source"] == "test"
    rng = np.random.default_rng(0)
    first_image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(seq.image("00000"), first_image)
    for i, n in enumerate(NAMES):
        np.testing.assert_array_equal(seq.mask(n), _box_mask(i))
        expected = _meta(i)
        for key in ("poses", "betas", "trans", "K", "w2c"):
            np.testing.assert_allclose(getattr(seq.meta[n], key), getattr(expected, key), rtol=0, atol=1e-12)
    cam = seq.camera("00001")
    assert (cam.width, cam.height) == (SIZE, SIZE)
    torch.testing.assert_close(cam.w2c, torch.tensor(_w2c(0.1), dtype=torch.float32))

    params = seq.body_params()
    assert {k: tuple(v.shape) for k, v in params.items()} == {"poses": (3, 72), "betas": (3, 10), "trans": (3, 3)}
    assert all(v.dtype == torch.float32 for v in params.values())
    assert params["trans"][2, 1].item() == pytest.approx(0.2)
    assert tuple(seq.body_params(["00002"])["poses"].shape) == (1, 72)

    assert seq.has_gt
    np.testing.assert_array_equal(seq.gt_image("00000"), first_image)
    assert seq.gt_full_mask("00001").sum() == 96
    assert seq.gt_occluder_mask("00000").sum() == 6 * SIZE
    assert seq.gt_occluder_mask("00001") is None
    views = seq.heldout_views()
    assert list(views) == ["side"] and (views["side"].width, views["side"].height) == (16, 20)
    assert seq.heldout_frames("side") == ["00000", "00002"]
    assert seq.heldout_image("side", "00002").shape == (20, 16, 3)
    assert seq.heldout_mask("side", "00000").sum() == 80


def test_frame_meta_json_round_trip():
    meta = _meta(4)
    back = FrameMeta.from_json(json.loads(json.dumps(meta.to_json())), "m.json", "00004")
    for key in ("poses", "betas", "trans", "K", "w2c"):
        np.testing.assert_array_equal(getattr(back, key), getattr(meta, key))


def test_three_channel_masks_and_jpg_frames_are_read(seq_root: Path):
    """A real OcMotion folder stores 3-channel masks (channel 0 counts) and may hold jpg frames."""
    from PIL import Image

    mask3 = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask3[2:5, 2:5, 0] = 255
    mask3[10:20, 10:20, 1:] = 255  # ignored channels
    write_image(seq_root / "masks" / "00001.png", mask3)
    Image.open(seq_root / "images" / "00002.png").save(seq_root / "images" / "00002.jpg")
    (seq_root / "images" / "00002.png").unlink()
    validate_sequence(seq_root)
    seq = read_sequence(seq_root)
    assert seq.mask("00001").sum() == 9
    assert seq.image("00002").shape == (SIZE, SIZE, 3)


def test_rewrite_removes_stale_frames(seq_root: Path):
    write_sequence(seq_root, [("00001", np.zeros((SIZE, SIZE, 3), np.uint8), _box_mask(0), _meta(0))])
    assert read_sequence(seq_root).frames == ["00001"]
    assert sorted(p.name for p in (seq_root / "masks").iterdir()) == ["00001.png"]


def test_write_refuses_bad_arrays(tmp_path: Path):
    bad = [("00000", np.zeros((SIZE, SIZE, 3), np.float32), _box_mask(0), _meta(0))]
    with pytest.raises(ValueError, match="uint8"):
        write_sequence(tmp_path, bad)
    bad = [("00000", np.zeros((SIZE, SIZE, 3), np.uint8), np.ones((SIZE, 5), bool), _meta(0))]
    with pytest.raises(ValueError, match="mask shape"):
        write_sequence(tmp_path, bad)
    with pytest.raises(ValueError, match="5-digit"):
        write_sequence(tmp_path, [("frame", np.zeros((SIZE, SIZE, 3), np.uint8), _box_mask(0), _meta(0))])


# ----------------------------------------------------------------------------------------------
# Bad input: one test per kind; each checks the file named and the problem
# ----------------------------------------------------------------------------------------------

def test_missing_folder(tmp_path: Path):
    with pytest.raises(InputError, match="sequence folder is missing"):
        validate_sequence(tmp_path / "nothing")


def test_missing_masks_folder(seq_root: Path):
    for p in (seq_root / "masks").iterdir():
        p.unlink()
    (seq_root / "masks").rmdir()
    _expect_error(seq_root, "masks", "folder is missing")


def test_missing_metadata(seq_root: Path):
    (seq_root / "metadata.json").unlink()
    _expect_error(seq_root, "metadata.json", "file is missing")


def test_metadata_not_json(seq_root: Path):
    (seq_root / "metadata.json").write_text("{\"00000\": ")
    _expect_error(seq_root, "metadata.json", "not valid JSON")


def test_missing_image(seq_root: Path):
    (seq_root / "images" / "00001.png").unlink()
    _expect_error(seq_root, "images/00001.png", "image file is missing", "'00001'", "metadata.json")


def test_corrupt_image(seq_root: Path):
    (seq_root / "images" / "00001.png").write_bytes(b"this is not a png" * 20)
    _expect_error(seq_root, "images/00001.png", "cannot read image")


def test_truncated_png(seq_root: Path):
    path = seq_root / "images" / "00002.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    _expect_error(seq_root, "images/00002.png", "cannot read image")


def test_corrupt_mask(seq_root: Path):
    path = seq_root / "masks" / "00000.png"
    path.write_bytes(path.read_bytes()[:40])
    _expect_error(seq_root, "masks/00000.png", "cannot read mask")


def test_missing_mask(seq_root: Path):
    (seq_root / "masks" / "00002.png").unlink()
    _expect_error(seq_root, "masks/00002.png", "mask file is missing", "'00002'")


def test_mask_image_size_mismatch(seq_root: Path):
    write_mask(seq_root / "masks" / "00001.png", np.ones((SIZE, 20), bool))
    _expect_error(seq_root, "masks/00001.png", "mask is 20x24 (width x height)", "image 00001.png is 24x24")


def test_frame_sizes_differ(seq_root: Path):
    write_image(seq_root / "images" / "00002.png", np.zeros((SIZE, 30, 3), np.uint8))
    write_mask(seq_root / "masks" / "00002.png", np.ones((SIZE, 30), bool))
    _expect_error(seq_root, "images/00002.png", "image is 30x24", "frame '00000'")


def test_frame_missing_from_metadata(seq_root: Path):
    _edit_metadata(seq_root, lambda m: m.pop("00001"))
    _expect_error(seq_root, "metadata.json", "no entry for frame(s) '00001'", "images/")


def test_metadata_entry_without_image(seq_root: Path):
    _edit_metadata(seq_root, lambda m: m.update({"00007": m["00000"], "00009": m["00000"]}))
    _expect_error(seq_root, "images/00007.png", "image file is missing for frame '00007'",
                  "metadata.json", "'00009'")


def test_frame_name_without_number(seq_root: Path):
    (seq_root / "images" / "00001.png").rename(seq_root / "images" / "frame.png")
    _expect_error(seq_root, "images/frame.png", "'frame'", "5-digit frame number")


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("poses", [0.0] * 69, "key 'poses' has 69 values, expected 72"),
        ("betas", [0.0] * 11, "key 'betas' has 11 values, expected 10"),
        ("trans", [0.0, 1.0], "key 'trans' has 2 values, expected 3"),
        ("trans", [[0.0], [1.0], [2.0]], "key 'trans' has shape 3x1, expected a list of 3 values"),
        ("cam_intrinsics", [[30.0, 0.0, 12.0, 0.0]] * 3, "key 'cam_intrinsics' has shape 3x4, expected 3x3"),
        ("cam_extrinsics", np.eye(4)[:3].tolist(), "key 'cam_extrinsics' has shape 3x4, expected 4x4"),
        ("poses", ["a"] * 72, "key 'poses' is not an array of numbers"),
        ("betas", [[0.0] * 10, [0.0]], "key 'betas' is not a regular array of numbers"),
    ],
)
def test_wrong_metadata_shape(seq_root: Path, key, value, problem):
    _edit_metadata(seq_root, lambda m: m["00001"].update({key: value}))
    err = _expect_error(seq_root, "metadata.json", "frame '00001' " + problem)
    assert str(err) == f"{seq_root / 'metadata.json'}: frame '00001' {problem}"


def test_missing_metadata_key(seq_root: Path):
    _edit_metadata(seq_root, lambda m: m["00002"].pop("betas"))
    _expect_error(seq_root, "metadata.json", "frame '00002' has no key 'betas'")


def test_nan_in_poses(seq_root: Path):
    def edit(m):
        m["00001"]["poses"][5] = float("nan")
    _edit_metadata(seq_root, edit)
    _expect_error(seq_root, "metadata.json", "frame '00001' key 'poses' has a non-finite value (NaN at index 5)")


def test_inf_in_trans(seq_root: Path):
    def edit(m):
        m["00002"]["trans"][2] = float("inf")
    _edit_metadata(seq_root, edit)
    _expect_error(seq_root, "metadata.json", "frame '00002' key 'trans' has a non-finite value (inf at index 2)")


@pytest.mark.parametrize("which", ["scaled", "reflected"])
def test_extrinsic_not_a_rotation(seq_root: Path, which):
    def edit(m):
        w2c = np.array(m["00000"]["cam_extrinsics"])
        if which == "scaled":
            w2c[:3, :3] *= 1.1
        else:
            w2c[:3, 0] *= -1.0  # orthonormal but det -1
        m["00000"]["cam_extrinsics"] = w2c.tolist()
    _edit_metadata(seq_root, edit)
    err = _expect_error(seq_root, "metadata.json", "frame '00000' key 'cam_extrinsics' rotation part is not a rotation")
    if which == "reflected":
        assert "det = -1.0000" in err.problem


def test_zero_focal_length(seq_root: Path):
    def edit(m):
        m["00002"]["cam_intrinsics"][1][1] = 0.0
    _edit_metadata(seq_root, edit)
    _expect_error(seq_root, "metadata.json", "frame '00002' key 'cam_intrinsics' has a non-positive focal length",
                  "fy=0")


def test_empty_mask(seq_root: Path):
    write_mask(seq_root / "masks" / "00001.png", np.zeros((SIZE, SIZE), bool))
    _expect_error(seq_root, "masks/00001.png", "mask of frame '00001' is empty")


def test_info_size_disagrees(seq_root: Path):
    (seq_root / "info.json").write_text(json.dumps({"width": 48, "height": SIZE}))
    _expect_error(seq_root, "info.json", "'width' is 48", "24x24")


# --- ground truth ------------------------------------------------------------------------------

def _edit_cameras(root: Path, edit) -> None:
    path = root / "gt" / "heldout" / "cameras.json"
    cams = json.loads(path.read_text())
    edit(cams["side"])
    path.write_text(json.dumps(cams))


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda c: c.update(K=np.eye(3)[:2].tolist()), "view 'side' key 'K' has shape 2x3, expected 3x3"),
        (lambda c: c.update(w2c=(2 * np.eye(4)).tolist()), "view 'side' key 'w2c' rotation part is not a rotation"),
        (lambda c: c["K"][0].__setitem__(0, -5.0), "view 'side' key 'K' has a non-positive focal length"),
        (lambda c: c.pop("width"), "view 'side' has no key 'width'"),
        (lambda c: c.update(height=0), "view 'side' key 'height' is 0, expected a positive integer"),
    ],
)
def test_bad_heldout_camera(seq_root: Path, edit, problem):
    _edit_cameras(seq_root, edit)
    _expect_error(seq_root, "gt/heldout/cameras.json", problem)
    # Reading the views goes through the same checks.
    with pytest.raises(InputError, match="view 'side'"):
        read_sequence(seq_root).heldout_views()


def test_heldout_image_size_differs_from_camera(seq_root: Path):
    _edit_cameras(seq_root, lambda c: c.update(width=18))
    _expect_error(seq_root, "gt/heldout/side/images/00000.png", "image is 16x20",
                  "camera 'side' in cameras.json is 18x20")


def test_heldout_frame_not_in_metadata(seq_root: Path):
    write_image(seq_root / "gt/heldout/side/images/00005.png", np.zeros((20, 16, 3), np.uint8))
    _expect_error(seq_root, "gt/heldout/side/images/00005.png", "'00005'", "no entry in metadata.json")


def test_heldout_missing_mask(seq_root: Path):
    (seq_root / "gt/heldout/side/masks/00002.png").unlink()
    _expect_error(seq_root, "gt/heldout/side/masks/00002.png", "held-out mask file is missing")


def test_heldout_folder_without_camera(seq_root: Path):
    (seq_root / "gt/heldout/top/images").mkdir(parents=True)
    _expect_error(seq_root, "gt/heldout/top", "no entry in cameras.json")


def test_missing_gt_full_mask(seq_root: Path):
    (seq_root / "gt/full_masks/00001.png").unlink()
    _expect_error(seq_root, "gt/full_masks/00001.png", "gt full mask file is missing", "'00001'")


def test_corrupt_gt_image(seq_root: Path):
    (seq_root / "gt/images/00002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _expect_error(seq_root, "gt/images/00002.png", "cannot read image")
    # check_gt=False skips gt entirely.
    assert validate_sequence(seq_root, check_gt=False)["gt"] is None


def test_empty_gt_full_mask(seq_root: Path):
    write_mask(seq_root / "gt/full_masks/00000.png", np.zeros((SIZE, SIZE), bool))
    _expect_error(seq_root, "gt/full_masks/00000.png", "is empty")


# ----------------------------------------------------------------------------------------------
# The validate stage
# ----------------------------------------------------------------------------------------------

def test_validate_subject_writes_report(seq_root: Path, tmp_path: Path):
    report_path = tmp_path / "out" / "validation.json"
    report = validate_subject(seq_root, report_path)
    assert json.loads(report_path.read_text()) == report
    assert report["frames"] == 3


def test_validate_subject_writes_nothing_on_failure(seq_root: Path, tmp_path: Path):
    (seq_root / "masks" / "00002.png").unlink()
    report_path = tmp_path / "out" / "validation.json"
    with pytest.raises(InputError, match="masks/00002.png: mask file is missing"):
        validate_subject(seq_root, report_path)
    assert not report_path.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
