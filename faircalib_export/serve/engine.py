"""The batching scheduler behind `faircalib-export serve`.

One worker thread owns the model. Requests are queued as `Job`s. Two ways to decode them:

* Continuous batching (greedy decode=exact configs on exported models, see
  `faircalib_runtime.continuous`): the worker keeps a running batch and calls the model
  once per denoising step for all of its rows. Between steps, finished rows leave and
  waiting jobs with the same config join, up to `max_batch` rows; a joining row starts at
  its own step 0 (for LLaDA, its own first block), so a request never waits for a batch
  to drain. Jobs with another config wait until the running batch has emptied; while one
  waits, no more jobs join the running batch (first come, first served).
* Per batch (every other config: sampling, threshold or cached decoding, guidance, and
  PyTorch artifacts): the worker takes the oldest job and every waiting job with the same
  batch key, up to `max_batch`, and decodes them with `OpenedModel.generate`.

Determinism: a request's tokens must not depend on what it was batched with.
  * greedy configs (temperature 0, no random remasking / Dream `origin` / `alg_temp`) use no
    random numbers; their seed is normalized to 0 and requests with equal configs share a
    batch (prompts of different lengths are left-padded; the padded positions are masked
    out of attention; tests/serve checks batched == alone);
  * sampled configs draw from the runtime's counter RNG per (row, column), so a sampled
    request's draws would depend on its row and on the batch's padding: each sampled
    request is decoded in a batch of its own (key unique to the job).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faircalib_runtime import continuous

from ..opener import EXPORTED_KINDS

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


MAX_BATCH = 16  # requests decoded together by default
DEFAULT_MAX_TOKENS = 256  # largest max_tokens a request may ask for, by default


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new requests."""


def is_stochastic(config: Any) -> bool:
    """Whether decoding `config` draws random numbers (then its rows are batch-dependent)."""
    if float(getattr(config, "temperature", 0.0) or 0.0) > 0:
        return True
    if getattr(getattr(config, "remasking", None), "value", None) == "random":
        return True
    if getattr(getattr(config, "alg", None), "value", None) == "origin":
        return True
    return getattr(config, "alg_temp", None) is not None or config.policy == "random_commit"


