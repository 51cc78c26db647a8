"""``TrainingRNG``: every random number generator training draws from, as a checkpointable state dict.

A resumed run must draw the same shuffles, clips and augmentations as an uninterrupted one, but MONAI/ignite
checkpoints hold no RNG. Saved next to the network, optimiser, scheduler and trainer (key ``"rng"`` of the bundle's
state checkpoint), this object captures torch's CPU (and CUDA) generators, numpy's and Python's global generators and
the ``R`` (``np.random.RandomState``) of every MONAI ``Randomizable`` transform inside ``transforms`` (Compose lists
and wrapped transforms such as ``RandAffined.rand_affine`` are walked). The state holds only tensors, numbers and
strings, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Mapping

import numpy as np
import torch
from monai.transforms import Randomizable, Transform

__all__ = ["TrainingRNG", "randomizable_transforms"]

logger = logging.getLogger(__name__)


def randomizable_transforms(transforms: Any) -> dict[str, Randomizable]:
    """Every ``Randomizable`` in ``transforms`` (a transform or a list/dict of them) by attribute path, e.g.
    ``"transforms.0.rand_affine"``; each object once, in a stable order."""
    found: dict[str, Randomizable] = {}
    seen: set[int] = set()

    def visit(obj: Any, path: str) -> None:
        if id(obj) in seen:
            return
        if isinstance(obj, (list, tuple)):
            items: Any = enumerate(obj)
        elif isinstance(obj, Mapping):
            items = obj.items()
        elif isinstance(obj, (Transform, Randomizable)):
            if isinstance(obj, Randomizable):
                found[path or "."] = obj
            items = sorted(getattr(obj, "__dict__", {}).items())
        else:
            return
        seen.add(id(obj))
        for key, value in items:
            visit(value, f"{path}.{key}" if path else str(key))

    visit(transforms, "")
    return found


def _mt_state(state: tuple) -> dict[str, Any]:
    """numpy's ``('MT19937', keys, pos, has_gauss, cached_gaussian)`` without numpy objects."""
    name, keys, pos, has_gauss, cached = state
    if name != "MT19937":
        raise ValueError(f"unsupported numpy bit generator {name!r}")
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _mt_tuple(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(torch.as_tensor(state["keys"]).cpu().numpy(), dtype=np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


class TrainingRNG:
    """State-dict view of the random generators of a training run; checkpoint it with the model (see module notes).

    Args:
        transforms: the training transforms whose MONAI ``R`` generators are saved (e.g. ``@train#preprocessing``
            and ``@train#case_preprocessing``); None saves only the global generators.

    Bundle config (train.json)::

        "training_rng": {"_target_": "vivim_monai.handlers.TrainingRNG", "transforms": "@train#preprocessing"}

    and ``"rng": "@training_rng"`` in both the state ``CheckpointSaver``'s ``save_dict`` and the resume
    ``CheckpointLoader``'s ``load_dict``.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def state_dict(self) -> dict[str, Any]:
        version, mt, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _mt_state(np.random.get_state()),
            "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
            "transforms": {
                path: _mt_state(t.R.get_state()) for path, t in randomizable_transforms(self.transforms).items()
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore every generator; with ``strict``, the saved and current transforms must match path for path."""
        current = randomizable_transforms(self.transforms)
        saved = state.get("transforms", {})
        missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        if strict and (missing or unexpected):
            raise ValueError(
                "the checkpoint's RNG state is of other training transforms: "
                f"{len(missing)} random transforms without a saved state (e.g. {missing[:3]}), "
                f"{len(unexpected)} saved states without a transform (e.g. {unexpected[:3]}); "
                "resume with the transforms it was trained with"
            )
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
        np.random.set_state(_mt_tuple(state["numpy"]))
        python = state["python"]
        mt = tuple(int(v) for v in torch.as_tensor(python["state"]).tolist())
        gauss_next = python.get("gauss_next")
        random.setstate((int(python["version"]), mt, None if gauss_next is None else float(gauss_next)))
        for path, transform in current.items():
            if path in saved:
                transform.R.set_state(_mt_tuple(saved[path]))
        cuda = state.get("cuda")
        if cuda is not None:
            if torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
            else:
                logger.warning("the checkpoint holds the RNG state of %d CUDA devices, not restored here", len(cuda))
