"""Recording passes over decode trajectories, on the models' device.

- `teacher_pass`: the teacher decodes with its default policy; at every step each
  student is run on the teacher's state (teacher forcing). Kept per step, as (B, K)
  host arrays: the teacher's commit set and written tokens, the teacher's and each
  student's argmax, logit margin of the teacher's written token at commit positions,
  and KL(p_teacher || p_student) at masked positions. The teacher's states are kept
  (token ids only) for the divergence trace.
- `own_pass`: a model decodes with the same policy on its own; kept per step: its
  argmax at window positions and, given the teacher and its states, the probability
  discrepancy to the teacher at the same step (`mse_prob`, below).

Only (B, K) or (B,) arrays cross to the host; full logits stay on the device.

mse_prob at step s (the paper's Figure 3 discrepancy w.r.t. the FP teacher): the squared
L2 distance between the student's and the teacher's probability vectors, each on its OWN
state at step s (the teacher's state is clamped to its final one if its decode ended
earlier), averaged over the K window positions. It is zero while the trajectories agree
and jumps once a written token differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..decoding import generate_torch

Forward = Callable[..., torch.Tensor]  # model(input_ids, attention_mask=, position_ids=)


class LogitCapture:
    """Wraps a model; remembers the inputs and aligned logits of its latest call."""

    def __init__(self, model: Forward):
        self.model = model
        self.input_ids = self.attention_mask = self.position_ids = self.logits = None

    def __call__(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        logits = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        self.input_ids, self.attention_mask, self.position_ids = (
            input_ids, attention_mask, position_ids)
        self.logits = logits
        return logits

    def rerun(self, model: Forward, input_ids: torch.Tensor) -> torch.Tensor:
        """`model` on `input_ids` with the padding layout of the latest call."""
        return model(input_ids, attention_mask=self.attention_mask,
                     position_ids=self.position_ids)


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K) logit of `target` minus the largest other logit; logits (B, K, V)."""
    z = logits.float()
    own = z.gather(-1, target[..., None])[..., 0]
    others = z.scatter(-1, target[..., None], float("-inf")).amax(-1)
    return own - others


def kl_div(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """(B, K) KL(softmax(p) || softmax(q)) over the last axis of (B, K, V) logits."""
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@dataclass
class StudentSteps:
    top1: list[np.ndarray] = field(default_factory=list)  # per step (B, K)
    margin: list[np.ndarray] = field(default_factory=list)  # NaN off the commit set
    kl: list[np.ndarray] = field(default_factory=list)  # NaN at unmasked positions

    def stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack(getattr(self, k)) for k in ("top1", "margin", "kl")}


@dataclass
class TeacherPass:
    committed: np.ndarray  # (T, B, K) bool
    written: np.ndarray  # (T, B, K) int64, -1 off the commit set
    masked: np.ndarray  # (T, B, K) bool, before each step
    obs: np.ndarray  # (T + 1, B, K) teacher argmax on its states, final state last
    margin: np.ndarray  # (T, B, K) teacher's own margin of its written token
    commit_step: np.ndarray  # (B, K)
    tokens: np.ndarray  # (B, K) final window
    states: np.ndarray  # (T + 1, B, S) the teacher's states, final state last
    students: list[dict[str, np.ndarray]]  # per student: top1, margin, kl, each (T, B, K)


@dataclass
class OwnPass:
    obs: np.ndarray  # (T + 1, B, K) the model's argmax on its own states
    commit_step: np.ndarray  # (B, K)
    tokens: np.ndarray  # (B, K)
    mse_prob: np.ndarray | None  # (T, B) vs the teacher, when one was given


@torch.no_grad()
def teacher_pass(teacher: Forward, students: Sequence[Forward], prompts, policy,
                 device) -> TeacherPass:
    cap = LogitCapture(teacher)
    k, mask_id = policy.window, policy.mask_id
    rec: dict[str, list[np.ndarray]] = {n: [] for n in
                                        ("committed", "written", "masked", "obs", "margin",
                                         "states")}
    per_student = [StudentSteps() for _ in students]

    def on_step(event) -> None:
        x_pre = cap.input_ids  # (B, S) the state the teacher just saw
        p = x_pre.shape[1] - k
        z_t = cap.logits[:, p:]  # (B, K, V)
        x_post = event.x[:, p:]
        committed = event.committed[:, p:] & (x_post != mask_id)
        masked = x_pre[:, p:] == mask_id
        target = torch.where(committed, x_post, z_t.argmax(-1))  # the teacher's write
        nan = torch.full(committed.shape, float("nan"), device=committed.device)
        rec["committed"].append(_np(committed))
        rec["written"].append(_np(torch.where(committed, x_post, -1)))
        rec["masked"].append(_np(masked))
        rec["obs"].append(_np(z_t.argmax(-1)))
        rec["margin"].append(_np(torch.where(committed, margin(z_t, target), nan)))
        rec["states"].append(_np(x_pre))
        for student, steps in zip(students, per_student, strict=True):
            z_s = cap.rerun(student, x_pre)[:, p:]
            steps.top1.append(_np(z_s.argmax(-1)))
            steps.margin.append(_np(torch.where(committed, margin(z_s, target), nan)))
            steps.kl.append(_np(torch.where(masked, kl_div(z_t, z_s), nan)))

    result = generate_torch(cap, prompts, policy, device=device, on_step=on_step,
                            stop_finished=False)
    final = torch.as_tensor(result.tokens, device=device)
    rec["obs"].append(_np(cap.rerun(teacher, final)[:, -k:].argmax(-1)))
    rec["states"].append(result.tokens)
    arrays = {n: np.stack(v) for n, v in rec.items()}
    return TeacherPass(**arrays, commit_step=result.commit_step, tokens=result.window,
                       students=[s.stacked() for s in per_student])


@torch.no_grad()
def own_pass(model: Forward, prompts, policy, device, *, teacher: Forward | None = None,
             teacher_states: np.ndarray | None = None) -> OwnPass:
    cap = LogitCapture(model)
    k = policy.window
    obs, mse = [], []

    def on_step(event) -> None:
        p = cap.input_ids.shape[1] - k
        z = cap.logits[:, p:]  # (B, K, V)
        obs.append(_np(z.argmax(-1)))
        if teacher is not None:
            ref = teacher_states[min(event.step, len(teacher_states) - 1)]
            z_ref = cap.rerun(teacher, torch.as_tensor(ref, device=z.device))[:, p:]
            diff = torch.softmax(z.float(), -1) - torch.softmax(z_ref.float(), -1)
            mse.append(_np((diff * diff).sum(-1).mean(-1)))

    result = generate_torch(cap, prompts, policy, device=device, on_step=on_step,
                            stop_finished=False)
    final = torch.as_tensor(result.tokens, device=device)
    obs.append(_np(cap.rerun(model, final)[:, -k:].argmax(-1)))
    return OwnPass(np.stack(obs), result.commit_step, result.window,
                   np.stack(mse) if teacher is not None else None)
