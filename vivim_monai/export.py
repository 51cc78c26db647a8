"""Export the whole Vivim network (ST-Mamba time mixing included) to files that run without this package.

Formats (``FORMATS``), all captured from the pure-PyTorch selective scan (the ``torch`` backend of
:mod:`vivim_monai.ops`; the compiled CPU kernel and mamba-ssm are ``torch.autograd.Function`` calls into Python that
no saved graph can hold):

* ``torchscript`` (``.ts``): ``torch.jit.trace``, loadable with ``torch.jit.load`` (no vivim-monai needed), as
  ``monai.bundle ckpt_export --use_trace True`` writes it. ``torch.jit.script`` cannot compile Vivim (optional
  submodules, ``Sequence`` annotations, the ``ScanOrder`` dataclass, backend dispatch), hence tracing.
* ``program`` (``.pt2``): ``torch.export.export`` saved with ``torch.export.save``
  (https://docs.pytorch.org/docs/stable/export.html), with a dynamic batch dimension.
* ``onnx`` (``.onnx``): ``torch.onnx.export(..., dynamo=True)`` of that exported program, run with onnxruntime
  (needs ``onnx``, ``onnxscript``; ``onnxruntime`` to run; pinned in requirements-dev.txt), dynamic batch.

**Each file is fixed to one clip shape (C, H, W, T).** The chunked scan (``selective_scan_chunked``) runs Python
loops whose counts depend on the token count ``L = T * h * w``; every capture unrolls them, so a file only computes
clips of the shape it was exported with (batch excepted). ``torch.export`` guards say so with an error, a traced
graph may fail or (same ``L``, other ``H``/``W``) run on; therefore every export stores a JSON record
(``METADATA_KEY``: format, clip shape, dtype, network, verification) inside the file, and :func:`load_exported`
checks every input against it. Long cines go through :class:`vivim_monai.inferers.SlidingClipInferer` with
``clip_length = T``, frames resized to ``H x W``.

Exports verify themselves: the exported graph and eager PyTorch (same weights, ``torch`` backend) run the example
clip, and the maximum absolute difference is recorded (``verified_max_abs_diff``); above ``tolerance`` (times the
largest logit magnitude when that exceeds 1) the export fails instead of writing a wrong file. Files are written
atomically (:func:`vivim_monai.utils.atomic_write`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from vivim_monai.utils import atomic_write

__all__ = [
    "FORMATS",
    "METADATA_KEY",
    "ExportedModel",
    "clip_from_cine",
    "export_network",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "format_of",
    "load_exported",
    "portable_scan",
]

#: format name -> file suffix
FORMATS = {"torchscript": ".ts", "program": ".pt2", "onnx": ".onnx"}
_SUFFIXES = {suffix: fmt for fmt, suffix in FORMATS.items()}
#: name of the JSON record inside every exported file (TorchScript / .pt2 extra file, ONNX metadata property)
METADATA_KEY = "vivim_export.json"
DEFAULT_TOLERANCE = 1e-4
MAX_BATCH = 1024


@contextlib.contextmanager
def portable_scan(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every module with a ``scan_backend`` runs the pure-PyTorch scan and ``net`` is in eval mode;
    both are restored on exit, so exporting never changes the caller's network."""
    backends = [(m, m.scan_backend) for m in net.modules() if hasattr(m, "scan_backend")]
    modes = [(m, m.training) for m in net.modules()]
    try:
        for module, _ in backends:
            module.scan_backend = "torch"
        net.eval()
        yield net
    finally:
        for module, backend in backends:
            module.scan_backend = backend
        for module, training in modes:
            module.training = training


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` checked, or the format implied by the suffix of ``path`` (``.ts``, ``.pt2``, ``.onnx``)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"{os.fspath(path)}: unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"{os.fspath(path)}: cannot tell the export format from the suffix {suffix!r}; use one of "
            f"{sorted(_SUFFIXES)} or pass the format ({sorted(FORMATS)})"
        )
    return _SUFFIXES[suffix]


def _describe(net: nn.Module) -> str:
    found = [
        f"{name}={getattr(net, name)!r}" for name in ("variant", "in_channels", "out_channels") if hasattr(net, name)
    ]
    return f"{type(net).__name__}({', '.join(found)})"


def _check_example(net: nn.Module, example: torch.Tensor) -> torch.Tensor:
    if not isinstance(net, nn.Module):
        raise TypeError(f"export needs a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() != 5 or not example.is_floating_point():
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise ValueError(f"export needs a floating-point example clip (B, C, H, W, T), got {shape}")
    if hasattr(net, "check_input"):
        net.check_input(example)
    example = example.as_tensor() if hasattr(example, "as_tensor") else example  # MetaTensor -> plain tensor
    parameter = next(net.parameters(), None)
    return example.detach().to(parameter.device if parameter is not None else example.device)


def _record(net: nn.Module, example: torch.Tensor, fmt: str, dynamic_batch: bool) -> dict[str, Any]:
    return {
        "format": fmt,
        "network": _describe(net),
        "clip_shape": list(example.shape[1:]),
        "example_batch": int(example.shape[0]),
        "dynamic_batch": dynamic_batch,
        "dtype": str(example.dtype).replace("torch.", ""),
        "scan_backend": "torch",
        "torch_version": torch.__version__,
    }


def _batched_example(example: torch.Tensor) -> torch.Tensor:
    """torch.export specialises a size-1 dimension to 1: trace a dynamic batch from an example of (at least) two."""
    return example if example.shape[0] > 1 else example.expand(2, *example.shape[1:]).contiguous()


def _verify(
    reference: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, tolerance: float
) -> float:
    got = run(example)
    if got.shape != reference.shape:
        raise RuntimeError(f"exported graph returns {tuple(got.shape)}, eager PyTorch {tuple(reference.shape)}")
    diff = float((got.float() - reference.float()).abs().max())
    limit = tolerance * max(1.0, float(reference.abs().max()))  # relative to the largest logit when that exceeds 1
    if not diff <= limit:  # also catches NaN
        raise RuntimeError(f"exported graph differs from eager PyTorch by {diff:.3g} (> tolerance {limit:.3g})")
    return diff


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the expected warnings of tracing: Python values computed from shapes are baked into the graph (which
    is why the clip shape is recorded and checked) and ``torch.jit.trace`` is deprecated in favour of torch.export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\S+` is deprecated", category=DeprecationWarning)
        yield


