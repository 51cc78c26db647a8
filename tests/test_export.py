"""Exported Vivim (TorchScript, torch.export, ONNX) against eager PyTorch: phantom and real clips, files, errors.

One tiny network is exported once per format at ``CLIP``; the files are then compared with eager PyTorch on a moving
phantom (always runs) and on a real echo cine from ``../shared/data/dicom-cine`` (skips with the reason when absent).
The TorchScript tests are quick; torch.export and ONNX exports take tens of seconds each and are marked slow.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
from conftest import BUNDLE_CONFIGS, BUNDLE_META, REPO_ROOT, TINY_NETWORK, shared_dir

from vivim_monai.export import METADATA_KEY, export_network, export_torchscript, load_exported, portable_scan
from vivim_monai.networks import Vivim

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

CLIP = (3, 64, 32, 3)  # (C, H, W, T) of the exported files: H != W catches a transposed axis; small, as each
# capture unrolls the scan over the token count (the graph, and the ONNX conversion time, grow with H * W * T)
TOLERANCE = 1e-4
ECHO = "US-PAL-8-10x-echo.dcm"
FORMATS = [
    pytest.param("torchscript", id="torchscript"),
    pytest.param("program", id="program", marks=pytest.mark.slow),
    pytest.param("onnx", id="onnx", marks=pytest.mark.slow),
]
SUFFIX = {"torchscript": ".ts", "program": ".pt2", "onnx": ".onnx"}


def phantom_clip(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W, T) in [0, 1]: a bright disc moving across the frames over speckle."""
    channels, height, width, frames = CLIP
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    discs = []
    for t in range(frames):
        centre = (height / 2 + 8 * math.sin(t / 2), width / 3 + 4 * t)
        discs.append((((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) < 12**2).float())
    disc = torch.stack(discs, dim=-1)  # (H, W, T)
    speckle = torch.rand(batch, 1, height, width, frames, generator=generator) * 0.3
    return (0.6 * disc + speckle).clamp(0, 1).expand(batch, channels, height, width, frames).contiguous()


def compare(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, fraction of pixels with the same argmax class)."""
    assert got.shape == expected.shape
    return float((got - expected).abs().max()), float((got.argmax(1) == expected.argmax(1)).float().mean())


@pytest.fixture(scope="module")
def net() -> Vivim:
    """Vivim-tiny with ST-Mamba after the first and the last stage only: the scan captured at the largest and the
    smallest token count (chunks of 16 tokens, and a sequence shorter than one chunk); the middle stages run the same
    code and would only double the graph each export unrolls."""
    torch.manual_seed(0)
    # scan backend: automatic (the compiled kernel)
    return Vivim("tiny", in_channels=3, out_channels=3, mamba_depths=(1, 0, 0, 1)).eval()


def eager(net: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """Eager PyTorch with the portable scan, the path every export captures."""
    with portable_scan(net), torch.no_grad():
        return net(clip)


@pytest.fixture(scope="module")
def exported(net, tmp_path_factory):
    """Export ``net`` in a format once for the module; returns the path."""
    files: dict[str, object] = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(fmt: str):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements-dev.txt)")
        if fmt not in files:
            torch.manual_seed(1)
            files[fmt] = export_network(net, torch.rand(1, *CLIP), folder / f"tiny{SUFFIX[fmt]}")
        return files[fmt]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_eager_on_phantom(fmt, net, exported):
    model = load_exported(exported(fmt))
    assert model.metadata["clip_shape"] == list(CLIP) and model.metadata["format"] == fmt
    assert model.metadata["verified_max_abs_diff"] <= TOLERANCE
    for batch in (1, 2):  # the batch size stays free in every format
        clip = phantom_clip(batch, seed=batch)
        expected = eager(net, clip)
        diff, agree = compare(model(clip), expected)
        assert diff < TOLERANCE, f"{fmt}: max abs difference {diff:.2e} at batch {batch}"
        assert agree == 1.0
        # the default eager path on CPU (compiled kernel) agrees with the portable scan the file holds
        with torch.no_grad():
            assert compare(model(clip), net(clip))[0] < TOLERANCE
    assert float(expected.std()) > 1e-3  # a constant output would match trivially


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_eager_on_real_echo_cine(fmt, net, exported):
    from vivim_monai.export import clip_from_cine

    clip, facts = clip_from_cine(shared_dir("dicom-cine") / ECHO, CLIP)
    assert clip.shape == (1, *CLIP) and facts["cine_shape"][-1] >= CLIP[-1]
    assert 0.0 <= float(clip.min()) < float(clip.max()) <= 1.0
    diff, agree = compare(load_exported(exported(fmt))(clip), eager(net, clip))
    print(f"{fmt} on {ECHO}: max abs difference {diff:.2e}, argmax agreement {agree:.4f}")
    assert diff < TOLERANCE and agree == 1.0


def test_export_leaves_the_network_as_it_was(tmp_path):
    torch.manual_seed(0)
    net = Vivim("tiny", mamba_depths=(1, 0, 0, 0), scan_backend="cpu").train()  # never run with the kernel here
    backends = [m.scan_backend for m in net.modules() if hasattr(m, "scan_backend")]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_torchscript(net, torch.rand(1, 3, 32, 32, 2), tmp_path / "m.ts")
    assert net.training and all(m.training for m in net.modules())
    assert [m.scan_backend for m in net.modules() if hasattr(m, "scan_backend")] == backends
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_torchscript_file_runs_with_torch_alone(net, exported):
    """The .ts needs neither vivim-monai nor its kernels: a plain torch process loads and runs it."""
    path = exported("torchscript")
    clip = phantom_clip()
    expected = eager(net, clip)
    torch.save(clip, path.with_suffix(".clip.pt"))
    code = "\n".join(
        [
            "import sys, torch",
            "torch.set_grad_enabled(False)",
            f"files = {{{METADATA_KEY!r}: ''}}",
            "model = torch.jit.load(sys.argv[1], _extra_files=files)",
            "torch.save(model(torch.load(sys.argv[2])), sys.argv[3])",
            "assert not any(name.startswith('vivim_monai') for name in sys.modules)",
            f"print(files[{METADATA_KEY!r}].decode())",
        ]
    )
    out = path.with_suffix(".out.pt")
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(path.with_suffix(".clip.pt")), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["clip_shape"] == list(CLIP)
    assert compare(torch.load(out), expected)[0] < TOLERANCE


def test_exported_model_refuses_clips_of_another_shape(exported):
    path = exported("torchscript")
    model = load_exported(path)
    channels, height, width, frames = CLIP
    for shape in [(1, channels, height, width, frames - 1), (1, channels, height + 32, width, frames)]:
        with pytest.raises(ValueError, match="exported for clips") as err:
            model(torch.rand(*shape))
        assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=r"\(B, C, H, W, T\)"):
        model(torch.rand(channels, height, width, frames))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, *CLIP, dtype=torch.uint8))


def test_load_exported_names_the_file_on_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.ts"):
        load_exported(tmp_path / "absent.ts")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="garbage.pt2: cannot load as a program export"):
        load_exported(garbage)
    with pytest.raises(ValueError, match="model.bin: cannot tell the export format"):
        load_exported(tmp_path / "model.bin")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        load_exported(garbage, "tflite")


def test_export_refuses_bad_examples_and_failed_verification(net, tmp_path):
    with pytest.raises(ValueError, match=r"\(B, C, H, W, T\)"):
        export_torchscript(net, torch.rand(3, 64, 64, 5), tmp_path / "a.ts")
    with pytest.raises(ValueError, match="multiples of 32"):
        export_torchscript(net, torch.rand(1, 3, 48, 64, 5), tmp_path / "b.ts")
    # an export that does not reproduce eager PyTorch within the tolerance is never written
    with pytest.raises(RuntimeError, match="differs from eager PyTorch"):
        export_torchscript(net, torch.rand(1, 3, 32, 32, 2), tmp_path / "c.ts", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_script_from_the_bundle_config(tmp_path):
    """scripts/export_model.py: bundle config + override + checkpoint -> a verified .ts; a bad checkpoint fails."""
    torch.manual_seed(3)
    source = Vivim("tiny", in_channels=3, out_channels=3)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    command = [
        sys.executable,
        "scripts/export_model.py",
        "--override",
        f"network_def={json.dumps(TINY_NETWORK['network_def'])}",
    ]
    command += ["--clip-shape", "3", "32", "32", "3", "--format", "torchscript"]

    def export(checkpoint: str, output: str) -> subprocess.CompletedProcess:
        arguments = ["--checkpoint", str(tmp_path / checkpoint), "--output", str(tmp_path / output)]
        return subprocess.run(command + arguments, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    done = export("model.pt", "model.ts")
    assert done.returncode == 0, done.stderr[-2000:]
    verified = re.search(r"max abs difference vs eager PyTorch on the example: (\S+)", done.stderr)
    assert verified is not None and float(verified.group(1)) < TOLERANCE, done.stderr[-2000:]
    model = load_exported(tmp_path / "model.ts")
    clip = torch.rand(2, 3, 32, 32, 3)
    assert compare(model(clip), eager(source.eval(), clip))[0] < TOLERANCE
    (tmp_path / "bad.pt").write_bytes(b"\x00")
    failed = export("bad.pt", "bad.ts")
    assert failed.returncode == 1 and "bad.pt: cannot read checkpoint" in failed.stderr
    assert not (tmp_path / "bad.ts").exists()


@pytest.mark.slow
def test_monai_ckpt_export_with_trace_writes_a_faithful_model(tmp_path):
    """The Model Zoo's export command on the bundle (network_def overridden to the tiny variant to keep it short).

    No scan-backend override is needed: while tracing, the automatic backend is the portable PyTorch scan.
    """
    torch.manual_seed(4)
    source = Vivim("tiny", in_channels=3, out_channels=3)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
    command += ["--filepath", str(tmp_path / "model.ts"), "--ckpt_file", str(tmp_path / "model.pt")]
    command += ["--meta_file", BUNDLE_META, "--config_file", str(BUNDLE_CONFIGS / "inference.json")]
    command += ["--use_trace", "True", "--input_shape", str([1, *CLIP]).replace(" ", ""), "--key_in_ckpt", "model"]
    command += ["--network_def", str(TINY_NETWORK["network_def"])]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    files = {"metadata.json": "", "inference.json": ""}
    traced = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=files)
    assert json.loads(files["inference.json"]) == json.loads((BUNDLE_CONFIGS / "inference.json").read_text())
    clip = phantom_clip(batch=2)
    with torch.no_grad():
        diff, agree = compare(traced(clip), eager(source.eval(), clip))
    assert diff < TOLERANCE and agree == 1.0
    with pytest.warns(UserWarning, match="input shapes cannot be checked"):
        assert load_exported(tmp_path / "model.ts").metadata == {}
