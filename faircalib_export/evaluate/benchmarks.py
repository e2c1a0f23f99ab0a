"""Real benchmark files, read into two shapes: multiple choice and generation.

Formats (as in ../shared/data):
- ARC easy/challenge, BoolQ (llm-foundry ICL format): {"query", "choices", "gold"};
  scored as continuation " " + choice after query + "\\nAnswer:".
- WinoGrande (llm-foundry): {"context_options", "continuation", "gold"}; the same
  continuation is scored after each context option (partial scoring).
- PIQA (original): valid.jsonl {"goal", "sol1", "sol2"} + valid-labels.lst (0/1).
- GSM8K: {"question", "answer"}; the gold is the number after "####".
- HumanEval: {"task_id", "prompt", "entry_point", "test"}; generation only.
- WikiText-2: plain text; masked-diffusion NLL per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..jsonl import jsonl_rows


@dataclass(frozen=True)
class Choice:
    contexts: tuple[str, ...]  # one per option (WinoGrande) or a single shared context
    continuations: tuple[str, ...]  # one per option, or a single shared continuation
    gold: int

    @property
    def options(self) -> list[tuple[str, str]]:
        n = max(len(self.contexts), len(self.continuations))
        ctx = self.contexts * n if len(self.contexts) == 1 else self.contexts
        cont = self.continuations * n if len(self.continuations) == 1 else self.continuations
        return list(zip(ctx, cont, strict=True))


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str | None  # GSM8K gold number; None for generation-only sets
    extra: dict


MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "boolq", "winogrande", "piqa")
GENERATION = ("gsm8k", "humaneval")
PERPLEXITY = ("wikitext2",)
DEFAULT_FILES = {
    "arc_easy": "arc/arc_easy_test.jsonl",
    "arc_challenge": "arc/arc_challenge_test.jsonl",
    "boolq": "boolq/boolq_validation.jsonl",
    "winogrande": "winogrande/winogrande_xl_validation.jsonl",
    "piqa": "piqa/valid.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
    "humaneval": "humaneval/HumanEval.jsonl",
    "wikitext2": "wikitext2/raw/wiki.test.raw",
}


def benchmark_names() -> list[str]:
    return [*MULTIPLE_CHOICE, *GENERATION, *PERPLEXITY]


def default_path(name: str, data_root: Path | None) -> Path:
    if name not in DEFAULT_FILES:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(DEFAULT_FILES)}")
    roots = [Path(data_root)] if data_root else []
    roots += [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3]
              / "shared" / "data"]
    for root in roots:
        if root is not None and (root / DEFAULT_FILES[name]).is_file():
            return root / DEFAULT_FILES[name]
    raise ConfigError(f"no data file for {name}: pass --data PATH (expected "
                      f"<data root>/{DEFAULT_FILES[name]})")


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"benchmark file {path} not found")
    rows = [row for _, row in jsonl_rows(path)]
    if not rows:
        raise ConfigError(f"benchmark file {path} is empty")
    return rows


def load_choices(name: str, path: Path) -> list[Choice]:
    rows = _jsonl(path)
    try:
        if name in ("arc_easy", "arc_challenge", "boolq"):
            return [Choice((r["query"] + "\nAnswer:",), tuple(" " + c for c in r["choices"]),
                           int(r["gold"])) for r in rows]
        if name == "winogrande":
            return [Choice(tuple(r["context_options"]), (" " + r["continuation"],),
                           int(r["gold"])) for r in rows]
        if name == "piqa":
            labels_file = path.with_name("valid-labels.lst")
            if not labels_file.is_file():
                raise ConfigError(f"PIQA labels {labels_file} not found beside {path}")
            labels = [int(x) for x in labels_file.read_text().split()]
            if len(labels) != len(rows):
                raise ConfigError(f"{labels_file}: {len(labels)} labels for {len(rows)} rows")
            return [Choice((f"Question: {r['goal']}\nAnswer:",), (" " + r["sol1"], " " + r["sol2"]),
                           label) for r, label in zip(rows, labels, strict=True)]
    except KeyError as err:
        raise ConfigError(f"{path}: rows lack field {err} expected for {name}") from None
    raise ConfigError(f"{name} is not a multiple-choice benchmark")


def gsm8k_gold(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


def load_problems(name: str, path: Path) -> list[Problem]:
    rows = _jsonl(path)
    try:
        if name == "gsm8k":
            return [Problem(f"gsm8k/{i}", r["question"], gsm8k_gold(r["answer"]), {})
                    for i, r in enumerate(rows)]
        if name == "humaneval":
            return [Problem(r["task_id"], r["prompt"], None,
                            {"entry_point": r["entry_point"], "test": r["test"]}) for r in rows]
    except KeyError as err:
        raise ConfigError(f"{path}: rows lack field {err} expected for {name}") from None
    raise ConfigError(f"{name} is not a generation benchmark")


def load_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"text file {path} not found")
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    if not text.strip():
        raise ConfigError(f"text file {path} is empty")
    return text
