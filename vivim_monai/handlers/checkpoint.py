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

from vivim_monai.networks.weights import state_dict_mismatch, upgrade_legacy_keys

__all__ = ["ModelWeights", "state_dict_mismatch"]


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
        """Load ``{"model": weights}`` or bare weights (legacy parameter names renamed, see ``LEGACY_KEY_RULES``); a
        checkpoint that does not fit raises ``ValueError``."""
        weights = upgrade_legacy_keys(state["model"] if isinstance(state.get("model"), Mapping) else state)
        problem = state_dict_mismatch(self.module, weights, self.checkpoint, strict=strict)
        if problem is not None:
            raise ValueError(problem)
        return self.module.load_state_dict(weights, strict=strict)
