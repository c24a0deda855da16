"""Stage 1 end to end on a tiny subject: outputs, losses, and resume after a kill."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from occfusion_core.body.model import load_body_model
from occfusion_core.body.proxy import write_proxy_smpl
from occfusion_core.config import OptimizeConfig, RefineConfig, SyntheticConfig, to_dict
from occfusion_core.data.synthetic import generate_synthetic_subject
from occfusion_core.io import InputError, load_torch
from occfusion_core.stages.optimize import optimize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    body_path = write_proxy_smpl(root / "body.pkl", grid_mm=40)
    data = root / "data"
    generate_synthetic_subject(data, SyntheticConfig(frames=8, width=48, height=48, occlusion="zju_band",
                                                     heldout_views=1, heldout_every=4), load_body_model(body_path))
    return data, body_path


def tiny_cfg(**kw):
    base = dict(iterations=24, checkpoint_every=8, log_every=4, backend="torch", device="cpu",
                sh_increase_every=8)
    base.update(kw)
    return OptimizeConfig(**base)


def test_optimize_writes_model_and_renders_and_lowers_the_loss(tiny_subject, tmp_path):
    data, body_path = tiny_subject
    summary = optimize(data, body_path, tiny_cfg(log_every=1), tmp_path / "model.pt", tmp_path / "renders",
                       tmp_path / "ckpt", progress=False)
    saved = load_torch(tmp_path / "model.pt")
    assert saved["iteration"] == 24 and saved["stage"] == "optimize"
    assert {"model", "optimizer", "config", "history", "methods", "body_refinement"} <= set(saved)
    history = saved["history"]
    # the photometric terms (the total also holds the body corrections' regularisers, 0 at the start),
    # averaged over the first and the last eight iterations (one random frame each)
    first, last = (sum(r["l1"] + r["mask"] for r in rows) for rows in (history[:8], history[-8:]))
    assert last < first
    names = sorted(p.name for p in (data / "images").iterdir())
    for name in names:
        assert (tmp_path / "renders" / name).is_file()
        assert (tmp_path / "renders" / name.replace(".png", "_alpha.png")).is_file()
    assert not (tmp_path / "ckpt").exists()  # model.pt supersedes the checkpoints
    assert summary["resumed_from"] == 0


def test_visible_region_keeps_hidden_pixels_out_of_the_colour_loss(tiny_subject):
    from occfusion_core.data.sequence import read_sequence
    from occfusion_core.render.rasterize import RenderOutput
    from occfusion_core.stages.frames import load_training_frames
    from occfusion_core.stages.optimize import stage1_losses

    data, body_path = tiny_subject
    seq = read_sequence(data)
    frame = load_training_frames(seq, load_body_model(body_path), [1, 1, 1], "cpu")[0]
    hidden = ~frame.visible
    rgb = frame.image.clone().requires_grad_(True)
    alpha = frame.visible.float()
    out = RenderOutput(rgb=rgb, alpha=alpha, depth=alpha, means2d=None, radii=None, visible=None)
    stage1_losses(out, frame, tiny_cfg(loss_region="visible", lambda_ssim=0.0), None)["total"].backward()
    assert rgb.grad[hidden[..., 0]].abs().sum() == 0
    rgb.grad = None
    perturbed = rgb.detach().clone()
    perturbed[hidden[..., 0]] = 0.3
    out.rgb = perturbed.requires_grad_(True)
    stage1_losses(out, frame, tiny_cfg(loss_region="full", lambda_ssim=0.0), None)["total"].backward()
    assert out.rgb.grad[hidden[..., 0]].abs().sum() > 0


def test_killed_stage1_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(tiny_subject, tmp_path):
    data, body_path = tiny_subject
    cfg = tiny_cfg(iterations=40, checkpoint_every=10)
    torch.set_num_threads(1)
    optimize(data, body_path, cfg, tmp_path / "ref" / "model.pt", tmp_path / "ref" / "renders",
             tmp_path / "ref" / "ckpt", progress=False)

    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from occfusion_core.config import OptimizeConfig, from_dict
        from occfusion_core.stages.optimize import optimize
        cfg = from_dict(OptimizeConfig, {to_dict(cfg)!r})
        optimize({str(data)!r}, {str(body_path)!r}, cfg, {str(run / 'model.pt')!r}, {str(run / 'renders')!r},
                 {str(run / 'ckpt')!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    ckpt = run / "ckpt" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the killed run wrote no checkpoint"
    assert not (run / "model.pt").exists()
    killed_at = load_torch(ckpt)["iteration"]
    assert 0 < killed_at < 40

    summary = optimize(data, body_path, cfg, run / "model.pt", run / "renders", run / "ckpt", progress=False)
    assert summary["resumed_from"] == killed_at
    ref = load_torch(tmp_path / "ref" / "model.pt")["model"]["state_dict"]
    got = load_torch(run / "model.pt")["model"]["state_dict"]
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=f"parameter {key}")


def run_until_checkpoint(count: int, *optimize_args) -> list[int]:
    """Run ``optimize(*optimize_args)`` and stop it (KeyboardInterrupt) right after its ``count``-th
    checkpoint is written; the iterations of the checkpoints written."""
    from occfusion_core.stages import checkpoint

    write, saved = checkpoint.save_torch, []

    def save_then_maybe_stop(path, obj):
        write(path, obj)
        saved.append(obj["iteration"])
        if len(saved) == count:
            raise KeyboardInterrupt

    checkpoint.save_torch = save_then_maybe_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            optimize(*optimize_args, progress=False)
    finally:
        checkpoint.save_torch = write
    return saved


def test_a_truncated_checkpoint_is_moved_aside_and_the_previous_one_resumed(tiny_subject, tmp_path, caplog):
    """A user's run was killed, then its latest checkpoint truncated: the next run names the file,
    moves it aside, resumes from the checkpoint before it, and ends where an uninterrupted run ends;
    with both unreadable it starts over instead of stopping."""
    from occfusion_core.stages.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME

    data, body_path = tiny_subject
    cfg = tiny_cfg(iterations=12, checkpoint_every=4)
    ck = tmp_path / "ckpt"
    optimize(data, body_path, cfg, tmp_path / "ref.pt", tmp_path / "r0", tmp_path / "ck0", progress=False)
    saved = run_until_checkpoint(2, data, body_path, cfg, tmp_path / "m.pt", tmp_path / "r", ck)
    assert saved == [4, 8] and load_torch(ck / PREVIOUS_NAME)["iteration"] == 4
    latest = ck / CHECKPOINT_NAME
    latest.write_bytes(latest.read_bytes()[:200])  # truncated
    with pytest.raises(InputError, match="cannot load checkpoint"):
        load_torch(latest)
    with caplog.at_level("WARNING"):
        summary = optimize(data, body_path, cfg, tmp_path / "m.pt", tmp_path / "r", ck, progress=False)
    assert summary["resumed_from"] == 4
    assert any(str(latest) in r.getMessage() and f"moved it to {latest}.unreadable" in r.getMessage()
               for r in caplog.records)
    ref, got = (load_torch(tmp_path / "ref.pt")["model"]["state_dict"],
                load_torch(tmp_path / "m.pt")["model"]["state_dict"])
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=f"parameter {key}")

    # both unreadable: a fresh start, not an error
    ck2 = tmp_path / "ck2"
    ck2.mkdir()
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        (ck2 / name).write_bytes(b"not a checkpoint")
    summary = optimize(data, body_path, cfg, tmp_path / "m2.pt", tmp_path / "r2", ck2, progress=False)
    assert summary["resumed_from"] == 0


def test_a_foreign_pickle_is_refused_by_name(tmp_path):
    """Only tensors and plain types load; a pickle holding anything else is an InputError naming it."""
    path = tmp_path / "model.pt"
    torch.save({"obj": _NotPlain()}, path)
    with pytest.raises(InputError, match=r"model\.pt: not a file this version of the project wrote"):
        load_torch(path)


class _NotPlain:
    pass


def test_changed_settings_do_not_resume_a_foreign_checkpoint(tiny_subject, tmp_path, caplog):
    data, body_path = tiny_subject
    from occfusion_core.stages.checkpoint import CHECKPOINT_NAME

    cfg = tiny_cfg(iterations=12, checkpoint_every=4)
    ck = tmp_path / "ckpt"
    # leave a checkpoint behind from a run with other settings
    run_until_checkpoint(1, data, body_path, cfg, tmp_path / "m.pt", tmp_path / "r", ck)
    assert (ck / CHECKPOINT_NAME).exists()
    other = tiny_cfg(iterations=12, checkpoint_every=4, lambda_mask=0.5)
    with caplog.at_level("INFO"):
        summary = optimize(data, body_path, other, tmp_path / "m.pt", tmp_path / "r", ck, progress=False)
    assert summary["resumed_from"] == 0
    assert any("ignoring" in r.message for r in caplog.records)


def test_refine_continues_from_stage1(tiny_subject, tmp_path):
    from occfusion_core.priors.configs import InpaintConfig, MaskCompletionConfig
    from occfusion_core.stages.incontext import incontext_inpaint
    from occfusion_core.stages.masks import complete_masks
    from occfusion_core.stages.refine import refine

    data, body_path = tiny_subject
    complete_masks(data, body_path, MaskCompletionConfig(method="silhouette"), tmp_path / "masks",
                   tmp_path / "masks.json")
    optimize(data, body_path, tiny_cfg(mask_source="complete"), tmp_path / "s1.pt", tmp_path / "s1r",
             tmp_path / "c1", complete_masks_dir=tmp_path / "masks", progress=False)
    incontext_inpaint(data, tmp_path / "s1r", body_path, InpaintConfig(method="render_fill"), tmp_path / "inp",
                      tmp_path / "inp.json")
    cfg = RefineConfig(iterations=20, checkpoint_every=10, log_every=5, backend="torch", device="cpu")
    cfg.densify.start_iter, cfg.densify.stop_iter, cfg.densify.interval = 0, 11, 10
    summary = refine(data, body_path, tmp_path / "s1.pt", tmp_path / "masks", tmp_path / "inp", cfg,
                     tmp_path / "s3.pt", tmp_path / "s3r", tmp_path / "c3", progress=False)
    saved = load_torch(tmp_path / "s3.pt")
    assert saved["iteration"] == 24 + 20 and saved["stage"] == "refine"
    assert "stage3" in saved["methods"] and "render_fill" not in saved["methods"]["stage3"]
    assert summary["gaussians"] == saved["model"]["num_gaussians"]
    assert any("gen_l1" in row for row in saved["history"])
