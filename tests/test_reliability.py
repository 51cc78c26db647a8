"""Reliability of the bundle: a resumed training run reproduces an uninterrupted one; SIGKILL never leaves a truncated
output or loses the last checkpoint; a full disk or unwritable output folder fails clearly without partial files;
checkpoints of another model and impossible config values fail with short messages; inputs are never modified."""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import REPO_ROOT, TINY_NETWORK, bundle_augmentation, bundle_workflow, tree_digests
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.transforms import Compose, RandSpatialCropd
from PIL import Image

from vivim_monai.bundle_cli import bundle_command, find_bundle
from vivim_monai.data import load_cine, make_phantom_data
from vivim_monai.handlers import AtomicCheckpointSaver, ModelWeights, TrainingRNG
from vivim_monai.io import read_dicom_seg_labels
from vivim_monai.networks import PerFrameUNet, Vivim

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

TINY = {"spatial_size": [64, 64], **TINY_NETWORK}
# 2 training cases x 2 clips of 3 frames, batches of 2: 2 iterations per epoch, validation on 2 cases every epoch
TRAIN = {**TINY, "fold": 0, "epochs": 2, "batch_size": 2, "clip_length": 3, "max_numerosity": 2}
TEMPORARY = re.compile(r"^\..+\.tmp")  # atomic_write's hidden temporaries: .<name>.<random>.tmp<suffixes>
STATE_TEMPORARY = re.compile(r"^\.checkpoint_epoch=.+\.tmp")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """4 phantom cines of 6 frames (2 folds) in ``data/`` and a held-out one in ``test/``; tests only read them."""
    root = tmp_path_factory.mktemp("reliability")
    make_phantom_data(root, cases=4, frames=6, folds=2)
    return root


def _run(workflow: ConfigWorkflow) -> ConfigWorkflow:
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def _weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


