"""`compare`: calibrate several methods with the same data, budget and seeds, evaluate
each, diagnose all of them against the FP teacher, and report.

    REPORT_DIR/
      priors/<variant>-s<seed>/   Stage I priors (weighted methods only)
      runs/<entry>[-<format>]-s<seed>/  calibrated artifacts, each with eval.json beside it
                                  (int keeps the bare name, so earlier runs are reused)
      fp-eval.json                the FP teacher's accuracy
      diagnose/                   `diagnose` over every run (seed groups = entries)
      results.json, report.md, accuracy.png

Every step is skipped when its output exists with the same settings, so a rerun (or a
run interrupted half way) reuses finished work; calibrations resume block by block.

An entry is `METHOD` or `METHOD@VARIANT`; a variant changes the Stage I prior only (the
ablations of the paper's tables 3 and 4), see `PRIOR_VARIANTS`. Deterministic methods
(rtn) run once whatever the number of seeds.

`formats` (int, nvfp4, mxfp4; `int4` is int) calibrates every entry in every format; the
priors are the FP teacher's and shared by all formats. A method that cannot calibrate a
format (quarot's GPTQ has integer grids only) is skipped for it with a note in the
results, not an error. With a format other than a single int, each row is labelled
`ENTRY:FORMAT`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import distributed
from ..errors import ConfigError

# Stage I settings of each prior variant (ProbeConfig fields; "samples" = probing budget).
PRIOR_VARIANTS: dict[str, dict] = {
    "both": {},  # the paper's prior: frontier-hit (early boost) + reliability
    "frontier-only": {"lambda1": 0.0},
    "reliability-only": {"schedule": "none"},
    "uniform-schedule": {"schedule": "uniform"},
    "late-boost": {"schedule": "late-boost"},
    # control, no probing: weight 1 over the whole window and the floor before it, i.e.
    # FlatQuant on the window positions only (isolates the window/floor from w̄'s shape)
    "window-flat": {"flat": True},
}
_BUDGET = re.compile(r"probe(\d+)$")  # `probeN`: the default prior from N probing rollouts

# The paper-style ablation set (tables 3 and 4) added by `--ablations`.
ABLATIONS = ("fair-calib@frontier-only", "fair-calib@reliability-only",
             "fair-calib@uniform-schedule", "fair-calib@late-boost", "fair-calib@probe16")


@dataclass(frozen=True)
class Entry:
    method: str
    variant: str | None = None  # prior variant (weighted methods only)

    @property
    def label(self) -> str:
        return self.method if self.variant is None else f"{self.method}@{self.variant}"

    def prior_settings(self) -> dict:
        if self.variant is None:
            return {}
        budget = _BUDGET.match(self.variant)
        return {"samples": int(budget.group(1))} if budget else PRIOR_VARIANTS[self.variant]

    @property
    def prior_name(self) -> str:
        return self.variant or "both"


def parse_entries(spec: Sequence[str]) -> list[Entry]:
    """`rtn,fair-calib@frontier-only,...` -> entries (validated, duplicates dropped)."""
    from ..calibrate.methods import get_method

    out: list[Entry] = []
    for item in spec:
        method, _, variant = item.strip().partition("@")
        m = get_method(method)
        if variant:
            if not m.weighted:
                raise ConfigError(f"{item}: prior variants apply to weighted methods only "
                                  f"(fair-calib, qdrop-weighted)")
            if variant not in PRIOR_VARIANTS and not _BUDGET.match(variant):
                raise ConfigError(f"{item}: unknown prior variant {variant!r}; choose one of "
                                  f"{', '.join(PRIOR_VARIANTS)} or probeN (N rollouts)")
        entry = Entry(method, variant or None)
        if entry not in out:
            out.append(entry)
    if not out:
        raise ConfigError("give at least one method")
    return out


def parse_formats(spec: str | Sequence[str], w_bits: int = 4, a_bits: int = 4) -> tuple[str, ...]:
    """`int4,nvfp4,mxfp4` -> ("int", "nvfp4", "mxfp4") (validated, duplicates dropped)."""
    from ..quant.spec import check_format

    items = spec.split(",") if isinstance(spec, str) else spec
    out: list[str] = []
    for item in items:
        name = item.strip()
        if not name:
            continue
        name = "int" if name == f"int{w_bits}" else name
        fmt = check_format(name, w_bits, a_bits).value
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ConfigError("give at least one format (int, nvfp4, mxfp4)")
    return tuple(out)


def format_skip_reason(entry: Entry, fmt: str, w_bits: int, a_bits: int) -> str | None:
    """Why `entry` cannot calibrate in `fmt` (None: it can)."""
    from ..calibrate.methods import get_method

    try:
        get_method(entry.method).spec(w_bits, a_bits, fmt)
    except ConfigError as err:
        return str(err)
    return None


def seeds_for(entry: Entry, seeds: Sequence[int]) -> list[int]:
    """rtn has no randomness (no transforms, no data-dependent step): one run."""
    return [seeds[0]] if entry.method == "rtn" else list(seeds)


@dataclass(frozen=True)
class CompareConfig:
    entries: tuple[Entry, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    w_bits: int = 4
    a_bits: int = 4
    epochs: int | None = None  # per block (default: the model's recipe, calibrate/config.py)
    data: str | None = None  # calibration data (default: the model's own task)
    calib_samples: int | None = None  # calibration sequences (default: the model's recipe)
    task: str | None = None  # accuracy: tiny task name or benchmark (default: model's task)
    limit: int = 500  # held-out problems scored per model
    diag_samples: int = 32  # sequences for the diagnostics (paper: 32)
    device: str = "cpu"
    decode: str | None = None  # exact or parallel (None: the model's); see diagnose
    threshold: float | None = None
    formats: tuple[str, ...] = ("int",)  # quantization formats (quant/formats.py)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if self.limit <= 0 or self.diag_samples <= 0:
            raise ConfigError("limit and diag_samples must be positive")
        object.__setattr__(self, "formats", parse_formats(self.formats, self.w_bits,
                                                          self.a_bits))
        if self.decode not in (None, "exact", "parallel"):
            raise ConfigError(f"compare decodes with --decode exact or parallel, not "
                              f"{self.decode!r}: its diagnostics need every model's full "
                              f"predictions at each step, which a KV cache does not compute")

    @property
    def decoding(self) -> dict:
        return {k: v for k, v in (("decode", self.decode), ("threshold", self.threshold))
                if v is not None}

    @property
    def labelled_formats(self) -> bool:
        """Whether rows carry their format (anything but the original single int)."""
        return self.formats != ("int",)

    def label(self, entry: Entry, fmt: str) -> str:
        return f"{entry.label}:{fmt}" if self.labelled_formats else entry.label


def run_name(entry: Entry, seed: int, fmt: str = "int") -> str:
    suffix = "" if fmt == "int" else f"-{fmt}"
    return f"{entry.label.replace('@', '_')}{suffix}-s{seed}"


def _load_json(file: Path) -> dict | None:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(file: Path, obj) -> None:
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(file)


def run_compare(model: str | Path, out: str | Path, config: CompareConfig,
                say: Callable[[str], None] = lambda msg: None,
                detail: Callable[[str], None] = lambda msg: None,
                overwrite: bool = False) -> dict:
    """Run (or finish) the comparison in `out`; returns the results dict. `say` reports
    each step started, `detail` the progress within one."""
    from contextlib import ExitStack

    from ..artifacts import claim_workdir
    from ..models.builtin import resolve_model

    path = resolve_model(model)
    with ExitStack() as held:  # under torchrun rank 0 holds the claim; every rank works
        distributed.on_main(lambda: held.enter_context(
            claim_workdir(out, "compare", inputs=(path,), overwrite=overwrite)))
        return _run_compare(path, Path(out), config, say, detail)


def _check_task(task: str) -> None:
    from ..evaluate import benchmark_names
    from ..tiny.tasks import get_task

    if task in benchmark_names():
        return
    try:
        get_task(task)
    except KeyError:
        raise ConfigError(f"unknown task {task!r}: a tiny task (chain, chain1) or a benchmark "
                          f"({', '.join(benchmark_names())})") from None


def _run_compare(path: Path, out: Path, config: CompareConfig, say, detail) -> dict:
    from ..calibrate.config import CalibConfig
    from ..models.builtin import default_task
    from ..models.loading import read_config

    hidden = read_config(path)[1].hidden_size
    task = config.task or (default_task(path) or "").removeprefix("task:") or None
    if task is None:
        raise ConfigError(f"{path} has no default task: pass --task (a tiny task or a "
                          f"benchmark such as gsm8k)")
    _check_task(task)  # before any calibration, not after

    data = config.data or default_task(path)
    if data is None:
        raise ConfigError(f"{path} has no default calibration data: pass --data")
    runs: list[dict] = []
    skipped: list[dict] = []
    for entry in config.entries:
        for fmt in config.formats:
            reason = format_skip_reason(entry, fmt, config.w_bits, config.a_bits)
            if reason is not None:  # e.g. quarot (GPTQ) in FP4: a note, not an error
                say(f"skipping {entry.label} in {fmt}: {reason}")
                skipped.append({"entry": entry.label, "format": fmt, "reason": reason})
                continue
            for seed in seeds_for(entry, config.seeds):
                cfg = CalibConfig(method=entry.method, w_bits=config.w_bits,
                                  a_bits=config.a_bits, epochs=config.epochs, seed=seed,
                                  device=config.device, format=fmt).resolved(hidden)
                prior_dir = None
                if cfg.method in _weighted():
                    prior_dir = out / "priors" / f"{entry.prior_name}-s{seed}"
                    _probe(path, config, entry, seed, prior_dir, say)
                run_dir = out / "runs" / run_name(entry, seed, fmt)
                _calibrate(path, config, data, cfg, prior_dir, run_dir, say, detail)
                acc = _evaluate(run_dir, task, config, say)
                runs.append({"entry": config.label(entry, fmt), "method": entry.method,
                             "variant": entry.variant, "format": fmt, "seed": seed,
                             "path": str(run_dir),
                             "prior": str(prior_dir) if prior_dir else None, "accuracy": acc})
    if not runs:
        raise ConfigError("no method can calibrate in the formats asked for: "
                          + "; ".join(f"{s['entry']} {s['format']}" for s in skipped))
    fp_acc = _evaluate(path, task, config, say, cache=out / "fp-eval.json")
    diag = _diagnose(path, runs, config, out, say, detail)
    from ..calibrate.config import recipe_for
    from .report import summarize

    recipe = recipe_for(hidden)  # the report names what ran, not "default"
    results = summarize(path, task, dataclasses.replace(
        config, epochs=config.epochs if config.epochs is not None else recipe.epochs,
        calib_samples=config.calib_samples or recipe.samples), fp_acc, runs, diag, skipped)
    distributed.on_main(lambda: _write_json(out / "results.json", results))
    return results


def _weighted() -> set[str]:
    from ..calibrate.methods import METHODS

    return {name for name, m in METHODS.items() if m.weighted}


def _probe(path: Path, config: CompareConfig, entry: Entry, seed: int, prior_dir: Path,
           say) -> None:
    from ..probe.artifact import run_probe

    settings = {**entry.prior_settings(), "seed": seed}
    if settings.pop("flat", False):
        distributed.on_main(lambda: _flat_prior(path, prior_dir))
        return
    manifest = distributed.on_main(lambda: _load_json(prior_dir / "manifest.json"))
    if manifest is not None and _same_probe(manifest.get("config", {}), settings):
        return
    say(f"probing the FP teacher for prior {prior_dir.name}")
    run_probe(path, None, prior_dir, device=config.device, **settings)


def _flat_prior(path: Path, prior_dir: Path) -> None:
    from ..artifacts import atomic_dir, write_manifest
    from ..models.loading import read_config
    from ..opener import read_generation_config
    from ..probe.prior import Prior
    from ..probe.stage1 import probe_shape

    if (prior_dir / "prior.json").is_file():
        return
    _, window, _ = probe_shape(read_config(path)[1], read_generation_config(path))
    with atomic_dir(prior_dir, "prior") as tmp:
        Prior(np.ones(window), settings={"kind": "window-flat"}).save(tmp)
        write_manifest(tmp, "prior", {"kind": "window-flat", "window": window})


def _same_probe(recorded: dict, settings: dict) -> bool:
    for key, value in settings.items():
        have = recorded.get("n_samples" if key == "samples" else key)
        if have != value:
            return False
    return True


def _is_current(run_dir: Path, cfg, data: str, samples: int | None,
                prior_dir: Path | None) -> bool:
    """Whether `run_dir` holds a finished calibration with exactly these settings."""
    manifest = _load_json(run_dir / "manifest.json")
    if manifest is None:
        return False
    recorded = manifest.get("config", {})
    prior = _load_json(prior_dir / "prior.json") if prior_dir is not None else None
    return (recorded.get("calib") == cfg.to_dict() and recorded.get("data") == data
            and samples in (None, recorded.get("n_samples"))
            and (prior is None or recorded.get("prior") == prior["weights"]))


def _calibrate(path: Path, config: CompareConfig, data: str, cfg, prior_dir: Path | None,
               run_dir: Path, say, detail) -> None:
    from ..calibrate.entry import calibrate_checkpoint

    if distributed.on_main(lambda: _is_current(run_dir, cfg, data, config.calib_samples,
                                               prior_dir)):
        return
    say(f"calibrating {run_dir.name}")

    def progress(block: int, phase: str, loss: float | None) -> None:
        detail(f"calibrating {run_dir.name}: block {block} {phase}"
               + (f" (loss {loss:.4g})" if loss is not None else ""))

    calibrate_checkpoint(path, run_dir, cfg, data=data, prior=prior_dir,
                         samples=config.calib_samples, progress=progress)


def _evaluate(model: Path, task: str, config: CompareConfig, say, cache: Path | None = None
              ) -> dict:
    """Held-out accuracy, cached in `cache` (default MODEL/eval.json)."""
    cache = cache or model / "eval.json"
    key = {"task": task, "limit": config.limit, **config.decoding}
    cached = distributed.on_main(lambda: _load_json(cache))  # every rank follows rank 0
    if cached is not None and cached.get("key") == key:
        return cached["result"]
    say(f"evaluating {model.name} on {task}")
    from ..evaluate import benchmark_names

    if task in benchmark_names():
        from ..evaluate import evaluate_benchmark
        from ..opener import open_model

        raw = evaluate_benchmark(open_model(model, config.device), task, limit=config.limit,
                                 **config.decoding)
        score = next(raw[k] for k in ("exact_match", "acc", "masked_ppl") if k in raw)
        result = {"accuracy": score, "n": raw.get("n", config.limit), "raw": raw}
    else:
        from ..tiny.evaluate import evaluate

        raw = evaluate(model, task, config.limit, console=False, **config.decoding)
        result = {"accuracy": raw["accuracy"], "n": raw["n"], "correct": raw["correct"]}
    distributed.on_main(lambda: _write_json(cache, {"key": key, "result": result}))
    return result


def _diagnose(path: Path, runs: list[dict], config: CompareConfig, out: Path, say,
              detail) -> dict:
    from ..artifacts import file_sha256
    from ..diagnose.run import DiagnoseConfig, diagnose, finite_json, write_diagnose_dir

    directory = out / "diagnose"
    dconfig = DiagnoseConfig(samples=config.diag_samples, **config.decoding)
    students = [r["path"] for r in runs]
    groups = [r["entry"] for r in runs]
    # the students' manifests identify them: a recalibrated run invalidates the diagnosis
    key = {"config": asdict(dconfig), "students": students, "groups": groups,
           "manifests": [file_sha256(Path(p) / "manifest.json") for p in students]}
    key_file = out / "diagnose-key.json"
    cached = distributed.on_main(
        lambda: _load_json(directory / "diagnose.json") if _load_json(key_file) == key else None)
    if cached is not None:
        return cached
    say(f"diagnosing {len(students)} students against the FP teacher")
    # w̄ against per-position errors: the first weighted run's prior (seed 0 of the paper's
    # variant when it is in the comparison)
    prior = next((r["prior"] for r in runs if r["prior"]), None)
    report = diagnose(path, students, None, config=dconfig, prior=prior, groups=groups,
                      device=config.device, progress=detail)
    def write() -> None:
        write_diagnose_dir(report, directory)
        _write_json(key_file, key)

    distributed.on_main(write)
    return finite_json(report)
