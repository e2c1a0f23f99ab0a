"""Stage I: roll out the FP teacher under random commits and accumulate the prior w̄.

For every prompt, the teacher decodes a K-token window in T steps with the runtime's
`RandomCommitConfig` (a uniformly random subset of the masked positions, of LLaDA's
even-schedule size, is written each step, with tokens sampled from the teacher). Along
the rollout, per window position i (paper Eq. 9):

    hit_i += λ0(t) · 1{i ∈ C_t}                  frontier hit (a token actually written)
    rel_i += λ1 · c̃_{t,i} · 1{i masked at t}     masked-stage reliability

t runs from T (first step, all masked) down to 1. c̃_{t,i} is the teacher's sharpness
score at i, min-max normalized over the masked positions of that sample at that step;
where all those scores are equal (one masked position, or a flat step) c̃ = 1: the gate
is fully open when the step does not discriminate between positions.

Each sample's w = hit + rel is divided by its max, the samples are averaged (their std
kept for the band) and the mean is max-normalized into the `Prior` (window-aligned: the
K weights are the generation window, i.e. the last K positions of a sequence; the floor
covers earlier positions). The two components are normalized and averaged the same way
on their own (frontier-hit only, reliability only) for the ablations.

The rollout runs in `generate_torch`, so logits never leave the model's device: the
accumulator receives only the (B, K) per-step statistics the loop's recorder hook
passes (commit set, written ids, sharpness at masked positions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faircalib_runtime import Padding, RandomCommitConfig, TrajectoryRecorder

from .. import distributed
from ..errors import ConfigError
from .config import (
    PAPER_SAMPLES,
    PAPER_STEPS,
    PAPER_WINDOW,
    TINY_SAMPLES,
    TINY_WINDOW,
    ProbeConfig,
    Score,
)
from .prior import DEFAULT_FLOOR, Prior

FRONTIER_FILE = "prior_frontier.json"
RELIABILITY_FILE = "prior_reliability.json"
PER_SAMPLE_FILE = "per_sample.npz"


# --- accumulation -----------------------------------------------------------------------

def minmax_over_masked(score: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Row-wise min-max normalization of (B, K) scores over each row's masked entries.

    Returns 0 at unmasked entries; a row whose masked scores are all equal gets 1 there.
    """
    masked = masked.astype(bool)
    s = np.where(masked, score.astype(np.float64), 0.0)
    has = masked.any(axis=1, keepdims=True)  # (B, 1)
    lo = np.where(has, np.where(masked, s, np.inf).min(axis=1, keepdims=True), 0.0)
    hi = np.where(has, np.where(masked, s, -np.inf).max(axis=1, keepdims=True), 0.0)
    span = hi - lo
    flat = ~(span > 0)
    norm = (s - lo) / np.where(flat, 1.0, span)
    return np.where(masked, np.where(flat, 1.0, norm), 0.0)


class PriorAccumulator(TrajectoryRecorder):
    """A recorder for the decode loop that keeps running (B, K) sums, not a trajectory.

    `lambda0` is λ0(t) for t = 1 .. T (`ProbeConfig.lambda0_schedule()`); the loop's
    step s (0-based) is t = T - s.
    """

    def __init__(self, lambda0: np.ndarray, lambda1: float, score: Score | str, mask_id: int):
        super().__init__(reference_tokens=None)
        self.lambda0 = np.asarray(lambda0, dtype=np.float64)
        self.lambda1 = float(lambda1)
        self.score = Score(score)
        self.mask_id = mask_id
        self.hit = self.rel = None
        self.step = 0

    def start(self, batch: int, window: int) -> None:
        super().start(batch, window)
        self.hit = np.zeros((batch, window))
        self.rel = np.zeros((batch, window))
        self.step = 0

    def record(self, *, masked: np.ndarray, committed: np.ndarray, written: np.ndarray,
               top1_prob: np.ndarray, margin: np.ndarray, neg_entropy: np.ndarray,
               ref_prob: np.ndarray | None = None) -> None:
        steps = len(self.lambda0)
        if self.step >= steps:
            raise ValueError(f"the rollout ran more than the {steps} steps of the schedule")
        t = steps - self.step
        masked = np.asarray(masked, dtype=bool)
        # A sampled mask id leaves the position masked (the loop does not count it).
        hits = np.asarray(committed, dtype=bool) & masked & (np.asarray(written) != self.mask_id)
        self.hit += self.lambda0[t - 1] * hits
        score = {Score.TOP1_PROB: top1_prob, Score.MARGIN: margin,
                 Score.NEG_ENTROPY: neg_entropy}[self.score]
        self.rel += self.lambda1 * minmax_over_masked(np.nan_to_num(score), masked)
        self.step += 1

    def result(self) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """(hit, rel), each (B, K)."""
        if self.hit is None:
            raise ValueError("no rollout was recorded")
        return self.hit, self.rel


