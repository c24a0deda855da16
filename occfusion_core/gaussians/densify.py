"""KL-divergence-guided densification and pruning of the human Gaussians (GauHuman's released code,
``scene/gaussian_model.py: densify_and_prune``; docs/method.md, "KL densification").

Between densification steps :class:`DensifyState` accumulates, per Gaussian, the norm of the
screen-space gradient of its projected centre (in 3DGS's NDC units) over the views where it was
visible. A step then, with g = mean gradient, s = scales, KL = KL(own Gaussian || nearest other
Gaussian):

- clone: g >= threshold, max s <= percent_dense·extent, KL > kl_threshold -> one copy at
  x + R·N(0, diag(s)), same scale, rotation, colour, opacity;
- split: g >= threshold, max s > percent_dense·extent, KL > kl_threshold -> two children at
  x + R·N(0, diag(s)) with scale s / 1.6; the original is removed;
- merge: g >= threshold, max s <= percent_dense·extent, KL < merge_kl_threshold -> the Gaussian and
  its nearest neighbour become one at their mean position, scale s_first / 0.8, rotation of the
  first, mean of the raw colour and opacity parameters; both are removed;
- prune (new Gaussians included): opacity < min_opacity, or farther than max_body_distance from
  the nearest canonical big-pose body vertex.

Differences from GauHuman's code, on purpose: all decisions are taken once on the Gaussians as they
were before the step (GauHuman re-runs the neighbour search after cloning and indexes the split
and merge masks with gradients of the pre-clone set); a Gaussian takes part in at most one merge
and never in a merge and a split/clone at once (GauHuman can merge a mutual pair twice).
The parameters and their Adam moments are edited in one pass, so they keep the same rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from occfusion_core.config import DensifyConfig
from occfusion_core.gaussians.human import GAUSSIAN_GROUPS, HumanGaussians
from occfusion_core.gaussians.knn import knn
from occfusion_core.render.projection import quat_to_rotmat

SPLIT_CHILDREN = 2
SPLIT_SCALE_DIVISOR = 0.8 * SPLIT_CHILDREN
MERGE_SCALE_FACTOR = 1.0 / 0.8


def is_densify_step(step: int, cfg: DensifyConfig) -> bool:
    """Whether ``step`` is a densification step: enabled, start_iter < step < stop_iter and on
    the interval."""
    return cfg.enabled and cfg.start_iter < step < cfg.stop_iter and step % cfg.interval == 0


def gaussian_kl(mean0: torch.Tensor, rot0: torch.Tensor, log_scale0: torch.Tensor,
                mean1: torch.Tensor, rot1: torch.Tensor, log_scale1: torch.Tensor) -> torch.Tensor:
    """KL(N0 || N1) = ½ (tr(Σ1⁻¹ Σ0) + Δμᵀ Σ1⁻¹ Δμ + ln(det Σ1 / det Σ0) − 3).

    Args:
        mean0, mean1: (N, 3); rot0, rot1: (N, 3, 3) rotation matrices; log_scale0, log_scale1: (N, 3).

    Returns:
        (N,) divergences.
    """
    l0 = rot0 * torch.exp(log_scale0)[:, None, :]  # R0 diag(s0)
    cov0 = l0 @ l0.transpose(1, 2)
    l1_inv = rot1 * torch.exp(-log_scale1)[:, None, :]  # R1 diag(1/s1)
    cov1_inv = l1_inv @ l1_inv.transpose(1, 2)
    trace = (cov1_inv * cov0.transpose(1, 2)).sum(dim=(1, 2))
    delta = (mean1 - mean0)[:, :, None]
    mahalanobis = (delta.transpose(1, 2) @ cov1_inv @ delta)[:, 0, 0]
    log_det_ratio = 2.0 * (log_scale1 - log_scale0).sum(dim=1)
    return 0.5 * (trace + mahalanobis + log_det_ratio - 3.0)


@torch.no_grad()
def nearest_neighbour_kl(model: HumanGaussians) -> tuple[torch.Tensor, torch.Tensor]:
    """KL of every Gaussian to its nearest other Gaussian (by centre).

    Returns:
        kl: (N,) KL(own || neighbour); neighbour: (N,) long index of the neighbour.
    """
    xyz = model.xyz.detach()
    _, idx = knn(xyz, xyz, 1, exclude_self=True)
    neighbour = idx[:, 0]
    rot = quat_to_rotmat(model.rotation.detach())
    log_scale = model.scaling.detach()
    kl = gaussian_kl(xyz, rot, log_scale, xyz[neighbour], rot[neighbour], log_scale[neighbour])
    return kl, neighbour


def _merge_pairs(selected: torch.Tensor, neighbour: torch.Tensor, busy: torch.Tensor) -> torch.Tensor:
    """Disjoint (first, second) merge pairs from Gaussians that chose to merge with their neighbour.

    Greedy in index order: a pair is taken when neither Gaussian is in an earlier pair, so a mutual
    pair is merged once and a Gaussian claimed twice waits for a later step.

    Args:
        selected: (N,) bool, Gaussians that passed the merge test.
        neighbour: (N,) long, each Gaussian's nearest other Gaussian.
        busy: (N,) bool, Gaussians being cloned or split (cannot be merged away).

    Returns:
        (P, 2) long; no index appears twice.
    """
    first = torch.nonzero(selected & ~busy, as_tuple=False)[:, 0]
    second = neighbour[first]
    candidates = ~busy[second]
    taken: set[int] = set()
    pairs: list[tuple[int, int]] = []
    # Candidates are few (small, nearly coincident Gaussians), so a Python loop is cheap.
    for a, b in zip(first[candidates].tolist(), second[candidates].tolist()):
        if a not in taken and b not in taken:
            taken.update((a, b))
            pairs.append((a, b))
    return torch.tensor(pairs, dtype=torch.long, device=neighbour.device).reshape(-1, 2)


@torch.no_grad()
def replace_gaussian_rows(model: HumanGaussians, optimizer: torch.optim.Optimizer | None,
                          keep: torch.Tensor, additions: dict[str, torch.Tensor]) -> None:
    """New per-Gaussian parameters = old rows where ``keep`` followed by ``additions``, with the
    optimizer's per-row state (Adam moments) and any pending gradient edited the same way (new
    rows start at zero).

    Args:
        keep: (N,) bool over the current Gaussians.
        additions: optimizer group name -> (M, ...) rows to append, for every group of
            ``GAUSSIAN_GROUPS``.
    """
    groups = {g.get("name"): g for g in optimizer.param_groups} if optimizer is not None else {}
    if optimizer is not None:  # check every group before editing any
        for name, old in model.gaussian_parameters().items():
            group = groups.get(name)
            if group is None or len(group["params"]) != 1 or group["params"][0] is not old:
                raise ValueError(f"optimizer group {name!r} does not hold exactly the model's {GAUSSIAN_GROUPS[name]}")
    model.forget_lbs_offsets()
    new_params: dict[str, nn.Parameter] = {}
    for name, old in model.gaussian_parameters().items():
        added = additions[name].to(old.dtype)
        new = nn.Parameter(torch.cat([old.detach()[keep], added], dim=0))
        if old.grad is not None:
            # Lets a trainer densify between backward() and step(): kept rows keep their gradient.
            new.grad = torch.cat([old.grad[keep], torch.zeros_like(added)], dim=0)
        if optimizer is not None:
            state = optimizer.state.pop(old, None)
            if state is not None:
                for key, value in state.items():
                    # Per-row state has the parameter's shape; scalars such as Adam's step stay.
                    if torch.is_tensor(value) and value.shape == old.shape:
                        state[key] = torch.cat([value[keep], torch.zeros_like(added)], dim=0)
                optimizer.state[new] = state
            groups[name]["params"][0] = new
        new_params[name] = new
    model.set_gaussian_parameters(new_params)


class DensifyState:
    """Screen-space gradient statistics between densification steps.

    Attributes:
        grad_accum: (N,) summed ‖∂L/∂means2d_ndc‖ over the views where the Gaussian was visible.
        denom: (N,) number of those views.
    """

    def __init__(self, num_gaussians: int, device: torch.device | str | None = None):
        self.grad_accum = torch.zeros(num_gaussians, device=device)
        self.denom = torch.zeros(num_gaussians, device=device)

    def reset(self, num_gaussians: int | None = None) -> None:
        """Zero the statistics, for ``num_gaussians`` Gaussians (default: the current count)."""
        n = self.grad_accum.shape[0] if num_gaussians is None else num_gaussians
        self.grad_accum = torch.zeros(n, device=self.grad_accum.device)
        self.denom = torch.zeros(n, device=self.denom.device)

    @torch.no_grad()
    def add_stats(self, means2d_grad: torch.Tensor, visible: torch.Tensor, *, image_size: tuple[int, int]) -> None:
        """Accumulate one view.

        The thresholds (``grad_threshold`` 2e-4) are calibrated on 3DGS's rasterizer, whose
        screen-space gradient is taken w.r.t. normalised device coordinates: a pixel-space gradient
        times (W / 2, H / 2). Pixel-space gradients are converted here the same way (as gsplat does).

        Args:
            means2d_grad: (N, 2) gradient of the loss w.r.t. the pixel-space projected centres
                (``RenderOutput.means2d.grad``).
            visible: (N,) bool, Gaussians drawn in this view.
            image_size: (width, height) of the rendered image in pixels.
        """
        width, height = image_size
        to_ndc = torch.tensor([width / 2.0, height / 2.0], dtype=self.grad_accum.dtype, device=self.grad_accum.device)
        visible = visible.to(self.grad_accum.device, torch.bool)
        norms = (means2d_grad[:, :2].to(self.grad_accum) * to_ndc).norm(dim=-1)
        self.grad_accum += torch.where(visible, norms, torch.zeros_like(norms))
        self.denom += visible.to(self.denom.dtype)

    def mean_grad(self) -> torch.Tensor:
        """(N,) mean gradient norm over visible views; 0 for never-visible Gaussians."""
        return torch.where(self.denom > 0, self.grad_accum / self.denom.clamp_min(1.0), torch.zeros_like(self.denom))

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum.clone(), "denom": self.denom.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.grad_accum = state["grad_accum"].to(self.grad_accum.device).clone()
        self.denom = state["denom"].to(self.denom.device).clone()


def _within_budget(clone: torch.Tensor, split: torch.Tensor, grads: torch.Tensor,
                   budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the clone / split candidates with the largest gradients whose growth fits ``budget``
    more Gaussians (a clone adds one, a split ``SPLIT_CHILDREN - 1``); merges and prunes, which
    only remove, are not counted, so the cap holds whatever they do.

    Args:
        clone, split: (N,) bool candidates. grads: (N,) mean screen-space gradient norms.
    """
    growth = clone.to(torch.int64) + split.to(torch.int64) * (SPLIT_CHILDREN - 1)
    if int(growth.sum()) <= budget:
        return clone, split
    order = torch.argsort(torch.where(growth > 0, grads, torch.full_like(grads, -1.0)), descending=True)
    fits = torch.zeros_like(clone)
    fits[order] = torch.cumsum(growth[order], dim=0) <= max(budget, 0)
    return clone & fits, split & fits