# --- 1. resume: model, optimiser, scheduler, epoch and RNG ------------------------------------------------------


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    augment = bundle_augmentation()
    augment.set_random_state(7)
    rng = TrainingRNG(transforms=[augment])
    torch.save({"rng": rng.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["rng"]
    assert len(state["transforms"]) >= 8, "Compose, each Rand* transform and the wrapped RandAffine/RandAffineGrid"

    def draws() -> list:
        clip = {"image": torch.rand(3, 32, 32, 3), "label": torch.randint(0, 3, (1, 32, 32, 3))}
        out = augment(clip)
        return [torch.rand(3), np.random.rand(3), random.random(), out["image"], out["label"]]

    first = draws()
    rng.load_state_dict(state)
    second = draws()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="RNG state is of other training transforms"):
        TrainingRNG(transforms=[Compose([augment, RandSpatialCropd("image", roi_size=(16, 16, -1))])]).load_state_dict(
            state
        )


def _train(bundle_root: Path, data: Path, stop_after_epoch: int | None = None, **override: Any) -> dict[str, Any]:
    """One training workflow (a new ConfigWorkflow: new network, transforms, and ``set_determinism`` again);
    ``stop_after_epoch`` ends it there, after that epoch's validation and state checkpoint (an interruption)."""
    workflow = bundle_workflow(
        "train", ["train.json"], bundle_root=str(bundle_root), dataset_dir=str(data), **TRAIN, **override
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    if stop_after_epoch is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda engine: engine.terminate())
    workflow.run()
    result = {
        "weights": _weights(workflow.parser.get_parsed_content("network")),
        "epoch": trainer.state.epoch,
        "iteration": trainer.state.iteration,
        "epoch_length": len(trainer.data_loader),
    }
    workflow.finalize()
    return result


@pytest.mark.slow
def test_resumed_training_reaches_the_weights_of_an_uninterrupted_run(phantom, tmp_path):
    data = phantom / "data"
    uninterrupted = _train(tmp_path / "uninterrupted", data)
    interrupted = _train(tmp_path / "resumed", data, stop_after_epoch=1)
    assert (interrupted["epoch"], interrupted["iteration"]) == (1, interrupted["epoch_length"])
    state = tmp_path / "resumed" / "models" / "checkpoint_epoch=1.pt"
    assert set(torch.load(state, weights_only=True)) == {"model", "optimizer", "lr_scheduler", "trainer", "rng"}

    resumed = _train(tmp_path / "resumed", data, resume_checkpoint=str(state))
    assert resumed["epoch_length"] == 2 and (resumed["epoch"], resumed["iteration"]) == (2, 4), "epochs continue"
    difference = _max_abs_diff(uninterrupted["weights"], resumed["weights"])
    print(f"resume max abs weight difference: {difference:.3g} (tolerance 0: exact on CPU, num_workers=0)")
    assert difference == 0.0

    # control: the same resume without the RNG state draws other shuffles/augmentations and ends elsewhere
    without_rng = {
        "model": "@network",
        "optimizer": "@optimizer",
        "lr_scheduler": "@lr_scheduler",
        "trainer": "@train#trainer",
    }
    control = _train(
        tmp_path / "resumed",
        data,
        resume_checkpoint=str(state),
        **{"train#state_handlers#0#load_dict": without_rng, "ckpt_dir": str(tmp_path / "control")},
    )
    control_difference = _max_abs_diff(uninterrupted["weights"], control["weights"])
    print(f"resume without the RNG state: max abs weight difference {control_difference:.3g}")
    assert control_difference > 0.0


def test_resume_from_a_checkpoint_without_rng_state_or_from_a_model_file(phantom, tmp_path):
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom / "data"), **TRAIN}
    source = bundle_workflow("train", ["train.json"], **common)
    source.initialize()
    trainer = source.parser.get_parsed_content("train#trainer")
    trainer.state.epoch, trainer.state.epoch_length, trainer.state.iteration = 2, 2, 4  # finished: nothing to train
    old = {key: source.parser.get_parsed_content(key).state_dict() for key in ("network", "optimizer", "lr_scheduler")}
    old = {"model": old["network"], "optimizer": old["optimizer"], "lr_scheduler": old["lr_scheduler"]}
    torch.save({**old, "trainer": trainer.state_dict()}, tmp_path / "before_rng.pt")  # saved by an older version
    torch.save({"model": old["model"]}, tmp_path / "model.pt")
    source.finalize()

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # the bundle's logging.conf resets root's
    logging.getLogger("vivim_monai.handlers.resume").addHandler(handler)
    try:
        resumed = _run(
            bundle_workflow("train", ["train.json"], **common, resume_checkpoint=str(tmp_path / "before_rng.pt"))
        )
    finally:
        logging.getLogger("vivim_monai.handlers.resume").removeHandler(handler)
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    assert any("has no rng state (saved by an older version)" in w for w in warnings), warnings

    with pytest.raises(RuntimeError) as caught:
        _run(bundle_workflow("train", ["train.json"], **common, resume_checkpoint=str(tmp_path / "model.pt")))
    message = str(_cause(caught.value, ValueError))
    assert message.startswith(f"{tmp_path / 'model.pt'}: not a training state checkpoint: it has ['model']")


# --- 2. SIGKILL at random points never leaves a truncated final file --------------------------------------------


def _files(folder: Path) -> dict[str, int]:
    """Inode of everything under ``folder`` by path (a file replaced by a rename gets a new inode)."""
    found = {}
    for path in folder.rglob("*") if folder.is_dir() else []:
        try:
            found[str(path)] = path.stat().st_ino
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return found


