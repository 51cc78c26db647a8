"""Config overlays in configs/ and the bundle metadata."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO_ROOT, SHARED_SCHEMAS
from monai.bundle import ConfigParser, verify_metadata

from vivim_monai.networks import FrameWise, MediViSTA, TemporalFlexibleUNet, TextPromptedLite, Vivim

OVERLAYS = sorted((REPO_ROOT / "configs").glob("*.json"))
CONFIGS = [p for p in OVERLAYS if "network_def" in json.loads(p.read_text())]  # network overlays


def test_there_are_network_overlays():
    assert {p.stem for p in CONFIGS} >= {
        "vivim_b3",
        "vivim_b0",
        "vivim_tiny",
        "vivim_b0_spatial_only",
        "vivim_tiny_spatial_only",
        "per_frame_unet",
        "per_frame_unet_small",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_overlay_builds_its_network(path):
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n", "JSON is pretty-printed with a 4-space indent"
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "bundle" / "configs" / "train.json"), str(path)])
    parser["class_names"] = ["background", "lumen"]
    if path.stem == "biomedclipseg":  # local weights only: without BIOMEDCLIP_DIR the missing files are named
        parser["biomedclip_dir"] = str(REPO_ROOT / "no-such-folder")
        with pytest.raises(RuntimeError) as failure:  # MONAI wraps the network's own error
            parser.get_parsed_content("network_def")
        assert isinstance(failure.value.__cause__, FileNotFoundError)
        assert "missing open_clip_config.json" in str(failure.value.__cause__)
        return
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, (Vivim, FrameWise, MediViSTA, TemporalFlexibleUNet, TextPromptedLite))
    if path.stem in ("vivim_tiny", "per_frame_unet", "per_frame_unet_small", "vivim_tiny_spatial_only"):
        with torch.no_grad():
            assert net.eval()(torch.zeros(1, 3, 64, 64, 2)).shape == (1, 2, 64, 64, 2), "classes follow the bundle"


def test_bundle_json_is_pretty_printed():
    for path in [*(REPO_ROOT / "bundle").rglob("*.json"), *OVERLAYS]:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n", path


def test_bundle_metadata_verifies_offline():
    schema = SHARED_SCHEMAS / "meta_schema_20240725.json"
    if not schema.is_file():
        pytest.skip(f"bundle metadata schema {schema} is absent")
    verify_metadata(meta_file=str(REPO_ROOT / "bundle" / "configs" / "metadata.json"), filepath=str(schema))


def test_metadata_matches_network_and_pins():
    meta = json.loads((REPO_ROOT / "bundle" / "configs" / "metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    net = Vivim("tiny", in_channels=image["num_channels"], out_channels=pred["num_channels"]).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, image["num_channels"], 32, 32, 3)).shape[1] == len(pred["channel_def"])
    pins = dict(line.split("==") for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert meta["monai_version"] == pins["monai"] and meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    for name, version in meta["required_packages_version"].items():
        assert pins.get(name) == version, f"{name} pinned {pins.get(name)} in requirements.txt, {version} in metadata"


def test_bundle_command_values_reach_monai_bundle_run_typed():
    """``monai.bundle run`` parses its arguments with fire: a boolean, None or a list must arrive as one, not as
    the string ``'false'`` (JSON) — an ``amp=False`` override once switched AMP on."""
    from fire.parser import DefaultParseValue

    from vivim_monai.bundle_cli import bundle_command, find_bundle

    values = {"amp": False, "resume_checkpoint": None, "spatial_size": [256, 128], "lr": 0.5, "n": {"a": True}}
    command = bundle_command(find_bundle(), ["train.json"], {**values, "bundle_root": "/tmp/x"})
    for key, value in values.items():
        assert DefaultParseValue(command[command.index(f"--{key}") + 1]) == value
    assert command[command.index("--bundle_root") + 1] == "/tmp/x"


@pytest.mark.parametrize(
    "files, key",
    [
        (["train.json"], "validate#inferer"),
        (["train.json", "evaluate.json"], "validate#inferer"),
        (["inference.json"], "inferer"),
    ],
)
def test_test_time_flips_wrap_the_sliding_clip_inferer_of_validation_and_inference(files, key):
    """Off by default (the identity alone); a dataset overlay's ``test_time_flips`` turns on the flip ensemble of
    evaluation and inference alike, around the unchanged sliding-clip inferer (Gaussian blending in evaluate.json)."""
    from vivim_monai.inferers import FlipEnsembleInferer, SlidingClipInferer

    paths = [str(REPO_ROOT / "bundle" / "configs" / f) for f in files]
    for flips, expected in (([], [()]), ([0, 1], [(), (0,), (1,), (0, 1)])):
        parser = ConfigParser()
        parser.read_config(paths)
        if flips:
            parser["test_time_flips"] = flips
        inferer = parser.get_parsed_content(key)
        assert isinstance(inferer, FlipEnsembleInferer) and inferer.flips == expected
        assert isinstance(inferer.inferer, SlidingClipInferer)
        gaussian = files[-1] != "train.json"
        assert (inferer.inferer.mode == "gaussian") == gaussian, inferer.inferer.mode
