"""Release a trained model into the bundle: fp16 weights, an overlay that runs them by name, a manifest entry.

    python scripts/release_model.py runs/compare/carotid/vivim_lite0/final/models/model.pt --name carotid_lumen \\
        --dataset-config configs/carotid.json --network-config configs/vivim_lite0.json \\
        --data-root ../shared/data/carotid-us --layout carotid --licence "CC BY 4.0 (not confirmed)" \\
        --data "carotid-us developer split (Momot 2022), 8 acquisitions, 274 frames" \\
        --command "python scripts/compare_models.py ... && python scripts/cross_validate.py ... --final"

Writes, atomically:

* ``bundle/models/<name>.pt``: ``{"model": state_dict}`` with floating-point tensors stored as float16 (loading casts
  them back to the network's dtype; the evaluation below runs on exactly these rounded weights);
* ``bundle/configs/<name>.json``: an overlay for ``inference.json`` (and ``train.json`` + ``evaluate.json``) with the
  network, classes, normalisation, geometry and test-time flips the model was trained with (from the two overlays, then
  the training's ``--set`` overrides of those keys), and ``ckpt_path`` on the weights, so
  ``--config_file "['configs/inference.json','configs/<name>.json']"`` runs it by name;
* an entry of ``bundle/models/released.json``: file, sha256, size, parameters, training data and licence, the
  command, and the Dice / Jaccard of these weights on every frame of the developer data (``evaluate.json``: the
  frames it was trained on, so a check that the weights and the pipeline reproduce, not an accuracy estimate); with
  ``--check-cases N`` also those of the first N cases alone, the subset ``tests/test_released.py`` re-evaluates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from vivim_monai.bundle_cli import bundle_command, find_bundle, parse_override, run_bundle
from vivim_monai.data import LAYOUTS, discover_cases, write_datalist
from vivim_monai.networks.weights import checkpoint_state, read_checkpoint
from vivim_monai.utils import atomic_write

MANIFEST = "released.json"
#: Keys of the dataset / network overlays that shape inference (the rest is training recipe).
INFERENCE_KEYS = (
    "class_names",
    "label_format",
    "in_channels",
    "intensity_max",
    "channel_mean",
    "channel_std",
    "use_fan",
    "fan_method",
    "spatial_size",
    "clip_length",
    "test_time_flips",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def half_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as float16 (others, e.g. batch-norm counters, unchanged)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def inference_overlay(
    name: str, dataset_config: Path, network_config: Path, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings of both overlays, then of the training's ``overrides``, that inference needs (``INFERENCE_KEYS``;
    the other overrides are training recipe), the network without its pretrained-encoder loading."""
    merged: dict[str, Any] = {}
    for path in (dataset_config, network_config):
        merged.update(json.loads(path.read_text()))
    merged.update(overrides or {})
    overlay: dict[str, Any] = {"_desc_": f"Released model {name}: run with inference.json (see models/{MANIFEST})"}
    overlay.update({key: merged[key] for key in INFERENCE_KEYS if key in merged})
    network = {k: v for k, v in merged["network_def"].items() if k != "_desc_"}
    inner = network.get("network", network)
    if "pretrained" in inner:
        inner["pretrained"] = False  # the released weights replace the ImageNet initialisation
    overlay["network_def"] = network
    overlay["ckpt_path"] = f"$@bundle_root + '/models/{name}.pt'"
    return overlay


