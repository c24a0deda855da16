"""Stage 2: hidden person pixels filled by the weight-free render_fill and by in-context inpainting
(tiny random models through the real diffusers pipeline)."""

from __future__ import annotations

import numpy as np
import pytest

from occfusion_core.config import SyntheticConfig
from occfusion_core.data.sequence import read_sequence
from occfusion_core.data.synthetic import generate_synthetic_subject
from occfusion_core.io import InputError, read_image, write_image
from occfusion_core.priors.configs import DiffusionModels, InpaintConfig
from occfusion_core.stages.incontext import NOTHING_HIDDEN, incontext_inpaint

COLOUR_ERROR = 40
"""Stage-1 stand-in renders are the true person brightened by this much: right shading, wrong level."""





pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def subject(tmp_path_factory, proxy_body):
    """64 px, 3 frames: the first two hidden behind the ZJU band, the last one not."""
    root = tmp_path_factory.mktemp("stage2") / "data"
    generate_synthetic_subject(root, SyntheticConfig(frames=3, width=64, height=64, heldout_views=0,
                                                     occluded_frames_fraction=0.67, seed=0), proxy_body)
    return root


@pytest.fixture(scope="module")
def renders(subject, tmp_path_factory):
    """Stand-ins for the stage-1 renders: the true person over white, too bright, alpha = full mask."""
    seq = read_sequence(subject)
    out = tmp_path_factory.mktemp("stage1") / "renders"
    for name in seq.frames:
        full = seq.gt_full_mask(name)
        person = np.clip(seq.gt_image(name).astype(np.int32) + COLOUR_ERROR, 0, 255).astype(np.uint8)
        write_image(out / f"{name}.png", np.where(full[..., None], person, 255).astype(np.uint8))
        write_image(out / f"{name}_alpha.png", full.astype(np.float32))
    return out


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    pytest.importorskip("diffusers")
    from occfusion_core.priors.smoke_test_models import save_smoke_test_models

    return save_smoke_test_models(tmp_path_factory.mktemp("tiny_models"))


def _observed_on_white(seq, name) -> np.ndarray:
    return np.where(seq.mask(name)[..., None], seq.image(name), 255).astype(np.uint8)


def test_render_fill_blends_the_render_into_the_hidden_pixels(subject, renders, proxy_body_path, tmp_path):
    seq = read_sequence(subject)
    reports = {}
    for blend in (True, False):
        out = tmp_path / f"blend_{blend}"
        reports[blend] = incontext_inpaint(subject, renders, proxy_body_path, InpaintConfig(method="render_fill",
                                           poisson_blend=blend), out, tmp_path / f"report_{blend}.json")
        assert sorted(p.stem for p in out.glob("*.png")) == seq.frames
    report = reports[True]
    assert report["method"] == "render_fill" and "diffusion" not in report["description"]
    assert report["frames_with_hidden_pixels"] == 2
    statuses = [f["status"] for f in report["frames"]]
    assert statuses == ["filled from the stage-1 render"] * 2 + [NOTHING_HIDDEN]
    last = seq.frames[-1]  # nothing hidden: the input composited on white, exactly
    np.testing.assert_array_equal(read_image(tmp_path / "blend_True" / f"{last}.png"), _observed_on_white(seq, last))
    for name in seq.frames[:2]:
        result = read_image(tmp_path / "blend_True" / f"{name}.png")
        visible = seq.mask(name)
        np.testing.assert_array_equal(result[visible], seq.image(name)[visible])  # observed pixels kept
        hidden = seq.gt_full_mask(name) & ~visible
        assert hidden.any() and (result[hidden] != 255).any(axis=-1).all()
    # the seam pulls the too-bright render back to the observed colours: much closer to the truth
    paste, poisson = reports[False]["hidden_mae_vs_gt_mean"], report["hidden_mae_vs_gt_mean"]
    assert paste == pytest.approx(COLOUR_ERROR / 255, rel=0.25)
    assert poisson < 0.5 * paste, (poisson, paste)


def test_diffusion_incontext_runs_the_real_pipeline_on_tiny_models(subject, renders, proxy_body_path, saved_models,
                                                                     tmp_path):
    cfg = InpaintConfig(method="diffusion", models=DiffusionModels(base=str(saved_models["inpainting"]),
                        controlnet=str(saved_models["controlnet"]), local_files_only=True),
                        num_inference_steps=2, roi_padding=4, device="cpu")
    out = tmp_path / "inpainted"
    report = incontext_inpaint(subject, renders, proxy_body_path, cfg, out, tmp_path / "report.json")
    seq = read_sequence(subject)
    assert report["method"] == "diffusion" and report["models"].endswith(str(saved_models["controlnet"]))
    assert [f["status"] for f in report["frames"]] == ["inpainted", "inpainted", NOTHING_HIDDEN]
    for f in report["frames"][:2]:
        name = f["name"]
        result = read_image(out / f"{name}.png")
        assert result.shape == (64, 64, 3)
        visible = seq.mask(name)
        np.testing.assert_array_equal(result[visible], seq.image(name)[visible])  # keep_observed
        x0, y0, x1, y1 = f["roi_xyxy"]
        outside = np.ones((64, 64), bool)
        outside[y0:y1, x0:x1] = False
        assert (result[outside & ~visible] == 255).all()
        inside = ~outside & ~visible
        assert (result[inside] != 255).any()  # the model painted the box
    # keep_observed off: the whole decoded panel, as released
    cfg.keep_observed = False
    incontext_inpaint(subject, renders, proxy_body_path, cfg, tmp_path / "raw", tmp_path / "raw.json")
    name = seq.frames[0]
    raw = read_image(tmp_path / "raw" / f"{name}.png")
    assert (raw[seq.mask(name)] != seq.image(name)[seq.mask(name)]).any()


def test_missing_stage1_alpha_is_an_input_error(subject, renders, proxy_body_path, tmp_path):
    import shutil

    broken = tmp_path / "renders"
    shutil.copytree(renders, broken)
    name = read_sequence(subject).frames[1]
    (broken / f"{name}_alpha.png").unlink()
    with pytest.raises(InputError, match=f"{name}_alpha.png"):
        incontext_inpaint(subject, broken, proxy_body_path, InpaintConfig(method="render_fill"), tmp_path / "out",
                          tmp_path / "report.json")
    assert not (tmp_path / "out").exists()
