"""The OpenAI-compatible HTTP app: `create_app(model_path) -> FastAPI`.

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /metrics. Requests are decoded by the batching `Engine` (engine.py). Models are opened
with `opener.open_model`; an exported ONNX directory is served without importing torch.

Extension: a request may carry `"dllm": {"steps", "block_length", "policy", "decode",
"threshold", "cache"}`. Streaming sends one chunk per denoising step with empty text and
`"dllm": {"index", "step", "block", "positions", "tokens", "pieces"}` (window positions
committed at that step), then one chunk per choice with the full text and finish_reason,
then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import DEFAULT_MAX_TOKENS, MAX_BATCH, Engine, EngineClosed, Job, Metrics, normalize


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (status, message, type,
                                                                       param, code)


def _error_body(message: str, type: str, param: str | None = None,
                code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- request models ----------------------------------------------------------------------
class DllmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, gt=0)
    block_length: int | None = Field(None, gt=0)
    policy: str | None = None
    decode: Literal["exact", "parallel", "cached", "fast"] | None = None
    threshold: float | None = Field(None, gt=0, le=1)
    cache: Literal["prefix", "dual"] | None = None


class _Common(BaseModel):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    dllm: DllmOptions | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: str
    content: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


# --- the server state --------------------------------------------------------------------
class Server:
    """The opened model, its engine and the request -> job translation."""

    def __init__(self, opened: Any, *, name: str, max_batch: int, max_tokens: int | None,
                 timeout: float | None):
        self.opened = opened
        self.name = name
        self.timeout = timeout
        self.metrics = Metrics()
        self.engine = Engine(opened, max_batch=max_batch, metrics=self.metrics)
        self.default = opened.policy()
        context = opened.max_length - 1
        self.max_tokens = min(max_tokens or max(DEFAULT_MAX_TOKENS, self.default.window),
                              context)
        self.created = int(time.time())
        self._tok_lock = threading.Lock()
        self._plain = opened.text_decoder(False)
        self._render = _chat_renderer(opened)

    def encode(self, text: str, chat: bool) -> list[int]:
        # the exported tokenizer keeps its chat affixes as state: one text decoder at a time
        with self._tok_lock:
            ids = self.opened.text_decoder(chat).encode(text)
            self._plain = self.opened.text_decoder(False)
            return ids

    def conversation(self, messages: list[ChatMessage]) -> tuple[str, bool]:
        """(prompt text, whether to wrap it in the chat affixes) for a chat request.

        A single user message is wrapped in the chat affixes of runtime.json, exactly as
        `generate --chat` does. A conversation (system prompt, earlier turns) is rendered
        with the model's chat template; without a template its earlier turns are written
        before the last user message as `role: content` lines, inside the affixes.
        """
        if messages[-1].role != "user":
            raise APIError(400, "the last message must have role 'user'", param="messages")
        if len(messages) == 1:
            return messages[0].content or "", True
        turns = [{"role": m.role, "content": m.content or ""} for m in messages]
        if self._render is None:
            earlier = [f"{t['role']}: {t['content']}" for t in turns[:-1]]
            return "\n".join([*earlier, turns[-1]["content"]]), True
        try:
            return self._render(turns), False
        except Exception as err:  # the template's own raise_exception, or a bad role
            raise APIError(400, f"the chat template refused the conversation: {err}",
                           param="messages") from err

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self._plain.decode(ids)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                                f"'{self.name}'", param="model", code="model_not_found")

    def config(self, req: _Common, seed: int) -> tuple[Any, int]:
        """The policy config of a request and its max_tokens (the window may be larger)."""
        from faircalib_runtime import PolicyConfigError

        from ..errors import FaircalibError

        max_tokens = self.default.window if req.max_tokens is None else req.max_tokens
        max_tokens = min(max_tokens, self.max_tokens) if req.max_tokens is None else max_tokens
        if not 0 < max_tokens <= self.max_tokens:
            raise APIError(400, f"max_tokens must be in 1..{self.max_tokens}, got {max_tokens}",
                           param="max_tokens", code="invalid_value")
        d = req.dllm or DllmOptions()
        llada = self.default.policy == "llada"
        block = d.block_length
        window = max_tokens
        if llada:
            unit = block or min(self.default.block_length, max_tokens)
            window = math.ceil(max_tokens / unit) * unit
            block = unit
        steps = d.steps
        if steps is None:
            ratio = self.default.steps / self.default.window
            steps = max(1, round(window * ratio))
            if llada:
                blocks = window // block
                steps = math.ceil(steps / blocks) * blocks
        extra: dict[str, Any] = {k: v for k, v in (("decode", d.decode),
                                                    ("threshold", d.threshold),
                                                    ("cache", d.cache)) if v is not None}
        if req.top_p is not None and req.top_p < 1:
            if llada:
                raise APIError(400, "top_p is a Dream option; LLaDA models sample without it",
                               param="top_p", code="unsupported")
            extra["top_p"] = req.top_p
        try:
            config = self.opened.policy(seed=seed, policy=d.policy, gen_length=window,
                                        steps=steps, block_length=block,
                                        temperature=req.temperature, **extra)
        except (PolicyConfigError, FaircalibError, ValueError, TypeError) as err:
            raise APIError(400, str(err), param="dllm", code="invalid_value") from err
        return normalize(config), max_tokens

    def check_prompt(self, ids: list[int], window: int) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_prompt")
        if self.opened.mask_id in ids:
            raise APIError(400, f"the prompt contains the mask token (id {self.opened.mask_id})",
                           param="prompt", code="invalid_prompt")
        if len(ids) + window > self.opened.max_length:
            raise APIError(400, f"the prompt has {len(ids)} tokens; with a generation window "
                                f"of {window} the model takes at most "
                                f"{self.opened.max_length - window}",
                           param="prompt", code="context_length_exceeded")


@dataclasses.dataclass
class _Choice:
    index: int
    prompt_ids: list[int]
    max_tokens: int
    job: Job | None = None


def _finish(server: Server, ids: list[int], window: int, max_tokens: int,
            stop: list[str]) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of a row's generated ids."""
    finish = "stop" if len(ids) < window else "length"  # shorter: cut at an EOS
    if len(ids) > max_tokens:
        ids, finish = ids[:max_tokens], "length"
    text = server.decode(ids)
    cuts = [text.find(s) for s in stop if s and s in text]
    if cuts:
        text, finish = text[:min(cuts)], "stop"
    return text, finish, len(ids)


