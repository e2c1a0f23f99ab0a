"""What the ONNX Runtime CPU graphs cost: file size, resident memory, step time, and the
accuracy of the int8 LM head (docs/export.md).

Part 1 (always): a random LLaDA-layout model (hidden 1024, intermediate 2816, 4 layers,
16 heads; the vocabulary grown to --vocab tokens so that the LM head is about 8% of the
weights, as in LLaDA-8B), calibrated with RTN and folded, exported as
  w4a4              Q/DQ graph (ORT fuses it into MatMulNBits at level 1, 4-bit weights)
  w4a4-int          integer GEMMs (MatMulInteger; int4 weights widened to int8 at load)
  weight-only L1/L4 MatMulNBits at accuracy level 1 (fp32) and 4 (int8 per block)
  w4a4-int head8 / head4, float vs int8 head activations (the LM head folded to 8 or 4
                    bits; head_activations="int8" runs it as MatMulInteger)
and, with --experimental, two exact W4A4 graphs that keep the weights at 4 bits (the
integer codes fed to MatMulNBits; not export options, see docs/export.md):
  codes->nbits L1   activation codes as floats x 4-bit codes with unit scales, fp32 GEMM
  codes->nbits L4   the same at level 4, with a 127 sentinel in every block of 32 so that
                    MLAS's int8 re-quantization of A is the identity
Each graph is loaded in its own process (the runtime's OnnxBackend, its session config):
RSS after session creation (VmRSS; the peak during load is VmHWM), then one full forward
of 1 x --seq tokens (summary outputs, as a greedy step fetches), median wall and CPU time
of --repeats after a warm-up; the graphs are measured in --rounds interleaved rounds
(best round's step, median RSS). One ORT thread by default: on a shared machine its CPU
time is the least disturbed figure. Then ORT's per-op profile of the head variants: the
LM head's share of the node time, and the time per op type. Weight-only level 4 vs 1 is
also timed at the --level-seqs lengths.

Part 2 (--accuracy): on the shipped tiny models (llada-chain, dream-chain): RTN, fold with
--head-bits 8 and 4, export w4a4-int with the float and the int8 head; the int8-head
export against the float-head one (teacher-forced top-1 agreement, logits relative error,
KL, identical decodes) and the held-out task accuracy of both (--problems).

    python benchmarks/bench_ort_costs.py [--threads N] [--experimental] [--accuracy]
    (about 3 minutes, and 8 more with --accuracy, on 2 shared cores)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = "--child"  # internal: measure one export directory in this process


def status_kib(field: str) -> int:
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1])


def child(directory: str, seq: int, repeats: int, threads: int) -> None:
    from faircalib_runtime.onnx import OnnxBackend

    before = status_kib("VmRSS")
    backend = OnnxBackend(directory, threads=threads)
    rss, hwm = status_kib("VmRSS"), status_kib("VmHWM")
    vocab = backend.config["vocab_size"]
    ids = np.random.default_rng(0).integers(0, vocab - 16, (1, seq))
    mask, pos = np.ones_like(ids), np.arange(seq)[None]
    backend.forward(ids, mask, pos, "summary")  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        backend.forward(ids, mask, pos, "summary")
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"rss_before_mib": before / 1024, "rss_load_mib": rss / 1024,
                      "hwm_load_mib": hwm / 1024, "rss_run_mib": status_kib("VmRSS") / 1024,
                      "step_s": statistics.median(times), "cpu_s": statistics.median(cpu),
                      "steps_s": times}))


def head_nodes(graph) -> set[str]:
    """Names of the LM head's nodes: downstream of the final norm (the node reading
    norm.weight), upstream of the logits output."""
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    norm = next(n for n in graph.node if "norm.weight" in n.input)
    below, stack = set(), list(norm.output)
    while stack:
        for n in consumers.get(stack.pop(), []):
            if n.name not in below:
                below.add(n.name)
                stack.extend(n.output)
    above, stack = set(), ["logits"]
    while stack:
        n = producer.get(stack.pop())
        if n is not None and n.name not in above:
            above.add(n.name)
            stack.extend(n.input)
    return below & above


def child_profile(directory: str, seq: int, repeats: int, threads: int) -> None:
    """ORT's per-node profile of `repeats` forwards (after a warm-up): the LM head's time
    and share of all node time, and the time per op type. Nodes are named first; the
    head is found in ORT's optimized graph, whose fused nodes the profile names."""
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(_profile(Path(directory), Path(tmp), seq, repeats, threads)))


