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


def test_channels_last_is_a_layout_not_a_different_network():
    """The NHWC default computes what the contiguous-layout network computes, and state dicts move between them."""
    torch.manual_seed(1)
    plain = PerFrameUNet(in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), channels_last=False)
    nhwc = PerFrameUNet(in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    nhwc.load_state_dict(plain.state_dict())
    convolutions = [p for p in nhwc.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert all(p.is_contiguous() for p in plain.parameters())
    x = torch.randn(2, 1, 32, 48, 3)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-6)
    back = PerFrameUNet(in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), channels_last=False)
    back.load_state_dict(nhwc.state_dict())
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, plain.state_dict()[key], rtol=0, atol=0)
