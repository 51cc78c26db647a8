"""The per-frame recipe (``configs/flexunet_lite0_frames.json``): every labelled frame once per epoch, in batches."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO_ROOT, bundle_workflow

from vivim_monai.data import load_datalist, make_phantom_data

FRAME_RECIPE = str(REPO_ROOT / "configs" / "flexunet_lite0_frames.json")
pytestmark = pytest.mark.integration  # a bundle workflow

CASES, FRAMES = 4, 7  # 7 frames: a count that 5-frame clips could not tile


def test_frame_recipe_visits_every_frame_once_per_epoch_in_batches_and_trains(tmp_path):
    datalist = make_phantom_data(tmp_path, cases=CASES, frames=FRAMES, folds=2, height=48, width=64)
    training_cases = load_datalist(datalist, fold=0, split="train")
    workflow = bundle_workflow(
        "train",
        ["train.json", FRAME_RECIPE],
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        fold=0,
        epochs=1,
        spatial_size=[32, 32],
        val_interval=1,
    )
    workflow.initialize()
    dataset = workflow.parser.get_parsed_content("train#dataset")
    expected = {(case, frame) for case in range(len(training_cases)) for frame in range(FRAMES)}
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        assert sorted(dataset.index) == sorted(expected), f"epoch {epoch}: every frame of every case exactly once"
    dataset.set_epoch(0)
    loader = workflow.parser.get_parsed_content("train#dataloader")
    shapes = [tuple(batch["image"].shape) for batch in loader]
    assert [s[0] for s in shapes] == [8] * (len(expected) // 8) + ([len(expected) % 8] if len(expected) % 8 else [])
    assert {s[1:] for s in shapes} == {(3, 32, 32, 1)}, "batches of single frames"

    network = workflow.parser.get_parsed_content("network")
    assert type(network).__name__ == "FrameWise"
    before = {k: v.clone() for k, v in network.state_dict().items()}
    trainer = workflow.parser.get_parsed_content("train#trainer")
    workflow.run()
    assert trainer.state.iteration == math.ceil(len(expected) / 8)
    changed = [k for k, v in network.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("network.encoder") for k in changed) and any("decoder" in k for k in changed)
    groups = workflow.parser.get_parsed_content("optimizer").param_groups
    assert sorted(g["initial_lr"] for g in groups) == [0.0003, 0.001], "encoder at 0.3 of the learning rate"
    workflow.finalize()