def evaluate(
    bundle: Path, name: str, data_root: Path, layout: str, work: Path, first_cases: int | None = None
) -> dict[str, Any]:
    """Dice / Jaccard of the released model ``name`` on every frame of the ``layout`` dataset in ``data_root`` (all
    cases as one validation fold, whole videos), through ``train.json`` + dataset + ``evaluate.json`` + its overlay;
    with ``first_cases``, on every frame of the first that many cases (in ``discover_cases`` order) only."""
    overlay = bundle / "configs" / f"{name}.json"
    classes = json.loads(overlay.read_text())["class_names"]
    entries = [{**entry, "fold": 0} for entry in discover_cases(data_root, layout, class_names=classes)]
    entries = entries[:first_cases] if first_cases else entries
    datalist = work / "datalist_all.json"
    write_datalist(datalist, entries, data_root, layout, classes)
    configs = ["train.json", "evaluate.json", str(overlay.resolve())]
    overrides = {
        "bundle_root": str(bundle.resolve()),
        "datalist": str(datalist),
        "fold": 0,
        "output_dir": str(work),
    }
    run_bundle(f"evaluate the released model {name}", bundle_command(bundle, configs, overrides))
    summary = json.loads((work / "metrics_summary.json").read_text())
    frames = summary["by_frame"]
    return {
        "cases": int(summary["num_cases"]),
        "frames": int(summary["num_frames"]),
        "dice_foreground": round(float(frames["dice"]["foreground_mean"]), 4),
        "jaccard_foreground": round(float(frames["jaccard"]["foreground_mean"]), 4),
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(dict(sorted(manifest.items())), indent=4) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="trained weights, e.g. <run>/final/models/model.pt")
    parser.add_argument("--name", required=True, help="released model name, e.g. carotid_lumen")
    parser.add_argument("--dataset-config", type=Path, required=True)
    parser.add_argument("--network-config", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True, help="the developer data the model was trained on")
    parser.add_argument("--layout", required=True, choices=LAYOUTS)
    parser.add_argument("--data", required=True, help="what the model was trained on (for the manifest)")
    parser.add_argument("--licence", required=True, help="licence of the training data")
    parser.add_argument("--command", required=True, help="the command that reproduces the training")
    parser.add_argument("--scope", required=True, help="what it segments, in which images (scanner, view, patients)")
    parser.add_argument(
        "--unseen-evidence",
        required=True,
        type=json.loads,
        help='JSON: {"description": "... held out from the developers ...", "cases": N, "frames": N, '
        '"dice_foreground": x} measured on data the model never saw',
    )
    parser.add_argument("--known-failures", required=True, help="where it is not known to work")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override the training used (as for cross_validate.py); inference settings among them are released",
    )
    parser.add_argument(
        "--check-cases",
        type=int,
        help="also record the numbers of the first N cases (developer_split_check), which the test suite reproduces "
        "instead of every frame when a release takes minutes to evaluate in full",
    )
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the checkout's bundle/)")
    args = parser.parse_args(argv)
    if not args.name.isidentifier():
        raise SystemExit(f"--name {args.name!r}: use letters, digits and underscores")
    bundle = find_bundle(args.bundle)
    state = half_precision(checkpoint_state(read_checkpoint(args.checkpoint), args.checkpoint))
    weights = bundle / "models" / f"{args.name}.pt"
    atomic_write(weights, lambda tmp: torch.save({"model": state}, tmp))
    overlay_path = bundle / "configs" / f"{args.name}.json"
    overrides = dict(parse_override(text) for text in args.set)
    overlay = inference_overlay(args.name, args.dataset_config, args.network_config, overrides)
    atomic_write(overlay_path, lambda tmp: Path(tmp).write_text(json.dumps(overlay, indent=4) + "\n"))
    network = ConfigParser({**overlay, "in_channels": overlay.get("in_channels", 3)})
    network["num_classes"] = len(overlay["class_names"])
    parameters = sum(p.numel() for p in network.get_parsed_content("network_def").parameters())
    manifest_path = bundle / "models" / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[args.name] = {
        "file": f"models/{weights.name}",
        "config": f"configs/{overlay_path.name}",
        "sha256": sha256(weights),
        "bytes": weights.stat().st_size,
        "storage": "float16",
        "parameters": parameters,
        "classes": overlay["class_names"],
        "scope": args.scope,
        "training_data": args.data,
        "data_licence": args.licence,
        "command": args.command,
        "data_folder": args.data_root.resolve().name,
        "layout": args.layout,
        "unseen_data_evidence": args.unseen_evidence,
        "known_failures": args.known_failures,
    }
    write_manifest(manifest_path, manifest)
    with tempfile.TemporaryDirectory() as work:
        manifest[args.name]["developer_split_all_frames"] = evaluate(
            bundle, args.name, args.data_root, args.layout, Path(work) / "all"
        )
        if args.check_cases:
            check = evaluate(bundle, args.name, args.data_root, args.layout, Path(work) / "check", args.check_cases)
            manifest[args.name]["developer_split_check"] = {"first_cases": args.check_cases, **check}
    write_manifest(manifest_path, manifest)
    print(json.dumps(manifest[args.name], indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
