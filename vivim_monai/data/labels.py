"""Segmentation labels of cines as one class-index channel ``(1, H, W, T)`` aligned with the frames.

Three on-disk formats (``LABEL_FORMATS``), named per datalist entry or per loader:

* ``"index"``: class indices stored directly, in a 2-D+t volume (NIfTI/MHA/NRRD, as the phantom writes) or in one
  image per frame;
* ``"binary"``: one mask image per frame (carotid lumen, BAGLS glottis: 0/255); pixels above ``threshold`` (default
  0: any non-zero value) become class 1;
* ``"class_masks"``: one folder per frame holding one binary image per class (the ovarian layout:
  ``background.png``, ``solid.png``, ``non-solid.png``). A missing class image means that class is absent; the
  class of a pixel is the argmax over the class images with ties going to the lowest index, and a pixel no image
  claims is class 0 — the rule of the ovarian fork (vivim-reference section 10).

A label whose size differs from its frame raises :class:`CineReadError` naming both files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from vivim_monai.data.cine import load_cine, read_frame_image
from vivim_monai.data.dicom import CineReadError

__all__ = [
    "LABEL_FORMATS",
    "OVARIAN_CLASSES",
    "OVARIAN_CLASS_FILES",
    "check_label_matches",
    "class_masks_to_index",
    "load_label_cine",
]

LABEL_FORMATS = ("index", "binary", "class_masks")
#: Classes of the ovarian-tumour labels (the project's default three-class task), index 0 background.
OVARIAN_CLASSES: tuple[str, ...] = ("background", "solid", "non-solid")
#: Class images of one frame folder in the ovarian layout, in class-index order.
OVARIAN_CLASS_FILES = tuple(f"{name}.png" for name in OVARIAN_CLASSES)

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def class_masks_to_index(masks: Sequence[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    """Class-index map (H, W) uint8 from per-class binary masks (None = class absent); argmax, ties to lowest."""
    stack = np.zeros((len(masks),) + tuple(shape), dtype=bool)
    for index, mask in enumerate(masks):
        if mask is not None:
            stack[index] = mask
    return np.argmax(stack, axis=0).astype(np.uint8)  # argmax returns the first maximum: ties -> lowest index


def _single_channel(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) of a mask image; colour masks must be grey (equal channels)."""
    if array.shape[-1] == 1:
        return array[..., 0]
    if not (array == array[..., :1]).all():
        raise CineReadError(f"{path}: colour mask image; expected a single-channel (grey) mask")
    return array[..., 0]


def _class_mask_frame(folder: Path, class_files: Sequence[str], shape: tuple[int, int] | None) -> np.ndarray:
    masks: list[np.ndarray | None] = []
    for name in class_files:
        path = folder / name
        if not path.is_file():
            masks.append(None)
            continue
        mask = _single_channel(read_frame_image(path), path) > 0
        if shape is not None and mask.shape != shape:
            raise CineReadError(f"{path}: mask of size {mask.shape} differs from the frame size {shape}")
        shape = mask.shape
        masks.append(mask)
    if shape is None:
        raise CineReadError(f"{folder}: none of the class masks {list(class_files)} exists (at least one needed)")
    return class_masks_to_index(masks, shape)


def load_label_cine(
    source: PathOrPaths,
    label_format: str = "index",
    class_files: Sequence[str] = OVARIAN_CLASS_FILES,
    threshold: float = 0.0,
    frame_shape: tuple[int, int] | None = None,
) -> MetaTensor:
    """Read labels as a uint8 class-index MetaTensor ``(1, H, W, T)``.

    Args:
        source: a volume file or frame folder, or a list of per-frame mask files (``"index"``/``"binary"``) or of
            per-frame class-mask folders (``"class_masks"``), in frame order.
        label_format: one of :data:`LABEL_FORMATS`.
        class_files: class image names of a ``"class_masks"`` frame folder, in class-index order.
        threshold: ``"binary"`` foreground is ``value > threshold``.
        frame_shape: expected (H, W); class-mask folders are checked against it as they are read.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if label_format == "class_masks":
        folders = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
        if not folders:
            raise CineReadError("empty list of class-mask folders: a label cine needs at least one frame")
        frames = [_class_mask_frame(folder, class_files, frame_shape) for folder in folders]
        shapes = {frame.shape for frame in frames}
        if len(shapes) > 1:
            raise CineReadError(f"{folders[0].parent}: class masks of different sizes {sorted(shapes)}")
        label = MetaTensor(torch.from_numpy(np.stack(frames, axis=-1)[None]))
        label.meta.update(filename_or_obj=str(folders[0]), frame_files=[str(f) for f in folders])
        return label
    cine = load_cine(source)
    name = cine.meta.get("filename_or_obj", str(source))
    if cine.shape[0] != 1:
        grey = cine.numpy()
        if not (grey == grey[:1]).all():
            raise CineReadError(f"{name}: label with {cine.shape[0]} differing channels; expected one channel")
        cine = cine[:1]
    values = cine.as_tensor()
    if label_format == "binary":
        values = values > threshold
    elif values.is_floating_point() and not torch.equal(values, values.round()):
        raise CineReadError(f"{name}: class-index label holds non-integer values; is it a probability map?")
    elif values.numel() and (values.min() < 0 or values.max() > 255):
        raise CineReadError(f"{name}: class indices outside 0..255 (min {values.min()}, max {values.max()})")
    return MetaTensor(values.to(torch.uint8), meta=dict(cine.meta))  # the meta carries the cine's affine


def check_label_matches(image: torch.Tensor, label: torch.Tensor, image_name: str, label_name: str) -> None:
    """Raise :class:`CineReadError` unless ``label`` (1, H, W, T) has the frames and frame size of ``image``."""
    if tuple(label.shape[1:3]) != tuple(image.shape[1:3]):
        raise CineReadError(
            f"{label_name}: mask of size (H, W) {tuple(label.shape[1:3])} differs from its frame {image_name} "
            f"{tuple(image.shape[1:3])}; each frame needs a mask of the frame's size"
        )
    if label.shape[-1] != image.shape[-1]:
        raise CineReadError(
            f"{label_name}: {label.shape[-1]} label frames for {image.shape[-1]} frames of {image_name}; "
            f"every frame needs its label"
        )