def _watch_and_kill(
    command: list[str],
    cwd: Path,
    watch: Path,
    after_writing: float | None = None,
    at_temporary: int | None = None,
    temporaries: re.Pattern = TEMPORARY,
) -> tuple[bool, float]:
    """Run ``command`` and SIGKILL it ``after_writing`` seconds after it first creates or replaces something under
    ``watch``, or as soon as the ``at_temporary``-th new temporary file (names matching ``temporaries``) appears
    there, i.e. mid-write. What was under ``watch`` before (earlier runs) does not count. Returns (killed while
    running, seconds since the start)."""
    before, writing, new_temporaries = _files(watch), None, set()
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while process.poll() is None:
            now = time.perf_counter()
            changed = [path for path, inode in _files(watch).items() if before.get(path) != inode]
            writing = now if writing is None and changed else writing
            new_temporaries.update(path for path in changed if temporaries.match(Path(path).name))
            due = after_writing is not None and writing is not None and now - writing >= after_writing
            if due or (at_temporary is not None and len(new_temporaries) >= at_temporary):
                process.kill()
                process.wait()
                return True, now - start
            if now - start > 300:
                raise TimeoutError(f"{command} still running after 300 s")
            time.sleep(0.001)
        return False, time.perf_counter() - start
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _timeline(command: list[str], cwd: Path, watch: Path, names: re.Pattern) -> tuple[float, float, float]:
    """Run ``command`` to the end; (seconds to the first and the last final file matching ``names``, total)."""
    start, times = time.perf_counter(), {}
    process = subprocess.Popen(command, cwd=cwd, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None:
        if watch.is_dir():
            for path in watch.rglob("*"):
                if names.search(path.name) and not TEMPORARY.match(path.name):
                    times.setdefault(path.name, time.perf_counter() - start)
        time.sleep(0.002)
    total = time.perf_counter() - start
    assert process.returncode == 0, process.stderr.read().decode()[-3000:]
    assert times, f"no output matching {names.pattern} appeared"
    return min(times.values()), max(times.values()), total


def _inference_outputs(out: Path) -> dict[str, Any]:
    """Decode every final output under ``out`` (raises on a truncated or unreadable file); stray temporaries are
    returned, anything else fails."""
    decoded: dict[str, Any] = {"temporaries": []}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.name
        if TEMPORARY.match(name):
            decoded["temporaries"].append(str(path))
        elif name.endswith("_seg.nii.gz"):
            decoded[name] = np.asarray(nib.load(path).dataobj)
        elif name.endswith("_seg.dcm"):
            decoded[name] = read_dicom_seg_labels(path, num_frames=decoded_frames(path))
        elif name.endswith("_overlay.gif"):
            with Image.open(path) as gif:
                frames = []
                for index in range(gif.n_frames):
                    gif.seek(index)
                    frames.append(np.asarray(gif.convert("RGB")))
            decoded[name] = np.stack(frames)
        elif name.endswith("_areas.csv"):
            decoded[name] = path.read_text(encoding="utf-8")
        elif name.endswith("_areas.png"):
            with Image.open(path) as plot:
                decoded[name] = np.asarray(plot.convert("RGB"))
        else:
            raise AssertionError(f"unexpected file {path}")
    return decoded


def decoded_frames(seg_path: Path) -> int:
    """Frames of the SEG's source cine (the case's NIfTI sibling gives T)."""
    nifti = seg_path.with_name(seg_path.name.replace("_seg.dcm", "_seg.nii.gz"))
    return int(nib.load(nifti).shape[-1]) if nifti.is_file() else int(pydicom.dcmread(seg_path).NumberOfFrames)


def _check_against_reference(decoded: dict[str, Any], reference: dict[str, Any], shapes: dict[str, tuple]) -> int:
    """Every final file decoded equals the reference run's (NIfTI/SEG labels, GIF frames, CSV text); returns how
    many were checked."""
    checked = 0
    for name, value in decoded.items():
        if name == "temporaries":
            continue
        case = name.rsplit("_", 2)[0] if name.endswith(("_seg.nii.gz", "_seg.dcm")) else name.rsplit("_", 1)[0]
        if name.endswith((".nii.gz", ".dcm")):
            assert value.shape == shapes[case], f"{name}: shape {value.shape}, cine {shapes[case]}"
        if name.endswith(".csv"):
            assert len(value.splitlines()) == shapes[case][-1] + 1, f"{name}: not T + 1 lines"
        np.testing.assert_array_equal(value, reference[name], err_msg=name)
        checked += 1
    return checked


@pytest.mark.slow
def test_sigkill_during_inference_never_leaves_a_truncated_output(phantom, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"model": Vivim("tiny", 3, 3).state_dict()}, models / "model.pt")
    inputs = sorted(str(p) for p in (phantom / "data").glob("*.dcm")) + [str(phantom / "test" / "heldout.dcm")]
    shapes = {Path(p).stem: tuple(load_cine(p).shape[1:]) for p in inputs}
    ends = ("_seg.nii.gz", "_seg.dcm", "_overlay.gif", "_areas.csv", "_areas.png")
    expected = {f"{case}{end}" for case in shapes for end in ends}

    def command(out: Path) -> list[str]:
        overrides = {**TINY, "bundle_root": str(tmp_path), "input_files": inputs, "output_dir": str(out)}
        return bundle_command(find_bundle(), ["inference.json"], overrides)

    reference_dir = tmp_path / "reference"
    first, last, total = _timeline(command(reference_dir), tmp_path, reference_dir, re.compile(r"_(seg|overlay|areas)"))
    reference = _inference_outputs(reference_dir)
    assert set(reference) - {"temporaries"} == expected and not reference["temporaries"]

    out = tmp_path / "out"  # every killed run and the final rerun write into the same folder
    draw = random.Random(0)
    points = [{"after_writing": draw.uniform(0.0, last - first)} for _ in range(3)]
    points.append({"at_temporary": draw.randint(1, len(expected) - 2)})
    tried = survived = 0
    for point in points:
        killed, seconds = _watch_and_kill(command(out), tmp_path, out, **point)
        if not killed:
            continue
        tried += 1
        decoded = _inference_outputs(out) if out.is_dir() else {"temporaries": []}
        complete = _check_against_reference(decoded, reference, shapes)
        survived += 1
        print(f"inference killed at {seconds:.2f} s ({point}): {complete} complete files so far")
    rerun = subprocess.run(command(out), cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = _inference_outputs(out)
    assert _check_against_reference(final, reference, shapes) == len(expected)
    print(
        f"inference: run {total:.1f} s (outputs from {first:.1f} to {last:.1f} s); kill points tried {tried}, "
        f"survived {survived}; stray hidden temporaries after the rerun: {len(final['temporaries'])}"
    )
    assert tried >= 3 and survived == tried


def _checkpoints(models: Path) -> tuple[dict[int, dict], list[str]]:
    """Load every final checkpoint in ``models`` (weights_only); stray temporaries are returned, anything else
    fails."""
    states, temporaries = {}, []
    for path in sorted(p for p in models.iterdir() if p.is_file()) if models.is_dir() else []:
        if TEMPORARY.match(path.name):
            temporaries.append(path.name)
            continue
        state = torch.load(path, weights_only=True)  # a truncated file raises here
        match = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", path.name)
        if match:
            assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer", "rng"}
            states[int(match.group(1))] = state
        else:
            assert path.name == "model.pt" and set(state) == {"model"}, path.name
    return states, temporaries


@pytest.mark.slow
def test_sigkill_during_training_never_loses_the_last_checkpoint(phantom, tmp_path):
    data = phantom / "data"

    def command(root: Path, **extra: Any) -> list[str]:
        overrides = {**TRAIN, "bundle_root": str(root), "dataset_dir": str(data), **extra}
        return bundle_command(find_bundle(), ["train.json"], overrides)

    reference_root = tmp_path / "reference"
    first, last, total = _timeline(command(reference_root), tmp_path, reference_root / "models", re.compile(r"\.pt$"))
    states, _ = _checkpoints(reference_root / "models")
    reference = states[2]["model"]

    draw = random.Random(1)
    points = [
        {"after_writing": draw.uniform(0.0, last - first)},  # from the first model.pt to the last state
        {"at_temporary": 1},  # while the epoch-1 state is written
        {"at_temporary": 2},  # while the epoch-2 state is written (ignite removed epoch 1 before saving it)
    ]
    tried = survived = 0
    differences = []
    for index, point in enumerate(points):
        root = tmp_path / f"killed{index}"
        # counting temporaries of the state checkpoints only (the best-model saver writes model.pt before them)
        killed, seconds = _watch_and_kill(
            command(root), tmp_path, root / "models", temporaries=STATE_TEMPORARY, **point
        )
        if not killed:
            continue
        tried += 1
        states, temporaries = _checkpoints(root / "models")
        resume = {"resume_checkpoint": str(root / "models" / f"checkpoint_epoch={max(states)}.pt")} if states else {}
        rerun = subprocess.run(
            command(root, **resume), cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        final, _ = _checkpoints(root / "models")
        differences.append(_max_abs_diff(reference, final[2]["model"]))
        print(
            f"training killed at {seconds:.2f} s ({point}): checkpoints left {sorted(states)}, temporaries "
            f"{temporaries}; resumed to epoch 2, max abs weight difference {differences[-1]:.3g}"
        )
        assert differences[-1] == 0.0
        survived += 1
    print(f"training: run {total:.1f} s; kill points tried {tried}, survived {survived}")
    assert tried >= 2 and survived == tried


# --- 3. full disk / unwritable output folder: a clear error and no partial file ---------------------------------


def _chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and its causes: MONAI re-raises every error of a config expression or component as a RuntimeError
    ("Failed to evaluate"/"Failed to instantiate") from the original, which the traceback prints just above."""
    chain = []
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _messages(err: BaseException) -> list[str]:
    return [str(e) for e in _chain(err)]


def _cause(err: BaseException, kind: type) -> Any:
    """The first exception of type ``kind`` in ``err``'s chain."""
    found = [e for e in _chain(err) if isinstance(e, kind)]
    assert found, f"no {kind.__name__} in {_messages(err)}"
    return found[0]


def _inference(bundle_root: Path, inputs: list[Path], **override: Any) -> ConfigWorkflow:
    overrides = {**TINY, "bundle_root": str(bundle_root), "input_files": [str(p) for p in inputs], **override}
    return bundle_workflow("infer", ["inference.json"], **overrides)


@pytest.mark.parametrize("how", ["read_only_folder", "folder_under_a_file", "checkpoint_folder_under_a_file"])
def test_unwritable_output_folder_fails_clearly(phantom, tmp_path, how):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    if how == "read_only_folder":
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions (folder_under_a_file covers an unwritable folder)")
        out, error, reason = tmp_path / "read_only", PermissionError, "Permission denied"
        out.mkdir(mode=0o500)
    else:
        out, error, reason = blocker / "sub", NotADirectoryError, "Not a directory"
    try:
        if how == "checkpoint_folder_under_a_file":
            common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom / "data"), "ckpt_dir": str(out)}
            workflow = bundle_workflow("train", ["train.json"], **common, **TRAIN)
        else:
            workflow = _inference(tmp_path, [phantom / "data" / "phantom000.dcm"], output_dir=str(out))
        with pytest.raises(Exception) as caught:
            _run(workflow)
        errors = [e for e in _messages(caught.value) if f"cannot write {out}" in e]
        assert errors and reason in errors[0] and len(errors[0]) < 300, _messages(caught.value)
        assert any(isinstance(e, error) for e in _chain(caught.value))
        print(f"{how}: {type(caught.value).__name__}: {errors[0]}")
        assert blocker.read_text() == "not a folder\n"
        assert not out.exists() or not any(out.iterdir()), "no partial or temporary file"
    finally:
        if out.is_dir():
            out.chmod(0o700)


