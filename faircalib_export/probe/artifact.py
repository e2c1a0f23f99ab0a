"""The prior directory `probe` writes (atomically, with a manifest).

    PRIOR_DIR/
      prior.json              w̄: K weights (max 1), floor, settings (read by Stage II)
      prior_frontier.json     frontier-hit component alone (ablation), when λ0 is on
      prior_reliability.json  reliability component alone (ablation), when λ1 > 0
      per_sample.npz          per-sample curves (normalized and raw), means, stds, λ0(t)
      prior.png               mean curve, across-sample band, components dashed
      manifest.json           kind "prior": config, model, data source, input hashes
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import checks, distributed
from ..artifacts import atomic_dir, check_output, write_manifest
from .config import ProbeConfig
from .stage1 import PER_SAMPLE_FILE, ProbeResult

KIND = "prior"
PLOT_FILE = "prior.png"


def run_probe(model: str | Path, data: str | None, out: str | Path, *,
              samples: int | None = None, steps: int | None = None, window: int | None = None,
              device: str = "cpu", progress: Callable[[int, int], None] | None = None,
              overwrite: bool = False, **settings) -> ProbeResult:
    """Probe `model` on `data` and write PRIOR_DIR; `settings` are `ProbeConfig` fields.

    Unset samples / steps / window take `probe_shape`'s defaults for the model; unset
    data takes a shipped tiny model's own task.
    """
    from ..errors import ConfigError
    from ..models.builtin import default_task, resolve_model
    from ..opener import open_model
    from .prompts import load_prompts
    from .stage1 import probe, probe_shape

    for name, value in (("samples", samples), ("steps", steps), ("window", window)):
        checks.count(name, value)
    checks.device(device)
    path = resolve_model(model)
    distributed.on_main(lambda: check_output(out, KIND, (path,), overwrite))  # before rolling out
    opened = open_model(path, device, kinds=("checkpoint",))  # Stage I runs the FP teacher
    source = data or default_task(path)
    if source is None:
        raise ConfigError(f"{path} has no default probing data: pass --data")
    n_default, k_default, t_default = probe_shape(opened.cfg, opened.generation_config)
    config = ProbeConfig(steps=steps or t_default, window=window or k_default, **settings)
    if config.window >= opened.cfg.max_position_embeddings:
        raise ConfigError(f"a probing window of {config.window} tokens leaves no room for a "
                          f"prompt: the model takes at most {opened.cfg.max_position_embeddings}")
    n = samples or n_default  # validated above: None is the only falsy value left
    max_tokens = max(1, opened.cfg.max_position_embeddings - config.window)
    prompts = load_prompts(source, path, n, seed=config.seed, max_tokens=max_tokens,
                           tokenizer=opened.tokenizer)
    result = probe(opened.model, prompts, config, progress, device=device)
    result.info.update(data=source, model=str(path))
    for prior in (result.prior, result.frontier, result.reliability):
        if prior is not None:
            prior.settings.update(data=source, model=str(path))
    # rank 0 writes; every rank holds the same gathered result
    distributed.on_main(lambda: write_prior_dir(result, out, path, source, overwrite=overwrite))
    return result


def write_prior_dir(result: ProbeResult, out: str | Path, model_path: Path | None = None,
                    source: str | None = None, overwrite: bool = False) -> Path:
    from .plots import plot_prior
    from .prompts import source_file

    inputs = {}
    if model_path is not None:
        inputs["model_config"] = Path(model_path) / "config.json"
    data_file = source_file(source) if source else None
    if data_file is not None:
        inputs["data"] = data_file
    inputs_dirs = (model_path,) if model_path is not None else ()
    with atomic_dir(out, KIND, inputs=inputs_dirs, overwrite=overwrite) as tmp:
        result.save(tmp)
        title = f"Stage I prior ({result.info['n_samples']} samples, T={result.config.steps}, " \
                f"K={result.config.window}, {result.config.schedule.value}, " \
                f"{result.config.score.value})"
        plot_prior(result.curves, tmp / PLOT_FILE, title)
        config = {**result.config.to_dict(),
                  "floor_used": result.prior.floor,
                  "model": str(model_path) if model_path else None, "data": source,
                  "n_samples": result.info["n_samples"]}
        write_manifest(tmp, KIND, config, inputs=inputs)
    return Path(out)


def load_band(prior_dir: str | Path) -> np.ndarray | None:
    """The combined curve's across-sample std on the prior's scale, if saved beside it."""
    file = Path(prior_dir) / PER_SAMPLE_FILE
    if not file.is_file():
        return None
    with np.load(file) as data:
        mean, std = data["combined_mean"], data["combined_std"]
    return std / mean.max() if mean.max() > 0 else None
