"""The official decoding loops, transcribed in torch for the parity tests.

`llada_generate` is ML-GSAI/LLaDA generate.py (HEAD) and `dream_generate` the diffusion
loop of Dream's generation_utils.py (`_sample` and `sample_tokens`), kept as close to the
originals as the tests allow. Changes, all marked `# test:`:
- the model is a callable returning the logits tensor (no `.logits`, no `model.device`);
- LLaDA's hard-coded EOS 126081 / EOT 126348 are arguments;
- the top-k selection is an argument: `torch.topk` leaves the order of equal values open,
  so the tests pass `stable_topk` (our documented rule) and `check_topk` asserts that
  torch.topk selects the same confidence VALUES at every step;
- both return the state after every step.
Dream's `origin` alg and padded batches are left out (the tests do not use them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def stable_topk(values: torch.Tensor, k: int):
    """Lowest index first among equal values (the runtime's rule)."""
    idx = torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.gather(values, -1, idx), idx


def check_topk(values: torch.Tensor, k: int):
    """stable_topk, after asserting torch.topk picks equal values (ties may differ)."""
    chosen, idx = stable_topk(values, k)
    theirs = torch.topk(values, k).values
    assert torch.equal(theirs.sort(-1).values, chosen.sort(-1).values)
    return chosen, idx


# --- LLaDA generate.py --------------------------------------------------------------------

def add_gumbel_noise(logits, temperature):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (- torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, :remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def llada_generate(model, prompt, attention_mask=None, steps=128, gen_length=128,
                   block_length=128, temperature=0., cfg_scale=0., remasking='low_confidence',
                   mask_id=126336, logits_eos_inf=False, confidence_eos_eot_inf=False,
                   eos_id=126081, eot_id=126348, topk=stable_topk):  # test: ids, topk
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    history = []  # test
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(
            (prompt.shape[0], gen_length), dtype=attention_mask.dtype)], dim=-1)
    prompt_index = (x != mask_id)
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks

    for num_block in range(num_blocks):
        block_mask_index = (x[:, prompt.shape[1] + num_block * block_length:
                              prompt.shape[1] + (num_block + 1) * block_length:] == mask_id)
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = (x == mask_id)
            if cfg_scale > 0.:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                attention_mask_ = None  # test: generate.py leaves it unbound without a mask
                if attention_mask is not None:
                    attention_mask_ = torch.cat([attention_mask, attention_mask], dim=0)
                logits = model(x_, attention_mask=attention_mask_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x, attention_mask=attention_mask)

            if logits_eos_inf:
                logits[:, :, eos_id] = -torch.inf

            logits_with_noise = add_gumbel_noise(logits, temperature=temperature)
            x0 = torch.argmax(logits_with_noise, dim=-1)  # b, l

            if confidence_eos_eot_inf:
                logits_with_noise[:, :, eos_id] = logits[:, :, eot_id] = -torch.inf

            if remasking == 'low_confidence':
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(
                    torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # b, l
            elif remasking == 'random':
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
            else:
                raise NotImplementedError(remasking)

            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length:] = -np.inf

            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)

            transfer_index = torch.zeros_like(x0, dtype=torch.bool, device=x0.device)
            for j in range(confidence.shape[0]):
                _, select_index = topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
            history.append(x.clone())  # test

    return x, history


# --- Dream generation_utils.py ------------------------------------------------------------

def top_p_logits(logits, top_p=None):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool, device=logits.device)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    logits = logits.masked_fill(mask, torch.finfo(logits.dtype).min)
    return logits


def top_k_logits(logits, top_k=None):
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    logits = logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)
    return logits


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False,
                  neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)

    if temperature > 0:
        raise NotImplementedError("test: sampling draws cannot be compared")
    else:
        confidence, x0 = probs.max(dim=-1)

    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        top1_probs = sorted_probs[:, 0]
        top2_probs = sorted_probs[:, 1]
        confidence = top1_probs - top2_probs

    if neg_entropy:
        epsilon = 1e-10
        log_probs = torch.log(probs + epsilon)
        confidence = torch.sum(probs * log_probs, dim=-1)

    return confidence, x0


def _identity_tokens(step, x, logits):
    return x


def _identity_logits(step, x, logits):
    return logits


@torch.no_grad()
def dream_generate(model, input_ids, *, max_new_tokens, mask_token_id, steps=512, eps=1e-3,
                   alg='entropy', alg_temp=None, temperature=0.0, top_p=None, top_k=None,
                   num_return_sequences=1, generation_tokens_hook_func=_identity_tokens,
                   generation_logits_hook_func=_identity_logits, topk=stable_topk):
    # _prepare_inputs / generate: rows of a prompt repeated and adjacent
    input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
    max_length = input_ids.shape[1] + max_new_tokens
    history = []  # test

    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_token_id)
    attention_mask, tok_idx = "full", None  # test: unpadded batches only
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)

    x = generation_tokens_hook_func(None, x, None)
    for i in range(steps):
        mask_index = (x == mask_token_id)
        logits = model(x, attention_mask, tok_idx)  # test: returns the logits tensor
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

        logits = generation_logits_hook_func(i, x, logits)

        mask_logits = logits[mask_index]
        t = timesteps[i]
        s = timesteps[i + 1]

        if alg == 'maskgit_plus':
            confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p,
                                           top_k=top_k)
        elif alg == 'topk_margin':
            confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p,
                                           top_k=top_k, margin_confidence=True)
        elif alg == 'entropy':
            confidence, x0 = sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k,
                                           neg_entropy=True)
        else:
            raise RuntimeError(f"Unknown alg: {alg}")
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = (int(num_mask_token * (1 - s / t)) if i < steps - 1
                                  else int(num_mask_token))
        full_confidence = torch.full_like(x, -torch.inf, device=x.device, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            if alg_temp is None or alg_temp == 0:
                _, transfer_index = topk(full_confidence, number_transfer_tokens)
            else:
                raise NotImplementedError("test: sampling draws cannot be compared")
            x_ = torch.zeros_like(x, device=x.device, dtype=torch.long) + mask_token_id
            x_[mask_index] = x0.clone()
            row_indices = torch.arange(x.size(0), device=x.device).unsqueeze(1).expand_as(
                transfer_index)
            x[row_indices, transfer_index] = x_[row_indices, transfer_index]

        x = generation_tokens_hook_func(i, x, logits)
        history.append(x.clone())  # test
    return x, history
