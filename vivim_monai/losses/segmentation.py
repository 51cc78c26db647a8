"""Segmentation losses on every frame of a clip (or its centre frame): focal + Tversky, structure, Dice-CE.

- :class:`ClassBalancedFocalLoss` and :class:`FocalTverskyLoss`: the ovarian Vivim fork's recall-focused recipe,
  ``0.4·focal + 0.6·Tversky`` on softmax probabilities (focal: Lin et al., ICCV 2017, with per-class α; Tversky:
  Salehi et al., MLMI 2017, α = 0.3 on false positives, β = 0.7 on false negatives).
- :class:`StructureLoss`: PraNet's weighted BCE + weighted IoU (Fan et al., MICCAI 2020), the public Vivim code's
  segmentation loss, with the boundary weighting actually applied to the BCE (the public code passes the legacy
  ``reduce='none'``, which returns the plain mean and silently drops it).
- :class:`FrameDiceCELoss`: MONAI's ``DiceCELoss`` per frame.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, TverskyLoss

from vivim_monai.losses.base import FrameLoss, Frames, class_probabilities, one_hot_labels

__all__ = ["OVARIAN_FOCAL_ALPHA", "ClassBalancedFocalLoss", "FocalTverskyLoss", "FrameDiceCELoss", "StructureLoss"]

#: The ovarian fork's focal α for (background, solid, non-solid).
OVARIAN_FOCAL_ALPHA = (0.05, 0.475, 0.475)


class ClassBalancedFocalLoss(FrameLoss):
    """Class-balanced focal loss of the ovarian fork: per-class binary focal terms on softmax probabilities, summed.

    For class ``c`` with probability ``p`` and one-hot target ``t``, the mean over pixels of
    ``α_c·[t(1 − p)^γ + (1 − t)p^γ]·BCE(p, t)`` with ``BCE = −t·log(p + ε) − (1 − t)·log(1 − p + ε)``, ε = 1e-6;
    the class terms are **summed**. Binary logits (K = 1) count as two classes, ``(1 − σ, σ)``.
    MONAI's ``FocalLoss`` (per-class α, ``use_softmax``) is a different loss: with softmax it keeps only the true
    class's term ``−α_t(1 − p_t)^γ·log p_t``, without the ``(1 − t)p^γ`` terms of the other classes summed here.

    Args:
        gamma: focusing parameter γ.
        alpha: one weight per class (``max(K, 2)`` values), e.g. :data:`OVARIAN_FOCAL_ALPHA`; None: normalised inverse
            pixel frequency of each class in the (frame-selected) target batch, ``w_c = N / (C·(n_c + ε))``,
            ``α = w / Σw``.
        eps: the ε inside the logarithms and the class counts.
        frames: ``"all"`` or ``"center"``.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: Sequence[float] | None = None, eps: float = 1e-6, frames: Frames = "all"
    ) -> None:
        super().__init__(frames)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.alpha = None if alpha is None else tuple(float(a) for a in alpha)

    def class_weights(self, target: torch.Tensor) -> torch.Tensor:
        """α as given, or the normalised inverse class frequency of the one-hot ``target`` ``(N, C, H, W)``."""
        num_classes = target.shape[1]
        if self.alpha is not None:
            if len(self.alpha) != num_classes:
                raise ValueError(
                    f"{type(self).__name__}: alpha has {len(self.alpha)} values, the input has {num_classes} "
                    "classes (K = 1 counts as 2: background, foreground)"
                )
            return torch.tensor(self.alpha, dtype=target.dtype, device=target.device)
        counts = target.sum(dim=(0, 2, 3)) + self.eps
        weights = target[:, 0].numel() / (num_classes * counts)
        return weights / weights.sum()

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = class_probabilities(logits)
        target = one_hot_labels(labels, probs.shape[1]).to(probs)
        alpha = self.class_weights(target)
        modulation = target * (1 - probs) ** self.gamma + (1 - target) * probs**self.gamma
        bce = -target * torch.log(probs + self.eps) - (1 - target) * torch.log(1 - probs + self.eps)
        per_class = (modulation * bce).mean(dim=(0, 2, 3))
        return (alpha * per_class).sum()


