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

from ..artifacts import atomic_dir, check_output, file_sha256, write_manifest
from ..calibrate.artifact import load_quant_block, open_base, read_calib_config, read_manifest
from ..errors import ConfigError
from ..models.families import LINEAR_SITE, get_family
from ..models.loading import TensorFileWriter, load_tensors
from ..quant.formats import QuantFormat, encode_block_scales
from ..quant.quantizer import NO_QUANT_BITS, quantize_rows
from .deployed import DEPLOY_JSON, FORMAT, WEIGHTS, fp4_meta
from .pack import pack_fp4, pack_int4

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")


def _store_codes(out: dict, prefix: str, codes: torch.Tensor, scale: torch.Tensor,
                 bits: int, block_scale: torch.Tensor | None = None,
                 fmt: QuantFormat = QuantFormat.INT) -> None:
    if fmt.is_fp4:
        _store_fp4(out, prefix, codes, scale, block_scale, fmt)
        return
    codes = codes.to(torch.int8).cpu()
    out[f"{prefix}.qweight"] = (torch.from_numpy(pack_int4(codes.numpy())) if bits <= 4
                                else codes)
    out[f"{prefix}.scale"] = scale.reshape(-1).float().cpu()


def _store_fp4(out: dict, prefix: str, values: torch.Tensor, scale: torch.Tensor,
               block_scale: torch.Tensor, fmt: QuantFormat) -> None:
    """E2M1 values packed two per byte, block scales as their E4M3 / E8M0 bytes, the
    second-level (per row) scale as fp32."""
    out[f"{prefix}.qweight"] = torch.from_numpy(pack_fp4(values.float().cpu().numpy()))
    out[f"{prefix}.block_scale"] = torch.from_numpy(
        encode_block_scales(fmt, block_scale.float().cpu().numpy()))
    out[f"{prefix}.scale"] = scale.reshape(-1).float().cpu()


TABLE_CHUNK_ROWS = 4096  # rows of an embedding / head table quantized at a time


def _quantize_table(name: str, weight: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """`name`'s stored codes (int4 packed or int8) and per-row scales of a (rows, hidden)
    table, quantized in float64 and packed a chunk of rows at a time: the numbers of one
    call, without whole-table temporaries (float64 copies of a 126k x 4096 head are over
    12 GiB; its unpacked codes 0.5 GiB more)."""
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, weight.shape[0], TABLE_CHUNK_ROWS):
        part: dict[str, torch.Tensor] = {}
        _store_codes(part, name, *quantize_rows(weight[i:i + TABLE_CHUNK_ROWS].double(), bits),
                     bits)
        parts.append(part)
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def fold_artifact(artifact: str | Path, out: str | Path, *, embed_bits: int = 16,
                  head_bits: int = 16, base_model: str | Path | None = None,
                  overwrite: bool = False) -> Path:
    """Write the deployable model for a calibrated artifact; returns its directory."""
    if embed_bits not in (8, 16):
        raise ConfigError(f"embedding bits must be 8 or 16, got {embed_bits}")
    if head_bits not in (4, 8, 16):
        raise ConfigError(f"LM head bits must be 4, 8 or 16, got {head_bits}")
    artifact = Path(artifact)
    read_manifest(artifact)  # a clear error for a non-artifact before the output check
    check_output(out, "folded", (artifact,), overwrite)
    manifest, plan = open_base(artifact, base_model)
    calib = read_calib_config(manifest)
    base, cfg = plan.path, plan.cfg
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
        **fp4_meta(calib.format, calib.a_bits != NO_QUANT_BITS),
    }
    with atomic_dir(out, "folded", inputs=(artifact,), overwrite=overwrite) as tmp, \
            TensorFileWriter(tmp / WEIGHTS) as weights, torch.no_grad():
        # One block at a time: read its base weights, fold, write the packed result, so
        # peak memory is one block's fold (or one table), whatever the depth.
        for i in range(cfg.num_layers):
            block = load_quant_block(artifact, manifest, plan, i).folded()
            tensors: dict[str, torch.Tensor] = {}
            for lin in LINEAR_SITE:
                _store_codes(tensors, f"blocks.{i}.{lin}", block.pop(f"{lin}.codes"),
                             block.pop(f"{lin}.scale"), calib.w_bits,
                             block.pop(f"{lin}.block_scale", None), calib.format)
            tensors.update({f"blocks.{i}.{name}": value for name, value in block.items()})
            for name, value in tensors.items():
                weights.add(name, value)
            del block, tensors
        weights.add("norm.weight", load_tensors(plan, ["norm.weight"], "fp32")["norm.weight"])
        # The tables are read as fp16 (they stay 16-bit in deployment), then quantized from
        # that when asked, as the calibrated model sees them (`load_quantized`).
        for name, bits in (("embed", embed_bits), ("lm_head", head_bits)):
            weight = load_tensors(plan, [f"{name}.weight"], "fp16")[f"{name}.weight"]
            if bits == 16:
                weights.add(f"{name}.weight", weight)
            else:
                for key, value in _quantize_table(name, weight, bits).items():
                    weights.add(key, value)
            del weight
        weights.close()
        (tmp / DEPLOY_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy(base / name, tmp / name)
        write_manifest(tmp, "folded", meta,
                       inputs={"artifact_manifest": artifact / "manifest.json"})
    return Path(out)
