"""`validate`: does the exported model compute what the PyTorch model computes?

Both sides are opened models of any kind (`opener.OpenedModel`); usually the reference
is a calibrated artifact or folded model run in PyTorch and the other side its ONNX or
TensorRT export. `compare_models` measures without judging (`build` also uses it for
the quality of the quantized model against the FP one); `validate` adds the thresholds.

The reference decodes the prompts
with the model's default policy; every intermediate state of that trajectory is then fed
to both models (teacher forcing). On the masked positions of those states we measure
logit max-abs and relative error, KL(reference || exported) and top-1 agreement; at the
positions the reference commits we count flips (the exported model would write another
token). Finally both decode the prompts independently and we compare the token
sequences. Thresholds (defaults below) decide pass / fail.

In a fast decode mode (`decode` parallel / cached / fast) both models decode in that
mode, so the checks compare fast-mode exported with fast-mode PyTorch; the report adds
each model's fast mode against its own exact loop (`fast_vs_exact`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import FaircalibError
from .opener import EXPORTED_KINDS

DEFAULT_PROMPTS = (
    "What is 12 plus 30?", "Write a short sentence about the sea.",
    "List three colors.", "start 12 then +3 then -5",
)


class ValidationError(FaircalibError):
    """The exported model does not belong to the reference, or it failed a threshold."""


@dataclass(frozen=True)
class Thresholds:
    top1_min: float = 0.999  # top-1 agreement on teacher-forced masked states
    decode_match_min: float = 0.99  # share of prompts decoded to identical tokens
    # ||exported - reference|| / ||reference|| over all masked-position logits. Not 1e-6:
    # an int4 activation code on a rounding tie can flip between runtimes (their float
    # sums differ in order), moving that row's logits by a few percent; real export bugs
    # show up at 0.2 and above.
    rel_error_max: float = 0.05
    kl_max: float = 1e-3  # mean KL(reference || exported) per masked position


def _task_of(opened):
    """The tiny task a model was trained on, or None."""
    from .models.builtin import default_task

    base = getattr(opened, "base_path", None)
    task = default_task(base) if base is not None else None
    if task is None:
        return None
    from .tiny.tasks import get_task

    return get_task(task.split(":", 1)[1])


def default_prompts(opened, limit: int) -> list[str]:
    """Held-out prompts of the task a tiny model was trained on, else built-in ones."""
    task = _task_of(opened)
    if task is None:
        return list(DEFAULT_PROMPTS)[:limit]
    from .tiny.tasks import Split

    stream = task.stream(Split.HELDOUT, 0)
    return [next(stream).prompt for _ in range(limit)]


def _answers(opened, prompts: list[str]):
    """A checker of generated texts when every prompt is a held-out problem of the
    model's tiny task (the default prompts), else None."""
    task = _task_of(opened)
    if task is None:
        return None
    from .tiny.tasks import Split

    stream = task.stream(Split.HELDOUT, 0)
    examples = [next(stream) for _ in prompts]
    if [ex.prompt for ex in examples] != prompts:
        return None
    return lambda texts: float(np.mean([task.check(ex, t) for ex, t in
                                        zip(examples, texts, strict=True)]))


def fast_vs_exact(model, prompts: list[str], config, *, chat: bool = True,
                  check=None) -> dict:
    """What a fast decode mode costs on one model: its tokens against the exact loop's
    (same policy otherwise), steps, and accuracy when `check` (from `_answers`) scores the
    generated texts."""
    from faircalib_runtime import PolicyConfig, generate

    exact = PolicyConfig.from_dict({**config.to_dict(), "decode": "exact"})
    decoder = model.text_decoder(chat)
    ids = [decoder.encode(p) for p in prompts]
    backend = model.backend()
    fast_out, exact_out = generate(backend, ids, config), generate(backend, ids, exact)
    pairs = list(zip(fast_out.generated, exact_out.generated, strict=True))
    report = {
        "decode": config.decode.value, "threshold": config.threshold,
        "cache": config.cache.value,
        "identical_rate": float(np.mean([a == b for a, b in pairs])),
        "token_agreement": _token_agreement(pairs),
        "steps": {"fast": fast_out.steps_run, "exact": exact_out.steps_run},
    }
    if check is not None:
        acc = {k: check([decoder.decode(g) for g in out.generated])
               for k, out in (("fast", fast_out), ("exact", exact_out))}
        report["accuracy"] = {**acc, "delta": acc["fast"] - acc["exact"]}
    return report


def _token_agreement(pairs) -> float:
    return float(np.mean([np.mean(np.asarray(a[:len(b)]) == np.asarray(b[:len(a)]))
                          if len(a) and len(b) else float(len(a) == len(b))
                          for a, b in pairs]))


