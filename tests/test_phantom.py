"""The synthetic ultrasound phantom: real Ultrasound Multi-frame DICOM plus labels, deterministic by seed."""

from __future__ import annotations

import numpy as np
import pydicom

from vivim_monai.data import load_cine, make_phantom, write_phantom_case
from vivim_monai.transforms import estimate_fan_mask, fan_mask_from_regions, mask_iou


def test_phantom_case_round_trip(tmp_path):
    entry = write_phantom_case(tmp_path, "case7", seed=7, num_frames=12, height=96, width=128)
    ds = pydicom.dcmread(entry["image"])
    assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage and ds.NumberOfFrames == 12
    cine, label = load_cine(entry["image"]), load_cine(entry["label"])
    assert cine.shape == (1, 96, 128, 12) and label.shape == (1, 96, 128, 12)
    assert cine.meta["frame_time_ms"] == 40.0 and cine.meta["pixel_spacing_mm"] == (0.4, 0.4)
    assert cine.meta["pixel_spacing_source"] == "SequenceOfUltrasoundRegions"
    assert set(np.unique(label.numpy()).tolist()) == {0.0, 1.0, 2.0}
    phantom = make_phantom(num_frames=12, height=96, width=128, seed=7)
    np.testing.assert_array_equal(cine[0].numpy(), phantom.image.astype(np.float32))
    np.testing.assert_array_equal(label[0].numpy(), phantom.label.astype(np.float32))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_phantom_is_deterministic_and_moves():
    a, b, c = make_phantom(seed=1), make_phantom(seed=1), make_phantom(seed=2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    centroids = [np.argwhere(a.label[..., t] > 0).mean(axis=0) for t in (0, a.label.shape[-1] // 4)]
    assert np.abs(centroids[0] - centroids[1]).max() > 2, "the lesion moves between frames"
    assert (a.label[~a.fan] == 0).all(), "labels only inside the fan"


def test_phantom_fan_is_found_by_every_method():
    phantom = make_phantom(num_frames=10, seed=3)
    height, width, _ = phantom.image.shape
    estimated = estimate_fan_mask(phantom.image[None].astype(np.float32))
    assert mask_iou(estimated, phantom.fan) > 0.9
    x0, y0, x1, y1 = phantom.fan_box
    region = fan_mask_from_regions([{"spatial_format": 1, "x0": x0, "y0": y0, "x1": x1, "y1": y1}], height, width)
    assert (phantom.fan & ~region).sum() == 0
