"""Seeded DICOM mutator and a time- and memory-bounded runner that fuzzes the cine readers (a test helper).

:func:`mutate` turns a seed file (:class:`Seed`) into a hostile variant: raw byte mutations (truncation, byte flips
in the header or the pixel data, spliced / dropped / appended bytes, a transfer syntax that does not match the
body) and structured ones written through pydicom (wrong or malformed ``NumberOfFrames``, missing or odd image
pixel tags, zero-size frames, wrong photometric interpretation, broken palette, timing, spacing and region tags).

:func:`fuzz` writes each mutant to disk and loads it with ``load_cine`` in a forked worker process (address
space limited, killed after ``time_limit`` s) and classifies the outcome:

* ``ok``: loaded, and the clip agrees with the header (see :func:`check_cine`);
* ``clear_error``: :class:`~vivim_monai.data.CineReadError` whose message names the file;
* failures: ``crash`` (another exception, an error not naming the file, or the worker died), ``garbage`` (loaded
  but inconsistent with the header or non-finite), ``oom`` (a memory error: the reader tried to allocate far more
  than the file holds) and ``hang`` (over the time limit).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import re
import resource
import struct
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag

FAILURES = ("crash", "garbage", "oom", "hang")
STATUSES = ("ok", "clear_error") + FAILURES
#: Tags whose deletion the mutator tries.
IMAGE_TAGS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "RedPaletteColorLookupTableData",
    "RedPaletteColorLookupTableDescriptor",
)
SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.RLELossless,
    uid.MPEG4HP41,
    uid.UID("1.2.3.4.5.6.7"),
)


@dataclass(frozen=True)
class Seed:
    """A DICOM file to mutate, with the offsets that split its header from its pixel data."""

    name: str
    data: bytes
    body_start: int  # end of the file meta group (0002,xxxx)
    pixel_start: int  # start of the Pixel Data value
    frames: int
    encapsulated: bool


def _meta_end(data: bytes) -> int:
    """Offset just past the explicit-VR little-endian file meta group that follows the preamble."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        if data[pos + 4 : pos + 6] in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def make_seed(name: str, data: bytes) -> Seed:
    """A :class:`Seed` from the bytes of a readable multi- or single-frame DICOM file."""
    ds = pydicom.dcmread(BytesIO(data))
    frames = int(ds.get("NumberOfFrames") or 1)
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    return Seed(name, data, _meta_end(data), ds.get_item("PixelData").value_tell, frames, encapsulated)


def trimmed(data: bytes, frames: int) -> bytes:
    """The file ``data`` cut to its first ``frames`` frames (header kept, NumberOfFrames updated), for speed."""
    ds = pydicom.dcmread(BytesIO(data))
    total = int(ds.get("NumberOfFrames") or 1)
    if total <= frames:
        return data
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ds.PixelData = encapsulate(list(islice(generate_frames(ds.PixelData, number_of_frames=total), frames)))
    else:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // total * frames]
    ds.NumberOfFrames = frames
    for tag in [tag for tag in ds.keys() if tag.group == 0xFFFE]:  # a stray delimiter (DIRW0007) pydicom cannot write
        del ds[tag]
    return _write(ds)


