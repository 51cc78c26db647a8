"""Model-Zoo-style unit test of the *packaged* bundle: train → evaluate → infer on tiny synthetic cines.

Follows the Model Zoo's ``ci/unit_tests`` pattern (tiny data written in ``setUp``, ``ConfigWorkflow`` per workflow,
``check_properties`` on train and infer, training's ``model.pt`` reused by evaluation and inference). It imports only
MONAI and the bundle's own ``scripts`` package, so it runs in an environment without this repository installed:

    PYTHONPATH=<bundle> BUNDLE_ROOT=<bundle> python -m unittest zoo_unit_test     (from this folder)

``scripts/verify_bundle.py`` runs it on a copy of the bundle in a clean virtual environment.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow

TINY = {"spatial_size": [64, 64]}  # the default network (FlexibleUNet on ImageNet Lite0) on small phantom frames


def bundle_root() -> Path:
    root = os.environ.get("BUNDLE_ROOT")
    if not root:
        raise unittest.SkipTest("set BUNDLE_ROOT to the packaged bundle folder")
    return Path(root).resolve()


def workflow(kind: str, configs: list[str], **override) -> ConfigWorkflow:
    root = bundle_root()
    return ConfigWorkflow(
        workflow_type=kind,
        config_file=[str(root / "configs" / name) for name in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        bundle_root=str(root),
        **override,
    )


class TestPackagedBundle(unittest.TestCase):
    def setUp(self) -> None:
        from scripts.data import make_phantom_data

        self.work = Path(tempfile.mkdtemp(prefix="zoo_unit_"))
        make_phantom_data(self.work, cases=4, frames=6, folds=2, height=96, width=128)
        self.common = {**TINY, "dataset_dir": str(self.work / "data")}

    def tearDown(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def test_train_evaluate_infer(self) -> None:
        train = workflow("train", ["train.json"], fold=0, epochs=2, batch_size=2, max_numerosity=2, **self.common)
        train.initialize()
        self.assertEqual(train.check_properties(), [], "every Model Zoo train property is present")
        train.run()
        train.finalize()
        checkpoint = torch.load(bundle_root() / "models" / "model.pt", weights_only=True)
        self.assertEqual(set(checkpoint), {"model"})

        eval_dir = self.work / "eval"
        evaluate = workflow("eval", ["train.json", "evaluate.json"], fold=0, output_dir=str(eval_dir), **self.common)
        evaluate.initialize()
        evaluate.run()
        evaluate.finalize()
        summary = json.loads((eval_dir / "metrics_summary.json").read_text())
        dice = summary["by_frame"]["dice"]["foreground_mean"]
        self.assertTrue(0.0 <= dice <= 1.0, f"foreground Dice {dice}")

        source = self.work / "test" / "heldout.dcm"
        out = self.work / "out"
        infer = workflow("infer", ["inference.json"], input_files=[str(source)], output_dir=str(out), **self.common)
        infer.initialize()
        self.assertEqual(infer.check_properties(), [], "every Model Zoo inference property is present")
        infer.run()
        infer.finalize()
        labels = np.asarray(nib.load(out / "heldout" / "heldout_seg.nii.gz").dataobj)
        self.assertEqual(labels.shape, (96, 128, 12), "one label per pixel of every source frame")
        self.assertTrue(set(np.unique(labels).tolist()) <= {0, 1, 2})


if __name__ == "__main__":
    unittest.main()
