"""The InverseForm boundary-distance term (Borse et al., CVPR 2021), the affine part of Vivim's boundary constraint.

Vivim (arXiv 2401.14168) penalises the affine transform between predicted and ground-truth edge maps as estimated
by InverseForm's frozen, pretrained inverse-transformation network: an MLP ``2·P² → 1000 → 32 → 4`` (P = 224, about
100 M parameters) that regresses 4 distance measures from a pair of ``P × P`` edge patches. The loss is the mean L2
norm of those distances over the patches (zero when the maps agree).

Why this only runs with a local checkpoint, and how it differs from the public code:

- The network is useless untrained and its weights (``distance_measures_regressor.pth``, a Qualcomm InverseForm
  release asset of about 400 MB) are not part of any package; nothing is downloaded here, so the loss takes the
  path of a local copy and has no default.
- The public Vivim code feeds ``log_softmax`` of its 1-channel edge logits, identically zero, so its term is a
  constant with no gradient. Here the network sees ``sigmoid(edge_logits)`` against the Sobel edges of the label
  (the same targets as :class:`~vivim_monai.losses.BoundaryLoss`), which carries gradient to the edge head.
- The paper's second term (ground-truth edges of frame 1 against predicted edges of frame t, weight −0.01) is not
  in the public code and rewards disagreement with frame 1; it is left out.

The gradient path is tested with a randomly initialised stand-in network at a small patch size; the released
checkpoint itself could not be checked here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vivim_monai.losses.base import FrameLoss, Frames
from vivim_monai.losses.boundary import sobel_edges

__all__ = ["InverseFormLoss", "InverseNet"]


class InverseNet(nn.Module):
    """InverseForm's distance regressor: ``fc`` = Linear(2·P², 1000), ReLU, Linear(1000, 32), ReLU, Linear(32, 4)."""

    def __init__(self, patch_size: int = 224) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.fc = nn.Sequential(
            nn.Linear(2 * self.patch_size**2, 1000), nn.ReLU(True), nn.Linear(1000, 32), nn.ReLU(True), nn.Linear(32, 4)
        )

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """4 distance measures ``(N, 4)`` between edge patches ``(N, 1, P, P)`` (prediction, target)."""
        return self.fc(torch.cat([prediction.flatten(1), target.flatten(1)], dim=1))


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (plain or under ``"state_dict"``/``"model"``) without ``module.``/``model.``."""
    if not path.is_file():
        raise FileNotFoundError(f"InverseForm checkpoint {path} does not exist (it is never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"InverseForm checkpoint {path} holds no state dict")
    for prefix in ("module.", "model."):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


class InverseFormLoss(FrameLoss):
    """Mean L2 norm of InverseForm's distances between ``sigmoid(edge_logits)`` and the label's Sobel edges.

    Each frame's two maps are resized (bilinear) to ``grid[0]·P × grid[1]·P`` and cut into ``grid[0]·grid[1]``
    patches of ``P × P``; the public code's setting is P = 224 and a 3 × 6 grid (672 × 1344). The network is frozen
    (no trainable parameters) and kept in eval mode.

    Args:
        checkpoint: local InverseForm ``distance_measures_regressor.pth`` (or any state dict of :class:`InverseNet`).
        patch_size: P, fixed by the checkpoint (224 for the released one).
        grid: patches per frame along H and W.
        frames: ``"all"`` or ``"center"``.
    """

    edge_input = True

    def __init__(
        self, checkpoint: str | Path, patch_size: int = 224, grid: tuple[int, int] = (3, 6), frames: Frames = "all"
    ) -> None:
        super().__init__(frames)
        path = Path(checkpoint)
        state = _load_state_dict(path)
        with torch.device("meta"):  # shapes only: the weights come from the checkpoint (no 400 MB random init)
            self.net = InverseNet(patch_size)
        expected = self.net.state_dict()
        missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
        wrong = [
            (k, tuple(state[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or wrong:
            raise ValueError(
                f"InverseForm checkpoint {path} does not fit InverseNet(patch_size={patch_size}): missing {missing}, "
                f"unexpected {unexpected}, wrong shape (key, checkpoint, expected) {wrong}"
            )
        self.net.load_state_dict(state, assign=True)
        self.net.requires_grad_(False)
        self.net.eval()
        self.grid = (int(grid[0]), int(grid[1]))

    def train(self, mode: bool = True) -> InverseFormLoss:
        """Switch the loss module, but keep the frozen network in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def patches(self, maps: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` -> ``(N·gh·gw, 1, P, P)`` after a bilinear resize to ``(gh·P, gw·P)``."""
        p, (gh, gw) = self.net.patch_size, self.grid
        resized = F.interpolate(maps, size=(gh * p, gw * p), mode="bilinear", align_corners=False)
        return resized.reshape(-1, 1, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, p, p)

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        edges = sobel_edges(labels).to(logits)
        distances = self.net(self.patches(torch.sigmoid(logits)), self.patches(edges))
        return torch.linalg.vector_norm(distances, dim=1).mean()
