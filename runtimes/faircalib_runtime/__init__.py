"""faircalib_runtime: a torch-free decode loop for diffusion LLMs (LLaDA, Dream).

    backend   what the loop asks of a model (position-aligned logits or summaries)
    config    policy configs (LLaDA, Dream, random commit)
    policies  per-step arithmetic of each policy, written once for numpy and torch
    decode    the loop: `generate(backend, prompts, config)`
    rng       counter-based uniforms shared bit-for-bit with the torch path
    trajectory  per-step commit / sharpness record (Stage I probing, diagnostics)
    text      tokenization around the loop (`TextDecoder`)
"""

from .backend import (
    Backend,
    FunctionBackend,
    RawLogitsBackend,
    StepOutput,
    Summary,
    align_logits,
    summarize,
)
from .batch import DecodeResult, PromptError, StepEvent, left_pad
from .config import (
    ConfidenceDtype,
    DreamAlg,
    DreamConfig,
    LLaDAConfig,
    Padding,
    PolicyConfig,
    PolicyConfigError,
    RandomCommitConfig,
    Remasking,
)
from .decode import generate
from .text import TextDecoder
from .trajectory import Trajectory, TrajectoryRecorder

__all__ = [
    "Backend", "ConfidenceDtype", "DecodeResult", "DreamAlg", "DreamConfig", "FunctionBackend",
    "LLaDAConfig",
    "Padding", "PolicyConfig", "PolicyConfigError", "PromptError", "RandomCommitConfig",
    "RawLogitsBackend",
    "Remasking", "StepEvent", "StepOutput", "Summary", "TextDecoder", "Trajectory",
    "TrajectoryRecorder", "align_logits", "generate", "left_pad", "summarize",
]
