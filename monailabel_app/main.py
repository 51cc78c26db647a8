"""MONAI Label app of vivim-monai: the bundle's automatic model, an interactive cine model and its train task.

Served by ``scripts/serve_monailabel.py start`` (MONAI Label 0.8.5, the isolated environment of
``scripts/setup_monailabel.sh``). For each bundle named in ``--conf models`` (linked as ``<app>/model/<name>``):

- ``<name>``: the bundle's automatic segmentation (MONAI Label's ``BundleInferTask``, as the ``monaibundle`` app);
- ``<name>_interactive`` (type ``deepgrow``): a cine and prompts -> the whole-cine label ``H x W x T``, by the bundle's
  ``configs/interactive.json`` (``scripts.fewshot.annotation.InteractiveCineModel``). Request fields (``params``):
  ``boxes`` ``[[frame, x0, y0, x1, y1(, class)], ...]`` in pixels (x = column); ``foreground`` clicks ``[[row,
  column, frame], ...]`` (DeepGrow's field, voxel indices of the ``H x W x T`` volume; two or more clicks on a frame
  are its extreme points); ``roi`` ``[i0, j0, i1, j1, k0, k1]`` as MONAI Label's SAM2 task reads it (a box on frame
  ``slice`` if given, else the middle of ``k0..k1``). The label saved for the image in the datastore (tag
  ``final``; frames not labelled are 255 everywhere) joins the prompts: corrections teach the next inference. An
  uploaded ``label`` file takes its place.
- train task ``<name>_interactive``: the per-frame network fine-tuned on every labelled frame of every cine with a
  ``final`` label in the datastore; its weights are written atomically to ``<app>/model/<name>_interactive.pt``
  and every later interactive inference starts from them (a failed or interrupted training leaves the previous file).

Labels saved through ``PUT /datastore/label`` are checked against their image first (frame size and count, class
indices, at least one labelled frame): a bad one is refused with its reason and nothing is stored.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any, Dict

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser

import monailabel
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models, strtobool

logger = logging.getLogger(__name__)

INTERACTIVE = "_interactive"
FINAL = "final"


def _bundle_scripts(bundle: str) -> Any:
    """The bundle's vendored ``scripts`` package (imported from the bundle folder, as its configs do)."""
    if bundle not in sys.path:
        sys.path.insert(0, bundle)
    import scripts.data
    import scripts.fewshot.annotation  # noqa: F401
    import scripts.fewshot.prompts  # noqa: F401

    return scripts


def _invalid(message: str) -> MONAILabelException:
    return MONAILabelException(MONAILabelError.INVALID_INPUT, message)


def _bundle_classes(bundle: str) -> list[str]:
    """The automatic model's class names (``channel_def`` of the bundle's metadata)."""
    meta = json.loads(open(os.path.join(bundle, "configs", "metadata.json")).read())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channels[k] for k in sorted(channels, key=int)]


def interactive_config(bundle: str, checkpoint: str = "") -> ConfigParser:
    """The bundle's ``configs/interactive.json`` with its root and the interactive model's checkpoint set."""
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "interactive.json"))
    parser["bundle_root"], parser["checkpoint"] = bundle, checkpoint or None
    return parser


class InteractiveCineInfer(InferTask):
    """``<name>_interactive``: prompts and saved frame labels -> the whole cine (module notes)."""

    def __init__(self, bundle: str, checkpoint: str) -> None:
        self.bundle, self.scripts = bundle, _bundle_scripts(bundle)
        self.model = interactive_config(bundle, checkpoint).get_parsed_content("interactive")
        self.class_names = list(self.model.class_names)
        super().__init__(
            type=InferType.DEEPGROW,
            labels={name.lower(): i for i, name in enumerate(self.class_names) if i},
            dimension=3,
            description="A cine from a box or clicks on one frame, and from the frames labelled so far (few-shot)",
        )

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: Dict[str, Any]):
        began = time.perf_counter()
        scripts = self.scripts
        image = request.get("image") or ""
        if not image or not os.path.exists(image):
            raise _invalid(f"image {request.get('image_id', image)!r} is not in the datastore and no file was uploaded")
        source = request.get("image_id") or "uploaded cine"
        cine = scripts.data.load_cine(image)
        loaded = time.perf_counter()
        boxes = scripts.fewshot.prompts.parse_boxes(request.get("boxes"), f"{source} boxes")
        if request.get("roi"):
            boxes += scripts.fewshot.annotation.box_from_roi(request["roi"], request.get("slice"), f"{source} roi")
        if request.get("background"):
            raise _invalid("background clicks are not used by this model: send boxes or foreground extreme points")
        label_path = request.get("label") or request.get("saved_label") or None
        label = None
        if label_path:
            label = scripts.data.load_label_cine(label_path, "index")
        result = self.model.segment(
            cine,
            boxes=boxes,
            foreground=request.get("foreground"),
            label=label,
            source=str(source),
            recipe=request.get("recipe"),
        )
        segmented = time.perf_counter()
        output = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        # the input's geometry: a NIfTI's own affine, else the one the bundle's reader gave the cine
        nifti = str(image).endswith((".nii", ".nii.gz"))
        affine = nib.load(image).affine if nifti else np.asarray(getattr(cine, "affine", np.eye(4)), float)
        nib.save(nib.Nifti1Image(result.labels.astype(np.uint8), affine), output)
        report = result.report()
        seconds = {
            "load": loaded - began,
            **{k: v for k, v in report.get("seconds", {}).items()},
            "write": time.perf_counter() - segmented,
            "total": time.perf_counter() - began,
        }
        return output, {
            "label_names": {name: i for i, name in enumerate(self.class_names)},
            "latencies": {k: round(v, 3) for k, v in seconds.items()},
            "method": report.get("method"),
            "status_counts": report.get("status_counts"),
            "trained_frames": report.get("trained_frames"),
            "events": report.get("events"),
            "start": report.get("start_weights"),
            "used_saved_label": bool(label_path),
        }