class _FullDisk:
    """A file opened for writing that accepts ``room`` bytes, writes the part of the next write that fits and then
    fails with ENOSPC, as a full disk does; no ``fileno`` (Pillow would otherwise write through the descriptor)."""

    def __init__(self, handle: Any, room: int) -> None:
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data: Any) -> int:
        if self.written + len(data) > self.room:
            part = max(self.room - self.written, 0)
            self.handle.write(data[:part])
            self.written += part
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> "_FullDisk":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


def _fill_disk(monkeypatch, marker: str, room: int = 200) -> None:
    """From now on, temporaries whose name contains ``marker`` get :class:`_FullDisk` handles."""
    real_open = builtins.open

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
            name = Path(file).name
            if TEMPORARY.match(name) and marker in name:
                return _FullDisk(handle, room)
        return handle

    monkeypatch.setattr(builtins, "open", full_open)


KIND_FILES = {"nifti": "_seg.nii.gz", "dicom_seg": "_seg.dcm", "overlay": "_overlay.gif", "csv": "_areas.csv"}


@pytest.mark.parametrize("kind", list(KIND_FILES))
def test_full_disk_fails_clearly_and_leaves_no_partial_file(phantom, tmp_path, monkeypatch, kind):
    out = tmp_path / "out"
    workflow = _inference(tmp_path, [phantom / "data" / "phantom000.dcm"], output_dir=str(out))
    _fill_disk(monkeypatch, KIND_FILES[kind])
    with pytest.raises(RuntimeError) as caught:
        _run(workflow)
    target = out / "phantom000" / f"phantom000{KIND_FILES[kind]}"
    error = _cause(caught.value, OSError)
    assert error.errno == errno.ENOSPC
    assert str(error) == f"[Errno {errno.ENOSPC}] cannot write {target}: No space left on device"
    earlier = list(KIND_FILES)[: list(KIND_FILES).index(kind)]
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(f"phantom000{KIND_FILES[k]}" for k in earlier)


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    network = torch.nn.Linear(64, 8)
    engine = Engine(lambda engine, batch: network.weight.data.add_(1.0))
    objects = {"model": network, "trainer": engine}  # like the bundle's rolling state checkpoint
    saver = AtomicCheckpointSaver(str(tmp_path / "models"), objects, save_interval=1, n_saved=1)
    saver.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: _fill_disk(monkeypatch, "checkpoint_"))
    with pytest.raises(OSError) as caught:
        engine.run([0], max_epochs=2)
    target = tmp_path / "models" / "checkpoint_epoch=2.pt"
    assert str(caught.value) == f"[Errno {errno.ENOSPC}] cannot write {target}: No space left on device"
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["checkpoint_epoch=1.pt"], "kept, no partial file"
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 1 and float(state["model"]["weight"][0, 0] - network.weight[0, 0]) == -1.0


