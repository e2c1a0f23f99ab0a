"""`distributed` in one process: every helper is the identity and torch.distributed is never
started; the environment torchrun sets is read and checked.

Mutants these tests kill: a shard that drops or repeats items, a gather that keeps the
ranks' order instead of the items', a helper that starts a process group without
torchrun, peers that print.
"""

from __future__ import annotations

import pytest

from faircalib_export import distributed
from faircalib_export.distributed import DistributedError


@pytest.fixture(autouse=True)
def no_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_one_process_is_the_identity():
    import torch
    import torch.distributed as dist

    items = list("abcde")
    assert (distributed.world(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.shard(items) == list(enumerate(items))
    assert distributed.gather(reversed(distributed.shard(items)), len(items)) == items
    assert distributed.on_main(lambda: 7) == 7
    assert distributed.broadcast({"x": 1}) == {"x": 1}
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1, 1, 1]
    distributed.init()
    distributed.teardown()
    assert not dist.is_initialized()


def test_shards_cover_the_items_once(monkeypatch):
    items = list(range(11))
    seen = []
    monkeypatch.setenv("WORLD_SIZE", "3")
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        seen += distributed.shard(items)
    assert sorted(seen) == list(enumerate(items))


def test_gather_refuses_missing_or_repeated_units():
    with pytest.raises(DistributedError, match="two ranks"):
        distributed.gather([(0, "a"), (0, "a")], 1)
    with pytest.raises(DistributedError, match="1 of 2"):
        distributed.gather([(1, "b")], 2)


def test_errors_on_main_are_raised_in_one_process():
    def fail():
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        distributed.on_main(fail)


def test_bad_torchrun_environment_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE='two'"):
        distributed.world()


def test_peers_print_nothing_and_get_their_streams_back(monkeypatch, capsys):
    import sys

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    before = sys.stdout
    with distributed.quiet_peers():
        print("from rank 1")
    assert sys.stdout is before
    print("after")
    assert capsys.readouterr().out == "after\n"
    monkeypatch.setenv("RANK", "0")
    with distributed.quiet_peers():
        print("from rank 0")
    assert capsys.readouterr().out == "from rank 0\n"


def test_commands_that_are_not_data_parallel_refuse_torchrun(monkeypatch, tmp_path):
    """`fold` under torchrun would have every rank write OUT: it refuses, naming the
    commands that do run there (checked before any process group is needed)."""
    from typer.testing import CliRunner

    from faircalib_export.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(app, ["fold", str(tmp_path), "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, DistributedError), result.output
    assert "probe, calibrate, eval, diagnose, compare" in str(result.exception)
    assert not (tmp_path / "out").exists()
