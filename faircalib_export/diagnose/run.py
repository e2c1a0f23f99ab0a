"""`diagnose`: teacher-forced and own-trajectory diagnostics of quantized students.

For each batch of prompts:
1. the FP teacher decodes with its default policy (LLaDA low_confidence semi-AR, Dream
   entropy; greedy), and every student is evaluated on each teacher state
   (`collect.teacher_pass`): commit-step flips, frontier margin, per-position KL;
2. every student decodes on its own with the same policy (`collect.own_pass`):
   post-commit mismatch, stability lag, the probability-discrepancy trace and its first
   false commit. The teacher's own mismatch and lag come from step 1.

The report (JSON-able dict) is assembled by `report.py`; `write_diagnose_dir` adds the
figures and a manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import distributed
from ..errors import ConfigError
from . import report as R
from .collect import OwnPass, TeacherPass, own_pass, teacher_pass
from .students import Student, base_weights_sha256, load_student, unique_names

REPORT_FILE = "diagnose.json"
KIND = "diagnostics"


@dataclass(frozen=True)
class DiagnoseConfig:
    samples: int = 32  # paper: N = 32 sequences
    seed: int = 0  # prompt stream (task sources) and policy seed
    batch_size: int = 16
    window: int | None = None  # None: the teacher's default generation window
    steps: int | None = None
    block_length: int | None = None  # LLaDA only
    split: str = "heldout"  # task sources: problems never used for calibration
    # "exact" or "parallel" (threshold commits): the teacher's and students' decoding mode.
    # The cached modes are refused: every diagnostic compares full predictions per step.
    decode: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.samples <= 0 or self.batch_size <= 0:
            raise ConfigError("samples and batch_size must be positive")
        if self.decode not in (None, "exact", "parallel"):
            raise ConfigError(f"diagnose decodes with --decode exact or parallel, not "
                              f"{self.decode!r}: its diagnostics compare every model's full "
                              f"predictions at each step, which a KV cache does not compute")


def diagnose(teacher: str | Path, students: Sequence[str | Path], data: str | None, *,
             config: DiagnoseConfig = DiagnoseConfig(), prior: str | Path | None = None,
             groups: Sequence[str] | None = None, device: str = "cpu",
             progress: Callable[[str], None] | None = None) -> dict:
    """Run every diagnostic; returns the report dict (see module doc)."""
    from ..models.builtin import default_task, resolve_model
    from ..opener import TORCH_KINDS, open_model
    from ..probe.prior import Prior

    if not students:
        raise ConfigError("give at least one student (calibrated artifact or folded model)")
    if groups is not None and len(groups) != len(students):
        raise ConfigError(f"--seed-group needs one label per student ({len(students)}), "
                          f"got {len(groups)}")
    say = progress or (lambda msg: None)
    path = resolve_model(teacher)
    opened = open_model(path, device, kinds=TORCH_KINDS)  # the teacher runs in PyTorch
    source = data or default_task(path)
    if source is None:
        raise ConfigError(f"{path} has no default prompts: pass --data")
    policy = opened.policy(seed=config.seed, gen_length=config.window, steps=config.steps,
                           block_length=config.block_length, decode=config.decode,
                           threshold=config.threshold)
    paths = [Path(s) for s in students]
    teacher_weights = _weights_sha256(path)
    loaded: list[Student] = []
    for p, name in zip(paths, unique_names(paths), strict=True):
        say(f"loading {name}")
        st = load_student(p, device, name)
        recorded = base_weights_sha256(p)
        if recorded is not None and recorded != teacher_weights:
            raise ConfigError(f"{p} was calibrated from other weights than the teacher "
                              f"{path}'s: diagnose a student against its own FP model")
        if st.family != opened.family:
            raise ConfigError(f"{p}: a {st.family} model cannot be diagnosed against a "
                              f"{opened.family} teacher")
        if st.vocab_size != opened.vocab_size:
            raise ConfigError(f"{p}: vocabulary {st.vocab_size} differs from the teacher's "
                              f"{opened.vocab_size}")
        loaded.append(st)
    if groups is not None:
        for st, g in zip(loaded, groups, strict=True):
            st.group = g
    prior_obj = Prior.load(prior) if prior is not None else None
    if prior_obj is not None and len(prior_obj.weights) != policy.window:
        raise ConfigError(f"the prior covers {len(prior_obj.weights)} positions but the "
                          f"generation window is {policy.window}; pass --window "
                          f"{len(prior_obj.weights)} or a prior probed with this window")

    max_tokens = max(1, opened.cfg.max_position_embeddings - policy.window)
    prompts = _prompts(source, path, config, max_tokens, opened.tokenizer)

    # The unit of work is a batch of prompts (the policy seed is the same for every batch):
    # under torchrun each rank tallies its share of the batches apart, and the tallies are
    # merged in batch order, so the report does not depend on the number of processes.
    bs = config.batch_size
    batches = [prompts[lo:lo + bs] for lo in range(0, len(prompts), bs)]
    done = []
    for b, batch in distributed.shard(batches):
        lo = b * bs
        say(f"teacher-forced pass, sequences {lo + 1}-{lo + len(batch)} of {len(prompts)}")
        tp = teacher_pass(opened.model, [st.forward for st in loaded], batch, policy, device)
        teacher_own = R.OwnTally()
        teacher_own.add(own_from_teacher(tp))
        forced = {st.name: R.ForcedTally(policy.window) for st in loaded}
        own = {st.name: R.OwnTally() for st in loaded}
        for st, per_student in zip(loaded, tp.students, strict=True):
            forced[st.name].add(tp, per_student)
        for st in loaded:
            say(f"{st.name}: own decode, sequences {lo + 1}-{lo + len(batch)}")
            op = own_pass(st.forward, batch, policy, device, teacher=opened.model,
                          teacher_states=tp.states)
            own[st.name].add(op, reference=tp.tokens)
        done.append((b, (teacher_own, R.M.nanmean_per_sequence(tp.margin), forced, own)))

    teacher_tally = R.OwnTally()
    teacher_margin: list[np.ndarray] = []
    forced = {st.name: R.ForcedTally(policy.window) for st in loaded}
    own = {st.name: R.OwnTally() for st in loaded}
    for part_teacher, part_margin, part_forced, part_own in distributed.gather(done,
                                                                                len(batches)):
        teacher_tally.merge(part_teacher)
        teacher_margin.append(part_margin)
        for st in loaded:
            forced[st.name].merge(part_forced[st.name])
            own[st.name].merge(part_own[st.name])

    models = [{"name": R.TEACHER, "path": str(path), "kind": opened.kind, "method": "fp",
               "seed": None, "group": R.TEACHER}] + [st.describe() for st in loaded]
    teacher_own = teacher_tally.own_report()
    sections: dict[str, dict] = {
        "teacher_forced": {st.name: forced[st.name].report() for st in loaded},
        "post_commit": {R.TEACHER: teacher_own["post_commit"]},
        "stability_lag": {R.TEACHER: teacher_own["stability_lag"]},
        "divergence": {},
    }
    for st in loaded:
        rep = own[st.name].own_report()
        sections["post_commit"][st.name] = rep["post_commit"]
        sections["stability_lag"][st.name] = rep["stability_lag"]
        sections["divergence"][st.name] = own[st.name].divergence_report()
    report = {
        "teacher": str(path), "data": source, "n_sequences": len(prompts),
        "config": asdict(config), "policy": policy.to_dict(), "models": models,
        "teacher_margin": R.M.mean_std(np.concatenate(teacher_margin)),
        **sections,
        "seed_groups": R.seed_groups(models, sections),
        "definitions": DEFINITIONS,
    }
    if prior_obj is not None:
        report["prior"] = {"path": str(prior), "weights": prior_obj.weights.tolist()}
        report["prior_correlation"] = {
            name: R.prior_correlation(prior_obj.weights, sec["by_position"])
            for name, sec in sections["teacher_forced"].items()}
    return report


def own_from_teacher(tp: TeacherPass) -> OwnPass:
    """The teacher's own trajectory, as recorded by the teacher-forced pass."""
    return OwnPass(tp.obs, tp.commit_step, tp.tokens, None)


