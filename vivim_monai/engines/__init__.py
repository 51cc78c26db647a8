"""What the bundle's ignite engines carry per case (read from ``engine.state`` for the handlers) and pass to the
network (a text-prompted network's prompts)."""

from vivim_monai.engines.cases import CaseFields, case_fields, engine_cases
from vivim_monai.engines.prompts import PROMPT_KEY, PROMPT_MODES, PrepareBatchPrompt

__all__ = ["CaseFields", "PROMPT_KEY", "PROMPT_MODES", "PrepareBatchPrompt", "case_fields", "engine_cases"]