class FocalTverskyLoss(FrameLoss):
    """The ovarian fork's recall-focused loss: ``focal_weight·focal + tversky_weight·Tversky`` (0.4 / 0.6).

    Not the "focal Tversky" loss ``(1 − TI)^γ`` of Abraham & Khan (ISBI 2019): this is the *sum* of the
    :class:`ClassBalancedFocalLoss` and a Tversky loss. Tversky, per frame and per class with background:
    ``TI = (TP + s)/(TP + α·FP + β·FN + s)``, s = 1e-6, loss = mean over frames and classes of ``1 − TI`` (MONAI's
    ``TverskyLoss`` on the class probabilities). Set ``alpha=OVARIAN_FOCAL_ALPHA`` for the fork's three-class recipe.

    Args:
        gamma, alpha: the focal loss's γ and per-class α (None: inverse-frequency fallback).
        tversky_alpha, tversky_beta: the Tversky weights of false positives and false negatives.
        focal_weight, tversky_weight: weights of the two terms.
        frames: ``"all"`` or ``"center"``.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        focal_weight: float = 0.4,
        tversky_weight: float = 0.6,
        frames: Frames = "all",
    ) -> None:
        super().__init__(frames)
        self.focal = ClassBalancedFocalLoss(gamma=gamma, alpha=alpha, frames=frames)
        self.tversky = TverskyLoss(
            include_background=True, alpha=tversky_alpha, beta=tversky_beta, smooth_nr=1e-6, smooth_dr=1e-6
        )
        self.focal_weight = float(focal_weight)
        self.tversky_weight = float(tversky_weight)

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = class_probabilities(logits)
        tversky = self.tversky(probs, one_hot_labels(labels, probs.shape[1]).to(probs))
        return self.focal_weight * self.focal.frame_loss(logits, labels) + self.tversky_weight * tversky


class StructureLoss(FrameLoss):
    """PraNet's structure loss (weighted BCE + weighted IoU), per frame, with the weighting applied to both terms.

    Weight map ``w = 1 + gain·|avg_pool(mask, k, stride 1, pad k//2) − mask|`` (k = 31, gain = 5): up to ``1 + gain``
    near boundaries, 1 far from them. Per frame and channel: ``wBCE = Σ w·BCE / Σ w`` (BCE with logits) and
    ``wIoU = 1 − (I + 1)/(U − I + 1)`` with ``I = Σ σ·mask·w``, ``U = Σ (σ + mask)·w``; the loss is their sum,
    averaged over frames and channels. K = 1: the sigmoid output against the binary mask (the upstream setting);
    K > 1: each channel's sigmoid against its one-hot mask, background included (a one-vs-rest reading of the same
    loss, for multiclass heads).

    Args:
        kernel_size: odd averaging window of the weight map.
        boundary_gain: how much more a pixel next to a boundary weighs (0: unweighted BCE + soft IoU).
        frames: ``"all"`` or ``"center"`` (the public Vivim code's choice).
    """

    def __init__(self, kernel_size: int = 31, boundary_gain: float = 5.0, frames: Frames = "all") -> None:
        super().__init__(frames)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.boundary_gain = float(boundary_gain)

    def weight_map(self, mask: torch.Tensor) -> torch.Tensor:
        """``1 + gain·|local mean − mask|`` of a ``(N, C, H, W)`` mask (zero padding counted, as in PraNet)."""
        local_mean = F.avg_pool2d(mask, self.kernel_size, stride=1, padding=self.kernel_size // 2)
        return 1 + self.boundary_gain * (local_mean - mask).abs()

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = labels if logits.shape[1] == 1 else one_hot_labels(labels, logits.shape[1]).to(logits)
        weight = self.weight_map(mask)
        bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
        weighted_bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
        probs = torch.sigmoid(logits)
        inter = (probs * mask * weight).sum(dim=(2, 3))
        union = ((probs + mask) * weight).sum(dim=(2, 3))
        weighted_iou = 1 - (inter + 1) / (union - inter + 1)
        return (weighted_bce + weighted_iou).mean()


class FrameDiceCELoss(FrameLoss):
    """MONAI's ``DiceCELoss`` on every frame: Dice per frame and class, plus cross-entropy (BCE for K = 1).

    K > 1: softmax and one-hot labels; K = 1: sigmoid against the binary label. Dice is computed per frame (time
    folded into the batch), so an empty frame predicted empty scores Dice 1, not 0. Keyword arguments go to
    ``monai.losses.DiceCELoss`` (e.g. ``lambda_dice``, ``lambda_ce``, ``include_background``, ``weight``).
    """

    def __init__(self, frames: Frames = "all", **dice_ce_kwargs: Any) -> None:
        super().__init__(frames)
        self.multiclass = DiceCELoss(softmax=True, to_onehot_y=True, **dice_ce_kwargs)
        self.binary = DiceCELoss(sigmoid=True, **dice_ce_kwargs)

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            return self.binary(logits, labels)
        return self.multiclass(logits, labels)
