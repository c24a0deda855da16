"""The Gaussian training loop shared by stage 1 (optimize) and stage 3 (refine).

A stage supplies the loss (``loss_fn(render, frame, iteration) -> dict of terms with 'total'``);
this loop does the rest: frame sampling, the position learning-rate schedule, SH degree steps,
optional KL densification, logging, a progress bar, and resumable checkpoints written atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DensifyConfig, OptimizeConfig
from .checkpoint import CheckpointStore

log = logging.getLogger(__name__)



class FrameSampler:
    """GauHuman's camera sampling: pop frames from a reshuffled stack of all training frames."""

    def __init__(self, count: int, rng: np.random.Generator):
        self.count, self.rng, self.stack = count, rng, []

    def next(self) -> int:
        if not self.stack:
            self.stack = list(self.rng.permutation(self.count))
        return int(self.stack.pop())


@dataclass
class TrainSchedule:
    """Iteration bookkeeping of one stage.

    Attributes:
        first: first global iteration of this stage (stage 1: 1; stage 3: stage-1 end + 1).
        last: last global iteration (inclusive).
        lr: stage-1 learning-rate settings (the position rate decays with the global iteration);
            its ``body_refine`` holds the body corrections' rates and regularisers.
        densify: densification settings; start/stop are counted from the stage's first iteration.
        sh_increase_every: raise the SH degree at global iterations that are multiples of it (+1).
        loss_scale: factor on the stage's loss and the body regularisers (not on guidance terms).
        body_start: first global iteration at which the body corrections learn.
        body_progress: (start, end) of the body learning rates' decay over this stage, as progress in
            [0, 1]: stage 1 decays from 0 to 1; stage 3 continues at the end rate (1, 1).
        learn_body: whether the body corrections learn here (else they are used as they are).
    """

    first: int
    last: int
    lr: OptimizeConfig
    densify: DensifyConfig
    sh_increase_every: int
    checkpoint_every: int
    log_every: int
    loss_scale: float = 1.0
    body_start: int = 1
    body_progress: tuple[float, float] = (0.0, 1.0)
    learn_body: bool = True


def build_optimizer(model, cfg: OptimizeConfig, body=None) -> torch.optim.Adam:
    """One Adam (eps 1e-15, as 3DGS/GauHuman) over the model's groups and, with ``body``, the
    per-frame body corrections ('body_pose', 'body_trans')."""
    groups = model.param_groups(cfg)
    if body is not None:
        groups += body.param_groups(cfg.body_refine)
    # the fused kernel: one pass over every parameter (0.4 against 1.0 ms a step at the default size)
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=True)


