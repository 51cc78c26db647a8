"""Sliding clip inference along time: window placement, equality with clip-by-clip inference, blending, memory
bound, short cines, tuple outputs, metadata and config/evaluator use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map

from vivim_monai.inferers import FlipEnsembleInferer, SlidingClipInferer, clip_windows, flip_combinations
from vivim_monai.networks import Vivim


class TemporalConv(nn.Module):
    """A clip network whose output depends on the clip boundaries (zero-padded temporal kernel) and that records
    the longest clip and largest batch it was given."""

    def __init__(self, in_channels: int = 1, out_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=(3, 3, 3), padding=1)
        self.max_frames = 0
        self.max_batch = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.max_frames = max(self.max_frames, x.shape[-1])
        self.max_batch = max(self.max_batch, x.shape[0])
        self.calls += 1
        return self.conv(x)


def cine(frames: int, batch: int = 1, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, frames, generator=torch.Generator().manual_seed(seed))


def network(seed: int = 0, **kwargs) -> TemporalConv:
    torch.manual_seed(seed)
    return TemporalConv(**kwargs).eval()


@pytest.mark.parametrize("frames, length, stride", [(300, 5, 5), (12, 5, 5), (10, 5, 2), (7, 4, 1), (5, 5, 3)])
def test_windows_cover_every_frame_and_end_on_the_last(frames, length, stride):
    windows = clip_windows(frames, length, stride)
    assert windows[0][0] == 0 and windows[-1][1] == frames
    assert all(stop - start == length for start, stop in windows)
    covered = set().union(*(range(start, stop) for start, stop in windows))
    assert covered == set(range(frames))
    starts = [start for start, _ in windows]
    assert starts == sorted(set(starts))


def test_windows_are_the_regular_starts_plus_one_ending_on_the_last_frame():
    """The positions of the earlier hand-written windowing, now MONAI's, for every small case."""
    for frames in range(1, 40):
        for length in range(1, 9):
            for stride in range(1, length + 1):
                if frames <= length:
                    expected = [(0, frames)]
                else:
                    starts = list(range(0, frames - length + 1, stride))
                    starts += [frames - length] if starts[-1] + length < frames else []
                    expected = [(start, start + length) for start in starts]
                assert clip_windows(frames, length, stride) == expected, (frames, length, stride)
                if frames > length:  # and the inferer's overlap gives MONAI exactly this stride
                    overlap = length - stride
                    inferer = SlidingClipInferer(clip_length=length, overlap=overlap)
                    interval = int(length * (1 - inferer._monai_inferer().overlap[-1]))
                    assert interval == stride, (length, stride)


def test_gaussian_blending_weights_each_window_by_its_temporal_gaussian():
    net = network()
    x = cine(17)
    inferer = SlidingClipInferer(clip_length=6, overlap=3, mode="gaussian", sigma_scale=0.25)
    weight = compute_importance_map((6,), mode="gaussian", sigma_scale=0.25).double()
    total, norm = torch.zeros(1, 3, 16, 16, 17, dtype=torch.float64), torch.zeros(17, dtype=torch.float64)
    with torch.no_grad():
        for start, stop in inferer.windows(17):
            total[..., start:stop] += net(x[..., start:stop]).double() * weight
            norm[start:stop] += weight
    torch.testing.assert_close(inferer(x, net).double(), total / norm, rtol=1e-5, atol=1e-5)


def test_short_cine_is_one_window_of_its_own_length():
    assert clip_windows(3, 5, 5) == [(0, 3)]
    net = network()
    x = cine(3)
    with torch.no_grad():
        expected = net(x)
    result = SlidingClipInferer(clip_length=5, overlap=0.5)(x, net)
    assert net.max_frames == 3
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_overlap_as_fraction_or_frames():
    assert SlidingClipInferer(clip_length=5, overlap=0.0).stride == 5
    assert SlidingClipInferer(clip_length=5, overlap=0.5).stride == 2  # int(2.5), as MONAI's sliding window
    assert SlidingClipInferer(clip_length=5, overlap=2).stride == 3
    assert SlidingClipInferer(clip_length=8, overlap=0.75).stride == 2
    for bad in (1.0, -0.1, 5, -1):
        with pytest.raises(ValueError):
            SlidingClipInferer(clip_length=5, overlap=bad)
    with pytest.raises(TypeError):
        SlidingClipInferer(clip_length=5, overlap=True)
    with pytest.raises(ValueError):
        SlidingClipInferer(clip_length=5, mode="triangular")


@pytest.mark.parametrize("clip_batch_size", [1, 7])
def test_non_overlapping_sliding_equals_clip_by_clip_on_300_frames(clip_batch_size):
    net = network()
    x = cine(300, batch=2)
    with torch.no_grad():
        expected = torch.cat([net(x[..., start : start + 5]) for start in range(0, 300, 5)], dim=-1)
    net.max_frames = 0
    result = SlidingClipInferer(clip_length=5, overlap=0.0, clip_batch_size=clip_batch_size)(x, net)
    assert result.shape == (2, 3, 16, 16, 300)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
    assert net.max_frames == 5


