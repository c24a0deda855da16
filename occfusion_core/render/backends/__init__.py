"""Rasterizer backends, chosen by name.

Two kinds of backend exist, each a contract written once here as a :class:`typing.Protocol`:

- a *pixel* backend (:class:`PixelBackendFn`) implements only the compositing step, with the exact
  semantics documented in :func:`occfusion_core.render.rasterize.rasterize_to_pixels`; projection
  and SH run before it (in torch, or fused in the C++ backend);
- a *full* backend (:class:`FullBackendFn`) replaces the whole of
  :func:`occfusion_core.render.rasterize.rasterize`.

Each backend module documents only what is its own (devices, dtypes, limits, how it is built).

Built-in backends live in modules of this package that are imported only when first asked for, so
a missing compiler or CUDA never breaks ``import occfusion_core``. Loading one imports its module
and, if the module defines ``register_backend()``, calls it (so importing stays cheap and a
compiled extension is built only here); either the import or that call must end with the backend
registered through :func:`register_pixel_backend` / :func:`register_full_backend`. When it cannot
work on this machine (no CUDA, extension fails to compile) it raises instead; the reason is
logged once and remembered, and "auto" moves on to the next candidate.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

if TYPE_CHECKING:
    from ..camera import Camera
    from ..rasterize import RenderOutput

log = logging.getLogger(__name__)


class PixelBackendFn(Protocol):
    """Composite projected Gaussians front to back (semantics: ``rasterize.rasterize_to_pixels``).

    Args:
        means2d: (N, 2) pixel-space centres (x = column, y = row).
        conics: (N, 3) inverse 2D covariances [a, b, c], i.e. [[a, b], [b, c]].
        colors: (N, C) features, any number of channels.
        opacities: (N,) in [0, 1].
        depths: (N,) compositing order only (ascending, ties by index); no gradient.
        radii: (N, 2) integer box half-extents; a Gaussian with a radius <= 0 is not drawn.
        width, height: image size in pixels.

    Returns:
        (H, W, C) composited features and (H, W, 1) alpha, differentiable w.r.t. means2d, conics,
        colors and opacities.
    """

    def __call__(self, means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor,
                 opacities: torch.Tensor, depths: torch.Tensor, radii: torch.Tensor, width: int,
                 height: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class FullBackendFn(Protocol):
    """Render 3D Gaussians for a camera (replaces ``rasterize.rasterize``; inputs already validated
    there, so exactly one of (quats, scales) / covars and one of colors / sh is not None).

    Args:
        means: (N, 3) world-space centres.
        opacities: (N,) activated opacities.
        camera: the view.
        quats, scales: (N, 4) (w, x, y, z) rotations of any norm and (N, 3) standard deviations, or None.
        covars: (N, 3, 3) world-space covariances, or None.
        colors: (N, 3) colours, or None.
        sh: (N, K, 3) SH coefficients with ``sh_degree`` bands in use, or None.
        background: (3,) colour, or None (black).
        eps2d: screen-space low-pass added to the 2D covariances.
        near, far: depth range drawn.

    Returns:
        :class:`~occfusion_core.render.rasterize.RenderOutput` in the dtype of ``means``.
    """

    def __call__(self, means: torch.Tensor, opacities: torch.Tensor, camera: "Camera", *,
                 quats: torch.Tensor | None, scales: torch.Tensor | None, covars: torch.Tensor | None,
                 colors: torch.Tensor | None, sh: torch.Tensor | None, sh_degree: int | None,
                 background: torch.Tensor | None, eps2d: float, near: float, far: float) -> "RenderOutput": ...

# name -> module that registers it on import.
BUILTIN_BACKEND_MODULES: dict[str, str] = {
    "torch": "occfusion_core.render.backends.torch_ref",
    "cpp": "occfusion_core.render.backends.cpp",
    "gsplat": "occfusion_core.render.backends.gsplat_cuda",
    "inria": "occfusion_core.render.backends.inria_cuda",
}
# What "auto" tries, fastest first; "torch" always loads, so "auto" always resolves.
AUTO_PREFERENCE: tuple[str, ...] = ("gsplat", "cpp", "torch")


@dataclass(frozen=True)
class Backend:
    """One registered backend.

    Attributes:
        name: registry key.
        kind: "pixel" (compositing only) or "full" (whole render).
        fn: a :class:`PixelBackendFn` or a :class:`FullBackendFn`, by kind.
        devices: device types it runs on ("cpu", "cuda"); None = any.
    """

    name: str
    kind: Literal["pixel", "full"]
    fn: Callable
    devices: tuple[str, ...] | None = None

    def supports(self, device: torch.device | str | None) -> bool:
        return device is None or self.devices is None or torch.device(device).type in self.devices


_REGISTRY: dict[str, Backend] = {}
_LOAD_FAILURES: dict[str, str] = {}  # name -> reason; each logged once


def register_pixel_backend(name: str, fn: PixelBackendFn, *, devices: tuple[str, ...] | None = None) -> None:
    """Register (or replace) a compositing-only backend."""
    _REGISTRY[name] = Backend(name, "pixel", fn, devices)
    _LOAD_FAILURES.pop(name, None)


def register_full_backend(name: str, fn: FullBackendFn, *, devices: tuple[str, ...] | None = None) -> None:
    """Register (or replace) a backend that renders from 3D Gaussians itself."""
    _REGISTRY[name] = Backend(name, "full", fn, devices)
    _LOAD_FAILURES.pop(name, None)


def _try_load(name: str) -> bool:
    """Make ``name`` registered if possible; False (reason logged once) when it cannot be."""
    if name in _REGISTRY:
        return True
    if name in _LOAD_FAILURES or name not in BUILTIN_BACKEND_MODULES:
        return False
    module = BUILTIN_BACKEND_MODULES[name]
    try:
        loaded = importlib.import_module(module)
        if name not in _REGISTRY and callable(getattr(loaded, "register_backend", None)):
            loaded.register_backend()
        if name not in _REGISTRY:
            raise RuntimeError(f"module {module} imported but did not register backend {name!r}")
    except Exception as err:  # noqa: BLE001 - any failure just makes the backend unavailable
        reason = f"{type(err).__name__}: {err}"
        _LOAD_FAILURES[name] = reason
        # A missing optional package (gsplat on a CPU machine) is expected; a build error is not.
        level = logging.INFO if isinstance(err, ImportError) else logging.WARNING
        log.log(level, "rasterizer backend %r unavailable (%s)", name, reason)
        return False
    return True


def available_backends() -> list[str]:
    """Names of the backends that load on this machine, preferred ones first."""
    for name in BUILTIN_BACKEND_MODULES:
        _try_load(name)
    preferred = [n for n in AUTO_PREFERENCE if n in _REGISTRY]
    return preferred + sorted(n for n in _REGISTRY if n not in preferred)


def resolve_backend(name: str, *, device: torch.device | str | None = None) -> str:
    """The registered backend name that ``name`` stands for.

    Args:
        name: a backend name, or "auto" for the fastest one that loads (gsplat, cpp, torch).
        device: when given, "auto" skips backends that cannot run there, and an explicit name that
            cannot run there is an error.

    Raises:
        ValueError: unknown name, or a backend that does not run on ``device``.
        RuntimeError: a known backend that failed to load (the message carries the reason).
    """
    if name == "auto":
        for candidate in AUTO_PREFERENCE:
            if _try_load(candidate) and _REGISTRY[candidate].supports(device):
                return candidate
        raise RuntimeError(f"no rasterizer backend in {AUTO_PREFERENCE} loads: {_LOAD_FAILURES}")
    if name not in _REGISTRY and name not in BUILTIN_BACKEND_MODULES:
        known = sorted(set(_REGISTRY) | set(BUILTIN_BACKEND_MODULES) | {"auto"})
        raise ValueError(f"unknown rasterizer backend {name!r}; known: {known}")
    if not _try_load(name):
        raise RuntimeError(f"rasterizer backend {name!r} is unavailable: {_LOAD_FAILURES[name]}")
    if not _REGISTRY[name].supports(device):
        raise ValueError(f"rasterizer backend {name!r} runs on {_REGISTRY[name].devices}, not on {device}")
    return name


def get_backend(name: str, *, device: torch.device | str | None = None) -> Backend:
    """The :class:`Backend` that ``name`` (possibly "auto") resolves to."""
    return _REGISTRY[resolve_backend(name, device=device)]
