"""The export stage: 3DGS PLYs that render like the model, SMPL parameters, and a nerfstudio dataset
whose cameras reproduce the sequence's."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from occfusion_core.body.model import load_body_model
from occfusion_core.body.proxy import write_proxy_smpl
from occfusion_core.body.refine import BodyRefinement
from occfusion_core.config import ConfigError, ExportConfig, SyntheticConfig, from_dict
from occfusion_core.data.sequence import read_sequence
from occfusion_core.data.synthetic import generate_synthetic_subject
from occfusion_core.gaussians.human import HumanGaussians
from occfusion_core.gaussians.rendering import render_gaussians
from occfusion_core.gaussians.splat_ply import SplatPly, ply_property_names, read_splat_ply, write_splat_ply
from occfusion_core.io import InputError, read_image, read_mask, save_torch
from occfusion_core.render.camera import Camera, intrinsics_from_fov, look_at
from occfusion_core.render.rasterize import rasterize
from occfusion_core.render.sh import eval_sh, rotate_sh
from occfusion_core.stages.export import export_all
from occfusion_core.stages.optimize import body_refinement_record
from occfusion_core.stages.render import AvatarRenderer
from occfusion_core.stages.trained_model import training_body_params

ROOT = Path(__file__).resolve().parents[1]
BACKGROUND = torch.tensor([1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def body_path(tmp_path_factory):
    return write_proxy_smpl(tmp_path_factory.mktemp("export_body") / "body.pkl", grid_mm=40)


@pytest.fixture(scope="module")
def body(body_path):
    return load_body_model(body_path)


def trained_like_model(body, seed: int = 0, active_sh_degree: int = 3) -> HumanGaussians:
    """A HumanGaussians with every per-Gaussian attribute randomised (anisotropic, rotated, coloured,
    view-dependent), as training leaves it rather than as it starts."""
    torch.manual_seed(seed)
    model = HumanGaussians(body, sh_degree=3)
    n = model.num_gaussians
    with torch.no_grad():
        model.xyz += 0.005 * torch.randn(n, 3)
        model.features_dc.copy_(0.6 * torch.randn(n, 1, 3))
        model.features_rest.copy_(0.25 * torch.randn(n, 15, 3))
        model.opacity.copy_(torch.randn(n, 1) + 1.0)
        model.scaling += 0.4 * torch.randn(n, 3)
        model.rotation.copy_(torch.randn(n, 4) * 2.0)  # unnormalised on purpose
    model.active_sh_degree = active_sh_degree
    model.eval()
    return model


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).double().square().mean())
    return float("inf") if mse == 0.0 else 10.0 * np.log10(1.0 / mse)


def render_ply_as_3dgs(splats: SplatPly, camera: Camera) -> torch.Tensor:
    """(H, W, 3) render of PLY values with 3DGS's activations: sigmoid(opacity), exp(scale),
    normalised quaternion, SH of every stored band along world viewing directions."""
    quats = torch.from_numpy(splats.quats)
    return rasterize(
        torch.from_numpy(splats.means),
        torch.sigmoid(torch.from_numpy(splats.opacity_logits)),
        camera,
        quats=quats / quats.norm(dim=-1, keepdim=True),
        scales=torch.exp(torch.from_numpy(splats.log_scales)),
        sh=torch.from_numpy(splats.sh),
        background=BACKGROUND,
        backend="torch",
    ).rgb


def front_camera(model: HumanGaussians) -> Camera:
    center = model.xyz.detach().mean(0).numpy()
    return Camera(intrinsics_from_fov(64, 64, 40.0), look_at(center + np.array([0.6, 0.3, 2.6]), center), 64, 64)


# ----------------------------------------------------------------------------------------- PLY


def test_ply_round_trip_is_exact_in_the_3dgs_layout(tmp_path):
    rng = np.random.default_rng(0)
    n = 57
    splats = SplatPly(
        means=rng.normal(size=(n, 3)),
        sh=rng.normal(size=(n, 16, 3)),
        opacity_logits=rng.normal(size=n),
        log_scales=rng.normal(size=(n, 3)),
        quats=rng.normal(size=(n, 4)),
    )
    write_splat_ply(tmp_path / "a.ply", splats)

    from plyfile import PlyData

    ply = PlyData.read(str(tmp_path / "a.ply"))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    # graphdeco-inria GaussianModel.construct_list_of_attributes, degree 3: 45 f_rest
    assert names == (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert names == ply_property_names(3) and len(names) == 62
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in names)
    # channel-major f_rest: coefficients 1..15 of R, then of G, then of B (3DGS transpose(1, 2).flatten)
    assert np.array_equal(vertex["f_rest_0"], splats.sh[:, 1, 0])
    assert np.array_equal(vertex["f_rest_14"], splats.sh[:, 15, 0])
    assert np.array_equal(vertex["f_rest_15"], splats.sh[:, 1, 1])
    assert np.array_equal(vertex["f_rest_44"], splats.sh[:, 15, 2])
    assert np.array_equal(vertex["f_dc_1"], splats.sh[:, 0, 1])
    assert np.array_equal(vertex["rot_0"], splats.quats[:, 0])  # w first
    assert not np.any(vertex["nx"])

    back = read_splat_ply(tmp_path / "a.ply")
    for field in ("means", "sh", "opacity_logits", "log_scales", "quats"):
        assert np.array_equal(getattr(back, field), getattr(splats, field)), field
        assert getattr(back, field).dtype == np.float32

    # degree 0 (no f_rest) also round-trips
    flat = SplatPly(splats.means, splats.sh[:, :1], splats.opacity_logits, splats.log_scales, splats.quats)
    write_splat_ply(tmp_path / "b.ply", flat)
    assert ply_property_names(0) == [p.name for p in PlyData.read(str(tmp_path / "b.ply"))["vertex"].properties]
    assert np.array_equal(read_splat_ply(tmp_path / "b.ply").sh, flat.sh)


def test_read_names_the_file_of_a_ply_that_is_not_3dgs(tmp_path):
    from plyfile import PlyData, PlyElement

    points = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(points, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(InputError, match=r"points\.ply.*lacks properties"):
        read_splat_ply(tmp_path / "points.ply")
    (tmp_path / "junk.ply").write_text("not a ply\n")
    with pytest.raises(InputError, match=r"junk\.ply"):
        read_splat_ply(tmp_path / "junk.ply")
    with pytest.raises(InputError, match=r"missing\.ply.*missing"):
        read_splat_ply(tmp_path / "missing.ply")


@pytest.mark.parametrize("active_sh_degree", [3, 1])
def test_canonical_ply_renders_like_the_model(body, tmp_path, active_sh_degree):
    from occfusion_core.stages.export import canonical_splats

    model = trained_like_model(body, seed=1, active_sh_degree=active_sh_degree)
    write_splat_ply(tmp_path / "c.ply", canonical_splats(model))
    splats = read_splat_ply(tmp_path / "c.ply")
    assert splats.num_gaussians == model.num_gaussians and splats.sh_degree == 3
    if active_sh_degree < 3:  # bands the renderer does not use are written as zeros (a viewer would use them)
        assert not np.any(splats.sh[:, (active_sh_degree + 1) ** 2 :])
    camera = front_camera(model)
    with torch.no_grad():
        own = render_gaussians(model.canonical(center=False), camera, BACKGROUND, "torch").rgb
    from_file = render_ply_as_3dgs(splats, camera)
    assert (own < 0.9).float().mean() > 0.1, "the avatar must cover part of the image"
    assert psnr(from_file, own) >= 50.0


def test_rotate_sh_turns_the_colour_function():
    from scipy.spatial.transform import Rotation

    torch.manual_seed(0)
    n = 40
    rotations = torch.as_tensor(Rotation.random(n, random_state=0).as_matrix())
    sh = torch.randn(n, 16, 3, dtype=torch.float64)
    dirs = torch.randn(n, 3, dtype=torch.float64)
    turned = rotate_sh(sh, rotations)
    assert torch.equal(turned[:, 0], sh[:, 0])
    back_dirs = torch.einsum("nji,nj->ni", rotations, dirs)  # R^T d
    for degree in (1, 2, 3):
        expected = eval_sh(degree, sh, back_dirs)
        assert torch.allclose(eval_sh(degree, turned, dirs), expected, atol=1e-9), degree
    # not the identity: the unrotated coefficients give other colours
    assert not torch.allclose(eval_sh(3, sh, dirs), eval_sh(3, sh, back_dirs), atol=1e-3)


# ----------------------------------------------------------------------------------------- export_all


@pytest.fixture(scope="module")
def subject(tmp_path_factory, body, body_path):
    root = tmp_path_factory.mktemp("export_subject")
    data = root / "data"
    generate_synthetic_subject(
        data,
        SyntheticConfig(
            frames=5, width=48, height=40, occlusion="zju_band", heldout_views=1, heldout_every=4, supersample=1
        ),
        body,
    )
    return data


def write_model(path: Path, model: HumanGaussians, seq, sh_view_frame: str) -> dict:
    """A stage's model.pt with refined body parameters that differ from the sequence's estimates."""
    params = seq.body_params()
    refinement = BodyRefinement(params["poses"], params["trans"], list(seq.frames), params["betas"])
    torch.manual_seed(3)
    with torch.no_grad():
        refinement.delta_pose += 0.05 * torch.randn_like(refinement.delta_pose)
        refinement.delta_trans += 0.02 * torch.randn_like(refinement.delta_trans)
        refinement.delta_betas += 0.1 * torch.randn_like(refinement.delta_betas)
    saved = {
        "model": model.capture(),
        "config": {"sh_view_frame": sh_view_frame, "background": [1.0, 1.0, 1.0]},
        "body_refinement": body_refinement_record(refinement, "stage 1"),
    }
    save_torch(path, saved)
    return saved


@pytest.fixture(scope="module")
def exported(tmp_path_factory, subject, body, body_path):
    root = tmp_path_factory.mktemp("export_out")
    seq = read_sequence(subject)
    model = trained_like_model(body, seed=2)
    saved = write_model(root / "model.pt", model, seq, "world")
    summary = export_all(subject, root / "model.pt", body_path, ExportConfig(), root / "export")
    return root / "export", seq, model, saved, summary


def test_export_writes_every_file(exported):
    out, seq, model, _, summary = exported
    middle = seq.frames[len(seq.frames) // 2]
    assert summary["posed_frame"] == middle and summary["gaussians"] == model.num_gaussians
    for name in (
        "avatar_canonical.ply",
        f"avatar_frame_{middle}.ply",
        "body_params.npz",
        "summary.json",
        "dataset/transforms.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".export*")), "no temporary folder left behind"


def test_body_params_are_the_training_parameters(exported):
    out, seq, _, saved, _ = exported
    expected, source = training_body_params(seq, saved)
    npz = np.load(out / "body_params.npz", allow_pickle=False)
    n = len(seq.frames)
    assert list(npz["frames"]) == seq.frames
    assert npz["poses"].shape == (n, 72) and npz["betas"].shape == (n, 10) and npz["trans"].shape == (n, 3)
    for key in ("poses", "betas", "trans"):
        assert np.array_equal(npz[key], expected[key].numpy()), key
    # the refined parameters, not the input estimates
    assert not np.allclose(npz["poses"], seq.body_params()["poses"].numpy())
    assert str(npz["source"]) == source and "refined" in source
    for t, name in enumerate(seq.frames):
        camera = seq.camera(name)
        assert np.allclose(npz["K"][t], camera.K.numpy()) and np.allclose(npz["w2c"][t], camera.w2c.numpy())
        assert np.allclose(npz["R"][t], camera.R.numpy()) and np.allclose(npz["T"][t], camera.t.numpy())
    assert (int(npz["height"]), int(npz["width"])) == seq.size


def test_transforms_json_cameras_reproduce_the_projected_body(exported, body):
    out, seq, _, saved, _ = exported
    transforms = json.loads((out / "dataset" / "transforms.json").read_text())
    height, width = seq.size
    assert transforms["camera_model"] == "OPENCV" and (transforms["h"], transforms["w"]) == (height, width)
    K = np.array(
        [[transforms["fl_x"], 0.0, transforms["cx"]], [0.0, transforms["fl_y"], transforms["cy"]], [0.0, 0.0, 1.0]]
    )
    params, _ = training_body_params(seq, saved)
    assert [f["frame_name"] for f in transforms["frames"]] == seq.frames
    for t, (name, frame) in enumerate(zip(seq.frames, transforms["frames"])):
        smpl = frame["smpl_params"]
        for key in ("poses", "betas", "trans"):
            assert np.array_equal(np.float32(smpl[key]), params[key][t].numpy()), key
        with torch.no_grad():
            vertices = body(
                params["poses"][t : t + 1], params["betas"][t : t + 1], params["trans"][t : t + 1]
            ).vertices[0]
        expected_uv, _ = seq.camera(name).project(vertices)

        # back from OpenGL camera-to-world to OpenCV world-to-camera, by hand
        c2w = np.array(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        w2c = np.linalg.inv(c2w)
        cam_points = vertices.double().numpy() @ w2c[:3, :3].T + w2c[:3, 3]
        assert (cam_points[:, 2] > 0).all(), "the body is in front of the exported camera"
        uv = (cam_points @ K.T)[:, :2] / cam_points[:, 2:]
        assert np.abs(uv - expected_uv.double().numpy()).max() < 1e-3
        # and the body lands in the image, so the comparison is of something visible
        assert ((uv >= 0) & (uv <= [width, height])).all(axis=1).mean() > 0.5

        image = out / "dataset" / frame["file_path"]
        assert np.array_equal(read_image(image), seq.image(name))
        mask_file = out / "dataset" / frame["mask_path"]
        from PIL import Image

        with Image.open(mask_file) as im:
            assert im.size == (width, height) and im.mode == "L"
        assert np.array_equal(read_mask(mask_file), seq.mask(name))
    assert (out / "dataset" / transforms["body_params"]).resolve() == (out / "body_params.npz").resolve()


def test_posed_ply_renders_like_the_model_in_that_frame(exported):
    out, seq, model, saved, summary = exported
    index = summary["posed_frame_index"]
    name = seq.frames[index]
    params, _ = training_body_params(seq, saved)
    splats = read_splat_ply(out / f"avatar_frame_{name}.ply")
    camera = seq.camera(name)
    own = AvatarRenderer(model, [1.0, 1.0, 1.0], "torch", "world").image(
        params["poses"][index], params["betas"][index], params["trans"][index], camera
    )
    from_file = render_ply_as_3dgs(splats, camera).clamp(0, 1)
    assert (torch.as_tensor(own) < 0.9).float().mean() > 0.05
    assert psnr(from_file, torch.as_tensor(own)) >= 50.0
    # the canonical PLY is not posed: rendered from the frame's camera it would differ
    canonical = render_ply_as_3dgs(read_splat_ply(out / "avatar_canonical.ply"), camera).clamp(0, 1)
    assert psnr(canonical, torch.as_tensor(own)) < 30.0


def test_posed_ply_of_a_canonical_view_frame_model(tmp_path, subject, body, body_path):
    """sh_view_frame 'canonical': the view-dependent colours are turned with each Gaussian's skinning
    rotation, so the standard (world-direction) render matches the model's up to the stretch that
    blended skinning adds; not turning them would lose much more."""
    seq = read_sequence(subject)
    model = trained_like_model(body, seed=4)
    saved = write_model(tmp_path / "model.pt", model, seq, "canonical")
    export_all(subject, tmp_path / "model.pt", body_path, ExportConfig(posed_frame_index=1), tmp_path / "export")
    name = seq.frames[1]
    params, _ = training_body_params(seq, saved)
    camera = seq.camera(name)
    own = torch.as_tensor(
        AvatarRenderer(model, [1.0, 1.0, 1.0], "torch", "canonical").image(
            params["poses"][1], params["betas"][1], params["trans"][1], camera
        )
    )
    splats = read_splat_ply(tmp_path / "export" / f"avatar_frame_{name}.ply")
    rotated = psnr(render_ply_as_3dgs(splats, camera).clamp(0, 1), own)
    unrotated = SplatPly(
        splats.means, model.sh().detach().numpy(), splats.opacity_logits, splats.log_scales, splats.quats
    )
    assert rotated >= 40.0
    assert rotated > psnr(render_ply_as_3dgs(unrotated, camera).clamp(0, 1), own) + 3.0


def test_bad_inputs_name_the_key_or_file(tmp_path, subject, body_path, exported):
    out = exported[0]
    model_path = out.parent / "model.pt"
    with pytest.raises(ConfigError, match=r"export\.posed_frame_index: 99"):
        export_all(subject, model_path, body_path, ExportConfig(posed_frame_index=99), tmp_path / "e")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"broken\.pt"):
        export_all(subject, tmp_path / "broken.pt", body_path, ExportConfig(), tmp_path / "e")
    save_torch(tmp_path / "other.pt", {"iteration": 3})
    with pytest.raises(InputError, match=r"other\.pt.*model"):
        export_all(subject, tmp_path / "other.pt", body_path, ExportConfig(), tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_config_schema_and_dataclass_agree():
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["$defs"]["export"]["properties"]) == {f.name for f in dataclasses.fields(ExportConfig)}
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert from_dict(ExportConfig, cfg.get("export"), "export").posed_frame_index is None