class InteractiveCineTrain(TrainTask):
    """Fine-tune the interactive model on every labelled frame of the datastore's cines; publish atomically."""

    def __init__(self, bundle: str, checkpoint: str, model: InteractiveCineInfer) -> None:
        super().__init__("Few-shot network of the interactive model, on all (sparsely) labelled cines")
        self.bundle, self.checkpoint, self.infer = bundle, checkpoint, model

    def __call__(self, request: Dict[str, Any], datastore: Datastore):
        scripts = self.infer.scripts
        cines = []
        for item in datastore.datalist():
            cine = scripts.data.load_cine(item["image"])
            label = scripts.data.load_label_cine(item["label"], "index").numpy()[0]
            cines.append((cine, label, os.path.basename(item["label"])))
        model = self.infer.model
        summary = scripts.fewshot.annotation.train_on_labelled_cines(
            cines,
            self.checkpoint,
            start=model.start,
            class_names=model.class_names,
            recipe={**vars(model.config), **request.get("recipe", {})},
            bundle=self.bundle,
        )
        logger.info("interactive model trained: %s", summary)
        return summary


class CheckedDatastore(LocalDatastore):
    """MONAI Label's local datastore, refusing a label that does not fit its image before anything is stored."""

    def __init__(self, *args: Any, bundle: str, class_names: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scripts, self.class_names = _bundle_scripts(bundle), class_names

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise _invalid(f"label for image {image_id!r}: no such image in the datastore")
        data, prompts = self.scripts.data, self.scripts.fewshot.prompts
        shape = tuple(int(s) for s in data.load_cine(image).shape[1:])
        label = data.load_label_cine(label_filename, "index").numpy()[0]
        prompts.partial_label(label, shape, None, len(self.class_names), source=f"label for image {image_id!r}")
        return super().save_label(image_id, label_filename, label_tag, label_info)


class VivimApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.models = get_bundle_models(app_dir, conf)
        self.first_bundle = next(iter(self.models.values()))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"vivim-monai cines (MONAI Label {monailabel.__version__})",
            description="Cine segmentation: the bundle's automatic model and a box/few-shot interactive model",
            version=monailabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        """Labels are checked against the interactive model's classes (the first bundle with one)."""
        with_interactive = [
            b for b in self.models.values() if os.path.isfile(os.path.join(b, "configs", "interactive.json"))
        ]
        bundle = (with_interactive or [self.first_bundle])[0]
        names = interactive_config(bundle)["class_names"] if with_interactive else _bundle_classes(bundle)
        return CheckedDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            bundle=bundle,
            class_names=list(names),
        )

    def _checkpoint(self, name: str) -> str:
        return os.path.join(self.model_dir, f"{name}{INTERACTIVE}.pt")

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        self.interactive: Dict[str, InteractiveCineInfer] = {}
        for name, bundle in self.models.items():
            infers[name] = BundleInferTask(bundle, self.conf)
            if os.path.isfile(os.path.join(bundle, "configs", "interactive.json")):
                self.interactive[name] = InteractiveCineInfer(bundle, self._checkpoint(name))
                infers[f"{name}{INTERACTIVE}"] = self.interactive[name]
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        for name, model in self.interactive.items():
            trainers[f"{name}{INTERACTIVE}"] = InteractiveCineTrain(model.bundle, self._checkpoint(name), model)
        if not strtobool(self.conf.get("skip_trainers", "false")):
            for name, bundle in self.models.items():
                task = BundleTrainTask(bundle, self.conf)
                if task.is_valid():
                    trainers[name] = task
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def infer(self, request: Dict[str, Any], datastore: Datastore | None = None):
        """An interactive request on a datastore image also gets the label saved for it (tag ``final``)."""
        image = request.get("image")
        if str(request.get("model", "")).endswith(INTERACTIVE) and isinstance(image, str) and not os.path.exists(image):
            store = datastore or self.datastore()
            saved = store.get_label_uri(image, FINAL) if store.get_label_by_image_id(image, FINAL) else ""
            request = {**request, "image_id": image, "saved_label": saved}
        return super().infer(request, datastore)
