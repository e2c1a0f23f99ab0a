"""Frozen float64 decodes: the runtime's outputs from before confidences followed the
model's dtype, kept to prove that `confidence_dtype="float64"` still reproduces them bit
for bit.

`python tests/runtime/float64_fixture.py` rewrites data/float64_decodes.npz; only do that
on purpose (the file was written by the runtime as it was before the change).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from runtime_mocks import hashed_logits

from faircalib_runtime import (
    DreamConfig,
    LLaDAConfig,
    RandomCommitConfig,
    StepOutput,
    TrajectoryRecorder,
    generate,
    summarize,
)

FIXTURE = Path(__file__).parent / "data" / "float64_decodes.npz"
V, MASK, EOS = 40, 39, 0
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]


class Hashed:
    """`hashed_logits` at a given scale. At scale 30 many top-1 probabilities lie within
    float32's rounding of 1, so float32 and float64 confidences order them differently.

    Written against the backend contract of both runtimes (before and after "summary64"):
    the loop only asks for float64 summaries when pinned to float64.
    """

    def __init__(self, scale: float):
        self.scale = scale

    def forward(self, input_ids, attention_mask, position_ids, want):
        logits = hashed_logits(input_ids, V, MASK, scale=self.scale)
        if want == "logits":
            return StepOutput(logits=logits)
        return StepOutput(summary=summarize(logits))


def _configs() -> list:
    common = dict(mask_id=MASK, eos_ids=[EOS], seed=1)
    out = []
    for t in (0.0, 1.0):
        out += [
            LLaDAConfig(gen_length=8, block_length=4, steps=8, temperature=t, **common),
            LLaDAConfig(gen_length=12, block_length=12, steps=4, temperature=t, **common),
            LLaDAConfig(gen_length=8, block_length=4, steps=4, temperature=t,
                        remasking="random", **common),
            RandomCommitConfig(window_length=8, steps=4, temperature=t, **common),
        ]
        for alg in ("origin", "maskgit_plus", "topk_margin", "entropy"):
            out.append(DreamConfig(max_new_tokens=12, steps=4, alg=alg, temperature=t,
                                   **common))
    out += [
        LLaDAConfig(gen_length=8, block_length=8, steps=4, temperature=1.5, cfg_scale=0.2,
                    **common),
        LLaDAConfig(gen_length=8, block_length=8, steps=4, cfg_scale=0.5, **common),
        DreamConfig(max_new_tokens=8, steps=4, alg="entropy", temperature=0.8, top_p=0.9,
                    top_k=10, alg_temp=0.5, **common),
        DreamConfig(max_new_tokens=8, steps=4, alg="maskgit_plus", top_k=5, **common),
    ]
    return out


def float64(cfg):
    """`cfg` pinned to float64 confidences (a no-op on a runtime without the field)."""
    if "confidence_dtype" in {f.name for f in dataclasses.fields(cfg)}:
        return dataclasses.replace(cfg, confidence_dtype="float64")
    return cfg


def cases():
    """(name, logits scale, config, force_logits) for every frozen decode."""
    out = []
    for i, cfg in enumerate(_configs()):
        for scale in (3.0, 30.0):
            for force_logits in (False, True):
                name = f"{i}-{cfg.policy}-x{scale:g}-{'logits' if force_logits else 'auto'}"
                out.append((name, scale, cfg, force_logits))
    return out


def decode(scale: float, cfg, force_logits: bool, backend=None, **kwargs):
    """The frozen decode (backend: another backend giving the same logits)."""
    recorder = None
    if force_logits:  # reference tokens make the loop fetch full logits every step
        recorder = TrajectoryRecorder(reference_tokens=np.zeros((len(PROMPTS), cfg.window),
                                                                np.int64))
    return generate(backend or Hashed(scale), PROMPTS, cfg, recorder=recorder, **kwargs)


def main() -> None:
    arrays = {}
    for name, scale, cfg, force_logits in cases():
        res = decode(scale, float64(cfg), force_logits)
        arrays[f"{name}/tokens"] = res.tokens
        arrays[f"{name}/commit_step"] = res.commit_step
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {len(arrays) // 2} decodes to {FIXTURE}")


if __name__ == "__main__":
    main()
