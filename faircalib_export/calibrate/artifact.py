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
from contextlib import ExitStack
from pathlib import Path

import torch

from .. import distributed
from ..artifacts import (
    MANIFEST,
    OutputError,
    claim_output,
    file_sha256,
    read_json,
    write_manifest,
)
from ..errors import ConfigError
from ..models.loading import CheckpointPlan, inspect_checkpoint, load_block, load_module
from ..models.transformer import Block, DiffusionLM
from ..probe.prior import Prior
from ..quant.qblock import QuantBlock
from ..quant.spec import QuantSpec
from .config import CalibConfig
from .methods import get_method
from .stage2 import block_file, calibrate_blocks, load_block_state

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
    overwrite: bool = False,
) -> Path:
    """Calibrate into `out`, working in `out.partial` (resumed when its settings match).

    OUT is claimed first (`artifacts.claim_output`): a foreign directory, the input itself
    or a second concurrent run is refused before any work. Under torchrun rank 0 claims
    and writes; every rank calibrates its share of `tokens` (`stage2`).
    """
    plan = inspect_checkpoint(model_path)
    cfg = cfg.resolved(plan.cfg.hidden_size)
    method = get_method(cfg.method)
    if method.weighted and prior is None:
        raise ConfigError(f"method {cfg.method} needs a prior (--prior PRIOR_DIR from `probe`)")
    prior = prior if method.weighted else Prior.uniform()
    out = Path(out)
    partial = out.parent / f"{out.name}.partial"
    settings = {"calib": cfg.to_dict(), "spec": cfg.spec().to_dict(),
                "data": data_source, "n_samples": int(tokens.shape[0]),
                "seq_len": int(tokens.shape[1]),
                "tokens_sha256": _tensor_hash(tokens), "prior": prior.weights.tolist(),
                "prior_floor": prior.floor}
    claimed: list = []  # rank 0's claim on OUT, held (with its lock) for the whole run
    with ExitStack() as held:
        def claim_and_prepare() -> None:
            claimed.append(held.enter_context(claim_output(out, KIND, inputs=(model_path,),
                                                           overwrite=overwrite)))
            if partial.exists() and _partial_settings(partial) != settings:
                if not (partial / "settings.json").is_file():
                    raise OutputError(f"{partial} exists but is not an unfinished calibration "
                                      f"(no settings.json); move it away")
                shutil.rmtree(partial)  # another run's work: its blocks are not reusable
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")

        def finish(stats: list[dict], seconds: float) -> None:
            prior.save(partial)
            (partial / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
            write_manifest(partial, KIND, {**settings,
                                           "base_model": str(Path(model_path).resolve()),
                                           "family": plan.cfg.family},
                           inputs=_base_inputs(Path(model_path)), seconds=round(seconds, 2))
            (partial / "settings.json").unlink()
            claimed[0].commit(partial)

        distributed.on_main(claim_and_prepare)  # the other ranks wait for it, or its error
        start = time.time()
        stats = calibrate_blocks(plan, tokens, prior, cfg, partial / "blocks", progress)
        distributed.on_main(lambda: finish(stats, time.time() - start))
    return out


def _partial_settings(partial: Path) -> dict | None:
    """The settings an unfinished run recorded; None when missing or unreadable."""
    try:
        return read_json(partial / "settings.json")
    except ConfigError:
        return None


def _tensor_hash(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def read_manifest(artifact: Path) -> dict:
    file = Path(artifact) / MANIFEST
    if not file.is_file():
        raise ConfigError(f"{artifact} is not a calibrated artifact (no {MANIFEST}); "
                          f"an unfinished run lives in {artifact}.partial")
    manifest = read_json(file)
    if manifest.get("kind") != KIND:
        raise ConfigError(f"{artifact}: expected a calibrated artifact, found "
                          f"{manifest.get('kind')!r}")
    return manifest


def read_calib_config(manifest: dict) -> CalibConfig:
    """The calibration config an artifact was made with, typed."""
    return CalibConfig.from_dict(manifest["config"]["calib"])


def open_base(artifact: str | Path, base_model: str | Path | None = None
              ) -> tuple[dict, CheckpointPlan]:
    """A calibrated artifact's manifest and the plan of the base checkpoint it was
    calibrated on (`base_model` overrides the recorded path; its config must match)."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    base = Path(base_model or manifest["config"]["base_model"])
    cfg_hash = manifest["inputs"]["model_config"]["sha256"]
    if file_sha256(base / "config.json") != cfg_hash:
        raise ConfigError(f"{base}/config.json differs from the one {artifact} was calibrated on")
    return manifest, inspect_checkpoint(base)


def quant_block(artifact: Path, manifest: dict, block: Block, index: int) -> QuantBlock:
    """Block `index` of the base model wrapped with its calibration state (calibration
    form: `folded()` reads it directly, `convert()` makes it evaluate as deployed)."""
    calib = read_calib_config(manifest)
    spec = QuantSpec.from_dict(manifest["config"]["spec"])
    qb = QuantBlock(block, spec, seed=calib.seed + 1000 * index)
    device = next(block.parameters()).device
    qb.load_calib_state(load_block_state(block_file(Path(artifact) / "blocks", index), device))
    return qb


def load_quant_block(artifact: str | Path, manifest: dict, plan: CheckpointPlan, index: int,
                     device: str = "cpu") -> QuantBlock:
    """One calibrated block, read alone (layer-wise stages never hold the whole model)."""
    return quant_block(Path(artifact), manifest, load_block(plan, index, "fp32", device), index)


def load_quantized(artifact: str | Path, base_model: str | Path | None = None,
                   device: str = "cpu"):
    """The base model with every block replaced by its calibrated fake-quant block.

    Embedding and LM head are rounded to fp16, as the deployment keeps them (SPEC: they
    stay 16-bit), so this model computes what the folded model computes.
    """
    manifest, plan = open_base(artifact, base_model)
    model = load_module(plan, lambda: DiffusionLM(plan.cfg), "", "fp32", device).eval()
    for i, block in enumerate(model.blocks):
        model.blocks[i] = quant_block(Path(artifact), manifest, block, i).convert()
    with torch.no_grad():
        for table in {id(t): t for t in (model.embed.weight, model.lm_head.weight)}.values():
            table.copy_(table.half().float())
    return model.eval()