def read_prompts(path: Path | None, default: list[str]) -> list[str]:
    if path is None:
        return default
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"prompt file {path} not found")
    from .jsonl import jsonl_rows, read_text

    if path.suffix == ".jsonl":
        lines = [(r.get("prompt") or r.get("question") or r.get("text"))
                 if isinstance(r, dict) else None for _, r in jsonl_rows(path)]
    else:
        lines = [ln for ln in read_text(path).splitlines() if ln.strip()]
    if not lines or not all(isinstance(ln, str) and ln for ln in lines):
        raise ValidationError(f"{path}: no prompts (one per line, or JSONL with 'prompt')")
    return lines


# Where an exported model records the artifact it was made from: reference kind ->
# (the reference's file whose hash is recorded, the runtime.json key holding it).
LINEAGE = {"calibrated": ("manifest.json", "source_artifact_sha256"),
           "folded": ("weights.safetensors", "deploy_weights_sha256")}


def check_same_model(reference, exported) -> None:
    """Refuse a model exported from another model or calibration, or another tokenizer."""
    from .artifacts import file_sha256

    recorded = getattr(exported, "config", None) if exported.kind in EXPORTED_KINDS \
        else None
    source = LINEAGE.get(reference.kind)
    if recorded is not None and source is not None and reference.path is not None:
        file, key = source
        if recorded.get(key) != file_sha256(reference.path / file):
            raise ValidationError(f"the exported graph was not made from {reference.path} "
                                  f"({key} differs): export it from this {reference.kind} "
                                  f"model, or validate against the one it came from")
    ref_cfg, exp_cfg = reference.model_config(), exported.model_config()
    diff = sorted(k for k in ref_cfg if ref_cfg[k] != exp_cfg.get(k))
    if diff:
        raise ValidationError(f"the two models differ in architecture: config differs in "
                              f"{', '.join(diff)}")
    ref_vocab, exp_vocab = reference.vocab(), exported.vocab()
    if ref_vocab != exp_vocab:
        raise ValidationError("the exported tokenizer.json does not match the reference "
                              f"tokenizer ({len(exp_vocab)} vs {len(ref_vocab)} entries or "
                              f"different ids)")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def validate(reference, exported, prompts: list[str], *, chat: bool = True, seed: int = 0,
             thresholds: Thresholds = Thresholds(), **policy) -> dict:
    """Run every comparison; returns the report (with per-check pass flags)."""
    check_same_model(reference, exported)
    metrics, config = compare_models(reference, exported, prompts, chat=chat, seed=seed,
                                     **policy)
    checks = {
        "top1_agreement": metrics["top1_agreement"] >= thresholds.top1_min,
        "decode_identical_rate": metrics["decode_identical_rate"] >= thresholds.decode_match_min,
        "logits_rel_error": metrics["logits_rel_error"] <= thresholds.rel_error_max,
        "kl_mean": metrics["kl_mean"] <= thresholds.kl_max,
    }
    recorded = getattr(exported, "config", {}) if exported.kind in EXPORTED_KINDS else {}
    report = {"metrics": metrics, "thresholds": asdict(thresholds), "checks": checks,
              "passed": all(checks.values()), "policy": config.to_dict(),
              "exported": {"kind": exported.kind, **{k: recorded.get(k) for k in
                           ("variant", "w_bits", "a_bits", "embed_bits", "head_bits")}}}
    if getattr(config, "decode", None) is not None and config.decode.value != "exact":
        check = _answers(reference, prompts)
        report["fast_vs_exact"] = {side: fast_vs_exact(model, prompts, config, chat=chat,
                                                       check=check)
                                   for side, model in (("reference", reference),
                                                       ("exported", exported))}
    return report


