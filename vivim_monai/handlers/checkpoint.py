"""``ModelWeights``: make MONAI's ``CheckpointSaver`` write ``{"model": state_dict}`` (the Model Zoo format), and
load checkpoints with a short, clear error when they do not fit the network.

ignite's ``Checkpoint`` stores a single saved object's ``state_dict`` bare, so ``save_dict={"model": net}`` gives a
file without the ``"model"`` key that MONAI Label, ``ckpt_export --key_in_ckpt model`` and the zoo's ``model.pt``
expect. Saving ``ModelWeights(net)`` instead nests the weights under ``"model"``; loading accepts both layouts.
Loading a network directly (``CheckpointLoader`` with ``load_dict={"model": net}``) reports a mismatch as one size
error per tensor; ``ModelWeights`` compares first and names the classes, channels, variant or keys that differ.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

__all__ = ["ModelWeights", "state_dict_mismatch"]

_EXAMPLES = 3


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(getattr(tensor, "shape", ()))


def _describe(module: torch.nn.Module) -> str:
    """``Vivim(variant='tiny', in_channels=3, out_channels=3)``: the class and the arguments that shape it (read
    from the module, else from a wrapped ``module.network`` such as PerFrameUNet's 2-D UNet)."""
    inner = getattr(module, "network", None)
    found = []
    for name in ("variant", "in_channels", "out_channels"):
        owner = module if hasattr(module, name) else inner if hasattr(inner, name) else None
        if owner is not None:
            found.append(f"{name}={getattr(owner, name)!r}")
    return f"{type(module).__name__}({', '.join(found)})"


def _architecture_differences(module: torch.nn.Module, state: Mapping[str, Any]) -> list[str]:
    """What the checkpoint says about the architecture, where it differs (Vivim: classes, channels, widths...)."""
    from vivim_monai.networks.nets.vivim import Vivim, _architecture  # Vivim's own checkpoint reading

    if not isinstance(module, Vivim):
        return []
    found, expected = _architecture(state), _architecture(module.state_dict())
    return [
        f"{name} {found[name]} in the checkpoint vs {expected[name]} here"
        for name in expected
        if found.get(name) not in (None, expected[name])
    ]


def state_dict_mismatch(
    module: torch.nn.Module, state: Mapping[str, Any], source: str | os.PathLike | None = None, strict: bool = True
) -> str | None:
    """Why ``state`` cannot be loaded into ``module`` (None when it can), in one short line: for Vivim the
    architecture differences (classes, channels, widths, depths) and counts, otherwise the counts and first examples
    of tensors of another shape, unexpected and missing keys."""
    own = module.state_dict()
    wrong_shape = [k for k in state if k in own and _shape(own[k]) != _shape(state[k])]
    unexpected = sorted(set(state) - set(own)) if strict else []
    missing = sorted(set(own) - set(state)) if strict else []
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


class ModelWeights:
    """State-dict view ``{"model": network weights}`` of a network (DataParallel/DDP wrappers are unwrapped).

    Args:
        network: the network whose weights are saved and loaded.
        checkpoint: the file being loaded, only named in error messages (e.g. ``"@ckpt_path"``).
    """

    def __init__(self, network: torch.nn.Module, checkpoint: str | os.PathLike | None = None) -> None:
        self.network = network
        self.checkpoint = checkpoint

    @property
    def module(self) -> torch.nn.Module:
        wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
        return self.network.module if isinstance(self.network, wrappers) else self.network

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any:
        """Load ``{"model": weights}`` or bare weights; a checkpoint that does not fit raises ``ValueError``."""
        weights = state["model"] if isinstance(state.get("model"), Mapping) else state
        problem = state_dict_mismatch(self.module, weights, self.checkpoint, strict=strict)
        if problem is not None:
            raise ValueError(problem)
        return self.module.load_state_dict(weights, strict=strict)
