"""numpy and torch paths make identical decisions for identical logits and seeds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtime_mocks import HashedBackend, hashed_logits  # noqa: E402
from test_decode import MASK, PROMPTS, V, configs, ids  # noqa: E402

from faircalib_export.decoding import TorchOps, summarize_torch, uniform  # noqa: E402
from faircalib_runtime import StepOutput, TrajectoryRecorder, generate, rng  # noqa: E402


class TorchHashedBackend:
    """The same logits as `HashedBackend`, as tensors, summaries computed by torch."""

    def forward(self, input_ids, attention_mask, position_ids, want):
        logits = torch.from_numpy(hashed_logits(input_ids.cpu().numpy(), V, MASK))
        if want == "summary":
            return StepOutput(summary=summarize_torch(logits, chunk_rows=7))
        return StepOutput(logits=logits)


def test_rng_bit_identical():
    counter = np.concatenate([np.arange(4096), 2**32 - 3 + np.arange(10), [2**40 + 123]])
    for seed, step, stream in [(0, 0, 1), (2**40 + 7, 123, 4), (5, 2**33, 6)]:
        a = rng.uniform(counter, seed, step, stream)
        b = uniform(torch.from_numpy(counter), seed, step, stream).numpy()
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cfg", configs(sampling=False) + configs(sampling=True), ids=ids)
def test_numpy_and_torch_decode_identically(cfg):
    ref = TrajectoryRecorder()
    a = generate(HashedBackend(V, MASK), PROMPTS, cfg, recorder=ref)
    rec = TrajectoryRecorder()
    b = generate(TorchHashedBackend(), PROMPTS, cfg, recorder=rec, ops=TorchOps("cpu"))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.commit_step, b.commit_step)
    assert a.generated == b.generated
    ta, tb = ref.result(), rec.result()
    np.testing.assert_array_equal(ta.committed, tb.committed)
    np.testing.assert_allclose(ta.top1_prob, tb.top1_prob, rtol=1e-6)
    np.testing.assert_allclose(ta.neg_entropy, tb.neg_entropy, rtol=1e-6, atol=1e-7)


def test_summaries_agree():
    logits = hashed_logits(np.arange(24).reshape(2, 12), V)
    from faircalib_runtime import summarize

    a, b = summarize(logits), summarize_torch(torch.from_numpy(logits), chunk_rows=5)
    np.testing.assert_array_equal(a.token, b.token.numpy())
    for name in ("prob", "margin", "neg_entropy"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name).numpy(), rtol=1e-12)


def test_torch_ops_keep_tensors_on_their_device():
    ops = TorchOps("cpu")
    sel = ops.scatter(ops.full((2, 3), False, "bool"), ops.arange(3).expand(2, 3),
                      ops.arange(3).expand(2, 3) < torch.tensor([[1], [2]]))
    assert sel.tolist() == [[True, False, False], [True, True, False]]
    assert isinstance(ops.uniform(ops.arange(4), 0, 0, 1), torch.Tensor)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_more_steps_than_positions_records_empty_steps(temperature):
    from faircalib_runtime import RandomCommitConfig

    cfg = RandomCommitConfig(window_length=3, steps=5, temperature=temperature, mask_id=MASK,
                             eos_ids=[0])
    results = []
    for backend, ops in ((HashedBackend(V, MASK), None), (TorchHashedBackend(), TorchOps())):
        rec = TrajectoryRecorder()
        kwargs = {} if ops is None else {"ops": ops}
        res = generate(backend, PROMPTS, cfg, recorder=rec, **kwargs)
        traj = rec.result()
        assert traj.committed.sum((1, 2)).tolist() == [3, 3, 3, 0, 0]  # 1 per sample
        assert not traj.masked[3:].any()
        results.append(res.tokens)
    np.testing.assert_array_equal(*results)
