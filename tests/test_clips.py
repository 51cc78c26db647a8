"""Clip sampling per case and epoch, and clip-consistent augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import bundle_augmentation
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandSpatialCropd,
    RandZoomd,
    SpatialPadd,
)
from monai.utils import set_determinism

from vivim_monai.data import ClipDataset, ClipSampler, select_frames


def cases(lengths=(23, 9, 3)):
    return [
        {
            "case_id": f"case{i}",
            "image": MetaTensor(torch.arange(n, dtype=torch.float32).view(1, 1, 1, n).expand(1, 4, 4, n).clone()),
            "label": torch.full((1, 4, 4, n), i, dtype=torch.int64),
        }
        for i, n in enumerate(lengths)
    ]


def test_train_windows_equispaced_and_capped():
    sampler = ClipSampler(clip_length=5, max_numerosity=3, mode="equispaced")
    assert sampler.candidate_starts(23) == [0, 5, 10, 15]
    assert sampler.train_starts(23) == [0, 10, 15] == sampler.train_starts(23, epoch=7)
    assert ClipSampler(5, stride=2).candidate_starts(9) == [0, 2, 4]
    assert sampler.train_starts(3) == [0], "a short case still gives one (padded) clip"


def test_random_clips_are_redrawn_every_epoch_and_reproducible():
    sampler = ClipSampler(clip_length=2, stride=1, max_numerosity=3, mode="random", seed=5)
    epochs = [tuple(sampler.train_starts(40, epoch=e, case_index=0)) for e in range(6)]
    assert len(set(epochs)) > 1, "a new draw each epoch"
    assert epochs == [tuple(sampler.train_starts(40, epoch=e, case_index=0)) for e in range(6)], "seeded"
    dataset = ClipDataset(cases([40]), sampler)
    first = [dataset[i]["clip_start"] for i in range(len(dataset))]
    dataset.set_epoch(1)
    second = [dataset[i]["clip_start"] for i in range(len(dataset))]
    assert len(first) == len(second) == 3 and first != second


def test_eval_clips_cover_every_frame_of_one_case_each():
    dataset = ClipDataset(cases(), ClipSampler(clip_length=5), training=False)
    covered: dict[str, set[int]] = {}
    for i in range(len(dataset)):
        clip = dataset[i]
        frames = clip["image"][0, 0, 0].long().tolist()
        assert frames == sorted(frames) and clip["image"].shape[-1] == 5
        assert clip["label"].unique().numel() == 1, "a clip never mixes cases"
        covered.setdefault(clip["case_id"], set()).update(frames)
    assert covered == {"case0": set(range(23)), "case1": set(range(9)), "case2": set(range(3))}
    padded = select_frames(cases()[2]["image"], 0, 5)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 2, 2] and padded.meta["clip_padded_frames"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_length": 0}, "clip_length"),
        ({"clip_length": 3, "mode": "x"}, "mode"),
        ({"clip_length": 3, "stride": 0}, "stride"),
    ],
)
def test_bad_sampler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipSampler(**kwargs)


def test_misaligned_case_is_rejected():
    bad = cases([6])
    bad[0]["label"] = bad[0]["label"][..., :4]
    with pytest.raises(ValueError, match="not aligned in time"):
        ClipDataset(bad, ClipSampler(3))


def test_augmentation_is_drawn_once_per_clip():
    """Identical frames stay identical (image and label): every frame got exactly the same transform."""
    set_determinism(0)
    frame = torch.rand(3, 48, 64, 1)
    label = (torch.rand(1, 48, 64, 1) * 3).floor()
    always = {f"{name}#prob": 1.0 for name in ("rotate", "zoom", "blur", "intensity", "gamma")}
    augment = Compose(
        [*bundle_augmentation(**always).transforms, SpatialPadd(["image", "label"], (32, 32, -1))]
        + [RandSpatialCropd(["image", "label"], roi_size=(32, 32, -1), random_size=False)]
    )
    changed = 0
    for _ in range(5):
        out = augment({"image": MetaTensor(frame.repeat(1, 1, 1, 6)), "label": MetaTensor(label.repeat(1, 1, 1, 6))})
        image, seg = out["image"], out["label"]
        assert image.shape == (3, 32, 32, 6) and seg.shape == (1, 32, 32, 6)
        for t in range(1, 6):
            torch.testing.assert_close(image[..., t], image[..., 0], atol=0, rtol=0)
            assert torch.equal(seg[..., t], seg[..., 0])
        assert set(seg.unique().tolist()) <= {0.0, 1.0, 2.0}, "labels stay class indices"
        changed += int(not torch.allclose(image[..., 0], frame[:, :32, :32, 0]))
    set_determinism(None)
    assert changed > 0


def test_bundle_augmentation_is_the_fork_medium_recipe():
    """train.json's Rand*d list draws exactly what the recipe (formerly a Python factory) drew, draw for draw."""
    keys = ["image", "label"]
    recipe = Compose(
        [
            RandAffined(
                keys,
                prob=0.3,
                rotate_range=(0, 0, math.radians(15)),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandZoomd(keys, 0.3, (0.9, 0.9, 1.0), (1.1, 1.1, 1.0), mode=("bilinear", "nearest-exact"), keep_size=True),
            RandGaussianSmoothd("image", (0.5, 1.5), (0.5, 1.5), (0.0, 0.0), prob=0.2),
            RandScaleIntensityd("image", factors=0.3, prob=0.5),
            RandAdjustContrastd("image", prob=0.2, gamma=(0.7, 1.5)),
        ]
    )
    augment = bundle_augmentation(vertical_flip_prob=0.5)
    recipe.set_random_state(3)
    augment.set_random_state(3)
    changed = 0
    for _ in range(30):
        image, label = torch.rand(3, 40, 48, 5), torch.randint(0, 3, (1, 40, 48, 5)).float()
        expected = recipe({"image": MetaTensor(image.clone()), "label": MetaTensor(label.clone())})
        got = augment({"image": MetaTensor(image.clone()), "label": MetaTensor(label.clone())})
        for key in keys:
            assert torch.equal(got[key].as_tensor(), expected[key].as_tensor())
        changed += int(not torch.equal(got["image"].as_tensor(), image))
    assert changed > 20, "the draws do change the clips"
