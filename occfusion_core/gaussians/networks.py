"""The two small networks of GauHuman's deformation (GauHuman's released code, ``nets/``;
docs/method.md, "Human Gaussians").

- :class:`BodyPoseRefiner`: per-frame corrections ΔR_j of the 23 non-root joint rotations,
  predicted from the frame's body pose and starting at ≈ identity.
- :class:`LBSOffsetDecoder`: per-point offsets of the skinning-weight logits, predicted from the
  positionally encoded canonical position.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_BODY_JOINTS = 23
"""SMPL joints without the root (the refiner corrects these)."""


def rodrigues_smooth(rot_vecs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Axis-angle -> rotation matrix with θ = sqrt(eps + ‖r‖²) (GauHuman's refiner variant).

    Unlike ``smplx.lbs.batch_rodrigues`` (θ = ‖r + 1e-8‖), the epsilon under the square root keeps
    the map and its gradient smooth at r ≈ 0, where the refiner starts. Written as
    I + sin θ K + (1 − cos θ) K² with K = [r/θ]×, which is exactly I at r = 0 (GauHuman expands it
    as cos θ I + (1 − cos θ) n nᵀ + sin θ [n]×, equal for ‖r‖ ≫ √eps but ≈ (1 − 5e-6) I at r = 0).

    Args:
        rot_vecs: (..., 3) axis-angle vectors.

    Returns:
        (..., 3, 3) rotation matrices.
    """
    angle = torch.sqrt(eps + rot_vecs.square().sum(-1, keepdim=True))  # (..., 1)
    axis = rot_vecs / angle
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]  # (..., 1, 1)
    x, y, z = axis.unbind(-1)
    zeros = torch.zeros_like(x)
    cross = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    return eye + sin * cross + (1.0 - cos) * (cross @ cross)


class BodyPoseRefiner(nn.Module):
    """MLP body pose (69) -> per-joint correction rotations ΔR (23, 3, 3).

    Linear(69, W)-ReLU-[Linear(W, W)-ReLU] x (depth - 1)-Linear(W, 69); hidden layers Xavier-uniform
    with ReLU gain, last layer U(-1e-5, 1e-5) with zero bias so that ΔR ≈ I at the start.
    """

    def __init__(self, embedding_size: int = 3 * NUM_BODY_JOINTS, mlp_width: int = 128, mlp_depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(embedding_size, mlp_width), nn.ReLU()]
        for _ in range(mlp_depth - 1):
            layers += [nn.Linear(mlp_width, mlp_width), nn.ReLU()]
        layers.append(nn.Linear(mlp_width, 3 * NUM_BODY_JOINTS))
        self.mlp = nn.Sequential(*layers)
        relu_gain = nn.init.calculate_gain("relu")
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            nn.init.xavier_uniform_(layer.weight, gain=relu_gain)
            nn.init.zeros_(layer.bias)
        nn.init.uniform_(linears[-1].weight, -1e-5, 1e-5)
        nn.init.zeros_(linears[-1].bias)

    def forward(self, body_pose: torch.Tensor) -> torch.Tensor:
        """body_pose: (B, 69) axis-angle of joints 1..23 -> (B, 23, 3, 3) correction rotations."""
        rot_vecs = self.mlp(body_pose).reshape(body_pose.shape[0], NUM_BODY_JOINTS, 3)
        return rodrigues_smooth(rot_vecs)


def positional_encoding(x: torch.Tensor, num_freqs: int = 10) -> torch.Tensor:
    """NeRF encoding [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(F-1) x), cos(2^(F-1) x)].

    Args:
        x: (..., D).

    Returns:
        (..., D (1 + 2 F)); 63 channels for D = 3, F = 10.
    """
    freqs = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)  # (F,)
    scaled = x[..., None, :] * freqs[:, None]  # (..., F, D)
    # Interleave sin/cos per frequency (NeRF order), so weights stay comparable with GauHuman's.
    periodic = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # (..., F, 2, D)
    return torch.cat([x, periodic.flatten(-3)], dim=-1)


class LBSOffsetDecoder(nn.Module):
    """Skinning-weight logit offsets ΔW (total_bones) from the encoded canonical position.

    63 -> 128 -> 128 -> 128, concat the encoding (skip after the third layer) -> 191 -> 128, ReLU
    after each; head 128 -> total_bones without activation. The original uses 1x1 Conv1d layers,
    which are per-point linear layers with the same default initialisation.
    """

    def __init__(self, total_bones: int = 24, num_freqs: int = 10, width: int = 128):
        super().__init__()
        self.num_freqs = num_freqs
        in_dim = 3 * (1 + 2 * num_freqs)
        self.trunk = nn.ModuleList([nn.Linear(in_dim, width), nn.Linear(width, width), nn.Linear(width, width)])
        self.after_skip = nn.Linear(width + in_dim, width)
        self.head = nn.Linear(width, total_bones)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz: (N, 3) canonical positions -> (N, total_bones) weight-logit offsets."""
        encoded = positional_encoding(xyz, self.num_freqs)
        hidden = encoded
        for layer in self.trunk:
            hidden = torch.relu(layer(hidden))
        hidden = torch.relu(self.after_skip(torch.cat([encoded, hidden], dim=-1)))
        return self.head(hidden)
