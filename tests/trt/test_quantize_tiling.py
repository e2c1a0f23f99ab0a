"""The quantize kernel's in-place, chunked Kronecker transform, replayed in numpy.

`quantize.cu` transforms each row in shared memory without a second row buffer: T = P1 X
through a scratch tile of 32 columns at a time (with a column tail), then T P2^T through a
scratch of a few rows at a time. The loops below mirror the kernel's (keep in sync); every
output is the same FMA chain as `reference.kron_transform`, so the results must be equal
bit for bit, whatever the chunking.
"""

from __future__ import annotations

import numpy as np
import pytest

from faircalib_export.trt import reference

COL_CHUNK, SCRATCH_TARGET = 32, 4096  # quantize.cu: kColChunk, kScratchTarget


def scratch_floats(n1: int, n2: int, target: int = SCRATCH_TARGET) -> int:
    rows_per_chunk = 1 if n2 >= target else target // n2
    return max(COL_CHUNK * n1, rows_per_chunk * n2)


def kernel_transform(x: np.ndarray, p1: np.ndarray, p2t: np.ndarray,
                     target: int = SCRATCH_TARGET) -> np.ndarray:
    n1, n2 = p1.shape[0], p2t.shape[0]
    row = x.astype(np.float32).copy()  # the shared-memory row, (n1, n2) row-major
    scratch = scratch_floats(n1, n2, target)
    for j0 in range(0, n2, COL_CHUNK):  # step 1
        cols = min(COL_CHUNK, n2 - j0)
        tmp = np.zeros(n1 * COL_CHUNK, np.float32)
        for idx in range(n1 * COL_CHUNK):
            i, jj = divmod(idx, COL_CHUNK)
            if jj < cols:
                acc = np.float32(0)
                for k in range(n1):
                    acc = reference.fma32(p1[i, k], row[k * n2 + j0 + jj], acc)
                tmp[idx] = acc
        for idx in range(n1 * COL_CHUNK):
            i, jj = divmod(idx, COL_CHUNK)
            if jj < cols:
                row[i * n2 + j0 + jj] = tmp[idx]
    rows_per_chunk = scratch // n2
    for i0 in range(0, n1, rows_per_chunk):  # step 2
        rows_here = min(rows_per_chunk, n1 - i0)
        tmp = np.zeros(rows_here * n2, np.float32)
        for idx in range(rows_here * n2):
            ii, j = divmod(idx, n2)
            acc = np.float32(0)
            for k in range(n2):
                acc = reference.fma32(row[(i0 + ii) * n2 + k], p2t[k, j], acc)
            tmp[idx] = acc
        row[i0 * n2:i0 * n2 + rows_here * n2] = tmp
    return row


@pytest.mark.parametrize(("n1", "n2", "target"), [
    (1, 13, SCRATCH_TARGET), (5, 8, SCRATCH_TARGET), (8, 17, SCRATCH_TARGET),
    (3, 40, SCRATCH_TARGET),
    (3, 40, 64),  # a small scratch: step 1 column tail (32 + 8), step 2 in 2 + 1 rows
    (7, 9, 8),  # step 2 one row at a time
])
def test_chunked_in_place_transform_is_exact(n1, n2, target):
    rng = np.random.default_rng(n1 * 100 + n2)
    x = rng.standard_normal(n1 * n2).astype(np.float32)
    p1 = rng.standard_normal((n1, n1)).astype(np.float32)
    p2 = rng.standard_normal((n2, n2)).astype(np.float32)
    got = kernel_transform(x, p1, np.ascontiguousarray(p2.T), target)
    np.testing.assert_array_equal(got, reference.kron_transform(x[None], p1, p2)[0])


def test_shared_memory_fits_the_real_sites():
    """Row + scratch within the 99 KB opt-in limit of sm_86 / sm_89 for LLaDA-8B / Dream-7B."""
    for n1, n2 in [(64, 64), (96, 128), (56, 64), (128, 148)]:
        assert (n1 * n2 + scratch_floats(n1, n2)) * 4 + 32 * 4 <= 101376
