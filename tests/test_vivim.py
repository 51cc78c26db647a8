"""Vivim network: shapes, training signal, determinism, size, arguments, temporal behaviour, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from vivim_monai.networks import VIVIM_VARIANTS, Vivim
from vivim_monai.networks.blocks import TriDirectionalMamba, st_mamba
from vivim_monai.ops import available_backends


def clip(batch=1, channels=3, height=64, width=96, frames=3, seed=0):
    return torch.randn(batch, channels, height, width, frames, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames", [1, 3, 5, 8])
@pytest.mark.parametrize("in_channels, out_channels", [(1, 1), (3, 3)])
def test_output_shape_any_clip_length_rectangular(frames, in_channels, out_channels):
    torch.manual_seed(0)
    net = Vivim("tiny", in_channels=in_channels, out_channels=out_channels).eval()
    x = clip(2, in_channels, 64, 96, frames)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, out_channels, 64, 96, frames)
    assert torch.isfinite(y).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = Vivim("tiny", in_channels=1, out_channels=3, edge_head=True, feature_dropout=0.1, head_dropout2d=0.1)
    net.train()
    seg, edge = net(clip(2, 1, 64, 64, 3), return_edge=True)
    assert seg.shape == (2, 3, 64, 64, 3) and edge.shape == (2, 1, 64, 64, 3)
    target = torch.randint(0, 3, (2, 64, 64, 3))
    loss = F.cross_entropy(seg, target) + F.binary_cross_entropy_with_logits(edge, torch.rand_like(edge))
    loss.backward()
    silent = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"parameters without gradient: {silent}"


def test_deterministic_under_fixed_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = Vivim("tiny", in_channels=3, out_channels=2).eval()
        with torch.no_grad():
            outputs.append(net(clip(frames=4)))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.integration
def test_b3_parameter_count_matches_reference():
    """Reference: 59,620,439 with 1 output channel, of which 117,398 (ADE classifier, stage LNs) are never used."""
    count = sum(p.numel() for p in Vivim("b3", in_channels=3, out_channels=1).parameters())
    assert count == 59_620_439 - 115_350 - 2_048
    assert math.isclose(count, 59.62e6, rel_tol=0.005)
    three = sum(p.numel() for p in Vivim("b3", out_channels=3).parameters())
    assert three - count == 2 * 769  # two more 768->1 classifier rows (weights + bias)


def test_mamba_layer_parameter_formula():
    """One ST-Mamba layer has 14 d^2 + 12 d ceil(d/16) + 451 d parameters (reference section 9)."""
    for dim in (32, 64, 160):
        layer = st_mamba.STMambaLayer(dim)
        assert sum(p.numel() for p in layer.parameters()) == 14 * dim**2 + 12 * dim * math.ceil(dim / 16) + 451 * dim


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "b9"}, "unknown Vivim variant"),
        ({"in_channels": 0}, "in_channels and out_channels"),
        ({"depths": (1, 1, 1)}, "one value per stage"),
        ({"embed_dims": (16, 32, 64, 130)}, "divisible by num_heads"),
        ({"drop_path_rate": 1.5}, "drop_path_rate must be in"),
        ({"decoder_dropout": -0.1}, "decoder_dropout must be in"),
        ({"dt_init": "zero"}, "dt_init must be one of"),
    ],
)
def test_bad_construction_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Vivim(**{"variant": "tiny", **kwargs})


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 64, 64), r"clip \(B, C, H, W, T\), got a 4-D"),
        ((1, 1, 64, 64, 2), "in_channels=3"),
        ((1, 3, 60, 64, 2), "multiples of 32"),
    ],
)
def test_bad_inputs(shape, message):
    net = Vivim("tiny")
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(shape))
    with pytest.raises(ValueError, match="edge_head=True"):
        net(torch.zeros(1, 3, 32, 32, 1), return_edge=True)


def test_time_is_mixed_only_by_st_mamba():
    """A change in the last frame reaches the first frame's prediction only through the ST-Mamba layers."""
    x = clip(frames=4)
    x_changed = x.clone()
    x_changed[..., -1] += 1.0
    torch.manual_seed(0)
    temporal = Vivim("tiny").eval()
    torch.manual_seed(0)
    spatial_only = Vivim("tiny", mamba_depths=(0, 0, 0, 0)).eval()
    with torch.no_grad():
        assert not torch.allclose(temporal(x)[..., 0], temporal(x_changed)[..., 0])
        torch.testing.assert_close(spatial_only(x)[..., 0], spatial_only(x_changed)[..., 0])


