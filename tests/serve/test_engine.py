"""The serve engine's continuous batching on the exported chain model, without HTTP: a
request joins a running batch at its next step and leaves when done; a cancelled one
frees its row."""

from __future__ import annotations

import threading

import pytest

from faircalib_export.serve.engine import Engine, Job, normalize

PROMPT_A, PROMPT_B = "hello there how are you", "a b c"


@pytest.fixture(scope="module")
def opened(onnx_dir):
    from faircalib_export.opener import open_model

    return open_model(onnx_dir)


def ids(opened, text):
    return opened.text_decoder(False).encode(text)


class Recorder:
    """on_step / on_done callbacks that log (name, what) in the order the worker calls."""

    def __init__(self):
        self.log: list[tuple[str, str, object]] = []
        self.finished = threading.Event()
        self.results: dict[str, list[int]] = {}
        self.hooks: dict[tuple[str, int], object] = {}

    def job(self, name, prompt, config, expected):
        def on_step(step, block, positions, tokens):
            self.log.append((name, "step", step))
            hook = self.hooks.pop((name, step), None)
            if hook is not None:
                hook()

        def on_done(generated, error):
            assert error is None, error
            self.log.append((name, "done", None))
            self.results[name] = generated
            if len(self.results) == expected:
                self.finished.set()

        return Job(prompt, config, on_done, on_step)


def test_a_request_joins_the_running_batch_and_leaves_when_done(opened):
    long = normalize(opened.policy(gen_length=64, steps=32))  # 8 blocks of 4 steps
    short = normalize(opened.policy(gen_length=64, steps=32))
    a_ids, b_ids = ids(opened, PROMPT_A), ids(opened, PROMPT_B)
    alone_a = opened.generate([a_ids], long).generated[0]
    alone_b = opened.generate([b_ids], short).generated[0]

    engine = Engine(opened, max_batch=4)
    rec = Recorder()
    job_a = rec.job("a", a_ids, long, 2)
    job_b = rec.job("b", b_ids, short, 2)
    rec.hooks["a", 5] = lambda: engine.submit([job_b])  # mid-block of a's second block
    engine.start()
    engine.submit([job_a])
    assert rec.finished.wait(120)
    engine.stop()

    assert rec.results == {"a": [int(t) for t in alone_a], "b": [int(t) for t in alone_b]}
    order = [(name, kind) for name, kind, _ in rec.log]
    first_b = order.index(("b", "step"))
    assert order.index(("a", "step")) < first_b < order.index(("a", "done"))
    # b joined right after a's step 5 and took all 32 of its steps beside a's steps 6..31
    # (in a shared step a's event comes first: rows report in batch order)
    assert [s for name, kind, s in rec.log[:first_b] if name == "a"] == list(range(7))
    assert engine.metrics.decode_steps == 6 + 32
    assert engine.metrics.batch_size_sum == 32 + 32


def test_cancelled_running_request_frees_its_row(opened):
    config = normalize(opened.policy(gen_length=64, steps=32))
    engine = Engine(opened, max_batch=1)
    rec = Recorder()
    job_a = rec.job("a", ids(opened, PROMPT_A), config, 1)
    job_b = rec.job("b", ids(opened, PROMPT_B), config, 1)
    rec.hooks["a", 2] = lambda: (engine.submit([job_b]), engine.cancel(job_a))
    engine.start()
    engine.submit([job_a])
    assert rec.finished.wait(120)
    engine.stop()
    assert set(rec.results) == {"b"}  # a never finished
    assert engine.metrics.decode_steps == 3 + 32  # a left after its step 2; b ran alone
    assert engine.metrics.dropped == 1


def test_per_batch_configs_still_decode(opened):
    """Sampling is not continuous: it goes through generate, a batch per request."""
    config = normalize(opened.policy(gen_length=32, steps=16, temperature=1.0, seed=4))
    engine = Engine(opened, max_batch=4)
    rec = Recorder()
    engine.start()
    engine.submit([rec.job("s", ids(opened, PROMPT_B), config, 1)])
    assert rec.finished.wait(120)
    engine.stop()
    assert rec.results["s"] == [int(t) for t in
                                opened.generate([ids(opened, PROMPT_B)], config).generated[0]]
    assert engine.metrics.decode_steps == 16


def test_a_failing_callback_does_not_stop_the_worker(opened):
    config = normalize(opened.policy(gen_length=32, steps=16))
    engine = Engine(opened, max_batch=4)
    rec = Recorder()

    def boom(*args):
        raise RuntimeError("the client's event loop is gone")

    engine.start()
    engine.submit([Job(ids(opened, PROMPT_A), config, boom, boom),
                   rec.job("b", ids(opened, PROMPT_B), config, 1)])
    assert rec.finished.wait(120)
    engine.stop()
    assert rec.results["b"] == [int(t) for t in
                                opened.generate([ids(opened, PROMPT_B)], config).generated[0]]
