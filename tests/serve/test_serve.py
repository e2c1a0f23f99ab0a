"""`faircalib-export serve`: OpenAI-compatible endpoints over the exported chain model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

PROMPTS = ["a b c", "hello there how are you today my friend", "x", "1 2 3 4 5 6"]


@pytest.fixture(scope="module")
def opened(onnx_dir):
    from faircalib_export.opener import open_model

    return open_model(onnx_dir)


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def direct(opened, text, *, chat=False, seed=0, **overrides):
    """What `faircalib-export generate` decodes for these settings."""
    config = opened.policy(seed=seed, **overrides)
    decoder = opened.text_decoder(chat)
    ids = decoder.encode(text)
    result = opened.generate([ids], config)
    return opened.text_decoder(False).decode(result.generated[0])


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(f"faircalib_serve_{name}") and not line.startswith("#"))


def test_completions_match_generate(server, opened):
    c = client(server)
    for prompt in PROMPTS[:2]:
        out = c.completions.create(model="chain", prompt=prompt, max_tokens=32, temperature=0)
        assert out.choices[0].text == direct(opened, prompt, gen_length=32, steps=16)
        assert out.choices[0].finish_reason in ("stop", "length")
        assert out.usage.prompt_tokens == len(opened.text_decoder(False).encode(prompt))
    # a smaller window keeps the model's steps per token (16 / 32) and its block of 8
    out = c.completions.create(model="chain", prompt="a b c", max_tokens=16)
    assert out.choices[0].text == direct(opened, "a b c", gen_length=16, steps=8)
    # shorter than a block: one block of max_tokens
    out = c.completions.create(model="chain", prompt="a b c", max_tokens=5)
    assert out.choices[0].text == direct(opened, "a b c", gen_length=5, steps=2)
    # not a multiple of the block: the window is rounded up (to 16) and cut at 12
    out = c.completions.create(model="chain", prompt="a b c", max_tokens=12)
    assert out.usage.completion_tokens <= 12
    full = direct(opened, "a b c", gen_length=16, steps=8)
    assert full.startswith(out.choices[0].text)


def test_chat_matches_generate(server, opened):
    out = client(server).chat.completions.create(
        model="chain", messages=[{"role": "user", "content": "hi there"}], max_tokens=32)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == direct(opened, "hi there", chat=True,
                                                    gen_length=32, steps=16)


def test_multi_turn_chat_uses_the_chat_template(server, opened, onnx_dir):
    """A conversation is rendered with the export's chat template (every turn in its
    role's header), then decoded like any prompt."""
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "a b"},
                {"role": "assistant", "content": "c d"},
                {"role": "user", "content": "e f"}]
    out = client(server).chat.completions.create(model="chain", messages=messages,
                                                 max_tokens=32)
    rendered = ("<|startoftext|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
        for m in messages) + "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert out.choices[0].message.content == direct(opened, rendered, gen_length=32, steps=16)
    assert out.usage.prompt_tokens == len(opened.text_decoder(False).encode(rendered))
    bad = httpx.post(server.url + "/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_dllm_options_and_sampling(server, opened):
    body = {"model": "chain", "prompt": "a b c", "max_tokens": 32, "temperature": 0.8,
            "seed": 7, "dllm": {"steps": 32, "block_length": 16}}
    out = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    want = direct(opened, "a b c", seed=7, gen_length=32, steps=32, block_length=16,
                  temperature=0.8)
    assert out["choices"][0]["text"] == want
    fast = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "prompt": "a b c", "dllm": {"decode": "parallel", "threshold": 0.5}}).json()
    assert fast["choices"][0]["text"] == direct(opened, "a b c", gen_length=32, steps=16,
                                                decode="parallel", threshold=0.5)


def test_n_and_stop(server, opened):
    out = client(server).completions.create(model="chain", prompt="a b c", max_tokens=32,
                                            n=3, temperature=1.0, seed=11)
    texts = [c.text for c in out.choices]
    assert [c.index for c in out.choices] == [0, 1, 2]
    for i, text in enumerate(texts):  # distinct seeds seed + i
        assert text == direct(opened, "a b c", seed=11 + i, gen_length=32, steps=16,
                              temperature=1.0)
    greedy = direct(opened, "a b c", gen_length=32, steps=16)
    stop = greedy[3:5]
    out = client(server).completions.create(model="chain", prompt="a b c", max_tokens=32,
                                            stop=[stop])
    assert out.choices[0].text == greedy[:greedy.find(stop)]
    assert out.choices[0].finish_reason == "stop"