def _weights_sha256(checkpoint: Path) -> str | None:
    from ..artifacts import file_sha256

    for name in ("model.safetensors.index.json", "model.safetensors"):
        if (checkpoint / name).is_file():
            return file_sha256(checkpoint / name)
    return None


def _prompts(source, path, config, max_tokens, tokenizer) -> list[list[int]]:
    from ..probe.prompts import load_prompts

    return load_prompts(source, path, config.samples, seed=config.seed, max_tokens=max_tokens,
                        tokenizer=tokenizer, split=config.split)


DEFINITIONS = {
    "flips_per_seq": "teacher-forced: teacher commit positions where the student's argmax "
                     "on the teacher's state differs from the teacher's written token, per "
                     "sequence",
    "margin": "student logit of the teacher's written token minus its largest other logit, "
              "at teacher commit positions on teacher states; mean per sequence",
    "kl_masked": "KL(p_teacher || p_student) at masked window positions of teacher states",
    "kl_commit": "the same KL at the teacher's commit positions only",
    "mean_disagree_rate": "own trajectory: per committed position, fraction of later states "
                          "(final state included) whose argmax differs from the committed "
                          "token; mean over the sequence's committed positions",
    "never_agree_rate": "own trajectory: fraction of committed positions whose argmax never "
                        "equals the committed token on any later state",
    "stability_lag": "own trajectory: later states until the argmax equals the final token "
                     "on every remaining state (0 = stable at once; censored = never)",
    "mse_prob": "per step: squared L2 distance between the student's probabilities on its "
                "own state and the teacher's on the teacher's state, mean over the window",
    "first_false_commit": "first step at which the student writes a token differing from "
                          "the teacher's final token at that position",
    "final_disagreement": "fraction of window positions whose final token differs from the "
                          "teacher's",
    "error_bars": "sample std (ddof 1) over sequences; seed_groups: over students of a group",
}


def write_diagnose_dir(report: dict, out: str | Path, overwrite: bool = False) -> Path:
    """diagnose.json, the figures and a manifest, written atomically."""
    import json

    from ..artifacts import atomic_dir, write_manifest
    from .plots import plot_all

    inputs = tuple(m["path"] for m in report["models"])
    with atomic_dir(out, KIND, inputs=inputs, overwrite=overwrite) as tmp:
        (tmp / REPORT_FILE).write_text(json.dumps(finite_json(report), indent=1,
                                                  allow_nan=False) + "\n")
        figures = plot_all(report, tmp)
        write_manifest(tmp, KIND, {"teacher": report["teacher"], "data": report["data"],
                                   "config": report["config"], "policy": report["policy"],
                                   "models": report["models"]},
                       figures=[f.name for f in figures])
    return Path(out)


def finite_json(obj):
    """A copy with NaN / inf floats as None and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