# --- 4. checkpoints of another model: a clear, short error ------------------------------------------------------


@pytest.mark.parametrize(
    "workflow, saved, expected",
    [
        ("evaluate", {"variant": "tiny", "out_channels": 2}, "output classes 2 in the checkpoint vs 3 here"),
        ("inference", {"variant": "tiny", "out_channels": 2}, "output classes 2 in the checkpoint vs 3 here"),
        ("inference", {"variant": "b0", "out_channels": 3}, "stage widths [32, 64, 160, 256] in the checkpoint"),
    ],
)
def test_checkpoint_of_another_model_fails_clearly(phantom, tmp_path, workflow, saved, expected):
    checkpoint = tmp_path / "models" / "model.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": Vivim(in_channels=3, **saved).state_dict()}, checkpoint)
    if workflow == "evaluate":
        common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom / "data"), "output_dir": str(tmp_path / "e")}
        configured = bundle_workflow("eval", ["train.json", "evaluate.json"], **common, **TRAIN)
    else:
        configured = _inference(tmp_path, [phantom / "data" / "phantom000.dcm"], output_dir=str(tmp_path / "out"))
    with pytest.raises(RuntimeError) as caught:
        _run(configured)
    message = str(_cause(caught.value, ValueError))
    print(f"{workflow}, checkpoint {saved}: {message}")
    assert message.startswith(f"{checkpoint}: checkpoint does not fit Vivim(variant='tiny', in_channels=3")
    assert expected in message and len(message) < 600