def _concurrent(server, bodies):
    results = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def go(i):
        barrier.wait()
        r = httpx.post(server.url + "/v1/completions", json=bodies[i], timeout=60)
        results[i] = r.json()["choices"][0]["text"]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_batched_equals_alone(server):
    greedy = [{"prompt": p, "max_tokens": 32} for p in PROMPTS] * 3
    sampled = [{"prompt": p, "max_tokens": 32, "temperature": 1.0, "seed": 3} for p in PROMPTS]
    bodies = greedy + sampled
    alone = [httpx.post(server.url + "/v1/completions", json=b, timeout=60).json()
             ["choices"][0]["text"] for b in bodies[:len(PROMPTS)] + sampled]
    alone = alone[:len(PROMPTS)] * 3 + alone[len(PROMPTS):]
    steps, rows = metric(server, "decode_steps_total"), metric(server, "batch_size_sum")
    together = _concurrent(server, bodies)
    assert together == alone
    new_steps = metric(server, "decode_steps_total") - steps
    new_rows = metric(server, "batch_size_sum") - rows
    assert new_rows == 16 * len(bodies)  # every request's row took part in its 16 steps
    assert new_steps < 16 * len(bodies)  # greedy requests shared steps


def test_streaming_completions_and_chat(server, opened):
    c = client(server)
    chunks = list(c.completions.create(model="chain", prompt="a b c", max_tokens=32,
                                       stream=True))
    steps = [ch.model_extra["dllm"] for ch in chunks if ch.model_extra.get("dllm")]
    assert [s["step"] for s in steps] == sorted(s["step"] for s in steps)
    assert len({s["step"] for s in steps}) == 16  # one event per denoising step
    positions = [p for s in steps for p in s["positions"]]
    assert sorted(positions) == list(range(32))  # every window position committed once
    assert all(ch.choices[0].text == "" for ch in chunks[:-1])
    final = chunks[-1].choices[0]
    assert final.text == direct(opened, "a b c", gen_length=32, steps=16)
    assert final.finish_reason in ("stop", "length")

    chat = list(c.chat.completions.create(model="chain", max_tokens=32, stream=True,
                                          messages=[{"role": "user", "content": "hi there"}]))
    assert chat[-1].choices[0].delta.content == direct(opened, "hi there", chat=True,
                                                       gen_length=32, steps=16)
    assert chat[-1].choices[0].finish_reason is not None

    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "x", "max_tokens": 8, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_errors_then_serving_goes_on(server, opened):
    url = server.url + "/v1/completions"
    mask = {v: k for k, v in opened.vocab().items()}[opened.mask_id]
    errors = metric(server, "errors_total")
    cases = [
        (httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}),
         400, None),
        (httpx.post(url, json={"model": "nope", "prompt": "a"}), 404, "model"),
        (httpx.post(url, json={"prompt": "a", "max_tokens": 0}), 400, "max_tokens"),
        (httpx.post(url, json={"prompt": "a", "max_tokens": 65}), 400, "max_tokens"),
        (httpx.post(url, json={"prompt": "a", "max_tokens": "many"}), 400, "max_tokens"),
        (httpx.post(url, json={"prompt": 5}), 400, None),
        (httpx.post(url, json={"prompt": "a " + mask}), 400, "prompt"),
        (httpx.post(url, json={"prompt": "a " * 600}), 400, "prompt"),
        (httpx.post(url, json={"prompt": "a", "dllm": {"steps": 3}}), 400, "dllm"),
        (httpx.post(url, json={"prompt": "a", "dllm": {"decode": "warp"}}), 400, None),
        (httpx.post(server.url + "/v1/chat/completions", json={"messages": []}), 400, None),
    ]
    for response, status, param in cases:
        err = _error(response, status)
        if param is not None:
            assert err["param"] == param, err
    assert metric(server, "errors_total") - errors == len(cases)
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="other", prompt="a")
    ok = client(server).completions.create(model="chain", prompt="a b c", max_tokens=8)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_models_health_metrics(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["chain"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    names = ("requests_total", "generated_tokens_total", "decode_steps_total",
             "request_latency_seconds_count")
    before = [metric(server, n) for n in names]
    client(server).completions.create(model="chain", prompt="a b", max_tokens=32)
    after = [metric(server, n) for n in names]
    assert after[0] >= before[0] + 1 and after[1] > before[1]
    assert after[2] == before[2] + 16 and after[3] == before[3] + 1
    text = httpx.get(server.url + "/metrics").text
    assert "# TYPE faircalib_serve_batch_size histogram" in text


def test_shutdown_finishes_queued_work(onnx_dir):
    from faircalib_export.serve import Job, create_app

    app = create_app(onnx_dir, max_batch=1)
    server = app.state.server
    done = []
    config = server.config(type("R", (), {"max_tokens": 8, "dllm": None, "top_p": None,
                                          "temperature": None})(), 0)[0]
    server.engine.start()
    server.engine.submit([Job([40, 41], config, lambda ids, err: done.append((ids, err)))
                          for _ in range(3)])
    server.engine.stop()
    assert len(done) == 3 and all(err is None for _, err in done)
    from faircalib_export.serve.engine import EngineClosed

    with pytest.raises(EngineClosed):
        server.engine.submit([Job([40], config, lambda *a: None)])


def test_serving_onnx_never_imports_torch(onnx_dir):
    code = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from faircalib_export.serve import create_app

        app = create_app({str(onnx_dir)!r})
        with TestClient(app) as c:
            r = c.post("/v1/completions", json={{"prompt": "a b", "max_tokens": 8}})
            assert r.status_code == 200, r.text
        assert "torch" not in sys.modules, "serving an ONNX export imported torch"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_cli_has_serve(capsys):
    from faircalib_export.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert (exc.value.code or 0) == 0
    assert "--max-batch" in capsys.readouterr().out
    code = ("import sys, faircalib_export.cli; "
            "assert not {'fastapi', 'uvicorn', 'torch'} & set(sys.modules), 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("stream", [False, True])
def test_client_that_goes_away_frees_its_row(onnx_dir, start_server, stream):
    """A long decode whose client closes the connection stops within a poll interval
    (0.5 s) instead of running its 440 steps; the server goes on serving."""
    import socket

    with start_server(onnx_dir, max_tokens=440) as running:
        body = json.dumps({"prompt": "a b c", "max_tokens": 440, "stream": stream,
                           "dllm": {"steps": 440, "block_length": 440}}).encode()
        with socket.create_connection(("127.0.0.1", running.port)) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body)
            deadline = time.monotonic() + 30
            while metric(running, "decode_steps_total") < 3:  # it is decoding
                assert time.monotonic() < deadline
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while metric(running, "dropped_total") < 1:
            assert time.monotonic() < deadline, "the row was never dropped"
            time.sleep(0.05)
        steps = metric(running, "decode_steps_total")
        time.sleep(0.5)
        assert metric(running, "decode_steps_total") == steps < 440  # nothing runs on
        ok = client(running).completions.create(model="chain", prompt="a b", max_tokens=8)
        assert ok.choices[0].finish_reason in ("stop", "length")


def test_serving_a_pytorch_artifact(chain_artifacts, start_server):
    """A folded model is served through PyTorch (`--device` picks its device), batch by
    batch, with the texts of `generate`."""
    from faircalib_export.opener import open_model

    folded = open_model(chain_artifacts[1])
    assert folded.kind == "folded"
    with start_server(chain_artifacts[1]) as running:
        assert not running.app.state.server.engine.continuous
        texts = _concurrent(running, [{"prompt": p, "max_tokens": 32} for p in PROMPTS])
    assert texts == [direct(folded, p, gen_length=32, steps=16) for p in PROMPTS]


def test_readme_serve_examples_run(onnx_dir, start_server):
    """README's curl and openai examples against a server named as README names it."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### `faircalib-export serve", 1)[1].split("\n### ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    serve_line, curl_line = shell.strip().split("\n", 1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert shlex.split(serve_line)[:3] == ["faircalib-export", "serve", "./chain-onnx"]
    with start_server(onnx_dir, name="chain-onnx") as running:
        port = f"localhost:{running.port}"
        out = subprocess.run(shlex.split(curl_line.replace("localhost:8000", port)),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["choices"][0]["finish_reason"] in ("stop", "length")
        out = subprocess.run([sys.executable, "-c", python.replace("localhost:8000", port)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "'positions'" in out.stdout  # the streamed denoising events


def test_sigterm_finishes_the_request_in_flight(onnx_dir):
    """`faircalib-export serve` as a user runs it: SIGTERM while a request decodes lets it
    finish (200, full text), then the application shuts down cleanly and the process
    exits."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "faircalib_export", "serve", str(onnx_dir),
                             "--port", str(port), "--name", "chain", "--max-tokens", "440"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        result = {}

        def request():
            result["response"] = httpx.post(url + "/v1/completions", timeout=120, json={
                "prompt": "a b c", "max_tokens": 440,
                "dllm": {"steps": 220, "block_length": 440}})

        client_thread = threading.Thread(target=request)
        client_thread.start()
        while metric(type("S", (), {"url": url})(), "decode_steps_total") < 3:
            time.sleep(0.05)  # it is decoding
        proc.send_signal(signal.SIGTERM)
        client_thread.join(120)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        # uvicorn shuts down gracefully (the lifespan stops the engine), then re-raises
        # the signal it caught, so the exit status is the SIGTERM one
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
