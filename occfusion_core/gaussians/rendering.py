"""Deformed Gaussians drawn for a camera: their SH colours evaluated for the view, then rasterized."""

from __future__ import annotations

from ..render.rasterize import rasterize_with_sh


def _view_transforms(deformed, view_frame: str):
    if view_frame == "canonical":
        return deformed.transforms
    if view_frame != "world":
        raise ValueError(f"view_frame must be 'canonical' or 'world', got {view_frame!r}")
    return None


def render_gaussians(deformed, camera, background, backend: str, view_frame: str = "canonical"):
    """Rasterize deformed Gaussians with their SH colours evaluated for ``camera``.

    Returns:
        :class:`occfusion_core.render.rasterize.RenderOutput`.
    """
    return rasterize_with_sh(deformed.means, deformed.opacities, camera, deformed.covars, deformed.sh,
                             deformed.sh_degree, view_transforms=_view_transforms(deformed, view_frame),
                             background=background, backend=backend)
