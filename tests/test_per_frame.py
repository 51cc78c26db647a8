"""Per-frame baseline: a 2-D MONAI network applied to every frame of a clip."""

from __future__ import annotations

import pytest
import torch

from vivim_monai.networks import FrameWise, PerFrameUNet


def test_shapes_and_frame_independence():
    torch.manual_seed(0)
    net = PerFrameUNet(in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2)).eval()
    x = torch.randn(2, 1, 32, 48, 4)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3, 32, 48, 4)
        single = net.network(x[..., 2])
    torch.testing.assert_close(y[..., 2], single, msg="frame 2 of the clip equals the 2-D network on that frame")


def test_default_size_is_comparable_to_vivim_b0():
    count = sum(p.numel() for p in PerFrameUNet().parameters())
    assert 5e6 < count < 8e6


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="len\\(strides\\)"):
        PerFrameUNet(channels=(8, 16, 32), strides=(2,))
    with pytest.raises(ValueError, match="expects a clip"):
        FrameWise(torch.nn.Identity())(torch.zeros(1, 1, 8, 8))