def test_checkpoint_mismatch_of_other_networks_is_summarised():
    small = {"channels": (8, 16), "strides": (2,), "num_res_units": 1}
    weights = ModelWeights(PerFrameUNet(3, 3, **small), checkpoint="unet.pt")
    with pytest.raises(ValueError) as caught:
        weights.load_state_dict({"model": PerFrameUNet(3, 2, **small).state_dict()})
    message = str(caught.value)
    assert message.startswith("unet.pt: checkpoint does not fit PerFrameUNet(in_channels=3, out_channels=3)")
    assert "tensors of another shape (e.g. " in message and "(24, 2, 3, 3) vs (24, 3, 3, 3)" in message
    assert len(message) < 600
    weights.load_state_dict(PerFrameUNet(3, 3, **small).state_dict())  # bare weights of the right shape load


# --- 5. impossible config values: the parameter and its range -------------------------------------------------


@pytest.mark.parametrize(
    "config, override, expected",
    [
        ("train.json", {"clip_length": 0}, "clip_length must be >= 1, got 0"),
        ("inference.json", {"overlap": 1.0}, "overlap as a fraction must be in [0, 1), got 1.0"),
        ("inference.json", {"overlap": 5}, "overlap in frames must be in [0, clip_length=5), got 5"),
    ],
)
def test_impossible_config_values_fail_clearly(phantom, tmp_path, config, override, expected):
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom / "data"), "output_dir": str(tmp_path / "o")}
    settings = {**TRAIN, **override} if config == "train.json" else {**TINY, **override}
    with pytest.raises(Exception) as caught:
        _run(bundle_workflow("train" if config == "train.json" else "infer", [config], **common, **settings))
    assert any(expected in message for message in _messages(caught.value)), _messages(caught.value)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.nii.gz")), "nothing was written"


