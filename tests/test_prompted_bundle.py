"""The text-prompted model through the bundle: a joint datalist with prompts, training, evaluation in the three
prompt modes (the sensitivity table), inference with one prompt for every case; plus the prompt-passing engine
step on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, bundle_workflow, load_script

from vivim_monai.data import load_datalist, make_phantom_data
from vivim_monai.data.joint import dataset_of_case, write_prompted_datalist
from vivim_monai.engines import PrepareBatchPrompt
from vivim_monai.experiments import per_dataset_means
from vivim_monai.networks import TextPromptedLite

OVERLAY = str(REPO_ROOT / "configs" / "text_prompted.json")
PROMPTS = json.loads((REPO_ROOT / "configs" / "text_prompted.json").read_text())["dataset_prompts"]


def test_prepare_batch_prompt_modes():
    batch = {"image": torch.zeros(2, 1, 4, 4, 2), "label": torch.zeros(2, 1, 4, 4, 2)}
    batch["prompt"] = [PROMPTS["carotid"], PROMPTS["vtus"]]
    known = list(PROMPTS.values())
    image, label, args, kwargs = PrepareBatchPrompt(prompts=known)(batch)
    assert image.shape == (2, 1, 4, 4, 2) and args == () and kwargs == {"prompt": batch["prompt"]}
    other = PrepareBatchPrompt(mode="other", prompts=known).case_prompts(batch)
    assert other == [PROMPTS["bagls"], PROMPTS["carotid"]]  # the next known prompt, cyclically
    assert PrepareBatchPrompt(mode="empty").case_prompts(batch) == ["", ""]
    assert PrepareBatchPrompt(prompt="kidney").case_prompts(batch) == ["kidney", "kidney"]  # the inference option
    assert PrepareBatchPrompt().case_prompts({"image": batch["image"]}) is None  # the network's default
    with pytest.raises(ValueError, match="not one of the known prompts"):
        PrepareBatchPrompt(mode="other", prompts=known).case_prompts({**batch, "prompt": ["kidney", "liver"]})
    with pytest.raises(ValueError, match="mode"):
        PrepareBatchPrompt(mode="wrong")
    with pytest.raises(ValueError, match="two known prompts"):
        PrepareBatchPrompt(mode="other", prompts=["a"])


def test_joint_datalist(tmp_path):
    source = make_phantom_data(tmp_path, cases=2, frames=3, folds=2, height=32, width=32)
    before = source.read_bytes()
    joint = tmp_path / "joint" / "datalist.json"
    document = write_prompted_datalist(joint, {"carotid": source, "vtus": source}, PROMPTS)
    assert source.read_bytes() == before
    cases = {e["case_id"]: e for e in document["training"]}
    assert len(cases) == 4 and {dataset_of_case(c) for c in cases} == {"carotid", "vtus"}
    original = json.loads(before)["training"]
    for entry in original:
        for name in ("carotid", "vtus"):
            joined = cases[f"{name}/{entry['case_id']}"]
            assert joined["fold"] == entry["fold"] and joined["prompt"] == PROMPTS[name]
    loaded = load_datalist(joint, fold=0, split="val")
    assert {e["case_id"] for e in loaded} == {c for c, e in cases.items() if e["fold"] == 0}
    assert all((tmp_path / "data").resolve() in Path(e["image"]).resolve().parents for e in loaded)
    with pytest.raises(ValueError, match="no prompt for dataset"):
        write_prompted_datalist(tmp_path / "x.json", {"kidney": source}, PROMPTS)
    with pytest.raises(ValueError):
        dataset_of_case("case0")


@pytest.mark.integration
def test_bundle_trains_evaluates_in_three_prompt_modes_and_infers_with_a_prompt(tmp_path, monkeypatch):
    source = make_phantom_data(tmp_path, cases=2, frames=3, folds=2, height=64, width=64)
    document = json.loads(source.read_text())
    for entry in document["training"]:
        entry["label_format"] = "binary"  # the phantom's lesion (both classes) as the prompted target
    source.write_text(json.dumps(document))
    joint = tmp_path / "joint.json"
    write_prompted_datalist(
        joint, {"carotid": tmp_path / "data" / "datalist.json", "vtus": tmp_path / "data" / "datalist.json"}, PROMPTS
    )
    seen: list[list[str]] = []
    original = TextPromptedLite.encode_prompts

    def spy(self, prompts):
        seen.append(list(prompts))
        return original(self, prompts)

    monkeypatch.setattr(TextPromptedLite, "encode_prompts", spy)
    common = {
        "bundle_root": str(tmp_path),
        "datalist": str(joint),
        "spatial_size": [64, 64],
        "network_def#image_size": 64,
    }
    train = bundle_workflow("train", ["train.json", OVERLAY], fold=0, epochs=1, batch_size=1, clip_length=3, **common)
    train.initialize()
    train.run()
    train.finalize()
    trained = {p for batch in seen for p in batch}
    assert trained == {PROMPTS["carotid"], PROMPTS["vtus"]}, "training sees each case's own prompt"
    assert (tmp_path / "models" / "model.pt").is_file()

    sensitivity = load_script("prompt_sensitivity")
    dice = {}
    for mode, expected in (
        ("own", {PROMPTS["carotid"], PROMPTS["vtus"]}),
        ("other", {PROMPTS["bagls"], PROMPTS["carotid"]}),
        ("empty", {""}),
    ):
        seen.clear()
        evaluate = bundle_workflow(
            "eval",
            ["train.json", OVERLAY, "evaluate.json"],
            fold=0,
            prompt_mode=mode,
            output_dir=str(tmp_path / mode),
            **common,
        )
        evaluate.initialize()
        evaluate.run()
        evaluate.finalize()
        assert {p for batch in seen for p in batch} == expected
        per_dataset = per_dataset_means(tmp_path / mode / "metrics_per_frame.csv", ["dice_target"])
        dice[mode] = {name: columns["dice_target"][0] for name, columns in per_dataset.items()}
    assert set(dice["own"]) == {"carotid", "vtus"}
    markdown, rows = sensitivity.sensitivity_table(dice)
    assert "| carotid |" in markdown and rows["vtus"]["drop_empty"] == pytest.approx(
        dice["own"]["vtus"] - dice["empty"]["vtus"]
    )

    seen.clear()
    infer = bundle_workflow(
        "infer",
        ["inference.json", OVERLAY],
        input_files=[str(tmp_path / "test" / "heldout.dcm")],
        output_dir=str(tmp_path / "out"),
        prompt="thyroid nodule",
        bundle_root=str(tmp_path),
        spatial_size=[64, 64],
        **{"network_def#image_size": 64},
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    assert seen and all(batch == ["thyroid nodule"] for batch in seen)
    assert (tmp_path / "out" / "heldout" / "heldout_seg.dcm").is_file()
