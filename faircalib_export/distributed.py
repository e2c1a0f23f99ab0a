"""Data parallelism under `torchrun`: which share of the work this process does, and the
torch.distributed collectives that put the shares back together.

    torchrun --standalone --nproc-per-node N -m faircalib_export eval llada-chain ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; this module reads them and starts the
process group on first use, only when WORLD_SIZE > 1: gloo for CPU tensors, plus nccl
for CUDA tensors where the machine has a GPU for this rank, GPU LOCAL_RANK (so
`--device cuda` means this rank's GPU). A single process (no torchrun, or WORLD_SIZE 1)
never initializes torch.distributed: every helper is then the identity.

The unit of work is fixed by the data, never by the number of processes: a batch of
prompts with its own seed, a problem, a calibration sequence. `shard` deals these units
out (items[rank::world], original indices kept), `gather` restores them in their
original order on every rank, so results do not depend on N. Only rank 0 writes
artifacts (`on_main`); its failure is raised on every rank instead of leaving them
waiting. A collective waits at most `TIMEOUT`, then fails.

Torch is imported inside the functions: the CLI imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from .errors import FaircalibError

T = TypeVar("T")

# How long a collective waits for the other ranks before it fails (a dead or stuck peer).
# A whole unit of work (one decode batch, one calibration step) must fit in it.
TIMEOUT = timedelta(minutes=30)


class DistributedError(FaircalibError):
    """Another rank failed, or the torchrun environment is inconsistent."""


def world() -> int:
    """Number of processes (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank, 0 .. world() - 1."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine: its GPU index."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0: the process that prints and writes artifacts."""
    return rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer (set by torchrun)") from None


def active() -> bool:
    """Whether this run has several processes (and so a process group)."""
    return world() > 1


def init() -> None:
    """Start the process group if several processes run and it is not started yet."""
    if not active():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if not 0 <= rank() < world():
        raise DistributedError(f"RANK={rank()} is outside WORLD_SIZE={world()}")
    backend = "gloo"
    if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())  # "cuda" now means this rank's GPU
        backend = "cpu:gloo,cuda:nccl"  # each collective by the device of its tensors
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


def teardown() -> None:
    """Destroy the process group if this process started one."""
    if not active():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T]) -> list[tuple[int, T]]:
    """This rank's share of `items` as (original index, item): items[rank::world]."""
    return list(enumerate(items))[rank()::world()]


def gather(pairs: Iterable[tuple[int, T]], total: int) -> list[T]:
    """Every rank's (index, value) pairs, on every rank, as a list in index order.

    `total` is the number of units over all ranks; a missing or repeated index (a
    sharding bug) is an error, not a silently wrong result.
    """
    pairs = list(pairs)
    if active():
        import torch.distributed as dist

        init()
        parts: list[Any] = [None] * world()
        dist.all_gather_object(parts, pairs)
        pairs = [p for part in parts for p in part]
    values: dict[int, T] = {}
    for index, value in pairs:
        if index in values:
            raise DistributedError(f"work unit {index} was done by two ranks")
        values[index] = value
    if sorted(values) != list(range(total)):
        raise DistributedError(f"gathered {len(values)} of {total} work units")
    return [values[i] for i in range(total)]


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled; tensors come back on the CPU)."""
    if not active():
        return obj
    import torch.distributed as dist

    init()
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only (writing an artifact); its result on every rank.

    When `fn` fails, rank 0 raises its error and the other ranks raise a
    `DistributedError` quoting it, instead of waiting for rank 0 until the timeout.
    """
    if not active():
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if is_main():
        try:
            outcome = (True, fn())
        except BaseException as err:  # noqa: BLE001 - re-raised below, after telling the peers
            error = err
            outcome = (False, f"{type(err).__name__}: {err}")
    outcome = broadcast(outcome)
    if error is not None:
        raise error
    ok, value = outcome
    if not ok:
        raise DistributedError(f"rank 0 failed: {value}")
    return value


def all_reduce_sum(tensor):
    """Sum `tensor` over the ranks, in place; returns it."""
    if active():
        import torch.distributed as dist

        init()
        dist.all_reduce(tensor)
    return tensor


@contextmanager
def quiet_peers():
    """Ranks other than 0 print nothing while the block runs (rank 0 reports for all);
    their streams come back on the way out, so an error of theirs is still shown."""
    import sys

    if is_main():
        yield
        return
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w") as null:
        sys.stdout = sys.stderr = null
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