def _plain_mamba_direction(mixer: TriDirectionalMamba, x: torch.Tensor, z: torch.Tensor, name: str) -> torch.Tensor:
    """One Mamba direction over ``(B, d_inner, L)`` in its visiting order, written out from the published equations
    (Gu & Dao 2023, Alg. 2) with the mixer's parameters, token by token: no package code involved."""
    direction = mixer.directions[name]
    conv, x_proj, dt_proj = direction.conv1d, direction.x_proj, direction.dt_proj
    a = -torch.exp(direction.A_log)  # (D, N)
    d_skip = direction.D
    length = x.shape[-1]
    u = torch.nn.functional.silu(
        torch.nn.functional.conv1d(x, conv.weight, conv.bias, padding=conv.weight.shape[-1] - 1, groups=x.shape[1])[
            ..., :length
        ]
    )
    rank, n = mixer.dt_rank, mixer.d_state
    y = torch.empty_like(u)
    for b in range(u.shape[0]):
        h = torch.zeros(u.shape[1], n)
        for t in range(length):
            proj = x_proj.weight @ u[b, :, t]  # (rank + 2N)
            delta = torch.nn.functional.softplus(dt_proj.weight @ proj[:rank] + dt_proj.bias)  # (D)
            b_t, c_t = proj[rank : rank + n], proj[rank + n :]
            h = torch.exp(delta[:, None] * a) * h + (delta * u[b, :, t])[:, None] * b_t[None, :]
            y[b, :, t] = (h @ c_t + d_skip * u[b, :, t]) * torch.nn.functional.silu(z[b, :, t])
    return y


def _naive_tri_direction(mixer: TriDirectionalMamba, x, frames, height, width):
    """The three scans as explicit token permutations of a plain Mamba, averaged and projected."""
    x_in, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    length, pixels = frames * height * width, height * width
    temporal_order = (torch.arange(frames)[None, :] * pixels + torch.arange(pixels)[:, None]).flatten()
    outputs = []
    orders = {"raster": torch.arange(length), "reverse": torch.arange(length).flip(0), "temporal": temporal_order}
    for name, order in orders.items():
        y = torch.empty(x.shape[0], mixer.d_inner, length)
        y[..., order] = _plain_mamba_direction(mixer, x_in[..., order], z[..., order], name)
        outputs.append(y)
    return mixer.out_proj((sum(outputs) / 3).transpose(1, 2))


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("frames, height, width", [(1, 2, 3), (3, 2, 2), (4, 3, 5)])
def test_tri_directional_scan_orders(frames, height, width, backend):
    torch.manual_seed(0)
    mixer = TriDirectionalMamba(8, d_state=4, scan_backend=backend)
    x = torch.randn(2, frames * height * width, 8)
    with torch.no_grad():
        fast = mixer(x, frames, height, width)
        naive = _naive_tri_direction(mixer, x, frames, height, width)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-4)


def test_dt_initialisation():
    torch.manual_seed(0)
    mixer = TriDirectionalMamba(64)
    assert sorted(mixer.directions) == ["raster", "reverse", "temporal"]
    for direction in mixer.directions.values():
        dt = F.softplus(direction.dt_proj.bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001, "Mamba's log-uniform dt in [1e-3, 0.1]"
        torch.testing.assert_close(direction.A_log.exp()[0], torch.arange(1.0, 17.0))
    public = TriDirectionalMamba(64, dt_init="vivim")
    assert all(d.dt_proj.bias.abs().max() == 0 for d in public.directions.values()), "the public code's zero dt bias"


def test_state_dict_runs_on_every_backend(tmp_path):
    torch.manual_seed(0)
    trained = Vivim("tiny", in_channels=1, out_channels=2, scan_backend="torch").eval()
    path = tmp_path / "model.pt"
    torch.save({"model": trained.state_dict()}, path)
    x = clip(channels=1, frames=3)
    with torch.no_grad():
        expected = trained(x)
        for backend in available_backends("cpu"):
            loaded = Vivim("tiny", in_channels=1, out_channels=2, scan_backend=backend, weights=str(path)).eval()
            torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)


def _public_vivim_key(key: str) -> str:
    """Our key -> the public Vivim code's (reference §8), written out here independently of the loader's rules."""
    parts = key.split(".")
    if parts[0] == "temporal":  # temporal.i.j.rest -> encoder.stages.i.j.0.rest (nested Sequential)
        return "model.encoder.stages." + ".".join(parts[1:3]) + ".0." + ".".join(parts[3:])
    if parts[0] == "encoder":
        return "model.encoder.downsample_layers." + ".".join(parts[1:])
    if parts[0] == "edge_head":
        return "model.edgeocr_cls_head." + ".".join(parts[1:])
    return "model." + key


