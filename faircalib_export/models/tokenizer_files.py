"""Tokenizer files in each family's real layout.

LLaDA ships `tokenizer.json` for `PreTrainedTokenizerFast`. Dream ships a Qwen2 byte-level
BPE as `vocab.json` + `merges.txt` with a `tokenizer_config.json` naming a remote-code
class (`DreamTokenizer`); the loader reads those with transformers' Qwen2 class instead.
Special tokens and chat templates follow the real models; ids are those of our vocab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


@dataclass(frozen=True)
class SpecialTokens:
    bos: str
    eos: str  # also the pad token in both families
    mask: str
    extra: tuple[str, ...]  # chat markers
    chat_template: str

    @property
    def all(self) -> list[str]:
        seen = dict.fromkeys([self.bos, self.eos, *self.extra, self.mask])
        return list(seen)


LLADA_SPECIALS = SpecialTokens(
    bos="<|startoftext|>",
    eos="<|endoftext|>",
    mask="<|mdm_mask|>",
    extra=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    chat_template=(
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
)

DREAM_SPECIALS = SpecialTokens(
    bos="<|beginoftext|>",
    eos="<|endoftext|>",
    mask="<|mask|>",
    extra=("<|im_start|>", "<|im_end|>"),
    chat_template=(
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
)

SPECIALS = {"llada": LLADA_SPECIALS, "dream": DREAM_SPECIALS}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_tokenizer(specials: SpecialTokens, words: list[str] = ()) -> Tokenizer:
    """Byte-level BPE: ids 0-255 are the bytes, then `words` as whole tokens, then specials.

    `words` become single tokens through BPE merges, so numbers or keywords of a task
    vocabulary encode as one id each while any other text still round-trips.
    """
    chars = _bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [chars[b] for b in word.encode("utf-8")]
        if len(pieces) < 2:
            continue
        cur = pieces[0]
        for nxt in pieces[1:]:  # left-to-right merges: ((a b) c) d ...
            if cur + nxt not in vocab:
                merges.append((cur, nxt))
                vocab[cur + nxt] = len(vocab)
            cur = cur + nxt
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.all])
    return tok


def write_tokenizer(out: Path, tok: Tokenizer, family: str) -> None:
    """Write `tok` into checkpoint dir `out` in the family's real file layout."""
    specials = SPECIALS[family]
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False, "special": True}
        for t in specials.all
    }
    config = {
        "added_tokens_decoder": added,
        "bos_token": specials.bos,
        "eos_token": specials.eos,
        "pad_token": specials.eos,
        "mask_token": specials.mask,
        "additional_special_tokens": list(specials.extra),
        "chat_template": specials.chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
    }
    if family == "llada":
        tok.save(str(out / "tokenizer.json"))
        config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=False,
                      add_eos_token=False)
    else:
        model = json.loads(tok.to_str())["model"]
        (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
        merges = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m
                                      for m in model["merges"]]
        (out / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
        config.update(
            tokenizer_class="DreamTokenizer",
            auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
            errors="replace",
            split_special_tokens=False,
        )
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    special_map = {"bos_token": specials.bos, "eos_token": specials.eos, "pad_token": specials.eos,
                   "mask_token": specials.mask,
                   "additional_special_tokens": list(specials.extra)}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
