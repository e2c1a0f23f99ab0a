"""Our transformer against transformers' Qwen2 and Llama, used as independent references.

Dream is Qwen2 with full (bidirectional) attention; LLaDA is Llama with renamed keys and
full attention. With a 4-D all-zero additive mask the reference models attend
bidirectionally, so raw logits must agree to fp32 precision.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from faircalib_export.models.loading import load_model, weight_files

transformers = pytest.importorskip("transformers")


def _all_tensors(path):
    out = {}
    for file in sorted(set(weight_files(path).values())):
        out.update(load_file(str(file)))
    return out


def _full_mask(b, s):
    return torch.zeros(b, 1, s, s)  # additive mask: everything visible


def _inputs(vocab, b=2, s=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, s), generator=g)


def _check(ours, ref, ids):
    with torch.no_grad():
        a = ours(ids, align=False)
        b = ref(input_ids=ids, attention_mask=_full_mask(*ids.shape)).logits
    assert a.abs().max() > 1.0, "logits too small for the comparison to mean anything"
    assert (a - b).abs().max().item() <= 1e-4


def test_dream_matches_qwen2_bidirectional(dream_dir):
    ours = load_model(dream_dir)
    c = ours.cfg
    cfg = transformers.Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=False, max_position_embeddings=c.max_position_embeddings,
        attn_implementation="eager",
    )
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    ref.load_state_dict(_all_tensors(dream_dir), strict=True)  # Dream keys are Qwen2 keys
    _check(ours, ref, _inputs(c.vocab_size))


LLADA_TO_LLAMA = {
    "model.transformer.wte.": "model.embed_tokens.",
    "model.transformer.ln_f.": "model.norm.",
    "model.transformer.ff_out.": "lm_head.",
}
BLOCK_RENAMES = {
    "attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}


def _llada_to_llama(key: str) -> str:
    for old, new in LLADA_TO_LLAMA.items():
        if key.startswith(old):
            return new + key[len(old):]
    _, _, _, i, module, param = key.split(".")  # model.transformer.blocks.{i}.{module}.weight
    return f"model.layers.{i}.{BLOCK_RENAMES[module]}.{param}"


def test_llada_matches_llama_bidirectional(llada_dir):
    ours = load_model(llada_dir)
    c = ours.cfg
    cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        max_position_embeddings=c.max_position_embeddings, attn_implementation="eager",
    )
    ref = transformers.LlamaForCausalLM(cfg).eval()
    state = {_llada_to_llama(k): v for k, v in _all_tensors(llada_dir).items()}
    ref.load_state_dict(state, strict=True)
    _check(ours, ref, _inputs(c.vocab_size))
