"""Motion files (AMASS layout, up-axis conversion, bad files), the built-in walk_wave motion, and the
animate stage rendering a trained avatar performing motions."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import snakemake_bin
from scipy.spatial.transform import Rotation

from occfusion_core.config import AnimateConfig, from_dict
from occfusion_core.data import motion as M
from occfusion_core.data.motion_files import MotionClip, load_motion, write_motion
from occfusion_core.io import InputError

ROOT = Path(__file__).resolve().parents[1]


def random_clip(frames: int = 7, seed: int = 0) -> MotionClip:
    rng = np.random.default_rng(seed)
    poses = rng.uniform(-0.8, 0.8, size=(frames, 72)).astype(np.float32)
    trans = rng.normal(size=(frames, 3)).astype(np.float32)
    return MotionClip("clip", poses, trans, fps=60.0)


def same_rotations(a: np.ndarray, b: np.ndarray) -> bool:
    """Axis-angle arrays (..., 3) describe the same rotations (rotvecs are not unique near pi)."""
    ra, rb = Rotation.from_rotvec(a.reshape(-1, 3)), Rotation.from_rotvec(b.reshape(-1, 3))
    return bool(np.allclose((ra.inv() * rb).magnitude(), 0.0, atol=1e-5))


# --------------------------------------------------------------------------------- files


@pytest.mark.parametrize("up_axis", ["z", "y"])
def test_smpl_round_trip_and_amass_layout(tmp_path, up_axis):
    clip = random_clip()
    path = tmp_path / "walk.npz"
    write_motion(path, clip, up_axis=up_axis)
    with np.load(path) as npz:
        assert npz["poses"].shape == (7, 72) and npz["poses"].dtype == np.float32
        assert npz["trans"].shape == (7, 3)
        assert float(npz["mocap_framerate"]) == 60.0
        assert npz["betas"].shape == (16,) and not npz["betas"].any()
        if up_axis == "z":  # the file is in AMASS's frame, not the project's
            assert not np.allclose(npz["trans"], clip.trans, atol=1e-3)
    back = load_motion(path, up_axis=up_axis)
    assert back.name == "walk" and back.fps == 60.0
    assert back.poses.shape == (7, 72) and back.poses.dtype == np.float32 and back.trans.dtype == np.float32
    assert same_rotations(back.poses[:, :3], clip.poses[:, :3])
    np.testing.assert_allclose(back.poses[:, 3:], clip.poses[:, 3:], atol=1e-6)
    np.testing.assert_allclose(back.trans, clip.trans, atol=1e-5)


def test_smplh_keeps_the_22_body_joints_and_zeroes_the_smpl_hands(tmp_path):
    rng = np.random.default_rng(1)
    poses = rng.uniform(-0.5, 0.5, size=(5, 156))
    trans = rng.normal(size=(5, 3))
    np.savez(
        tmp_path / "smplh.npz",
        poses=poses,
        trans=trans,
        betas=np.zeros(16),
        gender="male",
        mocap_framerate=120.0,
        dmpls=np.zeros((5, 8)),
    )
    clip = load_motion(tmp_path / "smplh.npz", up_axis="y")
    assert clip.poses.shape == (5, 72) and clip.fps == 120.0
    np.testing.assert_allclose(clip.poses[:, :66], poses[:, :66], atol=1e-6)
    assert not clip.poses[:, 66:].any()  # SMPL's hand joints 22/23: flat, not a finger's rotation
    np.testing.assert_allclose(clip.trans, trans, atol=1e-6)
    # without mocap_framerate: 30 fps
    np.savez(tmp_path / "norate.npz", poses=poses, trans=trans)
    assert load_motion(tmp_path / "norate.npz").fps == 30.0


def test_amass_z_up_becomes_the_projects_y_up(tmp_path, proxy_body):
    """AMASS +z (up) -> project +y; a body standing in AMASS (root turned +90 deg about x, how AMASS
    stands SMPL's y-up body on its z-up floor) stands upright, head above pelvis, in the project."""
    frames = 3
    poses = np.zeros((frames, 156))
    poses[:, :3] = Rotation.from_euler("x", 90, degrees=True).as_rotvec()
    trans = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    np.savez(tmp_path / "stand.npz", poses=poses, trans=trans, mocap_framerate=30.0)
    clip = load_motion(tmp_path / "stand.npz")  # up_axis 'z', as AMASS
    np.testing.assert_allclose(clip.trans, [[0, 1, 0], [0, 2, 0], [0.5, 0, 1.0]], atol=1e-6)
    assert same_rotations(clip.poses[:, :3], np.zeros((frames, 3)))  # upright, facing +z
    with torch.no_grad():
        joints = proxy_body(torch.as_tensor(clip.poses), torch.zeros(frames, 10), torch.as_tensor(clip.trans)).joints
    up = joints[:, M.HEAD] - joints[:, M.PELVIS]
    assert (up[:, 1] > 0.4).all() and (up[:, [0, 2]].abs() < 0.1).all()
    # read as y-up, the same file lies on its back
    lying = load_motion(tmp_path / "stand.npz", up_axis="y")
    with torch.no_grad():
        joints = proxy_body(torch.as_tensor(lying.poses), torch.zeros(frames, 10), torch.as_tensor(lying.trans)).joints
    assert ((joints[:, M.HEAD] - joints[:, M.PELVIS])[:, 1].abs() < 0.1).all()
    with pytest.raises(ValueError, match="up_axis"):
        load_motion(tmp_path / "stand.npz", up_axis="x")


def _good():
    return {"poses": np.zeros((4, 72)), "trans": np.zeros((4, 3)), "mocap_framerate": 30.0}


def _nan_poses():
    arrays = _good()
    arrays["poses"][2, 5] = np.nan
    return arrays


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({**_good(), "poses": np.zeros((4, 70))}, "'poses' has shape"),
        ({**_good(), "trans": np.zeros((4, 2))}, "'trans' has shape"),
        ({**_good(), "trans": np.zeros((5, 3))}, "4 frames but 'trans' has 5"),
        ({"poses": np.zeros((0, 72)), "trans": np.zeros((0, 3))}, "no frames"),
        (_nan_poses(), "non-finite values (first in frame 2)"),
        ({**_good(), "trans": np.full((4, 3), np.inf)}, "'trans' has non-finite"),
        ({"poses": np.zeros((4, 72))}, "no 'trans' array"),
        ({"trans": np.zeros((4, 3))}, "no 'poses' array"),
        ({**_good(), "mocap_framerate": -1.0}, "frame rate > 0"),
    ],
    ids=["poses_shape", "trans_shape", "mismatched", "empty", "nan", "inf", "no_trans", "no_poses", "fps"],
)
def test_bad_motion_file_raises_input_error_naming_the_file(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError) as err:
        load_motion(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_missing_or_not_npz_files_raise_input_error(tmp_path):
    text = tmp_path / "motion.npz"
    text.write_text("not a zip")
    npy = tmp_path / "poses.npy"
    np.save(npy, np.zeros((4, 72)))
    for path, needle in ((tmp_path / "nowhere.npz", "missing"), (text, "not an npz"), (npy, "not an npz")):
        with pytest.raises(InputError) as err:
            load_motion(path)
        assert str(path) in str(err.value) and needle in str(err.value)


# --------------------------------------------------------------------------------- walk_wave


def test_walk_wave_is_deterministic_finite_and_waves_while_walking(proxy_body):
    poses, trans = M.walk_wave()
    again_poses, again_trans = M.walk_wave()
    assert poses.shape == (72, 72) and trans.shape == (72, 3)
    assert np.array_equal(poses, again_poses) and np.array_equal(trans, again_trans)
    assert np.isfinite(poses).all() and np.isfinite(trans).all()

    clip = M.builtin_motion_clip("walk_wave", proxy_body)
    frames = len(clip.poses)
    with torch.no_grad():
        out = proxy_body(torch.as_tensor(clip.poses), torch.zeros(frames, 10), torch.as_tensor(clip.trans))
    joints = out.joints.numpy()
    wrist_above = joints[:, M.R_WRIST, 1] - joints[:, M.R_SHOULDER, 1]
    assert wrist_above[0] < -0.2  # the arm starts down ...
    assert (wrist_above > 0.15).sum() > frames // 2  # ... and waves above the shoulder for most of the clip
    # the wave: the waving wrist moves back and forth relative to the shoulder once raised
    rel = joints[frames // 4 :, M.R_WRIST] - joints[frames // 4 :, M.R_SHOULDER]
    assert np.ptp(rel[:, 0]) > 0.05 or np.ptp(rel[:, 2]) > 0.05
    # feet move: each ankle travels with the walk and swings relative to the pelvis
    for ankle in (M.L_ANKLE, M.R_ANKLE):
        assert np.linalg.norm(joints[-1, ankle, [0, 2]] - joints[0, ankle, [0, 2]]) > 0.8
        rel = joints[:, ankle] - joints[:, M.PELVIS]
        assert np.ptp(rel[:, 0]) > 0.15 and np.ptp(rel[:, 2]) > 0.15
    # feet on the floor y = 0 in every frame
    np.testing.assert_allclose(out.vertices[..., 1].amin(1).numpy(), 0.0, atol=1e-4)


def test_walk_wave_file_is_amass_z_up_and_reads_back(tmp_path, proxy_body):
    clip = M.builtin_motion_clip("walk_wave", proxy_body)
    write_motion(tmp_path / "walk_wave.npz", clip)
    with np.load(tmp_path / "walk_wave.npz") as npz:
        # AMASS: the pelvis height is the z of trans (about 0.9-1.2 m for a standing body), y is horizontal
        assert (npz["trans"][:, 2] > 0.7).all() and np.abs(npz["trans"][:, 1]).max() < 1.5
    back = load_motion(tmp_path / "walk_wave.npz")
    np.testing.assert_allclose(back.trans, clip.trans, atol=1e-5)
    assert same_rotations(back.poses[:, :3], clip.poses[:, :3]) and back.fps == M.WALK_WAVE_FPS


def test_builtin_motion_names_agree_with_the_workflow_and_schema():
    common = (ROOT / "rules" / "common.smk").read_text()
    listed = re.search(r"^BUILTIN_MOTIONS = (\[.*\])$", common, re.M)
    assert listed and yaml.safe_load(listed.group(1)) == list(M.BUILTIN_MOTIONS)
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())["$defs"]["animate"]
    assert schema["properties"]["motions"]["items"]["anyOf"][0]["enum"] == list(M.BUILTIN_MOTIONS)


def test_animate_schema_and_dataclass_name_the_same_fields():
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())["$defs"]["animate"]
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(AnimateConfig)}
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    built = from_dict(AnimateConfig, cfg.get("animate"), "animate")
    assert "walk_wave" in built.motions and built.max_frames <= 36


