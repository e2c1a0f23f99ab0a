"""Default decoding settings per model family, and user overrides in generic terms.

The family defaults are the policy configs' own field defaults (`config.py`: LLaDA
low_confidence, 128 tokens in 128 steps, blocks of 32; Dream entropy, 128 tokens in 128
steps), so each is written once. A checkpoint may record its own defaults under
`faircalib_decoding` in `generation_config.json` (the tiny models do: they were trained
for a 32-token window); exported models carry the resolved settings in their runtime
config.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from .config import DreamAlg, DreamConfig, LLaDAConfig, PolicyConfig, PolicyConfigError, Remasking

GENERATION_KEY = "faircalib_decoding"
# Fields that say what to decode, not how: never part of a family's decoding defaults.
_IDENTITY_FIELDS = {f.name for f in dataclasses.fields(PolicyConfig)}


def _field_defaults(cls: type[PolicyConfig]) -> dict[str, Any]:
    out: dict[str, Any] = {"policy": cls.policy}
    for f in dataclasses.fields(cls):
        if f.name in _IDENTITY_FIELDS or f.default is dataclasses.MISSING or f.default is None:
            continue
        out[f.name] = f.default.value if isinstance(f.default, Enum) else f.default
    return out


FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llada": _field_defaults(LLaDAConfig),
    "dream": _field_defaults(DreamConfig),
}
LLADA_REMASKING = tuple(m.value for m in Remasking)
DREAM_ALGS = tuple(m.value for m in DreamAlg)


def family_defaults(family: str, generation_config: dict | None = None) -> dict[str, Any]:
    if family not in FAMILY_DEFAULTS:
        raise PolicyConfigError(f"no decoding defaults for family {family!r}")
    settings = dict(FAMILY_DEFAULTS[family])
    settings.update((generation_config or {}).get(GENERATION_KEY, {}))
    return settings


def with_overrides(settings: dict[str, Any], *, policy: str | None = None,
                   gen_length: int | None = None, steps: int | None = None,
                   block_length: int | None = None, temperature: float | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Apply generic options: `policy` is LLaDA's remasking or Dream's alg, `gen_length`
    is the generation window of either family. None leaves a setting as it is."""
    out = dict(settings)
    is_llada = out["policy"] == "llada"
    if policy is not None:
        allowed = LLADA_REMASKING if is_llada else DREAM_ALGS
        if policy not in allowed:
            raise PolicyConfigError(f"policy {policy!r} is not one of {', '.join(allowed)} "
                                    f"for {out['policy']}")
        out["remasking" if is_llada else "alg"] = policy
    if gen_length is not None:
        out["gen_length" if is_llada else "max_new_tokens"] = gen_length
        if is_llada and block_length is None and out["block_length"] > gen_length:
            out["block_length"] = gen_length
    if block_length is not None:  # LLaDA's blocks; Dream's blocks in the fast modes
        out["block_length"] = block_length
    for key, value in (("steps", steps), ("temperature", temperature), *extra.items()):
        if value is not None:
            out[key] = value
    return out


def policy_config(settings: dict[str, Any], *, mask_id: int, eos_ids, pad_id: int | None,
                  seed: int = 0) -> PolicyConfig:
    return PolicyConfig.from_dict({**settings, "mask_id": mask_id, "eos_ids": list(eos_ids),
                                   "pad_id": pad_id, "seed": seed})
