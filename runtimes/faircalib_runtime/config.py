"""Decoding policy configs: plain dataclasses, validated on construction, serializable.

`to_dict` writes a `policy` name and a `version`; `PolicyConfig.from_dict` dispatches on
the name through a small registry. Special ids (mask, EOS) have no defaults: they belong
to the model and come from its config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

CONFIG_VERSION = 1


class PolicyConfigError(ValueError):
    """A decoding config holds an invalid or inconsistent value."""


class Remasking(str, Enum):
    LOW_CONFIDENCE = "low_confidence"  # confidence = softmax probability of the chosen token
    RANDOM = "random"  # confidence = uniform noise


class DreamAlg(str, Enum):
    ORIGIN = "origin"  # each masked position commits independently with prob 1 - s/t
    MASKGIT_PLUS = "maskgit_plus"  # confidence = probability of the chosen token
    TOPK_MARGIN = "topk_margin"  # confidence = p_top1 - p_top2
    ENTROPY = "entropy"  # confidence = sum p log(p + 1e-10)


class ConfidenceDtype(str, Enum):
    """The float type confidences (softmax, margin, entropy) and their top-k are computed in.

    MODEL is what the official loops do today: the logits' own dtype (bfloat16 for the
    released models run in bf16, float32 for ONNX graphs and fp32 models). FLOAT64 is
    LLaDA's earlier generate.py (`F.softmax(logits.to(torch.float64))`) and this runtime's
    behaviour before the option existed; it separates values that round to the same
    model-dtype number (p = 1.0 ties), so it can commit in a different order.
    """

    MODEL = "model"
    FLOAT64 = "float64"


class DecodeMode(str, Enum):
    """How a confidence policy is run (fast.py): the reference loop or a faster one."""

    EXACT = "exact"  # the official loop, step for step
    PARALLEL = "parallel"  # commit every block position with confidence >= threshold
    CACHED = "cached"  # the policy's schedule over a block-wise approximate KV cache
    FAST = "fast"  # both


class CacheMode(str, Enum):
    PREFIX = "prefix"  # reuse the prompt's and finished blocks' K/V
    DUAL = "dual"  # reuse the masked suffix's K/V too: a step computes the block alone


class Padding(str, Enum):
    """How a left-padded batch is presented to the model (only when a batch has pads)."""

    ATTENTION = "attention"  # LLaDA reference: (B, S) mask; positions count the pads
    ATTENTION_AND_POSITIONS = "attention+positions"  # Dream: mask + cumsum(mask) - 1


_REGISTRY: dict[str, type[PolicyConfig]] = {}


def _enum(cls: type[Enum], value: Any, name: str) -> Enum:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise PolicyConfigError(f"{name}={value!r} is not one of: {choices}") from None


def _bool(cfg: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(cfg, name), bool):
            raise PolicyConfigError(f"{name} must be true or false, got {getattr(cfg, name)!r}")


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PolicyConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Fields every policy has; subclasses add their own."""

    policy: ClassVar[str]

    mask_id: int
    eos_ids: tuple[int, ...]
    pad_id: int | None = None  # left-pad id; defaults to the first EOS id
    seed: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "policy" in cls.__dict__:
            _REGISTRY[cls.policy] = cls

    def __post_init__(self) -> None:
        eos = (self.eos_ids,) if isinstance(self.eos_ids, int) else tuple(self.eos_ids)
        object.__setattr__(self, "eos_ids", tuple(int(e) for e in eos))
        if not self.eos_ids:
            raise PolicyConfigError("eos_ids must name at least one EOS id")
        if self.mask_id in self.eos_ids or self.mask_id == self.pad_token:
            raise PolicyConfigError(f"mask_id {self.mask_id} must differ from EOS / pad ids")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise PolicyConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def pad_token(self) -> int:
        return self.eos_ids[0] if self.pad_id is None else self.pad_id

    @property
    def float64_confidence(self) -> bool:
        """Whether the loop computes confidences and summaries in float64 (else in the
        logits' dtype). Policies without a `confidence_dtype` keep float64 statistics."""
        dtype = getattr(self, "confidence_dtype", ConfidenceDtype.FLOAT64)
        return dtype is ConfidenceDtype.FLOAT64

    @property
    def window(self) -> int:
        """Number of masked positions appended after the prompt."""
        raise NotImplementedError

    @property
    def padding(self) -> Padding:
        """How left padding is shown to the model."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else (
                list(value) if isinstance(value, tuple) else value)
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PolicyConfig:
        data = dict(data)
        name = data.pop("policy", None)
        version = data.pop("version", CONFIG_VERSION)
        if name not in _REGISTRY:
            raise PolicyConfigError(
                f"unknown policy {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
        if version != CONFIG_VERSION:
            raise PolicyConfigError(f"policy config version {version} is not supported "
                                    f"(this runtime reads version {CONFIG_VERSION})")
        cls = _REGISTRY[name]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyConfigError(f"{name} config has unknown field(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class ConfidencePolicy(PolicyConfig):
    """What the confidence policies (LLaDA, Dream) share: the precision of confidences
    and how the loop is run (`decode`; the threshold and cache apply to the fast modes)."""

    confidence_dtype: ConfidenceDtype = ConfidenceDtype.MODEL
    decode: DecodeMode = DecodeMode.EXACT
    threshold: float = 0.9  # tau of the parallel rule, in (0, 1]
    cache: CacheMode = CacheMode.DUAL

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, cls in (("confidence_dtype", ConfidenceDtype), ("decode", DecodeMode),
                          ("cache", CacheMode)):
            object.__setattr__(self, name, _enum(cls, getattr(self, name), name))
        if not (isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
                and 0 < self.threshold <= 1):
            raise PolicyConfigError(f"threshold must be in (0, 1], got {self.threshold!r}")

    @property
    def parallel(self) -> bool:
        return self.decode in (DecodeMode.PARALLEL, DecodeMode.FAST)

    @property
    def cached(self) -> bool:
        return self.decode in (DecodeMode.CACHED, DecodeMode.FAST)


@dataclass(frozen=True, kw_only=True)
class LLaDAConfig(ConfidencePolicy):
    """LLaDA's semi-autoregressive confidence policy (its public generate.py)."""

    policy: ClassVar[str] = "llada"

    gen_length: int = 128
    # generate()'s signature says 128; its own example and chat.py decode in blocks of 32,
    # which is what a user of the chat model gets: that is the default here.
    block_length: int = 32
    steps: int = 128
    temperature: float = 0.0
    remasking: Remasking = Remasking.LOW_CONFIDENCE
    cfg_scale: float = 0.0
    # generate.py's options (LLaDA Appendix B.4), with EOS = eos_ids[0] and EOT = the
    # other eos_ids: EOS logit -inf before x0 is chosen / EOS and EOT out of the confidence
    # softmax (only EOT at temperature > 0: see policies.llada_confidence_suppressed).
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "remasking", _enum(Remasking, self.remasking, "remasking"))
        _positive(self, "gen_length", "block_length", "steps")
        _bool(self, "logits_eos_inf", "confidence_eos_eot_inf")
        if self.gen_length % self.block_length:
            raise PolicyConfigError(f"gen_length {self.gen_length} is not a multiple of "
                                    f"block_length {self.block_length}")
        if self.steps % self.num_blocks:
            raise PolicyConfigError(f"steps {self.steps} is not a multiple of the number of "
                                    f"blocks {self.num_blocks} (gen_length / block_length)")
        if not (self.temperature >= 0 and self.cfg_scale >= 0):  # NaN fails too
            raise PolicyConfigError("temperature and cfg_scale must be >= 0")
        mode = self.decode.value
        if mode != "exact" and self.cfg_scale > 0:
            raise PolicyConfigError(f"decode={mode} does not support classifier-free guidance "
                                    "(cfg_scale > 0): use decode=exact")
        if self.parallel and self.remasking is Remasking.RANDOM:
            raise PolicyConfigError(f"decode={mode} commits by a confidence threshold and "
                                    "LLaDA's random remasking has no confidence: use "
                                    "low_confidence")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def window(self) -> int:
        return self.gen_length

    @property
    def padding(self) -> Padding:
        return Padding.ATTENTION


