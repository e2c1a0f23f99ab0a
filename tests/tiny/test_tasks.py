"""Task generator: determinism, correct answers, disjoint splits, calibration stream."""

from __future__ import annotations

import random
import re

import pytest

from faircalib_export.tiny.tasks import (
    TASKS,
    ChainTask,
    Split,
    calibration_texts,
    extract_answer,
    get_task,
    split_of,
)


def _solve(prompt: str) -> int:
    """Independent reference: evaluate 'start A then +x then -y ...'."""
    start = re.match(r"start (\d+)", prompt)
    value = int(start.group(1))
    for sign, n in re.findall(r"then ([+-])(\d+)", prompt):
        value = value + int(n) if sign == "+" else value - int(n)
    return value


@pytest.mark.parametrize("name", sorted(TASKS))
def test_examples_are_deterministic_and_seed_dependent(name):
    task = get_task(name)
    a = task.examples(Split.TRAIN, 50, seed=3)
    assert a == task.examples(Split.TRAIN, 50, seed=3)
    assert a != task.examples(Split.TRAIN, 50, seed=4)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_targets_are_correct_chains(name):
    task = get_task(name)
    for ex in task.examples(Split.TRAIN, 60):
        assert int(ex.answer) == _solve(ex.prompt)
        n_ops = len(re.findall(r"then", ex.prompt))
        assert task.min_ops <= n_ops <= task.max_ops
        # Every intermediate value is written and lies in range; each step uses the last.
        value = int(re.match(r"start (\d+)", ex.prompt).group(1))
        steps = re.findall(r"([+-])(\d+)=(\d+)", ex.target)
        assert len(steps) == n_ops
        for sign, operand, result in steps:
            assert 1 <= int(operand) <= task.max_operand
            value = value + int(operand) if sign == "+" else value - int(operand)
            assert int(result) == value and 0 <= value <= task.max_value
        assert task.check(ex, ex.target)
        # fixed width: every value is written with two digits, so layouts never shift
        values = re.findall(r"start (\d+)", ex.prompt)
        values += re.findall(r"(?:=|answer )(\d+)", ex.target)
        assert len(values) == n_ops + 2 and all(len(v) == 2 for v in values)


def test_check_rejects_wrong_or_missing_answers():
    task = get_task("chain")
    ex = task.examples(Split.HELDOUT, 1)[0]
    wrong = str((int(ex.answer) + 1) % 100)
    assert task.check(ex, ex.target)
    assert task.check(ex, f"whatever answer {ex.answer} trailing")
    assert task.check(ex, f"answer {int(ex.answer)}")  # the value counts, not the padding
    assert not task.check(ex, ex.target.replace(f"answer {ex.answer}", f"answer {wrong}"))
    assert not task.check(ex, ex.target.replace("answer", ""))
    assert not task.check(ex, "")
    # the FIRST answer counts: a model cannot hedge by writing several
    assert not task.check(ex, f"answer {wrong} answer {ex.answer}")
    assert extract_answer("x answer 7") == "7"


def test_splits_never_overlap():
    task = get_task("chain")
    keys = {s: {ex.key for ex in task.examples(s, n)} for s, n in
            ((Split.TRAIN, 4000), (Split.CALIB, 600), (Split.HELDOUT, 600))}
    assert not keys[Split.TRAIN] & keys[Split.CALIB]
    assert not keys[Split.TRAIN] & keys[Split.HELDOUT]
    assert not keys[Split.CALIB] & keys[Split.HELDOUT]
    for split, ks in keys.items():
        assert all(split_of(k) is split for k in ks)


def test_split_shares_are_roughly_as_designed():
    rng = random.Random(0)
    task = get_task("chain")
    counts = {s: 0 for s in Split}
    for _ in range(5000):
        counts[split_of(task.sample(rng).key)] += 1
    assert 0.87 < counts[Split.TRAIN] / 5000 < 0.93
    assert 0.03 < counts[Split.HELDOUT] / 5000 < 0.07


def test_calibration_texts_come_from_the_calibration_split():
    texts = calibration_texts("chain", 4, seq_len=64, seed=1)
    assert texts == calibration_texts("chain", 4, seq_len=64, seed=1)
    assert len(texts) == 4 and all(len(t.split()) >= 64 for t in texts)
    held = {ex.prompt for ex in get_task("chain").examples(Split.HELDOUT, 200, seed=1)}
    for text in texts:
        for line in text.splitlines():
            prompt, target = line.split(" : ")
            assert prompt not in held
            assert int(extract_answer(target)) == _solve(prompt)


def test_asking_for_more_distinct_problems_than_exist_fails():
    with pytest.raises(ValueError, match="distinct problems"):
        get_task("chain1").examples(Split.HELDOUT, 150)


def test_invalid_task_definitions_are_rejected():
    with pytest.raises(ValueError):
        ChainTask("bad", min_ops=3, max_ops=2)
    with pytest.raises(KeyError, match="unknown task"):
        get_task("gsm8k")
