"""The embedded synthetic subject: layout, determinism, occlusion protocol, noise, held-out views,
and the motions and clothing it is made of."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.spatial.transform import Rotation

from occfusion_core.config import SyntheticConfig, to_dict
from occfusion_core.data.motion import ground_trans, novel_pose_motion, walk_turn
from occfusion_core.data.synthetic import generate_synthetic_subject, heldout_azimuths, view_name
from occfusion_core.data.texture import GARMENT_NAMES, JOINT_GARMENT, BodyTexture
from occfusion_core.io import read_image, read_json, read_mask
from occfusion_core.render.camera import Camera, intrinsics_from_fov, orbit_cameras
from occfusion_core.render.mesh import silhouette

NOISE = {"pose_noise_deg": 2.0, "trans_noise_m": 0.02, "noise_correlation_frames": 0.0}
EXACT = {"pose_noise_deg": 0.0, "trans_noise_m": 0.0, "betas_noise": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def default_run(proxy_body, tmp_path_factory):
    """The default config, generated once; its wall time is printed (the report's figure)."""
    out = tmp_path_factory.mktemp("synthetic") / "default"
    cfg = SyntheticConfig()
    start = time.perf_counter()
    summary = generate_synthetic_subject(out, cfg, proxy_body)
    seconds = time.perf_counter() - start
    print(f"\ndefault synthetic subject ({cfg.frames} frames {cfg.width}x{cfg.height}, "
          f"{proxy_body.num_vertices} vertices, {cfg.heldout_views} held-out views): {seconds:.2f} s; "
          f"hidden person fraction in occluded frames: mean {summary['hidden_fraction_mean']:.2f}, "
          f"min {summary['hidden_fraction_min']:.2f}, max {summary['hidden_fraction_max']:.2f}")
    return out, cfg, summary, seconds


def _names(n):
    return [f"{i:05d}" for i in range(n)]


def _stack(folder: Path, names, reader):
    return np.stack([reader(folder / f"{n}.png") for n in names])


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata(default_run):
    out, cfg, summary, seconds = default_run
    names = _names(cfg.frames)
    views = [view_name(a) for a in heldout_azimuths(cfg.heldout_views)]
    heldout_names = names[:: cfg.heldout_every]
    expected = {"metadata.json", "info.json", "gt/clean_metadata.json", "gt/heldout/cameras.json"}
    for n in names:
        expected |= {f"images/{n}.png", f"masks/{n}.png", f"gt/images/{n}.png", f"gt/full_masks/{n}.png",
                     f"gt/occluder_masks/{n}.png"}
    for v in views:
        for n in heldout_names:
            expected |= {f"gt/heldout/{v}/images/{n}.png", f"gt/heldout/{v}/masks/{n}.png"}
    assert set(_files(out)) == expected

    meta = read_json(out / "metadata.json")
    assert list(meta) == names
    for entry in meta.values():
        assert len(entry["poses"]) == 72 and len(entry["betas"]) == 10 and len(entry["trans"]) == 3
        assert np.asarray(entry["cam_intrinsics"]).shape == (3, 3)
        assert np.asarray(entry["cam_extrinsics"]).shape == (4, 4)
    clean = read_json(out / "gt" / "clean_metadata.json")  # the estimate errs by default, like a real one
    assert list(clean) == names and all(clean[n]["poses"] != meta[n]["poses"] for n in names)
    assert clean["00000"]["betas"] != meta["00000"]["betas"]  # the shape estimate differs too
    assert all(meta[n]["betas"] == meta["00000"]["betas"] for n in names)  # one estimate per sequence
    info = read_json(out / "info.json")
    assert info["source"] == "synthetic" and info["fps"] == 15
    assert (info["width"], info["height"]) == (cfg.width, cfg.height)
    assert info["occlusion"] == "zju_band" and info["seed"] == 0 and info["body_model"] == "proxy"
    assert info["config"] == to_dict(cfg)
    assert "mesh rasterizer" in info["notes"]
    image = read_image(out / "images" / "00000.png")
    assert image.shape == (cfg.height, cfg.width, 3)
    assert seconds <= 30.0, f"generation took {seconds:.1f} s"


def test_masks_images_and_zju_band_protocol(default_run):
    out, cfg, summary, _ = default_run
    names = _names(cfg.frames)
    visible = _stack(out / "masks", names, read_mask)
    full = _stack(out / "gt" / "full_masks", names, read_mask)
    occluder = _stack(out / "gt" / "occluder_masks", names, read_mask)
    images = _stack(out / "images", names, read_image)
    gt = _stack(out / "gt" / "images", names, read_image)

    np.testing.assert_array_equal(visible, full & ~occluder)
    assert visible.any(axis=(1, 2)).all(), "the visible mask is never empty"
    # The person is fully inside the frame: the border rows and columns are empty.
    assert not (full[:, 0].any() or full[:, -1].any() or full[:, :, 0].any() or full[:, :, -1].any())
    n_occ = 40
    hidden = (full & occluder).sum(axis=(1, 2)) / full.sum(axis=(1, 2))
    assert (hidden[:n_occ] > 0).all() and (hidden[n_occ:] == 0).all()
    assert not occluder[n_occ:].any()
    # Unoccluded frames are exactly the ground truth; occluded ones differ only inside the band.
    np.testing.assert_array_equal(images[n_occ:], gt[n_occ:])
    np.testing.assert_array_equal(images[~occluder], gt[~occluder])
    assert (images[occluder & full] != gt[occluder & full]).any(axis=-1).mean() > 0.9
    # The band shows the static background: where this frame's band is, the last frame shows
    # background too (its person elsewhere) and the colours agree.
    for t in (0, 17, 39):
        # (a pixel next to the person's anti-aliased edge blends both, so keep one pixel away)
        background_there = occluder[t] & ~binary_dilation(full[-1])
        np.testing.assert_array_equal(images[t][background_there], gt[-1][background_there])
        cols = np.flatnonzero(occluder[t].any(axis=0))
        person_cols = np.flatnonzero(full[t].any(axis=0))
        width = person_cols[-1] + 1 - person_cols[0]
        assert abs(cols.size - 0.5 * width) <= 1
        assert abs((cols[0] + cols[-1] + 1) / 2 - (person_cols[0] + person_cols[-1] + 1) / 2) <= 0.5
    # Half the person's width holds the torso and legs, so much more than half the pixels go.
    assert 0.2 < hidden[:n_occ].mean() < 0.95
    assert summary["occluded_frames"] == n_occ


def _silhouette_iou(meta: dict, name: str, cfg: SyntheticConfig, body, full: np.ndarray) -> tuple[float, float]:
    """(IoU, share of the body silhouette inside ``full``) of the body posed by ``meta[name]``."""
    m = meta[name]
    camera = Camera(torch.tensor(m["cam_intrinsics"]), torch.tensor(m["cam_extrinsics"]), cfg.width, cfg.height)
    verts = body.forward(torch.tensor([m["poses"]]), torch.tensor([m["betas"]]), torch.tensor([m["trans"]])).vertices[0]
    sil = silhouette(verts, body.faces, camera).numpy()
    return (sil & full).sum() / (sil | full).sum(), (sil & full).sum() / sil.sum()


def test_metadata_reproduces_the_masks(default_run, proxy_body, tmp_path):
    """The exact body parameters, rendered again, give the full masks of a bare (fitted) body; with
    the default loose clothing the body lies inside the person, whose outline is wider; the
    estimate in metadata.json lies visibly off it."""
    out, cfg, _, _ = default_run
    clean = read_json(out / "gt" / "clean_metadata.json")
    estimate = read_json(out / "metadata.json")
    for name in ("00000", "00023", "00049"):
        full = read_mask(out / "gt" / "full_masks" / f"{name}.png")
        iou, inside = _silhouette_iou(clean, name, cfg, proxy_body, full)
        assert inside > 0.97 and 0.7 < iou < 0.95  # the clothes stand off the body
        assert _silhouette_iou(estimate, name, cfg, proxy_body, full)[0] < iou - 0.1
    bare_cfg = SyntheticConfig(frames=4, heldout_views=0, clothing="fitted", **EXACT)
    generate_synthetic_subject(tmp_path / "bare", bare_cfg, proxy_body)
    bare = read_json(tmp_path / "bare" / "metadata.json")
    for name in bare:
        full = read_mask(tmp_path / "bare" / "gt" / "full_masks" / f"{name}.png")
        assert _silhouette_iou(bare, name, bare_cfg, proxy_body, full)[0] > 0.99
    # Feet on the floor: the lowest vertex of every frame sits at the same height.
    poses = torch.tensor([clean[n]["poses"] for n in clean])
    betas = torch.tensor([clean[n]["betas"] for n in clean])
    trans = torch.tensor([clean[n]["trans"] for n in clean])
    lowest = proxy_body.forward(poses, betas, trans).vertices[..., 1].amin(dim=1)
    assert float(lowest.max() - lowest.min()) < 1e-4


def test_heldout_views(default_run):
    out, cfg, _, _ = default_run
    cams = read_json(out / "gt" / "heldout" / "cameras.json")
    assert len(cams) == cfg.heldout_views
    meta = read_json(out / "metadata.json")
    train = Camera(torch.tensor(meta["00000"]["cam_intrinsics"]), torch.tensor(meta["00000"]["cam_extrinsics"]),
                   cfg.width, cfg.height)
    train_dir = train.center.numpy()
    for view, d in cams.items():
        cam = Camera.from_dict(d)
        assert (cam.width, cam.height) == (cfg.width, cfg.height)
        c = cam.center.numpy()
        # On the training camera's circle (same height, same distance from the target), away from it.
        target = train_dir - np.array([0.0, 0.0, cfg.camera_distance])
        np.testing.assert_allclose(np.linalg.norm((c - target)[[0, 2]]), cfg.camera_distance, rtol=1e-4)
        angle = math.degrees(math.atan2(c[0] - target[0], c[2] - target[2])) % 360
        assert 20.0 < angle < 340.0
        assert view == f"view{round(angle) % 360:03d}"
        masks = _stack(out / "gt" / "heldout" / view / "masks", _names(cfg.frames)[:: cfg.heldout_every], read_mask)
        assert masks.any(axis=(1, 2)).all()
        assert not (masks[:, 0].any() or masks[:, -1].any() or masks[:, :, 0].any() or masks[:, :, -1].any())


def test_deterministic_and_noise_changes_metadata_only(proxy_body, tmp_path):
    small = {"frames": 10, "heldout_views": 2, "heldout_every": 4, "occlusion": "object", "seed": 5}
    generate_synthetic_subject(tmp_path / "noisy", SyntheticConfig(**small, **NOISE), proxy_body)
    generate_synthetic_subject(tmp_path / "again", SyntheticConfig(**small, **NOISE), proxy_body)
    noisy = _files(tmp_path / "noisy")
    assert _files(tmp_path / "again") == noisy, "same seed, same bytes"

    generate_synthetic_subject(tmp_path / "clean", SyntheticConfig(**small, **EXACT), proxy_body)
    reference = _files(tmp_path / "clean")
    assert set(reference) == set(noisy)
    for rel, data in reference.items():
        if rel.endswith(".png") or rel in ("gt/clean_metadata.json", "gt/heldout/cameras.json"):
            assert noisy[rel] == data, f"{rel} must not depend on the noise"
    meta = json.loads(noisy["metadata.json"])
    clean = json.loads(noisy["gt/clean_metadata.json"])
    assert json.loads(reference["metadata.json"]) == clean
    # the shape estimate: one betas vector for the sequence, off the true shape by betas_noise per coefficient
    dbetas = np.array(meta["00000"]["betas"]) - np.array(clean["00000"]["betas"])
    assert 0.1 < dbetas.std() < 1.2
    noisy_poses = np.array([meta[n]["poses"] for n in meta]).reshape(-1, 3)
    clean_poses = np.array([clean[n]["poses"] for n in clean]).reshape(-1, 3)
    angle = (Rotation.from_rotvec(clean_poses).inv() * Rotation.from_rotvec(noisy_poses)).magnitude()
    # The angle of a rotation vector with N(0, s^2) components has mean s * sqrt(8 / pi).
    assert abs(math.degrees(angle.mean()) / (2.0 * math.sqrt(8 / math.pi)) - 1.0) < 0.1
    dtrans = np.array([meta[n]["trans"] for n in meta]) - np.array([clean[n]["trans"] for n in clean])
    assert abs(dtrans.std() / 0.02 - 1.0) < 0.3
    assert meta["00000"]["cam_extrinsics"] == clean["00000"]["cam_extrinsics"]

    generate_synthetic_subject(tmp_path / "seed6", SyntheticConfig(**{**small, "seed": 6}, **NOISE), proxy_body)
    other = read_json(tmp_path / "seed6" / "metadata.json")
    assert all(other[n]["poses"] != meta[n]["poses"] for n in other)
    assert _files(tmp_path / "seed6")["images/00003.png"] != noisy["images/00003.png"]


def test_estimate_errors_are_correlated_in_time(proxy_body, tmp_path):
    """The default estimate errs like a tracker's: neighbouring frames err alike (AR(1), time constant
    noise_correlation_frames), with the configured spread."""
    cfg = SyntheticConfig(frames=40, width=48, height=48, heldout_views=0, occlusion="none", supersample=1,
                          pose_noise_deg=6.0, noise_correlation_frames=3.0)
    generate_synthetic_subject(tmp_path / "s", cfg, proxy_body)
    meta, clean = read_json(tmp_path / "s" / "metadata.json"), read_json(tmp_path / "s" / "gt" / "clean_metadata.json")
    names = sorted(meta)
    err = (Rotation.from_rotvec(np.array([clean[n]["poses"] for n in names]).reshape(-1, 3)).inv()
           * Rotation.from_rotvec(np.array([meta[n]["poses"] for n in names]).reshape(-1, 3))).as_rotvec()
    err = np.degrees(err.reshape(len(names), -1))  # (T, 72) error rotation vectors
    assert abs(err.std() / 6.0 - 1.0) < 0.25
    lag1 = np.mean([np.corrcoef(err[:-1, k], err[1:, k])[0, 1] for k in range(72)])
    assert abs(lag1 - math.exp(-1.0 / 3.0)) < 0.15  # 0.72


def test_clothing_stands_off_the_body(proxy_body):
    """Loose clothing moves only clothed vertices, outwards, by the garment thicknesses."""
    from occfusion_core.data.clothing import clothing_offsets, outward_normals

    texture = BodyTexture.from_body_model(proxy_body)
    offsets = clothing_offsets(texture, proxy_body.faces, texture.rest_joints, "loose")
    thickness = offsets.norm(dim=-1)
    normals = outward_normals(texture.v_template, proxy_body.faces)
    moved = thickness > 0
    assert ((offsets[moved] * normals[moved]).sum(-1) > 0.99 * thickness[moved]).all()  # along the outward normal
    garment = JOINT_GARMENT[texture.dominant_joint]
    skin = garment == GARMENT_NAMES.index("skin")
    assert (thickness[garment == GARMENT_NAMES.index("shoes")] == 0).all()
    assert (thickness[garment == GARMENT_NAMES.index("shirt")] >= 0.012 - 1e-6).all()
    assert 0.04 < float(thickness.max()) <= 0.046  # the shirt's hem
    assert 0 < int(moved[skin].sum()) < int(skin.sum())  # the hair, not the face or hands
    assert not clothing_offsets(texture, proxy_body.faces, texture.rest_joints, "fitted").any()


def test_object_occluder_subject(proxy_body, tmp_path):
    cfg = SyntheticConfig(frames=12, occlusion="object", heldout_views=1, heldout_every=6, seed=2)
    summary = generate_synthetic_subject(tmp_path, cfg, proxy_body)
    names = _names(cfg.frames)
    visible = _stack(tmp_path / "masks", names, read_mask)
    full = _stack(tmp_path / "gt" / "full_masks", names, read_mask)
    occluder = _stack(tmp_path / "gt" / "occluder_masks", names, read_mask)
    images = _stack(tmp_path / "images", names, read_image)
    gt = _stack(tmp_path / "gt" / "images", names, read_image)
    np.testing.assert_array_equal(visible, full & ~occluder)
    assert visible.any(axis=(1, 2)).all()
    n_occ = round(0.8 * cfg.frames)
    assert occluder[:n_occ].any(axis=(1, 2)).all() and not occluder[n_occ:].any()
    assert (occluder & full)[:n_occ].any(axis=(1, 2)).sum() >= n_occ - 2  # at the ends it may miss the body
    assert summary["hidden_fraction_max"] > 0.3
    # The crate is drawn over the scene (including background), not a background-coloured hole.
    assert (images[occluder] != gt[occluder]).any(axis=-1).mean() > 0.9
    np.testing.assert_array_equal(images[~occluder], gt[~occluder])


def test_plain_background_without_occlusion(proxy_body, tmp_path):
    cfg = SyntheticConfig(frames=6, occlusion="none", background="white", heldout_views=0, seed=3)
    generate_synthetic_subject(tmp_path, cfg, proxy_body)
    assert not (tmp_path / "gt" / "occluder_masks").exists()
    assert read_json(tmp_path / "gt" / "heldout" / "cameras.json") == {}
    names = _names(cfg.frames)
    images = _stack(tmp_path / "images", names, read_image)
    np.testing.assert_array_equal(images, _stack(tmp_path / "gt" / "images", names, read_image))
    full = _stack(tmp_path / "gt" / "full_masks", names, read_mask)
    np.testing.assert_array_equal(_stack(tmp_path / "masks", names, read_mask), full)
    # Off the person (one pixel away from the anti-aliased edge) the background is pure white, but for
    # the odd pixel where a part thinner than half a pixel (a hand seen edge-on) leaves a tint.
    away = ~np.stack([binary_dilation(f) for f in full])
    inner = np.stack([binary_erosion(f) for f in full])
    assert (images[away] != 255).any(axis=-1).mean() < 1e-3
    assert (images[inner] < 250).any(axis=-1).all()


def test_walk_turn_motion(proxy_body):
    poses, trans = walk_turn(40, turns=1.0, seed=0)
    assert poses.shape == (40, 72) and trans.shape == (40, 3)
    heading = Rotation.from_rotvec(poses[:, :3]).apply([0.0, 0.0, 1.0])  # where the body faces
    yaw = np.degrees(np.unwrap(np.arctan2(heading[:, 0], heading[:, 2])))
    assert 330 < yaw[-1] - yaw[0] + 360 / 40 < 390, "one full turn"
    assert abs(yaw[0]) <= 11, "starts facing the training camera"
    # The legs swing: both hips flex forwards and backwards over the sequence.
    for hip in (1, 2):
        flex = Rotation.from_rotvec(poses[:, 3 * hip : 3 * hip + 3]).as_euler("xyz", degrees=True)[:, 0]
        assert flex.min() < -15 and flex.max() > 15
    again, _ = walk_turn(40, turns=1.0, seed=0)
    np.testing.assert_array_equal(poses, again)
    assert not np.array_equal(poses, walk_turn(40, turns=1.0, seed=1)[0])
    grounded = ground_trans(proxy_body, poses, trans, floor_y=-1.15)
    lowest = proxy_body.forward(torch.tensor(poses, dtype=torch.float32), torch.zeros(40, 10),
                                torch.tensor(grounded, dtype=torch.float32)).vertices[..., 1].amin(dim=1)
    np.testing.assert_allclose(lowest.numpy(), -1.15, atol=1e-4)


def test_novel_pose_motions(proxy_body):
    rest = proxy_body.forward(torch.zeros(1, 72), torch.zeros(1, 10), torch.zeros(1, 3)).joints[0]
    for name in ("dance", "kick", "walk"):
        poses = novel_pose_motion(name, 30)
        assert poses.shape == (30, 72) and np.isfinite(poses).all()
        assert np.ptp(poses, axis=0).max() > math.radians(30), f"{name} moves"
    joints = proxy_body.forward(torch.tensor(novel_pose_motion("dance", 30), dtype=torch.float32),
                                torch.zeros(30, 10), torch.zeros(30, 3)).joints
    wrist_height = joints[:, 20, 1] - rest[15, 1]
    assert wrist_height.max() > 0.1 and wrist_height.min() < -0.4, "dance: hands above the head and down"
    joints = proxy_body.forward(torch.tensor(novel_pose_motion("kick", 24), dtype=torch.float32),
                                torch.zeros(24, 10), torch.zeros(24, 3)).joints
    ankle_forward = joints[:, [7, 8], 2] - joints[:, [0], 2]
    assert ankle_forward.max() > 0.5, "kick: a foot goes well forward"
    with pytest.raises(ValueError, match="dance"):
        novel_pose_motion("moonwalk", 5)


def test_clothing_front_back_and_garments(proxy_body):
    texture = BodyTexture.from_body_model(proxy_body)
    garments = JOINT_GARMENT[texture.dominant_joint]
    assert set(garments.tolist()) == set(range(len(GARMENT_NAMES))) - {GARMENT_NAMES.index("hair")}
    # Rendered front and back (T-pose, orthogonal-ish views) differ on the torso; hair shows at the back.
    K = intrinsics_from_fov(96, 96, 40.0)
    front, back = orbit_cameras((0.0, -0.3, 0.0), 3.0, -0.3, [0.0, 180.0], K, 96, 96)
    rf = texture.render(proxy_body.v_template, proxy_body.faces, front)
    rb = texture.render(proxy_body.v_template, proxy_body.faces, back)
    both = rf.mask & rb.mask.flip(1)  # the back view is mirrored left-right
    diff = (rf.rgb - rb.rgb.flip(1)).abs().amax(-1)[both]
    assert (diff > 0.2).float().mean() > 0.15
    hair = torch.tensor([0.22, 0.13, 0.07])
    def hair_pixels(r):
        return ((r.rgb - hair).abs().amax(-1) < 0.08).sum()
    assert hair_pixels(rb) > hair_pixels(rf) > 0
    # Every garment colour family shows up in a 96 px render, with several colours each.
    assert len(torch.unique((rf.rgb[rf.mask] * 20).round(), dim=0)) > 8