def export_torchscript(
    net: nn.Module, example: torch.Tensor, path: str | os.PathLike, tolerance: float = DEFAULT_TOLERANCE
) -> Path:
    """Trace ``net`` on ``example`` (B, C, H, W, T) with the portable scan and save TorchScript to ``path``.

    The batch size stays free (reshapes read it from the input); the clip shape (C, H, W, T) is fixed.
    """
    example = _check_example(net, example)
    with portable_scan(net), torch.no_grad(), _quiet_tracing():
        reference = net(example)
        traced = torch.jit.trace(net, example, check_trace=False)
        record = _record(net, example, "torchscript", dynamic_batch=True)
        record["verified_max_abs_diff"] = _verify(reference, traced, example, tolerance)
    extra = {METADATA_KEY: json.dumps(record)}
    return atomic_write(path, lambda name: torch.jit.save(traced, name, _extra_files=extra))


def _export_program(net: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    if not dynamic_batch:
        return torch.export.export(net, (example,))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(net, (_batched_example(example),), dynamic_shapes={"x": {0: batch}})


def export_program(
    net: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    dynamic_batch: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Path:
    """``torch.export`` ``net`` with the portable scan and save the ExportedProgram (``.pt2``) to ``path``.

    ``dynamic_batch``: any batch size from 1 to ``MAX_BATCH``; otherwise the example's. Load with
    ``torch.export.load(path).module()`` or :func:`load_exported`.
    """
    example = _check_example(net, example)
    with portable_scan(net), torch.no_grad():
        reference = net(example)
        program = _export_program(net, example, dynamic_batch)
        record = _record(net, example, "program", dynamic_batch)
        record["verified_max_abs_diff"] = _verify(reference, program.module(), example, tolerance)
    extra = {METADATA_KEY: json.dumps(record)}
    return atomic_write(path, lambda name: torch.export.save(program, name, extra_files=extra))


def export_onnx(
    net: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    dynamic_batch: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    optimize: bool = False,
) -> Path:
    """Export ``net`` to ONNX (input ``clip``, output ``logits``) from its ``torch.export`` program.

    ``optimize`` runs onnxscript's graph optimiser: minutes on the unrolled scan for a few percent of speed
    (onnxruntime optimises the graph again when it loads it). The graph and weights go in one file (no external
    data). With onnxruntime importable the file is verified against eager PyTorch before it is written.
    """
    example = _check_example(net, example)
    with portable_scan(net), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)  # inside torch's pytree
        reference = net(example)
        program = _export_program(net, example, dynamic_batch)
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            input_names=["clip"],
            output_names=["logits"],
            optimize=optimize,
            verbose=False,
        )
    record = _record(net, example, "onnx", dynamic_batch)
    record["verified_max_abs_diff"] = None

    def write(name: str) -> None:
        onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(record)
        onnx_program.save(name, external_data=False)
        session = _onnx_session(name, required=False)
        if session is None:
            warnings.warn(f"{os.fspath(path)}: onnxruntime is not importable, the ONNX file was not verified")
            return
        record["verified_max_abs_diff"] = _verify(reference, _OnnxRunner(session), example, tolerance)
        onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(record)
        onnx_program.save(name, external_data=False)

    return atomic_write(path, write)


