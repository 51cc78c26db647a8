"""DICOM Segmentation (SEG) objects of cines, built with highdicom, that reference the source instance frame by frame.

highdicom (0.28) writes SEGs of single images and of spatially indexed multi-frame images, but refuses multi-frame
sources without patient geometry, which is what ultrasound and angiography cines are (highdicom issues #200, #284,
#369). So highdicom builds the instance-level content (patient and study, SEG series, equipment, segment
descriptions, instance references, the BINARY pixel module) from a single-frame stand-in of the source that holds
only what the SEG needs (:data:`SEG_PATIENT_STUDY_ATTRIBUTES` and the references), and the frames are added here as
the SEG IOD defines them for sources referenced by derivation (PS3.3 A.51.5.1):

* one BINARY frame per (segment, source frame), segment-major; every frame's Derivation Image functional group
  names the source SOP instance and its Referenced Frame Number, which is how readers map SEG frames to cine frames;
* the Multi-frame Dimension module indexes frames by Referenced Segment Number and Temporal Position Index (the
  1-based source frame number);
* no plane position, orientation or pixel measures: pixels correspond one to one with the source frame, so the
  source's (usually empty) Patient Orientation describes them (General Image module, Type 2C).

The result passes the DICOM validator ``dciodvfy`` without errors for every supported source (``docs/reliability.md``).

Segment ``k`` is label class ``k`` (class 0 is background and has no segment). Empty frames are kept by default so
that every source frame is explicitly referenced ("nothing found" is a result); ``omit_empty_frames=True`` drops
them (readers then treat missing frames as empty).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SecondaryCaptureImageStorage
from pydicom.valuerep import DA, TM

from vivim_monai import __version__
from vivim_monai.data.labels import OVARIAN_CLASSES
from vivim_monai.io._labels import as_label_volume
from vivim_monai.utils.atomic import atomic_write

__all__ = ["SEG_PATIENT_STUDY_ATTRIBUTES", "read_dicom_seg_labels", "write_dicom_seg"]

#: Patient and study attributes the SEG copies from its source: the Type 1 and 2 attributes of the Patient and General
#: Study modules (PS3.3 C.7.1.1, C.7.2.1), the only patient/study modules the SEG IOD requires; Type 2 attributes the
#: source lacks are written empty. Nothing else of the patient or study is copied (see docs/reliability.md).
SEG_PATIENT_STUDY_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: Further source attributes the SEG needs: to reference the source, to read its text (character set), and to keep
#: its frame of reference and lossy-compression history (PS3.3 C.7.6.1.1.5).
_SOURCE_REFERENCE = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "FrameOfReferenceUID",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)
#: Separators of the ACR-NEMA date and time formats that some old cines still carry.
_LEGACY_SEPARATORS = {"DA": ".-", "TM": ":"}


def _stand_in(source: Dataset) -> Dataset:
    """A single-frame, geometry-free, pixel-free copy of what the SEG needs of ``source`` (and nothing else, so that
    highdicom copies nothing else); ``source`` is not modified."""
    stand_in = Dataset()
    for keyword in (*_SOURCE_REFERENCE, *SEG_PATIENT_STUDY_ATTRIBUTES):
        if keyword in source:
            stand_in.add(copy.deepcopy(source[keyword]))
        elif keyword in SEG_PATIENT_STUDY_ATTRIBUTES:  # Type 2: present, empty
            setattr(stand_in, keyword, None)
    stand_in.SOPClassUID = SecondaryCaptureImageStorage  # a single-frame IOD: highdicom's supported path
    for element in stand_in:
        if element.VR in _LEGACY_SEPARATORS and isinstance(element.value, str) and element.value:
            element.value = _conformant(element.VR, element.value)
    return stand_in


def _conformant(vr: str, value: str) -> str | None:
    """``value`` of a DA or TM attribute in DICOM format: legacy separators (``11:25:01``) are removed, and what
    still does not parse is dropped (highdicom rejects non-conformant dates and times)."""
    kind = DA if vr == "DA" else TM
    for candidate in (value.translate(str.maketrans("", "", _LEGACY_SEPARATORS[vr])), value):
        try:
            kind(candidate)
            return candidate
        except ValueError:
            continue
    return None


def _segment_descriptions(
    class_names: Sequence[str],
    algorithm_name: str,
    algorithm_version: str,
    category: Code,
    property_type: Code,
) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(name),
            segmented_property_category=category,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(class_names[1:], start=1)
    ]


def _frame_item(template: Dataset, segment: int, frame: int, source: Dataset, multi_frame: bool) -> Dataset:
    """Per-frame functional groups of the SEG frame of ``segment`` on source frame ``frame`` (1-based)."""
    derivation = copy.deepcopy(template)
    reference = derivation.SourceImageSequence[0]
    reference.ReferencedSOPClassUID = source.SOPClassUID
    if multi_frame:
        reference.ReferencedFrameNumber = frame
    content = Dataset()
    content.DimensionIndexValues = [segment, frame]
    content.TemporalPositionIndex = frame
    identification = Dataset()
    identification.ReferencedSegmentNumber = segment
    item = Dataset()
    item.DerivationImageSequence = [derivation]
    item.FrameContentSequence = [content]
    item.SegmentIdentificationSequence = [identification]
    return item


def _dimension_index(organisation_uid: str) -> list[Dataset]:
    items = []
    for pointer, group, label in (
        (0x0062000B, 0x0062000A, "Segment Number"),  # ReferencedSegmentNumber in SegmentIdentificationSequence
        (0x00209128, 0x00209111, "Source Frame"),  # TemporalPositionIndex in FrameContentSequence
    ):
        item = Dataset()
        item.DimensionOrganizationUID = organisation_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = group
        item.DimensionDescriptionLabel = label
        items.append(item)
    return items


def write_dicom_seg(
    labels: Any,
    source: Dataset | str | os.PathLike,
    path: str | os.PathLike,
    class_names: Sequence[str] = OVARIAN_CLASSES,
    algorithm_name: str = "Vivim",
    algorithm_version: str = __version__,
    series_number: int = 1000,
    series_description: str = "Vivim segmentation",
    omit_empty_frames: bool = False,
    segmented_property_category: Code = codes.SCT.MorphologicallyAbnormalStructure,
    segmented_property_type: Code = codes.SCT.Lesion,
) -> Path:
    """Write the BINARY DICOM SEG of ``labels`` ``(H, W, T)`` predicted on the DICOM ``source``; returns ``path``.

    Args:
        labels: class indices per pixel and frame; ``(H, W, T)`` must match the source's Rows, Columns and Number
            of Frames (1 for single-frame sources).
        source: the source DICOM file or its dataset (read without pixel data; never modified).
        path: output file.
        class_names: name of every class, background first; class ``k`` becomes segment ``k`` labelled
            ``class_names[k]`` (all foreground classes get a segment, present or not).
        algorithm_name, algorithm_version: recorded in every segment (automatic segmentation, AI family).
        series_number, series_description: of the new SEG series (a new series and instance UID are generated).
        omit_empty_frames: drop SEG frames without foreground (see the module notes).
        segmented_property_category, segmented_property_type: codes given to every segment; the segment labels
            carry the class names.

    Written atomically.
    """
    if not isinstance(source, Dataset):
        source = pydicom.dcmread(source, stop_before_pixels=True)
    array = as_label_volume(labels)
    multi_frame = "NumberOfFrames" in source
    expected = (int(source.Rows), int(source.Columns), int(source.get("NumberOfFrames", 1) or 1))
    if array.shape != expected:
        raise ValueError(f"labels {array.shape} do not match the source (rows, columns, frames) {expected}")
    if len(class_names) < 2:
        raise ValueError(f"need background and at least one foreground class name, got {list(class_names)}")
    if array.size and array.max() >= len(class_names):
        raise ValueError(f"labels contain class {array.max()} but only {len(class_names)} classes are named")

    segments = len(class_names) - 1
    seg = hd.seg.Segmentation(
        source_images=[_stand_in(source)],
        pixel_array=np.zeros(expected[:2], dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(
            class_names, algorithm_name, algorithm_version, segmented_property_category, segmented_property_type
        ),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="vivim-monai",
        manufacturer_model_name=algorithm_name,
        software_versions=__version__,
        device_serial_number="0",
        omit_empty_frames=False,
        content_label="VIVIM",
        content_description=series_description,
        series_description=series_description,
    )
    for item in [*seg.SourceImageSequence, *seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]:
        item.ReferencedSOPClassUID = source.SOPClassUID  # undo the stand-in's single-frame SOP class
    # General Image: Patient Orientation is Type 2C, required when there is no Image Orientation (Patient), as here;
    # the SEG's pixels are the source's, so the source's value (usually empty for ultrasound) applies unchanged
    seg.PatientOrientation = source.get("PatientOrientation")

    template = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    by_frame = np.ascontiguousarray(np.moveaxis(array, -1, 0))
    items, masks = [], []
    for segment in range(1, segments + 1):
        for frame, frame_labels in enumerate(by_frame):
            mask = frame_labels == segment
            if omit_empty_frames and not mask.any():
                continue
            items.append(_frame_item(template, segment, frame + 1, source, multi_frame))
            masks.append(mask)
    if not items:  # all frames empty and omitted: one empty frame keeps the instance valid
        items, masks = [_frame_item(template, 1, 1, source, multi_frame)], [by_frame[0] == 1]
    seg.DimensionIndexSequence = _dimension_index(seg.DimensionOrganizationSequence[0].DimensionOrganizationUID)
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(items)
    seg.PixelData = pack_bits(np.stack(masks).astype(np.uint8))
    return atomic_write(path, lambda name: seg.save_as(name, enforce_file_format=True))


def read_dicom_seg_labels(path: str | os.PathLike, num_frames: int | None = None) -> np.ndarray:
    """Label volume ``(H, W, T)`` uint8 of a SEG written by :func:`write_dicom_seg` (segment ``k`` -> class ``k``).

    Frames are gathered by their references to the source frames (highdicom's reader); ``num_frames`` is the
    source's frame count (default: the highest referenced frame, which misses omitted empty tail frames).
    """
    seg = hd.seg.segread(path)
    source_uid = seg.get_source_image_uids()[0][2]
    referenced = [
        int(item.DerivationImageSequence[0].SourceImageSequence[0].get("ReferencedFrameNumber", 0))
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    if max(referenced) == 0:  # single-frame source
        pixels = seg.get_pixels_by_source_instance([source_uid], combine_segments=True)
    else:
        frames = list(range(1, (num_frames or max(referenced)) + 1))
        pixels = seg.get_pixels_by_source_frame(
            source_uid, frames, combine_segments=True, assert_missing_frames_are_empty=num_frames is not None
        )
    return np.ascontiguousarray(pixels.transpose(1, 2, 0).astype(np.uint8))
