"""Model behaviour and checkpoint loading: layouts, dtypes, and every kind of bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from faircalib_export.cli import main
from faircalib_export.errors import CheckpointError, ConfigError, UnsupportedModelError
from faircalib_export.models.loading import inspect_checkpoint, load_model, load_tokenizer


def _ids(vocab, s=9, seed=0):
    return torch.randint(0, vocab, (1, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", ["llada_dir", "dream_dir"])
def test_bidirectional_later_token_changes_earlier_logits(which, request):
    model = load_model(request.getfixturevalue(which))
    ids = _ids(model.cfg.vocab_size)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % model.cfg.vocab_size
    with torch.no_grad():
        a, b = model(ids, align=False), model(changed, align=False)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-3


def test_dream_logit_shift_reads_previous_position(dream_dir):
    model = load_model(dream_dir)
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        raw, aligned = model(ids, align=False), model(ids)
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(aligned[:, 0], raw[:, 0], rtol=0, atol=0)
    assert not torch.equal(aligned, raw)


def test_llada_has_no_shift(llada_dir):
    model = load_model(llada_dir)
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids, align=False))


def test_sharded_and_single_file_give_identical_tensors(llada_dir, llada_single_dir):
    assert len(inspect_checkpoint(llada_dir).shards) == 3
    a, b = load_model(llada_dir).state_dict(), load_model(llada_single_dir).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_low_precision_load(dream_dir, dtype, torch_dtype):
    low, full = load_model(dream_dir, dtype), load_model(dream_dir)
    assert all(p.dtype == torch_dtype for p in low.parameters())
    ids = _ids(full.cfg.vocab_size)
    with torch.no_grad():
        lo, hi = low(ids).float(), full(ids)
    assert lo.isfinite().all()
    assert (lo - hi).abs().max() / hi.abs().max() < 0.05


def test_padding_mask_isolates_real_tokens(dream_dir):
    """A left-padded row gives the same logits on its real tokens as the unpadded row."""
    model = load_model(dream_dir)
    ids = _ids(model.cfg.vocab_size, s=6)
    padded = torch.cat([torch.full((1, 3), model.cfg.pad_token_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 6)], dim=1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(ids)
        out = model(padded, attention_mask=mask, position_ids=pos)
    assert out.isfinite().all()
    torch.testing.assert_close(out[:, 3 + 1:], ref[:, 1:], rtol=1e-5, atol=1e-5)


def test_tokenizers_load_without_remote_code(llada_dir, dream_dir):
    # The remote-code stand-ins in each directory raise if imported: loading must not.
    for path, mask in ((llada_dir, "<|mdm_mask|>"), (dream_dir, "<|mask|>")):
        tok = load_tokenizer(path)
        cfg = inspect_checkpoint(path).cfg
        assert tok.convert_tokens_to_ids(mask) == cfg.mask_token_id
        assert tok.eos_token_id == cfg.eos_token_id
        text = "Tom has 12 apples, gives 5 away: 7 left."
        assert tok.decode(tok(text)["input_ids"]) == text
        assert tok.chat_template


# --- bad input ---------------------------------------------------------------------------

@pytest.fixture
def broken(tmp_path, llada_dir):
    dst = tmp_path / "ck"
    shutil.copytree(llada_dir, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def _expect_cli_error(path, capsys, *needles):
    with pytest.raises(SystemExit) as exc:
        main(["info", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err.replace("\n", "")


def test_unknown_model_type(broken, capsys):
    _edit_config(broken, model_type="mamba")
    with pytest.raises(UnsupportedModelError, match="'mamba'.*supported: Dream, llada"):
        load_model(broken)
    _expect_cli_error(broken, capsys, "mamba", "Dream, llada")


def test_missing_shard(broken, capsys):
    (broken / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        load_model(broken)
    _expect_cli_error(broken, capsys, "model-00002-of-00003.safetensors")


def test_wrong_shape(broken, capsys):
    shard = broken / "model-00001-of-00003.safetensors"
    with safe_open(shard, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = "model.transformer.wte.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=f"{key} has shape"):
        load_model(broken)
    _expect_cli_error(broken, capsys, key, "expected")


def test_missing_mask_token_id(broken, capsys):
    _edit_config(broken, mask_token_id=None)
    with pytest.raises(ConfigError, match="mask_token_id"):
        load_model(broken)
    _expect_cli_error(broken, capsys, "config.json", "mask_token_id")


def test_truncated_safetensors(broken, capsys):
    shard = broken / "model-00003-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model-00003-of-00003.safetensors.*truncated"):
        load_model(broken)
    _expect_cli_error(broken, capsys, "model-00003-of-00003.safetensors")


def test_missing_tensor(tmp_path, llada_single_dir, capsys):
    dst = tmp_path / "ck"
    shutil.copytree(llada_single_dir, dst)
    file = dst / "model.safetensors"
    with safe_open(file, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if "blocks.1.up_proj" not in k}
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match="model.transformer.blocks.1.up_proj.weight"):
        load_model(dst)


def test_missing_directory(tmp_path, capsys):
    _expect_cli_error(tmp_path / "nope", capsys, "nope")


def test_unsupported_dtype(llada_dir):
    with pytest.raises(ConfigError, match="int3"):
        load_model(llada_dir, "int3")


def test_unsupported_llada_option(broken):
    _edit_config(broken, alibi=True)
    with pytest.raises(UnsupportedModelError, match="alibi"):
        load_model(broken)
