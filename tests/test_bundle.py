"""The MONAI bundle, Model Zoo style: phantom data -> train -> evaluate -> infer, properties, net in/out, DDP."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import BUNDLE_CONFIGS as CONFIGS
from conftest import BUNDLE_LOGGING as LOGGING
from conftest import BUNDLE_META as META
from conftest import REPO_ROOT, SHARED_SCHEMAS, TINY_NETWORK, bundle_workflow
from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out

from vivim_monai.data import load_cine, make_phantom_data

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports


@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory):
    """Train (2 epochs), evaluate and infer once on tiny phantom cines; later tests inspect the results."""
    root = tmp_path_factory.mktemp("bundle")
    make_phantom_data(root, cases=4, frames=8, folds=2)
    common = {"bundle_root": str(root), "dataset_dir": str(root / "data"), "spatial_size": [64, 64]}
    common.update(TINY_NETWORK)
    train = bundle_workflow("train", ["train.json"], fold=0, epochs=2, batch_size=2, max_numerosity=2, **common)
    train.initialize()
    assert not train.check_properties(), "every Model Zoo train property is present"
    train.run()
    train.finalize()
    evaluate = bundle_workflow("eval", ["train.json", "evaluate.json"], fold=0, output_dir=str(root / "eval"), **common)
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    sources = [str(root / "test" / "heldout.dcm"), str(pydicom.examples.get_path("ybr_color"))]
    before = {s: Path(s).read_bytes() for s in sources}
    infer = bundle_workflow("infer", ["inference.json"], input_files=sources, output_dir=str(root / "out"), **common)
    infer.initialize()
    assert not infer.check_properties(), "every Model Zoo inference property is present"
    infer.run()
    infer.finalize()
    return {"root": root, "sources": sources, "before": before}


def test_training_saves_the_best_checkpoint(bundle_run):
    checkpoint = torch.load(bundle_run["root"] / "models" / "model.pt", weights_only=True)
    assert set(checkpoint) == {"model"} and any(k.startswith("encoder.") for k in checkpoint["model"])
    assert list((bundle_run["root"] / "eval").glob("events.out.tfevents.*")), "TensorBoard logs"


def test_evaluation_writes_metrics_in_original_geometry(bundle_run):
    eval_dir = bundle_run["root"] / "eval"
    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["num_frames"] == 16 and summary["class_names"][1] == "solid"
    dice = summary["by_frame"]["dice"]
    assert "inference_timing" in summary
    with (eval_dir / "metrics_per_frame.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    per_class = [np.nanmean([float(r[f"dice_{name}"]) for r in rows]) for name in summary["class_names"][1:]]
    assert dice["foreground_mean"] == pytest.approx(np.nanmean(per_class)), "the summary is the per-frame table's"
    for name in ("metrics_per_frame.csv", "metrics_per_video.csv", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (eval_dir / name).is_file(), name
    confusion = np.loadtxt(eval_dir / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3))
    assert confusion.sum() == 2 * 192 * 256 * 8, "every pixel of every original-size frame is counted"


def test_inference_outputs_for_phantom_and_real_echo(bundle_run):
    out = bundle_run["root"] / "out"
    for source in bundle_run["sources"]:
        stem = Path(source).stem
        files = {p.name for p in (out / stem).iterdir()}
        ends = ("_seg.nii.gz", "_seg.dcm", "_overlay.gif", "_areas.csv", "_areas.png")
        assert files == {f"{stem}{end}" for end in ends}
        cine = load_cine(source)
        labels = np.asarray(nib.load(out / stem / f"{stem}_seg.nii.gz").dataobj)
        assert labels.shape == tuple(cine.shape[1:]), "labels in the source geometry, every frame"
        seg = pydicom.dcmread(out / stem / f"{stem}_seg.dcm")
        assert (
            seg.Modality == "SEG"
            and seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            == cine.meta["sop_instance_uid"]
        )
        assert Path(source).read_bytes() == bundle_run["before"][source], "inputs untouched"
    assert not list(out.rglob("*.tmp*")), "no temporary files left"


def test_metadata_and_network_in_out(tmp_path):
    schema = SHARED_SCHEMAS / "meta_schema_20240725.json"
    if schema.is_file():
        verify_metadata(meta_file=META, filepath=str(schema))
    verify_net_in_out(
        net_id="network_def",
        meta_file=META,
        config_file=str(CONFIGS / "inference.json"),
        n=1,
        any=3,
        device="cpu",
        **TINY_NETWORK,
    )


@pytest.mark.slow
def test_multi_gpu_training_on_cpu_with_gloo(tmp_path):
    make_phantom_data(tmp_path, cases=4, frames=6, folds=2)
    configs = json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", META, "--logging_file", LOGGING]
    command += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"), "--spatial_size", "[64,64]"]
    command += [arg for key, value in TINY_NETWORK.items() for arg in (f"--{key}", str(value))]
    command += ["--epochs", "1", "--batch_size", "1", "--max_numerosity", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"]), "DDP wrapper unwrapped in the checkpoint"


def test_training_resumes_from_the_last_state(bundle_run):
    root = bundle_run["root"]
    common = {"bundle_root": str(root), "dataset_dir": str(root / "data"), "spatial_size": [64, 64]}
    state = root / "models" / "checkpoint_epoch=2.pt"
    assert set(torch.load(state, weights_only=True)) == {"model", "optimizer", "lr_scheduler", "trainer", "rng"}
    resumed = bundle_workflow(
        "train",
        ["train.json"],
        fold=0,
        epochs=3,
        batch_size=2,
        max_numerosity=2,
        resume_checkpoint=str(state),
        **TINY_NETWORK,
        **common,
    )
    resumed.initialize()
    resumed.run()
    trainer = resumed.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3 and trainer.state.iteration == 3 * len(trainer.data_loader)
    assert (root / "models" / "checkpoint_epoch=3.pt").is_file()
    resumed.finalize()


def test_paper_recipe_overlay_trains_the_edge_head(tmp_path):
    make_phantom_data(tmp_path, cases=2, frames=6, folds=2)
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(REPO_ROOT / "configs" / "paper_recipe.json")],
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path / "data"),
        spatial_size=[64, 64],
        epochs=1,
        batch_size=2,
        max_numerosity=1,
        **{"network_def#variant": "tiny", "network_def#pretrained": False},  # the overlay's Vivim, made small
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    before = [p.detach().clone() for p in network.edge_head.parameters()]
    workflow.run()
    optimizer = workflow.parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["weight_decay"] == 0.0
    assert any(not torch.equal(b, p) for b, p in zip(before, network.edge_head.parameters())), "edge head learns"
    workflow.finalize()


@pytest.mark.slow
def test_cross_validation_runs_folds_apart_keeps_what_is_done_and_resumes_what_was_killed(tmp_path):
    """One scenario, five runs of the script: a fold alone (as on another machine); ``--final`` keeps it and adds the
    other fold and the retrain; a repeat trains nothing. Then a fold whose training stopped after epoch 1 of 2 (its
    rolling state says so) resumes at epoch 2, and a fold whose training had finished but was never evaluated trains
    afresh rather than resuming a finished run."""
    datalist = make_phantom_data(tmp_path, cases=4, frames=6, folds=2)
    output = tmp_path / "cv"
    command = [sys.executable, "scripts/cross_validate.py", str(datalist), "--output", str(output)]
    overrides = ["spatial_size=[64,64]", "max_numerosity=1"]
    overrides += [f"{key}={json.dumps(value)}" for key, value in TINY_NETWORK.items()]
    command += [arg for o in overrides for arg in ("--set", o)]

    def run(*extra: str) -> str:
        result = subprocess.run([*command, *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    first = run("--set", "epochs=1", "--folds", "1")  # one fold alone first, as when folds run on different machines
    assert "train fold 1" in first and "train fold 0" not in first
    second = run("--set", "epochs=1", "--final")
    assert "fold 1: already evaluated" in second and "train fold 0" in second, "the earlier fold is kept"
    third = run("--set", "epochs=1", "--folds", "1")
    assert "fold 1: already evaluated" in third and "train fold" not in third
    timing = json.loads((output / "cv_timing.json").read_text())["seconds"]
    assert {"train_fold_0", "evaluate_fold_0", "train_fold_1", "evaluate_fold_1", "train_final"} <= set(timing), timing
    table = (output / "cv_summary.md").read_text()
    assert "| metric | class | fold_0 | fold_1 | mean ± sd |" in table and "| dice | foreground_mean |" in table
    rows = (output / "cv_summary.csv").read_text().splitlines()
    assert rows[0] == "metric,class,fold_0,fold_1,mean,sd" and len(rows) == 1 + 6 * 4
    final = torch.load(output / "final" / "models" / "model.pt", weights_only=True)
    assert set(final) == {"model"}, "the final retrain saves its last weights"
    assert not (output / "final" / "eval" / "metrics_summary.json").exists(), "no validation in the retrain"

    state_path = output / "fold_0" / "models" / "checkpoint_epoch=1.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["trainer"]["max_epochs"] == 1
    state["trainer"]["max_epochs"] = 2  # fold 0 now looks like a 2-epoch run killed after its first epoch
    torch.save(state, state_path)
    for fold in (0, 1):  # neither is evaluated any more
        (output / f"fold_{fold}" / "eval" / "metrics_summary.json").unlink()
    printed = run("--set", "epochs=2", "--folds", "0")
    assert f"fold 0: resuming the interrupted training from {state_path}" in printed
    trainer_epochs = re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete", printed)
    assert trainer_epochs == ["2"], f"resumed at epoch 2 only, trained {trainer_epochs}"
    assert (output / "fold_0" / "models" / "checkpoint_epoch=2.pt").is_file()
    assert (output / "fold_0" / "eval" / "metrics_summary.json").is_file()

    printed = run("--set", "epochs=1", "--folds", "1")  # fold 1's state is at its last epoch: train afresh
    assert "resuming the interrupted training" not in printed
    assert re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete", printed) == ["1"]


def _frame_folder_dataset(root: Path, frames_per_case=(7, 9, 6, 8)) -> Path:
    """Carotid-layout frame folders (cases of different lengths) with a folded datalist."""
    from PIL import Image

    from vivim_monai.data import assign_folds, discover_cases, write_datalist

    rng = np.random.default_rng(0)
    for case, frames in enumerate(frames_per_case):
        name = f"acq{case}"
        for t in range(frames):
            image = rng.integers(0, 80, (48, 40, 3), dtype=np.uint8)
            mask = np.zeros((48, 40), dtype=np.uint8)
            mask[10 + t : 22 + t, 12:26] = 255
            image[mask > 0] += 120
            for folder, array in (("images", image), ("masks", mask)):
                (root / name / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / name / folder / f"{name}_slice_{10 * t + 3}.png")
    entries = discover_cases(root, "carotid")
    folds, report = assign_folds(entries, 2)
    path = root / "datalist_folds.json"
    write_datalist(path, [{**e, "fold": f} for e, f in zip(entries, folds)], root, "carotid", ("background", "lumen"))
    return path


def test_dataset_overlay_on_frame_folders_of_different_lengths(tmp_path):
    datalist = _frame_folder_dataset(tmp_path / "data")
    files = ["train.json", str(REPO_ROOT / "configs" / "carotid.json"), str(REPO_ROOT / "configs" / "vivim_tiny.json")]
    common = {"bundle_root": str(tmp_path), "datalist": str(datalist), "fold": 0, "spatial_size": [64, 64]}
    train = bundle_workflow(
        "train", files, epochs=1, val_interval=1, batch_size=2, **common
    )  # clips of 2 cases per batch
    train.initialize()
    train.run()
    train.finalize()
    evaluate = bundle_workflow("eval", [*files, "evaluate.json"], output_dir=str(tmp_path / "eval"), **common)
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["class_names"] == ["background", "lumen"] and summary["num_frames"] in (13, 14, 15, 17)
    assert set(summary["by_frame"]["dice"]) == {"background", "lumen", "foreground_mean"}


def test_ovarian_overlay_runs_on_the_phantom_stand_in(tmp_path):
    datalist = make_phantom_data(tmp_path, cases=4, frames=6, folds=2)
    files = ["train.json", str(REPO_ROOT / "configs" / "ovarian.json"), str(REPO_ROOT / "configs" / "vivim_tiny.json")]
    common = {"bundle_root": str(tmp_path), "datalist": str(datalist), "fold": 1, "spatial_size": [64, 64]}
    train = bundle_workflow("train", files, epochs=1, batch_size=2, **common)
    train.initialize()
    loss = train.parser.get_parsed_content("loss")
    assert list(loss.focal.alpha) == pytest.approx([0.05, 0.475, 0.475]) and train.parser["max_numerosity"] == 3
    train.run()
    train.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_multi_gpu_evaluation_on_cpu_with_gloo(tmp_path):
    make_phantom_data(tmp_path, cases=4, frames=6, folds=2)
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(tmp_path / "data"), "spatial_size": [64, 64]}
    train = bundle_workflow(
        "train",
        ["train.json"],
        epochs=1,
        max_numerosity=1,
        **TINY_NETWORK,
        **common,
    )
    train.initialize()
    train.run()
    train.finalize()
    configs = json.dumps([str(CONFIGS / f) for f in ("train.json", "evaluate.json", "multi_gpu_evaluate.json")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", META, "--logging_file", LOGGING]
    command += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"), "--spatial_size", "[64,64]"]
    command += [arg for key, value in TINY_NETWORK.items() for arg in (f"--{key}", str(value))]
    command += ["--output_dir", str(tmp_path / "eval_ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval_ddp" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["num_frames"] == 12, "both ranks' cases gathered, each counted once"
