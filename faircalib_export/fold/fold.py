"""Fold a calibrated artifact into the deployment format of `deployed.py`.

Everything is computed in float64 before it is rounded or stored:
- the qkv / gate-up site scales c divide the preceding RMSNorm weights;
- the o / down site scales c divide the rows of v_proj / up_proj (and v's bias); per-row
  quantization is invariant to row scaling, so only the stored row scales change;
- W' = W diag(c) P^-1 with the learned per-row weight clip becomes int codes + scales
  (GPTQ codes are taken as they are);
- the Kronecker factors P1, P2 and the activation clip ratios stay online.
Embeddings and LM head stay fp16 unless `embed_bits=8` (per-row int8 gather table) or
`head_bits` in (4, 8) (weight-only per-row quantization) is asked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..artifacts import atomic_dir, write_manifest
from ..calibrate.artifact import load_quantized, read_manifest
from ..errors import ConfigError
from ..models.families import get_family
from ..quant.qblock import LINEAR_SITE, QuantBlock
from ..quant.quantizer import NO_QUANT_BITS, quantize_rows
from .deployed import DEPLOY_JSON, FORMAT, WEIGHTS
from .pack import pack_int4

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")


def _store_codes(out: dict, prefix: str, codes: torch.Tensor, scale: torch.Tensor,
                 bits: int) -> None:
    codes = codes.to(torch.int8).cpu()
    out[f"{prefix}.qweight"] = (torch.from_numpy(pack_int4(codes.numpy())) if bits <= 4
                                else codes)
    out[f"{prefix}.scale"] = scale.reshape(-1).float().cpu()


def _fold_block(qb: QuantBlock, i: int, out: dict, w_bits: int) -> None:
    f64 = torch.float64
    fp = qb.fp
    c = {name: site.scale(f64) for name, site in qb.sites.items()}
    norms = (("attn_norm", "qkv"), ("mlp_norm", "gate_up"))
    for norm, site in norms:
        w = getattr(fp, norm).weight.detach().double()
        out[f"blocks.{i}.{norm}.weight"] = (w if c[site] is None else w / c[site]).float()
    row_div = {"attn.v_proj": qb.sites["o"].log_c, "mlp.up_proj": c["down"]}
    for name in LINEAR_SITE:
        codes, scale = qb.weight_codes(name)
        scale = scale.double().reshape(-1)
        bias = qb.linear(name).bias
        bias = None if bias is None else bias.detach().double()
        div = row_div.get(name)
        if div is not None:
            div = div.detach().double().exp() if name == "attn.v_proj" else div
            scale = scale / div
            bias = None if bias is None else bias / div
        _store_codes(out, f"blocks.{i}.{name}", codes, scale, w_bits)
        if bias is not None:
            out[f"blocks.{i}.{name}.bias"] = bias.float()
    for name, site in qb.sites.items():
        factors = site.factors(f64)
        if factors is not None:
            out[f"blocks.{i}.{name}.p1"] = factors[0].float().contiguous()
            out[f"blocks.{i}.{name}.p2"] = factors[1].float().contiguous()
        out[f"blocks.{i}.{name}.act_clip"] = qb.act[name].clip().detach().float().reshape(())


def fold_artifact(artifact: str | Path, out: str | Path, *, embed_bits: int = 16,
                  head_bits: int = 16, base_model: str | Path | None = None) -> Path:
    """Write the deployable model for a calibrated artifact; returns its directory."""
    if embed_bits not in (8, 16):
        raise ConfigError(f"embedding bits must be 8 or 16, got {embed_bits}")
    if head_bits not in (4, 8, 16):
        raise ConfigError(f"LM head bits must be 4, 8 or 16, got {head_bits}")
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    calib = manifest["config"]["calib"]
    base = Path(base_model or manifest["config"]["base_model"])
    model = load_quantized(artifact, base)
    cfg = model.cfg
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, qb in enumerate(model.blocks):
            _fold_block(qb, i, tensors, calib["w_bits"])
        tensors["norm.weight"] = model.norm.weight.detach().float()
        for name, weight, bits in (("embed", model.embed.weight, embed_bits),
                                   ("lm_head", model.lm_head.weight, head_bits)):
            if bits == 16:
                tensors[f"{name}.weight"] = weight.detach().half()
            else:
                codes, scale = quantize_rows(weight.detach().double(), bits)
                _store_codes(tensors, name, codes, scale, bits)

    family = get_family(cfg.family)
    meta = {
        "format": FORMAT, "version": 1, "family": cfg.family,
        "model_config": cfg.to_dict(),
        "w_bits": calib["w_bits"], "a_bits": calib["a_bits"],
        "embed_bits": embed_bits, "head_bits": head_bits,
        "method": calib["method"],
        "nibble_order": "element 2j in bits 0-3, element 2j+1 in bits 4-7 (two's complement)",
        "default_policy": family.default_policy,
        "activation_quantization": "per token, symmetric, scale = act_clip * max|x| / qmax"
                                   if calib["a_bits"] != NO_QUANT_BITS else "none",
    }
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / DEPLOY_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy(base / name, tmp / name)
        write_manifest(tmp, "folded", meta,
                       inputs={"artifact_manifest": artifact / "manifest.json"})
    return Path(out)
