"""Sliding clip inference along time: cines of any length through a clip network, one window at a time.

Windows cover the time axis only (every window holds the whole frame), so a Vivim trained on ``clip_length``-frame
clips sees clips of that length at inference too. The last window is shifted back to end on the last frame, so
every frame is predicted (no tail frames are dropped); a cine shorter than ``clip_length`` is run as one window of
its own length (Vivim accepts any ``T >= 1``).

Blending: the network outputs (logits for Vivim) of overlapping windows are averaged per frame with temporal
weights (``"constant"``, or ``"gaussian"`` from MONAI's :func:`compute_importance_map`, lower at the window ends).
Averaging happens in the space the network returns; wrap the network (e.g. with a softmax) to blend probabilities.

Memory: only ``clip_batch_size`` windows are on ``sw_device`` at a time, and the per-frame weight sums are a vector
of length ``T``. The output ``(B, K, H, W, T)`` itself is accumulated on ``device`` (by default the input's device;
pass ``device="cpu"`` for long cines with a GPU ``sw_device``): it grows with ``T``, which is unavoidable for a
per-frame result, while peak ``sw_device`` memory does not.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer
from monai.utils import BlendMode, convert_to_dst_type, look_up_option, optional_import

tqdm, _has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["SlidingClipInferer", "clip_windows"]


def clip_windows(num_frames: int, clip_length: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` frame ranges of the windows over ``num_frames`` frames.

    Windows start every ``stride`` frames; if the last regular window does not reach the end, one more window ending
    on the last frame is added (it overlaps its predecessor). ``num_frames <= clip_length`` gives one window
    ``(0, num_frames)``.
    """
    if num_frames < 1 or clip_length < 1 or stride < 1:
        raise ValueError(f"need num_frames, clip_length and stride >= 1, got {num_frames}, {clip_length}, {stride}")
    if num_frames <= clip_length:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - clip_length + 1, stride))
    if starts[-1] + clip_length < num_frames:
        starts.append(num_frames - clip_length)
    return [(start, start + clip_length) for start in starts]


def _first_output(output: Any) -> torch.Tensor:
    """The segmentation output of a network that may return ``(seg, edge, ...)``."""
    if isinstance(output, Sequence) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    if isinstance(output, torch.Tensor):
        return output.as_tensor() if isinstance(output, MetaTensor) else output
    raise TypeError(f"the network must return a tensor or a sequence whose first item is one, got {type(output)}")


