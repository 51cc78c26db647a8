"""``TrainingProgress``: ignite's tqdm progress bar with the running loss, attachable from a bundle config."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar
from monai.handlers import from_engine

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """Per-epoch progress bar showing ``loss_key`` of the engine output (MONAI trainers decollate their output).

    Bundle handlers are attached with ``handler.attach(engine)`` only, so the output transform is fixed here.
    """

    def __init__(self, loss_key: str = "loss", persist: bool = False) -> None:
        self.loss_key, self.persist = loss_key, persist

    def attach(self, engine: Engine) -> None:
        pick = from_engine([self.loss_key], first=True)

        def loss(output: Any) -> dict[str, float]:
            value = pick(output)  # one key: the value itself
            return {self.loss_key: float(value[0] if isinstance(value, (tuple, list)) else value)}

        ProgressBar(persist=self.persist).attach(engine, output_transform=loss)
