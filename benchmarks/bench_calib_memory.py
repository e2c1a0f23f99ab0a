"""Stage II memory: measured peak RSS for L vs 2L layers, and the plan for 7-8B shapes.

1. Calibrates random checkpoints with L and 2L layers (same width, data and settings)
   in fresh processes and reports peak RSS growth. Blocks stream from disk and caches
   are per-sample, so the ratio should stay near 1 (target <= 1.15).
2. Prints the computed device-memory plan for LLaDA-8B and Dream-7B shapes at the
   paper's 128 x 1024 calibration set, batch 4 (paper: 12-15 GB peak).

    python benchmarks/bench_calib_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from faircalib_export.configs_data import model_configs

CHILD = r"""
import sys, torch
from pathlib import Path
from faircalib_export.calibrate.artifact import run_calibration
from faircalib_export.calibrate.config import CalibConfig
torch.manual_seed(0)
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024
tokens = torch.randint(0, 256, (16, 128))
before = peak()
run_calibration(Path(sys.argv[1]), Path(sys.argv[2]), CalibConfig(method="flatquant", epochs=1),
                tokens, None, "random")
print(peak() - before)
"""

CONFIGS = model_configs()  # configs/models, package data
LLADA_8B = json.loads(CONFIGS["llada-8b-instruct"].read_text())
DREAM_7B = json.loads(CONFIGS["dream-7b-instruct"].read_text())


def main() -> None:
    from faircalib_export.calibrate.config import PAPER_RECIPE, CalibConfig
    from faircalib_export.calibrate.memory import calibration_plan
    from faircalib_export.models.families import parse_config
    from faircalib_export.models.tiny import write_tiny_checkpoint

    layers = 4
    growth = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (layers, 2 * layers):
            ck = write_tiny_checkpoint(Path(tmp) / f"m{n}", "llada", hidden_size=512,
                                       intermediate_size=1536, num_layers=n, num_heads=8)
            weights = sum(f.stat().st_size for f in ck.glob("*.safetensors"))
            out = subprocess.run([sys.executable, "-c", CHILD, str(ck), str(Path(tmp) / f"c{n}")],
                                 check=True, capture_output=True, text=True).stdout
            growth[n] = int(out.split()[-1])
            print(f"{n:>2} layers: checkpoint {weights / 2**20:7.1f} MiB, "
                  f"calibration peak RSS growth {growth[n] / 2**20:7.1f} MiB")
    print(f"ratio 2L / L = {growth[2 * layers] / growth[layers]:.3f} (target <= 1.15)")

    for name, raw in (("LLaDA-8B", LLADA_8B), ("Dream-7B", DREAM_7B)):
        r, batch = PAPER_RECIPE, CalibConfig.batch_size
        plan = calibration_plan(parse_config(raw), samples=r.samples, seq_len=r.seq_len,
                                batch=batch)
        print(f"\n{name} Stage II plan ({r.samples} x {r.seq_len} tokens, batch {batch}, "
              f"fp32 compute), GiB:")
        for key, value in plan.items():
            print(f"  {key:<30} {value:8.3f}")


if __name__ == "__main__":
    main()
