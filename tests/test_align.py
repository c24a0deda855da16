"""Body alignment to the visible evidence: crossing a run of frames the detector missed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from occfusion_core.body.align import _nearest_points, align_to_evidence, anchor_frames, cross_gaps, detection_runs
from occfusion_core.body.configs import BodyAlignConfig
from occfusion_core.config import SyntheticConfig
from occfusion_core.data.sequence import read_sequence
from occfusion_core.data.synthetic import generate_synthetic_subject
from occfusion_core.render.mesh import silhouette

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_detection_runs():
    assert detection_runs(np.array([1, 0, 0, 1, 0], bool)) == [(1, 3), (4, 5)]
    assert detection_runs(np.array([0, 0, 1], bool)) == [(0, 2)]
    assert detection_runs(np.ones(3, bool)) == []


@pytest.fixture(scope="module")
def turning_subject(tmp_path_factory, proxy_body):
    """80 px, 8 frames of the walk-and-turn motion, fitted clothing, exact parameters in gt/."""
    root = tmp_path_factory.mktemp("align_gap") / "data"
    generate_synthetic_subject(root, SyntheticConfig(frames=8, width=80, height=80, heldout_views=0,
                                                     occluded_frames_fraction=1.0, pose_noise_deg=0.0,
                                                     trans_noise_m=0.0, betas_noise=0.0, clothing="fitted",
                                                     seed=2), proxy_body)
    return root


def _iou(body, poses, betas, trans, seq) -> np.ndarray:
    with torch.no_grad():
        vertices = body(*(torch.as_tensor(x, dtype=torch.float32) for x in (poses, betas, trans))).vertices
    out = []
    for t, name in enumerate(seq.frames):
        sil = silhouette(vertices[t], body.faces, seq.camera(name)).numpy()
        full = seq.gt_full_mask(name)
        out.append((sil & full).sum() / (sil | full).sum())
    return np.array(out)


def test_crossing_a_gap_follows_the_person_where_the_stale_estimate_does_not(turning_subject, proxy_body):
    """Frames 1-6 have no detection and an estimate frozen at frame 0 (what bridging a long gap from
    one side gives); carried across one frame at a time from frames 0 and 7 and aligned to each
    visible mask, the body overlaps the person far better, and the detected frames stay as they are."""
    seq = read_sequence(turning_subject)
    clean = json.loads((turning_subject / "gt" / "clean_metadata.json").read_text())
    true = {k: np.array([clean[n][k] for n in seq.frames], dtype=np.float64) for k in ("poses", "betas", "trans")}
    stale = {k: v.copy() for k, v in true.items()}
    stale["poses"][1:7], stale["trans"][1:7] = true["poses"][0], true["trans"][0]
    detected = np.array([True] + [False] * 6 + [True])
    visible = np.stack([seq.mask(n) for n in seq.frames])
    cameras = [seq.camera(n) for n in seq.frames]
    cfg = BodyAlignConfig(gap_rounds=4, gap_anchor_frames=1)
    poses, trans, summary = cross_gaps(proxy_body, stale["poses"], stale["betas"], stale["trans"], cameras,
                                       visible, detected, cfg)
    assert summary["frames"] == 6 and summary["runs"] == 1
    assert np.array_equal(poses[[0, 7]], stale["poses"][[0, 7]])
    before = _iou(proxy_body, stale["poses"], stale["betas"], stale["trans"], seq)[1:7]
    after = _iou(proxy_body, poses, stale["betas"], trans, seq)[1:7]
    # and through align_to_evidence: the whole clip aligned after the crossing, against without it
    plain = align_to_evidence(proxy_body, stale["poses"], stale["betas"], stale["trans"], cameras, visible,
                              BodyAlignConfig(rounds=4))
    crossed = align_to_evidence(proxy_body, stale["poses"], stale["betas"], stale["trans"], cameras, visible,
                                BodyAlignConfig(gap_rounds=4, gap_anchor_frames=1, rounds=4), detected=detected)
    assert crossed.summary["gaps_crossed"]["frames"] == 6
    plain_iou = _iou(proxy_body, plain.poses, plain.betas, plain.trans, seq)[1:7]
    crossed_iou = _iou(proxy_body, crossed.poses, crossed.betas, crossed.trans, seq)[1:7]
    print(f"\ngap frames IoU: stale {before.mean():.3f}, crossed {after.mean():.3f}; whole-clip alignment "
          f"{plain_iou.mean():.3f} without the crossing, {crossed_iou.mean():.3f} with it")
    assert after.mean() > before.mean() + 0.03
    assert crossed_iou.mean() > plain_iou.mean()


def test_a_lone_detection_inside_a_gap_does_not_anchor_it():
    detected = np.array([1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1], bool)
    assert np.array_equal(anchor_frames(detected, 3), np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1], bool))
    assert np.array_equal(anchor_frames(detected, 1), detected)


def test_nearest_points_is_the_brute_force_nearest():
    """The k-d tree assignment of cover samples to projected vertices: per frame, each query's
    point is at the smallest distance (float64 brute force; ties may pick either)."""
    g = torch.Generator().manual_seed(0)
    queries = torch.rand(4, 60, 2, generator=g) * 100
    points = torch.rand(4, 500, 2, generator=g) * 100
    points[2, 7] = queries[2, 3]  # an exact hit
    nearest = _nearest_points(queries, points)
    assert nearest.shape == (4, 60) and nearest.dtype == torch.long
    d = torch.cdist(queries.double(), points.double())
    chosen = torch.gather(d, 2, nearest[..., None])[..., 0]
    torch.testing.assert_close(chosen, d.min(dim=-1).values, rtol=0, atol=1e-12)
    assert nearest[2, 3] == 7
