"""Exact k-nearest neighbours by chunked ``torch.cdist`` + ``topk`` (any device, no extension).

Used for the nearest canonical body vertex of every Gaussian (each deformation), the initial
scales (what ``simple_knn.distCUDA2`` gives 3D Gaussian Splatting) and the KL neighbour in
densification. Point counts here are ~10^4, so the brute force is fast on a GPU (and ~0.1–0.2 s
for 5k x 5k on one CPU core); chunking over query rows keeps the score matrix of one chunk below
``chunk_elements`` entries.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Largest distance block computed at once (4M floats = 16 MiB)."""

RERANK_EXTRA = 4
"""Candidates beyond ``k`` re-ordered by exact distance (the matrix-product ranking is rounded)."""


@torch.no_grad()
def knn(query: torch.Tensor, points: torch.Tensor, k: int, *, exclude_self: bool = False,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest ``points`` of every query point, nearest first.

    Args:
        query: (M, 3) query points.
        points: (N, 3) reference points, on the same device.
        k: neighbours per query, 1 <= k <= N (N - 1 with ``exclude_self``).
        exclude_self: ``query`` is ``points`` (same rows): row i never returns index i, even
            when another point coincides with it.
        chunk_elements: bound on the entries of one (chunk, N) distance block.

    Returns:
        dist2: (M, k) squared Euclidean distances, computed from the coordinates (between points at
            the very same distance, the lower index first).
        idx: (M, k) long indices into ``points``.
    """
    if query.ndim != 2 or points.ndim != 2 or query.shape[-1] != points.shape[-1]:
        raise ValueError(f"knn wants (M, D) and (N, D), got {tuple(query.shape)} and {tuple(points.shape)}")
    if exclude_self and query.shape[0] != points.shape[0]:
        raise ValueError("exclude_self needs query and points to be the same point set")
    n_avail = points.shape[0] - int(exclude_self)
    if not 1 <= k <= n_avail:
        raise ValueError(f"k={k} but only {n_avail} candidate neighbours")
    m = query.shape[0]
    # The ranking below is rounded, so take a few more candidates than asked and order those by
    # their exact distances: float32 cannot tell 1e-4 from 2e-4 apart next to ‖p‖² ~ 0.5.
    candidates = min(n_avail, k + RERANK_EXTRA)
    rows_per_chunk = max(1, chunk_elements // max(1, points.shape[0]))
    # Rank by ‖p‖² − 2 q·p (= ‖q − p‖² − ‖q‖², same order per row): one matrix product, no sqrt.
    # Centring on the points keeps ‖p‖² small.
    centre = points.mean(dim=0)
    points_c, query_c = points - centre, query - centre
    sq_norms = points_c.square().sum(-1)[None]  # (1, N)
    idx = torch.empty((m, candidates), dtype=torch.long, device=query.device)
    for start in range(0, m, rows_per_chunk):
        stop = min(m, start + rows_per_chunk)
        score = torch.addmm(sq_norms, query_c[start:stop], points_c.T, alpha=-2.0)
        if exclude_self:
            rows = torch.arange(stop - start, device=query.device)
            score[rows, rows + start] = float("inf")
        idx[start:stop] = torch.topk(score, candidates, dim=1, largest=False, sorted=True).indices
    idx = idx.sort(dim=1).values  # exact ties then go to the lower index
    dist2 = (query[:, None, :] - points[idx]).square().sum(-1)
    dist2, order = torch.sort(dist2, dim=1, stable=True)
    dist2, idx = dist2[:, :k], torch.gather(idx, 1, order[:, :k])
    return dist2, idx


@torch.no_grad()
def init_scales(points: torch.Tensor, num_neighbours: int = 3, min_dist2: float = 1e-7) -> torch.Tensor:
    """Isotropic initial log-scales of Gaussians placed at ``points`` (3DGS / GauHuman init).

    scale = sqrt(mean squared distance to the ``num_neighbours`` nearest other points), clamped
    below at sqrt(``min_dist2``) as 3DGS does, so coincident points do not give log(0).

    Args:
        points: (N, 3), N >= 2.

    Returns:
        (N, 3) log-scales, the same value on the three axes.
    """
    k = min(num_neighbours, points.shape[0] - 1)
    dist2, _ = knn(points, points, k, exclude_self=True)
    mean_dist2 = dist2.mean(dim=1).clamp_min(min_dist2)
    return torch.log(torch.sqrt(mean_dist2))[:, None].repeat(1, 3)
