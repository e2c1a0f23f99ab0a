"""The calibrated artifact: a directory `fold` and the evaluators consume.

    OUT/
      manifest.json     kind "calibrated": config, quant spec, base model, input hashes
      blocks/block_XXX.safetensors  per-block calibration state (transforms, scales, clips, GPTQ
                        weights); nothing of the pretrained weights
      prior.json        the prior used (uniform for unweighted methods)
      stats.json        per-block loss and relative error

The run works in `OUT.partial/`, which is renamed to OUT only when every block is
done; a rerun with the same settings resumes from the finished blocks there.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..artifacts import MANIFEST, file_sha256, write_manifest
from ..errors import ConfigError
from ..models.loading import inspect_checkpoint, load_model
from ..probe.prior import Prior
from ..quant.qblock import QuantBlock
from .methods import get_method
from .stage2 import CalibConfig, block_file, calibrate_blocks, load_block_state

KIND = "calibrated"


def _base_inputs(model_path: Path) -> dict[str, Path]:
    inputs = {"model_config": model_path / "config.json"}
    index = model_path / "model.safetensors.index.json"
    inputs["model_weights_index" if index.is_file() else "model_weights"] = (
        index if index.is_file() else model_path / "model.safetensors")
    return inputs


def run_calibration(
    model_path: Path,
    out: Path,
    cfg: CalibConfig,
    tokens: torch.Tensor,
    prior: Prior | None,
    data_source: str,
    progress: Callable[[int, str, float | None], None] = lambda *a: None,
) -> Path:
    method = get_method(cfg.method)
    if method.weighted and prior is None:
        raise ConfigError(f"method {cfg.method} needs a prior (--prior PRIOR_DIR from `probe`)")
    prior = prior if method.weighted else Prior.uniform()
    out = Path(out)
    partial = out.parent / f"{out.name}.partial"
    settings = {"calib": cfg.to_dict(), "spec": method.spec(cfg.w_bits, cfg.a_bits).to_dict(),
                "data": data_source, "n_samples": int(tokens.shape[0]),
                "seq_len": int(tokens.shape[1]),
                "tokens_sha256": _tensor_hash(tokens), "prior": prior.weights.tolist(),
                "prior_floor": prior.floor}
    if partial.exists():
        old = json.loads((partial / "settings.json").read_text()) \
            if (partial / "settings.json").is_file() else None
        if old != settings:
            shutil.rmtree(partial)  # different run: its blocks are not reusable
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")

    plan = inspect_checkpoint(model_path)
    start = time.time()
    stats = calibrate_blocks(plan, tokens, prior, cfg, partial / "blocks", progress)
    prior.save(partial)
    (partial / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    write_manifest(partial, KIND, {**settings, "base_model": str(Path(model_path).resolve()),
                                   "family": plan.cfg.family},
                   inputs=_base_inputs(Path(model_path)), seconds=round(time.time() - start, 2))
    (partial / "settings.json").unlink()
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def calib_shape(hidden_size: int) -> tuple[int, int]:
    """Default (samples, sequence length): the paper's 128 x 1024 for real models, scaled
    to 64 x 128 for the tiny models (their training sequences are under 100 tokens)."""
    return (128, 1024) if hidden_size >= 1024 else (64, 128)


def calibrate_checkpoint(
    model: str | Path,
    out: str | Path,
    cfg: CalibConfig,
    *,
    data: str | None = None,
    prior: Prior | str | Path | None = None,
    samples: int | None = None,
    seq_len: int | None = None,
    progress: Callable[[int, str, float | None], None] = lambda *a: None,
) -> Path:
    """Stage II on a checkpoint directory or built-in name, from user-level settings.

    `data` defaults to a tiny model's own task; `prior` (a Prior or a directory from
    `probe`) is required by the weighted methods.
    """
    from ..models.builtin import default_task, resolve_model
    from ..models.loading import load_tokenizer, read_config
    from .data import calibration_tokens

    path = resolve_model(model)
    _, mcfg = read_config(path)
    method = get_method(cfg.method)
    if method.weighted and prior is None:
        # No prior given: probe the FP teacher now (Stage I defaults) and keep the result
        # beside the artifact, so a rerun reuses it.
        from ..probe.artifact import run_probe

        prior = Path(f"{out}.prior")
        if not (prior / "prior.json").is_file():
            run_probe(path, data, prior, seed=cfg.seed, device=cfg.device)
    if isinstance(prior, (str, Path)):
        prior = Prior.load(prior)
    source = data or default_task(path)
    if source is None:
        raise ConfigError(f"{path} has no default calibration data: pass --data")
    n_default, len_default = calib_shape(mcfg.hidden_size)
    tokens = calibration_tokens(load_tokenizer(path), source, samples or n_default,
                                seq_len or len_default, seed=cfg.seed,
                                eos_id=mcfg.eos_token_id)
    return run_calibration(path, Path(out), cfg, tokens, prior if method.weighted else None,
                           source, progress)


def _tensor_hash(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def read_manifest(artifact: Path) -> dict:
    file = Path(artifact) / MANIFEST
    if not file.is_file():
        raise ConfigError(f"{artifact} is not a calibrated artifact (no {MANIFEST}); "
                          f"an unfinished run lives in {artifact}.partial")
    manifest = json.loads(file.read_text())
    if manifest.get("kind") != KIND:
        raise ConfigError(f"{artifact}: expected a calibrated artifact, found "
                          f"{manifest.get('kind')!r}")
    return manifest


def load_quantized(artifact: str | Path, base_model: str | Path | None = None,
                   device: str = "cpu"):
    """The base model with every block replaced by its calibrated fake-quant block.

    Embedding and LM head are rounded to fp16, as the deployment keeps them (SPEC: they
    stay 16-bit), so this model computes what the folded model computes.
    """
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    base = Path(base_model or manifest["config"]["base_model"])
    cfg_hash = manifest["inputs"]["model_config"]["sha256"]
    if file_sha256(base / "config.json") != cfg_hash:
        raise ConfigError(f"{base}/config.json differs from the one {artifact} was calibrated on")
    model = load_model(base, "fp32", device)
    spec = get_method(manifest["config"]["calib"]["method"]).spec(
        manifest["config"]["calib"]["w_bits"], manifest["config"]["calib"]["a_bits"])
    seed = manifest["config"]["calib"]["seed"]
    for i, block in enumerate(model.blocks):
        qb = QuantBlock(block, spec, seed=seed + 1000 * i)
        qb.load_calib_state(load_block_state(block_file(artifact / "blocks", i), device))
        model.blocks[i] = qb
    with torch.no_grad():
        for table in {id(t): t for t in (model.embed.weight, model.lm_head.weight)}.values():
            table.copy_(table.half().float())
    return model.eval()
