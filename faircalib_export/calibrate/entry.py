"""`calibrate_checkpoint`: Stage II on a checkpoint from user-level settings.

The library entry point that the CLI, `build` and `compare` share: it resolves the
model, the recipe (samples, tokens, epochs) and the calibration data, probes the FP
teacher first when a weighted method has no prior, and runs `artifact.run_calibration`.
It sits above both stages, so Stage II's artifact code never reaches up into Stage I.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import checks, distributed
from ..artifacts import check_output
from ..errors import ConfigError
from ..probe.prior import Prior
from .artifact import KIND, run_calibration
from .config import CalibConfig, recipe_for
from .methods import get_method


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
    overwrite: bool = False,
) -> Path:
    """Stage II on a checkpoint directory or built-in name.

    `data` defaults to a tiny model's own task; `samples`, `seq_len` and `cfg.epochs`
    default to the model's recipe (`config.recipe_for`). A weighted method without a
    `prior` (a Prior or a directory from `probe`) probes the FP teacher first and keeps
    the prior in OUT.prior, so a rerun reuses it.
    """
    from ..models.builtin import default_task, resolve_model
    from ..models.loading import load_tokenizer, read_config
    from .data import calibration_tokens

    checks.count("samples", samples)
    checks.count("seq_len", seq_len)
    path = resolve_model(model)
    # before probing and tokenizing; under torchrun rank 0 checks for all
    distributed.on_main(lambda: check_output(out, KIND, (path,), overwrite))
    _, mcfg = read_config(path)
    recipe = recipe_for(mcfg.hidden_size)
    seq_len = seq_len or recipe.seq_len
    if seq_len > mcfg.max_position_embeddings:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's maximum of "
                          f"{mcfg.max_position_embeddings} tokens")
    cfg = cfg.resolved(mcfg.hidden_size)
    method = get_method(cfg.method)
    if method.weighted and prior is None:
        from ..probe.artifact import run_probe

        prior = Path(f"{out}.prior")
        if not (prior / "prior.json").is_file():
            run_probe(path, data, prior, seed=cfg.seed, device=cfg.device)
        else:  # kept from an earlier run: it must be this model's
            from ..artifacts import MANIFEST, read_json

            probed = read_json(prior / MANIFEST).get("config", {}).get("model") \
                if (prior / MANIFEST).is_file() else None
            if probed != str(path):
                raise ConfigError(f"{prior} was probed on {probed}, not on {path}: remove it "
                                  f"to probe again, or pass --prior")
    if isinstance(prior, (str, Path)):
        prior = Prior.load(prior)
    source = data or default_task(path)
    if source is None:
        raise ConfigError(f"{path} has no default calibration data: pass --data")
    tokens = calibration_tokens(load_tokenizer(path), source, samples or recipe.samples,
                                seq_len, seed=cfg.seed, eos_id=mcfg.eos_token_id)
    return run_calibration(path, Path(out), cfg, tokens, prior if method.weighted else None,
                           source, progress, overwrite=overwrite)
