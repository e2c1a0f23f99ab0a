"""probe, eval and calibrate under `torchrun --nproc-per-node 2` (gloo, CPU) give what one
process gives, on the shipped tiny models; a calibration killed mid-run resumes.

Each torchrun job is a real subprocess (`python -m torch.distributed.run`), one torch
thread per rank. The single-process references run in this process, which also checks
that one process never starts torch.distributed.

Mutants these tests kill: ranks sharing overlapping or incomplete shards (eval, probe:
the gather refuses, or the results differ), gradients not combined across ranks or
summed out of batch order (calibrate: the block parameters differ), a resume that does
not reach every rank (kill test: the rerun does not match or does not resume).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchrun_helpers import ENV, not_distributed, torchrun, torchrun_argv


def test_eval_matches_one_process(tmp_path):
    """Same accuracy and per-problem outputs; dream-chain at 4 steps gets some wrong, so
    a lost, repeated or reordered batch shows."""
    from faircalib_export.tiny.evaluate import evaluate

    single = evaluate("dream-chain", "chain", 32, steps=4, batch_size=8, console=False)
    not_distributed()
    out = tmp_path / "eval.json"
    torchrun("eval", "dream-chain", "--limit", "32", "--steps", "4", "--batch-size", "8",
             "-o", str(out))
    multi = json.loads(out.read_text())
    assert 0 < single["correct"] < single["n"]  # not all right, not all wrong
    for result in (single, multi):
        result.pop("time_s")
    assert multi == json.loads(json.dumps(single))
    assert not list(tmp_path.glob(".*tmp*"))  # one writer, nothing left behind


def test_probe_gives_the_identical_prior(tmp_path):
    from faircalib_export.probe.artifact import run_probe

    run_probe("llada-chain", None, tmp_path / "one", samples=12, batch_size=4, window=16,
              steps=8)
    not_distributed()
    torchrun("probe", "llada-chain", "-o", str(tmp_path / "two"), "--samples", "12",
             "--batch-size", "4", "--window", "16", "--steps", "8")
    one, two = (json.loads((tmp_path / d / "prior.json").read_text()) for d in ("one", "two"))
    assert one == two
    with np.load(tmp_path / "one" / "per_sample.npz") as a, \
            np.load(tmp_path / "two" / "per_sample.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


CALIB = ("--method", "flatquant", "--epochs", "1", "--samples", "10", "--seq-len", "32",
         "--batch-size", "4")  # batches of 4, 4 and 2: even and uneven shares


def single_calibration(out: Path) -> Path:
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint

    cfg = CalibConfig(method="flatquant", epochs=1, batch_size=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: more threads may sum in another order
    try:
        calibrate_checkpoint("llada-chain", out, cfg, samples=10, seq_len=32)
    finally:
        torch.set_num_threads(threads)
    not_distributed()
    return out


def assert_same_blocks(a: Path, b: Path, rel: float = 1e-5) -> None:
    files = sorted((a / "blocks").glob("block_*.safetensors"))
    assert [f.name for f in files] == sorted(f.name for f in (b / "blocks").iterdir())
    for file in files:
        x, y = load_file(file), load_file(b / "blocks" / file.name)
        assert x.keys() == y.keys()
        for key in x:
            if not x[key].is_floating_point():
                assert torch.equal(x[key], y[key]), key
                continue
            finite = torch.isfinite(x[key])  # an infinite clip logit means "no clip"
            assert torch.equal(finite, torch.isfinite(y[key])), key
            diff = (x[key][finite] - y[key][finite]).norm()
            assert diff <= rel * x[key][finite].norm(), f"{file.name} {key}: {diff}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    return single_calibration(tmp_path_factory.mktemp("single") / "calib")


def test_calibrate_matches_one_process(one_process, tmp_path):
    """Two ranks, global batch 4: the same parameters as one process with batch 4 (bit
    for bit here; the target is 1e-5), and the same per-block statistics."""
    torchrun("calibrate", "llada-chain", "-o", str(tmp_path / "calib"), *CALIB)
    assert_same_blocks(one_process, tmp_path / "calib")
    one, two = (json.loads((d / "stats.json").read_text())
                for d in (one_process, tmp_path / "calib"))
    assert [s["weighted_mse"] for s in one] == pytest.approx([s["weighted_mse"] for s in two],
                                                             rel=1e-6)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(t) for t in text]
    return found


def test_killed_rank_resumes_from_finished_blocks(one_process, tmp_path):
    """SIGKILL one rank once block 0 is saved: torchrun stops the job, no artifact
    appears; rerun, the finished blocks are resumed and the result equals one process."""
    out = tmp_path / "calib"
    first_block = Path(f"{out}.partial") / "blocks" / "block_000.safetensors"
    job = subprocess.Popen(torchrun_argv("calibrate", "llada-chain", "-o", str(out), *CALIB),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not first_block.is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first_block.is_file(), job.communicate()[0] if job.poll() is not None else ""
        workers = _children(job.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun stops the others
        output = job.communicate(timeout=120)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0, output
    assert not out.exists(), "the killed job must not leave a finished artifact"
    torchrun("calibrate", "llada-chain", "-o", str(out), *CALIB)
    stats = json.loads((out / "stats.json").read_text())
    assert stats[0]["resumed"] and not stats[-1]["resumed"], stats
    assert_same_blocks(one_process, out)


def test_an_error_on_rank_0_stops_every_rank(tmp_path):
    """Rank 0 refuses the output (a foreign directory): every rank exits at once with
    the user error, none waits for the collective timeout."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    start = time.monotonic()
    result = torchrun("probe", "llada-chain", "-o", str(out), "--samples", "4", expect=1)
    assert time.monotonic() - start < 120
    assert "non-empty directory" in result.stderr, result.stderr
    assert result.stderr.count("error:") == 2  # both ranks say why they stopped
