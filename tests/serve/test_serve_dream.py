"""Serving a Dream export: entropy-ordered commits, continuously batched, equal to
`generate` alone."""

from __future__ import annotations

import threading

import httpx
import pytest

openai = pytest.importorskip("openai")

PROMPTS = ["a b c", "hello there how are you", "x", "1 2 3 4 5 6"]


@pytest.fixture(scope="module")
def dream(dream_onnx_dir, start_server):
    from faircalib_export.opener import open_model
    from faircalib_runtime.continuous import supports

    opened = open_model(dream_onnx_dir)
    assert opened.family == "dream"
    assert supports(opened.policy())  # its default decode is continuously batched
    with start_server(dream_onnx_dir, max_batch=8) as running:
        yield opened, running


def direct(opened, text, *, chat=False, **overrides):
    ids = opened.text_decoder(chat).encode(text)
    result = opened.generate([ids], opened.policy(**overrides))
    return opened.text_decoder(False).decode(result.generated[0])


def test_dream_completions_alone_and_together(dream):
    opened, running = dream
    window = opened.policy().window
    want = [direct(opened, p) for p in PROMPTS]
    c = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    assert c.completions.create(model="chain", prompt=PROMPTS[0]).choices[0].text == want[0]
    results = [None] * (2 * len(PROMPTS))
    barrier = threading.Barrier(len(results))

    def go(i):
        barrier.wait()
        r = httpx.post(running.url + "/v1/completions", timeout=120,
                       json={"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": window})
        results[i] = r.json()["choices"][0]["text"]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == want * 2
    chat = c.chat.completions.create(model="chain", messages=[{"role": "user",
                                                               "content": "hi"}])
    assert chat.choices[0].message.content == direct(opened, "hi", chat=True)


def test_dream_stream_commits_every_position_once(dream):
    opened, running = dream
    c = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    chunks = list(c.completions.create(model="chain", prompt="a b c", stream=True))
    events = [ch.model_extra["dllm"] for ch in chunks if ch.model_extra.get("dllm")]
    positions = [p for e in events for p in e["positions"]]
    assert sorted(positions) == list(range(opened.policy().window))
    assert chunks[-1].choices[0].text == direct(opened, "a b c")
