"""A new cine from boxes or a few labelled frames (vivim_monai.fewshot): prompts, partial labels, drift control,
tracking, few-shot adaptation, the bundle's adapt.json and the evaluation protocol."""

from __future__ import annotations

import json
import re
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, shared_dir
from vivim_monai.bundle_cli import bundle_command
from vivim_monai.fewshot import (
    UNLABELLED,
    AdaptConfig,
    BoxPrompt,
    DriftLimits,
    FewShotAdapter,
    PromptError,
    box_of_mask,
    check_boxes,
    parse_boxes,
    partial_label,
    track_boxes,
)
from vivim_monai.fewshot.evaluation import choose_frames, score_frames
from vivim_monai.fewshot.segment import segment_with_prompts, spread_frames
from vivim_monai.fewshot.workflow import PromptedCineWorkflow

H, W, T = 64, 80, 10
#: A tiny recipe for the logic tests (the shipped one is in AdaptConfig's defaults).
TINY = AdaptConfig(size=64, steps=40, batch=4, learning_rate=3e-3)


def disk_cine(frames: int = T, radius: int = 12, vanish_from: int | None = None, second: bool = False):
    """A grey cine with a bright disk moving right 2 px a frame (class 1) and optionally a dimmer square (class 2);
    from ``vanish_from`` on the disk is gone. Returns the uint8 cine (1, H, W, T) and the truth (H, W, T)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:H, :W]
    cine = np.zeros((1, H, W, frames), np.uint8)
    truth = np.zeros((H, W, frames), np.uint8)
    for t in range(frames):
        disk = (rows - 30) ** 2 + (cols - 22 - 2 * t) ** 2 < radius**2
        if vanish_from is not None and t >= vanish_from:
            disk[:] = False
        square = (abs(rows - 45) < 8) & (abs(cols - 62) < 8) if second else np.zeros_like(disk)
        truth[..., t] = disk + 2 * square
        cine[0, ..., t] = np.clip(50 + rng.normal(0, 8, (H, W)) + 170 * disk + 90 * square, 0, 255)
    return torch.from_numpy(cine), truth


class BrightRegionSAM:
    """Stands in for LiteMedSAM: the mask of a box is the bright pixels (> 128) inside it."""

    def embed(self, image: torch.Tensor, bf16: bool = False):
        return image.float().mean(0), (0, 0)

    def decode_box(self, embedding, inner, size, box):
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        inside = torch.zeros(size, dtype=torch.bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        return torch.where(inside & (embedding > 128), 5.0, -5.0), 0.9


# ---- prompts and partial labels


def test_parse_boxes_reads_rows_dicts_and_json():
    expected = [BoxPrompt(3, (1.0, 2.0, 30.0, 40.0), 1), BoxPrompt(5, (0.0, 0.0, 9.0, 9.0), 2)]
    assert parse_boxes([[3, 1, 2, 30, 40], [5, 0, 0, 9, 9, 2]]) == expected
    assert parse_boxes("[[3, 1, 2, 30, 40], [5, 0, 0, 9, 9, 2]]") == expected
    assert parse_boxes([{"frame": 3, "box": [1, 2, 30, 40]}]) == expected[:1]
    assert parse_boxes([3, 1, 2, 30, 40]) == expected[:1]
    assert parse_boxes(None) == []


@pytest.mark.parametrize(
    "boxes, message",
    [
        ("[[3, 1, 2", "cine.dcm boxes: not JSON"),
        ([[3, 1, 2, 30]], "is not [frame, x0, y0, x1, y1(, label)]"),
        ([[1.5, 1, 2, 30, 40]], "is not [frame, x0, y0, x1, y1(, label)]"),
    ],
)
def test_parse_boxes_names_the_input(boxes, message):
    with pytest.raises(PromptError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_boxes(boxes, "cine.dcm boxes")


@pytest.mark.parametrize(
    "box, message",
    [
        (BoxPrompt(10, (1, 1, 5, 5)), "frame index out of range; the cine has frames 0..9"),
        (BoxPrompt(-1, (1, 1, 5, 5)), "frame index out of range"),
        (BoxPrompt(0, (1, 1, 80, 5)), "outside the 80 x 64 (width x height) frame"),
        (BoxPrompt(0, (-1, 1, 5, 5)), "outside the 80 x 64"),
        (BoxPrompt(0, (5, 1, 5, 5)), "needs x0 < x1 and y0 < y1"),
        (BoxPrompt(0, (1, 1, 5, float("nan"))), "finite"),
        (BoxPrompt(0, (1, 1, 5, 5), 0), "foreground class index"),
    ],
)
def test_check_boxes_rejects_bad_boxes(box, message):
    with pytest.raises(PromptError, match=re.escape(message)) as err:
        check_boxes([box], (H, W, T), "my_cine.dcm")
    assert str(err.value).startswith("my_cine.dcm: box 0")


def test_box_of_mask_grows_and_clips():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True  # rows 2..4, columns 3..8
    assert box_of_mask(mask) == (3, 2, 8, 4)
    assert box_of_mask(mask, margin=3) == (0, 0, 11, 7)
    assert box_of_mask(np.zeros((4, 4))) is None


def test_partial_label_convention_and_frames_list():
    _, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., [2, 7]] = truth[..., [2, 7]]
    volume, frames = partial_label(label, (H, W, T))
    assert frames == [2, 7] and (volume[..., 3] == UNLABELLED).all() and np.array_equal(volume[..., 2], truth[..., 2])
    # with a list, the other frames are ignored whatever they hold
    volume, frames = partial_label(truth[None], (H, W, T), frames=[4])
    assert frames == [4] and (volume[..., 2] == UNLABELLED).all() and np.array_equal(volume[..., 4], truth[..., 4])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda y: y[:-1], r"frames of \(H, W\) \(63, 80\) differ from the cine's \(64, 80\)"),
        (lambda y: y[..., :-1], "9 label frames for a cine of 10 frames"),
        (lambda y: np.full_like(y, UNLABELLED), "no labelled frame"),
        (lambda y: np.where(np.arange(T) == 3, 0, UNLABELLED).astype(np.uint8) * np.ones_like(y), "hold no foreground"),
        (
            lambda y: np.where(np.arange(T) == 3, 1, UNLABELLED).astype(np.uint8) * np.ones_like(y),
            "foreground everywhere",
        ),
        (lambda y: np.where(np.arange(T) == 3, 3 * y, UNLABELLED).astype(np.uint8), "class index 3 for 2 classes"),
        (lambda y: y.astype(float) + 0.5, "non-integer"),
    ],
)
def test_partial_label_rejects_bad_labels(make, message):
    _, truth = disk_cine()
    with pytest.raises(PromptError, match=message) as err:
        partial_label(make(truth), (H, W, T), num_classes=2, source="partial.nii.gz")
    assert str(err.value).startswith("partial.nii.gz: ")


def test_partial_label_rejects_unlabelled_pixels_inside_a_labelled_frame():
    _, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., 4] = truth[..., 4]
    label[:3, :3, 4] = UNLABELLED
    with pytest.raises(PromptError, match=r"labelled frames \[4\] hold 255"):
        partial_label(label, (H, W, T))


# ---- drift control and tracking


def test_drift_limits_say_why_a_track_stops():
    limits = DriftLimits(max_growth=2.0, max_shrink=3.0, min_overlap=0.3, min_area=8, max_fraction=0.6)
    previous = np.zeros((20, 20), bool)
    previous[5:15, 5:15] = True  # 100 px
    same = previous.copy()
    assert limits.check(same, previous) is None
    grown = np.zeros_like(previous)
    grown[3:18, 3:18] = True  # 225 px > 2 x 100
    assert limits.check(grown, previous).startswith("mask exploded (100 -> 225 px")
    shrunk = np.zeros_like(previous)
    shrunk[5:10, 5:10] = True  # 25 px < 100 / 3
    assert limits.check(shrunk, previous).startswith("mask collapsed (100 -> 25 px")
    moved = np.zeros_like(previous)
    moved[10:20, 10:20] = True  # same size, IoU 25 / 175
    assert limits.check(moved, previous).startswith("mask jumped (IoU 0.14")
    tiny = np.zeros_like(previous)
    tiny[0, :5] = True
    assert limits.check(tiny, previous).startswith("mask vanished (5 px < 8)")
    flood = np.ones_like(previous)
    assert limits.check(flood, None).startswith("mask floods 100% of the frame")
    rng = np.random.default_rng(1)
    patch = rng.normal(size=(30, 40))
    assert limits.check_images(patch, 2 * patch + 5) is None  # same view, other gain and offset
    assert limits.check_images(patch, 0.8 * patch + 0.6 * rng.normal(size=patch.shape)) is None  # speckle changes
    assert limits.check_images(patch, rng.normal(size=patch.shape)).startswith("image under the box changed")


def test_tracking_follows_a_moving_disk_both_ways():
    cine, truth = disk_cine()
    start = 5
    result = track_boxes(cine, [BoxPrompt(start, box_of_mask(truth[..., start], 2))], model=BrightRegionSAM())
    assert result.status == ["tracked"] * 5 + ["prompted"] + ["tracked"] * 4
    dice = score_frames(result.labels, truth, range(T))["dice_per_frame"]
    assert min(dice) > 0.95
    assert result.events == []


def test_tracking_stops_and_reports_a_lost_structure_instead_of_painting():
    cine, truth = disk_cine(vanish_from=7)
    result = track_boxes(cine, [BoxPrompt(2, box_of_mask(truth[..., 2], 2))], model=BrightRegionSAM())
    assert result.status[:7] == ["tracked", "tracked", "prompted"] + ["tracked"] * 4
    assert result.status[7:] == ["lost"] * 3
    assert not result.labels[..., 7:].any(), "a lost track leaves background, never a guessed mask"
    assert len(result.events) == 1 and "forward: stopped at frame 7: image under the box changed" in result.events[0]
    # with the view check off, the mask check catches it
    mask_only = DriftLimits(min_correlation=-1.0)
    again = track_boxes(cine, [BoxPrompt(2, box_of_mask(truth[..., 2], 2))], model=BrightRegionSAM(), limits=mask_only)
    assert again.status == result.status and "forward: stopped at frame 7: mask vanished" in again.events[0]


def test_two_prompts_split_the_cine_and_two_classes_keep_their_labels():
    cine, truth = disk_cine(second=True)
    disk = (truth == 1).astype(np.uint8)
    square = (truth == 2).astype(np.uint8)
    prompts = [
        BoxPrompt(1, box_of_mask(disk[..., 1], 2)),
        BoxPrompt(8, box_of_mask(disk[..., 8], 2)),
        BoxPrompt(4, box_of_mask(square[..., 4], 1), label=2),
    ]
    result = track_boxes(cine, prompts, model=BrightRegionSAM())
    assert [result.status[t] for t in (1, 4, 8)] == ["prompted"] * 3
    # frames 0..4 follow the box of frame 1 and frames 5..9 the box of frame 8 (each frame its nearest prompt)
    assert result.source == [0] * 5 + [1] * 5
    assert set(np.unique(result.labels)) == {0, 1, 2}
    for cls in (1, 2):
        scores = score_frames((result.labels == cls).astype(np.uint8), (truth == cls).astype(np.uint8), range(T))
        assert scores["dice"] > 0.9, cls


# ---- adaptation, the workflow and the protocol


def test_choose_frames_takes_the_largest_mask_then_spreads():
    truth = np.zeros((4, 4, 10), np.uint8)
    for t, area in enumerate([1, 2, 3, 4, 5, 9, 4, 3, 2, 1]):
        truth.reshape(16, 10)[:area, t] = 1
    assert choose_frames(truth, 1) == [5]
    assert choose_frames(truth, 3) == [5, 1, 8]  # middles of thirds: 1, 5, 8 (5 is the largest)
    assert choose_frames(truth, 5) == [5, 1, 3, 7, 9]  # middles of fifths: 1, 3, 5, 7, 9
    assert spread_frames(list(range(20)), 4) == [2, 7, 12, 17]


def test_adaptation_from_two_labelled_frames_segments_the_others():
    cine, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., [1, 8]] = truth[..., [1, 8]]
    result = segment_with_prompts(cine, label=label, config=TINY, method="adapt")
    assert result.method == "adapt" and result.trained_frames == [1, 8]
    assert result.status[1] == "labelled" and result.status[4] == "segmented"
    others = [t for t in range(T) if t not in (1, 8)]
    assert score_frames(result.labels, truth, others)["dice"] > 0.85


def test_adaptation_learns_two_classes():
    cine, truth = disk_cine(second=True)
    label = np.full_like(truth, UNLABELLED)
    label[..., [2, 7]] = truth[..., [2, 7]]
    result = segment_with_prompts(cine, label=label, config=TINY, num_classes=3, method="adapt")
    others = [t for t in range(T) if t not in (2, 7)]
    for cls in (1, 2):
        pred, true = (result.labels == cls).astype(np.uint8), (truth == cls).astype(np.uint8)
        assert score_frames(pred, true, others)["dice"] > 0.8, cls


def test_adaptation_starts_from_a_released_model_by_name():
    state = torch.load(REPO_ROOT / "bundle" / "models" / "carotid_lumen.pt", map_location="cpu", weights_only=True)
    key = "network.encoder._conv_stem.weight"
    same = FewShotAdapter(2, start="carotid_lumen")
    assert torch.equal(same.network.state_dict()[key], state["model"][key].float())
    assert same.start.endswith("carotid_lumen.pt")
    head = "network.segmentation_head.0.weight"
    assert torch.equal(same.network.state_dict()[head], state["model"][head].float())
    three = FewShotAdapter(3, start="carotid_lumen")
    assert three.start.endswith("(head re-initialised for 3 classes)")
    assert torch.equal(three.network.state_dict()[key], state["model"][key].float())
    with pytest.raises(ValueError, match=r"no released model 'liver'; released: \['bagls_glottis', 'carotid_lumen'\]"):
        FewShotAdapter(2, start="liver")


def _write_cine_and_partial_label(folder, frame: int):
    """The disk cine as ``cine.nii.gz`` and its label on ``frame`` alone (other frames 255) as ``partial.nii.gz``."""
    cine, truth = disk_cine()
    nib.save(nib.Nifti1Image(cine[0].numpy(), np.eye(4)), folder / "cine.nii.gz")
    label = np.full_like(truth, UNLABELLED)
    label[..., frame] = truth[..., frame]
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "partial.nii.gz")
    return str(folder / "cine.nii.gz"), str(folder / "partial.nii.gz"), truth


def test_workflow_writes_outputs_and_bad_input_writes_nothing(tmp_path):
    source, partial, truth = _write_cine_and_partial_label(tmp_path, 3)
    out = tmp_path / "out"
    bad = PromptedCineWorkflow(source, out, boxes=[[3, 10, 10, 200, 20]], recipe={"size": 64, "steps": 2})
    with pytest.raises(PromptError, match=r"cine.nii.gz boxes: box 0 .* outside the 80 x 64"):
        bad.run()
    wrong = np.full((H, W, T + 1), UNLABELLED, np.uint8)
    nib.save(nib.Nifti1Image(wrong, np.eye(4)), tmp_path / "wrong.nii.gz")
    with pytest.raises(PromptError, match="wrong.nii.gz label: 11 label frames for a cine of 10 frames"):
        PromptedCineWorkflow(source, out, labels=str(tmp_path / "wrong.nii.gz")).run()
    assert not out.exists(), "bad input must leave nothing behind"
    reports = PromptedCineWorkflow(
        source, out, labels=partial, recipe={"size": 64, "steps": 40, "learning_rate": 3e-3}
    ).run()
    folder = out / "cine"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        f"cine{end}"
        for end in ("_adapted.pt", "_areas.csv", "_areas.png", "_cine.dcm", "_overlay.gif", "_prompts.json")
        + ("_seg.dcm", "_seg.nii.gz")
    )
    report = json.loads((folder / "cine_prompts.json").read_text())
    assert report == json.loads(json.dumps(reports[0]))
    # auto: LiteMedSAM's tracks from the labelled frame cross this clear cine, so tracked frames join as labels
    trained = report["trained_frames"]
    assert 3 in trained and len(trained) > 1 and report["track_lost_frames"] == []
    assert report["status_counts"] == {"segmented": 10 - len(trained), "labelled": len(trained)}
    assert report["events"][-1].startswith("auto: the tracks from the labelled frames reach 100% of the frames")
    written = nib.load(folder / "cine_seg.nii.gz").get_fdata().astype(np.uint8)
    assert score_frames(written, truth, [t for t in range(T) if t != 3])["dice"] > 0.8
    assert not list(tmp_path.rglob("*.tmp*"))


@pytest.mark.integration
def test_adapt_json_runs_from_the_bundle_command_line(tmp_path):
    source, partial, truth = _write_cine_and_partial_label(tmp_path, 6)
    overrides = {
        "input_files": source,
        "labels": partial,
        "output_dir": str(tmp_path / "out"),
        "recipe": {"size": 64, "steps": 30, "batch": 4, "learning_rate": 0.003},
        "output_kinds": ["nifti", "csv"],
    }
    command = bundle_command(REPO_ROOT / "bundle", ["adapt.json"], overrides)
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cine: track+adapt, 10 frames" in run.stdout  # auto: the tracks from the labelled frame cross the cine
    written = nib.load(tmp_path / "out" / "cine" / "cine_seg.nii.gz").get_fdata().astype(np.uint8)
    assert score_frames(written, truth, [t for t in range(T) if t != 6])["dice"] > 0.8
    bad = {**overrides, "labels": None, "boxes": [[12, 10, 10, 30, 30]], "output_dir": str(tmp_path / "bad")}
    run = subprocess.run(bundle_command(REPO_ROOT / "bundle", ["adapt.json"], bad), capture_output=True, text=True)
    assert run.returncode != 0
    assert "cine.nii.gz boxes: box 0 [10.0, 10.0, 30.0, 30.0] on frame 12: frame index out of range" in run.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_litemedsam_tracks_the_vtus_nodule_from_one_box():
    from vivim_monai.data import discover_cases, load_cine, load_label_cine

    root = shared_dir("vtus")
    entry = discover_cases(root, layout="vtus")[0]
    frames = slice(0, 16)  # the first 16 frames keep the test short; the largest mask (frame 3) is among them
    cine = load_cine([root / p for p in entry["image"][frames]])
    truth = load_label_cine([root / p for p in entry["label"][frames]], "binary").numpy()[0]
    first = choose_frames(truth, 1)[0]
    result = track_boxes(cine, [BoxPrompt(first, box_of_mask(truth[..., first]))])
    assert result.status.count("lost") == 0
    scores = score_frames(result.labels, truth, [t for t in range(truth.shape[-1]) if t != first])
    assert scores["dice"] > 0.75, scores  # 0.83 measured (frames 1..2 enter the nodule: 0.49, 0.65)


def test_track_and_adapt_from_a_label_uses_tracked_frames_as_pseudo_labels():
    cine, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., 4] = truth[..., 4]
    result = segment_with_prompts(
        cine, label=label, method="track+adapt", config=TINY, pseudo_frames=3, medsam=BrightRegionSAM()
    )
    # the labelled frame's box prompts the tracker; 3 of the 9 tracked frames, spread out, join it as labels
    assert result.trained_frames == [1, 4, 5, 8]
    assert result.status[4] == "labelled" and result.status[0] == "segmented"
    others = [t for t in range(T) if t not in result.trained_frames]
    assert score_frames(result.labels, truth, others)["dice"] > 0.85


@pytest.mark.slow
def test_bf16_encoder_masks_agree_with_float32_on_a_real_echo():
    from pydicom import examples

    from vivim_monai.data import load_cine
    from vivim_monai.fewshot import FrameEmbeddings
    from vivim_monai.networks import LiteMedSAM

    cine = load_cine(examples.get_path("ybr_color"))
    model = LiteMedSAM().eval()
    box = (152, 52, 212, 125)  # the demo's box around the left-ventricular cavity
    masks = [FrameEmbeddings(model, cine, precision).segment(0, box)[0] > 0 for precision in ("fp32", "bf16")]
    agreement = score_frames(masks[0][..., None].astype(np.uint8), masks[1][..., None].astype(np.uint8), [0])
    assert masks[0].sum() > 1000 and agreement["dice"] > 0.98
    with pytest.raises(ValueError, match="precision must be"):
        FrameEmbeddings(model, cine, "fp16")


def test_adaptation_is_reproducible_and_leaves_the_global_generators_alone():
    cine, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., 5] = truth[..., 5]
    recipe = AdaptConfig(size=64, steps=4, batch=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    runs = [segment_with_prompts(cine, label=label, config=recipe, method="adapt").adapter for _ in range(2)]
    assert torch.rand(1) == before, "adapting must not move torch's global generator"
    first, second = (run.predict(cine) for run in runs)
    np.testing.assert_array_equal(first, second)


def test_auto_learns_from_tracks_only_where_they_cross_the_cine():
    cine, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., 4] = truth[..., 4]
    sam = BrightRegionSAM()
    result = segment_with_prompts(cine, label=label, config=AdaptConfig(size=64, steps=2), medsam=sam)
    assert result.method == "track+adapt" and result.lost == []
    assert "auto: the tracks from the labelled frames reach 100% of the frames (>= 90%)" in result.events[0]
    assert len(result.trained_frames) > 1
    gone, gone_truth = disk_cine(vanish_from=6)  # the disk leaves after frame 5: tracks stop there
    label = np.full_like(gone_truth, UNLABELLED)
    label[..., 4] = gone_truth[..., 4]
    result = segment_with_prompts(gone, label=label, config=AdaptConfig(size=64, steps=2), medsam=sam)
    assert result.method == "adapt" and result.trained_frames == [4] and result.lost == [6, 7, 8, 9]
    assert "reach 60% of the frames (< 90%): adaptation on the labelled frames alone" in result.events[-1]
    box = [4, *box_of_mask(gone_truth[..., 4] > 0)]
    result = segment_with_prompts(gone, boxes=[box], config=AdaptConfig(size=64, steps=2), medsam=sam)
    assert result.method == "adapt" and result.trained_frames == [4] and result.lost == [6, 7, 8, 9]
    assert "from the boxed frames reach 60% of the frames (< 90%): adaptation on the boxed frames alone" in (
        result.events[-1]
    )
    result = segment_with_prompts(cine, boxes=[box], config=AdaptConfig(size=64, steps=2), medsam=sam)
    assert result.method == "track+adapt" and len(result.trained_frames) > 1
    assert "from the boxed frames reach 100% of the frames (>= 90%)" in result.events[-1]


def test_auto_records_pick_the_tracked_run_where_the_tracks_crossed_the_cine():
    from vivim_monai.fewshot.evaluation import auto_records

    def record(case, method, dice, lost=None):
        out = {"case_id": case, "method": method, "dice": dice, "frames": list(range(9)), "labelled": [9]}
        return out if lost is None else {**out, "track_lost_frames": lost}

    records = [
        record("a", "k1", 0.5),
        record("a", "k1+track", 0.7, lost=[0]),  # 90 % reached
        record("b", "k1", 0.9),
        record("b", "k1+track", 0.1, lost=[0, 1]),  # 80 %
        record("c", "k1", 0.8),  # no tracked run: auto's result is unknown, no row
        record("a", "k1+time", 0.55),
    ]
    boxes = [
        {**record("a", "box:track", 0.6), "lost_frames": [0]},  # 9 of 10 frames reached with the boxed one
        record("a", "box:track+adapt", 0.8),
        record("a", "box:adapt", 0.4),
        {**record("b", "box:track", 0.2), "lost_frames": [0, 1]},  # 80 %
        record("b", "box:track+adapt", 0.3),
        record("b", "box:adapt", 0.85),
        {**record("c", "box:track", 0.2), "lost_frames": []},  # no box:adapt run: no row
        record("c", "box:track+adapt", 0.3),
    ]
    chosen = {(r["case_id"], r["method"], r["auto_chose"], r["dice"]) for r in auto_records(records + boxes)}
    assert chosen == {
        ("a", "k1 auto", "k1+track", 0.7),
        ("b", "k1 auto", "k1", 0.9),
        ("a", "box auto", "box:track+adapt", 0.8),
        ("b", "box auto", "box:adapt", 0.85),
    }
