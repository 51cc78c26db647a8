"""Clip losses: values against plain NumPy/SciPy formulas, gradients, frame choice, input checks, boundary edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from vivim_monai.losses import (
    OVARIAN_FOCAL_ALPHA,
    BoundaryLoss,
    ClassBalancedFocalLoss,
    FocalTverskyLoss,
    FrameDiceCELoss,
    InverseFormLoss,
    InverseNet,
    SegmentationWithBoundaryLoss,
    StructureLoss,
    one_hot_labels,
    sobel_edges,
)

B, H, W, T = 2, 12, 12, 3


def clip(k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (B, k, H, W, T) and labels (B, 1, H, W, T) with every class present."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, k, H, W, T, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, max(k, 2), (B, 1, H, W, T), generator=gen).to(torch.float64)
    return logits, labels


def blob_labels(k: int) -> torch.Tensor:
    """Smooth labels (B, 1, H, W, T): rectangles of classes 1..k-1 that move with t (binary for k = 1)."""
    labels = torch.zeros(B, 1, H, W, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            labels[b, 0, 2 + b : 8 + b, 3 + t : 9, t] = 1
            if k > 2:
                labels[b, 0, 4:7, 6 + t // 2 : 11, t] = 2
    return labels


def frames_np(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W, T) -> NumPy (B·T, C, H, W) in the same frame order as the losses."""
    return x.detach().permute(0, 4, 1, 2, 3).reshape(-1, *x.shape[1:4]).numpy()