@torch.no_grad()
def densify_and_prune(model: HumanGaussians, optimizer: torch.optim.Optimizer | None, state: DensifyState,
                      cfg: DensifyConfig, extent: float = 1.0,
                      generator: torch.Generator | None = None) -> dict[str, int]:
    """One KL clone / split / merge / prune step (see the module docstring); resets ``state``.

    Args:
        model: its per-Gaussian parameters are replaced (new ``nn.Parameter`` objects).
        state: the statistics gathered since the last step, for the model's current Gaussians.
        optimizer: holds the groups named in ``GAUSSIAN_GROUPS`` (from
            :meth:`HumanGaussians.param_groups`); its per-row state follows. None: no optimizer.
        extent: scene extent (GauHuman: 1) scaling the clone/split size limit.
        generator: random generator for the sampled positions of clones and split children.

    Returns:
        counts: ``before``, ``cloned``, ``split`` (originals split), ``merged`` (pairs),
        ``pruned``, ``after``.
    """
    n = model.num_gaussians
    if state.grad_accum.shape[0] != n:
        raise ValueError(f"statistics are for {state.grad_accum.shape[0]} Gaussians, model has {n}")
    device = model.xyz.device
    grads = state.mean_grad().to(device)
    params = {name: p.detach() for name, p in model.gaussian_parameters().items()}
    xyz, log_scale = params["xyz"], params["scaling"]
    scale = torch.exp(log_scale)
    small = scale.max(dim=1).values <= cfg.percent_dense * extent
    high_grad = grads >= cfg.grad_threshold
    kl, neighbour = nearest_neighbour_kl(model)

    clone = high_grad & small & (kl > cfg.kl_threshold)
    split = high_grad & ~small & (kl > cfg.kl_threshold)
    if cfg.max_gaussians is not None:
        clone, split = _within_budget(clone, split, grads, cfg.max_gaussians - n)
    pairs = _merge_pairs(high_grad & small & (kl < cfg.merge_kl_threshold), neighbour, clone | split)
    rot = quat_to_rotmat(params["rotation"])

    def sampled_positions(mask: torch.Tensor, copies: int) -> torch.Tensor:
        # x + R·N(0, diag(s)) per copy, in canonical space.
        std = scale[mask].repeat(copies, 1)
        noise = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype) * std
        return (rot[mask].repeat(copies, 1, 1) @ noise[..., None])[..., 0] + xyz[mask].repeat(copies, 1)

    def copied(mask: torch.Tensor, copies: int) -> dict[str, torch.Tensor]:
        return {name: value[mask].repeat(copies, *([1] * (value.ndim - 1))) for name, value in params.items()}

    clones = copied(clone, 1)
    clones["xyz"] = sampled_positions(clone, 1)
    children = copied(split, SPLIT_CHILDREN)
    children["xyz"] = sampled_positions(split, SPLIT_CHILDREN)
    children["scaling"] = children["scaling"] - math.log(SPLIT_SCALE_DIVISOR)
    first, second = pairs[:, 0], pairs[:, 1]
    merged = {name: (value[first] + value[second]) / 2.0 for name, value in params.items()}
    merged["scaling"] = log_scale[first] + math.log(MERGE_SCALE_FACTOR)
    merged["rotation"] = params["rotation"][first]
    additions = {name: torch.cat([clones[name], children[name], merged[name]], dim=0) for name in params}

    def pruned(rows: dict[str, torch.Tensor]) -> torch.Tensor:
        low_opacity = torch.sigmoid(rows["opacity"][:, 0]) < cfg.min_opacity
        if rows["xyz"].shape[0] == 0:
            return low_opacity
        dist2, _ = knn(rows["xyz"], model.big_pose_vertices, 1)
        return low_opacity | (dist2[:, 0] > cfg.max_body_distance ** 2)

    removed = split.clone()
    removed[first] = True
    removed[second] = True
    prune_old = pruned(params) & ~removed
    prune_new = pruned(additions)
    keep_new = ~prune_new
    replace_gaussian_rows(model, optimizer, ~(removed | prune_old),
                          {name: value[keep_new] for name, value in additions.items()})
    state.reset(model.num_gaussians)
    return {
        "before": n,
        "cloned": int(clone.sum()),
        "split": int(split.sum()),
        "merged": int(pairs.shape[0]),
        "pruned": int(prune_old.sum() + prune_new.sum()),
        "after": model.num_gaussians,
    }