def compare_models(reference, exported, prompts: list[str], *, chat: bool = True,
                   seed: int = 0, **policy) -> tuple[dict, object]:
    """Teacher-forced and free-running agreement of `exported` (any model) with `reference`.

    Returns the metrics and the policy both decoded with (the reference's default).
    """
    from faircalib_runtime import generate, left_pad

    config = reference.policy(seed=seed, **policy)
    ref_decoder = reference.text_decoder(chat)
    exp_decoder = exported.text_decoder(chat)
    ids = [ref_decoder.encode(p) for p in prompts]
    if ids != [exp_decoder.encode(p) for p in prompts]:
        raise ValidationError("the exported tokenizer encodes the prompts differently")
    ref_backend, exp_backend = reference.backend(), exported.backend()

    states, commits = [], []
    result = generate(ref_backend, ids, config,
                      on_step=lambda e: (states.append(np.array(e.x)),
                                         commits.append(np.array(e.committed))))
    mask_id = config.mask_id
    start = result.tokens.copy()
    start[:, result.prompt_width:] = mask_id  # the all-masked window decoding began from
    before = [start] + states[:-1]

    stats = {"positions": 0, "top1": 0, "flips": 0, "commits": 0, "kl": 0.0,
             "sq_err": 0.0, "sq_ref": 0.0, "max_abs": 0.0}
    flips_per_seq = np.zeros(len(prompts))
    layout = left_pad(ids, config.window, pad_id=config.pad_token, mask_id=mask_id,
                      padding=config.padding)  # the masks and positions the loop used
    use_mask, use_pos = layout.attention_mask, layout.position_ids
    for x, committed in zip(before, commits, strict=True):
        masked = x == mask_id
        ref_logits = ref_backend.forward(x, use_mask, use_pos, "logits").logits
        exp_logits = exp_backend.forward(x, use_mask, use_pos, "logits").logits
        r, e = ref_logits[masked].astype(np.float64), exp_logits[masked].astype(np.float64)
        pr, pe = _softmax(r), _softmax(e)
        stats["positions"] += len(r)
        stats["top1"] += int((r.argmax(-1) == e.argmax(-1)).sum())
        stats["kl"] += float((pr * (np.log(pr + 1e-30) - np.log(pe + 1e-30))).sum())
        stats["sq_err"] += float(((r - e) ** 2).sum())
        stats["sq_ref"] += float((r ** 2).sum())
        stats["max_abs"] = max(stats["max_abs"], float(np.abs(r - e).max(initial=0)))
        c = committed & masked
        exp_tokens = exp_logits.argmax(-1)
        ref_tokens = ref_logits.argmax(-1)
        flips = c & (exp_tokens != ref_tokens)
        stats["commits"] += int(c.sum())
        stats["flips"] += int(flips.sum())
        flips_per_seq += flips.sum(-1)

    exp_result = generate(exp_backend, ids, config)
    same = [bool(np.array_equal(a, b)) for a, b in zip(result.generated, exp_result.generated,
                                                       strict=True)]
    token_agree = _token_agreement(list(zip(result.generated, exp_result.generated,
                                            strict=True)))
    n = max(stats["positions"], 1)
    metrics = {
        "prompts": len(prompts), "steps": len(commits), "masked_positions": stats["positions"],
        "top1_agreement": stats["top1"] / n,
        "kl_mean": stats["kl"] / n,
        "logits_rel_error": (stats["sq_err"] / max(stats["sq_ref"], 1e-30)) ** 0.5,
        "logits_max_abs_error": stats["max_abs"],
        "commit_flips": stats["flips"], "commits": stats["commits"],
        "flips_per_sequence_mean": float(flips_per_seq.mean()),
        "decode_identical_rate": float(np.mean(same)),
        "decode_token_agreement": float(token_agree),
    }
    return metrics, config


def markdown(report: dict, reference: str, exported: str) -> str:
    m, t, c = report["metrics"], report["thresholds"], report["checks"]
    rows = [
        ("top-1 agreement (teacher-forced masked states)", f"{m['top1_agreement']:.5f}",
         f">= {t['top1_min']}", c["top1_agreement"]),
        ("prompts decoded identically", f"{m['decode_identical_rate']:.3f}",
         f">= {t['decode_match_min']}", c["decode_identical_rate"]),
        ("logits relative error", f"{m['logits_rel_error']:.2e}", f"<= {t['rel_error_max']}",
         c["logits_rel_error"]),
        ("mean KL(ref || exported)", f"{m['kl_mean']:.2e}", f"<= {t['kl_max']}", c["kl_mean"]),
        ("logits max abs error", f"{m['logits_max_abs_error']:.2e}", "", None),
        ("commit flips (total / per sequence)",
         f"{m['commit_flips']} / {m['flips_per_sequence_mean']:.2f}", "", None),
        ("decoded token agreement", f"{m['decode_token_agreement']:.4f}", "", None),
    ]
    lines = [f"# Validation: {exported} against {reference}", "",
             f"Result: **{'PASS' if report['passed'] else 'FAIL'}** "
             f"({m['prompts']} prompts, {m['steps']} steps, {m['masked_positions']} masked "
             f"positions)", "", "| metric | value | threshold | pass |", "|---|---|---|---|"]
    for name, value, threshold, ok in rows:
        lines.append(f"| {name} | {value} | {threshold} | {'' if ok is None else ok} |")
    fast = report.get("fast_vs_exact")
    if fast:
        first = fast["reference"]
        lines += ["", f"## decode {first['decode']} (threshold {first['threshold']}, cache "
                      f"{first['cache']}) against the exact loop of the same model", "",
                  "| model | identical | token agreement | steps fast / exact | accuracy "
                  "fast / exact (delta) |", "|---|---|---|---|---|"]
        for side in ("reference", "exported"):
            f = fast[side]
            acc = f.get("accuracy")
            shown = (f"{acc['fast']:.3f} / {acc['exact']:.3f} ({acc['delta']:+.3f})" if acc
                     else "n/a (not the model's task prompts)")
            lines.append(f"| {side} | {f['identical_rate']:.3f} | {f['token_agreement']:.4f} "
                         f"| {f['steps']['fast']} / {f['steps']['exact']} | {shown} |")
    return "\n".join(lines) + "\n"
