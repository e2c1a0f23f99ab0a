"""GPTQ weight quantization (used by the QuaRot baseline).

Columns are quantized one at a time (per-output-channel scales fixed from the whole
row beforehand) and each column's rounding error is pushed onto the columns not yet
quantized, weighted by the inverse Hessian H = 2 X^T X / n of the layer's inputs. Works
on blocks of columns for speed. No activation reordering.
"""

from __future__ import annotations

import torch

from .quantizer import fake_quant, row_scale


def input_hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs x (..., in_features), float64."""
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * x.T @ x / x.shape[0]


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, block: int = 128,
                  damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ integer codes (out, in) int8 and per-row scales (out, 1), float64.

    The grid is RTN's with clip 1 (scale = max|row| / qmax), so codes * scale are the
    dequantized weights."""
    w = w.detach().double().clone()
    h = h.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    # Upper Cholesky factor of H^-1: its rows give the error-propagation coefficients.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale = row_scale(w, bits)  # (out, 1)
    q = torch.zeros_like(w)
    n = w.shape[1]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i:i + 1]
            qcol = fake_quant(col, scale, bits)
            q[:, i1 + i] = qcol[:, 0]
            err = (col - qcol) / hinv1[i, i]
            w1[:, i:] -= err @ hinv1[i:i + 1, i:]
            err1[:, i:i + 1] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return torch.round(q / scale).to(torch.int8), scale
