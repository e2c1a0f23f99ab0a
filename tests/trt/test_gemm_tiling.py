"""The tensor-core GEMM's data movement, replayed in numpy for one thread block.

No GPU runs here, so this checks the part of `runtimes/tensorrt/kernels/gemm.cu` that is
easiest to get wrong by reasoning alone: the cp.async tile loads into XOR-swizzled shared
memory, the ldmatrix.x4 row addresses, and the register fragments they produce, fed to the
PTX-documented fragment layouts of mma.m16n8k64.s4 and (the Hopper path, after unpacking)
mma.m16n8k32.s8, and the accumulator -> (row, column) epilogue mapping. The index
expressions below mirror gemm.cu line for line (keep them in sync); the layouts of the MMA
operands are the PTX ISA's. The result must equal the plain integer product.
"""

from __future__ import annotations

import numpy as np
import pytest

from faircalib_export.trt.reference import pack_words, unpack_words

ROW_BYTES = 64  # one K step: 128 int4 codes per row


def swizzle(row: int, chunk: int) -> int:  # gemm.cu: swizzle()
    return row * ROW_BYTES + ((chunk ^ ((row >> 1) & 3)) << 4)


def load_stage(words: np.ndarray, row0: int, rows: int, k_step: int) -> np.ndarray:
    """cp.async of `rows` rows (zero-filled past the end) into a swizzled byte tile."""
    smem = np.zeros(rows * ROW_BYTES, np.uint8)
    raw = words.view(np.uint8).reshape(words.shape[0], -1)
    for c in range(rows * 4):
        r, chunk = c >> 2, c & 3
        if row0 + r < raw.shape[0]:
            src = raw[row0 + r, k_step * ROW_BYTES + chunk * 16:][:16]
            smem[swizzle(r, chunk):][:16] = src
    return smem