# --- aggregation ------------------------------------------------------------------------

def max_normalize_rows(w: np.ndarray) -> np.ndarray:
    """Each row divided by its max; all-zero rows stay zero."""
    top = w.max(axis=1, keepdims=True)
    return np.where(top > 0, w / np.where(top > 0, top, 1.0), 0.0)


@dataclass
class ProbeResult:
    config: ProbeConfig
    hit: np.ndarray  # (N, K) raw frontier-hit sums per sample
    rel: np.ndarray  # (N, K) raw reliability sums per sample
    prior: Prior  # combined, max-normalized mean
    frontier: Prior | None  # frontier-hit only (None when the schedule is off)
    reliability: Prior | None  # reliability only (None when λ1 = 0)
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (mean, std) over samples
    info: dict = field(default_factory=dict)  # sample count, prompt lengths, ...

    @property
    def per_sample(self) -> np.ndarray:
        """(N, K) each sample's hit + rel divided by its max."""
        return max_normalize_rows(self.hit + self.rel)

    def save(self, directory: str | Path) -> list[Path]:
        """prior.json, the component priors and per_sample.npz into `directory`."""
        directory = Path(directory)
        written = [self.prior.save(directory)]
        for prior, name in ((self.frontier, FRONTIER_FILE), (self.reliability, RELIABILITY_FILE)):
            if prior is not None:
                written.append(prior.save(directory, name))
        arrays = {"per_sample": self.per_sample, "hit": self.hit, "rel": self.rel,
                  "w_max": (self.hit + self.rel).max(axis=1),  # each sample's normalizer
                  "lambda0": self.config.lambda0_schedule(),
                  "prompt_lengths": np.asarray(self.info.get("prompt_lengths", []))}
        for name, (mean, std) in self.curves.items():
            arrays[f"{name}_mean"], arrays[f"{name}_std"] = mean, std
        np.savez_compressed(directory / PER_SAMPLE_FILE, **arrays)
        return [*written, directory / PER_SAMPLE_FILE]


def aggregate(hit: np.ndarray, rel: np.ndarray, config: ProbeConfig,
              info: dict | None = None) -> ProbeResult:
    """Per-sample max normalization, mean / std over samples, and the priors."""
    hit, rel = np.asarray(hit, np.float64), np.asarray(rel, np.float64)
    if hit.ndim != 2 or hit.shape != rel.shape or not len(hit):
        raise ValueError(f"need matching (N, K) arrays, got {hit.shape} and {rel.shape}")
    floor = DEFAULT_FLOOR if config.floor is None else config.floor
    info = {"n_samples": int(hit.shape[0]), **(info or {})}
    curves, priors = {}, {}
    for name, w in (("combined", hit + rel), ("frontier", hit), ("reliability", rel)):
        norm = max_normalize_rows(w)
        mean, std = norm.mean(axis=0), norm.std(axis=0)
        curves[name] = (mean, std)
        if mean.max() > 0:
            settings = {**config.to_dict(), "component": name, "mean_max": float(mean.max()),
                        **{k: v for k, v in info.items() if k != "prompt_lengths"}}
            priors[name] = Prior(mean / mean.max(), floor, settings)
    if "combined" not in priors:
        raise ConfigError("every probed weight is zero (check the schedule and lambda1)")
    return ProbeResult(config, hit, rel, priors["combined"], priors.get("frontier"),
                       priors.get("reliability"), curves, info)