# --- 6. inputs are never modified ---------------------------------------------------------------------------------


def test_train_evaluate_and_infer_never_modify_their_inputs(phantom, tmp_path):
    before = tree_digests(phantom / "data", phantom / "test")
    common = {"bundle_root": str(tmp_path), "dataset_dir": str(phantom / "data")}
    # all 4 cases, no validation; the last weights are saved as model.pt
    _run(bundle_workflow("train", ["train.json"], **common, **{**TRAIN, "fold": -1, "epochs": 1, "max_numerosity": 1}))
    report = {"validate#handlers#3#include_hd95": False, "validate#handlers#3#plot": False}  # the slow parts
    _run(
        bundle_workflow(
            "eval", ["train.json", "evaluate.json"], **common, **TRAIN, output_dir=str(tmp_path / "eval"), **report
        )
    )
    assert (tmp_path / "eval" / "metrics_summary.json").is_file()
    infer = _run(bundle_workflow("infer", ["inference.json"], **common, **TINY, output_dir=str(tmp_path / "out")))
    assert len(infer.parser.get_parsed_content("input_files")) == 4, "the data folder's DICOMs"
    assert len(list((tmp_path / "out").rglob("*_seg.nii.gz"))) == 4
    after = tree_digests(phantom / "data", phantom / "test")
    assert after.keys() == before.keys(), f"files appeared or vanished: {set(after) ^ set(before)}"
    assert after == before, "an input changed"
