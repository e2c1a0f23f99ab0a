"""The runtime decodes without importing torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_runtime_never_imports_torch():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import faircalib_runtime as fr

        def fn(ids, mask, pos):
            rng = np.random.default_rng(int(ids.sum()))
            return rng.standard_normal(ids.shape + (16,)).astype(np.float32)

        backend = fr.RawLogitsBackend(fn, shift=True)
        for cfg in (
            fr.LLaDAConfig(gen_length=4, block_length=2, steps=2, temperature=1.0,
                           mask_id=15, eos_ids=[0]),
            fr.DreamConfig(max_new_tokens=4, steps=2, mask_id=15, eos_ids=[0]),
            fr.RandomCommitConfig(window_length=4, steps=2, mask_id=15, eos_ids=[0]),
            fr.LLaDAConfig(gen_length=4, block_length=2, steps=2, mask_id=15, eos_ids=[0],
                           decode="parallel"),  # the fast loop (fast.py)
            fr.DreamConfig(max_new_tokens=4, steps=2, mask_id=15, eos_ids=[0],
                           decode="parallel", threshold=0.5),
        ):
            rec = fr.TrajectoryRecorder()
            res = fr.generate(backend, [[1, 2, 3], [4]], cfg, recorder=rec)
            assert res.tokens.shape == (2, 7), res.tokens.shape
            rec.result()
        assert "torch" not in sys.modules, "faircalib_runtime imported torch"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
