"""Score distillation on the rendered silhouette (docs/method.md, "Score distillation (SDS)"): a
standalone guidance module.

:class:`SilhouetteSDS` holds the frozen models and its own small config
(:class:`~occfusion_core.priors.configs.GuidanceConfig`), like threestudio's guidance modules; stage 1
calls :meth:`SilhouetteSDS.step` with a rendered alpha map and adds the returned loss.

The maths of one step, for an alpha map A in [0, 1]:

    x   = resize(A repeated to 3 channels, R x R)           R = cfg.resolution (256)
    z   = VAE.encode(2x - 1).sample() * scaling_factor      (4, R/8, R/8); gradients flow to A
    t   = round((1 - (it-1)/(T-1)) * 1000) clipped to t_range * 1000        (deterministic anneal)
    z_t = DDIM.add_noise(z, eps, t),  eps ~ N(0, I)
    eps_hat = eps_neg + s (eps_pos - eps_neg)               ControlNet-openpose UNet, s = cfg.guidance_scale
    grad = (1 - alphabar_t) (eps_hat - eps)
    loss = 0.5 * sum(mask * (z - stopgrad(z - grad))^2) / batch

so d loss / d z = mask * grad: the SDS gradient, weighted per latent pixel by ``weight_mask`` resized
bilinearly to the latent grid. The released code uses s = 0 (the negative-prompt prediction alone);
then only that branch is evaluated, which gives the same loss at half the cost.

Branch helpers follow stage1.py: the posed branch crops to the body box, blocks the gradient inside
the visible mask and weights by (1 - V); the canonical branch renders from one of 18 orbit cameras
with the project's own canonical OpenPose canvases and weights by alpha > 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .configs import GuidanceConfig
from .models import SDSModels


def _as_image_tensor(image, device, dtype) -> torch.Tensor:
    """uint8 or float (h, w, 3) array/tensor -> (1, 3, h, w) float in [0, 1]."""
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    t = t.to(device)
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"control image must be (h, w, 3), got {tuple(t.shape)}")
    return t.permute(2, 0, 1)[None].to(dtype)


class SilhouetteSDS:
    """Pose-conditioned SDS on alpha maps (see the module docstring for the maths).

    Args:
        models: frozen SD 1.5 pieces + ControlNet (:func:`~occfusion_core.priors.diffusion.sds_models_from_config`).
        cfg: the guidance config.

    Attributes:
        text_embeddings: (2, 77, D) CLIP embeddings of [prompt; negative prompt], encoded once.
        min_step, max_step: timestep bounds from ``cfg.t_range``.
        last_timestep: t used by the latest :meth:`step` (for logs).
    """

    def __init__(self, models: SDSModels, cfg: GuidanceConfig):
        if cfg.timestep_schedule not in ("anneal", "random"):
            raise ValueError(f"timestep_schedule {cfg.timestep_schedule!r} is not 'anneal' or 'random'")
        lo, hi = float(cfg.t_range[0]), float(cfg.t_range[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {cfg.t_range}")
        if cfg.resolution % 8 or cfg.resolution <= 0:
            raise ValueError(f"resolution must be a positive multiple of 8, got {cfg.resolution}")
        self.models, self.cfg = models, cfg
        self.device, self.dtype = models.device, models.dtype
        self.num_train_timesteps = int(models.scheduler.config.num_train_timesteps)
        self.min_step = int(self.num_train_timesteps * lo)
        self.max_step = int(self.num_train_timesteps * hi)
        self.alphas_cumprod = models.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.text_embeddings = self._encode_text([cfg.prompt, cfg.negative_prompt])
        self.last_timestep: int | None = None

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), 77, D) last hidden states of the CLIP text encoder."""
        tok = self.models.tokenizer(prompts, padding="max_length", max_length=self.models.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
        return self.models.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    def timestep(self, iteration: int, total_iterations: int, generator: torch.Generator | None = None) -> int:
        """t for 1-based ``iteration`` of ``total_iterations``: annealed 980 -> 20 (released) or random."""
        if self.cfg.timestep_schedule == "random":
            device = generator.device if generator is not None else "cpu"
            return int(torch.randint(self.min_step, self.max_step + 1, (1,), generator=generator, device=device))
        ratio = min(max((iteration - 1) / max(total_iterations - 1, 1), 0.0), 1.0)
        t = int(np.round((1.0 - ratio) * self.num_train_timesteps))
        return int(np.clip(t, self.min_step, self.max_step))

    def prepare_control(self, control_image) -> torch.Tensor:
        """uint8/float (h, w, 3) OpenPose canvas -> (1, 3, R, R) in [0, 1], resized without keeping
        the aspect ratio (as released); a prepared tensor passes through unchanged."""
        if isinstance(control_image, torch.Tensor) and control_image.dim() == 4:
            return control_image.to(self.device, self.dtype)
        image = _as_image_tensor(control_image, self.device, torch.float32)
        size = (self.cfg.resolution, self.cfg.resolution)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True).to(self.dtype)

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [0, 1] -> (B, 4, R/8, R/8) scaled latents (a posterior sample, as released)."""
        posterior = self.models.vae.encode((2.0 * image - 1.0).to(self.dtype)).latent_dist
        return posterior.sample(generator) * self.models.vae.config.scaling_factor

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, t: int, control: torch.Tensor) -> torch.Tensor:
        """eps_hat for (1, 4, h, w) ``noisy`` latents at step ``t``: ControlNet-guided UNet with CFG."""
        s = float(self.cfg.guidance_scale)
        # s == 0 leaves only the negative-prompt branch: skip the positive one (same result, half the cost)
        embeddings = self.text_embeddings[1:] if s == 0.0 else self.text_embeddings
        batch = embeddings.shape[0]
        latents = noisy.expand(batch, -1, -1, -1).to(self.dtype)
        steps = torch.full((batch,), t, device=self.device, dtype=torch.long)
        down, mid = self.models.controlnet(
            latents, steps, encoder_hidden_states=embeddings, controlnet_cond=control.expand(batch, -1, -1, -1),
            conditioning_scale=float(self.cfg.controlnet_conditioning_scale), guess_mode=False, return_dict=False)
        eps = self.models.unet(latents, steps, encoder_hidden_states=embeddings, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample.float()
        if s == 0.0:
            return eps
        eps_pos, eps_neg = eps.chunk(2)
        return eps_neg + s * (eps_pos - eps_neg)

    def step(self, alpha: torch.Tensor, control_image, weight_mask: torch.Tensor | None = None,
             iteration: int = 1, total_iterations: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """The SDS loss of one rendered alpha map.

        Args:
            alpha: (H, W, 1) float in [0, 1], differentiable (a render's alpha, or a branch crop).
            control_image: OpenPose canvas, uint8/float (h, w, 3), or a :meth:`prepare_control` tensor.
            weight_mask: (H, W) float/bool weight per pixel, resized bilinearly to the latent grid;
                None weights every latent pixel by 1.
            iteration, total_iterations: 1-based position in the schedule (timestep annealing).
            generator: seeds the VAE posterior sample, the noise and a random timestep.

        Returns:
            scalar float32 loss; its gradient w.r.t. the latents is weight * (1 - alphabar_t)(eps_hat - eps).
        """
        if alpha.dim() != 3 or alpha.shape[-1] != 1:
            raise ValueError(f"alpha must be (H, W, 1), got {tuple(alpha.shape)}")
        R = self.cfg.resolution
        image = alpha.permute(2, 0, 1)[None].to(self.device).float().expand(-1, 3, -1, -1)
        image = F.interpolate(image, (R, R), mode="bilinear", align_corners=False)
        latents = self.encode(image, generator).float()
        t = self.timestep(iteration, total_iterations, generator)
        self.last_timestep = t
        noise = torch.randn(latents.shape, generator=generator, device=self.device, dtype=torch.float32)
        steps = torch.full((latents.shape[0],), t, device=self.device, dtype=torch.long)
        noisy = self.models.scheduler.add_noise(latents.detach(), noise, steps)
        eps_hat = self.predict_noise(noisy, t, self.prepare_control(control_image))
        weight = 1.0 - self.alphas_cumprod[t]
        grad = torch.nan_to_num(weight * (eps_hat - noise))
        target = (latents - grad).detach()
        if weight_mask is None:
            mask = torch.ones_like(latents[:, :1])
        else:
            if weight_mask.dim() != 2:
                raise ValueError(f"weight_mask must be (H, W), got {tuple(weight_mask.shape)}")
            mask = F.interpolate(weight_mask.to(self.device).float().detach()[None, None], latents.shape[-2:],
                                 mode="bilinear", align_corners=False)
        return 0.5 * (mask * (latents - target) ** 2).sum() / latents.shape[0]


# ---------------------------------------------------------------------------------------------
# Branches (stage1.py): posed space with 0.75 probability, canonical space otherwise
# ---------------------------------------------------------------------------------------------

POSE, CANONICAL = "pose", "canonical"


def choose_branch(rng: np.random.Generator, p_pose: float = 0.75) -> str:
    """'pose' with probability ``p_pose``, else 'canonical'. Same draw as released
    (``uniform() > 0.25`` for the posed branch); the released stage 1 also forces 'pose' on its
    last iteration, which is the caller's business."""
    return POSE if rng.uniform() > 1.0 - p_pose else CANONICAL


@dataclass
class PosedSDSInput:
    """Inputs of a posed-branch SDS step, cropped to the body box.

    Attributes:
        alpha: (h, w, 1) render alpha with no gradient inside the visible mask.
        control: (h, w, 3) uint8 OpenPose canvas crop.
        weight_mask: (h, w) float, 1 - V: only where the person is not seen.
    """

    alpha: torch.Tensor
    control: np.ndarray
    weight_mask: torch.Tensor


def posed_sds_input(alpha: torch.Tensor, visible: torch.Tensor, openpose_canvas: np.ndarray,
                    box_xyxy: tuple[int, int, int, int]) -> PosedSDSInput:
    """Crop the posed branch's inputs to the body box (released stage1.py).

    Args:
        alpha: (H, W, 1) render alpha with gradient.
        visible: (H, W, 1) or (H, W) bool/float visible-person mask V.
        openpose_canvas: (H, W, 3) uint8 OpenPose canvas of the frame (all joints).
        box_xyxy: (x0, y0, x1, y1) end-exclusive body box.

    Returns:
        :class:`PosedSDSInput`; its alpha is ``stopgrad(alpha V) + alpha (1 - V)``, so the prior moves
        only what the camera cannot see.
    """
    V = visible.float().reshape(alpha.shape[0], alpha.shape[1], 1).to(alpha.device)
    blocked = (alpha * V).detach() + alpha * (1.0 - V)
    x0, y0, x1, y1 = box_xyxy
    return PosedSDSInput(alpha=blocked[y0:y1, x0:x1], control=np.asarray(openpose_canvas)[y0:y1, x0:x1],
                         weight_mask=(1.0 - V[y0:y1, x0:x1, 0]))


def posed_openpose_canvas(joints45: torch.Tensor, camera) -> np.ndarray:
    """(H, W, 3) uint8 OpenPose canvas of one posed body, all 18 joints drawn (stage 1 draws no
    self-occlusion test).

    Args:
        joints45: (45, 3) smplx joints of the frame's body, world coordinates.
        camera: the frame's :class:`~occfusion_core.render.camera.Camera`.
    """
    from ..body.openpose import draw_openpose, openpose18, project_openpose

    uv, _ = project_openpose(openpose18(joints45[None].detach().cpu())[0], camera.to("cpu"))
    return draw_openpose(uv, np.ones(len(uv), dtype=bool), camera.width, camera.height)


def canonical_weight_mask(alpha: torch.Tensor) -> torch.Tensor:
    """(H, W, 1) canonical render alpha -> (H, W) float weight, 1 where alpha > 0.01 (detached)."""
    return (alpha[..., 0].detach() > 0.01).float()


class CanonicalViews:
    """The canonical branch's 18 orbit views: cameras and prepared OpenPose conditions.

    The canvases are the project's own (:func:`~occfusion_core.body.openpose.canonical_openpose_canvases`:
    the mean-shape big pose, centred, seen from each azimuth), prepared for the ControlNet once.

    Args:
        body: the body model.
        sds: the guidance module (for :meth:`SilhouetteSDS.prepare_control`).
        hors: azimuths in degrees (default: the released 18).
    """

    def __init__(self, body, sds: SilhouetteSDS, hors=None):
        from ..body.openpose import CANONICAL_HORS, canonical_camera, canonical_openpose_canvases

        self.hors = tuple(int(h) for h in (CANONICAL_HORS if hors is None else hors))
        canvases = canonical_openpose_canvases(body, self.hors)
        self.controls = {h: sds.prepare_control(canvases[h]) for h in self.hors}
        self.cameras = {h: canonical_camera(h) for h in self.hors}

    def sample(self, rng: np.random.Generator):
        """(hor, camera, prepared control (1, 3, R, R)) of a uniformly drawn azimuth."""
        hor = self.hors[int(rng.integers(len(self.hors)))]
        return hor, self.cameras[hor], self.controls[hor]