# --- rollouts ---------------------------------------------------------------------------

def batch_seed(seed: int, index: int) -> int:
    """Decode seed of batch `index`: distinct batches draw distinct commit orders."""
    digest = hashlib.blake2b(f"probe/{seed}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def padding_for(family: str) -> Padding:
    """How each family's reference shows left padding (Dream also shifts positions)."""
    return Padding.ATTENTION_AND_POSITIONS if family == "dream" else Padding.ATTENTION


def probe(model, prompts: Sequence[Sequence[int]], config: ProbeConfig,
          progress: Callable[[int, int], None] | None = None, *, mask_id: int | None = None,
          eos_id: int | None = None, pad_id: int | None = None, family: str | None = None,
          device=None) -> ProbeResult:
    """Random-commit rollouts of `model` over `prompts`; the prior and its components.

    `model(input_ids, attention_mask=, position_ids=)` returns position-aligned logits
    (a `DiffusionLM`, a fake-quant or folded model). Special ids and the family default
    to `model.cfg`'s. Per-sample results depend on the batch layout (the commit RNG is
    counter-based over batch rows and columns), so `batch_size` is part of the setting.
    """
    from ..decoding import generate_torch

    cfg = getattr(model, "cfg", None)
    if cfg is None and (mask_id is None or eos_id is None):
        raise ConfigError("pass mask_id and eos_id for a model without a `cfg`")
    mask_id = cfg.mask_token_id if mask_id is None else mask_id
    eos_id = cfg.eos_token_id if eos_id is None else eos_id
    pad_id = (cfg.pad_token_id if cfg is not None else None) if pad_id is None else pad_id
    family = (cfg.family if cfg is not None else "llada") if family is None else family
    if device is None:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = param.device if param is not None else "cpu"
    if not prompts:
        raise ConfigError("no probing prompts")
    lam = config.lambda0_schedule()
    bs = config.batch_size
    # Batch b holds prompts[b*bs:(b+1)*bs] and decodes with batch_seed(seed, b) whatever
    # the number of processes: under torchrun each rank rolls out its share of the
    # batches, and the per-sample sums are gathered back in prompt order.
    batches = [[list(p) for p in prompts[lo:lo + bs]] for lo in range(0, len(prompts), bs)]
    mine = distributed.shard(batches)
    mine_total = sum(len(b) for _, b in mine)  # this rank's prompts (all, in one process)
    done: list[tuple[int, tuple[np.ndarray, np.ndarray]]] = []
    rolled = 0
    for index, batch in mine:
        rollout = RandomCommitConfig(
            mask_id=mask_id, eos_ids=(eos_id,), pad_id=pad_id, seed=batch_seed(config.seed, index),
            window_length=config.window, steps=config.steps, temperature=config.temperature,
            padding_style=padding_for(family))
        acc = PriorAccumulator(lam, config.lambda1, config.score, mask_id)
        generate_torch(model, batch, rollout, device=device, recorder=acc)
        done.append((index, acc.result()))
        rolled += len(batch)
        if progress is not None:
            progress(rolled, mine_total)
    sums = distributed.gather(done, len(batches))
    info = {"prompt_lengths": [len(p) for p in prompts]}
    return aggregate(np.concatenate([h for h, _ in sums]), np.concatenate([r for _, r in sums]),
                     config, info)


# --- defaults -------------------------------------------------------------------------------

def probe_shape(model_cfg, generation_config: dict | None = None) -> tuple[int, int, int]:
    """Default (samples, window K, steps T): the paper's 512 x 256 x 256 for real models;
    for tiny models (hidden < 1024) the window their generation config records (the
    trained ones decode 32 tokens), else TINY_WINDOW, with T = K."""
    if model_cfg.hidden_size >= 1024:
        return PAPER_SAMPLES, PAPER_WINDOW, PAPER_STEPS
    from faircalib_runtime.defaults import GENERATION_KEY

    recorded = (generation_config or {}).get(GENERATION_KEY, {})
    window = int(recorded.get("gen_length") or recorded.get("max_new_tokens") or TINY_WINDOW)
    return TINY_SAMPLES, window, window
