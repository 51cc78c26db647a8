"""``ModelWeights``: make MONAI's ``CheckpointSaver`` write ``{"model": state_dict}`` (the Model Zoo format).

ignite's ``Checkpoint`` stores a single saved object's ``state_dict`` bare, so ``save_dict={"model": net}`` gives a
file without the ``"model"`` key that MONAI Label, ``ckpt_export --key_in_ckpt model`` and the zoo's ``model.pt``
expect. Saving ``ModelWeights(net)`` instead nests the weights under ``"model"``; loading accepts both layouts.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["ModelWeights"]


class ModelWeights:
    """State-dict view ``{"model": network weights}`` of a network (DataParallel/DDP wrappers are unwrapped)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    @property
    def module(self) -> torch.nn.Module:
        wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
        return self.network.module if isinstance(self.network, wrappers) else self.network

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any:
        return self.module.load_state_dict(state.get("model", state), strict=strict)
