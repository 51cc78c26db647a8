"""Sliding clip inference along time: cines of any length through a clip network, one window at a time.

MONAI's :class:`~monai.inferers.SlidingWindowInferer` with ``roi_size=(-1, -1, clip_length)`` does the work: windows
cover the time axis only (every window holds the whole frame), so a Vivim trained on ``clip_length``-frame clips sees
clips of that length at inference too; the last window is shifted back to end on the last frame (no tail frame is
dropped); overlapping window outputs (logits for Vivim) are averaged per frame with ``"constant"`` or ``"gaussian"``
weights. What this class adds: a cine shorter than ``clip_length`` runs as one window of its own length (Vivim accepts
any ``T >= 1``; MONAI would pad it with blank frames), overlap may be given in frames, a network returning
``(seg, edge)`` is reduced to ``seg``, outputs whose frame count differs from the window's are refused, and no
autograd graph is kept by default (graphs of every window would break the memory bound).

Memory: only ``clip_batch_size`` windows are on ``sw_device`` at a time. The output ``(B, K, H, W, T)`` is accumulated
on ``device`` (by default the input's device; pass ``device="cpu"`` for long cines with a GPU ``sw_device``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import BlendMode, look_up_option

__all__ = ["SlidingClipInferer", "clip_windows"]


def clip_windows(num_frames: int, clip_length: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` frame ranges of the windows over ``num_frames`` frames.

    MONAI's sliding-window positions: windows start every ``stride`` frames; if the last regular window does not
    reach the end, one more window ending on the last frame is added (it overlaps its predecessor).
    ``num_frames <= clip_length`` gives one window ``(0, num_frames)``.
    """
    if num_frames < 1 or clip_length < 1 or stride < 1:
        raise ValueError(f"need num_frames, clip_length and stride >= 1, got {num_frames}, {clip_length}, {stride}")
    if num_frames <= clip_length:
        return [(0, num_frames)]
    return [(int(w.start), int(w.stop)) for (w,) in dense_patch_slices((num_frames,), (clip_length,), (stride,))]


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
        self._sliding: SlidingWindowInferer | None = None

    def windows(self, num_frames: int) -> list[tuple[int, int]]:
        """The ``(start, stop)`` windows used for a cine of ``num_frames`` frames."""
        return clip_windows(num_frames, self.clip_length, self.stride)

    def _monai_inferer(self) -> SlidingWindowInferer:
        """MONAI's inferer for these settings (built once; the settings are read at the first call)."""
        if self._sliding is not None:
            return self._sliding
        # MONAI's scan interval is int(roi * (1 - overlap)): give it the overlap fraction that yields self.stride
        # exactly (a quarter frame below the stride's overlap, so rounding down cannot lose a frame).
        overlap = max(0.0, (self.clip_length - self.stride - 0.25) / self.clip_length)
        self._sliding = SlidingWindowInferer(
            roi_size=(-1, -1, self.clip_length),
            sw_batch_size=self.clip_batch_size,
            overlap=(0.0, 0.0, overlap),
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            sw_device=self.sw_device,
            device=self.device,
            progress=self.progress,
        )
        return self._sliding

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Blended network output ``(B, K, H', W', T)`` (at least float32) for ``inputs`` ``(B, C, H, W, T)``."""
        if inputs.ndim != 5:
            raise ValueError(f"expected inputs (B, C, H, W, T), got shape {tuple(inputs.shape)}")

        def run_window(window: torch.Tensor) -> torch.Tensor:
            result = _first_output(network(window, *args, **kwargs))
            if result.ndim < 3 or result.shape[0] != window.shape[0] or result.shape[-1] != window.shape[-1]:
                raise ValueError(
                    f"the network must return (N, K, ..., T) with N={window.shape[0]} and T={window.shape[-1]} for "
                    f"a window batch of shape {tuple(window.shape)}, got {tuple(result.shape)}"
                )
            return result.float() if result.dtype in (torch.float16, torch.bfloat16) else result

        grad = contextlib.nullcontext() if self.with_grad else torch.no_grad()
        with grad:
            if inputs.shape[-1] > self.clip_length:
                return self._monai_inferer()(inputs, run_window)
            sw_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
            out_device = torch.device(self.device) if self.device is not None else inputs.device
            output = run_window(inputs.to(sw_device)).to(out_device)
            if isinstance(inputs, MetaTensor) and not isinstance(output, MetaTensor):
                output = MetaTensor(output, meta=inputs.meta)
            return output