def _write(ds: pydicom.Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


# ---- raw byte mutations -------------------------------------------------------------------------------------------


def _span(seed: Seed, rng: random.Random, region: str) -> int:
    """A random offset in the header (after the file meta) or in the pixel data."""
    if region == "header":
        return rng.randrange(seed.body_start, max(seed.body_start + 1, seed.pixel_start - 12))
    return rng.randrange(seed.pixel_start, len(seed.data))


def _truncate(region: str) -> Callable[[Seed, random.Random], bytes]:
    return lambda seed, rng: seed.data[: _span(seed, rng, region)]


def _flip(region: str, most: int) -> Callable[[Seed, random.Random], bytes]:
    def flip(seed: Seed, rng: random.Random) -> bytes:
        data = bytearray(seed.data)
        for _ in range(rng.randint(1, most)):
            data[_span(seed, rng, region)] ^= rng.randint(1, 255)
        return bytes(data)

    return flip


def _splice(seed: Seed, rng: random.Random) -> bytes:
    """Duplicate or drop a chunk somewhere after the file meta (shifts everything behind it)."""
    start = rng.randrange(seed.body_start, len(seed.data))
    size = rng.randint(1, 64)
    if rng.random() < 0.5:
        return seed.data[:start] + seed.data[start : start + size] + seed.data[start:]
    return seed.data[:start] + seed.data[start + size :]


def _append(seed: Seed, rng: random.Random) -> bytes:
    """Junk after the dataset: random bytes, a copy of the tail, or an element header with an absurd length."""
    junk = [
        rng.randbytes(rng.randint(1, 4096)),
        seed.data[-rng.randint(1, 4096) :],
        b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\x7f",
        b"\xfe\xff\x00\xe0" + struct.pack("<I", rng.randrange(1 << 32)),
    ]
    return seed.data + rng.choice(junk)


def with_syntax(seed: Seed, syntax: str) -> bytes:
    """``seed`` with ``syntax`` as its transfer syntax in the file meta, the body bytes left as they are."""
    meta = pydicom.dcmread(BytesIO(seed.data)).file_meta
    meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + fp.getvalue() + seed.data[seed.body_start :]


def _syntax(seed: Seed, rng: random.Random) -> bytes:
    stated = pydicom.dcmread(BytesIO(seed.data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    return with_syntax(seed, rng.choice([syntax for syntax in SYNTAXES if syntax != stated]))


# ---- structured mutations (through pydicom) ----------------------------------------------------------------------


def set_raw(ds: pydicom.Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Set ``keyword`` to undecoded bytes (values pydicom would refuse to encode, e.g. non-numeric IS)."""
    value += b" " if len(value) % 2 else b""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, ds.original_encoding[0], True, True, False)


def _frames(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    real = seed.frames
    value = rng.choice([0, -1, -real, 1, real - 1, real + 1, 2 * real, 10**6, 2**31 - 1, 10**12])
    if rng.random() < 0.25:
        set_raw(ds, "NumberOfFrames", "IS", rng.choice([b"abc", b"1.5", b"", b"  ", b"1e3", b"\x00\x01", b"-", b"+2"]))
    else:
        set_raw(ds, "NumberOfFrames", "IS", str(value).encode())


def _delete(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    del ds[rng.choice([keyword for keyword in IMAGE_TAGS if keyword in ds])]


ODD_VALUES: dict[str, list[Any]] = {
    "Rows": [0, 1, 7, 65535],
    "Columns": [0, 1, 7, 65535],
    "BitsAllocated": [0, 1, 7, 12, 16, 32, 64],
    "BitsStored": [0, 7, 12, 16, 33],
    "HighBit": [0, 15, 40],
    "SamplesPerPixel": [0, 2, 3, 4, 1],
    "PixelRepresentation": [1, 2],
    "PlanarConfiguration": [1, 2],
    "PhotometricInterpretation": [
        "FOO",
        "",
        "PALETTE COLOR",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "RGB",
        "MONOCHROME1",
        "MONOCHROME2",
        "ARGB",
        "CMYK",
        "HSV",
    ],
}


def _odd(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    keyword = rng.choice(sorted(ODD_VALUES))
    setattr(ds, keyword, rng.choice(ODD_VALUES[keyword]))


def _pixel_data(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    """Empty, odd-length, too short, or wrongly (un)encapsulated pixel data."""
    data = ds.PixelData
    choices = [b"", data[:1], data[: len(data) // 3], data + b"\0"]
    choices.append(data[: len(data) // 2 * 2] if seed.encapsulated else encapsulate([data[:4096]]))
    choices.append(encapsulate([rng.randbytes(64)] * max(seed.frames, 1)))
    ds.PixelData = rng.choice(choices)


def _palette(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    """A broken lookup table (or a palette claimed without one)."""
    ds.PhotometricInterpretation = "PALETTE COLOR"
    if "RedPaletteColorLookupTableDescriptor" not in ds or rng.random() < 0.3:
        return
    choice = rng.randrange(4)
    if choice == 0:
        del ds.GreenPaletteColorLookupTableData
    elif choice == 1:
        ds.BluePaletteColorLookupTableData = ds.BluePaletteColorLookupTableData[:3]
    elif choice == 2:
        ds.RedPaletteColorLookupTableDescriptor = [rng.choice([0, 1, 65535]), 0, rng.choice([0, 7, 8, 16, 32])]
    else:
        del ds.RedPaletteColorLookupTableDescriptor


def _timing(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    """Malformed or nonsensical FrameTime / FrameTimeVector / CineRate."""
    bad = rng.choice([b"abc", b"0", b"-33.3", b"nan", b"inf", b"1e400", b"", b"\\"])
    keyword = rng.choice(["FrameTime", "CineRate", "FrameTimeVector"])
    if keyword == "FrameTime":
        set_raw(ds, keyword, "DS", bad)
    elif keyword == "CineRate":
        set_raw(ds, keyword, "IS", rng.choice([b"0", b"-5", b"abc", b"1.5", b""]))
    else:
        set_raw(ds, keyword, "DS", b"0\\" + b"\\".join([bad] * max(seed.frames - 1, 1)))
    if rng.random() < 0.5 and keyword != "FrameTime" and "FrameTime" in ds:
        del ds.FrameTime


def _spacing(seed: Seed, rng: random.Random, ds: pydicom.Dataset) -> None:
    """Malformed PixelSpacing or incomplete / nonsensical ultrasound regions."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions and rng.random() < 0.6:
        region = rng.choice(list(regions))
        region.RegionSpatialFormat, region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 1, 3, 3
        keyword = rng.choice(["PhysicalDeltaX", "PhysicalDeltaY", "RegionLocationMinX0", "RegionSpatialFormat"])
        if rng.random() < 0.5 and keyword in region:
            del region[keyword]
        elif keyword.startswith("Physical"):
            set_raw(region, keyword, "FD", rng.choice([b"", b"\x00" * 8, struct.pack("<d", float("nan")), b"\x01\x02"]))
        else:
            set_raw(region, keyword, "US", b"\x01")
        return
    if "SequenceOfUltrasoundRegions" in ds:
        del ds.SequenceOfUltrasoundRegions
    set_raw(ds, "PixelSpacing", "DS", rng.choice([b"abc\\1", b"0.3", b"0\\0", b"-1\\-1", b"nan\\nan", b"", b"1\\2\\3"]))


STRUCTURED: dict[str, Callable[[Seed, random.Random, pydicom.Dataset], None]] = {
    "number_of_frames": _frames,
    "delete_tag": _delete,
    "odd_value": _odd,
    "pixel_data": _pixel_data,
    "palette": _palette,
    "timing": _timing,
    "spacing": _spacing,
}


def _structured(*names: str) -> Callable[[Seed, random.Random], bytes | None]:
    def edit(seed: Seed, rng: random.Random) -> bytes | None:
        ds = pydicom.dcmread(BytesIO(seed.data))
        try:
            for name in names or rng.sample(sorted(STRUCTURED), 2):
                STRUCTURED[name](seed, rng, ds)
            return _write(ds)
        except Exception:  # pydicom refuses the edit or cannot write the mutant: the caller draws another
            return None

    return edit


MUTATIONS: dict[str, Callable[[Seed, random.Random], bytes | None]] = {
    "truncate_header": _truncate("header"),
    "truncate_pixels": _truncate("pixels"),
    "flip_header": _flip("header", 4),
    "flip_pixels": _flip("pixels", 16),
    "splice": _splice,
    "append": _append,
    "transfer_syntax": _syntax,
    **{name: _structured(name) for name in STRUCTURED},
    "two_structured": _structured(),
}


def mutate(seed: Seed, rng: random.Random, kind: str | None = None) -> tuple[str, bytes | None]:
    """(kind, mutant bytes or None when unwritable) of one random mutation of ``seed``."""
    kind = kind or rng.choice(sorted(MUTATIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kind, MUTATIONS[kind](seed, rng)


# ---- checking a loaded cine ----------------------------------------------------------------------------------------


def _header(path: str) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def _tag_int(ds: pydicom.Dataset | None, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword)) if ds is not None and ds.get(keyword) not in (None, "") else None
    except Exception:
        return None


def check_cine(cine: Any, path: str) -> str | None:
    """What is wrong with the loaded ``cine`` of ``path`` (None when it agrees with the DICOM header, if any)."""
    if cine.ndim != 4:
        return f"shape {tuple(cine.shape)} is not (C, H, W, T)"
    channels, height, width, frames = cine.shape
    if channels not in (1, 3) or min(height, width, frames) < 1:
        return f"shape {tuple(cine.shape)}: C must be 1 or 3 and H, W, T at least 1"
    header = _header(path)
    expected = {"Rows": height, "Columns": width, "NumberOfFrames": frames}
    for keyword, actual in expected.items():
        stated = _tag_int(header, keyword)
        if stated is None and keyword == "NumberOfFrames" and header is not None:
            stated = 1
        if stated is not None and stated != actual:
            return f"{keyword} is {stated} but the clip has {actual}"
    if cine.is_floating_point() and not bool(cine.isfinite().all()):
        return "non-finite pixel values"
    frame_time = cine.meta.get("frame_time_ms")
    if not (isinstance(frame_time, float) and np.isfinite(frame_time) and frame_time > 0):
        return f"frame_time_ms {frame_time!r} is not a positive number"
    spacing = cine.meta.get("pixel_spacing_mm")
    if spacing is not None and not all(np.isfinite(s) and s > 0 for s in spacing):
        return f"pixel_spacing_mm {spacing!r} is not positive"
    return None


def _caused_by_memory(err: BaseException | None) -> bool:
    while err is not None:
        if isinstance(err, MemoryError):
            return True
        err = err.__cause__ or err.__context__
    return False


def classify(path: str) -> tuple[str, str]:
    """(status, detail) of loading ``path`` with ``load_cine`` in this process."""
    from vivim_monai.data import CineReadError, load_cine  # here, so that importing the helpers stays light

    try:
        cine = load_cine(path)
    except (CineReadError, MemoryError) as err:
        detail = f"{type(err).__name__}: {err}"[:500]
        if _caused_by_memory(err):
            return "oom", detail
        return ("clear_error" if os.path.basename(path) in str(err) else "crash"), detail
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        return "crash", f"{type(err).__name__}: {err} at {where.filename}:{where.lineno}"[:500]
    problem = check_cine(cine, path)
    return ("garbage", problem) if problem else ("ok", "")


# ---- the bounded runner --------------------------------------------------------------------------------------------


def _limit_address_space(headroom: int) -> bool:
    """Cap this process's address space at its size now + ``headroom`` (Linux); whether a cap was set."""
    try:
        with open("/proc/self/statm") as statm:
            virtual = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (virtual + headroom, resource.RLIM_INFINITY))
        return True
    except (OSError, ValueError):
        return False


Classifier = Callable[[str], tuple[str, str]]


def _serve(conn: Any, memory_headroom: int, target: Classifier) -> None:
    """Worker loop: answer ``target(path)`` for each path received, with a capped address space."""
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    conn.send("ready" if _limit_address_space(memory_headroom) else "ready (no memory cap)")
    while True:
        path = conn.recv()
        if path is None:
            return
        conn.send(target(path))


class LoaderWorker:
    """A forked process that classifies files one at a time (``target``, default :func:`classify`) with its
    address space capped at its size + ``memory_headroom``; restarted after a hang or a death."""

    def __init__(self, memory_headroom: int = 6 << 30, target: Classifier = classify) -> None:
        self._context = multiprocessing.get_context("fork")  # the parent's imports are reused: no start-up cost
        self._headroom, self._target = memory_headroom, target
        self.memory_capped = False
        self._start()

    def _start(self) -> None:
        self._conn, child = self._context.Pipe()
        args = (child, self._headroom, self._target)
        self._process = self._context.Process(target=_serve, args=args, daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(60):
            raise RuntimeError("fuzzing worker did not start")
        self.memory_capped = self._conn.recv() == "ready"

    def run(self, path: str, time_limit: float) -> tuple[str, str]:
        """(status, detail) of ``path``; ``hang`` when no answer comes within ``time_limit`` s."""
        if not self._process.is_alive():
            self._start()
        self._conn.send(path)
        if self._conn.poll(time_limit):
            try:
                return self._conn.recv()
            except EOFError:
                self._process.join(5)
                code = self._process.exitcode
                self._start()
                return "crash", f"worker died (exit code {code})"
        self._process.kill()
        self._process.join(5)
        self._start()
        return "hang", f"no result within {time_limit} s"

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()


def fuzz(
    seeds: list[Seed], cases: int, workdir: Path, seed: int = 0, time_limit: float = 10.0, keep: int = 50
) -> dict[str, Any]:
    """Load ``cases`` mutants of ``seeds`` (round robin) and return a summary; the first ``keep`` failing mutants
    stay in ``workdir`` for reproduction, the others are deleted.

    Unwritable mutants are replaced by another draw, so ``cases`` mutants are always loaded.
    """
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    failures: list[dict[str, str]] = []
    signatures: Counter = Counter()
    skipped = 0
    slowest = (0.0, "")
    start = time.perf_counter()
    worker = LoaderWorker()
    try:
        for case in range(cases):
            source = seeds[case % len(seeds)]
            kind, data = mutate(source, rng)
            while data is None:
                skipped += 1
                kind, data = mutate(source, rng)
            path = workdir / f"case{case:05d}_{Path(source.name).stem}_{kind}.dcm"
            path.write_bytes(data)
            tick = time.perf_counter()
            status, detail = worker.run(str(path), time_limit)
            slowest = max(slowest, (time.perf_counter() - tick, path.name))
            counts[status] += 1
            by_kind.setdefault(kind, Counter())[status] += 1
            if status != "ok":
                signatures[f"{status}: {re.sub(r'[0-9]+', 'N', detail.replace(str(path), '<file>'))[:90]}"] += 1
            if status in FAILURES and len(failures) < keep:
                failures.append({"file": str(path), "status": status, "detail": detail})
            else:
                path.unlink()
    finally:
        worker.close()
    return {
        "cases": cases,
        "seed": seed,
        "sources": [s.name for s in seeds],
        "counts": {status: counts[status] for status in STATUSES},
        "unwritable_mutants_redrawn": skipped,
        "by_kind": {kind: dict(c) for kind, c in sorted(by_kind.items())},
        "slowest_case_s": [round(slowest[0], 3), slowest[1]],
        "wall_s": round(time.perf_counter() - start, 1),
        "failure_signatures": {key: n for key, n in signatures.most_common() if not key.startswith("clear_error")},
        "clear_error_signatures": {key: n for key, n in signatures.most_common(40) if key.startswith("clear_error")},
        "failures": failures,
    }


def write_summary(summary: dict[str, Any], path: Path) -> str:
    """Write ``summary`` as JSON to ``path`` and return a one-line digest for the test log."""
    path.write_text(json.dumps(summary, indent=1))
    counts = " ".join(f"{k}={v}" for k, v in summary["counts"].items())
    return f"fuzz: {summary['cases']} cases, {counts}, wall {summary['wall_s']} s, summary {path}"


def rejected_mutants(
    seeds: list[Seed], count: int, workdir: Path, seed: int = 0, time_limit: float = 10.0, max_draws: int = 2000
) -> tuple[list[dict[str, str]], Counter]:
    """The first ``count`` seeded mutants of ``seeds`` (round robin) that ``load_cine`` rejects with a clear
    ``CineReadError``, kept in ``workdir`` to replay elsewhere (e.g. against a server): ``[{"file", "kind",
    "message"}]``, and the statuses of all the mutants drawn. Mutants that load (or fail otherwise) are deleted."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    rejected: list[dict[str, str]] = []
    drawn: Counter = Counter()
    worker = LoaderWorker()
    try:
        for case in range(max_draws):
            if len(rejected) == count:
                break
            source = seeds[case % len(seeds)]
            kind, data = mutate(source, rng)
            while data is None:
                kind, data = mutate(source, rng)
            path = workdir / f"case{case:05d}_{Path(source.name).stem}_{kind}.dcm"
            path.write_bytes(data)
            status, detail = worker.run(str(path), time_limit)
            drawn[status] += 1
            if status == "clear_error":
                rejected.append({"file": str(path), "kind": kind, "message": detail})
            else:
                path.unlink()
    finally:
        worker.close()
    return rejected, drawn