def test_tail_window_is_shifted_back_and_blended_with_its_predecessor():
    net = network()
    x = cine(12)
    with torch.no_grad():
        first, second, last = net(x[..., 0:5]), net(x[..., 5:10]), net(x[..., 7:12])
    result = SlidingClipInferer(clip_length=5, overlap=0)(x, net)
    torch.testing.assert_close(result[..., 0:5], first, rtol=0, atol=1e-6)
    torch.testing.assert_close(result[..., 5:7], second[..., 0:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(result[..., 7:10], (second[..., 2:5] + last[..., 0:3]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(result[..., 10:12], last[..., 3:5], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_overlapping_windows_blend_between_window_predictions(mode):
    net = network()
    x = cine(23)
    inferer = SlidingClipInferer(clip_length=6, overlap=0.5, mode=mode)
    windows = inferer.windows(23)
    assert len(windows) > 3
    with torch.no_grad():
        predictions = {window: net(x[..., window[0] : window[1]]) for window in windows}
    result = inferer(x, net)
    for frame in range(23):
        values = torch.stack([p[..., frame - s] for (s, e), p in predictions.items() if s <= frame < e])
        assert len(values) >= 1
        assert torch.all(result[..., frame] >= values.min(0).values - 1e-5)
        assert torch.all(result[..., frame] <= values.max(0).values + 1e-5)
        if mode == "constant":
            torch.testing.assert_close(result[..., frame], values.mean(0), rtol=0, atol=1e-5)


def test_network_never_sees_more_than_one_clip_and_output_stays_on_the_output_device():
    net = network()
    x = cine(300, size=8)
    result = SlidingClipInferer(clip_length=8, overlap=0.5, clip_batch_size=2, device="cpu")(x, net)
    assert net.max_frames == 8 and net.max_batch == 2
    assert net.calls == len(clip_windows(300, 8, 4)) // 2 + len(clip_windows(300, 8, 4)) % 2
    assert result.device.type == "cpu" and result.shape[-1] == 300 and not result.requires_grad


def test_vivim_with_edge_head_tuple_output_and_metadata():
    torch.manual_seed(0)
    net = Vivim("tiny", in_channels=1, out_channels=3, edge_head=True).eval()
    x = MetaTensor(cine(9, size=32), meta={"filename_or_obj": "case.dcm"})
    inferer = SlidingClipInferer(clip_length=4, overlap=0, clip_batch_size=3)
    result = inferer(x, net, return_edge=True)
    assert isinstance(result, MetaTensor) and result.meta["filename_or_obj"] == "case.dcm"
    assert result.shape == (1, 3, 32, 32, 9)
    windows = inferer.windows(9)
    assert windows == [(0, 4), (4, 8), (5, 9)]
    with torch.no_grad():  # the same single network call on the same windows
        seg, _ = net(torch.cat([x.as_tensor()[..., s:e] for s, e in windows]), return_edge=True)
    torch.testing.assert_close(result.as_tensor()[..., 0:4], seg[0:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(result.as_tensor()[..., 8:9], seg[2:3, ..., 3:4], rtol=0, atol=1e-6)


def test_bad_inputs_are_reported():
    inferer = SlidingClipInferer(clip_length=4)
    with pytest.raises(ValueError, match="B, C, H, W, T"):
        inferer(torch.zeros(1, 8, 8, 8), network())
    with pytest.raises(ValueError, match="must return"):
        inferer(cine(8), lambda clip: clip[..., :1])


def test_bundle_config_and_evaluator():
    parser = ConfigParser(
        {"inferer": {"_target_": "vivim_monai.inferers.SlidingClipInferer", "clip_length": 5, "overlap": 0.5}}
    )
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, SlidingClipInferer) and inferer.stride == 2

    from monai.engines import SupervisedEvaluator

    net = network()
    data = [{"image": cine(11)[0], "label": torch.zeros(1, 16, 16, 11)}]
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=loader, network=net, inferer=inferer)
    evaluator.run()
    assert evaluator.state.output[0]["pred"].shape == (3, 16, 16, 11)
    assert net.max_frames == 5


def test_flip_combinations_are_every_subset_identity_first():
    assert flip_combinations([0, 1]) == [(), (0,), (1,), (0, 1)]
    assert flip_combinations([1]) == [(), (1,)] and flip_combinations([]) == [()]
    for bad in ([0, 0], [-1]):
        with pytest.raises(ValueError, match="distinct non-negative"):
            flip_combinations(bad)


@pytest.mark.parametrize("axes", [[0, 1], [1], []])
def test_flip_ensemble_is_the_mean_of_the_flipped_back_predictions(axes):
    """The oracle flips with numpy, runs the network on each copy and flips back; an asymmetric network makes every
    copy differ, so a missing or wrong flip shows."""
    net, clip = network(seed=3), cine(7, batch=2, seed=4)
    inner = SlidingClipInferer(clip_length=3, overlap=1)
    with torch.no_grad():
        copies = []
        for flip in flip_combinations(axes):
            dims = tuple(axis + 2 for axis in flip)
            flipped = torch.from_numpy(np.flip(clip.numpy(), dims).copy())
            copies.append(np.flip(inner(flipped, net).numpy(), dims))
    expected = np.mean(copies, axis=0)
    got = FlipEnsembleInferer(inner, spatial_axes=axes)(clip, net)
    assert got.shape == (2, 3, 16, 16, 7)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    if axes:
        assert not np.allclose(copies[0], copies[-1], atol=1e-3), "the test network must not be flip-symmetric"
    else:
        np.testing.assert_array_equal(got.numpy(), copies[0])


def test_flip_ensemble_never_flips_time_and_runs_from_a_bundle_config():
    net = network(seed=5)
    with pytest.raises(ValueError, match="before the time axis"):
        FlipEnsembleInferer(SlidingClipInferer(clip_length=3), spatial_axes=[2])(cine(4), net)
    clip = MetaTensor(cine(6), meta={"filename_or_obj": "clip.dcm"})
    parser = ConfigParser(
        {
            "inferer": {
                "_target_": "vivim_monai.inferers.FlipEnsembleInferer",
                "inferer": {"_target_": "vivim_monai.inferers.SlidingClipInferer", "clip_length": 3},
                "spatial_axes": [0, 1],
            }
        }
    )
    out = parser.get_parsed_content("inferer")(clip, net)
    assert out.shape == (1, 3, 16, 16, 6) and net.max_frames == 3
