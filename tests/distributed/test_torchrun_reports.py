"""diagnose and compare under `torchrun --nproc-per-node 2` (gloo, CPU) write the report
one process writes (paths aside).

Mutants these tests kill: tallies merged out of batch order or a batch tallied twice or
never (the gather refuses, or the per-position sums differ), rank 1 writing its own copy
(a second report, or an artifact claimed twice: the run fails).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchrun_helpers import not_distributed, torchrun


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint

    out = tmp_path_factory.mktemp("student") / "rtn"
    calibrate_checkpoint("llada-chain", out, CalibConfig(method="rtn"), samples=4, seq_len=32)
    return out


def _without_paths(obj, *roots: Path):
    text = json.dumps(obj)
    for root in roots:
        text = text.replace(str(root), "ROOT")
    return json.loads(text)


@pytest.mark.slow  # about 40 s on 2 cores
def test_diagnose_matches_one_process(student, tmp_path):
    from faircalib_export.diagnose.run import DiagnoseConfig, diagnose, finite_json

    config = DiagnoseConfig(samples=8, batch_size=2)  # 4 batches: 2 per rank
    single = finite_json(diagnose("llada-chain", [student], None, config=config))
    not_distributed()
    out = tmp_path / "diag"
    torchrun("diagnose", "--teacher", "llada-chain", "--student", str(student), "-o", str(out),
             "--samples", "8", "--batch-size", "2")
    multi = json.loads((out / "diagnose.json").read_text())
    assert multi == json.loads(json.dumps(single))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diag"]  # one writer


@pytest.mark.slow
def test_compare_matches_one_process(tmp_path):
    from faircalib_export.compare.run import CompareConfig, parse_entries, run_compare

    config = CompareConfig(entries=tuple(parse_entries(["rtn"])), seeds=(0,), limit=16,
                           diag_samples=8, calib_samples=4)
    single = run_compare("llada-chain", tmp_path / "one", config)
    not_distributed()
    torchrun("compare", "llada-chain", "-o", str(tmp_path / "two"), "--methods", "rtn",
             "--seeds", "1", "--limit", "16", "--samples", "8", "--calib-samples", "4")
    multi = json.loads((tmp_path / "two" / "results.json").read_text())
    assert _without_paths(multi, tmp_path / "two") == _without_paths(single, tmp_path / "one")
    assert (tmp_path / "two" / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("task, limit", [("arc_easy", 6), ("wikitext2", 5), ("gsm8k", 4)])
def test_benchmark_eval_matches_one_process(task, limit, shared_data, tmp_path):
    """Multiple choice (per-item seeds), masked NLL (per-chunk seeds) and generation
    (batches of 2) on real benchmark files."""
    from faircalib_export.evaluate import evaluate_benchmark
    from faircalib_export.evaluate.benchmarks import DEFAULT_FILES
    from faircalib_export.opener import open_model

    data = shared_data / DEFAULT_FILES[task]
    single = evaluate_benchmark(open_model("llada-chain"), task, path=data, limit=limit,
                                batch_size=2)
    not_distributed()
    out = tmp_path / "eval.json"
    torchrun("eval", "llada-chain", "--task", task, "--data", str(data), "--limit",
             str(limit), "--batch-size", "2", "-o", str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(single))
