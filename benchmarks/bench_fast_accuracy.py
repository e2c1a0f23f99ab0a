"""What fast decoding costs in accuracy on the shipped models, and what it saves in time.

For each shipped model (llada-chain, dream-chain) and each of its FP checkpoint, a W4A4
flatquant artifact and a W4A4 fair-calib artifact (made here with the tiny recipe; the
fair-calib one by `build`, whose ONNX export is also used), score --limit held-out
problems of the model's task with the exact loop and with `--decode fast` (dual cache)
at each threshold of --thresholds, in one process, one after the other. Prints accuracy,
the change against exact, wall time and speed-up, and, at --default-tau, how often the
exported ONNX model decodes the same tokens as its PyTorch artifact in fast mode. Writes
the accuracy-vs-speed plot to --out.

    python benchmarks/bench_fast_accuracy.py [--limit 500] [--out fast_accuracy.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from faircalib_export.diagnose.run import DiagnoseConfig, diagnose  # noqa: E402
from faircalib_export.opener import open_model  # noqa: E402
from faircalib_export.tiny.evaluate import evaluate  # noqa: E402
from faircalib_export.tiny.tasks import Split, get_task  # noqa: E402

CLI = [sys.executable, "-m", "faircalib_export"]


def make_artifacts(model: str, work: Path) -> dict[str, Path | str]:
    build, flat = work / f"{model}-build", work / f"{model}-flatquant"
    subprocess.run([*CLI, "build", model, "--target", "rtx4090", "-o", str(build),
                    "--quality-problems", "0", "--no-tensorrt"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*CLI, "calibrate", model, "-o", str(flat), "--method", "flatquant"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"FP": model, "W4A4 flatquant": flat, "W4A4 fair-calib": build / "calibrated",
            "onnx": build / "onnx"}


def score(target, task: str, limit: int, **decoding) -> tuple[float, float]:
    start = time.perf_counter()
    result = evaluate(target, task, limit, console=False, **decoding)
    return result["accuracy"], time.perf_counter() - start


def same_tokens(torch_dir: Path, onnx_dir: Path, task: str, limit: int, tau: float) -> float:
    """Share of problems whose fast-mode tokens are identical on both backends."""
    stream = get_task(task).stream(Split.HELDOUT, 0)
    prompts = [next(stream).prompt for _ in range(limit)]
    outputs = []
    for path in (torch_dir, onnx_dir):
        opened = open_model(path)
        policy = opened.policy(decode="fast", threshold=tau)
        text = opened.text_decoder(chat=True)
        ids = [text.encode(p) for p in prompts]
        outputs.append([g for i in range(0, len(ids), 64)
                        for g in opened.generate(ids[i:i + 64], policy).generated])
    return sum(a == b for a, b in zip(*outputs, strict=True)) / len(prompts)


def flips(model: str, students: list[Path], samples: int, **decoding) -> list[tuple]:
    """(flips per sequence, frontier margin) of each student against the FP teacher."""
    report = diagnose(model, students, None, config=DiagnoseConfig(samples=samples,
                                                                   **decoding))
    names = [m["name"] for m in report["models"][1:]]
    tf = report["teacher_forced"]
    return [(tf[n]["flips_per_seq"]["mean"], tf[n]["margin"]["mean"]) for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--thresholds", default="0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--default-tau", type=float, default=0.9)
    ap.add_argument("--models", default="llada-chain,dream-chain")
    ap.add_argument("--diag-samples", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("fast_accuracy.png"))
    args = ap.parse_args()
    taus = [float(t) for t in args.thresholds.split(",")]
    fig, axes = plt.subplots(1, len(args.models.split(",")), figsize=(11, 4), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for ax, model in zip(axes[0], args.models.split(","), strict=True):
            task = "chain"
            arts = make_artifacts(model, Path(tmp))
            print(f"\n{model}: {args.limit} held-out '{task}' problems, fast = dual cache + "
                  f"threshold commits")
            print(f"{'model':<16} {'mode':<12} {'accuracy':>8} {'delta':>7} {'seconds':>8} "
                  f"{'speed-up':>8}")
            for label in ("FP", "W4A4 flatquant", "W4A4 fair-calib"):
                acc0, t0 = score(arts[label], task, args.limit)
                print(f"{label:<16} {'exact':<12} {acc0:8.3f} {'':>7} {t0:8.1f} {1:7.2f}x",
                      flush=True)
                speed, accs = [1.0], [acc0]
                for tau in taus:
                    acc, t = score(arts[label], task, args.limit, decode="fast", threshold=tau)
                    print(f"{label:<16} {f'fast {tau}':<12} {acc:8.3f} {acc - acc0:+7.3f} "
                          f"{t:8.1f} {t0 / t:7.2f}x", flush=True)
                    speed.append(t0 / t)
                    accs.append(acc)
                ax.plot(speed, accs, "o-", label=label)
                for x, y, name in zip(speed, accs, ["exact"] + [str(t) for t in taus],
                                      strict=True):
                    ax.annotate(name, (x, y), fontsize=7)
            same = same_tokens(arts["W4A4 fair-calib"], arts["onnx"], task, args.limit,
                               args.default_tau)
            print(f"exported ONNX vs PyTorch (fair-calib), fast tau {args.default_tau}: "
                  f"{same:.3f} of problems decoded to identical tokens", flush=True)
            students = [arts["W4A4 flatquant"], arts["W4A4 fair-calib"]]
            print(f"teacher-forced diagnostics, {args.diag_samples} held-out sequences "
                  f"(flips per sequence / frontier margin): flatquant | fair-calib")
            for label, decoding in (("exact", {"decode": "exact"}),
                                    (f"parallel {args.default_tau}",
                                     {"decode": "parallel", "threshold": args.default_tau})):
                (fq, fq_m), (fc, fc_m) = flips(model, students, args.diag_samples, **decoding)
                print(f"  {label:<14} {fq:.3f} / {fq_m:.3f} | {fc:.3f} / {fc_m:.3f}  "
                      f"(fair-calib / flatquant flips: {fc / fq if fq else float('nan'):.2f})",
                      flush=True)
            ax.set(title=model, xlabel="speed-up over exact (wall time)", ylabel="accuracy")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
