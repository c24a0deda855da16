"""The live viewer (occfusion_core.viewer): finding a result's files, the splats and mesh it shows
for a frame, and the page in a headless browser."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from occfusion_core.body.model import load_body_model
from occfusion_core.body.proxy import write_proxy_smpl
from occfusion_core.config import OptimizeConfig, SyntheticConfig
from occfusion_core.data.synthetic import generate_synthetic_subject
from occfusion_core.io import InputError
from occfusion_core.stages.optimize import optimize
from occfusion_core.viewer.scene import AvatarScene, find_viewer_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """A results folder laid out as the workflow writes it (rules/common.smk), with a stage-1 model
    trained for a few iterations: ``<root>/results/{body_model/proxy_smpl.pkl, tiny/data,
    tiny/occgauhuman/stage1/model.pt}``; returns the variant folder."""
    results = tmp_path_factory.mktemp("viewer") / "results"
    body_path = write_proxy_smpl(results / "body_model" / "proxy_smpl.pkl", grid_mm=40)
    data = results / "tiny" / "data"
    generate_synthetic_subject(
        data, SyntheticConfig(frames=4, width=48, height=48, occlusion="zju_band"), load_body_model(body_path)
    )
    variant = results / "tiny" / "occgauhuman"
    cfg = OptimizeConfig(
        iterations=8, checkpoint_every=8, log_every=8, backend="torch", device="cpu", sh_increase_every=2
    )
    optimize(
        data,
        body_path,
        cfg,
        variant / "stage1" / "model.pt",
        variant / "stage1" / "renders",
        variant / "stage1" / "ckpt",
        progress=False,
    )
    return variant


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_a_missing_results_folder_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "results" / "synth" / "occfusion"
    with pytest.raises(InputError, match=re.escape(str(missing))):
        find_viewer_inputs(missing)


def test_a_folder_without_a_model_is_an_error_naming_it(tmp_path):
    variant = tmp_path / "results" / "synth" / "occfusion"
    (variant / "stage1").mkdir(parents=True)
    with pytest.raises(InputError, match=re.escape(str(variant)) + ".*no trained model"):
        find_viewer_inputs(variant)


def test_a_missing_sequence_or_body_model_is_an_error_naming_it(tiny_results, tmp_path):
    import shutil

    copy = tmp_path / "results" / "tiny" / "occgauhuman"
    shutil.copytree(tiny_results / "stage1", copy / "stage1", ignore=shutil.ignore_patterns("renders"))
    with pytest.raises(InputError, match=re.escape(str(copy.parent / "data"))):
        find_viewer_inputs(copy)
    shutil.copytree(tiny_results.parent / "data", copy.parent / "data")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "results" / "body_model" / "proxy_smpl.pkl"))):
        find_viewer_inputs(copy)


def test_the_final_model_is_stage_3s_where_the_variant_ran_it(tiny_results):
    inputs = find_viewer_inputs(tiny_results)
    assert inputs.model_path == tiny_results / "stage1" / "model.pt"
    assert inputs.data_dir == tiny_results.parent / "data"
    assert inputs.body_model_path == tiny_results.parent.parent / "body_model" / "proxy_smpl.pkl"


def test_the_cli_refuses_a_missing_folder_before_serving(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "occfusion_core.viewer", str(missing), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "viewer: http" not in proc.stdout


# ----------------------------------------------------------------------------------------------
# Splats and mesh
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_scene(tiny_results) -> AvatarScene:
    return AvatarScene.load(find_viewer_inputs(tiny_results))


def test_the_splats_of_a_frame_are_the_renderers_deformation(tiny_results, tiny_scene):
    from occfusion_core.data.sequence import read_sequence
    from occfusion_core.io import load_torch
    from occfusion_core.render.sh import sh_to_rgb, view_directions
    from occfusion_core.stages.render import AvatarRenderer
    from occfusion_core.stages.trained_model import load_trained_model, training_body_params

    # the render stage's own steps (stages/render.py render_all), on their own model
    seq = read_sequence(tiny_results.parent / "data")
    body = load_body_model(tiny_results.parent.parent / "body_model" / "proxy_smpl.pkl")
    model, saved = load_trained_model(tiny_results / "stage1" / "model.pt", body, "cpu")
    params, _ = training_body_params(seq, saved)
    assert saved["body_refinement"], "the fixture's model should carry per-frame refined body parameters"
    renderer = AvatarRenderer(model, saved["config"]["background"], "torch", saved["config"]["sh_view_frame"])

    frame = 2
    with torch.no_grad():
        expected = renderer.model.deform(params["poses"][frame], params["betas"][frame], params["trans"][frame])
        transforms = expected.transforms if renderer.view_frame == "canonical" else None
        colours = sh_to_rgb(
            expected.sh_degree,
            expected.sh,
            view_directions(expected.means, seq.camera(seq.frames[frame]).center, transforms),
        )

    sequence = tiny_scene.training
    splats = tiny_scene.splats(sequence.pose(frame), tiny_scene.camera_for(sequence, frame))
    n = model.num_gaussians
    assert splats.centers.shape == (n, 3) and splats.covariances.shape == (n, 3, 3)
    assert splats.rgbs.shape == (n, 3) and splats.opacities.shape == (n, 1)
    np.testing.assert_allclose(splats.centers, expected.means.numpy(), atol=1e-6)
    np.testing.assert_allclose(splats.covariances, expected.covars.numpy(), atol=1e-7, rtol=1e-5)
    np.testing.assert_allclose(splats.rgbs, colours.clamp(0, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(splats.opacities[:, 0], expected.opacities.numpy(), atol=1e-7)
    assert load_torch(tiny_results / "stage1" / "model.pt")["model"]["num_gaussians"] == n

    np.testing.assert_array_equal(splats.covariances, splats.covariances.transpose(0, 2, 1))
    assert np.linalg.eigvalsh(splats.covariances.astype(np.float64)).min() > -1e-9
    assert 0 <= splats.rgbs.min() and splats.rgbs.max() <= 1
    assert 0 <= splats.opacities.min() and splats.opacities.max() <= 1
    # the frames differ: the avatar moves with the slider
    other = tiny_scene.splats(sequence.pose(0), tiny_scene.camera_for(sequence, 0))
    assert np.abs(other.centers - splats.centers).max() > 1e-3


def test_the_mesh_of_a_frame_is_the_posed_body(tiny_scene):
    pose = tiny_scene.training.pose(1)
    mesh = tiny_scene.mesh(pose)
    with torch.no_grad():
        expected = tiny_scene.body(pose.poses[None], pose.betas[None], pose.trans[None]).vertices[0]
    np.testing.assert_allclose(mesh.vertices, expected.numpy(), atol=1e-6)
    assert mesh.faces.dtype == np.uint32 and mesh.faces.max() < len(mesh.vertices)


def test_a_motion_is_placed_as_the_animate_stage_places_it(tiny_results, tmp_path):
    from occfusion_core.config import AnimateConfig
    from occfusion_core.data import motion as M
    from occfusion_core.data.motion_files import MotionClip, load_motion, write_motion
    from occfusion_core.data.sequence import read_sequence
    from occfusion_core.stages.animate import motion_placement, placed_motion
    from occfusion_core.stages.trained_model import load_trained_model, training_body_params

    body = load_body_model(tiny_results.parent.parent / "body_model" / "proxy_smpl.pkl")
    walk = M.builtin_motion_clip("walk_wave", body)
    path = tmp_path / "walk.npz"
    write_motion(path, MotionClip("walk", walk.poses[:12], walk.trans[:12], walk.fps))
    scene = AvatarScene.load(find_viewer_inputs(tiny_results, motions=[path]))
    motion = scene.sequences["walk"]

    # the animate stage's steps (stages/animate.py animate_avatar) for the same clip, all its frames
    seq = read_sequence(tiny_results.parent / "data")
    _, saved = load_trained_model(tiny_results / "stage1" / "model.pt", body, "cpu")
    params, _ = training_body_params(seq, saved)
    betas = params["betas"].mean(0)
    placement = motion_placement(body, params, seq.camera(seq.frames[0]), betas, AnimateConfig().heading)
    clip = load_motion(path)
    poses, trans, _, _ = placed_motion(body, clip.poses, clip.trans, placement, betas)
    assert len(motion) == 12 and not motion.training
    np.testing.assert_allclose(motion.poses.numpy(), poses, atol=1e-5)
    np.testing.assert_allclose(motion.trans.numpy(), trans, atol=1e-5)
    np.testing.assert_allclose(motion.betas.numpy(), betas.numpy(), atol=1e-7)

    # what that placement is: the training frames' mean pelvis (horizontally) and floor
    with torch.no_grad():
        training = body(params["poses"], betas.expand(len(params["poses"]), -1), params["trans"])
        placed = body(motion.poses, betas.expand(len(motion), -1), motion.trans)
    np.testing.assert_allclose(
        placed.joints[:, 0, [0, 2]].mean(0).numpy(), training.joints[:, 0, [0, 2]].mean(0).numpy(), atol=1e-4
    )
    assert abs(float(placed.vertices[..., 1].min()) - float(training.vertices[..., 1].min())) < 1e-4


def test_motions_of_the_results_folder_and_the_animate_stage_are_offered(tiny_results, tmp_path):
    import shutil

    from occfusion_core.data import motion_files
    from occfusion_core.io import write_json

    results = tmp_path / "results"
    variant = results / "tiny" / "occgauhuman"
    shutil.copytree(tiny_results.parent.parent, results)
    rng = np.random.default_rng(1)

    def clip(name, frames):
        poses = rng.normal(0, 0.2, (frames, 72)).astype(np.float32)
        return motion_files.MotionClip(name, poses, np.zeros((frames, 3), np.float32), 30.0)

    motion_files.write_motion(results / "motions" / "walk_wave.npz", clip("walk_wave", 5))
    motion_files.write_motion(tmp_path / "mine.npz", clip("mine", 3))
    # the animate stage's record of the variant's motions, paths relative to the workflow folder
    write_json(variant / "animate" / "summary.json", {"motions": {"mine": {"file": "mine.npz"}}})

    inputs = find_viewer_inputs(variant)
    assert inputs.motion_paths == (tmp_path / "mine.npz", results / "motions" / "walk_wave.npz")
    scene = AvatarScene.load(inputs)
    assert list(scene.sequences) == ["training frames", "mine", "walk_wave"]
    motion = scene.sequences["walk_wave"]
    assert len(motion) == 5 and not motion.training
    assert torch.isfinite(motion.poses).all() and torch.isfinite(motion.trans).all()
    splats = scene.splats(motion.pose(4), scene.camera_for(motion, 4))
    assert splats.centers.shape == (scene.model.num_gaussians, 3) and np.isfinite(splats.centers).all()

    # a broken motion file is skipped, not fatal
    (results / "motions" / "broken.npz").write_bytes(b"not a motion")
    assert "broken" not in AvatarScene.load(find_viewer_inputs(variant)).sequences


# ----------------------------------------------------------------------------------------------
# In the browser
# ----------------------------------------------------------------------------------------------


def test_the_controls_switch_the_scene_between_splats_mesh_and_motions(tiny_scene):
    pytest.importorskip("viser", reason="the viewer needs viser (pip install -e '.[viewer]')")
    from occfusion_core.viewer.app import SHOW_MESH, ViewerApp
    from occfusion_core.viewer.scene import PoseSequence

    training = tiny_scene.training
    motion = PoseSequence("motion", training.poses[:2].flip(0), training.trans[:2], training.betas[0], 30.0)
    tiny_scene.sequences["motion"] = motion
    app = ViewerApp(tiny_scene, port=0)
    try:
        assert app.url.startswith("http://127.0.0.1:")
        app.frame.value = 3
        assert app.status.content == "training frames: frame 4 of 4"
        app.sequence.value = "motion"  # the slider shrinks to the motion's frames
        assert app.frame.max == 1 and app.frame.value == 0
        assert app.status.content == "motion: frame 1 of 2"
        app.show.value = SHOW_MESH
        app.frame.value = 1
        assert app.status.content == "motion: frame 2 of 2"
    finally:
        app.stop()
        del tiny_scene.sequences["motion"]


@pytest.fixture
def viewer_url(tiny_results):
    """The viewer CLI on a free loopback port; yields its URL and stops it (SIGTERM) afterwards."""
    pytest.importorskip("viser", reason="the viewer needs viser (pip install -e '.[viewer]')")
    from tests.viewer_screenshot import running_viewer

    with running_viewer(tiny_results) as url:
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        yield url


def test_the_viewer_page_shows_the_avatar(viewer_url, tmp_path):
    from tests.browser import require_browser
    from tests.viewer_screenshot import screenshot_viewer

    require_browser()
    from PIL import Image

    result = screenshot_viewer(viewer_url, tmp_path / "viewer.png")
    assert not [e for e in result.console_errors if e.startswith("uncaught")], result.console_errors
    image = np.asarray(Image.open(result.screenshot).convert("RGB")).astype(int)
    # inside the 3D canvas, below the control panel and the notices at the top and above the axes at
    # the bottom left: pixels unlike the background (the canvas's bottom right corner)
    rect = result.value
    x0, y0 = int(rect["x"]), int(rect["y"])
    x1, y1 = x0 + int(rect["width"]), y0 + int(rect["height"])
    canvas = image[y0:y1, x0:x1]
    h, w, _ = canvas.shape
    background = np.median(canvas[-20:, -60:].reshape(-1, 3), axis=0)
    differs = np.abs(canvas[h // 3 :, w // 10 : 7 * w // 10] - background).sum(-1) > 30
    assert differs.mean() > 0.005, f"the canvas shows only background ({differs.mean():.4f} of its pixels differ)"