_EXPORTERS = {"torchscript": export_torchscript, "program": export_program, "onnx": export_onnx}


def export_network(
    net: nn.Module, example: torch.Tensor, path: str | os.PathLike, fmt: str | None = None, **kwargs: Any
) -> Path:
    """Export in ``fmt`` (default: from the suffix of ``path``); see the module docstring."""
    return _EXPORTERS[format_of(path, fmt)](net, example, path, **kwargs)


def _onnx_session(path: str, required: bool = True, threads: int | None = None):
    try:
        import onnxruntime
    except ImportError as err:
        if not required:
            return None
        raise ImportError(f"{path}: running an ONNX export needs onnxruntime (requirements-dev.txt)") from err
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = int(threads)
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class _OnnxRunner:
    """Calls an onnxruntime session like a module: torch tensor in, torch tensor out (CPU execution)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(x.device)


class ExportedModel(nn.Module):
    """An exported Vivim loaded for inference: checks every clip against the export record, then runs the graph.

    Attributes: ``path``, ``format``, ``metadata`` (the record, empty for files written elsewhere, e.g. by
    ``ckpt_export``, whose inputs then cannot be checked) and ``runner`` (the ScriptModule, the ``.pt2`` program's
    module, or the onnxruntime session wrapper).
    """

    def __init__(self, path: Path, fmt: str, runner: Callable[[torch.Tensor], torch.Tensor], metadata: dict) -> None:
        super().__init__()
        self.path, self.format, self.metadata = path, fmt, metadata
        if isinstance(runner, nn.Module):
            self.runner = runner
        else:
            self._call = runner

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x) if hasattr(self, "runner") else self._call(x)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the file when ``x`` is not a clip this export computes."""
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.path}: expects a clip (B, C, H, W, T), got {shape}")
        clip = self.metadata.get("clip_shape")
        if clip is not None and list(x.shape[1:]) != list(clip):
            raise ValueError(
                f"{self.path}: exported for clips (C, H, W, T) = {tuple(clip)}, got {tuple(x.shape[1:])}; the "
                "selective scan's loops are unrolled for that shape. Resize frames to H x W, run T-frame windows "
                "(SlidingClipInferer(clip_length=T)) or export again with this shape"
            )
        batch = self.metadata.get("example_batch")
        if batch is not None and not self.metadata.get("dynamic_batch") and x.shape[0] != batch:
            raise ValueError(f"{self.path}: exported for batch size {batch}, got {x.shape[0]}")
        if not x.is_floating_point():
            raise ValueError(f"{self.path}: expects a floating-point clip, got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W, T) of ``x`` (B, C, H, W, T); computed in the export's dtype, returned in ``x``'s."""
        self.check_input(x)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        dtype = getattr(torch, self.metadata.get("dtype", "float32"))
        with torch.no_grad():
            return self._run(x.to(dtype)).to(x.dtype)


def load_exported(path: str | os.PathLike, fmt: str | None = None, threads: int | None = None) -> ExportedModel:
    """Load a file written by :func:`export_network` (or any TorchScript / ``.pt2`` / ONNX file) on the CPU.

    ``threads``: onnxruntime's intra-op threads (default: its own choice); the PyTorch formats use
    ``torch.set_num_threads``.

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file when it is absent or not a loadable export.
    """
    path = Path(path)
    fmt = format_of(path, fmt)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model file")
    extra = {METADATA_KEY: ""}
    try:
        if fmt == "torchscript":
            runner: Any = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
            text = extra[METADATA_KEY]
        elif fmt == "program":
            runner = torch.export.load(str(path), extra_files=extra).module()
            text = extra[METADATA_KEY]
        else:
            session = _onnx_session(str(path), threads=threads)
            runner = _OnnxRunner(session)
            text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")
    except ImportError:
        raise
    except Exception as err:  # torch/onnxruntime raise runtime, zip, protobuf and OS errors for unreadable files
        raise ValueError(f"{path}: cannot load as a {fmt} export ({type(err).__name__}: {err})") from err
    text = text.decode() if isinstance(text, bytes) else text
    try:
        metadata = json.loads(text) if text else {}
    except ValueError as err:
        raise ValueError(f"{path}: unreadable export record {METADATA_KEY} ({err})") from err
    if not metadata:
        warnings.warn(f"{path}: no {METADATA_KEY} record, so input shapes cannot be checked before running")
    return ExportedModel(path, fmt, runner, metadata)


def clip_from_cine(
    path: str | os.PathLike, clip_shape: Sequence[int], start: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A (1, C, H, W, T) float32 clip in [0, 1] from a real cine: frames ``start .. start+T-1``, C channels
    (:class:`ToChannelsd` rules), min-max scaled and resized bilinearly to H x W. Also returns facts for reports."""
    from monai.transforms import Resize

    from vivim_monai.data import load_cine
    from vivim_monai.transforms import ToChannelsd

    channels, height, width, frames = (int(v) for v in clip_shape)
    started = time.perf_counter()
    cine = load_cine(path)
    if cine.shape[-1] < start + frames:
        raise ValueError(
            f"{os.fspath(path)}: {cine.shape[-1]} frames, a clip needs frames {start}..{start + frames - 1}"
        )
    clip = ToChannelsd("image", channels)({"image": cine[..., start : start + frames].float()})["image"]
    clip = clip.as_tensor() if hasattr(clip, "as_tensor") else clip
    low, high = clip.min(), clip.max()
    clip = (clip - low) / (high - low) if high > low else torch.zeros_like(clip)
    clip = Resize((height, width, frames), mode="trilinear")(clip)
    clip = (clip.as_tensor() if hasattr(clip, "as_tensor") else clip).float().unsqueeze(0)
    facts = {"file": os.fspath(path), "cine_shape": tuple(cine.shape), "seconds": time.perf_counter() - started}
    return clip.contiguous(), facts