def test_upstream_and_segformer_checkpoints_load(tmp_path):
    torch.manual_seed(0)
    source = Vivim("tiny", out_channels=1, edge_head=True)
    state = source.state_dict()
    # the public Vivim code: Lightning "model." prefix, ".0." in the Mamba stages, unused ADE classifier and norms
    upstream = {_public_vivim_key(k): v for k, v in state.items()}
    assert "model.encoder.stages.0.0.0.mamba.in_proj.weight" in upstream
    assert "model.encoder.downsample_layers.patch_embeddings.0.proj.weight" in upstream
    assert "model.edgeocr_cls_head.weight" in upstream
    upstream["model.decoder.classifier.weight"] = torch.zeros(150, 64, 1, 1)
    upstream["model.encoder.downsample_layers.layer_norm.0.weight"] = torch.ones(16)
    torch.save({"state_dict": upstream}, tmp_path / "upstream.ckpt")
    loaded = Vivim("tiny", out_channels=1, edge_head=True, weights=str(tmp_path / "upstream.ckpt"))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key

    # a Hugging Face SegFormer checkpoint initialises only the encoder and decoder
    segformer = {
        (
            "segformer.encoder." + k[len("encoder.") :]
            if k.startswith("encoder.")
            else "decode_head." + k[len("decoder.") :]
        ): v
        for k, v in state.items()
        if k.startswith(("encoder.", "decoder."))
    }
    torch.save(segformer, tmp_path / "segformer.bin")
    torch.manual_seed(1)
    fresh = Vivim("tiny", out_channels=1)
    fresh.load_weights(tmp_path / "segformer.bin")
    assert torch.equal(fresh.encoder.block[0][0].mlp.dense1.weight, source.encoder.block[0][0].mlp.dense1.weight)
    assert not torch.equal(fresh.out.weight, source.out.weight)


def test_incompatible_checkpoints_fail_clearly(tmp_path):
    torch.save({"model": Vivim("tiny", out_channels=3).state_dict()}, tmp_path / "three.pt")
    with pytest.raises(ValueError, match=r"three\.pt.*output classes 3 in the checkpoint vs 1 here"):
        Vivim("tiny", out_channels=1, weights=str(tmp_path / "three.pt"))
    widths = r"stage widths \[16, 32, 64, 128\] in the checkpoint vs \[32, 64, 160, 256\] here"
    with pytest.raises(ValueError, match=r"three\.pt.*" + widths):
        Vivim("b0", out_channels=3, weights=str(tmp_path / "three.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: cannot read checkpoint"):
        Vivim("tiny", weights=str(tmp_path / "junk.pt"))


def test_bundle_config_instantiation():
    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "vivim_monai.networks.Vivim",
                "variant": "tiny",
                "in_channels": 1,
                "out_channels": 3,
                "mamba_drop_path_rate": 0.2,
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, Vivim) and net.out_channels == 3
    assert set(VIVIM_VARIANTS) >= {"tiny", "b0", "b1", "b2", "b3"}


def _public_names(key: str) -> str:
    """This package's parameter name -> the public Vivim code's (written out here, independently of the package)."""
    for name, suffix in (("raster", ""), ("reverse", "_b"), ("temporal", "_s")):
        key = key.replace(f"mamba.directions.{name}.A_log", f"mamba.A{suffix}_log")
        key = key.replace(f"mamba.directions.{name}.D", f"mamba.D{suffix}")
        for part in ("conv1d", "x_proj", "dt_proj"):
            key = key.replace(f"mamba.directions.{name}.{part}.", f"mamba.{part}{suffix}.")
    return key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")


@pytest.mark.parametrize("variant", ["tiny", "lite0"])
def test_checkpoints_with_the_public_parameter_names_load_into_the_clean_ones(variant, tmp_path):
    torch.manual_seed(0)
    net = Vivim(variant, in_channels=3, out_channels=2, pretrained=False).eval()
    legacy = {_public_names(k): v for k, v in net.state_dict().items()}
    assert any("conv1d_b" in k for k in legacy) and any("dwconv.dwconv" in k for k in legacy)
    assert not any("directions" in k for k in legacy)
    torch.manual_seed(1)
    plain, via_file = (Vivim(variant, in_channels=3, out_channels=2, pretrained=False).eval() for _ in range(2))
    plain.load_state_dict(legacy, strict=True)  # torch's own loader
    torch.save({"model": legacy}, tmp_path / "legacy.pt")
    via_file.load_weights(tmp_path / "legacy.pt")
    x = clip(height=64, width=64, frames=3)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(via_file(x), expected, rtol=0, atol=0)
