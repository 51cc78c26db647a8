"""FlexibleUNet with ST-Mamba on its skip features: per-frame when the layers are absent, mixing time when present."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from vivim_monai.networks import FrameWise, TemporalFlexibleUNet, parameter_groups
from vivim_monai.networks.weights import packaged_weights_path, read_checkpoint


def _clip(frames: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(1, 3, size, size, frames, generator=torch.Generator().manual_seed(1))


def test_without_mamba_layers_it_is_the_per_frame_flexibleunet():
    torch.manual_seed(0)
    per_frame = FrameWise(FlexibleUNet(3, 2, "efficientnet-lite0")).eval()
    temporal = TemporalFlexibleUNet(3, 2, mamba_depths=(0, 0, 0, 0)).eval()
    temporal.load_state_dict(per_frame.state_dict(), strict=True)  # same keys, nothing more
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(temporal(x), per_frame(x), rtol=0, atol=0)


def test_per_frame_weights_load_leaving_only_the_temporal_layers_new():
    per_frame = FrameWise(FlexibleUNet(3, 2, "efficientnet-lite0"))
    result = TemporalFlexibleUNet(3, 2).load_state_dict(per_frame.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(
        k.startswith(("temporal.1.", "temporal.2.", "temporal.3.")) for k in result.missing_keys
    )


@pytest.mark.parametrize("depths, mixes", [((0, 1, 1, 1), True), ((0, 0, 0, 0), False)])
def test_a_frame_reaches_the_other_frames_only_through_st_mamba(depths, mixes):
    torch.manual_seed(0)
    net = TemporalFlexibleUNet(3, 2, mamba_depths=depths).eval()
    with torch.no_grad():  # initialised near zero, the residual branches move the random decoder's output by ~1e-7
        for name, parameter in net.temporal.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                parameter.normal_()
    x = _clip()
    changed = x.clone()
    changed[..., 3] = torch.randn_like(changed[..., 3])
    with torch.no_grad():
        difference = (net(x) - net(changed))[..., :3].abs().max().item()
    assert (difference > 1e-6) if mixes else (difference == 0.0), f"largest change on frames 0-2: {difference}"


@pytest.mark.parametrize("frames", [1, 3, 7])
def test_any_clip_length(frames):
    net = TemporalFlexibleUNet(1, 3).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 96, frames)).shape == (2, 3, 64, 96, frames)


def test_gradients_reach_the_temporal_layers_and_the_encoder_learns_at_its_own_rate():
    net = TemporalFlexibleUNet(3, 2)
    net(_clip(frames=3)).mean().backward()
    for name, module in (
        ("temporal", net.temporal),
        ("encoder", net.network.encoder),
        ("decoder", net.network.decoder),
    ):
        assert all(p.grad is not None for p in module.parameters()), f"{name} has parameters without gradients"
    groups = parameter_groups(net, encoder_learning_rate=1e-4)
    encoder_group = [g for g in groups if g.get("lr") == 1e-4]
    assert len(encoder_group) == 1
    assert {id(p) for p in encoder_group[0]["params"]} == {id(p) for p in net.network.encoder.parameters()}


def test_pretrained_encoder_holds_the_packaged_imagenet_weights():
    state = read_checkpoint(packaged_weights_path("efficientnet-lite0"))
    net = TemporalFlexibleUNet(3, 2, pretrained=True)
    assert torch.equal(net.network.encoder._conv_stem.weight, state["_conv_stem.weight"])


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="four counts"):
        TemporalFlexibleUNet(mamba_depths=(1, 1, 1))
    with pytest.raises(ValueError, match="mamba_drop_path_rate"):
        TemporalFlexibleUNet(mamba_drop_path_rate=1.0)
    net = TemporalFlexibleUNet(3, 2)
    with pytest.raises(ValueError, match="expects a clip"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.zeros(1, 1, 64, 64, 2))
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 48, 64, 2))