@pytest.mark.parametrize(
    "motions,needle",
    [
        (["a/jump.npz", "b/jump.npz"], "both named 'jump'"),
        (["mine/walk_wave.npz"], "name of the built-in motion 'walk_wave'"),
    ],
    ids=["same_stem", "builtin_name"],
)
def test_motion_names_that_collide_fail_before_any_job(tmp_path, motions, needle):
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["animate"] = {"motions": motions}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [
            snakemake_bin(),
            "-n",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--configfile",
            str(bad),
            "--directory",
            str(tmp_path / "run"),
            "--workflow-profile",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "results").exists()


# --------------------------------------------------------------------------------- animate


def test_place_motion_turns_about_the_vertical_and_lands_on_the_scene(proxy_body):
    from occfusion_core.stages.animate import _yaw_of, place_motion

    clip = M.builtin_motion_clip("walk_wave", proxy_body)
    target, floor = np.array([1.0, 5.0, -2.0]), -1.3
    poses, trans, pelvis = place_motion(
        proxy_body, clip.poses, clip.trans, torch.zeros(10), np.radians(30.0), target, floor
    )
    with torch.no_grad():
        out = proxy_body(torch.as_tensor(poses).float(), torch.zeros(len(poses), 10), torch.as_tensor(trans).float())
    np.testing.assert_allclose(out.joints[:, 0].numpy(), pelvis, atol=1e-4)
    np.testing.assert_allclose(pelvis[:, [0, 2]].mean(0), target[[0, 2]], atol=1e-4)
    assert abs(float(out.vertices[..., 1].min()) - floor) < 1e-4
    # walk_wave heads 55 deg from +z towards +x; turned by 30 it walks (and faces) at 85 deg
    travel = pelvis[-1] - pelvis[0]
    assert abs(np.degrees(np.arctan2(travel[0], travel[2])) - 85.0) < 5.0
    assert abs(np.degrees(_yaw_of(poses[0, :3])) - 85.0) < 6.0
    # the body's shape and joint angles are untouched, only the root turns
    np.testing.assert_allclose(poses[:, 3:], clip.poses[:, 3:], atol=1e-6)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A subject and a briefly trained avatar (stage 1) on it."""
    from occfusion_core.body.model import load_body_model
    from occfusion_core.body.proxy import write_proxy_smpl
    from occfusion_core.config import OptimizeConfig, SyntheticConfig
    from occfusion_core.data.synthetic import generate_synthetic_subject
    from occfusion_core.stages.optimize import optimize

    root = tmp_path_factory.mktemp("animate")
    body_path = write_proxy_smpl(root / "body.pkl", grid_mm=40)
    data = root / "data"
    generate_synthetic_subject(
        data,
        SyntheticConfig(frames=6, width=48, height=48, occlusion="zju_band", heldout_views=0),
        load_body_model(body_path),
    )
    cfg = OptimizeConfig(iterations=12, checkpoint_every=100, log_every=100, backend="torch", device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimize(data, body_path, cfg, root / "model.pt", root / "renders", root / "ckpt", progress=False)
    finally:
        torch.set_num_threads(threads)
    return data, root / "model.pt", body_path


def read_video(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return np.stack([np.asarray(f) for f in reader])  # (T, H, W, 3) uint8


def test_animate_renders_the_avatar_performing_each_motion(tiny_model, tmp_path, one_torch_thread):
    from occfusion_core.body.model import load_body_model
    from occfusion_core.io import read_json
    from occfusion_core.stages.animate import animate_avatar

    data, model_path, body_path = tiny_model
    write_motion(tmp_path / "walk_wave.npz", M.builtin_motion_clip("walk_wave", load_body_model(body_path)))
    # A user's AMASS-style SMPL-H file far from the training scene: standing (z up), 20 m away.
    frames = 20
    poses = np.zeros((frames, 156))
    poses[:, :3] = Rotation.from_euler("x", 90, degrees=True).as_rotvec()
    poses[:, 3 * M.L_SHOULDER + 2] = np.linspace(-1.2, 0.0, frames)  # the left arm comes down
    trans = np.tile([20.0, -15.0, 0.9], (frames, 1))
    np.savez(tmp_path / "far_away.npz", poses=poses, trans=trans, mocap_framerate=60.0)

    cfg = AnimateConfig(frame_stride=3, max_frames=5, backend="torch", device="cpu", heading="camera")
    motions = {"walk_wave": tmp_path / "walk_wave.npz", "far_away": tmp_path / "far_away.npz"}
    out = tmp_path / "animate"
    summary = animate_avatar(data, model_path, body_path, motions, cfg, out)

    assert summary["motions"]["walk_wave"]["frames"] == 5 and summary["motions"]["far_away"]["frames"] == 5
    assert summary["motions"]["far_away"]["fps"] == 20  # 60 fps / stride 3
    assert read_json(out / "summary.json")["frames_rendered"] == 4 * 5
    background = np.array([255, 255, 255])  # the training background (OptimizeConfig: white)
    for name in motions:
        for camera in ("train", "orbit"):
            path = out / f"{name}_{camera}.mp4"
            assert path.is_file() and path.stat().st_size > 0
            video = read_video(path)
            assert video.shape == (5, 48, 48, 3)
            middle = video[:, 12:36, 12:36].astype(np.int16)
            person = (np.abs(middle - background).sum(-1) > 60).mean(axis=(1, 2))  # per frame
            assert (person > 0.05).all(), f"{path.name}: the avatar is missing from the middle: {person}"
            border = video[:, :, :3].astype(np.int16)  # the left edge stays background
            assert (np.abs(border - background).sum(-1) > 60).mean() < 0.1