def ldmatrix_x4(smem: np.ndarray, addresses: list[int]) -> np.ndarray:
    """(32 lanes, 4 regs) uint32: matrix j's rows come from lanes 8j..8j+7; lane t gets
    the 32-bit word t % 4 of row t // 4 of each matrix."""
    out = np.zeros((32, 4), np.uint32)
    for j in range(4):
        for t in range(32):
            addr = addresses[8 * j + t // 4] + 4 * (t % 4)
            out[t, j] = smem[addr:addr + 4].view(np.uint32)[0]
    return out


def nibble(word: int, e: int) -> int:
    v = (int(word) >> (4 * e)) & 0xF
    return v - 16 if v > 7 else v


def byte(word: int, e: int) -> int:
    v = (int(word) >> (8 * e)) & 0xFF
    return v - 256 if v > 127 else v


def mma_s4(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mma.m16n8k64.row.col.s32.s4.s4 from per-lane fragments; returns (32, 4) accumulators."""
    A = np.zeros((16, 64), np.int64)
    B = np.zeros((64, 8), np.int64)
    for lane in range(32):
        g, tig = lane >> 2, lane & 3
        for i in range(4):
            for e in range(8):
                A[g + 8 * (i % 2), tig * 8 + e + 32 * (i // 2)] = nibble(a[lane, i], e)
        for i in range(2):
            for e in range(8):
                B[tig * 8 + e + 32 * i, g] = nibble(b[lane, i], e)
    return scatter_c(A @ B)


def mma_s8(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """mma.m16n8k32.row.col.s32.s8.s8 from per-lane int8x4 fragments."""
    A = np.zeros((16, 32), np.int64)
    B = np.zeros((32, 8), np.int64)
    for lane in range(32):
        g, tig = lane >> 2, lane & 3
        for i in range(4):
            for e in range(4):
                A[g + 8 * (i % 2), tig * 4 + e + 16 * (i // 2)] = byte(a[i][lane], e)
        for i in range(2):
            for e in range(4):
                B[tig * 4 + e + 16 * i, g] = byte(b[i][lane], e)
    return scatter_c(A @ B)


def scatter_c(c: np.ndarray) -> np.ndarray:
    out = np.zeros((32, 4), np.int64)
    for lane in range(32):
        g, tig = lane >> 2, lane & 3
        for i in range(4):
            out[lane, i] = c[g + 8 * (i // 2), tig * 2 + (i % 2)]
    return out


def unpack_lo(w: np.ndarray) -> np.ndarray:  # detail::unpackLo: codes 0-3 -> int8x4
    w = w.astype(np.int64)
    out = np.zeros_like(w)
    for e in range(4):
        v = (w >> (4 * e)) & 0xF
        out |= (np.where(v > 7, v - 16, v) & 0xFF) << (8 * e)
    return out.astype(np.uint32)


def unpack_hi(w: np.ndarray) -> np.ndarray:
    return unpack_lo(w.astype(np.uint32) >> 16)


def block_product(a_words, b_words, m0, n0, bm, bn, warps_m, warps_n, int8) -> np.ndarray:
    """One thread block of gemmMmaKernel: (bm, bn) int accumulators, rows past the ends 0."""
    wm, wn = bm // warps_m, bn // warps_n
    mt, nt = wm // 16, wn // 8
    acc = np.zeros((warps_m * warps_n, mt, nt, 32, 4), np.int64)
    for k_step in range(a_words.shape[1] // 16):
        s_a = load_stage(a_words, m0, bm, k_step)
        s_b = load_stage(b_words, n0, bn, k_step)
        for warp in range(warps_m * warps_n):
            warp_m, warp_n = warp // warps_n, warp % warps_n
            for kk in range(2):
                af = []
                for mi in range(mt):
                    addresses = [swizzle(warp_m * wm + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                         2 * kk + (lane >> 4)) for lane in range(32)]
                    af.append(ldmatrix_x4(s_a, addresses))
                bf = [None] * nt
                for nj in range(nt // 2):
                    addresses = [swizzle(warp_n * wn + nj * 16 + (lane & 7) + (lane >> 4) * 8,
                                         2 * kk + ((lane >> 3) & 1)) for lane in range(32)]
                    t = ldmatrix_x4(s_b, addresses)
                    bf[2 * nj], bf[2 * nj + 1] = t[:, 0:2], t[:, 2:4]
                for mi in range(mt):
                    for ni in range(nt):
                        a, b = af[mi], bf[ni]
                        if int8:
                            acc[warp, mi, ni] += mma_s8(
                                [unpack_lo(a[:, 0]), unpack_lo(a[:, 1]), unpack_hi(a[:, 0]),
                                 unpack_hi(a[:, 1])], [unpack_lo(b[:, 0]), unpack_hi(b[:, 0])])
                            acc[warp, mi, ni] += mma_s8(
                                [unpack_lo(a[:, 2]), unpack_lo(a[:, 3]), unpack_hi(a[:, 2]),
                                 unpack_hi(a[:, 3])], [unpack_lo(b[:, 1]), unpack_hi(b[:, 1])])
                        else:
                            acc[warp, mi, ni] += mma_s4(a, b)
    # epilogue: c0, c1 at (g, 2 tig + {0, 1}), c2, c3 at (g + 8, ...)
    out = np.zeros((bm, bn), np.int64)
    for warp in range(warps_m * warps_n):
        warp_m, warp_n = warp // warps_n, warp % warps_n
        for mi in range(mt):
            for ni in range(nt):
                for lane in range(32):
                    g, tig = lane >> 2, lane & 3
                    for half in range(2):
                        for e in range(2):
                            r = warp_m * wm + mi * 16 + g + 8 * half
                            c = warp_n * wn + ni * 8 + 2 * tig + e
                            out[r, c] = acc[warp, mi, ni, lane, 2 * half + e]
    return out


@pytest.mark.parametrize("int8", [False, True], ids=["int4-mma", "int8-mma"])
@pytest.mark.parametrize(("bm", "warps_m", "warps_n"), [(64, 1, 4), (128, 2, 4)])
def test_block_tile_equals_integer_product(int8, bm, warps_m, warps_n):
    rng = np.random.default_rng(bm + int8)
    m, n, k = bm - 5, 128 - 3, 136  # row tails in M and N, K padded to 256 codes
    a_codes = rng.integers(-8, 8, (m, k)).astype(np.int8)
    b_codes = rng.integers(-8, 8, (n, k)).astype(np.int8)
    a_words, b_words = pack_words(a_codes), pack_words(b_codes)
    assert a_words.shape[1] == 32  # two K steps of 16 words
    got = block_product(a_words, b_words, 0, 0, bm, 128, warps_m, warps_n, int8)
    expect = np.zeros((bm, 128), np.int64)
    expect[:m, :n] = a_codes.astype(np.int64) @ b_codes.T.astype(np.int64)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(unpack_words(a_words, k), a_codes)


def test_swizzle_spreads_ldmatrix_rows_over_bank_groups():
    """The eight rows of every ldmatrix phase land in eight distinct 16-byte bank groups."""
    for chunk in range(4):
        for row0 in range(0, 64, 8):
            groups = {(swizzle(row0 + r, chunk) // 16) % 8 for r in range(8)}
            assert len(groups) == 8
