"""The prompt of each case, passed by the bundle's engines to a text-prompted network as ``prompt=[...]``.

The prompt comes from the case (a datalist field, ``"prompt"``) unless the run overrides it; the evaluation of prompt
sensitivity asks the same model with the right prompt, with another dataset's prompt and with an empty prompt
(Poudel et al., arXiv 2308.07706, found that such models often ignore the prompt: then all three score alike).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch

__all__ = ["PROMPT_KEY", "PROMPT_MODES", "PrepareBatchPrompt"]

PROMPT_KEY = "prompt"
PROMPT_MODES = ("own", "other", "empty")


class PrepareBatchPrompt(PrepareBatch):
    """``(image, label, (), {"prompt": prompts})`` for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

    Args:
        prompt: one prompt for every case (an inference option), overriding the cases' own; ``None``: the cases'.
        mode: ``"own"`` (the case's or ``prompt``), ``"other"`` (the next of ``prompts`` after the case's own,
            cyclically: another dataset's prompt) or ``"empty"`` (``""``).
        prompts: the known prompts, in order (needed by ``"other"``).

    Cases without a prompt (and no ``prompt`` given) get ``None``: the network's default prompt.
    """

    def __init__(
        self,
        prompt: str | None = None,
        mode: Literal["own", "other", "empty"] = "own",
        prompts: Sequence[str] = (),
    ) -> None:
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {mode!r}")
        if mode == "other" and len(prompts) < 2:
            raise ValueError("prompt mode 'other' needs at least two known prompts")
        self.prompt, self.mode, self.prompts = prompt, mode, list(prompts)

    def _other(self, prompt: str) -> str:
        if prompt not in self.prompts:
            raise ValueError(f"prompt {prompt!r} is not one of the known prompts {self.prompts}")
        return self.prompts[(self.prompts.index(prompt) + 1) % len(self.prompts)]

    def case_prompts(self, batchdata: dict[str, Any]) -> list[str] | None:
        """The prompts of a collated batch after the override and the mode (None: the network's default)."""
        batch = len(batchdata["image"])
        found = batchdata.get(PROMPT_KEY)
        prompts = [self.prompt] * batch if self.prompt is not None else None if found is None else list(found)
        if self.mode == "empty":
            return [""] * batch
        if prompts is None:
            if self.mode == "other":
                raise ValueError("prompt mode 'other' needs each case's prompt (a datalist 'prompt' field)")
            return None
        return [self._other(p) for p in prompts] if self.mode == "other" else prompts

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict[str, Any]]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        return image, label, (), {PROMPT_KEY: self.case_prompts(batchdata)}