class SlidingClipInferer(Inferer):
    """Run a clip network over ``(B, C, H, W, T)`` inputs in temporal windows and blend the window outputs.

    Args:
        clip_length: frames per window (the training clip length).
        overlap: overlap of consecutive windows, as a fraction of ``clip_length`` in ``[0, 1)`` (a ``float``; the
            stride is ``int(clip_length * (1 - overlap))``, at least 1, as in MONAI's sliding window) or as a number
            of frames (an ``int`` smaller than ``clip_length``).
        mode: temporal blending weights, ``"constant"`` or ``"gaussian"``.
        sigma_scale: Gaussian sigma as a fraction of the window length (``mode="gaussian"`` only).
        clip_batch_size: windows sent to the network in one call (stacked along the batch axis).
        sw_device: device the network runs on (default: the input's device); windows are moved there one batch at a
            time.
        device: device of the output accumulation buffer (default: the input's device).
        with_grad: keep autograd graphs. Off by default: graphs of every window would keep their activations alive
            and break the memory bound.
        progress: show a tqdm progress bar over windows (if tqdm is installed).

    Usable from bundle configs, e.g. ``{"_target_": "vivim_monai.inferers.SlidingClipInferer", "clip_length": 5,
    "overlap": 0.5}``, and as the ``inferer`` of MONAI/ignite evaluators; extra ``*args, **kwargs`` go to the
    network. A network returning a tuple (Vivim with ``return_edge=True``) is reduced to its first item.
    """

    def __init__(
        self,
        clip_length: int = 5,
        overlap: float | int = 0.0,
        mode: BlendMode | str = BlendMode.CONSTANT,
        sigma_scale: float = 0.125,
        clip_batch_size: int = 1,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        with_grad: bool = False,
        progress: bool = False,
    ) -> None:
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        if clip_batch_size < 1:
            raise ValueError(f"clip_batch_size must be >= 1, got {clip_batch_size}")
        if isinstance(overlap, bool):
            raise TypeError("overlap must be a fraction (float) or a number of frames (int), not a bool")
        if isinstance(overlap, int):
            if not 0 <= overlap < clip_length:
                raise ValueError(f"overlap in frames must be in [0, clip_length={clip_length}), got {overlap}")
            self.stride = clip_length - overlap
        else:
            if not 0.0 <= overlap < 1.0:
                raise ValueError(f"overlap as a fraction must be in [0, 1), got {overlap}")
            self.stride = max(1, int(clip_length * (1.0 - overlap)))
        self.clip_length = clip_length
        self.overlap = overlap
        self.mode = look_up_option(mode, BlendMode)
        if self.mode not in (BlendMode.CONSTANT, BlendMode.GAUSSIAN):
            raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
        self.sigma_scale = sigma_scale
        self.clip_batch_size = clip_batch_size
        self.sw_device = sw_device
        self.device = device
        self.with_grad = with_grad
        self.progress = progress

    def windows(self, num_frames: int) -> list[tuple[int, int]]:
        """The ``(start, stop)`` windows used for a cine of ``num_frames`` frames."""
        return clip_windows(num_frames, self.clip_length, self.stride)

    def _weights(self, length: int, device: torch.device) -> torch.Tensor:
        return compute_importance_map((length,), mode=self.mode, sigma_scale=self.sigma_scale, device=device)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Blended network output ``(B, K, H', W', T)`` (at least float32) for ``inputs`` ``(B, C, H, W, T)``."""
        if inputs.ndim != 5:
            raise ValueError(f"expected inputs (B, C, H, W, T), got shape {tuple(inputs.shape)}")
        data = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        num_frames = data.shape[-1]
        sw_device = torch.device(self.sw_device) if self.sw_device is not None else data.device
        out_device = torch.device(self.device) if self.device is not None else data.device
        windows = self.windows(num_frames)
        groups = [windows[i : i + self.clip_batch_size] for i in range(0, len(windows), self.clip_batch_size)]
        if self.progress and _has_tqdm:
            groups = tqdm(groups, desc="clips")
        output: torch.Tensor | None = None
        weight_sum = torch.zeros(num_frames, dtype=torch.float32, device=out_device)
        grad = contextlib.nullcontext() if self.with_grad else torch.no_grad()
        with grad:
            for group in groups:
                batch = torch.cat([data[..., start:stop] for start, stop in group], dim=0).to(sw_device)
                result = _first_output(network(batch, *args, **kwargs))
                length = group[0][1] - group[0][0]
                if result.ndim < 3 or result.shape[0] != batch.shape[0] or result.shape[-1] != length:
                    raise ValueError(
                        f"the network must return (N, K, ..., T) with N={batch.shape[0]} and T={length} for a "
                        f"window batch of shape {tuple(batch.shape)}, got {tuple(result.shape)}"
                    )
                weights = self._weights(length, result.device).to(result.dtype)
                for (start, stop), window in zip(group, result.split(data.shape[0], dim=0)):
                    if output is None:
                        dtype = torch.promote_types(window.dtype, torch.float32)  # no float16 accumulation
                        output = torch.zeros((*window.shape[:-1], num_frames), dtype=dtype, device=out_device)
                    output[..., start:stop] += (window * weights).to(out_device)
                    weight_sum[start:stop] += weights.to(device=out_device, dtype=torch.float32)
        assert output is not None
        output /= weight_sum.to(output.dtype)
        if isinstance(inputs, MetaTensor):  # keep the input's metadata, as MONAI's sliding window does
            output = convert_to_dst_type(output, inputs, device=out_device, dtype=output.dtype)[0]
        return output
