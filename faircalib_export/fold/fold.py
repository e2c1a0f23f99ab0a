"""Fold a calibrated artifact into the deployment format of `deployed.py`.

Each block's folded form comes from `QuantBlock.folded()` (float64 math, see
quant/folded.py): site scales in the RMSNorm weights and in the rows of v_proj / up_proj,
W' = W diag(c) P^-1 with the learned clips as int codes + per-row scales (GPTQ codes as
they are), online Kronecker factors and activation clip ratios. This module packs it.
Embeddings and LM head stay fp16 unless `embed_bits=8` (per-row int8 gather table) or
`head_bits` in (4, 8) (weight-only per-row quantization) is asked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..artifacts import atomic_dir, check_output, file_sha256, write_manifest
from ..calibrate.artifact import load_quantized, read_calib_config, read_manifest
from ..errors import ConfigError
from ..models.families import LINEAR_SITE, get_family
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


def fold_artifact(artifact: str | Path, out: str | Path, *, embed_bits: int = 16,
                  head_bits: int = 16, base_model: str | Path | None = None,
                  overwrite: bool = False) -> Path:
    """Write the deployable model for a calibrated artifact; returns its directory."""
    if embed_bits not in (8, 16):
        raise ConfigError(f"embedding bits must be 8 or 16, got {embed_bits}")
    if head_bits not in (4, 8, 16):
        raise ConfigError(f"LM head bits must be 4, 8 or 16, got {head_bits}")
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    check_output(out, "folded", (artifact,), overwrite)
    calib = read_calib_config(manifest)
    base = Path(base_model or manifest["config"]["base_model"])
    model = load_quantized(artifact, base)
    cfg = model.cfg
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, qb in enumerate(model.blocks):
            block = qb.folded()
            for lin in LINEAR_SITE:
                _store_codes(tensors, f"blocks.{i}.{lin}", block.pop(f"{lin}.codes"),
                             block.pop(f"{lin}.scale"), calib.w_bits)
            tensors.update({f"blocks.{i}.{name}": value for name, value in block.items()})
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
        "w_bits": calib.w_bits, "a_bits": calib.a_bits,
        "embed_bits": embed_bits, "head_bits": head_bits,
        "method": calib.method,
        "source_artifact_sha256": file_sha256(artifact / "manifest.json"),
        "nibble_order": "element 2j in bits 0-3, element 2j+1 in bits 4-7 (two's complement)",
        "default_policy": family.default_policy,
        "activation_quantization": "per token, symmetric, scale = act_clip * max|x| / qmax"
                                   if calib.a_bits != NO_QUANT_BITS else "none",
    }
    with atomic_dir(out, "folded", inputs=(artifact,), overwrite=overwrite) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        (tmp / DEPLOY_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy(base / name, tmp / name)
        write_manifest(tmp, "folded", meta,
                       inputs={"artifact_manifest": artifact / "manifest.json"})
    return Path(out)