def create_app(model: str | Path | None = None, *, opened: Any = None, name: str | None = None,
               max_batch: int = MAX_BATCH, max_tokens: int | None = None,
               timeout: float | None = None, device: str = "cpu") -> FastAPI:
    """The FastAPI app serving MODEL (any kind `open_model` reads), or an opened model."""
    if opened is None:
        from ..opener import open_model

        opened = open_model(model, device)
    if name is None:
        name = Path(model).name if model is not None else str(getattr(opened, "path", "model"))
    server = Server(opened, name=name, max_batch=max_batch, max_tokens=max_tokens,
                    timeout=timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.engine.start()
        try:
            yield
        finally:  # stop accepting, finish queued and in-flight batches
            await asyncio.to_thread(server.engine.stop)

    app = FastAPI(title="faircalib-export serve", lifespan=lifespan)
    app.state.server = server

    def error(status: int, body: dict) -> JSONResponse:
        server.metrics.inc(server.metrics.errors, body["error"]["type"])
        return JSONResponse(body, status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return error(err.status, _error_body(err.message, err.type, err.param, err.code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        def where(e: dict) -> str:
            path = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            return f"{path}: " if path else ""

        message = "; ".join(f"{where(e)}{e.get('msg')}" for e in err.errors()) or "invalid request"
        return error(400, _error_body(message, "invalid_request_error",
                                      ".".join(loc) or None, first.get("type")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        return error(err.status_code, _error_body(str(err.detail), "invalid_request_error"))

    @app.get("/health")
    async def health():
        server.metrics.inc(server.metrics.requests, "health")
        return {"status": "ok", "model": server.name, "queue_depth": server.engine.queue_depth}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.render(server.engine.queue_depth),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        server.metrics.inc(server.metrics.requests, "models")
        return {"object": "list", "data": [{
            "id": server.name, "object": "model", "created": server.created,
            "owned_by": "faircalib-export", "family": server.opened.family,
            "kind": getattr(server.opened, "kind", None),
            "max_tokens": server.max_tokens, "context_length": server.opened.max_length}]}

    async def run(request: Request, req: _Common, prompts: list[tuple[str, bool]], chat: bool):
        """Decode `prompts` ((text, wrap in the chat affixes) pairs); `chat` answers in the
        chat.completion format."""
        started = time.monotonic()
        server.check_model(req.model)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        seed = req.seed or 0
        choices: list[_Choice] = []
        configs = []
        for p_index, (text, wrap) in enumerate(prompts):
            ids = server.encode(text, wrap)
            for i in range(req.n):
                config, max_tokens = server.config(req, seed + i)
                server.check_prompt(ids, config.window)
                choices.append(_Choice(p_index * req.n + i, ids, max_tokens))
                configs.append(config)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done: dict[int, asyncio.Future] = {}

        for choice, config in zip(choices, configs, strict=True):
            future = loop.create_future()
            done[choice.index] = future

            def on_done(ids, err, future=future):
                def settle():
                    if not future.done():
                        (future.set_exception(err) if err is not None
                         else future.set_result(ids))
                loop.call_soon_threadsafe(settle)
                loop.call_soon_threadsafe(events.put_nowait, None)

            def on_step(step, block, positions, tokens, index=choice.index):
                loop.call_soon_threadsafe(events.put_nowait,
                                          (index, step, block, positions, tokens))

            choice.job = Job(choice.prompt_ids, config, on_done,
                             on_step if req.stream else None)
        try:
            server.engine.submit([c.job for c in choices])
        except EngineClosed as err:
            raise APIError(503, str(err), "server_error", code="shutting_down") from err
        kind = "chat.completions" if chat else "completions"
        server.metrics.inc(server.metrics.requests, kind)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())

        def cancel_all() -> None:
            for c in choices:
                server.engine.cancel(c.job)

        def result_of(choice: _Choice) -> tuple[str, str, int]:
            ids = done[choice.index].result()
            return _finish(server, ids, choice.job.config.window, choice.max_tokens, stop)

        def account(results) -> dict:
            completion = sum(r[2] for r in results)
            prompt_tokens = sum(len(c.prompt_ids) for c in choices)
            with server.metrics.lock:
                server.metrics.generated_tokens += completion
                server.metrics.prompt_tokens += prompt_tokens
            server.metrics.observe_latency(time.monotonic() - started)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}

        if not req.stream:
            finished = asyncio.gather(*done.values())
            deadline = None if server.timeout is None else started + server.timeout
            try:
                while not finished.done():  # wake up to check on the client, and the clock
                    wait = poll_wait(deadline)
                    if wait <= 0:
                        raise asyncio.TimeoutError
                    await asyncio.wait({finished}, timeout=wait)
                    if not finished.done() and await request.is_disconnected():
                        cancel_all()  # the client went away: free its rows
                        finished.cancel()
                        return Response(status_code=499)  # nobody reads it
                finished.result()  # a decoding error is raised here
            except asyncio.TimeoutError as err:
                cancel_all()
                finished.cancel()
                raise APIError(504, f"the request did not finish within {server.timeout} s",
                               "timeout_error", code="timeout") from err
            except Exception as err:
                raise APIError(500, f"decoding failed: {err}", "server_error") from err
            results = [result_of(c) for c in choices]
            usage = account(results)
            if chat:
                body_choices = [{"index": c.index, "message": {"role": "assistant",
                                                                "content": r[0]},
                                 "finish_reason": r[1], "logprobs": None}
                                for c, r in zip(choices, results, strict=True)]
            else:
                body_choices = [{"index": c.index, "text": r[0], "finish_reason": r[1],
                                 "logprobs": None}
                                for c, r in zip(choices, results, strict=True)]
            return {"id": rid, "object": "chat.completion" if chat else "text_completion",
                    "created": created, "model": server.name, "choices": body_choices,
                    "usage": usage}

        object_name = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, content: str, finish: str | None, **extra) -> str:
            if chat:
                delta = {"role": "assistant", "content": content} if finish else {}
                choice = {"index": index, "delta": delta, "finish_reason": finish,
                          "logprobs": None}
            else:
                choice = {"index": index, "text": content, "finish_reason": finish,
                          "logprobs": None}
            body = {"id": rid, "object": object_name, "created": created,
                    "model": server.name, "choices": [choice], **extra}
            return f"data: {json.dumps(body)}\n\n"

        async def stream() -> AsyncIterator[str]:
            pending = set(done)
            deadline = None if server.timeout is None else started + server.timeout
            results = {}
            try:
                while pending:
                    if await request.is_disconnected():
                        cancel_all()
                        return
                    wait = poll_wait(deadline)
                    if wait <= 0:
                        cancel_all()
                        err = _error_body(f"the request did not finish within "
                                          f"{server.timeout} s", "timeout_error", code="timeout")
                        server.metrics.inc(server.metrics.errors, "timeout_error")
                        yield f"data: {json.dumps(err)}\n\n"
                        return
                    try:
                        item = await asyncio.wait_for(events.get(), wait)
                    except asyncio.TimeoutError:
                        continue
                    if item is not None:
                        index, step, block, positions, tokens = item
                        pieces = [server.decode([t]) for t in tokens]
                        yield chunk(index, "", None, dllm={
                            "index": index, "step": step, "block": block,
                            "positions": positions, "tokens": tokens, "pieces": pieces})
                        continue
                    for c in choices:
                        if c.index in pending and done[c.index].done():
                            pending.discard(c.index)
                            if done[c.index].exception() is not None:
                                err = _error_body(f"decoding failed: "
                                                  f"{done[c.index].exception()}",
                                                  "server_error")
                                server.metrics.inc(server.metrics.errors, "server_error")
                                yield f"data: {json.dumps(err)}\n\n"
                                return
                            results[c.index] = result_of(c)
                            text, finish, _ = results[c.index]
                            yield chunk(c.index, text, finish)
                account(list(results.values()))
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                cancel_all()
                raise

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        return await run(request, req, [(p, False) for p in prompts], chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, req: ChatRequest):
        return await run(request, req, [server.conversation(req.messages)], chat=True)

    return app


DISCONNECT_POLL_S = 0.5  # how often a waiting request checks on its client


def poll_wait(deadline: float | None) -> float:
    """Seconds to wait before checking on the client again (<= 0: the deadline passed)."""
    return DISCONNECT_POLL_S if deadline is None else min(DISCONNECT_POLL_S,
                                                          deadline - time.monotonic())


def _chat_renderer(opened: Any):
    """messages -> prompt text with the model's chat template, or None without one."""
    tokenizer = getattr(opened, "tokenizer", None)
    if getattr(tokenizer, "chat_template", None) and hasattr(tokenizer, "apply_chat_template"):
        return lambda turns: tokenizer.apply_chat_template(turns, add_generation_prompt=True,
                                                           tokenize=False)
    from faircalib_runtime.chat import ChatTemplate

    path = getattr(opened, "path", None)
    template = ChatTemplate.from_dir(path) if path is not None else None
    return None if template is None else template.render
