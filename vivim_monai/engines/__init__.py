"""What the bundle's ignite engines carry per case, read from ``engine.state`` for the handlers."""

from vivim_monai.engines.cases import CaseFields, case_fields, engine_cases

__all__ = ["CaseFields", "case_fields", "engine_cases"]
