"""`faircalib-export serve` under load: batched (--max-batch 16) vs sequential (--max-batch 1).

The shipped llada-chain is rtn-calibrated, folded and exported (w4a4-int ONNX) once (or
--model names an export), then two servers (`faircalib-export serve`, each in its own
process) run over it on 127.0.0.1, one after the other. For each number of concurrent
clients (--clients, default 1 4 16) the clients send --requests completions in total
(greedy, max_tokens --max-tokens, prompts of different lengths) through loopback HTTP;
throughput is requests per second over the wall time of that phase, latency is per
request (send to full response). Ratios are batched / sequential from this one run.
Failed requests (non-200) are counted and should be 0. Last, the backend's own batching
gain is measured without a server: forwards of the largest client count's prompts in one
call vs one per call, in this process: what batching saves in compute. (The servers'
ratio also holds their own overheads: the sequential server slows down under many
connections, so it can come out above the backend's.)

    python benchmarks/bench_serve.py [--requests 48] [--clients 1 4 16] [--max-tokens 32]
                                     [--device cpu|cuda] [--variant w4a4-int|w4a4]
                                     [--model ONNX_DIR]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a b c", "hello there how are you today", "x", "1 2 3 4 5 6 7 8", "the chain"]


def export_chain(root: Path, variant: str = "w4a4-int") -> Path:
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.export.onnx_export import ExportOptions, export_onnx
    from faircalib_export.fold.fold import fold_artifact

    cal = calibrate_checkpoint("llada-chain", root / "cal", CalibConfig("rtn"), samples=4,
                               seq_len=32)
    return export_onnx(fold_artifact(cal, root / "deploy"), root / "onnx",
                       ExportOptions(variant=variant))


class Running:
    """`faircalib-export serve MODEL` in its own process (as a user runs it), so the load
    clients here never compete with the server for one interpreter."""

    def __init__(self, model: Path, max_batch: int, device: str = "cpu"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "faircalib_export", "serve", str(model), "--port",
                     str(self.port), "--max-batch", str(max_batch), "--name", "chain",
                     "--device", device]

    def __enter__(self):
        import httpx

        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"the server did not come up: {' '.join(self.argv)}")

    def __exit__(self, *exc):
        self.process.terminate()  # SIGTERM: the server finishes in-flight work and exits
        self.process.wait(30)


def load(url: str, clients: int, requests: int, max_tokens: int,
         decode: str | None = None) -> dict:
    import httpx

    latencies: list[float] = []
    failed = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        nonlocal failed
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens}
                if decode is not None:
                    body["dllm"] = {"decode": decode}
                t0 = time.perf_counter()
                r = http.post(url + "/v1/completions", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    failed += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"rps": requests / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "failed": failed}


def backend_ceiling(model: Path, rows: int, max_tokens: int, device: str = "cpu",
                    seconds: float = 3.0) -> dict:
    """What batching can gain on this machine at all: forwards per second of the model's
    backend for `rows` prompts in one call vs one prompt per call, in this process, for
    the layout the server decodes (PROMPTS, left-padded, a max_tokens window)."""
    from faircalib_export.opener import open_model
    from faircalib_runtime.batch import left_pad

    opened = open_model(model, device)
    backend, config = opened.backend(), opened.policy(gen_length=max_tokens)
    encode = opened.text_decoder(False).encode
    prompts = [encode(PROMPTS[i % len(PROMPTS)]) for i in range(rows)]

    def layout(group):
        b = left_pad(group, config.window, pad_id=config.pad_token, mask_id=config.mask_id,
                     padding=config.padding)
        return b.input_ids, b.attention_mask, b.position_ids

    together, alone = layout(prompts), [layout([p]) for p in prompts]

    def rate(calls) -> float:  # rows per second
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for args in calls:
                n += len(args[0])
                backend.forward(*args, "summary")
        return n / (time.perf_counter() - t0)

    rate([together])  # warm-up
    return {"batched": rate([together]), "alone": rate(alone)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an exported ONNX directory (default: export the "
                                        "shipped llada-chain into a temporary directory)")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--decode", choices=["exact", "parallel", "cached", "fast"],
                        help="the requests' dllm.decode (default: the model's, exact; only "
                             "exact is batched continuously, the others a batch at a time)")
    parser.add_argument("--variant", default="w4a4-int",
                        help="ONNX variant of the shipped model's export (w4a4 for CUDA)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda: ONNX Runtime's CUDA provider (onnxruntime-gpu)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else export_chain(Path(tmp), args.variant)
        ceiling = backend_ceiling(model, max(args.clients), args.max_tokens, args.device)
        rows: dict[tuple[int, int], dict] = {}
        for max_batch in (16, 1):
            with Running(model, max_batch, args.device) as running:
                load(running.url, 1, 4, args.max_tokens, args.decode)  # warm-up
                for clients in args.clients:
                    rows[max_batch, clients] = load(running.url, clients, args.requests,
                                                    args.max_tokens, args.decode)
    print(f"serve load test: {args.requests} requests per row, max_tokens {args.max_tokens}, "
          f"greedy, decode {args.decode or 'exact'}, "
          f"{args.model or 'llada-chain ' + args.variant} ONNX on {args.device}, loopback HTTP")
    print(f"{'clients':>7} {'max-batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'failed':>6}")
    for clients in args.clients:
        for max_batch in (1, 16):
            r = rows[max_batch, clients]
            print(f"{clients:>7} {max_batch:>9} {r['rps']:>8.1f} {r['p50'] * 1e3:>8.1f} "
                  f"{r['p99'] * 1e3:>8.1f} {r['failed']:>6}")
    print("batched / sequential (this run):")
    for clients in args.clients:
        b, s = rows[16, clients], rows[1, clients]
        print(f"  {clients:>2} clients: throughput x{b['rps'] / s['rps']:.2f}, "
              f"p50 x{b['p50'] / s['p50']:.2f}, p99 x{b['p99'] / s['p99']:.2f}")
    top = max(args.clients)
    print(f"backend alone (no server, this process, full forwards): {top} prompts in one "
          f"forward run "
          f"{ceiling['batched']:.0f} rows/s, one prompt per forward {ceiling['alone']:.0f} "
          f"rows/s: x{ceiling['batched'] / ceiling['alone']:.2f}, batching's gain in "
          f"compute on this machine")
    failed = sum(r["failed"] for r in rows.values())
    print(f"failed requests: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