def frame_body(frame, body=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(poses (72,), betas (10,), trans (3,)) of a training frame: refined when ``body`` is given."""
    if body is None:
        return frame.poses, frame.betas, frame.trans
    return body.frame(frame.index)


def train_gaussians(model, optimizer, frames: list, loss_fn: Callable, schedule: TrainSchedule,
                    background: torch.Tensor, backend: str, checkpoint_dir, signature: str, seed: int,
                    label: str = "train", progress: bool = True, body=None, guidance: Callable | None = None
                    ) -> tuple:
    """Run ``schedule.first .. schedule.last``; resume from ``checkpoint_dir`` when it matches.

    Each iteration: ``loss_fn(render, frame, iteration)`` gives the stage's terms with 'total'; the
    body corrections' regularisers are added to it, the sum is multiplied by
    ``schedule.loss_scale``, and ``guidance(render, frame, iteration)`` (if any) adds its weighted
    terms (a dict with 'total') on top, unscaled.

    Args:
        body: :class:`~occfusion_core.body.refine.BodyRefinement` of these frames (its groups must be
            in ``optimizer``): its refined parameters place every frame, and they learn with the
            Gaussians when ``schedule.learn_body``; None: the estimates as given.

    Returns:
        (model, optimizer, history: list of logged rows, seconds spent, resumed_from global iteration)
        — the optimizer is a new object when a checkpoint was resumed; the model and body are
        restored in place.
    """
    from tqdm import tqdm

    from ..body.refine import BodyRefinement
    from ..gaussians.densify import DensifyState, densify_and_prune
    from ..gaussians.rendering import render_gaussians

    device = background.device
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sampler = FrameSampler(len(frames), rng)
    densify = DensifyState(model.num_gaussians, device=device)
    history: list[dict] = []
    start = schedule.first - 1
    store = CheckpointStore(checkpoint_dir)
    ckpt = store.load(signature, map_location=str(device))
    if ckpt is not None:
        model.restore(ckpt["model"])  # in place: loss functions may hold the model
        model.cached_lbs_offsets = ckpt.get("lbs_offsets")
        if body is not None:
            body.restore(ckpt["body"])
        optimizer = build_optimizer(model, schedule.lr, body)
        optimizer.load_state_dict(ckpt["optimizer"])
        densify = DensifyState(model.num_gaussians, device=device)
        densify.load_state_dict(ckpt["densify"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        sampler.stack = list(ckpt["sampler_stack"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = ckpt["history"]
        start = ckpt["iteration"]
        log.info("%s: resuming from %s at iteration %d", label, store.loaded_from, start)
    resumed_from = start

    def save_checkpoint(iteration: int) -> None:
        store.save({
            "signature": signature, "iteration": iteration, "model": model.capture(),
            "lbs_offsets": model.cached_lbs_offsets,
            "body": body.capture() if body is not None else None,
            "optimizer": optimizer.state_dict(), "densify": densify.state_dict(),
            "numpy_rng": rng.bit_generator.state, "sampler_stack": list(sampler.stack),
            "torch_rng": torch.get_rng_state(), "history": history,
        })

    dcfg = schedule.densify
    body_cfg = schedule.lr.body_refine
    stage_length = max(schedule.last - schedule.first, 1)
    t0 = time.time()
    bar = tqdm(range(start + 1, schedule.last + 1), desc=label, disable=not progress, ascii=True,
               initial=start - schedule.first + 1, total=schedule.last - schedule.first + 1, mininterval=5.0)
    for it in bar:
        local = it - schedule.first + 1  # 1-based iteration within this stage
        model.apply_position_lr(optimizer, it, schedule.lr)
        if body is not None:
            p0, p1 = schedule.body_progress
            BodyRefinement.apply_lr(optimizer, body_cfg, p0 + (p1 - p0) * (it - schedule.first) / stage_length,
                                    active=schedule.learn_body and it >= schedule.body_start)
        if it > 1 and (it - 1) % schedule.sh_increase_every == 0:
            model.oneup_sh_degree()
        model.reuse_lbs_offsets = (local - 1) % schedule.lr.lbs_offset_every != 0
        frame = frames[sampler.next()]
        poses, betas, trans = frame_body(frame, body)
        d = model.deform(poses, betas, trans)
        out = render_gaussians(d, frame.camera, background, backend, schedule.lr.sh_view_frame)
        densifying = dcfg.enabled and dcfg.start_iter < local < dcfg.stop_iter
        if densifying:
            out.means2d.retain_grad()
        terms = loss_fn(out, frame, it)
        if body is not None and schedule.learn_body and it >= schedule.body_start:
            for name, value in body.regularizer(body_cfg).items():
                terms[name] = value
                terms["total"] = terms["total"] + value
        terms["total"] = schedule.loss_scale * terms["total"]
        if guidance is not None:
            extra = guidance(out, frame, it)
            terms.update({k: v for k, v in extra.items() if k != "total"})
            terms["total"] = terms["total"] + extra["total"]
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(f"{label}: loss is {terms['total'].item()} at iteration {it} "
                                     f"(frame {frame.name}); lower the learning rates")
        terms["total"].backward()
        if densifying:
            densify.add_stats(out.means2d.grad, out.visible, image_size=(frame.camera.width, frame.camera.height))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if densifying and local % dcfg.interval == 0:
            counts = densify_and_prune(model, optimizer, densify, dcfg)
            log.info("%s: iteration %d densify %s", label, it, counts)
        if it % schedule.log_every == 0 or it == schedule.last:
            row = {"iteration": it, **{k: round(float(v.detach()), 6) for k, v in terms.items()},
                   "gaussians": model.num_gaussians, "seconds": round(time.time() - t0, 2)}
            history.append(row)
            log.info("%s: %s", label, row)
        if it % schedule.checkpoint_every == 0 and it < schedule.last:
            save_checkpoint(it)
    bar.close()
    model.reuse_lbs_offsets = False
    return model, optimizer, history, time.time() - t0, resumed_from
