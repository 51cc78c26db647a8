"""Class indices of per-class scores: the same answer as torch's ``argmax`` and MONAI's ``AsDiscreted(argmax=True)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted

from vivim_monai.transforms import ClassIndicesd
from vivim_monai.utils import argmax_indices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8])
def test_argmax_indices_equal_torch_argmax_ties_and_nan_included(dtype):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (3, 17, 11, 5), generator=generator).to(dtype)  # many ties: the first maximum wins
    if dtype.is_floating_point:
        scores[1, 2, 3, 4] = float("nan")  # torch.argmax counts NaN as the maximum
    for dim in range(scores.ndim):
        for keepdim in (False, True):
            assert torch.equal(argmax_indices(scores, dim, keepdim), torch.argmax(scores, dim, keepdim))


def test_class_indices_equal_monai_asdiscreted_argmax():
    generator = torch.Generator().manual_seed(1)
    meta = {"filename_or_obj": "cine.dcm", "spacing": [0.1, 0.1]}
    for scores in (
        MetaTensor(torch.rand(3, 40, 30, 6, generator=generator), meta=meta),
        torch.randint(0, 2, (2, 9, 8, 4), generator=generator).float(),
        np.random.default_rng(2).random((4, 12, 10, 3)).astype(np.float32),
    ):
        expected = AsDiscreted("pred", argmax=True)({"pred": scores, "other": 1})
        got = ClassIndicesd("pred")({"pred": scores, "other": 1})
        assert type(got["pred"]) is type(expected["pred"]) and got["other"] == 1
        assert got["pred"].dtype == expected["pred"].dtype and got["pred"].shape == expected["pred"].shape
        assert torch.equal(torch.as_tensor(got["pred"]), torch.as_tensor(expected["pred"]))
        if isinstance(scores, MetaTensor):
            assert got["pred"].meta["filename_or_obj"] == "cine.dcm"
