"""Device audit (issue 17): every tensor the stages create follows the requested device.

There is no GPU in CI, so the audit makes "forgot `device=`" visible on the CPU:

- each stage runs with `device="cpu"` (the requested device) while torch's DEFAULT device
  is "meta" (`torch.set_default_device`). A tensor created WITHOUT an explicit device
  (torch.zeros(3), torch.tensor(x), torch.as_tensor(numpy), torch.arange(n), a draw from
  torch.rand*, ...) lands on meta, the stand-in for "the wrong device"; one created with
  `device=x.device` / `device=device` stays on the requested device. On a CUDA run the
  same line would create a CPU tensor next to CUDA ones.
- a `TorchDispatchMode` checks every aten op: tensor arguments on two devices (other than
  0-dim CPU scalars, which CUDA kernels accept) fail at that op, with the op named. An op
  that torch itself would let through (an index tensor on another device) still fails.
  Reading a meta tensor back (`.item()`, `.numpy()`, `.to("cpu")`) fails in torch too.

So a stage passes only if no device-less tensor meets real data. Tensors deliberately
kept on the host must say so (`device="cpu"`); hard-coded `device="cpu"` on a path that
should follow the requested device is NOT caught (it looks like the requested device).
`test_audit_catches_a_planted_bug` proves the detector fires.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from faircalib_export.models.tiny import write_tiny_checkpoint

# Imported before the audit: a module-level tensor made at import time is not a stage's.
for _name in ("faircalib_export.probe.artifact", "faircalib_export.probe.stage1",
              "faircalib_export.probe.plots", "faircalib_export.probe.prompts",
              "faircalib_export.calibrate.entry", "faircalib_export.calibrate.artifact",
              "faircalib_export.calibrate.stage2", "faircalib_export.calibrate.data",
              "faircalib_export.fold.fold", "faircalib_export.fold.deployed",
              "faircalib_export.tiny.evaluate", "faircalib_export.decoding",
              "faircalib_export.decoding.torch_backend", "faircalib_export.opener",
              "faircalib_export.models.loading", "faircalib_export.models.builtin",
              "faircalib_runtime.fast", "faircalib_runtime.decode"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)

SHAPE = dict(hidden_size=32, num_layers=1, num_heads=2)
DEVICE = "cpu"  # the requested device; "meta" (the default) plays the wrong one


class DeviceMixError(AssertionError):
    pass


class MixedDeviceCheck(TorchDispatchMode):
    """Fails on any aten op whose tensor arguments live on more than one device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        devices = {t.device for t in flat if isinstance(t, torch.Tensor)
                   and not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1:
            raise DeviceMixError(f"{func} mixes devices {sorted(map(str, devices))}: a tensor "
                                 f"was created without device= (it landed on the default)")
        return func(*args, **kwargs)


def _construct_then_move():
    """Constructors that build on the default device and end with `self.to(device)`: the
    standard module idiom, correct on CUDA, so they build on the CPU under the audit
    (what they do after construction is audited as usual)."""
    from faircalib_export.quant.qblock import QuantBlock

    return [QuantBlock]


@contextlib.contextmanager
def device_audit():
    """Default device meta + the mixed-device check, for the duration of one stage."""
    before = torch.get_default_device()
    originals = {cls: cls.__init__ for cls in _construct_then_move()}

    def on_cpu(init):
        def wrapped(self, *args, **kwargs):
            with torch.device("cpu"):
                init(self, *args, **kwargs)
        return wrapped

    for cls, init in originals.items():
        cls.__init__ = on_cpu(init)
    torch.set_default_device("meta")
    try:
        with MixedDeviceCheck():
            yield
    finally:
        torch.set_default_device(before)
        for cls, init in originals.items():
            cls.__init__ = init


def _fails_under_audit(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, DeviceMixError) or "meta" in text


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["llada", "dream"])
def tiny(request, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("audit") / request.param,
                                 request.param, init_std=0.2, **SHAPE)


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("audit") / "llada", "llada",
                                 init_std=0.2, **SHAPE)


# --- the detector itself ----------------------------------------------------------------

def test_audit_catches_a_planted_bug():
    """A device-less tensor mixed into real data fails; device= from the input passes."""
    x = torch.ones(4, device=DEVICE)

    def buggy(x):
        return x + torch.zeros(4)  # forgot device=

    def buggy_index(x):
        return x[torch.arange(2)]  # torch alone would move the index silently

    def buggy_scalar(x):
        return x * torch.tensor(2.0)  # 0-dim, still device-less

    def fine(x):
        return x + torch.zeros(4, device=x.device) + torch.arange(4, device=x.device)

    for bug in (buggy, buggy_index, buggy_scalar):
        with pytest.raises((DeviceMixError, RuntimeError)) as info, device_audit():
            bug(x)
        assert _fails_under_audit(info.value), info.value
    with device_audit():
        assert fine(x).device.type == DEVICE
    assert torch.get_default_device().type == "cpu"  # restored


