"""Real benchmark loaders and the scoring arithmetic, on scripted backends."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from faircalib_export.errors import ConfigError
from faircalib_export.evaluate.benchmarks import (
    Choice,
    Problem,
    gsm8k_gold,
    load_choices,
    load_problems,
)
from faircalib_export.evaluate.scoring import (
    last_number,
    masked_loglik,
    run_humaneval_test,
    score_choices,
    score_perplexity,
)
from faircalib_runtime import FunctionBackend

VOCAB = 16
MASK = 15


@pytest.mark.parametrize("name,path,count", [
    ("arc_easy", "arc/arc_easy_test.jsonl", 2376), ("arc_challenge", "arc/arc_challenge_test.jsonl",
                                                      1172),
    ("boolq", "boolq/boolq_validation.jsonl", 3270),
    ("winogrande", "winogrande/winogrande_xl_validation.jsonl", 1267),
    ("piqa", "piqa/valid.jsonl", 1838)])
def test_multiple_choice_files(shared_data, name, path, count):
    items = load_choices(name, shared_data / path)
    assert len(items) == count
    assert all(0 <= it.gold < len(it.options) for it in items)
    assert len(items[0].options) >= 2


def test_generation_files(shared_data):
    gsm = load_problems("gsm8k", shared_data / "gsm8k" / "test.jsonl")
    assert len(gsm) == 1319 and gsm[0].answer == "18"
    he = load_problems("humaneval", shared_data / "humaneval" / "HumanEval.jsonl")
    assert len(he) == 164 and he[0].extra["entry_point"] == "has_close_elements"
    assert gsm8k_gold("so 1,200 #### 1,200") == "1200"


def test_bad_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_choices("arc_easy", tmp_path / "empty.jsonl")
    (tmp_path / "x.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(ConfigError, match="lack field"):
        load_choices("arc_easy", tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="not found"):
        load_problems("gsm8k", tmp_path / "missing.jsonl")


def _backend(logp_gold: float):
    """Every position predicts token 3 with log-probability `logp_gold`."""
    p = math.exp(logp_gold)
    rest = (1 - p) / (VOCAB - 1)

    def fn(ids, mask, pos):
        probs = np.full((*ids.shape, VOCAB), rest)
        probs[..., 3] = p
        return np.log(probs).astype(np.float32)
    return FunctionBackend(fn)


def test_masked_loglik_weighting():
    # Each row scores l masked tokens of log p each, scaled by L / l: always L * log p.
    est = masked_loglik(_backend(math.log(0.5)), MASK, [1, 2], [3, 3, 3, 3, 3], samples=4)
    assert est == pytest.approx(5 * math.log(0.5), rel=1e-6)


class _Model:
    """A stand-in opened model: backend, tokenizer, mask id."""

    def __init__(self, backend):
        self._backend = backend
        self.config = {"mask_token_id": MASK}

    def backend(self):
        return self._backend

    def text_decoder(self, chat):
        class Chars:
            encode = staticmethod(lambda s: [ord(c) % 8 for c in s])
            decode = staticmethod(lambda ids: "".join(chr(97 + i) for i in ids))
        return Chars()


def test_choice_prefers_likelier_continuation():
    def fn(ids, mask, pos):  # token 3 likely everywhere, others not
        logits = np.zeros((*ids.shape, VOCAB), dtype=np.float32)
        logits[..., 3] = 5.0
        return logits
    model = _Model(FunctionBackend(fn))
    # ord('#') % 8 == 3: the '###' option is the likely one
    items = [Choice(("q",), (" ab", "###"), gold=1), Choice(("q",), ("###", "ab "), gold=0)]
    result = score_choices(model, items, samples=3, seed=0)
    assert result["acc"] == 1.0 and result["n"] == 2 and result["chance"] == 0.5


def test_perplexity_of_uniform_model_is_vocab_size():
    model = _Model(FunctionBackend(lambda ids, m, p: np.zeros((*ids.shape, VOCAB), np.float32)))
    result = score_perplexity(model, "hello world " * 50, seq_len=16, chunks=3, seed=0)
    assert result["masked_nll"] == pytest.approx(math.log(VOCAB))
    assert result["masked_ppl"] == pytest.approx(VOCAB)


def test_last_number():
    assert last_number("so 3 + 4 = 7. The answer is 1,234.") == "1234"
    assert last_number("no digits") is None


def test_humaneval_execution(shared_data):
    problem = load_problems("humaneval", shared_data / "humaneval" / "HumanEval.jsonl")[0]
    row = json.loads((shared_data / "humaneval" / "HumanEval.jsonl").read_text().splitlines()[0])
    assert run_humaneval_test(problem, row["canonical_solution"])
    assert not run_humaneval_test(problem, "    return None\n")
    slow = Problem("t", "def f():\n", None, {"entry_point": "f", "test": "def check(f):\n    f()"})
    assert not run_humaneval_test(slow, "    while True: pass\n", timeout=1.0)
