"""Export a Vivim network, time mixing included, to TorchScript (.ts), torch.export (.pt2) or ONNX (.onnx).

    python scripts/export_model.py --checkpoint bundle/models/model.pt --format torchscript --output model.ts
    python scripts/export_model.py --variant tiny --format program --clip-shape 3 96 96 5 --output tiny.pt2 \\
        --check-against ../shared/data/dicom-cine/US-PAL-8-10x-echo.dcm

The network comes from the bundle config's ``network_def`` (default bundle/configs/inference.json) or from
``--variant``; weights from ``--checkpoint`` (``{"model": state_dict}`` or a bare state dict), else random (with a
warning). The file computes clips of exactly ``--clip-shape`` C H W T (any batch size); see vivim_monai/export.py.
``--check-against`` runs a real cine through the exported file and eager PyTorch and prints the largest difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from vivim_monai.export import FORMATS, clip_from_cine, export_network, load_exported

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "bundle" / "configs" / "inference.json"
log = logging.getLogger("export_model")


def build_network(args: argparse.Namespace) -> tuple[torch.nn.Module, list[int]]:
    """The network to export and the default clip shape (C, H, W, T) of its config."""
    if args.variant:
        from vivim_monai.networks import Vivim

        net = Vivim(args.variant, in_channels=args.in_channels, out_channels=args.out_channels)
        return net, [args.in_channels, 256, 256, 5]
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(args.config))
    for item in args.override:
        key, _, value = item.partition("=")
        parser[key] = _value(value)
    net = parser.get_parsed_content(args.net_id)
    config = parser.get()
    height, width = config.get("spatial_size", [256, 256])
    return net, [int(getattr(net, "in_channels", 3)), int(height), int(width), int(config.get("clip_length", 5))]


def _value(text: str) -> object:
    """A JSON value (number, list, true, null, quoted string), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_checkpoint(net: torch.nn.Module, path: Path) -> None:
    """Load ``{"model": state_dict}`` or bare weights; a file that does not fit raises ``ValueError`` naming it."""
    from vivim_monai.handlers import ModelWeights

    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and OS errors of a bad file
        raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict (found {type(state).__name__})")
    ModelWeights(net, checkpoint=path).load_state_dict(state)


def check_against(model_path: Path, net: torch.nn.Module, cine: Path, clip_shape: list[int]) -> dict:
    """Max abs difference and argmax agreement of the exported file vs eager PyTorch (portable scan; and the
    network's default scan backend) on the first clip of a real cine."""
    from vivim_monai.export import portable_scan

    clip, facts = clip_from_cine(cine, clip_shape)
    exported = load_exported(model_path)
    with portable_scan(net), torch.no_grad():
        expected = net(clip)
    with torch.no_grad():
        default = net.eval()(clip)  # the scan backend the network would pick itself (compiled kernel on CPU)
    got = exported(clip)
    return {
        "cine": str(cine),
        "cine_shape": list(facts["cine_shape"]),
        "clip": list(clip.shape),
        "max_abs_diff": float((got - expected).abs().max()),
        "argmax_agreement": (got.argmax(1) == expected.argmax(1)).float().mean().item(),
        "max_abs_diff_vs_default_backend": float((got - default).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="bundle config with the network")
    source.add_argument("--variant", choices=["lite0", "tiny", "b0", "b1", "b2", "b3"], help="Vivim variant instead")
    parser.add_argument("--net-id", default="network_def", help="network id in --config")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="ID=VALUE",
        help="e.g. network_def#network#backbone=efficientnet-lite1",
    )
    parser.add_argument("--in-channels", type=int, default=3, help="with --variant")
    parser.add_argument("--out-channels", type=int, default=3, help="with --variant")
    parser.add_argument("--checkpoint", type=Path, help="weights; random initial weights without it")
    parser.add_argument("--format", choices=sorted(FORMATS), default="torchscript")
    parser.add_argument("--clip-shape", type=int, nargs=4, metavar=("C", "H", "W", "T"), help="default: config's")
    parser.add_argument("--batch", type=int, default=1, help="batch of the example clip")
    parser.add_argument("--output", type=Path, help="default: vivim.<format suffix> in the current folder")
    parser.add_argument("--check-against", type=Path, metavar="CINE", help="compare with eager on this real cine")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and example clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(args.seed)
    try:
        net, default_shape = build_network(args)
        if args.checkpoint is not None:
            load_checkpoint(net, args.checkpoint)
        else:
            log.warning("no --checkpoint: exporting random initial weights (fine for testing the export only)")
        clip_shape = args.clip_shape or default_shape
        example = torch.rand(args.batch, *clip_shape)
        output = args.output or Path("vivim" + FORMATS[args.format])
        start = time.perf_counter()
        path = export_network(net, example, output, args.format)
        try:
            record = load_exported(path).metadata
        except ImportError:  # an ONNX file without onnxruntime here: written, not verified
            record = {"clip_shape": clip_shape, "verified_max_abs_diff": None}
        diff = record.get("verified_max_abs_diff")
        log.info(
            "wrote %s (%s, clip (C, H, W, T) %s, %.1f MB) in %.0f s; max abs difference vs eager PyTorch on the "
            "example: %s",
            path,
            args.format,
            record["clip_shape"],
            path.stat().st_size / 2**20,
            time.perf_counter() - start,
            "not verified (onnxruntime missing)" if diff is None else f"{diff:.2e}",
        )
        if args.check_against is not None:
            print(json.dumps(check_against(path, net, args.check_against, clip_shape)))
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"export_model: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
