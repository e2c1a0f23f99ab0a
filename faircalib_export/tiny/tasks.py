"""Synthetic, license-free tasks for the embedded tiny models.

Contract: a `Task` turns a seed into an endless, deterministic stream of `Example`s for
one split. Every example has a prompt, a target (a short chain of thought ending in
"; answer N") and a final answer that `Task.check` verifies in generated text.

Splits never overlap: a problem belongs to exactly one split, decided by a hash of its
canonical key, and sampling for a split rejects problems of the other splits.

The main task, "chain", is GSM8K-like in spirit: each intermediate result is written
out and reused by the next step, so an early wrong commit ruins the final answer.

    prompt: "start 37 then +5 then -8 then +4"
    target: "+5=42 -8=34 +4=38 answer 38"

The text is compact and fixed-width on purpose (values are zero-padded to two digits,
"start 07"): with LLaDA's GPT-2 style pre-tokenizer every number is one token; with
Dream's Qwen2 pre-tokenizer (digits split, as in the real model) every number is two,
so in both families each step sits at the same token offset in every example, which a
small model learns far faster than variable layouts, and the target fits a 32-token
window.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum


class Split(str, Enum):
    TRAIN = "train"  # training stream
    CALIB = "calib"  # Stage II calibration texts and Stage I probing prompts
    HELDOUT = "heldout"  # accuracy evaluation only


# Share of the hash space (out of 1000) owned by each split, in order.
_SPLIT_BOUNDS = ((Split.TRAIN, 900), (Split.CALIB, 950), (Split.HELDOUT, 1000))


def split_of(key: str) -> Split:
    """The split a canonical problem key belongs to (stable across runs and platforms)."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 1000
    for split, bound in _SPLIT_BOUNDS:
        if bucket < bound:
            return split
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Example:
    key: str  # canonical problem; decides the split
    prompt: str  # user message
    target: str  # the full answer text the model is trained to write
    answer: str  # the final answer alone, as written after "answer"


_ANSWER_RE = re.compile(r"answer\s+(-?\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the first "answer" in generated text, or None."""
    m = _ANSWER_RE.search(text)
    return m.group(1) if m else None


@dataclass(frozen=True)
class ChainTask:
    """Running arithmetic chain: start value, then `min_ops..max_ops` +/- operations.

    All values stay within 0..max_value, written zero-padded to the width of max_value;
    operands are 1..max_operand (one digit).
    """

    name: str
    min_ops: int
    max_ops: int
    max_value: int = 99
    max_operand: int = 9

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not 1 <= self.max_operand <= min(9, self.max_value):
            raise ValueError("need 1 <= max_operand <= min(9, max_value)")

    @property
    def width(self) -> int:
        return len(str(self.max_value))

    def number(self, value: int) -> str:
        return f"{value:0{self.width}d}"

    def words(self) -> list[str]:
        """Strings a tokenizer should encode as one token each: the keywords.

        Numbers are deliberately left as digits (as Qwen2 / Dream split them anyway): a
        digit is the same token wherever it appears, and the model learns a 10 x 9 table
        per sign plus carries instead of 100 x 9 atomic facts, which it does not manage
        in a CPU training budget (measured: no arithmetic after 1000 steps).
        """
        keywords = ["start", "then", "answer", "+", "-", "=", ":"]
        return keywords + [" " + w for w in keywords]

    def max_target_tokens(self) -> int:
        """Tokens of the longest target with digits split (Dream): per op a sign, an
        operand, "=" and the result's digits; then " answer", " " and the digits."""
        return (3 + self.width) * self.max_ops + 2 + self.width

    def sample(self, rng: random.Random) -> Example:
        n_ops = rng.randint(self.min_ops, self.max_ops)
        value = rng.randint(0, self.max_value)
        start, ops, steps = value, [], []
        for _ in range(n_ops):
            # Only the signs that keep the running value inside 0..max_value.
            signs = [s for s in "+-" if (value + self.max_operand <= self.max_value
                                          if s == "+" else value - self.max_operand >= 0)]
            if not signs:  # range narrower than one operand: pick what fits
                signs = ["+"] if value + 1 <= self.max_value else ["-"]
            sign = rng.choice(signs)
            operand = rng.randint(1, self.max_operand)
            new = value + operand if sign == "+" else value - operand
            ops.append(f"{sign}{operand}")
            steps.append(f"{sign}{operand}={self.number(new)}")
            value = new
        prompt = f"start {self.number(start)} " + " ".join(f"then {op}" for op in ops)
        target = " ".join(steps) + f" answer {self.number(value)}"
        return Example(key=f"{self.name}:{start}:{','.join(ops)}", prompt=prompt,
                       target=target, answer=self.number(value))

    def check(self, example: Example, generated: str) -> bool:
        """Exact match of the final answer (as a number) written in `generated`."""
        got = extract_answer(generated)
        return got is not None and int(got) == int(example.answer)

    def draw(self, rng: random.Random, split: Split | str) -> Example:
        """One example of `split` (rejection sampling over the problem space)."""
        split = Split(split)
        while True:
            ex = self.sample(rng)
            if split_of(ex.key) is split:
                return ex

    def stream(self, split: Split | str, seed: int) -> Iterator[Example]:
        """Endless deterministic examples of one split."""
        split = Split(split)
        rng = random.Random(f"{self.name}/{split.value}/{seed}")
        while True:
            yield self.draw(rng, split)

    def examples(self, split: Split | str, n: int, seed: int = 0,
                 unique: bool = True) -> list[Example]:
        """The first `n` examples of a split (distinct problems when `unique`)."""
        out, seen, repeats = [], set(), 0
        for ex in self.stream(split, seed):
            if unique and ex.key in seen:
                repeats += 1
                if repeats > 1000 + 20 * n:  # the split holds fewer distinct problems
                    raise ValueError(f"{self.name}/{Split(split).value} has only about "
                                     f"{len(out)} distinct problems; asked for {n}")
                continue
            seen.add(ex.key)
            out.append(ex)
            if len(out) == n:
                return out
        raise AssertionError("unreachable")


TASKS: dict[str, ChainTask] = {
    t.name: t
    for t in (
        # The main multi-step task. Operands stay small on purpose: with 1..9, the ones
        # digit ((u +/- op) mod 10, 180 cases) stayed at chance after 2000 CPU steps in
        # both families, while carries and copies were learned.
        ChainTask("chain", min_ops=4, max_ops=4, max_operand=2),
        ChainTask("chain1", min_ops=1, max_ops=1, max_operand=2),  # one step: a sanity check
    )
}


def get_task(name: str) -> ChainTask:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def calibration_texts(task: ChainTask | str, n: int, seq_len: int, seed: int = 0) -> list[str]:
    """`n` plain texts of about `seq_len` whitespace-separated words each, from the CALIB split.

    Each text is prompt + target pairs ("start 37 then +5 ... : +5=42 ...") joined
    by newlines until it reaches `seq_len` words; for teacher-forced Stage II calibration.
    Callers truncate token ids to their exact length.
    """
    task = get_task(task) if isinstance(task, str) else task
    stream = task.stream(Split.CALIB, seed)
    texts = []
    for _ in range(n):
        parts, words = [], 0
        while words < seq_len:
            ex = next(stream)
            line = f"{ex.prompt} : {ex.target}"
            parts.append(line)
            words += len(line.split())
        texts.append("\n".join(parts))
    return texts