def test_audit_catches_a_bug_planted_in_a_stage(llada, monkeypatch):
    """The same check, end to end: a stray `torch.zeros(...)` in the decode loop's device
    ops (shared by probe, calibrate's probing and eval) fails the probe stage."""
    from faircalib_export.decoding import torch_policy
    from faircalib_export.probe.config import ProbeConfig
    from faircalib_export.probe.stage1 import probe

    original = torch_policy.TorchOps.asarray

    def planted(self, a, *args, **kwargs):
        out = original(self, a, *args, **kwargs)
        return out + torch.zeros(out.shape, dtype=out.dtype) if out.dim() else out

    monkeypatch.setattr(torch_policy.TorchOps, "asarray", planted)
    model, prompts = _model_and_prompts(llada)
    with pytest.raises((DeviceMixError, RuntimeError)) as info, device_audit():
        probe(model, prompts, ProbeConfig(steps=4, window=4, batch_size=2), device=DEVICE)
    assert _fails_under_audit(info.value), info.value


def _model_and_prompts(path):
    from faircalib_export.models.loading import load_model

    model = load_model(path, device=DEVICE)
    return model, [[5, 6, 7], [8, 9], [10, 11, 12, 13]]


# --- the stages -------------------------------------------------------------------------

def test_probe_follows_the_device(tiny, tmp_path):
    from faircalib_export.probe.artifact import run_probe

    with device_audit():
        result = run_probe(tiny, "task:chain", tmp_path / "prior", samples=3, steps=4,
                           window=4, device=DEVICE, batch_size=2)
    assert result.prior.weights.shape == (4,)


@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant", "fair-calib", "qdrop"])
def test_calibrate_and_fold_follow_the_device(llada, tmp_path, method):
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.fold.fold import fold_artifact

    with device_audit():
        art = calibrate_checkpoint(llada, tmp_path / "cal",
                                   CalibConfig(method=method, epochs=1, batch_size=2,
                                               device=DEVICE),
                                   data="task:chain", samples=2, seq_len=16)
    # fold takes no device: it loads the artifact on the CPU and writes host tensors, so
    # the audit here checks it creates nothing on the default device either
    with device_audit():
        deploy = fold_artifact(art, tmp_path / "deploy")
    assert (deploy / "deploy.json").is_file()


def test_fair_calib_on_dream_follows_the_device(tmp_path):
    """Dream's layout (the llada one is in the method sweep above)."""
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint

    dream = write_tiny_checkpoint(tmp_path / "dream", "dream", init_std=0.2, **SHAPE)
    with device_audit():
        art = calibrate_checkpoint(dream, tmp_path / "cal",
                                   CalibConfig(method="fair-calib", epochs=1, batch_size=2,
                                               device=DEVICE),
                                   data="task:chain", samples=2, seq_len=16)
    assert (art / "manifest.json").is_file()


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_generate_torch_follows_the_device(tiny, decode):
    from faircalib_export.decoding import generate_torch
    from faircalib_runtime.defaults import family_defaults, policy_config, with_overrides

    model, prompts = _model_and_prompts(tiny)
    cfg = model.cfg
    settings = with_overrides(family_defaults(cfg.family), gen_length=8, steps=4,
                              block_length=4, **({} if decode == "exact" else
                                                 {"decode": "fast"}))
    policy = policy_config(settings, mask_id=cfg.mask_token_id, eos_ids=(cfg.eos_token_id,),
                           pad_id=cfg.eos_token_id)
    events = []
    with device_audit():
        out = generate_torch(model, prompts, policy, device=DEVICE,
                             on_step=lambda e: events.append(e))
    assert len(out.generated) == len(prompts) and events


@pytest.mark.parametrize("decode", [{}, {"decode": "fast"}])
def test_evaluate_follows_the_device(tiny, decode):
    # `evaluate` takes no device (open_model's default, the CPU): the audit checks it
    # creates nothing on the default device on its way
    from faircalib_export.tiny.evaluate import evaluate

    with device_audit():
        result = evaluate(tiny, "chain", limit=2, batch_size=2, gen_length=8, steps=4,
                          block_length=4, console=False, **decode)
    assert result["n"] == 2


@pytest.fixture(scope="module")
def folded(llada, tmp_path_factory):
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.fold.fold import fold_artifact

    root = tmp_path_factory.mktemp("audit_folded")
    art = calibrate_checkpoint(llada, root / "cal", CalibConfig("rtn", device=DEVICE),
                               data="task:chain", samples=2, seq_len=16)
    return art, fold_artifact(art, root / "deploy")


def test_every_model_kind_follows_the_input_device(llada, folded):
    """Forward of checkpoint, calibrated and folded models with default masks / positions
    (the fallbacks build tensors from the input's shape)."""
    from faircalib_export.calibrate.artifact import load_quantized
    from faircalib_export.fold.deployed import load_deployed
    from faircalib_export.models.loading import load_model

    art, deploy = folded
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]], device=DEVICE)
    mask = torch.ones_like(ids)
    for model in (load_model(llada, device=DEVICE), load_quantized(art, device=DEVICE),
                  load_deployed(deploy).to(DEVICE)):
        with device_audit(), torch.no_grad():
            for kwargs in ({}, {"attention_mask": mask},
                           {"attention_mask": mask, "position_ids": mask.cumsum(-1) - 1}):
                assert model(ids, **kwargs).device.type == DEVICE


@pytest.mark.parametrize("kind", ["calibrated", "folded"])
def test_evaluate_quantized_models_follows_the_device(folded, kind):
    from faircalib_export.tiny.evaluate import evaluate

    path = folded[0] if kind == "calibrated" else folded[1]
    with device_audit():
        result = evaluate(path, "chain", limit=2, batch_size=2, gen_length=8, steps=4,
                          block_length=4, console=False)
    assert result["n"] == 2 and result["kind"] == kind
