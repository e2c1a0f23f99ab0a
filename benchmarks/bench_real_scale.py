"""Real-scale memory/time check: random checkpoints at the exact real configs, few layers.

    python benchmarks/bench_real_scale.py --quick

For LLaDA-8B and Dream-7B it writes a random bf16 checkpoint with the real config read
from configs/models/*.json (real vocabulary, hidden and MLP widths, heads, special ids) but
only 2 layers (--layers), then runs each stage as its own subprocess and records its wall
time and peak RSS (from os.wait4, so per stage, children included):

    calibrate --method rtn  ->  fold  ->  export --variant w4a4-int  ->  ORT forward (1 x 256)

The ORT peak is also given relative to the on-disk size of model.onnx (+ model.onnx.data).
`faircalib-export plan` only models GPU memory: its calibration peak (GPU) is printed for
reference; it has no CPU fold / export / ORT figure ("-").  --compare-layers N repeats
calibrate/fold/export at N layers to report the N vs --layers RSS ratio.

The tokenizer is the tiny byte-level one (ids < 300, far inside the real vocabulary); the
config keeps the real mask/eos ids.  Everything goes in a temporary directory, deleted at
the end (--keep to keep it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

from faircalib_export.export.onnx_export import ORT_MEMORY, ExportOptions

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"llada": "llada-8b-instruct", "dream": "dream-7b-instruct"}
DATA = ROOT.parent / "shared" / "data" / "wikitext2" / "tokenized" / "valid.txt"
GIB = 1 << 30


def make_checkpoint(family: str, layers: int, out: str) -> None:
    """Child: write a random bf16 checkpoint with the real config and `layers` layers."""
    import torch

    from faircalib_export.configs_data import model_configs
    from faircalib_export.models.checkpoint import save_checkpoint
    from faircalib_export.models.families import get_family, parse_config
    from faircalib_export.models.tiny import REMOTE_CODE_FILES, TRAP
    from faircalib_export.models.tokenizer_files import (
        SPECIALS,
        byte_level_tokenizer,
        write_tokenizer,
    )
    from faircalib_export.models.transformer import DiffusionLM

    raw = json.loads(model_configs()[MODELS[family]].read_text())
    cfg = dataclasses.replace(parse_config(raw), num_layers=layers)
    tok = byte_level_tokenizer(SPECIALS[cfg.family])
    with torch.device("meta"):  # shapes only: the weights are drawn shard by shard
        model = DiffusionLM(cfg)
    shapes = dict(model.named_parameters())
    mapping = get_family(cfg.family).keys.mapping(cfg)  # canonical name -> checkpoint key

    class RandomWeights(Mapping):
        """bf16 N(0, 0.02) weights (norms 1), drawn when a shard is written."""

        def __getitem__(self, key):
            canon = next(c for c, k in mapping.items() if k == key)
            t = torch.empty(shapes[canon].shape, dtype=torch.bfloat16)
            if canon.endswith("norm.weight"):
                return t.fill_(1.0)
            gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            for chunk in t.view(-1, t.shape[-1]).split(8192):  # no fp32 copy of a table
                chunk.normal_(0.0, 0.02, generator=gen)
            return t

        def __iter__(self):
            return iter(mapping.values())

        def __len__(self):
            return len(mapping)

    traps = {name: TRAP for name in REMOTE_CODE_FILES[cfg.family]}
    save_checkpoint(model, out, lambda d: write_tokenizer(d, tok, cfg.family),
                    shards=max(4, layers // 2), extra_files=traps, state=RandomWeights())


def ort_forward(onnx_dir: str) -> None:
    """Child: open the exported model and run two 1 x 256 forwards ("summary"); the
    second is timed as the forward."""
    import numpy as np

    from faircalib_runtime.onnx import open_exported

    t0 = time.perf_counter()
    exported = open_exported(onnx_dir)
    t1 = time.perf_counter()
    ids = np.random.default_rng(0).integers(0, 256, size=(1, 256), dtype=np.int64)
    exported.session.forward(ids, None, None, "summary")
    t2 = time.perf_counter()
    exported.session.forward(ids, None, None, "summary")  # warm: what each step costs
    t3 = time.perf_counter()
    print(json.dumps({"open_s": t1 - t0, "forward_s": t3 - t2, "first_forward_s": t2 - t1}))


def run_stage(argv: list[str], log: Path) -> tuple[float, float, str]:
    """Run argv; (wall seconds, peak RSS GiB of it and its children, stdout tail)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{text[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / GIB, text  # ru_maxrss is in KiB on Linux


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def host_plan_gib(ck: Path, samples: int, seq_len: int) -> dict:
    """`faircalib-export plan`'s CPU-pipeline figures for this checkpoint (GiB)."""
    out = subprocess.run(["faircalib-export", "plan", str(ck), "--samples", str(samples),
                          "--seq-len", str(seq_len), "--json"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    data = json.loads(out.stdout)
    return {**data["host_cpu_pipeline_gib"],
            "calibrate_flatquant_gpu": data["calibration"]["peak_gib"]}


def pipeline(family: str, layers: int, tmp: Path, args, with_ort: bool) -> list[dict]:
    me = [sys.executable, str(Path(__file__).resolve())]
    base = tmp / f"{family}-L{layers}"
    ck, cal, dep, onnx = (Path(f"{base}-{s}") for s in ("ck", "cal", "deploy", "onnx"))
    rows = []

    def stage(name, argv, plan="-", extra=""):
        wall, rss, text = run_stage(argv, Path(f"{base}-{name}.log"))
        row = {"model": MODELS[family], "layers": layers, "stage": name, "wall_s": wall,
               "rss_gib": rss, "plan": plan, "note": extra}
        rows.append(row)
        print(f"  {MODELS[family]} L={layers} {name}: {wall:.1f} s, {rss:.2f} GiB", flush=True)
        return text

    stage("checkpoint", me + ["--_make-checkpoint", family, str(layers), str(ck)])
    rows[-1]["note"] = f"{dir_bytes(ck) / GIB:.2f} GiB on disk"
    hp = host_plan_gib(ck, args.samples, args.seq_len)
    stage("calibrate rtn", ["faircalib-export", "calibrate", str(ck), "-o", str(cal),
                            "--method", "rtn", "--data", str(args.data),
                            "--samples", str(args.samples), "--seq-len", str(args.seq_len)],
          plan=hp["calibrate_rtn"])
    if args.flatquant:  # every block trained for one epoch (2 blocks at --quick)
        fq = Path(f"{base}-flatquant")
        stage("calibrate flatquant 1 epoch",
              ["faircalib-export", "calibrate", str(ck), "-o", str(fq), "--method", "flatquant",
               "--epochs", "1", "--data", str(args.data), "--samples", str(args.samples),
               "--seq-len", str(args.seq_len)],
              plan=f"{hp['calibrate_flatquant_gpu']:.2f} (GPU)")
        if not args.keep:
            shutil.rmtree(fq)
    stage("fold" + (f" --head-bits {args.head_bits}" if args.head_bits else ""),
          ["faircalib-export", "fold", str(cal), "-o", str(dep),
           *(["--head-bits", str(args.head_bits)] if args.head_bits else [])], plan=hp["fold"])
    if not args.keep:
        shutil.rmtree(cal)
    for variant in args.variants:
        for memory in args.ort_memory:
            out = Path(f"{onnx}-{variant}-{memory}")
            label = variant if memory == ExportOptions.ort_memory else \
                f"{variant} --ort-memory {memory}"
            stage(f"export {label}", ["faircalib-export", "export", str(dep), "-o", str(out),
                                      "--variant", variant, "--ort-memory", memory],
                  plan=hp["export_w4a4_int"] if variant == "w4a4-int" else "-")
            disk = sum((out / n).stat().st_size for n in ("model.onnx", "model.onnx.data")
                       if (out / n).exists())
            rows[-1]["note"] = f"onnx {disk / GIB:.2f} GiB"
            if with_ort:
                text = stage(f"ORT fwd 1x256 {label}", me + ["--_ort-forward", str(out)],
                             plan=hp[f"ort_session_{memory}"] if variant == "w4a4-int" else "-")
                times = json.loads(text.strip().splitlines()[-1])
                rows[-1]["note"] = (f"{rows[-1]['rss_gib'] * GIB / disk:.2f}x onnx size; "
                                    f"open {times['open_s']:.1f} s, "
                                    f"fwd {times['forward_s']:.1f} s")
            if not args.keep:
                shutil.rmtree(out)
    if not args.keep:
        shutil.rmtree(dep)
        shutil.rmtree(ck, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 layers, w4a4-int (the default)")
    ap.add_argument("--families", nargs="+", default=["llada", "dream"], choices=list(MODELS))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--compare-layers", type=int, default=0,
                    help="also run calibrate/fold/export at this depth (RSS ratio)")
    ap.add_argument("--variants", nargs="+", default=["w4a4-int"])
    ap.add_argument("--flatquant", action="store_true",
                    help="also run calibrate --method flatquant for one epoch")
    ap.add_argument("--ort-memory", nargs="+", default=list(ORT_MEMORY),
                    choices=list(ORT_MEMORY), help="export --ort-memory modes to run")
    ap.add_argument("--head-bits", type=int, choices=[4, 8], default=None,
                    help="fold the LM head to 4 or 8 bits (default: 16-bit, as fold does)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--_make-checkpoint", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_ort-forward", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._make_checkpoint:
        fam, layers, out = args._make_checkpoint
        return make_checkpoint(fam, int(layers), out)
    if args._ort_forward:
        return ort_forward(args._ort_forward)

    tmp = Path(tempfile.mkdtemp(prefix="real-scale-", dir=args.tmp))
    free = shutil.disk_usage(tmp).free / GIB
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB
    print(f"{datetime.date.today()}  {os.cpu_count()} CPU cores, {mem:.0f} GiB RAM, "
          f"{free:.0f} GiB free in {tmp}", flush=True)
    if free < 15:
        sys.exit(f"need ~15 GiB free in {tmp}")
    rows = []
    t0 = time.perf_counter()
    try:
        for fam in args.families:
            rows += pipeline(fam, args.layers, tmp, args, with_ort=True)
            if args.compare_layers:
                rows += pipeline(fam, args.compare_layers, tmp, args, with_ort=False)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; calibrate: --method rtn "
          f"--samples {args.samples} --seq-len {args.seq_len}\n")
    head = f"| {'model':<18} | L | {'stage':<22} | wall s | peak RSS GiB | plan GiB    | note"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:]))
    for r in rows:
        print(f"| {r['model']:<18} | {r['layers']} | {r['stage']:<22} | {r['wall_s']:6.1f} | "
              f"{r['rss_gib']:12.2f} | {str(r['plan']):<11} | {r['note']}")
    if args.compare_layers:
        print()
        for fam in args.families:
            for st in ("calibrate rtn", "fold", *(f"export {v}" for v in args.variants)):
                a = [r for r in rows if r["model"] == MODELS[fam] and r["stage"] == st]
                lo = next(r for r in a if r["layers"] == args.layers)
                hi = next(r for r in a if r["layers"] == args.compare_layers)
                print(f"{MODELS[fam]} {st}: RSS L={args.compare_layers} / L={args.layers} = "
                      f"{hi['rss_gib'] / lo['rss_gib']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
