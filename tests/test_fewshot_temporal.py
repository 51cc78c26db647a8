"""The few-shot temporal stage: a TemporalFlexibleUNet that starts as the adapted per-frame network, then learns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.networks.nets import FlexibleUNet

from tests.test_fewshot import TINY, T, disk_cine
from vivim_monai.fewshot import UNLABELLED, FewShotAdapter, TemporalFewShotAdapter
from vivim_monai.fewshot.evaluation import score_frames
from vivim_monai.fewshot.segment import segment_with_prompts
from vivim_monai.fewshot.temporal import clip_windows
from vivim_monai.networks import FrameWise, TemporalFlexibleUNet

TEMPORAL = replace(TINY, temporal_steps=12, clip_frames=4)


def _partial(truth: np.ndarray, frames: list[int]) -> np.ndarray:
    label = np.full_like(truth, UNLABELLED)
    label[..., frames] = truth[..., frames]
    return label


@pytest.mark.parametrize(
    "count, clip, starts",
    [(12, 5, [0, 2, 4, 6, 7]), (10, 4, [0, 2, 4, 6]), (5, 5, [0]), (3, 5, [0]), (7, 2, [0, 1, 2, 3, 4, 5])],
)
def test_clip_windows_cover_every_frame_with_half_overlap(count, clip, starts):
    windows = clip_windows(count, clip)
    assert [w.start for w in windows] == starts
    assert all(len(w) == min(clip, count) for w in windows)
    assert set().union(*windows) == set(range(count))


def test_load_per_frame_computes_exactly_the_per_frame_network_and_rejects_other_states():
    torch.manual_seed(0)
    per_frame = FrameWise(FlexibleUNet(3, 2, "efficientnet-lite0")).eval()
    temporal = TemporalFlexibleUNet(3, 2)
    temporal.load_per_frame(per_frame.state_dict())
    temporal.eval()
    clip = torch.randn(1, 3, 64, 64, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(temporal(clip), per_frame(clip), rtol=0, atol=1e-6)
    clip.requires_grad_(False)
    loss = temporal.train()(clip).square().mean()
    loss.backward()
    out_projections = [p for n, p in temporal.temporal.named_parameters() if n.endswith("out_proj.weight")]
    assert out_projections and all(p.grad is not None and p.grad.abs().sum() > 0 for p in out_projections)
    with pytest.raises(ValueError, match="not a per-frame FlexibleUNet state"):
        TemporalFlexibleUNet(3, 2).load_per_frame({**per_frame.state_dict(), "extra.weight": torch.zeros(1)})


def test_temporal_stage_starts_equal_then_learns_from_one_labelled_frame():
    cine, truth = disk_cine()
    label = _partial(truth, [4])
    adapter = TemporalFewShotAdapter(2, config=TEMPORAL)
    FewShotAdapter.fit(adapter, cine, label, [4])  # the per-frame stage alone
    per_frame = FewShotAdapter.predict(adapter, cine)
    adapter.temporal.load_per_frame(adapter.network.state_dict())
    np.testing.assert_allclose(adapter.predict(cine), per_frame, atol=1e-5)

    result = TemporalFewShotAdapter(2, config=TEMPORAL).adapt(cine, label, [4])
    assert len(result.losses) == TINY.steps + TEMPORAL.temporal_steps
    others = [t for t in range(T) if t != 4]
    assert score_frames(result.labels, truth, others)["dice"] > 0.85


def test_workflow_runs_the_temporal_stage_when_asked_and_its_weights_load_into_the_bundle_network(tmp_path):
    cine, truth = disk_cine()
    result = segment_with_prompts(cine, label=_partial(truth, [2, 7]), config=TEMPORAL, method="adapt")
    assert isinstance(result.adapter, TemporalFewShotAdapter)
    assert score_frames(result.labels, truth, [t for t in range(T) if t not in (2, 7)])["dice"] > 0.85
    saved = torch.load(result.adapter.save(tmp_path / "adapted.pt"), map_location="cpu", weights_only=True)
    network = TemporalFlexibleUNet(3, 2, mamba_depths=(0, 1, 1, 1))  # configs/flexunet_lite0_st_mamba.json
    network.load_state_dict(saved["model"], strict=True)
    assert saved["recipe"]["temporal_steps"] == TEMPORAL.temporal_steps
    plain = segment_with_prompts(cine, label=_partial(truth, [2, 7]), config=replace(TINY, steps=2), method="adapt")
    assert type(plain.adapter) is FewShotAdapter


def test_temporal_stage_is_reproducible_and_rejects_a_recipe_without_steps():
    cine, truth = disk_cine()
    recipe = replace(TEMPORAL, steps=3, temporal_steps=3)
    runs = [TemporalFewShotAdapter(2, config=recipe) for _ in range(2)]
    for run in runs:
        run.fit(cine, _partial(truth, [5]), [5])
    np.testing.assert_array_equal(*(run.predict(cine) for run in runs))
    with pytest.raises(ValueError, match="temporal_steps >= 1 and clip_frames >= 2"):
        TemporalFewShotAdapter(2, config=TINY)
