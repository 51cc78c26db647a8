"""Ignite handlers of the bundle's workflows: evaluation report, per-case outputs, per-epoch clip redraw, speed,
atomic checkpoints and the RNG state that makes a resumed training run reproduce an uninterrupted one."""

from vivim_monai.handlers.checkpoint import ModelWeights, state_dict_mismatch
from vivim_monai.handlers.clip_dice import ClipMeanDice
from vivim_monai.handlers.clips import ClipEpochResampler
from vivim_monai.handlers.outputs import CaseOutputHandler
from vivim_monai.handlers.progress import TrainingProgress
from vivim_monai.handlers.report import TEMPORAL_KEYS, CaseResult, EvaluationReport
from vivim_monai.handlers.resume import ResumeCheckpointLoader
from vivim_monai.handlers.rng import TrainingRNG, randomizable_transforms
from vivim_monai.handlers.saving import AtomicCheckpointSaver, AtomicDiskSaver
from vivim_monai.handlers.timing import INFERENCE_TIMING, InferenceTimer, count_frames

__all__ = [
    "ClipMeanDice",
    "ModelWeights",
    "state_dict_mismatch",
    "TrainingRNG",
    "randomizable_transforms",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ResumeCheckpointLoader",
    "TrainingProgress",
    "ClipEpochResampler",
    "CaseOutputHandler",
    "TEMPORAL_KEYS",
    "CaseResult",
    "EvaluationReport",
    "INFERENCE_TIMING",
    "InferenceTimer",
    "count_frames",
]
