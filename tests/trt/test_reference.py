"""The numpy statement of the TensorRT kernels against the PyTorch folded-block numerics.

`reference.py` is what the CUDA kernels must compute (the CUDA harness checks them against a
C++ transcription of the same steps); these tests pin it to `quant.folded` /
`quant.quantizer`, the arithmetic every PyTorch evaluation path and the ONNX export share.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faircalib_export.fold.pack import pack_int4
from faircalib_export.quant.folded import _site, dequantized
from faircalib_export.quant.layout import kron_factors
from faircalib_export.quant.quantizer import quantize_rows as torch_quantize_rows
from faircalib_export.trt import reference as R


@pytest.mark.parametrize("k", [1, 7, 40, 128, 136, 3584])
def test_packed_words_layout(k):
    rng = np.random.default_rng(k)
    codes = rng.integers(-8, 8, size=(5, k)).astype(np.int8)
    words = R.pack_words(codes)
    assert words.dtype == np.dtype("<i4") and words.shape == (5, R.packed_words(k))
    assert R.packed_words(k) * 8 % R.K_ALIGN == 0 and R.packed_words(k) * 8 >= k
    # the bytes of the words are fold.pack's nibble order, then zero padding
    as_bytes = words.view(np.uint8).reshape(5, -1)
    np.testing.assert_array_equal(as_bytes[:, :(k + 1) // 2], pack_int4(codes))
    assert not as_bytes[:, (k + 1) // 2:].any()
    np.testing.assert_array_equal(R.unpack_words(words, k), codes)
    # code j of a row sits at bits 4 (j % 8) of word j // 8
    j = k - 1
    nibble = (int(words[2, j // 8]) >> (4 * (j % 8))) & 0xF
    assert (nibble - 16 if nibble > 7 else nibble) == codes[2, j]


def _activations(rows: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x[:, rng.integers(0, n, 3)] *= 30  # outlier channels
    x[0] = 0  # an all-zero row
    x[1, :10] = [7, 3.5, -3.5, 0.5, -0.5, 2.5, -2.5, 1.5, 6.5, -6.5]  # exact halves
    x[1, 10:] = np.clip(x[1, 10:], -7, 7)
    return x


@pytest.mark.parametrize("clip", [1.0, 0.9, 0.5, 0.123])
def test_quantize_matches_torch_bit_exactly(clip):
    x = _activations(33, 136, seed=int(clip * 1000))
    codes, scales = R.quantize_rows(x, clip)
    t_codes, t_scales = torch_quantize_rows(torch.from_numpy(x), 4, torch.tensor(clip))
    np.testing.assert_array_equal(codes, t_codes.numpy())
    np.testing.assert_array_equal(scales.view(np.uint32), t_scales[:, 0].numpy().view(np.uint32))
    if clip == 1.0:  # scale 1 on row 1: halves go to the even neighbour
        np.testing.assert_array_equal(codes[1, :10], [7, 4, -4, 0, 0, 2, -2, 2, 6, -6])
    assert not codes[0].any() and scales[0] == np.float32(1e-8) / np.float32(7)
    assert codes.min() >= -8 and codes.max() <= 7


@pytest.mark.parametrize("n", [40, 136, 4096])
def test_kron_transform_is_p1_x_p2t(n):
    n1, n2 = kron_factors(n)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((6, n)).astype(np.float32)
    p1 = rng.standard_normal((n1, n1)).astype(np.float32)
    p2 = rng.standard_normal((n2, n2)).astype(np.float32)
    got = R.kron_transform(x, p1, p2)
    ref = (torch.from_numpy(p1).double() @ torch.from_numpy(x).double().view(6, n1, n2)
           @ torch.from_numpy(p2).double().T).reshape(6, n).numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    # small integers: every partial sum is exact, so any summation order agrees bit for bit
    xi = rng.integers(-4, 5, (6, n)).astype(np.float32)
    p1i = rng.integers(-3, 4, (n1, n1)).astype(np.float32)
    p2i = rng.integers(-3, 4, (n2, n2)).astype(np.float32)
    exact = (torch.from_numpy(p1i) @ torch.from_numpy(xi).view(6, n1, n2)
             @ torch.from_numpy(p2i).T).reshape(6, n).numpy()
    np.testing.assert_array_equal(R.kron_transform(xi, p1i, p2i), exact)


def test_fma32_rounds_once():
    a = np.float32(1 + 2**-12)
    c = np.float32(-1 - 2**-11)
    # a * a = 1 + 2^-11 + 2^-24; a separately rounded product loses the 2^-24 term
    assert R.fma32(a, a, c) == np.float32(2**-24)
    assert np.float32(a * a) + c == 0


@pytest.mark.parametrize("out_dtype", R.OUT_DTYPES)
def test_gemm_epilogue(out_dtype):
    rng = np.random.default_rng(7)
    m, n, k = 9, 13, 136
    a = rng.integers(-8, 8, (m, k)).astype(np.int8)
    b = rng.integers(-8, 8, (n, k)).astype(np.int8)
    a[0] = b[0] = -8  # largest accumulator
    sa = rng.uniform(1e-3, 2e-2, m).astype(np.float32)
    sb = rng.uniform(1e-3, 2e-2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = R.gemm(R.pack_words(a), sa, R.pack_words(b), sb, k, bias, out_dtype)
    acc = a.astype(np.int64) @ b.T.astype(np.int64)
    assert acc[0, 0] == 64 * k
    y32 = (acc.astype(np.float32) * sa[:, None]) * sb[None, :] + bias[None, :]
    if out_dtype == "float16":
        np.testing.assert_array_equal(y, y32.astype(np.float16))
    elif out_dtype == "bfloat16":
        bf = torch.from_numpy(y32).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(y.view(np.uint32), bf.view(np.uint32))
    else:
        np.testing.assert_array_equal(y, y32)
    # and it is the dequantized float product up to float32 rounding
    deq = F.linear(torch.from_numpy(a.astype(np.float32) * sa[:, None]),
                   torch.from_numpy(b.astype(np.float32) * sb[:, None]),
                   torch.from_numpy(bias)).numpy()
    tol = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}[out_dtype]
    assert np.abs(y.astype(np.float32) - deq).max() <= tol * np.abs(deq).max()


def _folded_site(n: int, out: int, seed: int, bias: bool) -> dict[str, torch.Tensor]:
    """A folded block dict holding one site ("down") and one linear ("mlp.down_proj")."""
    n1, n2 = kron_factors(n)
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(n1, n1, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n2, n2, generator=g, dtype=torch.float64))
    block = {
        "down.p1": (q1 * (1 + 0.1 * torch.rand(n1, 1, generator=g, dtype=torch.float64))).float(),
        "down.p2": q2.float(),
        "down.act_clip": torch.tensor(0.93),
    }
    for lin in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj"):
        block[f"{lin}.codes"] = torch.randint(-8, 8, (out, n), generator=g, dtype=torch.int8)
        block[f"{lin}.scale"] = torch.rand(out, generator=g) * 0.02 + 1e-3
    if bias:
        block["mlp.down_proj.bias"] = torch.randn(out, generator=g)
    return block


@pytest.mark.parametrize(("n", "out", "bias"), [(136, 48, True), (1024, 96, False)])
def test_site_and_linear_match_the_folded_block(n, out, bias):
    block = _folded_site(n, out, seed=n, bias=bias)
    w = dequantized(block)
    x = torch.randn(2, 5, n, generator=torch.Generator().manual_seed(1)) * 2
    x[..., 3] *= 25
    ref_xq = _site(w, "down", x, 4)  # transformed and fake-quantized, float32
    ref_y = F.linear(ref_xq, w["mlp.down_proj.weight"], w.get("mlp.down_proj.bias"))

    rows = x.reshape(-1, n).numpy()
    words, scales = R.quantize(rows, float(block["down.act_clip"]), block["down.p1"].numpy(),
                               block["down.p2"].numpy())
    codes = R.unpack_words(words, n)
    ref_codes = torch.round(ref_xq.reshape(-1, n) / torch.from_numpy(scales)[:, None]).numpy()
    # the transform's summation order differs from torch's matmul: codes may move by one at a
    # rounding boundary, rarely
    assert np.abs(codes - ref_codes).max() <= 1
    assert (codes != ref_codes).mean() < 1e-3
    y = R.gemm(words, scales, R.pack_words(block["mlp.down_proj.codes"].numpy()),
               block["mlp.down_proj.scale"].numpy(), n,
               block["mlp.down_proj.bias"].numpy() if bias else None)
    ref = ref_y.reshape(-1, out).numpy()
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-5
