"""``FlipEnsembleInferer``: test-time mirroring, the mean of a network's logits over flipped copies of the input.

nnU-Net (Isensee et al., Nature Methods 2021) predicts every case on all mirrored copies of the input and averages
them; for a network trained with the same flips (``bagls.json`` flips both ways) it costs one forward per copy and no
training. This wrapper runs any inner inferer (``SlidingClipInferer`` in the bundle) on the input and on each flipped
copy, flips every output back and averages the logits, so the bundle's post-processing (softmax, inversion to the
original geometry, class indices) is unchanged.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Callable, Sequence

import torch
from monai.inferers import Inferer

__all__ = ["FlipEnsembleInferer", "flip_combinations"]


def flip_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``spatial_axes`` (the identity ``()`` first): the flips of a full mirroring ensemble.

    ``spatial_axes`` count from the first spatial axis of a channel-first batch (0 = H, 1 = W of ``(B, C, H, W, T)``).
    """
    axes = tuple(int(axis) for axis in spatial_axes)
    if len(set(axes)) != len(axes) or any(axis < 0 for axis in axes):
        raise ValueError(f"spatial_axes must be distinct non-negative axes, got {list(spatial_axes)}")
    return [subset for size in range(len(axes) + 1) for subset in combinations(axes, size)]


class FlipEnsembleInferer(Inferer):
    """Average ``inferer``'s logits over the input and its flips along ``spatial_axes`` (all combinations).

    Args:
        inferer: the inferer that runs the network on each copy (e.g. ``SlidingClipInferer``).
        spatial_axes: spatial axes to mirror, 0 = H and 1 = W of ``(B, C, H, W, T)`` clips. ``[0, 1]`` gives four
            copies (identity, H, W, both); ``[1]`` two; ``[]`` only the identity (the inner inferer alone).

    The time axis is never flipped: a temporal network's past and future are not symmetric. The inner inferer must
    return one tensor of the input's spatial size, as segmentation logits are (``SlidingClipInferer`` reduces a
    ``(seg, edge)`` output to ``seg``).
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1)) -> None:
        super().__init__()
        self.inferer = inferer
        self.flips = flip_combinations(spatial_axes)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        spatial_dims = inputs.ndim - 2
        if any(axis >= spatial_dims - 1 for flip in self.flips for axis in flip):
            raise ValueError(
                f"flip axes {self.flips[-1]} must be spatial axes before the time axis of a {inputs.ndim}-d input"
            )
        if len(self.flips) == 1:  # the identity alone: the inner inferer's output as it is
            return self.inferer(inputs, network, *args, **kwargs)
        total: torch.Tensor | None = None
        for flip in self.flips:
            dims = [axis + 2 for axis in flip]
            copy = torch.flip(inputs, dims) if dims else inputs
            output = self.inferer(copy, network, *args, **kwargs)
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"the inner inferer must return a tensor, got {type(output)}")
            output = torch.flip(output, dims) if dims else output
            total = output.clone() if total is None else total.add_(output)
        assert total is not None  # flip_combinations always holds the identity
        return total / len(self.flips)
