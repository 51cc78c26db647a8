"""Fan masks: from ultrasound regions, from a mask image, estimated from the cine; invertible mask-and-crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import manifest, shared_dir
from monai.data import MetaTensor
from monai.transforms import Compose, CropForegroundd, Invertd, LoadImaged, MaskIntensityd, Resized
from pydicom import examples
from scipy import ndimage

import vivim_monai.transforms.fan as fan_module
from vivim_monai.data import DicomCineReader, read_dicom_cine
from vivim_monai.transforms import FanMaskd, estimate_fan_mask, fan_mask_from_regions, mask_iou


def synthetic_cine(frames: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 96x128 sector of changing speckle, static text blocks outside, and a thin moving 'ECG' line."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:128]
    radius, angle = np.hypot(yy - 5, xx - 64), np.degrees(np.arctan2(xx - 64, yy - 5))
    fan = (radius > 8) & (radius < 85) & (np.abs(angle) < 40)
    cine = np.zeros((1, 96, 128, frames), dtype=np.float32)
    for t in range(frames):
        cine[0, ..., t] = np.where(fan, rng.uniform(20, 200, (96, 128)), 0)
        cine[0, 2:8, 2:30, t] = 255  # burned-in text, identical in every frame
        cine[0, 94, 10 + 10 * t : 14 + 10 * t, t] = 255  # one-pixel ECG sweep
    return cine, fan


def test_estimated_fan_covers_the_sector_and_drops_text():
    cine, fan = synthetic_cine()
    estimate = estimate_fan_mask(cine)
    assert mask_iou(estimate, fan) > 0.9
    assert not estimate[2:8, 2:30].any() and not estimate[94].any()
    two_frames = estimate_fan_mask(cine[..., :2])  # intensity fallback
    assert mask_iou(two_frames, fan) > 0.8


def _scipy_largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """The earlier hand-written steps: scipy's 4-connected labelling, the largest label, binary_fill_holes."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)


@pytest.mark.parametrize("seed", range(6))
def test_monai_component_and_hole_filling_equal_the_scipy_steps(seed):
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((60, 80)) < 0.55 + 0.05 * seed)  # many blobs with holes
    mask[20:40, 25:55] = True  # one clear largest component ...
    mask[28:32, 38:42] = False  # ... with a hole
    expected = _scipy_largest_component_filled(mask)
    largest = np.asarray(fan_module._KEEP_LARGEST(mask[None].astype(np.uint8))[0], dtype=bool)
    assert expected.sum() > largest.sum() > 200, "the fixture has holes to fill"
    np.testing.assert_array_equal(fan_module._fill_holes(largest), expected)


def test_fan_sources_and_method_metadata():
    cine, fan = synthetic_cine()
    regions = [{"spatial_format": 1, "x0": 10, "y0": 5, "x1": 100, "y1": 80}]
    image = MetaTensor(torch.from_numpy(cine), meta={"ultrasound_regions": regions, "filename_or_obj": "clip.dcm"})
    out = FanMaskd("image")({"image": image})
    assert out["fan"].shape == (1, 96, 128, 8) and out["fan"].meta["fan_method"] == "regions"
    assert out["fan"][0, :, :, 0].sum() == 91 * 76
    supplied = FanMaskd("image", image_key="fan_png")({"image": image, "fan_png": fan.astype(np.uint8)[None] * 255})
    assert supplied["fan"].meta["fan_method"] == "image" and torch.equal(
        supplied["fan"][0, ..., 3].bool(), torch.from_numpy(fan)
    )
    estimated = FanMaskd("image", method="estimated")({"image": image})
    assert estimated["fan"].meta["fan_method"] == "estimated" and image.meta["fan_method"] == "estimated"
    assert fan_mask_from_regions([{"spatial_format": 1, "x0": 0, "y0": 0, "x1": 500, "y1": 50}], 96, 128) is None
    with pytest.raises(ValueError, match=r"clip.dcm \(fan_png\): fan mask of shape \(10, 10\)"):
        FanMaskd("image", image_key="fan_png")({"image": image, "fan_png": np.ones((10, 10))})
    with pytest.raises(ValueError, match="method must be one of"):
        FanMaskd("image", method="hough")


def test_mask_crop_resize_inverts_to_the_original_geometry():
    path = str(examples.get_path("ybr_color"))
    preprocessing = Compose(
        [
            LoadImaged("image", reader=DicomCineReader(), image_only=True),
            FanMaskd("image", method="estimated"),
            MaskIntensityd("image", mask_key="fan"),
            CropForegroundd(["image", "fan"], source_key="fan"),
            Resized(["image", "fan"], spatial_size=(64, 64, -1), mode=("bilinear", "nearest")),
        ]
    )
    data = preprocessing({"image": path})
    assert data["image"].shape == (3, 64, 64, 30)
    data["pred"] = MetaTensor(torch.ones(2, 64, 64, 30), meta=dict(data["image"].meta))
    data["pred"].applied_operations = list(data["image"].applied_operations)
    restored = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert restored.shape == (2, 240, 320, 30), "prediction back in the original frame geometry"
    original_fan = estimate_fan_mask(read_dicom_cine(path))
    rows, cols = np.where(original_fan)
    assert restored[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].min() == 1
    assert restored[0, : rows.min()].sum() == 0 and restored[0, rows.max() + 1 :].sum() == 0


@pytest.mark.slow
def test_estimated_fans_of_the_real_cines():
    """Against the DICOM tissue region where one fits the frame: inside it, and spanning most of its extent."""
    folder = shared_dir("dicom-cine")
    for entry in manifest("dicom-cine"):
        cine = read_dicom_cine(folder / entry["file"])
        _, height, width, _ = cine.shape
        estimate = estimate_fan_mask(cine)
        assert 0.05 < estimate.mean() < 0.95, entry["file"]
        region = fan_mask_from_regions(cine.meta["ultrasound_regions"], height, width)
        if region is None:
            continue
        inside = (estimate & region).sum() / estimate.sum()
        assert inside > 0.97, f"{entry['file']}: {1 - inside:.1%} of the estimated fan lies outside the tissue region"
        if entry["file"] == "orthanc_Issue164.dcm":
            continue  # probe in air: the sector is almost empty, so only containment can be checked
        rows, cols = np.where(estimate)
        region_rows, region_cols = np.where(region)
        assert np.ptp(rows) > 0.85 * np.ptp(region_rows) and np.ptp(cols) > 0.65 * np.ptp(region_cols), entry["file"]
        assert mask_iou(estimate, region) > 0.45, entry["file"]