def _profile(directory: Path, tmp: Path, seq: int, repeats: int, threads: int) -> dict:
    import onnx
    import onnxruntime as ort

    config = json.loads((directory / "runtime.json").read_text())
    model = onnx.load(str(directory / config["model_file"]))
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    onnx.save(model, str(tmp / "named.onnx"))

    def options():
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.log_severity_level = 3
        for key, value in config.get("ort_session_config", {}).items():
            o.add_session_config_entry(key, value)
        return o

    o = options()
    o.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(tmp / "named.onnx"), o, providers=["CPUExecutionProvider"])
    head = head_nodes(onnx.load(str(tmp / "optimized.onnx"), load_external_data=False).graph)
    o = options()
    o.enable_profiling, o.profile_file_prefix = True, str(tmp / "profile")
    layers, _, _, kv_heads, _, head_dim = config["cache"]["shape"]
    ids = np.random.default_rng(0).integers(0, config["vocab_size"] - 16, (1, seq))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "position_ids": np.arange(seq)[None],
             config["cache"]["input"]: np.zeros((layers, 2, 1, kv_heads, 0, head_dim),
                                                np.float32)}
    summary = config["outputs"]["summary"]
    session = ort.InferenceSession(str(tmp / "named.onnx"), o,
                                   providers=["CPUExecutionProvider"])
    session.run(summary, feeds)  # warm-up (in the profile, skipped below by its start)
    for _ in range(repeats):
        session.run(summary, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first = runs[1] if len(runs) > 1 else 0  # events of the timed runs only
    nodes = [e for e in events if e.get("cat") == "Node" and e["ts"] >= first
             and e["name"].endswith("_kernel_time")]
    total = sum(e["dur"] for e in nodes) / repeats / 1e3
    head_ms = sum(e["dur"] for e in nodes
                  if e["name"].removesuffix("_kernel_time") in head) / repeats / 1e3
    ops: dict[str, float] = {}
    for e in nodes:
        ops[e["args"]["op_name"]] = ops.get(e["args"]["op_name"], 0) + e["dur"] / repeats / 1e3
    return {"head_ms": head_ms, "nodes_ms": total, "ops_ms": ops}


def measure(directory: Path, args, seq: int | None = None, profile: bool = False) -> dict:
    out = subprocess.run([sys.executable, __file__, CHILD, str(directory),
                          str(seq or args.seq), str(args.repeats), str(args.threads)]
                         + (["profile"] if profile else []),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_rounds(dirs: dict[str, Path], args, seq: int | None = None) -> dict[str, dict]:
    """Each graph measured in `args.rounds` interleaved rounds: per graph the round with
    the smallest median step (other work on a shared machine only ever slows a round),
    and the median over rounds of the RSS figures (RSS after load varies by a few tens
    of MiB from one process to the next, as freed load-time buffers are returned or not)."""
    rounds: dict[str, list[dict]] = {label: [] for label in dirs}
    for _ in range(args.rounds):
        for label, d in dirs.items():
            rounds[label].append(measure(d, args, seq))
    result = {}
    for label, ms in rounds.items():
        best = dict(min(ms, key=lambda m: m["step_s"]))
        for key in ("rss_before_mib", "rss_load_mib", "hwm_load_mib", "rss_run_mib"):
            best[key] = statistics.median(m[key] for m in ms)
        result[label] = best
    return result


def file_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir()
               if f.name.startswith("model.onnx")) / 2**20


# --- experimental exact W4A4 graphs with 4-bit resident weights ---------------------------

def codes_writer(level: int):
    """A `_Writer` whose integer-GEMM linears feed the activation codes (u - z, exact small
    integers as float32) to MatMulNBits with unit scales, then scale by s and c. Level 1:
    fp32 GEMM, exact while the int32 sums stay below 2^24. Level 4: MLAS re-quantizes A
    per block of 32 with scale absmax / 127; a 127 sentinel (zero weight row) in every
    block makes that scale 1, so the codes pass through unchanged (a_bits <= 7 only)."""
    from onnx import TensorProto

    from faircalib_export.export.onnx_export import NBITS_BLOCK, _Writer

    class CodesWriter(_Writer):
        _prepared: dict

        def linear(self, i, lin, x, in_features):
            if x not in self._act_scale:
                return super().linear(i, lin, x, in_features)
            b, prefix = self.b, f"blocks.{i}.{lin}"
            codes = self._codes(prefix, in_features, self.w_bits)  # (N, K) int8
            if not hasattr(self, "_prepared"):
                self._prepared = {}
            if x not in self._prepared:
                self._prepared[x] = self._prepare(x, in_features)
            a = self._prepared[x]
            n, k = codes.shape
            if level == 4:  # blocks of 31 codes + the sentinel's zero weight
                per = NBITS_BLOCK - 1
                nb = -(-k // per)
                padded = np.zeros((n, nb * per), np.int8)
                padded[:, :k] = codes
                full = np.zeros((n, nb, NBITS_BLOCK), np.int8)
                full[:, :, :per] = padded.reshape(n, nb, per)
                codes = full.reshape(n, nb * NBITS_BLOCK)
            kk = codes.shape[1]
            blocks = kk // NBITS_BLOCK
            u = (codes.astype(np.int16) + 8).astype(np.uint8).reshape(n, blocks, NBITS_BLOCK)
            packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
            y = b.op("MatMulNBits", [a, b.init(f"{prefix}.nbits", packed),
                                     b.init(f"{prefix}.nbits_scale",
                                            np.ones(n * blocks, np.float32))],
                     domain="com.microsoft", K=kk, N=n, bits=4, block_size=NBITS_BLOCK,
                     accuracy_level=level)
            y = b.op("Mul", [b.op("Mul", [y, self._act_scale[x]]),
                             b.init(f"{prefix}.scale", self.np(f"{prefix}.scale"))])
            return self._bias(prefix, y)

        def _prepare(self, x, k):
            b = self.b
            z = 1 << (self.a_bits - 1)
            a = b.op("Sub", [b.op("Cast", [x], to=TensorProto.FLOAT), b.const(float(z))])
            if level != 4:
                return a
            per = NBITS_BLOCK - 1
            nb = -(-k // per)
            if nb * per > k:
                a = b.op("Pad", [a, b.const([0, 0, 0, 0, 0, nb * per - k], np.int64)])
            a = b.op("Reshape", [a, b.const([0, 0, nb, per], np.int64)])
            first = b.op("Slice", [a, b.const([0], np.int64), b.const([1], np.int64),
                                   b.const([3], np.int64)])
            sentinel = b.op("Add", [b.op("Mul", [first, b.const(0.0)]), b.const(127.0)])
            a = b.op("Concat", [a, sentinel], axis=3)
            return b.op("Reshape", [a, b.const([0, 0, nb * NBITS_BLOCK], np.int64)])

    return CodesWriter


def export_with(writer_cls, deploy: Path, out: Path) -> Path:
    from faircalib_export.export.graph import MS_DOMAIN, GraphBuilder
    from faircalib_export.export.onnx_export import ORT_SESSION_CONFIG, write_export_dir
    from faircalib_export.fold.deployed import read_deploy

    meta, tensors = read_deploy(deploy)
    builder = GraphBuilder("faircalib-experimental")
    writer_cls(builder, meta, tensors, "w4a4-int").build()
    return write_export_dir(builder.model({MS_DOMAIN: 1}), deploy, meta, out,
                            variant="w4a4-int", external_data=None, kind="onnx",
                            extra={"ort_session_config": ORT_SESSION_CONFIG})


# --- part 1 -------------------------------------------------------------------------------

def vocab_words(vocab: int) -> list[str]:
    """Two-byte words, each one BPE merge (one extra token), to reach about `vocab`."""
    chars = [chr(c) for c in range(0x21, 0x7F)]
    words = [a + b for a in chars for b in chars]
    return words[:max(0, vocab - 256 - 16)]


def costs(args, work: Path) -> None:
    from faircalib_export.calibrate.artifact import run_calibration
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.export.onnx_export import ExportOptions, export_onnx
    from faircalib_export.fold.fold import fold_artifact
    from faircalib_export.models.tiny import write_tiny_checkpoint

    start = time.time()
    ck = write_tiny_checkpoint(work / "ck", "llada", hidden_size=args.hidden,
                               intermediate_size=args.intermediate, num_layers=args.layers,
                               num_heads=args.heads, words=vocab_words(args.vocab))
    cfg = json.loads((ck / "config.json").read_text())
    import torch

    tokens = torch.randint(0, cfg["vocab_size"] - 16, (4, 64),
                           generator=torch.Generator().manual_seed(0))  # RTN: 4 x 64 tokens
    art = run_calibration(ck, work / "cal", CalibConfig(method="rtn"), tokens, None,
                          "random tokens")
    deploy = {hb: fold_artifact(art, work / f"deploy{hb}", head_bits=hb) for hb in (16, 8, 4)}
    vocab, e, f = cfg["vocab_size"], args.hidden, args.intermediate
    blocks = args.layers * (4 * e * e + 3 * e * f)
    print(f"model: LLaDA layout, hidden {e}, intermediate {f}, {args.layers} layers, "
          f"{args.heads} heads, vocab {vocab}: block weights {blocks / 1e6:.1f} M, LM head "
          f"{vocab * e / 1e6:.2f} M ({vocab * e / (blocks + vocab * e):.1%} of block + head)")

    plan = [("w4a4 (Q/DQ)", 16, ExportOptions(variant="w4a4")),
            ("w4a4-int", 16, ExportOptions(variant="w4a4-int")),
            ("weight-only L1", 16, ExportOptions(variant="weight-only", accuracy_level=1)),
            ("weight-only L4", 16, ExportOptions(variant="weight-only", accuracy_level=4))]
    for hb in (8, 4):
        for act in ("float", "int8"):
            plan.append((f"w4a4-int head{hb} {act}", hb,
                         ExportOptions(variant="w4a4-int", head_activations=act)))
    dirs = {}
    for i, (label, hb, options) in enumerate(plan):
        dirs[label] = export_onnx(deploy[hb], work / f"onnx{i}", options)
    if args.experimental:
        for level in (1, 4):
            label = f"codes->nbits L{level}"
            dirs[label] = export_with(codes_writer(level), deploy[16], work / f"exp{level}")
    print(f"(built in {time.time() - start:.0f} s) one forward of 1 x {args.seq} tokens: "
          f"median wall and CPU seconds of {args.repeats} after a warm-up, best of "
          f"{args.rounds} rounds, {args.threads} thread(s), onnxruntime "
          f"{__import__('onnxruntime').__version__}; RSS in MiB (+graph: over the process "
          f"before the session)\n")
    print(f"{'graph':<24} {'file MiB':>9} {'RSS load':>9} {'(+graph)':>9} {'peak load':>9} "
          f"{'step s':>8} {'CPU s':>8}")
    results = measure_rounds(dirs, args)
    for label, d in dirs.items():
        m = results[label]
        print(f"{label:<24} {file_mib(d):9.1f} {m['rss_load_mib']:9.1f} "
              f"{m['rss_load_mib'] - m['rss_before_mib']:9.1f} {m['hwm_load_mib']:9.1f} "
              f"{m['step_s']:8.3f} {m['cpu_s']:8.3f}")
    print()
    for hb in (8, 4):
        fl, i8 = results[f"w4a4-int head{hb} float"], results[f"w4a4-int head{hb} int8"]
        print(f"head{hb}: int8 / float head step time {i8['step_s'] / fl['step_s']:.3f} "
              f"(CPU {i8['cpu_s'] / fl['cpu_s']:.3f}), RSS after load "
              f"{i8['rss_load_mib'] - fl['rss_load_mib']:+.1f} MiB")
    print(f"\nper-op profile (ORT profiler, {args.repeats} forwards of 1 x {args.seq}, "
          f"{args.threads} thread(s)): the LM head's nodes (after the final norm, before "
          f"the logits) against all node time")
    profiles = {}
    for label in ("w4a4-int", "w4a4-int head8 float", "w4a4-int head8 int8",
                  "w4a4-int head4 float", "w4a4-int head4 int8"):
        p = profiles[label] = measure(dirs[label], args, profile=True)
        print(f"  {label:<24} head {p['head_ms']:6.1f} ms / step of {p['nodes_ms']:6.1f} ms "
              f"({p['head_ms'] / p['nodes_ms']:.1%})")
    for hb in (8, 4):
        fl, i8 = profiles[f"w4a4-int head{hb} float"], profiles[f"w4a4-int head{hb} int8"]
        share = fl["head_ms"] / fl["nodes_ms"]
        print(f"  head{hb}: int8 head costs {i8['head_ms'] / fl['head_ms']:.2f}x the float "
              f"head; step time from the profile {i8['nodes_ms'] / fl['nodes_ms']:.3f}x "
              f"(head share {share:.1%} -> "
              f"{1 - share * (1 - i8['head_ms'] / fl['head_ms']):.3f}x expected)")
    ops = sorted(profiles["w4a4-int head8 int8"]["ops_ms"].items(), key=lambda kv: -kv[1])
    print("  w4a4-int head8 int8, ms / step by op type: "
          + ", ".join(f"{k} {v:.1f}" for k, v in ops[:10]))
    wo1, wo4 = results["weight-only L1"], results["weight-only L4"]
    print(f"weight-only: level 4 / level 1 step time {wo4['step_s'] / wo1['step_s']:.3f} "
          f"(CPU {wo4['cpu_s'] / wo1['cpu_s']:.3f}) at {args.seq} tokens")
    for seq in args.level_seqs:
        if seq == args.seq:
            continue
        r = measure_rounds({k: dirs[k] for k in ("weight-only L1", "weight-only L4")}, args,
                           seq)
        wo1, wo4 = r["weight-only L1"], r["weight-only L4"]
        print(f"weight-only: level 4 / level 1 step time {wo4['step_s'] / wo1['step_s']:.3f} "
              f"(CPU {wo4['cpu_s'] / wo1['cpu_s']:.3f}) at {seq} tokens "
              f"({wo1['step_s']:.4f} s vs {wo4['step_s']:.4f} s)")
    if args.experimental:
        ref_dir, ref = dirs["w4a4-int"], None
        from faircalib_runtime.onnx import OnnxBackend

        ids = np.random.default_rng(1).integers(0, vocab - 16, (2, 48))
        mask, pos = np.ones_like(ids), np.tile(np.arange(48), (2, 1))
        ref = OnnxBackend(ref_dir, threads=args.threads).forward(ids, mask, pos, "logits").logits
        for level in (1, 4):
            got = OnnxBackend(dirs[f"codes->nbits L{level}"], threads=args.threads).forward(
                ids, mask, pos, "logits").logits
            rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            print(f"codes->nbits L{level} vs w4a4-int logits: max abs diff "
                  f"{np.abs(got - ref).max():.3g}, rel {rel:.3g}")


# --- part 2 -------------------------------------------------------------------------------

def accuracy(args, work: Path) -> None:
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.export.onnx_export import ExportOptions, export_onnx
    from faircalib_export.fold.fold import fold_artifact
    from faircalib_export.opener import open_model
    from faircalib_export.tiny.evaluate import evaluate
    from faircalib_export.validate import compare_models, default_prompts

    print(f"\nint8 LM head accuracy (w4a4-int, RTN; int8-head export vs float-head export, "
          f"{args.prompts} prompts teacher-forced; task accuracy on {args.problems} held-out "
          f"problems)")
    for name in ("llada-chain", "dream-chain"):
        art = calibrate_checkpoint(name, work / f"{name}-cal", CalibConfig(method="rtn"))
        prompts = default_prompts(open_model(name), args.prompts)
        fp = evaluate(name, "chain", args.problems, console=False)["accuracy"]
        print(f"{name}: FP checkpoint accuracy {fp:.1%}")
        for hb in (8, 4):
            deploy = fold_artifact(art, work / f"{name}-deploy{hb}", head_bits=hb)
            out = {act: export_onnx(deploy, work / f"{name}-h{hb}-{act}",
                                    ExportOptions(variant="w4a4-int", head_activations=act))
                   for act in ("float", "int8")}
            m, _ = compare_models(open_model(out["float"]), open_model(out["int8"]), prompts)
            acc = {act: evaluate(d, "chain", args.problems, console=False)
                   for act, d in out.items()}
            gained = acc["int8"]["correct"] - acc["float"]["correct"]
            print(f"  head {hb}-bit: {m['masked_positions']} positions, top-1 agreement "
                  f"{m['top1_agreement']:.4f}, logits rel error {m['logits_rel_error']:.2e}, "
                  f"KL {m['kl_mean']:.2e}, identical decodes {m['decode_identical_rate']:.3f}; "
                  f"task accuracy float head {acc['float']['accuracy']:.1%} -> int8 head "
                  f"{acc['int8']['accuracy']:.1%} ({gained:+d} of {acc['int8']['n']})",
                  flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        run = child_profile if sys.argv[6:] == ["profile"] else child
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=4480,
                        help="vocabulary size (LM head about 8%% of the weights)")
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads (1: CPU time is then robust to other "
                             "work on a shared machine)")
    parser.add_argument("--level-seqs", type=lambda v: [int(x) for x in v.split(",")],
                        default=[32, 128], help="also time weight-only L1 vs L4 at these "
                                                "sequence lengths")
    parser.add_argument("--experimental", action="store_true",
                        help="also the exact 4-bit-resident graphs (codes -> MatMulNBits)")
    parser.add_argument("--accuracy", action="store_true",
                        help="also the int8 head's accuracy on llada-chain / dream-chain")
    parser.add_argument("--skip-costs", action="store_true", help="only the accuracy part")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--workdir", type=Path, help="keep the exports here (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_costs:
            costs(args, work / "costs")
        if args.accuracy:
            accuracy(args, work / "accuracy")


if __name__ == "__main__":
    main()
