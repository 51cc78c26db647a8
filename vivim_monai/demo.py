"""The main job on an embedded default: phantom cines -> train -> evaluate -> infer, all through ``monai.bundle run``.

``python -m vivim_monai.demo`` (what ``bash scripts/demo.sh`` runs):

1. writes synthetic ultrasound phantoms (:func:`~vivim_monai.data.write_phantom_case`: Ultrasound Multi-frame DICOM
   with 3-class NIfTI labels) and their datalist with cross-validation folds into ``<output>/data``, plus one
   held-out phantom into ``<output>/test``;
2. trains the bundle's default network (``network_def`` of ``bundle/configs/train.json``, or ``--network`` overlay)
   on fold 0 with ``python -m monai.bundle run`` and says which weights it started from and which it wrote;
3. evaluates the best checkpoint on the validation fold in original frame geometry (``train.json`` +
   ``evaluate.json``) and prints Dice per class;
4. runs ``inference.json`` on the held-out phantom, writing a NIfTI label volume, a DICOM SEG, an overlay GIF and a
   per-frame area CSV into ``<output>/outputs``;
5. segments a real structure of pydicom's real 30-frame echo cine (``ybr_color``, an apical four-chamber view) from
   one box: :data:`ECHO_BOX` around the left-ventricular cavity on frame 0 is the demo's input (drawn by a
   developer, not ground truth), tracked through the cine by LiteMedSAM with ``adapt.json`` (``--method track``);
   the same outputs, plus the per-frame track status, go to ``<output>/outputs/prompted``. The phantom model's
   classes are not painted on the echo: it was trained on phantoms only.

Every bundle command is printed before it runs, so each step can be repeated by hand. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from monai.bundle import ConfigParser
from pydicom import examples

from vivim_monai.bundle_cli import bundle_command, find_bundle, run_bundle
from vivim_monai.data import make_phantom_data
from vivim_monai.networks import frame_encoder
from vivim_monai.networks.weights import PACKAGED_WEIGHTS

#: The demo's box prompt on the real echo: frame 0, (x0, y0, x1, y1) around the left-ventricular cavity (pixels).
ECHO_BOX = [0, 152, 52, 212, 125]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vivim_monai.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="vivim_demo", help="folder for data, checkpoints, reports and outputs")
    parser.add_argument("--cases", type=int, default=8, help="phantom cines for training and validation")
    parser.add_argument("--frames", type=int, default=20, help="frames per phantom cine")
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds (fold 0 is trained)")
    parser.add_argument("--network", help="network overlay (e.g. configs/vivim_b0.json); default: the bundle's own")
    parser.add_argument("--size", type=int, default=128, help="frames are resized to size x size (multiple of 32)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--bundle", help="bundle folder (configs/; default: the checkout's bundle/ or $VIVIM_BUNDLE_DIR)"
    )
    return parser.parse_args(argv)


def describe_start(bundle: Path, configs: list[str]) -> str:
    """The network the training builds and the weights it starts from (a packaged ImageNet file, or random)."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) if not Path(c).is_absolute() else c for c in configs])
    network = parser.get_parsed_content("network_def")
    encoder = frame_encoder(network)
    source = getattr(encoder, "weights_source", None)
    inner = getattr(network, "network", None)  # FrameWise(<2-D network>)
    detail = repr(network.variant) if hasattr(network, "variant") else type(inner).__name__ if inner else ""
    name = type(network).__name__ + (f"({detail})" if detail else "")
    if source is None:
        return f"{name}, every weight random"
    packaged = next((p for p in PACKAGED_WEIGHTS.values() if source.endswith(p.path)), None)
    origin = f" ({packaged.description}; pip package {packaged.distribution}, {packaged.licence})" if packaged else ""
    return f"{name}, encoder initialised from {source}{origin}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    root = Path(args.output).resolve()
    try:
        bundle = find_bundle(args.bundle)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    started = time.perf_counter()
    datalist = make_phantom_data(root, args.cases, args.frames, args.folds)
    print(f"data      {args.cases} phantom cines of {args.frames} frames + 1 held-out -> {datalist}")
    common = {"bundle_root": str(root), "dataset_dir": str(root / "data"), "spatial_size": [args.size, args.size]}
    overlay = [str(Path(args.network).resolve())] if args.network else []
    training = {
        **common,
        "fold": 0,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_numerosity": 3,
    }
    start = describe_start(bundle, ["train.json", *overlay])
    print(f"network   {start}")
    seconds = {"train": run_bundle("train (fold 0)", bundle_command(bundle, ["train.json", *overlay], training))}
    evaluation = {**common, "fold": 0, "output_dir": str(root / "eval")}
    seconds["evaluate"] = run_bundle(
        "evaluate (validation fold, original geometry)",
        bundle_command(bundle, ["train.json", *overlay, "evaluate.json"], evaluation),
    )
    summary = json.loads((root / "eval" / "metrics_summary.json").read_text())
    inference = {**common, "input_files": [str(root / "test" / "heldout.dcm")], "output_dir": str(root / "outputs")}
    seconds["inference"] = run_bundle(
        "inference (held-out phantom)", bundle_command(bundle, ["inference.json", *overlay], inference)
    )
    prompted = {
        "bundle_root": str(root),
        "input_files": [str(examples.get_path("ybr_color"))],
        "boxes": [ECHO_BOX],
        "method": "track",
        "class_names": ["background", "left ventricle"],
        "output_dir": str(root / "outputs" / "prompted"),
    }
    seconds["box"] = run_bundle(
        f"real echo: one box on frame {ECHO_BOX[0]} around the left-ventricular cavity, tracked through the cine",
        bundle_command(bundle, ["adapt.json"], prompted),
    )
    total = time.perf_counter() - started
    dice = summary["by_frame"]["dice"]
    print("\nDice per class (validation fold, per-frame mean): " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    print(f"weights   started from: {start}")
    print(f"          trained on phantom fold 0 ({args.epochs} epochs): {root / 'models' / 'model.pt'}")
    report = json.loads(
        (root / "outputs" / "prompted" / "examples_ybr_color" / "examples_ybr_color_prompts.json").read_text()
    )
    print(
        f"real echo left ventricle from one box on frame {ECHO_BOX[0]}: {report['status_counts']} of "
        f"{report['frames']} frames (per-frame status and any track stop in examples_ybr_color_prompts.json)"
    )
    print(f"outputs   {root / 'outputs'}")
    for path in sorted((root / "outputs").rglob("*")):
        if path.is_file():
            print(f"          {path.relative_to(root)}")
    print(f"time      {total:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})")
    return {"summary": summary, "seconds": seconds, "total_seconds": total, "root": str(root), "start": start}


if __name__ == "__main__":
    main()