@dataclass(frozen=True, kw_only=True)
class DreamConfig(ConfidencePolicy):
    """Dream's diffusion sampler (its public generation_utils.py)."""

    policy: ClassVar[str] = "dream"

    max_new_tokens: int = 128
    steps: int = 128
    eps: float = 1e-3
    alg: DreamAlg = DreamAlg.ENTROPY
    alg_temp: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    num_return_sequences: int = 1  # each prompt decoded this many times, rows adjacent
    # Dream has no blocks; the fast modes decode it in blocks of this length (fast.py)
    block_length: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "alg", _enum(DreamAlg, self.alg, "alg"))
        _positive(self, "max_new_tokens", "steps", "num_return_sequences", "block_length")
        if not 0 < self.eps < 1:
            raise PolicyConfigError(f"eps must be in (0, 1), got {self.eps}")
        if not self.temperature >= 0 or (self.alg_temp is not None
                                         and not self.alg_temp >= 0):  # NaN fails too
            raise PolicyConfigError("temperature and alg_temp must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise PolicyConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise PolicyConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        mode = self.decode.value
        if mode == "exact":
            return
        if self.alg is DreamAlg.ORIGIN or self.alg_temp:
            raise PolicyConfigError(f"decode={mode} commits by confidence: Dream's origin "
                                    "algorithm and alg_temp choose positions at random; use "
                                    "entropy, maskgit_plus or topk_margin without alg_temp")
        if self.max_new_tokens % self.blocks_of:
            raise PolicyConfigError(f"decode={mode}: block_length {self.block_length} does not "
                                    f"divide the generation window of {self.max_new_tokens}")
        blocks = self.max_new_tokens // self.blocks_of
        if not self.parallel and self.steps % blocks:
            raise PolicyConfigError(f"decode={mode}: steps {self.steps} is not a multiple of "
                                    f"the number of blocks {blocks}")

    @property
    def blocks_of(self) -> int:
        """The block length the fast modes use: block_length, at most the window."""
        return min(self.block_length, self.max_new_tokens)

    @property
    def filters_logits(self) -> bool:
        """Whether top-p / top-k change the distribution that confidences are read from."""
        return (self.top_p is not None and self.top_p < 1) or bool(self.top_k)

    @property
    def window(self) -> int:
        return self.max_new_tokens

    @property
    def padding(self) -> Padding:
        return Padding.ATTENTION_AND_POSITIONS


@dataclass(frozen=True, kw_only=True)
class RandomCommitConfig(PolicyConfig):
    """Model-independent commits for Stage I probing.

    Each step commits a uniformly random subset of the masked window positions, sized by
    LLaDA's schedule with a single block; written tokens are sampled from the teacher at
    `temperature` (argmax at 0).
    """

    policy: ClassVar[str] = "random_commit"

    window_length: int = 256
    steps: int = 256
    temperature: float = 1.0
    padding_style: Padding = Padding.ATTENTION

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "padding_style",
                           _enum(Padding, self.padding_style, "padding_style"))
        _positive(self, "window_length", "steps")
        if not self.temperature >= 0:  # NaN fails too
            raise PolicyConfigError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def padding(self) -> Padding:
        return self.padding_style

    @property
    def window(self) -> int:
        return self.window_length