def normalize(config: Any) -> Any:
    """A greedy config's seed is irrelevant: set it to 0 so equal settings batch together."""
    return config if is_stochastic(config) else dataclasses.replace(config, seed=0)


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One decode: a prompt (token ids) and its policy config.

    `on_step(step, block, positions, tokens)` is called from the worker thread after each
    denoising step with the window positions this row committed; `on_done(generated,
    error)` once with the row's generated ids (cut at EOS) or the exception.
    """

    prompt: Sequence[int]
    config: Any
    on_done: Callable[[list[int] | None, BaseException | None], None]
    on_step: Callable[[int, int, list[int], list[int]], None] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    started: bool = False
    submitted: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> Any:
        return (self.config, self.id) if is_stochastic(self.config) else self.config


class Metrics:
    """Counters for GET /metrics (Prometheus text format, written by hand)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.decode_steps = 0
        self.admitted = 0
        self.batch_sizes = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_size_sum = 0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.dropped = 0

    def inc(self, table: dict[str, int], label: str) -> None:
        with self.lock:
            table[label] = table.get(label, 0) + 1

    def observe_latency(self, seconds: float) -> None:
        with self.lock:
            self.latency[_bucket(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def observe_step(self, rows: int) -> None:
        """One backend call (denoising step) over `rows` sequences."""
        with self.lock:
            self.decode_steps += 1
            self.batch_sizes[_bucket(BATCH_BUCKETS, rows)] += 1
            self.batch_size_sum += rows

    def observe_admitted(self, jobs: int) -> None:
        with self.lock:
            self.admitted += jobs

    def render(self, queue_depth: int) -> str:
        p = "faircalib_serve_"
        lines: list[str] = []

        def counter(name: str, help: str, values: dict[str, int] | int | float,
                    label: str = "endpoint") -> None:
            lines.append(f"# HELP {p}{name} {help}")
            lines.append(f"# TYPE {p}{name} counter")
            if isinstance(values, dict):
                for key, value in sorted(values.items()):
                    lines.append(f'{p}{name}{{{label}="{key}"}} {value}')
            else:
                lines.append(f"{p}{name} {values}")

        def histogram(name: str, help: str, bounds, counts, total, count) -> None:
            lines.append(f"# HELP {p}{name} {help}")
            lines.append(f"# TYPE {p}{name} histogram")
            running = 0
            for bound, n in zip([*bounds, "+Inf"], counts, strict=True):
                running += n
                lines.append(f'{p}{name}_bucket{{le="{bound}"}} {running}')
            lines.append(f"{p}{name}_sum {total}")
            lines.append(f"{p}{name}_count {count}")

        with self.lock:
            counter("requests_total", "HTTP requests received, by endpoint.", self.requests)
            counter("errors_total", "Requests answered with an error, by error type.",
                    self.errors, "type")
            counter("generated_tokens_total", "Completion tokens returned.",
                    self.generated_tokens)
            counter("prompt_tokens_total", "Prompt tokens decoded.", self.prompt_tokens)
            counter("decode_steps_total", "Denoising steps run (backend calls; one step "
                    "decodes every row of the batch).", self.decode_steps)
            counter("rows_started_total", "Sequences that started decoding.", self.admitted)
            counter("dropped_total", "Jobs dropped before they started (client gone, "
                    "timeout).", self.dropped)
            histogram("batch_size", "Rows per denoising step.", BATCH_BUCKETS,
                      self.batch_sizes, self.batch_size_sum, self.decode_steps)
            histogram("request_latency_seconds", "Time from request to response.",
                      LATENCY_BUCKETS, self.latency, round(self.latency_sum, 6),
                      self.latency_count)
        lines.append(f"# HELP {p}queue_depth Jobs waiting for a batch.")
        lines.append(f"# TYPE {p}queue_depth gauge")
        lines.append(f"{p}queue_depth {queue_depth}")
        return "\n".join(lines) + "\n"


def _notify(callback: Callable, *args: Any) -> None:
    """Call a job's callback; its failure (say, a closed event loop at shutdown) is logged
    and never stops the worker, which serves every other job."""
    try:
        callback(*args)
    except Exception:
        log.exception("a serve callback failed")


def _bucket(bounds: Sequence[float], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


class Engine:
    """A queue and one worker thread decoding on an `OpenedModel`.

    `continuous=None` batches continuously wherever the config allows it and the model is
    an exported one (ONNX, TensorRT); False always decodes a batch at a time.
    """

    def __init__(self, model: Any, *, max_batch: int = MAX_BATCH,
                 metrics: Metrics | None = None, continuous: bool | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.metrics = metrics or Metrics()
        if continuous is None:
            continuous = getattr(model, "kind", None) in EXPORTED_KINDS
        self.continuous = continuous
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._backend: Any = None
        self._running: RunningBatch | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="faircalib-serve-engine",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting jobs, finish the queued and running ones, join the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, jobs: Sequence[Job]) -> None:
        with self._cond:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            self._queue.extend(jobs)
            self._cond.notify_all()

    def cancel(self, job: Job) -> bool:
        """Drop a job: a waiting one at once (True), a continuously batched one before the
        next step (its row leaves the batch); a per-batch decode runs to its end."""
        with self._cond:
            job.cancelled = True
            if job.started:
                return False
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            self.metrics.dropped += 1
            return True

    # --- worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._running is None:
                    if self._closed:
                        return
                    self._cond.wait()
                running = self._running
                if running is None:
                    head = self._queue[0]
                    if not (self.continuous and continuous.supports(head.config)):
                        batch = self._take(head.key, self.max_batch)
                    else:  # a new continuous batch
                        running = self._running = RunningBatch(
                            continuous.Continuous(self._model_backend(), head.config))
                if running is not None:
                    joining = self._take(running.key, self.max_batch - len(running),
                                         in_order=True)
            if running is None:
                self._decode(batch)
            else:
                self._step(running, joining)

    def _model_backend(self) -> Any:
        if self._backend is None:
            self._backend = self.model.backend()
        return self._backend

    def _take(self, key: Any, limit: int, in_order: bool = False) -> list[Job]:
        """Waiting jobs with `key` (the caller holds the lock), oldest first. `in_order`
        stops at the first job with another key, so that job is not overtaken."""
        batch = []
        for job in self._queue:
            if len(batch) >= limit:
                break
            if job.key == key:
                batch.append(job)
            elif in_order:
                break
        for job in batch:
            self._queue.remove(job)
            job.started = True
        self.metrics.observe_admitted(len(batch))
        return batch

    def _step(self, running: RunningBatch, joining: list[Job]) -> None:
        """Admit `joining` to the running batch, drop cancelled rows, run one step."""
        for job in joining:
            try:
                running.jobs[running.stepper.add(job.prompt)] = job
            except ValueError as err:  # a prompt the loop refuses: this job fails alone
                _notify(job.on_done, None, err)
        for row, job in list(running.jobs.items()):
            if job.cancelled:
                running.stepper.remove(row)
                del running.jobs[row]
                self.metrics.dropped += 1
        rows = len(running.stepper)
        try:
            events = running.stepper.step()
        except BaseException as err:  # every row gets the error; the worker goes on
            for job in running.jobs.values():
                _notify(job.on_done, None, err)
            running.jobs.clear()
            events = []
        if rows:
            self.metrics.observe_step(rows)
        for event in events:
            job = running.jobs[event.row]
            if job.on_step is not None and event.positions:
                _notify(job.on_step, event.step, event.block, event.positions, event.tokens)
            if event.row.done:
                del running.jobs[event.row]
                _notify(job.on_done, event.row.generated, None)
        if not running.jobs:
            with self._cond:
                self._running = None

    def _decode(self, batch: list[Job]) -> None:
        config = batch[0].config
        window = config.window

        def on_step(event) -> None:
            self.metrics.observe_step(len(batch))
            x = np.asarray(event.x)[:, -window:]
            committed = np.asarray(event.committed)[:, -window:]
            for row, job in enumerate(batch):
                if job.on_step is None:
                    continue
                positions = np.flatnonzero(committed[row])
                if positions.size:
                    _notify(job.on_step, int(event.step), int(event.block), positions.tolist(),
                                x[row, positions].tolist())

        try:
            result = self.model.generate([list(j.prompt) for j in batch], config,
                                         on_step=on_step)
        except BaseException as err:  # each job gets the error; the worker goes on
            for job in batch:
                _notify(job.on_done, None, err)
            return
        for job, ids in zip(batch, result.generated, strict=True):
            _notify(job.on_done, [int(i) for i in ids], None)


@dataclass(eq=False)
class RunningBatch:
    """The running continuous batch: its rows and each row's job."""

    stepper: continuous.Continuous
    jobs: dict = field(default_factory=dict)  # Row -> Job

    @property
    def key(self) -> Any:
        return self.stepper.config  # greedy configs: the batch key is the config

    def __len__(self) -> int:
        return len(self.jobs)
