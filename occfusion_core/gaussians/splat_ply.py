"""3D Gaussians as a PLY file in the layout of the original 3D Gaussian Splatting code (Kerbl et al.
2023, graphdeco-inria/gaussian-splatting, ``GaussianModel.save_ply``), which splat viewers and most
3DGS tools read.

One ``vertex`` element, one row per Gaussian, every property float32, binary little-endian, in this
order::

    x y z                    centre
    nx ny nz                 zeros (3DGS writes them; nothing reads them)
    f_dc_0 .. f_dc_2         degree-0 SH coefficient of R, G, B
    f_rest_0 .. f_rest_{3M-1}  higher SH coefficients, channel-major: the M = (degree + 1)² - 1
                             coefficients of R, then of G, then of B
    opacity                  logit (3DGS applies a sigmoid)
    scale_0 .. scale_2       log standard deviations (3DGS applies exp)
    rot_0 .. rot_3           quaternion (w, x, y, z), any norm (3DGS normalises)

The values are stored before activation, as 3DGS optimises them; :func:`read_splat_ply` returns them
the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_path
from ..render.sh import sh_degree_of

PLY_ELEMENT = "vertex"


@dataclass
class SplatPly:
    """Gaussians as a 3DGS PLY stores them (N rows, float32, before activation).

    Attributes:
        means: (N, 3) centres.
        sh: (N, K, 3) SH coefficients, K = (degree + 1)²: coefficient-major, like
            ``HumanGaussians.sh()`` (``sh[:, 0]`` is the DC term of R, G, B).
        opacity_logits: (N,) opacity before the sigmoid.
        log_scales: (N, 3) log standard deviations.
        quats: (N, 4) rotations (w, x, y, z), unnormalised.
    """

    means: np.ndarray
    sh: np.ndarray
    opacity_logits: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray

    def __post_init__(self) -> None:
        self.means, self.sh, self.opacity_logits, self.log_scales, self.quats = (
            np.ascontiguousarray(np.asarray(a, dtype=np.float32))
            for a in (self.means, self.sh, self.opacity_logits, self.log_scales, self.quats)
        )
        n = self.means.shape[0]
        expected = {"means": (n, 3), "opacity_logits": (n,), "log_scales": (n, 3), "quats": (n, 4)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {getattr(self, name).shape}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"sh must have shape ({n}, K, 3), got {self.sh.shape}")
        sh_degree_of(self.sh.shape[1])

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh.shape[1])


def ply_property_names(sh_degree: int) -> list[str]:
    """The 3DGS property names, in file order, for Gaussians of SH degree ``sh_degree``."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def write_splat_ply(path: str | os.PathLike, splats: SplatPly) -> None:
    """Write ``splats`` as a binary little-endian 3DGS PLY, atomically."""
    from plyfile import PlyData, PlyElement

    n = splats.num_gaussians
    # (N, K, 3) -> (N, 3, K): per channel, its coefficients in order (3DGS: transpose(1, 2).flatten)
    channel_major = splats.sh.transpose(0, 2, 1)
    columns = np.concatenate(
        [
            splats.means,
            np.zeros((n, 3), np.float32),
            channel_major[:, :, 0],
            channel_major[:, :, 1:].reshape(n, -1),
            splats.opacity_logits[:, None],
            splats.log_scales,
            splats.quats,
        ],
        axis=1,
    )
    names = ply_property_names(splats.sh_degree)
    rows = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        rows[name] = columns[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(rows, PLY_ELEMENT)], text=False, byte_order="<").write(str(tmp))


def read_splat_ply(path: str | os.PathLike) -> SplatPly:
    """Read a 3DGS PLY (any SH degree 0..3) as written by 3DGS or :func:`write_splat_ply`.

    Raises:
        InputError: naming the file when it is missing, not a PLY, or lacks 3DGS properties.
    """
    from plyfile import PlyData, PlyParseError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "PLY file is missing")
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, OSError, EOFError) as err:
        raise InputError(path, f"cannot read as PLY ({type(err).__name__}: {err})") from err
    if PLY_ELEMENT not in ply:
        raise InputError(path, f"no '{PLY_ELEMENT}' element (elements: {[e.name for e in ply.elements]})")
    vertex = ply[PLY_ELEMENT]
    present = [p.name for p in vertex.properties]
    rest = sorted((p for p in present if p.startswith("f_rest_")), key=lambda p: int(p.split("_")[-1]))
    if len(rest) % 3:
        raise InputError(path, f"{len(rest)} f_rest properties is not three channels' worth")
    try:
        degree = sh_degree_of(1 + len(rest) // 3)
    except ValueError as err:
        raise InputError(path, str(err)) from err
    missing = [p for p in ply_property_names(degree) if p not in present and p not in ("nx", "ny", "nz")]
    if missing:
        raise InputError(path, f"not a 3D Gaussian Splatting PLY: lacks properties {missing}")

    def stack(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(vertex[name], dtype=np.float32) for name in names], axis=1)

    n = vertex.count
    dc = stack([f"f_dc_{i}" for i in range(3)])  # (N, 3)
    rest_cm = stack(rest).reshape(n, 3, -1) if rest else np.zeros((n, 3, 0), np.float32)  # (N, 3, K - 1)
    sh = np.concatenate([dc[:, None, :], rest_cm.transpose(0, 2, 1)], axis=1)
    return SplatPly(
        means=stack(["x", "y", "z"]),
        sh=sh,
        opacity_logits=np.asarray(vertex["opacity"], np.float32),
        log_scales=stack([f"scale_{i}" for i in range(3)]),
        quats=stack([f"rot_{i}" for i in range(4)]),
    )
