"""`build`: one command from a checkpoint to a validated deployment for a target GPU.

    OUT/prior        Stage I prior (weighted methods only)
    OUT/calibrated   Stage II artifact
    OUT/deploy       folded int4 model
    OUT/onnx         W4A4 ONNX graph for ONNX Runtime (always)
    OUT/tensorrt     plugin graph + engine (when tensorrt and the plugin library exist)
    OUT/validation   report.json / report.md (exported ONNX vs calibrated PyTorch)
    OUT/build.json   the settings and outcome of every stage

Each stage writes its directory atomically; a re-run skips a stage whose directory is
complete and whose recorded settings are unchanged (and redoes the stages after one
that changed). An interrupted calibration resumes from its finished blocks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import MANIFEST
from .errors import FaircalibError

BUILD_JSON = "build.json"


@dataclass
class BuildSettings:
    method: str = "fair-calib"
    data: str | None = None  # calibration text (default: a tiny model's task)
    probe_data: str | None = None  # probing prompts (default: same as data)
    samples: int | None = None
    seq_len: int | None = None
    epochs: int = 15
    seed: int = 0
    device: str = "cpu"
    probe_samples: int | None = None
    validate_prompts: int = 32
    tensorrt: bool = True
    policy: dict = field(default_factory=dict)  # decoding overrides for validation


@dataclass
class StageResult:
    name: str
    status: str  # done | skipped (up to date) | unavailable | failed
    seconds: float
    detail: str = ""


def _complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def run_build(model: str, target: str, out: str | Path, settings: BuildSettings,
              log: Callable[[str], None] = print) -> tuple[list[StageResult], dict | None]:
    """Run every stage; returns the stage results and the validation report."""
    from .calibrate.artifact import calibrate_checkpoint
    from .calibrate.methods import get_method
    from .calibrate.stage2 import CalibConfig
    from .export.onnx_export import export_onnx
    from .fold.fold import fold_artifact
    from .models.builtin import resolve_model
    from .trt.targets import load_target

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(model)
    target_profile = load_target(target)
    record_file = out / BUILD_JSON
    previous = json.loads(record_file.read_text())["stages"] if record_file.is_file() else {}
    record: dict = {"model": str(model_path), "target": target_profile.name, "stages": {}}
    results: list[StageResult] = []
    upstream_changed = False

    def stage(name: str, directory: Path, stage_settings: dict, run: Callable[[], str]) -> None:
        nonlocal upstream_changed
        start = time.time()
        same = previous.get(name, {}).get("settings") == stage_settings
        if _complete(directory) and same and not upstream_changed:
            results.append(StageResult(name, "skipped (up to date)", 0.0))
        else:
            upstream_changed = True
            if directory.exists() and not same:
                shutil.rmtree(directory)  # stale output from other settings
            log(f"[{name}] running")
            detail = run()
            results.append(StageResult(name, "done", time.time() - start, detail))
        record["stages"][name] = {"settings": stage_settings, "directory": str(directory)}
        record_file.write_text(json.dumps(record, indent=1) + "\n")

    method = get_method(settings.method)
    prior_dir = out / "prior"
    if method.weighted:
        from .probe.artifact import run_probe

        probe_settings = {"data": settings.probe_data or settings.data,
                          "samples": settings.probe_samples, "seed": settings.seed}
        stage("probe", prior_dir, probe_settings,
              lambda: str(run_probe(model_path, probe_settings["data"], prior_dir,
                                    samples=settings.probe_samples, seed=settings.seed,
                                    device=settings.device).prior.weights.shape[0])
              + " window positions")
    cfg = CalibConfig(method=settings.method, epochs=settings.epochs, seed=settings.seed,
                      device=settings.device)
    calib_settings = {"calib": cfg.to_dict(), "data": settings.data,
                      "samples": settings.samples, "seq_len": settings.seq_len}
    stage("calibrate", out / "calibrated", calib_settings,
          lambda: str(calibrate_checkpoint(
              model_path, out / "calibrated", cfg, data=settings.data,
              prior=prior_dir if method.weighted else None, samples=settings.samples,
              seq_len=settings.seq_len)))
    stage("fold", out / "deploy", {}, lambda: str(fold_artifact(out / "calibrated",
                                                                out / "deploy")))
    stage("onnx", out / "onnx", {}, lambda: str(export_onnx(out / "deploy", out / "onnx")))

    if settings.tensorrt:
        start = time.time()
        try:
            from .trt.export import export_tensorrt

            export_tensorrt(out / "deploy", out / "tensorrt", target_profile)
            results.append(StageResult("tensorrt", "done", time.time() - start))
        except FaircalibError as err:  # no tensorrt / plugin library / GPU here
            results.append(StageResult("tensorrt", "unavailable", time.time() - start,
                                       str(err).split(";")[0]))

    report = _validate(out, settings)
    ok = report["passed"]
    results.append(StageResult("validate", "done" if ok else "failed", 0.0,
                               ", ".join(f"{k} {v:.4g}" for k, v in report["metrics"].items()
                                         if k in ("top1_agreement", "decode_identical_rate"))))
    record["validation_passed"] = ok
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    return results, report


def _validate(out: Path, settings: BuildSettings) -> dict:
    from faircalib_runtime.onnx import open_exported

    from .generate import open_model
    from .validate import default_prompts, markdown, validate

    reference = open_model(out / "calibrated")
    exported = open_exported(out / "onnx")
    report = validate(reference, exported, default_prompts(reference, settings.validate_prompts),
                      **settings.policy)
    (out / "validation").mkdir(exist_ok=True)
    (out / "validation" / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "validation" / "report.md").write_text(
        markdown(report, str(out / "calibrated"), str(out / "onnx")))
    return report
