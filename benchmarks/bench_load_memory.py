"""Peak resident memory of `load_model` relative to the size of the weights.

Writes a random checkpoint (about 180 MB in fp32, single file and 4 shards), then loads
it in a fresh process and reports the growth of peak RSS over the weight bytes. The
target is about one copy of the weights (ratio near 1.0); safetensors' own `load_file`
is measured beside it for reference (its tensors are file mappings, paged in here by
touching them).

    python benchmarks/bench_load_memory.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

# VmHWM (peak RSS of this address space) rather than ru_maxrss, which Linux carries over
# from the parent across exec.
CHILD = r"""
import sys, torch
from pathlib import Path
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024
how, path = sys.argv[1], Path(sys.argv[2])
from faircalib_export.models.loading import load_model, weight_files
from safetensors.torch import load_file
from faircalib_export.models.loading import meta_model
from faircalib_export.models.tiny import tiny_config
meta_model(tiny_config("llada", 300, 1, 2))  # one-time torch start-up cost, not per weight
before = peak()
if how == "faircalib":
    model = load_model(path)
    n = sum(p.numel() * p.element_size() for p in model.parameters())
else:
    state = {}
    for f in sorted(set(weight_files(path).values())):
        state.update(load_file(str(f)))
    for t in state.values():  # its tensors are lazily mapped: touch them to page them in
        t.sum()
    n = sum(t.numel() * t.element_size() for t in state.values())
print(peak() - before, n)
"""


def measure(how: str, path: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, how, str(path)], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    from faircalib_export.models.tiny import write_tiny_checkpoint

    shape = dict(hidden_size=768, intermediate_size=2304, num_layers=6, num_heads=12)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'layout':<10} {'loader':<12} {'weights MB':>11} {'peak RSS growth MB':>19} "
              f"{'ratio':>6}")
        for shards in (1, 4):
            path = write_tiny_checkpoint(Path(tmp) / f"s{shards}", "llada", shards=shards,
                                         **shape)
            for how in ("faircalib", "safetensors"):
                grow, n = measure(how, path)
                print(f"{shards} shard(s) {how:<12} {n / 1e6:>11.1f} {grow / 1e6:>19.1f} "
                      f"{grow / n:>6.2f}")


if __name__ == "__main__":
    main()
