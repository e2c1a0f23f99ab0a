"""Tokenizer and batch format of the tiny task models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faircalib_export.models.families import get_family
from faircalib_export.models.loading import load_tokenizer
from faircalib_export.models.tokenizer_files import SPECIALS, write_tokenizer
from faircalib_export.tiny.data import (
    Encoder,
    backend_tokenizer,
    build_tokenizer,
    make_batch,
    render_prompt,
    task_tokenizer,
)
from faircalib_export.tiny.tasks import Split, get_task

TASK = get_task("chain")


@pytest.fixture(scope="module", params=["llada", "dream"])
def family_tok(request):
    return request.param, task_tokenizer(request.param, TASK)


def test_numbers_are_digit_tokens_and_keywords_single_tokens(family_tok):
    family, tok = family_tok
    enc = lambda text: tok.encode(text, add_special_tokens=False).ids
    digits = [enc(str(d)) for d in range(10)]
    assert all(len(d) == 1 for d in digits)
    for n in (0, 7, 42, 99):
        ids = [digits[int(c)][0] for c in f"{n:02d}"]
        # the same digit ids after "=", after a space and at the start
        assert enc(f"{n:02d}") == ids
        assert enc(f"={n:02d}")[1:] == ids
        assert enc(f" {n:02d}") == enc(" ") + ids
    for word in ("start", " then", " answer", "+", " -", "="):
        assert len(enc(word)) == 1, word
    ex = TASK.examples(Split.TRAIN, 1)[0]
    # "+5=42 -8=34 +4=38 answer 38": 5 tokens per step, then " answer", " ", two digits
    assert len(enc(ex.target)) == 5 * ex.target.count("=") + 4 == TASK.max_target_tokens()


def test_text_round_trips_and_specials_are_single_ids(family_tok):
    family, tok = family_tok
    specials = SPECIALS[family]
    for ex in TASK.examples(Split.HELDOUT, 50):
        text = render_prompt(family, ex.prompt) + ex.target + specials.eos
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    for special in specials.all:
        assert len(tok.encode(special, add_special_tokens=False).ids) == 1


def test_training_tokenizer_matches_the_checkpoint_loader(family_tok, tmp_path: Path):
    """Training must encode exactly as every later stage, which loads the saved files."""
    family, tok = family_tok
    write_tokenizer(tmp_path, build_tokenizer(family, TASK), family)
    hf = load_tokenizer(tmp_path, get_family(family))
    for ex in TASK.examples(Split.HELDOUT, 20):
        chat = hf.apply_chat_template([{"role": "user", "content": ex.prompt}],
                                      add_generation_prompt=True, tokenize=False)
        assert chat == render_prompt(family, ex.prompt)
        text = chat + ex.target
        assert hf(text, add_special_tokens=False)["input_ids"] == \
            tok.encode(text, add_special_tokens=False).ids
    assert backend_tokenizer(hf).get_vocab_size() == tok.get_vocab_size()


def test_longest_target_fits_the_window(family_tok):
    family, tok = family_tok
    longest = max(TASK.examples(Split.TRAIN, 2000), key=lambda e: len(e.target))
    n = len(tok.encode(longest.target, add_special_tokens=False).ids)
    assert n <= TASK.max_target_tokens() < 32
    with pytest.raises(ValueError, match="does not fit"):
        Encoder(family, tok, window=n).target_ids([longest])


def test_batch_is_left_padded_with_answer_window_last(family_tok):
    family, tok = family_tok
    enc = Encoder(family, tok, window=32)
    # chain1 prompts are shorter than chain prompts, so the batch needs padding
    examples = TASK.examples(Split.TRAIN, 8) + get_task("chain1").examples(Split.TRAIN, 8)
    batch = make_batch(enc, examples)
    b, s = batch.input_ids.shape
    lengths = [len(p) for p in enc.prompt_ids(examples)]
    assert len(set(lengths)) > 1, "need prompts of different lengths to test padding"
    assert batch.answer_mask[:, -32:].all() and not batch.answer_mask[:, :-32].any()
    for i, n in enumerate(lengths):
        pad = s - 32 - n
        assert (batch.attention_mask[i, :pad] == 0).all()
        assert (batch.attention_mask[i, pad:] == 1).all()
        assert (batch.input_ids[i, :pad] == enc.eos_id).all()
        assert batch.position_ids[i, pad:].tolist() == list(range(n + 32))
        window = batch.input_ids[i, -32:].tolist()
        text = tok.decode(window, skip_special_tokens=True)
        assert text == examples[i].target
        assert window[-1] == enc.eos_id
    assert batch.input_ids.dtype == torch.long