def probs_np(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] == 1:
        p = 1 / (1 + np.exp(-logits))
        return np.concatenate([1 - p, p], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def onehot_np(labels: np.ndarray, c: int) -> np.ndarray:
    return np.stack([(labels[:, 0] == i).astype(np.float64) for i in range(c)], axis=1)


def focal_np(logits, labels, gamma=2.0, alpha=None):
    p = probs_np(frames_np(logits))
    y = frames_np(labels)
    c = p.shape[1]
    t = onehot_np(y, c)
    if alpha is None:
        counts = np.array([(y == i).sum() + 1e-6 for i in range(c)])
        w = y.size / (c * counts)
        alpha = w / w.sum()
    total = 0.0
    for i in range(c):
        pc, tc = p[:, i], t[:, i]
        mod = tc * (1 - pc) ** gamma + (1 - tc) * pc**gamma
        bce = -tc * np.log(pc + 1e-6) - (1 - tc) * np.log(1 - pc + 1e-6)
        total += np.mean(alpha[i] * mod * bce)
    return total


def tversky_np(logits, labels, a=0.3, b=0.7):
    p = probs_np(frames_np(logits))
    t = onehot_np(frames_np(labels), p.shape[1])
    losses = []
    for i in range(p.shape[1]):
        scores = []
        for n in range(p.shape[0]):
            pc, tc = p[n, i], t[n, i]
            tp, fp, fn = (pc * tc).sum(), (pc * (1 - tc)).sum(), ((1 - pc) * tc).sum()
            scores.append((tp + 1e-6) / (tp + a * fp + b * fn + 1e-6))
        losses.append(1 - np.mean(scores))
    return np.mean(losses)


def structure_np(logits, labels, gain=5.0):
    x = frames_np(logits)
    y = frames_np(labels)
    masks = y if x.shape[1] == 1 else onehot_np(y, x.shape[1])
    values = []
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            m, z = masks[n, c], x[n, c]
            w = 1 + gain * np.abs(ndimage.uniform_filter(m, 31, mode="constant", cval=0.0) - m)
            p = 1 / (1 + np.exp(-z))
            bce = -(m * np.log(p) + (1 - m) * np.log(1 - p))
            inter, union = (p * m * w).sum(), ((p + m) * w).sum()
            values.append((w * bce).sum() / w.sum() + 1 - (inter + 1) / (union - inter + 1))
    return np.mean(values)


def dice_ce_np(logits, labels):
    x = frames_np(logits)
    y = frames_np(labels)
    if x.shape[1] == 1:
        p = 1 / (1 + np.exp(-x))
        t = y
        ce = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    else:
        p = probs_np(x)
        t = onehot_np(y, x.shape[1])
        ce = np.mean(-np.log((p * t).sum(axis=1)))
    inter, total = (p * t).sum(axis=(2, 3)), (p + t).sum(axis=(2, 3))
    dice = 1 - (2 * inter + 1e-5) / (total + 1e-5)
    return dice.mean() + ce


def edges_np(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood (border replicated) holds another class."""
    size = (1, 1, 3, 3) + (1,) * (labels.ndim - 4)  # per frame, also for (B, 1, H, W, T)
    return ndimage.maximum_filter(labels, size, mode="nearest") != ndimage.minimum_filter(labels, size, mode="nearest")


def perfect_logits(labels: torch.Tensor, k: int, scale: float = 30.0) -> torch.Tensor:
    if k == 1:
        return scale * (2 * labels - 1)
    onehot = torch.cat([(labels == c).to(labels.dtype) for c in range(k)], dim=1)
    return scale * (2 * onehot - 1)


@pytest.mark.parametrize("k, alpha", [(3, OVARIAN_FOCAL_ALPHA), (3, None), (1, (0.3, 0.7)), (1, None)])
def test_focal_matches_formula(k, alpha):
    logits, labels = clip(k)
    value = ClassBalancedFocalLoss(alpha=alpha)(logits, labels)
    assert value.item() == pytest.approx(focal_np(logits, labels, alpha=alpha), rel=1e-9)


def test_focal_inverse_frequency_fallback():
    logits, labels = clip(3)
    labels[labels == 2] = 0  # class 2 absent: it gets almost all the weight, the rest follows inverse frequency
    loss = ClassBalancedFocalLoss(alpha=None)
    weights = loss.class_weights(one_hot_labels(loss.prepare(logits, labels)[1], 3))
    counts = np.array([(labels == c).sum().item() + 1e-6 for c in range(3)])
    np.testing.assert_allclose(weights.numpy(), (1 / counts) / (1 / counts).sum(), rtol=1e-6)
    assert weights.sum().item() == pytest.approx(1.0) and weights[2] > 0.99
    assert loss(logits, labels).item() == pytest.approx(focal_np(logits, labels, alpha=None), rel=1e-9)
    with pytest.raises(ValueError, match="alpha has 3 values, the input has 2 classes"):
        ClassBalancedFocalLoss(alpha=OVARIAN_FOCAL_ALPHA)(*clip(1))


@pytest.mark.parametrize("k", [3, 1])
def test_focal_tversky_matches_formula(k):
    logits, labels = clip(k)
    assert FocalTverskyLoss(focal_weight=0, tversky_weight=1)(logits, labels).item() == pytest.approx(
        tversky_np(logits, labels), rel=1e-9
    )
    alpha = (0.2, 0.3) if k == 1 else (0.2, 0.3, 0.5)
    expected = 0.4 * focal_np(logits, labels, alpha=alpha) + 0.6 * tversky_np(logits, labels)
    assert FocalTverskyLoss(alpha=alpha)(logits, labels).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("k", [1, 3])
def test_structure_matches_formula(k):
    logits, labels = clip(k)[0], blob_labels(k)
    assert StructureLoss()(logits, labels).item() == pytest.approx(structure_np(logits, labels), rel=1e-9)


def test_structure_weighting_is_applied():
    labels = torch.zeros(1, 1, 32, 32, 1, dtype=torch.float64)
    labels[..., 6:26, 6:26, :] = 1
    perfect = perfect_logits(labels, 1, scale=8.0)
    at_border, inside = perfect.clone(), perfect.clone()
    at_border[0, 0, 6, 16, 0] = -8.0  # one wrong pixel on the object border
    inside[0, 0, 16, 16, 0] = -8.0  # one wrong pixel in the middle of the object
    loss = StructureLoss()
    assert loss(at_border, labels) > loss(inside, labels) > loss(perfect, labels)
    plain = StructureLoss(boundary_gain=0.0)  # unweighted: a wrong pixel costs the same anywhere
    assert plain(at_border, labels).item() == pytest.approx(plain(inside, labels).item(), rel=1e-9)
    logits = clip(1)[0]
    assert loss(logits, blob_labels(1)).item() != pytest.approx(plain(logits, blob_labels(1)).item(), rel=1e-3)


@pytest.mark.parametrize("k", [3, 1])
def test_dice_ce_matches_formula(k):
    logits, labels = clip(k)
    assert FrameDiceCELoss()(logits, labels).item() == pytest.approx(dice_ce_np(logits, labels), rel=1e-6)


def test_sobel_edges_lie_on_class_borders():
    labels = blob_labels(3)
    folded = torch.from_numpy(frames_np(labels))
    edges = sobel_edges(folded).numpy().astype(bool)
    np.testing.assert_array_equal(edges, edges_np(folded.numpy()))  # rectangles: exactly the border bands
    assert edges.any() and not edges.all()
    # borders between two foreground classes count: a 1|2 split with no background has edges only at the split
    split = torch.ones(1, 1, 8, 8)
    split[..., 4:] = 2
    cols = sobel_edges(split)[0, 0].any(dim=0)
    assert cols.tolist() == [False, False, False, True, True, False, False, False]
    # a constant label (even a foreground class touching the image border) has no edges
    assert not sobel_edges(torch.full((1, 1, 6, 6), 2.0)).any()
    # random labels: every edge pixel has another class in its 3×3 neighbourhood
    _, noisy = clip(3)
    folded = torch.from_numpy(frames_np(noisy))
    assert not (sobel_edges(folded).numpy().astype(bool) & ~edges_np(folded.numpy())).any()


@pytest.mark.parametrize("pos_weight", ["auto", 4.0, None])
def test_boundary_loss_matches_formula(pos_weight):
    labels = blob_labels(3)
    edge_logits, _ = clip(1)
    edges = edges_np(frames_np(labels)).astype(np.float64)
    x = frames_np(edge_logits)
    if pos_weight == "auto":
        weight = (edges.size - edges.sum()) / edges.sum()
    else:
        weight = 1.0 if pos_weight is None else pos_weight
    p = 1 / (1 + np.exp(-x))
    expected = np.mean(-(weight * edges * np.log(p) + (1 - edges) * np.log(1 - p)))
    assert BoundaryLoss(pos_weight=pos_weight)(edge_logits, labels).item() == pytest.approx(expected, rel=1e-9)


def all_losses(k: int) -> dict[str, torch.nn.Module]:
    """One instance of each segmentation loss for k classes (alpha sized to k)."""
    alpha = (0.3, 0.7) if k == 1 else OVARIAN_FOCAL_ALPHA
    return {
        "focal_tversky": FocalTverskyLoss(alpha=alpha),
        "focal_inverse_frequency": ClassBalancedFocalLoss(),
        "structure": StructureLoss(),
        "dice_ce": FrameDiceCELoss(),
    }


@pytest.mark.parametrize("k", [1, 3])
def test_gradients_finite_and_perfect_prediction_near_minimum(k):
    labels = blob_labels(k)
    for name, loss in all_losses(k).items():
        logits = clip(k)[0].requires_grad_(True)
        value = loss(logits, labels)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        best = loss(perfect_logits(labels, k), labels).item()
        assert abs(best) < 1e-4 < value.item(), name
    edge_logits = clip(1)[0].requires_grad_(True)
    value = BoundaryLoss()(edge_logits, labels)
    (grad,) = torch.autograd.grad(value, edge_logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    edges = torch.from_numpy(edges_np(labels.numpy()))
    assert BoundaryLoss()(30.0 * (2 * edges.double() - 1), labels).item() < 1e-4 < value.item()


def test_center_frame_only():
    k = 3
    logits, labels = clip(k)
    labels = blob_labels(k)
    changed_logits, changed_labels = logits.clone(), labels.clone()
    others = [t for t in range(T) if t != T // 2]
    changed_logits[..., others] = torch.randn_like(changed_logits[..., others])
    changed_labels[..., others] = 1 - changed_labels[..., others].clamp(max=1)
    losses = {**all_losses(k), "boundary": BoundaryLoss()}
    for name, loss in losses.items():
        inputs = logits[:, :1] if name == "boundary" else logits
        changed = changed_logits[:, :1] if name == "boundary" else changed_logits
        loss.frames = "center"
        reference = loss(inputs, labels)
        assert loss(changed, changed_labels).item() == pytest.approx(reference.item(), rel=1e-12), name
        loss.frames = "all"
        centre = slice(T // 2, T // 2 + 1)
        assert loss(inputs[..., centre], labels[..., centre]).item() == pytest.approx(reference.item()), name
        assert loss(changed, changed_labels).item() != pytest.approx(loss(inputs, labels).item()), name
    with pytest.raises(ValueError, match="frames must be one of"):
        StructureLoss(frames="middle")


@pytest.mark.parametrize(
    "logits_shape, labels, match",
    [
        ((B, 3, H, W, T), torch.full((B, 1, H, W, T), 3.0), r"values 3\.\.3, but the input allows classes 0\.\.2"),
        ((B, 1, H, W, T), torch.full((B, 1, H, W, T), 2.0), r"classes 0\.\.1 \(K = 1 means binary"),
        ((B, 3, H, W, T), torch.zeros(B, 1, H, W + 1, T), "differ in batch, H, W or T"),
        ((B, 3, H, W, T), torch.zeros(B, 1, H, W, T + 1), "differ in batch, H, W or T"),
        ((B, 3, H, W), torch.zeros(B, 1, H, W), r"expected logits \(B, K, H, W, T\)"),
        ((B, 3, H, W, T), torch.zeros(B, 3, H, W, T), r"expected class-index labels \(B, 1, H, W, T\)"),
        ((B, 3, H, W, T), torch.full((B, 1, H, W, T), 0.5), "must be class indices"),
        ((B, 3, H, W, T), torch.full((B, 1, H, W, T), -1), r"values -1\.\.-1"),
    ],
)
def test_input_errors_are_clear(logits_shape, labels, match):
    for loss in all_losses(logits_shape[1]).values():
        with pytest.raises(ValueError, match=match):
            loss(torch.zeros(logits_shape), labels)


def test_boundary_input_errors():
    with pytest.raises(ValueError, match="with 1 channel, got 2 channels"):
        BoundaryLoss()(torch.zeros(B, 2, H, W, T), torch.zeros(B, 1, H, W, T))
    # boundary labels may hold any class index: the edge map does not depend on the segmentation head's K
    assert torch.isfinite(BoundaryLoss()(torch.zeros(B, 1, H, W, T), blob_labels(3)))
    with pytest.raises(ValueError, match="pos_weight must be"):
        BoundaryLoss(pos_weight="balanced")


def test_segmentation_with_boundary():
    logits, _ = clip(3)
    edge_logits, _ = clip(1, seed=1)
    labels = blob_labels(3)
    seg, boundary = StructureLoss(frames="center"), BoundaryLoss(frames="center")
    expected = seg(logits, labels) + 0.3 * boundary(edge_logits, labels)
    combined = SegmentationWithBoundaryLoss(StructureLoss(frames="center"))
    assert combined.boundary_loss.frames == "center"
    assert combined((logits, edge_logits), labels).item() == pytest.approx(expected.item())
    assert combined({"seg": logits, "edge": edge_logits}, labels).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="return_edge=True"):
        combined(logits, labels)


def test_vivim_edge_head_trains_with_boundary_loss():
    from vivim_monai.networks import Vivim

    torch.manual_seed(0)
    net = Vivim("tiny", in_channels=1, out_channels=3, edge_head=True, scan_backend="torch")
    seg_logits, edge_logits = net(torch.randn(1, 1, 32, 32, 2), return_edge=True)
    labels = torch.zeros(1, 1, 32, 32, 2)
    labels[:, :, 8:20, 10:24] = 1
    labels[:, :, 12:16, 14:20] = 2
    SegmentationWithBoundaryLoss(FocalTverskyLoss(alpha=OVARIAN_FOCAL_ALPHA))(
        (seg_logits, edge_logits), labels
    ).backward()
    assert net.edge_head.weight.grad.abs().sum() > 0


def stand_in_checkpoint(path, patch_size: int = 8, prefix: str = "module.") -> None:
    """A randomly initialised InverseNet, saved the way training scripts wrap state dicts."""
    torch.manual_seed(0)
    state = {prefix + k: v for k, v in InverseNet(patch_size).state_dict().items()}
    torch.save({"state_dict": state}, path)


def test_inverseform_term_has_gradient(tmp_path):
    stand_in_checkpoint(tmp_path / "inverse.pth")
    loss = InverseFormLoss(tmp_path / "inverse.pth", patch_size=8, grid=(2, 2))
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.net.training
    labels = blob_labels(3)
    edge_logits = clip(1)[0].float().requires_grad_(True)
    value = loss(edge_logits, labels)
    (grad,) = torch.autograd.grad(value, edge_logits)
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # the public term (log_softmax of 1 channel) has none
    # a (2·8, 2·8) map needs no resize and is cut into its four 8×8 quarters, row by row
    image = torch.arange(256.0).reshape(1, 1, 16, 16)
    quarters = [image[..., :8, :8], image[..., :8, 8:], image[..., 8:, :8], image[..., 8:, 8:]]
    torch.testing.assert_close(loss.patches(image), torch.cat(quarters))


def test_inverseform_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        InverseFormLoss(tmp_path / "absent.pth")
    stand_in_checkpoint(tmp_path / "small.pth", patch_size=8, prefix="")
    with pytest.raises(ValueError, match=r"small\.pth does not fit InverseNet\(patch_size=16\).*wrong shape"):
        InverseFormLoss(tmp_path / "small.pth", patch_size=16)
