"""Tiny random diffusion models, the from_pretrained loaders, the missing-weights error, and the
inpainting helpers (padded box, one pipeline call, Poisson fill)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from occfusion_core.priors import diffusion, smoke_test_models  # noqa: E402
from occfusion_core.priors.inpaint import padded_roi, poisson_fill, run_inpaint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    return smoke_test_models.save_smoke_test_models(tmp_path_factory.mktemp("tiny_models"))


def _best_time(build, repeats: int = 3):
    """(fastest wall time of ``repeats`` calls, last result): robust to a busy shared machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = build()
        times.append(time.perf_counter() - t0)
    return min(times), result


def test_tiny_models_build_fast_with_sd_geometry():
    smoke_test_models.smoke_test_sds_models()  # warm the lazy diffusers imports
    sds_seconds, models = _best_time(smoke_test_models.smoke_test_sds_models)
    pipe_seconds, pipe = _best_time(smoke_test_models.smoke_test_inpaint_pipeline)
    assert sds_seconds < 1.0 and pipe_seconds < 1.0, f"building took {sds_seconds:.2f} s / {pipe_seconds:.2f} s"
    assert pipe.vae_scale_factor == 8  # same geometry as SD 1.5: boxes are multiples of 8
    assert pipe.unet.config.in_channels == 9 and models.unet.config.in_channels == 4
    assert models.vae.config.scaling_factor == pytest.approx(0.18215)
    assert float(models.scheduler.alphas_cumprod[999]) == pytest.approx(0.0047, abs=2e-4)  # SD's schedule


def test_tiny_tokenizer_reads_its_written_vocabulary(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(smoke_test_models.write_tiny_tokenizer(tmp_path))
    ids = tok("two arms, two legs", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.replace(" ", "") == "twoarms,twolegs"


def test_inpaint_pipeline_loads_from_saved_folder_with_scheduler_swap(saved_models):
    pipe = diffusion.load_inpaint_pipeline(saved_models["inpainting"], saved_models["controlnet"],
                                           scheduler="dpm_multistep", local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    diffusion.set_scheduler(pipe, "unipc")
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    with pytest.raises(ValueError, match="not one of"):
        diffusion.set_scheduler(pipe, "euler_ancestral")

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    mask = np.zeros((24, 40), dtype=bool)
    mask[8:16, 16:32] = True
    kwargs = dict(prompt="a person", negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.5,
                  controlnet_conditioning_scale=1.0, seed=3)
    out = run_inpaint(pipe, image, mask, np.zeros_like(image), **kwargs)
    again = run_inpaint(pipe, image, mask, np.zeros_like(image), **kwargs)
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, again)  # the seed fixes the sample
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        run_inpaint(pipe, image[:20], mask[:20], image[:20], **kwargs)


def test_sds_models_load_from_saved_folder(saved_models):
    models = diffusion.load_sds_models(saved_models["sd15"], saved_models["controlnet"], local_files_only=True)
    assert type(models.scheduler).__name__ == "DDIMScheduler"  # rebuilt from the saved PNDM config
    assert models.unet.config.in_channels == 4
    assert not any(p.requires_grad for p in models.unet.parameters())
    with pytest.raises(ValueError, match="text-to-image"):
        diffusion.load_sds_models(saved_models["inpainting"], saved_models["controlnet"])


def test_missing_weights_error_names_what_was_looked_for(tmp_path, monkeypatch, saved_models):
    # an empty cache, so that weights a user may have cached do not make the test pass vacuously
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(diffusion.ModelWeightsMissing) as err:
        diffusion.load_inpaint_pipeline("stable-diffusion-v1-5/stable-diffusion-inpainting", saved_models["controlnet"],
                                        scheduler="unipc", weight_free="stage0 `method: silhouette`")
    message = str(err.value)
    assert "Stable Diffusion inpainting" in message
    assert "stable-diffusion-v1-5/stable-diffusion-inpainting" in message
    assert str(tmp_path / "empty_cache") in message  # the cache that was searched
    assert "huggingface-cli download" in message and "method: silhouette" in message
    missing_folder = tmp_path / "no_controlnet_here"
    with pytest.raises(diffusion.ModelWeightsMissing, match="ControlNet openpose.*no_controlnet_here"):
        diffusion.load_controlnet(missing_folder)


def test_padded_roi_is_a_multiple_of_8_inside_the_image():
    mask = np.zeros((60, 100), dtype=bool)
    mask[10:30, 40:53] = True
    x0, y0, x1, y1 = padded_roi(mask, pad=4)
    assert (x1 - x0) % 8 == 0 and (y1 - y0) % 8 == 0
    assert x0 <= 36 and x1 >= 57 and y0 <= 6 and y1 >= 34  # at least the padded box
    assert (x1 - x0) < 13 + 8 + 8 and (y1 - y0) < 20 + 8 + 8  # rounded up by less than one step
    mask[:] = False
    mask[50:60, 90:100] = True  # at the corner: slid inside, not clamped
    x0, y0, x1, y1 = padded_roi(mask, pad=20)
    assert x1 == 100 and y1 == 60 and (x1 - x0) % 8 == 0 and (y1 - y0) % 8 == 0
    assert padded_roi(np.zeros((60, 100), bool), pad=4) == (2, 2, 98, 58)  # empty: the whole image, rounded


def test_poisson_fill_keeps_guide_gradients_and_meets_the_seam():
    H, W = 20, 30
    yy, xx = np.mgrid[0:H, 0:W]
    truth = np.stack([0.2 + 0.01 * xx, 0.3 + 0.005 * yy, 0.5 + 0.0 * xx], -1)
    fill = np.zeros((H, W), bool)
    fill[5:15, 8:20] = True
    known_mask = ~fill
    guide = truth + 0.25  # right gradients, wrong offset
    filled = poisson_fill(guide, truth, fill, known_mask)
    np.testing.assert_allclose(filled[fill], truth[fill], atol=2e-3)  # offset removed by the seam
    assert np.abs(guide[fill] - truth[fill]).mean() > 0.2
    # a region touching no known pixel keeps the guide
    island = poisson_fill(guide, truth, fill, np.zeros((H, W), bool))
    np.testing.assert_allclose(island[fill], np.clip(guide[fill], 0, 1), atol=1e-6)
