"""The annotation loop over MONAI Label's HTTP API, on a server of its own (fresh, so its memory is the session's).

The interactive model (``<bundle>_interactive``), corrections saved through the datastore and the train task, on a
real carotid acquisition (skips without the shared data), and 12 bad requests answered 4xx with their reason. The
server, environment and helpers are those of ``tests/test_monailabel.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_dir
from test_monailabel import MODEL, GroupRss, _settled, _tree, monailabel_venv, serve, server  # noqa: F401

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports


INTERACTIVE = f"{MODEL}_interactive"
#: a quicker adaptation for the test (the shipped recipe, 150 steps at 192 x 192, is measured by
#: scripts/annotation_session.py): at 128 x 128 and 50 steps this acquisition's rounds reach Dice 0.82 / 0.88 / 0.89
#: (0.78 / 0.84 / 0.87 at 192 x 192), and the test takes 202 s instead of 296 s (docs/performance.md §9c)
SESSION_RECIPE = {"steps": 50, "size": 128}


def _refused(call) -> tuple[int, str]:
    """(HTTP status, reason) of a request the server must refuse (``call`` uses the package's client)."""
    from vivim_monai.utils.monailabel_client import InferenceError

    try:
        call()
    except InferenceError as err:
        return err.status, err.detail
    raise AssertionError("the server accepted a bad request")


@pytest.mark.slow
def test_annotation_session_over_http_gets_better_with_corrections_and_training(server, tmp_path):  # noqa: F811
    """A real carotid acquisition: a box, then two corrected frames through the datastore; Dice rises, every answer
    is a well-formed label; the train task then publishes weights that the next inference starts from."""
    from vivim_monai.data import discover_cases, load_cine, load_label_cine
    from vivim_monai.experiments.annotation_session import run_session
    from vivim_monai.utils import monailabel_client as client

    root = shared_dir("carotid-us")
    entry = discover_cases(root, layout="carotid")[0]
    cine = load_cine([root / p for p in entry["image"]]).numpy()
    truth = load_label_cine([root / p for p in entry["label"]], "binary").numpy()[0]
    grey = np.round(cine.mean(0) if cine.shape[0] > 1 else cine[0]).astype(np.uint8)
    url = server["url"]
    assert serve.server_info(url)["models"][INTERACTIVE]["type"] == "deepgrow"
    checkpoint = server["workdir"] / "apps" / serve.APP_NAME / "model" / f"{INTERACTIVE}.pt"
    checkpoint.unlink(missing_ok=True)  # left by an earlier run in the fixed work folder: start from ImageNet
    with GroupRss(server["pgid"]) as rss:
        records = run_session(url, INTERACTIVE, grey, truth, "carotid_session", 3, {"recipe": SESSION_RECIPE})
        dice = [r["dice"] for r in records]
        rounds = [{k: r[k] for k in ("round", "dice", "seconds")} for r in records]
        print("\nannotation session:", json.dumps(rounds), f"server peak RSS {rss.peak / 2**30:.2f} GiB")
        assert dice[-1] > dice[0] and dice[-1] > 0.8, f"Dice per round {dice}"
        assert records[1]["server"]["trained_frames"] and records[2]["prompt"]["corrected_frames"]
        session_peak = rss.peak  # the session's rounds; training below runs in the server only because of run_sync

        summary = client.train(url, INTERACTIVE, {"recipe": {**SESSION_RECIPE, "steps": 10}}, run_sync=True)
        assert checkpoint.is_file(), summary
        box = records[0]["prompt"]["box"]
        params = {"boxes": [box], "recipe": {**SESSION_RECIPE, "steps": 5}}
        label, result, _ = client.request_inference(url, INTERACTIVE, params=params, image_id="carotid_session")
        assert label is not None and result["start"] == str(checkpoint.resolve()), result
    assert (
        session_peak < 3 << 30
    ), f"the server's peak memory in the session, {session_peak / 2**30:.2f} GiB, is over 3 GiB"


@pytest.mark.slow
def test_interactive_bad_input_is_refused_with_its_reason_and_leaves_nothing(server, tmp_path):  # noqa: F811
    from tests.test_fewshot import disk_cine
    from vivim_monai.fewshot import UNLABELLED
    from vivim_monai.utils import monailabel_client as client

    url, studies, temporary = server["url"], server["studies"], server["workdir"] / serve.TMP_DIR
    cine, truth = disk_cine()
    path = tmp_path / "disk.nii.gz"
    nib.save(nib.Nifti1Image(cine[0].numpy(), np.eye(4)), path)
    scratch = _tree(temporary)
    client.upload_image(url, "disk", path)
    assert _settled(temporary, scratch) == scratch, "the upload's temporary copy was not removed"
    datastore = _tree(studies)

    def label_file(array: np.ndarray, name: str) -> Path:
        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / name)
        return tmp_path / name

    def infer(params, **kwargs):
        return lambda: client.request_inference(url, INTERACTIVE, params=params, image_id="disk", **kwargs)

    (tmp_path / "notes.txt").write_text("not a cine\n")
    cases = {
        "box outside the frame": (infer({"boxes": [[3, 10, 10, 500, 40]]}), 400, "outside the 80 x 64"),
        "frame index out of range": (infer({"boxes": [[30, 10, 10, 40, 40]]}), 400, "frame index out of range"),
        "params not JSON": (infer("{boxes: ["), 400, "params is not JSON"),
        "one click": (infer({"foreground": [[30, 12, 3]]}), 400, "one click on frame 3"),
        "background clicks": (infer({"boxes": [[3, 10, 18, 34, 42]], "background": [[1, 1, 1]]}), 400, "background"),
        "unknown recipe field": (infer({"boxes": [[3, 10, 18, 34, 42]], "recipe": {"stpes": 5}}), 400, "recipe"),
        "unknown image": (
            lambda: client.request_inference(url, INTERACTIVE, params={"boxes": [[3, 10, 18, 34, 42]]}, image_id="x"),
            400,
            "'x' is not in the datastore",
        ),
        "non-cine upload": (
            lambda: client.request_inference(url, INTERACTIVE, tmp_path / "notes.txt", {"boxes": [[3, 1, 1, 9, 9]]}),
            422,
            "CineReadError: notes.txt: unsupported file type",
        ),
        "label frame count": (
            lambda: client.save_label(url, "disk", label_file(np.full((64, 80, 5), UNLABELLED, np.uint8), "l5.nii.gz")),
            400,
            "5 label frames for a cine of 10 frames",
        ),
        "label frame size": (
            lambda: client.save_label(url, "disk", label_file(np.zeros((64, 40, 10), np.uint8), "l40.nii.gz")),
            400,
            "frames of (H, W) (64, 40) differ",
        ),
        "label without a labelled frame": (
            lambda: client.save_label(url, "disk", label_file(np.full((64, 80, 10), UNLABELLED, np.uint8), "e.nii.gz")),
            400,
            "no labelled frame",
        ),
        "label of an unknown image": (
            lambda: client.save_label(url, "x", label_file(truth, "t.nii.gz")),
            400,
            "no such image",
        ),
    }
    for name, (call, status, reason) in cases.items():
        got, detail = _refused(call)
        assert got == status and reason in detail, f"{name}: HTTP {got} {detail!r}"
        assert serve.server_info(url) is not None, f"/info/ stopped answering after: {name}"
        assert _tree(studies) == datastore, f"the datastore changed after: {name}"
        assert _settled(temporary, scratch) == scratch, f"files left in the server's temporary folder after: {name}"
