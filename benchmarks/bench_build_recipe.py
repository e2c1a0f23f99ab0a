"""Choose the tiny models' calibration recipe: cost and quality per (epochs, sequences).

For each recipe, `compare` calibrates fair-calib (one seed), scores held-out accuracy and
runs the teacher-forced diagnostics; the table shows calibration seconds, accuracy, KL
and flips, to set against the paper's recipe (15 epochs of 64 sequences, the old tiny default).

    python benchmarks/bench_build_recipe.py --model dream-chain --recipes 2x32,4x32,15x64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(model: str, epochs: int, samples: int, limit: int, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "faircalib_export", "compare", model, "-o", str(out),
                    "--seeds", "1", "--methods", "fair-calib", "--epochs", str(epochs),
                    "--calib-samples", str(samples), "--limit", str(limit)],
                   check=True, capture_output=True)
    manifest = next((out / "runs").glob("*/manifest.json"))
    results = json.loads((out / "results.json").read_text())
    return {"seconds": json.loads(manifest.read_text())["seconds"], "results": results}


def summarize(results: dict) -> dict:
    """accuracy, KL and flips of the single fair-calib run in a compare results.json."""
    (run,) = results["runs"]
    return {k: run[k] for k in ("accuracy", "kl_masked", "flips_per_seq") if k in run}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dream-chain")
    ap.add_argument("--recipes", default="1x16,2x32,4x32,15x64",
                    help="EPOCHSxSEQUENCES, comma-separated")
    ap.add_argument("--limit", type=int, default=200, help="held-out problems")
    args = ap.parse_args()
    print(f"fair-calib on {args.model}, seed 0, {args.limit} held-out problems")
    print(f"  {'recipe':<10} {'calib s':>8} {'accuracy':>9} {'KL':>8} {'flips/seq':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            epochs, samples = (int(v) for v in recipe.split("x"))
            r = run(args.model, epochs, samples, args.limit, Path(tmp) / recipe)
            s = summarize(r["results"])
            print(f"  {recipe:<10} {r['seconds']:8.1f} {s.get('accuracy', float('nan')):9.1%} "
                  f"{s.get('kl_masked', float('nan')):8.4f} "
                  f"{s.get('flips_per_seq', float('nan')):10.2f}", flush=True)


if __name__ == "__main__":
    main()
