"""Backends over a real (tiny, random) DiffusionLM checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from faircalib_export.decoding import (  # noqa: E402
    TorchBackend,
    TorchDeviceBackend,
    generate_torch,
)
from faircalib_export.models.loading import load_model  # noqa: E402
from faircalib_export.models.tiny import write_tiny_checkpoint  # noqa: E402
from faircalib_runtime import (  # noqa: E402
    DreamConfig,
    FunctionBackend,
    LLaDAConfig,
    RandomCommitConfig,
    TrajectoryRecorder,
    generate,
    summarize,
)


@pytest.fixture(scope="module", params=["llada", "dream"])
def tiny(request, tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("rt") / request.param, request.param)
    return request.param, load_model(path)


def decode_configs(model):
    c = model.cfg
    common = dict(mask_id=c.mask_token_id, eos_ids=[c.eos_token_id], seed=7)
    return [
        LLaDAConfig(gen_length=8, block_length=4, steps=4, **common),
        LLaDAConfig(gen_length=8, block_length=4, steps=4, temperature=1.0, cfg_scale=0.5,
                    **common),
        DreamConfig(max_new_tokens=8, steps=4, alg="entropy", **common),
        DreamConfig(max_new_tokens=8, steps=4, alg="maskgit_plus", temperature=0.9, top_p=0.95,
                    **common),
        RandomCommitConfig(window_length=8, steps=4, **common),
    ]


def test_torch_backend_summary_matches_logits(tiny):
    _, model = tiny
    backend = TorchBackend(model)
    ids = np.array([[1, 2, 3, model.cfg.mask_token_id], [4, 5, 6, 7]])
    mask = np.array([[True] * 4, [False, True, True, True]])
    logits = backend.forward(ids, mask, None, "logits").logits
    assert logits.shape == (2, 4, model.cfg.vocab_size) and logits.dtype == np.float32
    expected = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(logits, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    summary = backend.forward(ids, mask, None, "summary").summary
    ref = summarize(logits)
    np.testing.assert_array_equal(summary.token, ref.token)
    np.testing.assert_allclose(summary.prob, ref.prob, rtol=1e-5)
    np.testing.assert_allclose(summary.neg_entropy, ref.neg_entropy, rtol=1e-5, atol=1e-6)


def test_numpy_loop_over_torch_backend_matches_generate_torch(tiny):
    family, model = tiny
    prompts = [[10, 11, 12, 13, 14], [20, 21]]
    for cfg in decode_configs(model):
        rec_np, rec_t = TrajectoryRecorder(), TrajectoryRecorder()
        a = generate(TorchBackend(model), prompts, cfg, recorder=rec_np)
        b = generate_torch(model, prompts, cfg, recorder=rec_t)
        np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=f"{family} {cfg}")
        np.testing.assert_array_equal(a.commit_step, b.commit_step)
        np.testing.assert_allclose(rec_np.result().top1_prob, rec_t.result().top1_prob,
                                   rtol=1e-5)
    # A plain logits function over the same model decides the same way.
    fn = lambda x, m, p: model(torch.from_numpy(x),
                               attention_mask=None if m is None else torch.from_numpy(m),
                               position_ids=None if p is None else torch.from_numpy(p)
                               ).detach().numpy()
    cfg = decode_configs(model)[3]
    c = generate(FunctionBackend(fn), prompts, cfg)
    np.testing.assert_array_equal(generate(TorchBackend(model), prompts, cfg).tokens, c.tokens)


def test_device_backend_applies_shift():
    class Raw(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            b, s = input_ids.shape
            out = torch.full((b, s, 16), -10.0)
            out[:, torch.arange(s), (torch.arange(s) + 1) % 16] = 0.0  # i predicts i + 1
            return out

    cfg = DreamConfig(max_new_tokens=3, steps=3, mask_id=15, eos_ids=[0])
    res = generate_torch(Raw(), [[9, 9]], cfg, shift=True)
    assert res.window.tolist() == [[2, 3, 4]]
    out = TorchDeviceBackend(Raw(), shift=True).forward(torch.zeros(1, 3, dtype=torch.long),
                                                         None, None, "summary")
    assert out.summary.token.tolist() == [[1, 1, 2]]


def test_text_decoder_uses_chat_template(tmp_path):
    from faircalib_export.models.loading import load_tokenizer
    from faircalib_runtime import TextDecoder

    path = write_tiny_checkpoint(tmp_path / "m", "llada")
    tok = load_tokenizer(path)
    dec = TextDecoder(tok, chat=True)
    ids = dec.encode("hi")
    text = tok.decode(ids)
    assert "<|start_header_id|>" in text and text.count("<|startoftext|>") == 1
    assert TextDecoder(tok, chat=False).encode("hi") != ids
    texts, res = dec.generate(TorchBackend(load_model(path)), ["hi"], LLaDAConfig(
        gen_length=4, block_length=4, steps=2, mask_id=tok.convert_tokens_to_ids("<|mdm_mask|>"),
        eos_ids=[tok.eos_token_id]))
    assert isinstance(texts[0], str) and res.tokens.shape == (1, len(ids) + 4)
