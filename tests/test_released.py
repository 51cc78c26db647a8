"""Released weights (``bundle/models/released.json``): digest, size, strict loading through their overlay, inference by
name, and the developer-split numbers recorded at release reproduced through ``evaluate.json`` (real data)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO_ROOT, file_digest, load_script, shared_dir
from monai.bundle import ConfigParser

from vivim_monai.handlers import ModelWeights
from vivim_monai.networks.weights import upgrade_legacy_keys

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

MODELS = REPO_ROOT / "bundle" / "models"
RELEASED = json.loads((MODELS / "released.json").read_text()) if (MODELS / "released.json").is_file() else {}
EXPECTED = ("bagls_glottis", "carotid_lumen")
MAX_BYTES = 25 * 1024 * 1024


def test_the_released_models_are_listed():
    assert set(EXPECTED) <= set(RELEASED), f"bundle/models/released.json lists {sorted(RELEASED)}"


def _network(name: str) -> torch.nn.Module:
    overlay = json.loads((REPO_ROOT / "bundle" / RELEASED[name]["config"]).read_text())
    parser = ConfigParser({**overlay, "in_channels": overlay.get("in_channels", 3)})
    parser["num_classes"] = len(overlay["class_names"])
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_file_digest_size_and_strict_load(name):
    entry = RELEASED[name]
    path = REPO_ROOT / "bundle" / entry["file"]
    assert path.is_file(), f"{path} is listed in released.json but missing"
    assert file_digest(path) == entry["sha256"]
    assert path.stat().st_size == entry["bytes"] <= MAX_BYTES
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    network = _network(name)
    assert sum(p.numel() for p in network.parameters()) == entry["parameters"]
    ModelWeights(network, path).load_state_dict({"model": state})  # strict: every key, every shape
    current = upgrade_legacy_keys(state)  # older releases kept the 0.3 parameter names, renamed on loading
    for key, value in network.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, current[key].float(), atol=0, rtol=0)
    with torch.no_grad():
        logits = network.eval()(torch.zeros(1, 3, 64, 64, 2))
    assert logits.shape == (1, len(entry["classes"]), 64, 64, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RELEASED))
def test_inference_runs_a_released_model_by_name(name, tmp_path):
    from conftest import bundle_workflow

    from vivim_monai.data import write_phantom_case

    cine = write_phantom_case(tmp_path / "in", "cine", seed=3, num_frames=4, height=96, width=128)["image"]
    workflow = bundle_workflow(
        "infer",
        ["inference.json", f"{name}.json"],
        bundle_root=str(REPO_ROOT / "bundle"),
        input_files=[str(cine)],
        output_dir=str(tmp_path / "out"),
        output_kinds=["nifti", "csv"],
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    labels = sorted((tmp_path / "out").rglob("*_seg.nii.gz"))
    assert len(labels) == 1
    import nibabel

    values = nibabel.load(labels[0]).get_fdata()
    assert values.shape == (96, 128, 4) and set(map(int, values.ravel())) <= set(range(len(RELEASED[name]["classes"])))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_numbers_reproduce_on_the_developer_data(name, tmp_path):
    """Every frame of the developer data, or, for a release that recorded a subset check (``--check-cases``: one whose
    full evaluation takes minutes), every frame of that subset."""
    entry = RELEASED[name]
    data = shared_dir(entry["data_folder"])
    release = load_script("release_model")
    recorded = entry.get("developer_split_check", entry["developer_split_all_frames"])
    numbers = release.evaluate(REPO_ROOT / "bundle", name, data, entry["layout"], tmp_path, recorded.get("first_cases"))
    assert (numbers["cases"], numbers["frames"]) == (recorded["cases"], recorded["frames"])
    assert numbers["dice_foreground"] == pytest.approx(recorded["dice_foreground"], abs=2e-3)
    assert numbers["jaccard_foreground"] == pytest.approx(recorded["jaccard_foreground"], abs=2e-3)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_every_release_states_its_scope_and_unseen_data_evidence(name):
    entry = RELEASED[name]
    assert len(entry.get("scope", "")) > 40, f"{name}: say what it segments, in which images"
    assert len(entry.get("known_failures", "")) > 40, f"{name}: say where it is not known to work"
    evidence = entry.get("unseen_data_evidence", {})
    assert evidence.get("cases", 0) > 0 and evidence.get("frames", 0) > 0, f"{name}: no unseen-data evidence"
    assert 0 <= evidence["dice_foreground"] <= 1 and "held out" in evidence["description"]
    card = (REPO_ROOT / "bundle" / "docs" / "README.md").read_text()
    assert f"{evidence['dice_foreground']:.3f}" in card, f"{name}: the model card must quote its unseen-data Dice"


def test_a_model_that_failed_on_unseen_patients_is_not_released():
    # vtus_nodule scored Dice 0.000 on another patient's video: it must not come back without new evidence
    assert "vtus_nodule" not in RELEASED
    assert not (MODELS / "vtus_nodule.pt").exists()


def test_a_release_keeps_the_inference_settings_its_training_overrode():
    """``release_model.py --set``: overrides of inference keys (the 224 x 224 a recipe trained at, test-time flips)
    reach the released overlay; training-only overrides (batch, loss) do not, and the encoder is not re-downloaded."""
    release = load_script("release_model")
    overrides = {"spatial_size": [224, 224], "test_time_flips": [0, 1], "batch_size": 4, "loss#batch": True}
    overlay = release.inference_overlay(
        "glottis", REPO_ROOT / "configs" / "bagls.json", REPO_ROOT / "configs" / "flexunet_lite0_frames.json", overrides
    )
    assert overlay["spatial_size"] == [224, 224] and overlay["test_time_flips"] == [0, 1]
    assert overlay["class_names"] == ["background", "glottis"] and overlay["use_fan"] is False
    assert not {"batch_size", "loss#batch", "epochs", "learning_rate"} & set(overlay)
    assert overlay["network_def"]["network"]["pretrained"] is False
    plain = release.inference_overlay(
        "glottis", REPO_ROOT / "configs" / "bagls.json", REPO_ROOT / "configs" / "flexunet_lite0_frames.json"
    )
    assert plain["spatial_size"] == [256, 256] and "test_time_flips" not in plain
